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
