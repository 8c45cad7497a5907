"""Replays: the same flow over a chosen stretch of the log, checked with `tally verify`.

One generated day is published and run live; every replay is compared with
that live namespace by the real `tally verify` command.
"""

from __future__ import annotations

import re
import shutil
import tempfile
from pathlib import Path

import pytest

from flows.kafka import kafka_io
from flows.dev.generate import generate_day
from sinks import compare
from state.contract import format_us
from tests.flow_helpers import tally, unique_topics, write_config

PAYMENTS = 8000


@pytest.fixture(scope="module")
def live(broker, pg_dsn):
    """A day in fresh topics, run live into the namespace rp_live."""
    work = Path(tempfile.mkdtemp(prefix="tally-replay-"))
    topics = unique_topics()
    generate_day(work / "day", PAYMENTS, seed=21, topics=topics)
    config = write_config(work / "tally.toml", topics)
    kafka_io.create_topics(broker, list(topics.values()), 3)
    kafka_io.produce_day(broker, work / "day", list(topics.values()), progress=False)
    env = {"TALLY_BROKERS": broker, "TALLY_PG_DSN": pg_dsn, "TALLY_CONFIG": str(config),
           "TALLY_DATA_DIR": str(work / "data")}
    tally("run", "--until-end", "--namespace", "rp_live", env=env)
    yield work, config, env
    shutil.rmtree(work, ignore_errors=True)


def verify(env, a, b, *extra, expect=0):
    return tally("verify", "--a", a, "--b", b, *extra, env=env, expect=expect).stdout


def mid_day(pg_dsn) -> str:
    """A time in the middle of the live decisions, on a whole minute."""
    rows = compare.from_postgres(pg_dsn, "rp_live").rows["decisions"]
    ends = sorted(row[compare.DECISION_FIELDS.index("window_end")] for row in rows.values())
    middle = ends[len(ends) // 2] // 60_000_000 * 60_000_000
    return format_us(middle).replace(".000000Z", "Z")


@pytest.fixture(scope="module")
def full(live):
    """The live day replayed from the earliest offsets into rp_full (for every test that
    compares with it, whichever runs first)."""
    work, config, env = live
    tally("replay", "--namespace", "rp_full", "--from", "earliest", env=env)
    return live


def test_a_full_replay_from_earliest_is_identical_to_live(full):
    work, config, env = full
    out = verify(env, "rp_live", "rp_full")
    assert out.strip().splitlines()[-1].startswith("IDENTICAL")
    verify(env, "rp_live", "rp_full", "--store", "parquet")


def test_a_replay_from_mid_day_with_warmup_matches_every_later_window(live, pg_dsn):
    work, config, env = live
    start = mid_day(pg_dsn)
    out = tally("replay", "--namespace", "rp_mid", "--from", start, env=env).stdout
    warmed = int(re.search(r"not written \(warm-up\)\s+([\d,]+)", out).group(1).replace(",", ""))
    assert warmed > 0
    written = compare.from_postgres(pg_dsn, "rp_mid")
    end_at = compare.DECISION_FIELDS.index("window_end")
    assert written.count("decisions") > 1000
    assert min(r[end_at] for r in written.rows["decisions"].values()) >= _us(start)
    assert verify(env, "rp_live", "rp_mid", "--from", start).strip().splitlines()[-1] \
        .startswith("IDENTICAL")

    # Without the warm-up the same replay differs: the warm-up is what makes it match.
    tally("replay", "--namespace", "rp_cold", "--from", start, "--warmup", "0", env=env)
    verify(env, "rp_live", "rp_cold", "--from", start, expect=1)


def test_an_archive_replay_equals_a_broker_replay(full):
    work, config, env = full
    tally("replay", "--namespace", "rp_archive", "--from", "earliest", "--source", "archive",
          "--archive-namespace", "rp_live", env=env)
    verify(env, "rp_full", "rp_archive")
    verify(env, "rp_full", "rp_archive", "--store", "parquet")
    full, archive = (compare.from_parquet(work / "data" / ns) for ns in ("rp_full", "rp_archive"))
    assert compare.compare(full, archive, ("events",)) == []  # the same records, byte for byte


def test_a_changed_matching_parameter_shows_in_verify(live, pg_dsn):
    work, config, env = live
    strict = work / "strict.toml"
    strict.write_text(config.read_text() + '\n[matching]\namount_tolerance = "0"\n')
    tally("replay", "--namespace", "rp_strict", "--from", "earliest", "--config", str(strict),
          env=env)
    out = verify(env, "rp_live", "rp_strict", expect=1)
    assert out.strip().splitlines()[-1].startswith("DIFFERENT")
    # With no tolerance, review decisions split into exceptions: verify names both sides.
    kind = compare.DECISION_FIELDS.index("exception_kind")
    before = compare.from_postgres(pg_dsn, "rp_live").rows["decisions"]
    after = compare.from_postgres(pg_dsn, "rp_strict").rows["decisions"]
    lost = {k for k in before.keys() - after.keys() if before[k][kind] == "review"}
    gained = after.keys() - before.keys()
    assert lost and gained
    assert any(k in out for k in lost) and any(k in out for k in gained)


def test_a_replay_resumes_its_own_stretch_and_refuses_another(full):
    work, config, env = full
    again = tally("replay", "--namespace", "rp_full", "--from", "earliest", env=env).stdout
    assert re.search(r"records consumed\s+0$", again, re.M)
    other = tally("replay", "--namespace", "rp_full", "--from", "2026-01-01T00:00:00Z", env=env,
                  expect=2)
    assert "use a new namespace" in other.stderr


def _us(text: str) -> int:
    from datetime import datetime
    moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    return int(moment.timestamp()) * 1_000_000
