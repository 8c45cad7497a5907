"""Files to a source's topic: parse every file whole, check it, then publish it whole.

A record goes to the partition its account hashes to (the same account, the same
partition, so redeliveries of a file meet their first copy); a file's heartbeat goes
to every partition, after the records, in the same transaction.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path

from flows.ingest.formats import FORMATS
from flows.ingest.records import FileRecords, Options, Refusal, encode, file_records, heartbeat_record
from flows.ingest.statement import FormatError
from flows.kafka import kafka_io
from flows.kafka.transactional import publish_all
from flows.logs import UserError
from state.contract import Part


@dataclass
class Summary:
    """What was published, for the summary at the end."""

    files: int = 0
    refused: int = 0
    records: int = 0
    heartbeats: int = 0
    totals: dict[str, Decimal] = field(default_factory=dict)  # per currency, signed
    first: str | None = None  # booking times, as published
    last: str | None = None
    unbalanced: list[str] = field(default_factory=list)

    def add(self, done: FileRecords) -> None:
        self.files += 1
        self.unbalanced += done.unbalanced
        for record in done.records:
            if record["type"] not in ("transaction", "payout"):
                continue
            self.records += 1
            currency = record["currency"]
            self.totals[currency] = self.totals.get(currency, Decimal(0)) + Decimal(record["amount"])
            moment = record["event_time"]
            self.first = moment if self.first is None else min(self.first, moment)
            self.last = moment if self.last is None else max(self.last, moment)


def read_file(fmt: str, path: Path, options: Options) -> FileRecords:
    """One file's records, or Refusal naming the file and why (nothing is published)."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise Refusal(f"{path}: cannot read it: {exc.strerror or exc}") from None
    try:
        statements = FORMATS[fmt](data, str(path))
    except FormatError as exc:
        raise Refusal(f"{exc}; nothing of the file was published") from None
    if not statements:
        raise Refusal(f"{path}: holds no statement or report line of format {fmt}; "
                      f"nothing was published")
    return file_records(str(path), statements, options)


def publish(brokers: str, topic: str, done: list[FileRecords], source: str,
            summary: Summary) -> None:
    """Publish the files' records and heartbeats in one transaction.

    Each partition's records go out in event-time order (a report lists its lines in its
    own order; the flow reads a partition's times as nearly ordered), then the partition's
    heartbeat, if the files say how far its accounts are in."""
    partitions = kafka_io.topic_partitions(brokers, [topic]).get(topic, 0)
    if partitions < 1:
        raise UserError(f"topic {topic} does not exist; create it with 'tally topics create'")

    def partition_of(account: str) -> int:
        return zlib.crc32(account.encode()) % partitions

    records: dict[int, list[dict]] = {}
    for file in done:
        for record in file.records:
            records.setdefault(partition_of(record["account"]), []).append(record)
    values: dict[Part, list] = {}
    for partition, listed in sorted(records.items()):
        listed.sort(key=lambda record: record.get("event_time", ""))  # stable: file order in ties
        values[(topic, partition)] = [(r["account"].encode(), encode(r)) for r in listed]
    beats = progress_us(done, partition_of)
    for partition, beat_us in beats.items():
        values.setdefault((topic, partition), []).append(
            (None, encode(heartbeat_record(source, beat_us))))
    publish_all(brokers, values, f"tally-ingest-{source}")
    for file in done:
        summary.add(file)
    summary.heartbeats += len(beats)


def progress_us(done: list[FileRecords], partition_of) -> dict[int, int]:
    """How far each partition's accounts are in: an account up to its latest statement, a
    partition up to its slowest account among the files. None of it when some file has no
    closing date (acquirer reports, intraday reports): no heartbeat then."""
    if any(file.heartbeat_us is None for file in done):
        return {}
    reach: dict[str, int] = {}
    for file in done:
        for account in file.accounts:
            reach[account] = max(reach.get(account, file.heartbeat_us), file.heartbeat_us)
    beats: dict[int, int] = {}
    for account, reached in reach.items():
        partition = partition_of(account)
        beats[partition] = min(beats.get(partition, reached), reached)
    return beats
