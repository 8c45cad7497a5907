"""Mappings: one source's records read in the JSON shape its producer sends.

A `[mappings.SOURCE]` table (docs/configuration.md, "Mappings") says where each contract
field lives in the record, as a JSON Pointer (RFC 6901: "/data/object/amount", with "~1"
for a "/" and "~0" for a "~" inside a key, and array indexes as numbers), or gives it as
a constant, and how the amount and the time are written. `Reader.read` turns one parsed
record into the contract's own fields; state/contract.py then checks those exactly as it
checks a record in the contract, so a mapped record ends as the same Event.
"""

from __future__ import annotations

import re
from datetime import datetime, timedelta, timezone
from decimal import Decimal

import msgspec

from state.currency import exponent
from state.units import ConfigError

FIELDS = ("type", "event_id", "account", "amount", "currency", "event_time",
          "idempotency_key", "reference", "fee", "batch_id")
REQUIRED = ("event_id", "account", "amount", "currency", "event_time")
CONSTANT_FIELDS = ("type", "account", "currency")
AMOUNT_FORMS = ("decimal", "minor_units")
TIME_FORMS = ("rfc3339", "epoch_seconds", "epoch_milliseconds")
# what a value of the record's type field makes of the record; "refund" is a transaction
# whose amount is negated (processors send refunds as positive amounts, Tally's are negative)
KINDS = ("transaction", "refund", "payout", "heartbeat", "ignore")
MAX_ACCOUNT = 64  # characters, the contract's limit
_KEYS = {"paths", "constants", "types", "amount_form", "time_form", "upper_case_currency"}
_POINTER = re.compile(r"(/([^~]|~[01])*)+\Z")
_INDEX = re.compile(r"(0|[1-9][0-9]*)\Z")
_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
_MISSING = object()


class Mapping(msgspec.Struct, frozen=True, kw_only=True):
    """Where one source's records carry each contract field."""

    paths: dict[str, str]  # contract field -> JSON Pointer
    constants: dict[str, str] = {}  # contract field -> the value of every record
    types: dict[str, str] = {}  # value at paths["type"] -> one of KINDS
    amount_form: str = "decimal"  # amount and fee: "decimal" major units, or "minor_units"
    time_form: str = "rfc3339"
    upper_case_currency: bool = False


class Unreadable(Exception):
    """A record the mapping cannot read, with the path and the reason."""


# ----------------------------------------------------------------------------- the config

def parse(table: dict, topics: dict[str, str]) -> dict[str, Mapping]:
    """[mappings.SOURCE] tables, each for a source of [sources]."""
    mappings = {}
    for source, body in table.items():
        where = f"mappings.{source}"
        if source not in topics:
            raise ConfigError(f"[{where}]: {source!r} is not a source in [sources]")
        if not isinstance(body, dict):
            raise ConfigError(f"{where}: write it as a table, [{where}]")
        mappings[source] = _mapping(where, dict(body))
    return mappings


def _mapping(where: str, body: dict) -> Mapping:
    unknown = set(body) - _KEYS
    if unknown:
        raise ConfigError(f"unknown {where} key(s): {', '.join(sorted(unknown))}")
    paths = _strings(body.get("paths", {}), f"{where}.paths", FIELDS)
    constants = _strings(body.get("constants", {}), f"{where}.constants", CONSTANT_FIELDS)
    types = _strings(body.get("types", {}), f"{where}.types", None)
    mapping = Mapping(paths=paths, constants=constants, types=types,
                      amount_form=_one_of(body, "amount_form", AMOUNT_FORMS, where),
                      time_form=_one_of(body, "time_form", TIME_FORMS, where),
                      upper_case_currency=_flag(body, "upper_case_currency", where))
    _check(mapping, where)
    return mapping


def _strings(table: object, where: str, allowed: tuple[str, ...] | None) -> dict[str, str]:
    if not isinstance(table, dict):
        raise ConfigError(f"{where}: write it as a table, [{where}]")
    if allowed is not None:
        unknown = set(table) - set(allowed)
        if unknown:
            raise ConfigError(f"unknown {where} key(s): {', '.join(sorted(unknown))}; "
                              f"known: {', '.join(allowed)}")
    for key, value in table.items():
        if not isinstance(value, str):
            raise ConfigError(f"{where}.{key}: {value!r} is not a string")
    return dict(table)


