"""Dkron's REST API v1: the route table, its handlers and the backend they talk to.

The handlers read the local replica (:class:`dkron.state.StateMachine`) and
write by proposing commands through :class:`ApiBackend`, which the agent
implements (forwarding to the Raft leader).  Responses reproduce Dkron's
status codes, headers and three error-body shapes -- empty, plain text, and
gin's ``404 page not found`` -- because clients and Dkron's UI compare them;
errors Dkron never produced are JSON ``{"error": "..."}``.  ``docs/api.md``
lists every route and every deliberate difference from Dkron.

:data:`ROUTES` is declarative (method, pattern, handler, name) so that the
dispatcher and, later, the OpenAPI document are generated from one table.
"""

from __future__ import annotations

import base64
import binascii
import collections
import dataclasses
import datetime as _dt
import enum
import heapq
import hmac
import importlib.resources
import json
import logging
import re
import ssl
import urllib.parse
import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

import trio

from dkron.io_trio.http_query import (
    ExecutionQuery,
    JobQuery,
    QueryError,
    first_param,
    parse_multipart,
    select_executions,
    select_jobs,
)
from dkron.io_trio.http_server import Request, Response, ServerLimits, WebSocketHandler, serve
from dkron.io_trio.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from dkron.io_trio.metrics import Metrics
from dkron.io_trio.streams import EventHub, events_handler, output_handler
from dkron.model import (
    Execution,
    Job,
    PayloadError,
    ValidationError,
    execution_to_json,
    format_rfc3339nano,
    job_from_json,
    job_from_json_bytes,
    job_to_json,
    validate_job,
)
from dkron.schedule import fire_times, parse_schedule, upcoming_fires, validate_timezone
from dkron.state import (
    ApplyResult,
    Command,
    DeleteExecutions,
    DeleteJob,
    StateMachine,
    ToggleJob,
    UpsertJob,
)

__all__ = [
    "ROUTES",
    "UI_ROUTES",
    "Access",
    "ApiAuth",
    "ApiBackend",
    "BackendError",
    "HttpApi",
    "KeyringControl",
    "KeyringError",
    "KeyringOp",
    "MemberInfo",
    "MemberStatus",
    "NotLeaderError",
    "Route",
    "StaticFile",
    "Unavailable",
    "load_ui_files",
    "member_to_json",
    "render_json",
]

log = logging.getLogger("dkron.http")

MAX_UPLOAD_BYTES = 64 << 20
"""Body limit of ``POST /v1/restore``: a backup of many thousand jobs is megabytes."""

#: Restore writes this many jobs at a time (the leader batches what is queued).
RESTORE_IN_FLIGHT = 512
MAX_NEXT_COUNT = 100
UPCOMING_LIMIT = 20
"""How many fires ``GET /v1/stats`` lists under ``upcoming``."""

# ---------------------------------------------------------------------------
# Backend
# ---------------------------------------------------------------------------


class BackendError(Exception):
    """A write could not be carried out by the cluster; ``str()`` is for the client."""


class NotLeaderError(BackendError):
    """No leader could take the write (none elected, or forwarding failed)."""

    def __init__(self, message: str, *, leader: str | None = None) -> None:
        super().__init__(message)
        self.leader = leader


class Unavailable(BackendError):
    """The cluster did not answer in time (no quorum, shutting down, ...)."""


class MemberStatus(enum.IntEnum):
    """Serf's member status numbers, which Dkron's API exposes as ``Status``."""

    NONE = 0
    ALIVE = 1
    LEAVING = 2
    LEFT = 3
    FAILED = 4


@dataclass(frozen=True, slots=True, kw_only=True)
class MemberInfo:
    """A gossip member as the API shows it (Serf's member fields)."""

    name: str
    addr: str
    port: int
    tags: Mapping[str, str]
    status: MemberStatus
    protocol_min: int = 1
    protocol_max: int = 5
    protocol_cur: int = 2
    delegate_min: int = 2
    delegate_max: int = 5
    delegate_cur: int = 4

    def __post_init__(self) -> None:
        if not 0 <= self.port <= 65535:
            raise ValueError("port must be 0..65535")


_MEMBER_IDS = uuid.UUID("6c1b6c52-7d0e-4b8e-9d1e-6b6b1d1f2d6e")


def member_to_json(member: MemberInfo, *, with_id: bool = True) -> dict[str, object]:
    """Dkron's member object; ``/v1/leader`` omits ``id`` and ``statusText``.

    The ``id`` is derived from the name, so it is unique within a response
    like Dkron's random one, and stable across requests.
    """
    out: dict[str, object] = {
        "Name": member.name,
        "Addr": member.addr,
        "Port": member.port,
        "Tags": {k: member.tags[k] for k in sorted(member.tags)},
        "Status": int(member.status),
        "ProtocolMin": member.protocol_min,
        "ProtocolMax": member.protocol_max,
        "ProtocolCur": member.protocol_cur,
        "DelegateMin": member.delegate_min,
        "DelegateMax": member.delegate_max,
        "DelegateCur": member.delegate_cur,
    }
    if with_id:
        out["id"] = str(uuid.uuid5(_MEMBER_IDS, member.name))
        out["statusText"] = member.status.name.lower()
    return out


class ApiBackend(Protocol):
    """What the handlers need from the agent.

    Reads are local and synchronous; writes go through Raft and may raise
    :class:`BackendError` (mapped to 503).
    """

    @property
    def state(self) -> StateMachine: ...

    @property
    def node_name(self) -> str: ...

    @property
    def paused(self) -> bool:
        """Dkron's submission pause: while set, job creates and updates get 503."""

    async def set_paused(self, paused: bool) -> None: ...

    def leader(self) -> MemberInfo | None: ...

    def is_leader(self) -> bool: ...

    def members(self) -> list[MemberInfo]: ...

    def status(self) -> dict[str, object]:
        """The ``GET /v1/`` map: ``agent``, ``serf`` (string values) and ``tags``."""

    async def busy(self) -> list[Execution]:
        """Executions currently running anywhere in the region."""

    def now(self) -> _dt.datetime:
        """The agent's wall clock (UTC): what fire times are counted from."""

    async def propose(self, cmd: Command) -> ApplyResult:
        """Commit ``cmd`` through the leader and return its apply result."""

    async def run_job(self, name: str) -> Execution | None:
        """Start a manual run; ``None`` when it cannot run (no target, refused)."""

    async def cancel(self, job: str, execution_id: str) -> bool:
        """Ask the node running an execution to stop it; False if it is not running."""

    async def leave(self) -> dict[str, object]:
        """Leave the cluster gracefully; returns the peers map Dkron answers with."""

    def raft_peers(self) -> list[dict[str, object]]:
        """The Raft configuration: ``id``, ``node``, ``address``, ``leader``, ``voter``."""

    async def remove_peer(self, peer_id: str) -> bool:
        """Remove a server from Raft; False when the ID is not in the configuration."""

    @property
    def events(self) -> EventHub:
        """Cluster events as this server sees them, for ``GET /v1/events``."""

    async def output_after(
        self, job: str, execution_id: str, seq: int, wait: float
    ) -> tuple[list[tuple[int, bytes]], Execution | None]:
        """Live output chunks after ``seq`` and, once committed, the final execution."""


