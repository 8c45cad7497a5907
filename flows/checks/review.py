"""`tally review`: the human review queue of a namespace's open exceptions.

    tally review list [--kind K] [--account A] [--limit N] [--json]
    tally review resolve ID --as RESOLUTION [--by NAME] --note TEXT
    tally review reopen ID [--by NAME] --note TEXT
    tally review history ID

The SQL lives in sinks.review; this module parses, formats and prints.  An ID
may be any unique prefix of at least 8 hex characters.
"""

from __future__ import annotations

import getpass
import json
import os
from datetime import datetime, timedelta
from decimal import Decimal

from flows.logs import UserError, printable
from state import decision
from state.currency import exponent

# sinks.review.RESOLUTIONS, repeated because importing sinks.review loads psycopg,
# and `register` runs for every `tally` command (a test holds the two equal).
RESOLUTIONS = ("matched", "written-off", "duplicate", "refunded", "false-positive", "escalated")
KINDS = (decision.MISSING, decision.MISMATCH, decision.AMBIGUOUS, decision.REVIEW,
         decision.DUPLICATE, decision.LATE, decision.CLOCK_SKEW, decision.INVALID_KIND)
ID_SHOWN = 16  # hex characters of an id in tables: unique in practice, and a valid prefix
REASON_SHOWN = 48


# ----------------------------------------------------------------------------- formatting

def amount(minor: int | None, currency: str | None) -> str:
    """Minor units as major ones with the currency's exponent, exactly (Decimal, never float)."""
    if minor is None:
        return ""
    exp = exponent(currency) if currency else None
    if exp is None:
        return f"{minor:,} minor {currency or ''}".rstrip()
    return f"{Decimal(minor).scaleb(-exp):,.{exp}f} {currency}"


def age(delta: timedelta) -> str:
    """3d 04h, 5h 07m, 12m: enough to see what is old at a glance."""
    sign, delta = ("-", -delta) if delta < timedelta(0) else ("", delta)
    minutes = int(delta.total_seconds()) // 60
    days, hours, minutes = minutes // 1440, minutes // 60 % 24, minutes % 60
    text = f"{days}d {hours:02d}h" if days else f"{hours}h {minutes:02d}m" if hours else f"{minutes}m"
    return sign + text


def iso(moment: datetime | None) -> str:
    return moment.isoformat().replace("+00:00", "Z") if moment else ""


def one_line(text: str | None, width: int) -> str:
    """A person's or a record's text on one line of the table, control characters escaped."""
    text = printable(" ".join((text or "").split()))
    return text if len(text) <= width else text[:width - 3] + "..."


def aligned(header: tuple, rows: list[tuple], right: tuple[int, ...] = ()) -> list[str]:
    """Columns padded to their widest value; the `right` ones right-aligned (numbers)."""
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    return ["  ".join(str(v).rjust(w) if i in right else str(v).ljust(w)
                      for i, (v, w) in enumerate(zip(row, widths))).rstrip()
            for row in [header, *rows]]


def summary(shown: int, counts: dict[str, int]) -> str:
    total = sum(counts.values())
    kinds = ", ".join(f"{kind} {n:,}" for kind, n in counts.items())
    return f"{shown:,} of {total:,} open exceptions shown" + (f" (by kind: {kinds})" if kinds else "")


def described(row: dict) -> str:
    """What a reviewer recognises a decision by: kind, account, amount."""
    parts = [row["exception_kind"], f"account {row['account']}" if row["account"] else None,
             amount(row["amount_minor"], row["currency"]) or None]
    return ", ".join(p for p in parts if p)


# ----------------------------------------------------------------------------- command line

