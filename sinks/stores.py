"""One way to read a namespace back from a store.

A namespace lives in PostgreSQL (schema <namespace>) and in Parquet (directory
<data-dir>/<namespace>), and its raw archive in Parquet (<namespace>/events).
`PostgresStore` and `ParquetStore` give the same things from either store:

* canonical rows (`canonical`): plain tuples in the Parquet column order with
  times as UTC microseconds, so equal content means equal tuples whichever store
  and whichever run they came from; `decisions()` and `fates()` take an optional
  window_end range, `fates_at`, `fates_of` and `decision` look one up by key, and
  `decisions_with_member` finds the decisions listing a record inside a window_end range;
* compact Arrow tables for checks over tens of millions of rows (`compact()`,
  through COPY ... CSV in PostgreSQL), never a Python object per row;
* the raw reads the use cases aggregate with (`query` in PostgreSQL, `scan` and
  `table` in Parquet), with the store's errors as one-line `StoreError`s.

`Archive` reads the raw archive: every position, records by position or event id,
and each partition's span.

Only the standard library and `state` are imported here; pyarrow and psycopg are
imported where used, so that a command merely naming a store stays cheap.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime, timedelta
from pathlib import Path

from sinks.dsn import redact
from sinks.errors import StoreError
from state.contract import EPOCH, ONE_US
from state.decision import Decision, Fate

# The column order of sinks.parquet and sinks.postgres (tests hold them equal).
DECISION_FIELDS: tuple[str, ...] = Decision.__struct_fields__
FATE_FIELDS: tuple[str, ...] = Fate.__struct_fields__
ARCHIVE_FIELDS = ("topic", "partition", "offset", "key", "timestamp", "value")
POSITION = ["topic", "partition", "offset"]
TABLES = ("decisions", "fates")
PENDING_DAY = "pending"  # the Parquet day directory of fates not decided yet


# ----------------------------------------------------------------------------- canonical rows


def us(value):
    """A datetime as UTC microseconds; anything else as it is."""
    if isinstance(value, datetime):
        return (value - EPOCH) // ONE_US
    return value


def moment(us_: int) -> datetime:
    return EPOCH + us_ * ONE_US


def day(us_: int) -> date:
    """The UTC date of a microsecond timestamp, as both stores partition by it."""
    return moment(us_).date()


def canonical(row: dict, fields: tuple[str, ...]) -> tuple:
    out = []
    for name in fields:
        value = row[name]
        if name in ("window_start", "window_end", "timestamp"):
            value = us(value)
        elif name == "candidates":
            value = tuple((c["event"], c["ref"], c["confidence"]) for c in value)
        elif isinstance(value, list):
            value = tuple(value)
        out.append(value)
    return tuple(out)


def canonical_dicts(rows, fields: tuple[str, ...]) -> list[dict]:
    return [dict(zip(fields, canonical(r, fields))) for r in rows]


DECISION_END = DECISION_FIELDS.index("window_end")
FATE_END = FATE_FIELDS.index("window_end")


def in_range(rows, since: int | None = None, until: int | None = None,
             end: int = DECISION_END) -> list[tuple]:
    """Rows whose window_end (field `end`) is in [since, until); a missing bound is open.
    Pending rows have no window_end, so any bound leaves them out."""
    if since is None and until is None:
        return list(rows)
    low = since if since is not None else -2**63
    high = until if until is not None else 2**63
    return [r for r in rows if r[end] is not None and low <= r[end] < high]


# ----------------------------------------------------------------------------- compact tables


@dataclass
class Tables:
    """Three compact Arrow tables of one store, the same shape from either:

    * fates: topic, partition, offset, source, event_id, outcome, decision_id, window_end
    * decisions: decision_id, kind, tier, exception_kind, account, currency,
      amount_minor, window_start, window_end
    * members: decision_id, topic, partition, offset (one row per member of a decision)

    Times are UTC microseconds (int64) in all three."""

    where: str
    fates: object  # pa.Table
    decisions: object
    members: object


def compact_schemas():
    """(fates, decisions, members) schemas of `Tables`."""
    import pyarrow as pa
    fates = pa.schema([("topic", pa.string()), ("partition", pa.int32()), ("offset", pa.int64()),
                       ("source", pa.string()), ("event_id", pa.string()), ("outcome", pa.string()),
                       ("decision_id", pa.string()), ("window_end", pa.int64())])
    decisions = pa.schema([("decision_id", pa.string()), ("kind", pa.string()),
                           ("tier", pa.int8()), ("exception_kind", pa.string()),
                           ("account", pa.string()), ("currency", pa.string()),
                           ("amount_minor", pa.int64()), ("window_start", pa.int64()),
                           ("window_end", pa.int64())])
    members = pa.schema([("decision_id", pa.string()), ("topic", pa.string()),
                         ("partition", pa.int32()), ("offset", pa.int64())])
    return fates, decisions, members


def _members(decision_ids, refs):
    """Member refs "topic:partition:offset" as columns (topics cannot contain ':')."""
    import pyarrow as pa
    import pyarrow.compute as pc
    parts = pc.split_pattern(refs, ":", max_splits=None)
    return pa.table({"decision_id": decision_ids,
                     "topic": pc.list_element(parts, 0),
                     "partition": pc.cast(pc.list_element(parts, 1), pa.int32()),
                     "offset": pc.cast(pc.list_element(parts, 2), pa.int64())},
                    schema=compact_schemas()[2])


def _cast(table, schema):
    import pyarrow as pa
    import pyarrow.compute as pc
    columns = []
    for name in schema.names:
        column = table.column(name)
        if pa.types.is_timestamp(column.type):
            column = pc.cast(column, pa.int64())
        columns.append(pc.cast(column, schema.field(name).type))
    return pa.table(columns, schema=schema)


# ----------------------------------------------------------------------------- PostgreSQL


class PostgresStore:
    """A namespace's decisions and fates in PostgreSQL (schema <namespace>).

    One connection (autocommit, session in UTC), opened on first use or by
    `connect()`; a failure to reach or read the store is a `StoreError` naming the
    namespace and the redacted DSN."""

    kind = "postgres"

    def __init__(self, dsn: str, namespace: str):
        from sinks.postgres import validate_namespace
        self.dsn, self.namespace = dsn, validate_namespace(namespace)
        self.where = f"PostgreSQL at {redact(dsn)}"
        self._conn, self._exists, self._columns = None, None, None

    def error(self, exc: BaseException, what: str | None = None) -> StoreError:
        from sinks.postgres import safe_reason
        what = what or f"cannot read namespace {self.namespace} from PostgreSQL at"
        return StoreError(f"{what} {redact(self.dsn)}: {safe_reason(exc, self.dsn)}")

    def connect(self, what: str | None = None):
        """The open connection; `what` starts the message of a failure to connect."""
        if self._conn is None:
            import psycopg
            from psycopg.rows import dict_row

            from sinks.postgres import CONNECT_TIMEOUT_S
            try:
                self._conn = psycopg.connect(self.dsn, connect_timeout=CONNECT_TIMEOUT_S,
                                             autocommit=True, row_factory=dict_row)
                self._conn.execute("SET TIME ZONE 'UTC'")
            except psycopg.Error as exc:
                self.close()
                raise self.error(exc, what) from None
        return self._conn

    def _execute(self, query, params=None) -> list[dict]:
        import psycopg
        conn = self.connect()
        try:
            return conn.execute(query, params).fetchall()
        except psycopg.Error as exc:
            raise self.error(exc) from None

    @property
    def exists(self) -> bool:
        """Whether the namespace has both its tables (asked once per store)."""
        if self._exists is None:
            self._exists = self._execute(
                "SELECT count(*) AS n FROM information_schema.tables WHERE table_schema = %s"
                " AND table_name IN ('decisions', 'fates')", (self.namespace,))[0]["n"] == 2
        return self._exists

    def table(self, name: str):
        from psycopg import sql
        return sql.SQL("{}.{}").format(sql.Identifier(self.namespace), sql.Identifier(name))

    def query(self, text: str, params: dict | None = None) -> list[dict]:
        """Rows of a query over the namespace: {decisions} and {fates} name its tables."""
        from psycopg import sql
        return self._execute(sql.SQL(text).format(decisions=self.table("decisions"),
                                                  fates=self.table("fates")), params)

    def rows(self, name: str, fields=None, where: list[tuple[str, object]] = (),
             since: int | None = None, until: int | None = None,
             order: list[str] | None = None, member: str | None = None) -> list[dict]:
        """Rows of table `name` (every column unless `fields`), where each column equals its
        value, window_end is in [since, until) and, given `member`, member_refs holds it."""
        from psycopg import sql
        absent = self._absent(name)
        columns = sql.SQL("*") if fields is None else sql.SQL(", ").join(
            sql.SQL("NULL AS {}").format(sql.Identifier(f)) if f in absent else sql.Identifier(f)
            for f in fields)
        conditions = [sql.SQL("{} = %({})s").format(sql.Identifier(c), sql.SQL(f"w{i}"))
                      for i, (c, _) in enumerate(where)]
        params = {f"w{i}": v for i, (_, v) in enumerate(where)}
        if member is not None:
            conditions.append(sql.SQL("%(member)s = ANY(member_refs)"))
            params["member"] = member
        # The day bounds let PostgreSQL skip whole day partitions; window_end bounds are exact.
        if since is not None:
            conditions.append(sql.SQL("window_end >= %(since)s AND day >= %(since_day)s"))
            params |= {"since": moment(since), "since_day": day(since)}
        if until is not None:
            conditions.append(sql.SQL("window_end < %(until)s AND day <= %(until_day)s"))
            params |= {"until": moment(until), "until_day": day(until)}
        query = sql.SQL("SELECT {} FROM {} WHERE {}").format(
            columns, self.table(name), sql.SQL(" AND ").join(conditions or [sql.SQL("TRUE")]))
        if order:
            query += sql.SQL(" ORDER BY {}").format(sql.SQL(", ").join(map(sql.Identifier, order)))
        rows = self._execute(query, params)
        if fields is None and absent:
            rows = [r | dict.fromkeys(absent) for r in rows]
        return rows

    def _absent(self, name: str) -> list[str]:
        """The columns added since (sinks.postgres ADDED_DECISION_COLUMNS) that table `name`
        lacks, read as NULL: a namespace no writer has upgraded yet reads as it was written."""
        from sinks.postgres import ADDED_DECISION_COLUMNS
        if name != "decisions":
            return []
        if not self._columns:  # kept once the table is there: a run may be creating it
            self._columns = {r["column_name"] for r in self._execute(
                "SELECT column_name FROM information_schema.columns"
                " WHERE table_schema = %s AND table_name = 'decisions'", (self.namespace,))}
        return [c for c in ADDED_DECISION_COLUMNS if c not in self._columns]

    # -- canonical rows

    def decisions(self, since: int | None = None, until: int | None = None) -> list[tuple]:
        return [canonical(r, DECISION_FIELDS)
                for r in self.rows("decisions", DECISION_FIELDS, since=since, until=until)]

    def fates(self, since: int | None = None, until: int | None = None) -> list[tuple]:
        return [canonical(r, FATE_FIELDS)
                for r in self.rows("fates", FATE_FIELDS, since=since, until=until)]

    def _lookup(self, name: str, fields, where) -> list[dict]:
        """Rows by key as canonical dicts; none when the namespace is not here."""
        if not self.exists:
            return []
        return canonical_dicts(self.rows(name, fields, where), fields)

    def fates_at(self, topic: str, partition: int, offset: int) -> list[dict]:
        return self._lookup("fates", FATE_FIELDS,
                            [("topic", topic), ("partition", partition), ("offset", offset)])

    def fates_of(self, source: str, event_id: str) -> list[dict]:
        return self._lookup("fates", FATE_FIELDS, [("source", source), ("event_id", event_id)])

    def decision(self, decision_id: str, window_end: int | None = None) -> dict | None:
        where = [("decision_id", decision_id)]
        if window_end is not None:  # the day partition holding it, by its window_end
            where.append(("day", day(window_end)))
        rows = self._lookup("decisions", DECISION_FIELDS, where)
        return rows[0] if rows else None

    def decisions_with_member(self, ref: str, since: int, until: int) -> list[dict]:
        """Decisions whose member_refs hold `ref` ("topic:partition:offset") and whose
        window_end is in [since, until), by window_end and id: only the day partitions of
        that range are read."""
        if not self.exists:
            return []
        rows = self.rows("decisions", DECISION_FIELDS, since=since, until=until, member=ref,
                         order=["window_end", "decision_id"])
        return canonical_dicts(rows, DECISION_FIELDS)

    # -- stored rows, every column (review columns too)

    def decision_rows(self) -> list[dict]:
        """Every decision row as stored, by decision_id."""
        return self.rows("decisions", order=["decision_id", "day"])

    def fate_rows(self) -> list[dict]:
        """Every fate row as stored, by topic, partition, offset."""
        return self.rows("fates", order=["topic", "partition", "offset", "day"])

    # -- compact tables

    def compact(self) -> Tables:
        """`Tables` through COPY ... CSV: no Python object per row."""
        import pyarrow as pa
        from psycopg import sql
        fates_schema, decisions_schema, _ = compact_schemas()
        schema = sql.Identifier(self.namespace)
        as_us = "(extract(epoch FROM {0}) * 1000000)::bigint"
        fates = sql.SQL('SELECT topic, partition, "offset", source, event_id, outcome, decision_id, '
                        + as_us.format("window_end") + " FROM {}.fates").format(schema)
        decisions = sql.SQL("SELECT decision_id, kind, tier, exception_kind, account, currency, "
                            "amount_minor, " + as_us.format("window_start") + ", "
                            + as_us.format("window_end") + " FROM {}.decisions").format(schema)
        refs = sql.SQL("SELECT decision_id, unnest(member_refs) FROM {}.decisions").format(schema)
        conn = self.connect()
        with conn.transaction():
            fates = _copy_csv(conn, fates, fates_schema)
            decisions = _copy_csv(conn, decisions, decisions_schema)
            refs = _copy_csv(conn, refs, pa.schema([("decision_id", pa.string()),
                                                    ("ref", pa.string())]))
        return Tables(f"PostgreSQL schema {self.namespace}", fates, decisions,
                      _members(refs.column("decision_id"), refs.column("ref")))

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
        self._conn = None

    def __enter__(self) -> PostgresStore:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _copy_csv(conn, query, schema):
    """A query's rows through COPY ... CSV into Arrow: no Python object per row."""
    import io

    import pyarrow.csv as pcsv
    from psycopg import sql
    buffer = io.BytesIO()
    with conn.cursor() as cur:
        with cur.copy(sql.SQL("COPY ({}) TO STDOUT (FORMAT csv)").format(query)) as copy:
            for chunk in copy:
                buffer.write(chunk)
    if not buffer.tell():
        return schema.empty_table()
    buffer.seek(0)
    # CSV from PostgreSQL: NULL is an unquoted empty field, '' a quoted one
    return pcsv.read_csv(
        buffer, read_options=pcsv.ReadOptions(column_names=schema.names),
        parse_options=pcsv.ParseOptions(newlines_in_values=True),
        convert_options=pcsv.ConvertOptions(column_types=schema, strings_can_be_null=True,
                                            quoted_strings_can_be_null=False, null_values=[""]))


