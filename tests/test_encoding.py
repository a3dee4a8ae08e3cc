"""Feature encodings: every (pitch, time, scale) choice round-trips real chorales exactly, through the
prepare stage and back through sampling's decoder; transposition is exact in encoded space."""

import itertools

import numpy as np
import pytest
import torch
from conftest import PREPARED_SPLIT, repo_params

from pipeline import sampling
from pipeline.encoding import GRIDS, ORIGINAL, PITCH, SCALE, TIME, Encoding, EncodingFit
from pipeline.errors import DmcError
from pipeline.params import validate
from pipeline.segments import PrepareConfig, features_of, load_pitches, load_split, load_stats, write_prepared
from pipeline.training import Transposer

ENCODINGS = list(itertools.product(PITCH, TIME, SCALE))


@pytest.fixture(scope="module")
def prepared_by_encoding(bach_midi_dir, tmp_path_factory):
    """The 12 test chorales prepared once per encoding (seq_len 32)."""
    files = sorted(p.name for p in bach_midi_dir.glob("*.mid"))
    out = {}
    for spec in ENCODINGS:
        folder = tmp_path_factory.mktemp("enc") / "prepared"
        write_prepared(folder, "bach", bach_midi_dir, files,
                       PrepareConfig(seq_len=32, split=PREPARED_SPLIT, features=spec), n_jobs=1)
        out[spec] = folder
    return out


@pytest.mark.parametrize("spec", ENCODINGS, ids="-".join)
def test_prepared_segments_decode_to_exactly_the_prepared_notes(spec, prepared_by_encoding):
    """encode (prepare, float32 on disk) then decode (sampling) gives back every note: the same pitch, and
    onsets and durations within one tick at 480 per quarter, which float32 storage allows."""
    folder = prepared_by_encoding[spec]
    stats = load_stats(folder)
    assert stats["encoding"] == dict(zip(("pitch", "time", "scale"), spec, strict=True))
    encoding = Encoding.from_stats(stats)
    x, pitches = load_split(folder, "train"), load_pitches(folder, "train")
    original = Encoding.from_stats(load_stats(prepared_by_encoding[("frequency", "linear", "minmax")]))
    raw = original.decode(load_split(prepared_by_encoding[("frequency", "linear", "minmax")], "train"))
    low, high = encoding.bounds
    assert (x.min(axis=(0, 2, 3)) >= low - 1e-5).all() and (x.max(axis=(0, 2, 3)) <= high + 1e-5).all()
    for i in range(0, len(x), 7):
        (track,) = sampling.decode(x[i], encoding)
        onset = np.cumsum(raw[i, 2, 0]) - raw[i, 2, 0, 0]
        order = np.lexsort((pitches[i, 0], onset))
        assert track.pitch.tolist() == pitches[i, 0][order].tolist()
        assert np.abs(track.onset - np.rint(onset[order] * 480)).max() <= 1
        assert np.abs(track.duration - np.rint(raw[i, 1, 0][order] * 480)).max() <= 1


def test_scales_put_the_train_split_where_they_say(prepared_by_encoding):
    for spec, folder in prepared_by_encoding.items():
        x = load_split(folder, "train").astype(np.float64)
        if spec[2] == "minmax":
            np.testing.assert_allclose([x.min(), x.max()], [0, 1], atol=1e-6)
        elif spec[2] == "symmetric":
            np.testing.assert_allclose([x.min(), x.max()], [-1, 1], atol=1e-6)
        else:
            np.testing.assert_allclose(x.mean(axis=(0, 2, 3)), 0, atol=1e-4)
            np.testing.assert_allclose(x.std(axis=(0, 2, 3)), 1, atol=1e-4)


def test_log_frequency_and_midi_give_the_same_numbers_after_scaling(prepared_by_encoding):
    """Both are affine in log Hz: the seed's Hz is the only pitch choice that changes the data."""
    for time, scale in itertools.product(TIME, SCALE):
        a = load_split(prepared_by_encoding[("log_frequency", time, scale)], "train")
        b = load_split(prepared_by_encoding[("midi", time, scale)], "train")
        np.testing.assert_allclose(a, b, atol=1e-5)


def test_log_time_keeps_chords_at_exactly_zero(prepared_by_encoding):
    stats = load_stats(prepared_by_encoding[("midi", "log", "minmax")])
    x = load_split(prepared_by_encoding[("midi", "log", "minmax")], "train")
    raw = Encoding.from_stats(stats).decode(x)
    assert np.mean(raw[:, 2] == 0) > 0.5 and np.all(x[:, 2][raw[:, 2] == 0] == 0)


def test_old_stats_without_an_encoding_are_the_original(prepared_by_encoding):
    stats = load_stats(prepared_by_encoding[("frequency", "linear", "minmax")])
    old = {"normalization": {f: {k: v[k] for k in ("min", "max")} for f, v in stats["normalization"].items()}}
    assert Encoding.from_stats(old) == Encoding.from_stats(stats).__class__(
        lo=Encoding.from_stats(stats).lo, hi=Encoding.from_stats(stats).hi)
    with pytest.raises(DmcError, match="unknown pitch encoding 'hz'"):
        Encoding.from_stats({**stats, "encoding": {"pitch": "hz"}})


def test_the_data_grid_is_the_coarsest_that_holds_nearly_every_note(prepared_by_encoding):
    assert load_stats(prepared_by_encoding[ENCODINGS[0]])["grid"] == 0.25  # chorales: 16th notes
    fit = EncodingFit()
    fit.add(np.array([[[[440.0] * 3], [[1 / 3, 2 / 3, 1.0]], [[0.0, 1 / 3, 1 / 3]]]]))
    assert fit.grid() == 1 / 3
    fit.add(np.array([[[[440.0]], [[0.1234]], [[0.0]]]]) .repeat(100, axis=0))
    assert fit.grid() is None and GRIDS[-1] == 1 / 32


@pytest.mark.parametrize("pitch", PITCH)
def test_transposing_in_encoded_space_moves_every_note_by_the_same_interval(pitch, prepared_by_encoding):
    folder = prepared_by_encoding[(pitch, "log", "symmetric")]
    encoding = Encoding.from_stats(load_stats(folder))
    x = torch.from_numpy(load_split(folder, "train")[:16]).double()
    shifted = Transposer(encoding, 3, torch.device("cpu"))(x, torch.Generator().manual_seed(0))
    before = sampling.frequency_to_pitch(encoding.decode(x.numpy())[:, 0])
    after = sampling.frequency_to_pitch(encoding.decode(shifted.numpy())[:, 0])
    moved = (after - before).reshape(len(x), -1)
    assert (moved == moved[:, :1]).all() and (np.abs(moved) <= 3).all() and (moved != 0).any()
    assert torch.equal(shifted[:, 1:], x[:, 1:])  # durations and deltas untouched
    low, high = encoding.bounds
    assert shifted[:, 0].min() >= low[0] - 1e-6 and shifted[:, 0].max() <= high[0] + 1e-6


def test_features_param_accepts_original_or_a_mapping():
    params = repo_params()
    params["features"] = "original"
    assert features_of(validate(params)) == tuple(ORIGINAL.values())
    params["features"] = {"pitch": "midi", "time": "log", "scale": "standard"}
    assert features_of(validate(params)) == ("midi", "log", "standard")
    params["features"] = {"pitch": "midi", "time": "log", "scale": "zscore"}
    with pytest.raises(DmcError, match="'features.scale' must be one of"):
        validate(params)
