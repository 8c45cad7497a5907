"""sinks.postgres against the session's real PostgreSQL (never mocked)."""

from __future__ import annotations

import re
import subprocess
import sys
import threading
import time
from datetime import date, datetime, timezone
from urllib.parse import quote

import msgspec
import psycopg
import pyarrow as pa
import pytest
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from flows.logs import UserError
from sinks.columns import columns
from sinks.parquet import DECISIONS_SCHEMA, FATES_SCHEMA, decisions_table, fates_table, write_by_day
from sinks.postgres import (ADDED_DECISION_COLUMNS, DECISION_COLUMNS, FATE_COLUMNS, PgWriter,
                            WriterFactory, connect_check, validate_namespace, write_with_retry)
from sinks.stores import DECISION_FIELDS, ParquetStore, PostgresStore
from state.decision import Candidate, Decision, Fate
from tests.flow_helpers import engine_rows, read_decisions, read_fates
from tests.samples import US, exception, match, namespace

DAY1 = int(datetime(2026, 11, 21, 10, tzinfo=timezone.utc).timestamp()) * US
DAY2 = int(datetime(2026, 11, 22, 23, 59, 59, tzinfo=timezone.utc).timestamp()) * US + 999_999


def fates_of(d: Decision, outcome: str = "matched") -> list[Fate]:
    fates = []
    for event, ref in zip(d.member_event_ids, d.member_refs):
        topic, partition, offset = ref.split(":")
        fates.append(Fate(topic, int(partition), int(offset), event.split(":")[0],
                          event.split(":")[1], outcome, d.decision_id, d.window_end))
    return fates


def batch():
    decisions = [match(1, DAY1), match(2, DAY2), exception(3, DAY1)]
    fates = [f for d in decisions for f in fates_of(d)]
    return decisions, fates


def writer(dsn: str, ns: str) -> PgWriter:
    w = PgWriter(dsn, ns)
    w.ensure_schema()
    return w


def partitions(dsn: str, ns: str) -> list[str]:
    with psycopg.connect(dsn) as conn:
        return [r[0] for r in conn.execute(
            "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid"
            " JOIN pg_namespace n ON n.oid = c.relnamespace"
            " WHERE n.nspname = %s AND c.relkind = 'r' ORDER BY 1", (ns,))]


def test_columns_match_parquet():
    assert [name for name, _ in DECISION_COLUMNS] == DECISIONS_SCHEMA.names
    assert [name for name, _ in FATE_COLUMNS] == FATES_SCHEMA.names


def test_schema_partitions_and_values(pg_dsn):
    ns = namespace()
    decisions, fates = batch()
    with writer(pg_dsn, ns) as w:
        assert w.write(decisions, fates) == (3, 5)
    assert partitions(pg_dsn, ns) == ["decisions_20261121", "decisions_20261122",
                                      "fates_20261121", "fates_20261122"]

    rows = read_decisions(pg_dsn, ns)
    assert [r["decision_id"] for r in rows] == sorted(d.decision_id for d in decisions)
    by_id = {r["decision_id"]: r for r in rows}
    late = by_id[decisions[1].decision_id]  # 23:59:59.999999 stays on its own day
    assert late["day"] == date(2026, 11, 22)
    assert late["window_end"] == datetime(2026, 11, 22, 23, 59, 59, 999_999, tzinfo=timezone.utc)
    assert late["review_status"] is None and late["tier"] == 1
    exc = by_id[decisions[2].decision_id]
    assert exc["review_status"] == "open" and exc["day"] == date(2026, 11, 21)
    assert exc["candidates"] == [{"event": "ledger:l1", "ref": "ledger-tx:0:1", "confidence": 0.5},
                                 {"event": "ledger:l2", "ref": "ledger-tx:0:2", "confidence": 0.25}]
    assert exc["missing_sources"] == ["ledger"] and exc["tier"] is None
    assert exc["amount_minor"] == -250 and exc["raw_base64"] == "eyJhIjoxfQ=="

    stored = read_fates(pg_dsn, ns)
    assert [(f["topic"], f["partition"], f["offset"]) for f in stored] == \
        sorted((f.topic, f.partition, f.offset) for f in fates)
    assert {f["day"] for f in stored} == {date(2026, 11, 21), date(2026, 11, 22)}


