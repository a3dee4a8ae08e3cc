"""Feature encodings: every (pitch, time, scale) choice round-trips real chorales exactly, through the
prepare stage and back through sampling's decoder; transposition is exact in encoded space; every lattice
code (pitch helix and classes, time grid, chord channel) gives back the notes exactly."""

import itertools

import numpy as np
import pytest
import torch
from conftest import PREPARED_SPLIT, repo_params

from pipeline.compose.decode import decode, frequency_to_pitch
from pipeline.data.encoding import (
    GRIDS,
    ORIGINAL,
    PITCH,
    PITCH_CODES,
    SCALE,
    STORED,
    TIME,
    Encoding,
    EncodingFit,
)
from pipeline.data.prepared import load_pitches, load_split, load_stats, write_prepared
from pipeline.data.segments import PrepareConfig, features_of
from pipeline.errors import DmcError
from pipeline.model.training import Transposer
from pipeline.params import validate

SCALAR_PITCH = [p for p in PITCH if p not in PITCH_CODES]
SCALAR_TIME = [t for t in TIME if t not in STORED]
ORIGINAL_SPEC = ("frequency", "linear", "minmax", False)
ENCODINGS = [(*spec, False) for spec in itertools.product(SCALAR_PITCH, SCALAR_TIME, SCALE)]
LATTICE = [(pitch, time, "symmetric", chord) for pitch in ("midi", *PITCH_CODES) for time in ("log", "grid")
           for chord in (False, True) if pitch in PITCH_CODES or time == "grid" or chord]
LATTICE += [("helix", "classes", "symmetric", True), ("midi", "classes", "symmetric", False)]


@pytest.fixture(scope="module")
def prepared_by_encoding(bach_midi_dir, tmp_path_factory):
    """The 12 test chorales prepared once per encoding (seq_len 32)."""
    files = sorted(p.name for p in bach_midi_dir.glob("*.mid"))
    out = {}
    for spec in ENCODINGS + LATTICE:
        folder = tmp_path_factory.mktemp("enc") / "prepared"
        write_prepared(folder, "bach", bach_midi_dir, files,
                       PrepareConfig(seq_len=32, split=PREPARED_SPLIT, features=spec), n_jobs=1)
        out[spec] = folder
    return out


@pytest.mark.parametrize("spec", ENCODINGS, ids=lambda s: "-".join(s[:3]))
def test_prepared_segments_decode_to_exactly_the_prepared_notes(spec, prepared_by_encoding):
    """encode (prepare, float32 on disk) then decode (sampling) gives back every note: the same pitch, and
    onsets and durations within one tick at 480 per quarter, which float32 storage allows."""
    folder = prepared_by_encoding[spec]
    stats = load_stats(folder)
    assert stats["encoding"] == dict(zip(("pitch", "time", "scale", "chord"), spec, strict=True))
    encoding = Encoding.from_stats(stats)
    x, pitches = load_split(folder, "train"), load_pitches(folder, "train")
    original = Encoding.from_stats(load_stats(prepared_by_encoding[ORIGINAL_SPEC]))
    raw = original.decode(load_split(prepared_by_encoding[ORIGINAL_SPEC], "train"))
    low, high = encoding.bounds
    assert (x.min(axis=(0, 2, 3)) >= low - 1e-5).all() and (x.max(axis=(0, 2, 3)) <= high + 1e-5).all()
    for i in range(0, len(x), 7):
        track = decode(x[i], encoding)
        onset = np.cumsum(raw[i, 2, 0]) - raw[i, 2, 0, 0]
        order = np.lexsort((pitches[i, 0], onset))
        assert track.pitch.tolist() == pitches[i, 0][order].tolist()
        assert np.abs(track.onset - np.rint(onset[order] * 480)).max() <= 1
        assert np.abs(track.duration - np.rint(raw[i, 1, 0][order] * 480)).max() <= 1


def test_scales_put_the_train_split_where_they_say(prepared_by_encoding):
    for spec, folder in prepared_by_encoding.items():
        if spec not in ENCODINGS:
            continue
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
    for time, scale in itertools.product(SCALAR_TIME, SCALE):
        a = load_split(prepared_by_encoding[("log_frequency", time, scale, False)], "train")
        b = load_split(prepared_by_encoding[("midi", time, scale, False)], "train")
        np.testing.assert_allclose(a, b, atol=1e-5)


