"""Generation: decoding, determinism, continuation, long pieces, audio and plots (pipeline/compose/)."""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import music21
import numpy as np
import pytest
import torch

from pipeline.compose import decode, rows
from pipeline.compose.decode import TICKS_PER_QUARTER
from pipeline.compose.generate import generate_files, load_sampler
from pipeline.compose.options import GenerateOptions, parse_quantize
from pipeline.compose.sampler import Sampler
from pipeline.data import midi
from pipeline.data.encoding import Encoding
from pipeline.data.rows import read_rows
from pipeline.errors import DmcError
from pipeline.model.checkpoints import write_checkpoint as save_checked
from pipeline.model.diffusion import GaussianDiffusion
from pipeline.model.unet import PRESETS, UNet
from pipeline.render import audio

MUSIC21 = Path(music21.__file__).parent
PIANO_MIDI = MUSIC21 / "midi" / "testPrimitive" / "test03.mid"  # two piano tracks, 564 and 827 notes
SEQ_LEN = 32
TIMESTEPS = 20  # a short schedule keeps DDPM (all T steps) fast in tests


def notes_stats(notes: midi.Notes) -> dict:
    """Normalization stats spanning the given notes, in the stats.json layout."""
    features = np.stack([midi.frequency(notes.pitch), notes.duration, notes.delta])
    encoding = Encoding(lo=[float(v) for v in features.min(1)], hi=[float(v) for v in features.max(1)])
    return {**encoding.to_stats(), "seq_len": SEQ_LEN, "instruments": ["piano"]}


def write_checkpoint(path: Path, stats: dict | None = None, seed: int = 0,
                     self_condition: bool = False, prediction: str = "epsilon") -> Path:
    """A models/model.pt-shaped file holding a randomly initialised tiny U-Net, as wide as the stats'
    encoding asks (and twice that on input with `self_condition`; a softmax head's logits out)."""
    torch.manual_seed(seed)
    stats = stats or notes_stats(midi.extract_notes(PIANO_MIDI))
    encoding = Encoding.from_stats(stats)
    channels = encoding.channels
    diffusion = {"timesteps": TIMESTEPS, "beta_start": 1e-4, "beta_end": 0.02,
                 "self_condition": self_condition, "prediction": prediction}
    codes = encoding.code_groups() if prediction == "softmax" else None
    out = GaussianDiffusion(**diffusion, codes=codes).output_channels(channels)
    config = dataclasses.replace(PRESETS["tiny"], features=channels,
                                 cond_features=channels if self_condition else 0,
                                 out_features=0 if out == channels else out)
    model = UNet(config)
    save_checked(path, {"config": dataclasses.asdict(config), "ema": model.state_dict(), "stats": stats,
                        "diffusion": diffusion, "step": 0})
    return path


def lattice_stats(notes: midi.Notes) -> dict:
    """Stats for the helix / grid / chord code, spanning the given notes, on the 1/4-beat grid."""
    stats = notes_stats(notes)
    stats["encoding"] = {"pitch": "helix", "time": "grid", "scale": "symmetric", "chord": True}
    return {**stats, "grid": 0.25}



@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    return write_checkpoint(tmp_path_factory.mktemp("model") / "model.pt")


def quiet(**kw) -> GenerateOptions:
    return GenerateOptions(progress=False, device="cpu", **kw)


def read_notes(path: Path) -> list[tuple[int, int, int]]:
    """(pitch, onset, duration) in ticks at TICKS_PER_QUARTER of a written sample, as prepare reads it."""
    notes = midi.extract_notes(path)
    return [(int(p), round(o * TICKS_PER_QUARTER), round(d * TICKS_PER_QUARTER))
            for p, o, d in zip(notes.pitch, notes.onset, notes.duration, strict=True)]


# -- decoding -------------------------------------------------------------------------------------------


def test_frequency_maps_to_the_nearest_pitch_in_log_frequency_not_in_hz():
    # 453 Hz is 13.0 Hz above A4 and 13.2 Hz below A#4, but 0.502 semitones above A4.
    assert decode.frequency_to_pitch(np.array([453.0]))[0] == 70
    assert decode.frequency_to_pitch(np.array([440.0, 261.6256, 27.5])).tolist() == [69, 60, 21]


