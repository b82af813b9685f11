"""Notifications: pre-/post-execution webhooks, e-mail to the job owner, Cronitor telemetry.

Channels, payload templates and texts are Dkron's (``docs/notifications.md``).
Two things differ on purpose:

* every channel has a deadline (:class:`NotifyTimeouts`); Dkron has none, so
  one unresponsive webhook endpoint could hold its execution-done handler
  forever;
* a failing channel is logged and counted, never raised.  In Dkron a
  post-notification error made ``ExecutionDone`` return early, which skipped
  the job's dependents and left an ephemeral job in place; here the caller
  cannot even observe the failure.

The SMTP client is a small one over Trio streams (EHLO, STARTTLS when the
server offers it, AUTH PLAIN only when a username and a password are both
set, MAIL/RCPT/DATA with dot-stuffing); the message itself is the stdlib's
:class:`email.message.EmailMessage`.
"""

from __future__ import annotations

import base64
import contextlib
import datetime as _dt
import email.policy
import email.utils
import logging
import ssl
import urllib.parse
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from email.message import EmailMessage
from functools import partial
from typing import Protocol

import h11
import trio

import dkron
from dkron.gotemplate import TemplateError, render_payload
from dkron.io_trio.httpclient import RequestError, canonical_header, default_tls, request
from dkron.model import Execution, Job

__all__ = [
    "TEMPLATE_TYPE",
    "GoTime",
    "Notifier",
    "NotifierSettings",
    "NotifyStats",
    "NotifyTimeouts",
    "SmtpError",
    "build_report",
    "go_time_string",
    "send_mail",
    "template_fields",
]

_log = logging.getLogger(__name__)

#: The Go type of the template's data, as Go's execute errors name it.
TEMPLATE_TYPE = (
    "struct { Report string; JobName string; ReportingNode string; StartTime time.Time; "
    "FinishedAt time.Time; Success string; NodeName string; Output string }"
)
_NS = 1_000_000_000
_EPOCH_ORDINAL = _dt.date(1970, 1, 1).toordinal()
_MAX_REPLY_LINE = 4096
_MAX_REPLY_LINES = 512
_LOCAL_HOSTS = frozenset({"localhost", "127.0.0.1", "::1"})


class NotifierSettings(Protocol):
    """The agent options the notifier reads (``AgentConfig`` has them all)."""

    @property
    def mail_host(self) -> str: ...
    @property
    def mail_port(self) -> int: ...
    @property
    def mail_username(self) -> str: ...
    @property
    def mail_password(self) -> str: ...
    @property
    def mail_from(self) -> str: ...
    @property
    def mail_payload(self) -> str: ...
    @property
    def mail_subject_prefix(self) -> str: ...
    @property
    def pre_webhook_endpoint(self) -> str: ...
    @property
    def pre_webhook_payload(self) -> str: ...
    @property
    def pre_webhook_headers(self) -> Sequence[str]: ...
    @property
    def webhook_endpoint(self) -> str: ...
    @property
    def webhook_payload(self) -> str: ...
    @property
    def webhook_headers(self) -> Sequence[str]: ...
    @property
    def cronitor_endpoint(self) -> str: ...


@dataclass(frozen=True, slots=True, kw_only=True)
class NotifyTimeouts:
    """Seconds each channel may take, connection to last byte (Dkron has no limit)."""

    webhook: float = 30.0
    mail: float = 60.0
    cronitor: float = 10.0

    def __post_init__(self) -> None:
        for name in ("webhook", "mail", "cronitor"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} timeout must be positive")


@dataclass(slots=True)
class NotifyStats:
    """Per-channel counters (``pre_webhook``, ``webhook``, ``mail``, ``cronitor``)."""

    sent: dict[str, int] = field(default_factory=dict)
    failed: dict[str, int] = field(default_factory=dict)

    def count(self, channel: str, *, ok: bool) -> None:
        counters = self.sent if ok else self.failed
        counters[channel] = counters.get(channel, 0) + 1


class SmtpError(Exception):
    """The SMTP exchange failed; the text is the server's reply or the reason."""


