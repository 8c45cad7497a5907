"""Hostile records: every way a producer can break the contract, each with the reason expected.

Each family turns a good transaction line into a record the contract must
refuse, and names a fragment of the reason the engine must give. They take a
`random.Random`, so hypothesis can drive them (`st.randoms()`) and shrink, and a
seeded generator can expand them into thousands of records for a whole day.
"""

from __future__ import annotations

import json
import random

from state.config import MatchConfig
from state.contract import MAX_VALUE_BYTES, Decoder, Event
from state.currency import exponent

REQUIRED = ("source", "event_id", "account", "amount", "currency", "event_time")


def _encode(record: dict) -> bytes:
    return json.dumps(record, separators=(",", ":")).encode()


def non_utf8(good: dict, rng: random.Random):
    bad = rng.choice([b"\xff", b"\xc3\x28", b"\xed\xa0\x80", b"\x80"])
    account = good["account"].encode()
    return _encode(good).replace(b'"' + account + b'"', b'"' + account + bad + b'"', 1), "not UTF-8"


def invalid_json(good: dict, rng: random.Random):
    text = _encode(good)
    choice = rng.randrange(3)
    if choice == 0:
        return text[:rng.randrange(1, len(text) - 1)], "not valid JSON"
    if choice == 1:
        return text.replace(b'":"', b'"=', 1), "not valid JSON"
    return rng.choice([b"not json", b"{", b"}{", b"{'a': 1}", b"\x00\x01"]), "not valid JSON"


def not_an_object(good: dict, rng: random.Random):
    value = rng.choice([[good], good["account"], 42, None, True, 1.5])
    return json.dumps(value).encode(), "Expected `object`"


def missing_or_null(good: dict, rng: random.Random):
    field = rng.choice(REQUIRED)
    record = dict(good)
    if rng.random() < 0.5:
        del record[field]
    else:
        record[field] = None
    return _encode(record), f"{field} is missing or null"


def wrong_type(good: dict, rng: random.Random):
    field, value = rng.choice([("amount", 125), ("amount", 12.5), ("account", [good["account"]]),
                               ("event_id", {"id": 1}), ("currency", 978),
                               ("event_time", 1_700_000_000), ("reference", ["x"])])
    return _encode({**good, field: value}), f"at `$.{field}`"


def bad_currency(good: dict, rng: random.Random):
    code = rng.choice([good["currency"].lower(), "ABC", "EURO", "XAU", "", "€"])
    return _encode({**good, "currency": code}), "is not an ISO 4217 code"


def too_many_decimals(good: dict, rng: random.Random):
    places = exponent(good["currency"])
    amount = good["amount"].split(".")[0] + "." + "1" * (places + 1 + rng.randrange(3))
    return _encode({**good, "amount": amount}), "decimals;"


def too_many_digits(good: dict, rng: random.Random):
    amount = str(rng.randrange(1, 10)) + "0" * (18 + rng.randrange(5))
    return _encode({**good, "amount": amount}), "more than 18 significant digits"


def not_a_number(good: dict, rng: random.Random):
    amount = rng.choice(["NaN", "Infinity", "-Infinity", "inf", "1e5", "+1.00", "1,000.00", ""])
    return _encode({**good, "amount": amount}), "is not a decimal number"


def bad_time(good: dict, rng: random.Random):
    moment, reason = rng.choice([
        (good["event_time"].rstrip("Z"), "has no UTC offset"),
        ("2026-02-30T10:00:00Z", "Invalid RFC3339"),
        ("2026-13-01T10:00:00Z", "Invalid RFC3339"),
        ("1899-12-31T23:59:59Z", "outside the accepted years"),
        ("2999-01-01T00:00:00Z", "outside the accepted years"),
        ("tomorrow", "Invalid RFC3339")])
    return _encode({**good, "event_time": moment}), reason


def wrong_source(good: dict, rng: random.Random):
    source = rng.choice([s for s in ("bank", "processor", "ledger", "Bank", "x") if s != good["source"]])
    return _encode({**good, "source": source}), "does not match topic"


def too_long(good: dict, rng: random.Random):
    field, limit = rng.choice([("event_id", 128), ("account", 64), ("reference", 256),
                               ("idempotency_key", 128)])
    value = "x" * (limit + 1 + rng.randrange(100))
    return _encode({**good, field: value}), f"{field} must be 1 to {limit} characters"


def oversized(good: dict, rng: random.Random):
    padding = "p" * (MAX_VALUE_BYTES + rng.randrange(1, 2 * MAX_VALUE_BYTES))
    return _encode({**good, "reference": padding}), "-byte limit"


def empty(good: dict, rng: random.Random):
    return b"", "value is empty"


def tombstone(good: dict, rng: random.Random):
    return None, "value is null (a tombstone)"


def unknown_type(good: dict, rng: random.Random):
    return _encode({**good, "type": rng.choice(["refund", "TRANSACTION", ""])}), "is not 'transaction', 'payout' or 'heartbeat'"


FAMILIES = [non_utf8, invalid_json, not_an_object, missing_or_null, wrong_type, bad_currency,
            too_many_decimals, too_many_digits, not_a_number, bad_time, wrong_source, too_long,
            oversized, empty, tombstone, unknown_type]


def hostile(good: dict, rng: random.Random, family=None):
    """(value, reason fragment, family name) of one hostile record built from `good`."""
    family = family or rng.choice(FAMILIES)
    value, reason = family(good, rng)
    return value, reason, family.__name__


def transactions(lines: list[bytes], topic: str, config: MatchConfig) -> list[dict]:
    """The lines of a partition that are valid transactions, parsed: the seeds of mutation."""
    decoder = Decoder(config)
    return [json.loads(line) for line in lines
            if isinstance(decoder.decode(line, topic, 0, 0), Event)]
