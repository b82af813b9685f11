"""The execution protocol cores: targets, dispatch, fencing, leases, lost, cancel, results."""

from __future__ import annotations

import collections
import dataclasses
import heapq
import math
import random
from collections.abc import Callable, Sequence
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dkron.model import MAX_TIME_NS, MIN_TIME_NS, TRIGGERS, Execution, Job
from dkron.proto_sansio.errors import RemoteProtocolError
from dkron.proto_sansio.execution import (
    EXECUTION_CODEC,
    LOST_EXPIRED,
    LOST_GONE,
    Cancel,
    Dispatch,
    ExecutionConfig,
    ExecutionLeader,
    ExecutionWorker,
    ForgetRun,
    Heartbeat,
    LiveOutput,
    MemberView,
    Output,
    Propose,
    Refused,
    Result,
    ResultAck,
    RunKey,
    Send,
    Started,
    StartRun,
    StopRun,
    _Timers,
    choose_targets,
    qualifying_targets,
    select_targets,
)
from dkron.state import (
    ClaimSlot,
    ExecutionFinished,
    ExecutionsFinished,
    ExecutionsStarted,
    ExecutionStarted,
    StateMachine,
    UpsertJob,
    encode_command,
    one_finished,
    one_started,
)

T0 = 1_772_000_000 * 1_000_000_000
CFG = ExecutionConfig(heartbeat_interval=1.0, lease_timeout=5.0, dispatch_timeout=10.0)


def members(*specs: tuple[str, dict[str, str]], dead: tuple[str, ...] = ()) -> list[MemberView]:
    return [MemberView(name=n, alive=n not in dead, tags=t) for n, t in specs]


# -- target selection (Dkron's tags.go / agent.go) ------------------------------------------


def test_all_tags_must_match_and_no_tags_means_every_alive_node() -> None:
    ms = members(
        ("a", {"role": "web", "dc": "x"}),
        ("b", {"role": "web", "dc": "y"}),
        ("c", {"role": "db"}),
        ("d", {"role": "web", "dc": "x"}),
        dead=("d",),
    )
    rng = random.Random(1)
    assert select_targets({"role": "web", "dc": "x"}, ms, region="global", rng=rng) == ("a",)
    assert select_targets({}, ms, region="global", rng=rng) == ("a", "b", "c")
    assert select_targets(None, ms, region="global", rng=rng) == ("a", "b", "c")


def test_smallest_count_wins_and_bad_count_means_no_nodes() -> None:
    ms = members(*[(f"n{i}", {"role": "web", "zone": "z"}) for i in range(6)])
    rng = random.Random(2)
    assert len(select_targets({"role": "web:3", "zone": "z:2"}, ms, region="global", rng=rng)) == 2
    assert select_targets({"role": "web:x"}, ms, region="global", rng=rng) == ()
    # More than one colon: no count, only the first part is compared.
    assert len(select_targets({"role": "web:1:2"}, ms, region="global", rng=rng)) == 6


def test_only_the_leaders_region_qualifies() -> None:
    ms = members(("a", {"region": "eu"}), ("b", {"region": "us"}), ("c", {}))
    rng = random.Random(3)
    assert select_targets({}, ms, region="eu", rng=rng) == ("a",)
    assert select_targets({}, ms, region="global", rng=rng) == ("c",)


def test_a_counted_subset_is_uniform() -> None:
    ms = members(*[(f"n{i}", {"role": "w"}) for i in range(5)])
    rng = random.Random(4)
    hits: collections.Counter[str] = collections.Counter()
    for _ in range(5000):
        hits.update(select_targets({"role": "w:1"}, ms, region="global", rng=rng))
    assert sum(hits.values()) == 5000
    assert all(800 < hits[f"n{i}"] < 1200 for i in range(5)), hits


# -- wire ---------------------------------------------------------------------------------


KEY = RunKey("job", T0, "w1", 1)
KEY2 = RunKey("job", T0, "w2", 1)
EX = Execution("job", T0 + 5, "w1", group=T0, attempt=1, scheduled_time=T0, trigger="schedule")


