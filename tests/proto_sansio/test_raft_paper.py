"""Raft core tests named after the sections of the extended Raft paper.

The checklist is etcd's ``raft_paper_test.go`` plus the extensions this core
implements (pre-vote, check-quorum, pipelining, snapshots, membership,
transfer, ReadIndex, group commit).  Nodes are wired together by the small
in-memory :class:`Net` below, or driven one message at a time.
"""

from __future__ import annotations

import random
from collections import deque
from collections.abc import Iterable, Sequence
from typing import TypeVar

import pytest

from dkron.proto_sansio.errors import LocalProtocolError
from dkron.proto_sansio.raft import (
    AppendEntries,
    AppendEntriesResponse,
    AppendLog,
    DurableLog,
    Entry,
    EntryKind,
    Event,
    HardState,
    InstallSnapshot,
    InstallSnapshotResponse,
    LeaderChanged,
    Membership,
    NotLeader,
    PersistedState,
    RaftConfig,
    RaftMessage,
    RaftNode,
    ReadFailed,
    ReadReady,
    Ready,
    RequestVote,
    RequestVoteResponse,
    Role,
    SaveHardState,
    SaveSnapshot,
    Snapshot,
    TimeoutNow,
)

T = TypeVar("T")

ET = 1.0
CFG = RaftConfig(election_timeout=ET, heartbeat_interval=0.1)
CLASSIC = RaftConfig(election_timeout=ET, heartbeat_interval=0.1, pre_vote=False)
ABC = ["a", "b", "c"]


def ents(terms: Sequence[int], start: int = 1) -> tuple[Entry, ...]:
    return tuple(Entry(t, i, EntryKind.NORMAL, b"e%d" % i) for i, t in enumerate(terms, start))


def mk(
    node_id: str = "a",
    ids: Iterable[str] = ABC,
    *,
    terms: Sequence[int] = (),
    term: int | None = None,
    config: RaftConfig = CLASSIC,
    seed: int = 0,
    commit: int = 0,
    now: float = 0.0,
) -> RaftNode:
    boot = PersistedState.bootstrap(ids)
    t = term if term is not None else (max(terms) if terms else 0)
    state = PersistedState(HardState(t, None, commit), boot.snapshot, ents(terms))
    return RaftNode(node_id, config, rng=random.Random(seed), now=now, persisted=state)


def sent(node: RaftNode) -> list[tuple[str, RaftMessage]]:
    return list(node.drain().messages)


def of_type(msgs: list[tuple[str, RaftMessage]], tp: type[T]) -> list[tuple[str, T]]:
    return [(d, m) for d, m in msgs if isinstance(m, tp)]


def timeout(node: RaftNode) -> float:
    """Fire the node's election timer; returns the time used."""
    d = node.next_deadline()
    assert d is not None
    node.handle_timer(d)
    return d


def role(node: RaftNode) -> Role:
    """The role, read through a call so that type narrowing does not stick."""
    return node.role


def make_leader(node: RaftNode, voters: Iterable[str] = ("b", "c")) -> float:
    """Make ``node`` (classic config) leader by feeding it the votes it asks for."""
    now = timeout(node)
    assert role(node) is Role.CANDIDATE
    for v in voters:
        node.receive(RequestVoteResponse(node.term, True, False), src=v, now=now)
        if role(node) is Role.LEADER:
            break
    assert role(node) is Role.LEADER
    return now


class Net:
    """A tiny in-memory cluster: drains every node and delivers in FIFO order."""

    def __init__(
        self,
        ids: Sequence[str],
        config: RaftConfig = CFG,
        *,
        voters: Sequence[str] | None = None,
        seed: int = 0,
    ) -> None:
        boot = PersistedState.bootstrap(voters if voters is not None else ids)
        self.config = config
        self.now = 0.0
        self.nodes: dict[str, RaftNode] = {}
        self.disks: dict[str, DurableLog] = {}
        for i, n in enumerate(ids):
            state = boot if voters is None or n in voters else PersistedState.empty()
            self.disks[n] = DurableLog(state)
            self.nodes[n] = RaftNode(
                n, config, rng=random.Random(seed * 100 + i), now=0.0, persisted=state
            )
        self.applied: dict[str, list[Entry]] = {n: [] for n in ids}
        self.restored: dict[str, list[Snapshot]] = {n: [] for n in ids}
        self.events: dict[str, list[Event]] = {n: [] for n in ids}
        self.queue: deque[tuple[str, str, RaftMessage]] = deque()
        self.cut: set[tuple[str, str]] = set()
        self.down: set[str] = set()
        self.log: list[tuple[str, str, RaftMessage]] = []

    def isolate(self, n: str) -> None:
        for o in self.nodes:
            if o != n:
                self.cut |= {(n, o), (o, n)}

    def heal(self) -> None:
        self.cut.clear()

    def flush(self, n: str) -> None:
        node = self.nodes[n]
        while node.has_ready():
            r = node.drain()
            for rec in r.persist:
                self.disks[n].apply(rec)
            for dst, m in r.messages:
                self.log.append((n, dst, m))
                if (n, dst) not in self.cut and dst not in self.down:
                    self.queue.append((n, dst, m))
            if r.restore is not None:
                self.restored[n].append(r.restore)
            self.applied[n].extend(r.committed)
            self.events[n].extend(r.events)

    def settle(self, limit: int = 100_000) -> None:
        for _ in range(limit):
            for n in self.nodes:
                if n not in self.down:
                    self.flush(n)
            if not self.queue:
                return
            src, dst, m = self.queue.popleft()
            if dst in self.nodes and dst not in self.down:
                self.nodes[dst].receive(m, src=src, now=self.now)
        raise AssertionError("network did not settle")

    def tick(self, dt: float = 0.05) -> None:
        self.now += dt
        for n, node in self.nodes.items():
            d = node.next_deadline()
            if n not in self.down and d is not None and d <= self.now:
                node.handle_timer(self.now)
        self.settle()

    def run(self, seconds: float, dt: float = 0.05) -> None:
        end = self.now + seconds
        while self.now < end:
            self.tick(dt)

    def campaign(self, n: str) -> None:
        """Let ``n`` time out first and settle the election."""
        node = self.nodes[n]
        d = node.next_deadline()
        assert d is not None
        self.now = max(self.now, d)
        node.handle_timer(self.now)
        self.settle()

    def leader(self) -> RaftNode:
        leaders = [x for n, x in self.nodes.items() if x.role is Role.LEADER and n not in self.down]
        assert len(leaders) == 1, [(x.node_id, x.role, x.term) for x in self.nodes.values()]
        return leaders[0]

    def crash(self, n: str) -> None:
        self.down.add(n)

    def restart(self, n: str, seed: int = 99) -> None:
        self.down.discard(n)
        self.applied[n] = []
        self.nodes[n] = RaftNode(
            n, self.config, rng=random.Random(seed), now=self.now, persisted=self.disks[n].state()
        )


