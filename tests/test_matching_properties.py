"""Properties of the matching rules on dense accounts (hypothesis), and the window edges.

- a payment reported twice keeps its match: the first report in canonical order is
  the original, every later one a duplicate naming it, whichever window sees them first;
- exact evidence wins: a keyed, exact, complete payment is one tier-1 match however
  many payments its account carries, payments with exact evidence are not moved by
  unrelated ones, and which record of a window comes first changes none of that;
- an anchor is decided only once everything its decision reads is complete, even
  when counterparts arrive out of order exactly at the window's or the evidence's end.
"""

from __future__ import annotations

import json
from collections import Counter, defaultdict

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from state.contract import Decoder
from state.decision import DUPLICATE, MISSING
from state.engine import Shard
from state.routing import split
from state.verdicts import event_order
from tests import payments as pay

DENSE = settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
CLOSE = st.sampled_from([10_000, 10_000, 10_100, 9_900, 9_850, 20_000, 19_700, 20_000])
HORIZON_S = pay.CONFIG.redelivery_horizon_us // 1_000_000


def payment_of(fate) -> str:
    """The payment name in an event id '<source letter><name>[-again]'."""
    return fate.event_id[1:].removesuffix("-again")


def fates_of(fates: dict, name: str) -> dict:
    return {ref: (f.outcome, f.decision_id) for ref, f in fates.items()
            if f.event_id and payment_of(f) == name}


def outcome_of(decisions: dict, fates: dict, name: str) -> Counter:
    """What became of a payment's records, free of log positions (which other records shift):
    per record, its outcome and its decision's kind, tier, members, reason and candidates."""
    found = Counter()
    for outcome, decision_id in fates_of(fates, name).values():
        d = decisions[decision_id]
        found[(outcome, d.exception_kind, d.tier, tuple(d.member_event_ids), d.reason,
               tuple((c.event, c.confidence) for c in d.candidates))] += 1
    return found


def decided(logs, **kwargs):
    decisions, fates = pay.run_logs(logs, **kwargs)
    return {d.decision_id: d for d in decisions}, fates


# ----------------------------------------------------------------------------- duplicates

def events_of(logs):
    decoder = Decoder(pay.CONFIG)
    return [decoder.decode(v, topic, partition, offset) for (topic, partition), values in logs.items()
            for offset, v in enumerate(values)]


@DENSE
@given(named=pay.payments(amounts=CLOSE))
def test_of_the_reports_of_one_key_the_first_is_the_original(named):
    logs = pay.logs(named)
    decisions, fates = decided(logs)
    reports = defaultdict(list)  # (account, source, key) -> its records that are not redeliveries
    for event in events_of(logs):
        fate = fates.get(getattr(event, "ref", None))
        if getattr(event, "idempotency_key", None) and fate.outcome != "redelivery":
            reports[(event.account, event.source, event.idempotency_key)].append(event)
    for events in reports.values():
        events.sort(key=event_order)
        if events[-1].time_us - events[0].time_us > HORIZON_S * 1_000_000:
            continue  # reports further apart than the horizon are separate originals
        kinds = [decisions[fates[e.ref].decision_id].exception_kind for e in events]
        assert kinds[0] != DUPLICATE, "the first report in canonical order is the original"
        assert all(k == DUPLICATE for k in kinds[1:]), "every later report is a duplicate"


@DENSE
@given(named=pay.payments(amounts=CLOSE))
def test_a_duplicate_names_a_record_that_is_no_duplicate(named):
    decisions, fates = decided(pay.logs(named))
    for decision in decisions.values():
        if decision.exception_kind == DUPLICATE:
            original = fates[decision.candidates[0].ref]
            assert decisions[original.decision_id].exception_kind != DUPLICATE


@DENSE
@given(target=pay.payment(amounts=st.just(10_000), complete=True, twice=True, scheme="key"),
       noise=pay.payments(0, 15, amounts=CLOSE), before=st.integers(0, 2400))
