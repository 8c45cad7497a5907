"""The scan-based reference engine: every rule written as the plainest scan over lists.

It is the engine as it was before the indexes (with the fixes of Tally 8/14): each
decision scans the account's open events. Too slow for dense accounts, easy to
read, and the product's state/engine.py must decide exactly as it does
(tests/test_differential.py). Only the formatting of verdicts is shared
(state/verdicts.py); every choice of members is made here independently.
"""

from __future__ import annotations

import heapq
import itertools
from bisect import insort

from state import verdicts as v
from state.config import MatchConfig
from state.contract import NEVER, Event
from state.decision import DUPLICATE, Fate, REDELIVERY
from state.book import Seen
from state.engine import END_OF_TIME, Output, fate_of, late_decision, skew_decision, take_unowned
from state.routing import Slice
from state.scoring import within_tolerance
from state.verdicts import Claim, claim_key, claim_of, event_order

MAX_CANDIDATE_SETS = 64


def seen_key(event: Event) -> str:
    """A delivery's identity: whether a record is a redelivery depends on its partition only."""
    return f"{event.label}@{event.topic}:{event.partition}"


# ----------------------------------------------------------------------------- the rules

def decide(anchor: Event, window_end: int, evidence: list[Event], claims: dict[str, Claim],
           config: MatchConfig) -> list[v.Verdict]:
    """The verdicts for `anchor`: the duplicates in its window, then its own group.

    `evidence` is every open event up to the evidence end, in canonical order; the
    window is its prefix up to `window_end`.
    """
    duplicates, originals = split_duplicates(evidence, claims, config)
    verdicts = [d for d in duplicates if d.members[0].time_us <= window_end]
    if any(d.members[0] is anchor for d in verdicts):
        return verdicts
    pool = [e for e in originals if e.time_us <= window_end]
    return verdicts + [group(anchor, pool, originals, config)]


def split_duplicates(window, claims, config):
    first: dict[str, Claim] = dict(claims)
    verdicts, pool = [], []
    for event in window:
        if event.idempotency_key is None:
            pool.append(event)
            continue
        key = claim_key(event.source, event.idempotency_key)
        original = first.get(key)
        if original is not None and 0 <= event.time_us - original.time_us <= config.redelivery_horizon_us:
            verdicts.append(v.duplicate(event, original, config))
        else:
            first[key] = claim_of(event)
            pool.append(event)
    return verdicts, pool


def core_verdict(anchor, pool, config) -> v.Verdict | None:
    """The anchor's key group decides alone when it is complete or its amounts disagree."""
    peers = [e for e in pool if e is not anchor and e.currency == anchor.currency]
    core = [anchor] + key_linked(anchor.idempotency_key, [anchor.source], peers)
    if any(e.amount_minor != anchor.amount_minor for e in core):
        return v.mismatch(anchor, core, config)
    if not v.missing_sources(core, config):
        return v.match(anchor, core, config)
    return None


def group(anchor, pool, evidence, config) -> v.Verdict:
    alone = core_verdict(anchor, pool, config)
    if alone is not None:
        return alone
    peers = [e for e in pool if e is not anchor and e.currency == anchor.currency]
    core = [anchor] + key_linked(anchor.idempotency_key, [anchor.source], peers)
    missing = v.missing_sources(core, config)
    peers = [e for e in peers if not sealed(e, anchor, evidence, config)]
    exact = {s: [e for e in peers if e.source == s and e.amount_minor == anchor.amount_minor
                 and compatible(e.idempotency_key, anchor.idempotency_key)] for s in missing}
    if all(exact.values()):
        sets = candidate_sets(core, [exact[s] for s in missing])
        if len(sets) == 1:
            members = core + list(sets[0])
            rivals = contested(members, peers)
            if rivals:
                return v.ambiguous(anchor, members, [], rivals, 2, config)
            return v.match(anchor, members, config)
        if len(sets) > 1:
            options = [e for combo in sets for e in combo]
            return v.ambiguous(anchor, core, options, rivals_of(anchor, peers), len(sets), config)
    return partial(anchor, core, peers, exact, evidence, config)


def partial(anchor, core, peers, exact, evidence, config) -> v.Verdict:
    members, key, tied = list(core), v.group_key(core), []
    for source, events in exact.items():
        options = [e for e in events if compatible(e.idempotency_key, key)]
        if len(options) == 1:
            members.append(options[0])
            key = key or options[0].idempotency_key
        elif len(options) > 1:
            tied.extend(options)
    if tied:
        return v.ambiguous(anchor, members, tied, rivals_of(anchor, peers), len(tied), config)
    if key != anchor.idempotency_key:
        members += key_linked(key, [e.source for e in members], peers)
        if any(e.amount_minor != anchor.amount_minor for e in members):
            return v.mismatch(anchor, members, config)
    missing = v.missing_sources(members, config)
    near = [e for e in peers if e.source in missing and e not in members
            and compatible(e.idempotency_key, key)
            and within_tolerance(e.amount_minor, anchor.amount_minor, config.amount_tolerance_ppm)
            and not spoken_for(e, members, evidence, config)]
    if near:
        return v.review(anchor, members, near, config)
    return v.missing_counterpart(anchor, members, missing, config)


