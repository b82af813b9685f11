"""Durable Raft storage: the log, the hard state and snapshots on local disk.

The Raft core (:mod:`dkron.proto_sansio.raft`) hands its driver batches of
persist records that must be durable before the batch's messages are sent.
This module makes them durable, and on restart rebuilds the exact
:class:`~dkron.proto_sansio.raft.PersistedState` that
:class:`~dkron.proto_sansio.raft.DurableLog` (the in-memory reference model)
would hold after the same records.  Replay literally feeds the records found on
disk into a ``DurableLog``, so the two cannot disagree on how records combine.

Layout of a store directory (``<data-dir>/raft/``)::

    LOCK                                   flock()ed while a process uses the store
    log-00000000000000000001.seg           append-only segments of framed records
    log-00000000000000000002.seg           (the last one is the active segment)
    snap-<index:020d>-<term:020d>.snap     the current snapshot, one framed record
    *.tmp                                  files being written; removed at open

Every segment starts with a BASE record that restates the hard state, the
snapshot in force, the last log index and the terms of the log at the moment
it was created.  That is what lets old segments be deleted once a snapshot
covers every entry they wrote: replay starts at the first remaining segment
and knows everything it needs, the older entries being stand-ins that a later
snapshot record is guaranteed to discard (if one survives replay, entries are
missing and the store refuses to open).

A batch passed to :meth:`SyncRaftStorage.persist` is appended with one
``write`` and one ``fsync`` (group commit); records carry the batch number and
the last record of a batch is flagged, which makes batches atomic across a
crash and tells a torn tail (the unsynced last batch) from corruption (a bad
record followed by a later batch, which was written only after the bad one's
batch had been synced).  The file format is plain functions and one
synchronous class; Trio appears only in :class:`RaftStorage`, which runs the
blocking work in a worker thread.  ``docs/storage.md`` is the operator's
description of the same rules.
"""

from __future__ import annotations

import enum
import fcntl
import functools
import itertools
import logging
import os
import re
import struct
import zlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cbor2
import trio

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
)

__all__ = [
    "DEFAULT_SEGMENT_BYTES",
    "HEADER_SIZE",
    "MAGIC",
    "MAX_RECORD_BYTES",
    "CorruptRecordError",
    "RaftStorage",
    "Record",
    "RecordType",
    "Recovery",
    "StorageError",
    "StoreInUseError",
    "SyncRaftStorage",
    "decode_record",
    "encode_record",
    "scan_records",
]

log = logging.getLogger(__name__)

#: A new segment is started once the active one has grown past this size.
DEFAULT_SEGMENT_BYTES = 64 * 1024 * 1024

#: Every record starts with these bytes; they let recovery look for valid
#: records after a damaged one without trying every byte offset.
MAGIC = b"DKRL"

#: magic, crc32, body length, batch number, record type, flags.
_HEADER = struct.Struct("<4sIIQBB")
HEADER_SIZE = _HEADER.size
#: The crc covers the header from the length field on, then the body.
_CRC_FROM = 8

#: Largest record body accepted when reading (a corrupted length field must
#: not make recovery allocate gigabytes).
MAX_RECORD_BYTES = 1 << 31

_FLAG_LAST = 1

_SEGMENT_RE = re.compile(r"^log-(\d{20})\.seg$")
_SNAPSHOT_RE = re.compile(r"^snap-(\d{20})-(\d{20})\.snap$")
_LOCK_NAME = "LOCK"


class RecordType(enum.IntEnum):
    BASE = 1
    HARD = 2
    ENTRIES = 3
    SNAP = 4
    SNAPSHOT_FILE = 5


class StorageError(Exception):
    """The store cannot be opened or used; the message says what the operator can do."""


class StoreInUseError(StorageError):
    """Another process (or another handle in this one) holds the store's lock."""


class CorruptRecordError(StorageError):
    """A record that should be durable is damaged; the store refuses to guess."""

    def __init__(self, path: Path, offset: int, reason: str) -> None:
        self.path = path
        self.offset = offset
        self.reason = reason
        super().__init__(
            f"{path}: corrupted record at offset {offset}: {reason} "
            "(the file was damaged after it was written; see docs/storage.md, "
            "'Corruption', before removing anything)"
        )


