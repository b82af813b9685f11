"""A real ``python -m dkron agent`` process: jobs run on schedule and survive kill -9.

These tests use real time (a job ``@every 1s`` has to fire a few times), so
they assert outcomes with generous deadlines, never timings.
"""

from __future__ import annotations

import pathlib
import resource
import signal
import socket
from collections.abc import Iterator

import pytest

from dkron.testing.jobs import shell_job
from dkron.testing.procs import AgentProc, ProcCluster, cli, executions, free_port, wait_for


@pytest.fixture
def cluster(tmp_path: pathlib.Path) -> Iterator[ProcCluster]:
    with ProcCluster(tmp_path) as c:
        yield c


def single_server(c: ProcCluster) -> AgentProc:
    node = c.add("node1")
    wait_for(lambda: node.leader_name() == "node1", timeout=30, what="the agent to lead")
    return node


def test_a_job_runs_on_schedule_and_survives_kill_9(cluster: ProcCluster) -> None:
    job = shell_job("tick", "echo tick", schedule="@every 1s")
    node = single_server(cluster)
    status, created = node.call("POST", "/v1/jobs", job)
    assert status == 201, created
    done = wait_for(
        lambda: (
            [e for e in executions(node.api, "tick") if e["success"]][:3]
            if len([e for e in executions(node.api, "tick") if e["success"]]) >= 3
            else None
        ),
        timeout=30,
        what="three successful runs",
    )
    assert all(e["output"] == "tick\n" for e in done)
    node.kill()
    # The committed job and its history are on disk; scheduling resumes.
    node.start()
    wait_for(lambda: node.leader_name() == "node1", timeout=30, what="the agent to lead again")
    status, stored = node.call("GET", "/v1/jobs/tick")
    assert status == 200 and stored["schedule"] == "@every 1s"
    before = stored["success_count"]
    assert before >= 3
    wait_for(
        lambda: node.call("GET", "/v1/jobs/tick")[1]["success_count"] > before,
        timeout=30,
        what="a run after the restart",
    )


def test_bad_requests_get_4xx_with_a_message(cluster: ProcCluster) -> None:
    node = single_server(cluster)
    status, body = node.call("POST", "/v1/jobs", {"name": "Bad Name", "schedule": "@daily"})
    assert status == 400 and "Job validation failed" in body
    status, body = node.call("POST", "/v1/jobs", {"name": "x", "schedule": "* * *"})
    assert status == 400 and "can't parse job schedule" in body
    assert node.call("GET", "/v1/jobs/missing")[0] == 404


def test_sighup_rereads_the_config_file_and_publishes_the_new_tags(
    cluster: ProcCluster, tmp_path: pathlib.Path
) -> None:
    config = tmp_path / "dkron.yml"
    config.write_text("tags:\n  zone: a\n  server: 'false'\n")
    node = cluster.add("node1", args=("--config", str(config)))
    wait_for(lambda: node.leader_name() == "node1", timeout=30, what="the agent to lead")

    def tags() -> dict[str, str]:
        members = node.call("GET", "/v1/members")[1]
        found: dict[str, str] = members[0]["Tags"]
        return found

    assert tags()["zone"] == "a"
    config.write_text("tags:\n  zone: b\n  rack: r7\n")
    assert node.proc is not None
    node.proc.send_signal(signal.SIGHUP)

    def updated() -> dict[str, str] | None:
        t = tags()
        return t if t.get("zone") == "b" else None

    now = wait_for(updated, timeout=30, what="the new tags")
    assert now["rack"] == "r7"
    # Reserved tags are the agent's own, whatever the file says.
    assert now["server"] == "true" and now["role"] == "dkron"
    node.ensure_running()


def failed_start(data_dir: pathlib.Path, *extra: str, **ports: int) -> str:
    """Start a single-server agent that must fail at start-up: its stderr, after
    checking the exit status and that the reason came as a line, not a traceback."""
    port = {k: ports.get(k) or free_port() for k in ("gossip", "rpc", "http")}
    done = cli(
        "agent",
        "--data-dir",
        str(data_dir),
        "--bind-addr",
        f"127.0.0.1:{port['gossip']}",
        "--rpc-port",
        str(port["rpc"]),
        "--http-addr",
        f"127.0.0.1:{port['http']}",
        *extra,
        timeout=120,
    )
    assert done.returncode == 1, done.stderr
    assert "Traceback" not in done.stderr
    return done.stderr


