"""Tally's own heartbeats: a live run keeps deciding when partitions go quiet.

A day published as real producers publish it, transactions and nothing else, with
one bank partition quiet from 06:00 and one that never receives a record, goes
through a live `tally run` on the embedded broker and PostgreSQL. Tally writes
heartbeats into the quiet partitions, every record is decided, and the decisions
are those of the in-process engine on the same records at the end of time. The log
it leaves, replayed from the earliest offset into a new namespace, verifies
identical; a record that comes after a heartbeat that declared a later time is late.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import msgspec
import pytest

from flows.kafka import kafka_io
from flows.kafka.dayfiles import partitions, read_values
from flows.dev.generate import generate_day
from flows.dev.match import run_engine
from flows.runtime.pacemaker import Pacemaker
from state.config import MatchConfig, from_toml
from state.contract import Decoder, Heartbeat
from tests.flow_helpers import (FATE_FIELDS, decisions_written, engine_rows, pg_rows, read_decisions,
                                read_fates, start_tally, stop, tally, unique_topics, wait_until)

PAYMENTS = 3000
QUIET_FROM = "2026-11-21T06:00"
OUTCOME = FATE_FIELDS.index("outcome")
HEARTBEATS = '\n[heartbeats]\nidle = "300ms"\nmax_source_delay = "2m"\n'


def cut_at(values: list[bytes], moment: str) -> list[bytes]:
    """The log up to its first record at or after `moment` (a quiet partition from then)."""
    for i, value in enumerate(values):
        try:
            if json.loads(value)["event_time"] >= moment:
                return values[:i]
        except (ValueError, KeyError, TypeError):
            pass
    return values


def publish_quiet_day(broker: str, work: Path):
    """The day in fresh topics as producers publish it: no heartbeats, bank:0 quiet from
    06:00, bank:3 never written. Returns the topics, the config file and what the engine
    decides from the same records at the end of time."""
    topics = unique_topics()
    generate_day(work / "day", PAYMENTS, seed=31, topics=topics, heartbeats=False)
    values = {part: read_values(path)
              for part, path in partitions(work / "day", list(topics.values())).items()}
    values[(topics["bank"], 0)] = cut_at(values[(topics["bank"], 0)], QUIET_FROM)
    kafka_io.create_topics(broker, [topics["processor"], topics["ledger"]], 3)
    kafka_io.create_topics(broker, [topics["bank"]], 4)  # bank:3 never receives a record
    kafka_io.produce_values(broker, values, progress=False)
    config = work / "tally.toml"
    config.write_text("[sources]\n" + "".join(f'{s} = "{t}"\n' for s, t in topics.items()) + HEARTBEATS)
    values[(topics["bank"], 3)] = []
    return topics, config, in_process(values, topics)


@pytest.fixture(scope="module")
def quiet_day(broker, pg_dsn):
    """The quiet day, and a live run over it until all is decided."""
    work = Path(tempfile.mkdtemp(prefix="tally-heartbeats-"))
    topics, config, expected = publish_quiet_day(broker, work)
    env = {"TALLY_BROKERS": broker, "TALLY_PG_DSN": pg_dsn, "TALLY_CONFIG": str(config),
           "TALLY_DATA_DIR": str(work / "data")}
    flow = start_tally("run", "--namespace", "hb_live", "--snapshot-interval", "0.5", env=env)
    try:
        wait_until(lambda: decided(pg_dsn, "hb_live", flow) >= len(expected.decisions), 240,
                   "every record of the quiet day decided")
        yield work, topics, env, expected, flow
    finally:
        stop(flow)


def consumed_ends(pg_dsn: str, namespace: str, topics: dict[str, str]) -> str:
    """`--to` offsets: where a stopped live run had got to in each partition (it decided
    everything it read, so its fates say). Tally may have written heartbeats after them."""
    ends: dict[tuple[str, int], int] = {}
    for fate in read_fates(pg_dsn, namespace):
        part = (fate["topic"], fate["partition"])
        ends[part] = max(ends.get(part, 0), fate["offset"] + 1)
    return ",".join(f"{t}:{p}={n}" for (t, p), n in sorted(ends.items()))


def replay_verifies(env: dict, pg_dsn: str, live: str, topics: dict[str, str]) -> None:
    replay = f"{live}_replay"
    tally("replay", "--namespace", replay, "--from", "earliest",
          "--to", consumed_ends(pg_dsn, live, topics), env=env)
    out = tally("verify", "--a", live, "--b", replay, env=env).stdout
    assert out.strip().splitlines()[-1].startswith("IDENTICAL"), out


def decided(pg_dsn: str, namespace: str, flow) -> int:
    """Decisions written so far (0 before the run has made its tables)."""
    assert flow.poll() is None, f"the live run stopped: {flow.communicate()}"
    return decisions_written(pg_dsn, namespace)


def in_process(values: dict, topics: dict[str, str]):
    """The engine over the same records, flushed: every window decided, as at the end of time."""
    day = Path(tempfile.mkdtemp(prefix="tally-heartbeats-day-"))
    for (topic, partition), lines in values.items():
        (day / topic).mkdir(exist_ok=True)
        (day / topic / f"{partition}.jsonl").write_bytes(b"".join(v + b"\n" for v in lines))
    return run_engine(day, MatchConfig(topics=topics), flush=True, show_progress=False)


def tally_heartbeats(broker: str, topics: dict[str, str]) -> dict[tuple[str, int], list[Heartbeat]]:
    config = MatchConfig(topics=topics)
    decoder, found = Decoder(config), {}
    for part, records in kafka_io.read_to_end(broker, list(topics.values())).items():
        for offset, value in records:
            record = decoder.decode(value, part[0], part[1], offset)
            if isinstance(record, Heartbeat) and msgspec.json.decode(value).get("origin") == "tally":
                found.setdefault(part, []).append(record)
    return found


def test_quiet_partitions_get_heartbeats_and_every_record_is_decided(quiet_day, broker, pg_dsn):
    work, topics, env, expected, flow = quiet_day
    beats = tally_heartbeats(broker, topics)
    assert (topics["bank"], 3) in beats, "the partition that never received a record"
    assert (topics["bank"], 0) in beats, "the partition quiet from 06:00"
    decisions, fates = pg_rows(pg_dsn, "hb_live")
    want_decisions, want_fates = engine_rows(expected.decisions, expected.fates)
    assert decisions == want_decisions
    assert [f for f in fates if f[OUTCOME] != "heartbeat"] == want_fates


@pytest.mark.parametrize("namespace, extra", [("hb_second", ()), ("hb_two", ("--processes", "2"))],
                         ids=["another namespace", "two processes"])
def test_other_readers_of_the_same_topics_decide_the_same(quiet_day, pg_dsn, namespace, extra):
    """Another namespace reads the first one's heartbeats as records and writes its own;
    under --processes 2 each process writes into the partitions it reads."""
    work, topics, env, expected, _ = quiet_day
    flow = start_tally("run", "--namespace", namespace, "--snapshot-interval", "0.5", *extra, env=env)
    try:
        wait_until(lambda: decided(pg_dsn, namespace, flow) >= len(expected.decisions), 240,
                   f"every record decided in {namespace}")
    finally:
        stop(flow)
    assert pg_rows(pg_dsn, namespace)[0] == engine_rows(expected.decisions, expected.fates)[0]


def test_a_record_older_than_a_heartbeat_is_late(quiet_day, broker, pg_dsn):
    work, topics, env, expected, flow = quiet_day
    late = {"source": "bank", "event_id": "bank-after-the-heartbeat", "account": "ACC-LATE",
            "amount": "10.00", "currency": "EUR", "event_time": "2026-11-21T05:00:00Z"}
    kafka_io.produce_values(broker, {(topics["bank"], 0): [json.dumps(late).encode()]},
                            progress=False)
    row = wait_until(lambda: next((d for d in read_decisions(pg_dsn, "hb_live")
                                   if d["member_event_ids"] == ["bank:bank-after-the-heartbeat"]), None),
                     60, "the record after the heartbeat decided")
    assert row["exception_kind"] == "late"


def test_the_log_with_tallys_heartbeats_replays_identically(quiet_day, broker, pg_dsn):
    work, topics, env, expected, flow = quiet_day
    assert stop(flow) == 130
    replay_verifies(env, pg_dsn, "hb_live", topics)


def test_a_live_run_killed_midway_with_its_heartbeats_replays_identically(broker, pg_dsn):
    work = Path(tempfile.mkdtemp(prefix="tally-heartbeats-kill-"))
    topics, config, expected = publish_quiet_day(broker, work)
    env = {"TALLY_BROKERS": broker, "TALLY_PG_DSN": pg_dsn, "TALLY_CONFIG": str(config),
           "TALLY_DATA_DIR": str(work / "data")}
    args = ("run", "--namespace", "hb_killed", "--snapshot-interval", "0.3", "--max-rate", "2000")
    flow = start_tally(*args, env=env)
    wait_until(lambda: decided(pg_dsn, "hb_killed", flow) > len(expected.decisions) // 4, 120,
               "a quarter of the day decided")
    flow.kill()
    flow.communicate(timeout=30)
    flow = start_tally(*args[:-2], env=env)
    try:
        wait_until(lambda: decided(pg_dsn, "hb_killed", flow) >= len(expected.decisions), 240,
                   "the rest decided after the kill")
    finally:
        stop(flow)
    assert pg_rows(pg_dsn, "hb_killed")[0] == engine_rows(expected.decisions, expected.fates)[0]
    replay_verifies(env, pg_dsn, "hb_killed", topics)


def test_a_live_run_names_the_partitions_it_may_not_write_to(caplog):
    from flows.runtime.dataflow import FlowSettings
    from flows.runtime.run import pacemaker_for
    config = from_toml({"heartbeats": {"sources": {"bank": {"write": False}}}})
    parts = {(topic, p): 0 for topic in config.topics.values() for p in range(2)}
    settings = FlowSettings(config=config, kafka={}, starts=parts, ends=None, data_root=Path("."),
                            pg_dsn=None, namespace="x")
    with caplog.at_level("WARNING", logger="tally"):
        assert pacemaker_for(settings) is not None
    (line,) = [r.getMessage() for r in caplog.records]
    assert "recon.bank:0, recon.bank:1" in line and "can stall" in line
    assert pacemaker_for(FlowSettings(**{**settings.__dict__, "ends": parts})) is None  # bounded
    everything = from_toml({"heartbeats": {"write": False}})
    assert pacemaker_for(FlowSettings(**{**settings.__dict__, "config": everything})) is None


class Recorded(Pacemaker):
    """The pacemaker's rule with its writes kept in a list (the live tests write for real)."""

    def __init__(self, config, now_s):
        super().__init__({}, config, clock=lambda: now_s)
        self.beats = []

    def _write(self, part, source, time_us):
        self.beats.append((part, time_us))


