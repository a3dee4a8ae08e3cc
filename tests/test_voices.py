"""The grid layout (pipeline/data/voices.py), its prepare (pipeline/model/voice_training.py) and
harmonizing with it (pipeline/compose/harmonize.py): on the chorales of `satb_project` (conftest.py)
and a randomly initialised grid U-Net of a short window and a 20-step schedule, so every test takes
seconds."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import SATB

from pipeline.cli import main
from pipeline.compose import harmonize as harmonize_module
from pipeline.compose import repair
from pipeline.compose.grid_model import load_grid_model
from pipeline.compose.harmonize import compose, covering_length, harmonize
from pipeline.compose.sampler import Sampler
from pipeline.data import voices
from pipeline.data.encoding import Encoding, helix
from pipeline.data.midi import TrackNotes, write_midi
from pipeline.data.rows import RowNotes, read_rows
from pipeline.errors import DmcError
from pipeline.evaluate.voice_leading import voice_leading
from pipeline.model.checkpoints import read_checkpoint, write_checkpoint
from pipeline.model.unet import UNet
from pipeline.model.voice_training import grid_config, load_grid_data, train_grid, write_grid_prepared

WIDTH = 32  # grid steps per window of the test model: 8 beats, so a chorale takes several windows


def chorales(satb_project: Path) -> list[Path]:
    return sorted((satb_project / "data" / "raw" / "bach-satb").glob("*.mid"))


@pytest.fixture(scope="module")
def grid_project(satb_project: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The chorales prepared in the grid layout and a random tiny grid model: ROOT/prepared, ROOT/model.pt."""
    root = tmp_path_factory.mktemp("grid")
    raw = satb_project / "data" / "raw" / "bach-satb"
    files = sorted(p.name for p in raw.glob("*.mid"))
    summary = write_grid_prepared(root / "prepared", "bach-satb", raw, files, SATB, WIDTH, 16,
                                  (0.5, 0.2, 0.3))
    assert summary["segments"]["train"] > 0 and summary["grid"] == 0.25, summary
    torch.manual_seed(0)
    config = grid_config("tiny")
    stats = json.loads((root / "prepared" / "stats.json").read_text())
    diffusion = {"timesteps": 20, "beta_start": 1e-4, "beta_end": 0.02}
    write_checkpoint(root / "model.pt", {"config": dataclasses.asdict(config), "step": 0, "stats": stats,
                                         "ema": UNet(config).state_dict(), "diffusion": diffusion})
    return root


@pytest.fixture(scope="module")
def grid_model(grid_project):
    return load_grid_model(grid_project / "model.pt", Sampler("ddim", 5))


def sorted_row(row: RowNotes) -> RowNotes:
    return row.where(np.lexsort((row.pitch, row.onset)))


def same_notes(a: RowNotes, b: RowNotes) -> bool:
    return (np.array_equal(a.pitch, b.pitch) and np.allclose(a.onset, b.onset)
            and np.allclose(a.duration, b.duration))


# -- the code -----------------------------------------------------------------------------------------------


def test_every_pitch_of_the_range_decodes_from_its_helix_code_and_fifths_are_neighbours():
    pitches = np.arange(36, 82)
    assert np.array_equal(voices.nearest_pitch(helix(pitches, 36, 81), 36, 81, (36, 81)), pitches)
    code = helix(np.array([60, 67, 61]), 36, 81)
    chroma = code[1:]
    assert np.linalg.norm(chroma[:, 0] - chroma[:, 1]) < np.linalg.norm(chroma[:, 0] - chroma[:, 2])
    assert code[0].min() >= -1 and code[0].max() <= 1


