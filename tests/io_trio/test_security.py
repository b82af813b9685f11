"""TLS for the API, mutual TLS between nodes, API credentials, gossip key rotation, limits.

Certificates are made here with ``cryptography``: one CA for the cluster,
node certificates naming each node (SAN DNS) and a rogue CA that signs a
certificate for a node that must not get in.  Everything runs over real
loopback sockets.
"""

from __future__ import annotations

import base64
import dataclasses
import datetime as dt
import importlib.util
import ipaddress
import json
import logging
import pathlib
import random
import ssl
from collections.abc import Callable
from types import ModuleType
from typing import Any

import pytest
import trio
import trio.testing
import trio_websocket
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from dkron import cli
from dkron.io_trio.agent import Agent, AgentError, load_keyring, save_keyring
from dkron.io_trio.http_api import Access, ApiAuth, HttpApi, KeyringError, KeyringOp
from dkron.io_trio.http_server import Request, Response, ServerLimits
from dkron.io_trio.live import Node, Options, call, cluster, eventually
from dkron.io_trio.rpc import Channel, RpcEndpoint
from dkron.proto_sansio.errors import LocalProtocolError
from dkron.proto_sansio.swim_wire import Keyring, key_fingerprint

_HARNESS_PATH = pathlib.Path(__file__).resolve().parents[2] / "fuzz" / "fuzz_http_request.py"


def _load_harness() -> ModuleType:
    spec = importlib.util.spec_from_file_location("fuzz_http_request_security", _HARNESS_PATH)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


HARNESS = _load_harness()

# -- certificates -----------------------------------------------------------------------

_NOW = dt.datetime(2024, 1, 1, tzinfo=dt.UTC)


@dataclasses.dataclass(frozen=True)
class _Ca:
    key: ec.EllipticCurvePrivateKey
    cert: x509.Certificate
    path: pathlib.Path


def _name(common: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common)])


def _make_ca(directory: pathlib.Path, label: str) -> _Ca:
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(label))
        .issuer_name(_name(label))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(_NOW)
        .not_valid_after(_NOW + dt.timedelta(days=36500))
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
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    path = directory / f"{label}.pem"
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return _Ca(key, cert, path)


def _issue(
    ca: _Ca, directory: pathlib.Path, name: str, *, ips: tuple[str, ...] = ()
) -> tuple[str, str]:
    """A leaf certificate naming ``name`` (SAN DNS) for client and server use."""
    key = ec.generate_private_key(ec.SECP256R1())
    sans: list[x509.GeneralName] = [x509.DNSName(name)]
    sans += [x509.IPAddress(ipaddress.ip_address(ip)) for ip in ips]
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(name))
        .issuer_name(ca.cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(_NOW)
        .not_valid_after(_NOW + dt.timedelta(days=36500))
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(
            x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
            ),
            critical=False,
        )
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.key.public_key()),
            critical=False,
        )
        .sign(ca.key, hashes.SHA256())
    )
    label = f"{ca.path.stem}-{name}"
    cert_path, key_path = directory / f"{label}.crt", directory / f"{label}.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return str(cert_path), str(key_path)


@dataclasses.dataclass(frozen=True)
class Pki:
    ca: _Ca
    rogue: _Ca
    root: pathlib.Path

    def issue(
        self, name: str, *, rogue: bool = False, ips: tuple[str, ...] = ()
    ) -> tuple[str, str]:
        return _issue(self.rogue if rogue else self.ca, self.root, name, ips=ips)

    def rpc_options(self, name: str, *, rogue: bool = False, cert_name: str = "") -> dict[str, str]:
        cert, key = self.issue(cert_name or name, rogue=rogue)
        ca = self.rogue.path if rogue else self.ca.path
        return {"rpc_tls_ca": str(ca), "rpc_tls_cert": cert, "rpc_tls_key": key}

    def client_context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.ca.path))


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    root = tmp_path_factory.mktemp("pki")
    return Pki(_make_ca(root, "cluster-ca"), _make_ca(root, "rogue-ca"), root)


def _server_context(pki: Pki) -> ssl.SSLContext:
    cert, key = pki.issue("localhost", ips=("127.0.0.1",))
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    return context


# -- HTTP helpers -----------------------------------------------------------------------


