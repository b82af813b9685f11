"""The HTTP and websocket-handshake fuzz harnesses, driven without atheris.

A smoke corpus of real requests (each with the statuses it must get, so the
harness is known to reach the handlers), then Hypothesis: random bytes,
mutations of the corpus, and requests built from the route table.  The
harnesses themselves assert the contract: nothing escapes, nothing hangs,
no server error.
"""

from __future__ import annotations

import importlib.util
import pathlib
import random
import sys
import urllib.parse
from types import ModuleType

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from dkron.io_trio.http_api import ROUTES, Route

_FUZZ = pathlib.Path(__file__).resolve().parents[2] / "fuzz"


def _load(name: str) -> ModuleType:
    cached = sys.modules.get(name)
    if cached is not None:
        return cached
    spec = importlib.util.spec_from_file_location(name, _FUZZ / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


HTTP = _load("fuzz_http_request")
WS = _load("fuzz_ws_handshake")
RUNNING = HTTP.RUNNING.id


def req(method: str, target: str, body: bytes = b"", headers: tuple[str, ...] = ()) -> bytes:
    head = f"{method} {target} HTTP/1.1\r\nHost: x\r\n" + "".join(f"{h}\r\n" for h in headers)
    if body or method in ("POST", "PUT", "PATCH"):
        head += f"Content-Length: {len(body)}\r\n"
    return head.encode() + b"\r\n" + body


_MULTIPART = (
    b'--XX\r\nContent-Disposition: form-data; name="file"; filename="b.json"\r\n\r\n'
    b'[{"name":"r1","schedule":"@every 1m"}]\r\n--XX--\r\n'
)

CORPUS: dict[str, tuple[bytes, list[int]]] = {
    "list": (
        req("GET", "/v1/jobs?_start=0&_end=5&_sort=next&_order=desc&metadata[a]=b&pretty"),
        [200],
    ),
    "create": (
        req("POST", "/v1/jobs?runoncreate", b'{"name":"j2","schedule":"@every 1m"}'),
        [201],
    ),
    "put": (req("PUT", "/v1/jobs/job1", b'{"name":"job1","schedule":"@daily"}'), [201]),
    "paused": (
        req("POST", "/v1/pause") + req("POST", "/v1/jobs", b'{"name":"j3","schedule":"@daily"}'),
        [200, 503],
    ),
    "restore": (
        req("POST", "/v1/restore", _MULTIPART, ("Content-Type: multipart/form-data; boundary=XX",)),
        [200],
    ),
    "chunked": (
        b"POST /v1/jobs HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
        b'5\r\n{"nam\r\n1d\r\ne":"c1","schedule":"@hourly"}\r\n0\r\n\r\n',
        [201],
    ),
    "expect": (
        req("POST", "/v1/jobs", b'{"name":"e1","schedule":"@daily"}', ("Expect: 100-continue",)),
        [201],
    ),
    "executions": (
        req("GET", "/v1/jobs/job1/executions?output_size_limit=3&_sort=finished_at")
        + req("GET", f"/v1/jobs/job1/executions/{RUNNING}"),
        [200, 200],
    ),
    "cancel": (
        req("POST", f"/v1/jobs/job1/executions/{RUNNING}/cancel") + req("GET", "/v1/busy"),
        [202, 200],
    ),
    "delete": (
        req("DELETE", "/v1/jobs/job1/executions") + req("DELETE", "/v1/jobs/job1"),
        [200, 200],
    ),
    "extras": (
        req("GET", "/v1/openapi.json?pretty")
        + req("GET", "/v1/schedule/preview?schedule=0+30+9+*+*+MON-FRI&timezone=Europe/Berlin")
        + req("GET", "/v1/stats")
        + req("GET", "/v1/jobs/job1/next?count=2")
        + req("POST", "/v1/jobs/job1/toggle")
        + req("POST", "/v1/jobs/job1/run"),
        [200] * 6,
    ),
    "cluster": (
        req("GET", "/v1/")
        + req("GET", "/v1/members")
        + req("GET", "/v1/leader")
        + req("GET", "/v1/isleader")
        + req("GET", "/v1/raft/peers")
        + req("DELETE", "/v1/raft/peers/nope")
        + req("POST", "/v1/leave")
        + req("GET", "/health"),
        [200, 200, 200, 200, 200, 404, 200, 200],
    ),
    "redirect_and_cors": (
        req("GET", "/v1/jobs/") + req("OPTIONS", "/v1/jobs", headers=("Origin: http://ui",)),
        [301, 204],
    ),
    "too_large": (b"POST /v1/jobs HTTP/1.1\r\nHost: x\r\nContent-Length: 999999\r\n\r\n", [413]),
    "cut_short": (b"GET /v1/jobs HTTP/1.1\r\nHost: x\r\n", [400]),
    "http10": (b"GET /v1/jobs HTTP/1.0\r\n\r\n", [200]),
    "absolute_form": (req("GET", "http://x/v1/jobs?q=j"), [200]),
    "bad_json": (req("POST", "/v1/jobs", b'{"name":'), [400]),
    "bad_query": (
        req("GET", "/v1/jobs?_start=-1") + req("GET", "/v1/jobs/job1/executions?_order=up"),
        [400, 400],
    ),
    "big_head": (b"GET / HTTP/1.1\r\nHost: x\r\nX: " + b"a" * 20000 + b"\r\n\r\n", [431]),
    "bad_coding": (
        b"POST /v1/jobs HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip\r\n\r\n",
        [501],
    ),
}


@pytest.mark.parametrize("name", sorted(CORPUS))
def test_http_corpus(name: str) -> None:
    data, statuses = CORPUS[name]
    _, answered = HTTP.run(data)
    assert answered == statuses


def _mutate(seed: bytes, rnd: random.Random, edits: int) -> bytes:
    data = bytearray(seed)
    for _ in range(edits):
        i = rnd.randrange(len(data) + 1)
        op = rnd.random()
        if op < 0.4 and data:
            data[min(i, len(data) - 1)] = rnd.randrange(256)
        elif op < 0.7:
            data[i:i] = bytes(rnd.randrange(256) for _ in range(rnd.randint(1, 4)))
        else:
            del data[i : i + rnd.randint(1, 8)]
    return bytes(data)


@given(st.binary(max_size=300))
@example(b"POST /v1/jobs HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunke\xdd\r\n\r\n")
def test_http_random_bytes(data: bytes) -> None:
    HTTP.TestOneInput(data)


@given(st.sampled_from(sorted(CORPUS)), st.randoms(use_true_random=False), st.integers(1, 8))
def test_http_mutated_corpus(name: str, rnd: random.Random, edits: int) -> None:
    HTTP.TestOneInput(_mutate(CORPUS[name][0], rnd, edits))


segments = st.text(
    st.characters(codec="utf-8", exclude_characters="/?# \r\n"), min_size=1, max_size=8
)
query = st.lists(
    st.tuples(
        st.sampled_from(
            [
                "_start",
                "_end",
                "_sort",
                "_order",
                "q",
                "status",
                "disabled",
                "metadata[a]",
                "output_size_limit",
                "count",
                "schedule",
                "timezone",
                "runoncreate",
                "pretty",
                "from_seq",
            ]
        ),
        st.text(max_size=6),
    ),
    max_size=4,
)
bodies = st.binary(max_size=80) | st.sampled_from(
    [b'{"name":"z","schedule":"@every 5s"}', b"[]", b"null", b'{"name":"job1","parent_job":"job1"}']
)


@given(st.sampled_from(ROUTES), st.data(), query, bodies)
def test_http_requests_built_from_the_route_table(
    route: Route, data: st.DataObject, params: list[tuple[str, str]], body: bytes
) -> None:
    parts: list[str] = []
    for seg in route.pattern.split("/")[1:]:
        if seg.startswith("{"):
            value = data.draw(st.sampled_from(["job1", RUNNING]) | segments)
            parts.append(urllib.parse.quote(value, safe=""))
        else:
            parts.append(seg)
    target = "/" + "/".join(parts)
    if params:
        target += "?" + urllib.parse.urlencode(params)
    HTTP.TestOneInput(req(route.method, target, body))


# -- websocket handshakes ----------------------------------------------------------------

WS_CORPUS: dict[str, tuple[bytes, list[int]]] = {
    "events_text_then_close": (
        b"\x01" + WS.masked_frame(1, b'{"a":1}') + WS.masked_frame(8, b"\x03\xe8"),
        [],
    ),
    "stream_ping_and_fragment": (
        b"\x02" + WS.masked_frame(9, b"ping") + WS.masked_frame(0, b"x", fin=False),
        [],
    ),
    "stream_big_message": (b"\x02" + WS.masked_frame(1, b"a" * 200), []),
    "fields_ok": (b"\x03/v1/events\nAAAAAAAAAAAAAAAAAAAAAA==\n13\nOrigin: x", []),
    "bad_from_seq": (b"\x03/v1/jobs/job1/executions/1-node1/stream?from_seq=x\n\n\n", [400]),
    "superscript_from_seq": (WS.handshake(WS.STREAM_PATH + "?from_seq=%C2%B2"), [400]),
    "unknown_execution": (b"\x03/v1/jobs/job1/executions/1-node1/stream\n\n\n", [404]),
    "no_key_no_version": (
        b"\x00GET /v1/events HTTP/1.1\r\nHost: x\r\nConnection: upgrade\r\n"
        b"Upgrade: websocket\r\n\r\n",
        [400],
    ),
    "old_version": (b"\x03/v1/events\nAAAAAAAAAAAAAAAAAAAAAA==\n12\n", [426]),
    "undecodable_host": (
        b"\x00GET /v1/events HTTP/1.1\r\nHost: \xff\xfe..a\r\nConnection: Upgrade\r\n"
        b"Upgrade: websocket\r\nSec-WebSocket-Key: AAAAAAAAAAAAAAAAAAAAAA==\r\n"
        b"Sec-WebSocket-Version: 13\r\n\r\n",
        [400],
    ),
    "http10_without_host": (
        b"\x00GET /v1/events HTTP/1.0\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"
        b"Sec-WebSocket-Key: AAAAAAAAAAAAAAAAAAAAAA==\r\nSec-WebSocket-Version: 13\r\n\r\n",
        [400],
    ),
    "connection_token_lookalike": (
        b"\x03/v1/events\nAAAAAAAAAAAAAAAAAAAAAA==\n13\nConnection: upgradex",
        [400],
    ),
    "head_over_the_library_limit": (
        WS.handshake("/v1/events", extra=b"X: " + b"a" * 16400),
        [431],
    ),
}


def _ws_input(data: bytes) -> bytes:
    # Handshakes built with WS.handshake are sent as they are (mode 0).
    return data if data[:1] in (b"\x00", b"\x01", b"\x02", b"\x03") else b"\x00" + data


@pytest.mark.parametrize("name", sorted(WS_CORPUS))
def test_ws_corpus(name: str) -> None:
    data, statuses = WS_CORPUS[name]
    received, answered = HTTP.run(WS.build(_ws_input(data)), events=True)
    assert answered == statuses
    if not statuses:
        assert received.startswith(b"HTTP/1.1 101 ")


@given(st.binary(max_size=200))
def test_ws_random_inputs(data: bytes) -> None:
    WS.TestOneInput(data)


@given(st.sampled_from(sorted(WS_CORPUS)), st.randoms(use_true_random=False), st.integers(1, 6))
def test_ws_mutated_corpus(name: str, rnd: random.Random, edits: int) -> None:
    data = _ws_input(WS_CORPUS[name][0])
    WS.TestOneInput(data[:1] + _mutate(data[1:], rnd, edits))
