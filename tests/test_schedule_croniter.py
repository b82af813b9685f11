"""croniter as an oracle: where Dkron's rules and croniter agree, so must we.

croniter is fed the same six fields (seconds first) over naive UTC wall time,
so that only field semantics are compared.  The cases where Dkron (robfig)
and croniter differ are pinned as explicit examples below.
"""

from __future__ import annotations

from datetime import UTC, datetime

from croniter import croniter
from hypothesis import assume, given
from hypothesis import strategies as st

from dkron.schedule import parse_schedule

_SEC = st.sampled_from(["0", "*/15", "5/20", "0,30", "10-20/5", "*"])
_MIN = st.sampled_from(["0", "*/10", "7", "0-59/30", "*", "45"])
_HOUR = st.sampled_from(["*", "0", "*/6", "9-17", "23", "3,15"])
_DOM = st.sampled_from(["*", "1", "15", "1,15", "*/10", "28-31", "31"])
_MONTH = st.sampled_from(["*", "1", "2", "*/3", "jan,jul", "12"])
_DOW = st.sampled_from(["*", "1", "0", "1-5", "sat,sun", "*/2"])


def _ours(spec: str, start: datetime, n: int) -> list[datetime]:
    sched = parse_schedule(spec)
    out: list[datetime] = []
    t = start.replace(tzinfo=UTC)
    for _ in range(n):
        nxt = sched.next_after(t)
        assert nxt is not None
        out.append(nxt.replace(tzinfo=None))
        t = nxt
    return out


def _croniter(spec: str, start: datetime, n: int) -> list[datetime]:
    it = croniter(spec, start, second_at_beginning=True)
    return [it.get_next(datetime) for _ in range(n)]


@given(
    fields=st.tuples(_SEC, _MIN, _HOUR, _DOM, _MONTH, _DOW),
    start=st.datetimes(datetime(2000, 1, 1), datetime(2030, 1, 1)).map(
        lambda d: d.replace(microsecond=0)
    ),
)
def test_agrees_with_croniter_in_utc(
    fields: tuple[str, str, str, str, str, str], start: datetime
) -> None:
    spec = " ".join(fields)
    # e.g. Feb 31: accepted, never fires (test_schedule); croniter searches and gives up
    assume(parse_schedule(spec).next_after(start.replace(tzinfo=UTC)) is not None)
    assert _ours(spec, start, 5) == _croniter(spec, start, 5)


def test_where_croniter_differs_we_follow_dkron() -> None:
    start = datetime(2024, 1, 1)  # a Monday
    # "*/1" is starred for robfig (AND: Mondays only); croniter ORs it (every day).
    assert [t.day for t in _ours("0 0 0 */1 * 1", start, 2)] == [8, 15]
    assert [t.day for t in _croniter("0 0 0 */1 * 1", start, 2)] == [2, 3]
    # croniter accepts dow 7, L and five fields; Dkron rejects them (see test_schedule).
    assert _croniter("0 0 0 * * 7", start, 1) == [datetime(2024, 1, 7)]
