"""Job/Execution JSON, validation messages and order, time helpers, merge rules."""

from __future__ import annotations

import copy
import dataclasses
import pickle
import zoneinfo

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dkron.model import (
    EXECUTION_STATUSES,
    MAX_TIME_NS,
    MIN_TIME_NS,
    TRIGGERS,
    ZERO_TIME,
    Execution,
    Job,
    PayloadError,
    ValidationError,
    execution_to_json,
    format_rfc3339nano,
    job_from_json,
    job_from_json_bytes,
    job_to_json,
    merge_job,
    parse_go_duration,
    parse_memory_limit,
    parse_rfc3339,
    truncate_output,
    validate_job,
)
from dkron.proto_sansio.wire import Codec, slot_copier
from dkron.state import ExecutionStarted

EXAMPLE_KEYS = [
    "id",
    "name",
    "displayname",
    "timezone",
    "schedule",
    "owner",
    "owner_email",
    "success_count",
    "error_count",
    "last_success",
    "last_error",
    "disabled",
    "tags",
    "metadata",
    "retries",
    "dependent_jobs",
    "parent_job",
    "processors",
    "concurrency",
    "executor",
    "executor_config",
    "status",
    "next",
    "ephemeral",
    "starts_at",
    "expires_at",
]


def _job(**kw: object) -> Job:
    base: dict[str, object] = {"name": "job1", "schedule": "@every 10s"}
    base.update(kw)
    return job_from_json(base)


def _validate(job: Job) -> None:
    validate_job(job)


# -- JSON out -------------------------------------------------------------------


def test_job_to_json_matches_dkron_example() -> None:
    body = {
        "name": "job1",
        "timezone": "Europe/Berlin",
        "schedule": "@every 10s",
        "owner": "Platform Team",
        "owner_email": "platform@example.com",
        "success_count": 3,
        "last_success": "2025-01-01T10:00:10.123456789Z",
        "tags": {"server": "true:1"},
        "metadata": {"user": "12345"},
        "executor": "shell",
        "executor_config": {"command": "date"},
        "status": "success",
        "next": "2025-01-01T10:00:20Z",
    }
    out = job_to_json(job_from_json(body))
    assert list(out)[: len(EXAMPLE_KEYS)] == EXAMPLE_KEYS
    assert list(out)[len(EXAMPLE_KEYS) :] == ["catchup", "catchup_window"]
    expected = {
        "id": "job1",
        "name": "job1",
        "displayname": "",
        "timezone": "Europe/Berlin",
        "schedule": "@every 10s",
        "owner": "Platform Team",
        "owner_email": "platform@example.com",
        "success_count": 3,
        "error_count": 0,
        "last_success": "2025-01-01T10:00:10.123456789Z",
        "last_error": None,
        "disabled": False,
        "tags": {"server": "true:1"},
        "metadata": {"user": "12345"},
        "retries": 0,
        "dependent_jobs": None,
        "parent_job": "",
        "processors": {},
        "concurrency": "allow",
        "executor": "shell",
        "executor_config": {"command": "date"},
        "status": "success",
        "next": "2025-01-01T10:00:20Z",
        "ephemeral": False,
        "starts_at": None,
        "expires_at": None,
        "catchup": "skip",
        "catchup_window": "1h",
    }
    assert out == expected


def test_job_to_json_nulls_and_zero_time() -> None:
    out = job_to_json(Job(name="a"))
    assert out["next"] == ZERO_TIME
    for key in ("tags", "metadata", "dependent_jobs", "executor_config", "last_success"):
        assert out[key] is None
    assert out["processors"] == {}


def test_job_to_json_sorts_map_keys_like_go() -> None:
    out = job_to_json(_job(tags={"b": "1", "a": "2"}, processors={"z": {"y": "1", "x": "2"}}))
    tags = out["tags"]
    processors = out["processors"]
    assert isinstance(tags, dict) and list(tags) == ["a", "b"]
    assert isinstance(processors, dict) and list(processors["z"]) == ["x", "y"]


def test_job_to_json_next_override() -> None:
    out = job_to_json(Job(name="a"), next_ns=1_700_000_000 * 10**9)
    assert out["next"] == "2023-11-14T22:13:20Z"


# -- JSON in --------------------------------------------------------------------


def test_concurrency_defaults_to_allow_only_when_absent() -> None:
    assert job_from_json({"name": "a"}).concurrency == "allow"
    assert job_from_json({"name": "a", "concurrency": None}).concurrency == "allow"
    assert job_from_json({"name": "a", "concurrency": ""}).concurrency == ""


