"""A broker that is gone under a live run (Tally 10/14): said at once, then at a slowing rate.

Every Kafka client of a run (the source's consumer per partition, the pacemaker's
producer, readers) reports to one reporter per process (flows/kafka/outage.py): the first
line at once, then after 10 s, 30 s, 1 min, 2 min, 5 min and every 5 min; one line
when the broker answers again. librdkafka's own lines stay at DEBUG.

The broker is a Tansu of the test's own, stopped under the run. Tansu keeps its log
in memory, so the broker started again on the same port is given the same log back
(the same records, so the same offsets) before anything new.
"""

from __future__ import annotations

import logging
import signal
import tempfile
import threading
import time
from pathlib import Path

import pytest

from flows.kafka import kafka_io
from flows.dev.generate import generate_day
from flows.dev.services import start_broker, stop_broker
from tests.flow_helpers import flow_env, start_tally, unique_topics, wait_until, write_config

PAYMENTS = 300
GONE_S = 25


class Stderr:
    """A process's stderr lines, each with the monotonic time it was read."""

    def __init__(self, proc):
        self.lines: list[tuple[float, str]] = []
        self.thread = threading.Thread(target=self._pump, args=(proc,), daemon=True)
        self.thread.start()

    def _pump(self, proc) -> None:
        for line in proc.stderr:
            self.lines.append((time.monotonic(), line.rstrip("\n")))

    def since(self, moment: float, until: float = float("inf")) -> list[tuple[float, str]]:
        return [(t, line) for t, line in list(self.lines) if moment <= t < until]


@pytest.fixture
def own_broker():
    """A broker of the test's own: [pid, address, directory]; stopped at the end if still up."""
    work = Path(tempfile.mkdtemp(prefix="tally-gone-"))
    pid, address = start_broker(work / "broker")
    state = [pid, address, work]
    yield state
    if state[0] is not None:
        stop_broker(state[0])


def _publish(broker: str, topics: dict[str, str], day: Path) -> None:
    kafka_io.create_topics(broker, list(topics.values()), 3)
    kafka_io.produce_day(broker, day, list(topics.values()), progress=False)


def _stop(state) -> float:
    stop_broker(state[0])
    state[0] = None
    return time.monotonic()


def _show(stderr: Stderr, start: float) -> None:
    print("\n".join(f"  +{t - start:5.1f}s {line}" for t, line in stderr.since(0)))


def test_a_broker_gone_under_a_live_run_is_reported_once_then_at_a_slowing_rate(own_broker, pg_dsn):
    pid, broker, work = own_broker
    topics = unique_topics()
    generate_day(work / "day", PAYMENTS, seed=5, topics=topics)
    _publish(broker, topics, work / "day")
    config = write_config(work / "tally.toml", topics)  # heartbeats on: the producer talks too
    flow = start_tally("run", "--namespace", "gone", env=flow_env(broker, pg_dsn, config, work))
    stderr = Stderr(flow)
    try:
        wait_until(lambda: any("flow starting" in line for _, line in stderr.lines), 60, "the run")
        time.sleep(7)  # past the heartbeat interval: the pacemaker's producer has written
        gone = _stop(own_broker)
        time.sleep(GONE_S)
        during = stderr.since(gone - 1)
        flow.send_signal(signal.SIGTERM)
        assert flow.wait(60) == 130
    finally:
        if flow.poll() is None:
            flow.kill()
    stderr.thread.join(5)
    _show(stderr, gone)
    reports = [(t, line) for t, line in during if "cannot reach the Kafka broker" in line]
    print(f"{len(during)} line(s) on stderr in {GONE_S}s without a broker, "
          f"{len(reports)} of them 'cannot reach'")
    assert [line for _, line in during if "cannot reach" not in line] == [], \
        "nothing else is printed while the broker is gone (librdkafka's lines stay at DEBUG)"
    assert 2 <= len(reports) <= 3
    (first, first_line), (second, _) = reports[:2]
    assert first - gone < 4, "the first report comes at once"
    assert broker in first_line and "since" in first_line and "retrying" in first_line
    assert 8 <= second - first <= 14, "the second 10 s after the first"
    if len(reports) == 3:
        assert reports[2][0] - first >= 28, "the third 30 s after the first"