async def _read_response(stream: trio.abc.Stream) -> bytes:
    data = b""
    while chunk := await stream.receive_some(65536):
        data += chunk
    return data


def _status(raw: bytes) -> int:
    return int(raw.split(b" ", 2)[1])


def _request(path: str, method: str = "GET", **headers: str) -> Request:
    target = path
    raw_path, _, query = path.partition("?")
    pairs = tuple(tuple(p.split("=", 1)) for p in query.split("&") if p)
    return Request(
        method=method,
        target=target,
        raw_path=raw_path,
        path=raw_path,
        query=pairs,  # type: ignore[arg-type]
        headers=tuple((k.replace("_", "-").lower(), v) for k, v in headers.items()),
    )


def _ws_request(path: str, **headers: str) -> Request:
    return _request(
        path,
        host="localhost",
        connection="Upgrade",
        upgrade="websocket",
        sec_websocket_key="dGhlIHNhbXBsZSBub25jZQ==",
        sec_websocket_version="13",
        **headers,
    )


WRITE, READ = "w-token-1", "r-token-1"
BASIC = "admin:s3cret"


def _auth_api() -> HttpApi:
    auth = ApiAuth(tokens=(WRITE, "w-token-2"), read_tokens=(READ,), basic=(BASIC,))
    return HttpApi(HARNESS.MemoryBackend(), auth=auth)


# -- HTTPS ------------------------------------------------------------------------------


async def test_https_serves_the_api_counts_failed_handshakes_and_carries_wss(pki: Pki) -> None:
    api = HttpApi(HARNESS.MemoryBackend(), auth=ApiAuth(tokens=(WRITE,)))
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            serve = api.serve
            listeners = await nursery.start(
                lambda task_status: serve(
                    "127.0.0.1", 0, ssl_context=_server_context(pki), task_status=task_status
                )
            )
            port = listeners[0].socket.getsockname()[1]
            # Plain HTTP on the TLS port: the handshake fails, is counted, the server lives on.
            plain = await trio.open_tcp_stream("127.0.0.1", port)
            async with plain:
                await plain.send_all(b"GET /health HTTP/1.1\r\nhost: x\r\n\r\n")
                await _read_response(plain)
            # A client that does not trust the server's CA gives up.
            with pytest.raises(trio.BrokenResourceError):
                async with await trio.open_ssl_over_tcp_stream(
                    "127.0.0.1", port, ssl_context=ssl.create_default_context()
                ) as untrusting:
                    await untrusting.do_handshake()
            await eventually(lambda: api.counters["tls_handshake_failed"] >= 2, "both counted")
            stream = await trio.open_ssl_over_tcp_stream(
                "localhost", port, ssl_context=pki.client_context(), https_compatible=True
            )
            async with stream:
                await stream.send_all(
                    b"GET /v1/members HTTP/1.1\r\nhost: localhost\r\n"
                    b"authorization: Bearer " + WRITE.encode() + b"\r\nconnection: close\r\n\r\n"
                )
                raw = await _read_response(stream)
            assert _status(raw) == 200 and b'"Name"' in raw
            # wss: the events websocket over TLS, token in the query as the UI sends it.
            tls = await trio.open_ssl_over_tcp_stream(
                "localhost", port, ssl_context=pki.client_context(), https_compatible=True
            )
            try:
                async with trio.open_nursery() as ws_nursery:
                    ws = await trio_websocket.wrap_client_stream(
                        ws_nursery, tls, "localhost", f"/v1/events?access_token={WRITE}"
                    )
                    await ws.aclose()
            finally:
                await trio.aclose_forcefully(tls)
            nursery.cancel_scope.cancel()


# -- authentication ---------------------------------------------------------------------


async def test_without_credentials_every_api_route_is_401_with_a_challenge() -> None:
    api = _auth_api()
    for path in ("/v1/members", "/v1/jobs", "/v1/keyring", "/metrics", "/v1/openapi.json"):
        response = await api.handle(_request(path))
        assert response.status == 401, path
        challenges = [v for k, v in response.headers if k == "www-authenticate"]
        assert challenges == ['Bearer realm="dkron"', 'Basic realm="dkron", charset="UTF-8"']
        assert json.loads(response.body) == {"error": "authentication required"}
    wrong = await api.handle(_request("/v1/members", authorization="Bearer nope"))
    assert wrong.status == 401 and json.loads(wrong.body) == {"error": "invalid credentials"}
    assert api.counters["auth_refused"] == 6


