"""A million open (undecided) events in state: memory, and the cost of the snapshot.

Nothing is decided while the watermark stays at NEVER, so both parts hold a
source partition that never progresses, and every event stays open (apart
from the day's own late records, which are decided on arrival).

(a) In process, in fresh subprocesses (`python -m bench.state_size build|restore`),
each reporting its own RSS and peak (VmHWM) from /proc/self/status. build: the day is read and decoded,
then its events are ingested into one Shard, CHUNK at a time: the day as decoded,
then if needed copies k = 1, 2, ... in their own partitions (topic "<topic>~k",
event ids "<id>~k", so no copy looks late or redelivered to another), stopping
at the first chunk that brings `open_count()` to the target. Spare declared
partitions never progress, and one more partition of each source's topic (number
NEVER_PARTITION) gets no record: a relation's watermark is over its sources' partitions,
so these hold every watermark, and nothing is decided. Timed:
`encode_snapshot` (the bytes the flow stores per shard); the ingest time is in
extra. State MB = VmRSS with the state (inputs dropped, gc.collect()) minus VmRSS
after imports. restore: a second fresh process reads the saved snapshot, then
timed: `decode_snapshot`; restored MB = its VmRSS after (bytes dropped) minus
after imports. Excluded: reading the day, decoding it, saving the snapshot file.

(b) The flow: `tally run --until-end` in a subprocess, with a config whose
[sources] adds one empty topic ("idle", created here) to the day's topics. If
the day has fewer events than the target, copies of the day are published
first into fresh topics (sources "<source>_c<k>", event ids prefixed "c<k>.";
the last copy a prefix of each partition) and added to [sources]. Measured:
records consumed and seconds as the run's own summary prints them (from the
dataflow starting to its end), its wall time including start-up, its peak RSS
(its VmHWM, polled every 20 ms while it runs), and its committed engine
snapshots (flows.runtime.recovery_store: bytes of every shard's snapshot, and the open
events in them).
Excluded: publishing; reading the snapshot back.

In quick mode the target is QUICK_TARGET, not TARGET.
"""

from __future__ import annotations

import json
import math
import re
import shutil
import sys
import time
import uuid
from pathlib import Path

import msgspec

from bench.common import (PARTITIONS, Context, Result, figures_child, restore_figures, run_child,
                          snapshot_figures, state_results, status_mb)
from flows.kafka import dayfiles
from flows.kafka import kafka_io
from flows.runtime.recovery_store import read_committed
from sinks.postgres import drop_namespace
from state.config import MatchConfig
from state.contract import Decoder, Event
from state.engine import Shard, decode_snapshot
from state.routing import split

TARGET = 1_000_000
QUICK_TARGET = 50_000
FLOW_TIMEOUT_S = 3600
CHUNK = 5000
NEVER_PARTITION = 1_000  # of each source's topic: no record ever comes, so no watermark moves


# ----------------------------------------------------------------------------- helpers

def _day_events(day: Path, topics: dict[str, str]) -> dict[tuple[str, int], list[Event]]:
    decoder = Decoder(MatchConfig(topics=topics))
    events = {}
    for (topic, partition), path in dayfiles.partitions(day, list(topics.values())).items():
        records = (decoder.decode(v, topic, partition, i) for i, v in enumerate(dayfiles.read_values(path)))
        events[(topic, partition)] = [r for r in records if isinstance(r, Event)]
    return events


# ----------------------------------------------------------------------------- (a) in process

def _chunks(events: dict[tuple[str, int], list[Event]], copies: int):
    """(topic, partition, events) of every copy, CHUNK events at a time."""
    for k in range(copies):
        for (topic, partition), originals in events.items():
            name = topic if k == 0 else f"{topic}~{k}"  # one string per partition, as in the flow
            for i in range(0, len(originals), CHUNK):
                chunk = originals[i:i + CHUNK]
                yield name, partition, chunk if k == 0 else [
                    msgspec.structs.replace(e, topic=name, event_id=f"{e.event_id}~{k}") for e in chunk]


def build(day: Path, topics: dict[str, str], target: int, snapshot_file: Path) -> dict:
    """Subprocess: a shard with `target` open events; its snapshot, timed and saved."""
    base = status_mb("VmRSS")
    events = _day_events(day, topics)
    copies = math.ceil(target * 1.05 / sum(map(len, events.values()))) + 1  # late ones are decided
    declared = [(t if k == 0 else f"{t}~{k}", p) for k in range(copies) for t, p in events]
    never = [(topic, NEVER_PARTITION) for topic in topics.values()]
    shard = Shard(MatchConfig(topics=topics), declared + never)
    started = time.perf_counter()
    for topic, partition, chunk in _chunks(events, copies):
        (piece,) = split(topic, partition, chunk, 1, shard.config.max_clock_skew_us)
        shard.ingest(piece)
        if shard.open_count() >= target:
            break
    else:
        raise RuntimeError(f"{copies} copies of the day hold only {shard.open_count()} open events")
    ingest_s = time.perf_counter() - started
    del events, chunk, piece
    return snapshot_figures(shard, snapshot_file, base, ingest_s)


