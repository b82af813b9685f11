"""Dkron's schedule rules (features §2.3-2.5, §2.8), one example per rule."""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone
from zoneinfo import ZoneInfo

import pytest
from hypothesis import assume, example, given
from hypothesis import strategies as st

from dkron.proto_sansio.scheduler import FireSlot, ScheduledJob, Scheduler, SchedulerConfig
from dkron.schedule import (
    AtSchedule,
    CronSchedule,
    EverySchedule,
    NeverSchedule,
    ScheduleError,
    ScheduleKind,
    fire_times,
    job_schedule,
    parse_go_duration,
    parse_schedule,
    schedule_hash,
    upcoming_fires,
    validate_timezone,
)

T0 = datetime(2024, 1, 1, 0, 0, 0, tzinfo=UTC)  # a Monday


@dataclass(frozen=True)
class Job:
    name: str
    schedule: str
    timezone: str = ""


def nexts(spec: str, start: datetime = T0, n: int = 3, **kw: object) -> list[datetime]:
    sched = parse_schedule(spec, **kw)  # type: ignore[arg-type]
    out: list[datetime] = []
    t = start
    for _ in range(n):
        nxt = sched.next_after(t)
        assert nxt is not None
        out.append(nxt)
        t = nxt
    return out


def utc(y: int, mo: int, d: int, h: int = 0, mi: int = 0, s: int = 0) -> datetime:  # noqa: PLR0917
    return datetime(y, mo, d, h, mi, s, tzinfo=UTC)


def error_of(spec: str, **kw: object) -> str:
    with pytest.raises(ScheduleError) as info:
        parse_schedule(spec, **kw)  # type: ignore[arg-type]
    return str(info.value)


# -- parse errors with Dkron's messages -------------------------------------


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("", "empty spec string"),
        ("0 * * * *", "expected exactly 6 fields, found 5: [0 * * * *]"),
        ("0  0 0 1 1 * *", "expected exactly 6 fields, found 7: [0 0 0 1 1 * *]"),
        (" @daily", "expected exactly 6 fields, found 1: [@daily]"),
        ("TZ=UTC", "expected exactly 6 fields, found 0: []"),
        ("@foo", "unrecognized descriptor: @foo"),
        ("@Daily", "unrecognized descriptor: @Daily"),
        ("@every", "unrecognized descriptor: @every"),
        ("TZ=UTC @manually", "unrecognized descriptor: @manually"),
        ("TZ=UTC @minutely", "unrecognized descriptor: @minutely"),
        (
            "TZ=UTC @at 2024-01-01T00:00:00Z",
            "unrecognized descriptor: @at 2024-01-01T00:00:00Z",
        ),
        (
            "@every 1d",
            'failed to parse duration @every 1d: time: unknown unit "d" in duration "1d"',
        ),
        ("@every 10", 'failed to parse duration @every 10: time: missing unit in duration "10"'),
        ("@every .s", 'failed to parse duration @every .s: time: invalid duration ".s"'),
        ("0 0 0 * * 7", "end of range (7) above maximum (6): 7"),
        ("60 * * * * *", "end of range (60) above maximum (59): 60"),
        ("* * 24 * * *", "end of range (24) above maximum (23): 24"),
        ("0 0 0 0 * *", "beginning of range (0) below minimum (1): 0"),
        ("0 0 0 32 * *", "end of range (32) above maximum (31): 32"),
        ("0 0 0 * 13 *", "end of range (13) above maximum (12): 13"),
        ("0 0 0 * 0 *", "beginning of range (0) below minimum (1): 0"),
        ("5-1 * * * * *", "beginning of range (5) beyond end of range (1): 5-1"),
        ("1-2-3 * * * * *", "too many hyphens: 1-2-3"),
        ("1/2/3 * * * * *", "too many slashes: 1/2/3"),
        ("*/0 * * * * *", "step of range should be a positive number: */0"),
        (
            "a * * * * *",
            'failed to parse int from a: strconv.Atoi: parsing "a": invalid syntax',
        ),
        (
            "0 0 0 * * -1",
            'failed to parse int from : strconv.Atoi: parsing "": invalid syntax',
        ),
        ("*/-1 * * * * *", "negative number (-1) not allowed: -1"),
        (
            "99999999999999999999 * * * * *",
            "failed to parse int from 99999999999999999999: strconv.Atoi: parsing "
            '"99999999999999999999": value out of range',
        ),
        ("0 0 0 * * 1-7", "end of range (7) above maximum (6): 1-7"),
        ("0 0 0 L * *", 'failed to parse int from L: strconv.Atoi: parsing "L": invalid syntax'),
        (
            "0 0 0 * * 1#2",
            'failed to parse int from 1#2: strconv.Atoi: parsing "1#2": invalid syntax',
        ),
        ("TZ=Nowhere 0 * * * * *", "provided bad location Nowhere: unknown time zone Nowhere"),
        ("CRON_TZ=../etc 0 * * * * *", "provided bad location ../etc: time: invalid location name"),
    ],
)
def test_parse_errors_use_dkrons_messages(spec: str, message: str) -> None:
    assert error_of(spec) == message