# ---------------------------------------------------------------------------
# Gossip keyring control
# ---------------------------------------------------------------------------


class KeyringOp(enum.Enum):
    """Serf's keyring operations, applied on every member."""

    INSTALL = "install"
    USE = "use"
    REMOVE = "remove"


class KeyringError(Exception):
    """A keyring operation refused as a whole (no encryption, primary key...)."""


class KeyringControl(Protocol):
    """The cluster-wide gossip keyring, as ``/v1/keyring`` drives it."""

    def keyring_status(self) -> dict[str, object]:
        """``encrypted``, ``num_nodes`` and, per base64 key, how many members hold it
        (``keys``) and use it as their primary (``primary_keys``)."""

    async def keyring_op(self, op: KeyringOp, key: bytes) -> int:
        """Apply ``op`` here and announce it to every member; how many are alive.

        Raises :class:`KeyringError` when the operation cannot apply at all.
        """


# ---------------------------------------------------------------------------
# Authentication
# ---------------------------------------------------------------------------


class Access(enum.IntEnum):
    """What a request's credentials allow; ordered, so the best of several wins."""

    NONE = 0
    READ = 1
    WRITE = 2


_READ_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
#: Load balancers probe /health, and the UI must load before it can ask for a token.
_OPEN_ROUTES = frozenset({"health", "root", "uiIndex", "uiIndexSlash", "uiFile"})
_TOKEN_TEXT = re.compile(r"[\x21-\x7e]+\Z")


def _any_equal(candidate: bytes, secrets: Sequence[str]) -> bool:
    """Compared with every secret, each in constant time: no early exit to time."""
    found = False
    for secret in secrets:
        found |= hmac.compare_digest(candidate, secret.encode("utf-8"))
    return found


@dataclass(frozen=True, slots=True, kw_only=True)
class ApiAuth:
    """The API's credentials: full-access and read-only tokens, and basic-auth pairs.

    Secrets never appear in ``repr`` (and so in no log line or traceback).
    """

    tokens: tuple[str, ...] = dataclasses.field(default=(), repr=False)
    read_tokens: tuple[str, ...] = dataclasses.field(default=(), repr=False)
    basic: tuple[str, ...] = dataclasses.field(default=(), repr=False)  # "user:password"
    realm: str = "dkron"

    def __post_init__(self) -> None:
        for token in (*self.tokens, *self.read_tokens):
            if not _TOKEN_TEXT.match(token):
                raise ValueError("an API token must be printable ASCII without spaces")
        for pair in self.basic:
            user, sep, _ = pair.partition(":")
            if not sep or not user:
                raise ValueError("basic auth credentials must be USER:PASSWORD")
        if not _TOKEN_TEXT.match(self.realm) or '"' in self.realm:
            raise ValueError("the realm must be printable ASCII without spaces or quotes")

    @property
    def enabled(self) -> bool:
        return bool(self.tokens or self.read_tokens or self.basic)

    def challenge(self) -> tuple[tuple[str, str], ...]:
        headers = [("www-authenticate", f'Bearer realm="{self.realm}"')]
        if self.basic:
            headers.append(("www-authenticate", f'Basic realm="{self.realm}", charset="UTF-8"'))
        return tuple(headers)

    def access(self, request: Request, *, allow_query: bool = False) -> tuple[Access, bool]:
        """The best access any presented credential grants, and whether any was presented.

        ``allow_query`` accepts ``?access_token=``: browsers cannot set headers
        on a websocket, so the two websocket routes take the token there.
        """
        tokens: list[bytes] = []
        basics: list[bytes] = []
        for name, value in request.headers:
            if name == "authorization":
                scheme, _, credential = value.strip().partition(" ")
                if scheme.lower() == "bearer":
                    tokens.append(credential.strip().encode("utf-8", "replace"))
                elif scheme.lower() == "basic":
                    try:
                        basics.append(base64.b64decode(credential.strip(), validate=True))
                    except (binascii.Error, ValueError):
                        basics.append(b"")
            elif name == "x-dkron-token":
                tokens.append(value.strip().encode("utf-8", "replace"))
        if allow_query:
            tokens += [
                v.encode("utf-8", "replace") for k, v in request.query if k == "access_token"
            ]
        best = Access.NONE
        for token in tokens:
            if _any_equal(token, self.tokens):
                best = Access.WRITE
            elif _any_equal(token, self.read_tokens):
                best = max(best, Access.READ)
        for pair in basics:
            if _any_equal(pair, self.basic):
                best = Access.WRITE
        return best, bool(tokens or basics)


# ---------------------------------------------------------------------------
# Rendering
# ---------------------------------------------------------------------------

_JSON_TYPE = ("content-type", "application/json; charset=utf-8")
_TEXT_TYPE = ("content-type", "text/plain; charset=utf-8")
_SURROGATES = re.compile("[\ud800-\udfff]")
_GO_ESCAPES = str.maketrans(
    {"<": "\\u003c", ">": "\\u003e", "&": "\\u0026", "\u2028": "\\u2028", "\u2029": "\\u2029"}
)


def _scrub(text: str) -> str:
    """Lone surrogates (possible from ``\\udXXX`` JSON escapes) become U+FFFD, as in Go."""
    return _SURROGATES.sub("\ufffd", text) if _SURROGATES.search(text) else text


def _go_dumps(obj: object, *, pretty: bool = False) -> str:
    if pretty:
        text = json.dumps(obj, ensure_ascii=False, indent=4)
    else:
        text = json.dumps(obj, ensure_ascii=False, separators=(",", ":"))
    # <, >, & and the two JS line separators only occur inside strings.
    return _scrub(text).translate(_GO_ESCAPES)


def render_json(obj: object, *, pretty: bool = False) -> bytes:
    """Go's ``encoding/json`` output: HTML-safe escapes, U+FFFD for bad text."""
    return _go_dumps(obj, pretty=pretty).encode("utf-8")


def _json(status: int, obj: object, call: Call, *extra: tuple[str, str]) -> Response:
    return Response(
        status=status, headers=(_JSON_TYPE, *extra), body=render_json(obj, pretty=call.pretty)
    )


def _text(status: int, message: str) -> Response:
    return Response(status=status, headers=(_TEXT_TYPE,), body=_scrub(message).encode("utf-8"))


def _empty(status: int) -> Response:
    return Response(status=status)


def _error(status: int, message: str) -> Response:
    return Response(status=status, headers=(_JSON_TYPE,), body=render_json({"error": message}))


