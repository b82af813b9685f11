"""Several agents in one process over loopback: gossip, Raft, forwarding, dispatch, leave.

Every node has its own sockets, data directory and nursery; a "crash" cancels
a node's nursery without a graceful leave, which is what its peers see of a
``kill -9`` (its sockets close, nothing is announced).  Timing comes from
real protocols on real sockets, so the tests wait on outcomes with generous
deadlines instead of asserting durations.
"""

from __future__ import annotations

import pathlib
from typing import Any

import trio

from dkron.testing.live import Cluster, Node, call, cluster, eventually


async def start_three(c: Cluster) -> list[Node]:
    nodes = [await c.start(f"s{i}", bootstrap_expect=3) for i in (1, 2, 3)]
    await eventually(c.leader, "a leader")
    return nodes


async def test_three_servers_bootstrap_forward_writes_and_dispatch_to_tagged_agents(
    tmp_path: pathlib.Path,
) -> None:
    with trio.fail_after(120):
        async with cluster(tmp_path) as c:
            await start_three(c)
            worker = await c.start("w1", server=False, tags={"pool": "workers"})
            assert worker.agent.http_port is None  # only servers serve the API
            leader = c.leader()
            assert leader is not None
            voters = {p["id"] for p in (await call(leader.port, "GET", "/v1/raft/peers"))[1]}
            assert voters == {"s1", "s2", "s3"}

            def all_members() -> bool:
                return all(
                    {m.name for m in n.agent.members() if int(m.status) == 1}
                    == {"s1", "s2", "s3", "w1"}
                    for n in c.live()
                )

            await eventually(all_members, "everyone sees everyone alive")
            follower = next(n for n in c.live() if n.agent.node and not n.agent.is_leader())
            job = {
                "name": "tagged",
                "schedule": "@every 1s",
                "tags": {"pool": "workers:1"},
                "executor": "shell",
                "executor_config": {"command": "echo $DKRON_NODE_NAME", "shell": "true"},
            }
            # A write to a follower is forwarded; the follower then reads its own write.
            status, body = await call(follower.port, "POST", "/v1/jobs", job)
            assert status == 201, body
            status, body = await call(follower.port, "GET", "/v1/jobs/tagged")
            assert status == 200 and body["name"] == "tagged"

            async def finished_on_worker(port: int) -> list[dict[str, Any]]:
                execs = (await call(port, "GET", "/v1/jobs/tagged/executions"))[1]
                return [e for e in execs if e["success"]]

            runs: list[dict[str, Any]] = []
            with trio.fail_after(30):
                while len(runs) < 2:
                    await trio.sleep(0.2)
                    runs = await finished_on_worker(follower.port)
            assert {e["node_name"] for e in runs} == {"w1"}
            assert {e["output"] for e in runs} == {"w1\n"}

            # A manual run and a toggle through the other follower are forwarded too.
            other = next(
                n
                for n in c.live()
                if n.agent.node and not n.agent.is_leader() and n is not follower
            )
            status, _ = await call(other.port, "POST", "/v1/jobs/tagged/toggle")
            assert status == 200
            status, body = await call(other.port, "GET", "/v1/jobs/tagged")
            assert body["disabled"] is True


async def test_a_new_leader_keeps_firing_after_the_leader_crashes(tmp_path: pathlib.Path) -> None:
    with trio.fail_after(120):
        async with cluster(tmp_path) as c:
            await start_three(c)
            leader = c.leader()
            assert leader is not None
            job = {
                "name": "tick",
                "schedule": "@every 1s",
                "concurrency": "forbid",
                "executor": "shell",
                "executor_config": {"command": "true", "shell": "true"},
            }
            assert (await call(leader.port, "POST", "/v1/jobs", job))[0] == 201

            def groups(node: Node) -> set[int]:
                return {ex.group for ex in node.agent.state.executions("tick") if ex.success}

            await eventually(lambda: len(groups(leader)) >= 2, "runs before the crash")
            await c.crash(leader.agent.name)
            new = await eventually(c.leader, "a new leader")
            assert new is not leader
            before = groups(new)
            await eventually(lambda: len(groups(new) - before) >= 2, "runs after the crash")
            # Every node that ran it ran each slot at most once.
            for node in c.live():
                keys = [
                    (ex.group, ex.node_name, ex.attempt)
                    for ex in node.agent.state.executions("tick")
                ]
                assert len(keys) == len(set(keys))


async def test_a_server_that_leaves_is_removed_from_raft_and_a_new_one_is_added(
    tmp_path: pathlib.Path,
) -> None:
    with trio.fail_after(120):
        async with cluster(tmp_path) as c:
            await start_three(c)
            leader = c.leader()
            assert leader is not None
            leaving = next(n for n in c.live() if n is not leader)
            await leaving.agent.leave()
            leaving.scope.cancel()
            await leaving.done.wait()

            def voters() -> set[str]:
                node = leader.agent.node
                assert node is not None
                return set(node.membership.members)

            await eventually(
                lambda: voters() == {"s1", "s2", "s3"} - {leaving.agent.name}, "removal"
            )
            # A fourth server joins through gossip and the leader adds it to Raft.
            await c.start("s4")
            await eventually(lambda: "s4" in leader.agent.node.membership.voters, "s4 a voter")  # type: ignore[union-attr]
            status, peers = await call(leader.port, "GET", "/v1/raft/peers")
            assert status == 200
            assert {p["id"] for p in peers} == voters()
            assert all(p["address"] for p in peers)
