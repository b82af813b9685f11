"""Dkron's schedule syntax -> fire times, as one pure function family.

The scheduler, catch-up after a leader change and the next-N preview all ask
the same question -- "when does this job fire after instant *t*?" -- so there
is exactly one answer: `Schedule.next_after` and its iterator `fire_times`.
Nothing here reads a clock; every instant comes in as a timezone-aware
``datetime`` and goes out as a UTC ``datetime``.

Compatibility target is Dkron's parser (its ``extcron`` layer over robfig/cron
v3), not croniter: parsing, error messages and field semantics (``a/n`` means
``a-max/n``, the "starred" dom/dow AND/OR rule, dow 7 rejected) are reproduced
here, and the Go helpers it depends on (``time.ParseDuration``, the RFC 3339
``time.Parse`` and their error texts) are emulated byte for byte.  croniter is
the reference oracle in the test-suite rather than the run-time engine, for
three reasons that the tests pin down: croniter applies the dom/dow OR rule to
fields Dkron treats as starred, it shifts or doubles fire times around DST
transitions, and one ``get_next`` costs more than the scheduler's per-fire
budget.  The matcher below is a bit-set walk over *local wall time* (robfig's
algorithm) followed by an explicit, documented mapping from wall time to
instants (the DST policy, see `CronSchedule`).
"""

from __future__ import annotations

import abc
import bisect
import enum
import functools
import hashlib
import re
import zoneinfo
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, tzinfo
from typing import ClassVar, Protocol

from dkron.golang import go_quote
from dkron.proto_sansio.scheduler import resume_slot

__all__ = [
    "UTC",
    "AtSchedule",
    "CronSchedule",
    "EverySchedule",
    "NeverSchedule",
    "Schedule",
    "ScheduleError",
    "ScheduleKind",
    "ScheduledJob",
    "fire_times",
    "job_schedule",
    "parse_go_duration",
    "parse_schedule",
    "schedule_hash",
    "upcoming_fires",
    "validate_timezone",
]

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_ONE_SECOND = timedelta(seconds=1)
_NS_PER_SECOND = 1_000_000_000


class ScheduleError(ValueError):
    """A schedule (or time zone) Dkron would reject, with Dkron's message.

    A ``ValueError`` so that job validation can treat it like any other field
    error; the API wraps the text as ``can't parse job schedule: <msg>``.
    """


class ScheduledJob(Protocol):
    """What the schedule functions need of a job, and nothing more."""

    @property
    def name(self) -> str: ...

    @property
    def schedule(self) -> str: ...

    @property
    def timezone(self) -> str: ...


class ScheduleKind(enum.Enum):
    CRON = "cron"
    EVERY = "every"
    AT = "at"
    NEVER = "never"


# --------------------------------------------------------------------------
# Go emulation: quoting, strconv.Atoi, time.ParseDuration, time.Parse(RFC3339)
# --------------------------------------------------------------------------


def _go_time_quote(raw: bytes) -> str:
    """``time.quote``: the time package's own quoting (bytes >= 0x80 as ``\\xNN``)."""
    out = ['"']
    for b in raw:
        if b >= 0x80 or b < 0x20:
            out.append(f"\\x{b:02x}")
        elif b in (0x22, 0x5C):
            out.append("\\" + chr(b))
        else:
            out.append(chr(b))
    out.append('"')
    return "".join(out)


def _to_bytes(s: str) -> bytes:
    return s.encode("utf-8", "surrogatepass")


def _is_ascii_digit(c: str) -> bool:
    return "0" <= c <= "9"


_INT64_MAX = (1 << 63) - 1


def _go_atoi(s: str) -> int:
    """``strconv.Atoi`` (64-bit): optional sign, ASCII digits only, int64 range."""
    body = s[1:] if s[:1] in ("+", "-") else s
    if not body or not all(_is_ascii_digit(c) for c in body):
        raise ValueError(f"strconv.Atoi: parsing {go_quote(s)}: invalid syntax")
    digits = body.lstrip("0") or "0"
    if len(digits) > 19:
        raise ValueError(f"strconv.Atoi: parsing {go_quote(s)}: value out of range")
    value = int(digits)
    if s[0] == "-":
        value = -value
    if value > _INT64_MAX or value < -_INT64_MAX - 1:
        raise ValueError(f"strconv.Atoi: parsing {go_quote(s)}: value out of range")
    return value


_DURATION_UNITS: dict[bytes, int] = {
    b"ns": 1,
    b"us": 1_000,
    "µs".encode(): 1_000,  # U+00B5 micro sign
    "μs".encode(): 1_000,  # U+03BC Greek mu
    b"ms": 1_000_000,
    b"s": _NS_PER_SECOND,
    b"m": 60 * _NS_PER_SECOND,
    b"h": 3600 * _NS_PER_SECOND,
}
_TWO63 = 1 << 63


