"""`tally explain`: what happened to one record, or to every record of one event id.

Everything shown is read back, not recomputed: the fate and the decision from
PostgreSQL (or the Parquet files), the raw bytes from the namespace's archive
(<data-dir>/<namespace>/events). Only the rule texts and the watermark condition
are derived, from the decision's kind and the matching config, and a batch
decision's sums (the payout, the items' gross, fees and nets, and the difference)
are added up from its members' values as decoded from the raw archive.

A record in two relations (a processor item in its payment's match and in its
batch; a payout in its batch and in its deposit) has one fate, pointing at its
decision in its primary relation. Its decisions in the others are read back too:
the decisions listing it among their members, found by its ref in a window_end
range its event time and the config's relations bound (`_others`), and only for a
config with relations.

The watermark at the moment of a decision depends on how records were batched,
so it is not stored. What is deterministic, and what is stated, is the condition
the engine waited for (`Shard.advance` in state/engine.py): the watermark passed
window_end (a key group deciding alone) or window_end + match_window (a decision
that read its evidence), i.e. every source partition's event-time progress passed
that + allowed_lateness.
"""

from __future__ import annotations

import base64
import dataclasses
import json
import re
from dataclasses import dataclass, field
from pathlib import Path

from flows.logs import UserError, printable, redact
from sinks.stores import Archive, ParquetStore
from sinks.stores import PostgresStore as PgStore
import msgspec

from state import relations as rel
from state.config import MatchConfig
from state.contract import Event, format_us
from state.decision import (CLOCK_SKEW, DUPLICATE, HEARTBEAT, INVALID_KIND, LATE, MISMATCH, PENDING,
                            REDELIVERY)
from state.rules import BATCH_RULES, KIND_RULES, OUTCOME_RULES, PAYOUT_RULES, TIER_RULES

# pyarrow and psycopg are imported where used (sinks.stores loads neither at import): the
# CLI imports this module for every `tally` command, which should stay cheap.

STORES = ("postgres", "parquet")
PREVIEW_CHARS = 300  # of a raw value in the text output; --json gives it whole
DECIDED, UNKNOWN = "decided", "unknown"  # statuses besides PENDING
DAY_US = 86_400_000_000  # the margin around the window_end range of a record's other decisions
_REF = re.compile(r"^([A-Za-z0-9._-]{1,249}):([0-9]{1,10}):([0-9]{1,19})$")

# ----------------------------------------------------------------------------- data


@dataclass(frozen=True)
class Query:
    text: str
    ref: tuple[str, int, int] | None = None  # (topic, partition, offset)
    label: tuple[str, str] | None = None  # (source, event_id)


@dataclass(frozen=True)
class Raw:
    """One archived record, as consumed."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    timestamp_us: int | None
    value: bytes | None

    @property
    def ref(self) -> str:
        return f"{self.topic}:{self.partition}:{self.offset}"


@dataclass(frozen=True)
class Detail:
    """A member or a candidate of a decision, with what its archived value says."""

    ref: str
    label: str | None
    confidence: float | None = None
    amount_minor: int | None = None
    currency: str | None = None
    time_us: int | None = None
    archived: bool = False


@dataclass(frozen=True)
class Sums:
    """A batch decision's sums, added up from its members' archived values."""

    currency: str
    payouts: int  # how many members are payouts ...
    items: int  # ... and how many items (fee lines too)
    payout_minor: int
    gross_minor: int
    fees_minor: int
    nets_minor: int  # gross - fees
    difference_minor: int  # payout - nets: 0 when the batch settles
    unread: int = 0  # members not in the archive (or not events), left out of the sums


@dataclass
class Related:
    """A decision of one of the record's other relations, listing it among its members."""

    decision: dict  # canonical decision row
    members: list[Detail]
    candidates: list[Detail]
    rule: str
    sums: Sums | None = None


@dataclass
class Explanation:
    ref: str
    status: str  # DECIDED, PENDING or UNKNOWN
    raw: Raw | None
    fate: dict | None  # canonical fate row (sinks.compare), times in microseconds
    decision: dict | None  # canonical decision row
    members: list[Detail] = field(default_factory=list)
    candidates: list[Detail] = field(default_factory=list)
    outcome_rule: str | None = None  # redelivery, heartbeat, pending
    rule: str | None = None  # the decision's tier or kind
    watermark: str | None = None
    first_delivery: Detail | None = None
    notes: list[str] = field(default_factory=list)
    sums: Sums | None = None  # the decision's, when a batch relation made it
    # the record's decisions in its other relations; None for a config without relations
    others: list[Related] | None = None
    other_relations: list[str] = field(default_factory=list)  # the relations looked in


