"""Whole Raft clusters in virtual time, with the safety properties checked on every step.

:class:`RaftCluster` runs :class:`~dkron.proto_sansio.raft.RaftNode` cores on
the shared simulator (:mod:`dkron.testing.sim`).  Each :class:`RaftHost`
follows the driver contract exactly as the real agent does — persist the
batch's records into a :class:`~dkron.proto_sansio.raft.DurableLog`, then send
its messages (encoded to bytes and decoded again on arrival, so the wire codec
is exercised too), then apply its committed entries — and on a crash keeps
only the durable log.

The application state of every host is the sequence of commands it applied;
snapshots serialise that sequence, so compaction and InstallSnapshot are
checked for real: a host restored from a snapshot must end up with the same
applied history as one that replayed the log.

Checked after every step of the event loop (:meth:`RaftCluster.check_step`):

* election safety — at most one leader per term, ever;
* leader append-only — a leader never shortens its log or rewrites an entry
  within its term;
* state-machine safety — no two hosts apply different entries at one index,
  and every host applies indexes in order without gaps;
* leader completeness — a node that becomes leader holds every entry that was
  committed before (checked at the moment it wins);
* durability — everything a host applied is still in its durable state
  (snapshot or log) after a crash, so committed entries survive restarts.

Log matching over the full logs is checked by :meth:`RaftCluster.check_logs`
(more expensive, called periodically and at the end).
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Sequence
from typing import Any

import cbor2

from dkron.proto_sansio.codec import decode_message, encode_message
from dkron.proto_sansio.errors import LocalProtocolError
from dkron.proto_sansio.raft import (
    DurableLog,
    Entry,
    EntryKind,
    LeaderChanged,
    NotLeader,
    PersistedState,
    RaftConfig,
    RaftNode,
    ReadReady,
    Role,
    Snapshot,
)
from dkron.testing.sim import EventLoop, Host, LinkFaults, Network

__all__ = ["InvariantViolation", "RaftCluster", "RaftHost"]


class InvariantViolation(AssertionError):
    """A Raft safety property was broken; the message says which and where."""


#: What the checks remember of an entry's bytes.
Digest = tuple[int, int]


def digest(data: bytes) -> Digest:
    """The length and hash of ``data``: equal bytes always give equal digests,
    and unequal ones (a disagreement between hosts) equal ones with a chance
    of about 2**-64.  Python caches a bytes object's hash, and the hosts share
    each entry's bytes object, so each entry is hashed about once."""
    return (len(data), hash(data))


def _encode_app(applied: Sequence[tuple[int, bytes]]) -> bytes:
    return cbor2.dumps([[i, d] for i, d in applied])


def _decode_app(data: bytes) -> list[tuple[int, bytes]]:
    return [(int(i), bytes(d)) for i, d in cbor2.loads(data)]


