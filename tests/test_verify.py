"""`tally verify` and `tally digest` against the session's real PostgreSQL and real Parquet."""

from __future__ import annotations

from datetime import datetime, timezone

from psycopg.conninfo import conninfo_to_dict

from flows.checks import verify
from sinks import compare, parquet
from sinks.postgres import PgWriter
from state.decision import Decision, Fate, decision_id
from tests.flow_helpers import tally
from tests.samples import US, exception, match, namespace

DAY1 = int(datetime(2026, 3, 1, 10, tzinfo=timezone.utc).timestamp()) * US
DAY2 = int(datetime(2026, 3, 2, 23, 59, 59, tzinfo=timezone.utc).timestamp()) * US + 999_999
DAY2_START = "2026-03-02T00:00:00Z"


def mismatch(n: int, window_end: int) -> Decision:
    """The same records as match(n), decided as an amount mismatch instead."""
    m = match(n, window_end)
    return Decision(decision_id=decision_id("exception", m.member_event_ids, m.member_refs),
                    kind="exception", tier=None, exception_kind="amount_mismatch",
                    account="A1", currency="EUR", amount_minor=m.amount_minor, confidence=None,
                    member_event_ids=m.member_event_ids, member_refs=m.member_refs,
                    window_start=m.window_start, window_end=window_end,
                    reason="amounts differ by 3")


def fates_of(decisions: list[Decision]) -> list[Fate]:
    fates = []
    for d in decisions:
        outcome = "matched" if d.kind == "match" else "exception"
        for event, ref in zip(d.member_event_ids, d.member_refs):
            topic, partition, offset = ref.split(":")
            source, event_id = event.split(":")
            fates.append(Fate(topic, int(partition), int(offset), source, event_id, outcome,
                              d.decision_id, d.window_end))
    return fates


def write_pg(dsn: str, decisions: list[Decision]) -> str:
    ns = namespace()
    with PgWriter(dsn, ns) as writer:
        writer.ensure_schema()
        writer.write(decisions, fates_of(decisions))
    return ns


def write_parquet(data_dir, decisions: list[Decision]) -> str:
    ns = namespace()
    root = data_dir / ns
    parquet.write_by_day(parquet.decisions_table(decisions), root / "decisions",
                         "part0-000000000.parquet")
    parquet.write_by_day(parquet.fates_table(fates_of(decisions)), root / "fates",
                         "part0-000000000.parquet")
    return ns


# Day 1 differs between A and B (one outcome changed, one missing, one extra); day 2 does not.
A_SIDE = [match(1, DAY1), match(2, DAY1), match(3, DAY2), exception(4, DAY2)]
B_SIDE = [mismatch(1, DAY1), match(3, DAY2), exception(4, DAY2), match(5, DAY1)]


def canonical(decisions) -> list[tuple]:
    rows = parquet.decisions_table(list(decisions)).to_pylist()
    return [compare.canonical(r, compare.DECISION_FIELDS) for r in rows]


def sections(stdout: str) -> dict[str, str]:
    """The report's groups: each header line with the indented lines under it."""
    found, header = {}, None
    for line in stdout.splitlines():
        if line.startswith(" ") and header:
            found[header] += line + "\n"
        else:
            header = line.split(":")[0]
            found[header] = ""
    return found


def pg_env(dsn: str) -> dict:
    return {"TALLY_PG_DSN": dsn}


# ----------------------------------------------------------------------------- pure helpers

def test_fields_are_the_stored_columns():
    assert verify.DECISION_FIELDS == compare.DECISION_FIELDS
    assert verify.FATE_FIELDS == compare.FATE_FIELDS


