"""End to end: a generated day through a real broker, the Bytewax flow, PostgreSQL and Parquet.

The flow must decide exactly what the in-process engine decides for the same day.
"""

from __future__ import annotations

import pickle
import re
import shutil
import sqlite3
import tempfile
from collections import Counter
from pathlib import Path

import pytest

from flows.kafka import kafka_io
from flows.dev.generate import generate_day
from flows.dev.match import run_engine
from state.config import MatchConfig
from tests.flow_helpers import (decisions_written, digest, engine_rows, parquet_rows, pg_rows,
                                start_tally, stop, tally, unique_topics, wait_until, write_config)

PAYMENTS = 20_000


@pytest.fixture(scope="module")
def published(broker):
    """A 20,000-payment day in fresh topics, and what the in-process engine makes of it."""
    work = Path(tempfile.mkdtemp(prefix="tally-e2e-"))
    topics = unique_topics()
    day = work / "day"
    generate_day(day, PAYMENTS, seed=11, topics=topics)
    config_file = write_config(work / "tally.toml", topics)
    kafka_io.create_topics(broker, list(topics.values()), 3)
    kafka_io.produce_day(broker, day, list(topics.values()), progress=False)
    result = run_engine(day, MatchConfig(topics=topics), show_progress=False)
    return work, config_file, result


def summary_value(stdout: str, label: str) -> int:
    line = next(line for line in stdout.splitlines() if line.strip().startswith(label))
    return int(line.split()[-1].replace(",", ""))


def run_flow(work, config_file, broker, pg_dsn, namespace):
    return tally("run", "--brokers", broker, "--pg", pg_dsn, "--data-dir", str(work / "data"),
                 "--namespace", namespace, "--until-end", "--config", str(config_file))


def test_flow_decides_exactly_what_the_engine_decides(published, broker, pg_dsn, report):
    work, config_file, result = published
    run = run_flow(work, config_file, broker, pg_dsn, "e2e_a")
    expected_decisions, expected_fates = engine_rows(result.decisions, result.fates)
    pg_decisions, pg_fates = pg_rows(pg_dsn, "e2e_a")
    pq_decisions, pq_fates = parquet_rows(work / "data" / "e2e_a")
    assert pg_decisions == expected_decisions
    assert pq_decisions == expected_decisions
    assert pg_fates == expected_fates
    assert pq_fates == expected_fates
    pending = sum(f.outcome == "pending" for f in result.fates)
    assert summary_value(run.stdout, "pending") == pending
    assert summary_value(run.stdout, "records consumed") == sum(
        1 for f in result.fates)  # every record in the topics was consumed once
    report(f"e2e {PAYMENTS:,} payments: {len(expected_decisions):,} decisions identical in "
           f"PostgreSQL, Parquet and the in-process engine; {pending} pending")


def test_every_consumed_offset_has_exactly_one_fate(published, broker, pg_dsn):
    work, config_file, result = published
    _, fates = pg_rows(pg_dsn, "e2e_a")
    topics = [t for t in {f[0] for f in fates}]
    log = kafka_io.read_to_end(broker, topics)
    offsets = Counter((f[0], f[1], f[2]) for f in fates)
    pending = {(f.topic, f.partition, f.offset) for f in result.fates if f.outcome == "pending"}
    assert max(offsets.values()) == 1
    in_log = {(t, p, o) for (t, p), records in log.items() for o, _ in records}
    assert set(offsets) | pending == in_log and not set(offsets) & pending


def test_a_second_namespace_gets_identical_decisions(published, broker, pg_dsn):
    work, config_file, _ = published
    run_flow(work, config_file, broker, pg_dsn, "e2e_b")
    first, second = pg_rows(pg_dsn, "e2e_a"), pg_rows(pg_dsn, "e2e_b")
    assert digest(first[0]) == digest(second[0])
    assert digest(first[1]) == digest(second[1])


def test_resuming_after_a_clean_finish_emits_nothing_new(published, broker, pg_dsn):
    work, config_file, _ = published
    before = pg_rows(pg_dsn, "e2e_a")
    files_before = sorted(p.name for p in (work / "data" / "e2e_a").rglob("*.parquet"))
    run = run_flow(work, config_file, broker, pg_dsn, "e2e_a")
    assert summary_value(run.stdout, "records consumed") == 0
    assert pg_rows(pg_dsn, "e2e_a") == before
    assert sorted(p.name for p in (work / "data" / "e2e_a").rglob("*.parquet")) == files_before


def test_a_namespace_refuses_to_resume_with_other_shards(published, broker, pg_dsn):
    work, config_file, _ = published
    run = tally("run", "--brokers", broker, "--pg", pg_dsn, "--data-dir", str(work / "data"),
                "--namespace", "e2e_a", "--until-end", "--config", str(config_file),
                "--shards", "2", expect=2)
    assert "was started with 4 shards" in run.stderr and "use a new namespace" in run.stderr


