"""A snapshot restores exactly: the restored shard decides the same (tests/test_determinism.py)
and is the same state, byte for byte, whatever history built it."""

from __future__ import annotations

import tempfile
import tomllib
from pathlib import Path

from flows.dev.settlement_day import generate_settlement
from flows.kafka import dayfiles
from state.book import Book
from state.config import MatchConfig, from_toml
from state.contract import Decoder, Event
from state.engine import Shard, decode_snapshot, encode_snapshot
from state.routing import split
from tests.days import day

ROOT = Path(__file__).resolve().parent.parent


def half_a_day(path: Path, config: MatchConfig) -> Shard:
    """A shard fed the first half of each partition of the day in `path`, in chunks."""
    parts = dayfiles.partitions(path, list(config.topics.values()))
    decoder, shard = Decoder(config), Shard(config, parts)
    for (topic, partition), file in parts.items():
        values = dayfiles.read_values(file)
        half = values[:len(values) // 2]
        for start in range(0, len(half), 500):
            records = [decoder.decode(v, topic, partition, start + i)
                       for i, v in enumerate(half[start:start + 500])]
            (piece,) = split(topic, partition, records, 1, config.max_clock_skew_us)
            shard.ingest(piece)
    return shard


def assert_restores_byte_for_byte(shard: Shard) -> None:
    snapshot = encode_snapshot(shard)
    restored = decode_snapshot(snapshot)
    assert restored.open_count() == shard.open_count() > 0
    assert encode_snapshot(restored) == snapshot
    assert encode_snapshot(decode_snapshot(encode_snapshot(restored))) == snapshot


def test_a_payments_day_restores_byte_for_byte():
    """Half a generated day: open events, decided memories (redeliveries, late records,
    duplicates) and claims, all in the snapshot."""
    assert_restores_byte_for_byte(half_a_day(day(20_000, 4), MatchConfig()))


def test_a_settlement_day_restores_byte_for_byte():
    config = from_toml(tomllib.loads((ROOT / "docs/examples/settlement.toml").read_text()))
    path = Path(tempfile.mkdtemp(prefix="tally-snapshot-")) / "day"
    generate_settlement(path, 3_000, seed=9)
    assert_restores_byte_for_byte(half_a_day(path, config))


def test_a_restored_book_knows_which_open_delivery_of_an_id_is_current():
    """An id delivered anew past the redelivery horizon, while its first delivery is still
    open, shadows it. Restored open events come back in time order, where the later one
    would win; the snapshot's memories must say that the earlier-timed one is current."""
    def delivery(offset: int, minute: int) -> Event:
        return Event(time_us=minute * 60_000_000, source="bank", event_id="b1", topic="bank",
                     partition=0, offset=offset, account="A1", currency="EUR",
                     amount_minor=100, idempotency_key=None, reference=None)

    first, again = delivery(0, minute=10), delivery(7, minute=5)
    book = Book(horizon_us=60_000_000)
    for event in (first, again):
        book.delivered(event)
        book.add(event)
    assert book.first(first) is again

    restored = Book(horizon_us=60_000_000)
    restored.open = list(book.open)
    restored.restore_seen(book.memories(), lambda event: True)
    assert restored.first(first) is again
    assert restored.memories() == book.memories()
