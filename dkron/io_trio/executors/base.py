"""What every executor shares: the run context, the result, the output ring.

An executor is an in-process async object rather than Dkron's plugin
subprocess: the agent awaits ``run()`` inside the execution's cancel scope,
so cancelling an execution is ordinary Trio cancellation, and output chunks
reach the agent through an awaited callback, which gives the executor
natural backpressure when the agent cannot keep up.
"""

from __future__ import annotations

import datetime as _dt
import os
import signal
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol

from dkron.golang import go_quote
from dkron.model import format_rfc3339nano

__all__ = [
    "EXECUTORS",
    "EXECUTOR_NOT_PRESENT",
    "MAX_OUTPUT",
    "NO_EXECUTOR",
    "TRIGGERS",
    "ExecResult",
    "Executor",
    "OutputRing",
    "OutputSink",
    "RunContext",
    "final_output",
    "get_executor",
    "go_quote",
    "kill_process_group",
    "parse_go_bool",
]

#: Dkron keeps the last 256,000 bytes of an execution's output (``maxBufSize``).
MAX_OUTPUT = 256_000

#: The worker's text when the job names an executor that does not exist.
EXECUTOR_NOT_PRESENT = "grpc_agent: Specified executor is not present"
#: The worker's text when the job names no executor at all.
NO_EXECUTOR = "grpc_agent: No executor defined, nothing to do"

#: Why a run happened; exported to the job so that a script can tell a retry
#: or a catch-up run from a regular one.
TRIGGERS = frozenset({"schedule", "manual", "retry", "catchup", "dependent"})

_EPOCH = _dt.datetime(1970, 1, 1, tzinfo=_dt.UTC)


