"""The event contract: one Kafka record value in, one typed record out.

Every record becomes exactly one of Event, Heartbeat or Invalid. Decoding never
raises: anything that breaks the contract is an Invalid carrying its raw bytes
and a reason precise enough to fix the producer.

A source with a mapping (state/mapping.py) sends its records in its own JSON shape:
the mapping reads them into the contract's fields, and from there they pass the same
checks as every other record.
"""

from __future__ import annotations

import re
from datetime import datetime, timedelta, timezone
from decimal import Decimal

import msgspec

from state import relations as rel
from state.config import MatchConfig
from state.currency import exponent
from state.mapping import Reader, Unreadable

NEVER = -(2**62)  # "no event time yet": below any real time, still an int
Part = tuple[str, int]  # a source partition: (topic, partition)
MAX_VALUE_BYTES = 1 << 20  # larger values are invalid; the archive keeps them whole
MAX_SIGNIFICANT_DIGITS = 18  # fits a signed 64-bit integer of minor units
SHARED_STRINGS = 1 << 17  # distinct topics, currencies and accounts a decoder shares at most

EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)  # times are UTC microseconds from here
ONE_US = timedelta(microseconds=1)
_AMOUNT = re.compile(r"(-?)([0-9]+)(?:\.([0-9]+))?\Z")
LIMITS = {"event_id": 128, "account": 64, "idempotency_key": 128, "reference": 256,
           "batch_id": 128}


class Event(msgspec.Struct, frozen=True, array_like=True, gc=False, order=True):
    """A valid transaction (or payout). Money in integer minor units, time in UTC microseconds.

    Events compare in the canonical order (state/verdicts.py `event_order`): the first six
    fields are that order, and they already tell any two records apart, so the indexes of
    state/book.py hold the events themselves, with no sort key beside each."""

    time_us: int
    source: str
    event_id: str
    topic: str
    partition: int
    offset: int
    account: str
    currency: str
    amount_minor: int
    idempotency_key: str | None
    reference: str | None
    # settlement (docs/settlement.md); last and defaulted, so older snapshots still read
    fee_minor: int | None = None  # what the processor withheld: net = amount - fee
    batch_id: str | None = None  # the settlement batch (or the payout's batch)
    payout: bool = False  # a payout of a batch rather than a transaction

    @property
    def label(self) -> str:
        return f"{self.source}:{self.event_id}"

    @property
    def net_minor(self) -> int:
        return self.amount_minor - (self.fee_minor or 0)

    @property
    def ref(self) -> str:
        return f"{self.topic}:{self.partition}:{self.offset}"


class Heartbeat(msgspec.Struct, frozen=True, array_like=True, gc=False):
    """A producer's statement that its partition's event time has reached time_us."""

    source: str
    time_us: int
    topic: str
    partition: int
    offset: int


class Invalid(msgspec.Struct, frozen=True, array_like=True, gc=False):
    """A record that breaks the contract, kept whole with the reason why."""

    source: str | None
    reason: str
    raw: bytes | None
    topic: str
    partition: int
    offset: int

    @property
    def ref(self) -> str:
        return f"{self.topic}:{self.partition}:{self.offset}"


Record = Event | Heartbeat | Invalid


class _Wire(msgspec.Struct):
    """The JSON object as producers send it; optional here, required per type below."""

    type: str = "transaction"
    source: str | None = None
    event_id: str | None = None
    account: str | None = None
    amount: str | None = None
    currency: str | None = None
    event_time: datetime | None = None
    idempotency_key: str | None = None
    reference: str | None = None
    fee: str | None = None
    batch_id: str | None = None
    reason: str | None = None  # of a statement_gap


_DECODER = msgspec.json.Decoder(_Wire)
_UNCONFIGURED = (None, None)  # a topic of no source: (source, reader)
# a mapped record as plain JSON values; numbers with a fraction as Decimal, exactly as written
_ANY_DECODER = msgspec.json.Decoder(float_hook=Decimal)


def _gap_reason(reason: str | None) -> str:
    """A statement published with `tally ingest --accept-unbalanced`: its own exception, so
    the gap between its balances and its entries stays visible beside the entries."""
    return "a statement that does not add up was published: " + str(reason or "no reason given")[:512]


