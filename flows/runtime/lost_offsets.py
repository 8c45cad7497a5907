"""Is the broker's log still the one this namespace read?

A namespace resumes each partition at the next offset of its last snapshot. If
the broker no longer holds that offset, resuming would be silent loss:
- the log ends below it (the topic was deleted and created again, or the broker
  lost its tail): the records written there from now on take offsets this
  namespace already read as other records;
- the log starts above it (retention deleted records before they were read).

So a run refuses to start, in one line, unless the operator passes
`--skip-lost-offsets`. Then it goes on from the offsets the broker can give
without reusing one (its own next offset, or the broker's first), gives up the
rest, and records the range in `<namespace>/lost-offsets.json` so that `tally
audit` reports it for good.
"""

from __future__ import annotations

import json
import os
import socket
from datetime import datetime, timezone
from pathlib import Path

from flows import logs

from flows.kafka import kafka_io
from flows.logs import UserError
from flows.runtime.recovery_store import COMPLETE, read_committed, store_state
from state.contract import Part

FILE = "lost-offsets.json"
OPTION = "--skip-lost-offsets"


def lost_ranges(brokers: str, recovery: Path, topics: list[str]) -> list[dict]:
    """Per partition the broker cannot resume: what this namespace read up to, what the
    broker holds, and the offsets given up by going on."""
    if store_state(recovery) != COMPLETE:  # a first start, or one the run itself remakes
        return []
    committed = read_committed(recovery, engine=False)
    if committed is None or not committed.next_offsets:
        return []
    ends = kafka_io.end_offsets(brokers, topics)
    parts = sorted(p for p in committed.next_offsets if p in ends)
    lows = kafka_io.low_offsets(brokers, parts)
    lost = []
    for part in parts:
        read, low, end = committed.next_offsets[part], lows[part], ends[part]
        if read > end:  # the broker will write read-end records again below `read`
            lost.append(_range(part, read, low, end, end, read, "the broker's log ends below it"))
        elif read < low:  # retention removed what was never read
            lost.append(_range(part, read, low, end, read, low, "the broker's log starts above it"))
    return lost


def _range(part: Part, read: int, low: int, end: int, first: int, last: int, why: str) -> dict:
    return {"partition": f"{part[0]}:{part[1]}", "read_to": read, "broker_first": low,
            "broker_end": end, "lost_from": first, "lost_to": last, "why": why}


def check(brokers: str, recovery: Path, topics: list[str], data_root: Path, skip: bool) -> None:
    """Refuse a run the broker cannot resume, or record what `--skip-lost-offsets` gives up."""
    lost = lost_ranges(brokers, recovery, topics)
    if not lost:
        return
    first = lost[0]
    others = f" (and {len(lost) - 1} more partition(s))" if len(lost) > 1 else ""
    if not skip:
        raise UserError(
            f"{first['partition']}: this namespace has read up to offset {first['read_to']:,}, but "
            f"{first['why']} (the broker holds offsets {first['broker_first']:,} to "
            f"{first['broker_end']:,}){others}: the topic was deleted and created again, or the "
            f"broker lost data. Nothing was read. Use a new namespace, or go on and give up "
            f"offsets {first['lost_from']:,} to {first['lost_to']:,} with {OPTION}")
    record(data_root, lost)
    logs.warning(f"{OPTION}: giving up offsets {first['lost_from']:,} to {first['lost_to']:,} of "
                 f"{first['partition']}{others}; recorded in {data_root / FILE}, and tally audit "
                 f"reports them")


def record(data_root: Path, lost: list[dict]) -> None:
    """Append to the namespace's record of given-up offsets (never rewritten in place)."""
    when = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    entries = recorded(data_root) + [entry | {"at": when, "host": socket.gethostname()}
                                     for entry in lost]
    path = data_root / FILE
    temporary = path.with_name(f".{FILE}.{os.getpid()}")
    temporary.write_text(json.dumps(entries, indent=1))
    os.replace(temporary, path)


def recorded(data_root: Path) -> list[dict]:
    path = data_root / FILE
    return json.loads(path.read_text()) if path.exists() else []
