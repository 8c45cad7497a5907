"""Parquet sinks for the flow: decisions and fates, and the raw event archive.

A sink partition numbers its files. Its snapshot is the next number, so on
resume every file numbered at or above it was written after the snapshot: it is
an orphan, removed before anything is re-emitted. With renames making each file
appear whole, readers never see a torn or duplicated file.
"""

from __future__ import annotations

import re
import time
import zlib
from pathlib import Path
from typing import Callable

import pyarrow as pa
import pyarrow.compute as pc
from bytewax.outputs import FixedPartitionedSink, StatefulSinkPartition

from sinks import parquet
from sinks.columns import concat
from sinks.timing import Timer, never_handled, untimed

FLUSH_ROWS = 50_000
FLUSH_SECONDS = 5.0
ARCHIVE_SCHEMA = pa.schema([
    ("topic", pa.string()), ("partition", pa.int32()), ("offset", pa.int64()),
    ("key", pa.binary()), ("timestamp", parquet.TIMESTAMP), ("value", pa.binary()),
])


def remove_orphans(roots: list[Path], part: str, next_seq: int) -> int:
    """Delete this partition's files numbered next_seq or above; return how many."""
    pattern = re.compile(rf"^{re.escape(part)}-(\d{{9}})\.parquet$")
    removed = 0
    for root in roots:
        for path in root.glob(f"date=*/{part}-*.parquet"):
            match = pattern.match(path.name)
            if match and int(match.group(1)) >= next_seq:
                path.unlink()
                removed += 1
        for tmp in root.glob(f"date=*/.{part}-*.tmp"):
            tmp.unlink()
    return removed


class _BufferedPartition(StatefulSinkPartition):
    """Buffers rows; writes numbered files on size, on time, at snapshots and at the end."""

    sink = ""  # its name in the metrics

    def __init__(self, part: str, next_seq: int, timer: Timer = untimed,
                 on_close_error: Callable[[OSError], bool] = never_handled):
        self.part, self.seq = part, next_seq
        self.timer, self.on_close_error = timer, on_close_error
        self.rows: list = []
        self.count = 0  # rows buffered (an item of `rows` may hold many)
        self.last_flush = time.monotonic()
        self.failed = False  # a write failed: the partition writes no more

    def buffered(self, rows: int) -> None:
        """`rows` more rows are in `self.rows`: write a file if there are enough, or it is time."""
        self.count += rows
        if self.count >= FLUSH_ROWS or time.monotonic() - self.last_flush >= FLUSH_SECONDS:
            self.flush()

    def flush(self) -> None:
        self.last_flush = time.monotonic()
        if not self.rows:
            return
        self.failed = True  # until the files are written
        with self.timer(self.sink, self.count):
            self.write_files(f"{self.part}-{self.seq:09d}.parquet")
        self.failed = False
        self.rows, self.count = [], 0
        self.seq += 1
        # Arrow's allocator keeps what a write freed for the next one; with millions of
        # open events in the engine beside it, give it back (measured: ~100 MB of peak RSS)
        pa.default_memory_pool().release_unused()

    def write_files(self, name: str) -> None:
        raise NotImplementedError

    def snapshot(self) -> int:
        self.flush()
        return self.seq

    def close(self) -> None:
        # Bytewax closes a partition as it drops it, also while unwinding from a failed
        # write; failing there aborts the process. Rows not written were never
        # snapshotted: the next start writes them.
        if self.failed:
            return
        try:
            self.flush()
        except OSError as exc:
            if not self.on_close_error(exc):  # the flow keeps a full disk to report at its end
                raise


