"""Jobs and executions: Dkron's v1 JSON shape, its validation rules and its merge rules.

Everything here is pure: no clocks, no I/O.  Times are integer nanoseconds
since the Unix epoch (``int``) because Dkron's execution ids embed
``started_at`` in nanoseconds and Python's ``datetime`` stops at microseconds;
``None`` stands for Go's "not set" (``null``, or the zero time where Dkron
prints ``0001-01-01T00:00:00Z``).

Schedule and timezone parsing belong to :mod:`dkron.schedule`; validation
takes them as injected callables so that this module has no opinion on cron
syntax.  See ``docs/jobs.md`` for the operator view of every field.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import json
import math
import re
import unicodedata
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import EllipsisType
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar

from dkron.schedule import parse_go_duration, parse_schedule, validate_timezone

__all__ = [
    "CATCHUP_POLICIES",
    "CONCURRENCY_POLICIES",
    "EXECUTION_STATUSES",
    "JOB_STATUSES",
    "MAX_TIME_NS",
    "MIN_TIME_NS",
    "TRIGGERS",
    "ZERO_TIME",
    "Execution",
    "Job",
    "PayloadError",
    "ValidationError",
    "default_schedule_validator",
    "default_timezone_validator",
    "execution_to_json",
    "format_rfc3339nano",
    "job_from_json",
    "job_from_json_bytes",
    "job_to_json",
    "merge_job",
    "parse_go_duration",
    "parse_memory_limit",
    "parse_rfc3339",
    "truncate_output",
    "validate_job",
]

ZERO_TIME = "0001-01-01T00:00:00Z"
"""Go's zero ``time.Time`` as Dkron prints it; the UI tests for this exact string."""

CONCURRENCY_POLICIES = frozenset({"allow", "forbid", ""})
CATCHUP_POLICIES = frozenset({"skip", "latest", "all"})
TRIGGERS = frozenset({"", "schedule", "manual", "retry", "catchup", "dependent"})
EXECUTION_STATUSES = frozenset({"", "lost", "cancelled"})
JOB_STATUSES = frozenset({"", "success", "failed", "partially_failed"})

_NS = 1_000_000_000


class ValidationError(ValueError):
    """A job that Dkron's ``Job.Validate`` would refuse; ``str()`` is Dkron's message."""

    def http_body(self) -> str:
        """The 400 body Dkron's API sends for this error."""
        return f"Job validation failed: {self}."


class PayloadError(ValidationError):
    """A body Go's JSON decoder would refuse; ``str()`` mimics the decoder's error."""

    def http_body(self) -> str:
        return f"Unable to parse payload: {self}."


# ---------------------------------------------------------------------------
# Objects
# ---------------------------------------------------------------------------


def _check_times(*values: int | None) -> None:
    for ns in values:
        if ns is not None and not MIN_TIME_NS <= ns <= MAX_TIME_NS:
            raise ValueError("times must lie in years 0001..9999")


@dataclass(frozen=True, slots=True)
class Job:
    """One job, field for field as Dkron stores it, plus the catch-up policy.

    Fields are positional so that the replicated state machine can carry a
    job inside its CBOR commands.  The mappings are never mutated after
    construction (copy with :func:`dataclasses.replace` and fresh dicts), so
    sharing one instance between the state and a reader is safe.
    """

    name: str
    displayname: str = ""
    timezone: str = ""
    schedule: str = ""
    owner: str = ""
    owner_email: str = ""
    success_count: int = 0
    error_count: int = 0
    last_success: int | None = None
    last_error: int | None = None
    disabled: bool = False
    tags: dict[str, str] | None = None
    metadata: dict[str, str] | None = None
    retries: int = 0
    dependent_jobs: tuple[str, ...] = ()
    parent_job: str = ""
    # ``None`` and ``{}`` both print as ``{}``: Dkron always emits an object here.
    processors: dict[str, dict[str, str]] | None = None
    concurrency: str = "allow"
    executor: str = ""
    executor_config: dict[str, str] | None = None
    status: str = ""
    next: int | None = None
    ephemeral: bool = False
    starts_at: int | None = None
    expires_at: int | None = None
    catchup: str = "skip"
    catchup_window: str = "1h"

    def __post_init__(self) -> None:
        # Only what Go's decoder itself would refuse is checked here; the
        # rest is Dkron's Validate, whose messages and order must be exact.
        if self.retries < 0 or self.retries >= 1 << 64:
            raise ValueError("retries is an unsigned 64-bit integer")
        for count in (self.success_count, self.error_count):
            if not -(1 << 63) <= count < 1 << 63:
                raise ValueError("counters are signed 64-bit integers")
        _check_times(self.last_success, self.last_error, self.next, self.starts_at, self.expires_at)


