"""Drive the codec fuzz target without atheris, so CI exercises it on every run."""

from __future__ import annotations

import importlib.util
import pathlib
import random

from hypothesis import given
from hypothesis import strategies as st

from dkron.proto_sansio.codec import encode_message
from dkron.proto_sansio.framing import encode_frame
from dkron.proto_sansio.raft import AppendEntries, Entry, EntryKind, RequestVote

_PATH = pathlib.Path(__file__).resolve().parents[2] / "fuzz" / "fuzz_codec.py"
_spec = importlib.util.spec_from_file_location("fuzz_codec", _PATH)
assert _spec is not None and _spec.loader is not None
fuzz_codec = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(fuzz_codec)

SEEDS = [
    encode_message(RequestVote(3, 10, 2, True, False)),
    encode_message(AppendEntries(4, 9, 3, 8, (Entry(4, 10, EntryKind.NORMAL, b"x" * 40),), 77)),
]


@given(st.binary(max_size=256))
def test_random_bytes(data: bytes) -> None:
    fuzz_codec.TestOneInput(data)


@given(st.sampled_from(SEEDS), st.randoms(use_true_random=False), st.integers(1, 8))
def test_mutated_valid_messages(seed: bytes, rnd: random.Random, flips: int) -> None:
    data = bytearray(seed)
    for _ in range(flips):
        data[rnd.randrange(len(data))] = rnd.randrange(256)
    fuzz_codec.TestOneInput(bytes(data))
    fuzz_codec.TestOneInput(encode_frame(bytes(data)))
