"""SIGKILL a real writer process under load; every acknowledged batch survives.

The writer (``storage_writer.py``) prints a batch number only after its
``persist`` returned, i.e. after the fsync.  After the kill the reopened store
must hold exactly the state after some batch ``j`` with ``j`` at least the
last acknowledged one (later batches may or may not have made it), byte for
byte as the reference model computes it.  Several rounds run on the same
directory, each restarting the writer on the recovered store, with kill
moments drawn from a seeded generator.
"""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import time
from pathlib import Path
from random import Random

from storage_writer import INITIAL, make_batch

from dkron.io_trio.storage import SyncRaftStorage
from dkron.proto_sansio.raft import DurableLog

ROOT = Path(__file__).resolve().parents[2]
WRITER = Path(__file__).resolve().with_name("storage_writer.py")
ROUNDS = 4
READ_TIMEOUT = 60.0


def read_acks(
    proc: subprocess.Popen[bytes], wanted: int, linger: float = 0.0
) -> list[tuple[int, int]]:
    """Read at least ``wanted`` acknowledgement lines, then keep reading for
    ``linger`` seconds so that the kill lands at an arbitrary point of the
    writer's loop; fails if the writer stalls or dies."""
    assert proc.stdout is not None
    fd = proc.stdout.fileno()
    buf = b""
    acks: list[tuple[int, int]] = []
    deadline = time.monotonic() + READ_TIMEOUT
    stop: float | None = None
    while True:
        now = time.monotonic()
        if stop is None and len(acks) >= wanted:
            stop = now + linger
        if stop is not None and now >= stop:
            return acks
        assert now < deadline, f"writer produced only {len(acks)} acks"
        ready, _, _ = select.select([fd], [], [], (stop or deadline) - now)
        if not ready:
            continue
        chunk = os.read(fd, 65536)
        assert chunk, f"writer exited early with {proc.poll()} after {len(acks)} acks"
        buf += chunk
        *lines, buf = buf.split(b"\n")
        for line in lines:
            k, last = line.split()
            acks.append((int(k), int(last)))


def test_sigkill_under_load_loses_no_acknowledged_batch(tmp_path: Path) -> None:
    seed = 20240611
    rng = Random(seed)
    store_dir = tmp_path / "raft"
    model = DurableLog(INITIAL)
    applied = 0
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    for rnd in range(ROUNDS):
        wanted = rng.randint(100, 400)
        errfile = tmp_path / f"writer-{rnd}.err"
        with (
            errfile.open("wb") as err,
            subprocess.Popen(
                [sys.executable, str(WRITER), str(store_dir), str(seed)],
                stdout=subprocess.PIPE,
                stderr=err,
                cwd=ROOT,
                env=env,
            ) as proc,
        ):
            try:
                acks = read_acks(proc, wanted, linger=rng.uniform(0.0, 0.02))
                # The writer keeps going while we read: the kill lands wherever it is.
                os.kill(proc.pid, signal.SIGKILL)
            finally:
                if proc.poll() is None:
                    proc.kill()
                proc.wait()
        assert proc.returncode == -signal.SIGKILL, errfile.read_text()
        last_ack = acks[-1][0]
        store, state = SyncRaftStorage.open(store_dir)
        store.close()
        durable = state.hard_state.commit
        assert durable >= last_ack, f"round {rnd}: batch {last_ack} was acknowledged, lost"
        while applied < durable:
            applied += 1
            for record in make_batch(applied, model.state(), seed):
                model.apply(record)
        assert state == model.state(), f"round {rnd}: state after batch {durable} differs"
        ack_last_index = dict(acks)
        if durable in ack_last_index:
            assert model.last_index == ack_last_index[durable]
    assert applied >= ROUNDS * 100