class RaftHost(Host):
    """A node that drives one RaftNode exactly as the agent's driver does."""

    def __init__(
        self,
        node_id: str,
        cluster: RaftCluster,
        initial: PersistedState,
    ) -> None:
        super().__init__(node_id, cluster.loop, cluster.network)
        self.cluster = cluster
        self.name = node_id
        self.durable = DurableLog(initial)
        self.node: RaftNode | None = None
        # Application state: the (index, data) of every NORMAL entry applied.
        self.app: list[tuple[int, bytes]] = []
        self.applied_index = 0
        self.reads: dict[int, int] = {}

    # -- Host hooks -------------------------------------------------------------

    def boot(self) -> None:
        persisted = self.durable.state()
        seed = self.cluster.rng.getrandbits(32)
        self.node = RaftNode(
            self.name,
            self.cluster.config,
            rng=random.Random(seed),
            now=self.loop.now,
            persisted=persisted,
        )
        if persisted.snapshot is not None and persisted.snapshot.index > 0:
            self._restore(persisted.snapshot)
        else:
            self.app = []
            self.applied_index = 0

    def lose_volatile_state(self) -> None:
        self.cluster.check_durable(self)
        self.node = None
        self.app = []
        self.applied_index = 0
        self.reads.clear()

    def deliver(self, src: Any, msg: Any) -> None:
        assert self.node is not None
        decoded = decode_message(msg) if isinstance(msg, bytes) else msg
        self.node.receive(decoded, src=str(src), now=self.loop.now)

    def wake(self) -> None:
        assert self.node is not None
        self.node.handle_timer(self.loop.now)

    def deadline(self) -> float | None:
        return None if self.node is None else self.node.next_deadline()

    def flush(self) -> None:
        node = self.node
        if node is None:
            return
        while node.has_ready():
            ready = node.drain()
            for record in ready.persist:
                self.durable.apply(record)
            for dst, msg in ready.messages:
                if self.cluster.wire:
                    body = encode_message(msg)
                    self.send_raft(dst, body, len(body))
                else:
                    self.send_raft(dst, msg, 0)
            if ready.restore is not None:
                self._restore(ready.restore)
            for entry in ready.committed:
                self._apply(entry)
            for event in ready.events:
                if isinstance(event, ReadReady):
                    self.reads[event.request_id] = event.index
                    self.cluster.on_read(self, event.request_id, event.index)
                elif isinstance(event, LeaderChanged):
                    self.cluster.on_leader(self, event)

    # -- application ------------------------------------------------------------

    def _restore(self, snapshot: Snapshot) -> None:
        self.app_restore(snapshot.data)
        self.applied_index = snapshot.index
        self.cluster.check_restored(self, snapshot)

    def _apply(self, entry: Entry) -> None:
        if entry.index != self.applied_index + 1:
            raise InvariantViolation(
                f"{self.name} applied index {entry.index} after {self.applied_index}"
            )
        self.applied_index = entry.index
        if entry.kind == EntryKind.NORMAL:
            self.app_apply(entry)
        self.cluster.on_apply(self, entry)

    def send_raft(self, dst: str, msg: object, size: int) -> None:
        """Put a Raft message on the network (subclasses multiplex channels)."""
        self.network.send(self.name, dst, msg, size=size)

    # -- application hooks (subclasses run a real state machine here) ---------

    def app_apply(self, entry: Entry) -> None:
        """Apply one committed NORMAL entry to the application state.

        Here the state is the list of applied entries; a subclass with a real
        state machine keeps that instead (and not every entry's bytes for ever).
        """
        self.app.append((entry.index, entry.data))

    def app_snapshot(self) -> bytes:
        """The application state as snapshot bytes."""
        return _encode_app(self.app)

    def app_restore(self, data: bytes) -> None:
        """Replace the application state with a snapshot's."""
        self.app = _decode_app(data) if data else []

    def take_snapshot(self) -> None:
        """Compact the log at the applied index, as the agent does periodically."""
        if self.node is not None and self.applied_index > self.node.snapshot_index:
            self.node.compact(self.applied_index, self.app_snapshot())
            self.poke()


