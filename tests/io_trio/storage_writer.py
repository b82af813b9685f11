"""Write Raft records to a store under load and report each durable batch.

``python tests/io_trio/storage_writer.py DIR SEED`` opens (or creates) the
store in DIR and persists batch after batch: appends of 1-40 entries of 100
bytes, now and then a truncation of the tail under a new term or a
snapshot, and a hard state whose ``commit`` field is the batch number.  After
each ``persist`` returns it prints ``<batch> <last index>``.  The crash test
kills it with SIGKILL and checks that the reopened store holds exactly the
state after some batch at least as recent as the last one printed.

Batch ``k`` is a pure function of ``(seed, k, state before k)``, so a writer
restarted on a recovered store continues the same history, and the test can
recompute the expected state with :class:`DurableLog`.  The writer stops by
itself after ``MAX_SECONDS`` in case nobody kills it.
"""

from __future__ import annotations

import hashlib
import sys
from random import Random

import trio

from dkron.io_trio.storage import RaftStorage
from dkron.proto_sansio.raft import (
    AppendLog,
    DurableLog,
    Entry,
    EntryKind,
    HardState,
    Membership,
    PersistedState,
    PersistRecord,
    SaveHardState,
    SaveSnapshot,
    Snapshot,
)

MAX_SECONDS = 120.0
SEGMENT_BYTES = 64 * 1024
INITIAL = PersistedState.bootstrap(["w"])
MEMBERS = Membership(frozenset({"w"}), frozenset())


def payload(batch: int, index: int) -> bytes:
    """100 bytes that identify the batch and index that wrote them."""
    return hashlib.blake2b(f"{batch}:{index}".encode(), digest_size=50).digest() * 2


def make_batch(k: int, state: PersistedState, seed: int) -> list[PersistRecord]:
    rng = Random(seed * 1_000_003 + k)
    base = state.snapshot.index if state.snapshot is not None else 0
    last = base + len(state.entries)
    term = max(1, state.hard_state.term)
    first = last + 1
    if state.entries and rng.random() < 0.08:
        first = max(base + 1, last - rng.randint(0, 3))
        term += 1
    count = rng.randint(1, 40)
    new = tuple(
        Entry(term, i, EntryKind.NORMAL, payload(k, i)) for i in range(first, first + count)
    )
    records: list[PersistRecord] = [AppendLog(new)]
    terms = {e.index: e.term for e in state.entries if e.index < first}
    terms.update((e.index, e.term) for e in new)
    roll = rng.random()
    if roll < 0.01:
        # a follower installing a leader's snapshot that is ahead of its log
        at = new[-1].index + 3
        records.append(SaveSnapshot(Snapshot(at, term, MEMBERS, b"ahead %d" % k)))
    elif roll < 0.06:
        at = rng.randint(max(base + 1, new[-1].index - 5), new[-1].index)
        records.append(SaveSnapshot(Snapshot(at, terms[at], MEMBERS, b"state %d" % k * 50)))
    records.append(SaveHardState(HardState(term, "w", k)))
    return records


async def main(directory: str, seed: int) -> None:
    storage, persisted = await RaftStorage.open(
        directory, initial=INITIAL, segment_bytes=SEGMENT_BYTES
    )
    mirror = DurableLog(persisted)
    k = persisted.hard_state.commit
    with trio.move_on_after(MAX_SECONDS):
        while True:
            k += 1
            records = make_batch(k, mirror.state(), seed)
            await storage.persist(records)
            for r in records:
                mirror.apply(r)
            sys.stdout.write(f"{k} {mirror.last_index}\n")
            sys.stdout.flush()
    await storage.aclose()


if __name__ == "__main__":
    trio.run(main, sys.argv[1], int(sys.argv[2]))
