"""How a decision is written down: one constructor per verdict kind.

The matching rules (state/matching.py) choose the members; these functions turn
that choice into a Decision with its id, reason, confidence and candidates. They
are pure formatting, shared by the engine and by the scan-based reference that
the tests hold it against.
"""

from __future__ import annotations

import msgspec

from state.config import MatchConfig
from state.contract import Event
from state.currency import exponent
from state.decision import (AMBIGUOUS, DUPLICATE, EXCEPTION, MATCHED, MISMATCH, MISSING, REVIEW,
                            Candidate, Decision, decision_id)
from state.scoring import amount_closeness, group_confidence, pair_confidence


class Claim(msgspec.Struct, frozen=True, array_like=True, gc=False):
    """The original report of one source's idempotency key, which later reports of it repeat."""

    label: str
    ref: str
    time_us: int


def claim_key(source: str, idempotency_key: str) -> str:
    """How claims are keyed: one string, so snapshots stay plain msgpack maps."""
    return f"{source}\x1f{idempotency_key}"


def claim_of(event: Event) -> Claim:
    return Claim(event.label, event.ref, event.time_us)


class Verdict(msgspec.Struct, frozen=True):
    decision: Decision
    members: list[Event]
    outcome: str  # the fate of every member: "matched" or "exception"


def event_order(event: Event) -> tuple:
    """The canonical order of events: by event time, then identity, then log position."""
    return (event.time_us, event.source, event.event_id, event.topic, event.partition, event.offset)


def missing_sources(group: list[Event], config: MatchConfig) -> list[str]:
    present = {e.source for e in group}
    return [s for s in config.expected_sources if s not in present]


def group_key(events: list[Event]) -> str | None:
    return next((e.idempotency_key for e in events if e.idempotency_key is not None), None)


def consistent_key(events: list[Event]) -> bool:
    keys = {e.idempotency_key for e in events if e.idempotency_key is not None}
    return len(keys) <= 1


def match(anchor: Event, group: list[Event], config: MatchConfig) -> Verdict:
    keyed = all(e.idempotency_key is not None for e in group) and consistent_key(group)
    tier = 1 if keyed and len(group) > 1 else 2
    others = [e for e in group if e is not anchor]
    confidence = 1.0 if tier == 1 else group_confidence(anchor, others, config.match_window_us)
    reason = ("linked by idempotency key; amounts agree" if tier == 1 else
              "exact amount and currency inside the match window; the only candidate set")
    return verdict(anchor, group, config, MATCHED, tier=tier, confidence=confidence, reason=reason)


def mismatch(anchor: Event, group: list[Event], config: MatchConfig) -> Verdict:
    larger = max(group, key=lambda e: abs(e.amount_minor))
    closeness = min(amount_closeness(e.amount_minor, larger.amount_minor) for e in group)
    amounts = ", ".join(f"{e.source} {format_minor(e.amount_minor, e.currency)}" for e in _ordered(group))
    return verdict(anchor, group, config, EXCEPTION, kind=MISMATCH,
                    confidence=round(0.9 + 0.1 * closeness, 4),
                    missing=missing_sources(group, config),
                    reason=f"idempotency key {group_key(group)!r} links different amounts: {amounts}")


def ambiguous(anchor: Event, group: list[Event], options: list[Event], rivals: list[Event],
              count: int, config: MatchConfig) -> Verdict:
    members = unique(group + options + rivals)
    candidates = _candidates(anchor, [e for e in members if e is not anchor], config)
    return verdict(anchor, members, config, EXCEPTION, kind=AMBIGUOUS, candidates=candidates,
                    confidence=round(1 / max(count, 2), 4), missing=[],
                    reason=f"{max(count, 2)} equally good candidate sets; Tally does not guess")