# -- report and template data ------------------------------------------------------------


def go_time_string(ns: int | None) -> str:
    """Go's ``time.Time.String()`` of a UTC instant (``None`` is Go's zero time)."""
    if ns is None:
        return "0001-01-01 00:00:00 +0000 UTC"
    secs, frac = divmod(ns, _NS)
    days, sod = divmod(secs, 86400)
    day = _dt.date.fromordinal(_EPOCH_ORDINAL + days)
    hh, rem = divmod(sod, 3600)
    mm, ss = divmod(rem, 60)
    text = f"{day.year:04d}-{day.month:02d}-{day.day:02d} {hh:02d}:{mm:02d}:{ss:02d}"
    if frac:
        text += "." + f"{frac:09d}".rstrip("0")
    return text + " +0000 UTC"


@dataclass(frozen=True, slots=True)
class GoTime:
    """A ``time.Time`` template value: prints as Go prints it, compares by instant."""

    ns: int | None
    go_type: str = "time.Time"

    def __str__(self) -> str:
        return go_time_string(self.ns)


def _go_bool(value: bool) -> str:
    return "true" if value else "false"


def build_report(execution: Execution, group: Sequence[Execution], *, reporting_node: str) -> str:
    """Dkron's ``{{.Report}}`` text, byte for byte."""
    lines = "".join(
        f"\t[Node]: {ex.node_name} [Start]: {go_time_string(ex.started_at)} "
        f"[End]: {go_time_string(ex.finished_at)} [Success]: {_go_bool(ex.success)}\n"
        for ex in group
    )
    return (
        f"Executed: {execution.job_name}\n"
        f"Reporting node: {reporting_node}\n"
        f"Start time: {go_time_string(execution.started_at)}\n"
        f"End time: {go_time_string(execution.finished_at)}\n"
        f"Success: {_go_bool(execution.success)}\n"
        f"Node: {execution.node_name}\n"
        f"Output: {execution.output}\n"
        f"Execution group: {execution.group}\n"
        f"{lines}"
    )


def template_fields(
    execution: Execution, group: Sequence[Execution], *, reporting_node: str
) -> dict[str, object]:
    """The fields a payload template sees, in Dkron's order."""
    return {
        "Report": build_report(execution, group, reporting_node=reporting_node),
        "JobName": execution.job_name,
        "ReportingNode": reporting_node,
        "StartTime": GoTime(execution.started_at),
        "FinishedAt": GoTime(execution.finished_at),
        "Success": _go_bool(execution.success),
        "NodeName": execution.node_name,
        "Output": execution.output,
    }


def _render(template: str, fields: dict[str, object]) -> str:
    def note(exc: TemplateError) -> None:
        _log.error("notifier: error in payload template: %s", exc)

    return render_payload(template, fields, type_name=TEMPLATE_TYPE, on_error=note)


def _utf8(text: str) -> bytes:
    return text.encode("utf-8", "surrogateescape")


# -- SMTP -------------------------------------------------------------------------------


class _Reader:
    """CRLF lines from a stream, bounded so that a hostile server cannot fill memory."""

    def __init__(self, stream: trio.abc.Stream) -> None:
        self.stream = stream
        self.buf = bytearray()

    async def line(self) -> bytes:
        while True:
            end = self.buf.find(b"\n")
            if end >= 0:
                line = bytes(self.buf[:end]).rstrip(b"\r")
                del self.buf[: end + 1]
                return line
            if len(self.buf) > _MAX_REPLY_LINE:
                raise SmtpError("reply line too long")
            data = await self.stream.receive_some(4096)
            if not data:
                raise SmtpError("connection closed by the server")
            self.buf += data


async def _reply(reader: _Reader) -> tuple[int, list[str]]:
    """One (possibly multi-line) reply: its code and its text lines."""
    texts: list[str] = []
    code = 0
    for _ in range(_MAX_REPLY_LINES):
        raw = await reader.line()
        text = raw.decode("utf-8", "replace")
        if len(text) < 3 or not text[:3].isdigit() or text[3:4] not in ("", " ", "-"):
            raise SmtpError(f"short response: {text}")
        line_code = int(text[:3])
        if code and line_code != code:
            raise SmtpError(f"mismatched codes in a multi-line reply: {text}")
        code = line_code
        texts.append(text[4:])
        if text[3:4] != "-":
            return code, texts
    raise SmtpError("reply has too many lines")


