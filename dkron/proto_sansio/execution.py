"""The execution protocol between the leader and the workers, as two sans-IO cores.

Between "the leader claimed a slot" and "the result is committed" a run can
be lost in many ways: the worker dies, the leader dies, messages vanish, a
deposed leader keeps dispatching.  This module makes that path explicit:

Leader side (:class:`ExecutionLeader`, one per leadership term)
    For every committed claim it **dispatches** the run to each target that
    has not reported, carrying the slot, the attempt and the leader's Raft
    term, and re-sends until the worker acknowledges with ``Started``.  It
    proposes ``ExecutionStarted`` and ``ExecutionFinished`` through Raft (the
    caller proposes what :meth:`ExecutionLeader.drain` returns), keeps a
    **lease** per running execution that worker heartbeats renew, and turns
    an execution whose worker SWIM declares failed, or whose lease or
    dispatch deadline expires, into a **lost** execution: a failed result
    with the reason in its output, to which the job's retry policy applies.
    It never lets a run stay "running" forever.  It keeps a bounded buffer
    of each execution's live output for subscribers, and can **cancel** a run.

Worker side (:class:`ExecutionWorker`, one per node)
    Starts a run once per ``(job, group, attempt)`` however often it is
    dispatched, and **fences** a deposed leader: a dispatch carrying an older
    term than one it already runs the slot under is refused, and so is one
    that arrives after its start-by time (the leader gives up on the start
    ``clock_skew`` later, so a dispatch a stalled connection held back never
    starts a run already recorded as lost).  It streams
    output chunks with sequence numbers, heartbeats its running executions,
    and keeps re-sending the final result to whichever server currently
    leads until that leader acknowledges the commit.

A new leader rebuilds its :class:`ExecutionLeader` from the replicated state
(:meth:`ExecutionLeader.load`): claims whose targets have not reported are
dispatched again (workers de-duplicate), running executions get a fresh lease.
The state machine accepts a record only from a claimed target's outstanding
attempt, so a result reported twice — or after its run was declared lost —
is committed at most once.

Target selection (:func:`select_targets`) follows Dkron's tag rules.
"""

from __future__ import annotations

import dataclasses
import enum
import functools
import heapq
import math
import random
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import NamedTuple

from dkron.model import MAX_TIME_NS, MIN_TIME_NS, TRIGGERS, Execution, Job
from dkron.proto_sansio.wire import Codec, slot_maker
from dkron.state import (
    ApplyResult,
    ClaimSlot,
    ClaimSlots,
    Command,
    ExecutionFinished,
    ExecutionsFinished,
    ExecutionStarted,
    InFlight,
    StateMachine,
    batch_commands,
    one_finished,
    one_started,
)

__all__ = [
    "EXECUTION_CODEC",
    "Cancel",
    "Dispatch",
    "ExecutionConfig",
    "ExecutionLeader",
    "ExecutionWorker",
    "ForgetRun",
    "Heartbeat",
    "LiveOutput",
    "MemberView",
    "Output",
    "Propose",
    "Refused",
    "Result",
    "ResultAck",
    "RunKey",
    "Send",
    "StartRun",
    "Started",
    "StopRun",
    "choose_targets",
    "qualifying_targets",
    "select_targets",
]

LOST_FAILED = "lost: worker {node} was declared failed while running the execution"
LOST_LEASE = "lost: no heartbeat from worker {node} for {seconds:g} s"
# The leader knows only that no start was reported: the report may be what was lost.
LOST_DISPATCH = "lost: worker {node} did not report starting the execution within {seconds:g} s"
LOST_RESTART = "lost: worker {node} restarted while the execution was running"
LOST_GONE = "lost: worker {node} is gone (failed or left), so the execution was not dispatched"
LOST_EXPIRED = (
    "lost: worker {node} got the dispatch after its start-by time and did not start it "
    "(the network held it back, or a clock was set since the connection opened)"
)
CANCELLED = "cancelled: the execution was cancelled before it started"


# -- target selection ---------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class MemberView:
    """A gossip member as target selection sees it."""

    name: str
    alive: bool
    tags: Mapping[str, str]


def _clean_tags(tags: Mapping[str, str]) -> tuple[dict[str, str], int | None]:
    """Dkron's cleanTags: ``value[:count]``; the smallest count wins; a bad count means 0."""
    wanted: dict[str, str] = {}
    cardinality: int | None = None
    for key, raw in tags.items():
        parts = raw.split(":")
        wanted[key] = parts[0]
        if len(parts) == 2:
            try:
                count = int(parts[1])
            except ValueError:
                count = 0
            cardinality = count if cardinality is None else min(cardinality, count)
    return wanted, cardinality


