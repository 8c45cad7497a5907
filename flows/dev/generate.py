"""Synthetic "day on disk" generator with ground truth.

`generate_day` writes one day of bank / processor / ledger events as
`out/<topic>/<partition>.jsonl` (one Kafka record value per line, line number =
offset) plus `out/truth.jsonl`, which labels every non-heartbeat line:

    {"topic", "partition", "offset", "source", "event_id", "payment",
     "scenario", "flags", "clean"}

Flags "missing" and "duplicate" belong to the payment and are set on all of its
records; "late" and "redelivery" belong to the record (both copies of a
redelivered line carry "redelivery"). `clean` is per payment: scenario in
key/partial_key/no_key and no flag on any of its records.

Everything is drawn from one seeded `random.Random` (the `_Rng` subclass) in a fixed
order, never from the clock or from set order, so the same arguments give
byte-identical files.

Density options make days of the same size that are harder to match: fewer
`accounts` (more payments compete in each account's window), a `hot_share` of
payments on one account (ACC00000), and the rate at which the processor reports
a payment twice (`reported_twice`). Each option at its default draws nothing
extra, so a day generated without them is byte-identical to one from before
they existed.
"""
from __future__ import annotations

import argparse
import gc
import random
import zlib
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import date, timedelta
from pathlib import Path

import msgspec

SOURCES = ("bank", "processor", "ledger")
DEFAULT_TOPICS = {s: f"recon.{s}" for s in SOURCES}
SCENARIOS = ("key", "partial_key", "no_key", "fee", "long_delay", "ambiguous", "malformed")
FLAGS = ("missing", "redelivery", "duplicate", "late")
CLEAN_SCENARIOS = ("key", "partial_key", "no_key")
MALFORMED_KINDS = ("invalid_json", "array", "missing_field", "amount_number", "lowercase_currency",
                   "too_many_decimals", "naive_time", "wrong_source", "non_utf8")

SEC = 1_000_000
MIN = 60 * SEC
DAY = 86_400 * SEC
# decimals, min and max minor units: roughly 1 .. 5000 EUR, so equal amounts by accident are rare
CURRENCIES = {"EUR": (2, 100, 500_000), "USD": (2, 100, 500_000), "GBP": (2, 100, 500_000),
              "JPY": (0, 150, 800_000), "KWD": (3, 300, 1_500_000), "BHD": (3, 400, 2_000_000)}
MAIN_CURRENCIES = ("EUR", "USD", "GBP", "JPY", "KWD")
MAIN_CURRENCY_CUM = (45, 75, 92, 97, 100)
# An "ambiguous" draw makes two payments, so its weight is half its share of payments.
SCENARIO_NAMES = ("key", "partial_key", "no_key", "fee", "long_delay", "ambiguous")
SCENARIO_CUM = (0.70, 0.825, 0.95, 0.9725, 0.995, 0.9975)
P_OTHER_CURRENCY, P_REFERENCE, P_REF_VARIANT = 0.03, 0.3, 0.2
P_MISSING, P_DUPLICATE, P_LATE, P_REDELIVERY, P_MALFORMED = 0.01, 0.0035, 0.003, 0.005, 0.002
MAX_DELIVERY_DELAY = 20 * SEC
HEARTBEAT_GAP = MIN
FINAL_HEARTBEAT = DAY + 120 * MIN
COMPANIES = ("ACME", "GLOBEX", "INITECH", "UMBRELLA", "STARK", "WAYNE ENT", "HOOLI", "SOYLENT")
_ABSENT = object()  # marks an optional field that is left out of the JSON object entirely


def partition_for(account: str, partitions: int) -> int:
    """Kafka partition of an account; the same for every topic."""
    return zlib.crc32(account.encode()) % partitions


def format_amount(minor: int, decimals: int) -> str:
    if decimals == 0:
        return str(minor)
    digits = str(minor).rjust(decimals + 1, "0")
    return f"{digits[:-decimals]}.{digits[-decimals:]}"


@dataclass
class GenerateSummary:
    out: Path
    transactions: int
    # payments per scenario (malformed: lines)
    scenarios: dict[str, int] = field(default_factory=lambda: dict.fromkeys(SCENARIOS, 0))
    # payments (missing, duplicate) or events (redelivery, late)
    flags: dict[str, int] = field(default_factory=lambda: dict.fromkeys(FLAGS, 0))
    clean_payments: int = 0
    records: dict[str, int] = field(default_factory=dict)  # non-heartbeat lines per topic
    heartbeats: int = 0

    def __str__(self) -> str:
        line = counts_line
        return (f"generated {self.transactions} payments into {self.out}\n"
                f"  scenarios: {line(self.scenarios)}\n"
                f"  flags:     {line(self.flags)}\n"
                f"  clean payments: {self.clean_payments}\n"
                f"  records:   {line(self.records)} heartbeats={self.heartbeats}")