def _total(n: int) -> tuple[str, str]:
    return ("x-total-count", str(n))


def _location(name: str) -> tuple[str, str]:
    quoted = urllib.parse.quote(_scrub(name).encode("utf-8"), safe="")
    return ("location", f"/v1/jobs/{quoted}")


NOT_FOUND_BODY = "404 page not found"

# ---------------------------------------------------------------------------
# Routes
# ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class Call:
    """One matched request, as a handler sees it."""

    api: HttpApi
    request: Request
    params: Mapping[str, str]

    @property
    def backend(self) -> ApiBackend:
        return self.api.backend

    @property
    def pretty(self) -> bool:
        return any(k == "pretty" for k, _ in self.request.query)

    def has(self, key: str) -> bool:
        return any(k == key for k, _ in self.request.query)


Handler = Callable[[Call], Awaitable[Response]]


@dataclass(frozen=True, slots=True, kw_only=True)
class Route:
    """One row of the API: ``{name}`` segments match one decoded path segment."""

    method: str
    pattern: str
    handler: Handler
    name: str
    summary: str
    meta: bool = True  # CORS and X-Whom (Dkron leaves them off /health)
    body_limit: int | None = None  # None: the server's default
    segments: tuple[str, ...] = dataclasses.field(init=False, default=())

    def __post_init__(self) -> None:
        if not self.pattern.startswith("/"):
            raise ValueError("patterns are absolute")
        object.__setattr__(self, "segments", tuple(self.pattern.split("/")[1:]))

    def match(self, parts: Sequence[str]) -> dict[str, str] | None:
        if len(parts) != len(self.segments):
            return None
        params: dict[str, str] = {}
        for seg, part in zip(self.segments, parts, strict=True):
            if seg.startswith("{"):
                if not part:
                    return None
                params[seg[1:-1]] = part
            elif seg != part:
                return None
        return params


def _job_or_none(call: Call) -> Job | None:
    return call.backend.state.get_job(call.params["job"])


def _next_fire_times(backend: ApiBackend, job: Job, count: int) -> list[_dt.datetime]:
    """The fire times of ``job`` from now, ``@every`` anchored now (as a new
    cron entry is); ``[]`` for a job without a schedule."""
    now = backend.now()
    try:
        return list(fire_times(job, now, now + _HORIZON, limit=count))
    except ValueError:
        return []


def _first_slot(backend: ApiBackend, job: Job) -> int | None:
    """The ``next`` stored with a job being saved: the first slot of its chain.

    An update that keeps the schedule and the zone keeps the job's slots:
    the scheduler goes on from its cursor, and an ``@every`` job keeps its
    phase.  (Dkron re-adds the cron entry, which re-anchors ``@every`` at the
    save and skips the slot in between: editing a command moved the job.)
    Otherwise the chain starts at the first fire from now.
    """
    stored = backend.state.get_job(job.name)
    if (
        stored is not None
        and stored.next is not None
        and (stored.schedule, stored.timezone) == (job.schedule, job.timezone)
    ):
        return stored.next
    times = _next_fire_times(backend, job, 1)
    return _to_ns(times[0]) if times else None


class _NextCache:
    """The ``next`` each job is shown with: the slot its scheduler fires next.

    The stored ``next`` is the job's first slot, fixed when it was saved;
    Dkron rewrites it at every run.  Here it is worked out on reading, from
    the replicated cursor, so that every server shows the same slot without
    a write per run.  A job that will not fire (disabled, expired, a past
    ``@at``) shows the zero time, Dkron's "none".

    Sorting 10,000 jobs by ``next`` needs all of them, and a cron walk costs
    microseconds; so each answer is kept, with what it was computed from,
    until that slot has passed (an answer of "none" stays true as time
    goes on; a clock that went back recomputes).
    """

    def __init__(self) -> None:
        self._entries: dict[str, tuple[tuple[object, ...], int, int | None]] = {}
        self._now: tuple[_dt.datetime, int] | None = None  # one request's "now", in ns

    def shown(self, backend: ApiBackend, job: Job, now: _dt.datetime) -> int | None:
        if job.disabled or job.parent_job or job.schedule in ("", "@manually"):
            return None
        if self._now is None or self._now[0] is not now:
            self._now = (now, _to_ns(now))
        now_ns = self._now[1]
        cursor = backend.state.cursor(job.name)
        inputs = (job.schedule, job.timezone, job.next, cursor, job.starts_at, job.expires_at)
        hit = self._entries.get(job.name)
        if hit is not None:
            held, since, value = hit
            if held == inputs and since <= now_ns and (value is None or now_ns < value):
                return value
        times = _job_fires(backend, job, 1, now=now, cursor=cursor)
        value = _to_ns(times[0]) if times else None
        entries = self._entries
        if len(entries) > 2 * backend.state.job_count() + 64:
            entries.clear()  # deleted jobs' entries
        entries[job.name] = (inputs, now_ns, value)
        return value


def _job_json(call: Call, job: Job) -> dict[str, object]:
    backend = call.backend
    return job_to_json(job, next_ns=call.api.next_cache.shown(backend, job, backend.now()))


_EPOCH = _dt.datetime(1970, 1, 1, tzinfo=_dt.UTC)


def _to_ns(t: _dt.datetime) -> int:
    return (t - _EPOCH) // _dt.timedelta(microseconds=1) * 1000


async def _health(call: Call) -> Response:
    return _json(200, {"status": "healthy"}, call)


async def _index_status(call: Call) -> Response:
    return _json(200, call.backend.status(), call)


async def _members(call: Call) -> Response:
    members = call.backend.members()
    return _json(200, [member_to_json(m) for m in members], call, _total(len(members)))


async def _leader(call: Call) -> Response:
    leader = call.backend.leader()
    if leader is None:
        return _error(404, "no cluster leader is known")
    return _json(200, member_to_json(leader, with_id=False), call)


async def _is_leader(call: Call) -> Response:
    if call.backend.is_leader():
        return _json(200, "I am a leader", call)
    return _json(404, "I am a follower", call)


async def _leave(call: Call) -> Response:
    try:
        peers = await call.backend.leave()
    except BackendError as exc:
        return _error(503, str(exc))
    return _json(200, peers, call)


async def _raft_peers(call: Call) -> Response:
    peers = call.backend.raft_peers()
    return _json(200, peers, call, _total(len(peers)))


async def _remove_peer(call: Call) -> Response:
    peer = call.params["id"]
    try:
        removed = await call.backend.remove_peer(peer)
    except BackendError as exc:
        return _error(503, str(exc))
    if not removed:
        return _error(404, f'id "{peer}" was not found in the Raft configuration')
    return _json(200, {"removed": peer}, call)


