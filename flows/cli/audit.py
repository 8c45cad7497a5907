"""`tally audit`: its options and handler; the audit itself is flows.checks.audit."""

from __future__ import annotations

import json
from dataclasses import asdict

from flows.checks.audit import STORES, audit, render
from flows.cli.options import (command, env, resolve_brokers, resolve_pg, store_options,
                               valid_namespace)


def add_audit(commands) -> None:
    cmd = command(commands, "audit")
    cmd.add_argument("--namespace", type=valid_namespace, default="live",
                     help="the namespace to audit (default live)")
    cmd.add_argument("--store", choices=("both",) + STORES, default="both",
                     help="which store(s) to audit (default both, and compare them)")
    store_options(cmd)
    cmd.add_argument("--brokers", default=env("TALLY_BROKERS"),
                     help="Kafka bootstrap servers, asked only which offsets the archive lacks "
                          "hold no record (default $TALLY_BROKERS, else the 'tally dev up' broker)")
    cmd.add_argument("--json", action="store_true", help="print the report as JSON")
    cmd.set_defaults(handler=run_audit)


def run_audit(args) -> int:
    namespace = args.namespace
    stores = list(STORES) if args.store == "both" else [args.store]
    dsn = None
    if "postgres" in stores:
        from sinks.postgres import connect_check
        dsn = resolve_pg(args)
        connect_check(dsn)
    report = audit(args.data_dir / namespace, namespace, stores, dsn, lambda: resolve_brokers(args))
    if args.json:
        print(json.dumps(asdict(report) | {"conserved": report.ok}, indent=1, default=str))
    else:
        print(render(report))
    return 0 if report.ok else 1

