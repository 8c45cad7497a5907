"""A day on disk: DIR/<topic>/<partition>.jsonl, one record value per line, in log order.

The line number is the record's offset. Values are bytes, kept byte for byte
(a value cannot contain a newline byte; JSON escapes them anyway).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from state.contract import Part


class DayError(ValueError):
    """A directory that is not a day on disk."""


def partitions(day_dir: Path, topics: list[str]) -> dict[Part, Path]:
    """Every partition file of the configured topics, keyed by (topic, partition)."""
    if not day_dir.is_dir():
        raise DayError(f"{day_dir} is not a directory; expected DIR/<topic>/<partition>.jsonl")
    found = {}
    for topic in topics:
        for path in sorted((day_dir / topic).glob("*.jsonl")):
            if not path.stem.isdigit():
                raise DayError(f"{path}: partition files are named <number>.jsonl")
            found[(topic, int(path.stem))] = path
    if not found:
        raise DayError(f"no partition files for topics {', '.join(topics)} under {day_dir}")
    return dict(sorted(found.items()))


def read_values(path: Path) -> list[bytes]:
    data = path.read_bytes()
    if not data:
        return []
    lines = data.split(b"\n")
    return lines[:-1] if data.endswith(b"\n") else lines


def interleave(values: dict[Part, list[bytes]], chunk: int
               ) -> Iterator[tuple[str, int, int, list[bytes]]]:
    """Chunks of each partition in round-robin order: (topic, partition, first offset, values).

    Any order that keeps each partition's own order gives the same decisions;
    this one is simply fixed so that runs look alike.
    """
    cursors = {part: 0 for part in values}
    while cursors:
        for part in list(cursors):
            start = cursors[part]
            piece = values[part][start:start + chunk]
            if not piece:
                del cursors[part]
                continue
            cursors[part] = start + len(piece)
            yield part[0], part[1], start, piece
