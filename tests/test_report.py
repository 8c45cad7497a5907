"""`tally report` on a real namespace: the numbers are the store's, and the page works offline.

The namespace is made by the real flow (`tally run`) from a generated day on the
session's Tansu broker and PostgreSQL.  The page's numbers are checked against
counts computed here independently (direct SQL, and Python over the rows read
back), PostgreSQL and Parquet must give the same figures, and the same namespace
must give the same bytes.  Then a real headless Chromium opens the page from a
file:// URL: no console message, no request besides the page itself, every chart
drawn with the right number of bars, the verdict and the oldest exception shown.
"""

from __future__ import annotations

import html
import re
import shutil
import tempfile
from collections import Counter
from dataclasses import dataclass
from datetime import timedelta
from decimal import Decimal
from pathlib import Path

import psycopg
import pytest

from state.currency import exponent
from tests.flow_helpers import publish_day, read_decisions, tally

PAYMENTS = 1500
NAMESPACE = "report_day"
SECTIONS_OF_DATA = ("summary", "over-time", "by-sources", "by-account", "oldest-open")


@dataclass
class Made:
    work: Path
    data_dir: Path
    pg_dsn: str


@pytest.fixture(scope="module")
def made(broker, pg_dsn):
    """A day run through the real flow into NAMESPACE (PostgreSQL and Parquet)."""
    work = Path(tempfile.mkdtemp(prefix="tally-report-"))
    _topics, config = publish_day(broker, work, PAYMENTS, seed=33)
    tally("run", "--brokers", broker, "--pg", pg_dsn, "--data-dir", str(work / "data"),
          "--namespace", NAMESPACE, "--until-end", "--config", str(config))
    yield Made(work, work / "data", pg_dsn)
    shutil.rmtree(work, ignore_errors=True)


def make_page(made: Made, out: Path, *extra: str, expect: int = 0):
    return tally("report", "--namespace", NAMESPACE, "--data-dir", str(made.data_dir),
                 "--pg", made.pg_dsn, "--out", str(out), *extra, expect=expect)


@pytest.fixture(scope="module")
def pages(made):
    """The page from PostgreSQL (twice) and from Parquet, with what each run printed."""
    out = made.work / "pages"
    runs = {name: make_page(made, out / f"{name}.html", *extra)
            for name, extra in (("postgres", ()), ("again", ()),
                                ("parquet", ("--store", "parquet")))}
    return {name: (out / f"{name}.html", run.stdout) for name, run in runs.items()}


# ----------------------------------------------------------------------------- reading the page


def section(page: str, key: str) -> str:
    return re.search(rf'<section id="{key}".*?</section>', page, re.S).group(0)


def summary_counts(page: str) -> dict[str, int]:
    rows = re.findall(r'data-label="([^"]+)"><th>[^<]*</th><td class="num" data-value="(\d+)"',
                      section(page, "summary"))
    return {html.unescape(label): int(n) for label, n in rows}


def bars(page: str) -> dict[str, dict[str, int]]:
    """Bucket (ISO) -> label -> decisions, as drawn."""
    found = {}
    for bucket, inside in re.findall(r'<g class="bar" data-bucket="([^"]+)"[^>]*>(.*?)</g>',
                                     section(page, "over-time"), re.S):
        found[bucket] = {html.unescape(k): int(v) for k, v in re.findall(
            r'<rect class="segment" data-label="([^"]+)" data-count="(\d+)"', inside)}
    return found


def rate_rows(page: str, key: str) -> list[tuple[str, int, int]]:
    return [(html.unescape(name), int(d), int(m)) for name, d, m in re.findall(
        r'<g class="row" data-name="([^"]*)" data-decisions="(\d+)" data-matches="(\d+)"',
        section(page, key))]


def listed_exceptions(page: str) -> list[str]:
    return re.findall(r'<tr data-decision="([0-9a-f]+)"', section(page, "oldest-open"))


# ----------------------------------------------------------------------------- the store, independently


def sql_rows(dsn: str, query: str) -> list[tuple]:
    with psycopg.connect(dsn) as conn:
        conn.execute("SET TIME ZONE 'UTC'")
        return conn.execute(query).fetchall()


