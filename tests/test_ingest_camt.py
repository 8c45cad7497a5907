"""camt.052, camt.053 and camt.054 read into Statements: values, refusals, and event ids.

The sample files under tests/data/ingest/camt/ were written for these tests from the ISO 20022
message definitions; the comment at the top of each says what it holds and how it adds up.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import date, datetime, timezone
from decimal import Decimal
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from flows.ingest.camt import FORMATS
from flows.ingest.statement import FormatError, Statement, gaps
from state.currency import exponent

SAMPLES = Path(__file__).parent / "data" / "ingest" / "camt"
DE = "DE89370400440532013000"


def read(file_name: str, format_name: str = "camt053") -> list[Statement]:
    return FORMATS[format_name]((SAMPLES / file_name).read_bytes(), file_name)


def summary(statement: Statement) -> list[tuple]:
    return [(e.event_id, e.amount, e.reference) for e in statement.entries]


# -- the samples' values -----------------------------------------------------------------


def test_a_camt053_v02_statement_reads_as_the_bank_booked_it():
    [statement] = read("camt053_v02.xml")
    assert (statement.id, statement.account, statement.currency) == (
        "STMT-20261120-0532013000", DE, "EUR")
    assert (statement.opening, statement.closing, statement.closing_date) == (
        Decimal("1000.00"), Decimal("1474.50"), date(2026, 11, 20))
    assert summary(statement) == [
        (f"{DE}:ref:2026112000001", Decimal("250.00"), "Invoice 1001 customer 88"),
        (f"{DE}:ref:2026112000002", Decimal("-75.50"), "Account maintenance fee November"),
        (f"{DE}:ref:2026112000003/1", Decimal("100.00"), "Payout B-ACC00012-20261121"),
        (f"{DE}:ref:2026112000003-2", Decimal("120.00"), "RF18539007547034"),
        (f"{DE}:ref:2026112000003/3", Decimal("80.00"), "E2E-5513"),
        (f"{DE}:ref:2026112000004", Decimal("40.00"), "Transfer from DE02120300000000202051"),
        (f"{DE}:ref:2026112000005", Decimal("-40.00"), "Reversal of 2026112000004"),
    ]
    fee = statement.entries[1]
    assert (fee.booked, fee.value, fee.where) == (date(2026, 11, 20), date(2026, 11, 19),
                                                  "Stmt[1]/Ntry[2]")
    assert all(type(entry.amount) is Decimal for entry in statement.entries)
    # TxsSummry counts 5 Ntry; the batch of three makes it 7 Entries, and the figures agree.
    assert (statement.declared_count, statement.declared_total) == (7, Decimal("474.50"))
    assert gaps(statement) == []


def test_a_reversal_is_booked_in_the_direction_of_its_own_indicator():
    """RvslInd true with DBIT undoes a credit (ISO 20022): it is a debit, not flipped again."""
    [statement] = read("camt053_v02.xml")
    credit, reversal = statement.entries[-2:]
    assert (credit.amount, reversal.amount) == (Decimal("40.00"), Decimal("-40.00"))
    assert gaps(statement) == []


def test_a_batch_entry_becomes_one_entry_per_transaction_with_its_own_amount():
    [statement] = read("camt053_v02.xml")
    batch = [e for e in statement.entries if "NtryDtls" in e.where]
    assert [e.where for e in batch] == [
        f"Stmt[1]/Ntry[3]/NtryDtls[1]/TxDtls[{i}]" for i in (1, 2, 3)]
    assert sum(e.amount for e in batch) == Decimal("300.00")
    assert {(e.booked, e.value) for e in batch} == {(date(2026, 11, 20), date(2026, 11, 20))}


def test_a_camt053_v08_statement_reads_times_balances_and_pending_entries():
    [statement] = read("camt053_v08.xml")
    assert (statement.account, statement.opening, statement.closing, statement.closing_date) == (
        "0044-7781-22", Decimal("-200.00"), Decimal("179.75"), date(2026, 11, 21))
    assert summary(statement) == [
        ("0044-7781-22:ref:NB-88410001", Decimal("500.00"), "PAYOUT-TR4471"),
        ("0044-7781-22:ref:NB-88410002", Decimal("-120.25"), "MANDATE-311/11"),
    ]
    credit, debit = statement.entries
    assert credit.booked == datetime(2026, 11, 21, 8, 30, tzinfo=timezone.utc)
    assert credit.booked.utcoffset().total_seconds() == 0
    assert (debit.booked, debit.value) == (date(2026, 11, 21), date(2026, 11, 21))
    assert "times without a UTC offset are read as their dates" in statement.notes
    assert "1 entry with status PDNG left out: only booked entries are read" in statement.notes
    # TxsSummry counts and sums the pending entry too: restated without it, it agrees.
    assert (statement.declared_count, statement.declared_total) == (2, Decimal("379.75"))
    assert gaps(statement) == []


def test_the_end_of_day_statement_repeats_the_intraday_reports_ids():
    [intraday] = read("camt052_v02_intraday.xml", "camt052")
    [end_of_day] = read("camt053_v02.xml")
    assert summary(intraday) == summary(end_of_day)[:2]
    assert (intraday.opening, intraday.closing, intraday.closing_date) == (
        Decimal("1000.00"), None, None)
    assert intraday.notes == ("1 entry with status PDNG left out: only booked entries are read",)


def test_a_notification_gives_the_statements_ids_and_falls_back_to_its_own_references():
    [notification] = read("camt054_v08.xml", "camt054")
    [statement] = read("camt053_v02.xml")
    batch = [(e.event_id, e.amount, e.reference) for e in notification.entries[:3]]
    assert batch == summary(statement)[2:5]
    last = notification.entries[3]
    assert (last.event_id, last.amount, last.reference) == (
        f"{DE}:ntry:NTF-20261120-17:N17-2", Decimal("12.00"), "Interest correction")
    assert notification.entries[0].booked == datetime(2026, 11, 20, 15, 40, tzinfo=timezone.utc)
    assert (notification.opening, notification.closing, notification.closing_date) == (
        None, None, None)


def test_a_file_of_two_currencies_gives_one_statement_per_currency():
    statements = read("camt053_v02_currencies.xml")
    assert [(s.id, s.currency, s.opening, s.closing) for s in statements] == [
        ("MC-20261120-EUR", "EUR", Decimal("50.00"), Decimal("60.00")),
        ("MC-20261120-USD/GBP", "GBP", None, None),
        ("MC-20261120-USD/USD", "USD", Decimal("1000.00"), Decimal("750.00")),
    ]
    assert [summary(s) for s in statements] == [
        [("NL91ABNA0417164300:ref:MC-E-1", Decimal("10.00"), None)],
        [("NL91ABNA0417164300:ref:MC-G-1", Decimal("9.99"), None)],
        [("NL91ABNA0417164300:ref:MC-U-1", Decimal("-250.00"), None)],
    ]
    assert all(gaps(s) == [] for s in statements)
    gbp = statements[1]
    assert "the file states no GBP balance: these entries are not checked against balances" \
        in gbp.notes


def test_gaps_say_why_an_unbalanced_statement_does_not_add_up():
    [statement] = read("camt053_v08_unbalanced.xml")
    assert gaps(statement) == [
        "opening 100.00 + entries 50.00 = 150.00, but closing is 160.00 (difference +10.00)",
        "1 entries, but the file declares 2",
    ]


# -- refusals ------------------------------------------------------------------------------

V02 = (SAMPLES / "camt053_v02.xml").read_bytes()


def edited(old: str, new: str, data: bytes = V02) -> bytes:
    assert old.encode() in data, old
    return data.replace(old.encode(), new.encode(), 1)


REFUSED = {
    "not XML": (b"Booking date;Amount\n2026-11-20;250.00\n", "line 1", "not well-formed XML"),
    "truncated": (V02[: len(V02) // 2], "line", "not well-formed XML"),
    "empty": (b"", "line 1", "not well-formed XML"),
    "bad amount": (edited(">75.50<", ">75,50<"), "Stmt[1]/Ntry[2]/Amt",
                   "amount '75,50' is not an unsigned decimal number"),
    "signed amount": (edited(">75.50<", ">-75.50<"), "Stmt[1]/Ntry[2]/Amt",
                      "is not an unsigned decimal number"),
    "too many decimals": (edited(">75.50<", ">75.505<"), "Stmt[1]/Ntry[2]/Amt",
                          "amount 75.505 has 3 decimals; EUR allows 2"),
    "decimals of a currency without minor units": (
        edited('Ccy="EUR">75.50', 'Ccy="JPY">75.5'), "Stmt[1]/Ntry[2]/Amt",
        "amount 75.5 has 1 decimals; JPY allows 0"),
    "decimals in a balance": (edited(">1474.50<", ">1474.5000<"), "Stmt[1]/Bal[2]/Amt",
                              "has 4 decimals; EUR allows 2"),
    "unknown currency": (edited('Ccy="EUR">75.50', 'Ccy="EUX">75.50'), "Stmt[1]/Ntry[2]/Amt",
                         "unknown currency 'EUX'"),
    "unknown version": (edited("xsd:camt.053.001.02", "xsd:camt.053.001.04"), "Document",
                        "namespace urn:iso:std:iso:20022:tech:xsd:camt.053.001.04 is not read; "
                        "versions read: 001.02, 001.08"),
    "unknown message": (edited("xsd:camt.053.001.02", "xsd:camt.086.001.02"), "Document",
                        "is not a camt.052, camt.053 or camt.054 message"),
    "no namespace": (edited(' xmlns="urn:iso:std:iso:20022:tech:xsd:camt.053.001.02"', ""),
                     "Document", "the Document has no namespace"),
    "another message": ((SAMPLES / "camt052_v02_intraday.xml").read_bytes(), "Document",
                        "this is a camt.052 message, not camt.053: read it as camt052"),
    "missing booking date": (
        edited("<BookgDt><Dt>2026-11-20</Dt></BookgDt>\n        <ValDt><Dt>2026-11-19",
               "<ValDt><Dt>2026-11-19"), "Stmt[1]/Ntry[2]", "BookgDt is missing"),
    "missing account": (edited("<IBAN>DE89370400440532013000</IBAN>", ""), "Stmt[1]/Acct/Id",
                        "has neither IBAN nor Othr/Id"),
    "bad date": (edited("<ValDt><Dt>2026-11-19</Dt>", "<ValDt><Dt>2026-11-31</Dt>"),
                 "Stmt[1]/Ntry[2]/ValDt/Dt", "'2026-11-31' is not an ISO date"),
    "bad indicator": (edited("<CdtDbtInd>DBIT</CdtDbtInd>", "<CdtDbtInd>DEBIT</CdtDbtInd>"),
                      "Stmt[1]/Ntry[2]/CdtDbtInd", "'DEBIT' is neither CRDT nor DBIT"),
    "batch that does not add up": (
        edited('<Amt Ccy="EUR">80.00</Amt>', '<Amt Ccy="EUR">81.00</Amt>'), "Stmt[1]/Ntry[3]",
        "its 3 transactions sum to 301.00, but the entry is 300.00"),
    "batch transaction without amount": (
        edited('<AmtDtls><TxAmt><Amt Ccy="EUR">80.00</Amt></TxAmt></AmtDtls>', ""),
        "Stmt[1]/Ntry[3]/NtryDtls[1]/TxDtls[3]", "a transaction of a batch entry has no amount"),
    "repeated id": (edited("<AcctSvcrRef>2026112000002<", "<AcctSvcrRef>2026112000001<"),
                    "Stmt[1]/Ntry[2]",
                    f"event id '{DE}:ref:2026112000001' is also Stmt[1]/Ntry[1]'s"),
    "a DOCTYPE": (edited('<?xml version="1.0" encoding="UTF-8"?>',
                         '<?xml version="1.0"?><!DOCTYPE Document [<!ENTITY e "x">]>'),
                  "line 1", "a DOCTYPE is not allowed"),
}


@pytest.mark.parametrize("case", REFUSED, ids=list(REFUSED))
def test_a_malformed_file_is_refused_in_one_line_naming_the_element(case):
    data, where, reason = REFUSED[case]
    with pytest.raises(FormatError) as raised:
        FORMATS["camt053"](data, "day.xml")
    error = raised.value
    assert error.where.startswith(where), error
    assert reason in error.reason, error
    assert "\n" not in str(error) and str(error).startswith("day.xml: ")


def test_an_external_entity_is_never_fetched_nor_expanded(tmp_path):
    secret = tmp_path / "secret.txt"
    secret.write_text("s3cret")
    doctype = f'<!DOCTYPE Document [<!ENTITY x SYSTEM "{secret.as_uri()}">]>'
    data = edited('<?xml version="1.0" encoding="UTF-8"?>', f'<?xml version="1.0"?>{doctype}')
    data = edited("<Id>STMT-20261120-0532013000</Id>", "<Id>&x;</Id>", data)
    with pytest.raises(FormatError, match="DOCTYPE is not allowed") as raised:
        FORMATS["camt053"](data, "day.xml")
    assert "s3cret" not in str(raised.value)


# -- event ids, over statements rendered at random -----------------------------------------


@dataclass(frozen=True)
class Drawn:
    """One entry of a drawn statement: its bank reference, or only an entry reference."""

    key: str
    by_bank: bool  # AcctSvcrRef (else NtryRef)
    parts: tuple[int, ...]  # minor units of its transactions, all of one sign; one = no batch

    @property
    def minor(self) -> int:
        return sum(self.parts)


def money(minor: int, currency: str) -> str:
    return f"{Decimal(abs(minor)).scaleb(-exponent(currency)):f}"


def indicator(minor: int) -> str:
    return "DBIT" if minor < 0 else "CRDT"


def render_entry(entry: Drawn, currency: str, version: str) -> str:
    status = "<Sts>BOOK</Sts>" if version == "02" else "<Sts><Cd>BOOK</Cd></Sts>"
    reference = (f"<AcctSvcrRef>{entry.key}</AcctSvcrRef>" if entry.by_bank else "")
    details = "".join(
        f'<TxDtls><AmtDtls><TxAmt><Amt Ccy="{currency}">{money(part, currency)}</Amt></TxAmt>'
        f"</AmtDtls><RmtInf><Ustrd>{entry.key} part {i}</Ustrd></RmtInf></TxDtls>"
        for i, part in enumerate(entry.parts, 1)) if len(entry.parts) > 1 else ""
    return (f"<Ntry>{'' if entry.by_bank else f'<NtryRef>{entry.key}</NtryRef>'}"
            f'<Amt Ccy="{currency}">{money(entry.minor, currency)}</Amt>'
            f"<CdtDbtInd>{indicator(entry.minor)}</CdtDbtInd>{status}"
            f"<BookgDt><Dt>2026-11-20</Dt></BookgDt>{reference}"
            f"{f'<NtryDtls>{details}</NtryDtls>' if details else ''}</Ntry>")


def render(entries: list[Drawn], *, currency: str = "EUR", version: str = "02",
           account: str = DE, statement_id: str = "S1", opening: int = 0) -> bytes:
    """A camt.053 statement of `entries` whose balances and summary add up."""
    net = sum(entry.minor for entry in entries)
    net_amount, net_indicator = money(net, currency), f"<CdtDbtInd>{indicator(net)}</CdtDbtInd>"
    net_figure = (f"<TtlNetNtryAmt>{net_amount}</TtlNetNtryAmt>{net_indicator}" if version == "02"
                  else f"<TtlNetNtry><Amt>{net_amount}</Amt>{net_indicator}</TtlNetNtry>")
    balances = "".join(
        f"<Bal><Tp><CdOrPrtry><Cd>{code}</Cd></CdOrPrtry></Tp>"
        f'<Amt Ccy="{currency}">{money(minor, currency)}</Amt>'
        f"<CdtDbtInd>{indicator(minor)}</CdtDbtInd><Dt><Dt>2026-11-20</Dt></Dt></Bal>"
        for code, minor in (("OPBD", opening), ("CLBD", opening + net)))
    summary = f"<TxsSummry><TtlNtries><NbOfNtries>{len(entries)}</NbOfNtries>{net_figure}" \
              "</TtlNtries></TxsSummry>"
    body = "".join(render_entry(entry, currency, version) for entry in entries)
    return (f'<?xml version="1.0" encoding="UTF-8"?><Document '
            f'xmlns="urn:iso:std:iso:20022:tech:xsd:camt.053.001.{version}"><BkToCstmrStmt>'
            f"<GrpHdr><MsgId>M</MsgId><CreDtTm>2026-11-20T22:00:00Z</CreDtTm></GrpHdr>"
            f"<Stmt><Id>{statement_id}</Id><Acct><Id><IBAN>{account}</IBAN></Id></Acct>"
            f"{balances}{summary}{body}</Stmt></BkToCstmrStmt></Document>").encode()


def drawn_entries(max_size: int = 8) -> st.SearchStrategy[list[Drawn]]:
    def entry(key: str) -> st.SearchStrategy[Drawn]:
        sign = st.sampled_from([1, -1])
        parts = st.lists(st.integers(1, 10**9), min_size=1, max_size=3)
        return st.builds(lambda by_bank, s, ps: Drawn(key, by_bank, tuple(s * p for p in ps)),
                         st.booleans(), sign, parts)

    key = st.from_regex(r"[A-Z0-9]{1,16}", fullmatch=True)
    keys = st.lists(key, max_size=max_size, unique=True)
    return keys.flatmap(lambda ks: st.tuples(*(entry(k) for k in ks)).map(list))


def ids_by_position(statements: list[Statement]) -> dict[int, list[str]]:
    """The event ids of each Ntry, by its position in the statement."""
    [statement] = statements
    found: dict[int, list[str]] = {}
    for entry in statement.entries:
        position = int(re.match(r"Stmt\[1\]/Ntry\[(\d+)\]", entry.where).group(1))
        found.setdefault(position, []).append(entry.event_id)
    return found


CURRENCIES = st.sampled_from(["EUR", "JPY", "KWD"])
VERSIONS = st.sampled_from(["02", "08"])


@settings(max_examples=150, deadline=None)
@given(drawn_entries(), CURRENCIES, VERSIONS, st.integers(-10**12, 10**12))
def test_the_same_bytes_give_equal_statements_with_unique_ids(entries, currency, version, opening):
    data = render(entries, currency=currency, version=version, opening=opening)
    first, second = FORMATS["camt053"](data, "a.xml"), FORMATS["camt053"](bytes(bytearray(data)), "b.xml")
    assert first == second
    [statement] = first
    ids = [entry.event_id for entry in statement.entries]
    assert len(ids) == len(set(ids))
    assert [entry.amount for entry in statement.entries] == [
        Decimal(part).scaleb(-exponent(currency)) for drawn in entries for part in drawn.parts]
    assert gaps(statement) == []


@settings(max_examples=150, deadline=None)
@given(drawn_entries(), st.data(), VERSIONS)
def test_an_entrys_id_does_not_change_when_other_entries_are_added_or_removed(
        entries, data, version):
    kept = data.draw(st.lists(st.sampled_from(entries), unique=True) if entries else st.just([]))
    kept.sort(key=entries.index)
    whole = ids_by_position(FORMATS["camt053"](render(entries, version=version), "whole.xml"))
    part = ids_by_position(FORMATS["camt053"](render(kept, version=version), "part.xml"))
    for position, entry in enumerate(kept, 1):
        assert part[position] == whole[entries.index(entry) + 1]


@settings(max_examples=100, deadline=None)
@given(drawn_entries())
def test_a_bank_reference_gives_the_same_id_in_any_statement_and_version(entries):
    by_bank = [entry for entry in entries if entry.by_bank]
    one = FORMATS["camt053"](render(by_bank, version="02", statement_id="EOD-1"), "one.xml")
    other = FORMATS["camt053"](render(by_bank, version="08", statement_id="EOD-2"), "other.xml")
    assert [e.event_id for e in one[0].entries] == [e.event_id for e in other[0].entries]


@settings(max_examples=100, deadline=None)
@given(drawn_entries())
def test_two_accounts_never_share_an_id(entries):
    one = FORMATS["camt053"](render(entries, account=DE), "one.xml")
    other = FORMATS["camt053"](render(entries, account="NL91ABNA0417164300"), "other.xml")
    assert not {e.event_id for e in one[0].entries} & {e.event_id for e in other[0].entries}