# ---------------------------------------------------------------------------
# 5.1 Raft basics
# ---------------------------------------------------------------------------


def test_start_as_follower() -> None:
    n = mk()
    assert n.role is Role.FOLLOWER and n.term == 0 and n.leader_id is None


@pytest.mark.parametrize("role", [Role.FOLLOWER, Role.CANDIDATE, Role.PRE_CANDIDATE, Role.LEADER])
def test_update_term_from_message(role: Role) -> None:
    """5.1: a higher term in any message makes the node a follower of that term."""
    cfg = CFG if role is Role.PRE_CANDIDATE else CLASSIC
    n = mk(config=cfg)
    if role is Role.CANDIDATE or role is Role.PRE_CANDIDATE:
        timeout(n)
    elif role is Role.LEADER:
        make_leader(n)
    assert n.role is role
    n.receive(AppendEntries(5, 0, 0, 0, (), 0), src="b", now=10.0)
    assert (n.role, n.term, n.leader_id) == (Role.FOLLOWER, 5, "b")


def test_reject_stale_term_message() -> None:
    """5.1: a stale AppendEntries gets success=False with the current term."""
    n = mk(term=3)
    n.receive(AppendEntries(2, 0, 0, 0, ents([1]), 0), src="b", now=0.0)
    ((dst, resp),) = sent(n)
    assert dst == "b" and resp == AppendEntriesResponse(3, False, 0, 0, 0, 0)
    assert n.last_index == 0 and n.stats.stale == 1


def test_stale_vote_request_is_rejected_with_current_term() -> None:
    n = mk(term=4)
    n.receive(RequestVote(2, 9, 2, False, False), src="b", now=0.0)
    assert sent(n) == [("b", RequestVoteResponse(4, False, False))]
    assert n.voted_for is None


def test_stale_responses_are_ignored() -> None:
    n = mk(term=4)
    n.receive(RequestVoteResponse(3, True, False), src="b", now=0.0)
    n.receive(AppendEntriesResponse(3, True, 1, 0, 0, 0), src="b", now=0.0)
    assert sent(n) == [] and n.stats.stale == 2


# ---------------------------------------------------------------------------
# 5.2 Leader election
# ---------------------------------------------------------------------------


def test_leader_broadcasts_heartbeats() -> None:
    n = mk()
    now = make_leader(n)
    sent(n)
    for p in ("b", "c"):  # bring both peers to the replicating state
        n.receive(AppendEntriesResponse(n.term, True, 1, 0, 0, 0), src=p, now=now)
    sent(n)
    n.handle_timer(now + CFG.heartbeat_interval)
    beats = of_type(sent(n), AppendEntries)
    assert sorted(d for d, _ in beats) == ["b", "c"]
    assert all(m.entries == () and m.term == n.term for _, m in beats)


@pytest.mark.parametrize("pre_vote", [False, True])
def test_follower_starts_election_on_timeout(pre_vote: bool) -> None:
    """5.2: on timeout a follower (pre-)campaigns: vote for itself, ask every voter."""
    cfg = CFG if pre_vote else CLASSIC
    n = mk(config=cfg, terms=[1, 1], term=1)
    before = n.next_deadline()
    assert before is not None
    n.handle_timer(before - 0.01)
    assert role(n) is Role.FOLLOWER
    timeout(n)
    r = n.drain()
    votes = of_type(list(r.messages), RequestVote)
    assert sorted(d for d, _ in votes) == ["b", "c"]
    for _, m in votes:
        assert (m.term, m.last_log_index, m.last_log_term, m.pre_vote) == (2, 2, 1, pre_vote)
    if pre_vote:
        assert n.role is Role.PRE_CANDIDATE and n.term == 1 and n.voted_for is None
    else:
        assert n.role is Role.CANDIDATE and n.term == 2 and n.voted_for == "a"
        # the vote for ourselves is persisted before the requests go out
        assert SaveHardState(HardState(2, "a", 0)) in r.persist


def test_candidate_restarts_election_on_timeout() -> None:
    n = mk()
    timeout(n)
    assert (n.role, n.term) == (Role.CANDIDATE, 1)
    n.drain()
    timeout(n)
    assert (n.role, n.term) == (Role.CANDIDATE, 2)
    assert n.stats.elections == 2


@pytest.mark.parametrize(
    ("size", "votes", "role"),
    [
        (1, {}, Role.LEADER),
        (3, {"b": True, "c": True}, Role.LEADER),
        (3, {"b": True}, Role.LEADER),
        (5, {"b": True, "c": True, "d": True, "e": True}, Role.LEADER),
        (5, {"b": True, "c": True}, Role.LEADER),
        (3, {"b": False, "c": False}, Role.FOLLOWER),
        (5, {"b": False, "c": False, "d": False}, Role.FOLLOWER),
        (5, {"b": True}, Role.CANDIDATE),
        (5, {"b": True, "c": False, "d": False}, Role.CANDIDATE),
        (5, {}, Role.CANDIDATE),
    ],
)
def test_leader_election_in_one_round(size: int, votes: dict[str, bool], role: Role) -> None:
    """5.2: win with a majority, lose on a majority of rejections, else keep waiting."""
    ids = "abcde"[:size]
    n = mk(ids=ids)
    now = timeout(n)
    for v, ok in votes.items():
        n.receive(RequestVoteResponse(1, ok, False), src=v, now=now)
    assert n.role is role
    assert n.term == 1


