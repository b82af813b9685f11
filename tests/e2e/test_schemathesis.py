"""schemathesis against a real ``python -m dkron agent`` process, driven by the served document.

Every operation of ``GET /v1/openapi.json`` gets a fixed number of
derandomized examples: schema-valid ones checked for no server error and
for conformance (status codes, content types, headers and body schemas
where they are documented), and schema-violating ones checked for no
server error only (their paths may be redirected or unroutable, which the
document does not describe operation by operation).

Generated jobs could name an executor and a command; the request bodies are
stripped of ``executor``, ``executor_config`` and ``processors`` before
they are sent, so no generated text ever runs on this machine.  The two
operations that would end the agent (``POST /v1/leave``, ``DELETE
/v1/raft/peers/{id}``) are not called.
"""

from __future__ import annotations

import json
import pathlib
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.core.failures import FailureGroup
from schemathesis.core.result import Ok
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from dkron.io_trio.http_api import ROUTES, UI_ROUTES
from dkron.io_trio.openapi import build_openapi
from dkron.testing.procs import AgentProc, ProcCluster, wait_for

EXAMPLES = {GenerationMode.POSITIVE: 12, GenerationMode.NEGATIVE: 6}
SKIPPED = {"leave", "removeRaftPeer"}
UNSAFE_KEYS = {"executor", "executor_config", "processors"}
CONFORMANCE: list[schemathesis.CheckFunction] = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
]

NO_SERVER_ERROR: list[schemathesis.CheckFunction] = [not_a_server_error]

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def agent(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AgentProc]:
    root: pathlib.Path = tmp_path_factory.mktemp("schemathesis")
    with ProcCluster(root, extra_args=["--enable-prometheus"]) as cluster:
        node = cluster.add("node1")
        wait_for(lambda: node.leader_name() == "node1", timeout=60, what="the agent to lead")
        status, _ = node.call(
            "POST", "/v1/jobs", {"name": "job1", "schedule": "@manually", "executor": "none"}
        )
        assert status == 201
        yield node
        node.ensure_running()


def _served(port: int) -> dict[str, Any]:
    url = f"http://127.0.0.1:{port}/v1/openapi.json"
    with urllib.request.urlopen(url, timeout=10) as resp:
        doc: dict[str, Any] = json.loads(resp.read())
    return doc


def test_the_served_document_describes_the_agent(agent: AgentProc) -> None:
    assert _served(agent.api) == build_openapi(ROUTES + UI_ROUTES, metrics=True)


def _defuse(body: Any) -> Any:
    """A job body without anything that would run or write on this machine."""
    if isinstance(body, dict):
        return {k: v for k, v in body.items() if str(k).lower() not in UNSAFE_KEYS}
    return body


def _run_operation(
    operation: schemathesis.APIOperation[Any, Any, Any, Any], mode: GenerationMode, base_url: str
) -> None:
    checks = CONFORMANCE if mode is GenerationMode.POSITIVE else NO_SERVER_ERROR

    @settings(
        max_examples=EXAMPLES[mode],
        derandomize=True,
        database=None,
        deadline=None,
        phases=[Phase.explicit, Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @given(case=operation.as_strategy(generation_mode=mode))
    def run(case: schemathesis.Case[Any]) -> None:
        if operation.method.upper() in ("POST", "PUT", "PATCH") and "job" in operation.label:
            case.body = _defuse(case.body)
        case.call_and_validate(base_url=base_url, checks=checks, timeout=30)

    run()


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
def test_every_operation_holds_up(agent: AgentProc, mode: GenerationMode) -> None:
    base_url = f"http://127.0.0.1:{agent.api}"
    schema = schemathesis.openapi.from_dict(_served(agent.api))
    failures: list[str] = []
    tested = 0
    for result in schema.get_all_operations():
        assert isinstance(result, Ok), result
        operation = result.ok()
        raw = operation.definition.raw
        if raw.get("operationId") in SKIPPED:
            continue
        if mode is GenerationMode.NEGATIVE and not (raw.get("parameters") or "requestBody" in raw):
            continue  # nothing to get wrong in a request without inputs
        tested += 1
        try:
            _run_operation(operation, mode, base_url)
        except (Exception, FailureGroup) as exc:  # collect every operation's failures
            failures.append(f"{operation.label}: {exc}")
        agent.ensure_running()
    if mode is GenerationMode.POSITIVE:
        # every route, both websocket routes and /metrics, less the skipped ones
        assert tested == len(ROUTES) + len(UI_ROUTES) + 3 - len(SKIPPED)
    assert not failures, "\n\n".join(failures)