def ref_key(ref: str) -> tuple[str, int, int]:
    topic, partition, offset = ref.rsplit(":", 2)
    return topic, int(partition), int(offset)


def fate_ref(fate: dict) -> str:
    return f"{fate['topic']}:{fate['partition']}:{fate['offset']}"


def iso(us: int | None) -> str | None:
    return None if us is None else format_us(us)


def duration(us: int) -> str:
    for unit, size in (("h", 3_600_000_000), ("m", 60_000_000), ("s", 1_000_000)):
        if us and us % size == 0:
            return f"{us // size}{unit}"
    return f"{us}us"


def days(us: int) -> str:
    """A relation's span: in days when whole days (a relation's are, mostly)."""
    return f"{us // DAY_US}d" if us % DAY_US == 0 else duration(us)


def parse_query(text: str, config: MatchConfig) -> Query:
    """TOPIC:PARTITION:OFFSET, else SOURCE:EVENT_ID (a configured source wins a tie)."""
    ref, head = _REF.match(text), text.split(":", 1)[0]
    if ref and (head in config.topics.values() or head not in config.topics):
        partition, offset = int(ref.group(2)), int(ref.group(3))
        if partition >= 2**31 or offset >= 2**63:
            raise UserError(f"{text}: partition or offset out of range")
        return Query(text, ref=(ref.group(1), partition, offset))
    source, sep, event_id = text.partition(":")
    if sep and source and event_id:
        return Query(text, label=(source, event_id))
    raise UserError(f"{text!r} is neither TOPIC:PARTITION:OFFSET nor SOURCE:EVENT_ID")


# ----------------------------------------------------------------------------- explaining (pure)


def explain(ref: str, raw: Raw | None, fate: dict | None, decision: dict | None,
            records: dict[str, object], config: MatchConfig, replay: bool = False,
            others: list[dict] | None = None, other_relations=()) -> Explanation:
    """The explanation of the record at `ref` from what the stores hold.

    `records` are the decoded archived records (state.contract) of the decisions'
    members and candidates, by ref; `replay` says the namespace is a replay's;
    `others` are the record's decisions in its other relations, `other_relations`
    (None for a config without relations).
    """
    out = Explanation(ref, _status(raw, fate), raw, fate, decision)
    if decision is not None:
        out.members, out.candidates = _details(decision, records)
        out.rule, out.watermark = rule_text(decision, config), watermark_text(decision, config)
        out.notes += _window_check(decision, config)
        out.sums = batch_sums(decision, records, config)
    if others is not None:
        out.others = [_related(d, records, config) for d in others]
        out.other_relations = list(other_relations)
    elif fate is not None and fate["decision_id"] is not None:
        out.notes.append(f"decision {fate['decision_id']} is not in the store (yet)")
    if out.status == PENDING:
        _pending(out, records.get(ref), config, replay)
    elif fate is not None and fate["outcome"] in (REDELIVERY, HEARTBEAT):
        out.outcome_rule = OUTCOME_RULES[fate["outcome"]].format(
            horizon=duration(config.redelivery_horizon_us), time=iso(fate["window_end"]))
        out.first_delivery = _first_delivery(ref, fate, out.members)
    return out


def _related(decision: dict, records: dict[str, object], config: MatchConfig) -> Related:
    members, candidates = _details(decision, records)
    return Related(decision, members, candidates, rule_text(decision, config),
                   batch_sums(decision, records, config))


def relation_of(decision: dict, config: MatchConfig) -> rel.Relation | None:
    """The config's relation that made the decision (its tolerance filled in), if named."""
    if decision["relation"] is None or not config.relations:
        return None
    return next((r for r in config.relation_list() if r.name == decision["relation"]), None)


def span(relation: rel.Relation) -> int:
    """How far a relation's windows reach: its window, or its lag's upper end."""
    return relation.lag_max_us if relation.rule == rel.PAYOUT else relation.window_us