def test_a_grid_cell_carries_the_note_layouts_helix_code_of_its_pitch():
    # One pitch code for both layouts: the note layout's helix channels of a note (height, cos, sin) are
    # the first three numbers of a grid cell sounding that pitch, over the same range.
    low, high = 36, 81
    hz = [440.0 * 2 ** ((m - 69) / 12) for m in (low, high)]
    encoding = Encoding(lo=(hz[0], 0.25, 0.0), hi=(hz[1], 4.0, 4.0), pitch="helix", time="grid",
                        scale="symmetric", grid=0.25)
    pitches = np.arange(low, high + 1)
    raw = np.stack([440.0 * 2 ** ((pitches - 69) / 12), np.ones(len(pitches)), np.ones(len(pitches))])
    notes = encoding.code(raw, axis=0)[:3]
    grid = voices.VoiceGrid(pitches[None], np.full((1, len(pitches)), voices.ONSET, dtype=np.int8))
    cells = voices.encode(grid, voices.PitchRange(low, high, ((low, high),)))[:3, 0]
    np.testing.assert_allclose(cells, notes, atol=1e-6)


def test_decoding_keeps_each_row_inside_its_own_range():
    pitches = voices.PitchRange(36, 81, ((60, 72), (36, 50)))
    grid = voices.VoiceGrid(np.array([[55, 55], [52, 52]]), np.array([[voices.ONSET, voices.HELD]] * 2))
    x = voices.encode(grid, pitches)
    back = voices.decode(x, pitches)
    # G3 is below the top row's range: the nearest valid pitch by the helix is its octave, G4.
    # G3 lies below the top row's range and E3 above the bottom row's: each comes back as the octave of
    # the same pitch class inside the range (G4, E2), the nearest code there.
    assert back.pitch.tolist() == [[67, 67], [40, 40]] and back.state.tolist() == grid.state.tolist()


def test_grid_round_trip_notes_grid_values_notes_is_exact_on_real_chorales(satb_project):
    files = chorales(satb_project)
    rows = [read_rows(f, SATB) for f in files]
    pitches = voices.pitch_range(rows, len(SATB))
    checked = 0
    for file_rows in rows:
        grid = voices.rows_to_grid(file_rows, 0.25)
        assert grid.state.shape == (4, grid.shape[1]) and (grid.state == voices.ONSET).sum() == sum(
            len(r) for r in file_rows)
        back = voices.grid_to_rows(voices.decode(voices.encode(grid, pitches), pitches), 0.25)
        for original, decoded in zip(file_rows, back, strict=True):
            assert same_notes(sorted_row(original), decoded)
            checked += len(decoded)
    assert checked > 1000


def test_a_sure_softmax_head_over_the_cell_codes_gives_back_real_chorales_exactly(satb_project):
    from pipeline.model.diffusion import GaussianDiffusion

    rows = [read_rows(f, SATB) for f in chorales(satb_project)[:3]]
    pitches = voices.pitch_range(rows, len(SATB))
    groups = voices.code_groups(pitches)
    diffusion = GaussianDiffusion(prediction="softmax", codes=groups)
    assert diffusion.output_channels(voices.CHANNELS) == (pitches.high - pitches.low + 2) + 2 + 2
    for file_rows in rows:
        grid = voices.rows_to_grid(file_rows, 0.25)
        x0 = torch.from_numpy(voices.encode(grid, pitches))[None]
        # Logits sure of the code each cell holds: one-hot times a large number, group by group.
        logits, channel = [], 0
        for width, table in groups:
            table = torch.as_tensor(table, dtype=torch.float32)
            distance = (x0[:, None, channel:channel + width] - table[None, :, :, None, None]) ** 2
            index = distance.sum(2).argmin(1)
            logits.append(torch.nn.functional.one_hot(index, len(table)).permute(0, 3, 1, 2).float() * 50)
            channel += width
        sure = torch.cat(logits, 1)
        estimate = diffusion.expected_code(sure)
        assert torch.allclose(estimate, x0, atol=1e-5)
        assert torch.allclose(diffusion.loss(lambda x, t, sure=sure: sure, x0), torch.zeros(()), atol=1e-4)
        back = voices.decode(estimate[0].numpy(), pitches)
        assert np.array_equal(back.pitch, grid.pitch) and np.array_equal(back.state, grid.state)


