"""The Kafka source: one bytewax partition per topic partition.

A partition's snapshot is the next offset to read, so after a crash it resumes
exactly where the last committed epoch left it. Each poll returns one RawBatch:
records of one partition, in offset order, with nothing decoded yet.

End offsets come from reading to partition EOF, never from the broker's high
watermark (the embedded broker reports that at record-batch granularity).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

from bytewax.inputs import FixedPartitionedSource, StatefulSourcePartition
from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, TopicPartition

from flows import logs

POLL_TIMEOUT_S = 0.05


@dataclass(frozen=True)
class RawBatch:
    topic: str
    partition: int
    offsets: list[int]
    keys: list[bytes | None]
    values: list[bytes | None]
    timestamps_ms: list[int]


class Counters:
    """Records consumed per partition, read by the progress bar and the metrics."""

    def __init__(self):
        self.lock = threading.Lock()
        self.consumed: dict[tuple[str, int], int] = {}

    def add(self, part: tuple[str, int], count: int) -> None:
        with self.lock:
            self.consumed[part] = self.consumed.get(part, 0) + count

    def total(self) -> int:
        with self.lock:
            return sum(self.consumed.values())


class _Partition(StatefulSourcePartition[RawBatch, int]):
    def __init__(self, config: dict, topic: str, partition: int, start: int, end: int | None,
                 batch_size: int, counters: Counters):
        self.topic, self.partition, self.end = topic, partition, end
        self.batch_size, self.counters = batch_size, counters
        self.next_offset = start
        self.consumer = Consumer({**config, "enable.partition.eof": True,
                                  "group.id": "tally-unused", "enable.auto.commit": False})
        self.consumer.assign([TopicPartition(topic, partition, start if start >= 0 else OFFSET_BEGINNING)])

    def next_batch(self) -> list[RawBatch]:
        if self.end is not None and self.next_offset >= self.end:
            raise StopIteration()
        messages = self.consumer.consume(self.batch_size, POLL_TIMEOUT_S)
        offsets, keys, values, stamps = [], [], [], []
        for message in messages:
            error = message.error()
            if error is not None:
                if error.code() != KafkaError._PARTITION_EOF:
                    self._on_error(error)
                continue
            offset = message.offset()
            if self.end is not None and offset >= self.end:
                break
            offsets.append(offset)
            keys.append(message.key())
            values.append(message.value())
            stamps.append(message.timestamp()[1])
        if not offsets:
            return []
        self.next_offset = offsets[-1] + 1
        self.counters.add((self.topic, self.partition), len(offsets))
        return [RawBatch(self.topic, self.partition, offsets, keys, values, stamps)]

    def _on_error(self, error: KafkaError) -> None:
        if error.fatal() or not error.retriable():
            raise RuntimeError(f"Kafka error on {self.topic}:{self.partition}: {error.str()}")
        logs.warning("kafka consumer error, retrying", partition=f"{self.topic}:{self.partition}",
                     error=error.str())

    def snapshot(self) -> int:
        return self.next_offset

    def close(self) -> None:
        self.consumer.close()


class TallySource(FixedPartitionedSource[RawBatch, int]):
    """All partitions of the source topics, from `starts` (or their resume offsets) to `ends`."""

    def __init__(self, config: dict, starts: dict[tuple[str, int], int],
                 ends: dict[tuple[str, int], int] | None, batch_size: int = 5000,
                 counters: Counters | None = None):
        self.config, self.starts, self.ends = config, starts, ends
        self.batch_size = batch_size
        self.counters = counters or Counters()

    def list_parts(self) -> list[str]:
        return [f"{t}:{p}" for t, p in sorted(self.starts)]

    def build_part(self, step_id: str, for_part: str, resume_state: int | None) -> _Partition:
        topic, partition = for_part.rsplit(":", 1)
        part = (topic, int(partition))
        start = self.starts[part] if resume_state is None else resume_state
        end = None if self.ends is None else self.ends[part]
        return _Partition(self.config, topic, int(partition), start, end, self.batch_size,
                          self.counters)
