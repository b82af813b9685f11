"""Length-prefixed framing for the TCP streams between nodes.

A frame is a 4-byte big-endian body length followed by the body (one CBOR
message).  The decoder's buffer is bounded by ``max_frame``: a peer cannot
make a node hold more than one maximum-size frame plus one read's worth of
bytes, and an oversized header is rejected before its body is read.
"""

from __future__ import annotations

import struct

from dkron.proto_sansio.errors import LocalProtocolError, RemoteProtocolError

__all__ = ["DEFAULT_MAX_FRAME", "HEADER_SIZE", "FrameDecoder", "encode_frame"]

HEADER_SIZE = 4
DEFAULT_MAX_FRAME = 16 * 1024 * 1024
_HEADER = struct.Struct(">I")


def encode_frame(body: bytes, *, max_frame: int = DEFAULT_MAX_FRAME) -> bytes:
    """Prefix a body with its length; refusing to build a frame peers would reject."""
    if len(body) > max_frame:
        raise LocalProtocolError(f"frame of {len(body)} bytes exceeds the {max_frame} byte limit")
    return _HEADER.pack(len(body)) + body


class FrameDecoder:
    """Splits a byte stream into frame bodies."""

    def __init__(self, *, max_frame: int = DEFAULT_MAX_FRAME) -> None:
        self._max_frame = max_frame
        self._buf = bytearray()
        self._need: int | None = None

    def feed(self, data: bytes) -> list[bytes]:
        """Add received bytes; return every frame body they complete."""
        self._buf += data
        frames: list[bytes] = []
        while True:
            if self._need is None:
                if len(self._buf) < HEADER_SIZE:
                    break
                (size,) = _HEADER.unpack_from(self._buf)
                if size > self._max_frame:
                    self._buf.clear()
                    raise RemoteProtocolError(
                        f"frame of {size} bytes exceeds the {self._max_frame} byte limit"
                    )
                del self._buf[:HEADER_SIZE]
                self._need = size
            if len(self._buf) < self._need:
                break
            frames.append(bytes(self._buf[: self._need]))
            del self._buf[: self._need]
            self._need = None
        return frames

    @property
    def buffered(self) -> int:
        """Bytes held for an incomplete frame."""
        return len(self._buf)

    def eof(self) -> None:
        """The stream ended: a partial frame left behind means it was truncated."""
        if self._buf or self._need is not None:
            raise RemoteProtocolError("stream ended inside a frame")
