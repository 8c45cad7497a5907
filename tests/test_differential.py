"""The indexed engine decides exactly as the scan-based reference (tests/reference.py).

The reference is the plainest statement of the rules: every decision scans the
account's open events. The engine answers the same questions from indexes. Over
generated days (sparse, dense, one hot account) and over dense windows that
hypothesis builds, in any interleaving, shard count and with snapshots, their
output must be byte-identical.
"""

from __future__ import annotations

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests import payments as pay
from tests.days import day_values
from tests.test_clock_skew import shifted, timed
from tests.reference import ScanShard
from tests.test_determinism import feed
from tests.test_determinism_dense import CONFIG as DENSE, build_log, event, round_robin

schedules = st.lists(st.tuples(st.integers(0, 8), st.integers(1, 400)), max_size=40)


@pytest.mark.parametrize("accounts, hot_share", [(None, 0.0), (5, 0.0), (None, 0.5)],
                         ids=["sparse", "5 accounts", "hot account"])
@pytest.mark.parametrize("flush", [False, True])
def test_generated_days_decide_as_the_reference(accounts, hot_share, flush):
    values = day_values(1200, 3, accounts, hot_share)
    expected = feed(values, [], 1, flush, engine=ScanShard)
    assert feed(values, [], 1, flush) == expected
    assert feed(values, [(i, 97) for i in range(300)], 3, flush, frozenset(range(0, 300, 50))) == expected


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(events=st.lists(event, min_size=1, max_size=120), schedule=schedules,
       shards=st.integers(1, 3), flush=st.booleans())
def test_adversarial_logs_decide_as_the_reference(events, schedule, shards, flush):
    logs = build_log(events)
    expected = feed(logs, round_robin(logs), 1, flush, config=DENSE, engine=ScanShard)
    assert feed(logs, schedule, shards, flush, config=DENSE) == expected


# a clock-skew bound below the jumps the logs are given: records are held, taken and refuted
JUMPY = msgspec.structs.replace(DENSE, max_clock_skew_us=200 * 1_000_000)
jumps = st.lists(st.tuples(st.integers(0, 5), st.integers(0, 60), st.sampled_from([300, 900, 18_000])),
                 max_size=6)


def jumped(logs, picks):
    """Some transactions moved ahead in time, where they stand in their partition."""
    logs, parts = dict(logs), sorted(logs)
    for choice, position, seconds in picks:
        part = parts[choice % len(parts)]
        log = list(logs[part])
        position %= len(log)
        if timed(log[position]) and b'"heartbeat"' not in log[position]:
            log[position] = shifted(log[position], seconds)
        logs[part] = log
    return logs


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(events=st.lists(event, min_size=1, max_size=120), picks=jumps, schedule=schedules,
       shards=st.integers(1, 3), flush=st.booleans(), points=st.frozensets(st.integers(0, 39), max_size=4))
def test_logs_with_jumps_decide_as_the_reference(events, picks, schedule, shards, flush, points):
    logs = jumped(build_log(events), picks)
    expected = feed(logs, round_robin(logs), 1, flush, config=JUMPY, engine=ScanShard)
    assert feed(logs, schedule, shards, flush, points, config=JUMPY) == expected


# amounts that collide exactly and within the 2% tolerance
CLOSE = st.sampled_from([10_000, 10_000, 10_100, 9_900, 9_850, 20_000, 19_700, 20_000])


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(named=pay.payments(amounts=CLOSE), schedule=schedules,
       points=st.frozensets(st.integers(0, 39), max_size=5), flush=st.booleans())
def test_dense_accounts_decide_as_the_reference(named, schedule, points, flush):
    logs = pay.logs(named)
    expected = feed(logs, [], 1, flush, engine=ScanShard)
    assert feed(logs, schedule, 2, flush, points) == expected