def decision_config(decision: dict, config: MatchConfig) -> MatchConfig:
    """The config as the decision's relation read it (state/engine.py `_desk`): its window
    as match_window, its tolerance as amount_tolerance."""
    relation = relation_of(decision, config)
    if relation is None:
        return config
    return msgspec.structs.replace(config, match_window_us=span(relation),
                                   amount_tolerance_ppm=relation.tolerance_ppm)


def batch_sums(decision: dict, records: dict[str, object], config: MatchConfig) -> Sums | None:
    """A batch relation's decision: the payout, the items' gross, fees and nets and the
    difference, from the members' decoded archived values (none in several currencies)."""
    relation = relation_of(decision, config)
    if relation is None or relation.rule != rel.BATCH:
        return None
    read = [e for e in map(records.get, decision["member_refs"]) if isinstance(e, Event)]
    if len({e.currency for e in read}) != 1:
        return None
    items = [e for e in read if not e.payout]
    paid = sum(e.amount_minor for e in read if e.payout)
    gross, fees = sum(e.amount_minor for e in items), sum(e.fee_minor or 0 for e in items)
    return Sums(read[0].currency, len(read) - len(items), len(items), paid, gross, fees,
                gross - fees, paid - (gross - fees), len(decision["member_refs"]) - len(read))


def _status(raw: Raw | None, fate: dict | None) -> str:
    if fate is not None and fate["outcome"] != PENDING:
        return DECIDED
    return PENDING if fate is not None or raw is not None else UNKNOWN


def _pending(out: Explanation, record: object, config: MatchConfig, replay: bool) -> None:
    out.outcome_rule = OUTCOME_RULES[PENDING]
    out.watermark = _pending_watermark(record, config)
    if replay:
        out.notes.append("this is a replay namespace: a record without a fate may also have "
                         "been decided during the warm-up, whose decisions are not written")


def _details(decision: dict, records: dict[str, object]) -> tuple[list[Detail], list[Detail]]:
    labels = decision["member_event_ids"]  # empty for an invalid record's decision
    members = [_detail(r, labels[i] if i < len(labels) else None, None, records)
               for i, r in enumerate(decision["member_refs"])]
    candidates = [_detail(ref, event, confidence, records)
                  for event, ref, confidence in decision["candidates"]]
    return members, candidates


def _detail(ref: str, label: str | None, confidence: float | None,
            records: dict[str, object]) -> Detail:
    record = records.get(ref)
    if not isinstance(record, Event):
        return Detail(ref, label, confidence, archived=record is not None)
    return Detail(ref, label, confidence, record.amount_minor, record.currency, record.time_us, True)


def _first_delivery(ref: str, fate: dict, members: list[Detail]) -> Detail | None:
    """The member with this record's source:event_id: in its partition, before it, if any."""
    if fate["outcome"] != REDELIVERY:
        return None
    label = f"{fate['source']}:{fate['event_id']}"
    topic, partition, offset = ref_key(ref)
    same = [m for m in members if m.label == label]
    earlier = [m for m in same if ref_key(m.ref)[:2] == (topic, partition)
               and ref_key(m.ref)[2] < offset]
    if earlier:
        return max(earlier, key=lambda m: ref_key(m.ref))
    return same[0] if same else None


def rule_text(decision: dict, config: MatchConfig) -> str:
    relation = relation_of(decision, config)
    config = decision_config(decision, config)
    own = {rel.BATCH: BATCH_RULES, rel.PAYOUT: PAYOUT_RULES}.get(relation and relation.rule, {})
    key = decision["tier"] if decision["kind"] == "match" else decision["exception_kind"]
    if key in own:
        lag = f"{days(relation.lag_min_us)} to {days(relation.lag_max_us)}"
        return own[key].format(window=days(relation.window_us), lag=lag,
                               tolerance=f"{config.amount_tolerance_ppm / 10_000:g}% of the larger")
    if decision["kind"] == "match":
        return TIER_RULES.get(decision["tier"], f"tier {decision['tier']}: not a tier this "
                                                f"version of Tally knows")
    kind = decision["exception_kind"]
    template = KIND_RULES.get(kind, f"{kind}: not a kind this version of Tally knows")
    return template.format(tolerance=f"{config.amount_tolerance_ppm / 10_000:g}% of the larger",
                           horizon=duration(config.redelivery_horizon_us),
                           lateness=duration(config.allowed_lateness_us),
                           skew=duration(config.max_clock_skew_us))


