"""An account's book: its open events, indexed by what matching looks up.

Every lookup a decision makes is answered from an index in time or size of what
it finds, never by scanning the account's open events, so the cost of a
decision does not grow with how many payments the account carries:
- `open`: every open event in canonical order (the anchor is the first);
- `by_key`: per idempotency key, its open events (all sources) in canonical order (the
  event alone when it is the only one, as most keys are: a list each costs ~90 bytes);
- `by_size`: per currency, its open events ordered by amount then canonically (`_SIZE`):
  the exact-amount lookups and the tolerance search both bisect it;
- `duplicates`: the open events that repeat an earlier report's key, in canonical order.
The memories (redelivery `seen` and key `claims`) expire through heaps ordered by time.
`seen` is per (source, topic, partition), then per event id: whether a record is a
redelivery depends on its own partition only. An open event is its own entry there until
decided: a `Seen` is made only for a decided one, which is all a snapshot needs to carry
(`memories`).

Only `open`, `seen`, `redelivered` and `claims` are state; the rest is rebuilt on restore.
"""

from __future__ import annotations

import heapq
from bisect import bisect_left, insort
from operator import attrgetter
from collections.abc import Iterator

import msgspec

from state.contract import Event
from state.verdicts import Claim, claim_key, claim_of



# gc=False: the state holds no reference cycles, and with millions of its structs tracked,
# every full collection would walk the whole state (measured: 0.3-1.5 s pauses).
# order=True, by ref first: memories sort as plain tuples, without a key function per entry.
class Seen(msgspec.Struct, array_like=True, gc=False, order=True):
    """The latest first delivery of an event id in one partition, to recognise redeliveries."""

    ref: str
    time_us: int
    decision_id: str | None = None  # None while the event is still open
    window_end: int | None = None  # the decision's, so a redelivery's fate is the same whenever it comes


