"""The gossip address: UDP datagrams and TCP push-pull streams for the SWIM core."""

from __future__ import annotations

import collections
import math
import socket
from collections.abc import Callable

import trio

from dkron.io_trio.framed import NET_ERRORS, PROTOCOL_ERRORS, FrameReader, tcp_listener
from dkron.proto_sansio.framing import (
    encode_frame,
)
from dkron.proto_sansio.swim import (
    Address,
    ProbeFallback,
    SendPacket,
    SendStream,
    SwimAction,
    SwimNode,
)

__all__ = ["GossipEndpoint"]

# -- gossip -----------------------------------------------------------------------------


class GossipEndpoint:
    """The gossip address: UDP for SWIM datagrams, TCP on the same port for push-pull.

    It also drives the SWIM core (timers, inputs, actions); actions that are not
    I/O go to ``on_event``.  Streams carry exactly one frame each way.
    """

    def __init__(
        self,
        udp: trio.socket.SocketType,
        listener: trio.SocketListener,
        *,
        max_streams: int = 32,
        max_stream_frame: int = 4 * 1024 * 1024,
    ) -> None:
        self._udp = udp
        self._listener = listener
        self._max_streams = max_streams
        self._max_frame = max_stream_frame
        self._streams_in = 0
        self._wake = trio.Event()
        self.counters: collections.Counter[str] = collections.Counter()
        host, port = udp.getsockname()[:2]
        self.addr: Address = (host, port)

    @classmethod
    async def open(cls, addr: Address, **kwargs: int) -> GossipEndpoint:
        """Bind UDP and TCP on one port (a free one for port 0, retried if UDP has it)."""
        family = socket.AF_INET6 if ":" in addr[0] else socket.AF_INET
        for _ in range(8):
            listener = await tcp_listener(addr)
            port = listener.socket.getsockname()[1]
            udp = trio.socket.socket(family, socket.SOCK_DGRAM)
            try:
                await udp.bind((addr[0], port))
            except OSError:
                udp.close()
                await listener.aclose()
                if addr[1] != 0:
                    raise
                continue
            return cls(udp, listener, **kwargs)
        raise OSError(f"no port free for both TCP and UDP on {addr[0]}")

    async def aclose(self) -> None:
        """Close both sockets (``run`` does it too; this covers an endpoint never run)."""
        self._udp.close()
        await trio.aclose_forcefully(self._listener)

    def poke(self) -> None:
        """Call after feeding the core a command (join, leave, tags...) so its output is sent."""
        self._wake.set()

    async def run(
        self,
        node: SwimNode,
        *,
        on_event: Callable[[SwimAction], None] | None = None,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._receive_datagrams, node)
                await nursery.start(
                    trio.serve_listeners, lambda s: self._stream_in(node, s), [self._listener]
                )
                task_status.started()
                while True:
                    deadline = node.next_deadline()
                    with trio.move_on_at(math.inf if deadline is None else deadline):
                        await self._wake.wait()
                    self._wake = trio.Event()
                    node.handle_timer(trio.current_time())
                    for action in node.drain():
                        if isinstance(action, SendPacket):
                            try:
                                await self._udp.sendto(action.data, action.addr)
                            except OSError:
                                self.counters["send_failed"] += 1
                        elif isinstance(action, SendStream | ProbeFallback):
                            nursery.start_soon(self._stream_out, node, action)
                        elif on_event is not None:
                            on_event(action)
        finally:
            self._udp.close()
            await trio.aclose_forcefully(self._listener)

    async def _receive_datagrams(self, node: SwimNode) -> None:
        while True:
            try:
                data, src = await self._udp.recvfrom(65535)
            except OSError:
                self.counters["receive_failed"] += 1
                continue
            node.receive(data, src_addr=(src[0], src[1]), now=trio.current_time())
            self._wake.set()

    async def _stream_out(self, node: SwimNode, action: SendStream | ProbeFallback) -> None:
        reply: bytes | None = None
        with trio.move_on_after(node.config.tcp_timeout):
            try:
                async with await trio.open_tcp_stream(*action.addr) as stream:
                    await stream.send_all(encode_frame(action.data, max_frame=self._max_frame))
                    reply = await FrameReader(stream, self._max_frame).read()
            except (*NET_ERRORS, *PROTOCOL_ERRORS):
                self.counters["stream_failed"] += 1
        now = trio.current_time()
        if reply is None:
            node.stream_failed(action.stream_id, now=now)
        else:
            node.receive_stream_reply(action.stream_id, reply, now=now)
        self._wake.set()

    async def _stream_in(self, node: SwimNode, stream: trio.SocketStream) -> None:
        if self._streams_in >= self._max_streams:
            self.counters["stream_refused"] += 1
            await trio.aclose_forcefully(stream)
            return
        self._streams_in += 1
        try:
            with trio.move_on_after(node.config.tcp_timeout):
                data = await FrameReader(stream, self._max_frame).read()
                if data is None:
                    return
                src = stream.socket.getpeername()
                reply = node.receive_stream(
                    data, src_addr=(src[0], src[1]), now=trio.current_time()
                )
                self._wake.set()
                if reply is not None:
                    await stream.send_all(encode_frame(reply, max_frame=self._max_frame))
        except PROTOCOL_ERRORS:  # a garbled request, or a reply too large to frame
            self.counters["stream_malformed"] += 1
        except NET_ERRORS:
            self.counters["stream_failed"] += 1
        finally:
            self._streams_in -= 1
            await trio.aclose_forcefully(stream)
