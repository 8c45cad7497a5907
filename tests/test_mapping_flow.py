"""A webhook topic in the processor's own shape, end to end: docs/examples/webhooks.toml,
its events and the ledger's contract records published to the real broker, run by the
real flow into PostgreSQL, decided exactly as the in-process engine decides them."""

from __future__ import annotations

import base64
import json
import tempfile
import tomllib
import uuid
from collections import Counter
from pathlib import Path

import msgspec
import pytest

from flows.dev.match import run_engine
from flows.kafka import kafka_io
from flows.runtime.pacemaker import heartbeat_value
from state.config import from_toml, to_toml
from state.contract import format_us
from tests.flow_helpers import engine_rows, flow_env, pg_rows, read_decisions, tally

ROOT = Path(__file__).resolve().parent.parent
WEBHOOKS = from_toml(tomllib.loads((ROOT / "docs/examples/webhooks.toml").read_text()))
ORDERS = 300
START = 1_795_219_200  # 2026-11-21T00:00:00Z, epoch seconds
DAY = 86_400
SHORT = {7, 70}  # orders whose processor amount is 1 cent short of the ledger's


def ledger(order: int, at: int, minor: int, event_id: str) -> dict:
    return {"source": "ledger", "event_id": event_id, "account": "processor-main",
            "amount": f"{'-' if minor < 0 else ''}{abs(minor) // 100}.{abs(minor) % 100:02d}",
            "currency": "USD", "event_time": format_us(at * 10**6),
            "idempotency_key": f"ord-{order}", "reference": f"Order {order}"}


def webhook(type_: str, order: int, at: int, minor: int, event_id: str) -> dict:
    return {"id": event_id, "type": type_, "created": at, "livemode": True,
            "data": {"object": {"amount": minor, "currency": "usd", "description": f"Order {order}",
                                "metadata": {"order_id": f"ord-{order}"}}}}


def day() -> tuple[list[bytes], list[bytes], dict[int, str]]:
    """Ledger lines, webhook lines, and the webhook offsets the mapping cannot take, with why."""
    ledger_lines, events, unreadable = [], [], {}
    for order in range(ORDERS):
        at, minor = START + order * 60, 1000 + order
        ledger_lines.append(ledger(order, at, minor, f"L-{order}"))
        events.append(webhook("charge.succeeded", order, at + 5, minor - (order in SHORT), f"evt_c{order}"))
        if order % 10 == 3:  # refunded the next day, beyond the redelivery horizon
            ledger_lines.append(ledger(order, at + DAY, -minor, f"L-{order}-r"))
            events.append(webhook("charge.refunded", order, at + DAY + 5, minor, f"evt_r{order}"))
    events.sort(key=lambda e: e["created"])
    ledger_lines.sort(key=lambda line: line["event_time"])
    no_amount = webhook("charge.succeeded", 9998, START + 300, 5, "evt_x")
    del no_amount["data"]["object"]["amount"]
    strays = [({"id": "evt_cus", "type": "customer.created", "created": START + 100},
               "event type 'customer.created' is not a payment: the mapping ignores it"),
              ({"id": "evt_inv", "type": "invoice.paid", "created": START + 200},
               "event type 'invoice.paid' is not mapped"),
              (no_amount, "/data/object/amount: missing or null"),
              (webhook("charge.succeeded", 9999, START + 400, 5, "evt_y") | {"created": "abc"},
               "/created: 'abc' is not epoch seconds")]
    for offset, (event, _) in zip((40, 41, 200, 201), strays):
        events.insert(offset, event)
    lines = [json.dumps(e).encode() for e in events]
    unreadable = {lines.index(json.dumps(e).encode()): reason for e, reason in strays}
    end = (START + 3 * DAY) * 10**6  # time has passed for every window, in both topics
    lines.append(heartbeat_value("processor", end))  # what a live run writes: in the contract
    ledger_bytes = [json.dumps(line).encode() for line in ledger_lines]
    ledger_bytes.append(json.dumps({"type": "heartbeat", "source": "ledger",
                                    "event_time": format_us(end)}).encode())
    return ledger_bytes, lines, unreadable


