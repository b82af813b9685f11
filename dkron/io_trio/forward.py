"""Requests between servers on the RPC port's request channel.

Any server accepts API writes; a follower forwards them to the Raft leader
as a :class:`Request` and waits for the matching :class:`Reply` (Dkron does
the same over gRPC).  A forwarded proposal is answered with the index it was
committed at, not with its result: the follower waits until it has applied
that index itself and reads the result from its own replica, so a client
that writes through a follower reads its own write there afterwards.
"""

from __future__ import annotations

import dataclasses
import enum

from dkron.proto_sansio.wire import Codec

__all__ = ["FORWARD_CODEC", "Op", "Reply", "Request"]


class Op(enum.IntEnum):
    PROPOSE = 1  # body: an encoded command; answered with the committed index
    CANCEL = 2  # body: CBOR [job, group, node, attempt]; answered with CBOR bool
    REMOVE_PEER = 3  # body: the node name; answered with CBOR bool
    RAFT_CONFIG = 4  # body empty; answered with CBOR [voters..., learners...] (any server)
    LIVE_OUTPUT = (
        5  # body: CBOR [job, group, node, attempt, after_seq, wait_s]; CBOR [[seq, bytes]]
    )
    RECENT_OUTPUT = 6  # body: CBOR [[job, group, node, attempt], ...]; CBOR [bytes, ...]


@dataclasses.dataclass(frozen=True, slots=True)
class Request:
    id: int
    op: Op
    body: bytes


@dataclasses.dataclass(frozen=True, slots=True)
class Reply:
    id: int
    ok: bool
    error: str
    index: int
    body: bytes
    leader: str | None


FORWARD_CODEC = Codec({1: Request, 2: Reply})
