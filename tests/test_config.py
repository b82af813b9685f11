"""``dkron.config``: Dkron's flags, defaults, sources, precedence and validation."""

from __future__ import annotations

import base64
import dataclasses
import json
import re
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dkron.config import (
    AgentConfig,
    ConfigError,
    build_agent_parser,
    load_config,
    option_names,
    parse_tags,
    read_token_file,
    to_argv,
)

KEY16 = base64.b64encode(bytes(range(16))).decode()


def load(
    argv: list[str] | None = None,
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
    files: dict[str, str] | None = None,
    search: list[str] | None = None,
) -> AgentConfig:
    """Load with no default search paths unless given, so the host's files never leak in."""
    base = cwd or Path("/nonexistent-dkron-test-dir")
    for name, text in (files or {}).items():
        path = base / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return load_config(argv or [], env or {}, cwd=base, search_paths=search or [])


# -- defaults -----------------------------------------------------------------------


def test_defaults_are_dkrons() -> None:
    c = load(["--node-name", "n1"])
    assert c.server is False
    assert c.node_name == "n1"
    assert c.bind_addr == "{{ GetPrivateIP }}:8946"
    assert c.advertise_addr == ""
    assert c.http_addr == ":8080"
    assert c.profile == "lan"
    assert c.join == () and c.retry_join == ()
    assert c.retry_max == 0
    assert c.retry_interval == 30.0
    assert c.raft_multiplier == 1
    assert dict(c.tags) == {}
    assert c.encrypt == "" and c.encrypt_key is None
    assert c.log_level == "info"
    assert c.rpc_port == 6868
    assert c.advertise_rpc_port == 0 and c.rpc_advertise_port == 6868
    assert c.bootstrap_expect == 0
    assert c.data_dir == "dkron.data"
    assert c.datacenter == "dc1"
    assert c.region == "global"
    assert c.serf_reconnect_timeout == 24 * 3600.0
    assert c.ui is True
    assert c.mail_port == 0 and c.mail_host == ""
    assert c.mail_subject_prefix == "[Dkron]"
    assert c.webhook_headers == () and c.pre_webhook_headers == ()
    assert c.enable_prometheus is False
    assert c.disable_usage_stats is False
    assert c.bootstrap is False and c.devmode is False
    assert c.reconcile_interval == 60.0
    assert c.config_file is None
    assert c.warnings == ()


def test_node_name_defaults_to_hostname() -> None:
    import socket

    assert load().node_name == socket.gethostname()


def test_every_dkron_flag_exists() -> None:
    flags = [
        "server", "node-name", "bind-addr", "advertise-addr", "http-addr", "profile", "join",
        "retry-join", "retry-max", "retry-interval", "raft-multiplier", "encrypt",
        "log-level", "rpc-port", "advertise-rpc-port", "bootstrap-expect", "data-dir",
        "datacenter", "region", "serf-reconnect-timeout", "ui", "mail-host", "mail-port",
        "mail-username", "mail-password", "mail-from", "mail-payload", "mail-subject-prefix",
        "pre-webhook-endpoint", "pre-webhook-payload", "pre-webhook-headers",
        "webhook-endpoint", "webhook-url", "webhook-payload", "webhook-headers",
        "cronitor-endpoint", "dog-statsd-addr", "dog-statsd-tags", "statsd-addr",
        "enable-prometheus", "otel-endpoint", "disable-usage-stats", "tag", "config",
    ]  # fmt: skip
    help_text = build_agent_parser().format_help()
    for flag in flags:
        assert re.search(rf"--{flag}\b", help_text), flag
    assert {"bootstrap", "devmode", "reconcileinterval", "tags"} <= set(option_names())


# -- each source --------------------------------------------------------------------