class Reject(Exception):
    """Internal: a contract violation, with its reason."""


class Decoder:
    """Decodes record values for the topics of one configuration."""

    def __init__(self, config: MatchConfig):
        # topic -> (its source, its mapping's reader or None): one lookup per record
        self.topic_sources = {topic: (source, Reader(source, config.mappings[source])
                                      if source in config.mappings else None)
                              for source, topic in config.topics.items()}
        self.relations = config.relation_list()
        self.routed: dict[tuple, bool] = {}  # (source, kind, batched) -> any relation takes it
        # one string object per distinct topic, currency and account: millions of open
        # events would otherwise each hold their own copies
        self.shared: dict[str, str] = {}
        self.min_us = _to_us(datetime(config.min_year, 1, 1, tzinfo=timezone.utc))
        self.max_us = _to_us(datetime(config.max_year, 1, 1, tzinfo=timezone.utc))

    def decode(self, value: bytes | None, topic: str, partition: int, offset: int) -> Record:
        source, reader = self.topic_sources.get(topic, _UNCONFIGURED)
        try:
            wire = _parse(value) if reader is None else _read_mapped(value, reader)
            return self._record(wire, source, topic, partition, offset)
        except (Reject, Unreadable) as reject:
            raw = None if value is None else bytes(value[:MAX_VALUE_BYTES])
            return Invalid(source, str(reject), raw, topic, partition, offset)

    def _record(self, wire: _Wire, source, topic, partition, offset) -> Record:
        if wire.type == "heartbeat":
            self._check_source(wire.source, source, topic)
            return Heartbeat(wire.source, self._time(wire.event_time), topic, partition, offset)
        if wire.type == "statement_gap":
            self._check_source(wire.source, source, topic)
            raise Reject(_gap_reason(wire.reason))
        if wire.type not in ("transaction", "payout"):
            raise Reject(f"type {wire.type!r} is not 'transaction', 'payout' or 'heartbeat'")
        self._check_source(wire.source, source, topic)
        payout = wire.type == "payout"
        if payout:
            _check_payout(wire)
        for field, limit in LIMITS.items():
            _check_text(field, getattr(wire, field), limit,
                        required=field in ("event_id", "account") or (payout and field == "batch_id"))
        currency, places = _currency(wire.currency)
        amount = parse_amount(wire.amount, currency, places)
        fee = None if wire.fee is None else parse_amount(wire.fee, currency, places, "fee")
        self._check_relation(wire, payout, amount, fee)
        if len(self.shared) > SHARED_STRINGS:  # new accounts without end: start afresh
            self.shared.clear()
        share = self.shared.setdefault
        return Event(
            source=source, event_id=wire.event_id, account=share(wire.account, wire.account),
            currency=share(currency, currency), amount_minor=amount,
            time_us=self._time(wire.event_time), idempotency_key=wire.idempotency_key,
            reference=wire.reference, topic=share(topic, topic), partition=partition,
            offset=offset, fee_minor=fee, batch_id=wire.batch_id, payout=payout)

    def _check_relation(self, wire: _Wire, payout: bool, amount: int, fee: int | None) -> None:
        """Every record must take part in some relation, or nothing could ever decide it."""
        kind = rel.record_kind(payout, amount, fee)
        shape = (wire.source, kind, wire.batch_id is not None)
        routed = self.routed.get(shape)
        if routed is None:
            routed = self.routed[shape] = bool(rel.route(self.relations, *shape))
        if routed:
            return
        if kind == rel.FEE_LINE and wire.batch_id is None:
            raise Reject("a fee line (amount 0 with a fee) needs a batch_id")
        raise Reject(f"no relation of the config takes a {kind} of source {wire.source!r}"
                     + (" with a batch_id" if wire.batch_id is not None and kind != rel.PAYOUT_RECORD
                        else ""))

    def _check_source(self, claimed: str | None, expected: str | None, topic: str) -> None:
        if expected is None:
            raise Reject(f"topic {topic!r} is not configured for any source")
        if claimed is None:
            raise Reject("source is missing or null")
        if claimed != expected:
            raise Reject(f"source {claimed[:64]!r} does not match topic {topic!r}, which carries {expected!r}")

    def _time(self, moment: datetime | None) -> int:
        if moment is None:
            raise Reject("event_time is missing or null")
        if moment.tzinfo is None:
            raise Reject("event_time has no UTC offset; write e.g. '2026-11-21T10:15:30Z'")
        time_us = _to_us(moment)
        if not self.min_us <= time_us < self.max_us:
            raise Reject(f"event_time {moment.isoformat()} is outside the accepted years")
        return time_us