# ---------------------------------------------------------------------------
# framing: plain functions over bytes
# ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Record:
    """One framed record found in a file: where it lies, what it carries."""

    offset: int
    end: int
    type: RecordType
    batch: int
    last: bool
    body: bytes


def encode_record(rtype: RecordType, batch: int, body: bytes, *, last: bool) -> bytes:
    """Frame ``body``: magic, crc32, length, batch, type, flags, then the body."""
    if len(body) > MAX_RECORD_BYTES:
        raise LocalProtocolError(f"record of {len(body)} bytes exceeds {MAX_RECORD_BYTES}")
    header = _HEADER.pack(MAGIC, 0, len(body), batch, int(rtype), _FLAG_LAST if last else 0)
    crc = zlib.crc32(body, zlib.crc32(header[_CRC_FROM:]))
    return MAGIC + struct.pack("<I", crc) + header[_CRC_FROM:] + body


def decode_record(data: bytes | memoryview, offset: int) -> Record | None:
    """The valid record starting at ``offset``, or None if there is none there."""
    end_header = offset + HEADER_SIZE
    if end_header > len(data):
        return None
    magic, crc, length, batch, rtype, flags = _HEADER.unpack_from(data, offset)
    if magic != MAGIC or length > MAX_RECORD_BYTES:
        return None
    end = end_header + length
    if end > len(data):
        return None
    view = memoryview(data)
    if zlib.crc32(view[end_header:end], zlib.crc32(view[offset + _CRC_FROM : end_header])) != crc:
        return None
    try:
        kind = RecordType(rtype)
    except ValueError:
        return None
    if flags & ~_FLAG_LAST:
        return None
    return Record(offset, end, kind, batch, bool(flags & _FLAG_LAST), bytes(view[end_header:end]))


def scan_records(data: bytes) -> tuple[list[Record], int | None]:
    """Every valid record from the start, and the offset of the first invalid one (if any)."""
    records: list[Record] = []
    offset = 0
    while offset < len(data):
        rec = decode_record(data, offset)
        if rec is None:
            return records, offset
        records.append(rec)
        offset = rec.end
    return records, None


def _records_after(data: bytes, offset: int) -> Iterable[Record]:
    """Valid records that start after ``offset`` (found by their magic)."""
    pos = data.find(MAGIC, offset + 1)
    while pos != -1:
        rec = decode_record(data, pos)
        if rec is not None:
            yield rec
        pos = data.find(MAGIC, pos + 1)


# ---------------------------------------------------------------------------
# record bodies (CBOR); a body that passed its crc but does not parse is corruption
# ---------------------------------------------------------------------------


class _BadBody(ValueError):
    """A record passed its checksum but its body is not what its type says."""


def _int(v: Any) -> int:
    if type(v) is not int or v < 0:
        raise _BadBody(f"expected a non-negative integer, got {v!r}")
    return v


def _list(v: Any, n: int | None = None) -> list[Any]:
    if type(v) is not list or (n is not None and len(v) != n):
        raise _BadBody(f"expected an array{'' if n is None else f' of {n}'}, got {v!r}")
    return v


def _loads(body: bytes) -> Any:
    try:
        return cbor2.loads(body)
    except Exception as exc:  # any parser failure means the bytes are wrong
        raise _BadBody(f"undecodable body: {exc}") from None


def _hard_body(h: HardState) -> list[Any]:
    return [h.term, h.voted_for, h.commit]


def _parse_hard(v: Any) -> HardState:
    term, vote, commit = _list(v, 3)
    if vote is not None and type(vote) is not str:
        raise _BadBody("vote must be a string or null")
    return HardState(_int(term), vote, _int(commit))


def _entries_body(entries: Sequence[Entry]) -> bytes:
    return cbor2.dumps([entries[0].index, [[e.term, int(e.kind), e.data] for e in entries]])


