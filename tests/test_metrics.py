"""The metrics on hand-built pieces with known answers, and on real chorales: against themselves, shuffled."""

from __future__ import annotations

import math
from pathlib import Path
from statistics import NormalDist

import numpy as np
import pytest
from scipy.stats import gaussian_kde

from pipeline.data.midi import extract_notes
from pipeline.evaluate import metrics as M
from pipeline.evaluate import pieces as P
from pipeline.evaluate.baselines import shuffle_segments

C_MAJOR = [60, 62, 64, 65, 67, 69, 71, 72]


def scale(pitches=C_MAJOR, length: float = 1.0) -> P.Piece:
    """One note per beat."""
    n = len(pitches)
    return P.Piece.from_notes(np.array(pitches), np.arange(n) * length, np.full(n, length))


def stats(piece: P.Piece) -> dict[str, float]:
    return M.piece_statistics(piece)


# -- per-piece statistics ---------------------------------------------------------------------------

def test_c_major_scale_has_scale_consistency_one_and_seven_pitch_classes():
    s = stats(scale())
    assert s["scale_consistency"] == 1.0
    assert s["n_pitch_classes_used"] == 7
    assert s["n_pitches_used"] == 8
    assert s["pitch_range"] == 12


def test_pitch_class_entropy_counts_the_octave_as_the_same_class():
    # C twice (2/8), six other classes once (1/8 each): H = 0.25*2 + 6 * 0.125*3 = 2.75 bits
    assert stats(scale())["pitch_class_entropy"] == pytest.approx(2.75)
    assert stats(scale())["pitch_entropy"] == pytest.approx(3.0)  # 8 distinct pitches


def test_a_melody_has_polyphony_one_and_a_triad_three():
    melody = stats(scale())
    assert melody["polyphony"] == 1.0 and melody["polyphony_rate"] == 0.0
    triad = stats(P.Piece.from_notes(np.array([60, 64, 67]), np.zeros(3), np.full(3, 4.0)))
    assert triad["polyphony"] == 3.0 and triad["polyphony_rate"] == 1.0


def test_polyphony_rate_counts_two_sounding_pitches_as_polyphonic():
    # Two beats of a dyad, two beats of one note.
    dyad = P.Piece.from_notes(np.array([60, 64, 67]), np.array([0.0, 0.0, 2.0]), np.full(3, 2.0))
    assert stats(dyad)["polyphony_rate"] == pytest.approx(0.5)


def test_empty_beat_rate_counts_silent_beats():
    # Half-beat notes on beats 0 and 3: of beats 0-3, beats 1 and 2 are silent.
    gap = P.Piece.from_notes(np.array([60, 62]), np.array([0.0, 3.0]), np.array([0.5, 0.5]))
    assert stats(gap)["empty_beat_rate"] == pytest.approx(2 / 4)


def test_groove_consistency_is_one_for_identical_bars_and_lower_when_they_differ():
    same = P.Piece.from_notes(np.full(8, 60), np.arange(8.0), np.ones(8))
    assert stats(same)["groove_consistency"] == 1.0
    # Bar 1 has onsets on every beat, bar 2 only on beat 1: 3 of 96 positions differ.
    differ = P.Piece.from_notes(np.full(5, 60), np.array([0.0, 1, 2, 3, 4]), np.array([1, 1, 1, 1, 4.0]))
    assert stats(differ)["groove_consistency"] == pytest.approx(1 - 3 / (4 * P.RESOLUTION))


def test_an_empty_piece_has_undefined_statistics_not_an_error():
    empty = P.Piece.from_notes(np.zeros(0), np.zeros(0), np.zeros(0))
    assert all(math.isnan(v) for v in stats(empty).values())


# -- Yang & Lerch features ----------------------------------------------------------------------------

def test_scale_features_have_known_values():
    piece = scale()
    assert M.pitch_count(piece) == 8
    assert M.pitch_range(piece) == 12
    assert M.note_count(piece) == 8
    assert M.average_pitch_interval(piece) == pytest.approx(12 / 7)
    assert M.average_inter_onset_interval(piece) == 1.0
    hist = M.pitch_class_histogram(piece)
    assert hist[0] == pytest.approx(2 / 8) and hist.sum() == pytest.approx(1.0)
    assert set(np.flatnonzero(hist)) == {0, 2, 4, 5, 7, 9, 11}


