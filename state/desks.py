"""A desk: one relation's open records, per account, and when each is due.

Each relation of the config (state/relations.py) has a desk in every shard. A desk
holds a `Book` per account of the records the relation takes, and a heap of
(deadline, account, tag) entries: the moments its decisions become final. What is
shared by every rule lives here:

- a record enters its *primary* desk by `take`: redeliveries and late records are
  recognised there, from the desk's memories, and decided alone; a record taken
  enters its other desks by `join`, without memories;
- a decision removes its members from this desk's books only, and writes the fate
  (and its redeliveries' fates) of the members whose primary desk this is;
- memories expire once no future record can use them.

`MatchDesk` decides with state/matching.py, anchor by anchor, as Tally always has;
state/batches.py and state/payouts.py hold the other two rules' desks.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable

import msgspec

from state.book import Book, Seen
from state.config import MatchConfig
from state.contract import Event
from state.decision import DUPLICATE, PENDING, REDELIVERY, Decision, Fate
from state.matching import decide, decides_alone
from state.relations import Relation
from state.verdicts import Claim, Verdict, tagged



def fate_of(event: Event, outcome: str, decision: str | None, window_end: int | None,
            ref: str | None = None) -> Fate:
    """The fate of `event`, or of its redelivery at `ref` ("topic:partition:offset")."""
    if ref is None:
        return Fate(event.topic, event.partition, event.offset, event.source, event.event_id,
                    outcome, decision, window_end)
    topic, partition, offset = ref.rsplit(":", 2)
    return Fate(topic, int(partition), int(offset), event.source, event.event_id, outcome,
                decision, window_end)


class Output(msgspec.Struct):
    decisions: list[Decision] = []
    fates: list[Fate] = []

    def extend(self, other: "Output") -> None:
        self.decisions.extend(other.decisions)
        self.fates.extend(other.fates)


class Account(msgspec.Struct, gc=False):
    """An account's book in one desk as plain data: its records without the indexes.

    gc=False: the state holds no reference cycles (see state/book.py)."""

    open: list[Event] = []  # in canonical order
    seen: list[tuple[str, str, Seen]] = []  # (source, event id, delivery): Book.memories
    redelivered: dict[str, list[str]] = {}  # ref of an open event -> refs of its redeliveries
    claims: dict[str, Claim] = {}  # "source\x1fkey" -> the decided original of that key


class Desk:
    """The machinery every rule shares; subclasses say when an account is due and decide."""

    claims_keys = False  # whether a decided original claims its idempotency key (match)
    wake_tag: object = ()  # the heap tag of a quiet account's memories, comparable with the rule's

    def __init__(self, relation: Relation, config: MatchConfig,
                 primary: Callable[[Event], bool] | None = None):
        """`primary` tells the records whose primary desk this is; None: all of them (no
        record joins this desk from another), which spares asking per record."""
        self.relation, self.config = relation, config
        self.joined = primary is not None
        self.primary = primary if primary is not None else _every
        self.accounts: dict[str, Book] = {}
        self.deadlines: list[tuple] = []  # (deadline, account, tag)

    # ------------------------------------------------------------------ records in

    def take(self, event: Event, high_before: int, late: Callable, out: Output) -> bool:
        """A record of which this is the primary desk: False if it was a redelivery or
        late (and so decided here, alone, by `late(event, high_before=, config=)`), True if
        it is now open."""
        book = self._book(event)
        if self._redelivered(book, event, high_before, out):
            return False
        if event.time_us < high_before - self.config.allowed_lateness_us:
            self._alone(book, event, late(event, high_before=high_before, config=self.config),
                        out)
            return False
        book.delivered(event)
        self.join(event)
        return True

    def skewed(self, event: Event, high_before: int, verdict: Callable, out: Output) -> None:
        """A record its partition did not follow: decided alone, unless a redelivery."""
        book = self._book(event)
        if not self._redelivered(book, event, high_before, out):
            self._alone(book, event, verdict(event), out)

    def join(self, event: Event) -> None:
        book = self._book(event)
        was_first = book.open[0] if book.open else None
        book.add(event)
        self._added(event.account, book, event, book.open[0] is not was_first)

    def _added(self, name: str, book: Book, event: Event, new_first: bool) -> None:
        raise NotImplementedError

    def _book(self, event: Event) -> Book:
        book = self.accounts.get(event.account)
        if book is None:
            book = self.accounts[event.account] = Book(self.config.redelivery_horizon_us)
        return book

    def _redelivered(self, book: Book, event: Event, high_before: int, out: Output) -> bool:
        """A redelivery whatever its time: its fate follows the first delivery's."""
        first = book.first(event)
        if first is None or first.time_us < high_before - self.config.redelivery_horizon_us:
            return False
        if isinstance(first, Event):  # still open
            book.redelivered.setdefault(first.ref, []).append(event.ref)
        else:
            out.fates.append(fate_of(event, REDELIVERY, first.decision_id, first.window_end))
        return True

    def _alone(self, book: Book, event: Event, verdict: tuple[Decision, Fate],
               out: Output) -> None:
        """A record decided on its own (late, or clock-skewed): its redeliveries follow it.
        Remembered at the decision's window end: a skewed record's own time means nothing."""
        decision, fate = verdict
        book.decided(event, Seen(event.ref, min(event.time_us, decision.window_end),
                                 decision.decision_id, decision.window_end))
        out.decisions.append(decision)
        out.fates.append(fate)

    # ------------------------------------------------------------------ decisions out

    def advance(self, watermark: int) -> Output:
        raise NotImplementedError

    def _apply(self, book: Book, verdict: Verdict, out: Output) -> None:
        verdict = tagged(verdict, self.relation.name)
        decision = verdict.decision
        out.decisions.append(decision)
        for event in verdict.members:
            self._remove(book, event)
        original = decision.exception_kind != DUPLICATE
        for event in verdict.members:
            if self.claims_keys and original and event.idempotency_key is not None:
                book.claim(event)
            if not self.primary(event):
                continue
            if book.first(event) is event:
                book.decided(event, Seen(event.ref, event.time_us, decision.decision_id,
                                         decision.window_end))
            out.fates.append(fate_of(event, verdict.outcome, decision.decision_id,
                                     decision.window_end))
            for ref in book.redelivered.pop(event.ref, []):
                out.fates.append(fate_of(event, REDELIVERY, decision.decision_id,
                                         decision.window_end, ref))

    def _remove(self, book: Book, event: Event) -> None:
        book.remove(event)

    def _forget(self, name: str, book: Book, watermark: int) -> None:
        """Drop memories no future record or decision can use (their validity checks are
        explicit). Future records of a partition arrive with progress >= watermark +
        lateness, and future anchors are either open now or arrive at or above the watermark.
        """
        horizon = self.config.redelivery_horizon_us
        floor = min(book.anchor().time_us, watermark) if book.open else watermark
        book.forget(watermark - horizon, floor - horizon)
        if book.empty():
            del self.accounts[name]
        elif not book.open:
            # come back once the watermark has passed every memory's horizon, strictly
            # after the watermark that kept them, so this never loops in `advance`
            self._wake(book.newest_memory + horizon + 1, name)

    def _wake(self, when: int, name: str) -> None:
        heapq.heappush(self.deadlines, (when, name, self.wake_tag))

    def _quiet(self, name: str, watermark: int) -> Book | None:
        """The account's book, unless it has nothing open: then only its memories expire."""
        book = self.accounts.get(name)
        if book is not None and not book.open:
            self._forget(name, book, watermark)
            return None
        return book

    # ------------------------------------------------------------------ what is open

    def pending(self) -> list[Fate]:
        """Fates of records waiting here as their primary desk (and their redeliveries)."""
        fates = []
        for book in self.accounts.values():
            for event in book.open:
                if self.primary(event):
                    fates.append(fate_of(event, PENDING, None, None))
                    fates += [fate_of(event, PENDING, None, None, ref)
                              for ref in book.redelivered.get(event.ref, [])]
        return fates

    def open_count(self) -> int:
        if not self.joined:
            return sum(len(book.open) for book in self.accounts.values())
        return sum(1 for book in self.accounts.values() for e in book.open if self.primary(e))

    def redeliveries_waiting(self) -> int:
        return sum(len(refs) for book in self.accounts.values() for refs in book.redelivered.values())

    def accounts_state(self) -> list[tuple[str, Account]]:
        return [(name, Account(book.open, book.memories(), book.redelivered, book.claims))
                for name, book in sorted(self.accounts.items())]

    def restore(self, accounts: list[tuple[str, Account]]) -> None:
        horizon = self.config.redelivery_horizon_us
        for name, account in accounts:
            book = self.accounts[name] = Book(horizon)
            book.redelivered, book.claims = account.redelivered, account.claims
            book.open = list(account.open)
            book.restore_seen(account.seen, self.primary)
            book.rebuild()
            self._restored(name, book)
            if not book.open and (book.seen or book.claims):
                self._wake(book.newest_memory + horizon + 1, name)

    def _restored(self, name: str, book: Book) -> None:
        """Schedule what a restored book holds open."""
        for event in book.open:
            self._added(name, book, event, event is book.open[0])