def test_out_of_range_and_invalid_frequencies_clip_to_midi_pitches():
    pitch = decode.frequency_to_pitch(np.array([1e7, 0.0, -5.0, np.nan, np.inf, 1e-9]))
    assert pitch.tolist() == [127, 0, 0, 0, 127, 0]


def test_decoding_real_notes_gives_back_the_same_notes():
    notes = midi.extract_notes(PIANO_MIDI)
    encoding = Encoding.from_stats(notes_stats(notes))
    x = decode.encode_notes(notes.pitch, notes.duration, notes.delta, encoding)
    assert x.min() >= 0 and x.max() <= 1
    track = decode.decode(x[:, None, :], encoding)
    onset = np.rint((notes.onset - notes.onset[0]) * TICKS_PER_QUARTER)
    assert track.pitch.tolist() == notes.pitch.tolist()
    assert np.abs(track.onset - onset).max() <= 1
    assert np.abs(track.duration - notes.duration * TICKS_PER_QUARTER).max() <= 1


def test_decoded_notes_survive_writing_and_reading_midi(tmp_path):
    notes = midi.extract_notes(PIANO_MIDI)
    encoding = Encoding.from_stats(notes_stats(notes))
    x = decode.encode_notes(notes.pitch, notes.duration, notes.delta, encoding)
    track = decode.decode(x[:, None, :], encoding)
    midi.write_midi(tmp_path / "a.mid", [midi.TrackNotes(track.pitch, track.onset / TICKS_PER_QUARTER,
                                                         track.duration / TICKS_PER_QUARTER)])
    assert read_notes(tmp_path / "a.mid") == list(zip(track.pitch.tolist(), track.onset.tolist(),
                                                      track.duration.tolist(), strict=True))


def test_wild_model_output_decodes_to_valid_notes_without_crashing():
    encoding = Encoding(lo=[30.0, 0.25, 0.0], hi=[2000.0, 4.0, 2.0])
    x = np.array([[[-3.0, 0.5, 7.0, np.nan]], [[-1.0, 0.0, np.nan, 2.0]], [[np.nan, -2.0, 0.0, 9.0]]])
    track = decode.decode(x, encoding)
    assert len(track.pitch) >= 1
    assert track.pitch.min() >= 0 and track.pitch.max() <= 127
    assert track.duration.min() >= decode.MIN_DURATION_TICKS
    assert (np.diff(track.onset) >= 0).all() and track.onset[0] == 0


def test_notes_on_the_same_pitch_and_tick_keep_the_first_in_sequence_order():
    track = decode.decode_row(np.full(3, 440.0), np.array([1.0, 3.0, 2.0]), np.array([0.0, 0.0, 1.0]))
    assert track.pitch.tolist() == [69, 69]
    assert track.onset.tolist() == [0, TICKS_PER_QUARTER]
    assert track.duration.tolist() == [TICKS_PER_QUARTER, 2 * TICKS_PER_QUARTER]


def test_quantize_snaps_onsets_and_durations_to_the_grid():
    grid = parse_quantize("1/16")
    assert grid == TICKS_PER_QUARTER // 4
    track = decode.decode_row(np.full(4, 440.0) * [1, 2, 4, 8], np.array([0.01, 0.3, 0.6, 1.1]),
                              np.array([0.0, 0.13, 0.4, 0.3]), grid)
    assert (track.onset % grid == 0).all() and (track.duration % grid == 0).all()
    assert track.onset.tolist() == [0, 120, 240, 360]
    assert track.duration.tolist() == [120, 120, 240, 480]


@pytest.mark.parametrize("grid", ["1/7", "sixteenth", "0", "-1/8", "1/0"])
def test_quantize_rejects_grids_that_are_not_whole_ticks(grid):
    with pytest.raises(DmcError, match="--quantize"):
        parse_quantize(grid)


# -- sampling -------------------------------------------------------------------------------------------


