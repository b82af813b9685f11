"""The leader's schedule engine: jobs, replicated cursors and wall time in; due slots out.

Dkron keeps its cron only in the leader's memory, so a new leader starts
counting from "now" and silently drops every run that fell into the election
gap.  Here the engine is rebuilt on every leadership change from *replicated*
data — each job's cursor, the last slot claimed through Raft — and decides
explicitly what happens to every slot between the cursor and now:

* a slot due less than ``late_grace`` ago is simply late and fires
  (trigger ``schedule``);
* an older slot was *missed*; the job's catch-up policy decides:
  ``skip`` (Dkron's behaviour) counts it as missed, ``latest`` fires only the
  most recent missed slot, ``all`` fires every missed slot that is younger
  than ``catchup_window`` (trigger ``catchup``) and counts the older ones.

The engine never dispatches anything itself.  Each :class:`FireSlot` it emits
is turned by the driver into a ``ClaimSlot`` command that is committed through
Raft before dispatch; the state machine refuses a second claim of one slot,
which is what makes a slot run at most once across any number of leader
changes.  Every slot that does not fire is reported as :class:`MissedSlots`
with its reason so that it can be counted.

Cost: one heap entry per schedulable job; each fire costs one heap pop, one
``next_after`` and one push — O(log n) — so 10,000 jobs never get scanned.
Job updates push a fresh entry and leave the old one to be skipped lazily.
"""

from __future__ import annotations

import collections
import dataclasses
import enum
import heapq
import itertools
from collections.abc import Callable, Iterable
from datetime import datetime, timedelta
from typing import Protocol

from dkron.proto_sansio.wire import slot_maker

__all__ = [
    "CatchUp",
    "FireSlot",
    "MissReason",
    "MissedSlots",
    "ScheduleLike",
    "ScheduledJob",
    "Scheduler",
    "SchedulerConfig",
    "Trigger",
]


class ScheduleLike(Protocol):
    """What the engine needs of a parsed schedule (see :mod:`dkron.schedule`)."""

    def next_after(self, wall: datetime, /) -> datetime | None:
        """The first fire time strictly after ``wall`` (tz-aware UTC), or None: never."""

    def first_from(self, start: datetime, /) -> datetime | None:
        """The first fire time at or after ``start`` (a job's ``starts_at``), or None."""


def resume_slot(
    schedule: ScheduleLike,
    *,
    anchor: datetime,
    cursor: datetime | None,
    first: datetime | None,
    starts_at: datetime | None,
) -> datetime | None:
    """The slot a job (re)entering the engine goes on from; None: it never fires.

    ``first`` (the slot computed when the job was saved) wins while it is
    later than the ``cursor`` (the last decided slot), so a changed schedule
    starts afresh; otherwise the slot after the cursor, or after ``anchor``
    when nothing was decided.  Nothing fires before ``starts_at``: those
    instants are not slots at all.  The API shows a job's next slot by the
    same rule (``dkron.schedule.upcoming_fires``).
    """
    nxt: datetime | None
    if first is not None and (cursor is None or first > cursor):
        nxt = first
    else:
        nxt = schedule.next_after(anchor if cursor is None else cursor)
    if starts_at is not None and nxt is not None and nxt < starts_at:
        nxt = schedule.first_from(starts_at)
    return nxt


class CatchUp(enum.Enum):
    SKIP = "skip"
    LATEST = "latest"
    ALL = "all"


class Trigger(enum.Enum):
    SCHEDULE = "schedule"
    CATCHUP = "catchup"


