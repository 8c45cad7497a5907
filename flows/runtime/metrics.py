"""Prometheus metrics of a running flow (`tally run --metrics-port`).

Most figures are read from the flow's own counters when Prometheus scrapes, so
the hot path pays nothing for them: records consumed and consumer lag come from
the source partitions, progress and the watermark from the engine shards,
decisions from FlowStats. Only sink writes (time and rows) and snapshots are
observed as they happen, once per write or snapshot, never per record.

Every series carries a `process` label: with --processes N, process I serves
its own endpoint on PORT+I (across hosts, each member serves on the port it is given).
"""

from __future__ import annotations

from contextlib import contextmanager

from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from flows import logs
from flows.logs import UserError
from state.contract import NEVER, Part

METRIC_NAMES = (
    "tally_records_consumed_total",
    "tally_consumer_lag_records",
    "tally_partition_progress_seconds",
    "tally_watermark_seconds",
    "tally_relation_watermark_seconds",
    "tally_open_events",
    "tally_matches_total",
    "tally_exceptions_total",
    "tally_sink_write_seconds",
    "tally_sink_rows_total",
    "tally_snapshot_seconds",
)

REGISTRY = CollectorRegistry(auto_describe=True)
PROCESS = "0"  # this process's id in its cluster; set by serve()

_SINK_WRITE = Histogram("tally_sink_write_seconds", "Time to write one batch into a sink",
                        ["process", "sink"], registry=REGISTRY,
                        buckets=(.001, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30))
_SINK_ROWS = Counter("tally_sink_rows", "Rows written per sink", ["process", "sink"],
                     registry=REGISTRY)
_SNAPSHOT = Histogram("tally_snapshot_seconds", "Time to encode one engine shard's snapshot",
                      ["process"], registry=REGISTRY,
                      buckets=(.001, .01, .05, .1, .25, .5, 1, 2.5, 5, 10))


@contextmanager
def sink_write(sink: str, rows: int):
    """Time one write of `rows` rows into `sink` (postgres, parquet, archive)."""
    with _SINK_WRITE.labels(PROCESS, sink).time():
        yield
    _SINK_ROWS.labels(PROCESS, sink).inc(rows)


def snapshot_timer():
    return _SNAPSHOT.labels(PROCESS).time()


def _seconds(us: int) -> float:
    return us / 1_000_000


class FlowCollector:
    """Reads a FlowStats (flows/runtime/dataflow.py) at scrape time."""

    def __init__(self, stats, sources: dict[str, str]):
        self.stats = stats
        self.source_of = {topic: source for source, topic in sources.items()}

    def collect(self):
        yield from self._partitions()
        yield from self._engine()
        yield from self._decisions()

    def _labels(self, part: Part) -> list[str]:
        topic, partition = part
        return [PROCESS, self.source_of.get(topic, topic), topic, str(partition)]

    def _partitions(self):
        names = ["process", "source", "topic", "partition"]
        consumed = CounterMetricFamily("tally_records_consumed", "Records read from the log",
                                       labels=names)
        lag = GaugeMetricFamily("tally_consumer_lag_records",
                                "Records in the partition not read yet (high watermark - next offset)",
                                labels=names)
        progress = GaugeMetricFamily("tally_partition_progress_seconds",
                                     "Highest event time seen in the partition (Unix seconds)",
                                     labels=names)
        counters = self.stats.counters
        with counters.lock:
            read, behind = dict(counters.consumed), dict(counters.lag)
        for part, count in sorted(read.items()):
            consumed.add_metric(self._labels(part), count)
        for part, records in sorted(behind.items()):
            lag.add_metric(self._labels(part), records)
        for part, high in sorted(self._progress().items()):
            progress.add_metric(self._labels(part), _seconds(high))
        yield from (consumed, lag, progress)

    def _progress(self) -> dict[Part, int]:
        highest: dict[Part, int] = {}
        for shard in list(self.stats.shards):
            for part, high in list(shard.progress.items()):
                if high != NEVER:
                    highest[part] = max(high, highest.get(part, NEVER))
        return highest

    def _engine(self):
        watermark = GaugeMetricFamily("tally_watermark_seconds",
                                      "Event time before which everything is decided (Unix seconds)",
                                      labels=["process"])
        marks = [shard.watermark() for shard in list(self.stats.shards)]
        marks = [m for m in marks if m != NEVER]
        if marks:
            watermark.add_metric([PROCESS], _seconds(min(marks)))
        yield watermark
        yield from self._relations()
        open_events = GaugeMetricFamily("tally_open_events",
                                        "Events held in state, waiting for their window "
                                        "(counted at each snapshot)", labels=["process"])
        open_events.add_metric([PROCESS], sum(self.stats.open_events.values()))
        yield open_events

    def _relations(self):
        """Each relation's own watermark (docs/settlement.md): payments do not wait for the
        bank's daily file, deposits do. Only for a config with relations."""
        relation = GaugeMetricFamily("tally_relation_watermark_seconds",
                                     "Event time before which a relation has decided everything "
                                     "(Unix seconds)", labels=["process", "relation"])
        lowest: dict[str, int] = {}
        for shard in list(self.stats.shards):
            for i, spec in enumerate(shard.relations):
                mark = shard.watermark(i)
                if spec.name is not None and mark != NEVER:
                    lowest[spec.name] = min(mark, lowest.get(spec.name, mark))
        for name, mark in sorted(lowest.items()):
            relation.add_metric([PROCESS, name], _seconds(mark))
        yield relation

    def _decisions(self):
        matches = CounterMetricFamily("tally_matches", "Match decisions", labels=["process", "tier"])
        exceptions = CounterMetricFamily("tally_exceptions", "Exception decisions",
                                         labels=["process", "kind"])
        with self.stats.lock:
            decided = dict(self.stats.decisions)
        for name, count in sorted(decided.items()):
            if name.startswith("match tier "):
                matches.add_metric([PROCESS, name.removeprefix("match tier ")], count)
            else:
                exceptions.add_metric([PROCESS, name], count)
        yield from (matches, exceptions)


def parse_address(text: str) -> tuple[str, int]:
    """`[HOST:]PORT` -> (host, port); all interfaces unless a host is given."""
    host, _, port = text.rpartition(":")
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise UserError(f"{text!r} is not [HOST:]PORT with a port from 1 to 65535")
    return host or "0.0.0.0", int(port)


def shifted(address: str, offset: int) -> str:
    """The address of member `offset` of a local --processes cluster: PORT+offset."""
    host, port = parse_address(address)
    return f"{host}:{port + offset}"


@contextmanager
def serving(address: str | None, process_id: int | None, stats, sources: dict[str, str]):
    """The endpoint of this process (a daemon thread) while the flow runs; nothing if no address."""
    if not address:
        yield
        return
    global PROCESS
    PROCESS = str(process_id or 0)
    host, port = parse_address(address)
    try:
        server, thread = start_http_server(port, host, registry=REGISTRY)
    except OSError as err:
        raise UserError(f"cannot serve metrics on {host}:{port}: {err.strerror}; "
                        f"choose another --metrics-port") from None
    collector = FlowCollector(stats, sources)
    REGISTRY.register(collector)
    logs.info("metrics served", address=f"http://{host}:{port}/metrics")
    try:
        yield
    finally:
        server.shutdown()
        server.server_close()
        thread.join()
        REGISTRY.unregister(collector)
