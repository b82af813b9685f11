"""Slots due together leave the planner as one batch, and a batch is followed element-wise."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from hypothesis import example, given
from hypothesis import strategies as st

from dkron.model import Execution, Job
from dkron.proto_sansio.execution import (
    ExecutionConfig,
    ExecutionLeader,
    Propose,
    Result,
    Send,
    Started,
)
from dkron.proto_sansio.planner import Planner, to_ns
from dkron.proto_sansio.scheduler import SchedulerConfig
from dkron.state import (
    ClaimSlot,
    ClaimSlots,
    Command,
    ExecutionFinished,
    ExecutionsFinished,
    ExecutionsStarted,
    RecordMissed,
    StateMachine,
    UpsertJob,
    encode_command,
)

T0 = datetime(2026, 3, 1, tzinfo=UTC)
CFG = ExecutionConfig(heartbeat_interval=1.0, lease_timeout=5.0, dispatch_timeout=10.0)


def loaded(jobs: list[Job]) -> tuple[StateMachine, int]:
    sm = StateMachine()
    for i, job in enumerate(jobs, 1):
        assert sm.apply(i, encode_command(UpsertJob(job))).ok
    return sm, len(jobs)


def test_slots_due_together_are_one_claim_batch_and_observed_per_element() -> None:
    first = to_ns(T0 + timedelta(seconds=5))
    jobs = [Job(f"j{i}", schedule="@every 5s", executor="shell", next=first) for i in range(5)]
    sm, index = loaded(jobs)
    planner = Planner(sm, term=2, wall=T0, select_targets=lambda job: ("w1",))
    wall = T0 + timedelta(seconds=5)
    (batch,) = planner.tick(wall)
    assert isinstance(batch, ClaimSlots)
    assert [c.job for c in batch.claims] == [j.name for j in jobs]
    assert all(c.scheduled_time_ns == first and c.term == 2 for c in batch.claims)
    index += 1
    cmd, result = sm.apply_entry(index, encode_command(batch))
    assert cmd == batch and result.ok and all(p.ok for p in result.parts)
    planner.observe(batch, result, wall)
    assert all(sm.cursor(j.name) == first for j in jobs)
    # The same batch again (a proposer unsure it committed): every element refused.
    index += 1
    _, again = sm.apply_entry(index, encode_command(batch))
    assert again.ok and [p.reason for p in again.parts] == ["duplicate"] * 5
    # A lone slot stays a single command.
    sm2, _ = loaded(jobs[:1])
    single = Planner(sm2, term=2, wall=T0, select_targets=lambda job: ("w1",)).tick(wall)
    assert [type(c) for c in single] == [ClaimSlot]


def test_a_missed_range_stays_ahead_of_the_claims_that_follow_it() -> None:
    # j0 has nothing missed; j1 missed slots while no leader existed and catches up.
    t5 = to_ns(T0 + timedelta(seconds=5))
    jobs = [
        Job("j0", schedule="@every 5s", executor="shell", next=to_ns(T0 + timedelta(seconds=60))),
        Job("j1", schedule="@every 5s", executor="shell", catchup="latest", next=t5),
    ]
    sm, _ = loaded(jobs)
    wall = T0 + timedelta(seconds=60)
    cmds = Planner(sm, term=1, wall=wall, select_targets=lambda job: ("w1",)).tick(wall)
    kinds = [type(c) for c in cmds]
    assert RecordMissed in kinds
    missed_at = kinds.index(RecordMissed)
    j1_claims = [
        i
        for i, c in enumerate(cmds)
        if (isinstance(c, ClaimSlot) and c.job == "j1")
        or (isinstance(c, ClaimSlots) and any(x.job == "j1" for x in c.claims))
    ]
    assert j1_claims and min(j1_claims) > missed_at


def test_the_leader_proposes_one_started_and_one_finished_batch_per_drain() -> None:
    t = to_ns(T0)
    sm = StateMachine()
    index = 0
    for name in ("a", "b", "c"):
        index += 1
        sm.apply(index, encode_command(UpsertJob(Job(name, schedule="@every 5s"))))
    claims = ClaimSlots(tuple(ClaimSlot(n, t, 1, "schedule", t, ("w1",), 1) for n in "abc"))
    lead = ExecutionLeader("s1", 1, CFG, now=0.0)
    index += 1
    cmd, result = sm.apply_entry(index, encode_command(claims))
    assert cmd is not None
    lead.observe(cmd, result, sm, 0.0, wall_ns=0)
    dispatched = [a for a in lead.drain() if isinstance(a, Send)]
    assert [a.msg.key.job for a in dispatched] == ["a", "b", "c"]  # type: ignore[union-attr]
    runs = {n: Execution(n, t + i, "w1", group=t, attempt=1) for i, n in enumerate("abc")}
    done_a = Execution("a", t, "w1", finished_at=t + 5, success=True, group=t, attempt=1)
    lead.receive(Started(runs["a"]), src="w1", now=0.1, wall_ns=t)
    lead.receive(Result(done_a), src="w1", now=0.1, wall_ns=t)
    lead.receive(Started(runs["b"]), src="w1", now=0.1, wall_ns=t)
    lead.receive(Started(runs["c"]), src="w1", now=0.1, wall_ns=t)
    out = lead.drain()
    proposed = [a.command for a in out if isinstance(a, Propose)]
    # Every start first (one batch), then the single result as a single command.
    assert proposed == [
        ExecutionsStarted((runs["a"], runs["b"], runs["c"])),
        ExecutionFinished(done_a),
    ]
    for command in proposed:
        index += 1
        cmd, result = sm.apply_entry(index, encode_command(command))
        assert cmd is not None and result.ok
        lead.observe(cmd, result, sm, 0.2, wall_ns=0)
    acks = [a.msg for a in lead.drain() if isinstance(a, Send)]
    assert [type(m).__name__ for m in acks] == ["ResultAck"]
    assert [e.job_name for e in sm.running_executions()] == ["b", "c"]
    done = tuple(
        Execution(n, runs[n].started_at, "w1", finished_at=t + 9, success=True, group=t, attempt=1)
        for n in "bc"
    )
    for ex in done:
        lead.receive(Result(ex), src="w1", now=0.3, wall_ns=t)
    (finished,) = [a.command for a in lead.drain() if isinstance(a, Propose)]
    assert finished == ExecutionsFinished(done)
    index += 1
    cmd, result = sm.apply_entry(index, encode_command(finished))
    assert cmd is not None
    lead.observe(cmd, result, sm, 0.4, wall_ns=0)
    assert len([a for a in lead.drain() if isinstance(a, Send)]) == 2  # one ack per element
    assert sm.running_executions() == [] and sm.get_job("c").success_count == 1  # type: ignore[union-attr]


def test_a_forbid_job_is_claimed_when_due_and_the_others_ahead() -> None:
    """With lookahead, a ``concurrency: forbid`` job is claimed only at its slot: its
    claim refuses it while a run is going, and a run ending just before must not."""
    first = to_ns(T0 + timedelta(seconds=5))
    jobs = [
        Job("f", schedule="@every 5s", executor="shell", next=first, concurrency="forbid"),
        Job("a", schedule="@every 5s", executor="shell", next=first),
    ]
    sm, _ = loaded(jobs)
    planner = Planner(
        sm,
        term=2,
        wall=T0,
        select_targets=lambda job: ("w1",),
        config=SchedulerConfig(lookahead=timedelta(milliseconds=100)),
    )
    early = planner.tick(T0 + timedelta(seconds=4.95))
    assert [c.job for cmd in early for c in getattr(cmd, "claims", [cmd])] == ["a"]
    due = planner.tick(T0 + timedelta(seconds=5))
    assert [c.job for cmd in due for c in getattr(cmd, "claims", [cmd])] == ["f"]


@given(
    targets=st.lists(st.sampled_from(["w1", "w2", "w3"]), min_size=1, max_size=4).map(tuple),
    term=st.integers(-2, 3),
    jobs=st.integers(1, 3),
)
def test_claims_built_per_slot_equal_claim_slot_and_fail_its_checks_alike(
    targets: tuple[str, ...], term: int, jobs: int
) -> None:
    first = to_ns(T0 + timedelta(seconds=5))
    sm, _ = loaded(
        [Job(f"j{i}", schedule="@every 5s", executor="shell", next=first) for i in range(jobs)]
    )
    planner = Planner(sm, term=term, wall=T0, select_targets=lambda job: targets)
    try:
        expected: list[ClaimSlot] | str = [
            ClaimSlot(f"j{i}", first, term, "schedule", first, targets, 1) for i in range(jobs)
        ]
    except ValueError as e:
        expected = str(e)
    try:
        cmds = planner.tick(T0 + timedelta(seconds=5))
    except ValueError as e:
        assert str(e) == expected
        return
    claims = [c for cmd in cmds for c in (cmd.claims if isinstance(cmd, ClaimSlots) else (cmd,))]
    assert claims == expected
    assert all(type(c) is ClaimSlot for c in claims)
    assert all(
        encode_command(a) == encode_command(b) for a, b in zip(claims, expected, strict=True)
    )


_PLANNER_OPS = st.lists(
    st.tuples(
        st.sampled_from(["tick", "commit", "targets", "no_targets", "touch"]),
        st.integers(1, 40),
    ),
    max_size=60,
)


@given(ops=_PLANNER_OPS, catchup=st.sampled_from(["skip", "latest", "all"]))
# Slot 5 s counted missed, slot 10 s waits for targets; 5 s later the job comes
# back while the missed record is still in flight.
@example(ops=[("no_targets", 1), ("tick", 15), ("tick", 5)], catchup="skip")
# The job waits for targets with slot 10 s owed (latest); saved again, it is put
# back into the scheduler, then again when its wait ends: slot 10 s was claimed
# by the first and counted missed by the second.
@example(
    ops=[
        ("no_targets", 4),
        ("tick", 23),
        ("targets", 1),
        ("touch", 18),
        ("commit", 17),
        ("tick", 29),
    ],
    catchup="latest",
)
def test_a_slot_is_decided_once_while_the_planners_proposals_are_in_flight(
    ops: list[tuple[str, int]], catchup: str
) -> None:
    """Proposals commit late (in log order); meanwhile the job loses and regains
    its targets (it waits out of the scheduler) and is saved again (it is put
    back).  However the job comes back, every cron slot is claimed or counted
    missed at most once: resuming from the committed cursor alone re-emitted
    slots still in flight, and a missed range across one counted it twice."""
    every = timedelta(seconds=5)
    job = Job("j", schedule="@every 5s", executor="shell", catchup=catchup, next=to_ns(T0 + every))
    sm, index = loaded([job])
    targets: list[tuple[str, ...]] = [("w1",)]
    planner = Planner(sm, term=1, wall=T0, select_targets=lambda _job: targets[0])
    wall = T0
    log: list[Command] = []  # proposed, not yet committed, in log order
    decided: list[int] = []

    def commit(count: int) -> None:
        nonlocal index
        for cmd in log[:count]:
            index += 1
            _, result = sm.apply_entry(index, encode_command(cmd))
            parts = result.parts or (result,)
            singles = cmd.claims if isinstance(cmd, ClaimSlots) else (cmd,)
            for one, part in zip(singles, parts, strict=True):
                if isinstance(one, ClaimSlot) and part.ok:
                    decided.append(one.scheduled_time_ns)
                elif isinstance(one, RecordMissed) and part.ok:
                    last = one.scheduled_time_ns
                    step = to_ns(T0 + every) - to_ns(T0)
                    decided.extend(last - k * step for k in range(one.count))
            planner.observe(cmd, result, wall)
        del log[:count]

    for op, n in ops:
        if op == "tick":
            wall += timedelta(seconds=n)
            log.extend(planner.tick(wall))
        elif op == "commit":
            commit(n)
        elif op == "targets":
            targets[0] = ("w1",)
        elif op == "no_targets":
            targets[0] = ()
        else:  # the job saved again, unchanged: the planner puts it back when it commits
            log.append(UpsertJob(job))
    commit(len(log))
    assert len(decided) == len(set(decided)), sorted(decided)


def test_slots_of_a_job_that_matches_no_node_are_counted_as_no_target() -> None:
    """A job whose tags match no alive node waits for one; its slots that get
    older than the grace period meanwhile are counted ``no_target``, not
    ``missed`` (which means no leader was there), and it runs again once a
    node matches."""
    every = timedelta(seconds=5)
    job = Job("j", schedule="@every 5s", executor="shell", next=to_ns(T0 + every))
    sm, index = loaded([job])
    targets: list[tuple[str, ...]] = [()]
    planner = Planner(sm, term=1, wall=T0, select_targets=lambda _job: targets[0])

    def run(wall: datetime) -> list[ClaimSlot | RecordMissed]:
        nonlocal index
        out: list[ClaimSlot | RecordMissed] = []
        for cmd in planner.tick(wall):
            index += 1
            _, result = sm.apply_entry(index, encode_command(cmd))
            planner.observe(cmd, result, wall)
            for one in cmd.claims if isinstance(cmd, ClaimSlots) else (cmd,):
                assert isinstance(one, ClaimSlot | RecordMissed), one
                out.append(one)
        return out

    assert run(T0 + every) == []
    assert planner.targetless == {"j": to_ns(T0 + every)}
    # Still nothing 1 s later; 20 s on, the slots older than 10 s are counted.
    assert run(T0 + every + timedelta(seconds=1)) == []
    counted = [c for s in range(2, 21) for c in run(T0 + every + timedelta(seconds=s))]
    assert all(isinstance(c, RecordMissed) and c.reason == "no_target" for c in counted)
    # The slots at 5, 10 and 15 s; the one at 20 s is not 10 s old yet.
    assert sm.missed_counts("j") == {"no_target": 3}
    # A node matches again: the slots still within the grace period run late
    # (20 s is 10 s old by now and is counted), and the job is no longer listed.
    targets[0] = ("w1",)
    decided = run(T0 + every * 6)
    assert [(type(c), c.scheduled_time_ns) for c in decided] == [
        (RecordMissed, to_ns(T0 + every * 4)),
        (ClaimSlot, to_ns(T0 + every * 5)),
        (ClaimSlot, to_ns(T0 + every * 6)),
    ]
    assert sm.missed_counts("j") == {"no_target": 4}
    assert planner.targetless == {}


def test_slots_missed_without_a_leader_are_still_missed() -> None:
    """The slots of an outage are ``missed`` even for a job that then finds no node."""
    job = Job("j", schedule="@every 5s", executor="shell", next=to_ns(T0 + timedelta(seconds=5)))
    sm, _ = loaded([job])
    wall = T0 + timedelta(seconds=60)  # the first leader after a minute without one
    planner = Planner(sm, term=1, wall=wall, select_targets=lambda _job: ())
    cmds = planner.tick(wall)
    assert [(type(c), getattr(c, "reason", "")) for c in cmds] == [(RecordMissed, "missed")]
    assert planner.targetless == {"j": to_ns(T0 + timedelta(seconds=55))}


def test_a_dependent_run_owed_while_its_job_matches_no_node_runs_once_one_does() -> None:
    """The parent succeeded while no node matched the child: the debt stays in
    the replicated state, and this leader tries again every second rather than
    leaving it to whichever leader comes next (maybe days later)."""
    parent = Job("p", schedule="@manually", executor="shell", dependent_jobs=("c",))
    child = Job("c", schedule="", executor="shell", parent_job="p")
    sm, index = loaded([parent, child])
    targets: dict[str, tuple[str, ...]] = {"p": ("w1",), "c": ()}
    planner = Planner(sm, term=1, wall=T0, select_targets=lambda job: targets[job.name])
    group = to_ns(T0)
    run = Execution("p", group + 1, "w1", group=group, attempt=1, trigger="manual")
    done = Execution(
        "p",
        group + 1,
        "w1",
        finished_at=group + 5,
        success=True,
        group=group,
        attempt=1,
        trigger="manual",
    )
    for cmd in (
        ClaimSlot("p", group, 1, "manual", group, ("w1",), 1),
        ExecutionsStarted((run,)),
        ExecutionFinished(done),
    ):
        index += 1
        _, result = sm.apply_entry(index, encode_command(cmd))
        assert result.ok, result
        planner.observe(cmd, result, T0)
    assert sm.pending_dependents() == [("c", group)]
    assert planner.tick(T0) == [] and planner.targetless == {"c": group}
    assert planner.tick(T0 + timedelta(seconds=5)) == []  # still no node: still owed
    targets["c"] = ("w2",)
    assert planner.tick(T0 + timedelta(seconds=7)) == [
        ClaimSlot("c", group, 1, "dependent", group, ("w2",), 1)
    ]
    assert planner.targetless == {}
    assert planner.tick(T0 + timedelta(seconds=9)) == []  # claimed once


def test_a_catch_up_job_waiting_for_a_node_does_not_replay_its_backlog_every_second() -> None:
    """With ``catchup: all`` every slot of an outage of the job's nodes stays
    owed.  Re-walking that growing backlog every second, for every such job,
    took a leader with 1,000 of them half a core after 30 minutes; while no
    node matches, the wait now checks for one first.  The backlog is still
    run, once, when a node matches."""
    every = timedelta(seconds=5)
    job = Job("j", schedule="@every 5s", executor="shell", catchup="all", next=to_ns(T0 + every))
    sm, _ = loaded([job])
    targets: list[tuple[str, ...]] = [()]
    planner = Planner(sm, term=1, wall=T0, select_targets=lambda _job: targets[0])
    for s in range(1, 601):
        assert planner.tick(T0 + timedelta(seconds=s)) == []
    # 120 slots went by; the backlog is walked a few times a minute, not every second.
    assert planner.scheduler.fired < 3_000, planner.scheduler.fired
    targets[0] = ("w1",)
    cmds = planner.tick(T0 + timedelta(seconds=601))
    claims = [c for cmd in cmds for c in (cmd.claims if isinstance(cmd, ClaimSlots) else (cmd,))]
    assert [c.scheduled_time_ns for c in claims if isinstance(c, ClaimSlot)] == [
        to_ns(T0 + every * k) for k in range(1, 121)
    ]
