"""Matching configuration: plain, immutable, and parsed from TOML data.

Reading the file is the caller's job (state/ does no I/O); `from_toml` takes the
already-parsed dict so the same rules apply to files, tests and defaults.
"""

from __future__ import annotations

import re
from decimal import Decimal

import msgspec

from state import mapping as mapped
from state import relations as rel
from state.mapping import MAX_ACCOUNT, Mapping
from state.relations import Relation
from state.units import PPM, US_PER_SECOND, ConfigError, parse_duration, parse_fraction_ppm

__all__ = ["ConfigError", "MatchConfig", "US_PER_SECOND", "from_toml", "parse_duration",
           "parse_fraction_ppm", "to_toml", "validate"]

_TOPIC = re.compile(r"[A-Za-z0-9._-]{1,249}\Z")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")  # not allowed raw in a TOML string
DEFAULT_TOPICS = {"bank": "recon.bank", "processor": "recon.processor", "ledger": "recon.ledger"}


class MatchConfig(msgspec.Struct, frozen=True, kw_only=True):
    """Every number that shapes a decision. Times are microseconds."""

    # source name -> topic name; the order of sources is the canonical one
    topics: dict[str, str] = msgspec.field(default_factory=lambda: dict(DEFAULT_TOPICS))
    expected_sources: tuple[str, ...] = ("bank", "processor", "ledger")
    match_window_us: int = 30 * 60 * US_PER_SECOND
    allowed_lateness_us: int = 2 * 60 * US_PER_SECOND
    redelivery_horizon_us: int = 60 * 60 * US_PER_SECOND
    # a record further ahead of its partition's progress waits for the partition's next
    # record to follow it, or becomes a clock_skew exception (state/stream_time.py)
    max_clock_skew_us: int = 60 * 60 * US_PER_SECOND
    amount_tolerance_ppm: int = 20_000  # 2% of the larger amount
    min_year: int = 2000
    max_year: int = 2100
    # Tally's own heartbeats (flows/runtime/pacemaker.py): a live run writes one into a caught-up
    # partition quiet for heartbeat_idle_us, declaring now less the source's delay
    heartbeat_idle_us: int = 5 * US_PER_SECOND
    max_source_delay_us: int = 2 * 60 * US_PER_SECOND  # how late a source may still deliver
    source_delays_us: dict[str, int] = msgspec.field(default_factory=dict)  # per source
    heartbeats_write: bool = True
    silent_sources: tuple[str, ...] = ()  # sources Tally must not write heartbeats into
    # [relations.NAME] in the file's order (state/relations.py); empty: one implicit
    # relation made of expected_sources and match_window, deciding as before relations
    relations: tuple[Relation, ...] = ()
    # [mappings.SOURCE]: sources whose records come in their producer's JSON shape
    mappings: dict[str, Mapping] = msgspec.field(default_factory=dict)
    # [accounts]: what statements carry (IBAN, account number, merchant code) -> Tally's
    # account; read by `tally ingest`, never by the decoder, so no decision depends on it
    accounts: dict[str, str] = msgspec.field(default_factory=dict)

    def source_of_topic(self) -> dict[str, str]:
        return {topic: source for source, topic in self.topics.items()}

    def source_delay_us(self, source: str) -> int:
        return self.source_delays_us.get(source, self.max_source_delay_us)

    def writes_heartbeats(self, source: str) -> bool:
        return self.heartbeats_write and source not in self.silent_sources

    def deciding(self) -> "MatchConfig":
        """This config less what no decision depends on: what a namespace fixes. [accounts]
        says what `tally ingest` publishes, [heartbeats] what a live run writes into the log;
        the engine reads both only as records of the log."""
        defaults = MatchConfig()
        return msgspec.structs.replace(
            self, accounts={}, heartbeat_idle_us=defaults.heartbeat_idle_us,
            max_source_delay_us=defaults.max_source_delay_us, source_delays_us={},
            heartbeats_write=True, silent_sources=())

    def relation_list(self) -> tuple[Relation, ...]:
        """The relations that decide, the tolerance of each filled in."""
        if not self.relations:
            return (Relation(name=None, rule=rel.MATCH, sources=tuple(self.topics),
                             expected=self.expected_sources, window_us=self.match_window_us,
                             tolerance_ppm=self.amount_tolerance_ppm),)
        return tuple(r if r.tolerance_ppm is not None
                     else msgspec.structs.replace(r, tolerance_ppm=self.amount_tolerance_ppm)
                     for r in self.relations)


