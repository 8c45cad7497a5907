"""Settlement against ground truth: a generated settlement scenario through the in-process
engine (accuracy, fates), and through the live flow into both stores (equal to the engine)."""

from __future__ import annotations

import tempfile
import tomllib
from collections import Counter
from pathlib import Path

import msgspec
import pytest

from flows.dev.match import run_engine
from flows.dev.settlement_day import generate_settlement
from flows.dev.settlement_truth import score_settlement
from flows.kafka import kafka_io
from state.config import from_toml, to_toml
from tests.flow_helpers import engine_rows, parquet_rows, pg_rows, tally, unique_topics

ROOT = Path(__file__).resolve().parent.parent
SETTLEMENT = from_toml(tomllib.loads((ROOT / "docs/examples/settlement.toml").read_text()))
PAYMENTS = 20_000  # over 2 days: about 2,000 batches, 40 of each hard case


@pytest.fixture(scope="module")
def scenario():
    work = Path(tempfile.mkdtemp(prefix="tally-settlement-"))
    topics = unique_topics()
    generate_settlement(work / "day", PAYMENTS, seed=12, topics=topics)
    config = msgspec.structs.replace(SETTLEMENT, topics=topics)
    result = run_engine(work / "day", config, flush=True, show_progress=False)
    return work, topics, config, result


@pytest.fixture(scope="module")
def unflushed(scenario):
    """What a run that reads to the end decides: credits booked in the last days still wait
    for their lag to pass."""
    work, _, config, _ = scenario
    return run_engine(work / "day", config, show_progress=False)


def test_settlement_is_matched_end_to_end_and_every_hard_case_flagged(scenario, report):
    work, _, _, result = scenario
    scored = score_settlement(result.decisions, work / "day")
    report(f"settlement, {PAYMENTS:,} payments: {len(scored.false_matches)} false auto-matches; "
           f"payments {scored.payments_matched:,}/{scored.payments_clean:,}, payouts settled "
           f"{scored.payouts_settled:,} and deposited {scored.payouts_deposited:,} of "
           f"{scored.payouts_clean:,}; hard cases flagged {scored.hard_rate:.1%}")
    assert scored.false_matches == []
    assert scored.payments_rate >= 0.997
    assert scored.settled_rate >= 0.99 and scored.deposited_rate >= 0.99
    assert scored.unflagged == [] and len(scored.hard_flagged) >= 5 * 40


def test_every_record_has_one_fate_and_every_member_a_fate_listing_it(scenario):
    work, _, _, result = scenario
    lines = {(f.parent.name, int(f.stem)): f.read_bytes().count(b"\n")
             for f in (work / "day").glob("*/*.jsonl")}
    fates = Counter((f.topic, f.partition, f.offset) for f in result.fates)
    assert max(fates.values()) == 1
    assert set(fates) == {(t, p, o) for (t, p), n in lines.items() for o in range(n)}
    assert not [f for f in result.fates if f.outcome == "pending"]
    members = {d.decision_id: set(d.member_refs) for d in result.decisions}
    fate_at = {f"{f.topic}:{f.partition}:{f.offset}": f for f in result.fates}
    for decision in result.decisions:
        for ref in decision.member_refs:
            assert ref in members[fate_at[ref].decision_id], (decision, fate_at[ref])
    relations = Counter(d.relation for d in result.decisions)
    assert set(relations) == {"payments", "batches", "deposits"}


@pytest.fixture(scope="module")
def live(scenario, broker, pg_dsn):
    """The scenario published and run to the end by the live flow, into namespace settle_e2e."""
    work, topics, config, _ = scenario
    config_file = work / "settlement.toml"
    config_file.write_text(to_toml(config))
    kafka_io.create_topics(broker, list(topics.values()), 3)
    kafka_io.produce_day(broker, work / "day", list(topics.values()), progress=False)
    env = {"TALLY_BROKERS": broker, "TALLY_PG_DSN": pg_dsn, "TALLY_DATA_DIR": str(work / "data"),
           "TALLY_CONFIG": str(config_file)}
    tally("run", "--namespace", "settle_e2e", "--until-end", env=env)
    return env


def test_the_live_flow_decides_exactly_what_the_engine_decides(scenario, unflushed, live, pg_dsn,
                                                               report):
    work, _, _, _ = scenario
    expected_decisions, expected_fates = engine_rows(unflushed.decisions, unflushed.fates)
    pg_decisions, pg_fates = pg_rows(pg_dsn, "settle_e2e")
    pq_decisions, pq_fates = parquet_rows(work / "data" / "settle_e2e")
    assert pg_decisions == expected_decisions == pq_decisions
    assert pg_fates == expected_fates == pq_fates
    assert not [f for f in unflushed.fates if f.outcome == "pending"]  # the day's end decides all
    out = tally("audit", "--namespace", "settle_e2e", env=live).stdout
    assert "CONSERVED" in out and "NOT CONSERVED" not in out
    report(f"settlement e2e: {len(expected_decisions):,} decisions identical in PostgreSQL, "
           f"Parquet and the in-process engine; audit conserved")


def test_a_replay_of_the_settlement_log_decides_the_same(live):
    tally("replay", "--namespace", "settle_replay", "--from", "earliest", env=live)
    out = tally("verify", "--a", "settle_e2e", "--b", "settle_replay", env=live).stdout
    assert out.strip().splitlines()[-1].startswith("IDENTICAL")


def test_a_settlement_drill_with_kills_ends_identical(broker, pg_dsn, report):
    data = Path(tempfile.mkdtemp(prefix="tally-settle-drill-"))
    env = {"TALLY_BROKERS": broker, "TALLY_PG_DSN": pg_dsn}
    out = tally("drill", "--kills", "3", "--transactions", "6000", "--seed", "5",
                "--config", str(ROOT / "docs/examples/settlement.toml"), "--data-dir", str(data),
                env=env).stdout
    assert "Drill verdict: IDENTICAL after 3 of 3 kills" in out, out
    report("settlement drill: identical after 3 kills")
