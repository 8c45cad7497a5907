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
import pytest

from flows.kafka import kafka_io
from flows.kafka.dayfiles import partitions, read_values
from flows.dev.generate import generate_day
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
