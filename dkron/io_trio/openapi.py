"""The OpenAPI 3.1 document of the REST API, generated from the route table.

The operations come from :data:`dkron.io_trio.http_api.ROUTES` (method,
path, ``operationId`` = route name, summary, path parameters), so a route
cannot be served without appearing here; what a route table cannot say --
query parameters, request bodies, status codes, body schemas, headers --
comes from :data:`OPERATIONS`, keyed by route name.  A route without an
entry is still listed (with ``x-undocumented: true``) and the test suite
fails on it, which is what keeps the two from drifting apart.

The schemas are strict (``additionalProperties: false``, every key the
server always writes is ``required``) because they are checked against
live responses by schemathesis; they follow ``dkron.model.job_to_json`` and
``execution_to_json`` key for key.  The two websocket routes are described
as ``GET`` operations answering ``101`` with an ``x-websocket`` extension
that names the messages the server sends.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from dkron import __version__
from dkron.io_trio.http_api import MAX_NEXT_COUNT, ROUTES, Route

__all__ = [
    "METRICS_ROUTE",
    "OPERATIONS",
    "SECURITY_SCHEMES",
    "WEBSOCKET_ROUTES",
    "Operation",
    "PseudoRoute",
    "build_openapi",
    "documented_names",
]

Json = dict[str, Any]

OPENAPI_VERSION = "3.1.0"
_MAX_INDEX = 10**18 - 1  # http_query accepts at most 18 digits


# ---------------------------------------------------------------------------
# Building blocks
# ---------------------------------------------------------------------------


def _ref(name: str) -> Json:
    return {"$ref": f"#/components/schemas/{name}"}


def _array(items: Json) -> Json:
    return {"type": "array", "items": items}


def _nullable(schema: Json) -> Json:
    out = dict(schema)
    out["type"] = [schema["type"], "null"]
    return out


def _object(properties: Mapping[str, Json], *, required: Sequence[str] | None = None) -> Json:
    """A closed object: every key listed, ``required`` defaulting to all of them."""
    keys = list(properties) if required is None else list(required)
    return {
        "type": "object",
        "properties": dict(properties),
        "required": keys,
        "additionalProperties": False,
    }


_STRING: Json = {"type": "string"}
_BOOL: Json = {"type": "boolean"}
_INT: Json = {"type": "integer"}
_TIME: Json = {"type": "string", "format": "date-time"}
_STRING_MAP: Json = {"type": "object", "additionalProperties": {"type": "string"}}

_JSON = "application/json"
_TEXT = "text/plain"

_TOTAL_HEADER: Json = {
    "description": "The number of items after filtering and before paging.",
    "required": True,
    "schema": {"type": "string", "pattern": "^[0-9]+$"},
}
_WHOM_HEADER: Json = {
    "description": "The name of the node that answered.",
    "required": True,
    "schema": _STRING,
}
_LOCATION_HEADER: Json = {
    "description": "``/v1/jobs/<name>``, percent-encoded.",
    "required": True,
    "schema": _STRING,
}


def _json(description: str, schema: Json, **headers: Json) -> Json:
    out: Json = {"description": description, "content": {_JSON: {"schema": schema}}}
    if headers:
        out["headers"] = headers
    return out


def _list(description: str, item: Json) -> Json:
    return _json(description, _array(item), **{"X-Total-Count": _TOTAL_HEADER})


def _error(description: str) -> Json:
    return _json(description, _ref("Error"))


def _text(description: str) -> Json:
    return {"description": description, "content": {_TEXT: {"schema": _STRING}}}


def _empty(description: str) -> Json:
    return {"description": description}


_UNAVAILABLE = _error("No leader could take the write, or the cluster did not answer in time.")
_NO_JOB = _empty("No such job (empty body, as in Dkron).")


def _query(
    name: str, schema: Json, description: str, *, required: bool = False, **extra: Any
) -> Json:
    return {
        "name": name,
        "in": "query",
        "required": required,
        "description": description,
        "schema": schema,
        **extra,
    }


_PRETTY = _query(
    "pretty",
    _STRING,
    "Present with any value: JSON indented with 4 spaces.",
    allowEmptyValue=True,
)
_START = _query(
    "_start",
    {"type": "integer", "minimum": 0, "maximum": _MAX_INDEX},
    "First item of the page, counted after filtering and sorting.",
)
_END = _query(
    "_end",
    {"type": "integer", "minimum": 0, "maximum": _MAX_INDEX},
    "End of the page (exclusive); missing means to the end.",
)
_ORDER = _query(
    "_order",
    {"type": "string", "enum": ["ASC", "DESC", "asc", "desc", ""]},
    "Sort direction, in any case.",
)
_COUNT = _query(
    "count",
    {"type": "integer", "minimum": 1, "maximum": MAX_NEXT_COUNT},
    f"How many fire times (1..{MAX_NEXT_COUNT}, default 10).",
)


# ---------------------------------------------------------------------------
# Component schemas
# ---------------------------------------------------------------------------

_JOB_NAME: Json = {
    "type": "string",
    "pattern": "^[a-z0-9_-]{1,64}$",
    "description": "Lower-case letters, digits, underscore and dash.",
    "examples": ["job1"],
}

_JOB = _object(
    {
        "id": {**_STRING, "description": "The job's name (Dkron's key)."},
        "name": _STRING,
        "displayname": _STRING,
        "timezone": _STRING,
        "schedule": _STRING,
        "owner": _STRING,
        "owner_email": _STRING,
        "success_count": _INT,
        "error_count": _INT,
        "last_success": _nullable(_TIME),
        "last_error": _nullable(_TIME),
        "disabled": _BOOL,
        "tags": _nullable(_STRING_MAP),
        "metadata": _nullable(_STRING_MAP),
        "retries": {"type": "integer", "minimum": 0},
        "dependent_jobs": _nullable(_array(_STRING)),
        "parent_job": _STRING,
        "processors": _ref("Processors"),
        "concurrency": {"type": "string", "enum": ["allow", "forbid", ""]},
        "executor": _STRING,
        "executor_config": _nullable(_STRING_MAP),
        "status": {"type": "string", "enum": ["", "success", "failed", "partially_failed"]},
        "next": {**_TIME, "description": "0001-01-01T00:00:00Z when the job has no next fire."},
        "ephemeral": _BOOL,
        "starts_at": _nullable(_TIME),
        "expires_at": _nullable(_TIME),
        "catchup": {"type": "string", "enum": ["skip", "latest", "all"]},
        "catchup_window": _STRING,
    }
)
_JOB["description"] = "A job as stored (dkron.model.job_to_json), keys in Dkron's order."

_JOB_INPUT: Json = {
    "type": "object",
    "description": (
        "A job to create or replace. Keys match case-insensitively, unknown keys are "
        "ignored and null leaves a field at its default; counters and status in the "
        "body are merged with the stored job. See docs/jobs.md for every rule."
    ),
    "required": ["name"],
    "properties": {
        "name": _JOB_NAME,
        "displayname": _STRING,
        "schedule": {**_STRING, "examples": ["@every 10s", "0 30 9 * * MON-FRI", "@manually"]},
        "timezone": {**_STRING, "examples": ["Europe/Berlin", ""]},
        "owner": _STRING,
        "owner_email": _STRING,
        "disabled": _BOOL,
        "tags": _STRING_MAP,
        "metadata": _STRING_MAP,
        "retries": {"type": "integer", "minimum": 0, "maximum": 100},
        "parent_job": _STRING,
        "processors": _ref("Processors"),
        "concurrency": {"type": "string", "enum": ["allow", "forbid"]},
        "executor": {**_STRING, "examples": ["shell", "http"]},
        "executor_config": _STRING_MAP,
        "ephemeral": _BOOL,
        "starts_at": _nullable(_TIME),
        "expires_at": _nullable(_TIME),
        "catchup": {"type": "string", "enum": ["skip", "latest", "all"]},
        "catchup_window": {**_STRING, "examples": ["1h", "30m"]},
    },
}


def _execution(*, list_view: bool) -> Json:
    props: dict[str, Json] = {
        "id": {**_STRING, "description": "<started_at UnixNano>-<node_name>."},
        "job_name": _STRING,
        "started_at": _TIME,
        "finished_at": {**_TIME, "description": "0001-01-01T00:00:00Z while running."},
        "success": _BOOL,
        "output": _STRING,
        "node_name": _STRING,
        "group": _INT,
        "attempt": {"type": "integer", "minimum": 1},
        "scheduled_time": _TIME,
        "trigger": {
            "type": "string",
            "enum": ["schedule", "manual", "retry", "catchup", "dependent"],
        },
        "status": {"type": "string", "enum": ["lost", "cancelled"]},
    }
    required = ["id", "started_at", "finished_at", "success"]
    if list_view:
        props["output_truncated"] = {
            **_BOOL,
            "description": "True where output_size_limit cut the output.",
        }
        required.append("output_truncated")
    schema = _object(props, required=required)
    schema["description"] = (
        "An execution in a list, times in the job's timezone."
        if list_view
        else "One execution with its full output, times in UTC."
    )
    return schema


_MEMBER = _object(
    {
        "Name": _STRING,
        "Addr": _STRING,
        "Port": {"type": "integer", "minimum": 0, "maximum": 65535},
        "Tags": _STRING_MAP,
        "Status": {
            "type": "integer",
            "enum": [0, 1, 2, 3, 4],
            "description": "Serf's status: 0 none, 1 alive, 2 leaving, 3 left, 4 failed.",
        },
        "ProtocolMin": _INT,
        "ProtocolMax": _INT,
        "ProtocolCur": _INT,
        "DelegateMin": _INT,
        "DelegateMax": _INT,
        "DelegateCur": _INT,
        "id": {**_STRING, "format": "uuid", "description": "Derived from the name."},
        "statusText": {"type": "string", "enum": ["none", "alive", "leaving", "left", "failed"]},
    },
    required=[
        "Name",
        "Addr",
        "Port",
        "Tags",
        "Status",
        "ProtocolMin",
        "ProtocolMax",
        "ProtocolCur",
        "DelegateMin",
        "DelegateMax",
        "DelegateCur",
    ],
)
_MEMBER["description"] = "A gossip member; /v1/leader leaves out id and statusText."

_STATS_COUNTS = _object(
    {k: {"type": "integer", "minimum": 0} for k in ("success", "failed", "partially_failed")}
    | {"untriggered": {"type": "integer", "minimum": 0}}
)


def _event(kind: str, props: Mapping[str, Json]) -> Json:
    body: dict[str, Json] = {"type": {"const": kind}, **props, "seq": {"type": "integer"}}
    return _object(body)


_COUNTS: Json = {"type": "object", "additionalProperties": _INT}
SECURITY_SCHEMES: Mapping[str, Json] = {
    "bearerToken": {
        "type": "http",
        "scheme": "bearer",
        "description": "--api-token (full access) or --api-read-token (GET only).",
    },
    "dkronToken": {"type": "apiKey", "in": "header", "name": "X-Dkron-Token"},
    "basicAuth": {"type": "http", "scheme": "basic", "description": "--basic-auth USER:PASSWORD"},
    "queryToken": {
        "type": "apiKey",
        "in": "query",
        "name": "access_token",
        "description": "Only on the two websocket routes (browsers cannot set their headers).",
    },
}
SCHEMAS: Mapping[str, Json] = {
    "Keyring": _object(
        {
            "encrypted": _BOOL,
            "num_nodes": _INT,
            "keys": _COUNTS,
            "primary_keys": _COUNTS,
            "other_keys": _COUNTS,
        },
        required=["encrypted", "num_nodes", "keys", "primary_keys"],
    ),
    "Error": _object({"error": _STRING}),
    "Health": _object({"status": {"const": "healthy"}}),
    "Status": _object(
        {
            "agent": _object({"name": _STRING, "version": _STRING}),
            "serf": {**_STRING_MAP, "description": "Gossip statistics; every value a string."},
            "tags": _STRING_MAP,
        }
    ),
    "Member": _MEMBER,
    "RaftPeer": _object(
        {"id": _STRING, "node": _STRING, "address": _STRING, "leader": _BOOL, "voter": _BOOL}
    ),
    "Processors": {
        "type": "object",
        "description": "Processor name to its string configuration.",
        "additionalProperties": _nullable(_STRING_MAP),
    },
    "Job": _JOB,
    "JobInput": _JOB_INPUT,
    "Execution": _execution(list_view=False),
    "ExecutionListItem": _execution(list_view=True),
    "Paused": _object({"paused": _BOOL}),
    "FireTimes": _array({**_TIME, "description": "RFC 3339, UTC."}),
    "Stats": _object(
        {
            "jobs": {"type": "integer", "minimum": 0},
            "by_status": _STATS_COUNTS,
            "disabled": {"type": "integer", "minimum": 0},
            "running": {"type": "integer", "minimum": 0},
            "missed": {
                "type": "object",
                "description": "Job name to {reason: count}, only jobs with a missed slot.",
                "additionalProperties": {
                    "type": "object",
                    "additionalProperties": {"type": "integer", "minimum": 1},
                },
            },
            "upcoming": _array(_object({"job": _STRING, "at": _TIME})),
        }
    ),
    "OutputMessage": _object(
        {"type": {"const": "output"}, "seq": {"type": "integer", "minimum": 1}, "data": _STRING}
    ),
    "ResultMessage": _object({"type": {"const": "result"}, "execution": _ref("Execution")}),
    "JobEvent": _event(
        "job", {"action": {"type": "string", "enum": ["updated", "deleted"]}, "job": _STRING}
    ),
    "ExecutionEvent": _event(
        "execution",
        {
            "action": {"type": "string", "enum": ["started", "finished"]},
            "job": _STRING,
            "execution": _ref("Execution"),
        },
    ),
    "LeaderEvent": _event("leader", {"leader": _nullable(_STRING)}),
    "MemberEvent": _event(
        "member",
        {
            "event": _STRING,
            "member": _object({"name": _STRING, "addr": _STRING, "status": {"type": "integer"}}),
        },
    ),
}


# ---------------------------------------------------------------------------
# The per-route table
# ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class Operation:
    """What the route table cannot say about one operation."""

    tags: tuple[str, ...]
    responses: Mapping[str, Json]
    query: tuple[Json, ...] = ()
    body: Json | None = None
    description: str = ""
    json: bool = True  # answers JSON, so ``?pretty`` applies
    extensions: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.responses:
            raise ValueError("an operation needs at least one response")


def _job_body() -> Json:
    example = {"name": "job1", "schedule": "@every 1h", "timezone": "Europe/Berlin"}
    return {
        "required": True,
        "content": {_JSON: {"schema": _ref("JobInput"), "example": example}},
    }


_RUNONCREATE = _query(
    "runoncreate",
    _STRING,
    "Present with any value: start a run in the background once the job is stored.",
    allowEmptyValue=True,
)
_UPSERT = Operation(
    tags=("jobs",),
    query=(_RUNONCREATE,),
    body=_job_body(),
    description="Paused submissions, decoding, validation, then commit through the leader.",
    responses={
        "201": _json("The job as stored.", _ref("Job"), Location=_LOCATION_HEADER),
        "400": _text("Unable to parse payload / Job validation failed (plain text)."),
        "404": _text("specified parent job not found (plain text)."),
        "503": _text("Submissions are paused, or no leader could take the write (plain text)."),
    },
)
_RUN = Operation(
    tags=("jobs",),
    description="Answers once the run is dispatched, with the job before the run.",
    responses={
        "200": _json("The job, next refreshed.", _ref("Job"), Location=_LOCATION_HEADER),
        "404": _empty("No such job, or no node can run it."),
        "503": _UNAVAILABLE,
    },
)
_KEYRING_OP = Operation(
    tags=("keyring",),
    description="Applied here at once and announced to every member with an encrypted "
    "gossip user event; each member applies it and stores its keyring.",
    body={
        "required": True,
        "content": {
            _JSON: {
                "schema": _object({"key": {"type": "string", "contentEncoding": "base64"}}),
                "example": {"key": "cg8StVXbQJ0gPvMd9o7yrg=="},
            }
        },
    },
    responses={
        "200": _json(
            "Announced; num_nodes members were alive.",
            _object({"op": {"enum": ["install", "use", "remove"]}, "num_nodes": _INT}),
        ),
        "400": _error('The body is not {"key": base64 of 16, 24 or 32 bytes}.'),
        "409": _error(
            "Gossip is not encrypted, the key is the primary (remove) or not installed (use)."
        ),
        "503": _UNAVAILABLE,
    },
)
_UI_NOT_FOUND = _text("404 page not found (the UI files are not installed).")
_UI_TYPES = (
    "text/html",
    "text/javascript",
    "text/css",
    "image/svg+xml",
    "application/json",
    "image/x-icon",
    "image/png",
)

OPERATIONS: Mapping[str, Operation] = {
    "health": Operation(
        tags=("default",),
        responses={"200": _json("Always healthy while HTTP is served.", _ref("Health"))},
    ),
    "status": Operation(
        tags=("default",), responses={"200": _json("The node's status map.", _ref("Status"))}
    ),
    "statusSlash": Operation(
        tags=("default",), responses={"200": _json("The node's status map.", _ref("Status"))}
    ),
    "listMembers": Operation(
        tags=("members",), responses={"200": _list("Every member known here.", _ref("Member"))}
    ),
    "getLeader": Operation(
        tags=("members",),
        responses={
            "200": _json("The leader.", _ref("Member")),
            "404": _error("No leader is known."),
        },
    ),
    "isLeader": Operation(
        tags=("members",),
        responses={
            "200": _json("This node leads.", {"const": "I am a leader"}),
            "404": _json("This node follows.", {"const": "I am a follower"}),
        },
    ),
    "leave": Operation(
        tags=("cluster",),
        description="The node leaves and stops; clients should not rely on the body's shape.",
        responses={
            "200": _json("The peers this node knew.", {"type": "object"}),
            "503": _UNAVAILABLE,
        },
    ),
    "listRaftPeers": Operation(
        tags=("raft",), responses={"200": _list("The Raft configuration.", _ref("RaftPeer"))}
    ),
    "removeRaftPeer": Operation(
        tags=("raft",),
        responses={
            "200": _json("Removed.", _object({"removed": _STRING})),
            "404": _error("The id is not in the Raft configuration."),
            "503": _UNAVAILABLE,
        },
    ),
    "restore": Operation(
        tags=("jobs",),
        body={
            "required": True,
            "content": {
                "multipart/form-data": {
                    "schema": {
                        "type": "object",
                        "required": ["file"],
                        "properties": {
                            "file": {
                                "type": "string",
                                "format": "binary",
                                "description": "A JSON array of jobs (GET /v1/jobs output).",
                            }
                        },
                    }
                }
            },
        },
        description="The whole file is checked before anything is written.",
        responses={
            "200": _json(
                "A JSON string holding a JSON array of 'success create <name>' / "
                "'fail create <name>', as Dkron double-encodes it.",
                _STRING,
            ),
            "400": _error("Malformed multipart framing, or a bad file."),
            "404": _error("No 'file' field, or a body that is not multipart."),
            "503": _UNAVAILABLE,
        },
    ),
    "listKeyring": Operation(
        tags=("keyring",),
        description="Counts come from the fingerprints members publish in their "
        "'keyring' tag; keys only other members hold appear under other_keys.",
        responses={"200": _json("The gossip keyring across the cluster.", _ref("Keyring"))},
    ),
    "installKey": _KEYRING_OP,
    "useKey": _KEYRING_OP,
    "removeKey": _KEYRING_OP,
    "listBusy": Operation(
        tags=("executions",),
        responses={
            "200": _list("Running executions, oldest first.", _ref("Execution")),
            "503": _UNAVAILABLE,
        },
    ),
    "pauseStatus": Operation(
        tags=("cluster",), responses={"200": _json("The pause flag.", _ref("Paused"))}
    ),
    "pause": Operation(
        tags=("cluster",),
        responses={"200": _json("Now paused.", _ref("Paused")), "503": _UNAVAILABLE},
    ),
    "unpause": Operation(
        tags=("cluster",),
        responses={"200": _json("Now accepting.", _ref("Paused")), "503": _UNAVAILABLE},
    ),
    "listJobs": Operation(
        tags=("jobs",),
        query=(
            _START,
            _END,
            _query(
                "_sort",
                {
                    "type": "string",
                    "enum": [
                        "",
                        "id",
                        "name",
                        "displayname",
                        "schedule",
                        "success_count",
                        "error_count",
                        "last_success",
                        "last_error",
                        "next",
                    ],
                },
                "Sort key; empty and id mean name.",
            ),
            _ORDER,
            _query("q", _STRING, "A case-sensitive substring of name or displayname."),
            _query(
                "status",
                {
                    "type": "string",
                    "enum": ["", "success", "failed", "partially_failed", "untriggered"],
                },
                "Last run status; empty means no filter.",
            ),
            _query(
                "disabled",
                {"type": "string", "enum": ["", "true", "false"]},
                "Empty means no filter.",
            ),
            _query(
                "metadata",
                _STRING_MAP,
                "metadata[<key>]=<value>, repeatable: every pair must match exactly.",
                style="deepObject",
                explode=True,
            ),
        ),
        responses={
            "200": _list("The page.", _ref("Job")),
            "400": _error("A parameter with a value the API cannot honour."),
        },
    ),
    "createOrUpdateJob": _UPSERT,
    "patchJob": _UPSERT,
    "putJob": _UPSERT,
    "showJob": Operation(
        tags=("jobs",), responses={"200": _json("The job.", _ref("Job")), "404": _NO_JOB}
    ),
    "deleteJob": Operation(
        tags=("jobs",),
        responses={
            "200": _json("The job as it was.", _ref("Job")),
            "404": _NO_JOB,
            "409": _error("The job still has dependents."),
            "503": _UNAVAILABLE,
        },
    ),
    "runJob": _RUN,
    "runJobAlias": _RUN,
    "toggleJob": Operation(
        tags=("jobs",),
        responses={
            "200": _json("The toggled job.", _ref("Job"), Location=_LOCATION_HEADER),
            "404": _NO_JOB,
            "422": _empty("Refused."),
            "503": _UNAVAILABLE,
        },
    ),
    "nextFireTimes": Operation(
        tags=("jobs",),
        query=(_COUNT,),
        responses={
            "200": _json(
                "The next fire times.",
                _ref("FireTimes"),
                **{"X-Total-Count": _TOTAL_HEADER},
            ),
            "400": _error("count is not an integer from 1 to 100."),
            "404": _NO_JOB,
        },
    ),
    "listExecutions": Operation(
        tags=("executions",),
        query=(
            _START,
            _END,
            _query(
                "_sort",
                {"type": "string", "enum": ["", "id", "started_at", "finished_at", "attempt"]},
                "Sort key; empty and id mean started_at.",
            ),
            _ORDER,
            _query(
                "output_size_limit",
                {"type": "integer", "minimum": 0, "maximum": _MAX_INDEX},
                "Keep only the last N bytes of each output.",
            ),
        ),
        responses={
            "200": _list("The page, newest first by default.", _ref("ExecutionListItem")),
            "400": _error("A parameter with a value the API cannot honour."),
            "404": _NO_JOB,
        },
    ),
    "deleteExecutions": Operation(
        tags=("executions",),
        responses={
            "200": _json("The job with reset counters.", _ref("Job")),
            "404": _NO_JOB,
            "503": _UNAVAILABLE,
        },
    ),
    "showExecution": Operation(
        tags=("executions",),
        responses={
            "200": _json("The execution.", _ref("Execution")),
            "404": _empty("No such job or execution."),
        },
    ),
    "cancelExecution": Operation(
        tags=("executions",),
        responses={
            "202": _json("The execution as currently stored.", _ref("Execution")),
            "404": _empty("No such job or execution."),
            "409": _error("The execution is not running."),
            "503": _UNAVAILABLE,
        },
    ),
    "previewSchedule": Operation(
        tags=("jobs",),
        query=(
            _query(
                "schedule",
                {**_STRING, "examples": ["@every 10s", "0 30 9 * * MON-FRI"]},
                "Any schedule a job accepts.",
                required=True,
            ),
            _query("timezone", _STRING, "IANA zone; empty means the server's."),
            _query("job", _STRING, "The job name (only the hashed ~ and H fields use it)."),
            _COUNT,
        ),
        responses={
            "200": _json(
                "The next fire times.",
                _ref("FireTimes"),
                **{"X-Total-Count": _TOTAL_HEADER},
            ),
            "400": _error("Missing or bad schedule, unknown timezone, or bad count."),
        },
    ),
    "stats": Operation(
        tags=("default",), responses={"200": _json("Dashboard figures.", _ref("Stats"))}
    ),
    "getOpenApi": Operation(
        tags=("default",),
        responses={"200": _json("This document.", {"type": "object"})},
    ),
    "root": Operation(
        tags=("ui",),
        json=False,
        responses={
            "302": {
                "description": "To /ui/, for a browser (Accept: text/html).",
                "headers": {"Location": {"required": True, "schema": _STRING}},
            },
            "404": _text("404 page not found, for API clients."),
        },
    ),
    "uiIndex": Operation(
        tags=("ui",),
        json=False,
        responses={
            "200": {"description": "The UI page.", "content": {"text/html": {"schema": _STRING}}},
            "404": _UI_NOT_FOUND,
        },
    ),
    "uiIndexSlash": Operation(
        tags=("ui",),
        json=False,
        responses={
            "200": {"description": "The UI page.", "content": {"text/html": {"schema": _STRING}}},
            "404": _UI_NOT_FOUND,
        },
    ),
    "uiFile": Operation(
        tags=("ui",),
        json=False,
        responses={
            "200": {
                "description": "The file.",
                "content": {t: {"schema": {}} for t in _UI_TYPES},
            },
            "404": _text("404 page not found."),
        },
    ),
}


# ---------------------------------------------------------------------------
# Operations that are not rows of ROUTES
# ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class PseudoRoute:
    """A served path that the dispatcher does not route through ``ROUTES``."""

    method: str
    pattern: str
    name: str
    summary: str
    meta: bool = True


_NOT_AN_UPGRADE = _text("Without a websocket upgrade the path is not a route: 404 page not found.")
_SWITCHING: Json = {
    "description": "Switching Protocols: the connection is now a websocket.",
    "headers": {
        "Upgrade": {"required": True, "schema": {"const": "websocket"}},
        "Sec-WebSocket-Accept": {"required": True, "schema": _STRING},
    },
}
_HANDSHAKE = (
    "A websocket (RFC 6455) upgrade request: Connection: Upgrade, Upgrade: websocket, "
    "Sec-WebSocket-Key and Sec-WebSocket-Version: 13. Every message is a JSON text "
    "message. A client that reads too slowly is closed with code 1013. See "
    "docs/live-output.md."
)

WEBSOCKET_ROUTES: tuple[tuple[PseudoRoute, Operation], ...] = (
    (
        PseudoRoute(
            method="GET",
            pattern="/v1/jobs/{job}/executions/{execution}/stream",
            name="streamExecutionOutput",
            summary="Live output of one execution, then its result (websocket).",
        ),
        Operation(
            tags=("stream",),
            json=False,
            description=_HANDSHAKE,
            query=(
                _query(
                    "from_seq",
                    {"type": "integer", "minimum": 0},
                    "Only chunks after this seq (reconnect with the last one received).",
                ),
            ),
            responses={
                "101": _SWITCHING,
                "400": _error("from_seq is not a non-negative integer."),
                "404": {
                    "description": (
                        "Unknown job or execution ({'error': ...}), or not an upgrade "
                        "request (404 page not found)."
                    ),
                    "content": {
                        _JSON: {"schema": _ref("Error")},
                        _TEXT: {"schema": _STRING},
                    },
                },
            },
            extensions={
                "x-websocket": True,
                "x-websocket-messages": {
                    "server": {"oneOf": [_ref("OutputMessage"), _ref("ResultMessage")]},
                    "client": None,
                },
                "x-websocket-close-codes": {
                    "1000": "The execution finished (after the result message).",
                    "1013": "The client read too slowly.",
                },
            },
        ),
    ),
    (
        PseudoRoute(
            method="GET",
            pattern="/v1/events",
            name="streamEvents",
            summary="Cluster events as this server sees them (websocket).",
        ),
        Operation(
            tags=("stream",),
            json=False,
            description=_HANDSHAKE,
            responses={"101": _SWITCHING, "404": _NOT_AN_UPGRADE},
            extensions={
                "x-websocket": True,
                "x-websocket-messages": {
                    "server": {
                        "oneOf": [
                            _ref("JobEvent"),
                            _ref("ExecutionEvent"),
                            _ref("LeaderEvent"),
                            _ref("MemberEvent"),
                        ]
                    },
                    "client": None,
                },
                "x-websocket-close-codes": {"1013": "The client read too slowly."},
            },
        ),
    ),
)

METRICS_ROUTE: tuple[PseudoRoute, Operation] = (
    PseudoRoute(
        method="GET",
        pattern="/metrics",
        name="metrics",
        summary="Prometheus metrics (only with --enable-prometheus).",
        meta=False,
    ),
    Operation(
        tags=("metrics",),
        json=False,
        responses={"200": _text("Prometheus text exposition format.")},
    ),
)


# ---------------------------------------------------------------------------
# The document
# ---------------------------------------------------------------------------

_DESCRIPTION = (
    "Dkron's REST API v1, generated from the server's route table. Reads come from the "
    "answering node's replica; writes are forwarded to the Raft leader. Errors Dkron "
    'never produced are JSON {"error": "..."}; Dkron\'s own empty and plain-text error '
    "bodies are kept where it produced them. An unknown route is 404 '404 page not found'. "
    "See docs/api.md. Authentication is off unless the agent has --api-token, "
    "--api-read-token or --basic-auth; then every route except /health, CORS preflights "
    "and the UI's files answers 401 (with WWW-Authenticate) without credentials and 403 "
    "to a read-only token on a write. See docs/security.md."
)


def _path_parameters(pattern: str) -> list[Json]:
    names = [seg[1:-1] for seg in pattern.split("/") if seg.startswith("{")]
    return [
        {
            "name": name,
            "in": "path",
            "required": True,
            "description": "One percent-decoded path segment.",
            # A segment never holds "/", and a leading dot would be folded away
            # by clients as a "." or ".." segment.
            "schema": {"type": "string", "pattern": "^[^/.][^/]*$"},
            **({"example": "job1"} if name == "job" else {}),
        }
        for name in names
    ]


def _operation(route: Route | PseudoRoute, doc: Operation | None) -> Json:
    op: Json = {"operationId": route.name, "summary": route.summary}
    if doc is None:
        op["tags"] = ["undocumented"]
        op["x-undocumented"] = True
        op["parameters"] = _path_parameters(route.pattern)
        op["responses"] = {"default": {"description": "Not documented."}}
        return op
    op["tags"] = list(doc.tags)
    if doc.description:
        op["description"] = doc.description
    params = _path_parameters(route.pattern) + list(doc.query)
    if doc.json:
        params.append(_PRETTY)
    if params:
        op["parameters"] = params
    if doc.body is not None:
        op["requestBody"] = doc.body
    responses: Json = {}
    for status, response in doc.responses.items():
        response = copy.deepcopy(response)
        if route.meta and status != "101":
            headers = response.setdefault("headers", {})
            headers.setdefault("X-Whom", _WHOM_HEADER)
        responses[status] = response
    op["responses"] = responses
    op.update(copy.deepcopy(dict(doc.extensions)))
    return op


def documented_names() -> frozenset[str]:
    """Every operationId this module documents, REST routes and pseudo-routes alike."""
    pseudo = {r.name for r, _ in WEBSOCKET_ROUTES} | {METRICS_ROUTE[0].name}
    return frozenset(OPERATIONS) | pseudo


def build_openapi(
    routes: Sequence[Route] = ROUTES, *, websockets: bool = True, metrics: bool = False
) -> Json:
    """The OpenAPI 3.1 document for ``routes`` (plus the websocket and metrics paths).

    ``routes`` is what the dispatcher serves -- ``HttpApi.routes`` includes
    the UI's routes unless the UI is off -- and ``metrics`` says whether
    ``/metrics`` is served (``--enable-prometheus``), so that the served
    document describes exactly the server that serves it.
    """
    rows: list[tuple[Route | PseudoRoute, Operation | None]] = [
        (r, OPERATIONS.get(r.name)) for r in routes
    ]
    if websockets:
        rows.extend(WEBSOCKET_ROUTES)
    if metrics:
        rows.append(METRICS_ROUTE)
    paths: Json = {}
    for route, doc in rows:
        item = paths.setdefault(route.pattern, {})
        method = route.method.lower()
        if method in item:
            raise ValueError(f"two operations for {route.method} {route.pattern}")
        item[method] = _operation(route, doc)
    tags = sorted({tag for item in paths.values() for op in item.values() for tag in op["tags"]})
    return {
        "openapi": OPENAPI_VERSION,
        "info": {
            "title": "Dkron REST API",
            "version": __version__,
            "description": _DESCRIPTION,
        },
        "tags": [{"name": t} for t in tags],
        "paths": paths,
        "security": [{}, *({name: []} for name in SECURITY_SCHEMES)],
        "components": {
            "schemas": copy.deepcopy(dict(SCHEMAS)),
            "securitySchemes": copy.deepcopy(dict(SECURITY_SCHEMES)),
        },
    }