def test_the_same_seed_writes_byte_identical_midi_files(checkpoint, tmp_path):
    # DDIM with eta > 0 and DDPM both draw noise at every step, not only at the start.
    for sampler, eta, n in (("ddim", 0.5, 3), ("ddpm", 0.0, 1)):
        runs = [tmp_path / f"{sampler}-{i}" for i in range(3)]
        for out, seed in zip(runs, (7, 7, 8), strict=True):
            opts = quiet(n=n, batch_size=2, seed=seed, sampler=sampler, steps=3, eta=eta)
            generate_files(out, opts, checkpoint)
        names = sorted(p.name for p in runs[0].iterdir())
        assert len(names) == n
        for name in names:
            assert (runs[0] / name).read_bytes() == (runs[1] / name).read_bytes(), sampler
        assert (runs[0] / names[0]).read_bytes() != (runs[2] / names[0]).read_bytes(), sampler


def test_a_sampler_left_unchosen_is_the_layouts_own():
    """DDPM's 1000 steps for a note-layout model (its best OA), DDIM for a grid model's many windows; a
    chosen sampler stays chosen, and the sample stage takes params' own."""
    assert GenerateOptions().sampler_for(grid=False) == "ddpm"
    assert GenerateOptions().sampler_for(grid=True) == "ddim"
    assert GenerateOptions(sampler="unipc").sampler_for(grid=False) == "unipc"
    params = {"seed": 0, "sample": {"n": 2, "sampler": "ddim", "steps": 5, "eta": 0.0, "length": 16,
                                    "tempo": 120.0, "quantize": "", "guard": "step_clip", "chord_snap": 0.0,
                                    "audio": "", "plot": False}}
    assert GenerateOptions.from_params(params).sampler_for(grid=False) == "ddim"


def test_ddpm_visits_every_timestep_and_ddim_only_the_asked_steps(checkpoint):
    from pipeline.model.unet import load_trained

    model, stats, kwargs = load_trained(checkpoint, "cpu")
    calls = []

    def counting(x, t):
        calls.append(int(t[0]))
        return model(x, t)

    diffusion, encoding = GaussianDiffusion(**kwargs), Encoding.from_stats(stats)
    cases = ((Sampler("ddpm"), TIMESTEPS), (Sampler("ddim", 4), 4), (Sampler("ddim", 99), TIMESTEPS))
    for sampler, expected in cases:
        calls.clear()
        (pieces,) = rows.generate_rows(counting, diffusion, sampler, encoding, 2, 1, SEQ_LEN, SEQ_LEN,
                                       progress=False)
        assert [len(row) for (row,) in pieces] == [SEQ_LEN, SEQ_LEN]
        assert len(calls) == expected and calls[0] == TIMESTEPS - 1 and calls == sorted(calls, reverse=True)


def one_row(model, diffusion, encoding, n, length, seed=0, batch_size=8):
    """`n` one-row pieces of `length` notes, as lists of batches."""
    return list(rows.generate_rows(model, diffusion, Sampler("ddim", 3), encoding, n, 1, SEQ_LEN, length,
                                   batch_size=batch_size, seed=seed, progress=False))


def test_long_pieces_have_the_asked_length_and_continue_the_first_window(checkpoint):
    from pipeline.model.unet import load_trained

    model, stats, kwargs = load_trained(checkpoint, "cpu")
    diffusion, encoding = GaussianDiffusion(**kwargs), Encoding.from_stats(stats)
    length = 2 * SEQ_LEN + 5
    ((long,),), = one_row(model, diffusion, encoding, 1, length, seed=3)
    ((short,),), = one_row(model, diffusion, encoding, 1, SEQ_LEN, seed=3)
    assert len(long) == length
    for got, want in zip((long.pitch, long.onset, long.duration), (short.pitch, short.onset, short.duration),
                         strict=True):
        np.testing.assert_array_equal(got[:SEQ_LEN], want)


