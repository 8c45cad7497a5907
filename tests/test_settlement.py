"""Settlement through the real engine: payments, batches and payouts to the bank, with the
reference config docs/examples/settlement.toml."""

from __future__ import annotations

import json
import tomllib
from collections import Counter
from pathlib import Path

import pytest

from state.config import MatchConfig, from_toml
from state.contract import Decoder, Event, Invalid
from state.engine import Shard, decode_snapshot, encode_snapshot
from state.routing import split

ROOT = Path(__file__).resolve().parent.parent
SETTLEMENT = from_toml(tomllib.loads((ROOT / "docs/examples/settlement.toml").read_text()))


def rec(source, event_id, amount, when, kind="transaction", **fields):
    """One record value; `when` is "DD HH:MM" in November 2026."""
    day, clock = when.split()
    body = {"type": kind, "source": source, "event_id": event_id, "account": "M1",
            "currency": "EUR", "amount": amount, "event_time": f"2026-11-{day}T{clock}:00Z"}
    body.update({k: v for k, v in fields.items() if v is not None})
    return json.dumps(body).encode()


def beat(source, when=None):
    """A heartbeat at "DD HH:MM" in November 2026, or by default at the year's end."""
    if when is None:
        moment = "2026-12-31T00:00:00Z"
    else:
        day, clock = when.split()
        moment = f"2026-11-{day}T{clock}:00Z"
    return json.dumps({"type": "heartbeat", "source": source, "event_time": moment}).encode()


def feed(shard, config, logs, start=None, stop=None):
    """Ingest each source's log (one partition each), records [start:stop] of each."""
    decoder, decisions, fates = Decoder(config), [], []
    for source, topic in config.topics.items():
        values = logs.get(source, [])
        lo = start or 0
        records = [decoder.decode(v, topic, 0, lo + i) for i, v in enumerate(values[lo:stop])]
        for piece in split(topic, 0, records, 1, config.max_clock_skew_us):
            out = shard.ingest(piece)
            decisions += out.decisions
            fates += out.fates
    return decisions, fates


def run(logs, config=SETTLEMENT, close=True):
    logs = {s: list(v) + ([beat(s)] if close else []) for s, v in logs.items()}
    for source in config.topics:
        logs.setdefault(source, [beat(source)] if close else [])
    shard = Shard(config, [(t, 0) for t in config.topics.values()])
    decisions, fates = feed(shard, config, logs)
    return decisions, fates, shard


def of(decisions, relation, member):
    """The one decision of `relation` that has `member` ("source:event_id")."""
    found = [d for d in decisions if d.relation == relation and member in d.member_event_ids]
    assert len(found) == 1, (relation, member, decisions)
    return found[0]


def a_day(item_amount="100.00", payout_amount="98.00", credit_amount="98.00",
          credit_ref="ACQ PAYOUT B1", report_item=True):
    """A payment, its item (fee 2.00) in batch B1, B1's payout, and the bank's credit."""
    processor = [rec("processor", "i1", item_amount, "21 23:30", fee="2.00", batch_id="B1",
                     idempotency_key="k1")] if report_item else []
    processor.append(rec("processor", "po1", payout_amount, "21 23:40", "payout", batch_id="B1",
                         reference="TR-1"))
    return {"ledger": [rec("ledger", "l1", "100.00", "21 10:00", idempotency_key="k1")],
            "processor": processor,
            "bank": [rec("bank", "c1", credit_amount, "23 06:00", reference=credit_ref)]}


