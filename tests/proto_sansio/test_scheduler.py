"""The leader's schedule engine: every slot handled exactly once, catch-up by policy."""

from __future__ import annotations

import dataclasses
import heapq
from datetime import UTC, datetime, timedelta
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

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

T0 = datetime(2026, 1, 1, tzinfo=UTC)
# Tests that jump the clock far ahead in one call would otherwise see those
# slots as missed (a driver that woke up late); they are about other rules.
PATIENT = SchedulerConfig(late_grace=timedelta(hours=1))


@dataclasses.dataclass(frozen=True)
class Every:
    """Fixed-interval schedule anchored at the epoch second, like ``@every``."""

    seconds: int

    def next_after(self, wall: datetime, /) -> datetime | None:
        base = wall.replace(microsecond=0)
        step = timedelta(seconds=self.seconds)
        # Slots sit on multiples of the interval from T0 so tests can enumerate them.
        k = int((base - T0).total_seconds()) // self.seconds + 1
        return T0 + k * step

    def first_from(self, start: datetime, /) -> datetime | None:
        return self.next_after(start - timedelta(microseconds=1))


def slots_between(every: int, after: datetime, until: datetime) -> list[datetime]:
    out = []
    t = Every(every).next_after(after)
    while t is not None and t <= until:
        out.append(t)
        t = Every(every).next_after(t)
    return out


def fires(out: list[FireSlot | MissedSlots]) -> list[tuple[str, datetime, Trigger]]:
    return [(o.job, o.scheduled, o.trigger) for o in out if isinstance(o, FireSlot)]


def missed(out: list[FireSlot | MissedSlots]) -> list[MissedSlots]:
    return [o for o in out if isinstance(o, MissedSlots)]


@given(
    intervals=st.lists(st.integers(1, 30), min_size=1, max_size=5),
    steps=st.lists(st.floats(0.01, 9.0), min_size=1, max_size=60),
)
def test_every_slot_fires_once_in_order_and_never_early(
    intervals: list[int], steps: list[float]
) -> None:
    sched = Scheduler()
    for i, every in enumerate(intervals):
        sched.set_job(ScheduledJob(name=f"j{i}", schedule=Every(every), anchor=T0), T0)
    wall = T0
    seen: list[tuple[str, datetime, Trigger]] = []
    for step in steps:
        wall += timedelta(seconds=step)
        sched.advance(wall)
        out = sched.drain()
        assert not missed(out)
        for job, slot, trigger in fires(out):
            assert slot <= wall
            assert trigger is Trigger.SCHEDULE
            seen.append((job, slot, trigger))
        deadline = sched.next_deadline()
        assert deadline is not None and deadline > wall
    for i, every in enumerate(intervals):
        got = [slot for job, slot, _ in seen if job == f"j{i}"]
        assert got == slots_between(every, T0, wall)


def test_lookahead_emits_slots_early_by_at_most_the_lookahead() -> None:
    sched = Scheduler(SchedulerConfig(lookahead=timedelta(milliseconds=200)))
    sched.set_job(ScheduledJob(name="a", schedule=Every(5), anchor=T0), T0)
    assert sched.next_deadline() == T0 + timedelta(seconds=5) - timedelta(milliseconds=200)
    sched.advance(T0 + timedelta(seconds=4.9))
    assert fires(sched.drain()) == [("a", T0 + timedelta(seconds=5), Trigger.SCHEDULE)]


def test_a_job_that_is_not_claimed_early_fires_only_when_due() -> None:
    """``claim_early=False`` (``concurrency: forbid``): its claim checks for a run still
    going, so it must not be made before the slot; the others keep the lookahead."""
    sched = Scheduler(SchedulerConfig(lookahead=timedelta(milliseconds=200)))
    sched.set_job(ScheduledJob(name="f", schedule=Every(5), anchor=T0, claim_early=False), T0)
    sched.set_job(ScheduledJob(name="a", schedule=Every(5), anchor=T0), T0)
    due = T0 + timedelta(seconds=5)
    assert sched.next_deadline() == due - timedelta(milliseconds=200)
    sched.advance(T0 + timedelta(seconds=4.9))
    assert fires(sched.drain()) == [("a", due, Trigger.SCHEDULE)]
    assert sched.next_deadline() == due
    sched.advance(due - timedelta(microseconds=1))
    assert fires(sched.drain()) == []
    sched.advance(due)
    assert fires(sched.drain()) == [("f", due, Trigger.SCHEDULE)]
    assert sched.next_deadline() == due + timedelta(seconds=5) - timedelta(milliseconds=200)


def _rebuild(catchup: CatchUp, *, outage: int, window: int = 3600) -> list[FireSlot | MissedSlots]:
    """A new leader takes over ``outage`` seconds after the last claimed slot."""
    sched = Scheduler()
    job = ScheduledJob(
        name="j",
        schedule=Every(10),
        anchor=T0,
        cursor=T0 + timedelta(seconds=100),
        catchup=catchup,
        catchup_window=timedelta(seconds=window),
    )
    wall = T0 + timedelta(seconds=100 + outage)
    sched.load([job], wall)
    sched.advance(wall)
    return sched.drain()


