"""Kafka I/O outside the dataflow: broker checks, topics, publishing a day, reading logs back.

Works against the embedded Tansu broker and unchanged against Redpanda / Kafka.

Tansu quirk: its ListOffsets answers (``get_watermark_offsets``,
``offsets_for_times``) are at record-batch granularity: the "high watermark" is
the base offset of the last batch, not the end of the log.  So no end offset is
ever taken from them.  We read to partition EOF instead
(``enable.partition.eof=True``); the high watermark is only used as a hint for
where to start reading in ``end_offsets`` (it is never past the true end).

Every reader uses isolation.level=read_committed: records of open transactions
are not read, and a partition's end for a reader is its last stable offset.
Transaction markers take offsets no reader receives (``delivered_offsets``
tells which offsets hold no record, for the audit).

Every failure the user can fix raises ``UserError`` with one line naming what to
do.  librdkafka's own log lines go to the ``tally.kafka`` logger at DEBUG level
(they would otherwise be printed raw on stderr); the last error among them is
quoted in our error messages.  A broker that goes away under a reader or a producer
is said by the process's one outage reporter (flows/kafka/outage.py).
"""

from __future__ import annotations

import logging
import os
import re
import time
import uuid
from datetime import datetime
from pathlib import Path

import msgspec
from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from flows import logs
from flows.kafka.dayfiles import DayError, partitions as day_partitions, read_values
from flows.logs import UserError
from flows.kafka.outage import OUTAGE
from flows.progress import Progress
from state.contract import Part

_KAFKA_LOG = logging.getLogger("tally.kafka")
_ENV_PREFIX = "TALLY_KAFKA_"
# Settings that must not sit in a config file (files get committed and shared).
_SECRET = re.compile(r"password|secret|ssl\.key\.pem|sasl\.jaas", re.IGNORECASE)
# Errors after which waiting for the broker is pointless.
_HOPELESS = {KafkaError._ALL_BROKERS_DOWN, KafkaError._RESOLVE, KafkaError._AUTHENTICATION,
             KafkaError._SSL, KafkaError.SASL_AUTHENTICATION_FAILED,
             KafkaError.TOPIC_AUTHORIZATION_FAILED, KafkaError.CLUSTER_AUTHORIZATION_FAILED}
_START_HINT = "start one with 'tally dev up' or pass --brokers"

MAX_MESSAGE_BYTES = 16 << 20  # what we let a producer send; the broker has its own limit
_FILE_SETTINGS: dict = {}  # the config file's [kafka] table (`use_file_settings`)


# --------------------------------------------------------------------------
# Configuration


def use_file_settings(settings: dict) -> None:
    """librdkafka settings from the config file's [kafka] table, for every client of this process.

    Secrets are refused here: they belong in the environment or in a file named there.
    """
    for name, value in settings.items():
        if _SECRET.search(name):
            env = _ENV_PREFIX + name.upper().replace(".", "_")
            raise UserError(f"[kafka] {name} is a secret and cannot be in the config file; "
                            f"set {env} or {env}_FILE instead")
        if name == "bootstrap.servers":
            raise UserError("[kafka] bootstrap.servers: use --brokers or TALLY_BROKERS instead")
    _FILE_SETTINGS.clear()
    _FILE_SETTINGS.update({str(k): str(v).lower() if isinstance(v, bool) else str(v)
                           for k, v in settings.items()})


