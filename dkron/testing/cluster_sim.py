"""Whole nodes in virtual time: Raft, SWIM, the scheduler and the execution protocol together.

Every node runs SWIM and an :class:`~dkron.proto_sansio.execution.ExecutionWorker`
with a simulated executor; servers also run Raft and the replicated state
machine, and the leader runs the planner and an
:class:`~dkron.proto_sansio.execution.ExecutionLeader` (both built after the
barrier, dropped the moment leadership is lost).  All traffic — Raft
messages, SWIM datagrams and push-pull streams, execution messages — crosses
the one seeded :class:`~dkron.testing.sim.Network`, so partitions and loss
hit every protocol at once.  A worker's run journal survives its crashes (it
is on disk in the agent); everything else volatile is lost.

Simulated executors take their behaviour from the job's ``executor_config``:
``duration`` (seconds), ``chunks`` (output chunks spread over the run),
``exit`` (``0`` succeeds) and ``hang`` (``true``: the run never ends by itself).

:class:`ClusterSim` checks after every applied entry and every start:

* a run is started at most once per target: ``(job, group, node, attempt)``
  never starts twice, across leader changes, partitions and worker restarts
  (with ``stop_on_duplicate=False``, as the benchmark runs, a second start
  is recorded in ``started_again`` instead of stopping the run);
* no cron slot is claimed twice; a ``forbid`` job never has two runs at once;
* a dependent run is claimed only for a parent group that completed with
  ``success``;
* every result is counted once: a job's success and error counters equal the
  number of distinct finished records committed for it;

and offers the end-of-run checks: nothing left running, every slot accounted
for, retries bounded.
"""

from __future__ import annotations

import functools
import random
import typing
from collections.abc import Callable, Iterable
from typing import Any

import cbor2

from dkron.model import Execution, Job
from dkron.proto_sansio.errors import LocalProtocolError
from dkron.proto_sansio.execution import (
    EXECUTION_CODEC,
    LOST_DISPATCH,
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
    choose_targets,
    qualifying_targets,
)
from dkron.proto_sansio.planner import to_ns
from dkron.proto_sansio.raft import PersistedState, RaftConfig
from dkron.proto_sansio.scheduler import SchedulerConfig
from dkron.proto_sansio.swim import (
    LOCAL,
    EventKind,
    MemberEvent,
    MemberStatus,
    ProbeFallback,
    SendPacket,
    SendStream,
    SwimConfig,
    SwimNode,
)
from dkron.state import (
    ApplyResult,
    ClaimSlot,
    Command,
    ExecutionFinished,
    GroupCompleted,
    SingleCommand,
    StateMachine,
    decode_command,
    encode_command,
)
from dkron.testing.raft_sim import InvariantViolation, RaftHost
from dkron.testing.sched_sim import SchedCluster, SchedHost
from dkron.testing.sim import EventLoop, Host, LinkFaults, Network

__all__ = ["AgentNode", "ClusterSim", "ServerNode"]

SWIM_PORT = 8946
SERVER_CHANNELS = ("raft", "swim", "stream", "reply", "exec")
_EXEC_MESSAGES = typing.get_args(ExecMessage)
_TO_WORKER = (Dispatch, ResultAck, Cancel)
# Log entries whose decoding is kept for servers that have not applied them yet.
_MEMO_ENTRIES = 4096
# What a lost record says when the leader gave up waiting for the start.
_GAVE_UP = LOST_DISPATCH.split("{node}")[1].split("{")[0]