@pytest.mark.parametrize(
    "headers",
    [
        {"authorization": f"Bearer {WRITE}"},
        {"authorization": "Bearer w-token-2"},
        {"authorization": f"bearer   {WRITE}"},
        {"x_dkron_token": WRITE},
        {"authorization": "Basic " + base64.b64encode(BASIC.encode()).decode()},
    ],
    ids=["bearer", "second-token", "scheme-case", "x-dkron-token", "basic"],
)
async def test_full_access_credentials_read_and_write(headers: dict[str, str]) -> None:
    api = _auth_api()
    assert (await api.handle(_request("/v1/members", **headers))).status == 200
    created = await api.handle(
        dataclasses.replace(
            _request("/v1/jobs", "POST", **headers),
            body=json.dumps({"name": "j", "schedule": "@every 1m"}).encode(),
        )
    )
    assert created.status == 201


async def test_read_only_token_reads_but_gets_403_on_writes() -> None:
    api = _auth_api()
    read = {"authorization": f"Bearer {READ}"}
    assert (await api.handle(_request("/v1/jobs", **read))).status == 200
    for method, path in (("POST", "/v1/jobs"), ("DELETE", "/v1/jobs/job1"), ("POST", "/v1/pause")):
        response = await api.handle(_request(path, method, **read))
        assert response.status == 403, (method, path)
        assert json.loads(response.body) == {"error": "this token may only read"}
    # The best of several presented credentials counts.
    both = await api.handle(_request("/v1/pause", "POST", x_dkron_token=WRITE, **read))
    assert both.status == 200


@pytest.mark.parametrize(
    "headers",
    [
        {"authorization": "Basic " + base64.b64encode(b"admin:wrong").decode()},
        {"authorization": "Basic !!!not-base64"},
        {"authorization": "Basic " + base64.b64encode(b"admin").decode()},
        {"authorization": f"Token {WRITE}"},
        {"x_dkron_token": WRITE + "x"},
        {"x_dkron_token": WRITE[:-1]},
    ],
)
async def test_near_misses_are_refused(headers: dict[str, str]) -> None:
    assert (await _auth_api().handle(_request("/v1/members", **headers))).status == 401


async def test_health_preflight_and_the_ui_stay_open() -> None:
    api = _auth_api()
    assert (await api.handle(_request("/health"))).status == 200
    preflight = await api.handle(_request("/v1/jobs", "OPTIONS", origin="http://ui.example"))
    assert preflight.status == 204
    for path in ("/ui", "/ui/", "/ui/api.js"):
        assert (await api.handle(_request(path))).status == 200, path
    # OPTIONS without an Origin is no preflight.
    assert (await api.handle(_request("/v1/jobs", "OPTIONS"))).status == 401


async def test_a_401_carries_cors_headers_so_the_ui_can_read_it() -> None:
    response = await _auth_api().handle(_request("/v1/jobs", origin="http://ui.example"))
    assert response.status == 401
    assert ("access-control-allow-origin", "*") in response.headers


def test_websockets_take_the_token_in_the_query_and_count_as_reads() -> None:
    api = _auth_api()
    refused = api.websocket(_ws_request("/v1/events"))
    assert isinstance(refused, Response) and refused.status == 401
    for token in (READ, WRITE):
        chosen = api.websocket(_ws_request(f"/v1/events?access_token={token}"))
        assert chosen is not None and not isinstance(chosen, Response)
    by_header = api.websocket(_ws_request("/v1/events", authorization=f"Bearer {READ}"))
    assert by_header is not None and not isinstance(by_header, Response)
    wrong = api.websocket(_ws_request("/v1/events?access_token=nope"))
    assert isinstance(wrong, Response) and wrong.status == 401


async def test_the_query_token_works_on_websocket_routes_only() -> None:
    response = await _auth_api().handle(_request(f"/v1/members?access_token={WRITE}"))
    assert response.status == 401


