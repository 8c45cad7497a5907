"""Recovery: kill the flow anywhere, or take PostgreSQL away, and lose nothing, double nothing.

The drill SIGKILLs real `tally run` processes (random moments, right after a
snapshot, inside a PostgreSQL transaction, inside a Parquet write) and compares
the result with an undisturbed run. The outage tests stop a real PostgreSQL in
the middle of a run.
"""

from __future__ import annotations

import re
import shutil
import tempfile
import time
from pathlib import Path

import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict

from flows.dev import drill

from flows.kafka import kafka_io
from flows.dev.generate import generate_day
from flows.dev.match import run_engine
from flows.dev.services import dev_status, start_postgres, stop_postgres
from sinks import compare
from state.config import MatchConfig
from tests.flow_helpers import (engine_rows, parquet_rows, pg_rows, start_tally, tally,
                                unique_topics, write_config)


def _workdir(prefix: str) -> Path:
    return Path(tempfile.mkdtemp(prefix=prefix))


# ----------------------------------------------------------------------------- the drill

def test_a_drill_with_six_kills_ends_identical_to_a_clean_run(broker, pg_dsn, report):
    data = _workdir("tally-drill-")
    env = {"TALLY_BROKERS": broker, "TALLY_PG_DSN": pg_dsn}
    out = tally("drill", "--kills", "6", "--transactions", "20000", "--seed", "3",
                "--data-dir", str(data), env=env).stdout
    assert "Drill verdict: IDENTICAL after 6 of 6 kills" in out
    assert re.search(r"a second runner was refused: namespace drill_crashed is already being run", out)
    assert re.search(r"its 2 members ended [\d.]+s after it", out)
    for kind in drill.KINDS:
        assert re.search(rf"kill \d: {kind} ", out), f"no {kind} kill in:\n{out}"
    assert "trigger not seen" not in out
    assert re.search(r"duplicate rows\s+none in either namespace", out)
    decisions = int(re.search(r"decisions in PostgreSQL\s+([\d,]+)", out).group(1).replace(",", ""))
    assert decisions > 20_000 / 2
    report(f"drill: 6 SIGKILLs on 20,000 payments, {decisions:,} decisions identical, no duplicate")

    # A restart after the clean finish reads nothing and writes nothing.
    root = data / "drill"
    before = compare.from_postgres(pg_dsn, drill.CRASHED), compare.from_parquet(root / drill.CRASHED)
    rerun = tally("run", "--until-end", "--namespace", drill.CRASHED, "--data-dir", str(root),
                  "--config", str(root / "drill.toml"), env=env).stdout
    assert re.search(r"records consumed\s+0$", rerun, re.M)
    after = compare.from_postgres(pg_dsn, drill.CRASHED), compare.from_parquet(root / drill.CRASHED)
    assert [c.rows for c in after] == [c.rows for c in before]


def test_the_drill_verdict_sees_a_lost_row_and_a_doubled_file(broker, pg_dsn):
    """The comparison itself must be able to fail: tamper with a finished drill."""
    data = _workdir("tally-drill-tamper-")
    env = {"TALLY_BROKERS": broker, "TALLY_PG_DSN": pg_dsn}
    tally("drill", "--kills", "1", "--transactions", "2000", "--data-dir", str(data), env=env)
    root = data / "drill"
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        lost = conn.execute(f'SELECT topic, partition, "offset" FROM {drill.CRASHED}.fates '
                            f'ORDER BY 1, 2, 3 LIMIT 1').fetchone()
        conn.execute(f'DELETE FROM {drill.CRASHED}.fates WHERE topic = %s AND partition = %s '
                     f'AND "offset" = %s', lost)
    original = sorted((root / drill.CRASHED / "decisions").rglob("*.parquet"))[0]
    shutil.copy(original, original.with_name("part0-999999999.parquet"))

    options = drill.DrillOptions(brokers=broker, pg_dsn=pg_dsn, root=root, kills=1,
                                 transactions=2000, seed=1, config=MatchConfig())
    verdict = drill.compare_runs(options, [])
    assert not verdict.identical
    pg_fates = [d for store, d in verdict.differences if store == "PostgreSQL" and d.table == "fates"]
    assert [tuple(k) for k in pg_fates[0].only_a] == [tuple(lost)] and not pg_fates[0].only_b
    assert verdict.duplicates[f"Parquet decisions ({drill.CRASHED})"] > 0
    assert "DIFFERENT" in str(verdict)