@pytest.fixture(scope="module")
def flow(broker, pg_dsn):
    work = Path(tempfile.mkdtemp(prefix="tally-webhooks-"))
    tag = uuid.uuid4().hex[:8]
    topics = {source: f"t{tag}.{source}" for source in WEBHOOKS.topics}
    config = msgspec.structs.replace(WEBHOOKS, topics=topics)
    ledger_lines, webhook_lines, unreadable = day()
    for source, lines in (("ledger", ledger_lines), ("processor", webhook_lines)):
        (work / "day" / topics[source]).mkdir(parents=True)
        (work / "day" / topics[source] / "0.jsonl").write_bytes(b"\n".join(lines) + b"\n")
    (work / "webhooks.toml").write_text(to_toml(config))
    kafka_io.create_topics(broker, list(topics.values()), 1)
    kafka_io.produce_day(broker, work / "day", list(topics.values()), progress=False)
    env = flow_env(broker, pg_dsn, work / "webhooks.toml", work)
    tally("run", "--namespace", "webhooks_e2e", "--until-end", env=env)
    engine = run_engine(work / "day", config, show_progress=False)
    return topics, engine, webhook_lines, unreadable, env


def test_the_flow_decides_the_mapped_topic_exactly_as_the_engine(flow, pg_dsn, report):
    _, engine, _, _, _ = flow
    assert pg_rows(pg_dsn, "webhooks_e2e") == engine_rows(engine.decisions, engine.fates)
    kinds = Counter(d.exception_kind or f"tier {d.tier}" for d in engine.decisions)
    refunds = len(range(3, ORDERS, 10))
    # every charge and refund matched its ledger record by order id, but the short ones
    assert kinds["tier 1"] == ORDERS + refunds - len(SHORT), kinds
    assert kinds["invalid"] == 4 and not [f for f in engine.fates if f.outcome == "pending"]
    report(f"webhooks e2e: {len(engine.decisions)} decisions identical in PostgreSQL and the "
           f"engine; {dict(kinds)}")


def test_unreadable_webhooks_are_invalid_exceptions_with_their_raw_bytes(flow, pg_dsn):
    topics, _, lines, unreadable, _ = flow
    invalid = {row["member_refs"][0]: (row["reason"], base64.b64decode(row["raw_base64"]))
               for row in read_decisions(pg_dsn, "webhooks_e2e") if row["exception_kind"] == "invalid"}
    assert set(invalid) == {f"{topics['processor']}:0:{offset}" for offset in unreadable}
    for offset, reason in unreadable.items():
        stored_reason, raw = invalid[f"{topics['processor']}:0:{offset}"]
        assert stored_reason.startswith(reason) and raw == lines[offset]



def test_a_namespace_resumes_with_other_accounts_but_not_another_mapping(flow):
    """[accounts] decides nothing, so changing it is no new config for the namespace; a
    mapping decides how records read, so changing it is."""
    topics, _, _, _, env = flow
    config = msgspec.structs.replace(WEBHOOKS, topics=topics)
    changed = Path(env["TALLY_CONFIG"]).with_name("changed.toml")
    env = env | {"TALLY_CONFIG": str(changed)}
    changed.write_text(to_toml(msgspec.structs.replace(config, accounts={"NL71RABO0123456789": "x"})))
    run = tally("run", "--namespace", "webhooks_e2e", "--until-end", env=env)
    assert any(line.split()[:2] == ["records", "consumed"] and line.split()[-1] == "0"
               for line in run.stdout.splitlines()), run.stdout
    mapping = msgspec.structs.replace(config.mappings["processor"], upper_case_currency=False)
    changed.write_text(to_toml(msgspec.structs.replace(config, mappings={"processor": mapping})))
    run = tally("run", "--namespace", "webhooks_e2e", "--until-end", env=env, expect=2)
    refusal = run.stderr.strip().splitlines()[-1]  # one line, however the namespace keeps its config
    assert refusal.startswith("tally: ") and "new namespace" in refusal, run.stderr
