"""From files to decisions: acquirer reports and bank statements in every format go through
`tally ingest`, the live flow and both stores, and reconcile with the ledger.

The scenario: the acquirer reports' sample files (tests/data/ingest/adyen, stripe), a ledger
that recorded each of their payments and refunds an hour earlier, and for each payout one
bank credit a day later, each in another bank format. Every payment matches, every batch
settles, every payout is deposited; files sent twice are redeliveries, and a refused file
publishes nothing.
"""

from __future__ import annotations

import shutil
import tempfile
import tomllib
from collections import Counter
from datetime import timedelta
from pathlib import Path

import msgspec
import pytest

from flows.ingest import adyen, camt, stripe
from flows.ingest.records import rfc3339
from flows.kafka import kafka_io
from state.config import from_toml, to_toml
from state.contract import Decoder, Event, Invalid
from tests import ingest_files as files
from tests.flow_helpers import read_decisions, read_fates, tally, unique_topics

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "tests" / "data" / "ingest"
ADYEN = [DATA / "adyen" / "settlement_detail_report_batches_41_43.csv",
         DATA / "adyen" / "settlement_detail_report_batch_41.csv"]  # batch 41 again
STRIPE = sorted((DATA / "stripe").glob("*.csv"))  # the EUR payout is in both
BANKS = {  # Tally account and currency -> the bank account the payouts land in
    ("shop-eu", "EUR"): "DE89370400440532013000", ("shop-eu", "GBP"): "GB33BUKB20201555555555",
    ("shop-us", "USD"): "021000021-7766554433", ("shop-us", "EUR"): "NL91ABNA0417164300"}
# each payout's credit in another format, in this order
BANK_FORMATS = ["camt053", "mt940", "bai2", "camt054", "camt052", "camt053"]


def _config(topics: dict[str, str]) -> str:
    settlement = tomllib.loads((ROOT / "docs/examples/settlement.toml").read_text())
    settlement["sources"] = topics
    # Stripe lists a payout's items by when they were created, days before the payout
    settlement["relations"]["payments"]["window"] = "7d"
    settlement["relations"]["batches"]["window"] = "5d"
    accounts = {"TallyShopEU": "shop-eu", "0044-7781-22": "shop-us",
                **{bank: account for (account, _), bank in BANKS.items()}}
    return to_toml(from_toml(settlement | {"accounts": accounts}))


def _payouts():
    found = []
    for parse, paths, account in ((adyen.parse, ADYEN[:1], "shop-eu"), (stripe.parse, STRIPE, "shop-us")):
        for path in paths:
            for statement in parse(path.read_bytes(), str(path)):
                found += [(account, e) for e in statement.entries if e.kind == "payout"]
    unique = {(account, e.batch_id, e.currency): (account, e) for account, e in found}
    return sorted(unique.values(), key=lambda pair: (pair[1].booked, pair[1].event_id))


def _ledger(topics) -> dict:
    """One ledger record per acquirer payment or refund, an hour before the acquirer's."""
    values = {}
    for parse, paths, account in ((adyen.parse, ADYEN[:1], "shop-eu"), (stripe.parse, STRIPE, "shop-us")):
        for path in paths:
            for statement in parse(path.read_bytes(), str(path)):
                for e in statement.entries:
                    if e.kind != "transaction" or e.idempotency_key is None or not e.amount:
                        continue
                    values[e.idempotency_key] = {
                        "source": "ledger", "event_id": f"L-{e.idempotency_key}",
                        "account": account, "amount": f"{e.amount:f}", "currency": e.currency,
                        "event_time": rfc3339(e.booked - timedelta(hours=1)),
                        "idempotency_key": e.idempotency_key}
    return values


