"""Clusters of real ``python -m dkron agent`` processes: dispatch, kill -9 failover, leave.

The in-process versions of these scenarios live in
``tests/io_trio/test_cluster.py``; here every node is its own process with
its own ports and data directory, so a ``kill -9`` really loses everything
that was not on disk.  Time is real, so the tests wait for outcomes under
generous deadlines and never assert durations.
"""

from __future__ import annotations

import pathlib
import sys
import time
from collections.abc import Iterator
from typing import Any

import pytest

from dkron.testing.jobs import shell_job
from dkron.testing.procs import (
    AgentProc,
    ProcCluster,
    cli,
    executions,
    parse_time,
    slot_report,
    wait_for,
)

SECOND_NS = 1_000_000_000


@pytest.fixture
def procs(tmp_path: pathlib.Path, request: pytest.FixtureRequest) -> Iterator[ProcCluster]:
    failed_before = request.session.testsfailed
    with ProcCluster(tmp_path, extra_args=["--profile", "local"]) as c:
        yield c
        if request.session.testsfailed != failed_before:
            # The agents' own logs are what explains a failure between processes.
            print(c.logs(80), file=sys.stderr)


def start_three(c: ProcCluster) -> list[AgentProc]:
    s1 = c.add("s1", bootstrap_expect=3)
    servers = [s1] + [c.add(n, bootstrap_expect=3, join=[s1.gossip_addr]) for n in ("s2", "s3")]
    c.wait_leader()
    wait_for(
        lambda: all(len(s.call("GET", "/v1/raft/peers")[1]) == 3 for s in servers),
        timeout=30,
        what="three voters on every server",
    )
    return servers


def peer_ids(server: AgentProc) -> set[str]:
    status, body = server.call("GET", "/v1/raft/peers")
    assert status == 200, body
    return {p["id"] for p in body}


def collect(seen: dict[str, dict[str, Any]], servers: list[AgentProc], job: str) -> None:
    """Fold every live server's view of the job's runs into ``seen`` (by execution id)."""
    for server in servers:
        if not server.stopped:
            server.ensure_running()
            for ex in executions(server.api, job):
                seen[ex["id"]] = ex


def start_worker(c: ProcCluster, servers: list[AgentProc]) -> AgentProc:
    """A non-server agent tagged ``pool=w``, once every server sees it alive."""
    worker = c.add("w1", server=False, join=[servers[0].gossip_addr], tags={"pool": "w"})

    def alive_everywhere() -> bool:
        worker.ensure_running()
        for s in servers:
            status, members = s.call("GET", "/v1/members")
            alive = {m["Name"] for m in members if m["Status"] == 1} if status == 200 else set()
            if worker.name not in alive:
                return False
        return True

    wait_for(alive_everywhere, timeout=30, what="every server to see w1 alive")
    return worker


def test_a_follower_takes_a_job_for_tagged_agents_and_the_agent_runs_it(
    procs: ProcCluster,
) -> None:
    servers = start_three(procs)
    start_worker(procs, servers)
    leader = procs.wait_leader()
    follower = next(s for s in servers if s is not leader)
    job = shell_job("tagged", "echo $DKRON_NODE_NAME", schedule="@every 1s", tags={"pool": "w:1"})
    status, body = follower.call("POST", "/v1/jobs", job)
    assert status == 201, body
    status, body = follower.call("GET", "/v1/jobs/tagged")
    assert status == 200 and body["tags"] == {"pool": "w:1"}

    runs = wait_for(
        lambda: r if len(r := [e for e in executions(follower.api, "tagged")]) >= 3 else None,
        timeout=30,
        what="three runs of the tagged job",
    )
    assert {e["node_name"] for e in runs} == {"w1"}
    finished = [e for e in runs if e["finished_at"] != "0001-01-01T00:00:00Z"]
    assert finished and all(e["success"] for e in finished)
    assert {e["output"] for e in finished} == {"w1\n"}
    # Servers never run it: they lack the tag.
    assert all(e["node_name"] == "w1" for s in servers for e in executions(s.api, "tagged"))


