"""`tally explain` on a real run: a generated day with hostile lines, through a real broker,
the real flow, PostgreSQL and Parquet; every expectation is read back from PostgreSQL. And a
generated settlement day, whose payouts and items are each in two relations' decisions."""

from __future__ import annotations

import argparse
import base64
import json
import tempfile
import tomllib
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

import msgspec
import pytest

from flows.kafka import dayfiles

from flows.checks import explain
from flows.cli.explain import add_explain

from flows.kafka import kafka_io
from flows.dev.generate import generate_day
from flows.dev.settlement_day import generate_settlement
from flows.logs import UserError
from sinks.stores import us as _us
from state.config import MatchConfig, from_toml, to_toml
from state.contract import Decoder, format_us
from state.verdicts import format_minor
from tests.flow_helpers import read_decisions, read_fates, tally, unique_topics, write_config

PAYMENTS = 3000
NS, NS_OPEN = "explain_t", "explain_open"  # run with --flush, and without
NOT_JSON = b"not json"
BINARY = b"\xff\xfe\x00\x01 hostile \x1b[31m"
CONTROL = b'{"oops": "\x1b[2J"}'  # a raw control character inside a JSON string: invalid


@dataclass
class Day:
    work: Path
    config: Path
    bank: str  # the bank topic; every hand-written line is in its partition 0
    lines: list[bytes]  # bank partition 0, offset = index
    first: int  # a clean event's first delivery ...
    again: int  # ... and its redelivery
    long: int  # an invalid event with a 3,000-character reference
    late_open: int  # an event after the final heartbeat: pending unless flushed

    def ref(self, offset: int) -> str:
        return f"{self.bank}:0:{offset}"


def _event(event_id: str, time: str, reference: str | None = None) -> bytes:
    obj = {"type": "transaction", "source": "bank", "event_id": event_id, "account": "ACC-EXPLAIN",
           "amount": "42.00", "currency": "EUR", "event_time": time}
    return msgspec.json.encode(obj | ({"reference": reference} if reference else {}))


def _hostile(path: Path, truth: Path, bank: str) -> tuple[list[bytes], int]:
    """Partition 0 of the bank topic with invalid lines, a redelivery and a last open event;
    and the offset of the clean line copied."""
    lines = dayfiles.read_values(path)
    labels = [msgspec.json.decode(line) for line in truth.read_bytes().splitlines()]
    j = next(t["offset"] for t in labels if t["topic"] == bank and t["partition"] == 0
             and t["clean"] and t["offset"] >= 20)
    final = datetime.fromisoformat(msgspec.json.decode(lines[-1])["event_time"])
    long = _event("bank-long-1", "2026-11-21T00:10:00Z", "R" * 3000)
    open_ = _event("bank-open-1", (final - timedelta(seconds=60)).isoformat())
    edited = (lines[:10] + [NOT_JSON, BINARY, CONTROL, long] + lines[10:j + 6] + [lines[j]]
              + lines[j + 6:] + [open_])
    path.write_bytes(b"\n".join(edited) + b"\n")
    return edited, j + 4


@pytest.fixture(scope="module")
def day(broker) -> Day:
    work = Path(tempfile.mkdtemp(prefix="tally-explain-"))
    topics = unique_topics()
    bank, day_dir = topics["bank"], work / "day"
    generate_day(day_dir, PAYMENTS, seed=5, topics=topics)
    lines, first = _hostile(day_dir / bank / "0.jsonl", day_dir / "truth.jsonl", bank)
    assert lines[first] == lines[first + 6] and lines.count(lines[first]) == 2
    config = write_config(work / "tally.toml", topics)
    kafka_io.create_topics(broker, list(topics.values()), 3)
    kafka_io.produce_day(broker, day_dir, list(topics.values()), progress=False)
    return Day(work, config, bank, lines, first, first + 6,
               next(i for i, line in enumerate(lines) if b"bank-long-1" in line), len(lines) - 1)