def select_targets(
    job_tags: Mapping[str, str] | None,
    members: Iterable[MemberView],
    *,
    region: str,
    rng: random.Random,
) -> tuple[str, ...]:
    """The nodes that run a job, by Dkron's rules (sorted for determinism).

    All alive members of the leader's region whose tags match every job tag
    qualify; with a count, a uniformly random subset of that size is chosen.
    No tags means every alive member of the region.
    """
    qualifying, cardinality = qualifying_targets(job_tags, members, region=region)
    return choose_targets(qualifying, cardinality, rng=rng)


def qualifying_targets(
    job_tags: Mapping[str, str] | None, members: Iterable[MemberView], *, region: str
) -> tuple[tuple[str, ...], int | None]:
    """The first half of :func:`select_targets`: every qualifying member, sorted,
    and the count to pick from them (``None``: all).

    It depends only on the tags and the membership, so a caller that places
    many jobs with the same tags against one view of the members may reuse it.
    """
    wanted, cardinality = _clean_tags(job_tags or {})
    pairs = tuple(wanted.items())
    qualifying: list[str] = []
    for m in members:  # runs for every claim: plain loops, no generator per member
        if not m.alive:
            continue
        tags = m.tags
        if tags.get("region", "global") != region:
            continue
        for k, v in pairs:
            if tags.get(k) != v:
                break
        else:
            qualifying.append(m.name)
    qualifying.sort()
    return tuple(qualifying), cardinality


def choose_targets(
    qualifying: tuple[str, ...], cardinality: int | None, *, rng: random.Random
) -> tuple[str, ...]:
    """The second half of :func:`select_targets`: a uniform subset of the count's size."""
    if cardinality is not None and len(qualifying) > cardinality:
        return tuple(sorted(rng.sample(qualifying, max(cardinality, 0))))
    return qualifying


# -- wire messages --------------------------------------------------------------------


class RunKey(NamedTuple):
    """One attempt of one run on one node.

    A named tuple rather than a dataclass: it keys the leader's and the
    worker's tables and the journal, and a tuple hashes and compares in C
    (a frozen dataclass does both in Python, on every lookup).
    """

    job: str
    group: int
    node: str
    attempt: int


@dataclass(frozen=True, slots=True)
class Dispatch:
    """Leader -> worker: run this attempt (carrying the job as the leader knows it).

    ``start_by`` (the leader's wall clock, ns) is when it stops waiting for the
    start: a worker refuses the dispatch after it.  A TCP connection that
    stalls keeps what was queued on it and delivers it when the path heals,
    minutes later; without this bound, every dispatch held back that way
    would start a run the leader had already recorded as lost.
    """

    term: int
    key: RunKey
    job: Job
    scheduled_time: int | None
    trigger: str
    start_by: int


@dataclass(frozen=True, slots=True)
class Started:
    """Worker -> leader: the attempt runs; its record (``started_at`` is the worker's)."""

    execution: Execution


@dataclass(frozen=True, slots=True)
class Output:
    """Worker -> leader: one chunk of live output; ``seq`` counts chunks from 1."""

    key: RunKey
    seq: int
    data: bytes

    def __post_init__(self) -> None:
        if self.seq < 1:
            raise ValueError("seq counts from 1")


@dataclass(frozen=True, slots=True)
class Heartbeat:
    """Worker -> leader: these attempts are still running (renews their leases)."""

    node: str
    running: tuple[RunKey, ...]


@dataclass(frozen=True, slots=True)
class Result:
    """Worker -> leader: the final record, re-sent until acknowledged."""

    execution: Execution


@dataclass(frozen=True, slots=True)
class ResultAck:
    """Leader -> worker: the result is committed; stop re-sending it."""

    key: RunKey


@dataclass(frozen=True, slots=True)
class Cancel:
    """Leader -> worker: stop this attempt; it is reported as cancelled."""

    key: RunKey


@dataclass(frozen=True, slots=True)
class Refused:
    """Worker -> leader: a dispatch was refused (``stale_term``: fenced)."""

    term: int
    key: RunKey
    reason: str


ExecMessage = Dispatch | Started | Output | Heartbeat | Result | ResultAck | Cancel | Refused

EXECUTION_CODEC = Codec(
    {
        1: Dispatch,
        2: Started,
        3: Output,
        4: Heartbeat,
        5: Result,
        6: ResultAck,
        7: Cancel,
        8: Refused,
    }
)


# -- actions ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class Send:
    dst: str
    msg: ExecMessage


@dataclass(frozen=True, slots=True, kw_only=True)
class Propose:
    """A command for the caller to propose through Raft."""

    command: Command


@dataclass(frozen=True, slots=True, kw_only=True)
class StartRun:
    """Worker: record ``execution`` durably in the run journal, then start the executor.

    The journal is what lets a restarted worker know which attempts it had
    started: it hands them back as ``interrupted`` so that they are reported
    as lost instead of being started a second time by a re-dispatch.
    """

    job: Job
    execution: Execution


