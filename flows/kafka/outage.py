"""One voice per process for a Kafka broker that is gone.

Every Kafka client of a process reports here: the source's consumer of each
partition, the pacemaker's producer, and the readers and producers of
flows/kafka/kafka_io.py. librdkafka retries on its own and tells each client of every
failed attempt, so without one shared reporter N partitions would say the same
thing N times a second.

An outage is said at once, in one line: what, since when, and that Tally retries.
While it lasts it is said again at a slowing rate, `REPORT_AFTER_S` into the
outage and then every `REPORT_EVERY_S`; and once, in one line, when the broker
answers again (a client received a record, a partition end or a delivery).

librdkafka's own log lines go to the `tally.kafka` logger at DEBUG: `--log-level
DEBUG` shows them.
"""

from __future__ import annotations

import logging
import threading
import time
from datetime import datetime, timezone

from confluent_kafka import KafkaError

from flows import logs

REPORT_AFTER_S = (0, 10, 30, 60, 120, 300)  # seconds into the outage
REPORT_EVERY_S = 300  # after the last of those
# What a client's request or delivery fails with when the broker is away.
UNREACHABLE = {KafkaError._TRANSPORT, KafkaError._ALL_BROKERS_DOWN, KafkaError._RESOLVE,
               KafkaError._TIMED_OUT, KafkaError._MSG_TIMED_OUT, KafkaError._TIMED_OUT_QUEUE,
               KafkaError.REQUEST_TIMED_OUT, KafkaError.NETWORK_EXCEPTION}
_KAFKA_LOG = logging.getLogger("tally.kafka")


def due_after(reports: int) -> float:
    """Seconds into an outage at which report number `reports` (from 0) is due."""
    if reports < len(REPORT_AFTER_S):
        return REPORT_AFTER_S[reports]
    return REPORT_AFTER_S[-1] + (reports - len(REPORT_AFTER_S) + 1) * REPORT_EVERY_S


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    if seconds < 120:
        return f"{seconds}s"
    if seconds < 7200:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds // 60 % 60:02d}m"


class BrokerOutage:
    """The reporter of one process (`OUTAGE`); thread-safe, cheap when all is well."""

    def __init__(self, clock=time.monotonic, wall=time.time):
        self.clock, self.wall = clock, wall
        self.lock = threading.Lock()
        self.since: float | None = None  # monotonic start of the outage; None: no outage
        self.since_wall = 0.0
        self.reports = 0
        self.brokers = ""

    def failed(self, brokers: str, reason: str) -> None:
        """A client could not reach `brokers` (its bootstrap servers), saying `reason`."""
        with self.lock:
            now = self.clock()
            if self.since is None:
                self.since, self.since_wall, self.reports = now, self.wall(), 0
                self.brokers = brokers
            outage = now - self.since
            if outage < due_after(self.reports):
                return
            self.reports += 1
            first, upcoming = self.reports == 1, round(due_after(self.reports) - outage)
            since = datetime.fromtimestamp(self.since_wall, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
            where = self.brokers
        reason = logs.redact(reason)
        if first:
            logs.warning(f"cannot reach the Kafka broker at {where} since {since} ({reason}); "
                         f"retrying, and resuming where it stopped once it is back "
                         f"(said again in {_duration(upcoming)} if still away)")
        else:
            logs.warning(f"cannot reach the Kafka broker at {where} since {since}, "
                         f"{_duration(outage)} now ({reason}); still retrying "
                         f"(said again in {_duration(upcoming)})")

    def answered(self) -> None:
        """A client heard from the broker: ends the outage, if there was one."""
        if self.since is None:  # unlocked fast path: called on every batch
            return
        with self.lock:
            if self.since is None:
                return
            outage, where, self.since = self.clock() - self.since, self.brokers, None
            since = datetime.fromtimestamp(self.since_wall, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
        logs.info(f"the Kafka broker at {where} answers again, after {_duration(outage)} "
                  f"away (since {since})")

    def error_cb(self, brokers: str):
        """A client's `error_cb`: its global errors are all about reaching the broker."""
        def on_error(err: KafkaError) -> None:
            _KAFKA_LOG.debug("librdkafka error %s", err.str())
            if not err.fatal():
                self.failed(brokers, err.str())
        return on_error

    # a client's `logger`: called by confluent_kafka as logger.log(level, fmt, *args)
    def log(self, level: int, fmt: str, *args) -> None:
        _KAFKA_LOG.debug("librdkafka %s", fmt % args if args else fmt)


OUTAGE = BrokerOutage()
