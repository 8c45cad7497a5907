"""The TOML config: every MatchConfig survives a trip through to_toml and from_toml."""

from __future__ import annotations

import tomllib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from state.config import ConfigError, MatchConfig, from_toml, to_toml

names = st.text(st.characters(codec="utf-8", exclude_categories=("Cs", "Cc")), min_size=1,
                max_size=12)


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
        min_year=min_year, max_year=draw(st.integers(min_year + 1, 9999)))


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
