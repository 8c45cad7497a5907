"""SWIFT MT940 (customer statement) and MT942 (interim report) files, as Statements.

The mt-940 library (module `mt940`) does the tokenising: its line cleaning
(`Transactions.strip`), its field-start pattern and its rule for which `:NN:` starts a
field (`sanitize_tag_id_matches`), and its tag patterns split each field into subfields.
Its statement model is not used: it merges an `:86:` that follows the closing balance into
the last entry, signs RC as a credit by default, turns 30 February into 28 February, cuts
`:20:`/`:25:` values that are too long without a word and keeps no line numbers. So the
structure (which `:86:` belongs to which `:61:`), the amounts, dates and signs are read
here from the subfields' raw text, and every field must match its pattern to the end.

Event ids are the account followed by the entry's own reference, so the same entry in an
MT942 and in the day's MT940 (or in a corrected re-send) keeps its id:

- `ACCOUNT|bank|REF`: the `:61:` bank reference (after `//`), unless it is NONREF;
- `ACCOUNT|customer|REF`: else the customer reference, unless it is NONREF;
- `ACCOUNT|statement|REF20/NUMBER|N`: else the statement's `:20:` and `:28C:` and the
  entry's position in it. Such an id changes when entries before it are added or
  removed, and differs between an MT942 and the MT940 that repeats the entry.

`|` is not in the SWIFT character set, so ids of different accounts never collide. Two
entries of one file with the same id refuse the file.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import date
from decimal import Decimal

from mt940.models import Transactions
from mt940.options import Options
from mt940.tags import TAG_BY_ID, Tag

from flows.ingest.statement import Entry, FormatError, Statement, refuse_duplicate_ids
from state.currency import exponent

# the field-start pattern of mt940.models.Transactions.parse (a local there, so copied)
_FIELD_START = re.compile(r"^:\n?(?P<full_tag>(?P<tag>[0-9]{2}|NS)(?P<sub_tag>[A-Z])?):",
                          re.MULTILINE)
_AMOUNT = re.compile(r"([0-9]+),([0-9]*)\Z")  # 15d: the decimal comma is mandatory
_NONREF = "NONREF"
_MARKS = {"C": 1, "D": -1, "RD": 1, "RC": -1}  # RD reverses a debit: money comes back
_WRAP = 65  # an :86: line of 65 characters was wrapped mid-word by the bank
# one Transactions object gives the tags their options: :86: uncut (5.0.0 cut it)
_CONTEXT = Transactions(options=Options(unbounded_details=True))


@dataclass(frozen=True)
class _Field:
    line: int  # 1-based, in the file
    tag: str  # "61", "60F", ...
    value: str

    @property
    def where(self) -> str:
        return f"line {self.line} (:{self.tag}:)"


def parse(data: bytes, name: str) -> list[Statement]:
    """Every message of an MT940/MT942 file, one Statement each, in file order."""
    fields = _fields(_text(data, name), name)
    messages = _messages(fields, name)
    statements = [_Message(name, message).statement() for message in messages]
    refuse_duplicate_ids(statements, name)
    return statements


def _text(data: bytes, name: str) -> str:
    if not data.strip():
        raise FormatError(name, "line 1", "the file is empty")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        # the SWIFT set is ASCII; banks that add accents mostly write ISO 8859-1
        return data.decode("latin-1")


def _fields(text: str, name: str) -> list[_Field]:
    """The file's fields with their line numbers, cut where the library cuts them."""
    kept: list[tuple[int, str]] = []  # (line number, cleaned line)
    for number, raw in enumerate(text.split("\n"), start=1):
        if raw.lstrip().startswith(("{", "-}")):
            continue  # a FIN envelope's block header or trailer, not a field
        kept.extend((number, line) for line in Transactions.strip([raw]))
    cleaned = "\n".join(line for _, line in kept)
    starts = list(_FIELD_START.finditer(cleaned))
    known = _CONTEXT.sanitize_tag_id_matches(starts)
    fields = []
    for i, start in enumerate(known):
        end = known[i + 1].start() if i + 1 < len(known) else len(cleaned)
        line = kept[cleaned.count("\n", 0, start.start())][0]
        fields.append(_Field(line, start.group("full_tag"), cleaned[start.end():end].strip()))
    _refuse_unknown(starts, known, fields, name)
    return fields


def _refuse_unknown(starts, known, fields: list[_Field], name: str) -> None:
    """A field the library does not know would be silently glued to the one before it;
    inside an :86: such a line is text, anywhere else the file is not MT940."""
    known_at = {start.start(): field for start, field in zip(known, fields)}
    before = None
    for start in starts:
        if start.start() in known_at:
            before = known_at[start.start()]
        elif before is not None and before.tag != "86":
            raise FormatError(name, f"after {before.where}", f"unknown field :{start.group('full_tag')}:")


