"""Execution processors: ``log``, ``files`` and ``syslog``, with Dkron's ``forward`` option.

A job's ``processors`` map says where its output should go instead of (or,
with ``forward``, as well as) the replicated store.  Processors run on the
node that ran the execution, before the result is reported.  Dkron runs them
on the leader instead; here the worker does it because the worker holds the
full output (the leader only sees what was reported), and because the
leader can change between the run and the report, which in Dkron decides on
which host the ``files`` and ``syslog`` output land.  Running on the worker
means the files of a job sit on the host that ran it, every time.

The processors run one after the other in the order of their names (Dkron's
order is Go's random map order); each one sees the execution the previous
one returned.  A processor that fails never loses the execution: the failure
is logged and counted and the output it was given is kept.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, replace

import trio

from dkron.io_trio.executors.base import parse_go_bool
from dkron.model import Execution, Job

__all__ = [
    "DEFAULT_LOG_DIR",
    "FILES_MODE",
    "LOG_MARKER",
    "PROCESSORS",
    "STATS",
    "SYSLOG_MARKER",
    "Processor",
    "ProcessorError",
    "ProcessorStats",
    "files_path",
    "forward_enabled",
    "run_processors",
]

_log = logging.getLogger(__name__)

#: The ``files`` processor's directory when the job names none (Dkron's).
DEFAULT_LOG_DIR = "/var/log/dkron"
FILES_MODE = 0o644
#: What the stored output becomes when it was not forwarded (Dkron's texts).
LOG_MARKER = "Output in dkron log"
SYSLOG_MARKER = "Output in syslog"

#: One processor: the execution, its config (plus ``reporting_node``) -> the new execution.
Processor = Callable[[Execution, Mapping[str, str]], Awaitable[Execution]]


class ProcessorError(Exception):
    """A processor could not do its work; the execution keeps its output."""


@dataclass(slots=True)
class ProcessorStats:
    """Counters the agent exports as metrics."""

    ran: int = 0
    failed: int = 0
    unknown: int = 0


#: The agent-wide counters (``run_processors`` counts here unless given others).
STATS = ProcessorStats()


def forward_enabled(config: Mapping[str, str]) -> bool:
    """``forward`` as Dkron reads it: a Go bool; missing or invalid means false."""
    try:
        return parse_go_bool(config.get("forward", ""))
    except ValueError:
        return False


def _encode(text: str) -> bytes:
    return text.encode("utf-8", "surrogateescape")


# -- log ----------------------------------------------------------------------------


def _write_stream(success: bool, text: str) -> None:
    # Resolved at call time so that a redirected sys.stdout/stderr is honoured.
    stream = sys.stdout if success else sys.stderr
    stream.write(text)
    stream.flush()


async def _log_processor(execution: Execution, config: Mapping[str, str]) -> Execution:
    text = (
        f"----- BEGIN OUTPUT job={execution.job_name} execution={execution.id} -----\n"
        f"{execution.output}\n----- END OUTPUT -----\n"
    )
    try:
        # A blocked stdout pipe must not stall the agent's event loop.
        await trio.to_thread.run_sync(_write_stream, execution.success, text)
    except (OSError, ValueError) as exc:
        raise ProcessorError(f"log: cannot write the output: {exc}") from exc
    if forward_enabled(config):
        return execution
    return replace(execution, output=LOG_MARKER)


# -- files --------------------------------------------------------------------------


def files_path(log_dir: str, execution: Execution) -> str:
    """``<log_dir>/<execution id>.log``; a ``/`` in the node name cannot climb out of it."""
    name = execution.id.replace("/", "_").replace("\0", "_")
    return f"{log_dir.rstrip('/')}/{name}.log"


def _write_file(path: str, data: bytes) -> None:
    """Create the directory, write, fsync; the file is 0644 whatever the umask."""
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, FILES_MODE)
    try:
        os.fchmod(fd, FILES_MODE)
        view = memoryview(data)
        while view:
            written = os.write(fd, view)
            view = view[written:]
        os.fsync(fd)
    finally:
        os.close(fd)
    # The directory entry must be durable too, or a crash can lose a fsynced file.
    dir_fd = os.open(os.path.dirname(path) or ".", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


async def _files_processor(execution: Execution, config: Mapping[str, str]) -> Execution:
    log_dir = config.get("log_dir", "") or DEFAULT_LOG_DIR
    path = files_path(log_dir, execution)
    _log.info("files: writing %s", path)
    try:
        await trio.to_thread.run_sync(_write_file, path, _encode(execution.output))
    except OSError as exc:
        raise ProcessorError(f"files: cannot write {path}: {exc}") from exc
    if forward_enabled(config):
        return execution
    return replace(execution, output=path)


# -- syslog -------------------------------------------------------------------------

_syslog_lock = threading.Lock()


def _write_syslog(text: str) -> None:
    import syslog  # Unix only; a missing module is this processor's failure alone

    with _syslog_lock:  # openlog's ident and facility are process-wide
        syslog.openlog("dkron", 0, syslog.LOG_CRON)
        syslog.syslog(syslog.LOG_INFO | syslog.LOG_CRON, text.replace("\0", "\\0"))


async def _syslog_processor(execution: Execution, config: Mapping[str, str]) -> Execution:
    try:
        await trio.to_thread.run_sync(_write_syslog, execution.output)
    except (ImportError, OSError, ValueError) as exc:
        raise ProcessorError(f"syslog: cannot write the output: {exc}") from exc
    if forward_enabled(config):
        return execution
    return replace(execution, output=SYSLOG_MARKER)


#: Built-in processors by name; the agent may register more.
PROCESSORS: dict[str, Processor] = {
    "files": _files_processor,
    "log": _log_processor,
    "syslog": _syslog_processor,
}


async def run_processors(
    job: Job,
    execution: Execution,
    *,
    node_name: str,
    processors: Mapping[str, Processor] | None = None,
    stats: ProcessorStats | None = None,
) -> Execution:
    """The execution after the job's processors, for the worker to report.

    ``node_name`` is passed to each processor as ``reporting_node`` (the
    node that reports the result, which here is the one that ran it).
    Unknown names are skipped with a warning; failures keep the output.
    """
    registry = PROCESSORS if processors is None else processors
    counters = STATS if stats is None else stats
    for name in sorted(job.processors or {}):
        processor = registry.get(name)
        if processor is None:
            counters.unknown += 1
            _log.warning(
                "processor %r of job %r is not known; skipped (known: %s)",
                name,
                job.name,
                ", ".join(sorted(registry)),
            )
            continue
        config = {**(job.processors or {})[name], "reporting_node": node_name}
        try:
            result = await processor(execution, config)
        except ProcessorError as exc:
            counters.failed += 1
            _log.error(
                "processor %r failed for execution %s of job %r; output kept: %s",
                name,
                execution.id,
                job.name,
                exc,
            )
            continue
        counters.ran += 1
        execution = result
    return execution