def test_a_heartbeat_never_runs_ahead_of_a_backlog_and_follows_the_clock_after_it():
    config = from_toml({"heartbeats": {"idle": "1us", "max_source_delay": "2m",
                                       "sources": {"ledger": {"max_source_delay": "1d"}}}})
    now_s = 1_795_300_000
    quiet, busy, ledger = ("recon.bank", 0), ("recon.bank", 1), ("recon.ledger", 0)
    pacemaker = Recorded(config, now_s)
    pacemaker.read(busy, 1_795_000_000_000_000)
    pacemaker.polled(quiet, 0, False)  # nothing read yet, but the broker has not said EOF
    pacemaker.polled(quiet, 0, False)
    assert pacemaker.beats == [], "not caught up until the broker says so"
    pacemaker.polled(busy, 500, False)  # behind its end: a backlog
    pacemaker.read(busy, 1_795_000_000_000_000)
    pacemaker.polled(quiet, 0, True)
    pacemaker.polled(quiet, 0, True)
    assert pacemaker.beats == [(quiet, 1_795_000_000_000_000)]  # the stream's progress, no more
    pacemaker.read(quiet, 1_795_000_000_000_000)  # the heartbeat read back
    pacemaker.polled(quiet, 0, True)
    assert len(pacemaker.beats) == 1, "nothing new to declare"
    pacemaker.polled(busy, 0, True)  # caught up everywhere: the present less the source's delay
    pacemaker.polled(quiet, 0, True)
    pacemaker.polled(ledger, 0, True)
    pacemaker.polled(ledger, 0, True)
    assert pacemaker.beats[1:] == [(busy, now_s * 10**6 - 120 * 10**6),
                                   (quiet, now_s * 10**6 - 120 * 10**6),
                                   (ledger, now_s * 10**6 - 86_400 * 10**6)]
