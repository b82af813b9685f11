"""A small HTTP/1.1 client over Trio streams (h11), shared by the ``http`` executor and
the notifiers.

One connection per request (``Connection: close``, as Dkron's clients), TLS
through ``trio.SSLStream``, and error texts worded as Go's ``net/http`` words
them, because those texts end up in execution outputs and logs that
operators compare with Dkron's.  The ``http`` executor builds redirects and
output streaming on the primitives; :func:`request` is the one-shot form the
notifiers use.
"""

from __future__ import annotations

import base64
import os
import re
import socket
import ssl
import urllib.parse
from collections.abc import Iterable
from dataclasses import dataclass

import h11
import trio

from dkron.golang import go_quote

__all__ = [
    "MAX_HEAD",
    "TOKEN",
    "RequestError",
    "Response",
    "Url",
    "canonical_header",
    "connect",
    "default_tls",
    "header_value",
    "lower_first",
    "net_error_text",
    "next_event",
    "parse_url",
    "receive_head",
    "request",
    "send_request",
]

_READ_SIZE = 65536
#: Largest response head (status line and headers) accepted.
MAX_HEAD = 64 * 1024
#: An RFC 9110 token: a method or a header name.
TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
#: Headers the client computes itself (Go ignores them in ``Request.Header``).
_FRAMING = frozenset({"host", "content-length", "transfer-encoding", "trailer", "connection"})


class RequestError(Exception):
    """A request that failed; the text is the run's error."""


def canonical_header(name: str) -> str:
    """``textproto.CanonicalMIMEHeaderKey``: ``content-type`` -> ``Content-Type``."""
    if not TOKEN.fullmatch(name):
        return name
    return "-".join(part[:1].upper() + part[1:].lower() for part in name.split("-"))


@dataclass(frozen=True, slots=True, kw_only=True)
class Url:
    url: str
    https: bool
    host: str  # for connecting and TLS (no brackets)
    port: int
    authority: str  # the Host header
    target: str  # path and query
    auth: str | None  # Basic credentials from the URL's userinfo


def parse_url(url: str) -> Url:
    """Split and check a URL, with Go's wording for the errors Go reports too."""
    quoted = go_quote(url)
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in url):
        raise RequestError(f"parse {quoted}: net/url: invalid control character in URL")
    try:
        parts = urllib.parse.urlsplit(url)
    except ValueError as exc:
        raise RequestError(f"parse {quoted}: {lower_first(str(exc))}") from None
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https"):
        raise RequestError(f"unsupported protocol scheme {go_quote(parts.scheme)}")
    try:
        port = parts.port
    except ValueError:
        port_text = parts.netloc.rpartition(":")[2]
        raise RequestError(
            f"parse {quoted}: invalid port {go_quote(':' + port_text)} after host"
        ) from None
    host = parts.hostname or ""
    if not host:
        raise RequestError("http: no Host in request URL")
    if not host.isascii():
        try:
            host = host.encode("idna").decode("ascii")
        except UnicodeError as exc:
            raise RequestError(f"parse {quoted}: invalid host: {exc}") from None
    authority = parts.netloc.rpartition("@")[2]
    if not authority.isascii():
        authority = f"[{host}]" if ":" in host else host
        if parts.port is not None:
            authority += f":{parts.port}"
    path = urllib.parse.quote(parts.path or "/", safe="/%:@!$&'()*+,;=-._~")
    target = path + (
        "?" + urllib.parse.quote(parts.query, safe="=&%+/:@!$'()*,;?-._~") if parts.query else ""
    )
    auth = None
    if parts.username is not None:
        user = urllib.parse.unquote(parts.username)
        password = urllib.parse.unquote(parts.password or "")
        auth = base64.b64encode(f"{user}:{password}".encode()).decode("ascii")
    return Url(
        url=url,
        https=scheme == "https",
        host=host,
        port=port if port is not None else (443 if scheme == "https" else 80),
        authority=authority,
        target=target,
        auth=auth,
    )


def net_error_text(exc: BaseException, url: Url) -> str:
    """Go-like wording for a failed connection (``dial tcp …: connect: connection refused``)."""
    if isinstance(exc, socket.gaierror):
        return f"dial tcp: lookup {url.host}: {lower_first(exc.strerror or str(exc))}"
    if isinstance(exc, OSError):
        causes: list[BaseException] = [exc]
        if isinstance(exc.__cause__, BaseExceptionGroup):
            causes = list(exc.__cause__.exceptions)
        last = causes[-1]
        if isinstance(last, OSError) and last.errno is not None:
            text = os.strerror(last.errno)
            return f"dial tcp {url.host}:{url.port}: connect: {lower_first(text)}"
        return f"dial tcp {url.host}:{url.port}: {exc}"
    if isinstance(exc, trio.BrokenResourceError) and isinstance(exc.__cause__, ssl.SSLError):
        return f"tls: {exc.__cause__}"
    if isinstance(exc, h11.ProtocolError):
        return f"malformed HTTP response: {exc}"
    cause = exc.__cause__
    return f"connection broken: {cause or exc.__class__.__name__}"


def lower_first(text: str) -> str:
    return text[:1].lower() + text[1:]


_default_tls: ssl.SSLContext | None = None
_default_tls_loading = trio.Lock()


async def default_tls() -> ssl.SSLContext:
    """The system trust store, loaded once per process and off the event loop.

    Loading it reads every system CA, tens of milliseconds of CPU: per
    request (a Cronitor ping per run) or on the event loop that would stall
    the agent, and concurrent first requests wait for one load.
    """
    global _default_tls
    if _default_tls is None:
        async with _default_tls_loading:
            if _default_tls is None:
                _default_tls = await trio.to_thread.run_sync(ssl.create_default_context)
    return _default_tls