@dataclass(frozen=True, slots=True, kw_only=True)
class ForgetRun:
    """Worker: the attempt's result is committed; drop it from the run journal."""

    key: RunKey


@dataclass(frozen=True, slots=True, kw_only=True)
class StopRun:
    """Worker: stop the executor of this attempt; report it cancelled."""

    key: RunKey


@dataclass(frozen=True, slots=True, kw_only=True)
class LiveOutput:
    """Leader: a new chunk for live subscribers of an execution."""

    key: RunKey
    seq: int
    data: bytes


Action = Send | Propose | StartRun | StopRun | ForgetRun | LiveOutput


# -- records built on every slot -------------------------------------------------------
# Every run builds a dozen of these: a frozen dataclass's __init__ stores each
# field through object.__setattr__, several times the cost of filling its
# slots (see slot_maker).  None of these classes checks anything in
# __post_init__, except those marked validated, built only from values that
# pass the same checks (the checks are made here first where they could fail).

_send_action: Callable[[str, ExecMessage], Send] = slot_maker(Send)
_propose_action: Callable[[Command], Propose] = slot_maker(Propose)
_live_output: Callable[[RunKey, int, bytes], LiveOutput] = slot_maker(LiveOutput)
_start_run: Callable[[Job, Execution], StartRun] = slot_maker(StartRun)
_forget_run: Callable[[RunKey], ForgetRun] = slot_maker(ForgetRun)
_dispatch_msg: Callable[[int, RunKey, Job, int | None, str, int], Dispatch] = slot_maker(Dispatch)
_started_msg: Callable[[Execution], Started] = slot_maker(Started)
_result_msg: Callable[[Execution], Result] = slot_maker(Result)
_result_ack: Callable[[RunKey], ResultAck] = slot_maker(ResultAck)
# A worker numbers its chunks from 1 itself.
_output_msg: Callable[[RunKey, int, bytes], Output] = slot_maker(Output, validated=True)
# (job_name, started_at, node_name, finished_at, success, output, group, attempt,
#  scheduled_time, trigger, status); only from values that pass Execution's checks.
_execution: Callable[..., Execution] = slot_maker(Execution, validated=True)
# RunKey's generated __new__ is a Python function around tuple.__new__.
_run_key: Callable[[tuple[str, int, str, int]], RunKey] = functools.partial(tuple.__new__, RunKey)


@dataclass(frozen=True, slots=True, kw_only=True)
class ExecutionConfig:
    """Timing of the protocol; a lease must outlast several heartbeats."""

    heartbeat_interval: float = 1.0
    lease_timeout: float = 10.0
    dispatch_retry: float = 1.0
    dispatch_timeout: float = 30.0
    #: The margin for error in a worker's view of the leader's clock (the RPC
    #: hello measures the offset; a clock set later is what it misses).  A
    #: dispatch must be started within ``dispatch_timeout - clock_skew`` of
    #: the leader's wall clock when it first sent it, so that a worker that
    #: far off still never starts a run after the leader has given up on it.
    clock_skew: float = 5.0
    result_retry: float = 1.0
    live_buffer_bytes: int = 256 * 1024

    def __post_init__(self) -> None:
        timings = (
            self.heartbeat_interval,
            self.lease_timeout,
            self.dispatch_retry,
            self.dispatch_timeout,
            self.clock_skew,
            self.result_retry,
        )
        if not all(math.isfinite(t) for t in timings):
            # NaN passes every comparison below, and the timers need finite wake times.
            raise ValueError("timings must be finite")
        if self.lease_timeout <= 2 * self.heartbeat_interval:
            raise ValueError("lease_timeout must exceed two heartbeat intervals")
        if min(self.heartbeat_interval, self.dispatch_retry, self.result_retry) <= 0:
            raise ValueError("intervals must be positive")
        if self.dispatch_timeout <= self.dispatch_retry:
            raise ValueError("dispatch_timeout must exceed dispatch_retry")
        if not 0 <= self.clock_skew < self.dispatch_timeout:
            raise ValueError("clock_skew must be within 0..dispatch_timeout")


class _Phase(enum.Enum):
    DISPATCHING = "dispatching"
    RUNNING = "running"
    REPORTED = "reported"


@dataclass(slots=True)
class _LeaderRun:
    key: RunKey
    claim: InFlight
    phase: _Phase
    deadline: float  # dispatch deadline, then lease expiry
    next_send: float
    started: Execution | None = None
    verdict_proposed: bool = False
    live: deque[tuple[int, bytes]] = dataclasses.field(default_factory=deque)
    live_bytes: int = 0
    live_seq: int = 0
    start_by: int = 0  # wall clock (ns) after which no worker starts it