def test_pieces_come_a_batch_at_a_time_and_the_same_seed_gives_the_same_notes(checkpoint):
    from pipeline.model.unet import load_trained

    model, stats, kwargs = load_trained(checkpoint, "cpu")
    diffusion, encoding = GaussianDiffusion(**kwargs), Encoding.from_stats(stats)
    batches = one_row(model, diffusion, encoding, 5, SEQ_LEN, batch_size=2)
    assert [len(b) for b in batches] == [2, 2, 1]
    again = one_row(model, diffusion, encoding, 5, SEQ_LEN, batch_size=2)
    for (row,), (same,) in zip(sum(batches, []), sum(again, []), strict=True):
        np.testing.assert_array_equal(row.onset, same.onset)
        np.testing.assert_array_equal(row.pitch, same.pitch)


def test_long_piece_files_hold_more_notes_than_one_window(checkpoint, tmp_path):
    generate_files(tmp_path, quiet(n=1, length=3 * SEQ_LEN, steps=3), checkpoint)
    # A few decoded notes may merge (same pitch and tick), so count loosely above one window.
    assert len(read_notes(tmp_path / "sample_000.mid")) > SEQ_LEN


def test_continuation_begins_with_the_prompts_notes(checkpoint, tmp_path):
    k = 12
    summary = generate_files(tmp_path, quiet(n=2, steps=4, prompt=PIANO_MIDI, prompt_notes=k,
                                                      length=2 * SEQ_LEN), checkpoint)
    assert summary["files"] == ["sample_000.mid", "sample_001.mid"]
    notes = midi.extract_notes(PIANO_MIDI)
    start = notes.onset[0]
    prompt = {(int(p), round((o - start) * TICKS_PER_QUARTER), round(d * TICKS_PER_QUARTER))
              for p, o, d in zip(notes.pitch[:k], notes.onset[:k], notes.duration[:k], strict=True)}
    last = max(o for _, o, _ in prompt)
    for name in summary["files"]:
        out = read_notes(tmp_path / name)
        head = [n for n in out if n[1] <= last]
        # Every prompt note is there (within one tick), and nothing else comes before the prompt's last onset.
        for p, o, d in prompt:
            assert any(q == p and abs(s - o) <= 1 and abs(e - d) <= 1 for q, s, e in head), (p, o, d)
        assert sorted(n for n in head if n[1] < last) == sorted(n for n in prompt if n[1] < last)
        assert len(out) > len(prompt)


def test_prompt_with_no_usable_track_is_refused(tmp_path):
    with pytest.raises(DmcError, match="--prompt"):
        read_rows(MUSIC21 / "omr" / "k525short.mid", ["piano"])


# -- audio and plots ------------------------------------------------------------------------------------


@pytest.mark.skipif(shutil.which("fluidsynth") is None, reason="fluidsynth is not installed")
def test_audio_is_rendered_as_wav_and_ogg(tmp_path):
    src = MUSIC21 / "midi" / "testPrimitive" / "test10.mid"
    wav = audio.render_audio_file(src, tmp_path / "a.wav", "wav")
    ogg = audio.render_audio_file(src, tmp_path / "a.ogg", "ogg")
    assert wav.read_bytes()[:4] == b"RIFF" and wav.stat().st_size > 10_000
    assert ogg.read_bytes()[:4] == b"OggS"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.ogg", "a.wav"]  # no temp files left


