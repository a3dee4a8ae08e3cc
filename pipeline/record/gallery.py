"""The samples gallery: one self-contained HTML page of piano rolls, audio previews and MIDI links.

MLflow's artifact viewer shows HTML from a blob URL in a frame sandboxed to `allow-scripts`: relative
links resolve nowhere, and downloads, pop-ups and top-level navigation are all blocked. So images and
audio are embedded as data URIs (they work there, in a download and from disk alike), and each MIDI
link says where the file lives in the store, for the case where the click cannot work.
"""

from __future__ import annotations

import base64
import html
import io
import wave
from pathlib import Path

from pipeline.errors import DmcError
from pipeline.render import audio

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


def clip_seconds(mime: str, data: bytes) -> float | None:
    """The length of an Ogg Vorbis or WAV clip, read from its headers (None for another format)."""
    if mime == audio.MIME_TYPES[".wav"]:
        with wave.open(io.BytesIO(data)) as w:
            return w.getnframes() / w.getframerate()
    if mime == audio.MIME_TYPES[".ogg"]:
        # Vorbis: the sample rate is in the identification header, the length is the granule position
        # (samples so far) of the last Ogg page.
        header = data.find(b"\x01vorbis")
        last = data.rfind(b"OggS")
        if header < 0 or last < 0:
            return None
        rate = int.from_bytes(data[header + 12:header + 16], "little")
        samples = int.from_bytes(data[last + 6:last + 14], "little")
        return samples / rate if rate else None
    return None


def _caption(clip: float | None, sound: Path) -> str:
    """What the player plays, in words: the whole piece, or its first part and where the rest is."""
    whole = f"samples/{html.escape(sound.name)}"
    full = clip_seconds(audio.MIME_TYPES[sound.suffix], sound.read_bytes()) \
        if sound.suffix in (".wav", ".ogg") else None
    if clip is None:
        return f"a preview; the whole piece is {whole}"
    if full is not None and full - clip < 0.5:
        return f"the whole piece, {_duration(clip)}"
    of = f" of {_duration(full)}" if full is not None else ""
    return f"the first {_duration(clip)}{of}; the whole piece is {whole}"


def _duration(seconds: float) -> str:
    minutes, rest = divmod(round(seconds), 60)
    return f"{minutes}:{rest:02d}" if minutes else f"{rest} s"


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
            # preload="metadata": the player shows the clip's length before it is played.
            parts.append(f'<audio controls preload="metadata" src="{_data_uri(mime, data)}"></audio>'
                         f"<small>{_caption(clip_seconds(mime, data), sound)}</small>")
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
