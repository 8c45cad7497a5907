"""The matching engine for one shard: ingest slices, advance the watermark, decide.

Determinism comes from four rules (docs/determinism.md):
- lateness is judged from the record's own partition history only;
- the watermark is the minimum progress over all input partitions;
- an anchor is decided only once the watermark has passed its window's end,
  from the open events inside that window;
- per account, anchors are decided in event-time order, and accounts share nothing.
"""

from __future__ import annotations

import base64
import heapq
from bisect import insort
from collections.abc import Iterable

import msgspec

from state.config import MatchConfig
from state.contract import NEVER, Event, Heartbeat, Invalid, format_us
from state.decision import (EXCEPTION, HEARTBEAT, INVALID, INVALID_KIND, LATE, PENDING, REDELIVERY,
                            Decision, Fate, decision_id)
from state.matching import Claim, Verdict, claim_key, decide, event_order
from state.routing import Slice

END_OF_TIME = 2**62


# gc=False on the state's structs: they hold no reference cycles, and with millions of
# them tracked, every full collection would walk the whole state (measured: 0.3-1.5 s pauses).
class Seen(msgspec.Struct, array_like=True, gc=False):
    """The latest first delivery of an event id in one partition, to recognise redeliveries."""

    ref: str
    time_us: int
    decision_id: str | None = None  # None while the event is still open
    window_end: int | None = None  # the decision's, so a redelivery's fate is the same whenever it comes


class Account(msgspec.Struct, gc=False):
    open: list[tuple[tuple, Event]] = []  # (event_order, event), sorted
    seen: dict[str, Seen] = {}  # "source:event_id@topic:partition" -> delivery
    redelivered: dict[str, list[str]] = {}  # ref of an open event -> refs of its redeliveries
    claims: dict[str, Claim] = {}  # "source\x1fkey" -> the decided event that used it


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


class Output(msgspec.Struct):
    decisions: list[Decision] = []
    fates: list[Fate] = []

    def extend(self, other: "Output") -> None:
        self.decisions.extend(other.decisions)
        self.fates.extend(other.fates)


class ShardSnapshot(msgspec.Struct, array_like=True):
    """The whole engine state as plain data."""

    config: MatchConfig
    progress: list[tuple[str, int, int]]  # (topic, partition, highest event time)
    accounts: list[tuple[str, Account]]
    flushed: bool


