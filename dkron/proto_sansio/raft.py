"""Raft consensus as a pure, sans-IO state machine.

This is Raft as described in the extended paper and in Ongaro's dissertation,
with the production extensions of etcd's raft library: pre-vote,
check-quorum (leader lease), batched and pipelined replication with flow
control, fast log backtracking, snapshots sent in chunks, single-server
membership changes with non-voting learners, leadership transfer and
linearizable reads (ReadIndex).  :class:`RaftNode` performs no I/O: it never
reads a clock, never touches a socket or a disk, and draws randomness only
from the ``random.Random`` it is given.  Identical inputs produce identical
outputs, which is what makes the deterministic simulator possible.

Inputs
------
Every input is a method call that carries the current time ``now`` (seconds,
any monotonic origin):

* :meth:`RaftNode.handle_timer` -- time passed; call it no later than
  :meth:`RaftNode.next_deadline` (calling it early or often is harmless);
* :meth:`RaftNode.receive` -- a message arrived from ``src``; nothing a peer
  sends can raise out of it (bad messages are dropped and counted in
  ``stats.dropped``);
* client calls on the leader: :meth:`~RaftNode.propose`,
  :meth:`~RaftNode.propose_batch`, :meth:`~RaftNode.add_learner`,
  :meth:`~RaftNode.promote`, :meth:`~RaftNode.remove`,
  :meth:`~RaftNode.transfer_leadership`, :meth:`~RaftNode.read_index`.  On a
  node that cannot serve them they raise :class:`NotLeader` carrying the
  known leader (the driver forwards or retries); misuse raises
  :class:`~dkron.proto_sansio.errors.LocalProtocolError`;
* :meth:`RaftNode.compact` -- the application hands over a snapshot of its
  state at an applied index so the log prefix can be discarded.

Outputs and the driver contract
-------------------------------
Outputs are pulled with :meth:`RaftNode.drain`, which returns one
:class:`Ready` batch.  The driver MUST handle a batch in this order, and
finish before draining again:

1. **persist** -- make every record in ``ready.persist`` durable, in order
   (:class:`SaveSnapshot`, :class:`AppendLog`, :class:`SaveHardState`).
   "Durable" means that after a crash at any later point the node restarts
   from a :class:`PersistedState` reflecting these records (an fsync, or a
   write to a store that survives the failures the deployment tolerates).
   :class:`DurableLog` is the reference model of how records combine;
2. **send** -- deliver ``ready.messages`` (best effort; Raft tolerates loss,
   duplication and reordering).  Messages may depend on the persisted
   records (a vote, an acknowledged entry), hence persisting first;
3. **apply** -- if ``ready.restore`` is set, replace the application state
   with that snapshot, then apply ``ready.committed`` in order.  Each
   committed entry is returned exactly once; ``applied_index`` advances when
   ``drain`` returns them;
4. handle ``ready.events`` (leader changes, read confirmations, ...).

The leader counts its own log toward the commit quorum only for entries that
were already returned by a drained persist batch: by the contract above,
those are durable before any later input is fed in.  One drain therefore
covers every proposal made since the previous one with a single write (group
commit), and the followers' writes happen in parallel with the leader's.

If :meth:`RaftNode.has_ready` is still true after a drain (a drain can
complete a commit quorum), :meth:`RaftNode.next_deadline` returns the last
time the node saw, so a driver that drains once per wake-up still makes
progress promptly.

Persistence and restart
-----------------------
A node restarts from :class:`PersistedState`: its hard state (term, vote,
commit), its latest snapshot and the log after it.  The application state is
rebuilt from that alone: the first drain after a restart restores the
snapshot (``ready.restore``) and re-delivers the committed entries after it,
so the application need not persist anything itself.  A new cluster's voters
all start from :meth:`PersistedState.bootstrap`; a node that will join an
existing cluster starts from :meth:`PersistedState.empty` and learns the
configuration from the leader.

Membership
----------
The configuration (:class:`Membership`) lives in the log as CONFIG entries
and takes effect as soon as an entry is appended, as in the dissertation;
only one change may be uncommitted at a time, so any two consecutive
configurations share a quorum.  Learners receive the log but neither vote
nor count toward quorums.  Messages from nodes outside the configuration are
dropped (a removed server cannot disrupt the cluster with votes), except
AppendEntries and InstallSnapshot of the current or a newer term: those can
only come from a legitimate leader whose configuration this node has not
learned yet.  A node whose configuration is empty (joining) accepts every
sender.

Roles and timers
----------------
::

    FOLLOWER --election timeout (voter)--> PRE_CANDIDATE   (pre_vote on)
    FOLLOWER --election timeout (voter)--> CANDIDATE       (pre_vote off)
    FOLLOWER --TimeoutNow from its leader--> CANDIDATE     (transfer: no pre-vote)
    PRE_CANDIDATE --quorum of pre-votes--> CANDIDATE (term + 1, votes for itself)
    CANDIDATE --quorum of votes--> LEADER (appends a no-op of its term)
    any --higher term, or a leader of its term--> FOLLOWER
    PRE_CANDIDATE / CANDIDATE --quorum of rejections--> FOLLOWER
    LEADER --no quorum heard within an election timeout--> FOLLOWER (check_quorum)
    LEADER --its own removal committed--> FOLLOWER

Election timeouts are drawn uniformly from [election_timeout,
2 * election_timeout).  A leader sends heartbeats every
``heartbeat_interval``; they double as probes for followers whose position is
unknown and as loss recovery for pipelined AppendEntries that stayed
unacknowledged for a whole interval.  A follower that heard from its leader
within the election timeout ignores (pre-)vote requests unless they carry the
transfer flag (leader stickiness), so a partitioned node that comes back
cannot depose a healthy leader.

Replication keeps per-follower flow control: PROBE (one AppendEntries at a
time until the follower's position is known), REPLICATE (up to
``max_inflight`` AppendEntries in flight, ``next_index`` advanced
optimistically, each bounded by ``max_append_bytes``) and SNAPSHOT (the log
the follower needs was compacted: InstallSnapshot chunks of
``snapshot_chunk_bytes``, one at a time).  A rejection carries the
conflicting term and its first index so the leader skips a whole term per
round trip.

Reads
-----
:meth:`RaftNode.read_index` implements ReadIndex: the leader notes its commit
index, confirms it is still leader by a heartbeat round acknowledged by a
quorum, then emits ``ReadReady(request_id, index)``.  The driver answers the
read once ``applied_index >= index``.  A read that cannot complete because
the leader lost leadership is reported as ``ReadFailed``.  A leader that has
not yet committed an entry of its own term holds reads until it has.
"""

from __future__ import annotations

import enum
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from random import Random

import cbor2

from dkron.proto_sansio.errors import LocalProtocolError
from dkron.proto_sansio.framing import DEFAULT_MAX_FRAME

__all__ = [
    "ENTRY_OVERHEAD",
    "AppendEntries",
    "AppendEntriesResponse",
    "AppendLog",
    "DurableLog",
    "Entry",
    "EntryKind",
    "Event",
    "HardState",
    "InstallSnapshot",
    "InstallSnapshotResponse",
    "LeaderChanged",
    "Membership",
    "MembershipChanged",
    "NotLeader",
    "PersistRecord",
    "PersistedState",
    "RaftConfig",
    "RaftMessage",
    "RaftNode",
    "RaftStats",
    "ReadFailed",
    "ReadReady",
    "Ready",
    "RequestVote",
    "RequestVoteResponse",
    "Role",
    "RoleChanged",
    "SaveHardState",
    "SaveSnapshot",
    "Snapshot",
    "TimeoutNow",
    "decode_membership",
    "encode_membership",
]

