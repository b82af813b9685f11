"""The generic wire codec and the framing: round trips and strict rejection."""

from __future__ import annotations

import contextlib
import dataclasses
import enum

import cbor2
import pytest
from hypothesis import given
from hypothesis import strategies as st

from dkron.proto_sansio.errors import LocalProtocolError, RemoteProtocolError
from dkron.proto_sansio.framing import FrameDecoder, encode_frame
from dkron.proto_sansio.wire import Codec


class Colour(enum.IntEnum):
    RED = 1
    BLUE = 2


@dataclasses.dataclass(frozen=True, slots=True)
class Inner:
    name: str
    weight: float


@dataclasses.dataclass(frozen=True, slots=True)
class Outer:
    n: int
    flag: bool
    blob: bytes
    maybe: str | None
    items: tuple[Inner, ...]
    tags: dict[str, str]
    colour: Colour
    ids: frozenset[int]

    def __post_init__(self) -> None:
        if self.n < 0:
            raise ValueError("n must not be negative")


CODEC = Codec({7: Outer, 8: Inner})

inner = st.builds(Inner, st.text(max_size=5), st.floats(allow_nan=False))
outer = st.builds(
    Outer,
    st.integers(0, 2**63),
    st.booleans(),
    st.binary(max_size=20),
    st.none() | st.text(max_size=5),
    st.lists(inner, max_size=3).map(tuple),
    st.dictionaries(st.text(max_size=3), st.text(max_size=3), max_size=3),
    st.sampled_from(Colour),
    st.frozensets(st.integers(-5, 5), max_size=4),
)


@given(outer)
def test_round_trip(msg: Outer) -> None:
    assert CODEC.decode(CODEC.encode(msg)) == msg


@pytest.mark.parametrize(
    "raw",
    [
        [],
        {"n": 1},
        [99],
        ["7"],
        [7, 1],
        [7, 1, 1, b"", None, [], {}, 1, []],  # bool field given an int
        [7, 1, True, "str", None, [], {}, 1, []],  # bytes field given a str
        [7, 1, True, b"", None, [["a"]], {}, 1, []],  # nested struct arity
        [7, 1, True, b"", None, [], {"k": 1}, 1, []],  # map value type
        [7, 1, True, b"", None, [], {}, 9, []],  # enum value
        [7, -1, True, b"", None, [], {}, 1, []],  # __post_init__ refuses
        [7, 1, True, b"", None, [], {}, 1, [1.5]],  # set item type
        [7, 1, True, b"", None, [], {}, 1, [], "extra"],
    ],
)
def test_strict_rejection(raw: object) -> None:
    with pytest.raises(RemoteProtocolError):
        CODEC.decode(cbor2.dumps(raw))


@given(st.binary(max_size=64))
def test_garbage_raises_only_remote_protocol_error(data: bytes) -> None:
    with contextlib.suppress(RemoteProtocolError):
        CODEC.decode(data)


def test_encoding_an_unregistered_type_is_a_local_error() -> None:
    with pytest.raises(LocalProtocolError):
        CODEC.encode(object())


@given(st.lists(st.binary(max_size=50), max_size=8), st.integers(1, 17))
def test_frames_survive_any_chunking(bodies: list[bytes], chunk: int) -> None:
    stream = b"".join(encode_frame(b, max_frame=64) for b in bodies)
    dec = FrameDecoder(max_frame=64)
    out: list[bytes] = []
    for i in range(0, len(stream), chunk):
        out.extend(dec.feed(stream[i : i + chunk]))
    dec.eof()
    assert out == bodies
    assert dec.buffered == 0


def test_oversized_and_truncated_frames_are_rejected() -> None:
    dec = FrameDecoder(max_frame=10)
    with pytest.raises(RemoteProtocolError):
        dec.feed((11).to_bytes(4, "big") + b"x")
    dec = FrameDecoder(max_frame=10)
    assert dec.feed(encode_frame(b"abc")[:5]) == []
    with pytest.raises(RemoteProtocolError):
        dec.eof()
    with pytest.raises(LocalProtocolError):
        encode_frame(b"x" * 11, max_frame=10)
