"""The human review queue over a namespace's ``decisions`` table (see sinks.postgres).

The engine owns the machine columns of a decision; a reviewer owns only the
review columns (review_status, resolution, resolved_by, resolved_at, note).
Nothing here changes a machine column, and the sink only ever inserts
(ON CONFLICT DO NOTHING), so a re-emitted decision never undoes a resolution.

Every resolve and reopen is also appended to ``review_log`` in the namespace's
schema (created on first use), so the row says where a decision stands and the
log says how it got there.  This module only ever inserts into the log.

Identifiers travel as ``sql.Identifier`` (the namespace validated first), values
as bind parameters.
"""

from __future__ import annotations

import json
import re
from contextlib import contextmanager
from datetime import datetime, timedelta
from typing import Iterator

import psycopg
from psycopg import errors, sql
from psycopg.rows import dict_row

from sinks.dsn import redact
from sinks.errors import StoreError
from sinks.postgres import RACES, CONNECT_TIMEOUT_S, safe_reason, validate_namespace
from state.currency import EXPONENTS
from state.decision import RESOLUTIONS

ID_PREFIX = re.compile(r"^[0-9a-f]{8,32}$")  # a full decision id is 32 hex characters

LOG_TABLE = """CREATE TABLE IF NOT EXISTS {}.review_log (
    id bigserial PRIMARY KEY,
    decision_id text NOT NULL,
    day date NOT NULL,
    action text NOT NULL CHECK (action IN ('resolve', 'reopen')),
    resolution text,
    "by" text NOT NULL,
    note text,
    at timestamptz NOT NULL DEFAULT now())"""

# What the listing returns, in this order.
LIST_COLUMNS = ["decision_id", "day", "exception_kind", "relation", "account", "currency",
                "amount_minor", "window_end", "reason", "member_event_ids"]
# Amounts are ranked as integers in 10^-MAJOR_DIGITS major units of their own currency.
MAJOR_DIGITS = max(EXPONENTS.values())
SCALES = json.dumps({code: 10 ** (MAJOR_DIGITS - e) for code, e in EXPONENTS.items()})
DONE_COLUMNS = ["decision_id", "day", "exception_kind", "account", "currency", "amount_minor",
                "review_status", "resolution", "resolved_by", "resolved_at", "note"]


# ----------------------------------------------------------------------------- connections

@contextmanager
def _connect(dsn: str, ns: str) -> Iterator[psycopg.Connection]:
    """A UTC session on the namespace; every failure becomes one line without the password.

    Autocommit, so that each ``conn.transaction()`` below is a real transaction
    (not a savepoint inside an implicit one) and holds its row lock no longer."""
    try:
        conn = psycopg.connect(dsn, connect_timeout=CONNECT_TIMEOUT_S, autocommit=True,
                               row_factory=dict_row)
    except psycopg.Error as exc:
        raise StoreError(f"cannot connect to PostgreSQL at {redact(dsn)}: "
                         f"{safe_reason(exc, dsn)}; start it with 'tally dev up' "
                         f"or pass --pg") from None
    try:
        with conn:
            conn.execute("SET TIME ZONE 'UTC'")
            yield conn
    except (errors.UndefinedTable, errors.InvalidSchemaName):
        raise StoreError(f"namespace {ns} has no decisions in PostgreSQL at {redact(dsn)}") from None
    except psycopg.Error as exc:
        raise StoreError(f"PostgreSQL error on namespace {ns}: {safe_reason(exc, dsn)}") from None


def _table(ns: str, name: str) -> sql.Composed:
    return sql.SQL("{}.{}").format(sql.Identifier(ns), sql.Identifier(name))


def _ensure_log(conn: psycopg.Connection, ns: str) -> None:
    """CREATE TABLE IF NOT EXISTS in its own transaction; two first users may race once."""
    statement = sql.SQL(LOG_TABLE).format(sql.Identifier(ns))
    for attempt in (1, 2):
        try:
            with conn.transaction():
                conn.execute(statement)
            return
        except RACES:
            if attempt == 2:
                raise


def _full_id(conn: psycopg.Connection, ns: str, given: str) -> tuple[str, object]:
    """(decision_id, day) for a full id or a unique prefix of at least 8 hex characters."""
    prefix = given.strip().lower()
    if not ID_PREFIX.match(prefix):
        raise StoreError(f"decision id {given!r} is not 8 to 32 hex characters")
    # A prefix is hex only, so it holds no LIKE wildcards.
    rows = conn.execute(sql.SQL(
        "SELECT decision_id, day FROM {} WHERE decision_id LIKE %s ORDER BY 1 LIMIT 3"
    ).format(_table(ns, "decisions")), (prefix + "%",)).fetchall()
    if not rows:
        raise StoreError(f"no decision {prefix} in namespace {ns}")
    if len(rows) > 1:
        shown = ", ".join(r["decision_id"] for r in rows[:2])
        raise StoreError(f"decision id prefix {prefix} is ambiguous in namespace {ns} "
                         f"(matches {shown}{', ...' if len(rows) > 2 else ''}); give more characters")
    return rows[0]["decision_id"], rows[0]["day"]