def expected_order(rows: list[dict]) -> list[str]:
    """Open exceptions as tally review list ranks them, computed here in Python."""
    def key(r):
        major = (None if r["amount_minor"] is None else
                 Decimal(abs(r["amount_minor"])).scaleb(-(exponent(r["currency"] or "") or 0)))
        return (r["day"], major is None, -(major or 0), r["window_end"], r["decision_id"])
    return [r["decision_id"] for r in sorted(
        (r for r in rows if r["review_status"] == "open"), key=key)]


def combination(members: list[str]) -> str:
    return "+".join(sorted({m.split(":", 1)[0] for m in members}))


def rates(rows: list[dict], name) -> list[tuple[str, int, int]]:
    decisions, matches = Counter(), Counter()
    for r in rows:
        decisions[name(r)] += 1
        matches[name(r)] += r["kind"] == "match"
    return sorted(((k, decisions[k], matches[k]) for k in decisions), key=lambda t: (-t[1], t[0]))


# ----------------------------------------------------------------------------- without a browser


def test_the_page_counts_what_the_store_holds(made, pages):
    page = pages["postgres"][0].read_text()
    counts = dict(sql_rows(made.pg_dsn, f"SELECT coalesce(exception_kind, 'tier ' || tier),"
                                        f" count(*) FROM {NAMESPACE}.decisions GROUP BY 1"))
    (total, matched, open_), = sql_rows(made.pg_dsn, (
        f"SELECT count(*), count(*) FILTER (WHERE kind = 'match'), count(*) FILTER"
        f" (WHERE review_status = 'open') FROM {NAMESPACE}.decisions"))
    shown = summary_counts(page)
    assert {k: v for k, v in shown.items() if k in counts} == counts
    assert len(counts) >= 6, f"a generated day has tiers and many exception kinds: {counts}"
    assert (shown["decisions"], shown["matches"], shown["exceptions"], shown["open"]) == \
        (total, matched, total - matched, open_)
    rate = Decimal(matched * 100) / Decimal(total)
    assert f">{rate.quantize(Decimal('0.1'))}%</strong>" in section(page, "summary")
    assert f"{total:,} decisions" in pages["postgres"][1] and "verdict CONSERVED" in pages["postgres"][1]


def test_one_bar_per_hour_with_the_stores_counts(made, pages):
    drawn = bars(pages["postgres"][0].read_text())
    per_hour = sql_rows(made.pg_dsn, (
        f"SELECT to_char(date_trunc('hour', window_end), 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"'),"
        f" coalesce(exception_kind, 'tier ' || tier), count(*) FROM {NAMESPACE}.decisions"
        f" GROUP BY 1, 2"))
    (first, last), = sql_rows(made.pg_dsn, f"SELECT min(window_end), max(window_end)"
                                           f" FROM {NAMESPACE}.decisions")
    assert last - first <= timedelta(days=2), "a generated day is drawn per hour"
    hours = (last.replace(minute=0, second=0, microsecond=0)
             - first.replace(minute=0, second=0, microsecond=0)) // timedelta(hours=1) + 1
    assert len(drawn) == hours  # empty hours keep their place on the axis
    expected: dict[str, dict[str, int]] = {}
    for hour, name, n in per_hour:
        expected.setdefault(hour, {})[name] = n
    assert {h: c for h, c in drawn.items() if c} == expected


def test_match_rates_per_source_combination_and_account(made, pages):
    page = pages["postgres"][0].read_text()
    rows = read_decisions(made.pg_dsn, NAMESPACE)
    assert rate_rows(page, "by-sources") == rates(rows, lambda r: combination(r["member_event_ids"]))
    by_account = rates([r for r in rows if r["account"] is not None], lambda r: r["account"])
    assert rate_rows(page, "by-account") == by_account[:20]
    full = [r for r in rate_rows(page, "by-sources") if r[0] == "bank+ledger+processor"]
    assert full and full[0][2] > 0.9 * full[0][1], "most three-source decisions are matches"