async def _keyring_list(call: Call) -> Response:
    control = call.api.keyring
    if control is None:
        members = [m for m in call.backend.members() if m.status is MemberStatus.ALIVE]
        status: dict[str, object] = {
            "encrypted": False,
            "num_nodes": len(members),
            "keys": {},
            "primary_keys": {},
        }
    else:
        status = control.keyring_status()
    return _json(200, status, call)


def _key_from_body(body: bytes) -> bytes | str:
    """The decoded key of ``{"key": "<base64>"}``, or what is wrong with the body."""
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return 'expected a JSON object {"key": "<base64>"}'
    text = data.get("key") if isinstance(data, dict) else None
    if not isinstance(text, str):
        return 'expected a JSON object {"key": "<base64>"}'
    try:
        key = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        return "key is not valid base64"
    if len(key) not in (16, 24, 32):
        return f"key must be 16, 24 or 32 bytes, not {len(key)}"
    return key


async def _keyring_op(call: Call, op: KeyringOp) -> Response:
    key = _key_from_body(call.request.body)
    if isinstance(key, str):
        return _error(400, key)
    control = call.api.keyring
    if control is None:
        return _error(409, "gossip encryption is not enabled (start the agents with --encrypt)")
    try:
        nodes = await control.keyring_op(op, key)
    except KeyringError as exc:
        return _error(409, str(exc))
    except BackendError as exc:
        return _error(503, str(exc))
    return _json(200, {"op": op.value, "num_nodes": nodes}, call)


async def _keyring_install(call: Call) -> Response:
    return await _keyring_op(call, KeyringOp.INSTALL)


async def _keyring_use(call: Call) -> Response:
    return await _keyring_op(call, KeyringOp.USE)


async def _keyring_remove(call: Call) -> Response:
    return await _keyring_op(call, KeyringOp.REMOVE)


async def _busy(call: Call) -> Response:
    try:
        running = await call.backend.busy()
    except BackendError as exc:
        return _error(503, str(exc))
    running = sorted(running, key=lambda e: (e.started_at, e.node_name))
    body = [execution_to_json(e, list_view=False) for e in running]
    return _json(200, body, call, _total(len(body)))


async def _pause_status(call: Call) -> Response:
    return _json(200, {"paused": call.backend.paused}, call)


async def _set_paused(call: Call, paused: bool) -> Response:
    try:
        await call.backend.set_paused(paused)
    except BackendError as exc:
        return _error(503, str(exc))
    return _json(200, {"paused": call.backend.paused}, call)


async def _pause(call: Call) -> Response:
    return await _set_paused(call, True)


async def _unpause(call: Call) -> Response:
    return await _set_paused(call, False)


def _decode_job(body: bytes) -> Job:
    try:
        return job_from_json_bytes(body)
    except PayloadError:
        raise
    except ValueError as exc:  # e.g. an integer literal too long to convert
        raise PayloadError(str(exc)) from None


async def _upsert(call: Call) -> Response:
    if call.backend.paused:
        return _text(503, "New job submissions are currently paused")
    try:
        job = _decode_job(call.request.body)
        validate_job(job)
    except ValidationError as exc:
        return _text(400, exc.http_body())
    job = dataclasses.replace(job, next=_first_slot(call.backend, job))
    try:
        result = await call.backend.propose(UpsertJob(job))
    except BackendError as exc:
        return _text(503, str(exc))
    if not result.ok or result.job is None:
        if result.reason == "parent_not_found":
            return _text(404, result.error)
        if result.reason in ("invalid", "cycle"):
            return _text(400, ValidationError(result.error).http_body())
        return _text(500, result.error or "the job was not stored")
    stored = result.job
    if call.has("runoncreate"):
        call.api.run_in_background(stored.name)
    return _json(201, _job_json(call, stored), call, _location(stored.name))


async def _list_jobs(call: Call) -> Response:
    try:
        query = JobQuery.parse(call.request.query)
    except QueryError as exc:
        return _error(400, str(exc))
    backend, cache, now = call.backend, call.api.next_cache, call.backend.now()
    total, page = select_jobs(backend.state, query, next_of=lambda j: cache.shown(backend, j, now))
    body = [job_to_json(j, next_ns=cache.shown(backend, j, now)) for j in page]
    return _json(200, body, call, _total(total))


async def _get_job(call: Call) -> Response:
    job = _job_or_none(call)
    if job is None:
        return _empty(404)
    return _json(200, _job_json(call, job), call)


async def _delete_job(call: Call) -> Response:
    try:
        result = await call.backend.propose(DeleteJob(call.params["job"]))
    except BackendError as exc:
        return _error(503, str(exc))
    if result.ok and result.job is not None:
        return _json(200, job_to_json(result.job), call)
    if result.reason == "has_dependents":
        return _error(409, result.error)
    return _empty(404)


async def _run_job(call: Call) -> Response:
    job = _job_or_none(call)
    if job is None:
        return _empty(404)
    try:
        started = await call.backend.run_job(job.name)
    except BackendError as exc:
        return _error(503, str(exc))
    if started is None:
        return _empty(404)
    return _json(200, _job_json(call, job), call, _location(job.name))


async def _toggle_job(call: Call) -> Response:
    name = call.params["job"]
    try:
        result = await call.backend.propose(ToggleJob(name))
    except BackendError as exc:
        return _error(503, str(exc))
    if result.ok and result.job is not None:
        return _json(200, _job_json(call, result.job), call, _location(name))
    return _empty(404 if result.reason == "not_found" else 422)


def _zone(job: Job) -> _dt.tzinfo | None:
    try:
        return validate_timezone(job.timezone)
    except ValueError:
        return None


async def _list_executions(call: Call) -> Response:
    job = _job_or_none(call)
    if job is None:
        return _empty(404)
    try:
        query = ExecutionQuery.parse(call.request.query)
    except QueryError as exc:
        return _error(400, str(exc))
    total, page = select_executions(call.backend.state.executions(job.name), query)
    tz = _zone(job)
    body = [execution_to_json(e, tz=tz, output_size_limit=query.output_size_limit) for e in page]
    return _json(200, body, call, _total(total))


async def _delete_executions(call: Call) -> Response:
    try:
        result = await call.backend.propose(DeleteExecutions(call.params["job"]))
    except BackendError as exc:
        return _error(503, str(exc))
    if result.ok and result.job is not None:
        return _json(200, _job_json(call, result.job), call)
    if result.reason == "not_found":
        return _empty(404)
    return _error(500, result.error or "executions were not deleted")


async def _get_execution(call: Call) -> Response:
    ex = call.backend.state.get_execution(call.params["job"], call.params["execution"])
    if ex is None:
        return _empty(404)
    return _json(200, execution_to_json(ex, list_view=False), call)


