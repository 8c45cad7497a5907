"""The Kafka ceiling: how fast the day's records leave the broker, before Tally does any work.

raw ceiling: one confluent-kafka Consumer assigned every partition of the day's
topics from offset 0, `consume(BATCH)` in a loop until every record of the day
has arrived. Each record's value is touched (its length summed), nothing else.
Consumer settings are `FAST` below: bigger fetches and a deeper local queue than
librdkafka's defaults, a short fetch wait; no group, no commits.

raw ceiling per partition: the flow's own source code (flows.runtime.source.TallySource
partitions: one Consumer per partition, the flow's settings, batches of 5,000,
each turned into a RawBatch), polled in turn from one thread, an idle partition
not before its next_awake(), as a single bytewax worker does; no bytewax.

decode only: raw ceiling plus `Decoder.decode(value, topic, partition, offset)`
on every record (the records are then dropped).

Measured: from just before the first poll (consumers already connected) to the
return of the poll that delivered the day's last record; each figure is the
fastest of REPEATS runs (other runs' rates in extra), the run least disturbed by
whatever else the machine does. Excluded: finding the end offsets and creating
and connecting the consumers.
"""

from __future__ import annotations

import time
from datetime import datetime, timezone

from confluent_kafka import Consumer, TopicPartition

from bench.common import Context, Result
from flows.kafka import kafka_io
from flows.runtime.source import TallySource
from state.contract import Decoder

BATCH = 10_000  # messages per consume() call
POLL_S = 0.05
REPEATS = 3  # each figure is the best of this many runs
STALL_S = 30.0  # no record for this long: the broker is not delivering, give up
FAST = {
    "group.id": "bench-unused", "enable.auto.commit": False, "enable.partition.eof": False,
    "fetch.max.bytes": 64 << 20,  # default 50 MiB
    "max.partition.fetch.bytes": 16 << 20,  # default 1 MiB
    "fetch.wait.max.ms": 10,  # default 500
    "queued.min.messages": 1_000_000,  # default 100,000
    "queued.max.messages.kbytes": 1 << 20,  # 1 GiB; default 64 MiB
}


def _ends(ctx: Context) -> dict[tuple[str, int], int]:
    ends = kafka_io.end_offsets(ctx.brokers, list(ctx.topics.values()))
    return {part: end for part, end in ends.items() if end > 0}


def _one_consumer(ctx: Context, decoder: Decoder | None) -> tuple[int, int, float]:
    """(records, value bytes, seconds) for the whole day through one consumer."""
    ends = _ends(ctx)
    total = sum(ends.values())  # the topics were empty before the day: offsets start at 0
    consumer = Consumer(kafka_io.kafka_config(ctx.brokers, FAST))
    try:
        consumer.list_topics(timeout=10)  # connected before the clock starts
        records = size = 0
        started = last = time.perf_counter()
        consumer.assign([TopicPartition(t, p, 0) for t, p in ends])
        while records < total:
            messages = consumer.consume(BATCH, POLL_S)
            for message in messages:
                if message.error() is not None:
                    raise RuntimeError(f"consumer error: {message.error().str()}")
                value = message.value()
                size += len(value)
                if decoder is not None:
                    decoder.decode(value, message.topic(), message.partition(), message.offset())
            records += len(messages)
            now = time.perf_counter()
            if messages:
                last = now
            elif now - last > STALL_S:
                raise RuntimeError(f"no record for {STALL_S:.0f}s after {records} of {total}")
        return records, size, last - started
    finally:
        consumer.close()


def _per_partition(ctx: Context) -> tuple[int, int, float]:
    """(records, consumers, seconds) through the flow's source partitions, polled in turn."""
    ends = _ends(ctx)
    source = TallySource(kafka_io.kafka_config(ctx.brokers), {p: 0 for p in ends}, ends)
    parts = [source.build_part("bench", f"{t}:{p}", None) for t, p in ends]
    try:
        for part in parts:
            part.consumer.list_topics(timeout=10)  # connected before the clock starts
        records, active = 0, list(parts)
        started = last = time.perf_counter()
        while active:
            now, got = datetime.now(timezone.utc), 0
            for part in list(active):
                if (part.next_awake() or now) > now:
                    continue  # idle: bytewax does not poll it before then
                try:
                    got += sum(len(b.offsets) for b in part.next_batch())
                except StopIteration:
                    active.remove(part)
            records += got
            if got:
                last = time.perf_counter()
            elif active:
                wake = min((p.next_awake() or now for p in active), default=now)
                time.sleep(max(0.0, (wake - datetime.now(timezone.utc)).total_seconds()))
            if time.perf_counter() - last > STALL_S:
                raise RuntimeError(f"no record for {STALL_S:.0f}s after {records}")
        return records, len(parts), last - started
    finally:
        for part in parts:
            part.close()


def _best(measure) -> tuple[tuple, list[int]]:
    """The fastest of REPEATS runs (the least disturbed), and every run's records/s."""
    runs = [measure() for _ in range(REPEATS)]
    return min(runs, key=lambda r: r[-1]), [round(r[0] / r[-1]) for r in runs]


def run(ctx: Context) -> list[Result]:
    (records, size, seconds), rates = _best(lambda: _one_consumer(ctx, None))
    raw = Result("raw ceiling", records, seconds, {
        "MB": round(size / 1e6, 1), "MB_per_s": round(size / 1e6 / seconds, 1),
        "consumers": 1, "batch": BATCH, "settings": {k: str(v) for k, v in FAST.items()},
        "events_per_s_of_each_run": rates})
    (records, consumers, seconds), rates = _best(lambda: _per_partition(ctx))
    per_part = Result("raw ceiling per partition", records, seconds, {
        "consumers": consumers, "batch": 5000, "settings": "the flow's (flows/runtime/source.py)",
        "events_per_s_of_each_run": rates})
    decoder = Decoder(ctx.config)
    (records, size, seconds), rates = _best(lambda: _one_consumer(ctx, decoder))
    decode = Result("decode only", records, seconds, {
        "consumers": 1, "batch": BATCH, "settings": "as raw ceiling",
        "events_per_s_of_each_run": rates})
    return [raw, per_part, decode]
