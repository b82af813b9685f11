"""SWIM clusters in the deterministic simulator.

:class:`SwimHost` runs one :class:`~dkron.proto_sansio.swim.SwimNode` on a
:class:`~dkron.testing.sim.Host`: datagrams travel through the shared
:class:`~dkron.testing.sim.Network` (loss, delay, duplication, partitions);
push-pull and TCP-fallback streams are modelled as reliable request/reply
exchanges that fail when either direction is cut or the peer is down.

Two kinds of slowness: the shared ``Host.slowness`` delays everything a node
does (timers and input alike), while :attr:`SwimHost.recv_delay` delays only
the handling of incoming packets — a node whose receive path is CPU-starved
but whose timers still fire, which is what makes it suspect healthy peers and
is the case Lifeguard was designed for.

:class:`SwimCluster` records every change of any member's view of any other
member as a :class:`Transition` and checks the per-incarnation ordering
invariant as each one happens, so a violation fails at the step that caused
it.
"""

from __future__ import annotations

import dataclasses
import heapq
import random
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from dkron.proto_sansio.swim import (
    LOCAL,
    Address,
    BootstrapMemo,
    EventKind,
    JoinResult,
    LeaveComplete,
    MemberEvent,
    MemberHealth,
    ProbeFallback,
    SendPacket,
    SendStream,
    StateChange,
    SwimConfig,
    SwimNode,
    UserEvent,
)
from dkron.proto_sansio.swim_wire import (
    Keyring,
    KnownLayout,
    PacketItems,
    PushNodeState,
    WireState,
)
from dkron.proto_sansio.wire import slot_maker
from dkron.testing.sim import Datagram, EventLoop, Host, LinkFaults, Network

__all__ = [
    "InvariantViolation",
    "ObservedEvent",
    "ObservedUserEvent",
    "SwimCluster",
    "SwimHost",
    "Transition",
]

_RANK = {
    MemberHealth.NONE: -1,
    MemberHealth.ALIVE: 0,
    MemberHealth.SUSPECT: 1,
    MemberHealth.LEAVING: 1,
    MemberHealth.FAILED: 2,
    MemberHealth.LEFT: 3,
}


class InvariantViolation(AssertionError):
    """A safety property of the protocol failed during a simulation step."""


@dataclasses.dataclass(frozen=True, slots=True)
class Transition:
    t: float
    observer: str
    subject: str
    old: MemberHealth
    new: MemberHealth
    incarnation: int


# One per state change of any member (see slot_maker).
_transition: Callable[..., Transition] = slot_maker(Transition)


@dataclasses.dataclass(frozen=True, slots=True)
class ObservedEvent:
    t: float
    observer: str
    kind: EventKind
    subject: str


@dataclasses.dataclass(frozen=True, slots=True)
class ObservedUserEvent:
    t: float
    observer: str
    ltime: int
    name: str
    payload: bytes


# Width of one bucket of the event queue, in virtual seconds (see _LeanLoop).
_BUCKET = 0.05