def _child(ctx: Context, name: str, **spec) -> dict:
    return figures_child(ctx, "bench.state_size", name, f"open-state-{name}", FLOW_TIMEOUT_S, **spec)


def _in_process(ctx: Context, target: int) -> list[Result]:
    snapshot_file = ctx.work / "open-state.snapshot"
    b = _child(ctx, "build", day=ctx.day, topics=ctx.topics, target=target,
                           snapshot_file=snapshot_file)
    r = _child(ctx, "restore", snapshot_file=snapshot_file)
    snapshot_file.unlink()
    return state_results("open state", "event", b, r)


# ----------------------------------------------------------------------------- (b) the flow

def _publish_copies(ctx: Context, copies: float, tag: str) -> dict[str, str]:
    """Publish `copies` (fractional) more copies of the day; their sources -> topics."""
    values, source_of = ctx.values(), ctx.config.source_of_topic()
    added: dict[str, str] = {}
    k = 1
    while copies > 0:
        share, copy = min(copies, 1.0), {}
        for (topic, partition), lines in values.items():
            source = source_of[topic]
            added[f"{source}_c{k}"] = new_topic = f"{topic}.c{k}.{tag}"
            swap = (b'"source":"%s"' % source.encode(), b'"source":"%s_c%d"' % (source.encode(), k))
            copy[(new_topic, partition)] = [
                v.replace(*swap).replace(b'"event_id":"', b'"event_id":"c%d.' % k)
                for v in lines[:math.ceil(len(lines) * share)]]
        kafka_io.create_topics(ctx.brokers, sorted({t for t, _ in copy}), PARTITIONS)
        kafka_io.produce_values(ctx.brokers, copy, progress=False)
        copies -= share
        k += 1
    return added


def _open_events(snapshot: bytes) -> int:
    return decode_snapshot(snapshot).open_count()


def _flow(ctx: Context, target: int) -> Result:
    tag = uuid.uuid4().hex[:6]
    here = ctx.work / f"open-state-b-{tag}"
    events = sum(map(len, _day_events(ctx.day, ctx.topics).values()))
    extra = max(0.0, target * 1.01 / events - 1)  # 1% margin for late records
    sources = dict(ctx.topics) | _publish_copies(ctx, extra, tag)
    sources["idle"] = f"bench.idle.{tag}"
    kafka_io.create_topics(ctx.brokers, [sources["idle"]], PARTITIONS)
    here.mkdir(parents=True)
    config = here / "tally.toml"
    config.write_text("[sources]\n" + "".join(f'{s} = "{t}"\n' for s, t in sources.items()))

    namespace = f"bench_open_{tag}"
    argv = [sys.executable, "-m", "flows", "run", "--brokers", ctx.brokers, "--pg", ctx.pg_dsn,
            "--data-dir", str(here / "data"), "--namespace", namespace, "--until-end",
            "--config", str(config)]
    code, out, wall, peak = run_child(argv, here, FLOW_TIMEOUT_S)
    if code != 0:
        raise RuntimeError(f"tally run exited {code}; see {here}/stderr")
    consumed = int(re.search(r"records consumed\s+([\d,]+)", out).group(1).replace(",", ""))
    seconds = float(re.search(r"Tally run \(([\d.]+)s\)", out).group(1))

    committed = read_committed(here / "data" / namespace / "recovery")
    snapshots = list(committed.shards.values())
    open_events = sum(map(_open_events, snapshots))
    size = sum(map(len, snapshots))
    drop_namespace(ctx.pg_dsn, namespace)
    shutil.rmtree(here / "data")  # the archive holds every record again
    return Result("open state flow", consumed, seconds, {
        "open_events": open_events, "peak_rss_MB": round(peak),
        "snapshot_MB": round(size / 1e6, 1), "snapshot_bytes_per_event": round(size / max(open_events, 1)),
        "shards": len(snapshots), "committed_epoch": committed.epoch, "wall_s": round(wall, 1),
        "records_per_s_wall": round(consumed / wall), "copies_of_day_added": round(extra, 3)})


def run(ctx: Context) -> list[Result]:
    target = QUICK_TARGET if ctx.quick else TARGET
    return _in_process(ctx, target) + [_flow(ctx, target)]


if __name__ == "__main__":
    spec = json.loads(sys.argv[2])
    if sys.argv[1] == "build":
        figures = build(Path(spec["day"]), spec["topics"], spec["target"], Path(spec["snapshot_file"]))
    else:
        figures = restore_figures(Path(spec["snapshot_file"]))
    print(json.dumps(figures))