@pytest.mark.parametrize(
    ("voted_for", "candidate", "granted"),
    [(None, "b", True), (None, "c", True), ("b", "b", True), ("b", "c", False), ("c", "b", False)],
)
def test_follower_votes_once_per_term(voted_for: str | None, candidate: str, granted: bool) -> None:
    """5.2: at most one vote per term, first come first served (repeats allowed)."""
    boot = PersistedState.bootstrap(ABC)
    n = RaftNode(
        "a",
        CLASSIC,
        rng=random.Random(0),
        now=0.0,
        persisted=PersistedState(HardState(1, voted_for, 0), boot.snapshot, ()),
    )
    n.receive(RequestVote(1, 0, 0, False, False), src=candidate, now=0.0)
    r = n.drain()
    assert r.messages == ((candidate, RequestVoteResponse(1, granted, False)),)
    assert n.voted_for == (candidate if granted else voted_for)


def test_candidate_falls_back_on_append_from_new_leader() -> None:
    """5.2: a candidate that hears from a leader of its term becomes its follower."""
    n = mk()
    now = timeout(n)
    n.receive(AppendEntries(1, 0, 0, 0, (), 0), src="b", now=now)
    assert (n.role, n.term, n.leader_id) == (Role.FOLLOWER, 1, "b")


def test_election_timeouts_are_randomized() -> None:
    """5.2: timeouts spread uniformly over [et, 2*et)."""
    seen = []
    n = mk()
    for _ in range(500):
        d = n.next_deadline()
        assert d is not None
        seen.append(d - n._now)
        n.handle_timer(d)
        n.drain()
    assert all(ET <= x < 2 * ET for x in seen)
    assert min(seen) < ET * 1.1 and max(seen) > ET * 1.9
    assert len({round(x, 3) for x in seen}) > 350


def test_election_timeouts_rarely_conflict() -> None:
    """5.2: with independent random timeouts, one node usually times out first."""
    conflicts = 0
    for seed in range(200):
        deadlines = [mk(x, seed=seed * 7 + i).next_deadline() for i, x in enumerate(ABC)]
        ds = sorted(d for d in deadlines if d is not None)
        if ds[1] - ds[0] < 0.05:  # within one message delay: a split vote is possible
            conflicts += 1
    assert conflicts < 40


def test_vote_request_carries_last_log_term_and_index() -> None:
    """5.4.1: the RequestVote names the candidate's last entry."""
    n = mk(terms=[1, 2, 2], term=3)
    timeout(n)
    for _, m in of_type(sent(n), RequestVote):
        assert (m.term, m.last_log_index, m.last_log_term) == (4, 3, 2)


@pytest.mark.parametrize(
    ("cand_term", "cand_index", "granted"),
    [
        (2, 3, True),  # same last term, same length
        (2, 4, True),  # same last term, longer
        (2, 2, False),  # same last term, shorter
        (3, 1, True),  # higher last term wins regardless of length
        (1, 9, False),  # lower last term loses regardless of length
    ],
)
def test_voter_checks_log_is_up_to_date(cand_term: int, cand_index: int, granted: bool) -> None:
    """5.4.1: grant only to candidates at least as up to date as us."""
    n = mk(terms=[1, 2, 2], term=2)
    n.receive(RequestVote(3, cand_index, cand_term, False, False), src="b", now=0.0)
    ((_, resp),) = sent(n)
    assert isinstance(resp, RequestVoteResponse)
    assert resp.granted is granted
    assert n.term == 3


def test_leader_election_with_net() -> None:
    net = Net(["a", "b", "c", "d", "e"])
    net.campaign("c")
    leader = net.leader()
    assert leader.node_id == "c"
    assert all(x.leader_id == "c" and x.term == leader.term for x in net.nodes.values())
    # the no-op of the new term commits everywhere
    assert all(x.commit_index == 1 for x in net.nodes.values())
    assert all([e.kind for e in net.applied[n]] == [EntryKind.NOOP] for n in net.nodes)


# ---------------------------------------------------------------------------
# 5.3 Log replication
# ---------------------------------------------------------------------------


def test_leader_starts_replication() -> None:
    """5.3: a proposal is appended locally and sent with the previous index/term."""
    n = mk()
    now = make_leader(n)
    sent(n)
    for p in ("b", "c"):
        n.receive(AppendEntriesResponse(1, True, 1, 0, 0, 0), src=p, now=now)
    sent(n)
    idx = n.propose(b"x", now)
    assert idx == 2 and n.last_index == 2
    r = n.drain()
    assert r.persist[0] == AppendLog((Entry(1, 2, EntryKind.NORMAL, b"x"),))
    for _, m in of_type(list(r.messages), AppendEntries):
        assert (m.prev_index, m.prev_term, m.commit) == (1, 1, 1)
        assert m.entries == (Entry(1, 2, EntryKind.NORMAL, b"x"),)


@pytest.mark.parametrize(
    ("size", "acks", "committed"),
    [(1, [], True), (3, [], False), (3, ["b"], True), (5, ["b"], False), (5, ["b", "c"], True)],
)
def test_leader_commits_after_quorum_replication(
    size: int, acks: list[str], committed: bool
) -> None:
    """5.3: an entry commits once a majority (the leader included) stores it."""
    ids = "abcde"[:size]
    n = mk(ids=ids)
    now = timeout(n)
    for v in ids[1:]:
        n.receive(RequestVoteResponse(1, True, False), src=v, now=now)
    n.drain()  # the no-op is now durable on the leader
    for p in acks:
        n.receive(AppendEntriesResponse(1, True, 1, 0, 0, 0), src=p, now=now)
    n.drain()
    assert (n.commit_index == 1) is committed


