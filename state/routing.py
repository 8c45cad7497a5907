"""Cutting one partition's records into per-shard slices, keeping what lateness needs.

Lateness is judged from a partition's whole history, but a shard only sees its
own accounts. So every slice says, for each record, the highest event time
earlier in the same chunk, and every shard gets every chunk's final progress
(`high`), even when none of the chunk's records are its own.
"""

from __future__ import annotations

import zlib

import msgspec

from state.contract import NEVER, Event, Invalid, Record


class Slice(msgspec.Struct, frozen=True, array_like=True):
    """A shard's share of one chunk of one partition, in offset order."""

    topic: str
    partition: int
    records: list[Record]
    chunk_max_before: list[int]  # per record: highest event time earlier in the chunk
    high: int  # highest event time in the whole chunk (NEVER if none)


def shard_of(key: str, shards: int) -> int:
    """A stable shard for a match key (crc32, not Python's salted hash)."""
    return zlib.crc32(key.encode()) % shards


def record_shard(record: Record, shards: int) -> int:
    if isinstance(record, Event):
        return shard_of(record.account, shards)
    return shard_of(f"{record.topic}:{record.partition}", shards)


def progress_time(record: Record) -> int:
    """The event time a record proves for its partition; invalid records prove nothing."""
    return NEVER if isinstance(record, Invalid) else record.time_us


def split(topic: str, partition: int, records: list[Record], shards: int) -> list[Slice]:
    """One slice per shard (possibly empty), for records of one partition in offset order."""
    per_shard: list[list[Record]] = [[] for _ in range(shards)]
    befores: list[list[int]] = [[] for _ in range(shards)]
    running = NEVER
    for record in records:
        shard = record_shard(record, shards)
        per_shard[shard].append(record)
        befores[shard].append(running)
        running = max(running, progress_time(record))
    return [Slice(topic, partition, per_shard[i], befores[i], running) for i in range(shards)]

