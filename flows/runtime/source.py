"""The Kafka source: one bytewax partition per topic partition.

A partition's snapshot is the next offset to read, so after a crash it resumes
exactly where the last committed epoch left it. Each poll returns one RawBatch:
records of one partition, in offset order, with nothing decoded yet.

End offsets come from reading to partition EOF, never from the broker's high
watermark (the embedded broker reports that at record-batch granularity).

Partitions are read with isolation.level=read_committed. Transaction markers
take offsets that no consumer receives (as do aborted or compacted records), so
a partition's progress is the consumer's position, which moves past them, not
the offset of the last record received: otherwise a partition ending with a
marker would never reach its end.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

from bytewax.inputs import FixedPartitionedSource, StatefulSourcePartition
from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, TopicPartition

from flows import logs
from flows.logs import UserError
from flows.kafka.outage import OUTAGE, UNREACHABLE
from state.contract import Part

IDLE_WAIT = timedelta(milliseconds=10)  # after an empty poll, before the next one
LAG_EVERY_S = 1.0
# Under --max-rate a partition sleeps after each batch for the batch's share of the rate.
# Bytewax closes an epoch only when the input wakes, so a batch is at most this much
# reading: a whole 5000-record batch at a low rate would hold snapshots back for seconds.
PACED_BATCH_S = 0.2
# Without this, the broker holds a fetch up to 500 ms waiting for more data; a record
# then waits that long before the flow sees it (measured: p50 365 ms old at consumption).
SOURCE_DEFAULTS = {"fetch.wait.max.ms": 10}
# Whatever the config says: records of open or aborted transactions are not the log.
READ_COMMITTED = {"isolation.level": "read_committed"}
PARKED_WAIT = timedelta(seconds=1)  # between asks for an offset beyond the log's end


@dataclass(frozen=True)
class RawBatch:
    topic: str
    partition: int
    offsets: list[int]
    keys: list[bytes | None]
    values: list[bytes | None]
    timestamps_ms: list[int]


class Counters:
    """Records consumed and consumer lag per partition, read by the progress bar and the metrics."""

    def __init__(self):
        self.lock = threading.Lock()
        self.consumed: dict[Part, int] = {}
        self.lag: dict[Part, int] = {}

    def add(self, part: Part, count: int) -> None:
        with self.lock:
            self.consumed[part] = self.consumed.get(part, 0) + count

    def total(self) -> int:
        with self.lock:
            return sum(self.consumed.values())




class _Partition(StatefulSourcePartition[RawBatch, int]):
    def __init__(self, config: dict, topic: str, partition: int, start: int, end: int | None,
                 batch_size: int, counters: Counters, seconds_per_record: float = 0.0,
                 pacemaker=None, skip_lost: bool = False):
        self.topic, self.partition, self.end = topic, partition, end
        self.pacemaker = pacemaker  # flows.runtime.pacemaker.Pacemaker of a live run, told of every poll
        self.seconds_per_record = seconds_per_record  # --max-rate, spread over the partitions
        if seconds_per_record:
            batch_size = min(batch_size, max(1, int(PACED_BATCH_S / seconds_per_record)))
        self.batch_size, self.counters = batch_size, counters
        self.next_offset = start
        self.at_end = False  # read to the end the broker reported, and nothing since
        self.awake: datetime | None = None
        self.lag_checked = 0.0
        self.consumer_brokers = config.get("bootstrap.servers", "")
        self.consumer = Consumer({**SOURCE_DEFAULTS, **config, **READ_COMMITTED,
                                  "enable.partition.eof": True,
                                  "group.id": "tally-unused", "enable.auto.commit": False,
                                  # an offset the broker no longer holds is an error, never
                                  # a silent jump (flows/runtime/lost_offsets.py)
                                  "auto.offset.reset": "error",
                                  # one reporter for every client: N partitions, one line
                                  "error_cb": OUTAGE.error_cb(config.get("bootstrap.servers", "")),
                                  "logger": OUTAGE,
                                  "log.connection.close": False})
        self.skip_lost = skip_lost  # --skip-lost-offsets (flows/runtime/lost_offsets.py)
        self.out_of_range = False  # the log ends below our offset: wait for it to grow
        if skip_lost and start >= 0:
            low, _high = self.consumer.get_watermark_offsets(TopicPartition(topic, partition),
                                                             timeout=10)
            self.next_offset = max(start, low)  # what retention removed is given up
        self._assign()

    def _assign(self) -> None:
        start = self.next_offset
        self.consumer.assign([TopicPartition(self.topic, self.partition,
                                             start if start >= 0 else OFFSET_BEGINNING)])

    def next_batch(self) -> list[RawBatch]:
        if self.end is not None and self.next_offset >= self.end:
            raise StopIteration()
        if self.out_of_range:  # a while has passed: ask for our offset again
            self.out_of_range = False
            self._assign()
        # Never block: Bytewax polls the partitions one after the other on one thread,
        # so a blocking poll on one delays every other (next_awake paces idle ones).
        messages = self.consumer.consume(self.batch_size, 0)
        offsets, keys, values, stamps = [], [], [], []
        heard = False  # from the broker: a record or a partition end
        for message in messages:
            error = message.error()
            if error is not None:
                if error.code() == KafkaError._PARTITION_EOF:
                    self.at_end = heard = True  # the broker says: nothing more for now
                else:
                    self._on_error(error)
                continue
            offset = message.offset()
            if self.end is not None and offset >= self.end:
                break
            self.at_end = False
            offsets.append(offset)
            keys.append(message.key())
            values.append(message.value())
            stamps.append(message.timestamp()[1])
        if heard or offsets:
            OUTAGE.answered()
        if self.pacemaker is not None:
            self.pacemaker.polled((self.topic, self.partition), len(offsets), self.at_end)
        self._advance(offsets)
        if not offsets:
            self._note_lag()
            self.awake = datetime.now(timezone.utc) + (PARKED_WAIT if self.out_of_range else IDLE_WAIT)
            return []
        self.awake = None
        if self.seconds_per_record:
            pause = timedelta(seconds=len(offsets) * self.seconds_per_record)
            self.awake = datetime.now(timezone.utc) + pause
        self._note_lag()
        self.counters.add((self.topic, self.partition), len(offsets))
        return [RawBatch(self.topic, self.partition, offsets, keys, values, stamps)]

    def _advance(self, offsets: list[int]) -> None:
        """The next offset: past the records taken or, after a poll that took none, past
        any transaction markers the consumer skipped, but never past `end` (records
        beyond it were dropped). Markers after a batch are passed at the next empty poll."""
        if offsets:
            self.next_offset = offsets[-1] + 1
            return
        tp = self.consumer.position([TopicPartition(self.topic, self.partition)])[0]
        position = tp.offset if tp.error is None else -1  # -1001 until anything was read
        if self.end is not None:
            position = min(position, self.end)
        self.next_offset = max(self.next_offset, position)

    def _note_lag(self) -> None:
        """Records behind the partition's end, from the high watermark of the last fetch
        (librdkafka's cached value: no broker round trip)."""
        now = time.monotonic()
        if now - self.lag_checked < LAG_EVERY_S:
            return
        self.lag_checked = now
        _low, high = self.consumer.get_watermark_offsets(TopicPartition(self.topic, self.partition),
                                                         cached=True)
        if high >= 0:
            with self.counters.lock:
                self.counters.lag[(self.topic, self.partition)] = max(high - self.next_offset, 0)

    def _on_error(self, error: KafkaError) -> None:
        if error.code() == KafkaError._AUTO_OFFSET_RESET and self.skip_lost:
            self.out_of_range = True  # Kafka: a fetch beyond the log's end; asked again later
            return
        if error.code() == KafkaError._AUTO_OFFSET_RESET:
            raise UserError(f"{self.topic}:{self.partition}: offset {self.next_offset:,} is no "
                            f"longer in the broker's log (the topic was deleted, truncated, or "
                            f"retention removed it); start again to see what was lost")
        if error.code() in UNREACHABLE and not error.fatal():
            OUTAGE.failed(self.consumer_brokers, error.str())  # said once for every client
            return
        if error.fatal() or not error.retriable():
            raise RuntimeError(f"Kafka error on {self.topic}:{self.partition}: {error.str()}")
        logs.warning("kafka consumer error, retrying", partition=f"{self.topic}:{self.partition}",
                     error=error.str())

    def next_awake(self) -> datetime | None:
        return self.awake

    def snapshot(self) -> int:
        return self.next_offset

    def close(self) -> None:
        self.consumer.close()


class TallySource(FixedPartitionedSource[RawBatch, int]):
    """All partitions of the source topics, from `starts` (or their resume offsets) to `ends`."""

    def __init__(self, config: dict, starts: dict[Part, int],
                 ends: dict[Part, int] | None, batch_size: int = 5000,
                 counters: Counters | None = None, max_rate: float = 0.0, pacemaker=None,
                 skip_lost: bool = False):
        self.config, self.starts, self.ends = config, starts, ends
        self.skip_lost = skip_lost
        self.pacemaker = pacemaker
        self.seconds_per_record = len(starts) / max_rate if max_rate else 0.0
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
                          self.counters, self.seconds_per_record, self.pacemaker, self.skip_lost)