def test_a_clean_settlement_is_three_matches_and_every_record_one_fate():
    decisions, fates, _ = run(a_day())
    payment = of(decisions, "payments", "ledger:l1")
    assert (payment.kind, payment.tier, payment.fee_minor) == ("match", 1, 200)
    assert payment.member_event_ids == ["ledger:l1", "processor:i1"]
    batch = of(decisions, "batches", "processor:po1")
    assert (batch.kind, batch.tier, batch.amount_minor) == ("match", 1, 9800)
    assert sorted(batch.member_event_ids) == ["processor:i1", "processor:po1"]
    deposit = of(decisions, "deposits", "bank:c1")
    assert (deposit.kind, deposit.tier) == ("match", 1)
    assert sorted(deposit.member_event_ids) == ["bank:c1", "processor:po1"]
    by_ref = {f"{f.topic}:{f.partition}:{f.offset}": f for f in fates if f.outcome != "heartbeat"}
    assert len(by_ref) == 4 and all(f.outcome == "matched" for f in by_ref.values())
    primary = {"ledger:l1": payment, "processor:i1": payment, "processor:po1": batch,
               "bank:c1": deposit}
    for fate in by_ref.values():
        assert fate.decision_id == primary[f"{fate.source}:{fate.event_id}"].decision_id
    ids = [d.decision_id for d in decisions]
    assert len(ids) == len(set(ids)) == 3


def test_a_credit_that_does_not_name_the_batch_is_tier_2_when_alone():
    decisions, _, _ = run(a_day(credit_ref="ACQUIRER SETTLEMENT"))
    assert of(decisions, "deposits", "bank:c1").tier == 2


def test_an_unreported_item_is_missing_and_its_batch_does_not_settle():
    decisions, _, _ = run(a_day(report_item=False))
    assert of(decisions, "payments", "ledger:l1").exception_kind == "missing_counterpart"
    batch = of(decisions, "batches", "processor:po1")
    assert batch.exception_kind == "missing_counterpart" and batch.missing_sources == ["processor"]


def test_a_payout_that_differs_from_its_items_is_a_settlement_mismatch():
    decisions, _, _ = run(a_day(payout_amount="97.50", credit_amount="97.50"))
    batch = of(decisions, "batches", "processor:po1")
    assert batch.exception_kind == "settlement_mismatch"
    assert "difference -0.50 EUR" in batch.reason and "processor:i1" in batch.member_event_ids
    assert of(decisions, "payments", "ledger:l1").kind == "match"  # the payment itself is fine
    assert of(decisions, "deposits", "bank:c1").kind == "match"  # and so is the bank's credit


def test_refunds_and_a_batch_fee_settle_and_a_zero_net_batch_needs_no_payout():
    ledger = [rec("ledger", "l1", "50.00", "21 09:00", idempotency_key="k1"),
              rec("ledger", "l2", "-20.00", "21 11:00", idempotency_key="r2")]
    processor = [rec("processor", "i1", "50.00", "21 23:00", fee="1.00", batch_id="B1",
                     idempotency_key="k1"),
                 rec("processor", "i2", "-20.00", "21 23:01", batch_id="B1", idempotency_key="r2"),
                 rec("processor", "f1", "0.00", "21 23:02", fee="0.50", batch_id="B1"),
                 rec("processor", "po1", "28.50", "21 23:10", "payout", batch_id="B1"),
                 rec("processor", "z1", "5.00", "21 23:20", batch_id="B2"),
                 rec("processor", "z2", "-5.00", "21 23:21", batch_id="B2")]
    decisions, fates, _ = run({"ledger": ledger, "processor": processor,
                               "bank": [rec("bank", "c1", "28.50", "22 06:00", reference="B1")]})
    assert of(decisions, "payments", "ledger:l2").kind == "match"
    assert of(decisions, "batches", "processor:po1").kind == "match"
    fee_line = next(f for f in fates if f.event_id == "f1")
    assert fee_line.decision_id == of(decisions, "batches", "processor:f1").decision_id
    zero = of(decisions, "batches", "processor:z1")
    assert zero.kind == "match" and "nothing to pay out" in zero.reason
    # z1 and z2 carry no idempotency key and no ledger payment: the payments relation says so
    assert of(decisions, "payments", "processor:z1").exception_kind == "missing_counterpart"


def test_a_credit_short_by_a_bank_charge_goes_to_review_never_matched():
    decisions, _, _ = run(a_day(credit_amount="97.90"))
    review = of(decisions, "deposits", "processor:po1")
    assert review.exception_kind == "review"
    assert [c.event for c in review.candidates] == ["bank:c1"]
    assert not [d for d in decisions if d.relation == "deposits" and d.kind == "match"]