@pytest.mark.skipif(shutil.which("fluidsynth") is None, reason="fluidsynth is not installed")
def test_generated_pieces_come_with_audio_and_piano_rolls(checkpoint, tmp_path):
    summary = generate_files(tmp_path, quiet(n=2, steps=2, audio="wav", plot=True), checkpoint)
    assert sorted(summary["files"]) == sorted(p.name for p in tmp_path.iterdir())
    for i in range(2):
        assert (tmp_path / f"sample_00{i}.wav").read_bytes()[:4] == b"RIFF"
        assert (tmp_path / f"sample_00{i}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_missing_fluidsynth_gives_a_one_line_notice_and_still_writes_midi(checkpoint, tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    lines = []
    summary = generate_files(tmp_path / "out", quiet(n=1, steps=2, audio="ogg"), checkpoint,
                                      log=lines.append)
    assert summary["files"] == ["sample_000.mid"]
    assert len(lines) == 1 and "apt-get install fluidsynth fluid-soundfont-gm" in lines[0]


@pytest.mark.skipif(shutil.which("fluidsynth") is None, reason="fluidsynth is not installed")
def test_mp3_without_an_encoder_falls_back_to_wav_with_a_notice(monkeypatch, tmp_path):
    monkeypatch.setattr(audio, "_mp3_encoder", lambda: None)
    assert "wrote wav instead" in audio.missing_tools("mp3")
    assert audio.missing_tools("wav") is None
    src = MUSIC21 / "midi" / "testPrimitive" / "test10.mid"
    out = audio.render_audio_file(src, tmp_path / "a.mp3", "mp3")
    assert out.name == "a.wav" and out.read_bytes()[:4] == b"RIFF"


def test_piano_roll_of_several_tracks_and_of_an_empty_piece(tmp_path):
    from pipeline.render.plots import write_piano_roll

    tracks = [midi.TrackNotes(np.array([60, 64]), np.array([0.0, 1.0]), np.array([1.0, 0.5]), name="a"),
              midi.TrackNotes(np.array([40]), np.array([0.5]), np.array([2.0]), program=32, name="b")]
    for name, content in (("two.png", tracks), ("none.png", [])):
        path = write_piano_roll(tmp_path / name, content)
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_lattice_coded_self_conditioned_model_writes_notes_on_the_lattice(tmp_path):
    """A model in the helix / grid / chord code (7 channels, self-conditioned: 14 in) composes; every note
    is on the 1/4-beat grid, inside the train range, and a prompt's notes come back exactly."""
    notes = midi.extract_notes(PIANO_MIDI)
    on_grid = (np.abs(notes.duration * 4 - np.rint(notes.duration * 4)) < 1e-9) & \
        (np.abs(notes.onset * 4 - np.rint(notes.onset * 4)) < 1e-9)
    assert on_grid[:12].all()
    stats = lattice_stats(notes)
    checkpoint = write_checkpoint(tmp_path / "model.pt", stats, self_condition=True)
    summary = generate_files(tmp_path / "out", quiet(n=2, steps=4, length=2 * SEQ_LEN,
                                                              prompt=PIANO_MIDI, prompt_notes=12), checkpoint)
    low, high = (int(midi.pitch_of(stats["normalization"]["frequency"][k])) for k in ("min", "max"))
    grid = TICKS_PER_QUARTER // 4
    start = notes.onset[0]
    for name in summary["files"]:
        out = read_notes(tmp_path / "out" / name)
        assert all(o % grid == 0 and d % grid == 0 and low <= p <= high for p, o, d in out)
        for p, o, d in zip(notes.pitch[:12], notes.onset[:12], notes.duration[:12], strict=True):
            assert (int(p), round((o - start) * TICKS_PER_QUARTER), round(d * TICKS_PER_QUARTER)) in out


def test_a_softmax_headed_model_composes_on_the_lattice(tmp_path):
    """prediction softmax: the U-Net gives one logit per code of each group (pitches of the range, grid
    multiples, the chord flag), the sampler its expected code; every note lands on the lattice."""
    notes = midi.extract_notes(PIANO_MIDI)
    stats = lattice_stats(notes)
    encoding = Encoding.from_stats(stats)
    checkpoint = write_checkpoint(tmp_path / "model.pt", stats, prediction="softmax")
    logits = sum(len(table) for _, table in encoding.code_groups())
    loaded = load_sampler(checkpoint, quiet())
    assert loaded.model.config.out_features == logits > encoding.channels
    summary = generate_files(tmp_path / "out", quiet(n=2, steps=4), checkpoint)
    low, high = encoding.pitch_range
    grid = TICKS_PER_QUARTER // 4
    for name in summary["files"]:
        out = read_notes(tmp_path / "out" / name)
        assert len(out) > SEQ_LEN // 2
        assert all(o % grid == 0 and d % grid == 0 and d > 0 and low <= p <= high for p, o, d in out)