@dataclass(frozen=True, slots=True, kw_only=True)
class RunContext:
    """Facts about one run that the job itself may want to see.

    The same facts go to a shell job as environment variables and to an
    HTTP endpoint as headers, so that a job can de-duplicate on the
    execution id or act differently on a retry.
    """

    job_name: str
    execution_id: str
    scheduled_time: _dt.datetime | None
    attempt: int
    trigger: str
    node_name: str

    def __post_init__(self) -> None:
        if not self.job_name:
            raise ValueError("job_name must not be empty")
        if self.attempt < 1:
            raise ValueError(f"attempt must be >= 1, got {self.attempt}")
        if self.trigger not in TRIGGERS:
            raise ValueError(f"trigger must be one of {sorted(TRIGGERS)}, got {self.trigger!r}")
        if self.scheduled_time is not None and self.scheduled_time.utcoffset() is None:
            raise ValueError("scheduled_time must be timezone-aware")
        for name in ("job_name", "execution_id", "node_name", "trigger"):
            value: str = getattr(self, name)
            if any(c in value for c in "\0\r\n"):
                raise ValueError(f"{name} must not contain NUL, CR or LF")

    def scheduled_rfc3339(self) -> str:
        """RFC 3339 in the zone the time was given in, Go's style (``Z``, trimmed fraction)."""
        t = self.scheduled_time
        if t is None:
            return ""
        offset = t.utcoffset()
        seconds = 0 if offset is None else int(offset.total_seconds())
        ns = ((t - _EPOCH) // _dt.timedelta(microseconds=1)) * 1000
        return format_rfc3339nano(ns, seconds)

    def environment(self) -> dict[str, str]:
        """Variables added to a shell job's environment (``ENV_JOB_NAME`` is Dkron's own)."""
        return {
            "ENV_JOB_NAME": self.job_name,
            "DKRON_JOB_NAME": self.job_name,
            "DKRON_SCHEDULED_TIME": self.scheduled_rfc3339(),
            "DKRON_EXECUTION_ID": self.execution_id,
            "DKRON_ATTEMPT": str(self.attempt),
            "DKRON_TRIGGER": self.trigger,
            "DKRON_NODE_NAME": self.node_name,
        }

    def headers(self) -> dict[str, str]:
        """The same facts as request headers for the ``http`` executor."""
        return {
            "X-Dkron-Job-Name": self.job_name,
            "X-Dkron-Scheduled-Time": self.scheduled_rfc3339(),
            "X-Dkron-Execution-Id": self.execution_id,
            "X-Dkron-Attempt": str(self.attempt),
            "X-Dkron-Trigger": self.trigger,
            "X-Dkron-Node-Name": self.node_name,
        }


@dataclass(frozen=True, slots=True, kw_only=True)
class ExecResult:
    """The outcome of one run, as Dkron's ``ExecuteResponse``: failed iff ``error``."""

    success: bool
    output: bytes
    error: str

    def __post_init__(self) -> None:
        if self.success != (self.error == ""):
            raise ValueError("success must be true exactly when error is empty")
        if len(self.output) > MAX_OUTPUT:
            raise ValueError(f"output longer than {MAX_OUTPUT} bytes")

    @classmethod
    def failed(cls, error: str, output: bytes = b"") -> ExecResult:
        return cls(success=False, output=output, error=error or "failed")

    @classmethod
    def of(cls, output: bytes, error: str) -> ExecResult:
        return cls(success=error == "", output=output, error=error)


class OutputSink(Protocol):
    """Receives output chunks as they are produced; awaiting it is the backpressure."""

    async def __call__(self, chunk: bytes, /) -> None: ...


class Executor(Protocol):
    """Runs one job once; cancellation stops the run and is re-raised."""

    async def run(
        self, config: Mapping[str, str], ctx: RunContext, output: OutputSink
    ) -> ExecResult: ...


class OutputRing:
    """A tail-keeping byte buffer, Dkron's ``circbuf`` of ``MAX_OUTPUT`` bytes.

    A job that prints gigabytes must not cost the agent gigabytes: only the
    last ``size`` bytes are kept, which is also what an operator needs to
    see why a run failed.
    """

    __slots__ = ("_buf", "_size", "total_written")

    def __init__(self, size: int = MAX_OUTPUT) -> None:
        if size <= 0:
            raise ValueError("size must be positive")
        self._size = size
        self._buf = bytearray()
        self.total_written = 0

    def write(self, data: bytes) -> None:
        self.total_written += len(data)
        if len(data) >= self._size:
            self._buf[:] = data[-self._size :]
            return
        self._buf += data
        excess = len(self._buf) - self._size
        if excess > 0:
            del self._buf[:excess]

    @property
    def truncated(self) -> bool:
        return self.total_written > self._size

    def getvalue(self) -> bytes:
        return bytes(self._buf)


def final_output(result: ExecResult, size: int = MAX_OUTPUT) -> bytes:
    """The output a worker reports: ``"<error>\\n"`` then the executor's output, tail-capped.

    This is Dkron's worker rule (the error text is put in front of the
    output so that the UI shows why a run failed).
    """
    ring = OutputRing(size)
    if result.error:
        ring.write(result.error.encode("utf-8", "surrogateescape") + b"\n")
    ring.write(result.output)
    return ring.getvalue()


#: Built-in executors by name; the package ``__init__`` fills it in.
EXECUTORS: dict[str, Executor] = {}


def get_executor(name: str) -> Executor | None:
    """The executor for ``name``, or None (the caller reports ``EXECUTOR_NOT_PRESENT``)."""
    return EXECUTORS.get(name)


_GO_TRUE = frozenset({"1", "t", "T", "TRUE", "true", "True"})
_GO_FALSE = frozenset({"0", "f", "F", "FALSE", "false", "False"})


def parse_go_bool(text: str) -> bool:
    """Go's ``strconv.ParseBool``, with its error text; Dkron's flags use it."""
    if text in _GO_TRUE:
        return True
    if text in _GO_FALSE:
        return False
    raise ValueError(f"strconv.ParseBool: parsing {go_quote(text)}: invalid syntax")


def kill_process_group(pgid: int) -> OSError | None:
    """SIGKILL a whole process group; the OS error if the signal was not sent.

    The group, not the process: a shell job's children (``sh -c 'a | b'``,
    a backgrounded ``sleep``) would otherwise outlive the job, which is
    how orphans pile up on a cron host.  ``ProcessLookupError`` means the
    group is already empty.
    """
    try:
        os.killpg(pgid, signal.SIGKILL)
    except OSError as exc:
        return exc
    return None
