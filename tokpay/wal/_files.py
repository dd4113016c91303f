"""Small durability helpers shared by the log and the snapshots: make directory entries stick.

A new, renamed or deleted file is only durable once its directory has been fsynced too.
"""

from __future__ import annotations

import os
import re
from pathlib import Path


def fsync_directory(directory: Path) -> None:
    """Flush ``directory``'s entries (creations, renames, deletions) to disk."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_file(path: Path | str, *, missing_ok: bool = False) -> None:
    """Flush ``path``'s data to disk (any descriptor's fsync flushes the whole file)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        if missing_ok:
            return
        raise
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def list_numbered(directory: Path, name: re.Pattern[str]) -> list[tuple[int, Path]]:
    """Files in ``directory`` whose name matches ``name`` (its group 1 is a number), in order."""
    found: list[tuple[int, Path]] = []
    for entry in directory.iterdir():
        match = name.match(entry.name)
        if match is not None and entry.is_file():
            found.append((int(match.group(1)), entry))
    found.sort()
    return found


def make_directory(directory: Path, *, fsync: bool) -> None:
    """Create ``directory`` and any missing parents, making each new entry durable."""
    missing: list[Path] = []
    probe = directory
    while not probe.exists():
        missing.append(probe)
        probe = probe.parent
    for path in reversed(missing):
        path.mkdir(exist_ok=True)
        if fsync:
            fsync_directory(path.parent)
