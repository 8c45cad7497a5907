"""A namespace's pinned config: the rules its decisions were made by, kept beside them.

The first run of a namespace writes its config to <data-dir>/<namespace>/config.toml;
every later run must decide by the same rules, or a namespace would hold decisions of
two configs with nothing to tell them apart (and a replay could not reproduce them).
Only what shapes a decision is compared: [heartbeats] says what a live run writes into
the log (and that is read back as the log), and [accounts] what `tally ingest` publishes.
Commands that read a namespace (report, explain) use its pinned config by default.
"""

from __future__ import annotations

import difflib
import os
import tomllib
from pathlib import Path

from flows.logs import UserError
from state.config import ConfigError, MatchConfig, from_toml, to_toml

NAME = "config.toml"
_HEADER = ("# The config this namespace decides by, pinned by its first run (flows/runtime/pinned.py).\n"
           "# Runs of the namespace must keep its rules; [heartbeats] may change.\n")


def path_of(data_root: Path) -> Path:
    return data_root / NAME


def rules(config: MatchConfig) -> str:
    """The config's decision rules as canonical TOML: equal text, equal decisions."""
    return to_toml(config.deciding())


def pin_or_check(data_root: Path, config: MatchConfig, namespace: str) -> None:
    """Pin `config` for a new namespace; refuse one whose pinned rules differ."""
    pinned_path = path_of(data_root)
    if not pinned_path.exists():
        data_root.mkdir(parents=True, exist_ok=True)
        temporary = pinned_path.with_name(f".{NAME}.{os.getpid()}")
        temporary.write_text(_HEADER + to_toml(config))
        os.replace(temporary, pinned_path)  # processes starting together see one whole file
        return
    pinned = read(pinned_path)
    theirs, ours = rules(pinned), rules(config)
    if theirs != ours:
        first = next(line for line in difflib.unified_diff(theirs.splitlines(), ours.splitlines(),
                                                           lineterm="", n=0)
                     if line[:1] in "+-" and not line.startswith(("+++", "---")))
        raise UserError(f"namespace {namespace} decides by the config pinned in {pinned_path}, and "
                        f"this config's rules differ ({first!r}); run with --config {pinned_path}, "
                        f"or replay into a new namespace to decide by the new rules")


def read(pinned_path: Path) -> MatchConfig:
    try:
        return from_toml(tomllib.loads(pinned_path.read_text()))
    except (OSError, tomllib.TOMLDecodeError, ConfigError) as exc:
        raise UserError(f"the pinned config {pinned_path} cannot be read ({exc}); restore it "
                        f"from a backup, or replay into a new namespace") from None


def namespace_config(explicit: str | None, data_root: Path) -> MatchConfig:
    """For commands that read a namespace: --config if given, else the pinned config, else
    $TALLY_CONFIG or the defaults."""
    from flows.runtime.settings import load_config
    if explicit is None and path_of(data_root).exists():
        return read(path_of(data_root))
    return load_config(explicit)
