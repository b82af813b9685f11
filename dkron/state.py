"""The replicated state machine: every mutation of jobs and executions is a command.

Raft delivers the same commands, as bytes, in the same order to every server;
:meth:`StateMachine.apply` turns each into a new state and an
:class:`ApplyResult`.  Apply is deterministic (no clock, no randomness, no
iteration over unordered containers whose order could differ) so every
replica, and every replay from a snapshot, reaches byte-identical state.

Apply never raises on what it is given: undecodable bytes, a command that
names a missing job or a job that fails validation all produce a refused
result and leave the state untouched.  Nothing invalid is ever stored.

Exactly-once fire slots rest on three facts kept here:

* cron slots (``schedule`` and ``catchup`` triggers) of one job are claimed
  in increasing ``scheduled_time`` order, so the per-job *cursor* (the last
  decided slot) is enough to refuse any second claim of a slot, with no
  per-slot set to prune;
* every other run is identified by its ``execution_group``; those are
  refused while the group is in flight or among the job's last few
  manual/dependent groups (a bounded window, which is all a proposer that
  retries one proposal needs);
* a retry can only be claimed by consuming the pending retry that the failed
  attempt's :class:`ExecutionFinished` recorded, so it runs once.

See ``docs/jobs.md`` for the operator view.
"""

from __future__ import annotations

import bisect
import dataclasses
import math
import operator
import sys
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import cbor2

from dkron.model import (
    TRIGGERS,
    Execution,
    Job,
    merge_job,
    truncate_output,
    validate_job,
)
from dkron.proto_sansio.errors import RemoteProtocolError
from dkron.proto_sansio.wire import Codec, slot_copier, slot_maker

__all__ = [
    "COMMANDS",
    "MISS_REASONS",
    "NO_TARGET",
    "ApplyResult",
    "ClaimSlot",
    "ClaimSlots",
    "Command",
    "DeleteExecutions",
    "DeleteJob",
    "ExecutionFinished",
    "ExecutionStarted",
    "ExecutionsFinished",
    "ExecutionsStarted",
    "GroupCompleted",
    "InFlight",
    "JobDeleted",
    "PendingRetry",
    "RecordMissed",
    "RetryScheduled",
    "SetPaused",
    "SingleCommand",
    "SlotSkipped",
    "StateConfig",
    "StateMachine",
    "ToggleJob",
    "UpsertJob",
    "batch_commands",
    "compute_group_status",
    "decode_command",
    "each_applied",
    "encode_command",
    "retry_backoff_ns",
]

#: A cron slot counted missed while its job had no alive node matching its tags.
NO_TARGET = "no_target"
MISS_REASONS = frozenset({"missed", "forbid", "paused", "disabled", "expired", NO_TARGET})
_CRON_TRIGGERS = frozenset({"schedule", "catchup"})
_HALF_SECOND_NS = 500_000_000

ERR_PARENT_NOT_FOUND = "specified parent job not found"
ERR_HAS_DEPENDENTS = "store: could not delete job with dependent jobs, delete children first"
ERR_DONE_FOR_DELETED = "grpc: Received execution done for a deleted job"
ERR_CYCLE = "the job's parent chain would contain the job itself"


# ---------------------------------------------------------------------------
# Commands (positional fields: they travel through the Raft log as CBOR)
# ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class UpsertJob:
    """Create or update a job; the store merge rules decide what is kept.

    The proposer computes ``job.next`` from the schedule (the state machine
    has no clock); it is taken when the schedule changed, else the later of
    stored and submitted wins.
    """

    job: Job


@dataclass(frozen=True, slots=True)
class DeleteJob:
    """Delete a job with its history; refused while it has dependents."""

    name: str


@dataclass(frozen=True, slots=True)
class ToggleJob:
    """Flip ``disabled`` inside apply, so it is atomic with concurrent edits."""

    name: str


@dataclass(frozen=True, slots=True)
class ClaimSlot:
    """Reserve one run of a job before anything is dispatched.

    ``scheduled_time_ns`` is the cron slot for ``schedule``/``catchup``, the
    due time for ``retry``, and the request or parent group time otherwise.
    ``term`` is the proposing leader's term, kept for audit and re-dispatch.
    """

    job: str
    scheduled_time_ns: int
    term: int
    trigger: str
    execution_group: int
    targets: tuple[str, ...]
    attempt: int

    def __post_init__(self) -> None:
        if self.trigger not in TRIGGERS or not self.trigger:
            raise ValueError(f"unknown trigger {self.trigger!r}")
        if self.attempt < 1:
            raise ValueError("attempt is 1-based")
        if not self.targets or len(set(self.targets)) != len(self.targets):
            raise ValueError("targets must be non-empty and distinct")
        if self.trigger == "retry" and len(self.targets) != 1:
            raise ValueError("a retry runs on exactly the node that failed")
        if self.term < 0:
            raise ValueError("term must be >= 0")


@dataclass(frozen=True, slots=True)
class ExecutionStarted:
    """The first message of a run: store the running record."""

    execution: Execution

    def __post_init__(self) -> None:
        if self.execution.finished_at is not None:
            raise ValueError("a started execution has no finished_at")


@dataclass(frozen=True, slots=True)
class ExecutionFinished:
    """The final result of a run; committed once, however often it is applied."""

    execution: Execution

    def __post_init__(self) -> None:
        if self.execution.finished_at is None:
            raise ValueError("a finished execution needs finished_at")


@dataclass(frozen=True, slots=True)
class DeleteExecutions:
    """Drop a job's finished history and reset its counters (not status or next)."""

    name: str


@dataclass(frozen=True, slots=True)
class SetPaused:
    """The replicated pause flag the API consults before accepting job submissions."""

    paused: bool


@dataclass(frozen=True, slots=True)
class RecordMissed:
    """Account for ``count`` cron slots that will not run, the last of them at
    ``scheduled_time_ns``, and move the cursor past it.

    One command covers a whole range so that a long outage replayed by a new
    leader costs one log entry per job, not one per slot.
    """

    job: str
    scheduled_time_ns: int
    reason: str
    count: int = 1

    def __post_init__(self) -> None:
        if self.reason not in MISS_REASONS:
            raise ValueError(f"unknown miss reason {self.reason!r}")
        if self.count < 1:
            raise ValueError("count must be >= 1")


