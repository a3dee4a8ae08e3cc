"""The baselines, and the evaluate stage end to end on prepared chorales and MIDI samples."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml

from pipeline.data.encoding import Encoding
from pipeline.data.midi import TrackNotes, write_midi
from pipeline.data.prepared import load_split, load_stats
from pipeline.data.segments import segment_to_notes
from pipeline.errors import DmcError
from pipeline.evaluate.baselines import MarkovChain, baseline_sets, markov_segments, shuffle_segments

# -- shuffle ----------------------------------------------------------------------------------------


def test_shuffle_keeps_each_feature_row_multiset_and_changes_the_order(prepared_dir):
    x = load_split(prepared_dir, "train")
    shuffled = shuffle_segments(x, np.random.default_rng(0))
    assert shuffled.shape == x.shape
    assert np.array_equal(np.sort(shuffled, axis=-1), np.sort(x, axis=-1))
    assert not np.array_equal(shuffled, x)
    # Each feature is permuted on its own: pitch and duration no longer travel together.
    same_order = np.all(np.argsort(shuffled[:, 0], axis=-1, kind="stable")
                        == np.argsort(shuffled[:, 1], axis=-1, kind="stable"))
    assert not same_order


# -- Markov chain -----------------------------------------------------------------------------------

def test_markov_chain_with_one_successor_per_token_replays_the_cycle():
    pitch = np.array([[60, 62, 64, 60, 62, 64]] * 2)
    ones = np.full(pitch.shape, 0.5)
    p, d, dt = MarkovChain.fit(pitch, ones, ones).sample(3, 7, np.random.default_rng(0))
    assert p.tolist() == [[60, 62, 64, 60, 62, 64, 60]] * 3
    assert np.all(d == 0.5) and np.all(dt == 0.5)


def test_markov_chain_follows_observed_transition_frequencies():
    # After 60 comes 62 or 64, equally often; 62 and 64 always go back to 60.
    pitch = np.array([[60, 62, 60, 64, 60, 62, 60, 64]])
    ones = np.ones(pitch.shape)
    p, _, _ = MarkovChain.fit(pitch, ones, ones).sample(4000, 4, np.random.default_rng(1))
    after_60 = np.concatenate([p[:, i + 1][p[:, i] == 60] for i in range(3)])
    assert set(after_60.tolist()) == {62, 64}
    assert np.mean(after_60 == 62) == pytest.approx(0.5, abs=0.03)
    assert np.all(p[:, 1:][p[:, :-1] != 60] == 60)


def test_markov_chain_quantizes_durations_and_deltas_to_sixteenths():
    pitch = np.array([[60, 62, 64]])
    chain = MarkovChain.fit(pitch, np.array([[0.26, 0.1, 0.5]]), np.array([[0.0, 0.24, 0.51]]))
    assert sorted(chain.tokens[:, 1].tolist()) == [0.25, 0.25, 0.5]  # at least one 16th long
    assert sorted(chain.tokens[:, 2].tolist()) == [0.0, 0.25, 0.5]


def test_markov_chain_restarts_after_a_token_that_only_ends_segments():
    pitch = np.array([[60, 62, 72]])  # 72 has no successor
    ones = np.ones(pitch.shape)
    p, _, _ = MarkovChain.fit(pitch, ones, ones).sample(2, 6, np.random.default_rng(0))
    assert p.tolist() == [[60, 62, 72, 60, 62, 72]] * 2


def test_markov_segments_decode_like_real_segments(prepared_dir):
    train = load_split(prepared_dir, "train")
    encoding = Encoding.from_stats(load_stats(prepared_dir))
    fake = markov_segments(train, encoding, 5, np.random.default_rng(0))
    assert fake.shape == (5, *train.shape[1:]) and fake.dtype == np.float32
    pitch, _, duration = segment_to_notes(fake[0], encoding)
    real_pitches = set(segment_to_notes(train[0], encoding)[0].ravel().tolist())
    for x in train[1:]:
        real_pitches |= set(segment_to_notes(x, encoding)[0].ravel().tolist())
    assert set(pitch.ravel().tolist()) <= real_pitches
    assert np.all(duration >= 0.25 - 1e-5)


def test_baseline_sets_are_deterministic_under_a_fixed_seed(prepared_dir):
    train = load_split(prepared_dir, "train")
    encoding = Encoding.from_stats(load_stats(prepared_dir))
    a = baseline_sets(train, encoding, 6, np.random.default_rng(3))
    b = baseline_sets(train, encoding, 6, np.random.default_rng(3))
    c = baseline_sets(train, encoding, 6, np.random.default_rng(4))
    assert all(np.array_equal(a[k], b[k]) for k in a)
    assert not all(np.array_equal(a[k], c[k]) for k in ("shuffle", "markov"))
    assert np.array_equal(np.sort(a["real"], axis=-1), np.sort(a["shuffle"], axis=-1))


# -- the stage --------------------------------------------------------------------------------------

@pytest.fixture()
def evaluate_repo(in_tmp_repo: Path, prepared_dir: Path) -> Path:
    """A working folder with prepared chorales and 4 'generated' samples (val segments written as MIDI)."""
    shutil.copytree(prepared_dir, in_tmp_repo / "data" / "prepared")
    encoding = Encoding.from_stats(load_stats(prepared_dir))
    (in_tmp_repo / "samples").mkdir()
    for i, x in enumerate(load_split(prepared_dir, "val")[:4]):
        pitch, onset, duration = segment_to_notes(x, encoding)
        track = TrackNotes(pitch[0], onset[0], duration[0])
        write_midi(in_tmp_repo / "samples" / f"sample_{i:03d}.mid", [track])
    params = yaml.safe_load((in_tmp_repo / "params.yaml").read_text())
    # 32-note chorale segments last about 8 beats: frames of 2 bars, not 4, give them pairs.
    params["evaluate"].update(n_baseline=12, frame_beats=4.0, hop_beats=2.0)
    (in_tmp_repo / "params.yaml").write_text(yaml.safe_dump(params))
    return in_tmp_repo


def test_evaluate_stage_writes_flat_metrics_tables_and_a_plot_deterministically(evaluate_repo):
    from stages.evaluate import main

    main()
    first = (evaluate_repo / "metrics" / "evaluate.json").read_text()
    data = json.loads(first)
    for name in ("test", "generated", "markov", "shuffle", "real"):
        assert 0 <= data[f"{name}.oa_mean"] <= 1
        assert f"{name}.scale_consistency.mean" in data
        assert 0 <= data[f"{name}.edge_fraction"] <= 1 and 0 <= data[f"{name}.chord_fraction"] <= 1
    assert data["real.chord_fraction"] > 0.5  # chorales: four voices to a chord
    assert data["generated.n_pieces"] == 4 and data["generated.rejected"] == 0
    assert data["test.framewise.pitch.consistency"] == 1.0 and data["real.framewise.pitch.pairs"] > 0
    assert all(isinstance(v, int | float) and math.isfinite(v) for v in data.values())

    tables = evaluate_repo / "metrics" / "evaluate"
    summary = (tables / "summary.csv").read_text().splitlines()
    assert summary[0].startswith("set,oa_mean") and [r.split(",")[0] for r in summary[1:]] == [
        "test", "generated", "markov", "shuffle", "real"]
    densities = sorted(p.stem for p in (tables / "densities").glob("*.csv"))
    assert len(densities) == 9 and "pitch_class_transition_matrix" in densities
    header = (tables / "densities" / "pitch_count.csv").read_text().splitlines()[0]
    assert header == "distance,test,generated,markov,shuffle,real"
    assert (evaluate_repo / "plots" / "evaluate.png").read_bytes()[:4] == b"\x89PNG"

    main()
    assert (evaluate_repo / "metrics" / "evaluate.json").read_text() == first


def test_evaluate_stage_without_samples_names_the_missing_step(evaluate_repo):
    from stages.evaluate import main

    shutil.rmtree(evaluate_repo / "samples")
    with pytest.raises(DmcError, match="run the sample stage first"):
        main()
    assert not (evaluate_repo / "metrics" / "evaluate.json").exists()


def test_frames_longer_than_the_test_pieces_are_named_in_one_line(evaluate_repo, capsys):
    from stages.evaluate import main

    params = yaml.safe_load((evaluate_repo / "params.yaml").read_text())
    params["evaluate"].update(frame_beats=16.0, hop_beats=8.0)  # 24 beats; the segments last about 8
    (evaluate_repo / "params.yaml").write_text(yaml.safe_dump(params))
    main()
    data = json.loads((evaluate_repo / "metrics" / "evaluate.json").read_text())
    assert data["test.framewise.pitch.pairs"] == 0
    assert "no framewise figures: no test piece is 24 beats long" in capsys.readouterr().out


def test_a_sample_without_notes_counts_as_an_empty_piece(evaluate_repo):
    from stages.evaluate import main

    silent = TrackNotes(np.zeros(0), np.zeros(0), np.zeros(0))
    write_midi(evaluate_repo / "samples" / "sample_999.mid", [silent])
    main()
    data = json.loads((evaluate_repo / "metrics" / "evaluate.json").read_text())
    assert data["generated.n_pieces"] == 5 and data["generated.rejected"] == 1
