"""Statements into contract records: what `tally ingest` publishes for what a file states."""

from __future__ import annotations

from datetime import date, datetime, timezone
from decimal import Decimal

import msgspec
import pytest
from hypothesis import given, strategies as st

from flows.cli.ingest import FORMAT_NAMES
from flows.ingest.formats import FORMATS
from flows.ingest.publish import progress_us
from flows.ingest.records import FileRecords, Options, Refusal, encode, file_records
from flows.ingest.statement import MAX_EVENT_ID, short_id as event_id
from flows.ingest.statement import PAYOUT, Entry, Statement
from state.config import MatchConfig
from state.contract import Decoder, Event, Invalid

SOURCE_TOPICS = {"bank": "t.bank", "processor": "t.processor", "ledger": "t.ledger"}
CONFIG = MatchConfig(topics=SOURCE_TOPICS)
OPTIONS = Options("bank", {"DE89370400440532013000": "shop-eu"})


def credit(ref: str, amount: str, day=date(2026, 11, 20), **extra) -> Entry:
    return Entry(event_id=f"DE89|{ref}", account="DE89370400440532013000", currency="EUR",
                 amount=Decimal(amount), booked=day, where=f"entry {ref}", **extra)


def statement(*entries: Entry, opening="0.00", closing=None, closing_date=date(2026, 11, 20)):
    total = sum((e.amount for e in entries), Decimal(0))
    return Statement(id="S1", account="DE89370400440532013000", currency="EUR",
                     entries=entries, where="Stmt[1]", opening=Decimal(opening),
                     closing=Decimal(closing) if closing is not None else Decimal(opening) + total,
                     closing_date=closing_date)


def day(d: int) -> int:
    return int(datetime(2026, 11, d, tzinfo=timezone.utc).timestamp()) * 1_000_000


def decoded(record: dict):
    return Decoder(CONFIG).decode(encode(record), "t.bank", 0, 7)


def test_every_format_of_the_command_line_has_a_parser():
    assert sorted(FORMAT_NAMES) == sorted(FORMATS)


def test_a_booked_credit_becomes_a_contract_transaction_at_the_end_of_its_day():
    done = file_records("f.xml", [statement(credit("A1", "220.25", reference="PAYOUT TX44XT"))], OPTIONS)
    [record] = done.records
    event = decoded(record)
    assert isinstance(event, Event), event
    assert (event.account, event.amount_minor, event.currency, event.event_id, event.reference) == \
        ("shop-eu", 22025, "EUR", "DE89|A1", "PAYOUT TX44XT")
    assert event.time_us == int(datetime(2026, 11, 20, 23, 59, 59, 999999,
                                         tzinfo=timezone.utc).timestamp() * 1_000_000)
    assert done.heartbeat_us == int(datetime(2026, 11, 21, tzinfo=timezone.utc).timestamp()) * 1_000_000


def test_the_value_date_is_the_event_time_when_asked_and_known():
    entry = credit("A1", "5.00", value=date(2026, 11, 19))
    records = file_records("f", [statement(entry)], Options("bank", OPTIONS.accounts, time_field="value"))
    assert records.records[0]["event_time"].startswith("2026-11-19T23:59:59")


def test_an_account_the_table_does_not_name_refuses_the_file():
    with pytest.raises(Refusal) as refused:
        file_records("f.xml", [statement(credit("A1", "1.00"))], Options("bank", {}))
    assert "'DE89370400440532013000'" in str(refused.value) and "[accounts]" in str(refused.value)
    assert "\n" not in str(refused.value) and refused.value.exit_code == 1


def test_an_unbalanced_statement_refuses_the_file_or_publishes_its_gap_as_an_exception():
    unbalanced = statement(credit("A1", "10.00"), closing="10.10")
    with pytest.raises(Refusal) as refused:
        file_records("f.xml", [unbalanced], OPTIONS)
    assert "difference +0.10" in str(refused.value) and "nothing of the file" in str(refused.value)

    accepted = file_records("f.xml", [unbalanced], Options("bank", OPTIONS.accounts,
                                                           accept_unbalanced=True))
    gap, entry = accepted.records
    assert isinstance(decoded(entry), Event)
    invalid = decoded(gap)
    assert isinstance(invalid, Invalid) and "difference +0.10" in invalid.reason
    assert invalid.raw == encode(gap)


def test_a_payout_carries_its_batch_and_no_fee_or_key():
    payout = Entry(event_id="P1", account="M", currency="EUR", amount=Decimal("49.10"),
                   booked=datetime(2026, 11, 17, 4, tzinfo=timezone.utc), where="line 9",
                   kind=PAYOUT, batch_id="41", reference="TX55XT")
    report = Statement(id="M:41:EUR", account="M", currency="EUR", entries=(payout,), where="batch 41")
    done = file_records("r.csv", [report], Options("processor", {"M": "shop-eu"}))
    record = done.records[0]
    assert record["type"] == "payout" and record["batch_id"] == "41" and "fee" not in record
    assert done.heartbeat_us is None  # an acquirer report says nothing of the bank's progress


def test_a_partition_is_in_as_far_as_its_slowest_account_has_reached():
    def beat(accounts: set[str], closing_day: int) -> FileRecords:
        return FileRecords("f", [], day(closing_day + 1), [], frozenset(accounts))

    def one_partition(account: str) -> int:
        return 0

    def by_name(account: str) -> int:
        return ord(account[0]) - ord("a")

    # one account's statements of three days: in up to the last
    assert progress_us([beat({"a"}, 20), beat({"a"}, 22), beat({"a"}, 21)], one_partition) == {0: day(23)}
    # two accounts in one partition: the one that reached less holds it back
    assert progress_us([beat({"a"}, 22), beat({"b"}, 20)], one_partition) == {0: day(21)}
    # in two partitions, each goes as far as its own account
    assert progress_us([beat({"a"}, 22), beat({"b"}, 20)], by_name) == {0: day(23), 1: day(21)}
    # a file without a closing date says nothing of any partition
    assert progress_us([beat({"a"}, 22), FileRecords("r", [], None, [], frozenset({"b"}))],
                       by_name) == {}


@given(st.text(min_size=1, max_size=400))
def test_an_event_id_fits_the_contract_and_tells_long_ids_apart(raw):
    shortened = event_id(raw)
    assert len(shortened) <= MAX_EVENT_ID
    assert (shortened == raw) == (len(raw) <= MAX_EVENT_ID)
    if len(raw) > MAX_EVENT_ID:
        assert event_id(raw + "x") != shortened


def test_records_encode_deterministically():
    one = file_records("f", [statement(credit("A1", "1.00"), credit("A2", "2.00"))], OPTIONS)
    two = file_records("f", [statement(credit("A1", "1.00"), credit("A2", "2.00"))], OPTIONS)
    assert [encode(r) for r in one.records] == [encode(r) for r in two.records]
    assert msgspec.json.decode(encode(one.records[0]))["amount"] == "1.00"
