"""The `tally` command line."""

from __future__ import annotations

import argparse
import os
import sys
import time
from contextlib import contextmanager
from pathlib import Path

from flows import logs
from flows.logs import UserError


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    level = (args.log_level or _env("TALLY_LOG_LEVEL") or "INFO").upper()
    if level not in LOG_LEVELS:
        print(f"tally: log level {level!r} (--log-level or TALLY_LOG_LEVEL) is not one of "
              f"{', '.join(LOG_LEVELS)}", file=sys.stderr)
        return 2
    logs.setup(level)
    if not getattr(args, "handler", None):
        parser.print_help()
        return 2
    try:
        if getattr(args, "launcher_pid", None) is not None:
            from flows.runtime.processes import follow_launcher
            follow_launcher(args.launcher_pid)
        return args.handler(args) or 0
    except UserError as err:
        print(f"tally: {logs.printable(logs.redact(str(err)))}", file=sys.stderr)
        return err.exit_code
    except KeyboardInterrupt:
        print("tally: interrupted", file=sys.stderr)
        return 130


LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")


def _env(name: str, default: str | None = None) -> str | None:
    """A TALLY_* setting from the environment; set but empty counts as unset."""
    return os.environ.get(name) or default


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tally", description="Deterministic stream reconciliation of payments.")
    parser.add_argument("--log-level", default=None, help="DEBUG, INFO (default), WARNING, ERROR")
    commands = parser.add_subparsers(title="commands", metavar="COMMAND")
    _generate(commands)
    _match(commands)
    _dev(commands)
    _topics(commands)
    _produce(commands)
    _run(commands)
    _replay(commands)
    _verify(commands)
    _audit(commands)
    _explain(commands)
    _report(commands)
    _review(commands)
    _drill(commands)
    _demo(commands)
    return parser


# ----------------------------------------------------------------------------- shared options

def _data_dir_option(cmd) -> None:
    cmd.add_argument("--data-dir", type=Path, default=Path(_env("TALLY_DATA_DIR", ".tally")),
                     help="where Parquet, recovery and dev services live (default $TALLY_DATA_DIR or .tally)")


def _pg_option(cmd) -> None:
    cmd.add_argument("--pg", default=_env("TALLY_PG_DSN"), metavar="DSN",
                     help="PostgreSQL DSN (default $TALLY_PG_DSN, else the 'tally dev up' server)")


def _store_options(cmd) -> None:
    """Where a namespace's stores are: for commands that read them and need no broker."""
    _data_dir_option(cmd)
    _pg_option(cmd)


def _service_options(cmd, pg: bool) -> None:
    _data_dir_option(cmd)
    cmd.add_argument("--brokers", default=_env("TALLY_BROKERS"),
                     help="Kafka bootstrap servers (default $TALLY_BROKERS, else the 'tally dev up' broker)")
    if pg:
        _pg_option(cmd)
    cmd.add_argument("--config", default=None, help="TOML config file (default: $TALLY_CONFIG or built-in)")


def resolve_brokers(args) -> str:
    return args.brokers or _dev_service(args, "brokers", "no broker: pass --brokers (or set TALLY_BROKERS)")


def resolve_pg(args) -> str:
    return args.pg or _dev_service(args, "pg_dsn", "no PostgreSQL: pass --pg (or set TALLY_PG_DSN)")


def _dev_service(args, field: str, missing: str) -> str:
    """The address of a service that 'tally dev up' started for the same data directory."""
    from flows.dev.services import dev_status
    dev = dev_status(args.data_dir)
    if dev is None:
        raise UserError(f"{missing}, or start one with 'tally dev up --data-dir {args.data_dir}'")
    return getattr(dev, field)


def _seconds(low: float, high: float, wanted: str):
    """An argparse type: a number of seconds in [low, high], else `wanted` says what is."""
    def parse(value: str) -> float:
        try:
            seconds = float(value)
        except ValueError:
            seconds = float("nan")
        if not low <= seconds <= high:
            raise argparse.ArgumentTypeError(f"{value!r} is not {wanted}")
        return seconds
    return parse


_positive_seconds = _seconds(0.05, 3600, "a number of seconds from 0.05 to 3600")
_deadline = _seconds(0, sys.float_info.max,
                     "a number of seconds (0 or more); check TALLY_PG_RETRY_DEADLINE")


def _metrics_address(value: str) -> str:
    from flows.runtime.metrics import parse_address
    try:
        parse_address(value)
    except UserError as err:
        raise argparse.ArgumentTypeError(str(err)) from None
    return value


def _namespace(value: str) -> str:
    from sinks.postgres import validate_namespace
    try:
        return validate_namespace(value)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


# ----------------------------------------------------------------------------- dev services