async def _cancel_execution(call: Call) -> Response:
    name, exec_id = call.params["job"], call.params["execution"]
    ex = call.backend.state.get_execution(name, exec_id)
    if ex is None:
        return _empty(404)
    if not ex.running:
        return _error(409, "execution already finished")
    try:
        accepted = await call.backend.cancel(name, exec_id)
    except BackendError as exc:
        return _error(503, str(exc))
    if not accepted:
        return _error(409, "execution is not running")
    current = call.backend.state.get_execution(name, exec_id) or ex
    return _json(202, execution_to_json(current, list_view=False), call)


async def _next_times(call: Call) -> Response:
    job = _job_or_none(call)
    if job is None:
        return _empty(404)
    raw = first_param(call.request.query, "count")
    count = 10
    if raw is not None:
        valid = raw.isascii() and raw.isdigit() and len(raw) <= 3
        if not valid or not 1 <= int(raw) <= MAX_NEXT_COUNT:
            return _error(400, f"count must be an integer from 1 to {MAX_NEXT_COUNT}")
        count = int(raw)
    times = _job_fires(call.backend, job, count)
    body = [format_rfc3339nano(_to_ns(t)) for t in times]
    return _json(200, body, call, _total(len(body)))


def _load_backup(data: bytes) -> list[Job]:
    try:
        parsed = json.loads(data.decode("utf-8", errors="replace"))
    except (ValueError, RecursionError) as exc:
        raise PayloadError(f"the file is not JSON: {exc}") from None
    if not isinstance(parsed, list):
        raise PayloadError("the file must hold a JSON array of jobs")
    jobs: list[Job] = []
    for i, obj in enumerate(parsed):
        try:
            job = job_from_json(obj)
            validate_job(job)
        except ValueError as exc:
            raise PayloadError(f"job #{i}: {exc}") from None
        jobs.append(job)
    names = {j.name for j in jobs}
    for job in jobs:
        if job.parent_job and job.parent_job not in names:
            raise PayloadError(f"job {job.name}: parent job {job.parent_job} is not in the file")
    return jobs


async def _propose_jobs(backend: ApiBackend, jobs: list[Job], outcome: dict[str, bool]) -> None:
    """Write independent jobs concurrently, so that the leader commits them in batches.

    One at a time, each write waits for its own replicated fsync: a backup of
    5,000 jobs took a minute on three servers.
    """
    limit = trio.CapacityLimiter(RESTORE_IN_FLIGHT)

    async def one(job: Job) -> None:
        async with limit:
            job = dataclasses.replace(job, next=_first_slot(backend, job))
            outcome[job.name] = (await backend.propose(UpsertJob(job))).ok

    async with trio.open_nursery() as nursery:
        for job in jobs:
            nursery.start_soon(one, job)


async def _restore(call: Call) -> Response:
    ctype = call.request.header("content-type") or ""
    try:
        fields = parse_multipart(ctype, call.request.body)
    except ValueError as exc:
        return _error(400, f"malformed multipart body: {exc}")
    if fields is None or "file" not in fields:
        return _error(404, "the multipart form has no file field")
    try:
        jobs = _load_backup(fields["file"])
    except PayloadError as exc:
        return _error(400, str(exc))
    latest = {j.name: j for j in jobs}  # a name given twice: the last one wins
    children: dict[str, list[Job]] = {}
    roots: list[Job] = []
    for job in latest.values():
        (children.setdefault(job.parent_job, []) if job.parent_job else roots).append(job)
    outcome: dict[str, bool] = {}
    level = roots  # parents before children: one generation at a time
    failure: BaseException | None = None
    try:
        while level:
            await _propose_jobs(call.backend, level, outcome)
            level = [c for job in level if outcome[job.name] for c in children.get(job.name, [])]
    except* BackendError as group:
        failure = group
        while isinstance(failure, BaseExceptionGroup):  # the first write that failed
            failure = failure.exceptions[0]
    if failure is not None:
        done = sum(outcome.values())
        return _error(503, f"restore stopped after {done} of {len(latest)} jobs: {failure}")
    report = [f"{'success' if outcome.get(name) else 'fail'} create {name}" for name in latest]
    return _json(200, _go_dumps(report), call)


# -- additive endpoints for the web UI ------------------------------------------


def _count_param(call: Call, default: int) -> int | None:
    """``count`` from the query (1..MAX_NEXT_COUNT), ``default`` when absent, None when bad."""
    raw = first_param(call.request.query, "count")
    if raw is None:
        return default
    valid = raw.isascii() and raw.isdigit() and len(raw) <= 3
    if not valid or not 1 <= int(raw) <= MAX_NEXT_COUNT:
        return None
    return int(raw)


async def _schedule_preview(call: Call) -> Response:
    """Fire times of a schedule that is not saved yet: the job form validates as you type.

    The spec is parsed by the same code as a job's (so the error text is the
    one a create would give), and counted from the agent's clock, ``@every``
    anchored now, as a job saved now would be.
    """
    query = call.request.query
    spec = first_param(query, "schedule") or ""
    zone = first_param(query, "timezone") or ""
    name = first_param(query, "job") or ""
    count = _count_param(call, 10)
    if count is None:
        return _error(400, f"count must be an integer from 1 to {MAX_NEXT_COUNT}")
    if not spec:
        return _error(400, "schedule is required")
    try:
        validate_timezone(zone)
    except ValueError as exc:
        return _error(400, f"invalid timezone: {exc}")
    try:
        parse_schedule(spec, job_name=name, timezone=zone)
    except ValueError as exc:
        return _error(400, f"can't parse job schedule: {exc}")
    probe = Job(name=name, schedule=spec, timezone=zone)
    times = _next_fire_times(call.backend, probe, count)
    body = [format_rfc3339nano(_to_ns(t)) for t in times]
    return _json(200, body, call, _total(len(body)))


_HORIZON = _dt.timedelta(days=3660)


