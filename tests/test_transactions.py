"""Topics written in Kafka transactions, against the embedded broker (Tansu).

Each committed or aborted transaction ends with a control record (a commit or
abort marker) that takes an offset in every partition it wrote, and that no
consumer ever receives. `tally run --until-end` must still finish, having
consumed exactly the records, and `tally audit` must account for the markers'
offsets as what they are (not records), proven against the broker, not as
lost records.

What the embedded broker does is stated in `test_what_the_embedded_broker_does`
(measured with Tansu 0.6.0); where it differs from Kafka, the tests say so.
"""

from __future__ import annotations

import json
import tempfile
import uuid
from pathlib import Path

import pytest
from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, Producer, TopicPartition

from flows.kafka import kafka_io
from flows.kafka.dayfiles import partitions, read_values
from flows.dev.generate import generate_day
from flows.logs import UserError
from flows.runtime.recovery_store import Committed, read_committed
from sinks.audit import not_records
from tests.flow_helpers import pg_rows, start_tally, tally, unique_topics, wait_until, write_config

PAYMENTS = 600
PER_TRANSACTION = 250  # records of one partition per transaction
RUN_TIMEOUT = 120  # before the fix, --until-end over such a topic never finished


def transactional_producer(broker: str) -> Producer:
    producer = Producer({"bootstrap.servers": broker, "transactional.id": f"tx-{uuid.uuid4().hex}",
                         "linger.ms": 5})
    producer.init_transactions(30)
    return producer


def publish_in_transactions(broker: str, values: dict, abort: bytes | None = None) -> dict:
    """Each partition's values in transactions of PER_TRANSACTION records, all committed;
    with `abort`, an aborted transaction holding that one value goes before each commit.
    Returns the markers written per partition."""
    producer = transactional_producer(broker)
    markers = {}
    for (topic, partition), lines in values.items():
        keys, stamps = kafka_io.keys_and_stamps(lines)
        markers[(topic, partition)] = 0
        for start in range(0, len(lines), PER_TRANSACTION):
            if abort is not None:
                producer.begin_transaction()
                producer.produce(topic, abort, None, partition)
                producer.flush(30)  # abort_transaction drops what was not sent yet
                producer.abort_transaction(30)
                markers[(topic, partition)] += 1
            producer.begin_transaction()
            for i in range(start, min(start + PER_TRANSACTION, len(lines))):
                producer.produce(topic, lines[i], keys[i], partition, timestamp=stamps[i])
            producer.commit_transaction(30)
            markers[(topic, partition)] += 1
    return markers


@pytest.fixture(scope="module")
def work():
    return Path(tempfile.mkdtemp(prefix="tally-tx-"))


def a_day(work: Path, broker: str, name: str) -> tuple[dict, Path, dict]:
    """A generated day (the same one each time) on fresh topics; its values per partition."""
    topics = unique_topics()
    generate_day(work / name, PAYMENTS, seed=61, topics=topics)
    values = {part: read_values(path)
              for part, path in partitions(work / name, list(topics.values())).items()}
    kafka_io.create_topics(broker, list(topics.values()), 3)
    return values, write_config(work / f"{name}.toml", topics), topics


def run_and_audit(work: Path, config: Path, namespace: str, broker: str, pg_dsn: str) -> tuple:
    env = {"TALLY_BROKERS": broker, "TALLY_PG_DSN": pg_dsn, "TALLY_CONFIG": str(config),
           "TALLY_DATA_DIR": str(work / "data")}
    run = tally("run", "--until-end", "--namespace", namespace, env=env, timeout=RUN_TIMEOUT)
    audit = tally("audit", "--namespace", namespace, "--json", env=env, expect=None)
    return run, audit


def consumed(run) -> int:
    line = next(l for l in run.stdout.splitlines() if "records consumed" in l)
    return int(line.split()[-1].replace(",", ""))


@pytest.fixture(scope="module")
def committed(work, broker):
    """The day in committed transactions: its values, config and markers per partition."""
    values, config, _ = a_day(work, broker, "committed")
    return values, config, publish_in_transactions(broker, values)


