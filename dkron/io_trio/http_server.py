"""HTTP/1.1 server glue: h11 over Trio streams, one task per connection.

All HTTP semantics live in h11 and all API semantics in :mod:`dkron.io_trio.http_api`;
this module only moves bytes and enforces the limits that keep a hostile or
broken client from holding memory or a task forever: a bounded header block
(h11's ``max_incomplete_event_size``), a bounded body chosen per route before
any of it is read, a deadline for receiving each request once it has begun,
an idle deadline between keep-alive requests and a deadline for sending,
and a cap on concurrent connections (over it, a connection gets a 503 and is
closed, so the server degrades instead of running out of file descriptors).

With an ``ssl.SSLContext`` the accepted streams are wrapped in
:class:`trio.SSLStream`; the handshake has the request deadline, and a failed
one is counted and closed without touching the application.
"""

from __future__ import annotations

import collections
import email.utils
import logging
import math
import ssl
import urllib.parse
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from http import HTTPStatus
from typing import Protocol

import h11
import trio
import trio_websocket

__all__ = [
    "App",
    "Request",
    "Response",
    "ServerLimits",
    "WebSocketHandler",
    "serve",
    "serve_connection",
]

Counters = collections.Counter[str]

log = logging.getLogger("dkron.http")

_RECEIVE_SIZE = 64 * 1024


@dataclass(frozen=True, slots=True, kw_only=True)
class ServerLimits:
    """Bounds on what one connection may cost the server."""

    max_header_bytes: int = 16 * 1024
    max_body_bytes: int = 1 << 20
    max_query_fields: int = 256
    request_timeout: float = 10.0
    idle_timeout: float = 60.0
    send_timeout: float = 30.0
    linger_timeout: float = 1.0
    max_connections: int = 1024

    def __post_init__(self) -> None:
        sizes = (self.max_header_bytes, self.max_body_bytes, self.max_query_fields)
        if min(*sizes, self.max_connections) < 1:
            raise ValueError("size limits must be positive")
        timeouts = (self.request_timeout, self.idle_timeout, self.send_timeout)
        if min(timeouts) <= 0 or self.linger_timeout < 0:
            raise ValueError("timeouts must be positive")


@dataclass(frozen=True, slots=True, kw_only=True)
class Request:
    """One complete request; ``path`` is percent-decoded, ``raw_path`` is not."""

    method: str
    target: str
    raw_path: str
    path: str
    query: tuple[tuple[str, str], ...]
    headers: tuple[tuple[str, str], ...]
    body: bytes = b""

    def header(self, name: str) -> str | None:
        """The first value of a header (``name`` in lower case)."""
        for key, value in self.headers:
            if key == name:
                return value
        return None


@dataclass(frozen=True, slots=True, kw_only=True)
class Response:
    status: int
    headers: tuple[tuple[str, str], ...] = ()
    body: bytes = b""


WebSocketHandler = Callable[[trio_websocket.WebSocketConnection], Awaitable[None]]


class App(Protocol):
    """What the server needs from the application it serves."""

    def websocket(self, request: Request) -> Response | WebSocketHandler | None:
        """For an upgrade request: a handler to run once accepted, a refusal, or
        ``None`` when the route is not a websocket (then it is served as HTTP)."""

    def body_limit(self, method: str, path: str) -> int:
        """The largest body accepted for this route, decided before reading it."""

    async def handle(self, request: Request) -> Response: ...

    def error(self, status: int, message: str) -> Response:
        """The response for a request refused before it reached a handler."""


