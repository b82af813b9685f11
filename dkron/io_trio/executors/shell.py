"""The ``shell`` executor: Dkron's keys and messages, run as a Trio subprocess.

The process always starts in a session of its own, so that a timeout, a
memory-limit breach or a cancelled execution can SIGKILL the whole process
group: a job's children must never outlive the job that was stopped.
"""

from __future__ import annotations

import base64
import binascii
import grp
import logging
import os
import pwd
import shutil
import signal
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass

import trio

from dkron.io_trio.executors.base import (
    ExecResult,
    OutputRing,
    OutputSink,
    RunContext,
    kill_process_group,
    parse_go_bool,
)
from dkron.model import parse_memory_limit
from dkron.schedule import parse_go_duration

__all__ = [
    "ShellExecutor",
    "format_go_duration",
    "process_tree_rss",
    "split_command_words",
]

_log = logging.getLogger(__name__)

_READ_SIZE = 65536
_NS = 1_000_000_000
_B64_ALPHABET = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/")


# ---------------------------------------------------------------------------
# Pure helpers: command words, durations, payload, /proc accounting
# ---------------------------------------------------------------------------


def split_command_words(line: str) -> list[str]:
    """Split a command as ``mattn/go-shellwords``' ``Parse`` does (Dkron's non-shell mode).

    Written out rather than ``shlex.split`` because the two disagree where
    existing Dkron jobs notice: go-shellwords lets a backslash escape any
    character inside double quotes, and it *stops* at the first unquoted
    ``; & | < >`` (so ``date && echo x`` runs ``date`` alone, and the ``2`` of
    ``cmd 2>&1`` is dropped), where ``shlex`` would pass the operators on as
    arguments.  Unbalanced quotes or a bare ``(`` raise ``ValueError`` with
    go-shellwords' message.
    """
    args: list[str] = []
    buf: list[str] = []
    escaped = single = double = backq = dollar = False
    got = False  # an argument (possibly empty, from quotes) is pending
    invalid = ValueError("invalid command line string")
    for r in line:
        if escaped:
            buf.append(r)
            escaped = False
            got = True
            continue
        if r == "\\":
            if single:
                buf.append(r)
            else:
                escaped = True
            continue
        if r in " \t\r\n":
            if single or double or backq or dollar:
                buf.append(r)
            elif got:
                args.append("".join(buf))
                buf.clear()
                got = False
            continue
        if r == "`" and not (single or double or dollar):
            backq = not backq
        elif r == ")" and not (single or double or backq):
            dollar = False
        elif r == "(" and not (single or double or backq):
            if not dollar and buf and buf[-1] == "$":
                dollar = True
                buf.append(r)
                continue
            raise invalid
        elif r == '"' and not (single or dollar):
            if double:
                got = True
            double = not double
            continue
        elif r == "'" and not (double or dollar):
            if single:
                got = True
            single = not single
            continue
        elif r in ";&|<>" and not (single or double or backq or dollar):
            if r == ">" and buf and buf[0].isascii() and buf[0].isdigit():
                got = False  # a file-descriptor number such as the 2 of 2>&1
            break
        got = True
        buf.append(r)
    else:
        if escaped or single or double or backq or dollar:
            raise invalid
    if got:
        args.append("".join(buf))
    return args


def _frac(value: int, unit: int) -> str:
    whole, rest = divmod(value, unit)
    digits = len(str(unit)) - 1
    tail = f"{rest:0{digits}d}".rstrip("0")
    return f"{whole}.{tail}" if tail else str(whole)


def format_go_duration(ns: int) -> str:
    """Go's ``time.Duration.String`` (``1h30m0s``, ``1.5s``, ``500ms``) for Dkron's messages."""
    if ns == 0:
        return "0s"
    sign = "-" if ns < 0 else ""
    u = abs(ns)
    if u < 1000:
        return f"{sign}{u}ns"
    if u < 1_000_000:
        return f"{sign}{_frac(u, 1000)}µs"
    if u < _NS:
        return f"{sign}{_frac(u, 1_000_000)}ms"
    hours, rem = divmod(u, 3600 * _NS)
    minutes, rem = divmod(rem, 60 * _NS)
    text = _frac(rem, _NS) + "s"
    if hours:
        text = f"{hours}h{minutes}m{text}"
    elif minutes:
        text = f"{minutes}m{text}"
    return sign + text


