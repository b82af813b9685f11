"""Leader failover with real processes: time to the next fire, and no slot lost or repeated.

Three ``python -m dkron agent --server --bootstrap-expect 3`` processes on
loopback (default flags apart from addresses and data directories, so Raft
fsyncs every batch and gossip uses the LAN profile) run one job
``@every 1s`` with ``catchup: all`` executing ``true``.  Then, ``--kills``
times: find the leader, ``kill -9`` it, measure from the kill to the
``started_at`` of the first run that starts after it, restart the killed
server on its old addresses and data directory, and wait until it is a
healthy follower again (every server agrees on the leader, which counts
three voters, and the restarted server has applied the leader's latest run).

Every server's stored runs are read at least once a second throughout and
merged by execution id, so the 100-run history cap per job loses nothing.
Prints one JSON object: ``kills``, ``next_fire_p50_s`` (target <= 2),
``next_fire_max_s``, ``slots_expected``, ``slots_lost`` (target 0) and
``slots_duplicated`` (target 0), computed over every scheduled slot between
the first and the last one that ran, plus ``runs_seen`` (distinct runs on
all nodes) and ``catchup_runs`` (runs a new leader started late).

    python bench/failover.py [--kills 20] [--keep DIR]
"""

from __future__ import annotations

import argparse
import functools
import json
import pathlib
import statistics
import sys
import tempfile
import time
from typing import Any

from dkron.testing.procs import (
    AgentProc,
    ProcCluster,
    executions,
    parse_time,
    slot_report,
    wait_for,
)

SECOND_NS = 1_000_000_000
JOB = {
    "name": "tick",
    "schedule": "@every 1s",
    "catchup": "all",
    "executor": "shell",
    "executor_config": {"command": "true", "shell": "true"},
}


class Observer:
    """Merges every live server's view of the job's runs, keyed by execution id."""

    def __init__(self, cluster: ProcCluster) -> None:
        self.cluster = cluster
        self.seen: dict[str, dict[str, Any]] = {}
        self.last = 0.0

    def collect(self, *, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self.last < 0.5:
            return
        self.last = now
        for server in self.cluster.servers():
            try:
                runs = executions(server.api, "tick")
            except OSError:
                continue
            for ex in runs:
                self.seen[ex["id"]] = ex

    def first_start_after(self, wall: float) -> float | None:
        starts = [parse_time(e["started_at"]).timestamp() for e in self.seen.values()]
        later = [s for s in starts if s > wall]
        return min(later) if later else None


def latest_group(server: AgentProc) -> int:
    groups = [int(e.get("group", 0)) for e in executions(server.api, "tick")]
    return max(groups, default=0)


def healthy(cluster: ProcCluster, restarted: AgentProc, observer: Observer) -> bool:
    observer.collect()
    leader = cluster.leader()
    restarted.ensure_running()
    if leader is None:
        return False
    status, peers = leader.call("GET", "/v1/raft/peers")
    if status != 200 or sorted(p["id"] for p in peers if p["voter"]) != ["s1", "s2", "s3"]:
        return False
    if leader is restarted:
        return True
    target = latest_group(leader)
    return target > 0 and target in {
        int(e.get("group", 0)) for e in executions(restarted.api, "tick")
    }


def run(root: pathlib.Path, kills: int) -> dict[str, Any]:
    with ProcCluster(root) as cluster:
        s1 = cluster.add("s1", bootstrap_expect=3)
        for name in ("s2", "s3"):
            cluster.add(name, bootstrap_expect=3, join=[s1.gossip_addr])
        leader = cluster.wait_leader(timeout=60)
        wait_for(
            lambda: len(leader.call("GET", "/v1/raft/peers")[1]) == 3,
            timeout=60,
            what="three voters",
        )
        status, body = leader.call("POST", "/v1/jobs", JOB)
        if status != 201:
            raise SystemExit(f"creating the job failed: {status} {body}")
        observer = Observer(cluster)

        def slots() -> int:
            observer.collect()
            return len({e.get("group") for e in observer.seen.values()})

        wait_for(lambda: slots() >= 3, timeout=60, what="the first runs")
        delays: list[float] = []
        for i in range(kills):
            victim = cluster.wait_leader(timeout=60)
            observer.collect(force=True)
            killed_at = time.time()
            victim.kill()

            def fired(killed_at: float = killed_at) -> float | None:
                observer.collect(force=True)
                return observer.first_start_after(killed_at)

            started = wait_for(fired, timeout=120, what="a run after the kill", interval=0.05)
            delays.append(started - killed_at)
            victim.start(join=[a.gossip_addr for a in cluster.servers() if a is not victim])
            wait_for(
                functools.partial(healthy, cluster, victim, observer),
                timeout=120,
                what=f"{victim.name} to rejoin as a healthy follower",
            )
            print(
                f"kill {i + 1}/{kills}: {victim.name}, next fire after {delays[-1]:.2f}s",
                file=sys.stderr,
            )
        # Let the last slots finish on every node, then read the final state.
        time.sleep(3)
        observer.collect(force=True)
        report = slot_report(observer.seen, interval_ns=SECOND_NS)
        return {
            "kills": kills,
            "next_fire_p50_s": round(statistics.median(delays), 3) if delays else None,
            "next_fire_max_s": round(max(delays), 3) if delays else None,
            "slots_expected": report.expected,
            "slots_lost": len(report.lost),
            "slots_duplicated": len(report.duplicated) + len(report.off_grid),
            "runs_seen": len(observer.seen),
            "catchup_runs": sum(e.get("trigger") == "catchup" for e in observer.seen.values()),
        }


def main() -> None:
    parser = argparse.ArgumentParser(description="leader failover with real agent processes")
    parser.add_argument("--kills", type=int, default=20)
    parser.add_argument("--keep", type=pathlib.Path, help="keep data and logs in this directory")
    args = parser.parse_args()
    if args.keep is not None:
        args.keep.mkdir(parents=True, exist_ok=True)
        result = run(args.keep, args.kills)
    else:
        with tempfile.TemporaryDirectory() as tmp:
            result = run(pathlib.Path(tmp), args.kills)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
