"""Decode speed alone: `Decoder.decode` over the records of a generated day, in memory.

`python -m bench.decode` needs no services. It generates a day (about 100,000 records
by default), reads its values, and times `Decoder.decode` over every one of them, best
of --repeat runs, for records in the Tally contract. Excluded: generating and reading
the day. This is the figure a change to state/contract.py must not make worse.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from flows.dev.generate import generate_day
from flows.kafka import dayfiles
from state.config import MatchConfig
from state.contract import Decoder

Values = list[tuple[str, int, list[bytes]]]  # (topic, partition, values)


def day_values(transactions: int, seed: int = 2026) -> Values:
    day = Path(tempfile.mkdtemp(prefix="tally-bench-decode-")) / "day"
    generate_day(day, transactions, seed=seed)
    parts = dayfiles.partitions(day, list(MatchConfig().topics.values()))
    return [(topic, partition, dayfiles.read_values(path)) for (topic, partition), path in parts.items()]


def best_ns_per_record(decoder: Decoder, values: Values, repeat: int) -> float:
    records = sum(len(v) for _, _, v in values)
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        for topic, partition, chunk in values:
            decode = decoder.decode
            for offset, value in enumerate(chunk):
                decode(value, topic, partition, offset)
        best = min(best, time.perf_counter() - start)
    return best / records * 1e9


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.decode", description=__doc__)
    parser.add_argument("--transactions", type=int, default=33_000,
                        help="payments in the generated day (default 33000: about 100k records)")
    parser.add_argument("--repeat", type=int, default=7, help="timed runs; the best counts")
    args = parser.parse_args(argv)
    values = day_values(args.transactions)
    records = sum(len(v) for _, _, v in values)
    contract = best_ns_per_record(Decoder(MatchConfig()), values, args.repeat)
    print(f"{records:,} records; contract: {contract:.0f} ns/record "
          f"({1e9 / contract:,.0f} records/s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
