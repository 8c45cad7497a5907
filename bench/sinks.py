"""The sinks alone: writing the day's decisions and fates, no Kafka, no engine in the clock.

The rows are what the engine emits over the whole day (bench.engine.ingest_day,
run first, not timed), kept in emission order: per engine step, its decisions
then its fates, as the flow's sinks receive them. Pending fates are never
emitted, so every fate is writable. `events` is the number of fates written: one
per record the day's rows account for, so events/s compares with the ceiling;
rows/s counts decisions and fates together.

postgres write: `PgWriter.write(decisions, fates)` on consecutive slices of
PG_BATCH rows (each slice split into its decisions and fates beforehand, not
timed), into a fresh namespace on ctx.pg_dsn. Timed: every write, including the
Arrow build (`sinks.columns.columns`, also reported alone as "build_s") and the
creation of the day partitions on first use. Excluded: connecting, creating the
schema, and dropping the namespace afterwards. Every row must be inserted (the
namespace is fresh), which is checked. PG_SWEEP repeats it at other batch sizes,
each into its own fresh namespace.

parquet write: for consecutive slices of FLUSH_ROWS rows (the flow's Parquet sink
flushes at that many rows, or every 5 s), `decisions_table` + `fates_table`
(timed as "build") and `write_by_day` of each (timed as "write": zstd, fsync,
rename) into a fresh directory under ctx.work.

sink step: what the flow's two sinks cost together for the day: the Arrow build
they share (once), the PostgreSQL write from it, and the Parquet write.
"""

from __future__ import annotations

import time
import uuid

from bench.common import Context, Result
from bench.engine import ingest_day
from sinks import parquet
from sinks.columns import columns
from sinks.parquet_sink import FLUSH_ROWS
from sinks.postgres import PgWriter, drop_namespace
from state.decision import Decision, Fate

# Rows per write. Catching up with the default --batch-size 5000, the flow's PostgreSQL
# sink was seen getting about 56,000 rows per write (one engine Output per shard per
# activation, 9 partitions x 5,000 records); live traffic gives smaller writes.
PG_BATCH = 50_000
PG_SWEEP = (5_000, 20_000)


def _slices(rows: list, size: int) -> list[tuple[list[Decision], list[Fate]]]:
    return [([r for r in rows[i:i + size] if isinstance(r, Decision)],
             [r for r in rows[i:i + size] if isinstance(r, Fate)])
            for i in range(0, len(rows), size)]


def _postgres(ctx: Context, rows: list, size: int) -> tuple[float, float]:
    """(seconds to write every row in writes of `size` rows into a fresh namespace, of which
    seconds building the Arrow columns)."""
    batches = _slices(rows, size)
    namespace = f"bench_{uuid.uuid4().hex[:12]}"
    writer = PgWriter(ctx.pg_dsn, namespace)
    try:
        writer.ensure_schema()
        inserted, build = 0, 0.0
        started = time.perf_counter()
        for decisions, fates in batches:
            t0 = time.perf_counter()
            batch = columns(decisions, fates)
            build += time.perf_counter() - t0
            inserted += sum(writer.write_columns(batch))
        seconds = time.perf_counter() - started
    finally:
        writer.close()
        drop_namespace(ctx.pg_dsn, namespace)
    if inserted != len(rows):
        raise RuntimeError(f"{inserted} of {len(rows)} rows inserted into a fresh namespace")
    return seconds, build


def _parquet(ctx: Context, rows: list) -> tuple[float, float, int]:
    """(build seconds, write seconds, bytes on disk) for every row, in the flow's file sizes."""
    root = ctx.work / f"bench-parquet-{uuid.uuid4().hex[:8]}"
    build = write = 0.0
    for seq, (decisions, fates) in enumerate(_slices(rows, FLUSH_ROWS)):
        name = f"part0-{seq:09d}.parquet"
        t0 = time.perf_counter()
        tables = [(parquet.decisions_table(decisions), root / "decisions"),
                  (parquet.fates_table(fates), root / "fates")]
        t1 = time.perf_counter()
        for table, where in tables:
            parquet.write_by_day(table, where, name)
        build, write = build + t1 - t0, write + time.perf_counter() - t1
    size = sum(p.stat().st_size for p in root.rglob("*.parquet"))
    return build, write, size


def run(ctx: Context) -> list[Result]:
    rows, _, _ = ingest_day(ctx.values(), ctx.config)
    fates = sum(isinstance(r, Fate) for r in rows)
    counts = {"decisions": len(rows) - fates, "fates": fates, "rows": len(rows)}

    seconds, pg_build = _postgres(ctx, rows, PG_BATCH)
    sweep = {size: round(len(rows) / _postgres(ctx, rows, size)[0]) for size in PG_SWEEP}
    pg = Result("postgres write", fates, seconds, counts | {
        "rows_per_s": round(len(rows) / seconds), "batch_rows": PG_BATCH,
        "build_s": round(pg_build, 3), "writes": -(-len(rows) // PG_BATCH),
        "rows_per_s_by_batch_rows": sweep})

    build, write, size = _parquet(ctx, rows)
    seconds = build + write
    pq = Result("parquet write", fates, seconds, counts | {
        "rows_per_s": round(len(rows) / seconds), "batch_rows": FLUSH_ROWS,
        "build_s": round(build, 3), "write_s": round(write, 3), "MB_on_disk": round(size / 1e6, 1)})
    # the flow builds the columns once for both sinks: count the build once
    step = pg.seconds + write
    both = Result("sink step", fates, step, counts | {"rows_per_s": round(len(rows) / step)})
    return [pg, pq, both]
