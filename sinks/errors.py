"""The errors a store raises, and the base the whole CLI prints as one line.

`UserError` lives here, at the bottom of the layers, so that a store can raise what the
CLI prints without importing `flows`; `flows.logs` re-exports it.
"""

from __future__ import annotations


class UserError(Exception):
    """A failure the user can fix: printed as one line, exit code 2."""

    exit_code = 2


class StoreError(UserError):
    """A store (PostgreSQL, Parquet) cannot be read or written as asked: one line, exit code 2."""
