"""One decision: the fate of an anchor event, from lookups in its account's book.

The anchor is an account's earliest open event. Its window is
[anchor time, anchor time + match_window]: the window's events are the only
candidates. The next match_window is evidence: it is read, never taken, to see
whether a candidate has stronger evidence of its own (a complete key group, an
exact counterpart), so that exact evidence wins over weaker evidence whatever
the order of anchors. The engine decides an anchor once the watermark has passed
the evidence's end (or the window's end, when the anchor's own key group
decides alone), so both are complete and final: `decide` is a pure function of
them and of the account's claims. tests/reference.py states the same rules as
plain scans, and tests/test_differential.py holds the two equal; rules.py states
them in words, as `tally explain` shows them: a change of a rule changes its text there.
"""

from __future__ import annotations

import itertools

from state import verdicts as v
from state.book import Book
from state.config import MatchConfig
from state.contract import Event
from state.scoring import tolerance_reach, within_tolerance
from state.verdicts import Verdict

MAX_CANDIDATE_SETS = 64  # beyond this many combinations the answer is "ambiguous" anyway


class Window:
    """The lookups of one decision: open, non-duplicate events of the anchor's book, up to
    the window's end (candidates) or the evidence's end (evidence)."""

    def __init__(self, book: Book, anchor: Event, config: MatchConfig):
        self.book, self.anchor, self.config = book, anchor, config
        self.end = anchor.time_us + config.match_window_us
        self.evidence_end = self.end + config.match_window_us

    def candidate(self, event: Event) -> bool:
        return (event.time_us <= self.end and event is not self.anchor
                and not self.book.is_duplicate(event))

    def keyed(self, key: str, until: int) -> list[Event]:
        return self._originals(self.book.keyed(key), until)

    def same_amount(self, currency: str, amount: int, until: int) -> list[Event]:
        return self._originals(self.book.same_amount(currency, amount), until)

    def _originals(self, entries: list, until: int) -> list[Event]:
        """The non-duplicate events of an index list (canonical order) up to `until`."""
        found = []
        for event in entries:
            if event.time_us > until:
                break
            if not self.book.is_duplicate(event):
                found.append(event)
        return found


def decide(book: Book, anchor: Event, config: MatchConfig) -> list[Verdict]:
    """The verdicts for `anchor`: the duplicates in its window, then its own group."""
    window = Window(book, anchor, config)
    verdicts = [v.duplicate(event, original, config)
                for event, original in book.duplicates_until(window.end)]
    if book.is_duplicate(anchor):
        return verdicts
    return verdicts + [_group(window)]


def decides_alone(book: Book, anchor: Event, config: MatchConfig) -> bool:
    """True when the window alone decides: the anchor is a duplicate, or its key group is
    complete or disagrees on the amount. Every other decision waits for the evidence."""
    return book.is_duplicate(anchor) or _alone(_core(Window(book, anchor, config)), config)


def _core(w: Window) -> list[Event]:
    """The anchor and the first candidate of each other source that carries its key."""
    anchor = w.anchor
    return [anchor] + _key_linked(w, anchor.idempotency_key, [anchor.source], anchor.currency)


def _at_odds(core: list[Event]) -> bool:
    return any(e.amount_minor != core[0].amount_minor for e in core)


def _alone(core: list[Event], config: MatchConfig) -> bool:
    """A key group decides alone when it is complete or at odds on the amount."""
    return _at_odds(core) or not v.missing_sources(core, config)


def _core_verdict(w: Window, core: list[Event]) -> Verdict | None:
    """The verdict of a key group that decides alone, else None."""
    if not _alone(core, w.config):
        return None
    verdict = v.mismatch if _at_odds(core) else v.match
    return verdict(w.anchor, core, w.config)


def _group(w: Window) -> Verdict:
    core = _core(w)
    alone = _core_verdict(w, core)
    if alone is not None:
        return alone
    anchor, config = w.anchor, w.config
    missing = v.missing_sources(core, config)
    same = [e for e in w.same_amount(anchor.currency, anchor.amount_minor, w.end)
            if w.candidate(e) and not _sealed(w, e)]
    exact = {s: [e for e in same if e.source == s
                 and _compatible(e.idempotency_key, anchor.idempotency_key)] for s in missing}
    if all(exact.values()):
        sets = _candidate_sets(core, [exact[s] for s in missing])
        if len(sets) == 1:
            members = core + list(sets[0])
            rivals = _contested(w, members)
            if rivals:
                return v.ambiguous(anchor, members, [], rivals, 2, config)
            return v.match(anchor, members, config)
        if len(sets) > 1:
            options = [e for combo in sets for e in combo]
            return v.ambiguous(anchor, core, options, _rivals(anchor, same), len(sets), config)
    return _partial(w, core, same, exact)


