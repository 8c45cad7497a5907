"""`tally run` and `tally replay`: the commands that run the flow."""

from __future__ import annotations

import argparse
import os
import sys
import time
from contextlib import contextmanager
from pathlib import Path

from flows import logs
from flows.logs import UserError

from flows.cli.options import (command, deadline_seconds, env, metrics_address, positive_seconds,
                               resolve_brokers, resolve_pg, service_options, valid_namespace)


def add_run(commands) -> None:
    cmd = command(commands, "run")
    service_options(cmd, pg=True)
    cmd.add_argument("--namespace", type=valid_namespace, default="live",
                     help="PostgreSQL schema and Parquet directory (default live)")
    cmd.add_argument("--until-end", action="store_true",
                     help="stop once every partition reaches the end it had at start")
    cmd.add_argument("--recovery-dir", type=Path, default=None,
                     help="default <data-dir>/<namespace>/recovery")
    cmd.add_argument("--wait-for-topics", type=float, default=0, metavar="SECONDS",
                     help="if a source topic does not exist yet, wait up to SECONDS for it "
                          "(default 0: exit 2 at once)")
    cmd.add_argument("--skip-lost-offsets", action="store_true",
                     help="when the broker no longer holds the offsets this namespace resumes "
                          "from (a topic deleted and created again, lost data, retention), go on "
                          "where it can and give up the records in between; tally audit reports "
                          "them. Without it, such a run refuses to start")
    _flow_options(cmd)
    cmd.set_defaults(handler=run_run)


def _flow_options(cmd) -> None:
    """How the flow runs: shared by `run` and `replay`, which run the same flow."""
    cmd.add_argument("--flush", action="store_true",
                     help="at the end of a bounded run, decide everything still pending")
    cmd.add_argument("--snapshot-interval", type=positive_seconds, default=5.0,
                     help="seconds between recovery snapshots (default 5)")
    cmd.add_argument("--shards", type=int, default=4, help="engine shards (fixed per namespace; default 4)")
    cmd.add_argument("--batch-size", type=int, default=5000,
                     help="records read per partition per poll (default 5000); smaller batches make "
                          "shorter epochs, so less is redone after a crash, at some cost in speed")
    cmd.add_argument("--max-rate", type=float, default=0, metavar="RECORDS_PER_S",
                     help="read at most this many records/s from the broker (default 0: no "
                          "limit), e.g. to spare PostgreSQL during a backfill")
    cmd.add_argument("--processes", type=int, default=1,
                     help="Bytewax processes on this host, one per core (default 1); decisions "
                          "are the same whatever the number")
    cmd.add_argument("--process-id", type=int, default=None,
                     help="this process's index in a cluster across hosts (with --addresses)")
    cmd.add_argument("--addresses", default=None,
                     help="host:port of every cluster process, ';'-separated, the same on each")
    cmd.add_argument("--pg-retry-deadline",
                     default=env("TALLY_PG_RETRY_DEADLINE", "300"), type=deadline_seconds,
                     help="seconds to keep retrying when PostgreSQL is unreachable before exiting "
                          "(default $TALLY_PG_RETRY_DEADLINE or 300); the next start resumes")
    cmd.add_argument("--metrics-port", default=env("TALLY_METRICS_PORT"),
                     type=metrics_address, metavar="[HOST:]PORT",
                     help="serve Prometheus metrics on http://HOST:PORT/metrics (default "
                          "$TALLY_METRICS_PORT, else none; all interfaces unless HOST is given); "
                          "with --processes N, process I serves on PORT+I")
    cmd.add_argument("--summary-to", type=Path, default=None, help=argparse.SUPPRESS)
    # set by the launcher of --processes N on its members: they end when it ends
    cmd.add_argument("--launcher-pid", type=int, default=None, help=argparse.SUPPRESS)


def _cluster(args) -> list[str] | None:
    addresses = [a.strip() for a in (args.addresses or "").split(";") if a.strip()] or None
    if args.processes < 1:
        raise UserError("--processes must be at least 1")
    if (addresses is None) != (args.process_id is None):
        raise UserError("--process-id and --addresses go together")
    if addresses and not 0 <= args.process_id < len(addresses):
        raise UserError(f"--process-id must be from 0 to {len(addresses) - 1}")
    if addresses and args.processes > 1:
        raise UserError("use --processes on one host, or --process-id/--addresses across hosts")
    return addresses


def _holding_namespace(args, dsn: str):
    """The namespace's runner lock, held by whoever runs it for all its processes: a
    single process, the launcher of --processes N, or process 0 of a cluster by hand."""
    from contextlib import nullcontext
    from flows.runtime.runner_lock import RunnerLock
    if args.launcher_pid is not None or (args.process_id or 0) > 0:
        return nullcontext()
    return RunnerLock(args.namespace, args.data_dir / args.namespace / "run.lock", dsn)


def _spawn_processes(args, lock) -> int | None:
    """With --processes N > 1, run this command as N local cluster members; their exit code."""
    if args.processes == 1:
        return None
    from flows.runtime.processes import run_local, without_option
    recovery = getattr(args, "recovery_dir", None) or args.data_dir / args.namespace / "recovery"
    argv = without_option(without_option(sys.argv[1:], "--processes"), "--metrics-port")
    code, summary = run_local(argv, args.processes, recovery, args.data_dir / args.namespace / "logs",
                              args.metrics_port, lock.fileno)
    if summary is not None:
        print(summary)
    return code


