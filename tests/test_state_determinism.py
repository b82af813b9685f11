"""Hypothesis: replicas agree byte for byte, snapshots round-trip, apply never raises."""

from __future__ import annotations

import tracemalloc

from hypothesis import example, given
from hypothesis import strategies as st

from dkron.model import Execution, Job
from dkron.state import (
    ClaimSlot,
    Command,
    DeleteExecutions,
    DeleteJob,
    ExecutionFinished,
    ExecutionStarted,
    RecordMissed,
    SetPaused,
    StateConfig,
    StateMachine,
    ToggleJob,
    UpsertJob,
    encode_command,
)

NAMES = st.sampled_from(["a", "b", "c", "d"])
NODES = st.sampled_from(["n1", "n2", "n3"])
TIMES = st.integers(min_value=0, max_value=40)
CONFIG = StateConfig(max_executions_per_job=3, max_output_bytes=64, recent_groups_window=2)

jobs = st.builds(
    Job,
    name=NAMES,
    schedule=st.sampled_from(["", "@every 10s"]),
    parent_job=st.sampled_from(["", "a", "b"]),
    concurrency=st.sampled_from(["allow", "forbid", "bogus"]),
    retries=st.integers(min_value=0, max_value=2),
    disabled=st.booleans(),
    ephemeral=st.booleans(),
    expires_at=st.none() | TIMES,
    next=st.none() | TIMES,
    success_count=st.integers(min_value=0, max_value=3),
    tags=st.none() | st.dictionaries(st.sampled_from(["x", "y"]), st.sampled_from(["1", "2"])),
)
executions = st.builds(
    Execution,
    job_name=NAMES,
    started_at=TIMES,
    node_name=NODES,
    group=st.integers(min_value=0, max_value=5),
    attempt=st.integers(min_value=1, max_value=3),
    output=st.text(max_size=100),
)


@st.composite
def finished(draw: st.DrawFn) -> ExecutionFinished:
    ex = draw(executions)
    success = draw(st.booleans())
    status = "" if success else draw(st.sampled_from(["", "lost", "cancelled"]))
    return ExecutionFinished(
        Execution(
            ex.job_name,
            ex.started_at,
            ex.node_name,
            finished_at=ex.started_at + draw(st.integers(min_value=0, max_value=5)),
            success=success,
            output=ex.output,
            group=ex.group,
            attempt=ex.attempt,
            status=status,
        )
    )


@st.composite
def claims(draw: st.DrawFn) -> ClaimSlot:
    trigger = draw(st.sampled_from(["schedule", "catchup", "manual", "retry", "dependent"]))
    many = st.sampled_from([("n1",), ("n2",), ("n1", "n2")])
    targets = draw(NODES.map(lambda n: (n,)) if trigger == "retry" else many)
    return ClaimSlot(
        draw(NAMES),
        draw(TIMES),
        draw(st.integers(min_value=0, max_value=3)),
        trigger,
        draw(st.integers(min_value=0, max_value=5)),
        targets,
        draw(st.integers(min_value=1, max_value=3)),
    )


commands: st.SearchStrategy[Command] = st.one_of(
    st.builds(UpsertJob, jobs),
    st.builds(DeleteJob, NAMES),
    st.builds(ToggleJob, NAMES),
    claims(),
    st.builds(ExecutionStarted, executions),
    finished(),
    st.builds(DeleteExecutions, NAMES),
    st.builds(SetPaused, st.booleans()),
    st.builds(RecordMissed, NAMES, TIMES, st.sampled_from(["missed", "forbid", "expired"])),
)

entries = st.lists(st.one_of(commands.map(encode_command), st.binary(max_size=40)), max_size=60)


def _check_invariants(sm: StateMachine) -> None:
    names = {j.name for j in sm.iter_jobs()}
    for job in sm.iter_jobs():
        if job.parent_job:
            assert job.parent_job in names
            parent = sm.get_job(job.parent_job)
            assert parent is not None and job.name in parent.dependent_jobs
        for child in job.dependent_jobs:
            child_job = sm.get_job(child)
            assert child_job is not None and child_job.parent_job == job.name
        assert job.concurrency in ("allow", "forbid", "")  # invalid jobs never enter
        running = len(sm.running_executions(job.name))
        assert len(sm.executions(job.name)) <= CONFIG.max_executions_per_job + running
        for ex in sm.executions(job.name):
            assert len(ex.output.encode("utf-8", errors="surrogatepass")) <= 64


@given(entries)
@example([encode_command(UpsertJob(Job("a", schedule="@every 10s"))), b"\xff"])
def test_replicas_agree_and_snapshots_roundtrip(data: list[bytes]) -> None:
    one = StateMachine(CONFIG)
    two = StateMachine(CONFIG)
    for i, entry in enumerate(data, start=1):
        r1 = one.apply(i, entry)
        r2 = two.apply(i, entry)
        assert r1 == r2
        _check_invariants(one)
    snap = one.snapshot()
    assert snap == two.snapshot()
    three = StateMachine(CONFIG)
    three.restore(snap)
    assert three.snapshot() == snap
    # A restored replica keeps applying identically.
    extra = encode_command(UpsertJob(Job("d", schedule="@every 10s")))
    assert one.apply(len(data) + 1, extra) == three.apply(len(data) + 1, extra)
    assert one.snapshot() == three.snapshot()


@given(st.lists(commands, max_size=40))
def test_cursor_never_moves_backwards_and_slots_claimed_once(cmds: list[Command]) -> None:
    sm = StateMachine(CONFIG)
    claimed: set[tuple[str, int]] = set()
    for i, cmd in enumerate(cmds, start=1):
        before = {n: sm.cursor(n) for n in ("a", "b", "c", "d")}
        r = sm.apply(i, encode_command(cmd))
        if isinstance(cmd, ClaimSlot) and cmd.trigger in ("schedule", "catchup") and r.ok:
            assert (cmd.job, cmd.scheduled_time_ns) not in claimed
            claimed.add((cmd.job, cmd.scheduled_time_ns))
        if isinstance(cmd, DeleteJob) and r.ok:
            claimed = {c for c in claimed if c[0] != cmd.name}
        for n, cur in before.items():
            after = sm.cursor(n)
            if cur is not None and after is not None:
                assert after >= cur


@given(st.binary(max_size=200))
def test_apply_never_raises_on_garbage(data: bytes) -> None:
    sm = StateMachine()
    r = sm.apply(1, data)
    assert r.index == 1


def test_bytes_per_job_for_ten_thousand_jobs() -> None:
    """10,000 jobs without history stay under the 2 KiB-per-job budget."""
    payloads = [
        encode_command(
            UpsertJob(
                Job(
                    f"job-{i:05d}",
                    schedule="@every 10s",
                    executor="shell",
                    executor_config={"command": f"echo {i}"},
                    tags={"role": "worker"},
                )
            )
        )
        for i in range(10_000)
    ]
    tracemalloc.start()
    try:
        before = tracemalloc.take_snapshot()
        sm = StateMachine()
        for i, p in enumerate(payloads, start=1):
            assert sm.apply(i, p).ok
        after = tracemalloc.take_snapshot()
    finally:
        tracemalloc.stop()
    grown = sum(s.size_diff for s in after.compare_to(before, "filename"))
    bytes_per_job = grown / 10_000
    print(f"bytes_per_job={bytes_per_job:.0f}")
    assert bytes_per_job <= 2048
    assert sm.job_count() == 10_000
    page = sm.list_jobs(5_000, 5_010)
    assert [j.name for j in page] == [f"job-{i:05d}" for i in range(5_000, 5_010)]
