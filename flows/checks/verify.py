"""`tally verify` and `tally digest`: is what two namespaces decided the same?

Both commands work on canonical rows (`sinks.compare`), so PostgreSQL and
Parquet give equal digests for equal content. Decisions of two namespaces are
paired by their member set, not by id: a decision's id hashes its kind, so two
runs that decided the same records differently have different ids for them, and
pairing by id would report one changed decision as one missing plus one extra.
A member set is a set of log positions, and a record belongs to one decision
only, so within a namespace it names at most one decision.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from flows.logs import UserError, redact
from flows.progress import table
# sinks.stores imports pyarrow and psycopg only where used: `register` runs for every
# `tally` command and should stay cheap. sinks.compare loads msgspec only.
from sinks.stores import (DECISION_END, DECISION_FIELDS, FATE_END, FATE_FIELDS, PENDING_DAY,
                          in_range, moment, open_store)
from state.contract import EPOCH, ONE_US

MEMBERS = DECISION_FIELDS.index("member_refs")
KIND = DECISION_FIELDS.index("kind")
STORES = ("postgres", "parquet")

__all__ = ["DECISION_FIELDS", "FATE_FIELDS", "in_range"]


# ----------------------------------------------------------------------------- times and days

def timestamp(text: str) -> int:
    """UTC microseconds of an RFC 3339 timestamp. The offset is required so that no
    local clock setting decides which decisions are compared."""
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        when = None
    if when is None or when.tzinfo is None:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not an RFC 3339 timestamp with an offset, e.g. 2026-03-02T12:00:00Z")
    return (when - EPOCH) // ONE_US


def iso(us: int) -> str:
    return moment(us).isoformat().replace("+00:00", "Z")


def day_of(us: int | None) -> str:
    """The UTC day of a window_end, as the stores partition by it."""
    return PENDING_DAY if us is None else moment(us).date().isoformat()


# ----------------------------------------------------------------------------- identities, digests

def decision_key(row: tuple) -> str:
    return row[0]  # decision_id, as sinks.compare keys decisions


def position(row: tuple) -> tuple:
    return row[:3]  # topic, partition, offset: a fate's identity


def members(row: tuple) -> frozenset:
    """The log positions a decision decided: the same records whichever way they were decided."""
    return frozenset(row[MEMBERS])


def _digest(rows, key) -> str:
    from sinks.compare import digest
    return digest({key(r): r for r in rows})


def decisions_digest(rows) -> str:
    return _digest(rows, decision_key)


def fates_digest(rows) -> str:
    return _digest(rows, position)


def day_digests(rows, end: int = DECISION_END, key=decision_key) -> dict[str, str]:
    """Day of window_end -> the digest of that day's rows (decisions unless told otherwise)."""
    days: dict[str, list] = {}
    for row in rows:
        days.setdefault(day_of(row[end]), []).append(row)
    return {day: _digest(days[day], key) for day in sorted(days)}


# ----------------------------------------------------------------------------- divergence

@dataclass(frozen=True)
class Divergence:
    """How the rows of B differ from those of A, paired by a key."""

    only_a: list[tuple]  # rows of A whose key B does not have
    only_b: list[tuple]
    changed: list[tuple[tuple, tuple]]  # (A's, B's) for the same key, different content

    def __bool__(self) -> bool:
        return bool(self.only_a or self.only_b or self.changed)


def keyed_difference(a_rows, b_rows, key, order) -> Divergence:
    a, b = {key(r): r for r in a_rows}, {key(r): r for r in b_rows}
    return Divergence(
        only_a=sorted((a[k] for k in a.keys() - b.keys()), key=order),
        only_b=sorted((b[k] for k in b.keys() - a.keys()), key=order),
        changed=sorted(((a[k], b[k]) for k in a.keys() & b.keys() if a[k] != b[k]),
                       key=lambda pair: order(pair[0])))


