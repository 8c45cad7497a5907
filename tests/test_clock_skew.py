"""A record far ahead of its partition (state/stream_time.py, docs/determinism.md).

One record with a clock hours ahead used to lift its partition's progress, so every
later record of that partition was late. Now it waits for the partition's next
record: contradicted, it is a clock_skew exception and moves nothing. The sharpest
statement of "moves nothing": the day decides exactly as if that record were an
invalid one (which proves no time), in any interleaving, shard count and snapshot.
"""

from __future__ import annotations

import json
from datetime import datetime, timedelta

import msgspec
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from state.config import MatchConfig
from state.contract import Decoder
from state.decision import CLOCK_SKEW, INVALID_KIND, PENDING
from state.engine import Shard, decode_snapshot, encode_snapshot
from state.routing import split
from tests.days import day_values
from tests.engine_helpers import run, tx
from tests.test_determinism import feed

CONFIG = MatchConfig()
LEDGER = CONFIG.topics["ledger"]
HOUR = 3600
SHIFTS = st.sampled_from([2 * HOUR, 6 * HOUR, 30 * 86400 * 12, None])  # None: to 2099


def shifted(value: bytes, seconds: int | None) -> bytes:
    record = json.loads(value)
    when = datetime.fromisoformat(record["event_time"].replace("Z", "+00:00"))
    when = when.replace(year=2099) if seconds is None else when + timedelta(seconds=seconds)
    record["event_time"] = when.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    return json.dumps(record).encode()


def timed(value: bytes) -> dict | None:
    """The record, if it is one with a readable event time (a transaction or a heartbeat)."""
    try:
        record = json.loads(value)
        datetime.fromisoformat(record["event_time"].replace("Z", "+00:00"))
    except (ValueError, TypeError, KeyError, AttributeError):
        return None
    return record


def a_transaction(values: list[bytes], index: int) -> dict | None:
    record = timed(values[index])
    return record if record and record.get("type", "transaction") == "transaction" else None


def decoded(output: bytes):
    decisions, fates = msgspec.json.decode(output)
    return decisions, fates


@settings(max_examples=25, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
@given(seed=st.integers(1, 4), pick=st.integers(0, 10_000), shift=SHIFTS,
       chunk=st.integers(20, 600), shards=st.integers(1, 3), flush=st.booleans(),
       points=st.frozensets(st.integers(0, 30), max_size=3))
def test_a_skewed_record_decides_as_if_it_were_not_there(seed, pick, shift, chunk, shards, flush,
                                                         points):
    values = day_values(1200, seed)
    part = sorted(p for p in values if p[0] == LEDGER)[pick % 3]
    log = values[part]
    index = pick % (len(log) - 20)  # never among the last: the next record must judge it
    record = a_transaction(log, index)
    assume(record is not None)
    same_id = [v for v in log if record["event_id"].encode() in v]
    assume(len(same_id) == 1)  # a redelivery would rightly point at the exception
    ref = f"{part[0]}:{part[1]}:{index}"
    skewed = dict(values) | {part: log[:index] + [shifted(log[index], shift)] + log[index + 1:]}
    removed = dict(values) | {part: log[:index] + [b"{not a record"] + log[index + 1:]}
    schedule = [(i, chunk) for i in range(60)]
    got_decisions, got_fates = decoded(feed(skewed, schedule, shards, flush, points))
    want_decisions, want_fates = decoded(feed(removed, schedule, shards, flush, points))

    (skew,) = [d for d in got_decisions if d["exception_kind"] == CLOCK_SKEW]
    assert skew["member_refs"] == [ref]
    assert "ahead of its partition's" in skew["reason"] and "did not follow it" in skew["reason"]
    (invalid,) = [d for d in want_decisions if d["member_refs"] == [ref]]
    assert invalid["exception_kind"] == INVALID_KIND
    assert [d for d in got_decisions if d is not skew] == [d for d in want_decisions if d is not invalid]
    fate_ref = lambda f: f"{f[0]}:{f[1]}:{f[2]}"  # noqa: E731  (a fate is an array)
    assert [f for f in got_fates if fate_ref(f) != ref] == [f for f in want_fates if fate_ref(f) != ref]


def night_apart(values, hours: int):
    """Every partition goes quiet at midday and comes back `hours` later: everything from
    each partition's first record at or after midday on moves that far."""
    out = {}
    for part, log in values.items():
        moved, after = [], False
        for value in log:
            record = timed(value)
            after = after or (record is not None and record["event_time"][11:13] >= "12")
            moved.append(shifted(value, hours * HOUR) if after and record is not None else value)
        out[part] = moved
    return out


@settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(1, 4), chunk=st.integers(1, 500), shards=st.integers(1, 3),
       flush=st.booleans())
