"""Structured logs on stderr (key=value), and the one-line user error.

Secrets never reach a log: DSNs are passed through `redact` before printing.
"""

from __future__ import annotations

import logging
import os
import re
import sys

log = logging.getLogger("tally")
_PASSWORD_IN_URL = re.compile(r"(://[^:/@\s]+:)[^@\s]+@")
_PASSWORD_KV = re.compile(r"(password\s*=\s*)\S+", re.IGNORECASE)


class UserError(Exception):
    """A failure the user can fix: printed as one line, exit code 2."""

    exit_code = 2


class FlowError(UserError):
    """The flow stopped on an unexpected error: one line, exit code 1, detail in the log."""

    exit_code = 1


def redact(text: str) -> str:
    return _PASSWORD_KV.sub(r"\1***", _PASSWORD_IN_URL.sub(r"\1***@", text))


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
