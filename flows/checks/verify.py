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
from datetime import datetime, timedelta, timezone
from pathlib import Path

from flows.logs import UserError, redact
from flows.progress import table
from state.decision import Decision, Fate

# sinks.compare and sinks.parquet load pyarrow, so they are imported where used:
# the CLI imports this module for every `tally` command, which should stay cheap.

EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
ONE_US = timedelta(microseconds=1)
# The column order of sinks.parquet and sinks.postgres (tests hold them equal).
DECISION_FIELDS, FATE_FIELDS = Decision.__struct_fields__, Fate.__struct_fields__
DECISION_END = DECISION_FIELDS.index("window_end")
FATE_END = FATE_FIELDS.index("window_end")
MEMBERS = DECISION_FIELDS.index("member_refs")
KIND = DECISION_FIELDS.index("kind")
PENDING_DAY = "pending"  # the day of a fate not decided yet (Parquet from `tally match` only)
STORES = ("postgres", "parquet")


# ----------------------------------------------------------------------------- times and days

def timestamp(text: str) -> int:
    """UTC microseconds of an RFC 3339 timestamp. The offset is required so that no
    local clock setting decides which decisions are compared."""
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        moment = None
    if moment is None or moment.tzinfo is None:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not an RFC 3339 timestamp with an offset, e.g. 2026-03-02T12:00:00Z")
    return (moment - EPOCH) // ONE_US


def moment(us: int) -> datetime:
    return EPOCH + us * ONE_US


def iso(us: int) -> str:
    return moment(us).isoformat().replace("+00:00", "Z")


def day_of(us: int | None) -> str:
    """The UTC day of a window_end, as the stores partition by it."""
    return PENDING_DAY if us is None else moment(us).date().isoformat()


def in_range(rows, since_us: int | None = None, until_us: int | None = None,
             end: int = DECISION_END) -> list[tuple]:
    """Rows whose window_end is in [since_us, until_us); a missing bound is open.
    Pending rows have no window_end, so any bound leaves them out."""
    if since_us is None and until_us is None:
        return list(rows)
    low = since_us if since_us is not None else -2**63
    high = until_us if until_us is not None else 2**63
    return [r for r in rows if r[end] is not None and low <= r[end] < high]


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
        return _read_postgres(self, ns) if self.store == "postgres" else _read_parquet(self, ns)


def _read_postgres(source: Source, ns: str) -> Namespace:
    import psycopg
    from psycopg.rows import dict_row

    from sinks.postgres import CONNECT_TIMEOUT_S
    try:
        with psycopg.connect(source.dsn, connect_timeout=CONNECT_TIMEOUT_S) as conn:
            found = conn.execute(
                "SELECT count(*) FROM information_schema.tables WHERE table_schema = %s"
                " AND table_name IN ('decisions', 'fates')", (ns,)).fetchone()[0]
            if found < 2:
                raise UserError(f"namespace {ns} does not exist in {source.where()}")
            conn.row_factory = dict_row
            return Namespace(ns, _pg_rows(conn, ns, "decisions", DECISION_FIELDS, source),
                             _pg_rows(conn, ns, "fates", FATE_FIELDS, source))
    except psycopg.Error as exc:
        reason = redact(" ".join(str(exc).split()) or type(exc).__name__)
        raise UserError(f"cannot read namespace {ns} from {source.where()}: {reason}") from None


def _pg_rows(conn, ns: str, name: str, fields, source: Source) -> list[tuple]:
    from psycopg import sql

    from sinks.compare import canonical
    # The day bounds let PostgreSQL skip whole day partitions; window_end bounds are exact.
    conditions, params = [sql.SQL("TRUE")], {}
    if source.since is not None:
        conditions.append(sql.SQL("window_end >= %(since)s AND day >= %(since_day)s"))
        params |= {"since": moment(source.since), "since_day": moment(source.since).date()}
    if source.until is not None:
        conditions.append(sql.SQL("window_end < %(until)s AND day <= %(until_day)s"))
        params |= {"until": moment(source.until), "until_day": moment(source.until).date()}
    query = sql.SQL("SELECT {} FROM {}.{} WHERE {}").format(
        sql.SQL(", ").join(map(sql.Identifier, fields)), sql.Identifier(ns),
        sql.Identifier(name), sql.SQL(" AND ").join(conditions))
    return [canonical(r, fields) for r in conn.execute(query, params)]


def _read_parquet(source: Source, ns: str) -> Namespace:
    from sinks.parquet import DECISIONS_SCHEMA, FATES_SCHEMA
    root = source.data_dir / ns
    if not root.is_dir():
        raise UserError(f"namespace {ns} does not exist in {source.where()} (no {root})")
    decisions = _parquet_rows(root / "decisions", DECISIONS_SCHEMA, source)
    fates = _parquet_rows(root / "fates", FATES_SCHEMA, source)
    return Namespace(ns, in_range(decisions, source.since, source.until),
                     in_range(fates, source.since, source.until, end=FATE_END))


def _parquet_rows(root: Path, schema, source: Source) -> list[tuple]:
    from sinks.compare import canonical
    from sinks.parquet import read_dataset
    # Only the day directories the range can touch are read.
    low = day_of(source.since) if source.since is not None else ""
    high = day_of(source.until) if source.until is not None else PENDING_DAY
    rows = []
    for day_dir in sorted(root.glob("date=*")):
        if low <= day_dir.name.removeprefix("date=") <= high:
            rows += read_dataset(day_dir, schema).to_pylist()
    return [canonical(r, tuple(schema.names)) for r in rows]


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
