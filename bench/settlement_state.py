"""A day of open ledger payments under the settlement config: memory, snapshot, the flow.

Under docs/examples/settlement.toml a ledger payment waits up to 2 days (relation
`payments`) for the processor's item of the same idempotency key. So a day of
TARGET ledger payments, with processor and bank silent, is decided not at all:
every payment stays open. The day (`write_day`) is TARGET payments over ACCOUNTS
accounts, each a `transaction` with its own event id and idempotency key, an
amount in its account's currency and an order reference, at times drawn
uniformly over one day, in time order in each partition (partition_for of the
account, PARTITIONS partitions), written as a day on disk, <day>/<ledger
topic>/<partition>.jsonl, and nothing else: no heartbeats, no other source.
The config is settlement.toml with its [sources] replaced by fresh topics.

(a) In process, in fresh subprocesses (`python -m bench.settlement_state build|restore`),
each reporting its own RSS and peak (VmHWM) from /proc/self/status. build: one
Shard with every partition of the three topics declared (the processor's never
progress); the day is read line by line, decoded, and ingested CHUNK records of
a partition at a time (`split` into one shard), then checked: `open_count()` is
TARGET, nothing decided. State MB = VmRSS with the state (decoder and inputs
dropped, gc.collect()) minus VmRSS after imports. Timed: `encode_snapshot` (the
bytes the flow stores per shard); the ingest time is in extra. restore: a second
fresh process reads the saved snapshot, then timed: `decode_snapshot`; restored
MB = its VmRSS after (bytes dropped, gc.collect()) minus after imports; then
checked: the restored shard has the same `open_count()` and re-encodes to the
identical bytes (same length and SHA-256). Excluded: writing and reading the day,
decoding it, saving and reading the snapshot file, the re-encode check.

(b) The flow: the day is published (kafka_io.produce_day) into the fresh ledger
topic; the processor and bank topics are created empty. `tally run --until-end`
runs in a subprocess with the derived config, into a fresh namespace (PostgreSQL
schema and data dir). Measured: records consumed and seconds as the run's own
summary prints them (from the dataflow starting to its end), its wall time
including start-up, its peak RSS (its VmHWM, polled every 20 ms while it runs;
the target is under 1 GB, 10**9 bytes, which is 953.7 of the MB here, MiB as /proc gives them),
and its committed recovery snapshots (flows.runtime.recovery_store: bytes of
every shard's snapshot). Checked, from the summary: every record consumed, none
decided, TARGET pending. Excluded: writing and publishing the day.

In quick mode the target is QUICK_TARGET, not TARGET.
"""

from __future__ import annotations

import json
import random
import re
import shutil
import sys
import time
import tomllib
import uuid
from pathlib import Path

import msgspec

from bench.common import (PARTITIONS, REPO, SEED, Context, Result, figures_child, restore_figures,
                          run_child, snapshot_figures, state_results, status_mb)
from flows.dev.generate import (CURRENCIES, DAY, MAIN_CURRENCIES, MAIN_CURRENCY_CUM, format_amount,
                                partition_for)
from flows.kafka import kafka_io
from flows.runtime.recovery_store import read_committed
from sinks.postgres import drop_namespace
from state.config import MatchConfig, from_toml, to_toml
from state.contract import Decoder, Event
from state.engine import Shard
from state.routing import split

TARGET = 1_000_000
QUICK_TARGET = 50_000
ACCOUNTS = 1000
DATE = "2026-11-02"  # the day's date: any day will do, nothing reads the clock
SETTLEMENT = REPO / "docs" / "examples" / "settlement.toml"
FLOW_TIMEOUT_S = 3600
CHUNK = 5000


# ----------------------------------------------------------------------------- the day

def settlement_config(topics: dict[str, str]) -> MatchConfig:
    """settlement.toml with its [sources] replaced."""
    data = tomllib.loads(SETTLEMENT.read_text())
    config = from_toml(data)
    if set(topics) != set(config.topics):
        raise ValueError(f"sources {sorted(topics)} are not settlement.toml's {sorted(config.topics)}")
    return msgspec.structs.replace(config, topics={s: topics[s] for s in config.topics})


def _stamp(us: int) -> str:
    s, micro = divmod(us, 1_000_000)
    m, s = divmod(s, 60)
    h, m = divmod(m, 60)
    return f"{DATE}T{h:02d}:{m:02d}:{s:02d}.{micro:06d}Z"


def write_day(day: Path, topic: str, payments: int) -> None:
    """`payments` ledger payments of one day into day/<topic>/<partition>.jsonl, seeded."""
    rng = random.Random(SEED)
    accounts = [f"ACC{i:05d}" for i in range(ACCOUNTS)]
    currencies = rng.choices(MAIN_CURRENCIES, cum_weights=MAIN_CURRENCY_CUM, k=ACCOUNTS)
    partition = [partition_for(a, PARTITIONS) for a in accounts]
    times = sorted(rng.randrange(DAY) for _ in range(payments))  # time order in every partition
    (day / topic).mkdir(parents=True, exist_ok=True)
    files = [open(day / topic / f"{p}.jsonl", "wb") for p in range(PARTITIONS)]
    try:
        for n, at in enumerate(times, 1):
            i = rng.randrange(ACCOUNTS)
            decimals, low, high = CURRENCIES[currencies[i]]
            files[partition[i]].write(msgspec.json.encode({
                "type": "transaction", "source": "ledger", "event_id": f"ledger-P{n:07d}",
                "account": accounts[i], "amount": format_amount(rng.randint(low, high), decimals),
                "currency": currencies[i], "event_time": _stamp(at),
                "idempotency_key": f"idk-{rng.getrandbits(64):016x}",
                "reference": f"ORD-{rng.getrandbits(40):010X}"}) + b"\n")
    finally:
        for f in files:
            f.close()


