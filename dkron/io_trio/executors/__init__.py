"""Built-in executors (``shell``, ``http``) and what they share.

Importing the package registers the built-ins in ``EXECUTORS``, so that
``get_executor`` finds them whichever module a caller imported first.
"""

from __future__ import annotations

from dkron.io_trio.executors.base import (
    EXECUTOR_NOT_PRESENT,
    EXECUTORS,
    MAX_OUTPUT,
    NO_EXECUTOR,
    TRIGGERS,
    ExecResult,
    Executor,
    OutputRing,
    OutputSink,
    RunContext,
    final_output,
    get_executor,
    kill_process_group,
    parse_go_bool,
)
from dkron.io_trio.executors.http import HttpExecutor
from dkron.io_trio.executors.shell import ShellExecutor

__all__ = [
    "EXECUTORS",
    "EXECUTOR_NOT_PRESENT",
    "MAX_OUTPUT",
    "NO_EXECUTOR",
    "TRIGGERS",
    "ExecResult",
    "Executor",
    "HttpExecutor",
    "OutputRing",
    "OutputSink",
    "RunContext",
    "ShellExecutor",
    "final_output",
    "get_executor",
    "kill_process_group",
    "parse_go_bool",
]

EXECUTORS.setdefault("shell", ShellExecutor())
EXECUTORS.setdefault("http", HttpExecutor())
