"""Drive the codec and execution fuzz targets without atheris, so CI exercises them."""

from __future__ import annotations

import importlib.util
import pathlib
import random

from hypothesis import given
from hypothesis import strategies as st

from dkron.io_trio.rpc import HELLO_CODEC, ClockedHello
from dkron.model import Job
from dkron.proto_sansio.codec import encode_message
from dkron.proto_sansio.execution import EXECUTION_CODEC, Dispatch, Output, RunKey
from dkron.proto_sansio.framing import encode_frame
from dkron.proto_sansio.raft import AppendEntries, Entry, EntryKind, RequestVote
from dkron.state import ClaimSlot, encode_command

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


_EXEC_PATH = pathlib.Path(__file__).resolve().parents[2] / "fuzz" / "fuzz_execution.py"
_exec_spec = importlib.util.spec_from_file_location("fuzz_execution", _EXEC_PATH)
assert _exec_spec is not None and _exec_spec.loader is not None
fuzz_execution = importlib.util.module_from_spec(_exec_spec)
_exec_spec.loader.exec_module(fuzz_execution)

EXEC_SEEDS = [
    EXECUTION_CODEC.encode(Output(RunKey("job", 1, "w1", 1), 1, b"data")),
    EXECUTION_CODEC.encode(Dispatch(3, RunKey("job", 1, "w1", 1), Job("job"), None, "manual", 1)),
    encode_command(ClaimSlot("job", 5, 1, "schedule", 5, ("w1",), 1)),
    HELLO_CODEC.encode(ClockedHello(2, "w1", 1_772_000_000_000_000_000)),
]


@given(st.binary(max_size=256))
def test_execution_random_bytes(data: bytes) -> None:
    fuzz_execution.TestOneInput(data)


@given(st.sampled_from(EXEC_SEEDS), st.randoms(use_true_random=False), st.integers(1, 8))
def test_execution_mutated_messages(seed: bytes, rnd: random.Random, flips: int) -> None:
    data = bytearray(seed)
    for _ in range(flips):
        data[rnd.randrange(len(data))] = rnd.randrange(256)
    fuzz_execution.TestOneInput(bytes(data))
