"""Which copy of a state/ module runs: the compiled one, unless it is stale or not wanted.

setup.py compiles the engine's hot modules with Cython beside their sources
(state/engine.py and state/engine.cpython-311-....so), and Python on its own would
always import the binary, even one built from an older engine.py. This finder, ahead of
Python's own, imports the source instead when:

- TALLY_PURE_PYTHON=1: the reference path, asked for (tests run the engine's property
  tests both ways); no warning;
- the binary's `.source-sha256` (written by setup.py when it built it) is not the hash
  of the .py beside it: the source was edited since, and running the old binary would
  test or run code that is no longer there. A warning says so; `make test` rebuilds.

state/ itself reads no environment and knows nothing of this: flows/__init__.py installs
the finder, and every entry point (the CLI, the dataflow's workers, the tests, the bench)
imports flows before any state module.
"""

from __future__ import annotations

import hashlib
import importlib.machinery
import importlib.util
import os
import sys
import warnings
from pathlib import Path

PACKAGE = "state."
PURE_VARIABLE = "TALLY_PURE_PYTHON"
HASH_SUFFIX = ".source-sha256"  # beside the binary: the hash of the source it was built from


class CompiledStateStale(RuntimeWarning):
    """A compiled state module older than its source: the source runs instead."""


def source_hash(source: Path) -> str:
    return hashlib.sha256(source.read_bytes()).hexdigest()


def stale_reason(binary: Path, source: Path) -> str | None:
    """Why `binary` must not stand for `source`, or None when it was built from it."""
    recorded = binary.with_name(binary.name + HASH_SUFFIX)
    if not recorded.exists():
        return f"{binary.name} has no {HASH_SUFFIX} beside it"
    if recorded.read_text().strip() != source_hash(source):
        return f"{source.name} changed since {binary.name} was built"
    return None


def pure_wanted() -> bool:
    return os.environ.get(PURE_VARIABLE, "") not in ("", "0")


class StateFinder:
    """A meta path finder for state's submodules only; anything else is Python's."""

    @staticmethod
    def find_spec(name, path, target=None):
        if not name.startswith(PACKAGE) or path is None:
            return None
        spec = importlib.machinery.PathFinder.find_spec(name, path, target)
        if spec is None or not isinstance(spec.loader, importlib.machinery.ExtensionFileLoader):
            return spec
        binary = Path(spec.origin)
        source = binary.with_name(name.rpartition(".")[2] + ".py")
        if not source.exists():
            return spec
        if not pure_wanted():
            reason = stale_reason(binary, source)
            if reason is None:
                return spec
            warnings.warn(f"{name}: {reason}; running the source instead (`make test` or "
                          f"`python setup.py build_ext --inplace` rebuilds it)",
                          CompiledStateStale, stacklevel=2)
        return importlib.util.spec_from_file_location(name, source)


def install() -> None:
    """Put the finder ahead of Python's own, once."""
    if not any(finder is StateFinder for finder in sys.meta_path):
        sys.meta_path.insert(0, StateFinder)