@pytest.mark.parametrize(
    ("date", "message"),
    [
        (
            "nope",
            'parsing time "nope" as "2006-01-02T15:04:05Z07:00": cannot parse "nope" as "2006"',
        ),
        ("2024-13-01T00:00:00Z", 'parsing time "2024-13-01T00:00:00Z": month out of range'),
        ("2024-02-30T00:00:00Z", 'parsing time "2024-02-30T00:00:00Z": day out of range'),
        ("2023-02-29T00:00:00Z", 'parsing time "2023-02-29T00:00:00Z": day out of range'),
        ("2024-01-01T24:00:00Z", 'parsing time "2024-01-01T24:00:00Z": hour out of range'),
        ("2024-01-01T00:60:00Z", 'parsing time "2024-01-01T00:60:00Z": minute out of range'),
        ("2024-01-01T00:00:60Z", 'parsing time "2024-01-01T00:00:60Z": second out of range'),
        ("2024-01-01T00:00:00Zx", 'parsing time "2024-01-01T00:00:00Zx": extra text: "x"'),
        (
            "2024-01-01",
            'parsing time "2024-01-01" as "2006-01-02T15:04:05Z07:00": cannot parse "" as "T"',
        ),
        (
            "2024-01-01T00:00:00",
            'parsing time "2024-01-01T00:00:00" as "2006-01-02T15:04:05Z07:00": '
            'cannot parse "" as "Z07:00"',
        ),
        (
            "2024-01-01 00:00:00Z",
            'parsing time "2024-01-01 00:00:00Z" as "2006-01-02T15:04:05Z07:00": '
            'cannot parse " 00:00:00Z" as "T"',
        ),
        (
            "2024-01-01T00:00:00+25:00",
            'parsing time "2024-01-01T00:00:00+25:00": time zone offset hour out of range',
        ),
        (
            "2024-1-01T00:00:00Z",
            'parsing time "2024-1-01T00:00:00Z" as "2006-01-02T15:04:05Z07:00": '
            'cannot parse "1-01T00:00:00Z" as "01"',
        ),
        (
            "2024-01-01T00:00:00é",
            'parsing time "2024-01-01T00:00:00\\xc3\\xa9" as "2006-01-02T15:04:05Z07:00": '
            'cannot parse "\\xc3\\xa9" as "Z07:00"',
        ),
    ],
)
def test_at_parse_errors_follow_go(date: str, message: str) -> None:
    assert error_of(f"@at {date}") == f"failed to parse date @at {date}: {message}"


# -- six fields, seconds first ----------------------------------------------


def test_six_fields_seconds_first() -> None:
    assert nexts("30 15 10 * * *") == [
        utc(2024, 1, 1, 10, 15, 30),
        utc(2024, 1, 2, 10, 15, 30),
        utc(2024, 1, 3, 10, 15, 30),
    ]


def test_question_mark_is_a_star_in_any_field() -> None:
    assert nexts("? 0 0 ? * ?", n=2) == nexts("* 0 0 * * *", n=2)


def test_month_and_day_names_are_case_insensitive() -> None:
    assert nexts("0 0 0 * JaN,feb MON", n=3) == nexts("0 0 0 * 1,2 1", n=3)
    assert nexts("0 0 0 * * sun-Sat", n=2) == nexts("0 0 0 * * *", n=2)


def test_single_value_with_step_means_value_to_max() -> None:
    # robfig: "a/n" is "a-max/n"
    got = nexts("5/20 * * * * *", n=4)
    assert [t.second for t in got] == [5, 25, 45, 5]
    assert nexts("0 0 20/2 * * *", n=3) == [
        utc(2024, 1, 1, 20),
        utc(2024, 1, 1, 22),
        utc(2024, 1, 2, 20),
    ]


def test_lists_ranges_and_steps() -> None:
    got = nexts("0 0,30 9-17/4 * * *", n=7)
    assert [(t.hour, t.minute) for t in got] == [
        (9, 0),
        (9, 30),
        (13, 0),
        (13, 30),
        (17, 0),
        (17, 30),
        (9, 0),
    ]


