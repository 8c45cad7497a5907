"""Adyen's Settlement details report read into statements (flows/ingest/adyen.py).

The samples under tests/data/ingest/adyen follow Adyen's documented columns: batch 41 in
EUR and GBP, and a later report that sends batch 41 again (reordered) with batches 42 and
43, where batch 42's negative balance is carried to batch 43 by Balancetransfer lines.
"""

from __future__ import annotations

import csv
import io
from datetime import datetime, timezone
from decimal import Decimal
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from flows.ingest.adyen import FORMATS, parse
from flows.ingest.statement import PAYOUT, FormatError, gaps

DATA = Path(__file__).parent / "data" / "ingest" / "adyen"
BATCH_41 = DATA / "settlement_detail_report_batch_41.csv"
BATCHES_41_43 = DATA / "settlement_detail_report_batches_41_43.csv"


def read(path: Path):
    return parse(path.read_bytes(), path.name)


def by_id(statements) -> dict:
    return {entry.event_id: entry for s in statements for entry in s.entries}


def utc(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=timezone.utc)


def test_the_format_is_registered_under_its_command_line_name():
    assert FORMATS == {"adyen-settlement": parse}


def test_batch_41_has_one_statement_per_settlement_currency():
    statements = read(BATCH_41)
    assert [(s.id, s.account, s.currency, len(s.entries)) for s in statements] == [
        ("TallyShopEU:41-EUR", "TallyShopEU", "EUR", 6),
        ("TallyShopEU:41-GBP", "TallyShopEU", "GBP", 3)]
    assert all(s.opening is None and s.closing is None and s.closing_date is None
               and s.declared_total is None and not gaps(s) for s in statements)


def test_a_settled_payment_is_its_gross_with_the_costs_as_fee():
    entry = by_id(read(BATCH_41))["TallyShopEU:41:8816001000000001:Settled:8826001000000001"]
    assert (entry.amount, entry.fee, entry.amount - entry.fee) == (
        Decimal("100.00"), Decimal("1.80"), Decimal("98.20"))
    assert (entry.kind, entry.account, entry.currency, entry.batch_id) == (
        "transaction", "TallyShopEU", "EUR", "41-EUR")
    assert (entry.idempotency_key, entry.reference) == ("ORDER-1001", "8816001000000001")
    assert entry.booked == utc("2026-11-16 09:15:00")  # 10:15 CET
    assert entry.value is None and entry.where == "line 2"


def test_refunds_and_chargebacks_are_negative_and_keep_their_costs():
    entries = by_id(read(BATCH_41))
    refund = entries["TallyShopEU:41:8816000900000990:Refunded:8826001000000003"]
    assert (refund.amount, refund.fee) == (Decimal("-40.00"), Decimal("0"))
    assert refund.idempotency_key == "REFUND-0990-1"  # the merchant's own refund reference
    chargeback = entries["TallyShopEU:41:8816000800000950:Chargeback:8826001000000004"]
    assert (chargeback.amount, chargeback.fee) == (Decimal("-75.00"), Decimal("7.50"))
    assert chargeback.amount - chargeback.fee == Decimal("-82.50")  # the Net Debit
    assert chargeback.idempotency_key == "ORDER-0950"


def test_batch_lines_are_fee_lines_and_merchant_payouts_are_payouts():
    entries = by_id(read(BATCH_41))
    fee = entries["TallyShopEU:41::Fee:Transaction Fees November 2026"]
    assert (fee.amount, fee.fee, fee.kind, fee.batch_id) == (
        Decimal(0), Decimal("1.20"), "transaction", "41-EUR")
    assert fee.idempotency_key is None and fee.reference == "Fee: Transaction Fees November 2026"
    payout = entries["TallyShopEU:41::MerchantPayout:TX4411223344XT TallyShopEU, batch 41"]
    assert (payout.kind, payout.amount, payout.fee, payout.batch_id) == (
        PAYOUT, Decimal("220.25"), None, "41-EUR")
    assert payout.reference == "TX4411223344XT"  # the payout reference the bank shows
    assert payout.idempotency_key is None and payout.booked == utc("2026-11-17 04:00:00")