def _env_settings() -> dict:
    """TALLY_KAFKA_<PROPERTY> (dots as underscores) and TALLY_KAFKA_<PROPERTY>_FILE (the
    value is that file's content, less a trailing newline) for any librdkafka property."""
    direct, from_files = {}, {}
    for env, value in os.environ.items():
        if not env.startswith(_ENV_PREFIX) or not value.strip():
            continue
        name = env[len(_ENV_PREFIX):]
        if name.endswith("_FILE"):
            from_files[name[:-5].lower().replace("_", ".")] = (env, value.strip())
        else:
            direct[name.lower().replace("_", ".")] = value.strip()
    for prop, (env, path) in from_files.items():
        if prop in direct:
            raise UserError(f"set {env[:-5]} or {env}, not both")
        try:
            direct[prop] = Path(path).read_text().rstrip("\r\n")
        except OSError as exc:
            raise UserError(f"cannot read {env} file {path}: "
                            f"{exc.strerror or type(exc).__name__}") from None
    direct.pop("bootstrap.servers", None)  # --brokers / TALLY_BROKERS say where
    return direct


def kafka_config(brokers: str, extra: dict | None = None) -> dict:
    """librdkafka config: bootstrap.servers, the [kafka] table, then the environment.

    Any property can come from TALLY_KAFKA_<PROPERTY>, e.g. TALLY_KAFKA_SECURITY_PROTOCOL,
    TALLY_KAFKA_SASL_MECHANISM, TALLY_KAFKA_SASL_USERNAME, TALLY_KAFKA_SASL_PASSWORD (or
    TALLY_KAFKA_SASL_PASSWORD_FILE), TALLY_KAFKA_SSL_CA_LOCATION.  `extra` wins.
    Only plain values, so the dict can be handed to any Kafka client.
    """
    if not brokers or not brokers.strip():
        raise UserError(f"no Kafka broker given; {_START_HINT}")
    config = {"bootstrap.servers": brokers.strip(), **_FILE_SETTINGS, **_env_settings()}
    config.update(extra or {})
    return config


class _Watch:
    """librdkafka logs and global errors of one client: logged at DEBUG, the last kept.

    A client that waits out a broker's absence (`report=True`: readers and producers)
    also tells the process's one outage reporter (flows/kafka/outage.py), which says it at a
    slowing rate; a broker check fails fast in one line of its own instead."""

    def __init__(self, report: bool = False) -> None:
        self.report, self.brokers = report, ""
        self.last: str | None = None
        self.hopeless: KafkaError | None = None
        self.fatal: KafkaError | None = None

    # called by confluent_kafka as logger.log(level, fmt, *args)
    def log(self, level: int, fmt: str, *args) -> None:
        text = fmt % args if args else fmt
        if level >= logging.ERROR:
            self.last = text
        _KAFKA_LOG.debug("librdkafka %s", text)

    def error(self, err: KafkaError) -> None:
        self.last = err.str()
        if err.code() in _HOPELESS:
            self.hopeless = err
        if err.fatal():
            self.fatal = err
        _KAFKA_LOG.debug("librdkafka error %s", err.str())
        if self.report and not err.fatal():
            OUTAGE.failed(self.brokers, err.str())

    def reason(self, default: str) -> str:
        return logs.redact(self.last or default)


def _client_config(brokers: str, watch: _Watch, extra: dict | None = None) -> dict:
    watch.brokers = brokers.strip()
    return kafka_config(brokers, {"logger": watch, "error_cb": watch.error,
                                  "log.connection.close": False, **(extra or {})})


def _reason(exc: BaseException) -> str:
    if isinstance(exc, KafkaException) and exc.args and isinstance(exc.args[0], KafkaError):
        return exc.args[0].str()
    return str(exc) or type(exc).__name__


# --------------------------------------------------------------------------
# Broker and topics


def _admin(brokers: str, timeout: float) -> tuple[AdminClient, _Watch]:
    watch = _Watch()
    ms = str(max(1000, int(timeout * 1000)))
    try:
        return AdminClient(_client_config(brokers, watch, {"socket.connection.setup.timeout.ms": ms,
                                                           "socket.timeout.ms": ms})), watch
    except KafkaException as exc:  # a bad setting from TALLY_KAFKA_* or [kafka]
        raise UserError(f"invalid Kafka client setting: {logs.redact(_reason(exc))}") from None


