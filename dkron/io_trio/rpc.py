"""The RPC port: framed connections between nodes, control traffic ahead of job output.

Only transport lives here: Raft and execution messages arrive already encoded.
This module owns connections, queues, timeouts and backpressure, so that a
slow or hostile peer costs bounded memory and never stalls Raft.  The envelope
is described in ``docs/networking.md``.
"""

from __future__ import annotations

import collections
import dataclasses
import enum
import errno
import logging
import math
import os
import random
import socket
import ssl
import time
from collections.abc import Callable

import trio

from dkron.io_trio.addr import backoff_delay
from dkron.io_trio.framed import NET_ERRORS, FrameReader, tcp_listener
from dkron.proto_sansio.errors import LocalProtocolError, RemoteProtocolError
from dkron.proto_sansio.framing import (
    DEFAULT_MAX_FRAME,
    HEADER_SIZE,
    encode_frame,
)
from dkron.proto_sansio.swim import (
    Address,
)
from dkron.proto_sansio.wire import Codec

__all__ = [
    "HELLO_CODEC",
    "PROTOCOL_VERSION",
    "Channel",
    "ClockedHello",
    "Hello",
    "Inbox",
    "Incoming",
    "RpcConfig",
    "RpcEndpoint",
]

#: 2: a dispatch carries its start-by time.  Nodes of different versions
#: refuse each other's connections rather than misread each other's messages.
PROTOCOL_VERSION = 2
_NOTSENT_LOWAT = 128 * 1024
#: A peer that cannot be reached is reported when it starts failing, then
#: again after this long, the interval doubling up to REPORT_MAX while it fails.
REPORT_FIRST = 60.0
REPORT_MAX = 3600.0
#: A peer whose wall clock differs from this node's by more than this (s), as
#: measured at its hello, is reported.  NTP keeps clocks within milliseconds.
CLOCK_WARN = 1.0

log = logging.getLogger("dkron.rpc")
_MAX_HELLO = 1024

# -- the RPC envelope -----------------------------------------------------------------


class Channel(enum.IntEnum):
    """The first byte of every data frame: which core a body belongs to."""

    RAFT = 1
    EXECUTION = 2
    REQUEST = 3
    OUTPUT = 4


@dataclasses.dataclass(frozen=True, slots=True)
class Hello:
    """First frame of every RPC connection: who is talking, in which protocol version."""

    version: int
    node: str

    def __post_init__(self) -> None:
        if not 0 < len(self.node) <= 128:
            raise ValueError("node name must have 1..128 characters")


@dataclasses.dataclass(frozen=True, slots=True)
class ClockedHello(Hello):
    """A hello that also carries the sender's wall clock (ns) when it sent it.

    Sent first on a fresh connection, it never waits behind anything: the
    receiver takes ``its clock - wall_ns`` as how far it runs ahead of the
    sender (:meth:`RpcEndpoint.clock_offset`), to within one network delay.
    A worker judges a dispatch's start-by time, which is on the leader's
    clock, with it.  (Version-1 nodes send a plain :class:`Hello`: kind 1.)
    """

    wall_ns: int


