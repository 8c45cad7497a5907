"""The matching engine for one shard: ingest slices, advance the watermark, decide.

Determinism comes from four rules (docs/determinism.md):
- lateness is judged from the record's own partition history only, and a record
  too far ahead of it moves it only once the partition's next record follows;
- the watermark is the minimum progress over all input partitions;
- an anchor is decided only once the watermark has passed the end of what its
  decision reads (its window, and for most decisions the evidence after it),
  from the open events there;
- per account, anchors are decided in event-time order, and accounts share nothing.
"""

from __future__ import annotations

import base64
import heapq
from collections.abc import Iterable

import msgspec

from state.book import Book, Seen
from state.config import MatchConfig
from state.contract import NEVER, Event, Heartbeat, Invalid, Part, format_us
from state.decision import (CLOCK_SKEW, DUPLICATE, EXCEPTION, HEARTBEAT, INVALID, INVALID_KIND,
                            LATE, PENDING, REDELIVERY, Decision, Fate, decision_id)
from state.matching import decide, decides_alone
from state.routing import Slice
from state.stream_time import TAKE, Clock, settle, walk
from state.verdicts import Claim, Verdict

END_OF_TIME = 2**62


def fate_of(event: Event, outcome: str, decision: str | None, window_end: int | None,
            ref: str | None = None) -> Fate:
    """The fate of `event`, or of its redelivery at `ref` ("topic:partition:offset")."""
    if ref is None:
        return Fate(event.topic, event.partition, event.offset, event.source, event.event_id,
                    outcome, decision, window_end)
    topic, partition, offset = ref.rsplit(":", 2)
    return Fate(topic, int(partition), int(offset), event.source, event.event_id, outcome,
                decision, window_end)


def seen_key(event: Event) -> str:
    # per partition: whether a record is a redelivery depends on its own partition only
    return f"{event.label}@{event.topic}:{event.partition}"


def invalid_decision(record: Invalid, high_before: int) -> tuple[Decision, Fate]:
    when = max(high_before, 0)  # stream time of the partition, so the row has a day
    decision = Decision(
        decision_id=decision_id(INVALID_KIND, [], [record.ref]), kind="exception", tier=None,
        exception_kind=INVALID_KIND, account=None, currency=None, amount_minor=None,
        confidence=None, member_event_ids=[], member_refs=[record.ref], window_start=when,
        window_end=when, reason=record.reason,
        raw_base64=None if record.raw is None else base64.b64encode(record.raw).decode())
    return decision, Fate(record.topic, record.partition, record.offset, record.source, None,
                          INVALID, decision.decision_id, when)


def late_decision(event: Event, high_before: int, config: MatchConfig) -> tuple[Decision, Fate]:
    behind = (high_before - event.time_us) // 1_000_000
    decision = Decision(
        decision_id=decision_id(LATE, [event.label], [event.ref]), kind="exception", tier=None,
        exception_kind=LATE, account=event.account, currency=event.currency,
        amount_minor=event.amount_minor, confidence=None, member_event_ids=[event.label],
        member_refs=[event.ref], window_start=event.time_us, window_end=event.time_us,
        reason=(f"event_time {format_us(event.time_us)} arrived {behind}s behind its partition's "
                f"progress {format_us(high_before)}; allowed lateness is "
                f"{config.allowed_lateness_us // 1_000_000}s"))
    return decision, fate_of(event, EXCEPTION, decision.decision_id, event.time_us)


