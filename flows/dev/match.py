"""`tally match`: the engine in-process over a day on disk, written as Parquet."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from flows.kafka import dayfiles
from flows.progress import Progress, table
from sinks import parquet
from state.config import MatchConfig
from state.contract import Decoder
from state.decision import Decision, Fate, fate_key, sort_key
from state.engine import Shard
from state.routing import split

CHUNK = 2000


@dataclass
class MatchResult:
    decisions: list[Decision]
    fates: list[Fate]
    records: int

    def summary(self) -> str:
        kinds = Counter(f"match tier {d.tier}" if d.kind == "match" else d.exception_kind
                        for d in self.decisions)
        outcomes = Counter(f.outcome for f in self.fates)
        rows = [("records", self.records), ("decisions", len(self.decisions))]
        rows += [(f"  {k}", v) for k, v in sorted(kinds.items())]
        rows += [(f"fate {k}", v) for k, v in sorted(outcomes.items())]
        return table(rows, "Tally match")


def run_engine(day_dir: Path, config: MatchConfig, flush: bool = False,
               show_progress: bool = True) -> MatchResult:
    """Decisions and fates of a whole day, each sorted in canonical order."""
    parts = dayfiles.partitions(day_dir, list(config.topics.values()))
    values = {part: dayfiles.read_values(path) for part, path in parts.items()}
    decoder, shard = Decoder(config), Shard(config, parts)
    decisions, fates = [], []
    progress = Progress(sum(map(len, values.values())), "matching", "records")
    progress.enabled &= show_progress
    for topic, partition, first, chunk in dayfiles.interleave(values, CHUNK):
        records = [decoder.decode(v, topic, partition, first + i) for i, v in enumerate(chunk)]
        (piece,) = split(topic, partition, records, 1, config.max_clock_skew_us)
        out = shard.ingest(piece)
        decisions += out.decisions
        fates += out.fates
        progress.advance(len(chunk))
    progress.close()
    out = shard.flush() if flush else None
    if out:
        decisions += out.decisions
        fates += out.fates
    fates += shard.pending()
    decisions.sort(key=sort_key)
    fates.sort(key=fate_key)
    return MatchResult(decisions, fates, progress.done)


def write_result(result: MatchResult, out_dir: Path) -> None:
    parquet.write_by_day(parquet.decisions_table(result.decisions), out_dir / "decisions", "part-0.parquet")
    parquet.write_by_day(parquet.fates_table(result.fates), out_dir / "fates", "part-0.parquet")
