"""RPC and gossip transport over real loopback sockets."""

from __future__ import annotations

import datetime
import ipaddress
import logging
import random
import socket
import ssl
import struct
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import trio
import trio.testing
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from dkron.io_trio import rpc
from dkron.io_trio.net import (
    HELLO_CODEC,
    PROTOCOL_VERSION,
    AddressError,
    Channel,
    ClockedHello,
    GossipEndpoint,
    Hello,
    Incoming,
    RpcConfig,
    RpcEndpoint,
    advertise_addr,
    backoff_delay,
    local_ipv4_addresses,
    parse_addr,
    private_ipv4,
    resolve_bind_addr,
)
from dkron.proto_sansio.errors import LocalProtocolError
from dkron.proto_sansio.framing import FrameDecoder, encode_frame
from dkron.proto_sansio.swim import (
    LOCAL,
    Address,
    EventKind,
    JoinResult,
    MemberEvent,
    SwimAction,
    SwimNode,
    UserEvent,
)

LOOPBACK: Address = ("127.0.0.1", 0)


def fast(**kw: object) -> RpcConfig:
    base: dict[str, object] = {
        "backoff_base": 0.01,
        "backoff_max": 0.05,
        "connect_timeout": 2.0,
        "hello_timeout": 2.0,
        "stall_timeout": 0.5,
    }
    base.update(kw)
    return RpcConfig(**base)  # type: ignore[arg-type]


async def start_rpc(
    nursery: trio.Nursery,
    name: str,
    config: RpcConfig | None = None,
    *,
    listen: Address = LOOPBACK,
    scope: trio.CancelScope | None = None,
    tls: dict[str, ssl.SSLContext | None] | None = None,
) -> RpcEndpoint:
    ctx = tls or {}
    ep = RpcEndpoint(
        name,
        rng=random.Random(name),
        config=config or fast(),
        server_ssl=ctx.get("server_ssl"),
        client_ssl=ctx.get("client_ssl"),
    )

    async def serve(*, task_status: trio.TaskStatus[Address]) -> None:
        with scope or trio.CancelScope():
            await ep.run(listen, task_status=task_status)

    await nursery.start(serve)
    return ep


def hello_frame(name: str, version: int = PROTOCOL_VERSION) -> bytes:
    return encode_frame(HELLO_CODEC.encode(Hello(version, name)))


async def read_frames(stream: trio.abc.ReceiveStream, decoder: FrameDecoder, n: int) -> list[bytes]:
    out: list[bytes] = []
    while len(out) < n:
        data = await stream.receive_some(1 << 20)
        assert data, "stream ended early"
        out.extend(decoder.feed(bytes(data)))
    assert len(out) == n
    return out


async def closed_by_peer(stream: trio.SocketStream) -> bool:
    try:
        return await stream.receive_some(100) == b""
    except trio.BrokenResourceError:
        return True


def refused_addr() -> Address:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return ("127.0.0.1", port)


def rpc_log(caplog: pytest.LogCaptureFixture) -> list[tuple[int, str]]:
    return [(r.levelno, r.getMessage()) for r in caplog.records if r.name == "dkron.rpc"]


async def eventually(cond: Callable[[], bool]) -> None:
    """For conditions only real network time produces (connection attempts, handshakes)."""
    while not cond():  # noqa: ASYNC110 - counters are plain ints, there is no event to wait on
        await trio.sleep(0.005)


# -- addresses ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("10.1.2.3", ("10.1.2.3", 8946)),
        ("10.1.2.3:7000", ("10.1.2.3", 7000)),
        ("[::1]:7000", ("::1", 7000)),
        ("[::1]", ("::1", 8946)),
        ("::1", None),
        ("0.0.0.0:0", ("0.0.0.0", 0)),
        (" 127.0.0.1:1 ", ("127.0.0.1", 1)),
    ],
)
def test_parse_addr(value: str, expected: Address | None) -> None:
    if expected is None:
        with pytest.raises(AddressError, match=r"\[addr\]:port"):
            parse_addr(value, default_port=8946)
    else:
        assert parse_addr(value, default_port=8946) == expected


@pytest.mark.parametrize(
    "value", ["host.example:80", "10.0.0.1:", "10.0.0.1:65536", "10.0.0.1:x", "[::1", "[::1]x", ""]
)
def test_parse_addr_errors_name_the_value(value: str) -> None:
    with pytest.raises(AddressError) as info:
        parse_addr(value, default_port=1)
    assert repr(value) in str(info.value)


