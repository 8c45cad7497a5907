"""The Quix Streams peer application (run by bench/quix.py in its own venv, .venv-quix).

This file imports only quixstreams and the standard library: quixstreams pins
confluent-kafka < 2.13 and Tally pins 2.16.1, so the two cannot share a venv.

What it does, all Quix Streams defaults unless said here:
- `Application(broker_address=..., consumer_group=<new per run>, auto_offset_reset="earliest",
  state_dir=<a temp dir>)`: the default processing guarantee (at-least-once), commit
  interval (5 s), RocksDB state store with its changelog topics, loglevel INFO.
  `on_consumer_error` skips records whose value is not JSON (the default handler
  stops the app on the day's first truncated line) and counts them as processed.
- one `app.dataframe()` per source topic, with `app.topic(name)`'s defaults: Quix's
  JSON value deserializer (orjson), bytes keys (the Kafka key: the record's account).
- `sdf.filter(key is not None)`: heartbeats and lines that name no account carry no key.
- `sdf.update(remember, stateful=True)`: in the state of that key, `count` + 1 and
  `last_amount` = the value's `amount` as it is (a string).
- One shim for the broker (`_kafka_defaults_for_tansu`): Tansu describes a topic's
  configs without the broker defaults, and Quix needs the input topics' `retention.ms`
  to make their changelog topics; Kafka's default (7 days) is filled in where absent.
- Stop: the backlog's size (the end offsets read beforehand) is passed in;
  `on_message_processed` counts every record the app has finished with and calls
  `app.stop()` at the last one (`app.run()` otherwise runs forever). A stall (no
  record for STALL_S) stops it too, and the result says so.

Prints one JSON line on stdout: records, the seconds from the first record processed
to the last, the seconds from start to the first record, and what was counted.
"""

from __future__ import annotations

import argparse
import json
import threading
import time


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--brokers", required=True)
    parser.add_argument("--group", required=True)
    parser.add_argument("--state-dir", required=True)
    parser.add_argument("--total", type=int, required=True, help="records in the backlog")
    parser.add_argument("--stall", type=float, default=60.0, help="give up after this long without a record")
    parser.add_argument("topics", nargs="+")
    args = parser.parse_args()

    started = time.perf_counter()
    from quixstreams import Application  # its import time counts in the wall time, not the rate
    from quixstreams.models.serializers import SerializationError
    from quixstreams.error_callbacks import default_on_consumer_error

    _kafka_defaults_for_tansu()

    seen = {"records": 0, "keyed": 0, "not_json": 0, "first": None, "last": None}
    app: Application

    def processed(*_ignored) -> None:
        now = time.perf_counter()
        if seen["first"] is None:
            seen["first"] = now
        seen["records"] += 1
        seen["last"] = now
        if seen["records"] >= args.total:
            app.stop()

    def on_consumer_error(exc, message, logger) -> bool:
        if isinstance(exc, SerializationError) and message is not None:
            seen["not_json"] += 1
            processed()
            return True
        return default_on_consumer_error(exc, message, logger)

    app = Application(broker_address=args.brokers, consumer_group=args.group,
                      auto_offset_reset="earliest", state_dir=args.state_dir,
                      on_consumer_error=on_consumer_error, on_message_processed=processed)

    def remember(value, state) -> None:
        seen["keyed"] += 1
        state.set("count", state.get("count", 0) + 1)
        state.set("last_amount", value.get("amount"))

    for name in args.topics:
        sdf = app.dataframe(app.topic(name))
        sdf = sdf.filter(lambda value, key, timestamp, headers: key is not None, metadata=True)
        sdf.update(remember, stateful=True)

    stalled = threading.Event()

    def watchdog() -> None:
        mark, since = -1, time.perf_counter()
        while not done.wait(1.0):
            if seen["records"] != mark:
                mark, since = seen["records"], time.perf_counter()
            elif time.perf_counter() - since > args.stall:
                stalled.set()
                app.stop()
                return

    done = threading.Event()
    threading.Thread(target=watchdog, daemon=True).start()
    app.run()
    done.set()
    ended = time.perf_counter()
    first, last = seen["first"], seen["last"]
    print(json.dumps({
        "records": seen["records"], "keyed": seen["keyed"], "not_json": seen["not_json"],
        "total": args.total, "stalled": stalled.is_set(),
        "seconds": None if first is None else last - first,
        "to_first_record": None if first is None else first - started,
        "after_last_record": None if last is None else ended - last,
    }), flush=True)
    return 0 if seen["records"] == args.total else 1


def _kafka_defaults_for_tansu() -> None:
    """Tansu's DescribeConfigs returns only the configs a topic was created with (none for
    `tally topics create`'s), where Kafka returns every config with the broker's defaults.
    Quix reads the input topics' `retention.ms` to configure their changelog topics and
    stops with KeyError('retention.ms') without it. Fill in Kafka's default (7 days) where
    the broker gave none, as a Kafka broker would have; nothing else changes."""
    import sys
    from quixstreams.models.topics.admin import TopicAdmin

    inspect = TopicAdmin.inspect_topics

    def inspect_topics(self, topic_names, timeout=30):
        configs = inspect(self, topic_names, timeout=timeout)
        for name, config in configs.items():
            if config is not None and "retention.ms" not in config.extra_config:
                config.extra_config["retention.ms"] = KAFKA_RETENTION_MS
                print(f"bench: {name}: no retention.ms from the broker; Kafka's default "
                      f"{KAFKA_RETENTION_MS} given to Quix", file=sys.stderr)
        return configs

    TopicAdmin.inspect_topics = inspect_topics


KAFKA_RETENTION_MS = str(7 * 24 * 3600 * 1000)  # log.retention.hours = 168


if __name__ == "__main__":
    raise SystemExit(main())