def _partial(w: Window, core: list[Event], same: list[Event], exact: dict) -> Verdict:
    """No unique complete group: take the unambiguous part, then review or report missing."""
    anchor, config = w.anchor, w.config
    members, key, tied = list(core), v.group_key(core), []
    for source, events in exact.items():
        options = [e for e in events if _compatible(e.idempotency_key, key)]
        if len(options) == 1:
            members.append(options[0])
            key = key or options[0].idempotency_key
        elif len(options) > 1:
            tied.extend(options)
    if tied:
        return v.ambiguous(anchor, members, tied, _rivals(anchor, same), len(tied), config)
    if key != anchor.idempotency_key:  # a member brought a key: its key-linked events belong too
        members += [e for e in _key_linked(w, key, [e.source for e in members], anchor.currency)
                    if not _sealed(w, e)]
        if any(e.amount_minor != anchor.amount_minor for e in members):
            return v.mismatch(anchor, members, config)
    near = _near(w, members, key)
    if near:
        return v.review(anchor, members, near, config)
    return v.missing_counterpart(anchor, members, v.missing_sources(members, config), config)


def _near(w: Window, members: list[Event], key: str | None) -> list[Event]:
    """Events of the missing sources within the amount tolerance, in canonical order, that
    have no exact evidence of their own."""
    anchor, config = w.anchor, w.config
    missing = set(v.missing_sources(members, config))
    amount, ppm = anchor.amount_minor, config.amount_tolerance_ppm
    reach = tolerance_reach(amount, ppm)
    taken = {id(e) for e in members}
    near = [e for e in w.book.amounts_between(anchor.currency, amount - reach, amount + reach)
            if e.source in missing and w.candidate(e) and id(e) not in taken
            and _compatible(e.idempotency_key, key)
            and within_tolerance(e.amount_minor, amount, ppm)
            and not _sealed(w, e) and not _spoken_for(w, e, taken)]
    return sorted(near, key=v.event_order)


def _sealed(w: Window, event: Event) -> bool:
    """Part of a complete, equal-amount group of its own key: a tier-1 match of its own."""
    key = event.idempotency_key
    if key is None or key == w.anchor.idempotency_key:
        return False
    unit = _unit(w, event)
    return (not v.missing_sources(unit, w.config)
            and all(e.amount_minor == event.amount_minor for e in unit))


def _spoken_for(w: Window, event: Event, taken: set[int]) -> bool:
    """Its own unit (its key group, or itself) has an exact completion outside `taken`."""
    unit = _unit(w, event)
    if any(e.amount_minor != event.amount_minor for e in unit):
        return False
    missing = v.missing_sources(unit, w.config)
    if not missing:
        return True
    key = event.idempotency_key
    found = {e.source for e in w.same_amount(event.currency, event.amount_minor, w.evidence_end)
             if e.source in missing and id(e) not in taken and _compatible(e.idempotency_key, key)}
    return len(found) == len(missing)


def _unit(w: Window, event: Event) -> list[Event]:
    """The event and the first event of each other source that carries its key (evidence)."""
    if event.idempotency_key is None:
        return [event]
    linked: dict[str, Event] = {}
    for e in w.keyed(event.idempotency_key, w.evidence_end):
        if e.currency == event.currency and e.source != event.source:
            linked.setdefault(e.source, e)
    return [event, *linked.values()]


def _key_linked(w: Window, key: str | None, taken: list[str], currency: str) -> list[Event]:
    """The first candidate of each source not yet `taken` that carries `key`."""
    if key is None:
        return []
    linked: dict[str, Event] = {}
    for event in w.keyed(key, w.end):
        if event.source not in taken and event.currency == currency and w.candidate(event):
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
            if v.consistent_key(core + list(combo))]


def _compatible(key: str | None, group_key: str | None) -> bool:
    return key is None or group_key is None or key == group_key


def _contested(w: Window, members: list[Event]) -> list[Event]:
    """Events outside the group that could take a member joined by tier-2 rules.

    A unique choice from the anchor's side is not enough: if the chosen event could
    as well complete another group (a same-amount event of a source the group already
    has), the pairing is a guess, and Tally does not guess.
    """
    anchor, sources = members[0], {e.source for e in members}
    taken = {id(e) for e in members}
    joined = [e for e in members[1:]
              if anchor.idempotency_key is None or e.idempotency_key != anchor.idempotency_key]
    return v.unique([y for x in joined for y in w.same_amount(x.currency, x.amount_minor, w.end)
                     if y.source != x.source and y.source in sources and id(y) not in taken
                     and w.candidate(y) and _compatible(y.idempotency_key, x.idempotency_key)
                     and not _sealed(w, y)])


def _rivals(anchor: Event, same: list[Event]) -> list[Event]:
    """Events the anchor could be swapped with: same source, same amount, no key to tell them apart."""
    if anchor.idempotency_key is not None:
        return []
    return [e for e in same if e.source == anchor.source and e.idempotency_key is None]
