"""The ``shell`` executor: Dkron's keys and messages, run as a child process under Trio.

The process always starts in a session of its own, so that a timeout, a
memory-limit breach or a cancelled execution can SIGKILL the whole process
group: a job's children must never outlive the job that was stopped.

Starting a process is the per-run cost that matters when hundreds of jobs
fire in the same second.  CPython 3.11 holds the GIL for as long as a
``fork``/``vfork`` child takes to ``exec`` (``subprocess`` and
``os.posix_spawn`` alike), so every spawn used to stall the event loop for
the child's exec, whichever thread made it.  On glibc the common case
therefore calls ``posix_spawn(p)`` through ``ctypes``, which releases the
GIL for the call, from a worker thread: the loop keeps running while the
kernel execs the child.  Jobs with ``cwd`` or ``su`` (which ``posix_spawn``
cannot express) and other C libraries go through :class:`subprocess.Popen`
in a worker thread as before.

A job's stdin is ``/dev/null`` unless it has a ``payload`` (then a pipe that
is closed after the payload: either way the job reads EOF); stdout and
stderr share one pipe; the process is reaped as soon as its output ends, and
its exit is awaited on a pidfd only if it is still running by then.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import ctypes
import errno
import fcntl
import functools
import grp
import logging
import math
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
#: How long a run first waits for its output to end before watching its exit.
_EXIT_AFTER_EOF = 0.05
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


@functools.lru_cache(maxsize=1024)
def _command_words(line: str) -> tuple[str, ...]:
    """:func:`split_command_words`, remembered: a job runs the same command every time."""
    return tuple(split_command_words(line))


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


def _not_found(name: str) -> str:
    return f'exec: "{name}": executable file not found in $PATH'


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
    env: dict[bytes, bytes]
    cwd: str | None
    payload: bytes
    timeout_ns: int | None
    mem_limit: int | None
    uid: int | None
    gid: int | None


def _environ() -> dict[bytes, bytes]:
    """A copy of the agent's environment, encoded as the child gets it.

    Read afresh for every run (the agent's environment may change), from the
    encoded mapping behind ``os.environ`` where there is one: decoding every
    variable to copy it and encoding it back to start the process cost more
    than the rest of parsing a job.
    """
    data = getattr(os.environ, "_data", None)
    if isinstance(data, dict):
        return dict(data)
    return {os.fsencode(k): os.fsencode(v) for k, v in os.environ.items()}


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
            argv = list(_command_words(command))
        except ValueError as exc:
            raise _ConfigError(str(exc)) from None
        if not argv:
            raise _ConfigError("shell: Command missing")

    env = _environ()
    for item in config.get("env", "").split(","):
        key, sep, value = item.partition("=")
        if sep and key:
            env[os.fsencode(key)] = os.fsencode(value)
    for key, value in ctx.environment().items():
        env[os.fsencode(key)] = os.fsencode(value)

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
    # posix_spawnp searches the agent's PATH itself (in the child, for free);
    # only the thread path, whose PATH search would follow the job's env,
    # resolves the name here.
    cwd = config.get("cwd", "") or None
    executable = None
    if "/" not in argv[0] and (cwd is not None or uid is not None or _LIBC is None):
        executable = shutil.which(argv[0])
        if executable is None:
            raise _ConfigError(_not_found(argv[0]))

    return _Spec(
        command=command,
        argv=argv,
        executable=executable,
        env=env,
        cwd=cwd,
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

    ``spawn_concurrency`` bounds how many worker threads spawn processes at
    once: when hundreds of jobs fire in the same second, unbounded spawns
    would queue the Raft log and run journal writes (which share the thread
    pool) behind them, and fight over the few cores the kernel needs to
    exec the children.  Each of those threads takes every spawn queued
    meanwhile (up to ``SPAWN_BATCH``) in one hand-off.
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
        # Per Trio run (the executor is a process-wide singleton): the spawner.
        self._spawner: tuple[trio.lowlevel.TrioToken, _Spawner] | None = None

    def _current_spawner(self) -> _Spawner:
        token = trio.lowlevel.current_trio_token()
        if self._spawner is None or self._spawner[0] is not token:
            if _LIBC is not None:
                _close_inherited_fds()
            self._spawner = (token, _Spawner(_LIBC, self._spawn_concurrency))
        return self._spawner[1]

    async def run(
        self, config: Mapping[str, str], ctx: RunContext, output: OutputSink
    ) -> ExecResult:
        try:
            spec = _parse(config, ctx)
        except _ConfigError as exc:
            return ExecResult.failed(str(exc))
        try:
            child = await self._current_spawner().spawn(spec)
        except OSError as exc:
            return ExecResult.failed(_spawn_error(spec, exc))
        return await _Run(self, spec, child, output).run()


# ---------------------------------------------------------------------------
# Spawning and reaping
# ---------------------------------------------------------------------------

#: What ``subprocess.Popen(restore_signals=True)`` resets: Python ignores
#: SIGPIPE and SIGXFSZ, and an ignored signal stays ignored across exec.
_SIGDEF = tuple(sig for name in ("SIGPIPE", "SIGXFSZ") if (sig := getattr(signal, name, None)))


class _LibcSpawn:
    """glibc's ``posix_spawn(p)`` through ``ctypes``: the call itself runs without the GIL.

    Only ``posix_spawn``/``posix_spawnp`` are called through ``CDLL`` (which
    releases the GIL); the set-up calls go through ``PyDLL``, which keeps
    it: every release is a point where a worker thread would have to win
    the GIL back from a busy event loop.  The opaque glibc structures get
    buffers well above their sizes (80, 336 and 128 bytes on x86-64).  One
    instance serves the whole process: its spawn attributes are set up once
    and only read afterwards, so threads may spawn through it concurrently.
    """

    SETSIGDEF = 0x04  # glibc's POSIX_SPAWN_SETSIGDEF
    SETSID = 0x80  # glibc's POSIX_SPAWN_SETSID

    def __init__(self) -> None:
        held = ctypes.PyDLL(None)
        free = ctypes.CDLL(None)
        self._fa_init = held.posix_spawn_file_actions_init
        self._fa_destroy = held.posix_spawn_file_actions_destroy
        self._fa_open = held.posix_spawn_file_actions_addopen
        self._fa_open.argtypes = [
            ctypes.c_void_p,
            ctypes.c_int,
            ctypes.c_char_p,
            ctypes.c_int,
            ctypes.c_uint,
        ]
        self._fa_dup2 = held.posix_spawn_file_actions_adddup2
        self._fa_dup2.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_int]
        self._spawn = free.posix_spawn
        self._spawnp = free.posix_spawnp
        # The attributes are the same for every job: set up once, only ever read.
        self._attr = ctypes.create_string_buffer(1024)
        sigs = ctypes.create_string_buffer(256)
        held.posix_spawnattr_init(self._attr)
        held.sigemptyset(sigs)
        for sig in _SIGDEF:
            held.sigaddset(sigs, ctypes.c_int(int(sig)))
        held.posix_spawnattr_setsigdefault(self._attr, sigs)
        held.posix_spawnattr_setflags(self._attr, ctypes.c_short(self.SETSID | self.SETSIGDEF))
        self._devnull = os.fsencode(os.devnull)

    def spawn(
        self, argv: list[str], env: Mapping[bytes, bytes], stdin: int | None, out: int
    ) -> int:
        """Start ``argv`` in a new session: stdin from ``stdin`` (else ``/dev/null``),
        stdout and stderr on ``out``; a bare name is searched on the agent's PATH."""
        args = [os.fsencode(a) for a in argv]
        envp = [k + b"=" + v for k, v in env.items()]
        c_argv = (ctypes.c_char_p * (len(args) + 1))(*args, None)
        c_envp = (ctypes.c_char_p * (len(envp) + 1))(*envp, None)
        actions = ctypes.create_string_buffer(1024)
        pid = ctypes.c_int(0)
        self._fa_init(actions)
        try:
            if stdin is None:
                self._fa_open(actions, 0, self._devnull, os.O_RDONLY, 0)
            else:
                self._fa_dup2(actions, stdin, 0)
            self._fa_dup2(actions, out, 1)
            self._fa_dup2(actions, out, 2)
            call = self._spawn if b"/" in args[0] else self._spawnp
            err = call(ctypes.byref(pid), args[0], actions, self._attr, c_argv, c_envp)
        finally:
            self._fa_destroy(actions)
        if err:
            raise OSError(err, os.strerror(err), argv[0])
        return pid.value


def _load_libc() -> _LibcSpawn | None:
    """The binding on glibc (whose flag values it hard-codes), else None."""
    try:
        if not os.confstr("CS_GNU_LIBC_VERSION"):
            return None
        return _LibcSpawn()
    except (OSError, ValueError, AttributeError):
        return None


_LIBC = _load_libc()


def _close_inherited_fds() -> None:
    """Mark every descriptor above stderr close-on-exec, as ``Popen(close_fds=True)`` would
    close them: ``posix_spawn`` passes on whatever is inheritable, and a descriptor the
    agent itself inherited from its parent may be (Python's own never are)."""
    try:
        names = os.listdir("/proc/self/fd")
    except OSError:
        return
    for name in names:
        fd = int(name)
        if fd > 2:
            try:
                if os.get_inheritable(fd):
                    os.set_inheritable(fd, False)
            except OSError:
                pass  # the listing's own descriptor, already closed


def _spawn_error(spec: _Spec, exc: OSError) -> str:
    """Go's text for a process that could not start."""
    if spec.cwd is not None and exc.filename == spec.cwd:
        return f"chdir {spec.cwd}: {_errno_text(exc)}"
    name = spec.argv[0]
    # posix_spawnp searched PATH: nothing (executable) by that name on it.
    searched = spec.executable is None and "/" not in name
    if searched and exc.errno in (errno.ENOENT, errno.EACCES, errno.ENOTDIR):
        return _not_found(name)
    return f"fork/exec {spec.executable or name}: {_errno_text(exc)}"


#: The most spawns one worker thread makes per hand-off.
SPAWN_BATCH = 16


@dataclass(slots=True, eq=False)
class _Request:
    """One process to start, and its pipes.

    The pipes are made only when the process is about to start
    (:meth:`open_pipes`): a queue of runs waiting for a spawner, which an
    overloaded node builds up, holds no descriptors.  (With the pipes made on
    arrival, thousands of waiting runs once exhausted the agent's descriptors,
    and with them its ability to accept connections and open files.)
    ``out_w``/``in_r`` are the child's ends, closed once the spawn is done;
    ``out_r``/``in_w`` are the requester's.
    """

    spec: _Spec
    done: trio.Event
    out_r: int = -1
    out_w: int = -1
    in_r: int = -1
    in_w: int = -1
    pid: int = 0
    popen: subprocess.Popen[bytes] | None = None
    error: OSError | None = None
    abandoned: bool = False

    def open_pipes(self) -> None:
        """Output pipe (the child's end as its stdout and stderr), and an input pipe
        for a payload; close-on-exec, the child's ends above stdio (the spawn
        ``dup2``s them onto 0, 1 and 2)."""
        out_r, out_w = os.pipe()
        fds = [out_r, out_w]
        try:
            out_w = fds[1] = _above_stdio(out_w)
            in_r = in_w = -1
            if self.spec.payload:
                in_r, in_w = os.pipe()
                fds += [in_r, in_w]
                in_r = fds[2] = _above_stdio(in_r)
        except BaseException:
            for fd in fds:
                os.close(fd)
            raise
        self.out_r, self.out_w, self.in_r, self.in_w = out_r, out_w, in_r, in_w

    def close_child_ends(self) -> None:
        for fd in (self.out_w, self.in_r):
            if fd >= 0:
                os.close(fd)
        self.out_w = self.in_r = -1

    def close_parent_ends(self) -> None:
        for fd in (self.out_r, self.in_w):
            if fd >= 0:
                os.close(fd)
        self.out_r = self.in_w = -1


def _above_stdio(fd: int) -> int:
    """``fd``, or a close-on-exec copy numbered 3 or more (only when the agent
    itself runs without a stdin, stdout or stderr)."""
    if fd > 2:
        return fd
    copy = fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 3)  # on failure the caller closes fd
    os.close(fd)
    return copy