def test_flags() -> None:
    c = load(
        [
            "--server",
            "--node-name=a",
            "--bootstrap-expect",
            "3",
            "--join",
            "10.0.0.1",
            "--join=10.0.0.2,10.0.0.3",
            "--retry-join",
            "provider=aws tag_key=dkron tag_value=server",
            "--retry-interval",
            "1m30s",
            "--serf-reconnect-timeout=5s",
            "--tag",
            "role=web",
            "--tag=dc=east,zone=a=b",
            "--ui=false",
            "--enable-prometheus",
            "--webhook-headers",
            '"Accept: a, b",Content-Type: application/json',
            "--encrypt",
            KEY16,
            "--http-addr",
            "127.0.0.1:0",
        ]
    )
    assert c.server and c.node_name == "a" and c.bootstrap_expect == 3
    assert c.join == ("10.0.0.1", "10.0.0.2", "10.0.0.3")
    assert c.retry_join == ("provider=aws tag_key=dkron tag_value=server",)
    assert c.retry_interval == 90.0 and c.serf_reconnect_timeout == 5.0
    assert dict(c.tags) == {"role": "web", "dc": "east", "zone": "a=b"}
    assert c.ui is False and c.enable_prometheus is True
    assert c.webhook_headers == ("Accept: a, b", "Content-Type: application/json")
    assert c.webhook_header_pairs == (("Accept", "a, b"), ("Content-Type", "application/json"))
    assert c.encrypt_key == bytes(range(16))
    assert c.self_bootstrap is False


@pytest.mark.parametrize(
    ("text", "expected"),
    [("true", True), ("1", True), ("T", True), ("False", False), ("0", False), ("f", False)],
)
def test_bool_flag_values_as_go(text: str, expected: bool) -> None:
    assert load([f"--server={text}"]).server is expected


def test_environment() -> None:
    env = {
        "DKRON_SERVER": "true",
        "DKRON_BOOTSTRAP_EXPECT": "3",
        "DKRON_NODE_NAME": "envnode",
        "DKRON_RETRY_JOIN": "10.0.0.1,10.0.0.2",
        "DKRON_TAG": "kind=web,zone=east",
        "DKRON_RETRY_INTERVAL": "10s",
        "DKRON_UI": "false",
        "DKRON_RECONCILEINTERVAL": "5s",
        "DKRON_DEVMODE": "1",
        "PATH": "/usr/bin",
    }
    c = load(env=env)
    assert c.server and c.bootstrap_expect == 3 and c.node_name == "envnode"
    assert c.retry_join == ("10.0.0.1", "10.0.0.2")
    assert dict(c.tags) == {"kind": "web", "zone": "east"}
    assert c.retry_interval == 10.0 and c.ui is False
    assert c.reconcile_interval == 5.0 and c.devmode is True
    assert c.self_bootstrap is True
    assert c.warnings == ()


def test_unknown_environment_variable_is_a_warning() -> None:
    c = load(env={"DKRON_BOOTSTRAP_EXPEKT": "3"})
    assert c.bootstrap_expect == 0
    assert any("DKRON_BOOTSTRAP_EXPEKT" in w for w in c.warnings)


YAML = """\
server: true
bootstrap-expect: 3
data-dir: /var/lib/dkron
log-level: debug
node-name: filenode
tags: {kind: web, zone: east, n: 1, on: true}
encrypt: KEY16
retry-join: ["10.0.0.1", "provider=aws tag_key=dkron tag_value=server"]
raft-multiplier: 2
retry-interval: 15s
webhook-endpoint: https://hooks.example/x
webhook-payload: "{\\"text\\":\\"{{.JobName}} finished with status {{.Success}}\\"}"
webhook-headers: ["Content-Type: application/json"]
mail-host: smtp.example.com
mail-port: 25
bootstrap: false
devMode: true
reconcileinterval: 30s
""".replace("KEY16", KEY16)


