"""Build small scenarios and run them through the real engine."""

from __future__ import annotations

import json

from state.config import MatchConfig
from state.contract import Decoder
from state.engine import Shard
from state.routing import split

T0 = "2026-11-21T10:"


def tx(source, event_id, amount, minute, key=None, account="A1", currency="EUR", reference=None,
       second=0):
    return json.dumps({"source": source, "event_id": event_id, "account": account, "amount": amount,
                       "currency": currency, "event_time": f"{T0}{minute:02d}:{second:02d}Z",
                       "idempotency_key": key, "reference": reference}).encode()


def heartbeat(source, hour=14):
    return json.dumps({"type": "heartbeat", "source": source,
                       "event_time": f"2026-11-21T{hour}:00:00Z"}).encode()


def run(values_by_source, config=None, close=True):
    """values_by_source: {"bank": [bytes, ...], ...}, one partition per topic, in log order.

    Each partition ends with a heartbeat far in the future when `close`, so every window closes.
    Returns (decisions, fates, shard).
    """
    config = config or MatchConfig()
    decoder = Decoder(config)
    parts = [(config.topics[s], 0) for s in config.topics]
    shard = Shard(config, parts)
    decisions, fates = [], []
    for source, topic in config.topics.items():
        values = list(values_by_source.get(source, [])) + ([heartbeat(source)] if close else [])
        records = [decoder.decode(v, topic, 0, i) for i, v in enumerate(values)]
        for piece in split(topic, 0, records, 1, config.max_clock_skew_us):
            out = shard.ingest(piece)
            decisions += out.decisions
            fates += out.fates
    return decisions, fates, shard


def only(decisions, **where):
    found = [d for d in decisions if all(getattr(d, k) == v for k, v in where.items())]
    assert len(found) == 1, (where, decisions)
    return found[0]
