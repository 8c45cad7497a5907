"""A disk that fills under a run (Tally 10/14, item 6), against the real broker and PostgreSQL.

It used to end in a 190-line Rust panic and exit 134. Now it ends in one line naming
the full directory, exit 3, and a start after space is freed resumes to decisions
identical to a clean run's.

The small disk is a tmpfs mounted in a user and mount namespace of its own (no root
needed; the network is shared, so the broker and PostgreSQL stay reachable). The
tmpfs vanishes with the namespace, so its content is copied out to `saved-NS` after each
run and copied onto a new tmpfs before the next: the restart sees the same files.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from tests.flow_helpers import parquet_rows, pg_rows, publish_day, tally

PAYMENTS = 20_000  # about 5 MB in the data directory: a 3 MB disk fills midway

# Mount the tmpfs, put the saved data directory on it, run tally (in the background
# with FILL_LEAVE set, filling the disk to FILL_LEAVE MB free once the run has made
# its recovery store), then copy the data directory out, without the filler.
SCRIPT = r'''
mount -t tmpfs -o size="$SIZE" tmpfs "$MNT" || exit 90
cp -a "$SAVED/." "$MNT/" || exit 91
if [ -z "$FILL_LEAVE" ]; then
    "$PY" -m flows "$@"; rc=$?
else
    "$PY" -m flows "$@" & pid=$!
    until [ -e "$MNT/$NS/recovery/shape.json" ]; do sleep 0.1; done
    "$PY" -c 'import os, sys; s = os.statvfs(sys.argv[1]); n = s.f_bavail * s.f_frsize - int(sys.argv[2]) * 2**20
open(sys.argv[1] + "/filler", "wb").write(bytes(max(n, 0)))' "$MNT" "$FILL_LEAVE"
    wait $pid; rc=$?
fi
rm -f "$MNT/filler"
rm -rf "$SAVED" && cp -a "$MNT" "$SAVED" || exit 92
exit $rc
'''


def unshare_works() -> bool:
    try:
        return subprocess.run(["unshare", "--user", "--map-root-user", "--mount", "true"],
                              capture_output=True, timeout=30).returncode == 0
    except FileNotFoundError:
        return False


@pytest.fixture(scope="module")
def day(broker, pg_dsn):
    # Not a skip: without namespaces this behaviour would go untested unnoticed.
    assert unshare_works(), "`unshare --user --map-root-user --mount` fails here: cannot test a full disk"
    work = Path(tempfile.mkdtemp(prefix="tally-disk-"))
    topics, config = publish_day(broker, work, PAYMENTS, seed=53)
    env = {"TALLY_BROKERS": broker, "TALLY_PG_DSN": pg_dsn, "TALLY_CONFIG": str(config)}
    tally("run", "--until-end", "--namespace", "clean", "--data-dir", str(work / "clean"), env=env)
    return work, env


def on_tmpfs(work: Path, size: str, namespace: str, *args: str, env: dict,
             fill_leave_mb: int | None = None) -> subprocess.CompletedProcess:
    """`tally run --namespace NAMESPACE ARGS` with the data directory on a tmpfs of `size`."""
    mount, saved = work / "mnt", work / f"saved-{namespace}"
    mount.mkdir(exist_ok=True)
    saved.mkdir(exist_ok=True)
    script_env = env | {"SIZE": size, "MNT": str(mount), "SAVED": str(saved), "NS": namespace,
                        "PY": sys.executable, "FILL_LEAVE": str(fill_leave_mb or "")}
    full_env = {k: v for k, v in (os.environ | script_env).items() if v is not None}
    return subprocess.run(
        ["unshare", "--user", "--map-root-user", "--mount", "sh", "-c", SCRIPT, "sh",
         "run", "--namespace", namespace, "--data-dir", str(mount), *args],
        capture_output=True, text=True, timeout=300, env=full_env)


def last_line(result: subprocess.CompletedProcess) -> str:
    print(result.stderr)  # what an operator reads (-s)
    return result.stderr.strip().splitlines()[-1]


def assert_identical_to_clean(work: Path, pg_dsn: str, namespace: str) -> None:
    clean_pg, clean_files = pg_rows(pg_dsn, "clean"), parquet_rows(work / "clean" / "clean")
    assert clean_pg[0] and clean_pg == clean_files
    assert pg_rows(pg_dsn, namespace) == clean_pg
    assert parquet_rows(work / f"saved-{namespace}" / namespace) == clean_files


def test_a_disk_that_fills_midway_ends_in_one_line_and_a_restart_resumes(day, pg_dsn):
    work, env = day
    no_guard = env | {"TALLY_MIN_FREE_MB": "0"}  # let the writers meet the full disk
    full = on_tmpfs(work, "3m", "filled", "--until-end", env=no_guard)
    line = last_line(full)
    assert full.returncode == 3, full.stderr[-3000:]
    mount = work / "mnt"
    assert line.startswith(f"tally: the disk holding {mount}/filled") and " is full (" in line
    assert f"No space left on device writing {mount}/filled/" in line or "recovery store" in line
    assert "nothing is lost" in line
    assert "stack backtrace" not in full.stderr and "Traceback" not in full.stderr
    assert "flow failed" in full.stderr  # the detail, in the log
    again = on_tmpfs(work, "64m", "filled", "--until-end", env=no_guard)
    assert again.returncode == 0, again.stderr[-3000:]
    assert_identical_to_clean(work, pg_dsn, "filled")


def test_a_disk_filling_under_a_live_run_stops_it_at_the_floor(day, pg_dsn):
    """A live run (it would run forever) on a disk that another program fills: the guard stops
    it cleanly before any writer meets the full disk, naming the directory."""
    work, env = day
    guarded = env | {"TALLY_MIN_FREE_MB": "16"}
    # 10 MB left free: below the floor, and more than the whole day needs
    stopped = on_tmpfs(work, "96m", "guarded", env=guarded, fill_leave_mb=10)
    line = last_line(stopped)
    assert stopped.returncode == 3, stopped.stderr[-3000:]
    assert line.startswith(f"tally: the disk holding {work / 'mnt'}/guarded is nearly full (")
    assert "below the floor of 16 MB, TALLY_MIN_FREE_MB" in line
    assert "stack backtrace" not in stopped.stderr and "Traceback" not in stopped.stderr
    again = on_tmpfs(work, "96m", "guarded", "--until-end", env=guarded)
    assert again.returncode == 0, again.stderr[-3000:]
    assert_identical_to_clean(work, pg_dsn, "guarded")


def test_a_run_on_a_disk_below_the_floor_is_refused_at_once(day):
    work, env = day
    refused = on_tmpfs(work, "4m", "low", "--until-end", env=env | {"TALLY_MIN_FREE_MB": "8"})
    assert refused.returncode == 3, refused.stderr[-3000:]
    assert "is nearly full" in last_line(refused) and "below the floor of 8 MB" in last_line(refused)
