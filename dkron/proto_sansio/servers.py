"""Which gossip members are servers, when to bootstrap Raft, how the leader reconciles.

Dkron keeps two views of the servers: gossip (who is alive, who has left)
and the Raft configuration (who votes).  These pure functions are the
bridge: they decide from gossip's view which Raft configuration to start
with (``bootstrap-expect``) and which single configuration change the leader
should attempt next.  Keeping them free of I/O lets the rules be tested
exhaustively; the agent only carries the decisions out.

The rules are Dkron's (``dkron/serf.go``, ``dkron/leader.go``): a server is
a member with ``role=dkron``, ``server=true`` and a numeric ``port`` tag;
bootstrap waits for ``expect`` alive servers of the region that all agree
on ``expect`` and none of which bootstraps alone; the leader adds alive
servers and removes servers that *left* (never those that merely failed,
which an operator removes with ``raft remove-peer``).
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Iterable, Mapping

from dkron.proto_sansio.raft import Membership
from dkron.proto_sansio.swim import Member, MemberStatus

__all__ = [
    "BootstrapDecision",
    "Change",
    "ChangeKind",
    "ServerInfo",
    "bootstrap_decision",
    "parse_rpc_addr",
    "reconcile_changes",
    "server_info",
]


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class ServerInfo:
    name: str
    region: str
    status: MemberStatus
    expect: int | None
    bootstrap: bool
    rpc_addr: tuple[str, int] | None


def parse_rpc_addr(tags: Mapping[str, str], fallback_host: str) -> tuple[str, int] | None:
    """The ``rpc_addr`` tag (``ip:port`` or ``[v6]:port``), else the gossip host with ``port``."""
    text = tags.get("rpc_addr", "")
    host, sep, port = text.rpartition(":")
    if sep and port.isdigit() and host:
        host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
        if 0 < int(port) <= 65535:
            return host, int(port)
    port = tags.get("port", "")
    if port.isdigit() and 0 < int(port) <= 65535:
        return fallback_host, int(port)
    return None


def server_info(member: Member) -> ServerInfo | None:
    """Dkron's ``isServer``: role ``dkron``, ``server=true`` and a parseable ``port`` tag."""
    tags = member.tags
    if tags.get("role") != "dkron" or tags.get("server") != "true":
        return None
    if not tags.get("port", "").isdigit():
        return None
    expect_text = tags.get("expect", "")
    return ServerInfo(
        name=member.name,
        region=tags.get("region", "global"),
        status=member.status,
        expect=int(expect_text) if expect_text.isdigit() else None,
        bootstrap=tags.get("bootstrap") == "1",
        rpc_addr=parse_rpc_addr(tags, member.addr),
    )


class BootstrapDecision(enum.Enum):
    WAIT = "wait"  # not enough servers yet
    READY = "ready"  # ask the candidates whether any already has a configuration
    CONFLICT = "conflict"  # a peer disagrees on expect, or bootstraps alone


def bootstrap_decision(
    servers: Iterable[ServerInfo], *, me: str, expect: int, region: str
) -> tuple[BootstrapDecision, tuple[str, ...], str]:
    """Whether ``bootstrap-expect`` can act now, on which servers, and why not if not.

    Every server that sees the same alive set decides the same configuration
    (the sorted names), so servers bootstrapping concurrently agree.
    """
    alive = [s for s in servers if s.status is MemberStatus.ALIVE and s.region == region]
    for s in alive:
        if s.bootstrap:
            return BootstrapDecision.CONFLICT, (), f"server {s.name} is in bootstrap mode"
        if s.expect is not None and s.expect != expect:
            return (
                BootstrapDecision.CONFLICT,
                (),
                f"server {s.name} expects {s.expect} servers, this node {expect}",
            )
    names = tuple(sorted({s.name for s in alive if s.expect == expect} | {me}))
    if len(names) < expect:
        return BootstrapDecision.WAIT, names, f"{len(names)} of {expect} servers seen"
    return BootstrapDecision.READY, names, ""


class ChangeKind(enum.Enum):
    ADD_LEARNER = "add_learner"
    PROMOTE = "promote"
    REMOVE = "remove"


@dataclasses.dataclass(frozen=True, slots=True)
class Change:
    kind: ChangeKind
    node: str


def reconcile_changes(
    servers: Iterable[ServerInfo], membership: Membership, *, leader: str, region: str
) -> list[Change]:
    """The configuration changes the leader should try, most urgent first.

    Raft takes one change at a time, so the agent tries these in order and
    stops at the first one accepted.  Removing a server that left comes
    first (it shrinks the quorum the others must reach), then promoting
    learners (they were added to become voters), then adding new servers as
    learners so they catch up before they count for the quorum.
    """
    known = membership.voters | membership.learners
    changes: list[Change] = []
    by_name = {s.name: s for s in servers if s.region == region}
    for name in sorted(known):
        s = by_name.get(name)
        if s is not None and s.status is MemberStatus.LEFT and name != leader:
            changes.append(Change(ChangeKind.REMOVE, name))
    for name in sorted(membership.learners):
        s = by_name.get(name)
        if s is not None and s.status is MemberStatus.ALIVE:
            changes.append(Change(ChangeKind.PROMOTE, name))
    for name, s in sorted(by_name.items()):
        if name not in known and s.status is MemberStatus.ALIVE:
            changes.append(Change(ChangeKind.ADD_LEARNER, name))
    return changes
