"""The engine alone: decode, split and Shard.ingest over the whole day, in memory.

engine alone: the day's values are read from disk first (not timed). Then, timed:
for chunks of CHUNK records per partition, taken round-robin
(flows.kafka.dayfiles.interleave; the flow reads 5,000 per partition per poll),
`Decoder.decode` of every record, `split` into one shard, `Shard.ingest`, and
collecting the decisions and fates in the order the engine emits them. extra
splits the time into decode / split / ingest (perf_counter around each, per chunk).
Excluded: reading files, Kafka, bytewax, sinks, the final flush (events still
open at the end stay pending, as in `tally run` without --flush), sorting.
The garbage collector runs with the flow's thresholds (GC_THRESHOLD, as flows/runtime/run.py sets).

engine via run_engine: `flows.dev.match.run_engine(day, config)` as `tally match` calls it,
timed whole: reading the files, chunks of 2,000, the same loop, sorting the output;
default GC thresholds, as `tally match` has.
"""

from __future__ import annotations

import gc
import time
from contextlib import contextmanager

from bench.common import Context, Result
from flows.kafka import dayfiles
from flows.dev.match import run_engine
from flows.runtime.run import GC_THRESHOLD
from state.config import MatchConfig
from state.contract import Decoder
from state.decision import Decision, Fate
from state import engine as engine_module
from state.engine import Shard
from state.routing import split

CHUNK = 5000


def ingest_day(values: dict[tuple[str, int], list[bytes]], config: MatchConfig
               ) -> tuple[list[Decision | Fate], Shard, dict[str, float]]:
    """What the engine emits, in order (per ingest: its decisions, then its fates, as the
    flow's engine step emits them), the shard, and seconds per phase."""
    chunks = list(dayfiles.interleave(values, CHUNK))
    decoder, shard = Decoder(config), Shard(config, values)
    emitted: list[Decision | Fate] = []
    phases = dict.fromkeys(("decode", "split", "ingest"), 0.0)
    clock = time.perf_counter
    for topic, partition, first, chunk in chunks:
        t0 = clock()
        records = [decoder.decode(v, topic, partition, first + i) for i, v in enumerate(chunk)]
        t1 = clock()
        (piece,) = split(topic, partition, records, 1, config.max_clock_skew_us)
        t2 = clock()
        out = shard.ingest(piece)
        emitted += out.decisions
        emitted += out.fates
        t3 = clock()
        phases["decode"] += t1 - t0
        phases["split"] += t2 - t1
        phases["ingest"] += t3 - t2
    return emitted, shard, phases


@contextmanager
def flow_gc():
    """The garbage collector's thresholds as flows/runtime/run.py sets them, then back to what they were."""
    default_gc = gc.get_threshold()
    gc.set_threshold(*GC_THRESHOLD)
    try:
        yield
    finally:
        gc.set_threshold(*default_gc)


def run(ctx: Context) -> list[Result]:
    values = ctx.values()
    records = sum(map(len, values.values()))
    with flow_gc():
        started = time.perf_counter()
        emitted, shard, phases = ingest_day(values, ctx.config)
        seconds = time.perf_counter() - started
    decisions = sum(isinstance(x, Decision) for x in emitted)
    alone = Result("engine alone", records, seconds, {
        "decisions": decisions, "decisions_per_s": round(decisions / seconds),
        "fates": len(emitted) - decisions, "open_at_end": shard.open_count(), "chunk": CHUNK,
        "gc_threshold": str(GC_THRESHOLD),
        # the Cython-compiled state modules, or their sources (TALLY_PURE_PYTHON=1, no compiler)
        "compiled": not engine_module.__file__.endswith(".py"),
        "seconds_by_phase": {k: round(v, 3) for k, v in phases.items()}})
    del emitted, shard, values

    started = time.perf_counter()
    result = run_engine(ctx.day, ctx.config, show_progress=False)
    seconds = time.perf_counter() - started
    whole = Result("engine via run_engine", result.records, seconds, {
        "decisions": len(result.decisions),
        "decisions_per_s": round(len(result.decisions) / seconds),
        "includes": "reading the day's files, chunks of 2,000, sorting the output"})
    return [alone, whole]
