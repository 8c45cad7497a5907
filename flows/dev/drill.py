"""`tally drill`: SIGKILL the flow at awkward moments and prove that it lost and doubled nothing.

A drill runs the same log twice with `tally run --until-end` in subprocesses:
once undisturbed into the namespace `drill_reference`, and once into
`drill_crashed`, killed K times and restarted after each kill. Then it compares
the two, in PostgreSQL and in Parquet, decision by decision and fate by fate.

Each attempt is killed once its committed snapshots cover a random share of
what is left, so kills spread over the whole log. Kills come in six kinds, in
an order shuffled by the seed:
- random: a random moment (up to half a second) later, wherever the flow is;
- after-snapshot: as soon as the recovery store commits a new epoch;
- postgres-write: inside a sink transaction. The drill locks the namespace's
  tables, waits until the flow's INSERT queues behind the lock, kills the flow,
  then releases the lock (the orphaned transaction never commits);
- parquet-write: while a sink's temporary file exists, before its rename;
- second-runner: after a snapshot, a second `tally run` into the same namespace
  must be refused (exit 2), then the first is killed;
- launcher: the attempt runs as `--processes 2` and its launcher is killed; its
  members must end by themselves and free the namespace for the next attempt.
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import psycopg
from psycopg import sql

from flows import logs

from flows.kafka import kafka_io
from flows.dev.generate import generate_day
from flows.dev.settlement_day import generate_settlement
from flows.logs import UserError
from flows.progress import table
from flows.runtime.recovery_store import read_committed
from sinks import compare
from sinks.postgres import drop_namespace
from state.config import MatchConfig, to_toml

REFERENCE, CRASHED = "drill_reference", "drill_crashed"
KINDS = ("random", "after-snapshot", "postgres-write", "parquet-write", "second-runner",
         "launcher")
MEMBERS_END_S = 30.0  # how long the members of a killed launcher may take to end
# Many short epochs, so that kills land between many snapshots even on a small day.
# An epoch lasts about as long as one poll of every partition takes to process,
# so the crashed run reads small batches: a few epochs between two kills.
SNAPSHOT_INTERVAL_S = 0.2
EPOCHS_PER_KILL = 3
SECONDS_PER_KILL = 2
TRIGGER_TIMEOUT_S = 20.0  # a trigger not seen by then becomes a plain kill
RUN_TIMEOUT_S = 900.0


@dataclass
class DrillOptions:
    brokers: str
    pg_dsn: str
    root: Path  # <data-dir>/drill: the day, the config, both namespaces' files, logs
    kills: int
    transactions: int
    seed: int
    config: MatchConfig
    existing_topics: bool = False


@dataclass
class Kill:
    kind: str
    after_s: float
    evidence: str  # what was observed at the moment of the kill
    committed: int  # records covered by the last committed snapshot at the kill


@dataclass
class Verdict:
    kills: list[Kill]
    requested: int
    counts: list[tuple[str, int, int]]  # (what, reference, crashed)
    differences: list[tuple[str, compare.Difference]] = field(default_factory=list)
    duplicates: dict[str, int] = field(default_factory=dict)

    @property
    def identical(self) -> bool:
        return not self.differences and not any(self.duplicates.values())

    @property
    def complete(self) -> bool:
        return len(self.kills) == self.requested

    def __str__(self) -> str:
        word = "IDENTICAL" if self.identical else "DIFFERENT"
        rows = [(f"kill {i + 1}: {k.kind}", f"at {k.after_s:.1f}s, {k.committed:,} records "
                                             f"committed; {k.evidence}")
                for i, k in enumerate(self.kills)]
        rows += [(what, f"{a:>10,} {b:>10,}") for what, a, b in self.counts]
        doubled = {where: n for where, n in self.duplicates.items() if n}
        rows += [(f"duplicate rows in {where}", n) for where, n in sorted(doubled.items())]
        if not doubled:
            rows.append(("duplicate rows", "none in either namespace, PostgreSQL or Parquet"))
        lines = [table(rows, f"Drill verdict: {word} after {len(self.kills)} of "
                             f"{self.requested} kills (counts: reference, crashed)")]
        for where, diff in self.differences:
            lines.append(_describe(where, diff))
        if not self.complete:
            lines.append(f"the crashed run finished after {len(self.kills)} kills; "
                         f"use more --transactions for {self.requested}")
        return "\n".join(lines)


def drill(options: DrillOptions) -> Verdict:
    options.root.mkdir(parents=True, exist_ok=True)
    config = options.config if options.existing_topics else _drill_topics(options)
    config_file = options.root / "drill.toml"
    config_file.write_text(to_toml(config))
    topics = list(config.topics.values())
    ends_before = kafka_io.end_offsets(options.brokers, topics)
    total = sum(ends_before.values())
    if total == 0:
        raise UserError(f"the topics {', '.join(topics)} are empty: nothing to drill on")
    for namespace in (REFERENCE, CRASHED):
        drop_namespace(options.pg_dsn, namespace)
        shutil.rmtree(options.root / namespace, ignore_errors=True)

    flow = _Flow(options, config_file)
    _step(f"reference run into {REFERENCE} ({total:,} records)")
    started = time.monotonic()
    flow.finish(REFERENCE, "reference")
    _step(f"reference done in {time.monotonic() - started:.1f}s; crashed run into {CRASHED}")
    kills = _crash_repeatedly(flow, options, config, total)
    if kafka_io.end_offsets(options.brokers, topics) != ends_before:
        raise UserError("the topics received records during the drill, so the two runs read "
                        "different logs; stop the producers or drill on generated topics")
    return compare_runs(options, kills)


def _drill_topics(options: DrillOptions) -> MatchConfig:
    """Generate a day into fresh topics, named so they never collide with real ones."""
    tag = f"{options.seed}-{os.getpid()}-{int(time.time())}"
    topics = {source: f"tally-drill-{tag}.{source}" for source in options.config.topics}
    config = MatchConfig(**{**_fields(options.config), "topics": topics})
    day = options.root / "day"
    shutil.rmtree(day, ignore_errors=True)
    _step(f"generating {options.transactions:,} payments (seed {options.seed}) into "
          f"tally-drill-{tag}.*")
    if options.config.relations:  # a settlement config: a settlement day (docs/settlement.md)
        try:
            generate_settlement(day, options.transactions, options.seed, topics=topics)
        except ValueError as err:
            raise UserError(f"tally drill generates settlement days for the sources of "
                            f"docs/examples/settlement.toml only: {err}") from None
    else:
        generate_day(day, options.transactions, options.seed, topics=topics)
    kafka_io.create_topics(options.brokers, list(topics.values()), 3)
    kafka_io.produce_day(options.brokers, day, list(topics.values()), progress=False)
    return config


def _fields(config: MatchConfig) -> dict:
    return {name: getattr(config, name) for name in config.__struct_fields__}


# ----------------------------------------------------------------------------- the flow process

class _Flow:
    """`tally run --until-end` as a subprocess, one attempt at a time."""

    def __init__(self, options: DrillOptions, config_file: Path):
        self.options, self.config_file = options, config_file
        self.attempt = 0

    def start(self, namespace: str, label: str, *extra: str) -> subprocess.Popen:
        self.attempt += 1
        log = open(self.options.root / f"{namespace}-{self.attempt:02d}-{label}.log", "wb")
        # Addresses travel in the environment: a DSN with a password never sits in argv.
        env = os.environ | {"TALLY_BROKERS": self.options.brokers,
                            "TALLY_PG_DSN": self.options.pg_dsn}
        with log:
            return subprocess.Popen(
                [sys.executable, "-m", "flows", "run", "--until-end", "--namespace", namespace,
                 "--data-dir", str(self.options.root), "--config", str(self.config_file),
                 "--snapshot-interval", str(SNAPSHOT_INTERVAL_S), *extra],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=env)

    def finish(self, namespace: str, label: str, *extra: str) -> None:
        proc = self.start(namespace, label, *extra)
        try:
            code = proc.wait(RUN_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            code = "timeout"
        if code != 0:
            raise UserError(f"the {label} run into {namespace} failed ({code}); see "
                            f"{self.options.root}/{namespace}-{self.attempt:02d}-{label}.log")


def _crash_repeatedly(flow: _Flow, options: DrillOptions, config: MatchConfig,
                      total: int) -> list[Kill]:
    """K attempts, each killed once it has committed a random share of what is left."""
    rng = random.Random(options.seed)
    kinds = [KINDS[i % len(KINDS)] for i in range(options.kills)]
    rng.shuffle(kinds)
    batch = _batch_size(options, config, total)
    # Paced, so that a whole run lasts a few seconds per kill: unpaced, a small day is
    # read faster than a kill can be placed in it.
    rate = max(1000, total // ((options.kills + 1) * SECONDS_PER_KILL))
    watch = _Watch(options.root / CRASHED, options.pg_dsn)
    kills: list[Kill] = []
    for kind in kinds:
        cluster = ("--processes", "2") if kind == "launcher" else ()
        proc = flow.start(CRASHED, f"kill-{len(kills) + 1}-{kind}", "--batch-size", str(batch),
                          "--max-rate", str(rate), *cluster)
        started = time.monotonic()
        done = watch.committed()[1]
        share = rng.uniform(0.2, 1.0) / (options.kills - len(kills) + 1)
        watch.progress(done + int((total - done) * share), proc)
        if kind == "random":
            time.sleep(rng.uniform(0, 0.5))
        seen = watch.until(kind, proc)
        if proc.poll() is not None:  # it finished (or failed) before the trigger
            if proc.returncode != 0:
                raise UserError(f"the crashed run failed on its own (exit {proc.returncode}) "
                                f"before kill {len(kills) + 1}; see its log in {options.root}")
            break
        refused = _second_runner(flow) if kind == "second-runner" and seen else None
        members = children(proc.pid)
        after = time.monotonic() - started
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        evidence = watch.evidence(kind) if seen else "trigger not seen in time, a plain kill"
        if refused:
            evidence = f"a second runner was refused: {refused}"
        if kind == "launcher" and seen:
            evidence = _members_end(members)
        watch.release()
        kills.append(Kill(kind, after, evidence, watch.committed()[1]))
        _step(f"kill {len(kills)}/{options.kills}: {kind} at {after:.1f}s, "
              f"{kills[-1].committed:,} of {total:,} records committed; {evidence}")
    flow.finish(CRASHED, "final", "--batch-size", str(batch))
    return kills


def _second_runner(flow: _Flow) -> str:
    """Start another run into the namespace the attempt holds: it must be refused."""
    second = flow.start(CRASHED, "second-runner")
    try:
        code = second.wait(60)
    except subprocess.TimeoutExpired:
        second.kill()
        code = "still running after 60s"
    log = flow.options.root / f"{CRASHED}-{flow.attempt:02d}-second-runner.log"
    line = next((l for l in reversed(log.read_text().splitlines()) if l.startswith("tally: ")), "")
    if code != 2 or "already being run" not in line:
        raise UserError(f"a second runner into {CRASHED} was not refused (exit {code}); see {log}")
    return line.split(" (host")[0].removeprefix("tally: ")


def children(pid: int) -> list[int]:
    """The processes whose parent is `pid` (the members of a launcher)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