class Shard:
    def __init__(self, config: MatchConfig, partitions: Iterable[tuple[str, int]]):
        self.config = config
        self.progress: dict[tuple[str, int], int] = {p: NEVER for p in sorted(partitions)}
        self.accounts: dict[str, Account] = {}
        self.deadlines: list[tuple[int, str]] = []  # (window end of the account's anchor, account)
        self.flushed = False

    # ------------------------------------------------------------------ watermark

    def watermark(self) -> int:
        if self.flushed:
            return END_OF_TIME
        if not self.progress:
            return NEVER
        lowest = min(self.progress.values())
        return NEVER if lowest == NEVER else lowest - self.config.allowed_lateness_us

    # ------------------------------------------------------------------ ingest

    def ingest(self, piece: Slice) -> Output:
        """Take one slice; decide whatever the watermark now allows."""
        part = (piece.topic, piece.partition)
        if part not in self.progress:
            raise ValueError(f"partition {piece.topic}:{piece.partition} was not declared")
        out = Output([], [])
        known = self.progress[part]
        for record, chunk_before in zip(piece.records, piece.chunk_max_before):
            self._take(record, max(known, chunk_before), out)
        self.progress[part] = max(known, piece.high)
        out.extend(self.advance())
        return out

    def _take(self, record, high_before: int, out: Output) -> None:
        if isinstance(record, Heartbeat):
            out.fates.append(Fate(record.topic, record.partition, record.offset, record.source,
                                  None, HEARTBEAT, None, record.time_us))
        elif isinstance(record, Invalid):
            self._invalid(record, high_before, out)
        else:
            self._event(record, high_before, out)

    def _invalid(self, record: Invalid, high_before: int, out: Output) -> None:
        when = max(high_before, 0)  # stream time of the partition, so the row has a day
        decision = Decision(
            decision_id=decision_id(INVALID_KIND, [], [record.ref]), kind="exception", tier=None,
            exception_kind=INVALID_KIND, account=None, currency=None, amount_minor=None,
            confidence=None, member_event_ids=[], member_refs=[record.ref], window_start=when,
            window_end=when, reason=record.reason,
            raw_base64=None if record.raw is None else base64.b64encode(record.raw).decode())
        out.decisions.append(decision)
        out.fates.append(Fate(record.topic, record.partition, record.offset, record.source, None,
                              INVALID, decision.decision_id, when))

    def _event(self, event: Event, high_before: int, out: Output) -> None:
        account = self.accounts.get(event.account)
        if account is None:
            account = self.accounts[event.account] = Account([], {}, {}, {})
        first = account.seen.get(seen_key(event))
        if first is not None and first.time_us >= high_before - self.config.redelivery_horizon_us:
            self._redelivery(account, first, event, out)
        elif event.time_us < high_before - self.config.allowed_lateness_us:
            self._late(account, event, high_before, out)
        else:
            account.seen[seen_key(event)] = Seen(event.ref, event.time_us, None)
            was_first = account.open[0][1] if account.open else None
            insort(account.open, (event_order(event), event))
            if account.open[0][1] is not was_first:
                self._schedule(event.account, account)

    def _redelivery(self, account: Account, first: Seen, event: Event, out: Output) -> None:
        if first.decision_id is None:
            account.redelivered.setdefault(first.ref, []).append(event.ref)
        else:
            out.fates.append(fate_of(event, REDELIVERY, first.decision_id, first.window_end))

    def _late(self, account: Account, event: Event, high_before: int, out: Output) -> None:
        behind = (high_before - event.time_us) // 1_000_000
        decision = Decision(
            decision_id=decision_id(LATE, [event.label], [event.ref]), kind="exception", tier=None,
            exception_kind=LATE, account=event.account, currency=event.currency,
            amount_minor=event.amount_minor, confidence=None, member_event_ids=[event.label],
            member_refs=[event.ref], window_start=event.time_us, window_end=event.time_us,
            reason=(f"event_time {format_us(event.time_us)} arrived {behind}s behind its partition's "
                    f"progress {format_us(high_before)}; allowed lateness is "
                    f"{self.config.allowed_lateness_us // 1_000_000}s"))
        account.seen[seen_key(event)] = Seen(event.ref, event.time_us, decision.decision_id,
                                             decision.window_end)
        out.decisions.append(decision)
        out.fates.append(fate_of(event, EXCEPTION, decision.decision_id, event.time_us))

    def _schedule(self, name: str, account: Account) -> None:
        anchor = account.open[0][1]
        heapq.heappush(self.deadlines, (anchor.time_us + self.config.match_window_us, name))

    # ------------------------------------------------------------------ deciding

    def advance(self) -> Output:
        """Decide every anchor whose window the watermark has passed, in canonical order."""
        out = Output([], [])
        watermark = self.watermark()
        while self.deadlines and self.deadlines[0][0] < watermark:
            deadline, name = heapq.heappop(self.deadlines)
            account = self.accounts.get(name)
            if account is None:
                continue
            if not account.open:
                self._forget(name, account, watermark)  # a quiet account's memories expire
                continue
            anchor = account.open[0][1]
            if anchor.time_us + self.config.match_window_us != deadline:
                continue  # stale entry: this account's anchor changed since
            self._decide(name, account, anchor, out)
            self._forget(name, account, watermark)
        return out

    def _decide(self, name: str, account: Account, anchor: Event, out: Output) -> None:
        end = anchor.time_us + self.config.match_window_us
        window = [e for _, e in account.open if e.time_us <= end]
        claims = self._valid_claims(account, anchor)
        for verdict in decide(anchor, window, claims, self.config):
            self._apply(account, verdict, out)
        if account.open:
            self._schedule(name, account)

    def _valid_claims(self, account: Account, anchor: Event) -> dict[str, Claim]:
        oldest = anchor.time_us - self.config.redelivery_horizon_us
        return {k: c for k, c in account.claims.items() if c.time_us >= oldest}

    def _apply(self, account: Account, verdict: Verdict, out: Output) -> None:
        decision = verdict.decision
        out.decisions.append(decision)
        gone = {id(e) for e in verdict.members}
        account.open = [pair for pair in account.open if id(pair[1]) not in gone]
        for event in verdict.members:
            first = account.seen.get(seen_key(event))
            if first is not None and first.ref == event.ref:
                first.decision_id, first.window_end = decision.decision_id, decision.window_end
            out.fates.append(fate_of(event, verdict.outcome, decision.decision_id, decision.window_end))
            for ref in account.redelivered.pop(event.ref, []):
                out.fates.append(fate_of(event, REDELIVERY, decision.decision_id,
                                         decision.window_end, ref))
            if event.idempotency_key is not None:
                account.claims.setdefault(claim_key(event.source, event.idempotency_key),
                                          Claim(event.label, event.ref, event.time_us))

    def _forget(self, name: str, account: Account, watermark: int) -> None:
        """Drop memories no future record or anchor can use (their validity checks are explicit).

        Future records of a partition arrive with progress >= watermark + lateness, and
        future anchors are either open now or arrive at or above the watermark.
        """
        horizon = self.config.redelivery_horizon_us
        floor = min(account.open[0][1].time_us, watermark) if account.open else watermark
        for label in [k for k, s in account.seen.items() if s.decision_id and s.time_us < watermark - horizon]:
            del account.seen[label]
        for key in [k for k, c in account.claims.items() if c.time_us < floor - horizon]:
            del account.claims[key]
        if not account.open and not account.seen and not account.claims:
            del self.accounts[name]
        elif not account.open:
            self._schedule_expiry(name, account)

    def _schedule_expiry(self, name: str, account: Account) -> None:
        """Come back once the watermark has passed every memory's horizon, so that an
        account with no further events does not keep its memories forever."""
        times = [s.time_us for s in account.seen.values() if s.decision_id]
        times += [c.time_us for c in account.claims.values()]
        if not times:
            return
        # strictly after the watermark that kept them, so this never loops in `advance`
        newest = max(times)
        heapq.heappush(self.deadlines, (newest + self.config.redelivery_horizon_us + 1, name))

    def flush(self) -> Output:
        """Treat the end of input as the end of time: decide everything still open."""
        self.flushed = True
        return self.advance()

    def pending(self) -> list[Fate]:
        """Fates of records still waiting for their window (and their redeliveries)."""
        fates = []
        for account in self.accounts.values():
            for _, event in account.open:
                fates.append(fate_of(event, PENDING, None, None))
                fates += [fate_of(event, PENDING, None, None, ref)
                          for ref in account.redelivered.get(event.ref, [])]
        return fates

    def open_count(self) -> int:
        return sum(len(a.open) for a in self.accounts.values())

    # ------------------------------------------------------------------ snapshots

    def snapshot(self) -> ShardSnapshot:
        return ShardSnapshot(
            config=self.config,
            progress=[(t, p, v) for (t, p), v in self.progress.items()],
            accounts=sorted(self.accounts.items()), flushed=self.flushed)

    @classmethod
    def restore(cls, snap: ShardSnapshot) -> "Shard":
        shard = cls(snap.config, [(t, p) for t, p, _ in snap.progress])
        shard.progress = {(t, p): v for t, p, v in snap.progress}
        shard.accounts = dict(snap.accounts)
        shard.flushed = snap.flushed
        for name, account in shard.accounts.items():
            account.open = [(tuple(order), event) for order, event in account.open]
            if account.open:
                shard._schedule(name, account)
            elif account.seen or account.claims:
                shard._schedule_expiry(name, account)
        return shard


SNAPSHOT_ENCODER = msgspec.msgpack.Encoder()
SNAPSHOT_DECODER = msgspec.msgpack.Decoder(ShardSnapshot)


def encode_snapshot(shard: Shard) -> bytes:
    return SNAPSHOT_ENCODER.encode(shard.snapshot())


def decode_snapshot(data: bytes) -> Shard:
    return Shard.restore(SNAPSHOT_DECODER.decode(data))
