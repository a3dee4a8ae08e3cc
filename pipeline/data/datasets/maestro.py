"""MAESTRO v3.0.0 (Google Magenta): ~200 hours of virtuosic piano performances, the MIDI-only zip."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pipeline.data.datasets import Dataset

URL = "https://storage.googleapis.com/magentadata/datasets/maestro/v3.0.0/maestro-v3.0.0-midi.zip"


def fetch(dest: Path, params: dict[str, Any]) -> Path:
    from pipeline.data.download import Checksum, fetch_archive

    published = Checksum("sha256", "70470ee253295c8d2c71e6d9d4a815189e35c89624b76d22fce5a019d5dde12c",
                         size=58_416_533)
    return fetch_archive("maestro", dest, params, published)


DATASET = Dataset(
    name="maestro",
    source=URL,
    licence="CC BY-NC-SA 4.0 (non-commercial, share alike)",
    size="58 MB zip; 1,276 MIDI files",
    fetch=fetch,
)