def test_diverging_pairs_decisions_by_members_not_id():
    div = verify.diverging(canonical(A_SIDE), canonical(B_SIDE))
    ids = [r[0] for r in div.only_a], [r[0] for r in div.only_b]
    assert ids == ([A_SIDE[1].decision_id], [B_SIDE[3].decision_id])
    assert [(a[0], b[0]) for a, b in div.changed] == [(A_SIDE[0].decision_id,
                                                        B_SIDE[0].decision_id)]
    assert not verify.diverging(canonical(A_SIDE), canonical(list(reversed(A_SIDE))))
    assert verify.decisions_digest(canonical(A_SIDE)) == \
        compare.digest({r[0]: r for r in canonical(reversed(A_SIDE))})


def test_in_range_and_day_digests():
    rows = canonical(A_SIDE)
    since = verify.timestamp(DAY2_START)
    assert verify.in_range(rows, since, None) == rows[2:]
    assert verify.in_range(rows, None, since) == rows[:2]
    assert verify.in_range(rows, DAY1, DAY1 + 1) == rows[:2]  # from included, to excluded
    a, b = verify.day_digests(rows), verify.day_digests(canonical(B_SIDE))
    assert sorted(a) == ["2026-03-01", "2026-03-02"]
    assert a["2026-03-01"] != b["2026-03-01"] and a["2026-03-02"] == b["2026-03-02"]


def test_timestamp_needs_an_offset():
    assert verify.timestamp("2026-03-01T11:00:00+01:00") == DAY1
    for text in ("2026-03-01T10:00:00", "yesterday"):
        try:
            verify.timestamp(text)
        except Exception as err:
            assert "RFC 3339" in str(err)
        else:
            raise AssertionError(f"{text} accepted")


# ----------------------------------------------------------------------------- PostgreSQL

def test_identical_namespaces(pg_dsn):
    a, b = write_pg(pg_dsn, A_SIDE), write_pg(pg_dsn, A_SIDE)
    out = tally("verify", "--a", a, "--b", b, env=pg_env(pg_dsn)).stdout
    assert out.splitlines()[-1] == "IDENTICAL: 4 decisions, 7 fates over 2026-03-01..2026-03-02"
    assert "differs" not in out
    digests = [tally("digest", "--namespace", ns, env=pg_env(pg_dsn)).stdout.splitlines()[1:]
               for ns in (a, b)]
    assert digests[0] == digests[1]
    assert digests[0][0].startswith("decisions ") and digests[0][1].startswith("fates ")
    assert [line.split()[1] for line in digests[0][2:]] == ["2026-03-01", "2026-03-02"]


def test_diverging_namespaces_by_group(pg_dsn):
    a, b = write_pg(pg_dsn, A_SIDE), write_pg(pg_dsn, B_SIDE)
    out = tally("verify", "--a", a, "--b", b, env=pg_env(pg_dsn), expect=1).stdout
    groups = sections(out)
    assert A_SIDE[1].decision_id in groups["decisions only in A"]
    assert B_SIDE[3].decision_id in groups["decisions only in B"]
    changed = groups["same members, different outcome"]
    assert A_SIDE[0].decision_id in changed and B_SIDE[0].decision_id in changed
    assert "bank-tx:0:1 ledger-tx:0:1" in changed and "amount_mismatch" in changed
    for group in ("decisions only in A", "decisions only in B"):
        assert A_SIDE[0].decision_id not in groups[group]
    # the changed decision's two fates differ; the missing and extra ones have two each
    assert "fates: 2 only in A, 2 only in B, 2 different" in out
    assert "2026-03-01" in groups["decision digests per day of window_end (A, B)"]
    day_lines = groups["decision digests per day of window_end (A, B)"].splitlines()
    assert [line.endswith("<- differs") for line in day_lines] == [True, False]
    assert out.splitlines()[-1].startswith("DIFFERENT: decisions 1 only in A, 1 only in B, "
                                           "1 with a different outcome")


def test_range_leaves_out_differences(pg_dsn):
    a, b = write_pg(pg_dsn, A_SIDE), write_pg(pg_dsn, B_SIDE)
    env = pg_env(pg_dsn)
    out = tally("verify", "--a", a, "--b", b, "--from", DAY2_START, env=env).stdout
    assert out.splitlines()[-1] == \
        "IDENTICAL: 2 decisions, 3 fates over 2026-03-02T00:00:00Z..the end"
    tally("verify", "--a", a, "--b", b, "--to", DAY2_START, env=env, expect=1)
    tally("verify", "--a", a, "--b", b, "--from", "2026-03-01T10:00:00.000001Z",
          "--to", "2026-03-03T00:00:00+00:00", env=env)