def test_log_time_keeps_chords_at_exactly_zero(prepared_by_encoding):
    stats = load_stats(prepared_by_encoding[("midi", "log", "minmax", False)])
    x = load_split(prepared_by_encoding[("midi", "log", "minmax", False)], "train")
    raw = Encoding.from_stats(stats).decode(x)
    assert np.mean(raw[:, 2] == 0) > 0.5 and np.all(x[:, 2][raw[:, 2] == 0] == 0)


def test_old_stats_without_an_encoding_are_the_original(prepared_by_encoding):
    stats = load_stats(prepared_by_encoding[ORIGINAL_SPEC])
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


@pytest.mark.parametrize("pitch", SCALAR_PITCH)
def test_transposing_in_encoded_space_moves_every_note_by_the_same_interval(pitch, prepared_by_encoding):
    folder = prepared_by_encoding[(pitch, "log", "symmetric", False)]
    encoding = Encoding.from_stats(load_stats(folder))
    x = torch.from_numpy(load_split(folder, "train")[:16]).double()
    shifted = Transposer(encoding, 3, torch.device("cpu"))(x, torch.Generator().manual_seed(0))
    before = frequency_to_pitch(encoding.decode(x.numpy())[:, 0])
    after = frequency_to_pitch(encoding.decode(shifted.numpy())[:, 0])
    moved = (after - before).reshape(len(x), -1)
    assert (moved == moved[:, :1]).all() and (np.abs(moved) <= 3).all() and (moved != 0).any()
    assert torch.equal(shifted[:, 1:], x[:, 1:])  # durations and deltas untouched
    low, high = encoding.bounds
    assert shifted[:, 0].min() >= low[0] - 1e-6 and shifted[:, 0].max() <= high[0] + 1e-6


def test_features_param_accepts_original_or_a_mapping():
    params = repo_params()
    params["features"] = "original"
    assert features_of(validate(params)) == tuple(ORIGINAL.values())
    params["features"] = {"pitch": "midi", "time": "log", "scale": "standard", "chord": False}
    assert features_of(validate(params)) == ("midi", "log", "standard", False)
    params["features"] = {"pitch": "midi", "time": "log", "scale": "zscore", "chord": False}
    with pytest.raises(DmcError, match="'features.scale' must be one of"):
        validate(params)
    params["features"] = {"pitch": "helix", "time": "grid", "scale": "minmax", "chord": True}
    with pytest.raises(DmcError, match="'features.scale' must be symmetric with the lattice codes"):
        validate(params)
    params["features"] = {"pitch": "helix", "time": "grid", "scale": "symmetric", "chord": True}
    params["train"]["transpose"] = 3
    assert validate(params)["train"]["transpose"] == 3  # the lattice codes transpose too


@pytest.mark.parametrize("pitch", list(PITCH_CODES))
def test_transposing_a_lattice_code_gives_the_code_of_the_transposed_notes(pitch, prepared_by_encoding):
    folder = prepared_by_encoding[(pitch, "grid", "symmetric", True)]
    encoding = Encoding.from_stats(load_stats(folder))
    x = torch.from_numpy(encoding.code_stored(load_split(folder, "train")[:16]))
    shifted = Transposer(encoding, 5, torch.device("cpu"))(x, torch.Generator().manual_seed(1)).numpy()
    before, after = encoding.uncode(x.numpy()), encoding.uncode(shifted)
    moved = (frequency_to_pitch(after[:, 0]) - frequency_to_pitch(before[:, 0])).reshape(len(x), -1)
    assert (moved == moved[:, :1]).all() and (np.abs(moved) <= 5).all() and len(np.unique(moved)) > 2
    assert np.array_equal(after[:, 1:], before[:, 1:])  # durations, deltas and chords untouched
    # Exactly the code the moved notes have: the circle turned, or the classes permuted.
    assert np.allclose(shifted, encoding.code(after), atol=1e-5)


def test_a_scalar_pitch_has_no_code_to_transpose(prepared_by_encoding):
    encoding = Encoding.from_stats(load_stats(prepared_by_encoding[("midi", "grid", "symmetric", True)]))
    assert encoding.code_transpose(4).shape == (0, 0)