def test_the_drill_runs_on_the_embedded_default():
    data = _workdir("tally-drill-embedded-")
    out = tally("drill", "--kills", "2", "--transactions", "6000", "--data-dir", str(data),
                env={"TALLY_BROKERS": None, "TALLY_PG_DSN": None}).stdout
    assert "starting an embedded broker and PostgreSQL" in out
    assert "Drill verdict: IDENTICAL after 2 of 2 kills" in out
    assert dev_status(data / "drill" / "services") is None  # stopped afterwards
    shutil.rmtree(data, ignore_errors=True)


# ----------------------------------------------------------------------------- PostgreSQL outages

class Postgres:
    """A PostgreSQL of our own that a test can stop and start again on the same port."""

    def __init__(self, run_dir: Path):
        self.run_dir = run_dir
        self.pid, self.dsn = start_postgres(run_dir)
        self.port = int(conninfo_to_dict(self.dsn)["port"])

    def stop(self) -> None:
        stop_postgres(self.pid)

    def start(self) -> None:
        self.pid, _ = start_postgres(self.run_dir, port=self.port)

    def decisions(self, namespace: str) -> int:
        try:
            with psycopg.connect(self.dsn, connect_timeout=2) as conn:
                return conn.execute(f"SELECT count(*) FROM {namespace}.decisions").fetchone()[0]
        except psycopg.Error:
            return 0


@pytest.fixture
def own_pg(pg_tmp_path):
    pg = Postgres(pg_tmp_path / "pg")
    yield pg
    pg.stop()


@pytest.fixture(scope="module")
def outage_day(broker):
    """A 8,000-payment day in fresh topics, and what the in-process engine decides for it."""
    work = _workdir("tally-outage-")
    topics = unique_topics()
    generate_day(work / "day", 8000, seed=5, topics=topics)
    config_file = write_config(work / "tally.toml", topics)
    kafka_io.create_topics(broker, list(topics.values()), 3)
    kafka_io.produce_day(broker, work / "day", list(topics.values()), progress=False)
    result = run_engine(work / "day", MatchConfig(topics=topics), show_progress=False)
    yield work, config_file, engine_rows(result.decisions, result.fates)
    shutil.rmtree(work, ignore_errors=True)


def _start_run(work, config_file, broker, pg, namespace, *extra):
    # Small batches and short epochs: many snapshots, so the outage lands mid-run.
    return start_tally("run", "--until-end", "--namespace", namespace, "--data-dir",
                       str(work / "data"), "--config", str(config_file), "--batch-size", "200",
                       "--snapshot-interval", "0.2", *extra,
                       env={"TALLY_BROKERS": broker, "TALLY_PG_DSN": pg.dsn})


def _wait_for_first_decisions(pg: Postgres, namespace: str, proc) -> None:
    deadline = time.monotonic() + 60
    while pg.decisions(namespace) == 0:
        assert proc.poll() is None, f"the run ended before writing anything:\n{proc.stderr.read()}"
        assert time.monotonic() < deadline, "no decision reached PostgreSQL within 60s"
        time.sleep(0.02)


def test_a_postgres_stop_and_start_during_a_run_loses_nothing(outage_day, broker, own_pg):
    work, config_file, (expected_decisions, expected_fates) = outage_day
    proc = _start_run(work, config_file, broker, own_pg, "outage_a")
    _wait_for_first_decisions(own_pg, "outage_a", proc)
    own_pg.stop()
    time.sleep(3)
    own_pg.start()
    stdout, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 0, stderr
    assert "PostgreSQL write failed" in stderr and "reconnecting" in stderr
    assert own_pg.dsn.split(":")[2].split("@")[0] not in stdout + stderr  # the password
    assert pg_rows(own_pg.dsn, "outage_a") == (expected_decisions, expected_fates)
    assert parquet_rows(work / "data" / "outage_a") == (expected_decisions, expected_fates)


def test_an_outage_past_the_deadline_exits_then_the_next_start_resumes(outage_day, broker, own_pg):
    work, config_file, (expected_decisions, expected_fates) = outage_day
    proc = _start_run(work, config_file, broker, own_pg, "outage_b", "--pg-retry-deadline", "2")
    _wait_for_first_decisions(own_pg, "outage_b", proc)
    own_pg.stop()
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 2, stderr
    last = stderr.strip().splitlines()[-1]
    assert last.startswith("tally: cannot write to PostgreSQL at ") and "***" in last
    assert own_pg.dsn.split(":")[2].split("@")[0] not in stdout + stderr  # the password

    own_pg.start()
    tally("run", "--until-end", "--namespace", "outage_b", "--data-dir", str(work / "data"),
          "--config", str(config_file), env={"TALLY_BROKERS": broker, "TALLY_PG_DSN": own_pg.dsn})
    assert pg_rows(own_pg.dsn, "outage_b") == (expected_decisions, expected_fates)
    assert parquet_rows(work / "data" / "outage_b") == (expected_decisions, expected_fates)
