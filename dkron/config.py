"""``dkron agent`` configuration: flags, ``DKRON_*`` environment, config file, defaults.

Dkron's flag names, defaults, config-file keys and environment variables are the
compatibility target, so that an operator's existing ``dkron.yml``, systemd unit
or Kubernetes manifest keeps working.  Precedence is Dkron's: flags > environment
> config file > defaults.  Every problem is a :class:`ConfigError` whose message
names the flag (and the source it came from), so the operator knows what to fix.

Addresses stay strings here: they may be go-sockaddr templates that only the
running agent can resolve against its interfaces.  Their syntax is checked early.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import csv
import dataclasses
import difflib
import enum
import ipaddress
import json
import os
import re
import socket
import tomllib
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import NoReturn

import yaml

from dkron.schedule import parse_go_duration

__all__ = [
    "CONFIG_EXTENSIONS",
    "DEFAULT_SEARCH_PATHS",
    "ENV_PREFIX",
    "LOG_LEVELS",
    "PROFILES",
    "AgentConfig",
    "ConfigError",
    "build_agent_parser",
    "default_search_paths",
    "load_config",
    "option_names",
    "parse_tags",
    "read_token_file",
    "to_argv",
]

ENV_PREFIX = "DKRON_"
PROFILES = ("lan", "wan", "local")
#: logrus level names; anything else falls back to ``info`` as in Dkron.
LOG_LEVELS = ("trace", "debug", "info", "warn", "warning", "error", "fatal", "panic")
#: viper's search order for ``dkron.<ext>`` (the formats we can read).
CONFIG_EXTENSIONS = ("json", "toml", "yaml", "yml")
DEFAULT_SEARCH_PATHS = ("/etc/dkron", "$HOME/.dkron", "./config")
#: Tags every node publishes itself (gossip); a user tag of that name is overwritten.
_RESERVED_TAGS = frozenset(
    {"role", "dc", "region", "version", "server", "bootstrap", "expect", "rpc_addr", "port"}
    | {"keyring"}
)
_TEMPLATE = re.compile(r"\{\{.*?\}\}")
_DECIMAL = re.compile(r"[+-]?[0-9]+\Z")
_GO_TRUE = frozenset({"1", "t", "T", "TRUE", "true", "True"})
_GO_FALSE = frozenset({"0", "f", "F", "FALSE", "false", "False"})


class ConfigError(ValueError):
    """An unusable configuration value; ``flag`` is the option it concerns."""

    def __init__(self, message: str, *, flag: str | None = None) -> None:
        super().__init__(message)
        self.flag = flag


class _Kind(enum.Enum):
    BOOL = "bool"
    INT = "int"
    STR = "string"
    DURATION = "duration"
    LIST = "list"
    TAGS = "tags"


@dataclass(frozen=True, slots=True, kw_only=True)
class _Option:
    key: str  # config-file key; the flag is ``--key`` when ``flag`` is true
    attr: str  # AgentConfig field
    kind: _Kind
    help: str
    flag: bool = True

    @property
    def env(self) -> str:
        return ENV_PREFIX + self.key.upper().replace("-", "_")

    @property
    def display(self) -> str:
        if self.kind is _Kind.TAGS:
            return "--tag"
        return f"--{self.key}" if self.flag else self.key


def _hostname() -> str:
    return socket.gethostname()


@dataclass(frozen=True, slots=True, kw_only=True)
class AgentConfig:
    """Everything ``dkron agent`` accepts, typed and validated at construction.

    Durations are seconds.  ``warnings`` and ``config_file`` describe how the
    configuration was loaded and take no part in equality.
    """

    server: bool = False
    node_name: str = field(default_factory=_hostname)
    bind_addr: str = "{{ GetPrivateIP }}:8946"
    advertise_addr: str = ""
    http_addr: str = ":8080"
    profile: str = "lan"
    join: tuple[str, ...] = ()
    retry_join: tuple[str, ...] = ()
    retry_max: int = 0
    retry_interval: float = 30.0
    raft_multiplier: int = 1
    tags: Mapping[str, str] = field(default_factory=dict)
    encrypt: str = ""
    log_level: str = "info"
    log_format: str = "text"
    rpc_port: int = 6868
    advertise_rpc_port: int = 0
    bootstrap_expect: int = 0
    data_dir: str = "dkron.data"
    datacenter: str = "dc1"
    region: str = "global"
    serf_reconnect_timeout: float = 86400.0
    ui: bool = True
    mail_host: str = ""
    mail_port: int = 0
    mail_username: str = ""
    mail_password: str = ""
    mail_from: str = ""
    mail_payload: str = ""
    mail_subject_prefix: str = "[Dkron]"
    pre_webhook_endpoint: str = ""
    pre_webhook_payload: str = ""
    pre_webhook_headers: tuple[str, ...] = ()
    webhook_endpoint: str = ""
    webhook_payload: str = ""
    webhook_headers: tuple[str, ...] = ()
    cronitor_endpoint: str = ""
    dog_statsd_addr: str = ""
    dog_statsd_tags: tuple[str, ...] = ()
    statsd_addr: str = ""
    enable_prometheus: bool = False
    otel_endpoint: str = ""
    disable_usage_stats: bool = False
    https_cert: str = ""
    https_key: str = ""
    rpc_tls_ca: str = ""
    rpc_tls_cert: str = ""
    rpc_tls_key: str = ""
    api_token: tuple[str, ...] = field(default=(), repr=False)
    api_token_file: str = ""
    api_read_token: tuple[str, ...] = field(default=(), repr=False)
    api_read_token_file: str = ""
    basic_auth: tuple[str, ...] = field(default=(), repr=False)
    # config-file-only keys
    bootstrap: bool = False
    devmode: bool = False
    reconcile_interval: float = 60.0
    # provenance
    config_file: str | None = field(default=None, compare=False)
    warnings: tuple[str, ...] = field(default=(), compare=False)
    #: what ``load_config`` read, so that SIGHUP can read the same sources again
    argv: tuple[str, ...] | None = field(default=None, compare=False, repr=False)  # secrets
    cwd: str = field(default="", compare=False)

    def __post_init__(self) -> None:
        _validate(self)

    @property
    def encrypt_key(self) -> bytes | None:
        """The decoded gossip key, or ``None`` when gossip is not encrypted."""
        return base64.b64decode(self.encrypt, validate=True) if self.encrypt else None

    @property
    def rpc_advertise_port(self) -> int:
        """The port published in the ``port``/``rpc_addr`` tags (0 means ``--rpc-port``)."""
        return self.advertise_rpc_port or self.rpc_port

    @property
    def self_bootstrap(self) -> bool:
        """Bootstrap Raft alone: ``bootstrap``, dev mode, or ``--bootstrap-expect 1``."""
        return self.server and (self.bootstrap or self.devmode or self.bootstrap_expect == 1)

    @property
    def pre_webhook_header_pairs(self) -> tuple[tuple[str, str], ...]:
        return tuple(_split_header(h) for h in self.pre_webhook_headers)

    @property
    def webhook_header_pairs(self) -> tuple[tuple[str, str], ...]:
        return tuple(_split_header(h) for h in self.webhook_headers)


def _o(key: str, kind: _Kind, help: str, *, flag: bool = True, attr: str = "") -> _Option:
    return _Option(key=key, attr=attr or key.replace("-", "_"), kind=kind, help=help, flag=flag)


_B, _I, _S, _D, _L = _Kind.BOOL, _Kind.INT, _Kind.STR, _Kind.DURATION, _Kind.LIST
_OPTIONS: tuple[_Option, ...] = (
    _o("server", _B, "run in server mode (Raft, scheduler, HTTP API and UI)"),
    _o("node-name", _S, "unique name of this node, also its Raft ID (default: hostname)"),
    _o("bind-addr", _S, "gossip bind address, a go-sockaddr template; port 8946 if omitted"),
    _o("advertise-addr", _S, "gossip address advertised to the cluster (default: from bind)"),
    _o("http-addr", _S, "HTTP API and UI listen address (servers only)"),
    _o("profile", _S, "gossip timing profile: lan, wan or local"),
    _o("join", _L, "address of an agent to join at start; repeatable"),
    _o("retry-join", _L, "address of an agent to join, retried until it works; repeatable"),
    _o("retry-max", _I, "maximum retry-join attempts, 0 for no limit"),
    _o("retry-interval", _D, "time between retry-join attempts (Go duration)"),
    _o("raft-multiplier", _I, "scale of Raft timing, 1 (fastest) to 10"),
    _o("tags", _Kind.TAGS, "node tag key=value; repeatable; replaces the file's tags"),
    _o("encrypt", _S, "base64 gossip encryption key of 16, 24 or 32 bytes (see keygen)"),
    _o("log-level", _S, "debug, info, warn, error, fatal or panic"),
    _o("log-format", _S, "text (default) or json: one JSON object per log line"),
    _o("rpc-port", _I, "RPC and Raft port, bound on the bind address's IP"),
    _o("advertise-rpc-port", _I, "RPC port advertised to the cluster, 0 for --rpc-port"),
    _o("bootstrap-expect", _I, "number of servers to wait for before bootstrapping Raft"),
    _o("data-dir", _S, "directory of the Raft log, snapshots and peers.json"),
    _o("datacenter", _S, "datacenter of this node (the dc tag)"),
    _o("region", _S, "region of this node (the region tag)"),
    _o("serf-reconnect-timeout", _D, "how long failed nodes are retried before being reaped"),
    _o("ui", _B, "serve the web UI (servers only)"),
    _o("mail-host", _S, "SMTP host for job e-mail notifications"),
    _o("mail-port", _I, "SMTP port"),
    _o("mail-username", _S, "SMTP user (used together with --mail-password)"),
    _o("mail-password", _S, "SMTP password"),
    _o("mail-from", _S, "From address of notifications"),
    _o("mail-payload", _S, "e-mail body template (default: the execution output)"),
    _o("mail-subject-prefix", _S, "prefix of the e-mail subject"),
    _o("pre-webhook-endpoint", _S, "URL POSTed when an execution starts"),
    _o("pre-webhook-payload", _S, "body template of the pre-execution webhook"),
    _o("pre-webhook-headers", _L, "'Name: value' header of the pre-execution webhook"),
    _o("webhook-endpoint", _S, "URL POSTed when an execution finishes"),
    _o("webhook-payload", _S, "body template of the webhook"),
    _o("webhook-headers", _L, "'Name: value' header of the webhook; repeatable"),
    _o("cronitor-endpoint", _S, "Cronitor telemetry base URL"),
    _o("dog-statsd-addr", _S, "DogStatsD address for metrics"),
    _o("dog-statsd-tags", _L, "global DogStatsD tag key:value; repeatable"),
    _o("statsd-addr", _S, "StatsD address for metrics"),
    _o("enable-prometheus", _B, "serve Prometheus metrics at /metrics"),
    _o("otel-endpoint", _S, "OpenTelemetry trace endpoint"),
    _o("disable-usage-stats", _B, "accepted for compatibility; usage is never reported"),
    _o("https-cert", _S, "PEM certificate (chain) of the HTTPS API; needs --https-key"),
    _o("https-key", _S, "PEM private key of --https-cert"),
    _o("rpc-tls-ca", _S, "PEM CA that signs every node's RPC certificate (mutual TLS)"),
    _o("rpc-tls-cert", _S, "PEM RPC certificate of this node, naming --node-name (SAN DNS)"),
    _o("rpc-tls-key", _S, "PEM private key of --rpc-tls-cert"),
    _o("api-token", _L, "API token with full access (Bearer or X-Dkron-Token); repeatable"),
    _o("api-token-file", _S, "file of full-access API tokens, one a line, # comments"),
    _o("api-read-token", _L, "API token that may only read (GET, websockets); repeatable"),
    _o("api-read-token-file", _S, "file of read-only API tokens, one a line, # comments"),
    _o("basic-auth", _L, "USER:PASSWORD accepted as HTTP basic auth (full access); repeatable"),
    _o("bootstrap", _B, "bootstrap Raft with this server alone", flag=False),
    _o("devmode", _B, "development mode", flag=False),
    _o(
        "reconcileinterval",
        _D,
        "period of the leader's membership reconcile",
        flag=False,
        attr="reconcile_interval",
    ),
)
_BY_KEY = {o.key: o for o in _OPTIONS}
_BY_ENV = {o.env: o for o in _OPTIONS if o.kind is not _Kind.TAGS}
_TAGS = _BY_KEY["tags"]
_TAGS_ENV = ENV_PREFIX + "TAG"
#: Accepted and ignored, with a warning, as Dkron does.
_DEPRECATED = {"webhook-url": "--webhook-url is deprecated and ignored; use --webhook-endpoint"}


def option_names() -> tuple[str, ...]:
    """Every config-file key, in the order the flags are documented."""
    return tuple(o.key for o in _OPTIONS)


# -- validation ---------------------------------------------------------------------


def _validate(c: AgentConfig) -> None:
    def fail(key: str, problem: str) -> NoReturn:
        opt = _BY_KEY[key]
        raise ConfigError(f"{opt.display} {problem}", flag=opt.display)

    for opt in _OPTIONS:
        _check_type(opt, getattr(c, opt.attr))
    if not c.node_name.strip():
        fail("node-name", "must not be empty")
    if not c.data_dir:
        fail("data-dir", "must not be empty")
    if not c.datacenter:
        fail("datacenter", "must not be empty")
    if not c.region:
        fail("region", "must not be empty")
    if c.profile not in PROFILES:
        fail("profile", f"must be lan, wan or local, not {c.profile!r}")
    if not 1 <= c.raft_multiplier <= 10:
        fail("raft-multiplier", f"must be between 1 and 10, not {c.raft_multiplier}")
    if c.retry_max < 0:
        fail("retry-max", f"must not be negative, not {c.retry_max}")
    if c.bootstrap_expect < 0:
        fail("bootstrap-expect", f"must not be negative, not {c.bootstrap_expect}")
    if not 1 <= c.rpc_port <= 65535:
        fail("rpc-port", f"must be between 1 and 65535, not {c.rpc_port}")
    for key, value in (("advertise-rpc-port", c.advertise_rpc_port), ("mail-port", c.mail_port)):
        if not 0 <= value <= 65535:
            fail(key, f"must be between 0 and 65535, not {value}")
    for key in ("retry-interval", "serf-reconnect-timeout", "reconcileinterval"):
        seconds = getattr(c, _BY_KEY[key].attr)
        if not seconds > 0:
            fail(key, f"must be a positive duration, not {seconds}s")
    if c.log_level not in LOG_LEVELS:
        fail("log-level", f"must be one of {', '.join(LOG_LEVELS)}, not {c.log_level!r}")
    if c.log_format not in ("text", "json"):
        fail("log-format", f"must be text or json, not {c.log_format!r}")
    for tag_key, tag_value in c.tags.items():
        if not tag_key:
            fail("tags", f"has an empty key (value {tag_value!r})")
    if c.encrypt:
        try:
            key_bytes = base64.b64decode(c.encrypt, validate=True)
        except (binascii.Error, ValueError):
            fail("encrypt", "is not valid base64")
        else:
            if len(key_bytes) not in (16, 24, 32):
                fail("encrypt", f"key must be 16, 24 or 32 bytes, not {len(key_bytes)}")
    for key in ("bind-addr", "advertise-addr", "http-addr"):
        value = getattr(c, _BY_KEY[key].attr)
        if value:
            text = _TEMPLATE.sub("127.0.0.1", value)
            if text.startswith(":") and text.count(":") == 1:
                text = "0.0.0.0" + text
            problem = _addr_problem(text)
            if problem:
                fail(key, f"is not usable: invalid address {value!r}: {problem}")
    for key in ("pre-webhook-headers", "webhook-headers"):
        for header in getattr(c, _BY_KEY[key].attr):
            if not _HEADER.match(header):
                fail(key, f"has an invalid header {header!r} (expected 'Name: value')")
    _validate_security(c, fail)


_TOKEN_TEXT = re.compile(r"[\x21-\x7e]+\Z")


def _validate_security(c: AgentConfig, fail: Callable[[str, str], NoReturn]) -> None:
    if bool(c.https_cert) != bool(c.https_key):
        missing = "https-key" if c.https_cert else "https-cert"
        fail(missing, "is required too: --https-cert and --https-key go together")
    rpc = {"rpc-tls-ca": c.rpc_tls_ca, "rpc-tls-cert": c.rpc_tls_cert, "rpc-tls-key": c.rpc_tls_key}
    if any(rpc.values()) and not all(rpc.values()):
        missing = next(k for k, v in rpc.items() if not v)
        fail(missing, "is required too: --rpc-tls-ca, --rpc-tls-cert and --rpc-tls-key go together")
    for key in ("https-cert", "https-key", *rpc):
        path = getattr(c, _BY_KEY[key].attr)
        if path and not os.path.isfile(path):
            fail(key, f"is not a readable file: {path!r}")
    for key in ("api-token", "api-read-token"):
        for token in getattr(c, _BY_KEY[key].attr):
            if not _TOKEN_TEXT.match(token):
                fail(key, "has a token that is not printable ASCII without spaces")
    for key in ("api-token-file", "api-read-token-file"):
        path = getattr(c, _BY_KEY[key].attr)
        if path:
            try:
                read_token_file(path)
            except ConfigError as exc:
                fail(key, str(exc))
    for pair in c.basic_auth:
        user, sep, _ = pair.partition(":")
        if not sep or not user:
            fail("basic-auth", "must be USER:PASSWORD with a non-empty user")


def read_token_file(path: str) -> tuple[str, ...]:
    """Tokens of a token file: one a line, blank lines and ``# comments`` skipped.

    Problems are a :class:`ConfigError` that never quotes a token.
    """
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read {path!r}: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path!r} is not UTF-8 text") from None
    tokens: list[str] = []
    for number, line in enumerate(text.splitlines(), 1):
        token = line.strip()
        if not token or token.startswith("#"):
            continue
        if not _TOKEN_TEXT.match(token):
            raise ConfigError(f"{path!r} line {number}: a token is printable ASCII without spaces")
        tokens.append(token)
    return tuple(tokens)


def _addr_problem(text: str) -> str | None:
    """The syntax ``dkron.io_trio.addr.parse_addr`` accepts; this layer may not import it."""
    host, port = text.strip(), ""
    if host.startswith("["):
        end = host.find("]")
        if end < 0 or (end + 1 < len(host) and host[end + 1] != ":"):
            return "unbalanced brackets"
        host, port = host[1:end], host[end + 2 :]
    elif host.count(":") == 1:
        host, port = host.split(":")
    elif host.count(":") > 1:
        return "write IPv6 hosts as [addr]:port"
    if port and (not port.isdigit() or int(port) > 65535):
        return f"port {port!r} is not within 0..65535"
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return f"{host!r} is not an IP address"
    return None


_HEADER = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+:")


def _split_header(header: str) -> tuple[str, str]:
    name, _, value = header.partition(":")
    return name.strip(), value.strip()


def _check_type(opt: _Option, value: object) -> None:
    ok: bool
    if opt.kind is _Kind.BOOL:
        ok = isinstance(value, bool)
    elif opt.kind is _Kind.INT:
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif opt.kind is _Kind.DURATION:
        ok = isinstance(value, int | float) and not isinstance(value, bool)
    elif opt.kind is _Kind.STR:
        ok = isinstance(value, str)
    elif opt.kind is _Kind.LIST:
        ok = isinstance(value, tuple) and all(isinstance(v, str) for v in value)
    else:
        ok = isinstance(value, Mapping) and all(
            isinstance(k, str) and isinstance(v, str) for k, v in value.items()
        )
    if not ok:
        raise ConfigError(
            f"{opt.display} must be a {opt.kind.value}, not {value!r}", flag=opt.display
        )


# -- value conversion ---------------------------------------------------------------


def parse_tags(items: Iterable[str], *, where: str = "--tag") -> dict[str, str]:
    """``key=value`` strings as Dkron's ``UnmarshalTags`` reads them (first ``=`` splits)."""
    tags: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"{where}: invalid tag: '{item}'", flag="--tag")
        tags[key] = value
    return tags


