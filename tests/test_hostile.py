"""Hostile input through the real flow: thousands of bad records mixed into a generated day.

The same day is published twice, clean into one set of topics and with hostile
records (tests/hostile.py) spliced in at random positions into another. The
flow must finish, give every hostile record an `invalid` exception carrying
its raw bytes and the reason expected, and decide every good record exactly as
in the clean run. Log positions differ between the two runs, so decisions are
compared without their refs and ids.
"""

from __future__ import annotations

import base64
import random
import tempfile
import uuid
from collections import Counter
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from flows.kafka import kafka_io
from flows.kafka.dayfiles import partitions, read_values
from flows.dev.generate import generate_day
from sinks import compare
from state.config import MatchConfig
from state.contract import MAX_VALUE_BYTES
from tests import hostile
from tests.flow_helpers import read_decisions, read_fates, tally, unique_topics, write_config

PAYMENTS = 3000
TEN_MB = 10 * 1024 * 1024
_DROP = {"decision_id", "member_refs"}
_FIELDS = [f for f in compare.DECISION_FIELDS if f not in _DROP]


@pytest.fixture(scope="module")
def clean(broker, pg_dsn):
    """A day, published clean and run once: the decisions hostile runs must reproduce."""
    work = Path(tempfile.mkdtemp(prefix="tally-hostile-"))
    topics = unique_topics()
    generate_day(work / "day", PAYMENTS, seed=8, topics=topics)
    values = {part: read_values(path)
              for part, path in partitions(work / "day", list(topics.values())).items()}
    kafka_io.create_topics(broker, list(topics.values()), 3)
    kafka_io.produce_values(broker, values, progress=False)
    run(work, topics, "hostile_clean", broker, pg_dsn)
    return work, topics, values, good_content(pg_dsn, "hostile_clean", topics, set())


def run(work: Path, topics: dict, namespace: str, broker: str, pg_dsn: str):
    config = write_config(work / f"{namespace}.toml", topics)
    return tally("run", "--brokers", broker, "--pg", pg_dsn, "--data-dir", str(work / "data"),
                 "--namespace", namespace, "--until-end", "--config", str(config))


def without_refs(row: dict, topics: dict) -> tuple:
    values = dict(zip(compare.DECISION_FIELDS, compare.canonical(row, compare.DECISION_FIELDS)))
    values["candidates"] = tuple((event, confidence) for event, _, confidence in values["candidates"])
    for source, topic in topics.items():  # an invalid record's reason may name its topic
        values["reason"] = values["reason"] and values["reason"].replace(topic, source)
    return tuple(values[f] for f in _FIELDS)


def good_content(dsn: str, namespace: str, topics: dict,
                 hostile_refs: set[str]) -> tuple[Counter, Counter]:
    """Decisions and fates of the records not in hostile_refs, position-free, as multisets."""
    decisions = Counter(without_refs(r, topics) for r in read_decisions(dsn, namespace)
                        if not set(r["member_refs"]) & hostile_refs)
    fates = Counter((f["source"], f["event_id"], f["outcome"], f["window_end"])
                    for f in read_fates(dsn, namespace)
                    if f"{f['topic']}:{f['partition']}:{f['offset']}" not in hostile_refs)
    return decisions, fates


