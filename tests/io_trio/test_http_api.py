"""The Dkron v1 API served over loopback TCP, against a real state machine.

The backend below is the smallest real one: writes are encoded and applied to
a :class:`StateMachine` (as Raft would deliver them), runs go through the
state's claim/start/finish commands, and fire times come from
:mod:`dkron.schedule`.  Requests travel through a real socket as bytes, so
status lines, headers and bodies are checked exactly as a client sees them.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import re
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import h11
import pytest
import trio
import trio.testing
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from dkron.io_trio.http_api import (
    ROUTES,
    BackendError,
    HttpApi,
    MemberInfo,
    MemberStatus,
    NotLeaderError,
    Unavailable,
    _job_fires,
    _NextCache,
)
from dkron.io_trio.http_server import Request, Response, ServerLimits, serve
from dkron.io_trio.streams import EventHub
from dkron.model import Execution, Job, format_rfc3339nano
from dkron.state import (
    ApplyResult,
    ClaimSlot,
    Command,
    ExecutionFinished,
    ExecutionStarted,
    StateMachine,
    ToggleJob,
    UpsertJob,
    encode_command,
)

NODE = "node1"
NOW = dt.datetime(2025, 1, 1, 10, 0, tzinfo=dt.UTC)
NOW_NS = int(NOW.timestamp()) * 1_000_000_000
FAR = dt.datetime(9999, 1, 1, tzinfo=dt.UTC)
SELF = MemberInfo(
    name=NODE,
    addr="127.0.0.1",
    port=8946,
    tags={"role": "dkron", "server": "true", "rpc_addr": "127.0.0.1:6868", "region": "global"},
    status=MemberStatus.ALIVE,
)
OTHER = dataclasses.replace(SELF, name="node2", addr="127.0.0.2", status=MemberStatus.FAILED)


class LocalBackend:
    """A single-node cluster in memory: every proposal commits at once."""

    def __init__(self, state: StateMachine | None = None) -> None:
        self.state = state or StateMachine()
        self.node_name = NODE
        self.wall = NOW
        self._paused = False
        self.index = self.state.applied_index
        self.failure: BackendError | None = None
        self.has_leader = True
        self.leading = True
        self.left = False
        self.peers = [NODE, "node2"]
        self.runs: list[str] = []
        self.ran = trio.Event()
        self.members_bug = False
        self.hub = EventHub()

    @property
    def paused(self) -> bool:
        return self._paused

    async def set_paused(self, paused: bool) -> None:
        self._paused = paused

    def leader(self) -> MemberInfo | None:
        return SELF if self.has_leader else None

    def is_leader(self) -> bool:
        return self.leading

    def members(self) -> list[MemberInfo]:
        if self.members_bug:
            raise RuntimeError("secret internal detail")
        return [SELF, OTHER]

    def status(self) -> dict[str, object]:
        return {
            "agent": {"name": NODE, "version": "0.1.0"},
            "serf": {"members": "2", "failed": "1", "encrypted": "false"},
            "tags": dict(SELF.tags),
        }

    async def busy(self) -> list[Execution]:
        if self.failure is not None:
            raise self.failure
        return self.state.running_executions()

    def now(self) -> dt.datetime:
        return self.wall

    async def propose(self, cmd: Command) -> ApplyResult:
        if self.failure is not None:
            raise self.failure
        self.index += 1
        return self.state.apply(self.index, encode_command(cmd))

    async def run_job(self, name: str) -> Execution | None:
        if self.state.get_job(name) is None:
            return None
        group = NOW_NS + len(self.runs) * 1_000_000_000
        claim = ClaimSlot(name, group, 1, "manual", group, (NODE,), 1)
        if not (await self.propose(claim)).ok:
            return None
        ex = Execution(name, group, NODE, group=group, attempt=1, trigger="manual")
        await self.propose(ExecutionStarted(ex))
        self.runs.append(name)
        self.ran.set()
        return ex

    async def finish(self, ex: Execution, output: str, *, success: bool = True) -> Execution:
        done = dataclasses.replace(
            ex, finished_at=ex.started_at + 500_000_000, output=output, success=success
        )
        result = await self.propose(ExecutionFinished(done))
        assert result.ok
        return done

    async def cancel(self, job: str, execution_id: str) -> bool:
        ex = self.state.get_execution(job, execution_id)
        if ex is None or not ex.running:
            return False
        stopped = dataclasses.replace(
            ex, finished_at=ex.started_at + 1, status="cancelled", success=False
        )
        return (await self.propose(ExecutionFinished(stopped))).ok

    async def leave(self) -> dict[str, object]:
        self.left = True
        return {"global": [{"Name": NODE, "Region": "global", "Port": 6868}]}

    def raft_peers(self) -> list[dict[str, object]]:
        return [
            {"id": p, "node": p, "address": "", "leader": p == NODE, "voter": True}
            for p in self.peers
        ]

    async def remove_peer(self, peer_id: str) -> bool:
        if peer_id not in self.peers:
            return False
        self.peers.remove(peer_id)
        return True

    @property
    def events(self) -> EventHub:
        return self.hub

    async def output_after(
        self, job: str, execution_id: str, seq: int, wait: float
    ) -> tuple[list[tuple[int, bytes]], Execution | None]:
        ex = self.state.get_execution(job, execution_id)
        return [], ex


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)

    @property
    def text(self) -> str:
        return self.body.decode()


async def _read_reply(stream: trio.SocketStream, conn: h11.Connection) -> Reply:
    status = 0
    headers: dict[str, str] = {}
    body = bytearray()
    while True:
        event = conn.next_event()
        if event is h11.NEED_DATA:
            conn.receive_data(await stream.receive_some(65536))
        elif isinstance(event, h11.Response):
            status = event.status_code
            headers = {k.decode(): v.decode() for k, v in event.headers}
        elif isinstance(event, h11.Data):
            body += event.data
        elif isinstance(event, h11.EndOfMessage):
            return Reply(status, headers, bytes(body))
        elif isinstance(event, h11.ConnectionClosed):
            raise AssertionError("closed before a response")


class Client:
    """A tiny HTTP/1.1 client: one connection per request unless told otherwise."""

    def __init__(self, port: int) -> None:
        self.port = port

    async def connect(self) -> trio.SocketStream:
        return await trio.open_tcp_stream("127.0.0.1", self.port)

    async def request(
        self,
        method: str,
        target: str,
        body: bytes | str | object = b"",
        headers: Sequence[tuple[str, str]] = (),
    ) -> Reply:
        if isinstance(body, str):
            data = body.encode()
        elif isinstance(body, bytes):
            data = body
        else:
            data = json.dumps(body).encode()
        stream = await self.connect()
        async with stream:
            conn = h11.Connection(h11.CLIENT)
            hdrs = [("host", "localhost"), ("content-length", str(len(data))), *headers]
            out = conn.send(h11.Request(method=method, target=target, headers=hdrs))
            await stream.send_all((out or b"") + (conn.send(h11.Data(data=data)) or b""))
            await stream.send_all(conn.send(h11.EndOfMessage()) or b"")
            return await _read_reply(stream, conn)

    async def raw(self, data: bytes) -> bytes:
        """Send bytes as they are and read until the server closes."""
        stream = await self.connect()
        async with stream:
            await stream.send_all(data)
            received = bytearray()
            while chunk := await stream.receive_some(65536):
                received += chunk
            return bytes(received)


@asynccontextmanager
async def served(
    backend: LocalBackend | None = None, limits: ServerLimits | None = None
) -> AsyncIterator[tuple[Client, LocalBackend]]:
    be = backend or LocalBackend()
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            api = HttpApi(be, limits=limits)
            listeners = await nursery.start(api.serve, "127.0.0.1", 0)
            port = listeners[0].socket.getsockname()[1]
            yield Client(port), be
            nursery.cancel_scope.cancel()


def job_body(name: str, **extra: object) -> dict[str, object]:
    body: dict[str, object] = {
        "name": name,
        "schedule": "@every 1m",
        "executor": "shell",
        "executor_config": {"command": "true"},
    }
    body.update(extra)
    return body


async def create(client: Client, name: str, **extra: object) -> Reply:
    reply = await client.request("POST", "/v1/jobs", job_body(name, **extra))
    assert reply.status == 201, reply.body
    return reply


# -- global behaviour ----------------------------------------------------------------


async def test_health_has_no_cors_and_no_whom() -> None:
    async with served() as (client, _):
        reply = await client.request("GET", "/health", headers=[("origin", "http://ui")])
        assert reply.status == 200
        assert reply.json() == {"status": "healthy"}
        assert "x-whom" not in reply.headers
        assert "access-control-allow-origin" not in reply.headers


async def test_status_map_on_both_index_paths() -> None:
    async with served() as (client, backend):
        for path in ("/v1", "/v1/"):
            reply = await client.request("GET", path)
            assert reply.status == 200
            assert reply.json() == backend.status()
            assert reply.headers["x-whom"] == NODE
            assert reply.headers["content-type"] == "application/json; charset=utf-8"


async def test_cors_simple_and_preflight() -> None:
    async with served() as (client, _):
        reply = await client.request("GET", "/v1/jobs", headers=[("origin", "http://ui")])
        assert reply.headers["access-control-allow-origin"] == "*"
        assert reply.headers["access-control-expose-headers"] == "*"
        plain = await client.request("GET", "/v1/jobs")
        assert "access-control-allow-origin" not in plain.headers
        pre = await client.request(
            "OPTIONS",
            "/v1/jobs",
            headers=[("origin", "http://ui"), ("access-control-request-method", "POST")],
        )
        assert pre.status == 204
        assert pre.body == b""
        assert pre.headers["access-control-allow-methods"] == "*"
        assert pre.headers["access-control-allow-headers"] == "*"
        assert pre.headers["access-control-max-age"] == "43200"
        no_origin = await client.request("OPTIONS", "/v1/jobs")
        assert no_origin.status == 404


async def test_pretty_indents_with_four_spaces_and_go_escapes_html() -> None:
    async with served() as (client, _):
        await create(client, "job1", displayname="<a&b>", metadata={"k": "x\u2028y"})
        compact = await client.request("GET", "/v1/jobs/job1")
        assert b'"displayname":"\\u003ca\\u0026b\\u003e"' in compact.body
        assert b"\\u2028" in compact.body
        assert b"<" not in compact.body
        pretty = await client.request("GET", "/v1/jobs/job1?pretty")
        assert pretty.body.startswith(b'{\n    "id": "job1",\n    "name": "job1",')
        assert pretty.json() == compact.json()


async def test_unknown_routes_and_methods_get_gins_404() -> None:
    async with served() as (client, _):
        for method, path in [("GET", "/nope"), ("DELETE", "/v1/members"), ("HEAD", "/v1/jobs")]:
            reply = await client.request(method, path)
            assert reply.status == 404
            if method != "HEAD":
                assert reply.text == "404 page not found"
                assert reply.headers["content-type"] == "text/plain; charset=utf-8"


async def test_trailing_slash_redirects() -> None:
    async with served() as (client, _):
        get = await client.request("GET", "/v1/jobs/?_start=0")
        assert get.status == 301
        assert get.headers["location"] == "/v1/jobs?_start=0"
        post = await client.request("POST", "/v1/jobs/")
        assert post.status == 307
        assert post.headers["location"] == "/v1/jobs"
        run = await client.request("POST", "/v1/pause/")
        assert (run.status, run.headers["location"]) == (307, "/v1/pause")


async def test_percent_encoded_job_names_are_decoded() -> None:
    name = "ßñë-job_1"
    async with served() as (client, _):
        created = await create(client, name)
        quoted = "%C3%9F%C3%B1%C3%AB-job_1"
        assert created.headers["location"] == f"/v1/jobs/{quoted}"
        reply = await client.request("GET", f"/v1/jobs/{quoted}")
        assert reply.status == 200
        assert reply.json()["name"] == name


async def test_handler_bug_is_a_500_without_traceback() -> None:
    async with served() as (client, backend):
        backend.members_bug = True
        reply = await client.request("GET", "/v1/members")
        assert reply.status == 500
        assert reply.json() == {"error": "internal error"}
        assert b"secret" not in reply.body
        assert b"Traceback" not in reply.body
        backend.members_bug = False
        assert (await client.request("GET", "/v1/members")).status == 200


# -- members and leadership --------------------------------------------------------------


async def test_members_leader_and_isleader() -> None:
    async with served() as (client, backend):
        members = await client.request("GET", "/v1/members")
        assert members.headers["x-total-count"] == "2"
        first, second = members.json()
        assert list(first)[:5] == ["Name", "Addr", "Port", "Tags", "Status"]
        assert (first["Status"], first["statusText"]) == (1, "alive")
        assert (second["Status"], second["statusText"]) == (4, "failed")
        assert first["id"] != second["id"]
        again = await client.request("GET", "/v1/members")
        assert [m["id"] for m in again.json()] == [first["id"], second["id"]]
        leader = await client.request("GET", "/v1/leader")
        assert leader.status == 200
        assert "id" not in leader.json()
        assert leader.json()["Name"] == NODE
        assert (await client.request("GET", "/v1/isleader")).json() == "I am a leader"
        backend.leading = False
        follower = await client.request("GET", "/v1/isleader")
        assert (follower.status, follower.json()) == (404, "I am a follower")
        backend.has_leader = False
        none = await client.request("GET", "/v1/leader")
        assert none.status == 404
        assert "leader" in none.json()["error"]


async def test_leave() -> None:
    async with served() as (client, backend):
        reply = await client.request("POST", "/v1/leave")
        assert reply.status == 200
        assert reply.json()["global"][0]["Name"] == NODE
        assert backend.left


# -- create / update ------------------------------------------------------------------


async def test_create_returns_the_stored_job() -> None:
    async with served() as (client, backend):
        reply = await client.request(
            "POST", "/v1/jobs?runoncreate=false", {**job_body("job1"), "id": "", "Owner": "ops"}
        )
        assert reply.status == 201
        body = reply.json()
        assert (body["id"], body["name"], body["owner"]) == ("job1", "job1", "ops")
        assert reply.headers["location"] == "/v1/jobs/job1"
        assert body["next"] == "2025-01-01T10:01:00Z"
        assert body["processors"] == {}
        assert body["last_success"] is None
        stored = backend.state.get_job("job1")
        assert stored is not None and stored.owner == "ops"
        update = await client.request(
            "PUT", "/v1/jobs/ignored", job_body("job1", executor_config={"command": "date"})
        )
        assert update.status == 201
        assert update.json()["executor_config"] == {"command": "date"}
        assert backend.state.get_job("ignored") is None
        patch = await client.request("PATCH", "/v1/jobs", job_body("job1", disabled=True))
        assert patch.status == 201
        assert patch.json()["disabled"] is True


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"", "Unable to parse payload: EOF."),
        (b"{", "Unable to parse payload: unexpected EOF."),
        (b"[1]", "Unable to parse payload: json: cannot unmarshal array"),
        (
            json.dumps(job_body("job1", executor_config={"timeout": 5})).encode(),
            "Unable to parse payload: json: cannot unmarshal number into Go struct field "
            "Job.executor_config of type string.",
        ),
        (json.dumps(job_body("job1", retries=-1)).encode(), "Unable to parse payload: json"),
        (b'{"retries": ' + b"9" * 5000 + b"}", "Unable to parse payload: "),
        (b"[" * 100_000, "Unable to parse payload: "),
        (json.dumps(job_body("BAD JOB NAME!")).encode(), "Job validation failed: name contains"),
        (json.dumps(job_body("")).encode(), "Job validation failed: name cannot be empty."),
        (
            json.dumps(job_body("job1", parent_job="job1")).encode(),
            "Job validation failed: the job can not have itself as parent.",
        ),
        (
            json.dumps(job_body("job1", schedule="@at badtime")).encode(),
            "Job validation failed: can't parse job",
        ),
        (
            json.dumps(job_body("job1", concurrency="badvalue")).encode(),
            "Job validation failed: invalid concurrency",
        ),
        (
            json.dumps(job_body("job1", timezone="notatimezone")).encode(),
            "Job validation failed: unknown time zone",
        ),
        (
            json.dumps(job_body("job1", executor_config={"timeout": "foreverandever"})).encode(),
            "Job validation failed: Error parsing job timeout value.",
        ),
        (b'{"name": "\\ud800"}', "Job validation failed: name contains illegal character"),
    ],
)
async def test_create_refusals_are_400_with_dkrons_text(body: bytes, message: str) -> None:
    async with served() as (client, backend):
        reply = await client.request("POST", "/v1/jobs", body)
        assert reply.status == 400
        assert reply.headers["content-type"] == "text/plain; charset=utf-8"
        assert reply.text.startswith(message), reply.text
        assert backend.state.job_count() == 0


async def test_unknown_parent_is_404_and_nothing_is_created() -> None:
    async with served() as (client, _):
        reply = await client.request("POST", "/v1/jobs", job_body("child", parent_job="nope"))
        assert (reply.status, reply.text) == (404, "specified parent job not found")
        assert (await client.request("GET", "/v1/jobs/child")).status == 404


async def test_parent_keeps_its_dependents_when_saved_again() -> None:
    async with served() as (client, _):
        await create(client, "parent")
        await create(client, "childjobkeep", parent_job="parent", schedule="")
        await create(client, "parent", dependent_jobs=[])
        reply = await client.request("GET", "/v1/jobs/parent")
        assert reply.json()["dependent_jobs"] == ["childjobkeep"]


async def test_pause_refuses_submissions_only() -> None:
    async with served() as (client, _):
        assert (await client.request("GET", "/v1/pause")).json() == {"paused": False}
        await create(client, "job1")
        assert (await client.request("POST", "/v1/pause")).json() == {"paused": True}
        assert (await client.request("GET", "/v1/pause")).json() == {"paused": True}
        refused = await client.request("POST", "/v1/jobs", job_body("job2"))
        assert (refused.status, refused.text) == (503, "New job submissions are currently paused")
        assert (await client.request("POST", "/v1/jobs/job1/toggle")).status == 200
        assert (await client.request("POST", "/v1/unpause")).json() == {"paused": False}
        await create(client, "job2")


async def test_unavailable_cluster_is_a_503_with_a_message() -> None:
    async with served() as (client, backend):
        await create(client, "job1")
        backend.failure = NotLeaderError("no leader elected")
        created = await client.request("POST", "/v1/jobs", job_body("job2"))
        assert (created.status, created.text) == (503, "no leader elected")
        backend.failure = Unavailable("timed out waiting for commit")
        for method, path in [
            ("DELETE", "/v1/jobs/job1"),
            ("POST", "/v1/jobs/job1/toggle"),
            ("POST", "/v1/jobs/job1"),
            ("DELETE", "/v1/jobs/job1/executions"),
            ("GET", "/v1/busy"),
        ]:
            reply = await client.request(method, path)
            assert reply.status == 503, (method, path)
            assert reply.json() == {"error": "timed out waiting for commit"}


async def test_runoncreate_runs_in_the_background() -> None:
    async with served() as (client, backend):
        reply = await client.request("POST", "/v1/jobs?runoncreate", job_body("job1"))
        assert reply.status == 201
        assert reply.headers["location"] == "/v1/jobs/job1"
        await backend.ran.wait()
        assert backend.runs == ["job1"]


# -- jobs: read, list, delete, toggle, run ------------------------------------------------


async def test_get_unknown_job_is_an_empty_404() -> None:
    async with served() as (client, _):
        reply = await client.request("GET", "/v1/jobs/notajob")
        assert (reply.status, reply.body) == (404, b"")


async def test_list_pagination_sort_and_filters() -> None:
    async with served() as (client, backend):
        await create(client, "b-job", displayname="Zeta", metadata={"team": "a", "env": "p"})
        await create(client, "a-job", displayname="alpha", disabled=True, metadata={"team": "a"})
        await create(client, "c-job", displayname="back", metadata={"team": "b"})
        ex = await backend.run_job("c-job")
        assert ex is not None
        await backend.finish(ex, "boom", success=False)

        async def names(query: str) -> tuple[list[str], str]:
            reply = await client.request("GET", "/v1/jobs" + query)
            assert reply.status == 200, reply.body
            return [j["name"] for j in reply.json()], reply.headers["x-total-count"]

        assert await names("") == (["a-job", "b-job", "c-job"], "3")
        assert await names("?_start=1&_end=2") == (["b-job"], "3")
        assert await names("?_sort=id&_order=DESC&_start=0&_end=2") == (["c-job", "b-job"], "3")
        assert await names("?_start=5") == ([], "3")
        assert await names("?_start=2&_end=1") == ([], "3")
        assert await names("?_end=99") == (["a-job", "b-job", "c-job"], "3")
        assert await names("?_sort=displayname") == (["a-job", "c-job", "b-job"], "3")
        assert await names("?_sort=&_order=asc") == (["a-job", "b-job", "c-job"], "3")
        assert await names("?_sort=error_count&_order=DESC") == (["c-job", "b-job", "a-job"], "3")
        assert await names("?q=back") == (["c-job"], "1")
        assert await names("?q=job&status=failed") == (["c-job"], "1")
        assert await names("?status=untriggered") == (["a-job", "b-job"], "2")
        assert await names("?disabled=true") == (["a-job"], "1")
        assert await names("?disabled=false&_end=1") == (["b-job"], "2")
        assert await names("?metadata%5Bteam%5D=a") == (["a-job", "b-job"], "2")
        assert await names("?metadata[team]=a&metadata[env]=p") == (["b-job"], "1")
        assert await names("?metadata=a&metadata=b") == (["a-job", "b-job", "c-job"], "3")


@pytest.mark.parametrize(
    "query",
    [
        "_start=abc",
        "_end=-1",
        "_start=1.5",
        "_sort=owner",
        "_order=sideways",
        "status=running",
        "disabled=yes",
    ],
)
async def test_bad_list_parameters_are_400(query: str) -> None:
    async with served() as (client, _):
        reply = await client.request("GET", "/v1/jobs?" + query)
        assert reply.status == 400
        assert reply.json()["error"]


async def test_delete_job_and_its_exact_executions() -> None:
    async with served() as (client, backend):
        await create(client, "job1")
        await create(client, "job10")
        for name in ("job1", "job10"):
            ex = await backend.run_job(name)
            assert ex is not None
            await backend.finish(ex, "ok")
        await create(client, "child", parent_job="job10", schedule="")
        blocked = await client.request("DELETE", "/v1/jobs/job10")
        assert blocked.status == 409
        assert "dependent" in blocked.json()["error"]
        deleted = await client.request("DELETE", "/v1/jobs/job1")
        assert deleted.status == 200
        assert deleted.json()["success_count"] == 1
        assert (await client.request("GET", "/v1/jobs/job1")).status == 404
        assert len(backend.state.executions("job10")) == 1
        missing = await client.request("DELETE", "/v1/jobs/job1")
        assert (missing.status, missing.body) == (404, b"")


async def test_toggle() -> None:
    async with served() as (client, _):
        await create(client, "job1")
        reply = await client.request("POST", "/v1/jobs/job1/toggle")
        assert reply.status == 200
        assert reply.json()["disabled"] is True
        assert reply.headers["location"] == "/v1/jobs/job1"
        back = await client.request("POST", "/v1/jobs/job1/toggle")
        assert back.json()["disabled"] is False
        missing = await client.request("POST", "/v1/jobs/nope/toggle")
        assert (missing.status, missing.body) == (404, b"")


async def test_run_busy_and_cancel() -> None:
    async with served() as (client, _):
        await create(client, "job1")
        for path in ("/v1/jobs/job1", "/v1/jobs/job1/run"):
            reply = await client.request("POST", path)
            assert reply.status == 200
            assert reply.json()["name"] == "job1"
            assert reply.json()["next"] == "2025-01-01T10:01:00Z"
            assert reply.headers["location"] == "/v1/jobs/job1"
        assert (await client.request("POST", "/v1/jobs/nope")).status == 404
        busy = await client.request("GET", "/v1/busy?_start=0&_end=10")
        assert busy.headers["x-total-count"] == "2"
        items = busy.json()
        assert [i["finished_at"] for i in items] == ["0001-01-01T00:00:00Z"] * 2
        assert "output_truncated" not in items[0]
        first = items[0]["id"]
        cancel = await client.request("POST", f"/v1/jobs/job1/executions/{first}/cancel")
        assert cancel.status == 202
        assert cancel.json()["status"] == "cancelled"
        again = await client.request("POST", f"/v1/jobs/job1/executions/{first}/cancel")
        assert again.status == 409
        unknown = await client.request("POST", "/v1/jobs/job1/executions/1-x/cancel")
        assert unknown.status == 404
        assert (await client.request("GET", "/v1/busy")).headers["x-total-count"] == "1"


# -- executions --------------------------------------------------------------------------


async def test_executions_list_truncation_timezone_and_single_view() -> None:
    async with served() as (client, backend):
        await create(client, "job1", timezone="Europe/Berlin")
        empty = await client.request("GET", "/v1/jobs/job1/executions")
        assert (empty.body, empty.headers["x-total-count"]) == (b"[]", "0")
        long_ex = await backend.run_job("job1")
        short_ex = await backend.run_job("job1")
        running = await backend.run_job("job1")
        assert long_ex and short_ex and running
        await backend.finish(long_ex, "x" * 1705)
        await backend.finish(short_ex, "four")

        reply = await client.request("GET", "/v1/jobs/job1/executions")
        items = reply.json()
        assert [i["id"] for i in items] == [running.id, short_ex.id, long_ex.id]
        assert items[0]["finished_at"] == "0001-01-01T00:00:00Z"
        assert items[2]["started_at"] == "2025-01-01T11:00:00+01:00"
        assert [len(i.get("output", "")) for i in items] == [0, 4, 1705]
        assert not any(i["output_truncated"] for i in items)

        limited = await client.request(
            "GET",
            "/v1/jobs/job1/executions?_end=25&_order=DESC&_sort=id&_start=0&jobs=job1"
            "&output_size_limit=200",
        )
        by_id = {i["id"]: i for i in limited.json()}
        assert len(by_id[long_ex.id]["output"]) == 200
        assert by_id[long_ex.id]["output_truncated"] is True
        assert by_id[short_ex.id]["output_truncated"] is False

        page = await client.request("GET", "/v1/jobs/job1/executions?_order=ASC&_start=1&_end=2")
        assert [i["id"] for i in page.json()] == [short_ex.id]
        assert page.headers["x-total-count"] == "3"
        by_finish = await client.request("GET", "/v1/jobs/job1/executions?_sort=finished_at")
        assert by_finish.json()[-1]["id"] == running.id

        single = await client.request("GET", f"/v1/jobs/job1/executions/{long_ex.id}")
        assert single.status == 200
        assert len(single.json()["output"]) == 1705
        assert "output_truncated" not in single.json()
        assert single.json()["started_at"] == format_rfc3339nano(long_ex.started_at)
        missing = await client.request("GET", "/v1/jobs/job1/executions/1-nowhere")
        assert (missing.status, missing.body) == (404, b"")
        assert (await client.request("GET", "/v1/jobs/nope/executions")).status == 404
        bad = await client.request("GET", "/v1/jobs/job1/executions?output_size_limit=-1")
        assert bad.status == 400
        bad_sort = await client.request("GET", "/v1/jobs/job1/executions?_sort=node")
        assert bad_sort.status == 400


async def test_delete_executions_resets_counters() -> None:
    async with served() as (client, backend):
        await create(client, "job1")
        ex = await backend.run_job("job1")
        assert ex is not None
        await backend.finish(ex, "ok")
        reply = await client.request("DELETE", "/v1/jobs/job1/executions")
        assert reply.status == 200
        body = reply.json()
        assert (body["success_count"], body["last_success"], body["status"]) == (0, None, "success")
        assert (await client.request("GET", "/v1/jobs/job1/executions")).json() == []
        missing = await client.request("DELETE", "/v1/jobs/nope/executions")
        assert missing.status == 404


# -- next fire times ----------------------------------------------------------------------


async def test_next_fire_times() -> None:
    async with served() as (client, _):
        await create(client, "job1", schedule="0 30 * * * *")
        await create(client, "child", parent_job="job1", schedule="")
        reply = await client.request("GET", "/v1/jobs/job1/next")
        times = reply.json()
        assert len(times) == 10
        assert times[:2] == ["2025-01-01T10:30:00Z", "2025-01-01T11:30:00Z"]
        three = await client.request("GET", "/v1/jobs/job1/next?count=3")
        assert three.json() == times[:3]
        assert (await client.request("GET", "/v1/jobs/job1/next?count=100")).status == 200
        for bad in ("0", "101", "abc", "-1", "1e2", ""):
            refused = await client.request("GET", f"/v1/jobs/job1/next?count={bad}")
            assert refused.status == 400, bad
        assert (await client.request("GET", "/v1/jobs/child/next")).json() == []
        assert (await client.request("GET", "/v1/jobs/nope/next")).status == 404


async def test_next_is_the_slot_the_scheduler_fires_next() -> None:
    """``next`` is the job's upcoming slot, not the first slot stored at save time
    (Dkron rewrites it at every run): it follows the replicated cursor and keeps
    an ``@every`` job's own phase; the list sorts by what it shows."""

    def at(hhmmss: str) -> dt.datetime:
        return dt.datetime.fromisoformat(f"2025-01-01T{hhmmss}+00:00")

    def ns(t: dt.datetime) -> int:
        return int(t.timestamp()) * 1_000_000_000

    def rfc(t: dt.datetime) -> str:
        return t.strftime("%Y-%m-%dT%H:%M:%SZ")

    async with served() as (client, backend):
        backend.wall = at("09:00:00")
        await create(client, "hourly", schedule="@every 1h")  # first slot 10:00
        backend.wall = NOW
        await create(client, "minutely")  # @every 1m: first slot 10:01
        await create(client, "phase", schedule="@every 90s")  # 10:01:30, 10:03:00, ...
        await create(client, "off")
        await create(client, "short", expires_at=rfc(at("10:02:00")))
        # The create answer shows it too: nothing fires before starts_at.
        later = await create(client, "later", schedule="0 0 * * * *", starts_at=rfc(at("12:30:00")))
        assert later.json()["next"] == rfc(at("13:00:00"))
        backend.wall = at("10:05:30")
        for name, slot in (("minutely", "10:05:00"), ("phase", "10:04:30"), ("hourly", "10:00:00")):
            claim = ClaimSlot(name, ns(at(slot)), 1, "schedule", ns(at(slot)), (NODE,), 1)
            assert (await backend.propose(claim)).ok
        shown = {
            "minutely": "10:06:00",
            "phase": "10:06:00",  # anchored at now it would be 10:06:30
            "hourly": "11:00:00",
        }
        for name, want in shown.items():
            job = (await client.request("GET", f"/v1/jobs/{name}")).json()
            assert job["next"] == rfc(at(want)), name
        upcoming = (await client.request("GET", "/v1/jobs/phase/next?count=3")).json()
        assert upcoming == [rfc(at(t)) for t in ("10:06:00", "10:07:30", "10:09:00")]
        # An update that keeps the schedule keeps the phase (Dkron re-anchors
        # @every at the save: 10:07:00, skipping 10:06:00).
        body = job_body("phase", schedule="@every 90s", executor_config={"command": "date"})
        updated = await client.request("PUT", "/v1/jobs/phase", body)
        assert updated.status == 201 and updated.json()["next"] == rfc(at("10:06:00"))
        # A new schedule starts afresh from now.
        body = job_body("phase", schedule="@every 2m", executor_config={"command": "date"})
        changed = await client.request("PUT", "/v1/jobs/phase", body)
        assert changed.json()["next"] == rfc(at("10:07:30"))
        body = job_body("phase", schedule="@every 90s", executor_config={"command": "date"})
        restored = await client.request("PUT", "/v1/jobs/phase", body)
        assert restored.json()["next"] == rfc(at("10:07:00"))
        # Expired: nothing will fire, so the zero time.
        short = (await client.request("GET", "/v1/jobs/short")).json()
        assert short["next"] == "0001-01-01T00:00:00Z"
        # Disabled: nothing will fire either.
        toggled = (await client.request("POST", "/v1/jobs/off/toggle")).json()
        assert toggled["next"] == "0001-01-01T00:00:00Z"
        ran = (await client.request("POST", "/v1/jobs/minutely")).json()
        assert ran["next"] == rfc(at("10:06:00"))
        # Stored: hourly 10:00 before minutely 10:01; shown: minutely 10:06 first.
        listed = (await client.request("GET", "/v1/jobs?_sort=next&_order=ASC")).json()
        order = ["off", "short", "minutely", "phase", "hourly", "later"]
        assert [j["name"] for j in listed] == order
        by_name = {j["name"]: j["next"] for j in listed}
        assert by_name["minutely"] == rfc(at("10:06:00"))
        assert by_name["off"] == "0001-01-01T00:00:00Z"