@dataclass(frozen=True, slots=True)
class ClaimSlots:
    """Several claims in one log entry, applied in order as if each were its own entry.

    A leader with a thousand jobs due at one instant commits them with one
    Raft entry instead of a thousand; each element keeps exactly the
    semantics of a single :class:`ClaimSlot` (its own refusal, its own events).
    """

    claims: tuple[ClaimSlot, ...]

    def __post_init__(self) -> None:
        if not self.claims:
            raise ValueError("a batch holds at least one claim")


@dataclass(frozen=True, slots=True)
class ExecutionsStarted:
    """Several :class:`ExecutionStarted` records in one log entry, applied in order."""

    executions: tuple[Execution, ...]

    def __post_init__(self) -> None:
        if not self.executions:
            raise ValueError("a batch holds at least one execution")
        if any(ex.finished_at is not None for ex in self.executions):
            raise ValueError("a started execution has no finished_at")


@dataclass(frozen=True, slots=True)
class ExecutionsFinished:
    """Several :class:`ExecutionFinished` results in one log entry, applied in order."""

    executions: tuple[Execution, ...]

    def __post_init__(self) -> None:
        if not self.executions:
            raise ValueError("a batch holds at least one execution")
        if any(ex.finished_at is None for ex in self.executions):
            raise ValueError("a finished execution needs finished_at")


Command = (
    UpsertJob
    | DeleteJob
    | ToggleJob
    | ClaimSlot
    | ExecutionStarted
    | ExecutionFinished
    | DeleteExecutions
    | SetPaused
    | RecordMissed
    | ClaimSlots
    | ExecutionsStarted
    | ExecutionsFinished
)
SingleCommand = (
    UpsertJob
    | DeleteJob
    | ToggleJob
    | ClaimSlot
    | ExecutionStarted
    | ExecutionFinished
    | DeleteExecutions
    | SetPaused
    | RecordMissed
)

COMMANDS = Codec(
    {
        1: UpsertJob,
        2: DeleteJob,
        3: ToggleJob,
        4: ClaimSlot,
        5: ExecutionStarted,
        6: ExecutionFinished,
        7: DeleteExecutions,
        8: SetPaused,
        9: RecordMissed,
        10: ClaimSlots,
        11: ExecutionsStarted,
        12: ExecutionsFinished,
    }
)


def encode_command(cmd: Command) -> bytes:
    """The bytes a proposer hands to Raft."""
    return COMMANDS.encode(cmd)


def decode_command(data: bytes) -> Command:
    """Strict decode; anything malformed raises :class:`RemoteProtocolError`."""
    cmd = COMMANDS.decode(data)
    assert isinstance(
        cmd,
        UpsertJob
        | DeleteJob
        | ToggleJob
        | ClaimSlot
        | ExecutionStarted
        | ExecutionFinished
        | DeleteExecutions
        | SetPaused
        | RecordMissed
        | ClaimSlots
        | ExecutionsStarted
        | ExecutionsFinished,
    )
    return cmd


def batch_commands(cmds: Iterable[Command]) -> list[Command]:
    """Coalesce runs of consecutive claims, started or finished records into batches.

    Only neighbours are merged, so the order in which the state applies the
    elements is exactly the order of ``cmds``; a run of one stays a single
    command.
    """
    out: list[Command] = []
    run: list[Any] = []
    kind: type | None = None

    def close() -> None:
        if len(run) == 1:
            out.append(run[0])
        elif kind is ClaimSlot:
            out.append(ClaimSlots(tuple(run)))
        elif kind is ExecutionStarted:
            out.append(ExecutionsStarted(tuple(c.execution for c in run)))
        elif kind is ExecutionFinished:
            out.append(ExecutionsFinished(tuple(c.execution for c in run)))
        run.clear()

    for cmd in cmds:
        k = type(cmd)
        if k is not kind and run:
            close()
        if k is ClaimSlot or k is ExecutionStarted or k is ExecutionFinished:
            kind = k
            run.append(cmd)
        else:
            kind = None
            out.append(cmd)
    if run:
        close()
    return out


def each_applied(cmd: Command, result: ApplyResult) -> Iterator[tuple[SingleCommand, ApplyResult]]:
    """Every single command a log entry carried, with its own result.

    A batch yields its elements paired with ``result.parts``; any other
    command yields itself.  Followers of the log (planner, execution leader,
    invariant checks) iterate this so that a batch means exactly what its
    elements would mean one entry each.
    """
    if isinstance(cmd, ClaimSlots):
        yield from zip(cmd.claims, result.parts, strict=True)
    elif isinstance(cmd, ExecutionsStarted):
        for ex, part in zip(cmd.executions, result.parts, strict=True):
            yield one_started(ex), part
    elif isinstance(cmd, ExecutionsFinished):
        for ex, part in zip(cmd.executions, result.parts, strict=True):
            yield one_finished(ex), part
    else:
        yield cmd, result


# ---------------------------------------------------------------------------
# Replicated records and apply outcomes
# ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class InFlight:
    """A claimed run whose targets have not all reported; ``outstanding`` maps node -> attempt."""

    claim: ClaimSlot
    outstanding: dict[str, int]


@dataclass(frozen=True, slots=True)
class PendingRetry:
    """A failed attempt's next try, with its replicated due time (survives failover)."""

    job: str
    execution_group: int
    node_name: str
    attempt: int
    due_ns: int
    scheduled_time_ns: int | None


@dataclass(frozen=True, slots=True, kw_only=True)
class GroupCompleted:
    """Every target of a run reported and no retry is pending; dependents run on success."""

    job: str
    execution_group: int
    status: str
    dependents: tuple[str, ...]


@dataclass(frozen=True, slots=True, kw_only=True)
class RetryScheduled:
    retry: PendingRetry


@dataclass(frozen=True, slots=True, kw_only=True)
class JobDeleted:
    name: str
    ephemeral: bool


@dataclass(frozen=True, slots=True, kw_only=True)
class SlotSkipped:
    job: str
    scheduled_time_ns: int
    reason: str
    count: int = 1


StateEvent = GroupCompleted | RetryScheduled | JobDeleted | SlotSkipped


