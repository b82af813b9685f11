"""Framed TCP streams shared by the RPC and gossip endpoints."""

from __future__ import annotations

import collections
import socket

import trio

from dkron.proto_sansio.errors import LocalProtocolError, RemoteProtocolError
from dkron.proto_sansio.framing import (
    FrameDecoder,
)
from dkron.proto_sansio.swim import (
    Address,
)

__all__ = ["NET_ERRORS", "PROTOCOL_ERRORS", "FrameReader", "tcp_listener"]

NET_ERRORS = (trio.BrokenResourceError, trio.ClosedResourceError, OSError)
PROTOCOL_ERRORS = (RemoteProtocolError, LocalProtocolError)


class FrameReader:
    def __init__(self, stream: trio.abc.ReceiveStream, max_frame: int) -> None:
        self._stream = stream
        self._decoder = FrameDecoder(max_frame=max_frame)
        self._ready: collections.deque[bytes] = collections.deque()

    async def read(self) -> bytes | None:
        """The next frame body; None at a clean end of stream, RemoteProtocolError if cut."""
        while not self._ready:
            data = await self._stream.receive_some(65536)
            if not data:
                self._decoder.eof()
                return None
            self._ready.extend(self._decoder.feed(bytes(data)))
        return self._ready.popleft()


async def tcp_listener(addr: Address) -> trio.SocketListener:
    family = socket.AF_INET6 if ":" in addr[0] else socket.AF_INET
    sock = trio.socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        await sock.bind(addr)
        sock.listen(128)
    except BaseException:
        sock.close()
        raise
    return trio.SocketListener(sock)
