"""BAI2 files read into Statements: values, ids, balances, trailers and refusals."""

from __future__ import annotations

from datetime import date
from decimal import Decimal
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from flows.ingest.bai2 import FORMATS, parse
from flows.ingest.statement import FormatError, gaps

DATA = Path(__file__).parent / "data" / "ingest" / "bai2"
SAMPLE = (DATA / "two_accounts.bai2").read_bytes()


def test_the_format_is_registered_under_its_command_line_name():
    assert FORMATS == {"bai2": parse}


def test_one_statement_per_account_in_its_own_or_the_groups_currency():
    usd, eur = parse(SAMPLE, "f")
    assert [(s.account, s.currency) for s in (usd, eur)] == [("0099887766", "USD"),
                                                              ("4455667788", "EUR")]
    assert (usd.opening, usd.closing, usd.closing_date) == (
        Decimal("1000.00"), Decimal("1260.00"), date(2026, 11, 23))
    # the 015 closing ledger of the EUR account is on an 88 continuation of its 03
    assert (eur.opening, eur.closing) == (Decimal("500.00"), Decimal("425.50"))
    assert (usd.declared_count, usd.declared_total) == (3, Decimal("260.00"))
    assert (eur.declared_count, eur.declared_total) == (None, None)
    assert gaps(usd) == [] and gaps(eur) == []


def test_details_signed_by_type_code_in_major_units_booked_on_the_as_of_date():
    usd, eur = parse(SAMPLE, "f")
    assert [e.amount for e in usd.entries] == [Decimal("250.00"), Decimal("100.00"),
                                               Decimal("-90.00")]
    assert [str(e.amount) for e in eur.entries] == ["-74.50"]
    assert {e.booked for e in usd.entries + eur.entries} == {date(2026, 11, 23)}
    assert [e.value for e in usd.entries] == [None, date(2026, 11, 25), None]  # V: value-dated


def test_ids_are_the_bank_reference_else_the_file_group_and_position():
    usd, eur = parse(SAMPLE, "f")
    other, = parse(replaced("16,495,7450,0,BK90003", "16,495,7450,0,BK90001"), "f")[1:]
    assert other.entries[0].event_id == "4455667788|bank|BK90001"  # another account's ref
    assert [e.event_id for e in usd.entries] == [
        "0099887766|bank|BK90001", "0099887766|file|BANKUS33/261124/7/1|2",
        "0099887766|bank|BK90002"]
    assert [e.event_id for e in eur.entries] == ["4455667788|bank|BK90003"]


def test_references_are_the_text_with_its_88_continuation_else_the_customer_reference():
    usd, _ = parse(SAMPLE, "f")
    assert usd.entries[0].reference == "ACQ PAYOUT B-ACC00012-20261121 REF TR4471"
    assert [e.where for e in usd.entries] == ["line 4 (16)", "line 6 (16)", "line 7 (16)"]


def test_an_unbalanced_account_is_read_and_gaps_says_by_how_much():
    statement, = parse((DATA / "unbalanced.bai2").read_bytes(), "u")
    assert gaps(statement) == ["opening 1260.00 + entries 50.00 = 1310.00, but closing is "
                               "1300.00 (difference -10.00)"]


def replaced(old: str, new: str) -> bytes:
    assert old.encode() in SAMPLE
    return SAMPLE.replace(old.encode(), new.encode(), 1)