# ----------------------------------------------------------------------------- Parquet


def visible(root: Path, pattern: str = "date=*/*.parquet") -> list[str]:
    """The Parquet files under root (hidden temporaries are skipped), sorted."""
    return sorted(str(p) for p in root.glob(pattern) if not p.name.startswith("."))


def scan(files: list[str], schema, condition=None, columns=None):
    """Rows of the Parquet files that match `condition` (row groups skipped by statistics)."""
    import pyarrow as pa
    import pyarrow.dataset as ds
    try:
        return ds.dataset(files, schema=schema, format="parquet").to_table(
            columns=columns, filter=condition)
    except (OSError, pa.ArrowException) as exc:
        raise StoreError(f"cannot read Parquet files under {Path(files[0]).parent.parent}: "
                         f"{' '.join(str(exc).split())}") from None


def _schema(name: str):
    from sinks import parquet
    if name == "events":
        from sinks.parquet_sink import ARCHIVE_SCHEMA
        return ARCHIVE_SCHEMA
    return {"decisions": parquet.DECISIONS_SCHEMA, "fates": parquet.FATES_SCHEMA}[name]


class ParquetStore:
    """A namespace's decisions and fates in the Parquet files under <data-dir>/<namespace>."""

    kind = "parquet"

    def __init__(self, data_dir: Path, namespace: str):
        self.namespace, self.root = namespace, data_dir / namespace
        self.where = f"Parquet under {self.root}"

    @property
    def exists(self) -> bool:
        return (self.root / "fates").is_dir()

    def files(self, name: str, pattern: str = "date=*/*.parquet") -> list[str]:
        return visible(self.root / name, pattern)

    def scan(self, name: str, condition=None, columns=None, files: list[str] | None = None):
        """Table `name` (decisions, fates or events), filtered while it is read; None when no
        file holds it."""
        files = self.files(name) if files is None else files
        return scan(files, _schema(name), condition, columns) if files else None

    def day_dirs(self, name: str, days: tuple[str, str]) -> list[Path]:
        """The day directories of table `name` in `days` (inclusive, "YYYY-MM-DD" or
        "pending"), sorted."""
        return [d for d in sorted((self.root / name).glob("date=*"))
                if days[0] <= d.name.removeprefix("date=") <= days[1]]

    def table(self, name: str, columns: list[str] | None = None, days: tuple[str, str] | None = None):
        """Every row of table `name`, whole files at a time; `days` bounds the day directories
        read (inclusive, "YYYY-MM-DD" or "pending")."""
        from sinks.parquet import read_dataset
        schema = _schema(name)
        if days is None:
            return read_dataset(self.root / name, schema, columns)
        import pyarrow as pa
        tables = [read_dataset(d, schema, columns) for d in self.day_dirs(name, days)]
        empty = schema.empty_table()
        return pa.concat_tables(tables) if tables else (empty.select(columns) if columns else empty)

    # -- canonical rows

    def _canonical(self, name: str, fields, since: int | None, until: int | None) -> list[tuple]:
        # Only the day directories the range can touch are read.
        low = day(since).isoformat() if since is not None else ""
        high = day(until).isoformat() if until is not None else PENDING_DAY
        days = None if since is None and until is None else (low, high)
        rows = [canonical(r, fields) for r in self.table(name, days=days).to_pylist()]
        return in_range(rows, since, until, fields.index("window_end"))

    def decisions(self, since: int | None = None, until: int | None = None) -> list[tuple]:
        return self._canonical("decisions", DECISION_FIELDS, since, until)

    def fates(self, since: int | None = None, until: int | None = None) -> list[tuple]:
        return self._canonical("fates", FATE_FIELDS, since, until)

    def _fates(self, condition) -> list[dict]:
        found = self.scan("fates", condition)
        return [] if found is None else canonical_dicts(found.to_pylist(), FATE_FIELDS)

    def fates_at(self, topic: str, partition: int, offset: int) -> list[dict]:
        import pyarrow.dataset as ds
        return self._fates((ds.field("topic") == topic) & (ds.field("partition") == partition)
                           & (ds.field("offset") == offset))

    def fates_of(self, source: str, event_id: str) -> list[dict]:
        import pyarrow.dataset as ds
        return self._fates((ds.field("source") == source) & (ds.field("event_id") == event_id))

    def decision(self, decision_id: str, window_end: int | None = None) -> dict | None:
        import pyarrow.dataset as ds
        days = "*" if window_end is None else f"date={day(window_end).isoformat()}"
        found = self.scan("decisions", ds.field("decision_id") == decision_id,
                          files=self.files("decisions", f"{days}/*.parquet"))
        rows = [] if found is None else found.to_pylist()
        return canonical_dicts(rows, DECISION_FIELDS)[0] if rows else None

    def decisions_with_member(self, ref: str, since: int, until: int) -> list[dict]:
        """Decisions whose member_refs hold `ref` ("topic:partition:offset") and whose
        window_end is in [since, until), by window_end and id: only the day directories of
        that range are read, first their ids and members, then the rows found whole."""
        import pyarrow.compute as pc
        import pyarrow.dataset as ds
        days = (day(since).isoformat(), day(until).isoformat())
        narrow = self.table("decisions", ["decision_id", "member_refs"], days=days)
        refs = narrow.column("member_refs")
        hits = pc.list_parent_indices(refs).filter(pc.equal(pc.list_flatten(refs), ref))
        if not len(hits):
            return []
        ids = pc.unique(pc.take(narrow.column("decision_id"), hits))
        files = [f for d in self.day_dirs("decisions", days) for f in visible(d, "*.parquet")]
        found = self.scan("decisions", ds.field("decision_id").isin(ids), files=files)
        rows = in_range([canonical(r, DECISION_FIELDS) for r in found.to_pylist()], since, until)
        return [dict(zip(DECISION_FIELDS, r))
                for r in sorted(set(rows), key=lambda r: (r[DECISION_END], r[0]))]

    # -- compact tables

    def compact(self) -> Tables:
        import pyarrow.compute as pc
        fates_schema, decisions_schema, _ = compact_schemas()
        fates, decisions = self.table("fates"), self.table("decisions")
        refs = decisions.column("member_refs")
        members = _members(pc.take(decisions.column("decision_id"), pc.list_parent_indices(refs)),
                           pc.list_flatten(refs))
        return Tables(f"Parquet {self.root}", _cast(fates, fates_schema),
                      _cast(decisions, decisions_schema), members)

    def close(self) -> None:
        pass

    def __enter__(self) -> ParquetStore:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


