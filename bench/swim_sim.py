"""SWIM in simulation: detection, join, traffic, false positives, partition healing.

Everything runs in virtual time over the deterministic simulator with the
LAN profile (memberlist's defaults), so the numbers are reproducible for a
given seed.  Prints one JSON object per line, one line per cluster size:

    python bench/swim_sim.py            # N = 10, 100, 1000
    python bench/swim_sim.py --sizes 10 100 --seed 7

Scenarios per line:

* steady state: ``msgs_per_member_per_period`` (datagrams per member per
  probe interval) and ``bytes_per_member_per_s``;
* crashes, staggered: time from crash until every live member lists the
  member as failed (``detect_all_p50_s`` / ``_p99_s``);
* joins through one seed: time until every member sees the newcomer alive;
* ``false_failed_lossless``: failed declarations of members that never
  crashed, over the loss-free scenarios above;
* 10% loss with 5 members whose receive path lags (CPU-starved) by 1.5x
  the minimum suspicion timeout: the same seed run with Lifeguard on and off;
  ``false_failed_lifeguard_on`` / ``_off`` count failed declarations about
  the healthy members, ``slow_members_failed_*`` about the slow ones
  (120 s of virtual time, 30 s at N = 1,000);
* a 20-member cluster split 10|10 for 120 s, then healed: seconds until all
  are alive everywhere again (``partition_heal_max_s``; the same scenario on
  every line);
* ``sim_datagrams_per_cpu_s``: datagrams simulated per CPU second over all of
  the line's runs (gossip storms of the lossy runs carry several messages per
  datagram), and ``_steady`` over the steady-state window alone.

    python bench/swim_sim.py --gc-threshold 700   # CPython's default collector schedule
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import json
import random
import time

from dkron.proto_sansio.swim import LAN, MemberHealth, SwimConfig, suspicion_timeouts
from dkron.testing.swim_sim import SwimCluster, Transition

SLOW_LAG_FACTOR = 1.5
LOSSY_SECONDS = 120.0
PARTITION_SECONDS = 120.0


@dataclasses.dataclass
class _Meter:
    datagrams: int = 0
    cpu: float = 0.0

    def add(self, cluster: SwimCluster, cpu: float) -> None:
        self.datagrams += cluster.datagrams()
        self.cpu += cpu


def _quantile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    idx = min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))
    return round(ordered[idx], 3)


def _cluster(n: int, seed: int, **kw: object) -> SwimCluster:
    """A cluster whose long-lived member tables the cyclic collector leaves alone.

    A thousand members hold a million member records that live as long as
    the run.  Built with the collector paused (it would otherwise walk the
    growing heap again and again: 40% of the build) and then frozen, so no
    full collection during the run walks them either (a sixth of the CPU
    of a lossy N = 1,000 run).  :func:`_release` hands them back to the
    collector when the scenario is over.  Only the collector's schedule
    changes; every object is still created and every datagram still goes
    through the same code.
    """
    gc.disable()
    cluster = SwimCluster(
        n,
        config=kw.pop("config", LAN),  # type: ignore[arg-type]
        seed=seed,
        record=False,
        check=False,
        min_delay=0.0005,
        max_delay=0.002,
        **kw,  # type: ignore[arg-type]
    )
    gc.freeze()
    gc.enable()
    return cluster


def _release() -> None:
    """Collect the previous scenario's cluster before the next one is measured."""
    gc.unfreeze()
    gc.collect()


