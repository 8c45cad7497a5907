"""`tally run`: the long-running flow, with recovery, a progress bar and a summary."""

from __future__ import annotations

import dataclasses
import gc
import json
import logging
import os
import signal
import threading
import time
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

from bytewax._bytewax import cli_main
from bytewax.recovery import RecoveryConfig

from flows import logs

from flows.runtime import disk

from flows.kafka import kafka_io

from flows.runtime import metrics

from flows.runtime import pinned, recovery_store
from flows.logs import FlowError, UserError
from flows.runtime.dataflow import FlowSettings, FlowStats, build_flow
from flows.runtime.pacemaker import Pacemaker, silent_partitions
from flows.progress import Progress, table
from flows.runtime import memory
from state.contract import Part


# The engine allocates much and frees little: collect the old generations rarely.
GC_THRESHOLD = (100_000, 50, 100)


@dataclass
class RunOptions:
    brokers: str
    pg_dsn: str | None
    data_dir: Path
    namespace: str
    until_end: bool
    flush: bool = False
    snapshot_interval_s: float = 5.0
    recovery_dir: Path | None = None
    shards: int = 4
    process_id: int | None = None
    addresses: list[str] | None = None
    pg_retry_deadline_s: float = 300.0
    batch_size: int = 5000
    max_rate: float = 0.0
    metrics_address: str | None = None  # [HOST:]PORT of the Prometheus endpoint
    skip_lost_offsets: bool = False  # go on where the broker lost offsets (flows/runtime/lost_offsets.py)


@dataclass
class Stretch:
    """Which part of which log a run reads, and what it writes.

    A live run reads every partition from its first offset on; a replay names
    its own starts and ends, may read the archive instead of the broker, and
    may decide a warm-up stretch without writing it.
    """

    starts: dict[Part, int]
    ends: dict[Part, int] | None  # exclusive; None: follow the log forever
    origin: str  # "run", or the replay's arguments: a namespace never mixes two
    emit_from_us: int | None = None
    archive: object | None = None  # flows.runtime.archive.Archive


@dataclass
class RunSummary:
    consumed: int
    seconds: float
    decisions: dict
    pending: int
    warm_up: int = 0
    member: str = ""  # ", process I of N" in a cluster
    by_process: list[int] = dataclasses.field(default_factory=list)  # decisions, when combined

    def __str__(self) -> str:
        rate = self.consumed / max(self.seconds, 1e-9)
        rows = [("records consumed", self.consumed), ("events/s", f"{rate:,.0f}"),
                ("decisions", sum(self.decisions.values()))]
        rows += [(f"  {k}", v) for k, v in sorted(self.decisions.items())]
        rows += [(f"  decided by process {i}", n) for i, n in enumerate(self.by_process)]
        if self.warm_up:
            rows += [("not written (warm-up)", self.warm_up)]
        rows += [("pending (kept in the recovery snapshot)", self.pending)]
        return table(rows, f"Tally run ({self.seconds:.1f}s{self.member})")

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self))

    @classmethod
    def from_json(cls, text: str) -> "RunSummary":
        return cls(**json.loads(text))

    @classmethod
    def combine(cls, members: list["RunSummary"], seconds: float) -> "RunSummary":
        """One summary for the processes of a cluster: each counted its own share."""
        decisions: dict[str, int] = {}
        for member in members:
            for name, count in member.decisions.items():
                decisions[name] = decisions.get(name, 0) + count
        return cls(sum(m.consumed for m in members), seconds, decisions,
                   sum(m.pending for m in members), sum(m.warm_up for m in members),
                   f", {len(members)} processes", [sum(m.decisions.values()) for m in members])


def recovery_dir(options: RunOptions, stretch: Stretch) -> tuple[Path, dict]:
    """The namespace's recovery directory (created by the first process) and its layout."""
    path = options.recovery_dir or options.data_dir / options.namespace / "recovery"
    if options.process_id:  # another process of the cluster creates it
        _wait_for(lambda: recovery_store.store_state(path) == recovery_store.COMPLETE, path)
    else:
        path.parent.mkdir(parents=True, exist_ok=True)
        recovery_store.make_store(path, len(options.addresses or [None]))
    return path, check_shape(path / "shape.json", options, stretch)


def _wait_for(ready, path: Path, seconds: float = 60) -> None:
    deadline = time.monotonic() + seconds
    while not ready():
        if time.monotonic() > deadline:
            raise UserError(f"process 0 did not create the recovery directory {path} "
                            f"within {seconds:.0f}s; start it first, on a shared directory")
        time.sleep(0.2)


