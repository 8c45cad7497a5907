"""`make bench`: every benchmark, on one embedded broker and PostgreSQL, in one session.

Each benchmark prints events/s and its ratio to the raw ceiling measured in
the same run, and the whole run is written as JSON (one file per run, plus
latest.json) under --out. docs/benchmarks.md records the figures.
"""

from __future__ import annotations

import argparse
import importlib
import shutil
import sys
import tempfile
import time
from pathlib import Path

from bench.common import Context, Result, machine, prepare, write_json
from flows import logs
from flows.progress import table
from flows.dev.services import running_broker, running_postgres

# (module, what it measures), in the order they run; the ceiling comes first
BENCHMARKS = [
    ("ceiling", "consume only, and consume + decode"),
    ("engine", "the engine in process"),
    ("density", "engine and whole flow as accounts get dense"),
    ("flow", "the whole flow on the backlog"),
    ("quix", "the Python streaming peer: a Quix Streams app on the backlog (decode, per-key state)"),
    ("sinks", "PostgreSQL and Parquet write paths alone"),
    ("state_size", "one million open events: memory and snapshot"),
    ("settlement_state", "a day of one million open ledger payments (settlement config)"),
    ("latency", "live decision latency at a steady rate"),
    ("profile", "where the flow spends its time (py-spy)"),
]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__)
    parser.add_argument("--transactions", type=int, default=330_000,
                        help="payments in the generated day (default 330000: about 1M events)")
    parser.add_argument("--quick", action="store_true",
                        help="a 20,000-payment day: checks that the suite runs, not the figures")
    parser.add_argument("--only", default=None,
                        help="comma-separated benchmarks to run: " + ", ".join(n for n, _ in BENCHMARKS))
    parser.add_argument("--out", type=Path, default=Path(".tally/bench"),
                        help="where JSON results go (default .tally/bench)")
    args = parser.parse_args(argv)
    logs.setup("WARNING")
    chosen = _chosen(args.only)
    transactions = 20_000 if args.quick else args.transactions
    services = Path(tempfile.mkdtemp(prefix="tally-bench-"))  # PostgreSQL needs a path it can reach
    try:
        with running_broker(services / "broker") as brokers, running_postgres(services / "pg") as dsn:
            print(f"generating and publishing {transactions:,} payments ...", file=sys.stderr)
            ctx = prepare(brokers, dsn, services / "work", transactions, args.quick)
            results = _run_all(ctx, chosen)
    finally:
        shutil.rmtree(services, ignore_errors=True)  # a full run leaves gigabytes of data there
    report = {"machine": machine(), "events_in_day": ctx.events, "quick": args.quick,
              "results": [r.as_json() for r in results]}
    stamp = time.strftime("%Y%m%dT%H%M%S")
    write_json(args.out / f"bench-{stamp}.json", report)
    write_json(args.out / "latest.json", report)
    print(_table(results, ctx))
    print(f"results: {args.out / f'bench-{stamp}.json'}")
    return 0


def _chosen(only: str | None) -> list[str]:
    names = [n for n, _ in BENCHMARKS]
    if not only:
        return names
    wanted = [n.strip() for n in only.split(",")]
    unknown = [n for n in wanted if n not in names]
    if unknown:
        raise SystemExit(f"unknown benchmark(s): {', '.join(unknown)}; choose from {', '.join(names)}")
    return wanted


# a peer's result -> the Tally result whose rate is divided by it, when both ran
PEERS = {"quix streams": "whole flow"}


def _run_all(ctx: Context, chosen: list[str]) -> list[Result]:
    results: list[Result] = []
    ceiling = None
    for name in chosen:
        print(f"running {name} ...", file=sys.stderr)
        module = importlib.import_module(f"bench.{name}")
        for result in module.run(ctx):
            if ceiling is None and result.name == "raw ceiling":
                ceiling = result.events_per_s
            if ceiling:
                result.ratio_to_ceiling = round(result.events_per_s / ceiling, 3)
            print(f"  {result.name}: {result.events_per_s:,.0f} events/s", file=sys.stderr)
            results.append(result)
    for result in results:
        tally = next((r for r in results if r.name == PEERS.get(result.name)), None)
        if tally is not None and result.events_per_s:
            result.extra[f"{tally.name} / {result.name}"] = round(tally.events_per_s / result.events_per_s, 2)
    return results


def _table(results: list[Result], ctx: Context) -> str:
    rows = []
    for r in results:
        ratio = "" if r.ratio_to_ceiling is None else f"  ({r.ratio_to_ceiling:.2f} of ceiling)"
        rows.append((r.name, f"{r.events_per_s:>12,.0f} events/s{ratio}"))
        for key, value in r.extra.items():
            if isinstance(value, dict):
                rows += [(f"  {key}: {k}", v) for k, v in value.items()]
            elif not isinstance(value, list):
                rows.append((f"  {key}", value))
    return table(rows, f"Tally benchmarks ({ctx.events:,} events in the day"
                       f"{', quick: figures not meaningful' if ctx.quick else ''})")


if __name__ == "__main__":
    sys.exit(main())