HELLO_CODEC = Codec({1: Hello, 2: ClockedHello})


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class Incoming:
    peer: str
    channel: Channel
    body: bytes


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class RpcConfig:
    """Bounds of the RPC transport; every queue is limited in frames and in bytes."""

    max_frame: int = DEFAULT_MAX_FRAME
    max_bulk_frame: int = 64 * 1024
    bulk_channels: frozenset[Channel] = frozenset({Channel.OUTPUT})
    control_queue: int = 4096
    control_queue_bytes: int = 64 * 1024 * 1024
    bulk_queue: int = 256
    inbox_size: int = 4096
    inbox_bytes: int = 64 * 1024 * 1024
    max_incoming: int = 256
    write_batch: int = 256 * 1024
    connect_timeout: float = 5.0
    hello_timeout: float = 5.0
    #: A dialled connection whose sent data stays unacknowledged this long is
    #: dropped (TCP_USER_TIMEOUT) and dialled again.  Without it a path that
    #: goes silent holds the connection, and everything queued behind it, for
    #: the kernel's retransmission timeout: a quarter of an hour.
    stall_timeout: float = 5.0
    backoff_base: float = 0.05
    backoff_max: float = 5.0
    backoff_jitter: float = 0.2

    def __post_init__(self) -> None:
        if not 0 < self.max_bulk_frame <= self.max_frame:
            raise ValueError("max_bulk_frame must be within 1..max_frame")
        for name in (
            "control_queue",
            "bulk_queue",
            "inbox_size",
            "inbox_bytes",
            "max_incoming",
            "write_batch",
        ):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1")
        if (
            min(self.connect_timeout, self.hello_timeout, self.stall_timeout, self.backoff_base)
            <= 0
        ):
            raise ValueError("timeouts and backoff_base must be positive")
        if self.backoff_max < self.backoff_base or not 0 <= self.backoff_jitter < 1:
            raise ValueError("need backoff_max >= backoff_base and 0 <= backoff_jitter < 1")


def _cert_names(stream: trio.SSLStream[trio.abc.Stream], node: str) -> bool:
    """Whether the peer's verified certificate names ``node`` (SAN DNS, or the CN without SANs).

    The same comparison as the client's hostname check: exact, case-insensitive.
    """
    cert = stream.getpeercert()
    if not cert:
        return False
    wanted = node.lower()
    dns = [str(v).lower() for k, v in cert.get("subjectAltName", ()) if k == "DNS"]
    if dns:
        return wanted in dns
    subject = cert.get("subject", ())
    return any(k == "commonName" and str(v).lower() == wanted for rdn in subject for k, v in rdn)


def _remote_host(stream: trio.abc.Stream) -> str:
    try:
        return str(stream.socket.getpeername()[0])  # type: ignore[attr-defined]
    except (AttributeError, OSError):
        return "an unknown address"


def _show(addr: Address) -> str:
    host, port = addr
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _first_leaf(exc: BaseException) -> BaseException:
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    return exc


def _causes(exc: BaseException) -> tuple[BaseException, ...]:
    """The exception and what it wraps: trio reports socket and TLS errors as a
    broken stream, or a refused connect as an OSError with the attempts' group."""
    if exc.__cause__ is None:
        return (exc,)
    return (exc, _first_leaf(exc.__cause__))


def _errno(exc: BaseException | None) -> int | None:
    for cause in _causes(exc) if exc is not None else ():
        if isinstance(cause, OSError) and cause.errno:
            return cause.errno
    return None


def _connect_error(exc: BaseException | None, config: RpcConfig) -> str:
    """The reason an operator can act on (trio's own text repeats the address)."""
    if exc is None:
        return "it closed the connection right after it opened (its log may say why)"
    if isinstance(exc, trio.TooSlowError):
        return f"no answer within {config.connect_timeout:g} s"
    for cause in _causes(exc):
        if isinstance(cause, ssl.SSLError):
            return f"TLS handshake failed ({cause.reason or cause})"
    code = _errno(exc)
    if code == errno.ETIMEDOUT:
        return f"the connection stalled (nothing acknowledged for {config.stall_timeout:g} s)"
    if code is not None:
        return os.strerror(code)
    return str(exc) or type(exc).__name__


async def _read_hello(stream: trio.abc.ReceiveStream) -> bytes:
    """Read exactly the hello frame, with a small limit: the peer is not known yet."""
    buf = b""
    need = HEADER_SIZE
    while len(buf) < need:
        data = await stream.receive_some(need - len(buf))
        if not data:
            raise RemoteProtocolError("connection closed before the hello")
        buf += data
        if need == HEADER_SIZE and len(buf) == HEADER_SIZE:
            need += int.from_bytes(buf, "big")
            if need > HEADER_SIZE + _MAX_HELLO:
                raise RemoteProtocolError("oversized hello")
    return buf[HEADER_SIZE:]


