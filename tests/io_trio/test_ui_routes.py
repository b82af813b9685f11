"""The web UI's routes and the two endpoints it adds, over a real loopback socket.

Static files are checked byte for byte against the package directory, the
``/`` redirect against what a browser and an API client send, and the
preview and stats endpoints against :mod:`dkron.schedule` computed here
independently, on a single-node in-memory backend whose clock is fixed.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import pathlib
import re
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any

import h11
import pytest
import trio
from hypothesis import given, settings
from hypothesis import strategies as st

from dkron.io_trio.http_api import (
    UI_ROUTES,
    HttpApi,
    MemberInfo,
    MemberStatus,
    _upcoming,
    load_ui_files,
)
from dkron.io_trio.streams import EventHub
from dkron.model import Execution, Job, format_rfc3339nano
from dkron.schedule import fire_times
from dkron.state import (
    ApplyResult,
    ClaimSlot,
    Command,
    ExecutionStarted,
    RecordMissed,
    StateMachine,
    UpsertJob,
    encode_command,
)

UI_DIR = pathlib.Path(__file__).resolve().parents[2] / "dkron" / "ui"
NOW = dt.datetime(2025, 1, 15, 10, 0, 30, tzinfo=dt.UTC)
NOW_NS = int(NOW.timestamp()) * 1_000_000_000
FAR = NOW + dt.timedelta(days=3660)
SELF = MemberInfo(
    name="node1", addr="127.0.0.1", port=8946, tags={"server": "true"}, status=MemberStatus.ALIVE
)


class Backend:
    """One node that commits every proposal at once; "now" is fixed at ``NOW``."""

    def __init__(self) -> None:
        self.state = StateMachine()
        self.node_name = "node1"
        self.paused = False
        self.index = 0
        self.hub = EventHub()

    def apply(self, cmd: Command) -> ApplyResult:
        self.index += 1
        result = self.state.apply(self.index, encode_command(cmd))
        assert result.ok, result
        return result

    async def set_paused(self, paused: bool) -> None:
        self.paused = paused

    def leader(self) -> MemberInfo | None:
        return SELF

    def is_leader(self) -> bool:
        return True

    def members(self) -> list[MemberInfo]:
        return [SELF]

    def status(self) -> dict[str, object]:
        return {"agent": {"name": "node1"}}

    async def busy(self) -> list[Execution]:
        return self.state.running_executions()

    def now(self) -> dt.datetime:
        return NOW

    async def propose(self, cmd: Command) -> ApplyResult:
        return self.apply(cmd)

    async def run_job(self, name: str) -> Execution | None:
        return None

    async def cancel(self, job: str, execution_id: str) -> bool:
        return False

    async def leave(self) -> dict[str, object]:
        return {}

    def raft_peers(self) -> list[dict[str, object]]:
        return []

    async def remove_peer(self, peer_id: str) -> bool:
        return False

    @property
    def events(self) -> EventHub:
        return self.hub

    async def output_after(
        self, job: str, execution_id: str, seq: int, wait: float
    ) -> tuple[list[tuple[int, bytes]], Execution | None]:
        return [], self.state.get_execution(job, execution_id)


@dataclasses.dataclass
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


async def request(port: int, target: str, headers: Sequence[tuple[str, str]] = ()) -> Reply:
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        conn = h11.Connection(h11.CLIENT)
        hdrs = [("host", "localhost"), *headers]
        data = conn.send(h11.Request(method="GET", target=target, headers=hdrs)) or b""
        await stream.send_all(data + (conn.send(h11.EndOfMessage()) or b""))
        status, got, body = 0, {}, bytearray()
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                conn.receive_data(await stream.receive_some(65536))
            elif isinstance(event, h11.Response):
                status = event.status_code
                got = {k.decode(): v.decode() for k, v in event.headers}
            elif isinstance(event, h11.Data):
                body += event.data
            elif isinstance(event, h11.EndOfMessage):
                return Reply(status, got, bytes(body))
            else:
                raise AssertionError(f"unexpected {event!r}")


@asynccontextmanager
async def served(backend: Backend | None = None, *, ui: bool = True) -> AsyncIterator[int]:
    be = backend or Backend()
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            listeners = await nursery.start(HttpApi(be, ui=ui).serve, "127.0.0.1", 0)
            yield listeners[0].socket.getsockname()[1]
            nursery.cancel_scope.cancel()


def rfc(t: dt.datetime) -> str:
    return format_rfc3339nano(int(t.timestamp()) * 1_000_000_000)


# -- static files ---------------------------------------------------------------------

TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
}


def test_every_shipped_file_is_loaded_with_its_type() -> None:
    files = load_ui_files()
    on_disk = {p.name for p in UI_DIR.iterdir() if p.is_file()}
    assert set(files) == on_disk
    for name, found in files.items():
        assert found.body == (UI_DIR / name).read_bytes()
        assert found.content_type == TYPES[pathlib.Path(name).suffix]


def test_every_referenced_file_exists() -> None:
    """index.html's assets and every module import name a shipped file."""
    files = load_ui_files()
    referenced: set[str] = set()
    for name, found in files.items():
        if name.endswith((".html", ".js")):
            referenced.update(re.findall(r'["\']/ui/([^"\'/?#]+)["\']', found.body.decode()))
    assert {"app.js", "app.css", "api.js", "dom.js", "jobs.js", "form.js"} <= referenced
    assert referenced <= set(files)