def _decision_order(row: tuple) -> tuple:
    return (row[DECISION_END], sorted(row[MEMBERS]))


def diverging(a_rows, b_rows) -> Divergence:
    """Decisions paired by member set: only in A, only in B, same members decided differently."""
    return keyed_difference(a_rows, b_rows, members, _decision_order)


def fate_difference(a_rows, b_rows) -> Divergence:
    return keyed_difference(a_rows, b_rows, position, position)


def repeated(rows, key) -> int:
    """Rows whose key another row already has: a correct sink writes none."""
    return len(rows) - len({key(r) for r in rows})


# ----------------------------------------------------------------------------- reading a namespace

@dataclass
class Namespace:
    """A namespace's canonical rows with window_end in the compared range."""

    name: str
    decisions: list[tuple]
    fates: list[tuple]


@dataclass(frozen=True)
class Source:
    store: str
    data_dir: Path
    dsn: str | None
    since: int | None
    until: int | None

    def where(self) -> str:
        return f"PostgreSQL at {redact(self.dsn)}" if self.store == "postgres" \
            else f"Parquet under {self.data_dir}"

    def read(self, ns: str) -> Namespace:
        store = open_store(self.store, ns, self.data_dir, self.dsn)
        with store:
            if self.store == "postgres" and not store.exists:
                raise UserError(f"namespace {ns} does not exist in {self.where()}")
            if self.store == "parquet" and not store.root.is_dir():
                raise UserError(f"namespace {ns} does not exist in {self.where()} (no {store.root})")
            return Namespace(ns, store.decisions(self.since, self.until),
                             store.fates(self.since, self.until))


# ----------------------------------------------------------------------------- the report

def outcome(row: tuple) -> str:
    """A decision as a reviewer reads it: what was decided, for how much, and why."""
    d = dict(zip(DECISION_FIELDS, row))
    what = d["kind"] + (f" {d['exception_kind']}" if d["exception_kind"] else "")
    tier = f" tier {d['tier']}" if d["tier"] is not None else ""
    amount = f" {d['amount_minor']:,} {d['currency'] or ''}".rstrip() \
        if d["amount_minor"] is not None else ""
    reason = f" ({d['reason']})" if d["reason"] else ""
    return f"{what}{tier}{amount}{reason}  id {d['decision_id']}"


def _refs(row: tuple) -> str:
    return " ".join(sorted(row[MEMBERS]))


def _changed_fields(a: tuple, b: tuple) -> str:
    return ", ".join(name for name, x, y in zip(DECISION_FIELDS, a, b)
                     if x != y and name != "decision_id")


def describe(div: Divergence, limit: int) -> list[str]:
    lines = []
    for label, rows in (("only in A", div.only_a), ("only in B", div.only_b)):
        if rows:
            lines.append(f"decisions {label}: {len(rows):,}" + _shown(len(rows), limit))
            for row in rows[:limit]:
                lines += [f"  {iso(row[DECISION_END])}  {_refs(row)}", f"    {outcome(row)}"]
    if div.changed:
        lines.append(f"same members, different outcome: {len(div.changed):,}"
                     + _shown(len(div.changed), limit))
        for a, b in div.changed[:limit]:
            lines += [f"  {iso(a[DECISION_END])}  {_refs(a)}  (differs in {_changed_fields(a, b)})",
                      f"    A  {outcome(a)}", f"    B  {outcome(b)}"]
    return lines


def _shown(total: int, limit: int) -> str:
    return f" (first {limit} shown)" if total > limit else ""


def day_lines(a: Namespace, b: Namespace) -> list[str]:
    digests_a, digests_b = day_digests(a.decisions), day_digests(b.decisions)
    lines = []
    for day in sorted(digests_a.keys() | digests_b.keys()):
        x, y = digests_a.get(day, "-"), digests_b.get(day, "-")
        marker = "" if x == y else "  <- differs"
        lines.append(f"  {day:<10}  {x[:16]:<16}  {y[:16]:<16}{marker}")
    return lines