def _decode_payload(text: str) -> bytes:
    """Go's ``base64.StdEncoding.DecodeString``: padded, CR/LF ignored, strict otherwise."""
    clean = text.replace("\r", "").replace("\n", "")
    try:
        return base64.b64decode(clean.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError):
        pos = next(
            (i for i, c in enumerate(text) if c not in _B64_ALPHABET and c not in "=\r\n"),
            len(clean) - len(clean) % 4,
        )
        raise ValueError(f"illegal base64 data at input byte {pos}") from None


_PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")


def process_tree_rss(root: int) -> int:
    """Summed resident memory of ``root`` and all its descendants, from ``/proc``.

    Descendants rather than the process group, as Dkron does: a child that
    calls ``setsid`` leaves the group but still spends the job's memory.
    Blocking (it reads every ``/proc/<pid>/stat``): call it from a thread.
    """
    children: dict[int, list[int]] = {}
    rss: dict[int, int] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat", "rb") as f:
                data = f.read()
        except OSError:  # exited while we looked
            continue
        fields = data[data.rfind(b")") + 2 :].split()
        if len(fields) < 22:
            continue
        pid = int(entry.name)
        children.setdefault(int(fields[1]), []).append(pid)
        rss[pid] = int(fields[21]) * _PAGE_SIZE
    total = 0
    seen: set[int] = set()
    stack = [root]
    while stack:
        pid = stack.pop()
        if pid in seen:
            continue
        seen.add(pid)
        total += rss.get(pid, 0)
        stack.extend(children.get(pid, ()))
    return total


def _errno_text(exc: OSError) -> str:
    """Go spells errno texts in lower case (``no such file or directory``)."""
    text = exc.strerror or str(exc)
    return text[:1].lower() + text[1:]


def _exit_error(returncode: int) -> str:
    """Go's ``*exec.ExitError`` text for a wait status."""
    if returncode == 0:
        return ""
    if returncode > 0:
        return f"exit status {returncode}"
    name = signal.strsignal(-returncode) or f"signal {-returncode}"
    return "signal: " + name[:1].lower() + name[1:]


# ---------------------------------------------------------------------------
# Configuration
# ---------------------------------------------------------------------------


class _ConfigError(Exception):
    """A job config the executor cannot run; its text is the run's error."""


@dataclass(frozen=True, slots=True, kw_only=True)
class _Spec:
    command: str
    argv: list[str]
    executable: str | None
    env: dict[str, str]
    cwd: str | None
    payload: bytes
    timeout_ns: int | None
    mem_limit: int | None
    uid: int | None
    gid: int | None


def _lookup_su(su: str) -> tuple[int, int]:
    user, _, group = su.partition(":")
    try:
        pw = pwd.getpwnam(user)
    except KeyError:
        raise _ConfigError(f"user: unknown user {user}") from None
    gid = pw.pw_gid
    if group:
        try:
            gid = grp.getgrnam(group).gr_gid
        except KeyError:
            raise _ConfigError(f"group: unknown group {group}") from None
    return pw.pw_uid, gid


