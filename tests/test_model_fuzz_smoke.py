"""The atheris job-JSON harness, driven by Hypothesis: only ValidationError may escape."""

from __future__ import annotations

import importlib.util
import json
import pathlib
from types import ModuleType

from hypothesis import example, given
from hypothesis import strategies as st

_PATH = pathlib.Path(__file__).resolve().parent.parent / "fuzz" / "fuzz_job_json.py"


def _load() -> ModuleType:
    spec = importlib.util.spec_from_file_location("fuzz_job_json", _PATH)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


HARNESS = _load()

scalars = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text()
values = st.recursive(
    scalars, lambda inner: st.lists(inner) | st.dictionaries(st.text(), inner), max_leaves=8
)
keys = st.sampled_from(
    [
        "name",
        "Name",
        "schedule",
        "timezone",
        "retries",
        "tags",
        "executor",
        "executor_config",
        "processors",
        "starts_at",
        "next",
        "concurrency",
        "catchup_window",
        "success_count",
        "dependent_jobs",
    ]
) | st.text(max_size=5)
bodies = st.dictionaries(keys, values, max_size=8).map(lambda d: json.dumps(d).encode())


@given(bodies | st.binary(max_size=200))
@example(
    b'{"name":"a","schedule":"@daily","executor":"shell","executor_config":{"mem_limit":"1e400"}}'
)
@example(b'{"name":"a","schedule":"@daily","starts_at":"9999-12-31T23:59:59.999999999Z"}')
@example(b'{"name":"a","schedule":"@daily","last_success":"0001-01-01T00:00:00Z"}')
def test_harness_only_raises_validation_error(data: bytes) -> None:
    HARNESS.TestOneInput(data)


def test_harness_accepts_a_valid_job() -> None:
    HARNESS.TestOneInput(b'{"name":"job1","schedule":"@every 10s","tags":{"a":"1"}}')
