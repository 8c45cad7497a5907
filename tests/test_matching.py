"""One test per matching rule and exception kind, through the real engine."""

from state.config import MatchConfig
from state.contract import Decoder
from state.decision import AMBIGUOUS, DUPLICATE, LATE, MISMATCH, MISSING, REVIEW
from state.routing import split
from tests.engine_helpers import heartbeat, only, run, tx


def outcomes(fates):
    return {(f.topic, f.offset): f.outcome for f in fates}


def test_tier1_shared_key_equal_amounts():
    decisions, fates, _ = run({"bank": [tx("bank", "b1", "10.00", 0, "k")],
                               "processor": [tx("processor", "p1", "10.00", 1, "k")],
                               "ledger": [tx("ledger", "l1", "10.00", 2, "k")]})
    match = only(decisions, kind="match")
    assert match.tier == 1 and match.confidence == 1.0
    assert match.member_event_ids == ["bank:b1", "processor:p1", "ledger:l1"]
    assert match.member_refs == ["recon.bank:0:0", "recon.processor:0:0", "recon.ledger:0:0"]
    assert sum(f.outcome == "matched" for f in fates) == 3


def test_tier2_when_bank_lacks_the_key():
    decisions, _, _ = run({"bank": [tx("bank", "b1", "10.00", 3)],
                           "processor": [tx("processor", "p1", "10.00", 1, "k")],
                           "ledger": [tx("ledger", "l1", "10.00", 2, "k")]})
    assert only(decisions, kind="match").tier == 2


def test_tier2_with_no_keys_exact_amount_inside_window():
    decisions, _, _ = run({"bank": [tx("bank", "b1", "10.00", 0)],
                           "processor": [tx("processor", "p1", "10.00", 20)],
                           "ledger": [tx("ledger", "l1", "10.00", 29)]})
    match = only(decisions, kind="match")
    assert match.tier == 2 and 0 < match.confidence < 1


def test_outside_the_window_is_missing_counterpart_naming_the_missing_sources():
    decisions, _, _ = run({"bank": [tx("bank", "b1", "10.00", 0)],
                           "processor": [tx("processor", "p1", "10.00", 20)],
                           "ledger": [tx("ledger", "l1", "10.00", 31)]})
    first = only(decisions, exception_kind=MISSING, member_event_ids=["bank:b1", "processor:p1"])
    assert first.missing_sources == ["ledger"]
    assert only(decisions, member_event_ids=["ledger:l1"]).missing_sources == ["bank", "processor"]


def test_key_linked_amounts_differ_is_amount_mismatch_with_high_confidence():
    decisions, _, _ = run({"bank": [tx("bank", "b1", "97.00", 0, "k")],
                           "processor": [tx("processor", "p1", "100.00", 1, "k")],
                           "ledger": [tx("ledger", "l1", "100.00", 2, "k")]})
    mismatch = only(decisions, exception_kind=MISMATCH)
    assert len(mismatch.member_event_ids) == 3 and mismatch.confidence >= 0.9
    assert "bank 97.00" in mismatch.reason


def test_two_equal_candidates_is_ambiguous_never_a_guess():
    decisions, _, _ = run({"bank": [tx("bank", "b1", "10.00", 0), tx("bank", "b2", "10.00", 2)],
                           "processor": [tx("processor", "p1", "10.00", 1, "k1"),
                                         tx("processor", "p2", "10.00", 3, "k2")],
                           "ledger": [tx("ledger", "l1", "10.00", 1, "k1"),
                                      tx("ledger", "l2", "10.00", 3, "k2")]})
    assert not [d for d in decisions if d.kind == "match"]
    ambiguous = only(decisions, exception_kind=AMBIGUOUS)
    assert set(ambiguous.member_event_ids) == {"bank:b1", "bank:b2", "processor:p1", "processor:p2",
                                               "ledger:l1", "ledger:l2"}
    assert len(ambiguous.candidates) == 5


