"""Stripe's itemized payout reconciliation report read into statements (flows/ingest/stripe.py).

The samples under tests/data/ingest/stripe follow Stripe's documented columns: a USD and
a EUR automatic payout, then a report that sends the EUR payout again with a second USD one.
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

from flows.ingest.statement import PAYOUT, FormatError
from flows.ingest.stripe import FORMATS, parse

DATA = Path(__file__).parent / "data" / "ingest" / "stripe"
DAY_1 = DATA / "payout_reconciliation_itemized_2026-11-16.csv"
DAY_2 = DATA / "payout_reconciliation_itemized_2026-11-17.csv"


def read(path: Path):
    return parse(path.read_bytes(), path.name)


def by_id(statements) -> dict:
    return {entry.event_id: entry for s in statements for entry in s.entries}


def utc(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=timezone.utc)


def _content(entry):
    return entry.__class__(**{**entry.__dict__, "where": ""})


def test_the_format_is_registered_under_its_command_line_name():
    assert FORMATS == {"stripe-payouts": parse}


def test_one_statement_per_automatic_payout_and_no_account():
    statements = read(DAY_1)
    assert [(s.id, s.account, s.currency, len(s.entries)) for s in statements] == [
        ("po_1TallyUsd0000001:USD", "", "USD", 6), ("po_1TallyEur0000001:EUR", "", "EUR", 4)]
    assert all(e.account == "" and e.value is None for s in statements for e in s.entries
               if e.kind != PAYOUT)


def test_a_charge_is_its_gross_less_stripe_s_fee_keyed_by_its_payment_intent():
    charge = by_id(read(DAY_1))["txn_1TallyU0000001"]
    assert (charge.amount, charge.fee, charge.currency) == (Decimal("100.00"), Decimal("3.20"), "USD")
    assert (charge.idempotency_key, charge.reference) == ("pi_1TallyU0000001", "ch_1TallyU0000001")
    assert (charge.batch_id, charge.booked, charge.where) == (
        "po_1TallyUsd0000001", utc("2026-11-15 09:12:01"), "line 2")


def test_a_charge_without_a_payment_intent_is_keyed_by_the_charge():
    assert by_id(read(DAY_1))["txn_1TallyU0000002"].idempotency_key == "py_1TallyU0000002"


def test_refunds_and_disputes_are_negative_and_keyed_by_their_own_object():
    entries = by_id(read(DAY_1))
    refund, dispute = entries["txn_1TallyU0000003"], entries["txn_1TallyU0000004"]
    assert (refund.amount, refund.fee, refund.idempotency_key) == (
        Decimal("-20.00"), Decimal("0.00"), "re_1TallyU0000003")
    assert (dispute.amount, dispute.fee, dispute.amount - dispute.fee) == (
        Decimal("-60.00"), Decimal("15.00"), Decimal("-75.00"))
    won_back = by_id(read(DAY_2))["txn_1TallyU0000007"]
    assert (won_back.amount, won_back.fee) == (Decimal("60.00"), Decimal("-15.00"))


def test_stripe_fees_are_fee_lines():
    fee = by_id(read(DAY_1))["txn_1TallyU0000005"]
    assert (fee.kind, fee.amount, fee.fee, fee.idempotency_key) == (
        "transaction", Decimal(0), Decimal("2.00"), None)
    assert fee.reference == "fee: Radar (2026-11-16): Radar for Fraud Teams"


def test_the_payout_is_derived_from_its_lines_and_booked_when_effective():
    payout = by_id(read(DAY_1))["po_1TallyUsd0000001"]
    assert (payout.kind, payout.amount, payout.fee, payout.idempotency_key) == (
        PAYOUT, Decimal("40.77"), None, None)
    assert (payout.batch_id, payout.reference) == ("po_1TallyUsd0000001", "po_1TallyUsd0000001")
    assert payout.booked == payout.value == utc("2026-11-18 00:00:00")


@pytest.mark.parametrize("path", [DAY_1, DAY_2], ids=lambda p: p.name)
def test_each_payout_s_item_nets_add_up_to_it(path):
    for statement in read(path):
        nets = sum(e.amount - e.fee for e in statement.entries if e.kind != PAYOUT)
        payouts = [e.amount for e in statement.entries if e.kind == PAYOUT]
        assert payouts == [nets], statement.id


def test_a_re_sent_payout_keeps_every_line_s_id_and_values():
    first, again = by_id(read(DAY_1)), by_id(read(DAY_2))
    shared = {"txn_1TallyE0000001", "txn_1TallyE0000002", "txn_1TallyE0000003", "po_1TallyEur0000001"}
    assert set(first) & set(again) == shared
    assert all(_content(first[i]) == _content(again[i]) for i in shared)
    assert read(DAY_1) == parse(DAY_1.read_bytes(), DAY_1.name)


# --- malformed reports: one clear line each ----------------------------------------------

HEADER, LINE = DAY_1.read_text().splitlines()[:2]


def refused(*lines: str) -> FormatError:
    with pytest.raises(FormatError) as caught:
        parse("\n".join(lines).encode(), "report.csv")
    assert "\n" not in str(caught.value)
    return caught.value


def replace_field(line: str, column: str, value: str) -> str:
    fields = next(csv.reader([line]))
    fields[HEADER.split(",").index(column)] = value
    out = io.StringIO()
    csv.writer(out, lineterminator="").writerow(fields)
    return out.getvalue()


def test_a_missing_column_is_named():
    err = refused(HEADER.replace(",net,", ","), "")
    assert (err.where, err.reason) == ("line 1", "missing column(s) 'net'")


def test_an_unparseable_amount_names_its_line_and_column():
    err = refused(HEADER, LINE, replace_field(LINE, "gross", "1e2"))
    assert (err.where, err.reason) == ("line 3", "gross '1e2' is not an amount such as '-12.50' or '12.50'")


def test_an_unknown_category_is_named():
    err = refused(HEADER, replace_field(LINE, "reporting_category", "topup"))
    assert err.where == "line 2" and err.reason.startswith("unknown reporting_category 'topup'")


def test_a_fee_that_disagrees_with_gross_less_net_is_refused():
    err = refused(HEADER, replace_field(LINE, "fee", "3.21"))
    assert err.reason == "gross 100.00 less fee 3.21 is 96.79, but net is 96.80"


def test_a_line_of_no_automatic_payout_refuses_the_file():
    err = refused(HEADER, LINE, replace_field(LINE, "automatic_payout_id", ""))
    assert err.where == "line 3" and "not part of an automatic payout" in err.reason


def test_an_unknown_currency_a_bad_time_and_a_repeated_line_are_refused():
    assert "'XYZ' is not an ISO 4217" in refused(HEADER, replace_field(LINE, "currency", "xyz")).reason
    assert refused(HEADER, replace_field(LINE, "created_utc", "yesterday")).reason.startswith(
        "created_utc 'yesterday' is not a time")
    assert refused(HEADER, LINE, LINE).reason.startswith("the same identifiers as line 2")


def test_one_payout_in_two_currencies_is_refused():
    other = replace_field(replace_field(LINE, "balance_transaction_id", "txn_other"), "currency", "eur")
    assert refused(HEADER, LINE, other).reason.startswith("currency EUR differs from USD of line 2")


# --- ids are the file's content alone ----------------------------------------------------

CATEGORIES = ("charge", "refund", "dispute", "fee", "network_cost")


@st.composite
def report_lines(draw) -> list[dict]:
    count = draw(st.integers(1, 12))
    numbers = draw(st.lists(st.integers(0, 10**6), min_size=count, max_size=count, unique=True))
    lines = []
    for number in numbers:
        payout = draw(st.integers(1, 3))
        gross = draw(st.integers(-10**7, 10**7))
        lines.append(dict(number=number, payout=payout, currency=["usd", "eur", "jpy"][payout - 1],
                          category=draw(st.sampled_from(CATEGORIES)), gross=gross,
                          fee=draw(st.integers(0, 10**5)), second=draw(st.integers(0, 86399))))
    return lines


def render(lines: list[dict]) -> bytes:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    columns = HEADER.split(",")
    writer.writerow(columns)
    for line in lines:
        places = 0 if line["currency"] == "jpy" else 2
        money = lambda minor: str(Decimal(minor).scaleb(-places))  # noqa: E731
        fields = {"automatic_payout_id": f"po_{line['payout']}",
                  "automatic_payout_effective_at_utc": "2026-11-20 00:00:00",
                  "balance_transaction_id": f"txn_{line['number']}",
                  "created_utc": f"2026-11-18 {line['second'] // 3600:02d}:{line['second'] // 60 % 60:02d}:00",
                  "currency": line["currency"], "gross": money(line["gross"]),
                  "fee": money(line["fee"]), "net": money(line["gross"] - line["fee"]),
                  "reporting_category": line["category"], "source_id": f"src_{line['number']}"}
        writer.writerow([fields.get(column, "") for column in columns])
    return out.getvalue().encode()


@settings(max_examples=150, deadline=None)
@given(lines=report_lines(), data=st.data())
def test_a_line_s_entry_is_a_function_of_that_line_alone(lines, data):
    whole = parse(render(lines), "whole.csv")
    assert whole == parse(render(lines), "whole.csv")
    entries = {i: e for i, e in by_id(whole).items() if e.kind != PAYOUT}
    assert len(entries) == len(lines)  # one entry per line, every id distinct
    some = data.draw(st.permutations(data.draw(st.lists(st.sampled_from(lines), unique_by=id))))
    for event_id, entry in by_id(parse(render(some), "part.csv")).items():
        if entry.kind != PAYOUT:  # a payout is its lines' sum: it changes with them
            assert _content(entry) == _content(entries[event_id])
