"""The Bytewax dataflow: Kafka -> decode and split -> engine shards -> sinks.

Order is what makes it deterministic. Bytewax keeps order per (source partition,
key) along one path, so every record of a partition travels to its shard along
one path, and each chunk's progress goes to every shard (state/routing.py). No
merge or redistribute sits upstream of the engine, and no EventClock: the
engine's watermark comes from the data alone.
"""

from __future__ import annotations

import threading
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import bytewax.operators as op
from bytewax.dataflow import Dataflow
from bytewax.operators import StatefulBatchLogic

from flows.runtime import disk

from flows.runtime import memory, metrics
from flows.logs import UserError
from flows.runtime.placement import shard_key, shard_of_key
from flows.runtime.source import Counters, RawBatch, TallySource
from sinks.columns import Columns, columns
from sinks.parquet_sink import ArchiveSink, DecisionSink
from state.config import MatchConfig
from state.contract import NEVER, Decoder, Part
from state.decision import Decision
from flows.runtime.recovery_store import restore
from state.engine import Output, Shard, encode_snapshot
from state.routing import split


@dataclass
class FlowSettings:
    config: MatchConfig
    kafka: dict  # librdkafka settings (bootstrap.servers, security)
    starts: dict[Part, int]  # first offset per partition
    ends: dict[Part, int] | None  # stop here (exclusive); None: run forever
    data_root: Path  # <data-dir>/<namespace>
    pg_dsn: str | None
    namespace: str
    shards: int = 4
    sink_parts: int = 1
    max_rate: float = 0.0  # records/s over all partitions; 0: as fast as it goes
    spread_keys: bool = False  # shard keys named to spread over workers (flows/runtime/placement.py)
    flush: bool = False
    batch_size: int = 5000
    pg_retry_deadline_s: float = 300.0
    archive: object | None = None  # flows.runtime.archive.Archive: read it instead of the broker
    emit_from_us: int | None = None  # a replay's warm-up: decide, but write nothing ending earlier
    skip_lost: bool = False  # --skip-lost-offsets: resume where the broker can (flows/runtime/lost_offsets.py)


@dataclass
class FlowStats:
    """What this process saw, for the run's summary (filled from worker threads)."""

    counters: Counters = field(default_factory=Counters)
    decisions: Counter = field(default_factory=Counter)
    pending: int = 0
    warm_up: int = 0  # decisions made but not written: they end before a replay's start
    lock: threading.Lock = field(default_factory=threading.Lock)
    shards: list = field(default_factory=list)  # this process's engine shards, for the metrics
    open_events: dict = field(default_factory=dict)  # id(shard) -> open events at its last snapshot

    def count(self, decisions: list[Decision]) -> None:
        with self.lock:
            self.decisions.update(f"match tier {d.tier}" if d.kind == "match" else d.exception_kind
                                  for d in decisions)

    def add_pending(self, count: int) -> None:
        with self.lock:
            self.pending += count


class ShardLogic(StatefulBatchLogic):
    """One engine shard as bytewax state; its snapshot is the engine's plain-data snapshot."""

    def __init__(self, shard: Shard, flush: bool, stats: FlowStats):
        self.shard, self.flush, self.stats = shard, flush, stats
        stats.shards.append(shard)
        self._count_open()

    def on_batch(self, slices: list) -> tuple[list, bool]:
        # One output item per batch, not one per row: Bytewax's cost is per item.
        out = Output([], [])
        for piece in slices:
            out.extend(self.shard.ingest(piece))
        self.stats.count(out.decisions)
        return ([out] if out.decisions or out.fates else []), StatefulBatchLogic.RETAIN

    def on_eof(self) -> tuple[list, bool]:
        out = Output([], [])
        if self.flush:
            out = self.shard.flush()
            self.stats.count(out.decisions)
        self.stats.add_pending(self.shard.pending_count())
        self._count_open()
        return ([out] if out.decisions or out.fates else []), StatefulBatchLogic.RETAIN

    def snapshot(self) -> bytes:
        with metrics.snapshot_timer():
            snap = encode_snapshot(self.shard)
        self._count_open()
        memory.give_back()
        return snap

    def _count_open(self) -> None:
        # for the metrics: counting walks every account, so it is done per snapshot, not per batch
        self.stats.open_events[id(self.shard)] = self.shard.open_count()


