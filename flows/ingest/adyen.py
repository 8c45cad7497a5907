"""Adyen's Settlement details report (settlement_detail_report_batch_N.csv) as statements:
one per merchant account, batch and settlement currency, holding the batch's items, its
fee lines and its MerchantPayout. docs/sources.md says which column becomes which
field, and why.
"""

from __future__ import annotations

import re
from datetime import datetime, timedelta
from decimal import Decimal

from flows.ingest import csvreport as csvr
from flows.ingest.csvreport import Row
from flows.ingest.statement import PAYOUT, Entry, Statement

FORMAT = "adyen-settlement"

REQUIRED = ("Merchant Account", "Psp Reference", "Merchant Reference", "Creation Date",
            "TimeZone", "Type", "Modification Reference", "Gross Currency", "Gross Debit (GC)",
            "Gross Credit (GC)", "Net Currency", "Net Debit (NC)", "Net Credit (NC)",
            "Commission (NC)", "Markup (NC)", "Scheme Fees (NC)", "Interchange (NC)",
            "Batch Number")
COSTS = ("Commission (NC)", "Markup (NC)", "Scheme Fees (NC)", "Interchange (NC)")

# a payment's movements: gross in the payment's currency, net of the costs withheld
ITEM_TYPES = frozenset({"Settled", "Refunded", "Chargeback", "SecondChargeback",
                        "ChargebackReversed", "RefundedReversed"})
# money withheld from or added to the batch with no payment of its own: fee lines. A
# Balancetransfer carries a batch's balance to the next batch; as a fee line it makes the
# batch it leaves add up to no payout and the batch it joins add up to its payout.
BATCH_TYPES = frozenset({"Fee", "MiscCosts", "PaymentCost", "AuthorisationSchemeFee",
                         "DepositCorrection", "InvoiceDeduction", "ManualCorrected",
                         "MatchedStatement", "BankInstructionReturned", "Balancetransfer"})
PAYOUT_TYPE = "MerchantPayout"

# The TimeZone column holds the account's zone as an abbreviation. Only unambiguous ones
# are read (CST and IST each name several zones).
ZONES = {"UTC": 0, "GMT": 0, "WET": 0, "BST": 1, "WEST": 1, "CET": 1, "CEST": 2, "EET": 2,
         "EEST": 3, "MSK": 3, "GST": 4, "SGT": 8, "HKT": 8, "AWST": 8, "JST": 9, "KST": 9,
         "AEST": 10, "AEDT": 11, "NZST": 12, "NZDT": 13, "EST": -5, "EDT": -4, "CDT": -5,
         "MST": -7, "MDT": -6, "PST": -8, "PDT": -7, "BRT": -3}
_OFFSET = re.compile(r"(?:UTC|GMT)?([+-])([0-9]{1,2})(?::?([0-9]{2}))?\Z")
# Adyen's unique payout reference inside the payout description sent to the bank
_PAYOUT_REF = re.compile(r"\bTX\w+XT\b")


def parse(data: bytes, name: str) -> list[Statement]:
    entries = [_entry(row) for row in csvr.read_rows(data, name, REQUIRED)]
    csvr.check_unique(entries, name)
    batches: dict[tuple[str, str, str], list[Entry]] = {}
    for entry in entries:
        batches.setdefault((entry.account, entry.batch_id), []).append(entry)
    return [Statement(id=f"{account}:{batch}", account=account, currency=items[0].currency,
                      entries=tuple(items), where=f"batch {batch} from {items[0].where}")
            for (account, batch), items in batches.items()]


FORMATS = {FORMAT: parse}


def _entry(row: Row) -> Entry:
    kind = row["Type"]
    if kind not in ITEM_TYPES | BATCH_TYPES | {PAYOUT_TYPE}:
        raise row.fail(f"unknown line type {kind!r}: not a journal type Tally reads "
                       f"(docs/sources.md lists them)")
    account, batch = csvr.required(row, "Merchant Account"), csvr.required(row, "Batch Number")
    currency = csvr.currency_of(row, "Net Currency")
    net = csvr.credit_less_debit(row, "Net Credit (NC)", "Net Debit (NC)", currency)
    common = dict(event_id=csvr.event_id(account, batch, row["Psp Reference"], kind,
                                         row["Modification Reference"]),
                  account=account, currency=currency, booked=_booked(row), where=row.where,
                  batch_id=f"{batch}-{currency}")  # Adyen pays each currency of a batch apart
    if kind == PAYOUT_TYPE:
        return Entry(**common, amount=-net, kind=PAYOUT, reference=_payout_reference(row))
    if kind in BATCH_TYPES:
        description = row["Modification Reference"]
        reference = f"{kind}: {description}" if description else kind
        return Entry(**common, amount=Decimal(0), fee=-net, reference=reference)
    gross = _gross(row, currency)
    fee = gross - net
    _check_costs(row, currency, fee)
    return Entry(**common, amount=gross, fee=fee, reference=row["Psp Reference"] or None,
                 idempotency_key=_ledger_key(row))


def _ledger_key(row: Row) -> str | None:
    """What the merchant's ledger knows the movement by: its own reference for a refund
    it asked for (Modification Merchant Reference), else the payment's Merchant Reference."""
    return row["Modification Merchant Reference"] or row["Merchant Reference"] or None


def _gross(row: Row, currency: str) -> Decimal:
    gross_currency = csvr.currency_of(row, "Gross Currency")
    if gross_currency != currency:
        raise row.fail(f"Gross Currency {gross_currency} differs from Net Currency {currency}: "
                       f"a converted payment, and Tally does not apply exchange rates")
    return csvr.credit_less_debit(row, "Gross Credit (GC)", "Gross Debit (GC)", currency)


def _check_costs(row: Row, currency: str, fee: Decimal) -> None:
    """Where the line itemises its costs, they must be what gross less net withheld."""
    costs = [csvr.amount(row, column, currency, signed=True) for column in COSTS]
    stated = [cost for cost in costs if cost is not None]
    if stated and sum(stated) != fee:
        raise row.fail(f"Commission + Markup + Scheme Fees + Interchange = {sum(stated)}, "
                       f"but gross less net is {fee}")


def _payout_reference(row: Row) -> str | None:
    """What the bank statement shows: Adyen's TX...XT payout reference when the payout
    description holds one (banks may cut the rest), else the whole description."""
    description = row["Modification Reference"]
    found = _PAYOUT_REF.search(description)
    return found.group(0) if found else (description or None)


def _booked(row: Row) -> datetime:
    """Booking Date (an optional column) where the report has it, else Creation Date,
    each in the zone its TimeZone column names."""
    if row["Booking Date"]:
        zone = "Booking Date TimeZone" if row["Booking Date TimeZone"] else "TimeZone"
        return csvr.utc_time(row, "Booking Date", _offset(row, zone))
    return csvr.utc_time(row, "Creation Date", _offset(row, "TimeZone"))


def _offset(row: Row, column: str) -> timedelta:
    text = row[column]
    if text in ZONES:
        return timedelta(hours=ZONES[text])
    match = _OFFSET.match(text)
    if match is None:
        raise row.fail(f"{column} {text!r} is not a time zone Tally knows; "
                       f"write an offset such as '+01:00'")
    sign = -1 if match.group(1) == "-" else 1
    return sign * timedelta(hours=int(match.group(2)), minutes=int(match.group(3) or 0))