def test_day_of_week_zero_is_sunday() -> None:
    assert nexts("0 0 0 * * 0", n=1) == [utc(2024, 1, 7)]
    assert nexts("0 0 0 * * SUN", n=1) == [utc(2024, 1, 7)]


def test_empty_list_field_is_accepted_and_never_fires() -> None:
    # robfig accepts ",," (no values); the job can never run.
    sched = parse_schedule("0 0 0 ,, * *")
    assert sched.next_after(T0) is None


def test_impossible_date_is_accepted_and_never_fires() -> None:
    sched = parse_schedule("0 0 0 30 2 *")
    assert sched.next_after(T0) is None
    assert parse_schedule("0 0 0 31 4,6,9,11 *").next_after(T0) is None


def test_february_29th_is_found_across_a_century_year() -> None:
    # 2096 -> 2104: eight years, beyond robfig's five-year search.
    got = parse_schedule("0 0 0 29 2 *").next_after(utc(2096, 3, 1))
    assert got == utc(2104, 2, 29)


def test_nothing_after_year_9999() -> None:
    assert parse_schedule("0 0 0 1 1 *").next_after(utc(9999, 6, 1)) is None


# -- dom/dow AND/OR ----------------------------------------------------------


@pytest.mark.parametrize(
    ("spec", "days"),
    [
        # dom starred -> AND: only Mondays
        ("0 0 0 * * MON", [1, 8, 15, 22, 29]),
        ("0 0 0 ? * MON", [1, 8, 15, 22, 29]),
        ("0 0 0 */1 * MON", [1, 8, 15, 22, 29]),
        # dow starred -> AND: only the 15th
        ("0 0 0 15 * *", [15]),
        ("0 0 0 15 * ?", [15]),
        # neither starred -> OR: the 15th or any Monday
        ("0 0 0 15 * MON", [1, 8, 15, 22, 29]),
        ("0 0 0 13 * FRI", [5, 12, 13, 19, 26]),
        # "*/2" is not starred -> OR: odd days or Mondays
        ("0 0 0 */2 * MON", sorted({*range(1, 32, 2), 8, 22})),
        # "1-31" is not starred either -> OR: every day
        ("0 0 0 1-31 * MON", list(range(1, 32))),
    ],
)
def test_dom_dow_and_or_rule(spec: str, days: list[int]) -> None:
    sched = parse_schedule(spec)
    got = list(
        itertools.takewhile(
            lambda t: t.month == 1,
            _iter(sched, T0 - timedelta(seconds=1)),
        )
    )
    assert [t.day for t in got] == days


def _iter(sched: object, t: datetime) -> list[datetime]:
    out: list[datetime] = []
    assert isinstance(sched, CronSchedule)
    for _ in range(40):
        nxt = sched.next_after(t)
        assert nxt is not None
        out.append(nxt)
        t = nxt
    return out


# -- descriptors -------------------------------------------------------------


@pytest.mark.parametrize(
    ("descriptor", "equivalent"),
    [
        ("@yearly", "0 0 0 1 1 *"),
        ("@annually", "0 0 0 1 1 *"),
        ("@monthly", "0 0 0 1 * *"),
        ("@weekly", "0 0 0 * * 0"),
        ("@daily", "0 0 0 * * *"),
        ("@midnight", "0 0 0 * * *"),
        ("@hourly", "0 0 * * * *"),
        ("@minutely", "0 * * * * *"),
    ],
)
def test_descriptors(descriptor: str, equivalent: str) -> None:
    start = utc(2024, 5, 17, 13, 45, 12)
    assert nexts(descriptor, start) == nexts(equivalent, start)


def test_descriptors_ignore_the_job_timezone_and_use_local() -> None:
    paris = ZoneInfo("Europe/Paris")
    got = nexts("@daily", n=1, timezone="America/New_York", local_tz=paris)
    assert got == [utc(2024, 1, 1, 23)]  # midnight in Paris, not New York
    assert nexts("@daily", n=1, timezone="America/New_York") == [utc(2024, 1, 2)]


def test_descriptor_with_tz_prefix_uses_that_zone() -> None:
    assert nexts("TZ=Asia/Tokyo @daily", n=1) == [utc(2024, 1, 1, 15)]


def test_manually_never_fires() -> None:
    sched = parse_schedule("@manually")
    assert isinstance(sched, NeverSchedule)
    assert sched.kind is ScheduleKind.NEVER
    assert sched.next_after(T0) is None
    assert list(fire_times(Job("j", "@manually"), T0, T0 + timedelta(days=400))) == []