class MissReason(enum.Enum):
    MISSED = "missed"
    PAUSED = "paused"
    DISABLED = "disabled"
    EXPIRED = "expired"


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class SchedulerConfig:
    """Timing policy of the engine.

    ``lookahead`` lets the driver claim a slot slightly before it is due so
    that the Raft commit does not delay the dispatch itself.  ``late_grace``
    separates a late slot (fire it) from a missed one (catch-up policy).
    ``max_catchup_slots`` bounds the work one job can cause when a long outage
    is replayed; slots beyond it are counted, not enumerated.
    """

    lookahead: timedelta = timedelta(0)
    late_grace: timedelta = timedelta(seconds=10)
    max_catchup_slots: int = 1000

    def __post_init__(self) -> None:
        if self.lookahead < timedelta(0) or self.late_grace < timedelta(0):
            raise ValueError("lookahead and late_grace must not be negative")
        if self.max_catchup_slots < 1:
            raise ValueError("max_catchup_slots must be at least 1")


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class ScheduledJob:
    """The slice of a job the engine needs, with its replicated cursor.

    ``cursor`` is the last slot decided through Raft.  ``first`` is the first
    slot the job's current schedule computed when it was saved (Dkron's
    ``next``); it wins over the cursor when it is later, so a changed
    schedule starts afresh instead of replaying the old cursor's gap.  With
    neither, slots count from ``anchor`` (normally the time leadership began).
    Child jobs and ``@manually`` jobs are never given to the engine.
    """

    name: str
    schedule: ScheduleLike
    anchor: datetime
    cursor: datetime | None = None
    first: datetime | None = None
    disabled: bool = False
    starts_at: datetime | None = None
    expires_at: datetime | None = None
    catchup: CatchUp = CatchUp.SKIP
    catchup_window: timedelta = timedelta(hours=1)
    # Whether the engine's lookahead applies.  A ``concurrency: forbid`` job
    # is claimed only when due: its claim checks that no run of it is still
    # going, and a run that ends just before the slot must not block it.
    claim_early: bool = True


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class FireSlot:
    """A slot to claim through Raft and then dispatch."""

    job: str
    scheduled: datetime
    trigger: Trigger


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class MissedSlots:
    """Slots that will not run, counted by reason (``count`` covers first..last)."""

    job: str
    reason: MissReason
    first: datetime
    last: datetime
    count: int


_Out = FireSlot | MissedSlots

# FireSlot(job, scheduled, trigger) without the frozen __init__'s per-field
# object.__setattr__: one is built for every slot (FireSlot has no checks).
_fire_slot: Callable[[str, datetime, Trigger], FireSlot] = slot_maker(FireSlot)


@dataclasses.dataclass(slots=True)
class _Entry:
    job: ScheduledJob
    version: int
    # The next slot not yet handled.
    next: datetime | None