def test_new_leader_resumes_from_the_cursor_not_from_now_skip() -> None:
    out = _rebuild(CatchUp.SKIP, outage=65)
    # Slots 110..150 are older than the 10 s grace: missed; 160 is only late: fires.
    (miss,) = missed(out)
    assert (miss.reason, miss.count) == (MissReason.MISSED, 5)
    assert miss.first == T0 + timedelta(seconds=110)
    assert miss.last == T0 + timedelta(seconds=150)
    assert fires(out) == [("j", T0 + timedelta(seconds=160), Trigger.SCHEDULE)]


def test_catchup_latest_runs_only_the_most_recent_missed_slot() -> None:
    out = _rebuild(CatchUp.LATEST, outage=65)
    (miss,) = missed(out)
    assert miss.count == 4
    assert fires(out) == [
        ("j", T0 + timedelta(seconds=150), Trigger.CATCHUP),
        ("j", T0 + timedelta(seconds=160), Trigger.SCHEDULE),
    ]


def test_catchup_all_runs_every_missed_slot_inside_the_window() -> None:
    out = _rebuild(CatchUp.ALL, outage=65, window=40)
    # The window reaches back to 125 s: 130, 140, 150 catch up; 110, 120 are missed.
    (miss,) = missed(out)
    assert miss.count == 2
    assert [s for _, s, t in fires(out) if t is Trigger.CATCHUP] == [
        T0 + timedelta(seconds=s) for s in (130, 140, 150)
    ]


def test_a_long_outage_is_counted_without_enumerating_it_all() -> None:
    sched = Scheduler(SchedulerConfig(max_catchup_slots=50))
    job = ScheduledJob(name="j", schedule=Every(1), anchor=T0, catchup=CatchUp.ALL)
    sched.set_job(job, T0 + timedelta(days=1))
    sched.advance(T0 + timedelta(days=1))
    out = sched.drain()
    catchups = [s for _, s, t in fires(out) if t is Trigger.CATCHUP]
    total_missed = sum(m.count for m in missed(out))
    late = [s for _, s, t in fires(out) if t is Trigger.SCHEDULE]
    # Every slot is accounted for exactly once: run, late, or counted as missed.
    assert len(catchups) + total_missed + len(late) == 86400
    assert len(catchups) == 50


def test_disabled_paused_and_expired_slots_are_counted_with_their_reason() -> None:
    sched = Scheduler(PATIENT)
    sched.set_job(ScheduledJob(name="d", schedule=Every(10), anchor=T0, disabled=True), T0)
    sched.set_job(
        ScheduledJob(
            name="e", schedule=Every(10), anchor=T0, expires_at=T0 + timedelta(seconds=25)
        ),
        T0,
    )
    sched.advance(T0 + timedelta(seconds=40))
    out = sched.drain()
    by_job: dict[str, list[MissReason]] = {}
    for m in missed(out):
        by_job.setdefault(m.job, []).extend([m.reason] * m.count)
    assert by_job["d"] == [MissReason.DISABLED] * 4
    assert by_job["e"] == [MissReason.EXPIRED]
    assert fires(out) == [
        ("e", T0 + timedelta(seconds=10), Trigger.SCHEDULE),
        ("e", T0 + timedelta(seconds=20), Trigger.SCHEDULE),
    ]
    sched.set_paused(True)
    sched.advance(T0 + timedelta(seconds=50))
    assert [m.reason for m in missed(sched.drain())] == [MissReason.DISABLED]
    sched.set_job(ScheduledJob(name="p", schedule=Every(10), anchor=T0 + timedelta(seconds=50)), T0)
    sched.advance(T0 + timedelta(seconds=60))
    reasons = {(m.job, m.reason) for m in missed(sched.drain())}
    assert ("p", MissReason.PAUSED) in reasons


def test_nothing_fires_before_starts_at() -> None:
    sched = Scheduler(PATIENT)
    start = T0 + timedelta(seconds=35)
    sched.set_job(ScheduledJob(name="s", schedule=Every(10), anchor=T0, starts_at=start), T0)
    sched.advance(T0 + timedelta(seconds=60))
    out = sched.drain()
    assert not missed(out)
    assert [s for _, s, _ in fires(out)] == [T0 + timedelta(seconds=s) for s in (40, 50, 60)]


def test_replacing_or_removing_a_job_retires_its_old_entry() -> None:
    sched = Scheduler(PATIENT)
    sched.set_job(ScheduledJob(name="a", schedule=Every(10), anchor=T0), T0)
    sched.set_job(ScheduledJob(name="a", schedule=Every(7), anchor=T0), T0)
    sched.set_job(ScheduledJob(name="b", schedule=Every(3), anchor=T0), T0)
    sched.remove_job("b")
    sched.advance(T0 + timedelta(seconds=21))
    assert [s for _, s, _ in fires(sched.drain())] == [
        T0 + timedelta(seconds=s) for s in (7, 14, 21)
    ]
    sched.remove_job("a")
    assert sched.next_deadline() is None
    assert len(sched) == 0


