"""What a downloadable dataset has locally: its `.complete.json` marker, and the `dmc download --list`
table built from it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

COMPLETE = ".complete.json"


def read_marker(dest: Path) -> dict[str, Any]:
    """The `.complete.json` a finished download left in `dest`, or {} when there is none (or it is torn)."""
    try:
        return json.loads((dest / COMPLETE).read_text())
    except (OSError, ValueError):
        return {}


def local_state(dest: Path) -> str:
    """`complete (N files)`, `partial` or `no`: how much of a downloadable dataset is under `dest`."""
    marker = read_marker(dest)
    if marker:
        return f"complete ({marker.get('files', 0):,} files)"
    if dest.is_dir() and any(dest.iterdir()):
        return "partial"
    return "no"


def describe_datasets(params: dict[str, Any]) -> str:
    """A table of every dataset: name, whether it is present under raw_dir, size, licence, source."""
    from pipeline.data import datasets
    from pipeline.data.datasets import midi_files

    raw = Path(params["raw_dir"])
    rows = [("NAME", "LOCAL", "SIZE", "LICENCE")]
    sources = []
    for name in datasets.names():
        dataset = datasets.get(name)
        if dataset.embedded:
            state = "embedded"
        elif name == "folder":
            state = f"{len(midi_files(raw)):,} files in {raw}" if raw.is_dir() else f"no folder {raw}"
        else:
            state = local_state(raw / name)
        rows.append((name, state, dataset.size, dataset.licence))
        url = params["urls"].get(name, "")
        # Show the URL actually used when params point somewhere else (a mirror, a test server).
        sources.append(dataset.source + (f"; urls.{name} = {url}" if url not in dataset.source else ""))
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    lines = []
    for i, row in enumerate(rows):
        lines.append("  ".join(c.ljust(w) for c, w in zip(row[:3], widths, strict=True)) + "  " + row[3])
        if i:
            lines.append(" " * (widths[0] + 2) + "source: " + sources[i - 1])
    return "\n".join(lines)
