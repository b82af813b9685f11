"""A deterministic discrete-event simulator for sans-IO protocol cores.

Virtual time, a seeded network and hosts that crash and restart.  Everything
random comes from one ``random.Random``, so a seed replays the same run step
for step; that is what lets Hypothesis shrink a failing fault schedule and what
makes a failing seed a regression test.

The pieces are protocol-agnostic and shared by the Raft, SWIM, scheduler and
execution simulations:

* :class:`EventLoop` — a heap of timed callbacks and the virtual clock;
* :class:`Network` — point-to-point delivery with loss, delay (and therefore
  reordering), duplication, symmetric and one-way partitions;
* :class:`Host` — wraps one core, feeds it messages and timer wake-ups, keeps
  it asleep while crashed, and lets a subclass rebuild it from what it had
  durably persisted on restart.
"""

from __future__ import annotations

import abc
import dataclasses
import heapq
import itertools
import random
from collections.abc import Callable, Hashable, Iterable
from typing import Any

__all__ = ["Datagram", "EventLoop", "Host", "LinkFaults", "Network", "Timer"]

NodeId = Hashable


class Timer:
    """A scheduled callback; cancelled timers stay in the heap but do nothing."""

    __slots__ = ("at", "callback", "cancelled")

    def __init__(self, at: float, callback: Callable[[], None]) -> None:
        self.at = at
        self.callback = callback
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


class EventLoop:
    """Virtual time: callbacks run in (time, insertion) order."""

    def __init__(self, start: float = 0.0) -> None:
        self.now = start
        self._heap: list[tuple[float, int, Timer]] = []
        self._seq = itertools.count()
        self.steps = 0

    def call_at(self, at: float, callback: Callable[[], None]) -> Timer:
        timer = Timer(max(at, self.now), callback)
        self.push((timer.at, next(self._seq), timer))
        return timer

    def push(self, entry: tuple[float, int, Any]) -> None:
        """Queue an entry ``(time, insertion, item)``; a subclass may keep them otherwise."""
        heapq.heappush(self._heap, entry)

    def call_later(self, delay: float, callback: Callable[[], None]) -> Timer:
        return self.call_at(self.now + delay, callback)

    def next_time(self) -> float | None:
        while self._heap and self._heap[0][2].cancelled:
            heapq.heappop(self._heap)
        return self._heap[0][0] if self._heap else None

    def step(self) -> bool:
        """Run the next callback; False when nothing is left to run."""
        while self._heap:
            at, _, timer = heapq.heappop(self._heap)
            if timer.cancelled:
                continue
            self.now = at
            self.steps += 1
            timer.callback()
            return True
        return False

    def run_until(self, t: float, *, after_step: Callable[[], None] | None = None) -> None:
        """Run every callback due before or at ``t``, then set the clock to ``t``."""
        while True:
            nxt = self.next_time()
            if nxt is None or nxt > t:
                break
            self.step()
            if after_step is not None:
                after_step()
        self.now = max(self.now, t)


@dataclasses.dataclass(slots=True)
class LinkFaults:
    """How the network treats a message between two nodes."""

    loss: float = 0.0
    duplicate: float = 0.0
    min_delay: float = 0.001
    max_delay: float = 0.005


@dataclasses.dataclass(frozen=True, slots=True)
class Datagram:
    """One message as the network saw it, for traces and size statistics."""

    t: float
    src: NodeId
    dst: NodeId
    size: int
    delivered: bool


class Network:
    """Seeded point-to-point message delivery between registered nodes.

    Random per-message delays reorder messages; ``duplicate`` delivers a
    second copy later.  A blocked directed pair drops everything sent along
    it, so a symmetric partition blocks both directions and a one-way
    partition only one.  Messages already in flight when a partition starts
    are still delivered unless ``cut_in_flight`` is set: real networks buffer.
    """

    def __init__(
        self,
        loop: EventLoop,
        rng: random.Random,
        faults: LinkFaults | None = None,
        *,
        record: bool = False,
    ) -> None:
        self.loop = loop
        self.rng = rng
        self.faults = faults or LinkFaults()
        self._links: dict[tuple[NodeId, NodeId], LinkFaults] = {}
        self._blocked: set[tuple[NodeId, NodeId]] = set()
        self._handlers: dict[NodeId, Callable[[NodeId, Any], None]] = {}
        self.record = record
        self.trace: list[Datagram] = []
        self.sent = 0
        self.delivered = 0
        self.dropped = 0
        self.duplicated = 0
        self.bytes_sent = 0

    # -- wiring ---------------------------------------------------------------

    def attach(self, node: NodeId, handler: Callable[[NodeId, Any], None]) -> None:
        self._handlers[node] = handler

    def detach(self, node: NodeId) -> None:
        self._handlers.pop(node, None)

    @property
    def nodes(self) -> list[NodeId]:
        return list(self._handlers)

    # -- faults ---------------------------------------------------------------

    def set_link(self, src: NodeId, dst: NodeId, faults: LinkFaults) -> None:
        self._links[(src, dst)] = faults

    def clear_link(self, src: NodeId, dst: NodeId) -> None:
        """Back to the network-wide faults for this link."""
        self._links.pop((src, dst), None)

    def block(self, src: NodeId, dst: NodeId) -> None:
        """One-way cut: ``src`` can no longer reach ``dst``."""
        self._blocked.add((src, dst))

    def unblock(self, src: NodeId, dst: NodeId) -> None:
        self._blocked.discard((src, dst))

    def partition(self, *groups: Iterable[NodeId]) -> None:
        """Cut every link between different groups (nodes in no group are isolated)."""
        sets = [set(g) for g in groups]
        everyone = set(self._handlers) | set().union(*sets)
        where = {n: i for i, g in enumerate(sets) for n in g}
        for a in everyone:
            for b in everyone:
                if a != b and (a not in where or b not in where or where[a] != where[b]):
                    self._blocked.add((a, b))

    def isolate(self, node: NodeId) -> None:
        for other in self._handlers:
            if other != node:
                self._blocked.add((node, other))
                self._blocked.add((other, node))

    def heal(self) -> None:
        self._blocked.clear()

    def is_blocked(self, src: NodeId, dst: NodeId) -> bool:
        return (src, dst) in self._blocked

    # -- traffic --------------------------------------------------------------

    def send(self, src: NodeId, dst: NodeId, msg: Any, *, size: int = 0) -> None:
        self.sent += 1
        self.bytes_sent += size
        faults = self._links.get((src, dst), self.faults)
        lost = (src, dst) in self._blocked or (faults.loss > 0 and self.rng.random() < faults.loss)
        if self.record:
            self.trace.append(Datagram(self.loop.now, src, dst, size, not lost))
        if lost:
            self.dropped += 1
            return
        self._schedule(src, dst, msg, faults)
        if faults.duplicate > 0 and self.rng.random() < faults.duplicate:
            self.duplicated += 1
            self._schedule(src, dst, msg, faults)

    def _schedule(self, src: NodeId, dst: NodeId, msg: Any, faults: LinkFaults) -> None:
        delay = faults.min_delay
        if faults.max_delay > faults.min_delay:
            delay = self.rng.uniform(faults.min_delay, faults.max_delay)

        def arrive() -> None:
            handler = self._handlers.get(dst)
            if handler is None:
                self.dropped += 1
                return
            self.delivered += 1
            handler(src, msg)

        self.loop.call_later(delay, arrive)