def test_yaml_file(tmp_path: Path) -> None:
    c = load(["--config", "dkron.yml"], cwd=tmp_path, files={"dkron.yml": YAML})
    assert c.config_file == str(tmp_path / "dkron.yml")
    assert c.server and c.bootstrap_expect == 3 and c.data_dir == "/var/lib/dkron"
    assert c.log_level == "debug" and c.node_name == "filenode"
    assert dict(c.tags) == {"kind": "web", "zone": "east", "n": "1", "on": "true"}
    assert c.retry_join[1] == "provider=aws tag_key=dkron tag_value=server"
    assert c.raft_multiplier == 2 and c.retry_interval == 15.0
    assert c.webhook_payload == '{"text":"{{.JobName}} finished with status {{.Success}}"}'
    assert c.webhook_headers == ("Content-Type: application/json",)
    assert c.mail_host == "smtp.example.com" and c.mail_port == 25
    assert c.devmode is True and c.reconcile_interval == 30.0
    assert c.warnings == ()


def test_yaml_tags_as_list_of_maps(tmp_path: Path) -> None:
    text = "tags:\n  - foo: bar\n  - baz: qux\n"
    c = load(["--config", "c.yaml"], cwd=tmp_path, files={"c.yaml": text})
    assert dict(c.tags) == {"foo": "bar", "baz": "qux"}


def test_cli_tags_replace_file_tags(tmp_path: Path) -> None:
    files = {"c.yml": "tags: {role: web, dc: east}\n"}
    c = load(["--config", "c.yml", "--tag", "zone=a"], cwd=tmp_path, files=files)
    assert dict(c.tags) == {"zone": "a"}
    c = load(["--config", "c.yml"], env={"DKRON_TAG": "x=y"}, cwd=tmp_path, files=files)
    assert dict(c.tags) == {"x": "y"}


def test_json_and_toml_files(tmp_path: Path) -> None:
    files = {
        "a.json": json.dumps({"server": True, "rpc-port": 7000, "tags": {"a": "b"}}),
        "b.toml": 'server = true\nrpc-port = 7001\ndata-dir = "d"\n',
    }
    a = load(["--config", "a.json"], cwd=tmp_path, files=files)
    assert a.server and a.rpc_port == 7000 and dict(a.tags) == {"a": "b"}
    b = load(["--config", "b.toml"], cwd=tmp_path, files=files)
    assert b.server and b.rpc_port == 7001 and b.data_dir == "d"


def test_search_paths_in_viper_order(tmp_path: Path) -> None:
    home = tmp_path / "home"
    files = {
        "config/dkron.yml": "node-name: from-config-dir\n",
        "home/.dkron/dkron.yaml": "node-name: from-home\n",
    }
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    env = {"HOME": str(home)}
    search = ["etc", str(home / ".dkron"), "config"]
    c = load_config([], env, cwd=tmp_path, search_paths=search)
    assert c.node_name == "from-home"
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc" / "dkron.json").write_text('{"node-name": "from-etc"}')
    assert load_config([], env, cwd=tmp_path, search_paths=search).node_name == "from-etc"
    # json is looked for before yml in the same directory, as viper does
    (tmp_path / "config" / "dkron.json").write_text('{"node-name": "json"}')
    assert load_config([], {}, cwd=tmp_path, search_paths=["config"]).node_name == "json"


def test_default_search_paths_use_cwd_and_home(tmp_path: Path) -> None:
    (tmp_path / "config").mkdir()
    (tmp_path / "config" / "dkron.yml").write_text("node-name: found\n")
    c = load_config([], {"HOME": str(tmp_path / "nohome")}, cwd=tmp_path)
    assert c.node_name == "found"
    assert c.config_file == str(tmp_path / "config" / "dkron.yml")


def test_missing_default_file_is_fine_but_missing_explicit_file_is_an_error(
    tmp_path: Path,
) -> None:
    assert load(cwd=tmp_path, search=["config"]).config_file is None
    with pytest.raises(ConfigError, match="--config: no such file"):
        load(["--config", "nope.yml"], cwd=tmp_path)


# -- precedence ---------------------------------------------------------------------