@given(
    spec=st.sampled_from(
        [
            "@every 7s",
            "*/13 * * * * *",
            "0 */2 * * * *",
            "30 0 1 * * *",
            "0 0 ~ * * *",
            "H H * * * *",
        ]
    ),
    zone=st.sampled_from(["UTC", "Europe/London", "America/New_York", "Australia/Lord_Howe"]),
    start=st.datetimes(
        min_value=datetime(2025, 1, 1), max_value=datetime(2027, 12, 31), timezones=st.just(UTC)
    ),
    step=st.integers(1, 600),
)
def test_engine_fires_exactly_what_fire_times_lists(
    spec: str, zone: str, start: datetime, step: int
) -> None:
    from dkron.schedule import fire_times, parse_schedule

    @dataclasses.dataclass(frozen=True)
    class Job:
        name: str
        schedule: str
        timezone: str

    job = Job("report", spec, zone)
    sched = Scheduler(SchedulerConfig(late_grace=timedelta(seconds=step + 1)))
    parsed = parse_schedule(spec, job_name=job.name, timezone=zone)
    sched.set_job(ScheduledJob(name=job.name, schedule=parsed, anchor=start), start)
    until = start + timedelta(hours=6)
    wall = start
    got: list[datetime] = []
    while wall < until:
        wall = min(until, wall + timedelta(seconds=step))
        sched.advance(wall)
        out = sched.drain()
        assert not missed(out)
        got.extend(s for _, s, _ in fires(out))
    assert got == list(fire_times(job, start, until))


class _GeneralScheduler(Scheduler):
    """The engine as it was before its per-slot shortcuts: every slot through
    ``_blocked``, every job through ``_catch_up`` and ``_push``."""

    def advance(self, wall: datetime) -> None:
        early = wall + self.config.lookahead
        heap = self._heap
        while heap and heap[0][0] <= wall:
            _, _, name, version = heapq.heappop(heap)
            entry = self._jobs.get(name)
            if entry is None or entry.version != version or entry.next is None:
                continue
            self._catch_up(entry, wall)
            self._fire_due(entry, early if entry.job.claim_early else wall)
            self._push(entry)

    def _fire_due(self, entry: Any, horizon: datetime) -> None:
        job = entry.job
        while entry.next is not None and entry.next <= horizon:
            slot = entry.next
            reason = self._blocked(job, slot)
            if reason is MissReason.EXPIRED:
                self._out.append(
                    MissedSlots(job=job.name, reason=reason, first=slot, last=slot, count=1)
                )
                entry.next = None
                return
            if reason is not None:
                self._out.append(
                    MissedSlots(job=job.name, reason=reason, first=slot, last=slot, count=1)
                )
            else:
                self._out.append(FireSlot(job=job.name, scheduled=slot, trigger=Trigger.SCHEDULE))
                self.fired += 1
            entry.next = job.schedule.next_after(slot)


_job_specs = st.lists(
    st.tuples(
        st.sampled_from([1, 2, 5, 7]),  # interval
        st.booleans(),  # disabled
        st.one_of(st.none(), st.integers(0, 120)),  # expires after T0, seconds
        st.booleans(),  # claim_early
        st.sampled_from(list(CatchUp)),
        st.one_of(st.none(), st.integers(-60, 30)),  # cursor relative to T0
    ),
    min_size=1,
    max_size=6,
)


@given(
    specs=_job_specs,
    steps=st.lists(
        st.tuples(st.integers(0, 40), st.booleans(), st.integers(0, 5)), min_size=1, max_size=12
    ),
    lookahead=st.sampled_from([0, 1, 3]),
)
def test_advance_shortcuts_emit_exactly_what_the_general_path_emits(
    specs: list[tuple[int, bool, int | None, bool, CatchUp, int | None]],
    steps: list[tuple[int, bool, int]],
    lookahead: int,
) -> None:
    config = SchedulerConfig(
        lookahead=timedelta(seconds=lookahead), late_grace=timedelta(seconds=8)
    )
    fast, general = Scheduler(config), _GeneralScheduler(config)
    jobs = [
        ScheduledJob(
            name=f"j{i}",
            schedule=Every(interval),
            anchor=T0,
            cursor=None if cursor is None else T0 + timedelta(seconds=cursor),
            disabled=disabled,
            expires_at=None if expires is None else T0 + timedelta(seconds=expires),
            claim_early=early,
            catchup=catchup,
            catchup_window=timedelta(seconds=20),
        )
        for i, (interval, disabled, expires, early, catchup, cursor) in enumerate(specs)
    ]
    fast.load(jobs, T0)
    general.load(jobs, T0)
    assert fast.drain() == general.drain()
    wall = T0
    for gap, pause, replace in steps:
        wall += timedelta(seconds=gap)
        fast.set_paused(pause)
        general.set_paused(pause)
        if replace < len(jobs):  # an edit mid-run leaves a stale heap entry behind
            fast.set_job(jobs[replace], wall)
            general.set_job(jobs[replace], wall)
        fast.advance(wall)
        general.advance(wall)
        assert fast.drain() == general.drain()
        assert fast.next_deadline() == general.next_deadline()
        assert fast.fired == general.fired