#: Upper bound of the encoded size of an entry beyond its payload (CBOR array
#: header, term, index, kind, byte-string header).  Batches are sized with it,
#: so an AppendEntries never exceeds ``max_append_bytes`` plus a small header.
ENTRY_OVERHEAD = 32

#: Largest ``max_append_bytes`` / ``snapshot_chunk_bytes`` accepted: half a
#: frame, leaving ample room for the message header and the membership.
_MAX_PAYLOAD = DEFAULT_MAX_FRAME // 2


# ---------------------------------------------------------------------------
# configuration, errors, enums
# ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class RaftConfig:
    """Tunables of one node; every node of a cluster should use the same values."""

    election_timeout: float = 1.0
    heartbeat_interval: float = 0.1
    max_append_bytes: int = 1 << 20
    max_inflight: int = 256
    snapshot_chunk_bytes: int = 256 * 1024
    pre_vote: bool = True
    check_quorum: bool = True
    promote_lag: int = 100

    def __post_init__(self) -> None:
        if not self.election_timeout > 0:
            raise ValueError("election_timeout must be positive")
        if not 0 < self.heartbeat_interval < self.election_timeout:
            raise ValueError("heartbeat_interval must be positive and below election_timeout")
        if not ENTRY_OVERHEAD < self.max_append_bytes <= _MAX_PAYLOAD:
            raise ValueError(f"max_append_bytes must be in ({ENTRY_OVERHEAD}, {_MAX_PAYLOAD}]")
        if self.max_inflight < 1:
            raise ValueError("max_inflight must be at least 1")
        if not 0 < self.snapshot_chunk_bytes <= _MAX_PAYLOAD:
            raise ValueError(f"snapshot_chunk_bytes must be in (0, {_MAX_PAYLOAD}]")
        if self.promote_lag < 0:
            raise ValueError("promote_lag must not be negative")


class NotLeader(LocalProtocolError):
    """This node cannot serve the request; ``leader`` is where to send it, if known."""

    def __init__(self, leader_hint: str | None) -> None:
        super().__init__(
            "not the leader" + (f"; the leader is {leader_hint}" if leader_hint else "")
        )
        self.leader = leader_hint


class Role(enum.Enum):
    FOLLOWER = "follower"
    PRE_CANDIDATE = "pre-candidate"
    CANDIDATE = "candidate"
    LEADER = "leader"


class EntryKind(enum.IntEnum):
    NORMAL = 0
    NOOP = 1
    CONFIG = 2


_NORMAL = EntryKind.NORMAL
_NOOP = EntryKind.NOOP
_CONFIG = EntryKind.CONFIG


# ---------------------------------------------------------------------------
# structs shared by the log, the wire and storage (positional: they are
# nested in wire messages)
# ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Membership:
    """A cluster configuration: voters decide, learners only replicate."""

    voters: frozenset[str]
    learners: frozenset[str]

    def __post_init__(self) -> None:
        if self.voters & self.learners:
            raise ValueError("a node cannot be both voter and learner")
        for n in self.voters | self.learners:
            if not isinstance(n, str) or not n:
                raise ValueError("node ids are non-empty strings")

    @property
    def members(self) -> frozenset[str]:
        return self.voters | self.learners


def encode_membership(m: Membership) -> bytes:
    """The payload of a CONFIG entry; sorted so every node encodes it identically."""
    return cbor2.dumps([sorted(m.voters), sorted(m.learners)])


def decode_membership(data: bytes) -> Membership:
    """Strictly parse a CONFIG payload; any defect is a ValueError."""
    try:
        raw = cbor2.loads(data)
    except Exception as exc:  # every parser failure is the payload's fault
        raise ValueError(f"undecodable membership: {exc}") from None
    if type(raw) is not list or len(raw) != 2:
        raise ValueError("membership is a two-element array")
    voters, learners = raw
    if type(voters) is not list or type(learners) is not list:
        raise ValueError("membership lists must be arrays")
    if any(type(v) is not str for v in voters) or any(type(v) is not str for v in learners):
        raise ValueError("member ids must be strings")
    return Membership(frozenset(voters), frozenset(learners))


@dataclass(frozen=True, slots=True)
class Entry:
    """One log entry; CONFIG entries carry an encoded :class:`Membership`."""

    term: int
    index: int
    kind: EntryKind
    data: bytes

    def __post_init__(self) -> None:
        if self.index < 1 or self.term < 1:
            raise ValueError("entries have index >= 1 and term >= 1")
        if self.kind is _CONFIG:
            decode_membership(self.data)


@dataclass(frozen=True, slots=True)
class HardState:
    """What must survive a crash besides the log: term, vote, commit."""

    term: int
    voted_for: str | None
    commit: int

    def __post_init__(self) -> None:
        if self.term < 0 or self.commit < 0:
            raise ValueError("term and commit are non-negative")


@dataclass(frozen=True, slots=True)
class Snapshot:
    """Application state at ``index`` plus the configuration in force there."""

    index: int
    term: int
    membership: Membership
    data: bytes

    def __post_init__(self) -> None:
        if self.index < 0 or self.term < 0:
            raise ValueError("snapshot index and term are non-negative")
        if self.index > 0 and self.term < 1:
            raise ValueError("a non-empty snapshot has a term >= 1")


# ---------------------------------------------------------------------------
# wire messages (positional fields, validated: the codec turns ValueError into
# RemoteProtocolError)
# ---------------------------------------------------------------------------


def _nonneg(cls: str, **values: int) -> None:
    for name, v in values.items():
        if v < 0:
            raise ValueError(f"{cls}.{name} must be non-negative, got {v}")


@dataclass(frozen=True, slots=True)
class RequestVote:
    """A (pre-)vote request; ``transfer`` bypasses the leader lease."""

    term: int
    last_log_index: int
    last_log_term: int
    pre_vote: bool
    transfer: bool

    def __post_init__(self) -> None:
        _nonneg("RequestVote", last_log_index=self.last_log_index, last_log_term=self.last_log_term)
        if self.term < 1 or self.last_log_term > self.term:
            raise ValueError("RequestVote: term >= 1 and last_log_term <= term")


@dataclass(frozen=True, slots=True)
class RequestVoteResponse:
    term: int
    granted: bool
    pre_vote: bool

    def __post_init__(self) -> None:
        _nonneg("RequestVoteResponse", term=self.term)


@dataclass(frozen=True, slots=True)
class AppendEntries:
    """Replication, heartbeat and commit notice in one; ``seq`` confirms reads."""

    term: int
    prev_index: int
    prev_term: int
    commit: int
    entries: tuple[Entry, ...]
    seq: int

    def __post_init__(self) -> None:
        if (
            self.prev_index < 0
            or self.prev_term < 0
            or self.commit < 0
            or self.seq < 0
            or self.term < 1
            or self.prev_term > self.term
        ):
            raise ValueError("AppendEntries: impossible indexes or terms")
        i = self.prev_index
        t = self.prev_term
        top = self.term
        for e in self.entries:
            i += 1
            et = e.term
            if e.index != i or et < t or et > top:
                raise ValueError("AppendEntries: entries must be contiguous with rising terms")
            t = et


