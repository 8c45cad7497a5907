"""The review queue (sinks.review, flows.checks.review) against the session's real PostgreSQL."""

from __future__ import annotations

import argparse
import json
import re
import threading
import time
from datetime import datetime, timedelta, timezone

import psycopg
import pytest

from flows.checks import review as cli
from flows.cli.review import add_review
from flows.logs import UserError
from sinks import review
from sinks.postgres import DECISION_COLUMNS, PgWriter
from state.decision import Decision, decision_id
from tests.flow_helpers import read_decisions
from tests.samples import US, match, namespace

DAY1 = int(datetime(2026, 11, 21, 9, tzinfo=timezone.utc).timestamp()) * US
DAY2 = DAY1 + 86_400 * US
REVIEW_ONLY = {"review_status", "resolved_by", "resolved_at", "resolution", "note"}


def exc(n: int, window_end: int, kind: str = "missing_counterpart", account: str = "A1",
        currency: str | None = "EUR", amount_minor: int | None = 1000,
        reason: str | None = "no counterpart", did: str | None = None) -> Decision:
    members, refs = [f"bank:e{n}"], [f"bank-tx:2:{n}"]
    return Decision(decision_id=did or decision_id("exception", members, refs), kind="exception",
                    tier=None, exception_kind=kind, account=account, currency=currency,
                    amount_minor=amount_minor, confidence=None, member_event_ids=members,
                    member_refs=refs, window_start=window_end - 600 * US, window_end=window_end,
                    missing_sources=["ledger"], reason=reason)


def store(dsn: str, ns: str, decisions: list[Decision]) -> tuple[int, int]:
    with PgWriter(dsn, ns) as w:
        w.ensure_schema()
        return w.write(decisions, [])


def queue(dsn: str, ns: str, **kw) -> list[str]:
    return [r["decision_id"] for r in review.open_exceptions(dsn, ns, **kw)]


def machine_digest(dsn: str, ns: str, did: str) -> str:
    """md5 of the text of every non-review column (and day, written_at): byte for byte."""
    columns = ", ".join(f'"{name}"' for name, _ in DECISION_COLUMNS)
    with psycopg.connect(dsn) as conn:
        return conn.execute(f"SELECT md5(row({columns}, day, written_at)::text)"
                            f" FROM {ns}.decisions WHERE decision_id = %s", (did,)).fetchone()[0]


def password(dsn: str) -> str:
    return re.search(r"://[^:]+:([^@]+)@", dsn).group(1)


# A day whose ranking is known: DAY1 before DAY2, then the larger amount in major units.
OLD_SMALL = exc(1, DAY1 + 60 * US, amount_minor=10_000)  # EUR 100.00
OLD_YEN = exc(2, DAY1 + 120 * US, currency="JPY", amount_minor=5_000,  # JPY 5,000: > EUR 100
              kind="amount_mismatch", account="A2")
OLD_REFUND = exc(3, DAY1 + 30 * US, currency="USD", amount_minor=-20_000)  # |USD -200.00|
OLD_NONE = exc(4, DAY1, amount_minor=None, currency=None, kind="ambiguous")  # no amount: last
TIE_EARLY = exc(5, DAY1 + 10 * US, amount_minor=7_000)  # equal amounts: earlier window_end first
TIE_LATE_A = exc(6, DAY1 + 20 * US, amount_minor=7_000, did="0" * 32)  # same window_end and
TIE_LATE_B = exc(7, DAY1 + 20 * US, amount_minor=7_000, did="f" * 32)  # amount: by id
NEW_HUGE = exc(8, DAY2, amount_minor=100_000_000)  # EUR 1,000,000.00, but a newer day
NEWEST = match(9, DAY2 + 3_600 * US)  # a match: never listed, but the newest window_end
RANKED = [OLD_YEN, OLD_REFUND, OLD_SMALL, TIE_EARLY, TIE_LATE_A, TIE_LATE_B, OLD_NONE, NEW_HUGE]


@pytest.fixture
def ns(pg_dsn) -> str:
    name = namespace()
    store(pg_dsn, name, RANKED + [NEWEST])
    return name


def test_resolutions_shared():
    assert cli.RESOLUTIONS == review.RESOLUTIONS


