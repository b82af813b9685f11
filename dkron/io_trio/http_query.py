"""Query parameters and upload bodies of the REST API: pure functions over the state.

Split from the handlers so that the paging, sorting and filtering rules (the
part clients depend on most) can be read and property-tested on their own.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from dkron.model import Execution, Job
from dkron.state import StateMachine

__all__ = [
    "ExecutionQuery",
    "JobQuery",
    "QueryError",
    "first_param",
    "parse_multipart",
    "select_executions",
    "select_jobs",
]

# ---------------------------------------------------------------------------
# Query parameters
# ---------------------------------------------------------------------------


class QueryError(ValueError):
    """A query parameter with a value the API cannot honour (answered 400)."""


def first_param(pairs: Sequence[tuple[str, str]], key: str) -> str | None:
    for k, v in pairs:
        if k == key:
            return v
    return None


def _index(pairs: Sequence[tuple[str, str]], key: str) -> int | None:
    raw = first_param(pairs, key)
    if raw is None:
        return None
    if not raw.isascii() or not raw.isdigit() or len(raw) > 18:
        raise QueryError(f"{key} must be a non-negative integer, got {raw!r}")
    return int(raw)


def _order(pairs: Sequence[tuple[str, str]], *, default_desc: bool) -> bool:
    raw = first_param(pairs, "_order")
    if raw is None or raw == "":
        return default_desc
    if raw.upper() not in ("ASC", "DESC"):
        raise QueryError(f"_order must be ASC or DESC, got {raw!r}")
    return raw.upper() == "DESC"


_JOB_SORTS = frozenset(
    {
        "name",
        "displayname",
        "schedule",
        "success_count",
        "error_count",
        "last_success",
        "last_error",
        "next",
    }
)
_STATUS_FILTERS = {"success": "success", "failed": "failed", "partially_failed": "partially_failed"}
_STATUS_FILTERS["untriggered"] = ""
_METADATA_KEY = re.compile(r"metadata\[(.*)\]\Z", re.DOTALL)


@dataclass(frozen=True, slots=True, kw_only=True)
class JobQuery:
    """``GET /v1/jobs`` parameters, validated."""

    start: int = 0
    end: int | None = None
    sort: str = "name"
    descending: bool = False
    q: str = ""
    status: str | None = None
    disabled: bool | None = None
    metadata: tuple[tuple[str, str], ...] = ()

    def __post_init__(self) -> None:
        if self.sort not in _JOB_SORTS:
            raise QueryError(f"_sort must be one of id, {', '.join(sorted(_JOB_SORTS))}")
        if self.start < 0 or (self.end is not None and self.end < 0):
            raise QueryError("_start and _end must be non-negative")

    @property
    def filtered(self) -> bool:
        return bool(self.q or self.metadata) or self.status is not None or self.disabled is not None

    @classmethod
    def parse(cls, pairs: Sequence[tuple[str, str]]) -> JobQuery:
        sort = first_param(pairs, "_sort") or "name"
        status_raw = first_param(pairs, "status")
        status = None
        if status_raw is not None and status_raw != "":
            if status_raw not in _STATUS_FILTERS:
                raise QueryError(f"status must be one of {', '.join(sorted(_STATUS_FILTERS))}")
            status = _STATUS_FILTERS[status_raw]
        disabled_raw = first_param(pairs, "disabled")
        disabled = None
        if disabled_raw is not None and disabled_raw != "":
            if disabled_raw not in ("true", "false"):
                raise QueryError(f"disabled must be true or false, got {disabled_raw!r}")
            disabled = disabled_raw == "true"
        metadata: dict[str, str] = {}
        for k, v in pairs:
            m = _METADATA_KEY.match(k)
            if m is not None:
                metadata.setdefault(m.group(1), v)
        return cls(
            start=_index(pairs, "_start") or 0,
            end=_index(pairs, "_end"),
            sort="name" if sort == "id" else sort,
            descending=_order(pairs, default_desc=False),
            q=first_param(pairs, "q") or "",
            status=status,
            disabled=disabled,
            metadata=tuple(sorted(metadata.items())),
        )

    def matches(self, job: Job) -> bool:
        if self.q and self.q not in job.name and self.q not in job.displayname:
            return False
        if self.status is not None and job.status != self.status:
            return False
        if self.disabled is not None and job.disabled != self.disabled:
            return False
        if self.metadata:
            md = job.metadata
            if not md or any(md.get(k) != v for k, v in self.metadata):
                return False
        return True


def _time_key(ns: int | None) -> tuple[int, int]:
    return (0, 0) if ns is None else (1, ns)


_JOB_KEYS: dict[str, Callable[[Job], Any]] = {
    "displayname": lambda j: j.displayname.lower(),
    "schedule": lambda j: j.schedule.lower(),
    "success_count": lambda j: j.success_count,
    "error_count": lambda j: j.error_count,
    "last_success": lambda j: _time_key(j.last_success),
    "last_error": lambda j: _time_key(j.last_error),
    "next": lambda j: _time_key(j.next),
}


def _window(total: int, start: int, end: int | None) -> tuple[int, int]:
    stop = total if end is None else min(end, total)
    return (start, stop) if start < stop else (0, 0)


def select_jobs(
    state: StateMachine,
    query: JobQuery,
    *,
    next_of: Callable[[Job], int | None] | None = None,
) -> tuple[int, list[Job]]:
    """The total after filtering and the requested page.

    Listing by name without filters reads only the page from the state's
    sorted index, so it costs the same with 10 jobs or 100,000; every other
    combination scans.  Ties sort by name, and descending reverses both.
    ``next_of`` gives the ``next`` a job is shown with (the stored one if
    absent), so that sorting by ``next`` sorts what the client sees.
    """
    if not query.filtered and query.sort == "name":
        total = state.job_count()
        start, stop = _window(total, query.start, query.end)
        if not query.descending:
            return total, state.list_jobs(start, stop)
        page = state.list_jobs(total - stop, total - start)
        page.reverse()
        return total, page
    jobs = [j for j in state.iter_jobs() if query.matches(j)]
    if query.descending:
        jobs.reverse()  # name-descending, so that a stable sort breaks ties that way
    if query.sort == "next" and next_of is not None:
        jobs.sort(key=lambda j: _time_key(next_of(j)), reverse=query.descending)
    elif query.sort != "name":
        jobs.sort(key=_JOB_KEYS[query.sort], reverse=query.descending)
    start, stop = _window(len(jobs), query.start, query.end)
    return len(jobs), jobs[start:stop]


_EXECUTION_SORTS = frozenset({"", "started_at", "finished_at", "attempt"})


@dataclass(frozen=True, slots=True, kw_only=True)
class ExecutionQuery:
    """``GET /v1/jobs/{job}/executions`` parameters, validated."""

    start: int = 0
    end: int | None = None
    sort: str = ""
    descending: bool = True
    output_size_limit: int | None = None

    def __post_init__(self) -> None:
        if self.sort not in _EXECUTION_SORTS:
            raise QueryError("_sort must be one of id, started_at, finished_at, attempt")

    @classmethod
    def parse(cls, pairs: Sequence[tuple[str, str]]) -> ExecutionQuery:
        sort = first_param(pairs, "_sort") or ""
        return cls(
            start=_index(pairs, "_start") or 0,
            end=_index(pairs, "_end"),
            sort="started_at" if sort == "id" else sort,
            descending=_order(pairs, default_desc=True),
            output_size_limit=_index(pairs, "output_size_limit"),
        )


_EXECUTION_KEYS: dict[str, Callable[[Execution], Any]] = {
    "": lambda e: (e.started_at, e.node_name),
    "started_at": lambda e: (e.started_at, e.node_name),
    "finished_at": lambda e: (_time_key(e.finished_at), e.started_at, e.node_name),
    "attempt": lambda e: (e.attempt, e.started_at, e.node_name),
}


def select_executions(
    executions: Iterable[Execution], query: ExecutionQuery
) -> tuple[int, list[Execution]]:
    """The total and the requested page, sorted (newest first by default)."""
    ordered = sorted(executions, key=_EXECUTION_KEYS[query.sort], reverse=query.descending)
    start, stop = _window(len(ordered), query.start, query.end)
    return len(ordered), ordered[start:stop]


# ---------------------------------------------------------------------------
# multipart/form-data (restore)
# ---------------------------------------------------------------------------

_BOUNDARY = re.compile(r'boundary=(?:"([^"]{1,70})"|([^\s;,"]{1,70}))', re.IGNORECASE)
_PARAM = re.compile(r';\s*([A-Za-z0-9_*-]+)=(?:"((?:[^"\\]|\\.)*)"|([^;\s]*))')
_MAX_PARTS = 64


def parse_multipart(content_type: str, body: bytes) -> dict[str, bytes] | None:
    """The named fields of a ``multipart/form-data`` body (first occurrence wins).

    ``None`` when the body is not multipart; malformed framing raises
    ``ValueError``.  Bounded: the body is already size-limited and at most a
    few dozen parts are looked at.
    """
    if not content_type.lower().startswith("multipart/form-data"):
        return None
    m = _BOUNDARY.search(content_type)
    if m is None:
        raise ValueError("multipart body without a boundary")
    delimiter = b"--" + (m.group(1) or m.group(2)).encode("latin-1")
    pos = body.find(delimiter)
    if pos < 0:
        raise ValueError("multipart boundary not found")
    fields: dict[str, bytes] = {}
    pos += len(delimiter)
    for _ in range(_MAX_PARTS):
        if body.startswith(b"--", pos):
            return fields
        if not body.startswith(b"\r\n", pos):
            raise ValueError("malformed multipart delimiter")
        head_end = body.find(b"\r\n\r\n", pos + 2)
        if head_end < 0:
            raise ValueError("multipart part without a header end")
        head = body[pos + 2 : head_end].decode("latin-1")
        nxt = body.find(b"\r\n" + delimiter, head_end + 4)
        if nxt < 0:
            raise ValueError("multipart body not terminated")
        name = _part_name(head)
        if name is not None:
            fields.setdefault(name, body[head_end + 4 : nxt])
        pos = nxt + 2 + len(delimiter)
    raise ValueError(f"more than {_MAX_PARTS} multipart parts")


def _part_name(head: str) -> str | None:
    for line in head.split("\r\n"):
        key, _, value = line.partition(":")
        if key.strip().lower() != "content-disposition":
            continue
        for pm in _PARAM.finditer(value):
            if pm.group(1).lower() == "name":
                quoted = pm.group(2)
                return re.sub(r"\\(.)", r"\1", quoted) if quoted is not None else pm.group(3)
    return None