# ----------------------------------------------------------------------------- the raw archive


class Archive:
    """The raw archive of one namespace (<namespace>/events), read with filters on topic,
    partition, offset and value."""

    def __init__(self, namespace_root: Path):
        self.root = namespace_root / "events"
        self.files = visible(self.root, "date=*/part*-*.parquet")

    @property
    def exists(self) -> bool:
        return bool(self.files)

    def positions(self):
        """Log positions of every archived (consumed) record, as an Arrow table."""
        from sinks.parquet import read_dataset
        return read_dataset(self.root, _schema("events"), columns=POSITION)

    def records(self) -> list[tuple]:
        """Every archived record as a canonical row (timestamp in UTC microseconds)."""
        from sinks.parquet import read_dataset
        return [canonical(r, ARCHIVE_FIELDS)
                for r in read_dataset(self.root, _schema("events")).to_pylist()]

    def _scan(self, condition, columns=None) -> list[dict]:
        return scan(self.files, _schema("events"), condition, columns)

    def at(self, positions) -> list[dict]:
        """Records at these (topic, partition, offset) positions, as canonical dicts."""
        import pyarrow.dataset as ds
        parts: dict[tuple[str, int], list[int]] = {}
        for topic, partition, offset in sorted(set(positions)):
            parts.setdefault((topic, partition), []).append(offset)
        if not parts or not self.files:
            return []
        condition = None
        for (topic, partition), offsets in parts.items():
            one = ((ds.field("topic") == topic) & (ds.field("partition") == partition)
                   & ds.field("offset").isin(offsets))
            condition = one if condition is None else condition | one
        return canonical_dicts(self._scan(condition).to_pylist(), ARCHIVE_FIELDS)

    def containing(self, topic: str, text: str) -> list[dict]:
        """Records of `topic` whose value contains `text` (UTF-8), as canonical dicts."""
        import pyarrow.compute as pc
        import pyarrow.dataset as ds
        if not self.files:
            return []
        condition = (ds.field("topic") == topic) & pc.match_substring(ds.field("value"), text)
        return canonical_dicts(self._scan(condition).to_pylist(), ARCHIVE_FIELDS)

    def span(self, topic: str, partition: int) -> tuple[int, int, int] | None:
        """(first offset, last offset, records) archived for one partition."""
        import pyarrow.compute as pc
        import pyarrow.dataset as ds
        if not self.files:
            return None
        offsets = self._scan((ds.field("topic") == topic) & (ds.field("partition") == partition),
                             ["offset"]).column("offset")
        if not len(offsets):
            return None
        bounds = pc.min_max(offsets).as_py()
        return bounds["min"], bounds["max"], len(offsets)


def open_store(kind: str, namespace: str, data_dir: Path | None = None, dsn: str | None = None):
    """The PostgresStore or ParquetStore of a namespace."""
    return PostgresStore(dsn, namespace) if kind == "postgres" else ParquetStore(data_dir, namespace)
