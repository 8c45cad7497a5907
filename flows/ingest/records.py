"""Statements into contract records: the account mapping, event times and heartbeats.

Pure: the same statements and options give the same record bytes, so a file published
twice gives redeliveries of the same events, and a replay gives the same decisions.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime, time, timedelta, timezone
from decimal import Decimal

import msgspec

from flows.logs import UserError
from flows.ingest.statement import PAYOUT, Entry, Statement, gaps, short_id
from state.contract import EPOCH, ONE_US, format_us

BOOKING, VALUE = "booking", "value"
_LAST_US = time(23, 59, 59, 999_999)


class Refusal(UserError):
    """A file that must not be published, and why: one line naming the file, exit code 1."""

    exit_code = 1


@dataclass(frozen=True)
class Options:
    source: str
    accounts: dict[str, str]  # what the files call an account -> Tally's account ([accounts])
    account: str | None = None  # for files that name no account (--account)
    time_field: str = BOOKING
    accept_unbalanced: bool = False


@dataclass(frozen=True)
class FileRecords:
    """What one file becomes: its records in file order, and the heartbeat after them."""

    name: str
    records: list[dict]
    heartbeat_us: int | None  # the bank's progress: the day after the last closing date
    unbalanced: list[str]  # one clause per statement that does not add up
    accounts: frozenset[str]  # Tally's accounts the file's statements are of


def file_records(name: str, statements: list[Statement], options: Options) -> FileRecords:
    """Refuses (Refusal) an unmapped account or, without accept_unbalanced, an unbalanced
    statement: then nothing of the file is published."""
    records, unbalanced, accounts = [], [], set()
    for statement in statements:
        account = _account(name, statement, options)
        accounts.add(account)
        problems = gaps(statement)
        if problems:
            clause = f"statement {statement.id} ({statement.account or account}, {statement.currency}): " \
                     + "; ".join(problems)
            if not options.accept_unbalanced:
                raise Refusal(f"{name}: {clause}; nothing of the file was published "
                              f"(--accept-unbalanced publishes it with an exception for the gap)")
            unbalanced.append(clause)
            records.append(_gap_record(statement, account, clause, options))
        records += [_record(entry, account, options) for entry in statement.entries]
    return FileRecords(name, records, _heartbeat_us(statements), unbalanced, frozenset(accounts))


def _account(name: str, statement: Statement, options: Options) -> str:
    if not statement.account:
        if options.account is None:
            raise Refusal(f"{name}: statement {statement.id} names no account; "
                          f"say which with --account")
        return options.account
    mapped = options.accounts.get(statement.account)
    if mapped is None:
        raise Refusal(f"{name}: account {statement.account!r} (statement {statement.id}) is not in "
                      f"the config's [accounts]; add a line \"{statement.account}\" = \"<account>\"")
    return mapped


def _record(entry: Entry, account: str, options: Options) -> dict:
    moment = entry.value if options.time_field == VALUE and entry.value is not None else entry.booked
    record = {"type": entry.kind, "source": options.source, "event_id": short_id(entry.event_id),
              "account": account, "amount": _decimal(entry.amount), "currency": entry.currency,
              "event_time": rfc3339(moment)}
    optional = {"idempotency_key": entry.idempotency_key, "reference": entry.reference,
                "fee": None if entry.fee is None else _decimal(entry.fee),
                "batch_id": entry.batch_id}
    if entry.kind == PAYOUT:  # the contract refuses a payout carrying these
        optional.pop("idempotency_key"), optional.pop("fee")
    record.update((k, v) for k, v in optional.items() if v is not None)
    if record.get("reference") is not None:
        record["reference"] = record["reference"][:256]
    return record


def _gap_record(statement: Statement, account: str, clause: str, options: Options) -> dict:
    """A record the flow turns into an exception: the statement's gap stays visible."""
    return {"type": "statement_gap", "source": options.source,
            "event_id": short_id(f"{statement.id}:gap"), "account": account, "reason": clause}


def _heartbeat_us(statements: list[Statement]) -> int | None:
    """The day after the earliest closing date: every statement of the file is in by then."""
    closing = [s.closing_date for s in statements]
    if not closing or any(day is None for day in closing):
        return None
    return to_us(datetime.combine(min(closing) + timedelta(days=1), time(), timezone.utc))


def heartbeat_record(source: str, time_us: int) -> dict:
    return {"type": "heartbeat", "source": source, "event_time": format_us(time_us)}


def encode(record: dict) -> bytes:
    return msgspec.json.encode(record)


def _decimal(amount: Decimal) -> str:
    return f"{amount:f}"


def rfc3339(moment: date | datetime) -> str:
    """A date is the last microsecond of that UTC day: the bank had booked it by then, so a
    payout paid during the day precedes the credit that pays it."""
    if not isinstance(moment, datetime):
        moment = datetime.combine(moment, _LAST_US, timezone.utc)
    return format_us(to_us(moment))


def to_us(moment: datetime) -> int:
    return (moment - EPOCH) // ONE_US
