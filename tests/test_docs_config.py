"""docs/configuration.md stays true: every key, variable and option it must name, with
the defaults it states, checked against the code. Fast: no broker, no PostgreSQL.
"""

from __future__ import annotations

import argparse
import logging
import re
import tomllib
from pathlib import Path

import msgspec
import pytest
from confluent_kafka import Producer

from flows.kafka import kafka_io
from flows.cli import build_parser
from flows.logs import UserError
from flows.runtime.run import RunOptions, Stretch, check_shape
from flows.runtime.settings import load_config
from state.config import MatchConfig, from_toml, to_toml

ROOT = Path(__file__).resolve().parent.parent
DOC = (ROOT / "docs" / "configuration.md").read_text()
SCALING = ROOT / "docs" / "scaling.md"
FLOW_COMMANDS = ("run", "replay")
ENV_NAME = re.compile(r"TALLY_[A-Z_]+")
OPTION = re.compile(r"(?<![\w-])--[a-z][a-z-]*")


def section(text: str, heading: str) -> str:
    """The text under a heading, up to the next heading of the same or a higher level."""
    level = heading.split(" ", 1)[0]
    start = text.index(heading + "\n")
    following = re.compile(rf"^#{{1,{len(level)}}} ", re.M)
    end = following.search(text, start + len(heading))
    return text[start:end.start() if end else len(text)]


def names(text: str, word: str) -> bool:
    """Whether `word` occurs in text as a whole code word (not as the prefix of a longer one)."""
    return re.search(rf"(?<![\w-]){re.escape(word)}(?![\w-])", text) is not None


@pytest.fixture
def parser(monkeypatch) -> argparse.ArgumentParser:
    """The CLI as a clean environment builds it (defaults are read from TALLY_* at build time)."""
    import os
    for name in list(os.environ):
        if name.startswith("TALLY_"):
            monkeypatch.delenv(name)
    return build_parser()


def subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    """Every (nested) subcommand by its full name, e.g. 'run', 'review list'."""
    found = {}

    def walk(current, prefix):
        for action in current._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, sub in action.choices.items():
                    found[" ".join(prefix + [name])] = sub
                    walk(sub, prefix + [name])

    walk(parser, [])
    return found


