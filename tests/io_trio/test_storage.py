"""Durable Raft storage: equivalence with DurableLog, recovery rules, compaction, group commit."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import pytest
import trio
from hypothesis import given
from hypothesis import strategies as st

from dkron.io_trio.storage import (
    HEADER_SIZE,
    CorruptRecordError,
    RaftStorage,
    StorageError,
    StoreInUseError,
    SyncRaftStorage,
    scan_records,
)
from dkron.proto_sansio.errors import LocalProtocolError
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
    encode_membership,
)

MEMBERS = Membership(frozenset({"a", "b", "c"}), frozenset({"d"}))


def entries(first: int, count: int, term: int, tag: bytes = b"") -> tuple[Entry, ...]:
    return tuple(
        Entry(term, i, EntryKind.NORMAL, tag + i.to_bytes(4, "big") * 25)
        for i in range(first, first + count)
    )


def snapshot(index: int, term: int, data: bytes = b"state") -> SaveSnapshot:
    return SaveSnapshot(Snapshot(index, term, MEMBERS, data + index.to_bytes(8, "big")))


def reopen(path: Path) -> PersistedState:
    store, state = SyncRaftStorage.open(path)
    store.close()
    return state


def segments(path: Path) -> list[Path]:
    return sorted(path.glob("log-*.seg"))


class Harness:
    """A store and the reference model fed the same batches."""

    def __init__(self, path: Path, initial: PersistedState, segment_bytes: int = 1 << 20) -> None:
        self.path = path
        self.segment_bytes = segment_bytes
        self.store, state = SyncRaftStorage.open(path, initial=initial, segment_bytes=segment_bytes)
        self.model = DurableLog(initial)
        assert state == self.model.state()

    def persist(self, records: Sequence[PersistRecord]) -> None:
        self.store.persist(records)
        for r in records:
            self.model.apply(r)

    def reopen(self) -> PersistedState:
        self.store.close()
        self.store, state = SyncRaftStorage.open(self.path, segment_bytes=self.segment_bytes)
        return state

    def close(self) -> None:
        self.store.close()


@pytest.fixture
def raft_dir(tmp_path: Path) -> Path:
    return tmp_path / "data" / "raft"


# ---------------------------------------------------------------------------
# equivalence with the reference model
# ---------------------------------------------------------------------------


@st.composite
def record(draw: st.DrawFn, model: DurableLog) -> PersistRecord:
    state = model.state()
    base = state.snapshot.index if state.snapshot is not None else 0
    last = model.last_index
    kind = draw(st.sampled_from(["append", "append", "append", "hard", "snapshot"]))
    if kind == "append":
        first = draw(st.integers(max(1, base - 2), last + 1))
        count = draw(st.integers(0, 6))
        term = draw(st.integers(1, 4))
        config = draw(st.booleans()) and count > 0
        out = list(entries(first, count, term, tag=b"h"))
        if config:
            out[0] = Entry(term, first, EntryKind.CONFIG, encode_membership(MEMBERS))
        return AppendLog(tuple(out))
    if kind == "hard":
        return SaveHardState(
            HardState(
                draw(st.integers(0, 9)),
                draw(st.sampled_from([None, "a", "b"])),
                draw(st.integers(0, 50)),
            )
        )
    index = draw(st.integers(0, last + 3))
    terms = {e.index: e.term for e in state.entries}
    term = terms.get(index, 1) if draw(st.booleans()) else draw(st.integers(1, 4))
    return snapshot(index, term)


@given(
    data=st.data(),
    bootstrap=st.booleans(),
    segment_bytes=st.sampled_from([1, 300, 2000, 1 << 20]),
)
def test_store_is_equivalent_to_durable_log(
    data: st.DataObject, bootstrap: bool, segment_bytes: int
) -> None:
    initial = PersistedState.bootstrap(["a"]) if bootstrap else PersistedState.empty()
    with tempfile.TemporaryDirectory() as tmp:
        h = Harness(Path(tmp) / "raft", initial, segment_bytes)
        try:
            for _ in range(data.draw(st.integers(1, 25), label="batches")):
                batch: list[PersistRecord] = []
                for _ in range(data.draw(st.integers(1, 4), label="records")):
                    rec = data.draw(record(h.model))
                    batch.append(rec)
                    h.model.apply(rec)
                h.store.persist(batch)
                assert h.store.last_index == h.model.last_index
                if data.draw(st.integers(0, 4), label="reopen") == 0:
                    assert h.reopen() == h.model.state()
            assert h.reopen() == h.model.state()
        finally:
            h.close()


def test_empty_and_bootstrap_stores_reopen_as_created(raft_dir: Path) -> None:
    boot = PersistedState.bootstrap(["a", "b"])
    store, state = SyncRaftStorage.open(raft_dir, initial=boot)
    assert state == boot
    store.close()
    # What is on disk wins over a different initial state.
    store, state = SyncRaftStorage.open(raft_dir, initial=PersistedState.empty())
    assert state == boot
    store.close()
    other = raft_dir.parent / "other"
    assert reopen(other) == PersistedState.empty()


def test_initial_entries_are_persisted(raft_dir: Path) -> None:
    initial = PersistedState(HardState(2, "a", 3), None, entries(1, 3, 2))
    store, state = SyncRaftStorage.open(raft_dir, initial=initial)
    store.close()
    assert state == initial
    assert reopen(raft_dir) == initial


def test_truncation_overwrites_the_durable_tail(raft_dir: Path) -> None:
    h = Harness(raft_dir, PersistedState.empty())
    h.persist([AppendLog(entries(1, 10, 1)), SaveHardState(HardState(1, "a", 4))])
    h.persist([AppendLog(entries(6, 2, 2, tag=b"new"))])
    assert h.store.last_index == 7
    state = h.reopen()
    h.close()
    assert state == h.model.state()
    assert [e.term for e in state.entries] == [1] * 5 + [2, 2]


def test_gap_is_refused_before_anything_is_written(raft_dir: Path) -> None:
    h = Harness(raft_dir, PersistedState.empty())
    h.persist([AppendLog(entries(1, 3, 1))])
    size = segments(raft_dir)[-1].stat().st_size
    with pytest.raises(LocalProtocolError, match="gap"):
        h.store.persist([SaveHardState(HardState(5, None, 0)), AppendLog(entries(9, 1, 1))])
    bad = (Entry(1, 4, EntryKind.NORMAL, b"x"), Entry(1, 6, EntryKind.NORMAL, b"y"))
    with pytest.raises(LocalProtocolError, match="consecutive"):
        h.store.persist([AppendLog(bad)])
    assert segments(raft_dir)[-1].stat().st_size == size
    h.persist([AppendLog(entries(4, 1, 1))])  # still usable
    assert h.reopen() == h.model.state()
    h.close()


def test_a_second_opener_is_refused(raft_dir: Path) -> None:
    store, _ = SyncRaftStorage.open(raft_dir)
    try:
        with pytest.raises(StoreInUseError, match=str(raft_dir)):
            SyncRaftStorage.open(raft_dir)
    finally:
        store.close()
    reopen(raft_dir)


# ---------------------------------------------------------------------------
# recovery: torn tails and corruption
# ---------------------------------------------------------------------------


def build_then_tail(raft_dir: Path, last: Sequence[PersistRecord]) -> tuple[PersistedState, int]:
    """Persist a history, then ``last`` as the final batch; returns the state before it
    and the size of the active segment before it."""
    h = Harness(raft_dir, PersistedState.bootstrap(["a"]))
    h.persist([AppendLog(entries(1, 5, 1)), SaveHardState(HardState(1, "a", 2))])
    h.persist([AppendLog(entries(6, 3, 1)), SaveHardState(HardState(1, "a", 6))])
    before = h.model.state()
    size = segments(raft_dir)[-1].stat().st_size
    h.persist(last)
    h.close()
    return before, size


def copy_with_segment(src: Path, dst: Path, data: bytes) -> Path:
    if dst.exists():
        shutil.rmtree(dst)
    shutil.copytree(src, dst)
    seg = segments(dst)[-1]
    seg.write_bytes(data)
    return seg


def test_torn_tail_at_every_byte_offset_recovers_the_prefix(tmp_path: Path) -> None:
    src = tmp_path / "src"
    before, size = build_then_tail(src, [AppendLog(entries(9, 1, 2))])
    full = segments(src)[-1].read_bytes()
    assert len(full) > size + HEADER_SIZE
    work = tmp_path / "work"
    for cut in range(size, len(full)):
        seg = copy_with_segment(src, work, full[:cut])
        store, state = SyncRaftStorage.open(work)
        assert state == before, cut
        assert store.recovery.torn_file == (seg if cut > size else None)
        assert store.recovery.torn_bytes == cut - size
        store.close()
        assert seg.stat().st_size == size  # the torn bytes are gone for good
    whole = copy_with_segment(src, work, full)
    assert reopen(whole.parent).entries[-1].index == 9


def test_torn_multi_record_batch_is_dropped_whole(tmp_path: Path) -> None:
    """A crash can persist the pages of a batch out of order: a damaged first
    record followed by an intact record of the same batch is still a torn tail."""
    src = tmp_path / "src"
    last: list[PersistRecord] = [AppendLog(entries(9, 2, 2)), SaveHardState(HardState(2, "b", 9))]
    before, size = build_then_tail(src, last)
    full = bytearray(segments(src)[-1].read_bytes())
    records, bad = scan_records(bytes(full))
    assert bad is None and len([r for r in records if r.offset >= size]) == 2
    full[size + HEADER_SIZE + 3] ^= 0xFF  # damage the first record's body
    copy_with_segment(src, tmp_path / "work", bytes(full))
    assert reopen(tmp_path / "work") == before
    # Cutting the flagged last record off leaves an incomplete batch: dropped too.
    copy_with_segment(src, tmp_path / "cut", bytes(full[: records[-1].offset]))
    assert reopen(tmp_path / "cut") == before


def test_bad_checksum_in_the_last_record_is_a_torn_tail(tmp_path: Path) -> None:
    src = tmp_path / "src"
    before, _ = build_then_tail(src, [AppendLog(entries(9, 1, 2))])
    full = bytearray(segments(src)[-1].read_bytes())
    full[-1] ^= 0x01
    copy_with_segment(src, tmp_path / "work", bytes(full))
    assert reopen(tmp_path / "work") == before


def test_corrupted_middle_record_is_refused_naming_the_file(tmp_path: Path) -> None:
    src = tmp_path / "src"
    build_then_tail(src, [AppendLog(entries(9, 1, 2))])
    full = segments(src)[-1].read_bytes()
    records, _ = scan_records(full)
    victim = records[1]  # an entries record with later batches after it
    assert victim.type.name == "ENTRIES" and victim.batch < records[-1].batch
    for damage in (victim.offset + HEADER_SIZE + 5, victim.offset + 9, victim.offset):
        data = bytearray(full)
        data[damage] ^= 0x40
        seg = copy_with_segment(src, tmp_path / "work", bytes(data))
        with pytest.raises(CorruptRecordError) as err:
            SyncRaftStorage.open(tmp_path / "work")
        assert err.value.path == seg
        assert err.value.offset == victim.offset
        assert str(seg) in str(err.value) and str(victim.offset) in str(err.value)
        assert seg.read_bytes() == bytes(data)  # refused, not "repaired"


@given(data=st.data(), batches=st.integers(1, 8))
def test_damage_is_refused_or_repaired_never_misread(data: st.DataObject, batches: int) -> None:
    """Flip a byte or cut the active segment anywhere: the store either refuses
    to open naming the segment, or opens at the state after some batch; the
    state after the last-but-one batch is never lost to a damaged last batch."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "raft"
        h = Harness(path, PersistedState.bootstrap(["a"]))
        states = [h.model.state()]
        for _ in range(batches):
            batch: list[PersistRecord] = []
            for _ in range(data.draw(st.integers(1, 3), label="records")):
                batch.append(data.draw(record(h.model)))
                h.model.apply(batch[-1])
            h.store.persist(batch)
            if h.model.state() != states[-1]:  # a batch that changed nothing may write nothing
                states.append(h.model.state())
        h.close()
        seg = segments(path)[-1]
        raw = bytearray(seg.read_bytes())
        at = data.draw(st.integers(0, len(raw) - 1), label="offset")
        cut = data.draw(st.booleans(), label="cut")
        if cut:
            del raw[at:]
        else:
            raw[at] ^= data.draw(st.integers(1, 255), label="xor")
        seg.write_bytes(bytes(raw))
        try:
            state = reopen(path)
        except CorruptRecordError as err:
            assert err.path == seg
        except StorageError as err:
            # The damaged last batch had replaced the snapshot, and the old
            # file was deleted once that batch was durable: refusing is right.
            assert "named by the log is missing" in str(err)
        else:
            # A cut at a batch boundary looks like an older log; a flipped byte
            # can only cost the last batch (the one a crash may tear).
            assert state in (states if cut else states[-2:])


