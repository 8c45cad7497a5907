"""BAI2 (Cash Management Balance Reporting Specifications, version 2) files, as Statements.

The bai2 library does the tokenising (`record_generator` joins 88 continuations into
their record) and the structure (file, groups, accounts, details, with their fields). It
is run without its integrity check, which names no line: the trailers' control totals and
record counts are checked here, each refusal naming the trailer's line. The library also
stops at the 99 trailer and never looks past it; a record after it refuses the file here.

One Statement per account (03 record) of each group. Amounts are the file's integers in
the currency's minor units (the account's currency, else the group's, which the spec and
the library default to USD); a detail's sign is its type code's: credits positive, debits
negative. Entries are booked on the group's as-of date; value-dated (V) details carry
their value date.

Event ids: `ACCOUNT|bank|REF` from the 16 record's bank reference. A detail without one
gets `ACCOUNT|file|SENDER/CREATED/FILEID/G|N` (the file header's sender, creation date
and file id, the group's position in the file and the detail's position in the account):
such an id changes when details before it are added or removed.
"""

from __future__ import annotations

import re
from datetime import date
from decimal import Decimal

from bai2.constants import FundsType, GroupStatus, RecordCode, TypeCodeLevel, TypeCodeTransaction
from bai2.exceptions import NotSupportedYetException, ParsingException
from bai2.helpers import record_generator
from bai2.models import Account, Bai2File, Group, Record
from bai2.parsers import Bai2FileParser

from flows.ingest.statement import Entry, FormatError, Statement, refuse_duplicate_ids
from state.currency import exponent

_RECORD = re.compile(r"(0[123]|16|49|88|98|99),")
_DIGITS = re.compile(r"[0-9]+\Z")
_SIGNED = re.compile(r"[+-]?[0-9]+\Z")
_OPENING, _CLOSING, _CREDITS, _DEBITS = "010", "015", "100", "400"
_SIGNS = {TypeCodeTransaction.credit: 1, TypeCodeTransaction.debit: -1}
_END = Record(code=None, fields=[])


def parse(data: bytes, name: str) -> list[Statement]:
    """Every account of every group of a BAI2 file, one Statement each, in file order."""
    records = _records(_lines(data, name))
    _check_number_fields(records, name)
    reader = _Reader(name, records)
    bai2_file = reader.read()
    reader.check_totals(bai2_file)
    statements = [statement for number, group in enumerate(bai2_file.children, start=1)
                  for statement in _GroupReader(reader, bai2_file, group, number).statements()]
    refuse_duplicate_ids(statements, name)
    return statements


def _lines(data: bytes, name: str) -> list[tuple[int, str]]:
    """The file's non-blank lines with their numbers, each a record or a continuation."""
    try:
        text = data.decode("ascii")
    except UnicodeDecodeError as error:
        raise FormatError(name, f"byte {error.start}", "BAI2 is ASCII text; this is not") from None
    lines = [(number, line.strip()) for number, line in enumerate(text.splitlines(), start=1)
             if line.strip()]
    if not lines:
        raise FormatError(name, "line 1", "the file is empty")
    for number, line in lines:
        if not _RECORD.match(line):
            raise FormatError(name, f"line {number}", f"{line[:3]!r} does not start a BAI2 record "
                                                      f"(01, 02, 03, 16, 49, 88, 98 or 99 and a comma)")
    if not lines[0][1].startswith("01,"):
        raise FormatError(name, f"line {lines[0][0]}", "a BAI2 file starts with its 01 header")
    return lines


def _records(lines: list[tuple[int, str]]) -> list[tuple[int, Record]]:
    """The library's records, each with the line it starts on."""
    numbered, at = [], 0
    for record in record_generator(text for _, text in lines):
        numbered.append((lines[at][0], record))
        at += len(record.rows)
    return numbered


