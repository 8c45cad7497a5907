"""The Prometheus endpoint of `tally run --metrics-port`, scraped while the real flow runs.

The figures must be the flow's own: records consumed equal what was produced,
lag falls to zero, progress per partition is the newest event time in it,
decisions and sink rows equal what PostgreSQL holds.
"""

from __future__ import annotations

import signal
import socket
import time
import urllib.request
from collections import defaultdict
from datetime import datetime, timezone

import psycopg
import pytest
from prometheus_client.parser import text_string_to_metric_families

from flows.kafka import dayfiles
from flows.runtime.metrics import METRIC_NAMES, parse_address
from flows.dev.services import free_port
from flows.logs import UserError
from state.config import MatchConfig
from state.contract import Decoder, Event, Heartbeat
from tests.flow_helpers import publish_day, start_tally, stop, tally, wait_until


def scrape(port: int) -> dict[str, list]:
    """Samples by name: [(labels, value)], from the endpoint's text format."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    samples = defaultdict(list)
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[sample.name].append((sample.labels, sample.value))
    return samples


def total(samples, name: str, **labels) -> float:
    return sum(v for l, v in samples.get(name, []) if all(l.get(k) == x for k, x in labels.items()))


def newest_event_time(day, topics: dict[str, str]) -> dict[tuple[str, str], float]:
    """Per (topic, partition): the newest event or heartbeat time, in seconds, decoded here."""
    decoder = Decoder(MatchConfig(topics=topics))
    newest: dict[tuple[str, str], float] = {}
    for (topic, partition), path in dayfiles.partitions(day, list(topics.values())).items():
        for offset, value in enumerate(dayfiles.read_values(path)):
            record = decoder.decode(value, topic, partition, offset)
            if isinstance(record, (Event, Heartbeat)):
                part = (topic, str(partition))
                newest[part] = max(newest.get(part, 0), record.time_us / 1e6)
    return newest


def store_counts(dsn: str, namespace: str) -> tuple[dict, dict, int]:
    with psycopg.connect(dsn) as conn:
        tiers = dict(conn.execute(f"select tier::text, count(*) from {namespace}.decisions "
                                  f"where kind = 'match' group by tier").fetchall())
        kinds = dict(conn.execute(f"select exception_kind, count(*) from {namespace}.decisions "
                                  f"where kind = 'exception' group by exception_kind").fetchall())
        rows = conn.execute(f"select (select count(*) from {namespace}.decisions) + "
                            f"(select count(*) from {namespace}.fates)").fetchone()[0]
    return tiers, kinds, rows


def test_a_running_flow_serves_its_own_figures(broker, pg_dsn, tmp_path):
    topics, config = publish_day(broker, tmp_path, 1500, seed=21)
    port = free_port()
    # paced, so that the first scrapes land while records are still waiting to be read
    flow = start_tally("run", "--brokers", broker, "--pg", pg_dsn, "--data-dir", str(tmp_path / "data"),
                       "--config", str(config), "--namespace", "scraped", "--metrics-port", str(port),
                       "--max-rate", "1500", "--batch-size", "200", "--snapshot-interval", "1")
    try:
        early = wait_until(lambda: _scrape_or_none(port, flow), 60, "the metrics endpoint")
        consumed_early = total(early, "tally_records_consumed_total")
        expected = _count_records(tmp_path / "day")
        assert consumed_early < expected
        assert wait_until(lambda: total(scrape(port), "tally_consumer_lag_records") > 0, 30,
                          "a partition with unread records")

        done = wait_until(lambda: _all_read(port, expected), 120, "every record to be read")
        labels = {(l["topic"], l["partition"]) for l, _ in done["tally_records_consumed_total"]}
        assert labels == {(t, str(p)) for t in topics.values() for p in range(3)}
        assert {l["source"] for l, _ in done["tally_records_consumed_total"]} == set(topics)
        assert all(l["process"] == "0" for l, _ in done["tally_records_consumed_total"])
        # lag is sampled once a second per partition: it falls to 0 within a couple of seconds
        wait_until(lambda: total(scrape(port), "tally_consumer_lag_records") == 0 or None, 10,
                   "consumer lag to fall to 0")

        newest = newest_event_time(tmp_path / "day", topics)
        progress = {(l["topic"], l["partition"]): v for l, v in done["tally_partition_progress_seconds"]}
        assert progress == pytest.approx(newest)
        watermark = total(done, "tally_watermark_seconds")
        allowed_lateness = MatchConfig().allowed_lateness_us / 1e6
        assert watermark == pytest.approx(min(newest.values()) - allowed_lateness)

        # the decision counters and the sink row counters equal what PostgreSQL holds
        def agree():
            now = scrape(port)
            tiers, kinds, rows = store_counts(pg_dsn, "scraped")
            seen_tiers = {l["tier"]: v for l, v in now["tally_matches_total"]}
            seen_kinds = {l["kind"]: v for l, v in now["tally_exceptions_total"]}
            written = {sink: total(now, "tally_sink_rows_total", sink=sink)
                       for sink in ("postgres", "parquet", "archive")}
            # Parquet files are written at snapshots, so those counts follow a little later
            if seen_tiers == tiers and seen_kinds == kinds and rows and written == {
                    "postgres": rows, "parquet": rows, "archive": expected}:
                return now
        final = wait_until(agree, 60, "the metrics to agree with PostgreSQL and the archive")
        assert total(final, "tally_matches_total") > 0
        for sink in ("postgres", "parquet", "archive"):
            assert total(final, "tally_sink_write_seconds_count", sink=sink) > 0
        assert total(final, "tally_snapshot_seconds_count") > 0
        assert total(final, "tally_open_events") >= 0
        names = {name.removesuffix(suffix) for name in final
                 for suffix in ("_bucket", "_count", "_sum", "_created", "")
                 if name.removesuffix(suffix) in METRIC_NAMES}
        # every metric is served, but a relation's watermark: this config has no relations
        assert names == set(METRIC_NAMES) - {"tally_relation_watermark_seconds"}
    finally:
        flow.send_signal(signal.SIGTERM)
        _, out = flow.communicate(timeout=60)  # read while it stops: a full pipe would hold it
        assert flow.returncode == 130, out
    assert "metrics served" in out


def _scrape_or_none(port: int, flow):
    assert flow.poll() is None, flow.stderr.read()
    try:
        samples = scrape(port)
    except OSError:
        return None
    return samples if total(samples, "tally_records_consumed_total") > 0 else None


def _all_read(port: int, expected: int):
    samples = scrape(port)
    return samples if total(samples, "tally_records_consumed_total") == expected else None


def _two_free_ports() -> int:
    """A port P such that P and P + 1 were both free a moment ago."""
    for _ in range(50):
        port = free_port()
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port + 1))
                return port
            except OSError:
                continue
    raise AssertionError("no two consecutive free ports")


def _count_records(day) -> int:
    return sum(len(dayfiles.read_values(path)) for path in day.glob("*/*.jsonl"))


def test_two_processes_serve_on_consecutive_ports(broker, pg_dsn, tmp_path):
    topics, config = publish_day(broker, tmp_path, 300, seed=22)
    expected = _count_records(tmp_path / "day")
    port = _two_free_ports()
    flow = start_tally("run", "--brokers", broker, "--pg", pg_dsn, "--data-dir", str(tmp_path / "data"),
                       "--config", str(config), "--namespace", "scraped2", "--processes", "2",
                       "--metrics-port", f"127.0.0.1:{port}")
    try:
        def both_read():
            samples = [_scrape_or_none(port + i, flow) for i in (0, 1)]
            if all(samples) and sum(total(s, "tally_records_consumed_total") for s in samples) == expected:
                return samples
        first, second = wait_until(both_read, 120, "both processes to read everything")
        assert {l["process"] for l, _ in first["tally_records_consumed_total"]} == {"0"}
        assert {l["process"] for l, _ in second["tally_records_consumed_total"]} == {"1"}
        # each partition is read by exactly one process
        parts = [{(l["topic"], l["partition"]) for l, _ in s["tally_records_consumed_total"]}
                 for s in (first, second)]
        assert not parts[0] & parts[1] and len(parts[0] | parts[1]) == 9
    finally:
        assert stop(flow) == 130  # SIGTERM to the launcher, which passes it on to both members
    assert _listening(port) is False and _listening(port + 1) is False


def _listening(port: int) -> bool:
    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", port)) == 0


def test_a_bad_metrics_address_is_refused_in_one_line(tmp_path):
    for bad in ("http", "host:0", "70000", "a:b:c"):
        with pytest.raises(UserError):
            parse_address(bad)
    assert parse_address("9100") == ("0.0.0.0", 9100)
    assert parse_address("127.0.0.1:9100") == ("127.0.0.1", 9100)
    refused = tally("run", "--brokers", "127.0.0.1:1", "--pg", "postgresql://x@127.0.0.1:1/x",
                    "--metrics-port", "nope", "--data-dir", str(tmp_path), expect=2)
    last = refused.stderr.strip().splitlines()[-1]
    assert last == ("tally run: error: argument --metrics-port: 'nope' is not [HOST:]PORT "
                    "with a port from 1 to 65535")


def test_a_paced_run_still_commits_a_snapshot_every_interval(broker, pg_dsn, tmp_path):
    """--max-rate sleeps the source between batches; epochs must still close on time,
    or a crash would redo far more than one snapshot interval."""
    from flows.runtime.recovery_store import read_committed
    topics, config = publish_day(broker, tmp_path, 3000, seed=23)
    data = tmp_path / "data"
    flow = start_tally("run", "--brokers", broker, "--pg", pg_dsn, "--data-dir", str(data),
                       "--config", str(config), "--namespace", "paced", "--max-rate", "2000",
                       "--snapshot-interval", "0.5")
    recovery = data / "paced" / "recovery"
    try:
        wait_until(lambda: flow.poll() is None and (recovery / "shape.json").exists(), 60,
                   "the flow to start")
        # from the start: the first epoch must close on time too
        epoch, changed, started, longest = None, time.monotonic(), time.monotonic(), 0.0
        while time.monotonic() - started < 5:
            now = _committed(read_committed, recovery)
            if now != epoch:
                epoch, changed = now, time.monotonic()
            longest = max(longest, time.monotonic() - changed)
            time.sleep(0.05)
        assert flow.poll() is None  # still reading: ~10,000 records take 5 s at 2,000/s
        assert longest < 3.0, f"no snapshot committed for {longest:.1f}s"
    finally:
        stop(flow)


def _committed(read_committed, recovery) -> int | None:
    try:
        return read_committed(recovery, engine=False).epoch or None
    except Exception:  # the store is being created
        return None


def test_each_relation_has_its_own_watermark():
    """With [relations], a relation's watermark follows the sources it reads only: the
    payments relation moves with the ledger and the processor while the bank is silent."""
    from flows.runtime.dataflow import FlowStats
    from flows.runtime.metrics import FlowCollector
    from state.engine import Shard
    from tests.test_settlement import SETTLEMENT, a_day, beat, feed

    logs = a_day()
    logs["ledger"].append(beat("ledger", "25 00:00"))
    logs["processor"].append(beat("processor", "24 12:00"))
    logs["bank"] = []
    shard = Shard(SETTLEMENT, [(t, 0) for t in SETTLEMENT.topics.values()])
    feed(shard, SETTLEMENT, logs)
    families = {f.name: f for f in FlowCollector(FlowStats(shards=[shard]), SETTLEMENT.topics).collect()}
    marks = {s.labels["relation"]: s.value for s in families["tally_relation_watermark_seconds"].samples}
    twelve = datetime(2026, 11, 24, 12, tzinfo=timezone.utc).timestamp() \
        - SETTLEMENT.allowed_lateness_us / 1e6
    assert marks == {"payments": twelve, "batches": twelve}  # deposits waits for the bank
    assert not families["tally_watermark_seconds"].samples  # the bank holds the lowest at never