def watermark_text(decision: dict, config: MatchConfig) -> str:
    relation = relation_of(decision, config)
    config = decision_config(decision, config)
    kind, end = decision["exception_kind"], decision["window_end"]
    lateness = duration(config.allowed_lateness_us)
    if kind == LATE:
        return ("decided on arrival, without waiting for the watermark; its window is its own "
                "event_time")
    if kind == CLOCK_SKEW:
        return ("decided when its partition's next record arrived, without waiting for the "
                "watermark; its window is its partition's event-time progress then")
    if kind == INVALID_KIND:
        return ("decided on arrival, without waiting for the watermark; its window is its "
                "partition's event-time progress at arrival (1970-01-01 if none yet)")
    if kind == DUPLICATE:
        return ("decided with the window of its account's anchor then (the earliest open event; "
                "not stored): once the watermark passed that window's end, a time between "
                "window_start and window_end, or one match_window later if that anchor read its "
                "evidence, i.e. once every source partition's event-time progress had passed that "
                f"time + allowed_lateness ({lateness})")
    if relation is not None and relation.rule != rel.MATCH:  # due at its window's end
        return (f"decided once the watermark of relation {relation.name} passed window_end "
                f"{iso(end)}, i.e. once the event-time progress of every partition of "
                f"{', '.join(relation.reads())} had passed {iso(end + config.allowed_lateness_us)} "
                f"(window_end + allowed_lateness {lateness}); the exact watermark then depends "
                f"on batching and is not stored (a bounded run with --flush decides the windows "
                f"still open at its end without this wait)")
    alone = decision["tier"] == 1 or kind == MISMATCH  # may decide from its window alone
    wait, what = (end, "window_end") if alone else (end + config.match_window_us,
                                                     "window_end + match_window")
    note = ("; an amount mismatch joined by a member without the anchor's key read one more "
            "window of evidence and waited a match_window longer" if kind == MISMATCH else
            "" if alone else "; it read one more window of evidence after its own")
    return (f"decided once the watermark passed {what} {iso(wait)}, i.e. once every source "
            f"partition's event-time progress had passed {iso(wait + config.allowed_lateness_us)} "
            f"({what} + allowed_lateness {lateness}){note}; the exact watermark then depends on "
            f"batching and is not stored (a bounded run with --flush decides the windows still "
            f"open at its end without this wait)")


def _pending_watermark(record: object, config: MatchConfig) -> str:
    if not isinstance(record, Event):
        return "no fate has been written for it yet"
    end = record.time_us + 2 * config.match_window_us
    return (f"decided at the latest once the watermark passes its own evidence's end {iso(end)} "
            f"(event_time + 2 x match_window), i.e. once every source partition's event-time "
            f"progress passes {iso(end + config.allowed_lateness_us)}; earlier if its own key "
            f"group decides alone or an earlier anchor's window takes it")


def _window_check(decision: dict, config: MatchConfig) -> list[str]:
    """A window of another length than match_window: the config is not the namespace's."""
    if decision["exception_kind"] in (LATE, INVALID_KIND, CLOCK_SKEW):
        return []
    length = decision["window_end"] - decision["window_start"]
    relation = relation_of(decision, config)
    expected = config.match_window_us if relation is None else span(relation)
    if length == expected:
        return []
    what = ("the config's match_window" if relation is None else
            f"relation {relation.name}'s {'lag' if relation.rule == rel.PAYOUT else 'window'}")
    return [f"this window is {duration(length)} long but {what} is {duration(expected)}: pass "
            f"the namespace's config with --config"]


# ----------------------------------------------------------------------------- text output


def preview(data: bytes | None, limit: int = PREVIEW_CHARS) -> str:
    if data is None:
        return "null (a tombstone)"
    try:
        text, how = printable(data.decode("utf-8")), "UTF-8"
    except UnicodeDecodeError:
        text, how = base64.b64encode(data).decode(), "not UTF-8, base64"
    shown = text if len(text) <= limit else text[:limit] + f"... (truncated; {len(data):,} bytes in all)"
    return f"{len(data):,} bytes, {how}: {shown}"


