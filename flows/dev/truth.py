"""How a run's decisions compare with a generated day's ground truth (truth.jsonl).

The rule is the accuracy test's: a match decision whose members all belong to one
payment marks that payment auto-matched; a match decision whose members belong to
two or more payments is a false match. Exceptions count for neither. The rate is
over the clean payments only, the ones a correct engine must match on its own.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import msgspec

from flows.dev.generate import TruthRecord
from state.decision import Decision


@dataclass
class Score:
    clean: int  # clean payments in the day
    auto_matched: int  # clean payments a match decision covers, and nothing of another payment
    false_matches: list[list[str]]  # member event ids of each match spanning 2+ payments

    @property
    def rate(self) -> float:
        """The share of clean payments auto-matched; 1.0 for a day without any (none was missed)."""
        return self.auto_matched / self.clean if self.clean else 1.0


def score(decisions: list[Decision], day_dir: Path) -> Score:
    """Score the decisions of a run over the generated day in `day_dir`."""
    truth = msgspec.json.Decoder(TruthRecord).decode_lines((Path(day_dir) / "truth.jsonl").read_bytes())
    payment_of = {f"{t.source}:{t.event_id}": t.payment for t in truth if t.event_id}
    matched: set[str] = set()
    false_matches = []
    for decision in decisions:
        if decision.kind != "match":
            continue
        payments = {payment_of[m] for m in decision.member_event_ids}
        if len(payments) == 1:
            matched |= payments
        else:
            false_matches.append(decision.member_event_ids)
    clean = {t.payment for t in truth if t.clean}
    return Score(len(clean), len(clean & matched), false_matches)