@pytest.mark.parametrize(
    "msg",
    [
        Dispatch(3, KEY, Job("job", schedule="@every 1s"), T0, "schedule", T0 + 30),
        Started(EX),
        Output(KEY, 1, b"hello"),
        Heartbeat("w1", (KEY,)),
        Result(EX),
        ResultAck(KEY),
        Cancel(KEY),
        Refused(4, KEY, "stale_term"),
    ],
)
def test_messages_round_trip(msg: object) -> None:
    assert EXECUTION_CODEC.decode(EXECUTION_CODEC.encode(msg)) == msg


@given(st.binary(max_size=200))
def test_garbage_raises_only_remote_protocol_error(data: bytes) -> None:
    try:
        EXECUTION_CODEC.decode(data)
    except RemoteProtocolError:
        return


# -- worker -----------------------------------------------------------------------------


def sends(actions: Sequence[object]) -> list[tuple[str, object]]:
    return [(a.dst, a.msg) for a in actions if isinstance(a, Send)]


def dispatch(term: int = 1, key: RunKey = KEY, start_by: int = T0 + 10**12) -> Dispatch:
    return Dispatch(term, key, Job("job", schedule="@every 1s"), T0, "schedule", start_by)


def test_worker_runs_an_attempt_once_however_often_dispatched() -> None:
    w = ExecutionWorker("w1", CFG, now=0.0)
    w.receive(dispatch(), src="s1", now=0.0, wall_ns=T0 + 5)
    first = w.drain()
    starts = [a for a in first if isinstance(a, StartRun)]
    assert len(starts) == 1
    # A new leader (same or newer term) re-dispatches: answered, not started again.
    w.receive(dispatch(term=2), src="s2", now=1.0, wall_ns=T0 + 9)
    again = w.drain()
    assert not any(isinstance(a, StartRun) for a in again)
    assert sends(again) == [("s2", Started(starts[0].execution))]


def test_worker_fences_a_deposed_leader() -> None:
    w = ExecutionWorker("w1", CFG, now=0.0)
    w.receive(dispatch(term=5), src="s2", now=0.0, wall_ns=T0 + 5)
    w.drain()
    w.receive(dispatch(term=4), src="s1", now=0.5, wall_ns=T0 + 6)
    assert sends(w.drain()) == [("s1", Refused(5, KEY, "stale_term"))]
    assert w.refused == 1


def test_worker_resends_result_to_whoever_leads_until_acknowledged() -> None:
    w = ExecutionWorker("w1", CFG, now=0.0)
    w.receive(dispatch(), src="s1", now=0.0, wall_ns=T0 + 5)
    w.drain()
    w.output(KEY, b"line\n", 0.1)
    assert sends(w.drain()) == [("s1", Output(KEY, 1, b"line\n"))]
    w.finished(KEY, success=True, output="line\n", wall_ns=T0 + 50, now=0.2)
    ((dst, res),) = sends(w.drain())
    assert dst == "s1" and isinstance(res, Result) and res.execution.success
    w.set_leader("s2", 0.3)
    assert sends(w.drain()) == [("s2", res)]
    w.handle_timer(2.0)
    assert ("s2", res) in sends(w.drain())
    w.receive(ResultAck(KEY), src="s2", now=2.1, wall_ns=T0 + 60)
    w.handle_timer(10.0)
    assert not [m for _, m in sends(w.drain()) if isinstance(m, Result)]
    # A late re-dispatch of a finished, acknowledged run never starts it again.
    w.receive(dispatch(term=3), src="s3", now=11.0, wall_ns=T0 + 70)
    assert sends(w.drain()) == [("s3", Refused(3, KEY, "done"))]


def test_worker_heartbeats_running_attempts_and_reports_cancel() -> None:
    w = ExecutionWorker("w1", CFG, now=0.0)
    w.receive(dispatch(), src="s1", now=0.0, wall_ns=T0 + 5)
    w.drain()
    w.handle_timer(1.0)
    assert sends(w.drain()) == [("s1", Heartbeat("w1", (KEY,)))]
    w.receive(Cancel(KEY), src="s1", now=1.2, wall_ns=T0 + 6)
    assert w.drain() == [StopRun(key=KEY)]
    w.finished(KEY, success=True, output="", wall_ns=T0 + 7, now=1.3)
    ((_, res),) = sends(w.drain())
    assert isinstance(res, Result)
    assert res.execution.status == "cancelled" and not res.execution.success


# -- leader -----------------------------------------------------------------------------


