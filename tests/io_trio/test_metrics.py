"""``/metrics`` of a real agent: the series move when jobs run."""

from __future__ import annotations

import pathlib
import urllib.request

import trio
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from dkron.io_trio.agent import Agent
from dkron.io_trio.live import Options, call, wait_leader
from dkron.io_trio.metrics import AgentGauges, Metrics


def scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
        assert resp.headers["content-type"].startswith("text/plain")
        text = resp.read().decode()
    return samples(text)


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


async def test_metrics_follow_runs_requests_and_raft(tmp_path: pathlib.Path) -> None:
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            opts = Options(data_dir=str(tmp_path), enable_prometheus=True)
            agent = await nursery.start(Agent(opts).run)
            port = agent.http_port
            await wait_leader(port)
            ok = {
                "name": "ok",
                "schedule": "@every 1s",
                "executor": "shell",
                "executor_config": {"command": "true", "shell": "true"},
            }
            bad = {**ok, "name": "bad", "executor_config": {"command": "false", "shell": "true"}}
            assert (await call(port, "POST", "/v1/jobs", ok))[0] == 201
            assert (await call(port, "POST", "/v1/jobs", bad))[0] == 201

            async def grown() -> dict[tuple[str, tuple[tuple[str, str], ...]], float] | None:
                m = await trio.to_thread.run_sync(scrape, port)
                good = m.get(("dkron_job_executions_succeeded_total", (("job_name", "ok"),)), 0)
                failed = m.get(("dkron_job_executions_failed_total", (("job_name", "bad"),)), 0)
                return m if good >= 2 and failed >= 2 else None

            m = None
            while m is None:
                m = await grown()
                await trio.sleep(0.2)
            assert m[("dkron_executions_finished_total", (("status", "succeeded"),))] >= 2
            assert m[("dkron_executions_finished_total", (("status", "failed"),))] >= 2
            assert m[("dkron_scheduler_fires_total", (("trigger", "schedule"),))] >= 4
            assert m[("dkron_scheduler_fire_lateness_seconds_count", ())] >= 4
            assert m[("dkron_execution_duration_seconds_count", ())] >= 4
            assert m[("dkron_raft_is_leader", ())] == 1
            assert m[("dkron_raft_term", ())] >= 1
            assert m[("dkron_raft_apply_seconds_count", ())] >= 2
            assert m[("dkron_members", (("status", "alive"),))] == 1
            assert m[("dkron_jobs", ())] == 2
            created = m[
                ("dkron_http_requests_total", (("code", "201"), ("route", "createOrUpdateJob")))
            ]
            assert created == 2
            # A disabled job's slots are counted as missed, by reason.
            assert (await call(port, "POST", "/v1/jobs/ok/toggle"))[0] == 200
            missed = ("dkron_scheduler_missed_slots_total", (("reason", "disabled"),))
            while True:
                if (await trio.to_thread.run_sync(scrape, port)).get(missed, 0) >= 1:
                    break
                await trio.sleep(0.2)
            # A deleted job's series go with it; the others stay.
            assert (await call(port, "DELETE", "/v1/jobs/bad"))[0] == 200
            m = await trio.to_thread.run_sync(scrape, port)
            assert not [k for k in m if ("job_name", "bad") in k[1]]
            assert m[("dkron_job_executions_succeeded_total", (("job_name", "ok"),))] >= 2
            assert m[("dkron_executions_finished_total", (("status", "failed"),))] >= 2
            nursery.cancel_scope.cancel()


async def test_no_metrics_without_the_flag(tmp_path: pathlib.Path) -> None:
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            agent = await nursery.start(Agent(Options(data_dir=str(tmp_path))).run)
            status, _ = await call(agent.http_port, "GET", "/metrics")
            assert status == 404
            nursery.cancel_scope.cancel()


def test_the_rpc_transport_is_exposed_for_alerts() -> None:
    """A peer the RPC port cannot reach shows as a gauge to alert on, and the
    transport's counters (failures, relayed messages) as one labelled series."""
    gauges = AgentGauges(
        rpc_counters={"connect_failed": 3, "sent_through_relay": 7},
        rpc_peers_down=1,
        rpc_clock_offset_max=42.5,
    )
    m = samples(generate_latest(Metrics(lambda: gauges).registry).decode())
    assert m[("dkron_rpc_peers_down", ())] == 1
    assert m[("dkron_rpc_clock_offset_max_seconds", ())] == 42.5
    assert m[("dkron_rpc_events_total", (("event", "connect_failed"),))] == 3
    assert m[("dkron_rpc_events_total", (("event", "sent_through_relay"),))] == 7
