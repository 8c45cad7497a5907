"""Where the whole flow spends its time: py-spy samples of `tally run`, by dataflow step.

py-spy (a sampling profiler, from the `bench` extra) records the Python stacks
of the flow subprocess; each sample is put in the step whose code it is in.
"Bytewax runtime" is time in the Rust runtime with no Python step on the stack.
The flow runs state/'s sources (TALLY_PURE_PYTHON=1): the compiled modules have no
Python frames for py-spy to see, so their time would land in the steps that call them.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
import uuid
from collections import Counter
from pathlib import Path

from bench.common import Context, Result

# (step, a frame that only that step's stacks contain), first match wins
STEPS = [("source poll", "next_batch (flows/runtime/source.py"),
         ("decode and split", "split_batch (flows/runtime/dataflow.py"),
         ("engine", "(state/engine.py"),
         ("Arrow columns for both sinks", "_columns (flows/runtime/dataflow.py"),
         ("PostgreSQL sink", "(sinks/pg_sink.py"),
         ("Parquet decisions sink", "_DecisionPartition"),
         ("raw archive sink", "_ArchivePartition"),
         ("Parquet file writing", "(sinks/parquet_sink.py"),
         ("Bytewax runtime", "run (flows/runtime/run.py")]
RATE_HZ = 200
# A helper thread asleep in a timed wait (the disk guard, the runner lock's keeper): py-spy
# samples it as running, and counted, these were a quarter of all samples ("start-up").
WAITING = ("Condition.wait (threading.py", "Event.wait (threading.py")


def shares(raw_stacks: Path) -> dict[str, float]:
    """Share of samples per step, from py-spy's raw (collapsed) output, leaving out
    threads that were only waiting."""
    counts, total = Counter(), 0
    for line in raw_stacks.read_text().splitlines():
        stack, _, number = line.rpartition(" ")
        if stack.rsplit(";", 1)[-1].startswith(WAITING):
            continue
        samples = int(number)
        total += samples
        step = next((name for name, needle in STEPS if needle in stack), "other (start-up, imports)")
        counts[step] += samples
    return {step: round(count / total, 3) for step, count in counts.most_common()}


def run(ctx: Context) -> list[Result]:
    spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not Path(spy).exists():
        return [Result("profile (py-spy missing: pip install -e '.[bench]')", 0, 0.0)]
    out = ctx.work / "profile.txt"
    command = [spy, "record", "-r", str(RATE_HZ), "--format", "raw", "-o", str(out), "--",
               sys.executable, "-m", "flows", "run", "--brokers", ctx.brokers, "--pg", ctx.pg_dsn,
               "--data-dir", str(ctx.work / "data"), "--namespace", f"bench_{uuid.uuid4().hex[:8]}",
               "--until-end", "--config", str(ctx.config_file)]
    started = time.monotonic()
    subprocess.run(command, check=True, capture_output=True,
                   env=os.environ | {"TALLY_PURE_PYTHON": "1"})
    return [Result("profiled flow", ctx.events, time.monotonic() - started,
                   {"sampling_hz": RATE_HZ, "share_by_step": shares(out),
                    "note": "sampling slows the flow; use the shares, not this rate"})]
