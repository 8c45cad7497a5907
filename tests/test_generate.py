"""Tests for the synthetic day generator (flows.dev.generate)."""
from __future__ import annotations

import hashlib
import math
import re
from collections import Counter, defaultdict
from datetime import datetime
from decimal import Decimal

import msgspec
import pytest

from flows.cli import main as tally
from flows.dev.generate import (CURRENCIES, DEFAULT_TOPICS, P_DUPLICATE, default_accounts, generate_day,
                            partition_for)

N = 20_000
PARTITIONS = 3
TX_FIELDS = {"type", "source", "event_id", "account", "amount", "currency", "event_time"}
TIME_RE = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z")


@pytest.fixture(scope="module")
def day(tmp_path_factory):
    out = tmp_path_factory.mktemp("day")
    summary = generate_day(out, N, seed=42, partitions=PARTITIONS)
    logs = {}
    for topic in DEFAULT_TOPICS.values():
        for p in range(PARTITIONS):
            data = (out / topic / f"{p}.jsonl").read_bytes()
            assert data.endswith(b"\n")
            logs[topic, p] = data[:-1].split(b"\n")
    truth = [msgspec.json.decode(line) for line in (out / "truth.jsonl").read_bytes().splitlines()]
    return summary, logs, truth


def _decode_valid(line: bytes, source: str) -> dict | None:
    """The record if it is well-formed for `source`, else None (a strict consumer's view)."""
    try:
        rec = msgspec.json.decode(line)
    except (msgspec.DecodeError, UnicodeDecodeError):
        return None
    if not isinstance(rec, dict) or rec.get("source") != source:
        return None
    if not isinstance(rec.get("event_time"), str) or not TIME_RE.fullmatch(rec["event_time"]):
        return None
    if rec.get("type") == "heartbeat":
        return rec
    if not TX_FIELDS <= rec.keys() or rec["currency"] not in CURRENCIES:
        return None
    if not isinstance(rec["amount"], str):
        return None
    decimals = CURRENCIES[rec["currency"]][0]
    amount_re = r"\d+" if decimals == 0 else rf"\d+\.\d{{{decimals}}}"
    return rec if re.fullmatch(amount_re, rec["amount"]) else None


def _seconds(ts: str) -> float:
    return datetime.fromisoformat(ts).timestamp()


def _all_bytes(out) -> dict:
    return {p.relative_to(out): p.read_bytes() for p in sorted(out.rglob("*.jsonl"))}


def test_same_seed_same_bytes(tmp_path):
    runs = {name: tmp_path / name for name in ("a", "b", "c")}
    for name, seed in (("a", 5), ("b", 5), ("c", 6)):
        generate_day(runs[name], 3_000, seed=seed)
    a, b, c = (_all_bytes(runs[name]) for name in "abc")
    assert a == b
    assert a.keys() == c.keys() and a != c


def test_every_partition_file_exists_and_ends_with_final_heartbeat(tmp_path):
    generate_day(tmp_path, 10, seed=1, partitions=7)
    for topic in DEFAULT_TOPICS.values():
        for p in range(7):
            lines = (tmp_path / topic / f"{p}.jsonl").read_bytes().split(b"\n")
            assert lines[-1] == b"" and b"" not in lines[:-1]
            last = msgspec.json.decode(lines[-2])
            assert last["type"] == "heartbeat" and last["event_time"] == "2026-11-22T02:00:00.000000Z"


def test_lines_decode_and_follow_partitioning(day):
    _, logs, truth = day
    malformed = {(t["topic"], t["partition"], t["offset"]) for t in truth if t["scenario"] == "malformed"}
    sources = {topic: source for source, topic in DEFAULT_TOPICS.items()}
    for (topic, p), lines in logs.items():
        for offset, line in enumerate(lines):
            rec = _decode_valid(line, sources[topic])
            if (topic, p, offset) in malformed:
                assert rec is None, line
                continue
            assert rec is not None, line
            if rec["type"] == "transaction":
                assert partition_for(rec["account"], PARTITIONS) == p


