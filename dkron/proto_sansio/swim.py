"""SWIM membership and failure detection with Lifeguard, as a sans-IO core.

This is memberlist's behaviour with Serf's member statuses on top, as one pure
state machine.  The caller feeds it datagrams (:meth:`SwimNode.receive`),
stream bodies (:meth:`SwimNode.receive_stream`,
:meth:`SwimNode.receive_stream_reply`) and the clock
(:meth:`SwimNode.handle_timer`), and carries out the ordered actions returned
by :meth:`SwimNode.drain`.  The core encodes every datagram itself, so the
1,400-byte UDP limit is enforced here and not left to the adapter.

Two layers of state per member, as in Serf over memberlist:

* the failure detector's :class:`NodeState` (alive, suspect, dead, left) and
  an incarnation number.  Within one incarnation a member only moves forward
  along alive -> suspect -> dead -> left (see ``_LEGAL``); only a higher
  incarnation moves it back to alive, and only the member itself issues one
  (refutation);
* Serf's :class:`MemberStatus` (alive, leaving, left, failed), which is what
  the agent acts on: the Raft leader removes a server that has *left*, never
  one that merely *failed*.  A member that announced a leave intent and then
  goes silent is therefore ``left``, not ``failed``.

Lifeguard (Dadgar et al., 2018) is on by default: the local health multiplier
stretches probe intervals and timeouts when this node itself seems slow
(missed nacks), the suspicion timeout starts long and shrinks with
independent confirmations, and a suspicion is piggybacked on the probe to the
suspect (buddy system) so it can refute at once.
"""

from __future__ import annotations

import bisect
import dataclasses
import enum
import heapq
import itertools
import math
import operator
import random
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import cbor2

from dkron.proto_sansio.errors import LocalProtocolError, RemoteProtocolError
from dkron.proto_sansio.swim_wire import (
    ENCRYPTION_OVERHEAD,
    NONCE_SIZE,
    Ack,
    Alive,
    Dead,
    IndirectPing,
    Keyring,
    KnownLayout,
    LeaveIntent,
    Nack,
    PacketItems,
    Ping,
    PushNodeState,
    PushPull,
    Suspect,
    UserEventMessage,
    WireState,
    decode_packet_items,
    decode_stream,
    encode_message,
    encode_packet,
    encode_push_pull_layout,
    encode_push_pull_state,
    frame_body,
    pack_ack,
    pack_message,
    pack_ping,
)
from dkron.proto_sansio.wire import slot_maker

__all__ = [
    "LAN",
    "LOCAL",
    "WAN",
    "Address",
    "BootstrapMemo",
    "EventKind",
    "JoinResult",
    "LeaveComplete",
    "Member",
    "MemberEvent",
    "MemberHealth",
    "MemberStatus",
    "NodeState",
    "ProbeFallback",
    "SendPacket",
    "SendStream",
    "StateChange",
    "SwimAction",
    "SwimConfig",
    "SwimNode",
    "UserEvent",
    "convergence_bound",
    "detection_bound",
    "push_pull_interval",
    "retransmit_limit",
    "suspicion_timeouts",
]

Address = tuple[str, int]


# -- configuration ------------------------------------------------------------


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class SwimConfig:
    """Timing and sizing of the protocol; :data:`LAN` equals memberlist's defaults.

    Serf-level timers (reconnect, reaping, leave propagation) sit next to
    memberlist's because one core implements both layers.
    """

    probe_interval: float = 1.0
    probe_timeout: float = 0.5
    suspicion_mult: int = 4
    suspicion_max_timeout_mult: int = 6
    indirect_checks: int = 3
    gossip_interval: float = 0.2
    gossip_nodes: int = 3
    gossip_to_the_dead: float = 30.0
    retransmit_mult: int = 4
    push_pull_interval: float = 30.0
    awareness_max_multiplier: int = 8
    lifeguard: bool = True
    tcp_fallback: bool = True
    tcp_timeout: float = 10.0
    reconnect_interval: float = 30.0
    reconnect_timeout: float = 24 * 3600.0
    tombstone_timeout: float = 24 * 3600.0
    reap_interval: float = 15.0
    leave_broadcast_timeout: float = 5.0
    dead_node_reclaim_time: float = 0.0
    max_packet_size: int = 1400
    max_tags_size: int = 512
    user_event_size_limit: int = 512
    event_buffer_size: int = 512
    max_events_per_ltime: int = 64
    max_broadcast_queue: int = 4096

    def __post_init__(self) -> None:
        positive = (
            "probe_interval",
            "probe_timeout",
            "gossip_interval",
            "push_pull_interval",
            "tcp_timeout",
            "reconnect_interval",
            "reap_interval",
            "leave_broadcast_timeout",
        )
        for name in positive:
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be positive")
        if self.probe_timeout > self.probe_interval:
            raise ValueError("probe_timeout must not exceed probe_interval")
        for name in (
            "suspicion_mult",
            "suspicion_max_timeout_mult",
            "retransmit_mult",
            "awareness_max_multiplier",
            "gossip_nodes",
            "event_buffer_size",
            "max_events_per_ltime",
        ):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1")
        if self.indirect_checks < 0:
            raise ValueError("indirect_checks must not be negative")
        if not 256 <= self.max_packet_size <= 1400:
            raise ValueError("max_packet_size must be within 256..1400 bytes")
        if self.reconnect_timeout <= 0 or self.tombstone_timeout <= 0:
            raise ValueError("reap timeouts must be positive")
        if self.max_broadcast_queue < 16:
            raise ValueError("max_broadcast_queue must be at least 16")


#: memberlist's DefaultLANConfig with Serf's reconnect/tombstone defaults.
LAN = SwimConfig()

#: memberlist's DefaultWANConfig.
WAN = SwimConfig(
    probe_interval=5.0,
    probe_timeout=3.0,
    suspicion_mult=6,
    gossip_interval=0.5,
    gossip_nodes=4,
    gossip_to_the_dead=60.0,
    push_pull_interval=60.0,
    tcp_timeout=30.0,
)

#: Five times faster than LAN, for tests and simulations in virtual time.
LOCAL = SwimConfig(
    probe_interval=0.2,
    probe_timeout=0.1,
    gossip_interval=0.04,
    gossip_to_the_dead=6.0,
    push_pull_interval=6.0,
    tcp_timeout=2.0,
    reconnect_interval=6.0,
    reconnect_timeout=120.0,
    tombstone_timeout=120.0,
    reap_interval=3.0,
    leave_broadcast_timeout=1.0,
)


def suspicion_timeouts(config: SwimConfig, n: int) -> tuple[float, float]:
    """memberlist's suspicion timeout bounds: ``mult * max(1, log10 n) * interval``, times 6."""
    scale = max(1.0, math.log10(max(1.0, float(n))))
    low = config.suspicion_mult * scale * config.probe_interval
    if not config.lifeguard:
        return low, low
    return low, low * config.suspicion_max_timeout_mult


def retransmit_limit(config: SwimConfig, n: int) -> int:
    """How many packets carry one broadcast: ``retransmit_mult * ceil(log10(n + 1))``."""
    return config.retransmit_mult * max(1, math.ceil(math.log10(n + 1)))


def push_pull_interval(config: SwimConfig, n: int) -> float:
    """memberlist's pushPullScale: back off above 32 members so TCP load stays flat."""
    if n <= 32:
        return config.push_pull_interval
    mult = math.ceil(math.log2(n) - math.log2(32)) + 1.0
    return config.push_pull_interval * mult


def detection_bound(config: SwimConfig, n: int) -> float:
    """Crash -> ``failed`` at every live member, on a loss-free network.

    Every live member probes every other live member once per shuffled round
    of ``n - 1`` probes, so it probes the crashed member within ``2(n-1)+1``
    (possibly stretched) probe periods even across a reshuffle; a failed probe
    starts its own suspicion, which expires within the maximum suspicion
    timeout.  Gossip from other members only makes it sooner.
    """
    mult = config.awareness_max_multiplier if config.lifeguard else 1
    rounds = 2 * max(1, n - 1) + 1
    _, high = suspicion_timeouts(config, n)
    return rounds * config.probe_interval * mult + high + config.probe_interval


def convergence_bound(config: SwimConfig, n: int) -> float:
    """Healed partition -> everybody alive everywhere (two halves, loss-free).

    With as many failed members as live ones each member retries one failed
    member per reconnect interval; that push-pull makes both ends refute and
    their new incarnations cross over by gossip.  A member nobody picked
    learns it is thought dead at its own retry or at a periodic push-pull, so
    the bound allows two reconnect rounds and one push-pull period, plus the
    suspicion a stale dead record turns into on the far side.
    """
    _, high = suspicion_timeouts(config, n)
    return 2 * config.reconnect_interval + push_pull_interval(config, n) + high


# -- public state and actions ---------------------------------------------------


class NodeState(enum.Enum):
    """The failure detector's view of a member (memberlist's states)."""

    ALIVE = "alive"
    SUSPECT = "suspect"
    DEAD = "dead"
    LEFT = "left"

    # Enum's own hash runs in Python (it hashes the name); a gossip storm
    # looks states up in dicts and sets a few hundred thousand times per
    # simulated second.  Members are singletons compared by identity, so
    # the identity hash agrees with equality.
    __hash__ = object.__hash__


