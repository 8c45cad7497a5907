"""Publishing all or nothing: one Kafka transaction for a whole set of records.

Tally's readers use read_committed (flows/kafka/kafka_io.py), so records of an aborted
or unfinished transaction are never read: a file is published whole, or not at all.
"""

from __future__ import annotations

from confluent_kafka import KafkaException, Producer

from flows import logs
from flows.kafka.kafka_io import _client_config, _reason, _Watch, MAX_MESSAGE_BYTES
from flows.logs import UserError
from state.contract import Part

TIMEOUT_S = 60


def publish_all(brokers: str, values: dict[Part, list[tuple[bytes | None, bytes]]],
                transactional_id: str) -> int:
    """Publish each partition's (key, value) pairs in order, in one transaction.

    `transactional_id` names the publisher: a second publisher with the same id fences the
    first, so two ingests of one source never interleave half-files."""
    watch = _Watch(report=True)
    producer = Producer(_client_config(brokers, watch, {
        "transactional.id": transactional_id, "enable.idempotence": True, "acks": "all",
        "linger.ms": 20, "message.max.bytes": MAX_MESSAGE_BYTES,
        "transaction.timeout.ms": TIMEOUT_S * 1000}))
    try:
        producer.init_transactions(TIMEOUT_S)
        producer.begin_transaction()
        count = 0
        for (topic, partition), pairs in values.items():
            for key, value in pairs:
                _produce(producer, topic, partition, key, value)
                count += 1
        producer.commit_transaction(TIMEOUT_S)  # flushes every record first
        return count
    except KafkaException as exc:
        _abort(producer)
        raise UserError(f"publishing to {brokers} failed, nothing was published: "
                        f"{logs.redact(_reason(exc))}; check the broker and run again") from None
    except BaseException:
        _abort(producer)
        raise


def _produce(producer: Producer, topic: str, partition: int, key, value) -> None:
    while True:
        try:
            producer.produce(topic, value, key, partition)
            return
        except BufferError:  # the local queue is full: let deliveries drain
            producer.poll(0.05)


def _abort(producer: Producer) -> None:
    try:
        producer.abort_transaction(TIMEOUT_S)
    except KafkaException:  # no transaction began, or the broker is gone: nothing is committed
        pass
