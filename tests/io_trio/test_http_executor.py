"""The http executor against a real loopback h11 server, over TCP and TLS."""

from __future__ import annotations

import datetime as dt
import ipaddress
import json
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import h11
import pytest
import trio
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from hypothesis import example, given
from hypothesis import strategies as st

from dkron.io_trio import httpclient
from dkron.io_trio.executors import ExecResult, HttpExecutor, RunContext
from dkron.io_trio.executors import http as http_executor
from dkron.io_trio.executors.http import _Out
from dkron.io_trio.httpclient import RequestError as _RequestError
from dkron.io_trio.httpclient import parse_url as _parse_url

CTX = RunContext(
    job_name="job1",
    execution_id="1735725610123456789-node1",
    scheduled_time=dt.datetime(2025, 1, 2, 3, 4, 5, tzinfo=dt.UTC),
    attempt=1,
    trigger="schedule",
    node_name="node1",
)
LIMIT = 10


class Sink:
    def __init__(self) -> None:
        self.chunks: list[bytes] = []

    async def __call__(self, chunk: bytes, /) -> None:
        self.chunks.append(chunk)


# -- certificates ------------------------------------------------------------------


@dataclass(frozen=True)
class Pki:
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    d = tmp_path_factory.mktemp("pki")
    now = dt.datetime.now(dt.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (
        x509.CertificateBuilder()
        .subject_name(_name("dkron test CA"))
        .issuer_name(_name("dkron test CA"))
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(
            x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )

    def leaf(
        cn: str, usage: x509.ObjectIdentifier, san: list[x509.GeneralName]
    ) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
        key = ec.generate_private_key(ec.SECP256R1())
        builder = (
            x509.CertificateBuilder()
            .subject_name(_name(cn))
            .issuer_name(ca.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(days=1))
            .not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
                critical=False,
            )
        )
        if san:
            builder = builder.add_extension(x509.SubjectAlternativeName(san), critical=False)
        return builder.sign(ca_key, hashes.SHA256()), key

    server, server_key = leaf(
        "localhost",
        ExtendedKeyUsageOID.SERVER_AUTH,
        [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))],
    )
    client, client_key = leaf("dkron-client", ExtendedKeyUsageOID.CLIENT_AUTH, [])
    pem = serialization.Encoding.PEM
    paths = Pki(
        ca=d / "ca.pem",
        server_cert=d / "server.pem",
        server_key=d / "server.key",
        client_cert=d / "client.pem",
        client_key=d / "client.key",
    )
    paths.ca.write_bytes(ca.public_bytes(pem))
    paths.server_cert.write_bytes(server.public_bytes(pem))
    paths.client_cert.write_bytes(client.public_bytes(pem))
    _write_key(paths.server_key, server_key)
    _write_key(paths.client_key, client_key)
    return paths


# -- the loopback server -----------------------------------------------------------


@dataclass
class Seen:
    """What the server received, for the test to inspect."""

    requests: list[tuple[h11.Request, bytes]]
    hold: trio.Event  # set when a request reached a route that stalls


Route = Callable[[h11.Request, bytes, trio.abc.Stream, h11.Connection], Awaitable[None]]


async def _send(stream: trio.abc.Stream, conn: h11.Connection, *events: h11.Event) -> None:
    for ev in events:
        data = conn.send(ev)
        if data:
            await stream.send_all(data)


async def _reply(
    stream: trio.abc.Stream,
    conn: h11.Connection,
    status: int,
    body: bytes,
    headers: list[tuple[str, str]] | None = None,
) -> None:
    hdrs = [("Content-Length", str(len(body))), *(headers or [])]
    await _send(
        stream,
        conn,
        h11.Response(status_code=status, headers=hdrs),
        h11.Data(data=body),
        h11.EndOfMessage(),
    )


def _peer_cn(stream: trio.abc.Stream) -> str:
    if not isinstance(stream, trio.SSLStream):
        return "plain"
    cert = stream.getpeercert()
    if not cert:
        return "none"
    for rdn in cert["subject"]:
        for key, value in rdn:
            if key == "commonName":
                return str(value)
    return "?"