def _parse_entries(body: bytes) -> tuple[Entry, ...]:
    first, raw = _list(_loads(body), 2)
    first = _int(first)
    out: list[Entry] = []
    for i, item in enumerate(_list(raw)):
        term, kind, data = _list(item, 3)
        if type(data) is not bytes:
            raise _BadBody("entry data must be a byte string")
        try:
            out.append(Entry(_int(term), first + i, EntryKind(_int(kind)), data))
        except ValueError as exc:
            raise _BadBody(f"bad entry: {exc}") from None
    if not out:
        raise _BadBody("an entries record holds at least one entry")
    return tuple(out)


def _snapshot_file_body(s: Snapshot) -> bytes:
    m = s.membership
    return cbor2.dumps([s.index, s.term, sorted(m.voters), sorted(m.learners), s.data])


def _parse_snapshot_file(body: bytes) -> Snapshot:
    index, term, voters, learners, data = _list(_loads(body), 5)
    if type(data) is not bytes:
        raise _BadBody("snapshot data must be a byte string")
    if any(type(v) is not str for v in _list(voters) + _list(learners)):
        raise _BadBody("member ids must be strings")
    try:
        return Snapshot(
            _int(index), _int(term), Membership(frozenset(voters), frozenset(learners)), data
        )
    except ValueError as exc:
        raise _BadBody(f"bad snapshot: {exc}") from None


@dataclass(frozen=True, slots=True)
class _Base:
    seq: int
    hard: HardState
    snap: tuple[int, int] | None
    last: int
    runs: tuple[tuple[int, int], ...]


def _base_body(b: _Base) -> bytes:
    snap = None if b.snap is None else list(b.snap)
    return cbor2.dumps([b.seq, _hard_body(b.hard), snap, b.last, [list(r) for r in b.runs]])


def _parse_base(body: bytes) -> _Base:
    seq, hard, snap, last, runs = _list(_loads(body), 5)
    ref = None if snap is None else (_int(_list(snap, 2)[0]), _int(snap[1]))
    pairs = tuple((_int(_list(r, 2)[0]), _int(r[1])) for r in _list(runs))
    return _Base(_int(seq), _parse_hard(hard), ref, _int(last), pairs)


# ---------------------------------------------------------------------------
# file helpers
# ---------------------------------------------------------------------------


def _segment_name(seq: int) -> str:
    return f"log-{seq:020d}.seg"


def _snapshot_name(index: int, term: int) -> str:
    return f"snap-{index:020d}-{term:020d}.snap"


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _make_dirs_durably(directory: Path) -> None:
    """mkdir -p, and fsync the parent of every directory it created."""
    missing = []
    d = directory
    while not d.is_dir():
        missing.append(d)
        d = d.parent
    for d in reversed(missing):
        d.mkdir(exist_ok=True)
        _fsync_dir(d.parent)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        view = view[n:]