def test_precedence_flags_over_env_over_file_over_defaults(tmp_path: Path) -> None:
    files = {"c.yml": "region: file\ndatacenter: file\nnode-name: file\n"}
    env = {"DKRON_DATACENTER": "env", "DKRON_NODE_NAME": "env"}
    c = load(["--config", "c.yml", "--node-name", "flag"], env=env, cwd=tmp_path, files=files)
    assert c.node_name == "flag"
    assert c.datacenter == "env"
    assert c.region == "file"
    assert c.data_dir == "dkron.data"


@given(
    sources=st.lists(st.sampled_from(["file", "env", "flag"]), unique=True),
    value=st.integers(min_value=1, max_value=10),
)
def test_precedence_property(sources: list[str], value: int) -> None:
    tmp = Path("/nonexistent-dkron-test-dir")
    argv: list[str] = []
    env: dict[str, str] = {}
    file_data: dict[str, object] = {}
    for i, source in enumerate(["file", "env", "flag"]):
        if source not in sources:
            continue
        v = (value + i) % 10 + 1
        if source == "file":
            file_data["raft-multiplier"] = v
        elif source == "env":
            env["DKRON_RAFT_MULTIPLIER"] = str(v)
        else:
            argv = ["--raft-multiplier", str(v)]
    expected = 1
    for i, source in enumerate(["file", "env", "flag"]):
        if source in sources:
            expected = (value + i) % 10 + 1
    if file_data:
        import tempfile

        with tempfile.TemporaryDirectory() as d:
            (Path(d) / "c.json").write_text(json.dumps(file_data))
            c = load_config([*argv, "--config", "c.json"], env, cwd=d, search_paths=[])
    else:
        c = load_config(argv, env, cwd=tmp, search_paths=[])
    assert c.raft_multiplier == expected


# -- validation ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("argv", "flag", "fragment"),
    [
        (["--raft-multiplier", "0"], "--raft-multiplier", "must be between 1 and 10"),
        (["--raft-multiplier", "11"], "--raft-multiplier", "must be between 1 and 10"),
        (["--raft-multiplier", "x"], "--raft-multiplier", "invalid integer"),
        (["--tag", "x"], "--tag", "invalid tag: 'x'"),
        (["--tag", "=v"], "--tag", "invalid tag: '=v'"),
        (["--profile", "metro"], "--profile", "must be lan, wan or local"),
        (["--encrypt", "not base64!"], "--encrypt", "not valid base64"),
        (["--encrypt", base64.b64encode(b"x" * 10).decode()], "--encrypt", "16, 24 or 32"),
        (["--retry-interval", "10"], "--retry-interval", "missing unit"),
        (["--retry-interval", "5d"], "--retry-interval", "unknown unit"),
        (["--retry-interval=-5s"], "--retry-interval", "positive"),
        (["--serf-reconnect-timeout", "0"], "--serf-reconnect-timeout", "positive"),
        (["--rpc-port", "0"], "--rpc-port", "between 1 and 65535"),
        (["--rpc-port", "70000"], "--rpc-port", "between 1 and 65535"),
        (["--advertise-rpc-port", "-1"], "--advertise-rpc-port", "between 0 and 65535"),
        (["--mail-port", "65536"], "--mail-port", "between 0 and 65535"),
        (["--bootstrap-expect", "-1"], "--bootstrap-expect", "must not be negative"),
        (["--retry-max", "-2"], "--retry-max", "must not be negative"),
        (["--server=maybe"], "--server", "invalid boolean"),
        (["--ui", "nope"], "--ui", "invalid boolean"),
        (["--node-name", " "], "--node-name", "must not be empty"),
        (["--data-dir", ""], "--data-dir", "must not be empty"),
        (["--bind-addr", "1.2.3.4:99999"], "--bind-addr", "not within"),
        (["--bind-addr", "not an ip"], "--bind-addr", "not an IP"),
        (["--advertise-addr", "::1"], "--advertise-addr", "IPv6"),
        (["--http-addr", "1.2.3.4:x"], "--http-addr", "port"),
        (["--webhook-headers", "no colon"], "--webhook-headers", "invalid header"),
        (["--pre-webhook-headers", ": v"], "--pre-webhook-headers", "invalid header"),
        (["--bogus"], "--bogus", "unrecognized arguments"),
        (["--rpc-port"], "--rpc-port", "expected one argument"),
    ],
)
def test_errors_name_the_flag(argv: list[str], flag: str, fragment: str) -> None:
    with pytest.raises(ConfigError) as info:
        load(argv)
    assert flag in str(info.value)
    assert fragment in str(info.value)


