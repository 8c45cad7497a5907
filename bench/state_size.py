"""A million open (undecided) events in state: memory, and the cost of the snapshot.

Nothing is decided while the watermark stays at NEVER, so both parts hold a
source partition that never progresses, and every event stays open (apart
from the day's own late records, which are decided on arrival).

(a) In process, in a fresh subprocess (`python -m bench.state_size`, so that its
peak RSS is its own): the day is read and decoded once, then its events are
ingested into one Shard in copies: copy 0 as decoded, copy k > 0 in its own
partitions (topic "<topic>~k") with event ids "<id>~k", so no copy looks late or redelivered to another; copies
are added until `open_count() >= target`. Spare declared partitions (and one named
"bench.never") never progress. Timed: the ingest of all copies (extra), then
`encode_snapshot` (the bytes the flow stores per shard) and `decode_snapshot`.
RSS from /proc/self/status: after imports; with the state (inputs dropped,
gc.collect()); after decoding (both copies held); with the decoded copy alone
(the original and the bytes dropped; freed memory the allocator keeps still
counts); peak (VmHWM).

(b) The flow: `tally run --until-end` in a subprocess, with a config whose
[sources] adds one empty topic ("idle", created here) to the day's topics. If
the day has fewer events than the target, copies of the day are published
first into fresh topics (sources "<source>_c<k>", event ids prefixed "c<k>.";
the last copy a prefix of each partition) and added to [sources]. Measured:
records consumed and seconds as the run's own summary prints them (bytewax
running, from first poll to the end), its wall time including start-up, its peak
RSS (`os.wait4` rusage of that child), and its committed engine snapshots
(flows.recovery_store: bytes of every shard's snapshot, and their open events).
Excluded: publishing; reading the snapshot back.

In quick mode the target is QUICK_TARGET, not TARGET.
"""

from __future__ import annotations

import gc
import json
import math
import os
import re
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path

import msgspec

from bench.common import PARTITIONS, Context, Result
from flows import dayfiles, kafka_io
from flows.recovery_store import read_committed
from sinks.postgres import drop_namespace
from state.config import MatchConfig
from state.contract import Decoder, Event
from state.engine import Shard, decode_snapshot, encode_snapshot
from state.routing import split

TARGET = 1_000_000
QUICK_TARGET = 50_000
REPO = Path(__file__).resolve().parents[1]
FLOW_TIMEOUT_S = 3600


# ----------------------------------------------------------------------------- helpers