# -- @every -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("spec", "seconds"),
    [
        ("@every 2s", 2),
        ("@every 1h30m10s", 5410),
        ("@every 1.5h", 5400),
        ("@every 1.9s", 1),  # floored
        ("@every 2500ms", 2),
        ("@every 999ms", 1),  # minimum 1 s
        ("@every 500us", 1),
        ("@every 500µs", 1),
        ("@every 500μs", 1),
        ("@every 10ns", 1),
        ("@every 0", 1),
        ("@every -5s", 1),
        ("@every 1m0.5s", 60),
        ("@every .5m", 30),
        ("@every 24h", 86400),
    ],
)
def test_every_durations(spec: str, seconds: int) -> None:
    sched = parse_schedule(spec)
    assert isinstance(sched, EverySchedule)
    assert sched.interval == timedelta(seconds=seconds)


def test_every_is_anchored_at_t_truncated_to_the_second() -> None:
    # Dkron's TestSchedule: Next == now.Truncate(1s) + 2s
    now = utc(2024, 5, 17, 13, 45, 12).replace(microsecond=987654)
    sched = parse_schedule("@every 2s")
    assert sched.next_after(now) == utc(2024, 5, 17, 13, 45, 14)
    assert sched.kind is ScheduleKind.EVERY


def test_every_ignores_timezones() -> None:
    a = parse_schedule("@every 1h", timezone="Asia/Kolkata")
    b = parse_schedule("@every 1h", local_tz=ZoneInfo("Pacific/Apia"))
    assert a.next_after(T0) == b.next_after(T0) == utc(2024, 1, 1, 1)


def test_go_duration_parser() -> None:
    assert parse_go_duration("1h30m10s") == 5410 * 10**9
    assert parse_go_duration("1.5h") == 5400 * 10**9
    assert parse_go_duration("-1.5s") == -1_500_000_000
    assert parse_go_duration("+2ms") == 2_000_000
    assert parse_go_duration("0") == 0
    assert parse_go_duration("1h1h") == 7200 * 10**9
    for bad, msg in [
        ("", 'time: invalid duration ""'),
        ("-", 'time: invalid duration "-"'),
        ("1", 'time: missing unit in duration "1"'),
        ("1x", 'time: unknown unit "x" in duration "1x"'),
        ("1 s", 'time: unknown unit " s" in duration "1 s"'),
        ("1hé", 'time: unknown unit "h\\xc3\\xa9" in duration "1h\\xc3\\xa9"'),
        ("9999999999999999999h", 'time: invalid duration "9999999999999999999h"'),
        ("3000000h", 'time: invalid duration "3000000h"'),
    ]:
        with pytest.raises(ValueError) as info:
            parse_go_duration(bad)
        assert str(info.value) == msg


# -- @at ----------------------------------------------------------------------


def test_at_fires_once_strictly_after() -> None:
    sched = parse_schedule("@at 2024-06-01T12:00:00+02:00")
    assert isinstance(sched, AtSchedule)
    when = utc(2024, 6, 1, 10)
    assert sched.next_after(T0) == when
    assert sched.next_after(when - timedelta(microseconds=1)) == when
    assert sched.next_after(when) is None


def test_at_in_the_past_is_accepted_and_never_fires() -> None:
    sched = parse_schedule("@at 2001-01-01T00:00:00Z")
    assert sched.next_after(T0) is None


@pytest.mark.parametrize(
    ("date", "expected"),
    [
        ("2024-06-01T12:00:00.5Z", utc(2024, 6, 1, 12).replace(microsecond=500000)),
        ("2024-06-01T12:00:00,25Z", utc(2024, 6, 1, 12).replace(microsecond=250000)),
        # nanoseconds are rounded up to the microsecond, keeping "strictly after"
        ("2024-06-01T12:00:00.0000001Z", utc(2024, 6, 1, 12).replace(microsecond=1)),
        ("2024-06-01T12:00:00.123456789123Z", utc(2024, 6, 1, 12).replace(microsecond=123457)),
        ("2024-06-01T12:00:00-09:30", utc(2024, 6, 1, 21, 30)),
        ("2024-06-01T7:00:00Z", utc(2024, 6, 1, 7)),  # Go accepts a 1-digit hour
        ("2024-06-01T12:00:00+24:00", utc(2024, 5, 31, 12)),
    ],
)
def test_at_accepts_go_rfc3339(date: str, expected: datetime) -> None:
    assert parse_schedule(f"@at {date}").next_after(T0) == expected


def test_at_outside_datetime_range() -> None:
    assert parse_schedule("@at 0000-01-01T00:00:00Z").next_after(T0) is None
    far = parse_schedule("@at 9999-12-31T23:59:59-05:00")
    assert far.next_after(T0) is None  # after datetime.max: cannot be represented