@dataclass(frozen=True, slots=True, kw_only=True)
class ApplyResult:
    """What one log entry did.  ``reason`` is machine-readable; ``error`` is for humans/API.

    A batch entry is ``ok`` and carries one result per element in ``parts``
    (see :func:`each_applied`); its own ``events`` are empty.

    Reasons: ``bad_command``, ``stale_index``, ``invalid``, ``not_found``,
    ``parent_not_found``, ``cycle``, ``has_dependents``, ``duplicate``,
    ``no_retry``, and the skip reasons ``forbid``, ``disabled``, ``expired``.
    A ``duplicate`` of an execution result is ``ok``: the result is already
    committed.
    """

    index: int
    ok: bool
    reason: str = ""
    error: str = ""
    job: Job | None = None
    execution: Execution | None = None
    claim: InFlight | None = None
    events: tuple[StateEvent, ...] = ()
    parts: tuple[ApplyResult, ...] = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class StateConfig:
    """Limits every replica must share (they shape the replicated state)."""

    max_executions_per_job: int = 100
    max_output_bytes: int = 256 * 1024
    recent_groups_window: int = 32

    def __post_init__(self) -> None:
        if self.max_executions_per_job < 1:
            raise ValueError("max_executions_per_job must be >= 1")
        if self.max_output_bytes < 64:
            raise ValueError("max_output_bytes must be >= 64")
        if self.recent_groups_window < 1:
            raise ValueError("recent_groups_window must be >= 1")


def retry_backoff_ns(elapsed_ns: int, attempt: int) -> int:
    """Dkron's exponential back-off before ``attempt`` (the new, 1-based number).

    ``n = elapsed // 500ms``, ``sleep = trunc(log2(n) + attempt) * 500ms``;
    under half a second of elapsed time means no sleep at all.
    """
    n = elapsed_ns // _HALF_SECOND_NS
    if n <= 0:
        return 0
    return math.trunc(math.log2(n) + attempt) * _HALF_SECOND_NS


def compute_group_status(executions: list[Execution], pending_nodes: tuple[str, ...] = ()) -> str:
    """Status of one execution group, Dkron's table over each node's *latest* attempt.

    Dkron counts every attempt, so a run that failed and then succeeded on
    retry is ``partially_failed`` and its dependents never run; here only
    the latest attempt per node counts, so that run is ``success``.  Running
    records count as failures, as in Dkron, and so do ``pending_nodes``:
    claimed targets that have not reported at all yet.
    """
    latest: dict[str, Execution] = {}
    for ex in executions:
        cur = latest.get(ex.node_name)
        if cur is None or (ex.attempt, ex.started_at) > (cur.attempt, cur.started_at):
            latest[ex.node_name] = ex
    silent = [n for n in pending_nodes if n not in latest]
    total = len(latest) + len(silent)
    if total == 0:
        return ""
    failures = len(silent) + sum(1 for ex in latest.values() if not ex.success or ex.running)
    if failures == 0:
        return "success"
    if failures == total:
        return "failed"
    return "partially_failed"


# ---------------------------------------------------------------------------
# Snapshot schema
# ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _JobSnap:
    job: Job
    cursor: int | None
    executions: tuple[Execution, ...]
    inflight: tuple[InFlight, ...]
    recent: tuple[int, ...]
    retries: tuple[PendingRetry, ...]
    missed: dict[str, int]
    triggered: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class _Snapshot:
    version: int
    applied_index: int
    paused: bool
    jobs: tuple[_JobSnap, ...]


_SNAPSHOTS = Codec({1: _Snapshot})
_SNAPSHOT_VERSION = 1
# Where a snapshot's wire form holds the jobs (after the kind) and a job its executions.
_SNAP_JOBS = 1 + [f.name for f in dataclasses.fields(_Snapshot)].index("jobs")
_SNAP_EXECUTIONS = [f.name for f in dataclasses.fields(_JobSnap)].index("executions")
# An execution's wire form: its fields in order, each its own CBOR value.
_execution_fields: Callable[[Execution], tuple[Any, ...]] = operator.attrgetter(
    *(f.name for f in dataclasses.fields(Execution))
)


class _Encoded:
    """An array of items already encoded as CBOR, written as they are into a
    larger value (the array's head is cbor2's)."""

    __slots__ = ("items",)

    def __init__(self, items: list[bytes]) -> None:
        self.items = items


def _write_encoded(encoder: cbor2.CBOREncoder, value: object) -> None:
    if type(value) is not _Encoded:
        raise cbor2.CBOREncodeTypeError(f"cannot serialize type {type(value).__name__}")
    encoder.encode_length(4, len(value.items))  # major type 4: a definite-length array
    for data in value.items:
        encoder.write(data)


def _executions_cbor(executions: list[Execution]) -> _Encoded:
    """The canonical CBOR array of the records' wire forms, each record encoded once.

    A record's encoding is kept on the record itself (replicas in one
    process share them, and a record outlives many snapshots).  Canonical
    CBOR orders only map keys, and a record holds none, so the array's
    bytes are its head followed by its items' bytes.
    """
    return _Encoded([_record_cbor(ex) for ex in executions])


def _record_cbor(ex: Execution) -> bytes:
    """A record's canonical CBOR, encoded once and kept on the record."""
    data: bytes | None = getattr(ex, "_cbor", None)  # unset until first encoded
    if data is None:
        data = cbor2.dumps(_execution_fields(ex), canonical=True)
        object.__setattr__(ex, "_cbor", data)
    return data


