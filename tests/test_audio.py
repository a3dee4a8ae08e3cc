"""Audio (pipeline/render/audio.py): compressed rendering, the notice when an encoder is missing, previews."""

from __future__ import annotations

import io
import shutil
import wave
from pathlib import Path

import numpy as np
import pytest

from pipeline.render import audio

TEST_MIDI = Path(__import__("music21").__file__).parent / "midi" / "testPrimitive" / "test10.mid"

needs_fluidsynth = pytest.mark.skipif(not audio.can_render(), reason="fluidsynth or a soundfont is missing")
needs_oggenc = pytest.mark.skipif(shutil.which("oggenc") is None or shutil.which("oggdec") is None,
                                  reason="vorbis-tools (oggenc, oggdec) is not installed")


def tone_wav(seconds: float, rate: int = 44100, channels: int = 2) -> bytes:
    t = np.arange(int(seconds * rate)) / rate
    x = (10000 * np.sin(2 * np.pi * 440 * t)).astype("<i2")
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as w:
        w.setnchannels(channels)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(np.repeat(x[:, None], channels, axis=1).tobytes())
    return buffer.getvalue()


def wav_seconds(data: bytes) -> float:
    with wave.open(io.BytesIO(data)) as w:
        return w.getnframes() / w.getframerate()


@needs_fluidsynth
@needs_oggenc
def test_ogg_is_mono_vorbis_from_oggenc_and_a_fraction_of_the_wav(tmp_path):
    wav = audio.render_audio_file(TEST_MIDI, tmp_path / "a.wav", "wav")
    ogg = audio.render_audio_file(TEST_MIDI, tmp_path / "a.ogg", "ogg")
    assert ogg.name == "a.ogg" and ogg.read_bytes()[:4] == b"OggS"
    assert audio.missing_tools("ogg") is None
    # Vorbis identification header: byte 11 of the first packet is the channel count.
    first_page = ogg.read_bytes()[:64]
    assert first_page[28:35] == b"\x01vorbis" and first_page[39] == 1
    assert ogg.stat().st_size * 10 < wav.stat().st_size
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.ogg", "a.wav"]  # no temp files left


@needs_fluidsynth
@needs_oggenc
def test_the_same_piece_renders_to_the_same_ogg_bytes(tmp_path):
    first = audio.render_audio_file(TEST_MIDI, tmp_path / "a.ogg", "ogg").read_bytes()
    second = audio.render_audio_file(TEST_MIDI, tmp_path / "b.ogg", "ogg").read_bytes()
    assert first == second


@needs_fluidsynth
def test_ogg_without_oggenc_is_one_line_notice_and_still_an_ogg(tmp_path, monkeypatch):
    monkeypatch.setattr(audio, "_ogg_encoder", lambda: None)
    notice = audio.missing_tools("ogg")
    assert notice.startswith("notice: ogg needs oggenc") and "\n" not in notice and "vorbis-tools" in notice
    ogg = audio.render_audio_file(TEST_MIDI, tmp_path / "a.ogg", "ogg")
    assert ogg.read_bytes()[:4] == b"OggS"


@needs_fluidsynth
@pytest.mark.skipif(shutil.which("lame") is None, reason="lame is not installed")
def test_mp3_is_encoded_by_lame(tmp_path):
    mp3 = audio.render_audio_file(TEST_MIDI, tmp_path / "a.mp3", "mp3")
    data = mp3.read_bytes()
    assert mp3.name == "a.mp3" and (data[:3] == b"ID3" or data[0] == 0xFF)


@needs_oggenc
def test_preview_is_the_first_seconds_as_small_vorbis(tmp_path):
    (tmp_path / "long.wav").write_bytes(tone_wav(40.0))
    mime, data = audio.preview(tmp_path / "long.wav", seconds=5)
    assert mime == "audio/ogg" and data[:4] == b"OggS"
    (tmp_path / "p.ogg").write_bytes(data)
    back = tmp_path / "back.wav"
    audio._decode_to_wav(tmp_path / "p.ogg", back)
    assert wav_seconds(back.read_bytes()) == pytest.approx(5.0, abs=0.05)
    assert len(data) < 60_000  # 5 s of mono Vorbis at quality -1; the WAV was 7 MB


def test_preview_without_any_encoder_is_a_compact_wav(tmp_path, monkeypatch):
    monkeypatch.setattr(audio, "_ogg_encoder", lambda: None)
    monkeypatch.setattr(audio, "_mp3_encoder", lambda: None)
    (tmp_path / "a.wav").write_bytes(tone_wav(3.0))
    mime, data = audio.preview(tmp_path / "a.wav", seconds=1)
    assert mime == "audio/wav" and wav_seconds(data) == pytest.approx(1.0, abs=0.01)
    with wave.open(io.BytesIO(data)) as w:
        assert (w.getnchannels(), w.getframerate()) == (1, 22050)


def test_compact_wav_is_mono_at_half_rate_and_keeps_the_signal():
    data = tone_wav(1.0)
    with wave.open(io.BytesIO(data)) as w:
        tone = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2")[::2]
    small = audio.compact_wav(data)
    with wave.open(io.BytesIO(small)) as w:
        assert (w.getnchannels(), w.getframerate(), w.getnframes()) == (1, 22050, 22050)
        x = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2")
    expected = tone.astype(np.float64).reshape(-1, 2).mean(axis=1)
    assert np.abs(x - expected).max() <= 1 and np.corrcoef(x, tone[::2])[0, 1] > 0.99
    assert len(small) < len(data) / 3.9
    assert wav_seconds(audio.compact_wav(data, seconds=0.5)) == 0.5
