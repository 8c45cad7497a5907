"""The Python streaming peer: a Quix Streams application on the same backlog.

What a team comparing Python streaming frameworks would write first: decode each
record and keep a per-key count and the last amount in the state store. The
application is bench/quix_app.py (its docstring says exactly what it does); here
it runs in a fresh subprocess over the day's three topics on the same broker,
with a new consumer group and a RocksDB state directory of its own, until it has
processed every record of the backlog (the end offsets read just before).

Its own venv: quixstreams (every 3.x release) pins confluent-kafka < 2.13 and
Tally pins 2.16.1, so pip cannot install both into one environment, and Quix
runs here with the client its authors pin. The venv is .venv-quix, built from
bench/quix-requirements.txt by `make bench` or by this benchmark when missing or
out of date (`python -m bench.quix --setup` builds it alone).

Figures: records over the seconds from the first record processed to the last
(as the whole flow's rate excludes its start-up), and the wall time of the whole
command (interpreter, imports, consumer group join, changelog topics, final
commit). bench/run.py adds the ratio of Tally's whole flow to it when both ran.
A run that does not process the whole backlog reports 0 events/s and why.
"""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from pathlib import Path

from bench.common import REPO, Context, Result, run_child
from flows.kafka import kafka_io

NAME = "quix streams"
VENV = REPO / ".venv-quix"
REQUIREMENTS = REPO / "bench" / "quix-requirements.txt"
APP = REPO / "bench" / "quix_app.py"


def ensure_venv() -> Path:
    """The peer's interpreter, with bench/quix-requirements.txt installed (once)."""
    python, stamp = VENV / "bin" / "python", VENV / ".installed"
    wanted = REQUIREMENTS.read_text()
    if python.exists() and stamp.exists() and stamp.read_text() == wanted:
        return python
    print(f"building {VENV.name} (quixstreams and its own confluent-kafka) ...", file=sys.stderr)
    subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True)
    subprocess.run([str(python), "-m", "pip", "install", "-q", "--upgrade", "pip"], check=True)
    subprocess.run([str(python), "-m", "pip", "install", "-q", "-r", str(REQUIREMENTS)], check=True)
    stamp.write_text(wanted)
    return python


def version(python: Path) -> str:
    return subprocess.run([str(python), "-c", "import quixstreams; print(quixstreams.__version__)"],
                          capture_output=True, text=True, check=True).stdout.strip()


def run(ctx: Context) -> list[Result]:
    python = ensure_venv()
    topics = list(ctx.topics.values())
    total = sum(kafka_io.end_offsets(ctx.brokers, topics).values())
    group = f"bench-quix-{uuid.uuid4().hex[:8]}"
    logs = ctx.work / group
    command = [str(python), str(APP), "--brokers", ctx.brokers, "--group", group,
               "--state-dir", str(logs / "state"), "--total", str(total), *topics]
    code, stdout, wall, peak = run_child(command, logs, timeout=3600)
    extra = {"quixstreams": version(python), "consumer_group": group, "wall_seconds": round(wall, 2),
             "peak_rss_mb": round(peak), "log": str(logs / "stderr")}
    lines = [line for line in stdout.splitlines() if line.startswith("{")]
    if not lines:
        return [Result(NAME, 0, 0.0, extra | {"failed": f"exit code {code}, no result; see the log"})]
    got = json.loads(lines[-1])
    extra |= {"keyed_records": got["keyed"], "not_json_skipped": got["not_json"],
              "seconds_to_first_record": _round(got["to_first_record"]),
              "seconds_after_last_record": _round(got["after_last_record"])}
    if code != 0 or got["records"] != total or not got["seconds"]:
        why = "stalled" if got["stalled"] else f"exit code {code}"
        return [Result(NAME, 0, 0.0, extra | {
            "failed": f"{why}: processed {got['records']:,} of {total:,} records; see the log"})]
    return [Result(NAME, got["records"], got["seconds"], extra)]


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 2)


if __name__ == "__main__":
    if sys.argv[1:] == ["--setup"]:
        print(version(ensure_venv()))
    else:
        sys.exit("usage: python -m bench.quix --setup   (the benchmark itself: python -m bench.run --only quix)")
