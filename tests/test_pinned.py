"""A namespace decides by the config it was made by: its first run pins the config, later
runs with other rules are refused, and the commands that read it use the pinned one."""

from __future__ import annotations

import tomllib

from flows.runtime.pinned import rules
from state.config import MatchConfig, from_toml
from tests.flow_helpers import published, tally


def _with(config_file, extra: str):
    text = config_file.read_text() + extra
    path = config_file.with_name(f"tally-{abs(hash(extra))}.toml")
    path.write_text(text)
    return path


def test_a_namespace_keeps_its_rules_and_lets_heartbeats_change(broker, pg_dsn):
    work, _, env = published(broker, pg_dsn, "tally-pinned-", payments=300, seed=4)
    config_file = env["TALLY_CONFIG"]
    tally("run", "--namespace", "pinned", "--until-end", env=env)
    pinned = work / "data" / "pinned" / "config.toml"
    assert rules(from_toml(tomllib.loads(pinned.read_text()))) == \
        rules(from_toml(tomllib.loads(open(config_file).read())))

    wider = _with(work / "tally.toml", '\n[matching]\nmatch_window = "45m"\n')
    refused = tally("run", "--namespace", "pinned", "--until-end", env=env | {"TALLY_CONFIG": str(wider)},
                    expect=2)
    line = refused.stderr.strip().splitlines()[-1]
    assert "namespace pinned decides by the config pinned in" in line and "match_window" in line
    assert str(pinned) in line

    quieter = _with(work / "tally.toml", '\n[heartbeats]\nidle = "30s"\n')
    tally("run", "--namespace", "pinned", "--until-end", env=env | {"TALLY_CONFIG": str(quieter)})
    tally("run", "--namespace", "pinned", "--until-end", "--config", str(pinned), env=env)


def test_only_heartbeats_are_outside_the_rules():
    base = MatchConfig()
    assert rules(base) == rules(MatchConfig(heartbeat_idle_us=1, max_source_delay_us=7,
                                            source_delays_us={"bank": 3}, heartbeats_write=False,
                                            silent_sources=("bank",)))
    assert rules(base) != rules(MatchConfig(match_window_us=base.match_window_us + 1))
    assert rules(base) != rules(MatchConfig(topics={**base.topics, "bank": "other.bank"}))