def two_equal_payouts(first_ref, second_ref):
    """Payouts of B1 and B2 for 40.00, and two credits of 40.00 with these references."""
    processor = [rec("processor", "po1", "40.00", "21 23:40", "payout", batch_id="B1"),
                 rec("processor", "po2", "40.00", "21 23:50", "payout", batch_id="B2")]
    bank = [rec("bank", "c1", "40.00", "23 06:00", reference=first_ref),
            rec("bank", "c2", "40.00", "23 06:01", reference=second_ref)]
    return run({"processor": processor, "bank": bank})[0]


def test_two_equal_payouts_and_unhelpful_references_are_ambiguous():
    decisions = two_equal_payouts("ACQUIRER", "ACQUIRER")
    deposits = [d for d in decisions if d.relation == "deposits"]
    assert {d.exception_kind for d in deposits} == {"ambiguous"}
    assert not [d for d in decisions if d.relation == "deposits" and d.kind == "match"]


def test_the_reference_tells_equal_payouts_apart():
    decisions = two_equal_payouts("PAYOUT B2", "PAYOUT B1")
    assert sorted(of(decisions, "deposits", "processor:po1").member_event_ids) == [
        "bank:c2", "processor:po1"]
    assert of(decisions, "deposits", "processor:po2").tier == 1


def test_a_reference_names_a_batch_as_a_whole_word_only():
    processor = [rec("processor", "po1", "40.00", "21 23:40", "payout", batch_id="B1"),
                 rec("processor", "po2", "40.00", "21 23:50", "payout", batch_id="B12")]
    bank = [rec("bank", "c1", "40.00", "23 06:00", reference="PAYOUT B12")]
    decisions, _, _ = run({"processor": processor, "bank": bank})
    assert sorted(of(decisions, "deposits", "bank:c1").member_event_ids) == [
        "bank:c1", "processor:po2"]
    assert of(decisions, "deposits", "processor:po1").exception_kind == "missing_counterpart"


def test_a_payout_a_credit_names_is_no_rival_for_another_credit():
    """po2 has its own named credit, so it cannot take c1: po1 takes c1, whichever payout
    comes first."""
    for first, second in (("21 23:40", "21 23:50"), ("21 23:50", "21 23:40")):
        processor = [rec("processor", "po1", "40.00", first, "payout", batch_id="B1"),
                     rec("processor", "po2", "40.00", second, "payout", batch_id="B2")]
        bank = [rec("bank", "c1", "40.00", "23 06:00", reference="ACQUIRER"),
                rec("bank", "c2", "40.00", "23 06:01", reference="PAYOUT B2")]
        processor.sort(key=lambda v: json.loads(v)["event_time"])
        decisions, _, _ = run({"processor": processor, "bank": bank})
        assert of(decisions, "deposits", "bank:c1").member_event_ids == ["processor:po1", "bank:c1"] or \
            sorted(of(decisions, "deposits", "bank:c1").member_event_ids) == ["bank:c1", "processor:po1"]
        assert of(decisions, "deposits", "bank:c2").tier == 1


def test_a_credit_over_by_the_tolerance_of_its_own_amount_goes_to_review():
    """101.00 is within 1% of 101.01, the larger amount, though beyond 1% of 100.00."""
    decisions, _, _ = run(a_day(item_amount="102.00", payout_amount="100.00",
                                credit_amount="101.01", report_item=True))
    assert of(decisions, "deposits", "processor:po1").exception_kind == "review"


def test_a_payout_never_paid_and_a_credit_nothing_explains_are_missing():
    processor = [rec("processor", "po1", "40.00", "21 23:40", "payout", batch_id="B1")]
    bank = [rec("bank", "c9", "77.00", "23 06:00", reference="REFUND FROM SUPPLIER"),
            rec("bank", "c8", "40.00", "28 06:00", reference="B1")]  # beyond the 5-day lag
    decisions, _, _ = run({"processor": processor, "bank": bank})
    payout = of(decisions, "deposits", "processor:po1")
    assert payout.exception_kind == "missing_counterpart" and payout.missing_sources == ["bank"]
    for credit in ("bank:c9", "bank:c8"):
        unexplained = of(decisions, "deposits", credit)
        assert unexplained.exception_kind == "missing_counterpart"
        assert unexplained.missing_sources == ["processor"]


