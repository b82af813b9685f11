"""The ``dkron`` command: ``agent``, ``leave``, ``raft``, ``keyring``, ``keygen``, ``version``.

The job client commands (``jobs``, ``executions``, ``members``, ``schedule``)
live in :mod:`dkron.jobcli`; this module only registers and dispatches them.

Commands and output follow Dkron's so that scripts written for it keep working.
``leave`` and ``raft`` talk to a server's HTTP API (Dkron uses gRPC on the RPC
port); ``--rpc-addr`` is still accepted and, when ``--address`` is not given,
its host is used with the default HTTP port.  They send ``--token`` (or
``$DKRON_TOKEN``) as a Bearer token and trust ``--ca-cert`` (or
``$DKRON_CA_CERT``) for an ``https://`` address signed by a private CA.

Exit status: 0 on success, 1 when the command fails, 2 for a bad flag or
configuration value (argparse's convention), with a message naming the flag.
"""

from __future__ import annotations

import argparse
import base64
import contextvars
import gc
import inspect
import json
import logging
import os
import resource
import secrets
import ssl
import sys
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Awaitable, Callable, Sequence
from typing import NoReturn, TextIO, cast

from dkron import __version__, jobcli
from dkron.config import AgentConfig, ConfigError, build_agent_parser, load_config

__all__ = ["CODENAME", "DEFAULT_ADDRESS", "HttpClientError", "main", "version_text"]

DEFAULT_ADDRESS = "http://127.0.0.1:8080"
CODENAME = "Trio"
_HTTP_TIMEOUT = 30.0
_HTTP_PORT = 8080
#: (token, CA file) of the command being run, read by every request it makes
_CREDENTIALS: contextvars.ContextVar[tuple[str | None, str | None]] = contextvars.ContextVar(
    "dkron_cli_credentials", default=(None, None)
)

#: ``dkron.io_trio.agent.run``: sync, or async (then run under ``trio.run``).
Runner = Callable[[AgentConfig], object]


class _UsageError(Exception):
    def __init__(self, parser: argparse.ArgumentParser, message: str) -> None:
        super().__init__(message)
        self.parser = parser


class _Parser(argparse.ArgumentParser):
    """Raises instead of exiting so that ``main`` returns a status in-process."""

    def error(self, message: str) -> NoReturn:
        raise _UsageError(self, message)


class HttpClientError(Exception):
    """A request to the agent's HTTP API that failed; the message says why."""


def version_text() -> str:
    """Dkron's ``version`` output, with this implementation's versions."""
    from dkron.io_trio.rpc import PROTOCOL_VERSION

    return (
        f"Name: Dkron\nVersion: {__version__}\nCodename: {CODENAME}\n"
        f"Agent Protocol: {PROTOCOL_VERSION} (Understands back to: {PROTOCOL_VERSION})\n"
    )


def _build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="dkron",
        description="Distributed, fault-tolerant job scheduling system (Dkron compatible).",
        allow_abbrev=False,
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True
    # ``agent`` is dispatched before parsing (its flags live in dkron.config); this
    # entry only lists it in the help.
    sub.add_parser("agent", help="start a dkron agent (see dkron agent --help)")
    sub.add_parser("keygen", help="generate a gossip encryption key", allow_abbrev=False)
    sub.add_parser("version", help="show version information", allow_abbrev=False)
    leave = sub.add_parser(
        "leave", help="make a server leave the cluster gracefully", allow_abbrev=False
    )
    raft = sub.add_parser("raft", help="inspect and change the Raft configuration")
    raft_sub = raft.add_subparsers(dest="raft_command", metavar="COMMAND", parser_class=_Parser)
    raft_sub.required = True
    _server_flags(leave)
    _server_flags(raft_sub.add_parser("list-peers", help="list the Raft peers"))
    remove = raft_sub.add_parser("remove-peer", help="remove a server from the Raft peers")
    _server_flags(remove)
    remove.add_argument("--peer-id", required=True, help="ID (node name) of the peer to remove")
    keyring = sub.add_parser("keyring", help="list and rotate the cluster's gossip keys")
    keyring_sub = keyring.add_subparsers(
        dest="keyring_command", metavar="COMMAND", parser_class=_Parser
    )
    keyring_sub.required = True
    _server_flags(keyring_sub.add_parser("list", help="list the keys and who holds them"))
    for verb, text in (
        ("install", "install a key on every member (decrypt only)"),
        ("use", "make an installed key the primary on every member"),
        ("remove", "remove a key from every member (not the primary)"),
    ):
        op = keyring_sub.add_parser(verb, help=text)
        _server_flags(op)
        op.add_argument("key", metavar="KEY", help="base64 key, as made by 'dkron keygen'")
    parser.add_argument(
        "--token",
        help="API token sent by the job commands as 'Authorization: Bearer TOKEN' "
        "(default: $DKRON_TOKEN)",
    )
    jobcli.add_commands(sub, client_flags=_client_flags)
    return parser


