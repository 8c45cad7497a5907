"""A full disk under a run: recognised wherever it strikes, named in one line.

A write that meets a full disk fails in one of three places: a Parquet sink
(pyarrow's OSError, errno ENOSPC or EDQUOT), the Bytewax recovery store
(SQLite's "database or disk is full", as a Rust panic), or a sink closing
while Bytewax unwinds from one of these. Nothing written after the last
committed snapshot counts: the next start resumes from it, so the answer
to a full disk is always the same: free space and start again.

A guard stops the flow before that, below a floor of free space: a clean
stop, where a full disk meets writers in whatever state they are.
"""

from __future__ import annotations

import _thread
import errno
import os
import signal
import threading
from contextlib import contextmanager
from pathlib import Path

from flows import logs
from flows.logs import FlowError, UserError

FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT)
# what rusqlite's panic says when SQLite meets a full disk (SQLITE_FULL)
_SQLITE_FULL = ("DiskFull", "database or disk is full")


class DiskFull(FlowError):
    """The disk under the data or recovery directory is full: exit 3, so a supervisor can
    tell it from other stops and wait for space instead of restarting at once."""

    exit_code = 3


# Full-disk errors met by a sink's close(), which must not raise them (see note_closing)
_met_closing: list[OSError] = []


def is_full(exc: BaseException) -> bool:
    return isinstance(exc, OSError) and exc.errno in FULL_ERRNOS


def note_closing(exc: OSError) -> None:
    """Keep a full-disk error that a sink met as Bytewax closed it. Bytewax closes sink
    partitions as it drops them, also while unwinding from another error; raising there is
    a panic in a destructor, which aborts the whole process (exit 134, a page of Rust).
    What the close did not write was never snapshotted, so the next start writes it."""
    _met_closing.append(exc)


def met_closing() -> list[OSError]:
    return list(_met_closing)


def full_in(chain: list[BaseException]) -> BaseException | None:
    """The error of `chain` that says a disk is full, if any."""
    for exc in chain:
        if is_full(exc) or any(text in str(exc) for text in _SQLITE_FULL):
            return exc
    return None


@contextmanager
def named(data_root: Path, recovery: Path):
    """A full disk met within (making the recovery store, say) becomes the one line."""
    try:
        yield
    except (KeyboardInterrupt, SystemExit, UserError):
        raise
    except BaseException as exc:  # init_db_dir's SQLite fails by a Rust panic
        full = full_in([exc, exc.__cause__, exc.__context__])
        if full is None:
            raise
        logs.error("disk full", error=f"{type(exc).__name__}: {exc}")
        raise disk_full(full, data_root, recovery) from None


def disk_full(exc: BaseException, data_root: Path, recovery: Path) -> DiskFull:
    """The one line for a full disk: which directory's disk, and what failed writing what."""
    if isinstance(exc, OSError):
        where = Path(exc.filename or data_root)
        detail = os.strerror(exc.errno or errno.ENOSPC)
        detail += f" writing {exc.filename}" if exc.filename else ""
    else:  # the recovery store's SQLite names no file
        where = recovery
        detail = f"database or disk is full writing the recovery store {recovery}"
    held = recovery if where.is_relative_to(recovery) else data_root
    return DiskFull(f"the disk holding {held} is full ({detail}); free space and start again: "
                    f"nothing is lost, the next start resumes from the last snapshot")


# ----------------------------------------------------------------------------- the guard

DEFAULT_MIN_FREE_MB = 64


def min_free_bytes() -> int:
    """The floor of free space a run keeps: $TALLY_MIN_FREE_MB, default 64; 0 turns it off."""
    value = os.environ.get("TALLY_MIN_FREE_MB") or str(DEFAULT_MIN_FREE_MB)
    try:
        megabytes = float(value)
    except ValueError:
        megabytes = -1
    if not megabytes >= 0:
        raise UserError(f"TALLY_MIN_FREE_MB={value!r} is not a number of megabytes (0 or more)")
    return int(megabytes * 2**20)


def free_bytes(path: Path) -> int:
    stat = os.statvfs(path)
    return stat.f_bavail * stat.f_frsize


class Guard:
    """Stops the flow, as SIGTERM does, once a directory's disk has less free space than the
    floor, and names it. Stopping cleanly before the disk is full keeps every writer from
    meeting it: the recovery store's SQLite fails only by a Rust panic, and a panic while
    one is being handled aborts the process, which no Python code can catch."""

    def __init__(self, paths: list[Path], floor: int, every_s: float = 1.0):
        self.paths, self.floor, self.every_s = paths, floor, every_s
        self.low: tuple[Path, int] | None = None  # the directory, its free bytes
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._loop, name="tally-disk-guard", daemon=True)

    def check(self) -> tuple[Path, int] | None:
        for path in self.paths:
            free = free_bytes(path)
            if free < self.floor:
                return path, free
        return None

    def _loop(self) -> None:
        while not self.stop.wait(self.every_s):
            self.low = self.check()
            if self.low:
                _thread.interrupt_main(signal.SIGTERM)  # the flow stops at its next check
                return

    def error(self) -> DiskFull:
        path, free = self.low
        return DiskFull(f"the disk holding {path} is nearly full ({free / 2**20:.1f} MB free, "
                        f"below the floor of {self.floor / 2**20:.0f} MB, TALLY_MIN_FREE_MB); "
                        f"free space and start again: nothing is lost, the next start resumes "
                        f"from the last snapshot")

    def __enter__(self) -> "Guard":
        if self.floor > 0:
            self.low = self.check()
            if self.low:
                raise self.error()
            self.thread.start()
        return self

    def __exit__(self, *exc) -> bool:
        self.stop.set()
        return False