def test_leader_counts_itself_only_after_its_persist_batch_was_drained() -> None:
    """Group commit: the leader's own append counts once handed to the driver."""
    n = mk()
    now = make_leader(n)
    n.drain()
    n.receive(AppendEntriesResponse(1, True, 1, 0, 0, 0), src="b", now=now)
    n.drain()
    assert n.commit_index == 1
    n.receive(AppendEntriesResponse(1, True, 1, 0, 0, 0), src="c", now=now)
    n.drain()
    first = n.propose(b"p1", now)
    last = n.propose_batch([b"p2", b"p3"], now)
    assert (first, last) == (2, 4)
    # Both followers acknowledge before the leader drained its own append.
    n.receive(AppendEntriesResponse(1, True, 4, 0, 0, 0), src="b", now=now)
    n.receive(AppendEntriesResponse(1, True, 4, 0, 0, 0), src="c", now=now)
    assert n.commit_index == 4  # a follower quorum suffices without the leader
    n2 = mk()
    now = make_leader(n2)
    n2.drain()
    n2.receive(AppendEntriesResponse(1, True, 1, 0, 0, 0), src="b", now=now)
    n2.drain()
    n2.propose_batch([b"x", b"y"], now)
    n2.receive(AppendEntriesResponse(1, True, 3, 0, 0, 0), src="b", now=now)
    assert n2.commit_index == 1  # b alone is not a quorum; our copy is not durable yet
    r = n2.drain()
    assert isinstance(r.persist[0], AppendLog)  # one write for the whole batch
    assert [e.index for e in r.persist[0].entries] == [2, 3]
    assert n2.commit_index == 3  # now it is: the next drain applies
    assert [e.index for e in n2.drain().committed] == [2, 3]


def test_leader_commits_only_current_term_entries_by_counting() -> None:
    """5.4.2 / figure 8: a replicated entry of an older term is not committed by count."""
    n = mk(terms=[1, 2], term=2)
    now = make_leader(n)  # term 3, no-op at index 3
    assert n.term == 3 and n.log_term(3) == 3
    n.drain()
    n.receive(AppendEntriesResponse(3, True, 2, 0, 0, 0), src="b", now=now)
    n.receive(AppendEntriesResponse(3, True, 2, 0, 0, 0), src="c", now=now)
    n.drain()
    assert n.commit_index == 0
    n.receive(AppendEntriesResponse(3, True, 3, 0, 0, 0), src="b", now=now)
    n.drain()
    assert n.commit_index == 3  # the old entry commits with the current one


def test_follower_commits_with_leader_commit() -> None:
    """5.3: a follower commits up to min(leader commit, last new entry)."""
    n = mk()
    n.receive(AppendEntries(1, 0, 0, 1, ents([1, 1]), 0), src="b", now=0.0)
    r = n.drain()
    assert n.commit_index == 1 and [e.index for e in r.committed] == [1]
    n.receive(AppendEntries(1, 2, 1, 5, (), 0), src="b", now=0.0)
    r = n.drain()
    assert n.commit_index == 2 and [e.index for e in r.committed] == [2]
    # The response follows the persisted entries in the same batch.
    n.receive(AppendEntries(1, 2, 1, 2, ents([1], 3), 0), src="b", now=0.0)
    r = n.drain()
    assert isinstance(r.persist[0], AppendLog)
    assert r.messages == (("b", AppendEntriesResponse(1, True, 3, 0, 0, 0)),)


@pytest.mark.parametrize(
    ("prev_term", "prev_index", "success"),
    [(0, 0, True), (1, 1, True), (2, 2, True), (1, 2, False), (3, 3, False)],
)
def test_follower_checks_prev_index_and_term(
    prev_term: int, prev_index: int, success: bool
) -> None:
    """5.3: AppendEntries is accepted only if the log contains the previous entry."""
    n = mk(terms=[1, 2], term=2)
    n.receive(AppendEntries(3, prev_index, prev_term, 0, (), 0), src="b", now=0.0)
    ((_, resp),) = sent(n)
    assert isinstance(resp, AppendEntriesResponse)
    assert resp.success is success


@pytest.mark.parametrize(
    ("prev", "new_terms", "expect"),
    [
        (2, [3], [1, 2, 3]),
        (1, [3], [1, 3]),  # conflicting entry 2 replaced
        (0, [1], [1, 2]),  # already present: nothing truncated
        (0, [1, 2], [1, 2]),
        (1, [2], [1, 2]),
        (0, [3], [3]),
        (2, [], [1, 2]),
    ],
)
def test_follower_appends_and_resolves_conflicts(
    prev: int, new_terms: list[int], expect: list[int]
) -> None:
    """5.3: delete a conflicting entry and all that follow it; append new ones."""
    n = mk(terms=[1, 2], term=2)
    prev_term = [0, 1, 2][prev]
    n.receive(AppendEntries(3, prev, prev_term, 0, ents(new_terms, prev + 1), 0), src="b", now=0)
    assert [n.log_term(i) for i in range(1, n.last_index + 1)] == expect
    r = n.drain()
    disk = DurableLog(PersistedState(HardState(2, None, 0), None, ents([1, 2])))
    for rec in r.persist:
        disk.apply(rec)
    assert [e.term for e in disk.state().entries] == expect


# Figure 7 of the paper: the leader of term 8 and followers (a)-(f).
FIG7_LEADER = [1, 1, 1, 4, 4, 5, 5, 6, 6, 6]
FIG7_FOLLOWERS = [
    [1, 1, 1, 4, 4, 5, 5, 6, 6],
    [1, 1, 1, 4],
    [1, 1, 1, 4, 4, 5, 5, 6, 6, 6, 6],
    [1, 1, 1, 4, 4, 5, 5, 6, 6, 6, 7, 7],
    [1, 1, 1, 4, 4, 4, 4],
    [1, 1, 1, 2, 2, 2, 3, 3, 3, 3, 3],
]