def steady_and_crashes(n: int, seed: int, meter: _Meter) -> dict[str, float]:
    """Warm up, measure steady-state traffic, then crash members one by one."""
    _release()
    t0 = time.process_time()
    c = _cluster(n, seed)
    rng = random.Random(seed)
    crashed: dict[str, float] = {}
    failed_at: dict[tuple[str, str], float] = {}
    false_failed = 0

    def watch(tr: Transition) -> None:
        nonlocal false_failed
        if tr.new is MemberHealth.FAILED:
            if tr.subject in crashed:
                failed_at.setdefault((tr.observer, tr.subject), tr.t)
            else:
                false_failed += 1

    c.on_transition = watch
    c.run_for(30.0)
    d0, b0 = c.datagrams(), c.bytes_sent()
    window = 60.0 if n < 1000 else 30.0
    cpu0 = time.process_time()
    c.run_for(window)
    steady_rate = (c.datagrams() - d0) / max(1e-9, time.process_time() - cpu0)
    msgs = (c.datagrams() - d0) / n / (window / LAN.probe_interval)
    bytes_per_s = (c.bytes_sent() - b0) / n / window

    crashes = 6 if n >= 1000 else 20
    victims = rng.sample(sorted(c.hosts), min(crashes, n // 3))
    for name in victims:
        c.crash(name)
        crashed[name] = c.now
        c.run_for(4.0)
    c.run_for(60.0)
    live = [h.name for h in c.live_hosts()]
    detect: list[float] = []
    for victim, tc in crashed.items():
        times = [failed_at.get((obs, victim)) for obs in live]
        if all(t is not None for t in times):
            detect.append(max(t for t in times if t is not None) - tc)
        else:
            detect.append(float("inf"))
    meter.add(c, time.process_time() - t0)
    return {
        "msgs_per_member_per_period": round(msgs, 3),
        "bytes_per_member_per_s": round(bytes_per_s, 1),
        "detect_all_p50_s": _quantile(detect, 0.5),
        "detect_all_p99_s": _quantile(detect, 0.99),
        "false_failed_crash_run": false_failed,
        "steady_rate": round(steady_rate),
    }


def joins(n: int, seed: int, meter: _Meter) -> dict[str, float]:
    """New members join through one random seed; time until all see them alive."""
    _release()
    t0 = time.process_time()
    c = _cluster(n, seed + 1)
    rng = random.Random(seed + 1)
    seen: dict[str, set[str]] = {}
    done_at: dict[str, float] = {}
    started: dict[str, float] = {}
    false_failed = 0

    def watch(tr: Transition) -> None:
        nonlocal false_failed
        if tr.new is MemberHealth.FAILED:
            false_failed += 1
        if tr.subject in started and tr.new is MemberHealth.ALIVE and tr.subject not in done_at:
            seen[tr.subject].add(tr.observer)
            if len(seen[tr.subject]) >= len(c.hosts) - 1:
                done_at[tr.subject] = tr.t

    c.on_transition = watch
    c.run_for(30.0)
    count = 6 if n >= 1000 else 20
    for i in range(count):
        name = f"joiner-{i}"
        seed_name = rng.choice(sorted(h for h in c.hosts if not h.startswith("joiner")))
        seen[name] = set()
        started[name] = c.now
        c.join_new(name, [seed_name])
        c.run_for(6.0)
    c.run_for(10.0)
    times = [done_at.get(name, float("inf")) - t for name, t in started.items()]
    meter.add(c, time.process_time() - t0)
    return {
        "join_all_p50_s": _quantile(times, 0.5),
        "join_all_p99_s": _quantile(times, 0.99),
        "false_failed_join_run": false_failed,
    }


def lossy_slow(n: int, seed: int, lifeguard: bool, meter: _Meter) -> tuple[int, int]:
    """10% loss and five members with a lagging receive path; count false failures.

    The lag is 1.5 times the minimum suspicion timeout at this size: slow
    enough that, without Lifeguard, a refutation reaches the slow member only
    after its fixed suspicion timeout has expired.  Returns failed
    declarations about healthy members and about the slow members themselves.
    """
    _release()
    t0 = time.process_time()
    config = dataclasses.replace(LAN, lifeguard=lifeguard)
    c = _cluster(n, seed + 2, config=config, loss=0.10)
    rng = random.Random(seed + 2)
    slow = set(rng.sample(sorted(c.hosts), min(5, n)))
    lag = SLOW_LAG_FACTOR * suspicion_timeouts(LAN, n)[0]
    for name in slow:
        c.set_recv_delay(name, lag)
    counts = {"healthy": 0, "slow": 0}

    def watch(tr: Transition) -> None:
        if tr.new is MemberHealth.FAILED:
            counts["slow" if tr.subject in slow else "healthy"] += 1

    c.on_transition = watch
    c.run_for(LOSSY_SECONDS if n < 1000 else LOSSY_SECONDS / 4)
    meter.add(c, time.process_time() - t0)
    return counts["healthy"], counts["slow"]


def partition_heal(seed: int, meter: _Meter, config: SwimConfig = LAN) -> float:
    _release()
    t0 = time.process_time()
    c = _cluster(20, seed + 3, config=config)
    c.run_for(30.0)
    names = sorted(c.hosts)
    c.partition(names[:10], names[10:])
    c.run_for(PARTITION_SECONDS)
    c.heal()
    healed = c.now
    ok = c.run_until_true(c.all_alive_everywhere, limit=600.0, step=0.25)
    meter.add(c, time.process_time() - t0)
    return round(c.now - healed, 3) if ok else float("inf")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10, 100, 1000])
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument(
        "--gc-threshold",
        type=int,
        default=100_000,
        help="allocations between young-generation collections (CPython's default: 700)",
    )
    args = parser.parse_args()
    # A storm allocates a few hundred thousand short-lived objects per virtual
    # second; with CPython's default threshold the cyclic collector runs every
    # 700 of them, and its passes take about 6% of a lossy N = 1,000 run
    # (timed with gc.callbacks).  As in bench/cluster_sim.py;
    # --gc-threshold 700 measures the default.
    gc.set_threshold(args.gc_threshold, 50, 100)
    heal_meter = _Meter()
    heal = partition_heal(args.seed, heal_meter)
    for n in args.sizes:
        meter = _Meter()
        row: dict[str, object] = {"n": n, "profile": "lan", "seed": args.seed}
        steady = steady_and_crashes(n, args.seed, meter)
        joined = joins(n, args.seed, meter)
        on, on_slow = lossy_slow(n, args.seed, True, meter)
        off, off_slow = lossy_slow(n, args.seed, False, meter)
        row.update(
            detect_all_p50_s=steady["detect_all_p50_s"],
            detect_all_p99_s=steady["detect_all_p99_s"],
            join_all_p50_s=joined["join_all_p50_s"],
            join_all_p99_s=joined["join_all_p99_s"],
            msgs_per_member_per_period=steady["msgs_per_member_per_period"],
            bytes_per_member_per_s=steady["bytes_per_member_per_s"],
            false_failed_lossless=steady["false_failed_crash_run"]
            + joined["false_failed_join_run"],
            false_failed_lifeguard_on=on,
            false_failed_lifeguard_off=off,
            slow_members_failed_lifeguard_on=on_slow,
            slow_members_failed_lifeguard_off=off_slow,
            partition_heal_max_s=heal,
            partition_nodes=20,
            sim_datagrams_per_cpu_s=round(meter.datagrams / meter.cpu),
            sim_datagrams_per_cpu_s_steady=steady["steady_rate"],
            cpu_s=round(meter.cpu, 2),
        )
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
