"""The four-voice pipeline end to end (H = 4): the chorales as soprano/alto/tenor/bass tracks -> prepare ->
a few training steps -> 4-track MIDI samples -> per-instrument evaluation. Stages run in-process from a
temp folder with their own params.yaml; tiny settings keep it to seconds."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import symusic
import yaml
from conftest import repo_params

from pipeline.data import datasets
from pipeline.data.prepared import load_mask, load_split, load_stats

SATB = ["soprano", "alto", "tenor", "bass"]
N_CHORALES = 10


def four_voice_params() -> dict:
    params = repo_params()
    params.update(dataset="bach-satb", instruments=SATB, seq_len=32, steps=3, batch_size=4, preset="tiny")
    params["prepare"].update(min_instruments=4, n_jobs=1, split={"train": 0.5, "val": 0.25, "test": 0.25})
    params["train"].update(val_every=3, checkpoint_every=3)
    params["diffusion"]["timesteps"] = 20
    params["sample"].update(n=2, steps=3, length=32, audio="", plot=True)
    params["evaluate"].update(n_baseline=8, frame_beats=4.0, hop_beats=2.0)
    return params


@pytest.fixture(scope="module")
def four_voice_run(tmp_path_factory) -> Path:
    """prepare -> train -> sample -> evaluate with four voices, in a temp working folder."""
    from pipeline.data.datasets import bach_satb
    from stages import evaluate, prepare, sample, train

    params = four_voice_params()
    raw = bach_satb.fetch(tmp_path_factory.mktemp("satb"), params, limit=N_CHORALES)
    work = tmp_path_factory.mktemp("four-voice")
    (work / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    mp = pytest.MonkeyPatch()
    mp.chdir(work)
    try:
        datasets.write_manifest(Path("data/manifest.json"), "bach-satb", raw)
        for stage in (prepare, train, sample, evaluate):
            stage.main()
    finally:
        mp.undo()
    return work


def test_four_voice_prepare_gives_four_masked_rows(four_voice_run):
    prepared = four_voice_run / "data" / "prepared"
    stats = load_stats(prepared)
    assert stats["instruments"] == SATB and stats["min_instruments"] == 4
    x, mask = load_split(prepared, "train"), load_mask(prepared, "train")
    assert x.shape[1:] == (3, 4, 32) and mask.shape == (len(x), 4, 32) and 0 < mask.mean() < 1


def test_four_voice_model_writes_four_track_midi_one_track_per_voice(four_voice_run):
    files = sorted((four_voice_run / "samples").glob("*.mid"))
    assert len(files) == 2
    for path in files:
        score = symusic.Score(str(path))
        assert [t.name for t in score.tracks] == SATB
        assert all(t.program == 0 and not t.is_drum and t.note_num() > 0 for t in score.tracks)
        assert min(t.notes.numpy()["time"].min() for t in score.tracks) == 0  # the rows share one origin
    assert len(list((four_voice_run / "samples").glob("*.png"))) == 2


def test_four_voice_evaluation_reports_the_mix_and_each_voice(four_voice_run):
    data = json.loads((four_voice_run / "metrics" / "evaluate.json").read_text())
    assert data["generated.n_pieces"] == 2 and data["generated.rejected"] == 0
    for name in ("generated", "markov", "shuffle", "real"):
        assert 0 <= data[f"{name}.oa_mean"] <= 1
        for voice in SATB:
            assert 0 <= data[f"{name}.{voice}.oa_mean"] <= 1
            assert f"{name}.{voice}.pitch_range.mean" in data
    # Each voice's generated line is one voice: its pitch range is narrower than the mix's.
    assert all(data[f"test.{v}.pitch_range.mean"] < data["test.pitch_range.mean"] for v in SATB)
    assert all(np.isfinite(v) for v in data.values())
