"""The gossip wire format: messages, compound packets, push-pull, the keyring."""

from __future__ import annotations

import base64
import dataclasses

import cbor2
import pytest
from hypothesis import given
from hypothesis import strategies as st

from dkron.proto_sansio.errors import LocalProtocolError, RemoteProtocolError
from dkron.proto_sansio.swim_wire import (
    ENCRYPTION_OVERHEAD,
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
    decode_packet,
    decode_packet_items,
    decode_stream,
    encode_message,
    encode_packet,
    encode_push_pull_layout,
    encode_push_pull_state,
    pack_message,
    packet_overhead,
)

names = st.text(min_size=1, max_size=20)
counters = st.integers(0, 2**63 - 1)
tags = st.dictionaries(st.text(max_size=10), st.text(max_size=10), max_size=5)

messages = st.one_of(
    st.builds(Ping, counters, names, names),
    st.builds(
        IndirectPing,
        counters,
        names,
        st.text(max_size=20),
        st.integers(0, 65535),
        st.booleans(),
        names,
    ),
    st.builds(Ack, counters),
    st.builds(Nack, counters),
    st.builds(Alive, counters, names, st.text(max_size=20), st.integers(0, 65535), tags),
    st.builds(Suspect, counters, names, names),
    st.builds(Dead, counters, names, names),
    st.builds(LeaveIntent, counters, names, counters),
    st.builds(UserEventMessage, counters, names, st.binary(max_size=64)),
)


@given(st.lists(messages, min_size=1, max_size=30))
def test_compound_packets_round_trip(msgs: list[object]) -> None:
    packet = encode_packet([pack_message(m) for m in msgs])
    assert decode_packet(packet) == msgs
    cache: dict[bytes, object] = {}
    assert decode_packet(packet, cache) == msgs
    assert decode_packet(packet, cache) == msgs


def test_packet_size_is_known_before_encoding() -> None:
    parts = [pack_message(Ack(i)) for i in range(30)]
    assert len(encode_packet(parts)) == sum(map(len, parts)) + packet_overhead(30)
    with pytest.raises(LocalProtocolError):
        encode_packet([])
    with pytest.raises(LocalProtocolError):
        encode_packet([pack_message(Ack(1))] * 300)


@pytest.mark.parametrize(
    "raw",
    [
        b"",
        b"\xff",
        cbor2.dumps([]),
        cbor2.dumps({"a": 1}),
        cbor2.dumps([1, 2]),
        cbor2.dumps([cbor2.dumps([99, 1])]),
        cbor2.dumps([cbor2.dumps([3, -1])]),
        cbor2.dumps([cbor2.dumps([3, "x"])]),
        cbor2.dumps([cbor2.dumps([1, 1, "", "a"])]),
        cbor2.dumps([b"\x00"] * 300),
        encode_packet([pack_message(Ack(1))])[:-1],
    ],
)
def test_malformed_packets_raise_remote_protocol_error(raw: bytes) -> None:
    with pytest.raises(RemoteProtocolError):
        decode_packet(raw)


def test_push_pull_is_a_stream_message_only() -> None:
    pp = PushPull.build(
        True,
        [PushNodeState("a", "10.0.0.1", 7946, {"role": "x"}, 3, WireState.SUSPECT, True)],
        4,
        5,
    )
    assert decode_stream(encode_message(pp)) == pp
    assert pp.rows()[0].state is WireState.SUSPECT
    with pytest.raises(RemoteProtocolError):
        decode_packet(encode_packet([cbor2.dumps(encode_message(pp))]))


def test_push_pull_columns_must_agree() -> None:
    wire = cbor2.loads(encode_message(PushPull.build(False, [], 0, 0)))
    wire[2] = ["extra-name"]
    with pytest.raises(RemoteProtocolError):
        decode_stream(cbor2.dumps(wire))
    wire = cbor2.loads(
        encode_message(
            PushPull.build(False, [PushNodeState("a", "h", 1, {}, 0, WireState.ALIVE, False)], 0, 0)
        )
    )
    for column, bad in ((2, [""]), (3, ["x" * 300]), (4, [70000]), (6, [-1]), (7, [9])):
        broken = list(wire)
        broken[column] = bad
        with pytest.raises(RemoteProtocolError):
            decode_stream(cbor2.dumps(broken))