async def _route(
    seen: Seen, req: h11.Request, body: bytes, stream: trio.abc.Stream, conn: h11.Connection
) -> None:
    path = req.target.decode()
    if path.startswith("/echo"):
        doc = {
            "method": req.method.decode(),
            "target": path,
            "headers": [[k.decode(), v.decode()] for k, v in req.headers.raw_items()],
            "body": body.decode(),
            "peer": _peer_cn(stream),
        }
        await _reply(
            stream, conn, 200, json.dumps(doc).encode(), [("Content-Type", "application/json")]
        )
    elif path.startswith("/status/"):
        code = int(path.split("/")[2])
        await _reply(stream, conn, code, f"status {code}".encode())
    elif path == "/chunked":
        await _send(
            stream, conn, h11.Response(status_code=200, headers=[("Transfer-Encoding", "chunked")])
        )
        for part in (b"one,", b"two,", b"three"):
            await _send(stream, conn, h11.Data(data=part))
            await trio.sleep(0.01)
        await _send(stream, conn, h11.EndOfMessage())
    elif path == "/big":
        await _reply(stream, conn, 200, b"a" * 299_997 + b"END")
    elif path == "/slow":
        seen.hold.set()
        await trio.sleep_forever()
    elif path == "/slowbody":
        await _send(
            stream, conn, h11.Response(status_code=200, headers=[("Content-Length", "100")])
        )
        await _send(stream, conn, h11.Data(data=b"partial"))
        seen.hold.set()
        await trio.sleep_forever()
    elif path.startswith("/redirect/"):
        n = int(path.split("/")[2])
        where = "/echo" if n <= 1 else f"/redirect/{n - 1}"
        await _reply(stream, conn, 302, b"moved", [("Location", where)])
    elif path == "/temporary":
        await _reply(stream, conn, 307, b"", [("Location", "/echo?kept")])
    elif path == "/no-location":
        await _reply(stream, conn, 301, b"no location")
    elif path == "/until-close":
        await stream.send_all(b"HTTP/1.0 200 OK\r\nX-Old: yes\r\n\r\nbody until close")
    elif path == "/garbage":
        await stream.send_all(b"NOT HTTP AT ALL\r\n\r\n")
    else:
        await _reply(stream, conn, 404, b"not found")


async def _handle(seen: Seen, stream: trio.abc.Stream) -> None:
    conn = h11.Connection(h11.SERVER)
    req: h11.Request | None = None
    body = bytearray()
    try:
        async with stream:
            while True:
                ev = conn.next_event()
                if ev is h11.NEED_DATA:
                    conn.receive_data(bytes(await stream.receive_some(65536)))
                elif isinstance(ev, h11.Request):
                    req = ev
                elif isinstance(ev, h11.Data):
                    body += ev.data
                elif isinstance(ev, h11.EndOfMessage):
                    break
                else:
                    return
            assert req is not None
            seen.requests.append((req, bytes(body)))
            await _route(seen, req, bytes(body), stream, conn)
    except (trio.BrokenResourceError, trio.ClosedResourceError, h11.ProtocolError):
        return  # the client went away or failed its handshake: not the server's problem


@dataclass
class Server:
    seen: Seen
    port: int
    tls_port: int
    mtls_port: int

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"


@pytest.fixture
async def server(nursery: trio.Nursery, pki: Pki) -> AsyncIterator[Server]:
    seen = Seen(requests=[], hold=trio.Event())

    async def handler(stream: trio.abc.Stream) -> None:
        await _handle(seen, stream)

    plain = await nursery.start(partial(trio.serve_tcp, handler, 0, host="127.0.0.1"))

    def server_ctx(require_client: bool) -> ssl.SSLContext:
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.load_cert_chain(pki.server_cert, pki.server_key)
        ctx.load_verify_locations(pki.ca)
        ctx.verify_mode = ssl.CERT_REQUIRED if require_client else ssl.CERT_OPTIONAL
        return ctx

    def serve_tls(require_client: bool) -> Callable[..., Awaitable[object]]:
        return partial(
            trio.serve_ssl_over_tcp,
            handler,
            0,
            server_ctx(require_client),
            host="127.0.0.1",
            https_compatible=True,
        )

    tls = await nursery.start(serve_tls(False))
    mtls = await nursery.start(serve_tls(True))
    yield Server(
        seen=seen,
        port=plain[0].socket.getsockname()[1],
        tls_port=tls[0].transport_listener.socket.getsockname()[1],
        mtls_port=mtls[0].transport_listener.socket.getsockname()[1],
    )


