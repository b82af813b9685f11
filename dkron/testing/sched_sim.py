"""Scheduling over real Raft in virtual time: every server runs the state machine, the
leader runs the planner, and slot safety is checked on every applied entry.

Each :class:`SchedHost` is a :class:`~dkron.testing.raft_sim.RaftHost` whose
application is the real :class:`~dkron.state.StateMachine`.  When a host wins
an election it waits for the barrier (its state has applied everything up to
its first entry of the term), then builds a
:class:`~dkron.proto_sansio.planner.Planner` from the replicated state and
proposes what it says; it drops the planner the moment it stops leading.

Runs are carried out by :class:`SimWorkers`, a stand-in for the execution
protocol at this level: after a claim commits, each target "runs" for a
configured duration and keeps proposing ``ExecutionStarted`` and
``ExecutionFinished`` through whichever server leads until the state shows
the result, so results survive leader changes (the state de-duplicates).

Checked as the cluster runs (:meth:`SchedCluster.on_apply`):

* each cron slot ``(job, scheduled_time)`` is claimed at most once, across
  any number of leader changes;
* a ``forbid`` job never has two runs in flight or running at once;
* every replica reaches the same state (snapshot bytes compared at the end).

:meth:`SchedCluster.slot_accounting` then compares, per job, the slots the
cluster decided (claimed, or counted as not run with a reason) with the
slots the schedule defines.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import random
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta

from dkron.model import Execution, Job
from dkron.proto_sansio.errors import LocalProtocolError
from dkron.proto_sansio.planner import Planner, from_ns, to_ns
from dkron.proto_sansio.raft import Entry, PersistedState, RaftConfig, Role
from dkron.proto_sansio.scheduler import SchedulerConfig
from dkron.schedule import job_schedule
from dkron.state import (
    ApplyResult,
    ClaimSlot,
    Command,
    ExecutionFinished,
    ExecutionStarted,
    RecordMissed,
    SingleCommand,
    StateMachine,
    UpsertJob,
    each_applied,
    encode_command,
)
from dkron.testing.raft_sim import InvariantViolation, RaftCluster, RaftHost

__all__ = ["SchedCluster", "SchedHost", "SimWorkers"]

T0 = datetime(2026, 3, 1, tzinfo=UTC)
SNAPSHOT_EVERY = 2000


class SchedHost(RaftHost):
    """A server: Raft + the replicated state machine + (while leading) the planner."""

    cluster: SchedCluster

    def __init__(self, node_id: str, cluster: SchedCluster, initial: PersistedState) -> None:
        super().__init__(node_id, cluster, initial)
        self.state = StateMachine()
        self.planner: Planner | None = None
        self.barrier: int | None = None
        self.last_applied: tuple[Command, ApplyResult] | None = None

    # -- application ---------------------------------------------------------------

    def app_apply(self, entry: Entry) -> None:
        # As the agent does: the state decodes each entry once and hands back the command.
        cmd, result = self.state.apply_entry(entry.index, entry.data)
        if cmd is None:  # only this simulation proposes: every entry is a valid command
            raise InvariantViolation(f"{self.name} could not apply {entry.index}: {result.error}")
        self.last_applied = (cmd, result)
        self.cluster.on_state_apply(self, entry.index, cmd, result)
        if self.planner is not None:
            self.planner.observe(cmd, result, self.cluster.wall())
        node = self.node
        if node is not None and entry.index - node.snapshot_index >= SNAPSHOT_EVERY:
            # As the agent does: compact so that a restart does not replay everything.
            node.compact(entry.index, self.state.snapshot())

    def app_snapshot(self) -> bytes:
        return self.state.snapshot()

    def app_restore(self, data: bytes) -> None:
        self.app = []
        self.state = StateMachine()
        if data:
            self.state.restore(data)

    def lose_volatile_state(self) -> None:
        super().lose_volatile_state()
        self.state = StateMachine()
        self.planner = None
        self.barrier = None

    # -- leadership --------------------------------------------------------------------

    def flush(self) -> None:
        super().flush()
        node = self.node
        if node is None:
            return
        if node.role is not Role.LEADER:
            self.planner = None
            self.barrier = None
            return
        if self.barrier is None:
            self.barrier = node.last_index  # its no-op: everything before it is settled
        if self.planner is None and self.applied_index >= self.barrier:
            self.planner = Planner(
                self.state,
                term=node.term,
                wall=self.cluster.wall(),
                select_targets=self.cluster.select_targets,
                config=self.cluster.sched_config,
            )
            self._plan()

    def _plan(self) -> None:
        node, planner = self.node, self.planner
        if node is None or planner is None:
            return
        for cmd in planner.tick(self.cluster.wall()):
            try:
                node.propose(encode_command(cmd), self.loop.now)
            except LocalProtocolError:
                self.planner = None
                return
        super().flush()

    def deadline(self) -> float | None:
        raft = super().deadline()
        if self.planner is None:
            return raft
        at = self.planner.next_deadline()
        if at is None:
            return raft
        sched = (at - T0).total_seconds()
        return sched if raft is None else min(raft, sched)

    def wake(self) -> None:
        super().wake()
        self._plan()


@dataclasses.dataclass
class _Run:
    claim: ClaimSlot
    node: str
    attempt: int
    started: Execution | None = None
    finished: Execution | None = None


class SimWorkers:
    """Runs committed claims on their targets for a set duration, reporting until stored."""

    def __init__(self, cluster: SchedCluster, nodes: Iterable[str], *, seed: int) -> None:
        self.cluster = cluster
        self.nodes = tuple(nodes)
        self.rng = random.Random(seed)
        self.durations: dict[str, tuple[float, float]] = {}
        self.fail_rate: dict[str, float] = {}
        self._runs: dict[tuple[str, int, str, int], _Run] = {}

    def select(self, job: Job) -> tuple[str, ...]:
        return self.nodes[:1]

    def runs(self) -> list[tuple[str, int, str, int]]:
        """(job, group, node, attempt) of every run started so far."""
        return sorted(self._runs)

    def start(self, claim: ClaimSlot) -> None:
        for node in claim.targets:
            key = (claim.job, claim.execution_group, node, claim.attempt)
            if key in self._runs:
                continue
            run = _Run(claim, node, claim.attempt)
            self._runs[key] = run
            self.cluster.loop.call_later(0.01, functools.partial(self._begin, run))

    def _begin(self, run: _Run) -> None:
        now_ns = to_ns(self.cluster.wall())
        run.started = Execution(
            run.claim.job,
            now_ns,
            run.node,
            group=run.claim.execution_group,
            attempt=run.attempt,
            scheduled_time=run.claim.scheduled_time_ns,
            trigger=run.claim.trigger,
        )
        lo, hi = self.durations.get(run.claim.job, (0.5, 2.0))
        duration = self.rng.uniform(lo, hi)
        success = self.rng.random() >= self.fail_rate.get(run.claim.job, 0.0)
        self.cluster.loop.call_later(duration, lambda: self._end(run, success))
        self._report(run)

    def _end(self, run: _Run, success: bool) -> None:
        assert run.started is not None
        run.finished = dataclasses.replace(
            run.started, finished_at=to_ns(self.cluster.wall()), success=success
        )
        self._report(run)

    def _report(self, run: _Run) -> None:
        """Propose the latest record through the leader until the state holds it."""
        record = run.finished or run.started
        assert record is not None
        stored = self._stored(record)
        if stored:
            return
        cmd: Command = ExecutionFinished(record) if run.finished else ExecutionStarted(record)
        self.cluster.propose_command(cmd)
        self.cluster.loop.call_later(1.0, lambda: self._report(run))

    def _stored(self, record: Execution) -> bool:
        leader = self.cluster.leader()
        if leader is None or not isinstance(leader, SchedHost):
            return False
        ex = leader.state.get_execution(record.job_name, record.id)
        if ex is None:
            return False
        return record.finished_at is None or ex.finished_at is not None


def _job_of(cmd: SingleCommand) -> str | None:
    if isinstance(cmd, ClaimSlot | RecordMissed):
        return cmd.job
    if isinstance(cmd, ExecutionStarted | ExecutionFinished):
        return cmd.execution.job_name
    return None


class SchedCluster(RaftCluster):
    """Servers running the scheduler over Raft, with slot safety checked as they go."""

    def __init__(
        self,
        members: Iterable[str],
        *,
        seed: int,
        config: RaftConfig | None = None,
        sched_config: SchedulerConfig | None = None,
    ) -> None:
        self.sched_config = sched_config or SchedulerConfig(late_grace=timedelta(seconds=5))
        self._wall_at: tuple[float, datetime] = (0.0, T0)
        names = list(members)
        self.workers = SimWorkers(self, ["worker"], seed=seed)
        self.claimed: dict[tuple[str, int], int] = {}  # cron slot -> log index
        self.missed: dict[str, int] = {}
        self.decided_through: dict[str, int] = {}
        self._seen_index = 0
        self.recent_claims: collections.deque[ClaimSlot] = collections.deque(maxlen=20)
        super().__init__(names, seed=seed, config=config, wire=False)

    def _make_host(self, name: str, initial: PersistedState) -> RaftHost:
        return SchedHost(name, self, initial)

    def wall(self) -> datetime:
        now = self.loop.now
        at, wall = self._wall_at
        if at != now:
            wall = T0 + timedelta(seconds=now)
            self._wall_at = (now, wall)
        return wall

    # -- client side ---------------------------------------------------------------

    def propose_command(self, cmd: Command) -> bool:
        leader = self.leader()
        if leader is None or leader.node is None:
            return False
        try:
            leader.node.propose(encode_command(cmd), self.loop.now)
        except LocalProtocolError:
            return False
        leader.poke()
        return True

    def add_job_now(self, job: Job) -> bool:
        """Propose a job without waiting for it to commit (for bulk loads)."""
        first = job_schedule(job).next_after(self.wall()) if job.schedule else None
        job = dataclasses.replace(job, next=None if first is None else to_ns(first))
        return self.propose_command(UpsertJob(job))

    def add_job(self, job: Job) -> None:
        """Create a job as the API does: the proposer computes its first slot (``next``)."""
        first = job_schedule(job).next_after(self.wall()) if job.schedule else None
        job = dataclasses.replace(job, next=None if first is None else to_ns(first))
        while not self.propose_command(UpsertJob(job)):
            self.run(0.5)
        self.run(1.0)

    def replay_claims(self) -> None:
        """Propose recent claims again, as a proposer unsure whether they committed would."""
        for cmd in list(self.recent_claims):
            self.propose_command(cmd)

    # -- checks ----------------------------------------------------------------------

    def select_targets(self, job: Job) -> tuple[str, ...]:
        return self.workers.select(job)

    def claim_committed(self, claim: ClaimSlot) -> None:
        """A claim committed: carry it out (the simulated workers here)."""
        self.workers.start(claim)

    def on_state_apply(
        self, host: SchedHost, index: int, cmd: Command, result: ApplyResult
    ) -> None:
        """A committed entry, checked once (on the first replica to apply it)."""
        if index <= self._seen_index:
            return  # another replica already reported this entry; apply is deterministic
        self._seen_index = index
        touched: set[str] = set()
        for one, part in each_applied(cmd, result):
            self.on_command(host, index, one, part)
            job_name = _job_of(one)
            if job_name is not None:
                touched.add(job_name)
        # Only forbid jobs can break the rule: a batch touches a thousand jobs,
        # which need not be sorted to find the few that are checked (in order).
        get_job = host.state.get_job
        forbid = [n for n in touched if (j := get_job(n)) is not None and j.concurrency == "forbid"]
        for job_name in sorted(forbid):
            self._check_forbid(host, job_name)

    def on_command(
        self, host: SchedHost, index: int, cmd: SingleCommand, result: ApplyResult
    ) -> None:
        """One command of an entry (a batch element counts as its own command)."""
        ok, why = result.ok, result.reason
        if isinstance(cmd, ClaimSlot):
            self.recent_claims.append(cmd)
            if cmd.trigger in ("schedule", "catchup"):
                key = (cmd.job, cmd.scheduled_time_ns)
                if ok or why == "forbid":
                    if key in self.claimed:
                        raise InvariantViolation(
                            f"slot {cmd.job}@{from_ns(cmd.scheduled_time_ns)} claimed at "
                            f"index {self.claimed[key]} and again at {index}"
                        )
                    self.claimed[key] = index
                    self.decided_through[cmd.job] = cmd.scheduled_time_ns
            if ok:
                self.claim_committed(cmd)
        elif isinstance(cmd, RecordMissed) and ok:
            self.missed[cmd.job] = self.missed.get(cmd.job, 0) + cmd.count
            self.decided_through[cmd.job] = cmd.scheduled_time_ns

    @staticmethod
    def _check_forbid(host: SchedHost, job_name: str) -> None:
        job = host.state.get_job(job_name)
        if job is not None and job.concurrency == "forbid":
            running = len(host.state.running_executions(job_name))
            flying = len(host.state.in_flight(job_name))
            if running > 1 or flying > 1:
                raise InvariantViolation(
                    f"forbid job {job_name} has {running} running, {flying} in flight"
                )

    def slot_accounting(self, job: Job, created: datetime) -> tuple[int, int, int]:
        """(slots the schedule defines up to the last decided one, runs claimed, slots missed)."""
        through = self.decided_through.get(job.name)
        if through is None:
            return 0, 0, 0
        schedule = job_schedule(job)
        expected = 0
        t = schedule.next_after(created)
        while t is not None and to_ns(t) <= through:
            expected += 1
            t = schedule.next_after(t)
        runs = sum(1 for (name, _) in self.claimed if name == job.name)
        return expected, runs, self.missed.get(job.name, 0)

    def replicas_agree(self) -> None:
        snaps = {
            h.name: h.state.snapshot()
            for h in self.up_hosts()
            if isinstance(h, SchedHost) and h.applied_index == self.max_committed
        }
        if len(set(snaps.values())) > 1:
            raise InvariantViolation(f"replicas diverged: {sorted(snaps)}")
