"""The agent in-process: one real server on loopback, real storage, real processes.

A job ``@every 1s`` needs real seconds to fire, so these tests wait on outcomes
with generous ``fail_after`` deadlines rather than asserting timings.
"""

from __future__ import annotations

import logging
import math
import os
import pathlib
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import timedelta
from typing import Any

import cbor2
import pytest
import trio
import trio.lowlevel
from hypothesis import given
from hypothesis import strategies as st

from dkron.io_trio import agent as agent_mod
from dkron.io_trio.agent import (
    OUTPUT_IN_INBOX,
    Agent,
    _tail,
    busy_output_limit,
    http_listen_addr,
)
from dkron.io_trio.executors.base import MAX_OUTPUT
from dkron.io_trio.forward import FORWARD_CODEC, Reply
from dkron.io_trio.live import Options, call, wait_leader
from dkron.io_trio.rpc import RpcConfig
from dkron.testing.jobs import shell_job


@asynccontextmanager
async def serving(data_dir: pathlib.Path) -> AsyncIterator[tuple[Agent, int]]:
    """One server on loopback, leading, with its API port; stopped after the block."""
    async with trio.open_nursery() as nursery:
        agent = await nursery.start(Agent(Options(data_dir=str(data_dir))).run)
        port = agent.http_port
        assert port is not None
        await wait_leader(port)
        yield agent, port
        nursery.cancel_scope.cancel()


async def test_jobs_run_with_the_run_context_and_manual_runs_work(tmp_path: pathlib.Path) -> None:
    with trio.fail_after(60):
        async with serving(tmp_path) as (_agent, port):
            job = shell_job(
                "ctx", "echo $DKRON_JOB_NAME $DKRON_TRIGGER $DKRON_ATTEMPT", schedule="@every 1s"
            )
            status, body = await call(port, "POST", "/v1/jobs", job)
            assert status == 201, body
            runs: list[dict[str, Any]] = []
            while len(runs) < 2:
                await trio.sleep(0.2)
                runs = [
                    e
                    for e in (await call(port, "GET", "/v1/jobs/ctx/executions"))[1]
                    if e["success"]
                ]
            assert {e["output"] for e in runs} == {"ctx schedule 1\n"}
            # A manual run goes through the same claim, dispatch and result path.
            status, _ = await call(port, "POST", "/v1/jobs/ctx/run")
            assert status == 200
            manual: list[dict[str, Any]] = []
            while not manual:
                await trio.sleep(0.2)
                manual = [
                    e
                    for e in (await call(port, "GET", "/v1/jobs/ctx/executions"))[1]
                    if e["output"] == "ctx manual 1\n"
                ]


async def test_a_failing_job_is_retried_per_its_policy(tmp_path: pathlib.Path) -> None:
    with trio.fail_after(60):
        async with serving(tmp_path) as (_agent, port):
            job = shell_job("flaky", "exit 3", retries=2)
            assert (await call(port, "POST", "/v1/jobs", job))[0] == 201
            assert (await call(port, "POST", "/v1/jobs/flaky/run"))[0] == 200
            attempts: list[int] = []
            while len(attempts) < 3:
                await trio.sleep(0.2)
                execs = (await call(port, "GET", "/v1/jobs/flaky/executions"))[1]
                attempts = sorted(e["attempt"] for e in execs if e["finished_at"][:4] != "0001")
            assert attempts == [1, 2, 3]
            assert all(not e["success"] for e in execs)
            stored = (await call(port, "GET", "/v1/jobs/flaky"))[1]
            assert stored["error_count"] == 3 and stored["status"] == "failed"