@given(st.binary(max_size=200), st.binary(min_size=12, max_size=12))
def test_keyring_round_trip_and_rotation(plain: bytes, nonce: bytes) -> None:
    old, new = b"o" * 16, b"n" * 32
    ring = Keyring(old)
    sealed = ring.encrypt(plain, nonce)
    assert len(sealed) == len(plain) + ENCRYPTION_OVERHEAD
    assert ring.decrypt(sealed) == plain
    ring.add_key(new)
    ring.use_key(new)
    assert ring.primary == new
    assert ring.decrypt(sealed) == plain  # the old key still decrypts during rotation
    ring.remove_key(old)
    with pytest.raises(RemoteProtocolError):
        ring.decrypt(sealed)
    assert ring.decrypt(ring.encrypt(plain, nonce)) == plain


def test_keyring_rejects_bad_keys_and_garbage() -> None:
    with pytest.raises(LocalProtocolError):
        Keyring(b"short")
    with pytest.raises(LocalProtocolError):
        Keyring.from_base64("not base64!!")
    with pytest.raises(LocalProtocolError):
        Keyring.from_base64(base64.b64encode(b"x" * 20).decode())
    ring = Keyring.from_base64(
        base64.b64encode(b"x" * 24).decode(), [base64.b64encode(b"y" * 16).decode()]
    )
    assert ring.keys == (b"x" * 24, b"y" * 16)
    with pytest.raises(LocalProtocolError):
        ring.remove_key(b"x" * 24)
    with pytest.raises(LocalProtocolError):
        ring.use_key(b"z" * 16)
    with pytest.raises(LocalProtocolError):
        ring.encrypt(b"", b"short")
    sealed = ring.encrypt(b"hello", b"\x00" * 12)
    for bad in (sealed[:10], b"\x02" + sealed[1:], sealed[:-1] + bytes([sealed[-1] ^ 1])):
        with pytest.raises(RemoteProtocolError):
            ring.decrypt(bad)


@pytest.mark.parametrize(
    "build",
    [
        lambda: Ping(-1, "a", "b"),
        lambda: Ping(1, "", "b"),
        lambda: Alive(0, "a", "h", 70000, {}),
        lambda: Alive(0, "a", "h", 1, {str(i): "" for i in range(100)}),
        lambda: Suspect(0, "a" * 200, "b"),
        lambda: UserEventMessage(0, "", b""),
        lambda: UserEventMessage(0, "e", b"x" * 70000),
        lambda: PushNodeState("", "h", 1, {}, 0, WireState.ALIVE, False),
    ],
)
def test_messages_validate_at_construction(build: object) -> None:
    with pytest.raises(ValueError):
        build()  # type: ignore[operator]


# -- encoders and decoders that skip work must give the codec's answer ----------------

push_rows = st.lists(
    st.tuples(names, st.text(max_size=8), st.integers(0, 65535), tags, counters, st.integers(0, 3)),
    max_size=8,
)


@given(
    push_rows,
    st.booleans(),
    counters,
    counters,
    st.lists(st.tuples(counters, names, st.binary(max_size=16)), max_size=3),
)
def test_push_pull_from_a_pre_encoded_layout_is_the_codec_encoding(
    rows: list[tuple[str, str, int, dict[str, str], int, int]],
    join: bool,
    mlt: int,
    elt: int,
    events: list[tuple[int, str, bytes]],
) -> None:
    evs = tuple(UserEventMessage(*e) for e in events)
    nodes = [PushNodeState(n, a, p, t, i, WireState(s), i % 2 == 0) for n, a, p, t, i, s in rows]
    msg = PushPull.build(join, nodes, mlt, elt, evs)
    layout = encode_push_pull_layout(msg.names, msg.addrs, msg.ports, msg.tags)
    data = encode_push_pull_state(
        join,
        layout,
        incarnations=msg.incarnations,
        states=msg.states,
        leaving=msg.leaving,
        member_ltime=mlt,
        event_ltime=elt,
        events=evs,
    )
    assert data == encode_message(msg)
    assert decode_stream(data) == msg


def _known(msg: PushPull) -> KnownLayout:
    layout = encode_push_pull_layout(msg.names, msg.addrs, msg.ports, msg.tags)
    return KnownLayout(layout, msg.names, msg.addrs, msg.ports, msg.tags)


def _verdict(data: bytes, known: KnownLayout | None) -> object:
    try:
        return decode_stream(data, None if known is None else lambda: known)
    except RemoteProtocolError:
        return "rejected"