def test_catchup_all_survives_kill_9_of_the_leader_without_losing_or_repeating_a_slot(
    procs: ProcCluster,
) -> None:
    servers = start_three(procs)
    # Each slot runs on one agent that is never killed, so "exactly once" is literal:
    # one execution per slot, whoever led when it was claimed, dispatched or reported.
    start_worker(procs, servers)
    leader = procs.wait_leader()
    job = shell_job("tick", "true", schedule="@every 1s", catchup="all", tags={"pool": "w:1"})
    status, body = leader.call("POST", "/v1/jobs", job)
    assert status == 201, body
    seen: dict[str, dict[str, Any]] = {}

    def groups_after(t_ns: int) -> set[int]:
        collect(seen, servers, "tick")
        return {int(e["group"]) for e in seen.values() if int(e.get("group", 0)) > t_ns}

    wait_for(lambda: len(groups_after(0)) >= 3, timeout=30, what="three slots before the kill")

    killed_at = time.time()
    leader.kill()
    new = wait_for(
        lambda: n if (n := procs.leader()) is not None and n is not leader else None,
        timeout=30,
        what="a new leader",
    )

    def fired_since_kill() -> bool:
        collect(seen, servers, "tick")
        return any(parse_time(e["started_at"]).timestamp() > killed_at for e in seen.values())

    wait_for(fired_since_kill, timeout=30, what="a run started after the kill")
    last = max(groups_after(0))
    wait_for(lambda: len(groups_after(last)) >= 2, timeout=30, what="the new leader to keep firing")

    leader.start(join=[s.gossip_addr for s in servers if s is not leader])

    def caught_up() -> bool:
        # It follows the new leader and its own applied state has reached that leader's
        # latest slot (read before its own, so the comparison cannot race ahead).
        if leader.leader_name() != new.name:
            return False
        theirs = {int(e["group"]) for e in executions(new.api, "tick")}
        mine = {int(e["group"]) for e in executions(leader.api, "tick")}
        return bool(theirs) and max(theirs) in mine

    wait_for(caught_up, timeout=60, what="the restarted server to follow and catch up")
    assert peer_ids(new) == {"s1", "s2", "s3"}
    last = max(groups_after(0))
    wait_for(lambda: len(groups_after(last)) >= 2, timeout=30, what="more runs after the restart")

    collect(seen, servers, "tick")
    report = slot_report(seen, interval_ns=SECOND_NS)
    assert report.expected >= 8
    assert report.lost == ()
    assert report.duplicated == ()
    assert report.off_grid == ()
    per_slot: dict[int, list[dict[str, Any]]] = {}
    for ex in seen.values():
        per_slot.setdefault(int(ex["group"]), []).append(ex)
    assert all(len(runs) == 1 for runs in per_slot.values()), per_slot
    assert {(ex["node_name"], ex.get("attempt", 1)) for ex in seen.values()} == {("w1", 1)}
    # The restarted server kept what it had on disk: it still holds the first slots.
    assert report.first in {int(e["group"]) for e in executions(leader.api, "tick")}


def test_sigterm_on_a_follower_leaves_cleanly_and_it_is_removed_from_the_peers(
    procs: ProcCluster,
) -> None:
    servers = start_three(procs)
    leader = procs.wait_leader()
    leaving = next(s for s in servers if s is not leader)
    remaining = [s for s in servers if s is not leaving]

    assert leaving.terminate() == 0

    wait_for(
        lambda: all(peer_ids(s) == {s.name for s in remaining} for s in remaining),
        timeout=30,
        what=f"{leaving.name} to leave the Raft peers",
    )
    for server in remaining:
        out = cli_peers(server)
        rows = [line.split() for line in out.splitlines()[1:] if line.strip()]
        assert sorted(r[1] for r in rows) == sorted(s.name for s in remaining), out
        assert {r[3] for r in rows} == {"leader", "follower"}, out
    # The rest still have a leader, and it still takes writes.
    new_leader = procs.wait_leader()
    status, body = new_leader.call(
        "POST", "/v1/jobs", {"name": "after", "schedule": "@daily", "executor": "shell"}
    )
    assert status == 201, body


def cli_peers(server: AgentProc) -> str:
    """``dkron raft list-peers`` against one server: its table, header first."""
    done = cli("raft", "list-peers", "--address", f"http://127.0.0.1:{server.api}")
    assert done.returncode == 0, done.stderr
    return done.stdout
