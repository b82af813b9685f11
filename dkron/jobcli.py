"""``dkron jobs|executions|members|schedule``: the job client commands.

These talk to a server's v1 REST API over plain synchronous HTTP, so the
command works from any machine that can reach port 8080 and needs nothing
beyond the standard library (and PyYAML for job files).  ``schedule preview``
is the exception: it runs :mod:`dkron.schedule` locally so that a spec can be
checked before any server exists.

``jobs apply`` is declarative: the files are validated as a whole with the
same rules as the server (:func:`dkron.model.validate_job`) and every problem
is reported with its file before a single request changes anything; only
jobs whose user-set fields differ from the server's are written.

Exit status: 0 on success, 1 when the server (or the files) refuse the
command, 2 for a usage error naming the argument.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as _dt
import difflib
import enum
import json
import os
import pathlib
import ssl
import sys
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TextIO

import trio
import trio_websocket
import yaml

from dkron import __version__
from dkron.io_trio.httpclient import RequestError as _RequestError
from dkron.io_trio.httpclient import request as _http_request
from dkron.model import (
    Job,
    ValidationError,
    format_rfc3339nano,
    job_from_json,
    job_to_json,
    parse_rfc3339,
    validate_job,
)
from dkron.schedule import ScheduleError, fire_times, validate_timezone

__all__ = [
    "COMMANDS",
    "JOB_FILE_SUFFIXES",
    "PROGRESS_MIN",
    "SERVER_MANAGED_FIELDS",
    "Action",
    "ApiError",
    "Change",
    "Client",
    "FileProblem",
    "JobSpec",
    "Response",
    "add_commands",
    "format_table",
    "load_job_files",
    "needs_server",
    "plan_apply",
    "preview_times",
    "run_command",
]

COMMANDS = frozenset({"jobs", "executions", "members", "schedule", "logs"})
"""Top-level commands this module owns (``dkron.cli`` dispatches them here)."""

JOB_FILE_SUFFIXES = (".yaml", ".yml", ".json")

SERVER_MANAGED_FIELDS = frozenset(
    {
        "id",
        "success_count",
        "error_count",
        "last_success",
        "last_error",
        "status",
        "next",
        "dependent_jobs",
    }
)
"""Job fields the server owns: never compared, never sent by ``apply``.

A file exported from a running cluster carries them; comparing them would
report a change after every run.
"""

PROGRESS_MIN = 10
"""``apply`` reports ``applied i/n`` on stderr from this many writes on."""

_HTTP_TIMEOUT = 30.0
#: ``jobs apply`` writes this many jobs of one wave at a time.
APPLY_IN_FLIGHT = 32
#: The largest answer read from a write (the job as stored).
_MAX_ANSWER = 16 * 1024 * 1024
_PREVIEW_MAX = 1000
_PREVIEW_WINDOW = _dt.timedelta(days=3660)  # the server's ``/next`` horizon
_NEXT_COUNT = 5
_ZERO_TIME = "0001-01-01T00:00:00Z"
_EPOCH = _dt.datetime(1970, 1, 1, tzinfo=_dt.UTC)
_LAST_INSTANT = _dt.datetime(9999, 12, 31, 23, 59, 59, tzinfo=_dt.UTC)
_JOB_KEYS = tuple(job_to_json(Job(name="x")))
_STRING_MAPS = frozenset({"tags", "metadata", "executor_config"})
_STATUS_FILTERS = ("success", "failed", "partially_failed", "untriggered")
_MEMBER_STATUS = {0: "none", 1: "alive", 2: "leaving", 3: "left", 4: "failed"}


# ---------------------------------------------------------------------------
# HTTP
# ---------------------------------------------------------------------------


class ApiError(Exception):
    """The server refused a request or could not be reached; ``str()`` says why."""


class _ArgumentError(Exception):
    """A value argparse could not check alone (it depends on other flags)."""

    def __init__(self, argument: str, message: str) -> None:
        super().__init__(f"argument {argument}: {message}")


@dataclass(frozen=True, slots=True, kw_only=True)
class Response:
    status: int
    body: bytes
    total: int | None = None

    def json(self) -> Any:
        if not self.body.strip():
            return None
        try:
            return json.loads(self.body)
        except ValueError:
            raise ApiError(f"the server's answer is not JSON (HTTP {self.status})") from None

    def error_text(self) -> str:
        """The server's message: ``{"error": ...}`` or the plain-text body."""
        text = self.body.decode("utf-8", "replace").strip()
        try:
            data = json.loads(text)
        except ValueError:
            data = None
        if isinstance(data, dict) and isinstance(data.get("error"), str):
            text = data["error"]
        elif isinstance(data, str):
            text = data
        return f"HTTP {self.status}: {text}" if text else f"HTTP {self.status}"


def _quote(segment: str) -> str:
    return urllib.parse.quote(segment, safe="")


