"""Real ``python -m dkron agent`` processes on loopback, for end-to-end tests and benchmarks.

Each agent binds 127.0.0.1 only, on ports chosen once and kept across
restarts (its peers know it by its gossip and RPC addresses, as a restarted
Dkron node is known by its configured ones), keeps its own data directory,
and runs in its own process group so that ``kill -9`` reaches everything it
started.  Output goes to a log file next to the data directory rather than a
pipe: nobody reads a pipe during a test, and a full pipe would stall the
agent.  The ``ProcCluster`` context manager kills every process it started
on the way out, even when the body fails.

Real processes run on real time, so every wait here polls for an outcome
under a generous deadline; nothing asserts a duration.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as _dt
import json
import os
import pathlib
import random
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar

__all__ = [
    "ROOT",
    "AgentExited",
    "AgentProc",
    "ProcCluster",
    "SlotReport",
    "WaitTimeout",
    "call",
    "cli",
    "executions",
    "free_port",
    "parse_time",
    "slot_report",
    "wait_for",
]

ROOT = pathlib.Path(__file__).resolve().parents[2]
T = TypeVar("T")


class WaitTimeout(AssertionError):
    """An outcome did not happen in time; an ``AssertionError`` so pytest reports it plainly."""


class AgentExited(AssertionError):
    """An agent process ended when it should be running."""


def _ephemeral_range() -> tuple[int, int]:
    try:
        low, high = pathlib.Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(low), int(high)
    except (OSError, ValueError):
        return 32768, 60999


_ports = random.Random(int.from_bytes(os.urandom(8), "big"))


def free_port() -> int:
    """A port free for both TCP and UDP on 127.0.0.1, outside the kernel's ephemeral range.

    A restarted agent binds its old ports again.  Had they come from the
    ephemeral range (``bind(0)``), another process's outgoing connection
    could hold the number as its local port by then, and the restart would
    fail with "address in use"; below the range nothing takes it implicitly.
    """
    low, high = _ephemeral_range()
    lo, hi = (10_000, low - 1) if low > 12_000 else (high + 1, 65_535)
    for _ in range(1000):
        port = _ports.randint(lo, hi)
        try:
            with socket.socket() as t, socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
                t.bind(("127.0.0.1", port))
                u.bind(("127.0.0.1", port))
        except OSError:
            continue
        return port
    raise OSError("no free port found on 127.0.0.1")


def call(
    port: int, method: str, path: str, body: object | None = None, *, timeout: float = 5.0
) -> tuple[int, Any]:
    """One HTTP request to an agent's API: ``(status, JSON body or error text)``."""
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=data, method=method)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            raw = resp.read()
            return resp.status, json.loads(raw) if raw else None
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode()