class _Spawner:
    """Starts processes for one Trio run: ``posix_spawn`` batches in worker threads
    (one system task per thread), or ``Popen`` one at a time where it cannot."""

    def __init__(self, libc: _LibcSpawn | None, concurrency: int) -> None:
        self._libc = libc
        self._concurrency = concurrency
        self._limiter = trio.CapacityLimiter(concurrency)
        self._queue: tuple[trio.MemorySendChannel[_Request], trio.MemoryReceiveChannel[_Request]]
        self._queue = trio.open_memory_channel[_Request](math.inf)
        self._started = False

    async def spawn(self, spec: _Spec) -> _Child:
        req = _Request(spec, trio.Event())
        try:
            if self._libc is not None and spec.cwd is None and spec.uid is None:
                self._start_workers()
                self._queue[0].send_nowait(req)
                await req.done.wait()
            else:
                await self._popen(req)
        except BaseException:
            req.abandoned = True
            # The child's ends belong to whoever opened them (a spawner, which
            # closes them after its spawn); nothing is open for an untaken request.
            req.close_parent_ends()
            if req.pid:  # started, but nobody will run it: nothing of it may survive
                _kill_and_reap_soon(req.pid)
            raise
        if req.error is not None:
            req.close_parent_ends()
            raise req.error
        return _Child(req.pid, req.out_r, None if req.in_w < 0 else req.in_w, req.popen)

    def _start_workers(self) -> None:
        if not self._started:
            self._started = True
            for _ in range(self._concurrency):
                trio.lowlevel.spawn_system_task(self._worker, name="dkron.shell.spawner")

    async def _worker(self) -> None:
        libc = self._libc
        assert libc is not None
        inbox = self._queue[1]
        while True:
            batch: list[_Request] = []
            req = await inbox.receive()
            while True:
                if not req.abandoned:
                    try:
                        req.open_pipes()
                    except OSError as exc:  # out of descriptors: this run fails alone
                        req.error = exc
                        req.done.set()
                    else:
                        batch.append(req)
                if len(batch) >= SPAWN_BATCH:
                    break
                try:
                    req = inbox.receive_nowait()
                except trio.WouldBlock:
                    break
            if batch:
                # Not cancellable: the thread always finishes, so every process it
                # started is handed over (or killed, for a requester that left).
                await trio.to_thread.run_sync(_spawn_batch, libc, batch)
            for req in batch:
                req.close_child_ends()
                if req.abandoned and req.pid:
                    _kill_and_reap_soon(req.pid)
                req.done.set()

    async def _popen(self, req: _Request) -> None:
        spec = req.spec
        async with self._limiter:
            try:
                req.open_pipes()
            except OSError as exc:
                req.error = exc
                return
            try:
                popen = await trio.to_thread.run_sync(
                    lambda: subprocess.Popen(
                        spec.argv,
                        stdin=subprocess.DEVNULL if req.in_r < 0 else req.in_r,
                        stdout=req.out_w,
                        stderr=req.out_w,
                        start_new_session=True,
                        env=spec.env,
                        cwd=spec.cwd,
                        executable=spec.executable,
                        user=spec.uid,
                        group=spec.gid,
                        extra_groups=[] if spec.uid is not None else None,
                    ),
                )
            except OSError as exc:
                req.error = exc
            else:
                req.popen = popen
                req.pid = popen.pid
            finally:
                req.close_child_ends()