_CACHE_STEPS = st.lists(
    st.one_of(
        st.tuples(st.just("clock"), st.integers(-120, 600)),
        st.tuples(st.just("claim"), st.integers(0, 2), st.integers(1, 3)),
        st.tuples(
            st.just("save"),
            st.integers(0, 2),
            st.sampled_from(
                ["@every 1m", "@every 7s", "0 */5 * * * *", "@at 2025-01-01T10:30:00Z"]
            ),
        ),
        st.tuples(st.just("bounds"), st.integers(0, 2), st.integers(-600, 3600)),
        st.tuples(st.just("toggle"), st.integers(0, 2)),
    ),
    max_size=25,
)


@given(steps=_CACHE_STEPS)
def test_the_next_cache_answers_what_a_fresh_computation_would(
    steps: list[tuple[Any, ...]],
) -> None:
    """Whatever happens between reads (time passing or going back, slots being
    claimed, schedules and bounds edited, jobs toggled), a cached ``next``
    equals the one computed afresh."""
    backend = LocalBackend()
    names = ["a", "b", "c"]
    for name in names:
        backend.state.apply_command(
            backend.index + 1,
            UpsertJob(Job(name=name, schedule="@every 1m", next=NOW_NS + 60 * 10**9)),
        )
        backend.index += 1
    cache = _NextCache()

    def check() -> None:
        now = backend.now()
        for name in names:
            job = backend.state.get_job(name)
            assert job is not None
            assert cache.shown(backend, job, now) == _NextCache().shown(backend, job, now), name

    def commit(cmd: Any) -> None:
        backend.index += 1
        backend.state.apply_command(backend.index, cmd)

    for step in steps:
        kind = step[0]
        if kind == "clock":
            backend.wall += dt.timedelta(seconds=step[1])
        elif kind == "claim":
            job = backend.state.get_job(names[step[1]])
            assert job is not None
            # The leader claims the slot shown, or a later one when its clock
            # runs ahead of this server's.
            ahead = _job_fires(backend, job, step[2])
            if ahead:
                slot = int(ahead[-1].timestamp()) * 10**9
                commit(ClaimSlot(job.name, slot, 1, "schedule", slot, (NODE,), 1))
        elif kind == "save":
            job = backend.state.get_job(names[step[1]])
            assert job is not None
            commit(UpsertJob(dataclasses.replace(job, schedule=step[2])))
        elif kind == "bounds":
            job = backend.state.get_job(names[step[1]])
            assert job is not None
            at = int(backend.now().timestamp()) * 10**9 + step[2] * 10**9
            commit(UpsertJob(dataclasses.replace(job, starts_at=at, expires_at=at + 600 * 10**9)))
        else:
            commit(ToggleJob(names[step[1]]))
        check()