async def test_a_wrong_token_is_never_logged(caplog: pytest.LogCaptureFixture) -> None:
    secret = "wrong-but-precious-token-5b2f"
    api = _auth_api()
    with caplog.at_level(logging.DEBUG):
        await api.handle(_request("/v1/members", authorization=f"Bearer {secret}"))
        await api.handle(_request("/v1/jobs", "POST", x_dkron_token=secret))
        api.websocket(_ws_request(f"/v1/events?access_token={secret}"))
    assert caplog.records  # the refusals are logged, without the token
    assert all(secret not in r.getMessage() for r in caplog.records)
    assert secret not in repr(ApiAuth(tokens=(secret,)))


def test_auth_settings_are_validated() -> None:
    with pytest.raises(ValueError, match="printable ASCII"):
        ApiAuth(tokens=("has space",))
    with pytest.raises(ValueError, match="USER:PASSWORD"):
        ApiAuth(basic=(":pw",))
    assert not ApiAuth().enabled
    assert HttpApi(HARNESS.MemoryBackend(), auth=ApiAuth()).auth is None
    access, presented = ApiAuth(read_tokens=(READ,)).access(
        _request("/", authorization=f"Bearer {READ}")
    )
    assert (access, presented) == (Access.READ, True)


# -- connection limits ------------------------------------------------------------------


async def test_over_max_connections_new_connections_get_503() -> None:
    limits = ServerLimits(max_connections=2, linger_timeout=0.2)
    api = HttpApi(HARNESS.MemoryBackend(), limits=limits)
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            listeners = await nursery.start(api.serve, "127.0.0.1", 0)
            port = listeners[0].socket.getsockname()[1]
            held = [await trio.open_tcp_stream("127.0.0.1", port) for _ in range(2)]
            for s in held:  # a full request each: both connections are being served
                await s.send_all(b"GET /health HTTP/1.1\r\nhost: x\r\n\r\n")
                assert b"200 OK" in await s.receive_some(65536)
            extra = await trio.open_tcp_stream("127.0.0.1", port)
            async with extra:
                await extra.send_all(b"GET /health HTTP/1.1\r\nhost: x\r\n\r\n")
                raw = await _read_response(extra)
            assert _status(raw) == 503 and b"too many connections" in raw
            assert api.counters["connections_refused"] == 1
            await held[0].aclose()
            await eventually(lambda: api.counters["connections_refused"] == 1, "settled")

            async def served_again() -> bool:
                s = await trio.open_tcp_stream("127.0.0.1", port)
                async with s:
                    await s.send_all(
                        b"GET /health HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n"
                    )
                    return _status(await _read_response(s)) == 200

            for _ in range(100):  # the server notices the close on its own schedule
                if await served_again():
                    break
                await trio.sleep(0.02)
            else:
                raise AssertionError("a freed slot was never reused")
            await held[1].aclose()
            nursery.cancel_scope.cancel()


def test_max_connections_must_be_positive() -> None:
    with pytest.raises(ValueError):
        ServerLimits(max_connections=0)


async def test_a_client_sending_its_headers_byte_by_byte_is_cut_at_the_request_timeout(
    autojump_clock: trio.testing.MockClock,
) -> None:
    limits = ServerLimits(request_timeout=5.0, idle_timeout=60.0)
    api = HttpApi(HARNESS.MemoryBackend(), limits=limits)
    head = b"GET /health HTTP/1.1\r\nhost: x\r\nx-padding: " + b"a" * 100 + b"\r\n\r\n"
    with trio.fail_after(600):
        async with trio.open_nursery() as nursery:
            listeners = await nursery.start(api.serve, "127.0.0.1", 0)
            port = listeners[0].socket.getsockname()[1]
            stream = await trio.open_tcp_stream("127.0.0.1", port)
            started = trio.current_time()
            sent = 0
            async with stream:
                try:
                    for byte in head:
                        await stream.send_all(bytes((byte,)))
                        sent += 1
                        await trio.sleep(0.5)  # well under any per-read timeout
                except trio.BrokenResourceError:
                    pass
                raw = await _read_response(stream)
            assert _status(raw) == 408
            assert sent < len(head)
            # Cut at the request deadline; the server then lingers (draining) before closing.
            elapsed = trio.current_time() - started
            assert 5.0 <= elapsed <= 5.0 + limits.linger_timeout + 0.5
            nursery.cancel_scope.cancel()


# -- mutual TLS on the RPC port ---------------------------------------------------------


