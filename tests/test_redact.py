"""Secrets never printed: every form of a PostgreSQL password that libpq accepts is redacted
by the one function the whole CLI prints through (flows.logs.redact)."""

from __future__ import annotations

from urllib.parse import quote

from hypothesis import given, settings
from hypothesis import strategies as st

from flows.logs import redact

# libpq passwords: anything printable; "pw secret", quotes and backslashes included
passwords = st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7e) | st.just(" "),
                    min_size=4, max_size=24).filter(lambda p: p.strip() == p and p.strip())
words = st.from_regex(r"[a-z][a-z0-9_]{0,10}", fullmatch=True)


def keyword_value(value: str) -> str:
    """As libpq's keyword form wants it: quoted, with \\ and ' escaped, when it must be."""
    if value and not any(c in value for c in " '\\"):
        return value
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def bare(value: str) -> str:
    """As written without quoting (a URL pasted raw, a shell variable): no space, no quote."""
    return "".join(c for c in value if c not in " '\"\\") or "x"


@st.composite
def dsns(draw) -> tuple[str, str]:
    """(a DSN with its password written as libpq reads it, the same DSN with *** instead)."""
    password, user, host, db = draw(passwords), draw(words), draw(words), draw(words)
    form = draw(st.sampled_from(["url", "url-raw", "url-query", "keyword", "env"]))
    if form == "url":
        template, written = f"postgresql://{user}:{{}}@{host}:5432/{db}", quote(password, safe="")
    elif form == "url-raw":  # pasted unencoded (a URL has no spaces)
        template, written = f"postgresql://{user}:{{}}@{host}/{db}", bare(password)
    elif form == "url-query":
        template = f"postgresql://{host}/{db}?user={user}&password={{}}&sslmode=require"
        written = quote(password, safe="")
    elif form == "env":
        template, written = f"PGPASSWORD={{}} psql -h {host}", bare(password)
    else:
        parts = draw(st.permutations([f"host={host}", f"user={user}", f"dbname={db}", "password={}"]))
        template, written = " ".join(parts), keyword_value(password)
    return template.replace("{}", written), template.replace("{}", "***")


@settings(max_examples=500)
@given(dsn=dsns(), before=st.sampled_from(["", "cannot connect to ", "error: "]),
       after=st.sampled_from(["", " - connection refused", " (retrying)"]))  # a bare value ends at a space
def test_every_form_of_a_password_is_redacted_and_nothing_else(dsn, before, after):
    text, expected = dsn
    assert redact(before + text + after) == before + expected + after


def test_redaction_keeps_what_is_not_secret():
    assert redact("postgresql://tally:pw@127.0.0.1:5432/tally") == "postgresql://tally:***@127.0.0.1:5432/tally"
    assert redact("host=db password='pw secret' user=u") == "host=db password=*** user=u"
    assert redact("no secret here") == "no secret here"
