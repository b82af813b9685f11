"""The DST policy, property-tested against ``zoneinfo`` and a brute-force reference.

The reference walks every UTC second of a window around a real transition of
a zone and decides from first principles whether that instant fires:

* its local wall time matches the spec and this is the wall time's first
  occurrence (``fold == 0``), or
* it is the first instant after a gap and some skipped wall time matches.

The schedule under test must produce exactly that list -- which implies the
results are strictly increasing, each is a match or a gap end, no wall time
fires twice and nothing matching is skipped.  Field sets are parsed here
independently of ``dkron.schedule``.
"""

from __future__ import annotations

import itertools
import zoneinfo
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

from hypothesis import example, given, settings
from hypothesis import strategies as st

from dkron.schedule import fire_times

DST_ZONES = [
    "America/New_York",
    "Europe/London",
    "Australia/Lord_Howe",
    "America/Santiago",
    "Asia/Tehran",
    "Pacific/Apia",
    "Pacific/Chatham",
    "America/Havana",
    "Europe/Dublin",
    "Africa/Casablanca",
]
ALL_ZONES = sorted(zoneinfo.available_timezones())
ONE = timedelta(seconds=1)
HALF_WINDOW = timedelta(hours=2)


class Job:
    def __init__(self, name: str, schedule: str, timezone: str) -> None:
        self.name = name
        self.schedule = schedule
        self.timezone = timezone


def _field(text: str, lo: int, hi: int) -> set[int]:
    if text == "*":
        return set(range(lo, hi + 1))
    out: set[int] = set()
    for part in text.split(","):
        if part.startswith("*/"):
            out.update(range(lo, hi + 1, int(part[2:])))
        else:
            out.add(int(part))
    return out


def _matcher(spec: str) -> object:
    sec, minute, hour = spec.split()[:3]
    s, m, h = _field(sec, 0, 59), _field(minute, 0, 59), _field(hour, 0, 23)

    def match(w: datetime) -> bool:
        return w.second in s and w.minute in m and w.hour in h

    return match


def _local(t: datetime, zone: ZoneInfo) -> datetime:
    return t.astimezone(zone)


def reference(spec: str, zone: ZoneInfo, after: datetime, until: datetime) -> list[datetime]:
    match = _matcher(spec)
    out: list[datetime] = []
    prev = _local(after, zone).replace(tzinfo=None, microsecond=0)
    t = after.replace(microsecond=0) + ONE
    while t <= until:
        lt = _local(t, zone)
        w = lt.replace(tzinfo=None)
        fires = lt.fold == 0 and match(w)  # type: ignore[operator]
        if not fires and w > prev + ONE:
            # a gap: wall times (prev, w) were skipped
            skipped = prev + ONE
            while skipped < w:
                if match(skipped):  # type: ignore[operator]
                    fires = True
                    break
                skipped += ONE
        if fires:
            out.append(t)
        prev = max(prev, w)
        t += ONE
    return out


def next_transition(zone: ZoneInfo, start: datetime) -> datetime | None:
    """The first UTC instant after ``start`` (within ~14 months) where the offset changes."""
    off = start.astimezone(zone).utcoffset()
    t = start
    for _ in range(430):
        nxt = t + timedelta(days=1)
        if nxt.astimezone(zone).utcoffset() != off:
            lo, hi = t, nxt
            while hi - lo > ONE:
                mid = lo + (hi - lo) / 2
                mid = mid.replace(microsecond=0)
                if mid.astimezone(zone).utcoffset() == off:
                    lo = mid
                else:
                    hi = mid
            return hi
        t = nxt
    return None


_SEC = st.sampled_from(["0", "*/20", "7", "0,30", "59", "*/7"])
_MIN = st.sampled_from(["*", "*/10", "0", "30", "15,45", "59", "*/7", "0,29,30,31"])


