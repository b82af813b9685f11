"""Notifications against real loopback servers: an h11 HTTP recorder and a small SMTP server."""

from __future__ import annotations

import base64
import dataclasses
import datetime as dt
import email
import email.policy
import ipaddress
import logging
import pathlib
import ssl
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from email.message import EmailMessage
from functools import partial

import h11
import pytest
import trio
import trio.testing
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from dkron.config import AgentConfig
from dkron.io_trio.agent import Agent
from dkron.io_trio.live import Options, call, eventually, wait_leader
from dkron.io_trio.notify import (
    TEMPLATE_TYPE,
    GoTime,
    Notifier,
    NotifyStats,
    NotifyTimeouts,
    SmtpError,
    build_report,
    go_time_string,
    send_mail,
)
from dkron.model import Execution, Job

START = 1_735_725_600_123_456_789  # 2025-01-01T10:00:00.123456789Z
END = 1_735_725_610_000_000_000
EXECUTION = Execution(
    job_name="job1",
    started_at=START,
    node_name="node1",
    finished_at=END,
    success=True,
    output="line one\n.dotted line\n",
    group=1_735_725_600_000_000_000,
)
EXEC_ID = f"{START}-node1"
JOB = Job(name="job1", owner_email="owner@example.com")


# -- an HTTP server that records requests ---------------------------------------------------


@dataclass(frozen=True)
class Request:
    method: str
    target: str
    headers: dict[str, str]
    body: bytes


@dataclass
class HttpRecorder:
    status: int = 200
    hang: bool = False
    port: int = 0
    requests: list[Request] = field(default_factory=list)

    async def handle(self, stream: trio.SocketStream) -> None:
        conn = h11.Connection(h11.SERVER)
        head: h11.Request | None = None
        body = b""
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                data = await stream.receive_some(65536)
                conn.receive_data(data)
                if not data:
                    return
            elif isinstance(event, h11.Request):
                head = event
            elif isinstance(event, h11.Data):
                body += event.data
            elif isinstance(event, h11.EndOfMessage):
                break
        assert head is not None
        self.requests.append(
            Request(
                method=head.method.decode(),
                target=head.target.decode(),
                headers={k.decode(): v.decode() for k, v in head.headers},
                body=body,
            )
        )
        if self.hang:
            await trio.sleep_forever()
        reply = b"recorded"
        data = conn.send(
            h11.Response(status_code=self.status, headers=[("Content-Length", str(len(reply)))])
        )
        data += conn.send(h11.Data(data=reply)) + conn.send(h11.EndOfMessage())
        await stream.send_all(data)
        await stream.aclose()


# -- an SMTP server that records envelopes --------------------------------------------------


@dataclass
class Envelope:
    helo: str = ""
    mail_from: str = ""
    rcpts: list[str] = field(default_factory=list)
    data: bytes = b""
    auth: str | None = None
    tls: bool = False


class _Lines:
    def __init__(self, stream: trio.abc.Stream) -> None:
        self.stream = stream
        self.buf = b""

    async def line(self) -> bytes | None:
        while b"\r\n" not in self.buf:
            data = await self.stream.receive_some(65536)
            if not data:
                return None
            self.buf += data
        line, _, self.buf = self.buf.partition(b"\r\n")
        return line