def test_bind_defaults_and_templates() -> None:
    assert resolve_bind_addr() == ("0.0.0.0", 8946)
    assert resolve_bind_addr(":7946") == ("0.0.0.0", 7946)
    assert resolve_bind_addr("{{ GetPrivateIP }}:1", candidates=["8.8.8.8", "192.168.1.5"]) == (
        "192.168.1.5",
        1,
    )
    assert resolve_bind_addr("{{GetPrivateIP}}", candidates=["8.8.8.8"]) == ("127.0.0.1", 8946)
    with pytest.raises(AddressError, match="no-such-if"):
        resolve_bind_addr('{{ GetInterfaceIP "no-such-if" }}')
    assert resolve_bind_addr('{{ GetInterfaceIP "lo" }}:5') == ("127.0.0.1", 5)


def test_private_ip_selection_and_advertise_fallback() -> None:
    assert private_ipv4(["127.0.0.1", "169.254.1.1", "8.8.8.8"]) is None
    assert private_ipv4(["8.8.8.8", "100.64.0.9", "10.0.0.1"]) == "100.64.0.9"
    assert private_ipv4(["172.31.255.1"]) == "172.31.255.1"
    assert private_ipv4(["172.32.0.1"]) is None
    bind = ("0.0.0.0", 8946)
    assert advertise_addr(bind, candidates=["10.0.0.7"]) == ("10.0.0.7", 8946)
    assert advertise_addr(bind, candidates=["8.8.8.8"]) == ("127.0.0.1", 8946)
    assert advertise_addr(("::", 9), candidates=[]) == ("127.0.0.1", 9)
    assert advertise_addr(("10.9.9.9", 1), candidates=["10.0.0.7"]) == ("10.9.9.9", 1)
    assert advertise_addr(bind, "8.8.8.8") == ("8.8.8.8", 8946)
    assert advertise_addr(bind, "[fe80::1]:77") == ("fe80::1", 77)
    with pytest.raises(AddressError, match="'nope'"):
        advertise_addr(bind, "nope")
    for ip in local_ipv4_addresses():
        assert isinstance(ipaddress.ip_address(ip), ipaddress.IPv4Address)
    assert "127.0.0.1" in local_ipv4_addresses()


def test_backoff_doubles_caps_and_jitters() -> None:
    rng = random.Random(7)
    delays = [backoff_delay(i, base=0.1, cap=2.0, jitter=0.2, rng=rng) for i in range(10)]
    for i, d in enumerate(delays):
        nominal = min(2.0, 0.1 * 2**i)
        assert 0.8 * nominal <= d <= 1.2 * nominal
    assert len(set(delays)) == len(delays)
    again = random.Random(7)
    assert delays == [backoff_delay(i, base=0.1, cap=2.0, jitter=0.2, rng=again) for i in range(10)]
    assert backoff_delay(10_000, base=0.1, cap=2.0, jitter=0.0, rng=rng) == 2.0


def test_config_validation() -> None:
    with pytest.raises(ValueError, match="max_bulk_frame"):
        RpcConfig(max_bulk_frame=0)
    with pytest.raises(ValueError, match="bulk_queue"):
        RpcConfig(bulk_queue=0)
    with pytest.raises(ValueError, match="backoff_max"):
        RpcConfig(backoff_base=1.0, backoff_max=0.5)
    with pytest.raises(ValueError, match="positive"):
        RpcConfig(connect_timeout=0)
    with pytest.raises(ValueError, match="node name"):
        Hello(1, "")


# -- RPC ---------------------------------------------------------------------------------


async def test_three_endpoints_exchange_frames_on_every_channel() -> None:
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            eps = {name: await start_rpc(nursery, name) for name in "abc"}
            for x, ex in eps.items():
                for y, ey in eps.items():
                    if x != y:
                        assert ey.addr is not None
                        ex.set_peer(y, ey.addr)
            for x, ex in eps.items():
                for y in eps:
                    for ch in Channel:
                        if x != y:
                            assert ex.send(y, ch, f"{x}>{y}:{ch.name}".encode())
            for y, ey in eps.items():
                for ch in Channel:
                    got = {await ey.inbox(ch).receive() for _ in range(2)}
                    want = {
                        Incoming(peer=x, channel=ch, body=f"{x}>{y}:{ch.name}".encode())
                        for x in eps
                        if x != y
                    }
                    assert got == want
                assert ey.counters["frames_received"] == 2 * len(Channel)
            assert eps["a"].peers() == {"b": eps["b"].addr, "c": eps["c"].addr}
            assert eps["a"].connected("b") and not eps["a"].connected("zz")
            nursery.cancel_scope.cancel()


