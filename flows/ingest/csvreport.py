"""What the acquirers' CSV reports share: rows of named columns with the line each came
from, and the checks every parser makes on a field (amounts, currencies, times, ids).

Every failure is a FormatError naming the file, the line ("line N", the header being
line 1) and one clause saying what is wrong.
"""

from __future__ import annotations

import csv
import io
import re
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from typing import Iterable

from flows.ingest.statement import Entry, FormatError, short_id
from state.currency import exponent

_UNSIGNED = re.compile(r"[0-9]+(?:\.([0-9]+))?\Z")
_SIGNED = re.compile(r"-?[0-9]+(?:\.([0-9]+))?\Z")


@dataclass(frozen=True)
class Row:
    """One data line of a report: its columns by header name, and its line number."""

    name: str  # the file's name, for messages
    line: int
    fields: dict[str, str]

    @property
    def where(self) -> str:
        return f"line {self.line}"

    def __getitem__(self, column: str) -> str:
        return self.fields.get(column, "")

    def fail(self, reason: str) -> FormatError:
        return FormatError(self.name, self.where, reason)


def read_rows(data: bytes, name: str, required: Iterable[str]) -> list[Row]:
    """The data lines of a CSV report whose header holds every `required` column."""
    text = _text(data, name)
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    try:
        header = [column.strip() for column in next(reader, [])]
        if not any(header):
            raise FormatError(name, "line 1", "no header line; is this the right report?")
        _check_header(header, name, required)
        rows, start = [], reader.line_num + 1
        for values in reader:
            if values and any(value.strip() for value in values):
                if len(values) != len(header):
                    raise FormatError(name, f"line {start}", f"{len(values)} fields, but the "
                                      f"header has {len(header)}; not a well-formed CSV report")
                rows.append(Row(name, start, {c: v.strip() for c, v in zip(header, values)}))
            start = reader.line_num + 1
    except csv.Error as err:
        raise FormatError(name, f"line {reader.line_num}", f"not CSV: {err}") from None
    return rows


def _text(data: bytes, name: str) -> str:
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        line = data[:err.start].count(b"\n") + 1
        raise FormatError(name, f"line {line}", "not UTF-8 text; is this a CSV report?") from None


def _check_header(header: list[str], name: str, required: Iterable[str]) -> None:
    repeated = sorted({column for column in header if header.count(column) > 1 and column})
    if repeated:
        raise FormatError(name, "line 1", f"column {', '.join(map(repr, repeated))} appears twice")
    missing = [column for column in required if column not in header]
    if missing:
        raise FormatError(name, "line 1", f"missing column(s) {', '.join(map(repr, missing))}")


def currency_of(row: Row, column: str, code: str | None = None) -> str:
    """The ISO 4217 code in `column` (or `code`, already taken from it), upper case."""
    text = row[column] if code is None else code
    if exponent(text) is None:
        raise row.fail(f"{column} {text!r} is not an ISO 4217 currency with minor units")
    return text


def amount(row: Row, column: str, currency: str, signed: bool = False) -> Decimal | None:
    """`column` as an exact Decimal in major units, None when it is empty."""
    text = row[column]
    if not text:
        return None
    match = (_SIGNED if signed else _UNSIGNED).match(text)
    if match is None:
        example = "'-12.50' or '12.50'" if signed else "'12.50'"
        raise row.fail(f"{column} {text!r} is not an amount such as {example}")
    places = len(match.group(1) or "")
    if places > exponent(currency):
        raise row.fail(f"{column} {text!r} has {places} decimals; {currency} has {exponent(currency)}")
    return Decimal(text)


def credit_less_debit(row: Row, credit: str, debit: str, currency: str) -> Decimal:
    """The signed amount of a line that states it as a credit or a debit column."""
    paid_in, paid_out = amount(row, credit, currency), amount(row, debit, currency)
    if paid_in is None and paid_out is None:
        raise row.fail(f"neither {credit} nor {debit} holds an amount")
    if paid_in is not None and paid_out is not None:
        raise row.fail(f"both {credit} and {debit} hold an amount; a line is one or the other")
    return paid_in if paid_out is None else -paid_out


def utc_time(row: Row, column: str, offset: timedelta = timedelta(0)) -> datetime:
    """`column` ('YYYY-MM-DD HH:MM:SS') as an aware UTC datetime; a time without an offset of
    its own is at `offset` from UTC."""
    text = row[column]
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise row.fail(f"{column} {text!r} is not a time such as '2026-11-21 14:05:00'") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone(offset))
    return moment.astimezone(timezone.utc)


def required(row: Row, column: str) -> str:
    text = row[column]
    if not text:
        raise row.fail(f"{column} is empty")
    return text


def event_id(*parts: str) -> str:
    """The file's own identifiers joined, shortened as every ingested id is past the limit."""
    return short_id(":".join(parts))


def check_unique(entries: list[Entry], name: str) -> None:
    """Refuse a file where two lines would get the same event id: inventing a tie-breaker
    would give a line a different id when it is sent again in another report."""
    first: dict[str, Entry] = {}
    for entry in entries:
        seen = first.setdefault(entry.event_id, entry)
        if seen is not entry:
            raise FormatError(name, entry.where, f"the same identifiers as {seen.where} "
                              f"(event id {entry.event_id!r}); a line must be told apart by them")
