"""What the engine decides: decisions, the fate of every record, and their ids.

A decision's id is a hash of its kind and its members' identities, so the same
decision re-emitted after a crash or in a replay maps to the same row.
"""

from __future__ import annotations

import hashlib

import msgspec

# fate outcomes: every consumed record gets exactly one
MATCHED, EXCEPTION, INVALID, REDELIVERY, HEARTBEAT, PENDING = (
    "matched", "exception", "invalid", "redelivery", "heartbeat", "pending")

# exception kinds
MISSING, MISMATCH, AMBIGUOUS, REVIEW, DUPLICATE, LATE, INVALID_KIND = (
    "missing_counterpart", "amount_mismatch", "ambiguous", "review", "duplicate", "late", "invalid")
CLOCK_SKEW = "clock_skew"
SETTLEMENT_MISMATCH = "settlement_mismatch"  # a payout and its batch's items disagree on the sum

# what a person may resolve an open exception as (`tally review resolve --as`)
RESOLUTIONS = ("matched", "written-off", "duplicate", "refunded", "false-positive", "escalated")


class Candidate(msgspec.Struct, frozen=True):
    """An event a human should look at for this decision, with the engine's confidence."""

    event: str  # "source:event_id"
    ref: str  # "topic:partition:offset"
    confidence: float


class Decision(msgspec.Struct, frozen=True, kw_only=True):
    decision_id: str
    kind: str  # "match" or "exception"
    tier: int | None
    exception_kind: str | None
    account: str | None
    currency: str | None
    amount_minor: int | None
    confidence: float | None
    member_event_ids: list[str]
    member_refs: list[str]
    window_start: int  # UTC microseconds
    window_end: int
    missing_sources: list[str] = []
    candidates: list[Candidate] = []
    reason: str | None = None
    raw_base64: str | None = None
    # the relation of the config that decided it (state/relations.py); None for a config
    # without relations, whose decisions are exactly as they were before relations existed
    relation: str | None = None
    fee_minor: int | None = None  # what the processor withheld from the members, when any said


class Fate(msgspec.Struct, frozen=True, array_like=True):
    topic: str
    partition: int
    offset: int
    source: str | None
    event_id: str | None
    outcome: str
    decision_id: str | None
    window_end: int | None  # the day a fate belongs to; None only while pending


def decision_id(kind: str, members: list[str], refs: list[str], relation: str | None = None) -> str:
    """Stable id: the relation and kind, the members' "source:event_id" and their log
    positions, hashed.

    The positions keep two distinct events that reuse one event id apart; the relation
    keeps apart two relations' decisions over the same members.
    """
    kind = kind if relation is None else f"{relation}/{kind}"
    text = "\x1f".join([kind, "\x1e".join(sorted(members)), "\x1e".join(sorted(refs))])
    return hashlib.blake2b(text.encode(), digest_size=16).hexdigest()


def sort_key(decision: Decision) -> tuple:
    """The canonical order of decisions in every output."""
    return (decision.window_end, decision.account or "", decision.decision_id)


def fate_key(fate: Fate) -> tuple:
    return (fate.topic, fate.partition, fate.offset)
