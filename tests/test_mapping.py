"""Mapped sources: records in their producer's JSON shape, read through the real Decoder,
end as the same Event a contract record would, or as Invalid naming the path and why."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from flows.runtime.pacemaker import heartbeat_value
from state.config import from_toml
from state.contract import Decoder, Event, Heartbeat, Invalid
from state.currency import EXPONENTS

TOPIC = "recon.processor"
WEBHOOK = {  # a Stripe-like processor: its events as it sends them
    "amount_form": "minor_units", "time_form": "epoch_seconds", "upper_case_currency": True,
    "paths": {"type": "/type", "event_id": "/id", "event_time": "/created",
              "amount": "/data/object/amount", "currency": "/data/object/currency",
              "idempotency_key": "/data/object/metadata/order_id",
              "reference": "/data/object/description"},
    "constants": {"account": "stripe-main"},
    "types": {"charge.succeeded": "transaction", "charge.refunded": "refund",
              "ping": "heartbeat", "customer.created": "ignore"},
}
CREATED = 1795256130  # 2026-11-21T10:15:30Z


def decoder(mapping: dict = WEBHOOK, **config) -> Decoder:
    return Decoder(from_toml({"mappings": {"processor": mapping}, **config}))


DECODER = decoder()


def charge(type_="charge.succeeded", **changes) -> dict:
    obj = {"amount": 1050, "currency": "usd", "description": "Order 7",
           "metadata": {"order_id": "ord-7"}}
    record = {"id": "evt_1", "type": type_, "created": CREATED, "data": {"object": obj}}
    for path, value in changes.items():
        put(record, path, value)
    return record


def put(record: dict, path: str, value) -> None:
    """record["data"]["object"]["amount"] = value for path "data.object.amount"; ... deletes."""
    *parents, last = path.split(".")
    node = record
    for key in parents:
        node = node[key]
    if value is ...:
        del node[last]
    else:
        node[last] = value


def decode(record, decoder: Decoder = DECODER, topic: str = TOPIC):
    value = record if isinstance(record, bytes) else json.dumps(record).encode()
    return decoder.decode(value, topic, 1, 9)


def test_a_webhook_charge_is_the_event_the_contract_would_give():
    event = decode(charge())
    contract = Decoder(from_toml({})).decode(json.dumps({
        "source": "processor", "event_id": "evt_1", "account": "stripe-main", "amount": "10.50",
        "currency": "USD", "event_time": "2026-11-21T10:15:30Z", "idempotency_key": "ord-7",
        "reference": "Order 7"}).encode(), TOPIC, 1, 9)
    assert isinstance(event, Event) and event == contract


def test_a_refund_is_a_negative_transaction():
    event = decode(charge("charge.refunded", id="evt_2"))
    assert isinstance(event, Event) and event.amount_minor == -1050


@pytest.mark.parametrize("form,amount,currency,minor", [
    ("minor_units", 1050, "EUR", 1050), ("minor_units", -5, "EUR", -5), ("minor_units", 1250, "JPY", 1250),
    ("minor_units", 1250, "KWD", 1250), ("decimal", "10.50", "EUR", 1050), ("decimal", 10.5, "EUR", 1050),
    ("decimal", 1250, "JPY", 1250), ("decimal", "-0.125", "KWD", -125)])
def test_amount_forms(form, amount, currency, minor):
    mapped = decoder({**WEBHOOK, "amount_form": form})
    event = decode(charge(**{"data.object.amount": amount, "data.object.currency": currency}), mapped)
    assert isinstance(event, Event) and (event.amount_minor, event.currency) == (minor, currency)


@pytest.mark.parametrize("form,created", [
    ("epoch_seconds", CREATED), ("epoch_milliseconds", CREATED * 1000 + 123),
    ("rfc3339", "2026-11-21T12:15:30.123+02:00")])
def test_time_forms(form, created):
    event = decode(charge(created=created), decoder({**WEBHOOK, "time_form": form}))
    expected = CREATED * 10**6 + (0 if form == "epoch_seconds" else 123_000)
    assert isinstance(event, Event) and event.time_us == expected


def test_constants_and_pointer_escapes_and_array_indexes():
    mapping = {"paths": {"event_id": "/lines/1/id", "amount": "/a~1b", "event_time": "/m~0n"},
               "constants": {"account": "operating-eur", "currency": "EUR", "type": "transaction"}}
    record = {"lines": [{"id": "l-1"}, {"id": "l-2"}, {"id": "l-3"}], "a/b": "3.00", "m~n": "2026-11-21T10:15:30Z"}
    event = decode(record, decoder(mapping))
    assert isinstance(event, Event)
    assert (event.event_id, event.account, event.currency, event.amount_minor) == \
        ("l-2", "operating-eur", "EUR", 300)


def test_numeric_ids_are_their_digits_and_optional_fields_may_be_absent():
    event = decode(charge(id=12345, **{"data.object.metadata": ..., "data.object.description": None}))
    assert isinstance(event, Event)
    assert (event.event_id, event.idempotency_key, event.reference) == ("12345", None, None)


def test_a_heartbeat_type_and_tallys_own_heartbeat_both_move_time():
    ping = decode({"type": "ping", "created": CREATED})
    own = decode(heartbeat_value("processor", CREATED * 10**6))
    assert isinstance(ping, Heartbeat) and isinstance(own, Heartbeat)
    assert ping.time_us == own.time_us == CREATED * 10**6 and ping.source == "processor"


def test_unmapped_topics_still_read_the_contract():
    record = Decoder(from_toml({"mappings": {"processor": WEBHOOK}})).decode(
        json.dumps(charge()).encode(), "recon.bank", 0, 0)
    assert isinstance(record, Invalid) and record.reason.startswith("type 'charge.succeeded' is not")


BAD = [
    (charge("customer.created"), "event type 'customer.created' is not a payment: the mapping ignores it"),
    (charge("invoice.paid"), "event type 'invoice.paid' is not mapped (types: charge.refunded, "),
    (charge(type=...), "/type: missing or null (the type)"),
    (charge(id=None), "/id: missing or null (the event_id)"),
    (charge(**{"data.object.amount": ...}), "/data/object/amount: missing or null (the amount)"),
    (charge(data="gone"), "/data/object/currency: missing or null (the currency)"),
    (charge(**{"data.object.currency": ...}), "/data/object/currency: missing or null (the currency)"),
    (charge(created=...), "/created: missing or null (the event_time)"),
    (charge(created="abc"), "/created: 'abc' is not epoch seconds"),
    (charge(created=1795256130.5), "/created: 1795256130.5 is not epoch seconds"),
    (charge(created=10**18), "/created: 1000000000000000000 epoch seconds is beyond any accepted year"),
    (charge(created=-10**9), "event_time 1938-04-24T22:13:20+00:00 is outside the accepted years"),
    (charge(**{"data.object.amount": "10.50"}), "/data/object/amount: '10.50' is not an integer of minor units"),
    (charge(**{"data.object.amount": 10.5}), "/data/object/amount: 10.5 is not an integer of minor units"),
    (charge(**{"data.object.amount": True}), "/data/object/amount: true is not an integer of minor units"),
    (charge(**{"data.object.amount": 10**19}), "amount '100000000000000000.00' has more than 18 significant"),
    (charge(id={"v": 1}), "/id: an object is not text (the event_id)"),
    (charge(**{"data.object.currency": ["usd"]}), "/data/object/currency: an array is not text"),
    (charge(**{"data.object.currency": "usdx"}), "currency 'USDX' is not an ISO 4217 code"),
    (charge(id="e" * 129), "event_id must be 1 to 128 characters, got 129"),
    (charge(**{"data.object.metadata.order_id": ""}), "idempotency_key must be 1 to 128 characters"),
    (b"[1, 2]", "/type: missing or null (the type)"),
    (b'{"type": "charge.succeeded", ', "not valid JSON"),
    (b"\xff{}", "value is not UTF-8"),
    (b"", "value is empty"),
    (None, "value is null (a tombstone)"),
]


@pytest.mark.parametrize("record,reason", BAD, ids=[r for _, r in BAD])
def test_what_the_mapping_cannot_read_is_invalid_with_path_and_reason(record, reason):
    value = record if record is None or isinstance(record, bytes) else json.dumps(record).encode()
    result = DECODER.decode(value, TOPIC, 1, 9)
    assert isinstance(result, Invalid), result
    assert reason in result.reason, result.reason
    assert (result.raw, result.source, result.ref) == (value, "processor", f"{TOPIC}:1:9")


def test_lower_case_currency_without_the_option_keeps_the_contracts_hint():
    result = decode(charge(), decoder({**WEBHOOK, "upper_case_currency": False}))
    assert isinstance(result, Invalid) and "(codes are upper case: 'USD')" in result.reason


def test_decimal_amounts_keep_the_currencys_places():
    mapped = decoder({**WEBHOOK, "amount_form": "decimal"})
    for amount in ("10.123", 10.123):
        result = decode(charge(**{"data.object.amount": amount}), mapped)
        assert isinstance(result, Invalid) and "has 3 decimals; USD allows 2" in result.reason
    exponent = json.dumps(charge(**{"data.object.amount": 7})).replace(": 7,", ": 1E5,").encode()
    result = decode(exponent, mapped)
    assert isinstance(result, Invalid) and "amount '1E+5' is not a decimal number" in result.reason


def test_mapped_records_are_routed_by_the_relations_like_contract_ones():
    """With settlement relations, a fee line (amount 0, a fee) needs its batch, mapped or not."""
    import tomllib
    from pathlib import Path
    settlement = tomllib.loads((Path(__file__).parent.parent / "docs/examples/settlement.toml").read_text())
    mapping = {**WEBHOOK, "paths": {**WEBHOOK["paths"], "fee": "/data/object/fee"}}
    result = decode(charge(**{"data.object.amount": 0, "data.object.fee": 30}),
                    decoder(mapping, **settlement))
    assert isinstance(result, Invalid) and result.reason == "a fee line (amount 0 with a fee) needs a batch_id"


# values at a reader's edges (beyond any year, past 64 bits, a date that is no date), or any JSON
EDGES = st.sampled_from([10**18, -10**18, 2**64, 0, "", "2026-13-01T00:00:00Z", "usd", True])
JSON = EDGES | st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=8) | st.floats(allow_nan=False),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=3),
    max_leaves=6)
PATHS = ("id", "type", "created", "data", "data.object.amount", "data.object.currency",
         "data.object.metadata")


@settings(max_examples=500, deadline=None)
@given(changes=st.dictionaries(st.sampled_from(PATHS), JSON, min_size=1, max_size=2),
       form=st.sampled_from(["epoch_seconds", "epoch_milliseconds", "rfc3339"]))
def test_decoding_a_mapped_record_never_raises(changes, form):
    """Any JSON value at one or two mapped paths: an Event, a Heartbeat or an Invalid, never an error."""
    record = charge()
    for path in sorted(changes):  # "data" before its insides, which may then be gone
        try:
            put(record, path, changes[path])
        except (KeyError, TypeError, IndexError):
            pass
    result = decode(record, decoder({**WEBHOOK, "time_form": form}))
    assert isinstance(result, (Event, Heartbeat, Invalid))


# ----------------------------------------------------------------------------- the property

CURRENCIES = sorted(EXPONENTS)
CHARACTERS = st.characters(codec="utf-8", exclude_categories=("Cs",))
TEXT = st.text(CHARACTERS, min_size=1, max_size=20) | st.text(CHARACTERS, max_size=300)  # some too long
EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
YEAR_2000_US, YEAR_2100_US = 946_684_800 * 10**6, 4_102_444_800 * 10**6


@st.composite
def payments(draw) -> dict:
    time_form = draw(st.sampled_from(["epoch_seconds", "epoch_milliseconds", "rfc3339"]))
    unit_us = {"epoch_seconds": 10**6, "epoch_milliseconds": 10**3, "rfc3339": 1}[time_form]
    return {"event_id": draw(TEXT), "account": draw(TEXT), "currency": draw(st.sampled_from(CURRENCIES)),
            "minor": draw(st.integers(-10**19, 10**19) | st.integers(-10**6, 10**6)),
            "fee": draw(st.none() | st.integers(0, 10**4)),
            "time_us": draw(st.integers(YEAR_2000_US, YEAR_2100_US)  # and some outside the years
                            | st.integers(0, 2 * YEAR_2100_US)) // unit_us * unit_us,
            "key": draw(st.none() | TEXT), "reference": draw(st.none() | TEXT),
            "amount_form": draw(st.sampled_from(["minor_units", "decimal"])), "time_form": time_form}


def decimal_text(minor: int, places: int) -> str:
    digits = str(abs(minor)).rjust(places + 1, "0")
    return ("-" if minor < 0 else "") + (f"{digits[:-places]}.{digits[-places:]}" if places else digits)


def contract_record(p: dict) -> dict:
    places = EXPONENTS[p["currency"]]
    record = {"source": "ledger", "event_id": p["event_id"], "account": p["account"],
              "amount": decimal_text(p["minor"], places), "currency": p["currency"],
              "event_time": (EPOCH + timedelta(microseconds=p["time_us"])).isoformat(),
              "idempotency_key": p["key"], "reference": p["reference"]}
    if p["fee"] is not None:
        record["fee"] = decimal_text(p["fee"], places)
    return record


def mapped_record(p: dict) -> tuple[dict, dict]:
    """The same payment as a webhook sends it, and the mapping that reads it."""
    places = EXPONENTS[p["currency"]]
    refund = p["minor"] < 0  # sent as a positive amount of a refund event
    amount = abs(p["minor"]) if p["amount_form"] == "minor_units" else decimal_text(abs(p["minor"]), places)
    fee = p["fee"] if p["amount_form"] == "minor_units" or p["fee"] is None else decimal_text(p["fee"], places)
    moment = {"epoch_seconds": p["time_us"] // 10**6, "epoch_milliseconds": p["time_us"] // 10**3,
              "rfc3339": (EPOCH + timedelta(microseconds=p["time_us"])).isoformat()}[p["time_form"]]
    body = {"kind": "refund" if refund else "sale", "ids": [p["event_id"]], "at": moment,
            "money": {"value": amount, "ccy": p["currency"].lower(), "fee": fee},
            "meta": {"account": p["account"], "key": p["key"], "ref": p["reference"]}}
    mapping = {"amount_form": p["amount_form"], "time_form": p["time_form"], "upper_case_currency": True,
               "types": {"sale": "transaction", "refund": "refund"},
               "paths": {"type": "/kind", "event_id": "/ids/0", "event_time": "/at",
                         "amount": "/money/value", "currency": "/money/ccy", "fee": "/money/fee",
                         "account": "/meta/account", "idempotency_key": "/meta/key",
                         "reference": "/meta/ref"}}
    return body, mapping


@settings(max_examples=400, deadline=None)
@given(payments())
def test_a_contract_record_and_its_mapped_shape_decode_alike(payment):
    """The same Event from both, or Invalid from both: the mapping adds no check and skips none."""
    body, mapping = mapped_record(payment)
    contract = Decoder(from_toml({})).decode(json.dumps(contract_record(payment)).encode(),
                                             "recon.ledger", 0, 5)
    mapped = Decoder(from_toml({"mappings": {"ledger": mapping}})).decode(
        json.dumps(body).encode(), "recon.ledger", 0, 5)
    if isinstance(contract, Event):
        assert mapped == contract
    else:
        assert isinstance(mapped, Invalid), (contract.reason, mapped)