async def connect(url: Url, tls: ssl.SSLContext | None) -> trio.abc.Stream:
    try:
        tcp = await trio.open_tcp_stream(url.host, url.port)
    except OSError as exc:
        raise RequestError(net_error_text(exc, url)) from exc
    if not url.https:
        return tcp
    if tls is None:
        tls = await default_tls()
    stream = trio.SSLStream(tcp, tls, server_hostname=url.host, https_compatible=True)
    try:
        await stream.do_handshake()
    except BaseException as exc:  # the socket must be closed on cancellation too
        await trio.aclose_forcefully(tcp)
        if isinstance(exc, trio.BrokenResourceError):
            raise RequestError(net_error_text(exc, url)) from exc
        raise
    return stream


def header_value(headers: Iterable[tuple[bytes, bytes]], name: bytes) -> str | None:
    for k, v in headers:
        if k == name:
            return v.decode("latin-1")
    return None


async def send_request(
    *,
    stream: trio.abc.Stream,
    conn: h11.Connection,
    method: str,
    url: Url,
    headers: dict[str, tuple[str, str]],
    body: bytes,
) -> None:
    wire: list[tuple[bytes, bytes]] = [(b"Host", url.authority.encode("ascii"))]
    if url.auth is not None and "authorization" not in headers:
        wire.append((b"Authorization", f"Basic {url.auth}".encode("ascii")))
    if body or method in ("POST", "PUT", "PATCH"):
        wire.append((b"Content-Length", str(len(body)).encode("ascii")))
    wire.extend(
        (name.encode("utf-8", "surrogateescape"), value.encode("utf-8", "surrogateescape"))
        for name, value in headers.values()
    )
    wire.append((b"Connection", b"close"))
    try:
        data = conn.send(h11.Request(method=method, target=url.target, headers=wire))
        if body:
            data += conn.send(h11.Data(data=body))
        data += conn.send(h11.EndOfMessage())
    except h11.LocalProtocolError as exc:
        raise RequestError(f"invalid request: {exc}") from None
    try:
        await stream.send_all(data)
    except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
        raise RequestError(net_error_text(exc, url)) from exc


async def next_event(stream: trio.abc.Stream, conn: h11.Connection) -> object:
    while True:
        try:
            event = conn.next_event()
        except h11.RemoteProtocolError as exc:
            raise RequestError(f"malformed HTTP response: {exc}") from None
        if event is not h11.NEED_DATA:
            return event
        try:
            data = await stream.receive_some(_READ_SIZE)
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            cause = exc.__cause__
            raise RequestError(f"read: {cause or 'connection broken'}") from exc
        conn.receive_data(bytes(data))


async def receive_head(stream: trio.abc.Stream, conn: h11.Connection) -> h11.Response:
    while True:
        event = await next_event(stream, conn)
        if isinstance(event, h11.Response):
            return event
        if isinstance(event, h11.ConnectionClosed):
            raise RequestError("EOF")
        # InformationalResponse (1xx): keep waiting for the final response


@dataclass(frozen=True, slots=True, kw_only=True)
class Response:
    """A complete response; ``body`` is at most ``max_body`` bytes (``truncated`` if more)."""

    status: int
    headers: tuple[tuple[bytes, bytes], ...]
    body: bytes
    truncated: bool


async def request(
    method: str,
    url: str,
    *,
    headers: Iterable[tuple[str, str]] = (),
    body: bytes = b"",
    tls: ssl.SSLContext | None = None,
    host: str | None = None,
    max_body: int = 64 * 1024,
) -> Response:
    """Send one request and read the whole response (no redirects are followed).

    ``headers`` are sent as given after ``Host`` (``host`` replaces the
    URL's authority there, as Go's ``Request.Host`` does); framing headers
    among them are ignored because the client computes its own.  Every
    failure is a :class:`RequestError` with Go's wording; the caller puts a
    deadline around the call.
    """
    parsed = parse_url(url)
    if host is not None:
        if not host.isascii() or any(c in host for c in "\r\n\0"):
            raise RequestError(f"invalid Host header {go_quote(host)}")
        parsed = Url(
            url=parsed.url,
            https=parsed.https,
            host=parsed.host,
            port=parsed.port,
            authority=host,
            target=parsed.target,
            auth=parsed.auth,
        )
    wire: dict[str, tuple[str, str]] = {}
    for name, value in headers:
        if name.lower() not in _FRAMING:
            wire[name.lower()] = (name, value)
    async with await connect(parsed, tls) as stream:
        conn = h11.Connection(h11.CLIENT, max_incomplete_event_size=MAX_HEAD)
        await send_request(
            stream=stream, conn=conn, method=method, url=parsed, headers=wire, body=body
        )
        head = await receive_head(stream, conn)
        kept = bytearray()
        truncated = False
        while True:
            event = await next_event(stream, conn)
            if isinstance(event, h11.Data):
                room = max_body - len(kept)
                if len(event.data) > room:
                    truncated = True
                kept += bytes(event.data[: max(room, 0)])
            elif isinstance(event, h11.EndOfMessage | h11.ConnectionClosed):
                break
    return Response(
        status=head.status_code,
        headers=tuple((bytes(k), bytes(v)) for k, v in head.headers),
        body=bytes(kept),
        truncated=truncated,
    )
