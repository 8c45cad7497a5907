"""What every benchmark shares: the services, the generated day on disk and in the broker.

One `Context` is built per `make bench` run: one embedded broker, one embedded
PostgreSQL, one generated day published once into its own topics. So every
benchmark reads the same bytes on the same machine in the same session, and
their ratios mean something.
"""

from __future__ import annotations

import json
import os
import platform
import resource
import subprocess
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from flows.kafka import kafka_io
from flows.kafka.dayfiles import partitions, read_values
from flows.dev.generate import generate_day
from state.config import MatchConfig

PARTITIONS = 3  # per source topic, as `tally topics create` makes them
SEED = 2026  # of every generated day
REPO = Path(__file__).resolve().parents[1]


@dataclass
class Context:
    brokers: str
    pg_dsn: str
    work: Path  # scratch space for this run
    day: Path  # the generated day: <day>/<topic>/<partition>.jsonl
    topics: dict[str, str]  # source -> topic, holding the day
    config_file: Path
    events: int  # records in the day (all topics, all partitions)
    transactions: int  # payments in the day
    quick: bool = False  # a small day: checks the suite runs, figures are not meaningful

    @property
    def config(self) -> MatchConfig:
        return MatchConfig(topics=self.topics)

    def values(self) -> dict[tuple[str, int], list[bytes]]:
        return {part: read_values(path)
                for part, path in partitions(self.day, list(self.topics.values())).items()}


@dataclass
class Result:
    """One benchmark's figures. `events_per_s` is compared with the raw ceiling."""

    name: str
    events: int
    seconds: float
    extra: dict = field(default_factory=dict)
    ratio_to_ceiling: float | None = None

    @property
    def events_per_s(self) -> float:
        return self.events / self.seconds if self.seconds else 0.0

    def as_json(self) -> dict:
        return asdict(self) | {"events_per_s": round(self.events_per_s)}


def prepare(brokers: str, pg_dsn: str, work: Path, transactions: int, quick: bool) -> Context:
    """Generate the day and publish it into fresh topics."""
    tag = time.strftime("%H%M%S")
    topics = {s: f"bench{tag}.{s}" for s in ("bank", "processor", "ledger")}
    day = work / "day"
    generate_day(day, transactions, seed=SEED, partitions=PARTITIONS, topics=topics)
    return publish(Context(brokers, pg_dsn, work, day, topics, work / "tally.toml", 0, transactions, quick))


def publish(ctx: Context) -> Context:
    """Publish ctx's generated day into its topics (created here) and write the config file
    naming them: the context, with the day's record count."""
    kafka_io.create_topics(ctx.brokers, list(ctx.topics.values()), PARTITIONS)
    counts = kafka_io.produce_day(ctx.brokers, ctx.day, list(ctx.topics.values()), progress=True)
    ctx.config_file.write_text("[sources]\n" + "".join(f'{s} = "{t}"\n' for s, t in ctx.topics.items()))
    return replace(ctx, events=sum(counts.values()))


def machine() -> dict:
    """What the figures were measured on."""
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    return {"cpu": cpu, "cores": os.cpu_count(), "memory_gb": round(memory / 2**30, 1),
            "python": platform.python_version(), "platform": platform.platform()}


def peak_rss_mb() -> float:
    """This process's peak RSS (for a child's, use run_child: rusage would mislead)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kilobytes on Linux


def status_mb(field: str, pid: int | str = "self") -> float:
    """VmRSS or VmHWM of a process, in MB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise ValueError(f"no {field} in /proc/{pid}/status")


def run_child(argv: list[str], log_dir: Path, timeout: float) -> tuple[int, str, float, float]:
    """Run argv; (exit code, stdout, wall seconds, peak RSS MB of that child alone).

    The peak is the child's VmHWM, polled until it exits. Not its rusage: Linux
    carries the parent's own peak into a child's ru_maxrss (vfork, exec), so
    RUSAGE_CHILDREN and wait4 report at least this process's peak.
    """
    log_dir.mkdir(parents=True, exist_ok=True)
    with open(log_dir / "stdout", "w+") as out, open(log_dir / "stderr", "w") as err:
        started, peak = time.perf_counter(), 0.0
        proc = subprocess.Popen(argv, stdout=out, stderr=err, cwd=REPO)
        while proc.poll() is None:
            try:
                peak = max(peak, status_mb("VmHWM", proc.pid))
            except (OSError, ValueError):  # exiting: no memory left to read
                pass
            if time.perf_counter() - started > timeout:
                proc.kill()
            time.sleep(0.02)
        out.seek(0)
        return proc.returncode, out.read(), time.perf_counter() - started, peak