class _Timers:
    """Run keys by wake time, the first pushed first among equal times.

    The order is exactly that of a heap of ``(time, push count, key)``, but
    the heap holds each distinct time once and the keys of one time wait in
    a FIFO: the runs claimed, started or renewed in one instant share their
    wake time, so a thousand of them cost one heap operation, not a thousand
    sift-downs over tuples.  (Equal floats are one dict key, as they are one
    heap position; wake times are finite.)
    """

    __slots__ = ("_keys", "_times")

    def __init__(self) -> None:
        self._times: list[float] = []
        self._keys: dict[float, deque[RunKey]] = {}

    def __len__(self) -> int:
        return sum(len(keys) for keys in self._keys.values())

    def push(self, at: float, key: RunKey) -> None:
        keys = self._keys.get(at)
        if keys is None:
            self._keys[at] = deque((key,))
            heapq.heappush(self._times, at)
        else:
            keys.append(key)

    def first_time(self) -> float | None:
        times = self._times
        return times[0] if times else None

    def first_key(self) -> RunKey:
        """The key :meth:`pop` removes next (only when :meth:`first_time` is not None)."""
        return self._keys[self._times[0]][0]

    def pop(self) -> RunKey:
        """Remove and return the first key (only when :meth:`first_time` is not None)."""
        at = self._times[0]
        keys = self._keys[at]
        key = keys.popleft()
        if not keys:
            heapq.heappop(self._times)
            del self._keys[at]
        return key