def span(source: Source, a: Namespace, b: Namespace) -> str:
    """The compared range as given, else the first to the last day present."""
    if source.since is not None or source.until is not None:
        low = iso(source.since) if source.since is not None else "the start"
        high = iso(source.until) if source.until is not None else "the end"
        return f"{low}..{high}"
    days = sorted({day_of(r[DECISION_END]) for r in a.decisions + b.decisions}
                  | {day_of(r[FATE_END]) for r in a.fates + b.fates})
    return f"{days[0]}..{days[-1]}" if days else "no days (both empty)"


@dataclass
class Verification:
    source: Source
    a: Namespace
    b: Namespace
    decisions: Divergence
    fates: Divergence
    repeats: dict[str, int]  # "decisions in A" -> rows repeating another's key

    @property
    def identical(self) -> bool:
        return not self.decisions and not self.fates and not any(self.repeats.values())

    def verdict(self) -> str:
        over = f"over {span(self.source, self.a, self.b)}"
        if self.identical:
            return (f"IDENTICAL: {len(self.a.decisions):,} decisions, {len(self.a.fates):,} fates "
                    f"{over}")
        d, f = self.decisions, self.fates
        repeats = sum(self.repeats.values())
        return (f"DIFFERENT: decisions {len(d.only_a):,} only in A, {len(d.only_b):,} only in B, "
                f"{len(d.changed):,} with a different outcome; fates {len(f.only_a):,} only in A, "
                f"{len(f.only_b):,} only in B, {len(f.changed):,} different"
                + (f"; {repeats:,} repeated rows" if repeats else "") + f" {over}")

    def report(self, limit: int) -> str:
        a, b = self.a, self.b
        rows = [("decisions", _pair(len(a.decisions), len(b.decisions))),
                ("  matches", _pair(_kinds(a, "match"), _kinds(b, "match"))),
                ("  exceptions", _pair(_kinds(a, "exception"), _kinds(b, "exception"))),
                ("fates", _pair(len(a.fates), len(b.fates)))]
        rows += [(f"repeated {what}", n) for what, n in self.repeats.items() if n]
        lines = [f"A = {a.name}, B = {b.name} in {self.source.where()}",
                 table(rows, "counts (A, B)"),
                 "decision digests per day of window_end (A, B)"] + day_lines(a, b)
        lines += describe(self.decisions, limit)
        f = self.fates
        lines.append(f"fates: {len(f.only_a):,} only in A, {len(f.only_b):,} only in B, "
                     f"{len(f.changed):,} different")
        return "\n".join(lines + [self.verdict()])


def _pair(a: int, b: int) -> str:
    return f"{a:>12,} {b:>12,}" + ("" if a == b else "  <- differs")


def _kinds(ns: Namespace, kind: str) -> int:
    return sum(1 for r in ns.decisions if r[KIND] == kind)


def verify(source: Source, a_name: str, b_name: str) -> Verification:
    a, b = source.read(a_name), source.read(b_name)
    repeats = {}
    for side, ns in (("A", a), ("B", b)):
        repeats[f"decisions in {side}"] = repeated(ns.decisions, members)
        repeats[f"fates in {side}"] = repeated(ns.fates, position)
    return Verification(source, a, b, diverging(a.decisions, b.decisions),
                        fate_difference(a.fates, b.fates), repeats)


def digest_lines(ns: Namespace) -> list[str]:
    fates_by_day = day_digests(ns.fates, end=FATE_END, key=position)
    decisions_by_day = day_digests(ns.decisions)
    lines = [f"decisions {decisions_digest(ns.decisions)}", f"fates {fates_digest(ns.fates)}"]
    for day in sorted(decisions_by_day.keys() | fates_by_day.keys()):
        lines.append(f"day {day} decisions {decisions_by_day.get(day, '-')} "
                     f"fates {fates_by_day.get(day, '-')}")
    return lines