def _client_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--address",
        metavar="URL",
        help=f"HTTP API of a server (default: {DEFAULT_ADDRESS})",
    )
    parser.add_argument(
        "--rpc-addr",
        metavar="HOST:PORT",
        help="Dkron's gRPC address; accepted for compatibility: its host is used "
        f"with HTTP port {_HTTP_PORT} when --address is not given",
    )
    parser.add_argument(
        "--ca-cert",
        metavar="FILE",
        default=argparse.SUPPRESS,
        help="PEM CA that signs the server's HTTPS certificate (default: $DKRON_CA_CERT)",
    )


def _server_flags(parser: argparse.ArgumentParser) -> None:
    """``leave``, ``raft`` and ``keyring``: the client flags and the API token."""
    _client_flags(parser)
    parser.add_argument(
        "--token",
        default=argparse.SUPPRESS,
        help="API token sent as 'Authorization: Bearer TOKEN' (default: $DKRON_TOKEN)",
    )


def _base_url(ns: argparse.Namespace, parser: argparse.ArgumentParser) -> str:
    if ns.address:
        url = str(ns.address)
        parsed = urllib.parse.urlsplit(url)
        if parsed.scheme not in ("http", "https") or not parsed.netloc:
            raise _UsageError(parser, f"--address: expected http://host:port, not {url!r}")
        return url.rstrip("/")
    if ns.rpc_addr:
        host = str(ns.rpc_addr).strip()
        if host.startswith("["):
            host = host[: host.find("]") + 1]
        else:
            host = host.rpartition(":")[0] or host
        if not host or host == "[]" or "{{" in host:
            raise _UsageError(parser, f"--rpc-addr: cannot use {ns.rpc_addr!r} as a host")
        return f"http://{host}:{_HTTP_PORT}"
    return DEFAULT_ADDRESS