def _parse(config: Mapping[str, str], ctx: RunContext) -> _Spec:
    """Read the config in Dkron's order, so the first problem reported is Dkron's first."""
    try:
        use_shell = parse_go_bool(config.get("shell", ""))
    except ValueError:
        use_shell = False
    command = config.get("command", "")
    if use_shell:
        if not command.strip():
            raise _ConfigError("shell: Command missing")
        argv = ["/bin/sh", "-c", command]
    else:
        try:
            argv = split_command_words(command)
        except ValueError as exc:
            raise _ConfigError(str(exc)) from None
        if not argv:
            raise _ConfigError("shell: Command missing")

    env = dict(os.environ)
    for item in config.get("env", "").split(","):
        key, sep, value = item.partition("=")
        if sep and key:
            env[key] = value
    env.update(ctx.environment())

    uid = gid = None
    if su := config.get("su", ""):
        uid, gid = _lookup_su(su)

    try:
        payload = _decode_payload(config.get("payload", ""))
    except ValueError as exc:
        raise _ConfigError(str(exc)) from None

    timeout_ns = None
    if raw := config.get("timeout", ""):
        try:
            timeout_ns = parse_go_duration(raw)
        except ValueError:
            raise _ConfigError("shell: Error parsing job timeout") from None
        if timeout_ns == 0:
            timeout_ns = None

    mem_limit = None
    if raw := config.get("mem_limit", ""):
        try:
            mem_limit = parse_memory_limit(raw)
        except ValueError as exc:
            raise _ConfigError(f"shell: Error parsing job memory limit: {exc}") from None

    # Go resolves a bare name against the agent's PATH when the command is built.
    executable = None
    if "/" not in argv[0]:
        executable = shutil.which(argv[0])
        if executable is None:
            raise _ConfigError(f'exec: "{argv[0]}": executable file not found in $PATH')

    return _Spec(
        command=command,
        argv=argv,
        executable=executable,
        env=env,
        cwd=config.get("cwd", "") or None,
        payload=payload,
        timeout_ns=timeout_ns,
        mem_limit=mem_limit,
        uid=uid,
        gid=gid,
    )


# ---------------------------------------------------------------------------
# The executor
# ---------------------------------------------------------------------------


class ShellExecutor:
    """Runs ``executor_config.command``; see docs/executors.md for every key.

    ``mem_check_interval`` is Dkron's 1 s; ``drain_grace`` bounds how long
    output is still read after the command exits, for the case of a
    backgrounded child that keeps the output pipe open (Dkron would wait for
    that child forever).

    ``spawn_concurrency`` bounds how many processes are being spawned at
    once.  Trio spawns each in a worker thread taken from the same pool that
    the agent's fsyncs use: when hundreds of jobs fire in the same second,
    unbounded spawns would queue the Raft log and run journal writes behind
    them (delaying the *next* claims) and make dozens of threads fight over
    the GIL while the kernel, which does the real work, has only a few cores.
    """

    def __init__(
        self,
        *,
        mem_check_interval: float = 1.0,
        drain_grace: float = 1.0,
        spawn_concurrency: int = 4,
    ) -> None:
        if mem_check_interval <= 0 or drain_grace < 0:
            raise ValueError("intervals must be positive")
        if spawn_concurrency < 1:
            raise ValueError("spawn_concurrency must be at least 1")
        self._mem_check_interval = mem_check_interval
        self._drain_grace = drain_grace
        self._spawn_concurrency = spawn_concurrency
        # One limiter per Trio run: the executor is a process-wide singleton.
        self._spawn_slots: tuple[trio.lowlevel.TrioToken, trio.CapacityLimiter] | None = None

    def _spawn_limiter(self) -> trio.CapacityLimiter:
        token = trio.lowlevel.current_trio_token()
        if self._spawn_slots is None or self._spawn_slots[0] is not token:
            self._spawn_slots = (token, trio.CapacityLimiter(self._spawn_concurrency))
        return self._spawn_slots[1]

    async def run(
        self, config: Mapping[str, str], ctx: RunContext, output: OutputSink
    ) -> ExecResult:
        try:
            spec = _parse(config, ctx)
        except _ConfigError as exc:
            return ExecResult.failed(str(exc))

        try:
            async with self._spawn_limiter():
                proc = await trio.lowlevel.open_process(
                    spec.argv,
                    stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                    env=spec.env,
                    cwd=spec.cwd,
                    executable=spec.executable,
                    user=spec.uid,
                    group=spec.gid,
                    extra_groups=[] if spec.uid is not None else None,
                )
        except OSError as exc:
            if spec.cwd is not None and exc.filename == spec.cwd:
                return ExecResult.failed(f"chdir {spec.cwd}: {_errno_text(exc)}")
            return ExecResult.failed(
                f"fork/exec {spec.executable or spec.argv[0]}: {_errno_text(exc)}"
            )
        return await _Run(self, spec, proc, output).run()