def _run(day: Day, broker: str, pg_dsn: str, namespace: str, *flush: str) -> Day:
    tally("run", "--brokers", broker, "--pg", pg_dsn, "--data-dir", str(day.work / "data"),
          "--namespace", namespace, "--until-end", *flush, "--config", str(day.config))
    return day


@pytest.fixture(scope="module")
def flushed(day, broker, pg_dsn) -> Day:
    return _run(day, broker, pg_dsn, NS, "--flush")


@pytest.fixture(scope="module")
def stored(flushed, pg_dsn) -> tuple[dict, dict]:
    """What PostgreSQL holds: decisions by id, fates by ref."""
    decisions = {d["decision_id"]: d for d in read_decisions(pg_dsn, NS)}
    fates = {f"{f['topic']}:{f['partition']}:{f['offset']}": f for f in read_fates(pg_dsn, NS)}
    return decisions, fates


def run_explain(capsys, day: Day, pg_dsn: str, record: str, *options: str,
                namespace: str = NS) -> tuple[int, str]:
    parser = argparse.ArgumentParser()
    add_explain(parser.add_subparsers())
    args = parser.parse_args(["explain", record, "--namespace", namespace, "--data-dir",
                              str(day.work / "data"), "--pg", pg_dsn, "--config", str(day.config),
                              *options])
    rc = args.handler(args)
    return rc, capsys.readouterr().out


def as_json(capsys, day, pg_dsn, record, *options, namespace=NS) -> tuple[int, dict]:
    rc, out = run_explain(capsys, day, pg_dsn, record, "--json", *options, namespace=namespace)
    return rc, json.loads(out)


def check_decision(got: dict, row: dict) -> None:
    """The explained decision is the stored one, field by field."""
    for name in ("decision_id", "kind", "tier", "exception_kind", "account", "currency",
                 "amount_minor", "confidence", "reason", "raw_base64", "relation", "fee_minor"):
        assert got[name] == row[name], name
    assert got["missing_sources"] == list(row["missing_sources"])
    assert [m["ref"] for m in got["members"]] == list(row["member_refs"])
    labels = [m["label"] for m in got["members"]]
    assert labels == (list(row["member_event_ids"]) or [None] * len(labels))
    assert [(c["label"], c["ref"], c["confidence"]) for c in got["candidates"]] == \
        [(c["event"], c["ref"], c["confidence"]) for c in row["candidates"]]
    assert got["window_start"] == format_us(_us(row["window_start"]))
    assert got["window_end"] == format_us(_us(row["window_end"]))


def first_fate(stored, test) -> dict:
    decisions, fates = stored
    return next(f for ref, f in sorted(fates.items())
                if f["decision_id"] and test(f, decisions[f["decision_id"]]))


def test_a_matched_record_shows_its_decision_members_and_rule(capsys, flushed, stored, pg_dsn):
    fate = first_fate(stored, lambda f, d: d["tier"] == 1 and len(d["member_refs"]) == 3)
    row = stored[0][fate["decision_id"]]
    ref = f"{fate['topic']}:{fate['partition']}:{fate['offset']}"
    rc, out = run_explain(capsys, flushed, pg_dsn, ref)
    assert rc == 0
    assert out.startswith(f"{ref}  matched")
    for member, label in zip(row["member_refs"], row["member_event_ids"]):
        assert f"{member}  {label}  " in out
    for text in (row["decision_id"], explain.TIER_RULES[1], row["reason"],
                 format_us(_us(row["window_end"])),
                 format_us(_us(row["window_end"]) + 120_000_000), "window_end + allowed_lateness"):
        assert text in out
    rc, got = as_json(capsys, flushed, pg_dsn, ref)
    record = got["records"][0]
    check_decision(record["decision"], row)
    assert {m["amount_minor"] for m in record["decision"]["members"]} == {row["amount_minor"]}
    assert all(m["event_time"] for m in record["decision"]["members"])
    assert record["fate"]["outcome"] == "matched" and record["rule"] == explain.TIER_RULES[1]