def test_the_oldest_open_exceptions_in_review_order(made, pages):
    from sinks import review
    listed = listed_exceptions(pages["postgres"][0].read_text())
    assert listed == expected_order(read_decisions(made.pg_dsn, NAMESPACE))[:50]
    # the report's own query keeps `tally review list`'s order
    assert listed == [r["decision_id"] for r in review.open_exceptions(made.pg_dsn, NAMESPACE)]


def test_postgres_and_parquet_give_the_same_figures(pages):
    postgres, parquet = (pages[k][0].read_text() for k in ("postgres", "parquet"))
    for key in SECTIONS_OF_DATA:
        assert section(postgres, key) == section(parquet, key), key
    assert "Read from PostgreSQL schema report_day" in postgres
    assert "Parquet keeps no review status" in parquet
    # the PostgreSQL page audits both stores and compares them; Parquet's audits itself
    assert section(postgres, "audit").count("stores agree on") == 2
    assert "Verdict: CONSERVED" in section(parquet, "audit")


def test_the_same_namespace_gives_the_same_bytes(pages):
    first, again = (pages[k][0].read_bytes() for k in ("postgres", "again"))
    assert first == again
    text = first.decode()
    assert "<script" not in text and "://" not in text and "<link" not in text, \
        "self-contained: no script, no URL, no external resource"
    assert text.count('<svg class="chart"') == 3 and text.count("<details>") == 3
    assert pages["postgres"][1].startswith(f"wrote {pages['postgres'][0]} ({len(first):,} bytes)")


def test_an_audit_that_cannot_run_says_why(made, tmp_path):
    empty = tmp_path / "elsewhere"
    (empty / NAMESPACE).mkdir(parents=True)
    result = tally("report", "--namespace", NAMESPACE, "--data-dir", str(empty), "--pg",
                   made.pg_dsn, "--out", str(tmp_path / "page.html"))
    page = (tmp_path / "page.html").read_text()
    assert "Verdict: NOT AUDITED" in page and "no recovery/shape.json" in section(page, "audit")
    assert "verdict NOT AUDITED" in result.stdout
    assert summary_counts(page)["decisions"] > 0


@pytest.mark.parametrize("store, says", [("postgres", "has no decisions in PostgreSQL"),
                                         ("parquet", "has no decisions under")])
def test_a_missing_namespace_is_one_line(made, tmp_path, store, says):
    result = tally("report", "--namespace", "never_written", "--store", store, "--data-dir",
                   str(made.data_dir), "--pg", made.pg_dsn, "--out", str(tmp_path / "x.html"),
                   expect=2)
    assert result.stderr.strip().count("\n") == 0 and says in result.stderr
    assert result.stderr.startswith("tally: namespace never_written ")
    assert not (tmp_path / "x.html").exists()


# ----------------------------------------------------------------------------- in a real browser


@pytest.fixture(scope="module")
def browser():
    from tests.browser import chromium
    with chromium() as driver:
        yield driver


@pytest.fixture(scope="module")
def opened(browser, pages):
    """The PostgreSQL page loaded from file://, and what the browser logged while loading it."""
    from tests.browser import console, requested_urls
    browser.get("about:blank")
    console(browser), requested_urls(browser)  # forget the start page's own traffic
    url = pages["postgres"][0].resolve().as_uri()
    browser.get(url)
    return url, console(browser), requested_urls(browser)


def rendered_size(driver, selector: str) -> tuple[float, float]:
    box = driver.execute_script(
        "const r = document.querySelector(arguments[0]).getBoundingClientRect();"
        " return [r.width, r.height];", selector)
    return box[0], box[1]


def test_the_page_loads_offline_without_errors(opened, browser):
    url, messages, requests = opened
    assert messages == [], f"the console should stay silent: {messages}"
    assert requests == [url], f"nothing but the page itself may be requested: {requests}"
    assert browser.execute_script("return performance.getEntriesByType('resource').length") == 0
    assert browser.title == f"Tally report: namespace {NAMESPACE}"


