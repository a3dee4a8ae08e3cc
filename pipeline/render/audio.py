"""Render MIDI to audio (fluidsynth and a General MIDI soundfont), encode it, and cut short previews.

Audio is a convenience for listening: when a tool is missing, the caller gets a one-line notice back
and the MIDI files stay the product. The compressed formats are the default because a WAV of one
generated piece is 10-20 MB: ogg is encoded by oggenc (Debian vorbis-tools), mp3 by lame or ffmpeg.
"""

from __future__ import annotations

import io
import shutil
import subprocess
import tempfile
import wave
from pathlib import Path

from pipeline.files import atomic_path

FORMATS = ("wav", "ogg", "mp3")
MIME_TYPES = {".wav": "audio/wav", ".ogg": "audio/ogg", ".mp3": "audio/mpeg"}
INSTALL_HINT = "apt-get install fluidsynth fluid-soundfont-gm"
ENCODER_HINT = {"ogg": "apt-get install vorbis-tools", "mp3": "apt-get install lame"}
SAMPLE_RATE = 44100
# fluidsynth's default gain (0.2) is faint for a solo piano; 0.6 keeps dense chords below clipping.
GAIN = 0.6
# Mono Vorbis at quality 1 (~45 kbit/s) or mp3 at VBR 7: a 3-minute piece is about 1 MB, where the
# soundfont's piano loses nothing a listener judging a sketch would miss. Stereo would double it.
OGG_QUALITY = "1"
MP3_QUALITY = "7"
# Previews (the gallery's players): the first 30 s at 22.05 kHz mono, Vorbis quality -1 (~25 kbit/s),
# about 100 kB each, so eight fit in a page far below the 2 MB a viewer loads without a wait.
PREVIEW_SECONDS = 30.0
PREVIEW_RATE = 22050
PREVIEW_OGG_QUALITY = "-1"
_SOUNDFONTS = (
    Path("/usr/share/sounds/sf2/FluidR3_GM.sf2"),
    Path("/usr/share/sounds/sf2/default-GM.sf2"),
    Path("/usr/share/soundfonts/FluidR3_GM.sf2"),
    Path("/usr/share/soundfonts/default.sf2"),
)


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
    """A one-line notice when `fmt` cannot be made here as asked, else None."""
    if shutil.which("fluidsynth") is None:
        return f"notice: fluidsynth not found, so no audio was rendered (install it: {INSTALL_HINT})"
    if find_soundfont() is None:
        return f"notice: no General MIDI soundfont found, so no audio was rendered (install: {INSTALL_HINT})"
    if fmt == "ogg" and _ogg_encoder() is None:
        return ("notice: ogg needs oggenc, which is not installed; fluidsynth's own encoder wrote "
                f"stereo ogg about 3x larger ({ENCODER_HINT['ogg']})")
    if fmt == "mp3" and _mp3_encoder() is None:
        return ("notice: mp3 needs ffmpeg or lame, neither is installed; wrote wav instead "
                f"({ENCODER_HINT['mp3']})")
    return None


def _ogg_encoder() -> str | None:
    return shutil.which("oggenc")


def _mp3_encoder() -> list[str] | None:
    if shutil.which("lame"):
        return ["lame", "--quiet", "-m", "m", "-V", MP3_QUALITY]
    if shutil.which("ffmpeg"):
        return ["ffmpeg", "-loglevel", "error", "-y", "-i"]
    return None


def _run(cmd: list[str]) -> None:
    result = subprocess.run(cmd, capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"{cmd[0]} failed: {(result.stderr or result.stdout).strip()[:300]}")


def _encode(wav: Path, out: Path, fmt: str, quality: str = OGG_QUALITY) -> None:
    """Encode a WAV file as mono `fmt` (ogg or mp3) at `out`."""
    if fmt == "ogg":
        # A fixed stream serial number: oggenc draws a random one, so the same piece gave other bytes on
        # every run and the sample stage's output hash in dvc.lock could never be reproduced.
        _run([_ogg_encoder() or "oggenc", "-Q", "-q", quality, "--downmix", "--serial", "0", "-o", str(out),
              str(wav)])
        return
    encoder = _mp3_encoder()
    if encoder is None:
        raise RuntimeError("no mp3 encoder (lame or ffmpeg)")
    _run([*encoder, str(wav), str(out)] if encoder[0] == "lame"
         else [*encoder, str(wav), "-ac", "1", "-q:a", MP3_QUALITY, "-f", "mp3", str(out)])