def _from_ns(ns: int) -> _dt.datetime:
    return _EPOCH + _dt.timedelta(microseconds=ns // 1000)


def _opt_time(ns: int | None) -> _dt.datetime | None:
    return None if ns is None else _from_ns(ns)


def _job_fires(
    backend: ApiBackend,
    job: Job,
    count: int,
    *,
    now: _dt.datetime | None = None,
    cursor: int | None = None,
) -> list[_dt.datetime]:
    """The next slots the scheduler will fire for a saved job (``upcoming_fires``):
    in the phase of its own slots, none before ``starts_at``, none after
    ``expires_at``; ``[]`` for a job that never fires on its own."""
    if job.parent_job or not job.schedule:
        return []
    if cursor is None:
        cursor = backend.state.cursor(job.name)
    try:
        return upcoming_fires(
            job,
            backend.now() if now is None else now,
            first=_opt_time(job.next),
            cursor=_opt_time(cursor),
            starts_at=_opt_time(job.starts_at),
            expires_at=_opt_time(job.expires_at),
            count=count,
        )
    except ValueError:
        return []


def _upcoming(
    backend: ApiBackend, limit: int, cache: _NextCache | None = None
) -> list[tuple[_dt.datetime, str]]:
    """The next ``limit`` fires over all enabled jobs, ordered by (time, job).

    Only jobs whose first fire is among the ``limit`` earliest first fires
    can own one of the ``limit`` earliest fires, so the cost is one time per
    job (read from the kept ``next`` of each job: the dashboard asks on every
    event) plus ``limit`` times for at most ``limit`` jobs.
    """
    cache = cache or _NextCache()
    now = backend.now()
    firsts: list[tuple[int, str]] = []
    for job in backend.state.iter_jobs():
        first = cache.shown(backend, job, now)  # None when disabled or never firing
        if first is not None:
            firsts.append((first, job.name))
    fires: list[tuple[_dt.datetime, str]] = []
    for _, name in heapq.nsmallest(limit, firsts):
        candidate = backend.state.get_job(name)
        if candidate is not None:
            times = _job_fires(backend, candidate, limit, now=now)
            fires.extend((t, name) for t in times)
    return heapq.nsmallest(limit, fires)


async def _stats(call: Call) -> Response:
    """One read for the dashboard instead of a list call per figure."""
    state = call.backend.state
    by_status = {"success": 0, "failed": 0, "partially_failed": 0, "untriggered": 0}
    missed: dict[str, dict[str, int]] = {}
    disabled = 0
    for job in state.iter_jobs():
        key = job.status or "untriggered"
        by_status[key] = by_status.get(key, 0) + 1
        disabled += job.disabled
        counts = {reason: n for reason, n in state.missed_counts(job.name).items() if n}
        if counts:
            missed[job.name] = counts
    upcoming = [
        {"job": name, "at": format_rfc3339nano(_to_ns(t))}
        for t, name in _upcoming(call.backend, UPCOMING_LIMIT, call.api.next_cache)
    ]
    body = {
        "jobs": state.job_count(),
        "by_status": by_status,
        "disabled": disabled,
        "running": len(state.running_executions()),
        "missed": missed,
        "upcoming": upcoming,
    }
    return _json(200, body, call)


async def _openapi(call: Call) -> Response:
    """The document of what this server serves: its own routes, /metrics only when on."""
    from dkron.io_trio.openapi import build_openapi  # it imports this module's ROUTES

    return _json(200, build_openapi(call.api.routes, metrics=call.api.metrics is not None), call)


# -- the web UI ------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class StaticFile:
    content_type: str
    body: bytes


_UI_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
    ".json": "application/json; charset=utf-8",
    ".ico": "image/x-icon",
    ".png": "image/png",
}
_UI_NAME = re.compile(r"[A-Za-z0-9_-]+(?:\.[A-Za-z0-9_-]+)*\Z")
_UI_HEADERS = (
    ("cache-control", "no-cache"),
    ("x-content-type-options", "nosniff"),
    ("x-frame-options", "DENY"),
    (
        "content-security-policy",
        "default-src 'self'; connect-src 'self' ws: wss:; img-src 'self' data:; "
        "object-src 'none'; base-uri 'none'; frame-ancestors 'none'",
    ),
)


def load_ui_files() -> dict[str, StaticFile]:
    """The UI's files from the package, read once.

    Serving only names found here (a flat directory, known extensions) is
    what rules out path traversal: a request names a key, never a path.
    """
    root = importlib.resources.files("dkron").joinpath("ui")
    files: dict[str, StaticFile] = {}
    if not root.is_dir():
        return files
    for entry in root.iterdir():
        suffix = "." + entry.name.rpartition(".")[2]
        ctype = _UI_TYPES.get(suffix)
        if ctype is None or not entry.is_file() or not _UI_NAME.match(entry.name):
            continue
        files[entry.name] = StaticFile(content_type=ctype, body=entry.read_bytes())
    return files


def _static(call: Call, name: str) -> Response:
    found = call.api.ui_files.get(name)
    if found is None:
        return _text(404, NOT_FOUND_BODY)
    headers = (("content-type", found.content_type), *_UI_HEADERS)
    return Response(status=200, headers=headers, body=found.body)


async def _ui_index(call: Call) -> Response:
    return _static(call, "index.html")


async def _ui_file(call: Call) -> Response:
    return _static(call, call.params["file"])


async def _root(call: Call) -> Response:
    """Dkron sends browsers from ``/`` to the UI; API clients keep the plain 404."""
    accept = (call.request.header("accept") or "").lower()
    if "text/html" in accept:
        return Response(status=302, headers=(("location", "/ui/"),))
    return _text(404, NOT_FOUND_BODY)