def skew_decision(event: Event, high_before: int, next_us: int,
                  config: MatchConfig) -> tuple[Decision, Fate]:
    """A record its partition did not follow: it lands on the day the stream was at."""
    when = max(high_before, next_us, 0)
    progress = "no progress yet" if high_before == NEVER else f"progress {format_us(high_before)}"
    decision = Decision(
        decision_id=decision_id(CLOCK_SKEW, [event.label], [event.ref]), kind="exception",
        tier=None, exception_kind=CLOCK_SKEW, account=event.account, currency=event.currency,
        amount_minor=event.amount_minor, confidence=None, member_event_ids=[event.label],
        member_refs=[event.ref], window_start=when, window_end=when,
        reason=(f"event_time {format_us(event.time_us)} is more than max_clock_skew "
                f"({config.max_clock_skew_us // 1_000_000}s) ahead of its partition's {progress}, "
                f"and the partition's next record ({format_us(next_us)}) did not follow it; "
                f"it moved nothing and was not matched"))
    return decision, fate_of(event, EXCEPTION, decision.decision_id, when)


def take_unowned(record, high_before: int, out: "Output") -> bool:
    """A heartbeat or an invalid record belongs to no account: its fate (and an invalid
    record's decision) goes to `out` at once. False for an event, which the caller takes."""
    if isinstance(record, Heartbeat):
        out.fates.append(Fate(record.topic, record.partition, record.offset, record.source,
                              None, HEARTBEAT, None, record.time_us))
    elif isinstance(record, Invalid):
        decision, fate = invalid_decision(record, high_before)
        out.decisions.append(decision)
        out.fates.append(fate)
    else:
        return False
    return True


class Output(msgspec.Struct):
    decisions: list[Decision] = []
    fates: list[Fate] = []

    def extend(self, other: "Output") -> None:
        self.decisions.extend(other.decisions)
        self.fates.extend(other.fates)


class Account(msgspec.Struct, gc=False):
    """An account's state as plain data: its book without the indexes.

    gc=False: the state holds no reference cycles (see state/book.py)."""

    open: list[tuple[tuple, Event]] = []  # (event_order, event), sorted
    seen: dict[str, Seen] = {}  # "source:event_id@topic:partition" -> delivery
    redelivered: dict[str, list[str]] = {}  # ref of an open event -> refs of its redeliveries
    claims: dict[str, Claim] = {}  # "source\x1fkey" -> the decided original of that key


class ShardSnapshot(msgspec.Struct, array_like=True):
    """The whole engine state as plain data."""

    config: MatchConfig
    progress: list[tuple[str, int, int]]  # (topic, partition, highest event time)
    accounts: list[tuple[str, Account]]
    flushed: bool
    # (topic, partition, event time, the record if this shard owns it): held too far ahead
    ahead: list[tuple[str, int, int, Event | None]] = []