def from_toml(data: dict) -> MatchConfig:
    """Build a MatchConfig from parsed TOML ([sources] and [matching] tables)."""
    unknown = set(data) - {"sources", "matching", "contract", "heartbeats", "relations",
                           "mappings", "accounts"}
    if unknown:
        raise ConfigError(f"unknown config table(s): {', '.join(sorted(unknown))}")
    kwargs: dict = {}
    if "sources" in data:
        kwargs["topics"] = {str(k): str(v) for k, v in data["sources"].items()}
    matching = dict(data.get("matching", {}))
    durations = {"match_window": "match_window_us", "allowed_lateness": "allowed_lateness_us",
                 "redelivery_horizon": "redelivery_horizon_us",
                 "max_clock_skew": "max_clock_skew_us"}
    for key, field in durations.items():
        if key in matching:
            kwargs[field] = parse_duration(matching.pop(key), f"matching.{key}")
    if "amount_tolerance" in matching:
        kwargs["amount_tolerance_ppm"] = parse_fraction_ppm(
            matching.pop("amount_tolerance"), "matching.amount_tolerance")
    if "expected_sources" in matching:
        kwargs["expected_sources"] = tuple(matching.pop("expected_sources"))
    if matching:
        raise ConfigError(f"unknown matching key(s): {', '.join(sorted(matching))}")
    if "relations" in data:
        given = [k for k in ("expected_sources", "match_window") if k in data.get("matching", {})]
        if given:
            raise ConfigError(f"matching.{given[0]} is for a config without relations; "
                              f"with [relations], each relation names its own sources and window")
        kwargs["relations"] = rel.parse(dict(data["relations"]))
        if not kwargs["relations"]:
            raise ConfigError("[relations] is empty: declare at least one relation, or leave it out")
    contract = dict(data.get("contract", {}))
    for key in ("min_year", "max_year"):
        if key in contract:
            kwargs[key] = int(contract.pop(key))
    if contract:
        raise ConfigError(f"unknown contract key(s): {', '.join(sorted(contract))}")
    kwargs.update(_heartbeats(dict(data.get("heartbeats", {}))))
    if "mappings" in data:
        kwargs["mappings"] = mapped.parse(dict(data["mappings"]),
                                          kwargs.get("topics", DEFAULT_TOPICS))
    if "accounts" in data:
        kwargs["accounts"] = _accounts(data["accounts"])
    return validate(MatchConfig(**kwargs))


def _accounts(table: object) -> dict[str, str]:
    """[accounts] "what a statement carries" = "Tally's account", one line each."""
    if not isinstance(table, dict):
        raise ConfigError('[accounts]: write it as a table of "IBAN or account number" = "account"')
    for carried, account in table.items():
        if not carried:
            raise ConfigError("[accounts]: a key is empty; write the IBAN, account number or code")
        if not isinstance(account, str):
            raise ConfigError(f"[accounts] {carried}: {account!r} is not a string")
        if not 1 <= len(account) <= MAX_ACCOUNT:
            raise ConfigError(f"[accounts] {carried}: the account must be 1 to {MAX_ACCOUNT} "
                              f"characters, got {len(account)}")
    return dict(table)


def _heartbeats(table: dict) -> dict:
    """[heartbeats] idle, max_source_delay, write, and [heartbeats.sources.NAME] overrides."""
    kwargs: dict = {}
    if "idle" in table:
        kwargs["heartbeat_idle_us"] = parse_duration(table.pop("idle"), "heartbeats.idle")
    if "max_source_delay" in table:
        kwargs["max_source_delay_us"] = parse_duration(table.pop("max_source_delay"),
                                                       "heartbeats.max_source_delay")
    if "write" in table:
        kwargs["heartbeats_write"] = _boolean(table.pop("write"), "heartbeats.write")
    delays, silent = {}, []
    for source, overrides in dict(table.pop("sources", {})).items():
        overrides, name = dict(overrides), f"heartbeats.sources.{source}"
        if "max_source_delay" in overrides:
            delays[source] = parse_duration(overrides.pop("max_source_delay"),
                                            f"{name}.max_source_delay")
        if "write" in overrides and not _boolean(overrides.pop("write"), f"{name}.write"):
            silent.append(source)
        if overrides:
            raise ConfigError(f"unknown {name} key(s): {', '.join(sorted(overrides))}")
    if table:
        raise ConfigError(f"unknown heartbeats key(s): {', '.join(sorted(table))}")
    if delays:
        kwargs["source_delays_us"] = delays
    if silent:
        kwargs["silent_sources"] = tuple(sorted(silent))
    return kwargs