# -- restore ------------------------------------------------------------------------------


def multipart(fields: dict[str, bytes], boundary: str = "XyZ-boundary") -> tuple[str, bytes]:
    out = bytearray(b"preamble\r\n")
    for name, data in fields.items():
        out += f"--{boundary}\r\n".encode()
        out += f'Content-Disposition: form-data; name="{name}"; filename="backup.json"\r\n'.encode()
        out += b"Content-Type: application/json\r\n\r\n" + data + b"\r\n"
    out += f"--{boundary}--\r\n".encode()
    return f"multipart/form-data; boundary={boundary}", bytes(out)


async def restore(client: Client, data: bytes, field: str = "file") -> Reply:
    ctype, body = multipart({"other": b"ignored", field: data})
    return await client.request("POST", "/v1/restore", body, headers=[("content-type", ctype)])


async def test_restore_creates_parents_before_children() -> None:
    backup = [
        job_body("grandchild", parent_job="child", schedule=""),
        job_body("child", parent_job="root", schedule=""),
        job_body("root", success_count=7, displayname="ünïcode"),
        job_body("solo"),
    ]
    async with served() as (client, backend):
        reply = await restore(client, json.dumps(backup).encode())
        assert reply.status == 200, reply.body
        report = json.loads(reply.json())
        assert sorted(report) == sorted(f"success create {j['name']}" for j in backup)
        root = backend.state.get_job("root")
        assert root is not None
        assert (root.success_count, root.displayname, root.dependent_jobs) == (
            7,
            "ünïcode",
            ("child",),
        )
        listed = await client.request("GET", "/v1/jobs")
        again = await restore(client, listed.body)
        assert "fail" not in again.json()
        child = backend.state.get_job("child")
        assert child is not None and child.dependent_jobs == ("grandchild",)