class _Reject(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def _split_target(target: str, max_fields: int) -> tuple[str, tuple[tuple[str, str], ...]]:
    if target.startswith("/") or target == "*":
        raw_path, _, query = target.partition("?")
    else:  # absolute-form, e.g. from a proxy
        parts = urllib.parse.urlsplit(target)
        raw_path, query = parts.path or "/", parts.query
    try:
        pairs = urllib.parse.parse_qsl(
            query, keep_blank_values=True, max_num_fields=max_fields, errors="replace"
        )
    except ValueError as exc:
        raise _Reject(400, f"bad query string: {exc}") from None
    return raw_path, tuple(pairs)


class _Connection:
    def __init__(self, stream: trio.abc.Stream, app: App, limits: ServerLimits) -> None:
        self.stream = stream
        self.app = app
        self.limits = limits
        self.conn = h11.Connection(h11.SERVER, max_incomplete_event_size=limits.max_header_bytes)
        self.deadline = math.inf
        self.started = False
        self.head = False  # a HEAD response carries the headers of a body, not the body

    async def run(self) -> None:
        while True:
            try:
                request = await self._read_request()
            except _Reject as reject:
                await self._send(self.app.error(reject.status, str(reject)), close=True)
                return
            if request is None:
                return
            if _is_upgrade(request):
                chosen = self.app.websocket(request)
                if chosen is not None and not isinstance(chosen, Response):
                    await self._upgrade(request, chosen)
                    return
                if isinstance(chosen, Response):
                    await self._send(chosen, close=True)
                    return
            try:
                response = await self.app.handle(request)
            except Exception:
                log.exception("unhandled error serving %s %s", request.method, request.raw_path)
                response = self.app.error(500, "internal error")
            if not await self._send(response, close=False):
                return
            if h11.MUST_CLOSE in (self.conn.our_state, self.conn.their_state):
                return
            try:
                self.conn.start_next_cycle()
            except h11.LocalProtocolError:
                return

    async def _upgrade(self, request: Request, handler: WebSocketHandler) -> None:
        """Hand the connection to trio-websocket, replaying the request h11 consumed.

        h11 has parsed the handshake and stopped at the protocol switch; the
        websocket library wants to read the handshake itself, so it gets the
        request bytes again followed by whatever the client sent after them.
        """
        head = [f"{request.method} {request.target} HTTP/1.1\r\n".encode("latin-1")]
        head += [f"{k}: {v}\r\n".encode("latin-1") for k, v in request.headers]
        data, _ = self.conn.trailing_data
        replay = b"".join(head) + b"\r\n" + bytes(data)
        async with trio.open_nursery() as nursery:
            try:
                with trio.fail_after(self.limits.request_timeout):
                    ws_request = await trio_websocket.wrap_server_stream(
                        nursery, _Replay(self.stream, replay), max_message_size=64 * 1024
                    )
                    ws = await ws_request.accept()
            except (trio.TooSlowError, trio_websocket.ConnectionClosed):
                nursery.cancel_scope.cancel()
                return
            try:
                await handler(ws)
            finally:
                await ws.aclose()
            nursery.cancel_scope.cancel()

    async def _next_event(self) -> h11.Event:
        while True:
            try:
                event = self.conn.next_event()
            except h11.RemoteProtocolError as exc:
                raise _Reject(exc.error_status_hint, f"malformed request: {exc}") from None
            if event is not h11.NEED_DATA:
                assert isinstance(event, h11.Event)
                return event
            try:
                with trio.fail_at(self.deadline):
                    data = await self.stream.receive_some(_RECEIVE_SIZE)
            except trio.TooSlowError:
                if not self.started:
                    return h11.ConnectionClosed()
                raise _Reject(408, "request not received in time") from None
            if data and not self.started:
                self.started = True
                self.deadline = trio.current_time() + self.limits.request_timeout
            self.conn.receive_data(bytes(data))

    async def _read_request(self) -> Request | None:
        self.started = False
        self.head = False
        self.deadline = trio.current_time() + self.limits.idle_timeout
        event = await self._next_event()
        if isinstance(event, h11.ConnectionClosed):
            return None
        if not isinstance(event, h11.Request):
            raise _Reject(400, "malformed request")
        if sum(len(k) + len(v) for k, v in event.headers) > self.limits.max_header_bytes:
            # h11 bounds only incomplete header blocks; one that arrived whole
            # in a single read is held to the same limit here.
            raise _Reject(431, "request header fields too large")
        self.started = True
        self.deadline = min(self.deadline, trio.current_time() + self.limits.request_timeout)
        target = event.target.decode("ascii", errors="replace")
        raw_path, query = _split_target(target, self.limits.max_query_fields)
        path = urllib.parse.unquote(raw_path, errors="replace")
        method = event.method.decode("ascii", errors="replace")
        self.head = method == "HEAD"
        headers = tuple(
            (k.decode("latin-1").lower(), v.decode("latin-1")) for k, v in event.headers
        )
        limit = self.app.body_limit(method, path)
        declared = next((v for k, v in headers if k == "content-length"), None)
        if declared is not None and int(declared) > limit:
            raise _Reject(413, f"request body larger than {limit} bytes")
        if self.conn.they_are_waiting_for_100_continue:
            await self._send_bytes(
                self.conn.send(h11.InformationalResponse(status_code=100, headers=[]))
            )
        body = bytearray()
        while True:
            event = await self._next_event()
            if isinstance(event, h11.Data):
                body += event.data
                if len(body) > limit:
                    raise _Reject(413, f"request body larger than {limit} bytes")
            elif isinstance(event, h11.EndOfMessage):
                break
            else:
                raise _Reject(400, "request body ended early")
        self.deadline = math.inf
        return Request(
            method=method,
            target=target,
            raw_path=raw_path,
            path=path,
            query=query,
            headers=headers,
            body=bytes(body),
        )

    async def _send(self, response: Response, *, close: bool) -> bool:
        """Send one response; False when the connection can no longer be used."""
        headers = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in response.headers]
        headers.append((b"content-length", str(len(response.body)).encode()))
        headers.append((b"date", email.utils.formatdate(usegmt=True).encode()))
        if close:
            headers.append((b"connection", b"close"))
        try:
            reason = HTTPStatus(response.status).phrase.encode()
        except ValueError:
            reason = b""
        try:
            data = self.conn.send(
                h11.Response(status_code=response.status, headers=headers, reason=reason)
            )
            if response.body and not self.head:
                data = (data or b"") + (self.conn.send(h11.Data(data=response.body)) or b"")
            data += self.conn.send(h11.EndOfMessage()) or b""
        except h11.LocalProtocolError:
            return False
        if not await self._send_bytes(data):
            return False
        if close:
            await self._linger()
            return False
        return True

    async def _send_bytes(self, data: bytes) -> bool:
        try:
            with trio.fail_after(self.limits.send_timeout):
                await self.stream.send_all(data)
        except trio.TooSlowError:
            return False
        return True

    async def _linger(self) -> None:
        """Half-close and drain briefly, so a client still sending a refused body
        reads our response instead of a connection reset."""
        if not isinstance(self.stream, trio.SocketStream):
            return
        await self.stream.send_eof()
        with trio.move_on_after(self.limits.linger_timeout):
            while await self.stream.receive_some(_RECEIVE_SIZE):
                continue