def test_until_end_finishes_on_transactional_topics_and_the_audit_proves_the_markers(
        work, committed, broker, pg_dsn):
    values, config, markers = committed
    records = sum(len(v) for v in values.values())

    run, audit = run_and_audit(work, config, "tx_committed", broker, pg_dsn)
    assert consumed(run) == records, "exactly the committed records, no marker"
    assert audit.returncode == 0, audit.stdout + audit.stderr
    report = json.loads(audit.stdout)
    assert report["conserved"] and not report["archive_gaps"]
    assert report["consumed"] == records + sum(markers.values())
    not_records = {part: (markers_, aborted) for part, markers_, aborted, *_ in report["not_records"]}
    assert not_records == {f"{t}:{p}": (n, 0) for (t, p), n in markers.items()}
    text = tally("audit", "--namespace", "tx_committed", "--data-dir", str(work / "data"),
                 "--pg", pg_dsn, "--brokers", broker).stdout
    assert "not records (transaction markers or compacted)" in text and "verdict: CONSERVED" in text


def test_the_same_day_without_transactions_gives_the_same_decisions(
        work, committed, broker, pg_dsn):
    values, config, _ = committed
    records = sum(len(v) for v in values.values())
    run_and_audit(work, config, "tx_committed", broker, pg_dsn)  # resumes: nothing more to do
    report = json.loads(tally("audit", "--namespace", "tx_committed", "--json", "--data-dir",
                              str(work / "data"), "--pg", pg_dsn, "--brokers", broker).stdout)
    plain_values, plain_config, _ = a_day(work, broker, "plain")
    kafka_io.produce_values(broker, plain_values, progress=False)
    plain_run, plain_audit = run_and_audit(work, plain_config, "tx_plain", broker, pg_dsn)
    plain = json.loads(plain_audit.stdout)
    assert consumed(plain_run) == records and plain["not_records"] == []
    assert [s["outcomes"] for s in plain["stores"]] == [s["outcomes"] for s in report["stores"]]
    assert [s["decision_kinds"] for s in plain["stores"]] == \
        [s["decision_kinds"] for s in report["stores"]]


def test_decisions_do_not_depend_on_batches_or_kills(work, committed, broker, pg_dsn):
    """Where a batch ends, or a kill falls, between records and markers changes nothing."""
    _, config, _ = committed
    run_and_audit(work, config, "tx_committed", broker, pg_dsn)
    env = {"TALLY_BROKERS": broker, "TALLY_PG_DSN": pg_dsn, "TALLY_CONFIG": str(config),
           "TALLY_DATA_DIR": str(work / "data")}
    tally("run", "--until-end", "--namespace", "tx_batches", "--batch-size", "7", env=env,
          timeout=RUN_TIMEOUT)
    killed = start_tally("run", "--until-end", "--namespace", "tx_killed", "--max-rate", "3000",
                         "--snapshot-interval", "1", env=env)
    store = work / "data" / "tx_killed" / "recovery"
    wait_until(lambda: committed_offsets(store), 60, "a committed snapshot")
    killed.kill()
    killed.communicate()
    assert killed.returncode == -9, "killed while it ran, not after it ended"
    tally("run", "--until-end", "--namespace", "tx_killed", env=env, timeout=RUN_TIMEOUT)
    expected = pg_rows(pg_dsn, "tx_committed")
    assert pg_rows(pg_dsn, "tx_batches") == expected
    assert pg_rows(pg_dsn, "tx_killed") == expected
    for namespace in ("tx_batches", "tx_killed"):
        tally("audit", "--namespace", namespace, env=env)


def committed_offsets(store: Path) -> dict:
    try:
        return (read_committed(store, engine=False) or Committed(0)).next_offsets
    except UserError:  # the store is still being made
        return {}


def test_a_lost_record_is_never_taken_for_a_marker(work, broker, pg_dsn):
    """The audit asks the broker: an archived record removed is a committed record it
    still holds, so it stays missing, while the markers around it are accepted."""
    values, config, _ = a_day(work, broker, "lost")
    publish_in_transactions(broker, values)
    run_and_audit(work, config, "tx_lost", broker, pg_dsn)
    archived = sorted((work / "data" / "tx_lost" / "events").rglob("*.parquet"))[-1]
    archived.unlink()
    audit = tally("audit", "--namespace", "tx_lost", "--json", "--data-dir", str(work / "data"),
                  "--pg", pg_dsn, "--brokers", broker, expect=1)
    report = json.loads(audit.stdout)
    assert not report["conserved"] and report["archive_gaps"]
    assert report["not_records"], "the markers are still told apart"