class _Activity:
    """Per-job execution state, allocated only once a job has any.

    ``groups`` and ``finished`` are indexes derived from ``executions`` (never
    snapshotted).  ``groups`` holds the stored ids of each execution group:
    the id itself for a group of one record (nearly every group), a list
    otherwise, so that the common run costs no list.  ``finished`` is a list
    of ``(started_at, id)`` of finished records sorted oldest first, read
    from ``head``: the cap evicts from the head and records nearly always
    finish in start order, so a new one is appended and an eviction moves
    the head, where a heap sifts through cold entries on both.  Entries of
    records already gone are skipped lazily.
    """

    __slots__ = (
        "executions",
        "finished",
        "groups",
        "head",
        "inflight",
        "missed",
        "recent",
        "retries",
        "running",
        "triggered",
    )

    def __init__(self) -> None:
        self.executions: dict[str, Execution] = {}
        self.running: set[str] = set()
        self.groups: dict[int, str | list[str]] = {}
        self.finished: list[tuple[int, str]] = []
        self.head = 0
        self.inflight: dict[int, InFlight] = {}
        self.recent: list[int] = []
        self.retries: dict[tuple[int, str], PendingRetry] = {}
        self.missed: dict[str, int] = {}
        # Groups of successful parent runs that still owe this job a dependent
        # run: replicated, so a leader change between the parent's result and
        # the child's claim cannot lose the child's run.
        self.triggered: list[int] = []

    def empty(self) -> bool:
        return not (
            self.executions
            or self.inflight
            or self.recent
            or self.retries
            or self.triggered
            or self.missed
        )

    def store(self, key: str, ex: Execution) -> None:
        """Insert or replace a record, keeping the indexes in step."""
        if key not in self.executions:
            groups = self.groups
            ids = groups.get(ex.group)
            if ids is None:
                groups[ex.group] = key
            elif isinstance(ids, str):
                groups[ex.group] = [ids, key]
            else:
                ids.append(key)
        self.executions[key] = ex
        if ex.finished_at is None:
            self.running.add(key)
        else:
            self.running.discard(key)
            entry = (ex.started_at, key)
            order = self.finished
            if len(order) == self.head or entry >= order[-1]:
                order.append(entry)
            else:
                bisect.insort(order, entry, lo=self.head)

    def evict(self, key: str) -> None:
        ex = self.executions.pop(key)
        if ex.finished_at is None:
            self.running.discard(key)
        ids = self.groups[ex.group]
        if isinstance(ids, str):
            del self.groups[ex.group]
        else:
            ids.remove(key)
            if not ids:
                del self.groups[ex.group]

    def drop_finished(self) -> None:
        """Evict every finished record; running ones stay (their results must
        still land and be counted).  Every index entry is then stale."""
        for key, ex in list(self.executions.items()):
            if ex.finished_at is not None:
                self.evict(key)
        self.finished = []
        self.head = 0

    def only(self, group: int, key: str) -> bool:
        """Is ``key`` the one record stored for ``group``?"""
        ids = self.groups.get(group)
        if isinstance(ids, str):
            return ids == key
        return ids is not None and len(ids) == 1 and ids[0] == key

    def group(self, group: int) -> list[Execution]:
        execs = self.executions
        ids = self.groups.get(group)
        if ids is None:
            return []
        if isinstance(ids, str):
            return [execs[ids]]
        return [execs[k] for k in ids]

    def prune(self, cap: int) -> None:
        """Keep at most ``cap`` records, evicting the oldest finished ones.

        Running records are never evicted (Dkron evicts them too, which lets
        their result reappear as a new record); so only more than ``cap``
        simultaneous runs can exceed the cap, and only while they run.
        """
        execs = self.executions
        excess = len(execs) - cap
        order = self.finished
        if excess > 0:
            head = self.head
            while excess > 0 and head < len(order):
                key = order[head][1]
                head += 1
                ex = execs.get(key)
                if ex is None or ex.finished_at is None:
                    continue  # gone (or stored again and not finished yet): stale entry
                self.evict(key)
                excess -= 1
            if head > 32 and 2 * head > len(order):
                del order[:head]  # amortised: the head has passed half the list
                head = 0
            self.head = head
        if len(order) - self.head > 2 * len(execs) + 16:
            self.finished = sorted((e.started_at, k) for k, e in execs.items() if e.finished_at)
            self.head = 0


def _intern(job: Job) -> Job:
    # Thousands of jobs share a handful of executors, zones and schedules;
    # interning keeps one copy of each (see the bytes-per-job measurement).
    return dataclasses.replace(
        job,
        timezone=sys.intern(job.timezone),
        schedule=sys.intern(job.schedule),
        concurrency=sys.intern(job.concurrency),
        executor=sys.intern(job.executor),
        status=sys.intern(job.status),
        catchup=sys.intern(job.catchup),
        catchup_window=sys.intern(job.catchup_window),
        owner=sys.intern(job.owner),
    )


def _default_validator(job: Job) -> None:
    validate_job(job)