def check_shape(manifest: Path, options: RunOptions, stretch: Stretch) -> dict:
    """Refuse to resume a snapshot taken with other shards, other source partitions,
    or by another kind of run; return the namespace's layout (sink parts, shard keys).

    Accounts are routed to shards by number, and the watermark waits for every
    partition the snapshot knows, so either change would silently break matching.
    Sink parts are fixed per namespace (one per shard), so the process count may
    change between runs without moving a shard's files or archive order.
    """
    parts = sorted(stretch.starts)
    shape = {"shards": options.shards, "partitions": [f"{t}:{p}" for t, p in parts],
             "origin": stretch.origin}
    if not manifest.exists():
        # the first offsets are kept for `tally audit`: consumption must start there
        starts = {f"{t}:{p}": stretch.starts[(t, p)] for t, p in parts}
        layout = {"sink_parts": options.shards, "shard_keys": "spread"}
        temporary = manifest.with_name(f".{manifest.name}.{os.getpid()}")
        try:
            temporary.write_text(json.dumps(shape | {"starts": starts} | layout, indent=1))
            os.replace(temporary, manifest)  # processes starting together see one whole file
        except OSError as exc:
            temporary.unlink(missing_ok=True)
            exc.filename = exc.filename or str(manifest)  # a failed write names no file
            raise
        return layout
    saved = json.loads(manifest.read_text())
    saved.setdefault("origin", "run")
    # namespaces from before these were fixed: one sink part, shard keys "0".."N-1"
    layout = {"sink_parts": saved.pop("sink_parts", 1), "shard_keys": saved.pop("shard_keys", "plain")}
    saved.pop("starts", None)
    if saved["origin"] != shape["origin"]:
        raise UserError(f"namespace {options.namespace} holds a run of {saved['origin']!r}, not "
                        f"{stretch.origin!r}; use a new namespace")
    if saved != shape:
        raise UserError(
            f"namespace {options.namespace} was started with {saved['shards']} shards over "
            f"{len(saved['partitions'])} source partitions; this run has {options.shards} shards "
            f"over {len(parts)}. Run with the same --shards and topics, or use a new namespace")
    return layout


def live_stretch(brokers: str, config) -> Stretch:
    """Every partition of the configured topics, from the first offset the broker holds."""
    topics = list(config.topics.values())
    counts = kafka_io.topic_partitions(brokers, topics)
    parts = sorted((t, p) for t, n in counts.items() for p in range(n))
    return Stretch(kafka_io.low_offsets(brokers, parts), None, "run")


