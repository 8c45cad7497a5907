"""flows.kafka.kafka_io against a real Tansu broker (the session `broker` fixture)."""

from __future__ import annotations

import time
import uuid
from pathlib import Path

import pytest
from confluent_kafka import Consumer, TopicPartition

from flows.kafka import kafka_io
from flows.kafka.dayfiles import partitions as day_partitions, read_values
from flows.dev.generate import generate_day
from flows.logs import UserError

SOURCES = ("bank", "processor", "ledger")


def unique(prefix: str = "t") -> str:
    return f"test.{prefix}.{uuid.uuid4().hex[:10]}"


def day_topics() -> dict[str, str]:
    run = uuid.uuid4().hex[:10]
    return {s: f"test.{s}.{run}" for s in SOURCES}


@pytest.fixture
def published(broker, tmp_path):
    """A 300-transaction day published to fresh 3-partition topics: (day dir, topics, counts)."""
    topics = day_topics()
    day = tmp_path / "day"
    generate_day(day, 300, seed=1, topics=topics)
    names = list(topics.values())
    assert kafka_io.create_topics(broker, names, 3) == {t: "created" for t in names}
    counts = kafka_io.produce_day(broker, day, names, progress=False)
    return day, names, counts


def expected(day: Path, names: list[str]) -> dict[tuple[str, int], list[bytes]]:
    return {part: read_values(path) for part, path in day_partitions(day, names).items()}


# --------------------------------------------------------------------------
# Configuration (no broker)


def test_kafka_config_passes_security_settings_from_env(monkeypatch, tmp_path):
    for name in ("TALLY_KAFKA_SECURITY_PROTOCOL", "TALLY_KAFKA_SASL_MECHANISM",
                 "TALLY_KAFKA_SASL_USERNAME", "TALLY_KAFKA_SASL_PASSWORD",
                 "TALLY_KAFKA_SASL_PASSWORD_FILE", "TALLY_KAFKA_SSL_CA_LOCATION"):
        monkeypatch.delenv(name, raising=False)
    assert kafka_io.kafka_config("h:1") == {"bootstrap.servers": "h:1"}

    monkeypatch.setenv("TALLY_KAFKA_SECURITY_PROTOCOL", "SASL_SSL")
    monkeypatch.setenv("TALLY_KAFKA_SASL_MECHANISM", "SCRAM-SHA-256")
    monkeypatch.setenv("TALLY_KAFKA_SASL_USERNAME", "alice")
    monkeypatch.setenv("TALLY_KAFKA_SSL_CA_LOCATION", "/etc/ca.pem")
    pwfile = tmp_path / "pw"
    pwfile.write_text("s3cret\n")
    monkeypatch.setenv("TALLY_KAFKA_SASL_PASSWORD_FILE", str(pwfile))
    assert kafka_io.kafka_config("h:1", {"client.id": "x"}) == {
        "bootstrap.servers": "h:1", "security.protocol": "SASL_SSL",
        "sasl.mechanism": "SCRAM-SHA-256", "sasl.username": "alice",
        "sasl.password": "s3cret", "ssl.ca.location": "/etc/ca.pem", "client.id": "x"}

    monkeypatch.setenv("TALLY_KAFKA_SASL_PASSWORD", "other")
    with pytest.raises(UserError, match="not both"):
        kafka_io.kafka_config("h:1")
    monkeypatch.delenv("TALLY_KAFKA_SASL_PASSWORD_FILE")
    assert kafka_io.kafka_config("h:1")["sasl.password"] == "other"

    monkeypatch.delenv("TALLY_KAFKA_SASL_PASSWORD")
    monkeypatch.setenv("TALLY_KAFKA_SASL_PASSWORD_FILE", str(tmp_path / "absent"))
    with pytest.raises(UserError, match="cannot read TALLY_KAFKA_SASL_PASSWORD_FILE"):
        kafka_io.kafka_config("h:1")


def test_record_key_is_the_account_string_or_none():
    assert kafka_io.record_key(b'{"x": 1, "account": "ACC-1", "y": [1]}') == b"ACC-1"
    assert kafka_io.record_key('{"account": "Zo\u00eb"}'.encode()) == "Zo\u00eb".encode()
    for bad in (b'{"account": 7}', b'{"account": null}', b'{"other": "a"}', b'["account"]',
                b'{"account": "a"', b"", b"\xff\xfe", b'"account"'):
        assert kafka_io.record_key(bad) is None, bad