def _metadata(admin: AdminClient, watch: _Watch, brokers: str, timeout: float):
    """Cluster metadata, or UserError; gives up early when the broker refuses outright."""
    deadline = time.monotonic() + timeout
    failure = "timed out"
    while True:
        left = deadline - time.monotonic()
        try:
            return admin.list_topics(timeout=max(0.05, min(0.5, left)))
        except KafkaException as exc:
            failure = _reason(exc)
        admin.poll(0)  # serves error_cb and logs
        if watch.hopeless is not None or time.monotonic() >= deadline:
            break
    raise UserError(f"cannot reach the Kafka broker at {brokers}: "
                    f"{watch.reason(failure)}; {_START_HINT}")


def check_broker(brokers: str, timeout: float = 10) -> None:
    """Raise UserError unless the broker answers a metadata request within timeout seconds."""
    admin, watch = _admin(brokers, timeout)
    _metadata(admin, watch, brokers, timeout)


def _partition_counts(md) -> dict[str, int]:
    return {name: len(t.partitions) for name, t in md.topics.items()
            if t.error is None or t.error.code() == KafkaError.NO_ERROR}


def topic_partitions(brokers: str, topics: list[str], timeout: float = 10) -> dict[str, int]:
    """Partition count of each topic; UserError naming any topic that does not exist."""
    admin, watch = _admin(brokers, timeout)
    counts = _partition_counts(_metadata(admin, watch, brokers, timeout))
    missing = [t for t in topics if t not in counts]
    if missing:
        names = ", ".join(missing)
        raise UserError(f"topic{'s' if len(missing) > 1 else ''} {names} "
                        f"do{'' if len(missing) > 1 else 'es'} not exist on {brokers}; "
                        f"run 'tally topics create'")
    return {t: counts[t] for t in topics}


def wait_for_topics(brokers: str, topics: list[str], seconds: float,
                    log_every_s: float = 10.0) -> None:
    """Block until every topic exists, saying so every few seconds; UserError after `seconds`."""
    deadline = time.monotonic() + seconds
    said = 0.0
    while True:
        try:
            topic_partitions(brokers, topics)
            return
        except UserError as err:
            if "not exist" not in str(err) or time.monotonic() >= deadline:
                raise
            if time.monotonic() - said >= log_every_s:
                said = time.monotonic()
                logs.warning(f"waiting for topics: {err}")
            time.sleep(1.0)


def create_topics(brokers: str, topics: list[str], partitions: int, replication: int = 1,
                  timeout: float = 30) -> dict[str, str]:
    """Create the topics; per topic "created" or "exists".

    An existing topic is fine when it has `partitions` partitions; otherwise UserError.
    Returns once every topic shows in the metadata.
    """
    if partitions < 1 or replication < 1:
        raise UserError("--partitions and --replication must be at least 1")
    topics = list(dict.fromkeys(topics))
    admin, watch = _admin(brokers, timeout)
    counts = _partition_counts(_metadata(admin, watch, brokers, timeout))
    result = {t: "exists" for t in topics if t in counts}
    new = [t for t in topics if t not in counts]
    if new:
        futures = admin.create_topics([NewTopic(t, partitions, replication) for t in new],
                                      request_timeout=timeout)
        for topic, future in futures.items():
            try:
                future.result()
                result[topic] = "created"
            except KafkaException as exc:
                err = exc.args[0] if exc.args else None
                if isinstance(err, KafkaError) and err.code() == KafkaError.TOPIC_ALREADY_EXISTS:
                    result[topic] = "exists"  # created meanwhile by someone else
                else:
                    raise UserError(f"cannot create topic {topic} ({partitions} partitions, "
                                    f"replication {replication}) on {brokers}: "
                                    f"{logs.redact(_reason(exc))}") from None
    # wait until every topic is visible, then check existing ones have the right shape
    deadline = time.monotonic() + timeout
    while True:
        counts = _partition_counts(_metadata(admin, watch, brokers, timeout))
        if all(t in counts for t in topics) or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    for topic in topics:
        have = counts.get(topic)
        if have is None:
            raise UserError(f"topic {topic} was created but does not show on {brokers} "
                            f"after {timeout:.0f}s")
        if have != partitions:
            raise UserError(f"topic {topic} exists with {have} partition(s), not {partitions}; "
                            f"pass --partitions {have} or delete the topic first")
    return {t: result[t] for t in topics}