_C = TypeVar("_C", bound=type)


def _cache_slots(*names: str) -> Callable[[_C], _C]:
    """Rebuild a slots dataclass with more slots, ``names``, that are not fields.

    ``dataclass(slots=True)`` makes exactly one slot per field, and a slot
    cannot be added to a class once made, so the class is made again from
    its namespace as ``dataclass`` itself does.  Fields, ``fields()``,
    ``replace()``, equality, hashing, ``repr``, pickling and the wire codecs
    (which fill the field slots through a plain twin of the layout) are
    unchanged; each extra slot is a cache its reader fills lazily, so that an
    object built by any path (``__init__``, a codec, a slot copier, a copy)
    is complete without them.
    """

    def rebuild(cls: _C) -> _C:
        slots = vars(cls)["__slots__"]
        namespace = {k: v for k, v in vars(cls).items() if k not in slots}
        namespace["__slots__"] = (*slots, *names)
        new = type(cls)(cls.__name__, cls.__bases__, namespace)
        new.__qualname__ = cls.__qualname__
        return new

    return rebuild


def _filled_through_twin(cls: _C) -> _C:
    """Give a frozen slots dataclass an ``__init__`` that fills its slots through a
    plain twin of its layout, then runs ``__post_init__``.

    The generated ``__init__`` of a frozen class stores each field through
    ``object.__setattr__`` (a call per field); this one switches the new
    object to a twin with the same slots (see
    :func:`dkron.proto_sansio.wire.plain_twin`), stores the fields as plain
    slot writes and switches it back.  Parameters, defaults and checks are
    those of the generated one, which still builds instances of subclasses.
    """
    generated = vars(cls)["__init__"]
    twin = type(f"_{cls.__name__}InitTwin", (), {"__slots__": vars(cls)["__slots__"]})
    env: dict[str, Any] = {"_cls": cls, "_twin": twin, "_generated": generated}
    env["_set"] = object.__setattr__
    params = []
    names = []
    for f in dataclasses.fields(cls):
        assert f.init and f.default_factory is dataclasses.MISSING and not f.kw_only
        names.append(f.name)
        if f.default is dataclasses.MISSING:
            params.append(f.name)
        else:
            env[f"_d_{f.name}"] = f.default
            params.append(f"{f.name}=_d_{f.name}")
    lines = [f"def __init__(self, {', '.join(params)}):"]
    lines.append("    if type(self) is not _cls:")
    lines.append(f"        return _generated(self, {', '.join(names)})")
    lines.append("    _set(self, '__class__', _twin)")
    lines.extend(f"    self.{name} = {name}" for name in names)
    lines.append("    _set(self, '__class__', _cls)")
    lines.append("    self.__post_init__()")
    exec("\n".join(lines), env)  # source built here from field names only
    init = env["__init__"]
    init.__qualname__ = generated.__qualname__
    init.__module__ = generated.__module__
    init.__annotations__ = dict(generated.__annotations__)
    init.__doc__ = generated.__doc__
    cls.__init__ = init  # type: ignore[misc]
    return cls


