"""The ``http`` executor: Dkron's keys and messages over an h11 client on Trio streams.

One connection per request (``Connection: close``, as Dkron), TLS through
``trio.SSLStream``, redirects followed as Go's ``http.Client`` does, and
the response body streamed to the output as it arrives.  Every read is
bounded: the output keeps only its tail, and the body kept for
``expectBody`` has a cap of its own.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import ssl
import urllib.parse
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass

import h11
import trio

import dkron
from dkron.io_trio.executors.base import (
    ExecResult,
    OutputRing,
    OutputSink,
    RunContext,
    go_quote,
    parse_go_bool,
)
from dkron.io_trio.httpclient import MAX_HEAD as _MAX_HEAD
from dkron.io_trio.httpclient import TOKEN as _TOKEN
from dkron.io_trio.httpclient import RequestError as _RequestError
from dkron.io_trio.httpclient import Url as _Url
from dkron.io_trio.httpclient import canonical_header as _canonical
from dkron.io_trio.httpclient import connect as _connect
from dkron.io_trio.httpclient import header_value as _header
from dkron.io_trio.httpclient import lower_first as _lower
from dkron.io_trio.httpclient import next_event as _next_event
from dkron.io_trio.httpclient import parse_url as _parse_url
from dkron.io_trio.httpclient import receive_head as _receive_head
from dkron.io_trio.httpclient import send_request as _send_request

__all__ = ["DEFAULT_TIMEOUT", "MAX_MATCH_BODY", "MAX_REDIRECTS", "HttpExecutor"]

_log = logging.getLogger(__name__)

#: Dkron's default whole-request timeout, in seconds.
DEFAULT_TIMEOUT = 30
#: Go's ``http.Client`` gives up after this many redirects.
MAX_REDIRECTS = 10
#: How much of the body is kept to search with ``expectBody``.
MAX_MATCH_BODY = 16 * 1024 * 1024

_TLS_CACHE_SIZE = 100
#: Framing and routing headers the client computes itself (Go ignores them in ``Header``).
_COMPUTED = frozenset({"host", "content-length", "transfer-encoding", "trailer", "connection"})
#: Dropped on a redirect to another host, as Go does.
_SENSITIVE = frozenset({"authorization", "www-authenticate", "cookie", "cookie2"})
_REDIRECTS = frozenset({301, 302, 303, 307, 308})


def _go_map(config: Mapping[str, str]) -> str:
    """``fmt.Sprintf("%#v", map[string]string)``: sorted keys, Go-quoted."""
    items = ", ".join(f"{go_quote(k)}:{go_quote(config[k])}" for k in sorted(config))
    return "map[string]string{" + items + "}"


def _go_atoi(text: str) -> int:
    """``strconv.Atoi`` with its error text."""
    body = text[1:] if text[:1] in "+-" else text
    if not body or not body.isascii() or not body.isdigit():
        raise ValueError(f"strconv.Atoi: parsing {go_quote(text)}: invalid syntax")
    value = int(text)
    if not -(1 << 63) <= value < (1 << 63):
        raise ValueError(f"strconv.Atoi: parsing {go_quote(text)}: value out of range")
    return value


class _Out:
    """The run's output: streamed to the sink and kept (tail) for the result."""

    def __init__(self, sink: OutputSink) -> None:
        self.sink = sink
        self.ring = OutputRing()

    async def write(self, data: bytes | str) -> None:
        if isinstance(data, str):
            data = data.encode("utf-8", "surrogateescape")
        if data:
            self.ring.write(data)
            await self.sink(data)

    def fail(self, error: str) -> ExecResult:
        return ExecResult.failed(error, self.ring.getvalue())


@dataclass(frozen=True, slots=True, kw_only=True)
class _Response:
    status: int
    body: bytes | None  # None when it outgrew MAX_MATCH_BODY
    url: _Url


class _Phase:
    """Where a request is, so that a timeout is worded as Go words it."""

    __slots__ = ("reading_body", "url")

    def __init__(self, url: _Url) -> None:
        self.url = url
        self.reading_body = False


