"""Properties of the API's pure parts: listing, query parsing, rendering, multipart."""

from __future__ import annotations

import json
import re
import string
from typing import Any

from hypothesis import example, given
from hypothesis import strategies as st

from dkron.io_trio.http_api import render_json
from dkron.io_trio.http_query import (
    ExecutionQuery,
    JobQuery,
    QueryError,
    parse_multipart,
    select_executions,
    select_jobs,
)
from dkron.model import Execution, Job
from dkron.state import StateMachine, UpsertJob

# -- listing against a plain reference ----------------------------------------------------

_NAMES = st.text(alphabet="abc-1", min_size=1, max_size=4)
_SORTS = [
    "id",
    "name",
    "displayname",
    "schedule",
    "success_count",
    "error_count",
    "last_success",
    "last_error",
    "next",
]


@st.composite
def _jobs(draw: st.DrawFn) -> list[Job]:
    names = draw(st.lists(_NAMES, unique=True, max_size=12))
    return [
        Job(
            name=n,
            displayname=draw(st.sampled_from(["", "Alpha", "alpha", "beta", "a-b"])),
            schedule=draw(st.sampled_from(["@every 1m", "@hourly", "@daily"])),
            success_count=draw(st.integers(0, 3)),
            error_count=draw(st.integers(0, 3)),
            last_success=draw(st.none() | st.integers(0, 3)),
            last_error=draw(st.none() | st.integers(0, 3)),
            next=draw(st.none() | st.integers(0, 3)),
            disabled=draw(st.booleans()),
            metadata=draw(
                st.none() | st.dictionaries(st.sampled_from("xy"), st.sampled_from("12"))
            ),
        )
        for n in names
    ]


@st.composite
def _query_pairs(draw: st.DrawFn) -> list[tuple[str, str]]:
    pairs: list[tuple[str, str]] = []
    if draw(st.booleans()):
        pairs.append(("_sort", draw(st.sampled_from(_SORTS))))
    if draw(st.booleans()):
        pairs.append(("_order", draw(st.sampled_from(["ASC", "DESC", "desc"]))))
    for key in ("_start", "_end"):
        if draw(st.booleans()):
            pairs.append((key, str(draw(st.integers(0, 15)))))
    if draw(st.booleans()):
        pairs.append(("q", draw(st.sampled_from(["a", "b", "-", "Al", "zz"]))))
    if draw(st.booleans()):
        pairs.append(("disabled", draw(st.sampled_from(["true", "false"]))))
    for k in draw(st.lists(st.sampled_from("xy"), max_size=2, unique=True)):
        pairs.append((f"metadata[{k}]", draw(st.sampled_from("12"))))
    return pairs


def _reference(jobs: list[Job], pairs: list[tuple[str, str]]) -> tuple[int, list[str]]:
    q = dict(pairs)
    sort = {"id": "name"}.get(q.get("_sort", "name"), q.get("_sort", "name"))
    desc = q.get("_order", "ASC").upper() == "DESC"
    wanted_md = {k[9:-1]: v for k, v in pairs if k.startswith("metadata[")}

    def keep(j: Job) -> bool:
        if "q" in q and q["q"] not in j.name and q["q"] not in j.displayname:
            return False
        if "disabled" in q and str(j.disabled).lower() != q["disabled"]:
            return False
        return all((j.metadata or {}).get(k) == v for k, v in wanted_md.items())

    def key(j: Job) -> Any:
        value = getattr(j, sort)
        if isinstance(value, str):
            value = value.lower()
        elif value is None:
            value = -1
        return (value, j.name)

    rows = sorted((j for j in jobs if keep(j)), key=key, reverse=desc)
    start = int(q.get("_start", 0))
    end = int(q["_end"]) if "_end" in q else len(rows)
    return len(rows), [j.name for j in rows[start:end]]