def test_unknown_keys_ignored_and_keys_case_insensitive() -> None:
    job = job_from_json({"Name": "a", "SCHEDULE": "@daily", "command": "echo", "x": [1]})
    assert job.name == "a"
    assert job.schedule == "@daily"


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (
            {"name": 5},
            "json: cannot unmarshal number into Go struct field Job.name of type string",
        ),
        (
            {"name": "a", "executor_config": {"timeout": 5}},
            "json: cannot unmarshal number into Go struct field Job.executor_config of type string",
        ),
        (
            {"name": "a", "retries": -1},
            "json: cannot unmarshal number -1 into Go struct field Job.retries of type uint",
        ),
        (
            {"name": "a", "retries": 1.5},
            "json: cannot unmarshal number 1.5 into Go struct field Job.retries of type uint",
        ),
        (
            {"name": "a", "disabled": "true"},
            "json: cannot unmarshal string into Go struct field Job.disabled of type bool",
        ),
        (
            {"name": "a", "tags": []},
            "json: cannot unmarshal array into Go struct field Job.tags of type map[string]string",
        ),
        (
            {"name": "a", "processors": {"files": {"forward": True}}},
            "json: cannot unmarshal bool into Go struct field Job.processors of type string",
        ),
        (
            {"name": "a", "success_count": True},
            "json: cannot unmarshal bool into Go struct field Job.success_count of type int",
        ),
        ([1], "json: cannot unmarshal array into Go value of type dkron.Job"),
        ({"name": "a", "next": 5}, "Time.UnmarshalJSON: input is not a JSON string"),
    ],
)
def test_payload_errors(body: object, message: str) -> None:
    with pytest.raises(PayloadError) as info:
        job_from_json(body)
    assert str(info.value) == message
    assert info.value.http_body() == f"Unable to parse payload: {message}."


def test_nullable_times_accept_rfc3339_offset_and_datetime_local() -> None:
    job = job_from_json(
        {
            "name": "a",
            "starts_at": "2025-12-19T09:09",
            "expires_at": "2025-12-19T10:09:00+01:00",
            "last_error": None,
        }
    )
    assert job.starts_at == job.expires_at == parse_rfc3339("2025-12-19T09:09:00Z")
    assert job.last_error is None
    with pytest.raises(PayloadError):
        job_from_json({"name": "a", "starts_at": "tomorrow"})
    with pytest.raises(PayloadError):
        job_from_json({"name": "a", "next": "2025-12-19T09:09"})  # next is a plain time.Time


def test_next_zero_time_is_unset() -> None:
    assert job_from_json({"name": "a", "next": ZERO_TIME}).next is None


def test_map_null_values_become_empty_strings() -> None:
    job = job_from_json({"name": "a", "tags": {"k": None}, "processors": {"log": None}})
    assert job.tags == {"k": ""}
    assert job.processors == {"log": {}}


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"", "EOF"),
        (b"   ", "EOF"),
        (b"{", "unexpected EOF"),
        (b"x", "invalid character 'x' looking for beginning of value"),
        (b'{"name": NaN}', "invalid character 'N' looking for beginning of value"),
        (b"[" * 100_000, "exceeded max depth"),
    ],
)
def test_body_errors(body: bytes, message: str) -> None:
    with pytest.raises(PayloadError) as info:
        job_from_json_bytes(body)
    assert str(info.value) == message


def test_body_roundtrip() -> None:
    job = job_from_json_bytes(b'{"name":"a","schedule":"@daily","retries":2}')
    assert (job.name, job.schedule, job.retries) == ("a", "@daily", 2)


# -- validation -----------------------------------------------------------------


VALID_NAME = "abcdefghijklmnopqrstuvwxyz0123456789-_ßñëäïüøüáéíóýćàèìòùâêîôûæšłç"