def test_at_with_a_timezone_is_still_absolute() -> None:
    a = parse_schedule("@at 2024-06-01T12:00:00Z", timezone="Asia/Tokyo")
    assert a.next_after(T0) == utc(2024, 6, 1, 12)


# -- the ~ hash ---------------------------------------------------------------


def test_tilde_hash_matches_dkron() -> None:
    # Dkron's Test_scheduleHash
    assert sum(ord(c) for c in "test_job") == 858
    assert schedule_hash("0 0 ~ * * *", "test_job") == "0 0 18 * * *"
    assert schedule_hash("TZ=Europe/Madrid 0 0 1 * ~ *", "test_job") == (
        "TZ=Europe/Madrid 0 0 1 * 7 *"
    )
    assert schedule_hash("CRON_TZ=UTC ~ ~ ~ ~ ~ ~", "test_job") == "CRON_TZ=UTC 18 18 18 19 7 4"
    assert schedule_hash("0 ~/15 * * * *", "test_job") == "0 18/15 * * * *"
    assert schedule_hash("@every 1m", "test_job") == "@every 1m"
    assert schedule_hash("@at ~", "test_job") == "@at ~"
    assert schedule_hash("0 0 0 * * *", "test_job") == "0 0 0 * * *"


def test_tilde_is_applied_by_parse_schedule() -> None:
    got = nexts("0 ~/15 * * * *", n=3, job_name="test_job")
    assert [t.minute for t in got] == [18, 33, 48]


def test_tilde_in_a_descriptor_is_left_alone_and_fails_to_parse() -> None:
    assert error_of("@every ~", job_name="x") == (
        'failed to parse duration @every ~: time: invalid duration "~"'
    )


# -- the H hash ---------------------------------------------------------------


def test_h_is_stable_and_in_range() -> None:
    for name in ["a", "b", "billing-report", "ñandú"]:
        s1 = parse_schedule("H H H H H H", job_name=name)
        s2 = parse_schedule("H H H H H H", job_name=name)
        assert isinstance(s1, CronSchedule)
        assert s1 == s2
        assert len(s1.seconds) == len(s1.minutes) == len(s1.hours) == 1
        assert s1.dom_bits.bit_count() == 1
        assert 1 <= s1.dom_bits.bit_length() - 1 <= 28
        assert s1.month_bits.bit_count() == s1.dow_bits.bit_count() == 1


def test_h_range_and_step() -> None:
    s = parse_schedule("0 H(10-19)/5 H(1-5) * * H(MON-FRI)", job_name="job-7")
    assert isinstance(s, CronSchedule)
    (first, second) = s.minutes
    assert 10 <= first <= 14 and second == first + 5
    assert 1 <= s.hours[0] <= 5
    s2 = parse_schedule("0 H/15 * * * *", job_name="job-7")
    assert isinstance(s2, CronSchedule)
    assert len(s2.minutes) == 4 and s2.minutes[0] < 15
    assert all(b - a == 15 for a, b in itertools.pairwise(s2.minutes))


def test_h_differs_between_jobs_and_fields() -> None:
    minutes = {
        parse_schedule("0 H * * * *", job_name=f"job-{i}").next_after(T0).minute  # type: ignore[union-attr]
        for i in range(20)
    }
    assert len(minutes) > 10
    s = parse_schedule("H H * * * *", job_name="same")
    assert isinstance(s, CronSchedule)


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("H(5) * * * * *", "hash range must be H(a-b): H(5)"),
        ("H(5-70) * * * * *", "end of range (70) above maximum (59): H(5-70)"),
        ("H(9-5) * * * * *", "beginning of range (9) beyond end of range (5): H(9-5)"),
        ("H/0 * * * * *", "step of range should be a positive number: H/0"),
        ("H/61 * * * * *", "step of hashed range (61) larger than the range: H/61"),
        ("H/2/3 * * * * *", "too many slashes: H/2/3"),
        ("H(1-2 * * * * *", "failed to parse hash expression: H(1-2"),
        ("0 0 0 0 0 H(0-7)", "beginning of range (0) below minimum (1): 0"),
    ],
)
def test_h_errors(spec: str, message: str) -> None:
    assert error_of(spec, job_name="x") == message


def test_h_spreads_a_thousand_jobs_over_the_hour() -> None:
    counts = [0] * 60
    for i in range(1000):
        s = parse_schedule("0 H * * * *", job_name=f"job-{i}")
        assert isinstance(s, CronSchedule)
        counts[s.minutes[0]] += 1
    expected = 1000 / 60
    chi2 = sum((c - expected) ** 2 / expected for c in counts)
    assert chi2 < 99.6  # p = 0.001 for 59 degrees of freedom
    assert max(counts) <= 35 and min(counts) >= 3