def _request(method: str, url: str, body: bytes | None = None) -> tuple[int, bytes]:
    """One HTTP request; any status is returned, only transport failures raise."""
    token, ca_cert = _CREDENTIALS.get()
    headers = {"Accept": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    if body is not None:
        headers["Content-Type"] = "application/json"
    req = urllib.request.Request(url, method=method, headers=headers)
    if method in ("POST", "PUT"):
        req.data = b"" if body is None else body
    try:
        context = ssl.create_default_context(cafile=ca_cert) if ca_cert else None
    except (OSError, ssl.SSLError) as exc:
        raise HttpClientError(f"--ca-cert {ca_cert!r}: {exc}") from None
    try:
        with urllib.request.urlopen(req, timeout=_HTTP_TIMEOUT, context=context) as resp:
            return int(resp.status), bytes(resp.read())
    except urllib.error.HTTPError as exc:
        with exc:
            return int(exc.code), bytes(exc.read())
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise HttpClientError(f"cannot reach {url}: {reason}") from None


def _error_text(status: int, body: bytes) -> str:
    text = body.decode("utf-8", "replace").strip()
    try:
        data = json.loads(text)
    except ValueError:
        data = None
    if isinstance(data, dict) and isinstance(data.get("error"), str):
        text = data["error"]
    return f"HTTP {status}: {text}" if text else f"HTTP {status}"


def _leave(base: str, out: TextIO) -> None:
    status, body = _request("POST", f"{base}/v1/leave")
    if status != 200:
        raise HttpClientError(_error_text(status, body))
    print("Left the cluster successfully", file=out)


def _list_peers(base: str, out: TextIO) -> None:
    status, body = _request("GET", f"{base}/v1/raft/peers")
    if status != 200:
        raise HttpClientError(_error_text(status, body))
    try:
        peers = json.loads(body)
    except ValueError:
        raise HttpClientError("the server's answer is not JSON") from None
    if not isinstance(peers, list) or not all(isinstance(p, dict) for p in peers):
        raise HttpClientError("the server's answer is not a list of peers")
    rows = [["Node", "ID", "Address", "State", "Voter"]]
    for peer in peers:
        state = peer.get("state")
        if not isinstance(state, str):
            state = "leader" if peer.get("leader") is True else "follower"
        rows.append(
            [
                str(peer.get("node") or "(unknown)"),
                str(peer.get("id", "")),
                str(peer.get("address", "")),
                state,
                "true" if peer.get("voter", True) is True else "false",
            ]
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip(), file=out)


def _remove_peer(base: str, peer_id: str, out: TextIO) -> None:
    quoted = urllib.parse.quote(peer_id, safe="")
    status, body = _request("DELETE", f"{base}/v1/raft/peers/{quoted}")
    if status == 404:
        raise HttpClientError(f'id "{peer_id}" was not found in the Raft configuration')
    if status not in (200, 204):
        raise HttpClientError(_error_text(status, body))
    print("Peer removed", file=out)


def _keyring(base: str, command: str, key: str | None, out: TextIO) -> None:
    if command == "list":
        status, body = _request("GET", f"{base}/v1/keyring")
    else:
        payload = json.dumps({"key": key}).encode()
        status, body = _request("POST", f"{base}/v1/keyring/{command}", payload)
    if status != 200:
        raise HttpClientError(_error_text(status, body))
    try:
        data = json.loads(body)
    except ValueError:
        raise HttpClientError("the server's answer is not JSON") from None
    if not isinstance(data, dict):
        raise HttpClientError("the server's answer is not a JSON object")
    if command != "list":
        print(f"{command}: sent to {data.get('num_nodes', '?')} members", file=out)
        return
    if not data.get("encrypted"):
        print("Gossip encryption is not enabled.", file=out)
        return
    nodes = data.get("num_nodes", 0)
    keys = data.get("keys") or {}
    primary = data.get("primary_keys") or {}
    print(f"Keys held by the {nodes} alive members:", file=out)
    for k, n in keys.items():
        mark = f" (primary on {primary[k]})" if primary.get(k) else ""
        print(f"  {k} [{n}/{nodes}]{mark}", file=out)
    for fp, n in (data.get("other_keys") or {}).items():
        print(f"  unknown key, fingerprint {fp} [{n}/{nodes}]", file=out)


def _load_runner() -> Runner:
    from dkron.io_trio import agent

    run: Runner = agent.run
    return run


def _call_runner(runner: Runner, config: AgentConfig) -> object:
    if inspect.iscoroutinefunction(runner):
        import trio

        async_runner = cast("Callable[[AgentConfig], Awaitable[object]]", runner)
        return trio.run(async_runner, config)
    return runner(config)


def _agent(args: Sequence[str], runner: Runner | None, out: TextIO, err: TextIO) -> int:
    try:
        config = load_config(args, os.environ, cwd=os.getcwd())
    except ConfigError as exc:
        print(f"dkron agent: error: {exc}", file=err)
        print("Run 'dkron agent --help' for the list of flags.", file=err)
        return 2
    for warning in config.warnings:
        print(f"dkron agent: warning: {warning}", file=err)
    if runner is None:
        try:
            runner = _load_runner()
        except ImportError as exc:
            print(f"dkron agent: error: the agent runtime cannot be loaded: {exc}", file=err)
            return 1
        _configure_logging(config, err)
        _tune_collector()
        _raise_open_files_limit()
    result = _call_runner(runner, config)
    return result if isinstance(result, int) and not isinstance(result, bool) else 0


#: Allocations between young-generation collections, and the two older
#: generations' ratios, for an agent process.  A server holds every job's
#: last executions (100 each by default: a million objects at 10,000 jobs),
#: and at CPython's 700 the cyclic collector keeps rescanning them: in
#: ``bench/cluster_sim.py`` (1,000 jobs, 12 virtual minutes) it made the run
#: a third slower.  Nearly all garbage is freed by reference counting the
#: moment it is dropped; this only delays the collection of cycles.
GC_THRESHOLDS = (100_000, 50, 100)


def _tune_collector() -> None:
    """Set the process's collector for a long-lived agent (not for embedders,
    whose process is theirs: only the real runtime's command does this)."""
    gc.set_threshold(*GC_THRESHOLDS)


def _raise_open_files_limit() -> None:
    """Lift the soft limit on open files to the hard limit, as Go's runtime does
    for Dkron at start-up.

    Every running shell job holds a pipe and every HTTP job a socket: with the
    soft limit many systems start with (1,024), a few hundred long runs would
    leave the agent unable to accept connections or open its Raft files, where
    Dkron, under the same account, would have the hard limit.
    """
    try:
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if soft != resource.RLIM_INFINITY and soft < hard != resource.RLIM_INFINITY:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    except (OSError, ValueError) as exc:  # a sandbox may refuse; the agent runs on
        logging.getLogger("dkron.agent").warning("cannot raise the open files limit: %s", exc)


#: logrus level names to the logging module's
_LEVELS = {
    "trace": logging.DEBUG,
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warn": logging.WARNING,
    "warning": logging.WARNING,
    "error": logging.ERROR,
    "fatal": logging.CRITICAL,
    "panic": logging.CRITICAL,
}


class JsonFormatter(logging.Formatter):
    """One JSON object per line, for log shippers: time, level, node, logger, message."""

    def __init__(self, node: str) -> None:
        super().__init__()
        self.node = node

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S") + f".{int(record.msecs):03d}",
            "level": record.levelname.lower(),
            "node": self.node,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        if record.exc_info:
            entry["error"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


def _configure_logging(config: AgentConfig, err: TextIO) -> None:
    """Logs on stderr at ``--log-level``, every line naming the node (``--log-format``)."""
    handler = logging.StreamHandler(err)
    if config.log_format == "json":
        handler.setFormatter(JsonFormatter(config.node_name))
    else:
        handler.setFormatter(
            logging.Formatter(
                f"%(asctime)s %(levelname)s node={config.node_name} %(name)s: %(message)s"
            )
        )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(_LEVELS.get(config.log_level, logging.INFO))


def main(
    argv: Sequence[str] | None = None,
    *,
    runner: Runner | None = None,
    stdout: TextIO | None = None,
    stderr: TextIO | None = None,
) -> int:
    """Run one ``dkron`` command and return its exit status.

    ``runner`` replaces ``dkron.io_trio.agent.run`` for ``agent`` (tests, embedding).
    """
    out = sys.stdout if stdout is None else stdout
    err = sys.stderr if stderr is None else stderr
    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] == ["agent"]:
        if any(a in ("-h", "--help") for a in args[1:]):
            print(build_agent_parser().format_help(), end="", file=out)
            return 0
        return _agent(args[1:], runner, out, err)
    parser = _build_parser()
    try:
        ns = parser.parse_args(args)
    except _UsageError as exc:
        print(exc.parser.format_usage(), end="", file=err)
        print(f"{exc.parser.prog}: error: {exc}", file=err)
        return 2
    except SystemExit as exc:  # --help
        return exc.code if isinstance(exc.code, int) else 0
    if ns.command == "keygen":
        print(base64.b64encode(secrets.token_bytes(16)).decode("ascii"), file=out)
        return 0
    if ns.command == "version":
        print(version_text(), end="", file=out)
        return 0
    if ns.command in jobcli.COMMANDS:
        try:
            base = _base_url(ns, parser) if jobcli.needs_server(ns) else None
        except _UsageError as exc:
            print(f"dkron {ns.command}: error: {exc}", file=err)
            return 2
        return jobcli.run_command(ns, base_url=base, out=out, err=err)
    if ns.command == "leave":
        command = "dkron leave"
    elif ns.command == "keyring":
        command = f"dkron keyring {ns.keyring_command}"
    else:
        command = f"dkron raft {ns.raft_command}"
    token = getattr(ns, "token", None) or os.environ.get("DKRON_TOKEN") or None
    ca_cert = getattr(ns, "ca_cert", None) or os.environ.get("DKRON_CA_CERT") or None
    reset = _CREDENTIALS.set((token, ca_cert))
    try:
        base = _base_url(ns, parser)
        if ns.command == "leave":
            _leave(base, out)
        elif ns.command == "keyring":
            _keyring(base, ns.keyring_command, getattr(ns, "key", None), out)
        elif ns.raft_command == "list-peers":
            _list_peers(base, out)
        else:
            _remove_peer(base, ns.peer_id, out)
    except _UsageError as exc:
        print(f"{command}: error: {exc}", file=err)
        return 2
    except HttpClientError as exc:
        print(f"{command}: error: {exc}", file=err)
        return 1
    finally:
        _CREDENTIALS.reset(reset)
    return 0