def test_same_batch_twice_inserts_once(pg_dsn):
    ns = namespace()
    decisions, fates = batch()
    with writer(pg_dsn, ns) as w:
        assert w.write(decisions, fates) == (3, 5)
        assert w.write(decisions, fates) == (0, 0)
        assert w.write(decisions + decisions, fates + fates) == (0, 0)
    with writer(pg_dsn, ns) as w:  # a restart: partitions known from the catalog
        assert len(w._partitions) == 4
        assert w.write(decisions, fates) == (0, 0)
    assert len(read_decisions(pg_dsn, ns)) == 3 and len(read_fates(pg_dsn, ns)) == 5


def test_duplicates_within_one_batch(pg_dsn):
    d = match(7, DAY1)
    with writer(pg_dsn, namespace()) as w:
        assert w.write([d, d], fates_of(d) * 2) == (1, 2)


def test_human_resolution_survives_rewrite(pg_dsn):
    ns = namespace()
    decisions, fates = batch()
    target = decisions[2].decision_id
    with writer(pg_dsn, ns) as w:
        w.write(decisions, fates)
    with psycopg.connect(pg_dsn) as conn:
        conn.execute(f"UPDATE {ns}.decisions SET review_status = 'resolved', resolved_by = %s,"
                     " resolved_at = now(), resolution = 'matched by hand', note = %s"
                     " WHERE decision_id = %s", ("alice", "ledger l2 is it", target))
    with writer(pg_dsn, ns) as w:
        assert w.write(decisions, fates) == (0, 0)
    row = {r["decision_id"]: r for r in read_decisions(pg_dsn, ns)}[target]
    assert (row["review_status"], row["resolved_by"], row["note"], row["resolution"]) == \
        ("resolved", "alice", "ledger l2 is it", "matched by hand")


@pytest.mark.parametrize("bad", ["x; drop", "../etc", "Upper", "", "1abc", "a-b", "a" * 49,
                                 "pg_catalog", "information_schema", "é"])
def test_bad_namespaces_rejected(pg_dsn, bad):
    with pytest.raises(ValueError) as info:
        validate_namespace(bad)
    assert "\n" not in str(info.value)
    with pytest.raises(ValueError):
        PgWriter(pg_dsn, bad)


def test_good_namespaces():
    for ok in ["tally", "_x", "a" * 48, "prod_eu_1"]:
        assert validate_namespace(ok) == ok


def test_pending_fates_rejected(pg_dsn):
    d = match(1, DAY1)
    pending = Fate("bank-tx", 0, 99, "bank", "b99", "pending", None, None)
    with writer(pg_dsn, namespace()) as w:
        with pytest.raises(ValueError, match="pending"):
            w.write([d], fates_of(d) + [pending])
        assert w.write([d], fates_of(d)) == (1, 2)  # nothing was half-written


def test_twenty_thousand_rows(pg_dsn, report):
    ns = namespace()
    days = [DAY1 + k * 86_400 * US for k in range(5)]
    decisions = [match(n, days[n % 5]) if n % 4 else exception(n, days[n % 5])
                 for n in range(10_000)]
    fates = [f for d in decisions for f in fates_of(d)][:10_000]
    with writer(pg_dsn, ns) as w:
        warm = [match(100_000 + k, day) for k, day in enumerate(days)]
        w.write(warm, [f for d in warm for f in fates_of(d)])  # partitions first: time rows only
        start = time.perf_counter()
        counts = w.write(decisions, fates)
        elapsed = time.perf_counter() - start
    assert counts == (10_000, 10_000)
    rate = 20_000 / elapsed
    print(f"postgres sink: 20000 rows in {elapsed:.3f}s, {rate:,.0f} rows/s")
    report(f"postgres sink: 20000 rows (10k decisions + 10k fates) in {elapsed:.3f}s, "
           f"{rate:,.0f} rows/s")
    assert len(partitions(pg_dsn, ns)) == 10


