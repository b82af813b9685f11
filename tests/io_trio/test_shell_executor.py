"""The shell executor against real processes: output, limits, groups, credentials."""

from __future__ import annotations

import base64
import contextlib
import datetime as dt
import os
import shlex
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing
from hypothesis import given
from hypothesis import strategies as st

from dkron.io_trio.executors import (
    EXECUTOR_NOT_PRESENT,
    MAX_OUTPUT,
    ExecResult,
    HttpExecutor,
    OutputRing,
    RunContext,
    ShellExecutor,
    final_output,
    get_executor,
    parse_go_bool,
    shell,
)
from dkron.io_trio.executors.shell import (
    format_go_duration,
    process_tree_rss,
    split_command_words,
)

CTX = RunContext(
    job_name="job1",
    execution_id="1735725610123456789-node1",
    scheduled_time=dt.datetime(2025, 1, 2, 3, 4, 5, tzinfo=dt.UTC),
    attempt=2,
    trigger="retry",
    node_name="node1",
)
LIMIT = 15  # seconds; every test is far below it


class Sink:
    """Collects chunks; optionally fires an event when a marker shows up."""

    def __init__(self, marker: bytes | None = None) -> None:
        self.chunks: list[bytes] = []
        self.marker = marker
        self.seen = trio.Event()

    async def __call__(self, chunk: bytes, /) -> None:
        self.chunks.append(chunk)
        if self.marker is not None and self.marker in b"".join(self.chunks):
            self.seen.set()

    @property
    def data(self) -> bytes:
        return b"".join(self.chunks)


async def run(config: dict[str, str], sink: Sink | None = None, **kw: Any) -> ExecResult:
    with trio.fail_after(LIMIT):
        return await ShellExecutor(**kw).run(config, CTX, sink or Sink())


