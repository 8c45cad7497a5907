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
from collections.abc import Iterable
from functools import partial

import msgspec

from state import relations as rel
from state.batches import BatchDesk
from state.config import MatchConfig
from state.contract import NEVER, Event, Heartbeat, Invalid, Part, format_us
from state.decision import (CLOCK_SKEW, EXCEPTION, HEARTBEAT, INVALID, INVALID_KIND, LATE, PENDING,
                            Decision, Fate, decision_id)
from state.desks import Account, Desk, MatchDesk, Output, fate_of
from state.payouts import PayoutDesk
from state.relations import Relation
from state.routing import Slice
from state.stream_time import TAKE, Clock, settle, walk

__all__ = ["END_OF_TIME", "Output", "Shard", "ShardSnapshot", "SnapshotFormatError",
           "decode_snapshot", "encode_snapshot", "fate_of"]

END_OF_TIME = 2**62


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


def late_decision(event: Event, *, high_before: int, config: MatchConfig) -> tuple[Decision, Fate]:
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


def skew_decision(event: Event, *, high_before: int, next_us: int,
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


class ShardSnapshot(msgspec.Struct, array_like=True):
    """The whole engine state as plain data. Each account is encoded on its own (an
    Account, as msgpack), so a restore decodes one account at a time (`_restored`)."""

    config: MatchConfig
    progress: list[tuple[str, int, int]]  # (topic, partition, highest event time)
    accounts: list[tuple[str, msgspec.Raw]]
    flushed: bool
    # (topic, partition, event time, the record if this shard owns it): held too far ahead
    ahead: list[tuple[str, int, int, Event | None]] = []
    desks: list[list[tuple[str, msgspec.Raw]]] = []  # the accounts of every desk after the first


class Shard:
    """Every partition's progress, and one desk per relation of the config."""

    def __init__(self, config: MatchConfig, partitions: Iterable[Part]):
        self.config = config
        self.clocks: dict[Part, Clock] = {p: Clock() for p in sorted(partitions)}
        self.relations = config.relation_list()
        joined = rel.joined(self.relations)
        self.desks: list[Desk] = [_desk(r, config, self._is_primary(i) if i in joined else None)
                                  for i, r in enumerate(self.relations)]
        # the partitions each desk's watermark follows: those of the sources it reads
        source_of = config.source_of_topic()
        self.reads = [[p for p in self.clocks if source_of.get(p[0]) in r.reads()]
                      for r in self.relations]
        self.routes: dict[tuple, list[int]] = {}  # (source, kind, batched) -> desk indexes
        self.flushed = False

    def _route(self, event: Event) -> list[int]:
        shape = (event.source, rel.record_kind(event.payout, event.amount_minor, event.fee_minor),
                 event.batch_id is not None)
        route = self.routes.get(shape)
        if route is None:
            route = self.routes[shape] = rel.route(self.relations, *shape)
        return route

    def _in_several_desks(self, event: Event) -> bool:
        return len(self._route(event)) > 1

    def _is_primary(self, index: int):
        return lambda event: self._route(event)[0] == index

    # ------------------------------------------------------------------ watermark

    @property
    def progress(self) -> dict[Part, int]:
        return {part: clock.high for part, clock in self.clocks.items()}

    def watermark(self, desk: int | None = None) -> int:
        """The lowest progress over the partitions a desk reads (over all, if None), less
        the allowed lateness: no record at or below it can still arrive on time."""
        if self.flushed:
            return END_OF_TIME
        parts = self.clocks if desk is None else self.reads[desk]
        if not parts:
            return NEVER
        lowest = min(self.clocks[p].high for p in parts)
        return NEVER if lowest == NEVER else lowest - self.config.allowed_lateness_us

    # ------------------------------------------------------------------ ingest

    def ingest(self, piece: Slice) -> Output:
        """Take one slice; decide whatever the watermarks now allow."""
        clock = self.clocks.get((piece.topic, piece.partition))
        if clock is None:
            raise ValueError(f"partition {piece.topic}:{piece.partition} was not declared")
        out = Output([], [])
        self._walk(walk(clock, piece, self.config.max_clock_skew_us), out)
        out.extend(self.advance())
        return out

    def _walk(self, steps, out: Output) -> None:
        config = self.config
        for step, record, high_before, next_us in steps:
            if step is TAKE:
                if take_unowned(record, high_before, out):
                    continue
                desks = self._route(record)
                if self.desks[desks[0]].take(record, high_before, late_decision, out):
                    for i in desks[1:]:
                        self.desks[i].join(record)
            else:
                skewed = partial(skew_decision, high_before=high_before, next_us=next_us,
                                 config=config)
                self.desks[self._route(record)[0]].skewed(record, high_before, skewed, out)

    # ------------------------------------------------------------------ deciding

    def advance(self) -> Output:
        """Decide, desk by desk, whatever each desk's watermark has made final."""
        out = Output([], [])
        for i, desk in enumerate(self.desks):
            out.extend(desk.advance(self.watermark(i)))
        return out

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
        """Fates of records still waiting for their decision (and their redeliveries)."""
        fates = [fate for desk in self.desks for fate in desk.pending()]
        fates += [fate_of(clock.held, PENDING, None, None)
                  for clock in self.clocks.values() if clock.held is not None]
        return fates

    def open_count(self) -> int:
        """Records waiting for their decision: the pending ones, less their redeliveries."""
        held = sum(clock.held is not None for clock in self.clocks.values())
        return sum(desk.open_count() for desk in self.desks) + held

    def pending_count(self) -> int:
        """len(self.pending()), without a Fate per record."""
        return self.open_count() + sum(desk.redeliveries_waiting() for desk in self.desks)

    # ------------------------------------------------------------------ snapshots

    def snapshot(self) -> ShardSnapshot:
        return ShardSnapshot(config=self.config,
                             progress=[(t, p, c.high) for (t, p), c in self.clocks.items()],
                             accounts=_encoded(self.desks[0]), flushed=self.flushed,
                             ahead=[(t, p, c.ahead, c.held) for (t, p), c in self.clocks.items()
                                    if c.ahead is not None],
                             desks=[_encoded(desk) for desk in self.desks[1:]])

    @classmethod
    def restore(cls, snap: ShardSnapshot) -> "Shard":
        shard = cls(snap.config, [(t, p) for t, p, _ in snap.progress])
        shard.clocks = {(t, p): Clock(high) for t, p, high in snap.progress}
        for t, p, ahead, held in snap.ahead:
            shard.clocks[(t, p)].ahead, shard.clocks[(t, p)].held = ahead, held
        shard.flushed = snap.flushed
        every = [snap.accounts, *snap.desks]
        strings: dict[str, str] = {}
        first: dict[tuple, Event] = {}  # records several desks hold, by log position
        shared = shard._in_several_desks
        for desk, accounts in zip(shard.desks, every):
            desk.restore(_restored(accounts, strings, first, shared))
        return shard


_SHARED_FIELDS = ("source", "topic", "currency", "account")
_ACCOUNT_ENCODER = msgspec.msgpack.Encoder()
_ACCOUNT_DECODER = msgspec.msgpack.Decoder(Account)


def _encoded(desk: Desk) -> list[tuple[str, msgspec.Raw]]:
    return [(name, msgspec.Raw(_ACCOUNT_ENCODER.encode(account)))
            for name, account in desk.accounts_state()]


def _restored(accounts: list[tuple[str, msgspec.Raw]], strings: dict[str, str],
              first: dict[tuple, Event], shared):
    """Each account decoded in turn and made as compact as the live state was: one string
    object per distinct source, topic, currency and account (as the decoder shares them),
    and one Event for a record that several desks hold (a snapshot writes it once per
    desk). One account at a time, so the copies it drops are reused by the next, rather
    than leaving the whole state's worth of holes in the heap."""
    for name, raw in accounts:
        account = _ACCOUNT_DECODER.decode(raw)
        account.open = [_one(event, strings, first if shared(event) else None)
                        for event in account.open]
        yield name, account


def _one(event: Event, strings: dict[str, str], first: dict[tuple, Event] | None) -> Event:
    if first is not None:
        position = (event.topic, event.partition, event.offset)
        known = first.get(position)
        if known is not None:
            return known
        first[position] = event
    for name in _SHARED_FIELDS:
        value = getattr(event, name)
        msgspec.structs.force_setattr(event, name, strings.setdefault(value, value))
    return event


def _desk(relation: Relation, config: MatchConfig, primary=None) -> Desk:
    """A relation's desk, with the config as its rule reads it."""
    if relation.rule == rel.MATCH:
        expected, window, kind = relation.expected, relation.window_us, MatchDesk
    elif relation.rule == rel.BATCH:
        expected, window, kind = (relation.payouts, *relation.items), relation.window_us, BatchDesk
    else:
        expected, window, kind = (relation.payouts, relation.credits), relation.lag_max_us, PayoutDesk
    own = msgspec.structs.replace(config, expected_sources=tuple(dict.fromkeys(expected)),
                                  match_window_us=window, amount_tolerance_ppm=relation.tolerance_ppm)
    return kind(relation, own, primary)


SNAPSHOT_ENCODER = msgspec.msgpack.Encoder()
SNAPSHOT_DECODER = msgspec.msgpack.Decoder(ShardSnapshot)


def encode_snapshot(shard: Shard) -> bytes:
    return SNAPSHOT_ENCODER.encode(shard.snapshot())


class SnapshotFormatError(ValueError):
    """A snapshot this version cannot read: written by another version of Tally."""


def decode_snapshot(data: bytes) -> Shard:
    try:
        return Shard.restore(SNAPSHOT_DECODER.decode(data))
    except (msgspec.ValidationError, msgspec.DecodeError) as err:
        raise SnapshotFormatError(
            f"the engine snapshot is not in this version's format ({err}): it was written by "
            f"another version of Tally (the format changed with settlement, Tally 12/14)") from None
