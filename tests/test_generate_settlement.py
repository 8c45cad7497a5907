"""Tests for the settlement day generator (flows.dev.settlement_day) and its scoring
(flows.dev.settlement_truth). No broker: the files are read back from disk."""
from __future__ import annotations

import hashlib
import tomllib
from collections import defaultdict
from datetime import date
from pathlib import Path

import msgspec
import pytest

from flows.cli import main as tally
from flows.dev.generate import partition_for
from flows.dev.settlement_day import HARD_CASES, TOPICS, SettlementTruth, generate_settlement
from flows.dev.settlement_truth import score_settlement
from state.config import from_toml
from state.contract import Decoder, Event, Heartbeat
from state.decision import Decision

N, DAYS, PARTITIONS = 2_000, 2, 3
EXAMPLE = Path(__file__).resolve().parents[1] / "docs" / "examples" / "settlement.toml"


def _digest(out: Path) -> str:
    h = hashlib.sha256()
    for path in sorted(out.rglob("*.jsonl")):
        h.update(str(path.relative_to(out)).encode() + b"\0" + path.read_bytes())
    return h.hexdigest()


@pytest.fixture(scope="module")
def day(tmp_path_factory):
    """The generated day: its directory, every record decoded by position, and the truth."""
    out = tmp_path_factory.mktemp("settlement")
    summary = generate_settlement(out, N, seed=42, partitions=PARTITIONS, days=DAYS)
    decoder = Decoder(from_toml(tomllib.loads(EXAMPLE.read_text())))
    records = {}
    for topic in TOPICS.values():
        for p in range(PARTITIONS):
            lines = (out / topic / f"{p}.jsonl").read_bytes().splitlines()
            for offset, line in enumerate(lines):
                records[topic, p, offset] = decoder.decode(line, topic, p, offset)
    truth = msgspec.json.Decoder(SettlementTruth).decode_lines((out / "truth.jsonl").read_bytes())
    return out, summary, records, truth


def _by_label(day) -> dict[str, tuple[SettlementTruth, Event]]:
    _, _, records, truth = day
    return {f"{t.source}:{t.event_id}": (t, records[t.topic, t.partition, t.offset]) for t in truth}


def _batches(day) -> dict[str, dict[str, list]]:
    """batch -> kind -> [(truth, event)]"""
    batches: dict[str, dict[str, list]] = defaultdict(lambda: defaultdict(list))
    for t, event in _by_label(day).values():
        if t.batch is not None:
            batches[t.batch][t.kind].append((t, event))
    return batches


def _net(event: Event) -> int:
    return event.amount_minor - (event.fee_minor or 0)


# --- the files ----------------------------------------------------------------------

def test_same_arguments_same_bytes_and_another_seed_other_bytes(tmp_path):
    generate_settlement(tmp_path / "a", 300, seed=5)
    generate_settlement(tmp_path / "b", 300, seed=5)
    generate_settlement(tmp_path / "c", 300, seed=6)
    assert _digest(tmp_path / "a") == _digest(tmp_path / "b") != _digest(tmp_path / "c")


def test_every_line_is_a_valid_record_of_the_settlement_config(day):
    _, _, records, _ = day
    kinds = {type(r) for r in records.values()}
    assert kinds == {Event, Heartbeat}, [r for r in records.values() if type(r) not in (Event, Heartbeat)][:3]


def test_partitions_are_in_event_time_order_and_follow_the_account(day):
    _, _, records, _ = day
    last: dict[tuple, int] = {}
    for (topic, p, offset), record in sorted(records.items()):
        assert record.time_us >= last.get((topic, p), 0), (topic, p, offset)
        last[topic, p] = record.time_us
        if isinstance(record, Event):
            assert partition_for(record.account, PARTITIONS) == p
    events = [r.time_us for r in records.values() if isinstance(r, Event)]
    finals = [r.time_us for (_, _, _), r in records.items() if isinstance(r, Heartbeat)]
    assert max(finals) > max(events)


