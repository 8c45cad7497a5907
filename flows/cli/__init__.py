"""The `tally` command line: the parser and the entry point (`tally = flows.cli:main`)."""

from __future__ import annotations

import argparse
import os
import sys
import time
from contextlib import contextmanager
from pathlib import Path

from flows import logs
from flows.logs import UserError

from flows.cli.options import env
from flows.cli.audit import add_audit
from flows.cli.explain import add_explain
from flows.cli.ingest import add_ingest
from flows.cli.report import add_report
from flows.cli.review import add_review
from flows.cli.verify import add_verify
from flows.cli.dev import add_demo, add_dev, add_drill, add_generate, add_match
from flows.cli.kafka import add_produce, add_topics
from flows.cli.run import add_replay, add_run


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    level = (args.log_level or env("TALLY_LOG_LEVEL") or "INFO").upper()
    if level not in LOG_LEVELS:
        print(f"tally: log level {level!r} (--log-level or TALLY_LOG_LEVEL) is not one of "
              f"{', '.join(LOG_LEVELS)}", file=sys.stderr)
        return 2
    logs.setup(level)
    if not getattr(args, "handler", None):
        parser.print_help()
        return 2
    try:
        if getattr(args, "launcher_pid", None) is not None:
            from flows.runtime.processes import follow_launcher
            follow_launcher(args.launcher_pid)
        return args.handler(args) or 0
    except UserError as err:
        print(f"tally: {logs.printable(logs.redact(str(err)))}", file=sys.stderr)
        return err.exit_code
    except KeyboardInterrupt:
        print("tally: interrupted", file=sys.stderr)
        return 130


LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tally", description="Deterministic stream reconciliation of payments.")
    parser.add_argument("--log-level", default=None, help="DEBUG, INFO (default), WARNING, ERROR")
    commands = parser.add_subparsers(title="commands", metavar="COMMAND")
    add_generate(commands)
    add_match(commands)
    add_dev(commands)
    add_topics(commands)
    add_produce(commands)
    add_ingest(commands)
    add_run(commands)
    add_replay(commands)
    add_verify(commands)
    add_audit(commands)
    add_explain(commands)
    add_report(commands)
    add_review(commands)
    add_drill(commands)
    add_demo(commands)
    return parser
