"""The event contract: every bad-input class becomes Invalid with a precise reason."""

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from state.config import MatchConfig
from tests import hostile
from state.contract import MAX_VALUE_BYTES, Decoder, Event, Heartbeat, Invalid, parse_amount, Reject

DECODER = Decoder(MatchConfig())
GOOD = {"type": "transaction", "source": "bank", "event_id": "b-1", "account": "ACC1",
        "amount": "125.50", "currency": "EUR", "event_time": "2026-11-21T10:15:30.123Z",
        "idempotency_key": "k-1", "reference": "INV 2231 ACME"}


def decode(value, topic="recon.bank"):
    return DECODER.decode(value, topic, 2, 41)


def with_(**changes):
    record = {**GOOD, **changes}
    return json.dumps({k: v for k, v in record.items() if v is not ...}).encode()


def test_good_transaction_decodes_to_minor_units_and_utc_microseconds():
    event = decode(with_())
    assert isinstance(event, Event)
    assert event.amount_minor == 12550
    assert event.time_us == 1795256130123000
    assert (event.topic, event.partition, event.offset) == ("recon.bank", 2, 41)


def test_type_defaults_to_transaction_and_optional_fields_may_be_absent():
    event = decode(with_(type=..., idempotency_key=..., reference=None))
    assert isinstance(event, Event) and event.idempotency_key is None and event.reference is None


def test_offsets_are_converted_to_utc():
    event = decode(with_(event_time="2026-11-21T12:15:30.123+02:00"))
    assert event.time_us == 1795256130123000


def test_heartbeat():
    beat = decode(b'{"type":"heartbeat","source":"bank","event_time":"2026-11-21T10:00:00Z"}')
    assert isinstance(beat, Heartbeat) and beat.time_us == 1795255200000000


@pytest.mark.parametrize("currency,amount,minor", [
    ("JPY", "1250", 1250), ("KWD", "1.250", 1250), ("EUR", "-10.00", -1000), ("EUR", "10.5", 1050),
    ("CLF", "1.2345", 12345), ("EUR", "0.01", 1)])
def test_amounts_by_currency_exponent(currency, amount, minor):
    event = decode(with_(currency=currency, amount=amount))
    assert isinstance(event, Event) and event.amount_minor == minor


BAD = [
    (b"\xff\xfe{}", "not UTF-8"),
    (b'{"source": "bank", "event_id": "\xc3\x28"}', "not UTF-8"),
    (b'{"source": "bank", ', "not valid JSON"),
    (b"[1, 2]", "Expected `object`, got `array`"),
    (b'"text"', "Expected `object`"),
    (with_(account=...), "account is missing or null"),
    (with_(account=None), "account is missing or null"),
    (with_(event_id=None), "event_id is missing or null"),
    (with_(amount=...), "amount is missing or null"),
    (with_(currency=...), "currency is missing or null"),
    (with_(event_time=...), "event_time is missing or null"),
    (with_(source=...), "source is missing or null"),
    (with_(amount=125.5), "Expected `str | null`, got `float` - at `$.amount`"),
    (with_(amount=125), "got `int` - at `$.amount`"),
    (with_(account=["ACC1"]), "got `array` - at `$.account`"),
    (with_(currency="eur"), "not an ISO 4217 code with minor units (codes are upper case: 'EUR')"),
    (with_(currency="XYZ"), "'XYZ' is not an ISO 4217 code"),
    (with_(currency="XAU"), "'XAU' is not an ISO 4217 code"),
    (with_(amount="10.123"), "has 3 decimals; EUR allows 2"),
    (with_(currency="JPY", amount="10.5"), "has 1 decimals; JPY allows 0"),
    (with_(amount="1234567890123456789"), "more than 18 significant digits"),
    (with_(amount="NaN"), "is not a decimal number"),
    (with_(amount="Infinity"), "is not a decimal number"),
    (with_(amount="-inf"), "is not a decimal number"),
    (with_(amount="1e5"), "is not a decimal number"),
    (with_(amount="+10.00"), "is not a decimal number"),
    (with_(amount=" 10.00"), "is not a decimal number"),
    (with_(amount=""), "is not a decimal number"),
    (b'{"amount": NaN}', "not valid JSON"),
    (with_(event_time="2026-11-21T10:15:30"), "event_time has no UTC offset"),
    (with_(event_time="2026-02-30T10:00:00Z"), "Invalid RFC3339"),
    (with_(event_time="yesterday"), "Invalid RFC3339"),
    (with_(event_time="1899-12-31T00:00:00Z"), "outside the accepted years"),
    (with_(event_time="2999-01-01T00:00:00Z"), "outside the accepted years"),
    (with_(source="ledger"), "source 'ledger' does not match topic 'recon.bank'"),
    (with_(event_id="x" * 129), "event_id must be 1 to 128 characters, got 129"),
    (with_(event_id=""), "event_id must be 1 to 128 characters, got 0"),
    (with_(account="A" * 65), "account must be 1 to 64 characters"),
    (with_(reference="r" * 257), "reference must be 1 to 256 characters"),
    (with_(type="refund"), "type 'refund' is not 'transaction', 'payout' or 'heartbeat'"),
    (b"", "value is empty"),
    (None, "value is null (a tombstone)"),
    (b'{"type":"heartbeat","source":"bank"}', "event_time is missing or null"),
]


@pytest.mark.parametrize("value,reason", BAD, ids=[r for _, r in BAD])
def test_bad_input_is_invalid_with_reason_and_raw_bytes(value, reason):
    record = decode(value)
    assert isinstance(record, Invalid), record
    assert reason in record.reason
    assert record.raw == value
    assert (record.topic, record.partition, record.offset, record.source) == ("recon.bank", 2, 41, "bank")


def test_oversized_value_is_invalid_and_keeps_the_first_megabyte():
    value = b'{"pad": "' + b"x" * (10 * 1024 * 1024) + b'"}'
    record = decode(value)
    assert isinstance(record, Invalid) and "above the 1048576-byte limit" in record.reason
    assert record.raw == value[:MAX_VALUE_BYTES]


def test_unknown_topic_is_invalid():
    record = decode(with_(), topic="recon.other")
    assert isinstance(record, Invalid) and "not configured for any source" in record.reason
    assert record.source is None


def test_parse_amount_rejects_rather_than_rounds():
    with pytest.raises(Reject):
        parse_amount("0.001", "EUR", 2)
    assert parse_amount("000.10", "EUR", 2) == 10


@settings(max_examples=400, deadline=None)
@given(rng=st.randoms(use_true_random=False), family=st.sampled_from(hostile.FAMILIES),
       good=st.sampled_from([GOOD, {**GOOD, "currency": "JPY", "amount": "1250"},
                             {**GOOD, "currency": "KWD", "amount": "-0.125"}]))
def test_every_hostile_family_is_invalid_with_its_reason(rng, family, good):
    value, reason, _ = hostile.hostile(good, rng, family)
    record = decode(value)
    assert isinstance(record, Invalid), (family.__name__, value[:200] if value else value)
    assert reason in record.reason
    assert record.raw == (None if value is None else value[:MAX_VALUE_BYTES])