def test_amount_within_tolerance_is_review_with_ranked_candidates():
    decisions, _, _ = run({"bank": [tx("bank", "b1", "98.50", 5, reference="INV 7 ACME")],
                           "processor": [tx("processor", "p1", "100.00", 1, "k", reference="INV 7 ACME")],
                           "ledger": [tx("ledger", "l1", "100.00", 2, "k")]})
    review = only(decisions, exception_kind=REVIEW)
    assert review.member_event_ids == ["processor:p1", "ledger:l1", "bank:b1"]
    assert [c.event for c in review.candidates] == ["bank:b1"]
    assert 0 < review.candidates[0].confidence < 1


def test_beyond_tolerance_is_not_review():
    decisions, _, _ = run({"bank": [tx("bank", "b1", "90.00", 5)],
                           "processor": [tx("processor", "p1", "100.00", 1, "k")],
                           "ledger": [tx("ledger", "l1", "100.00", 2, "k")]})
    assert {d.exception_kind for d in decisions} == {MISSING}


def test_same_key_two_event_ids_from_one_source_is_duplicate():
    decisions, _, _ = run({"bank": [tx("bank", "b1", "10.00", 0, "k")],
                           "processor": [tx("processor", "p1", "10.00", 1, "k"),
                                         tx("processor", "p1-dup", "10.00", 1, "k", second=5)],
                           "ledger": [tx("ledger", "l1", "10.00", 2, "k")]})
    assert only(decisions, kind="match").tier == 1
    duplicate = only(decisions, exception_kind=DUPLICATE)
    assert duplicate.member_event_ids == ["processor:p1-dup"]
    assert duplicate.candidates[0].event == "processor:p1"


def test_duplicate_beyond_the_window_is_still_a_duplicate():
    decisions, _, _ = run({"bank": [tx("bank", "b1", "10.00", 0, "k")],
                           "processor": [tx("processor", "p1", "10.00", 1, "k"),
                                         tx("processor", "p1-again", "10.00", 50, "k")],
                           "ledger": [tx("ledger", "l1", "10.00", 2, "k")]})
    assert only(decisions, exception_kind=DUPLICATE).member_event_ids == ["processor:p1-again"]


def test_redelivery_makes_no_new_decision_and_points_at_the_first():
    value = tx("processor", "p1", "10.00", 1, "k")
    decisions, fates, _ = run({"bank": [tx("bank", "b1", "10.00", 0, "k")],
                               "processor": [value, tx("processor", "p9", "5.00", 3), value],
                               "ledger": [tx("ledger", "l1", "10.00", 2, "k")]})
    match = only(decisions, kind="match")
    redelivered = [f for f in fates if f.outcome == "redelivery"]
    assert [(f.offset, f.decision_id) for f in redelivered] == [(2, match.decision_id)]
    assert len(decisions) == 2  # the match, and p9's missing counterpart


def test_late_event_is_judged_by_its_own_partition():
    decisions, fates, _ = run({"bank": [tx("bank", "b2", "5.00", 10), tx("bank", "b1", "10.00", 0)],
                               "processor": [tx("processor", "p1", "10.00", 0)],
                               "ledger": [tx("ledger", "l1", "10.00", 0)]})
    late = only(decisions, exception_kind=LATE)
    assert late.member_event_ids == ["bank:b1"] and "allowed lateness is 120s" in late.reason
    assert outcomes(fates)[("recon.bank", 1)] == "exception"


def test_within_allowed_lateness_is_not_late():
    decisions, _, _ = run({"bank": [tx("bank", "b2", "5.00", 1, second=59), tx("bank", "b1", "10.00", 0)],
                           "processor": [tx("processor", "p1", "10.00", 0)],
                           "ledger": [tx("ledger", "l1", "10.00", 0)]})
    assert only(decisions, kind="match").member_event_ids == ["bank:b1", "ledger:l1", "processor:p1"]


def test_invalid_record_is_an_exception_with_raw_bytes():
    decisions, fates, _ = run({"bank": [b"\xff not json"]})
    invalid = only(decisions, exception_kind="invalid")
    assert invalid.raw_base64 == "/yBub3QganNvbg==" and invalid.member_refs == ["recon.bank:0:0"]
    assert outcomes(fates)[("recon.bank", 0)] == "invalid"


