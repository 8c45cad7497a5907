"""Hand-made decisions for the sink and verify tests: one match, one exception with candidates."""

from __future__ import annotations

import uuid

from state.decision import Candidate, Decision, decision_id

US = 1_000_000


def namespace() -> str:
    return "t_" + uuid.uuid4().hex[:16]


def match(n: int, window_end: int) -> Decision:
    members, refs = [f"bank:b{n}", f"ledger:l{n}"], [f"bank-tx:0:{n}", f"ledger-tx:0:{n}"]
    return Decision(decision_id=decision_id("match", members, refs), kind="match", tier=1,
                    exception_kind=None, account="A1", currency="EUR", amount_minor=1000 + n,
                    confidence=0.99, member_event_ids=members, member_refs=refs,
                    window_start=window_end - 600 * US, window_end=window_end)


def exception(n: int, window_end: int) -> Decision:
    members, refs = [f"bank:x{n}"], [f"bank-tx:1:{n}"]
    return Decision(decision_id=decision_id("exception", members, refs), kind="exception",
                    tier=None, exception_kind="ambiguous", account="A2", currency="USD",
                    amount_minor=-250, confidence=None, member_event_ids=members,
                    member_refs=refs, window_start=window_end - 600 * US,
                    window_end=window_end, missing_sources=["ledger"],
                    candidates=[Candidate("ledger:l1", "ledger-tx:0:1", 0.5),
                                Candidate("ledger:l2", "ledger-tx:0:2", 0.25)],
                    reason="two candidates", raw_base64="eyJhIjoxfQ==")