class BatchingBackend(LocalBackend):
    """Commits what is queued together, as the leader does: one turn, one batch."""

    def __init__(self, fail_after: int | None = None) -> None:
        super().__init__()
        self.batches: list[list[str]] = []
        self._queued: list[str] = []
        self._fail_after = fail_after

    async def propose(self, cmd: Command) -> ApplyResult:
        assert isinstance(cmd, UpsertJob)
        self._queued.append(cmd.job.name)
        await trio.testing.wait_all_tasks_blocked()
        if self._queued:
            self.batches.append(self._queued)
            self._queued = []
        if self._fail_after is not None and self.index >= self._fail_after:
            raise BackendError("no leader")
        return await super().propose(cmd)


async def test_restore_writes_a_generation_of_jobs_together() -> None:
    """One write at a time, each waited for its replicated fsync: minutes for a big backup."""
    backup = [job_body(f"root{i:03d}") for i in range(100)]
    backup += [job_body(f"child{i}", parent_job=f"root{i:03d}", schedule="") for i in range(3)]
    backend = BatchingBackend()
    async with served(backend) as (client, _):
        reply = await restore(client, json.dumps(backup).encode())
        assert reply.status == 200, reply.body
        assert json.loads(reply.json()) == [f"success create {j['name']}" for j in backup]
    roots, *rest = backend.batches
    assert sorted(roots) == [f"root{i:03d}" for i in range(100)]
    assert sorted(name for batch in rest for name in batch) == ["child0", "child1", "child2"]
    assert backend.state.get_job("root001").dependent_jobs == ("child1",)  # type: ignore[union-attr]