def _read_mapped(value: bytes | None, reader: Reader) -> _Wire:
    doc = _parse(value, _ANY_DECODER)
    if type(doc) is dict and doc.get("origin") == "tally" and doc.get("type") == "heartbeat":
        return _parse(value)  # a live run's own heartbeat, written in the contract
    return _Wire(**reader.read(doc))


def _check_payout(wire: _Wire) -> None:
    for field in ("fee", "idempotency_key"):
        if getattr(wire, field) is not None:
            raise Reject(f"{field} is not a field of a payout (a payout pays a batch's net total)")


def _parse(value: bytes | None, decoder: msgspec.json.Decoder = _DECODER):
    if value is None:
        raise Reject("value is null (a tombstone); a source record must carry an event")
    if len(value) == 0:
        raise Reject("value is empty")
    if len(value) > MAX_VALUE_BYTES:
        raise Reject(f"value is {len(value)} bytes, above the {MAX_VALUE_BYTES}-byte limit "
                      f"(raw bytes kept up to the limit)")
    try:
        return decoder.decode(value)
    except UnicodeDecodeError as err:
        raise Reject(f"value is not UTF-8: {err.reason} at byte {err.start}") from None
    except msgspec.ValidationError as err:
        raise Reject(f"wrong JSON shape: {err}") from None
    except msgspec.DecodeError as err:
        _check_utf8(value)  # a more useful reason than "malformed" when the bytes are the problem
        raise Reject(f"not valid JSON: {err}") from None


def _check_utf8(value: bytes) -> None:
    try:
        value.decode("utf-8")
    except UnicodeDecodeError as err:
        raise Reject(f"value is not UTF-8: {err.reason} at byte {err.start}") from None


def _check_text(field: str, text: str | None, limit: int, required: bool) -> None:
    if text is None:
        if required:
            raise Reject(f"{field} is missing or null")
        return
    if not 1 <= len(text) <= limit:
        raise Reject(f"{field} must be 1 to {limit} characters, got {len(text)}")


def _currency(code: str | None) -> tuple[str, int]:
    if code is None:
        raise Reject("currency is missing or null")
    places = exponent(code)
    if places is None:
        hint = f" (codes are upper case: {code.upper()!r})" if exponent(code.upper()) is not None else ""
        raise Reject(f"currency {code[:16]!r} is not an ISO 4217 code with minor units{hint}")
    return code, places


def parse_amount(text: str | None, currency: str, places: int, field: str = "amount") -> int:
    """A decimal string as integer minor units of `currency`, exactly."""
    if text is None:
        raise Reject(f"{field} is missing or null")
    match = _AMOUNT.match(text)
    if match is None:
        raise Reject(f"{field} {text[:40]!r} is not a decimal number such as '125.50' or '-10.00'")
    sign, whole, fraction = match.group(1), match.group(2), match.group(3) or ""
    if len(fraction) > places:
        raise Reject(f"{field} {text!r} has {len(fraction)} decimals; {currency} allows {places}")
    digits = (whole + fraction).lstrip("0")
    if len(digits) > MAX_SIGNIFICANT_DIGITS:
        raise Reject(f"{field} {text[:40]!r} has more than {MAX_SIGNIFICANT_DIGITS} significant digits")
    minor = int(whole + fraction.ljust(places, "0"))
    return -minor if sign else minor


def _to_us(moment: datetime) -> int:
    return (moment - EPOCH) // ONE_US


def format_us(time_us: int) -> str:
    """UTC microseconds as RFC 3339, for reasons and reports."""
    return (EPOCH + time_us * ONE_US).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
