"""`tally explain`: its options and handler; the explanation is flows.checks.explain."""

from __future__ import annotations

import json

from flows.checks.explain import STORES, UNKNOWN, explain_query, format_text, parse_query, to_json
from flows.cli.options import command, resolve_pg, store_options, valid_namespace


def add_explain(commands) -> None:
    """Add `explain` to the `tally` subcommands."""
    cmd = command(commands, "explain")
    cmd.add_argument("record", metavar="TOPIC:PARTITION:OFFSET|SOURCE:EVENT_ID",
                     help="a log position, or a source and event id")
    cmd.add_argument("--namespace", type=valid_namespace, default="live",
                     help="PostgreSQL schema and Parquet directory (default live)")
    cmd.add_argument("--store", choices=STORES, default="postgres",
                     help="read fates and decisions from PostgreSQL (default) or the Parquet "
                          "files under --data-dir; the raw archive is always Parquet")
    store_options(cmd)
    cmd.add_argument("--config", default=None,
                     help="the namespace's TOML config (default: the one pinned in the namespace, "
                          "else $TALLY_CONFIG or built-in)")
    cmd.add_argument("--json", action="store_true",
                     help="print JSON, with the raw values whole (base64)")
    cmd.set_defaults(handler=run_explain)


def run_explain(args) -> int:
    from flows.runtime.pinned import namespace_config
    config = namespace_config(args.config, args.data_dir / args.namespace)
    query = parse_query(args.record, config)
    dsn = resolve_pg(args) if args.store == "postgres" else None
    where, found = explain_query(query, args.namespace, args.data_dir, args.store, dsn, config)
    if args.json:
        print(json.dumps(to_json(query, args.namespace, found), indent=1))
    else:
        print(format_text(query, args.namespace, where, found))
    return 0 if any(x.status != UNKNOWN for x in found) else 1
