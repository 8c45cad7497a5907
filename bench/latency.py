"""Decision latency of a live `tally run` fed at a steady rate.

Method
------
A fresh set of topics (3 sources x 3 partitions) and a config with a short
match window (2 s) and allowed lateness (1 s), so windows close all the time.
`tally run` (live, not --until-end) runs as a subprocess. A producer thread in
this process publishes payments at a steady rate: each payment is one event per
source (same account, amount and idempotency key), stamped with the wall clock
at publishing, keyed and partitioned by account as `flows.dev.generate` does. Every
~100 ms it also publishes a heartbeat into every partition carrying the wall
clock, so no partition holds the watermark back.

Event time therefore tracks the wall clock, and the watermark passes a window's
end, to within the publish delay, at wall-clock time window_end +
allowed_lateness: that is when the decision is *due*. A decision's latency is
its PostgreSQL `written_at` minus that due time. PostgreSQL runs on this host,
so `written_at` (its clock) and the event times (this process's clock) come from
the same system clock.

What a latency includes: the producer's publish delay (librdkafka queue,
linger.ms, broker append), the consumer's fetch and the source's poll loop,
decode/split, the engine, and the PostgreSQL sink's write. `written_at` is
`DEFAULT now()`, i.e. the start of the sink's transaction: the COPY, INSERT and
COMMIT that follow (a few ms per batch) are not included.

Only decisions due between the end of a warm-up and the end of publishing are
measured (the steady state); after publishing stops, heartbeats continue until
they are all written (or a deadline passes: those are reported as missing).
`by_due_time` gives the percentiles per 10 s of the run: the engine state grows
for the first ~30 s (50,000 accounts in rotation), and latency with it, so a
15 s `quick` run understates the steady state.

`run` measures the flow's defaults; with TALLY_BENCH_LATENCY_VARIANTS=1 it also
measures --batch-size 500 and --snapshot-interval 1 (a minute more each).
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import psycopg
from confluent_kafka import Producer
from psycopg import sql

from bench.common import PARTITIONS, Context, Result
from bench.cpu import CpuSampler, broker_pid, postmaster_pid
from flows.kafka import kafka_io
from flows.dev.generate import partition_for

SOURCES = ("bank", "processor", "ledger")
MATCH_WINDOW_S = 2
ALLOWED_LATENESS_S = 1
REDELIVERY_HORIZON_S = 10  # keeps the engine's memory of seen events small over a long run
HEARTBEAT_EVERY_S = 0.1
TICK_S = 0.002  # the producer's pacing step
ACCOUNTS = 50_000  # payments rotate over them: an account recurs long after its window closed
READY_TIMEOUT_S = 90.0
DRAIN_TIMEOUT_S = 60.0  # after publishing stops, wait this long for due decisions
STOP_TIMEOUT_S = 20.0


@dataclass
class Settings:
    seconds: float = 60.0
    events_per_s: float = 5000.0
    warm_up_s: float = 5.0
    batch_size: int | None = None  # None: the flow's default (5000)
    snapshot_interval: float | None = None  # None: the flow's default (5 s)
    label: str = "default"
    producer_heartbeats: bool = True  # False: only Tally's own heartbeats move quiet partitions
    heartbeats_toml: str = ""  # a [heartbeats] table for the flow's config
    # the flow's command line, before the service options (a scratch profile may wrap it)
    command: list[str] = field(default_factory=lambda: [sys.executable, "-m", "flows"])


def run(ctx: Context) -> list[Result]:
    quick = ctx.quick
    base = Settings(seconds=15.0 if quick else 60.0, warm_up_s=3.0 if quick else 5.0)
    # Producers that send transactions and nothing else, slowly enough that partitions go
    # quiet: Tally's heartbeats (idle 100 ms, max_source_delay 1 s) must move them.
    quiet = Settings(seconds=base.seconds, warm_up_s=base.warm_up_s, events_per_s=30.0,
                     producer_heartbeats=False, label="Tally's heartbeats only, 30 events/s",
                     heartbeats_toml='[heartbeats]\nidle = "100ms"\nmax_source_delay = "1s"\n')
    variants = [base, quiet]
    if os.environ.get("TALLY_BENCH_LATENCY_VARIANTS"):
        variants += [Settings(seconds=base.seconds, warm_up_s=base.warm_up_s, batch_size=500,
                              label="batch-size 500"),
                     Settings(seconds=base.seconds, warm_up_s=base.warm_up_s,
                              snapshot_interval=1.0, label="snapshot-interval 1")]
    return [measure(ctx, s) for s in variants]


# ----------------------------------------------------------------------------- producer

def _rfc3339(us: int) -> str:
    sec, micro = divmod(us, 1_000_000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(sec)) + f".{micro:06d}Z"


class SteadyProducer(threading.Thread):
    """Payments at a steady rate plus heartbeats, all stamped with the wall clock.

    Phases: heartbeats only (until `go`), payments and heartbeats for `seconds`,
    then heartbeats only again until `halt`.
    """

    def __init__(self, brokers: str, topics: dict[str, str], payments_per_s: float, seconds: float,
                 heartbeats: bool = True):
        super().__init__(daemon=True, name="latency-producer")
        self.send_heartbeats = heartbeats
        self.topics = [topics[s] for s in SOURCES]
        self.payments_per_s, self.seconds = payments_per_s, seconds
        self.failures: list = []
        self.errors: list = []
        self.producer = Producer(kafka_io.kafka_config(brokers, {
            "linger.ms": 1, "acks": "all", "enable.idempotence": True,
            "queue.buffering.max.messages": 1_000_000,
            "delivery.report.only.error": True,
            "on_delivery": lambda err, msg: self.failures.append(err) if err else None,
            "error_cb": lambda err: self.errors.append(err.str()),
            "logger": logging.getLogger("tally.kafka"),  # not raw lines on stderr
            "log.connection.close": False,
        }))
        self.go, self.halt, self.done = threading.Event(), threading.Event(), threading.Event()
        self.published_from = self.published_to = 0.0  # wall clock, seconds
        self.payment_times: list[int] = []  # event time of every payment (us)
        self.heartbeats = 0
        self.max_lag_s = 0.0  # how far the pacing loop fell behind its schedule, at worst
        self.exception: BaseException | None = None

    def _heartbeats(self, now_us: int) -> None:
        stamp = _rfc3339(now_us)
        for source, topic in zip(SOURCES, self.topics):
            value = f'{{"type":"heartbeat","source":"{source}","event_time":"{stamp}"}}'.encode()
            for p in range(PARTITIONS):
                self.producer.produce(topic, value, None, p, timestamp=now_us // 1000)
        self.heartbeats += len(self.topics) * PARTITIONS

    def _payment(self, seq: int, now_us: int) -> None:
        account = f"LAT{seq % ACCOUNTS:06d}"
        partition = partition_for(account, PARTITIONS)
        minor = 100 + (seq * 7919) % 499_900
        amount = f"{minor // 100}.{minor % 100:02d}"
        stamp = _rfc3339(now_us)
        key = account.encode()
        for source, topic in zip(SOURCES, self.topics):
            value = (f'{{"type":"transaction","source":"{source}","event_id":"{source}-{seq}",'
                     f'"account":"{account}","amount":"{amount}","currency":"EUR",'
                     f'"event_time":"{stamp}","idempotency_key":"lat-{seq}"}}').encode()
            while True:
                try:
                    self.producer.produce(topic, value, key, partition, timestamp=now_us // 1000)
                    break
                except BufferError:
                    self.producer.poll(0.01)
        self.payment_times.append(now_us)

    def run(self) -> None:
        try:
            self._run()
        except BaseException as exc:  # reported by the caller
            self.exception = exc

    def _run(self) -> None:
        next_hb = time.time()
        start = None
        seq = 0
        while not self.halt.is_set():
            now = time.time()
            if now >= next_hb and self.send_heartbeats:
                self._heartbeats(time.time_ns() // 1000)
                next_hb += HEARTBEAT_EVERY_S
                if next_hb < now:  # fell far behind: do not burst
                    next_hb = now + HEARTBEAT_EVERY_S
            if self.go.is_set():
                if start is None:
                    start = self.published_from = now
                elapsed = now - start
                if elapsed < self.seconds:
                    due = int(elapsed * self.payments_per_s)
                    if due - seq > 1:
                        self.max_lag_s = max(self.max_lag_s, (due - seq) / self.payments_per_s)
                    while seq < due:
                        self._payment(seq, time.time_ns() // 1000)
                        seq += 1
                    self.published_to = time.time()
                else:
                    self.done.set()
            self.producer.poll(0)
            sleep = TICK_S - (time.time() - now)
            if sleep > 0:
                time.sleep(sleep)
        self.producer.flush(30)
        self.producer = None  # closes its connections now, not when the broker goes away


# ----------------------------------------------------------------------------- the flow

def _start_flow(ctx: Context, s: Settings, config: Path, data_dir: Path, ns: str,
                log: Path) -> subprocess.Popen:
    argv = [*s.command, "run", "--brokers", ctx.brokers, "--pg", ctx.pg_dsn,
            "--data-dir", str(data_dir), "--namespace", ns, "--config", str(config)]
    if s.batch_size is not None:
        argv += ["--batch-size", str(s.batch_size)]
    if s.snapshot_interval is not None:
        argv += ["--snapshot-interval", str(s.snapshot_interval)]
    with open(log, "wb") as out:
        # its own process group, so the stop below reaches anything it started
        return subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                env=os.environ | {"CI": "1"}, start_new_session=True)


def _stop_flow(proc: subprocess.Popen) -> str:
    """SIGINT (what `tally run` handles: bytewax raises KeyboardInterrupt), then SIGTERM,
    then SIGKILL, each to the flow's process group. Returns how it ended."""
    how = "exited by itself"
    for sig, wait in ((signal.SIGINT, STOP_TIMEOUT_S), (signal.SIGTERM, 5.0), (signal.SIGKILL, 5.0)):
        if proc.poll() is not None:
            break
        how = f"stopped by {sig.name}"
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            break
        try:
            proc.wait(wait)
        except subprocess.TimeoutExpired:
            continue
    try:  # whatever else is still in its group
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    proc.wait(5)
    return f"{how} (exit {proc.returncode})"


