"""``dkron jobs|executions|members|schedule``: the CLI in-process against a real agent.

The CLI is synchronous, so every call runs in a worker thread while the agent
serves on loopback in the test's nursery.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import functools
import io
import json
import pathlib
import ssl
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
import trio

from dkron import jobcli
from dkron.cli import main
from dkron.io_trio.agent import Agent
from dkron.io_trio.live import Options, call, wait_leader
from dkron.jobcli import (
    Action,
    JobSpec,
    format_table,
    load_job_files,
    plan_apply,
    preview_times,
)
from dkron.model import Job, job_to_json

Result = tuple[int, str, str]


@pytest.fixture(autouse=True)
def _no_token(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DKRON_TOKEN", raising=False)


def run_sync(*args: str) -> Result:
    out, err = io.StringIO(), io.StringIO()
    code = main(list(args), stdout=out, stderr=err)
    return code, out.getvalue(), err.getvalue()


async def cli(*args: str) -> Result:
    return await trio.to_thread.run_sync(functools.partial(run_sync, *args))


async def ok(*args: str) -> str:
    code, out, err = await cli(*args)
    assert code == 0, err
    return out


@pytest.fixture
async def server(tmp_path: pathlib.Path, nursery: trio.Nursery) -> str:
    """The ``--address`` of a single-server agent that leads."""
    agent = await nursery.start(Agent(Options(data_dir=str(tmp_path / "agent"))).run)
    port = agent.http_port
    assert port is not None
    with trio.fail_after(30):
        await wait_leader(port)
        # /v1/leader answers once Raft elected this node; writes are accepted
        # only once it applied its own term's entries, which /v1/isleader says.
        while True:
            status, _ = await call(port, "GET", "/v1/isleader")
            if status == 200:
                break
            await trio.sleep(0.02)
    return f"http://127.0.0.1:{port}"


def _write(path: pathlib.Path, text: str) -> pathlib.Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def _shell(command: str) -> dict[str, str]:
    return {"command": command}


def _jobs_dir(root: pathlib.Path) -> pathlib.Path:
    """A directory mixing YAML (multi-document), JSON (a list) and a .yml file.

    ``a-child.json`` sorts before the file of its parent, so a correct apply
    must reorder the writes.
    """
    d = root / "jobs"
    _write(
        d / "a-child.json",
        json.dumps(
            [
                {
                    "name": "report",
                    "parent_job": "backup",
                    "executor": "shell",
                    "executor_config": _shell("echo report"),
                }
            ]
        ),
    )
    _write(
        d / "b-jobs.yaml",
        """\
name: backup
schedule: "0 0 12 * * *"
executor: shell
executor_config:
  command: echo backup
  shell: true
  timeout: 30s
tags:
  role: dkron
---
name: cleanup
displayname: Nightly cleanup
schedule: "@manually"
executor: shell
executor_config: {command: echo cleanup}
metadata: {team: ops}
""",
    )
    _write(
        d / "c.yml",
        """\
- name: ping
  schedule: "@manually"
  starts_at: 2024-01-01T00:00:00Z
  executor: shell
  executor_config: {command: echo ping}
