"""The gossip wire format: SWIM messages, compound packets and the keyring.

A datagram is one CBOR array whose items are messages (``[kind, fields...]``
as :class:`~dkron.proto_sansio.wire.Codec` lays them out).  A single message
is simply a compound packet of one, so there is one decoder for everything
that arrives over UDP.  Messages are pre-encoded once when they are queued for
dissemination; a packet is then a CBOR array header followed by the encoded
messages, which lets the sender know a packet's exact size before building it
and keeps the 1,400-byte limit a hard one.

Push-pull state travels over TCP as a single message (no size limit beyond the
stream frame bound).

With a keyring, every packet and stream body is sealed with AES-GCM as in
memberlist: ``[version=1][12-byte nonce][ciphertext || 16-byte tag]``.  The
primary key encrypts; every key in the ring is tried to decrypt so that keys
can be rotated without a flag day.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import enum
import hashlib
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import cbor2
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from dkron.proto_sansio.errors import LocalProtocolError, RemoteProtocolError
from dkron.proto_sansio.wire import Codec

__all__ = [
    "ENCRYPTION_OVERHEAD",
    "MAX_NAME",
    "MAX_PACKET_MESSAGES",
    "MAX_STREAM",
    "NONCE_SIZE",
    "PACKET_CACHE_SIZE",
    "Ack",
    "Alive",
    "Dead",
    "IndirectPing",
    "Keyring",
    "KnownLayout",
    "LeaveIntent",
    "Nack",
    "PacketItems",
    "Ping",
    "PushNodeState",
    "PushPull",
    "Suspect",
    "UserEventMessage",
    "WireState",
    "decode_packet",
    "decode_packet_items",
    "decode_stream",
    "encode_message",
    "encode_packet",
    "encode_push_pull_layout",
    "encode_push_pull_state",
    "frame_body",
    "key_fingerprint",
    "pack_ack",
    "pack_message",
    "pack_ping",
    "packet_overhead",
]

MAX_NAME = 128
MAX_ADDR = 256
MAX_TAGS = 64
MAX_TAG_LEN = 512
MAX_PACKET_MESSAGES = 256
MAX_STREAM = 16 * 1024 * 1024
MAX_PUSH_NODES = 100_000
MAX_PUSH_EVENTS = 4096
MAX_EVENT_NAME = 128
MAX_EVENT_PAYLOAD = 64 * 1024

ENCRYPTION_VERSION = 1
NONCE_SIZE = 12
TAG_SIZE = 16
ENCRYPTION_OVERHEAD = 1 + NONCE_SIZE + TAG_SIZE
KEY_SIZES = frozenset({16, 24, 32})


def _check_name(value: str, what: str) -> None:
    if not value or len(value) > MAX_NAME:
        raise ValueError(f"{what} must be 1..{MAX_NAME} characters")


def _check_addr(addr: str, port: int) -> None:
    if len(addr) > MAX_ADDR:
        raise ValueError("address too long")
    if not 0 <= port <= 65535:
        raise ValueError("port out of range")


def _check_tags(tags: dict[str, str]) -> None:
    if len(tags) > MAX_TAGS:
        raise ValueError(f"more than {MAX_TAGS} tags")
    for k, v in tags.items():
        if len(k) > MAX_TAG_LEN or len(v) > MAX_TAG_LEN:
            raise ValueError("tag too long")


_LIMIT = 1 << 63


def _check_counter(value: int, what: str) -> None:
    if not 0 <= value < _LIMIT:
        raise ValueError(f"{what} out of range")


@dataclasses.dataclass(frozen=True, slots=True)
class Ping:
    """A direct probe; ``target`` is checked so a reused address never acks for another."""

    seq: int
    target: str
    source: str

    def __post_init__(self) -> None:
        # Inlined checks: this is the hottest message on the wire.
        if not 0 <= self.seq < _LIMIT:
            raise ValueError("seq out of range")
        if not 0 < len(self.target) <= MAX_NAME or not 0 < len(self.source) <= MAX_NAME:
            raise ValueError(f"names must be 1..{MAX_NAME} characters")


@dataclasses.dataclass(frozen=True, slots=True)
class IndirectPing:
    """Ask a relay to probe ``target`` for us (SWIM's ping-req)."""

    seq: int
    target: str
    target_addr: str
    target_port: int
    nack: bool
    source: str

    def __post_init__(self) -> None:
        _check_counter(self.seq, "seq")
        _check_name(self.target, "target")
        _check_addr(self.target_addr, self.target_port)
        _check_name(self.source, "source")


@dataclasses.dataclass(frozen=True, slots=True)
class Ack:
    seq: int

    def __post_init__(self) -> None:
        if not 0 <= self.seq < _LIMIT:
            raise ValueError("seq out of range")


@dataclasses.dataclass(frozen=True, slots=True)
class Nack:
    """Lifeguard: a relay could not reach the target, so the prober is not alone."""

    seq: int

    def __post_init__(self) -> None:
        _check_counter(self.seq, "seq")


@dataclasses.dataclass(frozen=True, slots=True)
class Alive:
    incarnation: int
    node: str
    addr: str
    port: int
    tags: dict[str, str]

    def __post_init__(self) -> None:
        _check_counter(self.incarnation, "incarnation")
        _check_name(self.node, "node")
        _check_addr(self.addr, self.port)
        _check_tags(self.tags)


@dataclasses.dataclass(frozen=True, slots=True)
class Suspect:
    incarnation: int
    node: str
    sender: str

    def __post_init__(self) -> None:
        _check_counter(self.incarnation, "incarnation")
        _check_name(self.node, "node")
        _check_name(self.sender, "sender")


@dataclasses.dataclass(frozen=True, slots=True)
class Dead:
    """``sender == node`` is a member announcing its own graceful departure."""

    incarnation: int
    node: str
    sender: str

    def __post_init__(self) -> None:
        _check_counter(self.incarnation, "incarnation")
        _check_name(self.node, "node")
        _check_name(self.sender, "sender")


@dataclasses.dataclass(frozen=True, slots=True)
class LeaveIntent:
    """Serf's leave intent: ``node`` is about to leave (status ``leaving``)."""

    ltime: int
    node: str
    incarnation: int

    def __post_init__(self) -> None:
        _check_counter(self.ltime, "ltime")
        _check_name(self.node, "node")
        _check_counter(self.incarnation, "incarnation")


@dataclasses.dataclass(frozen=True, slots=True)
class UserEventMessage:
    ltime: int
    name: str
    payload: bytes

    def __post_init__(self) -> None:
        _check_counter(self.ltime, "ltime")
        if not self.name or len(self.name) > MAX_EVENT_NAME:
            raise ValueError("bad event name")
        if len(self.payload) > MAX_EVENT_PAYLOAD:
            raise ValueError("event payload too large")


class WireState(enum.IntEnum):
    """memberlist's node states as they travel in push-pull."""

    ALIVE = 0
    SUSPECT = 1
    DEAD = 2
    LEFT = 3


@dataclasses.dataclass(frozen=True, slots=True)
class PushNodeState:
    """One member's row of a push-pull exchange (not itself a wire message)."""

    name: str
    addr: str
    port: int
    tags: dict[str, str]
    incarnation: int
    state: WireState
    leaving: bool

    def __post_init__(self) -> None:
        _check_name(self.name, "name")
        _check_addr(self.addr, self.port)
        _check_tags(self.tags)
        _check_counter(self.incarnation, "incarnation")


_WIRE_STATES = tuple(WireState)


@dataclasses.dataclass(frozen=True, slots=True)
class PushPull:
    """Full-state anti-entropy exchange; ``join`` asks the peer to ignore our old events.

    Laid out as columns (one array per field) rather than one struct per
    member: a 1,000-member state then decodes as a handful of flat arrays,
    which is several times cheaper than a thousand nested structs.
    """

    join: bool
    names: tuple[str, ...]
    addrs: tuple[str, ...]
    ports: tuple[int, ...]
    tags: tuple[dict[str, str], ...]
    incarnations: tuple[int, ...]
    states: tuple[int, ...]
    leaving: tuple[bool, ...]
    member_ltime: int
    event_ltime: int
    events: tuple[UserEventMessage, ...]

    def __post_init__(self) -> None:
        n = len(self.names)
        if n > MAX_PUSH_NODES:
            raise ValueError("too many nodes in push-pull")
        columns = (self.addrs, self.ports, self.tags, self.incarnations, self.states, self.leaving)
        if any(len(c) != n for c in columns):
            raise ValueError("push-pull columns differ in length")
        if len(self.events) > MAX_PUSH_EVENTS:
            raise ValueError("too many events in push-pull")
        _check_counter(self.member_ltime, "member_ltime")
        _check_counter(self.event_ltime, "event_ltime")
        # Whole-column checks with C-level min/max: this runs on every push-pull.
        if n:
            if min(map(len, self.names)) == 0 or max(map(len, self.names)) > MAX_NAME:
                raise ValueError("bad member name")
            if max(map(len, self.addrs)) > MAX_ADDR:
                raise ValueError("address too long")
            if min(self.ports) < 0 or max(self.ports) > 65535:
                raise ValueError("port out of range")
            if min(self.incarnations) < 0 or max(self.incarnations) >= _LIMIT:
                raise ValueError("incarnation out of range")
            if min(self.states) < 0 or max(self.states) > 3:
                raise ValueError("invalid member state")
        for tags in self.tags:
            if tags:
                _check_tags(tags)

    @classmethod
    def build(
        cls,
        join: bool,
        nodes: Sequence[PushNodeState],
        member_ltime: int,
        event_ltime: int,
        events: tuple[UserEventMessage, ...] = (),
    ) -> PushPull:
        return cls(
            join,
            tuple(n.name for n in nodes),
            tuple(n.addr for n in nodes),
            tuple(n.port for n in nodes),
            tuple(n.tags for n in nodes),
            tuple(n.incarnation for n in nodes),
            tuple(int(n.state) for n in nodes),
            tuple(n.leaving for n in nodes),
            member_ltime,
            event_ltime,
            events,
        )

    def rows(self) -> list[PushNodeState]:
        return [
            PushNodeState(name, addr, port, tags, inc, _WIRE_STATES[st], leaving)
            for name, addr, port, tags, inc, st, leaving in zip(
                self.names,
                self.addrs,
                self.ports,
                self.tags,
                self.incarnations,
                self.states,
                self.leaving,
                strict=True,
            )
        ]


_PACKET_KINDS: dict[int, type] = {
    1: Ping,
    2: IndirectPing,
    3: Ack,
    4: Nack,
    5: Alive,
    6: Suspect,
    7: Dead,
    8: LeaveIntent,
    9: UserEventMessage,
}
_STREAM_KINDS: dict[int, type] = {**_PACKET_KINDS, 10: PushPull}

_CODEC = Codec(_STREAM_KINDS)
_PACKET_CLASSES = frozenset(_PACKET_KINDS.values())
# Broadcasts repeat; probes and acks carry fresh sequence numbers and never do.
_CACHEABLE = frozenset({Alive, Suspect, Dead, LeaveIntent, UserEventMessage})
_CACHE_SIZE = 512
# Whole packets remembered by ``decode_packet_items``: only the last few
# matter (a gossip round reaches its peers within milliseconds).
PACKET_CACHE_SIZE = 64

# The messages of one packet, each with its framed bytes (read-only: shared
# through a packet memo).
PacketItems = tuple[tuple[bytes, object], ...]
_PING_KIND = 1
_ACK_KIND = 3
_PUSH_PULL_KIND = 10
# A 12-item array, then the kind.
_PUSH_PULL_HEADER = b"\x8c\x0a"


def encode_message(msg: object) -> bytes:
    """One message's CBOR encoding (a stream body)."""
    if type(msg) is PushPull:
        return _encode_push_pull(msg)
    return _CODEC.encode(msg)


def _encode_push_pull(msg: PushPull) -> bytes:
    """The codec's bytes for a push-pull, without copying every column element.

    The generic encoder rebuilds each column and each tag map item by item;
    CBOR encodes a tuple like a list and a dict in its own order, so handing
    the columns over as they are yields the same bytes at a fraction of the
    cost (a 1,000-member state is encoded at every state change).
    """
    return cbor2.dumps(
        [
            _PUSH_PULL_KIND,
            msg.join,
            msg.names,
            msg.addrs,
            msg.ports,
            msg.tags,
            msg.incarnations,
            msg.states,
            msg.leaving,
            msg.member_ltime,
            msg.event_ltime,
            [[e.ltime, e.name, e.payload] for e in msg.events],
        ]
    )


def encode_push_pull_layout(
    names: Sequence[str],
    addrs: Sequence[str],
    ports: Sequence[int],
    tags: Sequence[dict[str, str]],
) -> bytes:
    """The encoded columns of a push-pull that change only when membership does.

    Pass the result to :func:`encode_push_pull_state`.
    """
    return b"".join(map(cbor2.dumps, (names, addrs, ports, tags)))


def encode_push_pull_state(
    join: bool,
    layout: bytes,
    *,
    incarnations: Sequence[int],
    states: Sequence[int],
    leaving: Sequence[bool],
    member_ltime: int,
    event_ltime: int,
    events: Sequence[UserEventMessage],
) -> bytes:
    """``encode_message(PushPull(...))`` around a pre-encoded :func:`encode_push_pull_layout`.

    A CBOR array is its header followed by its items' encodings, so the
    bytes are the same; a member that re-encodes its state after every
    change then encodes only the columns that changed.  The caller vouches
    that the columns are valid (they are its own member table).
    """
    return b"".join(
        (
            _PUSH_PULL_HEADER,
            cbor2.dumps(join),
            layout,
            cbor2.dumps(incarnations),
            cbor2.dumps(states),
            cbor2.dumps(leaving),
            cbor2.dumps(member_ltime),
            cbor2.dumps(event_ltime),
            cbor2.dumps([[e.ltime, e.name, e.payload] for e in events]),
        )
    )


def pack_message(msg: object) -> bytes:
    """One message framed for a packet: its encoding wrapped as a CBOR byte string.

    Framing each message separately is memberlist's compound message: the
    receiver can recognise a message it has already decoded by its bytes (a
    broadcast arrives many times) without parsing it again.
    """
    return cbor2.dumps(_CODEC.encode(msg))


def pack_ping(seq: int, target: str, source: str) -> bytes:
    """``pack_message(Ping(seq, target, source))`` without building the message.

    Probes and acks are most of the traffic and never repeat, so they skip
    the dataclass and the generic encoder; the bytes are identical.
    """
    if not 0 <= seq < _LIMIT:
        raise LocalProtocolError("seq out of range")
    if not 0 < len(target) <= MAX_NAME or not 0 < len(source) <= MAX_NAME:
        raise LocalProtocolError(f"names must be 1..{MAX_NAME} characters")
    return cbor2.dumps(cbor2.dumps([_PING_KIND, seq, target, source]))


def pack_ack(seq: int) -> bytes:
    """``pack_message(Ack(seq))`` without building the message (same bytes)."""
    if not 0 <= seq < _LIMIT:
        raise LocalProtocolError("seq out of range")
    return cbor2.dumps(cbor2.dumps([_ACK_KIND, seq]))


_SHORT_HEADERS = tuple(bytes((0x80 + n,)) for n in range(24))


def _array_header(n: int) -> bytes:
    if n < 24:
        return _SHORT_HEADERS[n]
    if n < 256:
        return bytes((0x98, n))
    raise LocalProtocolError("too many messages in one packet")


def packet_overhead(n: int) -> int:
    """Bytes a packet of ``n`` messages adds around them (the array header)."""
    return 1 if n < 24 else 2


def encode_packet(parts: Sequence[bytes]) -> bytes:
    """Concatenate messages framed by :func:`pack_message` into one compound packet."""
    n = len(parts)
    if not n:
        raise LocalProtocolError("a packet needs at least one message")
    return (_SHORT_HEADERS[n] if n < 24 else _array_header(n)) + b"".join(parts)


def decode_packet(data: bytes, cache: dict[bytes, object] | None = None) -> list[object]:
    """Parse a plaintext datagram into its messages; garbage raises RemoteProtocolError."""
    return [msg for _, msg in decode_packet_items(data, cache)]


def decode_packet_items(
    data: bytes,
    cache: dict[bytes, object] | None = None,
    cache_limit: int = _CACHE_SIZE,
    packets: dict[bytes, PacketItems] | None = None,
) -> PacketItems:
    """Each message of a datagram with its encoded body (re-framed by :func:`frame_body`).

    ``cache`` maps framed message bytes already decoded to the (immutable)
    message, so repeated broadcasts cost a dictionary lookup; it is emptied
    when it reaches ``cache_limit`` entries.  ``packets`` likewise maps whole
    packets made only of such broadcasts to their items: a member gossips
    the same packet to several peers, and the nodes of one process (a
    simulation) that share this memo decode it once.  It is emptied at
    :data:`PACKET_CACHE_SIZE` entries.
    """
    if packets is not None:
        known = packets.get(data)
        if known is not None:
            return known
    try:
        raw = cbor2.loads(data)
    except Exception as exc:  # every parser failure is the peer's fault
        raise RemoteProtocolError(f"undecodable packet: {exc}") from None
    if type(raw) is not list or not raw:
        raise RemoteProtocolError("a packet is a non-empty array of messages")
    if len(raw) > MAX_PACKET_MESSAGES:
        raise RemoteProtocolError("too many messages in one packet")
    if cache is not None and len(raw) > 1:
        # A gossip packet is mostly broadcasts decoded before: look them all
        # up at C speed.  Only byte strings equal cached keys; anything
        # unhashable or unseen takes the item-by-item path below.
        try:
            hits = list(map(cache.get, raw))
        except TypeError:
            hits = []
        if hits and all(hits):
            items = tuple(zip(raw, hits, strict=True))
            if packets is not None:
                _remember(packets, data, items)
            return items
    out: list[tuple[bytes, object]] = []
    only_broadcasts = True
    for item in raw:
        if type(item) is not bytes:
            raise RemoteProtocolError("a packet item is a byte string")
        if cache is not None:
            hit = cache.get(item)
            if hit is not None:
                out.append((item, hit))
                continue
        msg = _decode_item(item)
        out.append((item, msg))
        if type(msg) in _CACHEABLE:
            if cache is not None:
                if len(cache) >= cache_limit:
                    cache.clear()
                cache[item] = msg
        else:
            only_broadcasts = False
    items = tuple(out)
    if packets is not None and only_broadcasts:
        _remember(packets, data, items)
    return items


def _remember(packets: dict[bytes, PacketItems], data: bytes, items: PacketItems) -> None:
    if len(packets) >= PACKET_CACHE_SIZE:
        packets.clear()
    packets[data] = items


def _decode_item(item: bytes) -> object:
    """One packet message; pings and acks take a short path with the codec's checks."""
    try:
        body = cbor2.loads(item)
    except Exception as exc:  # every parser failure is the peer's fault
        raise RemoteProtocolError(f"undecodable CBOR: {exc}") from None
    if type(body) is list:
        n = len(body)
        kind = body[0] if n else None
        if type(kind) is int:
            try:
                if kind == _ACK_KIND and n == 2 and type(body[1]) is int:
                    return Ack(body[1])
                if (
                    kind == _PING_KIND
                    and n == 4
                    and type(body[1]) is int
                    and type(body[2]) is str
                    and type(body[3]) is str
                ):
                    return Ping(body[1], body[2], body[3])
            except ValueError as exc:
                raise RemoteProtocolError(f"{exc}") from None
    msg = _CODEC.from_wire(body)
    if type(msg) not in _PACKET_CLASSES:
        raise RemoteProtocolError(f"{type(msg).__name__} is not a packet message")
    return msg


def frame_body(body: bytes) -> bytes:
    """The CBOR byte-string header plus ``body``: what :func:`pack_message` produced."""
    n = len(body)
    if n < 24:
        return bytes((0x40 + n,)) + body
    if n < 256:
        return bytes((0x58, n)) + body
    if n < 65536:
        return bytes((0x59, n >> 8, n & 0xFF)) + body
    return cbor2.dumps(body)


class KnownLayout:
    """Our own encoded push-pull layout with the columns it encodes.

    A peer whose member table holds the same members with the same
    addresses and tags encodes byte-for-byte the same layout (members are
    listed in name order), which in a settled cluster is nearly every peer.
    :func:`decode_stream` then compares bytes instead of decoding and
    checking a thousand rows, and hands back these very column tuples.
    """

    __slots__ = ("addrs", "encoded", "names", "ports", "tags")

    def __init__(
        self,
        encoded: bytes,
        names: tuple[str, ...],
        addrs: tuple[str, ...],
        ports: tuple[int, ...],
        tags: tuple[dict[str, str], ...],
    ) -> None:
        self.encoded = encoded
        self.names = names
        self.addrs = addrs
        self.ports = ports
        self.tags = tags


# Where a push-pull's layout starts: the array header and kind, then the join flag.
_LAYOUT_AT = len(_PUSH_PULL_HEADER) + 1
# The six items after the layout, re-wrapped as one CBOR array.
_TAIL_HEADER = b"\x86"


def decode_stream(data: bytes, known: Callable[[], KnownLayout] | None = None) -> object:
    """Parse one plaintext stream body (push-pull or a TCP ping).

    ``known`` gives our own layout; it is asked for only when ``data`` is a
    push-pull, and one whose layout bytes equal it decodes only the rest
    (see :class:`KnownLayout`); anything else takes the full path.
    """
    if len(data) > MAX_STREAM:
        raise RemoteProtocolError("stream body too large")
    if known is not None and data.startswith(_PUSH_PULL_HEADER):
        layout = known()
        if data.startswith(layout.encoded, _LAYOUT_AT):
            msg = _push_pull_known(data, layout)
            if msg is not None:
                return msg
    try:
        raw = cbor2.loads(data)
    except Exception as exc:  # the parser's failure modes are many; all are the peer's
        raise RemoteProtocolError(f"undecodable CBOR: {exc}") from None
    fast = _push_pull_from_wire(raw)
    if fast is not None:
        return fast
    return _CODEC.from_wire(raw)


_STR = frozenset({str})
_INT = frozenset({int})
_BOOL = frozenset({bool})
_DICT = frozenset({dict})


def _column(value: Any, kinds: frozenset[type]) -> tuple[Any, ...] | None:
    """``value`` as a tuple if it is an array of items of exactly these types, else None."""
    if type(value) is not list or not set(map(type, value)) <= kinds:
        return None
    return tuple(value)


def _push_pull_from_wire(raw: Any) -> PushPull | None:
    """A well-formed push-pull checked column by column at C speed.

    Accepts exactly what the codec accepts and builds an equal message; for
    anything else it returns None and the codec gives its usual verdict, so
    only the common case is fast and the error behaviour is the codec's.
    """
    if type(raw) is not list or len(raw) != 12:
        return None
    kind, join, names, addrs, ports, tags, incs, states, leaving, mlt, elt, events = raw
    if type(kind) is not int or kind != _PUSH_PULL_KIND:
        return None
    names_t = _column(names, _STR)
    addrs_t = _column(addrs, _STR)
    ports_t = _column(ports, _INT)
    tags_t = _column(tags, _DICT)
    if names_t is None or addrs_t is None or ports_t is None or tags_t is None:
        return None
    for t in tags_t:
        if t and not (set(map(type, t)) <= _STR and set(map(type, t.values())) <= _STR):
            return None
    return _push_pull_rest(
        join, names_t, addrs_t, ports_t, tags_t, incs, states, leaving, mlt, elt, events
    )


def _push_pull_known(data: bytes, known: KnownLayout) -> PushPull | None:
    """The push-pull in ``data`` whose layout is ``known``'s, or None to decode it in full."""
    flag = data[_LAYOUT_AT - 1]
    if flag not in (0xF4, 0xF5):  # CBOR false / true
        return None
    try:
        rest = cbor2.loads(_TAIL_HEADER + data[_LAYOUT_AT + len(known.encoded) :])
    except Exception:  # the full path gives the verdict on anything odd
        return None
    if type(rest) is not list or len(rest) != 6:
        return None
    return _push_pull_rest(flag == 0xF5, known.names, known.addrs, known.ports, known.tags, *rest)


def _push_pull_rest(  # noqa: PLR0917 -- the wire columns, in wire order
    join: Any,
    names_t: tuple[str, ...],
    addrs_t: tuple[str, ...],
    ports_t: tuple[int, ...],
    tags_t: tuple[dict[str, str], ...],
    incs: Any,
    states: Any,
    leaving: Any,
    mlt: Any,
    elt: Any,
    events: Any,
) -> PushPull | None:
    """Check the columns that change with every state change and build the message."""
    if type(join) is not bool or type(mlt) is not int or type(elt) is not int:
        return None
    incs_t = _column(incs, _INT)
    states_t = _column(states, _INT)
    leaving_t = _column(leaving, _BOOL)
    if incs_t is None or states_t is None or leaving_t is None or type(events) is not list:
        return None
    evs: list[UserEventMessage] = []
    for e in events:
        if (
            type(e) is not list
            or len(e) != 3
            or type(e[0]) is not int
            or type(e[1]) is not str
            or type(e[2]) is not bytes
        ):
            return None
        try:
            evs.append(UserEventMessage(e[0], e[1], e[2]))
        except ValueError:
            return None
    try:
        return PushPull(
            join,
            names_t,
            addrs_t,
            ports_t,
            tags_t,
            incs_t,
            states_t,
            leaving_t,
            mlt,
            elt,
            tuple(evs),
        )
    except ValueError:
        return None


class Keyring:
    """AES-GCM keys: one primary that encrypts, all of them tried to decrypt.

    Keys are raw bytes of 16, 24 or 32 bytes (AES-128/192/256), given in base64
    on the command line as with Dkron's ``--encrypt``.  Nonces come from the
    caller: the core draws them from its injected generator, which the adapter
    seeds from the OS so that a restarted process never reuses one.
    """

    __slots__ = ("_ciphers", "_keys")

    def __init__(self, primary: bytes, extra: Iterable[bytes] = ()) -> None:
        self._keys: list[bytes] = []
        self._ciphers: list[AESGCM] = []
        self.add_key(primary)
        for key in extra:
            self.add_key(key)

    @classmethod
    def from_base64(cls, primary: str, extra: Iterable[str] = ()) -> Keyring:
        return cls(_b64key(primary), [_b64key(k) for k in extra])

    @property
    def keys(self) -> tuple[bytes, ...]:
        return tuple(self._keys)

    @property
    def primary(self) -> bytes:
        return self._keys[0]

    def add_key(self, key: bytes) -> None:
        """Install a decrypt-only key (the first step of a rotation)."""
        if len(key) not in KEY_SIZES:
            raise LocalProtocolError("a gossip key must be 16, 24 or 32 bytes")
        if key in self._keys:
            return
        self._keys.append(key)
        self._ciphers.append(AESGCM(key))

    def use_key(self, key: bytes) -> None:
        """Make an installed key the primary (the second step of a rotation)."""
        if key not in self._keys:
            raise LocalProtocolError("key is not installed")
        i = self._keys.index(key)
        self._keys.insert(0, self._keys.pop(i))
        self._ciphers.insert(0, self._ciphers.pop(i))

    def remove_key(self, key: bytes) -> None:
        """Drop a retired key; the primary cannot be removed."""
        if key == self._keys[0]:
            raise LocalProtocolError("cannot remove the primary key")
        if key in self._keys:
            i = self._keys.index(key)
            del self._keys[i]
            del self._ciphers[i]

    def fingerprints(self) -> tuple[str, ...]:
        """:func:`key_fingerprint` of every key, the primary first."""
        return tuple(key_fingerprint(k) for k in self._keys)

    def encrypt(self, plaintext: bytes, nonce: bytes) -> bytes:
        if len(nonce) != NONCE_SIZE:
            raise LocalProtocolError("nonce must be 12 bytes")
        return (
            bytes((ENCRYPTION_VERSION,)) + nonce + self._ciphers[0].encrypt(nonce, plaintext, b"")
        )

    def decrypt(self, data: bytes) -> bytes:
        """Open a sealed body with any installed key; anything else is the peer's fault."""
        if len(data) < ENCRYPTION_OVERHEAD:
            raise RemoteProtocolError("encrypted payload too short")
        if data[0] != ENCRYPTION_VERSION:
            raise RemoteProtocolError(f"unknown encryption version {data[0]}")
        nonce = data[1 : 1 + NONCE_SIZE]
        body = data[1 + NONCE_SIZE :]
        for cipher in self._ciphers:
            try:
                return cipher.decrypt(nonce, body, b"")
            except InvalidTag:
                continue
        raise RemoteProtocolError("no installed key decrypts the payload")


def key_fingerprint(key: bytes) -> str:
    """A short, one-way name for a key, safe to publish (in gossip tags, the API).

    Keys are uniformly random and at least 128 bits, so a truncated hash
    reveals nothing usable about them; the prefix keeps the digest specific
    to this use.
    """
    return hashlib.sha256(b"dkron-gossip-key:" + key).hexdigest()[:16]


def _b64key(text: str) -> bytes:
    try:
        key = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise LocalProtocolError("gossip key is not valid base64") from None
    if len(key) not in KEY_SIZES:
        raise LocalProtocolError("a gossip key must decode to 16, 24 or 32 bytes")
    return key