def render_audio_file(midi_path: str | Path, out_path: str | Path, fmt: str = "ogg") -> Path:
    """Render one MIDI file to `out_path` as wav, ogg or mp3; returns the path written.

    Its suffix says the format actually made: mp3 without an encoder is wav; ogg without oggenc is
    fluidsynth's own (larger, stereo) Vorbis. Call `missing_tools` first for the notice.
    """
    if fmt not in FORMATS:
        raise ValueError(f"unknown audio format {fmt!r}; choose one of {', '.join(FORMATS)}")
    if not can_render():
        raise RuntimeError(missing_tools(fmt))
    out_path = Path(out_path)
    encode = (fmt == "ogg" and _ogg_encoder() is not None) or (fmt == "mp3" and _mp3_encoder() is not None)
    if fmt == "mp3" and not encode:
        fmt, out_path = "wav", out_path.with_suffix(".wav")
    direct = "oga" if fmt == "ogg" and not encode else "wav"
    with atomic_path(out_path) as tmp:
        rendered = tmp.with_name(tmp.name + ".wav") if encode else tmp
        try:
            _run(["fluidsynth", "-ni", "-q", "-g", str(GAIN), "-r", str(SAMPLE_RATE),
                  "-T", direct, "-F", str(rendered), str(find_soundfont()), str(midi_path)])
            # fluidsynth 2.3 exits 0 even when it cannot open the output; an empty file gives it away.
            if not rendered.is_file() or rendered.stat().st_size == 0:
                raise RuntimeError(f"fluidsynth wrote no audio for {midi_path}")
            if encode:
                _encode(rendered, tmp, fmt)
        finally:
            if encode and rendered.exists():
                rendered.unlink()
    return out_path


def compact_wav(data: bytes, rate: int = PREVIEW_RATE, seconds: float | None = None) -> bytes:
    """A 16-bit WAV as mono at `rate` (or the nearest rate above that divides the original), cut to
    its first `seconds`.

    Each kept frame is the mean of the frames it replaces, a box filter that keeps most aliasing out.
    """
    import numpy as np

    with wave.open(io.BytesIO(data)) as src:
        channels, width, src_rate = src.getnchannels(), src.getsampwidth(), src.getframerate()
        n = src.getnframes() if seconds is None else min(src.getnframes(), int(seconds * src_rate))
        frames = src.readframes(n)
    if width != 2:
        return data
    x = np.frombuffer(frames, dtype="<i2").reshape(-1, channels).astype(np.float32).mean(axis=1)
    step = max(1, src_rate // rate)
    x = x[: len(x) - len(x) % step].reshape(-1, step).mean(axis=1)
    out = io.BytesIO()
    with wave.open(out, "wb") as dst:
        dst.setnchannels(1)
        dst.setsampwidth(2)
        dst.setframerate(src_rate // step)
        dst.writeframes(np.clip(np.rint(x), -32768, 32767).astype("<i2").tobytes())
    return out.getvalue()


def _decode_to_wav(path: Path, wav: Path) -> None:
    """Any of the FORMATS as a WAV file at `wav` (oggdec, lame or ffmpeg for the compressed ones)."""
    if path.suffix == ".wav":
        shutil.copyfile(path, wav)
    elif path.suffix == ".ogg" and shutil.which("oggdec"):
        _run(["oggdec", "-Q", "-o", str(wav), str(path)])
    elif path.suffix == ".mp3" and shutil.which("lame"):
        _run(["lame", "--quiet", "--decode", str(path), str(wav)])
    elif shutil.which("ffmpeg"):
        _run(["ffmpeg", "-loglevel", "error", "-y", "-i", str(path), str(wav)])
    else:
        raise RuntimeError(f"no decoder for {path.suffix} (oggdec, lame or ffmpeg)")


def preview(path: str | Path, seconds: float = PREVIEW_SECONDS) -> tuple[str, bytes]:
    """The first `seconds` of an audio file, small: (MIME type, bytes).

    Vorbis when oggenc is present, else mp3 when an encoder is, else a 22 kHz mono WAV (1.3 MB for
    30 s). A file whose preview cannot be decoded here is returned whole.
    """
    path = Path(path)
    with tempfile.TemporaryDirectory() as tmp:
        wav = Path(tmp) / "full.wav"
        try:
            _decode_to_wav(path, wav)
        except RuntimeError:
            return MIME_TYPES[path.suffix], path.read_bytes()
        cut = Path(tmp) / "cut.wav"
        cut.write_bytes(compact_wav(wav.read_bytes(), seconds=seconds))
        for fmt, ready in (("ogg", _ogg_encoder() is not None), ("mp3", _mp3_encoder() is not None)):
            if ready:
                out = Path(tmp) / f"preview.{fmt}"
                _encode(cut, out, fmt, PREVIEW_OGG_QUALITY)
                return MIME_TYPES[f".{fmt}"], out.read_bytes()
        return MIME_TYPES[".wav"], cut.read_bytes()