class _LeanLoop(EventLoop):
    """``EventLoop`` that runs datagram arrivals inline; same order, same clock.

    A datagram in flight is a bare ``(src, dst, msg)`` tuple in the queue
    instead of a :class:`~dkron.testing.sim.Timer` wrapping a closure, a
    member's wake-up a bare ``(host, token)`` pair (stale once the host has
    re-armed), and :meth:`run_until` is one loop instead of two calls per
    step.  Entries are still ordered by ``(time, insertion)``, so a seed
    replays exactly the run the shared loop would produce.

    The queue is a heap per 50 ms bucket of virtual time, plus a heap of the
    buckets' numbers, not one heap of everything: with a thousand members
    one heap holds thousands of entries whose lower levels no cache keeps,
    so every pop missed on a dozen of them.  The bucket being run is small
    and stays in cache.  Buckets split time into disjoint ranges, so the
    order is exactly that of the single heap.
    """

    def __init__(self) -> None:
        super().__init__()
        self.network: _LeanNetwork | None = None
        self._buckets: dict[int, list[tuple[float, int, Any]]] = {}
        self._keys: list[int] = []

    def push(self, entry: tuple[float, int, Any]) -> None:
        key = int(entry[0] / _BUCKET)
        bucket = self._buckets.get(key)
        if bucket is None:
            self._buckets[key] = [entry]
            heapq.heappush(self._keys, key)
        else:
            heapq.heappush(bucket, entry)

    def _head(self) -> list[tuple[float, int, Any]] | None:
        """The earliest non-empty bucket (emptied buckets are dropped as they empty)."""
        keys = self._keys
        return self._buckets[keys[0]] if keys else None

    def _pop(self, bucket: list[tuple[float, int, Any]]) -> tuple[float, int, Any]:
        entry = heapq.heappop(bucket)
        if not bucket:
            del self._buckets[heapq.heappop(self._keys)]
        return entry

    def next_time(self) -> float | None:
        while (bucket := self._head()) is not None:
            at, _, item = bucket[0]
            if type(item) is tuple:
                if len(item) == 3 or item[0].wake_token == item[1]:
                    return at
            elif not item.cancelled:
                return at
            self._pop(bucket)
        return None

    def step(self) -> bool:
        while (bucket := self._head()) is not None:
            at, _, item = self._pop(bucket)
            if type(item) is tuple:
                if len(item) == 3:
                    self.now = at
                    self.steps += 1
                    self._arrive(item)
                    return True
                host = item[0]
                if host.wake_token != item[1]:
                    continue
                self.now = at
                self.steps += 1
                host.fire()
                return True
            if item.cancelled:
                continue
            self.now = at
            self.steps += 1
            item.callback()
            return True
        return False

    def _arrive(self, item: tuple[Any, Any, Any]) -> None:
        net = self.network
        assert net is not None
        handler = net._handlers.get(item[1])
        if handler is None:
            net.dropped += 1
            return
        net.delivered += 1
        handler(item[0], item[2])

    def run_until(self, t: float, *, after_step: Callable[[], None] | None = None) -> None:
        buckets = self._buckets
        keys = self._keys
        pop = heapq.heappop
        net = self.network
        assert net is not None
        handlers = net._handlers
        while keys:
            key = keys[0]
            bucket = buckets[key]
            entry = bucket[0]
            at = entry[0]
            if at > t:
                break
            pop(bucket)
            if not bucket:
                del buckets[key]
                pop(keys)
            item = entry[2]
            if type(item) is tuple:
                if len(item) == 3:
                    self.now = at
                    self.steps += 1
                    handler = handlers.get(item[1])
                    if handler is None:
                        net.dropped += 1
                    else:
                        net.delivered += 1
                        handler(item[0], item[2])
                else:
                    host = item[0]
                    if host.wake_token != item[1]:
                        continue
                    self.now = at
                    self.steps += 1
                    host.fire()
            else:
                if item.cancelled:
                    continue
                self.now = at
                self.steps += 1
                item.callback()
            if after_step is not None:
                after_step()
        self.now = max(self.now, t)


class _LeanNetwork(Network):
    """``Network`` with a shorter send path; same faults, same seeded behaviour.

    The shared implementation builds a closure and a timer per message and
    goes through two extra calls; at a few hundred thousand datagrams per
    run that is a fifth of the simulator's time.  Here a message in flight
    is a tuple pushed straight onto the :class:`_LeanLoop` heap.
    """

    def __init__(
        self, loop: _LeanLoop, rng: random.Random, faults: LinkFaults, *, record: bool
    ) -> None:
        super().__init__(loop, rng, faults, record=record)
        loop.network = self
        self._lean_loop = loop

    def send(self, src: Any, dst: Any, msg: Any, *, size: int = 0) -> None:
        self.sent += 1
        self.bytes_sent += size
        rng = self.rng
        if self._links or self._blocked:
            key = (src, dst)
            faults = self._links.get(key, self.faults)
            lost = key in self._blocked or (faults.loss > 0 and rng.random() < faults.loss)
        else:
            faults = self.faults
            lost = faults.loss > 0 and rng.random() < faults.loss
        if self.record:
            self.trace.append(Datagram(self.loop.now, src, dst, size, not lost))
        if lost:
            self.dropped += 1
            return
        copies = 2 if faults.duplicate > 0 and rng.random() < faults.duplicate else 1
        if copies == 2:
            self.duplicated += 1
        lo, hi = faults.min_delay, faults.max_delay
        loop = self._lean_loop
        item = (src, dst, msg)
        for _ in range(copies):
            delay = lo + (hi - lo) * rng.random() if hi > lo else lo
            loop.push((loop.now + delay, next(loop._seq), item))


