"""The Raft wire codec: round trips, strict rejection, frame-size bounds."""

from __future__ import annotations

import random

import cbor2
import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from dkron.proto_sansio.codec import MAX_FRAME, RAFT_CODEC, decode_message, encode_message
from dkron.proto_sansio.errors import LocalProtocolError, RemoteProtocolError
from dkron.proto_sansio.framing import FrameDecoder, encode_frame
from dkron.proto_sansio.raft import (
    ENTRY_OVERHEAD,
    AppendEntries,
    AppendEntriesResponse,
    Entry,
    EntryKind,
    HardState,
    InstallSnapshot,
    InstallSnapshotResponse,
    Membership,
    PersistedState,
    RaftConfig,
    RaftMessage,
    RaftNode,
    RequestVote,
    RequestVoteResponse,
    TimeoutNow,
    encode_membership,
)

node_id = st.text(min_size=1, max_size=8)


@st.composite
def memberships(draw: st.DrawFn, *, nonempty: bool = True) -> Membership:
    ids = draw(st.lists(node_id, min_size=1 if nonempty else 0, max_size=6, unique=True))
    split = draw(st.integers(1 if nonempty else 0, max(len(ids), 1 if nonempty else 0)))
    return Membership(frozenset(ids[:split]), frozenset(ids[split:]))


@st.composite
def entry_runs(draw: st.DrawFn, prev_index: int, prev_term: int, term: int) -> tuple[Entry, ...]:
    n = draw(st.integers(0, 6))
    out = []
    t = max(prev_term, 1)
    for i in range(n):
        t = draw(st.integers(t, term))
        kind = draw(st.sampled_from(EntryKind))
        data = (
            encode_membership(draw(memberships()))
            if kind is EntryKind.CONFIG
            else draw(st.binary(max_size=40))
        )
        out.append(Entry(t, prev_index + 1 + i, kind, data))
    return tuple(out)


@st.composite
def append_entries(draw: st.DrawFn, hi: int = 2**40) -> AppendEntries:
    term = draw(st.integers(1, hi))
    prev_term = draw(st.integers(0, term))
    prev_index = draw(st.integers(0, hi))
    entries = draw(entry_runs(prev_index, prev_term, term))
    return AppendEntries(
        term, prev_index, prev_term, draw(st.integers(0, hi)), entries, draw(st.integers(0, hi))
    )


@st.composite
def request_votes(draw: st.DrawFn, hi: int = 2**40) -> RequestVote:
    term = draw(st.integers(1, hi))
    return RequestVote(
        term,
        draw(st.integers(0, hi)),
        draw(st.integers(0, term)),
        draw(st.booleans()),
        draw(st.booleans()),
    )


@st.composite
def install_snapshots(draw: st.DrawFn, hi: int = 2**40) -> InstallSnapshot:
    term = draw(st.integers(1, hi))
    data = draw(st.binary(max_size=64))
    offset = draw(st.integers(0, min(hi, 1000)))
    total = offset + len(data) + draw(st.integers(0, min(hi, 1000)))
    return InstallSnapshot(
        term,
        draw(st.integers(1, hi)),
        draw(st.integers(1, term)),
        draw(memberships()),
        offset,
        total,
        data,
    )


def message_strategy(hi: int) -> st.SearchStrategy[RaftMessage]:
    num = st.integers(0, hi)
    return st.one_of(
        request_votes(hi),
        st.builds(RequestVoteResponse, num, st.booleans(), st.booleans()),
        append_entries(hi),
        st.builds(AppendEntriesResponse, num, st.booleans(), num, num, num, num),
        install_snapshots(hi),
        st.builds(InstallSnapshotResponse, num, num, num, num),
        st.builds(TimeoutNow, st.integers(1, hi)),
    )


messages = message_strategy(2**63 - 1)
#: Messages with terms and indexes near a young cluster's, to reach deep paths.
near_messages = message_strategy(8)


@given(messages)
def test_every_message_round_trips(msg: RaftMessage) -> None:
    body = encode_message(msg)
    assert decode_message(body) == msg
    assert len(body) <= MAX_FRAME


@given(append_entries())
def test_append_entries_fast_path_matches_the_generic_codec(msg: AppendEntries) -> None:
    body = encode_message(msg)
    assert body == RAFT_CODEC.encode(msg)
    assert RAFT_CODEC.decode(body) == decode_message(body) == msg


def _decode_or_reject(body: bytes) -> None:
    try:
        msg = decode_message(body)
    except RemoteProtocolError:
        return
    # whatever decodes is a valid message that encodes back to an equal one
    assert decode_message(encode_message(msg)) == msg


