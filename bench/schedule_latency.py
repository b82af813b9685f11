"""Fire lateness of N jobs ``@every 1s``: a real agent next to APScheduler 3, same machine.

For each N, two runs of the same length, one after the other:

* **ours** — a real ``python -m dkron agent --server --bootstrap-expect 1``
  on loopback with a fresh data directory; N shell jobs ``@every 1s`` created
  through ``POST /v1/jobs``;
* **apscheduler** — a child process of this script running APScheduler 3's
  ``BackgroundScheduler`` with its defaults (a pool of 10 threads,
  ``misfire_grace_time`` 1 s) and N interval jobs of 1 s, each running the
  command through ``subprocess.run``.

Both run the same process, ``bash -c 'echo "$SCHED $EPOCHREALTIME" >> FILE'``
(exec'd directly, no shell in between), so lateness is measured by the job's
own process on the same clock for both: *process start - scheduled time*.
``$EPOCHREALTIME`` is read by bash itself once it has started, without a
further ``date`` process that would add a fork to every run.  Our agent hands
the scheduled time to the process as ``DKRON_SCHEDULED_TIME`` (RFC 3339).
APScheduler does not tell a job when it was due, so its job computes it from
the trigger: every job starts on the same whole second and fires every
second, and APScheduler drops a run that is more than ``misfire_grace_time``
(1 s) late before calling the job, so the run a job is called for is the
latest whole second at or before the call.

After a warm-up, only runs scheduled inside the measured window of
``--seconds`` count; ``expected`` is N * seconds and ``*_completed`` the runs
whose process started (late runs are waited for a few seconds).  Prints one
JSON object per N: ``n``, ``expected``, ``ours_completed``, ``ours_p50_ms``,
``ours_p99_ms``, ``apscheduler_completed``, ``apscheduler_p50_ms``,
``apscheduler_p99_ms``, and ``spawn_floor_p50_ms``/``spawn_floor_p99_ms``: the
same N processes started at one instant by a bare loop with no scheduler at all,
which is what this machine allows any scheduler.  ``ours_agent_cpu_ms_per_run``
is the agent process's whole CPU time (user + system, from ``/proc/<pid>/stat``
just before it is stopped: start-up, job creation, warm-up and window) divided
by every run it started; it does not move with the machine's other load as
lateness does.  ``ours_window_cpu_ms_per_run`` is the same over the measured
window alone.  ``ours_min_ms`` must not be negative: slots are claimed a little
ahead, but no run may start before its slot.  Targets: at N = 100 ours_p99 <= 1/10 of
APScheduler's; at N = 500 every run completed and ours_p99 <= 100 ms.

    python bench/schedule_latency.py [--n 100 500] [--seconds 30] [--warmup 5]
        [--profile DIR]   # py-spy the agent over the window: DIR/agent-N.txt (raw)

Needs ``apscheduler<4`` installed for the peer (``--skip-apscheduler`` runs
ours alone).
"""

from __future__ import annotations

import argparse
import http.client
import json
import math
import os
import signal
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime

from dkron.testing.procs import free_port


def script(sched_var: str, out: str) -> str:
    """What the job's bash runs: the scheduled time and its own start, one line per run."""
    return f'echo "${sched_var} $EPOCHREALTIME" >> {out}'


SETTLE = 3.0  # seconds to wait after the window for runs that are still late


def parse_sched(text: str) -> float:
    """``$SCHED`` as Unix seconds: RFC 3339 from our agent, a plain number from the peer."""
    if "T" not in text:
        return float(text)
    zone = "+00:00" if text.endswith("Z") else text[-6:]
    body = text[:-1] if text.endswith("Z") else text[:-6]
    whole, _, frac = body.partition(".")
    base = datetime.fromisoformat(whole + zone).timestamp()
    return base + (float("0." + frac) if frac else 0.0)


def lateness(path: str, start: float, seconds: int) -> list[float]:
    """Lateness in ms of every run scheduled inside ``[start, start + seconds)``."""
    out: list[float] = []
    try:
        with open(path) as fh:
            lines = fh.read().splitlines()
    except FileNotFoundError:
        return out
    for line in lines:
        parts = line.split()
        if len(parts) != 2:
            continue
        sched, began = parse_sched(parts[0]), float(parts[1])
        if start - 1e-6 <= sched < start + seconds - 1e-6:
            out.append((began - sched) * 1000)
    return out


