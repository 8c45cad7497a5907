"""Running the real flow (the `tally` CLI in a subprocess) and reading back what it wrote."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import uuid
from pathlib import Path

import msgspec

from sinks import compare, parquet
from sinks.stores import PostgresStore

DECISION_FIELDS = compare.DECISION_FIELDS
FATE_FIELDS = compare.FATE_FIELDS


def write_config(path: Path, topics: dict[str, str]) -> Path:
    lines = ["[sources]"] + [f'{source} = "{topic}"' for source, topic in topics.items()]
    path.write_text("\n".join(lines) + "\n")
    return path


def unique_topics() -> dict[str, str]:
    tag = uuid.uuid4().hex[:8]
    return {s: f"t{tag}.{s}" for s in ("bank", "processor", "ledger")}


def tally(*args: str, timeout: float = 600, env: dict | None = None,
          expect: int = 0) -> subprocess.CompletedProcess:
    """Run the CLI; env is added to (None values removed from) this process's environment.
    expect=None accepts any exit code."""
    full_env = {k: v for k, v in (os.environ | (env or {})).items() if v is not None}
    result = subprocess.run([sys.executable, "-m", "flows", *args], capture_output=True, text=True,
                            timeout=timeout, env=full_env)
    assert expect is None or result.returncode == expect, \
        f"tally {' '.join(args)} exited {result.returncode}:\n{result.stdout}\n{result.stderr}"
    return result


def start_tally(*args: str, env: dict | None = None) -> subprocess.Popen:
    """The CLI in the background, output captured (for tests that act while it runs)."""
    return subprocess.Popen([sys.executable, "-m", "flows", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=os.environ | (env or {}))


def stop(flow: subprocess.Popen, timeout: float = 60) -> int:
    """SIGTERM a live run started by `start_tally` and wait for it to end, reading its output
    meanwhile: a run whose stderr pipe is full (nobody reading it) could never exit."""
    if flow.poll() is None:
        flow.send_signal(signal.SIGTERM)
    try:
        flow.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        flow.kill()
        _, stderr = flow.communicate()
        raise AssertionError(f"the run did not end within {timeout:.0f}s of SIGTERM; "
                             f"its stderr ends:\n{stderr[-3000:]}") from None
    return flow.returncode


def canonical_decisions(rows: list[dict]) -> list[tuple]:
    return sorted(compare.canonical(r, DECISION_FIELDS) for r in rows)


def canonical_fates(rows: list[dict]) -> list[tuple]:
    return sorted(compare.canonical(r, FATE_FIELDS) for r in rows)


def engine_rows(decisions, fates) -> tuple[list[tuple], list[tuple]]:
    d = [msgspec.structs.asdict(x) | {"candidates": [msgspec.structs.asdict(c) for c in x.candidates]}
         for x in decisions]
    f = [dict(zip(FATE_FIELDS, msgspec.structs.astuple(x))) for x in fates if x.outcome != "pending"]
    return canonical_decisions(d), canonical_fates(f)


def read_decisions(dsn: str, namespace: str) -> list[dict]:
    """Every decision row as stored (review columns too), by decision_id."""
    with PostgresStore(dsn, namespace) as store:
        return store.decision_rows()


def read_fates(dsn: str, namespace: str) -> list[dict]:
    """Every fate row as stored, by topic, partition, offset."""
    with PostgresStore(dsn, namespace) as store:
        return store.fate_rows()


def decisions_written(dsn: str, namespace: str) -> int:
    """Decisions a run has written so far: 0 before it has made its tables."""
    with PostgresStore(dsn, namespace) as store:
        return len(store.decision_rows()) if store.exists else 0


def pg_rows(dsn: str, namespace: str) -> tuple[list[tuple], list[tuple]]:
    return canonical_decisions(read_decisions(dsn, namespace)), canonical_fates(read_fates(dsn, namespace))


def parquet_rows(root: Path) -> tuple[list[tuple], list[tuple]]:
    decisions = parquet.read_dataset(root / "decisions", parquet.DECISIONS_SCHEMA).to_pylist()
    fates = parquet.read_dataset(root / "fates", parquet.FATES_SCHEMA).to_pylist()
    return canonical_decisions(decisions), canonical_fates(fates)


def digest(rows: list[tuple]) -> str:
    return hashlib.sha256(msgspec.json.encode(rows)).hexdigest()


def publish_day(broker: str, work: Path, payments: int, seed: int) -> tuple[dict[str, str], Path]:
    """A generated day under work/day, published to fresh topics (3 partitions each);
    returns the topics and a config file naming them."""
    from flows.kafka import kafka_io
    from flows.dev.generate import generate_day
    topics = unique_topics()
    generate_day(work / "day", payments, seed=seed, topics=topics)
    kafka_io.create_topics(broker, list(topics.values()), 3)
    kafka_io.produce_day(broker, work / "day", list(topics.values()), progress=False)
    return topics, write_config(work / "tally.toml", topics)


def flow_env(broker: str, pg_dsn: str, config: Path, work: Path) -> dict:
    """The environment a `tally` command of a test runs in: the session's services, the
    test's config, and its data under work/data."""
    return {"TALLY_BROKERS": broker, "TALLY_PG_DSN": pg_dsn, "TALLY_CONFIG": str(config),
            "TALLY_DATA_DIR": str(work / "data")}


def published(broker: str, pg_dsn: str, prefix: str, payments: int,
              seed: int) -> tuple[Path, dict[str, str], dict]:
    """A fresh work directory with a generated day published to fresh topics: the
    directory, the topics and the environment to run `tally` in."""
    import tempfile
    work = Path(tempfile.mkdtemp(prefix=prefix))
    topics, config = publish_day(broker, work, payments, seed)
    return work, topics, flow_env(broker, pg_dsn, config, work)


def wait_until(check, seconds: float, what: str, every: float = 0.3):
    """check()'s first true result within `seconds`; fails naming `what` otherwise."""
    import time
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        result = check()
        if result:
            return result
        time.sleep(every)
    raise AssertionError(f"timed out waiting for {what}")
