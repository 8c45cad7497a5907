"""Relations: which records a configuration matches with which, and by what rule.

A relation names its sources and one of three rules (docs/settlement.md):
- `match`: one record per expected source, linked by idempotency key or by exact amount
  inside a window, with the tolerance sending near amounts to review (state/matching.py);
- `batch`: many items to one payout by `batch_id`, settled when the items' nets add up to
  the payout exactly (state/batches.py);
- `payout`: one payout to one bank credit of the same amount, booked within a lag after
  the payout, the credit's reference naming the batch making it tier 1 (state/payouts.py).

A record may take part in two relations (an acquirer's item is both a payment's
counterpart and part of its batch). Its fate is its decision in the first of them, its
primary relation; the others list it among their decisions' members without a fate of
their own. A configuration without relations has one implicit `match` relation, named
None, over every source: it decides exactly as Tally did before relations existed.
"""

from __future__ import annotations

import re
from decimal import Decimal

import msgspec

from state.units import PPM, ConfigError, parse_duration, parse_fraction_ppm

MATCH, BATCH, PAYOUT = "match", "batch", "payout"
RULES = (MATCH, BATCH, PAYOUT)
_NAME = re.compile(r"[a-z][a-z0-9_]{0,31}\Z")
_KEYS = {MATCH: {"sources", "window", "tolerance"},
         BATCH: {"items", "payouts", "window"},
         PAYOUT: {"payouts", "credits", "lag", "tolerance"}}

# what a record is, for routing: a payout, a fee line (no gross, a fee: it belongs to its
# batch only) or a transaction
PAYOUT_RECORD, FEE_LINE, TRANSACTION = "payout", "fee line", "transaction"


class Relation(msgspec.Struct, frozen=True, kw_only=True):
    """One relation of the config. Times are microseconds, the tolerance parts per million."""

    name: str | None  # None: the implicit relation of a config without relations
    rule: str
    sources: tuple[str, ...] = ()  # match: the records it takes
    expected: tuple[str, ...] = ()  # match: the sources a complete group needs
    items: tuple[str, ...] = ()  # batch
    payouts: str | None = None  # batch, payout
    credits: str | None = None  # payout
    window_us: int = 0  # match, batch
    lag_min_us: int = 0  # payout
    lag_max_us: int = 0  # payout
    tolerance_ppm: int | None = None  # match, payout: None is [matching] amount_tolerance

    def reads(self) -> tuple[str, ...]:
        """Every source whose partitions this relation's watermark follows."""
        named = [*self.sources, *self.items, self.payouts, self.credits]
        return tuple(dict.fromkeys(s for s in named if s is not None))


def parse(table: dict) -> tuple[Relation, ...]:
    """[relations.NAME] tables, in the file's order."""
    for name, body in table.items():
        if not isinstance(body, dict):
            raise ConfigError(f"relations.{name}: write it as a table, [relations.{name}]")
    return tuple(_relation(str(name), dict(body)) for name, body in table.items())


def _relation(name: str, body: dict) -> Relation:
    where = f"relations.{name}"
    if not _NAME.match(name):
        raise ConfigError(f"[{where}]: a relation's name is 1 to 32 of a-z, 0-9 and '_', "
                          f"starting with a letter")
    rule = body.pop("rule", None)
    if rule not in RULES:
        raise ConfigError(f"{where}.rule: {rule!r} is not one of {', '.join(RULES)}")
    unknown = set(body) - _KEYS[rule]
    if unknown:
        raise ConfigError(f"unknown {where} key(s) for rule {rule!r}: {', '.join(sorted(unknown))}")
    fields: dict = {"name": name, "rule": rule}
    if "tolerance" in body:
        fields["tolerance_ppm"] = parse_fraction_ppm(body.pop("tolerance"), f"{where}.tolerance")
    if rule == MATCH:
        sources = _names(body.get("sources"), f"{where}.sources")
        fields.update(sources=sources, expected=sources,
                      window_us=_positive(body.get("window"), f"{where}.window"))
    elif rule == BATCH:
        fields.update(items=_names(body.get("items"), f"{where}.items"),
                      payouts=_name(body.get("payouts"), f"{where}.payouts"),
                      window_us=_positive(body.get("window"), f"{where}.window"))
    else:
        lag = body.get("lag")
        if not (isinstance(lag, list) and len(lag) == 2):
            raise ConfigError(f"{where}.lag: {lag!r} is not a pair such as [\"0d\", \"5d\"]")
        low, high = (parse_duration(v, f"{where}.lag") for v in lag)
        if low > high:
            raise ConfigError(f"{where}.lag: its first duration is above its second")
        fields.update(payouts=_name(body.get("payouts"), f"{where}.payouts"),
                      credits=_name(body.get("credits"), f"{where}.credits"),
                      lag_min_us=low, lag_max_us=high)
        if fields["payouts"] == fields["credits"]:
            raise ConfigError(f"{where}: payouts and credits must come from two sources")
    return Relation(**fields)


