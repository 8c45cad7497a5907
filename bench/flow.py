"""The whole flow: Kafka -> Bytewax -> engine -> PostgreSQL + Parquet, on the day's backlog.

`tally run --until-end` as a subprocess, into a fresh namespace, exactly as a
user runs it. Two figures: the flow's own rate (its summary: from the dataflow
starting to its end, both sinks committed) and the wall time of the whole
command (adds Python start-up, checks and schema creation). Then the same with
`--processes 2`: its rate is all records over the slowest process's time.
Beside each: the CPU the flow, the broker and PostgreSQL used meanwhile, in percent
of one core over the wall time (the flow's from rusage of its whole process tree;
the broker and PostgreSQL share the machine's two cores with it).
"""

from __future__ import annotations

import re
import resource
import sys
import uuid

from bench.common import Context, Result, run_child
from bench.cpu import broker_pid, cpu_seconds, postmaster_pid


def whole_flow(ctx: Context, *extra: str, name: str = "whole flow") -> Result:
    namespace = f"bench_{uuid.uuid4().hex[:8]}"
    command = [sys.executable, "-m", "flows", "run", "--brokers", ctx.brokers, "--pg", ctx.pg_dsn,
               "--data-dir", str(ctx.work / "data"), "--namespace", namespace, "--until-end",
               "--config", str(ctx.config_file), *extra]
    neighbours = {"broker": broker_pid(ctx.brokers), "postgres": postmaster_pid(ctx.pg_dsn)}
    before, children = cpu_seconds(neighbours), _children_cpu()
    code, stdout, wall, peak = run_child(command, ctx.work / namespace, timeout=3600)
    used = {name: s - before[name] for name, s in cpu_seconds(neighbours).items()}
    used = {"flow": _children_cpu() - children, **used}
    if code != 0:
        raise RuntimeError(f"tally run failed ({code}); see {ctx.work / namespace}/stderr")
    # one summary per process: records add up, the slowest process sets the time
    consumed = sum(int(n.replace(",", "")) for n in re.findall(r"records consumed\s+([\d,]+)", stdout))
    seconds = max(float(t) for t in re.findall(r"Tally run \(([\d.]+)s", stdout))
    return Result(name, consumed, seconds,
                  {"wall_seconds": round(wall, 2), "namespace": namespace,
                   "options": " ".join(extra) or "defaults", "peak_rss_mb": round(peak),
                   "cpu_pct_of_a_core": {name: round(100 * s / wall) for name, s in used.items()}})


def _children_cpu() -> float:
    """CPU seconds of this process's children that have ended (the flow, once it has)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run(ctx: Context) -> list[Result]:
    return [whole_flow(ctx), whole_flow(ctx, "--processes", "2", name="whole flow, 2 processes")]
