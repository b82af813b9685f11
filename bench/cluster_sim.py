"""Whole-cluster simulation at scale: no slot lost or duplicated across leader crashes.

3 servers and 10 agents (Raft, SWIM, scheduler and execution protocol on one
simulated network), 1,000 jobs ``@every 5s`` with ``catchup: all``, one
virtual hour, the leader killed every 10 virtual minutes (restarted 30 s
later).  Every run executes on one agent for 1 s.  Prints one JSON object:

* ``slots_expected`` — slots the schedules define from creation until the
  scheduling stops (10 s before the end, so that every slot had time to run);
* ``slots_dispatched`` — distinct slots started on a target;
* ``slots_duplicated`` — slots started more than once on one target (target 0),
  counted at every start (``ClusterSim(stop_on_duplicate=False)``: the run goes on);
* ``slots_lost`` — expected slots that never started (target 0);
* ``claim_to_start_p99_s`` — from the claim's commit to the worker starting it;
* ``cpu_s`` — CPU for the whole run (target < 60).

Every execution message crosses the network encoded by ``EXECUTION_CODEC``
(``exec_wire=True``): the messages one node sends another in one delivery
travel as one CBOR array of their codec arrays (as one TCP write carries many
frames), each strictly decoded on arrival.  Every log entry is applied on
each of the three servers; its bytes are decoded once per run, not once per
server (``ClusterSim.decode_entry``: commands are immutable, so the servers
share the decoded command, as ``swim_sim`` shares ``decode_cache``), and a
server that replays an entry after a restart decodes it again.

    python bench/cluster_sim.py [--jobs 1000] [--minutes 60] [--agents 10] [--gc-threshold N]
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import time

from dkron.cli import GC_THRESHOLDS
from dkron.model import Job
from dkron.proto_sansio.execution import ExecutionConfig
from dkron.proto_sansio.planner import to_ns
from dkron.proto_sansio.raft import RaftConfig
from dkron.proto_sansio.swim import LAN
from dkron.schedule import job_schedule
from dkron.testing.cluster_sim import ClusterSim


def main() -> None:
    parser = argparse.ArgumentParser(description="whole-cluster simulation benchmark")
    parser.add_argument("--jobs", type=int, default=1000)
    parser.add_argument("--minutes", type=float, default=60.0)
    parser.add_argument("--agents", type=int, default=10)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument(
        "--gc-threshold",
        type=int,
        default=GC_THRESHOLDS[0],
        help="allocations between young-generation collections "
        "(default: the agent's; CPython's own is 700)",
    )
    args = parser.parse_args()
    # The cluster holds ~10^6 long-lived objects (100 executions per job on each
    # server).  The agent sets the collector as here (dkron.cli.GC_THRESHOLDS);
    # --gc-threshold 700 measures CPython's default, at which the collector
    # rescans them often enough to make the run a third slower.
    gc.set_threshold(args.gc_threshold, *GC_THRESHOLDS[1:])

    cpu0 = time.process_time()
    sim = ClusterSim(
        ["s1", "s2", "s3"],
        [f"a{i:02d}" for i in range(args.agents)],
        seed=args.seed,
        config=RaftConfig(election_timeout=1.0, heartbeat_interval=0.1),
        swim_config=LAN,
        exec_config=ExecutionConfig(heartbeat_interval=1.0, lease_timeout=10.0),
        exec_wire=True,
        stop_on_duplicate=False,
    )
    sim.run(10.0)
    created = sim.wall()
    jobs = [
        Job(
            f"job-{i:04d}",
            schedule="@every 5s",
            catchup="all",
            tags={"role": "worker:1"},
            executor_config={"duration": "1", "chunks": "1"},
        )
        for i in range(args.jobs)
    ]
    for job in jobs:
        sim.add_job_now(job)
    sim.run(5.0)
    end = sim.loop.now + args.minutes * 60
    crashes = 0
    while sim.loop.now + 600 < end:
        sim.run(600.0, check=False)
        leader = sim.leader()
        if leader is not None:
            leader.crash()
            crashes += 1
            sim.run(30.0, check=False)
            leader.restart()
    stop = sim.wall()
    sim.run(max(0.0, end - sim.loop.now), check=False)
    # Count the slots every schedule defines up to 10 s before the end.
    horizon = to_ns(sim.wall()) - 10 * 1_000_000_000
    expected: set[tuple[str, int]] = set()
    for job in jobs:
        schedule = job_schedule(job)
        t = schedule.next_after(created)
        while t is not None and to_ns(t) <= horizon:
            expected.add((job.name, to_ns(t)))
            t = schedule.next_after(t)
    # Every start is recorded once per (job, group, node, attempt); a second
    # start of the same key is counted in started_again (the run goes on).
    dispatched = {(j, g) for (j, g, _n, attempt) in sim.started if attempt == 1}
    duplicated = {(j, g, n) for (j, g, n, attempt) in sim.started_again if attempt == 1}
    delays = sorted(sim.claim_to_start)
    cpu = time.process_time() - cpu0
    print(
        json.dumps(
            {
                "bench": "cluster_sim",
                "servers": 3,
                "agents": args.agents,
                "jobs": args.jobs,
                "virtual_minutes": args.minutes,
                "leader_crashes": crashes,
                "slots_expected": len(expected),
                "slots_dispatched": len(dispatched & expected),
                "slots_duplicated": len(duplicated),
                "slots_lost": len(expected - dispatched),
                "claim_to_start_p50_s": round(statistics.median(delays), 3) if delays else None,
                "claim_to_start_p99_s": round(delays[int(len(delays) * 0.99)], 3)
                if delays
                else None,
                "cpu_s": round(cpu, 1),
                "gc_threshold": args.gc_threshold,
                "stopped_at": stop.isoformat(),
            }
        )
    )


if __name__ == "__main__":
    main()
