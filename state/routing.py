"""Cutting one partition's records into per-shard slices, keeping what lateness needs.

Lateness is judged from a partition's whole history, but a shard only sees its
own accounts. So every slice carries the event times of the whole chunk (and
where its heartbeats are), and every shard follows every partition's progress
(state/stream_time.py), even when none of the chunk's records are its own.
"""

from __future__ import annotations

import zlib

import msgspec

from state.contract import NEVER, Event, Heartbeat, Invalid, Record


class Slice(msgspec.Struct, frozen=True, array_like=True):
    """A shard's share of one chunk of one partition, in offset order."""

    topic: str
    partition: int
    records: list[Record]
    positions: list[int]  # each record's place in the chunk
    befores: list[int]  # each record's highest event time earlier in the chunk
    times: list[int]  # the event time of every record in the chunk (NEVER: invalid)
    beats: list[int]  # the places of the chunk's heartbeats
    jumps: list[int]  # times more than max_clock_skew above all earlier in the chunk
    high: int  # highest event time in the whole chunk (NEVER if none), as read


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


def split(topic: str, partition: int, records: list[Record], shards: int,
          skew_us: int) -> list[Slice]:
    """One slice per shard (possibly empty), for records of one partition in offset order.

    `jumps` lets a shard see at once whether the chunk can hold a record too far ahead
    of its partition (state/stream_time.py): only one of those times can."""
    per_shard: list[list[Record]] = [[] for _ in range(shards)]
    positions: list[list[int]] = [[] for _ in range(shards)]
    befores: list[list[int]] = [[] for _ in range(shards)]
    times, beats, jumps = [], [], []
    running = NEVER
    for position, record in enumerate(records):
        shard = record_shard(record, shards)
        per_shard[shard].append(record)
        positions[shard].append(position)
        befores[shard].append(running)
        time_us = progress_time(record)
        times.append(time_us)
        if isinstance(record, Heartbeat):
            beats.append(position)
        elif time_us > running + skew_us:
            jumps.append(time_us)
        if time_us > running:
            running = time_us
    return [Slice(topic, partition, per_shard[i], positions[i], befores[i], times, beats, jumps,
                  running) for i in range(shards)]

