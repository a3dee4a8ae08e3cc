"""`renaissance`: Palestrina's mass movements inside the music21 wheel, as one-track piano MIDI.

Source: music21's corpus (palestrina, 1318 Humdrum **kern files). Licence: encodings ship with music21
(BSD-3-Clause); the music is public domain. No network. About 0.25 s per score to materialize.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pipeline.data.datasets import Dataset
from pipeline.data.datasets.corpus import corpus_scores, materialize


def fetch(dest: Path, params: dict[str, Any], limit: int | None = None) -> Path:
    """Materialize the Palestrina scores under `dest` (idempotent); `limit` takes only the first few."""
    return materialize(corpus_scores("palestrina"), dest, params["prepare"]["n_jobs"], limit,
                       desc="renaissance")


DATASET = Dataset(
    name="renaissance",
    source="music21 corpus (palestrina): mass movements, all voices merged into one program-0 track",
    licence="BSD-3-Clause encodings (music21); public-domain music",
    size="1318 files, ~4 MB",
    fetch=fetch,
    embedded=True,
)