def _report_run(args, summary) -> None:
    """Print the run's summary, or hand it to the launcher of --processes N."""
    if args.summary_to:
        args.summary_to.write_text(summary.to_json())
    else:
        print(summary)


def _run_options(args, brokers: str, dsn: str, until_end: bool):
    from flows.runtime.run import RunOptions
    if args.batch_size < 1 or args.shards < 1:
        raise UserError("--batch-size and --shards must be at least 1")
    addresses = _cluster(args)
    return RunOptions(brokers=brokers, pg_dsn=dsn, data_dir=args.data_dir,
                      process_id=args.process_id, addresses=addresses,
                      namespace=args.namespace, until_end=until_end, flush=args.flush,
                      snapshot_interval_s=args.snapshot_interval,
                      recovery_dir=getattr(args, "recovery_dir", None), shards=args.shards,
                      batch_size=args.batch_size, pg_retry_deadline_s=args.pg_retry_deadline,
                      max_rate=max(args.max_rate, 0.0), metrics_address=args.metrics_port,
                      skip_lost_offsets=getattr(args, "skip_lost_offsets", False))


def run_run(args) -> int:
    from flows.kafka import kafka_io
    from flows.runtime.run import run
    from flows.runtime.settings import load_config
    from sinks.postgres import connect_check, prepare_namespace
    config = load_config(args.config)
    brokers = resolve_brokers(args)
    kafka_io.check_broker(brokers)
    dsn = resolve_pg(args)
    connect_check(dsn)
    prepare_namespace(dsn, args.namespace)
    if args.wait_for_topics > 0:
        kafka_io.wait_for_topics(brokers, list(config.topics.values()), args.wait_for_topics)
    options = _run_options(args, brokers, dsn, args.until_end)
    with _holding_namespace(args, dsn) as lock:
        if args.launcher_pid is None and not args.process_id:  # whoever holds the namespace
            from flows.runtime import lost_offsets
            recovery = args.recovery_dir or args.data_dir / args.namespace / "recovery"
            lost_offsets.check(brokers, recovery, list(config.topics.values()),
                               args.data_dir / args.namespace, args.skip_lost_offsets)
        spawned = _spawn_processes(args, lock)
        if spawned is not None:
            return spawned
        _report_run(args, run(options, config))
    return 0


def add_replay(commands) -> None:
    cmd = command(commands, "replay")
    service_options(cmd, pg=True)
    cmd.add_argument("--namespace", type=valid_namespace, required=True, help="the replay's namespace")
    cmd.add_argument("--from", dest="start", required=True,
                     help="earliest | an RFC 3339 time (2026-03-02T12:00:00Z) | "
                          "offsets: recon.bank:0=1200,recon.bank:1=900,... (every partition)")
    cmd.add_argument("--to", dest="stop", default="end",
                     help="end (the end when the replay starts; default) | a time (records stamped "
                          "up to it) | offsets (exclusive; unnamed partitions: end)")
    cmd.add_argument("--source", choices=("broker", "archive"), default="broker",
                     help="read the broker (default) or a namespace's raw archive")
    cmd.add_argument("--archive-namespace", type=valid_namespace, default="live",
                     help="whose archive --source archive reads (default live)")
    cmd.add_argument("--warmup", default=None,
                     help="how far before a --from time to start deciding without writing "
                          "(default 2 x match_window + allowed_lateness + redelivery_horizon)")
    _flow_options(cmd)
    cmd.set_defaults(handler=run_replay)


def run_replay(args) -> int:
    from flows.kafka import kafka_io
    from flows.runtime import replay
    from flows.runtime.run import run
    from flows.runtime.settings import load_config
    from sinks.postgres import connect_check, prepare_namespace
    config = load_config(args.config)
    start = replay.parse_position(args.start, start=True)
    stop = replay.parse_position(args.stop, start=False)
    warmup_us = replay.parse_warmup(args.warmup, config)
    brokers = None
    if args.source == "archive":
        if args.archive_namespace == args.namespace:
            raise UserError("--archive-namespace must differ from --namespace")
        log = replay.ArchiveLog(args.data_dir / args.archive_namespace, config)
    else:
        brokers = resolve_brokers(args)
        kafka_io.check_broker(brokers)
        log = replay.BrokerLog(brokers, config)
    dsn = resolve_pg(args)
    connect_check(dsn)
    prepare_namespace(dsn, args.namespace)
    origin = (f"replay --from {args.start} --to {args.stop} --source {args.source}"
              f"{' --archive-namespace ' + args.archive_namespace if args.source == 'archive' else ''}"
              f" --warmup {warmup_us}us")
    with _holding_namespace(args, dsn) as lock:
        chosen = replay.load_or_plan(args.data_dir / args.namespace / "replay.json", log, origin,
                                     start, stop, warmup_us)
        options = _run_options(args, brokers or "", dsn, until_end=True)
        spawned = _spawn_processes(args, lock)  # after the plan is saved: every member loads it
        if spawned is not None:
            return spawned
        _report_run(args, run(options, config, chosen.stretch(log.archive)))
    if chosen.emit_from_us is not None:
        from state.contract import format_us
        print(f"  written: decisions and fates whose window ends at or after "
              f"{format_us(chosen.emit_from_us)}")
    return 0
