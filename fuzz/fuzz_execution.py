"""Fuzz the execution protocol, the RPC hello and the replicated command decoders.

Only RemoteProtocolError may escape; whatever decodes must re-encode to the
same message.  Run with atheris installed (``pip install -e '.[fuzz]'``)::

    python fuzz/fuzz_execution.py -atheris_runs=200000

Without atheris the module still imports, so the test suite drives
:func:`TestOneInput` over generated inputs.
"""

from __future__ import annotations

import sys

from dkron.io_trio.rpc import HELLO_CODEC
from dkron.proto_sansio.errors import RemoteProtocolError
from dkron.proto_sansio.execution import EXECUTION_CODEC
from dkron.state import COMMANDS, StateMachine


def TestOneInput(data: bytes) -> None:
    for codec in (EXECUTION_CODEC, COMMANDS, HELLO_CODEC):
        try:
            msg = codec.decode(data)
        except RemoteProtocolError:
            continue
        assert codec.decode(codec.encode(msg)) == msg
    # Apply never raises, whatever the log hands it.
    StateMachine().apply(1, data)


def main() -> None:
    import atheris

    atheris.instrument_all()
    atheris.Setup(sys.argv, TestOneInput)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
