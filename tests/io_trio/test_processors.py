"""Processors on real files, real stdout/stderr and the real syslog call."""

from __future__ import annotations

import dataclasses
import logging
import os
import stat
from collections.abc import Mapping
from pathlib import Path

import pytest
import trio

from dkron.io_trio import processors
from dkron.io_trio.processors import (
    LOG_MARKER,
    SYSLOG_MARKER,
    ProcessorError,
    ProcessorStats,
    files_path,
    forward_enabled,
    run_processors,
)
from dkron.model import Execution, Job

EXECUTION = Execution(
    job_name="job1",
    started_at=1_735_725_610_123_456_789,
    node_name="node1",
    finished_at=1_735_725_611_000_000_000,
    success=True,
    output="hello\nworld",
)
EXEC_ID = "1735725610123456789-node1"


def job(procs: dict[str, dict[str, str]]) -> Job:
    return Job(name="job1", processors=procs)


@pytest.mark.parametrize(
    ("value", "expected"),
    [("true", True), ("1", True), ("T", True), ("false", False), ("", False), ("yes", False)],
)
def test_forward_is_a_go_bool_defaulting_to_false(value: str, expected: bool) -> None:
    assert forward_enabled({"forward": value}) is expected
    assert forward_enabled({}) is False


async def test_files_writes_the_output_and_replaces_it_with_the_path(tmp_path: Path) -> None:
    log_dir = tmp_path / "logs" / "nested"
    stats = ProcessorStats()
    with trio.fail_after(10):
        out = await run_processors(
            job({"files": {"log_dir": str(log_dir)}}), EXECUTION, node_name="leader", stats=stats
        )
    path = log_dir / f"{EXEC_ID}.log"
    assert out.output == str(path)
    assert out == dataclasses.replace(EXECUTION, output=str(path))
    assert path.read_text() == "hello\nworld"
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    assert stats == ProcessorStats(ran=1)


async def test_files_forward_keeps_the_output_and_tolerates_a_trailing_slash(
    tmp_path: Path,
) -> None:
    with trio.fail_after(10):
        out = await run_processors(
            job({"files": {"log_dir": f"{tmp_path}/", "forward": "true"}}),
            EXECUTION,
            node_name="leader",
        )
    assert out == EXECUTION
    assert (tmp_path / f"{EXEC_ID}.log").read_text() == "hello\nworld"


async def test_files_overwrites_and_keeps_undecodable_bytes(tmp_path: Path) -> None:
    odd = Execution(job_name="job1", started_at=1, node_name="n", output="caf\udce9")
    (tmp_path / "1-n.log").write_text("old content that is longer")
    with trio.fail_after(10):
        await run_processors(job({"files": {"log_dir": str(tmp_path)}}), odd, node_name="n")
    assert (tmp_path / "1-n.log").read_bytes() == b"caf\xe9"


def test_files_path_cannot_leave_the_directory() -> None:
    sneaky = Execution(job_name="j", started_at=1, node_name="../../etc/x", output="")
    assert files_path("/var/log/dkron", sneaky) == "/var/log/dkron/1-.._.._etc_x.log"
    assert files_path("/", sneaky).startswith("/1-")


async def test_a_failing_processor_keeps_the_output_and_is_counted(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    stats = ProcessorStats()
    with trio.fail_after(10), caplog.at_level(logging.ERROR):
        out = await run_processors(
            job({"files": {"log_dir": str(blocker / "sub")}, "log": {"forward": "yes"}}),
            EXECUTION,
            node_name="leader",
            stats=stats,
        )
    # files failed (its directory is a file), log still ran and replaced the output.
    assert out.output == LOG_MARKER
    assert stats == ProcessorStats(ran=1, failed=1)
    assert "processor 'files' failed" in caplog.text


async def test_log_prints_to_stdout_on_success_and_stderr_on_failure(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with trio.fail_after(10):
        out = await run_processors(job({"log": {}}), EXECUTION, node_name="leader")
    assert out.output == LOG_MARKER
    captured = capsys.readouterr()
    assert captured.out == (
        f"----- BEGIN OUTPUT job=job1 execution={EXEC_ID} -----\n"
        "hello\nworld\n----- END OUTPUT -----\n"
    )
    assert captured.err == ""

    failed = Execution(job_name="job1", started_at=5, node_name="n2", output="boom")
    with trio.fail_after(10):
        out = await run_processors(job({"log": {"forward": "true"}}), failed, node_name="leader")
    assert out == failed
    captured = capsys.readouterr()
    assert captured.out == ""
    assert "----- BEGIN OUTPUT job=job1 execution=5-n2 -----\nboom\n" in captured.err


async def test_syslog_runs_and_replaces_the_output() -> None:
    stats = ProcessorStats()
    with trio.fail_after(10):
        out = await run_processors(job({"syslog": {}}), EXECUTION, node_name="leader", stats=stats)
        kept = await run_processors(
            job({"syslog": {"forward": "true"}}),
            Execution(job_name="j", started_at=1, node_name="n", output="a\x00b"),
            node_name="leader",
            stats=stats,
        )
    assert out.output == SYSLOG_MARKER
    assert kept.output == "a\x00b"
    assert stats == ProcessorStats(ran=2)


async def test_unknown_processors_are_skipped_with_a_warning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    stats = ProcessorStats()
    with trio.fail_after(10), caplog.at_level(logging.WARNING):
        out = await run_processors(
            job({"fluent": {}, "elasticsearch": {}}), EXECUTION, node_name="n", stats=stats
        )
    assert out == EXECUTION
    assert stats == ProcessorStats(unknown=2)
    assert "processor 'fluent' of job 'job1' is not known" in caplog.text


async def test_processors_chain_in_name_order_and_see_reporting_node() -> None:
    seen: list[tuple[str, str, Mapping[str, str]]] = []

    def make(name: str) -> processors.Processor:
        async def proc(ex: Execution, config: Mapping[str, str]) -> Execution:
            seen.append((name, ex.output, dict(config)))
            if name == "c":
                raise ProcessorError("c is broken")
            return dataclasses.replace(ex, output=ex.output + name)

        return proc

    registry = {n: make(n) for n in "abc"}
    stats = ProcessorStats()
    with trio.fail_after(10):
        out = await run_processors(
            job({"c": {}, "b": {"k": "v"}, "a": {}}),
            EXECUTION,
            node_name="node9",
            processors=registry,
            stats=stats,
        )
    assert [s[0] for s in seen] == ["a", "b", "c"]
    assert seen[1] == ("b", "hello\nworlda", {"k": "v", "reporting_node": "node9"})
    assert out.output == "hello\nworldab"
    assert stats == ProcessorStats(ran=2, failed=1)


async def test_no_processors_is_the_identity() -> None:
    assert await run_processors(Job(name="j"), EXECUTION, node_name="n") is EXECUTION


def test_default_log_dir_is_dkrons() -> None:
    assert processors.DEFAULT_LOG_DIR == "/var/log/dkron"
    assert os.path.isabs(processors.DEFAULT_LOG_DIR)
