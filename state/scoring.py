"""Confidence in [0, 1] that two events describe one payment.

Weights follow the evidence a reviewer trusts most: the amount, then the time,
then the free-text reference. Pure arithmetic, rounded, so runs agree exactly.
"""

from __future__ import annotations

import re

from state.contract import Event

AMOUNT_WEIGHT, TIME_WEIGHT, REFERENCE_WEIGHT = 0.5, 0.3, 0.2
_TOKEN = re.compile(r"[A-Z0-9]+")


def amount_closeness(a: int, b: int) -> float:
    larger = max(abs(a), abs(b))
    return 1.0 if larger == 0 else max(0.0, 1.0 - abs(a - b) / larger)


def time_closeness(a_us: int, b_us: int, window_us: int) -> float:
    return max(0.0, 1.0 - abs(a_us - b_us) / window_us)


def reference_similarity(a: str | None, b: str | None) -> float:
    """Jaccard similarity of the upper-case word sets; 0 when either is absent."""
    if not a or not b:
        return 0.0
    left, right = set(_TOKEN.findall(a.upper())), set(_TOKEN.findall(b.upper()))
    union = left | right
    return len(left & right) / len(union) if union else 0.0


def pair_confidence(anchor: Event, other: Event, window_us: int) -> float:
    score = (AMOUNT_WEIGHT * amount_closeness(anchor.amount_minor, other.amount_minor)
             + TIME_WEIGHT * time_closeness(anchor.time_us, other.time_us, window_us)
             + REFERENCE_WEIGHT * reference_similarity(anchor.reference, other.reference))
    return round(score, 4)


def group_confidence(anchor: Event, others: list[Event], window_us: int) -> float:
    if not others:
        return 0.0
    return round(sum(pair_confidence(anchor, o, window_us) for o in others) / len(others), 4)


def tolerance_reach(amount: int, tolerance_ppm: int) -> int:
    """How far from `amount` an amount within the tolerance can lie: within it,
    |a - b| <= ppm * (|b| + |a - b|) / 1e6, so |a - b| can be no larger than this."""
    if tolerance_ppm >= 1_000_000:
        return 2**63
    return -(-abs(amount) * tolerance_ppm // (1_000_000 - tolerance_ppm))


def within_tolerance(a: int, b: int, tolerance_ppm: int) -> bool:
    """|a - b| <= tolerance * max(|a|, |b|), in integers."""
    return abs(a - b) * 1_000_000 <= tolerance_ppm * max(abs(a), abs(b))