async def test_the_hello_tells_the_receiver_how_far_its_clock_runs_ahead(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A worker judges a dispatch's start-by time (on the leader's clock) with
    this offset, so that skew between the two does not refuse or admit it;
    both ends say so once when the clocks disagree by more than CLOCK_WARN."""
    caplog.set_level(logging.INFO, logger="dkron.rpc")
    ahead = [60 * 10**9]  # b's clock runs a minute ahead

    def said(text: str) -> list[str]:
        return [r.getMessage() for r in caplog.records if text in r.getMessage()]

    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            a = await start_rpc(nursery, "a")
            b = RpcEndpoint(
                "b",
                rng=random.Random("b"),
                config=fast(),
                wall_ns=lambda: time.time_ns() + ahead[0],
            )
            await nursery.start(b.run, LOOPBACK)
            assert b.addr is not None and a.addr is not None
            assert b.clock_offset("a") == 0  # not known before a connects
            a.set_peer("b", b.addr)
            assert a.send("b", Channel.RAFT, b"x")
            assert (await b.inbox(Channel.RAFT).receive()).peer == "a"
            assert abs(b.clock_offset("a") - 60 * 10**9) < 10**9
            b.set_peer("a", a.addr)  # the other way: a hears b's clock
            assert b.send("a", Channel.RAFT, b"y")
            await a.inbox(Channel.RAFT).receive()
            assert abs(a.clock_offset("b") + 60 * 10**9) < 10**9
            assert len(said("a's wall clock is 60.0 s behind this node's")) == 1
            assert len(said("b's wall clock is 60.0 s ahead of this node's")) == 1
            assert 59 < a.max_clock_offset() < 61 and 59 < b.max_clock_offset() < 61
            # b's clock is put right; a's next connection says hello with it in step.
            ahead[0] = 0
            a.remove_peer("b")
            a.set_peer("b", b.addr)
            assert a.send("b", Channel.RAFT, b"z")
            await b.inbox(Channel.RAFT).receive()
            assert abs(b.clock_offset("a")) < 10**9
            assert said("a's wall clock agrees with this node's again")
            assert len(said("wall clock is 60.0 s")) == 2  # nothing more was reported
            nursery.cancel_scope.cancel()


async def test_peer_restart_reconnects_with_backoff(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="dkron.rpc")
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            a = await start_rpc(nursery, "a")
            first = trio.CancelScope()
            b = await start_rpc(nursery, "b", scope=first)
            assert b.addr is not None
            a.set_peer("b", b.addr)
            assert a.send("b", Channel.RAFT, b"one")
            assert (await b.inbox(Channel.RAFT).receive()).body == b"one"
            # Up longer than backoff_max: a connection closed sooner counts as refused.
            await trio.sleep(0.1)
            first.cancel()
            with pytest.raises(trio.EndOfChannel):  # a stopped endpoint closes its inboxes
                await b.inbox(Channel.RAFT).receive()
            await a.wait_connected("b", connected=False)
            assert a.send("b", Channel.RAFT, b"two")  # queued while the peer is away
            await eventually(lambda: a.counters["connect_failed"] >= 2)
            # Reported once when it starts failing, not at every attempt.
            (down,) = rpc_log(caplog)
            host, port = b.addr
            assert down == (
                logging.WARNING,
                f"cannot reach b's RPC port at {host}:{port}: Connection refused; "
                "retrying (what is sent to it waits)",
            )
            b2 = await start_rpc(nursery, "b", listen=b.addr)
            assert (await b2.inbox(Channel.RAFT).receive()).body == b"two"
            await a.wait_connected("b")
            assert a.counters["connects"] == 2
            assert a.counters["disconnects"] == 1
            # Once the connection has lasted (the stall timeout), not as soon as it opens.
            await eventually(lambda: rpc_log(caplog)[-1][0] == logging.INFO)
            _, back = rpc_log(caplog)[-1]
            assert back.startswith(f"reached b's RPC port at {host}:{port} again, after ")
            nursery.cancel_scope.cancel()


async def test_a_stalled_connection_is_dropped_reported_and_dialled_again(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A peer that accepts but never acknowledges (a path gone silent, a frozen
    process) must not hold the connection, and what is queued behind it, for
    the kernel's quarter of an hour of retransmissions."""
    caplog.set_level(logging.INFO, logger="dkron.rpc")
    held: list[trio.SocketStream] = []
    (listener,) = await trio.open_tcp_listeners(0, host="127.0.0.1")
    with trio.fail_after(15):
        async with listener, trio.open_nursery() as nursery:

            async def accept_and_never_read() -> None:
                while True:
                    held.append(await listener.accept())

            nursery.start_soon(accept_and_never_read)
            a = await start_rpc(nursery, "a", fast(stall_timeout=0.3))
            host, port = listener.socket.getsockname()[:2]
            a.set_peer("b", (host, port))
            for _ in range(200):  # 12.8 MB: more than both kernels' buffers hold
                assert a.send("b", Channel.RAFT, b"x" * 65536)
            await eventually(lambda: a.counters["disconnects"] >= 1)
            await eventually(lambda: len(held) >= 2)  # dialled again
            (first, *_) = rpc_log(caplog)
            assert first == (
                logging.WARNING,
                f"cannot reach b's RPC port at {host}:{port}: the connection stalled "
                "(nothing acknowledged for 0.3 s); retrying (what is sent to it waits)",
            )
            nursery.cancel_scope.cancel()
    for stream in held:
        stream.socket.close()