def _one_of(body: dict, key: str, choices: tuple[str, ...], where: str) -> str:
    value = body.get(key, choices[0])
    if value not in choices:
        raise ConfigError(f"{where}.{key}: {value!r} is not one of {', '.join(choices)}")
    return value


def _flag(body: dict, key: str, where: str) -> bool:
    value = body.get(key, False)
    if not isinstance(value, bool):
        raise ConfigError(f"{where}.{key}: {value!r} is not true or false")
    return value


def _check(mapping: Mapping, where: str) -> None:
    for field, pointer in mapping.paths.items():
        if not _POINTER.match(pointer):
            raise ConfigError(f"{where}.paths.{field}: {pointer!r} is not a JSON Pointer such as "
                              f"'/data/object/amount' ('~0' for '~' and '~1' for '/' in a key)")
    for field in REQUIRED:
        if field not in mapping.paths and field not in mapping.constants:
            raise ConfigError(f"{where}: {field} has neither a path in [{where}.paths] "
                              f"nor a value in [{where}.constants]")
    both = sorted(set(mapping.paths) & set(mapping.constants))
    if both:
        raise ConfigError(f"{where}: {both[0]} has both a path and a constant; keep one")
    _check_constants(mapping.constants, where)
    if ("type" in mapping.paths) != bool(mapping.types):
        raise ConfigError(f"{where}: a type path needs a [{where}.types] table saying what "
                          f"each type is, and a [{where}.types] table needs paths.type")
    for name, kind in mapping.types.items():
        if kind not in KINDS:
            raise ConfigError(f"{where}.types.{name}: {kind!r} is not one of {', '.join(KINDS)}")


def _check_constants(constants: dict[str, str], where: str) -> None:
    kind = constants.get("type", "transaction")
    if kind not in ("transaction", "refund", "payout"):
        raise ConfigError(f"{where}.constants.type: {kind!r} is not transaction, refund or payout")
    account = constants.get("account", "account")
    if not 1 <= len(account) <= MAX_ACCOUNT:
        raise ConfigError(f"{where}.constants.account: must be 1 to {MAX_ACCOUNT} characters, "
                          f"got {len(account)}")
    currency = constants.get("currency", "EUR")
    if exponent(currency) is None:
        raise ConfigError(f"{where}.constants.currency: {currency!r} is not an ISO 4217 code "
                          f"with minor units, in upper case")


def to_toml(source: str, mapping: Mapping, quote) -> list[str]:
    """The [mappings.SOURCE] tables that `parse` reads back as this mapping."""
    head = f"mappings.{quote(source)}"
    lines = [f"[{head}]", f"amount_form = {quote(mapping.amount_form)}",
             f"time_form = {quote(mapping.time_form)}",
             f"upper_case_currency = {'true' if mapping.upper_case_currency else 'false'}"]
    for name in ("paths", "constants", "types"):
        table = getattr(mapping, name)
        if table:
            lines += ["", f"[{head}.{name}]", *(f"{quote(k)} = {quote(v)}" for k, v in table.items())]
    return lines


# ----------------------------------------------------------------------------- reading records