def sealed(event, anchor, evidence, config) -> bool:
    """Part of a complete, equal-amount group of its own key (a tier-1 match of its own)."""
    key = event.idempotency_key
    if key is None or key == anchor.idempotency_key:
        return False
    unit = key_unit(event, evidence)
    return (not v.missing_sources(unit, config)
            and all(e.amount_minor == event.amount_minor for e in unit))


def spoken_for(event, members, evidence, config) -> bool:
    """Its own unit (key group, or itself) has an exact completion outside `members`."""
    unit = key_unit(event, evidence)
    if any(e.amount_minor != event.amount_minor for e in unit):
        return False
    key = event.idempotency_key
    for source in v.missing_sources(unit, config):
        if not any(e.source == source and e.currency == event.currency
                   and e.amount_minor == event.amount_minor and compatible(e.idempotency_key, key)
                   and e not in members for e in evidence):
            return False
    return True


def key_unit(event, evidence) -> list[Event]:
    """The event and the first event of each other source that carries its key."""
    if event.idempotency_key is None:
        return [event]
    same = [e for e in evidence if e is not event and e.currency == event.currency]
    return [event] + key_linked(event.idempotency_key, [event.source], same)


def key_linked(key, taken, peers) -> list[Event]:
    if key is None:
        return []
    linked: dict[str, Event] = {}
    for event in peers:
        if event.idempotency_key == key and event.source not in taken:
            linked.setdefault(event.source, event)
    return list(linked.values())


def candidate_sets(core, per_source):
    size = 1
    for events in per_source:
        size *= len(events)
    if size > MAX_CANDIDATE_SETS:
        return [()] * 2
    return [combo for combo in itertools.product(*per_source) if v.consistent_key(core + list(combo))]


def compatible(key, group_key) -> bool:
    return key is None or group_key is None or key == group_key


def contested(members, peers) -> list[Event]:
    anchor, sources = members[0], {e.source for e in members}
    joined = [e for e in members[1:]
              if anchor.idempotency_key is None or e.idempotency_key != anchor.idempotency_key]
    return v.unique([y for x in joined for y in peers
                     if y.source != x.source and y.source in sources and y not in members
                     and y.amount_minor == x.amount_minor and y.currency == x.currency
                     and compatible(y.idempotency_key, x.idempotency_key)])


def rivals_of(anchor, peers) -> list[Event]:
    if anchor.idempotency_key is not None:
        return []
    return [e for e in peers if e.source == anchor.source and e.idempotency_key is None
            and e.amount_minor == anchor.amount_minor]


# ----------------------------------------------------------------------------- the engine

class Account:
    def __init__(self):
        self.open: list[tuple[tuple, Event]] = []
        self.seen: dict[str, Seen] = {}
        self.redelivered: dict[str, list[str]] = {}
        self.claims: dict[str, Claim] = {}