def _key_text(key: bytes | None) -> str:
    if key is None:
        return "none"
    try:
        return printable(key.decode("utf-8"))
    except UnicodeDecodeError:
        return "base64 " + base64.b64encode(key).decode()


def _amount(amount_minor: int | None, currency: str | None) -> str:
    from state.verdicts import format_minor
    if amount_minor is None or currency is None:
        return "-"
    return f"{format_minor(amount_minor, currency)} {printable(currency)}"


def format_text(query: Query, namespace: str, where: str, found: list[Explanation]) -> str:
    if not found:
        return (f"no record with event id {printable(query.text)} in namespace {namespace}: no "
                f"fate in {where}, and none pending in the raw archive")
    lines = [f"{len(found)} record{'' if len(found) == 1 else 's'} with event id {printable(query.text)}, in log order "
             f"(namespace {namespace}, {where})"] if query.label else []
    for x in found:
        lines += record_lines(x, namespace, where)
    return "\n".join(lines)


def record_lines(x: Explanation, namespace: str, where: str) -> list[str]:
    if x.status == UNKNOWN:
        return [f"{x.ref}: never consumed in namespace {namespace}: not in its raw archive, no "
                f"fate in {where}"] + [f"  note        {n}" for n in x.notes]
    what = x.fate["outcome"] if x.fate and x.status == DECIDED else x.status
    lines = [f"{x.ref}  {what}"] + _raw_lines(x.raw) + _fate_lines(x)
    if x.decision is not None:
        lines += decision_lines(x)
    elif x.watermark:
        lines.append(f"  watermark   {x.watermark}")
    return lines + other_lines(x) + [f"  note        {n}" for n in x.notes]


def _raw_lines(raw: Raw | None) -> list[str]:
    if raw is None:
        return ["  archived    no: not in the raw archive (written with a delay, or another --data-dir)"]
    return [f"  archived    key {_key_text(raw.key)}  broker time {iso(raw.timestamp_us) or '-'}",
            f"  value       {preview(raw.value)}"]


def _fate_lines(x: Explanation) -> list[str]:
    lines = []
    if x.fate is not None:
        lines.append(f"  fate        {x.fate['outcome']}  decision {x.fate['decision_id'] or '-'}")
    if x.outcome_rule:
        lines.append(f"  outcome     {x.outcome_rule}")
    if x.first_delivery is not None:
        lines.append(f"  first       delivery at {x.first_delivery.ref} "
                     f"({printable(x.first_delivery.label or '-')})")
    return lines


def decision_lines(x: Explanation) -> list[str]:
    return _decision_lines(x.decision, x.rule, x.members, x.candidates, x.sums, x.ref) + \
        [f"  watermark   {x.watermark}"]


def other_lines(x: Explanation) -> list[str]:
    """The record's decisions in its other relations, each indented under its relation."""
    lines = []
    for name in x.other_relations:
        found = [o for o in x.others or () if o.decision["relation"] == name]
        if not found:
            lines.append(f"  also in     relation {printable(name)}: no decision lists this record "
                         f"(yet)")
        for o in found:
            lines.append(f"  also in     relation {printable(name)}: decision "
                         f"{o.decision['decision_id']}")
            lines += ["  " + line for line in
                      _decision_lines(o.decision, o.rule, o.members, o.candidates, o.sums, x.ref)]
    return lines


def _decision_lines(d: dict, rule: str | None, members: list[Detail], candidates: list[Detail],
                    sums: Sums | None, own: str) -> list[str]:
    what = d["kind"] + (f", tier {d['tier']}" if d["tier"] is not None else "") + \
        (f", {d['exception_kind']}" if d["exception_kind"] else "")
    facts = [what] + ([f"relation {printable(d['relation'])}"] if d["relation"] else []) + \
        ([f"account {printable(d['account'])}"] if d["account"] else []) + \
        ([_amount(d["amount_minor"], d["currency"])] if d["amount_minor"] is not None else []) + \
        ([f"fee {_amount(d['fee_minor'], d['currency'])}"] if d["fee_minor"] is not None else []) + \
        ([f"confidence {d['confidence']:g}"] if d["confidence"] is not None else [])
    lines = [f"  decision    {'  '.join(facts)}",
             f"  rule        {rule}",
             f"  reason      {printable(d['reason'] or '-')}"]
    if d["missing_sources"]:
        lines.append(f"  missing     {', '.join(map(printable, d['missing_sources']))}")
    lines.append(f"  members     {len(members)}")
    lines += [_detail_line(m, own) for m in members]
    if sums is not None:
        lines += sums_lines(sums)
    lines.append(f"  candidates  {len(candidates) or 'none'}")
    lines += [_detail_line(c, own) for c in candidates]
    if d["raw_base64"] is not None:
        lines.append(f"  raw bytes   {preview(base64.b64decode(d['raw_base64']))}")
    return lines + [f"  window      {iso(d['window_start'])} .. {iso(d['window_end'])}"]