async def test_an_unreachable_peer_is_reported_again_less_and_less_often(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(rpc, "REPORT_FIRST", 0.1)
    caplog.set_level(logging.INFO, logger="dkron.rpc")
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            a = await start_rpc(nursery, "a")
            a.set_peer("b", refused_addr())
            await eventually(lambda: len(rpc_log(caplog)) >= 4)
            nursery.cancel_scope.cancel()
    first, *again = [r for r in caplog.records if r.name == "dkron.rpc"][:4]
    assert first.getMessage().startswith("cannot reach b's RPC port")
    assert all(r.getMessage().startswith("still cannot reach b's RPC port") for r in again)
    assert "Connection refused" in again[-1].getMessage()
    # Each report waits as long as the failure had lasted (at least REPORT_FIRST):
    # the third reminder comes at least 0.3 s after the first, though the
    # attempts go on every 50 ms.
    assert again[2].created - again[0].created >= 0.3
    assert a.counters["connect_failed"] > 8


async def test_control_frames_overtake_a_flooded_bulk_lane() -> None:
    """The writer is stuck in a full socket with the bulk lane full; control goes next."""
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            listener = (await trio.open_tcp_listeners(0, host="127.0.0.1"))[0]
            a = await start_rpc(nursery, "a", fast(bulk_queue=8))
            a.set_peer("r", listener.socket.getsockname())
            conn = await listener.accept()
            decoder = FrameDecoder()
            (hello,) = await read_frames(conn, decoder, 1)
            got = HELLO_CODEC.decode(hello)
            assert isinstance(got, ClockedHello)
            assert (got.version, got.node) == (PROTOCOL_VERSION, "a")
            chunk = b"x" * a.config.max_bulk_frame
            accepted = 0
            while True:
                while a.send("r", Channel.OUTPUT, chunk):
                    accepted += 1
                await trio.testing.wait_all_tasks_blocked()
                if not a.send("r", Channel.OUTPUT, chunk):
                    break  # nothing drained while every task ran: the writer is blocked
                accepted += 1
            assert a.counters["dropped_queue_full:output"] >= 2
            for i in range(3):
                assert a.send("r", Channel.RAFT, b"ctl%d" % i)
            frames = await read_frames(conn, decoder, accepted + 3)
            kinds = [f[:1] + (f[1:] if f[0] == Channel.RAFT else b"") for f in frames]
            expected = (
                [bytes([Channel.OUTPUT])] * (accepted - 8)
                + [bytes([Channel.RAFT]) + b"ctl%d" % i for i in range(3)]
                + [bytes([Channel.OUTPUT])] * 8
            )
            assert kinds == expected
            await conn.aclose()
            await listener.aclose()
            nursery.cancel_scope.cancel()


async def test_bounded_queues_drop_and_count() -> None:
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            a = await start_rpc(nursery, "a", fast(control_queue=5, bulk_queue=3))
            b = await start_rpc(nursery, "b", fast(inbox_size=4))
            a.set_peer("away", refused_addr())
            assert [a.send("away", Channel.RAFT, b"r") for _ in range(7)] == [True] * 5 + [
                False
            ] * 2
            assert [a.send("away", Channel.OUTPUT, b"o") for _ in range(4)] == [True] * 3 + [False]
            assert a.counters["dropped_queue_full:raft"] == 2
            assert a.counters["dropped_queue_full:output"] == 1
            assert not a.send("nobody", Channel.RAFT, b"x")
            assert a.counters["dropped_unknown_peer"] == 1
            with pytest.raises(LocalProtocolError):
                a.send("away", Channel.OUTPUT, b"x" * (a.config.max_bulk_frame + 1))
            with pytest.raises(LocalProtocolError):
                a.send("away", 99, b"x")  # type: ignore[arg-type]

            # A producer that waits for room resumes once the peer becomes reachable.
            done = trio.Event()

            async def producer() -> None:
                assert await a.send_wait("away", Channel.OUTPUT, b"late")
                done.set()

            nursery.start_soon(producer)
            await trio.testing.wait_all_tasks_blocked()
            assert not done.is_set()
            assert b.addr is not None
            a.set_peer("away", b.addr)  # same name, new address: the queue is kept
            await done.wait()
            bodies = [(await b.inbox(Channel.OUTPUT).receive()).body for _ in range(4)]
            assert bodies == [b"o", b"o", b"o", b"late"]

            # The receiver's inbox is bounded too: overflow is dropped, never blocks the reader.
            # Control frames went first, so the five queued b"r" already met a 4-frame inbox.
            raft = b.inbox(Channel.RAFT)
            assert [raft.receive_nowait().body for _ in range(4)] == [b"r"] * 4
            assert b.counters["dropped_inbox_full:raft"] == 1
            for i in range(10):  # let the writer drain a's own 5-frame lane as we go
                assert a.send("away", Channel.RAFT, b"%d" % i)
                await trio.testing.wait_all_tasks_blocked()
            assert a.send("away", Channel.EXECUTION, b"marker")
            assert (await b.inbox(Channel.EXECUTION).receive()).body == b"marker"
            assert [raft.receive_nowait().body for _ in range(4)] == [b"0", b"1", b"2", b"3"]
            assert b.counters["dropped_inbox_full:raft"] == 1 + 6
            assert b.counters["frames_received"] == 5 + 4 + 11
            a.remove_peer("away")
            assert not await a.send_wait("away", Channel.RAFT, b"gone")
            nursery.cancel_scope.cancel()


async def test_control_lane_is_bounded_in_bytes_but_takes_one_large_frame() -> None:
    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            a = await start_rpc(nursery, "a", fast(control_queue_bytes=1000))
            a.set_peer("away", refused_addr())
            assert a.send("away", Channel.RAFT, b"s" * 5000)  # alone, it may exceed the budget
            assert not a.send("away", Channel.RAFT, b"s")
            b = await start_rpc(nursery, "b")
            assert b.addr is not None
            a.set_peer("away", b.addr)
            assert (await b.inbox(Channel.RAFT).receive()).body == b"s" * 5000
            assert a.send("away", Channel.RAFT, b"t" * 600)
            assert a.send("away", Channel.RAFT, b"u" * 300)
            assert not a.send("away", Channel.RAFT, b"v" * 300)  # no checkpoint: nothing drained
            assert (await b.inbox(Channel.RAFT).receive()).body == b"t" * 600
            nursery.cancel_scope.cancel()


async def test_inbox_is_bounded_in_bytes() -> None:
    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            a = await start_rpc(nursery, "a")
            b = await start_rpc(nursery, "b", fast(inbox_bytes=10))
            assert b.addr is not None
            a.set_peer("b", b.addr)
            for body in (b"12345678", b"abcdefgh", b"xy"):
                assert a.send("b", Channel.RAFT, body)
            assert a.send("b", Channel.EXECUTION, b"marker")
            assert (await b.inbox(Channel.EXECUTION).receive()).body == b"marker"
            raft = b.inbox(Channel.RAFT)
            assert raft.bytes == 10
            assert [raft.receive_nowait().body for _ in range(2)] == [b"12345678", b"xy"]
            assert raft.bytes == 0
            assert b.counters["dropped_inbox_full:raft"] == 1
            nursery.cancel_scope.cancel()
        assert [item async for item in raft] == []  # closed when the endpoint stops


async def test_malformed_input_closes_only_that_connection(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="dkron.rpc")
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            b = await start_rpc(nursery, "b", fast(max_frame=1024, max_bulk_frame=16))
            a = await start_rpc(nursery, "a")
            assert b.addr is not None
            a.set_peer("b", b.addr)
            assert a.send("b", Channel.RAFT, b"before")
            assert (await b.inbox(Channel.RAFT).receive()).body == b"before"
            ok = hello_frame("raw")
            attacks = [
                encode_frame(b"\xff\x00not cbor"),  # bad hello
                struct.pack(">I", 5000) + b"h" * 5000,  # a hello may not be large
                hello_frame("raw", version=PROTOCOL_VERSION + 1),  # unknown version
                hello_frame("raw", version=PROTOCOL_VERSION + 1),  # reported once a minute
                ok + struct.pack(">I", 10_000),  # oversized header
                ok + encode_frame(bytes([Channel.RAFT]) + b"fine") + encode_frame(b"\x09??"),
                ok + encode_frame(bytes([Channel.OUTPUT]) + b"y" * 17),  # oversized bulk
                ok + encode_frame(b""),  # no channel byte
                ok + encode_frame(bytes([Channel.RAFT]) + b"z" * 100)[:50],  # truncated
                b"\x00\x00",  # truncated before the hello
            ]
            for attack in attacks:
                async with await trio.open_tcp_stream(*b.addr) as raw:
                    try:
                        await raw.send_all(attack)
                        await raw.send_eof()
                    except trio.BrokenResourceError:
                        pass  # b hung up before reading it all
                    assert await closed_by_peer(raw)
            assert b.counters["malformed"] == len(attacks)
            # Garbage is only counted; a node of another version is an operator's
            # mistake, and said so (once: a misconfigured node dials every few seconds).
            assert rpc_log(caplog) == [
                (
                    logging.WARNING,
                    "refused an RPC connection from 127.0.0.1: node 'raw' speaks RPC "
                    f"protocol version {PROTOCOL_VERSION + 1}, this node {PROTOCOL_VERSION}",
                )
            ]
            got = await b.inbox(Channel.RAFT).receive()
            assert got == Incoming(peer="raw", channel=Channel.RAFT, body=b"fine")
            assert a.send("b", Channel.RAFT, b"after")
            assert (await b.inbox(Channel.RAFT).receive()).body == b"after"
            assert a.counters["connects"] == 1 and a.counters["disconnects"] == 0
            nursery.cancel_scope.cancel()


async def test_silent_client_times_out_and_a_second_hello_replaces_the_first() -> None:
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            b = await start_rpc(nursery, "b", fast(hello_timeout=0.2))
            assert b.addr is not None
            silent = await trio.open_tcp_stream(*b.addr)
            assert await closed_by_peer(silent)
            assert b.counters["hello_timeout"] == 1
            first = await trio.open_tcp_stream(*b.addr)
            await first.send_all(hello_frame("x"))
            second = await trio.open_tcp_stream(*b.addr)
            await second.send_all(hello_frame("x"))
            assert await closed_by_peer(first)  # one incoming connection per peer name
            await second.send_all(encode_frame(bytes([Channel.REQUEST]) + b"hi"))
            got = await b.inbox(Channel.REQUEST).receive()
            assert (got.peer, got.body) == ("x", b"hi")
            for s in (silent, first, second):
                await s.aclose()
            nursery.cancel_scope.cancel()


async def test_incoming_connections_are_capped() -> None:
    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            b = await start_rpc(nursery, "b", fast(max_incoming=1))
            assert b.addr is not None
            held = await trio.open_tcp_stream(*b.addr)
            await held.send_all(hello_frame("x"))
            await held.send_all(encode_frame(bytes([Channel.RAFT]) + b"in"))
            assert (await b.inbox(Channel.RAFT).receive()).peer == "x"
            async with await trio.open_tcp_stream(*b.addr) as extra:
                assert await closed_by_peer(extra)
            assert b.counters["incoming_refused"] == 1
            await held.aclose()
            nursery.cancel_scope.cancel()


async def test_a_peer_that_writes_back_is_disconnected() -> None:
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            listener = (await trio.open_tcp_listeners(0, host="127.0.0.1"))[0]
            a = await start_rpc(nursery, "a")
            a.set_peer("r", listener.socket.getsockname())
            conn = await listener.accept()
            await read_frames(conn, FrameDecoder(), 1)
            await conn.send_all(b"unexpected")
            assert await closed_by_peer(conn)
            assert a.counters["unexpected_bytes"] == 1
            await conn.aclose()
            await listener.aclose()
            nursery.cancel_scope.cancel()


# -- TLS ---------------------------------------------------------------------------------


def _cert(
    subject: str,
    key: ec.EllipticCurvePrivateKey,
    issuer: x509.Certificate | None,
    ca_key: ec.EllipticCurvePrivateKey | None,
) -> x509.Certificate:
    now = datetime.datetime.now(datetime.UTC)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(issuer.subject if issuer else name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
    )
    # Key identifiers as any CA tooling writes them: Python 3.13's default
    # contexts verify strictly (VERIFY_X509_STRICT) and refuse certificates without.
    builder = builder.add_extension(
        x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False
    ).add_extension(
        x509.AuthorityKeyIdentifier.from_issuer_public_key((ca_key or key).public_key()), False
    )
    if issuer is None:
        builder = builder.add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
        builder = builder.add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False), True
        )
    else:
        alt = [x509.DNSName(subject), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
        builder = builder.add_extension(x509.SubjectAlternativeName(alt), False)
    return builder.sign(ca_key or key, hashes.SHA256())


class _Pki:
    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.cas: dict[str, tuple[x509.Certificate, ec.EllipticCurvePrivateKey]] = {}

    def ca(self, name: str) -> str:
        key = ec.generate_private_key(ec.SECP256R1())
        cert = _cert(name, key, None, None)
        self.cas[name] = (cert, key)
        return cert.public_bytes(serialization.Encoding.PEM).decode()

    def leaf(self, node: str, ca: str) -> tuple[Path, Path]:
        ca_cert, ca_key = self.cas[ca]
        key = ec.generate_private_key(ec.SECP256R1())
        cert = _cert(node, key, ca_cert, ca_key)
        cert_path, key_path = self.tmp / f"{node}.crt", self.tmp / f"{node}.key"
        cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        key_path.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
        return cert_path, key_path

    def contexts(self, node: str, ca: str, trust: str) -> dict[str, ssl.SSLContext | None]:
        cert, key = self.leaf(node, ca)
        trusted = self.cas[trust][0].public_bytes(serialization.Encoding.PEM).decode()
        server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cadata=trusted)
        server.verify_mode = ssl.CERT_REQUIRED
        client = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cadata=trusted)
        for ctx in (server, client):
            ctx.load_cert_chain(cert, key)
        return {"server_ssl": server, "client_ssl": client}