def test_tier_2_and_exceptions_with_candidates(capsys, flushed, stored, pg_dsn):
    tier2 = first_fate(stored, lambda f, d: d["tier"] == 2)
    scored = first_fate(stored, lambda f, d: bool(d["candidates"]))
    assert stored[0][scored["decision_id"]]["kind"] == "exception"
    for fate in (tier2, scored):
        row = stored[0][fate["decision_id"]]
        ref = f"{fate['topic']}:{fate['partition']}:{fate['offset']}"
        rc, got = as_json(capsys, flushed, pg_dsn, ref)
        assert rc == 0
        check_decision(got["records"][0]["decision"], row)
        assert got["records"][0]["rule"] == explain.rule_text(row, MatchConfig())
        rc, out = run_explain(capsys, flushed, pg_dsn, ref)
        for c in row["candidates"]:
            assert f"{c['ref']}  {c['event']}  confidence {c['confidence']:g}" in out


def test_lookup_by_event_id_explains_every_delivery_in_log_order(capsys, flushed, stored, pg_dsn):
    first, again = flushed.ref(flushed.first), flushed.ref(flushed.again)
    fate = stored[1][first]
    label = f"{fate['source']}:{fate['event_id']}"
    rc, got = as_json(capsys, flushed, pg_dsn, label)
    assert rc == 0
    assert [r["ref"] for r in got["records"]] == [first, again]
    assert [r["fate"]["outcome"] for r in got["records"]] == ["matched", "redelivery"]
    by_ref = as_json(capsys, flushed, pg_dsn, first)[1]["records"][0]
    assert got["records"][0] == by_ref
    rc, out = run_explain(capsys, flushed, pg_dsn, label)
    assert out.splitlines()[0].startswith(f"2 records with event id {label}, in log order")
    assert out.index(f"\n{first}  matched") < out.index(f"\n{again}  redelivery")


def test_a_redelivery_names_its_first_delivery(capsys, flushed, stored, pg_dsn):
    first, again = flushed.ref(flushed.first), flushed.ref(flushed.again)
    fate = stored[1][again]
    assert fate["outcome"] == "redelivery"
    rc, out = run_explain(capsys, flushed, pg_dsn, again)
    assert rc == 0
    assert f"first       delivery at {first} ({fate['source']}:{fate['event_id']})" in out
    assert "its fate points at the first delivery's decision" in out
    record = as_json(capsys, flushed, pg_dsn, again)[1]["records"][0]
    assert record["first_delivery"]["ref"] == first
    check_decision(record["decision"], stored[0][fate["decision_id"]])
    assert record["archive"]["value_base64"] == \
        base64.b64encode(flushed.lines[flushed.first]).decode()


@pytest.mark.parametrize("line", [NOT_JSON, BINARY, CONTROL])
def test_an_invalid_record_shows_its_reason_and_raw_bytes(capsys, flushed, stored, pg_dsn, line):
    ref = flushed.ref(flushed.lines.index(line))
    fate = stored[1][ref]
    row = stored[0][fate["decision_id"]]
    assert fate["outcome"] == "invalid" and base64.b64decode(row["raw_base64"]) == line
    rc, out = run_explain(capsys, flushed, pg_dsn, ref)
    assert rc == 0 and row["reason"] in out and explain.KIND_RULES["invalid"] in out
    shown = explain.preview(line)
    assert f"value       {shown}" in out and f"raw bytes   {shown}" in out
    assert "\x1b" not in out  # control characters are escaped, never sent to the terminal
    record = as_json(capsys, flushed, pg_dsn, ref)[1]["records"][0]
    check_decision(record["decision"], row)
    assert base64.b64decode(record["archive"]["value_base64"]) == line


def test_binary_values_are_shown_as_base64():
    assert explain.preview(BINARY) == \
        f"{len(BINARY)} bytes, not UTF-8, base64: {base64.b64encode(BINARY).decode()}"
    assert explain.preview(CONTROL) == f'{len(CONTROL)} bytes, UTF-8: {{"oops": "\\x1b[2J"}}'


