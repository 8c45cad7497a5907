"""Determinism on dense, adversarial logs that hypothesis builds directly.

Generated days are realistic but sparse per account; here a few accounts get
many events with colliding amounts and keys, out-of-order arrivals, redeliveries
and invalid records, so window edges, ambiguity and lateness are all exercised.
"""

from __future__ import annotations

import json

from hypothesis import given, settings
from hypothesis import strategies as st

from state.config import MatchConfig
from state.routing import shard_of
from tests.test_determinism import feed

CONFIG = MatchConfig(match_window_us=10 * 60 * 1_000_000, allowed_lateness_us=60 * 1_000_000)
SOURCES = list(CONFIG.topics)
PARTITIONS = 2
BASE = 1_795_255_200  # 2026-11-21T10:00:00Z in seconds


def stamp(seconds: int) -> str:
    hours, rest = divmod(seconds - BASE, 3600)
    return f"2026-11-21T{10 + hours:02d}:{rest // 60:02d}:{rest % 60:02d}Z"


event = st.fixed_dictionaries({
    "source": st.sampled_from(SOURCES),
    "account": st.sampled_from(["A0", "A1", "A2"]),
    "id": st.integers(0, 40),
    "amount": st.sampled_from(["10.00", "10.10", "20.00", "9.90", "-5.00"]),
    "second": st.integers(0, 1200),
    "key": st.sampled_from([None, None, "k1", "k2", "k3"]),
    "jitter": st.integers(-150, 30),  # arrival order noise; below -60 makes it late
    "bad": st.integers(0, 30),
})


def build_log(events) -> dict[tuple[str, int], list[bytes]]:
    logs = {(CONFIG.topics[s], p): [] for s in SOURCES for p in range(PARTITIONS)}
    arrivals = {part: [] for part in logs}
    for e in events:
        topic = CONFIG.topics[e["source"]]
        part = (topic, shard_of(e["account"], PARTITIONS))
        value = json.dumps({"source": e["source"], "event_id": f"{e['source'][0]}{e['id']}",
                            "account": e["account"], "amount": e["amount"], "currency": "EUR",
                            "event_time": stamp(BASE + e["second"]),
                            "idempotency_key": e["key"]}).encode()
        if e["bad"] == 0:
            value = value[:-3]
        copies = 2 if e["bad"] == 1 else 1  # a redelivery
        for copy in range(copies):
            arrivals[part].append((e["second"] - e["jitter"] + copy * 5, len(arrivals[part]), value))
    for part, items in arrivals.items():
        logs[part] = [v for _, _, v in sorted(items)]
        source = next(s for s, t in CONFIG.topics.items() if t == part[0])
        logs[part].append(json.dumps({"type": "heartbeat", "source": source,
                                      "event_time": stamp(BASE + 4 * 3600)}).encode())
    return logs


def round_robin(logs) -> list[tuple[int, int]]:
    """One record at a time from each partition in turn: the watermark creeps."""
    longest = max(len(v) for v in logs.values())
    return [(i, 1) for _ in range(longest) for i in range(len(logs))]


schedules = st.lists(st.tuples(st.integers(0, 5), st.integers(1, 12)), max_size=40)


@settings(max_examples=300, deadline=None)
@given(events=st.lists(event, min_size=1, max_size=120), schedule=schedules,
       shards=st.integers(1, 3), flush=st.booleans())
def test_dense_logs_give_identical_output_in_any_interleaving(events, schedule, shards, flush):
    logs = build_log(events)
    expected = feed(logs, round_robin(logs), 1, flush, config=CONFIG)
    assert feed(logs, schedule, shards, flush, config=CONFIG) == expected