def sums_lines(s: Sums) -> list[str]:
    def money(minor: int) -> str:
        return _amount(minor, s.currency)
    unread = (f"; {s.unread} member{'' if s.unread == 1 else 's'} not in the archive, left out"
              if s.unread else "")
    return [f"  sums        payout {money(s.payout_minor)} ({s.payouts} payout"
            f"{'' if s.payouts == 1 else 's'}); {s.items} item{'' if s.items == 1 else 's'}: "
            f"gross {money(s.gross_minor)}, fees {money(s.fees_minor)}, nets {money(s.nets_minor)}; "
            f"difference {money(s.difference_minor)} (payout - nets)",
            f"              added up from the members' archived values{unread}"]


def _detail_line(m: Detail, own: str) -> str:
    confidence = "" if m.confidence is None else f"  confidence {m.confidence:g}"
    facts = (f"  {_amount(m.amount_minor, m.currency)}  {iso(m.time_us)}" if m.time_us is not None
             else "" if m.archived else "  (not in the archive)")
    this = "  <- this record" if m.ref == own else ""
    return f"      {m.ref}  {printable(m.label or '-')}{confidence}{facts}{this}"


# ----------------------------------------------------------------------------- JSON output


def to_json(query: Query, namespace: str, found: list[Explanation]) -> dict:
    return {"query": query.text, "namespace": namespace,
            "found": any(x.status != UNKNOWN for x in found),
            "records": [record_json(x) for x in found]}


def record_json(x: Explanation) -> dict:
    topic, partition, offset = ref_key(x.ref)
    return {"ref": x.ref, "topic": topic, "partition": partition, "offset": offset,
            "status": x.status, "archive": _raw_json(x.raw), "fate": _fate_json(x.fate),
            "decision": _decision_json(x), "outcome_rule": x.outcome_rule, "rule": x.rule,
            "watermark": x.watermark,
            "first_delivery": None if x.first_delivery is None else _detail_json(x.first_delivery),
            "notes": x.notes} | _others_json(x)


def _others_json(x: Explanation) -> dict:
    """The record's other relations and its decisions there: keys only a config with
    relations has, so that a config without them gives the JSON it always gave."""
    if x.others is None:
        return {}
    return {"other_relations": x.other_relations,
            "other_decisions": [_decision_dict(o.decision, o.members, o.candidates)
                                | {"rule": o.rule, "sums": _sums_json(o.sums)}
                                for o in x.others]}


def _sums_json(s: Sums | None) -> dict | None:
    return None if s is None else dataclasses.asdict(s)


def _b64(data: bytes | None) -> str | None:
    return None if data is None else base64.b64encode(data).decode()


def _raw_json(raw: Raw | None) -> dict | None:
    if raw is None:
        return None
    return {"key_base64": _b64(raw.key), "timestamp": iso(raw.timestamp_us),
            "value_length": None if raw.value is None else len(raw.value),
            "value_base64": _b64(raw.value)}


def _fate_json(fate: dict | None) -> dict | None:
    if fate is None:
        return None
    return {"outcome": fate["outcome"], "decision_id": fate["decision_id"],
            "source": fate["source"], "event_id": fate["event_id"],
            "window_end": iso(fate["window_end"])}


def _decision_json(x: Explanation) -> dict | None:
    if x.decision is None:
        return None
    out = _decision_dict(x.decision, x.members, x.candidates)
    return out if x.others is None else out | {"sums": _sums_json(x.sums)}