@pytest.mark.parametrize(
    ("job", "message"),
    [
        (Job(name=""), "name cannot be empty"),
        (Job(name="", parent_job="p"), "name cannot be empty"),
        (Job(name="BAD JOB NAME!", schedule="@daily"), "name contains illegal character 'B'"),
        (Job(name="a.b", schedule="@daily"), "name contains illegal character '.'"),
        (Job(name="a/b"), "name contains illegal character '/'"),
        (Job(name="a", parent_job="a"), "the job can not have itself as parent"),
        (Job(name="a"), "can't parse job schedule: empty spec string"),
        (
            Job(name="a", schedule="@daily", concurrency="badvalue"),
            'invalid concurrency policy value, use "allow" or "forbid"',
        ),
        (
            Job(name="a", schedule="@daily", timezone="notatimezone"),
            "unknown time zone notatimezone",
        ),
        (
            Job(
                name="a",
                schedule="@daily",
                executor="shell",
                executor_config={"timeout": "foreverandever"},
            ),
            "Error parsing job timeout value",
        ),
        (
            Job(name="a", schedule="@daily", executor="shell", executor_config={"mem_limit": "0"}),
            "Error parsing job memory limit value: memory limit must be positive: 0",
        ),
        (
            Job(
                name="a", schedule="@daily", executor="shell", executor_config={"mem_limit": "1PB"}
            ),
            "Error parsing job memory limit value: unsupported memory unit: PB",
        ),
        (
            Job(name="a", schedule="@daily", catchup="never"),
            'invalid catchup policy value, use "skip", "latest" or "all"',
        ),
        (
            Job(name="a", schedule="@daily", catchup_window="0s"),
            'invalid catchup_window value, use a positive duration like "1h"',
        ),
        (
            Job(name="a", schedule="@daily", catchup_window="soon"),
            'invalid catchup_window value, use a positive duration like "1h"',
        ),
    ],
)
def test_validation_messages(job: Job, message: str) -> None:
    with pytest.raises(ValidationError) as info:
        _validate(job)
    assert str(info.value) == message
    assert info.value.http_body() == f"Job validation failed: {message}."


def test_validation_order_first_failure_wins() -> None:
    job = Job(name="a", parent_job="a", concurrency="x", timezone="nope")
    with pytest.raises(ValidationError, match="itself as parent"):
        _validate(job)
    job = Job(name="a", schedule="@daily", concurrency="x", timezone="nope")
    with pytest.raises(ValidationError, match="concurrency"):
        _validate(job)


def test_valid_jobs() -> None:
    _validate(Job(name=VALID_NAME, schedule="@daily"))
    _validate(Job(name="child", parent_job="parent"))  # empty schedule allowed for children
    for tz in ("", "UTC", "Local", "Europe/Berlin"):
        _validate(Job(name="a", schedule="@daily", timezone=tz))
    # Timeout and mem_limit are only checked for the shell executor.
    _validate(Job(name="a", schedule="@daily", executor="http", executor_config={"timeout": "x"}))
    _validate(
        Job(
            name="a",
            schedule="@daily",
            executor="shell",
            executor_config={"timeout": "1h30m", "mem_limit": "1.5GB"},
        )
    )


def test_upper_case_unicode_is_illegal() -> None:
    with pytest.raises(ValidationError, match="illegal character 'Ñ'"):
        _validate(Job(name="añÑ", schedule="@daily"))


def test_injected_validators_are_used() -> None:
    def schedule(job: Job) -> None:
        raise ValueError(f"bad spec for {job.name}")

    with pytest.raises(ValidationError) as info:
        validate_job(Job(name="a", schedule="* *"), schedule_validator=schedule)
    assert str(info.value) == "can't parse job schedule: bad spec for a"

    def tz(name: str) -> None:
        raise ValueError(f"unknown time zone {name}")

    with pytest.raises(ValidationError, match="unknown time zone UTC"):
        validate_job(Job(name="a", schedule="@daily", timezone="UTC"), timezone_validator=tz)
    # A child with no schedule never reaches the schedule validator.
    validate_job(Job(name="a", parent_job="p"), schedule_validator=schedule)


# -- helpers --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "ns"),
    [
        ("0", 0),
        ("1h30m10s", (3600 + 1800 + 10) * 10**9),
        ("1.5h", 5400 * 10**9),
        ("-2ms", -2_000_000),
        ("300us", 300_000),
        ("300µs", 300_000),
        (".5s", 500_000_000),
        ("1h0.000000001s", 3600 * 10**9 + 1),
    ],
)
def test_go_duration(text: str, ns: int) -> None:
    assert parse_go_duration(text) == ns


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", 'time: invalid duration ""'),
        ("1", 'time: missing unit in duration "1"'),
        ("1x", 'time: unknown unit "x" in duration "1x"'),
        (".s", 'time: invalid duration ".s"'),
        ("9999999999999999999h", 'time: invalid duration "9999999999999999999h"'),
    ],
)
def test_go_duration_errors(text: str, message: str) -> None:
    with pytest.raises(ValueError) as info:
        parse_go_duration(text)
    assert str(info.value) == message