# --------------------------------------------------------------------------
# Publishing a day on disk


class _Envelope(msgspec.Struct):
    """The two fields a publisher reads from a line, each kept raw so one bad field
    does not hide the other."""

    account: msgspec.Raw = msgspec.Raw(b"null")
    event_time: msgspec.Raw = msgspec.Raw(b"null")


_ENVELOPE = msgspec.json.Decoder(_Envelope)
_ACCOUNT = msgspec.json.Decoder(str | None)
_TIME = msgspec.json.Decoder(datetime)
_NO_ENVELOPE = _Envelope()


def _envelope(value: bytes | None) -> _Envelope:
    try:
        return _ENVELOPE.decode(value)
    except (msgspec.DecodeError, TypeError):  # not JSON, not an object, a tombstone
        return _NO_ENVELOPE


def _key(envelope: _Envelope) -> bytes | None:
    try:
        account = _ACCOUNT.decode(envelope.account)
        return None if account is None else account.encode()
    except (msgspec.DecodeError, UnicodeError):  # not a string, not UTF-8
        return None


def record_key(value: bytes) -> bytes | None:
    """The `account` string of a JSON object line, as UTF-8; None for anything else."""
    return _key(_envelope(value))


def keys_and_stamps(values: list[bytes | None]) -> tuple[list[bytes | None], list[int]]:
    """Record keys, and timestamps (ms) as if the lines were published live.

    A producer stamps a record when it publishes it, and it publishes an event
    soon after it happens, so a partition's stamps follow the highest event time
    so far. Lines without a readable, zoned event_time keep the previous stamp.
    """
    keys, stamps, clock = [], [], 0
    for value in values:
        envelope = _envelope(value)
        keys.append(_key(envelope))
        try:
            moment = _TIME.decode(envelope.event_time)
            if moment.tzinfo is not None:
                clock = max(clock, int(moment.timestamp() * 1000))
        except (msgspec.DecodeError, TypeError, ValueError, OverflowError):
            pass
        stamps.append(clock)
    return keys, stamps


def _producer_config(brokers: str, watch: _Watch, failures: list) -> dict:
    def on_error(err, msg) -> None:  # only failed deliveries are reported
        failures.append((msg.topic(), msg.partition(), err))

    return _client_config(brokers, watch, {
        "enable.idempotence": True,  # keeps order within a partition across retries
        "acks": "all",
        "linger.ms": 20,
        "batch.num.messages": 100_000,
        "batch.size": 1_000_000,
        "queue.buffering.max.messages": 1_000_000,
        "queue.buffering.max.kbytes": 1_048_576,
        "message.timeout.ms": 120_000,
        "message.max.bytes": MAX_MESSAGE_BYTES,
        "delivery.report.only.error": True,
        "on_delivery": on_error,
    })


def produce_day(brokers: str, day_dir: Path | str, topics: list[str],
                progress: bool = True) -> dict[Part, int]:
    """Publish every DIR/<topic>/<partition>.jsonl line to that partition of that topic.

    Values are the lines byte for byte, in file order; the key is the `account`
    of a JSON object line (None otherwise); the timestamp follows the events'
    times (`keys_and_stamps`).  Returns records published per (topic, partition).
    Offsets equal line numbers only when the topic was empty.
    """
    day_dir = Path(day_dir)
    try:
        files = day_partitions(day_dir, topics)
    except DayError as exc:
        raise UserError(str(exc)) from None
    day_topics = sorted({t for t, _ in files})
    counts = topic_partitions(brokers, day_topics)
    for topic in day_topics:
        needed = max(p for t, p in files if t == topic) + 1
        if counts[topic] < needed:
            raise UserError(f"topic {topic} has {counts[topic]} partition(s) but {day_dir / topic} "
                            f"has files up to {needed - 1}.jsonl; recreate the topic with "
                            f"{needed} partitions")

    values = {part: read_values(path) for part, path in files.items()}
    produce_values(brokers, values, progress=progress)
    logs.info("published day", day=str(day_dir), records=sum(len(v) for v in values.values()))
    return {part: len(lines) for part, lines in values.items()}


