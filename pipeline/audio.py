"""Render MIDI to audio with the fluidsynth command-line program and a General MIDI soundfont.

Audio is a convenience for listening: when a tool is missing, the caller gets a one-line notice back
and the MIDI files stay the product.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from pipeline.files import atomic_path

FORMATS = ("wav", "ogg", "mp3")
INSTALL_HINT = "apt-get install fluidsynth fluid-soundfont-gm"
SAMPLE_RATE = 44100
# fluidsynth's default gain (0.2) is faint for a solo piano; 0.6 keeps dense chords below clipping.
GAIN = 0.6
_SOUNDFONTS = (
    Path("/usr/share/sounds/sf2/FluidR3_GM.sf2"),
    Path("/usr/share/sounds/sf2/default-GM.sf2"),
    Path("/usr/share/soundfonts/FluidR3_GM.sf2"),
    Path("/usr/share/soundfonts/default.sf2"),
)
# libsndfile (inside fluidsynth) writes these directly; mp3 needs an encoder after it.
_FLUIDSYNTH_TYPES = {"wav": "wav", "ogg": "oga"}


def find_soundfont() -> Path | None:
    """The first General MIDI soundfont found: the Debian packages', else the one pretty_midi ships."""
    for path in _SOUNDFONTS:
        if path.is_file():
            return path.resolve()
    try:
        import pretty_midi
    except ImportError:
        return None
    bundled = Path(pretty_midi.__file__).parent / "TimGM6mb.sf2"
    return bundled if bundled.is_file() else None


def can_render() -> bool:
    """fluidsynth and a soundfont are both present."""
    return shutil.which("fluidsynth") is not None and find_soundfont() is not None


def missing_tools(fmt: str) -> str | None:
    """A one-line notice when `fmt` cannot be rendered here, else None."""
    if shutil.which("fluidsynth") is None:
        return f"notice: fluidsynth not found, so no audio was rendered (install it: {INSTALL_HINT})"
    if find_soundfont() is None:
        return f"notice: no General MIDI soundfont found, so no audio was rendered (install: {INSTALL_HINT})"
    if fmt == "mp3" and _mp3_encoder() is None:
        return "notice: mp3 needs ffmpeg or lame, neither is installed; wrote wav instead"
    return None


def _mp3_encoder() -> list[str] | None:
    if shutil.which("ffmpeg"):
        return ["ffmpeg", "-loglevel", "error", "-y", "-i"]
    if shutil.which("lame"):
        return ["lame", "--quiet"]
    return None


def _run(cmd: list[str]) -> None:
    result = subprocess.run(cmd, capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"{cmd[0]} failed: {(result.stderr or result.stdout).strip()[:300]}")


def render_audio_file(midi_path: str | Path, out_path: str | Path, fmt: str = "wav") -> Path:
    """Render one MIDI file to `out_path` (wav, ogg, or mp3 via ffmpeg/lame; wav when mp3 cannot be made).

    Returns the path written, whose suffix says the format actually made. Call `missing_tools` first.
    """
    if fmt not in FORMATS:
        raise ValueError(f"unknown audio format {fmt!r}; choose one of {', '.join(FORMATS)}")
    if not can_render():
        raise RuntimeError(missing_tools(fmt))
    soundfont = find_soundfont()
    encoder = _mp3_encoder() if fmt == "mp3" else None
    out_path = Path(out_path)
    if fmt == "mp3" and encoder is None:
        fmt, out_path = "wav", out_path.with_suffix(".wav")
    direct = "wav" if fmt == "mp3" else fmt
    with atomic_path(out_path) as tmp:
        rendered = tmp.with_name(tmp.name + f".{direct}") if encoder else tmp
        try:
            _run(["fluidsynth", "-ni", "-q", "-g", str(GAIN), "-r", str(SAMPLE_RATE),
                  "-T", _FLUIDSYNTH_TYPES[direct], "-F", str(rendered), str(soundfont), str(midi_path)])
            # fluidsynth 2.3 exits 0 even when it cannot open the output; an empty file gives it away.
            if not rendered.is_file() or rendered.stat().st_size == 0:
                raise RuntimeError(f"fluidsynth wrote no audio for {midi_path}")
            if encoder:
                _run([*encoder, str(rendered), str(tmp)] if encoder[0] == "lame"
                     else [*encoder, str(rendered), "-f", "mp3", str(tmp)])
        finally:
            if encoder and rendered.exists():
                rendered.unlink()
    return out_path