def test_truth_covers_every_record_in_log_order(day):
    _, logs, truth = day
    records = [(topic, p, offset) for (topic, p), lines in logs.items()
               for offset, line in enumerate(lines) if not line.startswith(b'{"type":"heartbeat"')]
    assert [(t["topic"], t["partition"], t["offset"]) for t in truth] == records
    for t in truth:
        if t["scenario"] != "malformed":
            event = msgspec.json.decode(logs[t["topic"], t["partition"]][t["offset"]])
            assert (event["event_id"], event["source"]) == (t["event_id"], t["source"])


def test_scenario_and_flag_shares(day):
    summary, logs, truth = day
    payments = {t["payment"]: t["scenario"] for t in truth if t["payment"]}
    assert len(payments) == N
    shares = {k: v / N for k, v in Counter(payments.values()).items()}
    bounds = {"key": (0.66, 0.74), "partial_key": (0.10, 0.15), "no_key": (0.10, 0.15),
              "fee": (0.015, 0.035), "long_delay": (0.015, 0.035), "ambiguous": (0.002, 0.009)}
    for scenario, (lo, hi) in bounds.items():
        assert lo <= shares[scenario] <= hi, (scenario, shares[scenario])
    events = sum(len(lines) for lines in logs.values())
    assert 0.001 <= summary.scenarios["malformed"] / events <= 0.0035
    flagged = {f: {t["payment"] for t in truth if f in t["flags"]} for f in ("missing", "duplicate")}
    assert 0.005 <= len(flagged["missing"]) / N <= 0.016
    assert 0.001 <= len(flagged["duplicate"]) / N <= 0.006
    late = {(t["source"], t["event_id"]) for t in truth if "late" in t["flags"]}
    assert 0.0015 <= len(late) / (3 * N) <= 0.005
    assert 0.85 <= summary.clean_payments / N <= 0.95


def test_only_deliberate_late_events_are_late(day):
    _, logs, truth = day
    labels = {(t["topic"], t["partition"], t["offset"]): t for t in truth}
    for (topic, p), lines in logs.items():
        running, seen = None, set()
        for offset, line in enumerate(lines):
            label = labels.get((topic, p, offset))
            if label and (label["scenario"] == "malformed" or label["event_id"] in seen):
                continue  # malformed lines and redelivered copies do not count
            et = _seconds(msgspec.json.decode(line)["event_time"])
            if label:
                seen.add(label["event_id"])
                if running is not None and "late" in label["flags"]:
                    assert running - et >= 120
                elif running is not None:
                    assert running - et <= 20
            # heartbeats keep the partition moving: no jump of more than 60 s + delivery delay
            assert running is None or et - running <= 80
            running = et if running is None else max(running, et)


def _events_by_payment(logs, truth) -> dict[str, list[tuple[dict, dict, int]]]:
    """payment -> [(event, truth label, offset)] with redelivered copies left out."""
    by_payment, seen = defaultdict(list), set()
    for t in truth:
        if t["payment"] and (t["source"], t["event_id"]) not in seen:
            seen.add((t["source"], t["event_id"]))
            event = msgspec.json.decode(logs[t["topic"], t["partition"]][t["offset"]])
            by_payment[t["payment"]].append((event, t, t["offset"]))
    return by_payment


def test_payments_match_their_scenario(day):
    _, logs, truth = day
    for payment, items in _events_by_payment(logs, truth).items():
        events = [e for e, _, _ in items if not e["event_id"].endswith("-dup")]
        label = items[0][1]
        keys = {e["source"]: e.get("idempotency_key") for e in events}
        times = sorted(_seconds(e["event_time"]) for e in events)
        amounts = {e["source"]: Decimal(e["amount"]) for e in events}
        assert len({(e["account"], e["currency"]) for e in events}) == 1
        if label["clean"]:
            assert sorted(keys) == ["bank", "ledger", "processor"] and not label["flags"]
            assert len(set(amounts.values())) == 1 and times[-1] - times[0] <= 600
        if label["scenario"] == "key" and "missing" not in label["flags"]:
            assert len(set(keys.values())) == 1 and None not in keys.values()
        if label["scenario"] in ("partial_key", "ambiguous"):
            assert keys.get("bank") is None
        if label["scenario"] == "no_key":
            assert set(keys.values()) == {None}
        if label["scenario"] == "fee" and {"bank", "processor"} <= amounts.keys():
            assert 0.004 <= 1 - amounts["bank"] / amounts["processor"] <= 0.031
        if label["scenario"] == "long_delay" and len(times) == 3:
            assert 2 * 3600 - 120 <= max(times[2] - times[1], times[1] - times[0]) <= 6 * 3600 + 120