def test_repeated_notes_and_rests_survive_the_round_trip():
    row = RowNotes.of([60, 60, 62, 62], [0.0, 1.0, 2.5, 3.0], [1.0, 1.0, 0.5, 0.25])
    grid = voices.rows_to_grid([row, None], 0.25)
    assert grid.state[0, :4].tolist() == [voices.ONSET, voices.HELD, voices.HELD, voices.HELD]
    assert grid.state[0, 4] == voices.ONSET and grid.state[0, 8] == voices.REST
    assert (grid.state[1] == voices.REST).all()
    back = voices.grid_to_rows(grid, 0.25)
    assert same_notes(back[0], row) and len(back[1]) == 0


def test_off_grid_and_overlapping_notes_are_refused_exactly_and_snapped_on_request():
    off = RowNotes.of([60, 62], [0.0, 1.1], [1.0, 1.0])
    with pytest.raises(DmcError, match="off the grid"):
        voices.rows_to_grid([off], 0.25)
    overlap = RowNotes.of([60, 64], [0.0, 0.5], [1.0, 1.0])
    with pytest.raises(DmcError, match="overlap"):
        voices.rows_to_grid([overlap], 0.25)
    snapped = voices.grid_to_rows(voices.rows_to_grid([overlap], 0.25, snap=True), 0.25)[0]
    assert snapped.pitch.tolist() == [60, 64] and snapped.duration.tolist() == [0.5, 1.0]


def test_prepare_writes_windows_of_every_split_with_room_to_transpose(grid_project):
    data = load_grid_data(grid_project / "prepared")
    assert data.train.pitch.shape[1:] == (4, WIDTH) and data.stats["layout"] == "grid"
    rng = np.random.default_rng(0)
    x = data.train.batch(np.arange(len(data.train)), data.pitches, 6, rng)
    assert x.shape == (len(data.train), voices.CHANNELS, 4, WIDTH) and np.abs(x).max() <= 1.0 + 1e-6
    # Transposed windows still decode inside every voice's range.
    for window in x[:20]:
        grid = voices.decode(window, data.pitches)
        for h, (lo, hi) in enumerate(data.pitches.rows):
            sounding = grid.pitch[h][grid.state[h] != voices.REST]
            assert ((sounding >= lo) & (sounding <= hi)).all()


def test_a_resumed_grid_training_ends_with_the_weights_of_a_straight_run(grid_project, tmp_path):
    from pipeline.model.training import TrainSettings

    data = load_grid_data(grid_project / "prepared")
    settings = TrainSettings(preset="tiny", steps=4, batch_size=4, lr=1e-3, lr_final=1e-4, timesteps=20,
                             transpose=3, checkpoint_every=2, causal=False)
    straight = train_grid(settings, data, tmp_path / "straight" / "model.pt", log=lambda _: None)
    assert straight is not None and straight["steps"] == 4
    stopped = train_grid(settings, data, tmp_path / "resumed" / "model.pt", log=lambda _: None, stop_at=3)
    assert stopped is None
    assert not (tmp_path / "resumed" / "model.pt").exists()
    notes: list[str] = []
    resumed = train_grid(settings, data, tmp_path / "resumed" / "model.pt", log=notes.append,
                         metrics_dir=tmp_path / "metrics")
    assert any("resuming" in n and "step 3" in n for n in notes) and resumed["steps"] == 4
    # The loss curves dvc.yaml declares, the steps before the resume included.
    curve = (tmp_path / "metrics" / "train_loss.csv").read_text().splitlines()
    assert curve[0] == "step,loss" and [r.split(",")[0] for r in curve[1:]] == ["1", "2", "3", "4"]
    val = (tmp_path / "metrics" / "val_loss.csv").read_text().splitlines()
    assert val[0] == "step,val_loss" and val[1].split(",")[0] == "4"
    a, b = (read_checkpoint(tmp_path / d / "model.pt", "") for d in ("straight", "resumed"))
    assert all(torch.equal(a["ema"][k], b["ema"][k]) for k in a["ema"])
    # Other settings: the checkpoint is set aside, not loaded into a model it does not fit.
    notes.clear()
    train_grid(dataclasses.replace(settings, lr=2e-3), data, tmp_path / "resumed" / "model.pt",
               log=notes.append)
    assert any("starting fresh" in n for n in notes)
    # The same settings with other weights in it: refused in one line, as the note layout's trainer does.
    path = tmp_path / "resumed" / "checkpoints" / "last.pt"
    ckpt = read_checkpoint(path, "")
    ckpt["model"] = UNet(grid_config("small")).state_dict()
    write_checkpoint(path, ckpt)
    with pytest.raises(DmcError, match="does not fit this config") as err:
        train_grid(dataclasses.replace(settings, lr=2e-3), data, tmp_path / "resumed" / "model.pt",
                   log=lambda _: None)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("inpainting", [False, True])