def test_a_broker_back_on_its_port_is_said_once_and_the_run_goes_on(own_broker, pg_dsn):
    pid, broker, work = own_broker
    topics = unique_topics()
    generate_day(work / "day", PAYMENTS, seed=6, topics=topics)
    generate_day(work / "later", PAYMENTS, seed=7, topics=topics)
    _publish(broker, topics, work / "day")
    # no heartbeats of Tally's own: the log stays what the test published, so it can be
    # given back whole to the broker started again
    config = write_config(work / "tally.toml", topics)
    config.write_text(config.read_text() + "\n[heartbeats]\nwrite = false\n")
    flow = start_tally("run", "--namespace", "back", env=flow_env(broker, pg_dsn, config, work))
    stderr = Stderr(flow)
    try:
        wait_until(lambda: any("flow starting" in line for _, line in stderr.lines), 60, "the run")
        time.sleep(4)
        gone = _stop(own_broker)
        wait_until(lambda: any("cannot reach" in line for _, line in stderr.since(gone - 1)), 10,
                   "the first report")
        time.sleep(12)
        port = int(broker.rsplit(":", 1)[1])
        own_broker[0], again = start_broker(work / "broker", port=port)
        assert again == broker
        _publish(broker, topics, work / "day")  # the same log, so the same offsets
        _publish(broker, topics, work / "later")  # and something new to read
        back = wait_until(lambda: [t for t, line in stderr.since(gone)
                                   if "answers again" in line], 60, "the broker said back")
        time.sleep(5)
        flow.send_signal(signal.SIGTERM)
        assert flow.wait(60) == 130
    finally:
        if flow.poll() is None:
            flow.kill()
    stderr.thread.join(5)
    _show(stderr, gone)
    after = stderr.since(gone - 1)
    reports = [line for _, line in after if "cannot reach the Kafka broker" in line]
    answers = [line for _, line in after if "answers again" in line]
    assert 2 <= len(reports) <= 3 and len(answers) == 1, "one line each, not one per partition"
    assert broker in answers[0]
    assert not [line for t, line in after if t > back[0] and "cannot reach" in line]


def test_the_schedule_slows_to_every_five_minutes_and_one_outage_is_one_voice():
    """The reporter alone, on a clock of the test's own: many clients failing many times
    a second over an hour give 16 lines, at 0, 10 s, 30 s, 1, 2, 5 min, then every 5 min."""
    from flows.kafka.outage import BrokerOutage
    now = [1000.0]
    outage = BrokerOutage(clock=lambda: now[0], wall=lambda: 1_800_000_000.0)
    records: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = records.append
    tally_log = logging.getLogger("tally")
    level = tally_log.level
    tally_log.setLevel(logging.INFO)
    tally_log.addHandler(handler)
    try:
        for _ in range(3600 * 4):  # four failures a second, from nine partitions' clients
            for client in range(9):
                outage.failed("broker:9092", f"client {client}: Connection refused")
            now[0] += 0.25
        outage.answered()
        outage.answered()
    finally:
        tally_log.removeHandler(handler)
        tally_log.setLevel(level)
    lines = [r.getMessage() for r in records]
    said = [line for line in lines if "cannot reach" in line]
    assert len(said) == 6 + 10  # then at 10, 15, ..., 55 min
    assert "since 2027-01-15T08:00:00Z" in said[0] and "retrying" in said[0]
    assert "said again in 10s" in said[0] and "said again in 20s" in said[1]
    assert "5m00s now" in said[5] and "10m00s now" in said[6] and "55m00s now" in said[-1]
    assert lines[-1].startswith("the Kafka broker at broker:9092 answers again, after 60m00s away")
    assert sum("answers again" in line for line in lines) == 1
