"""`tally report`: one self-contained HTML page about a namespace, for people.

    tally report --namespace live --out report.html [--store parquet]

The page shows the namespace's decision windows, the summary numbers, the audit
verdict, decisions over time stacked by match tier and exception kind, for a
config with relations the settlement figures (per relation, and per day the
payouts settled and deposited, the mismatches, the unexplained bank credits and
the fees withheld), the match rate per source combination and per busiest
account, and the oldest open exceptions.  The figures come from sinks.report (GROUP BY in PostgreSQL, pyarrow
over Parquet); this module only draws them.

The page works offline: charts are inline SVG drawn here, with a <title>, a
<desc> and a data table in a <details> each; there is no script, no external
font, stylesheet or image, and a Content-Security-Policy forbids fetching any.
It is a function of the namespace's data alone: no clock, no random ids, and
every coordinate is computed with integers, so the same data gives the same
bytes.
"""

from __future__ import annotations

import html
from dataclasses import dataclass
from decimal import ROUND_HALF_EVEN, Decimal
from pathlib import Path


STORES = ("postgres", "parquet")
TOP_ACCOUNTS = 20
OPEN_SHOWN = 50

# Colour per label: greens for match tiers, distinct hues for exception kinds.
COLOURS = {"tier 1": "#1b7837", "tier 2": "#5aae61", "tier 3": "#a6dba0",
           "missing_counterpart": "#d95f02", "amount_mismatch": "#e7298a",
           "ambiguous": "#7570b3", "review": "#e6ab02", "duplicate": "#a6761d",
           "late": "#666666", "clock_skew": "#1f78b4", "invalid": "#b2182b",
           "settlement_mismatch": "#6a3d9a"}
OTHER_COLOUR = "#9e9e9e"
MATCHED_COLOUR, UNMATCHED_COLOUR = COLOURS["tier 1"], COLOURS["missing_counterpart"]
_CONTROL = {c: f"\\x{c:02x}" for c in (*range(0x20), *range(0x7f, 0xa0)) if c not in (0x0a,)}

STYLE = """
body{font:15px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,"Helvetica Neue",Arial,sans-serif;
color:#1d1d1f;background:#fff;margin:0 auto;max-width:1000px;padding:16px 24px 48px}
h1{font-size:26px;margin:8px 0 4px}h2{font-size:19px;margin:32px 0 8px;border-bottom:1px solid #ddd}
code{font-family:ui-monospace,"SFMono-Regular",Menlo,Consolas,monospace;font-size:13px}
h1 code{font-size:inherit}
table{border-collapse:collapse;margin:8px 0}th,td{padding:3px 10px;text-align:left;
vertical-align:top;border-bottom:1px solid #eee}th{font-weight:600}
td.num,th.num{text-align:right;font-variant-numeric:tabular-nums}
.sub th{font-weight:400;padding-left:28px}
.verdict{font-size:20px;font-weight:700;padding:8px 14px;border-radius:6px;display:inline-block}
.verdict.ok{background:#e6f4ea;color:#14532d}.verdict.bad{background:#fde8e8;color:#8b1111}
.verdict.none{background:#f1f1f1;color:#444}
.stores{display:flex;flex-wrap:wrap;gap:0 40px;align-items:flex-start}
.stores th{font-weight:400}.stores thead th{font-weight:600}caption{text-align:left;font-weight:600;padding:4px 10px}
svg.chart{display:block;max-width:100%;height:auto;margin:8px 0}
svg.chart text{font:12px system-ui,-apple-system,"Segoe UI",Roboto,Arial,sans-serif;fill:#333}
svg.chart .axis{stroke:#999;stroke-width:1}svg.chart .grid{stroke:#e5e5e5;stroke-width:1}
ul.legend{list-style:none;padding:0;margin:4px 0;display:flex;flex-wrap:wrap;gap:4px 18px}
.swatch{display:inline-block;width:12px;height:12px;margin-right:6px;vertical-align:-1px;
border-radius:2px}
details{margin:4px 0 8px}summary{cursor:pointer;color:#333}
.note{color:#555}.empty{color:#555;font-style:italic}
table.exceptions td{font-size:13px}.nowrap{white-space:nowrap}
table.exceptions caption{font-weight:400}
"""


# ----------------------------------------------------------------------------- formatting


def text(value) -> str:
    """Escaped for HTML, control characters shown as \\xNN (a hostile value stays inert)."""
    return html.escape(str(value).translate(_CONTROL), quote=True)


