"""The dataset registry: one small module per source, each exposing `DATASET`.

Modules are imported on demand, so a source's dependencies (an HTTP client, music21) load only
when that source is used.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.errors import DmcError

# name -> module under pipeline.data.datasets
_MODULES = {
    "bach": "bach",
    "bach-satb": "bach_satb",
    "renaissance": "renaissance",
    "folder": "folder",
    "maestro": "maestro",
    "lakh": "lakh",
    "classical": "classical",
    "final-fantasy": "final_fantasy",
    "freemidi": "freemidi",
}


@dataclass(frozen=True)
class Dataset:
    """A source of MIDI files.

    `fetch(dest, params)` makes the raw MIDI files present under a folder and returns that folder:
    `dest` for sources it writes, or the user's own folder for `folder`.
    """

    name: str
    source: str
    licence: str
    size: str
    fetch: Callable[[Path, dict[str, Any]], Path]
    embedded: bool = False


def names() -> list[str]:
    return list(_MODULES)


def get(name: str) -> Dataset:
    if name not in _MODULES:
        raise DmcError(f"unknown dataset '{name}'; choose one of {', '.join(_MODULES)}")
    return importlib.import_module(f"pipeline.data.datasets.{_MODULES[name]}").DATASET


# -- the manifest: what the download stage hands to prepare -------------------------------------------
MIDI_SUFFIXES = (".mid", ".midi")


def midi_files(root: Path) -> list[Path]:
    """Every .mid/.midi file under `root`, recursively, in a stable order (case-insensitive suffix)."""
    return [Path(root) / rel for rel, _ in _scan(Path(root))]


def _scan(root: Path) -> list[tuple[str, os.stat_result]]:
    """(relative posix path, stat) of every MIDI file under `root`, sorted part by part like Paths.

    One stat per file: the directory listing tells files from folders. As Path.rglob did: linked
    folders are not entered, linked files count, unreadable folders are passed over.
    """
    found = []
    folders = [(str(root), "")]
    while folders:
        folder, prefix = folders.pop()
        try:
            with os.scandir(folder) as entries:
                for entry in entries:
                    if entry.is_dir(follow_symlinks=False):
                        folders.append((entry.path, f"{prefix}{entry.name}/"))
                    elif os.path.splitext(entry.name)[1].lower() in MIDI_SUFFIXES and entry.is_file():
                        found.append((prefix + entry.name, entry.stat()))
        except PermissionError:
            continue
    return sorted(found, key=lambda item: item[0].split("/"))


def write_manifest(path: Path, dataset: str, root: Path) -> dict[str, Any]:
    """Record every MIDI file under `root` (relative path, size, sha256) as JSON, atomically.

    The manifest is the download stage's DVC output: its hash changes exactly when the data does, so it
    holds no timestamps. The digests are cached apart (see `_HashCache`): an unchanged file costs one
    stat, not a read.
    """
    from pipeline.files import atomic_path

    root = Path(root)
    cache = _HashCache(root)
    files = [{"path": rel, "size": st.st_size, "sha256": cache.digest(rel, st)} for rel, st in _scan(root)]
    if not files:
        raise DmcError(f"dataset '{dataset}': no .mid/.midi files under {root}")
    cache.save()
    try:
        shown = root.resolve().relative_to(Path.cwd().resolve()).as_posix()
    except ValueError:  # outside the repo (dataset=folder): keep it absolute
        shown = str(root.resolve())
    manifest = {"dataset": dataset, "root": shown, "files": files}
    # One file per line: as readable in a diff as indented JSON, and written by json's C encoder
    # (indent= falls back to the pure-Python one, which took most of a no-change run on 10K files).
    lines = ",\n".join(f"  {json.dumps(f)}" for f in files)
    head = json.dumps({"dataset": dataset, "root": shown})[:-1]
    with atomic_path(path) as tmp:
        tmp.write_text(f'{head}, "files": [\n{lines}\n]}}\n')
    return manifest


class _HashCache:
    """sha256 of the files under one folder, by (path, size, mtime), kept in the user's cache folder
    (`$XDG_CACHE_HOME/dmc/hashes`, else `~/.cache/dmc/hashes`), one file per folder.

    Not in the manifest: DVC deletes a stage's outputs before it runs, and timestamps in the manifest
    would change its hash (and re-run prepare) when only a file's mtime did. An entry is trusted only if
    the file was already older than the cache by 2 s (coarse file-system clocks): a file rewritten
    with the same size in the same clock tick as its hashing is hashed again.
    """

    _MARGIN_NS = 2 * 10**9

    def __init__(self, root: Path):
        import hashlib

        home = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
        self.root = str(root.resolve())
        key = hashlib.sha256(self.root.encode()).hexdigest()[:16]
        self.path = Path(home) / "dmc" / "hashes" / f"{key}.json"
        self.loaded: dict[str, list] = {}
        self.old: dict[str, list] = {}
        self.new: dict[str, list] = {}
        self.hashed = 0  # files read this time
        try:
            data = json.loads(self.path.read_text())
            if data.get("root") == self.root:
                self.loaded = data["files"]
                limit = data["written_ns"] - self._MARGIN_NS
                self.old = {rel: entry for rel, entry in self.loaded.items() if entry[1] < limit}
        except (OSError, ValueError, KeyError, TypeError, IndexError):
            pass  # no cache, or a damaged one: hash everything

    def digest(self, rel: str, st: os.stat_result) -> str:
        from pipeline import files

        entry = self.old.get(rel)
        if entry is None or entry[0] != st.st_size or entry[1] != st.st_mtime_ns:
            entry = [st.st_size, st.st_mtime_ns, files.file_digest(os.path.join(self.root, rel))]
            self.hashed += 1
        self.new[rel] = entry
        return entry[2]

    def save(self) -> None:
        from pipeline.files import write_json

        if not self.hashed and self.new == self.loaded:
            return  # nothing new to remember

        with contextlib.suppress(OSError):  # a read-only home: the next run hashes again, nothing is lost
            write_json(self.path, {"root": self.root, "written_ns": time.time_ns(), "files": self.new})


def read_manifest(path: Path) -> tuple[str, Path, list[str]]:
    """(dataset, root folder, relative paths) from a manifest written by `write_manifest`."""
    if not Path(path).is_file():
        raise DmcError(f"no manifest at {path}; run the download stage first (dvc repro download)")
    data = json.loads(Path(path).read_text())
    return data["dataset"], Path(data["root"]), [f["path"] for f in data["files"]]
