"""The agent: one nursery tree that drives the cores over real disks, processes and HTTP.

A single core task owns every protocol core of the node — Raft, the
replicated state machine, and while leading the planner and the execution
leader, plus the execution worker — and runs the sans-IO contract in a loop:
wait for input or the earliest deadline, feed the cores, then carry out their
output in order: **persist** (one fsync for everything the batch asks to
store: group commit), **send**, **apply**.  Everything else — the HTTP API,
executor processes — talks to the core task through one bounded channel, so
no two tasks ever touch a core at once.

Leadership is explicit: the planner and the execution leader exist only
while this node leads, and only after its state has applied everything
committed before its term (the barrier).  Losing leadership drops them at
once, so the scheduler can never run on a non-leader.

This module runs a single server whose Raft configuration is itself
(``--bootstrap-expect 1``); joining peers over the RPC port is the next
step (see ``docs/running.md``).
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import pathlib
import random
import signal
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

import trio

from dkron import __version__
from dkron.io_trio.executors import get_executor
from dkron.io_trio.executors.base import EXECUTOR_NOT_PRESENT, RunContext, final_output
from dkron.io_trio.http_api import ApiBackend, HttpApi, MemberInfo, MemberStatus, NotLeaderError
from dkron.io_trio.journal import RunJournal
from dkron.io_trio.net import parse_addr
from dkron.io_trio.storage import RaftStorage
from dkron.model import Execution, Job
from dkron.proto_sansio.errors import LocalProtocolError
from dkron.proto_sansio.execution import (
    EXECUTION_CODEC,
    Cancel,
    Dispatch,
    ExecMessage,
    ExecutionConfig,
    ExecutionLeader,
    ExecutionWorker,
    ForgetRun,
    MemberView,
    Propose,
    ResultAck,
    RunKey,
    Send,
    StartRun,
    StopRun,
    select_targets,
)
from dkron.proto_sansio.planner import Planner, from_ns, to_ns
from dkron.proto_sansio.raft import (
    EntryKind,
    PersistedState,
    RaftConfig,
    RaftNode,
    Role,
)
from dkron.schedule import fire_times
from dkron.state import (
    ApplyResult,
    ClaimSlot,
    Command,
    StateMachine,
    encode_command,
)

__all__ = ["Agent", "AgentOptions", "run"]

log = logging.getLogger("dkron.agent")

SNAPSHOT_EVERY = 10_000


class AgentOptions(Protocol):
    """The settings the agent reads (``dkron.config.AgentConfig`` provides them)."""

    @property
    def node_name(self) -> str: ...
    @property
    def data_dir(self) -> str: ...
    @property
    def server(self) -> bool: ...
    @property
    def bootstrap_expect(self) -> int: ...
    @property
    def http_addr(self) -> str: ...
    @property
    def tags(self) -> Mapping[str, str]: ...
    @property
    def region(self) -> str: ...
    @property
    def datacenter(self) -> str: ...
    @property
    def raft_multiplier(self) -> int: ...


@dataclasses.dataclass(slots=True)
class _Waiter:
    event: trio.Event
    result: ApplyResult | None = None


def _wall() -> datetime:
    return datetime.now(UTC)


def http_listen_addr(value: str) -> tuple[str | None, int]:
    """Dkron's ``--http-addr``: ``:8080`` (every interface) or ``host:port``."""
    text = value or ":8080"
    if text.startswith(":"):
        _, port = parse_addr("0.0.0.0" + text, default_port=8080)
        return None, port
    host, port = parse_addr(text, default_port=8080)
    return host, port