def count(n: int) -> str:
    return f"{n:,}"


def percent(part: int, whole: int) -> str:
    """part/whole as a percentage with one decimal, computed in Decimal; '-' for 0/0."""
    if not whole:
        return "-"
    rate = (Decimal(part) * 100 / Decimal(whole)).quantize(Decimal("0.1"), ROUND_HALF_EVEN)
    return f"{rate}%"


def utc(moment) -> str:
    return "" if moment is None else moment.strftime("%Y-%m-%d %H:%M:%SZ")


def iso(moment) -> str:
    return "" if moment is None else moment.strftime("%Y-%m-%dT%H:%M:%SZ")


BUCKET_FORMATS = {"hour": ("%Y-%m-%d %H:00", "%m-%d %H:00"), "day": ("%Y-%m-%d", "%Y-%m-%d"),
                  "month": ("%Y-%m", "%Y-%m"), "year": ("%Y", "%Y")}


def bucket_name(moment, unit: str, short: bool = False) -> str:
    return moment.strftime(BUCKET_FORMATS[unit][short])


def colour(name: str) -> str:
    return COLOURS.get(name, OTHER_COLOUR)


def px(tenths: int) -> str:
    """A coordinate kept in tenths of a pixel (integers), written as a decimal."""
    sign = "-" if tenths < 0 else ""
    whole, frac = divmod(abs(tenths), 10)
    return f"{sign}{whole}" + (f".{frac}" if frac else "")


def scaled(value: int, top: int, length: int) -> int:
    """value / top of `length` tenths of a pixel, rounded down (integer arithmetic)."""
    return value * length // top if top else 0


