"""Density: the engine and the whole flow on days of one size, as accounts get crowded.

The days: min(--transactions, 100,000) payments each (20,000 with --quick), seed
2026, 3 partitions, spread over 250, 25 and 5 accounts, and one with the default
number of accounts but half the payments on one hot account (`generate_day`'s
accounts and hot_share). Each is generated into <work>/density/<day> and published
into fresh topics of its own (not timed). The fewer the accounts, the more open
events share an account's window, so the more candidates each decision weighs.

density engine, <day>: `engine alone` of bench/engine.py on that day: its values
read from disk first (not timed), then, timed, `bench.engine.ingest_day` (decode,
split, Shard.ingest in chunks of 5,000 per partition, round-robin) and the final
`Shard.flush`, so every event is decided, with the flow's GC thresholds. Then, not
timed, its decisions are scored against the day's truth.jsonl (flows.dev.truth.score):
auto_match_rate over the clean payments, and false_matches (match decisions that
span two or more payments).

density flow, <day>: `bench.flow.whole_flow` on that day's topics: `tally run
--until-end` as a subprocess into a fresh namespace; the flow's own rate.

The last result's extra holds events_per_s_worst_over_best: for the engine and for
the flow, the slowest day's events/s over the fastest day's (1.0: density costs nothing).

density flow, hot account 50%, 2 processes: the hot day's flow again with `--processes 2`;
its extra's over_one_process is its events/s over the one-process run's (docs/scaling.md,
"A hot account").
"""

from __future__ import annotations

import re
import sys
import time
from dataclasses import replace

from bench.common import PARTITIONS, SEED, Context, Result, publish
from bench.engine import flow_gc, ingest_day
from bench.flow import whole_flow
from flows.dev.generate import SOURCES, default_accounts, generate_day
from flows.dev.truth import score
from state.decision import Decision

MAX_PAYMENTS = 100_000
# (name, generate_day options): fewer and fewer accounts, then one hot account
DAYS = [
    ("250 accounts", {"accounts": 250}),
    ("25 accounts", {"accounts": 25}),
    ("5 accounts", {"accounts": 5}),
    ("hot account 50%", {"hot_share": 0.5}),
]


def run(ctx: Context) -> list[Result]:
    payments = min(ctx.transactions, MAX_PAYMENTS)
    engine, flow = [], []
    for name, options in DAYS:
        print(f"  density: generating and publishing {payments:,} payments, {name} ...", file=sys.stderr)
        day = _publish_day(ctx, name, payments, options)
        shape = _shape(payments, options)
        engine.append(_engine(day, name, shape))
        flow.append(whole_flow(day, name=f"density flow, {name}"))
        flow[-1].extra |= shape
    hot_day, one = day, flow[-1]  # the last day is the hot account's
    two = whole_flow(hot_day, "--processes", "2", name=f"density flow, {DAYS[-1][0]}, 2 processes")
    # the day's figures from the one-process run, this run's own where both have one
    two.extra = one.extra | two.extra | {"over_one_process": round(two.events_per_s / one.events_per_s, 3)}
    print(f"  density: the hot account's day on 2 processes ran {two.extra['over_one_process']}x "
          f"one process", file=sys.stderr)
    ratios = {"engine": _worst_over_best(engine), "flow": _worst_over_best(flow)}
    print(f"  density: events/s of the slowest day over the fastest: engine {ratios['engine']}, "
          f"flow {ratios['flow']}", file=sys.stderr)
    flow[-1].extra["events_per_s_worst_over_best"] = ratios
    return engine + flow + [two]


def _publish_day(ctx: Context, name: str, payments: int, options: dict) -> Context:
    """A context for one density day: generated, published into its own topics."""
    slug = re.sub(r"[^a-z0-9]+", "-", name).strip("-")
    topics = {s: f"density{time.strftime('%H%M%S')}-{slug}.{s}" for s in SOURCES}
    day = ctx.work / "density" / slug
    generate_day(day, payments, seed=SEED, partitions=PARTITIONS, topics=topics, **options)
    return publish(replace(ctx, day=day, topics=topics, config_file=day.with_suffix(".toml"),
                           transactions=payments))


def _shape(payments: int, options: dict) -> dict:
    accounts = options.get("accounts", default_accounts(payments))
    return {"accounts": accounts, "payments_per_account": round(payments / accounts),
            "hot_share": options.get("hot_share", 0.0)}


def _engine(day: Context, name: str, shape: dict) -> Result:
    """The engine alone over the whole day, flushed at the end; its decisions scored."""
    values = day.values()
    records = sum(map(len, values.values()))
    with flow_gc():
        started = time.perf_counter()
        emitted, shard, _ = ingest_day(values, day.config)
        emitted += shard.flush().decisions
        seconds = time.perf_counter() - started
    decisions = [x for x in emitted if isinstance(x, Decision)]
    scored = score(decisions, day.day)
    return Result(f"density engine, {name}", records, seconds, shape | {
        "auto_match_rate": round(scored.rate, 5), "false_matches": len(scored.false_matches),
        "decisions": len(decisions)})


def _worst_over_best(results: list[Result]) -> float:
    rates = [r.events_per_s for r in results]
    return round(min(rates) / max(rates), 3)
