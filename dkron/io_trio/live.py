"""Live agents in one process over loopback, for the integration tests and benchmarks.

Every node has its own sockets, data directory and nursery; a "crash" cancels
a node's nursery without a graceful leave, which is what its peers see of a
``kill -9`` (its sockets close, nothing is announced).
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import trio

from dkron.io_trio.agent import Agent

__all__ = ["Cluster", "Node", "Options", "call", "cluster", "eventually", "wait_leader"]


@dataclasses.dataclass(frozen=True)
class Options:
    data_dir: str
    enable_prometheus: bool = False
    ui: bool = True
    node_name: str = "n1"
    server: bool = True
    bootstrap_expect: int = 1
    http_addr: str = "127.0.0.1:0"
    tags: dict[str, str] = dataclasses.field(default_factory=dict)
    region: str = "global"
    datacenter: str = "dc1"
    raft_multiplier: int = 1
    bootstrap: bool = False
    bind_addr: str = "127.0.0.1:0"
    advertise_addr: str = ""
    rpc_port: int = 0
    advertise_rpc_port: int = 0
    join: tuple[str, ...] = ()
    retry_join: tuple[str, ...] = ()
    retry_max: int = 0
    retry_interval: float = 1.0
    encrypt: str = ""
    profile: str = "local"
    serf_reconnect_timeout: float = 86400.0
    https_cert: str = ""
    https_key: str = ""
    rpc_tls_ca: str = ""
    rpc_tls_cert: str = ""
    rpc_tls_key: str = ""
    api_token: tuple[str, ...] = ()
    api_token_file: str = ""
    api_read_token: tuple[str, ...] = ()
    api_read_token_file: str = ""
    basic_auth: tuple[str, ...] = ()


def _call(port: int, method: str, path: str, body: object | None) -> tuple[int, Any]:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=data, method=method)
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            raw = resp.read()
            return resp.status, json.loads(raw) if raw else None
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode()


async def call(port: int, method: str, path: str, body: object | None = None) -> tuple[int, Any]:
    return await trio.to_thread.run_sync(_call, port, method, path, body)


async def wait_leader(port: int) -> None:
    # Polling over HTTP is the point here: the API must answer once it leads.
    for _ in range(600):
        if (await call(port, "GET", "/v1/leader"))[0] == 200:
            return
        await trio.sleep(0.05)
    raise AssertionError("the agent never became leader")


@dataclasses.dataclass
class Node:
    agent: Agent
    scope: trio.CancelScope
    done: trio.Event

    @property
    def port(self) -> int:
        assert self.agent.http_port is not None
        return self.agent.http_port


class Cluster:
    def __init__(self, nursery: trio.Nursery, root: pathlib.Path) -> None:
        self.nursery = nursery
        self.root = root
        self.nodes: dict[str, Node] = {}

    def seeds(self) -> tuple[str, ...]:
        """The gossip address of one live node, if any, to join through."""
        for node in self.nodes.values():
            if node.agent.gossip_addr is not None and not node.done.is_set():
                host, port = node.agent.gossip_addr
                return (f"{host}:{port}",)
        return ()

    async def start(self, name: str, **kw: Any) -> Node:
        """Start (or restart, on the same data directory) the node ``name``."""
        join = kw.pop("join", self.seeds())
        opts = Options(data_dir=str(self.root / name), node_name=name, join=join, **kw)
        agent = Agent(opts)
        scope = trio.CancelScope()
        done = trio.Event()

        async def serve(task_status: trio.TaskStatus[Agent]) -> None:
            try:
                with scope:
                    await agent.run(task_status=task_status)
            finally:
                done.set()

        await self.nursery.start(serve)
        node = Node(agent, scope, done)
        self.nodes[name] = node
        return node

    async def crash(self, name: str) -> None:
        node = self.nodes[name]
        node.scope.cancel()
        await node.done.wait()

    def live(self) -> list[Node]:
        return [n for n in self.nodes.values() if not n.done.is_set()]

    def leader(self) -> Node | None:
        leaders = [n for n in self.live() if n.agent.is_leader()]
        return leaders[0] if len(leaders) == 1 else None


@asynccontextmanager
async def cluster(root: pathlib.Path) -> AsyncIterator[Cluster]:
    async with trio.open_nursery() as nursery:
        yield Cluster(nursery, root)
        nursery.cancel_scope.cancel()


async def eventually(check: Callable[[], Any], what: str, *, within: float = 30.0) -> Any:
    """Poll a condition on the nodes' state (not timing): tests wait for outcomes."""
    with trio.move_on_after(within):
        while True:
            value = check()
            if value:
                return value
            await trio.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")