async def test_restore_stops_with_503_when_the_cluster_cannot_write() -> None:
    backend = BatchingBackend(fail_after=2)
    async with served(backend) as (client, _):
        backup = [job_body("a"), job_body("b"), job_body("c", parent_job="a", schedule="")]
        reply = await restore(client, json.dumps(backup).encode())
        assert reply.status == 503
        assert reply.json() == {"error": "restore stopped after 2 of 3 jobs: no leader"}
        assert backend.state.get_job("c") is None


async def test_restore_refusals() -> None:
    async with served() as (client, backend):
        missing = await restore(client, b"[]", field="upload")
        assert missing.status == 404
        not_multipart = await client.request("POST", "/v1/restore", b"[]")
        assert not_multipart.status == 404
        assert (await restore(client, b"{not json")).status == 400
        assert (await restore(client, b'{"name": "x"}')).status == 400
        orphan = json.dumps([job_body("child", parent_job="elsewhere", schedule="")])
        assert (await restore(client, orphan.encode())).status == 400
        invalid = json.dumps([job_body("ok"), job_body("Bad Name")])
        assert (await restore(client, invalid.encode())).status == 400
        wrong_type = json.dumps([job_body("ok", retries="3")])
        assert (await restore(client, wrong_type.encode())).status == 400
        broken = await client.request(
            "POST",
            "/v1/restore",
            b"--b\r\nno header end",
            headers=[("content-type", "multipart/form-data; boundary=b")],
        )
        assert broken.status == 400
        assert backend.state.job_count() == 0