def _dev(commands) -> None:
    cmd = commands.add_parser("dev", help="start/stop the embedded broker and PostgreSQL",
                              description="Embedded Tansu broker (memory only) and PostgreSQL under "
                                          "<data-dir>/dev, running in the background.")
    sub = cmd.add_subparsers(title="actions", metavar="ACTION")
    for name, handler, text in [("up", run_dev_up, "start both (idempotent)"),
                                ("down", run_dev_down, "stop both"),
                                ("status", run_dev_status, "print the bootstrap address and DSN")]:
        action = sub.add_parser(name, help=text, description=text)
        _data_dir_option(action)
        action.set_defaults(handler=handler)
    cmd.set_defaults(handler=lambda args: cmd.print_help() or 2)


def run_dev_up(args) -> int:
    from flows.dev.services import ServiceError, dev_up_report
    try:
        dev, started = dev_up_report(args.data_dir)
    except ServiceError as err:
        raise UserError(str(err)) from None
    kept = [name for name in ("broker", "postgres") if name not in started]
    print(f"dev services running under {args.data_dir}/dev "
          f"(started: {', '.join(started) or 'none'}; already running, kept: {', '.join(kept) or 'none'})")
    print(f"  brokers  {dev.brokers}")
    print(f"  pg       {logs.redact(dev.pg_dsn)}")
    return 0


def run_dev_down(args) -> int:
    from flows.dev.services import dev_down
    print("stopped" if dev_down(args.data_dir) else "nothing was running")
    return 0


def run_dev_status(args) -> int:
    from flows.dev.services import dev_status
    dev = dev_status(args.data_dir)
    if dev is None:
        print(f"not running (start with: tally dev up --data-dir {args.data_dir})")
        return 1
    print(f"brokers  {dev.brokers}")
    print(f"pg       {logs.redact(dev.pg_dsn)}")
    return 0


# ----------------------------------------------------------------------------- topics and produce

def _topics(commands) -> None:
    cmd = commands.add_parser("topics", help="manage the source topics")
    sub = cmd.add_subparsers(title="actions", metavar="ACTION")
    create = sub.add_parser("create", help="create the source topics (idempotent)",
                            description="Create the configured source topics.")
    _service_options(create, pg=False)
    create.add_argument("--partitions", type=int, default=3, help="partitions per topic (default 3)")
    create.add_argument("--replication", type=int, default=1, help="replication factor (default 1)")
    create.set_defaults(handler=run_topics_create)
    cmd.set_defaults(handler=lambda args: cmd.print_help() or 2)


def run_topics_create(args) -> int:
    from flows.kafka import kafka_io
    from flows.runtime.settings import load_config
    config = load_config(args.config)
    brokers = resolve_brokers(args)
    kafka_io.check_broker(brokers)
    result = kafka_io.create_topics(brokers, list(config.topics.values()), args.partitions,
                                    args.replication)
    for topic, status in result.items():
        print(f"{topic}: {status}")
    return 0


def _produce(commands) -> None:
    cmd = commands.add_parser("produce", help="publish a day on disk into the source topics",
                              description="Publish DIR/<topic>/<partition>.jsonl: each line to that "
                                          "partition, in file order, byte for byte, keyed by account.")
    cmd.add_argument("dir", type=Path, help="a day on disk (from 'tally generate')")
    _service_options(cmd, pg=False)
    cmd.set_defaults(handler=run_produce)


def run_produce(args) -> int:
    from flows.kafka import kafka_io
    from flows.runtime.settings import load_config
    config = load_config(args.config)
    brokers = resolve_brokers(args)
    kafka_io.check_broker(brokers)
    started = time.monotonic()
    counts = kafka_io.produce_day(brokers, args.dir, list(config.topics.values()))
    total = sum(counts.values())
    elapsed = time.monotonic() - started
    print(f"published {total:,} records to {len(counts)} partitions in {elapsed:.1f}s "
          f"({total / max(elapsed, 1e-9):,.0f}/s)")
    return 0


# ----------------------------------------------------------------------------- run