class HttpExecutor:
    """Sends ``executor_config``'s request; see docs/executors.md for every key.

    TLS contexts are cached per TLS settings (and the files' modification
    times, so that a rotated certificate is picked up), like Dkron's client
    pool but keyed on every TLS key, which Dkron's pool was not.
    """

    def __init__(
        self, *, max_redirects: int = MAX_REDIRECTS, max_match_body: int = MAX_MATCH_BODY
    ) -> None:
        if max_redirects < 0 or max_match_body <= 0:
            raise ValueError("limits must be positive")
        self._max_redirects = max_redirects
        self._max_match_body = max_match_body
        self._tls: OrderedDict[tuple[object, ...], tuple[ssl.SSLContext, tuple[str, ...]]] = (
            OrderedDict()
        )
        # Building a context reads every system CA (tens of ms of CPU): when
        # many runs with new settings start at once, one builds it and the
        # others wait for it rather than each building its own.
        self._tls_building = trio.Lock()

    async def run(
        self, config: Mapping[str, str], ctx: RunContext, output: OutputSink
    ) -> ExecResult:
        out = _Out(output)
        debug = config.get("debug", "") != ""
        if debug:
            await out.write(f"Config: {_go_map(config)}\n")
        raw_url = config.get("url", "")
        if not raw_url:
            return out.fail("url is empty")
        method = config.get("method", "")
        if not method:
            return out.fail("method is empty")
        if not _TOKEN.fullmatch(method):
            return out.fail(f"net/http: invalid method {go_quote(method)}")
        op = method[:1].upper() + method[1:].lower()
        try:
            url = _parse_url(raw_url)
        except _RequestError as exc:
            text = str(exc)
            if text.startswith("parse "):
                return out.fail(text)
            return out.fail(f"{op} {go_quote(raw_url)}: {text}")

        headers: dict[str, tuple[str, str]] = {k.lower(): (k, v) for k, v in ctx.headers().items()}
        headers["user-agent"] = ("User-Agent", f"dkron/{dkron.__version__}")
        for line in await self._header_lines(config.get("headers", ""), out):
            name, sep, value = line.partition(":")
            if not sep:
                await out.write(f"Warning: ignoring header without a colon: {go_quote(line)}.\n")
                continue
            name = _canonical(name.strip())
            if name.lower() not in _COMPUTED:
                headers[name.lower()] = (name, value.strip())

        timeout = await self._timeout(config.get("timeout", ""), out)
        tls, warnings = await self._tls_context(config)
        for warning in warnings:
            await out.write(f"Warning: {warning}.\n")
        if debug:
            _log.info("http: request %s %s headers=%r", method, raw_url, list(headers.values()))

        expect_body = config.get("expectBody", "")
        phase = _Phase(url)
        deadline = trio.current_time() + timeout if timeout > 0 else math.inf
        response: _Response | None = None
        with trio.move_on_at(deadline):
            try:
                response = await self._follow(
                    method=method,
                    url=url,
                    headers=headers,
                    body=config.get("body", "").encode("utf-8", "surrogateescape"),
                    tls=tls,
                    out=out,
                    phase=phase,
                    keep_body=bool(expect_body),
                )
            except _RequestError as exc:
                return out.fail(f"{op} {go_quote(phase.url.url)}: {exc}")
        if response is None:
            if phase.reading_body:
                return out.fail(
                    "context deadline exceeded (Client.Timeout or context cancellation "
                    "while reading body)"
                )
            return out.fail(
                f"{op} {go_quote(phase.url.url)}: context deadline exceeded "
                "(Client.Timeout exceeded while awaiting headers)"
            )
        if debug:
            _log.info("http: response %s from %s", response.status, response.url.url)

        if expect := config.get("expectCode", ""):
            codes = {code.strip() for code in expect.split(",")}
            if str(response.status) not in codes:
                return out.fail("received response code does not match the expected code")
        if expect_body:
            if response.body is None:
                return out.fail(
                    "received response body did not match the expected body "
                    f"(body longer than {self._max_match_body} bytes)"
                )
            try:
                pattern = re.compile(expect_body)
            except re.error as exc:
                return out.fail(
                    "received response body did not match the expected body "
                    f"(invalid regexp: {exc})"
                )
            if not pattern.search(response.body.decode("utf-8", "surrogateescape")):
                return out.fail("received response body did not match the expected body")
        return ExecResult.of(out.ring.getvalue(), "")

    # -- configuration ------------------------------------------------------

    @staticmethod
    async def _header_lines(raw: str, out: _Out) -> list[str]:
        if not raw:
            return []
        try:
            value = json.loads(raw)
        except ValueError:
            value = False
        if value is None:
            return []  # JSON null decodes to an empty slice in Go
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            await out.write("Error: parsing headers failed\n")
            return []
        return [v for v in value if v]

    @staticmethod
    async def _timeout(raw: str, out: _Out) -> int:
        if not raw:
            return DEFAULT_TIMEOUT
        try:
            return _go_atoi(raw)
        except ValueError as exc:
            await out.write(
                f'Warning: invalid timeout value: "{raw}" not understood ({exc}), '
                f"using default value of {DEFAULT_TIMEOUT}.\n"
            )
            return DEFAULT_TIMEOUT

    async def _tls_context(
        self, config: Mapping[str, str]
    ) -> tuple[ssl.SSLContext, tuple[str, ...]]:
        files = (
            config.get("tlsCertificateFile", ""),
            config.get("tlsCertificateKeyFile", ""),
            config.get("tlsRootCAsFile", ""),
        )
        key: tuple[object, ...] = (config.get("tlsNoVerifyPeer", ""), *files, *map(_mtime, files))
        cached = self._tls.get(key)
        if cached is not None:
            self._tls.move_to_end(key)
            return cached
        async with self._tls_building:
            cached = self._tls.get(key)  # built while this run waited
            if cached is None:
                cached = await trio.to_thread.run_sync(
                    _build_tls, config.get("tlsNoVerifyPeer", ""), *files
                )
                self._tls[key] = cached
                while len(self._tls) > _TLS_CACHE_SIZE:
                    self._tls.popitem(last=False)
        return cached

    # -- the exchange -------------------------------------------------------

    async def _follow(
        self,
        *,
        method: str,
        url: _Url,
        headers: dict[str, tuple[str, str]],
        body: bytes,
        tls: ssl.SSLContext,
        out: _Out,
        phase: _Phase,
        keep_body: bool,
    ) -> _Response:
        """Go's redirect policy: 301/302/303 turn into GET, 307/308 resend as is."""
        first_host = url.host
        for hop in range(self._max_redirects + 1):
            phase.url = url
            async with await _connect(url, tls) as stream:
                conn = h11.Connection(h11.CLIENT, max_incomplete_event_size=_MAX_HEAD)
                await _send_request(
                    stream=stream, conn=conn, method=method, url=url, headers=headers, body=body
                )
                head = await _receive_head(stream, conn)
                location = _header(head.headers, b"location")
                if head.status_code in _REDIRECTS and location is not None:
                    if hop == self._max_redirects:
                        break
                    url = _redirect_target(url, location)
                    if head.status_code in (301, 302, 303):
                        if method not in ("GET", "HEAD"):
                            method = "GET"
                        body = b""
                    if url.host != first_host and not url.host.endswith("." + first_host):
                        headers = {k: v for k, v in headers.items() if k not in _SENSITIVE}
                    continue
                phase.reading_body = True
                kept = await _receive_body(
                    stream, conn, out, self._max_match_body if keep_body else 0
                )
                return _Response(status=head.status_code, body=kept, url=url)
        raise _RequestError(f"stopped after {self._max_redirects} redirects")