async def test_mutual_tls_refuses_a_peer_with_a_certificate_from_another_ca(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="dkron.rpc")
    pki = _Pki(tmp_path)
    pki.ca("cluster-ca")
    pki.ca("other-ca")
    with trio.fail_after(15):
        async with trio.open_nursery() as nursery:
            b = await start_rpc(nursery, "b", tls=pki.contexts("b", "cluster-ca", "cluster-ca"))
            a = await start_rpc(nursery, "a", tls=pki.contexts("a", "cluster-ca", "cluster-ca"))
            intruder = await start_rpc(
                nursery, "c", tls=pki.contexts("c", "other-ca", "cluster-ca")
            )
            assert b.addr is not None
            intruder.set_peer("b", b.addr)
            assert intruder.send("b", Channel.RAFT, b"let me in")
            await eventually(lambda: b.counters["handshake_failed"] >= 2)
            # Both ends say why, once each.
            lines = [text for _, text in rpc_log(caplog)]
            refused = [t for t in lines if t.startswith("refused an RPC connection")]
            assert refused == [
                "refused an RPC connection from 127.0.0.1: TLS handshake failed "
                + refused[0].split("TLS handshake failed ")[1]
            ]
            # The dialer sees a handshake that completed (TLS 1.3) and then a
            # closed stream: it reports that, once, whatever the OS called it.
            assert len([t for t in lines if t.startswith("cannot reach b's RPC port")]) == 1
            a.set_peer("b", b.addr)
            assert a.send("b", Channel.RAFT, b"member")
            got = await b.inbox(Channel.RAFT).receive()
            assert (got.peer, got.body) == ("a", b"member")
            with pytest.raises(trio.WouldBlock):
                b.inbox(Channel.RAFT).receive_nowait()
            assert b.counters["frames_received"] == 1
            nursery.cancel_scope.cancel()


