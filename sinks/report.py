"""The figures behind `tally report`, aggregated where the decisions live.

PostgreSQL answers with GROUP BY queries, so only a few hundred grouped rows
leave the server however many decisions a namespace holds.  Parquet is grouped
with pyarrow compute over the decision files.  Both give the same `Figures`:

* outcomes: decisions per label ("tier 1", "tier 2", or an exception kind), and
  the span of their windows;
* over_time: decisions per label per bucket of window_end (an hour when the
  window ends span at most two days, else a day, month or year);
* by_sources: decisions and matches per combination of member sources, e.g.
  "bank+ledger+processor" (the part before ':' of each member_event_id);
* by_account: decisions and matches of the accounts with the most decisions;
* oldest_open: the open exceptions in `tally review list` order (oldest UTC day
  of window_end, then the largest absolute amount in major units, then window_end
  and id).  Parquet keeps no review status, so there every exception is open;
* settlement, only for a config with relations: decisions per relation, and per
  UTC day of window_end the payouts settled and deposited, the settlement
  mismatches, the unexplained bank credits and the fees withheld per currency
  (`Settlement`, from `settlement_groups`).

Ties are broken by byte order (COLLATE "C" in SQL), so both stores and every run
order rows the same.  Counts are integers; nothing here is a float.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date, datetime, timedelta, timezone
from pathlib import Path

from sinks.dsn import redact
from sinks.errors import StoreError
from sinks.stores import ParquetStore, PostgresStore
from state.currency import EXPONENTS
from state.decision import (AMBIGUOUS, CLOCK_SKEW, DUPLICATE, INVALID_KIND, LATE, MISMATCH, MISSING,
                            REVIEW, SETTLEMENT_MISMATCH)
from state.relations import BATCH, MATCH, PAYOUT, Relation

KIND_ORDER = (MISSING, MISMATCH, AMBIGUOUS, REVIEW, DUPLICATE, LATE, CLOCK_SKEW, INVALID_KIND,
              SETTLEMENT_MISMATCH)
UNITS = ("hour", "day", "month", "year")
HOURLY_SPAN = timedelta(days=2)  # window ends spanning at most this are shown per hour
MOST_BARS = 120  # else the finest of day, month, year giving at most this many buckets


@dataclass(frozen=True)
class Rate:
    """Decisions of one group (a source combination, an account) and how many matched."""

    name: str
    decisions: int
    matches: int


# The settlement figures per day, in the order the page shows them.
SETTLED, MISMATCHED, DEPOSITED, UNEXPLAINED = ("payouts settled", "settlement mismatches",
                                               "payouts deposited", "unexplained bank credits")
DAY_FIGURES = (SETTLED, MISMATCHED, DEPOSITED, UNEXPLAINED)


@dataclass(frozen=True)
class RelationCount:
    name: str | None  # None: decisions of no relation (invalid records)
    rule: str  # "" for decisions of a relation the config does not name
    decisions: int
    matches: int


@dataclass
class Settlement:
    """What the relations of a config decided, from `settlement_groups` rows."""

    relations: list[RelationCount]  # the config's in its order, then any other, by name
    days: dict[date, dict[str, int]]  # UTC day of window_end -> DAY_FIGURES -> count
    fees: dict[date, dict[str, int]]  # UTC day -> currency -> fee withheld, minor units
    unknown: list[str]  # relations in the store that the config does not name


@dataclass
class Figures:
    namespace: str
    store: str  # where the decisions were read, for the page's header
    outcomes: dict[str, int]  # label -> decisions, in label_order
    first_start: datetime | None  # earliest window_start
    first_end: datetime | None  # earliest window_end
    last_end: datetime | None  # latest window_end
    unit: str  # the bucket of over_time: one of UNITS
    over_time: dict[datetime, dict[str, int]]  # bucket start -> label -> decisions
    by_sources: list[Rate]
    by_account: list[Rate]
    accounts: int  # accounts with any decision (by_account shows the top ones)
    oldest_open: list[dict]  # sinks.review.LIST_COLUMNS
    open_exceptions: int
    notes: list[str] = field(default_factory=list)
    settlement: Settlement | None = None  # only for a config with relations

    @property
    def decisions(self) -> int:
        return sum(self.outcomes.values())


# ----------------------------------------------------------------------------- shared rules


def label(kind: str, tier: int | None, exception_kind: str | None) -> str:
    """What a decision counts as: its match tier, or its exception kind."""
    return f"tier {tier}" if kind == "match" else exception_kind or "unknown"


def label_order(name: str) -> tuple:
    """Tiers first (by number), then the exception kinds as state.decision lists them."""
    if name.startswith("tier ") and name[5:].isdigit():
        return (0, int(name[5:]), "")
    if name in KIND_ORDER:
        return (1, KIND_ORDER.index(name), "")
    return (2, 0, name)


def bucket_unit(first_end: datetime | None, last_end: datetime | None) -> str:
    """Hours for at most two days of data, else the finest unit with few enough bars."""
    if first_end is None or last_end - first_end <= HOURLY_SPAN:
        return "hour"
    for unit in UNITS[1:-1]:
        if len(buckets(first_end, last_end, unit)) <= MOST_BARS:
            return unit
    return "year"


def floor(moment: datetime, unit: str) -> datetime:
    moment = moment.astimezone(timezone.utc)
    if unit == "hour":
        return moment.replace(minute=0, second=0, microsecond=0)
    day = moment.replace(hour=0, minute=0, second=0, microsecond=0)
    return {"day": day, "month": day.replace(day=1), "year": day.replace(month=1, day=1)}[unit]


def step(moment: datetime, unit: str) -> datetime:
    """The start of the next bucket after the one starting at `moment`."""
    if unit in ("hour", "day"):
        return moment + timedelta(**{unit + "s": 1})
    if unit == "year":
        return moment.replace(year=moment.year + 1)
    return moment.replace(year=moment.year + moment.month // 12, month=moment.month % 12 + 1)


def buckets(first: datetime, last: datetime, unit: str, most: int = 100_000) -> list[datetime]:
    """Every bucket start from first's bucket to last's, empty ones included."""
    found, moment, end = [], floor(first, unit), floor(last, unit)
    while moment <= end and len(found) <= most:
        found.append(moment)
        moment = step(moment, unit)
    return found


def _outcomes(rows: list[dict]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for row in rows:
        name = label(row["kind"], row["tier"], row["exception_kind"])
        counts[name] = counts.get(name, 0) + row["n"]
    return {name: counts[name] for name in sorted(counts, key=label_order)}


def _over_time(rows: list[dict]) -> dict[datetime, dict[str, int]]:
    found: dict[datetime, dict[str, int]] = {}
    for row in rows:
        counts = found.setdefault(row["bucket"].astimezone(timezone.utc), {})
        name = label(row["kind"], row["tier"], row["exception_kind"])
        counts[name] = counts.get(name, 0) + row["n"]
    return {moment: {name: counts[name] for name in sorted(counts, key=label_order)}
            for moment, counts in sorted(found.items())}


def _bound(rows: list[dict], key: str, pick) -> datetime | None:
    values = [r[key] for r in rows if r[key] is not None]
    return pick(values).astimezone(timezone.utc) if values else None


def settlement(rows: list[dict], relations: tuple[Relation, ...]) -> Settlement:
    """The settlement figures from grouped rows (day, relation, kind, exception_kind,
    currency, sources: the '+'-joined distinct sources of the members, n, fee_minor):

    * payouts settled: matches of a "batch" relation; settlement mismatches: those
      exceptions, whichever relation made them;
    * payouts deposited: matches of a "payout" relation; unexplained bank credits: its
      missing_counterpart exceptions whose members all come from its `credits` source
      (a payout without its credit is missing a counterpart too, but is not a credit);
    * fees: fee_minor summed per currency over the matches of "match" relations."""
    rules = {r.name: r for r in relations}
    counts: dict[str | None, list[int]] = {}  # relation -> [decisions, matches]
    days: dict[date, dict[str, int]] = {}
    fees: dict[date, dict[str, int]] = {}
    for row in rows:
        relation = rules.get(row["relation"])
        total = counts.setdefault(row["relation"], [0, 0])
        total[0] += row["n"]
        total[1] += row["n"] if row["kind"] == "match" else 0
        figure = _day_figure(row, relation)
        if figure:
            on_day = days.setdefault(row["day"], dict.fromkeys(DAY_FIGURES, 0))
            on_day[figure] += row["n"]
        if (relation and relation.rule == MATCH and row["kind"] == "match"
                and row["fee_minor"] is not None):
            on_day = fees.setdefault(row["day"], {})
            currency = row["currency"] or ""
            on_day[currency] = on_day.get(currency, 0) + row["fee_minor"]
    # records no relation decided (an invalid one) count under None, listed last
    named = [r.name for r in relations] + sorted((n for n in counts if n not in rules),
                                                 key=lambda n: (n is None, n or ""))
    listed = [RelationCount(n, rules[n].rule if n in rules else "", *counts.get(n, (0, 0)))
              for n in named]
    return Settlement(listed, dict(sorted(days.items())),
                      {d: dict(sorted(c.items())) for d, c in sorted(fees.items())},
                      sorted(n for n in counts if n not in rules and n is not None))


def _day_figure(row: dict, relation: Relation | None) -> str | None:
    """Which settlement figure of the day one grouped row counts towards, if any."""
    if row["exception_kind"] == SETTLEMENT_MISMATCH:
        return MISMATCHED
    if relation is None:
        return None
    if relation.rule == BATCH and row["kind"] == "match":
        return SETTLED
    if relation.rule == PAYOUT and row["kind"] == "match":
        return DEPOSITED
    if (relation.rule == PAYOUT and row["exception_kind"] == MISSING
            and row["sources"] == relation.credits):
        return UNEXPLAINED
    return None


def figures(reader, top_accounts: int, open_limit: int,
            relations: tuple[Relation, ...] = ()) -> Figures:
    """Every figure of the page from one store's reader (PgDecisions or ParquetDecisions);
    the settlement figures only when the config has relations."""
    groups = reader.outcomes()
    first_end, last_end = _bound(groups, "first_end", min), _bound(groups, "last_end", max)
    unit = bucket_unit(first_end, last_end)
    by_account, accounts = reader.by_account(top_accounts)
    oldest, open_total = reader.oldest_open(open_limit)
    return Figures(
        namespace=reader.namespace, store=reader.where, outcomes=_outcomes(groups),
        first_start=_bound(groups, "first_start", min), first_end=first_end, last_end=last_end,
        unit=unit, over_time=_over_time(reader.over_time(unit)),
        by_sources=sorted(reader.by_sources(), key=lambda r: (-r.decisions, r.name)),
        by_account=by_account, accounts=accounts, oldest_open=oldest,
        open_exceptions=open_total, notes=list(reader.notes),
        settlement=settlement(reader.settlement_groups(), relations) if relations else None)


# ----------------------------------------------------------------------------- PostgreSQL

OUTCOMES_SQL = (
    "SELECT kind, tier, exception_kind, count(*) AS n, min(window_start) AS first_start,"
    " min(window_end) AS first_end, max(window_end) AS last_end FROM {decisions} GROUP BY 1, 2, 3")
OVER_TIME_SQL = (  # the session is in UTC, so date_trunc cuts UTC hours and days
    "SELECT date_trunc(%(unit)s, window_end) AS bucket, kind, tier, exception_kind,"
    " count(*) AS n FROM {decisions} GROUP BY 1, 2, 3, 4")
BY_SOURCES_SQL = (
    "SELECT coalesce(s.combination, '') AS name, count(*) AS decisions,"
    " count(*) FILTER (WHERE d.kind = 'match') AS matches FROM {decisions} d"
    " CROSS JOIN LATERAL (SELECT string_agg(source, '+' ORDER BY source COLLATE \"C\")"
    "  AS combination FROM (SELECT DISTINCT split_part(m, ':', 1) AS source"
    "  FROM unnest(d.member_event_ids) AS m) AS sources) AS s GROUP BY 1")
BY_ACCOUNT_SQL = (
    "SELECT account AS name, count(*) AS decisions,"
    " count(*) FILTER (WHERE kind = 'match') AS matches, count(*) OVER () AS accounts"
    " FROM {decisions} WHERE account IS NOT NULL GROUP BY account"
    " ORDER BY 2 DESC, account COLLATE \"C\" LIMIT %(top)s")

# Grouped by what the settlement figures tell apart; a few rows per relation and day.
SETTLEMENT_SQL = (
    "SELECT (d.window_end AT TIME ZONE 'UTC')::date AS day, d.relation, d.kind,"
    " d.exception_kind, d.currency, coalesce(s.combination, '') AS sources, count(*) AS n,"
    " sum(d.fee_minor)::bigint AS fee_minor FROM {decisions} d"
    " CROSS JOIN LATERAL (SELECT string_agg(source, '+' ORDER BY source COLLATE \"C\")"
    "  AS combination FROM (SELECT DISTINCT split_part(m, ':', 1) AS source"
    "  FROM unnest(d.member_event_ids) AS m) AS sources) AS s GROUP BY 1, 2, 3, 4, 5, 6")


class _OverStore:
    """Figures over one store, closed with it."""

    store: PostgresStore | ParquetStore

    def close(self) -> None:
        self.store.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class PgDecisions(_OverStore):
    """The grouped figures of one namespace's `decisions` table, from its PostgresStore."""

    notes: tuple[str, ...] = ()

    def __init__(self, store: PostgresStore):
        self.store, self.namespace = store, store.namespace
        self.where = f"PostgreSQL schema {store.namespace}"
        conn = store.connect("cannot connect to PostgreSQL at")
        table = store.table("decisions").as_string(conn)
        if self._query("SELECT to_regclass(%(t)s) AS t", {"t": table})[0]["t"] is None:
            self.close()
            raise StoreError(f"namespace {store.namespace} has no decisions in PostgreSQL at "
                             f"{redact(store.dsn)}; check --namespace and --pg")

    def _query(self, text: str, params: dict | None = None) -> list[dict]:
        return self.store.query(text, params)

    def outcomes(self) -> list[dict]:
        return self._query(OUTCOMES_SQL)

    def over_time(self, unit: str) -> list[dict]:
        return self._query(OVER_TIME_SQL, {"unit": unit})

    def by_sources(self) -> list[Rate]:
        return [Rate(r["name"], r["decisions"], r["matches"]) for r in self._query(BY_SOURCES_SQL)]

    def by_account(self, top: int) -> tuple[list[Rate], int]:
        rows = self._query(BY_ACCOUNT_SQL, {"top": top})
        return [Rate(r["name"], r["decisions"], r["matches"]) for r in rows], \
            rows[0]["accounts"] if rows else 0

    def settlement_groups(self) -> list[dict]:
        return self._query(SETTLEMENT_SQL)

    def oldest_open(self, limit: int) -> tuple[list[dict], int]:
        from sinks import review
        rows = review.open_exceptions(self.store.dsn, self.namespace, limit=limit)
        return rows, sum(review.open_counts(self.store.dsn, self.namespace).values())