def test_damage_in_a_sealed_segment_is_refused(raft_dir: Path) -> None:
    h = Harness(raft_dir, PersistedState.empty(), segment_bytes=1)
    for i in range(1, 6):
        h.persist([AppendLog(entries(i, 1, 1))])
    h.close()
    segs = segments(raft_dir)
    assert len(segs) >= 3
    sealed = segs[-2]
    sealed.write_bytes(sealed.read_bytes()[:-1])
    with pytest.raises(CorruptRecordError) as err:
        SyncRaftStorage.open(raft_dir)
    assert err.value.path == sealed


def test_damaged_snapshot_file_is_refused(raft_dir: Path) -> None:
    h = Harness(raft_dir, PersistedState.empty())
    h.persist([AppendLog(entries(1, 4, 1)), snapshot(3, 1)])
    h.close()
    (snap,) = raft_dir.glob("snap-*.snap")
    data = bytearray(snap.read_bytes())
    data[-2] ^= 0x10
    snap.write_bytes(bytes(data))
    with pytest.raises(CorruptRecordError) as err:
        SyncRaftStorage.open(raft_dir)
    assert err.value.path == snap
    snap.unlink()
    with pytest.raises(StorageError, match="is missing"):
        SyncRaftStorage.open(raft_dir)


def test_a_missing_segment_that_still_holds_entries_is_refused(raft_dir: Path) -> None:
    h = Harness(raft_dir, PersistedState.empty(), segment_bytes=1)
    for i in range(1, 5):
        h.persist([AppendLog(entries(i, 1, 1))])
    h.close()
    segs = segments(raft_dir)
    segs[1].unlink()
    with pytest.raises(StorageError, match="log entry 1 is missing"):
        SyncRaftStorage.open(raft_dir)
    assert segments(raft_dir) == [segs[0], *segs[2:]]  # nothing deleted on refusal