ROUTES: tuple[Route, ...] = (
    Route(method="GET", pattern="/health", handler=_health, name="health", meta=False,
          summary="Liveness: always healthy while the process serves HTTP."),
    Route(method="GET", pattern="/v1", handler=_index_status, name="status",
          summary="Local node name, version, gossip statistics and tags."),
    Route(method="GET", pattern="/v1/", handler=_index_status, name="statusSlash",
          summary="Same as GET /v1."),
    Route(method="GET", pattern="/v1/members", handler=_members, name="listMembers",
          summary="Every gossip member known locally."),
    Route(method="GET", pattern="/v1/leader", handler=_leader, name="getLeader",
          summary="The Raft leader as a gossip member."),
    Route(method="GET", pattern="/v1/isleader", handler=_is_leader, name="isLeader",
          summary="200 on the leader, 404 on a follower."),
    Route(method="POST", pattern="/v1/leave", handler=_leave, name="leave",
          summary="Leave the cluster gracefully; the process keeps serving."),
    Route(method="GET", pattern="/v1/raft/peers", handler=_raft_peers, name="listRaftPeers",
          summary="The Raft configuration (dkron raft list-peers)."),
    Route(method="DELETE", pattern="/v1/raft/peers/{id}", handler=_remove_peer,
          name="removeRaftPeer", summary="Remove a server from Raft (dkron raft remove-peer)."),
    Route(method="POST", pattern="/v1/restore", handler=_restore, name="restore",
          body_limit=MAX_UPLOAD_BYTES,
          summary="Create or update the jobs of a backup (multipart field 'file')."),
    Route(method="GET", pattern="/v1/keyring", handler=_keyring_list, name="listKeyring",
          summary="Gossip keys and how many members hold (and use) each."),
    Route(method="POST", pattern="/v1/keyring/install", handler=_keyring_install,
          name="installKey", summary="Install a gossip key on every member (decrypt only)."),
    Route(method="POST", pattern="/v1/keyring/use", handler=_keyring_use, name="useKey",
          summary="Make an installed gossip key the primary on every member."),
    Route(method="POST", pattern="/v1/keyring/remove", handler=_keyring_remove,
          name="removeKey", summary="Remove a gossip key from every member (not the primary)."),
    Route(method="GET", pattern="/v1/busy", handler=_busy, name="listBusy",
          summary="Executions running now."),
    Route(method="GET", pattern="/v1/pause", handler=_pause_status, name="pauseStatus",
          summary="Whether job submissions are paused."),
    Route(method="POST", pattern="/v1/pause", handler=_pause, name="pause",
          summary="Refuse job creates and updates until unpaused."),
    Route(method="POST", pattern="/v1/unpause", handler=_unpause, name="unpause",
          summary="Accept job creates and updates again."),
    Route(method="GET", pattern="/v1/jobs", handler=_list_jobs, name="listJobs",
          summary="Jobs, filtered, sorted and paginated."),
    Route(method="POST", pattern="/v1/jobs", handler=_upsert, name="createOrUpdateJob",
          summary="Create or replace a job."),
    Route(method="PATCH", pattern="/v1/jobs", handler=_upsert, name="patchJob",
          summary="Same as POST /v1/jobs (a full replace)."),
    Route(method="PUT", pattern="/v1/jobs/{job}", handler=_upsert, name="putJob",
          summary="Same as POST /v1/jobs; the body's name is the job."),
    Route(method="GET", pattern="/v1/jobs/{job}", handler=_get_job, name="showJob",
          summary="One job."),
    Route(method="DELETE", pattern="/v1/jobs/{job}", handler=_delete_job, name="deleteJob",
          summary="Delete a job and its executions."),
    Route(method="POST", pattern="/v1/jobs/{job}", handler=_run_job, name="runJob",
          summary="Run a job now."),
    Route(method="POST", pattern="/v1/jobs/{job}/run", handler=_run_job, name="runJobAlias",
          summary="Run a job now."),
    Route(method="POST", pattern="/v1/jobs/{job}/toggle", handler=_toggle_job, name="toggleJob",
          summary="Flip a job's disabled flag."),
    Route(method="GET", pattern="/v1/jobs/{job}/next", handler=_next_times, name="nextFireTimes",
          summary="The job's next fire times (count 1..100, default 10)."),
    Route(method="GET", pattern="/v1/jobs/{job}/executions", handler=_list_executions,
          name="listExecutions", summary="A job's stored executions, newest first."),
    Route(method="DELETE", pattern="/v1/jobs/{job}/executions", handler=_delete_executions,
          name="deleteExecutions", summary="Drop a job's finished executions, reset counters."),
    Route(method="GET", pattern="/v1/jobs/{job}/executions/{execution}", handler=_get_execution,
          name="showExecution", summary="One execution with its full output."),
    Route(method="POST", pattern="/v1/jobs/{job}/executions/{execution}/cancel",
          handler=_cancel_execution, name="cancelExecution",
          summary="Stop a running execution."),
    Route(method="GET", pattern="/v1/schedule/preview", handler=_schedule_preview,
          name="previewSchedule",
          summary="Next fire times of an unsaved schedule (count 1..100, default 10)."),
    Route(method="GET", pattern="/v1/stats", handler=_stats, name="stats",
          summary="Job totals by status, running count, missed slots, next fires."),
    Route(method="GET", pattern="/v1/openapi.json", handler=_openapi, name="getOpenApi",
          summary="This API's OpenAPI 3.1 document, generated from the route table."),
)  # fmt: skip

UI_ROUTES: tuple[Route, ...] = (
    Route(method="GET", pattern="/", handler=_root, name="root",
          summary="302 to /ui/ for a browser (Accept: text/html), else 404."),
    Route(method="GET", pattern="/ui", handler=_ui_index, name="uiIndex",
          summary="The web UI."),
    Route(method="GET", pattern="/ui/", handler=_ui_index, name="uiIndexSlash",
          summary="The web UI."),
    Route(method="GET", pattern="/ui/{file}", handler=_ui_file, name="uiFile",
          summary="One of the web UI's static files."),
)  # fmt: skip
"""The web UI's routes, served unless ``HttpApi(..., ui=False)`` (Dkron's ``--ui=false``)."""

# ---------------------------------------------------------------------------
# Dispatcher
# ---------------------------------------------------------------------------

_CORS_PREFLIGHT = (
    ("access-control-allow-origin", "*"),
    ("access-control-allow-methods", "*"),
    ("access-control-allow-headers", "*"),
    ("access-control-max-age", "43200"),
)
_CORS_SIMPLE = (("access-control-allow-origin", "*"), ("access-control-expose-headers", "*"))


_WS_HEAD_LIMIT = 16 * 1024  # h11's default, which the websocket library's parser keeps


def _handshake_refusal(request: Request) -> Response | None:
    """Refuse here what the websocket library would refuse during its handshake.

    trio-websocket neither answers nor returns when wsproto rejects a
    handshake, so the connection task would wait forever; and a Host that is
    not IDNA text escapes it as a ``UnicodeError``.  The checks mirror
    wsproto's (the last value of a repeated header counts) on the replayed
    head, which its own h11 parser reads with the default size limit.
    """
    last: dict[str, str] = {}
    for key, value in request.headers:
        last[key] = value
    head = len(request.method) + len(request.target) + 13
    head += sum(len(k) + len(v) + 4 for k, v in request.headers)
    if head > _WS_HEAD_LIMIT:
        return _error(431, "request header fields too large")
    tokens = [t.strip().lower() for t in last.get("connection", "").split(",")]
    if "upgrade" not in tokens or last.get("upgrade", "").lower() != "websocket":
        return _error(400, "a websocket handshake needs Connection: Upgrade, Upgrade: websocket")
    version = last.get("sec-websocket-version")
    if version != "13":
        refusal = _error(426 if version else 400, "Sec-WebSocket-Version must be 13")
        return dataclasses.replace(
            refusal, headers=(*refusal.headers, ("sec-websocket-version", "13"))
        )
    if "sec-websocket-key" not in last:
        return _error(400, "Sec-WebSocket-Key is required")
    try:
        last["host"].encode("latin-1").decode("idna")
    except KeyError:
        return _error(400, "Host is required")
    except UnicodeError:
        return _error(400, "Host is not a valid host name")
    return None


