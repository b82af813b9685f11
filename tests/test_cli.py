"""``dkron.cli``: commands, exit statuses and the HTTP clients of leave/raft."""

from __future__ import annotations

import base64
import io
import json
import re
import sys
import threading
from collections.abc import Iterator, Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from dkron import __version__, config
from dkron.cli import main
from dkron.config import AgentConfig


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No DKRON_* variable, HOME or config directory of the host reaches the agent."""
    import os

    for name in list(os.environ):
        if name.startswith("DKRON_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)
    real = config.default_search_paths

    def without_etc(env: Mapping[str, str], cwd: Path) -> list[Path]:
        return [p for p in real(env, cwd) if p != Path("/etc/dkron")]

    monkeypatch.setattr(config, "default_search_paths", without_etc)


def run(argv: list[str], **kwargs: object) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = main(argv, stdout=out, stderr=err, **kwargs)  # type: ignore[arg-type]
    return code, out.getvalue(), err.getvalue()


# -- keygen and version -------------------------------------------------------------


def test_keygen_prints_16_random_bytes_in_base64() -> None:
    code, out, _ = run(["keygen"])
    assert code == 0
    key = base64.b64decode(out.strip(), validate=True)
    assert len(key) == 16
    assert run(["keygen"])[1] != out


def test_keygen_output_is_accepted_by_agent() -> None:
    key = run(["keygen"])[1].strip()
    seen: list[AgentConfig] = []
    code, _, err = run(["agent", "--encrypt", key], runner=seen.append)
    assert code == 0, err
    assert seen[0].encrypt_key is not None and len(seen[0].encrypt_key) == 16


def test_version_has_dkrons_shape() -> None:
    code, out, _ = run(["version"])
    assert code == 0
    lines = out.splitlines()
    assert lines[0] == "Name: Dkron"
    assert lines[1] == f"Version: {__version__}"
    assert re.fullmatch(r"Codename: \S+", lines[2])
    assert re.fullmatch(r"Agent Protocol: \d+ \(Understands back to: \d+\)", lines[3])
    assert len(lines) == 4


# -- agent --------------------------------------------------------------------------


def test_agent_passes_the_config_to_the_runner() -> None:
    seen: list[AgentConfig] = []

    def runner(config: AgentConfig) -> int:
        seen.append(config)
        return 7

    code, _, err = run(["agent", "--server", "--bootstrap-expect", "1"], runner=runner)
    assert code == 7, err
    assert seen[0].server and seen[0].bootstrap_expect == 1 and seen[0].self_bootstrap
    assert seen[0].data_dir == "dkron.data"


def test_agent_runs_an_async_runner_under_trio() -> None:
    import trio.lowlevel

    async def runner(config: AgentConfig) -> int:
        await trio.lowlevel.checkpoint()
        return 3 if config.server else 4

    assert run(["agent", "--server"], runner=runner)[0] == 3


def test_agent_reads_env_and_config_dir(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    (tmp_path / "config").mkdir()
    (tmp_path / "config" / "dkron.yml").write_text("region: r1\nfoo: 1\n")
    monkeypatch.setenv("DKRON_DATACENTER", "dc9")
    seen: list[AgentConfig] = []
    code, _, err = run(["agent"], runner=seen.append)
    assert code == 0
    assert seen[0].region == "r1" and seen[0].datacenter == "dc9"
    assert "dkron agent: warning:" in err and "unknown key 'foo'" in err


@pytest.mark.parametrize(
    ("argv", "flag"),
    [
        (["agent", "--raft-multiplier", "20"], "--raft-multiplier"),
        (["agent", "--tag", "novalue"], "--tag"),
        (["agent", "--profile", "x"], "--profile"),
        (["agent", "--retry-interval", "soon"], "--retry-interval"),
        (["agent", "--rpc-port", "99999"], "--rpc-port"),
        (["agent", "--encrypt", "AAAA"], "--encrypt"),
        (["agent", "--bootstrap-expect=-3"], "--bootstrap-expect"),
        (["agent", "--no-such-flag"], "--no-such-flag"),
        (["agent", "--config", "missing.yml"], "--config"),
        (["raft", "remove-peer"], "--peer-id"),
        (["leave", "--address", "ftp://x"], "--address"),
        (["leave", "--rpc-addr", "{{ GetPrivateIP }}:6868"], "--rpc-addr"),
        (["leave", "--bogus"], "--bogus"),
        (["nosuchcommand"], "nosuchcommand"),
        ([], "COMMAND"),
    ],
)
def test_bad_flags_exit_2_naming_the_flag(argv: list[str], flag: str) -> None:
    called: list[AgentConfig] = []
    code, out, err = run(argv, runner=called.append)
    assert code == 2
    assert flag in err
    assert out == "" and called == []


def test_agent_without_runtime_exits_1(monkeypatch: pytest.MonkeyPatch) -> None:
    import dkron.io_trio

    monkeypatch.setitem(sys.modules, "dkron.io_trio.agent", None)
    # An earlier test may have imported it: the package attribute must go too.
    monkeypatch.delattr(dkron.io_trio, "agent", raising=False)
    code, _, err = run(["agent"])
    assert code == 1
    assert "the agent runtime cannot be loaded" in err


@pytest.fixture
def _collector() -> Iterator[None]:
    """The test may set the process's collector; it is restored afterwards."""
    import gc

    saved = gc.get_threshold()
    try:
        yield
    finally:
        gc.set_threshold(*saved)


