"""`tally explain` on a real run: a generated day with hostile lines, through a real broker,
the real flow, PostgreSQL and Parquet; every expectation is read back from PostgreSQL."""

from __future__ import annotations

import argparse
import base64
import json
import tempfile
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
from flows.logs import UserError
from sinks.stores import us as _us
from state.config import MatchConfig
from state.contract import format_us
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
