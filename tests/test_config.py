"""The TOML config: every MatchConfig survives a trip through to_toml and from_toml."""

from __future__ import annotations

import tomllib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from state import mapping
from state.config import ConfigError, MatchConfig, from_toml, to_toml
from state.mapping import Mapping

names = st.text(st.characters(codec="utf-8", exclude_categories=("Cs", "Cc")), min_size=1,
                max_size=12)


pointers = st.lists(st.text(st.characters(codec="utf-8", exclude_categories=("Cs", "Cc")), max_size=6),
                    min_size=1, max_size=4).map(
    lambda keys: "".join("/" + k.replace("~", "~0").replace("/", "~1") for k in keys))


@st.composite
def mappings(draw) -> Mapping:
    constant = {"type": st.sampled_from(["transaction", "refund", "payout"]),
                "account": st.text(min_size=1, max_size=64),
                "currency": st.sampled_from(["EUR", "USD", "JPY", "KWD"])}
    constants = {f: draw(constant[f]) for f in mapping.CONSTANT_FIELDS if draw(st.booleans())}
    if "type" not in constants and draw(st.booleans()):
        types = draw(st.dictionaries(names, st.sampled_from(mapping.KINDS), min_size=1, max_size=4))
    else:
        types = {}
    pathed = [f for f in mapping.FIELDS if f not in constants and
              (f in mapping.REQUIRED or (f == "type" and types) or (f != "type" and draw(st.booleans())))]
    return Mapping(paths={f: draw(pointers) for f in pathed}, constants=constants, types=types,
                   amount_form=draw(st.sampled_from(mapping.AMOUNT_FORMS)),
                   time_form=draw(st.sampled_from(mapping.TIME_FORMS)),
                   upper_case_currency=draw(st.booleans()))


@st.composite
def configs(draw) -> MatchConfig:
    sources = draw(st.lists(names, min_size=1, max_size=4, unique=True))
    topic_names = st.from_regex(r"[A-Za-z0-9._-]{1,20}", fullmatch=True).filter(
        lambda t: t not in (".", ".."))  # as Kafka allows
    topics = draw(st.lists(topic_names, min_size=len(sources), max_size=len(sources), unique=True))
    expected = draw(st.lists(st.sampled_from(sources), min_size=1, unique=True))
    min_year = draw(st.integers(1, 5000))
    delays = draw(st.dictionaries(st.sampled_from(sources), st.integers(0, 10**12)))
    silent = draw(st.lists(st.sampled_from(sources), unique=True))
    return MatchConfig(
        heartbeat_idle_us=draw(st.integers(1, 10**9)), max_source_delay_us=draw(st.integers(0, 10**12)),
        source_delays_us=delays, heartbeats_write=draw(st.booleans()),
        silent_sources=tuple(sorted(silent)),
        topics=dict(zip(sources, topics)), expected_sources=tuple(expected),
        match_window_us=draw(st.integers(1, 10**12)),
        allowed_lateness_us=draw(st.integers(0, 10**12)),
        redelivery_horizon_us=draw(st.integers(0, 10**12)),
        amount_tolerance_ppm=draw(st.integers(0, 999_999)),
        min_year=min_year, max_year=draw(st.integers(min_year + 1, 9999)),
        mappings=draw(st.dictionaries(st.sampled_from(sources), mappings(), max_size=2)),
        accounts=draw(st.dictionaries(st.text(min_size=1), st.text(min_size=1, max_size=64), max_size=3)))


@given(configs())
def test_to_toml_reads_back_as_the_same_config(config):
    assert from_toml(tomllib.loads(to_toml(config))) == config


def test_unknown_keys_are_refused_not_ignored():
    with pytest.raises(ConfigError, match="unknown matching key"):
        from_toml({"matching": {"match_windw": "30m"}})


def test_negative_durations_and_an_empty_year_range_are_refused():
    with pytest.raises(ConfigError, match="allowed_lateness: -60 must not be negative"):
        from_toml({"matching": {"allowed_lateness": -60}})
    with pytest.raises(ConfigError, match="min_year must be below"):
        from_toml({"contract": {"min_year": 2030, "max_year": 2030}})


def test_heartbeat_settings_are_checked_in_one_line():
    with pytest.raises(ConfigError, match="heartbeats.idle must be positive"):
        from_toml({"heartbeats": {"idle": "0s"}})
    with pytest.raises(ConfigError, match=r"heartbeats.sources.bank.write: 'no' is not true or false"):
        from_toml({"heartbeats": {"sources": {"bank": {"write": "no"}}}})
    with pytest.raises(ConfigError, match=r"names source\(s\) not in \[sources\]: bnak"):
        from_toml({"heartbeats": {"sources": {"bnak": {"max_source_delay": "1d"}}}})
    with pytest.raises(ConfigError, match="unknown heartbeats key"):
        from_toml({"heartbeats": {"idel": "5s"}})
    config = from_toml({"heartbeats": {"max_source_delay": "2m",
                                       "sources": {"bank": {"max_source_delay": "1d", "write": False}}}})
    assert config.source_delay_us("bank") == 86_400 * 10**6 and not config.writes_heartbeats("bank")
    assert config.source_delay_us("ledger") == 120 * 10**6 and config.writes_heartbeats("ledger")