async def test_restore_reports_cycles_as_failures() -> None:
    backup = [
        job_body("a", parent_job="b", schedule=""),
        job_body("b", parent_job="a", schedule=""),
        job_body("c"),
    ]
    async with served() as (client, backend):
        reply = await restore(client, json.dumps(backup).encode())
        assert json.loads(reply.json()) == ["fail create a", "fail create b", "success create c"]
        assert backend.state.job_count() == 1


# -- hostile and broken clients -----------------------------------------------------------


async def test_oversized_bodies_are_413() -> None:
    limits = ServerLimits(max_body_bytes=1000, linger_timeout=0.5)
    async with served(limits=limits) as (client, backend):
        declared = await client.raw(
            b"POST /v1/jobs HTTP/1.1\r\nhost: x\r\ncontent-length: 10000000\r\n\r\n{"
        )
        assert declared.startswith(b"HTTP/1.1 413 ")
        assert b'"error":"request body larger than 1000 bytes"' in declared
        chunk = b"%x\r\n%s\r\n" % (600, b" " * 600)
        chunked = await client.raw(
            b"POST /v1/jobs HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n"
            + chunk * 2
            + b"0\r\n\r\n"
        )
        assert chunked.startswith(b"HTTP/1.1 413 ")
        assert backend.state.job_count() == 0