def parse_go_duration(text: str) -> int:
    """Go's ``time.ParseDuration`` in integer nanoseconds, with Go's error texts.

    Emulated on UTF-8 bytes, as Go does, so that error messages and the unit
    scan agree on non-ASCII input.  There is deliberately no ``d`` unit.
    """
    orig = _to_bytes(text)
    s = orig
    invalid = ValueError("time: invalid duration " + _go_time_quote(orig))
    neg = False
    if s and s[0] in b"+-":
        neg = s[0] == ord("-")
        s = s[1:]
    if s == b"0":
        return 0
    if not s:
        raise invalid
    total = 0
    while s:
        if not (s[0] == ord(".") or 0x30 <= s[0] <= 0x39):
            raise invalid
        # leading integer
        i = 0
        v = 0
        while i < len(s) and 0x30 <= s[i] <= 0x39:
            if v > _TWO63 // 10:
                raise invalid
            v = v * 10 + s[i] - 0x30
            if v > _TWO63:
                raise invalid
            i += 1
        pre = i > 0
        s = s[i:]
        frac = 0
        scale = 1.0
        post = False
        if s and s[0] == ord("."):
            s = s[1:]
            i = 0
            overflow = False
            while i < len(s) and 0x30 <= s[i] <= 0x39:
                if not overflow:
                    if frac > (_TWO63 - 1) // 10:
                        overflow = True
                    else:
                        y = frac * 10 + s[i] - 0x30
                        if y > _TWO63:
                            overflow = True
                        else:
                            frac = y
                            scale *= 10
                i += 1
            post = i > 0
            s = s[i:]
        if not pre and not post:
            raise invalid
        i = 0
        while i < len(s) and not (s[i] == ord(".") or 0x30 <= s[i] <= 0x39):
            i += 1
        if i == 0:
            raise ValueError("time: missing unit in duration " + _go_time_quote(orig))
        unit_text = s[:i]
        s = s[i:]
        unit = _DURATION_UNITS.get(unit_text)
        if unit is None:
            raise ValueError(
                "time: unknown unit "
                + _go_time_quote(unit_text)
                + " in duration "
                + _go_time_quote(orig)
            )
        if v > _TWO63 // unit:
            raise invalid
        v *= unit
        if frac > 0:
            v += int(float(frac) * (float(unit) / scale))
            if v > _TWO63:
                raise invalid
        total += v
        if total > _TWO63:
            raise invalid
    if neg:
        return -total
    if total > _TWO63 - 1:
        raise invalid
    return total


_RFC3339_LAYOUT = b"2006-01-02T15:04:05Z07:00"


class _GoParseError(ValueError):
    pass


def _days_in_month(year: int, month: int) -> int:
    if month == 2:
        leap = year % 4 == 0 and (year % 100 != 0 or year % 400 == 0)
        return 29 if leap else 28
    return 30 if month in (4, 6, 9, 11) else 31


def _days_from_civil(y: int, m: int, d: int) -> int:
    """Days since 1970-01-01 in the proleptic Gregorian calendar, any year (even 0)."""
    y -= m <= 2
    era = (y if y >= 0 else y - 399) // 400
    yoe = y - era * 400
    doy = (153 * (m + (-3 if m > 2 else 9)) + 2) // 5 + d - 1
    doe = yoe * 365 + yoe // 4 - yoe // 100 + doy
    return era * 146097 + doe - 719468