def gone(pid: int) -> bool:
    """Killed: no longer there, or a zombie waiting for a reaper that is not us."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_bytes()
    except FileNotFoundError:
        return True
    return stat[stat.rfind(b")") + 2 :].split()[0] == b"Z"


def kill_leftover(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, 9)


async def assert_gone_soon(pid: int) -> None:
    """SIGKILL is immediate, but the kernel tears a process down asynchronously."""
    for _ in range(500):
        if gone(pid):
            return
        await trio.sleep(0.01)
    pytest.fail(f"process {pid} survived")


# -- output --------------------------------------------------------------------


async def test_stdout_and_stderr_share_one_stream() -> None:
    sink = Sink()
    res = await run({"command": "echo hello; echo oops >&2; echo bye", "shell": "true"}, sink)
    assert res == ExecResult(success=True, output=b"hello\noops\nbye\n", error="")
    assert sink.data == res.output


async def test_streamed_chunks_keep_order() -> None:
    sink = Sink()
    cmd = "i=0; while [ $i -lt 300 ]; do echo line$i; i=$((i+1)); done"
    res = await run({"command": cmd, "shell": "true"}, sink)
    expected = b"".join(b"line%d\n" % i for i in range(300))
    assert res.output == expected
    assert sink.data == expected


async def test_chunks_arrive_while_the_process_runs(tmp_path: Path) -> None:
    flag = tmp_path / "go-on"
    cmd = f"echo first; while [ ! -e {flag} ]; do sleep 0.02; done; echo second"
    sink = Sink(marker=b"first\n")
    result: list[ExecResult] = []

    async def job() -> None:
        result.append(await run({"command": cmd, "shell": "true"}, sink))

    with trio.fail_after(LIMIT):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(job)
            await sink.seen.wait()
            assert not result  # the first line came before the process ended
            flag.touch()
    assert result[0].output == b"first\nsecond\n"
    assert result[0].success


async def test_output_keeps_the_last_256000_bytes() -> None:
    sink = Sink()
    cmd = "head -c 300000 /dev/zero | tr '\\0' a; printf END"
    res = await run({"command": cmd, "shell": "true"}, sink)
    assert res.success
    assert len(res.output) == MAX_OUTPUT
    assert res.output.endswith(b"aaaEND")
    assert len(sink.data) == 300003  # everything was streamed, only the result is capped


# -- command, environment, cwd, payload ----------------------------------------


async def test_environment_context_and_overrides(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DKRON_T_INHERITED", "kept")
    monkeypatch.setenv("DKRON_T_OVERRIDDEN", "old")
    cmd = (
        'echo "$FOO|$BAZ|$DKRON_T_INHERITED|$DKRON_T_OVERRIDDEN|$ENV_JOB_NAME|$DKRON_JOB_NAME|'
        '$DKRON_SCHEDULED_TIME|$DKRON_EXECUTION_ID|$DKRON_ATTEMPT|$DKRON_TRIGGER|$DKRON_NODE_NAME"'
    )
    res = await run(
        {
            "command": cmd,
            "shell": "1",
            "env": "FOO=bar,BAZ=qux=1,DKRON_T_OVERRIDDEN=new,NOEQUALS,,ENV_JOB_NAME=spoofed",
        }
    )
    assert res.output == (
        b"bar|qux=1|kept|new|job1|job1|2025-01-02T03:04:05Z|1735725610123456789-node1|2|retry|node1\n"
    )


async def test_direct_exec_splits_words_and_stops_at_operators() -> None:
    res = await run({"command": 'printf \'%s|\' "a b" \'c d\' e\\ f "g\\"h"'})
    assert res.output == b'a b|c d|e f|g"h|'
    res = await run({"command": "echo hi && echo there"})
    assert res.output == b"hi\n"  # go-shellwords drops everything from the operator on
    res = await run({"command": "echo $HOME", "shell": "yes"})  # not a Go bool: no shell
    assert res.output == b"$HOME\n"


async def test_cwd(tmp_path: Path) -> None:
    res = await run({"command": "pwd", "cwd": str(tmp_path)})
    assert res.output == str(tmp_path).encode() + b"\n"


async def test_payload_goes_to_stdin_then_eof() -> None:
    payload = b"hello\x00world\n" * 10000  # bigger than a pipe buffer
    res = await run({"command": "cat", "payload": base64.b64encode(payload).decode()})
    assert res.success
    assert res.output == payload
    res = await run({"command": "cat"})  # no payload: stdin is closed at once
    assert res == ExecResult(success=True, output=b"", error="")


async def test_payload_the_command_does_not_read() -> None:
    payload = base64.b64encode(b"x" * 1_000_000).decode()
    res = await run({"command": "true", "payload": payload})
    assert res.success


# -- failures ------------------------------------------------------------------


async def test_exit_status_and_signals() -> None:
    res = await run({"command": "echo partial; exit 3", "shell": "true"})
    assert res == ExecResult(success=False, output=b"partial\n", error="exit status 3")
    res = await run({"command": "kill -TERM $$", "shell": "true"})
    assert res.error == "signal: terminated"
    assert final_output(res) == b"signal: terminated\n"


@pytest.mark.parametrize(
    ("config", "error"),
    [
        ({"command": ""}, "shell: Command missing"),
        ({"command": "   ", "shell": "true"}, "shell: Command missing"),
        ({}, "shell: Command missing"),
        ({"command": "echo 'unterminated"}, "invalid command line string"),
        (
            {"command": "no-such-command-xyz arg"},
            'exec: "no-such-command-xyz": executable file not found in $PATH',
        ),
        (
            {"command": "/nonexistent/bin/x"},
            "fork/exec /nonexistent/bin/x: no such file or directory",
        ),
        (
            {"command": "pwd", "cwd": "/nonexistent/dir"},
            "chdir /nonexistent/dir: no such file or directory",
        ),
        ({"command": "true", "timeout": "foreverandever"}, "shell: Error parsing job timeout"),
        (
            {"command": "true", "mem_limit": "100PB"},
            "shell: Error parsing job memory limit: unsupported memory unit: PB",
        ),
        ({"command": "cat", "payload": "a*bc"}, "illegal base64 data at input byte 1"),
        ({"command": "cat", "payload": "abc"}, "illegal base64 data at input byte 0"),
        ({"command": "id", "su": "no-such-user-xyz"}, "user: unknown user no-such-user-xyz"),
        (
            {"command": "id", "su": "root:no-such-group-xyz"},
            "group: unknown group no-such-group-xyz",
        ),
    ],
)
async def test_start_failures_have_no_output(config: dict[str, str], error: str) -> None:
    assert await run(config) == ExecResult(success=False, output=b"", error=error)


# -- timeout, memory limit, cancellation: the whole group dies -----------------


async def test_timeout_kills_the_process_group() -> None:
    sink = Sink()
    cmd = "sleep 30 & echo $!; sleep 30"
    res = await run({"command": cmd, "shell": "true", "timeout": "500ms"}, sink)
    grandchild = int(res.output.split(b"\n")[0])
    try:
        assert res.error == "signal: killed"
        assert not res.success
        assert res.output.endswith(
            b"shell: Job 'sleep 30 & echo $!; sleep 30' execution time exceeding defined "
            b"timeout 500ms. Job was killed"
        )
        assert sink.data == res.output
        await assert_gone_soon(grandchild)
    finally:
        kill_leftover(grandchild)


async def test_timeout_not_reached() -> None:
    res = await run({"command": "echo quick", "timeout": "1m"})
    assert res == ExecResult(success=True, output=b"quick\n", error="")


async def test_memory_limit_kills_a_growing_descendant() -> None:
    grow = "python3 -c 'import time; b = b\"x\" * (120 * 1024 * 1024); time.sleep(30)'"
    # "; true" keeps sh alive as the parent, so the memory is a grandchild's
    res = await run(
        {"command": f"{grow}; true", "shell": "true", "mem_limit": "30MB"},
        mem_check_interval=0.1,
    )
    assert res.error == "signal: killed"
    text = res.output.decode()
    assert text.startswith(f"shell: Job '{grow}; true' memory usage (")
    assert text.endswith("bytes) exceeding defined limit (31457280 bytes). Job was killed")
    used = int(text.split("memory usage (")[1].split(" ")[0])
    assert used > 31457280


async def test_memory_limit_not_reached() -> None:
    res = await run(
        {"command": "sleep 0.3", "mem_limit": "1GB"},
        mem_check_interval=0.05,
    )
    assert res.success


async def test_cancellation_kills_the_group_and_propagates() -> None:
    sink = Sink(marker=b"\n")
    cmd = "sleep 30 & echo $!; sleep 30"
    with trio.fail_after(LIMIT):
        async with trio.open_nursery() as nursery:
            done: list[ExecResult] = []

            async def job() -> None:
                done.append(await ShellExecutor().run({"command": cmd, "shell": "true"}, CTX, sink))

            nursery.start_soon(job)
            await sink.seen.wait()
            nursery.cancel_scope.cancel()
    assert nursery.cancel_scope.cancelled_caught
    assert not done  # the run raised Cancelled rather than returning
    grandchild = int(sink.data.split(b"\n")[0])
    try:
        await assert_gone_soon(grandchild)
    finally:
        kill_leftover(grandchild)


async def test_failing_sink_kills_the_process() -> None:
    class Boom(Exception):
        pass

    async def sink(chunk: bytes, /) -> None:
        raise Boom

    cmd = "sleep 30 & echo $!; sleep 30"
    with trio.fail_after(LIMIT), pytest.RaisesGroup(Boom, flatten_subgroups=True):
        await ShellExecutor().run({"command": cmd, "shell": "true"}, CTX, sink)


async def test_backgrounded_child_holding_the_pipe_does_not_hang_the_job() -> None:
    res = await run({"command": "sleep 30 & echo $!", "shell": "true"}, drain_grace=0.2)
    assert res.success
    kill_leftover(int(res.output.split(b"\n")[0]))


@pytest.mark.skipif(os.geteuid() != 0, reason="su needs root")
async def test_su_runs_as_another_user() -> None:
    res = await run({"command": "id -u", "su": "nobody"})
    assert res.output == b"65534\n"
    res = await run({"command": "id -G", "su": "nobody:nogroup"})
    assert res.output.split() == [b"65534"]  # supplementary groups dropped too


# -- how processes are started: posix_spawn batches, the Popen path -----------


@pytest.fixture(params=["posix_spawn", "popen"])
def spawn_path(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Both ways a process starts must give a job the same world."""
    if request.param == "popen":
        monkeypatch.setattr(shell, "_LIBC", None)
    elif shell._LIBC is None:
        pytest.skip("posix_spawn through ctypes needs glibc")
    return str(request.param)