@pytest.mark.parametrize("follower_terms", FIG7_FOLLOWERS)
def test_leader_syncs_follower_log(follower_terms: list[int]) -> None:
    """5.3 / figure 7: the leader brings any follower log in line with its own."""
    leader = mk("a", ["a", "b", "c"], terms=FIG7_LEADER, term=7, config=CLASSIC)
    follower = mk("b", ["a", "b", "c"], terms=follower_terms, term=7, config=CLASSIC)
    now = make_leader(leader, ["c"])  # term 8
    rounds = 0
    queue: deque[tuple[str, str, RaftMessage]] = deque(
        ("a", d, m) for d, m in leader.drain().messages if d == "b"
    )
    while queue:
        rounds += 1
        src, dst, m = queue.popleft()
        node = follower if dst == "b" else leader
        node.receive(m, src=src, now=now)
        queue.extend((dst, d, x) for d, x in node.drain().messages if d in ("a", "b"))
        assert rounds < 50
    assert [follower.log_term(i) for i in range(1, follower.last_index + 1)] == [
        leader.log_term(i) for i in range(1, leader.last_index + 1)
    ]
    # fast backtracking: a handful of round trips, not one per entry
    assert rounds <= 12


def test_fast_backtracking_hint() -> None:
    """A rejection names the conflicting term and its first index."""
    n = mk(terms=[1, 1, 2, 2, 2], term=2)
    n.receive(AppendEntries(3, 5, 3, 0, (), 0), src="b", now=0)
    ((_, resp),) = sent(n)
    assert resp == AppendEntriesResponse(3, False, 5, 2, 3, 0)
    n.receive(AppendEntries(3, 9, 3, 0, (), 0), src="b", now=0)
    ((_, resp),) = sent(n)
    assert resp == AppendEntriesResponse(3, False, 9, 0, 6, 0)


def test_pipelining_respects_the_inflight_window() -> None:
    cfg = RaftConfig(
        election_timeout=ET,
        heartbeat_interval=0.1,
        pre_vote=False,
        max_inflight=2,
        max_append_bytes=100,
    )
    n = mk(config=cfg)
    now = make_leader(n)
    n.drain()
    n.receive(AppendEntriesResponse(1, True, 1, 0, 0, 0), src="b", now=now)
    n.drain()
    for i in range(10):
        n.propose(b"%d" % i * 30, now)  # each entry alone fills a message
    appends = [m for d, m in of_type(sent(n), AppendEntries) if d == "b"]
    assert [len(m.entries) for m in appends] == [1, 1]  # window of two
    assert [m.prev_index for m in appends] == [1, 2]  # optimistic next_index
    n.receive(AppendEntriesResponse(1, True, 2, 0, 0, 0), src="b", now=now)
    appends = [m for d, m in of_type(sent(n), AppendEntries) if d == "b"]
    assert [m.prev_index for m in appends] == [3]  # one slot freed, one more sent
    # c is still probing: exactly one outstanding AppendEntries
    assert n.progress("c") == (0, 1)


def test_batching_bounded_by_max_append_bytes() -> None:
    cfg = RaftConfig(
        election_timeout=ET, heartbeat_interval=0.1, pre_vote=False, max_append_bytes=1000
    )
    n = mk(config=cfg)
    now = make_leader(n)
    n.drain()
    n.receive(AppendEntriesResponse(1, True, 1, 0, 0, 0), src="b", now=now)
    n.drain()
    n.propose_batch([b"x" * 68] * 50, now)  # 100 bytes per entry with overhead
    appends = [m for d, m in of_type(sent(n), AppendEntries) if d == "b"]
    assert sum(len(m.entries) for m in appends) == 50
    assert all(len(m.entries) == 10 for m in appends)
    with pytest.raises(LocalProtocolError):
        n.propose(b"y" * 1000, now)


def test_lost_append_is_recovered_by_heartbeat_probe() -> None:
    net = Net(ABC)
    net.campaign("a")
    leader = net.leader()
    net.cut.add(("a", "b"))
    leader.propose(b"lost", net.now)
    net.settle()
    net.heal()
    net.run(0.5)
    assert net.nodes["b"].last_index == leader.last_index == net.nodes["b"].commit_index


# ---------------------------------------------------------------------------
# extensions: pre-vote, check-quorum, lease
# ---------------------------------------------------------------------------


def test_prevote_does_not_disrupt_a_stable_leader() -> None:
    net = Net(ABC)
    net.campaign("a")
    term = net.leader().term
    net.isolate("c")
    net.run(5.0)  # c times out repeatedly but only pre-votes
    assert net.nodes["c"].term == term
    assert net.nodes["c"].stats.pre_elections >= 2
    net.heal()
    net.run(1.0)
    assert net.leader().node_id == "a" and net.leader().term == term
    assert net.nodes["c"].leader_id == "a"


def test_prevote_not_granted_while_leader_is_heard() -> None:
    n = mk("b", config=CFG)
    n.receive(AppendEntries(1, 0, 0, 0, (), 0), src="a", now=0.0)
    sent(n)
    n.receive(RequestVote(2, 0, 0, True, False), src="c", now=0.5)
    assert sent(n) == [] and n.stats.ignored_votes == 1
    n.receive(RequestVote(2, 0, 0, True, False), src="c", now=1.6)
    assert sent(n) == [("c", RequestVoteResponse(2, True, True))]
    assert n.term == 1  # pre-votes never change the term


def test_check_quorum_leader_steps_down() -> None:
    net = Net(ABC)
    net.campaign("a")
    net.isolate("a")
    net.run(2.5)
    assert net.nodes["a"].role is Role.FOLLOWER
    assert net.nodes["a"].stats.quorum_stepdowns == 1
    assert any(x.role is Role.LEADER for n, x in net.nodes.items() if n != "a")


def test_lease_ignores_vote_requests_from_disruptive_candidates() -> None:
    cfg = RaftConfig(election_timeout=ET, heartbeat_interval=0.1, pre_vote=False)
    n = mk("b", config=cfg)
    n.receive(AppendEntries(1, 0, 0, 0, (), 0), src="a", now=0.0)
    sent(n)
    n.receive(RequestVote(5, 0, 0, False, False), src="c", now=0.2)
    assert n.term == 1 and sent(n) == []
    # a transfer bypasses the lease
    n.receive(RequestVote(5, 0, 0, False, True), src="c", now=0.2)
    assert n.term == 5 and sent(n) == [("c", RequestVoteResponse(5, True, False))]


# ---------------------------------------------------------------------------
# snapshots
# ---------------------------------------------------------------------------