@pytest.mark.parametrize(
    ("flag", "key"), [("--bind-addr", "gossip"), ("--rpc-port", "rpc"), ("--http-addr", "http")]
)
def test_a_port_in_use_stops_the_agent_with_one_line_naming_the_flag(
    tmp_path: pathlib.Path, flag: str, key: str
) -> None:
    busy = free_port()
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", busy))
        taken.listen()
        err = failed_start(tmp_path / "data", "--server", "--bootstrap-expect", "1", **{key: busy})
    assert f"cannot listen on 127.0.0.1:{busy} ({flag}): " in err


def test_an_exhausted_retry_join_exits_1_with_the_reason(tmp_path: pathlib.Path) -> None:
    """The error is raised deep in the agent's nurseries; it still reaches the
    exit status and the log (it used to exit 0, silently)."""
    nobody = f"127.0.0.1:{free_port()}"
    err = failed_start(tmp_path / "data", "--retry-join", nobody, "--retry-max", "1")
    assert "--retry-join: no seed answered after 1 attempts" in err


def test_an_unusable_data_dir_stops_the_agent_with_one_line(tmp_path: pathlib.Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    err = failed_start(blocker / "data", "--server", "--bootstrap-expect", "1")
    assert f"--data-dir {blocker / 'data'}: " in err


def test_the_agent_lifts_its_open_files_limit_as_go_does(cluster: ProcCluster) -> None:
    """Dkron (Go) runs with the hard limit on open files; a Python agent left at
    a soft limit of 1,024 would run out with a few hundred long runs. The job
    reads the limit it inherited from the agent."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or hard < 512:
        pytest.skip(f"needs a finite hard limit on open files of 512 or more, not {hard}")
    low = 256
    resource.setrlimit(resource.RLIMIT_NOFILE, (low, hard))
    try:
        node = cluster.add("node1")  # inherits the low soft limit
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    wait_for(lambda: node.leader_name() == "node1", timeout=30, what="the agent to lead")
    job = shell_job("limits", "ulimit -n")
    assert node.call("POST", "/v1/jobs", job)[0] == 201
    assert node.call("POST", "/v1/jobs/limits/run")[0] == 200
    done = wait_for(
        lambda: [e for e in executions(node.api, "limits") if e["finished_at"][:4] != "0001"],
        timeout=30,
        what="the run",
    )
    assert done[0]["output"].strip() == str(hard)


def test_a_full_disk_stops_the_agent_with_one_line_and_keeps_what_it_acknowledged(
    cluster: ProcCluster,
) -> None:
    """A file size limit makes the Raft log's writes fail as a full disk does
    (``EFBIG``; Python ignores ``SIGXFSZ``). The agent stops with status 1 and
    one line naming the log; restarted with room, it has every job it said 201
    to."""
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (256 * 1024, hard))
    try:
        node = cluster.add("node1")  # inherits the limit
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
    wait_for(lambda: node.leader_name() == "node1", timeout=30, what="the agent to lead")
    acknowledged: list[str] = []
    for i in range(100):
        name = f"big{i}"
        job = {
            "name": name,
            "schedule": "@manually",
            "executor": "shell",
            "executor_config": {"command": "true", "padding": "x" * 10_000},
        }
        try:
            status, _ = node.call("POST", "/v1/jobs", job)
        except OSError:  # the agent stopped while answering
            break
        if status != 201:
            break
        acknowledged.append(name)
    assert node.proc is not None
    assert node.proc.wait(timeout=60) == 1
    log = node.log_path.read_text()
    assert "cannot write the Raft log in " in log and "File too large" in log
    assert "Traceback" not in log
    assert 5 < len(acknowledged) < 100

    node.start()
    wait_for(lambda: node.leader_name() == "node1", timeout=30, what="the agent to lead again")
    status, jobs = node.call("GET", "/v1/jobs")
    assert status == 200
    assert set(acknowledged) <= {j["name"] for j in jobs}