""",
    )
    _write(d / "notes.txt", "not a job file")
    return d


async def _api_jobs(address: str) -> dict[str, dict[str, Any]]:
    code, out, err = await cli("jobs", "list", "--json", "--address", address)
    assert code == 0, err
    return {j["name"]: j for j in json.loads(out)}


# -- apply ---------------------------------------------------------------------------


async def test_apply_creates_then_is_idempotent_then_updates_one(
    server: str, tmp_path: pathlib.Path
) -> None:
    d = _jobs_dir(tmp_path)
    code, out, err = await cli("jobs", "apply", "-f", str(d), "--address", server)
    assert code == 0, err
    assert "4 created, 0 updated, 0 unchanged, 0 deleted" in out
    assert out.index("created job backup") < out.index("created job report")
    jobs = await _api_jobs(server)
    assert set(jobs) == {"backup", "cleanup", "ping", "report"}
    assert jobs["backup"]["executor_config"] == {
        "command": "echo backup",
        "shell": "true",
        "timeout": "30s",
    }
    assert jobs["ping"]["starts_at"] == "2024-01-01T00:00:00Z"
    assert jobs["report"]["parent_job"] == "backup"

    code, out, err = await cli("jobs", "apply", "-f", str(d), "--address", server)
    assert code == 0, err
    assert "0 created, 0 updated, 4 unchanged, 0 deleted" in out

    text = (d / "c.yml").read_text().replace("echo ping", "echo pong")
    (d / "c.yml").write_text(text)
    code, out, err = await cli("jobs", "apply", "-f", str(d), "--json", "--address", server)
    assert code == 0, err
    actions = {e["job"]: e["action"] for e in json.loads(out)}
    assert actions == {
        "backup": "unchanged",
        "cleanup": "unchanged",
        "report": "unchanged",
        "ping": "update",
    }
    updated = next(e for e in json.loads(out) if e["job"] == "ping")
    assert updated["response"]["executor_config"]["command"] == "echo pong"
    assert (await _api_jobs(server))["ping"]["executor_config"]["command"] == "echo pong"


async def test_dry_run_shows_diff_and_next_times_and_changes_nothing(
    server: str, tmp_path: pathlib.Path
) -> None:
    d = _jobs_dir(tmp_path)
    await ok("jobs", "apply", "-f", str(d), "--address", server)
    before = await _api_jobs(server)
    text = (d / "b-jobs.yaml").read_text().replace("echo cleanup", "echo tidy")
    (d / "b-jobs.yaml").write_text(text)
    _write(
        d / "d-new.json",
        json.dumps({"name": "noon", "schedule": "0 0 12 * * *", "timezone": "Asia/Tokyo"}),
    )

    code, out, err = await cli("jobs", "apply", "-f", str(d), "--dry-run", "--address", server)
    assert code == 0, err
    assert "update job cleanup" in out
    assert '-    "command": "echo cleanup"' in out
    assert '+    "command": "echo tidy"' in out
    assert f"--- server: cleanup\n+++ {d / 'b-jobs.yaml'}: job #2" in out
    assert "create job noon" in out and "--- /dev/null" in out
    noon = out[out.index("create job noon") :]
    times = [line.strip() for line in noon.splitlines() if line.startswith("  20")][:5]
    assert len(times) == 5
    assert all(t.endswith("T03:00:00Z") for t in times)  # noon in Tokyo
    assert "computed locally" in noon
    assert "dry run: 1 to create, 1 to update, 3 unchanged, 0 to delete" in out
    assert await _api_jobs(server) == before

    code, out, err = await cli(
        "jobs", "apply", "-f", str(d), "--dry-run", "--json", "--address", server
    )
    assert code == 0, err
    report = {e["job"]: e for e in json.loads(out)}
    assert report["cleanup"]["action"] == "update"
    assert report["cleanup"]["next"] == []  # @manually
    assert '+    "command": "echo tidy"' in report["cleanup"]["diff"]
    assert report["noon"]["action"] == "create" and len(report["noon"]["next"]) == 5
    assert report["backup"]["action"] == "unchanged"
    assert await _api_jobs(server) == before


async def test_dry_run_of_an_unchanged_schedule_asks_the_server(
    server: str, tmp_path: pathlib.Path
) -> None:
    f = _write(
        tmp_path / "j.yaml",
        'name: hourly\nschedule: "0 15 * * * *"\nowner: a\n',
    )
    await ok("jobs", "apply", "-f", str(f), "--address", server)
    f.write_text('name: hourly\nschedule: "0 15 * * * *"\nowner: b\n')
    code, out, err = await cli("jobs", "apply", "-f", str(f), "--dry-run", "--address", server)
    assert code == 0, err
    assert "next 5 fire times (server):" in out
    times = [line.strip() for line in out.splitlines() if line.startswith("  20")]
    assert len(times) == 5 and all(t.endswith(":15:00Z") for t in times)
    assert (await _api_jobs(server))["hourly"]["owner"] == "a"


async def test_prune_asks_then_deletes_children_first(
    server: str, tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    extra = tmp_path / "extra.json"
    _write(
        extra,
        json.dumps(
            [
                {"name": "old-parent", "schedule": "@manually"},
                {"name": "old-child", "parent_job": "old-parent"},
                {"name": "keep", "schedule": "@manually"},
            ]
        ),
    )
    await ok("jobs", "apply", "-f", str(extra), "--address", server)
    keep = _write(tmp_path / "keep" / "keep.yaml", 'name: keep\nschedule: "@manually"\n')

    monkeypatch.setattr(sys, "stdin", io.StringIO("n\n"))
    code, out, err = await cli("jobs", "apply", "-f", str(keep), "--prune", "--address", server)
    assert code == 1
    assert "will be deleted: old-child, old-parent" in err and "aborted" in err
    assert set(await _api_jobs(server)) == {"keep", "old-child", "old-parent"}

    code, out, err = await cli(
        "jobs", "apply", "-f", str(keep), "--prune", "--dry-run", "--address", server
    )
    assert code == 0, err
    assert "delete job old-child (not in the files)" in out
    assert set(await _api_jobs(server)) == {"keep", "old-child", "old-parent"}

    monkeypatch.setattr(sys, "stdin", io.StringIO("y\n"))
    code, out, err = await cli("jobs", "apply", "-f", str(keep), "--prune", "--address", server)
    assert code == 0, err
    assert out.index("deleted job old-child") < out.index("deleted job old-parent")
    assert "0 created, 0 updated, 1 unchanged, 2 deleted" in out
    assert set(await _api_jobs(server)) == {"keep"}


async def test_prune_refuses_a_file_job_whose_parent_it_would_delete(
    server: str, tmp_path: pathlib.Path
) -> None:
    _write(tmp_path / "p.json", json.dumps({"name": "parent", "schedule": "@manually"}))
    await ok("jobs", "apply", "-f", str(tmp_path / "p.json"), "--address", server)
    child = _write(tmp_path / "c" / "child.yaml", "name: child\nparent_job: parent\n")
    code, _, err = await cli(
        "jobs", "apply", "-f", str(child), "--prune", "--yes", "--address", server
    )
    assert code == 1
    assert (
        f"{child}: job child: parent job parent is not in the files, and --prune deletes it" in err
    )
    assert set(await _api_jobs(server)) == {"parent"}
    # Without --prune the server's parent is fine.
    code, _, err = await cli("jobs", "apply", "-f", str(child), "--address", server)
    assert code == 0, err


async def test_bad_files_are_all_reported_with_paths_and_nothing_is_sent(
    server: str, tmp_path: pathlib.Path
) -> None:
    d = tmp_path / "bad"
    good = _write(d / "a-good.yaml", 'name: fine\nschedule: "@manually"\n')
    broken = _write(d / "b-broken.yaml", "name: x\n  schedule: [\n")
    bad_sched = _write(
        d / "c-sched.json", json.dumps({"name": "sched", "schedule": "0 61 * * * *"})
    )
    typo = _write(d / "d-typo.yaml", 'name: typo\nschedul: "@manually"\n')
    dup = _write(d / "e-dup.yaml", 'name: fine\nschedule: "@daily"\n')
    orphan = _write(d / "f-orphan.yaml", "name: orphan\nparent_job: nowhere\n")
    badjson = _write(d / "g.json", '{"name": "j",\n "schedule": }')
    typed = _write(d / "h-types.json", json.dumps({"name": "t", "retries": "3"}))
    multi = _write(d / "i-multi.yaml", "- name: m1\n- {name: m2, schedule: nope}\n")
    code, out, err = await cli("jobs", "apply", "-f", str(d), "--address", server)
    assert code == 1
    assert out == ""
    assert f"{broken}: invalid YAML: line 2, column" in err
    assert f"{bad_sched}: can't parse job schedule: end of range (61) above maximum (59)" in err
    assert f"{typo}: unknown job field 'schedul'" in err
    assert f"{good}, {dup}: job fine is declared twice" in err
    assert f"{badjson}: invalid JSON: line 2, column 14" in err
    assert f"{typed}: json: cannot unmarshal string into Go struct field Job.retries" in err
    assert f"{multi}: job #2 (m2): can't parse job schedule: expected exactly 6 fields" in err
    assert f"{multi}: job #1 (m1): can't parse job schedule: empty spec string" in err
    assert "nothing was sent" in err
    assert str(orphan) not in err  # checked against the server only once the files are valid
    assert await _api_jobs(server) == {}

    for path in (broken, bad_sched, typo, dup, badjson, typed, multi):
        path.unlink()
    code, out, err = await cli("jobs", "apply", "-f", str(d), "--address", server)
    assert code == 1
    assert (
        f"{orphan}: job orphan: parent job nowhere is neither in the files nor on the server" in err
    )
    assert await _api_jobs(server) == {}


async def test_progress_is_reported_for_long_runs(server: str, tmp_path: pathlib.Path) -> None:
    many = [{"name": f"job-{i:02d}", "schedule": "@manually"} for i in range(12)]
    f = _write(tmp_path / "many.json", json.dumps(many))
    code, out, err = await cli("jobs", "apply", "-f", str(f), "--address", server)
    assert code == 0, err
    assert "applied 1/12" in err and "applied 12/12" in err
    assert "12 created" in out
    assert len(await _api_jobs(server)) == 12


class _JsonHandler(BaseHTTPRequestHandler):
    """A quiet handler that answers JSON, for the CLI's recording servers."""

    def _reply(self, status: int, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        del format, args


class _SlowApi(_JsonHandler):
    """An API whose writes take a while, recording when each one ran."""

    lock = threading.Lock()
    active = 0
    most = 0
    spans: dict[str, tuple[float, float]] = {}
    refuse = ""

    def do_GET(self) -> None:
        self._reply(200, b"[]")

    def do_POST(self) -> None:
        cls = type(self)
        body = self.rfile.read(int(self.headers["Content-Length"]))
        name = json.loads(body)["name"]
        with cls.lock:
            cls.active += 1
            cls.most = max(cls.most, cls.active)
        start = time.monotonic()
        time.sleep(0.05)
        with cls.lock:
            cls.active -= 1
            cls.spans[name] = (start, time.monotonic())
        if name == cls.refuse:
            self._reply(500, b'{"error": "no room"}')
        else:
            self._reply(201, body)


@pytest.fixture
def slow_api() -> Iterator[str]:
    _SlowApi.active = _SlowApi.most = 0
    _SlowApi.spans = {}
    _SlowApi.refuse = ""
    with _serving(_SlowApi) as address:
        yield address


@contextlib.contextmanager
def _serving(handler: type[BaseHTTPRequestHandler]) -> Iterator[str]:
    """A loopback HTTP server for a recording handler, as an ``--address``."""
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join()


def _family(tmp_path: pathlib.Path) -> pathlib.Path:
    jobs: list[dict[str, str]] = [{"name": f"p{i:02d}", "schedule": "@manually"} for i in range(20)]
    jobs += [{"name": f"c{i:02d}", "parent_job": f"p{i:02d}"} for i in range(3)]
    jobs += [{"name": "g00", "parent_job": "c00"}]
    return _write(tmp_path / "family.json", json.dumps(jobs))


def test_apply_writes_independent_jobs_together_and_parents_first(
    slow_api: str, tmp_path: pathlib.Path
) -> None:
    """One write at a time, each waited for the cluster's commit: 17 s for 2,000 jobs."""
    code, out, err = run_sync("jobs", "apply", "-f", str(_family(tmp_path)), "--address", slow_api)
    assert code == 0, err
    assert "24 created" in out
    assert (
        out.index("created job p19") < out.index("created job c00") < out.index("created job g00")
    )
    spans = _SlowApi.spans
    assert len(spans) == 24 and _SlowApi.most > 1
    for child, parent in [("c00", "p00"), ("c01", "p01"), ("c02", "p02"), ("g00", "c00")]:
        assert spans[child][0] >= spans[parent][1]
    assert "applied 24/24" in err


def test_apply_finishes_the_wave_of_a_failed_write_and_stops(
    slow_api: str, tmp_path: pathlib.Path
) -> None:
    _SlowApi.refuse = "p05"
    code, out, err = run_sync("jobs", "apply", "-f", str(_family(tmp_path)), "--address", slow_api)
    assert code == 1
    assert set(_SlowApi.spans) == {f"p{i:02d}" for i in range(20)}  # no child was sent
    assert "dkron jobs apply: error: create job p05: HTTP 500: no room" in err
    assert "dkron jobs apply: applied 19/24 before the error" in err
    assert "created job p19" in out and "created job p05" not in out


# -- list / get / run / toggle / delete / executions / members -----------------------


async def test_job_commands_and_executions(
    server: str, tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    f = _write(
        tmp_path / "jobs.yaml",
        """\
- name: hello
  displayname: Say hello
  schedule: "@manually"
  executor: shell
  executor_config: {command: "echo hello world"}
- name: other
  schedule: "0 0 6 * * *"
""",
    )
    await ok("jobs", "apply", "-f", str(f), "--address", server)

    code, out, _ = await cli("jobs", "list", "--address", server)
    assert code == 0
    lines = out.splitlines()
    assert lines[0].split() == [
        "NAME", "SCHEDULE", "EXECUTOR", "STATUS", "DISABLED", "SUCCESS", "ERROR", "NEXT"
    ]  # fmt: skip
    assert lines[1].split()[:5] == ["hello", "@manually", "shell", "untriggered", "false"]
    assert lines[2].split()[:3] == ["other", "0", "0"]
    assert lines[0].index("EXECUTOR") == lines[1].index("shell")  # aligned columns
    code, out, _ = await cli("jobs", "list", "-q", "Say", "--json", "--address", server)
    assert [j["name"] for j in json.loads(out)] == ["hello"]

    code, out, _ = await cli("jobs", "get", "hello", "--address", server)
    assert code == 0
    assert "executor_config: command=echo hello world" in out
    assert any(line.split() == ["displayname:", "Say", "hello"] for line in out.splitlines())
    code, _, err = await cli("jobs", "get", "nope", "--address", server)
    assert (code, err) == (1, "dkron jobs get: error: job nope not found\n")

    code, out, err = await cli("jobs", "run", "hello", "--address", server)
    assert (code, out) == (0, "Job hello started\n"), err
    execs: list[dict[str, Any]] = []
    with trio.fail_after(20):
        while not any(e["finished_at"][:4] != "0001" for e in execs):
            await trio.sleep(0.1)
            code, out, err = await cli("executions", "list", "hello", "--json", "--address", server)
            assert code == 0, err
            execs = json.loads(out)
    assert execs[0]["output"] == "hello world\n" and execs[0]["success"] is True
    code, out, _ = await cli("executions", "list", "hello", "--limit", "1", "--address", server)
    assert code == 0
    header, row = out.splitlines()
    assert header.split()[:5] == ["ID", "STARTED", "FINISHED", "NODE", "RESULT"]
    assert row.split()[3:7] == ["n1", "success", "1", "manual"]
    assert row.endswith("hello world")
    code, out, _ = await cli("jobs", "list", "--status", "success", "--json", "--address", server)
    assert [j["name"] for j in json.loads(out)] == ["hello"]

    code, out, _ = await cli("jobs", "toggle", "hello", "--address", server)
    assert (code, out) == (0, "Job hello is now disabled\n")
    code, out, _ = await cli("jobs", "get", "hello", "--json", "--address", server)
    assert json.loads(out)["disabled"] is True
    code, out, _ = await cli("jobs", "toggle", "hello", "--address", server)
    assert out == "Job hello is now enabled\n"

    monkeypatch.setattr(sys, "stdin", io.StringIO(""))
    code, _, err = await cli("jobs", "delete", "hello", "--address", server)
    assert code == 1 and "Delete job hello and its executions? [y/N]" in err
    assert "hello" in await _api_jobs(server)
    code, out, _ = await cli("jobs", "delete", "hello", "--yes", "--address", server)
    assert (code, out) == (0, "Job hello deleted\n")
    assert set(await _api_jobs(server)) == {"other"}
    code, _, err = await cli("jobs", "run", "hello", "--address", server)
    assert code == 1 and "job hello not found" in err
    code, _, err = await cli("executions", "list", "hello", "--address", server)
    assert code == 1 and "job hello not found" in err


async def test_members(server: str) -> None:
    code, out, err = await cli("members", "--address", server)
    assert code == 0, err
    header, row = out.splitlines()
    assert header.split() == [
        "NAME", "ADDRESS", "STATUS", "SERVER", "LEADER", "DC", "REGION", "VERSION"
    ]  # fmt: skip
    cells = row.split()
    assert cells[0] == "n1" and cells[2:7] == ["alive", "true", "true", "dc1", "global"]
    code, out, _ = await cli("members", "--json", "--address", server)
    members = json.loads(out)
    assert [m["Name"] for m in members] == ["n1"] and members[0]["statusText"] == "alive"


async def test_server_errors_carry_the_servers_message(server: str, tmp_path: pathlib.Path) -> None:
    code, _, err = await cli("executions", "list", "nope", "--address", server)
    assert (code, err) == (1, "dkron executions list: error: job nope not found\n")
    port = int(server.rpartition(":")[2])
    assert (await call(port, "POST", "/v1/pause"))[0] == 200
    f = _write(tmp_path / "j.yaml", 'name: paused\nschedule: "@manually"\n')
    code, out, err = await cli("jobs", "apply", "-f", str(f), "--address", server)
    assert code == 1 and out == ""
    assert err.splitlines() == [
        "dkron jobs apply: error: create job paused: "
        "HTTP 503: New job submissions are currently paused",
        "dkron jobs apply: applied 0/1 before the error",
    ]


# -- without a server -----------------------------------------------------------------


def test_unreachable_server_and_bad_address() -> None:
    code, _, err = run_sync("members", "--address", "http://127.0.0.1:9")
    assert code == 1 and err.startswith("dkron members: error: cannot reach http://127.0.0.1:9")
    code, _, err = run_sync("jobs", "list", "--address", "ftp://x")
    assert code == 2 and "--address: expected http://host:port" in err
    code, _, err = run_sync("jobs", "list", "--status", "weird")
    assert code == 2 and "argument --status: invalid choice" in err
    code, _, err = run_sync("jobs", "apply")
    assert code == 2 and "-f/--file" in err


def test_a_client_loads_the_trust_store_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """``jobs apply`` over HTTPS makes a request per job; each must not reload the CAs."""
    loads: list[str | None] = []
    create = ssl.create_default_context

    def counted(*, cafile: str | None = None) -> ssl.SSLContext:
        loads.append(cafile)
        return create(cafile=cafile)

    monkeypatch.setattr(ssl, "create_default_context", counted)
    client = jobcli.Client("https://127.0.0.1:9")
    for _ in range(3):
        with pytest.raises(jobcli.ApiError, match="cannot reach"):
            client.request("GET", "/v1/jobs")
    assert loads == [None]


class _Recorder(_JsonHandler):
    seen: list[dict[str, str]] = []

    def do_GET(self) -> None:
        type(self).seen.append(dict(self.headers.items()))
        self._reply(200, b"[]")


@pytest.fixture
def recorder() -> Iterator[str]:
    _Recorder.seen = []
    with _serving(_Recorder) as address:
        yield address


def test_token_flag_and_env(recorder: str, monkeypatch: pytest.MonkeyPatch) -> None:
    assert run_sync("members", "--address", recorder)[0] == 0
    assert "Authorization" not in _Recorder.seen[-1]
    assert run_sync("--token", "s3cret", "members", "--address", recorder)[0] == 0
    assert _Recorder.seen[-1]["Authorization"] == "Bearer s3cret"
    assert run_sync("jobs", "list", "--token", "other", "--address", recorder)[0] == 0
    assert _Recorder.seen[-1]["Authorization"] == "Bearer other"
    monkeypatch.setenv("DKRON_TOKEN", "from-env")
    code, out, _ = run_sync("executions", "list", "j", "--address", recorder)
    assert code == 0 and out.startswith("ID")
    assert _Recorder.seen[-1]["Authorization"] == "Bearer from-env"


def test_schedule_preview_in_a_zone() -> None:
    code, out, err = run_sync(
        "schedule", "preview", "0 30 9 * * 1-5", "--tz", "Europe/Berlin", "-n", "3",
        "--after", "2024-03-29T00:00:00Z",
    )  # fmt: skip
    assert code == 0, err
    # Across the spring-forward weekend the offset changes with the zone.
    assert out.splitlines() == [
        "2024-03-29T09:30:00+01:00",
        "2024-04-01T09:30:00+02:00",
        "2024-04-02T09:30:00+02:00",
    ]
    code, out, _ = run_sync(
        "schedule", "preview", "@every 90s", "-n", "2", "--json", "--after", "2024-01-01T00:00:00Z"
    )
    assert json.loads(out) == ["2024-01-01T00:01:30Z", "2024-01-01T00:03:00Z"]
    code, out, _ = run_sync("schedule", "preview", "@at 2000-01-01T00:00:00Z")
    assert code == 0 and out.startswith("no fire times")
    code, out, _ = run_sync("schedule", "preview", "@hourly", "-n", "4")
    assert code == 0 and len(out.splitlines()) == 4


def test_schedule_preview_errors_name_the_argument() -> None:
    code, out, err = run_sync("schedule", "preview", "0 61 * * * *")
    assert (code, out) == (2, "")
    assert err.startswith("usage: dkron schedule preview")
    assert "error: argument SPEC: can't parse job schedule: end of range (61)" in err
    code, _, err = run_sync("schedule", "preview", "@daily", "--tz", "Mars/Base")
    assert code == 2 and "argument --tz: unknown time zone Mars/Base" in err
    code, _, err = run_sync("schedule", "preview", "@daily", "-n", "0")
    assert code == 2 and "argument -n/--count: expected an integer from 1 to 1000" in err
    code, _, err = run_sync("schedule", "preview", "@daily", "--after", "yesterday")
    assert code == 2 and "argument --after:" in err


# -- the pure parts -------------------------------------------------------------------


def test_preview_times_hash_the_job_name() -> None:
    when = dt.datetime(2024, 1, 1, tzinfo=dt.UTC)
    a = preview_times("0 ~ * * * *", after=when, count=2, job_name="alpha")
    b = preview_times("0 ~ * * * *", after=when, count=2, job_name="beta")
    assert a != b and all(t.startswith("2024-01-01T0") for t in a + b)
    assert preview_times("0 ~ * * * *", after=when, count=2, job_name="alpha") == a


def test_yaml_typing_is_undone_for_string_maps(tmp_path: pathlib.Path) -> None:
    f = _write(
        tmp_path / "j.yaml",
        """\
name: typed
schedule: "@manually"
expires_at: 2030-06-01 12:00:00+02:00
executor_config: {shell: true, timeout: 30, ratio: 1.5, empty: null}
processors:
  log: {forward: false}
""",
    )
    specs, problems = load_job_files([str(f)])
    assert problems == []
    body = job_to_json(specs[0].job)
    assert body["executor_config"] == {
        "empty": "",
        "ratio": "1.5",
        "shell": "true",
        "timeout": "30",
    }
    assert body["processors"] == {"log": {"forward": "false"}}
    assert body["expires_at"] == "2030-06-01T10:00:00Z"
    assert specs[0].fields == frozenset(
        {"name", "schedule", "expires_at", "executor_config", "processors"}
    )


def test_empty_inputs_are_problems(tmp_path: pathlib.Path) -> None:
    empty_dir = tmp_path / "none"
    empty_dir.mkdir()
    empty_file = _write(tmp_path / "e.yaml", "---\n")
    scalar = _write(tmp_path / "s.yaml", "just text\n")
    _, problems = load_job_files([str(empty_dir), str(empty_file), str(scalar), "/no/such"])
    assert [str(p) for p in problems] == [
        f"{empty_dir}: no job files (*.yaml, *.yml, *.json)",
        f"{empty_file}: no jobs in the file",
        f"{scalar}: a job must be a mapping, not str",
        "/no/such: no such file or directory",
    ]


def _spec(name: str, **fields: Any) -> JobSpec:
    obj = {"name": name, **fields}
    return JobSpec(where=f"{name}.yaml", job=Job(**obj), fields=frozenset(obj))


def test_plan_compares_only_user_set_fields_and_orders_writes() -> None:
    server = {
        "a": job_to_json(Job(name="a", schedule="@daily", owner="bob", success_count=9)),
        "gone": job_to_json(Job(name="gone", schedule="@daily")),
    }
    specs = [
        _spec("c", parent_job="b"),
        _spec("b", schedule="@daily"),
        _spec("a", schedule="@daily"),  # owner not set in the file: not compared
    ]
    changes, problems = plan_apply(specs, server, prune=True)
    assert problems == []
    assert [(c.name, c.action) for c in changes] == [
        ("b", Action.CREATE),
        ("a", Action.UNCHANGED),
        ("c", Action.CREATE),
        ("gone", Action.DELETE),
    ]
    loops = [_spec("x", parent_job="y"), _spec("y", parent_job="x")]
    _, problems = plan_apply(loops, {}, prune=False)
    assert [p.where for p in problems] == ["x.yaml", "y.yaml"]


def test_format_table_aligns_and_flattens() -> None:
    text = format_table(["A", "LONGER"], [["xxxx", "1"], ["y", "two\nlines"]])
    assert text == "A     LONGER\nxxxx  1\ny     two lines\n"


async def test_logs_follows_a_running_execution_live(server: str) -> None:
    job = {
        "name": "steps",
        "schedule": "@manually",
        "executor": "shell",
        "executor_config": {
            "command": "for i in 1 2 3; do echo step$i; sleep 0.4; done",
            "shell": "true",
        },
    }
    client = jobcli.Client(server)
    await trio.to_thread.run_sync(lambda: client.call("POST", "/v1/jobs", body=job, ok=(201,)))
    await ok("jobs", "run", "steps", "--address", server)
    with trio.fail_after(20):
        while True:  # wait until the run has started, then follow it
            execs = await trio.to_thread.run_sync(
                lambda: client.call("GET", "/v1/jobs/steps/executions")
            )
            if execs:
                break
            await trio.sleep(0.05)
        code, out, err = await cli("logs", "-f", "steps", "--address", server)
    assert code == 0, err
    assert out == "step1\nstep2\nstep3\n"
    assert "success" in err.lower()
    # Once finished, plain ``logs`` prints the stored output of the latest run.
    assert await ok("logs", "steps", "--address", server) == "step1\nstep2\nstep3\n"
    code, _, err = await cli("logs", "steps", "nope", "--address", server)
    assert code == 1 and "not found" in err
