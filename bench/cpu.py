"""Where the machine's CPU goes during a benchmark: the flow, the broker, PostgreSQL.

On the benchmark machine all three share two cores, so a latency figure can move
because a neighbour took more of them. A group is a process and its descendants
(PostgreSQL's backends are children of its postmaster), or a process alone (the
benchmark's own, whose children are all of the others), read from /proc every
`every_s` seconds and given as percent of one core.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

import psycopg

_TICKS = os.sysconf("SC_CLK_TCK")


def _stat(pid: str) -> list[str] | None:
    try:
        # the name, in parentheses, may hold spaces: split after its closing one
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def _cpu(stat: list[str]) -> float:
    return (int(stat[11]) + int(stat[12])) / _TICKS  # utime + stime


def cpu_seconds(groups: dict[str, int | None], alone: tuple[str, ...] = ()) -> dict[str, float]:
    """CPU seconds so far of each group running here: its root process and the processes
    under it, or the root alone for the groups named in `alone`. One read of /proc."""
    stats = {int(pid): s for pid in os.listdir("/proc") if pid.isdigit()
             if (s := _stat(pid)) is not None}
    children: dict[int, list[int]] = {}
    for pid, stat in stats.items():
        children.setdefault(int(stat[1]), []).append(pid)
    seconds = {}
    for name, root in groups.items():
        if root is None:
            continue
        total, todo = 0.0, [root]
        while todo:
            pid = todo.pop()
            if pid in stats:
                total += _cpu(stats[pid])
                if name not in alone:
                    todo += children.get(pid, [])
        seconds[name] = total
    return seconds


def broker_pid(bootstrap: str) -> int | None:
    """The Tansu process that listens at `bootstrap` (host:port), if it runs here."""
    port = bootstrap.rsplit(":", 1)[-1]
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"tansu" in argv[0] and any(a.endswith(b":" + port.encode()) for a in argv):
            return int(pid)
    return None


class CpuSampler(threading.Thread):
    """Percent of one core per group, each `every_s` seconds, until `stop()`."""

    def __init__(self, groups: dict[str, int | None], alone: tuple[str, ...] = (),
                 every_s: float = 10.0):
        """`groups`: name -> root pid (None: not running here, left out); the groups named
        in `alone` count their root process only."""
        super().__init__(daemon=True)
        self.groups = {name: pid for name, pid in groups.items() if pid is not None}
        self.alone = alone
        self.every_s = every_s
        self.samples: list[dict[str, int]] = []
        self._halt = threading.Event()

    def run(self) -> None:
        before = cpu_seconds(self.groups, self.alone)
        while not self._halt.wait(self.every_s):
            now = cpu_seconds(self.groups, self.alone)
            self.samples.append({name: round(100 * (now[name] - before[name]) / self.every_s)
                                 for name in self.groups})
            before = now

    def stop(self) -> None:
        self._halt.set()
        self.join(self.every_s + 5)

    def summary(self) -> dict[str, dict[str, int]]:
        """Each group's first and last sample and their mean, in percent of one core."""
        if not self.samples:
            return {}
        return {name: {"first": self.samples[0][name], "last": self.samples[-1][name],
                       "mean": round(sum(s[name] for s in self.samples) / len(self.samples))}
                for name in self.groups}


def postmaster_pid(pg_dsn: str) -> int | None:
    """PostgreSQL's postmaster: the parent of a backend of ours, read while the backend
    lives (None if PostgreSQL runs on another host)."""
    with psycopg.connect(pg_dsn) as conn:
        stat = _stat(str(conn.execute("SELECT pg_backend_pid()").fetchone()[0]))
        return None if stat is None else int(stat[1])