class StateMachine:
    """Jobs, executions, claims, cursors, retries and skip counts, mutated only by apply.

    ``job_validator`` must raise ``ValueError`` (normally
    :class:`dkron.model.ValidationError`) for a job Dkron would refuse; it
    must be the same on every replica.  ``decoder`` turns entry bytes into a
    command and raises :class:`RemoteProtocolError` for anything else.
    """

    def __init__(
        self,
        config: StateConfig | None = None,
        *,
        job_validator: Callable[[Job], None] = _default_validator,
        decoder: Callable[[bytes], Command] = decode_command,
    ) -> None:
        self.config = config or StateConfig()
        self._validate = job_validator
        # How entry bytes become a command.  Commands are immutable, so replicas
        # in one process (the simulator) may share one decoding of each entry.
        self.decoder = decoder
        self._jobs: dict[str, Job] = {}
        self._names: list[str] = []  # sorted: cheap pages without copying every job
        self._cursor: dict[str, int] = {}
        self._activity: dict[str, _Activity] = {}
        self._paused = False
        self._applied = 0
        # Restored records not yet encoded, for encode_ahead().
        self._unencoded: list[Execution] = []

    # -- apply ----------------------------------------------------------------

    def apply(self, index: int, data: bytes) -> ApplyResult:
        """Apply one committed log entry; never raises on bad input."""
        return self.apply_entry(index, data)[1]

    def apply_entry(self, index: int, data: bytes) -> tuple[Command | None, ApplyResult]:
        """Like :meth:`apply`, also returning the decoded command (None if it was
        not one), so that a caller that follows the commands decodes each once."""
        if index <= self._applied:
            stale = ApplyResult(
                index=index, ok=False, reason="stale_index", error="entry already applied"
            )
            return None, stale
        self._applied = index
        try:
            cmd = self.decoder(data)
        except RemoteProtocolError as exc:
            return None, ApplyResult(index=index, ok=False, reason="bad_command", error=str(exc))
        return cmd, self.apply_command(index, cmd)

    def apply_command(self, index: int, cmd: Command) -> ApplyResult:
        """Apply an already-decoded command (tests and the local fast path)."""
        self._applied = max(self._applied, index)
        # List comprehensions: a generator costs a frame switch per element.
        # The batches, nearly every entry of a busy cluster, are tested first.
        if isinstance(cmd, ExecutionsFinished):
            finished = self._finished
            parts = tuple([finished(index, ex) for ex in cmd.executions])
            return ApplyResult(index=index, ok=True, parts=parts)
        if isinstance(cmd, ExecutionsStarted):
            started = self._started
            parts = tuple([started(index, ex) for ex in cmd.executions])
            return ApplyResult(index=index, ok=True, parts=parts)
        if isinstance(cmd, ClaimSlots):
            claim = self._claim
            parts = tuple([claim(index, c) for c in cmd.claims])
            return ApplyResult(index=index, ok=True, parts=parts)
        if isinstance(cmd, UpsertJob):
            return self._upsert(index, cmd.job)
        if isinstance(cmd, DeleteJob):
            return self._delete(index, cmd.name, ephemeral=False)
        if isinstance(cmd, ToggleJob):
            return self._toggle(index, cmd.name)
        if isinstance(cmd, ClaimSlot):
            return self._claim(index, cmd)
        if isinstance(cmd, ExecutionStarted):
            return self._started(index, cmd.execution)
        if isinstance(cmd, ExecutionFinished):
            return self._finished(index, cmd.execution)
        if isinstance(cmd, DeleteExecutions):
            return self._delete_executions(index, cmd.name)
        if isinstance(cmd, SetPaused):
            self._paused = cmd.paused
            return ApplyResult(index=index, ok=True)
        return self._missed(index, cmd)

    @staticmethod
    def _refuse(index: int, reason: str, error: str, **extra: Any) -> ApplyResult:
        return ApplyResult(index=index, ok=False, reason=reason, error=error, **extra)

    def _not_found(self, index: int, name: str) -> ApplyResult:
        return self._refuse(index, "not_found", f"job not found: {name}")

    # -- jobs -------------------------------------------------------------------

    def _upsert(self, index: int, submitted: Job) -> ApplyResult:
        try:
            self._validate(submitted)
        except ValueError as exc:
            return self._refuse(index, "invalid", str(exc))
        name = submitted.name
        parent = submitted.parent_job
        if parent:
            if parent not in self._jobs:
                return self._refuse(index, "parent_not_found", ERR_PARENT_NOT_FOUND)
            seen: set[str] = set()
            p = parent
            while p and p not in seen:
                if p == name:
                    return self._refuse(index, "cycle", ERR_CYCLE)
                seen.add(p)
                ancestor = self._jobs.get(p)
                p = ancestor.parent_job if ancestor is not None else ""
        stored = self._jobs.get(name)
        merged = _intern(merge_job(stored, submitted))
        old_parent = stored.parent_job if stored is not None else ""
        if stored is None:
            bisect.insort(self._names, name)
        self._jobs[name] = merged
        if old_parent != parent:
            self._unlink(old_parent, name)
        if parent:
            self._link(parent, name)
        return ApplyResult(index=index, ok=True, job=self._jobs[name])

    def _link(self, parent: str, child: str) -> None:
        pj = self._jobs[parent]
        if child not in pj.dependent_jobs:
            self._jobs[parent] = dataclasses.replace(pj, dependent_jobs=(*pj.dependent_jobs, child))

    def _unlink(self, parent: str, child: str) -> None:
        pj = self._jobs.get(parent)
        if pj is not None and child in pj.dependent_jobs:
            deps = tuple(d for d in pj.dependent_jobs if d != child)
            self._jobs[parent] = dataclasses.replace(pj, dependent_jobs=deps)

    def _delete(self, index: int, name: str, *, ephemeral: bool) -> ApplyResult:
        job = self._jobs.get(name)
        if job is None:
            return self._not_found(index, name)
        if job.dependent_jobs:
            return self._refuse(index, "has_dependents", ERR_HAS_DEPENDENTS, job=job)
        self._drop(job)
        return ApplyResult(
            index=index, ok=True, job=job, events=(JobDeleted(name=name, ephemeral=ephemeral),)
        )

    def _drop(self, job: Job) -> None:
        name = job.name
        del self._jobs[name]
        del self._names[bisect.bisect_left(self._names, name)]
        self._cursor.pop(name, None)
        self._activity.pop(name, None)
        if job.parent_job:
            self._unlink(job.parent_job, name)

    def _toggle(self, index: int, name: str) -> ApplyResult:
        job = self._jobs.get(name)
        if job is None:
            return self._not_found(index, name)
        job = dataclasses.replace(job, disabled=not job.disabled)
        self._jobs[name] = job
        return ApplyResult(index=index, ok=True, job=job)

    # -- claims -----------------------------------------------------------------

    def _act(self, name: str) -> _Activity:
        act = self._activity.get(name)
        if act is None:
            act = self._activity[name] = _Activity()
        return act

    def _is_running(self, name: str) -> bool:
        act = self._activity.get(name)
        return act is not None and bool(act.inflight or act.running)

    def _skip(self, index: int, c: ClaimSlot | RecordMissed, reason: str) -> ApplyResult:
        """Decide a cron slot as not run: advance the cursor and count the reason."""
        self._cursor[c.job] = c.scheduled_time_ns
        act = self._act(c.job)
        count = c.count if isinstance(c, RecordMissed) else 1
        act.missed[reason] = act.missed.get(reason, 0) + count
        event = SlotSkipped(
            job=c.job, scheduled_time_ns=c.scheduled_time_ns, reason=reason, count=count
        )
        ok = isinstance(c, RecordMissed)
        return ApplyResult(
            index=index,
            ok=ok,
            reason="" if ok else reason,
            error="" if ok else f"slot skipped: {reason}",
            job=self._jobs[c.job],
            events=(event,),
        )

    def _claim(self, index: int, c: ClaimSlot) -> ApplyResult:
        job = self._jobs.get(c.job)
        if job is None:
            return self._not_found(index, c.job)
        trigger = c.trigger
        group = c.execution_group
        cron = trigger in _CRON_TRIGGERS
        if cron:
            cursor = self._cursor.get(c.job)
            if cursor is not None and c.scheduled_time_ns <= cursor:
                return self._refuse(index, "duplicate", "slot already decided", job=job)
        act = self._activity.get(c.job)
        if trigger == "retry":
            pending = act.retries.get((group, c.targets[0])) if act is not None else None
            if pending is None or pending.attempt != c.attempt:
                return self._refuse(index, "no_retry", "no such pending retry", job=job)
        else:
            if trigger == "dependent":
                # A dependent run exists only as the debt of a parent's success;
                # claiming it (run or refused) settles the debt exactly once.
                if act is None or group not in act.triggered:
                    return self._refuse(index, "no_trigger", "no parent run owes this", job=job)
                act.triggered.remove(group)
            if act is not None and (group in act.inflight or group in act.recent):
                return self._refuse(index, "duplicate", "execution group already claimed", job=job)
            refusal = ""
            if job.disabled and trigger != "manual":
                refusal = "disabled"
            elif cron and job.expires_at is not None and c.scheduled_time_ns > job.expires_at:
                refusal = "expired"
            elif job.concurrency == "forbid" and self._is_running(c.job):
                refusal = "forbid"
            if refusal:
                if cron:
                    return self._skip(index, c, refusal)
                return self._refuse(index, refusal, f"run refused: {refusal}", job=job)
        if act is None:
            act = self._activity[c.job] = _Activity()
        if cron:
            self._cursor[c.job] = c.scheduled_time_ns
        elif trigger != "retry":
            act.recent.append(group)
            if len(act.recent) > self.config.recent_groups_window:
                del act.recent[0]
        existing = act.inflight.get(group)
        if existing is not None:  # a retry while other targets of the group still run
            outstanding = {**existing.outstanding, c.targets[0]: c.attempt}
            entry = _inflight(existing.claim, outstanding)
        else:
            entry = _inflight(c, dict.fromkeys(c.targets, c.attempt))
        act.inflight[group] = entry
        if trigger == "retry":
            del act.retries[(group, c.targets[0])]
        return _result(index, True, "", "", job, None, entry, (), ())

    def _missed(self, index: int, c: RecordMissed) -> ApplyResult:
        job = self._jobs.get(c.job)
        if job is None:
            return self._not_found(index, c.job)
        cursor = self._cursor.get(c.job)
        if cursor is not None and c.scheduled_time_ns <= cursor:
            return self._refuse(index, "duplicate", "slot already decided", job=job)
        return self._skip(index, c, c.reason)

    # -- executions ---------------------------------------------------------------

    def _expected(self, act: _Activity | None, ex: Execution) -> bool:
        """Is a record not yet stored one that a claim is waiting for?

        Only a claimed target's outstanding attempt may add a record.  Anything
        else — a report for a run already declared lost or cancelled, a late
        copy of an evicted record, a run nobody claimed — is a stale duplicate:
        storing it would leave a record running forever or count a run twice.
        """
        if act is None:
            return False
        entry = act.inflight.get(ex.group)
        return entry is not None and entry.outstanding.get(ex.node_name) == ex.attempt

    def _started(self, index: int, ex: Execution) -> ApplyResult:
        # Runs for every record on every replica: the checks of _expected,
        # _capped and prune that nearly always pass are made inline.
        name = ex.job_name
        if name not in self._jobs:
            return self._not_found(index, name)
        act = self._activity.get(name)
        key = ex.id
        if act is None:
            return _result(index, True, "duplicate", "", None, ex, None, (), ())
        held = act.executions.get(key)
        if held is not None:
            if held.group != ex.group or held.attempt != ex.attempt:
                return self._id_conflict(index, act, ex, held, settle=False)
            return _result(index, True, "duplicate", "", None, ex, None, (), ())
        claimed = act.inflight.get(ex.group)
        if claimed is None or claimed.outstanding.get(ex.node_name) != ex.attempt:
            return _result(index, True, "duplicate", "", None, ex, None, (), ())
        config = self.config
        stored = ex if len(ex.output) * 4 <= config.max_output_bytes else self._capped(ex)
        # _Activity.store of a new running record, spelled out.
        group = ex.group
        groups = act.groups
        ids = groups.get(group)
        if ids is None:
            groups[group] = key
        elif isinstance(ids, str):
            groups[group] = [ids, key]
        else:
            ids.append(key)
        execs = act.executions
        execs[key] = stored
        act.running.add(key)
        if len(execs) > config.max_executions_per_job:
            act.prune(config.max_executions_per_job)
        return _result(index, True, "", "", None, stored, None, (), ())

    def _id_conflict(
        self, index: int, act: _Activity, ex: Execution, held: Execution, *, settle: bool
    ) -> ApplyResult:
        """Refuse a record whose id another run's record already holds.

        Ids are ``<started_at>-<node>``, and a worker never starts two runs in
        one nanosecond; only a node whose clock went back (and lost its run
        journal) can repeat one.  Storing the record would overwrite the other
        run's, so it is refused.  Its run is still over once its result is
        committed: the claim stops waiting for it (``settle``), so that nothing
        stays in flight, and is dispatched again, for ever.
        """
        if settle:
            inflight = act.inflight
            still = inflight.get(ex.group)
            if still is not None and still.outstanding.get(ex.node_name) == ex.attempt:
                if len(still.outstanding) == 1:
                    del inflight[ex.group]
                else:
                    rest = {n: a for n, a in still.outstanding.items() if n != ex.node_name}
                    inflight[ex.group] = _inflight(still.claim, rest)
        return self._refuse(
            index,
            "id_conflict",
            f"execution id {ex.id} is held by another run "
            f"(group {held.group}, attempt {held.attempt})",
            execution=ex,
        )

    def _capped(self, ex: Execution) -> Execution:
        """The execution with its output capped; the same object when it fits."""
        limit = self.config.max_output_bytes
        if len(ex.output) * 4 <= limit:  # no character takes more than 4 UTF-8 bytes
            return ex
        output = truncate_output(ex.output, limit)
        return ex if output is ex.output else dataclasses.replace(ex, output=output)

    def _finished(self, index: int, ex: Execution) -> ApplyResult:
        name = ex.job_name
        job = self._jobs.get(name)
        if job is None:
            return self._refuse(index, "not_found", ERR_DONE_FOR_DELETED)
        act = self._activity.get(name)
        if act is None:
            return _result(index, True, "duplicate", "", None, ex, None, (), ())
        key = ex.id
        execs = act.executions
        existing = execs.get(key)
        if existing is not None:
            if existing.group != ex.group or existing.attempt != ex.attempt:
                return self._id_conflict(index, act, ex, existing, settle=True)
            if existing.finished_at is not None:
                return _result(index, True, "duplicate", "", None, existing, None, (), ())
        elif not self._expected(act, ex):
            return _result(index, True, "duplicate", "", None, ex, None, (), ())
        config = self.config
        stored = ex if len(ex.output) * 4 <= config.max_output_bytes else self._capped(ex)
        finished_at = ex.finished_at
        assert finished_at is not None  # guaranteed by ExecutionFinished
        act.store(key, stored)
        if len(execs) > config.max_executions_per_job:
            act.prune(config.max_executions_per_job)
        group = ex.group
        node = ex.node_name
        inflight = act.inflight
        still = inflight.get(group)
        if still is not None and node in still.outstanding:
            if len(still.outstanding) == 1:
                del inflight[group]
                still = None
            else:
                rest = {n: a for n, a in still.outstanding.items() if n != node}
                still = inflight[group] = _inflight(still.claim, rest)
        success = ex.success
        if still is None and act.groups.get(group) == key:
            # The group's one record (the index holds a lone id as itself),
            # finished, nobody else to hear from: what compute_group_status
            # says of it, without building its inputs.
            status = "success" if success else "failed"
        else:
            status = compute_group_status(
                act.group(group), tuple(sorted(still.outstanding)) if still is not None else ()
            )
        job = _counted(job, status, success, finished_at)
        self._jobs[name] = job
        retries = act.retries
        retried: tuple[StateEvent, ...] = ()
        if not success and ex.status != "cancelled" and 1 <= ex.attempt < job.retries + 1:
            attempt = ex.attempt + 1
            retry = PendingRetry(
                job=name,
                execution_group=group,
                node_name=node,
                attempt=attempt,
                due_ns=finished_at + retry_backoff_ns(finished_at - ex.started_at, attempt),
                scheduled_time_ns=ex.scheduled_time,
            )
            retries[(group, node)] = retry
            retried = (RetryScheduled(retry=retry),)
        if group in inflight or (retries and any(g == group for g, _ in retries)):
            return _result(index, True, "", "", job, stored, None, retried, ())
        # The whole group has reported and owes no retry: it is complete.
        ok = status == "success"
        dependents = job.dependent_jobs
        events = (*retried, _completed(name, group, status, dependents if ok else ()))
        if ok and dependents:
            for child in dependents:
                if child in self._jobs:
                    owed = self._act(child).triggered
                    owed.append(group)
                    if len(owed) > self.config.recent_groups_window:
                        del owed[0]
        elif ok and job.ephemeral:
            self._drop(job)
            events = (*events, JobDeleted(name=name, ephemeral=True))
        return _result(index, True, "", "", job, stored, None, events, ())

    def _delete_executions(self, index: int, name: str) -> ApplyResult:
        job = self._jobs.get(name)
        if job is None:
            return self._not_found(index, name)
        act = self._activity.get(name)
        if act is not None:
            act.drop_finished()
        cleared = (job.success_count, job.error_count, job.last_success, job.last_error)
        if cleared != (0, 0, None, None):  # rebuilding (and re-validating) a Job is not free
            job = dataclasses.replace(
                job, success_count=0, error_count=0, last_success=None, last_error=None
            )
            self._jobs[name] = job
        return ApplyResult(index=index, ok=True, job=job)

    # -- queries ------------------------------------------------------------------

    @property
    def applied_index(self) -> int:
        return self._applied

    @property
    def paused(self) -> bool:
        return self._paused

    def get_job(self, name: str) -> Job | None:
        return self._jobs.get(name)

    def job_count(self) -> int:
        return len(self._jobs)

    def list_jobs(self, start: int = 0, end: int | None = None) -> list[Job]:
        """Jobs sorted by name, ``[start:end]``; only the page is built."""
        jobs = self._jobs
        return [jobs[n] for n in self._names[start:end]]

    def iter_jobs(self) -> Iterator[Job]:
        """All jobs in name order, lazily (filters and sorts build on this)."""
        jobs = self._jobs
        for n in self._names:
            yield jobs[n]

    def executions(self, name: str) -> list[Execution]:
        """A job's stored executions in Dkron's key order (started_at, then node)."""
        act = self._activity.get(name)
        if act is None:
            return []
        return sorted(act.executions.values(), key=lambda e: (e.started_at, e.node_name))

    def get_execution(self, name: str, execution_id: str) -> Execution | None:
        act = self._activity.get(name)
        return None if act is None else act.executions.get(execution_id)

    def running_executions(self, name: str | None = None) -> list[Execution]:
        """Started and unfinished records, oldest first (all jobs when ``name`` is None)."""
        if name is None:
            acts = list(self._activity.values())
        else:
            one = self._activity.get(name)
            acts = [] if one is None else [one]
        out = [a.executions[i] for a in acts for i in a.running]
        return sorted(out, key=lambda e: (e.started_at, e.node_name))

    def group_executions(self, name: str, group: int) -> list[Execution]:
        """The stored records of one execution group, oldest first (started_at, node)."""
        act = self._activity.get(name)
        if act is None:
            return []
        out = act.group(group)
        if len(out) > 1:
            out.sort(key=lambda e: (e.started_at, e.node_name))
        return out

    def in_flight(self, name: str) -> list[InFlight]:
        """Claimed runs of a job with targets that have not reported, by group."""
        act = self._activity.get(name)
        if act is None:
            return []
        return [act.inflight[g] for g in sorted(act.inflight)]

    def cursor(self, name: str) -> int | None:
        """The last decided cron slot of a job (claimed or skipped), in ns."""
        return self._cursor.get(name)

    def pending_retries(self, name: str | None = None) -> list[PendingRetry]:
        """Retries waiting for their due time, soonest first."""
        names = [name] if name is not None else sorted(self._activity)
        out = [
            r for n in names if (a := self._activity.get(n)) is not None for r in a.retries.values()
        ]
        return sorted(out, key=lambda r: (r.due_ns, r.job, r.execution_group, r.node_name))

    def pending_dependents(self) -> list[tuple[str, int]]:
        """(job, parent execution group) pairs owed a dependent run."""
        return [(n, g) for n in sorted(self._activity) for g in self._activity[n].triggered]

    def owes_dependent(self, name: str, group: int) -> bool:
        """Is job ``name`` still owed a dependent run for its parent's ``group``?"""
        act = self._activity.get(name)
        return act is not None and group in act.triggered

    def missed_counts(self, name: str) -> dict[str, int]:
        """Skipped cron slots of a job by reason."""
        act = self._activity.get(name)
        return {} if act is None else dict(sorted(act.missed.items()))

    # -- snapshot -------------------------------------------------------------------

    def snapshot(self) -> bytes:
        """Canonical CBOR of the whole state: equal states give equal bytes.

        The bytes are those of ``_SNAPSHOTS`` for the :class:`_Snapshot`, but
        each job's executions array is written from the encodings of its
        records (see :func:`_executions_cbor`): the records are immutable
        and nearly all of them are already in the previous snapshot.
        """
        snaps = []
        arrays = []
        empty = _Activity()
        for name in self._names:
            act = self._activity.get(name) or empty
            execs = act.executions
            arrays.append(_executions_cbor([execs[k] for k in sorted(execs)]))
            snaps.append(
                _JobSnap(
                    job=self._jobs[name],
                    cursor=self._cursor.get(name),
                    executions=(),
                    inflight=tuple(act.inflight[g] for g in sorted(act.inflight)),
                    recent=tuple(act.recent),
                    retries=tuple(act.retries[k] for k in sorted(act.retries)),
                    missed=dict(act.missed),
                    triggered=tuple(act.triggered),
                )
            )
        snap = _Snapshot(
            version=_SNAPSHOT_VERSION,
            applied_index=self._applied,
            paused=self._paused,
            jobs=tuple(snaps),
        )
        wire = _SNAPSHOTS.to_wire(snap)
        for job_wire, array in zip(wire[_SNAP_JOBS], arrays, strict=True):
            job_wire[_SNAP_EXECUTIONS] = array
        return cbor2.dumps(wire, canonical=True, default=_write_encoded)

    def restore(self, data: bytes) -> None:
        """Replace the whole state with a snapshot's; garbage raises RemoteProtocolError
        and leaves the current state as it was."""
        snap = _SNAPSHOTS.decode(data)
        assert isinstance(snap, _Snapshot)
        if snap.version != _SNAPSHOT_VERSION:
            raise RemoteProtocolError(f"unsupported snapshot version {snap.version}")
        jobs: dict[str, Job] = {}
        cursors: dict[str, int] = {}
        activity: dict[str, _Activity] = {}
        for js in snap.jobs:
            name = js.job.name
            if name in jobs:
                raise RemoteProtocolError(f"snapshot holds job {name!r} twice")
            jobs[name] = _intern(js.job)
            if js.cursor is not None:
                cursors[name] = js.cursor
            act = _Activity()
            for ex in js.executions:
                if ex.job_name != name:
                    raise RemoteProtocolError("snapshot execution under the wrong job")
                act.store(ex.id, ex)
            for entry in js.inflight:
                act.inflight[entry.claim.execution_group] = entry
            act.recent = list(js.recent)
            for r in js.retries:
                act.retries[(r.execution_group, r.node_name)] = r
            act.missed = dict(js.missed)
            act.triggered = list(js.triggered)
            if not act.empty():
                activity[name] = act
        for job in jobs.values():
            if job.parent_job and job.parent_job not in jobs:
                raise RemoteProtocolError(f"snapshot job {job.name!r} has a missing parent")
        self._jobs = jobs
        self._names = sorted(jobs)
        self._cursor = cursors
        self._activity = activity
        self._paused = snap.paused
        self._applied = snap.applied_index
        self._unencoded = [ex for act in activity.values() for ex in act.executions.values()]

    def encode_ahead(self, limit: int) -> int:
        """Encode up to ``limit`` restored records for the next snapshot; how many are left.

        Records come out of a snapshot without their encoding, so the first
        snapshot after a restore would encode every one of them in one go on
        the core task (a third of a second per 100,000 records, seconds for a
        big cluster: long enough to cost an election).  The agent calls this
        between turns instead.  A record evicted meanwhile is encoded for
        nothing, which is harmless.
        """
        todo = self._unencoded
        batch = todo[-limit:] if limit > 0 else []
        del todo[len(todo) - len(batch) :]
        for ex in batch:
            _record_cbor(ex)
        return len(todo)