def test_topic_names_kafka_forbids_are_refused_in_one_line():
    for bad in ("recon bank", "recon/bank", "", ".", "..", "x" * 250, "bänk"):
        with pytest.raises(ConfigError, match="Kafka topic names are 1 to 249"):
            from_toml({"sources": {"bank": bad, "processor": "p", "ledger": "l"}})
    assert from_toml({"sources": {"bank": "a.b_c-D9", "processor": "p", "ledger": "l"}})


WEBHOOK = {"amount_form": "minor_units", "time_form": "epoch_seconds",
           "paths": {"event_id": "/id", "amount": "/data/amount", "currency": "/data/currency",
                     "event_time": "/created", "type": "/type"},
           "constants": {"account": "stripe-main"}, "types": {"charge.succeeded": "transaction"}}


def refused(mapping: dict, **tables) -> str:
    with pytest.raises(ConfigError) as error:
        from_toml({"mappings": {"processor": mapping}, **tables})
    assert "\n" not in str(error.value)
    return str(error.value)


def test_a_mapping_is_refused_in_one_line_naming_its_table_and_key():
    assert from_toml({"mappings": {"processor": WEBHOOK}}).mappings["processor"].paths["event_id"] == "/id"
    assert refused({**WEBHOOK, "amount": "/a"}) == "unknown mappings.processor key(s): amount"
    assert refused({**WEBHOOK, "paths": {**WEBHOOK["paths"], "amout": "/a"}}).startswith(
        "unknown mappings.processor.paths key(s): amout; known: type, event_id")
    paths = {k: v for k, v in WEBHOOK["paths"].items() if k != "amount"}
    assert refused({**WEBHOOK, "paths": paths}) == ("mappings.processor: amount has neither a path in "
                                                     "[mappings.processor.paths] nor a value in "
                                                     "[mappings.processor.constants]")
    assert refused({**WEBHOOK, "paths": {**WEBHOOK["paths"], "account": "/acct"}}) == \
        "mappings.processor: account has both a path and a constant; keep one"
    assert "mappings.processor.paths.amount: 'data.amount' is not a JSON Pointer" in \
        refused({**WEBHOOK, "paths": {**WEBHOOK["paths"], "amount": "data.amount"}})
    assert "is not a JSON Pointer" in refused({**WEBHOOK, "paths": {**WEBHOOK["paths"], "amount": "/a~2"}})
    assert refused({**WEBHOOK, "time_form": "epoch"}) == \
        "mappings.processor.time_form: 'epoch' is not one of rfc3339, epoch_seconds, epoch_milliseconds"
    assert refused({**WEBHOOK, "upper_case_currency": "yes"}) == \
        "mappings.processor.upper_case_currency: 'yes' is not true or false"
    assert refused({**WEBHOOK, "types": {"charge.succeeded": "sale"}}) == \
        "mappings.processor.types.charge.succeeded: 'sale' is not one of transaction, refund, payout, heartbeat, ignore"
    assert refused({**WEBHOOK, "types": {}}).startswith("mappings.processor: a type path needs a [mappings.processor.types]")
    assert refused({**WEBHOOK, "constants": {"account": "a", "amount": "1"}}).startswith(
        "unknown mappings.processor.constants key(s): amount; known: type, account, currency")
    assert refused({**WEBHOOK, "constants": {"account": "a" * 65}}) == \
        "mappings.processor.constants.account: must be 1 to 64 characters, got 65"
    no_currency = {k: v for k, v in WEBHOOK["paths"].items() if k != "currency"}
    assert refused({**WEBHOOK, "paths": no_currency, "constants": {"account": "a", "currency": "usd"}}).startswith(
        "mappings.processor.constants.currency: 'usd' is not an ISO 4217 code")
    assert refused({**WEBHOOK, "paths": {**WEBHOOK["paths"], "amount": 7}}) == \
        "mappings.processor.paths.amount: 7 is not a string"
    with pytest.raises(ConfigError, match=r"^\[mappings.bnak\]: 'bnak' is not a source in \[sources\]$"):
        from_toml({"mappings": {"bnak": WEBHOOK}})


def test_accounts_map_what_statements_carry_to_tallys_account():
    config = from_toml({"accounts": {"NL71RABO0123456789": "operating-eur", "4711": "payroll"}})
    assert config.accounts == {"NL71RABO0123456789": "operating-eur", "4711": "payroll"}
    for table, reason in [({"NL71": ""}, "[accounts] NL71: the account must be 1 to 64 characters, got 0"),
                          ({"NL71": "a" * 65}, "[accounts] NL71: the account must be 1 to 64 characters, got 65"),
                          ({"NL71": 7}, "[accounts] NL71: 7 is not a string"),
                          ({"": "x"}, "[accounts]: a key is empty; write the IBAN, account number or code"),
                          ("NL71", '[accounts]: write it as a table of "IBAN or account number" = "account"')]:
        with pytest.raises(ConfigError) as error:
            from_toml({"accounts": table})
        assert str(error.value) == reason


def test_accounts_are_not_part_of_what_a_namespace_fixes_and_mappings_are():
    base = from_toml({"accounts": {"NL71": "operating-eur"}})
    assert base.deciding() == from_toml({"accounts": {"DE89": "other"}}).deciding()
    assert base.deciding() != from_toml({"mappings": {"processor": WEBHOOK}}).deciding()