def test_json_gives_the_raw_value_whole(capsys, flushed, stored, pg_dsn):
    ref, line = flushed.ref(flushed.long), flushed.lines[flushed.long]
    rc, out = run_explain(capsys, flushed, pg_dsn, ref)
    assert f"(truncated; {len(line):,} bytes in all)" in out and len(out) < len(line)
    assert "reference must be 1 to 256 characters, got 3000" in out
    rc, got = as_json(capsys, flushed, pg_dsn, ref)
    archived = got["records"][0]["archive"]
    assert base64.b64decode(archived["value_base64"]) == line
    assert archived["value_length"] == len(line) and archived["key_base64"] == \
        base64.b64encode(b"ACC-EXPLAIN").decode()


def test_parquet_gives_the_same_explanation_as_postgres(capsys, flushed, stored, pg_dsn):
    records = [flushed.ref(o) for o in (flushed.first, flushed.again, flushed.long,
                                        flushed.late_open, flushed.lines.index(NOT_JSON), 0)]
    fate = stored[1][flushed.ref(flushed.first)]
    records.append(f"{fate['source']}:{fate['event_id']}")
    for record in records:
        from_pg = as_json(capsys, flushed, pg_dsn, record)
        from_parquet = as_json(capsys, flushed, pg_dsn, record, "--store", "parquet")
        assert from_pg == from_parquet and from_pg[0] == 0


def test_a_heartbeat_needs_no_decision(capsys, flushed, stored, pg_dsn):
    ref = next(r for r, f in sorted(stored[1].items()) if f["outcome"] == "heartbeat")
    rc, out = run_explain(capsys, flushed, pg_dsn, ref)
    assert rc == 0 and f"{ref}  heartbeat" in out and "needs no decision" in out
    assert "decision    " not in out


def test_a_flushed_window_and_a_pending_record(capsys, day, flushed, stored, broker, pg_dsn):
    ref = day.ref(day.late_open)
    row = stored[0][stored[1][ref]["decision_id"]]
    assert row["exception_kind"] == "missing_counterpart"
    rc, out = run_explain(capsys, flushed, pg_dsn, ref)
    assert rc == 0 and "--flush decides the windows still" in out
    _run(day, broker, pg_dsn, NS_OPEN)
    for record in (ref, "bank:bank-open-1"):
        rc, got = as_json(capsys, day, pg_dsn, record, namespace=NS_OPEN)
        assert rc == 0 and [r["status"] for r in got["records"]] == ["pending"]
        assert got["records"][0]["ref"] == ref and got["records"][0]["fate"] is None
        assert got["records"][0]["watermark"].startswith("decided at the latest once")
        rc, out = run_explain(capsys, day, pg_dsn, record, "--store", "parquet",
                              namespace=NS_OPEN)
        assert rc == 0 and f"{ref}  pending" in out and "waits for its window" in out


def test_an_unknown_record_exits_1(capsys, flushed, pg_dsn):
    end = len(flushed.lines)
    rc, out = run_explain(capsys, flushed, pg_dsn, flushed.ref(end + 5))
    assert rc == 1
    assert out.startswith(f"{flushed.ref(end + 5)}: never consumed in namespace {NS}")
    assert f"offsets 0..{end - 1} of {flushed.bank}:0 ({end:,} records)" in out
    rc, got = as_json(capsys, flushed, pg_dsn, "bank:no-such-event")
    assert rc == 1 and got["found"] is False and got["records"] == []
    rc, out = run_explain(capsys, flushed, pg_dsn, f"{flushed.bank}:7:0")
    assert rc == 1 and "holds no record of" in out


def test_errors_are_one_line_without_the_password(capsys, flushed, pg_dsn):
    with pytest.raises(UserError, match="neither TOPIC:PARTITION:OFFSET nor SOURCE:EVENT_ID"):
        run_explain(capsys, flushed, pg_dsn, "nonsense")
    with pytest.raises(UserError) as err:
        run_explain(capsys, flushed, "postgresql://tally:sekrit@127.0.0.1:1/tally", "bank:x")
    assert "sekrit" not in str(err.value) and "cannot read namespace" in str(err.value)
    with pytest.raises(UserError, match="namespace nowhere does not exist"):
        run_explain(capsys, flushed, pg_dsn, "bank:x", namespace="nowhere")


