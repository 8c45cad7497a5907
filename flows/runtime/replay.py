"""`tally replay`: the same flow over a chosen stretch of the log, into its own namespace.

A replay is `tally run` with other starts and ends (flows/runtime/run.py `Stretch`),
read from the broker or from a namespace's raw archive. Starting from a
timestamp T, the flow starts a warm-up earlier, at T - warmup, and decides
everything from there. It writes only the decisions and fates whose window ends
at or after T: the warm-up rebuilds the state that those decisions depend on
(open events, lateness per partition, claims, redelivery memories); see
docs/replay.md for what that guarantees.

The resolved stretch is saved in the namespace (replay.json), so an
interrupted replay resumes with exactly the same ends, not the log's new end.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path

from flows.kafka import kafka_io
from flows.logs import UserError
from flows.runtime.run import Stretch
from state.config import MatchConfig, parse_duration, ConfigError
from state.contract import Part

US_PER_MS = 1000


@dataclass(frozen=True)
class Position:
    kind: str  # "earliest", "end", "time" or "offsets"
    at_us: int | None = None
    offsets: dict | None = None


def parse_position(text: str, start: bool) -> Position:
    """--from: earliest | RFC 3339 time | topic:partition=offset,...; --to: end | time | offsets."""
    text = text.strip()
    edge = "earliest" if start else "end"
    if text == edge:
        return Position(edge)
    if "=" in text:
        return Position("offsets", offsets=_parse_offsets(text))
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        moment = None
    if moment is None or moment.tzinfo is None:
        raise UserError(f"{'--from' if start else '--to'} {text!r}: use {edge}, a time with its "
                        f"UTC offset (2026-03-02T12:00:00Z) or offsets (recon.bank:0=1200,...)")
    return Position("time", at_us=_us(moment))


def _us(moment: datetime) -> int:
    delta = moment - datetime(1970, 1, 1, tzinfo=moment.tzinfo)
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


def _parse_offsets(text: str) -> dict[Part, int]:
    offsets = {}
    for item in text.split(","):
        name, _, offset = item.strip().rpartition("=")
        topic, _, partition = name.rpartition(":")
        if not topic or not partition.isdigit() or not offset.isdigit():
            raise UserError(f"{item!r} is not topic:partition=offset (e.g. recon.bank:0=1200)")
        offsets[(topic, int(partition))] = int(offset)
    return offsets


class BrokerLog:
    """The log as the broker holds it now."""

    def __init__(self, brokers: str, config: MatchConfig):
        self.brokers = brokers
        topics = list(config.topics.values())
        counts = kafka_io.topic_partitions(brokers, topics)
        self.partitions = sorted((t, p) for t, n in counts.items() for p in range(n))
        self.archive = None

    def bounds(self) -> tuple[dict[Part, int], dict[Part, int]]:
        ends = kafka_io.end_offsets(self.brokers, sorted({t for t, _ in self.partitions}))
        return kafka_io.low_offsets(self.brokers, self.partitions), ends

    def offsets_at(self, ends: dict[Part, int], at_ms: int) -> dict[Part, int]:
        return kafka_io.offsets_at(self.brokers, ends, at_ms)


class ArchiveLog:
    """The log as a namespace's raw archive holds it."""

    def __init__(self, namespace_root: Path, config: MatchConfig):
        from flows.runtime.archive import Archive
        self.archive = Archive(namespace_root)
        topics = set(config.topics.values())
        if self.archive.partitions is None:
            raise UserError(f"{namespace_root}/recovery/shape.json is missing, so the archive's "
                            f"partitions are unknown; archive replays need the namespace's files")
        self.partitions = [p for p in self.archive.partitions if p[0] in topics]

    def bounds(self) -> tuple[dict[Part, int], dict[Part, int]]:
        return self.archive.bounds(self.partitions)

    def offsets_at(self, ends: dict[Part, int], at_ms: int) -> dict[Part, int]:
        return self.archive.offsets_at(ends, at_ms)


@dataclass
class Plan:
    """A replay's resolved stretch, saved so that a resumed replay reads the same one."""

    origin: str
    starts: dict[str, int]
    ends: dict[str, int]
    emit_from_us: int | None

    def stretch(self, archive) -> Stretch:
        return Stretch({_part(k): v for k, v in self.starts.items()},
                       {_part(k): v for k, v in self.ends.items()}, self.origin,
                       self.emit_from_us, archive)


def _part(name: str) -> Part:
    topic, partition = name.rsplit(":", 1)
    return topic, int(partition)


def plan(log, origin: str, start: Position, stop: Position, warmup_us: int) -> Plan:
    lows, ends = log.bounds()
    stop_at = _resolve(log, stop, lows, ends, "--to")
    if start.kind == "time":
        starts = log.offsets_at(ends, (start.at_us - warmup_us) // US_PER_MS)
        emit_from = start.at_us
    else:
        starts, emit_from = _resolve(log, start, lows, ends, "--from"), None
    for part in starts:
        if starts[part] > stop_at[part]:
            raise UserError(f"{part[0]}:{part[1]} would start at {starts[part]}, after its end "
                            f"{stop_at[part]}: --from must come before --to")
    return Plan(origin, {f"{t}:{p}": o for (t, p), o in sorted(starts.items())},
                {f"{t}:{p}": o for (t, p), o in sorted(stop_at.items())}, emit_from)


def _resolve(log, position: Position, lows, ends, flag: str) -> dict[Part, int]:
    if position.kind == "earliest":
        return dict(lows)
    if position.kind == "end":
        return dict(ends)
    if position.kind == "time":
        return log.offsets_at(ends, -(-(position.at_us + 1) // US_PER_MS))  # stamped after T: out
    unknown = sorted(set(position.offsets) - set(ends))
    if unknown:
        raise UserError(f"{flag}: no such partition {unknown[0][0]}:{unknown[0][1]}")
    missing = sorted(set(ends) - set(position.offsets))
    if missing and flag == "--from":
        raise UserError(f"--from: give an offset for every partition; missing "
                        f"{', '.join(f'{t}:{p}' for t, p in missing[:6])}")
    resolved = dict(ends) | position.offsets
    for part, offset in position.offsets.items():
        if not lows[part] <= offset <= ends[part]:
            raise UserError(f"{flag}: {part[0]}:{part[1]}={offset} is outside the log "
                            f"({lows[part]}..{ends[part]})")
    return resolved


def load_or_plan(path: Path, log, origin: str, start: Position, stop: Position,
                 warmup_us: int) -> Plan:
    """The saved plan when resuming the same replay; a new one (saved) otherwise."""
    if path.exists():
        saved = Plan(**json.loads(path.read_text()))
        if saved.origin != origin:
            raise UserError(f"{path.parent.name} holds a replay of {saved.origin!r}; use a new "
                            f"namespace for {origin!r}")
        return saved
    fresh = plan(log, origin, start, stop, warmup_us)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(asdict(fresh), indent=1))
    return fresh


def default_warmup_us(config: MatchConfig) -> int:
    """Long enough for every input of a decision whose window ends after the start:
    its window, the lateness before it, the claims and redelivery memories before
    that, and one more window for the decisions that consumed events before it; with
    relations, the longest relation's (a window, or a lag's upper end)."""
    span = max(r.window_us or r.lag_max_us for r in config.relation_list())
    return 2 * span + config.allowed_lateness_us + config.redelivery_horizon_us


def parse_warmup(text: str | None, config: MatchConfig) -> int:
    if text is None:
        return default_warmup_us(config)
    try:
        return parse_duration(text, "--warmup")
    except ConfigError as err:
        raise UserError(str(err)) from None