def test_pitch_class_transition_matrix_counts_consecutive_classes():
    pctm = M.pitch_class_transition_matrix(scale())
    assert pctm.shape == (12, 12) and pctm.sum() == pytest.approx(1.0)
    for a, b in zip(C_MAJOR[:-1], C_MAJOR[1:], strict=True):
        assert pctm[a % 12, b % 12] == pytest.approx(1 / 7)


def test_inter_onset_interval_ignores_notes_of_the_same_chord():
    onsets = np.array([0, 0, 0, 2, 2, 2.0])
    chords = P.Piece.from_notes(np.array([60, 64, 67, 62, 65, 69]), onsets, np.full(6, 2.0))
    assert M.average_inter_onset_interval(chords) == 2.0


def test_note_lengths_fall_in_their_nearest_class():
    durations = np.array([1.0, 1.5, 0.25, 1 / 3, 0.9, 4.0])
    assert list(M.note_length_classes(durations)) == [2, 6, 4, 11, 2, 0]
    hist = M.note_length_histogram(scale(length=0.5))
    assert hist[3] == 1.0  # all eighths
    nltm = M.note_length_transition_matrix(
        P.Piece.from_notes(np.array([60, 62, 64]), np.array([0, 1, 2.5]), np.array([1, 1.5, 1.0])))
    assert nltm[2, 6] == 0.5 and nltm[6, 2] == 0.5


# -- distances and densities --------------------------------------------------------------------------

def test_kde_matches_scipy_gaussian_kde_on_spread_data():
    samples = np.random.default_rng(0).normal(size=300)
    grid = np.linspace(-5, 5, 1024)
    ours = M.kde(samples, grid, M.kde_bandwidth(samples, floor=0.0))
    assert np.abs(ours - gaussian_kde(samples)(grid)).max() < 1e-3


def test_overlap_area_is_one_for_one_sample_and_zero_for_disjoint_ones():
    rng = np.random.default_rng(0)
    a = rng.normal(size=500)
    assert M.overlap_area(a, a) == pytest.approx(1.0, abs=1e-3)
    assert M.overlap_area(a, a + 20) < 1e-3
    # Two unit normals one sigma apart overlap by 2 * Phi(-1/2) = 0.617 (a KDE smooths a little).
    assert M.overlap_area(a, rng.normal(1.0, size=500)) == pytest.approx(0.617, abs=0.05)


def test_kl_divergence_is_zero_for_one_sample_and_grows_with_the_shift():
    a = np.random.default_rng(1).normal(size=400)
    assert M.kl_divergence(a, a) == pytest.approx(0.0, abs=1e-9)
    assert 0 < M.kl_divergence(a, a + 0.5) < M.kl_divergence(a, a + 2.0)


def test_identical_distances_get_a_density_not_an_error():
    # Fixed-length segments: every note-count distance is 0.
    zeros = np.zeros(20)
    assert M.overlap_area(zeros, zeros) == pytest.approx(1.0, abs=1e-3)
    assert M.overlap_area(zeros, zeros + 5) < 1e-3


def test_intra_set_distances_leave_each_piece_out():
    values = np.array([[0.0], [3.0], [4.0]])
    assert sorted(M.intra_set_distances(values)) == [1.0, 3.0, 4.0]
    assert sorted(M.inter_set_distances(values[:1], values)) == [0.0, 3.0, 4.0]


# -- framewise self-similarity ------------------------------------------------------------------------

def test_a_piece_of_one_repeated_pitch_has_frames_that_overlap_fully():
    piece = scale([60] * 24)  # 24 beats: frames [0, 16) and [8, 24)
    assert M.frame_overlaps(piece, "pitch").tolist() == [pytest.approx(1.0)]
    assert M.frame_overlaps(piece, "duration").tolist() == [pytest.approx(1.0)]