async def test_both_spawn_paths_give_the_job_the_same_process(spawn_path: str) -> None:
    probe = (
        # own session and group; no signal left ignored (Python ignores SIGPIPE);
        # stdin at EOF without a payload; nothing inherited but 0, 1 and 2
        "read -r x || echo eof; "
        "set -- $(cut -d' ' -f5,6 /proc/$$/stat); echo pgrp=$(( $1 == $$ )) sid=$(( $2 == $$ )); "
        "grep SigIgn /proc/$$/status; ls /proc/$$/fd"  # no pipeline: its pipes would show
    )
    res = await run({"command": probe, "shell": "true"})
    assert res.success, res
    lines = res.output.decode().splitlines()
    assert lines[0] == "eof"
    assert lines[1] == "pgrp=1 sid=1"
    ignored = int(lines[2].split()[1], 16)
    assert not ignored & (1 << (signal.SIGPIPE - 1) | 1 << (signal.SIGXFSZ - 1))
    assert sorted(lines[3:]) == ["0", "1", "2"]


async def test_an_inherited_descriptor_does_not_reach_the_job(spawn_path: str) -> None:
    r, w = os.pipe()
    os.set_inheritable(w, True)  # as a descriptor the agent inherited from its parent
    try:
        res = await ShellExecutor().run({"command": f"test -e /proc/self/fd/{w}"}, CTX, Sink())
        assert res.error == "exit status 1"
    finally:
        os.close(r)
        os.close(w)


