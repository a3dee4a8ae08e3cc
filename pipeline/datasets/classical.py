"""piano-midi.de (Bernd Krüger): classical piano pieces, sequenced by hand, one page per composer.

The site: `midi_files.htm` links a page per composer (`bach.htm`, `chopin.htm`, ...), and each composer
page links its pieces as `midis/<composer>/<piece>.mid`; the `midis/<composer>/format0/` copies of the
same pieces are left out.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pipeline.datasets import Dataset

SITE_RULES = {
    "seeds": ("midi_files.htm",),
    "follow": (r"^[\w\-]+\.htm$",),  # composer pages sit beside the index
    "files": r"^midis/[^/]+/[^/]+\.midi?$",
}


def _name(link: str) -> str:
    return link.removeprefix("midis/")  # -> <composer>/<piece>.mid


def fetch(dest: Path, params: dict[str, Any]) -> Path:
    from pipeline.download import Site, crawl

    crawl("classical", dest, params, Site(**SITE_RULES, name=_name))
    return dest


DATASET = Dataset(
    name="classical",
    source="http://www.piano-midi.de (crawled: composer pages -> .mid links)",
    licence="CC BY-SA 3.0 DE (Bernd Krüger); credit the author, share alike",
    size="about 330 MIDI files, a few MB",
    fetch=fetch,
)
