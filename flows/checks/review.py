"""`tally review`: the human review queue of a namespace's open exceptions.

    tally review list [--kind K] [--account A] [--relation NAME] [--limit N] [--json]
    tally review resolve ID --as RESOLUTION [--by NAME] --note TEXT
    tally review reopen ID [--by NAME] --note TEXT
    tally review history ID

The SQL lives in sinks.review; this module parses, formats and prints.  An ID
may be any unique prefix of at least 8 hex characters.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from decimal import Decimal

from flows.logs import printable
from state import decision
from state.decision import RESOLUTIONS  # noqa: F401 (the choices, beside the kinds)
from state.currency import exponent

KINDS = (decision.MISSING, decision.MISMATCH, decision.AMBIGUOUS, decision.REVIEW,
         decision.DUPLICATE, decision.LATE, decision.CLOCK_SKEW, decision.INVALID_KIND,
         decision.SETTLEMENT_MISMATCH)
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