class Reader:
    """One mapping made ready to read records: pointers split once, not per record."""

    def __init__(self, source: str, mapping: Mapping):
        self.source = source
        self.mapping = mapping
        self.steps = {field: _steps(pointer) for field, pointer in mapping.paths.items()}
        self.kind = mapping.constants.get("type", "transaction")
        self.minor_units = mapping.amount_form == "minor_units"

    def read(self, doc: object) -> dict:
        """The contract's fields of one parsed record (the keyword arguments of its wire
        form), or Unreadable naming the path and what is wrong there."""
        kind = self._kind(doc)
        if kind == "heartbeat":
            return {"type": "heartbeat", "source": self.source,
                    "event_time": self._time(self._value(doc, "event_time", required=True))}
        fields = {"type": "payout" if kind == "payout" else "transaction", "source": self.source}
        for field in ("event_id", "account", "idempotency_key", "reference", "batch_id"):
            fields[field] = self._text(doc, field, required=field in REQUIRED)
        currency = self._text(doc, "currency", required=True)
        fields["currency"] = currency.upper() if self.mapping.upper_case_currency else currency
        # an unknown currency is refused by the contract before it reads the amount
        places = exponent(fields["currency"]) or 0
        fields["amount"] = self._amount(doc, "amount", places, required=True)
        fields["fee"] = self._amount(doc, "fee", places, required=False)
        if kind == "refund":
            fields["amount"] = _negated(fields["amount"])
        fields["event_time"] = self._time(self._value(doc, "event_time", required=True))
        return fields

    def _kind(self, doc: object) -> str:
        if "type" not in self.steps:
            return self.kind
        name = self._text(doc, "type", required=True)
        kind = self.mapping.types.get(name)
        if kind is None:
            raise Unreadable(f"event type {name[:64]!r} is not mapped "
                             f"(types: {', '.join(sorted(self.mapping.types))[:200]})")
        if kind == "ignore":
            raise Unreadable(f"event type {name[:64]!r} is not a payment: the mapping ignores it")
        return kind

    def _value(self, doc: object, field: str, required: bool) -> object:
        steps = self.steps.get(field)
        if steps is None:
            return self.mapping.constants.get(field)
        value = _resolve(doc, steps)
        if value is _MISSING or value is None:
            if required:
                raise Unreadable(f"{self.mapping.paths[field]}: missing or null (the {field})")
            return None
        return value

    def _text(self, doc: object, field: str, required: bool) -> str | None:
        value = self._value(doc, field, required)
        if value is None or isinstance(value, str):
            return value
        if isinstance(value, int) and not isinstance(value, bool):
            return str(value)  # a ledger's numeric id is its decimal digits
        raise Unreadable(f"{self.mapping.paths[field]}: {_shown(value)} is not text (the {field})")

    def _amount(self, doc: object, field: str, places: int, required: bool) -> str | None:
        value = self._value(doc, field, required)
        if value is None:
            return None
        path = self.mapping.paths[field]
        if self.minor_units:
            if isinstance(value, int) and not isinstance(value, bool):
                return _major_text(value, places)
            raise Unreadable(f"{path}: {_shown(value)} is not an integer of minor units")
        if isinstance(value, (str, Decimal)) or type(value) is int:
            return str(value)  # JSON numbers arrive as Decimal, exactly as written
        raise Unreadable(f"{path}: {_shown(value)} is not a decimal amount such as '125.50'")

    def _time(self, value: object) -> datetime:
        path = self.mapping.paths.get("event_time")
        form = self.mapping.time_form
        if form == "rfc3339":
            try:
                return msgspec.convert(value, datetime)
            except msgspec.ValidationError:
                raise Unreadable(f"{path}: {_shown(value)} is not an RFC 3339 time such as "
                                 f"'2026-11-21T10:15:30Z'") from None
        if not isinstance(value, int) or isinstance(value, bool):
            raise Unreadable(f"{path}: {_shown(value)} is not {form.replace('_', ' ')}")
        try:
            return _EPOCH + (timedelta(seconds=value) if form == "epoch_seconds"
                             else timedelta(milliseconds=value))
        except OverflowError:
            raise Unreadable(f"{path}: {value} {form.replace('_', ' ')} is beyond any "
                             f"accepted year") from None


def _steps(pointer: str) -> tuple[tuple[str, int | None], ...]:
    """Each reference token of a JSON Pointer, unescaped, with its array index if it is one."""
    tokens = [t.replace("~1", "/").replace("~0", "~") for t in pointer.split("/")[1:]]
    return tuple((t, int(t) if _INDEX.match(t) else None) for t in tokens)


def _resolve(doc: object, steps: tuple[tuple[str, int | None], ...]) -> object:
    node = doc
    for key, index in steps:
        if type(node) is dict:
            node = node.get(key, _MISSING)
            if node is _MISSING:
                return _MISSING
        elif type(node) is list and index is not None and index < len(node):
            node = node[index]
        else:
            return _MISSING
    return node


def _major_text(minor: int, places: int) -> str:
    """Integer minor units as the decimal text of major units: 1050, 2 -> '10.50'."""
    digits = str(abs(minor)).rjust(places + 1, "0")
    sign = "-" if minor < 0 else ""
    return sign + (f"{digits[:-places]}.{digits[-places:]}" if places else digits)


def _negated(amount: str) -> str:
    return amount[1:] if amount.startswith("-") else "-" + amount


def _shown(value: object) -> str:
    """A JSON value as a reason quotes it: short, and named by its JSON type."""
    if isinstance(value, str):
        return repr(value[:40])
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, Decimal)):
        return str(value)[:40]
    return {dict: "an object", list: "an array"}.get(type(value), "null")
