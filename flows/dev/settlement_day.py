"""Synthetic settlement days with ground truth: the ledger, the acquirer's batches and
payouts, and the bank credits that pay them (docs/examples/settlement.toml).

`generate_settlement` writes `days` days as `out/<topic>/<partition>.jsonl` (one Kafka
record value per line, line number = offset, partition = `partition_for(account)` on
every topic) plus `out/truth.jsonl`, one `SettlementTruth` per non-heartbeat line.

The shape of a day:
- the ledger records each payment (and ~3% refunds of an earlier payment of the same
  batch, negative, with their own idempotency key) during the day, before 22:00;
- each account's processor closes one batch a day between 23:00 and 23:50: one item per
  payment (same gross and key, a 1-3% fee, none on refunds), sometimes a fee line
  (amount 0 with a fee), then the payout of the nets' sum;
- the bank books each payout 1 to 3 days later from 06:00:00, one second apart, its
  reference naming the batch in ~70% of credits.

Every payout is at least 2% from every other payout of its account (but for the equal
pairs), so no credit fits two payouts by accident.

Hard cases, a few of each a day on distinct batches (HARD_CASES): an item the processor
never reports though its payout counts it, a credit short by a bank charge, two equal
payouts whose credits name no batch, a payout never credited, a credit no payout explains.

Everything is drawn from one seeded `_Rng` in a fixed order, never from the clock or
from set order, so the same arguments give byte-identical files.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date, timedelta
from pathlib import Path

import msgspec

from flows.dev.generate import (CURRENCIES, DAY, MAIN_CURRENCIES, MAIN_CURRENCY_CUM, SEC, _no_gc,
                                _Rng, counts_line, default_accounts, format_amount,
                                partition_for)

SOURCES = ("ledger", "processor", "bank")
TOPICS = {s: f"recon.{s}" for s in SOURCES}
HARD_CASES = ("unreported_item", "bank_charge", "equal_payouts", "payout_never_arrives",
              "unexplained_credit")
KINDS = ("payment", "refund", "item", "fee_line", "payout", "credit")

HOUR = 3600 * SEC
LEDGER_HOURS = 22  # payments happen before their batch can close
CLOSE_AT, CLOSE_SPREAD = 23 * HOUR, 50 * 60  # batches close 23:00 .. 23:50 (seconds)
ITEM_LEAD = 300  # items are stamped up to 5 minutes before their batch's close (seconds)
BOOK_AT = 6 * HOUR  # the bank's daily statement starts at 06:00:00
BANK_LAG = (1, 3)  # days from a payout to its credit
DEPOSIT_LAG_DAYS = 5  # the upper end of the deposits relation's lag in docs/examples/settlement.toml
P_REFUND, P_FEE_LINE, P_NAMED = 0.03, 0.3, 0.7
HARD_RATE, MIN_HARD = 0.002, 2  # instances of each hard case per payment; at least this a day
HARD_SHARE = 10  # ... but at most one batch (or account) in this many per case, and at least 1
MAX_REDRAWS = 1_000  # of a batch whose payout comes too close to another (distinct)
UNHELPFUL = ("ACQUIRER SETTLEMENT", "STRIPE", "CARD PAYMENTS", "MERCHANT SERVICES CREDIT")


class SettlementTruth(msgspec.Struct):
    """One line of truth.jsonl; decode with msgspec.json.decode(line, type=SettlementTruth)."""
    topic: str
    partition: int
    offset: int
    source: str
    event_id: str
    kind: str  # one of KINDS
    payment: str | None  # ledger records and items
    # the batch that settles the record: a ledger record's too (the one place that names the
    # batch of an unreported item), a credit's is its payout's; None for an unexplained credit
    batch: str | None
    # the hard cases touching this record: a ledger record only its own payment's
    # (unreported_item), every processor record and credit its batch's
    hard: list[str]
    # a ledger record: its payment is reported on both sides; a fee line, payout or credit:
    # its batch is clean (no hard case: all items reported, payout and credit exact and
    # unique); an item: both
    clean: bool


@dataclass
class SettlementSummary:
    out: Path
    payments: int
    days: int
    accounts: int
    refunds: int = 0
    batches: int = 0
    clean_batches: int = 0
    fee_lines: int = 0
    clean_payments: int = 0
    hard: dict[str, int] = field(default_factory=lambda: dict.fromkeys(HARD_CASES, 0))
    records: dict[str, int] = field(default_factory=dict)  # non-heartbeat lines per topic
    heartbeats: int = 0

    def __str__(self) -> str:
        line = counts_line
        return (f"generated {self.payments} payments over {self.days} days into {self.out}\n"
                f"  accounts: {self.accounts}  refunds: {self.refunds}  batches: {self.batches} "
                f"(clean {self.clean_batches})  fee lines: {self.fee_lines}\n"
                f"  hard:     {line(self.hard)}\n"
                f"  clean payments: {self.clean_payments}\n"
                f"  records:  {line(self.records)} heartbeats={self.heartbeats}")


@dataclass(slots=True)
class _Payment:
    pid: str
    time: int
    gross: int  # negative for a refund
    fee: int
    key: str
    reported: bool = True  # False: the processor never reports it (unreported_item)


@dataclass(slots=True)
class _Batch:
    bid: str
    account: str
    currency: str
    day: int
    close: int
    payments: list[_Payment]
    hard: str | None = None
    fee: int = 0  # the fee line's fee; 0: no fee line

    @property
    def payout(self) -> int:
        return sum(p.gross - p.fee for p in self.payments) - self.fee


class _Builder:
    def __init__(self, rng: _Rng, payments: int, partitions: int, day: str, days: int, accounts: int):
        self.rng, self.partitions = rng, partitions
        start = date.fromisoformat(day)
        self.dates = [(start + timedelta(days=d)).isoformat() for d in range(days + BANK_LAG[1] + DEPOSIT_LAG_DAYS + 2)]
        names = [f"ACC{i:05d}" for i in range(accounts)]
        mains = rng.choices(MAIN_CURRENCIES, cum_weights=MAIN_CURRENCY_CUM, k=accounts)
        self.accounts = list(zip(names, mains))
        self.logs: dict[tuple[str, int], list[tuple]] = {(s, p): [] for s in SOURCES
                                                         for p in range(partitions)}
        self.payouts: dict[str, list[int]] = {}  # account -> its payout amounts
        self.booked: dict[int, int] = {}  # booking day -> credits booked on it so far
        self.pw = max(7, len(str(payments)))
        self.num = self.seq = self.credits = 0
        self.summary = SettlementSummary(Path(), payments, days, accounts)

    def ts(self, us: int) -> str:
        d, rest = divmod(us, DAY)
        s, micro = divmod(rest, SEC)
        h, s = divmod(s, 3600)
        m, s = divmod(s, 60)
        return f"{self.dates[d]}T{h:02d}:{m:02d}:{s:02d}.{micro:06d}Z"

    # --- one day -------------------------------------------------------------------

    def day(self, d: int, n: int) -> None:
        want = max(MIN_HARD, round(n * HARD_RATE))
        used = self.equal_pairs(d, want, n)
        batches = self.regular_batches(d, n - used)
        self.assign_hard(batches, want)
        for batch in batches:
            self.close(batch)

    def equal_pairs(self, d: int, want: int, n: int) -> int:
        """`want` pairs of batches (ids ending -A and -B), each pair on an account of its own,
        B repeating A's amounts and fees with payments of its own: equal payouts. Returns
        the payments used, at most half the day's."""
        rng, used = self.rng, 0
        pairs = min(want, max(1, len(self.accounts) // HARD_SHARE))
        for i in rng.sample(range(len(self.accounts)), pairs):
            size = rng.randint(1, 2)
            if used + 2 * size > n // 2:
                break
            account, currency = self.accounts[i]
            base = f"B-{account}-{self.dates[d].replace('-', '')}"
            first = self.distinct(lambda: _Batch(f"{base}-A", account, currency, d, self.close_time(d),
                                                 [self.payment(d, currency) for _ in range(size)],
                                                 "equal_payouts"))
            self.close(first)
            twins = [self.payment(d, currency, p.gross, p.fee) for p in first.payments]
            later = first.close + rng.randint(60, 240) * SEC
            self.close(_Batch(f"{base}-B", account, currency, d, later, twins, "equal_payouts"))
            self.summary.hard["equal_payouts"] += 1
            used += 2 * size
        return used

    def regular_batches(self, d: int, n: int) -> list[_Batch]:
        """The day's other payments, each on a uniformly drawn account: one batch per account."""
        rng = self.rng
        counts = [0] * len(self.accounts)
        for _ in range(n):
            counts[rng.randrange(len(self.accounts))] += 1
        return [self.distinct(lambda: self.regular_batch(d, i, count))
                for i, count in enumerate(counts) if count]

    def distinct(self, make) -> _Batch:
        """A batch from `make`, drawn again while its payout is within 2% of another payout of
        its account: then no credit (nor one short by a bank charge) fits two payouts by
        accident, and only the deliberate equal pairs are ambiguous."""
        num = self.num
        batch = make()
        # bounded: an account with hundreds of tiny batches may run out of room; then it keeps
        # the last draw rather than loop for ever
        for _ in range(MAX_REDRAWS):
            if not any(abs(batch.payout - p) * 50 < max(batch.payout, p)
                       for p in self.payouts.get(batch.account, ())):
                break
            self.num = num  # the new draw takes the same payment ids
            batch = make()
        return batch

    def regular_batch(self, d: int, i: int, count: int) -> _Batch:
        account, currency = self.accounts[i]
        payments: list[_Payment] = []
        for _ in range(count):
            prev = payments[-1] if payments else None
            # a refund gives back at most half of the payment before it, so no batch nets negative
            if prev and prev.gross > 0 and self.rng.random() < P_REFUND:
                payments.append(self.refund(d, prev))
            else:
                payments.append(self.payment(d, currency))
        bid = f"B-{account}-{self.dates[d].replace('-', '')}"
        batch = _Batch(bid, account, currency, d, self.close_time(d), payments)
        batch.fee = self.batch_fee(batch)
        return batch

    def payment(self, d: int, currency: str, gross: int | None = None, fee: int | None = None) -> _Payment:
        rng = self.rng
        time = d * DAY + rng.randrange(LEDGER_HOURS * 3600) * SEC + rng.randrange(SEC)
        if gross is None:
            gross = rng.randint(*CURRENCIES[currency][1:])
            fee = (gross * rng.randint(100, 300) + 5_000) // 10_000  # 1-3%, rounded to minor units
        return _Payment(self.new_pid(), time, gross, fee, self.key())

    def refund(self, d: int, of: _Payment) -> _Payment:
        rng = self.rng
        end = d * DAY + LEDGER_HOURS * HOUR
        time = of.time + rng.randrange(end - of.time)
        return _Payment(self.new_pid(), time, -rng.randint(1, of.gross // 2), 0, self.key())

    def new_pid(self) -> str:
        self.num += 1
        return f"P{self.num:0{self.pw}d}"

    def key(self) -> str:
        return f"idk-{self.rng.getrandbits(64):016x}"

    def close_time(self, d: int) -> int:
        return d * DAY + CLOSE_AT + self.rng.randrange(CLOSE_SPREAD) * SEC

    # --- hard cases on ordinary batches ----------------------------------------------

    def assign_hard(self, batches: list[_Batch], want: int) -> None:
        """Up to `want` batches for each batch-level case, distinct, in a seeded order, and
        never more than a share of the day's batches: most stay clean."""
        want = min(want, max(1, len(batches) // HARD_SHARE))
        order = self.rng.sample(range(len(batches)), len(batches))
        eligible = {"unreported_item": _can_unreport, "bank_charge": _can_charge,
                    "payout_never_arrives": lambda b: True}
        for case, fits in eligible.items():
            chosen = [b for b in (batches[i] for i in order) if b.hard is None and fits(b)][:want]
            for batch in chosen:
                batch.hard = case
                if case == "unreported_item":
                    self.rng.choice([p for p in batch.payments if p.gross > 0]).reported = False
            self.summary.hard[case] += len(chosen)

    # --- records ---------------------------------------------------------------------

    def close(self, b: _Batch) -> None:
        """The batch's ledger records, items, fee line and payout, then its credit."""
        part = partition_for(b.account, self.partitions)
        hard = [b.hard] if b.hard else []
        clean = b.hard is None
        for p in b.payments:
            self.ledger_record(b, part, p)
            if p.reported:
                self.item(b, part, p, hard, clean)
        if b.fee:
            self.fee_line(b, part, hard, clean)
        self.payout(b, part, b.payout, hard, clean)
        self.deposit(b, part, b.payout, hard, clean)
        self.payouts.setdefault(b.account, []).append(b.payout)
        self.summary.batches += 1
        self.summary.clean_batches += clean
        self.summary.refunds += sum(1 for p in b.payments if p.gross < 0)

    def ledger_record(self, b: _Batch, part: int, p: _Payment) -> None:
        kind = "refund" if p.gross < 0 else "payment"
        obj = {"type": "transaction", "source": "ledger", "event_id": f"ledger-{p.pid}",
               "account": b.account, "amount": self.money(p.gross, b.currency),
               "currency": b.currency, "event_time": self.ts(p.time), "idempotency_key": p.key}
        hard = [] if p.reported else ["unreported_item"]
        self.emit("ledger", part, p.time, obj, (kind, p.pid, b.bid, hard, p.reported))
        self.summary.clean_payments += p.reported

    def item(self, b: _Batch, part: int, p: _Payment, hard: list, clean: bool) -> None:
        at = b.close - self.rng.randint(1, ITEM_LEAD) * SEC
        obj = {"type": "transaction", "source": "processor", "event_id": f"item-{p.pid}",
               "account": b.account, "amount": self.money(p.gross, b.currency),
               "currency": b.currency, "event_time": self.ts(at), "idempotency_key": p.key,
               "fee": self.money(p.fee, b.currency), "batch_id": b.bid}
        self.emit("processor", part, at, obj, ("item", p.pid, b.bid, hard, clean))

    def batch_fee(self, b: _Batch) -> int:
        """Sometimes a batch fee of 0.50 .. 5.00 (major units), else 0."""
        if self.rng.random() >= P_FEE_LINE:
            return 0
        fee = max(1, self.rng.randint(50, 500) * 10 ** CURRENCIES[b.currency][0] // 100)
        # the acquirer waives it on a tiny batch: payouts stay positive
        return 0 if 4 * fee > b.payout else fee

    def fee_line(self, b: _Batch, part: int, hard: list, clean: bool) -> None:
        at = b.close - self.rng.randint(1, ITEM_LEAD) * SEC
        obj = {"type": "transaction", "source": "processor", "event_id": f"fee-{b.bid}",
               "account": b.account, "amount": self.money(0, b.currency), "currency": b.currency,
               "event_time": self.ts(at), "fee": self.money(b.fee, b.currency), "batch_id": b.bid}
        self.emit("processor", part, at, obj, ("fee_line", None, b.bid, hard, clean))
        self.summary.fee_lines += 1

    def payout(self, b: _Batch, part: int, amount: int, hard: list, clean: bool) -> None:
        obj = {"type": "payout", "source": "processor", "event_id": f"payout-{b.bid}",
               "account": b.account, "currency": b.currency, "amount": self.money(amount, b.currency),
               "event_time": self.ts(b.close), "batch_id": b.bid,
               "reference": f"TR{self.rng.getrandbits(48):012X}"}
        self.emit("processor", part, b.close, obj, ("payout", None, b.bid, hard, clean))

    def deposit(self, b: _Batch, part: int, payout: int, hard: list, clean: bool) -> None:
        rng = self.rng
        if b.hard == "payout_never_arrives":
            return
        amount = payout
        if b.hard == "bank_charge":
            amount -= max(1, payout * rng.randint(10, 90) // 10_000)  # 0.1% .. 0.9%
        named = b.hard != "equal_payouts" and rng.random() < P_NAMED
        ref = f"SETTLEMENT {b.bid}" if named else rng.choice(UNHELPFUL)
        book = b.day + rng.randint(*BANK_LAG)
        self.credit(b.account, b.currency, amount, book, ref, part, (b.bid, hard, clean))

    def unexplained_credits(self, d: int, want: int) -> None:
        """Credits on day d's statements that no payout explains: 2% or more off every payout
        of their account, so not even a bank charge could explain them."""
        rng = self.rng
        for _ in range(want):
            account, currency = self.accounts[rng.randrange(len(self.accounts))]
            low, high = CURRENCIES[currency][1:]
            amount = rng.randint(low, 10 * high)
            while any(abs(amount - p) * 50 < max(amount, p) for p in self.payouts.get(account, ())):
                amount = rng.randint(low, 10 * high)
            part = partition_for(account, self.partitions)
            book = d + rng.randint(*BANK_LAG)
            self.credit(account, currency, amount, book, rng.choice(UNHELPFUL), part,
                        (None, ["unexplained_credit"], False))
            self.summary.hard["unexplained_credit"] += 1

    def credit(self, account, currency, amount, book: int, ref: str, part: int, truth: tuple) -> None:
        """A bank credit on day `book`'s statement, one second after the one booked before it."""
        n = self.booked.get(book, 0)
        self.booked[book] = n + 1
        at = book * DAY + BOOK_AT + n * SEC
        self.credits += 1
        obj = {"type": "transaction", "source": "bank", "event_id": f"bank-{self.credits:07d}",
               "account": account, "amount": self.money(amount, currency), "currency": currency,
               "event_time": self.ts(at), "reference": ref}
        self.emit("bank", part, at, obj, ("credit", None, *truth))

    def money(self, minor: int, currency: str) -> str:
        text = format_amount(abs(minor), CURRENCIES[currency][0])
        return f"-{text}" if minor < 0 else text

    def emit(self, source: str, part: int, at: int, obj: dict, truth: tuple) -> None:
        self.seq += 1  # creation order breaks event-time ties deterministically
        self.logs[source, part].append((at, self.seq, msgspec.json.encode(obj),
                                        (source, obj["event_id"], *truth)))

    # --- the logs on disk -----------------------------------------------------------

    def assemble(self, source: str, part: int, final: int) -> list[tuple[bytes, tuple | None]]:
        """A partition's log in event-time order, a heartbeat into every quiet hour, and a
        final one beyond every record, so the engine can close every window."""
        log: list[tuple[bytes, tuple | None]] = []
        clock = 0
        for at, _, line, truth in sorted(self.logs[source, part]):
            while at - clock > HOUR:
                clock += HOUR
                log.append((self.heartbeat(source, clock), None))
            log.append((line, truth))
            clock = at
        while final - clock > HOUR:
            clock += HOUR
            log.append((self.heartbeat(source, clock), None))
        log.append((self.heartbeat(source, final), None))
        return log

    def heartbeat(self, source: str, at: int) -> bytes:
        return msgspec.json.encode({"type": "heartbeat", "source": source, "event_time": self.ts(at)})


def _can_unreport(batch: _Batch) -> bool:
    """Another record must stay in the batch, and the missing item must be a payment."""
    return len(batch.payments) >= 2 and any(p.gross > 0 for p in batch.payments)


def _can_charge(batch: _Batch) -> bool:
    """Big enough that a charge of at least one minor unit stays below 1% of the payout."""
    low = CURRENCIES[batch.currency][1]
    return sum(p.gross for p in batch.payments if p.gross > 0) >= 100 * low


def generate_settlement(out: Path, payments: int, seed: int, partitions: int = 3,
                        day: str = "2026-11-21", days: int = 2,
                        accounts: int | None = None,
                        topics: dict[str, str] | None = None) -> SettlementSummary:
    """Write `days` settlement days starting at `day` plus truth.jsonl under `out`.

    accounts: how many accounts carry the payments (default `default_accounts(payments)`);
    topics: source -> topic (default docs/examples/settlement.toml's).
    """
    topics = dict(TOPICS if topics is None else topics)
    if sorted(topics) != sorted(SOURCES):
        raise ValueError(f"topics must map exactly the sources {SOURCES}")
    accounts = default_accounts(payments) if accounts is None else accounts
    for name, value in (("payments", payments), ("partitions", partitions), ("days", days),
                        ("accounts", accounts)):
        if not value >= 1:
            raise ValueError(f"{name} must be at least 1, not {value}")
    builder = _Builder(_Rng(seed), payments, partitions, day, days, accounts)
    with _no_gc():
        return _generate(builder, Path(out), payments, days, topics)


def _generate(builder: _Builder, out: Path, payments: int, days: int,
              topics: dict[str, str]) -> SettlementSummary:
    per_day = [payments // days + (d < payments % days) for d in range(days)]
    for d, n in enumerate(per_day):
        builder.day(d, n)
    for d, n in enumerate(per_day):  # after every payout exists, so none explains them
        builder.unexplained_credits(d, max(MIN_HARD, round(n * HARD_RATE)))
    summary = builder.summary
    summary.out = out
    # every partition's last word: past the last credit plus the deposits lag of
    # docs/examples/settlement.toml, so a run to the end decides every record
    final = (days - 1 + BANK_LAG[1] + DEPOSIT_LAG_DAYS + 1) * DAY + BOOK_AT
    truth: list[SettlementTruth] = []
    for source in SOURCES:
        topic = topics[source]
        (out / topic).mkdir(parents=True, exist_ok=True)
        before = len(truth)
        for p in range(builder.partitions):
            log = builder.assemble(source, p, final)
            (out / topic / f"{p}.jsonl").write_bytes(b"\n".join(line for line, _ in log) + b"\n")
            truth.extend(SettlementTruth(topic, p, offset, *t)
                         for offset, (_, t) in enumerate(log) if t is not None)
            summary.heartbeats += sum(1 for _, t in log if t is None)
        summary.records[topic] = len(truth) - before
    (out / "truth.jsonl").write_bytes(msgspec.json.Encoder().encode_lines(truth))
    return summary
