"""The Final Fantasy MIDI collection of thefinalfantasy.net: fan transcriptions of the series' music.

The site: `games/` links a page per game, each game's `games/<game>/music/` page links its .mid files.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pipeline.datasets import Dataset

SITE_RULES = {
    "seeds": ("games/",),
    "follow": (r"^games/[^/]+/music/?$",),
    "files": r"\.midi?$",
}


def fetch(dest: Path, params: dict[str, Any]) -> Path:
    from pipeline.download import Site, crawl

    crawl("final-fantasy", dest, params, Site(**SITE_RULES))
    return dest


DATASET = Dataset(
    name="final-fantasy",
    source="https://www.thefinalfantasy.net (crawled: per-game music pages -> .mid links)",
    licence="fan transcriptions of Square Enix music; no licence granted: research use, do not redistribute",
    size="a few hundred MIDI files, a few MB",
    fetch=fetch,
)