def _spawn_batch(libc: _LibcSpawn, batch: list[_Request]) -> None:
    """In a worker thread: start every process of the batch, each error its own.

    Nothing may escape: the spawning tasks are system tasks, whose exceptions
    would end the whole agent.  An unexpected one fails that run alone.
    """
    for req in batch:
        try:
            req.pid = libc.spawn(
                req.spec.argv, req.spec.env, None if req.in_r < 0 else req.in_r, req.out_w
            )
        except OSError as exc:
            req.error = exc
        except Exception as exc:
            _log.exception("shell: spawning %r failed", req.spec.command)
            req.error = OSError(errno.EINVAL, f"spawn failed: {exc}")


def _kill_and_reap_soon(pid: int) -> None:
    """SIGKILL a process group nobody runs, and reap its leader in the background."""
    kill_process_group(pid)
    trio.lowlevel.spawn_system_task(_reap, pid, name="dkron.shell.reap")


async def _reap(pid: int) -> None:
    with contextlib.suppress(ChildProcessError):
        await trio.to_thread.run_sync(os.waitpid, pid, 0)


class _Child:
    """A started process: its output (and input) pipe; its exit is awaited on a pidfd.

    Reaped exactly once, by :meth:`wait`; ``popen`` is kept for a process
    that ``subprocess`` started, so that it is reaped through it.  The pidfd
    is opened only when the process has not exited by the time it is waited
    for (a job that already closed its output usually has): until we reap
    it, its pid cannot be reused, so opening it late is safe.
    """

    __slots__ = ("_pidfd", "pid", "popen", "returncode", "stdin", "stdout")

    def __init__(
        self, pid: int, stdout: int, stdin: int | None, popen: subprocess.Popen[bytes] | None
    ) -> None:
        self.pid = pid
        self.popen = popen
        self.returncode: int | None = None
        self.stdout = trio.lowlevel.FdStream(stdout)
        self.stdin = None if stdin is None else trio.lowlevel.FdStream(stdin)
        self._pidfd: int | None = None

    def _reap(self, *, block: bool) -> bool:
        if self.popen is not None:
            code = self.popen.wait() if block else self.popen.poll()
        else:
            pid, status = os.waitpid(self.pid, 0 if block else os.WNOHANG)
            code = None if pid == 0 else os.waitstatus_to_exitcode(status)
        if code is None:
            return False
        self.returncode = code
        self._close_pidfd()
        return True

    async def wait(self) -> int:
        """The exit status (negative: killed by that signal), once the process exited."""
        polling = False
        while self.returncode is None:
            if self._reap(block=False):
                break
            if self._pidfd is None and not polling:
                try:
                    self._pidfd = os.pidfd_open(self.pid)
                except OSError:  # a kernel without pidfds: poll instead
                    polling = True
            if self._pidfd is not None:
                await trio.lowlevel.wait_readable(self._pidfd)
            else:
                await trio.sleep(0.01)
        assert self.returncode is not None
        return self.returncode

    def _close_pidfd(self) -> None:
        if self._pidfd is not None:
            trio.lowlevel.notify_closing(self._pidfd)
            os.close(self._pidfd)
            self._pidfd = None

    def close(self) -> None:
        """Close the pipes (and the pidfd of a process that was never reaped)."""
        self.stdout.close()
        if self.stdin is not None:
            self.stdin.close()
        self._close_pidfd()


