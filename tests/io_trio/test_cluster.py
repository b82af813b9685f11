"""Several agents in one process over loopback: gossip, Raft, forwarding, dispatch, leave.

Every node has its own sockets, data directory and nursery; a "crash" cancels
a node's nursery without a graceful leave, which is what its peers see of a
``kill -9`` (its sockets close, nothing is announced).  Timing comes from
real protocols on real sockets, so the tests wait on outcomes with generous
deadlines instead of asserting durations.
"""

from __future__ import annotations

import json
import pathlib
import socket
from typing import Any

import pytest
import trio

from dkron.io_trio.agent import OUTPUT_IN_INBOX, Agent, AgentError
from dkron.io_trio.live import Cluster, Node, Options, call, cluster, eventually
from dkron.testing.jobs import shell_job


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
            job = shell_job(
                "tagged", "echo $DKRON_NODE_NAME", schedule="@every 1s", tags={"pool": "workers:1"}
            )
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
            job = shell_job("tick", "true", schedule="@every 1s", concurrency="forbid")
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

            # Gone on purpose: the others stop dialling its closed RPC port.
            def dialled() -> list[str]:
                return [
                    n.agent.name
                    for n in c.live()
                    if n.agent.rpc is not None and leaving.agent.name in n.agent.rpc.peers()
                ]

            await eventually(lambda: not dialled(), "no one dials the server that left")
            # A fourth server joins through gossip and the leader adds it to Raft.
            await c.start("s4")
            await eventually(lambda: "s4" in leader.agent.node.membership.voters, "s4 a voter")  # type: ignore[union-attr]
            status, peers = await call(leader.port, "GET", "/v1/raft/peers")
            assert status == 200
            assert {p["id"] for p in peers} == voters()
            assert all(p["address"] for p in peers)


async def test_peers_json_recovers_a_server_that_lost_its_quorum(tmp_path: pathlib.Path) -> None:
    """Dkron's outage recovery: two of three servers are gone for good."""
    with trio.fail_after(120):
        async with cluster(tmp_path) as c:
            await start_three(c)
            leader = c.leader()
            assert leader is not None
            job = {"name": "keep", "schedule": "@manually", "executor": "shell"}
            assert (await call(leader.port, "POST", "/v1/jobs", job))[0] == 201
            survivor = "s1"
            await eventually(
                lambda: c.nodes[survivor].agent.state.get_job("keep") is not None, "replication"
            )
            for name in ("s1", "s2", "s3"):
                await c.crash(name)
            # Alone, s1 cannot elect itself: its configuration still has three voters.
            node = await c.start(survivor, join=())
            with trio.move_on_after(3):
                await eventually(node.agent.is_leader, "no leader without quorum", within=3)
                raise AssertionError("a minority elected itself")
            await c.crash(survivor)
            addr = node.agent.rpc_addr
            assert addr is not None
            peers = [{"id": survivor, "address": f"{addr[0]}:{addr[1]}"}]
            peers_file = tmp_path / survivor / "raft" / "peers.json"
            peers_file.write_text(json.dumps(peers))
            node = await c.start(survivor, join=())
            await eventually(node.agent.is_leader, "the recovered server leads")
            assert not peers_file.exists()
            status, body = await call(node.port, "GET", "/v1/jobs/keep")
            assert status == 200 and body["name"] == "keep"
            status, peers_now = await call(node.port, "GET", "/v1/raft/peers")
            assert [p["id"] for p in peers_now] == [survivor]


async def test_a_malformed_peers_json_stops_the_agent_with_its_path(
    tmp_path: pathlib.Path,
) -> None:
    raft_dir = tmp_path / "n1" / "raft"
    raft_dir.mkdir(parents=True)
    (raft_dir / "peers.json").write_text('{"not": "a list"}')
    agent = Agent(Options(data_dir=str(tmp_path / "n1")))
    with pytest.raises(AgentError, match=r"peers\.json"):
        await agent.run()


async def test_reloaded_tags_reach_every_member_and_move_tagged_jobs(
    tmp_path: pathlib.Path,
) -> None:
    """SIGHUP's effect: new user tags are gossiped; reserved tags survive the reload."""
    with trio.fail_after(120):
        async with cluster(tmp_path) as c:
            await start_three(c)
            worker = await c.start("w1", server=False, tags={"pool": "a"})
            leader = c.leader()
            assert leader is not None
            worker.agent.reload_tags({"pool": "b", "server": "true"})

            def seen_by_leader() -> dict[str, str] | None:
                m = next((m for m in leader.agent.members() if m.name == "w1"), None)
                return None if m is None or m.tags.get("pool") != "b" else dict(m.tags)

            tags = await eventually(seen_by_leader, "the new tags at the leader")
            assert "server" not in tags  # reserved: a user tag cannot make an agent a server
            assert tags["role"] == "dkron" and tags["rpc_addr"]
            job = shell_job("to-b", "true", tags={"pool": "b"})
            assert (await call(leader.port, "POST", "/v1/jobs", job))[0] == 201
            assert (await call(leader.port, "POST", "/v1/jobs/to-b/run"))[0] == 200
            await eventually(
                lambda: any(
                    e.node_name == "w1" and e.success for e in leader.agent.state.executions("to-b")
                ),
                "the run on the retagged agent",
            )