def claimed_state(targets: tuple[str, ...] = ("w1",), retries: int = 0) -> tuple[StateMachine, int]:
    sm = StateMachine()
    sm.apply(1, encode_command(UpsertJob(Job("job", schedule="@every 1s", retries=retries))))
    res = sm.apply(2, encode_command(ClaimSlot("job", T0, 1, "schedule", T0, targets, 1)))
    assert res.ok
    return sm, 2


def proposals(actions: Sequence[object]) -> list[object]:
    return [a.command for a in actions if isinstance(a, Propose)]


def test_leader_dispatches_until_started_then_proposes_started() -> None:
    sm, _ = claimed_state()
    lead = ExecutionLeader("s1", 1, CFG, now=0.0)
    lead.load(sm, 0.0, wall_ns=T0)
    ((dst, msg),) = sends(lead.drain())
    assert dst == "w1" and isinstance(msg, Dispatch) and msg.term == 1
    lead.handle_timer(1.0, T0 + 1)
    assert [type(m) for _, m in sends(lead.drain())] == [Dispatch]  # re-sent
    lead.receive(Started(EX), src="w1", now=1.5, wall_ns=T0 + 2)
    assert proposals(lead.drain()) == [ExecutionStarted(EX)]
    lead.handle_timer(2.5, T0 + 3)
    assert lead.drain() == []  # running: no more dispatches


@pytest.mark.parametrize("via", ["w1", "s2"])
def test_heartbeats_renew_the_lease_and_its_expiry_makes_the_run_lost(via: str) -> None:
    """From the worker itself, or forwarded by another server (a worker that
    cannot reach the leader reports through one): the lease follows the node
    a heartbeat names, not its sender."""
    sm, _ = claimed_state()
    lead = ExecutionLeader("s1", 1, CFG, now=0.0)
    lead.load(sm, 0.0, wall_ns=T0)
    lead.receive(Started(EX), src=via, now=0.1, wall_ns=T0 + 1)
    lead.drain()
    lead.receive(Heartbeat("w1", (KEY,)), src=via, now=4.0, wall_ns=T0 + 2)
    # Naming another node renews nothing of w1's.
    lead.receive(Heartbeat("w2", (KEY,)), src="w2", now=8.0, wall_ns=T0 + 2)
    lead.handle_timer(8.9, T0 + 3)
    assert lead.drain() == []  # renewed at 4.0: expires at 9.0
    lead.handle_timer(9.0, T0 + 4)
    out = lead.drain()
    (finished,) = proposals(out)
    assert isinstance(finished, ExecutionFinished)
    assert finished.execution.id == EX.id and finished.execution.status == "lost"
    assert "no heartbeat" in finished.execution.output
    assert ("w1", Cancel(KEY)) in sends(out)
    assert lead.next_deadline() is None


def test_a_worker_reports_where_it_is_told_even_for_the_dispatchers_runs() -> None:
    """While the agent detours its reports through s3, what a dispatch from the
    leader (s1, unreachable from here) asks for is answered through s3 too."""
    w = ExecutionWorker("w1", CFG, now=0.0)
    w.receive(dispatch(), src="s1", now=0.0, wall_ns=T0 + 5)
    assert w.dispatcher == w.leader == "s1"
    ((_, started),) = sends(w.drain())
    w.set_leader("s3", 0.5)  # the agent's detour: re-sends what is outstanding to s3
    assert sends(w.drain()) == [("s3", started)]
    w.receive(dispatch(), src="s1", now=1.0, wall_ns=T0 + 6)  # re-sent, same term
    assert sends(w.drain()) == [("s3", started)]
    w.receive(dispatch(key=RunKey("job", T0 + 1, "w1", 1)), src="s1", now=1.1, wall_ns=T0 + 7)
    ((dst, other),) = sends(w.drain())
    assert dst == "s3" and isinstance(other, Started)
    assert w.dispatcher == "s1" and w.leader == "s3"
    # The leader's dispatches now come through s2 (it relays): that is the way back.
    w.receive(dispatch(key=RunKey("job", T0 + 2, "w1", 1)), src="s2", now=1.15, wall_ns=T0 + 7)
    assert w.dispatcher == "s2"
    w.receive(dispatch(key=RunKey("job", T0 + 3, "w1", 1), term=0), src="s9", now=1.16, wall_ns=T0)
    assert w.dispatcher == "s2"  # not a deposed leader's
    w.drain()
    w.finished(KEY, success=True, output="", wall_ns=T0 + 8, now=1.2)
    ((dst, msg),) = sends(w.drain())
    assert dst == "s3" and isinstance(msg, Result)


