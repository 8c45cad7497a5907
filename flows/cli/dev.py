"""`tally dev`, `generate`, `match`, `drill` and `demo`: the developer's commands."""

from __future__ import annotations

import argparse
import os
import sys
import time
from contextlib import contextmanager
from pathlib import Path

from flows import logs
from flows.logs import UserError

from flows.cli.options import command, data_dir_option, resolve_brokers, resolve_pg, service_options


def add_dev(commands) -> None:
    cmd = command(commands, "dev")
    sub = cmd.add_subparsers(title="actions", metavar="ACTION")
    for name, handler, text in [("up", run_dev_up, "start both (idempotent)"),
                                ("down", run_dev_down, "stop both"),
                                ("status", run_dev_status, "print the bootstrap address and DSN")]:
        action = sub.add_parser(name, help=text, description=text)
        data_dir_option(action)
        action.set_defaults(handler=handler)
    cmd.set_defaults(handler=lambda args: cmd.print_help() or 2)


def run_dev_up(args) -> int:
    from flows.dev.services import ServiceError, dev_up_report
    try:
        dev, started = dev_up_report(args.data_dir)
    except ServiceError as err:
        raise UserError(str(err)) from None
    kept = [name for name in ("broker", "postgres") if name not in started]
    print(f"dev services running under {args.data_dir}/dev "
          f"(started: {', '.join(started) or 'none'}; already running, kept: {', '.join(kept) or 'none'})")
    print(f"  brokers  {dev.brokers}")
    print(f"  pg       {logs.redact(dev.pg_dsn)}")
    return 0


def run_dev_down(args) -> int:
    from flows.dev.services import dev_down
    print("stopped" if dev_down(args.data_dir) else "nothing was running")
    return 0


def run_dev_status(args) -> int:
    from flows.dev.services import dev_status
    dev = dev_status(args.data_dir)
    if dev is None:
        print(f"not running (start with: tally dev up --data-dir {args.data_dir})")
        return 1
    print(f"brokers  {dev.brokers}")
    print(f"pg       {logs.redact(dev.pg_dsn)}")
    return 0


def add_drill(commands) -> None:
    cmd = command(commands, "drill")
    service_options(cmd, pg=True)
    cmd.add_argument("--kills", type=int, default=5, help="SIGKILLs to inflict (default 5)")
    cmd.add_argument("--transactions", type=int, default=20_000,
                     help="payments in the generated day (default 20000)")
    cmd.add_argument("--seed", type=int, default=1, help="seed for the day and the kill schedule")
    cmd.add_argument("--existing-topics", action="store_true",
                     help="drill on the configured topics as they are, instead of generating a day "
                          "into fresh tally-drill-* topics (stop producers first)")
    cmd.set_defaults(handler=run_drill)


def run_drill(args) -> int:
    from flows.dev.drill import DrillOptions, drill
    from flows.runtime.settings import load_config
    if args.kills < 1 or args.transactions < 1:
        raise UserError("--kills and --transactions must be at least 1")
    config = load_config(args.config)
    root = args.data_dir / "drill"
    with _services_or_embedded(args, root) as (brokers, dsn):
        verdict = drill(DrillOptions(brokers=brokers, pg_dsn=dsn, root=root, kills=args.kills,
                                     transactions=args.transactions, seed=args.seed, config=config,
                                     existing_topics=args.existing_topics))
    print(verdict)
    return 0 if verdict.identical and verdict.complete else 1


@contextmanager
def _services_or_embedded(args, root: Path):
    """The services given (or 'tally dev up' ones); else embedded ones for this command only."""
    from flows.kafka import kafka_io
    from flows.dev.services import ServiceError, dev_down, dev_status, dev_up
    from sinks.postgres import connect_check
    if args.brokers or args.pg or dev_status(args.data_dir):
        brokers, dsn = resolve_brokers(args), resolve_pg(args)
        kafka_io.check_broker(brokers)
        connect_check(dsn)
        yield brokers, dsn
        return
    print(f"starting an embedded broker and PostgreSQL under {root}/services")
    try:
        services = dev_up(root / "services")
    except ServiceError as err:
        raise UserError(str(err)) from None
    try:
        yield services.brokers, services.pg_dsn
    finally:
        dev_down(root / "services")


def add_demo(commands) -> None:
    cmd = command(commands, "demo")
    data_dir_option(cmd)
    cmd.add_argument("--transactions", type=int, default=20_000, help="payments to generate (default 20000)")
    cmd.add_argument("--seed", type=int, default=1, help="random seed (default 1)")
    cmd.add_argument("--keep-running", action="store_true", help="leave the services running afterwards")
    cmd.add_argument("--scenario", choices=("payments", "settlement"), default="payments",
                     help="payments: a day of bank, processor and ledger records (default); "
                          "settlement: ledger payments, acquirer batches paid out net of fees and "
                          "the bank's credits, with docs/examples/settlement.toml")
    cmd.set_defaults(handler=run_demo)


def run_demo(args) -> int:
    from flows.dev.demo import demo
    return demo(args.data_dir, args.transactions, args.seed, args.keep_running, args.scenario)