def test_duplicates_repeat_key_and_amount(day):
    _, logs, truth = day
    found = 0
    for items in _events_by_payment(logs, truth).values():
        events = {e["event_id"]: e for e, _, _ in items}
        for dup in [e for e in events.values() if e["event_id"].endswith("-dup")]:
            orig = events[dup["event_id"].removesuffix("-dup")]
            assert dup["idempotency_key"] and dup["idempotency_key"] == orig["idempotency_key"]
            assert dup["amount"] == orig["amount"] and dup["event_time"] > orig["event_time"]
            found += 1
    assert found == len({t["payment"] for t in truth if "duplicate" in t["flags"]})


def test_ambiguous_pairs_share_account_amount_and_currency(day):
    _, logs, truth = day
    by_payment = _events_by_payment(logs, truth)
    pairs = sorted(p for p, items in by_payment.items() if items[0][1]["scenario"] == "ambiguous")
    for first, second in zip(pairs[::2], pairs[1::2]):
        a, b = (by_payment[p][0][0] for p in (first, second))
        assert (a["account"], a["amount"], a["currency"]) == (b["account"], b["amount"], b["currency"])
        # 1..5 minutes apart, plus up to 30 s of skew per source
        starts = [min(_seconds(e["event_time"]) for e, _, _ in by_payment[p]) for p in (first, second)]
        assert 30 <= starts[1] - starts[0] <= 330


def test_redelivered_lines_repeat_a_few_records_later(day):
    _, logs, truth = day
    labels = {(t["topic"], t["partition"], t["offset"]): t for t in truth}
    copies = 0
    for (topic, p), lines in logs.items():
        first_seen = {}
        for offset, line in enumerate(lines):
            if line in first_seen:  # only redelivered lines repeat
                copy, orig = labels[topic, p, offset], labels[topic, p, first_seen[line]]
                assert 2 <= offset - first_seen[line] <= 60
                assert "redelivery" in copy["flags"] and copy | {"offset": 0} == orig | {"offset": 0}
                copies += 1
            first_seen.setdefault(line, offset)
    assert copies == sum("redelivery" in t["flags"] for t in truth) // 2


# ----------------------------------------------------------------------------- density options

# sha256 of generate_day(out, 3_000, seed=5), every file (path, NUL, bytes) in path order,
# measured on the code before the density options existed: at their defaults they draw nothing
BEFORE_DENSITY_OPTIONS = "ee95d1501de68346d67f9407b6cfca0eb11362b5c15d240449843b323aca8c03"


def _digest(out) -> str:
    digest = hashlib.sha256()
    for path, data in _all_bytes(out).items():
        digest.update(str(path).encode() + b"\0")
        digest.update(data)
    return digest.hexdigest()


def _payments(out) -> dict[str, list[dict]]:
    """payment -> its transaction events (first copies; malformed lines left out)."""
    truth = [msgspec.json.decode(line) for line in (out / "truth.jsonl").read_bytes().splitlines()]
    logs = {part: (out / part[0] / f"{part[1]}.jsonl").read_bytes().split(b"\n")
            for part in {(t["topic"], t["partition"]) for t in truth}}
    events, seen = defaultdict(list), set()
    for t in truth:
        if t["payment"] and (t["source"], t["event_id"]) not in seen:
            seen.add((t["source"], t["event_id"]))
            event = msgspec.json.decode(logs[t["topic"], t["partition"]][t["offset"]])
            events[t["payment"]].append(event | {"flags": t["flags"]})
    return events