@given(_jobs(), _query_pairs())
@example([Job(name="a", disabled=True), Job(name="b")], [("disabled", "false")])
def test_select_jobs_matches_a_plain_filter_sort_slice(
    jobs: list[Job], pairs: list[tuple[str, str]]
) -> None:
    state = StateMachine(job_validator=lambda job: None)
    for i, job in enumerate(jobs):
        state.apply_command(i + 1, UpsertJob(job))
    total, page = select_jobs(state, JobQuery.parse(pairs))
    assert (total, [j.name for j in page]) == _reference(jobs, pairs)


@given(
    st.lists(
        st.tuples(st.integers(0, 5), st.sampled_from("nm"), st.none() | st.integers(6, 9)),
        unique_by=lambda t: (t[0], t[1]),
        max_size=10,
    ),
    st.sampled_from(["", "id", "started_at", "finished_at", "attempt"]),
    st.sampled_from([None, "ASC", "DESC"]),
)
def test_select_executions_orders_by_key_then_id(
    rows: list[tuple[int, str, int | None]], sort: str, order: str | None
) -> None:
    execs = [
        Execution("j", started, node, finished_at=fin, attempt=started % 3 + 1)
        for started, node, fin in rows
    ]
    pairs = [("_sort", sort)] + ([("_order", order)] if order else [])
    total, page = select_executions(execs, ExecutionQuery.parse(pairs))
    assert total == len(execs)
    assert sorted(page, key=lambda e: e.id) == sorted(execs, key=lambda e: e.id)
    field = {"": "started_at", "id": "started_at"}.get(sort, sort)

    def key(e: Execution) -> Any:
        value = getattr(e, field)
        return -1 if value is None else value

    keys = [key(e) for e in page]
    descending = order != "ASC"
    assert keys == sorted(keys, reverse=descending)


@given(st.text(max_size=6), st.sampled_from(["_start", "_end", "_sort", "_order", "status"]))
def test_query_parsing_raises_only_query_error(value: str, key: str) -> None:
    try:
        JobQuery.parse([(key, value)])
        ExecutionQuery.parse([(key, value)])
    except QueryError as exc:
        assert str(exc)


# -- rendering and multipart --------------------------------------------------------------

_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner),
    max_leaves=10,
)


@given(_JSON, st.booleans())
@example({"<a>": "&\u2028\ud800"}, False)
def test_render_json_is_html_safe_valid_utf8_json(value: object, pretty: bool) -> None:
    out = render_json(value, pretty=pretty)
    text = out.decode("utf-8")  # never raises: surrogates became U+FFFD
    assert not re.search("[<>&\u2028\u2029]", text)
    back = json.loads(text)
    expected = json.loads(json.dumps(value).replace("\\ud800", "\\ufffd"))
    if not re.search(r"\\ud[89a-f]", json.dumps(value)):
        assert back == expected
    if pretty and isinstance(value, dict) and value:
        assert text.startswith('{\n    "')


@given(
    st.dictionaries(
        st.text(alphabet=string.ascii_letters + "_-", min_size=1, max_size=8),
        st.binary(max_size=200),
        max_size=4,
    ),
    st.text(
        alphabet=string.ascii_letters + string.digits + "'()+_,-./:=?", min_size=1, max_size=40
    ),
)
def test_multipart_round_trip(fields: dict[str, bytes], boundary: str) -> None:
    body = bytearray()
    for name, data in fields.items():
        body += b"--" + boundary.encode() + b"\r\n"
        body += f'Content-Disposition: form-data; name="{name}"\r\n\r\n'.encode()
        body += data + b"\r\n"
    body += b"--" + boundary.encode() + b"--\r\n"
    ctype = f'multipart/form-data; boundary="{boundary}"'
    try:
        parsed = parse_multipart(ctype, bytes(body))
    except ValueError:
        # Only a boundary that also occurs inside the data can confuse framing.
        assert any(boundary.encode() in d for d in fields.values())
        return
    if not any(boundary.encode() in d for d in fields.values()):
        assert parsed == fields


@given(st.binary(max_size=300))
def test_multipart_parser_raises_only_value_error(body: bytes) -> None:
    try:
        parse_multipart("multipart/form-data; boundary=b", body)
    except ValueError:
        return