def test_booking_date_is_read_where_the_report_has_it():
    entries = by_id(read(BATCHES_41_43))
    settled = entries["TallyShopEU:42:8816001000000007:Settled:8826001000000007"]
    assert settled.booked == utc("2026-11-18 01:10:00")  # Booking Date 02:10 CET, not Creation
    assert entries["TallyShopEU:41:8816001000000001:Settled:8826001000000001"].booked == \
        utc("2026-11-16 09:15:00")  # no Booking Date on this line: its Creation Date


@pytest.mark.parametrize("path", [BATCH_41, BATCHES_41_43], ids=lambda p: p.name)
def test_each_batch_s_item_nets_add_up_to_its_payouts(path):
    """The settlement rule the batch relation checks, on every sample batch."""
    for statement in read(path):
        nets = sum(e.amount - e.fee for e in statement.entries if e.kind != PAYOUT)
        paid = sum(e.amount for e in statement.entries if e.kind == PAYOUT)
        assert nets == paid, statement.id


def test_a_balance_carried_to_the_next_batch_settles_both_batches():
    statements = {s.id: s for s in read(BATCHES_41_43)}
    carried = [e for e in statements["TallyShopEU:42-EUR"].entries if e.reference.startswith("Balancetransfer")]
    assert [(e.amount, e.fee) for e in carried] == [(Decimal(0), Decimal("-221.00"))]
    assert not any(e.kind == PAYOUT for e in statements["TallyShopEU:42-EUR"].entries)
    joined = [e for e in statements["TallyShopEU:43-EUR"].entries if e.reference.startswith("Balancetransfer")]
    assert [(e.amount, e.fee) for e in joined] == [(Decimal(0), Decimal("221.00"))]


def test_a_re_sent_batch_keeps_every_line_s_id_and_values():
    first, again = by_id(read(BATCH_41)), by_id(read(BATCHES_41_43))
    assert set(first) <= set(again)
    for event_id, entry in first.items():
        assert _content(again[event_id]) == _content(entry)


def test_the_same_file_read_twice_gives_equal_statements():
    assert read(BATCH_41) == parse(BATCH_41.read_bytes(), BATCH_41.name)


def _content(entry):
    """An entry without its place in the file."""
    return entry.__class__(**{**entry.__dict__, "where": ""})


# --- malformed reports: one clear line each ----------------------------------------------

HEADER = BATCH_41.read_text().splitlines()[0]
LINE = BATCH_41.read_text().splitlines()[1]


def refused(text: str) -> FormatError:
    with pytest.raises(FormatError) as caught:
        parse(text.encode(), "report.csv")
    assert "\n" not in str(caught.value)
    return caught.value


def replace_field(line: str, column: str, value: str) -> str:
    names = HEADER.split(",")
    fields = next(csv.reader([line]))
    fields[names.index(column)] = value
    out = io.StringIO()
    csv.writer(out, lineterminator="").writerow(fields)
    return out.getvalue()


def test_a_missing_column_is_named():
    header = HEADER.replace("Batch Number,", "")
    err = refused(header + "\n")
    assert (err.where, err.reason) == ("line 1", "missing column(s) 'Batch Number'")


def test_an_unparseable_amount_names_its_line_and_column():
    err = refused("\n".join([HEADER, LINE, replace_field(LINE, "Net Credit (NC)", "98,20")]))
    assert err.where == "line 3"
    assert err.reason == "Net Credit (NC) '98,20' is not an amount such as '12.50'"


def test_too_many_decimals_for_the_currency_are_refused():
    err = refused("\n".join([HEADER, replace_field(LINE, "Gross Credit (GC)", "100.001")]))
    assert err.reason == "Gross Credit (GC) '100.001' has 3 decimals; EUR has 2"


def test_an_unknown_line_type_is_named():
    err = refused("\n".join([HEADER, replace_field(LINE, "Type", "SettledBulk")]))
    assert err.where == "line 2" and err.reason.startswith("unknown line type 'SettledBulk'")


def test_cost_columns_that_disagree_with_gross_less_net_are_refused():
    err = refused("\n".join([HEADER, replace_field(LINE, "Interchange (NC)", "1.31")]))
    assert err.where == "line 2"
    assert err.reason == ("Commission + Markup + Scheme Fees + Interchange = 1.81, "
                          "but gross less net is 1.80")


def test_a_converted_payment_is_refused_rather_than_mixed():
    err = refused("\n".join([HEADER, replace_field(LINE, "Gross Currency", "USD")]))
    assert err.reason.startswith("Gross Currency USD differs from Net Currency EUR")