def test_compaction_and_snapshot_install_in_chunks() -> None:
    cfg = RaftConfig(election_timeout=ET, heartbeat_interval=0.1, snapshot_chunk_bytes=10)
    net = Net(ABC, cfg)
    net.campaign("a")
    leader = net.leader()
    net.crash("c")
    for i in range(20):
        leader.propose(b"cmd%d" % i, net.now)
        net.settle()
    assert leader.applied_index == 21
    state = b"S" * 35
    leader.compact(21, state)
    r = leader.drain()
    for rec in r.persist:
        net.disks["a"].apply(rec)
    assert r.persist == (
        SaveSnapshot(Snapshot(21, 1, Membership(frozenset(ABC), frozenset()), state)),
    )
    assert leader.first_index == 22 and leader.entry(21) is None and leader.log_term(21) == 1
    assert net.disks["a"].state().entries == ()
    with pytest.raises(LocalProtocolError):
        leader.compact(21, b"")
    net.log.clear()
    net.restart("c")
    net.run(1.0)
    chunks = [m for s, d, m in net.log if isinstance(m, InstallSnapshot) and d == "c"]
    assert [m.offset for m in chunks[:4]] == [0, 10, 20, 30]
    c = net.nodes["c"]
    assert net.restored["c"][-1].data == state
    assert c.snapshot_index == 21 and c.commit_index == leader.commit_index
    assert net.disks["c"].state().snapshot == net.restored["c"][-1]
    leader.propose(b"after", net.now)
    net.settle()
    # after its restart c re-applied its committed no-op, then the snapshot, then this
    assert [e.data for e in net.applied["c"] if e.index > 21] == [b"after"]
    assert [e.index for e in net.applied["c"]] == [1, 22]


def test_restart_restores_snapshot_and_reapplies_committed_entries() -> None:
    net = Net(ABC)
    net.campaign("a")
    leader = net.leader()
    leader.propose_batch([b"1", b"2", b"3"], net.now)
    net.settle()
    net.nodes["b"].compact(2, b"upto2")
    net.flush("b")
    net.crash("b")
    net.restart("b")
    b = net.nodes["b"]
    r = b.drain()
    assert r.restore is not None and r.restore.data == b"upto2"
    assert [e.data for e in r.committed] == [b"2", b"3"]
    assert b.applied_index == 4 and b.term == leader.term


def test_snapshot_chunk_with_wrong_offset_asks_for_resend() -> None:
    n = mk("b")
    m = Membership(frozenset(ABC), frozenset())
    n.receive(InstallSnapshot(1, 5, 1, m, 4, 8, b"abcd"), src="a", now=0)
    assert sent(n) == [("a", InstallSnapshotResponse(1, 5, 0, 0))]
    n.receive(InstallSnapshot(1, 5, 1, m, 0, 8, b"abcd"), src="a", now=0)
    assert sent(n) == [("a", InstallSnapshotResponse(1, 5, 4, 0))]
    n.receive(InstallSnapshot(1, 5, 1, m, 4, 8, b"efgh"), src="a", now=0)
    assert sent(n) == [("a", InstallSnapshotResponse(1, 5, 8, 5))]
    assert n.commit_index == 5 and n.snapshot_index == 5


# ---------------------------------------------------------------------------
# membership
# ---------------------------------------------------------------------------


def test_membership_add_learner_promote_remove() -> None:
    net = Net(["a", "b", "c", "d"], voters=ABC)
    net.campaign("a")
    leader = net.leader()
    assert net.nodes["d"].membership == Membership(frozenset(), frozenset())
    leader.propose_batch([b"x"] * 5, net.now)
    net.settle()
    idx = leader.add_learner("d", net.now)
    assert leader.membership.learners == {"d"}  # in force once appended
    with pytest.raises(LocalProtocolError):
        leader.remove("b", net.now)  # one uncommitted change at a time
    net.settle()
    assert leader.commit_index >= idx
    d = net.nodes["d"]
    assert d.membership == leader.membership and d.last_index == leader.last_index
    assert d.role is Role.FOLLOWER
    leader.promote("d", net.now)
    net.settle()
    assert d.membership.voters == {"a", "b", "c", "d"}
    leader.remove("b", net.now)
    net.settle()
    assert "b" not in leader.membership.members
    # b can no longer depose the leader: its replies are dropped, its votes
    # refused by the leader's lease
    before, term = leader.stats.dropped, leader.term
    leader.receive(AppendEntriesResponse(term, True, 99, 0, 0, 0), src="b", now=net.now)
    assert leader.stats.dropped == before + 1
    ignored = leader.stats.ignored_votes
    leader.receive(RequestVote(term + 1, 99, term, False, False), src="b", now=net.now)
    assert leader.stats.ignored_votes == ignored + 1
    assert leader.role is Role.LEADER and leader.term == term


def test_promote_refused_while_learner_lags() -> None:
    cfg = RaftConfig(election_timeout=ET, heartbeat_interval=0.1, promote_lag=3)
    net = Net(["a", "b", "c", "d"], cfg, voters=ABC)
    net.campaign("a")
    leader = net.leader()
    leader.add_learner("d", net.now)
    net.settle()
    net.crash("d")
    leader.propose_batch([b"x"] * 10, net.now)
    net.settle()
    with pytest.raises(LocalProtocolError, match="lags"):
        leader.promote("d", net.now)
    with pytest.raises(LocalProtocolError):
        leader.promote("b", net.now)  # not a learner
    with pytest.raises(LocalProtocolError):
        leader.add_learner("b", net.now)  # already a member


def test_removed_leader_steps_down_after_commit() -> None:
    net = Net(ABC)
    net.campaign("a")
    leader = net.leader()
    idx = leader.remove("a", net.now)
    assert leader.role is Role.LEADER  # until the entry commits
    net.settle()
    assert net.nodes["a"].role is Role.FOLLOWER
    assert net.nodes["b"].commit_index >= idx
    net.run(8.0, dt=0.01)
    new = net.leader()
    assert new.node_id in ("b", "c") and new.membership.voters == {"b", "c"}
    assert net.nodes["a"].role is Role.FOLLOWER  # never campaigns again