# -- gossip ------------------------------------------------------------------------------


class _Observed(SwimNode):
    """A real SWIM core that also signals each datagram, so tests wait on events, not time."""

    datagram: trio.Event

    def receive(self, packet: bytes, *, src_addr: Address, now: float) -> None:
        super().receive(packet, src_addr=src_addr, now=now)
        self.datagram.set()
        self.datagram = trio.Event()


def _node(name: str, gossip: GossipEndpoint) -> _Observed:
    node = _Observed(
        name,
        LOCAL,
        rng=random.Random(name),
        now=trio.current_time(),
        addr=gossip.addr[0],
        port=gossip.addr[1],
    )
    node.datagram = trio.Event()
    return node


class _Events:
    def __init__(self) -> None:
        self.seen: list[SwimAction] = []
        self.changed = trio.Event()

    def __call__(self, action: SwimAction) -> None:
        self.seen.append(action)
        self.changed.set()
        self.changed = trio.Event()

    async def wait_for(self, match: Callable[[SwimAction], bool]) -> SwimAction:
        while True:
            for action in self.seen:
                if match(action):
                    return action
            await self.changed.wait()


async def test_swim_nodes_join_by_push_pull_and_gossip_over_udp() -> None:
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            ga = await GossipEndpoint.open(LOOPBACK)
            gb = await GossipEndpoint.open(LOOPBACK)
            na, nb = _node("a", ga), _node("b", gb)
            ea, eb = _Events(), _Events()
            await nursery.start(
                lambda task_status: ga.run(na, on_event=ea, task_status=task_status)
            )
            await nursery.start(
                lambda task_status: gb.run(nb, on_event=eb, task_status=task_status)
            )
            nb.join([ga.addr], trio.current_time())
            gb.poke()
            result = await eb.wait_for(lambda e: isinstance(e, JoinResult))
            assert result == JoinResult(contacted=1, failed=0)
            assert {m.name for m in nb.members()} == {"a", "b"}
            await ea.wait_for(
                lambda e: (
                    isinstance(e, MemberEvent) and e.kind is EventKind.JOIN and e.member.name == "b"
                )
            )
            na.send_user_event("deploy", b"v1", trio.current_time())
            ga.poke()
            got = await eb.wait_for(lambda e: isinstance(e, UserEvent))
            assert isinstance(got, UserEvent) and (got.name, got.payload) == ("deploy", b"v1")
            assert nb.packets_received > 0
            while na.packets_received == 0:  # b probes a within one probe interval
                await na.datagram.wait()

            # A datagram from a stranger is handed to the core, which drops and counts it.
            with trio.socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as stranger:
                while not na.counters.get("dropped_malformed"):
                    await stranger.sendto(b"\xffgarbage", ga.addr)
                    await na.datagram.wait()

            # A push-pull to a dead address fails back to the core.
            nb.join([refused_addr()], trio.current_time())
            gb.poke()
            failed = await eb.wait_for(lambda e: e == JoinResult(contacted=0, failed=1))
            assert failed is not None
            assert gb.counters["stream_failed"] >= 1
            nursery.cancel_scope.cancel()


