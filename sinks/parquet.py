"""Decisions and fates as Arrow tables and Parquet files.

The columns here are the contract other tools read, for `tally match` and the
live flow alike. Files are written with fixed settings (zstd, pinned row-group
size, no pandas metadata) and renamed into place, so a reader never sees a torn
file and the same rows give the same bytes with the same pyarrow.
"""

from __future__ import annotations

import os
from itertools import accumulate
from operator import attrgetter
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from state.decision import Decision, Fate

TIMESTAMP = pa.timestamp("us", tz="UTC")
ROW_GROUP_SIZE = 128 * 1024
WRITE_OPTIONS = dict(compression="zstd", compression_level=3, row_group_size=ROW_GROUP_SIZE,
                     use_dictionary=True, write_statistics=True, data_page_version="2.0")

CANDIDATE = pa.struct([("event", pa.string()), ("ref", pa.string()), ("confidence", pa.float64())])
CANDIDATES = pa.list_(CANDIDATE)
DECISIONS_SCHEMA = pa.schema([
    ("decision_id", pa.string()), ("kind", pa.string()), ("tier", pa.int8()),
    ("exception_kind", pa.string()), ("account", pa.string()), ("currency", pa.string()),
    ("amount_minor", pa.int64()), ("confidence", pa.float64()),
    ("member_event_ids", pa.list_(pa.string())), ("member_refs", pa.list_(pa.string())),
    ("window_start", TIMESTAMP), ("window_end", TIMESTAMP),
    ("missing_sources", pa.list_(pa.string())), ("candidates", CANDIDATES),
    ("reason", pa.string()), ("raw_base64", pa.string()),
    ("relation", pa.string()), ("fee_minor", pa.int64()),
])
FATES_SCHEMA = pa.schema([
    ("topic", pa.string()), ("partition", pa.int32()), ("offset", pa.int64()),
    ("source", pa.string()), ("event_id", pa.string()), ("outcome", pa.string()),
    ("decision_id", pa.string()), ("window_end", TIMESTAMP),
])


def decisions_table(decisions: list[Decision]) -> pa.Table:
    arrays = [candidates_array(decisions) if field.type == CANDIDATES else _column(decisions, field)
              for field in DECISIONS_SCHEMA]
    return pa.Table.from_arrays(arrays, schema=DECISIONS_SCHEMA)


def fates_table(fates: list[Fate]) -> pa.Table:
    return pa.Table.from_arrays([_column(fates, field) for field in FATES_SCHEMA],
                                schema=FATES_SCHEMA)


def _column(rows: list, field: pa.Field) -> pa.Array:
    # map(attrgetter) beats a comprehension of getattr, and, under the flow's GC
    # thresholds, one pass of a tuple per row (measured: docs/benchmarks.md)
    return pa.array(list(map(attrgetter(field.name), rows)), field.type)


def candidates_array(decisions: list[Decision]) -> pa.Array:
    """The candidates column from flat child columns: no dict per candidate."""
    lists = list(map(attrgetter("candidates"), decisions))
    offsets = pa.array(accumulate(map(len, lists), initial=0), pa.int32())
    flat = [c for candidates in lists for c in candidates]
    children = [pa.array(list(map(attrgetter(f.name), flat)), f.type) for f in CANDIDATE]
    return pa.ListArray.from_arrays(offsets, pa.StructArray.from_arrays(children, fields=list(CANDIDATE)),
                                    type=CANDIDATES)


def write_atomically(table: pa.Table, path: Path) -> Path:
    """Write to a hidden temporary name, fsync, then rename: readers see all or nothing."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        pq.write_table(table, tmp, **WRITE_OPTIONS)
        with open(tmp, "rb") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)  # a write cut short (a full disk) keeps no space
        exc.filename = exc.filename or str(path)  # pyarrow's errors name no file
        raise
    return path


def write_by_day(table: pa.Table, root: Path, name: str) -> list[Path]:
    """Split rows by the UTC day of window_end into root/date=YYYY-MM-DD/name."""
    return write_days(table, day_column(table.column("window_end")), root, name)


def day_column(times: pa.ChunkedArray) -> pa.ChunkedArray:
    """Each row's UTC day (null while pending): a cast, as formatting every row as text
    cost more than writing the file."""
    return pc.cast(times, pa.date32())


def write_days(table: pa.Table, days: pa.ChunkedArray, root: Path, name: str) -> list[Path]:
    """root/date=YYYY-MM-DD/name per day of `days` (date=pending for a null day)."""
    written = []
    for day in sorted(pc.unique(days).to_pylist(), key=lambda d: (d is None, d)):
        rows = table.filter(pc.is_null(days) if day is None else pc.equal(days, day))
        label = "pending" if day is None else day.isoformat()
        written.append(write_atomically(rows, root / f"date={label}" / name))
    return written


def read_dataset(root: Path, schema: pa.Schema, columns: list[str] | None = None) -> pa.Table:
    """Every visible Parquet file under root (hidden temporaries are skipped)."""
    files = sorted(p for p in root.rglob("*.parquet") if not p.name.startswith("."))
    if not files:
        empty = schema.empty_table()
        return empty.select(columns) if columns else empty
    return pa.concat_tables(pq.read_table(f, schema=schema, columns=columns) for f in files)