def counts_line(counts: dict[str, int]) -> str:
    """Counts as a summary line prints them: name=count ..."""
    return " ".join(f"{k}={v}" for k, v in counts.items())


class TruthRecord(msgspec.Struct):
    """One line of truth.jsonl; decode with msgspec.json.decode(line, type=TruthRecord)."""
    topic: str
    partition: int
    offset: int
    source: str
    event_id: str | None  # None for malformed lines
    payment: str | None  # None for malformed lines
    scenario: str
    flags: list[str]
    clean: bool


class _Rng(random.Random):
    """The seeded Mersenne Twister with float-scaled integer draws: several times faster than
    the stdlib's getrandbits loop, and the bias (below n / 2**53) is irrelevant here."""

    def randrange(self, n: int) -> int:
        return int(self.random() * n)

    def randint(self, a: int, b: int) -> int:
        return a + int(self.random() * (b - a + 1))

    def choice(self, seq):
        return seq[int(self.random() * len(seq))]


@dataclass(slots=True)
class _Rec:
    arrival: int  # position in the partition log, in event-time microseconds
    seq: int  # creation order: breaks arrival ties deterministically
    line: bytes
    advancing: bool  # an on-time good record: moves the partition's heartbeat clock
    redeliver: int = 0  # write the line again this many records later
    truth: tuple | None = None  # (source, event_id, payment, scenario, flags, clean); None = heartbeat