def test_heartbeats_fill_every_quiet_hour_and_close_each_partition(day):
    _, _, records, _ = day
    logs = defaultdict(list)
    for (topic, p, _), record in sorted(records.items()):
        logs[topic, p].append(record)
    last_event = max(r.time_us for r in records.values() if isinstance(r, Event))
    for log in logs.values():
        gaps = [b.time_us - a.time_us for a, b in zip(log, log[1:])]
        assert max(gaps) <= 3_600_000_000
        assert isinstance(log[-1], Heartbeat) and log[-1].time_us > last_event


def test_no_two_payouts_of_an_account_are_near_but_the_equal_pairs(day):
    payouts = defaultdict(list)
    for t, event in _by_label(day).values():
        if t.kind == "payout":
            payouts[event.account].append((t.batch, event.amount_minor))
    for account, amounts in payouts.items():
        for i, (a, x) in enumerate(amounts):
            for b, y in amounts[i + 1:]:
                one_pair = a[:-2] == b[:-2] and {a[-2:], b[-2:]} == {"-A", "-B"}
                if not one_pair:
                    assert abs(x - y) * 50 >= max(x, y), (a, b)


def test_truth_covers_exactly_every_non_heartbeat_line(day):
    _, summary, records, truth = day
    assert {(t.topic, t.partition, t.offset) for t in truth} == {
        k for k, r in records.items() if isinstance(r, Event)}
    for t in truth:
        event = records[t.topic, t.partition, t.offset]
        assert (event.source, event.event_id) == (t.source, t.event_id)
    assert len(truth) == sum(summary.records.values())
    assert summary.records["recon.ledger"] == N


def test_items_repeat_their_payment(day):
    by_payment = defaultdict(dict)
    for t, event in _by_label(day).values():
        if t.payment is not None:
            by_payment[t.payment][t.source] = event
    for payment, sides in by_payment.items():
        ledger, item = sides["ledger"], sides.get("processor")
        if item is None:
            continue
        assert (item.idempotency_key, item.amount_minor) == (ledger.idempotency_key, ledger.amount_minor)
        assert item.event_id != ledger.event_id
        assert item.time_us > ledger.time_us
        if item.amount_minor < 0:
            assert item.fee_minor == 0


def test_clean_batches_add_up_and_are_paid_one_to_three_days_later(day):
    clean = 0
    for batch, kinds in _batches(day).items():
        (payout_truth, payout), = kinds["payout"]
        if not payout_truth.clean:
            continue
        clean += 1
        processor = kinds["item"] + kinds["fee_line"]
        assert sum(_net(e) for _, e in processor) == payout.amount_minor
        assert all(t.clean for t, _ in processor + kinds["credit"])
        assert all(e.batch_id == batch for _, e in processor + kinds["payout"])
        (_, credit), = kinds["credit"]
        assert (credit.account, credit.currency, credit.amount_minor) == (
            payout.account, payout.currency, payout.amount_minor)
        lag = _date(credit) - _date(payout)
        assert 1 <= lag.days <= 3
        times = [e.time_us for _, e in processor + kinds["payout"]]
        assert max(times) == payout.time_us and max(times) - min(times) < 86_400_000_000
    assert clean > 150


