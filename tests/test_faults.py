"""Faults an operator meets (Tally 10/14), each against the real broker and PostgreSQL.

So far: a cut-off or damaged recovery store, reserved namespaces and bad topic names,
and a live run started with SIGINT ignored.

A first start cut off while the recovery store was being made leaves a store that
was never completed: the next start must make it again, saying so. A store that
was completed and is damaged must be refused in one line, never replaced.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from tests.flow_helpers import decisions_written, published, tally, wait_until

PAYMENTS = 1500


@pytest.fixture(scope="module")
def day(broker, pg_dsn):
    work, _, env = published(broker, pg_dsn, "tally-faults-", PAYMENTS, seed=41)
    return work, env


def run(env, namespace, expect=0):
    return tally("run", "--until-end", "--namespace", namespace, env=env, expect=expect)


def test_a_recovery_store_never_completed_is_made_again(day):
    work, env = day
    store = work / "data" / "cut_off" / "recovery"
    store.mkdir(parents=True)
    (store / "part-0.sqlite3").write_bytes(b"")  # killed, or out of disk, as it was created
    result = run(env, "cut_off")
    assert "was never completed" in result.stderr and "making it again" in result.stderr
    clean = run(env, "clean_start").stdout
    assert result.stdout.split("decisions")[1] == clean.split("decisions")[1]  # same summary
    assert not list(work.glob("data/cut_off/recovery*.building*")), "no half-built store left"


def test_a_damaged_recovery_store_is_refused_in_one_line(day):
    work, env = day
    run(env, "damaged")
    part = work / "data" / "damaged" / "recovery" / "part-0.sqlite3"
    part.write_bytes(b"not a database, " * 4096)
    result = run(env, "damaged", expect=2)
    (line,) = result.stderr.strip().splitlines()[-1:]
    assert str(part) in line and "damaged" in line
    assert part.read_bytes().startswith(b"not a database"), "never silently replaced"


def test_a_completed_store_is_recognised_as_such(day):
    work, env = day
    run(env, "complete")
    files = sorted((work / "data" / "complete" / "recovery").glob("part-*.sqlite3"))
    assert files and all(sqlite3.connect(f).execute("SELECT count(*) FROM parts").fetchone()[0] == 1
                         for f in files)
    again = run(env, "complete")
    assert "never completed" not in again.stderr


@pytest.mark.parametrize("namespace", ["public", "pg_catalog", "information_schema"])
def test_a_reserved_namespace_is_refused_in_one_line(namespace):
    result = tally("run", "--until-end", "--namespace", namespace, expect=2)
    assert "reserved by PostgreSQL" in result.stderr.strip().splitlines()[-1]  # after the usage


def test_a_topic_name_kafka_forbids_is_refused_in_one_line(tmp_path):
    config = tmp_path / "bad.toml"
    config.write_text('[sources]\nbank = "recon bank"\nprocessor = "p"\nledger = "l"\n')
    result = tally("topics", "create", "--config", str(config), "--brokers", "127.0.0.1:1", expect=2)
    (line,) = result.stderr.strip().splitlines()
    assert "Kafka topic names are 1 to 249" in line and "'recon bank'" in line


def test_sigint_stops_a_live_run_even_when_started_with_it_ignored(day):
    """A non-interactive shell starts background jobs with SIGINT ignored; `kill -INT` must
    still stop the run cleanly (exit 130), as Ctrl-C does in a terminal."""
    work, env = day
    flow = subprocess.Popen([sys.executable, "-m", "flows", "run", "--namespace", "sigint"],
                            env=os.environ | env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN))
    try:
        # deciding, so the signal may come mid-write: ADBC's own SIGINT handler once took it there
        wait_until(lambda: (work / "data" / "sigint" / "recovery").exists()
                   and decisions_written(env["TALLY_PG_DSN"], "sigint") > 0, 120, "the run deciding")
        flow.send_signal(signal.SIGINT)
        flow.communicate(timeout=60)  # reading its output, so a full pipe cannot hold it
        assert flow.returncode == 130
    finally:
        if flow.poll() is None:
            flow.kill()


def test_one_clock_skewed_record_is_an_exception_of_its_own(broker, pg_dsn):
    """The issue's case: one ledger record of a 2,000-payment day six hours ahead used to
    turn 159 of 1,853 matches into exceptions (every later record of its partition was
    late). Now it is one clock_skew exception, and the day decides as it would without it."""
    from collections import Counter

    from flows.kafka import kafka_io
    from flows.dev.generate import generate_day
    from tests.flow_helpers import read_decisions, unique_topics, write_config
    from tests.test_clock_skew import a_transaction, shifted

    work = Path(tempfile.mkdtemp(prefix="tally-skew-"))
    kinds = {}
    for name in ("clean", "skewed"):
        topics = unique_topics()
        generate_day(work / name, 2000, seed=43, topics=topics)
        ledger = work / name / topics["ledger"] / "0.jsonl"
        lines = ledger.read_bytes().splitlines()
        index = next(i for i in range(len(lines) // 2, len(lines)) if a_transaction(lines, i))
        if name == "skewed":
            lines[index] = shifted(lines[index], 6 * 3600)
            ledger.write_bytes(b"\n".join(lines) + b"\n")
        kafka_io.create_topics(broker, list(topics.values()), 3)
        kafka_io.produce_day(broker, work / name, list(topics.values()), progress=False)
        env = {"TALLY_BROKERS": broker, "TALLY_PG_DSN": pg_dsn, "TALLY_DATA_DIR": str(work / "data"),
               "TALLY_CONFIG": str(write_config(work / f"{name}.toml", topics))}
        tally("run", "--until-end", "--flush", "--namespace", f"skew_{name}", env=env)
        rows = read_decisions(pg_dsn, f"skew_{name}")
        kinds[name] = Counter(r["exception_kind"] or "match" for r in rows)
        skews = [r["member_refs"] for r in rows if r["exception_kind"] == "clock_skew"]
    clean, skewed = kinds["clean"], kinds["skewed"]
    assert clean["match"] > 1800
    assert clean["match"] - skewed["match"] <= 1, (clean, skewed)  # its own payment at most
    assert skewed["late"] == clean["late"]
    assert skews == [[f"{topics['ledger']}:0:{index}"]] and clean["clock_skew"] == 0
