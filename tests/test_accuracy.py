"""Accuracy against ground truth, and conservation, on a generated day of 100,000 payments,
and on a day where one account carries half of the payments."""

from __future__ import annotations

import json
from collections import Counter

import pytest

from flows.match import run_engine
from flows.truth import score
from state.config import MatchConfig
from tests.days import day

PAYMENTS = 100_000
HOT_DAY = 60_000  # payments, half of them on one account


@pytest.fixture(scope="module")
def result_and_truth():
    path = day(PAYMENTS, 2026)
    result = run_engine(path, MatchConfig(), flush=True, show_progress=False)
    truth = [json.loads(line) for line in (path / "truth.jsonl").read_text().splitlines()]
    return result, truth, path


def test_no_false_auto_match_and_clean_payments_auto_matched(result_and_truth, report):
    result, truth, _ = result_and_truth
    payment_of = {f"{t['source']}:{t['event_id']}": t["payment"] for t in truth if t["event_id"]}
    false_matches, matched = [], set()
    for decision in result.decisions:
        if decision.kind != "match":
            continue
        payments = {payment_of[m] for m in decision.member_event_ids}
        if len(payments) == 1:
            matched |= payments
        else:
            false_matches.append(decision.member_event_ids)
    clean = {t["payment"] for t in truth if t["clean"]}
    rate = len(clean & matched) / len(clean)
    report(f"accuracy on {PAYMENTS:,} payments: {len(false_matches)} false auto-matches; "
           f"{len(clean & matched):,} of {len(clean):,} clean payments auto-matched ({rate:.4%})")
    assert false_matches == []
    assert rate >= 0.997


def test_every_record_has_exactly_one_fate(result_and_truth, report):
    result, _, path = result_and_truth
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


def test_every_decision_member_points_back_to_its_decision(result_and_truth):
    result, _, _ = result_and_truth
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
