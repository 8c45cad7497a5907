"""Tally's own heartbeats: event time that moves when a partition goes quiet.

The engine decides a window once every input partition has progressed past it,
and a partition progresses only by its own records. Real producers publish
transactions and nothing else, so a quiet partition (the night, a weekend, a
partition few accounts hash to) would hold every decision back.

So a live run keeps time moving itself. When a partition it has read to the end
has received nothing for `[heartbeats] idle` of wall-clock time, the pacemaker
writes a contract heartbeat into that very partition: its event time has reached
the present less the source's `max_source_delay`. The heartbeat is a record of the
partition, in its offset order: the run reads it back like any other record, and a
replay of the log meets it at the same position, so decisions stay a function of
the log (docs/determinism.md). A record that arrives after it with an older event
time is `late`, live and in replay alike.

It never declares a time ahead of the stream: while any partition this process
reads is behind its end (a backlog), the declaration is capped at the highest event
time any of them has reached. Each partition is read by one process, so each has
one writer. Bounded runs (--until-end, replay, drill) read history and write nothing.
"""

from __future__ import annotations

import threading
import time

import msgspec
from confluent_kafka import KafkaError, Producer

from flows import logs
from flows.kafka.outage import OUTAGE, UNREACHABLE
from state.config import MatchConfig
from state.contract import NEVER, Part, format_us

_ENCODER = msgspec.json.Encoder()
# Authorization and unknown-topic errors will not heal by retrying: stop writing there.
_REFUSALS = {KafkaError.TOPIC_AUTHORIZATION_FAILED, KafkaError.CLUSTER_AUTHORIZATION_FAILED,
             KafkaError._UNKNOWN_TOPIC, KafkaError.UNKNOWN_TOPIC_OR_PART}


def heartbeat_value(source: str, time_us: int) -> bytes:
    """A contract heartbeat, marked as Tally's own so `explain` and people can tell."""
    return _ENCODER.encode({"type": "heartbeat", "source": source,
                            "event_time": format_us(time_us), "origin": "tally"})


def silent_partitions(config: MatchConfig, parts: list[Part]) -> list[Part]:
    """The partitions a live run will not write heartbeats into, by the config."""
    source_of = config.source_of_topic()
    return [p for p in parts if not config.writes_heartbeats(source_of[p[0]])]


class Pacemaker:
    """The heartbeat writer of one process: told what its partitions read, it writes into
    the quiet ones. Called from the source (per poll) and the decode step (per batch)."""

    def __init__(self, kafka: dict, config: MatchConfig, clock=time.time):
        self.config, self.clock = config, clock
        self.brokers = kafka.get("bootstrap.servers", "")
        self.source_of = config.source_of_topic()
        self.idle_s = config.heartbeat_idle_us / 1_000_000
        self.lock = threading.Lock()
        self.high: dict[Part, int] = {}  # highest event time read per partition
        self.behind: dict[Part, bool] = {}  # not yet read to its end
        self.quiet_since: dict[Part, float] = {}  # monotonic time of its last record or beat
        self.declared: dict[Part, int] = {}  # the last time written into each partition
        self.refused: set[Part] = set()
        self.written = 0
        # made here, before the flow runs: not inside a poll, where a stop could cut it off
        self.producer = Producer({**kafka, "acks": "all", "enable.idempotence": True,
                                  "linger.ms": 0, "on_delivery": self._delivered,
                                  # said once for every client of the process
                                  "error_cb": OUTAGE.error_cb(kafka.get("bootstrap.servers", "")),
                                  "logger": OUTAGE,
                                  "log.connection.close": False}) if kafka else None  # None: a test's

    # ------------------------------------------------------------------ what was read

    def read(self, part: Part, high_us: int) -> None:
        """A batch of `part` was decoded; its highest event time is `high_us` (NEVER if none)."""
        with self.lock:
            if high_us > self.high.get(part, NEVER):
                self.high[part] = high_us

    def polled(self, part: Part, records: int, at_end: bool) -> None:
        """The source polled `part`: `records` read, and whether the broker has said that
        it has nothing more (partition EOF). Only a partition read to its end is quiet."""
        now = time.monotonic()
        with self.lock:
            self.behind[part] = not at_end
            if records or part not in self.quiet_since:
                self.quiet_since[part] = now
        if at_end and not records:
            self._maybe_beat(part, now)

    # ------------------------------------------------------------------ writing

    def _maybe_beat(self, part: Part, now: float) -> None:
        source = self.source_of[part[0]]
        with self.lock:
            if (part in self.refused or not self.config.writes_heartbeats(source)
                    or now - self.quiet_since[part] < self.idle_s):
                return
            self.quiet_since[part] = now  # the next one after another idle interval
            declared = self._declaration(source)
            if declared <= max(self.high.get(part, NEVER), self.declared.get(part, NEVER)):
                return  # nothing new to say (or said already, not yet read back)
            self.declared[part] = declared
        self._write(part, source, declared)

    def _declaration(self, source: str) -> int:
        present = int(self.clock() * 1_000_000) - self.config.source_delay_us(source)
        if any(self.behind.values()):  # a backlog: no further than the stream has come
            return min(present, max(self.high.values(), default=NEVER))
        return present

    def _write(self, part: Part, source: str, time_us: int) -> None:
        self.producer.produce(part[0], heartbeat_value(source, time_us), partition=part[1])
        self.producer.poll(0)
        logs.log.debug("heartbeat %s:%s at %s", part[0], part[1], format_us(time_us))

    def _delivered(self, err: KafkaError | None, msg) -> None:
        part = (msg.topic(), msg.partition())
        if err is None:
            with self.lock:
                self.written += 1
            return  # no news of the broker: the report may be of a write done long ago
        if err.code() in UNREACHABLE:  # the broker is away: said once for every client
            OUTAGE.failed(self.brokers, err.str())
            return
        if err.code() in _REFUSALS:
            with self.lock:
                first = part not in self.refused
                self.refused.add(part)
            if first:
                logs.warning(f"cannot write heartbeats into {part[0]}:{part[1]} ({err.str()}); "
                             f"it can stall when its producers go quiet: grant write access, or "
                             f"set [heartbeats.sources.{self.source_of[part[0]]}] write = false "
                             f"and have producers send heartbeats")
        else:
            logs.warning("heartbeat not written, retrying at the next idle interval",
                         partition=f"{part[0]}:{part[1]}", error=err.str())

    def close(self) -> None:
        if self.producer is not None:
            self.producer.flush(2)  # a heartbeat not written now is written by the next start
