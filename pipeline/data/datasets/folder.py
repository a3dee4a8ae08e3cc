"""`folder`: a local folder of .mid/.midi files, searched recursively (the `raw_dir` param).

This is how users bring data they already have. Nothing is copied: the manifest points at the folder.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pipeline.data.datasets import MIDI_SUFFIXES, Dataset
from pipeline.errors import DmcError


def fetch(dest: Path, params: dict[str, Any]) -> Path:
    """Check that `raw_dir` is a folder holding MIDI files and return it (`dest` is not used)."""
    root = Path(params["raw_dir"]).expanduser()
    if not root.is_dir():
        raise DmcError(f"params: 'raw_dir' {root} is not a folder (dataset=folder needs your MIDI folder)")
    # The first file settles it; the manifest lists them all (one stat each) right after.
    if next((p for p in root.rglob("*") if p.suffix.lower() in MIDI_SUFFIXES and p.is_file()), None) is None:
        raise DmcError(f"params: 'raw_dir' {root} holds no .mid/.midi files")
    return root


DATASET = Dataset(
    name="folder",
    source="a local folder of .mid/.midi files (raw_dir), searched recursively",
    licence="yours",
    size="any",
    fetch=fetch,
)
