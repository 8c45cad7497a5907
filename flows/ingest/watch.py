"""A drop folder: publish each file that lands in it once, then move it aside.

Files are remembered by the SHA-256 of their content (DIR/.tally-ingest/published), so
the same statement dropped again under another name is not published twice. A file is
taken only once its size and modification time held still for one poll, so a transfer
in progress (SFTP writes in place) is not read half-written. Published files move to
DIR/done/, refused ones to DIR/refused/ with NAME.reason beside them.
"""

from __future__ import annotations

import hashlib
import os
import time
from pathlib import Path
from typing import Callable

STATE = ".tally-ingest"
SKIPPED_SUFFIXES = (".part", ".tmp", ".filepart", ".reason")


class DropFolder:
    def __init__(self, folder: Path):
        self.folder = folder
        self.state = folder / STATE
        self.state.mkdir(parents=True, exist_ok=True)
        self.published_file = self.state / "published"
        self.published = set(self.published_file.read_text().split()) \
            if self.published_file.exists() else set()
        self.sizes: dict[Path, tuple[int, int]] = {}

    def candidates(self) -> list[Path]:
        return sorted(path for path in self.folder.iterdir() if path.is_file()
                      and not path.name.startswith(".") and not path.name.endswith(SKIPPED_SUFFIXES))

    def ready(self) -> list[Path]:
        """Files that held still since the last look, in name order."""
        ready, seen = [], {}
        for path in self.candidates():
            stat = path.stat()
            seen[path] = (stat.st_size, stat.st_mtime_ns)
            if self.sizes.get(path) == seen[path]:
                ready.append(path)
        self.sizes = seen
        return ready

    def digest(self, path: Path) -> str:
        return hashlib.sha256(path.read_bytes()).hexdigest()

    def done(self, path: Path, digest: str) -> None:
        """Remember the content first: a crash between the two steps republishes nothing."""
        self.published.add(digest)
        with self.published_file.open("a") as out:
            out.write(digest + "\n")
            out.flush()
            os.fsync(out.fileno())
        self._move(path, "done")

    def refused(self, path: Path, reason: str) -> None:
        target = self._move(path, "refused")
        target.with_name(target.name + ".reason").write_text(reason + "\n")

    def _move(self, path: Path, where: str) -> Path:
        folder = self.folder / where
        folder.mkdir(exist_ok=True)
        target = folder / path.name
        path.replace(target)
        self.sizes.pop(path, None)
        return target


def watch(folder: DropFolder, handle: Callable[[Path, str], None], interval_s: float,
          once: bool) -> None:
    """Call handle(path, digest) for every new file; with `once`, take every file there now
    and stop, else poll until interrupted."""
    while True:
        for path in folder.candidates() if once else folder.ready():
            handle(path, folder.digest(path))
        if once:
            return
        time.sleep(interval_s)
