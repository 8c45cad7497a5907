"""The batch rule: a payout and the items of its batch, settled when the sums agree.

An acquirer settles a merchant account in batches: each item is a payment at its gross
amount less the fee withheld (refunds are negative items, a batch fee is a line of
amount 0 with a fee), and one payout pays the signed sum of the items' nets. A batch is
the open records of one (account, batch_id) from its earliest event time to that time
plus the relation's window; it is decided once the relation's watermark has passed the
window's end, so every record of it has arrived (or was late). Then:

- the payouts equal the items' nets exactly: a match, tier 1 (a batch whose items net to
  zero needs no payout);
- both are there and disagree (or mix currencies): `settlement_mismatch`, naming the
  difference, with every item a member;
- one side is missing: `missing_counterpart`.

Records of the batch id after the window's end start a batch of their own.
"""

from __future__ import annotations

import heapq
from bisect import bisect_left, insort

from state.book import Book
from state.config import MatchConfig
from state.contract import Event
from state.decision import EXCEPTION, MATCHED, MISSING, SETTLEMENT_MISMATCH
from state.desks import Desk, Output
from state.relations import Relation
from state.verdicts import Verdict, format_minor, verdict


def settle(group: list[Event], relation: Relation, config: MatchConfig) -> Verdict:
    """The verdict on one batch's records (canonical order, all of one account)."""
    payouts = [e for e in group if e.payout]
    items = [e for e in group if not e.payout]
    anchor, batch = group[0], group[0].batch_id
    currencies = sorted({e.currency for e in group})
    paid, net = sum(e.amount_minor for e in payouts), sum(e.net_minor for e in items)
    fees = sum(e.fee_minor or 0 for e in items)
    if len(currencies) > 1:
        return verdict(anchor, group, config, EXCEPTION, kind=SETTLEMENT_MISMATCH,
                       confidence=0.0, amount=paid or net,
                       reason=f"batch {batch!r} mixes currencies: {', '.join(currencies)}")
    currency = currencies[0]

    def money(minor: int) -> str:
        return f"{format_minor(minor, currency)} {currency}"

    summary = (f"{len(items)} item(s) of batch {batch!r} net {money(net)} "
               f"(gross {money(net + fees)}, fees {money(fees)})")
    if paid == net and (payouts or net == 0):
        what = "its payout pays" if payouts else "nothing to pay out:"
        return verdict(anchor, group, config, MATCHED, tier=1, confidence=1.0, amount=paid,
                       reason=f"settled: {what} {summary}")
    if not payouts:
        return verdict(anchor, group, config, EXCEPTION, kind=MISSING, amount=net,
                       missing=[relation.payouts], reason=f"no payout for {summary}")
    if not items:
        return verdict(anchor, group, config, EXCEPTION, kind=MISSING, amount=paid,
                       missing=list(relation.items),
                       reason=f"payout of {money(paid)} for batch {batch!r}: no item of the "
                              f"batch was reported")
    return verdict(anchor, group, config, EXCEPTION, kind=SETTLEMENT_MISMATCH, amount=paid,
                   confidence=0.0,
                   reason=f"payout pays {money(paid)} but its {summary}: difference "
                          f"{money(paid - net)}")


class BatchDesk(Desk):
    """Open batch records per account, grouped by batch id; a batch is due at its first
    record's time plus the window (the heap's tag is the batch id)."""

    wake_tag = ""

    def __init__(self, relation: Relation, config: MatchConfig, primary):
        super().__init__(relation, config, primary)
        self.batches: dict[tuple[str, str], list[Event]] = {}  # (account, batch) -> records

    def _added(self, name: str, book: Book, event: Event, new_first: bool) -> None:
        group = self.batches.setdefault((name, event.batch_id), [])
        insort(group, event)
        if group[0] is event:
            self._due(name, event.batch_id, event)

    def _due(self, name: str, batch: str, first: Event) -> None:
        heapq.heappush(self.deadlines, (first.time_us + self.relation.window_us, name, batch))

    def _remove(self, book: Book, event: Event) -> None:
        book.remove(event)
        key = (event.account, event.batch_id)
        group = self.batches[key]
        del group[bisect_left(group, event)]
        if not group:
            del self.batches[key]

    def advance(self, watermark: int) -> Output:
        out = Output([], [])
        while self.deadlines and self.deadlines[0][0] < watermark:
            deadline, name, batch = heapq.heappop(self.deadlines)
            book = self._quiet(name, watermark)
            group = self.batches.get((name, batch)) if batch else None
            if book is None or group is None:
                continue
            first = group[0]
            if first.time_us + self.relation.window_us != deadline:
                continue  # stale: the batch's first record changed since
            members = [e for e in group if e.time_us <= deadline]
            self._apply(book, settle(members, self.relation, self.config), out)
            rest = self.batches.get((name, batch))
            if rest:
                self._due(name, batch, rest[0])
            self._forget(name, book, watermark)
        return out
