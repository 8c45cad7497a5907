"""Decisions and fates in PostgreSQL, written idempotently.

Layout, in one schema per namespace (``validate_namespace``):

* ``decisions`` and ``fates`` have the columns of ``sinks.parquet`` (same names,
  same order), then ``day date``, the UTC date of ``window_end``.  A namespace
  made before ``ADDED_DECISION_COLUMNS`` existed gets them from ``ensure_schema``,
  after its review columns (every write and read names its columns).  Both tables
  are partitioned by RANGE on ``day``, one partition per day
  (``decisions_YYYYMMDD``, ``fates_YYYYMMDD``), created on demand.
* Primary keys must contain the partition key, so they are
  ``decisions (day, decision_id)`` and ``fates (day, topic, partition, "offset")``.
  That is still idempotent across days: a decision's id is a hash of its members
  and its window_end is a function of those same members, so a re-emitted
  decision always has the same window_end, hence the same day, hence the same
  key.  The same holds for a fate (its window_end is its decision's).  Pending
  fates (window_end None) have no day and are refused.
* ``decisions`` also has review columns for humans: ``review_status`` is
  'open' for exceptions and NULL for matches (a match needs no review);
  ``resolved_by``, ``resolved_at``, ``resolution``, ``note``; and
  ``written_at``.  Rows are only ever inserted (ON CONFLICT DO NOTHING), so a
  re-emitted decision never overwrites what a reviewer wrote.

A write is one transaction on an ADBC connection: the batch's Arrow columns
(``sinks.columns``) are ingested (binary COPY) into TEMP staging tables, then
``INSERT ... SELECT ... ON CONFLICT DO NOTHING`` into the real tables.  The schema,
the day partitions and the catalog go through psycopg, on a second connection.  The
schema name is always passed as ``sql.Identifier``; data only ever travels as
COPY data or bind parameters.
"""

from __future__ import annotations

import logging
import re
import time
from datetime import date, datetime, timedelta
from typing import Callable

import adbc_driver_manager
import adbc_driver_manager.dbapi
import adbc_driver_postgresql.dbapi as adbc
import pyarrow as pa
import pyarrow.compute as pc
import psycopg
from psycopg import errors, sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from sinks.columns import Columns, columns
from sinks.dsn import redact
from sinks.errors import StoreError
from state.contract import EPOCH
from state.decision import Decision, Fate

NAMESPACE = re.compile(r"^[a-z_][a-z0-9_]{0,47}$")
CONNECT_TIMEOUT_S = 5

# (name, PostgreSQL type): the columns of sinks.parquet, in the same order.
DECISION_COLUMNS = [
    ("decision_id", "text"), ("kind", "text"), ("tier", "smallint"),
    ("exception_kind", "text"), ("account", "text"), ("currency", "text"),
    ("amount_minor", "bigint"), ("confidence", "double precision"),
    ("member_event_ids", "text[]"), ("member_refs", "text[]"),
    ("window_start", "timestamptz"), ("window_end", "timestamptz"),
    ("missing_sources", "text[]"), ("candidates", "jsonb"),
    ("reason", "text"), ("raw_base64", "text"),
    ("relation", "text"), ("fee_minor", "bigint"),
]
# Decision columns added after namespaces already existed: `ensure_schema` adds them to
# a namespace made before them (NULL in its old rows, as for a config without relations).
ADDED_DECISION_COLUMNS = ["relation", "fee_minor"]
FATE_COLUMNS = [
    ("topic", "text"), ("partition", "integer"), ("offset", "bigint"),
    ("source", "text"), ("event_id", "text"), ("outcome", "text"),
    ("decision_id", "text"), ("window_end", "timestamptz"),
]
# A connection lost (either driver's): write_with_retry reconnects.
CONNECTION_LOST = (psycopg.OperationalError, adbc_driver_manager.OperationalError)

