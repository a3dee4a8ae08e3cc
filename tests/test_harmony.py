"""Harmonization's measures (pipeline/evaluate/voice_leading.py) on hand-made voices and real chorales, and
`dmc evaluate-harmony` end to end on the four-voice test project (`satb_project` in conftest.py)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import SATB
from test_sampling import write_checkpoint

from pipeline.cli import main
from pipeline.data.instruments import extract_rows, groups_of
from pipeline.data.rows import RowNotes
from pipeline.evaluate.voice_leading import SILENT, consonant_fraction, parallels, slices, voice_leading


def voice(pitches, onsets=None, durations=None) -> RowNotes:
    onsets = np.arange(len(pitches), dtype=float) if onsets is None else onsets
    durations = np.ones(len(pitches)) if durations is None else durations
    return RowNotes.of(pitches, onsets, durations)


def project(root) -> list[str]:
    """evaluate-harmony's options for the test project's model and data."""
    return ["--model", str(root / "models" / "model.pt"), "--prepared", str(root / "data" / "prepared"),
            "--manifest", str(root / "data" / "manifest.json"), "--device", "cpu"]


def test_slices_hold_what_each_voice_sounds_at_every_onset():
    top = voice([72, 74], [0.0, 2.0], [2.0, 1.0])
    low = voice([60, 62, 64], [0.0, 1.0, 2.5], [0.5, 1.0, 0.5])
    # onsets 0, 1, 2, 2.5: the low voice rests at 2 (its note of beat 1 ended), the top one holds on.
    assert slices([top, low]).tolist() == [[72, 60], [72, 62], [74, SILENT], [74, 64]]


def test_parallel_fifths_and_octaves_count_similar_motion_between_perfect_intervals():
    assert parallels([voice([67, 69]), voice([60, 62])]) == (1, 0)  # C-G to D-A
    assert parallels([voice([79, 81]), voice([60, 62])]) == (1, 0)  # a compound fifth too
    assert parallels([voice([72, 74]), voice([60, 62])]) == (0, 1)  # octaves
    assert parallels([voice([67, 62]), voice([60, 67])]) == (0, 0)  # contrary motion: fifth to fourth
    assert parallels([voice([67, 67]), voice([60, 60])]) == (0, 0)  # no motion
    assert parallels([voice([67, 74]), voice([60, 67])]) == (1, 0)  # both leap in fifths
    assert parallels([voice([69, 74]), voice([62, 62])]) == (0, 0)  # oblique: a fifth to an octave


def test_consonance_counts_thirds_sixths_and_perfect_intervals_and_a_fourth_only_among_upper_voices():
    assert consonant_fraction([voice([67]), voice([64]), voice([60])]) == 1.0  # C major triad
    assert consonant_fraction([voice([65]), voice([60])]) == 0.0  # a fourth above the bass
    # F2 bass, C4, F4: the C-F fourth lies between upper voices; F-C and F-F against the bass are perfect.
    assert consonant_fraction([voice([65]), voice([60]), voice([41])]) == 1.0
    assert consonant_fraction([voice([62]), voice([60])]) == 0.0  # a second
    assert np.isnan(consonant_fraction([voice([60])]))


def test_real_chorales_are_consonant_with_few_parallels_and_scrambled_voices_are_not(satb_project):
    files = sorted((satb_project / "data" / "raw" / "bach-satb").glob("*.mid"))
    rng = np.random.default_rng(0)
    real, scrambled = [], []
    for path in files:
        rows = [RowNotes.of(r.pitch, r.onset, r.duration) for r in extract_rows(path, groups_of(SATB))]
        real.append(voice_leading(rows))
        scrambled.append(voice_leading([RowNotes.of(rng.permutation(r.pitch) + rng.integers(-2, 3, len(r)),
                                                    r.onset, r.duration) for r in rows]))
    assert np.mean([r["consonant_fraction"] for r in real]) > 0.75
    assert np.mean([r["parallel_fifths"] + r["parallel_octaves"] for r in real]) < 0.5
    assert np.mean([s["consonant_fraction"] for s in scrambled]) < 0.65
    assert np.mean([s["parallel_fifths"] + s["parallel_octaves"] for s in scrambled]) > 0.5


def test_evaluate_harmony_reports_each_voice_and_the_vertical_measures(satb_project, tmp_path, capsys):
    out, samples = tmp_path / "harmony.json", tmp_path / "harmonized"
    code = main(["evaluate-harmony", *project(satb_project), "--params", str(tmp_path / "none"),
                 "--steps", "2", "--out", str(out), "--samples", str(samples)])
    printed = capsys.readouterr()
    assert code == 0, printed.err
    printed = printed.out
    data = json.loads(out.read_text())
    assert data["kept"] == ["soprano"] and data["files"] >= 2
    for name in ("model", "markov", "bach"):
        assert 0 <= data[f"{name}.consonant_fraction"] <= 1 and data[f"{name}.parallel_fifths"] >= 0
        for v in ("alto", "tenor", "bass"):
            assert 0 <= data[f"{name}.{v}.oa_mean"] <= 1
            assert f"{name}.{v}.framewise.pitch.consistency" in data
        assert f"{name}.soprano.oa_mean" not in data  # the kept voice is not measured: it is Bach's
    assert data["bach.consonant_fraction"] > data["markov.consonant_fraction"]  # Markov ignores the melody
    assert "| alto | model |" in printed and "| bach |" in printed
    # The harmonized files carry the test chorales' sopranos, note for note.
    harmonized = sorted(samples.glob("*.mid"))
    assert len(harmonized) == data["files"] and len(list(samples.glob("*.png"))) == data["files"]
    source = satb_project / "data" / "raw" / "bach-satb" / harmonized[0].name
    kept, original = (extract_rows(p, groups_of(SATB))[0] for p in (harmonized[0], source))
    assert np.array_equal(kept.pitch, original.pitch) and np.allclose(kept.onset, original.onset)


@pytest.mark.parametrize(("args", "message"), [
    (["--keep", "melody"], "'melody' is not one of the model's instrument groups"),
    (["--limit", "1"], "--limit must be at least 2"),
])
def test_evaluate_harmony_refuses_bad_requests_in_one_line(args, message, satb_project, tmp_path, capsys):
    code = main(["evaluate-harmony", *project(satb_project), "--out", str(tmp_path / "h.json"), *args])
    err = capsys.readouterr().err.strip()
    assert code == 2 and message in err and len(err.splitlines()) == 1, err
    assert not (tmp_path / "h.json").exists()


def test_evaluate_harmony_needs_two_test_files_with_the_kept_part(satb_project, tmp_path, capsys,
                                                                  monkeypatch):
    from pipeline.evaluate import harmony

    real = harmony.split_files
    monkeypatch.setattr(harmony, "split_files", lambda d, split: real(d, split)[:1] if split == "test"
                        else real(d, split))
    code = main(["evaluate-harmony", *project(satb_project), "--out", str(tmp_path / "h.json")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "1 test file(s) with the kept parts (soprano); 2 or more are needed" in err
    assert len(err.splitlines()) == 1 and not (tmp_path / "h.json").exists()


def test_evaluate_harmony_needs_a_multi_row_model(satb_project, tmp_path, capsys):
    piano = write_checkpoint(tmp_path / "piano.pt")
    code = main(["evaluate-harmony", *project(satb_project), "--model", str(piano), "--out",
                 str(tmp_path / "h.json")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "the model has one row (piano)" in err and len(err.splitlines()) == 1