class ScanShard:
    """state.engine.Shard's contract (ingest, advance, flush, pending), by scanning."""

    def __init__(self, config: MatchConfig, partitions):
        self.config = config
        self.progress = {p: NEVER for p in sorted(partitions)}
        self.ahead: dict = {}  # partition -> (event time, own record or None)
        self.accounts: dict[str, Account] = {}
        self.deadlines: list[tuple[int, str]] = []
        self.flushed = False

    def watermark(self) -> int:
        if self.flushed:
            return END_OF_TIME
        lowest = min(self.progress.values(), default=NEVER)
        return NEVER if lowest == NEVER else lowest - self.config.allowed_lateness_us

    def ingest(self, piece: Slice) -> Output:
        """Every record of the chunk, in order: a record more than max_clock_skew ahead of
        its partition waits in `ahead` for the partition's next timed record."""
        part = (piece.topic, piece.partition)
        out = Output([], [])
        mine = {position: record for position, record in zip(piece.positions, piece.records)}
        for position, time_us in enumerate(piece.times):
            record = mine.get(position)
            if time_us != NEVER and part in self.ahead:
                self._settle(part, time_us, out)
            if (time_us != NEVER and position not in piece.beats
                    and time_us > self.progress[part] + self.config.max_clock_skew_us):
                self.ahead[part] = (time_us, record)
                continue
            if record is not None:
                self._take(record, self.progress[part], out)
            self.progress[part] = max(self.progress[part], time_us)
        out.extend(self.advance())
        return out

    def _settle(self, part, next_us: int | None, out: Output) -> None:
        time_us, record = self.ahead.pop(part)
        high = self.progress[part]
        if next_us is None or next_us >= time_us - self.config.max_clock_skew_us:
            if record is not None:
                self._take(record, high, out)
            self.progress[part] = max(high, time_us)
        elif record is not None:
            first = self.accounts.get(record.account, Account()).seen.get(seen_key(record))
            if first is not None and first.time_us >= high - self.config.redelivery_horizon_us:
                self._event(record, high, out)  # a redelivery, whatever its time
            else:
                self._alone(record, skew_decision(record, high_before=high, next_us=next_us, config=self.config), out)

    def _take(self, record, high_before: int, out: Output) -> None:
        if not take_unowned(record, high_before, out):  # heartbeats and invalid records
            self._event(record, high_before, out)

    def _event(self, event: Event, high_before: int, out: Output) -> None:
        account = self.accounts.setdefault(event.account, Account())
        first = account.seen.get(seen_key(event))
        config = self.config
        if first is not None and first.time_us >= high_before - config.redelivery_horizon_us:
            if first.decision_id is None:
                account.redelivered.setdefault(first.ref, []).append(event.ref)
            else:
                out.fates.append(fate_of(event, REDELIVERY, first.decision_id, first.window_end))
        elif event.time_us < high_before - config.allowed_lateness_us:
            self._alone(event, late_decision(event, high_before=high_before, config=config), out)
        else:
            account.seen[seen_key(event)] = Seen(event.ref, event.time_us, None)
            was_first = account.open[0][1] if account.open else None
            insort(account.open, (event_order(event), event))
            if account.open[0][1] is not was_first:
                self._schedule(event.account, account)

    def _alone(self, event: Event, verdict, out: Output) -> None:
        decision, fate = verdict
        account = self.accounts.setdefault(event.account, Account())
        account.seen[seen_key(event)] = Seen(event.ref, decision.window_end, decision.decision_id,
                                             decision.window_end)
        out.decisions.append(decision)
        out.fates.append(fate)

    def _schedule(self, name: str, account: Account) -> None:
        anchor = account.open[0][1]
        heapq.heappush(self.deadlines, (anchor.time_us + self.config.match_window_us, name))

    def advance(self) -> Output:
        out = Output([], [])
        watermark = self.watermark()
        window = self.config.match_window_us
        while self.deadlines and self.deadlines[0][0] < watermark:
            deadline, name = heapq.heappop(self.deadlines)
            account = self.accounts.get(name)
            if account is None or not account.open:
                continue
            anchor = account.open[0][1]
            if deadline not in (anchor.time_us + window, anchor.time_us + 2 * window):
                continue
            end = anchor.time_us + window
            if (self._needs_evidence(account, anchor, end)
                    and watermark <= anchor.time_us + 2 * window):
                heapq.heappush(self.deadlines, (anchor.time_us + 2 * window, name))
                continue
            evidence = [e for _, e in account.open if e.time_us <= end + window]
            for verdict in decide(anchor, end, evidence, account.claims, self.config):
                self._apply(account, verdict, out)
            if account.open:
                self._schedule(name, account)
        return out

    def _needs_evidence(self, account: Account, anchor: Event, end: int) -> bool:
        """A duplicate anchor, or one whose key group decides alone, is decided from its
        window; every other decision waits one more window of evidence."""
        window = [e for _, e in account.open if e.time_us <= end]
        duplicates, pool = split_duplicates(window, account.claims, self.config)
        if any(d.members[0] is anchor for d in duplicates):
            return False
        return core_verdict(anchor, pool, self.config) is None

    def _apply(self, account: Account, verdict: v.Verdict, out: Output) -> None:
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
            if event.idempotency_key is not None and decision.exception_kind != DUPLICATE:
                account.claims[claim_key(event.source, event.idempotency_key)] = claim_of(event)

    def flush(self) -> Output:
        out = Output([], [])
        for part in sorted(self.ahead):
            self._settle(part, None, out)
        self.flushed = True
        out.extend(self.advance())
        return out

    def pending(self) -> list[Fate]:
        fates = []
        for account in self.accounts.values():
            for _, event in account.open:
                fates.append(fate_of(event, "pending", None, None))
                fates += [fate_of(event, "pending", None, None, ref)
                          for ref in account.redelivered.get(event.ref, [])]
        fates += [fate_of(record, "pending", None, None)
                  for _, record in self.ahead.values() if record is not None]
        return fates

    def open_count(self) -> int:
        return sum(len(a.open) for a in self.accounts.values())
