"""`tally run --processes N`: N Bytewax processes on this host, one per core.

Threads in one process share the GIL, so a second core needs a second process.
This starts N copies of the same command as a Bytewax cluster on local ports
(`--process-id I --addresses ...`, which is also how to run across hosts) and
waits for them. Accounts are routed to engine shards by number and each shard
lives in exactly one process, so the decisions do not depend on N.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from flows import metrics, recovery_store
from flows.run import RunSummary
from flows.services import free_port


def run_local(argv: list[str], processes: int, recovery: Path,
              metrics_address: str | None = None) -> tuple[int, RunSummary | None]:
    """Run `tally <argv>` as `processes` cluster members.

    Returns the worst exit code, and the members' summaries combined into one
    when every member finished. With a metrics address, member I serves on PORT+I.
    """
    recovery.parent.mkdir(parents=True, exist_ok=True)
    recovery_store.make_store(recovery, processes)  # once, before any member starts
    addresses = ";".join(f"127.0.0.1:{free_port()}" for _ in range(processes))
    # `docker stop` and Kubernetes send SIGTERM to the launcher: pass it on like Ctrl-C
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="tally-members-") as tmp:
        summaries = [Path(tmp) / f"{i}.json" for i in range(processes)]
        members = [subprocess.Popen([sys.executable, "-m", "flows", *argv, "--process-id", str(i),
                                     "--addresses", addresses, "--summary-to", str(summaries[i]),
                                     *_metrics_option(metrics_address, i)])
                   for i in range(processes)]
        try:
            codes = [member.wait() for member in members]
        except KeyboardInterrupt:
            for member in members:
                member.send_signal(signal.SIGTERM)  # each stops like Ctrl-C and resumes later
            codes = [member.wait() for member in members]
            return 130, None
        code = max(codes, key=lambda code: (code != 0, abs(code)))
        if code != 0 or not all(path.exists() for path in summaries):
            return code, None
        parts = [RunSummary.from_json(path.read_text()) for path in summaries]
    return 0, RunSummary.combine(parts, time.monotonic() - started)


def _metrics_option(address: str | None, member: int) -> list[str]:
    return [] if not address else ["--metrics-port", metrics.shifted(address, member)]


def without_option(argv: list[str], name: str) -> list[str]:
    """argv less `name VALUE` / `name=VALUE`."""
    out, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg == name:
            skip = True
        elif not arg.startswith(name + "="):
            out.append(arg)
    return out
