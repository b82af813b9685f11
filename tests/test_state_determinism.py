"""Hypothesis: replicas agree byte for byte, snapshots round-trip, apply never raises."""

from __future__ import annotations

import tracemalloc

import cbor2
import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from dkron.model import Execution, Job
from dkron.state import (
    _SNAPSHOTS,
    ERR_DONE_FOR_DELETED,
    ApplyResult,
    ClaimSlot,
    Command,
    DeleteExecutions,
    DeleteJob,
    ExecutionFinished,
    ExecutionStarted,
    JobDeleted,
    PendingRetry,
    RecordMissed,
    RetryScheduled,
    SetPaused,
    StateConfig,
    StateEvent,
    StateMachine,
    ToggleJob,
    UpsertJob,
    _Activity,
    _completed,
    _counted,
    _Encoded,
    _inflight,
    _JobSnap,
    _result,
    _Snapshot,
    _write_encoded,
    compute_group_status,
    decode_command,
    encode_command,
    retry_backoff_ns,
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
    assert snap == _reference_snapshot(one)
    three = StateMachine(CONFIG)
    three.restore(snap)
    assert three.snapshot() == snap
    # A restored replica keeps applying identically.
    extra = encode_command(UpsertJob(Job("d", schedule="@every 10s")))
    assert one.apply(len(data) + 1, extra) == three.apply(len(data) + 1, extra)
    assert one.snapshot() == three.snapshot()


def _reference_snapshot(sm: StateMachine) -> bytes:
    """The snapshot codec's own encoding of the state, every record encoded afresh."""
    snaps = []
    for name in sm._names:
        act = sm._activity.get(name) or _Activity()
        snaps.append(
            _JobSnap(
                job=sm._jobs[name],
                cursor=sm._cursor.get(name),
                executions=tuple(act.executions[k] for k in sorted(act.executions)),
                inflight=tuple(act.inflight[g] for g in sorted(act.inflight)),
                recent=tuple(act.recent),
                retries=tuple(act.retries[k] for k in sorted(act.retries)),
                missed=dict(act.missed),
                triggered=tuple(act.triggered),
            )
        )
    snap = _Snapshot(version=1, applied_index=sm._applied, paused=sm._paused, jobs=tuple(snaps))
    return cbor2.dumps(_SNAPSHOTS.to_wire(snap), canonical=True)


@st.composite
def runs(draw: st.DrawFn) -> list[Command]:
    """Claimed runs that start and finish (so that records are stored), some
    reports dropped, others interleaved with random commands."""
    out: list[Command] = [UpsertJob(Job("a", schedule="@every 10s"))]
    out.append(UpsertJob(Job("b", schedule="@every 10s", retries=1)))
    for group in range(draw(st.integers(min_value=0, max_value=30))):
        job = draw(st.sampled_from(["a", "b"]))
        targets = draw(st.sampled_from([("n1",), ("n2",), ("n1", "n2")]))
        out.append(ClaimSlot(job, group, 1, "manual", group, targets, 1))
        for node in targets:
            # Times of different lengths: ids do not sort in the order records
            # arrive.  Each group has its own range, above TIMES: a result under
            # a running record's id but another group is not what this tests.
            started = 1000 + group * 10**9 + draw(st.integers(min_value=0, max_value=10**9 - 1))
            ex = Execution(job, started, node, group=group, attempt=1, output=draw(st.text()))
            if draw(st.booleans()):
                out.append(ExecutionStarted(ex))
            if draw(st.booleans()):
                end = started + draw(st.integers(min_value=0, max_value=5))
                success = draw(st.booleans())
                done = Execution(
                    job, started, node, end, success, ex.output, group, 1, trigger="manual"
                )
                out.append(ExecutionFinished(done))
        out.extend(draw(st.lists(commands, max_size=2)))
    return out


@given(runs(), st.integers(min_value=0, max_value=100))
def test_snapshots_of_shared_records_are_the_codecs_bytes(cmds: list[Command], cut: int) -> None:
    """Replicas applying the same decoded commands share the records and their
    cached encodings; a snapshot taken midway fills part of the cache first."""
    config = StateConfig(max_executions_per_job=40, max_output_bytes=64, recent_groups_window=2)
    one = StateMachine(config)
    two = StateMachine(config)
    for i, cmd in enumerate(cmds, start=1):
        shared = decode_command(encode_command(cmd))
        assert one.apply_command(i, shared) == two.apply_command(i, shared)
        if i == cut:
            assert one.snapshot() == _reference_snapshot(one)
    snap = two.snapshot()
    assert snap == one.snapshot() == _reference_snapshot(two)
    three = StateMachine(config)
    three.restore(snap)
    assert three.snapshot() == snap


class _PlainState(StateMachine):
    """The apply paths of results as first written, through the general helpers
    (_Activity.store, only, _counted) that the state machine spells out inline."""

    def _started(self, index: int, ex: Execution) -> ApplyResult:
        # Runs for every record on every replica: the checks of _expected,
        # _capped and prune that nearly always pass are made inline.
        name = ex.job_name
        if name not in self._jobs:
            return self._not_found(index, name)
        act = self._activity.get(name)
        key = ex.id
        if act is None or key in act.executions:
            return _result(index, True, "duplicate", "", None, ex, None, (), ())
        claimed = act.inflight.get(ex.group)
        if claimed is None or claimed.outstanding.get(ex.node_name) != ex.attempt:
            return _result(index, True, "duplicate", "", None, ex, None, (), ())
        config = self.config
        stored = ex if len(ex.output) * 4 <= config.max_output_bytes else self._capped(ex)
        act.store(key, stored)
        if len(act.executions) > config.max_executions_per_job:
            act.prune(config.max_executions_per_job)
        return _result(index, True, "", "", None, stored, None, (), ())

    def _finished(self, index: int, ex: Execution) -> ApplyResult:
        name = ex.job_name
        job = self._jobs.get(name)
        if job is None:
            return self._refuse(index, "not_found", ERR_DONE_FOR_DELETED)
        act = self._activity.get(name)
        if act is None:
            return _result(index, True, "duplicate", "", None, ex, None, (), ())
        key = ex.id
        existing = act.executions.get(key)
        if existing is not None:
            if existing.finished_at is not None:
                return _result(index, True, "duplicate", "", None, existing, None, (), ())
        elif not self._expected(act, ex):
            return _result(index, True, "duplicate", "", None, ex, None, (), ())
        config = self.config
        stored = ex if len(ex.output) * 4 <= config.max_output_bytes else self._capped(ex)
        act.store(key, stored)
        if len(act.executions) > config.max_executions_per_job:
            act.prune(config.max_executions_per_job)
        finished_at = ex.finished_at
        assert finished_at is not None  # guaranteed by ExecutionFinished
        group = ex.group
        node = ex.node_name
        inflight = act.inflight
        still = inflight.get(group)
        if still is not None and node in still.outstanding:
            if len(still.outstanding) == 1:
                del inflight[group]
                still = None
            else:
                rest = {n: a for n, a in still.outstanding.items() if n != node}
                still = inflight[group] = _inflight(still.claim, rest)
        if still is None and act.only(group, key):
            # The group's one record, finished, nobody else to hear from:
            # what compute_group_status says of it, without building its inputs.
            status = "success" if stored.success else "failed"
        else:
            status = compute_group_status(
                act.group(group), tuple(sorted(still.outstanding)) if still is not None else ()
            )
        success = ex.success
        job = _counted(job, status, success, finished_at)
        self._jobs[name] = job
        retries = act.retries
        retried: tuple[StateEvent, ...] = ()
        if not success and ex.status != "cancelled" and 1 <= ex.attempt < job.retries + 1:
            attempt = ex.attempt + 1
            retry = PendingRetry(
                job=name,
                execution_group=group,
                node_name=node,
                attempt=attempt,
                due_ns=finished_at + retry_backoff_ns(finished_at - ex.started_at, attempt),
                scheduled_time_ns=ex.scheduled_time,
            )
            retries[(group, node)] = retry
            retried = (RetryScheduled(retry=retry),)
        if group in inflight or (retries and any(g == group for g, _ in retries)):
            return _result(index, True, "", "", job, stored, None, retried, ())
        # The whole group has reported and owes no retry: it is complete.
        ok = status == "success"
        dependents = job.dependent_jobs
        events = (*retried, _completed(name, group, status, dependents if ok else ()))
        if ok and dependents:
            for child in dependents:
                if child in self._jobs:
                    owed = self._act(child).triggered
                    owed.append(group)
                    if len(owed) > self.config.recent_groups_window:
                        del owed[0]
        elif ok and job.ephemeral:
            self._drop(job)
            events = (*events, JobDeleted(name=name, ephemeral=True))
        return _result(index, True, "", "", job, stored, None, events, ())


@given(runs(), st.integers(min_value=1, max_value=4), st.integers(min_value=1, max_value=200))
def test_results_apply_as_through_the_general_helpers(
    cmds: list[Command], cap: int, skip: int
) -> None:
    config = StateConfig(max_executions_per_job=cap, max_output_bytes=64, recent_groups_window=2)
    fast = StateMachine(config)
    # Two more replicas share each decoded command, and with it the counts
    # left on its records; one of them lags a command behind the others.
    shared = StateMachine(config)
    lagging = StateMachine(config)
    plain = _PlainState(config)
    # A state that missed one command meets the same records with other jobs.
    other = StateMachine(config)
    other_plain = _PlainState(config)
    decoded = [decode_command(encode_command(cmd)) for cmd in cmds]
    skip = skip % max(len(cmds), 1) + 1
    for i, cmd in enumerate(decoded, start=1):
        data = encode_command(cmd)
        if i != skip:
            assert other.apply_command(i, cmd) == other_plain.apply(i, data)
        expected = plain.apply(i, data)
        assert fast.apply(i, data) == expected
        assert shared.apply_command(i, cmd) == expected
        if i > 1:
            lagging.apply_command(i - 1, decoded[i - 2])
        assert fast.snapshot() == plain.snapshot() == shared.snapshot()
    if decoded:
        lagging.apply_command(len(decoded), decoded[-1])
    assert lagging.snapshot() == plain.snapshot()
    assert other.snapshot() == other_plain.snapshot()
    for name in ("a", "b"):
        for sm in (fast, shared, lagging):
            assert sm.executions(name) == plain.executions(name)
            assert sm.running_executions(name) == plain.running_executions(name)
            assert sm.get_job(name) == plain.get_job(name)


@pytest.mark.parametrize("n", [0, 1, 23, 24, 255, 256, 65_535, 65_536])
def test_an_array_of_encoded_items_is_cbor2s_array(n: int) -> None:
    items = [cbor2.dumps(i % 300) for i in range(n)]
    spliced = cbor2.dumps([_Encoded(items)], default=_write_encoded)
    assert spliced == cbor2.dumps([[i % 300 for i in range(n)]])


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
