"""Throughput of the Raft core alone: a 3-node cluster driven in memory.

No network model: every drained message is handed straight to its
destination (``--wire`` also encodes and decodes it with the Raft codec), and
persistence goes to the in-memory :class:`~dkron.proto_sansio.raft.DurableLog`.
What is measured is the CPU cost of consensus itself (leader appends,
replication, acknowledgement, commit, apply, periodic compaction) for
100-byte commands proposed in batches, all three nodes sharing one core.
Prints one JSON object.

    python bench/raft_core.py [--seconds 3] [--batch 2000] [--size 100] [--wire]
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from collections import deque

from dkron.proto_sansio.codec import decode_message, encode_message
from dkron.proto_sansio.raft import (
    DurableLog,
    PersistedState,
    RaftConfig,
    RaftMessage,
    RaftNode,
    Role,
)


class Cluster:
    """The smallest correct driver: persist, then send, then apply, per drain."""

    def __init__(self, ids: list[str], config: RaftConfig, *, wire: bool = False) -> None:
        self.wire = wire
        self.wire_bytes = 0
        boot = PersistedState.bootstrap(ids)
        self.nodes = {
            n: RaftNode(n, config, rng=random.Random(i), now=0.0, persisted=boot)
            for i, n in enumerate(ids)
        }
        self.disks = {n: DurableLog(boot) for n in ids}
        self.applied = dict.fromkeys(ids, 0)
        self.now = 0.0
        self.queue: deque[tuple[str, str, RaftMessage]] = deque()

    def pump(self) -> None:
        nodes = self.nodes
        queue = self.queue
        while True:
            busy = False
            for name, node in nodes.items():
                if node.has_ready():
                    busy = True
                    ready = node.drain()
                    disk = self.disks[name]
                    for rec in ready.persist:
                        disk.apply(rec)
                    for dst, msg in ready.messages:
                        if self.wire:
                            body = encode_message(msg)
                            self.wire_bytes += len(body)
                            msg = decode_message(body)
                        queue.append((name, dst, msg))
                    self.applied[name] += len(ready.committed)
            while queue:
                busy = True
                src, dst, msg = queue.popleft()
                nodes[dst].receive(msg, src=src, now=self.now)
            if not busy:
                return

    def tick(self, dt: float) -> None:
        self.now += dt
        for node in self.nodes.values():
            deadline = node.next_deadline()
            if deadline is not None and deadline <= self.now:
                node.handle_timer(self.now)
        self.pump()

    def leader(self) -> RaftNode:
        for _ in range(1000):
            for node in self.nodes.values():
                if node.role is Role.LEADER:
                    return node
            self.tick(0.05)
        raise RuntimeError("no leader elected")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--seconds", type=float, default=3.0, help="CPU seconds to run")
    ap.add_argument("--batch", type=int, default=2000, help="commands per propose_batch")
    ap.add_argument("--size", type=int, default=100, help="bytes per command")
    ap.add_argument("--wire", action="store_true", help="encode and decode every message")
    ap.add_argument("--compact-every", type=int, default=100, help="batches between snapshots")
    args = ap.parse_args(argv)

    cluster = Cluster(["n1", "n2", "n3"], RaftConfig(), wire=args.wire)
    leader = cluster.leader()
    payloads = [random.Random(7).randbytes(args.size) for _ in range(args.batch)]
    start_commit = leader.commit_index

    t0 = time.process_time()
    w0 = time.perf_counter()
    batches = 0
    while time.process_time() - t0 < args.seconds:
        leader.propose_batch(payloads, cluster.now)
        cluster.pump()
        batches += 1
        if batches % 50 == 0:
            cluster.tick(0.001)  # let heartbeats and timers run occasionally
        if batches % args.compact_every == 0:
            # As the agent does: snapshot the app and drop the log prefix.
            for node in cluster.nodes.values():
                node.compact(node.applied_index, b"app-state")
            cluster.pump()
    cpu = time.process_time() - t0
    wall = time.perf_counter() - w0

    committed = leader.commit_index - start_commit
    if any(n.commit_index != leader.commit_index for n in cluster.nodes.values()):
        print("followers did not converge", file=sys.stderr)
        return 1
    print(
        json.dumps(
            {
                "bench": "raft_core",
                "nodes": 3,
                "batch": args.batch,
                "command_bytes": args.size,
                "compact_every_batches": args.compact_every,
                "wire": args.wire,
                "wire_mib": round(cluster.wire_bytes / 2**20, 1),
                "committed": committed,
                "cpu_s": round(cpu, 3),
                "wall_s": round(wall, 3),
                "committed_per_s": round(committed / cpu),
                "cpu_us_per_entry": round(cpu / committed * 1e6, 3),
                "applied_per_node": cluster.applied,
                "python": sys.version.split()[0],
            }
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