async def test_start_failures_on_both_paths(spawn_path: str, tmp_path: Path) -> None:
    res = await run({"command": "no-such-command-xyz arg"})
    assert res.error == 'exec: "no-such-command-xyz": executable file not found in $PATH'
    res = await run({"command": "/nonexistent/bin/x"})
    assert res.error == "fork/exec /nonexistent/bin/x: no such file or directory"
    plain = tmp_path / "plain"
    plain.write_text("echo hi\n")
    res = await run({"command": str(plain)})
    assert res.error == f"fork/exec {plain}: permission denied"
    plain.chmod(0o755)
    plain.write_bytes(b"\x7fELF-not-really")
    res = await run({"command": str(plain)})
    assert res.error == f"fork/exec {plain}: exec format error"


async def test_payload_and_timeout_on_both_paths(spawn_path: str) -> None:
    res = await run({"command": "cat", "payload": base64.b64encode(b"in").decode()})
    assert res == ExecResult(success=True, output=b"in", error="")
    res = await run({"command": "sleep 30", "timeout": "200ms"})
    assert res.error == "signal: killed"


async def test_many_runs_at_once_each_get_their_own_process() -> None:
    executor = ShellExecutor(spawn_concurrency=2)
    out: dict[int, ExecResult] = {}

    async def one(i: int) -> None:
        ctx = RunContext(
            job_name=f"job{i}",
            execution_id=f"{i}-node1",
            scheduled_time=None,
            attempt=1,
            trigger="manual",
            node_name="node1",
        )
        out[i] = await executor.run({"command": "echo $DKRON_JOB_NAME", "shell": "1"}, ctx, Sink())

    with trio.fail_after(LIMIT):
        async with trio.open_nursery() as nursery:
            for i in range(60):  # more than one batch per spawning thread
                nursery.start_soon(one, i)
    assert {i: r.output for i, r in out.items()} == {i: b"job%d\n" % i for i in range(60)}


