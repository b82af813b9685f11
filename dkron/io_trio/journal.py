"""The worker's run journal: what lets a restarted node report interrupted runs as lost.

Every attempt a worker starts is written here *before* its executor starts,
and dropped once its result is committed.  After a crash the attempts still
in the journal are the ones that may have run without reporting: the worker
reports them as lost instead of running them a second time.

The journal is one append-only file, ``journal.log``, in its directory.  A
batch of starts costs one ``write`` and one ``fdatasync``, however many runs
it holds: a worker starting hundreds of runs a second must not pay a file,
an fsync and a directory fsync for each (that was the old layout of one
``.run`` file per attempt, which :meth:`RunJournal.load` still reads and
folds in).

Each record is ``length:u32le crc32:u32le`` followed by ``length`` bytes of
CBOR: ``[1, <Execution fields>]`` (started) or ``[2, job, group, node,
attempt]`` (forgotten).  The file is replayed in order.  A crash can leave a
torn last record; loading stops at the first record whose header, length or
checksum is wrong and truncates the file there.  Such a record was never
acknowledged (its fsync did not return), so its run never started.

Forgetting is not fsync'd on its own: a forget lost to a power cut only
makes the restarted worker report an attempt as lost whose result was
already committed, and the replicated state refuses that late verdict.
The next batch of starts makes any earlier forgets durable anyway.

Dead records are reclaimed by compaction: once they outnumber both
``compact_after`` and twice the live ones, the live attempts are written to
a temporary file, fsync'd, renamed over the journal and the directory
fsync'd, so a crash at any point leaves either the old or the new journal.

One writer at a time: the agent calls it from one worker thread at a time.
"""

from __future__ import annotations

import dataclasses
import logging
import operator
import os
import pathlib
import struct
import zlib
from collections.abc import Iterable
from typing import Any

import cbor2

from dkron.model import Execution
from dkron.proto_sansio.execution import RunKey

__all__ = ["RunJournal"]

log = logging.getLogger("dkron.journal")

_HEADER = struct.Struct("<II")
_ADD = 1
_FORGET = 2
#: No record comes near this: a started attempt carries no output yet.
MAX_RECORD = 1 << 20
_FILE = "journal.log"
_TMP = "journal.tmp"


def _key(ex: Execution) -> RunKey:
    return RunKey(ex.job_name, ex.group, ex.node_name, ex.attempt)


def _frame(item: list[Any]) -> bytes:
    payload = cbor2.dumps(item)
    if len(payload) > MAX_RECORD:
        raise ValueError(f"run journal record of {len(payload)} bytes exceeds {MAX_RECORD}")
    return _HEADER.pack(len(payload), zlib.crc32(payload)) + payload


#: Execution's fields in order (all plain values: no deep copy as ``astuple`` makes).
_FIELDS = operator.attrgetter(*(f.name for f in dataclasses.fields(Execution)))


def _add_record(ex: Execution) -> bytes:
    return _frame([_ADD, list(_FIELDS(ex))])


def _forget_record(key: RunKey) -> bytes:
    return _frame([_FORGET, key.job, key.group, key.node, key.attempt])


def _decode(payload: bytes) -> tuple[RunKey, Execution | None]:
    """One record's payload: the key it is about and the attempt, or ``None`` for a forget."""
    item = cbor2.loads(payload)
    if not isinstance(item, list) or not item:
        raise ValueError("a run journal record is a non-empty array")
    if item[0] == _ADD and len(item) == 2 and isinstance(item[1], list):
        ex = Execution(*item[1])
        return _key(ex), ex
    if item[0] == _FORGET and len(item) == 5:
        _, job, group, node, attempt = item
        if not (
            isinstance(job, str)
            and isinstance(node, str)
            and type(group) is int
            and type(attempt) is int
        ):
            raise ValueError("malformed forget record")
        return RunKey(job, group, node, attempt), None
    raise ValueError(f"unknown run journal record {item[0]!r}")