def splitter(config: MatchConfig, shards: int, spread_keys: bool, pacemaker=None):
    decoder = Decoder(config)
    keys = [shard_key(i) if spread_keys else str(i) for i in range(shards)]

    def split_batch(batch: RawBatch) -> list[tuple[str, object]]:
        records = [decoder.decode(value, batch.topic, batch.partition, offset)
                   for offset, value in zip(batch.offsets, batch.values)]
        pieces = split(batch.topic, batch.partition, records, shards, config.max_clock_skew_us)
        if pacemaker is not None:
            pacemaker.read((batch.topic, batch.partition), pieces[0].high)
        return [(keys[i], piece) for i, piece in enumerate(pieces)
                if piece.records or piece.high != NEVER]

    return split_batch


def _after(since_us: int, stats: FlowStats):
    """A replay's warm-up: keep only what ends at or after `since_us`, count what is dropped."""
    def keep(item: tuple[str, Output]) -> tuple[str, Output]:
        key, out = item
        decisions = [d for d in out.decisions if d.window_end >= since_us]
        with stats.lock:
            stats.warm_up += len(out.decisions) - len(decisions)
        return key, Output(decisions, [f for f in out.fates if f.window_end >= since_us])

    return keep


def _columns(item: tuple[str, Output]) -> tuple[str, Columns]:
    key, out = item
    return key, columns(out.decisions, out.fates)


def _source(settings: FlowSettings, stats: FlowStats, pacemaker):
    if settings.archive is not None:
        from flows.runtime.archive import ArchiveSource
        return ArchiveSource(settings.archive, settings.starts, settings.ends, settings.batch_size,
                             stats.counters)
    return TallySource(settings.kafka, settings.starts, settings.ends, settings.batch_size,
                       stats.counters, settings.max_rate, pacemaker, settings.skip_lost)


def keep_full_disk(exc: OSError) -> bool:
    """A sink's `on_close_error`: a full disk met as Bytewax closes a sink partition is kept
    for `tally run` to report once the flow has ended (flows/runtime/disk.py); others are raised."""
    if not disk.is_full(exc):
        return False
    disk.note_closing(exc)
    return True


def build_flow(settings: FlowSettings, stats: FlowStats, pacemaker=None) -> Dataflow:
    """The dataflow; with a `pacemaker` (flows/runtime/pacemaker.py, live runs only) its source
    and decode step tell it what each partition reads, and it writes into quiet ones."""
    from sinks.pg_sink import PostgresSink

    partitions = sorted(settings.starts)
    flow = Dataflow("tally")
    raw = op.input("kafka", flow, _source(settings, stats, pacemaker))
    slices = op.flat_map("decode_split", raw, splitter(settings.config, settings.shards,
                                                       settings.spread_keys, pacemaker))

    def build_shard(resume: bytes | None) -> ShardLogic:
        shard = Shard(settings.config, partitions) if resume is None else restore(resume)
        if shard.config.deciding() != settings.config.deciding():
            raise UserError("the matching config differs from the one in the recovery snapshot; "
                            "use a new namespace (or the old config) to continue")
        return ShardLogic(shard, settings.flush, stats)

    outputs = op.stateful_batch("engine", slices, build_shard)
    if settings.emit_from_us is not None:
        outputs = op.map("warm_up", outputs, _after(settings.emit_from_us, stats))
    # Both stores write the same Arrow columns, built once per engine Output.
    outputs = op.map("columns", outputs, _columns)
    op.output("parquet", outputs, DecisionSink(settings.data_root, settings.sink_parts, shard_of_key,
                                               metrics.sink_write, keep_full_disk))
    if settings.pg_dsn:
        op.output("postgres", outputs, PostgresSink(settings.pg_dsn, settings.namespace,
                                                    settings.sink_parts,
                                                    settings.pg_retry_deadline_s, shard_of_key,
                                                    metrics.sink_write))
    archive = op.map("archive_key", raw, lambda b: (f"{b.topic}:{b.partition}", b))
    op.output("archive", archive, ArchiveSink(settings.data_root, settings.sink_parts,
                                              metrics.sink_write, keep_full_disk))
    return flow