def review(anchor: Event, group: list[Event], near: list[Event], config: MatchConfig) -> Verdict:
    """Near candidates ranked for a human; a clear best one per missing source joins the group."""
    ranked = _candidates(anchor, near, config)
    chosen = list(group)
    for source in missing_sources(group, config):
        best = [c for c in ranked if c.event.startswith(source + ":")]
        if len(best) == 1 or (len(best) > 1 and best[0].confidence > best[1].confidence):
            chosen.append(next(e for e in near if e.label == best[0].event))
    return verdict(anchor, chosen, config, EXCEPTION, kind=REVIEW, candidates=ranked,
                    confidence=ranked[0].confidence, missing=missing_sources(chosen, config),
                    reason=f"no exact counterpart; {len(ranked)} candidate(s) within the amount tolerance")


def missing_counterpart(anchor: Event, group: list[Event], missing: list[str],
                        config: MatchConfig) -> Verdict:
    return verdict(anchor, group, config, EXCEPTION, kind=MISSING, missing=missing,
                    reason=f"no counterpart from {', '.join(missing)} inside the match window")


def duplicate(event: Event, original: Claim, config: MatchConfig) -> Verdict:
    candidates = [Candidate(original.label, original.ref, 1.0)]
    return verdict(event, [event], config, EXCEPTION, kind=DUPLICATE, candidates=candidates,
                    confidence=1.0, reason=f"idempotency key {event.idempotency_key!r} "
                                           f"already used by {original.label}")


def verdict(anchor: Event, members: list[Event], config: MatchConfig, outcome: str, *,
            kind: str | None = None, tier: int | None = None, confidence: float | None = None,
            missing: list[str] = (), candidates: list[Candidate] = (), reason: str,
            amount: int | None = None) -> Verdict:
    """The decision on `members`, in the anchor's account and currency, over the anchor's
    window; its amount is the anchor's unless `amount` says otherwise."""
    members = _ordered(members)
    labels = [e.label for e in members]
    refs = [e.ref for e in members]
    decision = Decision(
        decision_id=decision_id(kind or "match", labels, refs),
        kind="match" if kind is None else "exception", tier=tier, exception_kind=kind,
        account=anchor.account, currency=anchor.currency,
        amount_minor=anchor.amount_minor if amount is None else amount,
        confidence=confidence, member_event_ids=labels, member_refs=refs,
        window_start=anchor.time_us, window_end=anchor.time_us + config.match_window_us,
        missing_sources=list(missing), candidates=list(candidates), reason=reason)
    return Verdict(decision, members, outcome)


def tagged(verdict_: Verdict, relation: str | None) -> Verdict:
    """The verdict as its relation's: the relation named, its id keyed by it, the fees
    the members carry summed. A config without relations (None) keeps ids as they were."""
    fees = [e.fee_minor for e in verdict_.members if e.fee_minor is not None]
    if relation is None and not fees:
        return verdict_
    d = verdict_.decision
    kind = d.exception_kind or "match"
    decision = msgspec.structs.replace(
        d, relation=relation, fee_minor=sum(fees) if fees else None,
        decision_id=decision_id(kind, d.member_event_ids, d.member_refs, relation))
    return Verdict(decision, verdict_.members, verdict_.outcome)


def _candidates(anchor: Event, events: list[Event], config: MatchConfig) -> list[Candidate]:
    scored = [(pair_confidence(anchor, e, config.match_window_us), e) for e in events]
    scored.sort(key=lambda pair: (-pair[0], event_order(pair[1])))
    return [Candidate(e.label, e.ref, score) for score, e in scored]


def _ordered(events: list[Event]) -> list[Event]:
    return sorted(events, key=event_order)


def unique(events: list[Event]) -> list[Event]:
    seen, out = set(), []
    for event in events:
        if id(event) not in seen:
            seen.add(id(event))
            out.append(event)
    return out


def format_minor(amount_minor: int, currency: str) -> str:
    """Integer minor units back to the contract's decimal string."""
    places = exponent(currency) or 0
    sign, digits = ("-" if amount_minor < 0 else ""), str(abs(amount_minor)).rjust(places + 1, "0")
    return sign + (digits[:-places] + "." + digits[-places:] if places else digits)
