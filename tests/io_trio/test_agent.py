"""The agent in-process: one real server on loopback, real storage, real processes.

A job ``@every 1s`` needs real seconds to fire, so these tests wait on outcomes
with generous ``fail_after`` deadlines rather than asserting timings.
"""

from __future__ import annotations

import pathlib
from typing import Any

import trio
import trio.lowlevel

from dkron.io_trio.agent import Agent, http_listen_addr
from dkron.io_trio.live import Options, call, wait_leader


async def test_jobs_run_with_the_run_context_and_manual_runs_work(tmp_path: pathlib.Path) -> None:
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            agent = await nursery.start(Agent(Options(data_dir=str(tmp_path))).run)
            port = agent.http_port
            assert port is not None
            await wait_leader(port)
            job = {
                "name": "ctx",
                "schedule": "@every 1s",
                "executor": "shell",
                "executor_config": {
                    "command": "echo $DKRON_JOB_NAME $DKRON_TRIGGER $DKRON_ATTEMPT",
                    "shell": "true",
                },
            }
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
            nursery.cancel_scope.cancel()


async def test_a_failing_job_is_retried_per_its_policy(tmp_path: pathlib.Path) -> None:
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            agent = await nursery.start(Agent(Options(data_dir=str(tmp_path))).run)
            port = agent.http_port
            assert port is not None
            await wait_leader(port)
            job = {
                "name": "flaky",
                "schedule": "@manually",
                "retries": 2,
                "executor": "shell",
                "executor_config": {"command": "exit 3", "shell": "true"},
            }
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
            nursery.cancel_scope.cancel()


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