# -- time zones -----------------------------------------------------------------


def test_validate_timezone() -> None:
    local = timezone(timedelta(hours=3))
    assert validate_timezone("", local_tz=local) is local
    assert validate_timezone("Local", local_tz=local) is local
    assert validate_timezone("UTC") is UTC
    assert validate_timezone("Europe/Berlin") == ZoneInfo("Europe/Berlin")
    for bad in ["notatimezone", "Europe/Nowhere", "America", "Europe/Berlin\x00"]:
        with pytest.raises(ScheduleError, match=f"^unknown time zone {bad}$"):
            validate_timezone(bad)
    with pytest.raises(ScheduleError, match=r"^time: invalid location name$"):
        validate_timezone("/etc/passwd")


def test_job_timezone_applies_to_cron() -> None:
    assert nexts("0 0 9 * * *", n=1, timezone="Asia/Tokyo") == [utc(2024, 1, 2, 0)]
    assert nexts("0 0 9 * * *", n=1, local_tz=ZoneInfo("Asia/Tokyo")) == [utc(2024, 1, 2, 0)]
    assert nexts("0 0 9 * * *", n=1, timezone="UTC", local_tz=ZoneInfo("Asia/Tokyo")) == [
        utc(2024, 1, 1, 9)
    ]


def test_tz_prefix_overrides_the_job_timezone() -> None:
    for prefix in ["TZ=Asia/Tokyo ", "CRON_TZ=Asia/Tokyo "]:
        got = nexts(prefix + "0 0 9 * * *", n=1, timezone="America/New_York")
        assert got == [utc(2024, 1, 2, 0)]
    # an empty zone name in the prefix is UTC, as Go's LoadLocation("")
    assert nexts("TZ= 0 0 9 * * *", n=1, local_tz=ZoneInfo("Asia/Tokyo")) == [utc(2024, 1, 1, 9)]


def test_schedule_errors_come_before_timezone_errors() -> None:
    assert error_of("0 * * * *", timezone="nowhere") == (
        "expected exactly 6 fields, found 5: [0 * * * *]"
    )
    assert error_of("0 * * * * *", timezone="nowhere") == "unknown time zone nowhere"


# -- DST policy, by example ---------------------------------------------------------


def test_spring_forward_gap_fires_at_the_end_of_the_gap_once() -> None:
    # New York, 2024-03-10: 02:00 EST -> 03:00 EDT (07:00 UTC)
    got = nexts("0 0,30 2,3 * * *", utc(2024, 3, 10, 6), n=3, timezone="America/New_York")
    assert got == [utc(2024, 3, 10, 7), utc(2024, 3, 10, 7, 30), utc(2024, 3, 11, 6)]


def test_fall_back_overlap_fires_once_at_the_first_occurrence() -> None:
    # New York, 2024-11-03: 02:00 EDT -> 01:00 EST; 01:30 happens twice
    got = nexts("0 30 1 * * *", utc(2024, 11, 3), n=2, timezone="America/New_York")
    assert got == [utc(2024, 11, 3, 5, 30), utc(2024, 11, 4, 6, 30)]
    # every 20 minutes through the repeated hour: no wall time twice
    start = utc(2024, 11, 3, 4, 50)
    got = nexts("0 */20 * * * *", start, n=7, timezone="America/New_York")
    assert got == [
        utc(2024, 11, 3, 5, 0),  # 01:00 EDT
        utc(2024, 11, 3, 5, 20),
        utc(2024, 11, 3, 5, 40),
        utc(2024, 11, 3, 7, 0),  # 02:00 EST; 01:00-01:40 EST are skipped
        utc(2024, 11, 3, 7, 20),
        utc(2024, 11, 3, 7, 40),
        utc(2024, 11, 3, 8, 0),
    ]


def test_starting_inside_the_second_occurrence() -> None:
    t = utc(2024, 11, 3, 6, 10)  # 01:10 EST, the second 01:10
    got = nexts("0 */20 * * * *", t, n=2, timezone="America/New_York")
    assert got == [utc(2024, 11, 3, 7, 0), utc(2024, 11, 3, 7, 20)]


def test_lord_howe_half_hour_shift() -> None:
    # Lord Howe 2024-10-06: 02:00 +10:30 -> 02:30 +11 (15:30 UTC on the 5th)
    got = nexts("0 15 2 * * *", utc(2024, 10, 5, 12), n=2, timezone="Australia/Lord_Howe")
    assert got == [utc(2024, 10, 5, 15, 30), utc(2024, 10, 6, 15, 15)]


