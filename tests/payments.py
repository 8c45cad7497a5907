"""Hypothesis strategies for dense accounts: payments as a reconciliation team sees them.

A payment is up to one record per source (bank, processor, ledger) with its own
amount, key scheme and times; it may be reported twice by the processor (a new
event id, the same key), redelivered (the same record again), short of a source,
or paid net of a fee at the bank. `logs` lays payments out as partition logs in
arrival order, each closed by a heartbeat far in the future.
"""

from __future__ import annotations

import json

from hypothesis import strategies as st

from state.config import MatchConfig

CONFIG = MatchConfig()
SOURCES = ("bank", "processor", "ledger")
BASE = 1_795_255_200  # 2026-11-21T10:00:00Z
END = BASE + 12 * 3600  # every log ends with a heartbeat here


def stamp(seconds: int) -> str:
    hours, rest = divmod(seconds - BASE, 3600)
    return f"2026-11-21T{10 + hours:02d}:{rest // 60:02d}:{rest % 60:02d}Z"


@st.composite
def payment(draw, amounts=st.integers(100, 100_000), start=st.integers(0, 3600),
            spread=st.integers(0, 600), complete=False, twice=None, scheme=None):
    """One payment's records, as dicts (the JSON object plus "second" and "jitter")."""
    present = [True] * 3 if complete else draw(
        st.lists(st.booleans(), min_size=3, max_size=3).filter(any))
    scheme = scheme or draw(st.sampled_from(["key", "partial", "none"]))
    key = f"k{draw(st.integers(0, 10**9))}"
    keys = {"key": [key] * 3, "partial": [None, key, key], "none": [None] * 3}[scheme]
    amount, t0 = draw(amounts), draw(start)
    fee = 0 if complete else draw(st.sampled_from([0, 0, 0, 1, 2]))  # percent kept by the bank
    records = []
    for s, source in enumerate(SOURCES):
        if not present[s]:
            continue
        minor = amount - amount * fee // 100 if source == "bank" else amount
        records.append({"source": source, "amount": minor, "key": keys[s],
                        "second": t0 + draw(spread), "jitter": draw(st.integers(0, 100)),
                        "again": draw(st.integers(0, 40)) == 0})
    twice = draw(st.integers(0, 5)) == 0 if twice is None else twice
    if twice and present[1] and keys[1] is not None:
        first = next(r for r in records if r["source"] == "processor")
        records.append(first | {"second": first["second"] + draw(st.integers(1, 600)),
                                "jitter": draw(st.integers(0, 100)), "twice": True})
    return records


def logs(payments: dict[str, list[dict]], account="A1", currency="EUR"):
    """Partition logs (one partition per topic) of payments {name: records}, in arrival
    order, each ending with a heartbeat at END. Event ids are '<source letter><name>', and
    '-again' for a second report."""
    arrivals = {source: [] for source in SOURCES}
    for name, records in payments.items():
        for r in records:
            event_id = f"{r['source'][0]}{name}" + ("-again" if r.get("twice") else "")
            value = json.dumps({"source": r["source"], "event_id": event_id, "account": account,
                                "amount": f"{r['amount'] // 100}.{r['amount'] % 100:02d}",
                                "currency": currency, "event_time": stamp(BASE + r["second"]),
                                "idempotency_key": r["key"]}).encode()
            arrive = r["second"] + r["jitter"]
            arrivals[r["source"]].append((arrive, len(arrivals[r["source"]]), value))
            if r.get("again"):  # a redelivery of the very same record, a little later
                arrivals[r["source"]].append((arrive + 30, len(arrivals[r["source"]]), value))
    out = {}
    for source, items in arrivals.items():
        heartbeat = json.dumps({"type": "heartbeat", "source": source, "event_time": stamp(END)})
        out[(CONFIG.topics[source], 0)] = [v for _, _, v in sorted(items)] + [heartbeat.encode()]
    return out


def payments(n_min=10, n_max=40, **kwargs):
    """Named payments of one dense account."""
    return st.lists(payment(**kwargs), min_size=n_min, max_size=n_max).map(
        lambda ps: {str(i): p for i, p in enumerate(ps)})


def run_logs(logs: dict, config: MatchConfig = CONFIG, engine=None):
    """Feed the logs one record at a time from each partition in turn (the watermark creeps,
    so windows close as early as they may). Returns (decisions, fates by ref)."""
    from state.contract import Decoder
    from state.engine import Shard
    from state.routing import split
    decoder, parts = Decoder(config), sorted(logs)
    shard = (engine or Shard)(config, parts)
    decisions, fates = [], []
    for i in range(max(map(len, logs.values()))):
        for topic, partition in parts:
            if i < len(logs[(topic, partition)]):
                record = decoder.decode(logs[(topic, partition)][i], topic, partition, i)
                out = shard.ingest(split(topic, partition, [record], 1, config.max_clock_skew_us)[0])
                decisions += out.decisions
                fates += out.fates
    fates += shard.pending()
    return decisions, {f"{f.topic}:{f.partition}:{f.offset}": f for f in fates}


def distinct_keys(named: dict[str, list[dict]], prefix: str = "") -> dict[str, list[dict]]:
    """The same payments with keys that no other payment can share."""
    return {prefix + name: [r | {"key": r["key"] and f"{prefix}{name}:{r['key']}"} for r in records]
            for name, records in named.items()}