def _boolean(value: object, name: str) -> bool:
    if not isinstance(value, bool):
        raise ConfigError(f"{name}: {value!r} is not true or false")
    return value


def validate(config: MatchConfig) -> MatchConfig:
    if not config.relations:
        _check_expected(config)
    if len(set(config.topics.values())) != len(config.topics):
        raise ConfigError("[sources]: two sources share one topic")
    for source, topic in config.topics.items():
        if not _TOPIC.match(topic) or topic in (".", ".."):
            raise ConfigError(f"[sources] {source} = {topic!r}: Kafka topic names are 1 to 249 "
                              f"of a-z, A-Z, 0-9, '.', '_' and '-', and not '.' or '..'")
    if config.match_window_us <= 0:
        raise ConfigError("matching.match_window must be positive")
    if config.max_clock_skew_us <= 0:
        raise ConfigError("matching.max_clock_skew must be positive")
    if not config.min_year < config.max_year:
        raise ConfigError("contract.min_year must be below contract.max_year")
    if config.heartbeat_idle_us <= 0:
        raise ConfigError("heartbeats.idle must be positive")
    strangers = sorted((set(config.source_delays_us) | set(config.silent_sources)) - set(config.topics))
    if strangers:
        raise ConfigError(f"[heartbeats.sources] names source(s) not in [sources]: {', '.join(strangers)}")
    if config.relations:
        rel.validate(config.relations, config.topics)
    unmapped = sorted(set(config.mappings) - set(config.topics))
    if unmapped:
        raise ConfigError(f"[mappings.{unmapped[0]}]: {unmapped[0]!r} is not a source in [sources]")
    return config


def _check_expected(config: MatchConfig) -> None:
    if not config.expected_sources:
        raise ConfigError("matching.expected_sources must name at least one source")
    missing = [s for s in config.expected_sources if s not in config.topics]
    if missing:
        raise ConfigError(f"expected source(s) without a topic in [sources]: {', '.join(missing)}")


def to_toml(config: MatchConfig) -> str:
    """The TOML text that `from_toml` reads back as exactly this config."""
    def quote(text: str) -> str:  # control characters too: an [accounts] key may hold any
        text = text.replace("\\", "\\\\").replace('"', '\\"')
        return '"' + _CONTROL.sub(lambda c: f"\\u{ord(c.group()):04x}", text) + '"'

    tolerance = Decimal(config.amount_tolerance_ppm) / PPM
    lines = ["[sources]"]
    lines += [f"{quote(source)} = {quote(topic)}" for source, topic in config.topics.items()]
    lines += ["", "[matching]"]
    if not config.relations:
        lines += [f"expected_sources = [{', '.join(quote(s) for s in config.expected_sources)}]",
                  f'match_window = "{config.match_window_us}us"']
    lines += [f'allowed_lateness = "{config.allowed_lateness_us}us"',
              f'redelivery_horizon = "{config.redelivery_horizon_us}us"',
              f'max_clock_skew = "{config.max_clock_skew_us}us"',
              f'amount_tolerance = "{tolerance}"',
              "", "[contract]", f"min_year = {config.min_year}", f"max_year = {config.max_year}",
              "", "[heartbeats]", f'idle = "{config.heartbeat_idle_us}us"',
              f'max_source_delay = "{config.max_source_delay_us}us"',
              f"write = {'true' if config.heartbeats_write else 'false'}"]
    for source in config.topics:
        overrides = []
        if source in config.source_delays_us:
            overrides.append(f'max_source_delay = "{config.source_delays_us[source]}us"')
        if source in config.silent_sources:
            overrides.append("write = false")
        if overrides:
            lines += ["", f"[heartbeats.sources.{quote(source)}]", *overrides]
    for relation in config.relations:
        lines += ["", f"[relations.{relation.name}]", *rel.to_toml(relation, quote)]
    for source, mapping in config.mappings.items():
        lines += ["", *mapped.to_toml(source, mapping, quote)]
    if config.accounts:
        lines += ["", "[accounts]", *(f"{quote(k)} = {quote(v)}" for k, v in config.accounts.items())]
    return "\n".join(lines) + "\n"
