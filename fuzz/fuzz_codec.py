"""Fuzz the Raft RPC codec and the TCP framing: only RemoteProtocolError may escape.

Run with atheris installed (``pip install -e '.[fuzz]'``)::

    python fuzz/fuzz_codec.py -atheris_runs=200000

Without atheris the module still imports, so the test suite drives
:func:`TestOneInput` over generated inputs (tests/proto_sansio/test_fuzz_smoke.py).
"""

from __future__ import annotations

import contextlib
import sys

from dkron.proto_sansio.codec import decode_message, encode_message
from dkron.proto_sansio.errors import RemoteProtocolError
from dkron.proto_sansio.framing import FrameDecoder

MAX_FRAME = 4096


def TestOneInput(data: bytes) -> None:
    try:
        msg = decode_message(data)
    except RemoteProtocolError:
        pass
    else:
        # Whatever decodes must re-encode to something that decodes to the same message.
        assert decode_message(encode_message(msg)) == msg
    decoder = FrameDecoder(max_frame=MAX_FRAME)
    try:
        # Feed in two uneven pieces to exercise reassembly.
        cut = len(data) // 3
        for frame in decoder.feed(data[:cut]) + decoder.feed(data[cut:]):
            assert len(frame) <= MAX_FRAME
            with contextlib.suppress(RemoteProtocolError):
                decode_message(frame)
        decoder.eof()
    except RemoteProtocolError:
        pass


def main() -> None:
    import atheris

    atheris.instrument_all()
    atheris.Setup(sys.argv, TestOneInput)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
