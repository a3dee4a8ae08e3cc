"""The Final Fantasy MIDI collection of thefinalfantasy.net: fan transcriptions of the series' music.

The site: `site/midi-collection.html` (on the bare host; `www.` redirects there) links a page per game,
`<game>/music-midi.html` (`ff6/music-midi.html`, ...), and each of those links its .mid files. This is
the entry point the original project's `data/datasets` link file gives.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pipeline.data.datasets import Dataset

SITE_RULES = {
    "seeds": ("site/midi-collection.html",),
    "follow": (r"^[\w\-]+/music-midi\.html$",),
    "files": r"\.midi?$",
}


def fetch(dest: Path, params: dict[str, Any]) -> Path:
    from pipeline.data.download import Site, crawl

    crawl("final-fantasy", dest, params, Site(**SITE_RULES))
    return dest


DATASET = Dataset(
    name="final-fantasy",
    source="https://thefinalfantasy.net (crawled: site/midi-collection.html -> <game>/music-midi.html "
           "-> .mid links)",
    licence="fan transcriptions of Square Enix music; no licence granted: research use, do not redistribute",
    size="a few hundred MIDI files, a few MB",
    fetch=fetch,
)