def test_env_errors_name_variable_and_flag() -> None:
    with pytest.raises(ConfigError) as info:
        load(env={"DKRON_RPC_PORT": "abc"})
    assert "DKRON_RPC_PORT" in str(info.value) and "--rpc-port" in str(info.value)
    with pytest.raises(ConfigError, match=r"DKRON_TAG \(--tag\): invalid tag: 'oops'"):
        load(env={"DKRON_TAG": "oops"})


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("server: [1]\n", "server"),
        ("rpc-port: 1.5\n", "rpc-port"),
        ("rpc-port: true\n", "rpc-port"),
        ("retry-interval: 30\n", "retry-interval"),
        ("join: {a: b}\n", "join"),
        ("node-name: [a]\n", "node-name"),
        ("tags: [a, b]\n", "tags"),
        ("tags: {a: [1]}\n", "tags"),
        ("tags: 3\n", "tags"),
    ],
)
def test_file_type_errors_name_the_key(tmp_path: Path, text: str, key: str) -> None:
    with pytest.raises(ConfigError) as info:
        load(["--config", "c.yml"], cwd=tmp_path, files={"c.yml": text})
    assert f"key {key!r}" in str(info.value)
    assert str(tmp_path / "c.yml") in str(info.value)


def test_file_values_decode_weakly_like_viper(tmp_path: Path) -> None:
    text = "server: 'true'\nrpc-port: '7000'\nui: 0\njoin: 10.0.0.1\n"
    c = load(["--config", "c.yml"], cwd=tmp_path, files={"c.yml": text})
    assert c.server is True and c.rpc_port == 7000 and c.ui is False
    assert c.join == ("10.0.0.1",)


def test_file_range_errors_name_the_flag(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="--raft-multiplier must be between 1 and 10"):
        load(["--config", "c.yml"], cwd=tmp_path, files={"c.yml": "raft-multiplier: 20\n"})


@pytest.mark.parametrize("text", ["a: [\n", "- just\n- a list\n", "{{bad"])
def test_unparseable_file_is_an_error(tmp_path: Path, text: str) -> None:
    with pytest.raises(ConfigError, match="config file"):
        load(["--config", "c.yml"], cwd=tmp_path, files={"c.yml": text})


def test_unknown_keys_are_warnings_with_a_suggestion(tmp_path: Path) -> None:
    text = "bootstrap_expect: 3\nfrobnicate: 1\nwebhook-url: http://x\nServer: true\n"
    c = load(["--config", "c.yml"], cwd=tmp_path, files={"c.yml": text})
    assert c.bootstrap_expect == 0 and c.server is True
    joined = "\n".join(c.warnings)
    assert "unknown key 'bootstrap_expect' ignored (did you mean 'bootstrap-expect'?)" in joined
    assert "unknown key 'frobnicate' ignored" in joined
    assert "--webhook-url is deprecated and ignored" in joined


def test_other_warnings() -> None:
    c = load(["--log-level", "verbose", "--tag", "role=x", "--bootstrap-expect", "3"])
    assert c.log_level == "info"
    joined = "\n".join(c.warnings)
    assert "'verbose' is not a log level; using info" in joined
    assert "tag 'role' is reserved" in joined
    assert "--bootstrap-expect has no effect without --server" in joined
    assert load(["--log-level", "WARN"]).log_level == "warn"
    assert load(["--webhook-url", "http://x"]).warnings == (
        "--webhook-url is deprecated and ignored; use --webhook-endpoint",
    )