def _every(event: Event) -> bool:
    return True


class MatchDesk(Desk):
    """One record per expected source, anchor by anchor (state/matching.py)."""

    claims_keys = True

    def _added(self, name: str, book: Book, event: Event, new_first: bool) -> None:
        if new_first:
            self._schedule(name, book)

    def _schedule(self, name: str, book: Book) -> None:
        anchor = book.anchor()
        heapq.heappush(self.deadlines, (anchor.time_us + self.config.match_window_us, name, ()))

    def advance(self, watermark: int) -> Output:
        """Decide every anchor whose window (and evidence) the watermark has passed, in
        canonical order."""
        out = Output([], [])
        window = self.config.match_window_us
        while self.deadlines and self.deadlines[0][0] < watermark:
            deadline, name, _ = heapq.heappop(self.deadlines)
            book = self._quiet(name, watermark)
            if book is None:
                continue
            anchor = book.anchor()
            end = anchor.time_us + window
            if deadline != end and deadline != end + window:
                continue  # stale entry: this account's anchor changed since
            if watermark <= end + window and not decides_alone(book, anchor, self.config):
                heapq.heappush(self.deadlines, (end + window, name, ()))  # wait for the evidence
                continue
            for verdict in decide(book, anchor, self.config):
                self._apply(book, verdict, out)
            if book.open:
                self._schedule(name, book)
            self._forget(name, book, watermark)
        return out
