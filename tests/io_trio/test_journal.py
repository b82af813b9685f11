"""The run journal on real files: batches, reloads, torn tails, compaction, the old layout."""

from __future__ import annotations

import dataclasses
import os
import pathlib
import random
import struct
import zlib

import cbor2
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dkron.io_trio.journal import RunJournal
from dkron.model import Execution
from dkron.proto_sansio.execution import RunKey


def ex(i: int, attempt: int = 1) -> Execution:
    return Execution(
        f"job-{i % 7}",
        1_700_000_000_000_000_000 + i,
        "node1",
        group=1_700_000_000_000_000_000 + i,
        attempt=attempt,
        scheduled_time=1_700_000_000_000_000_000 + i,
        trigger="schedule",
    )


def key(e: Execution) -> RunKey:
    return RunKey(e.job_name, e.group, e.node_name, e.attempt)


def reopen(path: pathlib.Path, **kw: int) -> list[Execution]:
    journal = RunJournal(path, **kw)
    try:
        return journal.load()
    finally:
        journal.close()


def test_empty_directory_loads_nothing(tmp_path: pathlib.Path) -> None:
    assert reopen(tmp_path / "runs") == []
    assert (tmp_path / "runs").is_dir()


def test_added_attempts_survive_a_reopen_and_forgotten_ones_do_not(
    tmp_path: pathlib.Path,
) -> None:
    journal = RunJournal(tmp_path)
    journal.load()
    started = [ex(i) for i in range(10)]
    journal.add_many(started)
    journal.forget_many([key(started[2]), key(started[5])])
    journal.add(ex(99, attempt=2))
    journal.forget(key(started[0]))
    journal.close()
    expected = [e for i, e in enumerate(started) if i not in (0, 2, 5)] + [ex(99, attempt=2)]
    assert reopen(tmp_path) == expected


def test_writing_before_load_replays_the_journal_first(tmp_path: pathlib.Path) -> None:
    first = RunJournal(tmp_path)
    first.add(ex(1))
    first.close()
    second = RunJournal(tmp_path)
    second.add(ex(2))  # no explicit load: the existing entry must not be lost
    second.forget(key(ex(3)))  # unknown: nothing to write
    second.close()
    assert reopen(tmp_path) == [ex(1), ex(2)]


def test_forgetting_unknown_keys_writes_nothing(tmp_path: pathlib.Path) -> None:
    journal = RunJournal(tmp_path)
    journal.load()
    size = journal.file.stat().st_size
    journal.forget_many([key(ex(1))])
    journal.add_many([])
    journal.close()
    assert journal.file.stat().st_size == size


@pytest.mark.parametrize("cut", [1, 3, 8, 9, 20])
def test_a_torn_last_record_is_dropped_and_the_file_repaired(
    tmp_path: pathlib.Path, cut: int
) -> None:
    journal = RunJournal(tmp_path)
    journal.load()
    journal.add_many([ex(1), ex(2)])
    size = journal.file.stat().st_size
    journal.add(ex(3))
    journal.close()
    full = journal.file.stat().st_size
    assert full - size > 20
    with journal.file.open("r+b") as fh:
        fh.truncate(full - cut)  # the last record's write was torn by a crash
    assert reopen(tmp_path) == [ex(1), ex(2)]
    # The tear is gone from the file: appending after it must not hide new records.
    journal = RunJournal(tmp_path)
    journal.load()
    journal.add(ex(4))
    journal.close()
    assert reopen(tmp_path) == [ex(1), ex(2), ex(4)]


def test_a_corrupted_last_record_is_dropped(tmp_path: pathlib.Path) -> None:
    journal = RunJournal(tmp_path)
    journal.load()
    journal.add_many([ex(1), ex(2)])
    journal.close()
    data = bytearray(journal.file.read_bytes())
    data[-3] ^= 0xFF  # garbage where the checksum does not match
    journal.file.write_bytes(bytes(data))
    assert reopen(tmp_path) == [ex(1)]


def test_garbage_after_the_last_record_is_dropped(tmp_path: pathlib.Path) -> None:
    journal = RunJournal(tmp_path)
    journal.load()
    journal.add(ex(1))
    journal.close()
    with journal.file.open("ab") as fh:
        fh.write(b"\xff\xff\xff\xff\x00\x00\x00\x00zz")  # an absurd length
    assert reopen(tmp_path) == [ex(1)]


def test_a_checksummed_record_of_the_wrong_shape_stops_the_replay(
    tmp_path: pathlib.Path,
) -> None:
    journal = RunJournal(tmp_path)
    journal.load()
    journal.add(ex(1))
    journal.close()
    for payload in (cbor2.dumps([7, 1]), cbor2.dumps("x"), cbor2.dumps([2, 1, "g", "n", 1])):
        with journal.file.open("ab") as fh:
            fh.write(struct.pack("<II", len(payload), zlib.crc32(payload)) + payload)
        assert reopen(tmp_path) == [ex(1)]