def test_a_change_of_register_lowers_the_overlap_of_adjacent_frames():
    # Frame [0, 16): twelve 60s and four 72s (mean 63, variance 27); frame [8, 24): the mirror image.
    # Each Gaussian's variance also holds 1/12 for the rounding to whole semitones.
    (oa,) = M.frame_overlaps(scale([60] * 12 + [72] * 12), "pitch")
    sigma = math.sqrt(27 + 1 / 12)
    assert oa == pytest.approx(NormalDist(63, sigma).overlap(NormalDist(69, sigma)))


def test_pieces_shorter_than_two_frames_contribute_no_pairs():
    assert len(M.frame_overlaps(scale([60] * 20), "pitch")) == 0  # 5 bars: one whole 4-bar frame
    assert len(M.frame_overlaps(scale([60] * 20), "pitch", frame_beats=8, hop_beats=4)) == 3


def test_framewise_quantizes_to_sixteenths():
    # 0.26 beats rounds to one 16th, like 0.25: the frames are the same.
    wobbly = P.Piece.from_notes(np.full(24, 60), np.arange(24.0), np.where(np.arange(24) < 12, 0.26, 0.25))
    assert M.frame_overlaps(wobbly, "duration").tolist() == [pytest.approx(1.0)]


def test_consistency_and_variance_follow_their_definitions():
    ref = np.array([0.8, 0.9, 1.0])  # mean 0.9, variance 2/300
    assert M.consistency(ref, ref) == 1.0 and M.variance(ref, ref) == 1.0
    assert M.consistency(np.array([0.45]), ref) == pytest.approx(0.5)
    assert M.consistency(np.array([0.0]), ref) == 0.0
    assert M.variance(np.array([0.7, 0.9, 1.1]), ref) == 0.0  # variance 4x the reference's: clipped at 0
    assert math.isnan(M.consistency(np.zeros(0), ref))


# -- real chorales ------------------------------------------------------------------------------------

WINDOW = 64


def chorale_windows(folder: Path) -> np.ndarray:
    """Raw `[N, 3, 1, W]` (pitch, duration, delta) windows of WINDOW notes from every chorale."""
    windows = []
    for path in sorted(folder.glob("*.mid")):
        n = extract_notes(path)
        for s in range(0, len(n) - WINDOW + 1, WINDOW):
            sl = slice(s, s + WINDOW)
            windows.append(np.stack([n.pitch[sl], n.duration[sl], np.r_[0.0, n.delta[sl][1:]]])[:, None])
    return np.array(windows, dtype=float)


def to_pieces(windows: np.ndarray) -> list[P.Piece]:
    return [P.Piece.from_notes(w[0, 0], np.cumsum(w[2, 0]), w[1, 0]) for w in windows]