def test_payments_do_not_wait_for_the_bank():
    """The bank's partition says nothing for days: payments and batches are decided
    anyway, deposits wait."""
    logs = a_day()
    logs["ledger"].append(beat("ledger", "25 00:00"))
    logs["processor"].append(beat("processor", "25 00:00"))
    logs["bank"] = []
    decisions, fates, shard = run(logs, close=False)
    assert of(decisions, "payments", "ledger:l1").kind == "match"
    assert of(decisions, "batches", "processor:po1").kind == "match"
    assert not [d for d in decisions if d.relation == "deposits"]
    assert shard.open_count() == 0 == shard.pending_count() == len(shard.pending())
    assert [e.event_id for desk in shard.desks for b in desk.accounts.values()
            for e in b.open] == ["po1"]  # still waiting for its credit


def test_a_config_without_relations_refuses_payouts_and_ignores_nothing_else():
    decoder = Decoder(MatchConfig())
    payout = decoder.decode(rec("processor", "po1", "1.00", "21 10:00", "payout", batch_id="B"),
                            "recon.processor", 0, 0)
    assert isinstance(payout, Invalid) and "no relation of the config takes a payout" in payout.reason
    item = decoder.decode(rec("processor", "i1", "1.00", "21 10:00", fee="0.10", batch_id="B"),
                          "recon.processor", 0, 1)
    assert isinstance(item, Event) and (item.fee_minor, item.batch_id) == (10, "B")


@pytest.mark.parametrize("fields, reason", [
    (dict(kind="payout"), "batch_id is missing or null"),
    (dict(kind="payout", batch_id="B", fee="1.00"), "fee is not a field of a payout"),
    (dict(kind="payout", batch_id="B", idempotency_key="k"), "idempotency_key is not a field"),
    (dict(fee="0.001", batch_id="B"), "fee '0.001' has 3 decimals; EUR allows 2"),
    (dict(fee="two", batch_id="B"), "fee 'two' is not a decimal number"),
    (dict(batch_id=""), "batch_id must be 1 to 128 characters"),
    (dict(amount="0.00", fee="1.00"), "a fee line (amount 0 with a fee) needs a batch_id"),
    (dict(source="bank", kind="payout", batch_id="B"), "no relation of the config takes a payout"),
])
def test_invalid_settlement_records_say_why(fields, reason):
    source = fields.pop("source", "processor")
    amount = fields.pop("amount", "10.00")
    record = Decoder(SETTLEMENT).decode(rec(source, "x", amount, "21 10:00", **fields),
                                        f"recon.{source}", 0, 0)
    assert isinstance(record, Invalid) and reason in record.reason, record


def test_a_snapshot_anywhere_resumes_to_the_same_decisions():
    logs = a_day()
    logs["processor"] += [rec("processor", "po2", "40.00", "21 23:50", "payout", batch_id="B2")]
    logs["bank"] += [rec("bank", "c2", "40.00", "24 06:00", reference="B2")]
    logs = {s: v + [beat(s)] for s, v in logs.items()}
    whole, _, _ = run(logs, close=False)
    for cut in range(1, 4):
        shard = Shard(SETTLEMENT, [(t, 0) for t in SETTLEMENT.topics.values()])
        first, _ = feed(shard, SETTLEMENT, logs, stop=cut)
        resumed = decode_snapshot(encode_snapshot(shard))
        rest, _ = feed(resumed, SETTLEMENT, logs, start=cut)
        assert sorted(d.decision_id for d in first + rest) == sorted(d.decision_id for d in whole)
    assert Counter(d.relation for d in whole) == {"payments": 1, "batches": 2, "deposits": 2}