def test_compaction_keeps_only_live_attempts(tmp_path: pathlib.Path) -> None:
    journal = RunJournal(tmp_path, compact_after=50)
    journal.load()
    live: list[Execution] = []
    for batch in range(40):
        started = [ex(batch * 10 + i) for i in range(10)]
        journal.add_many(started)
        journal.forget_many([key(e) for e in started[:9]])
        live.append(started[9])
        # Compaction bounds the file: never more than the threshold plus a batch of dead records.
        assert journal.file.stat().st_size < 200 * (50 + 2 * len(live) + 20)
    journal.close()
    assert len(journal) == 40
    assert reopen(tmp_path, compact_after=50) == live
    assert not (tmp_path / "journal.tmp").exists()


def test_a_leftover_temporary_file_from_a_crashed_compaction_is_ignored(
    tmp_path: pathlib.Path,
) -> None:
    journal = RunJournal(tmp_path)
    journal.load()
    journal.add(ex(1))
    journal.close()
    (tmp_path / "journal.tmp").write_bytes(b"half a compaction")
    assert reopen(tmp_path) == [ex(1)]


def test_entries_of_the_one_file_per_attempt_layout_are_folded_in(
    tmp_path: pathlib.Path,
) -> None:
    old = ex(1)
    (tmp_path / "1-1-42.run").write_bytes(cbor2.dumps(list(dataclasses.astuple(old))))
    (tmp_path / "2-1-43.run").write_bytes(b"\x9f torn")
    journal = RunJournal(tmp_path)
    assert journal.load() == [old]
    journal.add(ex(2))
    journal.close()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["journal.log"]
    assert reopen(tmp_path) == [old, ex(2)]


def test_a_failed_write_reloads_before_the_next_one(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    journal = RunJournal(tmp_path)
    journal.load()
    journal.add(ex(1))
    real_write = os.write

    def torn_write(fd: int, data: bytes | memoryview) -> int:
        real_write(fd, bytes(data)[:5])  # part of the batch reaches the file ...
        raise OSError(28, "No space left on device")  # ... then the disk is full

    monkeypatch.setattr(os, "write", torn_write)
    with pytest.raises(OSError):
        journal.add(ex(2))
    monkeypatch.setattr(os, "write", real_write)
    journal.add(ex(3))
    journal.close()
    assert reopen(tmp_path) == [ex(1), ex(3)]


def test_bad_arguments_are_refused(tmp_path: pathlib.Path) -> None:
    with pytest.raises(ValueError, match="compact_after"):
        RunJournal(tmp_path, compact_after=0)


ops = st.lists(
    st.tuples(st.sampled_from(["add", "forget", "reopen", "tear"]), st.integers(0, 30)),
    max_size=60,
)


def _examples() -> int:
    """A third of the active profile's budget: every example touches real files."""
    current = settings.default
    return max(10, (current.max_examples if current is not None else 30) // 3)


@settings(deadline=None, max_examples=_examples())
@given(ops=ops, compact_after=st.integers(1, 20), seed=st.integers(0, 2**32 - 1))
def test_reload_after_many_adds_and_forgets_matches_a_model(
    tmp_path_factory: pytest.TempPathFactory,
    ops: list[tuple[str, int]],
    compact_after: int,
    seed: int,
) -> None:
    """Whatever sequence of batches, reopens and torn unsynced tails: load() is the model.

    A "tear" cuts a random number of bytes off the end of the file, but only
    off what the last call wrote when that was an un-fsync'd forget batch:
    acknowledged (fsync'd) starts are never torn by a crash.  The torn
    forgets come back to life, exactly as the model says.
    """
    rng = random.Random(seed)
    path = tmp_path_factory.mktemp("journal")
    journal = RunJournal(path, compact_after=compact_after)
    journal.load()
    model: dict[RunKey, Execution] = {}
    synced: dict[RunKey, Execution] = {}  # the state the last fsync made durable
    last_forget_end: int | None = None  # file offset before an unsynced forget batch
    for op, n in ops:
        if op == "add":
            batch = [ex(n + i) for i in range(rng.randint(1, 4))]
            journal.add_many(batch)
            model.update((key(e), e) for e in batch)
            synced = dict(model)
            last_forget_end = None
        elif op == "forget":
            keys = [key(ex(n + i)) for i in range(rng.randint(1, 4))]
            size = journal.file.stat().st_size
            journal.forget_many(keys)
            for k in keys:
                model.pop(k, None)
            after = journal.file.stat().st_size
            if after > size:  # appended, not yet fsync'd
                last_forget_end = size if last_forget_end is None else last_forget_end
            elif after < size:  # compacted: the rewrite was fsync'd
                synced = dict(model)
                last_forget_end = None
        elif op == "reopen":
            journal.close()
            journal = RunJournal(path, compact_after=compact_after)
            assert journal.load() == list(model.values())
            synced = dict(model)
            last_forget_end = None
        elif op == "tear" and last_forget_end is not None:
            journal.close()
            size = journal.file.stat().st_size
            with journal.file.open("r+b") as fh:
                fh.truncate(rng.randint(last_forget_end, size))
            journal = RunJournal(path, compact_after=compact_after)
            loaded = journal.load()
            # Some of the unsynced forgets may have survived: the result lies
            # between the synced state and the model, in the same order.
            assert {key(e) for e in loaded} >= set(model)
            assert {key(e) for e in loaded} <= set(synced)
            model = {key(e): e for e in loaded}
            synced = dict(model)
            last_forget_end = None
    journal.close()
    assert reopen(path, compact_after=compact_after) == list(model.values())
