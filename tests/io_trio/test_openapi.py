"""The OpenAPI document: valid, generated from the route table, and what the server serves."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import pathlib
import re
from types import ModuleType
from typing import Any

import pytest
import trio
from openapi_spec_validator import validate

from dkron.io_trio.http_api import ROUTES, UI_ROUTES, HttpApi, Route
from dkron.io_trio.http_server import Request, Response
from dkron.io_trio.openapi import (
    METRICS_ROUTE,
    OPERATIONS,
    WEBSOCKET_ROUTES,
    build_openapi,
    documented_names,
)

_PATH = pathlib.Path(__file__).resolve().parents[2] / "fuzz" / "fuzz_http_request.py"


def _load() -> ModuleType:
    spec = importlib.util.spec_from_file_location("fuzz_http_request", _PATH)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


HARNESS = _load()
ALL_ROUTES = ROUTES + UI_ROUTES


def operations(doc: dict[str, Any]) -> dict[str, tuple[str, str, dict[str, Any]]]:
    """operationId -> (method, path, operation)."""
    out: dict[str, tuple[str, str, dict[str, Any]]] = {}
    for path, item in doc["paths"].items():
        for method, op in item.items():
            assert op["operationId"] not in out, op["operationId"]
            out[op["operationId"]] = (method.upper(), path, op)
    return out


@pytest.mark.parametrize(
    ("routes", "metrics"), [(ROUTES, False), (ALL_ROUTES, True)], ids=["api", "ui+metrics"]
)
def test_the_document_is_valid_openapi(routes: tuple[Route, ...], metrics: bool) -> None:
    doc = build_openapi(routes, metrics=metrics)
    validate(doc)
    assert doc["openapi"].startswith("3.1")
    json.dumps(doc)  # plain JSON all the way down


def test_every_route_is_an_operation_with_its_name_summary_and_path_parameters() -> None:
    ops = operations(build_openapi(ALL_ROUTES))
    for route in ALL_ROUTES:
        method, path, op = ops[route.name]
        assert (method, path) == (route.method, route.pattern)
        assert op["summary"] == route.summary
        declared = [p["name"] for p in op.get("parameters", []) if p["in"] == "path"]
        assert declared == re.findall(r"\{([^}]+)\}", route.pattern)


def test_every_route_has_a_documentation_entry() -> None:
    """A route added to ROUTES without an entry in openapi.OPERATIONS fails here."""
    missing = sorted(r.name for r in ALL_ROUTES if r.name not in OPERATIONS)
    assert missing == [], f"routes without an OPERATIONS entry: {missing}"
    doc = build_openapi(ALL_ROUTES)
    assert not [op for _, _, op in operations(doc).values() if op.get("x-undocumented")]


def test_every_documented_operation_exists() -> None:
    """No entry outlives its route: documented names are routes or known pseudo-routes."""
    served = {r.name for r in ALL_ROUTES}
    stale = sorted(set(OPERATIONS) - served)
    assert stale == [], f"OPERATIONS entries without a route: {stale}"
    doc = build_openapi(ALL_ROUTES, metrics=True)
    pseudo = {r.name for r, _ in WEBSOCKET_ROUTES} | {METRICS_ROUTE[0].name}
    assert set(operations(doc)) == served | pseudo == documented_names()


def test_an_undocumented_route_is_still_listed_and_flagged() -> None:
    async def handler(call: object) -> Response:
        return Response(status=204)

    extra = Route(method="GET", pattern="/v1/x/{y}", handler=handler, name="newThing", summary="s")
    doc = build_openapi((*ROUTES, extra))
    validate(doc)
    op = doc["paths"]["/v1/x/{y}"]["get"]
    assert op["x-undocumented"] is True
    assert [p["name"] for p in op["parameters"]] == ["y"]


def test_two_operations_on_one_method_and_path_are_refused() -> None:
    with pytest.raises(ValueError, match="two operations"):
        build_openapi((*ROUTES, dataclasses.replace(ROUTES[0], name="again")))


def _upgrade(path: str) -> Request:
    headers = (
        ("host", "localhost"),
        ("connection", "Upgrade"),
        ("upgrade", "websocket"),
        ("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ=="),
        ("sec-websocket-version", "13"),
    )
    return Request(method="GET", target=path, raw_path=path, path=path, query=(), headers=headers)


def test_both_websocket_routes_are_documented_and_really_upgrade() -> None:
    doc = build_openapi()
    api = HttpApi(HARNESS.MemoryBackend(), ui=False)
    concrete = {"job": "job1", "execution": HARNESS.RUNNING.id}
    for route, _ in WEBSOCKET_ROUTES:
        op = doc["paths"][route.pattern]["get"]
        assert op["x-websocket"] is True
        assert "101" in op["responses"]
        assert op["x-websocket-messages"]["server"]["oneOf"]
        path = route.pattern.format(**concrete)
        chosen = api.websocket(_upgrade(path))
        assert chosen is not None and not isinstance(chosen, Response), path
    assert api.websocket(_upgrade("/v1/jobs")) is None


def test_message_schemas_accept_what_the_streams_send() -> None:
    import jsonschema  # type: ignore[import-untyped]

    doc = build_openapi()
    schemas = doc["components"]["schemas"]
    resolver_doc = {"components": doc["components"]}

    def check(name: str, message: object) -> None:
        schema = {**schemas[name], "components": resolver_doc["components"]}
        jsonschema.validate(message, schema)

    execution = {
        "id": "1-n1",
        "job_name": "j",
        "started_at": "2025-01-01T10:00:00Z",
        "finished_at": "0001-01-01T00:00:00Z",
        "success": False,
        "node_name": "n1",
    }
    check("OutputMessage", {"type": "output", "seq": 3, "data": "line\n"})
    check("ResultMessage", {"type": "result", "execution": execution})
    check("JobEvent", {"type": "job", "action": "deleted", "job": "old", "seq": 2})
    check("LeaderEvent", {"type": "leader", "leader": None, "seq": 5})
    check(
        "MemberEvent",
        {
            "type": "member",
            "event": "member-failed",
            "member": {"name": "w3", "addr": "10.0.0.7", "status": 4},
            "seq": 6,
        },
    )
    with pytest.raises(jsonschema.ValidationError):
        check("OutputMessage", {"type": "output", "seq": 0, "data": "x", "extra": 1})


async def _get(port: int, target: str) -> tuple[int, dict[str, str], bytes]:
    import h11

    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        conn = h11.Connection(h11.CLIENT)
        request = h11.Request(method="GET", target=target, headers=[("host", "localhost")])
        await stream.send_all(conn.send(request) + conn.send(h11.EndOfMessage()))
        status, headers, body = 0, {}, bytearray()
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                conn.receive_data(await stream.receive_some(65536))
            elif isinstance(event, h11.Response):
                status = event.status_code
                headers = {k.decode(): v.decode() for k, v in event.headers}
            elif isinstance(event, h11.Data):
                body += event.data
            elif isinstance(event, h11.EndOfMessage):
                return status, headers, bytes(body)


@pytest.mark.parametrize("ui", [False, True])
async def test_the_served_document_is_build_openapi(ui: bool) -> None:
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            api = HttpApi(HARNESS.MemoryBackend(), ui=ui)
            listeners = await nursery.start(api.serve, "127.0.0.1", 0)
            port = listeners[0].socket.getsockname()[1]
            status, headers, body = await _get(port, "/v1/openapi.json")
            assert status == 200
            assert headers["content-type"] == "application/json; charset=utf-8"
            expected = build_openapi(ALL_ROUTES if ui else ROUTES)
            assert json.loads(body) == expected
            if not ui:
                assert json.loads(body) == build_openapi()
            status, _, pretty = await _get(port, "/v1/openapi.json?pretty")
            assert status == 200 and pretty.startswith(b'{\n    "openapi"')
            nursery.cancel_scope.cancel()