class _Member:
    """SWIM, the worker and the simulated executor: what every node runs."""

    name: str
    loop: EventLoop
    network: Network
    up: bool
    sim: ClusterSim
    tags: dict[str, str]

    def _member_init(self) -> None:
        self.swim: SwimNode | None = None
        self.worker: ExecutionWorker | None = None
        self.journal: dict[RunKey, Execution] = {}  # durable: survives crashes
        self._runs_epoch = 0
        self._next_join = 0.0
        self._outbox: dict[str, list[ExecMessage]] = {}
        # Executor events due at one instant share one loop timer and one flush,
        # as one wake-up of the agent's event loop would handle them together.
        self._due: dict[float, list[Callable[[], None]]] = {}

    def _member_boot(self) -> None:
        sim = self.sim
        self._runs_epoch += 1
        self.swim = SwimNode(
            self.name,
            sim.swim_config,
            rng=random.Random(sim.rng.getrandbits(32)),
            now=self.loop.now,
            addr=self.name,
            port=SWIM_PORT,
            tags=self.tags,
            incarnation=int(self.loop.now * 1000),
        )
        seeds = [(n, SWIM_PORT) for n in sim.seeds if n != self.name]
        if seeds:
            self.swim.join(seeds, self.loop.now)
        self.worker = ExecutionWorker(
            self.name,
            sim.exec_config,
            now=self.loop.now,
            wall_ns=sim.wall_ns(),
            interrupted=list(self.journal.values()),
        )

    def _member_lose(self) -> None:
        self.swim = None
        self.worker = None
        self._outbox = {}
        self._due = {}
        self._runs_epoch += 1  # the executors die with the process

    def _member_deliver(self, channel: str, src: str, payload: Any) -> None:
        now = self.loop.now
        if channel == "swim" and self.swim is not None:
            self.swim.receive(payload, src_addr=(src, SWIM_PORT), now=now)
        elif channel == "stream" and self.swim is not None:
            sid, data = payload
            reply = self.swim.receive_stream(data, src_addr=(src, SWIM_PORT), now=now)
            if reply is not None:
                self.network.send(self.name, src, ("reply", (sid, reply)), size=len(reply))
        elif channel == "reply" and self.swim is not None:
            sid, data = payload
            self.swim.receive_stream_reply(sid, data, now=now)
        elif channel == "exec":
            if type(payload) is bytes:
                from_wire = EXECUTION_CODEC.from_wire
                for raw in cbor2.loads(payload):
                    msg = from_wire(raw)
                    assert isinstance(msg, _EXEC_MESSAGES)
                    self._on_exec(src, msg)
            else:
                for msg in payload:
                    self._on_exec(src, msg)

    def _on_exec(self, src: str, msg: ExecMessage) -> None:
        if isinstance(msg, _TO_WORKER) and self.worker is not None:
            self.worker.receive(msg, src=src, now=self.loop.now, wall_ns=self.sim.wall_ns())

    def _member_wake(self) -> None:
        now = self.loop.now
        if self.swim is not None:
            self.swim.handle_timer(now)
            if now >= self._next_join:
                self._retry_join(now)
        if self.worker is not None:
            self._follow_leader()
            self.worker.handle_timer(now)

    def _retry_join(self, now: float) -> None:
        """Dkron's --retry-join: alone in the cluster, contact the seeds again."""
        swim = self.swim
        assert swim is not None
        self._next_join = now + 5.0
        alone = not any(
            m.name != self.name for m in swim.members() if m.status is MemberStatus.ALIVE
        )
        seeds = [(n, SWIM_PORT) for n in self.sim.seeds if n != self.name]
        if alone and seeds:
            swim.join(seeds, now)

    def _member_deadline(self) -> float:
        at = self._next_join
        if self.swim is not None and (t := self.swim.next_deadline()) is not None and t < at:
            at = t
        if self.worker is not None and (t := self.worker.next_deadline()) is not None and t < at:
            at = t
        return at

    def _follow_leader(self) -> None:
        """Where results go: the Raft leader if known, else any live server (it forwards).

        As the agent does: a server reports to the Raft leader, an agent to the
        server that dispatched to it (its leader as far as it knows), and
        either through another live server while it cannot reach that one
        (the agent learns that from its RPC connection; here the network says so).
        """
        worker = self.worker
        if worker is None:
            return
        hint = self._leader_hint()
        swim = self.swim
        if hint is None and swim is not None:
            for candidate in (worker.dispatcher, worker.leader):
                known = None if candidate is None else swim.member(candidate)
                if (
                    known is not None
                    and known.status is MemberStatus.ALIVE
                    and known.tags.get("server") == "true"
                ):
                    hint = candidate
                    break
            else:
                alive = self._alive_servers()
                hint = alive[0] if alive else None
        network = self.network
        if (
            hint is not None
            and swim is not None
            and hint != self.name
            and network.is_blocked(self.name, hint)
        ):
            reachable = self._reachable_servers(besides=hint)
            if worker.leader in reachable or not reachable:
                return
            hint = reachable[0]
        if hint is not None and hint != worker.leader:
            worker.set_leader(hint, self.loop.now)

    def _reachable_servers(self, *, besides: str) -> list[str]:
        """Live servers other than this node and ``besides`` that it can reach
        (the agent's RPC connection says so; here the network does)."""
        network = self.network
        return [
            s
            for s in self._alive_servers()
            if s not in (self.name, besides) and not network.is_blocked(self.name, s)
        ]

    def _alive_servers(self) -> list[str]:
        assert self.swim is not None
        return sorted(
            m.name
            for m in self.swim.members()
            if m.status is MemberStatus.ALIVE and m.tags.get("server") == "true"
        )

    def _leader_hint(self) -> str | None:
        return None

    def _member_flush(self) -> None:
        swim = self.swim
        if swim is not None:
            for a in swim.drain():
                if isinstance(a, SendPacket):
                    self.network.send(self.name, a.addr[0], ("swim", a.data), size=len(a.data))
                elif isinstance(a, SendStream | ProbeFallback):
                    self._open_stream(a.addr[0], a.stream_id, a.data)
                elif isinstance(a, MemberEvent):
                    self._on_member_event(a)
        worker = self.worker
        if worker is not None:
            for w in worker.drain():
                if isinstance(w, Send):
                    self._send_exec(w.dst, w.msg)
                elif isinstance(w, StartRun):
                    self.journal[
                        RunKey(
                            w.execution.job_name,
                            w.execution.group,
                            self.name,
                            w.execution.attempt,
                        )
                    ] = w.execution
                    self.sim.on_start(self.name, w.job, w.execution)
                    self._execute(w.job, w.execution)
                elif isinstance(w, StopRun):
                    stop = functools.partial(self._finish, self._runs_epoch, w.key, 1, stopped=True)
                    self._at(self.loop.now, stop)
                elif isinstance(w, ForgetRun):
                    self.journal.pop(w.key, None)
        self._flush_outbox()

    def _on_member_event(self, event: MemberEvent) -> None:
        """Servers act on failures (see ServerNode)."""

    def _open_stream(self, dst: str, sid: int, data: bytes) -> None:
        blocked = self.network.is_blocked(self.name, dst) or self.network.is_blocked(dst, self.name)
        if blocked or dst not in self.sim.nodes or not self.sim.nodes[dst].up:
            epoch = self._runs_epoch
            self.loop.call_later(1.0, functools.partial(self._stream_failed, epoch, sid))
            return
        self.network.send(self.name, dst, ("stream", (sid, data)), size=len(data))

    def _stream_failed(self, epoch: int, sid: int) -> None:
        if self.up and epoch == self._runs_epoch and self.swim is not None:
            self.swim.stream_failed(sid, now=self.loop.now)
            self.poke()  # type: ignore[attr-defined]

    def _send_exec(self, dst: str, msg: ExecMessage) -> None:
        """Queue a message; one flush sends each peer everything queued for it in
        one delivery, as a TCP connection carries many frames per write."""
        self._outbox.setdefault(dst, []).append(msg)

    def _flush_outbox(self) -> None:
        outbox, self._outbox = self._outbox, {}
        to_wire = EXECUTION_CODEC.to_wire
        for dst, msgs in outbox.items():
            payload: list[ExecMessage] | bytes = msgs
            size = 0
            if self.sim.exec_wire:
                # One CBOR array of the messages' codec arrays per delivery: every
                # message is still encoded, and strictly decoded on arrival, by
                # EXECUTION_CODEC; only the per-frame CBOR call is shared.
                payload = cbor2.dumps([to_wire(m) for m in msgs])
                size = len(payload)
            if dst == self.name:
                self.loop.call_later(0.0, functools.partial(self._self_deliver, payload))
            else:
                self.network.send(self.name, dst, ("exec", payload), size=size)

    def _self_deliver(self, payload: list[ExecMessage] | bytes) -> None:
        if self.up:
            self.deliver(self.name, ("exec", payload))  # type: ignore[attr-defined]
            self.poke()  # type: ignore[attr-defined]

    # -- the simulated executor ---------------------------------------------------

    def _execute(self, job: Job, ex: Execution) -> None:
        cfg = job.executor_config or {}
        duration = float(cfg.get("duration", "1"))
        chunks = int(cfg.get("chunks", "2"))
        exit_code = int(cfg.get("exit", "0"))
        key = RunKey(ex.job_name, ex.group, self.name, ex.attempt)
        epoch = self._runs_epoch
        now = self.loop.now
        for i in range(chunks):
            at = now + duration * (i + 1) / (chunks + 1)
            self._at(at, functools.partial(self._chunk, epoch, key, i))
        if cfg.get("hang") != "true":
            self._at(now + duration, functools.partial(self._finish, epoch, key, exit_code))

    def _at(self, at: float, action: Callable[[], None]) -> None:
        batch = self._due.get(at)
        if batch is None:
            self._due[at] = [action]
            epoch = self._runs_epoch
            self.loop.call_at(at, functools.partial(self._run_due, epoch, at))
        else:
            batch.append(action)

    def _run_due(self, epoch: int, at: float) -> None:
        if epoch != self._runs_epoch:
            return
        for action in self._due.pop(at, ()):
            action()
        if self.up:
            self.poke()  # type: ignore[attr-defined]

    def _chunk(self, epoch: int, key: RunKey, i: int) -> None:
        if self.up and epoch == self._runs_epoch and self.worker is not None:
            self.worker.output(key, b"chunk %d\n" % i, self.loop.now)

    def _finish(self, epoch: int, key: RunKey, exit_code: int, *, stopped: bool = False) -> None:
        if not self.up or epoch != self._runs_epoch or self.worker is None:
            return
        output = "stopped" if stopped else f"exit status {exit_code}"
        self.worker.finished(
            key,
            success=exit_code == 0 and not stopped,
            output=output,
            wall_ns=self.sim.wall_ns(),
            now=self.loop.now,
        )


