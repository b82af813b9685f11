"""Example tests for the replicated state machine: each Dkron store rule and each claim rule."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import cbor2
import pytest
from hypothesis import example, given
from hypothesis import strategies as st

import dkron.state as dkron_state
from dkron.model import Execution, Job
from dkron.state import (
    ApplyResult,
    ClaimSlot,
    ClaimSlots,
    Command,
    DeleteExecutions,
    DeleteJob,
    ExecutionFinished,
    ExecutionsFinished,
    ExecutionsStarted,
    ExecutionStarted,
    GroupCompleted,
    JobDeleted,
    RecordMissed,
    RetryScheduled,
    SetPaused,
    SingleCommand,
    SlotSkipped,
    StateConfig,
    StateMachine,
    ToggleJob,
    UpsertJob,
    batch_commands,
    compute_group_status,
    decode_command,
    each_applied,
    encode_command,
    retry_backoff_ns,
)

S = 10**9
T0 = 1_735_725_600 * S


class Driver:
    """Applies commands through the byte path, numbering log entries."""

    def __init__(self, config: StateConfig | None = None) -> None:
        self.sm = StateMachine(config)
        self.index = 0

    def __call__(self, cmd: Command) -> ApplyResult:
        self.index += 1
        return self.sm.apply(self.index, encode_command(cmd))

    def job(self, name: str = "job1", **kw: object) -> ApplyResult:
        fields: dict[str, object] = {"name": name, "schedule": "@every 10s", "executor": "shell"}
        fields.update(kw)
        return self(UpsertJob(Job(**fields)))  # type: ignore[arg-type]

    def claim(
        self,
        job: str = "job1",
        slot: int = T0,
        *,
        trigger: str = "schedule",
        group: int | None = None,
        targets: tuple[str, ...] = ("n1",),
        attempt: int = 1,
    ) -> ApplyResult:
        return self(
            ClaimSlot(job, slot, 1, trigger, slot if group is None else group, targets, attempt)
        )

    def run(
        self,
        job: str = "job1",
        *,
        group: int = T0,
        node: str = "n1",
        started: int = T0 + 1,
        duration: int = S,
        success: bool = True,
        attempt: int = 1,
        output: str = "ok",
    ) -> ApplyResult:
        ex = Execution(job, started, node, group=group, attempt=attempt)
        waiting = any(f.claim.execution_group == group for f in self.sm.in_flight(job))
        if not waiting and attempt == 1:
            # Only a claimed run may report: claim it as a manual run first.
            assert self.claim(job, group, trigger="manual", targets=(node,)).ok
        assert self(ExecutionStarted(ex)).ok
        return self(
            ExecutionFinished(
                dataclasses.replace(
                    ex, finished_at=started + duration, success=success, output=output
                )
            )
        )


@pytest.fixture
def d() -> Driver:
    return Driver()


# -- jobs -------------------------------------------------------------------------


def test_upsert_validates_and_refuses_invalid(d: Driver) -> None:
    r = d.job("BAD JOB NAME!")
    assert not r.ok
    assert r.reason == "invalid"
    assert r.error == "name contains illegal character 'B'"
    assert d.sm.job_count() == 0


def test_parent_must_exist(d: Driver) -> None:
    r = d.job("child", schedule="", parent_job="nope")
    assert (r.ok, r.error) == (False, "specified parent job not found")
    assert d.sm.get_job("child") is None


def test_dependent_jobs_maintained(d: Driver) -> None:
    d.job("p1")
    d.job("p2")
    d.job("c", schedule="", parent_job="p1")
    d.job("c2", schedule="", parent_job="p1")
    assert d.sm.get_job("p1").dependent_jobs == ("c", "c2")  # type: ignore[union-attr]
    d.job("p1", owner="someone")  # re-saving the parent keeps its dependents
    assert d.sm.get_job("p1").dependent_jobs == ("c", "c2")  # type: ignore[union-attr]
    d.job("c", schedule="", parent_job="p2")  # swap parents
    assert d.sm.get_job("p1").dependent_jobs == ("c2",)  # type: ignore[union-attr]
    assert d.sm.get_job("p2").dependent_jobs == ("c",)  # type: ignore[union-attr]
    d.job("c")  # becomes independent
    assert d.sm.get_job("p2").dependent_jobs == ()  # type: ignore[union-attr]
    r = d(DeleteJob("p1"))
    assert (r.ok, r.reason) == (False, "has_dependents")
    assert r.error == "store: could not delete job with dependent jobs, delete children first"
    assert d(DeleteJob("c2")).ok
    assert d.sm.get_job("p1").dependent_jobs == ()  # type: ignore[union-attr]
    assert d(DeleteJob("p1")).ok
    assert not d(DeleteJob("p1")).ok


def test_parent_cycle_refused(d: Driver) -> None:
    d.job("a")
    d.job("b", parent_job="a")
    r = d.job("a", parent_job="b")
    assert (r.ok, r.reason) == (False, "cycle")
    assert d.sm.get_job("a").parent_job == ""  # type: ignore[union-attr]


def test_upsert_merges_counters_and_next(d: Driver) -> None:
    d.job("a", next=T0)
    d.claim("a")
    d.run("a")
    r = d.job("a", next=T0 - S, success_count=0)
    job = r.job
    assert job is not None
    assert job.success_count == 1
    assert job.status == "success"
    assert job.next == T0
    r = d.job("a", schedule="@daily", next=T0 - S)
    assert r.job is not None
    assert r.job.next == T0 - S


def test_toggle(d: Driver) -> None:
    d.job()
    assert d(ToggleJob("job1")).job.disabled  # type: ignore[union-attr]
    assert not d(ToggleJob("job1")).job.disabled  # type: ignore[union-attr]
    assert d(ToggleJob("nope")).reason == "not_found"


def test_list_jobs_sorted_and_paged(d: Driver) -> None:
    for name in ("c", "a", "b", "d"):
        d.job(name)
    assert [j.name for j in d.sm.list_jobs()] == ["a", "b", "c", "d"]
    assert [j.name for j in d.sm.list_jobs(1, 3)] == ["b", "c"]
    assert [j.name for j in d.sm.iter_jobs()] == ["a", "b", "c", "d"]
    d(DeleteJob("b"))
    assert [j.name for j in d.sm.list_jobs()] == ["a", "c", "d"]


def test_paused_flag(d: Driver) -> None:
    seen = [d.sm.paused]
    d(SetPaused(True))
    seen.append(d.sm.paused)
    d(SetPaused(False))
    seen.append(d.sm.paused)
    assert seen == [False, True, False]


# -- claims -------------------------------------------------------------------------


def test_slot_claimed_at_most_once(d: Driver) -> None:
    d.job()
    assert d.claim(slot=T0).ok
    r = d.claim(slot=T0, group=T0 + 5)
    assert (r.ok, r.reason) == (False, "duplicate")
    assert d.claim(slot=T0 - 10 * S).reason == "duplicate"  # behind the cursor
    assert d.sm.cursor("job1") == T0
    assert d.claim(slot=T0 + 10 * S).ok
    assert d.sm.cursor("job1") == T0 + 10 * S
    assert d.claim("nope").reason == "not_found"


def test_forbid_is_decided_in_apply(d: Driver) -> None:
    d.job(concurrency="forbid")
    assert d.claim(slot=T0).ok
    r = d.claim(slot=T0 + 10 * S)
    assert (r.ok, r.reason) == (False, "forbid")
    assert r.events == (SlotSkipped(job="job1", scheduled_time_ns=T0 + 10 * S, reason="forbid"),)
    assert d.sm.cursor("job1") == T0 + 10 * S
    assert d.sm.missed_counts("job1") == {"forbid": 1}
    manual = d.claim(slot=T0 + 11 * S, trigger="manual", group=T0 + 11 * S)
    assert manual.reason == "forbid"  # manual runs honour forbid too
    d.run(group=T0)
    assert d.claim(slot=T0 + 20 * S).ok


def test_unclaimed_reports_are_ignored(d: Driver) -> None:
    """A report nobody claimed (or no longer waits for) can neither leave a
    record running forever nor block a forbid job."""
    d.job(concurrency="forbid")
    ex = Execution("job1", T0, "n1", group=T0, attempt=1)
    assert d(ExecutionStarted(ex)).reason == "duplicate"
    assert d.sm.running_executions("job1") == []
    assert d.claim(slot=T0 + 10 * S).ok


def test_allow_runs_overlap(d: Driver) -> None:
    d.job()
    assert d.claim(slot=T0).ok
    assert d.claim(slot=T0 + 10 * S).ok
    assert len(d.sm.in_flight("job1")) == 2


def test_disabled_and_expired_slots_are_skipped(d: Driver) -> None:
    d.job(disabled=True)
    r = d.claim(slot=T0)
    assert r.reason == "disabled"
    assert d.claim(slot=T0 + S, trigger="manual", group=T0 + S).ok  # manual still allowed
    d.job(disabled=False, expires_at=T0 + 5 * S)
    assert d.claim(slot=T0 + 10 * S).reason == "expired"
    assert d.sm.missed_counts("job1") == {"disabled": 1, "expired": 1}


def test_manual_claims_deduplicated_by_group(d: Driver) -> None:
    d.job()
    assert d.claim(slot=T0, trigger="manual", group=T0).ok
    assert d.claim(slot=T0, trigger="manual", group=T0).reason == "duplicate"
    d.run(group=T0)
    assert d.claim(slot=T0, trigger="manual", group=T0).reason == "duplicate"  # recent window
    assert d.sm.cursor("job1") is None  # manual runs do not move the cron cursor


def test_recent_window_is_bounded() -> None:
    d = Driver(StateConfig(recent_groups_window=2))
    d.job()
    for g in (1, 2, 3):
        assert d.claim(slot=g, trigger="manual", group=g).ok
        d.run(group=g, started=T0 + g)
    assert d.claim(slot=1, trigger="manual", group=1).ok  # fell out of the window


def test_record_missed(d: Driver) -> None:
    d.job()
    r = d(RecordMissed("job1", T0, "missed"))
    assert r.ok
    assert d(RecordMissed("job1", T0, "missed")).reason == "duplicate"
    assert d.claim(slot=T0).reason == "duplicate"
    assert d(RecordMissed("job1", T0 + S, "paused")).ok
    assert d.sm.missed_counts("job1") == {"missed": 1, "paused": 1}
    assert d(RecordMissed("nope", T0, "missed")).reason == "not_found"


def test_garbage_and_invalid_commands_do_not_raise(d: Driver) -> None:
    assert d.sm.apply(1, b"").reason == "bad_command"
    assert d.sm.apply(2, b"\x83\x09\x61a\x00").reason == "bad_command"  # RecordMissed arity
    assert d.sm.apply(2, b"\x80").reason == "stale_index"
    bad_reason = encode_command(RecordMissed("a", 1, "missed")).replace(b"missed", b"nissed")
    assert d.sm.apply(3, bad_reason).reason == "bad_command"


def test_claim_rejects_malformed_fields() -> None:
    with pytest.raises(ValueError):
        ClaimSlot("a", 1, 1, "schedule", 1, (), 1)
    with pytest.raises(ValueError):
        ClaimSlot("a", 1, 1, "retry", 1, ("n1", "n2"), 2)
    with pytest.raises(ValueError):
        ClaimSlot("a", 1, 1, "cron", 1, ("n1",), 1)
    with pytest.raises(ValueError):
        ClaimSlot("a", 1, 1, "schedule", 1, ("n1", "n1"), 1)


# -- executions ------------------------------------------------------------------------


def test_execution_finished_exactly_once(d: Driver) -> None:
    d.job()
    d.claim()
    ex = Execution("job1", T0 + 1, "n1", group=T0, attempt=1)
    d(ExecutionStarted(ex))
    done = ExecutionFinished(dataclasses.replace(ex, finished_at=T0 + 2 * S, success=True))
    first = d(done)
    second = d(done)
    assert first.ok and first.reason == ""
    assert second.ok and second.reason == "duplicate"
    assert d(ExecutionStarted(ex)).reason == "duplicate"  # a late start does not resurrect it
    job = d.sm.get_job("job1")
    assert job is not None
    assert (job.success_count, job.last_success, job.status) == (1, T0 + 2 * S, "success")
    assert d.sm.running_executions() == []
    assert d.sm.in_flight("job1") == []


@pytest.mark.parametrize("held_finished", [False, True])
def test_a_record_whose_id_another_run_holds_is_refused_and_settles_its_claim(
    held_finished: bool,
) -> None:
    """Two runs of one job on one node with the same start instant (a node whose
    clock went back) share an id: the second is refused, never stored over the
    first (which once corrupted the group index until eviction raised), and its
    claim stops waiting for it, so nothing stays in flight."""
    d = Driver(StateConfig(max_executions_per_job=3))
    d.job()
    first = Execution("job1", T0 + 5, "n1", group=T0, attempt=1)
    assert d.claim(slot=T0, group=T0).ok
    assert d(ExecutionStarted(first)).reason == ""
    if held_finished:
        assert d(ExecutionFinished(dataclasses.replace(first, finished_at=T0 + S, success=True))).ok
    held = d.sm.get_execution("job1", first.id)
    other = Execution("job1", T0 + 5, "n1", group=T0 + S, attempt=1)  # same id, other group
    assert d.claim(slot=T0 + S, group=T0 + S).ok
    started = d(ExecutionStarted(other))
    assert (started.ok, started.reason) == (False, "id_conflict")
    assert f"held by another run (group {T0}" in started.error
    done = d(ExecutionFinished(dataclasses.replace(other, finished_at=T0 + 2 * S, success=True)))
    assert (done.ok, done.reason) == (False, "id_conflict")
    assert d.sm.get_execution("job1", first.id) == held
    assert [c.claim.execution_group for c in d.sm.in_flight("job1")] == (
        [] if held_finished else [T0]
    )
    job = d.sm.get_job("job1")
    assert job is not None and job.success_count == (1 if held_finished else 0)
    # Later runs evict the old records without tripping over an index entry.
    for i in range(2, 8):
        d.claim(slot=T0 + i * S, group=T0 + i * S)
        d.run(group=T0 + i * S, started=T0 + i * S + 1)
    assert len(d.sm.executions("job1")) <= 3 + (0 if held_finished else 1)


def test_a_counter_at_its_limit_stays_there() -> None:
    """A result never makes apply raise, even on a counter at 2**63 - 1."""
    d = Driver()
    top = (1 << 63) - 1
    assert d.job(success_count=top, error_count=top).ok
    d.claim()
    assert d.run(success=True).ok
    assert d.claim(slot=T0 + S, group=T0 + S).ok
    assert d.run(group=T0 + S, started=T0 + S + 1, success=False).ok
    job = d.sm.get_job("job1")
    assert job is not None
    assert (job.success_count, job.error_count) == (top, top)
    assert (job.last_success, job.last_error) == (T0 + 1 + S, T0 + 2 * S + 1)


def test_failure_counts_and_last_error(d: Driver) -> None:
    d.job()
    d.claim()
    r = d.run(success=False)
    assert r.job is not None
    assert (r.job.error_count, r.job.last_error, r.job.status) == (1, T0 + 1 + S, "failed")
    assert r.events == (
        GroupCompleted(job="job1", execution_group=T0, status="failed", dependents=()),
    )


def test_finished_for_deleted_job(d: Driver) -> None:
    ex = Execution("gone", T0, "n1", finished_at=T0 + S)
    r = d(ExecutionFinished(ex))
    assert (r.ok, r.error) == (False, "grpc: Received execution done for a deleted job")
    assert d(ExecutionStarted(Execution("gone", T0, "n1"))).reason == "not_found"


def test_retries_with_replicated_backoff(d: Driver) -> None:
    d.job(retries=2)
    d.claim()
    r = d.run(success=False, started=T0, duration=10 * S)
    retry = r.events[0]
    assert isinstance(retry, RetryScheduled)
    assert retry.retry.attempt == 2
    assert retry.retry.due_ns == T0 + 10 * S + 3 * S  # Dkron's example: 10 s run -> 3 s
    assert d.sm.pending_retries() == [retry.retry]
    assert d.sm.get_job("job1").status == "failed"  # type: ignore[union-attr]
    # A retry must match the pending one exactly, once.
    assert d.claim(slot=retry.retry.due_ns, trigger="retry", group=T0, attempt=3).reason == (
        "no_retry"
    )
    assert d.claim(slot=retry.retry.due_ns, trigger="retry", group=T0, attempt=2).ok
    assert d.claim(slot=retry.retry.due_ns, trigger="retry", group=T0, attempt=2).reason == (
        "no_retry"
    )
    assert d.sm.pending_retries() == []
    r = d.run(started=T0 + 14 * S, attempt=2)
    # Failed then succeeded on retry: success (Dkron says partially_failed), dependents run.
    assert r.job is not None and r.job.status == "success"
    assert r.events == (
        GroupCompleted(job="job1", execution_group=T0, status="success", dependents=()),
    )


def test_retries_exhausted(d: Driver) -> None:
    d.job(retries=1)
    d.claim()
    d.run(success=False, started=T0)
    d.claim(slot=T0 + S, trigger="retry", group=T0, attempt=2)
    r = d.run(success=False, started=T0 + 2 * S, attempt=2)
    assert [type(e) for e in r.events] == [GroupCompleted]
    assert d.sm.pending_retries() == []


def test_cancelled_is_not_retried(d: Driver) -> None:
    d.job(retries=3)
    d.claim()
    ex = Execution("job1", T0, "n1", group=T0, attempt=1)
    d(ExecutionStarted(ex))
    r = d(ExecutionFinished(dataclasses.replace(ex, finished_at=T0 + S, status="cancelled")))
    assert not any(isinstance(e, RetryScheduled) for e in r.events)


def test_backoff_formula() -> None:
    assert retry_backoff_ns(400_000_000, 2) == 0
    assert retry_backoff_ns(10 * S, 2) == 3 * S
    assert retry_backoff_ns(S, 3) == 2 * S  # n=2: log2(2)+3 = 4 half-seconds


def test_status_computation_table() -> None:
    def ex(node: str, ok: bool, attempt: int = 1, running: bool = False) -> Execution:
        return Execution(
            "a",
            T0 + attempt,
            node,
            finished_at=None if running else T0 + 10,
            success=ok,
            attempt=attempt,
        )

    assert compute_group_status([ex("n1", True), ex("n2", False)]) == "partially_failed"
    assert compute_group_status([ex("n1", True), ex("n2", True)]) == "success"
    assert compute_group_status([ex("n1", False, running=True)]) == "failed"
    assert compute_group_status([ex("n1", False)]) == "failed"
    assert compute_group_status([ex("n1", False), ex("n1", True, attempt=2)]) == "success"
    assert compute_group_status([]) == ""


def test_multi_node_group_completes_once(d: Driver) -> None:
    d.job("p")
    d.job("c", schedule="", parent_job="p")
    d.claim("p", targets=("n1", "n2"))
    first = d.run("p", node="n1")
    assert first.job is not None and first.job.status == "partially_failed"  # n2 still running
    assert first.events == ()
    second = d.run("p", node="n2", started=T0 + 2)
    assert second.events == (
        GroupCompleted(job="p", execution_group=T0, status="success", dependents=("c",)),
    )
    # The child's run is owed in the replicated state (it survives a leader
    # change), identified by the parent's group, and can be claimed once.
    assert d.sm.pending_dependents() == [("c", T0)]
    assert not d.claim("c", slot=T0, trigger="dependent", group=T0 + 99).ok
    assert d.claim("c", slot=T0, trigger="dependent", group=T0).ok
    assert d.sm.pending_dependents() == []
    assert not d.claim("c", slot=T0, trigger="dependent", group=T0).ok


def test_ephemeral_deleted_after_success_only(d: Driver) -> None:
    d.job("e", ephemeral=True)
    d.claim("e")
    d.run("e", success=False)
    assert d.sm.get_job("e") is not None
    d.claim("e", slot=T0 + 10 * S)
    r = d.run("e", group=T0 + 10 * S, started=T0 + 10 * S)
    assert JobDeleted(name="e", ephemeral=True) in r.events
    assert d.sm.get_job("e") is None
    assert d.sm.executions("e") == []


def test_ephemeral_parent_with_children_is_kept(d: Driver) -> None:
    d.job("e", ephemeral=True)
    d.job("c", schedule="", parent_job="e")
    d.claim("e")
    r = d.run("e")
    assert not any(isinstance(e, JobDeleted) for e in r.events)
    assert d.sm.get_job("e") is not None


def test_history_and_output_caps() -> None:
    d = Driver(StateConfig(max_executions_per_job=3, max_output_bytes=100))
    d.job()
    for i in range(5):
        assert d.claim(slot=T0 + i * S, group=T0 + i).ok
        d.run(group=T0 + i, started=T0 + i * S, output="x" * 500)
    execs = d.sm.executions("job1")
    assert [e.started_at for e in execs] == [T0 + 2 * S, T0 + 3 * S, T0 + 4 * S]
    assert all(len(e.output.encode()) <= 100 and "truncated" in e.output for e in execs)
    # A late duplicate of an evicted result is not counted again.
    old = Execution("job1", T0, "n1", finished_at=T0 + S, success=True, group=T0, attempt=1)
    before = d.sm.get_job("job1").success_count  # type: ignore[union-attr]
    assert d(ExecutionFinished(old)).reason == "duplicate"
    assert d.sm.get_job("job1").success_count == before  # type: ignore[union-attr]


def test_running_records_are_not_evicted() -> None:
    d = Driver(StateConfig(max_executions_per_job=2))
    d.job()
    for i in range(3):
        assert d.claim(slot=T0 + i * S, group=T0 + i).ok
        d(ExecutionStarted(Execution("job1", T0 + i, "n1", group=T0 + i, attempt=1)))
    assert len(d.sm.executions("job1")) == 3
    assert len(d.sm.running_executions("job1")) == 3


def test_delete_executions_resets_counters(d: Driver) -> None:
    d.job()
    d.run(group=1, started=T0)
    d.run(group=2, started=T0 + S, success=False)
    job = d.sm.get_job("job1")
    assert job is not None
    assert (job.success_count, job.error_count) == (1, 1)
    r = d(DeleteExecutions("job1"))
    assert r.job is not None
    assert (r.job.success_count, r.job.error_count) == (0, 0)
    assert (r.job.last_success, r.job.last_error) == (None, None)
    assert r.job.status == "failed"  # status is not reset
    assert d.sm.executions("job1") == []
    assert d(DeleteExecutions("nope")).reason == "not_found"


def test_get_execution(d: Driver) -> None:
    d.job()
    d.run()
    ex = d.sm.executions("job1")[0]
    assert d.sm.get_execution("job1", ex.id) == ex
    assert d.sm.get_execution("job1", "nope") is None
    assert d.sm.get_execution("nope", ex.id) is None


def test_snapshot_restore_roundtrip(d: Driver) -> None:
    d.job("p", retries=1, tags={"b": "1", "a": "2"})
    d.job("c", schedule="", parent_job="p")
    d.claim("p", targets=("n1", "n2"))
    d.run("p", success=False)
    d(RecordMissed("p", T0 + S, "missed"))
    d(SetPaused(True))
    snap = d.sm.snapshot()
    other = StateMachine()
    other.restore(snap)
    assert other.snapshot() == snap
    assert other.paused
    assert other.applied_index == d.sm.applied_index
    assert other.pending_retries() == d.sm.pending_retries()
    assert other.in_flight("p") == d.sm.in_flight("p")
    assert other.get_job("p") == d.sm.get_job("p")


def test_restored_records_are_encoded_ahead_of_the_next_snapshot(d: Driver) -> None:
    """The first snapshot after a restore would otherwise encode every record at once."""
    for i in range(7):
        d.job(f"j{i}")
        for k in range(3):
            d.run(f"j{i}", group=T0 + k * S, started=T0 + k * S + 1)
    snap = d.sm.snapshot()
    other = StateMachine()
    other.restore(snap)
    records = [ex for i in range(7) for ex in other.executions(f"j{i}")]
    assert len(records) == 21 and not any(hasattr(ex, "_cbor") for ex in records)
    left = [other.encode_ahead(5) for _ in range(5)]
    assert left == [16, 11, 6, 1, 0]
    assert all(hasattr(ex, "_cbor") for ex in records)
    assert other.encode_ahead(5) == 0
    assert other.snapshot() == snap
    half = StateMachine()
    half.restore(snap)
    half.encode_ahead(10)
    assert half.snapshot() == snap


def test_restore_rejects_garbage_without_damage(d: Driver) -> None:
    d.job()
    snap = d.sm.snapshot()
    from dkron.proto_sansio.errors import RemoteProtocolError

    for garbage in (b"", b"\x00", snap[:-3], snap.replace(b"job1", b"JOB1")[:0] + b"\xa0"):
        with pytest.raises(RemoteProtocolError):
            d.sm.restore(garbage)
    assert d.sm.snapshot() == snap


def test_state_config_validation() -> None:
    with pytest.raises(ValueError):
        StateConfig(max_executions_per_job=0)
    with pytest.raises(ValueError):
        StateConfig(max_output_bytes=1)
    with pytest.raises(ValueError):
        StateConfig(recent_groups_window=0)


# -- batches: one log entry, each element exactly as its own entry ------------------


def _view(sm: StateMachine) -> list[object]:
    """The snapshot without its applied index (a batch uses one index for many commands)."""
    raw = cbor2.loads(sm.snapshot())
    return [raw[0], raw[1], *raw[3:]]


def _strip(result: ApplyResult) -> tuple[object, ...]:
    return (result.ok, result.reason, result.error, result.job, result.execution, result.claim,
            result.events)  # fmt: skip


_batch_step = st.tuples(
    st.sampled_from(["claim", "start", "finish"]),
    st.sampled_from(["job1", "job2", "gone"]),
    st.integers(0, 3),  # slot
    st.sampled_from(["n1", "n2"]),
    st.booleans(),  # success
    st.sampled_from(["schedule", "catchup", "manual", "retry"]),
)


def _batch_commands(steps: list[tuple[str, str, int, str, bool, str]]) -> list[SingleCommand]:
    cmds: list[SingleCommand] = []
    for kind, job, slot, node, success, trigger in steps:
        at = T0 + slot * S
        if kind == "claim":
            cmds.append(ClaimSlot(job, at, 1, trigger, at, (node,), 1 + (trigger == "retry")))
        else:
            ex = Execution(job, at + 1, node, group=at, attempt=1, scheduled_time=at)
            if kind == "start":
                cmds.append(ExecutionStarted(ex))
            else:
                done = dataclasses.replace(ex, finished_at=at + S, success=success)
                cmds.append(ExecutionFinished(done))
    return cmds


def _seeded() -> Driver:
    d = Driver(StateConfig(max_executions_per_job=3))
    d.job("job1", retries=1)
    d.job("job2", concurrency="forbid")
    return d


@given(st.lists(_batch_step, min_size=1, max_size=30))
@example([("claim", "job1", 1, "n1", True, "schedule")] * 2)
@example(
    [
        ("claim", "job1", 1, "n1", True, "schedule"),
        ("start", "job1", 1, "n1", False, "schedule"),
        ("finish", "job1", 1, "n1", False, "schedule"),
        ("claim", "job1", 1, "n1", True, "retry"),
    ]
)
def test_a_batch_applies_each_element_as_its_own_entry(
    steps: list[tuple[str, str, int, str, bool, str]],
) -> None:
    cmds = _batch_commands(steps)
    one_by_one, batched = _seeded(), _seeded()
    singles = [one_by_one(c) for c in cmds]
    parts: list[ApplyResult] = []
    for cmd in batch_commands(cmds):
        result = batched(cmd)
        pairs = list(each_applied(cmd, result))
        assert result.ok or not result.parts
        parts.extend(part for _, part in pairs)
        assert all(part.index == result.index for part in [result, *result.parts])
    assert [_strip(r) for r in parts] == [_strip(r) for r in singles]
    assert _view(batched.sm) == _view(one_by_one.sm)


def test_batch_commands_merges_only_neighbours_of_one_kind() -> None:
    c1, c2 = (ClaimSlot("j", T0 + i, 1, "schedule", T0 + i, ("n",), 1) for i in (1, 2))
    ex = Execution("j", T0, "n", group=T0, attempt=1)
    done = dataclasses.replace(ex, finished_at=T0 + S)
    miss = RecordMissed("j", T0 + 3, "missed")
    assert batch_commands([c1]) == [c1]
    assert batch_commands([c1, c2, miss, c1]) == [ClaimSlots((c1, c2)), miss, c1]
    started, finished = ExecutionStarted(ex), ExecutionFinished(done)
    assert batch_commands([started, started, finished, finished, started]) == [
        ExecutionsStarted((ex, ex)),
        ExecutionsFinished((done, done)),
        started,
    ]
    assert batch_commands([]) == []


def test_batches_validate_and_round_trip_through_the_log() -> None:
    ex = Execution("j", T0, "n", group=T0, attempt=1)
    done = dataclasses.replace(ex, finished_at=T0 + S)
    with pytest.raises(ValueError):
        ClaimSlots(())
    with pytest.raises(ValueError):
        ExecutionsStarted((done,))
    with pytest.raises(ValueError):
        ExecutionsFinished((ex,))
    for cmd in (ExecutionsStarted((ex,)), ExecutionsFinished((done,))):
        assert decode_command(encode_command(cmd)) == cmd
    # A batch whose element is invalid is refused as a whole, before anything applies.
    bad = encode_command(ExecutionsStarted((ex,))).replace(b"\xf6", b"\x01", 1)
    sm = StateMachine()
    decoded, result = sm.apply_entry(1, bad)
    assert decoded is None
    assert (result.ok, result.reason) == (False, "bad_command")


def test_the_cap_evicts_the_oldest_finished_records_never_running_ones() -> None:
    d = Driver(StateConfig(max_executions_per_job=2))
    d.job()
    # Runs started out of order: the eviction follows started_at, not arrival.
    d.run(group=T0 + 5 * S, started=T0 + 5 * S)
    d.run(group=T0 + 1 * S, started=T0 + 1 * S)
    d.run(group=T0 + 9 * S, started=T0 + 9 * S)
    assert [e.started_at for e in d.sm.executions("job1")] == [T0 + 5 * S, T0 + 9 * S]
    # Three runs at once exceed the cap while they run; none is evicted.
    for i in (20, 21, 22):
        at = T0 + i * S
        assert d.claim(slot=at, trigger="manual", group=at).ok
        assert d(ExecutionStarted(Execution("job1", at, "n1", group=at, attempt=1))).ok
    assert len(d.sm.running_executions("job1")) == 3
    assert len(d.sm.executions("job1")) == 3
    assert d(DeleteExecutions("job1")).ok  # finished ones go, stale heap entries stay behind
    assert len(d.sm.executions("job1")) == 3
    done = Execution("job1", T0 + 20 * S, "n1", finished_at=T0 + 30 * S, success=True,
                     group=T0 + 20 * S, attempt=1)  # fmt: skip
    assert d(ExecutionFinished(done)).ok
    # Over the cap with one finished record: that one goes, the two running stay.
    assert d.sm.get_execution("job1", done.id) is None
    assert len(d.sm.executions("job1")) == len(d.sm.running_executions("job1")) == 2
    restored = StateMachine(StateConfig(max_executions_per_job=2))
    restored.restore(d.sm.snapshot())
    assert restored.snapshot() == d.sm.snapshot()


# -- the apply fast paths say what the plain rules say ---------------------------------

_run_step = st.tuples(
    st.sampled_from(["claim", "start", "finish"]),
    st.integers(0, 2),  # slot
    st.sampled_from([("n1",), ("n2",), ("n1", "n2")]),
    st.booleans(),  # success
    st.sampled_from(["schedule", "manual", "retry"]),
    st.sampled_from(["", "cancelled"]),
)


@given(st.lists(_run_step, min_size=1, max_size=40))
@example(
    [
        ("claim", 0, ("n1", "n2"), True, "manual", ""),
        ("start", 0, ("n1",), True, "manual", ""),
        ("finish", 0, ("n1",), True, "manual", ""),
        ("finish", 0, ("n2",), False, "manual", ""),
    ]
)
def test_results_match_the_plain_rules(
    steps: list[tuple[str, int, tuple[str, ...], bool, str, str]],
) -> None:
    """Every committed result: a valid job (as a full constructor would build it)
    whose status is compute_group_status over the group, counted once."""
    d = Driver(StateConfig(max_executions_per_job=4))
    d.job("job1", retries=1)
    counted = 0
    for kind, slot, targets, success, trigger, status in steps:
        at = T0 + slot * S
        if kind == "claim":
            retry = trigger == "retry"
            d(ClaimSlot("job1", at, 1, trigger, at, targets[:1] if retry else targets, 1 + retry))
            continue
        for node in targets:
            pending = {f.claim.execution_group: f for f in d.sm.in_flight("job1")}.get(at)
            attempt = pending.outstanding.get(node, 1) if pending is not None else 1
            ex = Execution("job1", at + attempt, node, group=at, attempt=attempt)
            if kind == "start":
                d(ExecutionStarted(ex))
                continue
            done = dataclasses.replace(
                ex, finished_at=at + S, success=success and not status, status=status
            )
            result = d(ExecutionFinished(done))
            if not result.ok or result.reason == "duplicate":
                continue
            counted += 1
            job = result.job
            assert job is not None
            assert job == dataclasses.replace(job)  # re-validated: the same job
            assert job == d.sm.get_job("job1")
            still = {f.claim.execution_group: f for f in d.sm.in_flight("job1")}.get(at)
            group = d.sm.group_executions("job1", at)
            expected = compute_group_status(
                group, tuple(sorted(still.outstanding)) if still is not None else ()
            )
            assert job.status == expected
            assert job.success_count + job.error_count == counted
            assert group == sorted(group, key=lambda e: (e.started_at, e.node_name))


def test_entries_decode_through_the_configured_decoder() -> None:
    seen: list[bytes] = []

    def decoder(data: bytes) -> Command:
        seen.append(data)
        return decode_command(data)

    sm = StateMachine(decoder=decoder)
    body = encode_command(UpsertJob(Job("job1", schedule="@every 10s", executor="shell")))
    assert sm.apply(1, body).ok
    assert sm.apply(2, b"\xff").reason == "bad_command"
    assert seen == [body, b"\xff"]


def test_batch_elements_are_the_single_commands() -> None:
    ex = Execution("job1", T0, "n1", group=T0, attempt=1)
    done = dataclasses.replace(ex, finished_at=T0 + S, success=True)
    started = ExecutionsStarted((ex, ex))
    finished = ExecutionsFinished((done,))
    result = ApplyResult(index=1, ok=True, parts=(ApplyResult(index=1, ok=True),) * 2)
    assert [c for c, _ in each_applied(started, result)] == [ExecutionStarted(ex)] * 2
    one = ApplyResult(index=1, ok=True, parts=(ApplyResult(index=1, ok=True),))
    assert [c for c, _ in each_applied(finished, one)] == [ExecutionFinished(done)]


_store_op = st.tuples(
    st.integers(0, 11),  # which run
    st.integers(0, 40),  # its start, in seconds after T0
    st.sampled_from(["start", "finish", "both"]),
    st.sampled_from(["n1", "n2"]),
)


@given(st.lists(_store_op, min_size=1, max_size=60), st.integers(1, 5), st.booleans())
def test_the_eviction_index_evicts_what_a_plain_scan_would(
    ops: list[tuple[int, int, str, str]], cap: int, clear: bool
) -> None:
    """``_Activity``'s finished index (a sorted list read from a moving head)
    against a plain model: after every store and prune, the records kept are
    the running ones plus the newest finished by ``(started_at, id)``, as many
    as the cap leaves room for."""
    from dkron.state import _Activity

    act = _Activity()
    model: dict[str, Execution] = {}
    for step, (run, second, what, node) in enumerate(ops):
        started = T0 + second * S + run  # unique per run, in any order
        ex = Execution("job1", started, node, group=started, attempt=1)
        done = dataclasses.replace(ex, finished_at=started + S, success=True)
        records = {"start": [ex], "finish": [done], "both": [ex, done]}[what]
        for record in records:
            stored = model.get(record.id)
            if stored is not None and stored.finished_at is not None:
                continue  # a finished record is stored once, as apply does
            act.store(record.id, record)
            model[record.id] = record
            act.prune(cap)
            finished = sorted((e.started_at, k) for k, e in model.items() if e.finished_at)
            excess = len(model) - cap
            for _, k in finished[: max(0, excess)]:
                del model[k]
            assert act.executions == model
        if clear and step % 7 == 6:  # DeleteExecutions: finished records go, index entries stay
            for k in [k for k, e in model.items() if e.finished_at]:
                act.evict(k)
                del model[k]
    assert act.running == {k for k, e in model.items() if e.finished_at is None}


# -- records built slot by slot are the records the constructors build ------------------

_any_value = st.one_of(
    st.none(), st.booleans(), st.integers(), st.text(max_size=5), st.tuples(st.integers())
)


@given(st.data())
def test_slot_built_records_equal_constructed_ones(data: st.DataObject) -> None:
    """``slot_maker`` and ``slot_copier`` fill a plain twin and hand it the class: the
    object must be the class's own, equal to what its constructor (or
    ``dataclasses.replace``) builds, and as frozen."""
    from dkron.proto_sansio.wire import slot_maker
    from dkron.state import _completed, _inflight, _result, _with_error, _with_success

    builders: list[tuple[type[Any], Callable[..., Any]]] = [
        (ApplyResult, _result),
        (GroupCompleted, _completed),
        (dkron_state.InFlight, _inflight),
        (dkron_state.PendingRetry, slot_maker(dkron_state.PendingRetry)),
    ]
    for cls, make in builders:
        names = [f.name for f in dataclasses.fields(cls)]
        values: list[Any] = [data.draw(_any_value, label=n) for n in names]
        built = make(*values)
        assert type(built) is cls
        assert built == cls(**dict(zip(names, values, strict=True)))
        assert [getattr(built, n) for n in names] == values
        with pytest.raises(dataclasses.FrozenInstanceError):
            setattr(built, names[0], None)
    job = Job(
        data.draw(st.sampled_from(["job1", "job-2"])),
        schedule="@every 10s",
        executor="shell",
        success_count=data.draw(st.integers(0, 5)),
        error_count=data.draw(st.integers(0, 5)),
        dependent_jobs=data.draw(st.sampled_from([(), ("a",), ("a", "b")])),
    )
    status = data.draw(st.sampled_from(["success", "failed", "partially_failed"]))
    count = data.draw(st.integers(0, 10))
    last = data.draw(st.integers(T0, T0 + S))
    copied = _with_success(job, status, count, last)
    assert type(copied) is Job
    assert copied == dataclasses.replace(job, status=status, success_count=count, last_success=last)
    copied = _with_error(job, status, count, last)
    assert copied == dataclasses.replace(job, status=status, error_count=count, last_error=last)
    assert hash(copied) == hash(dataclasses.replace(copied))
    with pytest.raises(dataclasses.FrozenInstanceError):
        copied.status = "x"


def test_plain_twins_exist_only_for_compatible_layouts() -> None:
    from dkron.proto_sansio.wire import plain_twin

    @dataclasses.dataclass(frozen=True, slots=True)
    class Base:
        a: int

    @dataclasses.dataclass(frozen=True, slots=True)
    class Derived(Base):
        b: int

    @dataclasses.dataclass(frozen=True)
    class NoSlots:
        a: int

    twin = plain_twin(Base)
    assert twin is not None
    obj: Any = object.__new__(twin)
    obj.a = 1
    obj.__class__ = Base
    assert obj == Base(1)
    assert plain_twin(Derived) is None
    assert plain_twin(NoSlots) is None
