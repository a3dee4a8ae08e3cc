"""`bach` (the default): the ~410 Bach chorales inside the music21 wheel, as one-track piano MIDI.

Source: music21's corpus (MusicXML, a few Humdrum). Licence: the chorale encodings ship with music21
(BSD-3-Clause); the music is public domain. No network: the wheel is already installed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pipeline.data.datasets import Dataset
from pipeline.data.datasets.corpus import corpus_scores, materialize


def fetch(dest: Path, params: dict[str, Any], limit: int | None = None) -> Path:
    """Materialize the chorales under `dest` (idempotent); `limit` takes only the first few (tests)."""
    return materialize(corpus_scores("bach"), dest, params["prepare"]["n_jobs"], limit, desc="bach")


DATASET = Dataset(
    name="bach",
    source="music21 corpus (bach): Bach chorales, all voices merged into one program-0 track",
    licence="BSD-3-Clause encodings (music21); public-domain music",
    size="~410 files, ~1 MB",
    fetch=fetch,
    embedded=True,
)