# --------------------------------------------------------------------------
# Broker and topics


def test_check_broker(broker):
    kafka_io.check_broker(broker, timeout=10)


def test_unreachable_broker_is_a_quick_user_error():
    started = time.monotonic()
    with pytest.raises(UserError, match=r"cannot reach the Kafka broker at 127\.0\.0\.1:1: .*tally dev up"):
        kafka_io.check_broker("127.0.0.1:1", timeout=5)
    with pytest.raises(UserError, match="cannot reach the Kafka broker"):
        kafka_io.topic_partitions("127.0.0.1:1", ["recon.bank"], timeout=5)
    assert time.monotonic() - started < 5


def test_create_topics_is_idempotent(broker):
    a, b = unique("a"), unique("b")
    assert kafka_io.create_topics(broker, [a], 2) == {a: "created"}
    assert kafka_io.create_topics(broker, [a, b], 2) == {a: "exists", b: "created"}
    assert kafka_io.create_topics(broker, [a, b], 2) == {a: "exists", b: "exists"}
    assert kafka_io.topic_partitions(broker, [a, b]) == {a: 2, b: 2}
    with pytest.raises(UserError, match=rf"topic {a} exists with 2 partition\(s\), not 3"):
        kafka_io.create_topics(broker, [a], 3)


def test_missing_topic_is_a_user_error(broker):
    present, absent = unique("present"), unique("absent")
    kafka_io.create_topics(broker, [present], 1)
    with pytest.raises(UserError, match=rf"topic {absent} does not exist.*tally topics create"):
        kafka_io.topic_partitions(broker, [present, absent])
    with pytest.raises(UserError, match=rf"topic {absent} does not exist"):
        kafka_io.read_to_end(broker, [absent])
    with pytest.raises(UserError, match=rf"topic {absent} does not exist"):
        kafka_io.end_offsets(broker, [absent])


# --------------------------------------------------------------------------
# Publishing and reading back


def test_produce_day_then_read_back_byte_for_byte(broker, published):
    day, names, counts = published
    want = expected(day, names)
    assert counts == {part: len(values) for part, values in want.items()}
    assert sum(counts.values()) > 1000
    got = kafka_io.read_to_end(broker, names)
    assert set(got) == set(want)
    for part, values in want.items():
        assert [offset for offset, _ in got[part]] == list(range(len(values))), part
        assert [value for _, value in got[part]] == values, part


def test_produce_day_keys_by_account(broker, published):
    day, names, _ = published
    part = (names[0], 0)
    values = expected(day, names)[part]
    consumer = Consumer({"bootstrap.servers": broker, "group.id": uuid.uuid4().hex,
                         "enable.auto.commit": False, "enable.partition.eof": True})
    try:
        consumer.assign([TopicPartition(*part, 0)])
        keys = []
        while len(keys) < len(values):
            msg = consumer.poll(5)
            assert msg is not None and msg.error() is None
            keys.append(msg.key())
    finally:
        consumer.close()
    assert keys == [kafka_io.record_key(v) for v in values]
    # heartbeats have no account; every transaction line does
    assert sum(k is not None for k in keys) == sum(b'"account":"' in v for v in values) > 50


def test_end_offsets_are_the_line_counts(broker, published):
    day, names, counts = published
    assert kafka_io.end_offsets(broker, names) == counts
    # publish the day again: every partition now holds two big batches' worth
    kafka_io.produce_day(broker, day, names, progress=False)
    assert kafka_io.end_offsets(broker, names) == {part: 2 * n for part, n in counts.items()}
    got = kafka_io.read_to_end(broker, names)
    for part, values in expected(day, names).items():
        assert [v for _, v in got[part]] == values + values
        assert [o for o, _ in got[part]] == list(range(2 * len(values)))


def test_end_offsets_of_empty_and_large_partitions(broker, tmp_path):
    topic = unique("big")
    kafka_io.create_topics(broker, [topic], 2)
    assert kafka_io.end_offsets(broker, [topic]) == {(topic, 0): 0, (topic, 1): 0}
    (tmp_path / topic).mkdir()
    lines = [b'{"account": "A%d", "n": %d}' % (i % 97, i) for i in range(50_000)]
    (tmp_path / topic / "0.jsonl").write_bytes(b"\n".join(lines) + b"\n")
    assert kafka_io.produce_day(broker, tmp_path, [topic], progress=False) == {(topic, 0): 50_000}
    assert kafka_io.end_offsets(broker, [topic]) == {(topic, 0): 50_000, (topic, 1): 0}