async def test_index_and_files_are_served() -> None:
    index = (UI_DIR / "index.html").read_bytes()
    async with served() as port:
        for target in ("/ui", "/ui/"):
            reply = await request(port, target)
            assert reply.status == 200
            assert reply.headers["content-type"] == "text/html; charset=utf-8"
            assert reply.body == index
        for path in sorted(UI_DIR.iterdir()):
            reply = await request(port, f"/ui/{path.name}")
            assert reply.status == 200, path.name
            assert reply.headers["content-type"] == TYPES[path.suffix]
            assert reply.headers["x-content-type-options"] == "nosniff"
            assert "default-src 'self'" in reply.headers["content-security-policy"]
            assert reply.headers["cache-control"] == "no-cache"
            assert reply.body == path.read_bytes()


@pytest.mark.parametrize(
    "target",
    [
        "/ui/missing.js",
        "/ui/index.htm",
        "/ui/../pyproject.toml",
        "/ui/..%2f..%2fpyproject.toml",
        "/ui/..%2Fio_trio%2Fhttp_api.py",
        "/ui/%2e%2e",
        "/ui/..",
        "/ui/.",
        "/ui/%2fetc%2fpasswd",
        "/ui//etc/passwd",
        "/ui/app.js%00.css",
        "/ui/app.js/",
        "/ui/sub/app.js",
        "/ui/%5c..%5chttp_api.py",
        "/ui/http_api.py",
        "/ui/__init__.py",
    ],
)
async def test_unknown_files_and_traversal_are_404(target: str) -> None:
    async with served() as port:
        reply = await request(port, target)
        if reply.status == 301:  # gin's trailing-slash redirect, to a file that exists
            assert target == "/ui/app.js/" and reply.headers["location"] == "/ui/app.js"
            return
        assert reply.status == 404, target
        assert reply.body == b"404 page not found"


async def test_root_redirects_browsers_only() -> None:
    browser = ("accept", "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8")
    async with served() as port:
        reply = await request(port, "/", [browser])
        assert reply.status == 302
        assert reply.headers["location"] == "/ui/"
        for headers in ([], [("accept", "application/json")], [("accept", "*/*")]):
            plain = await request(port, "/", headers)
            assert plain.status == 404
            assert plain.body == b"404 page not found"


async def test_ui_false_serves_none_of_it() -> None:
    browser = ("accept", "text/html")
    async with served(ui=False) as port:
        for target in ("/ui", "/ui/", "/ui/app.js", "/ui/index.html", "/"):
            reply = await request(port, target, [browser])
            assert reply.status == 404, target
            assert reply.body == b"404 page not found"
        assert (await request(port, "/v1/stats")).status == 200


def test_ui_routes_are_separate_from_the_api_table() -> None:
    api = HttpApi(Backend(), ui=False)
    assert not set(api.routes) & set(UI_ROUTES)
    assert api.ui_files == {}
    assert set(UI_ROUTES) <= set(HttpApi(Backend()).routes)


# -- GET /v1/schedule/preview -----------------------------------------------------------