class Inbox:
    """A bounded queue of incoming frames, limited in frames and in bytes.

    Counting frames alone would let a peer park gigabytes in 16 MiB frames; the
    byte budget admits one frame of any size when the inbox is empty.
    """

    def __init__(self, frames: int, max_bytes: int) -> None:
        self._send, self._recv = trio.open_memory_channel[Incoming](frames)
        self._max_bytes = max_bytes
        self.bytes = 0

    def put(self, item: Incoming) -> bool:
        if self.bytes and self.bytes + len(item.body) > self._max_bytes:
            return False
        try:
            self._send.send_nowait(item)
        except (trio.WouldBlock, trio.ClosedResourceError):
            return False
        self.bytes += len(item.body)
        return True

    def _took(self, item: Incoming) -> Incoming:
        self.bytes -= len(item.body)
        return item

    async def receive(self) -> Incoming:
        return self._took(await self._recv.receive())

    def receive_nowait(self) -> Incoming:
        return self._took(self._recv.receive_nowait())

    def __aiter__(self) -> Inbox:
        return self

    async def __anext__(self) -> Incoming:
        try:
            return await self.receive()
        except trio.EndOfChannel:
            raise StopAsyncIteration from None

    def close(self) -> None:
        """Consumers see EndOfChannel once the queued frames are taken."""
        self._send.close()


class _Peer:
    """Outgoing state for one peer: two lanes, and the events the writer waits on."""

    def __init__(self, addr: Address) -> None:
        self.addr = addr
        self.lanes: tuple[collections.deque[bytes], collections.deque[bytes]] = (
            collections.deque(),
            collections.deque(),
        )
        self.lane_bytes = [0, 0]
        self.work = trio.lowlevel.ParkingLot()
        self.space = trio.lowlevel.ParkingLot()
        self.scope = trio.CancelScope()
        self.connected = False
        self.changed = trio.Event()
        self.attempt = 0
        self.down_since: float | None = None  # when an established connection broke
        # Failed connection attempts since the last connection (for the log).
        self.failures = 0
        self.failing_since = 0.0
        self.next_report = 0.0


