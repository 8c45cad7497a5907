"""The payout rule: each payout with the one bank credit that pays it, days later.

A payout at time t can be paid by a credit of the same account and currency booked in
[t + lag_min, t + lag_max]. Each payout is decided once the relation's watermark has
passed t + lag_max, in the order of those deadlines, so everything its decision reads
(credits up to t + lag_max, and rival payouts that could take them, which are at most
that late) is complete and final:

- tier 1: exactly one credit of the exact amount names the payout: its reference
  contains the batch id or the payout's own reference;
- tier 2: exactly one credit of the exact amount, naming no other payout, and no other
  open payout of that amount could take it (one that a credit of its own names cannot);
- `ambiguous`: two credits, or two payouts, and nothing tells them apart;
- `review`: no exact credit, but credits within the amount tolerance (a bank charge
  deducted): scored for a human, never matched;
- `missing_counterpart`: no credit at all.

A credit is decided once every payout that could take it has been (at its time -
lag_min + lag_max): if still open, nothing explains it, a `missing_counterpart`.
"""

from __future__ import annotations

import heapq
from bisect import bisect_left

from state.book import Book
from state.config import MatchConfig
from state.contract import Event
from state.decision import EXCEPTION, MATCHED, MISSING
from state.desks import Desk, Output
from state.relations import Relation
from state.scoring import group_confidence, tolerance_reach, within_tolerance
from state.verdicts import Verdict, ambiguous, event_order, review, verdict

PAYOUT_FIRST, CREDIT_NEXT = 0, 1  # at one deadline, payouts are decided before credits


def names(credit: Event, payout: Event) -> bool:
    """The credit's reference carries the payout's batch id or reference as a whole word
    (so "PAYOUT B12" does not name batch "B1"), case aside."""
    text = (credit.reference or "").upper()
    return any(mark and _word_in(mark.upper(), text) for mark in (payout.batch_id, payout.reference))


def _word_in(word: str, text: str) -> bool:
    start = text.find(word)
    while start >= 0:
        end = start + len(word)
        if ((start == 0 or not text[start - 1].isalnum())
                and (end == len(text) or not text[end].isalnum())):
            return True
        start = text.find(word, start + 1)
    return False


class Lookups:
    """What one payout's decision reads from its account's book."""

    def __init__(self, book: Book, relation: Relation):
        self.book, self.relation = book, relation

    def credits(self, payout: Event, amount: int | None = None) -> list[Event]:
        """Open credits of the payout's exact amount (or `amount`) inside its lag window."""
        low, high = payout.time_us + self.relation.lag_min_us, payout.time_us + self.relation.lag_max_us
        return [e for e in self.book.same_amount(payout.currency, amount or payout.amount_minor)
                if not e.payout and e.source == self.relation.credits and low <= e.time_us <= high]

    def payouts_for(self, credit: Event, amount: int) -> list[Event]:
        """Open payouts of `amount` whose lag window holds the credit."""
        low, high = credit.time_us - self.relation.lag_max_us, credit.time_us - self.relation.lag_min_us
        return [e for e in self.book.same_amount(credit.currency, amount)
                if e.payout and e.source == self.relation.payouts and low <= e.time_us <= high]

    def claimed(self, payout: Event) -> bool:
        """An exact credit in its lag names it: that one is its own, whatever else it could take."""
        return any(names(c, payout) for c in self.credits(payout))

    def rivals(self, credit: Event, payout: Event) -> list[Event]:
        """The other open payouts that could as well take this exact credit of `payout`."""
        return [p for p in self.payouts_for(credit, payout.amount_minor)
                if p is not payout and not self.claimed(p)]

    def near(self, payout: Event, tolerance_ppm: int) -> list[Event]:
        """Credits within the tolerance of the payout, not exact, and not some other open
        payout's exact credit."""
        amount = payout.amount_minor
        reach = tolerance_reach(amount, tolerance_ppm)
        low, high = payout.time_us + self.relation.lag_min_us, payout.time_us + self.relation.lag_max_us
        return [e for e in self.book.amounts_between(payout.currency, amount - reach, amount + reach)
                if not e.payout and e.source == self.relation.credits and e.amount_minor != amount
                and low <= e.time_us <= high
                and within_tolerance(e.amount_minor, amount, tolerance_ppm)
                and not self.payouts_for(e, e.amount_minor)]