def test_a_failed_member_loses_its_runs_and_the_state_schedules_the_retry() -> None:
    sm, _ = claimed_state(("w1", "w2"), retries=1)
    lead = ExecutionLeader("s1", 1, CFG, now=0.0)
    lead.load(sm, 0.0, wall_ns=T0)
    lead.drain()
    lead.member_failed("w2", 0.5, T0 + 9)
    (lost,) = proposals(lead.drain())
    assert isinstance(lost, ExecutionFinished)
    res = sm.apply(3, encode_command(lost))
    assert res.ok and any(type(e).__name__ == "RetryScheduled" for e in res.events)


def test_a_retry_for_a_gone_node_is_lost_at_once_and_dispatched_once_it_is_back() -> None:
    """Dkron fails a retry at once with "retry node is gone"; waiting 30 s helps nobody."""
    sm, _ = claimed_state(retries=2)
    lead = ExecutionLeader("s1", 1, CFG, now=0.0)
    lead.load(sm, 0.0, wall_ns=T0)
    lead.drain()
    lead.member_failed("w1", 0.5, T0 + 1)
    (lost,) = proposals(lead.drain())
    assert isinstance(lost, ExecutionFinished)
    assert sm.apply(3, encode_command(lost)).ok
    retry = ClaimSlot("job", T0, 1, "retry", T0, ("w1",), 2)
    lead.observe(retry, sm.apply(4, encode_command(retry)), sm, 1.0, wall_ns=T0)
    assert sends(lead.drain()) == []  # nothing is sent to a gone node
    assert lead.next_deadline() == 1.0
    lead.handle_timer(1.0, T0 + 2)
    (gone,) = proposals(lead.drain())
    assert isinstance(gone, ExecutionFinished)
    assert gone.execution.attempt == 2 and gone.execution.status == "lost"
    assert gone.execution.output == LOST_GONE.format(node="w1")
    assert sm.apply(5, encode_command(gone)).ok
    # Back again: the last attempt is dispatched as usual.
    lead.member_alive("w1")
    last = ClaimSlot("job", T0, 1, "retry", T0, ("w1",), 3)
    lead.observe(last, sm.apply(6, encode_command(last)), sm, 2.0, wall_ns=T0)
    ((dst, msg),) = sends(lead.drain())
    assert dst == "w1" and isinstance(msg, Dispatch) and msg.key.attempt == 3


def test_a_new_leader_knows_the_gone_nodes_from_its_members() -> None:
    sm, _ = claimed_state(("w1", "w2"))
    lead = ExecutionLeader("s1", 1, CFG, now=0.0, gone=["w2"])
    lead.load(sm, 0.0, wall_ns=T0)
    assert [dst for dst, _ in sends(lead.drain())] == ["w1"]
    lead.handle_timer(0.0, T0 + 1)
    (lost,) = proposals(lead.drain())
    assert isinstance(lost, ExecutionFinished) and lost.execution.node_name == "w2"
    assert "is gone" in lost.execution.output


def test_never_started_runs_are_lost_after_the_dispatch_deadline() -> None:
    sm, _ = claimed_state()
    lead = ExecutionLeader("s1", 1, CFG, now=0.0)
    lead.load(sm, 0.0, wall_ns=T0)
    lead.drain()
    lead.handle_timer(10.0, T0 + 10)
    (lost,) = proposals(lead.drain())
    assert isinstance(lost, ExecutionFinished)
    assert lost.execution.output == (
        "lost: worker w1 did not report starting the execution within 10 s"
    )
    assert sm.apply(3, encode_command(lost)).ok
    assert sm.in_flight("job") == []