def test_a_self_conditioned_softmax_grid_model_trains_and_harmonizes_the_melody_exactly(
        grid_project, satb_project, tmp_path, inpainting):
    from pipeline.model.training import TrainSettings

    data = load_grid_data(grid_project / "prepared")
    settings = TrainSettings(preset="tiny", steps=3, batch_size=4, lr=1e-3, lr_final=1e-4, timesteps=20,
                             prediction="softmax", self_condition=True, inpainting=inpainting, causal=False)
    metrics = train_grid(settings, data, tmp_path / "model.pt", log=lambda _: None)
    assert metrics is not None and np.isfinite(metrics["loss"])
    # A cross-entropy over every cell's 47 pitch codes (46 pitches and a rest) and two flags, ±1 each.
    assert metrics["loss"] > np.log(47)
    model = load_grid_model(tmp_path / "model.pt", Sampler("ddim", 5))
    assert model.model.config.out_features == data.pitches.high - data.pitches.low + 2 + 4
    # x_t, the x_0 estimate, and for inpainting the given cells and their mask
    assert model.model.config.cond_features == voices.CHANNELS + inpainting * (voices.CHANNELS + 1)
    assert model.diffusion.inpainting == inpainting
    soprano = read_rows(chorales(satb_project)[1], SATB)[0]
    for resample in (1, 2):  # RePaint's loop feeds the x_0 estimate back too
        piece = harmonize([{0: soprano}], model, seed=0, resample=resample)[0]
        assert piece[0] is soprano and all(len(row) for row in piece[1:])


def test_inpainting_windows_are_given_a_melody_other_voices_a_seam_or_nothing():
    from pipeline.model.voice_training import draw_given

    given = draw_given(4000, 4, 64, np.random.default_rng(0))[:, 0]
    assert given.shape == (4000, 4, 64) and given.dtype == bool
    whole_rows = given.all(2)
    melody = whole_rows[:, 0] & ~whole_rows[:, 1:].any(1)
    assert 0.35 < melody.mean() < 0.5
    assert not whole_rows.all(1).any()  # never every voice
    nothing = ~given.any((1, 2))
    assert 0.2 < nothing.mean() < 0.3  # composing from scratch: 35% of the windows less those given a seam
    seam = given[:, :, 0].all(1)  # a window that re-reads the one before: every voice's first steps
    assert 0.25 < (seam & ~whole_rows.any(1)).mean() / (1 - whole_rows.any(1).mean()) < 0.35


# -- harmonizing -----------------------------------------------------------------------------------------


