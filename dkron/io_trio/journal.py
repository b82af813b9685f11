"""The worker's run journal: what lets a restarted node report interrupted runs as lost."""

from __future__ import annotations

import dataclasses
import logging
import os
import pathlib

import cbor2

from dkron.model import Execution
from dkron.proto_sansio.execution import RunKey

__all__ = ["RunJournal"]

log = logging.getLogger("dkron.journal")


class RunJournal:
    """The worker's run journal: one fsync'd file per started attempt.

    It is what lets a restarted worker report the attempts it had started as
    lost instead of running them a second time.
    """

    def __init__(self, path: pathlib.Path) -> None:
        self.path = path
        path.mkdir(parents=True, exist_ok=True)

    def _file(self, key: RunKey) -> pathlib.Path:
        return self.path / f"{key.group}-{key.attempt}-{abs(hash((key.job, key.node)))}.run"

    def load(self) -> list[Execution]:
        out = []
        for f in sorted(self.path.glob("*.run")):
            try:
                raw = cbor2.loads(f.read_bytes())
                out.append(Execution(*raw))
            except Exception:  # a torn write: the attempt never started
                log.warning("dropping unreadable run journal entry %s", f)
                f.unlink(missing_ok=True)
        return out

    def add(self, ex: Execution) -> None:
        key = RunKey(ex.job_name, ex.group, ex.node_name, ex.attempt)
        target = self._file(key)
        tmp = target.with_suffix(".tmp")
        tmp.write_bytes(cbor2.dumps(list(dataclasses.astuple(ex))))
        with tmp.open("rb+") as fh:
            os.fsync(fh.fileno())
        tmp.replace(target)
        dfd = os.open(self.path, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)

    def forget(self, key: RunKey) -> None:
        self._file(key).unlink(missing_ok=True)