def produce_values(brokers: str, values: dict[Part, list[bytes | None]],
                   keys: dict[Part, list[bytes | None]] | None = None, progress: bool = True) -> None:
    """Publish each partition's values in order, keyed by account unless `keys` are given.

    Timestamps follow the events' times (`keys_and_stamps`). A None value is a
    tombstone; values up to MAX_MESSAGE_BYTES are accepted here, the broker may
    have a lower limit (Redpanda's default batch limit is 1 MiB).
    """
    total = sum(len(v) for v in values.values())
    bar = Progress(total, "publish", unit="records")
    bar.enabled = bar.enabled and progress
    watch, failures = _Watch(report=True), []
    producer = Producer(_producer_config(brokers, watch, failures))
    produce, poll = producer.produce, producer.poll
    step = 5_000
    try:
        for (topic, partition), lines in values.items():
            derived, stamps = keys_and_stamps(lines)
            part_keys = derived if keys is None else keys[(topic, partition)]
            for start in range(0, len(lines), step):
                for value, key, stamp in zip(lines[start:start + step], part_keys[start:start + step],
                                             stamps[start:start + step]):
                    while True:
                        try:
                            produce(topic, value, key, partition, timestamp=stamp)
                            break
                        except BufferError:  # local queue full: let deliveries drain
                            poll(0.05)
                poll(0)
                if watch.fatal is not None or failures:
                    break
                bar.advance(min(step, len(lines) - start))
            if watch.fatal is not None or failures:
                break
        left = producer.flush(120)
    except KafkaException as exc:
        raise UserError(f"publishing to {brokers} failed: {logs.redact(_reason(exc))}") from None
    finally:
        bar.close()
    if watch.fatal is not None:
        producer.purge()
        raise UserError(f"the Kafka producer failed at {brokers}: {watch.reason(watch.fatal.str())}")
    if failures:
        parts = sorted({f"{t}/{p}" for t, p, _ in failures})
        raise UserError(f"{len(failures)} record(s) were not delivered to {brokers} "
                        f"(partitions {', '.join(parts[:6])}{' ...' if len(parts) > 6 else ''}): "
                        f"{logs.redact(failures[0][2].str())}")
    if left:
        raise UserError(f"{left} record(s) still undelivered to {brokers} after 120s: "
                        f"{watch.reason('timed out')}")


# --------------------------------------------------------------------------
# Reading logs back


def _consumer(brokers: str, watch: _Watch, isolation: str = "read_committed") -> Consumer:
    watch.report = True  # a reader waits out a broker's absence, up to its timeout
    return Consumer(_client_config(brokers, watch, {
        "isolation.level": isolation,
        "group.id": f"tally-reader-{uuid.uuid4().hex}",  # assign() only: never joins or commits
        "enable.auto.commit": False,
        "enable.auto.offset.store": False,
        "enable.partition.eof": True,
        "auto.offset.reset": "earliest",
        "fetch.wait.max.ms": 50,
    }))


def _all_partitions(brokers: str, topics: list[str]) -> list[Part]:
    counts = topic_partitions(brokers, topics)
    return [(t, p) for t in dict.fromkeys(topics) for p in range(counts[t])]