@dataclass
class SmtpRecorder:
    tls: ssl.SSLContext | None = None
    offer_auth: bool = True
    reject_rcpt: bool = False
    port: int = 0
    envelopes: list[Envelope] = field(default_factory=list)

    async def handle(self, tcp: trio.SocketStream) -> None:
        stream: trio.abc.Stream = tcp
        lines = _Lines(stream)
        env = Envelope()
        self.envelopes.append(env)

        async def say(*replies: str) -> None:
            await stream.send_all(b"".join(r.encode() + b"\r\n" for r in replies))

        await say("220 test.local ESMTP ready")
        while (raw := await lines.line()) is not None:
            cmd = raw.decode()
            verb = cmd.split(" ", 1)[0].upper()
            if verb == "EHLO":
                env.helo = cmd[5:]
                ext = ["250-test.local hello"]
                if self.tls is not None and not env.tls:
                    ext.append("250-STARTTLS")
                if self.offer_auth:
                    ext.append("250-AUTH PLAIN LOGIN")
                await say(*ext, "250 8BITMIME")
            elif verb == "STARTTLS":
                assert self.tls is not None
                await say("220 go ahead")
                stream = trio.SSLStream(stream, self.tls, server_side=True)
                await stream.do_handshake()
                lines, env.tls = _Lines(stream), True
            elif verb == "AUTH":
                env.auth = base64.b64decode(cmd.split(" ")[2]).decode()
                await say("235 2.7.0 accepted")
            elif verb == "MAIL":
                env.mail_from = cmd[len("MAIL FROM:") :]
                await say("250 ok")
            elif verb == "RCPT":
                if self.reject_rcpt:
                    await say("550 5.1.1 no such user")
                else:
                    env.rcpts.append(cmd[len("RCPT TO:") :])
                    await say("250 ok")
            elif verb == "DATA":
                await say("354 go ahead")
                body: list[bytes] = []
                while (line := await lines.line()) != b".":
                    assert line is not None
                    body.append(line[1:] if line.startswith(b".") else line)
                env.data = b"\r\n".join(body) + b"\r\n"
                await say("250 queued")
            elif verb == "QUIT":
                await say("221 bye")
                break
            else:
                await say("502 unknown")
        await stream.aclose()


# -- fixtures -----------------------------------------------------------------------------


@pytest.fixture
async def http() -> AsyncIterator[HttpRecorder]:
    rec = HttpRecorder()
    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(partial(trio.serve_tcp, rec.handle, 0, host="127.0.0.1"))
        rec.port = listeners[0].socket.getsockname()[1]
        yield rec
        nursery.cancel_scope.cancel()


@asynccontextmanager
async def serve_smtp(rec: SmtpRecorder) -> AsyncIterator[SmtpRecorder]:
    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(partial(trio.serve_tcp, rec.handle, 0, host="127.0.0.1"))
        rec.port = listeners[0].socket.getsockname()[1]
        yield rec
        nursery.cancel_scope.cancel()


@pytest.fixture
async def smtp() -> AsyncIterator[SmtpRecorder]:
    async with serve_smtp(SmtpRecorder()) as rec:
        yield rec


@dataclass(frozen=True)
class Certs:
    server: ssl.SSLContext
    client: ssl.SSLContext