def _tail(log: Path, lines: int = 20) -> str:
    try:
        return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def _count(conn: psycopg.Connection, ns: str, table: str, where: str = "", args=()) -> int:
    query = sql.SQL("SELECT count(*) FROM {}.{} " + where).format(sql.Identifier(ns),
                                                                   sql.Identifier(table))
    try:
        return conn.execute(query, args).fetchone()[0]
    except psycopg.errors.UndefinedTable:
        return 0


def _percentile(sorted_values: list[float], q: float) -> float:
    if not sorted_values:
        return float("nan")
    index = min(len(sorted_values) - 1, max(0, int(round(q * len(sorted_values) + 0.5)) - 1))
    return sorted_values[index]


# ----------------------------------------------------------------------------- one measurement

def measure(ctx: Context, s: Settings) -> Result:
    tag = uuid.uuid4().hex[:8]
    topics = {src: f"lat{tag}.{src}" for src in SOURCES}
    ns = f"lat_{tag}"
    work = Path(ctx.work) / f"latency-{tag}"
    work.mkdir(parents=True, exist_ok=True)
    config = work / "tally.toml"
    config.write_text("[sources]\n" + "".join(f'{k} = "{v}"\n' for k, v in topics.items())
                      + "\n[matching]\n"
                      + f'match_window = "{MATCH_WINDOW_S}s"\n'
                      + f'allowed_lateness = "{ALLOWED_LATENESS_S}s"\n'
                      + f'redelivery_horizon = "{REDELIVERY_HORIZON_S}s"\n'
                      + ("\n" + s.heartbeats_toml if s.heartbeats_toml else ""))
    kafka_io.create_topics(ctx.brokers, list(topics.values()), PARTITIONS)
    log = work / "flow.log"
    producer = SteadyProducer(ctx.brokers, topics, s.events_per_s / len(SOURCES), s.seconds,
                              s.producer_heartbeats)
    proc = _start_flow(ctx, s, config, work / "data", ns, log)
    stopped = "not started"
    cpu = None
    try:
        with psycopg.connect(ctx.pg_dsn, autocommit=True) as conn:
            cpu = CpuSampler({"flow": proc.pid, "broker": broker_pid(ctx.brokers),
                              "postgres": postmaster_pid(ctx.pg_dsn), "producer": os.getpid()},
                             alone=("producer",))
            started = time.monotonic()
            producer.start()  # heartbeats only, until `go`
            # Consuming end to end: heartbeat fates reach PostgreSQL.
            while _count(conn, ns, "fates") == 0:
                if producer.exception is not None:
                    raise RuntimeError(f"producer failed: {producer.exception!r}")
                if proc.poll() is not None:
                    raise RuntimeError(f"tally run exited {proc.returncode}:\n{_tail(log)}")
                if time.monotonic() - started > READY_TIMEOUT_S:
                    raise RuntimeError(f"tally run wrote nothing in {READY_TIMEOUT_S:.0f}s:\n{_tail(log)}")
                time.sleep(0.2)
            ready_s = time.monotonic() - started
            producer.go.set()
            cpu.start()
            while not producer.done.wait(0.2):
                if proc.poll() is not None:
                    raise RuntimeError(f"tally run exited {proc.returncode}:\n{_tail(log)}")
                if producer.exception is not None:
                    raise RuntimeError(f"producer failed: {producer.exception!r}")
            first_due = producer.published_from + s.warm_up_s
            last_due = producer.published_to
            lateness_us = (MATCH_WINDOW_S + ALLOWED_LATENESS_S) * 1_000_000
            expected = sum(1 for t in producer.payment_times
                           if first_due * 1e6 <= t + lateness_us <= last_due * 1e6)
            window = (_ts(first_due - ALLOWED_LATENESS_S), _ts(last_due - ALLOWED_LATENESS_S))
            where = "WHERE window_end BETWEEN %s AND %s"
            deadline = time.monotonic() + DRAIN_TIMEOUT_S
            while _count(conn, ns, "decisions", where, window) < expected:
                if time.monotonic() > deadline or proc.poll() is not None:
                    break
                time.sleep(0.25)
            rows = conn.execute(sql.SQL(
                "SELECT kind, extract(epoch FROM written_at - window_end) * 1000, written_at,"
                " extract(epoch FROM window_end)"
                " FROM {}.decisions " + where).format(sql.Identifier(ns)), window).fetchall()
            total_decisions = _count(conn, ns, "decisions")
            cpu.stop()
        producer.halt.set()
        producer.join(35)
    finally:
        producer.halt.set()
        if cpu is not None and cpu.is_alive():
            cpu.stop()
        stopped = _stop_flow(proc)
    if producer.exception is not None:
        raise RuntimeError(f"producer failed: {producer.exception!r}")

    lat = sorted(float(ms) - ALLOWED_LATENESS_S * 1000 for _, ms, _, _ in rows)
    kinds: dict[str, int] = {}
    slices: dict[int, list[float]] = {}  # by due time, 10 s slices from the start of publishing
    for kind, ms, _, end in rows:
        kinds[kind] = kinds.get(kind, 0) + 1
        due = float(end) + ALLOWED_LATENESS_S - producer.published_from
        slices.setdefault(int(due // 10) * 10, []).append(float(ms) - ALLOWED_LATENESS_S * 1000)
    by_10s = {f"{k}-{k + 10}s": {"p50_ms": round(_percentile(sorted(v), 0.5)),
                                 "p99_ms": round(_percentile(sorted(v), 0.99)), "n": len(v)}
              for k, v in sorted(slices.items())}
    # Every row of one sink transaction has the same written_at: the write cadence.
    commits = sorted({w for _, _, w, _ in rows})
    gaps = sorted((b - a).total_seconds() * 1000 for a, b in zip(commits, commits[1:]))
    published = len(producer.payment_times) * len(SOURCES)
    seconds = max(producer.published_to - producer.published_from, 1e-9)
    extra = {
        "variant": s.label,
        "batch_size": s.batch_size or 5000,
        "snapshot_interval_s": s.snapshot_interval or 5.0,
        "target_events_per_s": s.events_per_s,
        "match_window_s": MATCH_WINDOW_S, "allowed_lateness_s": ALLOWED_LATENESS_S,
        "warm_up_s": s.warm_up_s,
        "decisions_measured": len(lat), "decisions_expected": expected,
        # missing decisions were not written within DRAIN_TIMEOUT_S: the percentiles are then
        # lower bounds (the flow did not keep up with the rate)
        "complete": len(lat) >= expected,
        "missing": max(0, expected - len(lat)), "decisions_total": total_decisions,
        "kinds": kinds,
        "p50_ms": round(_percentile(lat, 0.50), 1), "p90_ms": round(_percentile(lat, 0.90), 1),
        "p99_ms": round(_percentile(lat, 0.99), 1), "max_ms": round(lat[-1], 1) if lat else None,
        "min_ms": round(lat[0], 1) if lat else None,
        "by_due_time": by_10s,
        "pg_write_transactions": len(commits),
        "pg_write_interval_p50_ms": round(_percentile(gaps, 0.5), 1) if gaps else None,
        "pg_write_interval_max_ms": round(gaps[-1], 1) if gaps else None,
        "heartbeats": producer.heartbeats,
        "producer_max_lag_ms": round(producer.max_lag_s * 1000, 1),
        "producer_failures": len(producer.failures),
        "ready_s": round(ready_s, 1),
        # percent of one core per 10 s from the start of publishing: the flow shares the
        # machine with the broker, PostgreSQL and this producer (docs/benchmarks.md)
        "cpu_pct": cpu.summary(),
        "cpu_pct_by_10s": cpu.samples,
        "flow_stop": stopped,
        "includes": "producer publish delay (librdkafka, linger.ms=1, broker append) + consumer "
                    "fetch and source poll + decode/split + engine + PostgreSQL sink batch "
                    "(written_at = start of the sink's transaction)",
    }
    return Result(name=f"latency ({s.label})", events=published, seconds=seconds, extra=extra)


def _ts(seconds: float) -> datetime:
    return datetime.fromtimestamp(seconds, tz=timezone.utc)