def test_every_chart_is_drawn_with_its_bars(opened, browser, pages):
    from selenium.webdriver.common.by import By
    page = pages["postgres"][0].read_text()
    for key in ("over-time", "by-sources", "by-account"):
        width, height = rendered_size(browser, f"#{key}-chart")
        assert width > 300 and height > 50, (key, width, height)
        chart = browser.find_element(By.ID, f"{key}-chart")
        assert chart.get_attribute("aria-labelledby") == f"{key}-title {key}-desc"
    hours = bars(page)
    drawn = browser.find_elements(By.CSS_SELECTOR, "#over-time-chart g.bar")
    assert len(drawn) == len(hours)
    segments = browser.find_elements(By.CSS_SELECTOR, "#over-time-chart rect.segment")
    assert len(segments) == sum(len(c) for c in hours.values())
    assert min(rendered_size(browser, f'#over-time-chart g.bar[data-bucket="{h}"]')[1]
               for h, c in hours.items() if c) > 0
    for key in ("by-sources", "by-account"):
        rows = browser.find_elements(By.CSS_SELECTOR, f"#{key}-chart g.row")
        assert len(rows) == len(rate_rows(page, key)) > 0


def test_the_verdict_and_the_oldest_exception_are_shown(opened, browser, made):
    from selenium.webdriver.common.by import By

    from flows.checks.review import ID_SHOWN
    verdict = browser.find_element(By.ID, "verdict")
    assert verdict.is_displayed() and verdict.text == "Verdict: CONSERVED"
    rows = read_decisions(made.pg_dsn, NAMESPACE)
    oldest = next(r for r in rows if r["decision_id"] == expected_order(rows)[0])
    first = browser.find_element(By.CSS_SELECTOR, "#oldest-open-table tbody tr")
    cells = [c.text for c in first.find_elements(By.TAG_NAME, "td")]
    exp = exponent(oldest["currency"])
    assert cells == [oldest["window_end"].strftime("%Y-%m-%d %H:%M:%SZ"), oldest["exception_kind"],
                     f"{Decimal(oldest['amount_minor']).scaleb(-exp):,.{exp}f} {oldest['currency']}",
                     oldest["account"], oldest["reason"], oldest["decision_id"][:ID_SHOWN]]


def test_a_screenshot_shows_a_real_page(opened, browser, tmp_path):
    from tests.browser import full_page_png, png_facts
    png = full_page_png(browser)
    shot = tmp_path / "report.png"
    shot.write_bytes(png)
    facts = png_facts(browser, png)
    assert facts["width"] >= 1000 and facts["height"] > 3000, facts
    assert facts["colours"] > 50, f"a page of charts has many colours: {facts}"
    assert shot.stat().st_size > 100_000


# ----------------------------------------------------------------------------- edge cases, no services


def synthetic(days: int, reason: str = "no counterpart"):
    """Figures of `days` days (a bar every third day) with one exception, none from a store."""
    from datetime import datetime, timezone

    from sinks.report import Figures, Rate, bucket_unit, floor
    start = datetime(2026, 3, 1, 6, tzinfo=timezone.utc)
    end = start + timedelta(days=days)
    unit = bucket_unit(start, end)
    moments = [start + timedelta(days=d) for d in range(0, days + 1, 3)]
    row = {"decision_id": "ab" * 16, "day": start.date(), "exception_kind": "<b>kind</b>",
           "account": "ACC\x1b[31m", "currency": "EUR", "amount_minor": -12345,
           "window_end": start, "reason": reason, "member_event_ids": []}
    return Figures(namespace="t_edge", store="a test", outcomes={"tier 1": 7, "late": 2},
                   first_start=start, first_end=start, last_end=end, unit=unit,
                   over_time={floor(m, unit): {"tier 1": 2, "late": 1} for m in moments},
                   by_sources=[Rate("bank+ledger", 7, 7), Rate("", 2, 0)],
                   by_account=[Rate("A&B", 9, 7)], accounts=1, oldest_open=[row],
                   open_exceptions=2)