class _Reader:
    """The library's parser over our records: it asks for `current_record` and calls
    `advance()`, and we know the line of the record it failed on. Past the last record
    the current record is an end marker: the library's own iterator keeps the last
    record current instead, and a file that ends on a 16 record then loops forever."""

    def __init__(self, name: str, records: list[tuple[int, Record]]):
        self.name = name
        self.records = records
        self.at = 0
        self.line_of = {id(record.rows): line for line, record in records}

    @property
    def current_record(self) -> Record:
        return self.records[self.at][1] if self.at < len(self.records) else _END

    @property
    def here(self) -> str:
        if self.at == len(self.records):
            return "end of file"
        line, record = self.records[self.at]
        return f"line {line} ({record.code.value})"

    def advance(self) -> None:
        self.at += 1

    def where(self, model) -> str:
        return f"line {self.line_of[id(model.rows)]} ({model.code.value})"

    def refuse(self, model, reason: str) -> FormatError:
        return FormatError(self.name, self.where(model), reason)

    def read(self) -> Bai2File:
        try:
            bai2_file = Bai2FileParser(self, check_integrity=False).parse()
        except (ParsingException, NotSupportedYetException, ValueError, IndexError) as error:
            raise FormatError(self.name, self.here, _reason(error)) from None
        if self.at < len(self.records):
            raise FormatError(self.name, self.here, "a record after the 99 file trailer")
        return bai2_file

    def check_totals(self, bai2_file: Bai2File) -> None:
        """The 49, 98 and 99 trailers' control totals and record counts, as the spec
        defines them: the algebraic sum of the amounts below, every physical record."""
        file_records = len(bai2_file.header.rows) + len(bai2_file.trailer.rows)
        for group in bai2_file.children:
            group_records = len(group.header.rows) + len(group.trailer.rows)
            for account in group.children:
                records = _account_records(account)
                amounts = [s.amount or 0 for s in account.header.summary_items]
                amounts += [d.amount for d in account.children]
                self._check(account.trailer, "account control total",
                            account.trailer.account_control_total, sum(amounts))
                self._check(account.trailer, "record count", account.trailer.number_of_records, records)
                group_records += records
            self._check(group.trailer, "group control total", group.trailer.group_control_total,
                        sum(a.trailer.account_control_total for a in group.children))
            self._check(group.trailer, "account count", group.trailer.number_of_accounts,
                        len(group.children))
            self._check(group.trailer, "record count", group.trailer.number_of_records, group_records)
            file_records += group_records
        trailer = bai2_file.trailer
        self._check(trailer, "file control total", trailer.file_control_total,
                    sum(g.trailer.group_control_total for g in bai2_file.children))
        self._check(trailer, "group count", trailer.number_of_groups, len(bai2_file.children))
        self._check(trailer, "record count", trailer.number_of_records, file_records)

    def _check(self, trailer, what: str, declared: int | None, found: int) -> None:
        if declared != found:
            raise self.refuse(trailer, f"{what} is {declared}, but the records give {found}")


def _account_records(account: Account) -> int:
    rows = len(account.header.rows) + len(account.trailer.rows)
    return rows + sum(len(detail.rows) for detail in account.children)


def _check_number_fields(records: list[tuple[int, Record]], name: str) -> None:
    """The library reads amounts with int(), which takes ' 12' and '1_000': the raw
    fields of details (unsigned) and trailers (signed totals, counts) are checked here."""
    for line, record in records:
        if record.code == RecordCode.transaction_detail:
            checks = [(1, _DIGITS, "amount")]
        elif record.code in (RecordCode.account_trailer, RecordCode.group_trailer,
                             RecordCode.file_trailer):
            checks = [(0, _SIGNED, "control total")] + [(i, _DIGITS, "count") for i in
                                                        range(1, len(record.fields))]
        else:
            continue
        for index, pattern, what in checks:
            field = record.fields[index].strip() if index < len(record.fields) else ""
            if not pattern.match(field):
                raise FormatError(name, f"line {line} ({record.code.value})",
                                  f"{what} {field!r} is not a whole number")