async def test_header_flood_and_garbage_are_4xx() -> None:
    limits = ServerLimits(max_header_bytes=4096)
    async with served(limits=limits) as (client, _):
        endless = await client.raw(b"GET /v1/jobs HTTP/1.1\r\nhost: x\r\n" + b"x: y\r\n" * 2000)
        assert endless.startswith(b"HTTP/1.1 431 ")
        whole = await client.raw(
            b"GET /v1/jobs HTTP/1.1\r\nhost: x\r\nx-filler: " + b"a" * 3000 + b"\r\n"
            b"x-more: " + b"b" * 3000 + b"\r\n\r\n"
        )
        assert whole.startswith(b"HTTP/1.1 431 ")
        garbage = await client.raw(b"\x00\x01 not http at all\r\n\r\n")
        assert garbage.startswith(b"HTTP/1.1 400 ")
        assert b"Traceback" not in garbage
        bad_query = await client.raw(
            b"GET /v1/jobs?" + b"&".join(b"a=%d" % i for i in range(300)) + b" HTTP/1.1\r\n"
            b"host: x\r\nconnection: close\r\n\r\n"
        )
        assert bad_query.startswith(b"HTTP/1.1 400 ")


async def test_slow_client_gets_408() -> None:
    limits = ServerLimits(request_timeout=0.3)
    async with served(limits=limits) as (client, _):
        stream = await client.connect()
        async with stream:
            await stream.send_all(b"POST /v1/jobs HTTP/1.1\r\nhost: x\r\ncontent-length: 50\r\n")
            received = bytearray()
            while chunk := await stream.receive_some(65536):
                received += chunk
        assert received.startswith(b"HTTP/1.1 408 ")
        assert b"connection: close" in received.lower()


async def test_idle_keepalive_connection_is_closed_silently() -> None:
    limits = ServerLimits(idle_timeout=0.2)
    async with served(limits=limits) as (client, _):
        stream = await client.connect()
        async with stream:
            assert await stream.receive_some(100) == b""


async def test_keep_alive_and_connection_close() -> None:
    async with served() as (client, _):
        stream = await client.connect()
        async with stream:
            conn = h11.Connection(h11.CLIENT)
            for _ in range(3):
                req = h11.Request(method="GET", target="/v1/pause", headers=[("host", "x")])
                await stream.send_all(conn.send(req) or b"")
                await stream.send_all(conn.send(h11.EndOfMessage()) or b"")
                reply = await _read_reply(stream, conn)
                assert reply.status == 200
                conn.start_next_cycle()
            last = h11.Request(
                method="GET", target="/health", headers=[("host", "x"), ("connection", "close")]
            )
            await stream.send_all(conn.send(last) or b"")
            await stream.send_all(conn.send(h11.EndOfMessage()) or b"")
            reply = await _read_reply(stream, conn)
            assert reply.status == 200
            assert await stream.receive_some(100) == b""


async def test_expect_100_continue() -> None:
    async with served() as (client, backend):
        body = json.dumps(job_body("job1")).encode()
        stream = await client.connect()
        async with stream:
            await stream.send_all(
                b"POST /v1/jobs HTTP/1.1\r\nhost: x\r\nexpect: 100-continue\r\n"
                b"content-length: %d\r\n\r\n" % len(body)
            )
            interim = await stream.receive_some(65536)
            assert interim.startswith(b"HTTP/1.1 100 ")
            await stream.send_all(body)
            final = await stream.receive_some(65536)
            assert final.startswith(b"HTTP/1.1 201 ")
        assert backend.state.get_job("job1") is not None