def test_hostile_text_stays_inert_and_long_spans_are_drawn_per_day():
    from flows.checks.report import Verdict, render
    page = render(synthetic(10, reason='</td><script>alert(1)</script>\x00'), Verdict(None, "off"))
    assert "<script>" not in page and "&lt;script&gt;" in page and "\\x00" in page
    assert "\x1b" not in page and "ACC\\x1b[31m" in page and "&lt;b&gt;kind&lt;/b&gt;" in page
    assert len(bars(page)) == 11, "ten days and a bit: one bar per day, empty days too"
    assert "Decisions per day by outcome" in page and "-123.45 EUR" in page
    assert rate_rows(page, "by-account") == [("A&B", 9, 7)]
    assert "(no member event)" in page and "Verdict: NOT AUDITED" in page


@pytest.mark.parametrize("span, unit", [(timedelta(hours=47), "hour"), (timedelta(days=3), "day"),
                                        (timedelta(days=119), "day"), (timedelta(days=700), "month"),
                                        (timedelta(days=365 * 56), "year")])
def test_the_bucket_follows_the_span(span, unit):
    from datetime import datetime, timezone

    from sinks.report import bucket_unit, buckets
    first = datetime(1970, 1, 1, tzinfo=timezone.utc)  # an invalid record's window may be 0
    assert bucket_unit(first, first + span) == unit
    assert len(buckets(first, first + span, unit)) <= 121


def test_rates_are_exact():
    from flows.checks.report import nice_top, percent
    assert percent(2, 3) == "66.7%" and percent(1, 8) == "12.5%" and percent(0, 0) == "-"
    assert percent(999_999_999, 1_000_000_000) == "100.0%" and percent(1, 2000) == "0.0%"
    assert nice_top(167) == (200, 50) and nice_top(1) == (1, 1) and nice_top(0) == (1, 1)


def test_an_empty_namespace_gives_a_page(pg_dsn, tmp_path):
    from sinks.postgres import prepare_namespace
    prepare_namespace(pg_dsn, "report_empty")
    result = tally("report", "--namespace", "report_empty", "--data-dir", str(tmp_path), "--pg",
                   pg_dsn, "--out", str(tmp_path / "empty.html"))
    page = (tmp_path / "empty.html").read_text()
    assert "No decisions yet." in page and "No open exceptions." in page
    assert "0 decisions" in result.stdout and "<svg" not in page


# ----------------------------------------------------------------------------- settlement

SETTLEMENT_CONFIG = Path(__file__).parent.parent / "docs" / "examples" / "settlement.toml"


def settlement_decisions():
    """Hand-made decisions of the example config's relations over two days."""
    from datetime import datetime, timezone

    from state.decision import Decision, decision_id
    positions = iter(range(10_000))

    def made(day: int, relation, kind: str, members: list[str], exception_kind=None,
             currency="EUR", fee=None) -> Decision:
        end = int(datetime(2026, 11, 20 + day, 12, tzinfo=timezone.utc).timestamp()) * 10**6
        refs = [f"recon.{m.split(':')[0]}:0:{next(positions)}" for m in members]
        return Decision(decision_id=decision_id(kind, members, refs, relation), kind=kind,
                        tier=1 if kind == "match" else None, exception_kind=exception_kind,
                        account="A1", currency=currency, amount_minor=1000, confidence=None,
                        member_event_ids=members, member_refs=refs, window_start=end - 10**6,
                        window_end=end, relation=relation, fee_minor=fee)

    missing = "missing_counterpart"
    return [
        made(1, "payments", "match", ["ledger:l1", "processor:p1"], fee=30),
        made(1, "payments", "match", ["ledger:l2", "processor:p2"], fee=45),
        made(1, "payments", "match", ["ledger:l3", "processor:p3"], currency="USD", fee=100),
        made(1, "payments", "match", ["ledger:l4", "processor:p4"]),  # no fee said
        made(1, "payments", "exception", ["ledger:l5"], missing, fee=7),  # not a match: no fee
        made(1, "batches", "match", ["processor:p1", "processor:p2", "processor:pay1"]),
        made(1, "batches", "exception", ["processor:p3", "processor:pay3"], "settlement_mismatch"),
        made(1, "deposits", "match", ["processor:pay1", "bank:c1"]),
        made(1, "deposits", "exception", ["bank:c9"], missing),  # a credit nobody explains
        made(1, "deposits", "exception", ["processor:pay2"], missing),  # a payout, no credit yet
        made(2, "deposits", "exception", ["bank:c10"], missing),
        made(2, "batches", "match", ["processor:p4", "processor:pay4"]),
        made(2, None, "exception", ["bank:x"], "invalid"),  # decided by no relation
    ]


