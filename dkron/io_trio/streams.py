"""Live output and cluster events over websockets.

Two streams, both JSON text messages:

* ``GET /v1/jobs/{job}/executions/{id}/stream`` — ``{"type": "output", "seq":
  N, "data": "..."}`` for every chunk after ``?from_seq=N`` (default 0) as the
  worker produces it, then ``{"type": "result", "execution": {...}}`` (the
  API's execution object) once the result is committed, then a normal
  close.  An execution that already finished sends only the result.  Any
  server serves it: a follower asks the leader for the chunks, and a client
  that lost its connection (or saw the leader change) reconnects with the
  last ``seq`` it got.
* ``GET /v1/events`` — ``{"type": "job" | "execution" | "leader" | "member",
  "seq": N, ...}`` for every change this server sees (see
  :class:`EventHub` publishers in the agent).  Each server numbers its own
  events; there is no replay.

A client that reads too slowly never slows the agent: events queue in a
bounded per-client buffer, and a client whose buffer overflows, or that
does not take a message within the send timeout, is dropped with close code
1013 ("try again later").
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import Awaitable, Callable, Iterator
from typing import Protocol

import trio
import trio_websocket

from dkron.model import Execution, execution_to_json

__all__ = [
    "CLOSE_TOO_SLOW",
    "EventHub",
    "OutputSource",
    "Subscription",
    "events_handler",
    "output_handler",
]

log = logging.getLogger("dkron.streams")

Handler = Callable[[trio_websocket.WebSocketConnection], Awaitable[None]]

CLOSE_TOO_SLOW = 1013
SEND_TIMEOUT = 10.0
POLL_WAIT = 10.0


class Subscription:
    def __init__(self, size: int) -> None:
        self.send, self.receive = trio.open_memory_channel[dict[str, object]](size)
        self.overflowed = False


class EventHub:
    """Fan-out of cluster events to websocket subscribers, each with a bounded buffer."""

    def __init__(self, buffer: int = 256) -> None:
        self.buffer = buffer
        self.seq = 0
        self._subs: set[Subscription] = set()
        self.dropped_clients = 0

    def publish(self, event: dict[str, object]) -> None:
        if not self._subs:
            return
        self.seq += 1
        event = {**event, "seq": self.seq}
        for sub in list(self._subs):
            try:
                sub.send.send_nowait(event)
            except trio.WouldBlock:
                sub.overflowed = True
                sub.send.close()
                self._subs.discard(sub)
                self.dropped_clients += 1

    @contextlib.contextmanager
    def subscribe(self) -> Iterator[Subscription]:
        sub = Subscription(self.buffer)
        self._subs.add(sub)
        try:
            yield sub
        finally:
            self._subs.discard(sub)
            sub.send.close()

    @property
    def subscribers(self) -> int:
        return len(self._subs)


class OutputSource(Protocol):
    """Where an output stream reads from (the agent, locally or through the leader)."""

    async def output_after(
        self, job: str, execution_id: str, seq: int, wait: float
    ) -> tuple[list[tuple[int, bytes]], Execution | None]:
        """Chunks after ``seq`` (waiting up to ``wait`` for one) and the final
        execution once committed (``None`` while it runs)."""


async def _send(ws: trio_websocket.WebSocketConnection, message: dict[str, object]) -> bool:
    """Send one message; False (and the client dropped) when it does not take it in time."""
    with trio.move_on_after(SEND_TIMEOUT):
        await ws.send_message(json.dumps(message, separators=(",", ":")))
        return True
    await ws.aclose(code=CLOSE_TOO_SLOW, reason="client too slow")
    return False


async def _until_closed(ws: trio_websocket.WebSocketConnection, scope: trio.CancelScope) -> None:
    """Clients only listen; a read ends (and ends the stream) when the client goes away."""
    try:
        while True:
            await ws.get_message()
    except trio_websocket.ConnectionClosed:
        scope.cancel()


def _watched(handle: Handler) -> Handler:
    """Run ``handle`` until it ends or the client disconnects, whichever is first."""

    async def run(ws: trio_websocket.WebSocketConnection) -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_until_closed, ws, nursery.cancel_scope)
            await handle(ws)
            nursery.cancel_scope.cancel()

    return run


def events_handler(hub: EventHub) -> Handler:
    async def handle(ws: trio_websocket.WebSocketConnection) -> None:
        with hub.subscribe() as sub:
            try:
                async for event in sub.receive:
                    if not await _send(ws, event):
                        return
            except trio_websocket.ConnectionClosed:
                return
            if sub.overflowed:
                await ws.aclose(code=CLOSE_TOO_SLOW, reason="client too slow")

    return _watched(handle)


def output_handler(source: OutputSource, job: str, execution_id: str, from_seq: int) -> Handler:
    async def handle(ws: trio_websocket.WebSocketConnection) -> None:
        seq = from_seq
        try:
            while True:
                chunks, final = await source.output_after(job, execution_id, seq, POLL_WAIT)
                for n, data in chunks:
                    text = data.decode("utf-8", errors="replace")
                    if not await _send(ws, {"type": "output", "seq": n, "data": text}):
                        return
                    seq = max(seq, n)
                if final is not None:
                    result = execution_to_json(final, list_view=False)
                    if await _send(ws, {"type": "result", "execution": result}):
                        await ws.aclose(code=1000, reason="execution finished")
                    return
        except trio_websocket.ConnectionClosed:
            return

    return _watched(handle)