def test_messages_from_non_members_are_ignored() -> None:
    n = mk("a")
    n.receive(AppendEntriesResponse(0, True, 0, 0, 0, 0), src="zz", now=0)
    n.receive(TimeoutNow(1), src="zz", now=0)
    n.receive(AppendEntries(1, 0, 0, 0, (), 0), src="a", now=0)  # from ourselves
    assert n.term == 0 and sent(n) == [] and n.stats.dropped == 3
    # ...but an AppendEntries of our term or newer comes from a legitimate leader
    n.receive(AppendEntries(1, 0, 0, 0, (), 0), src="new", now=0)
    assert n.leader_id == "new"


def test_a_vote_request_from_outside_our_configuration_is_answered() -> None:
    """Our latest configuration may lack a change the candidate's log holds.

    Here ``a`` still has ``{a, b, c}`` while ``d``, whose log is longer, may be
    a voter of a newer configuration: ignoring it could leave no candidate
    able to win.  The usual rules decide the answer.
    """
    n = mk("a", terms=[1])
    n.receive(RequestVote(2, 2, 1, True, False), src="d", now=0)
    [(to, granted)] = of_type(sent(n), RequestVoteResponse)
    assert to == "d" and granted == RequestVoteResponse(2, True, True)
    assert n.term == 1  # a pre-vote changes nothing
    n.receive(RequestVote(2, 0, 0, False, False), src="e", now=0)  # shorter log: refused
    [(to, refused)] = of_type(sent(n), RequestVoteResponse)
    assert to == "e" and refused == RequestVoteResponse(2, False, False)


def test_joining_node_accepts_anyone_until_it_knows_the_configuration() -> None:
    n = RaftNode("d", CFG, rng=random.Random(0), now=0.0, persisted=PersistedState.empty())
    assert n.membership.voters == frozenset()
    n.handle_timer(10.0)  # not a voter: never campaigns
    assert n.role is Role.FOLLOWER and n.term == 0
    n.receive(AppendEntries(1, 0, 0, 0, ents([1]), 0), src="a", now=10.0)
    assert n.last_index == 1


# ---------------------------------------------------------------------------
# leadership transfer
# ---------------------------------------------------------------------------


def test_transfer_leadership() -> None:
    net = Net(ABC)
    net.campaign("a")
    leader = net.leader()
    net.crash("c")
    leader.propose(b"x", net.now)
    net.settle()
    net.down.discard("c")  # c is back but behind
    leader.transfer_leadership("c", net.now)
    with pytest.raises(NotLeader) as exc:
        leader.propose(b"y", net.now)
    assert exc.value.leader is None
    net.settle()
    assert any(isinstance(m, TimeoutNow) for _, d, m in net.log if d == "c")
    assert net.leader().node_id == "c"
    assert net.nodes["a"].leader_id == "c"


def test_transfer_aborts_after_election_timeout() -> None:
    net = Net(ABC)
    net.campaign("a")
    leader = net.leader()
    net.isolate("c")
    leader.transfer_leadership("c", net.now)
    with pytest.raises(LocalProtocolError):
        leader.transfer_leadership("zz", net.now)
    net.cut.discard(("a", "b"))
    net.cut.discard(("b", "a"))
    net.run(1.2)
    assert leader.role is Role.LEADER and leader.transfer_target is None
    assert leader.stats.transfers_aborted == 1
    assert leader.propose(b"ok", net.now) > 0


# ---------------------------------------------------------------------------
# ReadIndex and NotLeader
# ---------------------------------------------------------------------------


def test_read_index_confirms_leadership_with_a_quorum() -> None:
    net = Net(ABC)
    net.campaign("a")
    leader = net.leader()
    leader.propose(b"x", net.now)
    net.settle()
    net.events["a"].clear()
    net.crash("b")
    net.crash("c")
    leader.read_index(7, net.now)
    net.settle()
    assert not any(isinstance(e, ReadReady) for e in net.events["a"])
    net.down.clear()
    net.run(0.2)
    assert ReadReady(7, 2) in net.events["a"]


def test_read_index_waits_for_first_commit_of_the_term() -> None:
    n = mk()
    now = make_leader(n)
    n.drain()
    n.read_index(1, now)
    assert n.drain().events == ()
    n.receive(AppendEntriesResponse(1, True, 1, 0, 0, 0), src="b", now=now)
    r = n.drain()  # the no-op commits; the read now starts its heartbeat round
    beats = of_type(list(r.messages), AppendEntries)
    assert beats and all(m.seq == 1 for _, m in beats)
    n.receive(AppendEntriesResponse(1, True, 1, 0, 0, 1), src="c", now=now)
    assert ReadReady(1, 1) in n.drain().events


def test_reads_fail_when_leadership_is_lost() -> None:
    n = mk()
    now = make_leader(n)
    n.drain()
    n.read_index(1, now)
    n.receive(AppendEntries(2, 0, 0, 0, (), 0), src="b", now=now)
    assert ReadFailed(1) in n.drain().events


def test_single_node_read_is_immediate() -> None:
    n = mk("a", ["a"])
    timeout(n)
    assert n.role is Role.LEADER
    n.drain()
    n.drain()
    assert n.commit_index == 1
    n.read_index(3, 5.0)
    assert n.drain().events == (ReadReady(3, 1),)


def test_follower_raises_not_leader_with_hint() -> None:
    n = mk("b")
    with pytest.raises(NotLeader) as exc:
        n.propose(b"x", 0.0)
    assert exc.value.leader is None and isinstance(exc.value, LocalProtocolError)
    n.receive(AppendEntries(1, 0, 0, 0, (), 0), src="a", now=0.0)
    for call in (
        lambda: n.propose(b"x", 0.0),
        lambda: n.propose_batch([b"x"], 0.0),
        lambda: n.read_index(1, 0.0),
        lambda: n.add_learner("d", 0.0),
        lambda: n.transfer_leadership("c", 0.0),
    ):
        with pytest.raises(NotLeader) as exc:
            call()
        assert exc.value.leader == "a"


