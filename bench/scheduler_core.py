"""CPU and memory of scheduling alone: the planner and the state machine, no network.

10,000 jobs ``@every 10s`` for one virtual hour.  Every slot goes the whole
way a committed run goes on the leader: the planner emits a ``ClaimSlot``, it
is encoded and applied by the state machine (as Raft would deliver it), the
run's result is encoded and applied as ``ExecutionFinished``, and the planner
observes both.  Virtual time jumps straight to each deadline, so lateness
measures the engine itself.  Prints one JSON object:

* ``cpu_us_per_fire`` — CPU per slot from the engine's wake-up to the
  applied and observed claim (target <= 50);
* ``cpu_us_per_result`` — CPU per applied and observed result;
* ``max_lateness_s`` — the largest (wall when emitted - scheduled time);
* ``bytes_per_job`` — replicated state + schedule engine per job with its
  cursor set and no execution history (target <= 2,048), by tracemalloc.

    python bench/scheduler_core.py [--jobs 10000] [--minutes 60]
"""

from __future__ import annotations

import argparse
import gc
import json
import time
import tracemalloc
from datetime import UTC, datetime, timedelta

from dkron.model import Execution, Job
from dkron.proto_sansio.planner import Planner, to_ns
from dkron.state import (
    ClaimSlot,
    ClaimSlots,
    ExecutionFinished,
    StateConfig,
    StateMachine,
    UpsertJob,
    encode_command,
)

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def build(n: int) -> tuple[StateMachine, int]:
    state = StateMachine(StateConfig(max_executions_per_job=1))
    index = 0
    first = to_ns(T0 + timedelta(seconds=10))
    for i in range(n):
        index += 1
        job = Job(f"job-{i:05d}", schedule="@every 10s", executor="shell", next=first)
        result = state.apply(index, encode_command(UpsertJob(job)))
        assert result.ok, result.error
    return state, index


def run(
    state: StateMachine, planner: Planner, index: int, end: datetime
) -> tuple[int, float, float, float]:
    """Drive the planner to ``end``: (fires, max lateness, claim-path CPU, result-path CPU)."""
    fires = 0
    max_late = 0.0
    claim_cpu = result_cpu = 0.0
    clock = time.process_time
    while True:
        wall = planner.next_deadline()
        if wall is None or wall > end:
            break
        wall_ns = to_ns(wall)
        t0 = clock()
        claims = planner.tick(wall)
        for cmd in claims:
            index += 1
            planner.observe(cmd, state.apply(index, encode_command(cmd)), wall)
        t1 = clock()
        singles = [
            c
            for batch in claims
            for c in (batch.claims if isinstance(batch, ClaimSlots) else (batch,))
        ]
        for cmd in singles:
            assert isinstance(cmd, ClaimSlot)
            fires += 1
            max_late = max(max_late, (wall_ns - cmd.scheduled_time_ns) / 1e9)
            done = Execution(
                cmd.job,
                wall_ns,
                "worker-1",
                finished_at=wall_ns,
                success=True,
                group=cmd.execution_group,
                attempt=1,
                scheduled_time=cmd.scheduled_time_ns,
                trigger=cmd.trigger,
            )
            index += 1
            finished = ExecutionFinished(done)
            planner.observe(finished, state.apply(index, encode_command(finished)), wall)
        claim_cpu += t1 - t0
        result_cpu += clock() - t1
    return fires, max_late, claim_cpu, result_cpu


def bytes_per_job(n: int) -> int:
    """Replicated state + schedule engine per job: jobs loaded and scheduled, no history."""
    gc.collect()
    tracemalloc.start()
    base = tracemalloc.take_snapshot()
    state, _ = build(n)
    planner = Planner(state, term=1, wall=T0, select_targets=lambda job: ("w",))
    gc.collect()
    after = tracemalloc.take_snapshot()
    tracemalloc.stop()
    used = sum(s.size_diff for s in after.compare_to(base, "filename"))
    assert len(planner.scheduler) == n
    return round(used / n)


def main() -> None:
    parser = argparse.ArgumentParser(description="scheduler and state machine CPU and memory")
    parser.add_argument("--jobs", type=int, default=10_000)
    parser.add_argument("--minutes", type=float, default=60.0)
    args = parser.parse_args()

    state, index = build(args.jobs)
    planner = Planner(state, term=1, wall=T0, select_targets=lambda job: ("worker-1",))
    end = T0 + timedelta(minutes=args.minutes)
    fires, max_late, claim_cpu, result_cpu = run(state, planner, index, end)
    print(
        json.dumps(
            {
                "bench": "scheduler_core",
                "jobs": args.jobs,
                "virtual_minutes": args.minutes,
                "fires": fires,
                "fires_expected": args.jobs * int(args.minutes * 60 // 10),
                "cpu_s": round(claim_cpu + result_cpu, 3),
                "cpu_us_per_fire": round(claim_cpu / max(fires, 1) * 1e6, 2),
                "cpu_us_per_result": round(result_cpu / max(fires, 1) * 1e6, 2),
                "max_lateness_s": max_late,
                "bytes_per_job": bytes_per_job(args.jobs),
            }
        )
    )


if __name__ == "__main__":
    main()
