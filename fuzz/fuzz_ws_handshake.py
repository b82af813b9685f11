"""atheris target: websocket upgrade requests and the frames that follow them.

Run: ``python fuzz/fuzz_ws_handshake.py [corpus_dir]`` (needs the ``fuzz`` extra).
The module imports without atheris so that the test suite can drive
:func:`TestOneInput` over a smoke corpus and Hypothesis inputs.

The first byte of an input chooses what the rest is:

0. the connection's whole byte stream (a handshake of its own, or garbage);
1. frames sent after a valid handshake to ``/v1/events``;
2. frames sent after a valid handshake to the output stream of a running execution;
3. the handshake's fields -- path, ``Sec-WebSocket-Key``, ``Sec-WebSocket-Version``
   and one extra header line, separated by ``\\n`` -- around a well-formed head.

The connection is served exactly as by the REST harness
(``fuzz_http_request.exchange``, in-memory streams, virtual time, a live event
source), so the contract is the same: nothing escapes, the connection ends
once the client has closed its side, and no answer is a server error.
"""

from __future__ import annotations

import importlib.util
import pathlib
import sys
from types import ModuleType


def _sibling(name: str) -> ModuleType:
    """The REST harness, loaded by path: ``fuzz/`` is not a package."""
    cached = sys.modules.get(name)
    if cached is not None:
        return cached
    spec = importlib.util.spec_from_file_location(
        name, pathlib.Path(__file__).with_name(f"{name}.py")
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


HTTP = _sibling("fuzz_http_request")
KEY = "dGhlIHNhbXBsZSBub25jZQ=="
EVENTS_PATH = "/v1/events"
STREAM_PATH = f"/v1/jobs/job1/executions/{HTTP.RUNNING.id}/stream"


def handshake(path: str, *, key: str = KEY, version: str = "13", extra: bytes = b"") -> bytes:
    """A client's upgrade request head; ``extra`` is one more raw header line."""
    head = (
        f"GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: Upgrade\r\n"
        f"Upgrade: websocket\r\nSec-WebSocket-Key: {key}\r\n"
        f"Sec-WebSocket-Version: {version}\r\n"
    ).encode("latin-1", errors="replace")
    if extra:
        head += extra.replace(b"\r", b"").replace(b"\n", b"") + b"\r\n"
    return head + b"\r\n"


def masked_frame(opcode: int, payload: bytes, *, fin: bool = True) -> bytes:
    """One client frame (clients must mask), for the smoke corpus."""
    mask = b"\x11\x22\x33\x44"
    first = (0x80 if fin else 0) | opcode
    if len(payload) < 126:
        length = bytes([0x80 | len(payload)])
    else:
        length = bytes([0x80 | 126]) + len(payload).to_bytes(2, "big")
    body = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    return bytes([first]) + length + mask + body


def build(data: bytes) -> bytes:
    """The client's byte stream for one input (see the module docstring)."""
    if not data:
        return b""
    mode, rest = data[0] % 4, data[1:]
    if mode == 0:
        return rest
    if mode == 1:
        return handshake(EVENTS_PATH) + rest
    if mode == 2:
        return handshake(STREAM_PATH) + rest
    fields = rest.split(b"\n", 3) + [b""] * 4
    path, key, version, extra = (f.decode("latin-1") for f in fields[:4])
    path = "/" + _one_line(path).replace(" ", "%20").lstrip("/")
    return handshake(
        path,
        key=_one_line(key) or KEY,
        version=_one_line(version) or "13",
        extra=extra.encode("latin-1"),
    )


def _one_line(text: str) -> str:
    return text.replace("\r", "").replace("\n", "")


def TestOneInput(data: bytes) -> None:
    HTTP.run(build(data), events=True)


def main() -> None:
    import atheris

    atheris.instrument_all()  # the dkron modules are already imported above
    atheris.Setup(sys.argv, TestOneInput)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