class SwimHost(Host):
    """One simulated member; its node id on the network is its ``(addr, port)``."""

    __slots__ = (
        "addr",
        "bootstrap",
        "cluster",
        "config",
        "core",
        "departed",
        "generation",
        "incarnation_hint",
        "joined",
        "keyring",
        "name",
        "recv_delay",
        "seed",
        "tags",
        "wake_at",
        "wake_token",
    )

    def __init__(
        self,
        cluster: SwimCluster,
        name: str,
        addr: Address,
        *,
        config: SwimConfig,
        seed: int,
        tags: dict[str, str] | None = None,
        keyring: Keyring | None = None,
    ) -> None:
        super().__init__(addr, cluster.loop, cluster.network)
        self.cluster = cluster
        self.name = name
        self.addr = addr
        self.config = config
        self.seed = seed
        self.tags = dict(tags or {})
        self.keyring = keyring
        self.recv_delay = 0.0
        self.generation = 0
        self.departed = False
        self.joined: JoinResult | None = None
        self.core: SwimNode | None = None
        self.bootstrap: list[PushNodeState] = []
        self.incarnation_hint = 0
        self.wake_token = 0
        self.wake_at: float | None = None

    @property
    def node(self) -> SwimNode:
        if self.core is None:
            raise RuntimeError(f"{self.name} is down")
        return self.core

    # -- Host hooks -----------------------------------------------------------------

    def boot(self) -> None:
        self.generation += 1
        rng = random.Random(self.seed * 1_000_003 + self.generation)
        self.core = SwimNode(
            self.name,
            self.config,
            rng=rng,
            now=self.loop.now,
            addr=self.addr[0],
            port=self.addr[1],
            tags=self.tags,
            keyring=self.keyring,
            incarnation=self.incarnation_hint,
            decode_cache=self.cluster.decode_cache,
            layout_cache=self.cluster.layout_cache,
            packet_cache=self.cluster.packet_cache,
        )
        if self.bootstrap:
            self.core.bootstrap_members(
                self.bootstrap, self.loop.now, memo=self.cluster.bootstrap_memo
            )
            self.bootstrap = []

    def deliver(self, src: Any, msg: Any) -> None:
        core = self.core
        if core is not None:
            core.receive(msg, src_addr=src, now=self.loop.now)

    def wake(self) -> None:
        core = self.core
        if core is not None:
            core.handle_timer(self.loop.now)

    def deadline(self) -> float | None:
        core = self.core
        return None if core is None else core.next_deadline()

    def lose_volatile_state(self) -> None:
        self.core = None
        self.wake_token += 1
        self.wake_at = None

    def flush(self) -> None:
        core = self.core
        if core is None:
            return
        actions = core.drain()
        if not actions:
            return
        net = self.network
        src = self.addr
        cluster = self.cluster
        for a in actions:
            t = type(a)
            if t is SendPacket:
                net.send(src, a.addr, a.data, size=len(a.data))  # type: ignore[union-attr]
            elif t is StateChange:
                cluster.record_change(self.name, a)  # type: ignore[arg-type]
            elif t is SendStream or t is ProbeFallback:
                cluster.open_stream(self, a.addr, a.stream_id, a.data)  # type: ignore[union-attr]
            elif t is MemberEvent:
                cluster.events.append(
                    ObservedEvent(self.loop.now, self.name, a.kind, a.member.name)  # type: ignore[union-attr]
                )
            elif t is UserEvent:
                cluster.user_events.append(
                    ObservedUserEvent(
                        self.loop.now,
                        self.name,
                        a.ltime,  # type: ignore[union-attr]
                        a.name,  # type: ignore[union-attr]
                        a.payload,  # type: ignore[union-attr]
                    )
                )
            elif t is JoinResult:
                self.joined = a  # type: ignore[assignment]
            elif t is LeaveComplete:
                self.departed = True
                self.loop.call_later(0.0, self.crash)

    def _arm(self) -> None:
        """``Host._arm`` without a timer object: one bare heap entry per new deadline.

        ``wake_token`` names the one entry that counts; re-arming or crashing
        bumps it, which retires every older entry where it lies.
        """
        core = self.core
        at = None if core is None or not self.up else core.next_deadline()
        loop = self.cluster.loop
        if at is not None:
            at = max(at + self.slowness, loop.now)
        if at == self.wake_at:
            return
        self.wake_token += 1
        self.wake_at = at
        if at is not None:
            loop.push((at, next(loop._seq), (self, self.wake_token)))

    def fire(self) -> None:
        """The armed deadline has come (``Host._fire``)."""
        self.wake_at = None
        core = self.core
        if core is not None:
            core.handle_timer(self.loop.now)
        self.flush()
        self._arm()

    # -- receive-path slowness ----------------------------------------------------------

    def _on_message(self, src: Any, msg: Any) -> None:
        if not self.up:
            return
        if self.recv_delay > 0 or self.slowness > 0:
            gen = self.generation
            delay = self.recv_delay + self.slowness
            self.loop.call_later(delay, lambda: self._late(gen, src, msg))
            return
        core = self.core
        if core is not None:
            core.receive(msg, src_addr=src, now=self.loop.now)
        self.flush()
        self._arm()

    def _late(self, gen: int, src: Any, msg: Any) -> None:
        if self.up and gen == self.generation and self.core is not None:
            self.core.receive(msg, src_addr=src, now=self.loop.now)
            self.flush()
            self._arm()