class _DecisionPartition(_BufferedPartition):
    sink = "parquet"

    def __init__(self, root: Path, part: str, next_seq: int, timer: Timer = untimed,
                 on_close_error: Callable[[OSError], bool] = never_handled):
        super().__init__(part, next_seq, timer, on_close_error)
        self.root = root

    def write_batch(self, values: list) -> None:
        self.rows.extend(values)  # sinks.columns.Columns, one per engine Output
        self.buffered(sum(batch.rows for batch in values))

    def write_files(self, name: str) -> None:
        # One chunk per table: the buffer holds a chunk per engine output, and Arrow's
        # compute and writer pay per chunk (measured: 300 chunks took 3.5x longer)
        batch = concat(self.rows)
        if batch.decisions.num_rows:
            parquet.write_by_day(batch.decisions.combine_chunks(), self.root / "decisions", name)
        if batch.fates.num_rows:
            parquet.write_by_day(batch.fates.combine_chunks(), self.root / "fates", name)


class DecisionSink(FixedPartitionedSink):
    """Decisions and fates under <root>/decisions/date=.../ and <root>/fates/date=.../.

    `shard_of(key)` is the shard an item's key names (its part is that modulo `parts`);
    `timer(sink, rows)` times each write; `on_close_error(exc)` is True when the caller
    keeps an error met while Bytewax closes a partition (raising there aborts the process)."""

    def __init__(self, root: Path, parts: int, shard_of: Callable[[str], int],
                 timer: Timer = untimed, on_close_error: Callable[[OSError], bool] = never_handled):
        self.root, self.parts, self.shard_of = root, parts, shard_of
        self.timer, self.on_close_error = timer, on_close_error

    def list_parts(self) -> list[str]:
        return [f"part{i}" for i in range(self.parts)]

    def part_fn(self, item_key: str) -> int:
        return self.shard_of(item_key) % self.parts

    def build_part(self, step_id: str, for_part: str, resume_state: int | None) -> _DecisionPartition:
        next_seq = resume_state or 0
        remove_orphans([self.root / "decisions", self.root / "fates"], for_part, next_seq)
        return _DecisionPartition(self.root, for_part, next_seq, self.timer, self.on_close_error)


class _ArchivePartition(_BufferedPartition):
    sink = "archive"

    def __init__(self, root: Path, part: str, next_seq: int, timer: Timer = untimed,
                 on_close_error: Callable[[OSError], bool] = never_handled):
        super().__init__(part, next_seq, timer, on_close_error)
        self.root = root

    def write_batch(self, values: list) -> None:
        # RawBatch objects become Arrow record batches at once: no Python tuple per record
        for batch in values:
            size = len(batch.offsets)
            self.rows.append(pa.record_batch([
                pa.array([batch.topic] * size, pa.string()),
                pa.array([batch.partition] * size, pa.int32()),
                pa.array(batch.offsets, pa.int64()), pa.array(batch.keys, pa.binary()),
                pc.multiply(pa.array(batch.timestamps_ms, pa.int64()), 1000).cast(parquet.TIMESTAMP),
                pa.array(batch.values, pa.binary())], schema=ARCHIVE_SCHEMA))
        self.buffered(sum(len(batch.offsets) for batch in values))

    def write_files(self, name: str) -> None:
        table = pa.Table.from_batches(self.rows, schema=ARCHIVE_SCHEMA).combine_chunks()
        days = parquet.day_column(table.column("timestamp"))
        parquet.write_days(table, days, self.root / "events", name)


class ArchiveSink(FixedPartitionedSink):
    """Every consumed record, raw, under <root>/events/date=.../ (the backfill source);
    `timer` and `on_close_error` as for DecisionSink."""

    def __init__(self, root: Path, parts: int, timer: Timer = untimed,
                 on_close_error: Callable[[OSError], bool] = never_handled):
        self.root, self.parts = root, parts
        self.timer, self.on_close_error = timer, on_close_error

    def list_parts(self) -> list[str]:
        return [f"part{i}" for i in range(self.parts)]

    def part_fn(self, item_key: str) -> int:
        return zlib.crc32(item_key.encode()) % self.parts  # keys are "topic:partition"

    def build_part(self, step_id: str, for_part: str, resume_state: int | None) -> _ArchivePartition:
        next_seq = resume_state or 0
        remove_orphans([self.root / "events"], for_part, next_seq)
        return _ArchivePartition(self.root, for_part, next_seq, self.timer, self.on_close_error)
