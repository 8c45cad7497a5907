"""Settlement properties over generated logs: the engine's `batches` and `deposits`
relations decide as the scan-based reference (tests/settlement_reference.py), every record
has one fate, chunking and snapshots change nothing, and no match pays the wrong amount.

The logs are small and crowded on purpose: 1-3 accounts, up to a dozen payouts of a few
amounts, times on a 10-minute grid so that records fall exactly on window and lag edges,
credits that name a batch, a payout reference, another batch or nothing, and credits short
by a little. Every record is valid and on time (each partition in time order).
"""

from __future__ import annotations

import json
import tomllib
from datetime import datetime, timedelta, timezone
from pathlib import Path

import msgspec
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from state.config import from_toml
from state.contract import Decoder, Event, Heartbeat
from state.decision import fate_key, sort_key
from state.engine import Shard, decode_snapshot, encode_snapshot
from state.routing import split
from state.verdicts import format_minor
from tests import settlement_reference as reference

ROOT = Path(__file__).resolve().parent.parent
UNIT = 600  # seconds: the grid every time is on
BASE = datetime(2026, 11, 21, tzinfo=timezone.utc)


def _config():
    """docs/examples/settlement.toml with windows of a few grid steps: a batch spans 3 steps,
    a credit comes 1 to 4 steps after its payout."""
    data = tomllib.loads((ROOT / "docs/examples/settlement.toml").read_text())
    data["relations"]["payments"]["window"] = "1h"
    data["relations"]["batches"]["window"] = f"{3 * UNIT}s"
    data["relations"]["deposits"]["lag"] = [f"{UNIT}s", f"{4 * UNIT}s"]
    return from_toml(data)


