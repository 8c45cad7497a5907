"""What every format is read into: statements of entries, before any account mapping.

A format module (camt.py, mt940.py, bai2.py, adyen.py, stripe.py) exposes

    FORMATS: dict[str, Callable[[bytes, str], list[Statement]]]  # name -> parse(data, file_name)

and raises FormatError for anything it cannot read. Parsing is pure: the same bytes give
the same statements, so the same file gives the same event ids, whenever it is read.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from datetime import date, datetime
from decimal import Decimal

from state.contract import LIMITS

MAX_EVENT_ID = LIMITS["event_id"]
TRANSACTION = "transaction"
PAYOUT = "payout"


class FormatError(Exception):
    """A file that cannot be read: `where` is the line or element, `reason` what is wrong."""

    def __init__(self, name: str, where: str, reason: str):
        super().__init__(f"{name}: {where}: {reason}")
        self.name, self.where, self.reason = name, where, reason


@dataclass(frozen=True)
class Entry:
    """One booked movement, as the file states it.

    `event_id` comes from the file's own identifiers (account servicer reference, statement
    id and entry reference, batch and line), never from a counter across files or a clock.
    `amount` is signed in major units (a credit to the account is positive), `fee` what the
    processor withheld (net = amount - fee). `booked` and `value` are the booking and value
    dates, or datetimes where the file gives a time.
    """

    event_id: str
    account: str
    currency: str
    amount: Decimal
    booked: date | datetime
    where: str  # "line 12" or "Stmt[1]/Ntry[3]/NtryDtls/TxDtls[2]", for messages
    value: date | datetime | None = None
    reference: str | None = None
    kind: str = TRANSACTION
    fee: Decimal | None = None
    batch_id: str | None = None
    idempotency_key: str | None = None


@dataclass(frozen=True)
class Statement:
    """One account's statement (or one acquirer batch report) in one currency.

    `opening` + the sum of the entries' amounts must equal `closing`, when the file states
    both; `declared_count` and `declared_total` are the control figures some formats carry
    (BAI2 trailers, camt's TxsSummry), checked when present. `closing_date` is the last
    date the statement covers: the source's progress (a heartbeat) after it is published.
    """

    id: str
    account: str
    currency: str
    entries: tuple[Entry, ...]
    where: str
    opening: Decimal | None = None
    closing: Decimal | None = None
    closing_date: date | None = None
    declared_count: int | None = None
    declared_total: Decimal | None = None  # the signed sum of the entries, as declared
    notes: tuple[str, ...] = field(default=())


def refuse_duplicate_ids(statements: list[Statement], name: str) -> None:
    """A file whose entries do not have one id each is refused: inventing a tie-breaker
    would give the same entry another id in another file."""
    seen: dict[str, str] = {}
    for entry in (entry for statement in statements for entry in statement.entries):
        if entry.event_id in seen:
            raise FormatError(name, entry.where, f"entry id {entry.event_id} is also the id of "
                                                 f"the entry at {seen[entry.event_id]}")
        seen[entry.event_id] = entry.where


def gaps(statement: Statement) -> list[str]:
    """Why `statement` does not add up, one clause each; empty when it does."""
    total = sum((entry.amount for entry in statement.entries), Decimal(0))
    found = []
    if statement.opening is not None and statement.closing is not None:
        difference = statement.closing - (statement.opening + total)
        if difference:
            found.append(f"opening {statement.opening} + entries {total} = "
                         f"{statement.opening + total}, but closing is {statement.closing} "
                         f"(difference {difference:+})")
    if statement.declared_count is not None and statement.declared_count != len(statement.entries):
        found.append(f"{len(statement.entries)} entries, but the file declares "
                     f"{statement.declared_count}")
    if statement.declared_total is not None and statement.declared_total != total:
        found.append(f"entries sum to {total}, but the file declares {statement.declared_total} "
                     f"(difference {statement.declared_total - total:+})")
    return found


def short_id(raw: str) -> str:
    """The file's identifiers, kept whole up to the contract's limit; past it, a readable
    prefix and a digest of the whole, so the id stays a function of those identifiers."""
    if len(raw) <= MAX_EVENT_ID:
        return raw
    digest = hashlib.sha256(raw.encode()).hexdigest()[:24]
    return f"{raw[:MAX_EVENT_ID - len(digest) - 1]}~{digest}"
