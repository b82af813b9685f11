"""Wire codec of the Raft RPC messages.

Raft messages travel between servers as length-prefixed frames
(:mod:`dkron.proto_sansio.framing`) whose body is one CBOR array
``[kind, field...]`` produced by the schema-directed :class:`Codec`.  Nested
structs (entries, memberships) are encoded by the codec from their type hints.

Frame size: Raft uses the framing default, ``MAX_FRAME`` = 16 MiB.
:class:`~dkron.proto_sansio.raft.RaftConfig` caps ``max_append_bytes`` and
``snapshot_chunk_bytes`` at half of that, and batches are sized counting
``ENTRY_OVERHEAD`` bytes per entry on top of its payload (an upper bound of
the CBOR overhead), so an AppendEntries or an InstallSnapshot chunk always
fits in one frame with room for its header and the membership.

Decoding is strict: malformed CBOR, wrong types or arity, unknown kinds and
semantically impossible values (negative indexes, non-contiguous entries,
terms from the future...) all raise
:class:`~dkron.proto_sansio.errors.RemoteProtocolError` and nothing else.

AppendEntries carries nearly all the bytes and all the entries, so it has a
hand-written encoder and decoder that produce and accept exactly what the
generic codec does (the tests check byte-for-byte equality) at a fraction of
the per-entry cost.  Every other message goes through :data:`RAFT_CODEC`.
"""

from __future__ import annotations

from typing import Any

import cbor2

from dkron.proto_sansio.errors import RemoteProtocolError
from dkron.proto_sansio.framing import DEFAULT_MAX_FRAME
from dkron.proto_sansio.raft import (
    AppendEntries,
    AppendEntriesResponse,
    Entry,
    EntryKind,
    InstallSnapshot,
    InstallSnapshotResponse,
    RaftMessage,
    RequestVote,
    RequestVoteResponse,
    TimeoutNow,
)
from dkron.proto_sansio.wire import Codec

__all__ = ["MAX_FRAME", "RAFT_CODEC", "decode_message", "encode_message"]

#: Largest Raft frame body accepted or produced.
MAX_FRAME = DEFAULT_MAX_FRAME

RAFT_CODEC = Codec(
    {
        1: RequestVote,
        2: RequestVoteResponse,
        3: AppendEntries,
        4: AppendEntriesResponse,
        5: InstallSnapshot,
        6: InstallSnapshotResponse,
        7: TimeoutNow,
    }
)


_APPEND_KIND = 3
_KINDS = {k.value: k for k in EntryKind}


def encode_message(msg: RaftMessage) -> bytes:
    """The frame body of one Raft message."""
    if type(msg) is AppendEntries:
        return cbor2.dumps(
            [
                _APPEND_KIND,
                msg.term,
                msg.prev_index,
                msg.prev_term,
                msg.commit,
                [[e.term, e.index, e.kind.value, e.data] for e in msg.entries],
                msg.seq,
            ]
        )
    return RAFT_CODEC.encode(msg)


def _decode_append(raw: list[Any]) -> AppendEntries:
    if len(raw) != 7:
        raise RemoteProtocolError(f"AppendEntries: expected 6 fields, got {len(raw) - 1}")
    _, term, prev_index, prev_term, commit, wire_entries, seq = raw
    if (
        type(term) is not int
        or type(prev_index) is not int
        or type(prev_term) is not int
        or type(commit) is not int
        or type(seq) is not int
        or type(wire_entries) is not list
    ):
        raise RemoteProtocolError("AppendEntries: wrong field types")
    kinds = _KINDS
    entries = []
    try:
        for w in wire_entries:
            if type(w) is not list or len(w) != 4:
                raise RemoteProtocolError("Entry: expected a 4-element array")
            t, i, k, d = w
            if type(t) is not int or type(i) is not int or type(d) is not bytes:
                raise RemoteProtocolError("Entry: wrong field types")
            kind = kinds.get(k) if type(k) is int else None
            if kind is None:
                raise RemoteProtocolError(f"Entry: invalid kind {k!r}")
            entries.append(Entry(t, i, kind, d))
        return AppendEntries(term, prev_index, prev_term, commit, tuple(entries), seq)
    except (TypeError, ValueError) as exc:  # validation in __post_init__
        raise RemoteProtocolError(f"AppendEntries: {exc}") from None


def decode_message(body: bytes) -> RaftMessage:
    """Parse and validate one frame body; anything wrong raises RemoteProtocolError."""
    if len(body) > MAX_FRAME:
        raise RemoteProtocolError(f"Raft message of {len(body)} bytes exceeds {MAX_FRAME}")
    try:
        raw = cbor2.loads(body)
    except Exception as exc:  # the parser's failure modes are many; all are the peer's
        raise RemoteProtocolError(f"undecodable CBOR: {exc}") from None
    if type(raw) is list and raw and type(raw[0]) is int and raw[0] == _APPEND_KIND:
        return _decode_append(raw)
    msg = RAFT_CODEC.from_wire(raw)
    if not isinstance(
        msg,
        RequestVote
        | RequestVoteResponse
        | AppendEntries
        | AppendEntriesResponse
        | InstallSnapshot
        | InstallSnapshotResponse
        | TimeoutNow,
    ):
        raise RemoteProtocolError(f"not a Raft message: {type(msg).__name__}")
    return msg