def test_segments_before_a_gap_are_leftovers_of_compaction(raft_dir: Path) -> None:
    """Compaction unlinks old segments oldest first; if only some of the unlinks
    were durable, the survivors before the gap hold nothing still needed."""
    h = Harness(raft_dir, PersistedState.empty(), segment_bytes=1)
    saved = {}
    for i in range(1, 8):
        h.persist([AppendLog(entries(i, 1, 1))])
        saved.update({p.name: p.read_bytes() for p in segments(raft_dir)})
    h.persist([snapshot(6, 1)])
    h.close()
    kept = segments(raft_dir)
    (raft_dir / "log-00000000000000000002.seg").write_bytes(saved["log-00000000000000000002.seg"])
    store, state = SyncRaftStorage.open(raft_dir)
    store.close()
    assert state == h.model.state()
    assert store.recovery.removed == (raft_dir / "log-00000000000000000002.seg",)
    assert segments(raft_dir) == kept


def test_leftovers_of_interrupted_writes_are_removed(raft_dir: Path) -> None:
    h = Harness(raft_dir, PersistedState.empty())
    h.persist([AppendLog(entries(1, 4, 1)), snapshot(2, 1)])
    h.close()
    junk = [
        raft_dir / "log-00000000000000000002.seg.tmp",
        raft_dir / "snap-00000000000000000004-00000000000000000001.snap.tmp",
        # written and renamed, but the batch naming it never became durable
        raft_dir / "snap-00000000000000000004-00000000000000000001.snap",
    ]
    for p in junk:
        p.write_bytes(b"partial")
    store, state = SyncRaftStorage.open(raft_dir)
    store.close()
    assert state == h.model.state()
    assert set(store.recovery.removed) == set(junk)
    assert not any(p.exists() for p in junk)