async def run(
    config: dict[str, str], sink: Sink | None = None, executor: HttpExecutor | None = None
) -> ExecResult:
    with trio.fail_after(LIMIT):
        return await (executor or HttpExecutor()).run(config, CTX, sink or Sink())


def echoed(res: ExecResult) -> dict[str, object]:
    doc: dict[str, object] = json.loads(res.output[res.output.index(b"{") :])
    return doc


def header_map(doc: dict[str, object]) -> dict[str, str]:
    pairs = doc["headers"]
    assert isinstance(pairs, list)
    return {k: v for k, v in pairs}


# -- requests ----------------------------------------------------------------------


async def test_get_sends_the_run_context_and_closes(server: Server) -> None:
    sink = Sink()
    res = await run({"method": "GET", "url": server.url("/echo?a=1&b=%20x")}, sink)
    assert res.success
    assert b"".join(sink.chunks) == res.output
    doc = echoed(res)
    assert doc["method"] == "GET"
    assert doc["target"] == "/echo?a=1&b=%20x"
    h = header_map(doc)
    assert h["Host"] == f"127.0.0.1:{server.port}"
    assert h["Connection"] == "close"
    assert "Content-Length" not in h  # GET without a body, as Go
    assert h["X-Dkron-Job-Name"] == "job1"
    assert h["X-Dkron-Scheduled-Time"] == "2025-01-02T03:04:05Z"
    assert h["X-Dkron-Execution-Id"] == "1735725610123456789-node1"
    assert h["X-Dkron-Attempt"] == "1"
    assert h["X-Dkron-Trigger"] == "schedule"
    assert h["X-Dkron-Node-Name"] == "node1"


async def test_post_body_and_headers_split_on_the_first_colon(server: Server) -> None:
    headers = json.dumps(
        ["Content-Type: application/json", "Authorization: Bearer a:b:c", "x-lower-case:  v ", ""]
    )
    res = await run(
        {"method": "POST", "url": server.url("/echo"), "body": '{"k": 1}', "headers": headers}
    )
    doc = echoed(res)
    assert doc["method"] == "POST"
    assert doc["body"] == '{"k": 1}'
    h = header_map(doc)
    assert h["Authorization"] == "Bearer a:b:c"  # Dkron would send "Bearer a"
    assert h["Content-Type"] == "application/json"
    assert h["X-Lower-Case"] == "v"  # canonicalised and trimmed, as Go's Header.Set
    assert h["Content-Length"] == "8"


async def test_user_headers_override_context_but_not_framing(server: Server) -> None:
    headers = json.dumps(["X-Dkron-Trigger: custom", "Content-Length: 999", "Host: evil"])
    res = await run({"method": "PUT", "url": server.url("/echo"), "headers": headers})
    h = header_map(echoed(res))
    assert h["X-Dkron-Trigger"] == "custom"
    assert h["Content-Length"] == "0"  # PUT without body still says so, as Go
    assert h["Host"] == f"127.0.0.1:{server.port}"


async def test_bad_headers_warn_and_continue(server: Server) -> None:
    res = await run({"method": "GET", "url": server.url("/echo"), "headers": "not json"})
    assert res.success
    assert res.output.startswith(b"Error: parsing headers failed\n{")
    res = await run({"method": "GET", "url": server.url("/echo"), "headers": '["NoColon"]'})
    assert res.output.startswith(b'Warning: ignoring header without a colon: "NoColon".\n{')
    res = await run({"method": "GET", "url": server.url("/echo"), "headers": "null"})
    assert res.output.startswith(b"{")


async def test_url_userinfo_becomes_basic_auth(server: Server) -> None:
    res = await run({"method": "GET", "url": f"http://user:p%40ss@127.0.0.1:{server.port}/echo"})
    assert header_map(echoed(res))["Authorization"] == "Basic dXNlcjpwQHNz"


async def test_head_has_no_body(server: Server) -> None:
    res = await run({"method": "HEAD", "url": server.url("/echo"), "expectCode": "200"})
    assert res == ExecResult(success=True, output=b"", error="")