def _run(commands) -> None:
    cmd = commands.add_parser("run", help="the long-running reconciliation flow",
                              description="Read the source topics, match, and write decisions and "
                                          "fates to PostgreSQL and Parquet. Resumes from its recovery "
                                          "snapshot.")
    _service_options(cmd, pg=True)
    cmd.add_argument("--namespace", type=_namespace, default="live",
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
    cmd.add_argument("--snapshot-interval", type=_positive_seconds, default=5.0,
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
                     default=_env("TALLY_PG_RETRY_DEADLINE", "300"), type=_deadline,
                     help="seconds to keep retrying when PostgreSQL is unreachable before exiting "
                          "(default $TALLY_PG_RETRY_DEADLINE or 300); the next start resumes")
    cmd.add_argument("--metrics-port", default=_env("TALLY_METRICS_PORT"),
                     type=_metrics_address, metavar="[HOST:]PORT",
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


# ----------------------------------------------------------------------------- replay

def _replay(commands) -> None:
    cmd = commands.add_parser(
        "replay", help="re-run a stretch of the log through the same flow, into a new namespace",
        description="Run the same flow as 'tally run' over a stretch of the log (from the broker, "
                    "or from a namespace's raw Parquet archive) into its own namespace. From a time "
                    "T it warms up from T - WARMUP and writes only decisions whose window ends at "
                    "or after T. An interrupted replay resumes from its snapshot.")
    _service_options(cmd, pg=True)
    cmd.add_argument("--namespace", type=_namespace, required=True, help="the replay's namespace")
    cmd.add_argument("--from", dest="start", required=True,
                     help="earliest | an RFC 3339 time (2026-03-02T12:00:00Z) | "
                          "offsets: recon.bank:0=1200,recon.bank:1=900,... (every partition)")
    cmd.add_argument("--to", dest="stop", default="end",
                     help="end (the end when the replay starts; default) | a time (records stamped "
                          "up to it) | offsets (exclusive; unnamed partitions: end)")
    cmd.add_argument("--source", choices=("broker", "archive"), default="broker",
                     help="read the broker (default) or a namespace's raw archive")
    cmd.add_argument("--archive-namespace", type=_namespace, default="live",
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


def _verify(commands) -> None:
    from flows.checks import verify
    verify.register(commands)


def _audit(commands) -> None:
    from flows.checks import audit
    audit.register(commands)


def _explain(commands) -> None:
    from flows.checks import explain
    explain.register(commands)


def _report(commands) -> None:
    from flows.checks import report
    report.register(commands)


def _review(commands) -> None:
    from flows.checks import review
    review.register(commands)


# ----------------------------------------------------------------------------- drill

def _drill(commands) -> None:
    cmd = commands.add_parser(
        "drill", help="kill the flow K times and prove nothing was lost or doubled",
        description="Run the same log into two namespaces, drill_reference undisturbed and "
                    "drill_crashed with K SIGKILLs (random, right after a snapshot, inside a "
                    "PostgreSQL write, inside a Parquet write) and a restart after each, then "
                    "compare them decision by decision and fate by fate. Exit 0 only if identical. "
                    "Without --brokers/--pg (and no 'tally dev up'), it starts its own embedded "
                    "broker and PostgreSQL under <data-dir>/drill.")
    _service_options(cmd, pg=True)
    cmd.add_argument("--kills", type=int, default=5, help="SIGKILLs to inflict (default 5)")
    cmd.add_argument("--transactions", type=int, default=20_000,
                     help="payments in the generated day (default 20000)")
    cmd.add_argument("--seed", type=int, default=1, help="seed for the day and the kill schedule")
    cmd.add_argument("--existing-topics", action="store_true",
                     help="drill on the configured topics as they are, instead of generating a day "
                          "into fresh tally-drill-* topics (stop producers first)")
    cmd.set_defaults(handler=run_drill)


def run_drill(args) -> int:
    from flows.dev.drill import DrillOptions, drill
    from flows.runtime.settings import load_config
    if args.kills < 1 or args.transactions < 1:
        raise UserError("--kills and --transactions must be at least 1")
    config = load_config(args.config)
    root = args.data_dir / "drill"
    with _services_or_embedded(args, root) as (brokers, dsn):
        verdict = drill(DrillOptions(brokers=brokers, pg_dsn=dsn, root=root, kills=args.kills,
                                     transactions=args.transactions, seed=args.seed, config=config,
                                     existing_topics=args.existing_topics))
    print(verdict)
    return 0 if verdict.identical and verdict.complete else 1


@contextmanager
def _services_or_embedded(args, root: Path):
    """The services given (or 'tally dev up' ones); else embedded ones for this command only."""
    from flows.kafka import kafka_io
    from flows.dev.services import ServiceError, dev_down, dev_status, dev_up
    from sinks.postgres import connect_check
    if args.brokers or args.pg or dev_status(args.data_dir):
        brokers, dsn = resolve_brokers(args), resolve_pg(args)
        kafka_io.check_broker(brokers)
        connect_check(dsn)
        yield brokers, dsn
        return
    print(f"starting an embedded broker and PostgreSQL under {root}/services")
    try:
        services = dev_up(root / "services")
    except ServiceError as err:
        raise UserError(str(err)) from None
    try:
        yield services.brokers, services.pg_dsn
    finally:
        dev_down(root / "services")


# ----------------------------------------------------------------------------- demo

def _demo(commands) -> None:
    cmd = commands.add_parser("demo", help="the whole story on the embedded broker and PostgreSQL",
                              description="Start the embedded services, generate a day, publish it, run "
                                          "the flow until caught up, and print a report.")
    _data_dir_option(cmd)
    cmd.add_argument("--transactions", type=int, default=20_000, help="payments to generate (default 20000)")
    cmd.add_argument("--seed", type=int, default=1, help="random seed (default 1)")
    cmd.add_argument("--keep-running", action="store_true", help="leave the services running afterwards")
    cmd.set_defaults(handler=run_demo)


def run_demo(args) -> int:
    from flows.dev.demo import demo
    return demo(args.data_dir, args.transactions, args.seed, args.keep_running)


def _generate(commands) -> None:
    from flows.dev.generate import P_DUPLICATE  # stdlib and msgspec only: cheap at start-up
    cmd = commands.add_parser("generate", help="write a synthetic day with ground truth",
                              description="Write a synthetic day on disk (DIR/<topic>/<partition>.jsonl) "
                                          "plus DIR/truth.jsonl. Same seed, same bytes.")
    cmd.add_argument("--transactions", type=int, default=20_000, help="real-world payments (default 20000)")
    cmd.add_argument("--seed", type=int, default=1, help="random seed (default 1)")
    cmd.add_argument("--partitions", type=int, default=3, help="partitions per topic (default 3)")
    cmd.add_argument("--out", type=Path, required=True, help="directory to write")
    density = cmd.add_argument_group("density", "the same number of payments, spread over fewer or busier "
                                               "accounts, reported twice more or less often")
    density.add_argument("--accounts", type=int, default=None, metavar="N",
                         help="accounts carrying the payments (default max(50, transactions / 20))")
    density.add_argument("--hot-share", type=float, default=0.0, metavar="F",
                         help="share of payments on one hot account, ACC00000, from 0 to below 1 "
                              "(default 0)")
    density.add_argument("--reported-twice", type=float, default=P_DUPLICATE, metavar="F",
                         help="probability that the processor reports a keyed payment a second time "
                              f"under a new event id, from 0 to 1 (default {P_DUPLICATE})")
    cmd.add_argument("--no-heartbeats", dest="heartbeats", action="store_false",
                     help="write transactions only, as real producers do (a live run writes its "
                          "own heartbeats; a bounded one needs --flush to close the day)")
    cmd.set_defaults(handler=run_generate)


def run_generate(args) -> int:
    from flows.dev.generate import generate_day
    if args.transactions < 1 or args.partitions < 1:
        raise UserError("--transactions and --partitions must be at least 1")
    if args.accounts is not None and args.accounts < 1:
        raise UserError("--accounts must be at least 1")
    if not 0 <= args.hot_share < 1:
        raise UserError("--hot-share must be from 0 to below 1")
    if not 0 <= args.reported_twice <= 1:
        raise UserError("--reported-twice must be from 0 to 1")
    started = time.monotonic()
    summary = generate_day(args.out, args.transactions, args.seed, partitions=args.partitions,
                           accounts=args.accounts, hot_share=args.hot_share,
                           reported_twice=args.reported_twice, heartbeats=args.heartbeats)
    print(summary)
    print(f"wrote {args.out} in {time.monotonic() - started:.1f}s")
    return 0


def _match(commands) -> None:
    cmd = commands.add_parser("match", help="run the engine in-process over a day on disk",
                              description="Run the matching engine over DIR/<topic>/<partition>.jsonl "
                                          "and write decisions and fates as Parquet under OUT.")
    cmd.add_argument("dir", type=Path, help="a day on disk")
    cmd.add_argument("--out", type=Path, required=True, help="output directory (decisions/, fates/)")
    cmd.add_argument("--config", default=None, help="TOML config file (default: $TALLY_CONFIG or built-in)")
    cmd.add_argument("--flush", action="store_true",
                     help="treat the end of input as the end of time: decide everything still pending")
    cmd.set_defaults(handler=run_match)


def run_match(args) -> int:
    from flows.kafka.dayfiles import DayError
    from flows.dev.match import run_engine, write_result
    from flows.runtime.settings import load_config
    config = load_config(args.config)
    started = time.monotonic()
    try:
        result = run_engine(args.dir, config, flush=args.flush)
    except DayError as err:
        raise UserError(str(err)) from None
    write_result(result, args.out)
    elapsed = time.monotonic() - started
    print(result.summary())
    print(f"{result.records:,} records in {elapsed:.1f}s ({result.records / max(elapsed, 1e-9):,.0f}/s); "
          f"Parquet under {args.out}/decisions and {args.out}/fates")
    return 0


if __name__ == "__main__":
    sys.exit(main())