def test_default_density_options_keep_the_bytes_of_before(tmp_path):
    generate_day(tmp_path / "plain", 3_000, seed=5)
    generate_day(tmp_path / "explicit", 3_000, seed=5, accounts=default_accounts(3_000),
                 hot_share=0.0, reported_twice=P_DUPLICATE)
    assert _digest(tmp_path / "plain") == BEFORE_DENSITY_OPTIONS
    assert _digest(tmp_path / "explicit") == BEFORE_DENSITY_OPTIONS


def test_accounts_sets_how_many_accounts_carry_the_payments(tmp_path):
    generate_day(tmp_path, 3_000, seed=5, accounts=5)
    accounts = {e["account"] for events in _payments(tmp_path).values() for e in events}
    assert accounts == {f"ACC{i:05d}" for i in range(5)}


def test_hot_share_puts_that_share_of_payments_on_the_first_account(tmp_path):
    generate_day(tmp_path, 3_000, seed=5, hot_share=0.5)
    payments = _payments(tmp_path)
    hot = sum(events[0]["account"] == "ACC00000" for events in payments.values())
    assert len(payments) == 3_000
    assert 0.45 <= hot / len(payments) <= 0.55


def _reported_twice(payments) -> tuple[set[str], set[str]]:
    """(payments whose processor event has a key, payments flagged duplicate)."""
    keyed = {p for p, events in payments.items()
             if any(e["source"] == "processor" and e.get("idempotency_key") for e in events)}
    return keyed, {p for p, events in payments.items() if "duplicate" in events[0]["flags"]}


def test_reported_twice_is_the_duplicate_rate_of_keyed_payments(tmp_path):
    generate_day(tmp_path / "one", 20_000, seed=5, reported_twice=0.01)
    keyed, twice = _reported_twice(_payments(tmp_path / "one"))
    assert twice <= keyed and 0.008 <= len(twice) / len(keyed) <= 0.012
    generate_day(tmp_path / "all", 1_000, seed=5, reported_twice=1)
    keyed, twice = _reported_twice(_payments(tmp_path / "all"))
    assert twice == keyed
    generate_day(tmp_path / "none", 1_000, seed=5, reported_twice=0)
    assert _reported_twice(_payments(tmp_path / "none"))[1] == set()


@pytest.mark.parametrize("options, named", [
    ({"accounts": 0}, "accounts"), ({"hot_share": 1.0}, "hot_share"), ({"hot_share": -0.1}, "hot_share"),
    ({"hot_share": math.nan}, "hot_share"), ({"reported_twice": 1.5}, "reported_twice"),
    ({"reported_twice": -0.01}, "reported_twice")])
def test_nonsense_density_options_are_refused(tmp_path, options, named):
    with pytest.raises(ValueError, match=named):
        generate_day(tmp_path, 10, seed=1, **options)
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize("argv, message", [
    (["--accounts", "0"], "--accounts must be at least 1"),
    (["--hot-share", "1"], "--hot-share must be from 0 to below 1"),
    (["--reported-twice", "nan"], "--reported-twice must be from 0 to 1")])
def test_tally_generate_refuses_nonsense_density_in_one_line(tmp_path, capsys, argv, message):
    assert tally(["generate", "--out", str(tmp_path / "day"), *argv]) == 2
    assert capsys.readouterr().err == f"tally: {message}\n"


def test_tally_generate_passes_the_density_options_on(tmp_path, capsys):
    argv = ["--transactions", "500", "--accounts", "3", "--hot-share", "0.2", "--reported-twice", "1"]
    assert tally(["generate", "--out", str(tmp_path / "cli"), *argv]) == 0
    generate_day(tmp_path / "direct", 500, seed=1, accounts=3, hot_share=0.2, reported_twice=1)
    assert _digest(tmp_path / "cli") == _digest(tmp_path / "direct")