def _members_end(members: list[int]) -> str:
    """The members of a killed launcher end by themselves (their parent-death signal)."""
    started = time.monotonic()
    while time.monotonic() - started < MEMBERS_END_S:
        running = [pid for pid in members if alive(pid)]
        if not running:
            return f"its {len(members)} members ended {time.monotonic() - started:.1f}s after it"
        time.sleep(0.05)
    raise UserError(f"the members {running} of a killed launcher still run after "
                    f"{MEMBERS_END_S:.0f}s; stop them by hand")


def alive(pid: int) -> bool:
    """Running (a zombie waiting for its parent to reap it has ended)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, ProcessLookupError):
        return False


def _batch_size(options: DrillOptions, config: MatchConfig, total: int) -> int:
    partitions = sum(kafka_io.topic_partitions(options.brokers, list(config.topics.values())).values())
    epochs = (options.kills + 1) * EPOCHS_PER_KILL
    return max(50, min(5000, total // (partitions * epochs)))


class _Watch:
    """Observes the crashed namespace from outside: recovery store, Parquet files, PostgreSQL."""

    def __init__(self, data_root: Path, pg_dsn: str):
        self.data_root, self.pg_dsn = data_root, pg_dsn
        self.lock_conn: psycopg.Connection | None = None

    def until(self, kind: str, proc: subprocess.Popen) -> bool:
        """Block until kind's moment (True), the process exits, or the timeout (False)."""
        if kind == "random":
            return True
        if kind in ("second-runner", "launcher"):
            kind = "after-snapshot"  # holding the namespace, and mid-run
        if kind == "postgres-write":
            return self._postgres_write(proc)
        seen = self._parquet_write if kind == "parquet-write" else self._new_epoch()
        deadline = time.monotonic() + TRIGGER_TIMEOUT_S
        while proc.poll() is None and time.monotonic() < deadline:
            if seen():
                return True
            time.sleep(0.002)
        return False

    def evidence(self, kind: str) -> str:
        """What the kill interrupted, as seen from outside right after it."""
        if kind == "postgres-write":
            return "its INSERT was queued inside an open transaction"
        if kind == "parquet-write":
            torn = self._parquet_write()
            return "a half-written temporary file was left behind" if torn else \
                "the temporary file was already renamed"
        if kind == "after-snapshot":
            return f"epoch {self.committed()[0]} had just committed"
        return "wherever it was"

    def progress(self, records: int, proc: subprocess.Popen) -> None:
        """Block until the committed snapshots cover `records`, or the process exits."""
        while proc.poll() is None and self.committed()[1] < records:
            time.sleep(0.01)

    def committed(self) -> tuple[int, int]:
        """(last committed epoch, records covered by the committed source snapshots)."""
        try:
            state = read_committed(self.data_root / "recovery", engine=False)
        except UserError:
            state = None  # not created yet, or busy: this poll sees nothing new
        if state is None:
            return -1, 0
        return state.epoch, sum(state.next_offsets.values())

    def _new_epoch(self):
        first = self.committed()[0]
        return lambda: self.committed()[0] > first

    def _parquet_write(self) -> bool:
        for table_dir in ("decisions", "fates", "events"):
            for day in _subdirs(self.data_root / table_dir):
                if any(name.endswith(".tmp") for name in os.listdir(day)):
                    return True
        return False

    def _postgres_write(self, proc: subprocess.Popen) -> bool:
        """Lock the sink's tables and wait for the flow's INSERT to queue behind the lock."""
        schema = sql.Identifier(CRASHED)
        deadline = time.monotonic() + TRIGGER_TIMEOUT_S
        conn = psycopg.connect(self.pg_dsn)
        self.lock_conn = conn
        while proc.poll() is None and time.monotonic() < deadline:
            if conn.execute("SELECT to_regclass(%s)", (f"{CRASHED}.fates",)).fetchone()[0]:
                break
            conn.rollback()
            time.sleep(0.05)
        else:
            return False
        conn.execute(sql.SQL("LOCK TABLE {}.decisions, {}.fates IN EXCLUSIVE MODE").format(
            schema, schema))
        waiting = sql.SQL("SELECT count(*) FROM pg_locks WHERE NOT granted AND relation IN "
                          "(%s::regclass, %s::regclass)")
        names = (f"{CRASHED}.decisions", f"{CRASHED}.fates")
        while proc.poll() is None and time.monotonic() < deadline:
            if conn.execute(waiting, names).fetchone()[0]:
                return True
            time.sleep(0.005)
        return False

    def release(self) -> None:
        if self.lock_conn is not None:
            self.lock_conn.close()  # rolls back, releasing the lock
            self.lock_conn = None