class _BrokenApp:
    """An application whose handler always fails, to test the server's own guard."""

    def body_limit(self, method: str, path: str) -> int:
        return 100

    async def handle(self, request: Request) -> Response:
        raise KeyError(request.path)

    def websocket(self, request: Request) -> None:
        return None

    def error(self, status: int, message: str) -> Response:
        return Response(status=status, body=message.encode())


async def test_server_answers_500_when_the_application_fails() -> None:
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            listeners = await nursery.start(serve, _BrokenApp(), "127.0.0.1", 0)
            client = Client(listeners[0].socket.getsockname()[1])
            reply = await client.request("GET", "/anything")
            assert (reply.status, reply.body) == (500, b"internal error")
            nursery.cancel_scope.cancel()


async def test_http10_closes_and_a_failing_background_run_is_contained() -> None:
    async with served() as (client, backend):
        answer = await client.raw(b"GET /v1/pause HTTP/1.0\r\n\r\n")
        assert answer.startswith(b"HTTP/1.1 200 ")
        assert answer.endswith(b'{"paused":false}')

        async def broken_run(name: str) -> Execution | None:
            backend.ran.set()
            raise RuntimeError(name)

        backend.run_job = broken_run  # type: ignore[method-assign]
        await create(client, "job1")
        created = await client.request("POST", "/v1/jobs?runoncreate=1", job_body("job2"))
        assert created.status == 201
        await backend.ran.wait()
        assert (await client.request("GET", "/v1/jobs/job2")).status == 200


# -- scale --------------------------------------------------------------------------------


class _NoScanState(StateMachine):
    """Fails the test if a listing walks every job."""

    def iter_jobs(self) -> Any:
        raise AssertionError("the default listing must not scan")


async def test_default_listing_of_10000_jobs_reads_only_the_page() -> None:
    state = _NoScanState()
    for i in range(10_000):
        state.apply_command(i + 1, UpsertJob(Job(name=f"job{i:05d}", schedule="@every 1m")))
    async with served(LocalBackend(state)) as (client, _):
        reply = await client.request("GET", "/v1/jobs?_start=0&_end=25&_sort=id&_order=ASC")
        assert reply.headers["x-total-count"] == "10000"
        assert [j["name"] for j in reply.json()] == [f"job{i:05d}" for i in range(25)]
        tail = await client.request("GET", "/v1/jobs?_start=0&_end=2&_order=DESC")
        assert [j["name"] for j in tail.json()] == ["job09999", "job09998"]


def test_route_table_is_unique_and_declarative() -> None:
    keys = [(r.method, r.pattern) for r in ROUTES]
    assert len(keys) == len(set(keys))
    assert len({r.name for r in ROUTES}) == len(ROUTES)
    assert all(r.summary and r.pattern.startswith("/") for r in ROUTES)


_JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner),
    max_leaves=8,
)


# -- the server under arbitrary requests --------------------------------------------------

_JOB_KEYS = ["name", "schedule", "retries", "tags", "executor_config", "timezone", "parent_job"]
_PATHS = [
    "/v1/jobs",
    "/v1/jobs/",
    "/v1/jobs/j",
    "/v1/jobs/j/run",
    "/v1/jobs/j/toggle",
    "/v1/jobs/j/next",
    "/v1/jobs/j/executions",
    "/v1/jobs/j/executions/1-n/cancel",
    "/v1/restore",
    "/v1/members",
    "/v1/busy",
    "/v1/pause",
    "/v1/",
    "/health",
    "/v1/jobs/%FF%FE",
    "*",
]


@st.composite
def _requests(draw: st.DrawFn) -> bytes:
    if draw(st.integers(0, 4)) == 0:
        return draw(st.binary(max_size=400))
    method = draw(st.sampled_from(["GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "HEAD"]))
    path = draw(st.sampled_from(_PATHS))
    query = draw(
        st.lists(
            st.tuples(
                st.sampled_from(["_start", "_end", "_sort", "_order", "count", "q", "status"]),
                st.text(alphabet="-0123456789abDESC%+", max_size=5),
            ),
            max_size=3,
        )
    )
    target = path + ("?" + "&".join(f"{k}={v}" for k, v in query) if query else "")
    obj = draw(st.dictionaries(st.sampled_from(_JOB_KEYS), _JSON_VALUES, max_size=4))
    if "name" not in obj and draw(st.booleans()):
        obj["name"] = "j"
    body = json.dumps(obj).encode() if draw(st.booleans()) else draw(st.binary(max_size=60))
    headers = b"host: x\r\ncontent-length: %d\r\n" % len(body)
    if path == "/v1/restore":
        headers += b"content-type: multipart/form-data; boundary=b\r\n"
    return b"%s %s HTTP/1.1\r\n%s\r\n%s" % (method.encode(), target.encode(), headers, body)


async def _exchange(data: bytes) -> list[int]:
    backend = LocalBackend()
    limits = ServerLimits(request_timeout=0.5, idle_timeout=0.5, linger_timeout=0.1)
    received = bytearray()
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            listeners = await nursery.start(HttpApi(backend, limits=limits).serve, "127.0.0.1", 0)
            port = listeners[0].socket.getsockname()[1]
            stream = await trio.open_tcp_stream("127.0.0.1", port)
            async with stream:
                await stream.send_all(data)
                await stream.send_eof()
                while chunk := await stream.receive_some(65536):
                    received += chunk
            nursery.cancel_scope.cancel()
    return [int(m) for m in re.findall(rb"HTTP/1\.1 (\d{3}) ", bytes(received))]


@settings(
    max_examples=max(10, settings().max_examples // 2),
    suppress_health_check=[HealthCheck.too_slow],
    deadline=None,
)
@given(_requests())
@example(b"POST /v1/jobs HTTP/1.1\r\nhost: x\r\ncontent-length: 4\r\n\r\n1e99")
@example(b'PUT /v1/jobs/j HTTP/1.1\r\nhost: x\r\ncontent-length: 14\r\n\r\n{"retries":-0}')
def test_no_request_gets_a_server_error(data: bytes) -> None:
    statuses = trio.run(_exchange, data)
    assert all(100 <= s < 500 for s in statuses), statuses


async def test_raft_peers_are_listed_and_removed() -> None:
    async with served() as (client, _backend):
        reply = await client.request("GET", "/v1/raft/peers")
        assert reply.status == 200
        assert [p["id"] for p in reply.json()] == [NODE, "node2"]
        assert (await client.request("DELETE", "/v1/raft/peers/node2")).status == 200
        missing = await client.request("DELETE", "/v1/raft/peers/node2")
        assert missing.status == 404
        assert "not found in the Raft configuration" in missing.json()["error"]