def test_a_kept_soprano_comes_back_exactly_and_the_voices_line_up_over_several_windows(satb_project,
                                                                                         grid_model):
    soprano = read_rows(chorales(satb_project)[0], SATB)[0]
    assert soprano.onset[-1] / 0.25 > 2 * WIDTH  # several windows
    piece = harmonize([{0: soprano}], grid_model, seed=1)[0]
    assert piece[0] is soprano
    end = float((soprano.onset + soprano.duration).max())
    for h, row in enumerate(piece[1:], 1):
        lo, hi = grid_model.pitches.rows[h]
        assert len(row) and row.pitch.min() >= lo and row.pitch.max() <= hi
        assert (row.onset + row.duration).max() <= end + 1e-9  # nothing after the melody ends
        steps = row.onset / 0.25
        assert np.allclose(steps, np.rint(steps))  # on the shared grid


def test_a_melody_in_another_key_is_harmonized_there_and_comes_back_exact(grid_model):
    # A scale two octaves above the soprano's range: moved down to fit, the harmony moved back up.
    scale = RowNotes.of([96, 98, 100, 101, 103, 105, 107, 108], np.arange(8.0), np.ones(8))
    piece = harmonize([{0: scale}], grid_model)[0]
    assert piece[0] is scale
    assert min(int(r.pitch.min()) for r in piece[1:]) > 60  # moved with the melody


@pytest.mark.parametrize("melody, message", [
    (RowNotes.of([], [], []), "no notes"),
    (RowNotes.of([40, 90], [0.0, 1.0], [1.0, 1.0]), "spans 50 semitones"),
])
def test_a_melody_that_does_not_fit_is_a_one_line_error(melody, message, grid_model):
    with pytest.raises(DmcError, match=message):
        harmonize([{0: melody}], grid_model)


def test_pieces_from_scratch_fill_every_voice_on_the_grid(grid_model):
    pieces = compose(2, WIDTH + 8, grid_model, seed=3)
    assert len(pieces) == 2 and all(len(p) == 4 for p in pieces)
    assert all(float((r.onset + r.duration).max()) <= (WIDTH + 8) * 0.25 + 1e-9 for p in pieces for r in p
               if len(r))