@dataclass(frozen=True, slots=True)
class AppendEntriesResponse:
    """``index``: the matched index on success, the rejected prev_index otherwise.

    On rejection ``conflict_term``/``conflict_index`` let the leader skip a whole
    conflicting term at once (0 for "no entry there").
    """

    term: int
    success: bool
    index: int
    conflict_term: int
    conflict_index: int
    seq: int

    def __post_init__(self) -> None:
        _nonneg(
            "AppendEntriesResponse",
            term=self.term,
            index=self.index,
            conflict_term=self.conflict_term,
            conflict_index=self.conflict_index,
            seq=self.seq,
        )


@dataclass(frozen=True, slots=True)
class InstallSnapshot:
    """One chunk ``data`` at ``offset`` of a ``total``-byte snapshot."""

    term: int
    index: int
    snapshot_term: int
    membership: Membership
    offset: int
    total: int
    data: bytes

    def __post_init__(self) -> None:
        if (
            self.term < 1
            or self.index < 1
            or not 1 <= self.snapshot_term <= self.term
            or self.offset < 0
            or self.offset + len(self.data) > self.total
            or not self.membership.voters
        ):
            raise ValueError("InstallSnapshot: impossible index, term, chunk or membership")


@dataclass(frozen=True, slots=True)
class InstallSnapshotResponse:
    """``next_offset``: bytes received so far; ``match_index`` > 0 once installed."""

    term: int
    index: int
    next_offset: int
    match_index: int

    def __post_init__(self) -> None:
        _nonneg(
            "InstallSnapshotResponse",
            term=self.term,
            index=self.index,
            next_offset=self.next_offset,
            match_index=self.match_index,
        )


@dataclass(frozen=True, slots=True)
class TimeoutNow:
    """Leadership transfer: campaign now, skipping pre-vote and the lease."""

    term: int

    def __post_init__(self) -> None:
        if self.term < 1:
            raise ValueError("TimeoutNow: term >= 1")


RaftMessage = (
    RequestVote
    | RequestVoteResponse
    | AppendEntries
    | AppendEntriesResponse
    | InstallSnapshot
    | InstallSnapshotResponse
    | TimeoutNow
)


# ---------------------------------------------------------------------------
# persistence
# ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SaveHardState:
    state: HardState


@dataclass(frozen=True, slots=True)
class AppendLog:
    """Entries to make durable; the first may overwrite (truncate) the durable tail."""

    entries: tuple[Entry, ...]


@dataclass(frozen=True, slots=True)
class SaveSnapshot:
    """A snapshot that replaces the log prefix up to its index (or a conflicting log)."""

    snapshot: Snapshot


PersistRecord = SaveHardState | AppendLog | SaveSnapshot


@dataclass(frozen=True, slots=True)
class PersistedState:
    """Everything a node restarts from."""

    hard_state: HardState
    snapshot: Snapshot | None
    entries: tuple[Entry, ...]

    def __post_init__(self) -> None:
        base = self.snapshot.index if self.snapshot is not None else 0
        for i, e in enumerate(self.entries, base + 1):
            if e.index != i:
                raise ValueError("persisted entries must follow the snapshot contiguously")

    @classmethod
    def bootstrap(cls, voters: Iterable[str]) -> PersistedState:
        """A new cluster: the initial configuration as a snapshot at index 0."""
        vs = frozenset(voters)
        if not vs:
            raise ValueError("a cluster needs at least one voter")
        return cls(HardState(0, None, 0), Snapshot(0, 0, Membership(vs, frozenset()), b""), ())

    @classmethod
    def empty(cls) -> PersistedState:
        """A node that will join an existing cluster and learn its configuration."""
        return cls(HardState(0, None, 0), None, ())


class DurableLog:
    """In-memory model of durable storage: records in, restart state out.

    The simulator uses it as its "disk"; real storage implements the same
    semantics on files and can be checked against it.
    """

    def __init__(self, initial: PersistedState) -> None:
        self._hard = initial.hard_state
        self._snapshot = initial.snapshot
        self._entries: list[Entry] = list(initial.entries)

    @property
    def _base(self) -> int:
        return self._snapshot.index if self._snapshot is not None else 0

    @property
    def last_index(self) -> int:
        return self._base + len(self._entries)

    def apply(self, record: PersistRecord) -> None:
        if type(record) is AppendLog:
            entries = record.entries
            if not entries:
                return
            base = self._base
            first = entries[0].index
            if first <= base:
                entries = entries[base + 1 - first :]
                if not entries:
                    return
                first = base + 1
            if first > base + len(self._entries) + 1:
                raise LocalProtocolError(f"AppendLog at {first} leaves a gap in the log")
            del self._entries[first - base - 1 :]
            self._entries.extend(entries)
        elif type(record) is SaveHardState:
            self._hard = record.state
        elif type(record) is SaveSnapshot:
            snap = record.snapshot
            base = self._base
            if self._snapshot is not None and snap.index <= base:
                return
            pos = snap.index - base - 1
            if 0 <= pos < len(self._entries) and self._entries[pos].term == snap.term:
                del self._entries[: pos + 1]
            else:
                self._entries = []
            self._snapshot = snap
        else:
            raise LocalProtocolError(f"not a persist record: {record!r}")

    def state(self) -> PersistedState:
        return PersistedState(self._hard, self._snapshot, tuple(self._entries))


# ---------------------------------------------------------------------------
# outputs
# ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class LeaderChanged:
    term: int
    leader: str | None


@dataclass(frozen=True, slots=True)
class RoleChanged:
    role: Role
    term: int


@dataclass(frozen=True, slots=True)
class ReadReady:
    """Serve read ``request_id`` once the application has applied ``index``."""

    request_id: int
    index: int


@dataclass(frozen=True, slots=True)
class ReadFailed:
    """Read ``request_id`` was abandoned (leadership lost); retry on the leader."""

    request_id: int


@dataclass(frozen=True, slots=True)
class MembershipChanged:
    membership: Membership


Event = LeaderChanged | RoleChanged | ReadReady | ReadFailed | MembershipChanged


@dataclass(frozen=True, slots=True)
class Ready:
    """One batch of output: persist, then send, then restore/apply, then events."""

    persist: tuple[PersistRecord, ...]
    messages: tuple[tuple[str, RaftMessage], ...]
    committed: tuple[Entry, ...]
    restore: Snapshot | None
    events: tuple[Event, ...]


@dataclass(slots=True, kw_only=True)
class RaftStats:
    """Counters for metrics and tests."""

    received: int = 0
    sent: int = 0
    dropped: int = 0
    stale: int = 0
    ignored_votes: int = 0
    pre_elections: int = 0
    elections: int = 0
    elections_won: int = 0
    quorum_stepdowns: int = 0
    proposals: int = 0
    append_rejects: int = 0
    snapshots_sent: int = 0
    snapshots_installed: int = 0
    transfers_aborted: int = 0


# ---------------------------------------------------------------------------
# the node
# ---------------------------------------------------------------------------


class _PState(enum.Enum):
    PROBE = "probe"  # position unknown: one AppendEntries at a time
    REPLICATE = "replicate"  # position known: pipeline up to max_inflight
    SNAPSHOT = "snapshot"  # behind the log start: streaming a snapshot


_PROBE = _PState.PROBE
_REPLICATE = _PState.REPLICATE
_SNAPSHOT = _PState.SNAPSHOT


