"""Passwords out of libpq connection strings: what every printed or logged line passes through."""

from __future__ import annotations

import re

# scheme://user:PASSWORD@host: up to the last @ of the word, as libpq reads it
_PASSWORD_IN_URL = re.compile(r"(\b[A-Za-z][A-Za-z0-9+.-]*://[^\s:/@]*:)[^\s]*@")
# password=... or PGPASSWORD=...: a quoted value (with \' and \\ escapes, the closing quote
# optional) or a bare one up to a space; in a URL's query, up to the next parameter
_PASSWORD_KV = re.compile(r"(?<![?&])(password\s*=\s*)(?:'(?:[^'\\]|\\.)*'?|\S+)", re.IGNORECASE)
_PASSWORD_PARAM = re.compile(r"([?&]password=)[^\s&#]*", re.IGNORECASE)


def redact(text: str) -> str:
    """`text` with every password libpq accepts replaced by ***: in a URL's user info, as
    a keyword (quoted or bare, PGPASSWORD too) or as a URL query parameter."""
    text = _PASSWORD_IN_URL.sub(r"\1***@", text)
    return _PASSWORD_KV.sub(r"\1***", _PASSWORD_PARAM.sub(r"\1***", text))