def _parse_rfc3339(text: str) -> tuple[int, int]:
    """Go's ``time.Parse(time.RFC3339, text)`` -> (Unix seconds, nanoseconds).

    Follows Go's generic layout parser (which also decides the error text), so
    its leniencies are kept: a one-digit hour, ``,`` as the fraction separator,
    any number of fraction digits (truncated to nanoseconds), offsets up to 24h.
    """
    value = _to_bytes(text)
    avalue = value
    quoted_value = _go_time_quote(avalue)

    def cannot(layout_elem: bytes, value_elem: bytes) -> _GoParseError:
        return _GoParseError(
            f"parsing time {quoted_value} as {_go_time_quote(_RFC3339_LAYOUT)}: "
            f"cannot parse {_go_time_quote(value_elem)} as {_go_time_quote(layout_elem)}"
        )

    def out_of_range(what: str) -> _GoParseError:
        return _GoParseError(f"parsing time {quoted_value}: {what} out of range")

    def is_digit(s: bytes, i: int) -> bool:
        return len(s) > i and 0x30 <= s[i] <= 0x39

    def getnum(s: bytes, fixed: bool) -> tuple[int, bytes] | None:
        if not is_digit(s, 0):
            return None
        if not is_digit(s, 1):
            if fixed:
                return None
            return s[0] - 0x30, s[1:]
        return (s[0] - 0x30) * 10 + (s[1] - 0x30), s[2:]

    def skip(s: bytes, prefix: bytes) -> bytes:
        if not s.startswith(prefix):
            raise cannot(prefix, s)
        return s[len(prefix) :]

    # 2006
    hold = value
    if len(value) < 4 or not is_digit(value, 0) or not all(0x30 <= b <= 0x39 for b in value[:4]):
        raise cannot(b"2006", hold)
    year = int(value[:4])
    value = value[4:]
    nums: list[int] = []
    for prefix, elem, fixed, what, lo, hi in (
        (b"-", b"01", True, "month", 1, 12),
        (b"-", b"02", True, "", 0, 99),
        (b"T", b"15", False, "hour", 0, 23),
        (b":", b"04", True, "minute", 0, 59),
        (b":", b"05", True, "second", 0, 59),
    ):
        value = skip(value, prefix)
        hold = value
        got = getnum(value, fixed)
        if got is None:
            raise cannot(elem, hold)
        num, value = got
        if what and not lo <= num <= hi:
            raise out_of_range(what)
        nums.append(num)
    month, day, hour, minute, second = nums
    nanos = 0
    if len(value) >= 2 and value[0] in b".," and is_digit(value, 1):
        n = 2
        while n < len(value) and is_digit(value, n):
            n += 1
        digits = value[1 : min(n, 10)]
        nanos = int(digits) * 10 ** (9 - len(digits))
        value = value[n:]
    # Z07:00
    hold = value
    offset = 0
    if value[:1] == b"Z":
        value = value[1:]
    else:
        if len(value) < 6 or value[3] != ord(":"):
            raise cannot(b"Z07:00", hold)
        sign, hh, mm = value[0:1], value[1:3], value[4:6]
        value = value[6:]
        got_h = getnum(hh, True)
        got_m = getnum(mm, True) if got_h is not None else None
        if got_h is not None and got_h[0] > 24:
            raise out_of_range("time zone offset hour")
        if got_m is not None and got_m[0] > 60:
            raise out_of_range("time zone offset minute")
        if got_h is None or got_m is None or sign not in (b"+", b"-"):
            raise cannot(b"Z07:00", hold)
        offset = (got_h[0] * 60 + got_m[0]) * 60
        if sign == b"-":
            offset = -offset
    if value:
        raise _GoParseError(f"parsing time {quoted_value}: extra text: {_go_time_quote(value)}")
    if day < 1 or day > _days_in_month(year, month):
        raise out_of_range("day")
    seconds = _days_from_civil(year, month, day) * 86400 + hour * 3600 + minute * 60 + second
    return seconds - offset, nanos


# --------------------------------------------------------------------------
# Time zones
# --------------------------------------------------------------------------


def validate_timezone(name: str, *, local_tz: tzinfo = UTC) -> tzinfo:
    """Go's ``time.LoadLocation`` over the system zone database.

    ``""`` and ``"Local"`` mean the server's zone (``local_tz``); ``"UTC"`` is UTC.
    """
    if name == "":
        return local_tz
    if name == "UTC":
        return UTC
    if name == "Local":
        return local_tz
    if ".." in name or name[0] in "/\\":
        raise ScheduleError("time: invalid location name")
    try:
        return zoneinfo.ZoneInfo(name)
    except (KeyError, ValueError, OSError, UnicodeError, TypeError) as exc:
        raise ScheduleError(f"unknown time zone {name}") from exc


def _load_location(name: str, local_tz: tzinfo) -> tzinfo:
    """robfig's ``TZ=`` prefix: ``""`` is UTC there (LoadLocation), not local."""
    if name == "":
        return UTC
    return validate_timezone(name, local_tz=local_tz)


# --------------------------------------------------------------------------
# Dkron's "~" hash and the Jenkins-style "H" hash
# --------------------------------------------------------------------------

_TILDE_MODULI = {2: (24, 0), 3: (28, 1), 4: (12, 1), 5: (7, 0)}


def schedule_hash(spec: str, job_name: str) -> str:
    """Dkron's ``scheduleHash``: replace ``~`` by a per-field value of the name.

    The value is the sum of the name's code points (not a real hash: this is
    for compatibility with schedules already deployed on Dkron).
    """
    if "~" not in spec:
        return spec
    total = sum(ord(c) for c in job_name)
    parts = spec.split(" ")
    index = 0
    for i, part in enumerate(parts):
        if part.startswith("@"):
            return spec
        if part.startswith(("TZ=", "CRON_TZ=")):
            continue
        if "~" in part:
            modulus, base = _TILDE_MODULI.get(index, (60, 0))
            parts[i] = part.replace("~", str(total % modulus + base))
        index += 1
    return " ".join(parts)


def _h_value(job_name: str, field_index: int, term_index: int, modulus: int) -> int:
    """A stable, uniform value in ``range(modulus)`` for one ``H`` term of one job.

    blake2b rather than ``hash()`` because it must agree across processes,
    restarts and Python versions; field and term indices are mixed in so that
    ``H H * * * *`` does not put seconds and minutes in lock-step.
    """
    digest = hashlib.blake2b(
        f"{field_index}:{term_index}".encode(),
        key=hashlib.blake2b(job_name.encode("utf-8", "surrogatepass"), digest_size=32).digest(),
        digest_size=8,
    ).digest()
    return int.from_bytes(digest, "big") % modulus


# --------------------------------------------------------------------------
# Cron fields (robfig/cron v3 getField/getRange, plus H)
# --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Bounds:
    lo: int
    hi: int
    names: dict[str, int] | None
    hash_hi: int


