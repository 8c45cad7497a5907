"""A scan-based reference for the two settlement rules: `batch` and `payout`.

The engine decides them incrementally, from heaps of deadlines and per-account indexes
(state/batches.py, state/payouts.py), as the relation's watermark moves. This reference
is given the whole log at once (every valid, on-time record: no lateness, no
redelivery) and states each rule as plain loops over lists: no heap, no index, no state
carried between decisions but the list of what is still open.

Only the formatting of a verdict is shared with the engine (state/verdicts.py, and
state.batches.settle / state.payouts.unexplained, which only format a group already
chosen). Every choice of members is made here: the batch grouping, the lag window, what
"names the payout" means, who is a rival, which credits are near.
"""

from __future__ import annotations

import re

import msgspec

from state import relations as rel
from state.batches import settle
from state.config import MatchConfig
from state.contract import Event
from state.decision import Decision
from state.payouts import unexplained, unpaid
from state.relations import Relation
from state.scoring import group_confidence, within_tolerance
from state.verdicts import (Verdict, ambiguous, event_order, review, tagged,
                            verdict)


def decisions(events: list[Event], config: MatchConfig) -> list[Decision]:
    """Every decision of the config's `batch` and `payout` relations over `events` (all
    the valid records of a log, in any order), once every window has closed."""
    found: list[Decision] = []
    for relation in config.relation_list():
        if relation.rule == rel.BATCH:
            found += batches(events, relation, config)
        elif relation.rule == rel.PAYOUT:
            found += deposits(events, relation, config)
    return found


def own_config(relation: Relation, config: MatchConfig) -> MatchConfig:
    """The config as a verdict of this relation is formatted with: its sources expected,
    its window (the lag's end for a payout) and its tolerance."""
    if relation.rule == rel.BATCH:
        expected, window = (relation.payouts, *relation.items), relation.window_us
    else:
        expected, window = (relation.payouts, relation.credits), relation.lag_max_us
    return msgspec.structs.replace(config, expected_sources=tuple(dict.fromkeys(expected)),
                                   match_window_us=window,
                                   amount_tolerance_ppm=relation.tolerance_ppm)


def _without(events: list[Event], gone: list[Event]) -> list[Event]:
    ids = {id(e) for e in gone}
    return [e for e in events if id(e) not in ids]


# ----------------------------------------------------------------------------- batches

def batch_records(events: list[Event], relation: Relation) -> list[Event]:
    """The payouts of the relation's payout source, and the batched transactions and fee
    lines of its item sources."""
    return [e for e in events
            if (e.payout and e.source == relation.payouts)
            or (not e.payout and e.source in relation.items and e.batch_id is not None)]


def batches(events: list[Event], relation: Relation, config: MatchConfig) -> list[Decision]:
    own = own_config(relation, config)
    records = batch_records(events, relation)
    found = []
    for account, batch in sorted({(e.account, e.batch_id) for e in records}):
        open_ = sorted([e for e in records if e.account == account and e.batch_id == batch],
                       key=event_order)
        while open_:
            first = open_[0]  # the earliest open record of the batch...
            end = first.time_us + relation.window_us
            group = [e for e in open_ if e.time_us <= end]  # ...and the window after it
            found.append(tagged(settle(group, relation, own), relation.name).decision)
            open_ = _without(open_, group)
    return found


# ----------------------------------------------------------------------------- deposits

def mentions(credit: Event, payout: Event) -> bool:
    """The credit's reference carries the payout's batch id or its own reference (case
    aside)."""
    text = (credit.reference or "").upper()
    # a whole word: no letter or digit (of any script) right before or after it
    return any(mark and re.search(rf"(?<![^\W_]){re.escape(mark.upper())}(?![^\W_])", text)
               for mark in (payout.batch_id, payout.reference))


def deposit_records(events: list[Event], relation: Relation) -> list[Event]:
    """Payouts of the payout source; transactions (not fee lines) of the credit source."""
    return [e for e in events
            if (e.payout and e.source == relation.payouts)
            or (not e.payout and e.source == relation.credits
                and rel.record_kind(False, e.amount_minor, e.fee_minor) == rel.TRANSACTION)]


