"""MT940/MT942 files read into Statements: values, ids, balances and refusals."""

from __future__ import annotations

from datetime import date, timedelta
from decimal import Decimal
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from flows.ingest.mt940 import FORMATS, parse
from flows.ingest.statement import FormatError, gaps

DATA = Path(__file__).parent / "data" / "ingest" / "mt940"
EUR_ACCOUNT = "DE89370400440532013000"


def read(name: str):
    return parse((DATA / name).read_bytes(), name)


def test_the_format_is_registered_under_its_command_line_name():
    assert FORMATS == {"mt940": parse}


def test_one_statement_per_message_each_in_its_balance_currency():
    statements = read("statements.mt940")
    assert [(s.account, s.currency) for s in statements] == [
        (EUR_ACCOUNT, "EUR"), ("BANKUS33/0099887766", "USD"), ("JP0001234567", "JPY")]
    assert [gaps(s) for s in statements] == [[], [], []]


def test_entries_signed_by_mark_reversals_included_and_padded_to_the_currency():
    eur = read("statements.mt940")[0]
    assert [e.amount for e in eur.entries] == [Decimal("250.00"), Decimal("-75.50"),
                                               Decimal("-10.00"), Decimal("20.00"),
                                               Decimal("40.00"), Decimal("5.00")]
    assert str(eur.entries[1].amount) == "-75.50"  # "75,5" in the file
    assert (eur.opening, eur.closing, eur.closing_date) == (
        Decimal("1000.00"), Decimal("1229.50"), date(2026, 11, 24))
    jpy = read("statements.mt940")[2]
    assert str(jpy.entries[0].amount) == "120000" and str(jpy.closing) == "120000"


def test_a_debit_opening_balance_is_negative_and_a_year_end_entry_date_rolls_over():
    usd = read("statements.mt940")[1]
    assert usd.opening == Decimal("-500.00")
    entry = usd.entries[0]
    assert (entry.value, entry.booked) == (date(2026, 12, 31), date(2027, 1, 2))


def test_ids_prefer_the_bank_reference_then_the_customer_reference_then_the_position():
    eur = read("statements.mt940")[0]
    assert [e.event_id for e in eur.entries] == [
        f"{EUR_ACCOUNT}|bank|BK7781001", f"{EUR_ACCOUNT}|bank|BK7781002",
        f"{EUR_ACCOUNT}|bank|BK7781003", f"{EUR_ACCOUNT}|bank|BK7781004",
        f"{EUR_ACCOUNT}|customer|INV-2240", f"{EUR_ACCOUNT}|statement|STMT261124A/00321/1|6"]


def test_references_come_from_the_86_after_the_61_or_its_supplementary_details():
    eur = read("statements.mt940")[0]
    assert eur.entries[0].reference == ("ACQ PAYOUT B-ACC00012-20261121 FROM ACME ACQUIRING "
                                        "SERVICES GMBH REF TR4471")
    assert eur.entries[3].reference == "CHARGE REFUNDED"  # :61: second line, no :86:
    # the :86: after :62F: is the statement's; the library would append it to this entry
    assert eur.entries[5].reference == "INTEREST"
    assert [e.where for e in eur.entries][:2] == ["line 6 (:61:)", "line 9 (:61:)"]


def test_a_full_65_character_86_line_was_wrapped_by_the_bank_and_joins_directly():
    wrapped = "X" * 60 + "B-ACC"
    statement, = parse(message(f":61:2611211121C1,00NTRFNONREF//R1\n:86:{wrapped}\n00012 PAID",
                               closing="C261121EUR101,00"), "f")
    assert statement.entries[0].reference == wrapped + "00012 PAID"


def test_an_unbalanced_statement_is_read_and_gaps_says_by_how_much():
    statement, = read("unbalanced.mt940")
    assert gaps(statement) == ["opening 100.00 + entries 50.00 = 150.00, but closing is 160.00 "
                               "(difference +10.00)"]


def test_an_mt942_declares_its_count_and_sum_and_the_next_mt940_keeps_its_ids():
    intraday, = read("intraday.mt942")
    assert (intraday.opening, intraday.closing, intraday.closing_date) == (None, None, None)
    assert (intraday.declared_count, intraday.declared_total) == (3, Decimal("295.00"))
    assert gaps(intraday) == []
    end_of_day = {e.event_id: e for e in read("statements.mt940")[0].entries}
    with_refs = [e for e in intraday.entries if "|statement|" not in e.event_id]
    assert len(with_refs) == 2
    for entry in with_refs:
        assert end_of_day[entry.event_id].amount == entry.amount


def message(lines: str, opening="C261120EUR100,00", closing="C261121EUR100,00") -> bytes:
    return (f":20:S1\n:25:ACC1\n:28C:1/1\n:60F:{opening}\n{lines}\n:62F:{closing}\n").encode()