def test_a_quiet_night_is_a_real_jump_and_changes_nothing(seed, chunk, shards, flush):
    values = night_apart(day_values(1200, seed), 8)
    schedule = [(i, chunk) for i in range(40)]
    guarded = feed(values, schedule, shards, flush)
    trusting = feed(values, schedule, shards, flush,
                    config=msgspec.structs.replace(CONFIG, max_clock_skew_us=10**18))
    decisions, _ = decoded(guarded)
    assert not [d for d in decisions if d["exception_kind"] == CLOCK_SKEW]
    assert guarded == trusting


def test_heartbeats_are_never_held():
    """Every partition's last word is a heartbeat four hours after its records (as Tally
    writes after a quiet spell): it moves progress at once, so every window closes."""
    values = {"bank": [tx("bank", "b1", "10.00", 1, key="k")],
              "processor": [tx("processor", "p1", "10.00", 2, key="k")],
              "ledger": [tx("ledger", "l1", "10.00", 3, key="k"),
                         tx("ledger", "l2", "12.00", 4)]}
    decisions, fates, shard = run(values, close=True)  # heartbeats at 14:00, events at 10:0x
    assert not shard.pending()
    assert {d.exception_kind for d in decisions} == {None, "missing_counterpart"}
    assert not [f for f in fates if f.outcome == PENDING]


def feed_one(shard, decoder, topic, offset, value):
    records = [decoder.decode(value, topic, 0, offset)]
    (piece,) = split(topic, 0, records, 1, CONFIG.max_clock_skew_us)
    return shard.ingest(piece)


def test_a_held_record_is_pending_survives_a_snapshot_and_is_judged_by_the_next():
    decoder = Decoder(CONFIG)
    parts = [(t, 0) for t in CONFIG.topics.values()]
    shard = Shard(CONFIG, parts)
    feed_one(shard, decoder, LEDGER, 0, tx("ledger", "l0", "1.00", 0))
    feed_one(shard, decoder, LEDGER, 1, tx("ledger", "l1", "1.00", 1))
    feed_one(shard, decoder, LEDGER, 2, shifted(tx("ledger", "l2", "2.00", 2), 6 * HOUR))
    assert [f.offset for f in shard.pending() if f.topic == LEDGER] == [0, 1, 2]
    assert shard.progress[(LEDGER, 0)] == decoder.decode(tx("ledger", "l1", "1.00", 1),
                                                          LEDGER, 0, 1).time_us
    shard = decode_snapshot(encode_snapshot(shard))
    assert [f.offset for f in shard.pending() if f.topic == LEDGER] == [0, 1, 2]
    out = feed_one(shard, decoder, LEDGER, 3, tx("ledger", "l3", "3.00", 3))
    (skew,) = out.decisions
    assert skew.exception_kind == CLOCK_SKEW and skew.member_refs == [f"{LEDGER}:0:2"]
    assert [f.offset for f in shard.pending() if f.topic == LEDGER] == [0, 1, 3]


def test_flush_takes_a_held_record_nothing_contradicted():
    decoder = Decoder(CONFIG)
    shard = Shard(CONFIG, [(t, 0) for t in CONFIG.topics.values()])
    feed_one(shard, decoder, LEDGER, 0, tx("ledger", "l0", "1.00", 0))
    feed_one(shard, decoder, LEDGER, 1, shifted(tx("ledger", "l1", "2.00", 1), 6 * HOUR))
    out = shard.flush()
    assert {d.exception_kind for d in out.decisions} == {"missing_counterpart"}
    assert sorted(r for d in out.decisions for r in d.member_refs) == [f"{LEDGER}:0:0",
                                                                        f"{LEDGER}:0:1"]
    assert not shard.pending()


def test_a_record_far_ahead_is_its_own_exception_in_a_three_source_match():
    """The hand-sized case: the ledger's record of a complete payment is six hours ahead."""
    values = {"bank": [tx("bank", "b1", "10.00", 1, key="k"), tx("bank", "b2", "7.00", 5, key="j")],
              "processor": [tx("processor", "p1", "10.00", 2, key="k"),
                            tx("processor", "p2", "7.00", 6, key="j")],
              "ledger": [shifted(tx("ledger", "l1", "10.00", 3, key="k"), 6 * HOUR),
                         tx("ledger", "l2", "7.00", 7, key="j")]}
    decisions, _, _ = run(values, close=True)
    kinds = sorted((d.exception_kind or f"tier {d.tier}", sorted(d.member_event_ids))
                   for d in decisions)
    assert kinds == [("clock_skew", ["ledger:l1"]),
                     ("missing_counterpart", ["bank:b1", "processor:p1"]),
                     ("tier 1", ["bank:b2", "ledger:l2", "processor:p2"])]