def test_produce_day_keeps_odd_lines(broker, tmp_path):
    topic = unique("odd")
    kafka_io.create_topics(broker, [topic], 2)
    (tmp_path / topic).mkdir()
    # empty line in the middle, non-UTF-8, invalid JSON; no final newline on partition 1
    (tmp_path / topic / "0.jsonl").write_bytes(b'{"account": "A"}\n\n\xff\xfe\n{not json\n')
    (tmp_path / topic / "1.jsonl").write_bytes(b'[1, 2]\n  {"account": "B"}  ')
    counts = kafka_io.produce_day(broker, tmp_path, [topic], progress=False)
    assert counts == {(topic, 0): 4, (topic, 1): 2}
    assert kafka_io.read_to_end(broker, [topic]) == {
        (topic, 0): [(0, b'{"account": "A"}'), (1, b""), (2, b"\xff\xfe"), (3, b"{not json")],
        (topic, 1): [(0, b"[1, 2]"), (1, b'  {"account": "B"}  ')]}


def test_produce_day_refuses_a_topic_with_too_few_partitions(broker, tmp_path):
    topics = day_topics()
    generate_day(tmp_path / "day", 20, seed=2, topics=topics)
    names = list(topics.values())
    kafka_io.create_topics(broker, names, 2)
    with pytest.raises(UserError, match=r"has 2 partition\(s\) but .* files up to 2\.jsonl; "
                                        r"recreate the topic with 3 partitions"):
        kafka_io.produce_day(broker, tmp_path / "day", names, progress=False)
    assert kafka_io.end_offsets(broker, names) == {(t, p): 0 for t in names for p in range(2)}


def test_produce_day_needs_existing_topics_and_a_day(broker, tmp_path):
    topics = day_topics()
    generate_day(tmp_path / "day", 20, seed=3, topics=topics)
    with pytest.raises(UserError, match=r"topics test\.bank\.\w+, .* do not exist"):
        kafka_io.produce_day(broker, tmp_path / "day", list(topics.values()), progress=False)
    with pytest.raises(UserError, match="is not a directory"):
        kafka_io.produce_day(broker, tmp_path / "nowhere", list(topics.values()), progress=False)


def test_any_librdkafka_property_passes_from_env_and_file_table(monkeypatch, tmp_path):
    monkeypatch.setenv("TALLY_KAFKA_SSL_ENDPOINT_IDENTIFICATION_ALGORITHM", "https")
    keyfile = tmp_path / "key-password"
    keyfile.write_text("k3y\n")
    monkeypatch.setenv("TALLY_KAFKA_SSL_KEY_PASSWORD_FILE", str(keyfile))
    monkeypatch.setenv("TALLY_KAFKA_BOOTSTRAP_SERVERS", "elsewhere:1")  # --brokers decides
    kafka_io.use_file_settings({"client.id": "tally-7", "enable.ssl.certificate.verification": True})
    try:
        assert kafka_io.kafka_config("h:1") == {
            "bootstrap.servers": "h:1", "client.id": "tally-7",
            "enable.ssl.certificate.verification": "true",
            "ssl.endpoint.identification.algorithm": "https", "ssl.key.password": "k3y"}
    finally:
        kafka_io.use_file_settings({})


@pytest.mark.parametrize("name", ["sasl.password", "ssl.key.password", "ssl.key.pem",
                                  "sasl.oauthbearer.client.secret"])
def test_secrets_are_refused_in_the_config_file(name):
    env = "TALLY_KAFKA_" + name.upper().replace(".", "_")
    with pytest.raises(UserError, match=rf"{name} is a secret .* set {env} or {env}_FILE"):
        kafka_io.use_file_settings({name: "hunter2"})


def test_a_kafka_table_in_the_config_file_reaches_the_clients(tmp_path, monkeypatch):
    from flows.runtime.settings import load_config
    config = tmp_path / "tally.toml"
    config.write_text('[kafka]\n"security.protocol" = "bogus"\n')
    load_config(str(config))
    try:
        with pytest.raises(UserError, match='invalid Kafka client setting: .*"security.protocol"'):
            kafka_io.check_broker("127.0.0.1:9")
    finally:
        kafka_io.use_file_settings({})
    config.write_text('[kafka]\n"sasl.password" = "hunter2"\n')
    with pytest.raises(UserError, match="is a secret") as err:
        load_config(str(config))
    assert "hunter2" not in str(err.value)