def register(commands) -> None:
    """Add `review` and its actions to the `tally` subcommands."""
    # Imported here: flows.cli imports this module, and is complete by the time it calls us.
    from flows.cli.options import valid_namespace
    cmd = commands.add_parser(
        "review", help="the human review queue: list, resolve, reopen, history",
        description="Open exceptions wait here for a person. Resolving one records who decided "
                    "what and why, next to the engine's decision, which it never changes; every "
                    "resolve and reopen is also kept in the namespace's review_log.")
    actions = cmd.add_subparsers(title="actions", metavar="ACTION")

    listing = actions.add_parser(
        "list", help="open exceptions, most urgent first",
        description="Open exceptions ranked oldest UTC day of window_end first, then largest "
                    "absolute amount (in major units of its currency), then window_end, then id. "
                    "Ages are measured from the newest window_end in the namespace, not the "
                    "clock, so the same data always lists the same way.")
    listing.add_argument("--kind", choices=KINDS, metavar="KIND",
                         help="only this exception kind: " + ", ".join(KINDS))
    listing.add_argument("--account", metavar="ACCOUNT", help="only this account")
    listing.add_argument("--limit", type=int, default=50, metavar="N", help="rows shown (default 50)")
    listing.add_argument("--json", action="store_true",
                         help="print one JSON document (exact amounts, full ids) instead of a table")
    listing.set_defaults(handler=run_list)

    resolving = actions.add_parser(
        "resolve", help="record a person's resolution of an open exception",
        description="Mark an open exception resolved, with who, why and when. To change a "
                    "resolution, reopen the exception first.")
    _id_argument(resolving)
    resolving.add_argument("--as", dest="resolution", required=True, choices=RESOLUTIONS,
                           metavar="RESOLUTION",
                           help="the outcome: " + ", ".join(RESOLUTIONS))
    _who_options(resolving, "why it is resolved this way")
    resolving.set_defaults(handler=run_resolve)

    reopening = actions.add_parser(
        "reopen", help="put a resolved exception back in the queue",
        description="Clear an exception's resolution so it is open again; the old resolution "
                    "stays in its history.")
    _id_argument(reopening)
    _who_options(reopening, "why it is reopened")
    reopening.set_defaults(handler=run_reopen)

    past = actions.add_parser("history", help="every resolve and reopen of a decision",
                              description="The review_log of one decision, oldest first.")
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
    from flows.cli.options import store_options
    cmd.add_argument("--namespace", type=namespace_type, default="live", metavar="NS",
                     help="the namespace reviewed (default live)")
    store_options(cmd)


def _dsn(args) -> str:
    from flows.cli.options import resolve_pg
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
    rows = review.open_exceptions(dsn, args.namespace, args.kind, args.account, args.limit)
    counts = review.open_counts(dsn, args.namespace, args.kind, args.account)
    as_of = rows[0]["window_end"] + rows[0]["age"] if rows else None
    if args.json:
        print(json.dumps({
            "namespace": args.namespace, "as_of": iso(as_of), "shown": len(rows),
            "open": sum(counts.values()), "by_kind": counts,
            "exceptions": [{**{k: r[k] for k in ("decision_id", "exception_kind", "account",
                                                  "currency", "amount_minor", "reason",
                                                  "member_event_ids")},
                            "day": r["day"].isoformat(), "window_end": iso(r["window_end"]),
                            "amount": amount(r["amount_minor"], r["currency"]),
                            "age_seconds": int(r["age"].total_seconds())} for r in rows]},
            indent=2))
        return 0
    if rows:
        print(f"namespace {args.namespace}: ages as of {iso(as_of)}, the newest window_end")
        table = [(r["decision_id"][:ID_SHOWN], r["day"].isoformat(), age(r["age"]),
                  r["exception_kind"] or "", printable(r["account"] or ""),
                  amount(r["amount_minor"], r["currency"]), one_line(r["reason"], REASON_SHOWN))
                 for r in rows]
        print("\n".join(aligned(("ID", "DAY", "AGE", "KIND", "ACCOUNT", "AMOUNT", "REASON"),
                                table, right=(2, 5))))
    print(summary(len(rows), counts))
    return 0


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