def _decision_dict(d: dict, members: list[Detail], candidates: list[Detail]) -> dict:
    keep = ("decision_id", "kind", "tier", "exception_kind", "account", "currency",
            "amount_minor", "confidence", "reason", "raw_base64", "relation", "fee_minor")
    return {k: d[k] for k in keep} | {
        "missing_sources": list(d["missing_sources"]),
        "window_start": iso(d["window_start"]), "window_end": iso(d["window_end"]),
        "members": [_detail_json(m) for m in members],
        "candidates": [_detail_json(c) for c in candidates]}


def _detail_json(m: Detail) -> dict:
    return {"ref": m.ref, "label": m.label, "confidence": m.confidence,
            "amount_minor": m.amount_minor, "currency": m.currency,
            "event_time": iso(m.time_us), "archived": m.archived}


# ----------------------------------------------------------------------------- reading

# The stores (sinks.stores, cheap to import: pyarrow and psycopg load where used) give
# fates and decisions by key as canonical dicts, and the raw archive's records.


class ArchiveReader:
    """The raw archive of one namespace, its records as `Raw`s by ref."""

    def __init__(self, namespace_root: Path):
        self.archive = Archive(namespace_root)
        self.root = self.archive.root

    @property
    def exists(self) -> bool:
        return self.archive.exists

    def rows(self, refs) -> dict[str, Raw]:
        return _raws(self.archive.at(ref_key(r) for r in refs))

    def with_event_id(self, topic: str, event_id: str) -> dict[str, Raw]:
        """Records of `topic` whose value contains the event id as JSON would write it."""
        import msgspec
        return _raws(self.archive.containing(topic, msgspec.json.encode(event_id).decode()[1:-1]))

    def span(self, topic: str, partition: int) -> tuple[int, int, int] | None:
        return self.archive.span(topic, partition)


def _raws(rows: list[dict]) -> dict[str, Raw]:
    out: dict[str, Raw] = {}
    for row in rows:  # canonical: the timestamp in UTC microseconds
        raw = Raw(row["topic"], row["partition"], row["offset"], row["key"], row["timestamp"],
                  row["value"])
        out.setdefault(raw.ref, raw)  # a correct archive holds each position once
    return out


# ----------------------------------------------------------------------------- looking up


@dataclass
class Sources:
    store: object  # PgStore or ParquetStore
    archive: ArchiveReader
    config: MatchConfig
    replay: bool = False


def lookup(query: Query, src: Sources) -> list[Explanation]:
    """Explanations for the query: one for a ref (maybe UNKNOWN), one per record for a label."""
    from state.contract import Decoder
    decoder = Decoder(src.config)
    if query.ref is not None:
        fates = _by_ref(src.store.fates_at(*query.ref))
        raws = src.archive.rows([":".join(map(str, query.ref))])
        refs = [":".join(map(str, query.ref))]
    else:
        fates = _by_ref(src.store.fates_of(*query.label))
        raws = _label_records(query.label, src, decoder)
        refs = sorted(fates.keys() | raws.keys(), key=ref_key)
        raws |= src.archive.rows([r for r in refs if r not in raws])
    decisions = {r: _decision(src.store, fates.get(r)) for r in refs}
    own = _decoded({r: raws[r] for r in refs if r in raws}, decoder)
    others = {r: _others(src, r, own.get(r), fates.get(r), decisions[r]) for r in refs} \
        if src.config.relations else {}  # a config without relations: no other decisions
    listed = [*decisions.values(), *(d for found, _ in others.values() for d in found)]
    wanted = _detail_refs(listed, refs) - own.keys()
    records = own | _decoded(src.archive.rows(wanted), decoder)
    found = [explain(r, raws.get(r), fates.get(r), decisions[r], records, src.config, src.replay,
                     *others.get(r, (None, ()))) for r in refs]
    for x in found:
        if x.status == UNKNOWN:
            x.notes.append(_span_note(src.archive, x.ref))
        if not src.store.exists:
            x.notes.append(f"the namespace has no fates in {src.store.where}: is --pg or "
                           f"--data-dir the one the flow wrote to?")
    return found


def _by_ref(fates: list[dict]) -> dict[str, dict]:
    return {fate_ref(f): f for f in sorted(fates, key=lambda f: ref_key(fate_ref(f)))}