def quantile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))], 2)


def runs_since(path: str, since: float) -> int:
    """How many runs of the file started at or after ``since`` (Unix seconds)."""
    try:
        with open(path) as fh:
            return sum(1 for line in fh if len(p := line.split()) == 2 and float(p[1]) >= since)
    except FileNotFoundError:
        return 0


_TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """utime + stime of ``pid`` (its own threads, not its reaped children)."""
    with open(f"/proc/{pid}/stat", "rb") as fh:
        fields = fh.read().rsplit(b")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _TICK


def wait_until(t: float) -> None:
    while (left := t - time.time()) > 0:
        time.sleep(min(left, 0.5))


# ---------------------------------------------------------------------------
# Ours: a real agent process
# ---------------------------------------------------------------------------


def request(conn: http.client.HTTPConnection, method: str, path: str, body: str = "") -> int:
    """One request; a connection the server dropped is reopened (job creation is an upsert)."""
    for attempt in range(5):
        try:
            conn.request(method, path, body or None)
            resp = conn.getresponse()
            resp.read()
            return resp.status
        except (http.client.RemoteDisconnected, ConnectionError):
            conn.close()
            if attempt == 4:
                raise
            time.sleep(0.1)
    raise AssertionError("unreachable")


def run_ours(
    n: int, seconds: int, warmup: float, workdir: str, profile: str | None = None
) -> tuple[list[float], float, float]:
    """Lateness of the window's runs, and the agent's CPU ms per run (whole life, window)."""
    port = free_port()
    data = os.path.join(workdir, "agent-data")
    out = os.path.join(workdir, "ours.txt")
    argv = [
        sys.executable, "-m", "dkron", "agent", "--server", "--bootstrap-expect", "1",
        "--node-name", "bench", "--data-dir", data, "--http-addr", f"127.0.0.1:{port}",
    ]  # fmt: skip
    log = open(os.path.join(workdir, "agent.log"), "wb")  # noqa: SIM115 - closed below
    proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)
    try:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        deadline = time.monotonic() + 30
        while True:
            try:
                if request(conn, "GET", "/v1/leader") == 200:
                    break
            except OSError:
                conn.close()
            if time.monotonic() > deadline:
                raise SystemExit("the agent did not start")
            time.sleep(0.1)
        command = f"bash -c '{script('DKRON_SCHEDULED_TIME', out)}'"
        for i in range(n):
            body = json.dumps(
                {
                    "name": f"late-{i:04d}",
                    "schedule": "@every 1s",
                    "executor": "shell",
                    "executor_config": {"command": command},
                }
            )
            status = request(conn, "POST", "/v1/jobs", body)
            if status != 201:
                raise SystemExit(f"create failed: {status}")
        conn.close()
        start = math.ceil(time.time() + warmup)
        wait_until(start)
        cpu_start = cpu_seconds(proc.pid)
        spy = None
        if profile:
            record = os.path.join(profile, f"agent-{n}.txt")
            spy = subprocess.Popen(
                ["py-spy", "record", "--format", "raw", "-o", record, "--pid", str(proc.pid),
                 "--duration", str(seconds), "--rate", "100"],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            )  # fmt: skip
        wait_until(start + seconds + SETTLE)
        if spy is not None:
            spy.wait()
        if os.environ.get("BENCH_PYSPY_DUMP"):
            subprocess.run(["py-spy", "dump", "--pid", str(proc.pid)], check=False)
        cpu_end = cpu_seconds(proc.pid)
        total_runs = runs_since(out, 0.0)
        window_runs = runs_since(out, start)
        per_run = 1000 * cpu_end / max(1, total_runs)
        window_per_run = 1000 * (cpu_end - cpu_start) / max(1, window_runs)
        return lateness(out, start, seconds), per_run, window_per_run
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
        log.close()


# ---------------------------------------------------------------------------
# The peer: APScheduler 3 in a child process
# ---------------------------------------------------------------------------


