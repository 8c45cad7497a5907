"""Loading the TOML config file (the I/O half of state/config.py)."""

from __future__ import annotations

import os
import tomllib
from pathlib import Path

from flows.logs import UserError
from state.config import ConfigError, MatchConfig, from_toml


def load_config(path: str | None) -> MatchConfig:
    """The file given, or $TALLY_CONFIG, or the defaults."""
    path = path or os.environ.get("TALLY_CONFIG")
    if not path:
        return MatchConfig()
    try:
        data = tomllib.loads(Path(path).read_text())
    except FileNotFoundError:
        raise UserError(f"config file {path} does not exist") from None
    except tomllib.TOMLDecodeError as err:
        raise UserError(f"config file {path} is not valid TOML: {err}") from None
    from flows.kafka import kafka_io
    kafka = data.pop("kafka", {})
    if not isinstance(kafka, dict):
        raise UserError(f"config file {path}: [kafka] must be a table of librdkafka settings")
    kafka_io.use_file_settings(kafka)
    try:
        return from_toml(data)
    except ConfigError as err:
        raise UserError(f"config file {path}: {err}") from None