def _reason(error: Exception) -> str:
    text = str(error.args[0] if error.args else error).split("\n")[0]
    text = re.sub(r"RecordCode\.(\w+)", lambda m: m.group(1).replace("_", " "), text)
    return text.replace("got None instead", "found the end of the file")


class _GroupReader:
    """One group's accounts, read into Statements."""

    def __init__(self, reader: _Reader, bai2_file: Bai2File, group: Group, number: int):
        self.reader, self.group = reader, group
        header = group.header
        if header.group_status in (GroupStatus.deletion, GroupStatus.test_only):
            raise reader.refuse(header, f"group status {header.group_status.name.replace('_', ' ')}: "
                                        "the bank withdraws or tests this data; not read")
        if header.as_of_date is None:
            raise reader.refuse(header, "the group has no as-of date")
        fh = bai2_file.header
        self.file_id = f"{fh.sender_id}/{fh.creation_date:%y%m%d}/{fh.file_id}/{number}"

    def statements(self) -> list[Statement]:
        return [self._statement(account) for account in self.group.children]

    def _statement(self, account: Account) -> Statement:
        header, on = account.header, self.group.header.as_of_date
        number = header.customer_account_number
        if not number:
            raise self.reader.refuse(header, "the account number is empty")
        currency = self._currency(header)
        summary = {item.type_code.code: item for item in header.summary_items}
        credits, debits = summary.get(_CREDITS), summary.get(_DEBITS)
        declared = credits is not None and debits is not None
        return Statement(
            id=f"{number}|{self.file_id}", account=number, currency=currency,
            entries=tuple(self._entries(account, number, currency, on)),
            where=self.reader.where(header),
            opening=_major(summary.get(_OPENING), currency),
            closing=_major(summary.get(_CLOSING), currency),
            closing_date=on if _CLOSING in summary else None,
            declared_count=(credits.item_count or 0) + (debits.item_count or 0) if declared else None,
            declared_total=_major(credits, currency) - _major(debits, currency) if declared else None,
            notes=tuple(self._notes(account)))

    def _currency(self, header) -> str:
        currency = header.currency or self.group.header.currency
        if exponent(currency) is None:
            raise self.reader.refuse(header, f"unknown currency {currency!r}")
        return currency

    def _entries(self, account: Account, number: str, currency: str, on: date):
        for position, detail in enumerate(account.children, start=1):
            code = detail.type_code
            if code.level != TypeCodeLevel.detail:
                raise self.reader.refuse(detail, f"type code {code.code} is a {code.level.value} code, "
                                                 "not a transaction detail")
            if code.transaction not in _SIGNS:
                continue  # non-monetary (890) or float detail: no movement; see notes
            yield Entry(
                event_id=_event_id(number, detail, f"{self.file_id}|{position}"),
                account=number, currency=currency,
                amount=_SIGNS[code.transaction] * _major_minor(detail.amount, currency),
                booked=on, value=_value_date(detail), where=self.reader.where(detail),
                reference=(detail.text or "").strip() or (detail.customer_reference or "").strip()
                or None)

    def _notes(self, account: Account) -> list[str]:
        return [f"{self.reader.where(d)}: type code {d.type_code.code} "
                f"({d.type_code.description}) moves no money; not read"
                for d in account.children if d.type_code.transaction not in _SIGNS]


def _event_id(account: str, detail, position: str) -> str:
    bank = (detail.bank_reference or "").strip()
    return f"{account}|bank|{bank}" if bank else f"{account}|file|{position}"


def _value_date(detail) -> date | None:
    if detail.funds_type == FundsType.value_dated:
        return detail.availability["date"]
    return None


def _major(summary, currency: str) -> Decimal | None:
    if summary is None or summary.amount is None:
        return None
    return _major_minor(summary.amount, currency)


def _major_minor(minor: int, currency: str) -> Decimal:
    """An implied-decimal amount (minor units) in major units."""
    return Decimal(minor).scaleb(-exponent(currency))


FORMATS = {"bai2": parse}