# -- expectations ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "expect", "ok"),
    [
        (200, "200", True),
        (206, "200,206", True),
        (404, " 201, 404 ", True),
        (500, "", True),
        (500, "200", False),
        (200, "1200", False),  # Dkron's substring match would accept this
        (201, "200", False),
    ],
)
async def test_expect_code(server: Server, status: int, expect: str, ok: bool) -> None:
    res = await run({"method": "GET", "url": server.url(f"/status/{status}"), "expectCode": expect})
    assert res.output == f"status {status}".encode()
    assert res.success is ok
    if not ok:
        assert res.error == "received response code does not match the expected code"


@pytest.mark.parametrize(
    ("pattern", "error"),
    [
        ("sta.us 2", ""),
        (r"^status \d+$", ""),
        ("/status/", "received response body did not match the expected body"),
        ("nomatch", "received response body did not match the expected body"),
        (
            "(",
            "received response body did not match the expected body "
            "(invalid regexp: missing ), unterminated subpattern at position 0)",
        ),
    ],
)
async def test_expect_body(server: Server, pattern: str, error: str) -> None:
    res = await run({"method": "GET", "url": server.url("/status/200"), "expectBody": pattern})
    assert res.error == error
    assert res.output == b"status 200"


async def test_expect_body_on_a_body_over_the_bound(server: Server) -> None:
    ex = HttpExecutor(max_match_body=1000)
    res = await run({"method": "GET", "url": server.url("/big"), "expectBody": "END"}, executor=ex)
    assert res.error == (
        "received response body did not match the expected body (body longer than 1000 bytes)"
    )
    res = await run({"method": "GET", "url": server.url("/big")}, executor=ex)
    assert res.success  # without expectBody nothing is kept beyond the output tail


# -- framing and size --------------------------------------------------------------


async def test_chunked_response(server: Server) -> None:
    sink = Sink()
    res = await run(
        {"method": "GET", "url": server.url("/chunked"), "expectBody": "two,three$"}, sink
    )
    assert res == ExecResult(success=True, output=b"one,two,three", error="")
    assert b"".join(sink.chunks) == b"one,two,three"


async def test_read_until_close_response(server: Server) -> None:
    res = await run({"method": "GET", "url": server.url("/until-close")})
    assert res == ExecResult(success=True, output=b"body until close", error="")


async def test_big_body_is_tail_capped(server: Server) -> None:
    res = await run({"method": "GET", "url": server.url("/big")})
    assert res.success
    assert len(res.output) == 256_000
    assert res.output.endswith(b"aEND")


async def test_malformed_response(server: Server) -> None:
    res = await run({"method": "GET", "url": server.url("/garbage")})
    assert not res.success
    assert res.error.startswith(f'Get "{server.url("/garbage")}": malformed HTTP response')


# -- redirects ---------------------------------------------------------------------


async def test_redirects_are_followed(server: Server) -> None:
    res = await run({"method": "POST", "url": server.url("/redirect/3"), "body": "dropped"})
    doc = echoed(res)
    assert (doc["method"], doc["body"], doc["target"]) == ("GET", "", "/echo")
    res = await run({"method": "POST", "url": server.url("/temporary"), "body": "kept"})
    doc = echoed(res)
    assert (doc["method"], doc["body"], doc["target"]) == ("POST", "kept", "/echo?kept")
    res = await run({"method": "GET", "url": server.url("/no-location"), "expectCode": "301"})
    assert res == ExecResult(success=True, output=b"no location", error="")


async def test_too_many_redirects(server: Server) -> None:
    res = await run({"method": "GET", "url": server.url("/redirect/12")})
    assert res.error == f'Get "{server.url("/redirect/2")}": stopped after 10 redirects'
    res = await run({"method": "GET", "url": server.url("/redirect/10")})
    assert res.success


# -- configuration errors and warnings ---------------------------------------------


@pytest.mark.parametrize(
    ("config", "error"),
    [
        ({"method": "GET"}, "url is empty"),
        ({"url": "http://127.0.0.1/"}, "method is empty"),
        ({"url": "http://127.0.0.1/", "method": "G ET"}, 'net/http: invalid method "G ET"'),
        ({"url": "ftp://x/", "method": "GET"}, 'Get "ftp://x/": unsupported protocol scheme "ftp"'),
        (
            {"url": "http:///path", "method": "POST"},
            'Post "http:///path": http: no Host in request URL',
        ),
        (
            {"url": "http://h:abc/", "method": "GET"},
            'parse "http://h:abc/": invalid port ":abc" after host',
        ),
        (
            {"url": "http://h/\n", "method": "GET"},
            'parse "http://h/\\n": net/url: invalid control character in URL',
        ),
    ],
)
async def test_config_errors(config: dict[str, str], error: str) -> None:
    assert await run(config) == ExecResult(success=False, output=b"", error=error)


