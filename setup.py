"""Compiles the engine's hot modules with Cython, in place beside their sources.

state/ stays the reference: plain Python that runs as it is. Where a C compiler and
Cython are at hand (`pip install -e .`, `make test`), the modules in COMPILED are also
built as extension modules from the very same .py files, and Python imports those. Where
either is missing, or a module fails to build, the install still succeeds and that module
runs from source; a warning says so. flows/compiled.py decides at import time which copy
runs: never a binary built from another version of its source.
"""

from __future__ import annotations

import hashlib
import sys
import sysconfig
from pathlib import Path

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

# the ingest-and-decide path (bench/engine.py); the config's parsing and the rules' words
# run once per process and gain nothing
COMPILED = ["contract", "routing", "stream_time", "engine", "desks", "book", "matching",
            "verdicts", "scoring", "decision", "batches", "payouts", "relations", "currency"]
HASH_SUFFIX = ".source-sha256"  # flows/compiled.py reads it
HERE = Path(__file__).resolve().parent
# Cython's own reading of annotations would make `x: list[str] = ()` raise and `x: float`
# a C double: the compiled modules must decide exactly as the source does, so annotations
# stay what Python makes of them, documentation.
DIRECTIVES = {"annotation_typing": False}


def warn(message: str) -> None:
    print(f"WARNING: tally: {message}; the pure-Python module(s) will run instead",
          file=sys.stderr)


def source_hash(module: str) -> str:
    return hashlib.sha256((HERE / "state" / f"{module}.py").read_bytes()).hexdigest()


class OptionalBuildExt(build_ext):
    """build_ext that never fails the install: a module that cannot be built runs from
    source. Each binary gets the hash of the source it was built from beside it."""

    def finalize_options(self) -> None:
        # before the base class prepares the extensions it will build
        try:
            from Cython.Build import cythonize
        except ImportError:
            warn("Cython is not installed, nothing was compiled")
            self.distribution.ext_modules = []
        else:
            self._regenerate_stale()
            # exclude_failures: a module Cython rejects is dropped, the others still build
            self.distribution.ext_modules = cythonize(
                self.distribution.ext_modules, language_level=3, quiet=True,
                compiler_directives=DIRECTIVES, exclude_failures=True)
        super().finalize_options()
        self.built: set[str] = set()

    def _regenerate_stale(self) -> None:
        """Cython and setuptools rebuild by timestamps; a source whose hash is not the one
        its in-place binary records (a checkout that kept old times, say) is translated
        again, so that the build always repairs what flows/compiled.py would refuse."""
        for ext in self.distribution.ext_modules:
            module = ext.name.rpartition(".")[2]
            recorded = HERE / "state" / f"{module}{sysconfig.get_config_var('EXT_SUFFIX')}{HASH_SUFFIX}"
            if recorded.exists() and recorded.read_text().strip() != source_hash(module):
                (HERE / "state" / f"{module}.c").unlink(missing_ok=True)

    def build_extension(self, ext: Extension) -> None:
        try:
            super().build_extension(ext)
        except Exception as err:  # no compiler, no headers, a compiler error
            warn(f"{ext.name} was not compiled ({err})")
        else:
            self.built.add(ext.name)

    def build_extensions(self) -> None:
        super().build_extensions()
        # what was not built is neither copied in place nor listed among the outputs
        self.extensions = [ext for ext in self.extensions if ext.name in self.built]

    def run(self) -> None:
        super().run()  # builds into build_lib, then copies in place when --inplace/editable
        for ext in self.extensions:
            digest = source_hash(ext.name.rpartition(".")[2])
            places = [Path(self.build_lib) / self.get_ext_filename(ext.name)]
            if self.inplace:
                places.append(HERE / self.get_ext_filename(ext.name))
            for binary in places:
                binary.with_name(binary.name + HASH_SUFFIX).write_text(digest + "\n")


if __name__ == "__main__":  # as setuptools runs it; tests read COMPILED without building
    setup(ext_modules=[Extension(f"state.{name}", [f"state/{name}.py"]) for name in COMPILED],
          cmdclass={"build_ext": OptionalBuildExt})
