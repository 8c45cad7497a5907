"""The rules of the engine in words: what decides a match of each tier, an exception of
each kind, and the outcomes that make no decision of their own.

One table beside the rules it states (matching.py and verdicts.py for tiers and kinds,
engine.py for late, clock skew, invalid records, redeliveries and heartbeats), so that a
change of a rule and of its words is one change in one folder; docs/determinism.md states
the duplicate and exact-evidence rules in full. `tally explain` shows these texts, with
the placeholders filled from the namespace's config: {tolerance}, {horizon}, {lateness},
{skew} (KIND_RULES, OUTCOME_RULES) and {time} (HEARTBEAT).

A decision's own `reason` is not built from here: it states the facts of that one decision
(which key, which amounts, how far behind), and it is part of what the stores hold.
"""

from __future__ import annotations

from state.decision import (AMBIGUOUS, CLOCK_SKEW, DUPLICATE, HEARTBEAT, INVALID_KIND, LATE, MISMATCH,
                            MISSING, PENDING, REDELIVERY, REVIEW, SETTLEMENT_MISMATCH)

TIER_RULES = {
    1: "tier 1: every member carries the same idempotency key, one event per expected source, "
       "and the amounts agree (confidence 1.0)",
    2: "tier 2: one event per expected source with the anchor's exact amount and currency inside "
       "the match window, no contradicting idempotency key, the only possible set, and no outside "
       "event could take a member's place (confidence: mean pair score of amount, time and "
       "reference against the anchor)",
}
KIND_RULES = {
    MISSING: "missing counterpart: no event of the missing source(s) with the anchor's exact "
             "amount, nor within the amount tolerance ({tolerance}), inside the match window, "
             "that is not already spoken for by exact evidence of its own",
    MISMATCH: "amount mismatch: events linked by one idempotency key carry different amounts",
    AMBIGUOUS: "ambiguous: more than one equally good candidate set (or same-amount events of "
               "the anchor's source with no key to tell them apart); Tally does not guess",
    REVIEW: "review: no exact counterpart, but event(s) of the missing source(s) within the "
            "amount tolerance ({tolerance}) that have no exact counterparts of their own (read up "
            "to one match window past the window); scored candidates for a human, a clear best "
            "one joined",
    DUPLICATE: "duplicate: another event_id from the same source with the same idempotency key, "
               "at most the redelivery horizon ({horizon}) after the original: the first of "
               "them in event-time order, which this decision names",
    LATE: "late: its event_time was more than allowed_lateness ({lateness}) behind its "
          "partition's progress when it arrived; decided alone, at once",
    CLOCK_SKEW: "clock skew: its event_time was more than max_clock_skew ({skew}) ahead of its "
                "partition's progress, and the partition's next record did not follow it; it "
                "moved nothing and was decided alone",
    INVALID_KIND: "invalid: the record breaks the event contract; its raw bytes are kept with "
                  "the reason",
    SETTLEMENT_MISMATCH: "settlement mismatch: a payout and the sum of its batch's items' nets "
                         "disagree",
}
# A relation's own rules (state/batches.py, state/payouts.py), by tier or exception kind;
# a kind not here (duplicate, late, ...) reads as in KIND_RULES. Placeholders: {window}
# (a batch relation's window), {lag} and {tolerance} (a payout relation's).
BATCH_RULES = {
    1: "batch, tier 1: the payout of the batch pays exactly the sum of its items' nets (gross "
       "less fee; refunds negative, fee lines of amount 0), all in one currency, the records "
       "of one account and batch_id within {window} of its first (confidence 1.0)",
    MISSING: "batch, missing counterpart: the batch's window ({window}) closed with items but "
             "no payout, or a payout but no item",
    SETTLEMENT_MISMATCH: "settlement mismatch: the batch's payout and the sum of its items' nets "
                         "(gross less fee) disagree, or the batch mixes currencies",
}
PAYOUT_RULES = {
    1: "deposit, tier 1: the one bank credit of the payout's exact amount booked {lag} after "
       "it whose reference names the payout's batch (confidence 1.0)",
    2: "deposit, tier 2: the only bank credit of the payout's exact amount booked {lag} after "
       "it, and no other payout could take it (confidence: pair score of amount and time)",
    AMBIGUOUS: "ambiguous: more than one credit (or payout) could pair, none told apart by a "
               "reference naming the batch; Tally does not guess",
    REVIEW: "review: no credit of the payout's exact amount booked {lag} after it, but credit(s) "
            "within its tolerance ({tolerance}); scored candidates for a human",
    MISSING: "missing counterpart: a payout that no credit of its amount (or within its "
             "tolerance, {tolerance}) booked {lag} after it pays, or a credit that no payout "
             "made {lag} before it explains",
}
OUTCOME_RULES = {
    REDELIVERY: "redelivery: its source:event_id was delivered earlier in the same partition, "
                "within the redelivery horizon ({horizon}) of the partition's progress; it makes "
                "no decision of its own, its fate points at the first delivery's decision",
    HEARTBEAT: "heartbeat: a statement, by the producer or by a live Tally run while the "
               "partition was quiet, that its partition's event time reached {time}; it raises "
               "the partition's progress and needs no decision",
    PENDING: "pending: consumed (in the raw archive) but not decided yet; it waits for its "
             "window, and has no fate row until then",
}
