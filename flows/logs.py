"""Structured logs on stderr (key=value), and the one-line user error.

Secrets never reach a log: DSNs are passed through `redact` before printing.
"""

from __future__ import annotations

import logging
import os
import re
import sys

from sinks.dsn import redact
from sinks.errors import StoreError, UserError

__all__ = ["FlowError", "StoreError", "UserError", "error", "info", "printable", "redact", "setup",
           "warning"]

log = logging.getLogger("tally")
# C0 and C1 control characters: what could rewrite an operator's terminal
_CONTROL = {c: f"\\x{c:02x}" for c in (*range(0x20), *range(0x7f, 0xa0))}


class FlowError(UserError):
    """The flow stopped on an unexpected error: one line, exit code 1, detail in the log."""

    exit_code = 1


def printable(text: str) -> str:
    """`text` with control characters shown as \\xNN: what came from a record or a person
    (a reason, a note, a name) must not drive the terminal it is printed on."""
    return str(text).translate(_CONTROL)


class _Formatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        fields = " ".join(f"{k}={v}" for k, v in getattr(record, "fields", {}).items())
        text = f"{self.formatTime(record, '%Y-%m-%dT%H:%M:%S')} {record.levelname.lower()} {record.getMessage()}"
        return redact(f"{text} {fields}".rstrip())


def setup(level: str | None = None) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_Formatter())
    root = logging.getLogger("tally")
    root.handlers[:] = [handler]
    root.setLevel((level or os.environ.get("TALLY_LOG_LEVEL") or "INFO").upper())
    root.propagate = False


def info(message: str, **fields) -> None:
    log.info(message, extra={"fields": fields})


def warning(message: str, **fields) -> None:
    log.warning(message, extra={"fields": fields})


def error(message: str, **fields) -> None:
    log.error(message, extra={"fields": fields})