def deposit(book: Book, payout: Event, relation: Relation, config: MatchConfig) -> Verdict:
    """The verdict on one payout, from the credits its lag window holds."""
    look = Lookups(book, relation)
    exact = look.credits(payout)
    named = [c for c in exact if names(c, payout)]
    if len(named) == 1:
        return verdict(payout, [payout, named[0]], config, MATCHED, tier=1, confidence=1.0,
                       reason="exact amount; the credit's reference names the payout")
    if len(named) > 1:
        return ambiguous(payout, [payout], named, [], len(named), config)
    free = [c for c in exact
            if not any(names(c, p) for p in look.payouts_for(c, payout.amount_minor) if p is not payout)]
    if len(free) > 1:  # every payout that could take one of them is as good a guess
        rivals = [p for c in free for p in look.rivals(c, payout)]
        return ambiguous(payout, [payout], free, rivals, len(free), config)
    if len(free) == 1:
        rivals = look.rivals(free[0], payout)
        if rivals:
            return ambiguous(payout, [payout, free[0]], [], rivals, len(rivals) + 1, config)
        return verdict(payout, [payout, free[0]], config, MATCHED, tier=2,
                       confidence=group_confidence(payout, [free[0]], config.match_window_us),
                       reason="exact amount inside the lag; the only credit, and no other payout "
                              "could take it")
    near = look.near(payout, relation.tolerance_ppm)
    if near:
        return review(payout, [payout], sorted(near, key=event_order), config)
    return unpaid(payout, relation, config)


def unpaid(payout: Event, relation: Relation, config: MatchConfig) -> Verdict:
    return verdict(payout, [payout], config, EXCEPTION, kind=MISSING, missing=[relation.credits],
                   reason=f"no credit from {relation.credits} of the payout's amount, nor within "
                          f"the tolerance, booked {_days(relation.lag_min_us)} to "
                          f"{_days(relation.lag_max_us)} after it")


def unexplained(credit: Event, relation: Relation, config: MatchConfig) -> Verdict:
    return verdict(credit, [credit], config, EXCEPTION, kind=MISSING, missing=[relation.payouts],
                   reason=f"no payout from {relation.payouts} explains this credit: none of its "
                          f"amount was made {_days(relation.lag_min_us)} to "
                          f"{_days(relation.lag_max_us)} before it")


def _days(us: int) -> str:
    """A lag as people say it: whole days as days, anything else in hours."""
    if us % 86_400_000_000 == 0:
        return f"{us // 86_400_000_000} day(s)"
    return f"{us / 3_600_000_000:g} hour(s)"


class PayoutDesk(Desk):
    """Open payouts and credits per account; each is due on its own (the heap's tag is
    (payouts before credits, the record itself, in canonical order))."""

    def _added(self, name: str, book: Book, event: Event, new_first: bool) -> None:
        relation = self.relation
        if event.payout:
            due, rank = event.time_us + relation.lag_max_us, PAYOUT_FIRST
        else:
            due, rank = event.time_us - relation.lag_min_us + relation.lag_max_us, CREDIT_NEXT
        heapq.heappush(self.deadlines, (due, name, (rank, event)))

    def advance(self, watermark: int) -> Output:
        out = Output([], [])
        while self.deadlines and self.deadlines[0][0] < watermark:
            _, name, tag = heapq.heappop(self.deadlines)
            book = self._quiet(name, watermark)
            event = _open(book, tag[1]) if book is not None and tag else None
            if event is None:
                continue  # decided already, with another payout
            if event.payout:
                found = deposit(book, event, self.relation, self.config)
            else:
                found = unexplained(event, self.relation, self.config)
            self._apply(book, found, out)
            self._forget(name, book, watermark)
        return out


def _open(book: Book, event: Event) -> Event | None:
    i = bisect_left(book.open, event)
    if i < len(book.open) and book.open[i] is event:
        return event
    return None