def test_a_dispatch_past_its_start_by_time_is_refused_not_started() -> None:
    """A stalled connection delivers its backlog when the path heals, minutes
    late: a run the leader has meanwhile recorded as lost must not start then."""
    w = ExecutionWorker("w1", CFG, now=0.0)
    w.receive(dispatch(start_by=T0 + 20), src="s1", now=0.0, wall_ns=T0 + 21)
    out = w.drain()
    assert not [a for a in out if isinstance(a, StartRun)]
    assert sends(out) == [("s1", Refused(1, KEY, "expired"))]
    assert w.running() == []
    # Up to its start-by time, the same dispatch starts the run.
    w.receive(dispatch(start_by=T0 + 20), src="s1", now=0.1, wall_ns=T0 + 20)
    assert [type(a) for a in w.drain()] == [StartRun, Send]
    assert w.running() == [KEY]


def test_the_start_by_time_is_judged_on_the_leaders_clock() -> None:
    """A worker whose clock runs a minute ahead (as the RPC hello measured it)
    starts a fresh dispatch, and still refuses one held back past its time."""
    minute = 60 * 10**9
    w = ExecutionWorker("w1", CFG, now=0.0)
    w.receive(dispatch(start_by=T0 + 20), src="s1", now=0.0, wall_ns=T0 + minute, ahead_ns=minute)
    assert [type(a) for a in w.drain()] == [StartRun, Send]
    late = RunKey("job", T0 + 1, "w1", 1)
    w.receive(
        dispatch(key=late, start_by=T0 + 20),
        src="s1",
        now=1.0,
        wall_ns=T0 + 21 + minute,
        ahead_ns=minute,
    )
    assert sends(w.drain()) == [("s1", Refused(1, late, "expired"))]


def test_a_run_must_start_before_the_leader_gives_up_on_it_less_the_clock_skew() -> None:
    sm, _ = claimed_state()
    lead = ExecutionLeader("s1", 1, CFG, now=0.0)
    lead.load(sm, 0.0, wall_ns=T0)
    ((_, msg),) = sends(lead.drain())
    assert isinstance(msg, Dispatch)
    assert msg.start_by == T0 + int((CFG.dispatch_timeout - CFG.clock_skew) * 1e9)
    lead.handle_timer(1.0, T0 + 10**9)
    ((_, again),) = sends(lead.drain())
    assert isinstance(again, Dispatch) and again.start_by == msg.start_by  # re-sent as it was
    # A refusal of an earlier leader's dispatch says nothing about this leader's.
    lead.receive(Refused(0, KEY, "expired"), src="w1", now=1.5, wall_ns=T0 + 2)
    assert proposals(lead.drain()) == []
    # The worker will not start it: lost now, not at the deadline.
    lead.receive(Refused(1, KEY, "expired"), src="w1", now=1.6, wall_ns=T0 + 3)
    (lost,) = proposals(lead.drain())
    assert isinstance(lost, ExecutionFinished) and lost.execution.status == "lost"
    assert lost.execution.output == LOST_EXPIRED.format(node="w1")
    assert lead.next_deadline() is None
    assert sm.apply(3, encode_command(lost)).ok
    assert sm.in_flight("job") == []


def test_results_are_committed_once_and_acknowledged_even_when_duplicated() -> None:
    sm, index = claimed_state()
    lead = ExecutionLeader("s1", 1, CFG, now=0.0)
    lead.load(sm, 0.0, wall_ns=T0)
    lead.receive(Started(EX), src="w1", now=0.1, wall_ns=T0 + 1)
    for cmd in proposals(lead.drain()):
        index += 1
        assert isinstance(cmd, ExecutionStarted)
        lead.observe(cmd, sm.apply(index, encode_command(cmd)), sm, 0.1, wall_ns=T0)
    done = Execution(
        "job", EX.started_at, "w1", finished_at=T0 + 99, success=True, group=T0, attempt=1
    )
    for _ in range(3):  # the worker re-sends; every copy is proposed, one counts
        lead.receive(Result(done), src="w1", now=0.2, wall_ns=T0 + 2)
        for cmd in proposals(lead.drain()):
            index += 1
            assert isinstance(cmd, ExecutionFinished)
            lead.observe(cmd, sm.apply(index, encode_command(cmd)), sm, 0.2, wall_ns=T0)
        assert ("w1", ResultAck(KEY)) in sends(lead.drain())
    job = sm.get_job("job")
    assert job is not None and job.success_count == 1


