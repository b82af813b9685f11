"""Jobs as a client posts them, for the tests and benchmarks that drive a real API."""

from __future__ import annotations

from typing import Any

__all__ = ["shell_job"]


def shell_job(
    name: str, command: str, schedule: str = "@manually", **fields: Any
) -> dict[str, Any]:
    """The shell executor running ``command`` through a shell; ``fields`` adds
    or overrides any other of the job's JSON fields (``tags``, ``retries``...)."""
    return {
        "name": name,
        "schedule": schedule,
        "executor": "shell",
        "executor_config": {"command": command, "shell": "true"},
        **fields,
    }