@pytest.mark.usefixtures("_collector")
def test_agent_process_sets_its_collector(monkeypatch: pytest.MonkeyPatch) -> None:
    import gc

    from dkron import cli

    gc.set_threshold(700, 10, 10)
    embedded: list[AgentConfig] = []
    assert run(["agent"], runner=embedded.append)[0] == 0
    assert gc.get_threshold() == (700, 10, 10)  # an embedder's process is left alone

    # The real runtime, as `python -m dkron agent` loads it (logging set up too).
    started: list[tuple[int, int, int]] = []
    monkeypatch.setattr(cli, "_load_runner", lambda: lambda _c: started.append(gc.get_threshold()))
    monkeypatch.setattr(cli, "_configure_logging", lambda _c, _e: None)
    assert run(["agent"])[0] == 0
    assert started == [cli.GC_THRESHOLDS]


@pytest.mark.parametrize(
    "argv",
    [
        ["--help"],
        ["agent", "--help"],
        ["agent", "-h"],
        ["keygen", "--help"],
        ["version", "--help"],
        ["leave", "--help"],
        ["raft", "--help"],
        ["raft", "list-peers", "--help"],
        ["raft", "remove-peer", "--help"],
    ],
)
def test_help_for_every_command(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(argv)
    assert code == 0
    text = out + capsys.readouterr().out
    assert "usage:" in text


def test_agent_help_lists_flags_and_defaults() -> None:
    _, out, _ = run(["agent", "--help"])
    assert "--bootstrap-expect" in out and "'dkron.data'" in out and "'24h'" in out


# -- leave and raft against a real HTTP server --------------------------------------


class _Api:
    def __init__(self) -> None:
        self.requests: list[tuple[str, str]] = []
        self.responses: dict[tuple[str, str], tuple[int, bytes]] = {}


@pytest.fixture
def api() -> Iterator[tuple[_Api, str]]:
    state = _Api()

    class Handler(BaseHTTPRequestHandler):
        def _answer(self) -> None:
            state.requests.append((self.command, self.path))
            status, body = state.responses.get((self.command, self.path), (404, b""))
            self.send_response(status)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        do_GET = do_POST = do_DELETE = _answer

        def log_message(self, format: str, *args: object) -> None:
            return

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield state, f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def test_leave_posts_to_v1_leave(api: tuple[_Api, str]) -> None:
    state, url = api
    state.responses[("POST", "/v1/leave")] = (200, b'{"n1": "leaving"}')
    code, out, err = run(["leave", "--address", url])
    assert (code, err) == (0, "")
    assert out == "Left the cluster successfully\n"
    assert state.requests == [("POST", "/v1/leave")]


def test_leave_reports_the_servers_error(api: tuple[_Api, str]) -> None:
    state, url = api
    state.responses[("POST", "/v1/leave")] = (503, b'{"error": "no leader"}')
    code, _, err = run(["leave", "--address", url + "/"])
    assert code == 1
    assert err == "dkron leave: error: HTTP 503: no leader\n"


def test_leave_unreachable_server_exits_1() -> None:
    import socket

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    code, _, err = run(["leave", "--address", f"http://127.0.0.1:{port}"])
    assert code == 1
    assert "cannot reach" in err


def test_rpc_addr_host_is_used_with_http_port() -> None:
    from dkron import cli

    calls: list[tuple[str, str]] = []

    def fake(method: str, url: str) -> tuple[int, bytes]:
        calls.append((method, url))
        return 200, b"{}"

    mp = pytest.MonkeyPatch()
    mp.setattr(cli, "_request", fake)
    try:
        assert run(["leave", "--rpc-addr", "10.1.2.3:6868"])[0] == 0
        assert run(["leave", "--rpc-addr", "[fd00::1]:6868"])[0] == 0
        assert run(["leave"])[0] == 0
    finally:
        mp.undo()
    assert [u for _, u in calls] == [
        "http://10.1.2.3:8080/v1/leave",
        "http://[fd00::1]:8080/v1/leave",
        "http://127.0.0.1:8080/v1/leave",
    ]


def test_list_peers_prints_dkrons_table(api: tuple[_Api, str]) -> None:
    state, url = api
    peers = [
        {"node": "n1", "id": "n1", "address": "10.0.0.1:6868", "leader": True, "voter": True},
        {"id": "n2", "address": "10.0.0.2:6868", "state": "follower", "voter": False},
    ]
    state.responses[("GET", "/v1/raft/peers")] = (200, json.dumps(peers).encode())
    code, out, _ = run(["raft", "list-peers", "--address", url])
    assert code == 0
    lines = out.splitlines()
    assert re.split(r"\s{2,}", lines[0]) == ["Node", "ID", "Address", "State", "Voter"]
    assert re.split(r"\s{2,}", lines[1]) == ["n1", "n1", "10.0.0.1:6868", "leader", "true"]
    assert re.split(r"\s{2,}", lines[2]) == [
        "(unknown)", "n2", "10.0.0.2:6868", "follower", "false"
    ]  # fmt: skip


@pytest.mark.parametrize("body", [b"not json", b'{"a": 1}', b"[1, 2]"])
def test_list_peers_rejects_bad_answers(api: tuple[_Api, str], body: bytes) -> None:
    state, url = api
    state.responses[("GET", "/v1/raft/peers")] = (200, body)
    code, _, err = run(["raft", "list-peers", "--address", url])
    assert code == 1 and "dkron raft list-peers: error:" in err


def test_remove_peer(api: tuple[_Api, str]) -> None:
    state, url = api
    state.responses[("DELETE", "/v1/raft/peers/n%2F2")] = (200, b"{}")
    code, out, _ = run(["raft", "remove-peer", "--address", url, "--peer-id", "n/2"])
    assert code == 0 and out == "Peer removed\n"
    code, _, err = run(["raft", "remove-peer", "--address", url, "--peer-id", "ghost"])
    assert code == 1
    assert 'id "ghost" was not found in the Raft configuration' in err
    state.responses[("DELETE", "/v1/raft/peers/me")] = (400, b"cannot remove the leader")
    code, _, err = run(["raft", "remove-peer", "--address", url, "--peer-id", "me"])
    assert code == 1 and "HTTP 400: cannot remove the leader" in err


def test_json_log_lines_name_the_node() -> None:
    import json
    import logging

    from dkron.cli import JsonFormatter

    record = logging.LogRecord(
        "dkron.agent", logging.WARNING, __file__, 1, "lost %s", ("w1",), None
    )
    line = json.loads(JsonFormatter("n1").format(record))
    assert line["node"] == "n1" and line["level"] == "warning"
    assert line["logger"] == "dkron.agent" and line["msg"] == "lost w1"
    assert line["time"][:2] == "20" and "T" in line["time"]