def _free_port() -> int:
    """A loopback port free for both gossip sockets (TCP and UDP) right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp:
        tcp.bind(("127.0.0.1", 0))
        port: int = tcp.getsockname()[1]
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
            udp.bind(("127.0.0.1", port))
    return port


async def test_a_worker_rejoins_after_every_server_restarted(tmp_path: pathlib.Path) -> None:
    """Servers that leave gracefully are not reconnected to by gossip: the worker rejoins."""
    with trio.fail_after(120):
        async with cluster(tmp_path) as c:
            gossip = f"127.0.0.1:{_free_port()}"
            server = await c.start("s1", bind_addr=gossip)
            await eventually(c.leader, "a leader")
            worker = await c.start(
                "w1",
                server=False,
                join=(),
                retry_join=(gossip,),
                retry_interval=0.2,
                tags={"pool": "workers"},
            )

            def alive(node: Node, name: str) -> bool:
                return any(m.name == name and int(m.status) == 1 for m in node.agent.members())

            await eventually(lambda: alive(server, "w1"), "the server sees the worker")
            await server.agent.leave()
            server.scope.cancel()
            await server.done.wait()
            await eventually(lambda: not alive(worker, "s1"), "the worker sees the server leave")

            # The server restarts alone (no seeds): only the worker can bring them together.
            server = await c.start("s1", bind_addr=gossip, join=())
            await eventually(c.leader, "the server leads again")
            await eventually(lambda: alive(server, "w1"), "the worker rejoined")
            job = shell_job("tagged", "echo $DKRON_NODE_NAME", tags={"pool": "workers:1"})
            assert (await call(server.port, "POST", "/v1/jobs", job))[0] == 201
            assert (await call(server.port, "POST", "/v1/jobs/tagged"))[0] == 200

            def ran() -> bool:
                return any(
                    ex.success and ex.output == "w1\n"
                    for ex in server.agent.state.executions("tagged")
                )

            await eventually(ran, "the job ran on the worker")


async def test_a_workers_output_keeps_reaching_the_leader_chunk_after_chunk(
    tmp_path: pathlib.Path,
) -> None:
    """Output chunks from the network wait for room in the core's inbox one at a
    time: room must come back as each is handled, or live output would stop
    after the first few dozen chunks."""
    with trio.fail_after(120):
        async with cluster(tmp_path) as c:
            server = await c.start("s1")
            await eventually(c.leader, "a leader")
            worker = await c.start("w1", server=False, tags={"pool": "workers"})
            await eventually(
                lambda: any(s.name == "s1" for s in worker.agent.servers()), "w1 joined"
            )
            lines = 3 * OUTPUT_IN_INBOX
            job = shell_job(
                "chatty",
                f"for i in $(seq 1 {lines}); do echo $i; sleep 0.005; done; sleep 30",
                tags={"pool": "workers:1"},
            )
            assert (await call(server.port, "POST", "/v1/jobs", job))[0] == 201
            assert (await call(server.port, "POST", "/v1/jobs/chatty/run"))[0] == 200

            async def last_line() -> str:
                busy = (await call(server.port, "GET", "/v1/busy"))[1]
                output = busy[0].get("output", "") if busy else ""
                return str(output).rstrip("\n").rsplit("\n", 1)[-1]

            with trio.fail_after(60):
                while True:
                    if await last_line() == str(lines):
                        break
                    await trio.sleep(0.1)


def _break_route(src: Node, dst: Node) -> None:
    """From now on nothing ``src`` sends ``dst`` arrives (a port nobody listens on)."""
    assert src.agent.rpc is not None
    src.agent.rpc.set_peer(dst.agent.name, ("127.0.0.1", _free_port()))


async def _three_servers_and_a_worker(c: Cluster) -> tuple[Node, Node]:
    await start_three(c)
    worker = await c.start("w1", server=False, tags={"pool": "workers"})
    await eventually(
        lambda: len([s for s in worker.agent.servers() if int(s.status) == 1]) == 3,
        "w1 sees the three servers",
    )
    leader = c.leader()
    assert leader is not None
    return leader, worker


async def _start_a_long_run(leader: Node, tags: dict[str, str]) -> None:
    """A 14 s run, longer than the 10 s lease, started and seen running."""
    job = shell_job("long", "echo begun; sleep 14; echo ended", tags=tags)
    assert (await call(leader.port, "POST", "/v1/jobs", job))[0] == 201
    assert (await call(leader.port, "POST", "/v1/jobs/long/run"))[0] == 200
    await eventually(lambda: bool(leader.agent.state.running_executions("long")), "the run started")


def _finished(node: Node, job: str) -> list[Any]:
    return [e for e in node.agent.state.executions(job) if e.finished_at]


async def test_a_worker_that_cannot_reach_the_leader_reports_through_another_server(
    tmp_path: pathlib.Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A route broken between the leader and one worker only (gossip still sees
    the worker alive through the others): the worker's heartbeats and result go
    through another server, so a run longer than the lease is not lost."""
    with trio.fail_after(120):
        async with cluster(tmp_path) as c:
            leader, worker = await _three_servers_and_a_worker(c)
            await _start_a_long_run(leader, {"pool": "workers:1"})
            _break_route(worker, leader)
            await eventually(lambda: _finished(leader, "long"), "the run finished", within=60)
            (ex,) = _finished(leader, "long")
            assert ex.success and ex.status == "", ex.output
            assert ex.output == "begun\nended\n"
            assert worker.agent.worker is not None
            assert worker.agent.worker.leader != leader.agent.name
            # Only the worker detoured, and only around the leader (a server
            # with no leader known yet must not take itself for unreachable).
            detours = [
                r.getMessage()
                for r in caplog.records
                if "reporting executions through" in r.getMessage()
            ]
            assert detours
            assert all(m.startswith(f"cannot reach {leader.agent.name}'s") for m in detours)