# ----------------------------------------------------------------------------- (a) in process

def _chunks(day: Path, config: MatchConfig):
    """(topic, partition, events) of the day's ledger partitions, CHUNK records at a time,
    read line by line: no line outlives its event."""
    decoder = Decoder(config)
    topic = config.topics["ledger"]
    for path in sorted((day / topic).glob("*.jsonl")):
        partition, chunk = int(path.stem), []
        with open(path, "rb") as f:
            for offset, line in enumerate(f):
                chunk.append(decoder.decode(line.rstrip(b"\n"), topic, partition, offset))
                if len(chunk) == CHUNK:
                    yield topic, partition, chunk
                    chunk = []
        if chunk:
            yield topic, partition, chunk


def build(day: Path, topics: dict[str, str], target: int, snapshot_file: Path) -> dict:
    """Subprocess: a shard holding the day's `target` open payments; its snapshot, timed and saved."""
    base = status_mb("VmRSS")
    config = settlement_config(topics)
    shard = Shard(config, [(t, p) for t in topics.values() for p in range(PARTITIONS)])
    decided = 0
    started = time.perf_counter()
    for topic, partition, chunk in _chunks(day, config):
        if not all(isinstance(r, Event) for r in chunk):
            raise RuntimeError(f"{topic}:{partition}: the day holds a record that is no event")
        (piece,) = split(topic, partition, chunk, 1, config.max_clock_skew_us)
        out = shard.ingest(piece)
        decided += len(out.decisions)
    ingest_s = time.perf_counter() - started
    if decided or shard.open_count() != target:
        raise RuntimeError(f"{target} payments: {shard.open_count()} open, {decided} decided")
    del chunk, piece, out
    return snapshot_figures(shard, snapshot_file, base, ingest_s)


def _child(ctx: Context, name: str, **spec) -> dict:
    return figures_child(ctx, "bench.settlement_state", name, f"settlement-state-{name}",
                         FLOW_TIMEOUT_S, **spec)


def _in_process(ctx: Context, day: Path, topics: dict[str, str], target: int) -> list[Result]:
    snapshot_file = ctx.work / "settlement-state.snapshot"
    b = _child(ctx, "build", day=day, topics=topics, target=target, snapshot_file=snapshot_file)
    r = _child(ctx, "restore", snapshot_file=snapshot_file)
    snapshot_file.unlink()
    return state_results("settlement open state", "payment", b, r)


# ----------------------------------------------------------------------------- (b) the flow

def _flow(ctx: Context, day: Path, topics: dict[str, str], target: int, tag: str) -> Result:
    here = ctx.work / f"settlement-state-flow-{tag}"
    here.mkdir(parents=True)
    kafka_io.create_topics(ctx.brokers, list(topics.values()), PARTITIONS)
    published = sum(kafka_io.produce_day(ctx.brokers, day, [topics["ledger"]], progress=False).values())
    config = here / "tally.toml"
    config.write_text(to_toml(settlement_config(topics)))

    namespace = f"bench_settle_{tag}"
    argv = [sys.executable, "-m", "flows", "run", "--brokers", ctx.brokers, "--pg", ctx.pg_dsn,
            "--data-dir", str(here / "data"), "--namespace", namespace, "--until-end",
            "--config", str(config)]
    code, out, wall, peak = run_child(argv, here, FLOW_TIMEOUT_S)
    if code != 0:
        raise RuntimeError(f"tally run exited {code}; see {here}/stderr")

    def figure(label: str) -> int:
        return int(re.search(label + r"\s+([\d,]+)", out).group(1).replace(",", ""))

    consumed, decided = figure("records consumed"), figure("decisions")
    pending = figure(re.escape("pending (kept in the recovery snapshot)"))
    seconds = float(re.search(r"Tally run \(([\d.]+)s\)", out).group(1))
    if (published, consumed, decided, pending) != (target, target, 0, target):
        raise RuntimeError(f"{target} payments: {published} published, {consumed} consumed, "
                           f"{decided} decided, {pending} pending; see {here}/stdout")
    size = sum(map(len, read_committed(here / "data" / namespace / "recovery").shards.values()))
    drop_namespace(ctx.pg_dsn, namespace)
    shutil.rmtree(here / "data")  # the archive holds every record again
    return Result("settlement open state flow", consumed, seconds, {
        "pending": pending, "decisions": decided, "peak_rss_MB": round(peak),
        "peak_under_1GB": "yes" if peak * 2**20 < 1e9 else "no", "snapshot_MB": round(size / 1e6, 1),
        "snapshot_bytes_per_payment": round(size / pending), "wall_s": round(wall, 1),
        "records_per_s_wall": round(consumed / wall)})


def run(ctx: Context) -> list[Result]:
    target = QUICK_TARGET if ctx.quick else TARGET
    tag = f"{time.strftime('%H%M%S')}{uuid.uuid4().hex[:4]}"
    topics = {s: f"settle{tag}.{s}" for s in ("ledger", "processor", "bank")}
    day = ctx.work / f"settlement-day-{tag}"
    write_day(day, topics["ledger"], target)
    try:
        return _in_process(ctx, day, topics, target) + [_flow(ctx, day, topics, target, tag)]
    finally:
        shutil.rmtree(day)


if __name__ == "__main__":
    spec = json.loads(sys.argv[2])
    if sys.argv[1] == "build":
        figures = build(Path(spec["day"]), spec["topics"], spec["target"], Path(spec["snapshot_file"]))
    else:
        figures = restore_figures(Path(spec["snapshot_file"]))
    print(json.dumps(figures))