async def test_the_leader_says_once_when_a_job_matches_no_node_and_when_one_matches_again(
    tmp_path: pathlib.Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Dkron logs "no target nodes found" for every run; a job whose tags match
    nothing gets one warning here, naming the tags, and one line when it is fixed."""
    caplog.set_level(logging.INFO, logger="dkron.agent")
    job = shell_job("lonely", "echo ran", schedule="@every 1s", tags={"pool": "nowhere"})

    def lines(text: str) -> list[str]:
        return [r.getMessage() for r in caplog.records if text in r.getMessage()]

    with trio.fail_after(60):
        async with serving(tmp_path) as (agent, port):
            assert (await call(port, "POST", "/v1/jobs", job))[0] == 201
            await _until(lambda: bool(lines("job lonely: no alive node")))
            await trio.sleep(2.5)  # more slots find no node: still one warning
            [warning] = lines("job lonely: no alive node")
            assert 'region global matches its tags {"pool": "nowhere"}' in warning
            assert (await call(port, "PUT", "/v1/jobs/lonely", {**job, "tags": {}}))[0] == 201
            await _until(lambda: bool(lines("job lonely: a node matches its tags again")))
            runs: list[dict[str, Any]] = []
            while not runs:
                await trio.sleep(0.1)
                runs = (await call(port, "GET", "/v1/jobs/lonely/executions"))[1]
            # A whole pool gone at once: one line for all its jobs, not one each.
            pool = {f"j{i}": 0 for i in range(7)}
            agent._report_targetless(pool, timedelta(seconds=10))
            assert lines("7 jobs (j0, j1, j2, j3, j4, ...): no alive node in region global")
            assert not lines("job j0")


async def test_a_job_without_a_usable_executor_fails_with_dkrons_texts(
    tmp_path: pathlib.Path,
) -> None:
    """An empty ``executor`` and an unknown one are different mistakes, and
    Dkron tells them apart; clients grep for these texts."""
    with trio.fail_after(60):
        async with serving(tmp_path) as (_agent, port):
            for name, executor in (("none", ""), ("docker", "docker")):
                job = {"name": name, "schedule": "@manually", "executor": executor}
                assert (await call(port, "POST", "/v1/jobs", job))[0] == 201
                assert (await call(port, "POST", f"/v1/jobs/{name}/run"))[0] == 200
            outputs: dict[str, str] = {}
            while len(outputs) < 2:
                await trio.sleep(0.2)
                for name in ("none", "docker"):
                    for e in (await call(port, "GET", f"/v1/jobs/{name}/executions"))[1]:
                        if e["finished_at"][:4] != "0001":
                            assert not e["success"]
                            outputs[name] = e["output"]
            assert outputs == {
                "none": "grpc_agent: No executor defined, nothing to do",
                "docker": "grpc_agent: Specified executor is not present",
            }


def test_http_addr_forms() -> None:
    assert http_listen_addr(":8080") == (None, 8080)
    assert http_listen_addr("") == (None, 8080)
    assert http_listen_addr("127.0.0.1:9000") == ("127.0.0.1", 9000)


async def test_a_write_made_the_moment_leadership_starts_waits_for_the_barrier(
    tmp_path: pathlib.Path,
) -> None:
    """Elected but not yet caught up (its no-op not applied): the write must wait, not hang."""
    from dkron.model import job_from_json
    from dkron.state import UpsertJob

    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            agent = Agent(Options(data_dir=str(tmp_path)))
            nursery.start_soon(agent.run)
            while agent.node is None or agent.node.leader_id != agent.name:
                await (
                    trio.lowlevel.checkpoint()
                )  # catch the first moment the node calls itself leader
            assert agent.planner is None, "the barrier was applied before we could write"
            job = job_from_json({"name": "early", "schedule": "@manually", "executor": "shell"})
            with trio.fail_after(5):
                result = await agent.propose(UpsertJob(job))
            assert result.ok and agent.state.get_job("early") is not None
            nursery.cancel_scope.cancel()


# -- claims made ahead of their slot -------------------------------------------------


async def _upsert(agent: Agent, job: dict[str, Any]) -> None:
    from dkron.model import job_from_json
    from dkron.state import UpsertJob

    result = await agent.propose(UpsertJob(job_from_json(job)))
    assert result.ok, result


async def _until(ready: Callable[[], bool]) -> None:
    """Poll the agent's own state: nothing announces these moments."""
    while True:
        if ready():
            return
        await trio.sleep(0.01)


def _sched_ns(text: str) -> int:
    from datetime import datetime

    from dkron.proto_sansio.planner import to_ns

    return to_ns(datetime.fromisoformat(text.replace("Z", "+00:00")))


async def test_slots_claimed_ahead_still_start_at_their_slot(tmp_path: pathlib.Path) -> None:
    """The claim (and its dispatch) comes half a second early; the process must not."""
    out = tmp_path / "runs.txt"
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            agent = Agent(Options(data_dir=str(tmp_path / "data")))
            agent.claim_lookahead = timedelta(milliseconds=500)
            nursery.start_soon(agent.run)
            await _until(agent.is_leader)
            command = f'echo "$DKRON_SCHEDULED_TIME $(date +%s%N)" >> {out}'
            job = shell_job("ahead", command, schedule="@every 1s")
            await _upsert(agent, job)
            held_seen = False
            lines: list[str] = []
            while len(lines) < 3:
                held_seen = held_seen or bool(agent._early)
                await trio.sleep(0.02)
                lines = out.read_text().splitlines() if out.exists() else []
            nursery.cancel_scope.cancel()
    assert held_seen, "no dispatch arrived ahead of its slot"
    for line in lines:
        sched, began = line.split()
        assert int(began) >= _sched_ns(sched), line


async def test_a_crash_while_a_claimed_slot_waits_for_its_time_runs_it_once_later(
    tmp_path: pathlib.Path,
) -> None:
    """Held dispatches are not in the run journal: after a crash the slot is still
    claimed-but-not-started, and the next leader dispatches it; it runs, once."""
    from dkron.io_trio.journal import RunJournal

    data = str(tmp_path / "data")
    lookahead = timedelta(seconds=2)
    job = shell_job("held", "echo ran", schedule="@every 4s")
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            agent = Agent(Options(data_dir=data))
            agent.claim_lookahead = lookahead
            nursery.start_soon(agent.run)
            await _until(agent.is_leader)
            await _upsert(agent, job)
            await _until(lambda: bool(agent._early))
            group = agent._early[0][3].key.group
            assert [e for e in agent.state.executions("held") if e.group == group] == []
            nursery.cancel_scope.cancel()  # the crash: nothing more reaches the disk

        assert await trio.to_thread.run_sync(RunJournal(tmp_path / "data" / "runs").load) == []

        async with trio.open_nursery() as nursery:
            again = Agent(Options(data_dir=data))
            again.claim_lookahead = lookahead
            nursery.start_soon(again.run)
            await _until(again.is_leader)
            runs: list[Any] = []
            while not runs or runs[0].finished_at is None:
                await trio.sleep(0.05)
                runs = [e for e in again.state.executions("held") if e.group == group]
            nursery.cancel_scope.cancel()
    assert len(runs) == 1
    ex = runs[0]
    assert ex.success and ex.output == "ran\n" and ex.trigger == "schedule"
    assert ex.scheduled_time == group and ex.started_at >= group


async def test_a_cancelled_run_is_killed_and_keeps_the_output_it_printed(
    tmp_path: pathlib.Path,
) -> None:
    """Cancelling through the API stops the process; the record says why and
    shows how far the run got (the executor itself returns nothing when cancelled)."""
    pid_file = tmp_path / "pid"
    job = shell_job("hung", f"echo $$ > {pid_file}; echo got this far; exec sleep 600")
    with trio.fail_after(60):
        async with serving(tmp_path / "data") as (_agent, port):
            assert (await call(port, "POST", "/v1/jobs", job))[0] == 201
            assert (await call(port, "POST", "/v1/jobs/hung/run"))[0] == 200
            busy: list[dict[str, Any]] = []
            while not (busy and "got this far" in busy[0]["output"]):
                await trio.sleep(0.1)
                busy = (await call(port, "GET", "/v1/busy"))[1]
            pid = int(pid_file.read_text())
            status, body = await call(
                port, "POST", f"/v1/jobs/hung/executions/{busy[0]['id']}/cancel"
            )
            assert status == 202, body
            done: dict[str, Any] = {}
            while done.get("finished_at", "0001")[:4] == "0001":
                await trio.sleep(0.1)
                done = (await call(port, "GET", f"/v1/jobs/hung/executions/{busy[0]['id']}"))[1]
    assert (done["status"], done["success"]) == ("cancelled", False)
    assert done["output"] == "cancelled\ngot this far\n"
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


async def test_a_run_cut_short_by_a_crash_is_committed_lost_and_the_leader_logs_why(
    tmp_path: pathlib.Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The worker's journal reports the run lost after the restart; the leader
    says so in one line with the reason, as Dkron logs a broken execution stream."""
    caplog.set_level(logging.WARNING, logger="dkron.agent")
    job = shell_job("cut", "exec sleep 600")
    with trio.fail_after(60):
        async with serving(tmp_path) as (agent, port):
            assert (await call(port, "POST", "/v1/jobs", job))[0] == 201
            assert (await call(port, "POST", "/v1/jobs/cut/run"))[0] == 200
            await _until(lambda: bool(agent.state.running_executions()))
        assert not [r for r in caplog.records if "job cut" in r.getMessage()]
        async with serving(tmp_path) as (agent, _port):
            await _until(lambda: any(e.status == "lost" for e in agent.state.executions("cut")))
    [ex] = agent.state.executions("cut")
    [line] = [r.getMessage() for r in caplog.records if "job cut" in r.getMessage()]
    assert line == (
        f"job cut: execution {ex.id} (attempt 1 on {ex.node_name}) "
        f"lost: worker {ex.node_name} restarted while the execution was running"
    )


def test_many_runs_lost_for_one_reason_are_logged_in_one_line(
    tmp_path: pathlib.Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A worker that dies with hundreds of runs must not flood the log."""
    from dkron.model import Execution, Job
    from dkron.state import (
        ClaimSlot,
        ExecutionsFinished,
        ExecutionsStarted,
        StateMachine,
        UpsertJob,
        encode_command,
    )

    caplog.set_level(logging.WARNING, logger="dkron.agent")
    sm = StateMachine()
    names = [f"j{i}" for i in range(7)]
    commands: list[Any] = [UpsertJob(Job(n, schedule="@manually", executor="shell")) for n in names]
    commands += [ClaimSlot(n, 10, 1, "manual", 10, ("w1",), 1) for n in names]
    started = tuple(Execution(n, 100, "w1", group=10, attempt=1) for n in names)
    reason = "lost: worker w1 was declared failed while running the execution"
    lost = tuple(
        Execution(n, 100, "w1", finished_at=200, output=reason, group=10, attempt=1, status="lost")
        for n in names
    )
    commands += [ExecutionsStarted(started), ExecutionsFinished(lost)]
    for index, command in enumerate(commands, 1):
        cmd, result = sm.apply_entry(index, encode_command(command))
    assert cmd is not None
    Agent(Options(data_dir=str(tmp_path)))._log_lost(cmd, result)
    assert [r.getMessage() for r in caplog.records] == [
        f"7 runs (jobs j0, j1, j2, j3, j4, ...) {reason}"
    ]


async def test_a_run_cancelled_while_it_waits_for_its_slot_never_starts(
    tmp_path: pathlib.Path,
) -> None:
    """The cancel reaches the worker before the slot: the held dispatch is dropped."""
    from dkron.proto_sansio.execution import RunKey

    out = tmp_path / "runs.txt"
    job = shell_job("stopped", f"echo $DKRON_SCHEDULED_TIME >> {out}", schedule="@every 2s")
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            agent = Agent(Options(data_dir=str(tmp_path / "data")))
            agent.claim_lookahead = timedelta(milliseconds=1500)
            nursery.start_soon(agent.run)
            await _until(agent.is_leader)
            await _upsert(agent, job)
            await _until(lambda: bool(agent._early))
            key: RunKey = agent._early[0][3].key
            assert await agent.cancel(key)
            # The next slot runs: the cancelled one's moment has passed by then.
            await _until(out.exists)
            await _until(
                lambda: any(
                    e.group != key.group and e.finished_at is not None
                    for e in agent.state.executions("stopped")
                )
            )
            nursery.cancel_scope.cancel()
    [cancelled] = [e for e in agent.state.executions("stopped") if e.group == key.group]
    assert cancelled.status == "cancelled" and not cancelled.success
    assert [_sched_ns(line) for line in out.read_text().split()] != []
    assert key.group not in [_sched_ns(line) for line in out.read_text().split()]


@given(
    chunks=st.lists(st.binary(max_size=40), max_size=12),
    limit=st.integers(min_value=0, max_value=200),
)
def test_busy_output_is_the_end_of_the_buffered_chunks(chunks: list[bytes], limit: int) -> None:
    numbered = [(i + 1, data) for i, data in enumerate(chunks)]
    assert _tail(numbered, limit) == (b"".join(chunks)[-limit:] if limit else b"")


async def run_to_the_end(port: int, job: str) -> dict[str, Any]:
    """Run ``job`` by hand and wait for the run's record to be finished."""
    assert (await call(port, "POST", f"/v1/jobs/{job}/run"))[0] == 200
    execs: list[dict[str, Any]] = []
    while not execs or execs[0]["finished_at"][:4] == "0001":
        await trio.sleep(0.1)
        execs = (await call(port, "GET", f"/v1/jobs/{job}/executions"))[1]
    return execs[0]


async def test_a_full_inbox_does_not_stop_the_node_messaging_itself(
    tmp_path: pathlib.Path,
) -> None:
    """Under load the core's inbox can be full (output, peers' messages) while the
    core, its only reader, sends execution messages to itself (the leader is also
    a worker). Those must not need room in the inbox: the agent once died of
    ``trio.WouldBlock`` there."""
    armed = False
    fills = 0
    with trio.fail_after(60):
        async with serving(tmp_path) as (agent, port):
            assert agent.storage is not None
            persist = agent.storage.persist

            async def persist_while_the_inbox_fills(records: Any) -> None:
                # The core waits for the disk; meanwhile its inbox fills up.
                nonlocal fills
                if armed:
                    fills += 1
                    while True:
                        try:
                            agent._send_in.send_nowait(("noop", None))
                        except trio.WouldBlock:
                            break
                await persist(records)

            agent.storage.persist = persist_while_the_inbox_fills  # type: ignore[method-assign]
            job = {
                "name": "j",
                "schedule": "@manually",
                "executor": "shell",
                "executor_config": {"command": "echo ok"},
            }
            assert (await call(port, "POST", "/v1/jobs", job))[0] == 201
            armed = True
            ran = await run_to_the_end(port, "j")
            assert fills >= 2 and ran["success"] and ran["output"] == "ok\n"


async def test_output_waits_for_room_instead_of_filling_the_inbox(
    tmp_path: pathlib.Path,
) -> None:
    """The inbox counts items, and an output chunk is up to 64 KiB: a job printing
    fast while the core waited for the disk could park 4,096 chunks (256 MiB)
    there. Chunks wait for room instead; the run's result is unaffected."""
    armed = False
    queued: list[int] = []
    with trio.fail_after(60):
        async with serving(tmp_path) as (agent, port):
            assert agent.storage is not None
            persist = agent.storage.persist

            async def slow_persist(records: Any) -> None:
                if armed:
                    await trio.sleep(0.3)  # a slow disk; the job keeps printing
                    queued.append(agent._recv_in.statistics().current_buffer_used)
                await persist(records)

            agent.storage.persist = slow_persist  # type: ignore[method-assign]
            job = shell_job("loud", "head -c 50000000 /dev/zero")
            assert (await call(port, "POST", "/v1/jobs", job))[0] == 201
            armed = True
            ran = await run_to_the_end(port, "loud")
    assert ran["success"] and len(ran["output"]) == MAX_OUTPUT
    assert queued and max(queued) <= OUTPUT_IN_INBOX + 8, queued


async def test_a_server_keeps_no_results_of_the_leaders_own_batches(
    tmp_path: pathlib.Path,
) -> None:
    """A server keeps recent results for forwarded writes to pick up. The leader's
    batches of claims, starts and results are not such writes, and each of their
    results holds a copy of every job it touched: keeping them cost about 165 MB
    on a server running 200 jobs a second."""
    with trio.fail_after(60):
        async with serving(tmp_path) as (agent, port):
            for i in range(20):
                job = {
                    "name": f"j{i}",
                    "schedule": "@every 1s",
                    "executor": "shell",
                    "executor_config": {"command": "true"},
                }
                assert (await call(port, "POST", "/v1/jobs", job))[0] == 201

            def runs(i: int) -> int:
                job = agent.state.get_job(f"j{i}")
                return 0 if job is None else job.success_count

            await _until(lambda: min(runs(i) for i in range(20)) >= 3)
            kept = list(agent._recent.values())
            assert len(kept) >= 20  # the creates, which a follower could have forwarded
            assert [r for r in kept if r.parts] == []


@given(running=st.integers(min_value=0, max_value=200_000))
def test_a_busy_answer_to_a_follower_fits_one_rpc_frame(running: int) -> None:
    """However many executions run, the leader's answer to a follower's
    ``RECENT_OUTPUT`` stays within the RPC frame limit (``rpc.send`` refuses
    a larger one)."""
    limit = busy_output_limit(running)
    assert 0 <= limit <= 4096
    worst = cbor2.dumps([b"\xff" * limit] * running)
    reply = FORWARD_CODEC.encode(Reply(1, True, "", 0, worst, "leader"))
    assert len(reply) <= RpcConfig().max_frame
    assert running == 0 or limit >= 40  # still a useful line each


def test_only_a_known_peer_down_long_enough_is_gone_round() -> None:
    """A peer whose RPC address gossip has not given yet is unknown, not
    unreachable: no relay, and no "cannot reach" in the log (seen when a new
    leader dispatched to a worker whose join it had not processed yet)."""
    assert not agent_mod._unreachable(math.inf)
    assert not agent_mod._unreachable(agent_mod.REPORT_DETOUR_AFTER - 0.1)
    assert agent_mod._unreachable(agent_mod.REPORT_DETOUR_AFTER)
