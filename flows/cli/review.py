"""`tally review` and its actions: their options and handlers; the queue is sinks.review."""

from __future__ import annotations

import getpass
import json
import os

from flows.checks.review import (ID_SHOWN, KINDS, REASON_SHOWN, age, aligned, amount, described,
                                 iso, one_line, summary)
from flows.cli.options import command, resolve_pg, store_options, valid_namespace
from flows.logs import UserError, printable
from state.decision import RESOLUTIONS


def add_review(commands) -> None:
    """Add `review` and its actions to the `tally` subcommands."""
    cmd = command(commands, "review")
    actions = cmd.add_subparsers(title="actions", metavar="ACTION")

    listing = command(actions, "list", "review list")
    listing.add_argument("--kind", choices=KINDS, metavar="KIND",
                         help="only this exception kind: " + ", ".join(KINDS))
    listing.add_argument("--account", metavar="ACCOUNT", help="only this account")
    listing.add_argument("--relation", metavar="NAME",
                         help="only exceptions of this relation of the config (its [relations.NAME])")
    listing.add_argument("--limit", type=int, default=50, metavar="N", help="rows shown (default 50)")
    listing.add_argument("--json", action="store_true",
                         help="print one JSON document (exact amounts, full ids) instead of a table")
    listing.set_defaults(handler=run_list)

    resolving = command(actions, "resolve", "review resolve")
    _id_argument(resolving)
    resolving.add_argument("--as", dest="resolution", required=True, choices=RESOLUTIONS,
                           metavar="RESOLUTION",
                           help="the outcome: " + ", ".join(RESOLUTIONS))
    _who_options(resolving, "why it is resolved this way")
    resolving.set_defaults(handler=run_resolve)

    reopening = command(actions, "reopen", "review reopen")
    _id_argument(reopening)
    _who_options(reopening, "why it is reopened")
    reopening.set_defaults(handler=run_reopen)

    past = command(actions, "history", "review history")
    _id_argument(past)
    past.set_defaults(handler=run_history)

    for action in (listing, resolving, reopening, past):
        _common_options(action, valid_namespace)
    cmd.set_defaults(handler=lambda args: cmd.print_help() or 2)


def _id_argument(cmd) -> None:
    cmd.add_argument("decision_id", metavar="DECISION_ID",
                     help="a decision id, or a unique prefix of at least 8 hex characters")


def _who_options(cmd, why: str) -> None:
    cmd.add_argument("--by", default=None, metavar="NAME",
                     help="who is deciding (default $TALLY_REVIEWER, else the OS user)")
    cmd.add_argument("--note", required=True, metavar="TEXT", help=why)


def _common_options(cmd, namespace_type) -> None:
    cmd.add_argument("--namespace", type=namespace_type, default="live", metavar="NS",
                     help="the namespace reviewed (default live)")
    store_options(cmd)


def _dsn(args) -> str:
    return resolve_pg(args)


def _reviewer(args) -> str:
    if args.by:
        return args.by
    if os.environ.get("TALLY_REVIEWER"):
        return os.environ["TALLY_REVIEWER"]
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no login name and no passwd entry (some containers)
        raise UserError("cannot tell who you are: pass --by NAME or set TALLY_REVIEWER") from None


def run_list(args) -> int:
    from sinks import review
    if args.limit < 0:
        raise UserError("--limit must be 0 or more")
    dsn = _dsn(args)
    rows = review.open_exceptions(dsn, args.namespace, args.kind, args.account, args.limit,
                                  relation=args.relation)
    counts = review.open_counts(dsn, args.namespace, args.kind, args.account, args.relation)
    as_of = rows[0]["window_end"] + rows[0]["age"] if rows else None
    if args.json:
        print(json.dumps({
            "namespace": args.namespace, "as_of": iso(as_of), "shown": len(rows),
            "open": sum(counts.values()), "by_kind": counts,
            "exceptions": [{**{k: r[k] for k in ("decision_id", "exception_kind", "relation",
                                                  "account", "currency", "amount_minor", "reason",
                                                  "member_event_ids")},
                            "day": r["day"].isoformat(), "window_end": iso(r["window_end"]),
                            "amount": amount(r["amount_minor"], r["currency"]),
                            "age_seconds": int(r["age"].total_seconds())} for r in rows]},
            indent=2))
        return 0
    if rows:
        print(f"namespace {args.namespace}: ages as of {iso(as_of)}, the newest window_end")
        print("\n".join(listing_table(rows)))
    print(summary(len(rows), counts))
    return 0


def listing_table(rows: list[dict]) -> list[str]:
    """The listing's lines; a RELATION column only when a listed exception has one (a config
    without relations lists as before)."""
    header = ["ID", "DAY", "AGE", "KIND", "ACCOUNT", "AMOUNT", "REASON"]
    table = [[r["decision_id"][:ID_SHOWN], r["day"].isoformat(), age(r["age"]),
              r["exception_kind"] or "", printable(r["account"] or ""),
              amount(r["amount_minor"], r["currency"]), one_line(r["reason"], REASON_SHOWN)]
             for r in rows]
    if any(r["relation"] is not None for r in rows):
        header.insert(4, "RELATION")
        for line, r in zip(table, rows):
            line.insert(4, printable(r["relation"] or "-"))
        return aligned(tuple(header), [tuple(line) for line in table], right=(2, 6))
    return aligned(tuple(header), [tuple(line) for line in table], right=(2, 5))


def run_resolve(args) -> int:
    from sinks import review
    row = review.resolve(_dsn(args), args.namespace, args.decision_id, args.resolution,
                         _reviewer(args), args.note)
    print(f"resolved {row['decision_id']} ({printable(described(row))}) as {row['resolution']} "
          f"by {printable(row['resolved_by'])} at {iso(row['resolved_at'])}")
    return 0


def run_reopen(args) -> int:
    from sinks import review
    row = review.reopen(_dsn(args), args.namespace, args.decision_id, _reviewer(args), args.note)
    print(f"reopened {row['decision_id']} ({printable(described(row))}): open again")
    return 0


def run_history(args) -> int:
    from sinks import review
    entries = review.history(_dsn(args), args.namespace, args.decision_id)
    if not entries:
        print(f"no review history for {args.decision_id} in namespace {args.namespace}")
        return 0
    print(f"review history of {entries[0]['decision_id']}")
    print("\n".join(aligned(("AT", "ACTION", "RESOLUTION", "BY", "NOTE"),
                            [(iso(e["at"]), e["action"], e["resolution"] or "",
                              one_line(e["by"], 40), one_line(e["note"], 80)) for e in entries])))
    return 0