async def test_a_leader_that_cannot_reach_a_worker_dispatches_through_another_server(
    tmp_path: pathlib.Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The other half of a route broken between the leader and one worker: new
    runs reach the worker through a server that can reach it, and run."""
    with trio.fail_after(120):
        async with cluster(tmp_path) as c:
            leader, worker = await _three_servers_and_a_worker(c)
            _break_route(leader, worker)
            await eventually(lambda: leader.agent.rpc.down_for("w1") > 2.5, "w1 down")  # type: ignore[union-attr]
            job = shell_job("relayed", "echo $DKRON_NODE_NAME", tags={"pool": "workers:1"})
            assert (await call(leader.port, "POST", "/v1/jobs", job))[0] == 201
            for _ in range(3):
                assert (await call(leader.port, "POST", "/v1/jobs/relayed/run"))[0] == 200

            def finished() -> list[Any]:
                return _finished(leader, "relayed")

            await eventually(lambda: len(finished()) == 3, "three runs finished", within=20)
            assert [(e.node_name, e.success, e.output) for e in finished()] == [
                ("w1", True, "w1\n")
            ] * 3
            relays = [
                r.getMessage() for r in caplog.records if "sending to it through" in r.getMessage()
            ]
            assert relays == [relays[0]] and relays[0].startswith("cannot reach w1's RPC port")
            # And for the scrape: the peer is down, and messages went round it.
            gauges = leader.agent._gauges()
            assert gauges.rpc_peers_down >= 1
            assert gauges.rpc_counters["sent_through_relay"] >= 3
            assert sum(n.agent.rpc.counters["relayed"] for n in c.live() if n.agent.rpc) >= 3


async def test_a_follower_that_cannot_reach_the_leader_refuses_writes_at_once(
    tmp_path: pathlib.Path,
) -> None:
    """Raft may still reach a follower whose own route to the leader is broken
    (it knows the leader): a forwarded write would wait 30 s for nothing."""
    with trio.fail_after(60):
        async with cluster(tmp_path) as c:
            await start_three(c)
            leader = c.leader()
            assert leader is not None
            follower = next(n for n in c.live() if n is not leader)
            _break_route(follower, leader)
            await eventually(
                lambda: follower.agent.rpc.down_for(leader.agent.name) > 2.5,  # type: ignore[union-attr]
                "the leader unreachable from the follower",
            )
            job = {"name": "j", "schedule": "@every 1m", "executor": "shell"}
            with trio.fail_after(5):
                status, body = await call(follower.port, "POST", "/v1/jobs", job)
            assert status == 503
            assert f"cannot reach the leader {leader.agent.name}'s RPC port" in str(body)
            # The other servers still take it.
            assert (await call(leader.port, "POST", "/v1/jobs", job))[0] == 201


async def test_a_server_running_a_job_reports_around_a_broken_route_to_the_leader(
    tmp_path: pathlib.Path,
) -> None:
    """Servers run jobs too: a follower whose own route to the leader breaks
    mid-run reports through the third server, as an agent would."""
    with trio.fail_after(120):
        async with cluster(tmp_path) as c:
            nodes = [
                await c.start(f"s{i}", bootstrap_expect=3, tags={"slot": f"n{i}"})
                for i in (1, 2, 3)
            ]
            leader = await eventually(c.leader, "a leader")
            follower = next(n for n in nodes if n is not leader)
            await _start_a_long_run(leader, {"slot": follower.agent.tags["slot"]})
            _break_route(follower, leader)
            await eventually(lambda: _finished(leader, "long"), "the run finished", within=60)
            (ex,) = _finished(leader, "long")
            assert ex.node_name == follower.agent.name
            assert ex.success and ex.output == "begun\nended\n", ex.output
