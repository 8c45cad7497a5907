"""The determinism contract: the same log prefixes give the same decisions, byte for byte.

These feed generated days to the real engine in random interleavings, random
chunk sizes (so watermark progress arrives in any granularity), random shard
counts, and with snapshots through a real serialise/deserialise at random points.
"""

from __future__ import annotations

from functools import lru_cache

import msgspec
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from state.config import MatchConfig
from state.contract import Decoder
from state.decision import fate_key, sort_key
from state.engine import Shard, decode_snapshot, encode_snapshot
from state.routing import split
from tests.days import day_values

CONFIG = MatchConfig()
ENCODER = msgspec.json.Encoder()
SEEDS = st.integers(min_value=1, max_value=6)
SIZE = 1500  # dense enough that counterparts straddle window edges


def canonical(decisions, fates) -> bytes:
    return ENCODER.encode([sorted(decisions, key=sort_key), sorted(fates, key=fate_key)])


def feed(values, schedule, shards, flush, snapshot_points=frozenset(), config=CONFIG, engine=Shard):
    """Run the engine (or the reference, tests/reference.py) over `values` in the order
    `schedule` gives.

    schedule: a list of (partition index, chunk size) steps; after it, everything left
    is fed partition by partition. Returns the canonical bytes of all output.
    """
    decoder = Decoder(config)
    parts = sorted(values)
    engines = [engine(config, parts) for _ in range(shards)]
    cursors = {part: 0 for part in parts}
    decisions, fates = [], []

    def step(part, size, index):
        start = cursors[part]
        chunk = values[part][start:start + size]
        cursors[part] = start + len(chunk)
        records = [decoder.decode(v, part[0], part[1], start + i) for i, v in enumerate(chunk)]
        for shard_no, piece in enumerate(split(part[0], part[1], records, shards,
                                               config.max_clock_skew_us)):
            out = engines[shard_no].ingest(piece)
            decisions.extend(out.decisions)
            fates.extend(out.fates)
        if index in snapshot_points:
            engines[:] = [decode_snapshot(encode_snapshot(e)) for e in engines]

    for index, (choice, size) in enumerate(schedule):
        step(parts[choice % len(parts)], size, index)
    for part in parts:
        step(part, len(values[part]), -1)
    for engine in engines:
        if flush:
            out = engine.flush()
            decisions.extend(out.decisions)
            fates.extend(out.fates)
        fates.extend(engine.pending())
    return canonical(decisions, fates)


@lru_cache(maxsize=None)
def reference(seed, flush):
    values = day_values(SIZE, seed)
    return feed(values, [], 1, flush)


schedules = st.lists(st.tuples(st.integers(0, 8), st.integers(1, 3000)), max_size=60)


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=SEEDS, schedule=schedules, shards=st.integers(1, 4), flush=st.booleans())
def test_any_interleaving_and_granularity_gives_identical_output(seed, schedule, shards, flush):
    values = day_values(SIZE, seed)
    assert feed(values, schedule, shards, flush) == reference(seed, flush)


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=SEEDS, schedule=schedules, points=st.frozensets(st.integers(0, 59), max_size=8),
       shards=st.integers(1, 3))
def test_snapshot_and_restore_anywhere_changes_nothing(seed, schedule, points, shards):
    values = day_values(SIZE, seed)
    assert feed(values, schedule, shards, True, points) == reference(seed, True)


def test_a_truncated_log_leaves_the_rest_pending_not_lost():
    """Stopping early decides less, never differently: every decision made is in the full run."""
    values = day_values(SIZE, 1)
    half = {part: v[: len(v) // 2] for part, v in values.items()}
    early, _ = msgspec.json.decode(feed(half, [], 1, False))
    full, _ = msgspec.json.decode(reference(1, False))
    full_ids = {d["decision_id"]: d for d in full}
    assert early and all(full_ids[d["decision_id"]] == d for d in early)