def _csv_split(text: str) -> list[str]:
    """pflag's StringSlice splitting: comma-separated, with CSV quoting."""
    if not text:
        return []
    fields = next(csv.reader([text], skipinitialspace=True), [])
    return [v.strip() for v in fields if v.strip()]


def _parse_bool(text: str, where: str, flag: str) -> bool:
    if text in _GO_TRUE:
        return True
    if text in _GO_FALSE:
        return False
    raise ConfigError(f"{where}: invalid boolean {text!r} (use true or false)", flag=flag)


def _parse_int(text: str, where: str, flag: str) -> int:
    if not _DECIMAL.match(text.strip()):
        raise ConfigError(f"{where}: invalid integer {text!r}", flag=flag)
    return int(text)


def _parse_duration(text: str, where: str, flag: str) -> float:
    try:
        return parse_go_duration(text.strip()) / 1e9
    except ValueError as exc:
        raise ConfigError(f"{where}: {exc}", flag=flag) from None


def _from_string(opt: _Option, raw: str, where: str) -> object:
    flag = opt.display
    if opt.kind is _Kind.BOOL:
        return _parse_bool(raw.strip(), where, flag)
    if opt.kind is _Kind.INT:
        return _parse_int(raw, where, flag)
    if opt.kind is _Kind.DURATION:
        return _parse_duration(raw, where, flag)
    if opt.kind is _Kind.LIST:
        return tuple(_csv_split(raw))
    if opt.kind is _Kind.TAGS:
        return parse_tags(_csv_split(raw), where=where)
    return raw