class _Run:
    """One running process: pumps output, enforces limits, reports the outcome."""

    def __init__(
        self, executor: ShellExecutor, spec: _Spec, proc: trio.Process, sink: OutputSink
    ) -> None:
        self.executor = executor
        self.spec = spec
        self.proc = proc
        self.sink = sink
        self.ring = OutputRing()
        self.notice = ""  # the timeout or memory message Dkron appends

    async def run(self) -> ExecResult:
        proc = self.proc
        try:
            async with trio.open_nursery() as nursery:
                pumped = trio.Event()
                nursery.start_soon(self._feed_stdin)
                nursery.start_soon(self._pump, pumped)
                if self.spec.timeout_ns is not None:
                    nursery.start_soon(self._watch_timeout, self.spec.timeout_ns)
                if self.spec.mem_limit is not None:
                    nursery.start_soon(self._watch_memory, self.spec.mem_limit)
                await proc.wait()
                with trio.move_on_after(self.executor._drain_grace):
                    await pumped.wait()
                if not pumped.is_set():
                    _log.info(
                        "shell: %r exited but a child still holds its output open; "
                        "stopped reading after %.1fs",
                        self.spec.command,
                        self.executor._drain_grace,
                    )
                nursery.cancel_scope.cancel()
        except BaseException:
            # Cancelled (the user stopped the execution, the agent is going
            # down) or a failing sink: nothing of the job may survive us.
            kill_process_group(proc.pid)
            with trio.CancelScope(shield=True):
                await proc.wait()
                await self._close_pipes()
            raise
        await self._close_pipes()
        if self.notice:
            data = self.notice.encode("utf-8", "surrogateescape")
            self.ring.write(data)
            await self.sink(data)
        returncode = proc.returncode
        assert returncode is not None  # waited above
        return ExecResult.of(self.ring.getvalue(), _exit_error(returncode))

    async def _close_pipes(self) -> None:
        for stream in (self.proc.stdin, self.proc.stdout):
            if stream is not None:
                await stream.aclose()

    async def _feed_stdin(self) -> None:
        stdin = self.proc.stdin
        assert stdin is not None
        try:
            if self.spec.payload:
                await stdin.send_all(self.spec.payload)
            await stdin.aclose()
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass  # the command exited without reading all of its input, as it may

    async def _pump(self, done: trio.Event) -> None:
        stdout = self.proc.stdout
        assert stdout is not None
        try:
            while chunk := bytes(await stdout.receive_some(_READ_SIZE)):
                self.ring.write(chunk)
                await self.sink(chunk)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        done.set()

    async def _watch_timeout(self, timeout_ns: int) -> None:
        await trio.sleep(max(timeout_ns, 0) / _NS)
        err = kill_process_group(self.proc.pid)
        if isinstance(err, ProcessLookupError):
            return  # nothing left to kill: the job finished in time after all
        head = (
            f"shell: Job '{self.spec.command}' execution time exceeding defined timeout "
            f"{format_go_duration(timeout_ns)}."
        )
        if err is None:
            self.notice = head + " Job was killed"
        else:
            self.notice = head + " SIGKILL returned error. Job may not have been killed"

    async def _watch_memory(self, limit: int) -> None:
        while True:
            await trio.sleep(self.executor._mem_check_interval)
            used = await trio.to_thread.run_sync(process_tree_rss, self.proc.pid)
            if used > limit:
                kill_process_group(self.proc.pid)
                self.notice = (
                    f"shell: Job '{self.spec.command}' memory usage ({used} bytes) exceeding "
                    f"defined limit ({limit} bytes). Job was killed"
                )
                return
