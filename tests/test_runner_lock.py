"""One runner per namespace, and cluster members that neither outlive their launcher
nor die unnamed (Tally 10/14, items 4 and 6), against the real broker and PostgreSQL.

A second runner on a namespace that is running is refused in one line naming the
holder, by the file lock on one host and by PostgreSQL's advisory lock across hosts.
A launcher of `--processes N` killed with SIGKILL takes its members with it and
leaves the namespace free; a member killed ends the run in one line naming it; in
both cases the next start resumes to decisions identical to a clean run's.
"""

from __future__ import annotations

import os
import signal
import socket
import time

import psycopg
import pytest

from flows.dev.drill import alive, children
from tests.flow_helpers import (decisions_written, pg_rows, published, start_tally,
                                stop, tally, wait_until)

PAYMENTS = 1500


@pytest.fixture(scope="module")
def day(broker, pg_dsn):
    work, _, env = published(broker, pg_dsn, "tally-lock-", PAYMENTS, seed=43)
    return work, env


def lock_sessions(pg_dsn: str, namespace: str) -> set[int]:
    """The backends of `namespace`'s runner that hold an advisory lock."""
    with psycopg.connect(pg_dsn) as conn:
        return {pid for (pid,) in conn.execute(
            "SELECT pid FROM pg_locks l JOIN pg_stat_activity a USING (pid)"
            " WHERE l.locktype = 'advisory' AND l.granted AND a.application_name = %s",
            (f"tally runner {namespace}",))}


def two_members(launcher) -> list[int]:
    """The launcher's two members, once both have started."""
    def started():
        assert launcher.poll() is None, f"the launcher ended: {launcher.communicate()}"
        found = children(launcher.pid)
        return len(found) == 2 and found
    return wait_until(started, 60, "two members")


def last_line(stderr: str) -> str:
    line = stderr.strip().splitlines()[-1]
    print(line)  # shown with -s: what the operator reads
    return line


def same_as_clean(env, pg_dsn, namespace: str) -> None:
    """The namespace, finished to the log's end, holds what a clean run decides."""
    tally("run", "--until-end", "--namespace", f"{namespace}_clean", env=env)
    assert pg_rows(pg_dsn, namespace) == pg_rows(pg_dsn, f"{namespace}_clean")


def test_a_second_runner_is_refused_in_one_line_naming_the_first(day, pg_dsn):
    work, env = day
    first = start_tally("run", "--namespace", "twice", env=env)
    try:
        wait_until(lambda: decisions_written(pg_dsn, "twice"), 120, "the first run's decisions")
        holder = (f"host {socket.gethostname()}, process id {first.pid}, since "
                  f"{time.strftime('%Y-%m-%d', time.gmtime())}T")
        # on the same host: the file lock beside the recovery store
        line = last_line(tally("run", "--until-end", "--namespace", "twice", env=env,
                               expect=2).stderr)
        assert line.startswith("tally: namespace twice is already being run") and holder in line
        assert str(work / "data" / "twice" / "run.lock") in line
        # from another host (another disk, the same PostgreSQL): the advisory lock
        other = str(work / "other-host")
        line = last_line(tally("run", "--until-end", "--namespace", "twice", "--data-dir", other,
                               env=env, expect=2).stderr)
        assert "already being run" in line and holder in line and "PostgreSQL" in line
        # a replay into it, and a cluster launcher, are runners too
        line = last_line(tally("replay", "--namespace", "twice", "--from", "earliest",
                               env=env, expect=2).stderr)
        assert "already being run" in line and holder in line
        line = last_line(tally("run", "--until-end", "--namespace", "twice", "--processes", "2",
                               env=env, expect=2).stderr)
        assert "already being run" in line and holder in line
        assert first.poll() is None, "the first run goes on"
    finally:
        assert stop(first) == 130
    tally("run", "--until-end", "--namespace", "twice", env=env)  # free once the first stops
    same_as_clean(env, pg_dsn, "twice")


