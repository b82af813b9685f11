"""Prometheus metrics (``--enable-prometheus``), in a registry of the agent's own.

Two kinds of series.  Counters and histograms are fed as things happen: the
agent reports every applied state command (every server applies every entry,
so each server exports the cluster's totals as it has applied them), each
local proposal's apply latency, leadership and membership changes, and the
HTTP layer reports every request.  Gauges of current state (Raft term and
indexes, members by status) are read from the agent at scrape time through
a collector, so they can never be stale.

Names follow Dkron's where Dkron has one (``dkron_job_executions_*_total``,
``dkron_agent_event_received_*``); the rest are new and listed in
``docs/metrics.md``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import Collector

from dkron.model import Execution
from dkron.state import (
    ApplyResult,
    ClaimSlot,
    Command,
    ExecutionFinished,
    ExecutionStarted,
    JobDeleted,
    SlotSkipped,
    each_applied,
)

__all__ = ["CONTENT_TYPE", "AgentGauges", "Metrics"]

CONTENT_TYPE = CONTENT_TYPE_LATEST
_NS = 1e-9
#: from sub-millisecond (an idle cluster) to minutes (a long outage)
_LATENESS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300)
_DURATION = (0.01, 0.1, 0.5, 1, 5, 10, 30, 60, 300, 900, 3600, 14400)
_FAST = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5)


@dataclass(frozen=True, slots=True, kw_only=True)
class AgentGauges:
    """Current state read at scrape time."""

    raft_term: int = 0
    raft_commit_index: int = 0
    raft_applied_index: int = 0
    raft_last_index: int = 0
    raft_is_leader: bool = False
    raft_voters: int = 0
    members_by_status: Mapping[str, int] = field(default_factory=dict)
    swim_health_score: int = 0
    swim_counters: Mapping[str, int] = field(default_factory=dict)
    rpc_counters: Mapping[str, int] = field(default_factory=dict)
    rpc_peers_down: int = 0
    rpc_clock_offset_max: float = 0.0
    running_executions: int = 0
    jobs: int = 0
    event_subscribers: int = 0


class _Gauges(Collector):
    def __init__(self, read: Callable[[], AgentGauges]) -> None:
        self._read = read

    def collect(self) -> Iterable[Metric]:
        g = self._read()
        simple = (
            ("dkron_raft_term", "Current Raft term", g.raft_term),
            ("dkron_raft_commit_index", "Highest log index known committed", g.raft_commit_index),
            ("dkron_raft_applied_index", "Highest log index applied here", g.raft_applied_index),
            ("dkron_raft_last_index", "Last index of the local log", g.raft_last_index),
            ("dkron_raft_is_leader", "1 when this server leads", int(g.raft_is_leader)),
            ("dkron_raft_voters", "Voters in the Raft configuration", g.raft_voters),
            ("dkron_swim_health_score", "Lifeguard awareness (0 is healthy)", g.swim_health_score),
            ("dkron_executions_running", "Executions running in the cluster", g.running_executions),
            ("dkron_jobs", "Jobs in the replicated state", g.jobs),
            ("dkron_events_subscribers", "Clients of /v1/events", g.event_subscribers),
            (
                "dkron_rpc_peers_down",
                "Peers whose RPC connection from here is down (alert when it stays above 0)",
                g.rpc_peers_down,
            ),
            (
                "dkron_rpc_clock_offset_max_seconds",
                "Largest wall-clock difference from a connected peer (alert above 1)",
                g.rpc_clock_offset_max,
            ),
        )
        for name, doc, value in simple:
            yield GaugeMetricFamily(name, doc, value=value)
        members = GaugeMetricFamily("dkron_members", "Gossip members by status", labels=["status"])
        for status in ("alive", "leaving", "left", "failed"):
            members.add_metric([status], g.members_by_status.get(status, 0))
        yield members
        swim = CounterMetricFamily(
            "dkron_swim_events", "SWIM core counters (drops, refutations...)", labels=["event"]
        )
        for key, count in sorted(g.swim_counters.items()):
            swim.add_metric([key], count)
        yield swim
        rpc = CounterMetricFamily(
            "dkron_rpc_events",
            "RPC transport counters (connects, failures, drops, relayed messages...)",
            labels=["event"],
        )
        for key, count in sorted(g.rpc_counters.items()):
            rpc.add_metric([key], count)
        yield rpc


class Metrics:
    """The agent's series; see the module docstring for how each is fed."""

    def __init__(self, gauges: Callable[[], AgentGauges]) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        ProcessCollector(registry=r)
        r.register(_Gauges(gauges))
        self.job_succeeded = Counter(
            "dkron_job_executions_succeeded",
            "Successful executions per job (Dkron's series)",
            ["job_name"],
            registry=r,
        )
        self.job_failed = Counter(
            "dkron_job_executions_failed",
            "Failed executions per job (Dkron's series)",
            ["job_name"],
            registry=r,
        )
        self.finished = Counter(
            "dkron_executions_finished",
            "Finished executions by outcome",
            ["status"],
            registry=r,
        )
        self.started = Counter("dkron_executions_started", "Started executions", registry=r)
        self.duration = Histogram(
            "dkron_execution_duration_seconds",
            "Run time of finished executions",
            buckets=_DURATION,
            registry=r,
        )
        self.fires = Counter(
            "dkron_scheduler_fires", "Slots claimed, by trigger", ["trigger"], registry=r
        )
        self.lateness = Histogram(
            "dkron_scheduler_fire_lateness_seconds",
            "From a run's scheduled time to its start on the worker",
            buckets=_LATENESS,
            registry=r,
        )
        self.missed = Counter(
            "dkron_scheduler_missed_slots",
            "Cron slots that will not run, by reason",
            ["reason"],
            registry=r,
        )
        self.claim_latency = Histogram(
            "dkron_scheduler_claim_latency_seconds",
            "From a slot's scheduled time to its claim being applied here",
            buckets=_LATENESS,
            registry=r,
        )
        self.apply_latency = Histogram(
            "dkron_raft_apply_seconds",
            "From proposing a command on this server to applying it",
            buckets=_FAST,
            registry=r,
        )
        self.leader_changes = Counter(
            "dkron_raft_leader_changes", "Leader changes seen by this server", registry=r
        )
        self.member_events = Counter(
            "dkron_agent_event_received",
            "Gossip membership events (Dkron's series, as a label)",
            ["event"],
            registry=r,
        )
        self.http_requests = Counter(
            "dkron_http_requests",
            "HTTP requests by route and status code",
            ["route", "code"],
            registry=r,
        )
        self.http_latency = Histogram(
            "dkron_http_request_duration_seconds",
            "HTTP request handling time by route",
            ["route"],
            buckets=_FAST,
            registry=r,
        )

    def render(self) -> bytes:
        return generate_latest(self.registry)

    def observe_http(self, route: str, code: int, seconds: float) -> None:
        self.http_requests.labels(route, str(code)).inc()
        self.http_latency.labels(route).observe(seconds)

    def observe_apply(self, cmd: Command, result: ApplyResult, wall_ns: int) -> None:
        """One applied entry (a batch counts per element); ``wall_ns``: this server's clock."""
        for single, part in each_applied(cmd, result):
            if isinstance(single, ClaimSlot) and part.ok:
                self.fires.labels(single.trigger).inc()
                if single.trigger in ("schedule", "catchup"):
                    late = (wall_ns - single.scheduled_time_ns) * _NS
                    self.claim_latency.observe(max(0.0, late))
            elif isinstance(single, ExecutionStarted) and part.ok and part.reason != "duplicate":
                ex = single.execution
                self.started.inc()
                if ex.scheduled_time is not None:
                    self.lateness.observe(max(0.0, (ex.started_at - ex.scheduled_time) * _NS))
            elif isinstance(single, ExecutionFinished) and part.ok and part.reason != "duplicate":
                self._finished(single.execution)
            # Missed and skipped slots (RecordMissed, a forbid refusal...) all
            # surface as SlotSkipped events.
            for event in part.events:
                if isinstance(event, SlotSkipped):
                    self.missed.labels(event.reason).inc(event.count)
                elif isinstance(event, JobDeleted):
                    self._forget_job(event.name)

    def _forget_job(self, name: str) -> None:
        """A deleted job's per-job series go with it: a cluster that creates and
        deletes jobs (ephemeral ones, say) would otherwise grow every scrape for
        ever. A job created again under the name starts from zero, which
        Prometheus reads as a counter reset."""
        for counter in (self.job_succeeded, self.job_failed):
            with contextlib.suppress(KeyError):
                counter.remove(name)

    def _finished(self, ex: Execution) -> None:
        status = "succeeded" if ex.success else (ex.status or "failed")
        self.finished.labels(status).inc()
        counter = self.job_succeeded if ex.success else self.job_failed
        counter.labels(ex.job_name).inc()
        if ex.finished_at is not None:
            self.duration.observe(max(0.0, (ex.finished_at - ex.started_at) * _NS))