def test_apia_skipped_a_whole_day() -> None:
    # Samoa skipped 2011-12-30 entirely; a noon job fires once at the end of the gap
    got = nexts("0 0 12 * * *", utc(2011, 12, 29, 12), n=3, timezone="Pacific/Apia")
    assert got == [
        utc(2011, 12, 29, 22),  # 29th noon, UTC-10
        utc(2011, 12, 30, 10),  # 30th noon never existed: 31st 00:00 +14
        utc(2011, 12, 30, 22),  # 31st noon, UTC+14
    ]


def test_without_timezone_dst_of_local_applies() -> None:
    london = ZoneInfo("Europe/London")
    got = nexts("0 30 1 * * *", utc(2024, 3, 31), n=1, local_tz=london)
    assert got == [utc(2024, 3, 31, 1)]  # 01:30 GMT does not exist: 02:00 BST


# -- fire_times and caching ------------------------------------------------------------


def test_fire_times_window_is_half_open() -> None:
    job = Job("j", "0 0 * * * *")
    got = list(fire_times(job, utc(2024, 1, 1, 1), utc(2024, 1, 1, 4)))
    assert got == [utc(2024, 1, 1, 2), utc(2024, 1, 1, 3), utc(2024, 1, 1, 4)]
    first_two = list(fire_times(job, T0, T0 + timedelta(days=1), limit=2))
    assert first_two == [utc(2024, 1, 1, 1), utc(2024, 1, 1, 2)]


def test_fire_times_accepts_any_aware_datetime_and_returns_utc() -> None:
    tokyo = ZoneInfo("Asia/Tokyo")
    job = Job("j", "@every 90m", "Europe/Paris")
    got = list(fire_times(job, datetime(2024, 1, 1, 9, tzinfo=tokyo), T0 + timedelta(hours=3)))
    assert got == [utc(2024, 1, 1, 1, 30), utc(2024, 1, 1, 3)]
    assert all(t.tzinfo is UTC for t in got)


def test_fire_times_raises_eagerly_on_a_bad_schedule() -> None:
    with pytest.raises(ScheduleError, match="empty spec string"):
        fire_times(Job("child", ""), T0, T0)


def test_naive_datetimes_are_refused() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        parse_schedule("@every 1s").next_after(datetime(2024, 1, 1))


def test_parsed_schedules_are_cached_and_shared() -> None:
    a = job_schedule(Job("a", "0 0 * * * *"))
    b = job_schedule(Job("b", "0 0 * * * *"))
    assert a is b  # the name cannot matter without ~ or H
    c = job_schedule(Job("c", "0 H * * * *"))
    assert c is job_schedule(Job("c", "0 H * * * *"))
    assert c is not job_schedule(Job("d", "0 H * * * *"))


@given(
    wall=st.datetimes(
        min_value=datetime(1971, 1, 1),
        max_value=datetime(9999, 12, 30),
        timezones=st.sampled_from([UTC, timezone(timedelta(hours=5)), ZoneInfo("Europe/Berlin")]),
    ),
    seconds=st.integers(1, 10**6),
)
def test_every_next_after_shortcut_equals_truncate_then_add(wall: datetime, seconds: int) -> None:
    interval = timedelta(seconds=seconds)
    sched = EverySchedule("@every", interval)
    try:
        expected: datetime | None = wall.astimezone(UTC).replace(microsecond=0) + interval
    except OverflowError:
        expected = None
    got = sched.next_after(wall)
    assert got == expected
    assert got is None or (got.tzinfo is UTC and got.fold == 0)


# -- upcoming_fires: the scheduler's own next slots --------------------------------------


def _offset(seconds: int | None) -> datetime | None:
    return None if seconds is None else T0 + timedelta(seconds=seconds)