@pytest.mark.parametrize(
    ("text", "value"),
    [("1024", 1024), ("1KB", 1024), ("1MB", 1 << 20), ("2GB", 2 << 30), ("512mb", 512 << 20)],
)
def test_memory_limit(text: str, value: int) -> None:
    assert parse_memory_limit(text) == value
    assert parse_memory_limit("1.5GB") == 3 << 29


@pytest.mark.parametrize("text", ["invalid", "-100MB", "0", "100PB", ""])
def test_memory_limit_errors(text: str) -> None:
    with pytest.raises(ValueError):
        parse_memory_limit(text)


def test_rfc3339nano_trimming() -> None:
    base = parse_rfc3339("2025-01-01T10:00:10Z")
    assert format_rfc3339nano(base) == "2025-01-01T10:00:10Z"
    assert format_rfc3339nano(base + 123_456_789) == "2025-01-01T10:00:10.123456789Z"
    assert format_rfc3339nano(base + 100_000_000) == "2025-01-01T10:00:10.1Z"
    assert format_rfc3339nano(base, 3600) == "2025-01-01T11:00:10+01:00"
    assert format_rfc3339nano(base, -(3 * 3600 + 1800)) == "2025-01-01T06:30:10-03:30"
    assert format_rfc3339nano(MIN_TIME_NS) == ZERO_TIME
    assert parse_rfc3339(ZERO_TIME) == MIN_TIME_NS


@pytest.mark.parametrize(
    "text",
    [
        "2025-13-01T00:00:00Z",
        "2025-02-30T00:00:00Z",
        "2025-01-01T24:00:00Z",
        "2025-01-01 00:00:00Z",
        "2025-01-01T00:00:00",
        "0001-01-01T00:00:00+01:00",
        "2025-01-01T00:00:00+25:00",
    ],
)
def test_rfc3339_rejects(text: str) -> None:
    with pytest.raises(ValueError):
        parse_rfc3339(text)


@given(st.integers(min_value=MIN_TIME_NS, max_value=MAX_TIME_NS))
def test_rfc3339_roundtrip(ns: int) -> None:
    assert parse_rfc3339(format_rfc3339nano(ns)) == ns


@given(
    st.integers(min_value=MIN_TIME_NS + 86400 * 10**9, max_value=MAX_TIME_NS - 86400 * 10**9),
    st.integers(min_value=-14 * 60, max_value=14 * 60),
)
def test_rfc3339_offset_roundtrip(ns: int, minutes: int) -> None:
    assert parse_rfc3339(format_rfc3339nano(ns, minutes * 60)) == ns


def test_time_range_enforced_on_objects() -> None:
    with pytest.raises(ValueError):
        Job(name="a", next=MAX_TIME_NS + 1)
    with pytest.raises(ValueError):
        Execution(job_name="a", started_at=MIN_TIME_NS - 1, node_name="n")


# -- executions -----------------------------------------------------------------


def _execution(**kw: object) -> Execution:
    base: dict[str, object] = {
        "job_name": "job1",
        "started_at": 1_735_725_610_123_456_789,
        "node_name": "node1",
        "group": 1_735_725_610_000_000_000,
        "attempt": 1,
    }
    base.update(kw)
    return Execution(**base)  # type: ignore[arg-type]


def test_execution_id_and_running_shape() -> None:
    ex = _execution()
    assert ex.id == "1735725610123456789-node1"
    out = execution_to_json(ex, list_view=False)
    assert out == {
        "id": "1735725610123456789-node1",
        "job_name": "job1",
        "started_at": "2025-01-01T10:00:10.123456789Z",
        "finished_at": ZERO_TIME,
        "success": False,
        "node_name": "node1",
        "group": 1_735_725_610_000_000_000,
        "attempt": 1,
    }


def test_execution_list_view_in_job_zone() -> None:
    ex = _execution(finished_at=1_735_725_620_000_000_000, success=True, output="x" * 10)
    out = execution_to_json(ex, tz=zoneinfo.ZoneInfo("Europe/Berlin"), output_size_limit=4)
    assert out["started_at"] == "2025-01-01T11:00:10.123456789+01:00"
    assert out["finished_at"] == "2025-01-01T11:00:20+01:00"
    assert out["output"] == "xxxx"
    assert out["output_truncated"] is True
    assert list(out)[-1] == "output_truncated"
    # A running record keeps Go's zero time in every zone (the UI checks it).
    running = execution_to_json(_execution(), tz=zoneinfo.ZoneInfo("America/Caracas"))
    assert running["finished_at"] == ZERO_TIME