def test_aborted_transactions_on_the_embedded_broker(work, broker, pg_dsn):
    """Tansu 0.6.0 hands the records of aborted transactions to read_committed consumers
    (Kafka would skip them), so Tally consumes them there as records: here, invalid
    lines, each with an 'invalid' fate. Their abort markers are still not records."""
    values, config, _ = a_day(work, broker, "aborted")
    markers = publish_in_transactions(broker, values, abort=b"aborted, never to be read")
    records = sum(len(v) for v in values.values())
    aborts = sum(-(-len(v) // PER_TRANSACTION) for v in values.values())

    run, audit = run_and_audit(work, config, "tx_aborted", broker, pg_dsn)
    assert consumed(run) == records + aborts, "Tansu: aborted records are delivered"
    report = json.loads(audit.stdout)
    assert report["conserved"], audit.stdout
    assert sum(row[1] for row in report["not_records"]) == sum(markers.values())
    assert all(s["outcomes"].get("invalid", 0) >= aborts for s in report["stores"])


def test_only_offsets_no_committed_reader_is_given_are_not_records():
    """The rule, on every answer a broker can give (Tansu never gives the aborted one)."""
    markers, aborted = not_records([3, 4, 5, 6], committed={5}, uncommitted={4, 5})
    assert (markers, aborted) == ([3, 6], [4]), "5 holds a committed record: it stays missing"


def read_partition(broker: str, topic: str, isolation: str) -> tuple[list, int, int]:
    """(offset, value) of every record delivered, the partition EOF offset, the position."""
    consumer = Consumer({"bootstrap.servers": broker, "group.id": "tally-test",
                         "enable.partition.eof": True, "isolation.level": isolation,
                         "fetch.wait.max.ms": 50})
    consumer.assign([TopicPartition(topic, 0, OFFSET_BEGINNING)])
    delivered, eof = [], None
    try:
        while eof is None:
            for message in consumer.consume(100, 1.0):
                if message.error() is None:
                    delivered.append((message.offset(), message.value()))
                elif message.error().code() == KafkaError._PARTITION_EOF:
                    eof = message.offset()
        return delivered, eof, consumer.position([TopicPartition(topic, 0)])[0].offset
    finally:
        consumer.close()


def test_what_the_embedded_broker_does(broker):
    """Measured facts about Tansu 0.6.0 and transactions, which the rest relies on.

    Like Kafka: transactional producers work; each commit or abort writes a marker
    that takes an offset and is delivered to no consumer; a consumer's position
    moves past markers (to the partition's end when the last entry is one); a
    read_committed consumer stops at the last stable offset, before an open
    transaction. Unlike Kafka: read_committed consumers are given the records of
    aborted transactions (Tansu sends no aborted-transaction list with its fetches).
    """
    topic = f"t{uuid.uuid4().hex[:8]}.tx"
    kafka_io.create_topics(broker, [topic], 1)
    producer = transactional_producer(broker)
    for value, commit in ((b"a", True), (b"b", False), (b"c", True)):
        producer.begin_transaction()
        producer.produce(topic, value, None, 0)
        producer.flush(30)  # abort_transaction drops what was not sent yet
        producer.commit_transaction(30) if commit else producer.abort_transaction(30)

    committed, eof, position = read_partition(broker, topic, "read_committed")
    assert committed == [(0, b"a"), (2, b"b"), (4, b"c")], "markers at 1, 3, 5; b was aborted"
    assert (eof, position) == (6, 6), "the position is past the last marker"
    assert read_partition(broker, topic, "read_uncommitted")[0] == committed
    assert kafka_io.end_offsets(broker, [topic]) == {(topic, 0): 6}

    producer.begin_transaction()
    producer.produce(topic, b"open", None, 0)
    producer.flush(30)
    try:
        delivered, eof, position = read_partition(broker, topic, "read_committed")
        assert (delivered[-1], eof, position) == ((4, b"c"), 6, 6), "stops at the last stable offset"
        assert kafka_io.end_offsets(broker, [topic]) == {(topic, 0): 6}
        assert read_partition(broker, topic, "read_uncommitted")[0][-1] == (6, b"open")
    finally:
        producer.abort_transaction(30)
