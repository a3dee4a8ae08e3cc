"""The dataset registry: one small module per source, each exposing `DATASET`.

Modules are imported on demand, so a source's dependencies (an HTTP client, music21) load only
when that source is used.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.errors import DmcError

# name -> module under pipeline.datasets
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
    return importlib.import_module(f"pipeline.datasets.{_MODULES[name]}").DATASET


# -- the manifest: what the download stage hands to prepare -------------------------------------------
MIDI_SUFFIXES = (".mid", ".midi")


def midi_files(root: Path) -> list[Path]:
    """Every .mid/.midi file under `root`, recursively, in a stable order (case-insensitive suffix)."""
    return sorted(p for p in root.rglob("*") if p.suffix.lower() in MIDI_SUFFIXES and p.is_file())


def write_manifest(path: Path, dataset: str, root: Path) -> dict[str, Any]:
    """Record every MIDI file under `root` (relative path, size, sha256) as JSON, atomically.

    The manifest is the download stage's DVC output: its hash changes exactly when the data does.
    """
    from pipeline.files import file_digest, write_json

    root = Path(root)
    files = [{"path": p.relative_to(root).as_posix(), "size": p.stat().st_size, "sha256": file_digest(p)}
             for p in midi_files(root)]
    if not files:
        raise DmcError(f"dataset '{dataset}': no .mid/.midi files under {root}")
    try:
        shown = root.resolve().relative_to(Path.cwd().resolve()).as_posix()
    except ValueError:  # outside the repo (dataset=folder): keep it absolute
        shown = str(root.resolve())
    manifest = {"dataset": dataset, "root": shown, "files": files}
    write_json(path, manifest)
    return manifest


def read_manifest(path: Path) -> tuple[str, Path, list[str]]:
    """(dataset, root folder, relative paths) from a manifest written by `write_manifest`."""
    import json

    if not Path(path).is_file():
        raise DmcError(f"no manifest at {path}; run the download stage first (dvc repro download)")
    data = json.loads(Path(path).read_text())
    return data["dataset"], Path(data["root"]), [f["path"] for f in data["files"]]