@given(
    spec=st.sampled_from(
        ["@every 7s", "@every 1m", "@every 90s", "*/15 * * * * *", "0 */5 * * * *", "@hourly"]
    ),
    first_at=st.none() | st.integers(-3600, 0),
    cursor_at=st.none() | st.integers(-3600, 0),
    starts_at=st.none() | st.integers(-3600, 7200),
    expires_at=st.none() | st.integers(-600, 7200),
    micros=st.integers(0, 999_999),
    count=st.integers(1, 5),
)
# An @every chain an hour behind, out of phase with now: 23:00:07 + 7 s * k.
@example(
    spec="@every 7s",
    first_at=None,
    cursor_at=-3600,
    starts_at=None,
    expires_at=None,
    micros=0,
    count=2,
)
# The slot at T0 + 1 s is claimed 50 ms early: the cursor is ahead of now.
@example(
    spec="@every 7s",
    first_at=None,
    cursor_at=-13,
    starts_at=None,
    expires_at=None,
    micros=950_000,
    count=2,
)
def test_upcoming_fires_are_the_slots_the_scheduler_fires_after_now(
    *,
    spec: str,
    first_at: int | None,
    cursor_at: int | None,
    starts_at: int | None,
    expires_at: int | None,
    micros: int,
    count: int,
) -> None:
    """What the API shows as a saved job's next slots is what the leader's engine
    fires after now, given the same first slot, cursor and bounds: ``@every``
    keeps the phase of the job's own slots instead of being anchored at now,
    and a slot the engine claimed early (its lookahead) is still shown."""
    job = Job("j", spec)
    sched = job_schedule(job)
    now = T0 + timedelta(microseconds=micros)
    # The stored first slot (computed when the job was saved, before now) and
    # the cursor (a slot decided by now) are slots of the schedule.
    first = None if first_at is None else sched.next_after(T0 + timedelta(seconds=first_at))
    cursor = None if cursor_at is None else sched.next_after(T0 + timedelta(seconds=cursor_at))
    assume(cursor is None or cursor <= now)
    start, end = _offset(starts_at), _offset(expires_at)
    engine = Scheduler(SchedulerConfig(lookahead=timedelta(milliseconds=100)))
    engine.set_job(
        ScheduledJob(
            name="j",
            schedule=sched,
            anchor=now,
            cursor=cursor,
            first=first,
            starts_at=start,
            expires_at=end,
        ),
        now,
    )
    engine.advance(now)
    fired = [o.scheduled for o in engine.drain() if isinstance(o, FireSlot)]
    # What the replicated cursor holds once those claims commit.
    seen = max(fired) if fired else cursor
    while len([t for t in fired if t > now]) < count:
        deadline = engine.next_deadline()
        if deadline is None:
            break
        engine.advance(max(deadline, now))
        fired += [o.scheduled for o in engine.drain() if isinstance(o, FireSlot)]
    expected = [t for t in fired if t > now][:count]
    got = upcoming_fires(
        job, now, first=first, cursor=seen, starts_at=start, expires_at=end, count=count
    )
    assert got == expected


def test_upcoming_fires_resumes_from_now_when_far_behind() -> None:
    """A cursor a day behind an ``@every 1s`` job (86,400 slots) is not walked slot
    by slot: the answer is still the next instants after now, in order."""
    job = Job("j", "@every 1s")
    now = T0 + timedelta(days=1, microseconds=500)
    got = upcoming_fires(job, now, first=None, cursor=T0, count=3)
    assert got == [T0 + timedelta(days=1, seconds=k) for k in (1, 2, 3)]


def test_upcoming_fires_of_a_job_that_never_fires_again_is_empty() -> None:
    past_at = Job("j", "@at 2023-12-31T00:00:00Z")
    assert upcoming_fires(past_at, T0, first=None, cursor=None) == []
    expired = Job("j", "@every 1m")
    assert upcoming_fires(expired, T0, first=None, cursor=None, expires_at=T0) == []
    never = Job("j", "@manually")
    assert upcoming_fires(never, T0, first=None, cursor=None, count=5) == []


def test_an_every_chain_starts_at_starts_at() -> None:
    """``@every 1h`` with ``starts_at`` 05:00 fires at 05:00, 06:00, ...: the
    chain starts at ``starts_at`` itself (it used to be anchored a microsecond
    before it, which truncated to the second before: 05:59:59, 06:59:59)."""
    job = Job("j", "@every 1h")
    sched = job_schedule(job)
    start = T0 + timedelta(hours=5)
    assert sched.first_from(start) == start
    assert sched.first_from(start + timedelta(microseconds=1)) == start + timedelta(seconds=1)
    engine = Scheduler()
    first = sched.next_after(T0)
    engine.set_job(
        ScheduledJob(name="j", schedule=sched, anchor=T0, first=first, starts_at=start), T0
    )
    fired: list[datetime] = []
    while len(fired) < 2:
        deadline = engine.next_deadline()
        assert deadline is not None
        engine.advance(deadline)
        fired += [o.scheduled for o in engine.drain() if isinstance(o, FireSlot)]
    assert fired == [start, start + timedelta(hours=1)]
    shown = upcoming_fires(job, T0, first=first, cursor=None, starts_at=start, count=2)
    assert shown == fired


def test_first_from_includes_a_cron_fire_at_the_start() -> None:
    hourly = parse_schedule("0 0 * * * *")
    start = T0 + timedelta(hours=5)
    assert hourly.first_from(start) == start
    assert hourly.first_from(start + timedelta(seconds=1)) == start + timedelta(hours=1)
    assert parse_schedule("@manually").first_from(start) is None