REVIEW_COLUMNS = """,
    day date NOT NULL,
    review_status text CHECK (review_status IN ('open', 'resolved')),
    resolved_by text,
    resolved_at timestamptz,
    resolution text,
    note text,
    written_at timestamptz NOT NULL DEFAULT now(),
    CHECK ((kind = 'exception') = (review_status IS NOT NULL)),
    PRIMARY KEY (day, decision_id)"""
FATE_EXTRA = """,
    day date NOT NULL,
    PRIMARY KEY (day, topic, partition, "offset")"""
NOT_NULL = {"decision_id", "kind", "member_event_ids", "member_refs", "window_start",
            "window_end", "missing_sources", "candidates", "topic", "partition", "offset",
            "outcome"}

# From staging into the day partitions. review_status: 'open' for exceptions, NULL for
# matches. The ORDER BY makes concurrent writers take row locks in one order (no deadlocks).
DECISIONS_INSERT = ("INSERT INTO {schema}.decisions ({cols}, day, review_status)"
                    " SELECT {cols}, (window_end AT TIME ZONE 'UTC')::date,"
                    " CASE WHEN kind = 'exception' THEN 'open' END"
                    " FROM pg_temp.stage_decisions ORDER BY 1 ON CONFLICT DO NOTHING")
FATES_INSERT = ("INSERT INTO {schema}.fates ({cols}, day)"
                " SELECT {cols}, (window_end AT TIME ZONE 'UTC')::date"
                " FROM pg_temp.stage_fates ORDER BY 1, 2, 3 ON CONFLICT DO NOTHING")

# Another session created the same object between our check and our CREATE.
RACES = (errors.DuplicateTable, errors.DuplicateSchema, errors.DuplicateObject,
          errors.UniqueViolation)


def validate_namespace(ns: str) -> str:
    """The namespace, if it is safe as a schema name and as a directory name."""
    if not isinstance(ns, str) or not NAMESPACE.match(ns):
        raise ValueError(f"invalid namespace {ns!r}: use 1-48 of a-z, 0-9 and _, "
                         f"not starting with a digit")
    if ns.startswith("pg_") or ns in ("information_schema", "public"):
        raise ValueError(f"invalid namespace {ns!r}: reserved by PostgreSQL (its default or "
                         f"system schemas); choose another name")
    return ns


def _columns(columns: list[tuple[str, str]], types: bool = True) -> sql.Composable:
    parts = []
    for name, pg_type in columns:
        if not types:
            parts.append(sql.Identifier(name))
            continue
        # a fate's decision_id is NULL for heartbeats; a decision's never is
        nullable = name not in NOT_NULL or (name == "decision_id" and columns is FATE_COLUMNS)
        null = "" if nullable else " NOT NULL"
        parts.append(sql.SQL("{} {}").format(sql.Identifier(name), sql.SQL(pg_type + null)))
    return sql.SQL(", ").join(parts)


def _days(table: pa.Table) -> list[date]:
    """The UTC dates of a table's window_end; the same as (ts AT TIME ZONE 'UTC')::date."""
    return sorted(pc.unique(table.column("window_end").cast(pa.date32())).to_pylist())


def _call_keeping_python_sigint(func, args, kwargs, cancel):
    return func(*args, **kwargs)


# In the main thread, ADBC swaps Python's SIGINT handler for its own around each blocking
# call, and a SIGINT then only cancels the statement (or, once the call is done, nothing):
# the interrupt was lost, and a live run that got it mid-write never stopped. Calling
# straight through, as ADBC itself does on Windows, keeps Python's handler: the write ends,
# then the interrupt is raised.
adbc_driver_manager.dbapi._blocking_call = _call_keeping_python_sigint


def bulk_connect(dsn: str) -> adbc.Connection:
    """An ADBC connection, not in autocommit. The driver hands its string to libpq's
    PQconnectdb, which takes key=value as well as a URI: psycopg parses our DSN (either
    form) and quotes it again as key=value, so no value is spliced in by hand."""
    return adbc.connect(make_conninfo(dsn, connect_timeout=CONNECT_TIMEOUT_S), autocommit=False)