class ExecutionLeader:
    """The leader's half: dispatch, leases, lost and cancelled verdicts, live output."""

    def __init__(
        self,
        node: str,
        term: int,
        config: ExecutionConfig,
        *,
        now: float,
        gone: Iterable[str] = (),
    ) -> None:
        self.node = node
        self.term = term
        self.config = config
        # Members SWIM reports failed or left: a run claimed for one (a retry
        # targets the node that failed) is lost at once, not after
        # dispatch_timeout, as Dkron fails it with "retry node is gone".
        self._gone: set[str] = set(gone)
        self._runs: dict[RunKey, _LeaderRun] = {}
        self._jobs: dict[str, Job] = {}
        self._out: list[Action] = []
        self._now = now
        self._wall_ns = 0
        # Lazy timers: (wake time, run) in push order; an entry is stale when
        # the run is gone, decided, or its wake time has moved.
        self._timers = _Timers()
        self.counters: dict[str, int] = {
            "dispatched": 0,
            "lost": 0,
            "cancelled": 0,
            "stale": 0,
            "expired": 0,
        }

    # -- inputs ---------------------------------------------------------------------

    def load(self, state: StateMachine, now: float, *, wall_ns: int) -> None:
        """Take over from the replicated state at the start of a term."""
        self._now = now
        self._wall_ns = wall_ns
        for job in state.iter_jobs():
            for claim in state.in_flight(job.name):
                self._track_claim(job, claim, state)

    def observe(
        self, cmd: Command, result: ApplyResult, state: StateMachine, now: float, *, wall_ns: int
    ) -> None:
        """Follow every applied command (on the leader), as the planner does.

        A committed claim (or a retry adding a target to one) is dispatched;
        a committed result is acknowledged to its worker.  A batch is
        followed element by element.
        """
        self._now = now
        self._wall_ns = wall_ns
        # Batches are walked here without building each element's single command
        # (what each_applied does): this runs for every result a leader commits.
        if isinstance(cmd, ClaimSlots):
            for claim, part in zip(cmd.claims, result.parts, strict=True):
                self._observe_claim(claim, part, state)
        elif isinstance(cmd, ExecutionsFinished):
            for ex in cmd.executions:
                self._observe_finished(ex)
        elif isinstance(cmd, ClaimSlot):
            self._observe_claim(cmd, result, state)
        elif isinstance(cmd, ExecutionFinished):
            self._observe_finished(cmd.execution)
        # A started record needs nothing here: the leader proposed it itself.

    def _observe_claim(self, cmd: ClaimSlot, result: ApplyResult, state: StateMachine) -> None:
        job = state.get_job(cmd.job)
        if result.claim is not None and job is not None:
            self._track_claim(job, result.claim, state)

    def _observe_finished(self, ex: Execution) -> None:
        key = _run_key((ex.job_name, ex.group, ex.node_name, ex.attempt))
        run = self._runs.pop(key, None)
        # Acknowledge even a duplicate: the worker must stop re-sending.
        self._out.append(_send_action(ex.node_name, _result_ack(key)))
        if run is not None and run.live:
            run.live.clear()

    def receive(self, msg: ExecMessage, *, src: str, now: float, wall_ns: int) -> None:
        self._now = now
        if isinstance(msg, Started):
            self._on_started(msg.execution, now)
        elif isinstance(msg, Heartbeat):
            # By the node it names, not by the sender: a worker that cannot
            # reach the leader reports through another server, which forwards.
            for key in msg.running:
                run = self._runs.get(key)
                if run is not None and run.phase is _Phase.RUNNING and key.node == msg.node:
                    run.deadline = now + self.config.lease_timeout
                    self._schedule(run)
        elif isinstance(msg, Output):
            self._on_output(msg)
        elif isinstance(msg, Result):
            ex = msg.execution
            key = _run_key((ex.job_name, ex.group, ex.node_name, ex.attempt))
            run = self._runs.get(key)
            if run is not None:
                run.phase = _Phase.REPORTED
                run.verdict_proposed = True
            # Propose even when unknown: the state decides whether it is new,
            # and its apply triggers the acknowledgement either way.
            finished = one_finished(ex) if ex.finished_at is not None else ExecutionFinished(ex)
            self._out.append(_propose_action(finished))
        elif isinstance(msg, Refused):
            if msg.reason != "expired":
                self.counters["stale"] += 1
                return
            # The worker will not start it: this leader's dispatches of the run
            # all carry the same start-by time.  (A refusal of an earlier
            # leader's dispatch says nothing about this leader's.)
            self.counters["expired"] += 1
            run = self._runs.get(msg.key)
            if (
                msg.term == self.term
                and run is not None
                and run.phase is _Phase.DISPATCHING
                and not run.verdict_proposed
            ):
                self._lose(run, wall_ns, LOST_EXPIRED.format(node=msg.key.node))

    def member_failed(self, node: str, now: float, wall_ns: int) -> None:
        """SWIM declared ``node`` failed: its runs are lost (then retried per policy)."""
        self._now = now
        self._gone.add(node)
        for run in list(self._runs.values()):
            if run.key.node == node and not run.verdict_proposed:
                self._lose(run, wall_ns, LOST_FAILED.format(node=node))

    def member_gone(self, node: str) -> None:
        """SWIM says ``node`` left or was reaped: runs claimed for it from now on are lost."""
        self._gone.add(node)

    def member_alive(self, node: str) -> None:
        """``node`` (re)joined: runs claimed for it are dispatched again."""
        self._gone.discard(node)

    def cancel(self, key: RunKey, now: float, wall_ns: int) -> bool:
        """Stop a run; False when this leader does not know it."""
        self._now = now
        run = self._runs.get(key)
        if run is None or run.verdict_proposed:
            return False
        self.counters["cancelled"] += 1
        if run.phase is _Phase.DISPATCHING:
            # Never started: the verdict is ours to commit.
            run.verdict_proposed = True
            self._propose(ExecutionFinished(self._verdict(run, wall_ns, CANCELLED, "cancelled")))
        self._send(key.node, Cancel(key))
        return True

    def handle_timer(self, now: float, wall_ns: int) -> None:
        self._now = now
        cfg = self.config
        timers = self._timers
        while (at := timers.first_time()) is not None and at <= now:
            key = timers.pop()
            run = self._runs.get(key)
            if run is None or run.verdict_proposed or self._wake_of(run) > now:
                continue  # gone, decided, or superseded by a later entry
            if now >= run.deadline:
                if run.phase is _Phase.DISPATCHING and run.key.node in self._gone:
                    why = LOST_GONE.format(node=run.key.node)
                elif run.phase is _Phase.DISPATCHING:
                    why = LOST_DISPATCH.format(node=run.key.node, seconds=cfg.dispatch_timeout)
                else:
                    why = LOST_LEASE.format(node=run.key.node, seconds=cfg.lease_timeout)
                self._lose(run, wall_ns, why)
            else:
                self._dispatch(run)

    # -- outputs --------------------------------------------------------------------

    def next_deadline(self) -> float | None:
        timers = self._timers
        runs = self._runs
        while (at := timers.first_time()) is not None:
            run = runs.get(timers.first_key())
            if run is not None and not run.verdict_proposed and self._wake_of(run) == at:
                return at
            timers.pop()  # stale: a later entry (or none) stands for this run
        return None

    def drain(self) -> list[Action]:
        """Actions in order; several proposals become batches at the end.

        All ``ExecutionStarted`` go before all ``ExecutionFinished``: the only
        order between them that matters is a run's start before its result,
        and the leader never proposes a run's start after its result.
        """
        out, self._out = self._out, []
        proposals = [a.command for a in out if isinstance(a, Propose)]
        if len(proposals) < 2:
            return out
        started = [c for c in proposals if isinstance(c, ExecutionStarted)]
        others = [c for c in proposals if not isinstance(c, ExecutionStarted)]
        batched = [_propose_action(c) for c in batch_commands([*started, *others])]
        return [*(a for a in out if not isinstance(a, Propose)), *batched]

    def live_output(self, key: RunKey) -> list[tuple[int, bytes]]:
        """Chunks buffered for live subscribers, oldest first."""
        run = self._runs.get(key)
        return [] if run is None else list(run.live)

    def running(self) -> list[RunKey]:
        return sorted(
            (k for k, r in self._runs.items() if r.phase is _Phase.RUNNING),
            key=lambda k: (k.job, k.group, k.node, k.attempt),
        )

    def is_running(self, key: RunKey) -> bool:
        run = self._runs.get(key)
        return run is not None and run.phase is _Phase.RUNNING

    # -- internals ------------------------------------------------------------------

    def _track_claim(self, job: Job, claim: InFlight, state: StateMachine) -> None:
        self._jobs[job.name] = job
        group = claim.claim.execution_group
        cfg = self.config
        start_by = self._wall_ns + int((cfg.dispatch_timeout - cfg.clock_skew) * 1e9)
        running = {
            (e.node_name, e.attempt): e
            for e in state.group_executions(job.name, group)
            if e.finished_at is None
        }
        for node, attempt in sorted(claim.outstanding.items()):
            key = _run_key((job.name, group, node, attempt))
            if key in self._runs:
                continue
            started = running.get((node, attempt))
            if started is not None:
                run = _LeaderRun(
                    key,
                    claim,
                    _Phase.RUNNING,
                    self._now + cfg.lease_timeout,
                    self._now,
                    started,
                    start_by=start_by,
                )
                self._runs[key] = run
                # One dispatch announces this leader: the worker de-duplicates it,
                # re-points its heartbeats here and re-sends a finished result.
                self._dispatch(run)
            elif node in self._gone:
                # Lost at the next timer, which has the wall clock its record needs.
                run = _LeaderRun(key, claim, _Phase.DISPATCHING, self._now, math.inf)
                self._runs[key] = run
                self._schedule(run)
            else:
                run = _LeaderRun(
                    key,
                    claim,
                    _Phase.DISPATCHING,
                    self._now + cfg.dispatch_timeout,
                    0.0,
                    start_by=start_by,
                )
                self._runs[key] = run
                self._dispatch(run)

    def _dispatch(self, run: _LeaderRun) -> None:
        job = self._jobs[run.key.job]
        claim = run.claim.claim
        key = run.key
        self._out.append(
            _send_action(
                key.node,
                _dispatch_msg(
                    self.term, key, job, claim.scheduled_time_ns, claim.trigger, run.start_by
                ),
            )
        )
        self.counters["dispatched"] += 1
        run.next_send = self._now + self.config.dispatch_retry
        self._schedule(run)

    @staticmethod
    def _wake_of(run: _LeaderRun) -> float:
        """When a run next needs attention: its deadline, or its next dispatch."""
        if run.phase is _Phase.DISPATCHING:
            return min(run.deadline, run.next_send)
        return run.deadline

    def _schedule(self, run: _LeaderRun) -> None:
        """Record a run's (possibly changed) wake time; older entries become stale."""
        self._timers.push(self._wake_of(run), run.key)

    def _on_started(self, ex: Execution, now: float) -> None:
        key = _run_key((ex.job_name, ex.group, ex.node_name, ex.attempt))
        run = self._runs.get(key)
        if run is None or run.verdict_proposed:
            return
        if run.phase is _Phase.DISPATCHING:
            run.phase = _Phase.RUNNING
            run.started = ex
            run.deadline = now + self.config.lease_timeout
            self._schedule(run)
            started = one_started(ex) if ex.finished_at is None else ExecutionStarted(ex)
            self._out.append(_propose_action(started))

    def _on_output(self, msg: Output) -> None:
        run = self._runs.get(msg.key)
        if run is None or msg.seq <= run.live_seq:
            return  # unknown, or a chunk this leader already has (re-sent after failover)
        run.live_seq = msg.seq
        run.live.append((msg.seq, msg.data))
        run.live_bytes += len(msg.data)
        while run.live_bytes > self.config.live_buffer_bytes and run.live:
            _, dropped = run.live.popleft()
            run.live_bytes -= len(dropped)
        self._out.append(_live_output(msg.key, msg.seq, msg.data))

    def _verdict(self, run: _LeaderRun, wall_ns: int, why: str, status: str) -> Execution:
        claim = run.claim.claim
        base = run.started or Execution(
            run.key.job,
            wall_ns,
            run.key.node,
            group=run.key.group,
            attempt=run.key.attempt,
            scheduled_time=claim.scheduled_time_ns,
            trigger=claim.trigger,
        )
        return dataclasses.replace(
            base,
            finished_at=max(wall_ns, base.started_at),
            success=False,
            output=why,
            status=status,
        )

    def _lose(self, run: _LeaderRun, wall_ns: int, why: str) -> None:
        run.verdict_proposed = True
        self.counters["lost"] += 1
        self._propose(ExecutionFinished(self._verdict(run, wall_ns, why, "lost")))
        if run.phase is _Phase.RUNNING:
            self._send(run.key.node, Cancel(run.key))  # in case it still runs somewhere

    def _propose(self, cmd: Command) -> None:
        self._out.append(_propose_action(cmd))

    def _send(self, dst: str, msg: ExecMessage) -> None:
        self._out.append(_send_action(dst, msg))