def wait_for(
    predicate: Callable[[], T | None], *, timeout: float, what: str, interval: float = 0.1
) -> T:
    """Poll ``predicate`` until it returns something truthy; connection errors count as "not yet".

    A node being restarted refuses connections or times out for a while, so
    ``OSError`` (which covers ``URLError`` and socket timeouts) is only a
    reason to ask again.
    """
    deadline = time.monotonic() + timeout
    while True:
        with contextlib.suppress(OSError, ValueError):
            value = predicate()
            if value:
                return value
        if time.monotonic() >= deadline:
            raise WaitTimeout(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(interval)


def executions(port: int, job: str) -> list[dict[str, Any]]:
    """A job's stored executions as one server sees them (empty when it cannot answer)."""
    status, body = call(port, "GET", f"/v1/jobs/{job}/executions")
    return body if status == 200 and isinstance(body, list) else []


def parse_time(text: str) -> _dt.datetime:
    """RFC 3339 with up to nanoseconds, as the API prints it (microsecond precision kept)."""
    main, _, rest = text.partition(".")
    if rest:
        digits = len(rest) - len(rest.lstrip("0123456789"))
        frac, zone = rest[:digits], rest[digits:]
        text = f"{main}.{frac[:6].ljust(6, '0')}{zone}"
    return _dt.datetime.fromisoformat(text.replace("Z", "+00:00"))


def cli(*args: str, timeout: float = 30.0) -> subprocess.CompletedProcess[str]:
    """Run the ``dkron`` command line (``python -m dkron ...``) and capture its output."""
    return subprocess.run(
        [sys.executable, "-m", "dkron", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


@dataclasses.dataclass
class AgentProc:
    """One agent process: its fixed addresses, its data directory and its current process."""

    name: str
    data_dir: pathlib.Path
    server: bool
    gossip_port: int
    rpc_port: int
    http_port: int | None
    args: tuple[str, ...] = ()
    proc: subprocess.Popen[bytes] | None = None
    starts: int = 0
    #: stopped on purpose (killed or terminated), as opposed to exited by itself
    stopped: bool = False

    @property
    def gossip_addr(self) -> str:
        return f"127.0.0.1:{self.gossip_port}"

    @property
    def log_path(self) -> pathlib.Path:
        return self.data_dir.with_name(f"{self.data_dir.name}.log")

    @property
    def api(self) -> int:
        assert self.http_port is not None, f"{self.name} is not a server: it has no API"
        return self.http_port

    def argv(self, join: Sequence[str] = ()) -> list[str]:
        argv = [
            sys.executable,
            "-m",
            "dkron",
            "agent",
            "--node-name",
            self.name,
            "--data-dir",
            str(self.data_dir),
            "--bind-addr",
            self.gossip_addr,
            "--rpc-port",
            str(self.rpc_port),
        ]
        if self.server:
            argv += ["--server", "--http-addr", f"127.0.0.1:{self.api}"]
        for seed in join:
            argv += ["--retry-join", seed, "--retry-interval", "1s"]
        return argv + list(self.args)

    def start(self, join: Sequence[str] = ()) -> None:
        """Start (or restart, with the same addresses and data) in a new process group."""
        assert not self.alive, f"{self.name} is already running"
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.starts += 1
        self.stopped = False
        with self.log_path.open("ab") as out:
            out.write(f"--- start {self.starts}: {' '.join(self.argv(join))}\n".encode())
            out.flush()
            self.proc = subprocess.Popen(
                self.argv(join),
                cwd=ROOT,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        """``kill -9`` the whole process group, then reap it."""
        proc = self.proc
        self.stopped = True
        if proc is None:
            return
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)

    def terminate(self, *, timeout: float = 30.0) -> int:
        """SIGTERM (graceful leave) and wait for the exit status."""
        proc = self.proc
        assert proc is not None and proc.poll() is None, f"{self.name} is not running"
        self.stopped = True
        proc.send_signal(signal.SIGTERM)
        try:
            return proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise WaitTimeout(f"{self.name} did not exit within {timeout:g}s of SIGTERM") from None

    def call(self, method: str, path: str, body: object | None = None) -> tuple[int, Any]:
        return call(self.api, method, path, body)

    def ensure_running(self) -> None:
        """Fail at once, with its log, if the process exited (a wait would only time out)."""
        if self.proc is not None and self.proc.poll() is not None:
            raise AgentExited(
                f"{self.name} exited with status {self.proc.returncode}:\n{self.log_tail()}"
            )

    def leader_name(self) -> str | None:
        """The leader this server knows of (``GET /v1/leader``), or None."""
        self.ensure_running()
        status, body = self.call("GET", "/v1/leader")
        return str(body["Name"]) if status == 200 and isinstance(body, dict) else None

    def log_tail(self, lines: int = 40) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])


class ProcCluster:
    """Agents under one directory; ``close`` (the context manager's exit) kills them all."""

    def __init__(self, root: pathlib.Path, *, extra_args: Sequence[str] = ()) -> None:
        self.root = root
        self.extra_args = tuple(extra_args)
        self.agents: dict[str, AgentProc] = {}

    def add(
        self,
        name: str,
        *,
        server: bool = True,
        bootstrap_expect: int = 1,
        join: Sequence[str] = (),
        tags: Mapping[str, str] | None = None,
        args: Sequence[str] = (),
    ) -> AgentProc:
        """Create and start an agent on fresh ports."""
        extra = list(self.extra_args) + list(args)
        if server:
            extra += ["--bootstrap-expect", str(bootstrap_expect)]
        for key, value in (tags or {}).items():
            extra += ["--tag", f"{key}={value}"]
        agent = AgentProc(
            name=name,
            data_dir=self.root / name,
            server=server,
            gossip_port=free_port(),
            rpc_port=free_port(),
            http_port=free_port() if server else None,
            args=tuple(extra),
        )
        self.agents[name] = agent
        agent.start(join)
        return agent

    def servers(self) -> list[AgentProc]:
        """The servers meant to be running (one that exited by itself is still listed)."""
        return [a for a in self.agents.values() if a.server and not a.stopped]

    def leader(self) -> AgentProc | None:
        """The server every live server names as leader, when they all agree on one."""
        names = {s.leader_name() for s in self.servers()}
        if len(names) != 1:
            return None
        name = names.pop()
        if name is None:
            return None
        agent = self.agents.get(name)
        return agent if agent is not None and not agent.stopped else None

    def wait_leader(self, *, timeout: float = 60.0) -> AgentProc:
        return wait_for(self.leader, timeout=timeout, what="one leader all servers agree on")

    def close(self) -> None:
        for agent in self.agents.values():
            agent.kill()

    def logs(self, lines: int = 40) -> str:
        return "\n".join(f"===== {a.name} =====\n{a.log_tail(lines)}" for a in self.agents.values())

    def __enter__(self) -> ProcCluster:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class SlotReport:
    """Fire slots of one ``@every`` job seen over a run, between its first and last slot."""

    expected: int
    lost: tuple[int, ...]
    duplicated: tuple[int, ...]
    off_grid: tuple[int, ...]
    first: int
    last: int


def slot_report(
    seen: Mapping[str, Mapping[str, Any]], *, interval_ns: int, since_ns: int = 0
) -> SlotReport:
    """Which slots are missing or ran twice on one node, from executions keyed by their ``id``.

    A scheduled run's ``group`` is its slot time in Unix ns, so the slots of
    an ``@every`` job are ``interval_ns`` apart from the first one.  A slot is
    present when any node ran it (a job without tags runs on every live node,
    and the node killed with it may never report); it is duplicated when one
    node has two runs of the same attempt.  Only scheduled and caught-up
    runs count, from ``since_ns`` on.
    """
    runs: dict[int, list[tuple[str, int]]] = {}
    for ex in seen.values():
        group = int(ex.get("group", 0))
        if ex.get("trigger") not in ("schedule", "catchup") or group < since_ns:
            continue
        runs.setdefault(group, []).append((str(ex.get("node_name", "")), int(ex.get("attempt", 1))))
    if not runs:
        return SlotReport(expected=0, lost=(), duplicated=(), off_grid=(), first=0, last=0)
    first, last = min(runs), max(runs)
    expected = range(first, last + 1, interval_ns)
    lost = tuple(g for g in expected if g not in runs)
    duplicated = tuple(sorted(g for g, keys in runs.items() if len(keys) != len(set(keys))))
    off_grid = tuple(sorted(g for g in runs if (g - first) % interval_ns))
    return SlotReport(
        expected=len(expected),
        lost=lost,
        duplicated=duplicated,
        off_grid=off_grid,
        first=first,
        last=last,
    )