def visible_options(parser: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    return {option: action for action in parser._actions if action.help != argparse.SUPPRESS
            for option in action.option_strings if option.startswith("--") and option != "--help"}


# ----------------------------------------------------------------------------- the TOML file

# MatchConfig fields that the defaults leave empty, and the table the page names them by
EMPTY_TABLES = {"relations": "[relations.NAME]", "mappings": "[mappings.SOURCE]",
                "accounts": "[accounts]"}
# [heartbeats] keys whose field names say more than the key inside its table
HEARTBEAT_KEYS = {"heartbeat_idle_us": "idle", "heartbeats_write": "write",
                  "source_delays_us": "max_source_delay", "silent_sources": "write"}


def toml_key(field: str) -> str:
    """A MatchConfig field's name in the file: `topics` is the [sources] table, and times and
    fractions drop their unit (match_window_us -> match_window, amount_tolerance_ppm -> ...)."""
    if field in HEARTBEAT_KEYS:
        return HEARTBEAT_KEYS[field]
    return "sources" if field == "topics" else re.sub(r"_(us|ppm)$", "", field)


def test_every_config_field_is_a_documented_file_key():
    written = tomllib.loads(to_toml(MatchConfig()))  # the file form of every field
    keys = {table: set(values) for table, values in written.items()}
    for field in msgspec.structs.fields(MatchConfig):
        if field.name in EMPTY_TABLES:  # none by default: their own sections name them
            assert EMPTY_TABLES[field.name] in DOC
            continue
        key = toml_key(field.name)
        assert key in keys or any(key in k for k in keys.values()), \
            f"MatchConfig.{field.name} has no key {key!r} in the file form; update toml_key"
        assert names(DOC, key), f"docs/configuration.md does not name the config key {key!r}"
    for table, table_keys in keys.items():
        assert f"[{table}]" in DOC, f"docs/configuration.md does not name the table [{table}]"
        for key in table_keys:  # the default source names too
            assert names(DOC, key), f"docs/configuration.md does not name [{table}] {key}"
    assert "[kafka]" in DOC


def test_the_documented_defaults_are_the_built_in_ones():
    rows = re.findall(r"^\| `\[(\w+)\] (\w+)` \| `(.+?)` \|", DOC, re.M)
    assert len(rows) >= 7, rows
    for table, key, default in rows:
        value = tomllib.loads(f"v = {default}")["v"]
        assert from_toml({table: {key: value}}) == MatchConfig(), f"[{table}] {key} = {default}"


def test_every_relation_key_is_documented_and_the_examples_load():
    from state.relations import _KEYS
    relations = section(DOC, "### Relations")
    for rule, keys in _KEYS.items():
        assert f"`{rule}`" in relations, rule
        for key in keys | {"rule"}:
            assert names(relations, key), f"docs/configuration.md ### Relations lacks {key!r}"
    for example in sorted((ROOT / "docs" / "examples").glob("*.toml")):
        config = from_toml(tomllib.loads(example.read_text()))
        assert config.relations and from_toml(tomllib.loads(to_toml(config))) == config, example


def test_every_mapping_key_form_and_kind_is_documented_and_the_webhooks_example_maps():
    from state import mapping
    mappings = section(DOC, "### Mappings")
    for words in (mapping._KEYS, mapping.FIELDS, mapping.AMOUNT_FORMS, mapping.TIME_FORMS, mapping.KINDS):
        for word in words:
            assert names(mappings, word), f"docs/configuration.md ### Mappings lacks {word!r}"
    assert names(mappings, "docs/examples/webhooks.toml")
    webhooks = from_toml(tomllib.loads((ROOT / "docs/examples/webhooks.toml").read_text()))
    assert set(webhooks.mappings) == {"processor"}
    accounts = re.search(r"```toml\n(.*?)```", section(DOC, "### Accounts"), re.S).group(1)
    assert from_toml(tomllib.loads(accounts)).accounts["NL71RABO0123456789"] == "operating-eur"


def test_the_example_file_loads_and_is_the_defaults(tmp_path, monkeypatch):
    example = re.search(r"```toml\n(.*?)```", section(DOC, "### A complete example"), re.S).group(1)
    path = tmp_path / "tally.toml"
    path.write_text(example)
    monkeypatch.setattr(kafka_io, "_FILE_SETTINGS", {})  # load_config fills the process-wide table
    assert load_config(str(path)) == MatchConfig()
    kafka = tomllib.loads(example).get("kafka", {})
    assert kafka_io._FILE_SETTINGS == {k: str(v) for k, v in kafka.items()}
    # librdkafka knows every property (creating a client checks them; nothing connects here)
    Producer({**kafka_io.kafka_config("127.0.0.1:9"), "logger": logging.getLogger("test.kafka")})


# ----------------------------------------------------------------------------- environment

def source_env_names(*dirs: str) -> set[str]:
    found = set()
    for folder in dirs:
        for path in (ROOT / folder).rglob("*.py"):
            found |= set(ENV_NAME.findall(path.read_text()))
    return found


def test_every_variable_tally_reads_is_documented(parser):
    for name in sorted(source_env_names("flows", "sinks", "state")):
        assert names(DOC, name) or name.endswith("_") and name in DOC, \
            f"docs/configuration.md does not name {name}"


def test_every_documented_variable_exists(parser):
    known = source_env_names("flows", "sinks", "state", "bench")
    compose = ROOT / "compose"
    if compose.is_dir():  # the compose stack's own .env variables, which the page mentions
        for path in compose.rglob("*"):
            if path.is_file() and path.suffix in ("", ".yaml", ".yml", ".example", ".md"):
                known |= set(ENV_NAME.findall(path.read_text(errors="replace")))
    for name in sorted(set(ENV_NAME.findall(DOC))):
        if name.startswith("TALLY_KAFKA_"):
            continue  # instances of TALLY_KAFKA_<PROPERTY>
        assert name in known, f"docs/configuration.md names {name}, which nothing reads"


# ----------------------------------------------------------------------------- options

def test_every_option_of_run_and_replay_is_documented(parser):
    options_doc = section(DOC, "## Options of `tally run` and `tally replay`")
    commands = subcommands(parser)
    for command in FLOW_COMMANDS:
        for option in visible_options(commands[command]):
            assert names(options_doc, option), f"tally {command} {option} is not documented"
    assert names(options_doc, "--log-level")


def test_documented_numeric_defaults_are_the_parsers(parser):
    options_doc = section(DOC, "## Options of `tally run` and `tally replay`")
    rows = re.findall(r"^\| `(--[a-z-]+)[^`]*` \| ([\d.]+)(?: \(.*?\))? \|", options_doc, re.M)
    assert len(rows) >= 6, rows
    commands = subcommands(parser)
    for option, default in rows:
        for command in FLOW_COMMANDS:
            action = visible_options(commands[command]).get(option)
            if action is not None:
                assert float(action.default) == float(default), f"tally {command} {option}"


def test_every_documented_option_exists(parser):
    known = set(visible_options(parser))
    for sub in subcommands(parser).values():
        known |= set(visible_options(sub))
    for option in sorted(set(OPTION.findall(DOC))):
        assert option in known, f"docs/configuration.md names {option}, which no command has"


# ----------------------------------------------------------------------------- metrics

def test_every_metric_is_documented_and_exists(parser):
    from flows.runtime.metrics import METRIC_NAMES
    metrics_doc = section(DOC, "## Metrics")
    for name in METRIC_NAMES:
        assert names(metrics_doc, name), f"metric {name} is not documented"
    for name in set(re.findall(r"tally_[a-z_]+", metrics_doc)):
        assert name in METRIC_NAMES, f"docs/configuration.md names the metric {name}, which is not served"


# ----------------------------------------------------------------------------- refusals quoted

def test_the_quoted_refusals_are_the_codes(tmp_path):
    parts = {(topic, p): 0 for topic in ("recon.bank", "recon.processor", "recon.ledger")
             for p in range(3)}
    options = RunOptions(brokers="", pg_dsn=None, data_dir=tmp_path, namespace="live",
                         until_end=False, shards=4)
    check_shape(tmp_path / "shape.json", options, Stretch(parts, None, "run"))
    options.shards = 8
    with pytest.raises(UserError) as refused:
        check_shape(tmp_path / "shape.json", options, Stretch(parts, None, "run"))
    docs = [DOC] + ([SCALING.read_text()] if SCALING.exists() else [])
    for text in docs:
        assert f"tally: {refused.value}" in text
    config_refusal = ("the matching config differs from the one in the recovery snapshot; "
                      "use a new namespace (or the old config) to continue")
    source = re.sub(r'"\s*\n\s*"', "", (ROOT / "flows" / "runtime" / "dataflow.py").read_text())  # join literals
    assert config_refusal in source
    assert f"tally: {config_refusal}" in DOC
