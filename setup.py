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
    source. Each binary gets the hash of the source it was built from beside it, and in
    place, a module is rebuilt exactly when that hash is not its source's."""

    def finalize_options(self) -> None:
        # before the base class prepares the extensions it will build
        try:
            from Cython.Build import cythonize
        except ImportError:
            warn("Cython is not installed, nothing was compiled")
            self.distribution.ext_modules = []
        else:
            for ext in self.distribution.ext_modules:
                source = HERE / ext.sources[0]  # already the .c when finalized a second time
                if source.suffix == ".py" and not self._current_in_place(ext.name):
                    # Cython judges by timestamps, which a checkout may have kept
                    source.with_suffix(".c").unlink(missing_ok=True)
            # exclude_failures: a module Cython rejects is dropped, the others still build
            self.distribution.ext_modules = cythonize(
                self.distribution.ext_modules, language_level=3, quiet=True,
                compiler_directives=DIRECTIVES, exclude_failures=True)
        super().finalize_options()
        self.built: set[str] = set()

    def _current_in_place(self, name: str) -> bool:
        """The binary beside the source was built from it, as it is now."""
        binary = HERE / (name.replace(".", "/") + sysconfig.get_config_var("EXT_SUFFIX"))
        recorded = binary.with_name(binary.name + HASH_SUFFIX)
        return (binary.exists() and recorded.exists()
                and recorded.read_text().strip() == source_hash(name.rpartition(".")[2]))

    def run(self) -> None:
        self.in_place = self.inplace  # setuptools turns it off while it builds into build_lib
        super().run()  # ... then copies what was built in place
        for ext in self.extensions:
            digest = source_hash(ext.name.rpartition(".")[2])
            places = [Path(self.build_lib) / self.get_ext_filename(ext.name)]
            if self.in_place:
                places.append(HERE / self.get_ext_filename(ext.name))
            for binary in filter(Path.exists, places):
                binary.with_name(binary.name + HASH_SUFFIX).write_text(digest + "\n")

    def build_extension(self, ext: Extension) -> None:
        if self.in_place and self._current_in_place(ext.name):
            # not setuptools' judgement, by build/'s copy: a fresh clone's `pip install -e`
            # built in a temporary directory, and `make test` would build it all again
            return
        try:
            super().build_extension(ext)
        except Exception as err:  # no compiler, no headers, a compiler error
            warn(f"{ext.name} was not compiled ({err})")
        else:
            self.built.add(ext.name)

    def build_extensions(self) -> None:
        super().build_extensions()
        # what was not built now is neither copied in place nor listed among the outputs
        self.extensions = [ext for ext in self.extensions if ext.name in self.built]


if __name__ == "__main__":  # as setuptools runs it; tests read COMPILED without building
    setup(ext_modules=[Extension(f"state.{name}", [f"state/{name}.py"]) for name in COMPILED],
          cmdclass={"build_ext": OptionalBuildExt})