# ----------------------------------------------------------------------------- Parquet

GROUP_COLUMNS = ["kind", "tier", "exception_kind", "account", "member_event_ids",
                 "window_start", "window_end"]
OPEN_COLUMNS = ["decision_id", "exception_kind", "relation", "account", "currency",
                "amount_minor", "window_end", "reason", "member_event_ids"]


class ParquetDecisions(_OverStore):
    """The same figures from the decision files under <data-dir>/<namespace>/decisions."""

    notes = ("Parquet keeps no review status: every exception is counted as open",)

    def __init__(self, store: ParquetStore):
        self.store, self.namespace = store, store.namespace
        self.root = store.root / "decisions"
        self.where = store.where
        self.files = store.files("decisions", "**/*.parquet")
        if not self.files:
            raise StoreError(f"namespace {self.namespace} has no decisions under {self.root}; "
                             f"check --namespace and --data-dir")
        self.table = self._read(GROUP_COLUMNS)
        self.is_match = _as_int(_equal(self.table.column("kind"), "match"))

    def _read(self, columns: list[str], condition=None):
        return self.store.scan("decisions", condition, columns, files=self.files)

    def outcomes(self) -> list[dict]:
        grouped = self.table.group_by(["kind", "tier", "exception_kind"]).aggregate(
            [([], "count_all"), ("window_start", "min"), ("window_end", "min"),
             ("window_end", "max")])
        return [{"kind": r["kind"], "tier": r["tier"], "exception_kind": r["exception_kind"],
                 "n": r["count_all"], "first_start": r["window_start_min"],
                 "first_end": r["window_end_min"], "last_end": r["window_end_max"]}
                for r in grouped.to_pylist()]

    def over_time(self, unit: str) -> list[dict]:
        import pyarrow.compute as pc
        keys = ["bucket", "kind", "tier", "exception_kind"]
        table = self.table.append_column(
            "bucket", pc.floor_temporal(self.table.column("window_end"), unit=unit))
        grouped = table.group_by(keys).aggregate([([], "count_all")])
        return [{**{k: r[k] for k in keys}, "n": r["count_all"]} for r in grouped.to_pylist()]

    def by_sources(self) -> list[Rate]:
        import pyarrow as pa
        import pyarrow.compute as pc
        members = self.table.column("member_event_ids").combine_chunks()
        named = _source_combinations(members)
        none = pc.equal(pc.list_value_length(members), 0)  # invalid records have no member
        table = pa.concat_tables([
            pa.table({"name": named.column("name"),
                      "is_match": pc.take(self.is_match, named.column("i"))}),
            pa.table({"name": pa.nulls(pc.sum(none).as_py() or 0, pa.string()).fill_null(""),
                      "is_match": self.is_match.filter(none)})])
        return _rates(table, "name")

    def by_account(self, top: int) -> tuple[list[Rate], int]:
        import pyarrow as pa
        import pyarrow.compute as pc
        table = pa.table({"account": self.table.column("account"), "is_match": self.is_match})
        table = table.filter(pc.is_valid(table.column("account")))
        rates = _rates(table, "account")
        return rates[:top], len(rates)

    def settlement_groups(self) -> list[dict]:
        import pyarrow as pa
        import pyarrow.compute as pc
        table = self._read(["window_end", "relation", "kind", "exception_kind", "currency",
                            "member_event_ids", "fee_minor"])
        members = table.column("member_event_ids").combine_chunks()
        named = _source_combinations(members)
        sources = pa.array([""] * table.num_rows, pa.string())  # invalid records: no member
        if named.num_rows:
            sources = pc.replace_with_mask(
                sources, pc.is_in(pa.array(range(table.num_rows)), named.column("i")),
                named.column("name").combine_chunks())
        keys = ["day", "relation", "kind", "exception_kind", "currency", "sources"]
        table = table.append_column("day", pc.cast(table.column("window_end"), "date32"))
        table = table.append_column("sources", sources)
        grouped = table.group_by(keys).aggregate([([], "count_all"), ("fee_minor", "sum")])
        return [{**{k: r[k] for k in keys}, "n": r["count_all"], "fee_minor": r["fee_minor_sum"]}
                for r in grouped.to_pylist()]

    def oldest_open(self, limit: int) -> tuple[list[dict], int]:
        import pyarrow.compute as pc
        import pyarrow.dataset as ds
        table = self._read(OPEN_COLUMNS, ds.field("kind") == "exception")
        table = table.append_column("day", pc.cast(table.column("window_end"), "date32"))
        table = table.append_column("major", _major_units(table))
        ranked = table.sort_by([("day", "ascending"), ("major", "descending", "at_end"),
                                ("window_end", "ascending"), ("decision_id", "ascending")])
        from sinks.review import LIST_COLUMNS
        rows = ranked.slice(0, limit).select(LIST_COLUMNS).to_pylist()
        return [r | {"window_end": r["window_end"].astimezone(timezone.utc)} for r in rows], \
            table.num_rows