def write_json(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=1, default=str) + "\n")


def snapshot_figures(shard, snapshot_file: Path, base_mb: float, ingest_s: float) -> dict:
    """In the building subprocess, once its inputs are dropped: the RSS with the shard's
    state, and its snapshot, encoded (timed) and saved to `snapshot_file`."""
    import gc
    import hashlib

    from state.engine import encode_snapshot
    gc.collect()
    with_state = status_mb("VmRSS")
    started = time.perf_counter()
    snapshot = encode_snapshot(shard)
    encode_s = time.perf_counter() - started
    snapshot_file.write_bytes(snapshot)
    return {"open_events": shard.open_count(), "accounts": len(shard.desks[0].accounts),
            "ingest_s": ingest_s, "encode_s": encode_s, "snapshot_bytes": len(snapshot),
            "snapshot_sha256": hashlib.sha256(snapshot).hexdigest(),
            "rss_base_mb": base_mb, "rss_with_state_mb": with_state,
            "peak_rss_mb": status_mb("VmHWM")}


def restore_figures(snapshot_file: Path) -> dict:
    """In a fresh subprocess: decode a saved engine snapshot, timed; the RSS of the restored
    shard alone; and whether it re-encodes to the very same bytes."""
    import gc
    import hashlib

    from state.engine import decode_snapshot, encode_snapshot
    base = status_mb("VmRSS")
    data = snapshot_file.read_bytes()
    size, digest = len(data), hashlib.sha256(data).hexdigest()
    started = time.perf_counter()
    shard = decode_snapshot(data)
    decode_s = time.perf_counter() - started
    del data
    gc.collect()
    restored = status_mb("VmRSS")
    again = encode_snapshot(shard)
    return {"open_events": shard.open_count(), "decode_s": decode_s, "rss_base_mb": base,
            "rss_restored_mb": restored, "peak_rss_mb": status_mb("VmHWM"),
            "reencoded_bytes": len(again), "exact": len(again) == size
            and hashlib.sha256(again).hexdigest() == digest}


def figures_child(ctx: Context, module: str, name: str, log_name: str, timeout: float,
                  **spec) -> dict:
    """Run `python -m <module> <name> <spec as JSON>`: the figures its last line prints."""
    import sys
    log = ctx.work / log_name
    argv = [sys.executable, "-m", module, name, json.dumps(spec, default=str)]
    code, out, _, _ = run_child(argv, log, timeout)
    if code != 0:
        raise RuntimeError(f"{module} {name} exited {code}; see {log}/stderr")
    return json.loads(out.splitlines()[-1])


def state_results(name: str, unit: str, built: dict, restored: dict) -> list[Result]:
    """The encode and decode Results of one in-process state measurement (`snapshot_figures`
    and `restore_figures`), per open `unit` ("event", "payment"); a restore that is not
    exact fails the benchmark."""
    n, size = built["open_events"], built["snapshot_bytes"]
    if restored["open_events"] != n or not restored["exact"]:
        raise RuntimeError(f"the snapshot of {n} open {unit}s restored "
                           f"{restored['open_events']}, re-encoded "
                           f"{'exactly' if restored['exact'] else 'differently'}")
    live_mb = built["rss_with_state_mb"] - built["rss_base_mb"]
    restored_mb = restored["rss_restored_mb"] - restored["rss_base_mb"]
    common = {f"open_{unit}s": n, "accounts": built["accounts"],
              "snapshot_MB": round(size / 1e6, 1), f"snapshot_bytes_per_{unit}": round(size / n)}
    encode = Result(f"{name} encode", n, built["encode_s"], common | {
        "state_MB": round(live_mb), f"state_bytes_per_{unit}": round(live_mb * 2**20 / n),
        "peak_rss_MB": round(built["peak_rss_mb"]), "ingest_s": round(built["ingest_s"], 2)})
    decode = Result(f"{name} decode", n, restored["decode_s"], common | {
        "restored_state_MB": round(restored_mb),
        f"restored_bytes_per_{unit}": round(restored_mb * 2**20 / n),
        "restore_exact": "yes", "peak_rss_MB": round(restored["peak_rss_mb"])})
    return [encode, decode]