class AgentNode(_Member, Host):
    """A non-server node: SWIM and the worker only."""

    def __init__(self, name: str, sim: ClusterSim, tags: dict[str, str]) -> None:
        Host.__init__(self, name, sim.loop, sim.network)
        self.name = name
        self.sim = sim
        self.tags = tags
        self._member_init()

    def boot(self) -> None:
        self._member_boot()

    def lose_volatile_state(self) -> None:
        self._member_lose()

    def deliver(self, src: Any, msg: Any) -> None:
        channel, payload = msg
        self._member_deliver(channel, str(src), payload)

    def wake(self) -> None:
        self._member_wake()

    def deadline(self) -> float | None:
        return self._member_deadline()

    def flush(self) -> None:
        self._member_flush()


class ServerNode(_Member, SchedHost):
    """A server: SWIM, the worker, Raft and the state; the planner and dispatch when leading."""

    sim: ClusterSim

    def __init__(self, node_id: str, cluster: ClusterSim, initial: PersistedState) -> None:
        self._state: StateMachine | None = None
        SchedHost.__init__(self, node_id, cluster, initial)
        self.sim = cluster
        self.tags = {"server": "true", "role": "dkron", "region": "global"}
        self.exec_leader: ExecutionLeader | None = None
        self._member_init()

    @property
    def state(self) -> StateMachine:
        assert self._state is not None
        return self._state

    @state.setter
    def state(self, state: StateMachine) -> None:
        # Every state this server builds (at boot, restore, crash) decodes
        # entries through the cluster's shared memo; it still applies each one.
        cluster = self.cluster
        assert isinstance(cluster, ClusterSim)
        state.decoder = cluster.decode_entry
        self._state = state

    # -- Host hooks ---------------------------------------------------------------

    def boot(self) -> None:
        super().boot()
        self._member_boot()

    def lose_volatile_state(self) -> None:
        super().lose_volatile_state()
        self.exec_leader = None
        self._member_lose()

    def deliver(self, src: Any, msg: Any) -> None:
        channel, payload = msg
        if channel == "raft":
            super().deliver(src, payload)
        else:
            self._member_deliver(channel, str(src), payload)

    def wake(self) -> None:
        super().wake()
        self._member_wake()
        if self.exec_leader is not None:
            self.exec_leader.handle_timer(self.loop.now, self.sim.wall_ns())
            self._flush_leader()

    def deadline(self) -> float | None:
        at = self._member_deadline()
        if (t := super().deadline()) is not None and t < at:
            at = t
        if self.exec_leader is not None and (t := self.exec_leader.next_deadline()) is not None:
            at = min(at, t)
        return at

    def flush(self) -> None:
        super().flush()
        if self.planner is None:
            self.exec_leader = None
        elif self.exec_leader is None and self.node is not None:
            swim = self.swim
            members = () if swim is None else swim.members()
            self.exec_leader = ExecutionLeader(
                self.name,
                self.node.term,
                self.sim.exec_config,
                now=self.loop.now,
                gone=(m.name for m in members if m.status is not MemberStatus.ALIVE),
            )
            self.exec_leader.load(self.state, self.loop.now, wall_ns=self.sim.wall_ns())
        self._flush_leader()
        self._member_flush()

    # -- leadership -----------------------------------------------------------------

    def _leader_hint(self) -> str | None:
        node = self.node
        return None if node is None else node.leader_id

    def send_raft(self, dst: str, msg: object, size: int) -> None:
        self.network.send(self.name, dst, ("raft", msg), size=size)

    def app_apply(self, entry: Any) -> None:
        super().app_apply(entry)
        lead = self.exec_leader
        if lead is None or self.last_applied is None:
            return
        cmd, result = self.last_applied
        lead.observe(cmd, result, self.state, self.loop.now, wall_ns=self.sim.wall_ns())

    def _flush_leader(self) -> None:
        lead = self.exec_leader
        node = self.node
        if lead is None or node is None:
            return
        network = self.network
        for a in lead.drain():
            if isinstance(a, Send):
                dst = a.dst
                if network.is_blocked(self.name, dst) and isinstance(a.msg, _TO_WORKER):
                    dst = self._relay_for(dst)
                self._send_exec(dst, a.msg)
            elif isinstance(a, Propose):
                try:
                    node.propose(self.sim.encode(a.command), self.loop.now)
                except LocalProtocolError:
                    self.exec_leader = None
                    return
        RaftHost.flush(self)

    def _relay_for(self, worker: str) -> str:
        """As the agent's leader does: a worker it cannot reach gets its messages
        through another live server that it can reach (which passes them on)."""
        relays = self._reachable_servers(besides=worker)
        return relays[0] if relays else worker

    def _on_exec(self, src: str, msg: ExecMessage) -> None:
        if isinstance(msg, _TO_WORKER):
            if msg.key.node != self.name:
                # Relayed by a leader that cannot reach that worker: pass it on (once).
                if msg.key.node != src:
                    self._send_exec(msg.key.node, msg)
                return
            super()._on_exec(src, msg)
            return
        lead = self.exec_leader
        if lead is not None:
            # The delivery's flush proposes and sends what the whole batch produced.
            lead.receive(msg, src=src, now=self.loop.now, wall_ns=self.sim.wall_ns())
            return
        # Not leading: forward worker reports to the leader, as Dkron's servers do.
        leader = None if self.node is None else self.node.leader_id
        if leader is not None and leader not in (self.name, src):
            self._send_exec(leader, msg)

    def _on_member_event(self, event: MemberEvent) -> None:
        lead = self.exec_leader
        if lead is None:
            return
        name = event.member.name
        if event.kind is EventKind.FAILED:
            lead.member_failed(name, self.loop.now, self.sim.wall_ns())
        elif event.kind in (EventKind.LEAVE, EventKind.REAP):
            lead.member_gone(name)
        elif event.kind is EventKind.JOIN:
            lead.member_alive(name)