def _rpc(pki: Pki, name: str, *, rogue: bool = False, cert_name: str = "") -> RpcEndpoint:
    ca = pki.rogue.path if rogue else pki.ca.path
    cert, key = pki.issue(cert_name or name, rogue=rogue)
    contexts = []
    for purpose in (ssl.PROTOCOL_TLS_SERVER, ssl.PROTOCOL_TLS_CLIENT):
        context = ssl.SSLContext(purpose)
        context.verify_mode = ssl.CERT_REQUIRED
        context.load_verify_locations(cafile=str(ca))
        context.load_cert_chain(cert, key)
        contexts.append(context)
    return RpcEndpoint(name, rng=random.Random(1), server_ssl=contexts[0], client_ssl=contexts[1])


async def test_rpc_mutual_tls_admits_cluster_certificates_only(pki: Pki) -> None:
    a, b = _rpc(pki, "n1"), _rpc(pki, "n2")
    rogue = _rpc(pki, "rogue", rogue=True)
    impostor = _rpc(pki, "n3", cert_name="n2")  # a real certificate, for another name
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            addrs = {}
            for ep in (a, b, rogue, impostor):
                addrs[ep.name] = await nursery.start(ep.run, ("127.0.0.1", 0))
            b.set_peer("n1", addrs["n1"])
            rogue.set_peer("n1", addrs["n1"])
            impostor.set_peer("n1", addrs["n1"])
            a.set_peer("rogue", addrs["rogue"])
            a.set_peer("n3", addrs["n3"])
            b.send("n1", Channel.RAFT, b"hello from n2")
            got = await a.inbox(Channel.RAFT).receive()
            assert (got.peer, got.body) == ("n2", b"hello from n2")

            def refused() -> bool:
                return (
                    a.counters["handshake_failed"] >= 1
                    and a.counters["tls_name_mismatch"] >= 1
                    and a.counters["connect_failed"] >= 2
                )

            rogue.send("n1", Channel.RAFT, b"let me in")
            impostor.send("n1", Channel.RAFT, b"I am n3")
            a.send("rogue", Channel.RAFT, b"who are you")
            a.send("n3", Channel.RAFT, b"and you")
            await eventually(refused, "the rogue and the impostor refused both ways")
            assert not a.connected("rogue") and not a.connected("n3")
            with pytest.raises(trio.WouldBlock):
                a.inbox(Channel.RAFT).receive_nowait()
            nursery.cancel_scope.cancel()


async def test_a_node_with_a_certificate_from_another_ca_cannot_join_the_cluster(
    tmp_path: pathlib.Path, pki: Pki
) -> None:
    with trio.fail_after(120):
        async with cluster(tmp_path) as c:
            nodes = [
                await c.start(name, bootstrap_expect=3, **pki.rpc_options(name))
                for name in ("s1", "s2", "s3")
            ]
            await eventually(c.leader, "a leader over mutual TLS")
            rogue = await c.start("s4", bootstrap_expect=0, **pki.rpc_options("s4", rogue=True))
            leader = c.leader()
            assert leader is not None
            status, _ = await call(
                leader.port, "POST", "/v1/jobs", {"name": "j1", "schedule": "@manually"}
            )
            assert status == 201

            def replicated() -> bool:
                return all(n.agent.state.get_job("j1") is not None for n in nodes)

            await eventually(replicated, "the job on the three servers")

            def refused() -> bool:
                failed = sum(n.agent.rpc.counters["handshake_failed"] for n in nodes if n.agent.rpc)
                return failed >= 1

            await eventually(refused, "the rogue's RPC connections refused")
            await trio.sleep(1.0)  # give replication every chance to (wrongly) reach it
            assert rogue.agent.state.get_job("j1") is None
            assert rogue.agent.applied_index == 0
            assert rogue.agent.node is not None and rogue.agent.node.leader_id is None
            assert all(n.agent.node and n.agent.node.leader_id != "s4" for n in nodes)