def test_list_ranks_as_documented(pg_dsn, ns):
    assert queue(pg_dsn, ns) == [d.decision_id for d in RANKED]
    assert queue(pg_dsn, ns, limit=2) == [OLD_YEN.decision_id, OLD_REFUND.decision_id]
    assert queue(pg_dsn, ns) == queue(pg_dsn, ns)  # a total order: the same every time
    rows = review.open_exceptions(pg_dsn, ns)
    first = rows[0]
    assert set(first) == set(review.LIST_COLUMNS) | {"age"}
    assert (first["currency"], first["amount_minor"], first["member_event_ids"]) == \
        ("JPY", 5_000, ["bank:e2"])
    # ages run from the newest window_end (the match), not from the clock
    assert first["age"] == timedelta(microseconds=NEWEST.window_end - OLD_YEN.window_end)
    as_of = datetime(2026, 11, 23, tzinfo=timezone.utc)
    rows = review.open_exceptions(pg_dsn, ns, as_of=as_of)
    assert rows[-1]["age"] == timedelta(hours=15)  # NEW_HUGE ends 2026-11-22 09:00


def test_list_filters_and_counts(pg_dsn, ns):
    assert queue(pg_dsn, ns, kind="amount_mismatch") == [OLD_YEN.decision_id]
    assert queue(pg_dsn, ns, account="A2") == [OLD_YEN.decision_id]
    assert queue(pg_dsn, ns, kind="ambiguous", account="A2") == []
    assert review.open_counts(pg_dsn, ns) == {"ambiguous": 1, "amount_mismatch": 1,
                                              "missing_counterpart": 6}
    assert review.open_counts(pg_dsn, ns, account="A1", kind="ambiguous") == {"ambiguous": 1}


def test_resolved_ones_and_matches_are_not_listed(pg_dsn, ns):
    review.resolve(pg_dsn, ns, OLD_YEN.decision_id, "written-off", "alice", "below threshold")
    listed = queue(pg_dsn, ns)
    assert OLD_YEN.decision_id not in listed and NEWEST.decision_id not in listed
    assert listed == [d.decision_id for d in RANKED if d is not OLD_YEN]
    assert review.open_counts(pg_dsn, ns)["missing_counterpart"] == 6
    assert "amount_mismatch" not in review.open_counts(pg_dsn, ns)


def test_resolve_round_trip(pg_dsn, ns):
    target = OLD_REFUND.decision_id
    before = machine_digest(pg_dsn, ns, target)
    row = review.resolve(pg_dsn, ns, target, "refunded", "alice", "refund RF-1 on the 22nd")
    assert (row["review_status"], row["resolution"], row["resolved_by"], row["note"]) == \
        ("resolved", "refunded", "alice", "refund RF-1 on the 22nd")
    stored = {r["decision_id"]: r for r in read_decisions(pg_dsn, ns)}[target]
    assert stored["resolved_at"] == row["resolved_at"] is not None
    assert machine_digest(pg_dsn, ns, target) == before
    [entry] = review.history(pg_dsn, ns, target)
    assert (entry["action"], entry["resolution"], entry["by"], entry["note"], entry["day"]) == \
        ("resolve", "refunded", "alice", "refund RF-1 on the 22nd", stored["day"])


def test_re_emitted_decisions_keep_the_resolution(pg_dsn, ns):
    """What a crash-restart or a re-run does: write the same decisions again."""
    target = OLD_SMALL.decision_id
    review.resolve(pg_dsn, ns, target, "matched", "bob", "ledger posted late")
    before = {r["decision_id"]: r for r in read_decisions(pg_dsn, ns)}
    assert store(pg_dsn, ns, RANKED + [NEWEST]) == (0, 0)
    after = {r["decision_id"]: r for r in read_decisions(pg_dsn, ns)}
    assert after == before
    assert (after[target]["review_status"], after[target]["resolution"]) == ("resolved", "matched")