@_filled_through_twin
@_cache_slots("_id", "_cbor")
@dataclass(frozen=True, slots=True)
class Execution:
    """One run of a job on one node (one attempt).

    ``success`` stays the truth for Dkron compatibility; ``status`` only says
    *why* a failure happened when the worker never reported (``lost``) or
    the run was stopped (``cancelled``).
    """

    job_name: str
    started_at: int
    node_name: str
    finished_at: int | None = None
    success: bool = False
    output: str = ""
    group: int = 0
    attempt: int = 0
    scheduled_time: int | None = None
    trigger: str = ""
    status: str = ""

    if TYPE_CHECKING:
        # The cache slots added by _cache_slots: not fields, so not dataclass
        # annotations at run time.  ``_cbor`` is the record's encoding in a
        # snapshot of the replicated state, kept by dkron.state.
        _id: ClassVar[str]
        _cbor: ClassVar[bytes]

    def __post_init__(self) -> None:
        # Runs for every record decoded anywhere (each hop, each log entry):
        # _check_times is spelled out here, the common values tested first.
        if self.attempt < 0:
            raise ValueError("attempt must be >= 0")
        if self.trigger not in TRIGGERS:
            raise ValueError(f"unknown trigger {self.trigger!r}")
        status = self.status
        if status != "":
            if status not in EXECUTION_STATUSES:
                raise ValueError(f"unknown execution status {status!r}")
            if self.success:
                raise ValueError(f"a {status} execution cannot be successful")
        started, finished, scheduled = self.started_at, self.finished_at, self.scheduled_time
        if (
            (started is not None and not MIN_TIME_NS <= started <= MAX_TIME_NS)
            or (finished is not None and not MIN_TIME_NS <= finished <= MAX_TIME_NS)
            or (scheduled is not None and not MIN_TIME_NS <= scheduled <= MAX_TIME_NS)
        ):
            raise ValueError("times must lie in years 0001..9999")

    @property
    def id(self) -> str:
        """Dkron's key: ``<started_at UnixNano>-<node_name>``.

        Built once per object: every replica looks each record up by it
        (several times per result), and replicas in one process share the
        decoded records.  A string kept also keeps its hash.
        """
        key: str | None = getattr(self, "_id", None)  # unset until first asked
        if key is None:
            key = f"{self.started_at}-{self.node_name}"
            object.__setattr__(self, "_id", key)
        return key

    @property
    def running(self) -> bool:
        return self.finished_at is None


# ---------------------------------------------------------------------------
# Time helpers (Go's RFC3339Nano, integer nanoseconds)
# ---------------------------------------------------------------------------

_EPOCH_ORDINAL = _dt.date(1970, 1, 1).toordinal()
MIN_TIME_NS = (1 - _EPOCH_ORDINAL) * 86400 * _NS
"""``0001-01-01T00:00:00Z``: the earliest instant a job or execution may hold."""
MAX_TIME_NS = (_dt.date(9999, 12, 31).toordinal() + 1 - _EPOCH_ORDINAL) * 86400 * _NS - 1
"""The last nanosecond of year 9999: RFC3339 has four year digits."""
_RFC3339_RE = re.compile(
    r"(\d{4})-(\d{2})-(\d{2})T(\d{2}):(\d{2}):(\d{2})(?:\.(\d+))?(Z|[+-]\d{2}:\d{2})\Z"
)
_LOCAL_RE = re.compile(r"(\d{4})-(\d{2})-(\d{2})T(\d{2}):(\d{2})\Z")


def format_rfc3339nano(ns: int, offset_seconds: int = 0) -> str:
    """Go's ``time.RFC3339Nano`` for an instant shown at a fixed UTC offset.

    Fractional seconds are printed with trailing zeros trimmed (and no dot at
    all for whole seconds); a zero offset prints ``Z``; the offset is
    truncated to minutes as Go does.
    """
    local = ns + offset_seconds * _NS
    secs, frac = divmod(local, _NS)
    days, sod = divmod(secs, 86400)
    day = _dt.date.fromordinal(_EPOCH_ORDINAL + days)
    hh, rem = divmod(sod, 3600)
    mm, ss = divmod(rem, 60)
    out = f"{day.year:04d}-{day.month:02d}-{day.day:02d}T{hh:02d}:{mm:02d}:{ss:02d}"
    if frac:
        out += "." + f"{frac:09d}".rstrip("0")
    if offset_seconds == 0:
        return out + "Z"
    sign = "-" if offset_seconds < 0 else "+"
    minutes = abs(offset_seconds) // 60
    return f"{out}{sign}{minutes // 60:02d}:{minutes % 60:02d}"


