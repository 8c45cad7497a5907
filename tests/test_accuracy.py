"""Accuracy against ground truth, and conservation, on a generated day of 100,000 payments,
and on a day where one account carries half of the payments."""

from __future__ import annotations

from collections import Counter

import pytest

from flows.dev.match import run_engine
from flows.dev.truth import score
from state.config import MatchConfig
from tests.days import day

PAYMENTS = 100_000
HOT_DAY = 60_000  # payments, half of them on one account


@pytest.fixture(scope="module")
def result_and_day():
    path = day(PAYMENTS, 2026)
    return run_engine(path, MatchConfig(), flush=True, show_progress=False), path


def test_no_false_auto_match_and_clean_payments_auto_matched(result_and_day, report):
    result, path = result_and_day
    scored = score(result.decisions, path)
    false_matches, rate = scored.false_matches, scored.rate
    report(f"accuracy on {PAYMENTS:,} payments: {len(false_matches)} false auto-matches; "
           f"{scored.auto_matched:,} of {scored.clean:,} clean payments auto-matched ({rate:.4%})")
    assert false_matches == []
    assert rate >= 0.997


def test_every_record_has_exactly_one_fate(result_and_day, report):
    result, path = result_and_day
    lines = {(f.parent.name, int(f.stem)): f.read_bytes().count(b"\n")
             for f in path.glob("recon.*/*.jsonl")}
    fates = Counter((f.topic, f.partition, f.offset) for f in result.fates)
    assert max(fates.values()) == 1, "a record has two fates"
    expected = {(t, p, o) for (t, p), n in lines.items() for o in range(n)}
    assert set(fates) == expected, "a record has no fate"
    decision_ids = {d.decision_id for d in result.decisions}
    assert all(f.decision_id in decision_ids for f in result.fates if f.decision_id)
    outcomes = Counter(f.outcome for f in result.fates)
    report(f"fates of {sum(lines.values()):,} records: " + ", ".join(f"{k} {v:,}" for k, v in sorted(outcomes.items())))


def test_every_decision_member_points_back_to_its_decision(result_and_day):
    result, _ = result_and_day
    fate_of = {f"{f.topic}:{f.partition}:{f.offset}": f for f in result.fates}
    for decision in result.decisions:
        for ref in decision.member_refs:
            assert fate_of[ref].decision_id == decision.decision_id


def test_a_hot_account_is_matched_as_well_as_a_sparse_one(report):
    """Density must not cost accuracy: 30,000 payments a day on one account, about 600
    open in each of its windows, many within the amount tolerance of each other."""
    path = day(HOT_DAY, 2026, hot_share=0.5)
    result = run_engine(path, MatchConfig(), flush=True, show_progress=False)
    scored = score(result.decisions, path)
    report(f"accuracy with one account carrying half of {HOT_DAY:,} payments: "
           f"{len(scored.false_matches)} false auto-matches; {scored.auto_matched:,} of "
           f"{scored.clean:,} clean payments auto-matched ({scored.rate:.4%})")
    assert scored.false_matches == []
    assert scored.rate >= 0.997