def test_leader_change_events() -> None:
    net = Net(ABC)
    net.campaign("b")
    assert LeaderChanged(1, "b") in net.events["a"]
    assert LeaderChanged(1, "b") in net.events["b"]


def test_ready_has_nothing_when_idle() -> None:
    n = mk()
    n.drain()
    assert not n.has_ready()
    assert n.drain() == Ready((), (), (), None, ())


# ---------------------------------------------------------------------------
# robustness and misuse
# ---------------------------------------------------------------------------


def test_responses_claiming_unknown_entries_are_dropped() -> None:
    n = mk()
    now = make_leader(n)
    n.drain()
    n.receive(AppendEntriesResponse(1, True, 50, 0, 0, 0), src="b", now=now)
    n.receive(InstallSnapshotResponse(1, 3, 0, 50), src="c", now=now)
    assert n.stats.dropped == 2 and n.progress("b") == (0, 1) and n.progress("c") == (0, 1)
    assert n.commit_index == 0


def test_stale_install_snapshot_gets_current_term() -> None:
    n = mk(term=5)
    m = Membership(frozenset(ABC), frozenset())
    n.receive(InstallSnapshot(3, 9, 2, m, 0, 1, b"x"), src="b", now=0)
    assert sent(n) == [("b", InstallSnapshotResponse(5, 9, 0, 0))]
    assert n.snapshot_index == 0


def test_install_snapshot_already_covered_or_matching() -> None:
    m = Membership(frozenset(ABC), frozenset())
    n = mk("b", terms=[1, 1, 1], term=1, commit=2)
    n.receive(InstallSnapshot(1, 2, 1, m, 0, 1, b"x"), src="a", now=0)
    assert sent(n) == [("a", InstallSnapshotResponse(1, 2, 1, 2))]  # already committed
    n.receive(InstallSnapshot(1, 3, 1, m, 0, 1, b"x"), src="a", now=0)
    assert sent(n) == [("a", InstallSnapshotResponse(1, 3, 1, 3))]
    # the log already holds entry 3 of term 1: keep the log, just commit
    assert n.snapshot_index == 0 and n.commit_index == 3 and n.last_index == 3
    assert n.drain().restore is None


def test_durable_log_semantics() -> None:
    mem = Membership(frozenset("a"), frozenset())
    d = DurableLog(PersistedState(HardState(1, None, 0), Snapshot(2, 1, mem, b""), ents([1, 1], 3)))
    assert d.last_index == 4
    d.apply(AppendLog(ents([1, 1, 2], 2)))  # entry 2 is in the snapshot: skipped
    assert [e.index for e in d.state().entries] == [3, 4]
    assert [e.term for e in d.state().entries] == [1, 2]
    d.apply(AppendLog(ents([1], 1)))  # wholly covered by the snapshot
    d.apply(AppendLog(()))
    with pytest.raises(LocalProtocolError):
        d.apply(AppendLog(ents([2], 9)))  # a gap
    d.apply(SaveSnapshot(Snapshot(1, 1, mem, b"old")))  # older than ours: ignored
    assert d.state().snapshot == Snapshot(2, 1, mem, b"")
    d.apply(SaveSnapshot(Snapshot(3, 1, mem, b"s3")))  # matches entry 3: keep the rest
    assert [e.index for e in d.state().entries] == [4]
    d.apply(SaveSnapshot(Snapshot(6, 3, mem, b"s6")))  # conflicts: drop everything
    assert d.state().entries == () and d.state().snapshot == Snapshot(6, 3, mem, b"s6")
    with pytest.raises(LocalProtocolError):
        d.apply(HardState(1, None, 0))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="contiguously"):
        PersistedState(HardState(0, None, 0), None, ents([1], 2))
    with pytest.raises(ValueError, match="voter"):
        PersistedState.bootstrap([])


@pytest.mark.parametrize(
    "kwargs",
    [
        {"election_timeout": 0},
        {"heartbeat_interval": 2.0},
        {"max_append_bytes": 10},
        {"max_inflight": 0},
        {"snapshot_chunk_bytes": 0},
        {"promote_lag": -1},
    ],
)
def test_config_is_validated(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        RaftConfig(**kwargs)  # type: ignore[arg-type]


def test_structs_are_validated() -> None:
    with pytest.raises(ValueError):
        Entry(0, 1, EntryKind.NORMAL, b"")
    with pytest.raises(ValueError):
        Entry(1, 1, EntryKind.CONFIG, b"\x80")
    with pytest.raises(ValueError):
        Membership(frozenset({""}), frozenset())
    with pytest.raises(ValueError):
        HardState(-1, None, 0)
    with pytest.raises(ValueError):
        Snapshot(3, 0, Membership(frozenset("a"), frozenset()), b"")
    with pytest.raises(LocalProtocolError):
        RaftNode("", CFG, rng=random.Random(0), now=0.0, persisted=PersistedState.empty())


def test_leader_rejects_misuse() -> None:
    n = mk()
    now = make_leader(n)
    n.drain()
    with pytest.raises(LocalProtocolError):
        n.propose_batch([], now)
    with pytest.raises(LocalProtocolError):
        n.propose_batch([b"x" * CFG.max_append_bytes], now)
    with pytest.raises(LocalProtocolError):
        n.remove("zz", now)
    with pytest.raises(LocalProtocolError, match="not applied"):
        n.compact(1, b"")
    single = mk("a", ["a"])
    timeout(single)
    with pytest.raises(LocalProtocolError, match="voter"):
        single.remove("a", 5.0)
    n.transfer_leadership("a", now)  # to ourselves: nothing to do
    assert n.transfer_target is None


def test_absurd_rejection_hint_cannot_push_next_beyond_the_log() -> None:
    n = mk()
    now = make_leader(n)
    n.drain()
    n.receive(AppendEntriesResponse(1, True, 1, 0, 0, 0), src="b", now=now)
    n.drain()
    n.receive(AppendEntriesResponse(1, False, 2**40, 2**40, 2**40, 0), src="b", now=now)
    assert n.progress("b") == (1, 2)
    n.drain()
    n.handle_timer(now + 0.2)  # probing from there works (no snapshot needed)
    assert n.drain().messages