class _Progress:
    """The leader's view of one peer."""

    __slots__ = (
        "acked_seq",
        "active",
        "inflight",
        "match",
        "next",
        "oldest_at_tick",
        "probe_sent",
        "sent_commit",
        "snap",
        "snap_offset",
        "state",
    )

    def __init__(self, next_index: int) -> None:
        self.match = 0
        self.next = next_index
        self.state = _PROBE
        self.probe_sent = False
        self.inflight: deque[int] = deque()
        self.active = False
        self.sent_commit = 0
        self.acked_seq = 0
        self.oldest_at_tick = -1
        self.snap: Snapshot | None = None
        self.snap_offset = 0

    def become_probe(self) -> None:
        self.state = _PROBE
        self.probe_sent = False
        self.inflight.clear()
        self.snap = None

    def become_replicate(self) -> None:
        self.state = _REPLICATE
        self.next = self.match + 1
        self.inflight.clear()
        self.snap = None


class _SnapBuffer:
    """A snapshot being received chunk by chunk."""

    __slots__ = ("data", "index", "term", "total")

    def __init__(self, index: int, term: int, total: int) -> None:
        self.index = index
        self.term = term
        self.total = total
        self.data = bytearray()


_EMPTY_MEMBERSHIP = Membership(frozenset(), frozenset())