class MemberStatus(enum.IntEnum):
    """Serf's statuses, with the integer codes Dkron's ``/v1/members`` reports."""

    NONE = 0
    ALIVE = 1
    LEAVING = 2
    LEFT = 3
    FAILED = 4


class MemberHealth(enum.Enum):
    """What one member believes about another: Serf's status plus memberlist's suspicion."""

    NONE = "none"
    ALIVE = "alive"
    SUSPECT = "suspect"
    LEAVING = "leaving"
    FAILED = "failed"
    LEFT = "left"

    __hash__ = object.__hash__  # as NodeState's


# Members as module constants for the hot paths: in CPython 3.11 ``NodeState.ALIVE``
# is an attribute lookup through the enum's metaclass (about 80 ns), a module
# global about 5 ns, and a gossip storm names states millions of times.
_ALIVE, _SUSPECT, _DEAD, _LEFT = NodeState.ALIVE, NodeState.SUSPECT, NodeState.DEAD, NodeState.LEFT
_H_NONE = MemberHealth.NONE
_H_ALIVE = MemberHealth.ALIVE
_H_SUSPECT = MemberHealth.SUSPECT
_H_LEAVING = MemberHealth.LEAVING
_H_FAILED = MemberHealth.FAILED
_H_LEFT = MemberHealth.LEFT


class EventKind(enum.Enum):
    JOIN = "member-join"
    LEAVE = "member-leave"
    FAILED = "member-failed"
    UPDATE = "member-update"
    REAP = "member-reap"


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class Member:
    name: str
    addr: str
    port: int
    tags: Mapping[str, str]
    status: MemberStatus
    suspect: bool
    incarnation: int


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class SendPacket:
    """Send one UDP datagram (already sealed and at most ``max_packet_size`` bytes)."""

    addr: Address
    data: bytes


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class SendStream:
    """Open a TCP stream to ``addr``, send ``data`` as one frame, read one reply frame.

    Feed the reply to :meth:`SwimNode.receive_stream_reply` or report
    :meth:`SwimNode.stream_failed`.
    """

    addr: Address
    stream_id: int
    data: bytes


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class ProbeFallback:
    """memberlist's TCP ping: handled like :class:`SendStream`, may be skipped."""

    addr: Address
    stream_id: int
    data: bytes
    target: str


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class MemberEvent:
    kind: EventKind
    member: Member


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class UserEvent:
    ltime: int
    name: str
    payload: bytes


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class StateChange:
    """Every change of this node's view of ``subject``, for traces and statistics."""

    subject: str
    old: MemberHealth
    new: MemberHealth
    incarnation: int


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class JoinResult:
    """All seed push-pulls of a :meth:`SwimNode.join` have finished."""

    contacted: int
    failed: int


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class LeaveComplete:
    """The leave has been disseminated; the adapter may close the sockets."""

    name: str


# The actions built on every datagram and every state change (see slot_maker).
# (addr, data)
_send_packet: Callable[[Address, bytes], SendPacket] = slot_maker(SendPacket)
# (subject, old, new, incarnation)
_state_change: Callable[[str, MemberHealth, MemberHealth, int], StateChange] = slot_maker(
    StateChange
)


SwimAction = (
    SendPacket
    | SendStream
    | ProbeFallback
    | MemberEvent
    | UserEvent
    | StateChange
    | JoinResult
    | LeaveComplete
)


# -- internal state -----------------------------------------------------------

# Forward moves allowed without a new incarnation; everything else needs a higher one.
_LEGAL: dict[NodeState, frozenset[NodeState]] = {
    _ALIVE: frozenset({_SUSPECT, _DEAD, _LEFT}),
    _SUSPECT: frozenset({_DEAD, _LEFT}),
    _DEAD: frozenset({_LEFT}),
    _LEFT: frozenset(),
}

_LIVE = (_ALIVE, _SUSPECT)
_GONE = (_DEAD, _LEFT)

_TO_WIRE = {
    _ALIVE: int(WireState.ALIVE),
    _SUSPECT: int(WireState.SUSPECT),
    _DEAD: int(WireState.DEAD),
    _LEFT: int(WireState.LEFT),
}

_NAME = operator.attrgetter("name")
_ADDR = operator.attrgetter("addr")
_PORT = operator.attrgetter("port")
_TAGS = operator.attrgetter("tags")
_INC = operator.attrgetter("incarnation")
_WIRE = operator.attrgetter("wire")
_LEAVING = operator.attrgetter("leaving")

_WIRE_ALIVE = int(WireState.ALIVE)
_WIRE_LEFT = int(WireState.LEFT)
_WIRE_SUSPECT = int(WireState.SUSPECT)

_STATUS = {
    _H_NONE: MemberStatus.NONE,
    _H_ALIVE: MemberStatus.ALIVE,
    _H_SUSPECT: MemberStatus.ALIVE,
    _H_LEAVING: MemberStatus.LEAVING,
    _H_FAILED: MemberStatus.FAILED,
    _H_LEFT: MemberStatus.LEFT,
}

_UP = frozenset({_H_ALIVE, _H_SUSPECT, _H_LEAVING})
_DOWN = frozenset({_H_NONE, _H_FAILED, _H_LEFT})


class _Node:
    __slots__ = (
        "addr",
        "incarnation",
        "leaving",
        "name",
        "port",
        "shared",
        "state",
        "state_change",
        "tags",
        "wire",
    )

    def __init__(  # noqa: PLR0917 -- positional so that map() builds a thousand at once
        self, name: str, addr: str, port: int, tags: dict[str, str], incarnation: int, now: float
    ) -> None:
        self.name = name
        self.addr = addr
        self.port = port
        self.tags = tags
        self.incarnation = incarnation
        self.state = _ALIVE
        # The state's wire code, kept next to it: push-pull encodes a whole
        # column of them and an enum hashes in Python.
        self.wire = _WIRE_ALIVE
        self.leaving = False
        self.state_change = now
        # Held by every node of a BootstrapMemo: copied before any change.
        self.shared = False

    @property
    def address(self) -> Address:
        return (self.addr, self.port)

    def health(self) -> MemberHealth:
        state = self.state
        if state is _ALIVE:
            return _H_LEAVING if self.leaving else _H_ALIVE
        if state is _SUSPECT:
            return _H_LEAVING if self.leaving else _H_SUSPECT
        if state is _DEAD:
            return _H_LEFT if self.leaving else _H_FAILED
        return _H_LEFT


class BootstrapMemo:
    """Lets the nodes of one process (a simulation) share the records of one bootstrap.

    A thousand simulated members that each restore the same thousand-member
    table hold a million records, equal until a member's view changes: the
    tables no longer fit in any cache, and building them is a tenth of a
    lossless run.  With a memo the nodes hold one record per member between
    them.  A node copies a shared record into its own table before it first
    changes it (:meth:`SwimNode._own`), so what each node does is exactly
    what it does with private records.  The agent passes none.

    The memo serves the one ``states`` list it was first given (by identity,
    at one instant); the caller must not change that list while nodes share
    it.  Another list or instant replaces it.
    """

    __slots__ = ("_now", "_states", "_table")

    def __init__(self) -> None:
        self._states: object = None
        self._now = 0.0
        self._table: dict[str, _Node] = {}

    def table(self, states: Sequence[PushNodeState], now: float) -> dict[str, _Node]:
        """The shared records of ``states``' live rows; a repeated name keeps its first row."""
        if states is not self._states or now != self._now:
            table = _records(states, now, {})
            for node in table.values():
                node.shared = True
            self._states, self._now, self._table = states, now, table
        return self._table


def _records(
    states: Sequence[PushNodeState], now: float, known: Mapping[str, object]
) -> dict[str, _Node]:
    """Records of the live rows not in ``known``, built at C speed by ``map``;
    a repeated name keeps its first row, as one at a time would."""
    gone = (WireState.DEAD, WireState.LEFT)
    fresh = [st for st in states if st.state not in gone and st.name not in known]
    names = [st.name for st in fresh]
    nodes = list(
        map(
            _Node,
            names,
            map(_ADDR, fresh),
            map(_PORT, fresh),
            map(_TAGS, fresh),
            map(_INC, fresh),
            itertools.repeat(now, len(fresh)),
        )
    )
    added = dict(zip(names, nodes, strict=True))
    if len(added) < len(names):
        added = {}
        for name, node in zip(names, nodes, strict=True):
            added.setdefault(name, node)
    return added


class _Probe:
    __slots__ = ("acked", "expected_nacks", "incarnation", "indirect", "nacks", "seq", "target")

    def __init__(self, seq: int, target: str, incarnation: int) -> None:
        self.seq = seq
        self.target = target
        self.incarnation = incarnation
        self.acked = False
        self.indirect = False
        self.nacks = 0
        self.expected_nacks = 0


class _Relay:
    __slots__ = ("nack", "origin", "origin_seq")

    def __init__(self, origin: Address, origin_seq: int, nack: bool) -> None:
        self.origin = origin
        self.origin_seq = origin_seq
        self.nack = nack


