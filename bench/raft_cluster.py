"""Replicated writes through three real agents on loopback, against PySyncObj.

Both sides run three processes on this machine, in this run, one after the
other, and generate load inside the leader's process (the shape of
PySyncObj's own benchmark), so neither pays for an extra client hop:

* **ours** — three ``dkron.io_trio.agent.Agent`` servers (``bootstrap-expect
  3``, gossip and RPC over loopback, the Raft log fsync'd on every node).
  Each write is a replicated ``DeleteExecutions`` command naming a job
  whose name makes the entry about 100 bytes: committed on a quorum, fsync'd,
  applied to the state machine, result returned to the caller.
* **PySyncObj** — three ``SyncObj`` processes (its defaults: no fsync), a
  ``@replicated`` method storing a 100-byte value in a dict.

For each: committed operations per second with 1,000 writes in flight, and
the median latency of one write at a time.  Prints one JSON object with
``ours_ops_per_s``, ``pysyncobj_ops_per_s``, ``ours_p50_ms_window1``,
``pysyncobj_p50_ms_window1`` (targets: ours at least twice PySyncObj's ops/s,
ours p50 at most 5 ms).

    pip install pysyncobj && python bench/raft_cluster.py [--seconds 5]
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from typing import Any

from dkron.testing.procs import free_port

WINDOW = 1000
LATENCY_OPS = 300
JOB = "j" * 90  # DeleteExecutions(name) encodes to ~100 bytes


def free_ports(n: int) -> list[int]:
    ports: set[int] = set()
    while len(ports) < n:
        ports.add(free_port())
    return sorted(ports)


# -- ours --------------------------------------------------------------------------


def ours_node(args: argparse.Namespace) -> None:
    import trio

    from dkron.io_trio.agent import Agent
    from dkron.io_trio.live import Options
    from dkron.model import job_from_json
    from dkron.state import DeleteExecutions, UpsertJob

    opts = Options(
        data_dir=args.data,
        node_name=args.name,
        bootstrap_expect=3,
        bind_addr=f"127.0.0.1:{args.gossip}",
        rpc_port=args.rpc,
        http_addr="127.0.0.1:0",
        join=tuple(args.join),
        profile="lan",
    )

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            agent: Agent = await nursery.start(Agent(opts).run)
            while not agent.is_leader():
                await trio.sleep(0.05)
                if agent.node is not None and agent.node.leader_id not in (None, agent.name):
                    await trio.sleep_forever()  # followers only replicate
            node = agent.node
            assert node is not None
            while len(node.membership.voters) < 3:  # noqa: ASYNC110 - polling the core's view
                await trio.sleep(0.05)
            job = job_from_json({"name": JOB, "schedule": "@manually", "executor": "shell"})
            assert (await agent.propose(UpsertJob(job))).ok
            cmd = DeleteExecutions(JOB)
            # Let all three settle into replicating before measuring.
            for _ in range(200):
                await agent.propose(cmd)
            latencies = []
            for _ in range(LATENCY_OPS):
                t0 = time.perf_counter()
                await agent.propose(cmd)
                latencies.append(time.perf_counter() - t0)
            done = 0
            stop = trio.current_time() + args.seconds

            async def writer() -> None:
                nonlocal done
                while trio.current_time() < stop:
                    result = await agent.propose(cmd)
                    assert result.ok
                    done += 1

            t0 = time.perf_counter()
            async with trio.open_nursery() as load:
                for _ in range(WINDOW):
                    load.start_soon(writer)
            elapsed = time.perf_counter() - t0
            print(
                json.dumps(
                    {
                        "ops_per_s": done / elapsed,
                        "p50_ms": statistics.median(latencies) * 1000,
                        "p99_ms": sorted(latencies)[int(0.99 * len(latencies))] * 1000,
                    }
                ),
                flush=True,
            )
            nursery.cancel_scope.cancel()

    trio.run(main)


def run_ours(seconds: float) -> dict[str, Any]:
    ports = free_ports(6)
    with tempfile.TemporaryDirectory() as root:
        procs = []
        for i in range(3):
            argv = [
                sys.executable,
                __file__,
                "--child",
                "ours",
                "--name",
                f"s{i + 1}",
                "--data",
                os.path.join(root, f"s{i + 1}"),
                "--gossip",
                str(ports[2 * i]),
                "--rpc",
                str(ports[2 * i + 1]),
                "--seconds",
                str(seconds),
            ]
            if i:
                argv += ["--join", f"127.0.0.1:{ports[0]}"]
            procs.append(
                subprocess.Popen(argv, stdout=subprocess.PIPE, start_new_session=True, text=True)
            )
            time.sleep(0.3)
        return _collect(procs, seconds)


# -- PySyncObj ---------------------------------------------------------------------


def pso_node(args: argparse.Namespace) -> None:
    from pysyncobj import SyncObj, replicated

    class Store(SyncObj):  # type: ignore[misc]
        def __init__(self, me: str, partners: list[str]) -> None:
            super().__init__(me, partners)
            self.data: dict[int, bytes] = {}

        @replicated  # type: ignore[untyped-decorator]
        def set(self, key: int, value: bytes) -> None:
            self.data[key] = value

    me = f"127.0.0.1:{args.rpc}"
    partners = [f"127.0.0.1:{p}" for p in args.partners]
    store = Store(me, partners)
    value = b"v" * 100
    while store._getLeader() is None:
        time.sleep(0.05)
    if str(store._getLeader()) != me:
        while True:
            time.sleep(3600)
    for i in range(200):
        store.set(i, value, sync=True)
    latencies = []
    for i in range(LATENCY_OPS):
        t0 = time.perf_counter()
        store.set(i, value, sync=True)
        latencies.append(time.perf_counter() - t0)
    window = threading.BoundedSemaphore(WINDOW)
    done = 0
    lock = threading.Lock()

    def finished(result: object, error: object) -> None:
        nonlocal done
        with lock:
            done += 1
        window.release()

    t0 = time.perf_counter()
    stop = t0 + args.seconds
    i = 0
    while time.perf_counter() < stop:
        window.acquire()
        store.set(i, value, callback=finished)
        i += 1
    for _ in range(WINDOW):
        window.acquire()
    elapsed = time.perf_counter() - t0
    print(
        json.dumps(
            {
                "ops_per_s": done / elapsed,
                "p50_ms": statistics.median(latencies) * 1000,
                "p99_ms": sorted(latencies)[int(0.99 * len(latencies))] * 1000,
            }
        ),
        flush=True,
    )
    os._exit(0)


def run_pso(seconds: float) -> dict[str, Any]:
    ports = free_ports(3)
    procs = []
    for i in range(3):
        argv = [
            sys.executable,
            __file__,
            "--child",
            "pysyncobj",
            "--rpc",
            str(ports[i]),
            "--partners",
            *[str(p) for j, p in enumerate(ports) if j != i],
            "--seconds",
            str(seconds),
        ]
        procs.append(
            subprocess.Popen(argv, stdout=subprocess.PIPE, start_new_session=True, text=True)
        )
    return _collect(procs, seconds)


def _collect(procs: list[subprocess.Popen[str]], seconds: float) -> dict[str, Any]:
    """The leader's line; every process is killed whatever happens."""
    import selectors

    try:
        sel = selectors.DefaultSelector()
        for p in procs:
            assert p.stdout is not None
            sel.register(p.stdout, selectors.EVENT_READ, p)
        deadline = time.monotonic() + 120 + seconds
        while time.monotonic() < deadline:
            for key, _ in sel.select(timeout=1.0):
                line = key.fileobj.readline()  # type: ignore[union-attr]
                if line.strip():
                    result: dict[str, Any] = json.loads(line)
                    return result
            if all(p.poll() is not None for p in procs):
                break
        raise SystemExit("no result: the cluster never produced a leader line")
    finally:
        for p in procs:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(p.pid, signal.SIGKILL)
            p.wait()