def test_refusals(pg_dsn, ns):
    with pytest.raises(UserError, match="is a match: there is nothing to review"):
        review.resolve(pg_dsn, ns, NEWEST.decision_id, "matched", "alice", "x")
    with pytest.raises(UserError, match=f"no decision {'1' * 32} in namespace {ns}"):
        review.resolve(pg_dsn, ns, "1" * 32, "matched", "alice", "x")
    with pytest.raises(UserError, match="not 8 to 32 hex characters"):
        review.resolve(pg_dsn, ns, "abc", "matched", "alice", "x")
    with pytest.raises(UserError, match="unknown resolution"):
        review.resolve(pg_dsn, ns, OLD_YEN.decision_id, "ignored", "alice", "x")
    with pytest.raises(UserError, match="note is required"):
        review.resolve(pg_dsn, ns, OLD_YEN.decision_id, "matched", "alice", "  ")
    with pytest.raises(UserError, match="has no decisions"):
        review.open_exceptions(pg_dsn, namespace())

    review.resolve(pg_dsn, ns, OLD_YEN.decision_id, "duplicate", "alice", "same as e1")
    with pytest.raises(UserError) as info:
        review.resolve(pg_dsn, ns, OLD_YEN.decision_id, "matched", "bob", "no, matched")
    text = str(info.value)
    assert "already resolved as duplicate by alice at 20" in text and "tally review reopen" in text
    assert "\n" not in text
    assert [e["by"] for e in review.history(pg_dsn, ns, OLD_YEN.decision_id)] == ["alice"]


def test_reopen(pg_dsn, ns):
    target = OLD_YEN.decision_id
    with pytest.raises(UserError, match="already open"):
        review.reopen(pg_dsn, ns, target, "bob", "why not")
    with pytest.raises(UserError, match="is a match"):
        review.reopen(pg_dsn, ns, NEWEST.decision_id, "bob", "why not")
    before = machine_digest(pg_dsn, ns, target)
    review.resolve(pg_dsn, ns, target, "written-off", "alice", "small")
    row = review.reopen(pg_dsn, ns, target, "bob", "not small in JPY terms... check")
    assert (row["review_status"], row["resolution"], row["resolved_by"], row["resolved_at"],
            row["note"]) == ("open", None, None, None, None)
    assert queue(pg_dsn, ns)[0] == target
    review.resolve(pg_dsn, ns, target, "escalated", "bob", "to treasury")
    log = review.history(pg_dsn, ns, target)
    assert [(e["action"], e["resolution"], e["by"]) for e in log] == \
        [("resolve", "written-off", "alice"), ("reopen", None, "bob"),
         ("resolve", "escalated", "bob")]
    assert [e["id"] for e in log] == sorted(e["id"] for e in log)
    assert machine_digest(pg_dsn, ns, target) == before


def test_prefix_ids(pg_dsn, ns):
    twins = [exc(20, DAY1, did="abcdef01" + "0" * 24), exc(21, DAY1, did="abcdef01" + "1" * 24)]
    store(pg_dsn, ns, twins)
    row = review.resolve(pg_dsn, ns, OLD_SMALL.decision_id[:8].upper(), "matched", "a", "b")
    assert row["decision_id"] == OLD_SMALL.decision_id
    assert review.history(pg_dsn, ns, OLD_SMALL.decision_id[:12])[0]["decision_id"] == \
        OLD_SMALL.decision_id
    with pytest.raises(UserError, match="prefix abcdef01 is ambiguous.*give more characters"):
        review.resolve(pg_dsn, ns, "abcdef01", "matched", "a", "b")
    assert review.resolve(pg_dsn, ns, "abcdef011", "matched", "a", "b")["decision_id"] == \
        twins[1].decision_id
    with pytest.raises(UserError, match="not 8 to 32 hex"):
        review.resolve(pg_dsn, ns, "abcdef0", "matched", "a", "b")
    with pytest.raises(UserError, match="not 8 to 32 hex"):
        review.resolve(pg_dsn, ns, "abcdef01%", "matched", "a", "b")


def test_second_reviewer_waits_then_is_refused(pg_dsn, ns):
    """SELECT ... FOR UPDATE: a reviewer who comes second sees the first one's resolution."""
    target = OLD_SMALL.decision_id
    outcome = {}

    def second():
        try:
            outcome["row"] = review.resolve(pg_dsn, ns, target, "matched", "bob", "mine")
        except UserError as err:
            outcome["error"] = str(err)

    with psycopg.connect(pg_dsn) as first:
        first.execute(f"SELECT 1 FROM {ns}.decisions WHERE decision_id = %s FOR UPDATE", (target,))
        thread = threading.Thread(target=second)
        thread.start()
        time.sleep(0.5)
        assert thread.is_alive()  # blocked on the row lock
        first.execute(f"UPDATE {ns}.decisions SET review_status = 'resolved', resolved_by = 'alice',"
                      " resolved_at = now(), resolution = 'duplicate' WHERE decision_id = %s",
                      (target,))
        first.commit()
    thread.join(10)
    assert "row" not in outcome and "already resolved as duplicate by alice" in outcome["error"]