def safe_reason(exc: BaseException, dsn: str) -> str:
    """The error as one line, without the DSN's password."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    try:
        password = conninfo_to_dict(dsn).get("password")
    except psycopg.Error:
        password = None
    if password:
        text = text.replace(str(password), "***")
    return redact(text)


class PgWriter:
    """One connection writing decisions and fates of one namespace."""

    def __init__(self, dsn: str, ns: str):
        self.ns = validate_namespace(ns)
        self.dsn = dsn
        self.conn = psycopg.connect(dsn, autocommit=False, connect_timeout=CONNECT_TIMEOUT_S)
        try:
            self.bulk = bulk_connect(dsn)  # the write transactions: staging and inserts
        except BaseException:
            self.conn.close()
            raise
        self._bulk_closed = False
        self._schema = sql.Identifier(self.ns)
        self._inserts = [sql.SQL(insert).format(schema=self._schema, cols=_columns(cols, types=False))
                         .as_string(self.conn)
                         for insert, cols in ((DECISIONS_INSERT, DECISION_COLUMNS),
                                              (FATES_INSERT, FATE_COLUMNS))]
        self._partitions: set[tuple[str, date]] = set()
        self._staging = False

    # -- schema ----------------------------------------------------------------

    def _ddl(self, statement: sql.Composable) -> None:
        """Run one DDL statement in its own transaction; tolerate one lost race."""
        for attempt in (1, 2):
            try:
                with self.conn.transaction():
                    self.conn.execute(statement)
                return
            except RACES:
                if attempt == 2:
                    raise  # IF NOT EXISTS now sees the winner's object, so this is unexpected

    def ensure_schema(self) -> None:
        try:
            self._ensure_schema()
        except errors.InsufficientPrivilege as exc:
            user = self.conn.info.user
            raise StoreError(
                f"PostgreSQL role {user} may not create namespace {self.ns} "
                f"({safe_reason(exc, self.dsn)}); as an administrator run: CREATE SCHEMA "
                f"{self.ns} AUTHORIZATION {user}  (see docs/operations.md)") from None

    def _ensure_schema(self) -> None:
        table = "CREATE TABLE IF NOT EXISTS {}.{} ({}{}) PARTITION BY RANGE (day)"
        # CREATE SCHEMA IF NOT EXISTS needs CREATE on the database even when the schema
        # exists, so a least-privilege role that owns a schema made for it skips it.
        with self.conn.transaction():
            exists = self.conn.execute("SELECT 1 FROM pg_namespace WHERE nspname = %s",
                                       (self.ns,)).fetchone()
        if not exists:
            self._ddl(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(self._schema))
        self._ddl(sql.SQL(table).format(self._schema, sql.Identifier("decisions"),
                                        _columns(DECISION_COLUMNS), sql.SQL(REVIEW_COLUMNS)))
        self._ddl(sql.SQL(table).format(self._schema, sql.Identifier("fates"),
                                        _columns(FATE_COLUMNS), sql.SQL(FATE_EXTRA)))
        self._add_missing_columns()
        # Remember the partitions that already exist, so a restart creates none.
        with self.conn.transaction():
            rows = self.conn.execute(
                "SELECT p.relname, c.relname FROM pg_inherits i"
                " JOIN pg_class c ON c.oid = i.inhrelid JOIN pg_class p ON p.oid = i.inhparent"
                " JOIN pg_namespace n ON n.oid = p.relnamespace"
                " WHERE n.nspname = %s AND p.relname IN ('decisions', 'fates')",
                (self.ns,)).fetchall()
        for parent, child in rows:
            suffix = child.removeprefix(parent + "_")
            if len(suffix) == 8 and suffix.isdigit():
                self._partitions.add((parent, datetime.strptime(suffix, "%Y%m%d").date()))

    def _add_missing_columns(self) -> None:
        """Give a namespace made before ADDED_DECISION_COLUMNS those columns.

        Asked first, because ALTER TABLE locks the table even when there is nothing to add,
        and every sink partition ensures the schema when it connects. Added on the
        partitioned parent, so every day partition gets them too."""
        with self.conn.transaction():
            present = {r[0] for r in self.conn.execute(
                "SELECT column_name FROM information_schema.columns"
                " WHERE table_schema = %s AND table_name = 'decisions'", (self.ns,))}
        types = dict(DECISION_COLUMNS)
        missing = [name for name in ADDED_DECISION_COLUMNS if name not in present]
        if missing:
            additions = sql.SQL(", ").join(
                sql.SQL("ADD COLUMN IF NOT EXISTS {} {}").format(sql.Identifier(name),
                                                                 sql.SQL(types[name]))
                for name in missing)
            self._ddl(sql.SQL("ALTER TABLE {}.decisions {}").format(self._schema, additions))

    def _ensure_partition(self, parent: str, day: date) -> None:
        if (parent, day) in self._partitions:
            return
        name = f"{parent}_{day:%Y%m%d}"
        self._ddl(sql.SQL(
            "CREATE TABLE IF NOT EXISTS {}.{} PARTITION OF {}.{} FOR VALUES FROM ({}) TO ({})"
        ).format(self._schema, sql.Identifier(name), self._schema, sql.Identifier(parent),
                 sql.Literal(day), sql.Literal(day + timedelta(days=1))))
        self._partitions.add((parent, day))

    def _ensure_staging(self) -> None:
        """TEMP tables shaped like the batch, on the bulk connection; emptied by every commit."""
        if self._staging:
            return
        with self.bulk.cursor() as cur:
            for name, columns in (("stage_decisions", DECISION_COLUMNS),
                                  ("stage_fates", FATE_COLUMNS)):
                cur.execute(sql.SQL(
                    "CREATE TEMP TABLE IF NOT EXISTS {} ({}) ON COMMIT DELETE ROWS"
                ).format(sql.Identifier(name), _columns(columns)).as_string(self.conn))
        self.bulk.commit()
        self._staging = True

    # -- writing ---------------------------------------------------------------

    def write(self, decisions: list[Decision], fates: list[Fate]) -> tuple[int, int]:
        """Insert what is not there yet, in one transaction; returns rows inserted."""
        return self.write_columns(columns(decisions, fates))

    def write_columns(self, batch: Columns) -> tuple[int, int]:
        """`write`, from the batch's Arrow columns."""
        if batch.fates.column("window_end").null_count:
            raise ValueError("pending fates (window_end None) cannot be written")
        for day in _days(batch.decisions):
            self._ensure_partition("decisions", day)
        for day in _days(batch.fates):
            self._ensure_partition("fates", day)
        self._ensure_staging()
        decisions = batch.decisions.set_column(
            batch.decisions.schema.get_field_index("candidates"), "candidates",
            batch.candidates_json)
        try:
            with self.bulk.cursor() as cur:
                inserted = (_stage_and_insert(cur, decisions, "stage_decisions", self._inserts[0]),
                            _stage_and_insert(cur, batch.fates, "stage_fates", self._inserts[1]))
            self.bulk.commit()
        except BaseException:
            self._rollback()
            raise
        return inserted

    def _rollback(self) -> None:
        try:
            self.bulk.rollback()
        except adbc_driver_manager.Error:
            pass  # the connection is gone; the caller's error says why

    # -- lifetime --------------------------------------------------------------

    @property
    def closed(self) -> bool:
        return self.conn.closed or self._bulk_closed

    def close(self) -> None:
        self.conn.close()
        if not self._bulk_closed:
            self._bulk_closed = True
            try:
                self.bulk.close()
            except adbc_driver_manager.Error:
                pass  # its server is gone; libpq has freed what it held

    def __enter__(self) -> PgWriter:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _stage_and_insert(cur: adbc.Cursor, table: pa.Table, stage: str, insert: str) -> int:
    """Rows of `table` that were not stored yet, inserted through the TEMP table `stage`."""
    if not table.num_rows:
        return 0
    cur.adbc_ingest(stage, table, mode="append", temporary=True)
    cur.execute(insert)
    return cur.rowcount