def test_the_postgresql_lock_is_taken_again_when_its_session_is_lost(day, pg_dsn):
    """A PostgreSQL restart (here: the lock's session terminated) ends the advisory lock;
    the runner takes it again, so another host is still refused."""
    work, env = day
    first = start_tally("run", "--namespace", "relock", env=env)
    try:
        wait_until(lambda: decisions_written(pg_dsn, "relock"), 120, "the first run's decisions")
        (session,) = lock_sessions(pg_dsn, "relock")
        with psycopg.connect(pg_dsn, autocommit=True) as conn:
            conn.execute("SELECT pg_terminate_backend(%s)", (session,))
        wait_until(lambda: lock_sessions(pg_dsn, "relock") - {session}, 30, "the lock held again")
        other = str(work / "other-host")
        line = last_line(tally("run", "--until-end", "--namespace", "relock", "--data-dir", other,
                               env=env, expect=2).stderr)
        assert f"process id {first.pid}" in line and "PostgreSQL" in line
    finally:
        first.send_signal(signal.SIGTERM)
        _, stderr = first.communicate(timeout=60)
    assert "is held again" in stderr


def test_a_launcher_killed_takes_its_members_with_it_and_frees_the_namespace(day, pg_dsn):
    work, env = day
    launcher = start_tally("run", "--namespace", "orphans", "--processes", "2",
                           "--snapshot-interval", "0.3", "--max-rate", "3000", env=env)
    pids = []
    try:
        pids = two_members(launcher)
        wait_until(lambda: decisions_written(pg_dsn, "orphans"), 120, "the cluster's first decisions")
        launcher.kill()
        launcher.wait(10)
        started = time.monotonic()
        wait_until(lambda: not any(alive(pid) for pid in pids), 15, "the members to end")
        print(f"members ended {time.monotonic() - started:.1f}s after their launcher's SIGKILL")
    finally:
        for pid in pids:
            if alive(pid):
                os.kill(pid, signal.SIGKILL)
    result = tally("run", "--until-end", "--namespace", "orphans", "--processes", "2", env=env)
    assert "already being run" not in result.stderr
    same_as_clean(env, pg_dsn, "orphans")


def test_a_member_killed_ends_the_run_in_one_line_naming_it(day, pg_dsn):
    work, env = day
    args = ("run", "--until-end", "--namespace", "member_lost", "--processes", "2",
            "--snapshot-interval", "0.3", "--batch-size", "200")
    launcher = start_tally(*args, "--max-rate", "1000", env=env)
    pids = two_members(launcher)
    wait_until(lambda: decisions_written(pg_dsn, "member_lost"), 120, "the cluster's first decisions")
    # member 1 is the second started: the higher process id of the two
    os.kill(pids[1], signal.SIGKILL)
    _, stderr = launcher.communicate(timeout=90)
    assert launcher.returncode == 1, stderr
    line = last_line(stderr)
    log = work / "data" / "member_lost" / "logs" / "member-1.log"
    assert line.startswith("tally: process 1 of 2 was killed by SIGKILL"), line
    assert str(log) in line and log.exists()
    assert not any(alive(pid) for pid in pids), "the other member was stopped"
    tally(*args, env=env)  # the cause is gone: the restart resumes
    same_as_clean(env, pg_dsn, "member_lost")


def taken_pair() -> tuple[int, socket.socket]:
    """A free port whose next port this test holds: a listening socket bound to PORT+1."""
    from flows.dev.services import free_port
    for _ in range(50):
        port = free_port()
        taken = socket.socket()
        try:
            taken.bind(("127.0.0.1", port + 1))
            return port, taken
        except OSError:
            taken.close()  # someone else's: try another pair
    raise AssertionError("no free pair of ports in 50 tries")


def test_a_member_that_fails_is_named_with_its_status_and_its_own_error(day):
    """A member that exits on an error of its own (its metrics port is taken): the run ends
    with that member's status and its one line, and the lock is free again."""
    work, env = day
    port, taken = taken_pair()  # member 1 serves on PORT+1, which another socket holds
    with taken:
        taken.listen()
        result = tally("run", "--until-end", "--namespace", "member_fails", "--processes", "2",
                       "--metrics-port", f"127.0.0.1:{port}", env=env, expect=2)
    line = last_line(result.stderr)
    log = work / "data" / "member_fails" / "logs" / "member-1.log"
    assert line.startswith("tally: process 1 of 2 exited with status 2 (tally: cannot serve "
                           f"metrics on 127.0.0.1:{port + 1}"), line
    assert str(log) in line
    tally("run", "--until-end", "--namespace", "member_fails", "--processes", "2", env=env)