async def test_an_unexpected_spawn_error_fails_that_run_only(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    libc = shell._LIBC
    if libc is None:
        pytest.skip("posix_spawn through ctypes needs glibc")

    def broken(*args: object) -> int:
        raise TypeError("boom")

    monkeypatch.setattr(libc, "spawn", broken)
    res = await run({"command": "true"})
    assert res == ExecResult(success=False, output=b"", error="fork/exec true: spawn failed: boom")
    assert "spawning 'true' failed" in caplog.text
    monkeypatch.undo()
    assert (await run({"command": "true"})).success  # the spawners are still there


def _processes_with(marker: str) -> list[int]:
    found = []
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                if marker.encode() in Path(f"/proc/{entry.name}/cmdline").read_bytes():
                    found.append(int(entry.name))
    return [pid for pid in found if not gone(pid)]


async def test_runs_cancelled_while_waiting_to_spawn_leave_no_process() -> None:
    """Cancelled before, during or after their batch: whatever was started is killed."""
    marker = f"30.{os.getpid()}7"
    executor = ShellExecutor(spawn_concurrency=1)
    started = trio.Event()

    async def sink(chunk: bytes, /) -> None:
        started.set()

    async def one() -> None:
        await executor.run({"command": f"sh -c 'echo up; exec sleep {marker}'"}, CTX, sink)

    with trio.fail_after(LIMIT):
        async with trio.open_nursery() as nursery:
            for _ in range(40):
                nursery.start_soon(one)
            await started.wait()  # some run, some are being spawned, some queue
            nursery.cancel_scope.cancel()
    # SIGKILL is immediate, but a process killed while its exec reads the disk
    # ends only once that read does: allow a loaded machine its time.
    for _ in range(1000):
        leftover = _processes_with(marker)
        if not leftover:
            break
        await trio.sleep(0.01)
    for pid in leftover:
        kill_leftover(pid)
    assert leftover == []


# -- pure helpers --------------------------------------------------------------


@pytest.mark.parametrize(
    ("line", "words"),
    [
        ("date && echo 'success'", ["date"]),
        ("cmd arg 2>&1", ["cmd", "arg"]),
        ("cmd arg >out", ["cmd", "arg"]),
        ("a | b", ["a"]),
        ("a;b", ["a"]),
        ('a "b\\"c" \'d\\e\'', ["a", 'b"c', "d\\e"]),
        ('"" x', ["", "x"]),
        ("  spaced\targs\n", ["spaced", "args"]),
        ("echo $(date) `x y`", ["echo", "$(date)", "`x y`"]),
        ("'a;b' \"c|d\"", ["a;b", "c|d"]),
        ("e\\ f", ["e f"]),
        ("", []),
    ],
)
def test_split_command_words(line: str, words: list[str]) -> None:
    assert split_command_words(line) == words


@pytest.mark.parametrize("line", ["'open", '"open', "trailing\\", "(sub)", "`open"])
def test_split_command_words_rejects(line: str) -> None:
    with pytest.raises(ValueError, match="invalid command line string"):
        split_command_words(line)


WORD = st.text(st.sampled_from("abcXYZ019_./-=+,:@%"), min_size=1, max_size=8)


@given(st.lists(WORD, max_size=6))
def test_split_agrees_with_posix_words_on_plain_and_quoted_text(words: list[str]) -> None:
    assert split_command_words(" ".join(words)) == words
    assert split_command_words(" ".join(shlex.quote(w) for w in words)) == words


@given(st.text(max_size=40))
def test_split_command_words_only_refuses_with_value_error(line: str) -> None:
    try:
        words = split_command_words(line)
    except ValueError as exc:
        assert str(exc) == "invalid command line string"
    else:
        assert all(isinstance(w, str) for w in words)


@pytest.mark.parametrize(
    ("ns", "text"),
    [
        (0, "0s"),
        (1, "1ns"),
        (1500, "1.5µs"),
        (500_000_000, "500ms"),
        (1_000_000_000, "1s"),
        (1_500_000_000, "1.5s"),
        (90 * 60 * 10**9, "1h30m0s"),
        (61 * 10**9, "1m1s"),
        (-2 * 10**9, "-2s"),
    ],
)
def test_format_go_duration(ns: int, text: str) -> None:
    assert format_go_duration(ns) == text


@given(st.lists(st.binary(max_size=300), max_size=30), st.integers(1, 500))
def test_output_ring_keeps_the_tail(writes: list[bytes], size: int) -> None:
    ring = OutputRing(size)
    for w in writes:
        ring.write(w)
    everything = b"".join(writes)
    assert ring.getvalue() == everything[-size:] if everything else ring.getvalue() == b""
    assert ring.truncated == (len(everything) > size)


def test_process_tree_rss_sees_this_process() -> None:
    assert process_tree_rss(os.getpid()) > 1024 * 1024
    assert process_tree_rss(2**22 + 12345) == 0  # no such process


# -- base: run context, results, registry --------------------------------------


def test_run_context_environment_and_headers() -> None:
    ctx = RunContext(
        job_name="j",
        execution_id="e",
        scheduled_time=dt.datetime(
            2025, 6, 1, 12, 0, 0, 250000, tzinfo=dt.timezone(dt.timedelta(hours=2))
        ),
        attempt=1,
        trigger="catchup",
        node_name="n",
    )
    assert ctx.environment()["DKRON_SCHEDULED_TIME"] == "2025-06-01T12:00:00.25+02:00"
    assert ctx.headers() == {
        "X-Dkron-Job-Name": "j",
        "X-Dkron-Scheduled-Time": "2025-06-01T12:00:00.25+02:00",
        "X-Dkron-Execution-Id": "e",
        "X-Dkron-Attempt": "1",
        "X-Dkron-Trigger": "catchup",
        "X-Dkron-Node-Name": "n",
    }
    manual = RunContext(
        job_name="j",
        execution_id="e",
        scheduled_time=None,
        attempt=1,
        trigger="manual",
        node_name="n",
    )
    assert manual.environment()["DKRON_SCHEDULED_TIME"] == ""
    assert manual.environment()["ENV_JOB_NAME"] == "j"


@pytest.mark.parametrize(
    "kw",
    [
        {"job_name": ""},
        {"attempt": 0},
        {"trigger": "cron"},
        {"scheduled_time": dt.datetime(2025, 1, 1)},  # naive
        {"node_name": "a\r\nb"},
    ],
)
def test_run_context_validation(kw: dict[str, object]) -> None:
    base: dict[str, object] = {
        "job_name": "j",
        "execution_id": "e",
        "scheduled_time": None,
        "attempt": 1,
        "trigger": "schedule",
        "node_name": "n",
    }
    with pytest.raises(ValueError):
        RunContext(**(base | kw))  # type: ignore[arg-type]


def test_exec_result_and_final_output() -> None:
    with pytest.raises(ValueError):
        ExecResult(success=True, output=b"", error="x")
    with pytest.raises(ValueError):
        ExecResult(success=False, output=b"", error="")
    res = ExecResult.failed("exit status 1", b"out")
    assert final_output(res) == b"exit status 1\nout"
    assert final_output(ExecResult.of(b"ok", "")) == b"ok"
    big = ExecResult.failed("boom", b"x" * MAX_OUTPUT)
    assert final_output(big) == b"x" * MAX_OUTPUT  # the tail wins, as in Dkron's ring


def test_registry() -> None:
    assert isinstance(get_executor("shell"), ShellExecutor)
    assert isinstance(get_executor("http"), HttpExecutor)
    assert get_executor("kafka") is None
    assert EXECUTOR_NOT_PRESENT == "grpc_agent: Specified executor is not present"


def test_parse_go_bool() -> None:
    for text in ("1", "t", "T", "TRUE", "true", "True"):
        assert parse_go_bool(text) is True
    for text in ("0", "f", "F", "FALSE", "false", "False"):
        assert parse_go_bool(text) is False
    with pytest.raises(ValueError, match=r'strconv.ParseBool: parsing "yes": invalid syntax'):
        parse_go_bool("yes")


async def test_runs_waiting_for_a_spawner_hold_no_descriptors() -> None:
    """An overloaded node queues runs for its spawner threads. A queued run must
    not hold its pipes yet: with them made on arrival, thousands of waiting runs
    once took every descriptor the agent had (EMFILE on accept and open)."""
    executor = ShellExecutor(spawn_concurrency=1)
    runs = 300
    results: list[ExecResult] = []

    async def one() -> None:
        results.append(await executor.run({"command": "true"}, CTX, Sink()))

    before = len(os.listdir("/proc/self/fd"))
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            for _ in range(runs):
                nursery.start_soon(one)
            # Every run has queued itself; one batch at most is being spawned.
            await trio.testing.wait_all_tasks_blocked()
            held = len(os.listdir("/proc/self/fd")) - before
            assert held <= 4 * shell.SPAWN_BATCH, held
    assert len(results) == runs and all(r.error == "" for r in results)
    assert len(os.listdir("/proc/self/fd")) <= before


def test_a_command_runs_when_the_agent_has_no_stdin_stdout_or_stderr(tmp_path: Path) -> None:
    """A daemonised agent may run with 0, 1 and 2 closed; a new pipe then gets
    those numbers, and the spawn's dup2 onto 0, 1 and 2 must not clobber it
    (its ends are moved above stdio first)."""
    report = tmp_path / "report.txt"
    script = (
        "import os, trio\n"
        "from dkron.io_trio.executors import RunContext, ShellExecutor\n"
        "ctx = RunContext(job_name='j', execution_id='1-n', scheduled_time=None,\n"
        "                 attempt=1, trigger='manual', node_name='n')\n"
        "async def main():\n"
        "    for fd in (0, 1, 2):\n"
        "        os.close(fd)  # the run's pipes will be 0 and 1, its payload's 2 and 3\n"
        "    async def sink(chunk): pass\n"
        "    config = {'command': 'cat', 'payload': 'aGk='}\n"
        "    return await ShellExecutor().run(config, ctx, sink)\n"
        "r = trio.run(main)\n"
        f"open({str(report)!r}, 'w').write(repr((r.success, r.output, r.error)))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=Path(__file__).parents[2], timeout=60, check=False
    )
    assert done.returncode == 0
    assert report.read_text() == repr((True, b"hi", ""))