# ----------------------------------------------------------------------------- the queue

def open_exceptions(dsn: str, ns: str, kind: str | None = None, account: str | None = None,
                    limit: int = 50, as_of: datetime | None = None,
                    relation: str | None = None) -> list[dict]:
    """Open exceptions, most urgent first, at most `limit`.

    Ranking (a total order, so the same data always lists the same way):

    1. ``day`` ascending: the UTC day of window_end is the age bucket.  Anything
       left over from an earlier day is past its daily close and comes first.
    2. Within a day, the absolute amount in major units of its own currency,
       largest first (no amount last).  Major units, not minor ones, so that
       JPY 5,000 does not rank like EUR 5,000.00; there is no FX conversion, so
       this is "bigger first", not an exact value comparison.  A currency
       without a known exponent counts its minor units as major.
    3. ``window_end`` ascending, then ``decision_id``: ties broken oldest first,
       then by the unique id.

    Each row has LIST_COLUMNS and ``age``, a timedelta: `as_of` - window_end.
    `as_of` defaults to the newest window_end in the namespace (any decision,
    not only exceptions), not the wall clock: the listing is then a function of
    the data alone (the same on every run and in a replay namespace), and age
    means "how far behind the stream's frontier", which stays right when the
    flow lags or a day is replayed later.
    """
    validate_namespace(ns)
    with _connect(dsn, ns) as conn:
        column = _relation_column(conn, ns)
        conditions, params = _filters(kind, account, relation, column)
        params |= {"scales": SCALES, "unknown": 10 ** MAJOR_DIGITS, "limit": max(limit, 0)}
        columns = [sql.SQL("{} AS relation").format(column) if c == "relation"
                   else sql.Identifier("d", c) for c in LIST_COLUMNS]
        # Each row's scale is looked up in a jsonb object: joining every row against the table
        # of codes took 4.9 s on 600,000 open exceptions, this 0.5 s, for the same order.
        query = sql.SQL(
            "SELECT {columns} FROM {decisions} d"
            " WHERE {conditions}"
            " ORDER BY d.day, abs(d.amount_minor)::numeric"
            " * coalesce((%(scales)s::jsonb ->> d.currency)::bigint, %(unknown)s) DESC NULLS LAST,"
            " d.window_end, d.decision_id"
            " LIMIT %(limit)s"
        ).format(columns=sql.SQL(", ").join(columns), decisions=_table(ns, "decisions"),
                 conditions=sql.SQL(" AND ").join(conditions))
        rows = conn.execute(query, params).fetchall()
        if as_of is None:
            as_of = newest_window_end(conn, ns)
    return [r | {"age": as_of - r["window_end"] if as_of else timedelta(0)} for r in rows]


def _filters(kind: str | None, account: str | None, relation: str | None,
             relation_column: sql.Composable) -> tuple[list[sql.Composable], dict]:
    """The WHERE conditions (on alias d) and their parameters shared by the listing and counts."""
    conditions, params = [sql.SQL("d.review_status = 'open'")], {}
    if kind is not None:
        conditions.append(sql.SQL("d.exception_kind = %(kind)s"))
        params["kind"] = kind
    if account is not None:
        conditions.append(sql.SQL("d.account = %(account)s"))
        params["account"] = account
    if relation is not None:
        conditions.append(sql.SQL("{} = %(relation)s").format(relation_column))
        params["relation"] = relation
    return conditions, params


def _relation_column(conn: psycopg.Connection, ns: str) -> sql.Composable:
    """d.relation, or NULL in a namespace made before relations that no writer has upgraded
    yet (sinks.postgres ADDED_DECISION_COLUMNS): its exceptions are of no relation."""
    found = conn.execute(
        "SELECT 1 FROM information_schema.columns WHERE table_schema = %s"
        " AND table_name = 'decisions' AND column_name = 'relation'", (ns,)).fetchone()
    return sql.SQL("d.relation") if found else sql.SQL("NULL::text")


def newest_window_end(conn: psycopg.Connection, ns: str) -> datetime | None:
    """The newest window_end of any decision: where the stream's decisions have got to."""
    # The newest window_end lies on the newest day; the day bound lets PostgreSQL read one partition.
    decisions = _table(ns, "decisions")
    return conn.execute(sql.SQL(
        "SELECT max(window_end) AS newest FROM {} WHERE day = (SELECT max(day) FROM {})"
    ).format(decisions, decisions)).fetchone()["newest"]


def open_counts(dsn: str, ns: str, kind: str | None = None, account: str | None = None,
                relation: str | None = None) -> dict[str, int]:
    """Open exceptions per exception_kind (same filters as `open_exceptions`), by kind."""
    validate_namespace(ns)
    with _connect(dsn, ns) as conn:
        conditions, params = _filters(kind, account, relation, _relation_column(conn, ns))
        query = sql.SQL(
            "SELECT coalesce(d.exception_kind, '-') AS kind, count(*) AS n FROM {} d"
            " WHERE {} GROUP BY 1 ORDER BY 1"
        ).format(_table(ns, "decisions"), sql.SQL(" AND ").join(conditions))
        rows = conn.execute(query, params).fetchall()
    return {r["kind"]: r["n"] for r in rows}


