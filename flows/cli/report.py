"""`tally report`: its options and handler; the page itself is flows.checks.report."""

from __future__ import annotations

from pathlib import Path

from flows.checks.report import OPEN_SHOWN, STORES, TOP_ACCOUNTS, write_report
from flows.cli.options import command, resolve_pg, store_options, valid_namespace
from flows.logs import UserError


def add_report(commands) -> None:
    cmd = command(commands, "report")
    cmd.add_argument("--namespace", type=valid_namespace, default="live",
                     help="the namespace to report on (default live)")
    cmd.add_argument("--out", type=Path, required=True, metavar="FILE",
                     help="the HTML file to write")
    cmd.add_argument("--store", choices=STORES, default="postgres",
                     help="read decisions from PostgreSQL (default) or the Parquet files under "
                          "--data-dir; the audit covers the store read, and Parquet too when "
                          "a PostgreSQL namespace has it on disk")
    store_options(cmd)
    cmd.add_argument("--top-accounts", type=int, default=TOP_ACCOUNTS, metavar="N",
                     help=f"accounts shown, the busiest first (default {TOP_ACCOUNTS})")
    cmd.add_argument("--limit", type=int, default=OPEN_SHOWN, metavar="N",
                     help=f"oldest open exceptions shown (default {OPEN_SHOWN})")
    cmd.add_argument("--config", default=None,
                     help="the namespace's TOML config (default: the one pinned in the namespace, else $TALLY_CONFIG or built-in); "
                          "its relations add the settlement figures")
    cmd.add_argument("--no-audit", action="store_true",
                     help="skip the audit (it reads every fate: a few GB for tens of millions)")
    cmd.set_defaults(handler=run_report)


def run_report(args) -> int:
    if args.top_accounts < 1 or args.limit < 0:
        raise UserError("--top-accounts must be at least 1 and --limit at least 0")
    from flows.runtime.pinned import namespace_config
    # none: the report is as before relations
    relations = namespace_config(args.config, args.data_dir / args.namespace).relations
    dsn = None
    if args.store == "postgres":
        dsn = resolve_pg(args)
    return write_report(args.namespace, args.out, args.data_dir, args.store, dsn, args.top_accounts,
                        args.limit, args.no_audit, relations)