def run(options: RunOptions, config, stretch: Stretch | None = None) -> RunSummary:
    """Build and execute the flow in this process; blocks until it ends."""
    # SIGTERM (a deploy, `docker stop`) stops the flow like Ctrl-C: exit 130, resume later.
    # SIGINT too, even when a non-interactive shell started us in the background with it
    # ignored (Python then installs no handler of its own, and `kill -INT` did nothing).
    # First of all: a signal during start-up (imports, the recovery store) is not lost.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    if not logs.log.isEnabledFor(logging.DEBUG):
        # An error in a step (or in making the recovery store) panics in bytewax's Rust;
        # keep its backtrace out of the way.
        os.environ["RUST_BACKTRACE"] = "0"
    memory.limit_arenas()
    stretch = stretch or live_stretch(options.brokers, config)
    if stretch.ends is None and options.until_end:
        stretch.ends = kafka_io.end_offsets(options.brokers, list(config.topics.values()))
    starts, ends = stretch.starts, stretch.ends
    data_root = options.data_dir / options.namespace
    with disk.named(data_root, options.recovery_dir or data_root / "recovery"):
        pinned.pin_or_check(data_root, config, options.namespace)
        recovery_path, layout = recovery_dir(options, stretch)
    settings = FlowSettings(
        config=config, kafka=kafka_io.kafka_config(options.brokers) if options.brokers else {},
        starts=starts, ends=ends,
        data_root=data_root, pg_dsn=options.pg_dsn,
        namespace=options.namespace, shards=options.shards, flush=options.flush,
        sink_parts=layout["sink_parts"], spread_keys=layout["shard_keys"] == "spread",
        pg_retry_deadline_s=options.pg_retry_deadline_s, batch_size=options.batch_size,
        archive=stretch.archive, emit_from_us=stretch.emit_from_us, max_rate=options.max_rate,
        skip_lost=options.skip_lost_offsets)
    stats = FlowStats()
    pacemaker = pacemaker_for(settings)
    flow = build_flow(settings, stats, pacemaker)
    total = sum(ends[p] - starts[p] for p in starts) if ends else None
    logs.info("flow starting", namespace=options.namespace, partitions=len(starts),
              records_to_end=total if total is not None else "unbounded")
    # A zero backup interval lets bytewax delete every snapshot but the newest.
    recovery = RecoveryConfig(str(recovery_path), backup_interval=timedelta(0))
    gc.set_threshold(*GC_THRESHOLD)
    started = time.monotonic()
    with metrics.serving(options.metrics_address, options.process_id, stats, config.topics), \
            _progress_while_running(stats, total if options.process_id is None else None,
                                    enabled=options.process_id is None), \
            disk.Guard([data_root, recovery_path], disk.min_free_bytes()) as guard:
        try:
            cli_main(flow, workers_per_process=1, process_id=options.process_id,
                     addresses=options.addresses,
                     epoch_interval=timedelta(seconds=options.snapshot_interval_s),
                     recovery_config=recovery)
        except SystemExit:
            raise
        except BaseException as exc:  # a Rust panic (a cluster member lost) is no Exception
            if guard.low:  # the guard stopped the flow
                raise guard.error() from None
            raise _as_user_error(exc, data_root, recovery_path) from None
        finally:
            if pacemaker is not None:
                pacemaker.close()
    if disk.met_closing():  # a sink met a full disk as the flow ended
        raise _as_user_error(disk.met_closing()[0], data_root, recovery_path)
    return RunSummary(stats.counters.total(), time.monotonic() - started,
                      dict(stats.decisions), stats.pending, stats.warm_up,
                      _member(options.process_id, options.addresses))


def pacemaker_for(settings: FlowSettings) -> Pacemaker | None:
    """A live run keeps quiet partitions moving with heartbeats of its own; a bounded one
    reads history and writes nothing. Says, in one line, which partitions may stall."""
    if settings.ends is not None or settings.archive is not None:
        return None
    silent = silent_partitions(settings.config, sorted(settings.starts))
    if silent:
        named = ", ".join(f"{t}:{p}" for t, p in silent)
        logs.warning(f"Tally writes no heartbeats into {named} (the [heartbeats] config): they "
                     f"can stall every decision when their producers go quiet, unless the "
                     f"producers send heartbeats")
    if len(silent) == len(settings.starts):
        return None
    return Pacemaker(settings.kafka, settings.config)


def _member(process_id: int | None, addresses: list[str] | None) -> str:
    return "" if process_id is None else f", process {process_id} of {len(addresses)}"


def _as_user_error(exc: BaseException, data_root: Path, recovery: Path) -> UserError:
    """Bytewax wraps an error raised in a step in its own; find ours, or say what failed."""
    chain = []
    while exc is not None and exc not in chain:
        chain.append(exc)
        if isinstance(exc, UserError):
            return exc
        if isinstance(exc, KeyboardInterrupt):
            raise KeyboardInterrupt from None  # `tally: interrupted`, exit 130
        exc = exc.__cause__ or exc.__context__
    logs.error("flow failed", chain=" <- ".join(f"{type(e).__name__}: {e}" for e in chain))
    full = disk.full_in([*chain, *disk.met_closing()])
    if full is not None:
        return disk.disk_full(full, data_root, recovery)
    root = chain[-1]
    return FlowError(f"the flow stopped: {type(root).__name__}: {root}. Nothing is lost: the next "
                     f"start resumes from the last snapshot")


class _progress_while_running:
    """A thread that draws the progress bar from the source counters."""

    def __init__(self, stats: FlowStats, total: int | None, enabled: bool = True):
        self.stats, self.progress = stats, Progress(total, "catching up", "events")
        self.progress.enabled &= enabled  # a cluster member sees only its own partitions
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._loop, daemon=True)

    def _loop(self) -> None:
        while not self.stop.wait(0.25):
            self.progress.advance(self.stats.counters.total() - self.progress.done)

    def __enter__(self):
        if self.progress.enabled and not os.environ.get("CI"):
            self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        if self.thread.is_alive():
            self.thread.join()
            self.progress.advance(self.stats.counters.total() - self.progress.done)
            self.progress.close()
        return False