# ----------------------------------------------------------------------------- resolving

def _locked(conn: psycopg.Connection, ns: str, decision_id: str, day) -> dict:
    """The decision's row, locked until the transaction ends: the second of two reviewers
    waits here, then sees the first one's resolution."""
    return conn.execute(sql.SQL(
        "SELECT kind, review_status, resolution, resolved_by, resolved_at FROM {}"
        " WHERE day = %s AND decision_id = %s FOR UPDATE"
    ).format(_table(ns, "decisions")), (day, decision_id)).fetchone()


def _change(conn, ns: str, decision_id: str, day, action: str, resolution: str | None,
            by: str, note: str) -> dict:
    """Set the review columns of one decision and log it, in the caller's transaction."""
    resolving = action == "resolve"
    row = conn.execute(sql.SQL(
        "UPDATE {} SET review_status = %s, resolution = %s, resolved_by = %s,"
        " resolved_at = CASE WHEN %s THEN now() END, note = %s"
        " WHERE day = %s AND decision_id = %s RETURNING {}"
    ).format(_table(ns, "decisions"), sql.SQL(", ").join(map(sql.Identifier, DONE_COLUMNS))),
        ("resolved" if resolving else "open", resolution, by if resolving else None, resolving,
         note if resolving else None, day, decision_id)).fetchone()
    conn.execute(sql.SQL(
        'INSERT INTO {} (decision_id, day, action, resolution, "by", note)'
        " VALUES (%s, %s, %s, %s, %s, %s)"
    ).format(_table(ns, "review_log")), (decision_id, day, action, resolution, by, note))
    return row


def _who(by: str, note: str) -> tuple[str, str]:
    by, note = (by or "").strip(), (note or "").strip()
    if not by:
        raise StoreError("a reviewer name is required (--by, or set TALLY_REVIEWER)")
    if not note:
        raise StoreError("a note is required: say why, for whoever reads this decision next")
    return by, note


def resolve(dsn: str, ns: str, decision_id: str, resolution: str, by: str, note: str) -> dict:
    """Record a human resolution of an open exception; returns the row's DONE_COLUMNS."""
    if resolution not in RESOLUTIONS:
        raise StoreError(f"unknown resolution {resolution!r}: use one of {', '.join(RESOLUTIONS)}")

    def refuse(full: str, row: dict) -> None:
        if row["review_status"] == "resolved":
            raise StoreError(
                f"decision {full} is already resolved as {row['resolution']} by "
                f"{row['resolved_by']} at {_iso(row['resolved_at'])}; to change it, reopen it "
                f"first: tally review reopen {full} --namespace {ns} --note TEXT")

    return _act(dsn, ns, decision_id, "resolve", resolution, by, note, refuse)


def reopen(dsn: str, ns: str, decision_id: str, by: str, note: str) -> dict:
    """Put a resolved exception back in the queue (resolution fields cleared), logged."""
    def refuse(full: str, row: dict) -> None:
        if row["review_status"] == "open":
            raise StoreError(f"decision {full} is already open")

    return _act(dsn, ns, decision_id, "reopen", None, by, note, refuse)


def _act(dsn: str, ns: str, decision_id: str, action: str, resolution: str | None, by: str,
         note: str, refuse) -> dict:
    """One review action on one exception, under its row lock: `refuse` may veto it."""
    validate_namespace(ns)
    by, note = _who(by, note)
    with _connect(dsn, ns) as conn:
        full, day = _full_id(conn, ns, decision_id)
        _ensure_log(conn, ns)
        with conn.transaction():
            row = _locked(conn, ns, full, day)
            if row["kind"] != "exception":
                raise StoreError(f"decision {full} is a {row['kind']}: there is nothing to review")
            refuse(full, row)
            return _change(conn, ns, full, day, action, resolution, by, note)


def history(dsn: str, ns: str, decision_id: str) -> list[dict]:
    """The review_log entries of one decision, oldest first (empty if never reviewed)."""
    validate_namespace(ns)
    with _connect(dsn, ns) as conn:
        full, _ = _full_id(conn, ns, decision_id)
        if conn.execute("SELECT to_regclass(%s) AS t",
                        (_table(ns, "review_log").as_string(conn),)).fetchone()["t"] is None:
            return []
        return conn.execute(sql.SQL(
            'SELECT id, decision_id, day, action, resolution, "by", note, at FROM {}'
            " WHERE decision_id = %s ORDER BY id"
        ).format(_table(ns, "review_log")), (full,)).fetchall()


def _iso(moment: datetime | None) -> str:
    return moment.isoformat().replace("+00:00", "Z") if moment else "an unknown time"