class Shard:
    def __init__(self, config: MatchConfig, partitions: Iterable[Part]):
        self.config = config
        self.clocks: dict[Part, Clock] = {p: Clock() for p in sorted(partitions)}
        self.accounts: dict[str, Book] = {}
        # (deadline, account): the end of what the account's anchor decision reads
        self.deadlines: list[tuple[int, str]] = []
        self.flushed = False

    # ------------------------------------------------------------------ watermark

    @property
    def progress(self) -> dict[Part, int]:
        return {part: clock.high for part, clock in self.clocks.items()}

    def watermark(self) -> int:
        if self.flushed:
            return END_OF_TIME
        if not self.clocks:
            return NEVER
        lowest = min(clock.high for clock in self.clocks.values())
        return NEVER if lowest == NEVER else lowest - self.config.allowed_lateness_us

    # ------------------------------------------------------------------ ingest

    def ingest(self, piece: Slice) -> Output:
        """Take one slice; decide whatever the watermark now allows."""
        clock = self.clocks.get((piece.topic, piece.partition))
        if clock is None:
            raise ValueError(f"partition {piece.topic}:{piece.partition} was not declared")
        out = Output([], [])
        self._walk(walk(clock, piece, self.config.max_clock_skew_us), out)
        out.extend(self.advance())
        return out

    def _walk(self, steps, out: Output) -> None:
        for step, record, high_before, next_us in steps:
            if step is TAKE:
                if not take_unowned(record, high_before, out):
                    self._event(record, high_before, out)
            else:
                self._skewed(record, high_before, next_us, out)

    def _event(self, event: Event, high_before: int, out: Output) -> None:
        book, key = self._book(event), seen_key(event)
        if self._redelivered(book, key, event, high_before, out):
            return
        if event.time_us < high_before - self.config.allowed_lateness_us:
            self._alone(book, key, event, late_decision(event, high_before, self.config), out)
            return
        book.seen[key] = Seen(event.ref, event.time_us)
        was_first = book.open[0][1] if book.open else None
        book.add(event)
        if book.open[0][1] is not was_first:
            self._schedule(event.account, book)

    def _skewed(self, event: Event, high_before: int, next_us: int, out: Output) -> None:
        book, key = self._book(event), seen_key(event)
        if not self._redelivered(book, key, event, high_before, out):
            self._alone(book, key, event, skew_decision(event, high_before, next_us, self.config),
                        out)

    def _book(self, event: Event) -> Book:
        book = self.accounts.get(event.account)
        if book is None:
            book = self.accounts[event.account] = Book(self.config.redelivery_horizon_us)
        return book

    def _redelivered(self, book: Book, key: str, event: Event, high_before: int,
                     out: Output) -> bool:
        """A redelivery whatever its time: its fate follows the first delivery's."""
        first = book.seen.get(key)
        if first is None or first.time_us < high_before - self.config.redelivery_horizon_us:
            return False
        if first.decision_id is None:
            book.redelivered.setdefault(first.ref, []).append(event.ref)
        else:
            out.fates.append(fate_of(event, REDELIVERY, first.decision_id, first.window_end))
        return True

    def _alone(self, book: Book, key: str, event: Event, verdict: tuple[Decision, Fate],
               out: Output) -> None:
        """A record decided on its own (late, or clock-skewed): its redeliveries follow it.
        Remembered at the decision's window end: a skewed record's own time means nothing."""
        decision, fate = verdict
        seen = book.seen[key] = Seen(event.ref, min(event.time_us, decision.window_end),
                                     decision.decision_id, decision.window_end)
        book.decided(key, seen)
        out.decisions.append(decision)
        out.fates.append(fate)

    def _schedule(self, name: str, book: Book) -> None:
        anchor = book.anchor()
        heapq.heappush(self.deadlines, (anchor.time_us + self.config.match_window_us, name))

    # ------------------------------------------------------------------ deciding

    def advance(self) -> Output:
        """Decide every anchor whose window (and evidence) the watermark has passed, in
        canonical order."""
        out = Output([], [])
        watermark = self.watermark()
        window = self.config.match_window_us
        while self.deadlines and self.deadlines[0][0] < watermark:
            deadline, name = heapq.heappop(self.deadlines)
            book = self.accounts.get(name)
            if book is None:
                continue
            if not book.open:
                self._forget(name, book, watermark)  # a quiet account's memories expire
                continue
            anchor = book.anchor()
            end = anchor.time_us + window
            if deadline != end and deadline != end + window:
                continue  # stale entry: this account's anchor changed since
            if watermark <= end + window and not decides_alone(book, anchor, self.config):
                heapq.heappush(self.deadlines, (end + window, name))  # wait for the evidence
                continue
            for verdict in decide(book, anchor, self.config):
                self._apply(book, verdict, out)
            if book.open:
                self._schedule(name, book)
            self._forget(name, book, watermark)
        return out

    def _apply(self, book: Book, verdict: Verdict, out: Output) -> None:
        decision = verdict.decision
        out.decisions.append(decision)
        for event in verdict.members:
            book.remove(event)
        original = decision.exception_kind != DUPLICATE
        for event in verdict.members:
            key = seen_key(event)
            first = book.seen.get(key)
            if first is not None and first.ref == event.ref:
                first.decision_id, first.window_end = decision.decision_id, decision.window_end
                book.decided(key, first)
            out.fates.append(fate_of(event, verdict.outcome, decision.decision_id, decision.window_end))
            for ref in book.redelivered.pop(event.ref, []):
                out.fates.append(fate_of(event, REDELIVERY, decision.decision_id,
                                         decision.window_end, ref))
            if original and event.idempotency_key is not None:
                book.claim(event)

    def _forget(self, name: str, book: Book, watermark: int) -> None:
        """Drop memories no future record or anchor can use (their validity checks are explicit).

        Future records of a partition arrive with progress >= watermark + lateness, and
        future anchors are either open now or arrive at or above the watermark.
        """
        horizon = self.config.redelivery_horizon_us
        floor = min(book.anchor().time_us, watermark) if book.open else watermark
        book.forget(watermark - horizon, floor - horizon)
        if book.empty():
            del self.accounts[name]
        elif not book.open:
            # come back once the watermark has passed every memory's horizon, strictly
            # after the watermark that kept them, so this never loops in `advance`
            heapq.heappush(self.deadlines, (book.newest_memory + horizon + 1, name))

    def flush(self) -> Output:
        """Treat the end of input as the end of time: decide everything still open. A record
        held ahead is taken: nothing after it in its partition contradicts it."""
        out = Output([], [])
        for clock in self.clocks.values():
            if clock.ahead is not None:
                self._walk(settle(clock, None, self.config.max_clock_skew_us), out)
        self.flushed = True
        out.extend(self.advance())
        return out

    def pending(self) -> list[Fate]:
        """Fates of records still waiting for their window (and their redeliveries)."""
        fates = []
        for book in self.accounts.values():
            for _, event in book.open:
                fates.append(fate_of(event, PENDING, None, None))
                fates += [fate_of(event, PENDING, None, None, ref)
                          for ref in book.redelivered.get(event.ref, [])]
        fates += [fate_of(clock.held, PENDING, None, None)
                  for clock in self.clocks.values() if clock.held is not None]
        return fates

    def open_count(self) -> int:
        held = sum(clock.held is not None for clock in self.clocks.values())
        return sum(len(b.open) for b in self.accounts.values()) + held

    # ------------------------------------------------------------------ snapshots

    def snapshot(self) -> ShardSnapshot:
        accounts = [(name, Account(book.open, book.seen, book.redelivered, book.claims))
                    for name, book in sorted(self.accounts.items())]
        return ShardSnapshot(config=self.config,
                             progress=[(t, p, c.high) for (t, p), c in self.clocks.items()],
                             accounts=accounts, flushed=self.flushed,
                             ahead=[(t, p, c.ahead, c.held) for (t, p), c in self.clocks.items()
                                    if c.ahead is not None])

    @classmethod
    def restore(cls, snap: ShardSnapshot) -> "Shard":
        shard = cls(snap.config, [(t, p) for t, p, _ in snap.progress])
        shard.clocks = {(t, p): Clock(high) for t, p, high in snap.progress}
        for t, p, ahead, held in snap.ahead:
            shard.clocks[(t, p)].ahead, shard.clocks[(t, p)].held = ahead, held
        shard.flushed = snap.flushed
        horizon = snap.config.redelivery_horizon_us
        for name, account in snap.accounts:
            book = shard.accounts[name] = Book(horizon)
            book.seen, book.redelivered, book.claims = account.seen, account.redelivered, account.claims
            book.open = [(tuple(order), event) for order, event in account.open]
            book.rebuild()
            if book.open:
                shard._schedule(name, book)
            elif book.seen or book.claims:
                heapq.heappush(shard.deadlines, (book.newest_memory + horizon + 1, name))
        return shard


SNAPSHOT_ENCODER = msgspec.msgpack.Encoder()
SNAPSHOT_DECODER = msgspec.msgpack.Decoder(ShardSnapshot)


def encode_snapshot(shard: Shard) -> bytes:
    return SNAPSHOT_ENCODER.encode(shard.snapshot())


def decode_snapshot(data: bytes) -> Shard:
    return Shard.restore(SNAPSHOT_DECODER.decode(data))