class _Run:
    """One running process: pumps output, enforces limits, reports the outcome."""

    def __init__(
        self, executor: ShellExecutor, spec: _Spec, child: _Child, sink: OutputSink
    ) -> None:
        self.executor = executor
        self.spec = spec
        self.child = child
        self.sink = sink
        self.ring = OutputRing()
        self.notice = ""  # the timeout or memory message Dkron appends

    async def run(self) -> ExecResult:
        child = self.child
        try:
            async with trio.open_nursery() as nursery:
                pumped = trio.Event()
                if child.stdin is not None:
                    nursery.start_soon(self._feed_stdin, child.stdin)
                nursery.start_soon(self._pump, pumped)
                if self.spec.timeout_ns is not None:
                    nursery.start_soon(self._watch_timeout, self.spec.timeout_ns)
                if self.spec.mem_limit is not None:
                    nursery.start_soon(self._watch_memory, self.spec.mem_limit)
                # Most jobs end by closing their output: their exit is then due,
                # and is usually reaped without a pidfd.
                with trio.move_on_after(_EXIT_AFTER_EOF):
                    await pumped.wait()
                await child.wait()
                if not pumped.is_set():
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
            kill_process_group(child.pid)
            with trio.CancelScope(shield=True):
                await child.wait()
            child.close()
            raise
        child.close()
        if self.notice:
            data = self.notice.encode("utf-8", "surrogateescape")
            self.ring.write(data)
            await self.sink(data)
        returncode = child.returncode
        assert returncode is not None  # waited above
        return ExecResult.of(self.ring.getvalue(), _exit_error(returncode))

    async def _feed_stdin(self, stdin: trio.lowlevel.FdStream) -> None:
        try:
            await stdin.send_all(self.spec.payload)
            await stdin.aclose()
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass  # the command exited without reading all of its input, as it may

    async def _pump(self, done: trio.Event) -> None:
        stdout = self.child.stdout
        try:
            while chunk := bytes(await stdout.receive_some(_READ_SIZE)):
                self.ring.write(chunk)
                await self.sink(chunk)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        done.set()

    async def _watch_timeout(self, timeout_ns: int) -> None:
        await trio.sleep(max(timeout_ns, 0) / _NS)
        err = kill_process_group(self.child.pid)
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
            used = await trio.to_thread.run_sync(process_tree_rss, self.child.pid)
            if used > limit:
                kill_process_group(self.child.pid)
                self.notice = (
                    f"shell: Job '{self.spec.command}' memory usage ({used} bytes) exceeding "
                    f"defined limit ({limit} bytes). Job was killed"
                )
                return