def add_generate(commands) -> None:
    from flows.dev.generate import P_DUPLICATE  # stdlib and msgspec only: cheap at start-up
    cmd = command(commands, "generate")
    cmd.add_argument("--scenario", choices=("payments", "settlement"), default="payments",
                     help="payments: one day of bank, processor and ledger records of each payment "
                          "(default); settlement: days of ledger payments, acquirer batches and "
                          "payouts, and the bank credits paying them (docs/examples/settlement.toml)")
    cmd.add_argument("--transactions", type=int, default=20_000, help="real-world payments (default 20000)")
    cmd.add_argument("--seed", type=int, default=1, help="random seed (default 1)")
    cmd.add_argument("--partitions", type=int, default=3, help="partitions per topic (default 3)")
    cmd.add_argument("--out", type=Path, required=True, help="directory to write")
    density = cmd.add_argument_group("density", "the same number of payments, spread over fewer or busier "
                                               "accounts, reported twice more or less often")
    density.add_argument("--accounts", type=int, default=None, metavar="N",
                         help="accounts carrying the payments (default max(50, transactions / 20))")
    density.add_argument("--hot-share", type=float, default=0.0, metavar="F",
                         help="share of payments on one hot account, ACC00000, from 0 to below 1 "
                              "(default 0)")
    density.add_argument("--reported-twice", type=float, default=P_DUPLICATE, metavar="F",
                         help="probability that the processor reports a keyed payment a second time "
                              f"under a new event id, from 0 to 1 (default {P_DUPLICATE})")
    cmd.add_argument("--no-heartbeats", dest="heartbeats", action="store_false",
                     help="write transactions only, as real producers do (a live run writes its "
                          "own heartbeats; a bounded one needs --flush to close the day)")
    settlement = cmd.add_argument_group("settlement", "--scenario settlement only (--hot-share, "
                                        "--reported-twice and --no-heartbeats are for payments only)")
    settlement.add_argument("--days", type=int, default=None, metavar="N",
                            help="days of payments (default 2; the bank books the last payouts up "
                                 "to 3 days later)")
    cmd.set_defaults(handler=run_generate)


def run_generate(args) -> int:
    if args.transactions < 1 or args.partitions < 1:
        raise UserError("--transactions and --partitions must be at least 1")
    if args.accounts is not None and args.accounts < 1:
        raise UserError("--accounts must be at least 1")
    started = time.monotonic()
    if args.scenario == "settlement":
        summary = _generate_settlement(args)
    else:
        summary = _generate_payments(args)
    print(summary)
    print(f"wrote {args.out} in {time.monotonic() - started:.1f}s")
    return 0


def _generate_payments(args):
    from flows.dev.generate import generate_day
    if args.days is not None:
        raise UserError("--days is for --scenario settlement only")
    if not 0 <= args.hot_share < 1:
        raise UserError("--hot-share must be from 0 to below 1")
    if not 0 <= args.reported_twice <= 1:
        raise UserError("--reported-twice must be from 0 to 1")
    return generate_day(args.out, args.transactions, args.seed, partitions=args.partitions,
                        accounts=args.accounts, hot_share=args.hot_share,
                        reported_twice=args.reported_twice, heartbeats=args.heartbeats)


def _generate_settlement(args):
    from flows.dev.generate import P_DUPLICATE
    from flows.dev.settlement_day import generate_settlement
    # the payments scenario's options that have no meaning here: refuse rather than ignore them
    for given, option in ((args.hot_share != 0.0, "--hot-share"),
                          (args.reported_twice != P_DUPLICATE, "--reported-twice"),
                          (not args.heartbeats, "--no-heartbeats")):
        if given:
            raise UserError(f"{option} is for --scenario payments only")
    days = 2 if args.days is None else args.days
    if days < 1:
        raise UserError("--days must be at least 1")
    return generate_settlement(args.out, args.transactions, args.seed, partitions=args.partitions,
                               days=days, accounts=args.accounts)


def add_match(commands) -> None:
    cmd = command(commands, "match")
    cmd.add_argument("dir", type=Path, help="a day on disk")
    cmd.add_argument("--out", type=Path, required=True, help="output directory (decisions/, fates/)")
    cmd.add_argument("--config", default=None, help="TOML config file (default: $TALLY_CONFIG or built-in)")
    cmd.add_argument("--flush", action="store_true",
                     help="treat the end of input as the end of time: decide everything still pending")
    cmd.set_defaults(handler=run_match)


def run_match(args) -> int:
    from flows.kafka.dayfiles import DayError
    from flows.dev.match import run_engine, write_result
    from flows.runtime.settings import load_config
    config = load_config(args.config)
    started = time.monotonic()
    try:
        result = run_engine(args.dir, config, flush=args.flush)
    except DayError as err:
        raise UserError(str(err)) from None
    write_result(result, args.out)
    elapsed = time.monotonic() - started
    print(result.summary())
    print(f"{result.records:,} records in {elapsed:.1f}s ({result.records / max(elapsed, 1e-9):,.0f}/s); "
          f"Parquet under {args.out}/decisions and {args.out}/fates")
    return 0