@pytest.mark.parametrize("data, where, reason", [
    (b"", "line 1", "the file is empty"),
    (message(":61:2611211121C25O,00NTRFNONREF//R1"), "line 5 (:61:)", "amount '25' is not digits"),
    (message(":61:2611211121C1,005NTRFNONREF//R1"), "line 5 (:61:)", "has 3 decimals, EUR has 2"),
    (message(":61:2611211121C1NTRFNONREF//R1"), "line 5 (:61:)", "not digits with a decimal comma"),
    (message("", opening="C261120EUX100,00"), "line 4 (:60F:)", "unknown currency 'EUX'"),
    (message(":61:2602300230C1,00NTRFNONREF//R1"), "line 5 (:61:)", "no such date 260230"),
    (message(":61:2611211121c1,00NTRFNONREF//R1"), "line 5 (:61:)", "mark 'c' is not one of"),
    (message(":61:2611211121C1,00NTRFABCDEFGHIJKLMNOPQ//R1"), "line 5 (:61:)", "at most 16"),
    (message(":61:2611211121C1,00NTRFNONREF//R1\n:61:2611211121C1,00NTRFNONREF//R1"),
     "line 6 (:61:)", "is also the id of the entry at line 5 (:61:)"),
    (message(":99:SOMETHING"), "after line 4 (:60F:)", "unknown field :99:"),
    (b":20:S1\n:25:ACC1\n:60F:C261120EUR100,00\n:61:2611211121C1,00NTRF",
     "line 1 (:20:)", "has no :62F:/:62M: closing balance"),
    (b":25:ACC1\n:20:S1\n", "line 1 (:25:)", "must start with :20:"),
])
def test_a_malformed_file_is_refused_in_one_line_naming_where(data, where, reason):
    with pytest.raises(FormatError) as refused:
        parse(data, "bank.sta")
    assert refused.value.where == where and reason in refused.value.reason
    assert "\n" not in str(refused.value) and str(refused.value).startswith("bank.sta: ")


def test_every_truncation_of_a_file_is_read_or_refused_never_a_crash():
    data = (DATA / "statements.mt940").read_bytes()
    for cut in range(0, len(data), 7):
        try:
            parse(data[:cut], "cut")
        except FormatError:
            pass


# a small MT940 renderer for the property: statements with referenced entries

REF = st.from_regex(r"[A-Z0-9][A-Z0-9-]{0,15}", fullmatch=True).filter(lambda r: r != "NONREF")
ENTRY = st.tuples(st.booleans(), REF, st.sampled_from(["C", "D", "RC", "RD"]),
                  st.integers(0, 10**9), st.integers(0, 3))
CURRENCY = st.sampled_from([("EUR", 2), ("JPY", 0), ("BHD", 3)])


def amount(minor: int, places: int) -> str:
    text = str(minor).rjust(places + 1, "0")
    return f"{text[:len(text) - places]},{text[len(text) - places:]}"


def render(account: str, currency: tuple[str, int], entries) -> bytes:
    code, places = currency
    day = date(2026, 11, 20)
    lines = [":20:P1", f":25:{account}", ":28C:7/1", f":60F:C{day:%y%m%d}{code}0,"]
    for by_bank, ref, mark, minor, late in entries:
        refs = f"NONREF//{ref}" if by_bank else ref
        booked = day + timedelta(days=late)
        lines += [f":61:{day:%y%m%d}{booked:%m%d}{mark}{amount(minor, places)}NTRF{refs}",
                  f":86:PAYMENT {ref}"]
    lines.append(f":62F:C{day:%y%m%d}{code}0,")
    return "\r\n".join(lines).encode()


@settings(max_examples=60, deadline=None)
@given(account=st.sampled_from(["NL91ABNA0417164300", "BANK/123", "GB33BUKB20201555555555"]),
       currency=CURRENCY, entries=st.lists(ENTRY, max_size=12, unique_by=lambda e: e[1]),
       keep=st.lists(st.booleans(), min_size=12, max_size=12))
def test_event_ids_are_a_function_of_each_entrys_own_content(account, currency, entries, keep):
    data = render(account, currency, entries)
    statement, = parse(data, "whole")
    assert parse(data, "whole") == [statement]
    ids = [e.event_id for e in statement.entries]
    assert len(set(ids)) == len(ids) and all(i.startswith(account + "|") for i in ids)
    signs = {"C": 1, "RD": 1, "D": -1, "RC": -1}
    assert [e.amount.scaleb(currency[1]) for e in statement.entries] == [
        signs[mark] * minor for _, _, mark, minor, _ in entries]
    kept = [entry for entry, k in zip(entries, keep) if k]
    part, = parse(render(account, currency, kept), "part")
    by_ref = {e.reference: e.event_id for e in statement.entries}
    assert [by_ref[e.reference] for e in part.entries] == [e.event_id for e in part.entries]