class HttpApi:
    """The application the h11 server serves: routing, Dkron's global headers,
    and the last line of defence against handler bugs."""

    def __init__(
        self,
        backend: ApiBackend,
        *,
        routes: Sequence[Route] = ROUTES,
        limits: ServerLimits | None = None,
        metrics: Metrics | None = None,
        ui: bool = True,
        auth: ApiAuth | None = None,
        keyring: KeyringControl | None = None,
    ) -> None:
        self.backend = backend
        self.routes = tuple(routes) + (UI_ROUTES if ui else ())
        self.ui_files: Mapping[str, StaticFile] = load_ui_files() if ui else {}
        self.limits = limits or ServerLimits()
        self.metrics = metrics
        self.auth = auth if auth is not None and auth.enabled else None
        self.keyring = keyring
        #: ``tls_handshake_failed``, ``connections_refused``, ``auth_refused``...
        self.counters: collections.Counter[str] = collections.Counter()
        self.next_cache = _NextCache()
        self._background: trio.Nursery | None = None

    # -- App protocol -------------------------------------------------------------

    def body_limit(self, method: str, path: str) -> int:
        parts = path.split("/")[1:]
        for route in self.routes:
            limited = route.method == method and route.body_limit is not None
            if limited and route.match(parts) is not None:
                assert route.body_limit is not None
                return route.body_limit
        return self.limits.max_body_bytes

    def error(self, status: int, message: str) -> Response:
        return self._decorate(_error(status, message), origin=None, meta=True)

    def websocket(self, request: Request) -> Response | WebSocketHandler | None:
        """The two websocket routes; refusals are ordinary JSON errors."""
        parts = request.path.split("/")[1:]
        stream = len(parts) == 6 and parts[3::2] == ["executions", "stream"]
        if parts != ["v1", "events"] and not (stream and parts[:2] == ["v1", "jobs"]):
            return None
        refusal = _handshake_refusal(request) or self._authorize(request, websocket=True)
        if refusal is not None:
            return self._decorate(refusal, origin=None, meta=True)
        if parts == ["v1", "events"]:
            return events_handler(self.backend.events)
        if stream:
            job, execution_id = parts[2], parts[4]
            from_text = dict(request.query).get("from_seq", "0")
            if not (from_text.isascii() and from_text.isdigit()):
                return self.error(400, "from_seq must be a non-negative integer")
            if self.backend.state.get_job(job) is None:
                return self.error(404, f"job {job!r} not found")
            if self.backend.state.get_execution(job, execution_id) is None:
                return self.error(404, f"execution {execution_id!r} not found")
            return output_handler(self.backend, job, execution_id, int(from_text))
        return None

    async def handle(self, request: Request) -> Response:
        origin = request.header("origin")
        started = trio.current_time()
        denied = self._authorize(request, websocket=False)
        if denied is not None:
            response, meta = denied, True
        elif request.method == "GET" and request.path == "/metrics":
            response, meta = self._metrics(), False
        else:
            try:
                response, meta = await self._dispatch(request, origin)
            except Exception:
                log.exception("handler failed on %s %s", request.method, request.raw_path)
                response, meta = _error(500, "internal error"), True
        if self.metrics is not None:
            found = self._find(request.method, request.path)
            name = found[0].name if found is not None else "other"
            self.metrics.observe_http(name, response.status, trio.current_time() - started)
        return self._decorate(response, origin=origin, meta=meta)

    def _metrics(self) -> Response:
        """``/metrics`` exists only with ``--enable-prometheus``, as in Dkron."""
        if self.metrics is None:
            return _text(404, NOT_FOUND_BODY)
        return Response(
            status=200,
            headers=(("content-type", METRICS_CONTENT_TYPE),),
            body=self.metrics.render(),
        )

    # -- internals ----------------------------------------------------------------

    def _authorize(self, request: Request, *, websocket: bool) -> Response | None:
        """None when the request may proceed; else its 401 or 403.

        Nothing about the credentials is logged: a mistyped token is often
        a real one for another cluster.
        """
        auth = self.auth
        if auth is None:
            return None
        if not websocket:
            if request.method == "OPTIONS" and request.header("origin") is not None:
                return None  # CORS preflight: browsers never send credentials with it
            found = self._find(request.method, request.path)
            if found is not None and found[0].name in _OPEN_ROUTES:
                return None
        access, presented = auth.access(request, allow_query=websocket)
        needed = Access.READ if websocket or request.method in _READ_METHODS else Access.WRITE
        if access >= needed:
            return None
        self.counters["auth_refused"] += 1
        if access is Access.NONE:
            log.debug("refused %s %s: no valid credentials", request.method, request.raw_path)
            message = "invalid credentials" if presented else "authentication required"
            refusal = _error(401, message)
            return dataclasses.replace(refusal, headers=(*refusal.headers, *auth.challenge()))
        log.debug("refused %s %s: read-only token", request.method, request.raw_path)
        return _error(403, "this token may only read")

    def _decorate(self, response: Response, *, origin: str | None, meta: bool) -> Response:
        if not meta:
            return response
        extra: tuple[tuple[str, str], ...] = (("x-whom", self.backend.node_name),)
        if origin is not None:
            extra += _CORS_SIMPLE
        return dataclasses.replace(response, headers=(*response.headers, *extra))

    def _find(self, method: str, path: str) -> tuple[Route, dict[str, str]] | None:
        parts = path.split("/")[1:]
        for route in self.routes:
            if route.method == method:
                params = route.match(parts)
                if params is not None:
                    return route, params
        return None

    async def _dispatch(self, request: Request, origin: str | None) -> tuple[Response, bool]:
        if request.method == "OPTIONS" and origin is not None:
            return Response(status=204, headers=_CORS_PREFLIGHT), False
        found = self._find(request.method, request.path)
        if found is None:
            return self._redirect_or_404(request), True
        route, params = found
        response = await route.handler(Call(api=self, request=request, params=params))
        return response, route.meta

    def _redirect_or_404(self, request: Request) -> Response:
        """gin's RedirectTrailingSlash: 301 for GET, 307 otherwise."""
        path = request.path
        if path.endswith("/") and len(path) > 1:
            alternative, raw = path[:-1], request.raw_path[:-1]
        else:
            alternative, raw = path + "/", request.raw_path + "/"
        if path.startswith("/") and self._find(request.method, alternative) is not None:
            _, sep, query = request.target.partition("?")
            location = raw + sep + query
            status = 301 if request.method == "GET" else 307
            return Response(status=status, headers=(("location", location),))
        return _text(404, NOT_FOUND_BODY)

    def run_in_background(self, name: str) -> None:
        """Fire a run without making the request wait (``runoncreate``)."""
        if self._background is None:
            raise RuntimeError("runoncreate needs the API to be served with HttpApi.serve")
        self._background.start_soon(self._run_quietly, name)

    async def _run_quietly(self, name: str) -> None:
        try:
            await self.backend.run_job(name)
        except BackendError as exc:
            log.warning("runoncreate of %s failed: %s", name, exc)
        except Exception:
            # Nobody is waiting for this run: a bug must not take the server down.
            log.exception("runoncreate of %s failed", name)

    async def serve(
        self,
        host: str | None,
        port: int,
        *,
        ssl_context: ssl.SSLContext | None = None,
        task_status: trio.TaskStatus[list[trio.SocketListener]] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Serve the API on ``host:port`` until cancelled (HTTPS with ``ssl_context``)."""
        async with trio.open_nursery() as nursery:
            self._background = nursery
            try:
                await serve(
                    self,
                    host,
                    port,
                    limits=self.limits,
                    ssl_context=ssl_context,
                    counters=self.counters,
                    task_status=task_status,
                )
            finally:
                self._background = None