@given(st.binary(max_size=200))
@example(b"")
@example(b"\x80")  # empty array
@example(b"\x81\x63abc")  # kind is a string
@example(b"\x81\x18\x63")  # unknown kind 99
@example(b"\x9f\x9f\x9f")  # unterminated indefinite arrays
@example(b"\xc1\x1b\xff\xff\xff\xff\xff\xff\xff\xff")  # tagged huge epoch
def test_random_bytes_raise_only_remote_protocol_error(body: bytes) -> None:
    _decode_or_reject(body)


@given(messages, st.data())
def test_mutated_encodings_raise_only_remote_protocol_error(
    msg: RaftMessage, data: st.DataObject
) -> None:
    body = bytearray(encode_message(msg))
    for _ in range(data.draw(st.integers(1, 4))):
        op = data.draw(st.sampled_from(["flip", "truncate", "insert", "delete"]))
        pos = data.draw(st.integers(0, max(len(body) - 1, 0)))
        if op == "flip" and body:
            body[pos] ^= 1 << data.draw(st.integers(0, 7))
        elif op == "truncate":
            del body[pos:]
        elif op == "insert":
            body.insert(pos, data.draw(st.integers(0, 255)))
        elif body:
            del body[pos]
    _decode_or_reject(bytes(body))


def _raw(msg: RaftMessage) -> list[object]:
    return RAFT_CODEC.to_wire(msg)


@pytest.mark.parametrize(
    "raw",
    [
        [1, 1, 0, 0, False],  # RequestVote: wrong arity
        [1, 1, 0, 0, False, False, 7],  # RequestVote: too many fields
        [1, "1", 0, 0, False, False],  # wrong type
        [1, 1, 0, 0, 0, False],  # int where a bool belongs
        [1, 0, 0, 0, False, False],  # term 0
        [1, 1, 0, 5, False, False],  # last log term from the future
        [99, 1],  # unknown kind
        [3, 1, -1, 0, 0, [], 0],  # negative prev_index
        [3, 1, 0, 0, 0, [[1, 2, 0, b""]], 0],  # entry not contiguous
        [3, 1, 0, 0, 0, [[2, 1, 0, b""]], 0],  # entry term above message term
        [3, 2, 0, 0, 0, [[2, 1, 0, b""], [1, 2, 0, b""]], 0],  # decreasing terms
        [3, 1, 0, 0, 0, [[1, 1, 7, b""]], 0],  # unknown entry kind
        [3, 1, 0, 0, 0, [[1, 1, 2, b"junk"]], 0],  # undecodable membership
        [3, 1, 0, 0, 0, [[1, 1, 2, cbor2.dumps([["a"], ["a"]])]], 0],  # voter and learner
        [3, 1, 0, 0, 0, [[1, 1, 0, "text"]], 0],  # str payload
        [3, 1, 0, 0, 0, [1, 1, 0, b""], 0],  # entry not an array
        [3, 1, 0, 0, 0, [[1, 1, 0]], 0],  # entry arity
        [3, 1, 0, 0, 0, [[1, 1, True, b""]], 0],  # bool kind
        [3, 1, 0, 0, 0, [[1, 1, None, b""]], 0],  # null kind
        [3, 1, 0, 0, 0, [[1.0, 1, 0, b""]], 0],  # float term
        [3, 1, 0, 0, 0, [], 0, 0],  # AppendEntries arity
        [3, 1, 0, 0, 0, (), True],  # bool seq
        [3, 1, 0, 0, 0, {}, 0],  # map for entries
        [4, 1, True, -3, 0, 0, 0],  # negative index
        [5, 1, 1, 1, [["a"], []], 5, 4, b"x"],  # chunk beyond total
        [5, 1, 1, 1, [[], ["a"]], 0, 1, b"x"],  # snapshot without voters
        [5, 1, 1, 1, [["a"], [1]], 0, 1, b"x"],  # non-string member
        [7, 0],  # TimeoutNow term 0
        [6, 1, 1, 1, -1],
        [2, -1, True, False],
    ],
)
def test_semantically_bad_messages_are_rejected(raw: list[object]) -> None:
    with pytest.raises(RemoteProtocolError):
        decode_message(cbor2.dumps(raw))


def test_non_message_top_level_values_are_rejected() -> None:
    for value in (None, 5, "x", {"a": 1}, [], [None]):
        with pytest.raises(RemoteProtocolError):
            decode_message(cbor2.dumps(value))