class ClusterSim(SchedCluster):
    """Servers and agents as whole nodes, with the execution guarantees checked as they run."""

    def __init__(
        self,
        servers: Iterable[str],
        agents: Iterable[str],
        *,
        seed: int,
        config: RaftConfig | None = None,
        swim_config: SwimConfig = LOCAL,
        exec_config: ExecutionConfig | None = None,
        sched_config: SchedulerConfig | None = None,
        exec_wire: bool = True,
        stop_on_duplicate: bool = True,
    ) -> None:
        self.exec_wire = exec_wire
        # A benchmark counts duplicate starts and runs on; a test stops at the first.
        self.stop_on_duplicate = stop_on_duplicate
        self.started_again: set[tuple[str, int, str, int]] = set()
        self.swim_config = swim_config
        self.exec_config = exec_config or ExecutionConfig(
            heartbeat_interval=1.0, lease_timeout=6.0, dispatch_timeout=8.0, clock_skew=2.0
        )
        self.server_names = list(servers)
        self.agent_names = list(agents)
        self.seeds = self.server_names[:1]
        self.nodes: dict[str, Host] = {}
        self.started: dict[tuple[str, int, str, int], float] = {}
        self.completed_ok: set[tuple[str, int]] = set()
        self.finished_ids: dict[str, set[str]] = {}
        # Attempts committed as lost because their dispatch deadline passed.
        self.given_up: set[tuple[str, int, str, int]] = set()
        self.claim_times: dict[tuple[str, int], float] = {}
        self.claim_to_start: list[float] = []
        self._views: list[MemberView] = []
        self._views_stamp: tuple[str, int, int] | None = None
        self._qualifying: dict[tuple[tuple[str, str], ...], tuple[tuple[str, ...], int | None]] = {}
        self._decoded: dict[bytes, tuple[Command, int]] = {}
        self._wall_ns_at = -1.0
        self._wall_ns = 0
        super().__init__(self.server_names, seed=seed, config=config, sched_config=sched_config)
        for name in self.agent_names:
            agent = AgentNode(name, self, {"role": "worker", "region": "global"})
            self.nodes[name] = agent
            agent.start()

    def _make_host(self, name: str, initial: PersistedState) -> RaftHost:
        host = ServerNode(name, self, initial)
        self.nodes[name] = host
        return host

    def wall_ns(self) -> int:
        now = self.loop.now
        if now != self._wall_ns_at:  # many messages share one instant of the loop
            self._wall_ns_at = now
            self._wall_ns = to_ns(self.wall())
        return self._wall_ns

    def decode_entry(self, data: bytes) -> Command:
        """Decode a log entry once per run for all the servers that apply it.

        Commands are immutable, so the servers may share one decoding of the
        same bytes; each still applies the entry to its own state.  An entry
        leaves the memo once every server has taken it (or, if a server is
        down, when it is among the oldest ``_MEMO_ENTRIES``); a server that
        replays an evicted entry after a restart simply decodes it again.
        """
        memo = self._decoded
        hit = memo.get(data)
        if hit is None:
            cmd = decode_command(data)
            memo[data] = (cmd, 1)
            if len(memo) > _MEMO_ENTRIES:
                del memo[next(iter(memo))]
            return cmd
        cmd, taken = hit
        if taken + 1 >= len(self.server_names):
            del memo[data]
        else:
            memo[data] = (cmd, taken + 1)
        return cmd

    @staticmethod
    def encode(cmd: Command) -> bytes:
        return encode_command(cmd)

    # -- targets --------------------------------------------------------------------

    def claim_committed(self, claim: ClaimSlot) -> None:
        """Claims are carried out by the leader's ExecutionLeader, not by stand-ins."""

    def select_targets(self, job: Job) -> tuple[str, ...]:
        leader = self.leader()
        if not isinstance(leader, ServerNode) or leader.swim is None:
            return ()
        # Membership only changes between steps of the loop: a thousand jobs
        # due at one instant share one view of it, as they would in the agent.
        stamp = (leader.name, id(leader.swim), self.loop.steps)
        if self._views_stamp != stamp:
            self._views_stamp = stamp
            self._views = [
                MemberView(name=m.name, alive=m.status is MemberStatus.ALIVE, tags=m.tags)
                for m in leader.swim.members()
            ]
            self._qualifying = {}
        # Jobs with the same tags qualify the same members of one view; each
        # still draws its own random subset.
        tags_key = tuple(job.tags.items()) if job.tags else ()
        found = self._qualifying.get(tags_key)
        if found is None:
            found = qualifying_targets(job.tags, self._views, region="global")
            self._qualifying[tags_key] = found
        return choose_targets(found[0], found[1], rng=self.rng)

    # -- raft messages travel on the "raft" channel -----------------------------------

    def crash(self, name: str) -> None:
        self.nodes[name].crash()

    def restart(self, name: str) -> None:
        self.nodes[name].restart()

    # -- checks ------------------------------------------------------------------------

    def on_start(self, node: str, job: Job, ex: Execution) -> None:
        key = (ex.job_name, ex.group, node, ex.attempt)
        if key in self.given_up:
            raise InvariantViolation(
                f"{ex.job_name} group {ex.group} attempt {ex.attempt} started on {node} "
                "after it was committed as never started"
            )
        if key in self.started:
            self.started_again.add(key)
            if self.stop_on_duplicate:
                raise InvariantViolation(
                    f"{ex.job_name} group {ex.group} attempt {ex.attempt} started twice on {node}"
                )
            return
        self.started[key] = self.loop.now
        claimed_at = self.claim_times.get((ex.job_name, ex.group))
        if claimed_at is not None:
            self.claim_to_start.append(self.loop.now - claimed_at)

    def on_command(
        self, host: SchedHost, index: int, cmd: SingleCommand, result: ApplyResult
    ) -> None:
        super().on_command(host, index, cmd, result)
        ok, why = result.ok, result.reason
        if isinstance(cmd, ClaimSlot) and ok and cmd.attempt == 1:
            self.claim_times[(cmd.job, cmd.execution_group)] = self.loop.now
        for event in result.events:
            if isinstance(event, GroupCompleted) and event.status == "success":
                self.completed_ok.add((event.job, event.execution_group))
        if isinstance(cmd, ClaimSlot) and cmd.trigger == "dependent" and ok:
            parent = host.state.get_job(cmd.job)
            parent_name = parent.parent_job if parent is not None else ""
            if (parent_name, cmd.execution_group) not in self.completed_ok:
                raise InvariantViolation(
                    f"dependent {cmd.job} ran without a successful run of {parent_name}"
                )
        if isinstance(cmd, ExecutionFinished) and ok and why != "duplicate":
            ids = self.finished_ids.setdefault(cmd.execution.job_name, set())
            if cmd.execution.id in ids:
                raise InvariantViolation(f"result {cmd.execution.id} committed twice")
            ids.add(cmd.execution.id)
            ex = cmd.execution
            if ex.status == "lost" and _GAVE_UP in ex.output:
                self.given_up.add((ex.job_name, ex.group, ex.node_name, ex.attempt))

    def counters_match(self) -> None:
        """Every committed result counted exactly once in the job's counters."""
        leader = self.leader()
        assert isinstance(leader, ServerNode)
        for job in leader.state.iter_jobs():
            ids = self.finished_ids.get(job.name, set())
            if job.success_count + job.error_count != len(ids):
                raise InvariantViolation(
                    f"{job.name}: counters {job.success_count}+{job.error_count} "
                    f"!= {len(ids)} distinct results"
                )

    def nothing_stuck(self) -> list[Execution]:
        leader = self.leader()
        assert isinstance(leader, ServerNode)
        return leader.state.running_executions()

    def attempts(self) -> dict[tuple[str, int, str], int]:
        out: dict[tuple[str, int, str], int] = {}
        for job, group, node, attempt in self.started:
            key = (job, group, node)
            out[key] = max(out.get(key, 0), attempt)
        return out

    def lag(self, agent: str, seconds: float) -> None:
        """Hold back everything the servers send ``agent`` by ``seconds``, in order.

        What a stalled TCP connection does: the frames queued on it arrive
        together once the path heals, long after they were sent.  The
        agent's own traffic, and everyone else's, is not delayed.
        """
        network = self.network
        for server in self.server_names:
            if seconds:
                network.set_link(
                    server,
                    agent,
                    LinkFaults(loss=network.faults.loss, min_delay=seconds, max_delay=seconds),
                )
            else:
                network.clear_link(server, agent)

    def cut(self, node: str) -> None:
        """Break the route between ``node`` and the leader only, both ways.

        Gossip still sees each alive through the other members: the leader
        keeps dispatching to the node through another server, and the node
        reports through another server (a server cut so also loses the
        leader's Raft traffic).
        """
        leader = self.leader()
        if leader is not None and leader.name != node:
            self.network.block(node, leader.name)
            self.network.block(leader.name, node)

    def heal_everything(self) -> None:
        self.network.heal()
        for agent in self.agent_names:
            self.lag(agent, 0.0)
        self.network.faults.loss = 0.0
        for node in self.nodes.values():
            node.slowness = 0.0
            if not node.up:
                node.restart()

    def settle(self, seconds: float) -> None:
        self.run(seconds)
