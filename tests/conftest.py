"""Session-wide real services: one Tansu broker and one PostgreSQL per test run."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Iterator

import pytest

from flows.dev.services import running_broker, running_postgres


# PostgreSQL data goes under /tmp, not under pytest's tmp_path: as root,
# PostgreSQL runs as another user who must be able to traverse the path, and
# every pytest session starting resets /tmp/pytest-of-root to mode 0700.


@pytest.fixture(scope="session")
def services_dir() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="tally-services-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def pg_tmp_path() -> Iterator[Path]:
    """Like tmp_path, but usable for PostgreSQL data when running as root."""
    path = Path(tempfile.mkdtemp(prefix="tally-test-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="session")
def broker(services_dir: Path) -> Iterator[str]:
    """Bootstrap address ("127.0.0.1:PORT") of a Tansu broker with memory storage."""
    with running_broker(services_dir / "broker") as bootstrap:
        yield bootstrap


@pytest.fixture(scope="session")
def pg_dsn(services_dir: Path) -> Iterator[str]:
    """DSN ("postgresql://tally:PASS@127.0.0.1:PORT/tally") of a fresh PostgreSQL."""
    with running_postgres(services_dir / "postgres") as dsn:
        yield dsn


# Figures that tests measure (accuracy, counts) are printed at the end of the run,
# so the test output reports them even when everything passes.
FIGURES: list[str] = []


@pytest.fixture
def report():
    return FIGURES.append


def pytest_sessionfinish(session):
    workeroutput = getattr(session.config, "workeroutput", None)
    if workeroutput is not None:  # a pytest-xdist worker: its figures go to the controller
        workeroutput["tally_figures"] = list(FIGURES)


@pytest.hookimpl(optionalhook=True)  # a pytest-xdist hook
def pytest_testnodedown(node, error):
    FIGURES.extend(getattr(node, "workeroutput", {}).get("tally_figures", []))


def pytest_terminal_summary(terminalreporter):
    if FIGURES:
        terminalreporter.section("Tally figures")
        for line in FIGURES:
            terminalreporter.write_line(line)
