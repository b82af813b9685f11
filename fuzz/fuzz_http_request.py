"""atheris target: raw bytes from a client, through h11, the router and the handlers.

Run: ``python fuzz/fuzz_http_request.py [corpus_dir]`` (needs the ``fuzz`` extra).
The module imports without atheris so that the test suite can drive
:func:`TestOneInput` over a smoke corpus and Hypothesis inputs.

Each input is one client connection's bytes (possibly several pipelined
requests) fed to :func:`dkron.io_trio.http_server.serve_connection` over an
in-memory stream pair, serving an :class:`HttpApi` over a fresh single-node
state (one job, one finished and one running execution).  Virtual time
(``MockClock``) makes the server's request and idle timeouts instant.

Contract under test: nothing escapes the connection task, the connection
always ends (no hang), and no response is a server error -- except 503 as
the documented answer to a paused submission, and 501 as h11's refusal of a
transfer coding it does not implement, before any handler runs.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import sys

import trio
import trio.testing

from dkron.io_trio.http_api import HttpApi, MemberInfo, MemberStatus
from dkron.io_trio.http_server import (
    Request,
    Response,
    ServerLimits,
    WebSocketHandler,
    serve_connection,
)
from dkron.io_trio.streams import EventHub
from dkron.model import Execution, Job
from dkron.state import (
    ApplyResult,
    ClaimSlot,
    Command,
    ExecutionFinished,
    ExecutionStarted,
    StateMachine,
    UpsertJob,
    encode_command,
)

NODE = "node1"
NOW = dt.datetime(2025, 1, 1, 10, 0, tzinfo=dt.UTC)
NOW_NS = int(NOW.timestamp()) * 1_000_000_000
FAR = NOW + dt.timedelta(days=3660)
SELF = MemberInfo(
    name=NODE,
    addr="127.0.0.1",
    port=8946,
    tags={"role": "dkron", "server": "true", "region": "global"},
    status=MemberStatus.ALIVE,
)
SEED_JOB = Job(name="job1", schedule="@every 1m", executor="shell")
FINISHED = Execution("job1", NOW_NS, NODE, NOW_NS + 10**9, True, "done\n", NOW_NS, 1)
RUNNING = Execution("job1", NOW_NS + 5 * 10**9, NODE, group=NOW_NS + 5 * 10**9, attempt=1)
LIMITS = ServerLimits(max_body_bytes=64 * 1024)
DEADLINE = 3600.0
"""Virtual seconds a connection may take: far above every server timeout."""


class MemoryBackend:
    """A one-node cluster in memory: every proposal commits at once; "now" is fixed.

    Runs claim, start and record an execution through the state's commands as
    the agent does; the stream source finishes a running execution on its
    second poll, as a worker eventually reports.
    """

    def __init__(self) -> None:
        self.state = StateMachine()
        self.node_name = NODE
        self.paused = False
        self.index = 0
        self.runs = 0
        self.hub = EventHub()
        self.polls = 0
        for cmd in (
            UpsertJob(SEED_JOB),
            ClaimSlot("job1", FINISHED.group, 1, "manual", FINISHED.group, (NODE,), 1),
            ClaimSlot("job1", RUNNING.group, 1, "manual", RUNNING.group, (NODE,), 1),
            ExecutionStarted(dataclasses.replace(FINISHED, finished_at=None)),
            ExecutionFinished(FINISHED),
            ExecutionStarted(RUNNING),
        ):
            assert self._apply(cmd).ok, cmd

    def _apply(self, cmd: Command) -> ApplyResult:
        self.index += 1
        return self.state.apply(self.index, encode_command(cmd))

    async def set_paused(self, paused: bool) -> None:
        self.paused = paused

    def leader(self) -> MemberInfo | None:
        return SELF

    def is_leader(self) -> bool:
        return True

    def members(self) -> list[MemberInfo]:
        return [SELF]

    def status(self) -> dict[str, object]:
        return {
            "agent": {"name": NODE, "version": "0.1.0"},
            "serf": {"members": "1", "failed": "0", "left": "0", "encrypted": "false"},
            "tags": dict(SELF.tags),
        }

    async def busy(self) -> list[Execution]:
        return self.state.running_executions()

    def now(self) -> dt.datetime:
        return NOW

    async def propose(self, cmd: Command) -> ApplyResult:
        return self._apply(cmd)

    async def run_job(self, name: str) -> Execution | None:
        if self.state.get_job(name) is None:
            return None
        self.runs += 1
        group = NOW_NS + (10 + self.runs) * 10**9
        if not self._apply(ClaimSlot(name, group, 1, "manual", group, (NODE,), 1)).ok:
            return None
        ex = Execution(name, group, NODE, group=group, attempt=1, trigger="manual")
        return ex if self._apply(ExecutionStarted(ex)).ok else None

    async def cancel(self, job: str, execution_id: str) -> bool:
        ex = self.state.get_execution(job, execution_id)
        if ex is None or not ex.running:
            return False
        stopped = dataclasses.replace(
            ex, finished_at=ex.started_at + 1, status="cancelled", success=False
        )
        return self._apply(ExecutionFinished(stopped)).ok

    async def leave(self) -> dict[str, object]:
        return {NODE: SELF.addr}

    def raft_peers(self) -> list[dict[str, object]]:
        return [{"id": NODE, "node": NODE, "address": "", "leader": True, "voter": True}]

    async def remove_peer(self, peer_id: str) -> bool:
        return False

    @property
    def events(self) -> EventHub:
        return self.hub

    async def output_after(
        self, job: str, execution_id: str, seq: int, wait: float
    ) -> tuple[list[tuple[int, bytes]], Execution | None]:
        self.polls += 1
        ex = self.state.get_execution(job, execution_id)
        if ex is not None and ex.running:
            if self.polls < 2:
                await trio.sleep(wait)
                return [(seq + 1, b"partial output\n")], None
            done = dataclasses.replace(ex, finished_at=ex.started_at + 1, success=True)
            self._apply(ExecutionFinished(done))
            ex = done
        return [], ex


class Recorder:
    """The served app, recording every status it answers with (handlers and refusals)."""

    def __init__(self, api: HttpApi) -> None:
        self.api = api
        self.answers: list[tuple[str, str, int]] = []

    def websocket(self, request: Request) -> Response | WebSocketHandler | None:
        chosen = self.api.websocket(request)
        if isinstance(chosen, Response):
            self.answers.append((request.method, request.path, chosen.status))
        return chosen

    def body_limit(self, method: str, path: str) -> int:
        return self.api.body_limit(method, path)

    async def handle(self, request: Request) -> Response:
        response = await self.api.handle(request)
        self.answers.append((request.method, request.path, response.status))
        return response

    def error(self, status: int, message: str) -> Response:
        self.answers.append(("", message, status))
        return self.api.error(status, message)


def check_answers(answers: list[tuple[str, str, int]], backend: MemoryBackend) -> None:
    for method, path, status in answers:
        if status == 503 and backend.paused and method in ("POST", "PATCH", "PUT"):
            continue  # "New job submissions are currently paused"
        if status == 501 and not method:
            continue  # h11's answer to a transfer coding other than chunked (RFC 9112 6.1)
        assert status < 500, f"{method} {path} answered {status}"


async def exchange(data: bytes, *, events: bool = False) -> tuple[bytes, list[int]]:
    """Serve one connection whose client sends ``data`` then half-closes; what came back.

    ``events`` publishes a cluster event every few virtual seconds, as a live
    cluster does, so that an events subscriber has something to send.  Fails
    with ``trio.TooSlowError`` if the connection does not end within
    :data:`DEADLINE` virtual seconds.
    """
    backend = MemoryBackend()
    api = HttpApi(backend, limits=LIMITS, ui=False)
    app = Recorder(api)
    client, server = trio.testing.memory_stream_pair()
    received = bytearray()

    async def tick() -> None:
        while True:
            await trio.sleep(5)
            backend.hub.publish({"type": "leader", "leader": NODE})

    async def converse() -> None:
        try:
            await client.send_all(data)
            await client.send_eof()
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass  # the server closed first (a refusal); what it sent is still readable
        while True:
            try:
                chunk = await client.receive_some(65536)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                break
            if not chunk:
                break
            received.extend(chunk)
        await client.aclose()

    with trio.fail_after(DEADLINE):
        async with trio.open_nursery() as outer:
            if events:
                outer.start_soon(tick)
            async with trio.open_nursery() as nursery:
                # ``HttpApi.serve`` provides this nursery on a real listener; runoncreate
                # needs it.
                api._background = nursery
                nursery.start_soon(serve_connection, server, app, LIMITS)
                nursery.start_soon(converse)
            api._background = None
            outer.cancel_scope.cancel()
    check_answers(app.answers, backend)
    return bytes(received), [status for _, _, status in app.answers]


def run(data: bytes, *, events: bool = False) -> tuple[bytes, list[int]]:
    """One input in a fresh Trio run on virtual time."""
    clock = trio.testing.MockClock(autojump_threshold=0)
    return trio.run(lambda: exchange(data, events=events), clock=clock)


def TestOneInput(data: bytes) -> None:
    run(data)


def main() -> None:
    import atheris

    atheris.instrument_all()  # the dkron modules are already imported above
    atheris.Setup(sys.argv, TestOneInput)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