def default_accounts(transactions: int) -> int:
    """About 20 payments per account, and never fewer than 50 accounts."""
    return max(50, transactions // 20)


class _Builder:
    def __init__(self, rng: _Rng, n: int, partitions: int, day: str, accounts: int,
                 hot_share: float, reported_twice: float, heartbeats: bool = True):
        self.heartbeats = heartbeats  # producer heartbeats into the gaps and at the end
        self.rng, self.n, self.partitions = rng, n, partitions
        self.hot_share, self.reported_twice = hot_share, reported_twice
        start = date.fromisoformat(day)
        self.dates = [(start + timedelta(days=d)).isoformat() for d in range(2)]
        accounts = [f"ACC{i:05d}" for i in range(accounts)]
        mains = rng.choices(MAIN_CURRENCIES, cum_weights=MAIN_CURRENCY_CUM, k=len(accounts))
        self.accounts = list(zip(accounts, mains))
        self.recs = [[[] for _ in range(partitions)] for _ in SOURCES]
        self.ew, self.pw = max(6, len(str(n))), max(7, len(str(n)))
        self.summary = GenerateSummary(Path(), n)
        self.seq = 0

    def ts(self, us: int) -> str:
        d, rest = divmod(us, DAY)
        s, micro = divmod(rest, SEC)
        h, s = divmod(s, 3600)
        m, s = divmod(s, 60)
        return f"{self.dates[d]}T{h:02d}:{m:02d}:{s:02d}.{micro:06d}Z"

    def payments(self) -> None:
        num = 1
        while num <= self.n:
            scenario = self.rng.choices(SCENARIO_NAMES, cum_weights=SCENARIO_CUM)[0]
            if scenario == "ambiguous" and num < self.n:
                self.ambiguous_pair(num)
                num += 2
            else:
                self.single(num, "key" if scenario == "ambiguous" else scenario)
                num += 1

    def payer(self) -> tuple[str, str]:
        """(account, main currency) of a payment: the hot account with probability hot_share
        (a coin tossed only when hot_share > 0), else any account, uniformly."""
        if self.hot_share and self.rng.random() < self.hot_share:
            return self.accounts[0]
        return self.accounts[self.rng.randrange(len(self.accounts))]

    def single(self, num: int, scenario: str) -> None:
        rng = self.rng
        account, currency = self.payer()
        if rng.random() < P_OTHER_CURRENCY:
            currency = rng.choice([c for c in CURRENCIES if c != currency])
        gross = rng.randint(*CURRENCIES[currency][1:])
        delay = rng.randint(120, 360) * MIN if scenario == "long_delay" else 0
        # leave room for skews and the delay so every event time stays inside the day
        t = rng.randrange(DAY - 15 * MIN - delay)
        spread = rng.choice((10, 60, 180, 600)) if scenario in ("partial_key", "no_key") else 120
        times = [t + rng.randrange(spread * SEC + 1) for _ in SOURCES]
        if delay:
            times[rng.randrange(3)] += delay
        amounts = [gross] * 3
        if scenario == "fee":
            amounts[0] = gross - max(1, gross * rng.randint(50, 300) // 10_000)
        self.emit(num, scenario, account, currency, amounts, times, self.keys(scenario))

    def keys(self, scenario: str) -> list:
        """Idempotency keys for (bank, processor, ledger)."""
        if scenario in ("fee", "long_delay"):
            scenario = self.rng.choice(("key", "partial_key"))
        key = self.new_key()
        if scenario == "key":
            return [key] * 3
        if scenario == "partial_key":
            return [self.no_key(), key, key]
        return [self.no_key() for _ in SOURCES]

    def new_key(self) -> str:
        return f"idk-{self.rng.getrandbits(64):016x}"

    def no_key(self):
        return self.rng.choice((None, _ABSENT))

    def ambiguous_pair(self, num: int) -> None:
        """Two payments, same account, amount and currency, 1..5 minutes apart; no bank keys."""
        rng = self.rng
        account, currency = self.payer()
        gross = rng.randint(*CURRENCIES[currency][1:])
        t = rng.randrange(DAY - 20 * MIN)
        with_keys = rng.random() < 0.5
        for j, start in enumerate((t, t + rng.randint(60, 300) * SEC)):
            if with_keys:  # each payment of the pair has its own processor/ledger key
                key = self.new_key()
                keys = [self.no_key(), key, key]
            else:
                keys = [self.no_key() for _ in SOURCES]
            times = [start + rng.randrange(30 * SEC + 1) for _ in SOURCES]
            self.emit(num + j, "ambiguous", account, currency, [gross] * 3, times, keys)

    def references(self) -> list:
        """Mostly none; sometimes an invoice text, slightly varied per source (matching must be fuzzy)."""
        rng = self.rng
        if rng.random() >= P_REFERENCE:
            return [rng.choice((None, _ABSENT)) for _ in SOURCES]
        ref = f"INV {rng.randint(1000, 9999)} {rng.choice(COMPANIES)}"
        variants = (ref.lower(), f"Ref: {ref}", ref.replace(" ", "  ", 1), ref.replace("INV ", "INV-"))
        return [rng.choice(variants) if rng.random() < P_REF_VARIANT else ref for _ in SOURCES]

    def emit(self, num, scenario, account, currency, amounts, times, keys) -> None:
        """Decide the payment's flags, then add its records to the partition logs."""
        rng = self.rng
        present, flags = [True] * 3, set()
        if rng.random() < P_MISSING:
            present[rng.randrange(3)] = False
            flags.add("missing")
        refs, eid = self.references(), f"{num:0{self.ew}d}"
        events = [(s, f"{SOURCES[s]}-{eid}", times[s], amounts[s], keys[s], refs[s])
                  for s in range(3) if present[s]]
        if present[1] and isinstance(keys[1], str) and rng.random() < self.reported_twice:
            flags.add("duplicate")
            events.append((1, f"processor-{eid}-dup", times[1] + rng.randint(1, 10) * SEC,
                           amounts[1], keys[1], refs[1]))
        late = [rng.random() < P_LATE for _ in events]
        again = [rng.randint(1, 50) if rng.random() < P_REDELIVERY else 0 for _ in events]
        clean = scenario in CLEAN_SCENARIOS and not flags and not any(late) and not any(again)
        self.count(scenario, flags, late, again, clean)
        payment = f"P{num:0{self.pw}d}"
        for event, is_late, k in zip(events, late, again):
            s, event_id, et = event[:3]
            mine = flags | {f for f, on in (("late", is_late), ("redelivery", k)) if on}
            truth = (SOURCES[s], event_id, payment, scenario, [f for f in FLAGS if f in mine], clean)
            self.add(s, account, et, self.tx_line(event, account, currency), truth, is_late, k)

    def tx_line(self, event: tuple, account: str, currency: str) -> bytes:
        s, event_id, et, minor, key, ref = event
        obj = {"type": "transaction", "source": SOURCES[s], "event_id": event_id, "account": account,
               "amount": format_amount(minor, CURRENCIES[currency][0]), "currency": currency,
               "event_time": self.ts(et)}
        if key is not _ABSENT:
            obj["idempotency_key"] = key
        if ref is not _ABSENT:
            obj["reference"] = ref
        return msgspec.json.encode(obj)

    def count(self, scenario, flags, late, again, clean) -> None:
        sm = self.summary
        sm.scenarios[scenario] += 1
        for flag in flags:
            sm.flags[flag] += 1
        sm.flags["late"] += sum(late)
        sm.flags["redelivery"] += sum(1 for k in again if k)
        sm.clean_payments += clean

    def add(self, s, account, et, line, truth, late=False, redeliver=0) -> None:
        arrival = et + self.rng.randrange(MAX_DELIVERY_DELAY + 1)
        if late:  # 5..20 minutes behind where its event time would put it
            arrival += self.rng.randint(5 * 60, 20 * 60) * SEC
        self.seq += 1
        advancing = not late and truth[3] != "malformed"
        rec = _Rec(arrival, self.seq, line, advancing, redeliver, truth)
        self.recs[s][partition_for(account, self.partitions)].append(rec)

    def malformed(self, count: int) -> None:
        """Bad lines among the good ones, each partitioned by the account it names (any account,
        uniformly: they are not payments, so the hot account takes no more than its share)."""
        rng = self.rng
        for n in range(1, count + 1):
            s = rng.randrange(3)
            account, currency = self.accounts[rng.randrange(len(self.accounts))]
            et = rng.randrange(DAY - 15 * MIN)
            line = self.bad_line(rng.choice(MALFORMED_KINDS), s, n, account, currency, et)
            self.add(s, account, et, line, (SOURCES[s], None, None, "malformed", [], False))
        self.summary.scenarios["malformed"] = count

    def bad_line(self, kind, s, n, account, currency, et) -> bytes:
        rng, decimals = self.rng, CURRENCIES[currency][0]
        amount = format_amount(rng.randint(*CURRENCIES[currency][1:]), decimals)
        obj = {"type": "transaction", "source": SOURCES[s], "event_id": f"{SOURCES[s]}-bad-{n:06d}",
               "account": account, "amount": amount, "currency": currency, "event_time": self.ts(et)}
        if kind == "invalid_json":  # truncated: the closing brace is always cut off
            return msgspec.json.encode(obj)[:-rng.randint(2, 20)]
        if kind == "array":
            return msgspec.json.encode(list(obj.values()))
        if kind == "non_utf8":
            return msgspec.json.encode(obj).replace(account.encode(), account.encode() + b"\xff\xfe", 1)
        if kind == "missing_field":
            del obj[rng.choice(("account", "amount", "currency", "event_time", "event_id"))]
        elif kind == "amount_number":
            obj["amount"] = msgspec.Raw(amount.encode())
        elif kind == "lowercase_currency":
            obj["currency"] = currency.lower()
        elif kind == "too_many_decimals":  # last digit non-zero so the extra decimal is significant
            minor = rng.randint(*CURRENCIES[currency][1:]) * 10 + rng.randint(1, 9)
            obj["amount"] = format_amount(minor, decimals + 1)
        elif kind == "naive_time":
            obj["event_time"] = obj["event_time"][:19]
        elif kind == "wrong_source":
            obj["source"] = SOURCES[(s + rng.randint(1, 2)) % 3]
        return msgspec.json.encode(obj)

    def heartbeat(self, source: str, at: int) -> _Rec:
        line = msgspec.json.encode({"type": "heartbeat", "source": source, "event_time": self.ts(at)})
        return _Rec(at, 0, line, True)

    def assemble(self, s: int, p: int) -> list[_Rec]:
        """Log order of one partition: by arrival, heartbeats in gaps, then redeliveries."""
        recs = sorted(self.recs[s][p], key=lambda r: (r.arrival, r.seq))
        if not self.heartbeats:  # as real producers publish: transactions and nothing else
            return _with_redeliveries(recs)
        log, clock = [], 0  # clock: arrival of the last on-time record or heartbeat
        for rec in recs:
            # fill gaps before every record (late ones too) so a late record always
            # finds the partition at least 80 s past its arrival time
            clock = self.fill(log, SOURCES[s], clock, rec.arrival)
            log.append(rec)
            if rec.advancing:
                clock = rec.arrival
        self.fill(log, SOURCES[s], clock, FINAL_HEARTBEAT)
        log.append(self.heartbeat(SOURCES[s], FINAL_HEARTBEAT))
        return _with_redeliveries(log)

    def fill(self, log: list, source: str, clock: int, until: int) -> int:
        while until - clock > HEARTBEAT_GAP:
            clock += HEARTBEAT_GAP
            log.append(self.heartbeat(source, clock))
        return clock


def _with_redeliveries(log: list[_Rec]) -> list[_Rec]:
    """Write each redelivered line again k records later, always before the final heartbeat."""
    last = len(log) - 2
    after: dict[int, list[_Rec]] = {}
    for i, rec in enumerate(log):
        if rec.redeliver:
            after.setdefault(min(i + rec.redeliver, last), []).append(rec)
    if not after:
        return log
    out = []
    for i, rec in enumerate(log):
        out.append(rec)
        out.extend(after.get(i, ()))
    return out


@contextmanager
def _no_gc():
    """Our records hold no cycles, yet ~1M allocations make the cyclic GC cost a third of the run."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def generate_day(out: Path, transactions: int, seed: int, partitions: int = 3,
                 topics: dict[str, str] | None = None, day: str = "2026-11-21", *,
                 accounts: int | None = None, hot_share: float = 0.0,
                 reported_twice: float | None = None, heartbeats: bool = True) -> GenerateSummary:
    """Write one synthetic day of partition logs plus truth.jsonl under `out`.

    accounts: how many accounts carry the payments (default `default_accounts`);
    hot_share: the probability that a payment goes to ACC00000 rather than to a
    uniformly drawn account; reported_twice: the probability that a payment with a
    processor key is reported again under a new event id (default P_DUPLICATE);
    heartbeats: False writes none (a live run's own heartbeats keep time moving).
    """
    accounts = default_accounts(transactions) if accounts is None else accounts
    reported_twice = P_DUPLICATE if reported_twice is None else reported_twice
    _check_density(accounts, hot_share, reported_twice)
    topics = dict(DEFAULT_TOPICS if topics is None else topics)
    if sorted(topics) != sorted(SOURCES):
        raise ValueError(f"topics must map exactly the sources {SOURCES}")
    builder = _Builder(_Rng(seed), transactions, partitions, day, accounts, hot_share,
                       reported_twice, heartbeats)
    with _no_gc():
        return _generate(builder, Path(out), topics)


def _check_density(accounts: int, hot_share: float, reported_twice: float) -> None:
    """ValueError unless the density options make sense (NaN fails every comparison)."""
    if not accounts >= 1:
        raise ValueError(f"accounts must be at least 1, not {accounts}")
    if not 0 <= hot_share < 1:
        raise ValueError(f"hot_share must be from 0 to below 1, not {hot_share}")
    if not 0 <= reported_twice <= 1:
        raise ValueError(f"reported_twice must be from 0 to 1, not {reported_twice}")


def _generate(builder: _Builder, out: Path, topics: dict[str, str]) -> GenerateSummary:
    partitions = builder.partitions
    builder.payments()
    good = sum(len(r) for parts in builder.recs for r in parts)
    builder.malformed(round(good * P_MALFORMED))
    summary = builder.summary
    summary.out = out
    truth: list[TruthRecord] = []
    for source, topic in topics.items():
        (out / topic).mkdir(parents=True, exist_ok=True)
        before = len(truth)
        for p in range(partitions):
            log = builder.assemble(SOURCES.index(source), p)
            (out / topic / f"{p}.jsonl").write_bytes(b"\n".join(r.line for r in log) + b"\n")
            truth.extend(_truth_lines(topic, p, log))
            summary.heartbeats += sum(1 for r in log if r.truth is None)
        summary.records[topic] = len(truth) - before
    (out / "truth.jsonl").write_bytes(msgspec.json.Encoder().encode_lines(truth))
    return summary


def _truth_lines(topic: str, partition: int, log: list[_Rec]) -> list[TruthRecord]:
    return [TruthRecord(topic, partition, offset, *rec.truth)
            for offset, rec in enumerate(log) if rec.truth is not None]


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description="Write a synthetic day of recon topics with ground truth")
    ap.add_argument("out", type=Path)
    ap.add_argument("--transactions", type=int, default=100_000)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--partitions", type=int, default=3)
    ap.add_argument("--day", default="2026-11-21")
    ap.add_argument("--accounts", type=int, default=None,
                    help="accounts carrying the payments (default max(50, transactions / 20))")
    ap.add_argument("--hot-share", type=float, default=0.0,
                    help="share of payments on the one hot account ACC00000 (default 0)")
    ap.add_argument("--reported-twice", type=float, default=P_DUPLICATE,
                    help=f"probability that the processor reports a payment twice (default {P_DUPLICATE})")
    args = ap.parse_args(argv)
    try:
        summary = generate_day(args.out, args.transactions, args.seed, args.partitions, day=args.day,
                               accounts=args.accounts, hot_share=args.hot_share,
                               reported_twice=args.reported_twice)
    except ValueError as err:
        ap.error(str(err))
    print(summary)


if __name__ == "__main__":
    main()