def _subdirs(path: Path) -> list[str]:
    try:
        return [entry.path for entry in os.scandir(path) if entry.is_dir()]
    except FileNotFoundError:
        return []


# ----------------------------------------------------------------------------- comparison

def compare_runs(options: DrillOptions, kills: list[Kill]) -> Verdict:
    stores = {
        "PostgreSQL": (compare.from_postgres(options.pg_dsn, REFERENCE),
                       compare.from_postgres(options.pg_dsn, CRASHED)),
        "Parquet": (compare.from_parquet(options.root / REFERENCE),
                    compare.from_parquet(options.root / CRASHED)),
    }
    verdict = Verdict(kills, options.kills, counts=[])
    for store, (ref, crashed) in stores.items():
        tables = compare.TABLES + (("events",) if store == "Parquet" else ())
        for name in tables:
            verdict.counts.append((f"{name} in {store}", ref.count(name), crashed.count(name)))
        verdict.differences += [(store, d) for d in compare.compare(ref, crashed, tables)]
        for name in tables:
            verdict.duplicates[f"{store} {name} ({CRASHED})"] = crashed.duplicates[name]
            verdict.duplicates[f"{store} {name} ({REFERENCE})"] = ref.duplicates[name]
    return verdict


def _describe(store: str, diff: compare.Difference, limit: int = 10) -> str:
    lines = [f"{store} {diff.table}: {len(diff.only_a)} only in {REFERENCE}, "
             f"{len(diff.only_b)} only in {CRASHED}, {len(diff.changed)} with different content"]
    for label, keys in (("only in reference", diff.only_a), ("only in crashed", diff.only_b),
                        ("different", diff.changed)):
        lines += [f"  {label}: {key}" for key in keys[:limit]]
    return "\n".join(lines)


def _step(text: str) -> None:
    print(f"== {text}", flush=True)
    logs.info(text)