def test_rpc_tls_files_that_do_not_load_stop_the_agent(tmp_path: pathlib.Path) -> None:
    bad = tmp_path / "bad.pem"
    bad.write_text("not a certificate")
    opts = Options(
        data_dir=str(tmp_path / "d"),
        rpc_tls_ca=str(bad),
        rpc_tls_cert=str(bad),
        rpc_tls_key=str(bad),
    )

    async def start() -> None:
        async with trio.open_nursery() as nursery:
            await nursery.start(Agent(opts).run)

    with pytest.raises(BaseException) as info:
        trio.run(start)
    assert "--rpc-tls-ca" in str(_leaf(info.value))


def _leaf(exc: BaseException) -> BaseException:
    while isinstance(exc, BaseExceptionGroup):
        exc = exc.exceptions[0]
    return exc


# -- the gossip keyring -----------------------------------------------------------------

KEY_A = base64.b64encode(bytes(range(16))).decode()
KEY_B = base64.b64encode(bytes(range(100, 132))).decode()


def test_keyring_use_and_remove_rotate_the_primary() -> None:
    a, b = base64.b64decode(KEY_A), base64.b64decode(KEY_B)
    ring = Keyring(a)
    sealed_with_a = ring.encrypt(b"old", bytes(12))
    ring.add_key(b)
    ring.add_key(b)  # idempotent
    assert ring.keys == (a, b)
    with pytest.raises(LocalProtocolError):
        ring.use_key(bytes(16))
    ring.use_key(b)
    assert ring.primary == b and ring.fingerprints() == (key_fingerprint(b), key_fingerprint(a))
    sealed_with_b = ring.encrypt(b"new", bytes(12))
    assert ring.decrypt(sealed_with_a) == b"old"  # the retired key still decrypts
    with pytest.raises(LocalProtocolError, match="primary"):
        ring.remove_key(b)
    ring.remove_key(a)
    ring.remove_key(a)  # removing an absent key is a no-op
    assert list(ring.keys) == [b]
    assert ring.decrypt(sealed_with_b) == b"new"
    with pytest.raises(Exception, match="no installed key"):
        ring.decrypt(sealed_with_a)
    assert len(key_fingerprint(a)) == 16 and key_fingerprint(a) != key_fingerprint(b)
    assert KEY_A not in key_fingerprint(a)