_MONTH_NAMES = {
    n: i + 1
    for i, n in enumerate(
        ["jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"]
    )
}
_DOW_NAMES = {n: i for i, n in enumerate(["sun", "mon", "tue", "wed", "thu", "fri", "sat"])}
# The day-of-month H range stops at 28 (as in Jenkins) so that H runs every month.
_FIELD_BOUNDS = (
    _Bounds(0, 59, None, 59),
    _Bounds(0, 59, None, 59),
    _Bounds(0, 23, None, 23),
    _Bounds(1, 31, None, 28),
    _Bounds(1, 12, _MONTH_NAMES, 12),
    _Bounds(0, 6, _DOW_NAMES, 6),
)
_H_RANGE = re.compile(r"H\(([^()]*)\)\Z")


def _must_parse_int(expr: str) -> int:
    try:
        num = _go_atoi(expr)
    except ValueError as exc:
        raise ScheduleError(f"failed to parse int from {expr}: {exc}") from None
    if num < 0:
        raise ScheduleError(f"negative number ({num}) not allowed: {expr}")
    return num


def _parse_int_or_name(expr: str, names: dict[str, int] | None) -> int:
    if names is not None:
        named = names.get(expr.lower())
        if named is not None:
            return named
    return _must_parse_int(expr)


def _bits(start: int, end: int, step: int) -> int:
    bits = 0
    for i in range(start, end + 1, step):
        bits |= 1 << i
    return bits


def _parse_hash_term(
    expr: str, head: str, steps: list[str], b: _Bounds, *, job_name: str, fi: int, ti: int
) -> int:
    """Jenkins' ``H``, ``H(a-b)``, ``H/n``, ``H(a-b)/n``."""
    lo, hi = b.lo, b.hash_hi
    if head != "H":
        m = _H_RANGE.match(head)
        if m is None:
            raise ScheduleError(f"failed to parse hash expression: {expr}")
        bounds = m.group(1).split("-")
        if len(bounds) != 2:
            raise ScheduleError(f"hash range must be H(a-b): {expr}")
        lo = _parse_int_or_name(bounds[0], b.names)
        hi = _parse_int_or_name(bounds[1], b.names)
        if lo < b.lo:
            raise ScheduleError(f"beginning of range ({lo}) below minimum ({b.lo}): {expr}")
        if hi > b.hi:
            raise ScheduleError(f"end of range ({hi}) above maximum ({b.hi}): {expr}")
        if lo > hi:
            raise ScheduleError(f"beginning of range ({lo}) beyond end of range ({hi}): {expr}")
    if len(steps) > 1:
        raise ScheduleError(f"too many slashes: {expr}")
    if not steps:
        return 1 << (lo + _h_value(job_name, fi, ti, hi - lo + 1))
    step = _must_parse_int(steps[0])
    if step == 0:
        raise ScheduleError(f"step of range should be a positive number: {expr}")
    if step > hi - lo + 1:
        raise ScheduleError(f"step of hashed range ({step}) larger than the range: {expr}")
    return _bits(lo + _h_value(job_name, fi, ti, step), hi, step)


def _get_range(expr: str, b: _Bounds, job_name: str, fi: int, ti: int) -> tuple[int, bool]:
    range_and_step = expr.split("/")
    head = range_and_step[0]
    if head == "H" or head.startswith("H("):
        term = _parse_hash_term(expr, head, range_and_step[1:], b, job_name=job_name, fi=fi, ti=ti)
        return term, False
    low_and_high = head.split("-")
    single = len(low_and_high) == 1
    star = False
    if low_and_high[0] in ("*", "?"):
        start, end, star = b.lo, b.hi, True
    else:
        start = _parse_int_or_name(low_and_high[0], b.names)
        if len(low_and_high) == 1:
            end = start
        elif len(low_and_high) == 2:
            end = _parse_int_or_name(low_and_high[1], b.names)
        else:
            raise ScheduleError(f"too many hyphens: {expr}")
    if len(range_and_step) == 1:
        step = 1
    elif len(range_and_step) == 2:
        step = _must_parse_int(range_and_step[1])
        if single:
            end = b.hi
        if step > 1:
            star = False
    else:
        raise ScheduleError(f"too many slashes: {expr}")
    if start < b.lo:
        raise ScheduleError(f"beginning of range ({start}) below minimum ({b.lo}): {expr}")
    if end > b.hi:
        raise ScheduleError(f"end of range ({end}) above maximum ({b.hi}): {expr}")
    if start > end:
        raise ScheduleError(f"beginning of range ({start}) beyond end of range ({end}): {expr}")
    if step == 0:
        raise ScheduleError(f"step of range should be a positive number: {expr}")
    return _bits(start, end, step), star


def _get_field(text: str, fi: int, job_name: str) -> tuple[int, bool]:
    bits = 0
    star = False
    for ti, expr in enumerate(p for p in text.split(",") if p):
        b, s = _get_range(expr, _FIELD_BOUNDS[fi], job_name, fi, ti)
        bits |= b
        star = star or s
    return bits, star