def test_concurrent_writers_create_the_same_partitions(pg_dsn):
    ns = namespace()
    days = [DAY1 + k * 86_400 * US for k in range(20)]
    decisions = [match(n, days[n % 20]) for n in range(200)]
    fates = [f for d in decisions for f in fates_of(d)]
    writer(pg_dsn, ns).close()
    barrier, results, failures = threading.Barrier(2), [], []

    def run(order):
        try:
            with PgWriter(pg_dsn, ns) as w:
                w.ensure_schema()
                barrier.wait()
                results.append(w.write(decisions[::order], fates[::order]))
        except Exception as exc:  # noqa: BLE001 - reported below
            failures.append(exc)

    threads = [threading.Thread(target=run, args=(o,)) for o in (1, -1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not failures, failures
    assert sum(r[0] for r in results) == 200 and sum(r[1] for r in results) == 400
    assert len(partitions(pg_dsn, ns)) == 40


def test_write_with_retry_reconnects(pg_dsn):
    ns = namespace()
    factory, lines = WriterFactory(pg_dsn, ns), []
    first = factory()
    with psycopg.connect(pg_dsn, autocommit=True) as admin:
        admin.execute("SELECT pg_terminate_backend(%s)", (first.conn.info.backend_pid,))
    decisions, fates = batch()
    assert write_with_retry(factory, decisions, fates, 10, lines.append) == (3, 5)
    assert len(lines) == 1 and "reconnecting" in lines[0]
    assert factory() is not first and first.closed
    password = re.search(r"://[^:]+:([^@]+)@", pg_dsn).group(1)
    assert password not in lines[0]
    factory.close()


def test_write_with_retry_with_a_plain_factory(pg_dsn):
    """The calling convention of sinks.pg_sink: factory(fresh), default logging."""
    ns = namespace()
    held = {"w": writer(pg_dsn, ns)}

    def factory(fresh: bool) -> PgWriter:
        if fresh:
            held["w"] = writer(pg_dsn, ns)
        return held["w"]

    with psycopg.connect(pg_dsn, autocommit=True) as admin:
        admin.execute("SELECT pg_terminate_backend(%s)", (held["w"].conn.info.backend_pid,))
    decisions, fates = batch()
    assert write_with_retry(factory, decisions, fates, 10) == (3, 5)
    assert write_with_retry(factory, decisions, fates, 10) == (0, 0)
    held["w"].close()


def test_write_with_retry_gives_up(pg_dsn):
    dead = re.sub(r":\d+/", ":1/", pg_dsn)  # nothing listens on port 1
    lines = []
    start = time.monotonic()
    with pytest.raises(UserError) as info:
        write_with_retry(WriterFactory(dead, namespace()), *batch(), 1.0, lines.append)
    assert time.monotonic() - start < 5
    assert lines and "***" in lines[0]
    password = re.search(r"://[^:]+:([^@]+)@", pg_dsn).group(1)
    assert password not in str(info.value) and all(password not in line for line in lines)


def test_connect_check(pg_dsn):
    connect_check(pg_dsn)
    wrong = "not-the-password-4711"
    bad = re.sub(r"(://[^:]+:)[^@]+@", rf"\g<1>{wrong}@", pg_dsn)
    with pytest.raises(UserError) as info:
        connect_check(bad)
    text = str(info.value)
    assert wrong not in text and "\n" not in text
    assert "cannot connect to PostgreSQL at" in text and "tally dev up" in text
    print(text)


def settled(n: int) -> Decision:
    """A match of a relation, with the fee the processor withheld."""
    return msgspec.structs.replace(match(n, DAY1), relation="payments", fee_minor=123)


def test_relation_and_fee_read_back_equal_from_both_stores(pg_dsn, tmp_path):
    ns = namespace()
    decisions = [settled(1), exception(2, DAY2)]  # the exception: no relation, no fee
    expected = engine_rows(decisions, [])[0]
    with writer(pg_dsn, ns) as w:
        w.write(decisions, [])
    write_by_day(decisions_table(decisions), tmp_path / ns / "decisions", "part.parquet")
    with PostgresStore(pg_dsn, ns) as pg:
        assert sorted(pg.decisions()) == expected
    assert sorted(ParquetStore(tmp_path, ns).decisions()) == expected
    rows = {r[0]: dict(zip(DECISION_FIELDS, r)) for r in expected}
    assert (rows[decisions[0].decision_id]["relation"], rows[decisions[0].decision_id]["fee_minor"]) \
        == ("payments", 123)


def test_a_namespace_from_before_relations_gains_the_columns(pg_dsn):
    ns = namespace()
    old = match(1, DAY1)
    with writer(pg_dsn, ns) as w:
        w.write([old], fates_of(old))
    with psycopg.connect(pg_dsn, autocommit=True) as admin:
        admin.execute(f"ALTER TABLE {ns}.decisions DROP COLUMN relation, DROP COLUMN fee_minor")
    with PostgresStore(pg_dsn, ns) as pg:  # read before any writer upgraded it: NULLs
        assert [dict(zip(DECISION_FIELDS, r))["relation"] for r in pg.decisions()] == [None]
        assert pg.decision_rows()[0]["fee_minor"] is None
    new = settled(2)
    with writer(pg_dsn, ns) as w:
        assert w.write([new], fates_of(new)) == (1, 2)
    with PostgresStore(pg_dsn, ns) as pg:
        assert sorted(pg.decisions()) == engine_rows([old, new], [])[0]
    with psycopg.connect(pg_dsn) as conn:  # the day partitions have them too
        columns = [r[0] for r in conn.execute(
            "SELECT column_name FROM information_schema.columns WHERE table_schema = %s"
            " AND table_name = 'decisions_20261121' AND column_name IN ('relation', 'fee_minor')"
            " ORDER BY 1", (ns,))]
    assert columns == ["fee_minor", "relation"]


def test_parquet_files_from_before_relations_read_as_nulls(tmp_path):
    old_schema = pa.schema([f for f in DECISIONS_SCHEMA if f.name not in ADDED_DECISION_COLUMNS])
    table = decisions_table([match(1, DAY1)]).select(old_schema.names)
    write_by_day(table, tmp_path / "ns" / "decisions", "part.parquet")
    assert ParquetStore(tmp_path, "ns").decisions() == engine_rows([match(1, DAY1)], [])[0]


# -- writing from Arrow columns with ADBC (issue 20) ----------------------------

# The schema of record, as information_schema gave it before the writes went through ADBC
# (psycopg's COPY of Python rows): other tools read these tables.
SCHEMA_OF_RECORD = [
    ("decisions", "decision_id", "text", "NO"), ("decisions", "kind", "text", "NO"),
    ("decisions", "tier", "int2", "YES"), ("decisions", "exception_kind", "text", "YES"),
    ("decisions", "account", "text", "YES"), ("decisions", "currency", "text", "YES"),
    ("decisions", "amount_minor", "int8", "YES"), ("decisions", "confidence", "float8", "YES"),
    ("decisions", "member_event_ids", "_text", "NO"), ("decisions", "member_refs", "_text", "NO"),
    ("decisions", "window_start", "timestamptz", "NO"),
    ("decisions", "window_end", "timestamptz", "NO"),
    ("decisions", "missing_sources", "_text", "NO"), ("decisions", "candidates", "jsonb", "NO"),
    ("decisions", "reason", "text", "YES"), ("decisions", "raw_base64", "text", "YES"),
    ("decisions", "relation", "text", "YES"), ("decisions", "fee_minor", "int8", "YES"),
    ("decisions", "day", "date", "NO"), ("decisions", "review_status", "text", "YES"),
    ("decisions", "resolved_by", "text", "YES"), ("decisions", "resolved_at", "timestamptz", "YES"),
    ("decisions", "resolution", "text", "YES"), ("decisions", "note", "text", "YES"),
    ("decisions", "written_at", "timestamptz", "NO"),
    ("fates", "topic", "text", "NO"), ("fates", "partition", "int4", "NO"),
    ("fates", "offset", "int8", "NO"), ("fates", "source", "text", "YES"),
    ("fates", "event_id", "text", "YES"), ("fates", "outcome", "text", "NO"),
    ("fates", "decision_id", "text", "YES"), ("fates", "window_end", "timestamptz", "NO"),
    ("fates", "day", "date", "NO"),
]


def column_types(dsn: str, ns: str) -> dict[str, list[tuple]]:
    """Every table's (table, column, type, nullable) in order, day partitions included."""
    with psycopg.connect(dsn) as conn:
        rows = conn.execute(
            "SELECT table_name, column_name, udt_name, is_nullable FROM information_schema.columns"
            " WHERE table_schema = %s ORDER BY table_name, ordinal_position", (ns,)).fetchall()
    tables: dict[str, list[tuple]] = {}
    for table, *column in rows:
        tables.setdefault(table, []).append((table.split("_")[0], *column))
    return tables


def varied() -> tuple[list[Decision], list[Fate]]:
    """Every kind of value a column holds: NULLs, negative and large integers, a confidence
    that is not short in decimal, microseconds, non-ASCII text, empty and full lists."""
    decisions = [match(1, DAY1), exception(2, DAY2), settled(3),
                 msgspec.structs.replace(exception(4, DAY1), amount_minor=-(2 ** 62),
                                         confidence=1 / 3, account="kontø 7", missing_sources=[],
                                         candidates=[Candidate("bank:b✓", "bank-tx:2:9", 0.1 + 0.2)])]
    fates = [f for d in decisions for f in fates_of(d)]
    fates.append(Fate("bank-tx", 2, 2 ** 40, None, None, "heartbeat", None, DAY2))
    return decisions, fates


def table_rows(dsn: str, ns: str) -> dict[str, list[tuple]]:
    """Everything stored, written_at included: a rewrite must not touch a stored row."""
    with psycopg.connect(dsn) as conn:
        return {table: conn.execute(f"SELECT * FROM {ns}.{table} ORDER BY 1, 2, 3").fetchall()
                for table in ("decisions", "fates")}


def test_column_types_are_the_schema_of_record(pg_dsn):
    ns = namespace()
    with writer(pg_dsn, ns) as w:
        w.write(*varied())
    tables = column_types(pg_dsn, ns)
    assert tables["decisions"] + tables["fates"] == SCHEMA_OF_RECORD
    for name, columns in tables.items():  # every day partition has its parent's columns
        assert columns == tables[name.split("_")[0]], name


def test_a_resumed_epoch_leaves_the_same_rows(pg_dsn, tmp_path):
    ns = namespace()
    decisions, fates = varied()
    with writer(pg_dsn, ns) as w:
        assert w.write(decisions, fates) == (4, len(fates))
    first = table_rows(pg_dsn, ns)
    with writer(pg_dsn, ns) as w:  # the resumed epoch, in a new process: the same outputs again
        assert w.write_columns(columns(decisions, fates)) == (0, 0)
        assert w.write(decisions[::-1], fates[::-1]) == (0, 0)
    assert table_rows(pg_dsn, ns) == first
    expected = engine_rows(decisions, fates)
    write_by_day(decisions_table(decisions), tmp_path / ns / "decisions", "part.parquet")
    write_by_day(fates_table(fates), tmp_path / ns / "fates", "part.parquet")
    with PostgresStore(pg_dsn, ns) as pg:
        assert (sorted(pg.decisions()), sorted(pg.fates())) == expected
    parquet = ParquetStore(tmp_path, ns)
    assert (sorted(parquet.decisions()), sorted(parquet.fates())) == expected


def test_write_with_retry_reconnects_when_the_bulk_connection_dies(pg_dsn):
    ns = namespace()
    factory, lines = WriterFactory(pg_dsn, ns), []
    first = factory()
    decisions, fates = varied()
    assert write_with_retry(factory, decisions, fates, 10, lines.append) == (4, len(fates))
    with first.bulk.cursor() as cur:
        cur.execute("SELECT pg_backend_pid()")
        (pid,) = cur.fetchone()
    first.bulk.commit()
    with psycopg.connect(pg_dsn, autocommit=True) as admin:
        admin.execute("SELECT pg_terminate_backend(%s)", (pid,))
    later = match(5, DAY1)  # its day partition exists: only the bulk connection is used
    assert write_with_retry(factory, [later], fates_of(later), 10, lines.append) == (1, 2)
    assert len(lines) == 1 and "reconnecting" in lines[0] and "\n" not in lines[0]
    password = re.search(r"://[^:]+:([^@]+)@", pg_dsn).group(1)
    assert password not in lines[0]
    assert first.closed and factory() is not first
    factory.close()


@pytest.mark.parametrize("form", ["uri", "key=value"])
def test_a_password_with_spaces_quotes_and_at_signs_reaches_both_connections(pg_dsn, form):
    """The ADBC connection gets the DSN through psycopg's parsing, not by string splicing."""
    role, password = f"odd_{form.replace('=', '_')}", "p a's\\s@w:rd/?"
    ns = namespace()
    parts = conninfo_to_dict(pg_dsn)
    with psycopg.connect(pg_dsn, autocommit=True) as admin:
        admin.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(role)))
        admin.execute(sql.SQL("CREATE ROLE {} LOGIN PASSWORD {}").format(
            sql.Identifier(role), sql.Literal(password)))
        admin.execute(sql.SQL("CREATE SCHEMA {} AUTHORIZATION {}").format(
            sql.Identifier(ns), sql.Identifier(role)))
    if form == "uri":
        dsn = (f"postgresql://{role}:{quote(password, safe='')}@{parts['host']}:{parts['port']}"
               f"/{parts['dbname']}")
    else:
        dsn = make_conninfo("", user=role, password=password, host=parts["host"],
                            port=parts["port"], dbname=parts["dbname"])
    with writer(dsn, ns) as w:
        assert w.write(*batch()) == (3, 5)
    wrong = dsn.replace(quote(password, safe="") if form == "uri" else "s@w", "x")
    with pytest.raises(UserError) as info:
        write_with_retry(WriterFactory(wrong, ns), *batch(), 0.1, lambda line: None)
    assert password not in str(info.value) and "\n" not in str(info.value)


SIGINT_DURING_A_WRITE = """
import os, signal, sys, threading
from sinks.postgres import bulk_connect
signal.signal(signal.SIGINT, signal.default_int_handler)  # as `tally run` does
conn = bulk_connect(sys.argv[1])
threading.Timer(0.5, os.kill, (os.getpid(), signal.SIGINT)).start()
try:
    conn.cursor().execute("SELECT pg_sleep(3)")
    print("finished")
except BaseException as exc:
    print(type(exc).__name__)
"""


def test_a_sigint_during_a_bulk_write_is_an_interrupt_not_a_retried_cancel(pg_dsn):
    """ADBC swaps in its own SIGINT handler for a blocking call and cancels the statement:
    the write then failed as a lost connection, write_with_retry wrote it again, and a
    live run that got SIGINT mid-write never stopped. Ours stays: the write ends, then
    the interrupt is raised."""
    ran = subprocess.run([sys.executable, "-c", SIGINT_DURING_A_WRITE, pg_dsn],
                         capture_output=True, text=True, timeout=60)
    assert ran.stdout.split() == ["KeyboardInterrupt"], ran.stdout + ran.stderr
