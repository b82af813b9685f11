"""SWIM properties in simulation, over Hypothesis-chosen fault schedules.

Every run checks the ordering invariant at every recorded state change
(``SwimCluster._check_order``: within one incarnation a view only moves
alive -> suspect -> failed -> left); each test adds its own property:

* accuracy — no loss and no crash: nobody is ever suspected;
* completeness — a crashed member is failed at every live member within
  :func:`detection_bound`;
* refutation — a forged suspicion of a live member is refuted, never failed;
* convergence — after a partition heals, everybody is alive everywhere
  within :func:`convergence_bound`;
* graceful leave — seen as ``left``, never ``failed``;
* tags and user events reach every live member exactly once;
* determinism — one seed, one trace.
"""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Callable

from hypothesis import example, given, settings
from hypothesis import strategies as st

from dkron.proto_sansio.swim import (
    LOCAL,
    EventKind,
    MemberHealth,
    SendStream,
    convergence_bound,
    detection_bound,
)
from dkron.proto_sansio.swim_wire import Keyring, Suspect, encode_packet, pack_message
from dkron.testing.swim_sim import SwimCluster


def _default_examples() -> int:
    """The active profile's example budget (dev 30, ci 100, thorough 5000)."""
    current = settings.default
    return current.max_examples if current is not None else 30


