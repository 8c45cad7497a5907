"""A broker that lost data (Tally 10/14, item 2), against the real embedded broker.

The namespace read a day, then its topics were deleted and created again, so the
offsets it resumes from lie beyond the new logs' ends. It used to consume nothing,
exit 0, and audit said CONSERVED. Now the run refuses in one line; with
--skip-lost-offsets it goes on from its own offsets, and audit names what it gave up.
"""

from __future__ import annotations

import json
import time

import psycopg
import pytest
from confluent_kafka.admin import AdminClient

from flows.kafka import kafka_io
from tests.flow_helpers import published, start_tally, stop, tally, wait_until

PAYMENTS = 400


def recreate(broker: str, topics: list[str]) -> None:
    admin = AdminClient({"bootstrap.servers": broker})
    for future in admin.delete_topics(topics).values():
        future.result(30)
    wait_until(lambda: not set(topics) & set(admin.list_topics(timeout=10).topics), 30,
               "the topics to be deleted")
    kafka_io.create_topics(broker, topics, 3)


def publish(broker: str, topics: list[str], per_partition: int, tag: str) -> None:
    values = {(t, p): [json.dumps({"type": "heartbeat", "source": t.rsplit(".", 1)[1],
                                   "event_time": f"2026-11-22T00:{i // 60:02d}:{i % 60:02d}Z",
                                   "note": tag}).encode()
                       for i in range(per_partition)]
              for t in topics for p in range(3)}
    kafka_io.produce_values(broker, values, progress=False)


@pytest.fixture(scope="module")
def lost(broker, pg_dsn):
    work, topics, env = published(broker, pg_dsn, "tally-lost-", PAYMENTS, seed=17)
    tally("run", "--until-end", "--namespace", "recreated", env=env)
    read_to = kafka_io.end_offsets(broker, list(topics.values()))
    recreate(broker, list(topics.values()))
    publish(broker, list(topics.values()), 5, "after the loss")
    return work, env, topics, read_to


def test_a_run_over_a_log_that_lost_its_offsets_refuses_in_one_line(lost):
    work, env, topics, read_to = lost
    result = tally("run", "--until-end", "--namespace", "recreated", env=env, expect=2)
    (line,) = [l for l in result.stderr.splitlines() if l.startswith("tally: ")]
    part = min(read_to)
    assert f"{part[0]}:{part[1]}: this namespace has read up to offset {read_to[part]:,}" in line
    assert "the broker holds offsets 0 to 5" in line and "--skip-lost-offsets" in line
    assert "Traceback" not in result.stderr
    audit = tally("audit", "--namespace", "recreated", env=env)  # what it read is whole
    assert "verdict: CONSERVED" in audit.stdout


def test_skipping_lost_offsets_is_recorded_and_audit_reports_them(lost):
    work, env, topics, read_to = lost
    result = tally("run", "--until-end", "--namespace", "recreated", "--skip-lost-offsets", env=env)
    assert "giving up offsets 5 to" in result.stderr
    assert "records consumed" in result.stdout and " 0\n" in result.stdout.split("records consumed")[1][:40]
    audit = tally("audit", "--namespace", "recreated", "--json", env=env, expect=1)
    report = json.loads(audit.stdout)
    assert not report["conserved"]
    assert sorted((e["partition"], e["lost_from"], e["lost_to"]) for e in report["lost"]) == \
        sorted((f"{t}:{p}", 5, offset) for (t, p), offset in read_to.items())
    text = tally("audit", "--namespace", "recreated", env=env, expect=1).stdout
    assert "verdict: NOT CONSERVED" in text and "NO: " in text and "given up" in text

    # once the new logs grow past the namespace's offsets, it reads on from exactly there
    grown = max(read_to.values()) + 3
    publish(broker_of(env), list(topics.values()), grown - 5, "grown")
    again = tally("run", "--until-end", "--namespace", "recreated", env=env)
    consumed = sum(grown - offset for offset in read_to.values())
    assert f"records consumed" in again.stdout
    assert str(consumed) in again.stdout.split("records consumed")[1].split("\n")[0].replace(",", "")


def broker_of(env: dict) -> str:
    return env["TALLY_BROKERS"]


def test_a_live_run_waits_for_a_shorter_log_to_grow_past_its_offsets(broker, pg_dsn):
    """--skip-lost-offsets on a live run: a log that ends below the namespace's offsets is
    not read from its end (those offsets would name two records) but waited on, and read
    from exactly the namespace's own offset once it has grown past it."""
    work, topics, env = published(broker, pg_dsn, "tally-parked-", 300, seed=19)
    tally("run", "--until-end", "--namespace", "parked", env=env)
    read_to = kafka_io.end_offsets(broker, list(topics.values()))
    recreate(broker, list(topics.values()))
    publish(broker, list(topics.values()), 5, "after the loss")
    flow = start_tally("run", "--namespace", "parked", "--skip-lost-offsets", env=env)
    try:
        time.sleep(5)  # parked: nothing of the shorter logs is read, and nothing is written
        assert flow.poll() is None, flow.communicate()
        grown = max(read_to.values()) + 3
        publish(broker, list(topics.values()), grown - 5, "grown")
        wanted = sum(grown - offset for offset in read_to.values())
        wait_until(lambda: flow.poll() is None and new_fates(pg_dsn, read_to) == wanted, 60,
                   "the grown logs to be read")
        time.sleep(2)
        assert new_fates(pg_dsn, read_to) == wanted
    finally:
        assert stop(flow) == 130
    report = json.loads(tally("audit", "--namespace", "parked", "--json", env=env, expect=1).stdout)
    assert report["archive_duplicates"][0] == 0 and not report["archive_gaps"]
    assert sorted((e["partition"], e["lost_from"], e["lost_to"]) for e in report["lost"]) == \
        sorted((f"{t}:{p}", 5, offset) for (t, p), offset in read_to.items())


def new_fates(pg_dsn: str, read_to: dict) -> int:
    """Fates of the namespace at offsets past what it read before the loss."""
    with psycopg.connect(pg_dsn) as conn:
        return sum(conn.execute('SELECT count(*) FROM parked.fates WHERE topic = %s AND partition = %s'
                                ' AND "offset" >= %s', (t, p, offset)).fetchone()[0]
                   for (t, p), offset in read_to.items())