def test_limit_caps_each_group(pg_dsn):
    a, b = write_pg(pg_dsn, A_SIDE), write_pg(pg_dsn, B_SIDE)
    out = tally("verify", "--a", a, "--b", b, "--limit", "0", env=pg_env(pg_dsn), expect=1).stdout
    assert "decisions only in A: 1 (first 0 shown)" in out
    assert A_SIDE[1].decision_id not in out


def test_errors_are_one_line(pg_dsn):
    a = write_pg(pg_dsn, A_SIDE)
    missing = namespace()
    result = tally("verify", "--a", a, "--b", missing, env=pg_env(pg_dsn), expect=2)
    assert result.stderr.strip().count("\n") == 0
    assert f"namespace {missing} does not exist in PostgreSQL" in result.stderr
    assert conninfo_to_dict(pg_dsn)["password"] not in result.stderr
    tally("digest", "--namespace", missing, env=pg_env(pg_dsn), expect=2)
    tally("verify", "--a", a, "--b", a, "--from", "2026-03-01", env=pg_env(pg_dsn), expect=2)
    result = tally("verify", "--a", a, "--b", a, "--from", DAY2_START, "--to", DAY2_START,
                   env=pg_env(pg_dsn), expect=2)
    assert "is not before" in result.stderr


def test_unreachable_postgres_is_one_line_without_password():
    dsn = "postgresql://tally:s3cret@127.0.0.1:1/tally"
    result = tally("digest", "--namespace", "live", env=pg_env(dsn), expect=2)
    assert result.stderr.strip().count("\n") == 0 and "s3cret" not in result.stderr


# ----------------------------------------------------------------------------- Parquet

def test_parquet_digest_equals_postgres_digest(pg_dsn, tmp_path):
    pg_ns, pq_ns = write_pg(pg_dsn, A_SIDE), write_parquet(tmp_path, A_SIDE)
    from_pg = tally("digest", "--namespace", pg_ns, env=pg_env(pg_dsn)).stdout
    from_pq = tally("digest", "--namespace", pq_ns, "--store", "parquet",
                    "--data-dir", str(tmp_path)).stdout
    assert from_pg.splitlines()[1:] == from_pq.splitlines()[1:]


def test_parquet_namespaces(tmp_path):
    a, b = write_parquet(tmp_path, A_SIDE), write_parquet(tmp_path, B_SIDE)
    same = write_parquet(tmp_path, A_SIDE)
    args = ("--store", "parquet", "--data-dir", str(tmp_path))
    tally("verify", "--a", a, "--b", same, *args)
    out = tally("verify", "--a", a, "--b", b, *args, expect=1).stdout
    assert B_SIDE[3].decision_id in sections(out)["decisions only in B"]
    tally("verify", "--a", a, "--b", b, "--from", DAY2_START, *args)
    result = tally("verify", "--a", a, "--b", namespace(), *args, expect=2)
    assert "does not exist in Parquet" in result.stderr


def test_parquet_repeated_rows_are_a_difference(tmp_path):
    """A file written twice (say, an orphan a restart failed to remove) doubles its rows."""
    a, b = write_parquet(tmp_path, A_SIDE), write_parquet(tmp_path, A_SIDE)
    for day_dir in (tmp_path / b / "decisions").glob("date=*"):
        (day_dir / "part1-000000000.parquet").write_bytes(
            (day_dir / "part0-000000000.parquet").read_bytes())
    out = tally("verify", "--a", a, "--b", b, "--store", "parquet", "--data-dir", str(tmp_path),
                expect=1).stdout
    assert "repeated decisions in B" in out and "4 repeated rows" in out.splitlines()[-1]
