"""The compiled engine and its source (setup.py, flows/compiled.py): which copy runs, and
that both decide alike.

The main run must import the binaries: CI has a compiler, so a build that silently fell
back to the source fails here. The engine's differential and property tests run again on
the source (TALLY_PURE_PYTHON=1), since state/ is the reference the binaries are built
from. And a binary built from another version of its source never runs.
"""

from __future__ import annotations

import importlib
import os
import re
import runpy
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from flows import compiled

REPO = Path(__file__).resolve().parents[1]
COMPILED = runpy.run_path(str(REPO / "setup.py"), run_name="setup_read_by_tests")["COMPILED"]
BINARY = sysconfig.get_config_var("EXT_SUFFIX")
# Run again on the source: the match rule against the scan-based reference (sparse, dense
# and hot days, shards, snapshots, clock jumps), its properties on dense accounts, the batch
# and payout rules against theirs, and dense adversarial logs (redeliveries, invalid
# records, lateness). test_determinism*.py and test_clock_skew.py add interleavings of the
# same decisions, which the main run covers.
PURE_RUN = ["tests/test_differential.py", "tests/test_matching_properties.py",
            "tests/test_settlement_properties.py", "tests/test_determinism_dense.py"]
# one day through the engine in 2 shards with a snapshot: the canonical bytes of its output
DAY_PROBE = """
import hashlib
import flows
from tests.days import day_values
from tests.test_determinism import feed
values = day_values(3000, 5, accounts=30, hot_share=0.3)
print(hashlib.sha256(feed(values, [(0, 700), (4, 1500)], 2, True, frozenset({1}))).hexdigest())
"""


def environment(pure: bool) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != compiled.PURE_VARIABLE}
    return env | {compiled.PURE_VARIABLE: "1"} if pure else env


def test_the_chosen_copy_of_every_compiled_module_runs():
    """The binaries in the main run; the sources in the pure run (below)."""
    ending = ".py" if compiled.pure_wanted() else BINARY
    files = {name: importlib.import_module(f"state.{name}").__file__ for name in COMPILED}
    assert {name: file for name, file in files.items() if not file.endswith(ending)} == {}


@pytest.mark.skipif(compiled.pure_wanted(), reason="this is the pure run")
def test_the_engine_tests_pass_on_the_source_too():
    this = f"{Path(__file__).relative_to(REPO)}::test_the_chosen_copy_of_every_compiled_module_runs"
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", this, *PURE_RUN],
        cwd=REPO, env=environment(pure=True), capture_output=True, text=True)
    summary = result.stdout.strip().splitlines()[-1]
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert re.fullmatch(r"\d+ passed in .*", summary), summary  # nothing skipped


def test_the_compiled_and_the_source_engine_give_the_same_bytes():
    outputs = [subprocess.run([sys.executable, "-c", DAY_PROBE], cwd=REPO,
                              env=environment(pure), capture_output=True, text=True, check=True)
               for pure in (False, True)]
    compiled_out, source_out = (result.stdout.strip() for result in outputs)
    assert re.fullmatch(r"[0-9a-f]{64}", compiled_out)
    assert compiled_out == source_out


def test_a_binary_older_than_its_source_never_runs(tmp_path):
    """state/ copied with its binaries, engine.py edited after the build: the source runs,
    with a warning, and the modules left as they were stay compiled."""
    copy = tmp_path / "state"
    shutil.copytree(REPO / "state", copy, ignore=shutil.ignore_patterns("*.c", "__pycache__"))
    engine = copy / "engine.py"
    engine.write_text(engine.read_text() + "\n# edited after the build\n")
    probe = "import flows, state.engine, state.book; print(state.engine.__file__, state.book.__file__)"
    result = subprocess.run([sys.executable, "-c", probe], cwd=tmp_path,
                            env=environment(pure=False), capture_output=True, text=True, check=True)
    engine_file, book_file = result.stdout.split()
    assert engine_file == str(engine)
    assert book_file == str(copy / f"book{BINARY}")
    assert "state.engine: engine.py changed since" in result.stderr
