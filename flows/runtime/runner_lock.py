"""One runner per namespace: a lock held for the life of a `tally run` or `tally replay`.

Two runners on one namespace would both decide, both snapshot into one recovery
store and both write, each undoing the other's work. So a runner holds:

* a file lock (flock) on `<data-dir>/<namespace>/run.lock`, beside the recovery
  store and the Parquet files it guards: cheap, and the only guard without a
  shared database;
* a PostgreSQL advisory lock keyed by the namespace, on a session of its own,
  because two hosts may share the database but not the disk.

The kernel and PostgreSQL drop both when the holder dies, however it dies, so
a lock never outlives its runner. The holder writes who it is (host, process id,
since when) into the lock file and into `<namespace>.runner`, so a refused
runner can say, in one line, who holds the namespace.

Who holds it: a single-process run, or the launcher of `--processes N`, whose
members inherit its locked file (so the file lock is free only once the last of
them has ended); in a cluster started by hand (`--process-id`/`--addresses`),
process 0 holds it for the whole cluster, the others wait for process 0 anyway.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import os
import signal
import socket
import threading
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path

import psycopg
from psycopg import sql

from flows import logs
from flows.logs import UserError

KEEP_ALIVE_S = 1.0  # how often the lock's session is checked: a lost lock is soon held again


@dataclass
class Holder:
    host: str
    pid: int
    since: str  # UTC, to the second

    @classmethod
    def me(cls) -> "Holder":
        since = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
        return cls(socket.gethostname(), os.getpid(), since)

    def __str__(self) -> str:
        return f"host {self.host}, process id {self.pid}, since {self.since}"


def _refused(namespace: str, holder: Holder | None, where: str) -> UserError:
    who = f"another runner ({holder})" if holder else "another runner (who is unknown)"
    return UserError(f"namespace {namespace} is already being run by {who}, per the lock in "
                     f"{where}; stop that run first, or use another namespace")


# ----------------------------------------------------------------------------- the file

class FileLock:
    """An exclusive flock on `path`, whose content names the holder."""

    def __init__(self, path: Path, namespace: str):
        self.path, self.namespace, self.fd = path, namespace, None

    def acquire(self, me: Holder) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            if exc.errno not in (errno.EAGAIN, errno.EACCES):
                raise UserError(f"cannot lock {self.path}: {exc.strerror}") from None
            raise _refused(self.namespace, self._holder(), str(self.path)) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(asdict(me)).encode() + b"\n", 0)
        self.fd = fd

    def _holder(self) -> Holder | None:
        try:
            return Holder(**json.loads(self.path.read_text()))
        except (OSError, ValueError, TypeError):
            return None  # the holder is between taking the lock and writing its name

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)  # the lock goes with the last descriptor of this open file
            self.fd = None


# ----------------------------------------------------------------------------- PostgreSQL

def lock_key(namespace: str) -> int:
    """The advisory lock's key: the same for a namespace on every host, a signed bigint."""
    digest = hashlib.sha256(f"tally:{namespace}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


RUNNER_TABLE = """CREATE TABLE IF NOT EXISTS {}.runner (
    one boolean PRIMARY KEY DEFAULT true CHECK (one),
    host text NOT NULL, pid integer NOT NULL, since text NOT NULL, backend_pid integer NOT NULL)"""
# The session holding the namespace's advisory lock, and the runner that session wrote down.
HOLDER = """SELECT r.host, r.pid, r.since FROM pg_locks l LEFT JOIN {}.runner r ON r.backend_pid = l.pid
 WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 1
   AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
   AND l.classid::bigint = %s AND l.objid::bigint = %s"""


class PgLock:
    """A session-level advisory lock on the namespace, on a connection of its own."""

    def __init__(self, dsn: str, namespace: str):
        self.dsn, self.namespace, self.key = dsn, namespace, lock_key(namespace)
        self.schema = sql.Identifier(namespace)
        self.conn: psycopg.Connection | None = None

    def _connect(self) -> psycopg.Connection:
        # keepalives: a holder whose host vanished is seen as gone in about 25 s
        return psycopg.connect(self.dsn, autocommit=True, connect_timeout=5,
                               application_name=f"tally runner {self.namespace}"[:63],
                               keepalives=1, keepalives_idle=10, keepalives_interval=5,
                               keepalives_count=3)

    def acquire(self, me: Holder) -> None:
        conn = self._connect()
        try:
            if not conn.execute("SELECT pg_try_advisory_lock(%s)", (self.key,)).fetchone()[0]:
                raise _refused(self.namespace, self._holder(conn), "PostgreSQL")
            conn.execute(sql.SQL(RUNNER_TABLE).format(self.schema))
            conn.execute(sql.SQL(
                "INSERT INTO {}.runner (host, pid, since, backend_pid)"
                " VALUES (%s, %s, %s, pg_backend_pid()) ON CONFLICT (one) DO UPDATE SET"
                " host = excluded.host, pid = excluded.pid, since = excluded.since,"
                " backend_pid = excluded.backend_pid").format(self.schema),
                (me.host, me.pid, me.since))
        except BaseException:
            conn.close()
            raise
        self.conn = conn

    def _holder(self, conn: psycopg.Connection) -> Holder | None:
        unsigned = self.key & 0xFFFF_FFFF_FFFF_FFFF  # pg_locks shows the key's two halves as oids
        try:
            row = conn.execute(sql.SQL(HOLDER).format(self.schema),
                               (unsigned >> 32, unsigned & 0xFFFF_FFFF)).fetchone()
        except psycopg.errors.UndefinedTable:
            return None
        return Holder(*row) if row and row[0] is not None else None

    def alive(self) -> bool:
        try:
            self.conn.execute("SELECT 1")
            return True
        except psycopg.Error:
            return False

    def release(self) -> None:
        if self.conn is not None:
            self.conn.close()  # PostgreSQL releases a session's advisory locks as it ends
            self.conn = None


# ----------------------------------------------------------------------------- both

class RunnerLock:
    """The namespace's file lock, then its PostgreSQL lock (when PostgreSQL is a store),
    held until exit. A PostgreSQL restart ends the lock's session: it is taken again."""

    def __init__(self, namespace: str, lock_file: Path, dsn: str | None):
        self.file = FileLock(lock_file, namespace)
        self.pg = PgLock(dsn, namespace) if dsn else None
        self.me = Holder.me()
        self._stop = threading.Event()
        self._keeper = threading.Thread(target=self._keep, daemon=True, name="tally-runner-lock")

    def __enter__(self) -> "RunnerLock":
        self.file.acquire(self.me)
        try:
            if self.pg:
                self.pg.acquire(self.me)
                self._keeper.start()
        except BaseException:
            self.file.release()
            raise
        return self

    def __exit__(self, *exc) -> bool:
        self._stop.set()
        if self._keeper.is_alive():
            self._keeper.join()
        if self.pg:
            self.pg.release()
        self.file.release()
        return False

    @property
    def fileno(self) -> int | None:
        """The locked file, for members to inherit: it stays locked while any of them runs."""
        return self.file.fd

    def _keep(self) -> None:
        lost = False
        while not self._stop.wait(KEEP_ALIVE_S):
            if not lost and self.pg.alive():
                continue
            lost = True
            self.pg.release()
            try:
                self.pg.acquire(self.me)
            except psycopg.Error:
                continue  # PostgreSQL still down: the sink's own retries say so
            except UserError as err:  # another host took the namespace while we were cut off
                logs.error(f"the PostgreSQL lock was lost with its session and {err}; stopping")
                os.kill(os.getpid(), signal.SIGTERM)  # this run stops as on a deploy
                return
            lost = False
            logs.warning("the PostgreSQL lock on the namespace was lost with its session "
                         "(PostgreSQL restarted?) and is held again")