def _is_upgrade(request: Request) -> bool:
    connection = (request.header("connection") or "").lower()
    upgrade = (request.header("upgrade") or "").lower()
    return request.method == "GET" and "upgrade" in connection and upgrade == "websocket"


class _Replay(trio.abc.Stream):
    """A stream whose first bytes are given, then those of the wrapped stream."""

    def __init__(self, stream: trio.abc.Stream, first: bytes) -> None:
        self._stream = stream
        self._first = first

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        if self._first:
            n = len(self._first) if max_bytes is None else max_bytes
            data, self._first = self._first[:n], self._first[n:]
            return data
        return bytes(await self._stream.receive_some(max_bytes))

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await self._stream.send_all(data)

    async def wait_send_all_might_not_block(self) -> None:
        await self._stream.wait_send_all_might_not_block()

    async def send_eof(self) -> None:
        if isinstance(self._stream, trio.abc.HalfCloseableStream):
            await self._stream.send_eof()

    async def aclose(self) -> None:
        await self._stream.aclose()


async def serve_connection(stream: trio.abc.Stream, app: App, limits: ServerLimits) -> None:
    """Serve every request of one connection, then close it."""
    try:
        await _Connection(stream, app, limits).run()
    except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
        pass  # the peer went away; nothing to answer
    finally:
        await trio.aclose_forcefully(stream)