def apscheduler_child(n: int, seconds: int, warmup: float, out: str) -> None:
    """Runs in the child: the scheduler with its defaults, until the window has settled."""
    from apscheduler.schedulers.background import BackgroundScheduler  # type: ignore[import-not-found,import-untyped,unused-ignore]

    anchor = math.ceil(time.time()) + 1.0
    argv = ["bash", "-c", script("SCHED", out)]

    def job() -> None:
        # The run this call is for: see the module docstring.
        sched = anchor + math.floor(time.time() - anchor)
        env = dict(os.environ, SCHED=f"{sched:.3f}")
        subprocess.run(argv, env=env, check=False)

    scheduler = BackgroundScheduler(timezone="UTC")
    first = datetime.fromtimestamp(anchor, UTC)
    for i in range(n):
        scheduler.add_job(job, "interval", seconds=1, start_date=first, id=f"late-{i:04d}")
    scheduler.start()
    start = math.ceil(anchor + warmup)
    print(json.dumps({"start": start}), flush=True)
    wait_until(start + seconds + SETTLE)
    scheduler.shutdown(wait=True)


def run_apscheduler(n: int, seconds: int, warmup: float, workdir: str) -> list[float]:
    out = os.path.join(workdir, "apscheduler.txt")
    argv = [
        sys.executable, __file__, "--apscheduler-child", "--n", str(n),
        "--seconds", str(seconds), "--warmup", str(warmup), "--out", out,
    ]  # fmt: skip
    child = subprocess.run(
        argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, check=True, text=True
    )
    start = json.loads(child.stdout.splitlines()[0])["start"]
    return lateness(out, start, seconds)


def spawn_floor(n: int, workdir: str) -> list[float]:
    """The machine's own limit: N of the same processes started at one instant by a
    bare loop (4 spawns at a time, no scheduler), lateness measured the same way."""
    out = os.path.join(workdir, "floor.log")
    due = math.ceil(time.time()) + 1.0
    wait_until(due)
    env = dict(os.environ, SCHED=str(due))
    procs: list[subprocess.Popen[bytes]] = []
    running: list[subprocess.Popen[bytes]] = []
    for _ in range(n):
        if len(running) >= 4:
            running.pop(0).wait()
        p = subprocess.Popen(["bash", "-c", script("SCHED", out)], env=env)
        procs.append(p)
        running.append(p)
    for p in procs:
        p.wait()
    return lateness(out, due, 1)


def main() -> None:
    parser = argparse.ArgumentParser(description="fire lateness: our agent vs APScheduler 3")
    parser.add_argument("--n", type=int, nargs="+", default=[100, 500])
    parser.add_argument("--seconds", type=int, default=30)
    parser.add_argument("--warmup", type=float, default=5.0)
    parser.add_argument("--skip-apscheduler", action="store_true")
    parser.add_argument("--profile", help="py-spy (raw) the agent over the window into DIR")
    parser.add_argument("--apscheduler-child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.apscheduler_child:
        apscheduler_child(args.n[0], args.seconds, args.warmup, args.out)
        return
    for n in args.n:
        expected = n * args.seconds
        with tempfile.TemporaryDirectory() as workdir:
            floor = spawn_floor(n, workdir)
            ours, cpu_per_run, window_cpu = run_ours(
                n, args.seconds, args.warmup, workdir, args.profile
            )
            peer = (
                []
                if args.skip_apscheduler
                else run_apscheduler(n, args.seconds, args.warmup, workdir)
            )
        row: dict[str, object] = {
            "bench": "schedule_latency",
            "n": n,
            "expected": expected,
            "ours_completed": len(ours),
            "ours_p50_ms": quantile(ours, 0.5),
            "ours_p99_ms": quantile(ours, 0.99),
            "ours_min_ms": round(min(ours), 2) if ours else None,
            "ours_agent_cpu_ms_per_run": round(cpu_per_run, 3),
            "ours_window_cpu_ms_per_run": round(window_cpu, 3),
            "spawn_floor_p50_ms": quantile(floor, 0.5),
            "spawn_floor_p99_ms": quantile(floor, 0.99),
        }
        if not args.skip_apscheduler:
            row |= {
                "apscheduler_completed": len(peer),
                "apscheduler_p50_ms": quantile(peer, 0.5),
                "apscheduler_p99_ms": quantile(peer, 0.99),
            }
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