def _messages(fields: list[_Field], name: str) -> list[list[_Field]]:
    """The fields cut into messages, each starting at its :20:."""
    if not fields:
        raise FormatError(name, "line 1", "no MT940/MT942 field (:20:, :25:, ...) found")
    if fields[0].tag != "20":
        raise FormatError(name, fields[0].where, "a message must start with :20:")
    messages: list[list[_Field]] = []
    for field in fields:
        if field.tag == "20":
            messages.append([])
        messages[-1].append(field)
    return messages


def _subfields(field: _Field, name: str) -> dict[str, str | None]:
    """The library's tag pattern applied to the whole value, or a FormatError."""
    tag: Tag = TAG_BY_ID.get(field.tag) or TAG_BY_ID[int(field.tag[:2])]
    match = tag.re.match(field.value)
    if not match or match.end() != len(field.value):
        raise FormatError(name, field.where, f"{field.value!r} is not a valid :{field.tag}: field")
    return match.groupdict()


class _Message:
    """One :20: message's fields, read into a Statement."""

    def __init__(self, name: str, fields: list[_Field]):
        self.name = name
        self.fields = fields
        self.reference = fields[0].value
        if not self.reference:
            raise FormatError(name, fields[0].where, "the :20: reference is empty")

    def statement(self) -> Statement:
        account = self._one("25", required=True).value
        if not account:
            raise FormatError(self.name, self._one("25", required=True).where, "the :25: account is empty")
        number = self._one("28C", required=False)
        opening = self._balance(self._one_of("60F", "60M"))
        closing = self._balance(self._one_of("62F", "62M"))
        currency = self._currency(opening, closing)
        statement_ref = self.reference + (f"/{number.value}" if number else "")
        entries = tuple(self._entries(account, currency, statement_ref))
        count, total = self._declared(currency)
        return Statement(
            id=f"{account}|{statement_ref}", account=account, currency=currency,
            entries=entries, where=self.fields[0].where,
            opening=opening.amount if opening else None,
            closing=closing.amount if closing else None,
            closing_date=closing.on if closing else None,
            declared_count=count, declared_total=total)

    def _one(self, tag: str, required: bool) -> _Field | None:
        found = [field for field in self.fields if field.tag == tag]
        if len(found) > 1:
            raise FormatError(self.name, found[1].where, f"a second :{tag}: in one message")
        if required and not found:
            raise FormatError(self.name, self.fields[0].where,
                              f"the message of :20:{self.reference} has no :{tag}:")
        return found[0] if found else None

    def _one_of(self, *tags: str) -> _Field | None:
        found = [field for field in self.fields if field.tag in tags]
        if len(found) > 1:
            raise FormatError(self.name, found[1].where, f"a second :{found[1].tag[:2]}a: balance")
        return found[0] if found else None

    def _balance(self, field: _Field | None) -> _Balance | None:
        if field is None:
            return None
        parts = _subfields(field, self.name)
        sign = _sign(parts["status"], ("C", "D"), field, self.name)
        currency = _currency(parts["currency"], field, self.name)
        amount = sign * _amount(parts["amount"], currency, field, self.name)
        on = _date(parts["year"], parts["month"], parts["day"], field, self.name)
        return _Balance(amount, currency, on, field)

    def _currency(self, opening: _Balance | None, closing: _Balance | None) -> str:
        if opening and closing:
            if opening.currency != closing.currency:
                raise FormatError(self.name, closing.field.where,
                                  f"closing balance in {closing.currency}, opening in {opening.currency}")
            return opening.currency
        if opening or closing:
            missing = ":62F:/:62M: closing" if opening else ":60F:/:60M: opening"
            raise FormatError(self.name, self.fields[0].where,
                              f"the message of :20:{self.reference} has no {missing} balance")
        floor = [field for field in self.fields if field.tag == "34F"]
        if not floor:  # an MT942 states its currency in the floor limit
            raise FormatError(self.name, self.fields[0].where,
                              f"the message of :20:{self.reference} has neither balances (MT940) "
                              f"nor a :34F: floor limit (MT942)")
        return _currency(_subfields(floor[0], self.name)["currency"], floor[0], self.name)

    def _entries(self, account: str, currency: str, statement_ref: str):
        for position, (line, info) in enumerate(self._lines(), start=1):
            yield _entry(self.name, line, info, account, currency, f"{statement_ref}|{position}")

    def _lines(self) -> list[tuple[_Field, _Field | None]]:
        """Each :61: with the :86: right after it; an :86: anywhere else is the
        statement's own information and no entry's."""
        pairs = []
        for i, field in enumerate(self.fields):
            if field.tag == "61":
                after = self.fields[i + 1] if i + 1 < len(self.fields) else None
                pairs.append((field, after if after and after.tag == "86" else None))
        return pairs

    def _declared(self, currency: str) -> tuple[int | None, Decimal | None]:
        """:90D: and :90C: (MT942): the number and sum of debits and of credits."""
        debits, credits = self._one("90D", required=False), self._one("90C", required=False)
        if not (debits and credits):
            return None, None
        count, total = 0, Decimal(0)
        for field, sign in ((debits, -1), (credits, 1)):
            parts = _subfields(field, self.name)
            if _currency(parts["currency"], field, self.name) != currency:
                raise FormatError(self.name, field.where, f"currency is not the statement's {currency}")
            count += int(parts["number"] or "0")
            total += sign * _amount(parts["amount"], currency, field, self.name)
        return count, total