def test_currencies_never_match_across():
    decisions, _, _ = run({"bank": [tx("bank", "b1", "10.00", 0, currency="USD")],
                           "processor": [tx("processor", "p1", "10.00", 1)],
                           "ledger": [tx("ledger", "l1", "10.00", 2)]})
    assert not [d for d in decisions if d.kind == "match"]


def test_accounts_never_match_across():
    decisions, _, _ = run({"bank": [tx("bank", "b1", "10.00", 0, account="A2")],
                           "processor": [tx("processor", "p1", "10.00", 1)],
                           "ledger": [tx("ledger", "l1", "10.00", 2)]})
    assert not [d for d in decisions if d.kind == "match"]


def test_without_heartbeats_windows_stay_pending_until_flush():
    values = {"bank": [tx("bank", "b1", "10.00", 0, "k")],
              "processor": [tx("processor", "p1", "10.00", 1, "k")],
              "ledger": [tx("ledger", "l1", "10.00", 2, "k")]}
    decisions, fates, shard = run(values, close=False)
    assert decisions == [] and len(shard.pending()) == 3
    out = shard.flush()
    assert [d.tier for d in out.decisions] == [1] and shard.pending() == []


def test_an_idle_partition_holds_the_watermark_back():
    config = MatchConfig()
    decisions, _, shard = run({"bank": [tx("bank", "b1", "10.00", 0, "k"), heartbeat("bank")],
                               "processor": [tx("processor", "p1", "10.00", 1, "k"), heartbeat("processor")],
                               "ledger": [tx("ledger", "l1", "10.00", 2, "k")]}, config, close=False)
    assert decisions == [] and shard.open_count() == 3


def test_match_window_is_configurable():
    config = MatchConfig(match_window_us=5 * 60 * 1_000_000)
    decisions, _, _ = run({"bank": [tx("bank", "b1", "10.00", 0)],
                           "processor": [tx("processor", "p1", "10.00", 6)],
                           "ledger": [tx("ledger", "l1", "10.00", 1)]}, config)
    assert not [d for d in decisions if d.kind == "match"]


def test_a_unique_candidate_that_could_complete_another_group_is_ambiguous():
    """Twin payments, the first without its bank record: b2 fits both; Tally must not guess."""
    decisions, _, _ = run({"bank": [tx("bank", "b2", "10.00", 3)],
                           "processor": [tx("processor", "p1", "10.00", 1, "k1"),
                                         tx("processor", "p2", "10.00", 3, "k2")],
                           "ledger": [tx("ledger", "l1", "10.00", 0, "k1"),
                                      tx("ledger", "l2", "10.00", 3, "k2")]})
    assert not [d for d in decisions if d.kind == "match"]
    assert "bank:b2" in only(decisions, exception_kind=AMBIGUOUS).member_event_ids


def test_a_quiet_account_forgets_its_memories_once_past_the_horizon():
    """Months of running must not keep every account ever seen: a decided account with no
    further events is dropped once the watermark passes its memories' redelivery horizon."""
    day = {s: [tx(s, f"{s}-1", "10.00", 0, key="k1", account="QUIET"),
               # another account's events move the watermark just past QUIET's window (10:30)
               tx(s, f"{s}-2", "5.00", 40, key="k2", account="BUSY")]
           for s in ("bank", "processor", "ledger")}
    decisions, _, shard = run(day, close=False)
    assert only(decisions, account="QUIET").kind == "match"
    assert "QUIET" in shard.desks[0].accounts  # within the horizon, its memories still guard redeliveries

    config, decoder = shard.config, Decoder(shard.config)
    for source, topic in config.topics.items():  # hours later, and not a word from QUIET
        (piece,) = split(topic, 0, [decoder.decode(heartbeat(source), topic, 0, 2)], 1,
                         config.max_clock_skew_us)
        shard.ingest(piece)
    assert "QUIET" not in shard.desks[0].accounts and "BUSY" not in shard.desks[0].accounts