def splice(values: dict, topics: dict, new_topics: dict, rng: random.Random, share: float):
    """The day with hostile records spliced in, into new topics: (values, keys, expected)."""
    rename = {topics[s]: new_topics[s] for s in topics}
    out_values, out_keys, expected = {}, {}, {}
    big = rng.choice(sorted(values))
    for (topic, partition), lines in sorted(values.items()):
        goods = hostile.transactions(lines, topic, MatchConfig(topics=topics))
        mixed, keys = [], []
        for line in lines:
            while rng.random() < share:
                value, reason, family = hostile.hostile(rng.choice(goods), rng, _family(rng))
                expected[f"{rename[topic]}:{partition}:{len(mixed)}"] = (value, reason, family)
                mixed.append(value)
                keys.append(rng.choice([None, b"", b"\xff\xfe", value[:20] if value else None]))
            mixed.append(line)
            # a good record keyed by account, or (now and then) with a null key: still good
            keys.append(None if rng.random() < 0.1 else kafka_io.record_key(line))
        if (topic, partition) == big:  # one 10 MB value in the whole day
            value = hostile._encode({**goods[0], "reference": "p" * TEN_MB})
            expected[f"{rename[topic]}:{partition}:{len(mixed)}"] = (value, "-byte limit", "10MB")
            mixed.append(value)
            keys.append(None)
        out_values[(rename[topic], partition)], out_keys[(rename[topic], partition)] = mixed, keys
    return out_values, out_keys, expected


def _family(rng: random.Random):
    # oversized values are rare (a few MB each); the rest are equally likely
    if rng.random() < 0.002:
        return hostile.oversized
    return rng.choice([f for f in hostile.FAMILIES if f is not hostile.oversized])


# Two whole-day runs; no shrinking (each try is a flow run): a failure names its seed.
@settings(max_examples=2, deadline=None, database=None, phases=[Phase.generate],
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(seed=st.integers(0, 2**32 - 1), share=st.sampled_from([0.15, 0.3]))
def test_hostile_records_are_invalid_and_good_records_decide_as_if_clean(
        clean, broker, pg_dsn, seed, share):
    work, topics, values, clean_content = clean
    new_topics = unique_topics()
    mixed, keys, expected = splice(values, topics, new_topics, random.Random(seed), share)
    assert len(expected) >= 1000, "the fuzz must mix in thousands of hostile records"
    kafka_io.create_topics(broker, list(new_topics.values()), 3)
    kafka_io.produce_values(broker, mixed, keys, progress=False)
    namespace = f"hostile_{uuid.uuid4().hex[:12]}"
    run(work, new_topics, namespace, broker, pg_dsn)

    decisions = {r["member_refs"][0]: r for r in read_decisions(pg_dsn, namespace)
                 if r["exception_kind"] == "invalid"}
    fates = {f"{f['topic']}:{f['partition']}:{f['offset']}": f for f in read_fates(pg_dsn, namespace)}
    for ref, (value, reason, family) in expected.items():
        decision = decisions.get(ref)
        assert decision is not None, f"{family} record at {ref} has no invalid decision"
        assert reason in decision["reason"], (family, decision["reason"])
        raw = None if value is None else base64.b64encode(value[:MAX_VALUE_BYTES]).decode()
        assert decision["raw_base64"] == raw, family
        assert fates[ref]["outcome"] == "invalid"
        assert fates[ref]["decision_id"] == decision["decision_id"]
    got = good_content(pg_dsn, namespace, new_topics, set(expected))
    for name, a, b in zip(("decisions", "fates"), got, clean_content):
        assert a == b, f"{name}: only hostile run {list((a - b).items())[:3]}, only clean {list((b - a).items())[:3]}"

    ten_mb = next(ref for ref, (_, _, family) in expected.items() if family == "10MB")
    assert archived_value(work / "data" / namespace, ten_mb) == expected[ten_mb][0]
    tally("audit", "--namespace", namespace, "--data-dir", str(work / "data"), "--pg", pg_dsn)


def archived_value(root: Path, ref: str) -> bytes:
    """The raw archive keeps a value whole, whatever its size."""
    topic, partition, offset = ref.rsplit(":", 2)
    from sinks.parquet_sink import ARCHIVE_SCHEMA
    rows = []
    for path in sorted((root / "events").rglob("*.parquet")):
        table = pq.read_table(path, schema=ARCHIVE_SCHEMA, filters=[
            ("topic", "=", topic), ("partition", "=", int(partition)), ("offset", "=", int(offset))])
        rows += table.column("value").to_pylist()
    assert len(rows) == 1
    return rows[0]