def _scalar_str(value: object) -> str | None:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str | int | float):
        return str(value)
    if value is None:
        return ""
    return None


def _from_file(opt: _Option, value: object, where: str) -> object:
    """A file value, decoded weakly as viper does (``"3"`` for an int is fine)."""
    flag = opt.display

    def wrong(expected: str) -> ConfigError:
        return ConfigError(f"{where}: expected {expected}, got {value!r}", flag=flag)

    if opt.kind is _Kind.BOOL:
        if isinstance(value, bool):
            return value
        if isinstance(value, int) and value in (0, 1):
            return bool(value)
        if isinstance(value, str):
            return _parse_bool(value, where, flag)
        raise wrong("a boolean")
    if opt.kind is _Kind.INT:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, str) and _DECIMAL.match(value.strip()):
            return int(value)
        raise wrong("an integer")
    if opt.kind is _Kind.DURATION:
        if isinstance(value, str):
            return _parse_duration(value, where, flag)
        raise wrong("a duration string such as '30s'")
    if opt.kind is _Kind.STR:
        text = _scalar_str(value)
        if text is None:
            raise wrong("a string")
        return text
    if opt.kind is _Kind.LIST:
        if isinstance(value, str):
            return (value,)
        if isinstance(value, list):
            items = [_scalar_str(v) for v in value]
            if all(isinstance(v, str) for v in items):
                return tuple(v for v in items if v is not None)
        raise wrong("a list of strings")
    maps: list[object] = value if isinstance(value, list) else [value]
    tags: dict[str, str] = {}
    for m in maps:
        if not isinstance(m, dict):
            raise wrong("a map of tags (or a list of maps)")
        for k, v in m.items():
            text = _scalar_str(v)
            if not isinstance(k, str) or not k or text is None:
                raise ConfigError(
                    f"{where}: invalid tag {k!r}: {v!r} (tags are key: value strings)", flag=flag
                )
            tags[k] = text
    return tags