def _drain(consumer: Consumer, watch: _Watch, brokers: str, starts: dict[Part, int],
           on_record, timeout: float) -> dict[Part, int]:
    """Consume the assigned partitions to EOF; returns each partition's end offset.

    The end is max(EOF offset, last record + 1), so it holds even if the EOF
    event's offset came from a batch-granular high watermark.  timeout bounds
    the time without any progress.
    """
    consumer.assign([TopicPartition(t, p, off) for (t, p), off in starts.items()])
    ends: dict[Part, int] = {}
    last: dict[Part, int] = {}
    idle_since = time.monotonic()
    problem = None
    while len(ends) < len(starts):
        msgs = consumer.consume(10_000, 0.05)
        if msgs:
            idle_since = time.monotonic()
            OUTAGE.answered()
        for msg in msgs:
            err = msg.error()
            part = (msg.topic(), msg.partition())
            if err is None:
                last[part] = msg.offset()
                on_record(part, msg.offset(), msg.value())
            elif err.code() == KafkaError._PARTITION_EOF:
                ends[part] = max(msg.offset(), last.get(part, -1) + 1)
            elif err.fatal() or not (err.retriable() or err.code() in
                                      (KafkaError._TRANSPORT, KafkaError._ALL_BROKERS_DOWN)):
                raise UserError(f"reading {part[0]}/{part[1]} from {brokers} failed: "
                                f"{logs.redact(err.str())}")
            else:
                problem = err.str()
        if time.monotonic() - idle_since > timeout:
            waiting = sorted(f"{t}/{p}" for t, p in starts if (t, p) not in ends)
            raise UserError(f"no end of partition(s) {', '.join(waiting[:6])} reached on {brokers} "
                            f"within {timeout:.0f}s: {watch.reason(problem or 'no data')}")
    return {part: max(ends[part], last.get(part, -1) + 1) for part in starts}


def read_to_end(brokers: str, topics: list[str], timeout: float = 30
                ) -> dict[Part, list[tuple[int, bytes | None]]]:
    """Every record of every partition, from the beginning to partition EOF: (offset, value)."""
    parts = _all_partitions(brokers, topics)
    out: dict[Part, list[tuple[int, bytes | None]]] = {part: [] for part in parts}

    def keep(part: Part, offset: int, value: bytes | None) -> None:
        out[part].append((offset, value))

    watch = _Watch()
    consumer = _consumer(brokers, watch)
    try:
        _drain(consumer, watch, brokers, {part: OFFSET_BEGINNING for part in parts}, keep, timeout)
    finally:
        consumer.close()
    return out


def end_offsets(brokers: str, topics: list[str], timeout: float = 30) -> dict[Part, int]:
    """The true end offset (next offset to be written) of every partition.

    Reads from just before the reported high watermark to EOF: on Tansu that
    watermark is the base offset of the last batch (never past the true end),
    on Kafka/Redpanda it is the end itself, so the read is short and exact.
    """
    parts = _all_partitions(brokers, topics)
    watch = _Watch()
    consumer = _consumer(brokers, watch)
    try:
        starts = {}
        for topic, partition in parts:
            try:
                low, hint = consumer.get_watermark_offsets(TopicPartition(topic, partition),
                                                           timeout=timeout)
            except KafkaException as exc:
                raise UserError(f"cannot get offsets of {topic}/{partition} from {brokers}: "
                                f"{logs.redact(_reason(exc))}") from None
            starts[(topic, partition)] = max(low, hint - 1) if hint > 0 else OFFSET_BEGINNING
        return _drain(consumer, watch, brokers, starts, lambda *_: None, timeout)
    finally:
        consumer.close()