def _format_in_zone(ns: int, tz: _dt.tzinfo | None) -> str:
    if tz is None:
        return format_rfc3339nano(ns)
    try:
        utc = _dt.datetime(1970, 1, 1, tzinfo=_dt.UTC) + _dt.timedelta(seconds=ns // _NS)
        offset = utc.astimezone(tz).utcoffset()
        seconds = 0 if offset is None else int(offset.total_seconds())
        return format_rfc3339nano(ns, seconds)
    except (OverflowError, ValueError):  # the zone's offset leaves years 1..9999
        return format_rfc3339nano(ns)


def _parse_error(text: str) -> ValueError:
    return ValueError(f'parsing time "{text}": not RFC3339 or YYYY-MM-DDTHH:MM')


def parse_rfc3339(text: str, *, allow_local: bool = True) -> int:
    """RFC3339 (any fraction, ``Z`` or ``±hh:mm``) to integer nanoseconds.

    ``allow_local`` also accepts the HTML datetime-local form
    ``YYYY-MM-DDTHH:MM``, read as UTC, as Dkron's nullable times do.
    """
    m = _RFC3339_RE.match(text)
    frac_ns = 0
    offset = 0
    if m is not None:
        year, month, day, hh, mi, ss = (int(m.group(i)) for i in range(1, 7))
        if m.group(7):
            frac_ns = int(m.group(7)[:9].ljust(9, "0"))
        zone = m.group(8)
        if zone != "Z":
            oh, om = int(zone[1:3]), int(zone[4:6])
            if oh > 23 or om > 59:
                raise _parse_error(text)
            offset = (oh * 3600 + om * 60) * (-1 if zone[0] == "-" else 1)
    else:
        lm = _LOCAL_RE.match(text) if allow_local else None
        if lm is None:
            raise _parse_error(text)
        year, month, day, hh, mi = (int(lm.group(i)) for i in range(1, 6))
        ss = 0
    if hh > 23 or mi > 59 or ss > 59:
        raise _parse_error(text)
    try:
        ordinal = _dt.date(year, month, day).toordinal()
    except ValueError:
        raise _parse_error(text) from None
    secs = (ordinal - _EPOCH_ORDINAL) * 86400 + hh * 3600 + mi * 60 + ss - offset
    ns = secs * _NS + frac_ns
    if not MIN_TIME_NS <= ns <= MAX_TIME_NS:
        raise _parse_error(text)
    return ns


_MEM_RE = re.compile(r"\s*([0-9]*\.?[0-9]+)\s*([A-Za-z]*)\s*\Z")
_MEM_UNITS = {
    "": 1,
    "B": 1,
    "BYTES": 1,
    "K": 1 << 10,
    "KB": 1 << 10,
    "M": 1 << 20,
    "MB": 1 << 20,
    "G": 1 << 30,
    "GB": 1 << 30,
    "T": 1 << 40,
    "TB": 1 << 40,
}


def parse_memory_limit(text: str) -> int:
    """The shell executor's ``mem_limit``: bytes, or a number with a 1024-based unit."""
    m = _MEM_RE.match(text)
    if m is None:
        raise ValueError(f"invalid memory limit format: {text}")
    unit = _MEM_UNITS.get(m.group(2).upper())
    if unit is None:
        raise ValueError(f"unsupported memory unit: {m.group(2)}")
    value = math.floor(float(m.group(1)) * unit)
    if value <= 0:
        raise ValueError(f"memory limit must be positive: {text}")
    return value


# ---------------------------------------------------------------------------
# Validation (Dkron's Job.Validate, in order)
# ---------------------------------------------------------------------------


def _name_char_ok(c: str) -> bool:
    return c in "0123456789_-" or unicodedata.category(c) == "Ll"


def default_schedule_validator(job: Job) -> None:
    """Dkron's rule 4 through the real parser.

    The job's timezone is deliberately not passed: it is rule 6, checked
    after concurrency, so that a job with several faults gets Dkron's message.
    """
    parse_schedule(job.schedule, job_name=job.name)


def default_timezone_validator(name: str) -> None:
    """IANA names as Go's ``time.LoadLocation`` sees them (``""``, ``UTC``, ``Local``)."""
    validate_timezone(name)


def validate_job(
    job: Job,
    *,
    schedule_validator: Callable[[Job], None] = default_schedule_validator,
    timezone_validator: Callable[[str], object] = default_timezone_validator,
) -> None:
    """Dkron's ``Job.Validate``: the first failing rule wins, messages verbatim.

    The injected validators raise ``ValueError(message)``; the schedule's
    message is prefixed as Dkron does, the timezone's is used as is.  The
    two catch-up rules are ours and come last, so a job Dkron refuses is
    refused with Dkron's message.
    """
    if job.name == "":
        raise ValidationError("name cannot be empty")
    for c in job.name:
        if not _name_char_ok(c):
            raise ValidationError(f"name contains illegal character '{c}'")
    if job.parent_job == job.name:
        raise ValidationError("the job can not have itself as parent")
    if job.schedule != "" or job.parent_job == "":
        try:
            schedule_validator(job)
        except ValueError as exc:
            raise ValidationError(f"can't parse job schedule: {exc}") from None
    if job.concurrency not in CONCURRENCY_POLICIES:
        raise ValidationError('invalid concurrency policy value, use "allow" or "forbid"')
    try:
        timezone_validator(job.timezone)
    except ValueError as exc:
        raise ValidationError(str(exc)) from None
    if job.executor == "shell" and job.executor_config:
        timeout = job.executor_config.get("timeout", "")
        if timeout:
            try:
                parse_go_duration(timeout)
            except ValueError:
                raise ValidationError("Error parsing job timeout value") from None
        mem_limit = job.executor_config.get("mem_limit", "")
        if mem_limit:
            try:
                parse_memory_limit(mem_limit)
            except ValueError as exc:
                raise ValidationError(f"Error parsing job memory limit value: {exc}") from None
    if job.catchup not in CATCHUP_POLICIES:
        raise ValidationError('invalid catchup policy value, use "skip", "latest" or "all"')
    try:
        window = parse_go_duration(job.catchup_window)
    except ValueError:
        window = 0
    if window <= 0:
        raise ValidationError('invalid catchup_window value, use a positive duration like "1h"')


# ---------------------------------------------------------------------------
# JSON in (Go's encoding/json semantics over an already-parsed object)
# ---------------------------------------------------------------------------

_GO_TYPES = {
    "str": "string",
    "bool": "bool",
    "int": "int",
    "uint": "uint",
    "smap": "map[string]string",
    "procs": "map[string]plugin.Config",
    "slist": "[]string",
}

# JSON key -> (attribute, kind).  Order is irrelevant on input.
_FIELDS: dict[str, tuple[str, str]] = {
    "id": ("", "str"),
    "name": ("name", "str"),
    "displayname": ("displayname", "str"),
    "timezone": ("timezone", "str"),
    "schedule": ("schedule", "str"),
    "owner": ("owner", "str"),
    "owner_email": ("owner_email", "str"),
    "success_count": ("success_count", "int"),
    "error_count": ("error_count", "int"),
    "last_success": ("last_success", "ntime"),
    "last_error": ("last_error", "ntime"),
    "disabled": ("disabled", "bool"),
    "tags": ("tags", "smap"),
    "metadata": ("metadata", "smap"),
    "retries": ("retries", "uint"),
    "dependent_jobs": ("dependent_jobs", "slist"),
    "parent_job": ("parent_job", "str"),
    "processors": ("processors", "procs"),
    "concurrency": ("concurrency", "str"),
    "executor": ("executor", "str"),
    "executor_config": ("executor_config", "smap"),
    "status": ("status", "str"),
    "next": ("next", "time"),
    "ephemeral": ("ephemeral", "bool"),
    "starts_at": ("starts_at", "ntime"),
    "expires_at": ("expires_at", "ntime"),
    "catchup": ("catchup", "str"),
    "catchup_window": ("catchup_window", "str"),
}


def _json_kind(v: object) -> str:
    if isinstance(v, bool):
        return "bool"
    if isinstance(v, int | float):
        return "number"
    if isinstance(v, str):
        return "string"
    if isinstance(v, list):
        return "array"
    return "object"


def _mismatch(v: object, key: str, gotype: str, *, literal: bool = False) -> PayloadError:
    what = _json_kind(v)
    if literal:
        what += f" {v!r}"
    return PayloadError(
        f"json: cannot unmarshal {what} into Go struct field Job.{key} of type {gotype}"
    )


def _dec_str(v: object, key: str) -> str:
    if not isinstance(v, str):
        raise _mismatch(v, key, "string")
    return v


def _dec_smap(v: object, key: str) -> dict[str, str]:
    if not isinstance(v, dict):
        raise _mismatch(v, key, _GO_TYPES["smap"])
    out: dict[str, str] = {}
    for k, x in v.items():
        if x is None:
            out[str(k)] = ""
        elif not isinstance(x, str):
            raise _mismatch(x, key, "string")
        else:
            out[str(k)] = x
    return out


def _dec_int(v: object, key: str, *, unsigned: bool) -> int:
    gotype = "uint" if unsigned else "int"
    if isinstance(v, bool) or not isinstance(v, int | float):
        raise _mismatch(v, key, gotype)
    if isinstance(v, float) or (unsigned and v < 0):
        raise _mismatch(v, key, gotype, literal=True)
    lo, hi = (0, 1 << 64) if unsigned else (-(1 << 63), 1 << 63)
    if not lo <= v < hi:
        raise _mismatch(v, key, gotype, literal=True)
    return v


def _dec_time(v: object, *, nullable: bool) -> int | None:
    if not isinstance(v, str):
        if nullable:
            raise PayloadError(
                f"json: cannot unmarshal {_json_kind(v)} into Go value of type string"
            )
        raise PayloadError("Time.UnmarshalJSON: input is not a JSON string")
    try:
        ns = parse_rfc3339(v, allow_local=nullable)
    except ValueError as exc:
        raise PayloadError(str(exc)) from None
    if not nullable and ns == _ZERO_NS:
        return None
    return ns


def _dec_field(kind: str, v: object, key: str) -> object:
    if kind == "str":
        return _dec_str(v, key)
    if kind == "bool":
        if not isinstance(v, bool):
            raise _mismatch(v, key, "bool")
        return v
    if kind in ("int", "uint"):
        return _dec_int(v, key, unsigned=kind == "uint")
    if kind == "smap":
        return _dec_smap(v, key)
    if kind == "slist":
        if not isinstance(v, list):
            raise _mismatch(v, key, _GO_TYPES["slist"])
        return tuple("" if x is None else _dec_str(x, key) for x in v)
    if kind == "procs":
        if not isinstance(v, dict):
            raise _mismatch(v, key, _GO_TYPES["procs"])
        procs: dict[str, dict[str, str]] = {}
        for pname, conf in v.items():
            if conf is None:
                procs[str(pname)] = {}
            elif not isinstance(conf, dict):
                raise _mismatch(conf, key, "plugin.Config")
            else:
                procs[str(pname)] = _dec_smap(conf, key)
        return procs
    return _dec_time(v, nullable=kind == "ntime")


def job_from_json(obj: object) -> Job:
    """Decode a parsed JSON body as Dkron's API does (``Job{concurrency:"allow"}`` first).

    Keys match case-insensitively, unknown keys are ignored, ``null`` leaves
    a field at its default, and a type mismatch raises :class:`PayloadError`
    with Go's decoder wording.
    """
    if not isinstance(obj, dict):
        raise PayloadError(
            f"json: cannot unmarshal {_json_kind(obj)} into Go value of type dkron.Job"
        )
    values: dict[str, Any] = {}
    for raw_key, v in obj.items():
        key = str(raw_key)
        canonical = key if key in _FIELDS else key.lower()
        spec = _FIELDS.get(canonical)
        if spec is None or v is None:
            continue
        attr, kind = spec
        decoded = _dec_field(kind, v, canonical)
        if attr:
            values[attr] = decoded
    values.setdefault("name", "")
    try:
        return Job(**values)
    except ValueError as exc:  # only the integer-range guards can fire here
        raise PayloadError(str(exc)) from None


def job_from_json_bytes(body: bytes) -> Job:
    """Decode a raw request body; every failure is a :class:`PayloadError`."""
    text = body.decode("utf-8", errors="replace")
    if not text.strip():
        raise PayloadError("EOF")

    def _no_constants(name: str) -> object:
        raise PayloadError(f"invalid character '{name[0]}' looking for beginning of value")

    try:
        obj = json.loads(text, parse_constant=_no_constants)
    except json.JSONDecodeError as exc:
        if exc.pos >= len(text.rstrip()):
            raise PayloadError("unexpected EOF") from None
        ch = text[exc.pos]
        raise PayloadError(f"invalid character '{ch}' looking for beginning of value") from None
    except RecursionError:
        raise PayloadError("exceeded max depth") from None
    except PayloadError:
        raise
    except ValueError as exc:  # e.g. an integer literal longer than Python converts
        raise PayloadError(f"cannot unmarshal number: {exc}") from None
    return job_from_json(obj)


# ---------------------------------------------------------------------------
# JSON out
# ---------------------------------------------------------------------------

_ZERO_NS = parse_rfc3339(ZERO_TIME)


def _time_or_null(ns: int | None) -> str | None:
    return None if ns is None else format_rfc3339nano(ns)


def _sorted_map(m: Mapping[str, str] | None) -> dict[str, str] | None:
    # Go's encoder sorts map keys; doing the same makes output independent of
    # insertion order (which a snapshot restore does not preserve).
    return None if m is None else {k: m[k] for k in sorted(m)}


def job_to_json(job: Job, *, next_ns: int | EllipsisType | None = ...) -> dict[str, object]:
    """The Job object in Dkron's exact key order; ``catchup*`` are appended.

    ``next_ns`` replaces the stored ``next`` (``None``: the zero time): the
    API shows the slot the scheduler fires next, where the stored value is
    only the job's first slot.
    """
    nxt = job.next if next_ns is ... else next_ns
    processors = job.processors or {}
    return {
        "id": job.name,
        "name": job.name,
        "displayname": job.displayname,
        "timezone": job.timezone,
        "schedule": job.schedule,
        "owner": job.owner,
        "owner_email": job.owner_email,
        "success_count": job.success_count,
        "error_count": job.error_count,
        "last_success": _time_or_null(job.last_success),
        "last_error": _time_or_null(job.last_error),
        "disabled": job.disabled,
        "tags": _sorted_map(job.tags),
        "metadata": _sorted_map(job.metadata),
        "retries": job.retries,
        "dependent_jobs": list(job.dependent_jobs) if job.dependent_jobs else None,
        "parent_job": job.parent_job,
        "processors": {k: _sorted_map(processors[k]) for k in sorted(processors)},
        "concurrency": job.concurrency,
        "executor": job.executor,
        "executor_config": _sorted_map(job.executor_config),
        "status": job.status,
        "next": ZERO_TIME if nxt is None else format_rfc3339nano(nxt),
        "ephemeral": job.ephemeral,
        "starts_at": _time_or_null(job.starts_at),
        "expires_at": _time_or_null(job.expires_at),
        "catchup": job.catchup,
        "catchup_window": job.catchup_window,
    }


def execution_to_json(
    ex: Execution,
    *,
    tz: _dt.tzinfo | None = None,
    output_size_limit: int | None = None,
    list_view: bool = True,
) -> dict[str, object]:
    """An execution as Dkron serves it.

    ``list_view`` gives the list endpoint's apiExecution (with
    ``output_truncated``, and ``output_size_limit`` keeping the last N
    bytes); otherwise the single-execution shape.  ``tz`` renders times in
    the job's zone (``None`` = UTC); the zero time is always printed as
    ``0001-01-01T00:00:00Z``.
    """
    output = ex.output
    truncated = False
    if list_view and output_size_limit is not None and output_size_limit >= 0:
        raw = output.encode("utf-8", errors="surrogatepass")
        if len(raw) > output_size_limit:
            cut = raw[len(raw) - output_size_limit :] if output_size_limit else b""
            output = cut.decode("utf-8", errors="replace")
            truncated = True
    out: dict[str, object] = {}
    out["id"] = ex.id
    if ex.job_name:
        out["job_name"] = ex.job_name
    out["started_at"] = _format_in_zone(ex.started_at, tz)
    out["finished_at"] = (
        ZERO_TIME if ex.finished_at is None else _format_in_zone(ex.finished_at, tz)
    )
    out["success"] = ex.success
    if output:
        out["output"] = output
    if ex.node_name:
        out["node_name"] = ex.node_name
    if ex.group:
        out["group"] = ex.group
    if ex.attempt:
        out["attempt"] = ex.attempt
    if list_view:
        out["output_truncated"] = truncated
    if ex.scheduled_time is not None:
        out["scheduled_time"] = _format_in_zone(ex.scheduled_time, tz)
    if ex.trigger:
        out["trigger"] = ex.trigger
    if ex.status:
        out["status"] = ex.status
    return out


def truncate_output(output: str, limit: int) -> str:
    """Cap an output at ``limit`` UTF-8 bytes, keeping its head and its tail.

    The head says how a run started and the tail how it ended; the middle is
    what an operator can most afford to lose.  A marker says how much went.
    """
    raw = output.encode("utf-8", errors="surrogatepass")
    if len(raw) <= limit:
        return output
    dropped = len(raw)
    marker = b""
    for _ in range(2):  # the marker's own length changes how much is dropped
        marker = f"\n...[{dropped} bytes truncated]...\n".encode()
        keep = max(limit - len(marker), 0)
        dropped = len(raw) - keep
    keep = max(limit - len(marker), 0)
    if keep == 0:
        return marker[:limit].decode("ascii")
    head_n = keep // 2
    tail_n = keep - head_n
    head = raw[:head_n].decode("utf-8", errors="ignore")
    tail = raw[len(raw) - tail_n :].decode("utf-8", errors="ignore")
    return head + marker.decode("ascii") + tail


# ---------------------------------------------------------------------------
# Store merge rules (Dkron's store.SetJob)
# ---------------------------------------------------------------------------


def _later(a: int | None, b: int | None) -> int | None:
    if a is None:
        return b
    if b is None:
        return a
    return max(a, b)


def merge_job(stored: Job | None, submitted: Job) -> Job:
    """What Dkron's store keeps when ``submitted`` is saved over ``stored``.

    Counters keep the maximum, ``last_*`` the later time, a non-empty stored
    status wins, ``next`` is the submitted one when the schedule changed and
    the later one otherwise.  ``dependent_jobs`` is always the stored
    (derived) list: unlike Dkron, a client cannot inject dependents.
    Everything else is a full replace.
    """
    if stored is None:
        return dataclasses.replace(submitted, dependent_jobs=())
    return dataclasses.replace(
        submitted,
        success_count=max(stored.success_count, submitted.success_count),
        error_count=max(stored.error_count, submitted.error_count),
        last_success=_later(stored.last_success, submitted.last_success),
        last_error=_later(stored.last_error, submitted.last_error),
        dependent_jobs=stored.dependent_jobs,
        status=stored.status or submitted.status,
        next=(
            submitted.next
            if stored.schedule != submitted.schedule
            else _later(stored.next, submitted.next)
        ),
    )