class SwimCluster:
    """N members wired through one seeded network, with fault injection.

    ``bootstrap=True`` starts every member already knowing all the others (as
    if restored from a snapshot), so large clusters skip the join storm.
    """

    def __init__(
        self,
        n: int,
        *,
        config: SwimConfig = LOCAL,
        seed: int = 0,
        loss: float = 0.0,
        duplicate: float = 0.0,
        min_delay: float = 0.001,
        max_delay: float = 0.005,
        record: bool = True,
        keyring: Keyring | None = None,
        bootstrap: bool = True,
        configs: Sequence[SwimConfig] | None = None,
        check: bool = True,
        share: bool = True,
    ) -> None:
        self.loop = _LeanLoop()
        self.seed = seed
        self.rng = random.Random(seed)
        faults = LinkFaults(
            loss=loss, duplicate=duplicate, min_delay=min_delay, max_delay=max_delay
        )
        self.network: Network = _LeanNetwork(
            self.loop, random.Random(seed + 1), faults, record=record
        )
        self.record = record
        self.check = check
        self.keyring = keyring
        self.config = config
        self.hosts: dict[str, SwimHost] = {}
        # Memos the members share (``share=False``: each keeps its own, as
        # agents do; what a member does is the same either way).  Decoded
        # broadcasts: a broadcast is decoded once per run instead of once per
        # member that hears it.  Decoded gossip packets: a member sends the
        # same packet to several peers.  Encoded push-pull layouts: members
        # with equal tables share one.  Bootstrapped member records: copied
        # by a member when it changes one.
        self.decode_cache: dict[bytes, object] | None = {} if share else None
        self.packet_cache: dict[bytes, PacketItems] | None = {} if share else None
        self.layout_cache: dict[tuple[str, ...], list[KnownLayout]] | None = {} if share else None
        self.bootstrap_memo = BootstrapMemo() if share else None
        self.by_addr: dict[Address, SwimHost] = {}
        self.transitions: list[Transition] = []
        self.events: list[ObservedEvent] = []
        self.user_events: list[ObservedUserEvent] = []
        self.streams = 0
        self.stream_bytes = 0
        self.on_transition: Callable[[Transition], None] | None = None
        self.after_step: Callable[[], None] | None = None
        self._last: dict[tuple[str, str], tuple[int, int]] = {}
        self._own_inc: dict[tuple[str, int], int] = {}
        for i in range(n):
            cfg = configs[i] if configs is not None else config
            self.add_host(f"node-{i}", cfg)
        if bootstrap:
            states = [
                PushNodeState(h.name, h.addr[0], h.addr[1], h.tags, 0, WireState.ALIVE, False)
                for h in self.hosts.values()
            ]
            for h in self.hosts.values():
                h.bootstrap = states
        for h in list(self.hosts.values()):
            h.start()

    # -- building -----------------------------------------------------------------------

    def address_of(self, index: int) -> Address:
        return (f"10.{index // 65536 % 256}.{index // 256 % 256}.{index % 256}", 7946)

    def add_host(
        self, name: str, config: SwimConfig | None = None, *, addr: Address | None = None
    ) -> SwimHost:
        index = len(self.hosts)
        address = addr if addr is not None else self.address_of(index)
        host = SwimHost(
            self,
            name,
            address,
            config=config or self.config,
            seed=self.seed * 7919 + index,
            keyring=self.keyring,
        )
        self.hosts[name] = host
        self.by_addr[address] = host
        return host

    def join_new(self, name: str, seeds: Iterable[str], *, addr: Address | None = None) -> SwimHost:
        """Start a new member that joins through the named seeds."""
        host = self.add_host(name, addr=addr)
        host.start()
        host.node.join([self.hosts[s].addr for s in seeds], self.loop.now)
        host.poke()
        return host

    # -- faults and commands --------------------------------------------------------------

    def crash(self, name: str) -> None:
        self.hosts[name].crash()

    def restart(self, name: str, seeds: Iterable[str]) -> None:
        host = self.hosts[name]
        host.departed = False
        host.restart()
        host.node.join([self.hosts[s].addr for s in seeds], self.loop.now)
        host.poke()

    def leave(self, name: str) -> None:
        host = self.hosts[name]
        host.node.leave(self.loop.now)
        host.poke()

    def set_tags(self, name: str, tags: dict[str, str]) -> None:
        host = self.hosts[name]
        host.tags = dict(tags)
        host.node.set_tags(tags, self.loop.now)
        host.poke()

    def user_event(self, name: str, event: str, payload: bytes) -> None:
        host = self.hosts[name]
        host.node.send_user_event(event, payload, self.loop.now)
        host.poke()

    def partition(self, *groups: Iterable[str]) -> None:
        self.network.partition(*[[self.hosts[n].addr for n in g] for g in groups])

    def heal(self) -> None:
        self.network.heal()

    def set_recv_delay(self, name: str, delay: float) -> None:
        self.hosts[name].recv_delay = delay

    # -- running --------------------------------------------------------------------------

    @property
    def now(self) -> float:
        return self.loop.now

    def run_for(self, seconds: float) -> None:
        self.loop.run_until(self.loop.now + seconds, after_step=self.after_step)

    def run_until(self, t: float) -> None:
        self.loop.run_until(t, after_step=self.after_step)

    def run_until_true(self, predicate: Callable[[], bool], *, limit: float, step: float) -> bool:
        """Advance in ``step`` slices until ``predicate`` holds or ``limit`` seconds pass."""
        end = self.loop.now + limit
        while self.loop.now < end:
            if predicate():
                return True
            self.loop.run_until(min(end, self.loop.now + step), after_step=self.after_step)
        return predicate()

    # -- streams ------------------------------------------------------------------------

    def _link_ok(self, a: Address, b: Address) -> bool:
        net = self.network
        return not net.is_blocked(a, b) and not net.is_blocked(b, a)

    def open_stream(self, src: SwimHost, addr: Address, sid: int, data: bytes) -> None:
        """A reliable request/reply exchange: TCP either connects and answers or fails."""
        self.streams += 1
        self.stream_bytes += len(data)
        loop = self.loop
        gen = src.generation
        faults = self.network.faults
        rtt = faults.max_delay
        dst = self.by_addr.get(addr)

        def fail() -> None:
            if src.up and src.generation == gen and src.core is not None:
                src.core.stream_failed(sid, now=loop.now)
                src.poke()

        if dst is None or not dst.up or not self._link_ok(src.addr, addr):
            loop.call_later(min(1.0, src.config.tcp_timeout), fail)
            return

        def serve() -> None:
            if not dst.up or dst.core is None or not self._link_ok(src.addr, addr):
                loop.call_later(rtt, fail)
                return
            reply = dst.core.receive_stream(data, src_addr=src.addr, now=loop.now)
            dst.poke()
            if reply is None:
                loop.call_later(rtt, fail)
                return
            self.stream_bytes += len(reply)

            def answer() -> None:
                if src.up and src.generation == gen and src.core is not None:
                    src.core.receive_stream_reply(sid, reply, now=loop.now)
                    src.poke()

            loop.call_later(rtt + src.recv_delay, answer)

        loop.call_later(rtt + dst.recv_delay, serve)

    # -- recording and invariants --------------------------------------------------------

    def record_change(self, observer: str, change: StateChange) -> None:
        tr = _transition(
            self.loop.now, observer, change.subject, change.old, change.new, change.incarnation
        )
        if self.record:
            self.transitions.append(tr)
        if self.check:
            self._check_order(tr)
        if self.on_transition is not None:
            self.on_transition(tr)

    def _check_order(self, tr: Transition) -> None:
        """Within one incarnation a view only moves alive -> suspect -> failed -> left."""
        key = (tr.observer, tr.subject)
        if tr.new is MemberHealth.NONE:
            self._last.pop(key, None)
            return
        cur = (tr.incarnation, _RANK[tr.new])
        prev = self._last.get(key)
        if prev is not None and tr.old is not MemberHealth.NONE and cur < prev:
            raise InvariantViolation(
                f"t={tr.t:.3f} {tr.observer} saw {tr.subject} go back from "
                f"{prev} to {cur} ({tr.old.value} -> {tr.new.value})"
            )
        self._last[key] = cur

    def check_self_views(self) -> None:
        """Per-step invariant: a running member never thinks itself suspect or failed.

        Its incarnation never goes down within one life either: a lower one
        would let stale gossip about it win again.
        """
        for h in self.hosts.values():
            core = h.core
            if core is None or not h.up:
                continue
            own = core.health_of(h.name)
            if own not in (MemberHealth.ALIVE, MemberHealth.LEAVING, MemberHealth.LEFT):
                raise InvariantViolation(f"t={self.now:.3f} {h.name} sees itself {own.value}")
            key = (h.name, h.generation)
            inc = core.incarnation
            if inc < self._own_inc.get(key, 0):
                raise InvariantViolation(f"t={self.now:.3f} {h.name} incarnation went down")
            self._own_inc[key] = inc

    def reset_order_tracking(self, observer: str) -> None:
        """A restarted member starts its views afresh."""
        for key in [k for k in self._last if k[0] == observer]:
            del self._last[key]

    # -- views ----------------------------------------------------------------------------

    def live_hosts(self) -> list[SwimHost]:
        return [h for h in self.hosts.values() if h.up and h.core is not None]

    def view(self, observer: str, subject: str) -> MemberHealth:
        return self.hosts[observer].node.health_of(subject)

    def everyone_sees(self, subject: str, *health: MemberHealth) -> bool:
        return all(
            h.node.health_of(subject) in health for h in self.live_hosts() if h.name != subject
        )

    def all_alive_everywhere(self) -> bool:
        live = self.live_hosts()
        names = [h.name for h in live]
        for h in live:
            node = h.node
            for s in names:
                if s != h.name and node.health_of(s) is not MemberHealth.ALIVE:
                    return False
        return True

    def datagrams(self) -> int:
        return self.network.sent

    def bytes_sent(self) -> int:
        return self.network.bytes_sent