@pytest.fixture(scope="module")
def chorale_halves(bach_midi_dir: Path) -> tuple[np.ndarray, np.ndarray]:
    windows = chorale_windows(bach_midi_dir)
    order = np.random.default_rng(0).permutation(len(windows))
    assert len(windows) >= 20
    return windows[order[: len(order) // 2]], windows[order[len(order) // 2:]]


def test_real_music_against_itself_has_overlapping_area_near_one(chorale_halves):
    values = M.feature_values(to_pieces(chorale_halves[0]))
    sims = M.distribution_similarity(values, values)
    assert min(s.oa for s in sims.values()) > 0.85
    assert np.mean([s.oa for s in sims.values()]) > 0.9


def test_shuffled_notes_score_below_real_music_on_order_features(chorale_halves):
    reference, real = chorale_halves
    shuffled = shuffle_segments(real, np.random.default_rng(0))
    ref_values = M.feature_values(to_pieces(reference))
    real_sims = M.distribution_similarity(M.feature_values(to_pieces(real)), ref_values)
    shuffle_sims = M.distribution_similarity(M.feature_values(to_pieces(shuffled)), ref_values)
    for feature in ("pitch_class_transition_matrix", "average_pitch_interval"):
        assert shuffle_sims[feature].oa < real_sims[feature].oa - 0.03, feature
    # Same notes in another order: the pitch histogram hardly notices (only the few notes a shuffle puts on
    # the pitch and onset of another are merged, as in a file written from it).
    assert shuffle_sims["pitch_class_histogram"].oa == pytest.approx(real_sims["pitch_class_histogram"].oa,
                                                                     abs=0.01)


def test_evaluate_sets_reports_flat_finite_numbers_for_every_set(chorale_halves):
    reference, real = (to_pieces(h) for h in chorale_halves)
    reports = M.evaluate_sets({"real": real}, reference, frame_beats=8, hop_beats=4)
    flat = M.flat_metrics(reports)
    assert flat["test.oa_mean"] > 0.9 and 0 < flat["real.oa_mean"] <= 1
    assert flat["test.framewise.pitch.consistency"] == 1.0 and flat["real.framewise.pitch.pairs"] > 0
    assert all(isinstance(v, int | float) and math.isfinite(v) for v in flat.values())
    assert {"real.scale_consistency.mean", "real.oa.note_length_transition_matrix",
            "real.framewise.duration.variance"} <= set(flat)


def test_edge_and_chord_fractions_count_notes_not_pieces():
    chord_then_run = P.Piece.from_notes(np.array([60, 64, 67, 72, 36]), np.array([0.0, 0, 0, 1, 2]),
                                        np.ones(5))
    run = P.Piece.from_notes(np.array([88, 62, 64]), np.array([0.0, 1, 2]), np.ones(3))
    assert M.edge_fraction([chord_then_run, run], low=36, high=88) == 2 / 8
    assert M.chord_fraction([chord_then_run, run]) == 2 / 6  # of the notes after each piece's first
    assert np.isnan(M.chord_fraction([P.Piece.from_notes(np.array([60]), np.zeros(1), np.ones(1))]))


def test_a_merged_duplicate_does_not_change_oa_on_fixed_length_segments():
    """Two generated sets that differ only by one duplicate note (same pitch and onset), which decoding
    merges, score the same OA: note_count, constant over fixed-length reference segments, is left out of
    oa_mean, and the duplicate is merged in the set that holds it, as in the file written from it."""
    rng = np.random.default_rng(0)

    def piece(n: int = 16) -> P.Piece:
        onset = np.cumsum(rng.integers(1, 3, n)) * 0.5
        return P.Piece.from_notes(rng.integers(55, 75, n), onset, rng.choice([0.5, 1.0, 2.0], n))

    reference = [piece() for _ in range(12)]
    generated = [piece() for _ in range(8)]
    first = generated[0]
    doubled = P.Piece.from_notes(np.append(first.pitch, first.pitch[3]),
                                 np.append(first.onset, first.onset[3]), np.append(first.duration, 2.0))
    assert doubled.merged == 1 and len(doubled) == len(first)
    flat = [M.flat_metrics(M.evaluate_sets({"generated": g}, reference))
            for g in (generated, [doubled, *generated[1:]])]
    assert flat[0]["generated.oa_mean"] == flat[1]["generated.oa_mean"]
    assert M.constant_features(M.evaluate_sets({"generated": generated}, reference)) == ["note_count"]
    # A set whose pieces came back from files one note short is marked down by the old mean only.
    short = [P.Piece.from_notes(p.pitch[:-1], p.onset[:-1], p.duration[:-1]) for p in generated]
    old = M.flat_metrics(M.evaluate_sets({"generated": short}, reference))
    assert old["generated.oa.note_count"] < 0.5 and old["generated.oa_mean_all"] < old["generated.oa_mean"]
    assert P.merged_notes(short, notes_per_piece=16) == 8 and P.merged_notes([doubled]) == 1


def test_grid_fraction_counts_durations_and_deltas_on_the_grid():
    on = P.Piece.from_notes(np.array([60, 64, 67]), np.array([0.0, 0.0, 0.75]), np.array([0.75, 1.0, 0.25]))
    off = P.Piece.from_notes(np.array([60, 62]), np.array([0.0, 0.3]), np.array([0.3, 1.0]))
    assert M.grid_fraction([on], 0.25) == 1.0
    # durations 0.3 (off), 1.0 (on); one delta 0.3 (off)
    assert M.grid_fraction([off], 0.25) == pytest.approx(1 / 3)