# ----------------------------------------------------------------------------- settlement
# A record in two relations: a payout is in its batch (its fate) and in its deposit; an
# item in its payment's match (its fate) and in its batch; a bank credit in its deposit only.

ROOT = Path(__file__).resolve().parent.parent
SETTLEMENT = from_toml(tomllib.loads((ROOT / "docs/examples/settlement.toml").read_text()))
NS_SETTLE = "explain_settle"
KEYS = {"ref", "topic", "partition", "offset", "status", "archive", "fate", "decision",
        "outcome_rule", "rule", "watermark", "first_delivery", "notes"}  # without relations


@dataclass
class Settled:
    day: Day  # work and config, for run_explain
    config: MatchConfig
    topics: dict[str, str]
    decisions: dict[str, dict]  # by id, as PostgreSQL stores them
    fates: dict[str, dict]  # by ref
    listing: dict[str, list[dict]]  # ref -> the decisions listing it

    def relation(self, ref: str) -> str | None:
        fate = self.fates[ref]
        return fate["decision_id"] and self.decisions[fate["decision_id"]]["relation"]

    def listed_in(self, ref: str, relation: str) -> list[dict]:
        return [d for d in self.listing[ref] if d["relation"] == relation]


@pytest.fixture(scope="module")
def settled(broker, pg_dsn) -> Settled:
    work = Path(tempfile.mkdtemp(prefix="tally-explain-settle-"))
    topics = unique_topics()
    generate_settlement(work / "day", 300, seed=3, topics=topics)
    config = msgspec.structs.replace(SETTLEMENT, topics=topics)
    (work / "settlement.toml").write_text(to_toml(config))
    kafka_io.create_topics(broker, list(topics.values()), 3)
    kafka_io.produce_day(broker, work / "day", list(topics.values()), progress=False)
    day = Day(work, work / "settlement.toml", topics["bank"], [], 0, 0, 0, 0)
    _run(day, broker, pg_dsn, NS_SETTLE, "--flush")
    decisions = {d["decision_id"]: d for d in read_decisions(pg_dsn, NS_SETTLE)}
    fates = {f"{f['topic']}:{f['partition']}:{f['offset']}": f for f in read_fates(pg_dsn, NS_SETTLE)}
    listing: dict[str, list[dict]] = {}
    for d in decisions.values():
        for ref in d["member_refs"]:
            listing.setdefault(ref, []).append(d)
    return Settled(day, config, topics, decisions, fates, listing)


def _settle_json(capsys, s: Settled, pg_dsn, ref) -> dict:
    """The record's JSON explanation, the same from PostgreSQL and from Parquet."""
    rc, from_pg = as_json(capsys, s.day, pg_dsn, ref, namespace=NS_SETTLE)
    rc2, from_parquet = as_json(capsys, s.day, pg_dsn, ref, "--store", "parquet",
                                namespace=NS_SETTLE)
    assert rc == rc2 == 0 and from_pg == from_parquet
    return from_pg["records"][0]


def _settle_text(capsys, s: Settled, pg_dsn, ref) -> str:
    rc, from_pg = run_explain(capsys, s.day, pg_dsn, ref, namespace=NS_SETTLE)
    rc2, from_parquet = run_explain(capsys, s.day, pg_dsn, ref, "--store", "parquet",
                                    namespace=NS_SETTLE)
    assert rc == rc2 == 0
    assert from_pg.split("\n", 1)[1] == from_parquet.split("\n", 1)[1]  # the same but where
    return from_pg


def _money(minor: int, currency: str) -> str:
    return f"{format_minor(minor, currency)} {currency}"