def test_cancel_before_start_commits_a_cancelled_record() -> None:
    sm, _ = claimed_state()
    lead = ExecutionLeader("s1", 1, CFG, now=0.0)
    lead.load(sm, 0.0, wall_ns=T0)
    lead.drain()
    assert lead.cancel(KEY, 0.5, T0 + 5)
    out = lead.drain()
    (cmd,) = proposals(out)
    assert isinstance(cmd, ExecutionFinished) and cmd.execution.status == "cancelled"
    assert ("w1", Cancel(KEY)) in sends(out)
    assert not lead.cancel(KEY, 0.6, T0 + 6)


def test_live_output_is_deduplicated_and_bounded() -> None:
    sm, _ = claimed_state()
    small = ExecutionConfig(live_buffer_bytes=10)
    lead = ExecutionLeader("s1", 1, small, now=0.0)
    lead.load(sm, 0.0, wall_ns=T0)
    lead.receive(Started(EX), src="w1", now=0.1, wall_ns=T0 + 1)
    lead.drain()
    for seq, chunk in [(1, b"aaaa"), (2, b"bbbb"), (2, b"bbbb"), (3, b"cccc")]:
        lead.receive(Output(KEY, seq, chunk), src="w1", now=0.2, wall_ns=T0 + 2)
    live = [a for a in lead.drain() if isinstance(a, LiveOutput)]
    assert [a.seq for a in live] == [1, 2, 3]
    assert lead.live_output(KEY) == [(2, b"bbbb"), (3, b"cccc")]


def test_a_restarted_worker_reports_interrupted_runs_lost_and_never_reruns_them() -> None:
    w = ExecutionWorker("w1", CFG, now=0.0, wall_ns=T0 + 100, interrupted=[EX])
    w.receive(dispatch(term=2), src="s2", now=0.1, wall_ns=T0 + 101)
    out = w.drain()
    assert not any(isinstance(a, StartRun) for a in out)
    results = [m for _, m in sends(out) if isinstance(m, Result)]
    assert results and all(r.execution.id == EX.id for r in results)
    assert results[0].execution.status == "lost" and not results[0].execution.success
    w.receive(ResultAck(KEY), src="s2", now=0.2, wall_ns=T0 + 102)
    assert ForgetRun(key=KEY) in w.drain()


# -- the split target selection and the batch paths agree with the plain ones ----------

_tag_values = st.sampled_from(["web", "db", "web:1", "web:2", "db:0", "x:y"])
_member_views = st.lists(
    st.builds(
        MemberView,
        name=st.sampled_from(["a", "b", "c", "d", "e"]),
        alive=st.booleans(),
        tags=st.dictionaries(
            st.sampled_from(["role", "region"]), st.sampled_from(["web", "db", "global", "eu"])
        ),
    ),
    max_size=6,
    unique_by=lambda m: m.name,
)


@given(
    st.none() | st.dictionaries(st.sampled_from(["role", "dc"]), _tag_values, max_size=2),
    _member_views,
    st.integers(0, 2**32),
)
def test_qualifying_then_choose_is_select_targets(
    tags: dict[str, str] | None, views: list[MemberView], seed: int
) -> None:
    whole = select_targets(tags, views, region="global", rng=random.Random(seed))
    qualifying, count = qualifying_targets(tags, views, region="global")
    assert choose_targets(qualifying, count, rng=random.Random(seed)) == whole
    assert list(qualifying) == sorted(qualifying)
    assert set(whole) <= set(qualifying)


def test_a_batch_is_observed_like_its_elements_one_by_one() -> None:
    def run(batched: bool) -> Sequence[object]:
        sm, index = claimed_state(("w1", "w2"))
        lead = ExecutionLeader("s1", 1, CFG, now=0.0)
        lead.load(sm, 0.0, wall_ns=T0)
        for node in ("w1", "w2"):
            ex = Execution("job", T0 + 1, node, group=T0, attempt=1)
            lead.receive(Started(ex), src=node, now=0.1, wall_ns=T0 + 1)
            done = Execution(
                "job", T0 + 1, node, finished_at=T0 + 9, success=True, group=T0, attempt=1
            )
            lead.receive(Result(done), src=node, now=0.2, wall_ns=T0 + 2)
        actions = lead.drain()
        cmds = proposals(actions) if batched else [c for p in proposals(actions) for c in each(p)]
        for cmd in cmds:
            index += 1
            lead.observe(cmd, sm.apply(index, encode_command(cmd)), sm, 0.3, wall_ns=T0)  # type: ignore[arg-type]
        return lead.drain()

    assert run(batched=True) == run(batched=False)
    assert sends(run(batched=True)) == [("w1", ResultAck(KEY)), ("w2", ResultAck(KEY2))]


