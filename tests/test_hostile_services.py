"""Hostile surroundings for `tally run`: missing topics, a broker that is gone, bad credentials.

Each must give one clear line and exit 2, or, where waiting is the right thing
(a topic created a little later, a broker lost mid-run), say so while waiting.
No password ever shows in any output.
"""

from __future__ import annotations

import re
import tempfile
import threading
import time
from pathlib import Path

from psycopg.conninfo import conninfo_to_dict, make_conninfo

from flows.kafka import kafka_io
from flows.dev.generate import generate_day
from flows.dev.services import free_port, start_broker, stop_broker
from tests.flow_helpers import start_tally, tally, unique_topics, wait_until, write_config


def _setup(tmp: Path):
    topics = unique_topics()
    return topics, write_config(tmp / "tally.toml", topics)


def _tally_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("tally:")]


def test_a_missing_topic_is_exit_2_unless_asked_to_wait(broker, pg_dsn, tmp_path):
    topics, config = _setup(tmp_path)
    common = ("--brokers", broker, "--pg", pg_dsn, "--data-dir", str(tmp_path / "data"),
              "--config", str(config), "--until-end")
    result = tally("run", *common, expect=2)
    (line,) = _tally_lines(result.stderr)
    assert "not exist" in line and "tally topics create" in line

    waiting = start_tally("run", *common, "--wait-for-topics", "60")
    time.sleep(3)
    assert waiting.poll() is None, waiting.communicate()
    kafka_io.create_topics(broker, list(topics.values()), 1)
    stdout, stderr = waiting.communicate(timeout=120)
    assert waiting.returncode == 0, stderr
    assert "waiting for topics" in stderr and "records consumed" in stdout


def test_an_unreachable_broker_is_exit_2_in_one_line(pg_dsn, tmp_path):
    _, config = _setup(tmp_path)
    started = time.monotonic()
    result = tally("run", "--brokers", f"127.0.0.1:{free_port()}", "--pg", pg_dsn,
                   "--data-dir", str(tmp_path / "data"), "--config", str(config), expect=2)
    assert time.monotonic() - started < 60
    (line,) = _tally_lines(result.stderr)
    assert "cannot reach the Kafka broker" in line


def test_a_broker_lost_mid_run_is_reported_while_the_flow_retries(pg_dsn, tmp_path):
    topics, config = _setup(tmp_path)
    generate_day(tmp_path / "day", 500, seed=3, topics=topics)
    pid, brokers = start_broker(Path(tempfile.mkdtemp(prefix="tally-lost-broker-")))
    flow = None
    try:
        kafka_io.create_topics(brokers, list(topics.values()), 3)
        kafka_io.produce_day(brokers, tmp_path / "day", list(topics.values()), progress=False)
        flow = start_tally("run", "--brokers", brokers, "--pg", pg_dsn, "--data-dir",
                           str(tmp_path / "data"), "--config", str(config), "--snapshot-interval", "0.5")
        lines = _collect(flow)
        _wait_for(lambda: any("flow starting" in line for line in lines), 60)
        time.sleep(3)  # consuming, then idle at the end of the log
        stop_broker(pid)
        _wait_for(lambda: any("cannot reach the Kafka broker at" in line for line in lines), 60)
        assert flow.poll() is None, "the flow must keep retrying, not exit"
    finally:
        stop_broker(pid)
        if flow is not None:
            flow.kill()
            flow.wait()
    assert conninfo_to_dict(pg_dsn)["password"] not in "".join(lines)


def test_bad_postgres_credentials_are_exit_2_and_the_password_never_shows(broker, pg_dsn, tmp_path):
    topics, config = _setup(tmp_path)
    kafka_io.create_topics(broker, list(topics.values()), 1)
    wrong = make_conninfo(pg_dsn, password="Wr0ng-Passw0rd-4711")
    for how in ("argument", "environment"):
        args = ["run", "--brokers", broker, "--data-dir", str(tmp_path / "data"),
                "--config", str(config), "--until-end"]
        env = {"TALLY_PG_DSN": wrong} if how == "environment" else None
        result = tally(*args, *(["--pg", wrong] if how == "argument" else []), env=env, expect=2)
        (line,) = _tally_lines(result.stderr)
        assert "password authentication failed" in line, line
        assert "Wr0ng-Passw0rd-4711" not in result.stdout + result.stderr

    # the right password from a libpq password file, with none in the DSN or the command line
    params = conninfo_to_dict(pg_dsn)
    passfile = tmp_path / "pgpass"
    passfile.write_text(f"{params['host']}:{params['port']}:*:{params['user']}:{params['password']}\n")
    passfile.chmod(0o600)
    no_password = make_conninfo(pg_dsn, password=None)
    result = tally("run", "--brokers", broker, "--data-dir", str(tmp_path / "data"), "--config",
                   str(config), "--until-end", env={"TALLY_PG_DSN": no_password,
                                                    "PGPASSFILE": str(passfile)})
    assert re.search(r"records consumed\s+0", result.stdout)


def _collect(proc) -> list[str]:
    """stderr lines of a running process, gathered by a thread."""
    lines: list[str] = []

    def read():
        for line in proc.stderr:
            lines.append(line)

    threading.Thread(target=read, daemon=True).start()
    return lines


