"""The whole flow: Kafka -> Bytewax -> engine -> PostgreSQL + Parquet, on the day's backlog.

`tally run --until-end` as a subprocess, into a fresh namespace, exactly as a
user runs it. Two figures: the flow's own rate (its summary: from the dataflow
starting to its end, both sinks committed) and the wall time of the whole
command (adds Python start-up, checks and schema creation).
"""

from __future__ import annotations

import re
import subprocess
import sys
import time
import uuid

from bench.common import Context, Result, peak_rss_mb


def whole_flow(ctx: Context, *extra: str, name: str = "whole flow") -> Result:
    namespace = f"bench_{uuid.uuid4().hex[:8]}"
    command = [sys.executable, "-m", "flows", "run", "--brokers", ctx.brokers, "--pg", ctx.pg_dsn,
               "--data-dir", str(ctx.work / "data"), "--namespace", namespace, "--until-end",
               "--config", str(ctx.config_file), *extra]
    started = time.monotonic()
    done = subprocess.run(command, capture_output=True, text=True)
    wall = time.monotonic() - started
    if done.returncode != 0:
        raise RuntimeError(f"tally run failed ({done.returncode}): {done.stderr[-2000:]}")
    consumed = _figure(done.stdout, r"records consumed\s+([\d,]+)")
    seconds = float(re.search(r"Tally run \(([\d.]+)s\)", done.stdout).group(1))
    return Result(name, consumed, seconds,
                  {"wall_seconds": round(wall, 2), "namespace": namespace,
                   "options": " ".join(extra) or "defaults",
                   "peak_rss_mb_children": round(peak_rss_mb(children=True))})


def _figure(text: str, pattern: str) -> int:
    return int(re.search(pattern, text).group(1).replace(",", ""))


def run(ctx: Context) -> list[Result]:
    return [whole_flow(ctx)]