# -- reconnecting --------------------------------------------------------------


class WriterFactory:
    """A writer_factory for `write_with_retry`: one live PgWriter (schema ensured),
    replaced by a new one when asked for a fresh one or once it is closed."""

    def __init__(self, dsn: str, ns: str):
        self.dsn, self.ns = dsn, validate_namespace(ns)
        self._writer: PgWriter | None = None

    def __call__(self, fresh: bool = False) -> PgWriter:
        if fresh or self._writer is None or self._writer.closed:
            if self._writer is not None:
                self._writer.close()
            self._writer = None
            writer = PgWriter(self.dsn, self.ns)
            try:
                writer.ensure_schema()
            except BaseException:
                writer.close()
                raise
            self._writer = writer
        return self._writer

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()


def _warning(message: str) -> None:
    logging.getLogger("tally").warning(message)  # tally's handler formats it (flows.logs)


def write_with_retry(writer_factory: Callable[[bool], PgWriter], decisions: list[Decision],
                     fates: list[Fate], deadline_s: float,
                     log: Callable[[str], object] | None = None, dsn: str | None = None) -> tuple[int, int]:
    """`write_columns_with_retry` of the decisions' and fates' columns."""
    return write_columns_with_retry(writer_factory, columns(decisions, fates), deadline_s, log, dsn)