def test_a_piece_from_scratch_is_written_past_its_end_and_cut_there(grid_model, monkeypatch):
    # Rests given past the end would tell the model the music stops there; the last window is free.
    seen = []
    real_fill = harmonize_module.fill

    def spy(jobs, *args, **kwargs):
        seen.extend(jobs)
        return real_fill(jobs, *args, **kwargs)

    monkeypatch.setattr(harmonize_module, "fill", spy)
    steps = WIDTH + 8
    pieces = compose(1, steps, grid_model, seed=3, hop=WIDTH // 2)
    assert seen[0].grid.shape[1] == covering_length(steps, WIDTH, WIDTH // 2) == WIDTH + WIDTH // 2
    assert not seen[0].fixed.any()
    assert max(float((r.onset + r.duration).max()) for r in pieces[0] if len(r)) <= steps * 0.25 + 1e-9


def test_the_covering_length_is_whole_windows():
    assert [covering_length(s, 64, 48) for s in (10, 64, 65, 112, 113, 128)] == [64, 64, 112, 112, 160, 160]


def write_melody(path: Path, pitch, onset, duration, name="Flute") -> Path:
    write_midi(path, [TrackNotes(pitch=np.asarray(pitch), onset=np.asarray(onset, float),
                                 duration=np.asarray(duration, float), program=73, name=name)])
    return path


def test_the_cli_harmonizes_a_one_track_tune_and_writes_midi_and_a_piano_roll(grid_project, tmp_path, capsys):
    tune = write_melody(tmp_path / "tune.mid", [67, 69, 71, 72, 74, 72, 71, 69, 67],
                        [0, 1, 2, 3, 4, 5, 6, 7, 8], [1, 1, 1, 1, 1, 1, 1, 1, 2])
    out = tmp_path / "out"
    code = main(["harmonize", str(tune), str(out), "--model", str(grid_project / "model.pt"), "--steps", "4",
                 "--audio", ""])
    assert code == 0, capsys.readouterr().err
    assert sorted(p.name for p in out.iterdir()) == ["tune_000.mid", "tune_000.png"]
    rows = read_rows(out / "tune_000.mid", SATB)
    assert rows[0].pitch.tolist() == [67, 69, 71, 72, 74, 72, 71, 69, 67]
    assert all(r is not None and len(r) for r in rows)
    assert "consonant intervals" in capsys.readouterr().out


def test_generate_keeps_a_soprano_with_a_grid_model(grid_project, satb_project, tmp_path):
    chorale = chorales(satb_project)[1]
    code = main(["generate", str(tmp_path / "g"), "--model", str(grid_project / "model.pt"), "--prompt",
                 str(chorale), "--keep", "soprano", "--n", "2", "--steps", "3", "--quiet"])
    assert code == 0
    want = read_rows(chorale, SATB)[0]
    for name in ("sample_000.mid", "sample_001.mid"):
        got = read_rows(tmp_path / "g" / name, SATB)[0]
        assert same_notes(got, want)


@pytest.mark.parametrize("pitch, message", [([], "has no notes"), ([30, 95], "spans 65 semitones")])
def test_cli_refuses_a_melody_that_does_not_fit_in_one_line(pitch, message, grid_project, tmp_path, capsys):
    path = write_melody(tmp_path / "m.mid", pitch, range(len(pitch)), [1] * len(pitch))
    out = tmp_path / "out"
    code = main(["harmonize", str(path), str(out), "--model", str(grid_project / "model.pt"), "--audio", ""])
    err = capsys.readouterr().err
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1
    assert not out.exists()


def test_evaluate_harmony_measures_a_grid_model_on_the_test_split(grid_project, satb_project, tmp_path,
                                                                   capsys):
    out = tmp_path / "harmony.json"
    code = main(["evaluate-harmony", "--model", str(grid_project / "model.pt"), "--prepared",
                 str(grid_project / "prepared"), "--manifest", str(satb_project / "data" / "manifest.json"),
                 "--steps", "3", "--out", str(out), "--samples", str(tmp_path / "s"), "--device", "cpu"])
    assert code == 0, capsys.readouterr().err
    metrics = json.loads(out.read_text())
    tests = [n for n, s in json.loads((grid_project / "prepared" / "grid_files.json").read_text()).items()
             if s == "test"]
    assert metrics["files"] == len(tests) >= 2 and metrics["unconditional.pieces"] == 16
    for name in ("model", "markov", "bach", "unconditional"):
        assert 0 <= metrics[f"{name}.consonant_fraction"] <= 1
    assert metrics["bach.consonant_fraction"] > 0.75
    for name in tests:  # the soprano of every harmonization is the test file's, note for note
        got = read_rows(tmp_path / "s" / name, SATB)[0]
        assert same_notes(got, read_rows(satb_project / "data" / "raw" / "bach-satb" / name, SATB)[0])


# -- the shipped four-voice model --------------------------------------------------------------------------


def test_the_shipped_four_voice_model_passes_its_card_checks_and_is_small():
    from pipeline.compose.shipped import WEIGHTS, check_shipped

    folder = WEIGHTS / "bach-satb"
    card = check_shipped(folder)  # format, sha256, weights_only load, probe
    assert card["layout"] == "grid" and card["dataset"] == "bach-satb" and card["weights_dtype"] == "bfloat16"
    assert (folder / "model.pt").stat().st_size <= 2 * 2**20
    ckpt = torch.load(folder / "model.pt", map_location="cpu", weights_only=True)
    assert all(v.dtype == torch.bfloat16 for v in ckpt["ema"].values() if v.is_floating_point())
    assert ckpt["stats"]["instruments"] == list(SATB) and ckpt["stats"]["grid"] == 0.25
    evaluation = card["evaluation"]
    assert evaluation["files"] >= 10 and evaluation["kept"] == ["soprano"]
    assert evaluation["model.consonant_fraction"] > evaluation["markov.consonant_fraction"]
    assert "dvc exp run train" in card["retrain"] and "layout=grid" in card["retrain"]
    assert card["train"]["steps"] == card["steps"] and card["train"]["seconds"] > 0


def test_a_damaged_shipped_model_is_refused_in_one_line(tmp_path):
    import shutil

    from pipeline.compose.shipped import WEIGHTS, check_shipped

    copy = tmp_path / "bach-satb"
    shutil.copytree(WEIGHTS / "bach-satb", copy)
    data = bytearray((copy / "model.pt").read_bytes())
    data[len(data) // 2] ^= 1
    (copy / "model.pt").write_bytes(bytes(data))
    with pytest.raises(DmcError, match="sha256 does not match"):
        check_shipped(copy)


def test_dmc_models_lists_bach_satb_and_harmonize_uses_it_by_default(tmp_path, capsys):
    assert main(["models"]) == 0
    assert "bach-satb" in capsys.readouterr().out
    tune = write_melody(tmp_path / "scale.mid", [60, 62, 64, 65, 67, 65, 64, 62, 60], range(9), [1] * 9)
    code = main(["harmonize", str(tune), str(tmp_path / "out"), "--steps", "2", "--audio", "", "--no-plot"])
    assert code == 0, capsys.readouterr().err
    rows = read_rows(tmp_path / "out" / "scale_000.mid", SATB)
    assert rows[0].pitch.tolist() == [60, 62, 64, 65, 67, 65, 64, 62, 60] and all(len(r) for r in rows)


def test_resampling_keeps_the_melody_exact_and_refuses_a_multistep_sampler(grid_project, satb_project):
    soprano = read_rows(chorales(satb_project)[2], SATB)[0]
    model = load_grid_model(grid_project / "model.pt", Sampler("ddim", 4))
    piece = harmonize([{0: soprano}], model, resample=3)[0]
    assert piece[0] is soprano and all(len(r) for r in piece)
    with pytest.raises(DmcError, match="--resample needs"):
        harmonize([{0: soprano}], load_grid_model(grid_project / "model.pt", Sampler("dpm++", 4)), resample=2)


# -- voice-leading repair ----------------------------------------------------------------------------------


def test_a_fault_is_the_free_voices_two_notes_of_a_parallel_motion():
    # Soprano C5 D5 (quarters), alto E4 F4, bass C3 (half) then D3: octaves C-C to D-D, soprano to bass.
    rows = [RowNotes.of([72, 74], [0, 1], [1, 1]), RowNotes.of([64, 65], [0, 1], [1, 1]), None,
            RowNotes.of([48, 50], [0, 1], [1, 2])]
    grid = voices.rows_to_grid(rows, 0.25)
    assert repair.count(grid) == 1
    fixed = np.zeros(grid.shape, dtype=bool)
    fixed[0] = True  # the soprano is kept: only the bass's two notes are written again
    assert repair.faults(grid, fixed, 7, width=64) == [repair.Fault(7, (3,), 0, 12)]
    fixed[3] = True  # two kept voices: nothing to write
    assert repair.faults(grid, fixed, 7, width=64) == []
    assert repair.faults(grid, np.zeros_like(fixed), 0, width=8) == []  # wider than a window


def test_repair_rewrites_parallel_octaves_without_touching_the_kept_voice(grid_model, satb_project):
    # A chorale's soprano, alto and tenor, and a bass that doubles the soprano two octaves down.
    soprano, alto, tenor, _ = read_rows(chorales(satb_project)[0], SATB)
    bass = RowNotes.of(soprano.pitch - 24, soprano.onset, soprano.duration)
    grid = voices.rows_to_grid([soprano, alto, tenor, bass], grid_model.step)
    fixed = np.zeros(grid.shape, dtype=bool)
    fixed[0] = True
    counts = [repair.count(grid)]
    for seed in range(3):  # one round at a time: no round adds a parallel
        generator = torch.Generator().manual_seed(seed)
        grid = repair.repair([grid], [fixed], grid_model, generator, rounds=1)[0]
        counts.append(repair.count(grid))
    assert counts[0] > 10 and counts == sorted(counts, reverse=True) and counts[-1] < counts[0] / 2, counts
    assert same_notes(voices.grid_to_rows(grid, grid_model.step)[0], soprano)


def test_the_cli_refuses_a_negative_repair(grid_project, tmp_path, capsys):
    tune = write_melody(tmp_path / "tune.mid", [67, 69], [0, 1], [1, 1])
    code = main(["harmonize", str(tune), str(tmp_path / "out"), "--model", str(grid_project / "model.pt"),
                 "--repair", "-1", "--audio", ""])
    err = capsys.readouterr().err
    assert code == 2 and "--repair must be 0 or more" in err and len(err.strip().splitlines()) == 1


# -- the evaluate stage ------------------------------------------------------------------------------------


def test_the_evaluate_stage_of_a_grid_model_reads_its_grid_windows_and_scores_how_the_voices_sound(
        grid_project, in_tmp_repo):
    """With layout: grid the stage needs no note-layout data: samples that are the test windows themselves
    score exactly the test windows' consonance, and every set gets voice-leading and per-voice numbers."""
    import shutil

    import yaml

    from pipeline.compose.write import programs_for, row_tracks
    from pipeline.evaluate.evaluation import evaluate_grid_samples
    from pipeline.model.voice_training import load_grid_split
    from stages.evaluate import main

    shutil.copytree(grid_project / "prepared", in_tmp_repo / "data" / "prepared")
    stats = json.loads((grid_project / "prepared" / "stats.json").read_text())
    test = load_grid_split(grid_project / "prepared", "test")
    windows = [voices.grid_to_rows(voices.VoiceGrid(test.pitch[i].astype(np.int64), test.state[i]), 0.25)
               for i in range(len(test))]
    windows = [w for w in windows if all(len(r) for r in w)]
    (in_tmp_repo / "samples").mkdir()
    for i, tracks in enumerate(row_tracks(windows, range(4), None, programs_for(stats, 4))):
        write_midi(in_tmp_repo / "samples" / f"sample_{i:03d}.mid", tracks)
    params = yaml.safe_load((in_tmp_repo / "params.yaml").read_text())
    params["evaluate"].update(n_baseline=len(test), frame_beats=4.0, hop_beats=2.0)
    (in_tmp_repo / "params.yaml").write_text(yaml.safe_dump(params))
    assert not any((in_tmp_repo / "data" / "prepared").glob("*.parquet"))

    main()
    data = json.loads((in_tmp_repo / "metrics" / "evaluate.json").read_text())
    assert data["generated.n_pieces"] == len(windows) and data["generated.rejected"] == 0
    expected = np.nanmean([voice_leading(w)["consonant_fraction"] for w in windows])
    assert data["generated.consonant_fraction"] == pytest.approx(expected)
    for name in ("test", "generated", "markov", "shuffle", "real"):
        assert 0 <= data[f"{name}.consonant_fraction"] <= 1 and data[f"{name}.parallel_fifths"] >= 0
        assert 0 <= data[f"{name}.oa_mean"] <= 1 and 0 <= data[f"{name}.bass.oa_mean"] <= 1
    # Bach's windows sound together better than voices that never hear each other.
    assert data["real.consonant_fraction"] > data["markov.consonant_fraction"]
    assert data["shuffle.consonant_fraction"] < data["real.consonant_fraction"]
    assert (in_tmp_repo / "plots" / "evaluate.png").is_file()
    with pytest.raises(DmcError, match="run the sample stage first"):
        evaluate_grid_samples(in_tmp_repo / "data" / "prepared", in_tmp_repo / "nothing")