async def test_debug_prints_the_config_first(server: Server) -> None:
    url = server.url("/status/200")
    res = await run({"method": "GET", "url": url, "debug": "true"})
    assert (
        res.output
        == (
            'Config: map[string]string{"debug":"true", "method":"GET", '
            f'"url":"{url}"}}\nstatus 200'
        ).encode()
    )


async def test_invalid_timeout_warns_and_uses_the_default(server: Server) -> None:
    res = await run({"method": "GET", "url": server.url("/status/200"), "timeout": "abc"})
    assert res.success
    assert res.output == (
        b'Warning: invalid timeout value: "abc" not understood (strconv.Atoi: parsing "abc": '
        b"invalid syntax), using default value of 30.\nstatus 200"
    )


async def test_connection_refused() -> None:
    sock = trio.socket.socket()
    await sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()  # nothing listens there now
    res = await run({"method": "GET", "url": f"http://127.0.0.1:{port}/"})
    assert res == ExecResult(
        success=False,
        output=b"",
        error=f'Get "http://127.0.0.1:{port}/": '
        f"dial tcp 127.0.0.1:{port}: connect: connection refused",
    )


# -- timeouts and cancellation -------------------------------------------------------


async def test_timeout_awaiting_headers(server: Server) -> None:
    url = server.url("/slow")
    res = await run({"method": "GET", "url": url, "timeout": "1"})
    assert res.error == (
        f'Get "{url}": context deadline exceeded (Client.Timeout exceeded while awaiting headers)'
    )


async def test_timeout_reading_body_keeps_what_came(server: Server) -> None:
    res = await run({"method": "GET", "url": server.url("/slowbody"), "timeout": "1"})
    assert res == ExecResult(
        success=False,
        output=b"partial",
        error="context deadline exceeded "
        "(Client.Timeout or context cancellation while reading body)",
    )


async def test_cancellation_propagates(server: Server) -> None:
    with trio.fail_after(LIMIT):
        async with trio.open_nursery() as nursery:
            done: list[ExecResult] = []

            async def job() -> None:
                done.append(
                    await HttpExecutor().run(
                        {"method": "GET", "url": server.url("/slow")}, CTX, Sink()
                    )
                )

            nursery.start_soon(job)
            await server.seen.hold.wait()
            nursery.cancel_scope.cancel()
    assert nursery.cancel_scope.cancelled_caught
    assert not done


# -- TLS ---------------------------------------------------------------------------


async def test_https_with_configured_root_ca(server: Server, pki: Pki) -> None:
    for host in ("127.0.0.1", "localhost"):
        res = await run(
            {
                "method": "GET",
                "url": f"https://{host}:{server.tls_port}/echo",
                "tlsRootCAsFile": str(pki.ca),
            }
        )
        assert res.success, res.error
        assert echoed(res)["peer"] == "none"


async def test_https_unknown_ca_fails_unless_no_verify(server: Server) -> None:
    url = f"https://127.0.0.1:{server.tls_port}/echo"
    res = await run({"method": "GET", "url": url})
    assert not res.success
    assert res.error.startswith(f'Get "{url}": tls: ')
    assert "CERTIFICATE_VERIFY_FAILED" in res.error
    res = await run({"method": "GET", "url": url, "tlsNoVerifyPeer": "true"})
    assert res.success
    res = await run({"method": "GET", "url": url, "tlsNoVerifyPeer": "maybe"})
    assert res.output == (
        b'Warning: not disabling certificate validation: strconv.ParseBool: parsing "maybe": '
        b"invalid syntax.\n"
    )
    assert "CERTIFICATE_VERIFY_FAILED" in res.error


async def test_client_certificate(server: Server, pki: Pki) -> None:
    url = f"https://127.0.0.1:{server.mtls_port}/echo"
    base = {"method": "GET", "url": url, "tlsRootCAsFile": str(pki.ca)}
    res = await run(base)
    assert not res.success  # the server demands a certificate
    assert res.error.startswith(f'Get "{url}": ')
    with_cert = base | {
        "tlsCertificateFile": str(pki.client_cert),
        "tlsCertificateKeyFile": str(pki.client_key),
    }
    res = await run(with_cert)
    assert res.success, res.error
    assert echoed(res)["peer"] == "dkron-client"