class RpcEndpoint:
    """The RPC port: one outgoing connection per peer and a listener for theirs.

    Connections are one-way: this node writes only on the connection it dialled
    and only reads on the ones it accepted, so each direction has exactly one
    ordered stream.  ``send`` never blocks: a full lane drops the frame and
    counts it, which is what Raft wants (it retransmits); producers of bulk
    data that prefer to slow down use ``send_wait``.
    """

    def __init__(
        self,
        name: str,
        *,
        rng: random.Random,
        config: RpcConfig | None = None,
        server_ssl: ssl.SSLContext | None = None,
        client_ssl: ssl.SSLContext | None = None,
        wall_ns: Callable[[], int] = time.time_ns,
    ) -> None:
        self.name = name
        self._wall_ns = wall_ns
        # Peer name -> how far this node's wall clock runs ahead of the peer's
        # (ns), from the hello of the peer's latest connection.
        self._offsets: dict[str, int] = {}
        self._skewed: set[str] = set()  # peers reported for a clock beyond CLOCK_WARN
        self.config = config or RpcConfig()
        self.counters: collections.Counter[str] = collections.Counter()
        self._rng = rng
        self._server_ssl = server_ssl
        self._client_ssl = client_ssl
        self._peers: dict[str, _Peer] = {}
        self._incoming: dict[str, trio.CancelScope] = {}
        self._serving = 0
        # (remote host, reason) -> until when a refusal of that kind is not logged again
        self._refusals: dict[tuple[str, str], float] = {}
        self._nursery: trio.Nursery | None = None
        self.addr: Address | None = None
        cfg = self.config
        self._inboxes = {ch: Inbox(cfg.inbox_size, cfg.inbox_bytes) for ch in Channel}

    def inbox(self, channel: Channel) -> Inbox:
        """Frames received on ``channel``; drain it with ``receive_nowait`` to keep up."""
        return self._inboxes[channel]

    def peers(self) -> dict[str, Address]:
        return {name: p.addr for name, p in self._peers.items()}

    def connected(self, peer: str) -> bool:
        p = self._peers.get(peer)
        return p is not None and p.connected

    async def wait_connected(self, peer: str, connected: bool = True) -> None:
        """Wait until the outgoing connection to a known peer is (or is not) up."""
        while (p := self._peers.get(peer)) is not None and p.connected != connected:
            await p.changed.wait()

    def set_peer(self, name: str, addr: Address) -> None:
        """Add a peer or change its address; queued frames are kept across a change."""
        old = self._peers.get(name)
        if old is not None and old.addr == addr:
            return
        peer = _Peer(addr)
        if old is not None:
            self._retire(old)
            peer.lanes, peer.lane_bytes = old.lanes, old.lane_bytes
        self._peers[name] = peer
        if self._nursery is not None:
            self._nursery.start_soon(self._dial, name, peer)

    def remove_peer(self, name: str) -> None:
        peer = self._peers.pop(name, None)
        if peer is not None:
            self._retire(peer)

    def _retire(self, peer: _Peer) -> None:
        """Stop a peer's dialer and wake its waiters so that they look the peer up again."""
        peer.scope.cancel()
        peer.space.unpark_all()
        peer.changed.set()

    def send(self, peer: str, channel: Channel, body: bytes) -> bool:
        """Queue one frame; False (and counted) when the peer is unknown or its lane is full."""
        p = self._peers.get(peer)
        frame, lane = self._frame(channel, body)
        if p is None:
            self.counters["dropped_unknown_peer"] += 1
            return False
        if not self._has_room(p, lane, len(frame)):
            self.counters[f"dropped_queue_full:{channel.name.lower()}"] += 1
            return False
        p.lanes[lane].append(frame)
        p.lane_bytes[lane] += len(frame)
        p.work.unpark_all()
        return True

    async def send_wait(self, peer: str, channel: Channel, body: bytes) -> bool:
        """Queue one frame, waiting for room; False if the peer is unknown or removed."""
        frame, lane = self._frame(channel, body)
        while (p := self._peers.get(peer)) is not None and not self._has_room(p, lane, len(frame)):
            await p.space.park()
        if p is None:
            self.counters["dropped_unknown_peer"] += 1
            return False
        p.lanes[lane].append(frame)
        p.lane_bytes[lane] += len(frame)
        p.work.unpark_all()
        return True

    def _frame(self, channel: Channel, body: bytes) -> tuple[bytes, int]:
        if channel not in Channel._value2member_map_:
            raise LocalProtocolError(f"unknown channel {channel!r}")
        lane = 1 if channel in self.config.bulk_channels else 0
        limit = self.config.max_bulk_frame if lane else self.config.max_frame
        if len(body) > limit:
            raise LocalProtocolError(f"channel {channel} body of {len(body)} bytes exceeds {limit}")
        return encode_frame(bytes((channel,)) + body, max_frame=limit + 1), lane

    def _has_room(self, p: _Peer, lane: int, size: int) -> bool:
        """Bulk frames are small, so counting them bounds the bytes; control frames are not."""
        q = p.lanes[lane]
        if lane:
            return len(q) < self.config.bulk_queue
        cfg = self.config
        return not q or (
            len(q) < cfg.control_queue and p.lane_bytes[0] + size <= cfg.control_queue_bytes
        )

    async def run(
        self, listen: Address, *, task_status: trio.TaskStatus[Address] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Listen on ``listen`` and dial every peer until cancelled; reports the bound address."""
        listener = await tcp_listener(listen)
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                for name, peer in self._peers.items():
                    nursery.start_soon(self._dial, name, peer)
                await nursery.start(trio.serve_listeners, self._serve, [listener])
                host, port = listener.socket.getsockname()[:2]
                self.addr = (host, port)
                task_status.started(self.addr)
        finally:
            self._nursery = None
            for ch in self._inboxes.values():
                ch.close()

    def clock_offset(self, peer: str) -> int:
        """How far this node's wall clock runs ahead of ``peer``'s, in ns (0 when
        not known), measured when the peer's latest connection said hello."""
        return self._offsets.get(peer, 0)

    def max_clock_offset(self) -> float:
        """The largest disagreement (s) between this node's wall clock and that of
        a peer connected to it now: an alert above CLOCK_WARN means a clock to fix."""
        offsets = self._offsets
        return max((abs(offsets[n]) / 1e9 for n in self._incoming if n in offsets), default=0.0)

    def _note_clock(self, peer: str, offset_ns: int) -> None:
        """Keep a peer's clock offset; say when it goes beyond CLOCK_WARN and when it is back.

        Slots fire by the leader's clock, a worker stamps its runs (and their
        ids) with its own, and the start-by time of a dispatch is judged with
        this offset.  A server whose clock is far ahead decides slots early
        while it leads, and the next leader, if it is behind, fires nothing
        until its clock reaches them: skew is worth an operator's attention.
        """
        self._offsets[peer] = offset_ns
        seconds = offset_ns / 1e9
        if abs(seconds) > CLOCK_WARN:
            if peer not in self._skewed:
                self._skewed.add(peer)
                log.warning(
                    "%s's wall clock is %.1f s %s this node's (measured when it connected): "
                    "slots fire by the leader's clock and runs are stamped by the worker's; "
                    "keep the clocks in step (NTP)",
                    peer,
                    abs(seconds),
                    "behind" if seconds > 0 else "ahead of",
                )
        elif peer in self._skewed:
            self._skewed.discard(peer)
            log.info("%s's wall clock agrees with this node's again (%+.3f s)", peer, -seconds)

    def peers_down(self) -> int:
        """Known peers whose outgoing connection is down (not merely being dialled
        for the first time)."""
        return sum(1 for name in self._peers if self.down_for(name) > 0)

    def down_for(self, peer: str) -> float:
        """How long the outgoing connection to ``peer`` has been down: 0 while it
        is up or still in its first attempt, ``inf`` for a peer not known."""
        p = self._peers.get(peer)
        if p is None:
            return math.inf
        if p.connected:
            return 0.0
        since = p.down_since
        if since is None and p.failures:
            since = p.failing_since
        return 0.0 if since is None else trio.current_time() - since

    def _set_connected(self, p: _Peer, value: bool) -> None:
        p.down_since = None if value else trio.current_time()
        p.connected = value
        p.changed.set()
        p.changed = trio.Event()

    async def _dial(self, name: str, p: _Peer) -> None:
        with p.scope:
            while True:
                try:
                    stream = await self._connect(name, p)
                except (*NET_ERRORS, trio.TooSlowError, ValueError) as exc:
                    self.counters["connect_failed"] += 1
                    self._report_failure(name, p, exc)
                    await trio.sleep(self._backoff(p))
                    continue
                self.counters["connects"] += 1
                self._set_connected(p, True)
                up_since = trio.current_time()
                broke: BaseException | None = None
                try:
                    async with trio.open_nursery() as nursery:
                        nursery.start_soon(self._watch, stream, nursery.cancel_scope)
                        if p.failures:
                            nursery.start_soon(self._confirm, name, p)
                        await self._write(p, stream)
                except* (*NET_ERRORS, trio.TooSlowError) as group:
                    broke = _first_leaf(group)
                finally:
                    self._set_connected(p, False)
                    await trio.aclose_forcefully(stream)
                self.counters["disconnects"] += 1
                stalled = _errno(broke) == errno.ETIMEDOUT
                if trio.current_time() - up_since >= self.config.backoff_max and not stalled:
                    p.attempt = 0  # a peer that accepts then hangs up at once still backs off
                else:
                    # Stalled, or refused after the handshake: a certificate the peer
                    # does not accept (TLS 1.3 says so only then), another version.
                    self._report_failure(name, p, broke)
                await trio.sleep(self._backoff(p))

    async def _confirm(self, name: str, p: _Peer) -> None:
        """Report a peer reachable again once its connection has lasted (not merely
        opened): past the stall timeout, so that a peer that accepts but never
        reads is not announced back between two stalls."""
        await trio.sleep(max(self.config.backoff_max, self.config.stall_timeout))
        log.info(
            "reached %s's RPC port at %s again, after %d failed attempts in %.0f s",
            name,
            _show(p.addr),
            p.failures,
            trio.current_time() - p.failing_since,
        )
        p.failures = 0

    def _report_failure(self, name: str, p: _Peer, exc: BaseException | None) -> None:
        """Say when a peer becomes unreachable, and now and then while it stays so.

        Frames queued for it wait meanwhile, and the peer may look alive to
        gossip (other members still reach it): without this line, a worker
        behind a firewall only shows up as runs lost for want of a start.
        """
        now = trio.current_time()
        p.failures += 1
        why = _connect_error(exc, self.config)
        if p.failures == 1:
            p.failing_since = now
            p.next_report = now + REPORT_FIRST
            log.warning(
                "cannot reach %s's RPC port at %s: %s; retrying (what is sent to it waits)",
                name,
                _show(p.addr),
                why,
            )
        elif now >= p.next_report:
            waited = now - p.failing_since
            p.next_report = now + min(max(waited, REPORT_FIRST), REPORT_MAX)
            log.warning(
                "still cannot reach %s's RPC port at %s after %d attempts in %.0f s: %s",
                name,
                _show(p.addr),
                p.failures,
                waited,
                why,
            )

    def _backoff(self, p: _Peer) -> float:
        cfg = self.config
        p.attempt += 1
        return backoff_delay(
            p.attempt - 1,
            base=cfg.backoff_base,
            cap=cfg.backoff_max,
            jitter=cfg.backoff_jitter,
            rng=self._rng,
        )

    async def _connect(self, name: str, p: _Peer) -> trio.abc.Stream:
        with trio.fail_after(self.config.connect_timeout):
            tcp = await trio.open_tcp_stream(*p.addr)
            if hasattr(socket, "TCP_NOTSENT_LOWAT"):  # keep the kernel's queue short: priority
                tcp.setsockopt(socket.IPPROTO_TCP, socket.TCP_NOTSENT_LOWAT, _NOTSENT_LOWAT)
            if hasattr(socket, "TCP_USER_TIMEOUT"):
                stall_ms = max(1, int(self.config.stall_timeout * 1000))
                tcp.setsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT, stall_ms)
            stream: trio.abc.Stream = tcp
            try:
                if self._client_ssl is not None:
                    stream = trio.SSLStream(stream, self._client_ssl, server_hostname=name)
                    await stream.do_handshake()
                hello = ClockedHello(PROTOCOL_VERSION, self.name, self._wall_ns())
                await stream.send_all(encode_frame(HELLO_CODEC.encode(hello)))
            except BaseException:
                await trio.aclose_forcefully(stream)
                raise
        return stream

    async def _watch(self, stream: trio.abc.Stream, scope: trio.CancelScope) -> None:
        """The peer never writes on our connection: any byte or EOF means it is gone."""
        if await stream.receive_some(1):
            self.counters["unexpected_bytes"] += 1
        scope.cancel()

    async def _write(self, p: _Peer, stream: trio.abc.Stream) -> None:
        """Control frames first, batched; one bulk frame at a time so control can overtake."""
        control, bulk = p.lanes
        while True:
            batch: list[bytes] = []
            size = 0
            if control:
                while control and size < self.config.write_batch:
                    batch.append(control.popleft())
                    size += len(batch[-1])
                p.lane_bytes[0] -= size
            elif bulk:
                batch.append(bulk.popleft())
                size = len(batch[0])
                p.lane_bytes[1] -= size
            else:
                await p.work.park()
                continue
            p.space.unpark_all()
            await stream.send_all(b"".join(batch))
            self.counters["frames_sent"] += len(batch)

    async def _serve(self, stream: trio.abc.Stream) -> None:
        """Caps the accepted connections: each may buffer up to one maximum-size frame."""
        if self._serving >= self.config.max_incoming:
            self.counters["incoming_refused"] += 1
            await trio.aclose_forcefully(stream)
            return
        self._serving += 1
        try:
            await self._serve_conn(stream)
        finally:
            self._serving -= 1

    async def _serve_conn(self, stream: trio.abc.Stream) -> None:
        cfg = self.config
        name: str | None = None
        scope: trio.CancelScope | None = None
        remote = _remote_host(stream)
        try:
            with trio.fail_after(cfg.hello_timeout):
                if self._server_ssl is not None:
                    stream = trio.SSLStream(stream, self._server_ssl, server_side=True)
                    try:
                        await stream.do_handshake()
                    except trio.BrokenResourceError as exc:
                        self.counters["handshake_failed"] += 1
                        why = exc.__cause__ if isinstance(exc.__cause__, ssl.SSLError) else exc
                        self._report_refusal(remote, "tls", f"TLS handshake failed ({why})")
                        return
                hello = HELLO_CODEC.decode(await _read_hello(stream))
                reader = FrameReader(stream, cfg.max_frame + 1)
            if not isinstance(hello, Hello):
                raise RemoteProtocolError(f"unsupported hello {hello!r}")
            if hello.version != PROTOCOL_VERSION:
                self.counters["malformed"] += 1
                self._report_refusal(
                    remote,
                    "version",
                    f"node {hello.node!r} speaks RPC protocol version {hello.version}, "
                    f"this node {PROTOCOL_VERSION}",
                )
                return
            if isinstance(stream, trio.SSLStream) and not _cert_names(stream, hello.node):
                # A certificate from the CA proves membership, not identity: a
                # node may only speak as the name its certificate carries.
                self.counters["tls_name_mismatch"] += 1
                self._report_refusal(
                    remote, "name", f"its certificate does not name node {hello.node!r}"
                )
                return
            name = hello.node
            if isinstance(hello, ClockedHello):
                self._note_clock(name, self._wall_ns() - hello.wall_ns)
            with trio.CancelScope() as scope:
                old = self._incoming.get(name)
                if old is not None:
                    old.cancel()
                self._incoming[name] = scope
                while (body := await reader.read()) is not None:
                    self._deliver(name, body)
        except RemoteProtocolError:
            self.counters["malformed"] += 1
        except trio.TooSlowError:
            self.counters["hello_timeout"] += 1
        except NET_ERRORS:
            self.counters["incoming_broken"] += 1
        finally:
            if name is not None and self._incoming.get(name) is scope:
                del self._incoming[name]
            await trio.aclose_forcefully(stream)

    def _report_refusal(self, remote: str, kind: str, why: str) -> None:
        """A connection refused for a reason its sender's operator must fix: once
        a minute per host and reason (a misconfigured node dials every few seconds)."""
        now = trio.current_time()
        key = (remote, kind)
        if self._refusals.get(key, -math.inf) > now:
            return
        if len(self._refusals) >= 1024:
            self._refusals = {k: t for k, t in self._refusals.items() if t > now}
        self._refusals[key] = now + REPORT_FIRST
        log.warning("refused an RPC connection from %s: %s", remote, why)

    def _deliver(self, peer: str, body: bytes) -> None:
        if not body or body[0] not in Channel._value2member_map_:
            raise RemoteProtocolError("frame without a known channel")
        channel = Channel(body[0])
        if channel in self.config.bulk_channels and len(body) > self.config.max_bulk_frame + 1:
            raise RemoteProtocolError("oversized bulk frame")
        self.counters["frames_received"] += 1
        if not self._inboxes[channel].put(Incoming(peer=peer, channel=channel, body=body[1:])):
            self.counters[f"dropped_inbox_full:{channel.name.lower()}"] += 1