@st.composite
def cases(draw: st.DrawFn) -> tuple[str, str, datetime, datetime]:
    name = draw(st.sampled_from(DST_ZONES) | st.sampled_from(ALL_ZONES))
    zone = ZoneInfo(name)
    year = draw(st.integers(1975, 2037))
    start = datetime(year, draw(st.integers(1, 12)), 1, tzinfo=UTC)
    trans = next_transition(zone, start) or start
    center = trans + timedelta(seconds=draw(st.integers(-3600, 3600)))
    before = (trans - ONE).astimezone(zone)
    hours_near = sorted(
        {(before.hour + d) % 24 for d in draw(st.sets(st.integers(-2, 2), min_size=1))}
    )
    hour = draw(st.sampled_from(["*", ",".join(map(str, hours_near))]))
    spec = f"{draw(_SEC)} {draw(_MIN)} {hour} * * *"
    return spec, name, center - HALF_WINDOW, center + HALF_WINDOW


def _check(spec: str, name: str, after: datetime, until: datetime) -> None:
    zone = ZoneInfo(name)
    got = list(fire_times(Job("dst", spec, name), after, until))
    want = reference(spec, zone, after, until)
    assert got == want, (spec, name, after, [str(x) for x in got], [str(x) for x in want])


@settings(max_examples=max(10, settings().max_examples // 2))
@given(cases())
@example(
    (
        "0 30 2 * * *",
        "America/New_York",
        datetime(2024, 3, 10, 5, tzinfo=UTC),
        datetime(2024, 3, 10, 9, tzinfo=UTC),
    )
)
@example(
    (
        "0 */7 1 * * *",
        "America/New_York",
        datetime(2024, 11, 3, 4, tzinfo=UTC),
        datetime(2024, 11, 3, 8, tzinfo=UTC),
    )
)
@example(
    (
        "0 0,29,30,31 2 * * *",
        "Australia/Lord_Howe",
        datetime(2024, 10, 5, 14, tzinfo=UTC),
        datetime(2024, 10, 5, 17, tzinfo=UTC),
    )
)
@example(
    (
        "0 0,29,30,31 1 * * *",
        "Australia/Lord_Howe",
        datetime(2024, 4, 6, 13, tzinfo=UTC),
        datetime(2024, 4, 6, 17, tzinfo=UTC),
    )
)
def test_fire_times_equal_the_brute_force_reference(
    case: tuple[str, str, datetime, datetime],
) -> None:
    _check(*case)


@settings(max_examples=max(10, settings().max_examples // 2))
@given(
    spec=st.sampled_from(["0 0 * * * *", "0 */20 * * * *", "*/30 * * * * *", "0 30 1,2 * * *"]),
    name=st.sampled_from(DST_ZONES) | st.sampled_from(ALL_ZONES),
    start=st.datetimes(datetime(1980, 1, 1), datetime(2036, 1, 1), timezones=st.just(UTC)),
)
def test_results_strictly_increase_and_never_repeat_a_wall_time(
    spec: str, name: str, start: datetime
) -> None:
    zone = ZoneInfo(name)
    got = list(fire_times(Job("p", spec, name), start, start + timedelta(days=2), limit=200))
    assert all(a < b for a, b in itertools.pairwise(got))
    walls = [t.astimezone(zone).replace(tzinfo=None) for t in got]
    assert len(set(walls)) == len(walls)
    for t in got:
        assert t.tzinfo is UTC
        # each result is either a match in wall time or the first instant after a gap
        w = t.astimezone(zone)
        before = (t - ONE).astimezone(zone).replace(tzinfo=None)
        gap_end = w.replace(tzinfo=None) > before + ONE
        assert gap_end or _matcher(spec)(w.replace(tzinfo=None))  # type: ignore[operator]


def test_the_reference_sees_a_gap_and_an_overlap() -> None:
    ny = ZoneInfo("America/New_York")
    gap = reference(
        "0 30 2 * * *",
        ny,
        datetime(2024, 3, 10, 5, tzinfo=UTC),
        datetime(2024, 3, 10, 9, tzinfo=UTC),
    )
    assert gap == [datetime(2024, 3, 10, 7, tzinfo=UTC)]
    overlap = reference(
        "0 30 1 * * *",
        ny,
        datetime(2024, 11, 3, 4, tzinfo=UTC),
        datetime(2024, 11, 3, 8, tzinfo=UTC),
    )
    assert overlap == [datetime(2024, 11, 3, 5, 30, tzinfo=UTC)]