class Book:
    __slots__ = ("open", "seen", "redelivered", "claims", "by_key", "by_size", "duplicates",
                 "original_of", "seen_expiry", "claim_expiry", "newest_memory", "horizon",
                 "shadowed")

    def __init__(self, horizon_us: int):
        self.horizon = horizon_us
        self.open: list[Event] = []
        # (source, topic, partition) -> event id -> its latest first delivery there: the
        # open event itself, or the Seen of a decided one
        self.seen: dict[tuple[str, str, int], dict[str, Seen | Event]] = {}
        self.redelivered: dict[str, list[str]] = {}  # ref of an open event -> refs of its redeliveries
        self.claims: dict[str, Claim] = {}  # "source\x1fkey" -> the decided original of that key
        # (source, topic, partition, event id) delivered anew while an earlier one was open
        self.shadowed: set[tuple] = set()
        self.by_key: dict[str, Event | list[Event]] = {}
        self.by_size: dict[str, list[Event]] = {}  # sorted by _SIZE
        self.duplicates: list[Event] = []
        self.original_of: dict[int, Claim] = {}  # id(duplicate) -> the original it repeats
        self.seen_expiry: list[tuple[int, tuple]] = []  # (time, (source, topic, partition, id))
        self.claim_expiry: list[tuple[int, str]] = []  # (time, claim key)
        self.newest_memory = 0

    # ------------------------------------------------------------------ open events

    def anchor(self) -> Event:
        return self.open[0]

    def add(self, event: Event) -> None:
        insort(self.open, event)
        insort(self.by_size.setdefault(event.currency, []), event, key=_SIZE)
        key = event.idempotency_key
        if key is not None:
            self._key_add(key, event)
            self._refresh_duplicates(event.source, key)

    def remove(self, event: Event) -> None:
        _take(self.open, event)
        sizes = self.by_size[event.currency]
        del sizes[bisect_left(sizes, _SIZE(event), key=_SIZE)]
        if not sizes:
            del self.by_size[event.currency]
        if event.idempotency_key is not None:
            self._key_drop(event.idempotency_key, event)
            if self.original_of.pop(id(event), None) is not None:
                _take(self.duplicates, event)

    def keyed(self, key: str) -> list[Event]:
        found = self.by_key.get(key)
        if found is None:
            return []
        return [found] if isinstance(found, Event) else found

    def _key_add(self, key: str, event: Event) -> None:
        found = self.by_key.get(key)
        if found is None:
            self.by_key[key] = event
        elif isinstance(found, Event):
            self.by_key[key] = sorted((found, event))
        else:
            insort(found, event)

    def _key_drop(self, key: str, event: Event) -> None:
        found = self.by_key[key]
        if isinstance(found, Event):
            del self.by_key[key]
            return
        del found[bisect_left(found, event)]
        if len(found) == 1:
            self.by_key[key] = found[0]

    def same_amount(self, currency: str, amount: int) -> list[Event]:
        """The open events of exactly this amount, in canonical order."""
        sizes = self.by_size.get(currency)
        if not sizes:
            return []
        i = bisect_left(sizes, amount, key=_AMOUNT)
        found = []
        while i < len(sizes) and sizes[i].amount_minor == amount:
            found.append(sizes[i])
            i += 1
        return found

    def amounts_between(self, currency: str, low: int, high: int) -> Iterator[Event]:
        sizes = self.by_size.get(currency, [])
        i = bisect_left(sizes, low, key=_AMOUNT)
        while i < len(sizes) and sizes[i].amount_minor <= high:
            yield sizes[i]
            i += 1

    # ------------------------------------------------------------------ duplicates

    def is_duplicate(self, event: Event) -> bool:
        return id(event) in self.original_of

    def duplicates_until(self, end: int) -> list[tuple[Event, Claim]]:
        """Open duplicates with event time up to `end`, in canonical order."""
        found = []
        for event in self.duplicates:
            if event.time_us > end:
                break
            found.append((event, self.original_of[id(event)]))
        return found

    def claim(self, event: Event) -> None:
        """A decided original: later reports of its key within the horizon repeat it."""
        key = claim_key(event.source, event.idempotency_key)
        self.claims[key] = claim_of(event)
        self._remember(self.claim_expiry, event.time_us, key)
        self._refresh_duplicates(event.source, event.idempotency_key)

    def _refresh_duplicates(self, source: str, key: str) -> None:
        """Walk one (source, key) in canonical order: a report within the horizon of the
        current original repeats it; one beyond the horizon is a new original."""
        entries = self.keyed(key)
        if not entries:
            return
        reports = [event for event in entries if event.source == source]
        original: Claim | Event | None = self.claims.get(claim_key(source, key))
        if original is None and len(reports) == 1 and id(reports[0]) not in self.original_of:
            return  # the usual case: one report, nothing before it
        for event in reports:
            was = self.original_of.pop(id(event), None)
            if original is not None and 0 <= event.time_us - original.time_us <= self.horizon:
                if isinstance(original, Event):
                    original = claim_of(original)
                self.original_of[id(event)] = original
                if was is None:
                    insort(self.duplicates, event)
            else:
                original = event
                if was is not None:
                    _take(self.duplicates, event)

    # ------------------------------------------------------------------ memories

    def first(self, event: Event) -> Seen | Event | None:
        """The latest first delivery of the event's id in its partition."""
        part = self.seen.get((event.source, event.topic, event.partition))
        return None if part is None else part.get(event.event_id)

    def delivered(self, event: Event) -> None:
        """A first delivery, open: the event stands for it until its decision."""
        part = self.seen.setdefault((event.source, event.topic, event.partition), {})
        if isinstance(part.get(event.event_id), Event):
            self.shadowed.add((event.source, event.topic, event.partition, event.event_id))
        part[event.event_id] = event

    def decided(self, event: Event, seen: Seen) -> None:
        """The event's delivery, decided: remembered until its horizon has passed."""
        self.seen.setdefault((event.source, event.topic, event.partition), {})[event.event_id] = seen
        key = (event.source, event.topic, event.partition, event.event_id)
        self._remember(self.seen_expiry, seen.time_us, key)

    def memories(self) -> list[tuple[str, str, Seen]]:
        """`seen` as a snapshot keeps it, (source, event id, delivery): the decided ones,
        and open ones only where `open` cannot tell them (`restore_seen`)."""
        kept = []
        shadowed = self.shadowed  # almost always empty: asked only when it is not
        for (source, topic, partition), part in self.seen.items():
            if not shadowed:
                kept += [(source, event_id, seen) for event_id, seen in part.items()
                         if type(seen) is Seen]
                continue
            for event_id, seen in part.items():
                if type(seen) is Seen:
                    kept.append((source, event_id, seen))
                elif (source, topic, partition, event_id) in shadowed:
                    kept.append((source, event_id, Seen(seen.ref, seen.time_us)))
        # in an order of their own, not the dict's: a restored book fills `seen` in another
        # order, and its snapshot must still be the same bytes. By (source, event id, ref):
        # an id is once in its partition's dict, so two entries never tie up to the ref.
        if len(kept) > 1:
            kept.sort()
        return kept

    def restore_seen(self, kept: list[tuple[str, str, Seen]], owns) -> None:
        """`seen` from a snapshot's memories and the open events `owns` says are first
        delivered here: in canonical order, so a later delivery of one id wins, as it did;
        a kept entry wins over both."""
        by_ref = {}
        for event in self.open:
            if owns(event):
                self.seen.setdefault((event.source, event.topic, event.partition), {})[
                    event.event_id] = event
        for source, event_id, seen in kept:
            topic, partition, _ = seen.ref.rsplit(":", 2)
            part = self.seen.setdefault((source, topic, int(partition)), {})
            if seen.decision_id is None:  # an open delivery shadowed by a later one
                if not by_ref:
                    by_ref = {e.ref: e for e in self.open}
                part[event_id] = by_ref.get(seen.ref, seen)
                self.shadowed.add((source, topic, int(partition), event_id))
            else:
                part[event_id] = seen

    def _remember(self, heap: list, time_us: int, key) -> None:
        heapq.heappush(heap, (time_us, key))
        self.newest_memory = max(self.newest_memory, time_us)

    def forget(self, seen_before: int, claims_before: int) -> None:
        """Drop decided redelivery memories older than `seen_before` and claims older than
        `claims_before`; the heaps may hold entries since replaced, which are skipped."""
        heap = self.seen_expiry
        while heap and heap[0][0] < seen_before:
            time_us, key = heapq.heappop(heap)
            part = self.seen.get(key[:3])
            seen = None if part is None else part.get(key[3])
            if isinstance(seen, Seen) and seen.decision_id is not None and seen.time_us == time_us:
                del part[key[3]]
                if not part:
                    del self.seen[key[:3]]
                self.shadowed.discard(key)
        heap = self.claim_expiry
        while heap and heap[0][0] < claims_before:
            time_us, key = heapq.heappop(heap)
            claim = self.claims.get(key)
            if claim is not None and claim.time_us == time_us:
                del self.claims[key]

    def empty(self) -> bool:
        return not self.open and not self.seen and not self.claims

    def rebuild(self) -> None:
        """The indexes and expiry heaps from the state alone (after a restore). `open` is
        in canonical order, so appending keeps every index sorted but the size order."""
        keyed = set()
        for event in self.open:
            self.by_size.setdefault(event.currency, []).append(event)
            if event.idempotency_key is not None:
                self._key_add(event.idempotency_key, event)
                keyed.add((event.source, event.idempotency_key))
        for sizes in self.by_size.values():
            sizes.sort(key=_SIZE)
        for source, key in keyed:
            self._refresh_duplicates(source, key)
        self.seen_expiry = [(seen.time_us, (*part_key, event_id))
                            for part_key, part in self.seen.items()
                            for event_id, seen in part.items()
                            if isinstance(seen, Seen) and seen.decision_id is not None]
        self.claim_expiry = [(claim.time_us, key) for key, claim in self.claims.items()]
        heapq.heapify(self.seen_expiry)
        heapq.heapify(self.claim_expiry)
        self.newest_memory = max([t for t, _ in self.seen_expiry + self.claim_expiry], default=0)


# the size order: by amount, then canonically (events themselves, no tuple kept per event)
_SIZE = attrgetter("amount_minor", "time_us", "source", "event_id", "topic", "partition", "offset")
_AMOUNT = attrgetter("amount_minor")


def _take(events: list[Event], event: Event) -> None:
    del events[bisect_left(events, event)]