def _notes_of(raw: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Raw [N, 3, 1, W] -> MIDI pitch, duration and delta in beats."""
    return frequency_to_pitch(raw[:, 0]), raw[:, 1], raw[:, 2]


@pytest.mark.parametrize("spec", LATTICE, ids=lambda s: "-".join(map(str, s)))
def test_every_lattice_code_gives_back_the_chorales_notes_exactly(spec, prepared_by_encoding):
    """notes -> prepare (stored) -> the model's code -> notes: the same pitch, and on data with a grid
    the same durations and deltas to the bit, for every note on the grid (99% of the chorales')."""
    folder = prepared_by_encoding[spec]
    encoding = Encoding.from_stats(load_stats(folder))
    classes = {"duration": 0, "delta": 0}
    if spec[1] == "classes":  # a class per quarter-beat multiple up to the train split's longest time
        classes = {f: round(encoding.hi[i] * 4) + (0 if f == "duration" else 1)  # delta 0 a class too
                   for i, f in ((1, "duration"), (2, "delta"))}
    assert encoding.channels == 3 + PITCH_CODES.get(spec[0], 0) + sum(classes.values()) + int(spec[3])
    assert not encoding.scalar
    stored = load_split(folder, "train")
    coded = encoding.code_stored(stored)
    assert coded.shape[1] == encoding.channels
    low, high = encoding.model_bounds
    assert (coded.min(axis=(0, 2, 3)) >= low - 1e-5).all()
    assert (coded.max(axis=(0, 2, 3)) <= high + 1e-5).all()
    truth = Encoding.from_stats(load_stats(prepared_by_encoding[ORIGINAL_SPEC])).decode(
        load_split(prepared_by_encoding[ORIGINAL_SPEC], "train"))
    pitch, duration, delta = _notes_of(encoding.uncode(coded))
    true_pitch, true_duration, true_delta = _notes_of(truth)
    assert np.array_equal(pitch, true_pitch)
    assert np.array_equal(pitch, load_pitches(folder, "train"))
    if spec[1] in ("grid", "classes"):
        on = (np.abs(true_duration * 4 - np.rint(true_duration * 4)) < 1e-6) & \
            (np.abs(true_delta * 4 - np.rint(true_delta * 4)) < 1e-6)
        assert on.mean() > 0.98
        assert np.array_equal(duration[on], np.rint(true_duration[on] * 4) / 4)
        assert np.array_equal(delta[on], np.rint(true_delta[on] * 4) / 4)
    else:
        np.testing.assert_allclose(duration, true_duration, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(delta, true_delta, rtol=1e-5, atol=1e-6)
    if spec[3]:
        chord = coded[:, -1] > 0
        assert np.array_equal(chord, true_delta == 0) and 0.5 < chord.mean() < 0.8


@pytest.mark.parametrize("spec", [("helix", "grid", "symmetric", True),
                                  ("pitch_class", "grid", "symmetric", False),
                                  ("helix", "classes", "symmetric", True),
                                  ("midi", "log", "symmetric", True)], ids=lambda s: "-".join(map(str, s)))
def test_code_groups_hold_every_code_the_chorales_use(spec, prepared_by_encoding):
    """What a softmax head predicts over: the groups tile the channels, and every note's code of each
    categorical group is one of its table's rows (all of them for pitch and chord, the on-grid 99% for
    the times), so the cross-entropy's class is exact."""
    encoding = Encoding.from_stats(load_stats(prepared_by_encoding[spec]))
    groups = encoding.code_groups()
    assert sum(width for width, _ in groups) == encoding.channels
    coded = encoding.code_stored(load_split(prepared_by_encoding[spec], "train"))
    at = 0
    for n, (width, table) in enumerate(groups):
        values = np.moveaxis(coded[:, at:at + width], 1, -1).reshape(-1, width)
        at += width
        if table is None:  # continuous: a scalar pitch, log times
            assert (n == 0 and spec[0] == "midi") or (n in (1, 2) and spec[1] == "log")
            continue
        nearest = np.sqrt(((values[:, None] - table[None]) ** 2).sum(-1)).min(1)
        on_lattice = (nearest < 1e-5).mean()
        assert on_lattice == 1.0 if n in (0, 3) else on_lattice > 0.98
    if spec[0] != "midi":  # one code per pitch of the train range
        assert len(groups[0][1]) == encoding.pitch_range[1] - encoding.pitch_range[0] + 1


def test_the_lattice_decodes_noisy_values_to_the_nearest_code(prepared_by_encoding):
    """A value near a code decodes to it: a small error in the helix lands on the intended pitch, a delta
    near the grid on the grid, and the chord channel alone decides whether a note starts a chord."""
    encoding = Encoding.from_stats(load_stats(prepared_by_encoding[("helix", "grid", "symmetric", True)]))
    raw = np.array([[[[midi_hz(60), midi_hz(67), midi_hz(61)]], [[1.0, 0.5, 0.25]], [[0.0, 0.75, 2.0]]]])
    coded = encoding.code(raw)
    noisy = coded + np.random.default_rng(0).normal(0, 0.03, coded.shape)
    pitch, duration, delta = _notes_of(encoding.uncode(noisy))
    assert pitch[0, 0].tolist() == [60, 67, 61]
    assert duration[0, 0].tolist() == [1.0, 0.5, 0.25] and delta[0, 0].tolist() == [0.0, 0.75, 2.0]
    coded[0, -1, 0, 2] = 0.3  # the chord channel says "with the note before": delta 0 whatever it holds
    assert _notes_of(encoding.uncode(coded))[2][0, 0, 2] == 0.0
    coded[0, -1, 0, 0] = -0.3  # not a chord: at least one grid step, even where the delta channel says 0
    assert _notes_of(encoding.uncode(coded))[2][0, 0, 0] == 0.25


def test_time_classes_decode_a_blend_of_two_durations_to_one_of_them(prepared_by_encoding):
    """Halfway between an eighth's code and a quarter's, the log time alone (`grid`) decodes to the dotted
    eighth between them; with `classes` the one-hot decides, and the blend is one of the two."""
    classes = Encoding.from_stats(load_stats(prepared_by_encoding[("helix", "classes", "symmetric", True)]))
    grid = Encoding.from_stats(load_stats(prepared_by_encoding[("helix", "grid", "symmetric", True)]))
    raw = np.array([[[[midi_hz(60), midi_hz(60)]], [[0.5, 1.0]], [[1.0, 1.0]]]])
    for encoding, expected in ((grid, {0.75}), (classes, {0.5, 1.0})):
        coded = encoding.code(raw)
        blend = (coded[..., :1] + coded[..., 1:]) / 2
        blend[:, encoding.class_channels[:1]] += 0.01  # a hair towards the eighth's class
        assert set(_notes_of(encoding.uncode(blend))[1].ravel().tolist()) <= expected
    assert _notes_of(classes.uncode(blend))[1].ravel().tolist() == [0.5]
    assert classes.class_channels and not grid.class_channels


def test_time_classes_refuse_a_grid_too_fine_for_the_range():
    with pytest.raises(DmcError, match="time classes would give duration 512 classes"):
        Encoding(lo=(100.0, 1 / 32, 0.0), hi=(1000.0, 16.0, 1.0), pitch="helix", time="classes",
                 scale="symmetric", chord=True, grid=1 / 32)


def midi_hz(p: int) -> float:
    return 440.0 * 2 ** ((p - 69) / 12)


def test_a_chord_never_decodes_one_pitch_twice(prepared_by_encoding):
    """Three chord notes whose nearest code is the same pitch keep three pitches: the nearest note keeps
    it, the others take their nearest free pitches (an octave or a fifth away on the helix); the same
    notes apart in time all keep it."""
    encoding = Encoding.from_stats(load_stats(prepared_by_encoding[("helix", "grid", "symmetric", True)]))
    raw = np.array([[[[midi_hz(60)] * 3], [[1.0] * 3], [[1.0, 0.0, 0.0]]]])
    coded = encoding.code(raw)
    coded[0, 0, 0, 1:] += [0.02, 0.04]  # the first note is the surest of its pitch
    pitch = _notes_of(encoding.uncode(coded))[0][0, 0]
    assert pitch[0] == 60 and len(set(pitch.tolist())) == 3
    assert {abs(int(p) - 60) for p in pitch[1:]} <= {5, 7, 12}
    coded[0, -1, 0, :] = -1  # no chord: three Cs one after another
    assert _notes_of(encoding.uncode(coded))[0][0, 0].tolist() == [60, 60, 60]
