"""Live output and cluster events over real websockets, from the leader and a follower."""

from __future__ import annotations

import http.client
import json
import pathlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
import trio
import trio_websocket

from dkron.io_trio.agent import Agent
from dkron.io_trio.live import Cluster, Node, Options, call, cluster, eventually, wait_leader
from dkron.io_trio.streams import EventHub

SLOW_JOB = {
    "name": "slow",
    "schedule": "@manually",
    "executor": "shell",
    "executor_config": {
        "command": "for i in 1 2 3; do echo line$i; sleep 0.4; done",
        "shell": "true",
    },
}


@asynccontextmanager
async def websocket(port: int, path: str) -> AsyncIterator[trio_websocket.WebSocketConnection]:
    """A client websocket on a TCP stream this test owns and closes.

    (trio-websocket's own client leaves its socket open when the server ends
    the connection first, as RFC 6455 says servers should.)
    """
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    try:
        async with trio.open_nursery() as nursery:
            ws = await trio_websocket.wrap_client_stream(nursery, stream, "127.0.0.1", path)
            try:
                yield ws
            finally:
                await ws.aclose()
    finally:
        await stream.aclose()


async def read_stream(port: int, path: str) -> list[dict[str, Any]]:
    """Every message until the server closes the stream."""
    messages: list[dict[str, Any]] = []
    async with websocket(port, path) as ws:
        try:
            while True:
                messages.append(json.loads(await ws.get_message()))
        except trio_websocket.ConnectionClosed as closed:
            assert closed.reason is not None and closed.reason.code == 1000, closed.reason
    return messages


