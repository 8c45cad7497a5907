"""`tally demo`: the whole story on the embedded broker and PostgreSQL, with a report.

It uses its own services under <data-dir>/demo, so it never disturbs a user's
`tally dev up` environment, and starts from a clean slate every time.
"""

from __future__ import annotations

import shutil
import sys
import time
from pathlib import Path

from flows import logs

from flows.kafka import kafka_io
from flows.dev.generate import generate_day
from flows.dev.settlement_day import generate_settlement
from flows.logs import UserError
from flows.runtime.run import RunOptions, run
from flows.dev.services import ServiceError, dev_down, dev_up
from state.config import MatchConfig, from_toml

NAMESPACE = "demo"


# the reference settlement scenario's config, shipped with the docs (docs/settlement.md)
SETTLEMENT_CONFIG = Path(__file__).resolve().parents[2] / "docs" / "examples" / "settlement.toml"


def demo(data_dir: Path, transactions: int, seed: int, keep_running: bool,
         scenario: str = "payments") -> int:
    root = data_dir / "demo"
    dev_down(root)
    shutil.rmtree(root, ignore_errors=True)
    try:
        services = dev_up(root)
    except ServiceError as err:
        raise UserError(str(err)) from None
    try:
        return _story(root, services, transactions, seed, scenario)
    finally:
        if keep_running:
            print(f"services left running; stop them with: tally dev down --data-dir {root}")
        else:
            dev_down(root)
            print("services stopped (the Parquet files stay; --keep-running keeps PostgreSQL up)")


def _story(root: Path, services, transactions: int, seed: int, scenario: str) -> int:
    day = root / "day"
    step("generating", f"{transactions:,} payments (seed {seed}), scenario {scenario}")
    if scenario == "settlement":
        config = _settlement_config()
        summary = generate_settlement(day, transactions, seed)
    else:
        config = MatchConfig()
        # as producers publish: transactions only; the flow's --flush closes the day at its end
        summary = generate_day(day, transactions, seed, heartbeats=False)
    print(f"  {summary}".replace("\n", "\n  "))
    step("publishing", f"to the embedded broker at {services.brokers}")
    topics = list(config.topics.values())
    kafka_io.create_topics(services.brokers, topics, 3)
    started = time.monotonic()
    counts = kafka_io.produce_day(services.brokers, day, topics)
    print(f"  {sum(counts.values()):,} records in {time.monotonic() - started:.1f}s")
    step("running", "the flow until caught up, then the day closed (Kafka -> Bytewax -> "
                    "PostgreSQL + Parquet)")
    options = RunOptions(brokers=services.brokers, pg_dsn=services.pg_dsn, data_dir=root,
                         namespace=NAMESPACE, until_end=True, flush=True)
    summary = run(options, config)
    print(summary)
    step("reporting", "the audit verdict, charts and oldest exceptions as one HTML page")
    from flows.checks.report import write_report
    page = root / "report.html"
    try:
        write_report(NAMESPACE, page, root, "postgres", services.pg_dsn,
                     relations=config.relations)
    except UserError as err:  # said as `tally report` says it; the demo goes on
        print(f"tally: {logs.printable(logs.redact(str(err)))}", file=sys.stderr)
    parquet_root = root / NAMESPACE
    print(f"""
Where to look
  PostgreSQL   {logs.redact(services.pg_dsn)}  (schema "{NAMESPACE}"; password in {root}/dev/pg_password)
               SELECT exception_kind, count(*) FROM {NAMESPACE}.decisions GROUP BY 1;
  Report       {page} (open it in a browser)
  Parquet      {parquet_root}/decisions, {parquet_root}/fates, {parquet_root}/events
               python -c "import pyarrow.dataset as ds; print(ds.dataset('{parquet_root}/decisions', partitioning='hive').to_table().group_by('kind').aggregate([('decision_id', 'count')]))"
""")
    return 0


def _settlement_config() -> MatchConfig:
    import tomllib
    try:
        return from_toml(tomllib.loads(SETTLEMENT_CONFIG.read_text()))
    except OSError as err:
        raise UserError(f"cannot read the settlement scenario's config {SETTLEMENT_CONFIG} "
                        f"({err.strerror}); the demo runs from a clone of the repository") from None


def step(name: str, text: str) -> None:
    print(f"\n== {name}: {text}")