def test_execution_output_limit_edges() -> None:
    ex = _execution(output="héllo")
    assert execution_to_json(ex)["output_truncated"] is False
    assert execution_to_json(ex, output_size_limit=-1)["output"] == "héllo"
    cut = execution_to_json(ex, output_size_limit=4)
    assert cut["output"] == "\ufffdllo"
    empty = execution_to_json(ex, output_size_limit=0)
    assert "output" not in empty
    assert empty["output_truncated"] is True


def test_execution_additive_fields() -> None:
    ex = _execution(scheduled_time=1_735_725_610_000_000_000, trigger="catchup", status="lost")
    out = execution_to_json(ex)
    assert out["scheduled_time"] == "2025-01-01T10:00:10Z"
    assert out["trigger"] == "catchup"
    assert out["status"] == "lost"


def test_execution_invariants() -> None:
    with pytest.raises(ValueError):
        _execution(status="lost", success=True)
    with pytest.raises(ValueError):
        _execution(trigger="cron")
    with pytest.raises(ValueError):
        _execution(attempt=-1)


def _reference_execution_checks(ex: Execution) -> None:
    """The execution's checks as first written, one rule per line."""
    if ex.attempt < 0:
        raise ValueError("attempt must be >= 0")
    if ex.trigger not in TRIGGERS:
        raise ValueError(f"unknown trigger {ex.trigger!r}")
    if ex.status not in EXECUTION_STATUSES:
        raise ValueError(f"unknown execution status {ex.status!r}")
    if ex.status and ex.success:
        raise ValueError(f"a {ex.status} execution cannot be successful")
    for ns in (ex.started_at, ex.finished_at, ex.scheduled_time):
        if ns is not None and not MIN_TIME_NS <= ns <= MAX_TIME_NS:
            raise ValueError("times must lie in years 0001..9999")


_EDGE_TIMES = st.sampled_from([MIN_TIME_NS - 1, MIN_TIME_NS, 0, MAX_TIME_NS, MAX_TIME_NS + 1])
_ANY_TIME = st.integers() | _EDGE_TIMES


@given(
    started=_ANY_TIME | st.none(),
    finished=_ANY_TIME | st.none(),
    scheduled=_ANY_TIME | st.none(),
    attempt=st.integers(min_value=-2, max_value=3),
    trigger=st.sampled_from([*sorted(TRIGGERS), "cron"]),
    status=st.sampled_from([*sorted(EXECUTION_STATUSES), "bogus", None, 0]),
    success=st.booleans(),
)
def test_execution_checks_match_the_rules_one_by_one(
    *,
    started: int | None,
    finished: int | None,
    scheduled: int | None,
    attempt: int,
    trigger: str,
    status: object,
    success: bool,
) -> None:
    # Build unchecked (as a codec's twin does), then run both versions of the checks.
    ex = object.__new__(Execution)
    values: list[tuple[str, object]] = [("job_name", "j"), ("started_at", started)]
    values += [("node_name", "n"), ("finished_at", finished), ("success", success)]
    values += [("output", ""), ("group", 0), ("attempt", attempt)]
    values += [("scheduled_time", scheduled), ("trigger", trigger), ("status", status)]
    for name, value in values:
        object.__setattr__(ex, name, value)
    expected: str | None = None
    try:
        _reference_execution_checks(ex)
    except ValueError as exc:
        expected = str(exc)
    try:
        ex.__post_init__()
    except ValueError as exc:
        assert str(exc) == expected
    else:
        assert expected is None


