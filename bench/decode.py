"""Decode speed alone: `Decoder.decode` over the records of a generated day, in memory.

`python -m bench.decode` needs no services. It generates a day (about 100,000 records
by default), reads its values, and times `Decoder.decode` over every one of them, best
of --repeat runs: first as the records are, in the Tally contract (the figure a change
to state/contract.py must not make worse), then the same records rewritten in a
webhook's shape (nested, integer minor units, lower-case currency, epoch milliseconds)
and read through a mapping on every topic. Excluded: generating, reading and rewriting
the day.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from datetime import datetime, timedelta
from pathlib import Path

from flows.dev.generate import generate_day
from flows.kafka import dayfiles
from state.config import MatchConfig, from_toml
from state.contract import EPOCH, Decoder, parse_amount
from state.currency import exponent

Values = list[tuple[str, int, list[bytes]]]  # (topic, partition, values)
WEBHOOK_MAPPING = {"amount_form": "minor_units", "time_form": "epoch_milliseconds",
                   "upper_case_currency": True,
                   "paths": {"type": "/kind", "event_id": "/id", "event_time": "/at",
                             "amount": "/money/value", "currency": "/money/ccy",
                             "account": "/meta/account", "idempotency_key": "/meta/key",
                             "reference": "/meta/ref"},
                   "types": {"transaction": "transaction", "heartbeat": "heartbeat"}}


def day_values(transactions: int, seed: int = 2026) -> Values:
    work = Path(tempfile.mkdtemp(prefix="tally-bench-decode-"))
    try:
        generate_day(work / "day", transactions, seed=seed)
        parts = dayfiles.partitions(work / "day", list(MatchConfig().topics.values()))
        return [(topic, partition, dayfiles.read_values(path)) for (topic, partition), path in parts.items()]
    finally:
        shutil.rmtree(work)


def as_webhooks(values: Values) -> Values:
    """The same records in a webhook's shape, which WEBHOOK_MAPPING reads back."""
    def rewrite(value: bytes) -> bytes:
        try:
            return json.dumps(shape(json.loads(value))).encode()
        except Exception:  # the day's malformed records stay as they are: invalid either way
            return value

    def shape(record: dict) -> dict:
        at = datetime.fromisoformat(record["event_time"])
        kind = record.get("type", "transaction")
        shaped = {"kind": kind, "at": (at - EPOCH) // timedelta(milliseconds=1)}
        if kind != "heartbeat":
            currency = record["currency"]
            minor = parse_amount(record["amount"], currency, exponent(currency))
            shaped |= {"id": record["event_id"], "money": {"value": minor, "ccy": currency.lower()},
                       "meta": {"account": record["account"], "key": record.get("idempotency_key"),
                                "ref": record.get("reference")}}
        return shaped
    return [(topic, partition, [rewrite(v) for v in chunk]) for topic, partition, chunk in values]


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
    mapped_config = from_toml({"mappings": dict.fromkeys(MatchConfig().topics, WEBHOOK_MAPPING)})
    mapped = best_ns_per_record(Decoder(mapped_config), as_webhooks(values), args.repeat)
    print(f"{records:,} records; contract: {contract:.0f} ns/record ({1e9 / contract:,.0f} records/s); "
          f"mapped: {mapped:.0f} ns/record ({1e9 / mapped:,.0f} records/s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
