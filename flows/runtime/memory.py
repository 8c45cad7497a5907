"""Keeping the flow's resident memory close to what it holds.

The engine keeps millions of small long-lived objects while every batch allocates and
frees short-lived ones beside them, across Bytewax's threads. glibc's malloc gives each
thread an arena of its own (up to eight per core) and keeps what is freed in them. Two
arenas, and the free pages handed back at every snapshot (between two epochs, the
quietest moment), keep the peak down (measured on a day of 1,000,000 open ledger
payments, docs/benchmarks.md). Elsewhere than glibc both are no-ops.
"""

from __future__ import annotations

import ctypes
import ctypes.util

M_ARENA_MAX = -8  # mallopt's parameter number in glibc's malloc.h
ARENAS = 2


def _libc():
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return libc if hasattr(libc, "mallopt") and hasattr(libc, "malloc_trim") else None
    except OSError:
        return None


_LIBC = _libc()


def limit_arenas() -> None:
    """Before the flow starts its threads: they then share ARENAS arenas."""
    if _LIBC is not None:
        _LIBC.mallopt(M_ARENA_MAX, ARENAS)


def give_back() -> None:
    """Hand the free pages of every arena back to the system."""
    if _LIBC is not None:
        _LIBC.malloc_trim(0)