def test_failed_fsync_makes_the_store_refuse_further_writes(
    raft_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    h = Harness(raft_dir, PersistedState.empty())
    h.persist([AppendLog(entries(1, 2, 1))])

    def broken(fd: int) -> None:
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(os, "fsync", broken)
    with pytest.raises(OSError, match="Input/output"):
        h.store.persist([AppendLog(entries(3, 1, 1))])
    monkeypatch.undo()
    with pytest.raises(StorageError, match="restart"):
        h.store.persist([AppendLog(entries(3, 1, 1))])
    state = h.reopen()
    h.close()
    assert [e.index for e in state.entries][:2] == [1, 2]


# ---------------------------------------------------------------------------
# snapshots and compaction
# ---------------------------------------------------------------------------


def test_snapshot_compacts_segments_and_old_snapshots(raft_dir: Path) -> None:
    h = Harness(raft_dir, PersistedState.bootstrap(["a"]), segment_bytes=2000)
    term = 1
    high_water = 0
    for rnd in range(40):
        first = h.store.last_index + 1
        h.persist([AppendLog(entries(first, 8, term)), SaveHardState(HardState(term, "a", first))])
        if rnd % 4 == 3:
            at = h.store.last_index - 2
            h.persist([snapshot(at, term)])
            assert len(list(raft_dir.glob("snap-*.snap"))) == 1
            high_water = max(high_water, len(segments(raft_dir)))
        if rnd % 10 == 9:
            term += 1
    # Roughly 32 entries per snapshot period at ~140 bytes each: a couple of
    # 2 kB segments live at once, not the ~25 the log was written into.
    assert segments(raft_dir)[0].name != "log-00000000000000000001.seg"
    assert high_water <= 5
    state = h.reopen()
    h.close()
    assert state == h.model.state()
    assert state.snapshot is not None and state.snapshot.index == 318
    assert [e.index for e in state.entries] == [319, 320]
    assert not list(raft_dir.glob("*.tmp"))


def test_snapshot_beyond_the_log_discards_it(raft_dir: Path) -> None:
    """A follower installing the leader's snapshot replaces a conflicting log."""
    h = Harness(raft_dir, PersistedState.empty(), segment_bytes=1)
    h.persist([AppendLog(entries(1, 5, 1))])
    h.persist([snapshot(9, 3)])
    h.persist([AppendLog(entries(10, 2, 3))])
    state = h.reopen()
    h.close()
    assert state == h.model.state()
    assert state.snapshot is not None and state.snapshot.index == 9
    assert [e.index for e in state.entries] == [10, 11]
    assert len(segments(raft_dir)) == 1


def test_stale_snapshot_is_ignored_like_durable_log(raft_dir: Path) -> None:
    h = Harness(raft_dir, PersistedState.empty())
    h.persist([AppendLog(entries(1, 6, 1)), snapshot(4, 1)])
    h.persist([snapshot(2, 1)])
    state = h.reopen()
    h.close()
    assert state == h.model.state()
    assert state.snapshot is not None and state.snapshot.index == 4


def test_two_snapshots_in_one_batch_leave_one_file(raft_dir: Path) -> None:
    h = Harness(raft_dir, PersistedState.empty())
    h.persist([AppendLog(entries(1, 6, 1)), snapshot(2, 1), snapshot(5, 1)])
    assert [p.name for p in raft_dir.glob("snap-*.snap")] == [
        "snap-00000000000000000005-00000000000000000001.snap"
    ]
    assert h.reopen() == h.model.state()
    h.close()


# ---------------------------------------------------------------------------
# group commit
# ---------------------------------------------------------------------------


@pytest.fixture
def fsyncs(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[int]]:
    calls: list[int] = []
    real: Callable[[int], None] = os.fsync

    def counting(fd: int) -> None:
        calls.append(fd)
        real(fd)

    monkeypatch.setattr(os, "fsync", counting)
    yield calls


def test_a_batch_costs_one_fsync(raft_dir: Path, fsyncs: list[int]) -> None:
    h = Harness(raft_dir, PersistedState.empty())
    fsyncs.clear()
    batch: list[PersistRecord] = [AppendLog(entries(i, 1, 1)) for i in range(1, 1001)]
    batch.append(SaveHardState(HardState(1, "a", 1000)))
    h.persist(batch)
    assert len(fsyncs) == 1
    h.persist([AppendLog(entries(1001, 1000, 1)), SaveHardState(HardState(1, "a", 2000))])
    assert len(fsyncs) == 2
    h.persist([])
    h.persist([AppendLog(())])
    assert len(fsyncs) == 2  # nothing to write, nothing to sync
    assert h.reopen() == h.model.state()
    h.close()


async def test_async_wrapper_group_commits_in_a_worker_thread(
    raft_dir: Path, fsyncs: list[int]
) -> None:
    storage, state = await RaftStorage.open(raft_dir, initial=PersistedState.bootstrap(["a"]))
    assert state == PersistedState.bootstrap(["a"])
    fsyncs.clear()
    done: list[int] = []

    async def writer(k: int) -> None:
        await storage.persist([AppendLog(entries(1 + 10 * k, 10, 1))])
        done.append(k)

    # Serialized: writers 0..4 in order (each one after the previous one's durable).
    for k in range(5):
        await writer(k)
    with trio.move_on_after(0) as scope:  # cancelled before it can start
        await storage.persist([AppendLog(entries(51, 1, 1))])
    assert scope.cancelled_caught
    await storage.aclose()
    assert done == [0, 1, 2, 3, 4]
    assert len(fsyncs) == 5
    assert reopen(raft_dir).entries[-1].index == 50