class Scheduler:
    """Leader-side schedule engine; rebuild it whenever leadership is gained."""

    def __init__(self, config: SchedulerConfig | None = None) -> None:
        self.config = config or SchedulerConfig()
        self._jobs: dict[str, _Entry] = {}
        self._heap: list[tuple[datetime, int, str, int]] = []
        self._seq = itertools.count()
        self._versions = itertools.count(1)
        self._out: list[_Out] = []
        self.paused = False
        self.fired = 0

    # -- inputs ------------------------------------------------------------------

    def load(self, jobs: Iterable[ScheduledJob], wall: datetime) -> None:
        """Start leading: place every job, resolving slots missed since its cursor."""
        for job in jobs:
            self.set_job(job, wall)

    def set_job(self, job: ScheduledJob, wall: datetime) -> None:
        """Add or replace a job; slots between its cursor and ``wall`` are resolved now.

        Replacing a job first drops what the old entry emitted and nobody has
        drained yet: the new entry resolves the same slots again from the
        job's cursor, and both would otherwise reach the caller (a slot
        claimed by one and counted missed by the other).
        """
        if job.name in self._jobs:
            self._drop_queued(job.name)
        version = next(self._versions)
        nxt = resume_slot(
            job.schedule,
            anchor=job.anchor,
            cursor=job.cursor,
            first=job.first,
            starts_at=job.starts_at,
        )
        entry = _Entry(job, version, nxt)
        self._jobs[job.name] = entry
        self._catch_up(entry, wall)
        self._push(entry)

    def remove_job(self, name: str) -> None:
        if self._jobs.pop(name, None) is not None:
            self._drop_queued(name)

    def set_paused(self, paused: bool) -> None:
        self.paused = paused

    def advance(self, wall: datetime) -> None:
        """Time passed: emit every slot due by ``wall`` (plus lookahead, for the jobs it
        applies to; the heap is keyed by when a slot may be claimed)."""
        lookahead = self.config.lookahead
        early = wall + lookahead
        # A thousand jobs can be due at one instant: what _catch_up and _push
        # would compute per job is computed once here.
        cutoff = wall - self.config.late_grace
        heap = self._heap
        jobs = self._jobs
        seq = self._seq
        while heap and heap[0][0] <= wall:
            _, _, name, version = heapq.heappop(heap)
            entry = jobs.get(name)
            if entry is None or entry.version != version or entry.next is None:
                continue
            if entry.next <= cutoff:
                self._catch_up(entry, wall)
            job = entry.job
            if job.claim_early:
                self._fire_due(entry, early)
                if entry.next is not None:
                    heapq.heappush(heap, (entry.next - lookahead, next(seq), name, version))
            else:
                self._fire_due(entry, wall)
                if entry.next is not None:
                    heapq.heappush(heap, (entry.next, next(seq), name, version))

    # -- outputs -----------------------------------------------------------------

    def next_deadline(self) -> datetime | None:
        """When :meth:`advance` next has work (already shifted back by the lookahead)."""
        heap = self._heap
        while heap:
            at, _, name, version = heap[0]
            entry = self._jobs.get(name)
            if entry is not None and entry.version == version and entry.next is not None:
                return at
            heapq.heappop(heap)
        return None

    def drain(self) -> list[_Out]:
        out, self._out = self._out, []
        return out

    def __len__(self) -> int:
        return len(self._jobs)

    # -- internals ---------------------------------------------------------------

    def _drop_queued(self, name: str) -> None:
        """Forget what a job's entry emitted that nobody has drained yet."""
        if self._out:
            self._out = [o for o in self._out if o.job != name]

    def _push(self, entry: _Entry) -> None:
        if entry.next is not None:
            at = entry.next - self.config.lookahead if entry.job.claim_early else entry.next
            heapq.heappush(self._heap, (at, next(self._seq), entry.job.name, entry.version))

    def _blocked(self, job: ScheduledJob, slot: datetime) -> MissReason | None:
        if job.expires_at is not None and slot > job.expires_at:
            return MissReason.EXPIRED
        if job.disabled:
            return MissReason.DISABLED
        if self.paused:
            return MissReason.PAUSED
        return None

    def _fire_due(self, entry: _Entry, horizon: datetime) -> None:
        """Fire (or count) the slots due by ``horizon``; they are late at most by the grace."""
        job = entry.job
        if job.expires_at is None and not job.disabled and not self.paused:
            # Nothing can block a slot of this job (what _blocked would find for
            # each): the common case, without the per-slot checks.
            out = self._out
            schedule = job.schedule
            name = job.name
            slot = entry.next
            while slot is not None and slot <= horizon:
                out.append(_fire_slot(name, slot, Trigger.SCHEDULE))
                self.fired += 1
                slot = entry.next = schedule.next_after(slot)
            return
        while entry.next is not None and entry.next <= horizon:
            slot = entry.next
            reason = self._blocked(job, slot)
            if reason is MissReason.EXPIRED:
                self._out.append(
                    MissedSlots(job=job.name, reason=reason, first=slot, last=slot, count=1)
                )
                entry.next = None  # nothing after expires_at can ever fire
                return
            if reason is not None:
                self._out.append(
                    MissedSlots(job=job.name, reason=reason, first=slot, last=slot, count=1)
                )
            else:
                self._out.append(FireSlot(job=job.name, scheduled=slot, trigger=Trigger.SCHEDULE))
                self.fired += 1
            entry.next = job.schedule.next_after(slot)

    def _catch_up(self, entry: _Entry, wall: datetime) -> None:
        """Resolve slots older than the grace period according to the catch-up policy."""
        job = entry.job
        cutoff = wall - self.config.late_grace
        if entry.next is None or entry.next > cutoff:
            return
        # Walk the missed slots, keeping only the newest few: with `all` those
        # are the ones inside the window, and a long outage must not cost memory.
        newest: collections.deque[datetime] = collections.deque(
            maxlen=self.config.max_catchup_slots
        )
        first = entry.next
        total = 0
        slot: datetime | None = entry.next
        expired: datetime | None = None
        while slot is not None and slot <= cutoff:
            if job.expires_at is not None and slot > job.expires_at:
                expired = slot
                break
            newest.append(slot)
            total += 1
            slot = job.schedule.next_after(slot)
        entry.next = slot
        if expired is not None:
            # Past the expiry: one expired slot is counted, then nothing more fires.
            self._out.append(
                MissedSlots(
                    job=job.name, reason=MissReason.EXPIRED, first=expired, last=expired, count=1
                )
            )
            entry.next = None
        if total == 0:
            return
        last = newest[-1]
        reason = self._blocked(job, last)
        run: list[datetime] = []
        if reason is None:
            if job.catchup is CatchUp.LATEST:
                run = [last]
            elif job.catchup is CatchUp.ALL:
                window_start = wall - job.catchup_window
                run = [s for s in newest if s >= window_start]
        skipped = total - len(run)
        if skipped:
            kept = [s for s in newest if s < run[0]] if run else list(newest)
            self._out.append(
                MissedSlots(
                    job=job.name,
                    reason=reason or MissReason.MISSED,
                    first=first,
                    last=kept[-1] if kept else first,
                    count=skipped,
                )
            )
        for s in run:
            self._out.append(FireSlot(job=job.name, scheduled=s, trigger=Trigger.CATCHUP))
            self.fired += 1