class Client:
    """A synchronous client of the v1 API: one request per call, no retries.

    Retrying a write is not safe in general (``run`` twice runs twice), so a
    failure is reported to the operator instead.
    """

    def __init__(
        self,
        base_url: str,
        *,
        token: str | None = None,
        timeout: float = _HTTP_TIMEOUT,
        ca_cert: str | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.token = token or None
        self.timeout = timeout
        self.ca_cert = ca_cert or None
        self._ssl: ssl.SSLContext | None = None

    def ssl_context(self) -> ssl.SSLContext:
        """The system's trust store, or only ``--ca-cert`` for a private CA.

        Made once per client: loading the system's CAs costs about 27 ms of
        CPU, which ``jobs apply`` would otherwise pay for every job it writes.
        """
        if self._ssl is None:
            try:
                self._ssl = ssl.create_default_context(cafile=self.ca_cert)
            except (OSError, ssl.SSLError) as exc:
                raise ApiError(f"--ca-cert {self.ca_cert!r}: {exc}") from None
        return self._ssl

    def headers(self, *, with_body: bool) -> dict[str, str]:
        headers = {"Accept": "application/json", "User-Agent": f"dkron-cli/{__version__}"}
        if with_body:
            headers["Content-Type"] = "application/json"
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        return headers

    def request(
        self,
        method: str,
        path: str,
        *,
        query: Mapping[str, str] | None = None,
        body: object = None,
    ) -> Response:
        """Any HTTP status is returned; only transport failures raise :class:`ApiError`."""
        url = self.base_url + path
        if query:
            url += "?" + urllib.parse.urlencode(query)
        data: bytes | None = None
        if body is not None:
            data = json.dumps(body).encode("utf-8")
        elif method in ("POST", "PUT", "PATCH"):
            data = b""  # an explicit empty body: the server wants a Content-Length
        req = urllib.request.Request(
            url, data=data, method=method, headers=self.headers(with_body=body is not None)
        )
        try:
            context = self.ssl_context() if url.startswith("https:") else None
            with urllib.request.urlopen(req, timeout=self.timeout, context=context) as resp:
                return Response(
                    status=int(resp.status),
                    body=bytes(resp.read()),
                    total=_total(resp.headers.get("X-Total-Count")),
                )
        except urllib.error.HTTPError as exc:
            with exc:
                return Response(status=int(exc.code), body=bytes(exc.read()))
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise ApiError(f"cannot reach {self.base_url}: {reason}") from None

    def call(
        self,
        method: str,
        path: str,
        *,
        query: Mapping[str, str] | None = None,
        body: object = None,
        ok: Iterable[int] = (200,),
        not_found: str | None = None,
    ) -> Any:
        """The decoded JSON of a successful answer; an :class:`ApiError` otherwise."""
        return _answer(self.request(method, path, query=query, body=body), ok, not_found)

    async def call_async(
        self,
        method: str,
        path: str,
        *,
        body: object = None,
        ok: Iterable[int] = (200,),
        not_found: str | None = None,
    ) -> Any:
        """:meth:`call` on Trio, so that ``jobs apply`` can have many writes in flight."""
        url = self.base_url + path
        data = b"" if body is None else json.dumps(body).encode("utf-8")
        try:
            with trio.fail_after(self.timeout):
                resp = await _http_request(
                    method,
                    url,
                    headers=list(self.headers(with_body=body is not None).items()),
                    body=data,
                    tls=self.ssl_context() if url.startswith("https:") else None,
                    max_body=_MAX_ANSWER,
                )
        except (_RequestError, trio.TooSlowError, OSError) as exc:
            reason = "timed out" if isinstance(exc, trio.TooSlowError) else exc
            raise ApiError(f"cannot reach {self.base_url}: {reason}") from None
        return _answer(Response(status=resp.status, body=resp.body), ok, not_found)


def _answer(resp: Response, ok: Iterable[int], not_found: str | None) -> Any:
    if resp.status in set(ok):
        return resp.json()
    if resp.status == 404 and not_found is not None and not resp.body.strip():
        raise ApiError(not_found)
    raise ApiError(resp.error_text())


def _total(raw: str | None) -> int | None:
    return int(raw) if raw is not None and raw.isdigit() else None


# ---------------------------------------------------------------------------
# Output
# ---------------------------------------------------------------------------


def _flat(text: str) -> str:
    return " ".join(text.split()) if any(c in text for c in "\r\n\t") else text


def format_table(header: Sequence[str], rows: Iterable[Sequence[str]]) -> str:
    """Plain-text columns separated by two spaces; control whitespace is flattened."""
    table = [[_flat(c) for c in header]] + [[_flat(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in table) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in table]
    return "\n".join(lines) + "\n"


def _cell(value: object) -> str:
    if value is None or value == _ZERO_TIME:
        return "-"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list):
        return ", ".join(_cell(v) for v in value) if value else "-"
    if isinstance(value, dict):
        if not value:
            return "-"
        parts = []
        for k, v in value.items():
            inner = f"{{{_cell(v)}}}" if isinstance(v, dict) else _cell(v)
            parts.append(f"{k}={inner}")
        return ", ".join(parts)
    return str(value)


def _print_json(data: object, out: TextIO) -> None:
    print(json.dumps(data, indent=2, ensure_ascii=False), file=out)


def _as_list_of_dicts(data: object, what: str) -> list[dict[str, Any]]:
    if not isinstance(data, list) or not all(isinstance(x, dict) for x in data):
        raise ApiError(f"the server's answer is not a list of {what}")
    return data


def _as_dict(data: object, what: str) -> dict[str, Any]:
    if not isinstance(data, dict):
        raise ApiError(f"the server's answer is not {what}")
    return data


# ---------------------------------------------------------------------------
# Job files
# ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class FileProblem:
    """Something wrong with a job file, or a job in one; ``where`` names it."""

    where: str
    message: str

    def __str__(self) -> str:
        return f"{self.where}: {self.message}"


@dataclass(frozen=True, slots=True, kw_only=True)
class JobSpec:
    """One job as a file declares it."""

    where: str
    job: Job
    fields: frozenset[str]
    """The JSON keys the file sets (canonical names), which ``apply`` compares."""

    def payload(self) -> dict[str, object]:
        """What ``apply`` sends: the whole job, minus what the server owns."""
        body = job_to_json(self.job)
        return {k: v for k, v in body.items() if k not in SERVER_MANAGED_FIELDS}


def _canonical_key(key: str) -> str | None:
    if key in _JOB_KEYS:
        return key
    lowered = key.lower()  # the API matches keys case-insensitively, as Go does
    return lowered if lowered in _JOB_KEYS else None


def _rfc3339(value: _dt.datetime) -> str:
    if value.tzinfo is None:  # YAML: a timestamp without a zone is UTC
        value = value.replace(tzinfo=_dt.UTC)
    delta = value.astimezone(_dt.UTC) - _EPOCH
    ns = delta // _dt.timedelta(microseconds=1) * 1000
    offset = value.utcoffset()
    return format_rfc3339nano(ns, 0 if offset is None else int(offset.total_seconds()))


def _yaml_scalar_text(value: object) -> object:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return str(value)
    if isinstance(value, _dt.datetime):
        return _rfc3339(value)
    if isinstance(value, _dt.date):
        return value.isoformat()
    return value


def _yaml_to_api(obj: object) -> object:
    """Undo YAML's typing where the API wants strings.

    ``shell: true`` or ``timeout: 30`` under ``executor_config`` (and other
    string maps) become ``"true"`` / ``"30"``; an unquoted timestamp becomes
    RFC3339.  Anything else is left for the strict JSON rules to judge.
    """
    if not isinstance(obj, dict):
        return obj
    out: dict[object, object] = {}
    for key, value in obj.items():
        canonical = _canonical_key(str(key))
        if isinstance(value, _dt.datetime | _dt.date):
            value = _yaml_scalar_text(value)
        elif canonical in _STRING_MAPS and isinstance(value, dict):
            value = {k: _yaml_scalar_text(v) for k, v in value.items()}
        elif canonical == "processors" and isinstance(value, dict):
            value = {
                k: (
                    {ck: _yaml_scalar_text(cv) for ck, cv in v.items()}
                    if isinstance(v, dict)
                    else v
                )
                for k, v in value.items()
            }
        out[key] = value
    return out


def _position(exc: yaml.YAMLError | json.JSONDecodeError) -> str:
    if isinstance(exc, json.JSONDecodeError):
        return f"line {exc.lineno}, column {exc.colno}: {exc.msg}"
    mark = getattr(exc, "problem_mark", None)
    problem = getattr(exc, "problem", None) or str(exc)
    if mark is not None:
        return f"line {mark.line + 1}, column {mark.column + 1}: {problem}"
    return str(problem)


def _documents(path: pathlib.Path, text: str) -> list[object]:
    if path.suffix.lower() == ".json":
        return [json.loads(text)]
    return [_yaml_to_api_doc(d) for d in yaml.safe_load_all(text)]


def _yaml_to_api_doc(doc: object) -> object:
    if isinstance(doc, list):
        return [_yaml_to_api(x) for x in doc]
    return _yaml_to_api(doc)


def _job_files(target: str) -> tuple[list[pathlib.Path], list[FileProblem]]:
    path = pathlib.Path(target)
    if path.is_dir():
        files = sorted(
            p for p in path.iterdir() if p.is_file() and p.suffix.lower() in JOB_FILE_SUFFIXES
        )
        if not files:
            suffixes = ", ".join(f"*{s}" for s in JOB_FILE_SUFFIXES)
            return [], [FileProblem(where=target, message=f"no job files ({suffixes})")]
        return files, []
    if not path.exists():
        return [], [FileProblem(where=target, message="no such file or directory")]
    return [path], []


def _load_file(path: pathlib.Path) -> tuple[list[JobSpec], list[FileProblem]]:
    name = str(path)
    try:
        text = path.read_text(encoding="utf-8")
        docs = _documents(path, text)
    except (yaml.YAMLError, json.JSONDecodeError) as exc:
        kind = "JSON" if path.suffix.lower() == ".json" else "YAML"
        return [], [FileProblem(where=name, message=f"invalid {kind}: {_position(exc)}")]
    except (OSError, UnicodeDecodeError, RecursionError) as exc:
        return [], [FileProblem(where=name, message=f"cannot read: {exc}")]
    objects: list[object] = []
    for doc in docs:
        if doc is None:  # an empty YAML document, e.g. after a trailing "---"
            continue
        objects.extend(doc if isinstance(doc, list) else [doc])
    if not objects:
        return [], [FileProblem(where=name, message="no jobs in the file")]
    specs: list[JobSpec] = []
    problems: list[FileProblem] = []
    for i, obj in enumerate(objects):
        where = name if len(objects) == 1 else f"{name}: job #{i + 1}"
        spec_or_problem = _load_job(where, obj)
        if isinstance(spec_or_problem, JobSpec):
            specs.append(spec_or_problem)
            continue
        if isinstance(obj, dict) and isinstance(obj.get("name"), str) and len(objects) > 1:
            # Name the job too: "job #7" alone is hard to find in a long file.
            where += f" ({obj['name']})"
            spec_or_problem = dataclasses.replace(spec_or_problem, where=where)
        problems.append(spec_or_problem)
    return specs, problems


def _load_job(where: str, obj: object) -> JobSpec | FileProblem:
    if not isinstance(obj, dict):
        kind = type(obj).__name__
        return FileProblem(where=where, message=f"a job must be a mapping, not {kind}")
    fields: set[str] = set()
    for key, value in obj.items():
        canonical = _canonical_key(str(key))
        if canonical is None:
            return FileProblem(where=where, message=f"unknown job field {str(key)!r}")
        if value is not None:
            fields.add(canonical)
    try:
        job = job_from_json(obj)
        validate_job(job)
    except ValidationError as exc:
        return FileProblem(where=where, message=str(exc))
    except ValueError as exc:  # e.g. a number too large for Python to convert
        return FileProblem(where=where, message=f"invalid job: {exc}")
    return JobSpec(where=where, job=job, fields=frozenset(fields))


def load_job_files(targets: Sequence[str]) -> tuple[list[JobSpec], list[FileProblem]]:
    """Every job in the files (directories: their ``*.yaml|*.yml|*.json``, sorted).

    A file may hold one job, a list of jobs or (YAML) a stream of documents
    of either.  Every problem is collected, so that one run reports them all;
    a name declared twice is a problem at both places.
    """
    specs: list[JobSpec] = []
    problems: list[FileProblem] = []
    for target in targets:
        files, missing = _job_files(target)
        problems.extend(missing)
        for path in files:
            found, bad = _load_file(path)
            specs.extend(found)
            problems.extend(bad)
    seen: dict[str, list[JobSpec]] = {}
    for spec in specs:
        seen.setdefault(spec.job.name, []).append(spec)
    for name, same in seen.items():
        if len(same) > 1:
            places = ", ".join(s.where for s in same)
            problems.append(FileProblem(where=places, message=f"job {name} is declared twice"))
    return specs, problems


# ---------------------------------------------------------------------------
# apply: plan, then execute
# ---------------------------------------------------------------------------


class Action(enum.Enum):
    CREATE = "create"
    UPDATE = "update"
    UNCHANGED = "unchanged"
    DELETE = "delete"


_PAST = {
    Action.CREATE: "created",
    Action.UPDATE: "updated",
    Action.UNCHANGED: "unchanged",
    Action.DELETE: "deleted",
}


@dataclass(frozen=True, slots=True, kw_only=True)
class Change:
    action: Action
    name: str
    where: str
    """The declaring file (``""`` for a job that only the server has)."""
    spec: JobSpec | None = None
    current: Mapping[str, Any] | None = None
    """The server's job, as the API returned it."""
    depth: int = 0
    """How many parents the job has: writes of one depth do not depend on each other."""

    def __post_init__(self) -> None:
        if (self.spec is None) != (self.action is Action.DELETE):
            raise ValueError("only a delete comes without a job spec")

    def diff(self) -> str:
        """Server -> file, as JSON with sorted keys, over the fields apply sends."""
        before: list[str] = []
        if self.current is not None:
            kept = {k: v for k, v in self.current.items() if k not in SERVER_MANAGED_FIELDS}
            before = json.dumps(kept, indent=2, sort_keys=True).splitlines(keepends=True)
        after: list[str] = []
        if self.spec is not None:
            after = json.dumps(self.spec.payload(), indent=2, sort_keys=True).splitlines(
                keepends=True
            )
        lines = difflib.unified_diff(
            before,
            after,
            fromfile=f"server: {self.name}" if self.current is not None else "/dev/null",
            tofile=self.where or "/dev/null",
        )
        return "".join(line if line.endswith("\n") else line + "\n" for line in lines)


def _normal(value: object) -> object:
    # ``{}``, ``[]`` and ``null`` all mean "nothing set" to the API.
    return None if value in ({}, [], None) else value


def _differs(spec: JobSpec, current: Mapping[str, Any]) -> bool:
    local = job_to_json(spec.job)
    return any(
        _normal(local.get(k)) != _normal(current.get(k))
        for k in spec.fields
        if k not in SERVER_MANAGED_FIELDS
    )


def _depth(name: str, parents: Mapping[str, str]) -> int | None:
    """How many ancestors ``name`` has; ``None`` when its chain loops."""
    depth = 0
    seen = {name}
    while (parent := parents.get(name, "")) and parent in parents:
        if parent in seen:
            return None
        seen.add(parent)
        depth += 1
        name = parent
    return depth


def plan_apply(
    specs: Sequence[JobSpec], server: Mapping[str, Mapping[str, Any]], *, prune: bool
) -> tuple[list[Change], list[FileProblem]]:
    """What ``apply`` will do, in a safe order, or why it cannot.

    Writes come parents first, so that a child never names a job the server
    does not have yet; deletes come children first, since the server refuses
    to delete a job that still has dependents.
    """
    problems: list[FileProblem] = []
    declared = {s.job.name: s for s in specs}
    parents = {s.job.name: s.job.parent_job for s in specs}
    for spec in specs:
        parent = spec.job.parent_job
        if not parent or parent in declared:
            if parent and _depth(spec.job.name, parents) is None:
                problems.append(
                    FileProblem(
                        where=spec.where,
                        message=f"job {spec.job.name}: parent job chain loops at {parent}",
                    )
                )
            continue
        if parent not in server:
            problems.append(
                FileProblem(
                    where=spec.where,
                    message=f"job {spec.job.name}: parent job {parent} is neither in the files "
                    "nor on the server",
                )
            )
        elif prune:
            problems.append(
                FileProblem(
                    where=spec.where,
                    message=f"job {spec.job.name}: parent job {parent} is not in the files, "
                    "and --prune deletes it",
                )
            )
    if problems:
        return [], problems
    ordered = sorted(specs, key=lambda s: _depth(s.job.name, parents) or 0)
    changes: list[Change] = []
    for spec in ordered:
        current = server.get(spec.job.name)
        if current is None:
            action = Action.CREATE
        elif _differs(spec, current):
            action = Action.UPDATE
        else:
            action = Action.UNCHANGED
        changes.append(
            Change(
                action=action,
                name=spec.job.name,
                where=spec.where,
                spec=spec,
                current=current,
                depth=_depth(spec.job.name, parents) or 0,
            )
        )
    if prune:
        server_parents = {n: str(j.get("parent_job") or "") for n, j in server.items()}
        doomed = [n for n in server if n not in declared]
        doomed.sort(key=lambda n: (-(_depth(n, server_parents) or 0), n))
        changes.extend(
            Change(
                action=Action.DELETE,
                name=n,
                where="",
                current=server[n],
                depth=_depth(n, server_parents) or 0,
            )
            for n in doomed
        )
    return changes, []


def _fire_time_strings(times: Iterable[_dt.datetime], zone: _dt.tzinfo | None) -> list[str]:
    out: list[str] = []
    for t in times:
        ns = (t - _EPOCH) // _dt.timedelta(microseconds=1) * 1000
        offset = 0
        if zone is not None:
            utcoffset = t.astimezone(zone).utcoffset()
            offset = 0 if utcoffset is None else int(utcoffset.total_seconds())
        out.append(format_rfc3339nano(ns, offset))
    return out


def _local_next(job: Job, after: _dt.datetime, count: int) -> list[str]:
    try:
        until = min(after + _PREVIEW_WINDOW, _LAST_INSTANT)
    except OverflowError:
        until = _LAST_INSTANT
    try:
        return _fire_time_strings(fire_times(job, after, until, limit=count), None)
    except ScheduleError:  # a child job: it runs after its parent, never on its own
        return []


def _next_times(client: Client, change: Change, now: _dt.datetime) -> tuple[list[str], str]:
    assert change.spec is not None
    job = change.spec.job
    current = change.current
    same_schedule = current is not None and (
        current.get("schedule") == job.schedule and current.get("timezone") == job.timezone
    )
    if same_schedule:
        data = client.call(
            "GET",
            f"/v1/jobs/{_quote(job.name)}/next",
            query={"count": str(_NEXT_COUNT)},
            not_found=f"job {job.name} not found",
        )
        if isinstance(data, list) and all(isinstance(t, str) for t in data):
            return list(data), "server"
        raise ApiError("the server's answer is not a list of times")
    return _local_next(job, now, _NEXT_COUNT), "computed locally"


def _server_jobs(client: Client) -> dict[str, dict[str, Any]]:
    jobs = _as_list_of_dicts(client.call("GET", "/v1/jobs"), "jobs")
    return {str(j.get("name")): j for j in jobs}


def _confirm(question: str, err: TextIO) -> bool:
    print(f"{question} [y/N] ", end="", file=err, flush=True)
    answer = sys.stdin.readline()
    interactive = sys.stdin.isatty()
    if not interactive or not answer.endswith("\n"):
        print(file=err)  # a piped answer is not echoed: end the prompt's line
    return answer.strip().lower() in ("y", "yes")


def _apply(ns: argparse.Namespace, client: Client, out: TextIO, err: TextIO) -> int:
    specs, problems = load_job_files(ns.file)
    if problems:
        for problem in problems:
            print(f"dkron jobs apply: error: {problem}", file=err)
        print(f"dkron jobs apply: {len(problems)} problem(s); nothing was sent", file=err)
        return 1
    server = _server_jobs(client)
    changes, problems = plan_apply(specs, server, prune=ns.prune)
    if problems:
        for problem in problems:
            print(f"dkron jobs apply: error: {problem}", file=err)
        print(f"dkron jobs apply: {len(problems)} problem(s); nothing was sent", file=err)
        return 1
    if ns.dry_run:
        return _dry_run(changes, client, out, now=_wall_now(), as_json=ns.json)
    writes = [c for c in changes if c.action is not Action.UNCHANGED]
    doomed = [c.name for c in writes if c.action is Action.DELETE]
    if doomed and not ns.yes:
        question = (
            f"{len(doomed)} job(s) on the server are not in the files and will be "
            f"deleted: {', '.join(doomed)}. Continue?"
        )
        if not _confirm(question, err):
            print("dkron jobs apply: aborted; nothing was changed", file=err)
            return 1
    results: list[dict[str, object]] = []
    progress = _Progress(len(writes), err)
    for wave in _waves(changes):
        answers = trio.run(_write_wave, client, wave, progress)
        failed = False
        for change, answer in zip(wave, answers, strict=True):
            if isinstance(answer, ApiError):
                print(
                    f"dkron jobs apply: error: {change.action.value} job {change.name}: {answer}",
                    file=err,
                )
                failed = True
                continue
            results.append(
                {
                    "job": change.name,
                    "action": change.action.value,
                    "file": change.where or None,
                    "response": answer,
                }
            )
            if not ns.json:
                where = f" ({change.where})" if change.where else ""
                print(f"{_PAST[change.action]} job {change.name}{where}", file=out)
        if failed:
            print(
                f"dkron jobs apply: applied {progress.done}/{len(writes)} before the error",
                file=err,
            )
            if ns.json:
                _print_json(results, out)
            return 1
    if ns.json:
        _print_json(results, out)
    else:
        print(_summary(changes, past=True), file=out)
    return 0


def _waves(changes: Sequence[Change]) -> list[list[Change]]:
    """The planned changes cut where one may depend on an earlier one.

    The plan orders writes parents first and deletes children first, so a
    run of changes of one kind and one depth holds no job and its parent:
    they can be written together.
    """
    waves: list[list[Change]] = []
    key: tuple[bool, int] | None = None
    for change in changes:
        this = (change.action is Action.DELETE, change.depth)
        if this != key:
            waves.append([])
            key = this
        waves[-1].append(change)
    return waves


class _Progress:
    """``applied i/n`` on stderr as writes complete, for applies of many jobs."""

    def __init__(self, total: int, err: TextIO) -> None:
        self.total = total
        self.done = 0
        self._err = err

    def one(self) -> None:
        self.done += 1
        if self.total >= PROGRESS_MIN:
            print(f"applied {self.done}/{self.total}", file=self._err, flush=True)


async def _write_wave(client: Client, wave: Sequence[Change], progress: _Progress) -> list[object]:
    """Every change of a wave, ``APPLY_IN_FLIGHT`` at a time; an answer or an error each.

    One write at a time, each waits for the cluster's replicated commit
    (2,000 jobs took 17 s on three loopback servers); together the leader
    commits them in batches (6 s).  A failed write does not stop the
    others of its wave; the apply stops after the wave.
    """
    answers: list[object] = [None] * len(wave)
    limit = trio.CapacityLimiter(APPLY_IN_FLIGHT)

    async def one(i: int, change: Change) -> None:
        if change.action is Action.UNCHANGED:
            answers[i] = change.current
            return
        async with limit:
            try:
                answers[i] = await _write(client, change)
            except ApiError as exc:
                answers[i] = exc
                return
        progress.one()

    async with trio.open_nursery() as nursery:
        for i, change in enumerate(wave):
            nursery.start_soon(one, i, change)
    return answers


async def _write(client: Client, change: Change) -> object:
    quoted = _quote(change.name)
    if change.action is Action.DELETE:
        return await client.call_async("DELETE", f"/v1/jobs/{quoted}", not_found="job not found")
    assert change.spec is not None
    return await client.call_async("POST", "/v1/jobs", body=change.spec.payload(), ok=(200, 201))


def _summary(changes: Sequence[Change], *, past: bool) -> str:
    counts = {a: sum(1 for c in changes if c.action is a) for a in Action}
    if past:
        words = [f"{counts[a]} {_PAST[a]}" for a in Action]
    else:
        words = [
            f"{counts[Action.CREATE]} to create",
            f"{counts[Action.UPDATE]} to update",
            f"{counts[Action.UNCHANGED]} unchanged",
            f"{counts[Action.DELETE]} to delete",
        ]
    return ", ".join(words)


def _dry_run(
    changes: Sequence[Change],
    client: Client,
    out: TextIO,
    *,
    now: _dt.datetime,
    as_json: bool,
) -> int:
    report: list[dict[str, object]] = []
    for change in changes:
        entry: dict[str, object] = {
            "job": change.name,
            "action": change.action.value,
            "file": change.where or None,
        }
        lines: list[str] = []
        if change.action is Action.DELETE:
            lines.append(f"delete job {change.name} (not in the files)")
        elif change.action is Action.UNCHANGED:
            lines.append(f"unchanged job {change.name} ({change.where})")
        else:
            diff = change.diff()
            times, source = _next_times(client, change, now)
            entry["diff"] = diff
            entry["next"] = times
            lines.append(f"{change.action.value} job {change.name} ({change.where})")
            lines.append(diff.rstrip("\n"))
            if times:
                lines.append(f"next {len(times)} fire times ({source}):")
                lines.extend(f"  {t}" for t in times)
            else:
                lines.append("next fire times: none (manual, past @at, or runs after its parent)")
        report.append(entry)
        if not as_json:
            print("\n".join(lines), file=out)
    if as_json:
        _print_json(report, out)
    else:
        print(f"dry run: {_summary(changes, past=False)}; nothing was changed", file=out)
    return 0


def _wall_now() -> _dt.datetime:
    """The CLI is the edge where wall time enters; everything below takes it as input."""
    return _dt.datetime.now(_dt.UTC)


# ---------------------------------------------------------------------------
# The other job commands
# ---------------------------------------------------------------------------


def _jobs_list(ns: argparse.Namespace, client: Client, out: TextIO) -> int:
    query: dict[str, str] = {}
    if ns.query:
        query["q"] = ns.query
    if ns.status:
        query["status"] = ns.status
    jobs = _as_list_of_dicts(client.call("GET", "/v1/jobs", query=query), "jobs")
    if ns.json:
        _print_json(jobs, out)
        return 0
    header = ["NAME", "SCHEDULE", "EXECUTOR", "STATUS", "DISABLED", "SUCCESS", "ERROR", "NEXT"]
    rows = [
        [
            _cell(j.get("name")),
            _cell(j.get("schedule") or None),
            _cell(j.get("executor") or None),
            str(j.get("status") or "untriggered"),
            _cell(j.get("disabled")),
            _cell(j.get("success_count")),
            _cell(j.get("error_count")),
            _cell(j.get("next")),
        ]
        for j in jobs
    ]
    print(format_table(header, rows), end="", file=out)
    return 0


def _job_path(name: str, suffix: str = "") -> str:
    return f"/v1/jobs/{_quote(name)}{suffix}"


def _jobs_get(ns: argparse.Namespace, client: Client, out: TextIO) -> int:
    job = _as_dict(
        client.call("GET", _job_path(ns.job), not_found=f"job {ns.job} not found"), "a job"
    )
    if ns.json:
        _print_json(job, out)
        return 0
    width = max(len(k) for k in job) + 1
    for key, value in job.items():
        print(f"{key + ':':<{width}} {_flat(_cell(value))}".rstrip(), file=out)
    return 0


def _jobs_run(ns: argparse.Namespace, client: Client, out: TextIO) -> int:
    client.call(
        "POST",
        _job_path(ns.job, "/run"),
        ok=(200, 202),
        not_found=f"job {ns.job} not found, or no member matches its tags",
    )
    print(f"Job {ns.job} started", file=out)
    return 0


def _jobs_toggle(ns: argparse.Namespace, client: Client, out: TextIO) -> int:
    job = _as_dict(
        client.call("POST", _job_path(ns.job, "/toggle"), not_found=f"job {ns.job} not found"),
        "a job",
    )
    state = "disabled" if job.get("disabled") else "enabled"
    print(f"Job {ns.job} is now {state}", file=out)
    return 0


def _jobs_delete(ns: argparse.Namespace, client: Client, out: TextIO, err: TextIO) -> int:
    if not ns.yes and not _confirm(f"Delete job {ns.job} and its executions?", err):
        print("dkron jobs delete: aborted", file=err)
        return 1
    client.call("DELETE", _job_path(ns.job), not_found=f"job {ns.job} not found")
    print(f"Job {ns.job} deleted", file=out)
    return 0


def _result(execution: Mapping[str, Any]) -> str:
    status = execution.get("status")
    if isinstance(status, str) and status:
        return status
    if execution.get("finished_at") in (None, _ZERO_TIME):
        return "running"
    return "success" if execution.get("success") else "failed"


def _last_line(output: object) -> str:
    if not isinstance(output, str) or not output.strip():
        return ""
    line = output.strip().splitlines()[-1]
    return line if len(line) <= 60 else line[:57] + "..."


def _executions_list(ns: argparse.Namespace, client: Client, out: TextIO) -> int:
    query: dict[str, str] = {}
    if ns.limit is not None:
        query["_end"] = str(ns.limit)
    if not ns.json:
        query["output_size_limit"] = "512"  # the table shows the last line only
    data = client.call(
        "GET",
        _job_path(ns.job, "/executions"),
        query=query,
        not_found=f"job {ns.job} not found",
    )
    executions = _as_list_of_dicts(data, "executions")
    if ns.json:
        _print_json(executions, out)
        return 0
    header = ["ID", "STARTED", "FINISHED", "NODE", "RESULT", "ATTEMPT", "TRIGGER", "OUTPUT"]
    rows = [
        [
            _cell(e.get("id")),
            _cell(e.get("started_at")),
            _cell(e.get("finished_at")),
            _cell(e.get("node_name")),
            _result(e),
            _cell(e.get("attempt", 0)),
            _cell(e.get("trigger") or None),
            _last_line(e.get("output")),
        ]
        for e in executions
    ]
    print(format_table(header, rows), end="", file=out)
    return 0


def _latest_execution(client: Client, job: str) -> dict[str, Any]:
    execs = _as_list_of_dicts(
        client.call("GET", _job_path(job, "/executions"), not_found=f"job {job!r} not found"),
        "executions",
    )
    if not execs:
        raise ApiError(f"job {job!r} has no executions")
    return max(execs, key=lambda e: (str(e.get("started_at", "")), str(e.get("id", ""))))


def _logs(ns: argparse.Namespace, client: Client, out: TextIO, err: TextIO) -> int:
    """The output of one execution; with ``-f`` a running one is followed over the websocket.

    Exit status 0 when the execution succeeded, 1 when it failed.
    """
    job = str(ns.job)
    if ns.execution:
        execution = _as_dict(
            client.call(
                "GET",
                _job_path(job, f"/executions/{_quote(str(ns.execution))}"),
                not_found=f"execution {ns.execution!r} of job {job!r} not found",
            ),
            "execution",
        )
    else:
        execution = _latest_execution(client, job)
    running = str(execution.get("finished_at", "")).startswith("0001-")
    if running and ns.follow:
        final = follow_output(client, job, str(execution["id"]), out)
        if final is None:
            raise ApiError("the stream ended before the execution's result")
        execution = final
    else:
        out.write(str(execution.get("output", "")))
        out.flush()
        if running:
            print(f"(execution {execution.get('id')} is still running; -f follows it)", file=err)
            return 0
    print(f"-- {_result(execution)}", file=err)
    return 0 if execution.get("success") else 1


def follow_output(
    client: Client, job: str, execution_id: str, out: TextIO
) -> dict[str, Any] | None:
    """Print live chunks as they come; the final execution object, or None if cut short."""

    parts = urllib.parse.urlsplit(client.base_url)
    host = parts.hostname or "localhost"
    port = parts.port or (443 if parts.scheme == "https" else 80)
    resource = _job_path(job, f"/executions/{_quote(execution_id)}/stream")
    headers = [(k.encode(), v.encode()) for k, v in client.headers(with_body=False).items()]

    async def follow() -> dict[str, Any] | None:
        # The stream is ours to close: the websocket client leaves it open when
        # the server ends the connection first, as servers should.
        try:
            tcp = await trio.open_tcp_stream(host, port)
        except OSError as exc:
            raise ApiError(f"cannot reach {client.base_url}: {exc}") from None
        stream: trio.SocketStream | trio.SSLStream[trio.SocketStream] = tcp
        try:
            if parts.scheme == "https":
                stream = trio.SSLStream(tcp, client.ssl_context(), server_hostname=host)
            async with trio.open_nursery() as nursery:
                ws = await trio_websocket.wrap_client_stream(
                    nursery, stream, host, resource, extra_headers=headers
                )
                try:
                    while True:
                        message = json.loads(await ws.get_message())
                        if message.get("type") == "output":
                            out.write(str(message.get("data", "")))
                            out.flush()
                        elif message.get("type") == "result":
                            return _as_dict(message.get("execution"), "execution")
                except trio_websocket.ConnectionClosed:
                    return None
                finally:
                    await ws.aclose()
        except (trio_websocket.HandshakeError, trio.BrokenResourceError, OSError) as exc:
            raise ApiError(f"cannot follow {resource}: {exc}") from None
        finally:
            await trio.aclose_forcefully(stream)

    result: dict[str, Any] | None = trio.run(follow)
    return result


def _members(ns: argparse.Namespace, client: Client, out: TextIO) -> int:
    members = _as_list_of_dicts(client.call("GET", "/v1/members"), "members")
    if ns.json:
        _print_json(members, out)
        return 0
    leader_resp = client.request("GET", "/v1/leader")
    leader = None
    if leader_resp.status == 200:
        data = leader_resp.json()
        leader = data.get("Name") if isinstance(data, dict) else None
    header = ["NAME", "ADDRESS", "STATUS", "SERVER", "LEADER", "DC", "REGION", "VERSION"]
    rows = []
    for m in members:
        raw_tags = m.get("Tags")
        tags: dict[str, Any] = raw_tags if isinstance(raw_tags, dict) else {}
        status = m.get("statusText") or _MEMBER_STATUS.get(m.get("Status", -1), "unknown")
        rows.append(
            [
                _cell(m.get("Name")),
                f"{m.get('Addr', '')}:{m.get('Port', '')}",
                str(status),
                _cell(tags.get("server", "false")),
                "true" if leader is not None and m.get("Name") == leader else "false",
                _cell(tags.get("dc")),
                _cell(tags.get("region")),
                _cell(tags.get("version")),
            ]
        )
    print(format_table(header, rows), end="", file=out)
    return 0


# ---------------------------------------------------------------------------
# schedule preview (local)
# ---------------------------------------------------------------------------


def preview_times(
    spec: str, *, after: _dt.datetime, count: int, timezone: str = "", job_name: str = ""
) -> list[str]:
    """The next ``count`` fire times of ``spec`` after ``after`` as RFC3339.

    Times are shown at the offset of ``timezone`` when one is given, in UTC
    otherwise.  Like the server, an empty zone means UTC and descriptors
    (``@daily``) run in it.  Raises :class:`ScheduleError` for a bad spec or
    zone, with Dkron's message.
    """
    zone = validate_timezone(timezone) if timezone else None
    job = Job(name=job_name, schedule=spec, timezone=timezone)
    until = _LAST_INSTANT if after + _PREVIEW_WINDOW > _LAST_INSTANT else after + _PREVIEW_WINDOW
    return _fire_time_strings(fire_times(job, after, until, limit=count), zone)


def _schedule_preview(ns: argparse.Namespace, out: TextIO) -> int:
    after: _dt.datetime = ns.after if ns.after is not None else _wall_now()
    try:
        times = preview_times(
            ns.spec, after=after, count=ns.count, timezone=ns.tz or "", job_name=ns.job_name
        )
    except ScheduleError as exc:
        raise _ArgumentError("SPEC", f"can't parse job schedule: {exc}") from None
    if ns.json:
        _print_json(times, out)
    elif times:
        print("\n".join(times), file=out)
    else:
        print(
            "no fire times (a manual job, an @at in the past, or a date that never comes)", file=out
        )
    return 0


# ---------------------------------------------------------------------------
# argparse
# ---------------------------------------------------------------------------


def _count(text: str) -> int:
    if not text.isascii() or not text.isdigit() or not 1 <= int(text) <= _PREVIEW_MAX:
        raise argparse.ArgumentTypeError(f"expected an integer from 1 to {_PREVIEW_MAX}")
    return int(text)


def _limit(text: str) -> int:
    if not text.isascii() or not text.isdigit() or int(text) < 1 or len(text) > 9:
        raise argparse.ArgumentTypeError("expected a positive integer")
    return int(text)


def _zone(text: str) -> str:
    try:
        validate_timezone(text)
    except ScheduleError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


def _instant(text: str) -> _dt.datetime:
    try:
        ns = parse_rfc3339(text, allow_local=False)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return _EPOCH + _dt.timedelta(microseconds=ns // 1000)


def _sub(parser: argparse.ArgumentParser, dest: str) -> Any:
    subs = parser.add_subparsers(dest=dest, metavar="COMMAND", parser_class=type(parser))
    subs.required = True
    return subs


def _common(
    parser: argparse.ArgumentParser,
    client_flags: Callable[[argparse.ArgumentParser], None],
    *,
    json_flag: bool = True,
) -> argparse.ArgumentParser:
    client_flags(parser)
    parser.add_argument(
        "--token",
        default=argparse.SUPPRESS,
        help="send 'Authorization: Bearer TOKEN' (default: $DKRON_TOKEN)",
    )
    if json_flag:
        parser.add_argument("--json", action="store_true", help="print the JSON the API returned")
    return parser


def add_commands(sub: Any, *, client_flags: Callable[[argparse.ArgumentParser], None]) -> None:
    """Register ``jobs``, ``executions``, ``members`` and ``schedule`` on ``sub``.

    ``sub`` is the top-level ``add_subparsers()`` action; ``client_flags``
    adds ``--address`` and its companions, shared with ``leave`` and ``raft``.
    """
    jobs = sub.add_parser("jobs", help="list, inspect, run and apply jobs", allow_abbrev=False)
    jobs_sub = _sub(jobs, "jobs_command")
    p = _common(jobs_sub.add_parser("list", help="list jobs"), client_flags)
    p.add_argument("-q", "--query", metavar="QUERY", help="substring of the name or displayname")
    p.add_argument("--status", choices=_STATUS_FILTERS, help="only jobs with this last status")
    p = _common(jobs_sub.add_parser("get", help="show one job"), client_flags)
    p.add_argument("job", metavar="JOB")
    p = _common(jobs_sub.add_parser("run", help="run a job now"), client_flags, json_flag=False)
    p.add_argument("job", metavar="JOB")
    p = _common(
        jobs_sub.add_parser("toggle", help="enable a disabled job, or disable it"),
        client_flags,
        json_flag=False,
    )
    p.add_argument("job", metavar="JOB")
    p = _common(
        jobs_sub.add_parser("delete", help="delete a job and its executions"),
        client_flags,
        json_flag=False,
    )
    p.add_argument("job", metavar="JOB")
    p.add_argument("-y", "--yes", action="store_true", help="do not ask for confirmation")
    p = _common(
        jobs_sub.add_parser(
            "apply", help="create or update jobs from YAML/JSON files (declarative)"
        ),
        client_flags,
    )
    p.add_argument(
        "-f",
        "--file",
        metavar="FILE_OR_DIR",
        action="append",
        required=True,
        help="a job file, or a directory of *.yaml, *.yml and *.json files (repeatable)",
    )
    p.add_argument(
        "--prune", action="store_true", help="delete server jobs that are not in the files"
    )
    p.add_argument(
        "--dry-run",
        action="store_true",
        help="show the diff and next fire times of each change; change nothing",
    )
    p.add_argument("-y", "--yes", action="store_true", help="prune without asking")

    executions = sub.add_parser("executions", help="a job's executions", allow_abbrev=False)
    exec_sub = _sub(executions, "executions_command")
    p = _common(
        exec_sub.add_parser("list", help="list a job's executions, newest first"), client_flags
    )
    p.add_argument("job", metavar="JOB")
    p.add_argument("--limit", type=_limit, metavar="N", help="at most N executions")

    _common(
        sub.add_parser("members", help="list the cluster's members", allow_abbrev=False),
        client_flags,
    )

    p = _common(
        sub.add_parser(
            "logs", help="print an execution's output; -f follows it live", allow_abbrev=False
        ),
        client_flags,
        json_flag=False,
    )
    p.add_argument("job", metavar="JOB")
    p.add_argument(
        "execution", metavar="EXECUTION", nargs="?", help="execution id (default: the latest)"
    )
    p.add_argument(
        "-f",
        "--follow",
        action="store_true",
        help="stream the output of a running execution until it ends",
    )

    schedule = sub.add_parser("schedule", help="schedule tools (local)", allow_abbrev=False)
    sched_sub = _sub(schedule, "schedule_command")
    p = sched_sub.add_parser("preview", help="the next fire times of a schedule spec")
    p.add_argument("spec", metavar="SPEC", help='a Dkron schedule, e.g. "0 30 * * * *"')
    p.add_argument("--tz", type=_zone, metavar="ZONE", help="the job's IANA time zone")
    p.add_argument(
        "-n", "--count", type=_count, default=10, metavar="N", help="how many (default 10)"
    )
    p.add_argument(
        "--after",
        type=_instant,
        metavar="TIME",
        help="start after this RFC3339 time (default: now)",
    )
    p.add_argument(
        "--job-name", default="", metavar="NAME", help="the job name that '~' and 'H' hash"
    )
    p.add_argument("--json", action="store_true", help="print a JSON list of RFC3339 times")
    p.set_defaults(jobcli_parser=p)


def needs_server(ns: argparse.Namespace) -> bool:
    """Whether the parsed command talks to a server (and so needs ``--address``)."""
    return str(ns.command) != "schedule"


def _command_name(ns: argparse.Namespace) -> str:
    parts = ["dkron", str(ns.command)]
    for attr in ("jobs_command", "executions_command", "schedule_command"):
        value = getattr(ns, attr, None)
        if value:
            parts.append(str(value))
    return " ".join(parts)


def run_command(
    ns: argparse.Namespace,
    *,
    base_url: str | None,
    out: TextIO,
    err: TextIO,
    environ: Mapping[str, str] | None = None,
) -> int:
    """Run a parsed command of this module; ``base_url`` is ``None`` for local ones."""
    env = os.environ if environ is None else environ
    command = _command_name(ns)
    token = getattr(ns, "token", None) or env.get("DKRON_TOKEN") or None
    try:
        if ns.command == "schedule":
            return _schedule_preview(ns, out)
        if base_url is None:
            raise ValueError(f"{command} needs a server address")
        ca_cert = getattr(ns, "ca_cert", None) or env.get("DKRON_CA_CERT") or None
        client = Client(base_url, token=token, ca_cert=ca_cert)
        if ns.command == "members":
            return _members(ns, client, out)
        if ns.command == "executions":
            return _executions_list(ns, client, out)
        if ns.command == "logs":
            return _logs(ns, client, out, err)
        handlers: dict[str, Callable[[], int]] = {
            "list": lambda: _jobs_list(ns, client, out),
            "get": lambda: _jobs_get(ns, client, out),
            "run": lambda: _jobs_run(ns, client, out),
            "toggle": lambda: _jobs_toggle(ns, client, out),
            "delete": lambda: _jobs_delete(ns, client, out, err),
            "apply": lambda: _apply(ns, client, out, err),
        }
        return handlers[str(ns.jobs_command)]()
    except _ArgumentError as exc:
        parser = getattr(ns, "jobcli_parser", None)
        if isinstance(parser, argparse.ArgumentParser):
            print(parser.format_usage(), end="", file=err)
        print(f"{command}: error: {exc}", file=err)
        return 2
    except ApiError as exc:
        print(f"{command}: error: {exc}", file=err)
        return 1