def test_an_unknown_currency_and_a_bad_date_are_refused():
    assert "'EUX' is not an ISO 4217 currency" in refused(
        "\n".join([HEADER, replace_field(LINE, "Net Currency", "EUX")])).reason
    assert refused("\n".join([HEADER, replace_field(LINE, "Creation Date", "16/11/2026")])
                   ).reason.startswith("Creation Date '16/11/2026' is not a time")


def test_two_lines_with_the_same_identifiers_refuse_the_file():
    err = refused("\n".join([HEADER, LINE, LINE]))
    assert err.where == "line 3" and err.reason.startswith("the same identifiers as line 2")


def test_text_that_is_not_a_report_is_refused():
    assert refused("").reason.startswith("no header line")
    assert refused("\n".join([HEADER, "a,b,c"])).reason.startswith("3 fields, but the header has 30")
    with pytest.raises(FormatError, match="not UTF-8"):
        parse(b"\x89PNG\r\n\x1a\n", "picture.csv")


# --- ids are the file's content alone ----------------------------------------------------

TYPES = ("Settled", "Refunded", "Chargeback", "Fee", "MiscCosts", "MerchantPayout",
         "Balancetransfer")


@st.composite
def report_lines(draw) -> list[dict]:
    """Lines of distinct identifiers; amounts, dates and order as they come."""
    count = draw(st.integers(1, 12))
    keys = draw(st.lists(st.tuples(st.sampled_from(["ShopA", "ShopB"]), st.integers(1, 3),
                                   st.integers(0, 10**6), st.sampled_from(TYPES)),
                         min_size=count, max_size=count, unique=True))
    lines = []
    for account, batch, number, kind in keys:
        currency = draw(st.sampled_from(["EUR", "JPY"]))
        places = 0 if currency == "JPY" else 2
        gross = draw(st.integers(1, 10**7))
        fee = draw(st.integers(0, gross))
        lines.append(dict(account=account, batch=batch, number=number, kind=kind,
                          currency=currency, gross=gross, fee=fee, places=places,
                          day=draw(st.integers(1, 28))))
    return lines


def render(lines: list[dict]) -> bytes:
    """A Settlement details report of `lines`, in their order."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(HEADER.split(","))
    for line in lines:
        writer.writerow(_fields(line))
    return out.getvalue().encode()


def _fields(line: dict) -> list[str]:
    def money(minor: int) -> str:
        return str(Decimal(minor).scaleb(-line["places"]))
    kind = line["kind"]
    payment = kind in ("Settled", "Refunded", "Chargeback")
    credit = kind in ("Settled", "Balancetransfer")
    # costs come off a credit and on top of a debit
    gross = money(line["gross"])
    net = money(line["gross"] - line["fee"] if credit else line["gross"] + line["fee"])
    psp = f"{line['number']:016d}" if payment else ""
    fields = {"Company Account": "Co", "Merchant Account": line["account"],
              "Psp Reference": psp, "Merchant Reference": f"ORDER-{line['number']}" if payment else "",
              "Creation Date": f"2026-11-{line['day']:02d} 12:00:00", "TimeZone": "CET",
              "Type": kind, "Modification Reference": f"M{line['number']}",
              "Net Currency": line["currency"], "Batch Number": str(line["batch"]),
              ("Net Credit (NC)" if credit else "Net Debit (NC)"): net}
    if payment:
        fields.update({"Gross Currency": line["currency"], "Exchange Rate": "1",
                       ("Gross Credit (GC)" if credit else "Gross Debit (GC)"): gross,
                       "Commission (NC)": money(line["fee"])})
    return [fields.get(column, "") for column in HEADER.split(",")]


@settings(max_examples=150, deadline=None)
@given(lines=report_lines(), data=st.data())
def test_a_line_s_entry_is_a_function_of_that_line_alone(lines, data):
    whole = [s for s in parse(render(lines), "whole.csv")]
    assert whole == parse(render(lines), "whole.csv")
    entries = by_id(whole)
    assert len(entries) == len(lines)  # one entry per line, every id distinct
    some = data.draw(st.lists(st.sampled_from(lines), unique_by=id), label="some lines")
    some = data.draw(st.permutations(some), label="reordered")
    for event_id, entry in by_id(parse(render(some), "part.csv")).items():
        assert _content(entry) == _content(entries[event_id])