async def test_preview_every_and_default_count() -> None:
    async with served() as port:
        reply = await request(port, "/v1/schedule/preview?schedule=%40every%201h&count=3")
        assert reply.status == 200
        hours = [NOW + dt.timedelta(hours=h) for h in (1, 2, 3)]
        assert reply.json() == [rfc(t) for t in hours]
        assert reply.headers["x-total-count"] == "3"
        default = await request(port, "/v1/schedule/preview?schedule=%40every%201m")
        assert len(default.json()) == 10


async def test_preview_cron_in_a_time_zone() -> None:
    async with served() as port:
        target = (
            "/v1/schedule/preview?schedule=0%200%203%20*%20*%20*&timezone=Europe/Berlin&count=2"
        )
        reply = await request(port, target)
        assert reply.status == 200
        # 03:00 in Berlin is 02:00 UTC in January.
        assert reply.json() == ["2025-01-16T02:00:00Z", "2025-01-17T02:00:00Z"]


async def test_preview_hash_depends_on_the_job_name() -> None:
    async with served() as port:
        got = {}
        for name in ("alpha", "omega-7"):
            reply = await request(
                port, f"/v1/schedule/preview?schedule=H%20H%20*%20*%20*%20*&job={name}&count=3"
            )
            assert reply.status == 200
            job = Job(name=name, schedule="H H * * * *")
            assert reply.json() == [rfc(t) for t in fire_times(job, NOW, FAR, limit=3)]
            got[name] = reply.json()
        assert got["alpha"] != got["omega-7"]


async def test_preview_of_a_schedule_that_never_fires() -> None:
    async with served() as port:
        for spec in ("%40manually", "%40at%202001-01-01T00:00:00Z"):
            reply = await request(port, f"/v1/schedule/preview?schedule={spec}")
            assert reply.status == 200
            assert reply.json() == []


@pytest.mark.parametrize(
    ("query", "message"),
    [
        ("", "schedule is required"),
        ("schedule=", "schedule is required"),
        ("schedule=not%20a%20schedule", "can't parse job schedule: "),
        ("schedule=%40every%20soon", "can't parse job schedule: failed to parse duration"),
        ("schedule=61%20*%20*%20*%20*%20*", "can't parse job schedule: "),
        ("schedule=%40every%201m&timezone=Mars/Olympus", "invalid timezone: unknown time zone"),
        ("schedule=%40every%201m&timezone=../etc", "invalid timezone: "),
        ("schedule=%40every%201m&count=0", "count must be an integer from 1 to 100"),
        ("schedule=%40every%201m&count=101", "count must be an integer from 1 to 100"),
        ("schedule=%40every%201m&count=-1", "count must be an integer from 1 to 100"),
        ("schedule=%40every%201m&count=x", "count must be an integer from 1 to 100"),
        ("schedule=%40every%201m&count=", "count must be an integer from 1 to 100"),
        ("schedule=%40every%201m&count=%D9%A3", "count must be an integer from 1 to 100"),
    ],
)
async def test_preview_bad_input_is_400(query: str, message: str) -> None:
    async with served() as port:
        reply = await request(port, f"/v1/schedule/preview?{query}")
        assert reply.status == 400
        assert reply.headers["content-type"] == "application/json; charset=utf-8"
        assert reply.json()["error"].startswith(message)


# -- GET /v1/stats -------------------------------------------------------------------------


async def test_stats_of_an_empty_cluster() -> None:
    async with served() as port:
        reply = await request(port, "/v1/stats")
        assert reply.status == 200
        assert reply.json() == {
            "jobs": 0,
            "by_status": {"success": 0, "failed": 0, "partially_failed": 0, "untriggered": 0},
            "disabled": 0,
            "running": 0,
            "missed": {},
            "upcoming": [],
        }