def each(cmd: object) -> list[object]:
    if isinstance(cmd, ExecutionsStarted):
        return [ExecutionStarted(ex) for ex in cmd.executions]
    if isinstance(cmd, ExecutionsFinished):
        return [ExecutionFinished(ex) for ex in cmd.executions]
    return [cmd]


def test_a_finished_run_reports_its_record_with_only_the_result_fields_changed() -> None:
    w = ExecutionWorker("w1", CFG, now=0.0)
    w.receive(dispatch(), src="s1", now=0.0, wall_ns=T0 + 5)
    (start, _) = w.drain()
    assert isinstance(start, StartRun)
    w.finished(KEY, success=False, output="boom", wall_ns=T0 + 50, now=0.2)
    ((_, res),) = sends(w.drain())
    assert isinstance(res, Result)
    assert res.execution == dataclasses.replace(
        start.execution, finished_at=T0 + 50, success=False, output="boom", status=""
    )


# -- records filled slot by slot ----------------------------------------------------------

_TIMES = st.one_of(
    st.integers(MIN_TIME_NS - 2, MIN_TIME_NS + 2),
    st.integers(MAX_TIME_NS - 2, MAX_TIME_NS + 2),
    st.integers(MIN_TIME_NS, MAX_TIME_NS),
)
_TRIGGERS = st.sampled_from([*sorted(TRIGGERS), "bogus"])


def _same_record(fast: object, plain: object) -> None:
    assert type(fast) is type(plain)
    assert fast == plain
    assert repr(fast) == repr(plain)
    try:
        expected = hash(plain)
    except TypeError:  # a job's mappings
        with pytest.raises(TypeError):
            hash(fast)
    else:
        assert hash(fast) == expected
    if dataclasses.is_dataclass(plain):
        with pytest.raises(dataclasses.FrozenInstanceError):
            setattr(fast, dataclasses.fields(plain)[0].name, None)


def _outcome(build: Callable[[], object]) -> object:
    try:
        return build()
    except (TypeError, ValueError) as exc:
        return (type(exc), str(exc))


@given(
    job=st.text(max_size=6),
    group=_TIMES,
    node=st.text(max_size=6),
    attempt=st.integers(-2, 5),
    started_at=_TIMES,
    scheduled=st.none() | _TIMES,
    trigger=_TRIGGERS,
    term=st.integers(0, 9),
    data=st.binary(min_size=1, max_size=8),
)
def test_records_built_slot_by_slot_are_the_constructors_frozen_records(  # noqa: PLR0917
    job: str,
    group: int,
    node: str,
    attempt: int,
    started_at: int,
    scheduled: int | None,
    trigger: str,
    term: int,
    data: bytes,
) -> None:
    """The messages, actions and executions the protocol fills through plain
    twins are what their constructors build (equal, of the exact class,
    hashing alike, still frozen), and a dispatch the constructor refuses is
    refused with the same error."""
    from dkron.proto_sansio import execution as m

    key = RunKey(job, group, node, attempt)
    j = Job(job or "j", executor_config={"duration": "1"})
    _same_record(m._run_key((job, group, node, attempt)), key)
    made = _outcome(lambda: m._new_execution(key, started_at, node, scheduled, trigger))
    plain = _outcome(
        lambda: Execution(
            job,
            started_at,
            node,
            group=group,
            attempt=attempt,
            scheduled_time=scheduled,
            trigger=trigger,
        )
    )
    if not isinstance(plain, Execution):
        assert made == plain
        return
    assert isinstance(made, Execution)
    _same_record(made, plain)
    ex = plain
    fin = dataclasses.replace(ex, finished_at=ex.started_at, success=True, output="ok")
    built: list[tuple[object, object]] = [
        (m._send_action(node, ResultAck(key)), Send(dst=node, msg=ResultAck(key))),
        (m._propose_action(ExecutionStarted(ex)), Propose(command=ExecutionStarted(ex))),
        (m._live_output(key, 1, data), LiveOutput(key=key, seq=1, data=data)),
        (m._start_run(j, ex), StartRun(job=j, execution=ex)),
        (m._forget_run(key), ForgetRun(key=key)),
        (
            m._dispatch_msg(term, key, j, scheduled, trigger, started_at),
            Dispatch(term, key, j, scheduled, trigger, started_at),
        ),
        (m._started_msg(ex), Started(ex)),
        (m._result_msg(fin), Result(fin)),
        (m._result_ack(key), ResultAck(key)),
        (m._output_msg(key, 1 + term, data), Output(key, 1 + term, data)),
        (one_started(ex), ExecutionStarted(ex)),
        (one_finished(fin), ExecutionFinished(fin)),
    ]
    for fast, slow in built:
        _same_record(fast, slow)