def _fsync_dir(path: pathlib.Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class RunJournal:
    """The started attempts a restarted worker must report as lost (one journal file).

    ``load()`` once at start-up; then ``add_many`` before executors start
    (durable when it returns) and ``forget_many`` once results are committed.
    ``add``/``forget`` are the one-item forms.
    """

    def __init__(self, path: pathlib.Path, *, compact_after: int = 16_384) -> None:
        if compact_after < 1:
            raise ValueError("compact_after must be positive")
        self.path = path
        self.compact_after = compact_after
        self._live: dict[RunKey, Execution] = {}
        self._records = 0  # records in the file, live or dead
        self._fd: int | None = None

    @property
    def file(self) -> pathlib.Path:
        return self.path / _FILE

    def __len__(self) -> int:
        return len(self._live)

    # -- start-up --------------------------------------------------------------

    def load(self) -> list[Execution]:
        """Replay the journal (dropping a torn tail) and return the attempts still live.

        The journal is rewritten compactly on the way, which also folds in
        and removes the old one-file-per-attempt entries.
        """
        self.path.mkdir(parents=True, exist_ok=True)
        self.close()
        live: dict[RunKey, Execution] = {}
        self._replay(live)
        legacy = self._load_legacy(live)
        self._live = live
        self._rewrite()
        for f in legacy:
            f.unlink(missing_ok=True)
        return list(live.values())

    def _replay(self, live: dict[RunKey, Execution]) -> None:
        try:
            data = self.file.read_bytes()
        except FileNotFoundError:
            return
        pos = 0
        while pos < len(data):
            end = pos + _HEADER.size
            if end > len(data):
                break
            length, crc = _HEADER.unpack_from(data, pos)
            if length > MAX_RECORD or end + length > len(data):
                break
            payload = data[end : end + length]
            if zlib.crc32(payload) != crc:
                break
            try:
                key, ex = _decode(payload)
            except Exception:  # a checksummed record we cannot read: stop as at a tear
                log.warning("unreadable run journal record at byte %d", pos)
                break
            if ex is None:
                live.pop(key, None)
            else:
                live[key] = ex
            pos = end + length
        if pos < len(data):
            # Never acknowledged (its fsync had not returned): the runs never started.
            log.warning("dropping a torn run journal tail of %d bytes", len(data) - pos)

    def _load_legacy(self, live: dict[RunKey, Execution]) -> list[pathlib.Path]:
        """Entries of the one-file-per-attempt layout, merged into ``live``."""
        files = sorted(self.path.glob("*.run"))
        for f in files:
            try:
                ex = Execution(*cbor2.loads(f.read_bytes()))
            except Exception:  # a torn write: the attempt never started
                log.warning("dropping unreadable run journal entry %s", f)
                continue
            live.setdefault(_key(ex), ex)
        return files

    # -- writing ---------------------------------------------------------------

    def add(self, ex: Execution) -> None:
        self.add_many([ex])

    def forget(self, key: RunKey) -> None:
        self.forget_many([key])

    def add_many(self, executions: Iterable[Execution]) -> None:
        """Record started attempts; durable (one ``fdatasync``) when this returns."""
        batch = list(executions)
        if not batch:
            return
        self._append(b"".join(_add_record(ex) for ex in batch), sync=True)
        self._records += len(batch)
        for ex in batch:
            self._live[_key(ex)] = ex
        self._maybe_compact()

    def forget_many(self, keys: Iterable[RunKey]) -> None:
        """Drop attempts whose results are committed (made durable by the next ``add_many``)."""
        self._open()
        batch = [k for k in keys if k in self._live]
        if not batch:
            return
        self._append(b"".join(_forget_record(k) for k in batch), sync=False)
        self._records += len(batch)
        for k in batch:
            del self._live[k]
        self._maybe_compact()

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    # -- internals -------------------------------------------------------------

    def _open(self) -> int:
        if self._fd is None:
            self.load()
        assert self._fd is not None
        return self._fd

    def _append(self, data: bytes, *, sync: bool) -> None:
        fd = self._open()
        try:
            _write_all(fd, data)
            if sync:
                os.fdatasync(fd)
        except OSError:
            # Part of the batch may be in the file: appending after it would
            # hide later records behind a tear, so the next call reloads
            # (dropping the tear) before it writes.
            self.close()
            raise

    def _maybe_compact(self) -> None:
        dead = self._records - len(self._live)
        if dead >= self.compact_after and dead >= 2 * len(self._live):
            self._rewrite()

    def _rewrite(self) -> None:
        """Write the live attempts to a fresh journal and switch to it atomically."""
        self.close()
        tmp = self.path / _TMP
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            _write_all(fd, b"".join(_add_record(ex) for ex in self._live.values()))
            os.fsync(fd)
        finally:
            os.close(fd)
        tmp.replace(self.file)
        _fsync_dir(self.path)
        self._records = len(self._live)
        self._fd = os.open(self.file, os.O_WRONLY | os.O_APPEND)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]
