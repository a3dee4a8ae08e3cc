"""Atomic writes: a reader sees the old file or the new one, never half of either."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

# atomic_path's temp names: `.<target>.<writer pid>-<8 random>.tmp`. Before the pid was added they were
# `.<target>.<8 random>.tmp`; those are still recognized, as litter of a version that is not running.
# `dmc generate` stages its pieces in `.dmc-generate-<writer pid>-<8 random>` (pipeline.compose.write).
_TEMP_NAME = re.compile(r"^\..+\.(?:(?P<pid>\d+)-)?[a-z0-9_]{8}\.tmp$"
                        r"|^\.dmc-generate-(?:(?P<staging_pid>\d+)-)?[a-z0-9_]{8}$")
_SWEPT: set[Path] = set()  # folders this process has already swept (one listing per folder)


def process_running(pid: int) -> bool:
    """Whether a process with this pid runs on this machine (another user's counts; unsure counts)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # someone else's process (PermissionError), or a platform that cannot ask
        return True
    return True


def remove_stale_temps(folder: str | Path) -> list[Path]:
    """Remove the temp files and folders that atomic_path left in `folder` when its writer was killed
    (kill -9, power loss). Temps of writers still running are kept. Returns what was removed."""
    folder = Path(folder)
    removed: list[Path] = []
    try:
        entries = list(os.scandir(folder))
    except (FileNotFoundError, NotADirectoryError):
        return removed
    for entry in entries:
        match = _TEMP_NAME.match(entry.name)
        pid = match and (match["pid"] or match["staging_pid"])
        if not match or (pid and process_running(int(pid))):
            continue
        try:
            if entry.is_dir(follow_symlinks=False):
                shutil.rmtree(entry.path)
            else:
                os.unlink(entry.path)
        except FileNotFoundError:  # another process swept it first
            continue
        removed.append(Path(entry.path))
    return removed


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temp path beside `path`; on success rename it over `path`, on error remove it.

    Works for files and folders alike: whatever the caller creates at the temp path replaces `path`.
    The first write into a folder also removes the temps that killed writers left there.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    parent = path.parent.resolve()
    if parent not in _SWEPT:
        remove_stale_temps(parent)
        _SWEPT.add(parent)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.{os.getpid()}-", suffix=".tmp", dir=path.parent)
    os.close(fd)
    os.unlink(tmp)  # the caller creates a file or a folder there
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        os.replace(tmp_path, path)
    finally:
        if tmp_path.is_dir():
            shutil.rmtree(tmp_path, ignore_errors=True)
        elif tmp_path.exists():
            tmp_path.unlink()


@contextmanager
def exclusive_lock(path: str | Path, busy: str) -> Iterator[None]:
    """Hold an exclusive lock on the file `path` for the body, or raise DmcError(busy) at once when
    another process holds it. The lock dies with its process (kill -9 included): no stale locks. The
    file is removed on release, so a folder holds it only while someone writes there."""
    import fcntl

    from pipeline.errors import DmcError

    path = Path(path)
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise DmcError(busy) from None
        try:
            if os.stat(path).st_ino == os.fstat(fd).st_ino:
                break
        except FileNotFoundError:
            pass
        os.close(fd)  # the holder before us removed the file as we opened it: lock the new one
    try:
        yield
    finally:
        path.unlink(missing_ok=True)
        os.close(fd)


def write_json(path: str | Path, data: Any) -> None:
    """Write `data` as indented JSON, atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2, sort_keys=False) + "\n")


def file_digest(path: str | Path, algorithm: str = "sha256") -> str:
    """Hex digest of a file's bytes, read in 1 MiB blocks so large archives never sit in memory."""
    digest = hashlib.new(algorithm)
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()