@given(
    started=_ANY_TIME,
    finished=_ANY_TIME | st.none(),
    attempt=st.integers(min_value=-1, max_value=2),
    trigger=st.sampled_from(["", "manual", "cron"]),
    status=st.sampled_from(["", "lost", "bogus"]),
    success=st.booleans(),
    output=st.text(max_size=3),
)
def test_execution_init_builds_what_the_generated_init_builds(
    *,
    started: int,
    finished: int | None,
    attempt: int,
    trigger: str,
    status: str,
    success: bool,
    output: str,
) -> None:
    generated = Execution.__init__.__globals__["_generated"]
    args = ("j", started, "n", finished, success, output, 7, attempt)
    outcomes: list[object] = []
    for build in (
        lambda: Execution(*args, trigger=trigger, status=status),
        lambda: generated(object.__new__(Execution), *args, None, trigger, status),
    ):
        try:
            outcomes.append(build())
        except ValueError as exc:
            outcomes.append(str(exc))
    fast, _ = outcomes
    if isinstance(fast, str):
        assert outcomes[1] == fast
        return
    reference = object.__new__(Execution)
    generated(reference, *args, None, trigger, status)
    assert type(fast) is Execution
    assert fast == reference and hash(fast) == hash(reference) and repr(fast) == repr(reference)
    for f in dataclasses.fields(Execution):
        assert getattr(fast, f.name) is getattr(reference, f.name)
    with pytest.raises(dataclasses.FrozenInstanceError):
        fast.output = "x"  # type: ignore[misc]


_CODEC = Codec({1: ExecutionStarted})


@given(
    started=st.integers(min_value=0, max_value=MAX_TIME_NS),
    node=st.text(max_size=5),
    other=st.integers(min_value=0, max_value=MAX_TIME_NS),
    read_first=st.booleans(),
)
def test_execution_id_is_the_key_of_every_copy(
    started: int, node: str, other: int, read_first: bool
) -> None:
    """The id is cached on the object; no way of building one may carry a stale id."""
    ex = Execution("j", started, node)
    if read_first:
        assert ex.id == f"{started}-{node}"
    built = [
        ex,
        dataclasses.replace(ex, started_at=other),
        dataclasses.replace(ex, node_name=node + "x"),
        copy.copy(ex),
        pickle.loads(pickle.dumps(ex)),
        _CODEC.decode(_CODEC.encode(ExecutionStarted(ex))).execution,  # type: ignore[attr-defined]
        slot_copier(Execution, ("started_at",))(ex, other),
    ]
    for one in built:
        assert one.id == f"{one.started_at}-{one.node_name}"
        assert one.id is one.id
    assert built[3] == ex and hash(built[3]) == hash(ex)
    assert [f.name for f in dataclasses.fields(Execution)][-1] == "status"
    with pytest.raises(dataclasses.FrozenInstanceError):
        ex.started_at = other  # type: ignore[misc]


def test_truncate_output_keeps_head_and_tail() -> None:
    text = "HEAD" + "m" * 10_000 + "TAIL"
    out = truncate_output(text, 200)
    assert len(out.encode()) <= 200
    assert out.startswith("HEAD")
    assert out.endswith("TAIL")
    assert "bytes truncated" in out
    assert truncate_output("short", 200) == "short"


@given(st.text(max_size=400), st.integers(min_value=1, max_value=300))
def test_truncate_output_never_exceeds_limit(text: str, limit: int) -> None:
    out = truncate_output(text, limit)
    assert len(out.encode("utf-8", errors="surrogatepass")) <= limit


# -- merge ----------------------------------------------------------------------


def test_merge_rules() -> None:
    stored = Job(
        name="a",
        schedule="@daily",
        success_count=5,
        error_count=1,
        last_success=100,
        last_error=50,
        status="failed",
        next=1000,
        dependent_jobs=("child",),
    )
    submitted = Job(
        name="a",
        schedule="@daily",
        success_count=2,
        error_count=7,
        last_success=None,
        last_error=80,
        status="success",
        next=900,
        dependent_jobs=("injected",),
        owner="new",
    )
    merged = merge_job(stored, submitted)
    assert merged.success_count == 5
    assert merged.error_count == 7
    assert merged.last_success == 100
    assert merged.last_error == 80
    assert merged.status == "failed"
    assert merged.next == 1000  # schedule unchanged: the later next
    assert merged.dependent_jobs == ("child",)
    assert merged.owner == "new"
    changed = merge_job(stored, dataclasses.replace(submitted, schedule="@hourly"))
    assert changed.next == 900  # schedule changed: the recomputed (submitted) next
    assert merge_job(dataclasses.replace(stored, status=""), submitted).status == "success"


def test_merge_new_job_ignores_injected_dependents() -> None:
    merged = merge_job(None, Job(name="a", dependent_jobs=("x",), success_count=3))
    assert merged.dependent_jobs == ()
    assert merged.success_count == 3


def test_an_absurdly_long_number_is_a_payload_error() -> None:
    with pytest.raises(PayloadError):
        job_from_json_bytes(b'{"name": "a", "retries": ' + b"9" * 5000 + b"}")
