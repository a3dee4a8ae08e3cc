"""The Lakh MIDI Dataset (Colin Raffel), full version: 178K MIDI files scraped from the web."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pipeline.data.datasets import Dataset

URL = "http://hog.ee.columbia.edu/craffel/lmd/lmd_full.tar.gz"


def fetch(dest: Path, params: dict[str, Any]) -> Path:
    from pipeline.data.download import Checksum, fetch_archive

    published = Checksum("md5", "2536ce3fd2cede53ddaa264f731859ab", size=1_768_163_879)
    return fetch_archive("lakh", dest, params, published)


DATASET = Dataset(
    name="lakh",
    source=URL,
    licence="CC BY 4.0",
    size="1.77 GB tar.gz; 178,561 MIDI files",
    fetch=fetch,
)
