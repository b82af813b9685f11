"""The atheris harness, run without atheris over Hypothesis and seeded random inputs."""

from __future__ import annotations

import importlib.util
import pathlib
import random
from collections.abc import Callable

import cbor2
from hypothesis import given, settings
from hypothesis import strategies as st

from dkron.proto_sansio.swim_wire import (
    Ack,
    Alive,
    PushPull,
    Suspect,
    encode_message,
    encode_packet,
    pack_message,
)

_PATH = pathlib.Path(__file__).resolve().parents[2] / "fuzz" / "fuzz_swim.py"
_spec = importlib.util.spec_from_file_location("fuzz_swim", _PATH)
assert _spec is not None and _spec.loader is not None
_module = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_module)
TestOneInput: Callable[[bytes], None] = _module.TestOneInput

_SEEDS = [
    encode_packet([pack_message(Ack(1)), pack_message(Suspect(0, "peer", "x"))]),
    encode_packet([pack_message(Alive(3, "peer", "10.0.0.2", 7946, {"a": "b"}))]),
    encode_message(PushPull.build(False, [], 0, 0)),
    cbor2.dumps([b"\x82\x03\x01"] * 3),
]


def _default_examples() -> int:
    """The active profile's example budget (dev 30, ci 100, thorough 5000)."""
    current = settings.default
    return current.max_examples if current is not None else 30


def _mutate(rng: random.Random, data: bytes) -> bytes:
    buf = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        op = rng.randrange(4)
        if op == 0 and buf:
            buf[rng.randrange(len(buf))] = rng.randrange(256)
        elif op == 1:
            buf.insert(rng.randrange(len(buf) + 1), rng.randrange(256))
        elif op == 2 and buf:
            del buf[rng.randrange(len(buf)) :]
        else:
            buf += rng.randbytes(rng.randint(1, 8))
    return bytes(buf)


def test_seeded_mutations() -> None:
    rng = random.Random(1234)
    for i in range(2000):
        TestOneInput(_mutate(rng, _SEEDS[i % len(_SEEDS)]))


@settings(max_examples=max(200, _default_examples() * 10))
@given(st.binary(max_size=1500))
def test_random_bytes(data: bytes) -> None:
    TestOneInput(data)


@settings(max_examples=max(100, _default_examples() * 5))
@given(
    st.recursive(
        st.integers() | st.text() | st.binary() | st.none() | st.booleans(),
        lambda inner: st.lists(inner, max_size=6) | st.dictionaries(st.text(), inner, max_size=4),
        max_leaves=30,
    )
)
def test_structured_cbor(value: object) -> None:
    TestOneInput(cbor2.dumps(value))
    TestOneInput(cbor2.dumps([cbor2.dumps(value)]))
