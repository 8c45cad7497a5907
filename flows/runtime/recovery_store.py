"""Reading a namespace's Bytewax recovery store: what the last committed epoch holds.

Bytewax keeps one SQLite file per recovery partition (WAL mode, so it can be
read while a flow runs). `commits` holds each file's last committed epoch and
`snaps` the state of every (step, key) as of an epoch, pickled. A flow resumes
from the lowest committed epoch over all files, with, per key, the newest
snapshot at or before it; this module reads exactly that, nothing newer.

Our own steps' states are plain values: the source's is the next offset of a
partition (`tally.kafka`, key "topic:partition"), the engine's is a shard
snapshot as msgpack bytes (`tally.engine`, key the shard number).
"""

from __future__ import annotations

import os
import pickle
import shutil
import sqlite3
import time
from dataclasses import dataclass, field
from pathlib import Path

from bytewax.recovery import init_db_dir

from flows import logs
from flows.logs import UserError
from state.decision import Fate
from state.engine import Shard, SnapshotFormatError, decode_snapshot
from state.contract import Part

SOURCE_STEP = "tally.kafka"
ENGINE_STEP = "tally.engine"


@dataclass
class Committed:
    """The state a resume would start from."""

    epoch: int
    next_offsets: dict[Part, int] = field(default_factory=dict)
    shards: dict[str, bytes] = field(default_factory=dict)  # shard key -> engine snapshot

    def pending(self) -> list[Fate]:
        """Records consumed but still waiting for their window, by log position."""
        fates = []
        for snapshot in self.shards.values():
            fates += restore(snapshot).pending()
        return sorted(fates, key=lambda f: (f.topic, f.partition, f.offset))


def restore(snapshot: bytes) -> Shard:
    """The engine shard of a committed snapshot, or one line saying why it cannot be."""
    try:
        return decode_snapshot(snapshot)
    except SnapshotFormatError as err:
        raise UserError(f"{err}; this namespace cannot be resumed: replay its log into a new "
                        f"namespace (tally replay --from earliest) or start a new one") from None


def read_committed(recovery_dir: Path, engine: bool = True) -> Committed | None:
    """The committed state in `recovery_dir`, or None when nothing was ever committed.
    Without `engine`, only the source offsets: cheap enough to poll while a flow runs."""
    files = sorted(recovery_dir.glob("part-*.sqlite3"))
    if not files:
        return None
    try:
        dbs = [sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5) for path in files]
        try:
            return _read(dbs, (SOURCE_STEP, ENGINE_STEP) if engine else (SOURCE_STEP,))
        finally:
            for db in dbs:
                db.close()
    except sqlite3.Error as exc:
        raise UserError(f"cannot read the recovery store {recovery_dir}: {exc}") from None


def _read(dbs: list[sqlite3.Connection], steps: tuple[str, ...]) -> Committed | None:
    epochs = [db.execute("SELECT max(commit_epoch) FROM commits").fetchone()[0] for db in dbs]
    if any(epoch is None for epoch in epochs):
        return None
    committed = Committed(min(epochs))
    for db in dbs:
        rows = db.execute(
            "SELECT step_id, state_key, ser_change FROM snaps s WHERE snap_epoch = "
            " (SELECT max(snap_epoch) FROM snaps t WHERE t.step_id = s.step_id"
            "  AND t.state_key = s.state_key AND t.snap_epoch <= ?)"
            f" AND step_id IN ({', '.join('?' * len(steps))})", (committed.epoch, *steps))
        for step, key, change in rows:
            if change is None:
                continue  # the key was deleted as of that epoch
            value = pickle.loads(change)  # written by bytewax from our own plain values
            if step == SOURCE_STEP:
                topic, partition = key.rsplit(":", 1)
                committed.next_offsets[(topic, int(partition))] = value
            else:
                committed.shards[key] = value
    return committed


# ----------------------------------------------------------------------------- creating

ABSENT, INCOMPLETE, COMPLETE = "absent", "incomplete", "complete"


def store_state(path: Path) -> str:
    """ABSENT (no part files), INCOMPLETE (a first start cut off while making it: a part
    file empty or without its tables, and nothing ever committed) or COMPLETE. A store
    that was completed and is damaged raises a UserError naming the file."""
    files = sorted(path.glob("part-*.sqlite3"))
    if not files:
        return ABSENT
    made, committed = [], False
    for file in files:
        try:
            db = sqlite3.connect(f"file:{file}?mode=ro", uri=True, timeout=5)
            try:
                tables = {row[0] for row in db.execute("SELECT name FROM sqlite_master")}
                made.append("parts" in tables and db.execute("SELECT count(*) FROM parts").fetchone()[0] == 1)
                committed |= "commits" in tables and db.execute("SELECT count(*) FROM commits").fetchone()[0] > 0
            finally:
                db.close()
        except sqlite3.Error as exc:
            if file.stat().st_size == 0:
                made.append(False)
                continue
            raise _damaged(file, str(exc)) from None
    if all(made):
        return COMPLETE
    if committed:
        broken = next(f for f, ok in zip(files, made) if not ok)
        raise _damaged(broken, "a part of a store that has committed snapshots is missing its tables")
    return INCOMPLETE


def _damaged(file: Path, why: str) -> UserError:
    return UserError(f"the recovery store file {file} is damaged ({why}); Tally will not replace "
                     f"it: restore it from a backup, or move the namespace's recovery directory "
                     f"aside and replay into a new namespace")


def make_store(path: Path, parts: int) -> None:
    """The recovery store at `path`, built aside and renamed into place, so that a start
    cut off midway leaves no half-made store where the next start looks. One that was
    never completed is moved aside (kept, not deleted) and made again, saying so."""
    state = store_state(path)
    if state == COMPLETE:
        return
    building = path.with_name(f"{path.name}.building-{os.getpid()}")
    shutil.rmtree(building, ignore_errors=True)
    try:
        building.mkdir(parents=True)
        init_db_dir(building, parts)
    except BaseException:  # a full disk, say: keep no half-made store taking space
        shutil.rmtree(building, ignore_errors=True)
        raise
    if state == INCOMPLETE:
        aside = path.with_name(f"{path.name}.incomplete-{time.strftime('%Y%m%dT%H%M%S')}")
        logs.warning(f"the recovery store {path} was never completed (its first start was cut "
                     f"off); making it again, the old one kept as {aside.name}")
        path.rename(aside)
    elif path.exists():  # a directory without part files: anything in it stays beside them
        for file in building.iterdir():
            file.rename(path / file.name)
        building.rmdir()
        return
    building.rename(path)