def _date(event: Event) -> date:
    return date.fromordinal(date(1970, 1, 1).toordinal() + event.time_us // 86_400_000_000)


def test_every_hard_case_appears_at_least_twice(day):
    _, summary, _, truth = day
    for case in HARD_CASES:
        assert summary.hard[case] >= 2, case
        assert any(case in t.hard for t in truth), case


def test_an_unreported_item_is_in_its_payout_but_not_in_the_processors_records(day):
    by_label, batches = _by_label(day), _batches(day)
    missing = [(t, e) for t, e in by_label.values() if t.source == "ledger" and "unreported_item" in t.hard]
    assert len(missing) >= 2
    for t, ledger in missing:
        assert not t.clean and f"processor:item-{t.payment}" not in by_label
        kinds = batches[t.batch]
        (_, payout), = kinds["payout"]
        reported = sum(_net(e) for _, e in kinds["item"] + kinds["fee_line"])
        item_net = payout.amount_minor - reported
        assert 0 < item_net < ledger.amount_minor  # the gross less a 1-3% fee
        assert ledger.amount_minor - item_net <= ledger.amount_minor * 3 // 100 + 1


def test_bank_charges_never_arriving_payouts_and_unexplained_credits(day):
    batches, by_label = _batches(day), _by_label(day)
    for batch, kinds in batches.items():
        (payout_truth, payout), = kinds["payout"]
        if "bank_charge" in payout_truth.hard:
            (_, credit), = kinds["credit"]
            charge = payout.amount_minor - credit.amount_minor
            assert 1 <= charge and charge * 100 < payout.amount_minor
        if "payout_never_arrives" in payout_truth.hard:
            assert not kinds["credit"]
    payouts = defaultdict(list)
    for t, e in by_label.values():
        if t.kind == "payout":
            payouts[e.account].append(e.amount_minor)
    unexplained = [e for t, e in by_label.values() if "unexplained_credit" in t.hard]
    assert len(unexplained) >= 2
    for credit in unexplained:
        assert all(abs(credit.amount_minor - p) * 50 >= max(p, credit.amount_minor)
                   for p in payouts[credit.account])


def test_equal_payouts_come_in_pairs_whose_credits_name_no_batch(day):
    pairs = defaultdict(list)
    for batch, kinds in _batches(day).items():
        (t, payout), = kinds["payout"]
        if "equal_payouts" in t.hard:
            (_, credit), = kinds["credit"]
            pairs[batch[:-2]].append((payout, credit))
            assert batch not in credit.reference and payout.reference not in credit.reference
    assert len(pairs) >= 2
    for (a, ca), (b, cb) in pairs.values():
        assert (a.account, a.currency, a.amount_minor) == (b.account, b.currency, b.amount_minor)
        assert ca.amount_minor == cb.amount_minor == a.amount_minor
        # both credits lie inside the deposits lag (0 to 5 days) of both payouts
        for payout in (a, b):
            for credit in (ca, cb):
                assert 0 <= credit.time_us - payout.time_us <= 5 * 86_400_000_000


def test_most_credits_name_their_batch(day):
    named = [t for t, e in _by_label(day).values()
             if t.kind == "credit" and t.batch and t.batch in e.reference]
    credits = [t for t in _by_label(day).values() if t[0].kind == "credit"]
    assert 0.55 < len(named) / len(credits) < 0.85


# --- the command line ---------------------------------------------------------------

def test_tally_generate_settlement_writes_what_the_function_writes(tmp_path, capsys):
    argv = ["--scenario", "settlement", "--transactions", "400", "--days", "3", "--seed", "9"]
    assert tally(["generate", "--out", str(tmp_path / "cli"), *argv]) == 0
    assert "generated 400 payments over 3 days" in capsys.readouterr().out
    generate_settlement(tmp_path / "direct", 400, seed=9, days=3)
    assert _digest(tmp_path / "cli") == _digest(tmp_path / "direct")


@pytest.mark.parametrize("argv, message", [
    (["--days", "2"], "--days is for --scenario settlement only"),
    (["--scenario", "settlement", "--days", "0"], "--days must be at least 1"),
    (["--scenario", "settlement", "--hot-share", "0.1"], "--hot-share is for --scenario payments only")])
def test_tally_generate_refuses_options_of_the_other_scenario(tmp_path, capsys, argv, message):
    assert tally(["generate", "--out", str(tmp_path / "day"), *argv]) == 2
    assert capsys.readouterr().err == f"tally: {message}\n"
    assert not (tmp_path / "day").exists()


# --- scoring ------------------------------------------------------------------------

def _decision(relation: str, kind: str, members: list[str], exception_kind: str | None = None) -> Decision:
    return Decision(decision_id=f"{relation}/{'|'.join(members)}", kind=kind,
                    tier=1 if kind == "match" else None, exception_kind=exception_kind,
                    account=None, currency=None, amount_minor=None, confidence=None,
                    member_event_ids=members, member_refs=[], window_start=0, window_end=1,
                    relation=relation)


def _perfect(truth: list[SettlementTruth]) -> list[Decision]:
    """What a correct engine decides over the day, built from the truth."""
    payments, batches = defaultdict(dict), defaultdict(lambda: defaultdict(list))
    decisions = []
    for t in truth:
        label = f"{t.source}:{t.event_id}"
        if t.payment:
            payments[t.payment][t.source] = label
        if t.batch:
            batches[t.batch][t.kind].append((label, t.hard))
        elif "unexplained_credit" in t.hard:
            decisions.append(_decision("deposits", "exception", [label], "missing_counterpart"))
    for sides in payments.values():
        if "processor" in sides:
            decisions.append(_decision("payments", "match", [sides["ledger"], sides["processor"]]))
        else:
            decisions.append(_decision("payments", "exception", [sides["ledger"]], "missing_counterpart"))
    pairs = defaultdict(list)
    for batch, kinds in batches.items():
        (payout, hard), = kinds["payout"]
        processor = [label for k in ("item", "fee_line", "payout") for label, _ in kinds[k]]
        credit = [label for label, _ in kinds["credit"]]
        if "unreported_item" in hard:
            decisions.append(_decision("batches", "exception", processor, "settlement_mismatch"))
        else:
            decisions.append(_decision("batches", "match", processor))
        if "equal_payouts" in hard:
            pairs[batch[:-2]] += [payout, *credit]
        elif "bank_charge" in hard:
            decisions.append(_decision("deposits", "exception", [payout, *credit], "review"))
        elif "payout_never_arrives" in hard:
            decisions.append(_decision("deposits", "exception", [payout], "missing_counterpart"))
        else:
            decisions.append(_decision("deposits", "match", [payout, *credit]))
    decisions += [_decision("deposits", "exception", members, "ambiguous") for members in pairs.values()]
    return decisions


def test_a_perfect_set_of_decisions_scores_full_marks(day):
    out, summary, _, truth = day
    score = score_settlement(_perfect(truth), out)
    assert score.false_matches == []
    assert (score.payments_rate, score.settled_rate, score.deposited_rate, score.hard_rate) == (1, 1, 1, 1)
    assert score.payments_clean == summary.clean_payments
    assert score.payouts_clean == summary.clean_batches
    assert len(score.hard_flagged) == sum(summary.hard.values()) and score.unflagged == []


def test_a_match_merging_two_payments_is_false_and_matches_neither(day):
    out, _, _, truth = day
    decisions = _perfect(truth)
    first, second = [i for i, d in enumerate(decisions)
                     if d.relation == "payments" and d.kind == "match"][:2]
    merged = decisions[first].member_event_ids + decisions[second].member_event_ids
    decisions = [d for i, d in enumerate(decisions) if i not in (first, second)]
    decisions.append(_decision("payments", "match", merged))
    score = score_settlement(decisions, out)
    assert score.false_matches == [merged]
    assert score.payments_matched == score.payments_clean - 2


def test_a_match_holding_an_unexplained_credit_is_false(day):
    out, _, _, truth = day
    credit = next(t for t in truth if "unexplained_credit" in t.hard)
    payout = next(t for t in truth if t.kind == "payout" and t.clean)
    members = [f"processor:{payout.event_id}", f"bank:{credit.event_id}"]
    score = score_settlement([_decision("deposits", "match", members)], out)
    assert score.false_matches == [members]


def test_a_missing_hard_case_exception_is_listed_by_name(day):
    out, _, _, truth = day
    decisions = _perfect(truth)
    review = next(d for d in decisions if d.exception_kind == "review")
    batch = review.member_event_ids[0].removeprefix("processor:payout-")
    score = score_settlement([d for d in decisions if d is not review], out)
    assert score.unflagged == [f"bank_charge {batch}"]
    assert score.hard_rate < 1 and score.deposited_rate == 1


def test_an_unreported_item_needs_both_exceptions(day):
    out, _, _, truth = day
    decisions = [d for d in _perfect(truth) if d.exception_kind != "settlement_mismatch"]
    score = score_settlement(decisions, out)
    assert sorted(name.split()[0] for name in score.unflagged) == ["unreported_item"] * 4


def test_no_decisions_score_zero_but_rates_of_nothing_are_one(tmp_path):
    generate_settlement(tmp_path, 50, seed=1, days=1)
    score = score_settlement([], tmp_path)
    assert score.payments_rate == score.settled_rate == score.hard_rate == 0.0
    (tmp_path / "truth.jsonl").write_bytes(b"")
    empty = score_settlement([], tmp_path)
    assert (empty.payments_rate, empty.settled_rate, empty.deposited_rate, empty.hard_rate) == (1, 1, 1, 1)
