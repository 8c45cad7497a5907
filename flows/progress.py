"""A small progress bar on stderr, and the summary-table helper.

Only draws when stderr is a terminal, so logs and CI output stay clean.
"""

from __future__ import annotations

import sys
import time


class Progress:
    def __init__(self, total: int | None, label: str, unit: str = "events"):
        self.total, self.label, self.unit = total, label, unit
        self.done = 0
        self.started = time.monotonic()
        self._drawn = 0.0
        self.enabled = sys.stderr.isatty()

    def advance(self, count: int) -> None:
        self.done += count
        now = time.monotonic()
        if self.enabled and now - self._drawn >= 0.2:
            self._drawn = now
            self._draw(now)

    def rate(self) -> float:
        elapsed = max(time.monotonic() - self.started, 1e-9)
        return self.done / elapsed

    def _draw(self, now: float) -> None:
        rate = self.rate()
        if self.total:
            share = min(self.done / self.total, 1.0)
            bar = "#" * int(share * 30)
            eta = (self.total - self.done) / rate if rate else 0
            line = f"{self.label} [{bar:<30}] {share:6.1%} {rate:,.0f} {self.unit}/s eta {eta:4.0f}s"
        else:
            line = f"{self.label} {self.done:,} {self.unit} {rate:,.0f} {self.unit}/s"
        sys.stderr.write("\r" + line)
        sys.stderr.flush()

    def close(self) -> None:
        if self.enabled:
            self._draw(time.monotonic())
            sys.stderr.write("\n")
            sys.stderr.flush()


def table(rows: list[tuple[str, object]], title: str) -> str:
    width = max((len(k) for k, _ in rows), default=0)
    lines = [title] + [f"  {k:<{width}}  {v:>12,}" if isinstance(v, int) else f"  {k:<{width}}  {v}"
                       for k, v in rows]
    return "\n".join(lines)
