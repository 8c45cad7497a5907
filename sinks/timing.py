"""What a sink is given to time its writes: `timer(sink, rows)` is a context manager
around one write of `rows` rows (the flow passes its metrics; by default nothing)."""

from __future__ import annotations

from contextlib import nullcontext
from typing import Callable, ContextManager

Timer = Callable[[str, int], ContextManager]


def untimed(sink: str, rows: int) -> ContextManager:
    return nullcontext()


def never_handled(exc: OSError) -> bool:
    """The default `on_close_error`: a failed write at close is not the caller's to keep."""
    return False
