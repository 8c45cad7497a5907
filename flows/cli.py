"""The `tally` command line."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from flows import logs
from flows.logs import UserError


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logs.setup(args.log_level)
    if not getattr(args, "handler", None):
        parser.print_help()
        return 2
    try:
        return args.handler(args) or 0
    except UserError as err:
        print(f"tally: {logs.redact(str(err))}", file=sys.stderr)
        return err.exit_code
    except KeyboardInterrupt:
        print("tally: interrupted", file=sys.stderr)
        return 130


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tally", description="Deterministic stream reconciliation of payments.")
    parser.add_argument("--log-level", default=None, help="DEBUG, INFO (default), WARNING, ERROR")
    commands = parser.add_subparsers(title="commands", metavar="COMMAND")
    _generate(commands)
    _match(commands)
    return parser


def _generate(commands) -> None:
    cmd = commands.add_parser("generate", help="write a synthetic day with ground truth",
                              description="Write a synthetic day on disk (DIR/<topic>/<partition>.jsonl) "
                                          "plus DIR/truth.jsonl. Same seed, same bytes.")
    cmd.add_argument("--transactions", type=int, default=20_000, help="real-world payments (default 20000)")
    cmd.add_argument("--seed", type=int, default=1, help="random seed (default 1)")
    cmd.add_argument("--partitions", type=int, default=3, help="partitions per topic (default 3)")
    cmd.add_argument("--out", type=Path, required=True, help="directory to write")
    cmd.set_defaults(handler=run_generate)


def run_generate(args) -> int:
    from flows.generate import generate_day
    if args.transactions < 1 or args.partitions < 1:
        raise UserError("--transactions and --partitions must be at least 1")
    started = time.monotonic()
    summary = generate_day(args.out, args.transactions, args.seed, partitions=args.partitions)
    print(summary)
    print(f"wrote {args.out} in {time.monotonic() - started:.1f}s")
    return 0


def _match(commands) -> None:
    cmd = commands.add_parser("match", help="run the engine in-process over a day on disk",
                              description="Run the matching engine over DIR/<topic>/<partition>.jsonl "
                                          "and write decisions and fates as Parquet under OUT.")
    cmd.add_argument("dir", type=Path, help="a day on disk")
    cmd.add_argument("--out", type=Path, required=True, help="output directory (decisions/, fates/)")
    cmd.add_argument("--config", default=None, help="TOML config file (default: $TALLY_CONFIG or built-in)")
    cmd.add_argument("--flush", action="store_true",
                     help="treat the end of input as the end of time: decide everything still pending")
    cmd.set_defaults(handler=run_match)


def run_match(args) -> int:
    from flows.dayfiles import DayError
    from flows.match import run_engine, write_result
    from flows.settings import load_config
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


if __name__ == "__main__":
    sys.exit(main())
