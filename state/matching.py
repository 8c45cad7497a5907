"""One decision: the fate of an anchor event, from the events in its window.

The anchor is an account's earliest open event. Its window is
[anchor time, anchor time + match_window]; the engine calls `decide` only once
the watermark has passed the window's end, so the window holds every non-late
event that will ever fall in it. `decide` is a pure function of the anchor, the
window and the account's claimed idempotency keys: that is what makes it
deterministic.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping

import msgspec

from state.config import MatchConfig
from state.contract import Event
from state.currency import exponent
from state.decision import (AMBIGUOUS, DUPLICATE, EXCEPTION, MATCHED, MISMATCH, MISSING, REVIEW,
                            Candidate, Decision, decision_id)
from state.scoring import group_confidence, pair_confidence, within_tolerance, amount_closeness

MAX_CANDIDATE_SETS = 64  # beyond this many combinations the answer is "ambiguous" anyway


class Claim(msgspec.Struct, frozen=True, array_like=True, gc=False):
    """An idempotency key already used by a decided event of this account."""

    label: str
    ref: str
    time_us: int


def claim_key(source: str, idempotency_key: str) -> str:
    """How claims are keyed: one string, so snapshots stay plain msgpack maps."""
    return f"{source}\x1f{idempotency_key}"


class Verdict(msgspec.Struct, frozen=True):
    decision: Decision
    members: list[Event]
    outcome: str  # the fate of every member: "matched" or "exception"


def event_order(event: Event) -> tuple:
    return (event.time_us, event.source, event.event_id, event.topic, event.partition, event.offset)


def decide(anchor: Event, window: list[Event], claims: Mapping[str, Claim],
           config: MatchConfig) -> list[Verdict]:
    """The verdicts for `anchor`: duplicates found in its window, then its own group."""
    verdicts, pool = _split_duplicates(window, claims, config)
    if any(v.members[0] is anchor for v in verdicts):
        return verdicts
    return verdicts + [_group(anchor, pool, config)]


def _split_duplicates(window, claims, config) -> tuple[list[Verdict], list[Event]]:
    """Two event_ids from one source with one idempotency key: the later is a duplicate."""
    first: dict[str, Claim] = dict(claims)
    verdicts, pool = [], []
    for event in window:
        if event.idempotency_key is None:
            pool.append(event)
            continue
        key = claim_key(event.source, event.idempotency_key)
        original = first.get(key)
        if original is None:
            first[key] = Claim(event.label, event.ref, event.time_us)
            pool.append(event)
        else:
            verdicts.append(_duplicate(event, original, config))
    return verdicts, pool


def _group(anchor: Event, pool: list[Event], config: MatchConfig) -> Verdict:
    peers = [e for e in pool if e is not anchor and e.currency == anchor.currency]
    core = [anchor] + _key_linked(anchor.idempotency_key, [anchor.source], peers)
    if any(e.amount_minor != anchor.amount_minor for e in core):
        return _mismatch(anchor, core, config)
    missing = _missing(core, config)
    if not missing:
        return _match(anchor, core, config)
    exact = {s: [e for e in peers if e.source == s and e.amount_minor == anchor.amount_minor
                 and _compatible(e.idempotency_key, anchor.idempotency_key)] for s in missing}
    if all(exact.values()):
        sets = _candidate_sets(core, [exact[s] for s in missing])
        if len(sets) == 1:
            group = core + list(sets[0])
            rivals = _contested(group, peers)
            if rivals:
                return _ambiguous(anchor, group, [], rivals, 2, config)
            return _match(anchor, group, config)
        if len(sets) > 1:
            options = [e for combo in sets for e in combo]
            return _ambiguous(anchor, core, options, _rivals(anchor, peers), len(sets), config)
    return _partial(anchor, core, peers, exact, config)


def _partial(anchor, core, peers, exact, config) -> Verdict:
    """No unique complete group: take the unambiguous part, then review or report missing."""
    group, key, tied = list(core), _group_key(core), []
    for source, events in exact.items():
        options = [e for e in events if _compatible(e.idempotency_key, key)]
        if len(options) == 1:
            group.append(options[0])
            key = key or options[0].idempotency_key
        elif len(options) > 1:
            tied.extend(options)
    if tied:
        return _ambiguous(anchor, group, tied, _rivals(anchor, peers), len(tied), config)
    if key != anchor.idempotency_key:  # a member brought a key: its key-linked events belong too
        group += _key_linked(key, [e.source for e in group], peers)
        if any(e.amount_minor != anchor.amount_minor for e in group):
            return _mismatch(anchor, group, config)
    missing = _missing(group, config)
    near = [e for e in peers if e.source in missing and e not in group
            and _compatible(e.idempotency_key, key)
            and within_tolerance(e.amount_minor, anchor.amount_minor, config.amount_tolerance_ppm)]
    if near:
        return _review(anchor, group, near, config)
    return _missing_counterpart(anchor, group, missing, config)


def _key_linked(key: str | None, taken: list[str], peers: list[Event]) -> list[Event]:
    """The first event of each source not yet `taken` that carries `key`."""
    if key is None:
        return []
    linked: dict[str, Event] = {}
    for event in peers:
        if event.idempotency_key == key and event.source not in taken:
            linked.setdefault(event.source, event)
    return list(linked.values())


def _candidate_sets(core: list[Event], per_source: list[list[Event]]) -> list[tuple[Event, ...]]:
    """Every choice of one candidate per missing source whose keys agree with the core."""
    size = 1
    for events in per_source:
        size *= len(events)
    if size > MAX_CANDIDATE_SETS:
        return [()] * 2  # more than one: ambiguous without enumerating them all
    return [combo for combo in itertools.product(*per_source)
            if _consistent_key(core + list(combo))]


def _consistent_key(events: list[Event]) -> bool:
    keys = {e.idempotency_key for e in events if e.idempotency_key is not None}
    return len(keys) <= 1


def _group_key(events: list[Event]) -> str | None:
    return next((e.idempotency_key for e in events if e.idempotency_key is not None), None)


def _compatible(key: str | None, group_key: str | None) -> bool:
    return key is None or group_key is None or key == group_key


def _missing(group: list[Event], config: MatchConfig) -> list[str]:
    present = {e.source for e in group}
    return [s for s in config.expected_sources if s not in present]


def _contested(group: list[Event], peers: list[Event]) -> list[Event]:
    """Events outside the group that could take a member joined by tier-2 rules.

    A unique choice from the anchor's side is not enough: if the chosen event could
    as well complete another group (a same-amount event of a source the group already
    has), the pairing is a guess, and Tally does not guess.
    """
    anchor, sources = group[0], {e.source for e in group}
    joined = [e for e in group[1:]
              if anchor.idempotency_key is None or e.idempotency_key != anchor.idempotency_key]
    return _unique([y for x in joined for y in peers
                    if y.source != x.source and y.source in sources and y not in group
                    and y.amount_minor == x.amount_minor and y.currency == x.currency
                    and _compatible(y.idempotency_key, x.idempotency_key)])


def _rivals(anchor: Event, peers: list[Event]) -> list[Event]:
    """Events the anchor could be swapped with: same source, same amount, no key to tell them apart."""
    if anchor.idempotency_key is not None:
        return []
    return [e for e in peers if e.source == anchor.source and e.idempotency_key is None
            and e.amount_minor == anchor.amount_minor]


# ----------------------------------------------------------------------------- verdicts

def _match(anchor: Event, group: list[Event], config: MatchConfig) -> Verdict:
    keyed = all(e.idempotency_key is not None for e in group) and _consistent_key(group)
    tier = 1 if keyed and len(group) > 1 else 2
    others = [e for e in group if e is not anchor]
    confidence = 1.0 if tier == 1 else group_confidence(anchor, others, config.match_window_us)
    reason = ("linked by idempotency key; amounts agree" if tier == 1 else
              "exact amount and currency inside the match window; the only candidate set")
    return _verdict(anchor, group, config, MATCHED, tier=tier, confidence=confidence, reason=reason)


def _mismatch(anchor: Event, group: list[Event], config: MatchConfig) -> Verdict:
    larger = max(group, key=lambda e: abs(e.amount_minor))
    closeness = min(amount_closeness(e.amount_minor, larger.amount_minor) for e in group)
    amounts = ", ".join(f"{e.source} {format_minor(e.amount_minor, e.currency)}" for e in _ordered(group))
    return _verdict(anchor, group, config, EXCEPTION, kind=MISMATCH,
                    confidence=round(0.9 + 0.1 * closeness, 4), missing=_missing(group, config),
                    reason=f"idempotency key {_group_key(group)!r} links different amounts: {amounts}")


def _ambiguous(anchor, group, options, rivals, count, config) -> Verdict:
    members = _unique(group + options + rivals)
    candidates = _candidates(anchor, [e for e in members if e is not anchor], config)
    return _verdict(anchor, members, config, EXCEPTION, kind=AMBIGUOUS, candidates=candidates,
                    confidence=round(1 / max(count, 2), 4), missing=[],
                    reason=f"{max(count, 2)} equally good candidate sets; Tally does not guess")


def _review(anchor, group, near, config) -> Verdict:
    ranked = _candidates(anchor, near, config)
    chosen = list(group)
    for source in _missing(group, config):
        best = [c for c in ranked if c.event.startswith(source + ":")]
        if len(best) == 1 or (len(best) > 1 and best[0].confidence > best[1].confidence):
            chosen.append(next(e for e in near if e.label == best[0].event))
    return _verdict(anchor, chosen, config, EXCEPTION, kind=REVIEW, candidates=ranked,
                    confidence=ranked[0].confidence, missing=_missing(chosen, config),
                    reason=f"no exact counterpart; {len(ranked)} candidate(s) within the amount tolerance")


def _missing_counterpart(anchor, group, missing, config) -> Verdict:
    return _verdict(anchor, group, config, EXCEPTION, kind=MISSING, missing=missing,
                    reason=f"no counterpart from {', '.join(missing)} inside the match window")


def _duplicate(event: Event, original: Claim, config: MatchConfig) -> Verdict:
    candidates = [Candidate(original.label, original.ref, 1.0)]
    return _verdict(event, [event], config, EXCEPTION, kind=DUPLICATE, candidates=candidates,
                    confidence=1.0, reason=f"idempotency key {event.idempotency_key!r} "
                                           f"already used by {original.label}")


def _verdict(anchor: Event, members: list[Event], config: MatchConfig, outcome: str, *,
             kind: str | None = None, tier: int | None = None, confidence: float | None = None,
             missing: list[str] = (), candidates: list[Candidate] = (), reason: str) -> Verdict:
    members = _ordered(members)
    labels = [e.label for e in members]
    decision = Decision(
        decision_id=decision_id(kind or "match", labels, [e.ref for e in members]), kind="match" if kind is None else "exception",
        tier=tier, exception_kind=kind, account=anchor.account, currency=anchor.currency,
        amount_minor=anchor.amount_minor, confidence=confidence, member_event_ids=labels,
        member_refs=[e.ref for e in members], window_start=anchor.time_us,
        window_end=anchor.time_us + config.match_window_us, missing_sources=list(missing),
        candidates=list(candidates), reason=reason)
    return Verdict(decision, members, outcome)


def _candidates(anchor: Event, events: list[Event], config: MatchConfig) -> list[Candidate]:
    scored = [(pair_confidence(anchor, e, config.match_window_us), e) for e in events]
    scored.sort(key=lambda pair: (-pair[0], event_order(pair[1])))
    return [Candidate(e.label, e.ref, score) for score, e in scored]


def _ordered(events: list[Event]) -> list[Event]:
    return sorted(events, key=event_order)


def _unique(events: list[Event]) -> list[Event]:
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