@dataclasses.dataclass
class Figures:
    ours: dict[str, Any]
    pso: dict[str, Any]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--child", choices=["ours", "pysyncobj"])
    parser.add_argument("--name")
    parser.add_argument("--data")
    parser.add_argument("--gossip", type=int)
    parser.add_argument("--rpc", type=int)
    parser.add_argument("--join", nargs="*", default=[])
    parser.add_argument("--partners", nargs="*", default=[])
    args = parser.parse_args()
    if args.child == "ours":
        ours_node(args)
        return
    if args.child == "pysyncobj":
        pso_node(args)
        return
    ours = run_ours(args.seconds)
    pso = run_pso(args.seconds)
    print(
        json.dumps(
            {
                "window": WINDOW,
                "ours_ops_per_s": round(ours["ops_per_s"]),
                "pysyncobj_ops_per_s": round(pso["ops_per_s"]),
                "ours_p50_ms_window1": round(ours["p50_ms"], 2),
                "pysyncobj_p50_ms_window1": round(pso["p50_ms"], 2),
                "ours_p99_ms_window1": round(ours["p99_ms"], 2),
                "pysyncobj_p99_ms_window1": round(pso["p99_ms"], 2),
                "ratio_ops": round(ours["ops_per_s"] / pso["ops_per_s"], 2),
            }
        )
    )


if __name__ == "__main__":
    main()
