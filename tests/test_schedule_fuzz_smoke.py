"""The schedule fuzz harness, driven by Hypothesis instead of atheris."""

from __future__ import annotations

import importlib.util
import pathlib
from collections.abc import Callable

from hypothesis import example, given
from hypothesis import strategies as st

_PATH = pathlib.Path(__file__).resolve().parent.parent / "fuzz" / "fuzz_schedule.py"
_SPEC = importlib.util.spec_from_file_location("fuzz_schedule", _PATH)
assert _SPEC is not None and _SPEC.loader is not None
_MODULE = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(_MODULE)
_one_input: Callable[[bytes], None] = _MODULE.TestOneInput

_TOKENS = [
    "*",
    "?",
    "0",
    "5",
    "59",
    "60",
    "7",
    "-",
    "/",
    ",",
    " ",
    "~",
    "H",
    "H(",
    ")",
    "JAN",
    "mon",
    "@every ",
    "@at ",
    "@daily",
    "@manually",
    "@minutely",
    "TZ=",
    "CRON_TZ=",
    "America/New_York",
    "Europe/London",
    "1h30m",
    "1.5",
    "µs",
    "d",
    "2024-03-10T02:30:00",
    "Z",
    "+05:30",
    ".",
    "\x00",
    "é",
]


@given(st.binary(max_size=80))
@example(b"\x00")
@example(b"\x01TZ=America/New_York 0 30 2 * * *")
@example(b"\x02@at 9999-12-31T23:59:59-23:59")
@example(b"\x00H H H H H H\x00name\x00Pacific/Apia")
def test_harness_on_random_bytes(data: bytes) -> None:
    _one_input(data)


@given(st.integers(0, 255), st.lists(st.sampled_from(_TOKENS), max_size=14))
def test_harness_on_schedule_like_text(selector: int, tokens: list[str]) -> None:
    _one_input(bytes([selector]) + "".join(tokens).encode("utf-8"))


@given(
    st.integers(0, 255),
    st.lists(
        st.sampled_from(["*", "*/2", "0", "1-5", "H", "~", "1,2", "?"]), min_size=6, max_size=6
    ),
    st.sampled_from(["", "America/New_York", "Pacific/Apia", "Asia/Tehran", "bogus"]),
)
def test_harness_on_valid_looking_cron(selector: int, fields: list[str], zone: str) -> None:
    _one_input(bytes([selector]) + f"{' '.join(fields)}\x00job\x00{zone}".encode())
