"""The samples gallery: one self-contained HTML page of piano rolls, audio previews and MIDI links.

MLflow's artifact viewer shows HTML from a blob URL in a frame sandboxed to `allow-scripts`: relative
links resolve nowhere, and downloads, pop-ups and top-level navigation are all blocked. So images and
audio are embedded as data URIs (they work there, in a download and from disk alike), and each MIDI
link says where the file lives in the store, for the case where the click cannot work.
"""

from __future__ import annotations

import base64
import html
from pathlib import Path

from pipeline import audio
from pipeline.errors import DmcError

# Shown once, above the pieces; the script hides it where downloads work (a page opened from disk).
VIEWER_NOTE = ("Inside <code>mlflow ui</code> the viewer blocks downloads: the MIDI files are "
               "<code>samples/&lt;name&gt;.mid</code> under the <b>{sample_run}</b> run's Artifacts "
               "(expand this row, open <i>sample</i>, tab <i>Artifacts</i>), with the full-length audio.")
_SANDBOX_CHECK = ("<script>if(location.protocol!=='blob:')"
                  "{document.getElementById('viewer-note').hidden=true}</script>")


def _data_uri(mime: str, data: bytes) -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode()}"


def _audio_file(mid: Path) -> Path | None:
    for suffix in audio.MIME_TYPES:
        if mid.with_suffix(suffix).is_file():
            return mid.with_suffix(suffix)
    return None


def write_gallery(samples: Path, path: Path, title: str = "dmc samples", sample_run: str = "sample") -> Path:
    """Write one HTML page for the pieces in `samples`: piano roll, a short audio preview, MIDI link.

    `sample_run` names the run whose artifacts hold the samples (shown where links cannot work).
    """
    pieces = []
    for mid in sorted(samples.glob("*.mid")):
        name = html.escape(mid.stem)
        parts = [f"<h2>{name}</h2>"]
        png = mid.with_suffix(".png")
        if png.is_file():
            parts.append(f'<img alt="piano roll of {name}" src="{_data_uri("image/png", png.read_bytes())}">')
        sound = _audio_file(mid)
        if sound is not None:
            mime, data = audio.preview(sound)
            parts.append(f'<audio controls preload="none" src="{_data_uri(mime, data)}"></audio>'
                         f"<small>the first {audio.PREVIEW_SECONDS:.0f} s; the whole piece is "
                         f"samples/{html.escape(sound.name)}</small>")
        parts.append(f'<p>MIDI: <a download="{html.escape(mid.name)}" '
                     f'href="{_data_uri("audio/midi", mid.read_bytes())}">{html.escape(mid.name)}</a> '
                     f"(<code>samples/{html.escape(mid.name)}</code>)</p>")
        pieces.append("<section>" + "\n".join(parts) + "</section>")
    if not pieces:
        raise DmcError(f"gallery: no .mid files in {samples}")
    note = VIEWER_NOTE.format(sample_run=html.escape(sample_run))
    page = f"""<!doctype html>
<html><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>body{{font-family:sans-serif;margin:1em}} section{{margin-bottom:2em}}
img{{display:block;max-width:100%}} audio{{display:block;width:100%;max-width:640px;margin:.3em 0}}
#viewer-note{{background:#fff8dc;padding:.5em;border:1px solid #e0d8a8}}</style>
</head><body><h1>{html.escape(title)}</h1>
<p id="viewer-note">{note}</p>
{chr(10).join(pieces)}
{_SANDBOX_CHECK}
</body></html>
"""
    path.write_text(page)
    return path