class Host(abc.ABC):
    """One simulated node: a core, its timer, and its crash/restart life cycle.

    Subclasses implement :meth:`boot` (build the core from durable state),
    :meth:`deliver` (feed a message), :meth:`wake` (feed a timer), :meth:`flush`
    (carry out the core's output) and :meth:`deadline`.  ``slowness`` models a
    CPU-starved node: every input is handled that many seconds late.
    """

    # Slots, so that a subclass with its own (SwimHost: a thousand of them,
    # one touched per datagram) keeps every attribute inline.
    __slots__ = ("_epoch", "_timer", "crashes", "loop", "network", "node_id", "slowness", "up")

    def __init__(self, node_id: NodeId, loop: EventLoop, network: Network) -> None:
        self.node_id = node_id
        self.loop = loop
        self.network = network
        self.up = False
        self.slowness = 0.0
        self._timer: Timer | None = None
        self._epoch = 0
        self.crashes = 0

    # -- hooks for subclasses -------------------------------------------------

    @abc.abstractmethod
    def boot(self) -> None:
        """Build a fresh core from durable state (first start and every restart)."""

    @abc.abstractmethod
    def deliver(self, src: NodeId, msg: Any) -> None:
        """Feed one message from ``src`` to the core."""

    @abc.abstractmethod
    def wake(self) -> None:
        """Tell the core its deadline has passed."""

    @abc.abstractmethod
    def deadline(self) -> float | None:
        """When the core next needs waking, or None."""

    @abc.abstractmethod
    def flush(self) -> None:
        """Carry out the core's pending output (persist, then send, then apply)."""

    @abc.abstractmethod
    def lose_volatile_state(self) -> None:
        """Forget everything that was not durably persisted (called on crash)."""

    # -- life cycle -----------------------------------------------------------

    def start(self) -> None:
        self.up = True
        self._epoch += 1
        self.network.attach(self.node_id, self._on_message)
        self.boot()
        self.flush()
        self._arm()

    def crash(self) -> None:
        if not self.up:
            return
        self.up = False
        self.crashes += 1
        self._epoch += 1
        self.network.detach(self.node_id)
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self.lose_volatile_state()

    def restart(self) -> None:
        if self.up:
            return
        self.start()

    # -- plumbing -------------------------------------------------------------

    def poke(self) -> None:
        """Flush output and re-arm the timer after outside input (e.g. a proposal)."""
        if self.up:
            self.flush()
            self._arm()

    def _on_message(self, src: NodeId, msg: Any) -> None:
        if not self.up:
            return
        if self.slowness > 0:
            epoch = self._epoch
            self.loop.call_later(self.slowness, lambda: self._late_message(epoch, src, msg))
            return
        self.deliver(src, msg)
        self.flush()
        self._arm()

    def _late_message(self, epoch: int, src: NodeId, msg: Any) -> None:
        if self.up and epoch == self._epoch:
            self.deliver(src, msg)
            self.flush()
            self._arm()

    def _arm(self) -> None:
        at = self.deadline()
        if self._timer is not None:
            if at is not None and self._timer.at == max(at + self.slowness, self.loop.now):
                return
            self._timer.cancel()
            self._timer = None
        if at is None:
            return
        epoch = self._epoch
        self._timer = self.loop.call_at(at + self.slowness, lambda: self._fire(epoch))

    def _fire(self, epoch: int) -> None:
        if not self.up or epoch != self._epoch:
            return
        self._timer = None
        self.wake()
        self.flush()
        self._arm()