def test_keyring_file_round_trip_and_precedence(
    tmp_path: pathlib.Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "keyring.json"
    assert load_keyring(path, "") is None
    seeded = load_keyring(path, KEY_A)
    assert seeded is not None and seeded.keys == (base64.b64decode(KEY_A),)
    ring = Keyring.from_base64(KEY_B, [KEY_A])
    save_keyring(path, ring)
    assert json.loads(path.read_text()) == [KEY_B, KEY_A]
    assert path.stat().st_mode & 0o077 == 0  # the keys are secrets
    ring.remove_key(base64.b64decode(KEY_A))
    save_keyring(path, ring)
    with caplog.at_level(logging.WARNING):
        loaded = load_keyring(path, KEY_A)  # a stale --encrypt after a rotation
    assert loaded is not None and loaded.keys == (base64.b64decode(KEY_B),)
    assert "--encrypt ignored" in caplog.text
    for bad in ("[]", "{}", '["not base64!"]', "not json"):
        path.write_text(bad)
        with pytest.raises(AgentError, match="keyring"):
            load_keyring(path, "")


async def test_keyring_routes_without_encryption() -> None:
    api = HttpApi(HARNESS.MemoryBackend())
    listing = await api.handle(_request("/v1/keyring"))
    assert listing.status == 200
    assert json.loads(listing.body) == {
        "encrypted": False,
        "num_nodes": 1,
        "keys": {},
        "primary_keys": {},
    }
    body = json.dumps({"key": KEY_B}).encode()
    install = dataclasses.replace(_request("/v1/keyring/install", "POST"), body=body)
    assert (await api.handle(install)).status == 409
    for bad in (b"", b"[]", b'{"key": 1}', b'{"key": "@@"}', b'{"key": "AAAA"}'):
        response = await api.handle(dataclasses.replace(install, body=bad))
        assert response.status == 400, bad


async def _keyring(node: Node, op: str = "", key: str = "") -> tuple[int, Any]:
    if not op:
        return await call(node.port, "GET", "/v1/keyring")
    return await call(node.port, "POST", f"/v1/keyring/{op}", {"key": key})


def _everyone(nodes: list[Node], check: Callable[[dict[str, Any]], bool]) -> Callable[[], bool]:
    def holds() -> bool:
        return all(check(n.agent.keyring_status()) for n in nodes)

    return holds


async def test_a_member_stores_its_keyring_before_it_uses_or_advertises_it(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A member restarts with the keys it advertised: the file is written first."""
    seen: list[tuple[list[bytes], list[bytes], str]] = []
    nodes: list[Node] = []

    def spy(path: pathlib.Path, keyring: Keyring) -> None:
        if nodes:  # not the first start's save
            live = nodes[0].agent
            assert live.keyring is not None
            seen.append((list(keyring.keys), list(live.keyring.keys), live.tags["keyring"]))
        save_keyring(path, keyring)

    applied = 0
    apply = Agent._keyring_event

    async def counted(self: Agent, payload: bytes) -> None:
        nonlocal applied
        await apply(self, payload)
        applied += 1

    monkeypatch.setattr("dkron.io_trio.agent.save_keyring", spy)
    monkeypatch.setattr(Agent, "_keyring_event", counted)
    a, b = base64.b64decode(KEY_A), base64.b64decode(KEY_B)
    with trio.fail_after(60):
        async with cluster(tmp_path) as c:
            nodes.append(await c.start("s1", bootstrap_expect=1, encrypt=KEY_A))
            await eventually(c.leader, "a leader")
            for op, key in (("install", KEY_B), ("use", KEY_B), ("remove", KEY_A)):
                assert (await _keyring(nodes[0], op, key))[0] == 200
            # Each operation also comes back as our own gossip event: a repeat, not saved.
            await eventually(lambda: applied == 6, "three operations and their echoes")
            assert len(seen) == 3
            before = [[a], [a, b], [b, a]]
            after = [[a, b], [b, a], [b]]
            for (saved, live, tag), old, new in zip(seen, before, after, strict=True):
                assert saved == new
                assert live == old
                assert tag == ",".join(key_fingerprint(k) for k in old)
            stored = json.loads((tmp_path / "s1" / "keyring.json").read_text())
            assert stored == [KEY_B]
            assert nodes[0].agent.keyring is not None
            assert list(nodes[0].agent.keyring.keys) == [b]


async def test_gossip_key_rotation_across_the_cluster(
    tmp_path: pathlib.Path, caplog: pytest.LogCaptureFixture
) -> None:
    with trio.fail_after(150):
        async with cluster(tmp_path) as c:
            nodes = [
                await c.start(name, bootstrap_expect=3, encrypt=KEY_A)
                for name in ("s1", "s2", "s3")
            ]
            await eventually(c.leader, "a leader")
            names = {"s1", "s2", "s3"}

            def all_alive() -> bool:
                return all(
                    {m.name for m in n.agent.members() if int(m.status) == 1} == names
                    for n in nodes
                )

            await eventually(all_alive, "three members")
            status, listing = await _keyring(nodes[0])
            assert status == 200
            assert listing == {
                "encrypted": True,
                "num_nodes": 3,
                "keys": {KEY_A: 3},
                "primary_keys": {KEY_A: 3},
            }
            status, body = await _keyring(nodes[1], "remove", KEY_A)
            assert status == 409 and "primary" in body
            status, body = await _keyring(nodes[1], "use", KEY_B)
            assert status == 409 and "not installed" in body

            assert await _keyring(nodes[1], "install", KEY_B) == (
                200,
                {"op": "install", "num_nodes": 3},
            )
            await eventually(
                _everyone(nodes, lambda s: s["keys"] == {KEY_A: 3, KEY_B: 3}), "B everywhere"
            )
            assert (await _keyring(nodes[2], "use", KEY_B))[0] == 200
            await eventually(
                _everyone(nodes, lambda s: s["primary_keys"] == {KEY_B: 3}), "B primary"
            )
            assert (await _keyring(nodes[0], "remove", KEY_A))[0] == 200
            # A member republishes its tags only once its keyring file is written, so
            # no fingerprint of A left in anyone's tags means every file is saved.
            await eventually(
                _everyone(nodes, lambda s: s["keys"] == {KEY_B: 3} and "other_keys" not in s),
                "A gone from every keyring and every member's tags",
            )
            for n in nodes:
                stored = json.loads((tmp_path / n.agent.name / "keyring.json").read_text())
                assert stored == [KEY_B]

            # A node that knows only A can no longer join: its --join fails (a
            # warning, as in Dkron) and it runs alone.
            with caplog.at_level(logging.WARNING, logger="dkron"):
                old = await c.start("old", server=False, encrypt=KEY_A)
            assert any("--join: no seed answered" in r.getMessage() for r in caplog.records)
            assert [m.name for m in old.agent.members() if int(m.status) == 1] == ["old"]
            await c.crash("old")

            # A restarted member keeps the rotated keyring although its flag names A.
            await c.crash("s3")
            restarted = await c.start("s3", bootstrap_expect=3, encrypt=KEY_A)
            nodes[2] = restarted
            assert restarted.agent.keyring is not None
            assert restarted.agent.keyring.keys == (base64.b64decode(KEY_B),)
            await eventually(all_alive, "the three see each other alive after the rotation")
            assert {m.name for m in nodes[0].agent.members()} >= names
            assert "old" not in {m.name for m in nodes[0].agent.members() if int(m.status) == 1}


async def test_keyring_op_errors_come_from_the_agent(tmp_path: pathlib.Path) -> None:
    async with cluster(tmp_path) as c:
        node = await c.start("s1")
        with pytest.raises(KeyringError, match="not enabled"):
            await node.agent.keyring_op(KeyringOp.INSTALL, base64.b64decode(KEY_B))
        assert node.agent.keyring_status()["encrypted"] is False


# -- the CLI against an HTTPS agent with tokens -----------------------------------------


async def test_cli_over_https_with_a_private_ca_and_tokens(
    tmp_path: pathlib.Path, pki: Pki
) -> None:
    cert, key = pki.issue("localhost", ips=("127.0.0.1",))
    with trio.fail_after(60):
        async with cluster(tmp_path) as c:
            node = await c.start(
                "s1",
                https_cert=cert,
                https_key=key,
                api_token=(WRITE,),
                api_read_token=(READ,),
                encrypt=KEY_A,
            )
            base = f"https://localhost:{node.port}"

            def run(*argv: str) -> tuple[int, str, str]:
                import io

                out, err = io.StringIO(), io.StringIO()
                code = cli.main(list(argv), stdout=out, stderr=err)
                return code, out.getvalue(), err.getvalue()

            async def dkron(*argv: str) -> tuple[int, str, str]:
                return await trio.to_thread.run_sync(lambda: run(*argv))

            ca = str(pki.ca.path)
            code, _, err = await dkron("raft", "list-peers", "--address", base)
            assert code == 1 and "CERTIFICATE_VERIFY_FAILED" in err
            code, _, err = await dkron("raft", "list-peers", "--address", base, "--ca-cert", ca)
            assert code == 1 and "401" in err
            code, out, _ = await dkron(
                "raft", "list-peers", "--address", base, "--ca-cert", ca, "--token", READ
            )
            assert code == 0 and "s1" in out
            code, out, _ = await dkron(
                "keyring", "list", "--address", base, "--ca-cert", ca, "--token", READ
            )
            assert code == 0 and KEY_A in out and "primary on 1" in out
            args = ("--address", base, "--ca-cert", ca)
            code, _, err = await dkron("keyring", "install", KEY_B, *args, "--token", READ)
            assert code == 1 and "403" in err
            code, out, _ = await dkron("keyring", "install", KEY_B, *args, "--token", WRITE)
            assert code == 0 and "install: sent to 1 members" in out
            code, out, _ = await dkron("members", *args, "--token", READ)
            assert code == 0 and "s1" in out
            jobs = tmp_path / "jobs.json"
            jobs.write_text(
                '[{"name": "a", "schedule": "@manually"}, {"name": "b", "parent_job": "a"}]'
            )
            await eventually(c.leader, "a leader")
            code, _, err = await dkron("jobs", "apply", "-f", str(jobs), *args, "--token", READ)
            assert code == 1 and "create job a: HTTP 403" in err
            code, out, err = await dkron("jobs", "apply", "-f", str(jobs), *args, "--token", WRITE)
            assert code == 0 and "2 created" in out, err
            code, _, err = await dkron("leave", *args, "--token", READ)
            assert code == 1 and "403" in err
            code, out, _ = await dkron("leave", *args, "--token", WRITE)
            assert code == 0 and "Left the cluster" in out
