"""Fuzz the gossip decoders: plain packets, sealed packets and stream bodies.

Run with atheris installed (``pip install -e '.[fuzz]'``)::

    python fuzz/fuzz_swim.py -atheris_runs=1000000

Only :class:`RemoteProtocolError` may escape a decoder; anything else is a
bug.  Each input is also fed to a live :class:`SwimNode` (plain and with a
keyring), which must swallow it and stay consistent.  The same
:func:`TestOneInput` runs under pytest without atheris as a smoke test.
"""

from __future__ import annotations

import contextlib
import random
import sys

from dkron.proto_sansio.errors import RemoteProtocolError
from dkron.proto_sansio.swim import LOCAL, SwimNode
from dkron.proto_sansio.swim_wire import (
    Keyring,
    PushNodeState,
    WireState,
    decode_packet,
    decode_stream,
)

KEY = b"fuzz-key-16bytes"
RING = Keyring(KEY)
PEER = ("10.0.0.2", 7946)


def _node(keyring: Keyring | None) -> SwimNode:
    node = SwimNode(
        "fuzz",
        LOCAL,
        rng=random.Random(0),
        now=0.0,
        addr="10.0.0.1",
        port=7946,
        keyring=keyring,
    )
    node.bootstrap_members(
        [PushNodeState("peer", PEER[0], PEER[1], {}, 0, WireState.ALIVE, False)], 0.0
    )
    return node


def TestOneInput(data: bytes) -> None:
    """Feed one input to every decoder; only RemoteProtocolError may escape."""
    for decode in (decode_packet, decode_stream, RING.decrypt):
        with contextlib.suppress(RemoteProtocolError):
            decode(data)
    # The same bytes, sealed with the right key, reach the decoders behind decryption.
    sealed = RING.encrypt(data, b"\x00" * 12)
    for keyring, payload in ((None, data), (RING, sealed), (RING, data)):
        node = _node(keyring)
        node.receive(payload, src_addr=PEER, now=1.0)
        node.receive_stream(payload, src_addr=PEER, now=1.0)
        node.handle_timer(2.0)
        node.drain()
        assert node.member("fuzz") is not None


def main() -> None:
    import atheris

    atheris.instrument_all()  # the decoders were imported before atheris was
    atheris.Setup(sys.argv, TestOneInput)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
