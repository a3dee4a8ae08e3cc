"""freemidi.org: user-uploaded MIDI files of popular songs, one numbered download page per song.

The site: `download3-<id>` (redirecting to `download3-<id>-<title>`) is a song's page. It opens a
session (a `PHPSESSID` cookie), and its `getter-<id>` link serves the file only within that session,
with the page as Referer; a bare `getter-<id>` answers 302 and then 500. So each getter is fetched right
after its own page, in a session of its own. Ids run from 1 to `download.freemidi_ids` (ids past 28,900
exist); absent ids answer 404 and are logged as such, so a re-run does not ask again.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from pipeline.data.datasets import Dataset


def _name(link: str) -> str:
    """`getter-<id>` -> `<id>.mid`: the id is stable, titles are not."""
    return re.sub(r"^getter-(\d+)$", r"\1.mid", link)


def fetch(dest: Path, params: dict[str, Any]) -> Path:
    from pipeline.data.download import Site, crawl

    ids = range(1, params["download"]["freemidi_ids"] + 1)
    crawl("freemidi", dest, params, Site(seeds=(), probes=tuple(f"download3-{i}" for i in ids), follow=(),
                                         files=r"^getter-\d+$", name=_name, files_with_page=True))
    return dest


DATASET = Dataset(
    name="freemidi",
    source="https://freemidi.org (crawled: numbered download3-<id> pages, each followed by its "
           "getter-<id> file in the page's session)",
    licence="user uploads under the site's terms; no licence granted: research use, do not redistribute",
    size="about 30K ids (pages), tens of MB of MIDI",
    fetch=fetch,
)