@pytest.mark.parametrize("data, where, reason", [
    (b"", "line 1", "the file is empty"),
    (SAMPLE[:SAMPLE.index(b"98,")], "end of file", "Expected group trailer, found the end of the file"),
    (replaced("49,314000,6/", "49,314001,6/"), "line 8 (49)",
     "account control total is 314001, but the records give 314000"),
    (replaced("49,314000,6/", "49,314000,5/"), "line 8 (49)", "record count is 5"),
    (replaced("98,414000,2,12/", "98,414000,2,13/"), "line 13 (98)", "record count is 13"),
    (replaced("99,414000,1,14/", "99,414100,1,14/"), "line 14 (99)", "file control total"),
    (replaced("16,475,9000,", "16,475,9O00,"), "line 7 (16)", "amount '9O00' is not a whole"),
    (replaced("16,475,9000,", "16,475,,"), "line 7 (16)", "amount '' is not a whole"),
    (replaced("03,4455667788,EUR,", "03,4455667788,EUX,"), "line 9 (03)", "unknown currency 'EUX'"),
    (replaced("16,475,9000,0,BK90002", "16,475,9000,0,BK90001"), "line 7 (16)",
     "is also the id of the entry at line 4 (16)"),
    (replaced("16,495,", "16,015,"), "line 11 (16)", "015 is a status code"),
    (replaced("02,TALLYCO,BANKUS33,1,", "02,TALLYCO,BANKUS33,2,"), "line 2 (02)", "deletion"),
    (SAMPLE + b"16,195,1,0,X,,LATE\n", "line 15 (16)", "after the 99 file trailer"),
    (b"16,195,1,0,X,,TEXT\n", "line 1", "starts with its 01 header"),
    (SAMPLE.replace(b"88,REF", b"8,REF"), "line 5", "does not start a BAI2 record"),
])
def test_a_malformed_file_is_refused_in_one_line_naming_where(data, where, reason):
    with pytest.raises(FormatError) as refused:
        parse(data, "bank.bai")
    assert refused.value.where == where and reason in refused.value.reason
    assert "\n" not in str(refused.value) and str(refused.value).startswith("bank.bai: ")


def test_every_truncation_of_a_file_is_refused_never_a_crash():
    lines = SAMPLE.splitlines(keepends=True)
    for cut in range(1, len(lines)):
        with pytest.raises(FormatError):
            parse(b"".join(lines[:cut]), "cut")


# a small BAI2 renderer for the property: accounts with bank-referenced details

DETAIL = st.tuples(st.from_regex(r"[A-Z0-9]{1,12}", fullmatch=True),
                   st.sampled_from(["195", "399", "475", "699"]), st.integers(0, 10**9),
                   st.text("ABCDEFGH ,/-0123456789", max_size=90))


def render(accounts: list[tuple[str, list]]) -> bytes:
    """accounts: (account number, [(bank ref, type code, minor amount, text)])."""
    lines = ["01,BANKUS33,TALLYCO,261124,0600,1,,,2/", "02,TALLYCO,BANKUS33,1,261123,2400,USD,2/"]
    group_total, group_records = 0, 2
    for number, details in accounts:
        account = [f"03,{number},,010,0,,/"]
        for ref, code, minor, text in details:
            account.append(f"16,{code},{minor},0,{ref},,{text[:40]}")
            if len(text) > 40:
                account.append(f"88,{text[40:]}")  # the text goes on in a continuation
        total = sum(minor for _, _, minor, _ in details)
        account.append(f"49,{total},{len(account) + 1}/")
        lines += account
        group_total, group_records = group_total + total, group_records + len(account)
    lines.append(f"98,{group_total},{len(accounts)},{group_records}/")
    lines.append(f"99,{group_total},1,{len(lines) + 1}/")
    return "\n".join(lines).encode()


@settings(max_examples=60, deadline=None)
@given(details=st.lists(DETAIL, min_size=1, max_size=10, unique_by=lambda d: d[0]),
       split=st.integers(0, 10), keep=st.lists(st.booleans(), min_size=10, max_size=10))
def test_event_ids_are_a_function_of_each_details_own_content(details, split, keep):
    accounts = [("111", details[:split]), ("222", details[split:])]
    accounts = [(number, ds) for number, ds in accounts if ds]
    data = render(accounts)
    statements = parse(data, "whole")
    assert parse(data, "whole") == statements
    ids = {e.event_id: e for s in statements for e in s.entries}
    assert len(ids) == len(details)
    credit = {"195": 1, "399": 1, "475": -1, "699": -1}
    by_ref = {f"{number}|bank|{d[0]}": credit[d[1]] * d[2] for number, ds in accounts for d in ds}
    assert {i: e.amount.scaleb(2) for i, e in ids.items()} == by_ref
    fewer = [(number, [d for d, k in zip(ds, keep) if k]) for number, ds in accounts]
    fewer = [(number, ds) for number, ds in fewer if ds]
    if fewer:
        for statement in parse(render(fewer), "part"):
            for entry in statement.entries:
                assert ids[entry.event_id].amount == entry.amount