# -- sources ------------------------------------------------------------------------


class _YamlLoader(yaml.SafeLoader):
    """YAML 1.2 booleans, as Go's yaml.v3 reads them: ``on``/``yes`` stay strings."""


_YamlLoader.yaml_implicit_resolvers = {
    first: [(tag, rx) for tag, rx in resolvers if tag != "tag:yaml.org,2002:bool"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_YamlLoader.add_implicit_resolver(
    "tag:yaml.org,2002:bool",
    re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"),
    list("tTfF"),
)


class _Parser(argparse.ArgumentParser):
    """Raises instead of exiting, so callers choose how to report a bad flag."""

    def error(self, message: str) -> NoReturn:
        raise ConfigError(message)


def build_agent_parser(prog: str = "dkron agent") -> argparse.ArgumentParser:
    """The ``dkron agent`` flags; every default is ``SUPPRESS`` so presence is visible."""
    parser = _Parser(
        prog=prog,
        description="Start a dkron agent (a server with --server).",
        allow_abbrev=False,
        argument_default=argparse.SUPPRESS,
        epilog="Every flag can also be set in the config file (same key) or as "
        "DKRON_<FLAG> in the environment; precedence: flags > environment > "
        "config file > defaults.  Booleans take --flag or --flag=false.",
    )
    parser.add_argument("--config", metavar="FILE", help="config file (default: dkron.yml)")
    defaults = AgentConfig(node_name="<hostname>")
    for opt in _OPTIONS:
        if not opt.flag:
            continue
        default = getattr(defaults, opt.attr)
        if opt.kind is _Kind.DURATION:
            default = _format_duration(default)
        hint = f"{opt.help} (default: {default!r})" if default not in ("", (), {}) else opt.help
        if opt.kind is _Kind.BOOL:
            parser.add_argument(f"--{opt.key}", nargs="?", const="true", metavar="BOOL", help=hint)
        elif opt.kind is _Kind.TAGS:
            parser.add_argument("--tag", action="append", dest="tags", metavar="K=V", help=hint)
        elif opt.kind is _Kind.LIST:
            parser.add_argument(f"--{opt.key}", action="append", metavar="VALUE", help=hint)
        else:
            metavar = {"int": "INT", "duration": "DURATION"}.get(opt.kind.value, "STRING")
            parser.add_argument(f"--{opt.key}", metavar=metavar, help=hint)
    parser.add_argument("--webhook-url", metavar="URL", help="deprecated and ignored")
    return parser


def _format_duration(seconds: float) -> str:
    if seconds % 3600 == 0:
        return f"{int(seconds // 3600)}h"
    if seconds % 60 == 0:
        return f"{int(seconds // 60)}m"
    return f"{seconds:g}s"


def _from_flags(ns: argparse.Namespace) -> dict[str, object]:
    values: dict[str, object] = {}
    for opt in _OPTIONS:
        if not opt.flag or not hasattr(ns, opt.attr):
            continue
        raw = getattr(ns, opt.attr)
        where = "--tag" if opt.kind is _Kind.TAGS else opt.display
        if opt.kind is _Kind.LIST:
            values[opt.attr] = tuple(v for r in raw for v in _csv_split(r))
        elif opt.kind is _Kind.TAGS:
            values[opt.attr] = parse_tags([v for r in raw for v in _csv_split(r)], where=where)
        else:
            values[opt.attr] = _from_string(opt, raw, where)
    return values


def _from_env(env: Mapping[str, str], warnings: list[str]) -> dict[str, object]:
    values: dict[str, object] = {}
    for name, raw in env.items():
        if not name.startswith(ENV_PREFIX):
            continue
        if name == _TAGS_ENV:
            values[_TAGS.attr] = parse_tags(_csv_split(raw), where=f"{name} (--tag)")
            continue
        opt = _BY_ENV.get(name)
        if opt is None:
            if name != ENV_PREFIX + "WEBHOOK_URL":
                warnings.append(f"unknown environment variable {name} ignored")
            continue
        values[opt.attr] = _from_string(opt, raw, f"{name} ({opt.display})")
    return values


def default_search_paths(env: Mapping[str, str], cwd: Path) -> list[Path]:
    """``/etc/dkron``, ``$HOME/.dkron``, ``./config``: where ``dkron.<ext>`` is looked for."""
    paths = [Path("/etc/dkron")]
    home = env.get("HOME")
    if home:
        paths.append(Path(home) / ".dkron")
    paths.append(cwd / "config")
    return paths


def _find_config(paths: Iterable[Path]) -> Path | None:
    for directory in paths:
        for ext in CONFIG_EXTENSIONS:
            candidate = directory / f"dkron.{ext}"
            if candidate.is_file():
                return candidate
    return None


def _read_file(path: Path) -> dict[str, object]:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"config file {path} is not UTF-8 text") from None
    suffix = path.suffix.lower()
    data: object
    try:
        if suffix == ".json":
            data = json.loads(text)
        elif suffix == ".toml":
            data = tomllib.loads(text)
        else:
            data = yaml.load(text, Loader=_YamlLoader)  # a SafeLoader subclass
    except (yaml.YAMLError, json.JSONDecodeError, tomllib.TOMLDecodeError) as exc:
        detail = " ".join(str(exc).split())
        raise ConfigError(f"config file {path} is not valid: {detail}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a map of keys, not {type(data).__name__}")
    return {str(k): v for k, v in data.items()}


def _from_file_data(
    data: Mapping[str, object], path: Path, warnings: list[str]
) -> dict[str, object]:
    values: dict[str, object] = {}
    for raw_key, value in data.items():
        key = raw_key.lower()  # viper keys are case-insensitive
        opt = _BY_KEY.get(key)
        if key in _DEPRECATED:
            warnings.append(f"{path}: {_DEPRECATED[key]}")
            continue
        if opt is None:
            near = difflib.get_close_matches(key.replace("_", "-"), [*_BY_KEY, "tags"], n=1)
            hint = f" (did you mean {near[0]!r}?)" if near else ""
            warnings.append(f"{path}: unknown key {raw_key!r} ignored{hint}")
            continue
        values[opt.attr] = _from_file(opt, value, f"config file {path}, key {raw_key!r}")
    return values


def load_config(
    argv: Sequence[str],
    env: Mapping[str, str],
    *,
    cwd: str | os.PathLike[str],
    search_paths: Sequence[str | os.PathLike[str]] | None = None,
) -> AgentConfig:
    """The agent configuration from ``dkron agent`` arguments, environment and file.

    ``argv`` excludes the command name.  ``--help`` raises ``SystemExit(0)``
    after printing; everything else that is wrong raises :class:`ConfigError`.
    ``search_paths`` replaces the default directories searched for
    ``dkron.<ext>`` when no ``--config`` is given.
    """
    base = Path(cwd)
    warnings: list[str] = []
    ns = build_agent_parser().parse_args(list(argv))
    if getattr(ns, "webhook_url", None) is not None:
        warnings.append(_DEPRECATED["webhook-url"])
    if ENV_PREFIX + "WEBHOOK_URL" in env:
        warnings.append(_DEPRECATED["webhook-url"])
    path: Path | None
    if getattr(ns, "config", None):
        path = base / Path(os.path.expanduser(ns.config))
        if not path.is_file():
            raise ConfigError(f"--config: no such file: {path}", flag="--config")
    else:
        dirs = (
            default_search_paths(env, base)
            if search_paths is None
            else [base / Path(p) for p in search_paths]
        )
        path = _find_config(dirs)
    merged: dict[str, object] = {}
    if path is not None:
        merged.update(_from_file_data(_read_file(path), path, warnings))
    merged.update(_from_env(env, warnings))
    merged.update(_from_flags(ns))
    level = merged.get("log_level")
    if isinstance(level, str) and level.lower() not in LOG_LEVELS:
        warnings.append(f"--log-level {level!r} is not a log level; using info")
        merged["log_level"] = "info"
    elif isinstance(level, str):
        merged["log_level"] = level.lower()
    tags = merged.get("tags")
    if isinstance(tags, Mapping):
        for reserved in sorted(_RESERVED_TAGS & set(tags)):
            warnings.append(f"tag {reserved!r} is reserved and will be overwritten")
    expect = merged.get("bootstrap_expect")
    if isinstance(expect, int) and expect > 0 and not merged.get("server", False):
        warnings.append("--bootstrap-expect has no effect without --server")
    return AgentConfig(
        **merged,  # type: ignore[arg-type]
        config_file=str(path) if path is not None else None,
        warnings=tuple(warnings),
        argv=tuple(argv),
        cwd=str(base),
    )


def to_argv(config: AgentConfig) -> list[str]:
    """Flags that reproduce ``config`` (for starting agent processes).

    Config-file-only keys (``bootstrap``, ``devmode``, ``reconcileinterval``)
    have no flag and are left out.
    """
    defaults = {f.name: f.default for f in dataclasses.fields(AgentConfig)}
    argv: list[str] = []
    for opt in _OPTIONS:
        if not opt.flag:
            continue
        value = getattr(config, opt.attr)
        if opt.attr != "node_name" and value == defaults[opt.attr]:
            continue
        if opt.kind is _Kind.BOOL:
            argv.append(f"--{opt.key}={'true' if value else 'false'}")
        elif opt.kind is _Kind.LIST:
            argv.extend(f"--{opt.key}={_csv_quote(v)}" for v in value)
        elif opt.kind is _Kind.TAGS:
            argv.extend(f"--tag={_csv_quote(f'{k}={v}')}" for k, v in value.items())
        elif opt.kind is _Kind.DURATION:
            argv.append(f"--{opt.key}={_go_duration(value)}")
        else:
            argv.append(f"--{opt.key}={value}")
    return argv


def _csv_quote(value: str) -> str:
    if any(c in value for c in ',"\n\r'):
        return '"' + value.replace('"', '""') + '"'
    return value


def _go_duration(seconds: float) -> str:
    return f"{round(seconds * 1e9)}ns"