class RaftCluster:
    """N Raft hosts on a seeded network, with every safety property checked as it runs."""

    def __init__(
        self,
        members: Iterable[str],
        *,
        seed: int,
        spares: Iterable[str] = (),
        config: RaftConfig | None = None,
        faults: LinkFaults | None = None,
        wire: bool = True,
    ) -> None:
        self.rng = random.Random(seed)
        self.loop = EventLoop()
        self.network = Network(self.loop, random.Random(self.rng.getrandbits(32)), faults)
        self.config = config or RaftConfig()
        self.wire = wire
        voters = list(members)
        self.hosts: dict[str, RaftHost] = {}
        for name in voters:
            self.hosts[name] = self._make_host(name, PersistedState.bootstrap(voters))
        for name in spares:
            self.hosts[name] = self._make_host(name, PersistedState.empty())
        # Global knowledge used by the invariant checks.
        self.leaders: dict[int, str] = {}
        # index -> (term, kind, digest of the data): every entry ever committed,
        # without keeping its bytes alive (the cluster benchmark commits well
        # over 100 MB of entries in its hour).
        self.committed: dict[int, tuple[int, int, Digest]] = {}
        self.max_committed = 0
        self._leader_view: dict[str, tuple[int, int, int | None]] = {}
        self.proposed: dict[bytes, int] = {}
        self.reads_done: list[tuple[str, int, int, int]] = []  # (host, req, index, floor)
        self._read_floor: dict[tuple[str, int], int] = {}
        self._next_request = 0
        self._payload = 0
        for host in self.hosts.values():
            host.start()

    def _make_host(self, name: str, initial: PersistedState) -> RaftHost:
        return RaftHost(name, self, initial)

    # -- driving ----------------------------------------------------------------

    def run(self, seconds: float, *, check: bool = True) -> None:
        self.loop.run_until(self.loop.now + seconds, after_step=self.check_step if check else None)

    def up_hosts(self) -> list[RaftHost]:
        return [h for h in self.hosts.values() if h.up and h.node is not None]

    def leader(self) -> RaftHost | None:
        """The leader of the highest term among live hosts, if any."""
        best: tuple[int, RaftHost] | None = None
        for host in self.up_hosts():
            node = host.node
            assert node is not None
            if node.role == Role.LEADER and (best is None or node.term > best[0]):
                best = (node.term, host)
        return None if best is None else best[1]

    def next_payload(self) -> bytes:
        self._payload += 1
        return b"cmd-%d" % self._payload

    def propose(self, count: int = 1, *, via: str | None = None) -> list[bytes]:
        """Propose ``count`` fresh commands at the leader (or ``via``); return those accepted."""
        host = self.hosts[via] if via is not None else self.leader()
        if host is None or host.node is None:
            return []
        datas = [self.next_payload() for _ in range(count)]
        try:
            last = host.node.propose_batch(datas, self.loop.now)
        except LocalProtocolError:
            return []
        for offset, data in enumerate(datas):
            self.proposed[data] = last - len(datas) + 1 + offset
        host.poke()
        return datas

    def read(self, via: str | None = None) -> int | None:
        """Start a linearizable read; the floor it must respect is the commit index seen now."""
        host = self.hosts[via] if via is not None else self.leader()
        if host is None or host.node is None:
            return None
        self._next_request += 1
        req = self._next_request
        try:
            host.node.read_index(req, self.loop.now)
        except NotLeader:
            return None
        self._read_floor[(host.name, req)] = self.max_committed
        host.poke()
        return req

    def membership_change(self, op: str, target: str) -> bool:
        leader = self.leader()
        if leader is None or leader.node is None:
            return False
        try:
            if op == "add":
                leader.node.add_learner(target, self.loop.now)
            elif op == "promote":
                leader.node.promote(target, self.loop.now)
            else:
                leader.node.remove(target, self.loop.now)
        except LocalProtocolError:
            return False
        leader.poke()
        return True

    def transfer(self, target: str) -> bool:
        leader = self.leader()
        if leader is None or leader.node is None or leader.name == target:
            return False
        try:
            leader.node.transfer_leadership(target, self.loop.now)
        except LocalProtocolError:
            return False
        leader.poke()
        return True

    # -- callbacks from hosts -----------------------------------------------------

    def on_leader(self, host: RaftHost, event: LeaderChanged) -> None:
        """Leader completeness: a new leader holds every entry committed so far."""
        node = host.node
        assert node is not None
        if event.leader != host.name:
            return
        for index in range(max(1, node.snapshot_index + 1), self.max_committed + 1):
            term, _, _ = self.committed[index]
            if node.log_term(index) != term:
                raise InvariantViolation(
                    f"leader completeness: {host.name} leads term {node.term} without "
                    f"committed entry {index} (term {term}); it has {node.log_term(index)}"
                )
        if node.snapshot_index > self.max_committed:
            # A snapshot can only cover applied, therefore committed, entries.
            raise InvariantViolation(f"{host.name} has a snapshot beyond the commit index")

    def on_apply(self, host: RaftHost, entry: Entry) -> None:
        """State-machine safety: every host applies the same entry at an index."""
        key = (entry.term, int(entry.kind), digest(entry.data))
        seen = self.committed.get(entry.index)
        if seen is None:
            if entry.index != self.max_committed + 1:
                raise InvariantViolation(
                    f"{host.name} applied {entry.index} but the committed prefix ends at "
                    f"{self.max_committed}"
                )
            self.committed[entry.index] = key
            self.max_committed = entry.index
        elif seen != key:
            raise InvariantViolation(
                f"state-machine safety: {host.name} applied {key} at {entry.index}, "
                f"another host applied {seen}"
            )

    def on_read(self, host: RaftHost, request: int, index: int) -> None:
        """Linearizable reads: the read index covers everything committed before the read."""
        floor = self._read_floor.pop((host.name, request), None)
        if floor is None:
            raise InvariantViolation(f"{host.name} answered unknown read {request}")
        if index < floor:
            raise InvariantViolation(
                f"stale read on {host.name}: read index {index} < commit index {floor} "
                "at the time of the request"
            )
        self.reads_done.append((host.name, request, index, floor))

    def check_restored(self, host: RaftHost, snapshot: Snapshot) -> None:
        for index, data in host.app:
            seen = self.committed.get(index)
            if seen is not None and seen[2] != digest(data):
                raise InvariantViolation(f"{host.name} restored a snapshot disagreeing at {index}")
        if snapshot.index > self.max_committed:
            raise InvariantViolation(f"{host.name} restored a snapshot of uncommitted index")

    def check_durable(self, host: RaftHost) -> None:
        """What a host applied before a crash is still in its durable state."""
        state = host.durable.state()
        snap_index = state.snapshot.index if state.snapshot is not None else 0
        if state.hard_state.commit > snap_index + len(state.entries):
            raise InvariantViolation(f"{host.name} persisted a commit index beyond its log")
        for entry in state.entries:
            seen = self.committed.get(entry.index)
            if entry.index <= host.applied_index and seen is not None and seen[0] != entry.term:
                raise InvariantViolation(
                    f"{host.name} lost applied entry {entry.index} from its durable log"
                )
        if host.applied_index > snap_index + len(state.entries):
            raise InvariantViolation(
                f"durability: {host.name} applied {host.applied_index} but only "
                f"{snap_index + len(state.entries)} entries are durable"
            )

    # -- invariants -----------------------------------------------------------

    def check_step(self) -> None:
        for host in self.hosts.values():
            node = host.node
            if not host.up or node is None:
                continue
            if node.role != Role.LEADER:
                self._leader_view.pop(host.name, None)
                continue
            holder = self.leaders.setdefault(node.term, host.name)
            if holder != host.name:
                raise InvariantViolation(
                    f"election safety: {holder} and {host.name} both lead term {node.term}"
                )
            view = self._leader_view.get(host.name)
            last = node.last_index
            if view is not None and view[0] == node.term:
                _, prev_last, prev_term = view
                if last < prev_last:
                    raise InvariantViolation(
                        f"leader append-only: {host.name} log shrank {prev_last} -> {last}"
                    )
                now_term = node.log_term(prev_last)
                if prev_term is not None and now_term is not None and now_term != prev_term:
                    raise InvariantViolation(
                        f"leader append-only: {host.name} rewrote entry {prev_last}"
                    )
            self._leader_view[host.name] = (node.term, last, node.log_term(last))

    def check_logs(self) -> None:
        """Log matching: equal (index, term) implies equal entries and equal prefixes."""
        nodes = [h.node for h in self.up_hosts() if h.node is not None]
        for i, a in enumerate(nodes):
            for b in nodes[i + 1 :]:
                lo = max(a.first_index, b.first_index)
                hi = min(a.last_index, b.last_index)
                matched = False
                for index in range(hi, lo - 1, -1):
                    ea, eb = a.entry(index), b.entry(index)
                    if ea is None or eb is None:
                        continue
                    if matched or ea.term == eb.term:
                        matched = True
                        if ea != eb:
                            raise InvariantViolation(
                                f"log matching: {a.node_id} and {b.node_id} differ at {index} "
                                "below a matching entry"
                            )

    # -- liveness -----------------------------------------------------------------

    def heal_all(self) -> None:
        self.network.heal()
        for host in self.hosts.values():
            host.slowness = 0.0
            if not host.up:
                host.restart()

    def converge(self, timeout: float) -> float:
        """After faults heal: a leader appears and a fresh command commits everywhere.

        Returns the virtual seconds it took; raises InvariantViolation past ``timeout``.
        """
        start = self.loop.now
        deadline = start + timeout
        marker: bytes | None = None
        proposed_in: tuple[str, int] | None = None
        while self.loop.now < deadline:
            self.run(self.config.heartbeat_interval)
            leader = self.leader()
            if leader is None or leader.node is None:
                continue
            members = leader.node.membership.voters | leader.node.membership.learners
            if proposed_in != (leader.name, leader.node.term):
                # No marker yet, or it went to a leader that has since lost its
                # term: that entry may never exist in the new leader's log.
                marker = None
            if marker is None or marker not in self.proposed:
                accepted = self.propose(1)
                marker = accepted[0] if accepted else None
                proposed_in = (leader.name, leader.node.term) if accepted else None
                continue
            index = self.proposed[marker]
            hosts = [self.hosts[m] for m in members if m in self.hosts and self.hosts[m].up]
            if all(h.applied_index >= index for h in hosts):
                if self.committed.get(index, (0, 0, None))[2] == digest(marker):
                    return self.loop.now - start
                marker = None  # overwritten by a new leader: propose again
        raise InvariantViolation(
            f"liveness: no leader committed a new command within {timeout} s after healing"
        )