# ----------------------------------------------------------------------------- the CLI

def run(capsys, *argv: str) -> tuple[int, str]:
    parser = argparse.ArgumentParser()
    add_review(parser.add_subparsers())
    args = parser.parse_args(["review", *argv])
    code = args.handler(args)
    return code, capsys.readouterr().out


def test_cli_end_to_end(pg_dsn, ns, capsys, monkeypatch):
    common = ["--namespace", ns, "--pg", pg_dsn]
    code, out = run(capsys, "list", *common)
    lines = out.splitlines()
    assert code == 0
    assert lines[0] == f"namespace {ns}: ages as of 2026-11-22T10:00:00Z, the newest window_end"
    assert lines[1].split() == ["ID", "DAY", "AGE", "KIND", "ACCOUNT", "AMOUNT", "REASON"]
    assert lines[2].startswith(OLD_YEN.decision_id[:16] + "  2026-11-21")
    assert "5,000 JPY" in lines[2] and "-200.00 USD" in lines[3] and "1d 00h" in lines[3]
    assert "1,000,000.00 EUR" in lines[-2]
    assert len({len(line) for line in lines[1:-1]}) <= 2  # aligned (the REASON column is last)
    assert lines[2].index("5,000 JPY") + len("5,000 JPY") == \
        lines[3].index("-200.00 USD") + len("-200.00 USD")  # amounts right-aligned
    assert lines[-1] == ("8 of 8 open exceptions shown (by kind: ambiguous 1, amount_mismatch 1, "
                         "missing_counterpart 6)")

    code, out = run(capsys, "list", *common, "--kind", "missing_counterpart", "--limit", "2",
                    "--json")
    doc = json.loads(out)
    assert (doc["shown"], doc["open"], doc["as_of"]) == (2, 6, "2026-11-22T10:00:00Z")
    assert [e["decision_id"] for e in doc["exceptions"]] == \
        [OLD_REFUND.decision_id, OLD_SMALL.decision_id]
    assert doc["exceptions"][0]["amount"] == "-200.00 USD"
    assert doc["exceptions"][0]["age_seconds"] == 3600 * 24 + 3600 - 30

    monkeypatch.setenv("TALLY_REVIEWER", "carol")
    code, out = run(capsys, "resolve", OLD_YEN.decision_id[:10], "--as", "false-positive",
                    "--note", "rate rounding", *common)
    assert code == 0 and out.startswith(f"resolved {OLD_YEN.decision_id} (amount_mismatch, "
                                        f"account A2, 5,000 JPY) as false-positive by carol at 20")
    code, out = run(capsys, "history", OLD_YEN.decision_id[:8], *common)
    assert "resolve" in out and "false-positive" in out and "carol" in out and "rate rounding" in out
    code, out = run(capsys, "reopen", OLD_YEN.decision_id, "--by", "dave", "--note", "no", *common)
    assert out.startswith(f"reopened {OLD_YEN.decision_id}") and "open again" in out
    code, out = run(capsys, "list", *common, "--account", "nobody")
    assert out == "0 of 0 open exceptions shown\n"
    code, out = run(capsys, "history", TIE_EARLY.decision_id, *common)
    assert out.startswith("no review history")
    with pytest.raises(SystemExit):
        run(capsys, "resolve", OLD_YEN.decision_id, "--as", "forgiven", "--note", "x", *common)


def test_password_never_shown(pg_dsn, ns, capsys):
    secret = password(pg_dsn)
    outputs = [run(capsys, "list", "--namespace", ns, "--pg", pg_dsn)[1]]
    wrong = re.sub(r"(://[^:]+:)[^@]+@", r"\g<1>wrong-pass-4711@", pg_dsn)
    dead = re.sub(r":\d+/", ":1/", pg_dsn)  # nothing listens on port 1
    for dsn in (wrong, dead):
        for argv in (["list"], ["resolve", "0" * 32, "--as", "matched", "--by", "a", "--note", "b"],
                     ["history", "0" * 32]):
            with pytest.raises(UserError) as info:
                run(capsys, *argv, "--namespace", ns, "--pg", dsn)
            text = str(info.value)
            assert text.startswith("cannot connect to PostgreSQL at") and "***" in text
            assert info.value.exit_code == 2 and "\n" not in text
            outputs.append(text)
    with pytest.raises(UserError) as info:
        run(capsys, "list", "--namespace", "t_nothing_here", "--pg", pg_dsn)
    outputs.append(str(info.value))
    assert not any(secret in text or "wrong-pass-4711" in text for text in outputs)


