"""`tally ingest`: bank statements and acquirer reports into a source's topic."""

from __future__ import annotations

import signal
import sys
import time
from pathlib import Path

from flows import logs
from flows.cli.options import command, positive_seconds, resolve_brokers, service_options
from flows.logs import UserError
from flows.progress import Progress


# flows/ingest/formats.py FORMATS' names, here so that `tally --help` imports no parser
FORMAT_NAMES = ("adyen-settlement", "bai2", "camt052", "camt053", "camt054", "mt940",
                "stripe-payouts")


def add_ingest(commands) -> None:
    cmd = command(commands, "ingest")
    cmd.add_argument("format", choices=FORMAT_NAMES, metavar="FORMAT",
                     help=f"one of {', '.join(FORMAT_NAMES)}")
    cmd.add_argument("files", nargs="*", type=Path, metavar="FILE", help="files to publish, all or none")
    cmd.add_argument("--source", required=True, help="the configured source whose topic gets the records")
    cmd.add_argument("--watch", type=Path, metavar="DIR",
                     help="publish each file dropped into DIR once, then move it to DIR/done")
    cmd.add_argument("--once", action="store_true", help="with --watch: take the files there now, then stop")
    cmd.add_argument("--interval", type=positive_seconds, default=5.0, metavar="S",
                     help="with --watch: seconds between looks (default 5)")
    cmd.add_argument("--account", help="Tally's account for files that name none (acquirer reports)")
    cmd.add_argument("--time", dest="time_field", choices=("booking", "value"), default="booking",
                     help="event time from the booking date (default) or the value date")
    cmd.add_argument("--accept-unbalanced", action="store_true",
                     help="publish a statement that does not add up, with an exception naming the gap")
    service_options(cmd, pg=False)
    cmd.set_defaults(handler=run_ingest)


def run_ingest(args) -> int:
    from flows.ingest.records import Options, Refusal
    from flows.ingest.publish import Summary
    from flows.kafka import kafka_io
    from flows.runtime.settings import load_config
    if bool(args.files) == bool(args.watch):
        raise UserError("give FILEs or --watch DIR (one of the two)")
    if args.once and not args.watch:
        raise UserError("--once goes with --watch")
    config = load_config(args.config)
    if args.source not in config.topics:
        raise UserError(f"source {args.source!r} is not in the config's [sources] "
                        f"({', '.join(config.topics)}); pass --config or --source")
    options = Options(args.source, dict(config.accounts), args.account, args.time_field,
                      args.accept_unbalanced)
    brokers = resolve_brokers(args)
    kafka_io.check_broker(brokers)
    topic, summary, started = config.topics[args.source], Summary(), time.monotonic()
    if args.watch:
        _watch(args, brokers, topic, options, summary)
    else:
        try:
            _files(args, brokers, topic, options, summary)
        except Refusal as refusal:  # a file that must not go out: none of them did
            print(f"tally: {logs.printable(str(refusal))}", file=sys.stderr)
            return 1
    print(_summary(summary, topic, time.monotonic() - started))
    return 0


def _files(args, brokers: str, topic: str, options, summary) -> None:
    from flows.ingest.publish import publish, read_file
    bar = Progress(len(args.files), "read", unit="files")
    done = []
    for path in args.files:
        done.append(read_file(args.format, path, options))
        bar.advance(1)
    bar.close()
    publish(brokers, topic, done, options.source, summary)


def _watch(args, brokers: str, topic: str, options, summary) -> None:
    from flows.ingest.publish import publish, read_file
    from flows.ingest.records import Refusal
    from flows.ingest.watch import DropFolder, watch
    if not args.watch.is_dir():
        raise UserError(f"--watch {args.watch}: no such folder")
    folder = DropFolder(args.watch)

    def handle(path: Path, digest: str) -> None:
        if digest in folder.published:
            logs.info("already published, set aside", file=str(path))
            folder.done(path, digest)
            return
        try:
            records = read_file(args.format, path, options)
        except Refusal as refusal:
            logs.warning(f"refused: {refusal}")
            folder.refused(path, str(refusal))
            summary.refused += 1
            return
        publish(brokers, topic, [records], options.source, summary)
        folder.done(path, digest)
        logs.info("published", file=str(path), records=len(records.records))

    logs.info("watching", folder=str(args.watch), format=args.format, source=options.source)
    # SIGTERM (a deploy) stops like Ctrl-C: an unfinished transaction is aborted, and its
    # file stays in the folder for the next start
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        watch(folder, handle, args.interval, args.once)
    except KeyboardInterrupt:
        logs.info("stopped watching", folder=str(args.watch))


def _summary(summary, topic: str, elapsed: float) -> str:
    lines = [f"published {summary.records:,} records from {summary.files} file(s) to {topic} "
             f"in {elapsed:.1f}s"]
    if summary.refused:
        lines.append(f"refused {summary.refused} file(s): see DIR/refused/*.reason")
    for currency, total in sorted(summary.totals.items()):
        lines.append(f"  {currency} {total:+,f}")
    if summary.first is not None:
        lines.append(f"  booked {summary.first[:10]} to {summary.last[:10]}")
    if summary.heartbeats:
        lines.append(f"  heartbeats: {summary.heartbeats} (the statements' closing dates)")
    for clause in summary.unbalanced:
        lines.append(f"  UNBALANCED, published with an exception: {clause}")
    return "\n".join(lines)