async def _start_tls(
    stream: trio.SocketStream, context: ssl.SSLContext, limits: ServerLimits, counters: Counters
) -> trio.SSLStream[trio.SocketStream] | None:
    """The TLS stream once its handshake succeeded within the request deadline, else None."""
    tls = trio.SSLStream(stream, context, server_side=True, https_compatible=True)
    try:
        with trio.fail_after(limits.request_timeout):
            await tls.do_handshake()
    except (trio.TooSlowError, trio.BrokenResourceError, trio.ClosedResourceError, OSError):
        counters["tls_handshake_failed"] += 1
        await trio.aclose_forcefully(tls)
        return None
    return tls


def _raw_response(response: Response) -> bytes:
    """A whole response without an h11 connection: the request was never read."""
    reason = HTTPStatus(response.status).phrase
    lines = [f"HTTP/1.1 {response.status} {reason}"]
    lines += [f"{k}: {v}" for k, v in response.headers]
    lines += [f"content-length: {len(response.body)}", "connection: close", "retry-after: 1"]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + response.body


async def _refuse(stream: trio.abc.Stream, app: App, limits: ServerLimits) -> None:
    """Answer 503 without reading the request, then linger so the client reads it."""
    try:
        with trio.fail_after(limits.send_timeout):
            await stream.send_all(_raw_response(app.error(503, "too many connections")))
        if isinstance(stream, trio.abc.HalfCloseableStream):
            await stream.send_eof()
        with trio.move_on_after(limits.linger_timeout):
            while await stream.receive_some(_RECEIVE_SIZE):
                continue
    except (trio.TooSlowError, trio.BrokenResourceError, trio.ClosedResourceError, OSError):
        pass
    finally:
        await trio.aclose_forcefully(stream)


async def serve(
    app: App,
    host: str | None,
    port: int,
    *,
    limits: ServerLimits | None = None,
    ssl_context: ssl.SSLContext | None = None,
    counters: Counters | None = None,
    task_status: trio.TaskStatus[list[trio.SocketListener]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Listen on ``host:port`` (port 0 picks one) until cancelled.

    ``task_status.started`` receives the listeners, whose sockets tell the
    bound addresses.  ``ssl_context`` makes it HTTPS; ``counters`` receives
    ``tls_handshake_failed`` and ``connections_refused``.
    """
    lim = limits or ServerLimits()
    stats: Counters = collections.Counter() if counters is None else counters
    listeners = await trio.open_tcp_listeners(port, host=host)
    active = 0

    async def handler(tcp: trio.SocketStream) -> None:
        nonlocal active
        if active >= lim.max_connections:
            # Counted before the TLS handshake too: a flood of handshakes is
            # exactly what the cap is for.  Refusals are short-lived (each is
            # bounded by the send, handshake and linger deadlines).
            stats["connections_refused"] += 1
            refused: trio.abc.Stream | None = tcp
            if ssl_context is not None:
                refused = await _start_tls(tcp, ssl_context, lim, stats)
            if refused is not None:
                await _refuse(refused, app, lim)
            return
        active += 1
        try:
            stream: trio.abc.Stream | None = tcp
            if ssl_context is not None:
                stream = await _start_tls(tcp, ssl_context, lim, stats)
            if stream is not None:
                await serve_connection(stream, app, lim)
        finally:
            active -= 1

    await trio.serve_listeners(handler, listeners, task_status=task_status)
