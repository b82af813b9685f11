"""What the leader proposes: schedule slots, retries and dependent runs as Raft commands.

A :class:`Planner` exists only while its node leads, and only once the
node's state machine has applied everything committed before its term (the
barrier): everything it knows comes from the replicated
:class:`~dkron.state.StateMachine`, so a new leader continues exactly where
the replicated cursors, pending retries and owed dependent runs say, and a
deposed leader's planner is simply dropped.

It turns the schedule engine's output into commands — a
:class:`~dkron.state.ClaimSlot` per slot to run, a
:class:`~dkron.state.RecordMissed` per range of slots that will not — and adds
the runs that are not on a schedule: retries whose replicated due time has
come and dependent runs owed by a parent's success.  The caller proposes the
commands; the state machine's apply decides.  Duplicates (a slot proposed by
two leaders, a retry proposed twice) are refused there, so nothing here needs
to be exactly-once itself.

Target nodes come from an injected ``select_targets(job)`` (the execution
protocol chooses them from live members by the job's tags).
"""

from __future__ import annotations

import heapq
from collections.abc import Callable
from datetime import UTC, datetime, timedelta, tzinfo

from dkron.model import TRIGGERS, Job
from dkron.proto_sansio.scheduler import (
    CatchUp,
    FireSlot,
    MissedSlots,
    MissReason,
    ScheduledJob,
    Scheduler,
    SchedulerConfig,
    Trigger,
)
from dkron.proto_sansio.wire import slot_maker
from dkron.schedule import NeverSchedule, ScheduleError, job_schedule, parse_go_duration
from dkron.state import (
    NO_TARGET,
    ApplyResult,
    ClaimSlot,
    Command,
    DeleteJob,
    GroupCompleted,
    JobDeleted,
    PendingRetry,
    RecordMissed,
    RetryScheduled,
    StateMachine,
    ToggleJob,
    UpsertJob,
    batch_commands,
)

__all__ = ["Planner", "from_ns", "to_ns"]

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_PARK = timedelta(seconds=1)  # how long a job without live targets waits before retrying
# While a `catchup: all` job still has none, the retry only asks for targets;
# the scheduler walks its owed slots again (counting the ones past the
# catch-up window) this often.
_RECOUNT = timedelta(seconds=30)

# ClaimSlot(job, scheduled_time_ns, term, trigger, group, targets, attempt) from
# values that already passed its checks: one is built for every slot.
_new_claim: Callable[..., ClaimSlot] = slot_maker(ClaimSlot, validated=True)
assert {t.value for t in Trigger} <= TRIGGERS - {"retry"}


def to_ns(t: datetime) -> int:
    """An aware datetime as integer Unix nanoseconds (exact to the microsecond)."""
    d = t - _EPOCH
    return (d.days * 86_400 + d.seconds) * 1_000_000_000 + d.microseconds * 1_000