def nice_top(largest: int) -> tuple[int, int]:
    """(axis top, tick step): a step of 1, 2 or 5 x 10^k giving at most 5 ticks."""
    step = 1
    while True:
        for factor in (1, 2, 5):
            if largest <= 5 * step * factor:
                chosen = step * factor
                return max(-(-largest // chosen) * chosen, chosen), chosen
        step *= 10


# ----------------------------------------------------------------------------- charts


@dataclass(frozen=True)
class Chart:
    """The accessible frame every chart shares: name, description, table fallback."""

    key: str  # element id prefix, a fixed name
    title: str
    description: str


def svg(chart: Chart, width: int, height: int, body: list[str]) -> str:
    return (f'<svg class="chart" id="{chart.key}-chart" role="img" '
            f'aria-labelledby="{chart.key}-title {chart.key}-desc" '
            f'viewBox="0 0 {width} {height}" width="{width}" height="{height}">\n'
            f'<title id="{chart.key}-title">{text(chart.title)}</title>\n'
            f'<desc id="{chart.key}-desc">{text(chart.description)}</desc>\n'
            + "\n".join(body) + "\n</svg>")


def data_table(summary: str, header: list[str], rows: list[list[str]], numeric_from: int) -> str:
    """The chart's numbers as a table, folded away in <details>; cells already escaped."""
    head = "".join(f'<th{" class=num" if i >= numeric_from else ""}>{h}</th>'
                   for i, h in enumerate(header))
    body = "\n".join("<tr>" + "".join(
        f'<td{" class=num" if i >= numeric_from else ""}>{cell}</td>' for i, cell in enumerate(row))
        + "</tr>" for row in rows)
    return (f"<details><summary>{text(summary)}</summary>\n<table>\n<thead><tr>{head}</tr></thead>"
            f"\n<tbody>\n{body}\n</tbody>\n</table>\n</details>")


def legend(names: list[str], colours) -> str:
    items = "".join(f'<li><span class="swatch" style="background:{colours(n)}"></span>'
                    f"{text(n)}</li>" for n in names)
    return f'<ul class="legend" aria-hidden="true">{items}</ul>'


# Geometry of the time chart, in pixels.
TIME_W, TIME_H, TIME_LEFT, TIME_RIGHT, TIME_TOP, TIME_BOTTOM = 960, 320, 64, 40, 16, 64
TIME_LABELS = 10  # at most this many bucket names under the bars


def time_chart(f, moments: list) -> str:
    """Stacked bars of decisions per bucket of window_end, one bar per bucket."""
    totals = [sum(f.over_time.get(m, {}).values()) for m in moments]
    top, tick = nice_top(max(totals))
    plot_w, plot_h = (TIME_W - TIME_LEFT - TIME_RIGHT) * 10, (TIME_H - TIME_TOP - TIME_BOTTOM) * 10
    slot = plot_w // len(moments)
    body = time_axes(top, tick, plot_w, plot_h, f.unit)
    every = -(-len(moments) // TIME_LABELS)
    for i, moment in enumerate(moments):
        x = TIME_LEFT * 10 + i * slot
        body.append(time_bar(moment, f.over_time.get(moment, {}), f.unit, x, slot, top, plot_h))
        if i % every == 0:
            body.append(f'<text x="{px(x + slot // 2)}" y="{TIME_H - TIME_BOTTOM + 18}" '
                        f'text-anchor="middle">{text(bucket_name(moment, f.unit, True))}</text>')
    busiest = max(range(len(moments)), key=lambda i: (totals[i], -i))
    chart = Chart("over-time", f"Decisions per {f.unit} by outcome",
                  f"Stacked bars: decisions per {f.unit} of window end (UTC), "
                  f"{len(moments)} {f.unit}s from {bucket_name(moments[0], f.unit)} to "
                  f"{bucket_name(moments[-1], f.unit)}, each split by match tier and exception "
                  f"kind; the busiest {f.unit} is {bucket_name(moments[busiest], f.unit)} with "
                  f"{count(totals[busiest])} decisions.")
    return svg(chart, TIME_W, TIME_H, body)


def time_axes(top: int, tick: int, plot_w: int, plot_h: int, unit: str) -> list[str]:
    base = TIME_TOP * 10 + plot_h
    lines = []
    for value in range(0, top + 1, tick):
        y = base - scaled(value, top, plot_h)
        lines.append(f'<line class="grid" x1="{TIME_LEFT}" x2="{px(TIME_LEFT * 10 + plot_w)}" '
                     f'y1="{px(y)}" y2="{px(y)}"/>')
        lines.append(f'<text x="{TIME_LEFT - 6}" y="{px(y + 40)}" text-anchor="end">'
                     f"{count(value)}</text>")
    lines.append(f'<line class="axis" x1="{TIME_LEFT}" x2="{px(TIME_LEFT * 10 + plot_w)}" '
                 f'y1="{px(base)}" y2="{px(base)}"/>')
    lines.append(f'<text x="{px(TIME_LEFT * 10 + plot_w // 2)}" y="{TIME_H - 12}" '
                 f'text-anchor="middle">window end (UTC), per {unit}</text>')
    lines.append(f'<text x="14" y="{px(TIME_TOP * 10 + plot_h // 2)}" text-anchor="middle" '
                 f'transform="rotate(-90 14 {px(TIME_TOP * 10 + plot_h // 2)})">decisions</text>')
    return lines


def time_bar(moment, counts: dict[str, int], unit: str, x: int, slot: int, top: int,
             plot_h: int) -> str:
    """One bucket: a <g class="bar"> with one <rect class="segment"> per label present."""
    base, below = TIME_TOP * 10 + plot_h, 0
    name, width = bucket_name(moment, unit), max(slot * 8 // 10, 10)
    parts = [f'<g class="bar" data-bucket="{iso(moment)}" data-total="{sum(counts.values())}">',
             f"<title>{text(name)}: {count(sum(counts.values()))} decisions</title>"]
    for label, n in counts.items():
        y0, y1 = base - scaled(below, top, plot_h), base - scaled(below + n, top, plot_h)
        below += n
        parts.append(f'<rect class="segment" data-label="{text(label)}" data-count="{n}" '
                     f'x="{px(x + (slot - width) // 2)}" y="{px(y1)}" width="{px(width)}" '
                     f'height="{px(max(y0 - y1, 1))}" fill="{colour(label)}">'
                     f"<title>{text(name)}, {text(label)}: {count(n)}</title></rect>")
    return "".join(parts) + "</g>"


# Geometry of the rate charts (one row per group), in pixels.
RATE_W, RATE_LEFT, RATE_RIGHT, RATE_ROW, RATE_TOP = 960, 210, 170, 26, 8


def rate_chart(key: str, title: str, what: str, rates: list) -> str:
    """Horizontal bars: length by decisions, split into matched and not; the rate beside."""
    largest = max(r.decisions for r in rates)
    bar_w = (RATE_W - RATE_LEFT - RATE_RIGHT) * 10
    height = RATE_TOP * 2 + RATE_ROW * len(rates)
    body = []
    for i, rate in enumerate(rates):
        body.append(rate_row(rate, RATE_TOP + i * RATE_ROW, largest, bar_w))
    best = max(rates, key=lambda r: (r.matches * 10**6 // max(r.decisions, 1), r.decisions))
    chart = Chart(key, title,
                  f"Horizontal bars, one per {what} ({len(rates)} shown): bar length is its "
                  f"number of decisions, the green part its matches, the orange part its "
                  f"exceptions; the match rate is written beside each bar. The highest match "
                  f"rate is {percent(best.matches, best.decisions)} ({text(best.name or '-')}).")
    return svg(chart, RATE_W, height, body)


def rate_row(rate, y: int, largest: int, bar_w: int) -> str:
    matched, total = scaled(rate.matches, largest, bar_w), scaled(rate.decisions, largest, bar_w)
    x, mid = RATE_LEFT * 10, y * 10 + RATE_ROW * 5
    name = rate.name or "(no member event)"
    parts = [f'<g class="row" data-name="{text(rate.name)}" data-decisions="{rate.decisions}" '
             f'data-matches="{rate.matches}">',
             f"<title>{text(name)}: {count(rate.matches)} of {count(rate.decisions)} decisions "
             f"matched ({percent(rate.matches, rate.decisions)})</title>",
             f'<text x="{RATE_LEFT - 8}" y="{px(mid + 40)}" text-anchor="end">{text(name)}</text>']
    for cls, start, end, fill in (("matched", 0, matched, MATCHED_COLOUR),
                                  ("unmatched", matched, total, UNMATCHED_COLOUR)):
        if end > start:
            parts.append(f'<rect class="{cls}" x="{px(x + start)}" y="{px(y * 10 + 40)}" '
                         f'width="{px(end - start)}" height="{px(RATE_ROW * 10 - 80)}" '
                         f'fill="{fill}"/>')
    parts.append(f'<text x="{px(x + total + 60)}" y="{px(mid + 40)}">'
                 f"{percent(rate.matches, rate.decisions)} of {count(rate.decisions)}</text>")
    return "".join(parts) + "</g>"


def rate_rows(rates: list) -> list[list[str]]:
    return [[text(r.name or "(no member event)"), count(r.decisions), count(r.matches),
             count(r.decisions - r.matches), percent(r.matches, r.decisions)] for r in rates]


# ----------------------------------------------------------------------------- sections


def section(key: str, heading: str, body: str) -> str:
    return (f'<section id="{key}" aria-labelledby="{key}-h">\n<h2 id="{key}-h">{text(heading)}'
            f"</h2>\n{body}\n</section>")


def header(f) -> str:
    span = (f'Decision windows from <time datetime="{iso(f.first_start)}">{utc(f.first_start)}'
            f'</time> to <time datetime="{iso(f.last_end)}">{utc(f.last_end)}</time> (UTC).'
            if f.last_end else "No decisions yet.")
    notes = "".join(f'<p class="note">{text(n)}.</p>' for n in f.notes)
    return (f'<header id="header">\n<h1>Tally report: namespace <code>{text(f.namespace)}</code>'
            f"</h1>\n<p>Read from {text(f.store)}. {span}</p>{notes}\n</header>")


def summary_section(f) -> str:
    matches = {k: v for k, v in f.outcomes.items() if k.startswith("tier ")}
    exceptions = {k: v for k, v in f.outcomes.items() if k not in matches}
    matched, excepted = sum(matches.values()), sum(exceptions.values())
    rows = [("decisions", "Decisions", f.decisions, "")]
    rows += [("matches", "Matches", matched, "")]
    rows += [(k, k, v, "sub") for k, v in matches.items()]
    rows += [("exceptions", "Exceptions", excepted, "")]
    rows += [(k, k, v, "sub") for k, v in exceptions.items()]
    rows += [("open", "Open exceptions", f.open_exceptions, "")]
    body = "\n".join(f'<tr class="{cls}" data-label="{text(key)}"><th>{text(name)}</th>'
                     f'<td class="num" data-value="{value}">{count(value)}</td>'
                     f'<td class="num">{percent(value, f.decisions)}</td></tr>'
                     for key, name, value, cls in rows)
    rate = (f'<p>Match rate: <strong id="match-rate" data-matches="{matched}" '
            f'data-decisions="{f.decisions}">{percent(matched, f.decisions)}</strong> of decisions '
            f"are matches.</p>")
    table = (f'<table id="summary-table" class="numbers">\n<thead><tr><th>Outcome</th>'
             f'<th class="num">Count</th><th class="num">Share</th></tr></thead>\n<tbody>\n{body}'
             f"\n</tbody>\n</table>")
    return section("summary", "Summary", rate + "\n" + table)


def over_time_section(f) -> str:
    from sinks.report import buckets
    if not f.over_time:
        return section("over-time", "Decisions over time", '<p class="empty">No decisions.</p>')
    moments = buckets(f.first_end, f.last_end, f.unit)
    labels = list(f.outcomes)
    rows = [[text(bucket_name(m, f.unit))] + [count(c.get(n, 0)) for n in labels]
            + [count(sum(c.values()))] for m, c in f.over_time.items()]
    table = data_table(f"Data table: decisions per {f.unit} (UTC)",
                       [f"{f.unit.capitalize()} (UTC)"] + [text(n) for n in labels] + ["Total"],
                       rows, 1)
    intro = (f"<p>Decisions by the {f.unit} their window ends in, stacked by match tier and "
             f"exception kind.</p>")
    return section("over-time", "Decisions over time",
                   intro + "\n" + time_chart(f, moments) + "\n" + legend(labels, colour) + "\n"
                   + table)


def rate_section(key: str, heading: str, intro: str, what: str, rates: list) -> str:
    if not rates:
        return section(key, heading, '<p class="empty">No decisions.</p>')
    table = data_table(f"Data table: match rate per {what}",
                       [text(what.capitalize()), "Decisions", "Matches", "Exceptions",
                        "Match rate"], rate_rows(rates), 1)
    names = {"matched": MATCHED_COLOUR, "exception": UNMATCHED_COLOUR}
    return section(key, heading, f"<p>{intro}</p>\n"
                   + rate_chart(key, heading, what, rates) + "\n"
                   + legend(list(names), names.get) + "\n" + table)


def sources_section(f) -> str:
    return rate_section(
        "by-sources", "Match rate per source combination",
        "Which sources a decision's members came from (e.g. bank+ledger+processor: all three "
        "seen together), and how many of those decisions are matches.",
        "source combination", f.by_sources)


def accounts_section(f) -> str:
    shown = len(f.by_account)
    return rate_section(
        "by-account", "Match rate per account",
        f"The {count(shown)} accounts with the most decisions, of {count(f.accounts)} accounts.",
        "account", f.by_account)


def settlement_section(f) -> str:
    """Per relation, then per UTC day: payouts settled and deposited, mismatches, credits
    nobody explained, fees withheld. Nothing for a config without relations."""
    if f.settlement is None:
        return ""
    s = f.settlement
    note = ""
    if s.unknown:
        note = (f'<p class="note" id="unknown-relations">Decisions of relations the config does '
                f"not name: {text(', '.join(s.unknown))}. Pass the namespace's config with "
                f"--config.</p>\n")
    return section("settlement", "Settlement", note + relations_table(s.relations) + "\n"
                   + settlement_days_table(s))


def relations_table(relations: list) -> str:
    rows = "\n".join(
        f'<tr data-relation="{text(r.name or "")}" data-decisions="{r.decisions}" '
        f'data-matches="{r.matches}"><th>{text(r.name or "(no relation)")}</th>'
        f"<td>{text(r.rule)}</td><td class=\"num\">{count(r.decisions)}</td>"
        f'<td class="num">{count(r.matches)}</td>'
        f'<td class="num">{count(r.decisions - r.matches)}</td></tr>' for r in relations)
    return ('<table id="relations-table"><caption>Decisions per relation</caption>\n<thead><tr>'
            '<th>Relation</th><th>Rule</th><th class="num">Decisions</th>'
            '<th class="num">Matches</th><th class="num">Exceptions</th></tr></thead>\n'
            f"<tbody>\n{rows}\n</tbody>\n</table>")


def settlement_days_table(s) -> str:
    from flows.checks.review import amount
    from sinks.report import DAY_FIGURES
    days = sorted(s.days.keys() | s.fees.keys())
    if not days:
        return '<p class="empty">No settlement decisions.</p>'
    rows = []
    for day in days:
        figures, fees = s.days.get(day, dict.fromkeys(DAY_FIGURES, 0)), s.fees.get(day, {})
        cells = "".join(f'<td class="num" data-figure="{text(name)}" data-value="{n}">{count(n)}'
                        f"</td>" for name, n in figures.items())
        spent = "<br>".join(text(amount(minor, currency or None)) for currency, minor in fees.items())
        tagged = " ".join(f"{currency}:{minor}" for currency, minor in fees.items())
        rows.append(f'<tr data-day="{day.isoformat()}"><td class="nowrap">{day.isoformat()}</td>'
                    f'{cells}<td class="num nowrap" data-fees="{text(tagged)}">{spent}</td></tr>')
    head = "".join(f'<th class="num">{text(name.capitalize())}</th>' for name in DAY_FIGURES)
    caption = ("Per UTC day of window end. Payouts settled: a payout whose batch's items add up "
               "to it; deposited: a payout matched to its bank credit; unexplained bank credits: "
               "a credit no payout accounts for; fees withheld: the processor's fees on matched "
               "payments, per currency.")
    return (f'<table id="settlement-days"><caption class="note">{text(caption)}</caption>\n'
            f"<thead><tr><th>Day (UTC)</th>{head}<th class=\"num\">Fees withheld</th></tr>"
            f"</thead>\n<tbody>\n" + "\n".join(rows) + "\n</tbody>\n</table>")


def oldest_section(f) -> str:
    from flows.checks.review import ID_SHOWN, amount
    if not f.oldest_open:
        none = (f"{count(f.open_exceptions)} open exceptions, none listed (--limit 0)."
                if f.open_exceptions else "No open exceptions.")
        return section("oldest-open", "Oldest open exceptions", f'<p class="empty">{none}</p>')
    rows = "\n".join(
        f'<tr data-decision="{text(r["decision_id"])}">'
        f'<td class="nowrap">{utc(r["window_end"])}</td>'
        f'<td class="nowrap">{text(r["exception_kind"] or "")}</td>'
        f'<td class="num nowrap">{text(amount(r["amount_minor"], r["currency"]))}</td>'
        f'<td class="nowrap">{text(r["account"] or "")}</td><td>{text(r["reason"] or "")}</td>'
        f'<td><code title="{text(r["decision_id"])}">{text(r["decision_id"][:ID_SHOWN])}</code>'
        f"</td></tr>" for r in f.oldest_open)
    caption = (f"The {count(len(f.oldest_open))} oldest of {count(f.open_exceptions)} open "
               f"exceptions: oldest UTC day first, then the largest amount (in major units of its "
               f"currency), as tally review list orders them. Decision ids are shortened to a prefix "
               f"that tally review and tally explain accept.")
    return section("oldest-open", "Oldest open exceptions",
                   f'<table id="oldest-open-table" class="exceptions">\n<caption class="note">'
                   f"{text(caption)}</caption>\n<thead><tr><th>Window end (UTC)</th><th>Kind</th>"
                   f'<th class="num">Amount</th><th>Account</th><th>Reason</th><th>Decision</th>'
                   f"</tr></thead>\n<tbody>\n{rows}\n</tbody>\n</table>")


# ----------------------------------------------------------------------------- the audit


@dataclass
class Verdict:
    """The audit's report, or why there is none."""

    report: object | None  # flows.checks.audit.AuditReport
    why_not: str | None = None

    @property
    def words(self) -> str:
        if self.report is None:
            return "NOT AUDITED"
        return "CONSERVED" if self.report.ok else "NOT CONSERVED"


def run_audit(data_root: Path, namespace: str, stores: list[str], dsn: str | None) -> Verdict:
    """flows.checks.audit's verdict; a failure to audit becomes its reason, not a failed report."""
    from flows import logs
    from flows.checks import audit
    try:
        return Verdict(audit.audit(data_root, namespace, stores, dsn))
    except Exception as exc:  # the page is still worth having: it says why
        reason = logs.redact(" ".join(str(exc).split()) or type(exc).__name__)
        logs.warning("the audit could not run", reason=reason)
        return Verdict(None, reason)


def audit_section(verdict: Verdict) -> str:
    cls = {"CONSERVED": "ok", "NOT CONSERVED": "bad"}.get(verdict.words, "none")
    head = f'<p id="verdict" class="verdict {cls}">Verdict: {verdict.words}</p>'
    if verdict.report is None:
        return section("audit", "Audit", head + f'\n<p id="audit-why-not">The audit could not '
                       f"run: {text(verdict.why_not)}</p>")
    return section("audit", "Audit", head + "\n<p>Every consumed offset has exactly one fate, "
                   "every fate its decision, and every decision's members point back to it "
                   "(tally audit).</p>\n" + audit_tables(verdict.report))


def audit_tables(report) -> str:
    from flows.checks.audit import agreement_rows, overview_rows
    rows = overview_rows(report) + agreement_rows(report)
    body = "\n".join(f"<tr><th>{text(k)}</th>{cell(v)}</tr>" for k, v in rows)
    overall = (f'<table id="audit-namespace"><caption>Namespace</caption>\n<tbody>\n{body}'
               f"\n</tbody>\n</table>")
    return '<div class="stores">\n' + overall + "\n" + store_table(report.stores) + "\n</div>"


def store_table(stores: list) -> str:
    """One row per check or count, one column per store (flows.checks.audit's own rows)."""
    from flows.checks.audit import store_rows
    columns = [{k.strip(): v for k, v in store_rows(store)[1:]} for store in stores]
    names = list(dict.fromkeys(name for column in columns for name in column))
    head = "".join(f'<th class="num">{text(store.where)}</th>' for store in stores)
    body = "\n".join(f"<tr><th>{text(name)}</th>"
                     + "".join(cell(column.get(name, "")) for column in columns) + "</tr>"
                     for name in names)
    return (f'<table id="audit-stores"><caption>Per store</caption>\n<thead><tr><th>Check</th>'
            f"{head}</tr></thead>\n<tbody>\n{body}\n</tbody>\n</table>")


def cell(value) -> str:
    return f'<td class="num">{count(value) if isinstance(value, int) else text(value)}</td>'


# ----------------------------------------------------------------------------- the page


def render(f, verdict: Verdict) -> str:
    """The whole page, deterministic: the same figures and verdict give the same bytes."""
    sections = [summary_section(f), audit_section(verdict), over_time_section(f),
                settlement_section(f), sources_section(f), accounts_section(f), oldest_section(f)]
    sections = [s for s in sections if s]  # no settlement section without relations
    return ('<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
            '<meta http-equiv="Content-Security-Policy" content="default-src \'none\'; '
            "style-src 'unsafe-inline'\">\n"
            '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
            f"<title>Tally report: namespace {text(f.namespace)}</title>\n"
            f"<style>{STYLE}</style>\n</head>\n<body>\n{header(f)}\n<main>\n"
            + "\n".join(sections)
            + "\n</main>\n<footer class=\"note\"><p>Made by tally report from the namespace's "
              "data alone: the same data gives the same page.</p></footer>\n</body>\n</html>\n")


def write_page(page: str, out: Path) -> int:
    """Write through a hidden temporary and rename; returns the size in bytes."""
    data = page.encode("utf-8")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    tmp.write_bytes(data)
    tmp.replace(out)
    return len(data)


def audited_stores(store: str, data_dir: Path, namespace: str) -> list[str]:
    """The store read, and Parquet too when it is on disk next to a PostgreSQL namespace."""
    if store == "parquet":
        return ["parquet"]
    beside = (data_dir / namespace / "decisions").is_dir()
    return ["postgres", "parquet"] if beside else ["postgres"]


def write_report(namespace: str, out: Path, data_dir: Path, store: str = "postgres",
                 dsn: str | None = None, top_accounts: int = TOP_ACCOUNTS, limit: int = OPEN_SHOWN,
                 no_audit: bool = False, relations: tuple = ()) -> int:
    """`tally report` once its options are resolved: the page of `namespace` written to `out`;
    `relations` (the config's) add the settlement figures."""
    from sinks import report
    from sinks.stores import ParquetStore, PostgresStore
    if store == "postgres":
        from sinks.postgres import connect_check
        connect_check(dsn)
        reader = report.PgDecisions(PostgresStore(dsn, namespace))
    else:
        reader = report.ParquetDecisions(ParquetStore(data_dir, namespace))
    with reader:
        figures = report.figures(reader, top_accounts, limit, relations)
    verdict = (Verdict(None, "skipped (--no-audit)") if no_audit else
               run_audit(data_dir / namespace, namespace, audited_stores(store, data_dir, namespace),
                         dsn))
    size = write_page(render(figures, verdict), out)
    print(f"wrote {out} ({size:,} bytes): namespace {namespace}, "
          f"{figures.decisions:,} decisions from {figures.store}, verdict {verdict.words}")
    return 0