def write_columns_with_retry(writer_factory: Callable[[bool], PgWriter], batch: Columns,
                             deadline_s: float, log: Callable[[str], object] | None = None,
                             dsn: str | None = None) -> tuple[int, int]:
    """`write_columns`, retried on connection loss with backoff (0.5 s doubling, at most 10 s).

    `writer_factory(fresh)` gives the writer to use: fresh is False on the first
    attempt (reuse a live writer) and True after a failure (connect anew; the
    failed writer has been closed).  Retrying is safe: rows that a lost COMMIT did
    store are skipped, so a retry may report fewer rows inserted.  Each retry logs
    one line; after deadline_s seconds the last error becomes a StoreError.
    """
    log = log or _warning
    dsn = dsn or getattr(writer_factory, "dsn", None)  # named in messages, redacted
    start, delay, fresh = time.monotonic(), 0.5, False
    while True:
        writer = None
        try:
            writer = writer_factory(fresh)
            dsn = writer.dsn
            return writer.write_columns(batch)
        except CONNECTION_LOST as exc:
            if writer is not None:
                writer.close()
            fresh = True
            where = redact(dsn) if dsn else "PostgreSQL"
            reason = safe_reason(exc, dsn or "")
            elapsed = time.monotonic() - start
            if elapsed + delay > deadline_s:
                raise StoreError(f"cannot write to PostgreSQL at {where} for "
                                 f"{elapsed:.1f}s: {reason}") from None
            log(f"PostgreSQL write failed ({reason}); reconnecting to {where} in {delay:.1f}s")
            time.sleep(delay)
            delay = min(delay * 2, 10.0)


def prepare_namespace(dsn: str, ns: str) -> None:
    """Create the namespace's schema and tables now, so a refusal is one line before the flow starts."""
    with PgWriter(dsn, ns) as writer:
        writer.ensure_schema()


def connect_check(dsn: str, timeout_s: int = 3) -> None:
    """Fail early, in one line and without the password, if PostgreSQL is unreachable."""
    try:
        psycopg.connect(dsn, connect_timeout=timeout_s).close()
    except psycopg.Error as exc:
        raise StoreError(f"cannot connect to PostgreSQL at {redact(dsn)}: "
                         f"{safe_reason(exc, dsn)}; start it with 'tally dev up' "
                         f"or pass --pg") from None


def drop_namespace(dsn: str, ns: str) -> None:
    """Remove a namespace's schema and everything in it (drills and tests start clean)."""
    with psycopg.connect(dsn, connect_timeout=CONNECT_TIMEOUT_S, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(
            sql.Identifier(validate_namespace(ns))))
