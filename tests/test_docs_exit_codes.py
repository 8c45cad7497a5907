"""docs/operations.md's exit code table against the command line (Tally 10/14).

Cheap checks, all of them: the table names exactly the commands argparse knows;
every command answers --help with 0 and a usage error with 2; a command that may
answer 1 (a negative answer) is the one whose handler returns 1, or runs the flow
(a FlowError); and a real 1 and a real 130 are produced.
"""

from __future__ import annotations

import argparse
import inspect
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from flows.cli import build_parser
from tests.flow_helpers import tally

DOC = Path(__file__).resolve().parent.parent / "docs" / "operations.md"
CODES = ("0", "1", "2", "3", "130")


def _table() -> dict[str, dict[str, str]]:
    """{'run': {'0': meaning, '1': ..., ...}, 'dev status': {...}} from the docs."""
    section = DOC.read_text().split("\n## Exit codes\n", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("| `tally ")]
    header = next(line for line in section.splitlines() if line.startswith("| command"))
    assert [c.strip() for c in header.strip("|").split("|")] == ["command", *CODES]
    table = {}
    for row in rows:
        cells = [c.strip() for c in row.strip("|").split("|")]
        command = re.fullmatch(r"`tally ([a-z ]+)`", cells[0]).group(1)
        assert command not in table, f"{command} twice"
        assert len(cells) == 1 + len(CODES), row
        table[command] = dict(zip(CODES, cells[1:]))
    return table


def _commands(parser: argparse.ArgumentParser, prefix: str = "") -> dict[str, argparse.ArgumentParser]:
    """Every command with a handler of its own, by name ('run', 'dev status', ...)."""
    found = {}
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                inner = _commands(sub, f"{prefix}{name} ")
                found.update(inner or {f"{prefix}{name}": sub})
    return found


TABLE = _table()
COMMANDS = _commands(build_parser())


def test_the_table_names_every_command_of_the_cli_and_no_other():
    assert sorted(TABLE) == sorted(COMMANDS)


def test_every_command_documents_0_2_and_130():
    for command, codes in TABLE.items():
        for code in ("0", "2", "130"):
            assert codes[code] not in ("", "—"), f"tally {command}: exit {code} not documented"
        assert "usage" in codes["2"], f"tally {command}: a usage error is exit 2"


def test_a_command_documents_1_exactly_when_it_can_answer_1():
    for command, parser in COMMANDS.items():
        handler = parser.get_default("handler")
        source = inspect.getsource(handler)
        negative = re.search(r"return (1|0 if .* else 1)\s*$", source, re.MULTILINE) is not None
        runs_the_flow = "flows.runtime.run import" in source or "flows.dev.demo import" in source
        documented = TABLE[command]["1"] not in ("", "—")
        assert documented == (negative or runs_the_flow), \
            f"tally {command}: exit 1 {'documented' if documented else 'not documented'}"
        if runs_the_flow:
            assert "flow stopped" in TABLE[command]["1"] or TABLE[command]["1"] == "as `run`"
        # 3 (flows/runtime/disk.py) ends only a command that runs the flow in its own process
        assert (TABLE[command]["3"] not in ("", "—")) == runs_the_flow, f"tally {command}: exit 3"


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_help_is_0_and_a_usage_error_is_2(command):
    words = command.split()
    assert tally(*words, "--help").stdout.startswith("usage: tally")
    result = tally(*words, "--no-such-option", expect=2)
    assert "unrecognized arguments: --no-such-option" in result.stderr \
        or "the following arguments are required" in result.stderr


def test_a_bad_log_level_and_a_group_without_its_action_are_2():
    assert "log level" in tally("--log-level", "loud", "dev", "down", expect=2).stderr
    for group in ([], ["dev"], ["topics"], ["review"]):
        assert "usage: tally" in tally(*group, expect=2).stdout


def test_dev_status_of_nothing_is_1(tmp_path):
    result = tally("dev", "status", "--data-dir", str(tmp_path), expect=1)
    assert "not running" in result.stdout


def test_an_interrupted_command_is_130(tmp_path):
    proc = subprocess.Popen([sys.executable, "-m", "flows", "generate", "--transactions",
                             "5000000", "--out", str(tmp_path / "day")],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(2)
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130, stderr
    assert stderr.strip().splitlines()[-1] == "tally: interrupted"
