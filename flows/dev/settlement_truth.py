"""How a run's decisions compare with a settlement day's ground truth (settlement_day.py).

A match is false when its members span two truth units: the payment for the `payments`
relation, the batch for `batches` and `deposits` (a credit belongs to the batch of the
payout it pays; an unexplained credit to none, so any match holding it is false). The
rates are over clean payments and clean batches only, the ones a correct engine must
settle on its own; each hard case instance is checked for the exception it must raise.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import msgspec

from flows.dev.settlement_day import SettlementTruth
from state.decision import AMBIGUOUS, MISSING, REVIEW, SETTLEMENT_MISMATCH, Decision


@dataclass
class SettlementScore:
    false_matches: list[list[str]]  # member event ids of each match spanning 2+ units
    payments_clean: int
    payments_matched: int  # clean payments whose ledger record and item form one match
    payouts_clean: int  # clean batches
    payouts_settled: int  # ... whose payout and processor records form one `batches` match
    payouts_deposited: int  # ... whose payout and credit form one `deposits` match
    # "case unit" -> the expected exception exists, e.g. "bank_charge B-ACC00003-20261121"
    hard_flagged: dict[str, bool] = field(default_factory=dict)

    @property
    def unflagged(self) -> list[str]:
        return [name for name, flagged in self.hard_flagged.items() if not flagged]

    @property
    def payments_rate(self) -> float:
        return _rate(self.payments_matched, self.payments_clean)

    @property
    def settled_rate(self) -> float:
        return _rate(self.payouts_settled, self.payouts_clean)

    @property
    def deposited_rate(self) -> float:
        return _rate(self.payouts_deposited, self.payouts_clean)

    @property
    def hard_rate(self) -> float:
        return _rate(len(self.hard_flagged) - len(self.unflagged), len(self.hard_flagged))


def _rate(part: int, whole: int) -> float:
    """1.0 without a denominator: nothing was there to miss."""
    return part / whole if whole else 1.0


class _Day:
    """The truth, indexed: records by label, each unit's expected member sets."""

    def __init__(self, truth: list[SettlementTruth]):
        self.records = {f"{t.source}:{t.event_id}": t for t in truth}
        self.ledger: dict[str, str] = {}  # payment -> ledger label
        self.item: dict[str, str] = {}  # payment -> item label
        self.payout: dict[str, str] = {}  # batch -> payout label
        self.credit: dict[str, str] = {}  # batch -> credit label
        self.processor: dict[str, set[str]] = defaultdict(set)  # batch -> payout, items, fee lines
        for label, t in self.records.items():
            self._file(label, t)

    def _file(self, label: str, t: SettlementTruth) -> None:
        if t.kind in ("payment", "refund"):
            self.ledger[t.payment] = label
        elif t.kind == "item":
            self.item[t.payment] = label
        elif t.kind == "payout":
            self.payout[t.batch] = label
        elif t.kind == "credit" and t.batch is not None:
            self.credit[t.batch] = label
        if t.source == "processor":
            self.processor[t.batch].add(label)

    def unit(self, relation: str | None, label: str) -> str | None:
        """The payment (payments) or batch (batches, deposits) a member belongs to; None when
        it belongs to none there (a ledger record in a batch, an unexplained credit)."""
        t = self.records.get(label)
        if t is None:
            return None
        if relation in ("batches", "deposits"):
            return None if t.source == "ledger" else t.batch
        return t.payment


def score_settlement(decisions: list[Decision], day_dir: Path) -> SettlementScore:
    """Score the decisions of a run over the settlement day in `day_dir`."""
    truth = msgspec.json.Decoder(SettlementTruth).decode_lines(
        (Path(day_dir) / "truth.jsonl").read_bytes())
    day = _Day(truth)
    matches: dict[str, set[frozenset[str]]] = defaultdict(set)  # relation -> member sets
    false_matches = []
    for decision in decisions:
        if decision.kind != "match":
            continue
        units = {day.unit(decision.relation, m) for m in decision.member_event_ids}
        if len(units) != 1 or None in units:
            false_matches.append(decision.member_event_ids)
        matches[decision.relation].add(frozenset(decision.member_event_ids))
    clean_payments = sorted({t.payment for t in truth if t.kind in ("payment", "refund") and t.clean})
    clean_batches = sorted({t.batch for t in truth if t.kind == "payout" and t.clean})
    return SettlementScore(
        false_matches=false_matches,
        payments_clean=len(clean_payments),
        payments_matched=sum(frozenset((day.ledger[p], day.item[p])) in matches["payments"]
                             for p in clean_payments),
        payouts_clean=len(clean_batches),
        payouts_settled=sum(frozenset(day.processor[b]) in matches["batches"] for b in clean_batches),
        payouts_deposited=sum(frozenset((day.payout[b], day.credit[b])) in matches["deposits"]
                              for b in clean_batches),
        hard_flagged=_hard_flagged(truth, day, decisions))


def _hard_flagged(truth: list[SettlementTruth], day: _Day, decisions: list[Decision]) -> dict[str, bool]:
    """Each hard case instance, in truth order, and whether its expected exceptions exist."""
    exceptions = [d for d in decisions if d.kind == "exception"]

    def raised(relation: str, kind: str | None, *labels: str) -> bool:
        return any(d.relation == relation and (kind is None or d.exception_kind == kind)
                   and set(labels) <= set(d.member_event_ids) for d in exceptions)

    flagged: dict[str, bool] = {}
    pairs: dict[str, list[str]] = defaultdict(list)  # equal_payouts: pair -> its payouts
    for t in truth:
        label = f"{t.source}:{t.event_id}"
        if "unreported_item" in t.hard and t.source == "ledger":
            flagged[f"unreported_item {t.payment}"] = (
                raised("payments", None, label)
                and raised("batches", SETTLEMENT_MISMATCH, day.payout[t.batch]))
        elif t.kind == "payout" and "bank_charge" in t.hard:
            flagged[f"bank_charge {t.batch}"] = raised("deposits", REVIEW, label)
        elif t.kind == "payout" and "payout_never_arrives" in t.hard:
            flagged[f"payout_never_arrives {t.batch}"] = raised("deposits", MISSING, label)
        elif t.kind == "credit" and "unexplained_credit" in t.hard:
            flagged[f"unexplained_credit {t.event_id}"] = raised("deposits", MISSING, label)
        elif t.kind == "payout" and "equal_payouts" in t.hard:
            pairs[t.batch.rsplit("-", 1)[0]].append(label)  # B-ACC-DATE-A and -B: one pair
    for pair, payouts in pairs.items():
        flagged[f"equal_payouts {pair}"] = (raised("deposits", AMBIGUOUS, *payouts)
                                            or all(raised("deposits", AMBIGUOUS, p) for p in payouts))
    return flagged
