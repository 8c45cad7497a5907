"""Stripe's itemized payout reconciliation report (payout_reconciliation.itemized.*) as
statements: one per automatic payout, holding the balance transactions it settled and a
payout derived from them. docs/sources.md says which column becomes which field.

The report lists what each automatic payout paid, not the payout itself: the payout
entry here is the sum of the lines' nets, so the batch check on it only proves the report
consistent. The real check is the payout against the bank's credit.
"""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal

from flows.ingest import csvreport as csvr
from flows.ingest.csvreport import Row
from flows.ingest.statement import PAYOUT, Entry, FormatError, Statement

FORMAT = "stripe-payouts"

REQUIRED = ("automatic_payout_id", "balance_transaction_id", "created_utc", "currency",
            "gross", "fee", "net", "reporting_category", "source_id")
# the report names the payout's time one way or the other, depending on its version
EFFECTIVE_AT = ("automatic_payout_effective_at_utc", "automatic_payout_effective_at")
# what the merchant's ledger knows a charge by, the first the report fills in; any other
# line (a refund, a dispute) it knows by that object's own id, source_id
CHARGE_IDS = ("payment_intent_id", "charge_id", "source_id")

# a payment's movements: gross as the customer paid or got back, Stripe's fee withheld
ITEM_CATEGORIES = frozenset({"charge", "refund", "dispute", "dispute_reversal",
                             "partial_capture_reversal", "refund_failure"})
# money withheld from or added to the payout with no payment of its own: fee lines
BATCH_CATEGORIES = frozenset({"fee", "network_cost", "tax", "other_adjustment",
                              "risk_reserved_funds"})


def parse(data: bytes, name: str) -> list[Statement]:
    rows = csvr.read_rows(data, name, REQUIRED)
    if rows and not any(column in rows[0].fields for column in EFFECTIVE_AT):
        raise FormatError(name, "line 1", f"missing column {EFFECTIVE_AT[1]!r}")
    payouts: dict[str, list[tuple[Row, Entry]]] = {}
    for row in rows:
        payouts.setdefault(_payout_id(row), []).append((row, _entry(row)))
    statements = [_statement(payout_id, lines) for payout_id, lines in payouts.items()]
    csvr.check_unique([entry for s in statements for entry in s.entries], name)
    return statements


FORMATS = {FORMAT: parse}


def _payout_id(row: Row) -> str:
    if row["reporting_category"] == "payout" or not row["automatic_payout_id"]:
        raise row.fail("not part of an automatic payout (a manual or instant payout); Stripe "
                       "cannot say what such a payout paid: reconcile it with the balance report")
    return row["automatic_payout_id"]


def _entry(row: Row) -> Entry:
    category = row["reporting_category"]
    if category not in ITEM_CATEGORIES | BATCH_CATEGORIES:
        raise row.fail(f"unknown reporting_category {category!r}: not one Tally reads "
                       f"(docs/sources.md lists them)")
    currency = csvr.currency_of(row, "currency", row["currency"].upper())
    gross, fee, net = (_money(row, column, currency) for column in ("gross", "fee", "net"))
    if gross - fee != net:
        raise row.fail(f"gross {gross} less fee {fee} is {gross - fee}, but net is {net}")
    common = dict(event_id=csvr.required(row, "balance_transaction_id"), account="",
                  currency=currency, booked=csvr.utc_time(row, "created_utc"), where=row.where,
                  batch_id=row["automatic_payout_id"])
    if category in BATCH_CATEGORIES:
        what = row["description"] or row["source_id"]
        return Entry(**common, amount=Decimal(0), fee=-net,
                     reference=f"{category}: {what}" if what else category)
    ids = CHARGE_IDS if category == "charge" else ("source_id",)
    key = next((row[column] for column in ids if row[column]), None)
    if key and category == "dispute_reversal":  # the won dispute keeps the dispute's dp_ id
        key += ":reversal"
    return Entry(**common, amount=gross, fee=fee, idempotency_key=key,
                 reference=row["source_id"] or None)


def _money(row: Row, column: str, currency: str) -> Decimal:
    value = csvr.amount(row, column, currency, signed=True)
    if value is None:
        raise row.fail(f"{column} is empty")
    return value


def _statement(payout_id: str, lines: list[tuple[Row, Entry]]) -> Statement:
    """The payout's lines and the payout they add up to, booked when it is effective."""
    first_row, first = lines[0]
    effective = _effective_at(first_row)
    for row, entry in lines[1:]:
        if entry.currency != first.currency:
            raise row.fail(f"currency {entry.currency} differs from {first.currency} of "
                           f"{first.where} in the same payout {payout_id}")
        if _effective_at(row) != effective:
            raise row.fail(f"the payout's effective time differs from {first.where}'s "
                           f"for the same payout {payout_id}")
    entries = [entry for _, entry in lines]
    paid = sum((entry.amount - entry.fee for entry in entries), Decimal(0))
    if paid:  # a payout of nothing is never sent; its batch needs none
        entries.append(Entry(event_id=payout_id, account="", currency=first.currency,
                             amount=paid, booked=effective, value=effective, where=first.where,
                             reference=payout_id, kind=PAYOUT, batch_id=payout_id))
    return Statement(id=f"{payout_id}:{first.currency}", account="", currency=first.currency,
                     entries=tuple(entries), where=f"payout {payout_id} from {first.where}")


def _effective_at(row: Row) -> datetime:
    column = next(c for c in EFFECTIVE_AT if c in row.fields)
    return csvr.utc_time(row, column)
