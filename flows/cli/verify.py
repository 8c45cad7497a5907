"""`tally verify` and `tally digest`: their options and handlers; the comparison is flows.checks.verify."""

from __future__ import annotations

from flows.checks.verify import STORES, Source, digest_lines, iso, timestamp, verify
from flows.cli.options import command, resolve_pg, store_options, valid_namespace
from flows.logs import UserError


def add_verify(commands) -> None:
    """Add `verify` and `digest` to the `tally` subcommands."""
    verify_cmd = command(commands, "verify")
    for side in ("a", "b"):
        verify_cmd.add_argument(f"--{side}", type=valid_namespace, required=True, metavar="NS",
                                help=f"namespace {side.upper()}")
    verify_cmd.add_argument("--limit", type=int, default=20,
                            help="diverging decisions listed per group (default 20)")
    verify_cmd.set_defaults(handler=run_verify)
    digest_cmd = command(commands, "digest")
    digest_cmd.add_argument("--namespace", type=valid_namespace, required=True, metavar="NS",
                            help="PostgreSQL schema and Parquet directory")
    digest_cmd.set_defaults(handler=run_digest)
    for cmd in (verify_cmd, digest_cmd):
        _read_options(cmd)


def _read_options(cmd) -> None:
    cmd.add_argument("--store", choices=STORES, default="postgres",
                     help="read PostgreSQL (default) or the Parquet files under --data-dir")
    cmd.add_argument("--from", dest="since", type=timestamp, default=None, metavar="TIME",
                     help="first window_end compared, RFC 3339 with an offset (default: open)")
    cmd.add_argument("--to", dest="until", type=timestamp, default=None, metavar="TIME",
                     help="window_end compared up to, excluded (default: open)")
    store_options(cmd)


def source_of(args) -> Source:
    if args.since is not None and args.until is not None and args.since >= args.until:
        raise UserError(f"--from {iso(args.since)} is not before --to {iso(args.until)}")
    dsn = resolve_pg(args) if args.store == "postgres" else None
    return Source(args.store, args.data_dir, dsn, args.since, args.until)


def run_verify(args) -> int:
    if args.limit < 0:
        raise UserError("--limit must be 0 or more")
    result = verify(source_of(args), args.a, args.b)
    print(result.report(args.limit))
    return 0 if result.identical else 1


def run_digest(args) -> int:
    source = source_of(args)
    ns = source.read(args.namespace)
    print(f"{ns.name} in {source.where()}: {len(ns.decisions):,} decisions, "
          f"{len(ns.fates):,} fates")
    print("\n".join(digest_lines(ns)))
    return 0
