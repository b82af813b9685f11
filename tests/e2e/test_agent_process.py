"""A real ``python -m dkron agent`` process: jobs run on schedule and survive kill -9.

These tests use real time (a job ``@every 1s`` has to fire a few times), so
they assert outcomes with generous deadlines, never timings.
"""

from __future__ import annotations

import contextlib
import json
import os
import pathlib
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def call(port: int, method: str, path: str, body: object | None = None) -> tuple[int, Any]:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=data, method=method)
    try:
        with urllib.request.urlopen(req, timeout=5) as resp:
            raw = resp.read()
            return resp.status, json.loads(raw) if raw else None
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode()


def wait_for(predicate: Any, *, timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError):
            value = predicate()
            if value:
                return value
        time.sleep(0.1)
    pytest.fail(f"timed out waiting for {what}")


@contextlib.contextmanager
def agent(data_dir: pathlib.Path, port: int) -> Iterator[subprocess.Popen[bytes]]:
    argv = [
        sys.executable,
        "-m",
        "dkron",
        "agent",
        "--server",
        "--bootstrap-expect",
        "1",
        "--node-name",
        "node1",
        "--data-dir",
        str(data_dir),
        "--http-addr",
        f"127.0.0.1:{port}",
        "--bind-addr",
        "127.0.0.1:0",
    ]
    proc = subprocess.Popen(
        argv, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True
    )
    try:
        wait_for(
            lambda: proc.poll() is None and call(port, "GET", "/v1/leader")[0] == 200,
            timeout=30,
            what="the agent to lead",
        )
        yield proc
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
        if proc.stderr is not None:
            proc.stderr.close()


def executions(port: int, job: str) -> list[dict[str, Any]]:
    status, body = call(port, "GET", f"/v1/jobs/{job}/executions")
    return body if status == 200 and isinstance(body, list) else []


def test_a_job_runs_on_schedule_and_survives_kill_9(tmp_path: pathlib.Path) -> None:
    port = free_port()
    job = {
        "name": "tick",
        "schedule": "@every 1s",
        "executor": "shell",
        "executor_config": {"command": "echo tick", "shell": "true"},
    }
    with agent(tmp_path, port) as proc:
        status, created = call(port, "POST", "/v1/jobs", job)
        assert status == 201, created
        done = wait_for(
            lambda: (
                [e for e in executions(port, "tick") if e["success"]][:3]
                if len([e for e in executions(port, "tick") if e["success"]]) >= 3
                else None
            ),
            timeout=30,
            what="three successful runs",
        )
        assert all(e["output"] == "tick\n" for e in done)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
    # The committed job and its history are on disk; scheduling resumes.
    with agent(tmp_path, port):
        status, stored = call(port, "GET", "/v1/jobs/tick")
        assert status == 200 and stored["schedule"] == "@every 1s"
        before = stored["success_count"]
        assert before >= 3
        wait_for(
            lambda: call(port, "GET", "/v1/jobs/tick")[1]["success_count"] > before,
            timeout=30,
            what="a run after the restart",
        )


def test_bad_requests_get_4xx_with_a_message(tmp_path: pathlib.Path) -> None:
    port = free_port()
    with agent(tmp_path, port):
        status, body = call(port, "POST", "/v1/jobs", {"name": "Bad Name", "schedule": "@daily"})
        assert status == 400 and "Job validation failed" in body
        status, body = call(port, "POST", "/v1/jobs", {"name": "x", "schedule": "* * *"})
        assert status == 400 and "can't parse job schedule" in body
        assert call(port, "GET", "/v1/jobs/missing")[0] == 404