async def test_gossip_stream_listener_rejects_garbage() -> None:
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            ga = await GossipEndpoint.open(LOOPBACK, max_streams=4, max_stream_frame=1024)
            na = _node("a", ga)
            await nursery.start(lambda task_status: ga.run(na, task_status=task_status))
            for attack, counter in [
                (struct.pack(">I", 4096), "stream_malformed"),  # oversized
                (encode_frame(b"\xa1\x01"), None),  # well framed, meaningless: no reply
                (b"\x00\x00\x00\x09abc", "stream_malformed"),  # truncated
            ]:
                before = ga.counters[counter] if counter else 0
                async with await trio.open_tcp_stream(*ga.addr) as raw:
                    try:
                        await raw.send_all(attack)
                        await raw.send_eof()
                    except trio.BrokenResourceError:
                        pass  # closed before reading it all
                    assert await closed_by_peer(raw)
                if counter:
                    assert ga.counters[counter] == before + 1
            assert na.counters["dropped_malformed"] == 1
            nursery.cancel_scope.cancel()


async def test_gossip_refuses_streams_beyond_its_limit() -> None:
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            ga = await GossipEndpoint.open(LOOPBACK, max_streams=1)
            na = _node("a", ga)
            await nursery.start(lambda task_status: ga.run(na, task_status=task_status))
            held = await trio.open_tcp_stream(*ga.addr)
            await held.send_all(b"\x00")  # an unfinished frame keeps the slot busy
            await eventually(lambda: ga._streams_in == 1)
            extra = await trio.open_tcp_stream(*ga.addr)
            assert await closed_by_peer(extra)
            assert ga.counters["stream_refused"] == 1
            for s in (held, extra):
                await s.aclose()
            nursery.cancel_scope.cancel()


async def test_gossip_binds_a_fixed_port_for_udp_and_tcp() -> None:
    with trio.fail_after(5):
        ga = await GossipEndpoint.open(LOOPBACK)
        with pytest.raises(OSError):
            await GossipEndpoint.open(ga.addr)
        async with trio.open_nursery() as nursery:
            na = _node("a", ga)
            await nursery.start(lambda task_status: ga.run(na, task_status=task_status))
            nursery.cancel_scope.cancel()
        again = await GossipEndpoint.open(ga.addr)  # the port is free again after run ends
        assert again.addr == ga.addr
        async with trio.open_nursery() as nursery:
            await nursery.start(
                lambda task_status: again.run(_node("b", again), task_status=task_status)
            )
            nursery.cancel_scope.cancel()
