"""The comparison of two namespaces, over their canonical rows (`sinks.stores`).

Canonical rows are plain tuples in the Parquet column order with times as UTC
microseconds, so equal content means equal tuples, whichever store and whichever
run it came from. Rows are keyed by identity: a
decision by its id, a fate and an archived record by their log position. A key
seen twice is a duplicate, which a correct sink never writes.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import msgspec

from sinks.stores import (DECISION_FIELDS, FATE_FIELDS, TABLES, Archive, ParquetStore,
                          PostgresStore, canonical)

__all__ = ["DECISION_FIELDS", "FATE_FIELDS", "TABLES", "Contents", "Difference", "canonical",
           "compare", "digest", "from_parquet", "from_postgres", "from_rows"]


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


def from_rows(where: str, decisions: list[tuple], fates: list[tuple]) -> Contents:
    """Contents of canonical decision and fate rows."""
    contents = Contents(where)
    contents.add("decisions", decisions, decision_key)
    contents.add("fates", fates, fate_key)
    return contents


def from_postgres(dsn: str, namespace: str) -> Contents:
    with PostgresStore(dsn, namespace) as store:
        return from_rows(f"PostgreSQL schema {namespace}", store.decisions(), store.fates())


def from_parquet(root: Path) -> Contents:
    """Decisions, fates and the raw archive under <data-dir>/<namespace>."""
    store = ParquetStore(root.parent, root.name)
    contents = from_rows(f"Parquet {root}", store.decisions(), store.fates())
    contents.add("events", Archive(root).records(), fate_key)
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