@dataclass(slots=True)
class _WorkerRun:
    key: RunKey
    term: int
    leader: str
    execution: Execution
    result: Execution | None = None
    next_result: float = 0.0
    seq: int = 0
    unsent: deque[tuple[int, bytes]] = dataclasses.field(default_factory=deque)
    buffered: int = 0
    cancelled: bool = False


class ExecutionWorker:
    """A node's half: run each attempt once, fence stale leaders, report until acknowledged."""

    def __init__(
        self,
        node: str,
        config: ExecutionConfig,
        *,
        now: float,
        wall_ns: int = 0,
        interrupted: Iterable[Execution] = (),
    ) -> None:
        self.node = node
        self.config = config
        self.leader: str | None = None
        self.leader_term = -1
        #: The server whose dispatch carried the newest term: the leader as far
        #: as this worker knows.  ``leader`` is where reports go, which is
        #: another server (it forwards) while this one cannot be reached.
        self.dispatcher: str | None = None
        self._last_started = max([wall_ns, *(ex.started_at for ex in interrupted)])
        self._runs: dict[RunKey, _WorkerRun] = {}
        # The runs with a result not yet acknowledged: the only ones with a
        # deadline, so a wake-up does not walk every running execution.
        self._reporting: dict[RunKey, _WorkerRun] = {}
        self._done: deque[RunKey] = deque(maxlen=1024)
        self._done_set: set[RunKey] = set()
        self._next_heartbeat = now + config.heartbeat_interval
        self._out: list[Action] = []
        self.refused = 0
        for ex in interrupted:
            # Started before a crash: report it lost (same id), never run it again.
            key = RunKey(ex.job_name, ex.group, ex.node_name, ex.attempt)
            run = _WorkerRun(key, -1, "", ex)
            run.result = dataclasses.replace(
                ex,
                finished_at=max(wall_ns, ex.started_at),
                success=False,
                output=LOST_RESTART.format(node=node),
                status="lost",
            )
            self._runs[key] = run
            self._reporting[key] = run

    # -- inputs -----------------------------------------------------------------------

    def set_leader(self, leader: str | None, now: float) -> None:
        """The server currently leading; everything outstanding is re-sent to it."""
        if leader == self.leader:
            return
        self.leader = leader
        if leader is None:
            return
        for run in self._runs.values():
            run.leader = leader
            if run.result is not None:
                self._send(leader, _result_msg(run.result))
                run.next_result = now + self.config.result_retry
            else:
                self._send(leader, _started_msg(run.execution))
                for seq, data in run.unsent:
                    self._send(leader, _output_msg(run.key, seq, data))

    def receive(
        self, msg: ExecMessage, *, src: str, now: float, wall_ns: int, ahead_ns: int = 0
    ) -> None:
        """``ahead_ns``: how far this node's wall clock runs ahead of the sender's
        (the RPC hello measures it), so that a dispatch's start-by time, on the
        leader's clock, is judged on the same clock and skew does not refuse it."""
        if isinstance(msg, Dispatch):
            self._on_dispatch(msg, src, now, wall_ns, ahead_ns)
        elif isinstance(msg, ResultAck):
            run = self._runs.pop(msg.key, None)
            self._reporting.pop(msg.key, None)
            if run is not None:
                self._remember_done(msg.key)
                self._out.append(_forget_run(msg.key))
        elif isinstance(msg, Cancel):
            run = self._runs.get(msg.key)
            if run is not None and run.result is None and not run.cancelled:
                run.cancelled = True
                self._out.append(StopRun(key=msg.key))

    def output(self, key: RunKey, data: bytes, now: float) -> None:
        """The executor produced a chunk."""
        run = self._runs.get(key)
        if run is None or run.result is not None or not data:
            return
        run.seq += 1
        run.unsent.append((run.seq, data))
        run.buffered += len(data)
        while run.buffered > self.config.live_buffer_bytes and run.unsent:
            _, dropped = run.unsent.popleft()
            run.buffered -= len(dropped)
        self._out.append(_send_action(run.leader, _output_msg(key, run.seq, data)))

    def finished(
        self, key: RunKey, *, success: bool, output: str, wall_ns: int, now: float
    ) -> None:
        """The executor ended (``cancelled`` runs report as failed with that status)."""
        run = self._runs.get(key)
        if run is None or run.result is not None:
            return
        ex = run.execution
        # Every field spelled out (dataclasses.replace is slow).  All but
        # finished_at were checked when ``ex`` was built, and a status only
        # goes with a failure; finished_at is at least ``ex.started_at``.
        fields = (
            ex.job_name,
            ex.started_at,
            ex.node_name,
            max(wall_ns, ex.started_at),
            success and not run.cancelled,
            output,
            ex.group,
            ex.attempt,
            ex.scheduled_time,
            ex.trigger,
            "cancelled" if run.cancelled else "",
        )
        result = _execution(*fields) if fields[3] <= MAX_TIME_NS else Execution(*fields)
        run.result = result
        run.unsent.clear()
        run.buffered = 0
        self._reporting[key] = run
        self._out.append(_send_action(run.leader, _result_msg(result)))
        run.next_result = now + self.config.result_retry

    def handle_timer(self, now: float) -> None:
        if now >= self._next_heartbeat:
            self._next_heartbeat = now + self.config.heartbeat_interval
            running = tuple(k for k, r in self._runs.items() if r.result is None)
            if running and self.leader is not None:
                self._send(self.leader, Heartbeat(self.node, running))
        for run in self._reporting.values():
            if now >= run.next_result and run.leader and run.result is not None:
                run.next_result = now + self.config.result_retry
                self._send(run.leader, _result_msg(run.result))

    # -- outputs ------------------------------------------------------------------------

    def next_deadline(self) -> float | None:
        times = [self._next_heartbeat]
        # A result waits for a leader to send it to; until one is known it has no deadline.
        times.extend(r.next_result for r in self._reporting.values() if r.leader)
        return min(times)

    def drain(self) -> list[Action]:
        out, self._out = self._out, []
        return out

    def running(self) -> list[RunKey]:
        return [k for k, r in self._runs.items() if r.result is None]

    def outstanding_results(self) -> int:
        return len(self._reporting)

    # -- internals ------------------------------------------------------------------------

    def _on_dispatch(
        self, msg: Dispatch, src: str, now: float, wall_ns: int, ahead_ns: int
    ) -> None:
        key = msg.key
        if key.node != self.node:
            return
        switched = False
        if msg.term > self.leader_term:
            # A dispatch of a newer term names the current leader: report there
            # (set_leader re-sends everything outstanding to it).
            self.leader_term = msg.term
            self.dispatcher = src
            switched = src != self.leader
            self.set_leader(src, now)
        elif msg.term == self.leader_term:
            # The same leader, directly or through a relay (see the agent's
            # _relay_for): whoever delivers its dispatches now is the way back.
            self.dispatcher = src
        # Reports go where this worker reports (``leader``), which forwards
        # them when it is not the dispatcher.
        report_to = self.leader or src
        run = self._runs.get(key)
        if run is not None:
            if msg.term < run.term:
                self.refused += 1
                self._send(src, Refused(run.term, key, "stale_term"))
                return
            run.term = msg.term
            run.leader = report_to
            # Already running (or finished): answer the leader, never start twice.
            if not switched:
                reply = _result_msg(run.result) if run.result else _started_msg(run.execution)
                self._send(report_to, reply)
            return
        if key in self._done_set:
            self._send(src, Refused(msg.term, key, "done"))
            return
        if wall_ns - ahead_ns > msg.start_by:
            # The leader stops waiting for this start at its start-by time: a
            # run started now could begin after it was recorded lost (and retried).
            self.refused += 1
            self._send(report_to, Refused(msg.term, key, "expired"))
            return
        # Dkron's execution id is "<started_at ns>-<node>": two attempts started
        # in the same clock tick (a catch-up batch) must still get distinct ids.
        self._last_started = started_at = max(wall_ns, self._last_started + 1)
        execution = _new_execution(key, started_at, self.node, msg.scheduled_time, msg.trigger)
        self._runs[key] = _WorkerRun(key, msg.term, report_to, execution)
        out = self._out
        out.append(_start_run(msg.job, execution))
        out.append(_send_action(report_to, _started_msg(execution)))

    def _remember_done(self, key: RunKey) -> None:
        if len(self._done) == self._done.maxlen:
            self._done_set.discard(self._done[0])
        self._done.append(key)
        self._done_set.add(key)

    def _send(self, dst: str, msg: ExecMessage) -> None:
        self._out.append(_send_action(dst, msg))


def _new_execution(
    key: RunKey, started_at: int, node: str, scheduled_time: int | None, trigger: str
) -> Execution:
    """The running record of a dispatched attempt, as ``Execution(...)`` builds it.

    The attempt, the trigger and the scheduled time come from a dispatch:
    the record is filled slot by slot only when they pass Execution's
    checks (made here in its order); otherwise the constructor refuses
    them with its own error, as it always has.
    """
    attempt = key.attempt
    if (
        attempt >= 0
        and trigger in TRIGGERS
        and MIN_TIME_NS <= started_at <= MAX_TIME_NS
        and (scheduled_time is None or MIN_TIME_NS <= scheduled_time <= MAX_TIME_NS)
    ):
        return _execution(
            key.job,
            started_at,
            node,
            None,
            False,
            "",
            key.group,
            attempt,
            scheduled_time,
            trigger,
            "",
        )
    return Execution(
        key.job,
        started_at,
        node,
        group=key.group,
        attempt=attempt,
        scheduled_time=scheduled_time,
        trigger=trigger,
    )