# Go's unicode.IsSpace, which strings.Fields and strings.TrimSpace use.
_GO_SPACE = (
    "\t\n\v\f\r \x85\xa0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006"
    "\u2007\u2008\u2009\u200a\u2028\u2029\u202f\u205f\u3000"
)
_GO_FIELDS = re.compile(f"[^{re.escape(_GO_SPACE)}]+")


def _go_fields(s: str) -> list[str]:
    return _GO_FIELDS.findall(s)


# --------------------------------------------------------------------------
# Schedules
# --------------------------------------------------------------------------


def _as_utc(wall: datetime) -> datetime:
    if wall.tzinfo is UTC:
        return wall
    if wall.tzinfo is None or wall.utcoffset() is None:
        raise ValueError("wall time must be timezone-aware")
    return wall.astimezone(UTC)


@dataclass(frozen=True, slots=True)
class Schedule(abc.ABC):
    """A parsed schedule: immutable, shareable, and cached per (spec, job, zone).

    ``spec`` is the schedule after ``~`` substitution, as Dkron would run it.
    """

    kind: ClassVar[ScheduleKind]
    spec: str

    @abc.abstractmethod
    def next_after(self, wall: datetime) -> datetime | None:
        """The first fire instant strictly after ``wall``, as UTC; None means never.

        ``wall`` must be timezone-aware (any zone); a naive one is a caller bug.
        """

    def first_from(self, start: datetime) -> datetime | None:
        """The first fire at or after ``start`` (a job's ``starts_at``), as UTC."""
        return self.next_after(start - timedelta(microseconds=1))


@dataclass(frozen=True, slots=True)
class NeverSchedule(Schedule):
    """``@manually``: in the job table (manual runs work) but never due."""

    kind: ClassVar[ScheduleKind] = ScheduleKind.NEVER

    def next_after(self, wall: datetime) -> datetime | None:
        _as_utc(wall)
        return None


@dataclass(frozen=True, slots=True)
class EverySchedule(Schedule):
    """``@every d``: ``t`` truncated to the second, plus ``d`` (robfig's ConstantDelay)."""

    interval: timedelta

    kind: ClassVar[ScheduleKind] = ScheduleKind.EVERY

    def next_after(self, wall: datetime) -> datetime | None:
        # Called for every slot of every job: a UTC whole second (every slot
        # this schedule yields) skips the conversion and the truncation.
        t = wall if wall.tzinfo is UTC else _as_utc(wall)
        try:
            return (t.replace(microsecond=0) if t.microsecond else t) + self.interval
        except OverflowError:
            return None

    def first_from(self, start: datetime) -> datetime | None:
        # The chain starts at ``start`` itself (on a whole second, as its slots
        # are): next_after(start - 1 µs) would truncate to the second before
        # and put every slot a second short of the interval (12:59:59, ...).
        t = _as_utc(start)
        return t.replace(microsecond=0) + _ONE_SECOND if t.microsecond else t