def _label_records(label: tuple[str, str], src: Sources, decoder) -> dict[str, Raw]:
    """Archived records that decode as an event with this source:event_id (pending ones too)."""
    source, event_id = label
    topic = src.config.topics.get(source)
    if topic is None:
        return {}
    hits = src.archive.with_event_id(topic, event_id)
    decoded = _decoded(hits, decoder)
    return {r: raw for r, raw in hits.items()
            if isinstance(decoded[r], Event) and decoded[r].label == f"{source}:{event_id}"}


def _decision(store, fate: dict | None) -> dict | None:
    if fate is None or fate["decision_id"] is None:
        return None
    return store.decision(fate["decision_id"], fate["window_end"])


def _others(src: Sources, ref: str, record: object, fate: dict | None,
            decision: dict | None) -> tuple[list[dict], tuple[str, ...]]:
    """The record's decisions in its other relations (not its primary one, which its fate
    names), and those relations' names.

    Its relations are the ones state.relations.route gives its decoded event. A decision
    listing it ends its window at most the longest span of the config's relations after
    the record's event time (its anchor is the decision's earliest member, its window that
    span at most), so only window_ends from a day before the event time to a day past that
    span are looked at. A record not in the archive is placed by its fate instead: every
    other relation reading its source, around its fate's window_end, that span either way
    (and only the relations found listing it are named).
    """
    relations = src.config.relation_list()
    longest = max(span(r) for r in relations)
    if isinstance(record, Event):
        kind = rel.record_kind(record.payout, record.amount_minor, record.fee_minor)
        route = rel.route(relations, record.source, kind, record.batch_id is not None)
        names = tuple(relations[i].name for i in route[1:])
        since, until = record.time_us - DAY_US, record.time_us + longest + DAY_US
    elif fate is not None and fate["window_end"] is not None and fate["source"] is not None:
        primary = None if decision is None else decision["relation"]
        names = tuple(r.name for r in relations
                      if fate["source"] in r.reads() and r.name != primary)
        end = fate["window_end"]
        since, until = end - longest - DAY_US, end + longest + DAY_US
    else:
        return [], ()
    if not names:
        return [], ()
    own_id = None if fate is None else fate["decision_id"]
    found = [d for d in src.store.decisions_with_member(ref, since, until)
             if d["relation"] in names and d["decision_id"] != own_id]
    found.sort(key=lambda d: (names.index(d["relation"]), d["window_end"], d["decision_id"]))
    if not isinstance(record, Event):  # its relations guessed: name only those that list it
        names = tuple(n for n in names if any(d["relation"] == n for d in found))
    return found, names


def _detail_refs(decisions, refs: list[str]) -> set[str]:
    wanted = set(refs)
    for d in decisions:
        if d is not None:
            wanted |= set(d["member_refs"]) | {ref for _, ref, _ in d["candidates"]}
    return wanted


def _decoded(raws: dict[str, Raw], decoder) -> dict[str, object]:
    return {r: decoder.decode(raw.value, raw.topic, raw.partition, raw.offset)
            for r, raw in raws.items()}


def _span_note(archive: ArchiveReader, ref: str) -> str:
    topic, partition, _ = ref_key(ref)
    if not archive.exists:
        return f"there is no raw archive under {archive.root}"
    span = archive.span(topic, partition)
    if span is None:
        return f"the archive under {archive.root} holds no record of {topic}:{partition}"
    return (f"the archive holds offsets {span[0]}..{span[1]} of {topic}:{partition} "
            f"({span[2]:,} records)")


def open_store(store: str, data_dir: Path, namespace: str, dsn: str | None):
    """The fates and decisions of `namespace`: PostgreSQL at `dsn`, or Parquet under `data_dir`."""
    if store == "parquet":
        return ParquetStore(data_dir, namespace)
    return PgStore(dsn, namespace)


def explain_query(query: Query, namespace: str, data_dir: Path, store: str, dsn: str | None,
                  config: MatchConfig) -> tuple[str, list[Explanation]]:
    """`tally explain` once its options are resolved: where it read, and what it found."""
    root = data_dir / namespace
    opened = open_store(store, data_dir, namespace, dsn)
    try:
        archive = ArchiveReader(root)
        if not opened.exists and not archive.exists:
            raise UserError(f"namespace {namespace} does not exist: nothing in "
                            f"{opened.where}, and no raw archive under {archive.root}")
        found = lookup(query, Sources(opened, archive, config, (root / "replay.json").exists()))
    finally:
        opened.close()
    return opened.where, found