async def _command(
    stream: trio.abc.Stream, reader: _Reader, line: str, expect: tuple[int, ...]
) -> list[str]:
    await stream.send_all(_utf8(line) + b"\r\n")
    code, texts = await _reply(reader)
    if code not in expect:
        raise SmtpError(f"{code} {' '.join(texts)}".rstrip())
    return texts


def _dot_stuff(message: bytes) -> bytes:
    """CRLF line ends, a leading ``.`` doubled, and the ``.`` terminator (RFC 5321 4.5.2)."""
    lines = message.replace(b"\r\n", b"\n").replace(b"\r", b"\n").split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()
    body = b"".join((b"." + ln if ln.startswith(b".") else ln) + b"\r\n" for ln in lines)
    return body + b".\r\n"


def _extensions(texts: list[str]) -> dict[str, str]:
    """EHLO keywords (upper-cased) to their parameters; the first line is the greeting."""
    ext: dict[str, str] = {}
    for text in texts[1:]:
        keyword, _, params = text.partition(" ")
        ext[keyword.upper()] = params
    return ext


async def send_mail(
    host: str,
    port: int,
    *,
    sender: str,
    recipients: Sequence[str],
    message: bytes,
    username: str = "",
    password: str = "",
    local_name: str = "localhost",
    tls: ssl.SSLContext | None = None,
) -> None:
    """Deliver ``message`` through ``host:port``; raises :class:`SmtpError` or ``OSError``.

    Like Go's ``smtp.SendMail``: STARTTLS whenever the server offers it, and
    credentials only over TLS or to a local server (``unencrypted connection``
    otherwise).  The caller owns the deadline.
    """
    if not recipients:
        raise SmtpError("no recipients")
    stream: trio.abc.Stream = await trio.open_tcp_stream(host, port)
    try:
        reader = _Reader(stream)
        code, texts = await _reply(reader)
        if code != 220:
            raise SmtpError(f"{code} {' '.join(texts)}".rstrip())
        ext = await _hello(stream, reader, local_name)
        encrypted = False
        if "STARTTLS" in ext:
            await _command(stream, reader, "STARTTLS", (220,))
            context = tls if tls is not None else await default_tls()
            tls_stream = trio.SSLStream(stream, context, server_hostname=host)
            await tls_stream.do_handshake()
            stream, reader, encrypted = tls_stream, _Reader(tls_stream), True
            ext = await _hello(stream, reader, local_name)
        if username and password:
            if "AUTH" not in ext:
                raise SmtpError("smtp: server doesn't support AUTH")
            if not encrypted and host not in _LOCAL_HOSTS:
                raise SmtpError("unencrypted connection")
            token = base64.b64encode(_utf8(f"\0{username}\0{password}")).decode("ascii")
            await _command(stream, reader, f"AUTH PLAIN {token}", (235,))
        await _command(stream, reader, f"MAIL FROM:<{sender}>", (250,))
        for rcpt in recipients:
            await _command(stream, reader, f"RCPT TO:<{rcpt}>", (250, 251))
        await _command(stream, reader, "DATA", (354,))
        await stream.send_all(_dot_stuff(message))
        code, texts = await _reply(reader)
        if code != 250:
            raise SmtpError(f"{code} {' '.join(texts)}".rstrip())
        # The message is accepted; a rude goodbye changes nothing.
        with contextlib.suppress(SmtpError, trio.BrokenResourceError, trio.ClosedResourceError):
            await _command(stream, reader, "QUIT", (221,))
    finally:
        await trio.aclose_forcefully(stream)


async def _hello(stream: trio.abc.Stream, reader: _Reader, local_name: str) -> dict[str, str]:
    """EHLO, falling back to HELO (no extensions) for an old server."""
    await stream.send_all(_utf8(f"EHLO {local_name}") + b"\r\n")
    code, texts = await _reply(reader)
    if code == 250:
        return _extensions(texts)
    await _command(stream, reader, f"HELO {local_name}", (250,))
    return {}