@dataclass(frozen=True)
class _Balance:
    amount: Decimal
    currency: str
    on: date
    field: _Field


def _entry(name: str, line: _Field, info: _Field | None, account: str, currency: str,
           position: str) -> Entry:
    parts = _subfields(line, name)
    if parts["extra_details"] and "\n" not in line.value:
        raise FormatError(name, line.where, "text after the references: a customer reference "
                                            "is at most 16 characters, then //bank reference")
    sign = _sign(parts["status"], tuple(_MARKS), line, name)
    value = _date(parts["year"], parts["month"], parts["day"], line, name)
    return Entry(
        event_id=_event_id(account, parts, position),
        account=account, currency=currency,
        amount=sign * _amount(parts["amount"], currency, line, name),
        booked=_entry_date(parts, value, line, name), value=value, where=line.where,
        reference=_details(info) if info else (parts["extra_details"] or "").strip() or None)


def _event_id(account: str, parts: dict, position: str) -> str:
    bank = (parts["bank_reference"] or "").strip()
    customer = (parts["customer_reference"] or "").strip()
    if bank and bank.upper() != _NONREF:
        return f"{account}|bank|{bank}"
    if customer and customer.upper() != _NONREF:
        return f"{account}|customer|{customer}"
    return f"{account}|statement|{position}"


def _details(info: _Field) -> str | None:
    """The :86: lines as one text: a full 65-character line was wrapped by the bank
    and joins the next directly, a shorter one ended a phrase and joins with a space."""
    lines = info.value.split("\n")
    text = lines[0]
    for before, line in zip(lines, lines[1:]):
        text += line if len(before) >= _WRAP else " " + line
    return text or None


def _sign(mark: str | None, allowed: tuple[str, ...], field: _Field, name: str) -> int:
    if mark not in allowed:  # the library's patterns ignore case; the spec does not
        raise FormatError(name, field.where, f"debit/credit mark {mark!r} is not one of {', '.join(allowed)}")
    return _MARKS[mark]


def _currency(code: str | None, field: _Field, name: str) -> str:
    if not code or exponent(code) is None:
        raise FormatError(name, field.where, f"unknown currency {code!r}")
    return code


def _amount(text: str | None, currency: str, field: _Field, name: str) -> Decimal:
    """A 15d amount (decimal comma) in major units, at most the currency's decimals."""
    match = _AMOUNT.match(text or "")
    if not match:
        raise FormatError(name, field.where, f"amount {text!r} is not digits with a decimal comma")
    whole, decimals = match.groups()
    places = exponent(currency)
    if len(decimals) > places:
        raise FormatError(name, field.where,
                          f"amount {text} has {len(decimals)} decimals, {currency} has {places}")
    return Decimal(f"{whole}.{decimals.ljust(places, '0')}" if places else whole)


def _date(year: str, month: str, day: str, field: _Field, name: str) -> date:
    try:
        return date(2000 + int(year), int(month), int(day))
    except ValueError:
        raise FormatError(name, field.where, f"no such date {year}{month}{day} (YYMMDD)") from None


def _entry_date(parts: dict, value: date, line: _Field, name: str) -> date:
    """The booking date (MMDD, no year): in the year that puts it nearest the value date."""
    month, day = parts["entry_month"], parts["entry_day"]
    if not (month and day and month.strip() and day.strip()):
        return value  # no entry date: booked on its value date
    candidates = []
    for year in (value.year - 1, value.year, value.year + 1):
        try:
            candidates.append(date(year, int(month), int(day)))
        except ValueError:
            continue
    if not candidates:
        raise FormatError(name, line.where, f"no such entry date {month}{day} (MMDD)")
    return min(candidates, key=lambda booked: abs((booked - value).days))


FORMATS = {"mt940": parse}
