"""Bootstrap and reconcile decisions from gossip's view of the servers."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from dkron.proto_sansio.raft import Membership
from dkron.proto_sansio.servers import (
    BootstrapDecision,
    Change,
    ChangeKind,
    ServerInfo,
    bootstrap_decision,
    parse_rpc_addr,
    reconcile_changes,
    server_info,
)
from dkron.proto_sansio.swim import Member, MemberStatus

NAMES = [f"s{i}" for i in range(6)]


def srv(
    name: str,
    status: MemberStatus = MemberStatus.ALIVE,
    *,
    expect: int | None = 3,
    region: str = "global",
    bootstrap: bool = False,
) -> ServerInfo:
    return ServerInfo(
        name=name,
        region=region,
        status=status,
        expect=expect,
        bootstrap=bootstrap,
        rpc_addr=("127.0.0.1", 6868),
    )


def member(tags: dict[str, str], addr: str = "10.0.0.5") -> Member:
    return Member(
        name="n",
        addr=addr,
        port=8946,
        tags=tags,
        status=MemberStatus.ALIVE,
        suspect=False,
        incarnation=1,
    )


def test_is_server_needs_role_server_and_a_numeric_port() -> None:
    base = {"role": "dkron", "server": "true", "port": "6868", "expect": "3"}
    info = server_info(member(base))
    assert info is not None and info.expect == 3 and info.rpc_addr == ("10.0.0.5", 6868)
    assert server_info(member({**base, "server": "false"})) is None
    assert server_info(member({**base, "role": "other"})) is None
    assert server_info(member({**base, "port": "x"})) is None
    tagged = server_info(member({**base, "rpc_addr": "[::1]:7000", "bootstrap": "1"}))
    assert tagged is not None and tagged.rpc_addr == ("::1", 7000) and tagged.bootstrap


def test_rpc_addr_tag_wins_over_the_gossip_address() -> None:
    assert parse_rpc_addr({"rpc_addr": "10.1.1.1:7000", "port": "6868"}, "h") == ("10.1.1.1", 7000)
    assert parse_rpc_addr({"rpc_addr": "garbage", "port": "6868"}, "h") == ("h", 6868)
    assert parse_rpc_addr({"rpc_addr": "1.2.3.4:0"}, "h") is None
    assert parse_rpc_addr({}, "h") is None


def test_bootstrap_waits_for_expect_servers_then_names_all_of_them() -> None:
    seen = [srv("s2")]
    decision, names, _ = bootstrap_decision(seen, me="s1", expect=3, region="global")
    assert decision is BootstrapDecision.WAIT and names == ("s1", "s2")
    seen.append(srv("s3"))
    decision, names, _ = bootstrap_decision(seen, me="s1", expect=3, region="global")
    assert decision is BootstrapDecision.READY and names == ("s1", "s2", "s3")


def test_bootstrap_refuses_disagreement_and_lone_bootstrappers() -> None:
    conflict, _, why = bootstrap_decision(
        [srv("s2"), srv("s3", expect=5)], me="s1", expect=3, region="global"
    )
    assert conflict is BootstrapDecision.CONFLICT and "expects 5" in why
    conflict, _, why = bootstrap_decision(
        [srv("s2", bootstrap=True, expect=None), srv("s3")], me="s1", expect=3, region="global"
    )
    assert conflict is BootstrapDecision.CONFLICT and "bootstrap" in why


servers = st.lists(
    st.builds(
        srv,
        st.sampled_from(NAMES),
        st.sampled_from(list(MemberStatus)),
        expect=st.just(3),
        region=st.sampled_from(["global", "eu"]),
    ),
    unique_by=lambda s: s.name,
    max_size=6,
)


@given(servers, st.permutations(range(6)))
def test_every_server_seeing_the_same_members_decides_the_same_configuration(
    seen: list[ServerInfo], order: list[int]
) -> None:
    """Concurrent bootstrappers agree: the decision does not depend on who decides or the order."""
    alive = [s.name for s in seen if s.status is MemberStatus.ALIVE and s.region == "global"]
    decisions = set()
    for me in alive:
        shuffled = [seen[i] for i in order if i < len(seen)]
        decisions.add(bootstrap_decision(shuffled, me=me, expect=3, region="global")[:2])
    assert len(decisions) <= 1
    for decision, names in decisions:
        assert (decision is BootstrapDecision.READY) == (len(alive) >= 3)
        assert set(names) == set(alive)


memberships = st.builds(
    lambda voters, learners: Membership(frozenset(voters), frozenset(learners) - set(voters)),
    st.sets(st.sampled_from(NAMES), min_size=1),
    st.sets(st.sampled_from(NAMES)),
)


@given(servers, memberships, st.sampled_from(NAMES))
def test_reconcile_adds_alive_removes_left_and_never_touches_failed_or_itself(
    seen: list[ServerInfo], membership: Membership, leader: str
) -> None:
    changes = reconcile_changes(seen, membership, leader=leader, region="global")
    by_name = {s.name: s for s in seen if s.region == "global"}
    assert len(changes) == len(set(changes))
    kinds_seen: list[ChangeKind] = []
    for change in changes:
        s = by_name[change.node]
        kinds_seen.append(change.kind)
        if change.kind is ChangeKind.REMOVE:
            assert s.status is MemberStatus.LEFT and change.node in membership.members
            assert change.node != leader
        elif change.kind is ChangeKind.PROMOTE:
            assert change.node in membership.learners and s.status is MemberStatus.ALIVE
        else:
            assert change.node not in membership.members and s.status is MemberStatus.ALIVE
    # Removals first, then promotions, then additions.
    order = [ChangeKind.REMOVE, ChangeKind.PROMOTE, ChangeKind.ADD_LEARNER]
    assert kinds_seen == sorted(kinds_seen, key=order.index)
    # Everything that should change is proposed.
    for name, s in by_name.items():
        if s.status is MemberStatus.ALIVE and name not in membership.members:
            assert Change(ChangeKind.ADD_LEARNER, name) in changes
        if s.status is MemberStatus.FAILED:
            assert all(c.node != name for c in changes if c.kind is ChangeKind.REMOVE)


def test_other_regions_are_ignored() -> None:
    m = Membership(frozenset({"s1"}), frozenset())
    changes = reconcile_changes([srv("s2", region="eu")], m, leader="s1", region="global")
    assert changes == []
