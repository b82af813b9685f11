"""A real ``python -m dkron agent`` process: jobs run on schedule and survive kill -9.

These tests use real time (a job ``@every 1s`` has to fire a few times), so
they assert outcomes with generous deadlines, never timings.
"""

from __future__ import annotations

import pathlib
import signal
from collections.abc import Iterator

import pytest

from dkron.testing.procs import AgentProc, ProcCluster, executions, wait_for


@pytest.fixture
def cluster(tmp_path: pathlib.Path) -> Iterator[ProcCluster]:
    with ProcCluster(tmp_path) as c:
        yield c


def single_server(c: ProcCluster) -> AgentProc:
    node = c.add("node1")
    wait_for(lambda: node.leader_name() == "node1", timeout=30, what="the agent to lead")
    return node


def test_a_job_runs_on_schedule_and_survives_kill_9(cluster: ProcCluster) -> None:
    job = {
        "name": "tick",
        "schedule": "@every 1s",
        "executor": "shell",
        "executor_config": {"command": "echo tick", "shell": "true"},
    }
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
