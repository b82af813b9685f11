"""REST API list latency and agent memory with 10,000 jobs.

Starts a real ``python -m dkron agent`` (single server, data in a temporary
directory), creates N jobs through ``POST /v1/jobs`` (``@manually``, so none
fires), then times ``GET /v1/jobs?_start=0&_end=25`` over one keep-alive
connection and reads the agent's resident memory.  Prints one JSON object:
``jobs``, ``create_per_s``, ``list_p50_ms``, ``list_p99_ms`` (target <= 20) and
``rss_mb`` (target <= 200).

    python bench/api.py [--jobs 10000] [--requests 500]
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time

from dkron.testing.procs import free_port


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description="REST API latency and memory")
    parser.add_argument("--jobs", type=int, default=10_000)
    parser.add_argument("--requests", type=int, default=500)
    args = parser.parse_args()
    port = free_port()
    with tempfile.TemporaryDirectory() as data:
        argv = [
            sys.executable, "-m", "dkron", "agent", "--server", "--bootstrap-expect", "1",
            "--node-name", "bench", "--data-dir", data, "--http-addr", f"127.0.0.1:{port}",
            "--bind-addr", f"127.0.0.1:{free_port()}", "--rpc-port", str(free_port()),
        ]  # fmt: skip
        proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
            deadline = time.monotonic() + 30
            while True:
                try:
                    conn.request("GET", "/v1/leader")
                    resp = conn.getresponse()
                    resp.read()
                    if resp.status == 200:
                        break
                except OSError:
                    conn.close()
                if time.monotonic() > deadline:
                    raise SystemExit("the agent did not start")
                time.sleep(0.1)
            t0 = time.perf_counter()
            for i in range(args.jobs):
                body = json.dumps(
                    {
                        "name": f"job-{i:05d}",
                        "schedule": "@manually",
                        "executor": "shell",
                        "executor_config": {"command": "true"},
                        "metadata": {"team": f"t{i % 10}"},
                    }
                )
                conn.request("POST", "/v1/jobs", body)
                resp = conn.getresponse()
                resp.read()
                if resp.status != 201:
                    raise SystemExit(f"create failed: {resp.status}")
            create_s = time.perf_counter() - t0
            times = []
            for _ in range(args.requests):
                t = time.perf_counter()
                conn.request("GET", "/v1/jobs?_start=0&_end=25")
                resp = conn.getresponse()
                page = json.loads(resp.read())
                times.append((time.perf_counter() - t) * 1000)
                assert len(page) == 25 and resp.getheader("X-Total-Count") == str(args.jobs)
            times.sort()
            # Sorted by next: every job's upcoming slot (kept until it passes).
            by_next = []
            for _ in range(args.requests // 5):
                t = time.perf_counter()
                conn.request("GET", "/v1/jobs?_start=0&_end=25&_sort=next")
                resp = conn.getresponse()
                page = json.loads(resp.read())
                by_next.append((time.perf_counter() - t) * 1000)
                assert len(page) == 25
            by_next.sort()
            print(
                json.dumps(
                    {
                        "bench": "api",
                        "jobs": args.jobs,
                        "create_per_s": round(args.jobs / create_s, 1),
                        "list_p50_ms": round(statistics.median(times), 2),
                        "list_p99_ms": round(times[int(len(times) * 0.99) - 1], 2),
                        "list_by_next_p50_ms": round(statistics.median(by_next), 2),
                        "list_by_next_p99_ms": round(by_next[int(len(by_next) * 0.99) - 1], 2),
                        "rss_mb": round(rss_mb(proc.pid), 1),
                    }
                )
            )
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait()


if __name__ == "__main__":
    main()
