"""One server under a steady load of runs: CPU per run and memory.

Starts a real ``python -m dkron agent`` (single server, data in a temporary
directory), creates N jobs ``@every 1s`` running ``true`` on that node, lets
them run for the given minutes and samples the agent's resident memory every
10 s.  By the end each job's history is at its cap (100 executions) and the
Raft log has been snapshotted several times, so the memory is the steady
state's.  Prints one JSON object: ``runs`` (executions committed),
``runs_per_s``, ``cpu_ms_per_run`` (the agent's user+system CPU, its shell
children included, per run), ``rss_mb`` at the end and ``rss_peak_mb``.

    python bench/agent_load.py [--jobs 200] [--minutes 8]
"""

from __future__ import annotations

import argparse
import json
import pathlib
import tempfile
import time

from dkron.testing.procs import ProcCluster, wait_for


def proc_status(pid: int) -> tuple[float, float]:
    """Resident MB, and CPU seconds of the process and its reaped children."""
    with open(f"/proc/{pid}/status") as fh:
        rss = next(int(line.split()[1]) / 1024 for line in fh if line.startswith("VmRSS:"))
    with open(f"/proc/{pid}/stat") as fh:
        fields = fh.read().rsplit(")", 1)[1].split()
    ticks = sum(int(v) for v in fields[11:15])  # utime, stime, cutime, cstime
    return rss, ticks / 100


def main() -> None:
    parser = argparse.ArgumentParser(description="one server under a steady load of runs")
    parser.add_argument("--jobs", type=int, default=200)
    parser.add_argument("--minutes", type=float, default=8.0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp, ProcCluster(pathlib.Path(tmp)) as cluster:
        node = cluster.add("load")
        wait_for(lambda: node.leader_name() == "load", timeout=30, what="the agent to lead")
        assert node.proc is not None
        pid = node.proc.pid
        for i in range(args.jobs):
            job = {
                "name": f"job-{i:04d}",
                "schedule": "@every 1s",
                "executor": "shell",
                "executor_config": {"command": "true"},
            }
            status, body = node.call("POST", "/v1/jobs", job)
            if status != 201:
                raise SystemExit(f"create failed: {status} {body}")

        def runs() -> int:
            status, jobs = node.call("GET", "/v1/jobs")
            assert status == 200
            return sum(j["success_count"] + j["error_count"] for j in jobs)

        runs0, (_, cpu0), t0 = runs(), proc_status(pid), time.monotonic()
        peak = 0.0
        end = t0 + args.minutes * 60
        while time.monotonic() < end:
            time.sleep(10)
            peak = max(peak, proc_status(pid)[0])
        rss, cpu1 = proc_status(pid)
        done, elapsed = runs() - runs0, time.monotonic() - t0
        print(
            json.dumps(
                {
                    "bench": "agent_load",
                    "jobs": args.jobs,
                    "minutes": args.minutes,
                    "runs": done,
                    "runs_per_s": round(done / elapsed, 1),
                    "cpu_ms_per_run": round((cpu1 - cpu0) * 1000 / max(1, done), 2),
                    "rss_mb": round(rss, 1),
                    "rss_peak_mb": round(max(peak, rss), 1),
                }
            )
        )


if __name__ == "__main__":
    main()