async def test_tls_file_warnings(server: Server, pki: Pki, tmp_path: Path) -> None:
    url = f"https://127.0.0.1:{server.tls_port}/echo"
    empty = tmp_path / "empty.pem"
    empty.write_text("nothing here\n")
    res = await run(
        {
            "method": "GET",
            "url": url,
            "tlsNoVerifyPeer": "1",
            "tlsCertificateFile": "/nonexistent/cert.pem",
            "tlsRootCAsFile": str(empty),
        }
    )
    assert res.success
    lines = res.output.split(b"\n")
    assert lines[0] == (
        b"Warning: not using client certificate: open /nonexistent/cert.pem: "
        b"no such file or directory."
    )
    assert lines[1] == (
        b"Warning: using system root CAs instead of configured CAs: no certificates in file."
    )


async def test_tls_contexts_are_cached_per_settings(server: Server, pki: Pki) -> None:
    ex = HttpExecutor()
    url = f"https://127.0.0.1:{server.tls_port}/echo"
    for _ in range(3):
        assert (
            await run({"method": "GET", "url": url, "tlsRootCAsFile": str(pki.ca)}, executor=ex)
        ).success
    assert (
        await run({"method": "GET", "url": url, "tlsNoVerifyPeer": "true"}, executor=ex)
    ).success
    assert len(ex._tls) == 2


async def test_runs_starting_together_build_one_tls_context(
    server: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Many runs with settings not yet cached (an agent's first second): one build.

    Each build reads every system CA; 50 builds at once cost seconds of CPU.
    """
    builds: list[str] = []
    build = http_executor._build_tls

    def counted(*args: str) -> tuple[ssl.SSLContext, tuple[str, ...]]:
        builds.append(args[0])
        return build(*args)

    monkeypatch.setattr(http_executor, "_build_tls", counted)
    ex = HttpExecutor()
    results: list[ExecResult] = []

    async def one() -> None:
        results.append(await run({"method": "GET", "url": server.url("/echo")}, executor=ex))

    async with trio.open_nursery() as nursery:
        for _ in range(50):
            nursery.start_soon(one)
    assert len(results) == 50 and all(r.success for r in results)
    assert builds == [""]


async def test_the_system_trust_store_is_loaded_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """Requests without their own context (webhooks, Cronitor) share one, loaded off the loop."""
    loads: list[bool] = []
    create = ssl.create_default_context

    def counted() -> ssl.SSLContext:
        loads.append(True)
        return create()

    monkeypatch.setattr(httpclient, "_default_tls", None)
    monkeypatch.setattr(ssl, "create_default_context", counted)
    contexts: list[ssl.SSLContext] = []

    async def one() -> None:
        contexts.append(await httpclient.default_tls())

    async with trio.open_nursery() as nursery:
        for _ in range(20):
            nursery.start_soon(one)
    assert len(loads) == 1
    assert len(contexts) == 20 and all(c is contexts[0] for c in contexts)


# -- hostile configuration ---------------------------------------------------------

URLISH = st.one_of(
    st.text(max_size=40),
    st.builds(
        lambda scheme, rest: f"{scheme}://{rest}",
        st.sampled_from(["http", "https", "HTTP", "ftp", ""]),
        st.text(st.sampled_from("ab.:[]@%/?#é\u0000 1x-"), max_size=30),
    ),
)


@given(URLISH)
@example("http://[::1")
@example("http://h:99999/")
@example("http://\u00e9..x/")
def test_any_url_is_accepted_or_refused_with_a_message(url: str) -> None:
    try:
        parsed = _parse_url(url)
    except _RequestError as exc:
        assert str(exc)
    else:
        assert parsed.host
        assert parsed.target.startswith("/")
        assert parsed.authority.isascii()


@given(st.text(max_size=60))
def test_any_headers_value_is_handled(raw: str) -> None:
    async def main() -> list[str]:
        return await HttpExecutor._header_lines(raw, _Out(Sink()))

    lines = trio.run(main)
    assert all(isinstance(line, str) and line for line in lines)