@dataclass(frozen=True, slots=True)
class AtSchedule(Schedule):
    """``@at <RFC3339>``: one instant; a past one is accepted and never fires.

    The instant is kept as Unix seconds plus nanoseconds because Go accepts
    years 0000..9999 with offsets, beyond what ``datetime`` can hold.
    """

    unix_seconds: int
    nanos: int

    kind: ClassVar[ScheduleKind] = ScheduleKind.AT

    def next_after(self, wall: datetime) -> datetime | None:
        t = _as_utc(wall)
        delta = t - _EPOCH
        t_ns = (delta.days * 86400 + delta.seconds) * _NS_PER_SECOND + delta.microseconds * 1000
        at_ns = self.unix_seconds * _NS_PER_SECOND + self.nanos
        if at_ns <= t_ns:
            return None
        # Round a sub-microsecond fraction up, so the answer stays strictly after ``wall``.
        micros = -(-at_ns // 1000)
        try:
            return _EPOCH + timedelta(microseconds=micros)
        except OverflowError:
            return None


_ALL_DOW = 0b1111111
_ALL_DOM = _bits(1, 31, 1)


def _sorted_values(bits: int, lo: int, hi: int) -> tuple[int, ...]:
    return tuple(i for i in range(lo, hi + 1) if bits >> i & 1)


@dataclass(frozen=True, slots=True)
class CronSchedule(Schedule):
    """Six cron fields evaluated in the local wall time of ``zone``.

    DST policy, applied to every transition of the zone (DST or not):

    * A matching wall time inside a spring-forward *gap* (it never exists)
      fires at the first valid instant after the gap -- once, however many
      gap times match.
    * A matching wall time inside a fall-back *overlap* (it exists twice)
      fires once, at its first occurrence.

    Formally the fire instants are ``{inst(w) : w matches}`` with ``inst(w)``
    the first occurrence of ``w`` or, for a gap time, the end of the gap;
    ``inst`` is non-decreasing in ``w``, which is what lets ``next_after``
    walk wall times in order and stop at the first instant after ``t``.
    """

    zone: tzinfo
    second_bits: int
    minute_bits: int
    hour_bits: int
    dom_bits: int
    month_bits: int
    dow_bits: int
    dom_star: bool
    dow_star: bool
    seconds: tuple[int, ...] = field(init=False, repr=False, compare=False)
    minutes: tuple[int, ...] = field(init=False, repr=False, compare=False)
    hours: tuple[int, ...] = field(init=False, repr=False, compare=False)
    months: tuple[int, ...] = field(init=False, repr=False, compare=False)
    day_and: bool = field(init=False, repr=False, compare=False)
    possible: bool = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        setter = object.__setattr__
        setter(self, "seconds", _sorted_values(self.second_bits, 0, 59))
        setter(self, "minutes", _sorted_values(self.minute_bits, 0, 59))
        setter(self, "hours", _sorted_values(self.hour_bits, 0, 23))
        setter(self, "months", _sorted_values(self.month_bits, 1, 12))
        day_and = self.dom_star or self.dow_star
        setter(self, "day_and", day_and)
        dom_possible = any(
            self.dom_bits & _bits(1, _days_in_month(2000, m), 1) for m in self.months
        )
        if day_and:
            days_possible = (
                (self.dow_bits != 0 and self.dom_bits == _ALL_DOM)
                if self.dom_star
                else (dom_possible and self.dow_bits == _ALL_DOW)
            )
            if self.dom_star and self.dow_star:
                days_possible = True
        else:
            days_possible = dom_possible or self.dow_bits != 0
        possible = bool(self.seconds and self.minutes and self.hours and self.months)
        setter(self, "possible", possible and days_possible)

    kind: ClassVar[ScheduleKind] = ScheduleKind.CRON

    # -- wall-time matching ------------------------------------------------

    def _day_ok(self, y: int, mo: int, d: int) -> bool:
        dom = self.dom_bits >> d & 1
        dow = self.dow_bits >> (_days_from_civil(y, mo, d) + 4) % 7 & 1
        if self.day_and:
            return bool(dom and dow)
        return bool(dom or dow)

    def _next_wall(self, w: datetime) -> datetime | None:
        """The first matching naive wall time strictly after the naive ``w``."""
        y, mo, d = w.year, w.month, w.day
        h, mi, s = w.hour, w.minute, w.second + 1
        if s == 60:
            s, mi = 0, mi + 1
            if mi == 60:
                mi, h = 0, h + 1
        months, hours, minutes, seconds = self.months, self.hours, self.minutes, self.seconds
        while True:
            if h == 24:
                h, d = 0, d + 1
            if d > _days_in_month(y, mo):
                d, mo = 1, mo + 1
            if mo == 13:
                mo, y = 1, y + 1
            if y > 9999:
                return None
            if not self.month_bits >> mo & 1:
                i = bisect.bisect_left(months, mo)
                if i == len(months):
                    y, mo = y + 1, months[0]
                else:
                    mo = months[i]
                d, h, mi, s = 1, 0, 0, 0
                continue
            if not self._day_ok(y, mo, d):
                if self.day_and and self.dow_bits == _ALL_DOW:
                    nxt = self.dom_bits >> (d + 1)
                    d = d + 1 + ((nxt & -nxt).bit_length() - 1) if nxt else 32
                else:
                    d += 1
                h, mi, s = 0, 0, 0
                continue
            if not self.hour_bits >> h & 1:
                i = bisect.bisect_left(hours, h)
                if i == len(hours):
                    h, mi, s = 24, 0, 0
                    continue
                h, mi, s = hours[i], 0, 0
            if not self.minute_bits >> mi & 1:
                i = bisect.bisect_left(minutes, mi)
                if i == len(minutes):
                    h, mi, s = h + 1, 0, 0
                    continue
                mi, s = minutes[i], 0
            if not self.second_bits >> s & 1:
                i = bisect.bisect_left(seconds, s)
                if i == len(seconds):
                    mi, s = mi + 1, 0
                    if mi == 60:
                        h, mi = h + 1, 0
                    continue
                s = seconds[i]
            return datetime(y, mo, d, h, mi, s)

    def matches_wall(self, w: datetime) -> bool:
        """Whether the naive wall time ``w`` (whole seconds) matches all six fields."""
        return bool(
            self.second_bits >> w.second & 1
            and self.minute_bits >> w.minute & 1
            and self.hour_bits >> w.hour & 1
            and self.month_bits >> w.month & 1
            and self._day_ok(w.year, w.month, w.day)
        )

    # -- wall time -> instants (the DST policy) ----------------------------

    def _instant(self, w: datetime) -> datetime:
        zone = self.zone
        u = w.replace(tzinfo=zone).astimezone(UTC)
        if u.astimezone(zone).replace(tzinfo=None) == w:
            return u
        # ``w`` is in a gap: fold=1 gives an instant before the transition,
        # fold=0 one after it; bisect for the first instant whose wall time
        # is past ``w``, which is the end of the gap.
        lo = w.replace(tzinfo=zone, fold=1).astimezone(UTC)
        lo_s, hi_s = _unix(lo), _unix(u)
        while hi_s - lo_s > 1:
            mid = (lo_s + hi_s) // 2
            if _from_unix(mid).astimezone(zone).replace(tzinfo=None) > w:
                hi_s = mid
            else:
                lo_s = mid
        return _from_unix(hi_s)

    def _second_occurrence_floor(self, t: datetime, local: datetime) -> datetime:
        """For ``t`` in the repeated hour: the last wall time before the overlap ends.

        Every wall time up to it already fired at its first occurrence, which
        is before ``t``, so the walk may resume from there.
        """
        zone = self.zone
        first = local.replace(tzinfo=zone, fold=0).astimezone(UTC)
        lo_s, hi_s = _unix(first), _unix(t.replace(microsecond=0))
        while hi_s - lo_s > 1:
            mid = (lo_s + hi_s) // 2
            if _from_unix(mid).astimezone(zone).fold == 1:
                hi_s = mid
            else:
                lo_s = mid
        return _from_unix(hi_s - 1).astimezone(zone).replace(tzinfo=None)

    def next_after(self, wall: datetime) -> datetime | None:
        t = _as_utc(wall)
        if not self.possible:
            return None
        zone = self.zone
        if zone is UTC:
            nxt = self._next_wall(t.replace(tzinfo=None))
            return None if nxt is None else nxt.replace(tzinfo=UTC)
        try:
            return self._next_instant(t)
        except OverflowError:
            # Only at the ends of datetime's range (years 1 and 9999).
            return None

    def _next_instant(self, t: datetime) -> datetime | None:
        local = t.astimezone(self.zone)
        w = local.replace(tzinfo=None, microsecond=0)
        if local.fold == 1:
            w = self._second_occurrence_floor(t, w)
        while True:
            nxt = self._next_wall(w)
            if nxt is None:
                return None
            inst = self._instant(nxt)
            if inst > t:
                return inst
            w = nxt


def _unix(t: datetime) -> int:
    delta = t - _EPOCH
    return delta.days * 86400 + delta.seconds


def _from_unix(seconds: int) -> datetime:
    return _EPOCH + timedelta(seconds=seconds)


# --------------------------------------------------------------------------
# Parsing
# --------------------------------------------------------------------------

_DESCRIPTORS = {
    "@yearly": "0 0 0 1 1 *",
    "@annually": "0 0 0 1 1 *",
    "@monthly": "0 0 0 1 * *",
    "@weekly": "0 0 0 * * 0",
    "@daily": "0 0 0 * * *",
    "@midnight": "0 0 0 * * *",
    "@hourly": "0 0 * * * *",
}


def _parse_cron_fields(spec: str, job_name: str) -> tuple[int, int, int, int, int, int, bool, bool]:
    fields = _go_fields(spec)
    if len(fields) != 6:
        raise ScheduleError(f"expected exactly 6 fields, found {len(fields)}: [{' '.join(fields)}]")
    parsed = [_get_field(text, fi, job_name) for fi, text in enumerate(fields)]
    bits = [b for b, _ in parsed]
    return (*bits, parsed[3][1], parsed[5][1])  # type: ignore[return-value]


def _cron(source: str, spec: str, zone: tzinfo, job_name: str) -> CronSchedule:
    sec, mins, hrs, dom, mon, dow, dom_star, dow_star = _parse_cron_fields(spec, job_name)
    return CronSchedule(
        spec=source,
        zone=zone,
        second_bits=sec,
        minute_bits=mins,
        hour_bits=hrs,
        dom_bits=dom,
        month_bits=mon,
        dow_bits=dow,
        dom_star=dom_star,
        dow_star=dow_star,
    )


def _parse(spec: str, job_name: str, timezone: str, local_tz: tzinfo) -> Schedule:
    if spec == "":
        raise ScheduleError("empty spec string")
    source = spec
    # Dkron's extcron layer: exact whole-string matches, before robfig.
    if spec == "@manually":
        return NeverSchedule(spec=source)
    if spec == "@minutely":
        return _cron(source, "0 * * * * *", local_tz, job_name)
    if spec.startswith("@at "):
        try:
            seconds, nanos = _parse_rfc3339(spec[4:])
        except _GoParseError as exc:
            raise ScheduleError(f"failed to parse date {spec}: {exc}") from None
        return AtSchedule(spec=source, unix_seconds=seconds, nanos=nanos)
    # robfig/cron v3 Parser.Parse
    zone: tzinfo | None = None
    if spec.startswith(("TZ=", "CRON_TZ=")):
        space = spec.find(" ")
        if space < 0:
            space = len(spec)
        name = spec[spec.find("=") + 1 : space]
        try:
            zone = _load_location(name, local_tz)
        except ScheduleError as exc:
            raise ScheduleError(f"provided bad location {name}: {exc}") from None
        spec = spec[space:].strip(_GO_SPACE)
    if spec.startswith("@"):
        if spec in _DESCRIPTORS:
            # Descriptors ignore the job's zone (Dkron adds no CRON_TZ= to them).
            return _cron(source, _DESCRIPTORS[spec], zone or local_tz, job_name)
        if spec.startswith("@every "):
            try:
                nanos_d = parse_go_duration(spec[len("@every ") :])
            except ValueError as exc:
                raise ScheduleError(f"failed to parse duration {spec}: {exc}") from None
            seconds_d = max(nanos_d, _NS_PER_SECOND) // _NS_PER_SECOND
            return EverySchedule(spec=source, interval=timedelta(seconds=seconds_d))
        raise ScheduleError(f"unrecognized descriptor: {spec}")
    fields = _parse_cron_fields(spec, job_name)
    if zone is None:
        # The job's zone (Dkron prefixes ``CRON_TZ=<timezone>``) or the server's,
        # checked after the fields as Dkron validates the schedule first.
        zone = validate_timezone(timezone, local_tz=local_tz)
    sec, mins, hrs, dom, mon, dow, dom_star, dow_star = fields
    return CronSchedule(
        spec=source,
        zone=zone,
        second_bits=sec,
        minute_bits=mins,
        hour_bits=hrs,
        dom_bits=dom,
        month_bits=mon,
        dow_bits=dow,
        dom_star=dom_star,
        dow_star=dow_star,
    )


@functools.lru_cache(maxsize=32768)
def _parse_cached(spec: str, job_name: str, timezone: str, local_tz: tzinfo) -> Schedule:
    return _parse(schedule_hash(spec, job_name), job_name, timezone, local_tz)


def parse_schedule(
    spec: str, *, job_name: str = "", timezone: str = "", local_tz: tzinfo = UTC
) -> Schedule:
    """Parse a Dkron schedule (after ``~`` substitution) for one job.

    ``timezone`` is the job's IANA zone (``""``: the server's ``local_tz``); it
    applies to plain cron specs only -- descriptors run in ``local_tz`` and a
    ``TZ=``/``CRON_TZ=`` prefix overrides it, as in Dkron.  Results are cached:
    parsing happens once per distinct (spec, job, zone).
    """
    if "~" not in spec and "H" not in spec:
        job_name = ""  # the name cannot matter: share one cache entry
    return _parse_cached(spec, job_name, timezone, local_tz)


def job_schedule(job: ScheduledJob, *, local_tz: tzinfo = UTC) -> Schedule:
    return parse_schedule(job.schedule, job_name=job.name, timezone=job.timezone, local_tz=local_tz)


def fire_times(
    job: ScheduledJob,
    after: datetime,
    until: datetime,
    *,
    local_tz: tzinfo = UTC,
    limit: int | None = None,
) -> Iterator[datetime]:
    """Every fire instant of ``job`` in ``(after, until]``, in order, as UTC.

    The one enumeration the scheduler, catch-up and the next-N preview share.
    ``@every`` is anchored at ``after`` (Dkron anchors it where the entry is
    added or last fired), so callers pass the job's cursor.  The schedule is
    parsed eagerly: an invalid one raises `ScheduleError` here, not on the
    first ``next()``.
    """
    sched = job_schedule(job, local_tz=local_tz)
    return _iterate(sched, _as_utc(after), _as_utc(until), limit)


# A chain further behind ``now`` than this many slots (a long outage) is
# resumed from ``now`` instead of being walked slot by slot.
_MAX_WALK = 10_000


def upcoming_fires(
    job: ScheduledJob,
    now: datetime,
    *,
    first: datetime | None,
    cursor: datetime | None,
    starts_at: datetime | None = None,
    expires_at: datetime | None = None,
    count: int = 1,
    local_tz: tzinfo = UTC,
) -> list[datetime]:
    """The next ``count`` slots after ``now`` of a saved job, as its scheduler chains them.

    ``fire_times(job, now, …)`` anchors ``@every`` at ``now``; the scheduler
    anchors it at the job's own slots (``first``, the slot computed when the
    job was saved, until the replicated ``cursor`` passes it, then each slot
    after the one before), so only this walk gives an ``@every`` job's real
    phase.  It starts where the engine resumes a job (``resume_slot``):
    nothing before ``starts_at``; and nothing after ``expires_at``.  Slots at or before ``now``
    are being decided, not next; a cursor after ``now`` is a slot the leader
    claimed a moment early (its lookahead is shorter than any interval), and
    is still to come.
    """
    sched = job_schedule(job, local_tz=local_tz)
    now = _as_utc(now)
    nxt: datetime | None
    if cursor is not None and cursor > now and (first is None or first <= cursor):
        nxt = _as_utc(cursor)  # claimed ahead of its instant (the leader's lookahead)
    else:
        nxt = resume_slot(sched, anchor=now, cursor=cursor, first=first, starts_at=starts_at)
    walked = 0
    while nxt is not None and nxt <= now:
        walked += 1
        nxt = sched.next_after(nxt if walked < _MAX_WALK else now)
    out: list[datetime] = []
    while nxt is not None and len(out) < count:
        if expires_at is not None and nxt > expires_at:
            break
        out.append(nxt)
        nxt = sched.next_after(nxt)
    return out


def _iterate(sched: Schedule, t: datetime, end: datetime, limit: int | None) -> Iterator[datetime]:
    count = 0
    while limit is None or count < limit:
        nxt = sched.next_after(t)
        if nxt is None or nxt > end:
            return
        yield nxt
        count += 1
        t = nxt