def delivered_offsets(brokers: str, part: Part, start: int, end: int, isolation: str,
                      timeout: float = 30) -> set[int]:
    """The offsets in [start, end) at which a consumer with this isolation level
    ("read_committed" or "read_uncommitted") is given a record.

    No consumer is given a transaction marker, nor a record compaction removed;
    only read_uncommitted ones are given the records of aborted transactions.
    """
    watch = _Watch()
    consumer = _consumer(brokers, watch, isolation)
    found: set[int] = set()
    try:
        consumer.assign([TopicPartition(part[0], part[1], start)])
        idle_since = time.monotonic()
        while time.monotonic() - idle_since < timeout:
            for msg in consumer.consume(10_000, 0.05):
                idle_since = time.monotonic()
                OUTAGE.answered()
                if msg.error() is None:
                    if msg.offset() >= end:
                        return found
                    found.add(msg.offset())
            # Done by position, which moves past markers, never by partition EOF: an
            # EOF short of `end` would pass the records after it off as markers.
            if consumer.position([TopicPartition(*part)])[0].offset >= end:
                return found
        raise UserError(f"reading {part[0]}/{part[1]} from {brokers} stalled for {timeout:.0f}s: "
                        f"{watch.reason('no data')}")
    finally:
        consumer.close()


def low_offsets(brokers: str, parts: list[Part], timeout: float = 30) -> dict[Part, int]:
    """The first offset still held by the broker in each partition (retention moves it)."""
    watch = _Watch()
    consumer = _consumer(brokers, watch)
    try:
        return {part: consumer.get_watermark_offsets(TopicPartition(*part), timeout=timeout)[0]
                for part in parts}
    except KafkaException as exc:
        raise UserError(f"cannot get offsets from {brokers}: {logs.redact(_reason(exc))}") from None
    finally:
        consumer.close()


def offsets_at(brokers: str, ends: dict[Part, int], at_ms: int,
               timeout: float = 30) -> dict[Part, int]:
    """Per partition, the first offset whose record timestamp is at or after at_ms
    (the partition's end when there is none).

    Exact on any broker: the broker's `offsets_for_times` answer is only a hint,
    since Tansu answers at record-batch granularity. We read forward from the
    record before the hint; if even that one is stamped at or after at_ms, the
    hint overshot and we read from the start of the partition instead.
    """
    lows = low_offsets(brokers, list(ends), timeout)
    watch = _Watch()
    consumer = _consumer(brokers, watch)
    try:
        hints = consumer.offsets_for_times(
            [TopicPartition(t, p, at_ms) for t, p in ends], timeout=timeout)
        out = {}
        for tp in hints:
            part = (tp.topic, tp.partition)
            hint = tp.offset if tp.offset >= 0 else ends[part]
            start = max(lows[part], min(hint, ends[part]) - 1)
            first = _first_stamped(consumer, watch, brokers, part, start, ends[part], at_ms, timeout)
            if first == start and start > lows[part]:
                first = _first_stamped(consumer, watch, brokers, part, lows[part], ends[part],
                                       at_ms, timeout)
            out[part] = first
        return out
    except KafkaException as exc:
        raise UserError(f"cannot look up offsets by time on {brokers}: "
                        f"{logs.redact(_reason(exc))}") from None
    finally:
        consumer.close()


def _first_stamped(consumer: Consumer, watch: _Watch, brokers: str, part: Part, start: int,
                   end: int, at_ms: int, timeout: float) -> int:
    """The first offset in [start, end) stamped at or after at_ms, else end."""
    if start >= end:
        return end
    consumer.assign([TopicPartition(part[0], part[1], start)])
    idle_since = time.monotonic()
    while time.monotonic() - idle_since < timeout:
        for msg in consumer.consume(1000, 0.05):
            idle_since = time.monotonic()
            OUTAGE.answered()
            err = msg.error()
            if err is not None:
                if err.code() == KafkaError._PARTITION_EOF:
                    return end
                continue
            if msg.offset() >= end:
                return end
            if msg.timestamp()[1] >= at_ms:
                return msg.offset()
    raise UserError(f"reading {part[0]}/{part[1]} from {brokers} stalled for {timeout:.0f}s: "
                    f"{watch.reason('no data')}")