def _check_sums(sums: dict, row: dict) -> None:
    """The sums explain added up against the ones the engine wrote into its reason."""
    cur = sums["currency"]
    assert cur == row["currency"] and sums["unread"] == 0
    assert sums["nets_minor"] == sums["gross_minor"] - sums["fees_minor"]
    assert sums["difference_minor"] == sums["payout_minor"] - sums["nets_minor"]
    assert sums["items"] + sums["payouts"] == len(row["member_refs"])
    assert f"net {_money(sums['nets_minor'], cur)} (gross {_money(sums['gross_minor'], cur)}, " \
           f"fees {_money(sums['fees_minor'], cur)})" in row["reason"]
    if row["kind"] == "match":
        assert sums["payout_minor"] == row["amount_minor"] and sums["difference_minor"] == 0


def _a_payout(s: Settled, test=lambda batch, deposit: True) -> str:
    """A payout whose batch settled and whose deposit matched its bank credit."""
    return next(ref for ref, fate in sorted(s.fates.items())
                if s.relation(ref) == "batches" and fate["topic"] == s.topics["processor"]
                and s.decisions[fate["decision_id"]]["kind"] == "match"
                and [d["kind"] for d in s.listed_in(ref, "deposits")] == ["match"]
                and test(s.decisions[fate["decision_id"]], s.listed_in(ref, "deposits")[0]))


def test_a_payout_shows_its_batch_with_the_sums_and_its_deposit(capsys, settled, pg_dsn):
    s = settled
    ref = _a_payout(s)
    batch = s.decisions[s.fates[ref]["decision_id"]]
    (deposit,) = s.listed_in(ref, "deposits")
    (credit,) = [m for m in deposit["member_refs"] if m.startswith(s.topics["bank"] + ":")]
    record = _settle_json(capsys, s, pg_dsn, ref)
    check_decision(record["decision"], batch)
    assert record["decision"]["relation"] == "batches"
    _check_sums(record["decision"]["sums"], batch)
    assert record["other_relations"] == ["deposits"]
    (other,) = record["other_decisions"]
    check_decision(other, deposit)
    assert other["sums"] is None and other["rule"] == explain.rule_text(deposit, s.config)
    assert record["rule"].startswith("batch, tier 1: the payout of the batch pays exactly")
    assert other["rule"].startswith(f"deposit, tier {deposit['tier']}: ")
    assert "booked 0d to 5d after it" in other["rule"]
    assert credit in [m["ref"] for m in other["members"]]
    assert all(m["archived"] and m["amount_minor"] is not None for m in other["members"])
    text = _settle_text(capsys, s, pg_dsn, ref)
    sums = record["decision"]["sums"]
    cur = sums["currency"]
    for line in (f"{ref}  matched",
                 f"  sums        payout {_money(sums['payout_minor'], cur)} (1 payout); "
                 f"{sums['items']} item{'' if sums['items'] == 1 else 's'}: gross "
                 f"{_money(sums['gross_minor'], cur)}, fees {_money(sums['fees_minor'], cur)}, "
                 f"nets {_money(sums['nets_minor'], cur)}; difference {_money(0, cur)}",
                 f"  also in     relation deposits: decision {deposit['decision_id']}",
                 f"    reason      {deposit['reason']}"):
        assert line in text, line
    also = text[text.index("  also in"):]
    assert f"        {credit}  " in also and f"{ref}  " in also and "<- this record" in also
    assert "relation batches's window" not in text and "match_window is" not in text


def test_a_settlement_mismatch_shows_the_difference(capsys, settled, pg_dsn):
    s = settled
    ref = next(ref for ref, fate in sorted(s.fates.items())
               if s.relation(ref) == "batches" and fate["topic"] == s.topics["processor"]
               and s.decisions[fate["decision_id"]]["exception_kind"] == "settlement_mismatch")
    row = s.decisions[s.fates[ref]["decision_id"]]
    record = _settle_json(capsys, s, pg_dsn, ref)
    sums = record["decision"]["sums"]
    assert record["rule"] == explain.BATCH_RULES["settlement_mismatch"]
    _check_sums(sums, row)
    assert sums["difference_minor"] != 0
    assert f"difference {_money(sums['difference_minor'], sums['currency'])}" in row["reason"]