def to_toml(relation: Relation, quote) -> list[str]:
    """The lines of one [relations.NAME] table that `parse` reads back as `relation`."""
    def names(values):
        return "[" + ", ".join(quote(v) for v in values) + "]"

    lines = [f'rule = "{relation.rule}"']
    if relation.rule == MATCH:
        lines += [f"sources = {names(relation.sources)}", f'window = "{relation.window_us}us"']
    elif relation.rule == BATCH:
        lines += [f"items = {names(relation.items)}", f"payouts = {quote(relation.payouts)}",
                  f'window = "{relation.window_us}us"']
    else:
        lines += [f"payouts = {quote(relation.payouts)}", f"credits = {quote(relation.credits)}",
                  f'lag = ["{relation.lag_min_us}us", "{relation.lag_max_us}us"]']
    if relation.tolerance_ppm is not None:
        lines.append(f'tolerance = "{Decimal(relation.tolerance_ppm) / PPM}"')
    return lines


def _names(value: object, where: str) -> tuple[str, ...]:
    if not (isinstance(value, list) and value and all(isinstance(v, str) for v in value)):
        raise ConfigError(f"{where}: {value!r} is not a list of source names")
    if len(set(value)) != len(value):
        raise ConfigError(f"{where}: names a source twice")
    return tuple(value)


def _name(value: object, where: str) -> str:
    if not isinstance(value, str):
        raise ConfigError(f"{where}: {value!r} is not a source name")
    return value


def _positive(value: object, where: str) -> int:
    if value is None:
        raise ConfigError(f"{where} is missing")
    duration = parse_duration(value, where)
    if duration <= 0:
        raise ConfigError(f"{where} must be positive")
    return duration


def validate(relations: tuple[Relation, ...], sources: dict[str, str]) -> None:
    """Each named source exists, and no record can be claimed by two relations alike."""
    for relation in relations:
        strangers = [s for s in relation.reads() if s not in sources]
        if strangers:
            raise ConfigError(f"relations.{relation.name} names source(s) not in [sources]: "
                              f"{', '.join(strangers)}")
    roles: dict[tuple[str, str], str] = {}
    for relation in relations:
        for role, source in _roles(relation):
            other = roles.setdefault((role, source), relation.name)
            if other != relation.name:
                raise ConfigError(f"relations.{other} and relations.{relation.name} both take "
                                  f"the {role} of {source}: a record can be one relation's only")
    for source in sources:
        if ("matched transactions", source) in roles and ("credits", source) in roles:
            raise ConfigError(f"relations.{roles[('matched transactions', source)]} matches the "
                              f"transactions of {source}, which relations."
                              f"{roles[('credits', source)]} takes as credits: choose one")
    idle = [s for s in sources if not any(source == s for _, source in roles)]
    if idle:
        raise ConfigError(f"source(s) in [sources] that no relation reads: {', '.join(idle)}")


def _roles(relation: Relation) -> list[tuple[str, str]]:
    if relation.rule == MATCH:
        return [("matched transactions", s) for s in relation.sources]
    if relation.rule == BATCH:
        return [("batch items", s) for s in relation.items] + [("payouts", relation.payouts)]
    return [("payouts to the bank", relation.payouts), ("credits", relation.credits)]


def record_kind(payout: bool, amount_minor: int, fee_minor: int | None) -> str:
    if payout:
        return PAYOUT_RECORD
    if amount_minor == 0 and fee_minor is not None:
        return FEE_LINE
    return TRANSACTION


def joined(relations: tuple[Relation, ...]) -> set[int]:
    """The indexes of the relations that some records join as a secondary relation; every
    record of the others is its own there."""
    sources = {s for r in relations for s in r.reads()}
    return {i for source in sources for kind in (PAYOUT_RECORD, FEE_LINE, TRANSACTION)
            for batched in (False, True) for i in route(relations, source, kind, batched)[1:]}


def route(relations: tuple[Relation, ...], source: str, kind: str, batched: bool) -> list[int]:
    """The indexes of the relations a record takes part in, its primary relation first.

    A transaction is matched first, then settled in its batch; a payout is settled in its
    batch first, then matched to the bank."""
    first, then = [], []
    for i, r in enumerate(relations):
        if kind == PAYOUT_RECORD:
            if r.rule == BATCH and r.payouts == source:
                first.append(i)
            elif r.rule == PAYOUT and r.payouts == source:
                then.append(i)
        elif r.rule == MATCH and source in r.sources and kind == TRANSACTION:
            first.append(i)
        elif r.rule == BATCH and source in r.items and batched:
            then.append(i)
        elif r.rule == PAYOUT and r.credits == source and kind == TRANSACTION:
            first.append(i)
    return first + then