@pytest.mark.parametrize("size", [16, 24, 32])
def test_encrypt_key_sizes(size: int) -> None:
    key = base64.b64encode(bytes(size)).decode()
    assert load(["--encrypt", key]).encrypt_key == bytes(size)


def test_construction_validates_types_and_ranges() -> None:
    with pytest.raises(ConfigError, match="--rpc-port must be a int"):
        AgentConfig(rpc_port="1")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="--ui must be a bool"):
        AgentConfig(ui=1)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="--log-level must be one of"):
        AgentConfig(log_level="loud")
    with pytest.raises(ConfigError, match="--tag has an empty key"):
        AgentConfig(tags={"": "x"})
    with pytest.raises(ConfigError, match="reconcileinterval must be a positive duration"):
        AgentConfig(reconcile_interval=0)


def test_addresses_accept_templates_and_port_only_forms() -> None:
    c = load(
        [
            "--bind-addr",
            '{{ GetInterfaceIP "eth0" }}',
            "--advertise-addr",
            "[::1]:9000",
            "--http-addr",
            "{{ GetPrivateIP }}:8081",
        ]
    )
    assert c.bind_addr == '{{ GetInterfaceIP "eth0" }}'
    assert load(["--bind-addr", ":7946"]).bind_addr == ":7946"


def test_parse_tags_splits_on_the_first_equals_sign() -> None:
    assert parse_tags(["a=b=c", "e="]) == {"a": "b=c", "e": ""}