def _wait_for(condition, seconds: float) -> None:
    wait_until(condition, seconds, "the flow's output", every=0.2)


def test_a_least_privilege_role_runs_its_own_namespace_and_nothing_more(broker, pg_dsn, tmp_path):
    """docs/operations.md: no superuser, no CREATE on the database; a schema made for the role."""
    import psycopg
    from psycopg import sql

    role, schema = f"tally_app_{tmp_path.name[-6:].lower()}", "least_priv"
    role = re.sub(r"[^a-z0-9_]", "_", role)
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE ROLE {} LOGIN PASSWORD 'app-Secret-77' NOSUPERUSER "
                             "NOCREATEDB NOCREATEROLE").format(sql.Identifier(role)))
        conn.execute(sql.SQL("CREATE SCHEMA {} AUTHORIZATION {}").format(
            sql.Identifier(schema), sql.Identifier(role)))
    app = make_conninfo(pg_dsn, user=role, password="app-Secret-77")
    topics, config = _setup(tmp_path)
    generate_day(tmp_path / "day", 300, seed=4, topics=topics)
    kafka_io.create_topics(broker, list(topics.values()), 3)
    kafka_io.produce_day(broker, tmp_path / "day", list(topics.values()), progress=False)
    common = ["--brokers", broker, "--data-dir", str(tmp_path / "data"), "--config", str(config),
              "--until-end"]
    env = {"TALLY_PG_DSN": app}
    tally("run", *common, "--namespace", schema, env=env)
    tally("audit", "--namespace", schema, "--data-dir", str(tmp_path / "data"), env=env)
    tally("review", "list", "--namespace", schema, env=env)

    refused = tally("run", *common, "--namespace", "not_granted", env=env, expect=2)
    (line,) = _tally_lines(refused.stderr)
    assert f"CREATE SCHEMA not_granted AUTHORIZATION {role}" in line
    assert "app-Secret-77" not in refused.stdout + refused.stderr
    assert "panicked" not in refused.stderr  # refused before the flow starts


def test_sigterm_stops_the_flow_like_ctrl_c_and_it_resumes(broker, pg_dsn, tmp_path):
    import signal
    topics, config = _setup(tmp_path)
    generate_day(tmp_path / "day", 500, seed=6, topics=topics)
    kafka_io.create_topics(broker, list(topics.values()), 3)
    kafka_io.produce_day(broker, tmp_path / "day", list(topics.values()), progress=False)
    common = ["--brokers", broker, "--pg", pg_dsn, "--data-dir", str(tmp_path / "data"),
              "--config", str(config), "--namespace", "sigterm"]
    flow = start_tally("run", *common)
    lines = _collect(flow)
    _wait_for(lambda: any("flow starting" in line for line in lines), 60)
    time.sleep(2)
    flow.send_signal(signal.SIGTERM)
    assert flow.wait(timeout=30) == 130
    assert "tally: interrupted" in "".join(lines)
    resumed = tally("run", *common, "--until-end")
    assert "records consumed" in resumed.stdout


def test_a_lost_cluster_member_stops_the_other_in_one_line(broker, pg_dsn, tmp_path):
    """A member SIGKILLed: the survivor cannot go on alone (Bytewax panics); it says so in
    one line and exits 1, and both resume from the last snapshot on the next start."""
    import signal
    topics, config = _setup(tmp_path)
    generate_day(tmp_path / "day", 2000, seed=9, topics=topics)
    kafka_io.create_topics(broker, list(topics.values()), 3)
    kafka_io.produce_day(broker, tmp_path / "day", list(topics.values()), progress=False)
    addresses = f"127.0.0.1:{free_port()};127.0.0.1:{free_port()}"
    common = ["--brokers", broker, "--pg", pg_dsn, "--data-dir", str(tmp_path / "data"),
              "--config", str(config), "--namespace", "lost_member", "--addresses", addresses]
    members = [start_tally("run", *common, "--process-id", str(i)) for i in (0, 1)]
    lines = _collect(members[0])
    _wait_for(lambda: any("flow starting" in line for line in lines), 60)
    time.sleep(2)
    members[1].send_signal(signal.SIGKILL)
    assert members[0].wait(timeout=60) == 1
    time.sleep(0.5)  # the reader thread drains what is left
    out = "".join(lines)
    assert "Traceback" not in out and "panicked" not in out, out
    assert _tally_lines(out) and _tally_lines(out)[-1].startswith("tally: the flow stopped:"), out
    assert "the next start resumes from the last snapshot" in _tally_lines(out)[-1]


def test_bad_settings_in_the_environment_are_one_line_and_exit_2(monkeypatch):
    bad = {"TALLY_PG_RETRY_DEADLINE": "soon", "TALLY_LOG_LEVEL": "loud"}
    for name, value in bad.items():
        refused = tally("run", "--brokers", "127.0.0.1:1", env={name: value}, expect=2)
        assert "Traceback" not in refused.stderr
        assert name in refused.stderr.strip().splitlines()[-1], refused.stderr
    # set but empty counts as unset: the defaults apply
    from flows.cli import build_parser
    monkeypatch.setenv("TALLY_DATA_DIR", "")
    monkeypatch.setenv("TALLY_METRICS_PORT", "")
    args = build_parser().parse_args(["run"])
    assert str(args.data_dir) == ".tally" and args.metrics_port is None