def upgrade_status(port: int, path: str) -> tuple[int, str]:
    """A websocket handshake by hand, to see the HTTP answer of a refused upgrade."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.request(
            "GET",
            path,
            headers={
                "Connection": "Upgrade",
                "Upgrade": "websocket",
                "Sec-WebSocket-Version": "13",
                "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
            },
        )
        resp = conn.getresponse()
        return resp.status, resp.read().decode()
    finally:
        conn.close()


async def three_servers(c: Cluster) -> tuple[Node, Node]:
    """Start s1..s3 and return the leader they elect and one follower."""
    for i in (1, 2, 3):
        await c.start(f"s{i}", bootstrap_expect=3)
    leader = await eventually(c.leader, "a leader")
    return leader, next(n for n in c.live() if n is not leader)


async def next_event(ws: trio_websocket.WebSocketConnection, kind: str) -> dict[str, Any]:
    """The next event of one type: a subscriber also hears the others (a
    ``leader`` event can follow the moment a test saw the leader over HTTP)."""
    while True:
        event: dict[str, Any] = json.loads(await ws.get_message())
        if event["type"] == kind:
            return event


async def first_started(ws: trio_websocket.WebSocketConnection, job: str) -> dict[str, Any]:
    while True:
        event = await next_event(ws, "execution")
        if event["action"] == "started" and event["job"] == job:
            execution: dict[str, Any] = event["execution"]
            return execution


async def test_output_streams_live_then_the_result_and_events_are_published(
    tmp_path: pathlib.Path,
) -> None:
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            agent = await nursery.start(Agent(Options(data_dir=str(tmp_path))).run)
            port = agent.http_port
            await wait_leader(port)
            async with websocket(port, "/v1/events") as events:
                assert (await call(port, "POST", "/v1/jobs", SLOW_JOB))[0] == 201
                job_event = await next_event(events, "job")
                assert job_event["job"] == "slow"
                assert (await call(port, "POST", "/v1/jobs/slow/run"))[0] == 200
                started = await first_started(events, "slow")
                path = f"/v1/jobs/slow/executions/{started['id']}/stream"
                messages = await read_stream(port, path)
                finished = await next_event(events, "execution")
                assert finished["action"] == "finished" and finished["seq"] > job_event["seq"]
            outputs = [m for m in messages if m["type"] == "output"]
            assert messages[-1]["type"] == "result"
            assert "".join(m["data"] for m in outputs) == "line1\nline2\nline3\n"
            assert [m["seq"] for m in outputs] == sorted({m["seq"] for m in outputs})
            # The chunks arrived while it ran: more than one message before the result.
            assert len(outputs) >= 2
            assert messages[-1]["execution"]["success"] is True
            # A finished execution sends only its result; a resume skips what was seen.
            again = await read_stream(port, path)
            assert [m["type"] for m in again] == ["result"]
            assert again[0]["execution"]["output"] == "line1\nline2\nline3\n"
            # Unknown executions are refused before the upgrade, with a JSON error.
            status, body = await trio.to_thread.run_sync(
                upgrade_status, port, "/v1/jobs/slow/executions/nope/stream"
            )
            assert status == 404 and "nope" in body
            status, _ = await trio.to_thread.run_sync(
                upgrade_status, port, f"/v1/jobs/slow/executions/{started['id']}/stream?from_seq=x"
            )
            assert status == 400
            nursery.cancel_scope.cancel()


async def test_a_follower_streams_output_through_the_leader(tmp_path: pathlib.Path) -> None:
    with trio.fail_after(90):
        async with cluster(tmp_path) as c:
            _leader, follower = await three_servers(c)
            async with websocket(follower.port, "/v1/events") as events:
                assert (await call(follower.port, "POST", "/v1/jobs", SLOW_JOB))[0] == 201
                assert (await call(follower.port, "POST", "/v1/jobs/slow/run"))[0] == 200
                started = await first_started(events, "slow")
            path = f"/v1/jobs/slow/executions/{started['id']}/stream"
            messages = await read_stream(follower.port, path)
            outputs = [m for m in messages if m["type"] == "output"]
            assert "".join(m["data"] for m in outputs).startswith("line")
            assert messages[-1]["type"] == "result"
            assert messages[-1]["execution"]["output"] == "line1\nline2\nline3\n"


def test_a_slow_subscriber_is_dropped_without_holding_the_publisher() -> None:
    hub = EventHub(buffer=4)
    with hub.subscribe() as slow, hub.subscribe() as fast:
        for i in range(4):
            hub.publish({"type": "job", "n": i})
            fast.receive.receive_nowait()
        hub.publish({"type": "job", "n": 4})  # slow's buffer is full: it is dropped
        assert slow.overflowed and not fast.overflowed
        assert hub.subscribers == 1 and hub.dropped_clients == 1
        got = [slow.receive.receive_nowait()["n"] for _ in range(4)]
        assert got == [0, 1, 2, 3]
        with pytest.raises(trio.EndOfChannel):
            slow.receive.receive_nowait()
        assert fast.receive.receive_nowait()["seq"] == 5


async def test_a_client_that_goes_away_releases_its_subscription_at_once(
    tmp_path: pathlib.Path,
) -> None:
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            agent = await nursery.start(Agent(Options(data_dir=str(tmp_path))).run)
            async with websocket(agent.http_port, "/v1/events"):
                await eventually(lambda: agent.events.subscribers == 1, "the subscription")
            # No event is published meanwhile: the server notices the close by itself.
            await eventually(lambda: agent.events.subscribers == 0, "the release")
            nursery.cancel_scope.cancel()


async def test_a_stream_survives_a_leader_crash_mid_run(tmp_path: pathlib.Path) -> None:
    """The follower serving the stream asks the new leader for what follows its last seq."""
    with trio.fail_after(120):
        async with cluster(tmp_path) as c:
            leader, follower = await three_servers(c)
            job = {
                "name": "long",
                "schedule": "@manually",
                "tags": {"node": f"{follower.agent.name}:1"},
                "executor": "shell",
                "executor_config": {
                    "command": "for i in 1 2 3 4 5 6; do echo tick$i; sleep 0.5; done",
                    "shell": "true",
                },
            }
            follower.agent.reload_tags({"node": follower.agent.name})
            await eventually(
                lambda: any(
                    m.name == follower.agent.name and m.tags.get("node") == follower.agent.name
                    for m in leader.agent.members()
                ),
                "the follower's tag at the leader",
            )
            assert (await call(follower.port, "POST", "/v1/jobs", job))[0] == 201
            async with websocket(follower.port, "/v1/events") as events:
                assert (await call(follower.port, "POST", "/v1/jobs/long/run"))[0] == 200
                started = await first_started(events, "long")
            path = f"/v1/jobs/long/executions/{started['id']}/stream"
            messages: list[dict[str, Any]] = []
            async with websocket(follower.port, path) as ws:
                while len(messages) < 2:
                    messages.append(json.loads(await ws.get_message()))
                await c.crash(leader.agent.name)  # mid-run: the leader is gone
                try:
                    while True:
                        messages.append(json.loads(await ws.get_message()))
                except trio_websocket.ConnectionClosed as closed:
                    assert closed.reason is not None and closed.reason.code == 1000
            outputs = [m for m in messages if m["type"] == "output"]
            seqs = [m["seq"] for m in outputs]
            assert seqs == sorted(set(seqs)), "no chunk twice, none out of order"
            assert messages[-1]["type"] == "result"
            assert messages[-1]["execution"]["success"] is True
            assert messages[-1]["execution"]["output"] == "".join(f"tick{i}\n" for i in range(1, 7))


async def test_busy_shows_the_end_of_the_live_output_on_every_server(
    tmp_path: pathlib.Path,
) -> None:
    """Dkron's busy list carries the latest output; Dkron's UI shows it in the
    busy panel. A follower gets it from the leader's buffer."""
    flag = tmp_path / "finish"
    job = {
        "name": "waits",
        "schedule": "@manually",
        "executor": "shell",
        "executor_config": {
            "command": f"echo first; while [ ! -e {flag} ]; do sleep 0.05; done; echo last",
            "shell": "true",
        },
    }
    with trio.fail_after(90):
        async with cluster(tmp_path) as c:
            leader, follower = await three_servers(c)
            assert (await call(follower.port, "POST", "/v1/jobs", job))[0] == 201
            assert (await call(follower.port, "POST", "/v1/jobs/waits/run"))[0] == 200

            async def busy_outputs(port: int) -> list[str]:
                while True:
                    status, items = await call(port, "GET", "/v1/busy")
                    assert status == 200, items
                    outputs = [e.get("output", "") for e in items]
                    if outputs and all(outputs):
                        return outputs
                    await trio.sleep(0.05)

            for node in (follower, leader):
                assert await busy_outputs(node.port) == ["first\n"] * 3  # one per server
            flag.touch()
            while True:
                if not (await call(follower.port, "GET", "/v1/busy"))[1]:
                    break
                await trio.sleep(0.05)
            execs = (await call(follower.port, "GET", "/v1/jobs/waits/executions"))[1]
            assert sorted(e["output"] for e in execs) == ["first\nlast\n"] * 3