@pytest.fixture(scope="module")
def ingested(broker, pg_dsn):
    work = Path(tempfile.mkdtemp(prefix="tally-ingest-"))
    topics = unique_topics()
    config = work / "tally.toml"
    config.write_text(_config(topics))
    env = {"TALLY_BROKERS": broker, "TALLY_PG_DSN": pg_dsn, "TALLY_DATA_DIR": str(work / "data"),
           "TALLY_CONFIG": str(config)}
    kafka_io.create_topics(broker, list(topics.values()), 3)

    ledger = _ledger(topics)
    in_time = sorted(ledger.values(), key=lambda record: record["event_time"])
    kafka_io.produce_values(broker, {(topics["ledger"], 0): [msgspec.json.encode(v) for v in in_time]},
                            progress=False)
    outputs = [tally("ingest", "adyen-settlement", *map(str, ADYEN), "--source", "processor", env=env),
               tally("ingest", "stripe-payouts", *map(str, STRIPE), "--source", "processor",
                     "--account", "shop-us", env=env)]
    payouts = _payouts()
    bank_files = []
    for number, ((account, payout), fmt) in enumerate(zip(payouts, BANK_FORMATS)):
        day = payout.booked.date() + timedelta(days=1)
        credit = files.Credit(f"BANKREF{number:04d}", payout.amount,
                              f"PAYOUT {payout.reference or payout.batch_id}")
        bank = BANKS[(account, payout.currency)]
        path = work / f"bank-{number}.{fmt}"
        path.write_bytes(_render(fmt, bank, payout.currency, day, [credit]))
        bank_files.append((fmt, path))
    for fmt, path in bank_files:
        outputs.append(tally("ingest", fmt, str(path), "--source", "bank", env=env))
    # the sources' progress past the last booking, so every decision is due by the end
    end = {"type": "heartbeat", "event_time": "2026-12-15T00:00:00Z"}
    kafka_io.produce_values(broker, {(topic, p): [msgspec.json.encode(end | {"source": source})]
                                     for source, topic in topics.items() for p in range(3)},
                            progress=False)
    tally("run", "--namespace", "ingested", "--until-end", env=env)
    return work, env, topics, ledger, payouts, outputs


def _render(fmt: str, bank: str, currency: str, day, credits) -> bytes:
    if fmt.startswith("camt"):
        return files.camt(fmt[4:], "08" if fmt == "camt054" else "02", bank, currency, day, credits)
    return {"mt940": files.mt940, "bai2": files.bai2}[fmt](bank, currency, day, credits)


def test_every_format_reconciles_end_to_end(ingested, pg_dsn, report):
    work, env, topics, ledger, payouts, outputs = ingested
    decisions = read_decisions(pg_dsn, "ingested")
    by_relation = Counter((d["relation"], d["kind"], d["exception_kind"]) for d in decisions)
    assert by_relation[("payments", "match", None)] == len(ledger), by_relation
    assert by_relation[("batches", "match", None)] == len(payouts) + 1  # batch 42 nets to zero
    assert by_relation[("deposits", "match", None)] == len(payouts)
    exceptions = [d for d in decisions if d["kind"] == "exception"]
    assert {d["exception_kind"] for d in exceptions} <= {"duplicate"}, exceptions
    report(f"ingest e2e: {len(ledger)} payments matched, {len(payouts)} payouts settled and "
           f"deposited from {', '.join(sorted(set(BANK_FORMATS)))}")


def test_a_file_sent_twice_gives_redeliveries_not_new_payments(ingested, pg_dsn):
    _, _, topics, _, _, _ = ingested
    fates = read_fates(pg_dsn, "ingested")
    outcomes = Counter(f["outcome"] for f in fates if f["topic"] == topics["processor"])
    # batch 41 (9 lines) and the EUR Stripe payout's lines came twice
    assert outcomes["redelivery"] >= 9 + 4, outcomes
    assert "invalid" not in outcomes


def test_the_summary_says_what_was_published(ingested):
    outputs = ingested[5]
    adyen_out = outputs[0].stdout
    assert "published" in adyen_out and "EUR" in adyen_out and "GBP" in adyen_out, adyen_out
    assert "heartbeats" not in adyen_out  # an acquirer report has no closing date
    assert "heartbeats" in outputs[2].stdout  # a camt.053 does