class _Suspicion:
    """Lifeguard's dynamic suspicion timer for one member."""

    __slots__ = ("armed", "confirmers", "high", "incarnation", "k", "low", "start")

    def __init__(
        self, incarnation: int, sender: str, k: int, *, low: float, high: float, start: float
    ) -> None:
        self.incarnation = incarnation
        self.k = k
        self.low = low
        self.high = high
        self.start = start
        self.confirmers = {sender}
        # The earliest deadline already in the timer heap: confirmations only
        # ever bring the deadline forward, so an equal one needs no new entry.
        self.armed = math.inf

    def deadline(self) -> float:
        if self.k < 1:
            return self.start + self.low
        c = len(self.confirmers) - 1
        frac = math.log(c + 1.0) / math.log(self.k + 1.0)
        raw = self.high - frac * (self.high - self.low)
        timeout = max(math.floor(1000.0 * raw) / 1000.0, self.low)
        return self.start + timeout


class _Broadcast:
    """A queued message.

    Its transmit count is not stored but derived, ``rounds - base`` (see
    :meth:`SwimNode._take_broadcasts`): a packet that takes the whole queue
    then costs one increment instead of one per message.
    """

    __slots__ = ("base", "data", "key", "order")

    def __init__(self, key: object, data: bytes, order: int, base: int) -> None:
        self.key = key
        self.data = data
        self.order = order
        self.base = base


_PRIVATE_CACHE = 512
_SHARED_CACHE = 1 << 16
# Encoded layouts a shared memo keeps per member list (and member lists in all).
_SHARED_LAYOUTS = 8

# At most this many broadcasts ride in one packet (the array header allows 255).
_MAX_PIGGYBACK = 250
_DATA = operator.attrgetter("data")


def _queue_rank(b: _Broadcast) -> tuple[int, int]:
    """Queue order, ascending: fewest transmits (highest base) first, then newest."""
    return (-b.base, -b.order)


class _StreamKind(enum.Enum):
    PUSH_PULL = "push-pull"
    JOIN = "join"
    FALLBACK = "fallback"


class _Stream:
    __slots__ = ("kind", "seq")

    def __init__(self, kind: _StreamKind, seq: int) -> None:
        self.kind = kind
        self.seq = seq


class _T(enum.IntEnum):
    PROBE = 0
    RELAY = 2
    GOSSIP = 3
    SUSPICION = 4
    PUSH_PULL = 5
    RECONNECT = 6
    REAP = 7
    STREAM = 8
    LEAVE = 9


# As the states above: timer kinds as module constants.
_T_PROBE = _T.PROBE
_T_RELAY = _T.RELAY
_T_GOSSIP = _T.GOSSIP
_T_SUSPICION = _T.SUSPICION
_T_PUSH_PULL = _T.PUSH_PULL
_T_RECONNECT = _T.RECONNECT
_T_REAP = _T.REAP
_T_STREAM = _T.STREAM
_T_LEAVE = _T.LEAVE


_Entry = tuple[float, int, _T, Any, Any]


# -- the core -------------------------------------------------------------------