def test_an_item_shows_its_payment_match_and_its_batch(capsys, settled, pg_dsn):
    s = settled
    ref = next(ref for ref, fate in sorted(s.fates.items())
               if fate["topic"] == s.topics["processor"] and s.relation(ref) == "payments"
               and s.decisions[fate["decision_id"]]["kind"] == "match"
               and len(s.listed_in(ref, "batches")) == 1)
    payment = s.decisions[s.fates[ref]["decision_id"]]
    (batch,) = s.listed_in(ref, "batches")
    record = _settle_json(capsys, s, pg_dsn, ref)
    check_decision(record["decision"], payment)
    assert record["decision"]["sums"] is None
    assert record["other_relations"] == ["batches"]
    (other,) = record["other_decisions"]
    check_decision(other, batch)
    _check_sums(other["sums"], batch)
    text = _settle_text(capsys, s, pg_dsn, ref)
    assert f"  also in     relation batches: decision {batch['decision_id']}" in text
    assert "    sums        payout " in text and "payments" not in text.split("also in", 1)[1]


def test_a_bank_credit_is_in_its_deposit_only(capsys, settled, pg_dsn):
    s = settled
    ref = next(ref for ref, fate in sorted(s.fates.items())
               if fate["topic"] == s.topics["bank"] and s.relation(ref) == "deposits")
    record = _settle_json(capsys, s, pg_dsn, ref)
    assert record["decision"]["relation"] == "deposits"
    assert record["other_relations"] == [] and record["other_decisions"] == []
    assert "also in" not in _settle_text(capsys, s, pg_dsn, ref)


def test_other_decisions_are_looked_up_in_a_window_end_range(settled, pg_dsn):
    """Both stores find a record's decisions by ref only inside the range; a record not in
    the archive is placed by its fate's window_end."""
    s = settled
    ref = _a_payout(s)
    listing = sorted(d["decision_id"] for d in s.listing[ref])
    ends = [_us(d["window_end"]) for d in s.listing[ref]]
    archive = explain.ArchiveReader(s.day.work / "data" / NS_SETTLE)
    event = explain._decoded(archive.rows([ref]), Decoder(s.config))[ref]
    for store in (explain.PgStore(pg_dsn, NS_SETTLE),
                  explain.ParquetStore(s.day.work / "data", NS_SETTLE)):
        with store:
            found = store.decisions_with_member(ref, min(ends), max(ends) + 1)
            assert sorted(d["decision_id"] for d in found) == listing
            assert [d["decision_id"] for d in
                    store.decisions_with_member(ref, min(ends), max(ends))] != listing
            assert store.decisions_with_member(ref, max(ends) + 1, max(ends) + 2 * 86_400_000_000) == []
            src = explain.Sources(store, archive, s.config)
            fate = s.fates[ref] | {"window_end": _us(s.fates[ref]["window_end"])}
            decision = store.decision(fate["decision_id"], fate["window_end"])
            by_event = explain._others(src, ref, event, fate, decision)
            by_fate = explain._others(src, ref, None, fate, decision)
            assert by_event == by_fate and by_event[1] == ("deposits",)
            assert [d["relation"] for d in by_event[0]] == ["deposits"]


def test_a_config_without_relations_explains_as_before(capsys, flushed, stored, pg_dsn,
                                                       monkeypatch):
    def no_lookup(*args):
        raise AssertionError("a config without relations looked for other decisions")
    monkeypatch.setattr(explain.PgStore, "decisions_with_member", no_lookup)
    monkeypatch.setattr(explain.ParquetStore, "decisions_with_member", no_lookup)
    fate = first_fate(stored, lambda f, d: d["tier"] == 1 and len(d["member_refs"]) == 3)
    ref = f"{fate['topic']}:{fate['partition']}:{fate['offset']}"
    for store in ("postgres", "parquet"):
        rc, got = as_json(capsys, flushed, pg_dsn, ref, "--store", store)
        (record,) = got["records"]
        assert rc == 0 and set(record) == KEYS and "sums" not in record["decision"]
        rc, out = run_explain(capsys, flushed, pg_dsn, ref, "--store", store)
        assert "also in" not in out and "  sums  " not in out
