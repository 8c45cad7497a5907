"""A namespace read back as canonical rows, and the comparison of two namespaces.

PostgreSQL and Parquet hand back the same decision in different shapes
(datetimes, lists, dicts). Canonical rows are plain tuples in the Parquet column
order with times as UTC microseconds, so equal content means equal tuples,
whichever store and whichever run it came from. Rows are keyed by identity: a
decision by its id, a fate and an archived record by their log position. A key
seen twice is a duplicate, which a correct sink never writes.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path

import msgspec

from sinks import parquet

_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
_ONE_US = timedelta(microseconds=1)
DECISION_FIELDS = tuple(parquet.DECISIONS_SCHEMA.names)
FATE_FIELDS = tuple(parquet.FATES_SCHEMA.names)
TABLES = ("decisions", "fates")


def _us(value):
    if isinstance(value, datetime):
        return (value - _EPOCH) // _ONE_US
    return value


def canonical(row: dict, fields: tuple[str, ...]) -> tuple:
    out = []
    for name in fields:
        value = row[name]
        if name in ("window_start", "window_end", "timestamp"):
            value = _us(value)
        elif name == "candidates":
            value = tuple((c["event"], c["ref"], c["confidence"]) for c in value)
        elif isinstance(value, list):
            value = tuple(value)
        out.append(value)
    return tuple(out)


def decision_key(row: tuple) -> str:
    return row[0]


def fate_key(row: tuple) -> tuple:
    return row[:3]  # topic, partition, offset


@dataclass
class Contents:
    """What one store holds for one namespace: rows by identity, and duplicates."""

    where: str
    rows: dict[str, dict] = field(default_factory=dict)  # table -> key -> canonical row
    duplicates: Counter = field(default_factory=Counter)  # table -> extra rows

    def add(self, table: str, rows, key) -> None:
        keyed = self.rows.setdefault(table, {})
        for row in rows:
            k = key(row)
            if k in keyed:
                self.duplicates[table] += 1
            keyed[k] = row

    def count(self, table: str) -> int:
        return len(self.rows.get(table, {}))


def from_rows(where: str, decisions: list[dict], fates: list[dict]) -> Contents:
    contents = Contents(where)
    contents.add("decisions", (canonical(r, DECISION_FIELDS) for r in decisions), decision_key)
    contents.add("fates", (canonical(r, FATE_FIELDS) for r in fates), fate_key)
    return contents


def from_postgres(dsn: str, namespace: str) -> Contents:
    from sinks.postgres import read_decisions, read_fates
    return from_rows(f"PostgreSQL schema {namespace}", read_decisions(dsn, namespace),
                     read_fates(dsn, namespace))


def from_parquet(root: Path) -> Contents:
    """Decisions, fates and the raw archive under <data-dir>/<namespace>."""
    from sinks.parquet_sink import ARCHIVE_SCHEMA
    contents = from_rows(
        f"Parquet {root}",
        parquet.read_dataset(root / "decisions", parquet.DECISIONS_SCHEMA).to_pylist(),
        parquet.read_dataset(root / "fates", parquet.FATES_SCHEMA).to_pylist())
    archive = parquet.read_dataset(root / "events", ARCHIVE_SCHEMA)
    contents.add("events", (canonical(r, tuple(ARCHIVE_SCHEMA.names)) for r in archive.to_pylist()),
                 fate_key)
    return contents


@dataclass(frozen=True)
class Difference:
    table: str
    only_a: list
    only_b: list
    changed: list  # keys present in both with different content

    def __bool__(self) -> bool:
        return bool(self.only_a or self.only_b or self.changed)


def compare(a: Contents, b: Contents, tables=TABLES) -> list[Difference]:
    """The differing tables between a and b (empty when identical)."""
    found = []
    for table in tables:
        rows_a, rows_b = a.rows.get(table, {}), b.rows.get(table, {})
        diff = Difference(table, sorted(rows_a.keys() - rows_b.keys()),
                          sorted(rows_b.keys() - rows_a.keys()),
                          sorted(k for k in rows_a.keys() & rows_b.keys() if rows_a[k] != rows_b[k]))
        if diff:
            found.append(diff)
    return found


def digest(rows: dict) -> str:
    """SHA-256 over the canonical rows in key order: equal digests, equal content."""
    return hashlib.sha256(msgspec.json.encode([rows[k] for k in sorted(rows)])).hexdigest()