@pytest.fixture(scope="module")
def certs() -> Certs:
    """A self-signed certificate for 127.0.0.1, trusted by the client context only."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_pem = cert.public_bytes(serialization.Encoding.PEM)
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        with open(f"{d}/c.pem", "wb") as f:
            f.write(cert_pem + key_pem)
        server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        server.load_cert_chain(f"{d}/c.pem")
    client = ssl.create_default_context(cadata=cert_pem.decode())
    return Certs(server=server, client=client)


def config(**kw: object) -> AgentConfig:
    return AgentConfig(node_name="leader1", **kw)  # type: ignore[arg-type]


def parse_mail(data: bytes) -> EmailMessage:
    msg = email.message_from_bytes(data.replace(b"\r\n", b"\n"), policy=email.policy.default)
    assert isinstance(msg, EmailMessage)
    return msg


# -- report and fields ------------------------------------------------------------------------


def test_go_time_string_matches_go() -> None:
    assert go_time_string(START) == "2025-01-01 10:00:00.123456789 +0000 UTC"
    assert go_time_string(END) == "2025-01-01 10:00:10 +0000 UTC"
    assert go_time_string(END + 500_000_000) == "2025-01-01 10:00:10.5 +0000 UTC"
    assert go_time_string(None) == "0001-01-01 00:00:00 +0000 UTC"
    assert str(GoTime(START)) == go_time_string(START)


def test_report_is_dkrons_text() -> None:
    other = dataclasses.replace(EXECUTION, node_name="node2", success=False, finished_at=None)
    report = build_report(EXECUTION, [EXECUTION, other], reporting_node="leader1")
    assert report == (
        "Executed: job1\n"
        "Reporting node: leader1\n"
        "Start time: 2025-01-01 10:00:00.123456789 +0000 UTC\n"
        "End time: 2025-01-01 10:00:10 +0000 UTC\n"
        "Success: true\n"
        "Node: node1\n"
        "Output: line one\n.dotted line\n\n"
        "Execution group: 1735725600000000000\n"
        "\t[Node]: node1 [Start]: 2025-01-01 10:00:00.123456789 +0000 UTC "
        "[End]: 2025-01-01 10:00:10 +0000 UTC [Success]: true\n"
        "\t[Node]: node2 [Start]: 2025-01-01 10:00:00.123456789 +0000 UTC "
        "[End]: 0001-01-01 00:00:00 +0000 UTC [Success]: false\n"
    )


# -- webhooks and Cronitor --------------------------------------------------------------------


async def test_post_webhook_renders_every_field_and_sends_the_headers(
    http: HttpRecorder,
) -> None:
    payload = (
        "{{.JobName}}|{{.ReportingNode}}|{{.StartTime}}|{{.FinishedAt}}|{{.Success}}|"
        '{{.NodeName}}|{{.Output}}|{{if eq .Success "true"}}OK{{else}}KO{{end}}'
    )
    cfg = config(
        webhook_endpoint=f"http://127.0.0.1:{http.port}/hook?x=1",
        webhook_payload=payload,
        webhook_headers=(
            "Content-Type: application/x-www-form-urlencoded",
            "Authorization: Bearer a:b",
            "Host: hooks.example",
            "x-custom-thing: v",
        ),
    )
    notifier = Notifier.from_config(cfg)
    with trio.fail_after(20):
        await notifier.post(JOB, EXECUTION, [EXECUTION], reporting_node="leader1")
    (req,) = http.requests
    assert (req.method, req.target) == ("POST", "/hook?x=1")
    assert req.body.decode() == (
        "job1|leader1|2025-01-01 10:00:00.123456789 +0000 UTC|2025-01-01 10:00:10 +0000 UTC|"
        "true|node1|line one\n.dotted line\n|OK"
    )
    assert req.headers["host"] == "hooks.example"
    assert req.headers["content-type"] == "application/x-www-form-urlencoded"
    # The whole value after the first colon is kept (Dkron cut it at the second one).
    assert req.headers["authorization"] == "Bearer a:b"
    assert req.headers["x-custom-thing"] == "v"
    assert req.headers["user-agent"].startswith("dkron/")
    assert notifier.stats == NotifyStats(sent={"webhook": 1})


async def test_report_field_and_template_errors_reach_the_body(http: HttpRecorder) -> None:
    base = f"http://127.0.0.1:{http.port}"
    cfg = config(
        webhook_endpoint=base + "/a",
        webhook_payload="{{.Report}}",
        pre_webhook_endpoint=base + "/pre",
        pre_webhook_payload="{{.Nope}}",
    )
    notifier = Notifier.from_config(cfg)
    with trio.fail_after(20):
        await notifier.pre(JOB, EXECUTION, reporting_node="leader1")
        await notifier.post(JOB, EXECUTION, [EXECUTION], reporting_node="leader1")
    pre, post = http.requests
    assert pre.target == "/pre"
    assert pre.body.decode() == (
        'Failed to execute template:template: report:1:2: executing "report" at <.Nope>: '
        f"can't evaluate field Nope in type {TEMPLATE_TYPE}"
    )
    assert post.body.decode() == build_report(EXECUTION, [EXECUTION], reporting_node="leader1")


async def test_cronitor_run_complete_and_fail(http: HttpRecorder) -> None:
    cfg = config(cronitor_endpoint=f"http://127.0.0.1:{http.port}/ping/abc")
    notifier = Notifier.from_config(cfg)
    failed = dataclasses.replace(EXECUTION, success=False)
    with trio.fail_after(20):
        await notifier.pre(JOB, EXECUTION, reporting_node="leader1")
        await notifier.post(JOB, EXECUTION, [EXECUTION], reporting_node="leader1")
        await notifier.post(JOB, failed, [failed], reporting_node="leader1")
    assert [(r.method, r.target) for r in http.requests] == [
        ("GET", f"/ping/abc/job1?host=node1&message=Job+run+by+Dkron&series={EXEC_ID}&state=run"),
        (
            "GET",
            f"/ping/abc/job1?host=node1&message=Job+complete+by+Dkron&series={EXEC_ID}"
            "&state=complete",
        ),
        (
            "GET",
            f"/ping/abc/job1?host=node1&message=Job+complete+by+Dkron&series={EXEC_ID}&state=fail",
        ),
    ]
    assert notifier.stats.sent == {"cronitor": 3}


async def test_channels_need_both_endpoint_and_payload(
    http: HttpRecorder, smtp: SmtpRecorder
) -> None:
    base = f"http://127.0.0.1:{http.port}"
    cfg = config(
        webhook_endpoint=base,
        pre_webhook_endpoint=base,
        mail_host="127.0.0.1",
        mail_port=smtp.port,
        mail_from="dkron@example.com",
    )
    notifier = Notifier.from_config(cfg)
    with trio.fail_after(20):
        await notifier.pre(JOB, EXECUTION, reporting_node="leader1")
        # No owner_email: no mail.
        await notifier.post(Job(name="job1"), EXECUTION, [], reporting_node="leader1")
    assert http.requests == []
    assert smtp.envelopes == []
    assert notifier.stats == NotifyStats()


async def test_a_plain_settings_object_is_enough(http: HttpRecorder) -> None:
    @dataclass(frozen=True)
    class Settings:
        mail_host: str = ""
        mail_port: int = 0
        mail_username: str = ""
        mail_password: str = ""
        mail_from: str = ""
        mail_payload: str = ""
        mail_subject_prefix: str = "[Dkron]"
        pre_webhook_endpoint: str = ""
        pre_webhook_payload: str = ""
        pre_webhook_headers: Sequence[str] = ()
        webhook_endpoint: str = ""
        webhook_payload: str = ""
        webhook_headers: Sequence[str] = ()
        cronitor_endpoint: str = ""

    notifier = Notifier.from_config(
        Settings(webhook_endpoint=f"http://127.0.0.1:{http.port}/", webhook_payload="x")
    )
    with trio.fail_after(20):
        await notifier.post(JOB, EXECUTION, [], reporting_node="n")
    assert [r.body for r in http.requests] == [b"x"]


# -- failures are logged and counted, never raised ------------------------------------------


async def test_unreachable_endpoints_and_refusals_are_counted(
    http: HttpRecorder, caplog: pytest.LogCaptureFixture
) -> None:
    closed = trio.socket.socket()
    await closed.bind(("127.0.0.1", 0))
    dead_port = closed.getsockname()[1]
    closed.close()
    http.status = 500
    cfg = config(
        webhook_endpoint=f"http://127.0.0.1:{dead_port}/",
        webhook_payload="x",
        pre_webhook_endpoint=f"http://127.0.0.1:{http.port}/",
        pre_webhook_payload="x",
        mail_host="127.0.0.1",
        mail_port=dead_port,
        mail_from="dkron@example.com",
        cronitor_endpoint="ftp://nowhere",
    )
    notifier = Notifier.from_config(cfg)
    with trio.fail_after(20), caplog.at_level(logging.WARNING):
        await notifier.pre(JOB, EXECUTION, reporting_node="leader1")
        await notifier.post(JOB, EXECUTION, [], reporting_node="leader1")
    assert notifier.stats == NotifyStats(
        failed={"cronitor": 2, "pre_webhook": 1, "webhook": 1, "mail": 1}
    )
    assert "connection refused" in caplog.text
    assert "answered HTTP 500" in caplog.text
    assert 'unsupported protocol scheme "ftp"' in caplog.text


async def test_a_hanging_webhook_times_out(
    http: HttpRecorder,
    autojump_clock: trio.testing.MockClock,
    caplog: pytest.LogCaptureFixture,
) -> None:
    http.hang = True
    cfg = config(webhook_endpoint=f"http://127.0.0.1:{http.port}/", webhook_payload="x")
    notifier = Notifier.from_config(cfg, timeouts=NotifyTimeouts(webhook=5))
    start = trio.current_time()
    with trio.fail_after(100), caplog.at_level(logging.WARNING):
        await notifier.post(JOB, EXECUTION, [], reporting_node="leader1")
    assert trio.current_time() - start == pytest.approx(5)
    assert notifier.stats == NotifyStats(failed={"webhook": 1})
    assert "timed out after 5s" in caplog.text


def test_timeouts_must_be_positive() -> None:
    with pytest.raises(ValueError, match="mail timeout"):
        NotifyTimeouts(mail=0)


# -- e-mail ---------------------------------------------------------------------------------


async def test_mail_without_tls_sends_dkrons_message(smtp: SmtpRecorder) -> None:
    cfg = config(
        mail_host="127.0.0.1",
        mail_port=smtp.port,
        mail_from="Dkron <dkron@example.com>",
        mail_username="user",
        mail_password="secret",
    )
    notifier = Notifier.from_config(cfg)
    with trio.fail_after(20):
        await notifier.post(JOB, EXECUTION, [EXECUTION], reporting_node="leader1")
    (env,) = smtp.envelopes
    assert env.helo == "leader1"
    assert not env.tls
    # A local server may receive credentials in clear, as Go's PlainAuth allows.
    assert env.auth == "\0user\0secret"
    assert env.mail_from == "<dkron@example.com>"
    assert env.rcpts == ["<owner@example.com>"]
    msg = parse_mail(env.data)
    assert msg["Subject"] == "[Dkron]Success job1 execution report"
    assert msg["From"] == "Dkron <dkron@example.com>"
    assert msg["To"] == "owner@example.com"
    assert msg["Message-ID"].endswith("@leader1>")
    assert msg.get_content() == "line one\n.dotted line\n"
    assert notifier.stats == NotifyStats(sent={"mail": 1})


async def test_mail_payload_template_and_failed_subject(smtp: SmtpRecorder) -> None:
    cfg = config(
        mail_host="127.0.0.1",
        mail_port=smtp.port,
        mail_from="dkron@example.com",
        mail_subject_prefix="[Test]",
        mail_payload="{{.JobName}} on {{.NodeName}}: {{.Success}}\n.{{.Output}}",
        mail_username="only-user",
    )
    failed = dataclasses.replace(EXECUTION, success=False, output="é")
    notifier = Notifier.from_config(cfg)
    with trio.fail_after(20):
        await notifier.post(
            dataclasses.replace(JOB, owner_email="a@example.com, b@example.com"),
            failed,
            [failed],
            reporting_node="leader1",
        )
    (env,) = smtp.envelopes
    assert env.auth is None  # a username alone does not authenticate
    assert env.rcpts == ["<a@example.com>", "<b@example.com>"]
    msg = parse_mail(env.data)
    assert msg["Subject"] == "[Test]Failed job1 execution report"
    assert msg.get_content() == "job1 on node1: false\n.é\n"


async def test_mail_upgrades_with_starttls(certs: Certs) -> None:
    async with serve_smtp(SmtpRecorder(tls=certs.server)) as smtp:
        cfg = config(
            mail_host="127.0.0.1",
            mail_port=smtp.port,
            mail_from="dkron@example.com",
            mail_username="user",
            mail_password="secret",
        )
        notifier = Notifier.from_config(cfg, mail_tls=certs.client)
        with trio.fail_after(20):
            await notifier.post(JOB, EXECUTION, [EXECUTION], reporting_node="leader1")
        (env,) = smtp.envelopes
        assert env.tls
        assert env.auth == "\0user\0secret"
        assert parse_mail(env.data).get_content() == EXECUTION.output
        assert notifier.stats == NotifyStats(sent={"mail": 1})


async def test_an_untrusted_starttls_certificate_fails_the_mail(
    certs: Certs, caplog: pytest.LogCaptureFixture
) -> None:
    async with serve_smtp(SmtpRecorder(tls=certs.server)) as smtp:
        cfg = config(mail_host="127.0.0.1", mail_port=smtp.port, mail_from="d@example.com")
        untrusting = ssl.create_default_context()
        notifier = Notifier.from_config(cfg, mail_tls=untrusting)
        with trio.fail_after(20), caplog.at_level(logging.WARNING):
            await notifier.post(JOB, EXECUTION, [], reporting_node="leader1")
        assert notifier.stats == NotifyStats(failed={"mail": 1})
        assert smtp.envelopes[0].mail_from == ""


async def test_smtp_errors_and_auth_rules() -> None:
    async with serve_smtp(SmtpRecorder(reject_rcpt=True)) as smtp:
        with trio.fail_after(20), pytest.raises(SmtpError, match=r"550 5\.1\.1 no such user"):
            await send_mail(
                "127.0.0.1", smtp.port, sender="a@b", recipients=["c@d"], message=b"x\r\n"
            )
    async with serve_smtp(SmtpRecorder(offer_auth=False)) as smtp:
        with trio.fail_after(20), pytest.raises(SmtpError, match="doesn't support AUTH"):
            await send_mail(
                "127.0.0.1",
                smtp.port,
                sender="a@b",
                recipients=["c@d"],
                message=b"x",
                username="u",
                password="p",
            )
    async with serve_smtp(SmtpRecorder()) as smtp:
        with trio.fail_after(20), pytest.raises(SmtpError, match="no recipients"):
            await send_mail("127.0.0.1", smtp.port, sender="a@b", recipients=[], message=b"x")


async def test_missing_mail_from_is_a_counted_failure(smtp: SmtpRecorder) -> None:
    cfg = config(mail_host="127.0.0.1", mail_port=smtp.port)
    notifier = Notifier.from_config(cfg)
    with trio.fail_after(20):
        await notifier.post(JOB, EXECUTION, [], reporting_node="leader1")
    assert notifier.stats == NotifyStats(failed={"mail": 1})
    assert smtp.envelopes == []


async def test_a_real_agent_notifies_and_processes_a_run(
    http: HttpRecorder, tmp_path: pathlib.Path
) -> None:
    """The agent's wiring: pre at the start, post after the final attempt, files processor."""
    url = f"http://127.0.0.1:{http.port}"
    notifier = Notifier.from_config(
        config(
            pre_webhook_endpoint=url + "/pre",
            pre_webhook_payload="start {{.JobName}}",
            webhook_endpoint=url + "/post",
            webhook_payload="{{.JobName}} {{.Success}} {{.Output}}",
        )
    )
    logs = tmp_path / "logs"
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            opts = Options(data_dir=str(tmp_path / "data"))
            agent = await nursery.start(Agent(opts, notifier=notifier).run)
            port = agent.http_port
            await wait_leader(port)
            job = {
                "name": "noted",
                "schedule": "@manually",
                "retries": 1,
                "executor": "shell",
                "executor_config": {"command": "echo hi; exit 1", "shell": "true"},
                "processors": {"files": {"log_dir": str(logs), "forward": "false"}},
            }
            assert (await call(port, "POST", "/v1/jobs", job))[0] == 201
            assert (await call(port, "POST", "/v1/jobs/noted/run"))[0] == 200
            await eventually(lambda: any(r.target == "/post" for r in http.requests), "post")
            await trio.sleep(0.5)  # would a second (non-final) post arrive?
            posts = [r for r in http.requests if r.target == "/post"]
            pres = [r for r in http.requests if r.target == "/pre"]
            # Two attempts started; only the final one is reported after it finished.
            assert [r.body for r in pres] == [b"start noted", b"start noted"]
            assert len(posts) == 1
            assert posts[0].body.startswith(b"noted false ")
            execs = (await call(port, "GET", "/v1/jobs/noted/executions"))[1]
            assert len(execs) == 2
            for ex in execs:
                path = pathlib.Path(ex["output"])
                text = await trio.Path(path).read_text()
                assert path.parent == logs and text.endswith("hi\n")
            nursery.cancel_scope.cancel()
