"""Tests for scoring decisions against a generated day's truth (flows.dev.truth)."""
from __future__ import annotations

import msgspec

from flows.dev.generate import TruthRecord
from flows.dev.truth import score
from state.decision import Decision


def _truth(payment: str, scenario: str, clean: bool, sources=("bank", "processor", "ledger"),
           flags=()) -> list[TruthRecord]:
    return [TruthRecord(f"recon.{s}", 0, int(payment[1:]), s, f"{s}-{payment}", payment, scenario,
                        list(flags), clean) for s in sources]


def _day(tmp_path):
    """P1 and P2 clean; P3 lost its ledger record; P4 is half of an ambiguous pair; a malformed line."""
    truth = (_truth("P1", "key", True) + _truth("P2", "no_key", True)
             + _truth("P3", "key", False, ("bank", "processor"), ["missing"])
             + _truth("P4", "ambiguous", False)
             + [TruthRecord("recon.bank", 0, 9, "bank", None, None, "malformed", [], False)])
    (tmp_path / "truth.jsonl").write_bytes(msgspec.json.Encoder().encode_lines(truth))
    return tmp_path


def _decision(kind: str, *members: str) -> Decision:
    return Decision(decision_id="-".join(members), kind=kind, tier=1 if kind == "match" else None,
                    exception_kind=None if kind == "match" else "missing_counterpart",
                    account="ACC00000", currency="EUR", amount_minor=100, confidence=1.0,
                    member_event_ids=list(members), member_refs=[], window_start=0, window_end=1)


def test_a_match_within_one_payment_counts_and_one_across_payments_is_false(tmp_path):
    decisions = [
        _decision("match", "bank:bank-P1", "processor:processor-P1", "ledger:ledger-P1"),
        _decision("match", "bank:bank-P2", "processor:processor-P4"),  # two payments
        _decision("exception", "bank:bank-P3", "processor:processor-P3"),
    ]
    result = score(decisions, _day(tmp_path))
    assert (result.clean, result.auto_matched) == (2, 1)
    assert result.false_matches == [["bank:bank-P2", "processor:processor-P4"]]
    assert result.rate == 0.5


def test_only_clean_payments_count_and_exceptions_match_nothing(tmp_path):
    decisions = [
        _decision("match", "bank:bank-P3", "processor:processor-P3"),  # matched, but not clean
        _decision("exception", "bank:bank-P1", "processor:processor-P1", "ledger:ledger-P1"),
        # the accuracy test's rule: members of one payment, not necessarily all of its records
        _decision("match", "processor:processor-P2", "ledger:ledger-P2"),
    ]
    result = score(decisions, _day(tmp_path))
    assert (result.clean, result.auto_matched, result.false_matches) == (2, 1, [])


def test_no_decisions_match_nothing(tmp_path):
    result = score([], _day(tmp_path))
    assert (result.clean, result.auto_matched, result.false_matches, result.rate) == (2, 0, [], 0.0)


def test_a_day_without_clean_payments_missed_none(tmp_path):
    truth = _truth("P3", "key", False, ("bank", "processor"), ["missing"])
    (tmp_path / "truth.jsonl").write_bytes(msgspec.json.Encoder().encode_lines(truth))
    assert score([], tmp_path).rate == 1.0