def test_formatting():
    assert cli.amount(2**53 + 1, "EUR") == "90,071,992,547,409.93 EUR"  # exact, not a float
    assert cli.amount(-5, "KWD") == "-0.005 KWD" and cli.amount(5_000, "JPY") == "5,000 JPY"
    assert cli.amount(12, None) == "12 minor" and cli.amount(None, "EUR") == ""
    assert cli.age(timedelta(days=3, hours=4, minutes=5)) == "3d 04h"
    assert cli.age(timedelta(hours=5, minutes=7)) == "5h 07m"
    assert cli.age(timedelta(seconds=59)) == "0m" and cli.age(timedelta(minutes=-90)) == "-1h 30m"
    assert cli.one_line("a\nb   c", 80) == "a b c" and cli.one_line("x" * 10, 6) == "xxx..."


def test_a_note_or_a_name_cannot_drive_the_terminal(pg_dsn, ns, capsys):
    """A reviewer's note and name are shown with control characters escaped, never raw."""
    common = ["--namespace", ns, "--pg", pg_dsn]
    hostile = "ok\x1b[2J\x1b]0;pwned\x07\x9b31m"
    code, out = run(capsys, "resolve", OLD_YEN.decision_id, "--as", "false-positive",
                    "--by", "mallory\x1b[1A", "--note", hostile, *common)
    assert code == 0 and "\x1b" not in out and "mallory\\x1b[1A" in out
    code, out = run(capsys, "history", OLD_YEN.decision_id, *common)
    assert not any(ch in out for ch in "\x1b\x07\x9b")
    assert "ok\\x1b[2J\\x1b]0;pwned\\x07\\x9b31m" in out and "mallory\\x1b[1A" in out


# ----------------------------------------------------------------------------- relations


def related(n: int, relation: str | None, kind: str = "missing_counterpart") -> Decision:
    import msgspec
    d = exc(n, DAY1 + n * US, kind=kind)
    return msgspec.structs.replace(d, relation=relation, decision_id=decision_id(
        "exception", d.member_event_ids, d.member_refs, relation))


def test_list_shows_and_filters_relations(pg_dsn, capsys):
    ns = namespace()
    deposit, batch, invalid = (related(1, "deposits"), related(2, "batches", "settlement_mismatch"),
                               related(3, None, "invalid"))
    store(pg_dsn, ns, [deposit, batch, invalid])
    assert {r["decision_id"]: r["relation"] for r in review.open_exceptions(pg_dsn, ns)} == \
        {deposit.decision_id: "deposits", batch.decision_id: "batches", invalid.decision_id: None}
    assert queue(pg_dsn, ns, relation="batches") == [batch.decision_id]
    assert review.open_counts(pg_dsn, ns, relation="deposits") == {"missing_counterpart": 1}
    assert queue(pg_dsn, ns, relation="payments") == []

    common = ["--namespace", ns, "--pg", pg_dsn]
    code, out = run(capsys, "list", *common)
    lines = out.splitlines()
    assert lines[1].split() == ["ID", "DAY", "AGE", "KIND", "RELATION", "ACCOUNT", "AMOUNT",
                                "REASON"]
    assert [line.split()[4] for line in lines[2:5]] == ["deposits", "batches", "-"]
    code, out = run(capsys, "list", *common, "--relation", "batches", "--kind",
                    "settlement_mismatch", "--json")
    doc = json.loads(out)
    assert [(e["decision_id"], e["relation"]) for e in doc["exceptions"]] == \
        [(batch.decision_id, "batches")]
    assert doc["by_kind"] == {"settlement_mismatch": 1}


def test_a_namespace_from_before_relations_lists_as_before(pg_dsn, capsys):
    ns = namespace()
    store(pg_dsn, ns, [exc(1, DAY1)])
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute(f"ALTER TABLE {ns}.decisions DROP COLUMN relation, DROP COLUMN fee_minor")
    assert [r["relation"] for r in review.open_exceptions(pg_dsn, ns)] == [None]
    assert queue(pg_dsn, ns, relation="deposits") == []
    code, out = run(capsys, "list", "--namespace", ns, "--pg", pg_dsn)
    assert out.splitlines()[1].split() == ["ID", "DAY", "AGE", "KIND", "ACCOUNT", "AMOUNT",
                                           "REASON"]