_COUNTER_MAX = 1 << 63


_with_success = slot_copier(Job, ("status", "success_count", "last_success"))
_with_error = slot_copier(Job, ("status", "error_count", "last_error"))
# (index, ok, reason, error, job, execution, claim, events, parts)
_result: Callable[..., ApplyResult] = slot_maker(ApplyResult)
# (job, execution_group, status, dependents)
_completed: Callable[[str, int, str, tuple[str, ...]], GroupCompleted] = slot_maker(GroupCompleted)
# (claim, outstanding)
_inflight: Callable[[ClaimSlot, dict[str, int]], InFlight] = slot_maker(InFlight)
# A single started or finished command from an execution whose finished_at
# the caller has checked (their only check): the elements of a batch, which
# checked them all when it was built, and the records a leader proposes.
one_started: Callable[[Execution], ExecutionStarted] = slot_maker(ExecutionStarted, validated=True)
one_finished: Callable[[Execution], ExecutionFinished] = slot_maker(
    ExecutionFinished, validated=True
)


def _counted(job: Job, status: str, success: bool, finished_at: int) -> Job:
    """The job after one more result: its counter, last time and status.

    Built without re-validating the job: a result changes only a counter, a
    finish time already validated as part of its execution and a status from
    :func:`compute_group_status`; the rest was validated when it was stored.
    This runs once per result on every replica, where a full
    ``dataclasses.replace`` costs more than the rest of apply.
    """
    if success:
        count, last = job.success_count + 1, job.last_success
    else:
        count, last = job.error_count + 1, job.last_error
    if last is None or finished_at > last:
        last = finished_at
    if count >= _COUNTER_MAX:
        # A counter at the top of its signed 64 bits stays there: apply never
        # raises, and wrapping to a negative count (as Go's int64 would) helps nobody.
        count = _COUNTER_MAX - 1
    new: Job = (_with_success if success else _with_error)(job, status, count, last)
    return new