def test_help_raises_system_exit_zero(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        load(["--help"])
    assert info.value.code == 0
    assert "--bootstrap-expect" in capsys.readouterr().out


# -- round trip ---------------------------------------------------------------------

_text = st.text(
    st.characters(codec="utf-8", exclude_categories=("Cs", "Cc", "Zs", "Zl", "Zp")),
    min_size=1,
    max_size=8,
)


@st.composite
def configs(draw: st.DrawFn) -> AgentConfig:
    return AgentConfig(
        server=draw(st.booleans()),
        node_name=draw(_text),
        bind_addr=draw(st.sampled_from(["0.0.0.0:8946", "127.0.0.1", ":7000"])),
        profile=draw(st.sampled_from(["lan", "wan", "local"])),
        join=tuple(draw(st.lists(_text, max_size=3))),
        retry_max=draw(st.integers(0, 100)),
        retry_interval=draw(st.integers(1, 10**6)) / 1000,
        raft_multiplier=draw(st.integers(1, 10)),
        tags=draw(st.dictionaries(_text.filter(lambda s: "=" not in s), _text, max_size=3)),
        rpc_port=draw(st.integers(1, 65535)),
        bootstrap_expect=draw(st.integers(0, 7)),
        ui=draw(st.booleans()),
        webhook_headers=tuple(f"X-{h}: {v}" for h, v in draw(st.lists(st.tuples(
            st.from_regex(r"[A-Za-z0-9-]{1,6}", fullmatch=True), _text), max_size=2))),
        mail_payload=draw(_text),
    )  # fmt: skip


@given(configs())
def test_to_argv_round_trips(config: AgentConfig) -> None:
    again = load(to_argv(config))
    assert again == config


@given(
    st.one_of(
        st.from_regex(r"\[?[0-9a-f:.]{0,12}\]?(:[0-9]{0,6})?", fullmatch=True),
        st.text(max_size=12),
    )
)
def test_address_syntax_agrees_with_the_transport(text: str) -> None:
    """The early check accepts exactly what the agent's address parser accepts."""
    from dkron.config import _addr_problem
    from dkron.io_trio.addr import AddressError, parse_addr

    try:
        parse_addr(text, default_port=8946)
        accepted = True
    except AddressError:
        accepted = False
    assert (_addr_problem(text) is None) == accepted


def test_every_option_is_documented() -> None:
    doc = (Path(__file__).parent.parent / "docs" / "configuration.md").read_text()
    for key in option_names():
        flag = "--tag" if key == "tags" else key
        assert f"`{flag}`" in doc or f"`--{flag}`" in doc, key
        env = "DKRON_TAG" if key == "tags" else "DKRON_" + key.upper().replace("-", "_")
        assert f"`{env}`" in doc, env


# -- security options ---------------------------------------------------------------


def test_security_options_are_off_by_default() -> None:
    c = AgentConfig(node_name="n")
    assert (c.https_cert, c.https_key, c.rpc_tls_ca, c.rpc_tls_cert, c.rpc_tls_key) == ("",) * 5
    assert (c.api_token, c.api_read_token, c.basic_auth) == ((), (), ())
    assert (c.api_token_file, c.api_read_token_file) == ("", "")


def test_security_flags_env_and_file(tmp_path: Path) -> None:
    pem = tmp_path / "x.pem"
    pem.write_text("pem")
    tokens = tmp_path / "tokens"
    tokens.write_text("# full access\n\n  tok-a  \ntok-b\n")
    c = load(
        [
            f"--https-cert={pem}",
            f"--https-key={pem}",
            "--api-token=t1",
            "--api-token=t2",
            f"--api-read-token-file={tokens}",
            "--basic-auth=ops:pw:with:colons",
        ],
        env={"DKRON_API_READ_TOKEN": "r1,r2", "DKRON_RPC_TLS_CA": str(pem)},
        cwd=tmp_path,
        files={"dkron.yml": f"rpc-tls-cert: {pem}\nrpc-tls-key: {pem}\n"},
        search=["."],
    )
    assert c.https_cert == c.https_key == str(pem)
    assert c.rpc_tls_ca == c.rpc_tls_cert == c.rpc_tls_key == str(pem)
    assert c.api_token == ("t1", "t2") and c.api_read_token == ("r1", "r2")
    assert c.basic_auth == ("ops:pw:with:colons",)
    assert read_token_file(str(tokens)) == ("tok-a", "tok-b")
    assert "t1" not in repr(c) and "pw:with" not in repr(c)
    assert load(to_argv(c), cwd=tmp_path) == dataclasses.replace(c, argv=None)


@pytest.mark.parametrize(
    ("argv", "flag", "fragment"),
    [
        (["--https-cert=PEM"], "--https-key", "go together"),
        (["--https-key=PEM"], "--https-cert", "go together"),
        (["--rpc-tls-ca=PEM", "--rpc-tls-cert=PEM"], "--rpc-tls-key", "go together"),
        (["--rpc-tls-key=PEM"], "--rpc-tls-ca", "go together"),
        (["--https-cert=/nope.pem", "--https-key=PEM"], "--https-cert", "not a readable file"),
        (["--api-token=has space"], "--api-token", "printable ASCII"),
        (["--api-read-token=caf\u00e9"], "--api-read-token", "printable ASCII"),
        (["--api-token-file=/nope"], "--api-token-file", "cannot read"),
        (["--api-read-token-file=BAD"], "--api-read-token-file", "line 2"),
        (["--basic-auth=nocolon"], "--basic-auth", "USER:PASSWORD"),
        (["--basic-auth=:pw"], "--basic-auth", "USER:PASSWORD"),
    ],
)
def test_security_errors_name_the_flag(
    tmp_path: Path, argv: list[str], flag: str, fragment: str
) -> None:
    pem = tmp_path / "x.pem"
    pem.write_text("pem")
    bad = tmp_path / "bad"
    bad.write_text("ok-token\nnot ok\n")
    args = [a.replace("PEM", str(pem)).replace("BAD", str(bad)) for a in argv]
    with pytest.raises(ConfigError) as info:
        load(args, cwd=tmp_path)
    assert info.value.flag == flag
    assert fragment in str(info.value)
    assert "not ok" not in str(info.value)  # a token file's content is never quoted