def from_ns(ns: int) -> datetime:
    return _EPOCH + timedelta(microseconds=ns // 1_000)


class Planner:
    """The leader's source of ClaimSlot and RecordMissed commands."""

    def __init__(
        self,
        state: StateMachine,
        *,
        term: int,
        wall: datetime,
        select_targets: Callable[[Job], tuple[str, ...]],
        local_tz: tzinfo = UTC,
        config: SchedulerConfig | None = None,
    ) -> None:
        self.state = state
        self.term = term
        self.local_tz = local_tz
        self._select = select_targets
        self.scheduler = Scheduler(config)
        self._retries: list[tuple[int, str, int, str]] = []  # (due, job, group, node)
        self._retry_info: dict[tuple[str, int, str], PendingRetry] = {}
        self._parked: list[tuple[datetime, str]] = []  # (retry at, job) waiting for targets
        self._parked_names: set[str] = set()
        self._recount_at: dict[str, datetime] = {}  # parked job -> its next full walk
        # Dependent runs owed while their job matched no node: (retry at, job, group).
        self._owed: list[tuple[datetime, str, int]] = []
        # The last cron slot this planner decided per job (claimed or counted
        # missed), committed or not yet: the replicated cursor lags behind
        # proposals in flight, so a job put back into the scheduler (unparked,
        # updated, toggled) resumes after whichever is later.  Resuming from
        # the cursor alone re-emitted slots still in flight, and a missed range
        # re-emitted across one of them counted it twice.
        self._decided: dict[str, int] = {}
        self.no_targets = 0
        #: Jobs whose last due slot found no alive node matching their tags,
        #: with that slot (ns).  Their slots wait (the job is parked) and, once
        #: older than the grace period, are counted missed as ``no_target``
        #: rather than ``missed``, which means no leader was there to run them.
        #: The driver logs the jobs that enter and leave it.
        self.targetless: dict[str, int] = {}
        self._out: list[Command] = []
        self._wall = wall
        self._ns_of: tuple[datetime, int] = (_EPOCH, 0)  # the last slot converted by to_ns
        self.scheduler.load(
            (sj for job in state.iter_jobs() if (sj := self._scheduled(job)) is not None), wall
        )
        for retry in state.pending_retries():
            self._add_retry(retry)
        for child, group in state.pending_dependents():
            self._owe_dependent(child, group)

    # -- inputs ----------------------------------------------------------------

    def observe(self, cmd: Command, result: ApplyResult, wall: datetime) -> None:
        """Feed every applied command and its result (on the leader); batches too."""
        self._wall = wall
        if not result.ok:
            return
        if result.parts:  # a batch: only its elements' events matter here
            for part in result.parts:
                if part.ok and part.events:
                    self._events(part)
            return
        if isinstance(cmd, UpsertJob | ToggleJob | DeleteJob):
            name = cmd.job.name if isinstance(cmd, UpsertJob) else cmd.name
            current = self.state.get_job(name)
            if current is None:
                self._decided.pop(name, None)  # its cursor went with it
                self.targetless.pop(name, None)
            sj = None if current is None else self._scheduled(current)
            if sj is None:
                self.scheduler.remove_job(name)
            else:
                self.scheduler.set_job(sj, wall)
        self._events(result)

    def _events(self, result: ApplyResult) -> None:
        for event in result.events:
            if isinstance(event, RetryScheduled):
                self._add_retry(event.retry)
            elif isinstance(event, JobDeleted):
                self.scheduler.remove_job(event.name)
                self._decided.pop(event.name, None)
                self.targetless.pop(event.name, None)
            elif isinstance(event, GroupCompleted):
                for child in event.dependents:
                    self._owe_dependent(child, event.execution_group)

    def tick(self, wall: datetime) -> list[Command]:
        """Commands to propose now; call at :meth:`next_deadline` and after inputs.

        Claims due together come as one :class:`~dkron.state.ClaimSlots` batch
        (one Raft entry for a thousand slots of one instant); the order of
        everything emitted is kept, so a range counted as missed still lands
        before the claims that follow it.
        """
        self._wall = wall
        while self._parked and self._parked[0][0] <= wall:
            _, name = heapq.heappop(self._parked)
            current = self.state.get_job(name)
            if (
                current is not None
                and current.catchup == "all"
                and wall < self._recount_at[name]
                and not self._select(current)
            ):
                # Still no node: with `catchup: all` its owed slots only grow, and
                # walking them all every second, for every such job, is what
                # would keep a leader busy through a long outage of a pool.  (The
                # other policies count their old slots as they go: short walks.)
                heapq.heappush(self._parked, (wall + _PARK, name))
                continue
            self._parked_names.discard(name)
            del self._recount_at[name]
            sj = None if current is None else self._scheduled(current)
            if sj is not None:
                self.scheduler.set_job(sj, wall)
        while self._owed and self._owed[0][0] <= wall:
            _, child, group = heapq.heappop(self._owed)
            if self.state.owes_dependent(child, group):  # not settled meanwhile
                self._owe_dependent(child, group)
        self.scheduler.advance(wall)
        for decided in self.scheduler.drain():
            if type(decided) is FireSlot:
                self._claim_slot(decided)
            elif isinstance(decided, MissedSlots):
                last = to_ns(decided.last)
                reason = decided.reason.value
                if decided.reason is MissReason.MISSED and decided.job in self.targetless:
                    reason = NO_TARGET
                self._out.append(RecordMissed(decided.job, last, reason, decided.count))
                self._note_decided(decided.job, last)
        now_ns = to_ns(wall)
        while self._retries and self._retries[0][0] <= now_ns:
            _, job_name, group, node = heapq.heappop(self._retries)
            retry = self._retry_info.pop((job_name, group, node), None)
            if retry is None:
                continue
            self._out.append(
                ClaimSlot(
                    job_name,
                    retry.scheduled_time_ns if retry.scheduled_time_ns is not None else now_ns,
                    self.term,
                    "retry",
                    group,
                    (node,),
                    retry.attempt,
                )
            )
        out, self._out = self._out, []
        return batch_commands(out)

    def next_deadline(self) -> datetime | None:
        candidates = []
        sched = self.scheduler.next_deadline()
        if sched is not None:
            candidates.append(sched)
        if self._retries:
            candidates.append(from_ns(self._retries[0][0]))
        if self._parked:
            candidates.append(self._parked[0][0])
        if self._owed:
            candidates.append(self._owed[0][0])
        if self._out:
            candidates.append(self._wall)
        return min(candidates) if candidates else None

    # -- internals -------------------------------------------------------------

    def _scheduled(self, job: Job) -> ScheduledJob | None:
        """The engine's view of a job, or None for jobs that never fire on their own."""
        if job.parent_job or not job.schedule:
            return None
        try:
            schedule = job_schedule(job, local_tz=self.local_tz)
        except ScheduleError:
            return None  # cannot happen for a validated job; never fire a broken one
        if isinstance(schedule, NeverSchedule):
            return None
        cursor = self.state.cursor(job.name)
        mine = self._decided.get(job.name)
        if mine is not None and (cursor is None or mine > cursor):
            cursor = mine
        try:
            window = timedelta(microseconds=parse_go_duration(job.catchup_window) // 1_000)
        except ValueError:
            window = timedelta(hours=1)
        return ScheduledJob(
            name=job.name,
            schedule=schedule,
            anchor=self._wall,
            cursor=None if cursor is None else from_ns(cursor),
            first=None if job.next is None else from_ns(job.next),
            disabled=job.disabled,
            starts_at=None if job.starts_at is None else from_ns(job.starts_at),
            expires_at=None if job.expires_at is None else from_ns(job.expires_at),
            catchup=CatchUp(job.catchup),
            catchup_window=window,
            claim_early=job.concurrency != "forbid",
        )

    def _claim_slot(self, slot: FireSlot) -> None:
        job = self.state.get_job(slot.job)
        if job is None or job.name in self._parked_names:
            return  # gone, or waiting for targets: its later slots wait too
        # The slots of one tick mostly share one instant: convert it once.
        scheduled = slot.scheduled
        if scheduled == self._ns_of[0]:
            ns = self._ns_of[1]
        else:
            ns = to_ns(scheduled)
            self._ns_of = (scheduled, ns)
        targets = self._select(job)
        if not targets:
            # No live node matches (yet): leave the slot undecided and take the job
            # out for a moment.  When it comes back it resumes from the replicated
            # cursor, so this slot runs late or is resolved by the catch-up policy.
            self.scheduler.remove_job(job.name)
            heapq.heappush(self._parked, (self._wall + _PARK, job.name))
            self._parked_names.add(job.name)
            self._recount_at[job.name] = self._wall + _RECOUNT
            self.no_targets += 1
            self.targetless.setdefault(job.name, to_ns(slot.scheduled))
            return
        if self.targetless:
            self.targetless.pop(job.name, None)
        # The group of a scheduled run is its slot: any leader derives the same one.
        # The trigger (schedule or catchup) and the attempt are valid by
        # construction; the term and the targets get ClaimSlot's own checks,
        # and a value failing them goes through ClaimSlot to raise its error.
        term = self.term
        if term >= 0 and (len(targets) == 1 or len(set(targets)) == len(targets)):
            claim = _new_claim(job.name, ns, term, slot.trigger.value, ns, targets, 1)
        else:
            claim = ClaimSlot(job.name, ns, term, slot.trigger.value, ns, targets, 1)
        self._out.append(claim)
        self._note_decided(job.name, ns)

    def _note_decided(self, name: str, ns: int) -> None:
        held = self._decided.get(name)
        if held is None or ns > held:
            self._decided[name] = ns

    def _add_retry(self, retry: PendingRetry) -> None:
        key = (retry.job, retry.execution_group, retry.node_name)
        self._retry_info[key] = retry
        heapq.heappush(self._retries, (retry.due_ns, *key))

    def _owe_dependent(self, child: str, group: int) -> None:
        """Claim a dependent run; with no live target the debt stays replicated
        and this leader tries again every second (as does the next, if it changes)."""
        job = self.state.get_job(child)
        if job is None:
            return
        targets = self._select(job)
        if targets:
            self._out.append(ClaimSlot(child, group, self.term, "dependent", group, targets, 1))
            if self.targetless:
                self.targetless.pop(child, None)
        else:
            self.targetless.setdefault(child, group)
            heapq.heappush(self._owed, (self._wall + _PARK, child, group))