def deposits(events: list[Event], relation: Relation, config: MatchConfig) -> list[Decision]:
    """Payouts and credits in the order of their deadlines, each still open one decided
    from everything open at that moment."""
    own = own_config(relation, config)
    lag_min, lag_max = relation.lag_min_us, relation.lag_max_us

    def deadline(e: Event) -> tuple:
        # a payout is final once every credit it could take has come (t + lag_max); a
        # credit once every payout that could take it has been decided
        if e.payout:
            return (e.time_us + lag_max, 0, event_order(e))
        return (e.time_us - lag_min + lag_max, 1, event_order(e))

    records = deposit_records(events, relation)
    open_ = list(records)
    found = []
    for record in sorted(records, key=deadline):
        if not any(e is record for e in open_):
            continue  # decided already, with some payout
        if record.payout:
            chosen = one_payout(record, open_, relation, own)
        else:
            chosen = unexplained(record, relation, own)
        chosen = tagged(chosen, relation.name)
        found.append(chosen.decision)
        open_ = _without(open_, chosen.members)
    return found


def one_payout(payout: Event, open_: list[Event], relation: Relation,
               own: MatchConfig) -> Verdict:
    """The payout rule of state/payouts.py's docstring, as scans over the open records."""
    lag_min, lag_max = relation.lag_min_us, relation.lag_max_us

    def same_book(e: Event) -> bool:
        return e.account == payout.account and e.currency == payout.currency

    def lag_holds(p: Event, c: Event) -> bool:
        return p.time_us + lag_min <= c.time_us <= p.time_us + lag_max

    credits = [e for e in open_ if not e.payout and same_book(e)]
    payouts = [e for e in open_ if e.payout and same_book(e)]

    def named_elsewhere(p: Event) -> bool:
        return any(c.amount_minor == p.amount_minor and lag_holds(p, c) and mentions(c, p)
                   for c in credits)

    def others_for(credit: Event) -> list[Event]:
        """The other open payouts that could take the credit: its amount, its lag."""
        return [p for p in payouts if p is not payout and p.amount_minor == credit.amount_minor
                and lag_holds(p, credit)]

    def rivals_for(credit: Event) -> list[Event]:
        """Those of them that an exact credit of their own does not name."""
        return [p for p in others_for(credit) if not named_elsewhere(p)]

    exact = [c for c in credits if c.amount_minor == payout.amount_minor and lag_holds(payout, c)]

    # tier 1: exactly one exact credit names the payout
    named = [c for c in exact if mentions(c, payout)]
    if len(named) == 1:
        return verdict(payout, [payout, named[0]], own, "matched", tier=1, confidence=1.0,
                       reason="exact amount; the credit's reference names the payout")
    if len(named) > 1:
        return ambiguous(payout, [payout], named, [], len(named), own)

    # tier 2: the exact credits that name no other payout which could take them
    free = [c for c in exact if not any(mentions(c, p) for p in others_for(c))]
    if len(free) > 1:
        rivals = [p for c in free for p in rivals_for(c)]
        return ambiguous(payout, [payout], free, rivals, len(free), own)
    if len(free) == 1:
        credit = free[0]
        rivals = rivals_for(credit)
        if rivals:
            return ambiguous(payout, [payout, credit], [], rivals, len(rivals) + 1, own)
        return verdict(payout, [payout, credit], own, "matched", tier=2,
                       confidence=group_confidence(payout, [credit], own.match_window_us),
                       reason="exact amount inside the lag; the only credit, and no other payout "
                              "could take it")

    # review: credits within the tolerance, not exact, and no open payout's exact credit
    near = []
    for c in credits:
        if c.amount_minor == payout.amount_minor or not lag_holds(payout, c):
            continue
        if not within_tolerance(c.amount_minor, payout.amount_minor, relation.tolerance_ppm):
            continue
        if any(p.amount_minor == c.amount_minor and lag_holds(p, c) for p in payouts):
            continue
        near.append(c)
    if near:
        return review(payout, [payout], sorted(near, key=event_order), own)
    return unpaid(payout, relation, own)
