"""The SWIM core on its own: probes, suspicion, refutation, bad input, limits, stats."""

from __future__ import annotations

import dataclasses
import math
import random

import cbor2
import pytest
from hypothesis import given
from hypothesis import strategies as st

from dkron.proto_sansio.errors import LocalProtocolError, RemoteProtocolError
from dkron.proto_sansio.swim import (
    LAN,
    LOCAL,
    WAN,
    EventKind,
    JoinResult,
    LeaveComplete,
    MemberEvent,
    MemberHealth,
    MemberStatus,
    ProbeFallback,
    SendPacket,
    SendStream,
    StateChange,
    SwimAction,
    SwimConfig,
    SwimNode,
    UserEvent,
    detection_bound,
    push_pull_interval,
    retransmit_limit,
    suspicion_timeouts,
)
from dkron.proto_sansio.swim_wire import (
    Ack,
    Alive,
    Dead,
    IndirectPing,
    Keyring,
    KnownLayout,
    LeaveIntent,
    Nack,
    Ping,
    PushNodeState,
    PushPull,
    Suspect,
    UserEventMessage,
    WireState,
    decode_packet,
    decode_stream,
    encode_message,
    encode_packet,
    pack_message,
)

A = ("10.0.0.1", 7946)
B = ("10.0.0.2", 7946)
C = ("10.0.0.3", 7946)


def node(name: str, addr: tuple[str, int], cfg: SwimConfig = LOCAL, **kw: object) -> SwimNode:
    return SwimNode(
        name,
        cfg,
        rng=random.Random(name),
        now=0.0,
        addr=addr[0],
        port=addr[1],
        **kw,  # type: ignore[arg-type]
    )


def packet(*msgs: object) -> bytes:
    return encode_packet([pack_message(m) for m in msgs])


def sent(actions: list[SwimAction]) -> list[tuple[tuple[str, int], list[object]]]:
    return [(a.addr, decode_packet(a.data)) for a in actions if isinstance(a, SendPacket)]


def pair() -> tuple[SwimNode, SwimNode]:
    a, b = node("a", A), node("b", B)
    a.bootstrap_members([PushNodeState("b", B[0], B[1], {}, 0, WireState.ALIVE, False)], 0.0)
    b.bootstrap_members([PushNodeState("a", A[0], A[1], {}, 0, WireState.ALIVE, False)], 0.0)
    a.drain()
    b.drain()
    return a, b


def snapshot(n: SwimNode) -> list[tuple[str, MemberStatus, bool, int, dict[str, str]]]:
    return sorted((m.name, m.status, m.suspect, m.incarnation, dict(m.tags)) for m in n.members())


# -- configuration and timing formulas ------------------------------------------------


def test_profiles_match_memberlist() -> None:
    assert (LAN.probe_interval, LAN.probe_timeout, LAN.suspicion_mult) == (1.0, 0.5, 4)
    assert (LAN.suspicion_max_timeout_mult, LAN.indirect_checks, LAN.gossip_interval) == (6, 3, 0.2)
    assert (LAN.gossip_nodes, LAN.retransmit_mult, LAN.push_pull_interval) == (3, 4, 30.0)
    assert LAN.awareness_max_multiplier == 8 and LAN.reconnect_timeout == 86400.0
    assert (WAN.probe_interval, WAN.probe_timeout, WAN.suspicion_mult, WAN.gossip_nodes) == (
        5.0,
        3.0,
        6,
        4,
    )
    assert LOCAL.probe_interval < LAN.probe_interval
    with pytest.raises(dataclasses.FrozenInstanceError):
        LAN.probe_interval = 2.0  # type: ignore[misc]


