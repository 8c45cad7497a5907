"""`tally topics` and `tally produce`."""

from __future__ import annotations

import argparse
import os
import sys
import time
from contextlib import contextmanager
from pathlib import Path

from flows import logs
from flows.logs import UserError

from flows.cli.options import command, resolve_brokers, service_options


def add_topics(commands) -> None:
    cmd = command(commands, "topics")
    sub = cmd.add_subparsers(title="actions", metavar="ACTION")
    create = command(sub, "create", "topics create")
    service_options(create, pg=False)
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


def add_produce(commands) -> None:
    cmd = command(commands, "produce")
    cmd.add_argument("dir", type=Path, help="a day on disk (from 'tally generate')")
    service_options(cmd, pg=False)
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