def _equal(column, value):
    import pyarrow.compute as pc
    return pc.fill_null(pc.equal(column, value), False)


def _as_int(flags):
    import pyarrow as pa
    import pyarrow.compute as pc
    return pc.cast(flags, pa.int64())


def _rates(table, key: str) -> list[Rate]:
    """Decisions and matches per value of `key`, most decisions first, then by name."""
    grouped = table.group_by(key).aggregate([([], "count_all"), ("is_match", "sum")])
    rows = grouped.sort_by([("count_all", "descending"), (key, "ascending")]).to_pylist()
    return [Rate(r[key], r["count_all"], r["is_match_sum"] or 0) for r in rows]


def _source_combinations(members):
    """(i, name) for each decision i with members: their distinct sources, sorted, '+'-joined."""
    import pyarrow as pa
    import pyarrow.compute as pc
    flat = pc.list_flatten(members)
    pairs = pa.table({"i": pc.list_parent_indices(members),
                      "source": pc.list_element(pc.split_pattern(flat, ":", max_splits=1), 0)})
    distinct = pairs.group_by(["i", "source"]).aggregate([]).sort_by(
        [("i", "ascending"), ("source", "ascending")])
    joined = distinct.group_by("i", use_threads=False).aggregate([("source", "list")])
    return pa.table({"i": joined.column("i"),
                     "name": pc.binary_join(joined.column("source_list"), "+")})


def _major_units(table):
    """|amount| in 10^-MAJOR_DIGITS major units of its own currency, exactly (decimal):
    the key `tally review list` ranks by.  An unknown currency's minor units count as major."""
    import pyarrow as pa
    import pyarrow.compute as pc

    from sinks.review import MAJOR_DIGITS
    codes = pa.array(list(EXPONENTS), pa.string())
    scales = pa.array([10 ** (MAJOR_DIGITS - e) for e in EXPONENTS.values()], pa.decimal128(5, 0))
    scale = pc.take(scales, pc.index_in(table.column("currency"), value_set=codes))
    scale = pc.fill_null(scale, pa.scalar(10 ** MAJOR_DIGITS, pa.decimal128(5, 0)))
    amount = pc.cast(pc.abs_checked(table.column("amount_minor")), pa.decimal128(19, 0))
    return pc.multiply(amount, scale)