def test_a_namespace_refuses_to_resume_with_another_matching_config(published, broker, pg_dsn):
    work, config_file, _ = published
    changed = work / "changed.toml"
    changed.write_text(config_file.read_text() + '\n[matching]\namount_tolerance = "0.01"\n')
    run = tally("run", "--brokers", broker, "--pg", pg_dsn, "--data-dir", str(work / "data"),
                "--namespace", "e2e_a", "--until-end", "--config", str(changed), expect=2)
    pinned = work / "data" / "e2e_a" / "config.toml"
    assert run.stderr.strip().splitlines()[-1] == (
        f"tally: namespace e2e_a decides by the config pinned in {pinned}, and this config's "
        f"rules differ ('-amount_tolerance = \"0.02\"'); run with --config {pinned}, or replay "
        f"into a new namespace to decide by the new rules")
    # without the pin (a namespace from before it), the snapshot's own copy still refuses
    pinned.rename(pinned.with_name("kept.toml"))
    try:
        run = tally("run", "--brokers", broker, "--pg", pg_dsn, "--data-dir", str(work / "data"),
                    "--namespace", "e2e_a", "--until-end", "--config", str(changed), expect=2)
    finally:
        pinned.with_name("kept.toml").replace(pinned)
    assert run.stderr.strip().splitlines()[-1] == (
        "tally: the matching config differs from the one in the recovery snapshot; "
        "use a new namespace (or the old config) to continue")


def test_a_snapshot_of_another_format_is_refused_in_one_line(published, broker, pg_dsn):
    """A recovery store written by a Tally whose engine state had another shape (here: a
    msgpack array of the wrong length) stops the run at once, saying what to do."""
    work, config_file, _ = published
    data = Path(tempfile.mkdtemp(prefix="tally-old-snapshot-"))
    shutil.copytree(work / "data" / "e2e_a" / "recovery", data / "e2e_a" / "recovery")
    for store in (data / "e2e_a" / "recovery").glob("part-*.sqlite3"):
        with sqlite3.connect(store) as db:
            db.execute("UPDATE snaps SET ser_change = ? WHERE step_id LIKE '%engine%'",
                       (pickle.dumps(b"\x94\x01\x02\x03\x04"),))
    run = tally("run", "--brokers", broker, "--pg", pg_dsn, "--data-dir", str(data),
                "--namespace", "e2e_a", "--until-end", "--config", str(config_file), expect=2)
    last = run.stderr.strip().splitlines()[-1]
    assert last.startswith("tally: the engine snapshot is not in this version's format"), last
    assert "replay its log into a new namespace" in last


def test_two_processes_decide_exactly_what_one_does(published, broker, pg_dsn):
    """`--processes 2`: a Bytewax cluster of two local processes, same decisions, same rows."""
    work, config_file, result = published
    run = tally("run", "--brokers", broker, "--pg", pg_dsn, "--data-dir", str(work / "data"),
                "--namespace", "e2e_p2", "--until-end", "--config", str(config_file),
                "--processes", "2")
    assert "2 processes" in run.stdout
    # both processes decide: the shard keys spread over them (flows/runtime/placement.py)
    decided = re.findall(r"decided by process \d\s+([\d,]+)", run.stdout)
    assert len(decided) == 2 and all(int(n.replace(",", "")) > 0 for n in decided), run.stdout
    total = re.search(r"^\s*decisions\s+([\d,]+)", run.stdout, re.M).group(1)
    assert int(total.replace(",", "")) == len(result.decisions), run.stdout
    expected_decisions, expected_fates = engine_rows(result.decisions, result.fates)
    assert pg_rows(pg_dsn, "e2e_p2") == (expected_decisions, expected_fates)
    assert parquet_rows(work / "data" / "e2e_p2") == (expected_decisions, expected_fates)


def test_a_namespace_rescales_from_one_process_to_two_mid_run(published, broker, pg_dsn):
    """Stopped part-way under one process, resumed under two: the same rows as the engine's."""
    work, config_file, result = published
    common = ["--brokers", broker, "--pg", pg_dsn, "--data-dir", str(work / "data"),
              "--namespace", "e2e_rescale", "--config", str(config_file)]
    one = start_tally("run", *common, "--max-rate", "15000", "--snapshot-interval", "0.5")
    _wait_for_decisions(pg_dsn, "e2e_rescale", one)
    assert stop(one) == 130
    partial = len(pg_rows(pg_dsn, "e2e_rescale")[0])
    assert 0 < partial < len(result.decisions)  # it really stopped part-way
    two = tally("run", *common, "--until-end", "--processes", "2")
    assert "2 processes" in two.stdout
    expected_decisions, expected_fates = engine_rows(result.decisions, result.fates)
    assert pg_rows(pg_dsn, "e2e_rescale") == (expected_decisions, expected_fates)
    assert parquet_rows(work / "data" / "e2e_rescale") == (expected_decisions, expected_fates)


def _wait_for_decisions(dsn: str, namespace: str, flow) -> None:
    def written() -> bool:
        assert flow.poll() is None, flow.stderr.read()
        return decisions_written(dsn, namespace) > 0

    wait_until(written, 120, "a first decision", every=0.2)