async def test_stats_counts_statuses_running_missed_and_upcoming() -> None:
    be = Backend()
    every = "@every 1m"
    be.apply(UpsertJob(Job(name="a", schedule=every, status="success")))
    be.apply(UpsertJob(Job(name="b", schedule="@every 90s", status="failed")))
    be.apply(UpsertJob(Job(name="c", schedule=every, disabled=True, status="success")))
    be.apply(UpsertJob(Job(name="d", schedule="@manually")))
    be.apply(UpsertJob(Job(name="e", schedule="", parent_job="a")))
    be.apply(RecordMissed("a", NOW_NS, "missed", 3))
    be.apply(RecordMissed("a", NOW_NS + 60_000_000_000, "forbid"))
    claim = ClaimSlot("b", NOW_NS, 1, "manual", NOW_NS, ("node1",), 1)
    be.apply(claim)
    be.apply(ExecutionStarted(Execution("b", NOW_NS, "node1", group=NOW_NS, attempt=1)))
    async with served(be) as port:
        body = (await request(port, "/v1/stats")).json()
    assert body["jobs"] == 5
    assert body["by_status"] == {"success": 2, "failed": 1, "partially_failed": 0, "untriggered": 2}
    assert body["disabled"] == 1
    assert body["running"] == 1
    assert body["missed"] == {"a": {"forbid": 1, "missed": 3}}
    upcoming = body["upcoming"]
    assert len(upcoming) == 20
    # a every 60 s and b every 90 s from NOW, merged in time order (ties by name).
    fires = sorted(
        [(NOW + dt.timedelta(seconds=60 * k), "a") for k in range(1, 21)]
        + [(NOW + dt.timedelta(seconds=90 * k), "b") for k in range(1, 21)]
    )[:20]
    assert upcoming == [{"job": name, "at": rfc(t)} for t, name in fires]


async def test_stats_upcoming_honours_starts_at_and_expires_at() -> None:
    be = Backend()
    later = NOW + dt.timedelta(hours=5, seconds=10)
    soon = NOW + dt.timedelta(minutes=2, seconds=30)
    ns = 1_000_000_000
    late_job = Job(name="late", schedule="@every 1h", starts_at=int(later.timestamp()) * ns)
    be.apply(UpsertJob(late_job))
    be.apply(
        UpsertJob(Job(name="short", schedule="@every 1m", expires_at=int(soon.timestamp()) * ns))
    )
    be.apply(UpsertJob(Job(name="gone", schedule="@every 1m", expires_at=NOW_NS - ns)))
    async with served(be) as port:
        upcoming = (await request(port, "/v1/stats")).json()["upcoming"]
    short = [NOW + dt.timedelta(minutes=k) for k in (1, 2)]
    # The scheduler jumps to starts_at: an @every chain starts at it.
    late = [later, *fire_times(late_job, later, FAR, limit=19)]
    expected = sorted([(t, "short") for t in short] + [(t, "late") for t in late])[:20]
    assert upcoming == [{"job": name, "at": rfc(t)} for t, name in expected]
    assert upcoming[:2] == [{"job": "short", "at": rfc(t)} for t in short]
    assert all(u["job"] != "gone" for u in upcoming)
    assert all(u["at"] >= rfc(later) for u in upcoming if u["job"] == "late")


@settings(deadline=None)
@given(
    jobs=st.lists(
        st.tuples(
            st.integers(min_value=1, max_value=600),  # @every seconds
            st.booleans(),  # disabled
            st.none() | st.integers(min_value=-600, max_value=3600),  # starts_at offset
            st.none() | st.integers(min_value=-600, max_value=3600),  # expires_at offset
        ),
        max_size=12,
    ),
    limit=st.integers(min_value=1, max_value=25),
)
def test_upcoming_is_the_first_fires_of_all_eligible_jobs(
    jobs: list[tuple[int, bool, int | None, int | None]], limit: int
) -> None:
    """The cheap top-k merge equals brute force: every job's fires, filtered, sorted, cut."""
    be = Backend()
    ns = 1_000_000_000
    brute: list[tuple[dt.datetime, str]] = []
    for i, (seconds, disabled, start, end) in enumerate(jobs):
        job = Job(
            name=f"j{i:02d}",
            schedule=f"@every {seconds}s",
            disabled=disabled,
            starts_at=None if start is None else NOW_NS + start * ns,
            expires_at=None if end is None else NOW_NS + end * ns,
        )
        be.apply(UpsertJob(job))
        if disabled:
            continue
        times = list(fire_times(job, NOW, FAR, limit=limit))
        if start is not None and times and times[0] < NOW + dt.timedelta(seconds=start):
            # Nothing before starts_at: the @every chain starts at it.
            begin = NOW + dt.timedelta(seconds=start)
            times = [begin, *fire_times(job, begin, FAR, limit=limit - 1)]
        if end is not None:
            times = [t for t in times if t <= NOW + dt.timedelta(seconds=end)]
        brute.extend((t, job.name) for t in times)
    assert _upcoming(be, limit) == sorted(brute)[:limit]