def _status_mb(field: str) -> float:
    """VmRSS or VmHWM of this process, in MB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no {field} in /proc/self/status")


def _run_child(argv: list[str], log_dir: Path, timeout: float) -> tuple[int, str, float, float]:
    """Run argv; (exit code, stdout, wall seconds, peak RSS MB of that child alone)."""
    log_dir.mkdir(parents=True, exist_ok=True)
    with open(log_dir / "stdout", "w+") as out, open(log_dir / "stderr", "w") as err:
        started = time.perf_counter()
        proc = subprocess.Popen(argv, stdout=out, stderr=err, cwd=REPO)
        while True:  # os.wait4 reaps it and gives its own rusage (RUSAGE_CHILDREN mixes children)
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            if time.perf_counter() - started > timeout:
                proc.kill()
            time.sleep(0.05)
        seconds = time.perf_counter() - started
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        return proc.returncode, out.read(), seconds, usage.ru_maxrss / 1024


def _day_events(day: Path, topics: dict[str, str]) -> dict[tuple[str, int], list[Event]]:
    decoder = Decoder(MatchConfig(topics=topics))
    events = {}
    for (topic, partition), path in dayfiles.partitions(day, list(topics.values())).items():
        records = (decoder.decode(v, topic, partition, i) for i, v in enumerate(dayfiles.read_values(path)))
        events[(topic, partition)] = [r for r in records if isinstance(r, Event)]
    return events


# ----------------------------------------------------------------------------- (a) in process

def _copy(topic: str, k: int) -> str:
    return topic if k == 0 else f"{topic}~{k}"


def build_and_snapshot(day: Path, topics: dict[str, str], target: int) -> dict:
    """Runs in the subprocess: the figures of part (a), as a dict."""
    base = _status_mb("VmRSS")
    events = _day_events(day, topics)
    per_copy = sum(map(len, events.values()))
    copies = math.ceil(target * 1.05 / per_copy) + 1  # late records are decided, hence the margin
    declared = [(_copy(t, k), p) for k in range(copies) for t, p in events] + [("bench.never", 0)]
    shard = Shard(MatchConfig(topics=topics), declared)
    started, k = time.perf_counter(), 0
    while shard.open_count() < target:
        if k == copies:
            raise RuntimeError(f"{copies} copies of the day hold {shard.open_count()} open events")
        for (topic, partition), originals in events.items():
            name = _copy(topic, k)  # one string per partition, as the flow shares a batch's topic
            copy = originals if k == 0 else [
                msgspec.structs.replace(e, topic=name, event_id=f"{e.event_id}~{k}") for e in originals]
            (piece,) = split(name, partition, copy, 1)
            shard.ingest(piece)
        k += 1
    ingest_s = time.perf_counter() - started
    del events, copy, piece
    gc.collect()
    with_state = _status_mb("VmRSS")

    started = time.perf_counter()
    snapshot = encode_snapshot(shard)
    encode_s = time.perf_counter() - started
    started = time.perf_counter()
    restored = decode_snapshot(snapshot)
    decode_s = time.perf_counter() - started
    open_events, accounts, size = shard.open_count(), len(shard.accounts), len(snapshot)
    assert open_events >= target and restored.open_count() == open_events
    after_decode = _status_mb("VmRSS")
    del shard, snapshot
    gc.collect()
    return {"open_events": open_events, "accounts": accounts, "copies": k,
            "ingest_s": ingest_s, "encode_s": encode_s, "decode_s": decode_s,
            "snapshot_bytes": size, "rss_base_mb": base, "rss_with_state_mb": with_state,
            "rss_after_decode_mb": after_decode, "rss_restored_only_mb": _status_mb("VmRSS"),
            "peak_rss_mb": _status_mb("VmHWM")}


def _in_process(ctx: Context, target: int) -> list[Result]:
    args = json.dumps({"day": str(ctx.day), "topics": ctx.topics, "target": target})
    code, out, _, peak = _run_child([sys.executable, "-m", "bench.state_size", args],
                                    ctx.work / "open-state-a", FLOW_TIMEOUT_S)
    if code != 0:
        raise RuntimeError(f"bench.state_size exited {code}; see {ctx.work / 'open-state-a'}")
    f = json.loads(out.splitlines()[-1])
    n, size = f["open_events"], f["snapshot_bytes"]
    state_mb = f["rss_with_state_mb"] - f["rss_base_mb"]
    common = {"open_events": n, "accounts": f["accounts"], "snapshot_MB": round(size / 1e6, 1),
              "snapshot_bytes_per_event": round(size / n)}
    encode = Result("open_state_encode", n, f["encode_s"], common | {
        "state_rss_MB": round(state_mb), "rss_bytes_per_event": round(state_mb * 2**20 / n),
        "rss_with_state_MB": round(f["rss_with_state_mb"]), "peak_rss_MB": round(peak),
        "rss_after_decode_MB": round(f["rss_after_decode_mb"]),
        "rss_restored_only_MB": round(f["rss_restored_only_mb"]),
        "ingest_s": round(f["ingest_s"], 2), "copies_of_day": f["copies"]})
    decode = Result("open_state_decode", n, f["decode_s"], common)
    return [encode, decode]


# ----------------------------------------------------------------------------- (b) the flow

def _publish_copies(ctx: Context, copies: float, tag: str) -> dict[str, str]:
    """Publish `copies` (fractional) more copies of the day; their sources -> topics."""
    values = ctx.values()
    added: dict[str, str] = {}
    k = 1
    while copies > 0:
        share = min(copies, 1.0)
        part_values = {}
        for source, topic in ctx.topics.items():
            new_source, new_topic = f"{source}_c{k}", f"{topic}.c{k}{tag}"
            added[new_source] = new_topic
            swap = (b'"source":"%s"' % source.encode(), b'"source":"%s"' % new_source.encode())
            for (t, p), lines in values.items():
                if t == topic:
                    lines = lines[:math.ceil(len(lines) * share)]
                    part_values[(new_topic, p)] = [
                        v.replace(*swap).replace(b'"event_id":"', b'"event_id":"c%d.' % k) for v in lines]
        kafka_io.create_topics(ctx.brokers, sorted({t for t, _ in part_values}), PARTITIONS)
        kafka_io.produce_values(ctx.brokers, part_values, progress=False)
        copies -= share
        k += 1
    return added


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
    code, out, wall, peak = _run_child(argv, here, FLOW_TIMEOUT_S)
    if code != 0:
        raise RuntimeError(f"tally run exited {code}; see {here}/stderr")
    consumed = int(re.search(r"records consumed\s+([\d,]+)", out).group(1).replace(",", ""))
    seconds = float(re.search(r"Tally run \(([\d.]+)s\)", out).group(1))

    committed = read_committed(here / "data" / namespace / "recovery")
    snapshots = list(committed.shards.values())
    open_events = sum(decode_snapshot(s).open_count() for s in snapshots)
    size = sum(map(len, snapshots))
    drop_namespace(ctx.pg_dsn, namespace)
    shutil.rmtree(here / "data")  # the archive holds every record again
    return Result("open_state_flow", consumed, seconds, {
        "open_events": open_events, "peak_rss_MB": round(peak),
        "snapshot_MB": round(size / 1e6, 1), "snapshot_bytes_per_event": round(size / max(open_events, 1)),
        "shards": len(snapshots), "snapshot_epochs": committed.epoch, "wall_s": round(wall, 1),
        "records_per_s_wall": round(consumed / wall), "copies_of_day_added": round(extra, 3)})


def run(ctx: Context) -> list[Result]:
    target = QUICK_TARGET if ctx.quick else TARGET
    return _in_process(ctx, target) + [_flow(ctx, target)]


if __name__ == "__main__":
    spec = json.loads(sys.argv[1])
    print(json.dumps(build_and_snapshot(Path(spec["day"]), spec["topics"], spec["target"])))
