"""Structured logs on stderr (key=value), and the one-line user error.

Secrets never reach a log: DSNs are passed through `redact` before printing.
"""

from __future__ import annotations

import logging
import os
import re
import sys

log = logging.getLogger("tally")
# scheme://user:PASSWORD@host: up to the last @ of the word, as libpq reads it
_PASSWORD_IN_URL = re.compile(r"(\b[A-Za-z][A-Za-z0-9+.-]*://[^\s:/@]*:)[^\s]*@")
# password=... or PGPASSWORD=...: a quoted value (with \' and \\ escapes, the closing quote
# optional) or a bare one up to a space; in a URL's query, up to the next parameter
_PASSWORD_KV = re.compile(r"(?<![?&])(password\s*=\s*)(?:'(?:[^'\\]|\\.)*'?|\S+)", re.IGNORECASE)
_PASSWORD_PARAM = re.compile(r"([?&]password=)[^\s&#]*", re.IGNORECASE)
# C0 and C1 control characters: what could rewrite an operator's terminal
_CONTROL = {c: f"\\x{c:02x}" for c in (*range(0x20), *range(0x7f, 0xa0))}


class UserError(Exception):
    """A failure the user can fix: printed as one line, exit code 2."""

    exit_code = 2


class FlowError(UserError):
    """The flow stopped on an unexpected error: one line, exit code 1, detail in the log."""

    exit_code = 1


def redact(text: str) -> str:
    """`text` with every password libpq accepts replaced by ***: in a URL's user info, as
    a keyword (quoted or bare, PGPASSWORD too) or as a URL query parameter."""
    text = _PASSWORD_IN_URL.sub(r"\1***@", text)
    return _PASSWORD_KV.sub(r"\1***", _PASSWORD_PARAM.sub(r"\1***", text))


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