@pytest.fixture(scope="module")
def settlement_pages(pg_dsn):
    """The example config's decisions in both stores, and the page of each (no audit)."""
    from sinks.parquet import decisions_table, write_by_day
    from sinks.postgres import PgWriter
    work = Path(tempfile.mkdtemp(prefix="tally-report-settle-"))
    decisions = settlement_decisions()
    with PgWriter(pg_dsn, "report_settle") as writer:
        writer.ensure_schema()
        writer.write(decisions, [])
    write_by_day(decisions_table(decisions), work / "data" / "report_settle" / "decisions",
                 "part.parquet")
    pages = {}
    for store in ("postgres", "parquet"):
        out = work / f"{store}.html"
        tally("report", "--namespace", "report_settle", "--data-dir", str(work / "data"),
              "--pg", pg_dsn, "--out", str(out), "--store", store, "--no-audit",
              "--config", str(SETTLEMENT_CONFIG))
        pages[store] = out.read_text()
    yield pages
    shutil.rmtree(work, ignore_errors=True)


def settlement_figures(page: str) -> tuple[list, dict, dict]:
    """(relations, day -> figure -> count, day -> fees tag) as the page states them."""
    found = section(page, "settlement")
    relations = [(html.unescape(n), int(d), int(m)) for n, d, m in re.findall(
        r'<tr data-relation="([^"]*)" data-decisions="(\d+)" data-matches="(\d+)"', found)]
    days, fees = {}, {}
    for day, row in re.findall(r'<tr data-day="([^"]+)">(.*?)</tr>', found, re.S):
        days[day] = {html.unescape(k): int(v) for k, v in
                     re.findall(r'data-figure="([^"]+)" data-value="(\d+)"', row)}
        fees[day] = re.search(r'data-fees="([^"]*)"', row).group(1)
    return relations, days, fees


def test_settlement_figures_per_relation_and_day(settlement_pages):
    relations, days, fees = settlement_figures(settlement_pages["postgres"])
    assert relations == [("payments", 5, 4), ("batches", 3, 2), ("deposits", 4, 1), ("", 1, 0)]
    assert days == {
        "2026-11-21": {"payouts settled": 1, "settlement mismatches": 1, "payouts deposited": 1,
                       "unexplained bank credits": 1},
        "2026-11-22": {"payouts settled": 1, "settlement mismatches": 0, "payouts deposited": 0,
                       "unexplained bank credits": 1}}
    assert fees == {"2026-11-21": "EUR:75 USD:100", "2026-11-22": ""}
    assert "0.75 EUR" in settlement_pages["postgres"] and "1.00 USD" in settlement_pages["postgres"]
    assert settlement_figures(settlement_pages["parquet"]) == (relations, days, fees)
    assert "unknown-relations" not in settlement_pages["postgres"]


def test_no_settlement_section_without_relations(pages):
    for path, _ in pages.values():
        assert 'id="settlement"' not in path.read_text()


def test_relations_the_config_does_not_name_are_listed_with_a_note():
    from datetime import date

    from flows.checks.report import settlement_section
    from sinks.report import settlement
    from state.relations import Relation
    row = {"day": date(2026, 11, 21), "relation": "renamed", "kind": "match",
           "exception_kind": None, "currency": "EUR", "sources": "bank+ledger", "n": 3,
           "fee_minor": 12}
    found = settlement([row], (Relation(name="payments", rule="match"),))
    assert [(r.name, r.rule, r.decisions) for r in found.relations] == \
        [("payments", "match", 0), ("renamed", "", 3)]
    assert found.unknown == ["renamed"] and not found.days and not found.fees
    page = settlement_section(type("F", (), {"settlement": found}))
    assert 'id="unknown-relations"' in page and "No settlement decisions." in page