class SwimNode:
    """One member of a SWIM cluster.

    ``rng`` supplies every random choice and the AES-GCM nonces: simulations
    seed it, the adapter must seed it from the operating system.
    ``incarnation`` lets a restarted process start above its previous life
    when it knows it; otherwise it refutes its way up on rejoin.
    ``decode_cache`` lets the nodes of one process (a simulation) share the
    memo of decoded broadcasts; each node keeps its own when it is None.
    ``layout_cache`` likewise shares encoded push-pull layouts (see
    :meth:`_encoded_layout`), and ``packet_cache`` decoded gossip packets
    (a member sends the same packet to several peers).
    """

    # Slots: a thousand simulated members each touch a dozen of these per
    # datagram; inline slots keep them on fewer cache lines than a dict.
    __slots__ = (
        "_acks",
        "_actions",
        "_awareness",
        "_bcast_order",
        "_budget",
        "_decoded",
        "_decoded_limit",
        "_down",
        "_event_ltime",
        "_event_min",
        "_events",
        "_gossip_armed",
        "_ignore_old_events",
        "_join_failed",
        "_join_ok",
        "_join_pending",
        "_keyring",
        "_layout",
        "_layout_cache",
        "_layout_memo",
        "_leave_phase",
        "_leave_started",
        "_limit",
        "_limit_for",
        "_me",
        "_member_ltime",
        "_members",
        "_now",
        "_num_live",
        "_other_pos",
        "_others",
        "_packets",
        "_pp_token",
        "_probe",
        "_probe_deadline",
        "_probe_list",
        "_probe_pos",
        "_qbytes",
        "_qdata",
        "_qlist",
        "_qrounds",
        "_queue",
        "_raw",
        "_raw_msg",
        "_rng",
        "_seq",
        "_state_cache",
        "_stopped",
        "_stream_seq",
        "_streams",
        "_susp_bounds",
        "_suspicions",
        "_timer_seq",
        "_timers",
        "_version",
        "config",
        "counters",
        "name",
        "packets_received",
    )

    def __init__(
        self,
        name: str,
        config: SwimConfig,
        *,
        rng: random.Random,
        now: float,
        addr: str,
        port: int,
        tags: Mapping[str, str] | None = None,
        keyring: Keyring | None = None,
        incarnation: int = 0,
        decode_cache: dict[bytes, object] | None = None,
        layout_cache: dict[tuple[str, ...], list[KnownLayout]] | None = None,
        packet_cache: dict[bytes, PacketItems] | None = None,
    ) -> None:
        tags_d = dict(tags or {})
        try:
            Alive(incarnation, name, addr, port, tags_d)
        except ValueError as exc:
            raise LocalProtocolError(f"invalid local member: {exc}") from None
        self.name = name
        self.config = config
        self._rng = rng
        self._keyring = keyring
        self._budget = config.max_packet_size - (ENCRYPTION_OVERHEAD if keyring else 0) - 2
        self._check_tags(tags_d)

        self._members: dict[str, _Node] = {}
        self._others: list[str] = []
        self._other_pos: dict[str, int] = {}
        self._num_live = 0
        self._down: set[str] = set()
        self._probe_list: list[str] = []
        self._probe_pos = 0
        self._probe: _Probe | None = None
        self._probe_deadline = 0.0
        self._seq = 0
        self._acks: dict[int, _Probe | _Relay] = {}
        self._suspicions: dict[str, _Suspicion] = {}
        self._queue: dict[object, _Broadcast] = {}
        self._qlist: list[_Broadcast] = []
        # The broadcasts' bytes in queue order: a packet that takes the
        # whole queue copies this list and touches no broadcast.
        self._qdata: list[bytes] = []
        self._qbytes = 0
        self._qrounds = 0
        self._limit_for = -1
        self._limit = 0
        self._susp_bounds = (-1, 0.0, 0.0)
        # Bumped whenever a member is added or removed or changes address or
        # tags: the push-pull columns that only such changes touch.
        self._layout = 0
        # None for the node list: looked up again from the table when needed.
        self._layout_cache: tuple[int, KnownLayout, list[_Node] | None] | None = None
        self._bcast_order = 0
        self._timers: list[_Entry] = []
        self._timer_seq = 0
        self._gossip_armed = False
        self._streams: dict[int, _Stream] = {}
        self._stream_seq = 0
        self._join_pending: set[int] = set()
        self._join_ok = 0
        self._join_failed = 0
        self._ignore_old_events = False
        self._actions: list[SwimAction] = []
        self._awareness = 0
        self._member_ltime = 0
        self._event_ltime = 0
        self._event_min = 0
        self._events: dict[int, tuple[int, list[tuple[str, bytes]]]] = {}
        self._leave_phase = 0
        self._leave_started = 0.0
        self._stopped = False
        self.counters: dict[str, int] = {}
        self.packets_received = 0
        # Decoded broadcasts by their bytes.  Simulations pass one dict to
        # every node of the process: decoding is a pure function of the bytes
        # and messages are immutable, so sharing changes nothing but the cost.
        self._decoded: dict[bytes, object] = {} if decode_cache is None else decode_cache
        self._decoded_limit = _PRIVATE_CACHE if decode_cache is None else _SHARED_CACHE
        self._layout_memo = layout_cache
        self._packets = packet_cache
        self._raw = b""
        self._raw_msg: object = None
        self._now = now
        self._version = 0
        self._state_cache: tuple[tuple[int, int, int], bytes] | None = None

        me = _Node(name, addr, port, tags_d, incarnation, now)
        self._me = me
        self._members[name] = me
        self._num_live = 1
        self._emit_change(me, _H_NONE, now)
        self._broadcast_alive()

        cfg = config
        self._at(now + rng.uniform(0, cfg.probe_interval), _T_PROBE)
        self._pp_token = object()
        self._at(
            now + rng.uniform(0, 1.0) * cfg.push_pull_interval, _T_PUSH_PULL, None, self._pp_token
        )
        self._at(now + cfg.reconnect_interval, _T_RECONNECT)
        self._at(now + cfg.reap_interval, _T_REAP)

    # -- inputs ---------------------------------------------------------------

    def receive(self, packet: bytes, *, src_addr: Address, now: float) -> None:
        """A UDP datagram arrived; anything malformed is dropped and counted."""
        self._now = now
        if self._stopped:
            return
        self.packets_received += 1
        if len(packet) > self.config.max_packet_size:
            self._count("dropped_oversized")
            return
        if self._keyring is not None:
            try:
                packet = self._keyring.decrypt(packet)
            except RemoteProtocolError:
                self._count("dropped_undecryptable")
                return
        try:
            items = decode_packet_items(packet, self._decoded, self._decoded_limit, self._packets)
        except RemoteProtocolError:
            self._count("dropped_malformed")
            return
        members = self._members
        me = self._me
        for raw, msg in items:
            # The gossip kinds first: a storm is mostly suspicions and alives,
            # and most of those repeat what we already know.  The repeats are
            # settled here with exactly the tests that open their handlers
            # (which stay the authority), saving a call per message.
            t = type(msg)
            if t is Suspect:
                node = members.get(msg.node)  # type: ignore[attr-defined]
                if node is None:
                    continue
                if node is not me:
                    if msg.incarnation < node.incarnation:  # type: ignore[attr-defined]
                        self._count("stale_messages")
                        continue
                    state = node.state
                    if state is _SUSPECT:
                        susp = self._suspicions.get(node.name)
                        if (
                            susp is None
                            or len(susp.confirmers) > susp.k
                            or msg.sender in susp.confirmers  # type: ignore[attr-defined]
                        ):
                            continue
                    elif state is not _ALIVE:
                        continue
                self._raw, self._raw_msg = raw, msg
                self._on_suspect(msg, now)  # type: ignore[arg-type]
            elif t is Alive:
                node = members.get(msg.node)  # type: ignore[attr-defined]
                if node is not None and node is not me:
                    inc = msg.incarnation  # type: ignore[attr-defined]
                    if (
                        inc <= node.incarnation
                        and msg.port == node.port  # type: ignore[attr-defined]
                        and msg.addr == node.addr  # type: ignore[attr-defined]
                    ):
                        if inc < node.incarnation:
                            self._count("stale_messages")
                        continue
                self._raw, self._raw_msg = raw, msg
                self._on_alive(msg, now)  # type: ignore[arg-type]
            else:
                self._raw, self._raw_msg = raw, msg
                self._dispatch(msg, src_addr, now)
        self._raw_msg = None

    def receive_stream(self, data: bytes, *, src_addr: Address, now: float) -> bytes | None:
        """A peer opened a stream; returns the reply frame body to write back, if any."""
        self._now = now
        if self._stopped:
            return None
        msg = self._open_stream(data)
        if msg is None:
            return None
        if isinstance(msg, PushPull):
            self._count("push_pull_received")
            self._merge(msg, now)
            return self._seal(self._local_state(join=False))
        if isinstance(msg, Ping):
            if msg.target != self.name:
                self._count("dropped_misdirected")
                return None
            return self._seal(encode_message(Ack(msg.seq)))
        self._count("dropped_unexpected_stream")
        return None

    def receive_stream_reply(self, stream_id: int, data: bytes, *, now: float) -> None:
        """The reply to one of our :class:`SendStream` / :class:`ProbeFallback` actions."""
        self._now = now
        if self._stopped:
            return
        st = self._streams.pop(stream_id, None)
        if st is None:
            self._count("dropped_unexpected_reply")
            return
        msg = self._open_stream(data)
        if st.kind is _StreamKind.FALLBACK:
            probe = self._probe
            if isinstance(msg, Ack) and probe is not None and msg.seq == st.seq == probe.seq:
                self._probe_acked(probe, direct=False)
            return
        ok = isinstance(msg, PushPull)
        if isinstance(msg, PushPull):
            if st.kind is _StreamKind.JOIN and self._ignore_old_events:
                self._event_min = max(self._event_min, msg.event_ltime)
            self._merge(msg, now)
        elif msg is not None:
            self._count("dropped_unexpected_stream")
        if st.kind is _StreamKind.JOIN:
            self._join_done(stream_id, ok)

    def stream_failed(self, stream_id: int, *, now: float) -> None:
        """The adapter could not connect, or the peer closed without a reply."""
        self._now = now
        st = self._streams.pop(stream_id, None)
        if st is not None and st.kind is _StreamKind.JOIN:
            self._join_done(stream_id, False)

    def handle_timer(self, now: float) -> None:
        """Run every timer that is due; spurious calls are harmless."""
        self._now = now
        timers = self._timers
        while not self._stopped:
            probe = self._probe
            pending = probe is not None and not probe.acked and not probe.indirect
            head = timers[0][0] if timers else math.inf
            if pending and self._probe_deadline <= now and self._probe_deadline <= head:
                self._probe_timeout(probe.seq, now)  # type: ignore[union-attr]
                continue
            if head > now:
                break
            _, _, kind, key, token = heapq.heappop(timers)
            self._fire(kind, key, token, now)

    def next_deadline(self) -> float | None:
        if self._stopped:
            return None
        timers = self._timers
        while timers:
            head = timers[0]
            kind = head[2]
            # Probe and gossip ticks are always valid: no call for the usual head.
            if kind is _T_PROBE or kind is _T_GOSSIP or self._valid(head):
                break
            heapq.heappop(timers)
        at = timers[0][0] if timers else None
        probe = self._probe
        if probe is not None and not probe.acked and not probe.indirect:
            pd = self._probe_deadline
            if at is None or pd < at:
                return pd
        return at

    def drain(self) -> list[SwimAction]:
        """Everything the adapter must do, in order."""
        out = self._actions
        self._actions = []
        return out

    # -- commands ---------------------------------------------------------------

    def join(self, seeds: Iterable[Address], now: float) -> None:
        """Push-pull with each seed; :class:`JoinResult` reports how many answered."""
        self._now = now
        self._require_running()
        seeds = list(seeds)
        if not seeds:
            raise LocalProtocolError("join needs at least one seed address")
        self._ignore_old_events = True
        for addr in seeds:
            sid = self._start_stream(addr, _StreamKind.JOIN, join=True, now=now)
            self._join_pending.add(sid)

    def start_push_pull(self, addr: Address, now: float) -> int:
        """Exchange full state with ``addr`` now; returns the stream id."""
        self._now = now
        self._require_running()
        return self._start_stream(addr, _StreamKind.PUSH_PULL, join=False, now=now)

    def leave(self, now: float) -> None:
        """Graceful leave: announce the intent, then our own death, then go quiet."""
        self._now = now
        self._require_running()
        if self._leave_phase:
            return
        self._leave_phase = 1
        self._leave_started = now
        self._member_ltime += 1
        me = self._me
        self._transition(me, now, leaving=True)
        msg = LeaveIntent(self._member_ltime, self.name, me.incarnation)
        self._enqueue(("intent", self.name), pack_message(msg))
        self._at(now + self.config.gossip_interval, _T_LEAVE)

    def set_tags(self, tags: Mapping[str, str], now: float) -> None:
        """Replace our tags; a higher incarnation carries them to everyone."""
        self._now = now
        self._require_running()
        tags_d = dict(tags)
        self._check_tags(tags_d)
        me = self._me
        if tags_d == me.tags:
            return
        self._transition(me, now, incarnation=me.incarnation + 1, tags=tags_d)
        self._broadcast_alive()

    def send_user_event(self, name: str, payload: bytes, now: float) -> None:
        """Fire a small cluster-wide event; delivered once to every live member (us too)."""
        self._now = now
        self._require_running()
        try:
            msg = UserEventMessage(self._event_ltime, name, payload)
        except ValueError as exc:
            raise LocalProtocolError(str(exc)) from None
        if len(encode_message(msg)) > self.config.user_event_size_limit:
            raise LocalProtocolError(
                f"user event exceeds {self.config.user_event_size_limit} bytes"
            )
        self._event_ltime += 1
        self._on_user_event(msg, now)

    def bootstrap_members(
        self, states: Sequence[PushNodeState], now: float, *, memo: BootstrapMemo | None = None
    ) -> None:
        """Install known live members silently (snapshot restore, simulations).

        Nothing is gossiped and no events are emitted: the caller already
        knows these members, and a thousand-member restore must stay cheap.
        ``memo`` shares the records with the other nodes of the process that
        bootstrap from the same list (see :class:`BootstrapMemo`).
        """
        self._now = now
        self._require_running()
        members = self._members
        others = self._others
        first = len(others)
        if memo is not None:
            added = memo.table(states, now).copy()
            for name in added.keys() & members.keys():
                del added[name]
        else:
            added = _records(states, now, members)
        members.update(added)
        self._layout += 1
        others.extend(added)
        self._other_pos.update(zip(others[first:], range(first, len(others)), strict=True))
        self._num_live += len(others) - first
        self._version += 1
        # Stagger the first push-pull over the interval this size calls for.
        self._pp_token = object()
        interval = push_pull_interval(self.config, len(members))
        self._at(now + self._rng.uniform(0, 1.0) * interval, _T_PUSH_PULL, None, self._pp_token)
        self._probe_list = [n for n in others if members[n].state in _LIVE]
        self._probe_pos = 0

    # -- queries ------------------------------------------------------------------

    @property
    def incarnation(self) -> int:
        return self._me.incarnation

    @property
    def awareness(self) -> int:
        """Lifeguard's local health score (0 is healthy)."""
        return self._awareness

    @property
    def stopped(self) -> bool:
        return self._stopped

    @property
    def leaving(self) -> bool:
        return self._leave_phase > 0

    def member(self, name: str) -> Member | None:
        node = self._members.get(name)
        return None if node is None else self._view(node)

    def members(self) -> list[Member]:
        return [self._view(n) for n in self._members.values()]

    def health_of(self, name: str) -> MemberHealth:
        node = self._members.get(name)
        return _H_NONE if node is None else node.health()

    def local_member(self) -> Member:
        return self._view(self._me)

    def stats(self) -> dict[str, str]:
        """The keys of Dkron's ``serf`` map in ``GET /v1/``; every value is a string."""
        failed = left = 0
        for name in self._down:
            h = self._members[name].health()
            if h is _H_FAILED:
                failed += 1
            elif h is _H_LEFT:
                left += 1
        intents = sum(1 for k in self._queue if isinstance(k, tuple) and k[0] == "intent")
        events = sum(1 for k in self._queue if isinstance(k, tuple) and k[0] == "event")
        return {
            "members": str(len(self._members)),
            "failed": str(failed),
            "left": str(left),
            "health_score": str(self._awareness),
            "member_time": str(self._member_ltime),
            "event_time": str(self._event_ltime),
            "query_time": "1",
            "intent_queue": str(intents),
            "event_queue": str(events),
            "query_queue": "0",
            "encrypted": "true" if self._keyring is not None else "false",
            "coordinate_resets": "0",
        }

    # -- dispatch -----------------------------------------------------------------

    def _dispatch(self, msg: object, src: Address, now: float) -> None:
        t = type(msg)
        if t is Ack:
            self._on_ack(msg, now)  # type: ignore[arg-type]
        elif t is Ping:
            self._on_ping(msg, src)  # type: ignore[arg-type]
        elif t is Alive:
            self._on_alive(msg, now)  # type: ignore[arg-type]
        elif t is Suspect:
            self._on_suspect(msg, now)  # type: ignore[arg-type]
        elif t is Dead:
            self._on_dead(msg, now)  # type: ignore[arg-type]
        elif t is IndirectPing:
            self._on_indirect(msg, src, now)  # type: ignore[arg-type]
        elif t is Nack:
            self._on_nack(msg)  # type: ignore[arg-type]
        elif t is LeaveIntent:
            self._on_intent(msg, now)  # type: ignore[arg-type]
        elif t is UserEventMessage:
            self._on_user_event(msg, now)  # type: ignore[arg-type]

    def _on_ping(self, msg: Ping, src: Address) -> None:
        if msg.target != self.name:
            self._count("dropped_misdirected")
            return
        self._send(src, [pack_ack(msg.seq)])

    def _on_indirect(self, msg: IndirectPing, src: Address, now: float) -> None:
        seq = self._next_seq()
        self._acks[seq] = _Relay(src, msg.seq, msg.nack)
        self._send((msg.target_addr, msg.target_port), [pack_ping(seq, msg.target, self.name)])
        self._at(now + self.config.probe_timeout, _T_RELAY, seq)

    def _on_ack(self, msg: Ack, now: float) -> None:
        handler = self._acks.pop(msg.seq, None)
        if handler is None:
            self._count("dropped_unexpected_ack")
            return
        if isinstance(handler, _Relay):
            self._send(handler.origin, [pack_ack(handler.origin_seq)])
            return
        self._probe_acked(handler, direct=not handler.indirect)

    def _on_nack(self, msg: Nack) -> None:
        handler = self._acks.get(msg.seq)
        if isinstance(handler, _Probe):
            handler.nacks += 1
        else:
            self._count("dropped_unexpected_nack")

    def _on_alive(self, msg: Alive, now: float) -> None:
        node = self._members.get(msg.node)
        if node is None:
            self._add_member(msg, now)
            self._enqueue(msg.node, self._packed(msg))
            return
        inc = msg.incarnation
        if (
            inc <= node.incarnation
            and msg.port == node.port
            and msg.addr == node.addr
            and node is not self._me
        ):
            # A repeat of what we know (most of a gossip storm), as decided below.
            if inc < node.incarnation:
                self._count("stale_messages")
            return
        if node is self._me:
            if (msg.addr, msg.port) != node.address:
                self._count("dropped_name_conflict")
                if msg.incarnation >= node.incarnation:
                    self._refute(msg.incarnation, now)
                return
            if msg.incarnation > node.incarnation or (
                msg.incarnation == node.incarnation and msg.tags != node.tags
            ):
                self._refute(msg.incarnation, now)
            return
        if (msg.addr, msg.port) != node.address:
            reclaimable = node.state in (_DEAD, _LEFT) and (
                now - node.state_change >= self.config.dead_node_reclaim_time
            )
            if not reclaimable:
                self._count("dropped_name_conflict")
                return
            if node.shared:
                node = self._own(node)
            node.addr, node.port = msg.addr, msg.port
            self._layout += 1
            self._version += 1
        if msg.incarnation <= node.incarnation:
            if msg.incarnation < node.incarnation:
                self._count("stale_messages")
            return
        self._suspicions.pop(node.name, None)
        self._transition(
            node,
            now,
            state=_ALIVE,
            incarnation=msg.incarnation,
            leaving=False,
            tags=dict(msg.tags),
        )
        self._enqueue(msg.node, self._packed(msg))

    def _on_suspect(self, msg: Suspect, now: float) -> None:
        node = self._members.get(msg.node)
        if node is None:
            return
        if msg.incarnation < node.incarnation:
            self._count("stale_messages")
            return
        if node is self._me:
            if self._leave_phase < 2:
                self._refute(msg.incarnation, now)
                self._adjust_awareness(1)
            return
        if node.state is _SUSPECT:
            susp = self._suspicions.get(node.name)
            # memberlist's cap: past k independent confirmations the timeout
            # is already at its minimum, so further ones are neither counted
            # nor re-gossiped (without it every member re-broadcasts every
            # other member's suspicion: N^2 messages per suspect).
            if (
                susp is not None
                and len(susp.confirmers) <= susp.k
                and msg.sender not in susp.confirmers
            ):
                susp.confirmers.add(msg.sender)
                at = susp.deadline()
                if at < susp.armed:
                    susp.armed = at
                    self._at(at, _T_SUSPICION, node.name, susp)
                self._enqueue(msg.node, self._packed(msg))
            return
        if node.state is not _ALIVE:
            return
        if not self._transition(node, now, state=_SUSPECT, incarnation=msg.incarnation):
            return
        k = self.config.suspicion_mult - 2 if self.config.lifeguard else 0
        n = self._num_live
        if n - 2 < k:
            k = 0
        cached = self._susp_bounds
        if cached[0] == n:
            low, high = cached[1], cached[2]
        else:
            low, high = suspicion_timeouts(self.config, n)
            self._susp_bounds = (n, low, high)
        susp = _Suspicion(msg.incarnation, msg.sender, k, low=low, high=high, start=now)
        self._suspicions[node.name] = susp
        susp.armed = susp.deadline()
        self._at(susp.armed, _T_SUSPICION, node.name, susp)
        self._enqueue(msg.node, self._packed(msg))

    def _on_dead(self, msg: Dead, now: float) -> None:
        node = self._members.get(msg.node)
        if node is None:
            return
        if msg.incarnation < node.incarnation:
            self._count("stale_messages")
            return
        left = msg.sender == msg.node
        if node is self._me:
            if not (left and self._leave_phase >= 2):
                self._refute(msg.incarnation, now)
            return
        if node.state is _LEFT or (node.state is _DEAD and not left):
            return
        self._suspicions.pop(node.name, None)
        state = _LEFT if left else _DEAD
        if self._transition(node, now, state=state, incarnation=msg.incarnation):
            self._enqueue(msg.node, self._packed(msg))

    def _on_intent(self, msg: LeaveIntent, now: float) -> None:
        self._member_ltime = max(self._member_ltime, msg.ltime)
        node = self._members.get(msg.node)
        if node is None:
            return
        if node is self._me:
            if not self._leave_phase and msg.incarnation >= node.incarnation:
                self._refute(msg.incarnation, now)
            return
        if msg.incarnation < node.incarnation:
            self._count("stale_messages")
            return
        if node.leaving or node.state is _LEFT:
            return
        if msg.incarnation > node.incarnation:
            return  # an intent from a life we have not seen yet; its alive comes first
        self._transition(node, now, leaving=True)
        self._enqueue(("intent", msg.node), self._packed(msg))

    def _on_user_event(self, msg: UserEventMessage, now: float) -> None:
        if msg.ltime >= self._event_ltime:
            self._event_ltime = msg.ltime + 1
        if msg.ltime < self._event_min:
            self._count("events_ignored_old")
            return
        size = self.config.event_buffer_size
        if self._event_ltime > size and msg.ltime < self._event_ltime - size:
            self._count("events_too_old")
            return
        slot_key = msg.ltime % size
        slot = self._events.get(slot_key)
        item = (msg.name, msg.payload)
        if slot is not None and slot[0] == msg.ltime:
            if item in slot[1]:
                self._count("events_duplicate")
                return
            if len(slot[1]) >= self.config.max_events_per_ltime:
                self._count("events_dropped_flood")
                return
            slot[1].append(item)
        else:
            self._events[slot_key] = (msg.ltime, [item])
        self._version += 1
        self._actions.append(UserEvent(ltime=msg.ltime, name=msg.name, payload=msg.payload))
        self._enqueue(("event", msg.ltime, msg.name, msg.payload), self._packed(msg))

    # -- membership bookkeeping ------------------------------------------------------

    def _add_member(self, msg: Alive, now: float) -> None:
        node = _Node(msg.node, msg.addr, msg.port, dict(msg.tags), msg.incarnation, now)
        self._version += 1
        self._members[msg.node] = node
        self._layout += 1
        self._other_pos[msg.node] = len(self._others)
        self._others.append(msg.node)
        self._num_live += 1
        plist = self._probe_list
        plist.append(msg.node)
        j = self._rng.randrange(len(plist))
        plist[j], plist[-1] = plist[-1], plist[j]
        self._emit_change(node, _H_NONE, now)

    def _remove_member(self, node: _Node, now: float) -> None:
        old = node.health()
        self._version += 1
        del self._members[node.name]
        self._layout += 1
        self._down.discard(node.name)
        if node.state in _LIVE:
            self._num_live -= 1
        pos = self._other_pos.pop(node.name)
        last = self._others.pop()
        if last != node.name:
            self._others[pos] = last
            self._other_pos[last] = pos
        self._actions.append(_state_change(node.name, old, _H_NONE, node.incarnation))
        self._actions.append(MemberEvent(kind=EventKind.REAP, member=self._view(node)))

    def _transition(
        self,
        node: _Node,
        now: float,
        *,
        state: NodeState | None = None,
        incarnation: int | None = None,
        leaving: bool | None = None,
        tags: dict[str, str] | None = None,
    ) -> bool:
        """The one place member state changes; refuses moves ``_LEGAL`` forbids."""
        new_state = node.state if state is None else state
        new_inc = node.incarnation if incarnation is None else incarnation
        if new_inc < node.incarnation:
            return False
        if (
            new_inc == node.incarnation
            and new_state is not node.state
            and new_state not in _LEGAL[node.state]
        ):
            return False
        if node.shared:
            node = self._own(node)
        self._version += 1
        old_health = node.health()
        was_live = node.state in _LIVE
        tags_changed = tags is not None and tags != node.tags
        if new_state is not node.state or new_inc != node.incarnation:
            node.state_change = now
        node.state = new_state
        node.wire = _TO_WIRE[new_state]
        node.incarnation = new_inc
        if leaving is not None:
            node.leaving = leaving
        if tags is not None:
            node.tags = tags
            if tags_changed:
                self._layout += 1
        is_live = new_state in _LIVE
        if was_live != is_live:
            self._num_live += 1 if is_live else -1
            if is_live:
                self._down.discard(node.name)
            else:
                self._down.add(node.name)
        self._emit_change(node, old_health, now)
        if tags_changed and old_health in _UP and node.health() in _UP:
            self._actions.append(MemberEvent(kind=EventKind.UPDATE, member=self._view(node)))
        return True

    def _own(self, node: _Node) -> _Node:
        """Our private copy of a record shared through a :class:`BootstrapMemo`.

        The copy takes the shared record's place in the member table, and
        the cached push-pull layout drops its node list (which is rebuilt
        from the table), so nothing of ours refers to the shared one.
        """
        mine = _Node(node.name, node.addr, node.port, node.tags, node.incarnation, 0.0)
        mine.state = node.state
        mine.wire = node.wire
        mine.leaving = node.leaving
        mine.state_change = node.state_change
        self._members[node.name] = mine
        layout = self._layout_cache
        if layout is not None and layout[2] is not None:
            # The layout's node list is looked up again when next needed:
            # a member changes several records between two push-pulls.
            self._layout_cache = (layout[0], layout[1], None)
        return mine

    def _emit_change(self, node: _Node, old: MemberHealth, now: float) -> None:
        new = node.health()
        if new is old:
            return
        self._actions.append(_state_change(node.name, old, new, node.incarnation))
        kind: EventKind | None = None
        if new in _UP and old in _DOWN:
            kind = EventKind.JOIN
        elif new is _H_FAILED:
            kind = EventKind.FAILED
        elif new is _H_LEFT:
            kind = EventKind.LEAVE
        if kind is not None:
            self._actions.append(MemberEvent(kind=kind, member=self._view(node)))

    def _view(self, node: _Node) -> Member:
        return Member(
            name=node.name,
            addr=node.addr,
            port=node.port,
            tags=dict(node.tags),
            status=_STATUS[node.health()],
            suspect=node.state is _SUSPECT,
            incarnation=node.incarnation,
        )

    def _refute(self, incarnation: int, now: float) -> None:
        me = self._me
        self._transition(me, now, incarnation=max(me.incarnation, incarnation) + 1)
        self._broadcast_alive()
        self._count("refutations")

    def _broadcast_alive(self) -> None:
        me = self._me
        msg = Alive(me.incarnation, me.name, me.addr, me.port, me.tags)
        self._enqueue(me.name, pack_message(msg))

    def _adjust_awareness(self, delta: int) -> None:
        if not self.config.lifeguard:
            return
        top = self.config.awareness_max_multiplier - 1
        self._awareness = min(top, max(0, self._awareness + delta))

    def _scaled(self, t: float) -> float:
        return t * (self._awareness + 1)

    def _check_tags(self, tags: dict[str, str]) -> None:
        """memberlist's meta limit: the encoded tag map must fit in ``max_tags_size``."""
        try:
            Alive(0, "x", "", 0, tags)
        except ValueError as exc:
            raise LocalProtocolError(f"invalid tags: {exc}") from None
        if len(cbor2.dumps(tags)) > self.config.max_tags_size:
            raise LocalProtocolError(f"tags exceed {self.config.max_tags_size} bytes")

    # -- probing ----------------------------------------------------------------

    def _tick_probe(self, now: float) -> None:
        self._finish_probe(now)
        cfg = self.config
        self._at(now + self._scaled(cfg.probe_interval), _T_PROBE)
        target = self._next_probe_target()
        if target is None:
            return
        seq = self._next_seq()
        probe = _Probe(seq, target.name, target.incarnation)
        self._probe = probe
        self._acks[seq] = probe
        parts = [pack_ping(seq, target.name, self.name)]
        if target.state is _SUSPECT and cfg.lifeguard:
            parts.append(pack_message(Suspect(target.incarnation, target.name, self.name)))
        self._send((target.addr, target.port), parts)
        # The direct-probe timeout lives outside the heap: it is armed every
        # period and almost always cancelled by the ack.
        self._probe_deadline = now + self._scaled(cfg.probe_timeout)

    def _next_probe_target(self) -> _Node | None:
        """memberlist's randomized round robin, shuffled as it goes.

        ``_probe_list[:_probe_pos]`` is this round's visited prefix; the next
        target is drawn uniformly from the rest and swapped to the front of
        it (an incremental Fisher-Yates shuffle: the same distribution as
        shuffling the round up front, without a thousand draws and a sort per
        member per round, most of which a short run never reaches).
        """
        members = self._members
        rand = self._rng.random
        for _ in range(2):
            plist = self._probe_list
            end = len(plist)
            pos = self._probe_pos
            while pos < end:
                j = pos + int(rand() * (end - pos))
                name = plist[j]
                plist[j] = plist[pos]
                plist[pos] = name
                pos += 1
                node = members.get(name)
                if node is not None and node.state in _LIVE:
                    self._probe_pos = pos
                    return node
            self._probe_list = [n for n in self._others if members[n].state in _LIVE]
            self._probe_pos = 0
        return None

    def _probe_timeout(self, seq: int, now: float) -> None:
        probe = self._probe
        if probe is None or probe.seq != seq or probe.acked:
            return
        probe.indirect = True
        target = self._members.get(probe.target)
        if target is None:
            return
        relays = self._random_nodes(
            self.config.indirect_checks,
            lambda n: n.state is _ALIVE and n.name != probe.target,
        )
        nack = self.config.lifeguard
        req = pack_message(
            IndirectPing(seq, target.name, target.addr, target.port, nack, self.name)
        )
        for relay in relays:
            self._send(relay.address, [req])
        if nack:
            probe.expected_nacks = len(relays)
        if self.config.tcp_fallback:
            sid = self._next_stream()
            self._streams[sid] = _Stream(_StreamKind.FALLBACK, seq)
            data = self._seal(encode_message(Ping(seq, target.name, self.name)))
            self._actions.append(
                ProbeFallback(addr=target.address, stream_id=sid, data=data, target=target.name)
            )
            self._at(now + self.config.probe_interval, _T_STREAM, sid)

    def _probe_acked(self, probe: _Probe, *, direct: bool) -> None:
        if probe.acked:
            return
        probe.acked = True
        self._acks.pop(probe.seq, None)
        if direct and self._awareness:
            self._adjust_awareness(-1)

    def _finish_probe(self, now: float) -> None:
        probe = self._probe
        if probe is None:
            return
        self._probe = None
        self._acks.pop(probe.seq, None)
        if probe.acked:
            return
        if probe.expected_nacks > 0:
            self._adjust_awareness(max(0, probe.expected_nacks - probe.nacks))
        else:
            self._adjust_awareness(1)
        if probe.target in self._members:
            self._on_suspect(Suspect(probe.incarnation, probe.target, self.name), now)

    def _random_nodes(self, k: int, pred: Any) -> list[_Node]:
        others = self._others
        n = len(others)
        out: list[_Node] = []
        if n == 0 or k <= 0:
            return out
        seen: set[str] = set()
        members = self._members
        rand = self._rng.random
        for _ in range(3 * n):
            if len(out) >= k:
                break
            name = others[int(rand() * n)]
            if name in seen:
                continue
            seen.add(name)
            node = members[name]
            if pred(node):
                out.append(node)
        return out

    def _gossip_targets(self, dead_horizon: float) -> list[_Node]:
        """``_random_nodes`` for gossip, inlined: same draws, same picks.

        Live members, and dead ones for ``gossip_to_the_dead`` after they died.
        """
        others = self._others
        n = len(others)
        out: list[_Node] = []
        k = self.config.gossip_nodes
        if n == 0:
            return out
        seen: set[str] = set()
        members = self._members
        rand = self._rng.random
        for _ in range(3 * n):
            if len(out) >= k:
                break
            name = others[int(rand() * n)]
            if name in seen:
                continue
            seen.add(name)
            node = members[name]
            if node.state in _LIVE or node.state_change > dead_horizon:
                out.append(node)
        return out

    # -- dissemination -------------------------------------------------------------

    def _enqueue(self, key: object, data: bytes) -> None:
        if len(data) > self._budget:
            self._count("broadcast_too_large")
            return
        queue = self._queue
        qlist = self._qlist
        old = queue.pop(key, None)
        if old is not None:
            i = qlist.index(old)
            del qlist[i]
            del self._qdata[i]
            self._qbytes -= len(old.data)
        self._bcast_order += 1
        b = _Broadcast(key, data, self._bcast_order, self._qrounds)
        queue[key] = b
        # No transmits yet and the newest: the head of the queue.
        qlist.insert(0, b)
        self._qdata.insert(0, data)
        self._qbytes += len(data)
        if len(queue) > self.config.max_broadcast_queue:
            worst = qlist.pop()
            self._qdata.pop()
            del queue[worst.key]
            self._qbytes -= len(worst.data)
            self._count("broadcasts_dropped")
        if not self._gossip_armed:
            self._gossip_armed = True
            self._at_gossip()

    def _at_gossip(self) -> None:
        # The gossip timer runs only while there is something to say; its
        # absence changes nothing observable and saves most wake-ups.
        self._timer_seq += 1
        heapq.heappush(
            self._timers,
            (self._now + self.config.gossip_interval, self._timer_seq, _T_GOSSIP, None, None),
        )

    def _take_broadcasts(self, budget: int) -> list[bytes]:
        """Fewest-transmitted, then newest, broadcasts that fit in ``budget`` bytes.

        ``_qlist`` is kept in exactly that order.  A broadcast's transmit
        count is ``_qrounds - base``, so the common case in a gossip storm --
        the whole queue fits in the packet -- adds one to ``_qrounds`` and
        leaves the order intact (every count went up by one).  A partial take
        (a joiner's queue holds a broadcast for every member it learned)
        lowers the ``base`` of the few broadcasts it sends and moves them back
        into order by bisection, leaving the rest of the queue untouched.
        Broadcasts that reached the retransmit limit sit at the tail.
        """
        qlist = self._qlist
        if not qlist:
            return []
        n = len(self._members)
        if self._limit_for != n:
            self._limit_for = n
            self._limit = retransmit_limit(self.config, n)
        qdata = self._qdata
        if self._qbytes <= budget and len(qlist) <= _MAX_PIGGYBACK:
            out = qdata[:]
            self._qrounds += 1
        else:
            out = []
            sent: list[_Broadcast] = []
            skipped: list[_Broadcast] = []
            room = _MAX_PIGGYBACK
            i = 0
            end = len(qlist)
            while i < end:
                b = qlist[i]
                size = len(b.data)
                i += 1
                if size > budget:
                    skipped.append(b)  # not sent: its count stays
                    if budget < 16:
                        break
                    continue
                budget -= size
                out.append(b.data)
                sent.append(b)
                room -= 1
                if not room:
                    break
            # The first i broadcasts were the highest in order; those skipped
            # keep their place ahead of the rest, those sent count one more
            # transmit and go back in order (newest first: each after the
            # one before it).
            del qlist[:i]
            del qdata[:i]
            qlist[:0] = skipped
            qdata[:0] = map(_DATA, skipped)
            lo = 0
            for b in sent:
                b.base -= 1
                lo = bisect.bisect_left(qlist, _queue_rank(b), lo, key=_queue_rank)
                qlist.insert(lo, b)
                qdata.insert(lo, b.data)
                lo += 1
        floor = self._qrounds - self._limit
        if qlist[-1].base <= floor:
            queue = self._queue
            qdata = self._qdata
            while qlist and qlist[-1].base <= floor:
                b = qlist.pop()
                qdata.pop()
                del queue[b.key]
                self._qbytes -= len(b.data)
        return out

    def _gossip(self, now: float) -> None:
        self._gossip_armed = False
        if not self._qlist:
            return
        last: list[bytes] = []
        data = b""
        plain = self._keyring is None
        for node in self._gossip_targets(now - self.config.gossip_to_the_dead):
            parts = self._take_broadcasts(self._budget)
            if not parts:
                break
            if plain and parts == last:
                # The same broadcasts as the previous target's: the same bytes
                # (with a keyring every packet needs its own nonce).
                self._actions.append(_send_packet(node.address, data))
                continue
            last = parts
            data = self._emit_packet(node.address, parts)
        if self._qlist and not self._gossip_armed:
            self._gossip_armed = True
            self._at_gossip()

    def _send(self, addr: Address, parts: list[bytes]) -> None:
        if self._qlist:
            parts = parts + self._take_broadcasts(self._budget - sum(map(len, parts)))
        self._emit_packet(addr, parts)

    def _emit_packet(self, addr: Address, parts: list[bytes]) -> bytes:
        data = encode_packet(parts)
        if self._keyring is not None:
            data = self._keyring.encrypt(data, self._rng.randbytes(NONCE_SIZE))
        if len(data) > self.config.max_packet_size:
            raise LocalProtocolError("internal error: packet exceeds the UDP limit")
        self._actions.append(_send_packet(addr, data))
        return data

    def _seal(self, body: bytes) -> bytes:
        if self._keyring is None:
            return body
        return self._keyring.encrypt(body, self._rng.randbytes(NONCE_SIZE))

    # -- push-pull, reconnect, reaping --------------------------------------------------

    def _start_stream(self, addr: Address, kind: _StreamKind, *, join: bool, now: float) -> int:
        sid = self._next_stream()
        self._streams[sid] = _Stream(kind, 0)
        data = self._seal(self._local_state(join=join))
        self._actions.append(SendStream(addr=addr, stream_id=sid, data=data))
        self._at(now + self.config.tcp_timeout, _T_STREAM, sid)
        return sid

    def _open_stream(self, data: bytes) -> object | None:
        if self._keyring is not None:
            try:
                data = self._keyring.decrypt(data)
            except RemoteProtocolError:
                self._count("dropped_undecryptable")
                return None
        try:
            # Our layout is built only for a push-pull (the reply needs it anyway).
            return decode_stream(data, lambda: self._current_layout()[1])
        except RemoteProtocolError:
            self._count("dropped_malformed")
            return None

    def _current_layout(self) -> tuple[int, KnownLayout, list[_Node]]:
        """Our push-pull layout, re-encoded only when members, addresses or tags changed.

        Members are listed in name order, so that peers with the same
        member table encode the same bytes (see :class:`KnownLayout`).
        """
        layout = self._layout_cache
        if layout is not None and layout[0] == self._layout:
            known = layout[1]
            cached_nodes = layout[2]
            if cached_nodes is not None:
                return self._layout, known, cached_nodes
            nodes = list(map(self._members.__getitem__, known.names))
        else:
            nodes = sorted(self._members.values(), key=_NAME)
            names = tuple(map(_NAME, nodes))
            addrs = tuple(map(_ADDR, nodes))
            ports = tuple(map(_PORT, nodes))
            tags = tuple(map(_TAGS, nodes))
            known = self._encoded_layout(names, addrs, ports, tags)
        self._layout_cache = (self._layout, known, nodes)
        return self._layout, known, nodes

    def _encoded_layout(
        self,
        names: tuple[str, ...],
        addrs: tuple[str, ...],
        ports: tuple[int, ...],
        tags: tuple[dict[str, str], ...],
    ) -> KnownLayout:
        """The layout of these columns, encoded or taken from the shared memo.

        The encoding is a pure function of the columns, so nodes of one
        process (a simulation) whose columns are equal -- compared by value,
        at C speed -- may share one encoding: in a settled thousand-member
        cluster every node's first push-pull would otherwise encode the same
        60 kB again.
        """
        memo = self._layout_memo
        if memo is not None:
            for known in memo.get(names, ()):
                if known.addrs == addrs and known.ports == ports and known.tags == tags:
                    return known
        encoded = encode_push_pull_layout(names, addrs, ports, tags)
        known = KnownLayout(encoded, names, addrs, ports, tags)
        if memo is not None:
            if len(memo) >= _SHARED_LAYOUTS:
                memo.clear()
            same_names = memo.setdefault(names, [])
            same_names.append(known)
            del same_names[:-_SHARED_LAYOUTS]
        return known

    def _local_state(self, *, join: bool) -> bytes:
        """Our encoded full state; unchanged state is not re-encoded.

        Names, addresses, ports and tags are encoded again only when the
        member set or an address or tag map changed (``_layout``); after an
        ordinary state change only incarnations, states and leave flags are,
        in the same member order.
        """
        cached = self._state_cache
        version = (self._version, self._member_ltime, self._event_ltime)
        if not join and cached is not None and cached[0] == version:
            return cached[1]
        layout = self._current_layout()
        nodes = layout[2]
        events: list[UserEventMessage] = []
        if not join:
            for ltime, items in self._events.values():
                events.extend(UserEventMessage(ltime, name, payload) for name, payload in items)
        data = encode_push_pull_state(
            join,
            layout[1].encoded,
            incarnations=list(map(_INC, nodes)),
            states=list(map(_WIRE, nodes)),
            leaving=list(map(_LEAVING, nodes)),
            member_ltime=self._member_ltime,
            event_ltime=self._event_ltime,
            events=events,
        )
        if not join:
            self._state_cache = (version, data)
        return data

    def _merge(self, msg: PushPull, now: float) -> None:
        self._member_ltime = max(self._member_ltime, msg.member_ltime)
        if self._same_as_ours(msg):
            # Every row matches our record: the per-row test below would skip
            # them all (no suspicion to confirm, our own row unchanged).
            self._merge_events(msg, now)
            return
        members = self._members
        me = self._me
        for name, addr, port, tags, inc, st, leaving in zip(
            msg.names,
            msg.addrs,
            msg.ports,
            msg.tags,
            msg.incarnations,
            msg.states,
            msg.leaving,
            strict=True,
        ):
            node = members.get(name)
            if node is not None and node is not me and node.addr == addr and node.port == port:
                # Nothing new is the common case; keep it cheap.
                ninc = node.incarnation
                if inc < ninc:
                    continue
                if inc == ninc and (not leaving or node.leaving or node.state is _LEFT):
                    if st == _WIRE_ALIVE:
                        continue
                    if st == _WIRE_LEFT and node.state is _LEFT:
                        continue
                    if st != _WIRE_LEFT and node.state in _GONE:
                        continue
            if st == _WIRE_ALIVE:
                self._on_alive(Alive(inc, name, addr, port, tags), now)
            elif st == _WIRE_LEFT:
                self._on_dead(Dead(inc, name, name), now)
            else:
                # memberlist prefers to suspect what a peer believes dead.
                self._on_suspect(Suspect(inc, name, self.name), now)
            if leaving and st != _WIRE_LEFT:
                self._on_intent(LeaveIntent(msg.member_ltime, name, inc), now)
        self._merge_events(msg, now)

    def _merge_events(self, msg: PushPull, now: float) -> None:
        if not msg.join:
            for ev in msg.events:
                self._on_user_event(ev, now)
        elif msg.event_ltime > self._event_ltime:
            self._event_ltime = msg.event_ltime

    def _same_as_ours(self, msg: PushPull) -> bool:
        """Whether ``msg`` lists exactly our members in exactly the states we hold.

        Only a push-pull decoded against our current layout can (its name
        column is then our very tuple); the rest is three column compares.
        """
        cached = self._layout_cache
        if cached is None or cached[0] != self._layout or msg.names is not cached[1].names:
            return False
        nodes = self._current_layout()[2]
        return (
            _WIRE_SUSPECT not in msg.states
            and msg.incarnations == tuple(map(_INC, nodes))
            and msg.states == tuple(map(_WIRE, nodes))
            and msg.leaving == tuple(map(_LEAVING, nodes))
        )

    def _join_done(self, sid: int, ok: bool) -> None:
        if sid not in self._join_pending:
            return
        self._join_pending.discard(sid)
        if ok:
            self._join_ok += 1
        else:
            self._join_failed += 1
        if not self._join_pending:
            self._actions.append(JoinResult(contacted=self._join_ok, failed=self._join_failed))
            self._join_ok = self._join_failed = 0

    def _periodic_push_pull(self, now: float) -> None:
        self._pp_token = object()
        interval = push_pull_interval(self.config, len(self._members))
        self._at(now + interval, _T_PUSH_PULL, None, self._pp_token)
        peers = self._random_nodes(1, lambda n: n.state is _ALIVE)
        if peers:
            self.start_push_pull(peers[0].address, now)

    def _reconnect(self, now: float) -> None:
        """Serf's reconnect loop: retry a failed member so healed partitions merge."""
        self._at(now + self.config.reconnect_interval, _T_RECONNECT)
        failed = sorted(n for n in self._down if self._members[n].health() is _H_FAILED)
        if not failed:
            return
        alive = max(1, len(self._members) - len(self._down))
        if self._rng.random() > len(failed) / alive:
            return
        node = self._members[failed[self._rng.randrange(len(failed))]]
        self._start_stream(node.address, _StreamKind.PUSH_PULL, join=False, now=now)
        self._count("reconnect_attempts")

    def _reap(self, now: float) -> None:
        self._at(now + self.config.reap_interval, _T_REAP)
        for name in sorted(self._down):
            node = self._members[name]
            h = node.health()
            age = now - node.state_change
            if (h is _H_FAILED and age > self.config.reconnect_timeout) or (
                h is _H_LEFT and age > self.config.tombstone_timeout
            ):
                self._remove_member(node, now)

    def _leave_step(self, now: float) -> None:
        if self._leave_phase == 1:
            pending = ("intent", self.name) in self._queue
            if pending and now - self._leave_started < self.config.leave_broadcast_timeout:
                self._at(now + self.config.gossip_interval, _T_LEAVE)
                return
            self._leave_phase = 2
            self._leave_started = now
            me = self._me
            self._suspicions.pop(me.name, None)
            self._transition(me, now, state=_LEFT)
            self._enqueue(me.name, pack_message(Dead(me.incarnation, me.name, me.name)))
            self._at(now + self.config.gossip_interval, _T_LEAVE)
            return
        if self._leave_phase == 2:
            pending = self.name in self._queue
            if pending and now - self._leave_started < self.config.leave_broadcast_timeout:
                self._at(now + self.config.gossip_interval, _T_LEAVE)
                return
            self._leave_phase = 3
            self._stopped = True
            self._timers.clear()
            self._actions.append(LeaveComplete(name=self.name))

    # -- timers -------------------------------------------------------------------------

    def _at(self, at: float, kind: _T, key: Any = None, token: Any = None) -> None:
        self._timer_seq += 1
        heapq.heappush(self._timers, (at, self._timer_seq, kind, key, token))

    def _valid(self, entry: _Entry) -> bool:
        kind = entry[2]
        if kind is _T_RELAY:
            return entry[3] in self._acks
        if kind is _T_SUSPICION:
            return self._suspicions.get(entry[3]) is entry[4]
        if kind is _T_STREAM:
            return entry[3] in self._streams
        if kind is _T_PUSH_PULL:
            return entry[4] is self._pp_token
        return True

    def _fire(self, kind: _T, key: Any, token: Any, now: float) -> None:
        if kind is _T_PROBE:
            self._tick_probe(now)
        elif kind is _T_GOSSIP:
            self._gossip(now)
        elif kind is _T_RELAY:
            relay = self._acks.pop(key, None)
            if isinstance(relay, _Relay) and relay.nack:
                self._send(relay.origin, [pack_message(Nack(relay.origin_seq))])
        elif kind is _T_SUSPICION:
            susp = self._suspicions.get(key)
            if susp is token and susp is not None:
                node = self._members.get(key)
                del self._suspicions[key]
                if node is not None and node.state is _SUSPECT:
                    self._on_dead(Dead(susp.incarnation, key, self.name), now)
        elif kind is _T_PUSH_PULL:
            if token is self._pp_token:
                self._periodic_push_pull(now)
        elif kind is _T_RECONNECT:
            self._reconnect(now)
        elif kind is _T_REAP:
            self._reap(now)
        elif kind is _T_STREAM:
            if key in self._streams:
                self.stream_failed(key, now=now)
        elif kind is _T_LEAVE:
            self._leave_step(now)

    # -- small helpers ------------------------------------------------------------------

    def _next_seq(self) -> int:
        self._seq += 1
        return self._seq

    def _next_stream(self) -> int:
        self._stream_seq += 1
        return self._stream_seq

    def _packed(self, msg: object) -> bytes:
        """Re-broadcast a received message with the bytes it arrived in."""
        if msg is self._raw_msg:
            return frame_body(self._raw)
        return pack_message(msg)

    def _count(self, key: str) -> None:
        self.counters[key] = self.counters.get(key, 0) + 1

    def _require_running(self) -> None:
        if self._stopped:
            raise LocalProtocolError("this member has left the cluster")
