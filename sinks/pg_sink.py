"""The PostgreSQL sink for the flow: idempotent bulk writes, one transaction per batch.

Writes happen before the epoch's snapshot commits, so after a crash the resume
epoch's outputs come again; deterministic decision ids and ON CONFLICT DO NOTHING
make that harmless. Nothing needs to be snapshotted.
"""

from __future__ import annotations

from typing import Callable

from bytewax.outputs import FixedPartitionedSink, StatefulSinkPartition

from sinks.columns import concat
from sinks.postgres import PgWriter, write_columns_with_retry
from sinks.timing import Timer, untimed


class _PgPartition(StatefulSinkPartition):
    def __init__(self, dsn: str, namespace: str, deadline_s: float, timer: Timer):
        self.dsn, self.namespace, self.deadline_s, self.timer = dsn, namespace, deadline_s, timer
        self.writer: PgWriter | None = None  # connected on first write, inside the retry loop

    def _writer(self, fresh: bool) -> PgWriter:
        if fresh or self.writer is None:
            if self.writer is not None:
                try:
                    self.writer.close()
                except Exception:  # the old connection is already broken; closing is best effort
                    pass
            self.writer = PgWriter(self.dsn, self.namespace)
            self.writer.ensure_schema()
        return self.writer

    def write_batch(self, values: list) -> None:
        batch = concat(values)  # sinks.columns.Columns, one per engine Output
        with self.timer("postgres", batch.rows):
            write_columns_with_retry(self._writer, batch, self.deadline_s, dsn=self.dsn)

    def snapshot(self) -> None:
        return None

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


class PostgresSink(FixedPartitionedSink):
    """`shard_of(key)` is the shard an item's key names (its sink part is that modulo
    `parts`); `timer(sink, rows)` times each write (the caller's metrics)."""

    def __init__(self, dsn: str, namespace: str, parts: int, deadline_s: float,
                 shard_of: Callable[[str], int], timer: Timer = untimed):
        self.dsn, self.namespace, self.parts, self.deadline_s = dsn, namespace, parts, deadline_s
        self.shard_of, self.timer = shard_of, timer

    def list_parts(self) -> list[str]:
        return [f"part{i}" for i in range(self.parts)]

    def part_fn(self, item_key: str) -> int:
        return self.shard_of(item_key) % self.parts

    def build_part(self, step_id: str, for_part: str, resume_state: None) -> _PgPartition:
        return _PgPartition(self.dsn, self.namespace, self.deadline_s, self.timer)