@given(push_rows, st.booleans(), counters, st.data())
def test_decoding_against_our_layout_gives_the_full_decoders_answer(
    rows: list[tuple[str, str, int, dict[str, str], int, int]],
    join: bool,
    mlt: int,
    data: st.DataObject,
) -> None:
    """A push-pull whose layout bytes are ours skips decoding them, never the verdict.

    The peer's message shares our layout (same rows, its own incarnations,
    states and flags) or not; its bytes may then be cut or corrupted after
    the layout: every variant must decode to what the full decoder says.
    """
    nodes = [PushNodeState(n, a, p, t, i, WireState(s), i % 2 == 0) for n, a, p, t, i, s in rows]
    ours = PushPull.build(False, nodes, 0, 0, ())
    known = _known(ours)
    theirs_nodes = [
        dataclasses.replace(
            nd,
            incarnation=data.draw(counters),
            state=WireState(data.draw(st.integers(0, 3))),
            leaving=data.draw(st.booleans()),
        )
        for nd in nodes
    ]
    theirs = PushPull.build(join, theirs_nodes, mlt, 0, ())
    wire = encode_message(theirs)
    decoded = decode_stream(wire, lambda: known)
    assert decoded == theirs
    if nodes:
        assert isinstance(decoded, PushPull) and decoded.names is known.names
    cut = data.draw(st.integers(0, len(wire)))
    flip = data.draw(st.integers(0, max(0, len(wire) - 1)))
    for variant in (
        wire[:cut],
        wire[:flip] + bytes([wire[flip] ^ 0xFF]) + wire[flip + 1 :] if wire else wire,
        wire + b"\x00",
    ):
        assert _verdict(variant, known) == _verdict(variant, None)


def test_a_corrupted_header_is_not_mistaken_for_our_layout() -> None:
    """Found by the property above: the layout bytes matched, the array header did not."""
    empty = PushPull.build(False, [], 0, 0, ())
    wire = encode_message(empty)
    bad = b"s" + wire[1:]
    assert _verdict(bad, _known(empty)) == _verdict(bad, None) == "rejected"


def test_a_different_layout_takes_the_full_path() -> None:
    a = PushPull.build(False, [PushNodeState("a", "h", 1, {}, 0, WireState.ALIVE, False)], 0, 0, ())
    b = PushPull.build(False, [PushNodeState("b", "h", 1, {}, 3, WireState.DEAD, True)], 0, 0, ())
    decoded = decode_stream(encode_message(b), lambda: _known(a))
    assert decoded == b
    assert isinstance(decoded, PushPull) and decoded.names == ("b",)


cached_kinds = st.one_of(
    st.builds(Suspect, counters, names, names),
    st.builds(Alive, counters, names, st.text(max_size=8), st.integers(0, 65535), tags),
    st.builds(Dead, counters, names, names),
)


@given(
    st.lists(st.one_of(cached_kinds, st.builds(Ack, counters)), min_size=1, max_size=6),
    st.integers(0, 5),
    st.booleans(),
)
def test_decode_caches_give_the_uncached_answer(msgs: list[object], warm: int, memo: bool) -> None:
    """The broadcast memo and the whole-packet memo: same items, and a packet
    is remembered only when every message in it is a cacheable broadcast."""
    cache: dict[bytes, object] = {}
    packets: dict[bytes, PacketItems] | None = {} if memo else None
    data = encode_packet([pack_message(m) for m in msgs])
    # Warm the cache with some of the messages, then with the whole packet.
    warm_up = encode_packet([pack_message(m) for m in msgs[:warm] or msgs])
    decode_packet_items(warm_up, cache, packets=packets)
    for _ in range(2):
        assert decode_packet_items(data, cache, packets=packets) == decode_packet_items(data)
        assert [m for _, m in decode_packet_items(data, cache, packets=packets)] == msgs
    if packets is not None:
        assert (data in packets) == all(not isinstance(m, Ack) for m in msgs)


def test_decode_cache_does_not_hide_a_bad_item() -> None:
    cache: dict[bytes, object] = {}
    packets: dict[bytes, PacketItems] = {}
    good = pack_message(Suspect(1, "a", "b"))
    decode_packet_items(encode_packet([good]), cache, packets=packets)
    for bad in ([good, b"\x41\x00"], [good, [1, 2]], [good, 7]):
        data = b"\x82" + good + cbor2.dumps(bad[1])
        for _ in range(2):
            with pytest.raises(RemoteProtocolError):
                decode_packet_items(data, cache, packets=packets)
    assert list(packets) == [encode_packet([good])]