@pytest.mark.parametrize(
    "kw",
    [
        {"probe_interval": 0.0},
        {"probe_timeout": 2.0},
        {"suspicion_mult": 0},
        {"indirect_checks": -1},
        {"max_packet_size": 1500},
        {"reconnect_timeout": 0.0},
        {"max_broadcast_queue": 1},
    ],
)
def test_config_is_validated(kw: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        SwimConfig(**kw)  # type: ignore[arg-type]


def test_timing_formulas() -> None:
    assert suspicion_timeouts(LAN, 100) == (8.0, 48.0)
    assert suspicion_timeouts(LAN, 5) == (4.0, 24.0)
    assert suspicion_timeouts(dataclasses.replace(LAN, lifeguard=False), 100) == (8.0, 8.0)
    assert retransmit_limit(LAN, 9) == 4
    assert retransmit_limit(LAN, 99) == 8
    assert retransmit_limit(LAN, 1000) == 16
    assert push_pull_interval(LAN, 32) == 30.0
    assert push_pull_interval(LAN, 1000) == 180.0
    assert detection_bound(LAN, 10) > suspicion_timeouts(LAN, 10)[1]


# -- probing ---------------------------------------------------------------------------


def test_ping_ack_round_trip_and_awareness() -> None:
    a, b = pair()
    a.handle_timer(1.0)
    out = [(ad, ms) for ad, ms in sent(a.drain()) if isinstance(ms[0], Ping)]
    addr, msgs = out[0]
    assert addr == B and isinstance(msgs[0], Ping) and msgs[0].target == "b"
    b.receive(packet(msgs[0]), src_addr=A, now=1.001)
    ((back, reply),) = sent(b.drain())
    assert back == A and isinstance(reply[0], Ack)
    a.receive(packet(reply[0]), src_addr=B, now=1.002)
    assert a.health_of("b") is MemberHealth.ALIVE
    assert a.awareness == 0
    # A late duplicate ack is counted, not acted on.
    a.receive(packet(reply[0]), src_addr=B, now=1.003)
    assert a.counters["dropped_unexpected_ack"] == 1


def test_misdirected_ping_is_not_acked() -> None:
    a, _ = pair()
    a.receive(packet(Ping(5, "someone-else", "b")), src_addr=B, now=0.1)
    assert sent(a.drain()) == []
    assert a.counters["dropped_misdirected"] == 1


def test_failed_probe_goes_indirect_then_suspects_with_buddy_and_awareness() -> None:
    a, _ = pair()
    a.bootstrap_members([PushNodeState("c", C[0], C[1], {}, 0, WireState.ALIVE, False)], 0.0)
    now = 0.0
    # Drive until a probes b and b never answers.
    while True:
        now = a.next_deadline() or now
        a.handle_timer(now)
        got = sent(a.drain())
        for _, ms in got:  # c answers everything; b never does
            for m in ms:
                if isinstance(m, Ping) and m.target == "c":
                    a.receive(packet(Ack(m.seq)), src_addr=C, now=now + 0.001)
        pings = [m for _, ms in got for m in ms if isinstance(m, Ping) and m.target == "b"]
        if pings:
            break
    seq = pings[0].seq
    a.handle_timer(now + LOCAL.probe_timeout)
    out = a.drain()
    reqs = [(ad, m) for ad, ms in sent(out) for m in ms if isinstance(m, IndirectPing)]
    assert reqs and reqs[0][0] == C and reqs[0][1].nack
    assert [x for x in out if isinstance(x, ProbeFallback)]
    # The relay answers with a nack: the prober is not the one in trouble.
    a.receive(packet(Nack(seq)), src_addr=C, now=now + 0.15)
    a.handle_timer(now + LOCAL.probe_interval)
    assert a.health_of("b") is MemberHealth.SUSPECT
    assert a.member("b").suspect  # type: ignore[union-attr]
    assert a.awareness == 0
    changes = [x for x in a.drain() if isinstance(x, StateChange)]
    assert changes[-1].new is MemberHealth.SUSPECT
    # The next probe of b carries the suspicion to b itself (buddy system).
    for _ in range(10):
        now = a.next_deadline() or now
        a.handle_timer(now)
        for addr, msgs in sent(a.drain()):
            if addr == B and any(isinstance(m, Ping) for m in msgs):
                assert any(isinstance(m, Suspect) and m.node == "b" for m in msgs)
                return
    pytest.fail("suspect was never probed again")


def test_relay_forwards_ack_or_nacks_on_timeout() -> None:
    a, _ = pair()
    a.receive(packet(IndirectPing(77, "c", C[0], C[1], True, "b")), src_addr=B, now=1.0)
    ((addr, msgs),) = sent(a.drain())
    assert addr == C and isinstance(msgs[0], Ping)
    relay_seq = msgs[0].seq
    a.receive(packet(Ack(relay_seq)), src_addr=C, now=1.01)
    ((addr, msgs),) = sent(a.drain())
    assert addr == B and msgs[0] == Ack(77)
    a.receive(packet(IndirectPing(78, "c", C[0], C[1], True, "b")), src_addr=B, now=2.0)
    a.drain()
    a.handle_timer(2.0 + LOCAL.probe_timeout)
    assert any(Nack(78) in msgs for addr, msgs in sent(a.drain()) if addr == B)


def test_suspicion_timeout_shrinks_with_confirmations() -> None:
    cfg = LAN
    n = node("a", A, cfg)
    others = [
        PushNodeState(f"n{i}", "10.1.0.1", 1000 + i, {}, 0, WireState.ALIVE, False)
        for i in range(99)
    ]
    n.bootstrap_members(others, 0.0)
    n.receive(packet(Suspect(0, "n1", "n2")), src_addr=B, now=1.0)
    low, high = suspicion_timeouts(cfg, 100)
    deadline = n.next_deadline()
    assert deadline is not None
    n.receive(packet(Suspect(0, "n1", "n3")), src_addr=B, now=1.1)
    n.receive(packet(Suspect(0, "n1", "n3")), src_addr=B, now=1.1)  # same confirmer: ignored
    n.receive(packet(Suspect(0, "n1", "n4")), src_addr=B, now=1.2)
    # k = suspicion_mult - 2 = 2 confirmations bring it down to the minimum.
    n.handle_timer(1.0 + low - 0.01)
    assert n.health_of("n1") is MemberHealth.SUSPECT
    n.handle_timer(1.0 + low + 0.001)
    assert n.health_of("n1") is MemberHealth.FAILED
    events = [x for x in n.drain() if isinstance(x, MemberEvent) and x.member.name == "n1"]
    assert events[-1].kind is EventKind.FAILED
    assert high == 6 * low


def test_suspicion_without_confirmation_waits_for_the_maximum() -> None:
    n = node("a", A, LAN)
    n.bootstrap_members(
        [PushNodeState(f"n{i}", "h", 1000 + i, {}, 0, WireState.ALIVE, False) for i in range(99)],
        0.0,
    )
    n.receive(packet(Suspect(0, "n1", "n2")), src_addr=B, now=0.0)
    low, high = suspicion_timeouts(LAN, 100)
    n.handle_timer(low + 1)
    assert n.health_of("n1") is MemberHealth.SUSPECT
    n.handle_timer(high + 0.01)
    assert n.health_of("n1") is MemberHealth.FAILED


# -- incarnations, refutation, conflicts ------------------------------------------------


def test_suspect_and_dead_about_self_are_refuted() -> None:
    a, _ = pair()
    a.receive(packet(Suspect(0, "a", "b")), src_addr=B, now=1.0)
    assert a.incarnation == 1
    assert a.awareness == 1
    a.receive(packet(Dead(1, "a", "b")), src_addr=B, now=1.1)
    assert a.incarnation == 2
    a.receive(packet(Suspect(0, "a", "b")), src_addr=B, now=1.2)  # stale
    assert a.incarnation == 2
    a.receive(packet(Ack(999)), src_addr=B, now=1.3)
    a.handle_timer(1.3)
    alive = [m for _, ms in sent(a.drain()) for m in ms if isinstance(m, Alive) and m.node == "a"]
    assert alive and alive[-1].incarnation == 2


def test_alive_with_higher_incarnation_clears_suspicion_and_dead() -> None:
    a, _ = pair()
    a.receive(packet(Suspect(0, "b", "c")), src_addr=C, now=1.0)
    assert a.health_of("b") is MemberHealth.SUSPECT
    a.receive(packet(Alive(0, "b", B[0], B[1], {})), src_addr=B, now=1.1)
    assert a.health_of("b") is MemberHealth.SUSPECT  # same incarnation does not refute
    a.receive(packet(Alive(1, "b", B[0], B[1], {})), src_addr=B, now=1.2)
    assert a.health_of("b") is MemberHealth.ALIVE
    a.receive(packet(Dead(1, "b", "c")), src_addr=C, now=1.3)
    assert a.health_of("b") is MemberHealth.FAILED
    a.receive(packet(Suspect(1, "b", "c")), src_addr=C, now=1.4)  # no going back
    assert a.health_of("b") is MemberHealth.FAILED
    a.receive(packet(Alive(2, "b", B[0], B[1], {})), src_addr=B, now=1.5)
    assert a.health_of("b") is MemberHealth.ALIVE
    kinds = [x.kind for x in a.drain() if isinstance(x, MemberEvent)]
    assert kinds == [EventKind.FAILED, EventKind.JOIN]


def test_a_name_claimed_from_another_address_is_refused() -> None:
    a, _ = pair()
    before = snapshot(a)
    a.receive(packet(Alive(5, "b", "10.9.9.9", 1, {})), src_addr=C, now=1.0)
    assert snapshot(a) == before
    assert a.counters["dropped_name_conflict"] == 1
    # Our own name from elsewhere: refused, and we assert ourselves.
    a.receive(packet(Alive(3, "a", "10.9.9.9", 1, {})), src_addr=C, now=1.0)
    assert a.local_member().addr == A[0]
    assert a.incarnation == 4


def test_a_dead_member_may_come_back_from_a_new_address() -> None:
    a, _ = pair()
    a.receive(packet(Dead(0, "b", "c")), src_addr=C, now=1.0)
    a.receive(packet(Alive(1, "b", "10.9.9.9", 1, {})), src_addr=C, now=2.0)
    m = a.member("b")
    assert m is not None and m.addr == "10.9.9.9" and m.status is MemberStatus.ALIVE


# -- bad input ----------------------------------------------------------------------------


@given(st.binary(max_size=1600))
def test_garbage_changes_nothing_and_is_counted(data: bytes) -> None:
    a, _ = pair()
    before = snapshot(a)
    try:
        decode_packet(data)
    except RemoteProtocolError:
        valid = False
    else:
        valid = len(data) <= LOCAL.max_packet_size
    a.receive(data, src_addr=B, now=1.0)
    if not valid:
        assert snapshot(a) == before
        dropped = a.counters.get("dropped_malformed", 0) + a.counters.get("dropped_oversized", 0)
        assert dropped == 1


def test_oversized_undecryptable_and_replayed_packets_are_dropped() -> None:
    ring = Keyring(b"k" * 16)
    a = node("a", A, keyring=ring)
    a.bootstrap_members([PushNodeState("b", B[0], B[1], {}, 3, WireState.ALIVE, False)], 0.0)
    a.drain()
    before = snapshot(a)
    a.receive(b"\x00" * 1401, src_addr=B, now=1.0)
    a.receive(packet(Alive(9, "b", B[0], B[1], {})), src_addr=B, now=1.0)  # plaintext
    other = Keyring(b"z" * 16)
    a.receive(
        other.encrypt(packet(Alive(9, "b", B[0], B[1], {})), b"\x01" * 12), src_addr=B, now=1.0
    )
    replay = ring.encrypt(packet(Alive(1, "b", B[0], B[1], {"old": "1"})), b"\x02" * 12)
    a.receive(replay, src_addr=B, now=1.0)
    assert snapshot(a) == before
    assert a.counters["dropped_oversized"] == 1
    assert a.counters["dropped_undecryptable"] == 2
    assert a.counters["stale_messages"] == 1
    assert a.stats()["encrypted"] == "true"


def test_streams_reject_garbage_and_unknown_replies() -> None:
    a, _ = pair()
    assert a.receive_stream(b"\xff\xff", src_addr=B, now=1.0) is None
    assert a.receive_stream(cbor2.dumps([3, 1]), src_addr=B, now=1.0) is None  # an Ack
    assert a.receive_stream(cbor2.dumps([1, 1, "x", "b"]), src_addr=B, now=1.0) is None
    a.receive_stream_reply(12345, b"", now=1.0)
    assert a.counters["dropped_malformed"] == 1
    assert a.counters["dropped_unexpected_stream"] == 1
    assert a.counters["dropped_misdirected"] == 1
    assert a.counters["dropped_unexpected_reply"] == 1


def test_event_flood_is_bounded() -> None:
    cfg = dataclasses.replace(LOCAL, max_events_per_ltime=8, event_buffer_size=16)
    a = node("a", A, cfg)
    for i in range(200):
        msg = UserEventMessage(3, f"e{i}", b"")
        a.receive(packet(msg), src_addr=B, now=1.0)
    delivered = [x for x in a.drain() if isinstance(x, UserEvent)]
    assert len(delivered) == 8
    assert a.counters["events_dropped_flood"] == 192
    for t in range(100, 400):
        a.receive(packet(UserEventMessage(t, "x", b"")), src_addr=B, now=1.0)
    assert len(a._events) <= 16
    a.receive(packet(UserEventMessage(5, "late", b"")), src_addr=B, now=1.0)
    assert a.counters["events_too_old"] == 1


def test_broadcast_queue_is_bounded_and_packets_stay_under_the_limit() -> None:
    cfg = dataclasses.replace(LOCAL, max_broadcast_queue=64)
    a = node("a", A, cfg)
    big = {f"k{i}": "v" * 20 for i in range(15)}
    for i in range(300):
        a.receive(packet(Alive(0, f"m{i}", "10.2.0.1", 2000 + i, big)), src_addr=B, now=0.5)
    assert len(a._queue) <= 64
    a.handle_timer(0.6)
    a.handle_timer(1.0)
    out = [x for x in a.drain() if isinstance(x, SendPacket)]
    assert out and all(len(p.data) <= cfg.max_packet_size for p in out)
    assert max(len(p.data) for p in out) > 1000  # packets are actually filled


# -- user events, tags, leave, join, stats ---------------------------------------------------


def test_user_events_are_delivered_once_with_lamport_clock() -> None:
    a, b = pair()
    a.send_user_event("deploy", b"v1", 0.1)
    mine = [x for x in a.drain() if isinstance(x, UserEvent)]
    assert mine == [UserEvent(ltime=0, name="deploy", payload=b"v1")]
    msg = UserEventMessage(0, "deploy", b"v1")
    for _ in range(3):
        b.receive(packet(msg), src_addr=A, now=0.2)
    assert len([x for x in b.drain() if isinstance(x, UserEvent)]) == 1
    b.send_user_event("next", b"", 0.3)
    assert [x.ltime for x in b.drain() if isinstance(x, UserEvent)] == [1]
    with pytest.raises(LocalProtocolError):
        a.send_user_event("big", b"x" * 600, 0.4)
    with pytest.raises(LocalProtocolError):
        a.send_user_event("", b"", 0.4)


def test_set_tags_bumps_incarnation_and_is_limited() -> None:
    a, b = pair()
    a.set_tags({"role": "dkron"}, 1.0)
    assert a.incarnation == 1
    updates = [x for x in a.drain() if isinstance(x, MemberEvent)]
    assert updates[-1].kind is EventKind.UPDATE
    b.receive(packet(Alive(1, "a", A[0], A[1], {"role": "dkron"})), src_addr=A, now=1.1)
    assert b.member("a").tags == {"role": "dkron"}  # type: ignore[union-attr]
    assert [x.kind for x in b.drain() if isinstance(x, MemberEvent)] == [EventKind.UPDATE]
    a.set_tags({"role": "dkron"}, 1.2)
    assert a.incarnation == 1
    with pytest.raises(LocalProtocolError):
        a.set_tags({"k": "v" * 600}, 1.3)


def test_leave_goes_through_leaving_then_left_then_stops() -> None:
    a, b = pair()
    a.leave(1.0)
    assert a.local_member().status is MemberStatus.LEAVING
    a.leave(1.0)  # idempotent
    now = 1.0
    while not a.stopped:
        nxt = a.next_deadline()
        assert nxt is not None
        now = nxt
        a.handle_timer(now)
        for addr, msgs in sent(a.drain()):
            if addr == B:
                b.receive(packet(*msgs), src_addr=A, now=now)
    assert now - 1.0 <= 2 * LOCAL.leave_broadcast_timeout + 1
    assert b.health_of("a") is MemberHealth.LEFT
    statuses = [x.new for x in b.drain() if isinstance(x, StateChange) and x.subject == "a"]
    assert statuses == [MemberHealth.LEAVING, MemberHealth.LEFT]
    assert a.next_deadline() is None
    with pytest.raises(LocalProtocolError):
        a.set_tags({}, now)
    a.receive(packet(Ping(1, "a", "b")), src_addr=B, now=now)
    assert a.drain() == []


def test_intent_for_a_failed_member_turns_it_left() -> None:
    a, _ = pair()
    a.receive(packet(Dead(0, "b", "c")), src_addr=C, now=1.0)
    assert a.member("b").status is MemberStatus.FAILED  # type: ignore[union-attr]
    a.receive(packet(LeaveIntent(1, "b", 0)), src_addr=C, now=1.1)
    assert a.member("b").status is MemberStatus.LEFT  # type: ignore[union-attr]
    assert a.stats()["left"] == "1" and a.stats()["failed"] == "0"


def test_stale_leave_intent_about_self_is_refuted() -> None:
    a, _ = pair()
    a.receive(packet(LeaveIntent(4, "a", 0)), src_addr=B, now=1.0)
    assert a.incarnation == 1
    assert a.local_member().status is MemberStatus.ALIVE


def test_join_reports_unreachable_seeds() -> None:
    a = node("a", A)
    a.join([B, C], 0.0)
    streams = [x for x in a.drain() if isinstance(x, SendStream)]
    assert {s.addr for s in streams} == {B, C}
    a.stream_failed(streams[0].stream_id, now=0.5)
    b = node("b", B)
    reply = b.receive_stream(streams[1].data, src_addr=A, now=0.5)
    assert reply is not None
    a.receive_stream_reply(streams[1].stream_id, reply, now=0.6)
    results = [x for x in a.drain() if isinstance(x, JoinResult)]
    assert results == [JoinResult(contacted=1, failed=1)]
    assert a.health_of("b") is MemberHealth.ALIVE and b.health_of("a") is MemberHealth.ALIVE
    with pytest.raises(LocalProtocolError):
        a.join([], 1.0)


def test_stream_timeout_is_a_failure() -> None:
    a = node("a", A)
    a.join([B], 0.0)
    a.drain()
    a.handle_timer(LOCAL.tcp_timeout + 0.1)
    assert [x for x in a.drain() if isinstance(x, JoinResult)] == [
        JoinResult(contacted=0, failed=1)
    ]


def test_stats_have_dkrons_serf_keys_as_strings() -> None:
    a, _ = pair()
    stats = a.stats()
    assert set(stats) == {
        "members",
        "failed",
        "left",
        "health_score",
        "member_time",
        "event_time",
        "query_time",
        "intent_queue",
        "event_queue",
        "query_queue",
        "encrypted",
        "coordinate_resets",
    }
    assert all(isinstance(v, str) for v in stats.values())
    assert stats["members"] == "2" and stats["encrypted"] == "false"


def test_leave_complete_is_reported() -> None:
    a = node("a", A)
    a.leave(0.0)
    now = 0.0
    out: list[SwimAction] = []
    while not a.stopped:
        now = a.next_deadline() or now
        a.handle_timer(now)
        out += a.drain()
    assert LeaveComplete(name="a") in out
    assert not math.isinf(now)


def test_invalid_local_member_is_refused() -> None:
    with pytest.raises(LocalProtocolError):
        node("", A)
    with pytest.raises(LocalProtocolError):
        SwimNode("a", LOCAL, rng=random.Random(1), now=0.0, addr="h", port=1, tags={"k": "v" * 600})


# -- the shortcuts of the hot paths give the plain answers ------------------------------


class _ModelQueue:
    """The broadcast queue as first written: sort everything by (transmits, -order)."""

    def __init__(self) -> None:
        self.items: dict[object, list[object]] = {}  # key -> [transmits, order, data]
        self.order = 0

    def enqueue(self, key: object, data: bytes) -> None:
        self.order += 1
        self.items[key] = [0, self.order, data]

    def take(self, budget: int, limit: int) -> list[bytes]:
        out: list[bytes] = []
        ranked = sorted(self.items.items(), key=lambda kv: (kv[1][0], -kv[1][1]))  # type: ignore[operator]
        for key, item in ranked:
            data = item[2]
            assert isinstance(data, bytes)
            if len(data) > budget:
                if budget < 16:
                    break
                continue
            budget -= len(data)
            out.append(data)
            item[0] += 1  # type: ignore[operator]
            if item[0] >= limit:  # type: ignore[operator]
                del self.items[key]
        return out


@given(
    st.lists(
        st.one_of(
            st.tuples(st.just("put"), st.integers(0, 12), st.integers(1, 400)),
            st.tuples(st.just("take"), st.integers(0, 1400), st.just(0)),
        ),
        max_size=80,
    )
)
def test_broadcast_queue_matches_the_sorted_model(ops: list[tuple[str, int, int]]) -> None:
    a = node("a", A, LAN)
    while a._qlist:  # our own alive announcement
        a._take_broadcasts(10_000)
    model = _ModelQueue()
    limit = retransmit_limit(LAN, 1)
    for op, x, y in ops:
        if op == "put":
            data = bytes([x]) * y
            a._enqueue(("k", x), data)
            model.enqueue(("k", x), data)
        else:
            assert a._take_broadcasts(x) == model.take(x, limit)
        assert set(a._queue) == set(model.items)
        assert a._qdata == [b.data for b in a._qlist]
        assert a._qbytes == sum(len(b.data) for b in a._qlist)


def test_pushed_state_is_the_codec_encoding_of_the_member_table() -> None:
    from dkron.proto_sansio.swim_wire import PushPull, encode_message

    a = node("a", A, LAN)
    a.bootstrap_members(
        [PushNodeState(f"n{i}", "h", 1000 + i, {}, 0, WireState.ALIVE, False) for i in range(5)],
        0.0,
    )

    def expected() -> bytes:
        ms = list(a._members.values())
        return encode_message(
            PushPull(
                False,
                tuple(m.name for m in ms),
                tuple(m.addr for m in ms),
                tuple(m.port for m in ms),
                tuple(m.tags for m in ms),
                tuple(m.incarnation for m in ms),
                tuple(int(WireState[m.state.name]) for m in ms),
                tuple(m.leaving for m in ms),
                a._member_ltime,
                a._event_ltime,
                (),
            )
        )

    assert a._local_state(join=False) == expected()
    a.receive(packet(Suspect(0, "n1", "n2")), src_addr=B, now=1.0)  # state only
    assert a._local_state(join=False) == expected()
    a.receive(packet(Alive(1, "n2", "h", 1002, {"role": "x"})), src_addr=B, now=1.0)  # tags
    assert a._local_state(join=False) == expected()
    a.receive(packet(Alive(0, "new", "h", 9, {})), src_addr=B, now=1.0)  # a new member
    assert a._local_state(join=False) == expected()
    a.receive(packet(LeaveIntent(3, "n3", 0)), src_addr=B, now=1.0)
    a.set_tags({"dc": "x"}, now=1.0)
    assert a._local_state(join=False) == expected()


# Rows where the peer's view differs from ours (often none: a settled cluster).
_CHANGED = st.dictionaries(
    st.integers(0, 39),
    st.tuples(st.integers(0, 3), st.integers(0, 3), st.booleans()),
    max_size=4,
)


@given(_CHANGED, st.sets(st.integers(0, 38), max_size=5))
def test_a_push_pull_in_our_layout_merges_as_the_full_path_does(
    changed: dict[int, tuple[int, int, bool]], suspected: set[int]
) -> None:
    """A push-pull whose layout bytes are ours is decoded against our columns, and one
    whose rows all equal ours is not visited row by row: the outcome (member table and
    every action, refutations and confirmations included) must be the full path's.
    White-box: the reference decodes the same bytes without our layout."""
    peers = [
        PushNodeState(f"m{i:02d}", f"10.1.0.{i}", 7946, {"role": "w"}, 1, WireState.ALIVE, False)
        for i in range(39)
    ]

    def fresh() -> SwimNode:
        n = node("a", A, LAN)
        n.bootstrap_members(peers, 0.0)
        for i in sorted(suspected):  # suspicions we hold: merging one confirms it
            n.receive(packet(Suspect(1, f"m{i:02d}", "m38")), src_addr=B, now=0.5)
        n.drain()
        return n

    fast, slow = fresh(), fresh()
    ours = decode_stream(fast._local_state(join=False))
    assert isinstance(ours, PushPull)
    held = list(zip(ours.incarnations, ours.states, ours.leaving, strict=True))
    merged = [changed.get(i, h) for i, h in enumerate(held)]
    theirs = dataclasses.replace(
        ours,
        incarnations=tuple(r[0] for r in merged),
        states=tuple(r[1] for r in merged),
        leaving=tuple(r[2] for r in merged),
    )
    data = encode_message(theirs)
    known = fast._current_layout()[1]
    decoded = decode_stream(data, lambda: known)
    assert isinstance(decoded, PushPull) and decoded.names is known.names
    fast._merge(decoded, 1.0)
    reference = decode_stream(data)
    assert isinstance(reference, PushPull) and reference == decoded
    slow._merge(reference, 1.0)
    assert fast.members() == slow.members()
    assert fast.drain() == slow.drain()
    # What was queued for gossip and when suspicions expire show later.
    for t in (1.3, 2.0, 8.0, 30.0):
        fast.handle_timer(t)
        slow.handle_timer(t)
        assert fast.drain() == slow.drain()
        assert fast.members() == slow.members()


_VARIANT = st.dictionaries(
    st.integers(0, 7),
    st.sampled_from(["tags", "port", "addr", "gone"]),
    max_size=3,
)


@given(st.lists(_VARIANT, min_size=1, max_size=4))
def test_members_sharing_a_layout_memo_send_what_each_would_encode_alone(
    variants: list[dict[int, str]],
) -> None:
    """Nodes of one process share encoded push-pull layouts (``layout_cache``) only
    for equal columns: every node's push-pull, whatever the others put in the memo
    first, is byte for byte the one it encodes with no memo."""
    memo: dict[tuple[str, ...], list[KnownLayout]] = {}

    def table(variant: dict[int, str]) -> list[PushNodeState]:
        rows = []
        for i in range(8):
            change = variant.get(i)
            if change == "gone":
                continue
            rows.append(
                PushNodeState(
                    f"m{i}",
                    f"10.2.0.{i + (100 if change == 'addr' else 0)}",
                    7000 if change == "port" else 7946,
                    {"role": "changed" if change == "tags" else "w"},
                    1,
                    WireState.ALIVE,
                    False,
                )
            )
        return rows

    def push_pull(variant: dict[int, str], **kw: object) -> bytes:
        n = node("me", A, LAN, **kw)
        n.bootstrap_members(table(variant), 0.0)
        n.drain()
        n.start_push_pull(B, 1.0)
        (stream,) = [a for a in n.drain() if isinstance(a, SendStream)]
        return stream.data

    for variant in variants + variants:  # the second round finds them all in the memo
        assert push_pull(variant, layout_cache=memo) == push_pull(variant)


_HEALTH = st.sampled_from(list(MemberHealth))


@given(
    addr=st.tuples(st.text(max_size=8), st.integers(0, 65535)),
    data=st.binary(max_size=32),
    subject=st.text(max_size=8),
    old=_HEALTH,
    new=_HEALTH,
    inc=st.integers(0, 2**32),
    t=st.floats(0, 1e6),
)
def test_actions_built_slot_by_slot_are_the_constructors_frozen_records(  # noqa: PLR0917
    addr: tuple[str, int],
    data: bytes,
    subject: str,
    old: MemberHealth,
    new: MemberHealth,
    inc: int,
    t: float,
) -> None:
    """The datagram and state-change actions (and the simulator's transition
    records) filled through a plain twin are what their constructors build:
    equal, of the exact class, hashing alike and still frozen."""
    from dkron.proto_sansio import swim
    from dkron.testing.swim_sim import SwimCluster, Transition

    built: list[tuple[object, object]] = [
        (swim._send_packet(addr, data), SendPacket(addr=addr, data=data)),
        (
            swim._state_change(subject, old, new, inc),
            StateChange(subject=subject, old=old, new=new, incarnation=inc),
        ),
    ]
    c = SwimCluster(1, record=True, check=False)
    c.loop.now = t
    c.record_change("obs", StateChange(subject=subject, old=old, new=new, incarnation=inc))
    built.append((c.transitions[-1], Transition(t, "obs", subject, old, new, inc)))
    for fast, plain in built:
        assert type(fast) is type(plain)
        assert fast == plain
        assert hash(fast) == hash(plain)
        assert repr(fast) == repr(plain)
        with pytest.raises(dataclasses.FrozenInstanceError):
            setattr(fast, dataclasses.fields(plain)[0].name, None)  # type: ignore[arg-type]
