"""The options several commands share, and what they resolve to (brokers, PostgreSQL)."""

from __future__ import annotations

import argparse
import os
import sys
import time
import tomllib
from contextlib import contextmanager
from functools import cache
from pathlib import Path

from flows import logs
from flows.logs import UserError


@cache
def _words() -> dict:
    return tomllib.loads(Path(__file__).with_name("commands.toml").read_text())


def command(parent, name: str, path: str | None = None) -> argparse.ArgumentParser:
    """The sub-command `name` of `parent`, with its help and description from commands.toml,
    where every command's words are kept together (`path`: "review list" for `list`)."""
    return parent.add_parser(name, **_words()[path or name])


def env(name: str, default: str | None = None) -> str | None:
    """A TALLY_* setting from the environment; set but empty counts as unset."""
    return os.environ.get(name) or default


def data_dir_option(cmd) -> None:
    cmd.add_argument("--data-dir", type=Path, default=Path(env("TALLY_DATA_DIR", ".tally")),
                     help="where Parquet, recovery and dev services live (default $TALLY_DATA_DIR or .tally)")


def pg_option(cmd) -> None:
    cmd.add_argument("--pg", default=env("TALLY_PG_DSN"), metavar="DSN",
                     help="PostgreSQL DSN (default $TALLY_PG_DSN, else the 'tally dev up' server)")


def store_options(cmd) -> None:
    """Where a namespace's stores are: for commands that read them and need no broker."""
    data_dir_option(cmd)
    pg_option(cmd)


def service_options(cmd, pg: bool) -> None:
    data_dir_option(cmd)
    cmd.add_argument("--brokers", default=env("TALLY_BROKERS"),
                     help="Kafka bootstrap servers (default $TALLY_BROKERS, else the 'tally dev up' broker)")
    if pg:
        pg_option(cmd)
    cmd.add_argument("--config", default=None, help="TOML config file (default: $TALLY_CONFIG or built-in)")


def resolve_brokers(args) -> str:
    return args.brokers or dev_service(args, "brokers", "no broker: pass --brokers (or set TALLY_BROKERS)")


def resolve_pg(args) -> str:
    return args.pg or dev_service(args, "pg_dsn", "no PostgreSQL: pass --pg (or set TALLY_PG_DSN)")


def dev_service(args, field: str, missing: str) -> str:
    """The address of a service that 'tally dev up' started for the same data directory."""
    from flows.dev.services import dev_status
    dev = dev_status(args.data_dir)
    if dev is None:
        raise UserError(f"{missing}, or start one with 'tally dev up --data-dir {args.data_dir}'")
    return getattr(dev, field)


def seconds_type(low: float, high: float, wanted: str):
    """An argparse type: a number of seconds in [low, high], else `wanted` says what is."""
    def parse(value: str) -> float:
        try:
            seconds = float(value)
        except ValueError:
            seconds = float("nan")
        if not low <= seconds <= high:
            raise argparse.ArgumentTypeError(f"{value!r} is not {wanted}")
        return seconds
    return parse


positive_seconds = seconds_type(0.05, 3600, "a number of seconds from 0.05 to 3600")


deadline_seconds = seconds_type(0, sys.float_info.max,
                     "a number of seconds (0 or more); check TALLY_PG_RETRY_DEADLINE")


def metrics_address(value: str) -> str:
    from flows.runtime.metrics import parse_address
    try:
        parse_address(value)
    except UserError as err:
        raise argparse.ArgumentTypeError(str(err)) from None
    return value


def valid_namespace(value: str) -> str:
    from sinks.postgres import validate_namespace
    try:
        return validate_namespace(value)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None
