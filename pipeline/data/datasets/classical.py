"""piano-midi.de (Bernd Krüger): classical piano pieces, sequenced by hand, one page per composer.

The site (http only: https answers 404): `midi_files.htm` links a page per composer (`bach.htm`,
`chopin.htm`, `beeth.htm`, ...), and each composer page links every piece twice, in one folder:
`midis/<composer>/<piece>.mid` (the standard, multi-track file) and `midis/<composer>/<piece>_format0.mid`
(the same piece as one track). One file per piece is kept: the standard one, and the `_format0` copy
only when the standard one gives no MIDI file (a missing file answers 302 to the HTML home page).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from pipeline.data.datasets import Dataset

_FORMAT0 = re.compile(r"_format0(\.midi?)$", re.IGNORECASE)
SITE_RULES = {
    "seeds": ("midi_files.htm",),
    "follow": (r"^[\w\-]+\.htm$",),  # composer pages sit beside the index
    "files": r"^midis/[^/]+/[^/]+\.midi?$",
}


def _name(link: str) -> str:
    return link.removeprefix("midis/")  # -> <composer>/<piece>.mid


def standard_of(link: str) -> str | None:
    """`midis/x/p_format0.mid` -> `midis/x/p.mid`, the file a format-0 copy stands in for."""
    return _FORMAT0.sub(r"\1", link) if _FORMAT0.search(link) else None


def fetch(dest: Path, params: dict[str, Any]) -> Path:
    from pipeline.data.download import Site, crawl

    crawl("classical", dest, params, Site(**SITE_RULES, name=_name, fallback=standard_of))
    return dest


DATASET = Dataset(
    name="classical",
    source="http://www.piano-midi.de (crawled: composer pages -> one .mid per piece)",
    licence="CC BY-SA 3.0 DE (Bernd Krüger); credit the author, share alike",
    size="about 330 MIDI files, a few MB",
    fetch=fetch,
)
