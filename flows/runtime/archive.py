"""The raw event archive as a source: a backfill when the broker no longer holds the log.

The archive sink (sinks/parquet_sink.py) writes every consumed record, byte for
byte, under <data-dir>/<namespace>/events/date=*/partK-SEQ.parquet. One topic
partition always goes to the same sink partition K, files are numbered in
write order, and each file holds a partition's records in offset order. So
reading a partition's rows file by file, in (K, SEQ) order, and sorting each
file's rows by offset gives the records in their original log order: the
same input, record for record, that the broker would give.
"""

from __future__ import annotations

import json
import re
from collections import defaultdict
from datetime import datetime, timezone
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from bytewax.inputs import FixedPartitionedSource, StatefulSourcePartition

from flows.logs import UserError
from flows.runtime.source import Counters, RawBatch
from sinks.audit import offset_bounds
from sinks.parquet_sink import ARCHIVE_SCHEMA
from state.contract import Part

_FILE = re.compile(r"^(part\d+)-(\d{9})\.parquet$")


class Archive:
    """The archive of one namespace: its files in write order, and its partitions."""

    def __init__(self, namespace_root: Path):
        self.root = namespace_root / "events"
        groups: dict[Part, list[Path]] = defaultdict(list)
        for path in self.root.glob("date=*/part*-*.parquet"):
            match = _FILE.match(path.name)
            if match:
                groups[(match.group(1), int(match.group(2)))].append(path)
        if not groups:
            raise UserError(f"no archived records under {self.root}: is the namespace right?")
        self.files = [sorted(groups[key]) for key in sorted(groups)]
        shape = namespace_root / "recovery" / "shape.json"
        self.partitions = ([tuple(_part(p)) for p in json.loads(shape.read_text())["partitions"]]
                           if shape.exists() else None)

    def records(self, part: Part, start: int = 0, end: int | None = None):
        """Tables of one partition's records in offset order, from start to end (exclusive)."""
        wanted = [("topic", "=", part[0]), ("partition", "=", part[1]), ("offset", ">=", start)]
        if end is not None:
            wanted.append(("offset", "<", end))
        for group in self.files:
            tables = [pq.read_table(path, schema=ARCHIVE_SCHEMA, filters=wanted) for path in group]
            table = pa.concat_tables(tables)
            if table.num_rows:
                yield table.sort_by("offset")

    def bounds(self, parts: list[Part]) -> tuple[dict[Part, int], dict[Part, int]]:
        """(first offset, end offset) per partition; an absent partition is empty at 0."""
        return offset_bounds(pa.concat_tables(
            pq.read_table(path, columns=["topic", "partition", "offset"])
            for group in self.files for path in group), parts)

    def offsets_at(self, ends: dict[Part, int], at_ms: int) -> dict[Part, int]:
        """Like kafka_io.offsets_at: the first offset stamped at or after at_ms, else the end."""
        at = pa.scalar(datetime.fromtimestamp(at_ms / 1000, timezone.utc), ARCHIVE_SCHEMA.field("timestamp").type)
        out = {}
        for part, end in ends.items():
            out[part] = end
            for table in self.records(part, 0, end):
                hits = pc.indices_nonzero(pc.greater_equal(table.column("timestamp"), at))
                if len(hits):
                    out[part] = table.column("offset")[hits[0].as_py()].as_py()
                    break
        return out


def _part(name: str) -> Part:
    topic, partition = name.rsplit(":", 1)
    return topic, int(partition)


class _ArchivePartition(StatefulSourcePartition[RawBatch, int]):
    def __init__(self, archive: Archive, part: Part, start: int, end: int, batch_size: int,
                 counters: Counters):
        self.part, self.end, self.batch_size, self.counters = part, end, batch_size, counters
        self.next_offset = start
        self.tables = archive.records(part, start, end)
        self.pending: pa.Table | None = None

    def next_batch(self) -> list[RawBatch]:
        if self.next_offset >= self.end:
            raise StopIteration()
        while self.pending is None or self.pending.num_rows == 0:
            self.pending = next(self.tables, None)
            if self.pending is None:
                raise StopIteration()  # the archive ends before `end`: nothing more to give
        rows, self.pending = self.pending.slice(0, self.batch_size), self.pending.slice(self.batch_size)
        offsets = rows.column("offset").to_pylist()
        stamps = pc.divide(rows.column("timestamp").cast(pa.int64()), 1000).to_pylist()
        self.next_offset = offsets[-1] + 1
        self.counters.add(self.part, len(offsets))
        return [RawBatch(self.part[0], self.part[1], offsets, rows.column("key").to_pylist(),
                         rows.column("value").to_pylist(), stamps)]

    def snapshot(self) -> int:
        return self.next_offset


class ArchiveSource(FixedPartitionedSource[RawBatch, int]):
    """Archived partitions from `starts` (or their resume offsets) to `ends`."""

    def __init__(self, archive: Archive, starts: dict[Part, int], ends: dict[Part, int],
                 batch_size: int = 5000, counters: Counters | None = None):
        self.archive, self.starts, self.ends = archive, starts, ends
        self.batch_size = batch_size
        self.counters = counters or Counters()

    def list_parts(self) -> list[str]:
        return [f"{t}:{p}" for t, p in sorted(self.starts)]

    def build_part(self, step_id: str, for_part: str, resume_state: int | None) -> _ArchivePartition:
        part = _part(for_part)
        start = self.starts[part] if resume_state is None else resume_state
        return _ArchivePartition(self.archive, part, start, self.ends[part], self.batch_size,
                                 self.counters)
