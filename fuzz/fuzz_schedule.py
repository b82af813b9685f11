"""atheris harness over schedule strings (and job names and time zones).

Run with ``python fuzz/fuzz_schedule.py [corpus_dir]`` once atheris is
installed; importing the module does not need atheris, so the test-suite runs
`TestOneInput` over Hypothesis inputs.  The only exception a schedule may
raise is `ScheduleError`; anything else, or a broken ``next_after`` contract,
is a finding.
"""

from __future__ import annotations

import sys
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

from dkron.schedule import ScheduleError, parse_schedule

_PROBES = (
    datetime(1, 1, 1, tzinfo=UTC),
    datetime(1970, 1, 1, tzinfo=UTC),
    datetime(2024, 3, 10, 6, 59, 59, 999999, tzinfo=UTC),
    datetime(2024, 11, 3, 6, 30, tzinfo=UTC),
    datetime(9999, 12, 31, 23, 59, 59, tzinfo=UTC),
)
_LOCALS = (UTC, ZoneInfo("America/New_York"), ZoneInfo("Australia/Lord_Howe"))


def TestOneInput(data: bytes) -> None:
    """One input; the name is what atheris calls."""
    selector = data[0] if data else 0
    parts = data[1:].split(b"\x00")
    spec = parts[0].decode("utf-8", "surrogateescape")
    name = parts[1].decode("utf-8", "replace") if len(parts) > 1 else "job"
    zone = parts[2].decode("utf-8", "surrogateescape") if len(parts) > 2 else ""
    try:
        sched = parse_schedule(
            spec, job_name=name, timezone=zone, local_tz=_LOCALS[selector % len(_LOCALS)]
        )
    except ScheduleError:
        return
    for probe in _PROBES:
        t = probe
        for _ in range(3):
            nxt = sched.next_after(t)
            if nxt is None:
                break
            if not (nxt > t and nxt.tzinfo is UTC):
                raise AssertionError(f"{spec!r}: next_after({t}) = {nxt}")
            t = nxt
        if t < datetime(9999, 12, 30, tzinfo=UTC):
            sched.next_after(t + timedelta(microseconds=1))


def main() -> None:
    import atheris

    atheris.instrument_all()  # dkron.schedule is already imported: instrument it in place
    atheris.Setup(sys.argv, TestOneInput)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