class RaftNode:
    """One Raft server.  See the module docstring for the driver contract."""

    def __init__(
        self,
        node_id: str,
        config: RaftConfig,
        *,
        rng: Random,
        now: float,
        persisted: PersistedState,
    ) -> None:
        if not node_id:
            raise LocalProtocolError("node_id must be a non-empty string")
        self.node_id = node_id
        self.config = config
        self.stats = RaftStats()
        self._rng = rng
        self._now = now

        hs = persisted.hard_state
        snap = persisted.snapshot
        self.term = hs.term
        self.voted_for = hs.voted_for
        self._snapshot: Snapshot | None = snap
        self._offset = snap.index if snap is not None else 0  # == snapshot_index
        self._snap_term = snap.term if snap is not None else 0
        self._snap_membership = snap.membership if snap is not None else _EMPTY_MEMBERSHIP
        self._log: list[Entry] = list(persisted.entries)
        self._configs: list[tuple[int, Membership]] = [
            (e.index, decode_membership(e.data)) for e in self._log if e.kind is _CONFIG
        ]
        self.membership = self._current_membership()
        self._members = self.membership.members
        self.commit_index = max(self._offset, min(hs.commit, self.last_index))
        self.applied_index = self._offset

        # persistence bookkeeping
        self._unstable_from = self.last_index + 1
        self._durable = self.last_index
        self._saved_hs = HardState(self.term, self.voted_for, self.commit_index)
        self._pending_snapshot: Snapshot | None = None
        self._restore: Snapshot | None = snap if snap is not None and snap.index > 0 else None

        # output queues
        self._outbox: list[tuple[str, RaftMessage]] = []
        self._events: list[Event] = []

        # role state
        self.role = Role.FOLLOWER
        self.leader_id: str | None = None
        self._heard_leader_at = -float("inf")
        self._election_deadline = 0.0
        self._reset_election_timer(now)
        self._votes: dict[str, bool] = {}
        self._snap_in: _SnapBuffer | None = None

        # leader state
        self._prs: dict[str, _Progress] = {}
        self._dirty = False
        self._heartbeat_deadline = 0.0
        self._quorum_deadline = 0.0
        self._transfer_target: str | None = None
        self._transfer_deadline = 0.0
        self._transfer_sent = False
        self._seq = 0
        self._hb_pending = False
        self._reads: deque[tuple[int, int, int]] = deque()  # (request_id, index, seq)
        self._reads_waiting: list[int] = []  # request ids held until a current-term commit

    # -- observation ----------------------------------------------------------

    @property
    def last_index(self) -> int:
        return self._offset + len(self._log)

    @property
    def first_index(self) -> int:
        return self._offset + 1

    @property
    def snapshot_index(self) -> int:
        return self._offset

    @property
    def snapshot(self) -> Snapshot | None:
        return self._snapshot

    @property
    def transfer_target(self) -> str | None:
        return self._transfer_target

    def log_term(self, index: int) -> int | None:
        """Term of ``index``; the snapshot's term at ``snapshot_index``; else None."""
        off = self._offset
        if index == off:
            return self._snap_term
        if off < index <= off + len(self._log):
            return self._log[index - off - 1].term
        return None

    def entry(self, index: int) -> Entry | None:
        off = self._offset
        if off < index <= off + len(self._log):
            return self._log[index - off - 1]
        return None

    def progress(self, node: str) -> tuple[int, int] | None:
        """(match, next) of a peer as the leader sees it; None when not leading it."""
        pr = self._prs.get(node)
        return None if pr is None else (pr.match, pr.next)

    # -- inputs: time ---------------------------------------------------------

    def handle_timer(self, now: float) -> None:
        self._now = now
        if self.role is Role.LEADER:
            if self._transfer_target is not None and now >= self._transfer_deadline:
                self._transfer_target = None
                self.stats.transfers_aborted += 1
            if now >= self._quorum_deadline:
                self._quorum_deadline = now + self.config.election_timeout
                if self.config.check_quorum and not self._quorum_active():
                    self.stats.quorum_stepdowns += 1
                    self._become_follower(self.term, None, now)
                    return
            if now >= self._heartbeat_deadline:
                self._heartbeat_deadline = now + self.config.heartbeat_interval
                self._heartbeat_tick()
        elif now >= self._election_deadline:
            self._reset_election_timer(now)
            if self.node_id in self.membership.voters or self._leaving_voter():
                if self.config.pre_vote:
                    self._campaign(now, pre=True, transfer=False)
                else:
                    self._campaign(now, pre=False, transfer=False)

    def next_deadline(self) -> float | None:
        if self.has_ready():
            return self._now
        if self.role is Role.LEADER:
            d = self._heartbeat_deadline
            if self.config.check_quorum:
                d = min(d, self._quorum_deadline)
            if self._transfer_target is not None:
                d = min(d, self._transfer_deadline)
            return d
        return self._election_deadline

    # -- inputs: client -------------------------------------------------------

    def _check_proposable(self) -> None:
        if self.role is not Role.LEADER:
            raise NotLeader(self.leader_id)
        if self._transfer_target is not None:
            raise NotLeader(None)

    def propose(self, data: bytes, now: float) -> int:
        self._now = now
        self._check_proposable()
        if len(data) + ENTRY_OVERHEAD > self.config.max_append_bytes:
            raise LocalProtocolError("proposal larger than max_append_bytes")
        idx = self.last_index + 1
        self._log.append(Entry(self.term, idx, _NORMAL, data))
        self.stats.proposals += 1
        self._dirty = True
        return idx

    def propose_batch(self, datas: Sequence[bytes], now: float) -> int:
        self._now = now
        self._check_proposable()
        if not datas:
            raise LocalProtocolError("empty batch")
        if max(map(len, datas)) + ENTRY_OVERHEAD > self.config.max_append_bytes:
            raise LocalProtocolError("proposal larger than max_append_bytes")
        term = self.term
        start = self.last_index + 1
        self._log.extend([Entry(term, i, _NORMAL, d) for i, d in enumerate(datas, start)])
        self.stats.proposals += len(datas)
        self._dirty = True
        return self.last_index

    def _config_change(self, new: Membership, now: float) -> int:
        self._now = now
        self._check_proposable()
        if self._configs and self._configs[-1][0] > self.commit_index:
            raise LocalProtocolError("a configuration change is already in progress")
        if not new.voters:
            raise LocalProtocolError("the configuration must keep at least one voter")
        idx = self.last_index + 1
        self._append_local([Entry(self.term, idx, _CONFIG, encode_membership(new))])
        self._dirty = True
        return idx

    def add_learner(self, node: str, now: float) -> int:
        """Add a non-voting member that receives the log; returns the entry index."""
        self._check_proposable()
        m = self.membership
        if not node or node in m.members:
            raise LocalProtocolError(f"{node!r} is already a member")
        return self._config_change(Membership(m.voters, m.learners | {node}), now)

    def promote(self, node: str, now: float) -> int:
        """Make a caught-up learner a voter; refused while it lags."""
        self._check_proposable()
        m = self.membership
        if node not in m.learners:
            raise LocalProtocolError(f"{node!r} is not a learner")
        pr = self._prs[node]
        if pr.match + self.config.promote_lag < self.last_index:
            raise LocalProtocolError(
                f"{node!r} lags: match {pr.match}, last index {self.last_index}"
            )
        return self._config_change(Membership(m.voters | {node}, m.learners - {node}), now)

    def remove(self, node: str, now: float) -> int:
        """Remove a voter or learner (the leader itself steps down once committed)."""
        self._check_proposable()
        m = self.membership
        if node not in m.members:
            raise LocalProtocolError(f"{node!r} is not a member")
        return self._config_change(Membership(m.voters - {node}, m.learners - {node}), now)

    def transfer_leadership(self, target: str, now: float) -> None:
        self._now = now
        if self.role is not Role.LEADER:
            raise NotLeader(self.leader_id)
        if target == self.node_id:
            return
        if target not in self.membership.voters:
            raise LocalProtocolError(f"{target!r} is not a voter")
        if self._transfer_target == target:
            return
        self._transfer_target = target
        self._transfer_deadline = now + self.config.election_timeout
        self._transfer_sent = False
        pr = self._prs[target]
        if pr.state is not _SNAPSHOT and pr.match < self.last_index:
            # Push the missing entries now rather than wait for a heartbeat.
            pr.next = pr.match + 1
            pr.become_probe()
        self._send_to(target, pr)
        self._maybe_send_timeout_now()

    def read_index(self, request_id: int, now: float) -> None:
        self._now = now
        if self.role is not Role.LEADER:
            raise NotLeader(self.leader_id)
        if self.log_term(self.commit_index) != self.term:
            self._reads_waiting.append(request_id)
            return
        self._register_read(request_id)

    def compact(self, index: int, data: bytes) -> None:
        """Take an application snapshot at ``index`` (applied) and drop the log before it."""
        if index <= self._offset:
            raise LocalProtocolError(f"index {index} is already compacted")
        if index > self.applied_index:
            raise LocalProtocolError(f"index {index} is not applied yet")
        term = self.log_term(index)
        assert term is not None
        snap = Snapshot(index, term, self._membership_at(index), data)
        cut = index - self._offset
        del self._log[:cut]
        self._snap_membership = snap.membership
        self._configs = [c for c in self._configs if c[0] > index]
        self._offset = index
        self._snap_term = term
        self._snapshot = snap
        self._pending_snapshot = snap
        if self._unstable_from <= index:
            self._unstable_from = index + 1

    # -- inputs: network ------------------------------------------------------

    def receive(self, msg: RaftMessage, *, src: str, now: float) -> None:
        self._now = now
        self.stats.received += 1
        t = type(msg)
        if t not in _MESSAGE_TYPES or src == self.node_id or type(src) is not str:
            self.stats.dropped += 1
            return
        members = self._members
        if (
            members
            and src not in members
            and t not in _VOTE_MESSAGES
            and not (t in _FROM_LEADER and msg.term >= self.term)
        ):
            self.stats.dropped += 1
            return

        term = msg.term
        if term > self.term:
            if t is RequestVote:
                assert isinstance(msg, RequestVote)
                if not msg.transfer and self._in_lease(now, msg.pre_vote):
                    self.stats.ignored_votes += 1
                    return
                if not msg.pre_vote:
                    self._become_follower(term, None, now)
            elif isinstance(msg, RequestVoteResponse) and msg.pre_vote and msg.granted:
                pass  # a granted pre-vote echoes the term we would campaign in
            else:
                leader = src if t in _FROM_LEADER or t is TimeoutNow else None
                self._become_follower(term, leader, now)
        elif term < self.term:
            self.stats.stale += 1
            if t is AppendEntries:
                assert isinstance(msg, AppendEntries)
                self._send(src, AppendEntriesResponse(self.term, False, msg.prev_index, 0, 0, 0))
            elif t is InstallSnapshot:
                assert isinstance(msg, InstallSnapshot)
                self._send(src, InstallSnapshotResponse(self.term, msg.index, 0, 0))
            elif t is RequestVote:
                assert isinstance(msg, RequestVote)
                self._send(src, RequestVoteResponse(self.term, False, msg.pre_vote))
            return

        if t is AppendEntries:
            assert isinstance(msg, AppendEntries)
            self._on_append(src, msg, now)
        elif t is AppendEntriesResponse:
            assert isinstance(msg, AppendEntriesResponse)
            self._on_append_response(src, msg)
        elif t is RequestVote:
            assert isinstance(msg, RequestVote)
            self._on_request_vote(src, msg, now)
        elif t is RequestVoteResponse:
            assert isinstance(msg, RequestVoteResponse)
            self._on_vote_response(src, msg, now)
        elif t is InstallSnapshot:
            assert isinstance(msg, InstallSnapshot)
            self._on_snapshot(src, msg, now)
        elif t is InstallSnapshotResponse:
            assert isinstance(msg, InstallSnapshotResponse)
            self._on_snapshot_response(src, msg)
        else:
            self._on_timeout_now(src, now)

    # -- outputs --------------------------------------------------------------

    def has_ready(self) -> bool:
        return bool(
            self._outbox
            or self._events
            or self._dirty
            or self._hb_pending
            or self._pending_snapshot is not None
            or self._restore is not None
            or self._unstable_from <= self.last_index
            or self.applied_index < self.commit_index
            or self._saved_hs.term != self.term
            or self._saved_hs.voted_for != self.voted_for
            or self._saved_hs.commit != self.commit_index
        )

    def drain(self) -> Ready:
        if self.role is Role.LEADER:
            if self._hb_pending:
                self._hb_pending = False
                for peer in self.membership.voters:
                    if peer != self.node_id:
                        self._send_heartbeat(peer, self._prs[peer])
            if self._dirty:
                self._dirty = False
                for peer, pr in self._prs.items():
                    self._send_to(peer, pr)
        self._dirty = False

        persist: list[PersistRecord] = []
        if self._pending_snapshot is not None:
            persist.append(SaveSnapshot(self._pending_snapshot))
            self._pending_snapshot = None
        last = self.last_index
        if self._unstable_from <= last:
            persist.append(AppendLog(tuple(self._log[self._unstable_from - self._offset - 1 :])))
            self._unstable_from = last + 1
        hs = self._saved_hs
        if hs.term != self.term or hs.voted_for != self.voted_for or hs.commit != self.commit_index:
            self._saved_hs = HardState(self.term, self.voted_for, self.commit_index)
            persist.append(SaveHardState(self._saved_hs))

        restore = self._restore
        self._restore = None
        if restore is not None:
            self.applied_index = max(self.applied_index, restore.index)
        committed: tuple[Entry, ...] = ()
        if self.applied_index < self.commit_index:
            off = self._offset
            committed = tuple(self._log[self.applied_index - off : self.commit_index - off])
            self.applied_index = self.commit_index

        messages = tuple(self._outbox)
        self._outbox.clear()
        events = tuple(self._events)
        self._events.clear()

        # Everything up to `last` is now in the driver's hands and will be durable
        # before any further input: the leader may count itself for it.
        self._durable = last
        if self.role is Role.LEADER:
            self._maybe_commit()
        return Ready(tuple(persist), messages, committed, restore, events)

    # -- helpers: state transitions ---------------------------------------------

    def _send(self, dst: str, msg: RaftMessage) -> None:
        self.stats.sent += 1
        self._outbox.append((dst, msg))

    def _reset_election_timer(self, now: float) -> None:
        et = self.config.election_timeout
        self._election_deadline = now + et + et * self._rng.random()

    def _set_leader(self, leader: str | None) -> None:
        if leader != self.leader_id:
            self.leader_id = leader
            self._events.append(LeaderChanged(self.term, leader))

    def _set_role(self, role: Role) -> None:
        if role is not self.role:
            self.role = role
            self._events.append(RoleChanged(role, self.term))

    def _in_lease(self, now: float, pre_vote: bool) -> bool:
        """True while this node believes a leader is alive (vote stickiness)."""
        if not pre_vote and not self.config.check_quorum:
            return False
        if self.leader_id is None:
            return False
        if self.role is Role.LEADER:
            return True
        return now - self._heard_leader_at < self.config.election_timeout

    def _become_follower(self, term: int, leader: str | None, now: float) -> None:
        was_leader = self.role is Role.LEADER
        if term != self.term:
            self.term = term
            self.voted_for = None
            if self.leader_id is not None:
                self.leader_id = None
                if leader is None:
                    self._events.append(LeaderChanged(term, None))
        self._set_role(Role.FOLLOWER)
        self._set_leader(leader)
        if leader is not None:
            self._heard_leader_at = now
        self._reset_election_timer(now)
        self._votes = {}
        if was_leader:
            self._prs = {}
            self._transfer_target = None
            self._hb_pending = False
            for rid, _, _ in self._reads:
                self._events.append(ReadFailed(rid))
            for rid in self._reads_waiting:
                self._events.append(ReadFailed(rid))
            self._reads.clear()
            self._reads_waiting = []

    def _leaving_voter(self) -> bool:
        """A voter whose own removal is in its log but not committed may still campaign.

        Membership follows the latest configuration in the log, committed or
        not.  A leader that proposed its own removal and then lost its quorum
        (check-quorum) would otherwise deadlock the cluster: it may not
        campaign (it is not in its latest configuration), and the remaining
        voters cannot win without it when its log is longer than theirs.
        Letting it campaign — counting only the votes of the latest
        configuration, its own excluded — lets it finish committing its
        removal and step down, as a leader leaving the cluster does.
        """
        if not self._configs or self._configs[-1][0] <= self.commit_index:
            return False
        return self.node_id in self._membership_at(self.commit_index).voters

    def _campaign(self, now: float, *, pre: bool, transfer: bool) -> None:
        voters = self.membership.voters
        if pre:
            self.stats.pre_elections += 1
            self._set_role(Role.PRE_CANDIDATE)
            self._set_leader(None)
            term = self.term + 1
        else:
            self.stats.elections += 1
            self.term += 1
            self.voted_for = self.node_id
            self._set_role(Role.CANDIDATE)
            self._set_leader(None)
            term = self.term
        self._reset_election_timer(now)
        self._votes = {self.node_id: True}
        if self._tally(now):
            return
        last = self.last_index
        last_term = self.log_term(last)
        assert last_term is not None
        msg = RequestVote(term, last, last_term, pre, transfer)
        for v in sorted(voters):
            if v != self.node_id:
                self._send(v, msg)

    def _tally(self, now: float) -> bool:
        """Count votes; on a decision act and return True."""
        voters = self.membership.voters
        granted = sum(1 for v, ok in self._votes.items() if ok and v in voters)
        rejected = sum(1 for v, ok in self._votes.items() if not ok and v in voters)
        q = len(voters) // 2 + 1
        if granted >= q:
            if self.role is Role.PRE_CANDIDATE:
                self._campaign(now, pre=False, transfer=False)
            else:
                self._become_leader(now)
            return True
        if rejected > len(voters) - q:
            self._become_follower(self.term, None, now)
            return True
        return False

    def _become_leader(self, now: float) -> None:
        self.stats.elections_won += 1
        self._set_role(Role.LEADER)
        self._set_leader(self.node_id)
        self._votes = {}
        self._prs = {}
        self._sync_progress()
        self._heartbeat_deadline = now + self.config.heartbeat_interval
        self._quorum_deadline = now + self.config.election_timeout
        self._transfer_target = None
        self._reads.clear()
        self._reads_waiting = []
        self._append_local([Entry(self.term, self.last_index + 1, _NOOP, b"")])
        self._dirty = True
        self._maybe_commit()

    def _sync_progress(self) -> None:
        """Track exactly the current members (leader only)."""
        members = self._members
        for n in list(self._prs):
            if n not in members:
                del self._prs[n]
                if self._transfer_target == n:
                    self._transfer_target = None
        nxt = self.last_index + 1
        for n in sorted(members):
            if n != self.node_id and n not in self._prs:
                self._prs[n] = _Progress(nxt)

    # -- helpers: the log -------------------------------------------------------

    def _current_membership(self) -> Membership:
        return self._configs[-1][1] if self._configs else self._snap_membership

    def _membership_at(self, index: int) -> Membership:
        m = self._snap_membership
        for i, c in self._configs:
            if i > index:
                break
            m = c
        return m

    def _membership_updated(self) -> None:
        m = self._current_membership()
        if m != self.membership:
            self.membership = m
            self._members = m.members
            self._events.append(MembershipChanged(m))
            if self.role is Role.LEADER:
                self._sync_progress()

    def _append_local(self, entries: Sequence[Entry]) -> None:
        self._log.extend(entries)
        changed = False
        for e in entries:
            if e.kind is _CONFIG:
                self._configs.append((e.index, decode_membership(e.data)))
                changed = True
        if changed:
            self._membership_updated()

    def _truncate(self, index: int) -> None:
        """Drop entries from ``index`` on (never committed ones)."""
        del self._log[index - self._offset - 1 :]
        self._unstable_from = min(self._unstable_from, index)
        self._durable = min(self._durable, index - 1)
        if self._configs and self._configs[-1][0] >= index:
            self._configs = [c for c in self._configs if c[0] < index]
            self._membership_updated()

    def _up_to_date(self, last_term: int, last_index: int) -> bool:
        my_last = self.last_index
        my_term = self.log_term(my_last)
        assert my_term is not None
        return last_term > my_term or (last_term == my_term and last_index >= my_last)

    # -- handlers: elections ----------------------------------------------------

    def _on_request_vote(self, src: str, m: RequestVote, now: float) -> None:
        if m.pre_vote:
            can = (
                m.term > self.term
                or self.voted_for == src
                or (self.voted_for is None and self.leader_id is None)
            )
        else:
            can = self.voted_for == src or (self.voted_for is None and self.leader_id is None)
        if can and self._up_to_date(m.last_log_term, m.last_log_index):
            if not m.pre_vote:
                self.voted_for = src
                self._reset_election_timer(now)
            self._send(src, RequestVoteResponse(m.term, True, m.pre_vote))
        else:
            self._send(src, RequestVoteResponse(self.term, False, m.pre_vote))

    def _on_vote_response(self, src: str, m: RequestVoteResponse, now: float) -> None:
        if m.pre_vote:
            if self.role is not Role.PRE_CANDIDATE:
                return
            if m.granted and m.term != self.term + 1:
                return
        elif self.role is not Role.CANDIDATE:
            return
        if src in self._votes:
            return
        self._votes[src] = m.granted
        self._tally(now)

    def _on_timeout_now(self, src: str, now: float) -> None:
        if (
            self.role is Role.LEADER
            or src != self.leader_id
            or self.node_id not in self.membership.voters
        ):
            return
        self._campaign(now, pre=False, transfer=True)

    # -- handlers: replication (follower side) --------------------------------

    def _accept_leader(self, src: str, now: float) -> bool:
        if self.role is Role.LEADER:
            # Two leaders in one term cannot happen; a peer claiming it is broken.
            self.stats.dropped += 1
            return False
        if self.role is not Role.FOLLOWER:
            self._become_follower(self.term, src, now)
        else:
            self._set_leader(src)
            self._reset_election_timer(now)
        self._heard_leader_at = now
        return True

    def _on_append(self, src: str, m: AppendEntries, now: float) -> None:
        if not self._accept_leader(src, now):
            return
        prev = m.prev_index
        prev_term = m.prev_term
        entries = m.entries
        last_new = prev + len(entries)
        commit = self.commit_index
        if prev < commit:
            # Everything up to our commit index matches any current leader's log.
            if last_new <= commit:
                self._send(src, AppendEntriesResponse(self.term, True, commit, 0, 0, m.seq))
                return
            entries = entries[commit - prev :]
            prev = commit
            t = self.log_term(commit)
            assert t is not None
            prev_term = t
        last = self.last_index
        if prev > last:
            self.stats.append_rejects += 1
            self._send(
                src, AppendEntriesResponse(self.term, False, m.prev_index, 0, last + 1, m.seq)
            )
            return
        my_term = self.log_term(prev)
        assert my_term is not None
        if my_term != prev_term:
            self.stats.append_rejects += 1
            lo = max(commit, self._offset) + 1
            i = prev
            while i > lo and self.log_term(i - 1) == my_term:
                i -= 1
            self._send(
                src, AppendEntriesResponse(self.term, False, m.prev_index, my_term, i, m.seq)
            )
            return
        if entries:
            if prev == last:
                self._append_local(entries)
            else:
                off = self._offset
                log = self._log
                k = 0
                n = len(entries)
                while k < n:
                    idx = prev + 1 + k
                    if idx > last or log[idx - off - 1].term != entries[k].term:
                        break
                    k += 1
                if k < n:
                    if prev + 1 + k <= last:
                        self._truncate(prev + 1 + k)
                    self._append_local(entries[k:])
        new_commit = min(m.commit, last_new)
        self.commit_index = max(self.commit_index, new_commit)
        self._send(src, AppendEntriesResponse(self.term, True, last_new, 0, 0, m.seq))

    def _on_snapshot(self, src: str, m: InstallSnapshot, now: float) -> None:
        if not self._accept_leader(src, now):
            return
        if m.index <= self.commit_index:
            self._snap_in = None
            self._send(src, InstallSnapshotResponse(self.term, m.index, m.total, self.commit_index))
            return
        buf = self._snap_in
        if buf is None or (buf.index, buf.term, buf.total) != (m.index, m.snapshot_term, m.total):
            if m.offset != 0:
                self._snap_in = None
                self._send(src, InstallSnapshotResponse(self.term, m.index, 0, 0))
                return
            buf = self._snap_in = _SnapBuffer(m.index, m.snapshot_term, m.total)
        if m.offset != len(buf.data):
            self._send(src, InstallSnapshotResponse(self.term, m.index, len(buf.data), 0))
            return
        buf.data += m.data
        if len(buf.data) < buf.total:
            self._send(src, InstallSnapshotResponse(self.term, m.index, len(buf.data), 0))
            return
        self._snap_in = None
        self._install(Snapshot(m.index, m.snapshot_term, m.membership, bytes(buf.data)))
        self._send(src, InstallSnapshotResponse(self.term, m.index, m.total, m.index))

    def _install(self, snap: Snapshot) -> None:
        self.stats.snapshots_installed += 1
        if self.log_term(snap.index) == snap.term:
            # We hold the entry the snapshot ends with: the log stays, only commit moves.
            self.commit_index = max(self.commit_index, snap.index)
            return
        self._log = []
        self._offset = snap.index
        self._snap_term = snap.term
        self._snapshot = snap
        self._snap_membership = snap.membership
        self._configs = []
        self.commit_index = snap.index
        self._pending_snapshot = snap
        self._restore = snap
        self._unstable_from = snap.index + 1
        self._durable = 0
        self._membership_updated()

    # -- handlers and helpers: replication (leader side) ----------------------

    def _entries_for(self, start: int) -> tuple[Entry, ...]:
        """A batch starting at ``start``, bounded by max_append_bytes (>= 1 entry)."""
        log = self._log
        lo = start - self._offset - 1
        hi = len(log)
        if lo >= hi:
            return ()
        budget = self.config.max_append_bytes
        size = 0
        i = lo
        while i < hi:
            size += len(log[i].data) + ENTRY_OVERHEAD
            if size > budget and i > lo:
                break
            i += 1
        return tuple(log[lo:i])

    def _send_to(self, peer: str, pr: _Progress) -> None:
        """Send whatever the peer's flow-control state allows, plus the commit index."""
        while self._send_append(peer, pr):
            pass
        if (
            pr.state is not _SNAPSHOT
            and min(self.commit_index, max(pr.match, self._offset)) > pr.sent_commit
        ):
            self._send_heartbeat(peer, pr)

    def _send_append(self, peer: str, pr: _Progress) -> bool:
        state = pr.state
        if state is _SNAPSHOT:
            return False
        if state is _PROBE:
            if pr.probe_sent:
                return False
        elif len(pr.inflight) >= self.config.max_inflight:
            return False
        prev = pr.next - 1
        prev_term = self.log_term(prev)
        if prev_term is None:
            self._start_snapshot(peer, pr)
            return False
        entries = self._entries_for(pr.next)
        if not entries and (state is _REPLICATE or pr.match >= prev):
            return False  # nothing to send and nothing to learn
        self._send(
            peer, AppendEntries(self.term, prev, prev_term, self.commit_index, entries, self._seq)
        )
        pr.sent_commit = min(self.commit_index, prev + len(entries))
        if state is _PROBE:
            pr.probe_sent = True
            return False
        pr.next = entries[-1].index + 1
        pr.inflight.append(pr.next - 1)
        return True

    def _send_heartbeat(self, peer: str, pr: _Progress) -> None:
        if pr.state is _SNAPSHOT:
            self._send_snapshot_chunk(peer, pr)
            return
        prev = max(pr.match, self._offset)
        prev_term = self.log_term(prev)
        assert prev_term is not None
        self._send(
            peer, AppendEntries(self.term, prev, prev_term, self.commit_index, (), self._seq)
        )
        # The follower can only commit what it is known to hold.
        pr.sent_commit = min(self.commit_index, prev)

    def _heartbeat_tick(self) -> None:
        for peer, pr in self._prs.items():
            if pr.state is _SNAPSHOT:
                self._send_snapshot_chunk(peer, pr)
            elif pr.state is _PROBE:
                pr.probe_sent = False
                if not self._send_append(peer, pr) and pr.state is _PROBE and not pr.probe_sent:
                    self._send_heartbeat(peer, pr)
            elif pr.inflight and pr.inflight[0] == pr.oldest_at_tick:
                # The oldest AppendEntries stayed unacknowledged for a whole
                # interval: it (or its reply) was lost; probe from the match.
                pr.next = pr.match + 1
                pr.become_probe()
                self._send_to(peer, pr)
            else:
                self._send_heartbeat(peer, pr)
                self._send_to(peer, pr)
            pr.oldest_at_tick = pr.inflight[0] if pr.inflight else -1

    def _start_snapshot(self, peer: str, pr: _Progress) -> None:
        snap = self._snapshot
        assert snap is not None and snap.index > 0
        self.stats.snapshots_sent += 1
        pr.state = _SNAPSHOT
        pr.inflight.clear()
        pr.snap = snap
        pr.snap_offset = 0
        self._send_snapshot_chunk(peer, pr)

    def _send_snapshot_chunk(self, peer: str, pr: _Progress) -> None:
        snap = pr.snap
        assert snap is not None
        off = pr.snap_offset
        chunk = snap.data[off : off + self.config.snapshot_chunk_bytes]
        self._send(
            peer,
            InstallSnapshot(
                self.term, snap.index, snap.term, snap.membership, off, len(snap.data), chunk
            ),
        )

    def _on_snapshot_response(self, src: str, m: InstallSnapshotResponse) -> None:
        if self.role is not Role.LEADER:
            return
        pr = self._prs.get(src)
        if pr is None:
            return
        pr.active = True
        if m.match_index > self.last_index:
            self.stats.dropped += 1  # claims entries we never had
            return
        if m.match_index > pr.match:
            pr.match = m.match_index
            if pr.next <= pr.match:
                pr.next = pr.match + 1
            if pr.state is _SNAPSHOT:
                pr.become_replicate()
            self._maybe_commit()
            if not self._leading():
                return
            self._send_to(src, pr)
            self._maybe_send_timeout_now()
            return
        snap = pr.snap
        if pr.state is not _SNAPSHOT or snap is None or m.index != snap.index:
            return
        if m.match_index >= snap.index:
            pr.become_replicate()
            self._send_to(src, pr)
            return
        if m.next_offset != pr.snap_offset and m.next_offset <= len(snap.data):
            pr.snap_offset = m.next_offset
            self._send_snapshot_chunk(src, pr)

    def _on_append_response(self, src: str, m: AppendEntriesResponse) -> None:
        if self.role is not Role.LEADER:
            return
        pr = self._prs.get(src)
        if pr is None:
            return
        pr.active = True
        if m.seq > pr.acked_seq:
            pr.acked_seq = m.seq
            if self._reads:
                self._advance_reads()
        if m.success:
            idx = m.index
            if idx > self.last_index:
                self.stats.dropped += 1  # acknowledges entries we never had
                return
            if idx > pr.match:
                pr.match = idx
                if pr.next <= idx:
                    pr.next = idx + 1
                if pr.state is _PROBE:
                    pr.become_replicate()
                elif pr.state is _SNAPSHOT:
                    pr.become_probe()
                inflight = pr.inflight
                while inflight and inflight[0] <= idx:
                    inflight.popleft()
                self._maybe_commit()
                if not self._leading():
                    return  # our own removal committed
                self._maybe_send_timeout_now()
            elif pr.state is _PROBE:
                pr.probe_sent = False
            self._send_to(src, pr)
            return
        # rejection
        rejected = m.index
        if pr.state is _REPLICATE:
            if rejected <= pr.match:
                return  # stale
        elif pr.state is _PROBE:
            if rejected != pr.next - 1:
                return  # stale
        else:
            return
        nxt = m.conflict_index
        if m.conflict_term > 0:
            i = min(rejected, self.last_index)
            while i > self._offset:
                t = self.log_term(i)
                assert t is not None
                if t <= m.conflict_term:
                    break
                i -= 1
            if i > self._offset and self.log_term(i) == m.conflict_term:
                nxt = i + 1
        # Never below what is known to match, never beyond our log (whatever the hint says).
        pr.next = max(pr.match + 1, min(nxt, rejected, self.last_index + 1))
        pr.become_probe()
        self._send_to(src, pr)

    def _maybe_commit(self) -> None:
        voters = self.membership.voters
        me = self.node_id
        prs = self._prs
        matches = sorted((self._durable if v == me else prs[v].match for v in voters), reverse=True)
        q = len(voters) // 2 + 1
        idx = matches[q - 1]
        if idx <= self.commit_index or self.log_term(idx) != self.term:
            return
        self.commit_index = idx
        self._dirty = True
        if self._reads_waiting:
            waiting = self._reads_waiting
            self._reads_waiting = []
            for rid in waiting:
                self._register_read(rid)
        if me not in voters and self._configs and self._configs[-1][0] <= idx:
            # Our own removal is committed: tell the others, then step down.
            for peer, pr in self._prs.items():
                self._send_to(peer, pr)
            self._become_follower(self.term, None, self._now)

    def _leading(self) -> bool:
        return self.role is Role.LEADER

    def _maybe_send_timeout_now(self) -> None:
        target = self._transfer_target
        if target is None or self._transfer_sent:
            return
        pr = self._prs.get(target)
        if pr is not None and pr.match == self.last_index:
            self._transfer_sent = True
            self._send(target, TimeoutNow(self.term))

    def _quorum_active(self) -> bool:
        voters = self.membership.voters
        me = self.node_id
        active = 0
        for v in voters:
            if v == me:
                active += 1
            else:
                pr = self._prs[v]
                if pr.active:
                    active += 1
        for pr in self._prs.values():
            pr.active = False
        return active >= len(voters) // 2 + 1

    def _register_read(self, request_id: int) -> None:
        voters = self.membership.voters
        if voters == {self.node_id}:
            self._events.append(ReadReady(request_id, self.commit_index))
            return
        if not self._hb_pending:
            self._seq += 1
            self._hb_pending = True
        self._reads.append((request_id, self.commit_index, self._seq))

    def _advance_reads(self) -> None:
        voters = self.membership.voters
        me = self.node_id
        acked = sorted(
            (self._seq if v == me else self._prs[v].acked_seq for v in voters), reverse=True
        )
        confirmed = acked[len(voters) // 2]
        reads = self._reads
        while reads and reads[0][2] <= confirmed:
            rid, index, _ = reads.popleft()
            self._events.append(ReadReady(rid, index))


_MESSAGE_TYPES: frozenset[type] = frozenset(
    {
        RequestVote,
        RequestVoteResponse,
        AppendEntries,
        AppendEntriesResponse,
        InstallSnapshot,
        InstallSnapshotResponse,
        TimeoutNow,
    }
)
_FROM_LEADER: frozenset[type] = frozenset({AppendEntries, InstallSnapshot})
#: Votes are answered whoever asks.  Two nodes can hold different latest
#: configurations (one has an uncommitted change the other lacks), so a
#: candidate may be outside the voter's configuration and still be the only
#: one that can win; ignoring it deadlocked elections.  Only the votes of the
#: candidate's own voters are counted, and the leader lease refuses a removed
#: node's votes while the cluster has a leader.
_VOTE_MESSAGES: frozenset[type] = frozenset({RequestVote, RequestVoteResponse})