CONFIG = _config()
PROPERTIES = settings(max_examples=200, deadline=None,
                      suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
SECONDARY = ("batches", "deposits")


# ----------------------------------------------------------------------------- logs

def at(step: int) -> str:
    return (BASE + timedelta(seconds=step * UNIT)).strftime("%Y-%m-%dT%H:%M:%SZ")


def value(source, event_id, account, amount, step, kind="transaction", currency="EUR", **fields):
    body = {"type": kind, "source": source, "event_id": event_id, "account": account,
            "currency": currency, "amount": format_minor(amount, currency), "event_time": at(step)}
    body.update({k: (format_minor(v, currency) if k == "fee" else v)
                 for k, v in fields.items() if v is not None})
    return step, json.dumps(body).encode()


ACCOUNTS = ["M1", "M2", "M3"]
BATCH_IDS = st.sampled_from(["B1", "B2", "B3", "B12"])  # "B1" is inside "B12"
PAYOUT_AMOUNTS = st.sampled_from([4000, 4000, 4000, 4010, 3990, 10000])
LAGS = st.sampled_from([0, 1, 1, 2, 3, 4, 4, 5])  # in steps; the lag is 1 to 4
SHORT = st.sampled_from([0, 0, 0, 0, -1, -20, -40, -41, -100, 1])  # credit - payout, minor units


@st.composite
def payout_specs(draw, n, accounts):
    """One batch: items whose nets pay the payout (or not quite), the payout, maybe a credit."""
    account, batch = draw(st.sampled_from(accounts)), draw(BATCH_IDS)
    currency = draw(st.sampled_from(["EUR"] * 6 + ["USD"]))
    start = draw(st.integers(0, 8))
    amount = draw(PAYOUT_AMOUNTS)
    out = {"processor": [], "bank": [], "ledger": []}
    # items: one carries the fee; some batches add a refund, a split item or a fee line
    fee = draw(st.sampled_from([0, 100, 250]))
    pieces = [amount + fee]
    if draw(st.booleans()):
        pieces = [pieces[0] - 1500, 1500]
    if draw(st.booleans()):
        pieces = [pieces[0] + 700, -700]
    fee_line = draw(st.sampled_from([None, None, 50]))
    if fee_line:
        pieces[0] += fee_line
    drift = draw(st.sampled_from([0, 0, 0, 0, 1, -30]))  # the payout disagrees with its items
    mixed = draw(st.sampled_from([False] * 9 + [True]))
    for k, gross in enumerate(pieces):
        step = start + draw(st.sampled_from([0, 0, 1, 2, 3, 3, 4]))
        item_currency = "USD" if mixed and k == 0 and currency == "EUR" else currency
        out["processor"].append(value("processor", f"i{n}-{k}", account, gross, step,
                                      currency=item_currency, batch_id=batch,
                                      fee=fee if k == 0 and fee else None,
                                      idempotency_key=f"k{n}-{k}"))
        if draw(st.booleans()):
            out["ledger"].append(value("ledger", f"l{n}-{k}", account, gross,
                                       max(0, step - draw(st.integers(0, 2))),
                                       currency=item_currency, idempotency_key=f"k{n}-{k}"))
    if fee_line:
        out["processor"].append(value("processor", f"f{n}", account, 0, start + draw(st.integers(0, 4)),
                                      currency=currency, batch_id=batch, fee=fee_line))
    reference = draw(st.sampled_from([None, f"TR-{n}"]))
    payout_step = start + draw(st.sampled_from([0, 1, 2, 3, 3, 4]))
    if draw(st.integers(0, 9)) > 0:  # sometimes the payout never comes
        out["processor"].append(value("processor", f"po{n}", account, amount + drift, payout_step,
                                      "payout", currency=currency, batch_id=batch,
                                      reference=reference))
    if draw(st.integers(0, 4)) > 0:  # sometimes the bank never pays it
        text = draw(st.sampled_from([f"ACQ PAYOUT {batch}", batch.lower(), "ACQUIRER",
                                     reference or "SETTLEMENT", f"acq {reference or n}",
                                     "PAYOUT B2", None]))
        out["bank"].append(value("bank", f"c{n}", account, amount + drift + draw(SHORT),
                                 payout_step + draw(LAGS), currency=currency,
                                 reference=text))
    return out


@st.composite
def logs(draw, max_payouts=12):
    """{source: [value bytes]} in time order per source (ties in drawn order)."""
    merged = {"ledger": [], "processor": [], "bank": []}
    accounts = ACCOUNTS[:draw(st.integers(1, 3))]
    for n in range(draw(st.integers(1, max_payouts))):
        for source, records in draw(payout_specs(n, accounts)).items():
            merged[source] += records
    for n in range(draw(st.integers(0, 3))):  # credits nothing explains, or that compete
        merged["bank"].append(value("bank", f"s{n}", draw(st.sampled_from(accounts)),
                                    draw(PAYOUT_AMOUNTS), draw(st.integers(0, 14)),
                                    reference=draw(st.sampled_from([None, "B1", "PAYOUT B3"]))))
    return {source: [v for _, v in sorted(records, key=lambda r: r[0])]
            for source, records in merged.items()}


def far_beat(source):
    return json.dumps({"type": "heartbeat", "source": source,
                       "event_time": "2026-12-31T00:00:00Z"}).encode()


# ----------------------------------------------------------------------------- running

def parts():
    return [(topic, 0) for topic in CONFIG.topics.values()]


def decode_all(values):
    """{(topic, 0): [records]} with each record's real offset."""
    decoder = Decoder(CONFIG)
    return {(CONFIG.topics[s], 0): [decoder.decode(v, CONFIG.topics[s], 0, i)
                                    for i, v in enumerate(values.get(s, []))]
            for s in CONFIG.topics}


def run(values, close="flush", schedule=(), snapshots=frozenset()):
    """Feed the log to one shard: `schedule` steps of (partition, chunk size), then the
    rest partition by partition one record at a time; a snapshot round trip after the
    steps in `snapshots`. close: "flush", or "beat" (a far-future heartbeat per partition)."""
    if close == "beat":
        values = {s: list(values.get(s, [])) + [far_beat(s)] for s in CONFIG.topics}
    records = decode_all(values)
    order = sorted(records)
    shard = Shard(CONFIG, order)
    cursors = dict.fromkeys(order, 0)
    decisions, fates = [], []

    def step(part, size):
        nonlocal shard
        start = cursors[part]
        chunk = records[part][start:start + size]
        cursors[part] = start + len(chunk)
        for piece in split(part[0], part[1], chunk, 1, CONFIG.max_clock_skew_us):
            out = shard.ingest(piece)
            decisions.extend(out.decisions)
            fates.extend(out.fates)

    for index, (choice, size) in enumerate(schedule):
        step(order[choice % len(order)], size)
        if index in snapshots:
            shard = decode_snapshot(encode_snapshot(shard))
    for part in order:
        while cursors[part] < len(records[part]):
            step(part, 1)
    if close == "flush":
        out = shard.flush()
        decisions += out.decisions
        fates += out.fates
    return decisions, fates, records, shard


def secondary(decisions):
    return sorted((d for d in decisions if d.relation in SECONDARY), key=sort_key)


def events_of(records):
    return [r for rs in records.values() for r in rs if isinstance(r, Event)]


ENCODER = msgspec.json.Encoder()


def as_bytes(decisions, fates=None):
    return ENCODER.encode([sorted(decisions, key=sort_key),
                           None if fates is None else sorted(fates, key=fate_key)])


def summary(decisions):
    """What a difference should be read as: relation, kind, members."""
    return sorted((d.relation, d.exception_kind or f"match tier {d.tier}", d.member_event_ids)
                  for d in decisions)


# ----------------------------------------------------------------------------- properties

@PROPERTIES
@given(values=logs(), close=st.sampled_from(["flush", "beat"]))
def test_batches_and_deposits_decide_as_the_reference(values, close):
    decisions, _, records, shard = run(values, close)
    expected = reference.decisions(events_of(records), CONFIG)
    got = secondary(decisions)
    assert summary(got) == summary(expected)
    assert as_bytes(got) == as_bytes(expected)  # ids, reasons, confidences, candidates too
    assert shard.open_count() == 0 and not any(b.open for d in shard.desks for b in d.accounts.values())


def routes(event: Event) -> set[str]:
    """The relations a record of settlement.toml takes part in, read off the config's prose."""
    if event.source == "ledger":
        return {"payments"}
    if event.source == "bank":
        return {"deposits"}
    if event.payout:
        return {"batches", "deposits"}
    if event.amount_minor == 0 and event.fee_minor is not None:
        return {"batches"}
    return {"payments", "batches"} if event.batch_id is not None else {"payments"}


PRIMARY = ("payments", "batches", "deposits")  # a record's fate is its first relation's


@PROPERTIES
@given(values=logs(), close=st.sampled_from(["flush", "beat"]))
def test_every_record_has_one_fate_and_one_decision_per_relation(values, close):
    decisions, fates, records, _ = run(values, close)
    by_id = {d.decision_id: d for d in decisions}
    assert len(by_id) == len(decisions), "a decision was emitted twice"
    fate_of = {}
    for fate in fates:
        assert fate_key(fate) not in fate_of, ("two fates", fate, fate_of.get(fate_key(fate)))
        fate_of[fate_key(fate)] = fate
    every = [(part, r) for part, rs in records.items() for r in rs]
    assert set(fate_of) == {(r.topic, r.partition, r.offset) for _, r in every}
    for _, record in every:
        fate = fate_of[(record.topic, record.partition, record.offset)]
        if isinstance(record, Heartbeat):
            assert fate.outcome == "heartbeat" and fate.decision_id is None
            continue
        assert isinstance(record, Event), record
        mine = [d for d in decisions if record.ref in d.member_refs]
        taken = sorted(d.relation for d in mine)
        assert taken == sorted(routes(record)), (record.label, taken)
        primary = next(r for r in PRIMARY if r in routes(record))
        decision = by_id[fate.decision_id]
        assert decision.relation == primary and record.ref in decision.member_refs
        assert fate.outcome == ("matched" if decision.kind == "match" else "exception")
    # and from the decisions' side: every member's fate lists it
    for decision in decisions:
        for ref in decision.member_refs:
            topic, partition, offset = ref.rsplit(":", 2)
            fate = fate_of[(topic, int(partition), int(offset))]
            assert ref in by_id[fate.decision_id].member_refs


schedules = st.lists(st.tuples(st.integers(0, 2), st.integers(1, 12)), max_size=12)


@PROPERTIES
@given(values=logs(), schedule=schedules,
       snapshots=st.frozensets(st.integers(0, 11), max_size=4), close=st.sampled_from(["flush", "beat"]))
def test_chunks_and_snapshots_change_nothing(values, schedule, snapshots, close):
    decisions, fates, _, _ = run(values, close)
    again, again_fates, _, _ = run(values, close, schedule, snapshots)
    assert summary(again) == summary(decisions)
    assert as_bytes(again, again_fates) == as_bytes(decisions, fates)


def names_it(credit, payout) -> bool:
    return reference.mentions(credit, payout)


@PROPERTIES
@given(values=logs(), close=st.sampled_from(["flush", "beat"]))
def test_deposits_match_only_the_exact_amount_and_tier_1_names_the_payout(values, close):
    """A match pays the exact amount inside the lag; tier 1 names the payout, tier 2 does
    not (else it would be tier 1) and no payout that could also take its credit was still
    open (decided later), but for one an exact credit of its own names; an exact pair
    alone in its amount always matches."""
    decisions, _, records, _ = run(values, close)
    events = events_of(records)
    by_ref = {e.ref: e for e in events}
    lag = CONFIG.relations[2]
    deposits = [d for d in decisions if d.relation == "deposits"]
    position = {ref: i for i, d in enumerate(deposits) for ref in d.member_refs}

    def holds(payout, credit):
        return payout.time_us + lag.lag_min_us <= credit.time_us <= payout.time_us + lag.lag_max_us

    def alike(a, b):
        return (a.account, a.currency, a.amount_minor) == (b.account, b.currency, b.amount_minor)

    for i, d in enumerate(deposits):
        if d.kind != "match":
            continue
        members = [by_ref[r] for r in d.member_refs]
        payouts = [e for e in members if e.payout]
        credits = [e for e in members if not e.payout]
        assert len(payouts) == len(credits) == 1, d
        payout, credit = payouts[0], credits[0]
        assert (credit.amount_minor, credit.currency) == (payout.amount_minor, payout.currency), d
        assert holds(payout, credit), d
        assert d.tier in (1, 2)
        if d.tier == 1:
            assert names_it(credit, payout), d
        else:
            assert not names_it(credit, payout), d
            rivals = [p for p in events if p.payout and p is not payout and alike(p, payout)
                      and holds(p, credit) and position[p.ref] > i
                      and not any(names_it(c, p) and alike(c, p) and holds(p, c)
                                  for c in events if c.source == "bank")]
            assert not rivals, (d, rivals)
    deposit_records = [e for e in events if e.payout or e.source == "bank"]
    for payout in [e for e in events if e.payout]:
        same = [e for e in deposit_records if alike(e, payout)]
        if len(same) == 2 and not same[0].payout == same[1].payout:
            credit = next(e for e in same if not e.payout)
            if holds(payout, credit):
                mine = deposits[position[payout.ref]]
                assert mine.kind == "match" and credit.ref in mine.member_refs, mine


@PROPERTIES
@given(values=logs())
def test_a_batch_match_pays_exactly_its_items_nets(values):
    decisions, _, records, _ = run(values)
    by_ref = {e.ref: e for e in events_of(records)}
    window = CONFIG.relations[1].window_us
    for d in decisions:
        if d.relation != "batches":
            continue
        members = [by_ref[r] for r in d.member_refs]
        assert len({(e.account, e.batch_id) for e in members}) == 1, d
        first = min(e.time_us for e in members)
        assert all(e.time_us <= first + window for e in members), d
        if d.kind != "match":
            continue
        assert len({e.currency for e in members}) == 1, d
        paid = sum(e.amount_minor for e in members if e.payout)
        assert paid == sum(e.net_minor for e in members if not e.payout) == d.amount_minor, d


# ----------------------------------------------------------------------------- found on the way