def test_the_namespace_is_conserved(ingested):
    _, env, _, _, _, _ = ingested
    out = tally("audit", "--namespace", "ingested", env=env).stdout
    assert "CONSERVED" in out and "NOT CONSERVED" not in out


# -- refusals, unbalanced statements and the drop folder, on topics of their own ----------

UNBALANCED = DATA / "camt" / "camt053_v08_unbalanced.xml"
BALANCED = [DATA / "camt" / "camt053_v02.xml", DATA / "camt" / "camt053_v08.xml"]


@pytest.fixture
def fresh(broker, tmp_path):
    topics = unique_topics()
    config = tmp_path / "tally.toml"
    config.write_text(_config(topics))
    kafka_io.create_topics(broker, list(topics.values()), 3)
    env = {"TALLY_BROKERS": broker, "TALLY_CONFIG": str(config), "TALLY_DATA_DIR": str(tmp_path)}
    return topics, env, from_toml(tomllib.loads(config.read_text()))


def _bank_records(broker, topics, config):
    decoder = Decoder(config)
    return [decoder.decode(value, topic, partition, offset)
            for (topic, partition), records in kafka_io.read_to_end(broker, [topics["bank"]]).items()
            for offset, value in records]


def test_a_refused_file_publishes_nothing_not_even_the_good_files_beside_it(fresh, broker):
    topics, env, config = fresh
    refused = tally("ingest", "camt053", *map(str, BALANCED), str(UNBALANCED), "--source", "bank",
                    env=env, expect=1)
    line = refused.stderr.strip()
    assert "\n" not in line and str(UNBALANCED) in line and "difference +10.00" in line, line
    assert "nothing of the file was published" in line
    assert _bank_records(broker, topics, config) == []


def test_an_unbalanced_statement_published_anyway_carries_an_exception_naming_its_gap(fresh, broker):
    topics, env, config = fresh
    out = tally("ingest", "camt053", str(UNBALANCED), "--source", "bank", "--accept-unbalanced",
                env=env).stdout
    assert "UNBALANCED, published with an exception" in out, out
    records = _bank_records(broker, topics, config)
    gaps = [r for r in records if isinstance(r, Invalid)]
    assert len(gaps) == 1 and "does not add up" in gaps[0].reason and "+10.00" in gaps[0].reason
    assert len([r for r in records if isinstance(r, Event)]) == \
        sum(len(s.entries) for s in camt.FORMATS["camt053"](UNBALANCED.read_bytes(), "f"))


def test_a_drop_folder_publishes_each_content_once_and_sets_refused_files_aside(fresh, broker, tmp_path):
    topics, env, config = fresh
    drop = tmp_path / "drop"
    drop.mkdir()
    for path in BALANCED:
        shutil.copy(path, drop / path.name)
    shutil.copy(BALANCED[0], drop / "same-statement-sent-again.xml")
    shutil.copy(UNBALANCED, drop / UNBALANCED.name)
    (drop / "upload.xml.part").write_bytes(b"<Docu")  # a transfer in progress
    out = tally("ingest", "camt053", "--watch", str(drop), "--once", "--source", "bank", env=env).stdout
    assert sorted(p.name for p in (drop / "done").iterdir()) == \
        sorted([p.name for p in BALANCED] + ["same-statement-sent-again.xml"])
    assert sorted(p.name for p in (drop / "refused").iterdir()) == \
        [UNBALANCED.name, UNBALANCED.name + ".reason"]
    assert "difference +10.00" in (drop / "refused" / (UNBALANCED.name + ".reason")).read_text()
    assert (drop / "upload.xml.part").exists()
    events = [r for r in _bank_records(broker, topics, config) if isinstance(r, Event)]
    expected = sum(len(s.entries) for path in BALANCED
                   for s in camt.FORMATS["camt053"](path.read_bytes(), str(path)))
    assert len(events) == expected, out  # the copy under another name was not published
    assert "refused 1 file(s)" in out