def _clean(text: str) -> str:
    """Outputs may carry undecodable bytes (surrogate escapes); mail wants real text."""
    return _utf8(text).decode("utf-8", "replace")


# -- the notifier -------------------------------------------------------------------------


class Notifier:
    """Sends the notifications of one agent; see the module docstring for the rules."""

    def __init__(
        self,
        settings: NotifierSettings,
        *,
        timeouts: NotifyTimeouts | None = None,
        http_tls: ssl.SSLContext | None = None,
        mail_tls: ssl.SSLContext | None = None,
        stats: NotifyStats | None = None,
    ) -> None:
        self.settings = settings
        self.timeouts = timeouts or NotifyTimeouts()
        self.stats = stats if stats is not None else NotifyStats()
        self._http_tls = http_tls
        self._mail_tls = mail_tls

    @classmethod
    def from_config(
        cls,
        cfg: NotifierSettings,
        *,
        timeouts: NotifyTimeouts | None = None,
        http_tls: ssl.SSLContext | None = None,
        mail_tls: ssl.SSLContext | None = None,
        stats: NotifyStats | None = None,
    ) -> Notifier:
        """The notifier for an agent's configuration (``AgentConfig`` or any look-alike)."""
        return cls(cfg, timeouts=timeouts, http_tls=http_tls, mail_tls=mail_tls, stats=stats)

    @property
    def wants_pre(self) -> bool:
        """Whether any start notification is configured (the agent skips the task if not)."""
        s = self.settings
        return bool(s.cronitor_endpoint or (s.pre_webhook_endpoint and s.pre_webhook_payload))

    @property
    def wants_post(self) -> bool:
        """Whether any finish notification may be configured (mail also needs owner_email)."""
        s = self.settings
        return bool(
            s.cronitor_endpoint
            or (s.mail_host and s.mail_port)
            or (s.webhook_endpoint and s.webhook_payload)
        )

    async def pre(self, job: Job, execution: Execution, *, reporting_node: str) -> None:
        """At the start of an execution: Cronitor ``run`` and the pre-webhook."""
        s = self.settings
        fields = template_fields(execution, (), reporting_node=reporting_node)
        async with trio.open_nursery() as nursery:
            if s.cronitor_endpoint:
                nursery.start_soon(
                    self._guard, "cronitor", job, partial(self._cronitor, execution, "run")
                )
            if s.pre_webhook_endpoint and s.pre_webhook_payload:
                payload = _render(s.pre_webhook_payload, fields)
                nursery.start_soon(
                    self._guard,
                    "pre_webhook",
                    job,
                    partial(self._webhook, s.pre_webhook_endpoint, payload, s.pre_webhook_headers),
                )

    async def post(
        self,
        job: Job,
        execution: Execution,
        group: Sequence[Execution],
        *,
        reporting_node: str,
    ) -> None:
        """After an execution's final attempt: Cronitor, e-mail and the webhook."""
        s = self.settings
        fields = template_fields(execution, group, reporting_node=reporting_node)
        async with trio.open_nursery() as nursery:
            if s.cronitor_endpoint:
                nursery.start_soon(
                    self._guard, "cronitor", job, partial(self._cronitor, execution, "complete")
                )
            if s.mail_host and s.mail_port and job.owner_email:
                body = _render(s.mail_payload, fields) if s.mail_payload else execution.output
                nursery.start_soon(
                    self._guard,
                    "mail",
                    job,
                    partial(self._mail, job, execution, body, reporting_node),
                )
            if s.webhook_endpoint and s.webhook_payload:
                payload = _render(s.webhook_payload, fields)
                nursery.start_soon(
                    self._guard,
                    "webhook",
                    job,
                    partial(self._webhook, s.webhook_endpoint, payload, s.webhook_headers),
                )

    async def _guard(self, channel: str, job: Job, work: Callable[[], Awaitable[None]]) -> None:
        """Run one channel under its deadline; log and count, never raise (but Cancelled)."""
        limit = getattr(self.timeouts, "webhook" if channel.endswith("webhook") else channel)
        ok = False
        try:
            with trio.move_on_after(limit) as scope:
                await work()
                ok = True
            if scope.cancelled_caught:
                _log.warning(
                    "notifier: %s for job %r timed out after %gs", channel, job.name, limit
                )
        except (
            RequestError,
            SmtpError,
            OSError,
            trio.BrokenResourceError,
            trio.ClosedResourceError,
            h11.ProtocolError,
            _ChannelError,
        ) as exc:
            _log.warning("notifier: %s for job %r failed: %s", channel, job.name, exc)
        except Exception:
            # A bug in a channel must not cost the caller its dependents.
            _log.exception("notifier: %s for job %r failed unexpectedly", channel, job.name)
        self.stats.count(channel, ok=ok)

    # -- channels -------------------------------------------------------------------

    async def _webhook(self, endpoint: str, payload: str, headers: Sequence[str]) -> None:
        host: str | None = None
        wire: dict[str, tuple[str, str]] = {
            "user-agent": ("User-Agent", f"dkron/{dkron.__version__}")
        }
        for line in headers:
            if not line:
                continue
            name, _, value = line.partition(":")
            name, value = name.strip(), value.strip()
            if name.lower() == "host":
                host = value
            else:
                wire[name.lower()] = (canonical_header(name), value)
        response = await request(
            "POST",
            endpoint,
            headers=wire.values(),
            body=_utf8(payload),
            tls=self._http_tls,
            host=host,
        )
        _log.debug(
            "notifier: webhook %s answered %d: %s",
            endpoint,
            response.status,
            response.body.decode("utf-8", "replace"),
        )
        if not 200 <= response.status < 300:
            raise _ChannelError(f"{endpoint} answered HTTP {response.status}")

    async def _cronitor(self, execution: Execution, state: str) -> None:
        params = {
            "host": execution.node_name,
            "message": f"Job {state} by Dkron",
            "series": execution.id,
            "state": "fail" if state == "complete" and not execution.success else state,
        }
        url = f"{self.settings.cronitor_endpoint}/{execution.job_name}?" + urllib.parse.urlencode(
            sorted(params.items())
        )
        response = await request("GET", url, tls=self._http_tls)
        if not 200 <= response.status < 300:
            raise _ChannelError(f"Cronitor answered HTTP {response.status}")

    async def _mail(self, job: Job, execution: Execution, body: str, reporting_node: str) -> None:
        s = self.settings
        sender = email.utils.parseaddr(s.mail_from)[1]
        if not sender:
            raise _ChannelError("mail: no address in mail-from")
        recipients = [addr for _, addr in email.utils.getaddresses([job.owner_email]) if addr]
        if not recipients:
            raise _ChannelError(f"mail: no address in owner_email {job.owner_email!r}")
        status = "Success" if execution.success else "Failed"
        msg = EmailMessage(policy=email.policy.SMTP)
        msg["From"] = _clean(s.mail_from)
        msg["To"] = _clean(job.owner_email)
        msg["Subject"] = _clean(
            f"{s.mail_subject_prefix}{status} {execution.job_name} execution report"
        )
        msg["Date"] = email.utils.formatdate()
        msg["Message-ID"] = email.utils.make_msgid(domain=_msgid_domain(reporting_node))
        msg.set_content(_clean(body))
        await send_mail(
            s.mail_host,
            s.mail_port,
            sender=sender,
            recipients=recipients,
            message=msg.as_bytes(),
            username=s.mail_username,
            password=s.mail_password,
            local_name=_msgid_domain(reporting_node),
            tls=self._mail_tls,
        )


class _ChannelError(Exception):
    """A channel's own failure (a refused HTTP status, a missing address)."""


def _msgid_domain(node: str) -> str:
    """A name usable in EHLO and Message-ID (no DNS look-up, which would block)."""
    cleaned = "".join(c if c.isascii() and (c.isalnum() or c in "-.") else "-" for c in node)
    return cleaned.strip("-.") or "localhost"