def _write_durably(directory: Path, name: str, data: bytes) -> Path:
    """Temp file, fsync, rename, fsync the directory: the file appears whole or not at all."""
    final = directory / name
    tmp = directory / (name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        _write_all(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, final)
    _fsync_dir(directory)
    return final


# ---------------------------------------------------------------------------
# the live shape of the log: indexes and terms only, never the entries
# ---------------------------------------------------------------------------


class _Shape:
    """Snapshot point, last index and term runs: enough to apply records like DurableLog.

    The node keeps the entries themselves; the store keeps only the terms as
    runs ``(first_index, term)`` (a handful per leader change), which is all it
    needs to decide whether a snapshot keeps the log after it.
    """

    __slots__ = ("base", "last", "runs", "snap")

    def __init__(self, snap: tuple[int, int] | None, last: int, runs: list[list[int]]) -> None:
        self.snap = snap
        self.base = snap[0] if snap is not None else 0
        self.last = last
        self.runs = runs

    @classmethod
    def of(cls, state: PersistedState) -> _Shape:
        snap = state.snapshot
        shape = cls(None if snap is None else (snap.index, snap.term), 0, [])
        shape.last = shape.base
        if state.entries:
            shape._extend(state.entries)
        return shape

    def copy(self) -> _Shape:
        return _Shape(self.snap, self.last, [list(r) for r in self.runs])

    def term_at(self, index: int) -> int | None:
        if not self.base < index <= self.last:
            return None
        term = None
        for first, t in self.runs:
            if first > index:
                break
            term = t
        return term

    def _extend(self, entries: Sequence[Entry]) -> None:
        for e in entries:
            if not self.runs or self.runs[-1][1] != e.term:
                self.runs.append([e.index, e.term])
        self.last = entries[-1].index

    def append(self, entries: Sequence[Entry]) -> tuple[Entry, ...]:
        """Apply an AppendLog; returns the entries that actually change the log."""
        if not entries:
            return ()
        for prev, e in itertools.pairwise(entries):
            if e.index != prev.index + 1:
                raise LocalProtocolError("AppendLog entries must have consecutive indexes")
        first = entries[0].index
        if first <= self.base:
            entries = entries[self.base + 1 - first :]
            if not entries:
                return ()
            first = self.base + 1
        if first > self.last + 1:
            raise LocalProtocolError(f"AppendLog at {first} leaves a gap in the log")
        while self.runs and self.runs[-1][0] >= first:
            self.runs.pop()
        self._extend(entries)
        return tuple(entries)

    def snapshot(self, snap: Snapshot) -> bool:
        """Apply a SaveSnapshot; False when DurableLog would ignore it."""
        if self.snap is not None and snap.index <= self.base:
            return False
        if self.term_at(snap.index) == snap.term:
            runs = [r for r in self.runs if r[0] > snap.index]
            covering = [r for r in self.runs if r[0] <= snap.index][-1]
            if snap.index < self.last and (not runs or runs[0][0] != snap.index + 1):
                runs.insert(0, [snap.index + 1, covering[1]])
            self.runs = runs
        else:
            self.runs = []
            self.last = snap.index
        self.snap = (snap.index, snap.term)
        self.base = snap.index
        return True


@dataclass(slots=True)
class _Segment:
    seq: int
    path: Path
    #: the highest entry index any record of this segment wrote; once a
    #: snapshot covers it (and it is not the active segment) it can go.
    max_index: int


@dataclass(frozen=True, slots=True, kw_only=True)
class Recovery:
    """What opening the store had to repair, for the operator's log and for tests."""

    torn_file: Path | None = None
    torn_bytes: int = 0
    removed: tuple[Path, ...] = ()


_HOLE = b"\x00stand-in for an entry of a deleted segment\x00"


def _hole(index: int, term: int) -> Entry:
    return Entry(term, index, EntryKind.NOOP, _HOLE)


_NO_MEMBERS = Membership(frozenset(), frozenset())


# ---------------------------------------------------------------------------
# the synchronous store
# ---------------------------------------------------------------------------


class SyncRaftStorage:
    """The store itself: blocking calls, one caller at a time.

    Use :meth:`open`; :class:`RaftStorage` wraps it for Trio.
    """

    def __init__(
        self,
        *,
        directory: Path,
        lock_fd: int,
        shape: _Shape,
        hard: HardState,
        segments: list[_Segment],
        batch: int,
        segment_bytes: int,
        recovery: Recovery,
    ) -> None:
        self.directory = directory
        self.recovery = recovery
        self._lock_fd: int | None = lock_fd
        self._shape = shape
        self._hard = hard
        self._segments = segments
        self._batch = batch
        self._segment_bytes = segment_bytes
        active = segments[-1].path
        self._fd = os.open(active, os.O_WRONLY | os.O_APPEND)
        self._size = os.fstat(self._fd).st_size
        self._failed: BaseException | None = None

    # -- opening -----------------------------------------------------------

    @classmethod
    def open(
        cls,
        path: str | os.PathLike[str],
        *,
        initial: PersistedState | None = None,
        segment_bytes: int = DEFAULT_SEGMENT_BYTES,
    ) -> tuple[SyncRaftStorage, PersistedState]:
        """Open (or create) the store at ``path``; returns it and the state to restart from.

        ``initial`` seeds a store that does not exist yet (e.g.
        :meth:`PersistedState.bootstrap` on a new cluster's servers) and is
        ignored once the store holds a log: what is on disk always wins.
        """
        if segment_bytes < 1:
            raise ValueError("segment_bytes must be positive")
        directory = Path(path).absolute()
        _make_dirs_durably(directory)
        lock_fd = os.open(directory / _LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(lock_fd)
            raise StoreInUseError(
                f"{directory} is in use by another process (is another agent running "
                "with the same --data-dir?)"
            ) from None
        try:
            return cls._open_locked(directory, lock_fd, initial, segment_bytes)
        except BaseException:
            os.close(lock_fd)
            raise

    @classmethod
    def _open_locked(
        cls,
        directory: Path,
        lock_fd: int,
        initial: PersistedState | None,
        segment_bytes: int,
    ) -> tuple[SyncRaftStorage, PersistedState]:
        removed: list[Path] = []
        segments: list[tuple[int, Path]] = []
        snapshots: dict[tuple[int, int], Path] = {}
        for p in sorted(directory.iterdir()):
            if p.name.endswith(".tmp"):
                p.unlink()
                removed.append(p)
            elif m := _SEGMENT_RE.match(p.name):
                segments.append((int(m.group(1)), p))
            elif m := _SNAPSHOT_RE.match(p.name):
                snapshots[(int(m.group(1)), int(m.group(2)))] = p
        if not segments:
            return cls._create(
                directory=directory,
                lock_fd=lock_fd,
                initial=initial,
                leftovers=snapshots,
                removed=removed,
                segment_bytes=segment_bytes,
            )
        # Replay from the first segment of the last contiguous run: segments
        # before a gap are leftovers of a compaction whose unlinks were only
        # partly durable.  Entries they would have supplied show up as
        # stand-ins, which the final check refuses.  Nothing is deleted
        # before the whole store has been validated.
        start = len(segments) - 1
        while start > 0 and segments[start - 1][0] == segments[start][0] - 1:
            start -= 1
        replayed = _replay(directory, segments[start:])
        snap_ref = replayed.snap
        torn = replayed.torn
        snapshot: Snapshot | None = None
        if snap_ref is not None:
            snap_path = snapshots.pop(snap_ref, None)
            if snap_path is None:
                raise StorageError(
                    f"{directory}: snapshot {_snapshot_name(*snap_ref)} named by the log is missing"
                )
            snapshot = _read_snapshot(snap_path)
            if (snapshot.index, snapshot.term) != snap_ref:
                raise CorruptRecordError(snap_path, 0, "snapshot index/term differ from its name")
        for e in replayed.state.entries:
            if e.data is _HOLE:
                raise StorageError(
                    f"{directory}: log entry {e.index} is missing (a segment file was "
                    "removed while its entries were still needed)"
                )
        for p in [*(p for _, p in segments[:start]), *snapshots.values()]:
            p.unlink()
            removed.append(p)
        result = PersistedState(replayed.state.hard_state, snapshot, replayed.state.entries)
        shape = _Shape.of(result)
        seg_list = [
            _Segment(seq, p, mx)
            for (seq, p), mx in zip(segments[start:], replayed.max_index, strict=True)
        ]
        if removed:
            _fsync_dir(directory)
        store = cls(
            directory=directory,
            lock_fd=lock_fd,
            shape=shape,
            hard=replayed.state.hard_state,
            segments=seg_list,
            batch=replayed.batch,
            segment_bytes=segment_bytes,
            recovery=Recovery(
                torn_file=torn[0] if torn else None,
                torn_bytes=torn[1] if torn else 0,
                removed=tuple(removed),
            ),
        )
        store._compact()
        if torn:
            log.warning("%s: dropped a torn tail of %d bytes", torn[0], torn[1])
        return store, result

    @classmethod
    def _create(
        cls,
        *,
        directory: Path,
        lock_fd: int,
        initial: PersistedState | None,
        leftovers: dict[tuple[int, int], Path],
        removed: list[Path],
        segment_bytes: int,
    ) -> tuple[SyncRaftStorage, PersistedState]:
        # Snapshot files without any segment are leftovers of an interrupted
        # creation: nothing ever referred to them.
        for p in leftovers.values():
            p.unlink()
            removed.append(p)
        init = initial if initial is not None else PersistedState.empty()
        snap = init.snapshot
        if snap is not None:
            _write_durably(directory, _snapshot_name(snap.index, snap.term), _encode_snapshot(snap))
        shape = _Shape.of(PersistedState(init.hard_state, snap, ()))
        base = _Base(1, init.hard_state, shape.snap, shape.last, ())
        path = _write_durably(
            directory,
            _segment_name(1),
            encode_record(RecordType.BASE, 1, _base_body(base), last=True),
        )
        store = cls(
            directory=directory,
            lock_fd=lock_fd,
            shape=shape,
            hard=init.hard_state,
            segments=[_Segment(1, path, 0)],
            batch=1,
            segment_bytes=segment_bytes,
            recovery=Recovery(removed=tuple(removed)),
        )
        if init.entries:
            store.persist([AppendLog(init.entries)])
        return store, PersistedState(init.hard_state, snap, init.entries)

    # -- writing -----------------------------------------------------------

    @property
    def last_index(self) -> int:
        return self._shape.last

    @property
    def segment_paths(self) -> tuple[Path, ...]:
        return tuple(s.path for s in self._segments)

    def persist(self, records: Sequence[PersistRecord]) -> None:
        """Make ``records`` durable, in order, as one atomic batch with one log fsync.

        A snapshot in the batch is written to its own file first (temp file,
        fsync, rename, directory fsync).  Invalid records (a gap in the log,
        non-consecutive entries) raise :class:`LocalProtocolError` before
        anything is written.  An I/O error leaves the store unusable: after a
        failed fsync the kernel may have dropped the data, so the only safe
        continuation is a restart that replays what really is on disk.
        """
        if self._failed is not None:
            raise StorageError(f"{self.directory}: store failed earlier; restart to recover") from (
                self._failed
            )
        if self._fd < 0:
            raise StorageError(f"{self.directory}: store is closed")
        shape = self._shape.copy()
        hard = self._hard
        plan: list[tuple[RecordType, bytes, Snapshot | None]] = []
        max_index = 0
        for rec in records:
            if type(rec) is AppendLog:
                entries = shape.append(rec.entries)
                if entries:
                    plan.append((RecordType.ENTRIES, _entries_body(entries), None))
                    max_index = max(max_index, entries[-1].index)
            elif type(rec) is SaveHardState:
                hard = rec.state
                plan.append((RecordType.HARD, cbor2.dumps(_hard_body(hard)), None))
            elif type(rec) is SaveSnapshot:
                snap = rec.snapshot
                if shape.snapshot(snap):
                    plan.append((RecordType.SNAP, cbor2.dumps([snap.index, snap.term]), snap))
            else:
                raise LocalProtocolError(f"not a persist record: {rec!r}")
        if not plan:
            return
        try:
            self._write_batch(plan, shape, hard, max_index)
        except BaseException as exc:
            self._failed = exc
            raise

    def _write_batch(
        self,
        plan: list[tuple[RecordType, bytes, Snapshot | None]],
        shape: _Shape,
        hard: HardState,
        max_index: int,
    ) -> None:
        if self._size >= self._segment_bytes:
            self._rotate()
        self._batch += 1
        superseded: list[tuple[int, int]] = []
        if self._shape.snap is not None and shape.snap != self._shape.snap:
            superseded.append(self._shape.snap)
        buf = bytearray()
        for i, (rtype, body, snap) in enumerate(plan):
            if snap is not None:
                # The file must exist before any record names it.
                _write_durably(
                    self.directory, _snapshot_name(snap.index, snap.term), _encode_snapshot(snap)
                )
                if (snap.index, snap.term) != shape.snap:
                    superseded.append((snap.index, snap.term))
            buf += encode_record(rtype, self._batch, body, last=i == len(plan) - 1)
        _write_all(self._fd, bytes(buf))
        os.fsync(self._fd)
        self._size += len(buf)
        snapshot_changed = shape.snap != self._shape.snap
        self._shape = shape
        self._hard = hard
        active = self._segments[-1]
        active.max_index = max(active.max_index, max_index)
        if snapshot_changed:
            # Only now is the new snapshot named by a durable record.
            for ref in superseded:
                (self.directory / _snapshot_name(*ref)).unlink(missing_ok=True)
            self._compact(force_sync=True)

    def _rotate(self) -> None:
        """Start a new segment whose BASE record restates everything older ones held."""
        seq = self._segments[-1].seq + 1
        self._batch += 1
        s = self._shape
        base = _Base(seq, self._hard, s.snap, s.last, tuple((r[0], r[1]) for r in s.runs))
        path = _write_durably(
            self.directory,
            _segment_name(seq),
            encode_record(RecordType.BASE, self._batch, _base_body(base), last=True),
        )
        fd = os.open(path, os.O_WRONLY | os.O_APPEND)
        os.close(self._fd)
        self._fd = fd
        self._size = os.fstat(fd).st_size
        self._segments.append(_Segment(seq, path, 0))
        self._compact()

    def _compact(self, *, force_sync: bool = False) -> None:
        """Delete the oldest segments once the snapshot covers every entry they wrote."""
        removed = False
        while len(self._segments) > 1 and self._segments[0].max_index <= self._shape.base:
            self._segments.pop(0).path.unlink()
            removed = True
        if removed or force_sync:
            _fsync_dir(self.directory)

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None


def _encode_snapshot(snap: Snapshot) -> bytes:
    return encode_record(RecordType.SNAPSHOT_FILE, 0, _snapshot_file_body(snap), last=True)


def _read_snapshot(path: Path) -> Snapshot:
    data = path.read_bytes()
    rec = decode_record(data, 0)
    if rec is None or rec.type is not RecordType.SNAPSHOT_FILE or rec.end != len(data):
        raise CorruptRecordError(path, 0, "snapshot file fails its checksum or has trailing bytes")
    try:
        return _parse_snapshot_file(rec.body)
    except _BadBody as exc:
        raise CorruptRecordError(path, 0, str(exc)) from None


@dataclass(slots=True)
class _Replayed:
    """What replay found: the state, the snapshot point, per-segment maxima, the last batch."""

    state: PersistedState
    snap: tuple[int, int] | None
    max_index: list[int]
    batch: int
    torn: tuple[Path, int] | None


def _check_tail(path: Path, data: bytes, records: list[Record], bad: int | None) -> int:
    """Where the last complete batch ends; raises if the damage is not a torn tail.

    Batches are written one after another, each only once the previous one
    was fsynced.  So the only bytes a crash can leave damaged belong to the
    batch after the last complete one; a valid record of any other batch
    beyond the damage proves the damage hit bytes that had been durable.
    """
    complete = 0
    for i, rec in enumerate(records):
        if rec.last:
            complete = i + 1
    if complete == 0:
        raise CorruptRecordError(path, 0, "the segment's BASE record is damaged")
    valid_end = records[complete - 1].end
    torn_batch = records[complete - 1].batch + 1
    where = bad if bad is not None else valid_end
    for rec in records[complete:]:
        if rec.batch != torn_batch:
            raise CorruptRecordError(path, rec.offset, "batch left incomplete")
    if bad is not None:
        for later in _records_after(data, bad):
            if later.batch != torn_batch:
                raise CorruptRecordError(
                    path,
                    where,
                    f"damaged record followed by a valid record at offset {later.offset}",
                )
    return valid_end


def _replay(directory: Path, segments: list[tuple[int, Path]]) -> _Replayed:
    """Feed every record of ``segments`` into a DurableLog; repair a torn tail of the last one."""
    durable: DurableLog | None = None
    snap_ref: tuple[int, int] | None = None
    maxima: list[int] = []
    hard = HardState(0, None, 0)
    batch = 0
    torn: tuple[Path, int] | None = None
    for n, (seq, path) in enumerate(segments):
        data = path.read_bytes()
        records, bad = scan_records(data)
        if bad is not None or not records or not records[-1].last:
            if n != len(segments) - 1:
                where = bad if bad is not None else len(data)
                raise CorruptRecordError(
                    path, where, "damaged or incomplete batch in a sealed segment"
                )
            valid_end = _check_tail(path, data, records, bad)
            torn = (path, len(data) - valid_end)
            records = [r for r in records if r.end <= valid_end]
            with open(path, "r+b") as f:
                f.truncate(valid_end)
                f.flush()
                os.fsync(f.fileno())
        if records[0].type is not RecordType.BASE:
            raise CorruptRecordError(path, 0, "a segment must start with a BASE record")
        seg_max = 0
        for rec in records:
            try:
                if rec.type is RecordType.BASE:
                    if rec is not records[0]:
                        raise _BadBody("BASE record inside a segment")
                    base = _parse_base(rec.body)
                    if base.seq != seq:
                        raise _BadBody(f"BASE says segment {base.seq}, file name says {seq}")
                    if durable is None:
                        durable = DurableLog(_base_state(base))
                        snap_ref = base.snap
                        hard = base.hard
                    elif (
                        base.hard != hard
                        or base.last != durable.last_index
                        or base.snap != snap_ref
                    ):
                        raise _BadBody("BASE disagrees with the segments before it")
                    continue
                assert durable is not None
                if rec.type is RecordType.HARD:
                    hard = _parse_hard(_loads(rec.body))
                    durable.apply(SaveHardState(hard))
                elif rec.type is RecordType.ENTRIES:
                    entries = _parse_entries(rec.body)
                    durable.apply(AppendLog(entries))
                    seg_max = max(seg_max, entries[-1].index)
                elif rec.type is RecordType.SNAP:
                    index, term = _list(_loads(rec.body), 2)
                    snap = Snapshot(_int(index), _int(term), _NO_MEMBERS, b"")
                    # DurableLog's rule: a snapshot at or below the current one is ignored.
                    if snap_ref is None or snap.index > snap_ref[0]:
                        snap_ref = (snap.index, snap.term)
                    durable.apply(SaveSnapshot(snap))
                else:
                    raise _BadBody(f"{rec.type.name} record in a log segment")
            except (_BadBody, ValueError, LocalProtocolError) as exc:
                raise CorruptRecordError(path, rec.offset, str(exc)) from None
        maxima.append(seg_max)
        batch = max(batch, records[-1].batch)
    assert durable is not None
    return _Replayed(durable.state(), snap_ref, maxima, batch, torn)


def _base_state(base: _Base) -> PersistedState:
    """The state a BASE record describes, with stand-ins for the entries it only counts."""
    snap = None if base.snap is None else Snapshot(base.snap[0], base.snap[1], _NO_MEMBERS, b"")
    start = snap.index if snap is not None else 0
    entries: list[Entry] = []
    runs = list(base.runs)
    for k, (first, term) in enumerate(runs):
        end = runs[k + 1][0] - 1 if k + 1 < len(runs) else base.last
        entries.extend(_hole(i, term) for i in range(max(first, start + 1), end + 1))
    if len(entries) != base.last - start:
        raise _BadBody("BASE term runs do not cover its log")
    return PersistedState(base.hard, snap, tuple(entries))


# ---------------------------------------------------------------------------
# the Trio face
# ---------------------------------------------------------------------------


class RaftStorage:
    """The store for the agent: every blocking call runs in a worker thread.

    Calls are serialized; a cancelled :meth:`persist` still finishes its
    write in the thread (the on-disk state never depends on where a
    cancellation landed), then raises ``Cancelled``.
    """

    def __init__(self, store: SyncRaftStorage) -> None:
        self.sync = store
        self._lock = trio.Lock()
        # A thread of its own: group commits never queue behind other blocking work.
        self._thread = trio.CapacityLimiter(1)

    @classmethod
    async def open(
        cls,
        path: str | os.PathLike[str],
        *,
        initial: PersistedState | None = None,
        segment_bytes: int = DEFAULT_SEGMENT_BYTES,
    ) -> tuple[RaftStorage, PersistedState]:
        store, state = await trio.to_thread.run_sync(
            functools.partial(
                SyncRaftStorage.open, path, initial=initial, segment_bytes=segment_bytes
            )
        )
        return cls(store), state

    async def persist(self, records: Sequence[PersistRecord]) -> None:
        """Group commit: all of ``records`` (of any number of drains) with one fsync."""
        async with self._lock:
            await trio.to_thread.run_sync(self.sync.persist, records, limiter=self._thread)

    async def aclose(self) -> None:
        async with self._lock:
            await trio.to_thread.run_sync(self.sync.close)
