"""Generated days for tests, made once per (transactions, seed) per session."""

from __future__ import annotations

import tempfile
from functools import lru_cache
from pathlib import Path

from flows.kafka import dayfiles
from flows.dev.generate import generate_day
from state.config import MatchConfig

_ROOT = Path(tempfile.mkdtemp(prefix="tally-days-"))


@lru_cache(maxsize=None)
def day(transactions: int, seed: int, partitions: int = 3, accounts: int | None = None,
        hot_share: float = 0.0) -> Path:
    out = _ROOT / f"{transactions}-{seed}-{partitions}-{accounts}-{hot_share}"
    generate_day(out, transactions, seed, partitions=partitions, accounts=accounts, hot_share=hot_share)
    return out


@lru_cache(maxsize=None)
def day_values(transactions: int, seed: int, accounts: int | None = None,
               hot_share: float = 0.0) -> dict[tuple[str, int], list[bytes]]:
    path = day(transactions, seed, accounts=accounts, hot_share=hot_share)
    parts = dayfiles.partitions(path, list(MatchConfig().topics.values()))
    return {part: dayfiles.read_values(path) for part, path in parts.items()}