class Agent:
    """One node.  ``run`` starts everything and returns when the node stops."""

    def __init__(self, opts: AgentOptions, *, rng: random.Random | None = None) -> None:
        self.opts = opts
        self.name = opts.node_name
        self.rng = rng or random.Random(int.from_bytes(os.urandom(8), "big"))
        mult = max(1, opts.raft_multiplier)
        self.raft_config = RaftConfig(election_timeout=1.0 * mult, heartbeat_interval=0.1 * mult)
        self.exec_config = ExecutionConfig()
        self.tags = {
            **dict(opts.tags),
            "role": "dkron",
            "dc": opts.datacenter,
            "region": opts.region,
            "server": "true" if opts.server else "false",
            "version": __version__,
        }
        self.state = StateMachine()
        self.node: RaftNode | None = None
        self.storage: RaftStorage | None = None
        self.planner: Planner | None = None
        self.exec_leader: ExecutionLeader | None = None
        self.worker: ExecutionWorker | None = None
        self.journal = RunJournal(pathlib.Path(opts.data_dir) / "runs")
        self.paused = False
        self._barrier: int | None = None
        self._waiters: dict[int, _Waiter] = {}
        self._runs: dict[RunKey, trio.CancelScope] = {}
        self._send_in: trio.MemorySendChannel[tuple[str, Any]]
        self._recv_in: trio.MemoryReceiveChannel[tuple[str, Any]]
        self._send_in, self._recv_in = trio.open_memory_channel(1024)
        self._nursery: trio.Nursery | None = None
        self.http_port: int | None = None

    # -- life cycle -----------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[Agent] = trio.TASK_STATUS_IGNORED) -> None:
        if not self.opts.server:
            raise ValueError("only server nodes run the agent so far: pass --server")
        data = pathlib.Path(self.opts.data_dir)
        await trio.to_thread.run_sync(lambda: data.mkdir(parents=True, exist_ok=True))
        initial = (
            PersistedState.bootstrap([self.name])
            if self.opts.bootstrap_expect <= 1
            else PersistedState.empty()
        )
        self.storage, persisted = await RaftStorage.open(data / "raft", initial=initial)
        interrupted = await trio.to_thread.run_sync(self.journal.load)
        now = trio.current_time()
        self.node = RaftNode(
            self.name, self.raft_config, rng=self.rng, now=now, persisted=persisted
        )
        self.worker = ExecutionWorker(
            self.name,
            self.exec_config,
            now=now,
            wall_ns=to_ns(_wall()),
            interrupted=interrupted,
        )
        host, port = http_listen_addr(self.opts.http_addr)
        backend: ApiBackend = _Backend(self)
        api = HttpApi(backend)
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                await nursery.start(self._core_loop)
                listeners = await nursery.start(api.serve, host or None, port)
                self.http_port = listeners[0].socket.getsockname()[1]
                log.info("node %s serving the API on port %s", self.name, self.http_port)
                task_status.started(self)
        finally:
            await self.storage.aclose()

    # -- the core task ----------------------------------------------------------------

    async def _core_loop(
        self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        task_status.started()
        await self._flush()
        while True:
            deadline = self._deadline()
            item: tuple[str, Any] | None = None
            with trio.move_on_at(deadline):
                item = await self._recv_in.receive()
            items = [item] if item is not None else []
            while True:  # take everything queued: one persist for all of it
                try:
                    items.append(self._recv_in.receive_nowait())
                except trio.WouldBlock:
                    break
            now = trio.current_time()
            for it in items:
                self._handle(it, now)
            self._tick(now)
            await self._flush()

    def _deadline(self) -> float:
        times = []
        if self.node is not None and (t := self.node.next_deadline()) is not None:
            times.append(t)
        if self.worker is not None and (t := self.worker.next_deadline()) is not None:
            times.append(t)
        if self.exec_leader is not None and (t := self.exec_leader.next_deadline()) is not None:
            times.append(t)
        if self.planner is not None and (w := self.planner.next_deadline()) is not None:
            times.append(trio.current_time() + max(0.0, (w - _wall()).total_seconds()))
        return min(times) if times else math.inf

    def _handle(self, item: tuple[str, Any], now: float) -> None:
        kind, payload = item
        node = self.node
        assert node is not None and self.worker is not None
        if kind == "propose":
            cmd, waiter = payload
            try:
                index = node.propose(encode_command(cmd), now)
            except LocalProtocolError:
                waiter.event.set()
                return
            self._waiters[index] = waiter
        elif kind == "exec":
            self._deliver_exec(payload, now)
        elif kind == "output":
            key, chunk = payload
            self.worker.output(key, chunk, now)
        elif kind == "finished":
            key, success, output = payload
            self._runs.pop(key, None)
            self.worker.finished(
                key, success=success, output=output, wall_ns=to_ns(_wall()), now=now
            )
        elif kind == "remove_peer":
            peer, waiter = payload
            try:
                node.remove(peer, now)
                waiter.result = True
            except LocalProtocolError as exc:  # not leading, or a change is in progress
                log.warning("cannot remove %s: %s", peer, exc)
            waiter.event.set()
        elif kind == "cancel":
            key, done = payload
            ok = self.exec_leader is not None and self.exec_leader.cancel(key, now, to_ns(_wall()))
            done.result = ok
            done.event.set()

    def _deliver_exec(self, msg: ExecMessage, now: float) -> None:
        assert self.worker is not None
        wall_ns = to_ns(_wall())
        if isinstance(msg, Dispatch | ResultAck | Cancel):
            self.worker.receive(msg, src=self.name, now=now, wall_ns=wall_ns)
        elif self.exec_leader is not None:
            self.exec_leader.receive(msg, src=self.name, now=now, wall_ns=wall_ns)

    def _tick(self, now: float) -> None:
        assert self.node is not None and self.worker is not None
        self.node.handle_timer(now)
        self.worker.handle_timer(now)
        if self.exec_leader is not None:
            self.exec_leader.handle_timer(now, to_ns(_wall()))
        if self.planner is not None:
            for cmd in self.planner.tick(_wall()):
                self._propose_quietly(cmd, now)

    def _propose_quietly(self, cmd: Command, now: float) -> None:
        assert self.node is not None
        try:
            self.node.propose(encode_command(cmd), now)
        except LocalProtocolError:
            self._lose_leadership()

    async def _flush(self) -> None:
        node = self.node
        assert node is not None and self.storage is not None
        for _ in range(1000):
            progressed = False
            while node.has_ready():
                progressed = True
                ready = node.drain()
                if ready.persist:
                    await self.storage.persist(ready.persist)
                for dst, _msg in ready.messages:
                    log.debug("no route to %s yet: single-server agent", dst)
                if ready.restore is not None:
                    self.state = StateMachine()
                    if ready.restore.data:
                        self.state.restore(ready.restore.data)
                for entry in ready.committed:
                    self._apply(entry.index, entry.kind, entry.data)
                self._follow_leadership()
            starts, forgets = self._carry_out()
            if starts or forgets:
                progressed = True
                # The journal is on disk before any executor starts (fsync off the loop).
                await trio.to_thread.run_sync(self._journal_batch, starts, forgets)
                for start in starts:
                    self._start(start.job, start.execution)
            if not progressed:
                return
        log.warning("the core kept producing output; yielding")

    def _apply(self, index: int, kind: EntryKind, data: bytes) -> None:
        waiter = self._waiters.pop(index, None)
        if kind != EntryKind.NORMAL:
            if waiter is not None:
                waiter.event.set()
            return
        cmd, result = self.state.apply_entry(index, data)
        if waiter is not None:
            waiter.result = result
            waiter.event.set()
        if cmd is None:
            return
        now = trio.current_time()
        if self.planner is not None:
            self.planner.observe(cmd, result, _wall())
        if self.exec_leader is not None:
            self.exec_leader.observe(cmd, result, self.state, now)
        node = self.node
        if node is not None and index - node.snapshot_index >= SNAPSHOT_EVERY:
            node.compact(index, self.state.snapshot())

    def _follow_leadership(self) -> None:
        node = self.node
        assert node is not None
        if node.role is not Role.LEADER:
            if self.planner is not None or self.exec_leader is not None:
                self._lose_leadership()
            return
        if self._barrier is None:
            self._barrier = node.last_index
        if self.planner is None and node.applied_index >= self._barrier:
            now = trio.current_time()
            self.planner = Planner(
                self.state, term=node.term, wall=_wall(), select_targets=self._select
            )
            self.exec_leader = ExecutionLeader(self.name, node.term, self.exec_config, now=now)
            self.exec_leader.load(self.state, now)
            log.info("node %s leads term %d", self.name, node.term)

    def _lose_leadership(self) -> None:
        self.planner = None
        self.exec_leader = None
        self._barrier = None

    def _journal_batch(self, starts: list[StartRun], forgets: list[RunKey]) -> None:
        for start in starts:
            self.journal.add(start.execution)
        for key in forgets:
            self.journal.forget(key)

    def _carry_out(self) -> tuple[list[StartRun], list[RunKey]]:
        """Carry out the worker's and the execution leader's actions.

        Returns the runs to start and the journal entries to drop: those need
        the disk, which the caller reaches off the event loop.
        """
        starts: list[StartRun] = []
        forgets: list[RunKey] = []
        now = trio.current_time()
        node = self.node
        assert node is not None and self.worker is not None
        actions: list[Any] = list(self.worker.drain())
        if self.exec_leader is not None:
            actions.extend(self.exec_leader.drain())
        for a in actions:
            if isinstance(a, Send):
                if a.dst == self.name:
                    # Round-trip through the codec as a remote peer would see it.
                    msg = EXECUTION_CODEC.decode(EXECUTION_CODEC.encode(a.msg))
                    assert isinstance(msg, ExecMessage)
                    self._deliver_exec(msg, now)
                else:
                    log.debug("no route to %s yet: single-server agent", a.dst)
            elif isinstance(a, Propose):
                self._propose_quietly(a.command, now)
            elif isinstance(a, StartRun):
                starts.append(a)
            elif isinstance(a, StopRun):
                scope = self._runs.get(a.key)
                if scope is not None:
                    scope.cancel()
            elif isinstance(a, ForgetRun):
                forgets.append(a.key)
        return starts, forgets

    def _select(self, job: Job) -> tuple[str, ...]:
        me = MemberView(name=self.name, alive=True, tags=self.tags)
        return select_targets(job.tags, [me], region=self.opts.region, rng=self.rng)

    # -- executors ---------------------------------------------------------------------

    def _start(self, job: Job, ex: Execution) -> None:
        assert self._nursery is not None
        key = RunKey(ex.job_name, ex.group, ex.node_name, ex.attempt)
        scope = trio.CancelScope()
        self._runs[key] = scope
        self._nursery.start_soon(self._execute, job, ex, key, scope)

    async def _execute(self, job: Job, ex: Execution, key: RunKey, scope: trio.CancelScope) -> None:
        executor = get_executor(job.executor)
        success, output = False, ""
        with scope:
            if executor is None:
                output = EXECUTOR_NOT_PRESENT
            else:
                ctx = RunContext(
                    job_name=job.name,
                    execution_id=ex.id,
                    scheduled_time=None
                    if ex.scheduled_time is None
                    else from_ns(ex.scheduled_time),
                    attempt=max(1, ex.attempt),
                    trigger=ex.trigger or "manual",
                    node_name=self.name,
                )

                async def sink(chunk: bytes) -> None:
                    await self._send_in.send(("output", (key, chunk)))

                result = await executor.run(job.executor_config or {}, ctx, sink)
                success = result.success
                output = final_output(result).decode("utf-8", errors="replace")
        if scope.cancelled_caught:
            output = output or "cancelled"
        await self._send_in.send(("finished", (key, success, output)))

    # -- requests from the API ----------------------------------------------------------

    async def propose(self, cmd: Command) -> ApplyResult:
        node = self.node
        if node is None or node.role is not Role.LEADER:
            raise NotLeaderError(
                "this node is not the leader",
                leader=None if node is None else node.leader_id,
            )
        waiter = _Waiter(trio.Event())
        await self._send_in.send(("propose", (cmd, waiter)))
        with trio.fail_after(30):
            await waiter.event.wait()
        if waiter.result is None:
            raise NotLeaderError("leadership was lost before the command committed")
        return waiter.result

    async def remove_peer(self, peer: str) -> bool:
        """Remove a server from the Raft configuration (one change at a time)."""
        node = self.node
        if node is None:
            return False
        if node.role is not Role.LEADER:
            raise NotLeaderError("this node is not the leader", leader=node.leader_id)
        if peer not in node.membership.voters | node.membership.learners:
            return False
        done = _CancelWaiter(trio.Event())
        await self._send_in.send(("remove_peer", (peer, done)))
        await done.event.wait()
        return done.result

    async def cancel(self, key: RunKey) -> bool:
        done = _CancelWaiter(trio.Event())
        await self._send_in.send(("cancel", (key, done)))
        await done.event.wait()
        return done.result


@dataclasses.dataclass(slots=True)
class _CancelWaiter:
    event: trio.Event
    result: bool = False


class _Backend:
    """The HTTP API's view of the agent."""

    def __init__(self, agent: Agent) -> None:
        self.agent = agent

    @property
    def state(self) -> StateMachine:
        return self.agent.state

    @property
    def node_name(self) -> str:
        return self.agent.name

    @property
    def paused(self) -> bool:
        return self.agent.paused

    async def set_paused(self, paused: bool) -> None:
        self.agent.paused = paused

    def _me(self) -> MemberInfo:
        return MemberInfo(
            name=self.agent.name,
            addr="127.0.0.1",
            port=8946,
            tags=dict(self.agent.tags),
            status=MemberStatus.ALIVE,
        )

    def leader(self) -> MemberInfo | None:
        node = self.agent.node
        return self._me() if node is not None and node.role is Role.LEADER else None

    def is_leader(self) -> bool:
        node = self.agent.node
        return node is not None and node.role is Role.LEADER

    def members(self) -> list[MemberInfo]:
        return [self._me()]

    def status(self) -> dict[str, object]:
        return {
            "agent": {"name": self.agent.name, "version": __version__},
            "serf": {"members": "1", "failed": "0", "left": "0", "encrypted": "false"},
            "tags": dict(self.agent.tags),
        }

    async def busy(self) -> list[Execution]:
        return self.agent.state.running_executions()

    def next_fire_times(self, job: Job, count: int) -> list[datetime]:
        now = _wall()
        return list(fire_times(job, now, now + timedelta(days=3660), limit=count))

    async def propose(self, cmd: Command) -> ApplyResult:
        return await self.agent.propose(cmd)

    async def run_job(self, name: str) -> Execution | None:
        job = self.agent.state.get_job(name)
        node = self.agent.node
        if job is None or node is None:
            return None
        targets = self.agent._select(job)
        if not targets:
            return None
        now_ns = to_ns(_wall())
        claim = ClaimSlot(name, now_ns, node.term, "manual", now_ns, targets, 1)
        result = await self.agent.propose(claim)
        if not result.ok:
            return None
        return Execution(name, now_ns, targets[0], group=now_ns, attempt=1, trigger="manual")

    async def cancel(self, job: str, execution_id: str) -> bool:
        ex = self.agent.state.get_execution(job, execution_id)
        if ex is None or not ex.running:
            return False
        return await self.agent.cancel(RunKey(job, ex.group, ex.node_name, ex.attempt))

    async def leave(self) -> dict[str, object]:
        return {self.agent.name: "leaving"}

    def raft_peers(self) -> list[dict[str, object]]:
        node = self.agent.node
        if node is None:
            return []
        members = node.membership
        return [
            {
                "id": peer,
                "node": peer,
                "address": "",
                "leader": peer == node.leader_id,
                "voter": peer in members.voters,
            }
            for peer in sorted(members.voters | members.learners)
        ]

    async def remove_peer(self, peer_id: str) -> bool:
        return await self.agent.remove_peer(peer_id)


async def run(opts: AgentOptions) -> int:
    """Run an agent until SIGINT or SIGTERM; the exit status for the CLI."""
    if not opts.server:
        log.error("only server nodes run the agent so far: start it with --server")
        return 1
    agent = Agent(opts)
    async with trio.open_nursery() as nursery:
        await nursery.start(agent.run)
        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async for signum in signals:
                log.info("received signal %s: stopping", signum)
                break
        nursery.cancel_scope.cancel()
    return 0
