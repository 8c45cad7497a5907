"""Running the real flow (the `tally` CLI in a subprocess) and reading back what it wrote."""

from __future__ import annotations

import hashlib
import subprocess
import sys
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path

import msgspec

from sinks import parquet
from sinks.postgres import read_decisions, read_fates

_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
_ONE_US = timedelta(microseconds=1)
DECISION_FIELDS = parquet.DECISIONS_SCHEMA.names
FATE_FIELDS = parquet.FATES_SCHEMA.names


def write_config(path: Path, topics: dict[str, str]) -> Path:
    lines = ["[sources]"] + [f'{source} = "{topic}"' for source, topic in topics.items()]
    path.write_text("\n".join(lines) + "\n")
    return path


def unique_topics() -> dict[str, str]:
    tag = uuid.uuid4().hex[:8]
    return {s: f"t{tag}.{s}" for s in ("bank", "processor", "ledger")}


def tally(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    result = subprocess.run([sys.executable, "-m", "flows", *args], capture_output=True, text=True,
                            timeout=timeout)
    assert result.returncode == 0, f"tally {' '.join(args)} failed:\n{result.stdout}\n{result.stderr}"
    return result


def _us(value) -> int | None:
    """Timestamps from PostgreSQL and Parquet, and the engine's integers, as UTC microseconds."""
    if isinstance(value, datetime):
        return (value - _EPOCH) // _ONE_US
    return value


def _norm(row: dict, fields: list[str]) -> tuple:
    out = []
    for name in fields:
        value = row[name]
        if name in ("window_start", "window_end"):
            value = _us(value)
        elif name == "candidates":
            value = [(c["event"], c["ref"], c["confidence"]) for c in value]
        elif isinstance(value, (list, tuple)):
            value = list(value)
        out.append(value)
    return tuple(out)


def canonical_decisions(rows: list[dict]) -> list[tuple]:
    return sorted(_norm(r, DECISION_FIELDS) for r in rows)


def canonical_fates(rows: list[dict]) -> list[tuple]:
    return sorted(_norm(r, FATE_FIELDS) for r in rows)


def engine_rows(decisions, fates) -> tuple[list[tuple], list[tuple]]:
    d = [msgspec.structs.asdict(x) | {"candidates": [msgspec.structs.asdict(c) for c in x.candidates]}
         for x in decisions]
    f = [dict(zip(FATE_FIELDS, msgspec.structs.astuple(x))) for x in fates if x.outcome != "pending"]
    return canonical_decisions(d), canonical_fates(f)


def pg_rows(dsn: str, namespace: str) -> tuple[list[tuple], list[tuple]]:
    return canonical_decisions(read_decisions(dsn, namespace)), canonical_fates(read_fates(dsn, namespace))


def parquet_rows(root: Path) -> tuple[list[tuple], list[tuple]]:
    decisions = parquet.read_dataset(root / "decisions", parquet.DECISIONS_SCHEMA).to_pylist()
    fates = parquet.read_dataset(root / "fates", parquet.FATES_SCHEMA).to_pylist()
    return canonical_decisions(decisions), canonical_fates(fates)


def digest(rows: list[tuple]) -> str:
    return hashlib.sha256(msgspec.json.encode(rows)).hexdigest()