def test_a_payment_reported_twice_keeps_its_match_whichever_window_sees_it_first(target, noise, before):
    """An earlier, unrelated anchor whose window may or may not hold both reports."""
    target = [r | {"key": "the-key", "jitter": min(r["jitter"], 60)} for r in target]
    start = min(r["second"] for r in target) + 2400
    target = [r | {"second": r["second"] + 2400} for r in target]
    noise = pay.distinct_keys(noise, "n")
    anchor = [{"source": "ledger", "amount": 55_555, "key": None, "jitter": 0,
               "second": start - before}]
    alone_decisions, alone = decided(pay.logs({"P": target, **noise}))
    decisions, fates = decided(pay.logs({"P": target, "X": anchor, **noise}))
    assert outcome_of(decisions, fates, "P") == outcome_of(alone_decisions, alone, "P")
    kinds = sorted((decisions[f[1]].exception_kind or "match", decisions[f[1]].tier)
                   for f in fates_of(fates, "P").values() if f[0] != "redelivery")
    assert kinds == [("duplicate", None)] + [("match", 1)] * 3


# ----------------------------------------------------------------------------- exact evidence wins

@DENSE
@given(target=pay.payment(amounts=st.just(10_000), complete=True, twice=False, scheme="key"),
       noise=pay.payments(0, 50, amounts=CLOSE))
def test_a_keyed_exact_complete_triple_is_always_one_tier1_match(target, noise):
    target = [r | {"key": "the-key", "again": False} for r in target]
    decisions, fates = decided(pay.logs({"T": target, **pay.distinct_keys(noise, "n")}))
    (decision_id,) = {f[1] for f in fates_of(fates, "T").values()}
    match = decisions[decision_id]
    assert match.kind == "match" and match.tier == 1 and len(match.member_event_ids) == 3


@st.composite
def unrelated(draw, avoid: int):
    """Complete payments of other amounts (close to `avoid`, never equal, all distinct)."""
    amounts = draw(st.lists(st.integers(9_700, 10_300).filter(lambda a: a != avoid),
                            unique=True, max_size=25))
    return {f"u{i}": draw(pay.payment(amounts=st.just(a), complete=True)) for i, a in enumerate(amounts)}


@DENSE
@given(target=pay.payment(amounts=st.just(10_000), twice=False), data=st.data())
def test_unrelated_payments_never_change_a_keyed_payments_decision(target, data):
    target = [r | {"key": "the-key"} for r in target]
    others = pay.distinct_keys(data.draw(unrelated(10_000)))
    alone_decisions, alone = decided(pay.logs({"P": target}))
    decisions, fates = decided(pay.logs({"P": target, **others}))
    assert outcome_of(decisions, fates, "P") == outcome_of(alone_decisions, alone, "P")


def reorder(records: list[dict], order: list[int]) -> list[dict]:
    """The same records with their event times handed round in another order."""
    seconds = [records[i % len(records)]["second"] for i in order[:len(records)]]
    return [r | {"second": s} for r, s in zip(records, seconds)]


@DENSE
@given(exact=st.lists(st.integers(5_000, 15_000), unique=True, min_size=1, max_size=12),
       data=st.data())