@given(
    wall_ns=_TIMES,
    success=st.booleans(),
    cancelled=st.booleans(),
    output=st.text(max_size=4),
)
def test_a_finished_result_is_the_constructors_record(
    wall_ns: int, success: bool, cancelled: bool, output: str
) -> None:
    """The worker's result is built slot by slot only when its finish time is
    one Execution accepts; past year 9999 the constructor refuses it as before."""
    w = ExecutionWorker("w1", CFG, now=0.0)
    w.receive(dispatch(), src="s1", now=0.0, wall_ns=T0)
    (start,) = [a for a in w.drain() if isinstance(a, StartRun)]
    ex = start.execution
    if cancelled:
        w.receive(Cancel(KEY), src="s1", now=0.0, wall_ns=T0)
    expected = _outcome(
        lambda: Execution(
            ex.job_name,
            ex.started_at,
            ex.node_name,
            max(wall_ns, ex.started_at),
            success and not cancelled,
            output,
            ex.group,
            ex.attempt,
            ex.scheduled_time,
            ex.trigger,
            "cancelled" if cancelled else "",
        )
    )
    got = _outcome(
        lambda: w.finished(KEY, success=success, output=output, wall_ns=wall_ns, now=1.0)
    )
    if not isinstance(expected, Execution):
        assert got == expected
        return
    (result,) = [a.msg for a in w.drain() if isinstance(a, Send) and isinstance(a.msg, Result)]
    _same_record(result.execution, expected)


@given(
    ops=st.lists(
        st.one_of(
            st.tuples(st.just("push"), st.sampled_from([0.0, -0.0, 0.5, 1.0, 1.5, 2.0, 7.25])),
            st.tuples(st.just("pop"), st.just(0.0)),
        ),
        max_size=60,
    )
)
def test_leader_timers_pop_in_the_order_of_a_heap_of_time_and_push_count(
    ops: list[tuple[str, float]],
) -> None:
    """The leader's timer queue keeps keys of equal times in a FIFO behind one
    heap entry; the order must be that of the heap of (time, count, key) it replaced."""
    timers = _Timers()
    reference: list[tuple[float, int, RunKey]] = []
    for count, (op, at) in enumerate(ops):
        if op == "push":
            key = RunKey("j", count, "n", 1)
            timers.push(at, key)
            heapq.heappush(reference, (at, count, key))
        elif reference:
            assert timers.first_time() == reference[0][0]
            assert timers.first_key() == reference[0][2]
            assert timers.pop() == heapq.heappop(reference)[2]
        assert len(timers) == len(reference)
        assert timers.first_time() == (reference[0][0] if reference else None)


@pytest.mark.parametrize(
    "field",
    ["heartbeat_interval", "lease_timeout", "dispatch_retry", "dispatch_timeout", "clock_skew"],
)
@pytest.mark.parametrize("value", [math.nan, math.inf])
def test_timings_must_be_finite(field: str, value: float) -> None:
    with pytest.raises(ValueError, match="finite"):
        changes: dict[str, Any] = {field: value}
        dataclasses.replace(ExecutionConfig(), **changes)
    with pytest.raises(ValueError, match="finite"):
        ExecutionConfig(result_retry=value)


@pytest.mark.parametrize("skew", [-1.0, 10.0, 11.0])
def test_the_clock_skew_must_leave_time_to_start(skew: float) -> None:
    with pytest.raises(ValueError, match="clock_skew"):
        ExecutionConfig(dispatch_timeout=10.0, clock_skew=skew)