def test_oversized_body_is_rejected_before_parsing() -> None:
    with pytest.raises(RemoteProtocolError):
        decode_message(b"\x00" * (MAX_FRAME + 1))
    dec = FrameDecoder(max_frame=MAX_FRAME)
    with pytest.raises(RemoteProtocolError):
        dec.feed((MAX_FRAME + 1).to_bytes(4, "big"))


def test_truncated_frame_is_rejected() -> None:
    frame = encode_frame(encode_message(TimeoutNow(3)))
    dec = FrameDecoder(max_frame=MAX_FRAME)
    assert dec.feed(frame[:-1]) == []
    with pytest.raises(RemoteProtocolError):
        dec.eof()


def test_encoding_a_foreign_object_is_a_local_error() -> None:
    with pytest.raises(LocalProtocolError):
        RAFT_CODEC.encode(HardState(1, None, 0))


@given(st.lists(st.integers(0, 300), min_size=1, max_size=60), st.integers(1, 2**40))
def test_entry_overhead_bounds_the_encoded_size(sizes: list[int], term: int) -> None:
    """An AppendEntries never exceeds its payload plus ENTRY_OVERHEAD per entry and a header."""
    start = 2**40
    entries = tuple(Entry(term, start + i, EntryKind.NORMAL, b"x" * n) for i, n in enumerate(sizes))
    msg = AppendEntries(term, start - 1, term, 2**40, entries, 2**40)
    assert len(encode_message(msg)) <= sum(sizes) + ENTRY_OVERHEAD * len(sizes) + 64


def test_largest_append_and_snapshot_chunk_fit_in_a_frame() -> None:
    cfg = RaftConfig(max_append_bytes=MAX_FRAME // 2, snapshot_chunk_bytes=MAX_FRAME // 2)
    with pytest.raises(ValueError, match="max_append_bytes"):
        RaftConfig(max_append_bytes=MAX_FRAME)
    with pytest.raises(ValueError, match="snapshot_chunk_bytes"):
        RaftConfig(snapshot_chunk_bytes=MAX_FRAME)
    voters = ["a", "b"]
    node = RaftNode(
        "a", cfg, rng=random.Random(0), now=0.0, persisted=PersistedState.bootstrap(voters)
    )
    node.handle_timer(10.0)
    node.drain()
    node.receive(RequestVoteResponse(1, True, True), src="b", now=10.0)
    node.drain()
    node.receive(RequestVoteResponse(1, True, False), src="b", now=10.0)
    node.drain()
    node.receive(AppendEntriesResponse(1, True, 1, 0, 0, 0), src="b", now=10.0)
    node.drain()
    payload = b"p" * (64 * 1024)
    node.propose_batch([payload] * 200, 10.0)  # 12.5 MiB: more than one message
    msgs = [m for _, m in node.drain().messages if isinstance(m, AppendEntries)]
    assert len(msgs) >= 2
    for m in msgs:
        assert len(encode_message(m)) <= MAX_FRAME
    big = InstallSnapshot(
        1, 5, 1, Membership(frozenset(voters), frozenset()), 0, 2**40, b"s" * (MAX_FRAME // 2)
    )
    assert len(encode_message(big)) <= MAX_FRAME


def _node_in_role(role: str) -> RaftNode:
    cfg = RaftConfig(pre_vote=role == "pre", snapshot_chunk_bytes=8)
    boot = PersistedState.bootstrap(["a", "b", "c"])
    node = RaftNode("a", cfg, rng=random.Random(1), now=0.0, persisted=boot)
    if role == "follower":
        return node
    node.handle_timer(5.0)
    node.drain()
    if role in ("candidate", "pre"):
        return node
    node.receive(RequestVoteResponse(1, True, False), src="b", now=5.0)
    node.drain()
    node.propose_batch([b"x"] * 5, 5.0)
    node.drain()
    node.receive(AppendEntriesResponse(1, True, 6, 0, 0, 0), src="b", now=5.0)
    node.drain()
    node.compact(6, b"snapshot-data")
    node.drain()
    return node


@given(
    st.sampled_from(["follower", "candidate", "pre", "leader"]),
    st.lists(
        st.tuples(st.sampled_from(["a", "b", "c", "zz"]), st.one_of(near_messages, messages)),
        max_size=12,
    ),
)
def test_hostile_messages_never_raise_out_of_receive(
    role: str, inbox: list[tuple[str, RaftMessage]]
) -> None:
    node = _node_in_role(role)
    now = 6.0
    for src, msg in inbox:
        term = node.term
        node.receive(msg, src=src, now=now)
        node.handle_timer(now)
        node.drain()
        now += 0.05
        assert node.term >= term
        assert node.snapshot_index <= node.applied_index <= node.commit_index <= node.last_index
        assert node.log_term(node.last_index) is not None