def _mtime(path: str) -> int | None:
    if not path:
        return None
    try:
        return os.stat(path).st_mtime_ns
    except OSError:
        return None


def _build_tls(
    no_verify: str, cert_file: str, key_file: str, ca_file: str
) -> tuple[ssl.SSLContext, tuple[str, ...]]:
    """An SSL context and Dkron's warnings, in Dkron's order; blocking (file reads)."""
    warnings: list[str] = []
    ctx: ssl.SSLContext | None = None
    ca_warning = None
    if ca_file:
        try:
            with open(ca_file, encoding="ascii", errors="replace") as f:
                pem = f.read()
            if "-----BEGIN CERTIFICATE-----" not in pem:
                raise ValueError("no certificates in file")
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
            ctx.load_verify_locations(cadata=pem)
        except (OSError, ValueError) as exc:  # ssl.SSLError is an OSError
            ctx = None
            ca_warning = (
                f"using system root CAs instead of configured CAs: {_file_error(exc, ca_file)}"
            )
    if ctx is None:
        ctx = ssl.create_default_context()
    ctx.set_alpn_protocols(["http/1.1"])
    if no_verify:
        try:
            if parse_go_bool(no_verify):
                ctx.check_hostname = False
                ctx.verify_mode = ssl.CERT_NONE
        except ValueError as exc:
            warnings.append(f"not disabling certificate validation: {exc}")
    if cert_file:
        try:
            ctx.load_cert_chain(cert_file, key_file or None)
        except OSError as exc:
            warnings.append(f"not using client certificate: {_file_error(exc, cert_file)}")
    if ca_warning is not None:
        warnings.append(ca_warning)
    return ctx, tuple(warnings)


def _file_error(exc: BaseException, path: str) -> str:
    """Go's ``open <path>: <errno text>`` for an unreadable file, else the error itself."""
    if isinstance(exc, OSError) and not isinstance(exc, ssl.SSLError) and exc.errno:
        return f"open {exc.filename or path}: {_lower(exc.strerror or str(exc))}"
    return str(exc)


def _redirect_target(current: _Url, location: str) -> _Url:
    try:
        return _parse_url(urllib.parse.urljoin(current.url, location))
    except _RequestError as exc:
        raise _RequestError(f"failed to follow redirect to {go_quote(location)}: {exc}") from None


async def _receive_body(
    stream: trio.abc.Stream, conn: h11.Connection, out: _Out, keep: int
) -> bytes | None:
    """Stream the body to the output; keep up to ``keep`` bytes (None past that)."""
    kept: bytearray | None = bytearray() if keep else None
    while True:
        event = await _next_event(stream, conn)
        if isinstance(event, h11.Data):
            chunk = bytes(event.data)
            if kept is not None:
                if len(kept) + len(chunk) > keep:
                    kept = None
                else:
                    kept += chunk
            await out.write(chunk)
        elif isinstance(event, h11.EndOfMessage | h11.ConnectionClosed):
            break
    if keep and kept is None:
        return None
    return bytes(kept) if kept is not None else b""