FEW = max(5, _default_examples() // 4)
SOME = max(8, _default_examples() // 2)


def _views(c: SwimCluster) -> dict[str, dict[str, MemberHealth]]:
    return {
        h.name: {s: h.node.health_of(s) for s in c.hosts if s != h.name} for h in c.live_hosts()
    }


@settings(max_examples=SOME)
@given(n=st.integers(2, 7), seed=st.integers(0, 2**16), seconds=st.floats(5, 30))
def test_accuracy_no_loss_no_crash_nobody_is_suspected(n: int, seed: int, seconds: float) -> None:
    c = SwimCluster(n, seed=seed)
    c.run_for(seconds)
    bad = [t for t in c.transitions if t.new in (MemberHealth.SUSPECT, MemberHealth.FAILED)]
    assert not bad
    assert c.all_alive_everywhere()


@settings(max_examples=SOME)
@given(
    n=st.integers(3, 8),
    seed=st.integers(0, 2**16),
    crashes=st.lists(st.tuples(st.integers(0, 7), st.floats(0.5, 8.0)), min_size=1, max_size=3),
    bootstrap=st.booleans(),
)
@example(n=3, seed=0, crashes=[(0, 0.5), (1, 0.5)], bootstrap=True)
def test_completeness_crashed_member_failed_everywhere_within_bound(
    n: int, seed: int, crashes: list[tuple[int, float]], bootstrap: bool
) -> None:
    c = SwimCluster(n, seed=seed, bootstrap=bootstrap)
    if not bootstrap:
        for i in range(1, n):
            c.hosts[f"node-{i}"].node.join([c.hosts["node-0"].addr], c.now)
            c.hosts[f"node-{i}"].poke()
        assert c.run_until_true(c.all_alive_everywhere, limit=10.0, step=0.1)
    victims: dict[str, float] = {}
    for index, delay in crashes:
        name = f"node-{index % n}"
        if name in victims or len(victims) >= n - 1:
            continue
        c.run_for(delay)
        c.crash(name)
        victims[name] = c.now
    bound = detection_bound(LOCAL, n)
    c.run_for(bound + 0.5)
    live = [h.name for h in c.live_hosts()]
    for victim, crashed_at in victims.items():
        for obs in live:
            firsts = [
                t.t
                for t in c.transitions
                if t.observer == obs and t.subject == victim and t.new is MemberHealth.FAILED
            ]
            assert firsts, f"{obs} never saw {victim} fail"
            assert firsts[0] - crashed_at <= bound
    # Nobody alive was declared failed (no loss in this test).
    wrong = [t for t in c.transitions if t.new is MemberHealth.FAILED and t.subject not in victims]
    assert not wrong


@settings(max_examples=SOME)
@given(n=st.integers(3, 7), seed=st.integers(0, 2**16), loss=st.sampled_from([0.0, 0.05]))
@example(n=6, seed=39629, loss=0.05)
@example(n=7, seed=4, loss=0.0)
@example(n=5, seed=277, loss=0.0)
def test_refutation_forged_suspicion_is_refuted(n: int, seed: int, loss: float) -> None:
    """A live member refutes a suspicion of itself and stays alive everywhere.

    Dissemination is epidemic: each member passes the refutation on in at
    most ``retransmit_mult * ceil(log10(n + 1))`` packets to random peers, so
    now and then (about one run in a thousand here, with or without loss) a
    member hears none of them before its suspicion expires -- all members
    suspected at once, so every suspicion is fully confirmed and at its
    shortest -- and declares the member failed.  memberlist has the same
    window.  The member then refutes that too: such an observer must see it
    alive again at a higher incarnation before the end (the seeds above were
    found by the thorough profile).
    """
    c = SwimCluster(n, seed=seed, loss=loss)
    c.run_for(2.0)
    subject = "node-1"
    inc = c.hosts[subject].node.incarnation
    forged = encode_packet([pack_message(Suspect(inc, subject, "node-2"))])
    for h in c.live_hosts():
        if h.name != subject:
            h.node.receive(forged, src_addr=c.hosts["node-2"].addr, now=c.now)
            h.poke()
    c.run_for(10.0)
    assert c.hosts[subject].node.incarnation > inc
    assert c.everyone_sees(subject, MemberHealth.ALIVE)
    about = [t for t in c.transitions if t.subject == subject]
    failed = [t for t in about if t.new is MemberHealth.FAILED]
    for f in failed:
        assert any(
            t.observer == f.observer
            and t.t > f.t
            and t.new is MemberHealth.ALIVE
            and t.incarnation > f.incarnation
            for t in about
        ), f"{f.observer} never saw {subject} alive again after declaring it failed"


@settings(max_examples=FEW)
@given(
    n=st.integers(4, 8),
    seed=st.integers(0, 2**16),
    split=st.integers(1, 4),
    duration=st.floats(1.0, 30.0),
)
def test_convergence_after_partition_heals(n: int, seed: int, split: int, duration: float) -> None:
    c = SwimCluster(n, seed=seed)
    c.run_for(1.0)
    names = sorted(c.hosts)
    k = min(split, n - 1)
    c.partition(names[:k], names[k:])
    c.run_for(duration)
    c.heal()
    bound = convergence_bound(LOCAL, n)
    assert c.run_until_true(c.all_alive_everywhere, limit=bound, step=0.1), _views(c)


@settings(max_examples=SOME)
@given(
    n=st.integers(2, 7),
    seed=st.integers(0, 2**16),
    loss=st.sampled_from([0.0, 0.0, 0.02]),
    who=st.integers(0, 6),
)
def test_graceful_leave_is_left_never_failed(n: int, seed: int, loss: float, who: int) -> None:
    c = SwimCluster(n, seed=seed, loss=loss)
    c.run_for(2.0)
    leaver = f"node-{who % n}"
    c.leave(leaver)
    c.run_for(3.0)
    assert c.hosts[leaver].departed
    assert c.run_until_true(
        lambda: c.everyone_sees(leaver, MemberHealth.LEFT),
        limit=detection_bound(LOCAL, n),
        step=0.1,
    )
    assert not [t for t in c.transitions if t.subject == leaver and t.new is MemberHealth.FAILED]
    assert all(
        e.kind is EventKind.LEAVE
        for e in c.events
        if e.subject == leaver and e.observer != leaver
        if e.kind is not EventKind.JOIN
    )


@settings(max_examples=SOME)
@given(
    n=st.integers(2, 7),
    seed=st.integers(0, 2**16),
    loss=st.sampled_from([0.0, 0.05, 0.1]),
    events=st.lists(st.tuples(st.integers(0, 6), st.binary(max_size=40)), max_size=6),
)
def test_tags_and_user_events_reach_everyone_exactly_once(
    n: int, seed: int, loss: float, events: list[tuple[int, bytes]]
) -> None:
    c = SwimCluster(n, seed=seed, loss=loss)
    c.run_for(1.0)
    c.set_tags("node-0", {"role": "worker", "dc": "dc1"})
    for i, (who, payload) in enumerate(events):
        c.user_event(f"node-{who % n}", f"ev{i}", payload)
        c.run_for(0.05)
    c.run_for(15.0)
    for h in c.live_hosts():
        got = sorted((e.name, e.payload) for e in c.user_events if e.observer == h.name)
        want = sorted((f"ev{i}", p) for i, (_, p) in enumerate(events))
        assert got == want, h.name
        member = h.node.member("node-0")
        assert member is not None
        assert member.tags == {"role": "worker", "dc": "dc1"}
        updates = [
            e
            for e in c.events
            if e.observer == h.name and e.subject == "node-0" and e.kind is EventKind.UPDATE
        ]
        assert len(updates) == 1


@settings(max_examples=FEW)
@given(seed=st.integers(0, 2**16), loss=st.sampled_from([0.0, 0.1]))
def test_same_seed_same_trace(seed: int, loss: float) -> None:
    def run() -> tuple[list[object], list[object], list[object]]:
        c = SwimCluster(5, seed=seed, loss=loss, duplicate=0.05)
        c.run_for(2.0)
        c.crash("node-2")
        c.user_event("node-0", "hello", b"x")
        c.run_for(8.0)
        c.restart("node-2", ["node-1"])
        c.run_for(5.0)
        return list(c.transitions), list(c.network.trace), list(c.user_events)

    assert run() == run()


@dataclasses.dataclass(frozen=True)
class _Fault:
    at: float
    kind: str
    a: int
    b: int


_faults = st.builds(
    _Fault,
    at=st.floats(0.0, 6.0),
    kind=st.sampled_from(["crash", "restart", "partition", "heal", "slow", "leave", "tags"]),
    a=st.integers(0, 7),
    b=st.integers(1, 4),
)


def _run_schedule(c: SwimCluster, schedule: list[_Fault]) -> set[str]:
    """Apply the faults in time order; returns the members that left."""
    names = sorted(c.hosts)
    n = len(names)
    left: set[str] = set()
    partitioned = False
    leave_quiet_until = 0.0  # a leave needs a moment of connectivity to be heard
    for f in sorted(schedule, key=lambda f: f.at):
        c.run_until(max(c.now, f.at))
        name = names[f.a % n]
        host = c.hosts[name]
        if f.kind == "crash" and host.up and name not in left:
            c.crash(name)
        elif f.kind == "restart" and not host.up and name not in left:
            seeds = [h.name for h in c.live_hosts()]
            if seeds:
                c.restart(name, seeds[:1])
        elif f.kind == "partition" and c.now >= leave_quiet_until:
            k = f.b % n or 1
            c.partition(names[:k], names[k:])
            partitioned = True
        elif f.kind == "heal":
            c.heal()
            partitioned = False
        elif f.kind == "slow" and host.up:
            c.set_recv_delay(name, 0.05 * f.b)
        elif (
            f.kind == "leave"
            and host.up
            and not host.node.leaving
            and len(left) < n - 2
            and not partitioned  # a leave nobody can hear is a failure, as in Serf
        ):
            c.leave(name)
            left.add(name)
            leave_quiet_until = c.now + 2 * LOCAL.leave_broadcast_timeout
        elif f.kind == "tags" and host.up and not host.node.leaving:
            c.set_tags(name, {"v": str(f.b)})
    return left


@settings(max_examples=SOME)
@given(
    n=st.integers(3, 7),
    seed=st.integers(0, 2**16),
    loss=st.sampled_from([0.0, 0.05, 0.1]),
    schedule=st.lists(_faults, max_size=8),
)
@example(
    n=3,
    seed=0,
    loss=0.0,
    schedule=[
        _Fault(0.0, "leave", 0, 1),
        _Fault(1.0, "crash", 0, 1),
        _Fault(0.0, "partition", 0, 1),
    ],
)
@example(  # restarted inside a partition: its join fails (found by the thorough profile)
    n=3,
    seed=8913,
    loss=0.0,
    schedule=[
        _Fault(0.0, "crash", 1, 1),
        _Fault(1.0, "partition", 0, 1),
        _Fault(5.5, "restart", 2, 1),
        _Fault(0.5, "crash", 2, 1),
    ],
)
def test_fault_schedules_then_recovery(
    n: int, seed: int, loss: float, schedule: list[_Fault]
) -> None:
    """Arbitrary faults; invariants at every step; everybody alive after repair."""
    c = SwimCluster(n, seed=seed, loss=loss, duplicate=0.02)
    c.after_step = c.check_self_views
    names = sorted(c.hosts)
    left = _run_schedule(c, schedule)
    # Repair: heal, un-slow, restart the crashed (they rejoin through a live member).
    c.heal()
    c.network.faults.loss = 0.0
    for h in c.hosts.values():
        h.recv_delay = 0.0
    c.run_for(LOCAL.leave_broadcast_timeout * 2 + 1.0)
    live = [h.name for h in c.live_hosts()]
    for name in names:
        if name not in left and not c.hosts[name].up and live:
            c.restart(name, live[:1])
    # A member restarted while cut off knows nobody (its join failed); the agent
    # retries the join (--retry-join), which the reconnect loop of the others
    # only does with probability failed/alive per interval.
    for h in c.live_hosts():
        others = [o.name for o in c.live_hosts() if o is not h]
        if others and len(h.node.members()) <= 1:
            h.node.join([c.hosts[others[0]].addr], c.now)
            h.poke()
    bound = convergence_bound(LOCAL, n) + detection_bound(LOCAL, n)

    def repaired() -> bool:
        hosts = c.live_hosts()
        for h in hosts:
            for other in hosts:
                if other is not h and h.node.health_of(other.name) is not MemberHealth.ALIVE:
                    return False
            for gone in left:
                if h.node.health_of(gone) not in (MemberHealth.LEFT, MemberHealth.NONE):
                    return False
        return True

    assert c.run_until_true(repaired, limit=bound, step=0.2), _views(c)


def test_restarted_member_is_alive_again_with_a_higher_incarnation() -> None:
    c = SwimCluster(5, seed=3)
    c.run_for(2.0)
    before = c.hosts["node-3"].node.incarnation
    c.crash("node-3")
    c.run_for(detection_bound(LOCAL, 5))
    assert c.everyone_sees("node-3", MemberHealth.FAILED)
    c.restart("node-3", ["node-0"])
    assert c.run_until_true(c.all_alive_everywhere, limit=5.0, step=0.05)
    assert c.hosts["node-3"].node.incarnation > before
    for h in c.live_hosts():
        member = h.node.member("node-3")
        assert member is not None and member.incarnation == c.hosts["node-3"].node.incarnation
    rejoin = [e for e in c.events if e.subject == "node-3" and e.kind is EventKind.JOIN]
    assert len({e.observer for e in rejoin}) == 5


def test_encrypted_cluster_converges_and_an_outsider_key_is_refused() -> None:
    ring = Keyring(b"k" * 16)
    c = SwimCluster(4, seed=5, keyring=ring, bootstrap=False)
    for i in range(1, 4):
        c.hosts[f"node-{i}"].node.join([c.hosts["node-0"].addr], c.now)
        c.hosts[f"node-{i}"].poke()
    assert c.run_until_true(c.all_alive_everywhere, limit=5.0, step=0.1)
    assert c.hosts["node-0"].node.stats()["encrypted"] == "true"
    c.keyring = Keyring(b"x" * 32)
    outsider = c.join_new("outsider", ["node-0"])
    c.run_for(3.0)
    assert outsider.joined is not None and outsider.joined.contacted == 0
    assert all(h.node.health_of("outsider") is MemberHealth.NONE for h in c.live_hosts()[:4])
    assert c.hosts["node-0"].node.counters.get("dropped_undecryptable", 0) > 0


def test_join_through_a_seed_is_seen_by_everyone() -> None:
    c = SwimCluster(6, seed=9)
    c.run_for(1.0)
    newcomer = c.join_new("newcomer", ["node-4"])
    assert c.run_until_true(
        lambda: c.everyone_sees("newcomer", MemberHealth.ALIVE), limit=3.0, step=0.02
    )
    assert newcomer.joined is not None and newcomer.joined.contacted == 1
    assert len(newcomer.node.members()) == 7


def test_failed_members_are_reaped_after_the_reconnect_timeout() -> None:
    cfg = dataclasses.replace(LOCAL, reconnect_timeout=10.0, tombstone_timeout=10.0)
    c = SwimCluster(4, config=cfg, seed=2)
    c.run_for(1.0)
    c.crash("node-1")
    c.leave("node-2")
    c.run_for(detection_bound(cfg, 4) + cfg.reconnect_timeout + 2 * cfg.reap_interval)
    for h in c.live_hosts():
        assert h.node.member("node-1") is None
        assert h.node.member("node-2") is None
    reaps = {(e.observer, e.subject) for e in c.events if e.kind is EventKind.REAP}
    assert ("node-0", "node-1") in reaps and ("node-0", "node-2") in reaps


def test_every_datagram_fits_the_udp_limit_under_load() -> None:
    """Big tags, encryption, churn and a flood of events: no datagram over 1,400 bytes."""
    c = SwimCluster(12, seed=11, keyring=Keyring(b"s" * 32), loss=0.05)
    for i, name in enumerate(sorted(c.hosts)):
        c.set_tags(name, {f"tag{j}": "x" * 30 for j in range(12)} | {"i": str(i)})
    for i in range(60):
        c.user_event(f"node-{i % 12}", f"e{i}", b"p" * 200)
    c.crash("node-5")
    c.run_for(10.0)
    sizes = [d.size for d in c.network.trace]
    assert sizes and max(sizes) <= LOCAL.max_packet_size
    assert max(sizes) > 1000  # the packets really were packed


_DELAYS = st.sampled_from([0.0, 1e-4, 0.0499, 0.05, 0.0500001, 0.1, 0.3, 7.0, 120.0]) | st.floats(
    0, 200, allow_nan=False
)


@settings(max_examples=SOME)
@given(
    program=st.lists(st.tuples(_DELAYS, st.integers(0, 3)), min_size=1, max_size=40),
    horizons=st.lists(st.floats(0, 400, allow_nan=False), min_size=1, max_size=4),
    stepped=st.booleans(),
)
def test_the_bucketed_event_queue_runs_events_in_the_order_of_one_heap(
    program: list[tuple[float, int]], horizons: list[float], stepped: bool
) -> None:
    """The SWIM simulator's queue (a heap per bucket of time) against the shared
    loop's single heap: the same program of timers, some scheduling more as
    they run (into the bucket being run, too), gives the same order and times."""
    from dkron.testing.sim import EventLoop, LinkFaults
    from dkron.testing.swim_sim import _LeanLoop, _LeanNetwork

    def run(loop: EventLoop) -> list[tuple[int, float]]:
        order: list[tuple[int, float]] = []
        ids = iter(range(10**6))

        def timer(i: int, depth: int) -> Callable[[], None]:
            def fire() -> None:
                order.append((i, loop.now))
                if depth < 2:
                    start = i % len(program)
                    for delay, _ in program[start : start + program[start][1]]:
                        loop.call_later(delay, timer(next(ids), depth + 1))

            return fire

        for delay, _ in program:
            loop.call_later(delay, timer(next(ids), 0))
        for h in sorted(horizons):
            if stepped:
                while (t := loop.next_time()) is not None and t <= h:
                    loop.step()
            else:
                loop.run_until(h)
        return order

    lean = _LeanLoop()
    _LeanNetwork(lean, random.Random(0), LinkFaults(), record=False)
    assert run(lean) == run(EventLoop())


@settings(max_examples=SOME)
@given(
    n=st.integers(2, 7),
    seed=st.integers(0, 2**16),
    loss=st.sampled_from([0.0, 0.1]),
    schedule=st.lists(_faults, max_size=8),
    seconds=st.floats(0.0, 20.0),
)
def test_members_sharing_memos_do_exactly_what_each_does_alone(
    n: int, seed: int, loss: float, schedule: list[_Fault], seconds: float
) -> None:
    """The memos simulated members share (bootstrapped member records copied on
    change, decoded broadcasts and gossip packets, encoded push-pull layouts)
    change nothing a member does: the same faults give the same datagrams, the
    same state changes and events, and in the end the same member tables and
    the same full state offered to a push-pull."""

    def run(share: bool) -> list[object]:
        c = SwimCluster(n, seed=seed, loss=loss, duplicate=0.02, share=share)
        _run_schedule(c, schedule)
        c.run_for(seconds)
        offers = []
        for h in c.live_hosts():
            h.node.drain()
            h.node.start_push_pull(("10.9.9.9", 1), c.now)
            offers.append([a for a in h.node.drain() if isinstance(a, SendStream)])
        return [
            c.network.trace,
            c.transitions,
            c.events,
            c.user_events,
            [(h.name, h.node.members(), h.node.counters) for h in c.live_hosts()],
            offers,
        ]

    assert run(True) == run(False)