def test_exact_payments_decide_alike_whichever_record_of_the_window_comes_first(exact, data):
    """Payments with exact evidence among weaker records (incomplete payments within the
    tolerance), all inside one window, with their records' times handed round."""
    within = st.integers(0, 900)
    named = {f"x{i}": data.draw(pay.payment(amounts=st.just(a), complete=True, start=within, twice=False,
                                            spread=st.integers(0, 300)))
             for i, a in enumerate(exact)}
    weak = st.integers(4_900, 15_300).filter(  # never an exact amount, nor one net of a fee
        lambda a: not {a - a * fee // 100 for fee in (0, 1, 2)} & set(exact))
    named |= {f"w{i}": data.draw(pay.payment(amounts=st.just(a), start=within, twice=False))
              for i, a in enumerate(data.draw(st.lists(weak, unique=True, max_size=12)))}
    named = pay.distinct_keys(named)
    orders = {name: data.draw(st.permutations(range(3))) for name in named}
    shuffled = {name: reorder(records, orders[name]) for name, records in named.items()}
    first_decisions, first = decided(pay.logs(named))
    second_decisions, second = decided(pay.logs(shuffled))
    for name in [n for n in named if n.startswith("x")]:
        (decision_id,) = {d for _, d in fates_of(first, name).values()}
        assert first_decisions[decision_id].kind == "match"
        (other_id,) = {d for _, d in fates_of(second, name).values()}
        assert sorted(second_decisions[other_id].member_event_ids) == \
               sorted(first_decisions[decision_id].member_event_ids)


# ----------------------------------------------------------------------------- window edges

def hb(source: str, at: str) -> bytes:
    return json.dumps({"type": "heartbeat", "source": source, "event_time": f"2026-11-21T{at}Z"}).encode()


def tx(source, event_id, amount, at, key=None):
    return json.dumps({"source": source, "event_id": event_id, "account": "A1", "amount": amount,
                       "currency": "EUR", "event_time": f"2026-11-21T{at}Z",
                       "idempotency_key": key}).encode()


def feed_in_steps(steps):
    """steps: [(source, [values])] fed in this order, one slice per step."""
    config, decoder = pay.CONFIG, Decoder(pay.CONFIG)
    parts = [(topic, 0) for topic in config.topics.values()]
    shard, offsets, decisions = Shard(config, parts), defaultdict(int), []
    for source, values in steps:
        topic = config.topics[source]
        records = [decoder.decode(v, topic, 0, offsets[topic] + i) for i, v in enumerate(values)]
        offsets[topic] += len(values)
        decisions += shard.ingest(split(topic, 0, records, 1, config.max_clock_skew_us)[0]).decisions
    return decisions


def members(decisions):
    return {tuple(d.member_event_ids): (d.exception_kind or "match", d.tier) for d in decisions}


def test_a_report_at_the_window_end_arriving_out_of_order_still_joins_and_stays_the_original():
    """The window ends at 10:30:00; every partition has reached 10:31:59 when processor:p-a
    (10:30:00) arrives: within the allowed lateness, so the window was not closed yet."""
    decisions = feed_in_steps([
        ("bank", [tx("bank", "b1", "10.00", "10:00:00", "k"), tx("bank", "z", "77.00", "10:31:59")]),
        ("ledger", [tx("ledger", "l1", "10.00", "10:10:00", "k"), hb("ledger", "10:31:59")]),
        ("processor", [tx("processor", "p-b", "10.00", "10:30:00", "k"), hb("processor", "10:31:59"),
                       tx("processor", "p-a", "10.00", "10:30:00", "k")]),
        *[(s, [hb(s, "14:00:00")]) for s in ("bank", "processor", "ledger")]])
    outcome = members(decisions)
    assert outcome[("bank:b1", "ledger:l1", "processor:p-a")] == ("match", 1)
    duplicate = next(d for d in decisions if d.member_event_ids == ["processor:p-b"])
    assert duplicate.exception_kind == DUPLICATE and duplicate.candidates[0].event == "processor:p-a"


def test_exact_evidence_at_the_evidence_end_arriving_out_of_order_still_wins():
    """bank:a (98.00, no key) has no exact counterpart; processor:p (100.00) sits at its
    window's end, 10:30:00, and is the first of a keyed triple whose bank record, bank:b,
    sits at the end of a's evidence, 11:00:00, and arrives after every partition has
    reached 11:01:59. The triple must stay whole: a is left alone, not reviewed with p."""
    decisions = feed_in_steps([
        ("bank", [tx("bank", "a", "98.00", "10:00:00"), tx("bank", "z", "500.00", "11:01:59")]),
        ("processor", [tx("processor", "p", "100.00", "10:30:00", "k"), hb("processor", "11:01:59")]),
        ("ledger", [tx("ledger", "l", "100.00", "10:45:00", "k"), hb("ledger", "11:01:59")]),
        ("bank", [tx("bank", "b", "100.00", "11:00:00", "k")]),
        *[(s, [hb(s, "14:00:00")]) for s in ("bank", "processor", "ledger")]])
    outcome = members(decisions)
    assert outcome[("processor:p", "ledger:l", "bank:b")] == ("match", 1)
    assert outcome[("bank:a",)] == (MISSING, None)
