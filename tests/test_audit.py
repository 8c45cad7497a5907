"""`tally audit` on real runs: a clean namespace is conserved, and tampering is caught.

A tampered namespace has, in PostgreSQL, one fate row deleted and one decision
deleted, and in Parquet, one fates file copied and one archive file removed.
Each must show up as what it is: a gap, orphaned fates, duplicates, a hole in
consumption, and the two stores disagreeing.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

import psycopg
import pyarrow as pa
import pytest

from flows.kafka import kafka_io
from flows.kafka.dayfiles import partitions, read_values
from flows.dev.generate import generate_day
from sinks.audit import unfated_members
from sinks.stores import Tables, compact_schemas
from tests.flow_helpers import tally, unique_topics, write_config

PAYMENTS = 2000
# one transaction after every heartbeat: its window never closes, so it stays pending
AFTER_THE_DAY = (b'{"type":"transaction","source":"bank","event_id":"bank-late-1","account":"ACC1",'
                 b'"amount":"10.00","currency":"EUR","event_time":"2026-11-22T06:00:00Z"}')


@pytest.fixture(scope="module")
def day(broker):
    work = Path(tempfile.mkdtemp(prefix="tally-audit-"))
    topics = unique_topics()
    generate_day(work / "day", PAYMENTS, seed=21, topics=topics)
    values = {part: read_values(path)
              for part, path in partitions(work / "day", list(topics.values())).items()}
    values[(topics["bank"], 0)].append(AFTER_THE_DAY)
    kafka_io.create_topics(broker, list(topics.values()), 3)
    kafka_io.produce_values(broker, values, progress=False)
    return work, write_config(work / "tally.toml", topics), topics


def run_into(day, namespace, broker, pg_dsn):
    work, config, _ = day
    tally("run", "--brokers", broker, "--pg", pg_dsn, "--data-dir", str(work / "data"),
          "--namespace", namespace, "--until-end", "--config", str(config))


def audit(day, namespace, pg_dsn, *extra, expect=0):
    work, _, _ = day
    return tally("audit", "--namespace", namespace, "--data-dir", str(work / "data"), "--pg", pg_dsn,
                 *extra, expect=expect)


def test_a_clean_run_is_conserved_in_both_stores(day, broker, pg_dsn):
    run_into(day, "audit_clean", broker, pg_dsn)
    result = audit(day, "audit_clean", pg_dsn)
    assert "verdict: CONSERVED" in result.stdout
    report = json.loads(audit(day, "audit_clean", pg_dsn, "--json").stdout)
    assert report["conserved"] and report["pending"] == 1
    postgres, parquet = report["stores"]
    assert postgres["outcomes"] == parquet["outcomes"]
    assert sum(postgres["outcomes"].values()) + report["pending"] == report["consumed"]
    assert report["disagreement"] == {"fates": [0, []], "decisions": [0, []]}


def test_tampering_is_caught_and_named(day, broker, pg_dsn):
    work, _, topics = day
    run_into(day, "audit_tampered", broker, pg_dsn)
    root = work / "data" / "audit_tampered"
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        lost = conn.execute(
            "SELECT topic, partition, \"offset\" FROM audit_tampered.fates"
            " WHERE outcome = 'matched' ORDER BY 1, 2, 3 LIMIT 1").fetchone()
        conn.execute("DELETE FROM audit_tampered.fates WHERE (topic, partition, \"offset\") ="
                     " (%s, %s, %s)", lost)
        gone = conn.execute("SELECT decision_id FROM audit_tampered.decisions WHERE kind = 'match'"
                            " ORDER BY decision_id DESC LIMIT 1").fetchone()[0]
        conn.execute("DELETE FROM audit_tampered.decisions WHERE decision_id = %s", (gone,))
    fates_file = sorted((root / "fates").rglob("*.parquet"))[0]
    shutil.copy(fates_file, fates_file.with_name("part0-000000999.parquet"))
    archived = sorted((root / "events").rglob("*.parquet"))[-1]
    archived.unlink()

    result = audit(day, "audit_tampered", pg_dsn, "--json", expect=1)
    report = json.loads(result.stdout)
    assert not report["conserved"]
    postgres, parquet = report["stores"]
    lost_ref = f"{lost[0]}:{lost[1]}"
    assert [g for g in postgres["gaps"] if g[0] == lost_ref] == [[lost_ref, 1, [lost[2]]]]
    assert postgres["unfated_members"][0] == 1
    assert postgres["orphan_fates"][0] >= 2  # a match has two or three members
    assert parquet["duplicate_fates"][0] > 0 and not parquet["gaps"]
    assert report["archive_gaps"], "a removed archive file is a hole in consumption"
    assert report["disagreement"]["fates"][0] >= 1
    assert report["disagreement"]["decisions"][0] == 1
    assert gone in str(report["disagreement"]["decisions"][1])
    text = audit(day, "audit_tampered", pg_dsn, expect=1).stdout
    assert "verdict: NOT CONSERVED" in text and f"first [{lost[2]}]" in text


def test_audit_of_an_unknown_namespace_is_a_usage_error(day, pg_dsn):
    result = audit(day, "never_ran", pg_dsn, expect=2)
    assert "no Tally namespace" in result.stderr
    assert pg_dsn.split(":")[2].split("@")[0] not in result.stderr + result.stdout


# ----------------------------------------------------------------------------- members, on Arrow

ITEM, PAYOUT, CREDIT, LEDGER = "proc:0:1", "proc:0:2", "bank:0:7", "ledger:0:3"


def tables(decisions: dict[str, list[str]], fates: dict[str, str | None]) -> Tables:
    """Compact tables: each decision's member refs, and the decision each ref's fate names."""
    fates_schema, decisions_schema, members_schema = compact_schemas()
    members = [(d, *ref.split(":")) for d, refs in decisions.items() for ref in refs]
    fate_rows = [(*ref.split(":"), decision) for ref, decision in fates.items()]
    return Tables(
        "arrow",
        pa.table({"topic": [r[0] for r in fate_rows], "partition": [int(r[1]) for r in fate_rows],
                  "offset": [int(r[2]) for r in fate_rows], "source": [None] * len(fate_rows),
                  "event_id": [None] * len(fate_rows), "outcome": ["matched"] * len(fate_rows),
                  "decision_id": [r[3] for r in fate_rows], "window_end": [1] * len(fate_rows)},
                 schema=fates_schema),
        decisions_schema.empty_table(),  # unfated_members reads members and fates only
        pa.table({"decision_id": [m[0] for m in members], "topic": [m[1] for m in members],
                  "partition": [int(m[2]) for m in members], "offset": [int(m[3]) for m in members]},
                 schema=members_schema))


def test_a_record_in_two_relations_is_fated_once():
    # the item: in its payment's match (primary) and its batch; the payout: in its batch
    # (primary) and in its deposit with the bank credit
    settled = tables({"payment": [LEDGER, ITEM], "batch": [ITEM, PAYOUT],
                      "deposit": [PAYOUT, CREDIT]},
                     {LEDGER: "payment", ITEM: "payment", PAYOUT: "batch", CREDIT: "deposit"})
    assert unfated_members(settled) == (0, [])


def test_a_fate_pointing_at_a_decision_that_does_not_list_it_is_named():
    wrong = tables({"payment": [LEDGER], "batch": [ITEM, PAYOUT]},
                   {LEDGER: "payment", ITEM: "payment", PAYOUT: "batch"})
    assert unfated_members(wrong) == (1, [ITEM])


def test_which_listing_decision_a_fate_names_is_not_checked():
    # The rule asks for a fate whose decision lists the record, not for its primary one:
    # which relation is primary is the engine's to say (state/relations.py route).
    either = tables({"payment": [LEDGER, ITEM], "batch": [ITEM, PAYOUT]},
                    {LEDGER: "payment", ITEM: "batch", PAYOUT: "batch"})
    assert unfated_members(either) == (0, [])


def test_a_member_without_a_fate_is_counted_per_decision_and_named_once():
    lost = tables({"payment": [LEDGER, ITEM], "batch": [ITEM, PAYOUT]},
                  {LEDGER: "payment", PAYOUT: "batch", "proc:0:9": None})  # a heartbeat's fate
    assert unfated_members(lost) == (2, [ITEM])
