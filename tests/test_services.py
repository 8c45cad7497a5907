"""The real services start, answer and stop (flows/dev/services.py)."""

from __future__ import annotations

import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Iterator

import psycopg
import pytest
from confluent_kafka import Consumer, KafkaError, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic
from psycopg.conninfo import conninfo_to_dict

from flows.dev.services import (
    DevServices, ServiceError, _alive, dev_down, dev_status, dev_up, port_open, redact,
    start_postgres,
)

PARTITIONS = 3
MESSAGES = 1000


def test_broker_topic_produce_consume(broker: str) -> None:
    topic = f"svc-{uuid.uuid4().hex[:8]}"
    admin = AdminClient({"bootstrap.servers": broker})
    admin.create_topics([NewTopic(topic, PARTITIONS)])[topic].result(timeout=10)
    assert len(admin.list_topics(topic, timeout=10).topics[topic].partitions) == PARTITIONS

    producer = Producer({"bootstrap.servers": broker, "linger.ms": 5})
    sent: dict[int, list[bytes]] = {p: [] for p in range(PARTITIONS)}
    for i in range(MESSAGES):
        value = f"m{i}".encode()
        sent[i % PARTITIONS].append(value)
        producer.produce(topic, value, key=str(i).encode(), partition=i % PARTITIONS)
    assert producer.flush(10) == 0

    # Read each partition from the beginning to partition EOF.  Tansu's high
    # watermark is at record-batch granularity, so it is never used as an end.
    consumer = Consumer({"bootstrap.servers": broker, "group.id": f"g-{topic}",
                         "enable.auto.commit": False, "enable.partition.eof": True})
    consumer.assign([TopicPartition(topic, p, 0) for p in range(PARTITIONS)])
    got: dict[int, list[bytes]] = {p: [] for p in range(PARTITIONS)}
    at_eof: set[int] = set()
    deadline = time.monotonic() + 30
    try:
        while len(at_eof) < PARTITIONS and time.monotonic() < deadline:
            msg = consumer.poll(0.5)
            if msg is None:
                continue
            if msg.error():
                assert msg.error().code() == KafkaError._PARTITION_EOF, msg.error()
                at_eof.add(msg.partition())
            elif msg.partition() not in at_eof:
                got[msg.partition()].append(msg.value())
    finally:
        consumer.close()
    assert at_eof == set(range(PARTITIONS))
    assert got == sent


def test_postgres_copy_roundtrip(pg_dsn: str) -> None:
    rows = [(i, f"name-{i}", i * 0.5) for i in range(10_000)]
    with psycopg.connect(pg_dsn) as conn:
        conn.execute("CREATE SCHEMA IF NOT EXISTS svc_test")
        conn.execute("DROP TABLE IF EXISTS svc_test.items")
        conn.execute("CREATE TABLE svc_test.items (id int PRIMARY KEY, name text, amount float8)")
        with conn.cursor().copy("COPY svc_test.items (id, name, amount) FROM STDIN") as copy:
            for row in rows:
                copy.write_row(row)
        conn.commit()
    with psycopg.connect(pg_dsn) as conn:
        back = conn.execute("SELECT id, name, amount FROM svc_test.items ORDER BY id").fetchall()
    assert back == rows


@pytest.fixture
def dev_dir(pg_tmp_path: Path) -> Iterator[Path]:
    yield pg_tmp_path
    dev_down(pg_tmp_path)  # in case the test failed half-way


def test_dev_up_status_down(dev_dir: Path) -> None:
    tmp_path = dev_dir
    assert dev_status(tmp_path) is None
    assert dev_down(tmp_path) is False

    # Started by a process that exits at once: the services must outlive it.
    subprocess.run([sys.executable, "-c", f"from flows.dev.services import dev_up; dev_up({str(tmp_path)!r})"],
                   cwd=Path(__file__).parents[1], check=True, timeout=120)
    up = dev_status(tmp_path)
    try:
        assert up is not None
        for name in ("services.json", "broker.log", "postgres.log"):
            assert (tmp_path / "dev" / name).exists()
        pg = conninfo_to_dict(up.pg_dsn)
        assert pg["password"] not in repr(up)
        assert dev_up(tmp_path) == up  # idempotent: the same processes
        AdminClient({"bootstrap.servers": up.brokers}).list_topics(timeout=10)
        with psycopg.connect(up.pg_dsn) as conn:
            assert conn.execute("SELECT current_database()").fetchone() == ("tally",)
    finally:
        assert dev_down(tmp_path) is True

    assert not _alive(up.broker_pid) and not _alive(up.pg_pid)
    assert not port_open(int(up.brokers.rsplit(":", 1)[1]))
    assert not port_open(int(pg["port"]))
    assert not (tmp_path / "dev" / "services.json").exists()
    assert dev_status(tmp_path) is None
    assert dev_down(tmp_path) is False


def test_dev_status_cleans_stale_state(tmp_path: Path) -> None:
    dev = tmp_path / "dev"
    dev.mkdir()
    stale = DevServices("127.0.0.1:1", "postgresql://tally:secret@127.0.0.1:1/tally",
                        2**22 + 1, 2**22 + 2, str(tmp_path))
    (dev / "services.json").write_text(
        '{"brokers": "%s", "pg_dsn": "%s", "broker_pid": %d, "pg_pid": %d, "data_dir": "%s"}'
        % (stale.brokers, stale.pg_dsn, stale.broker_pid, stale.pg_pid, stale.data_dir))
    assert dev_status(tmp_path) is None
    assert not (dev / "services.json").exists()


def test_redact_and_error_type() -> None:
    assert redact("postgresql://tally:s3cret@127.0.0.1:5/tally") == "postgresql://tally:***@127.0.0.1:5/tally"
    assert issubclass(ServiceError, RuntimeError)


def test_postgres_error_is_one_clear_line(tmp_path: Path) -> None:
    (tmp_path / "pgdata").mkdir()
    (tmp_path / "pgdata" / "PG_VERSION").write_text("18\n")  # a data dir without its password
    with pytest.raises(ServiceError, match=r"pg_password is missing.*delete .*pgdata") as err:
        start_postgres(tmp_path)
    assert "\n" not in str(err.value)


def test_dev_up_starts_only_what_is_down(dev_dir: Path) -> None:
    """PostgreSQL died: `tally dev up` starts it again on its port and keeps the running
    broker (its in-memory topics and its port), saying which it started."""
    import os
    import signal
    tally = [sys.executable, "-m", "flows", "dev", "up", "--data-dir", str(dev_dir)]
    first = subprocess.run(tally, capture_output=True, text=True, timeout=120, check=True).stdout
    assert "started: broker, postgres" in first
    up = dev_status(dev_dir)
    topic = f"kept-{uuid.uuid4().hex[:6]}"
    admin = AdminClient({"bootstrap.servers": up.brokers})
    admin.create_topics([NewTopic(topic, 1)])[topic].result(10)
    os.kill(up.pg_pid, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while _alive(up.pg_pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    again = subprocess.run(tally, capture_output=True, text=True, timeout=120, check=True).stdout
    assert "started: postgres; already running, kept: broker" in again
    now = dev_status(dev_dir)
    assert (now.broker_pid, now.brokers) == (up.broker_pid, up.brokers)
    assert now.pg_pid != up.pg_pid and conninfo_to_dict(now.pg_dsn)["port"] == conninfo_to_dict(up.pg_dsn)["port"]
    assert topic in AdminClient({"bootstrap.servers": now.brokers}).list_topics(timeout=10).topics
    with psycopg.connect(now.pg_dsn) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)
