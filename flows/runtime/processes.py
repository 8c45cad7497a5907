"""`tally run --processes N`: N Bytewax processes on this host, one per core.

Threads in one process share the GIL, so a second core needs a second process.
This starts N copies of the same command as a Bytewax cluster on local ports
(`--process-id I --addresses ...`, which is also how to run across hosts) and
waits for them. Accounts are routed to engine shards by number and each shard
lives in exactly one process, so the decisions do not depend on N.
"""

from __future__ import annotations

import ctypes
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from flows.runtime import metrics

from flows.runtime import recovery_store
from flows.runtime.disk import DiskFull
from flows.logs import FlowError, UserError
from flows.runtime.run import RunSummary

STOP_GRACE_S = 10  # how long a stopped member gets to end by itself before SIGKILL
PR_SET_PDEATHSIG = 1


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_local(argv: list[str], processes: int, recovery: Path, logs_dir: Path,
              metrics_address: str | None = None,
              lock_fd: int | None = None) -> tuple[int, RunSummary | None]:
    """Run `tally <argv>` as `processes` cluster members.

    Returns 0 and the members' summaries combined into one when every member
    finished; 130 when interrupted. When a member fails, the others are stopped
    and the failure is raised in one line naming it. Member I logs to
    `logs_dir/member-I.log` (also relayed to this stderr). With a metrics address,
    member I serves on PORT+I. Members inherit `lock_fd`, the namespace's locked
    file, so that it stays locked until the last of them has ended.
    """
    recovery.parent.mkdir(parents=True, exist_ok=True)
    recovery_store.make_store(recovery, processes)  # once, before any member starts
    logs_dir.mkdir(parents=True, exist_ok=True)
    addresses = ";".join(f"127.0.0.1:{free_port()}" for _ in range(processes))
    # `docker stop` and Kubernetes send SIGTERM to the launcher: pass it on like Ctrl-C
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="tally-members-") as tmp:
        summaries = [Path(tmp) / f"{i}.json" for i in range(processes)]
        members = []
        try:
            for i in range(processes):
                command = [*argv, "--process-id", str(i), "--addresses", addresses,
                           "--summary-to", str(summaries[i]), "--launcher-pid", str(os.getpid()),
                           *_metrics_option(metrics_address, i)]
                members.append(Member(i, processes, command, logs_dir, lock_fd))
            failed = _first_failure(members)
        except KeyboardInterrupt:
            return 130, None  # each member is stopped like Ctrl-C, and resumes later
        finally:
            _stop(members)
        if failed is not None:
            raise failed.error()
        if not all(path.exists() for path in summaries):
            return 0, None
        parts = [RunSummary.from_json(path.read_text()) for path in summaries]
    return 0, RunSummary.combine(parts, time.monotonic() - started)


class Member:
    """One member process, its log file, and the thread relaying that file to our stderr."""

    def __init__(self, index: int, count: int, argv: list[str], logs_dir: Path,
                 lock_fd: int | None):
        self.index, self.count = index, count
        self.log = logs_dir / f"member-{index}.log"
        with open(self.log, "ab") as log:
            self.offset = log.tell()  # where this run's lines begin
            self.proc = subprocess.Popen([sys.executable, "-m", "flows", *argv], stderr=log,
                                         pass_fds=() if lock_fd is None else (lock_fd,))
        self.ended = threading.Event()
        self.relay = threading.Thread(target=self._relay, daemon=True)
        self.relay.start()

    def _relay(self) -> None:
        """Copy the member's new log lines to our stderr (the member keeps writing its
        log should this launcher die, so it goes to a file, not to a pipe)."""
        with open(self.log, "rb") as log:
            log.seek(self.offset)
            while True:
                last = self.ended.is_set()
                chunk = log.read()
                if chunk:
                    sys.stderr.buffer.write(chunk)
                    sys.stderr.flush()
                elif last:
                    return
                else:
                    time.sleep(0.1)

    def finish(self) -> None:
        self.ended.set()
        self.relay.join()

    def reason(self) -> str | None:
        """The member's own one-line error, if it printed one."""
        with open(self.log, "rb") as log:
            log.seek(self.offset)
            lines = log.read().decode(errors="replace").splitlines()
        return next((line for line in reversed(lines) if line.startswith("tally: ")), None)

    def error(self) -> UserError:
        code = self.proc.returncode
        name = f"process {self.index} of {self.count}"
        if code < 0:
            how = f"was killed by {_signal_name(-code)}"
        else:
            own = self.reason()
            how = f"exited with status {code}" + (f" ({own})" if own else "")
        others = "the other was" if self.count == 2 else "the others were"
        text = (f"{name} {how}; {others} stopped; its log: {self.log}. Nothing is lost: "
                f"the next start resumes from the last snapshot")
        error = (UserError if code == 2 else FlowError)(text)
        if code in (130, DiskFull.exit_code):
            error.exit_code = code  # stopped like Ctrl-C (a SIGTERM sent to it alone), or a full disk
        return error


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


def _first_failure(members: list[Member]) -> Member | None:
    """Wait until every member has ended well, or one has not: that one (a member killed
    by a signal before one that exited, as the others exit when they lose it)."""
    while True:
        ended = [m for m in members if m.proc.poll() is not None]
        failed = [m for m in ended if m.proc.returncode != 0]
        if failed:
            return min(failed, key=lambda m: (m.proc.returncode >= 0, m.index))
        if len(ended) == len(members):
            return None
        time.sleep(0.1)


def _stop(members: list[Member]) -> None:
    """SIGTERM the members still running, SIGKILL those that do not end in time."""
    for member in members:
        if member.proc.poll() is None:
            member.proc.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + STOP_GRACE_S
    for member in members:
        try:
            member.proc.wait(max(deadline - time.monotonic(), 0.1))
        except subprocess.TimeoutExpired:
            member.proc.kill()
            member.proc.wait()
        member.finish()


def follow_launcher(launcher_pid: int) -> None:
    """In a member: end when the launcher ends, even by SIGKILL, so that no member of a
    dead launcher keeps deciding and writing. First SIGTERM, as on a deploy (the kernel
    sends it: the parent-death signal); SIGKILL if still running after a grace period,
    since a member waiting inside Bytewax, e.g. for its peers to connect, never sees a
    SIGTERM. Either way the next start resumes from the last snapshot."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        asked = libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0) == 0
    except (OSError, AttributeError):
        asked = False  # not Linux: the watcher sends the SIGTERM too
    if os.getppid() != launcher_pid:  # it died before the signal was asked for
        raise UserError(f"the launcher (process id {launcher_pid}) has already ended")
    threading.Thread(target=_watch_launcher, args=(launcher_pid, not asked), daemon=True,
                     name="tally-launcher-watch").start()


def _watch_launcher(launcher_pid: int, terminate: bool) -> None:
    while os.getppid() == launcher_pid:
        time.sleep(0.5)
    if terminate:
        os.kill(os.getpid(), signal.SIGTERM)
    time.sleep(STOP_GRACE_S)
    os.kill(os.getpid(), signal.SIGKILL)


def _metrics_option(address: str | None, member: int) -> list[str]:
    return [] if not address else ["--metrics-port", metrics.shifted(address, member)]


def without_option(argv: list[str], name: str) -> list[str]:
    """argv less `name VALUE` / `name=VALUE`."""
    out, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg == name:
            skip = True
        elif not arg.startswith(name + "="):
            out.append(arg)
    return out
