"""Musical statistics of pieces, and distances between sets of pieces.

Three families, each comparing a set of pieces (generated, a baseline, real music) with a reference set
(the test split):

- per-piece statistics (MusPy's metrics): one number per piece, reported as mean ± std per set;
- distribution similarity (Yang & Lerch 2018, "On the evaluation of generative models in music"):
  nine features per piece; for each, the overlapping area (OA) and KL divergence between the
  set→reference distances and the reference's own intra-set distances;
- framewise self-similarity (Mittal et al. 2021, "Symbolic music generation with diffusion models"):
  how much adjacent 4-bar frames of a piece overlap in pitch and in duration, and how close a set's
  mean and variance of those overlaps come to the reference's (Consistency, Variance).

A piece is `pipeline.evaluate.pieces.Piece`. Bars are taken as 4 beats: segments keep no time signature,
and the framewise and groove metrics need some bar length.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from statistics import NormalDist

import muspy
import numpy as np
from scipy.spatial.distance import cdist, pdist

from pipeline.evaluate.pieces import Piece, to_music

BEATS_PER_BAR = 4
QUANTUM = 0.25  # beats: the 16th-note grid of the framewise metric and the Markov baseline


# -- per-piece statistics (MusPy) ---------------------------------------------------------------------

def polyphony_rate(music: muspy.Music) -> float:
    """Fraction of time steps (from 0 to the last note's end) at which two or more pitches sound.

    MusPy counts steps with more than `threshold` pitches, so "two or more" is threshold=1.
    """
    return muspy.polyphony_rate(music, threshold=1)


def groove_consistency(music: muspy.Music) -> float:
    """1 − mean Hamming distance between the onset patterns of adjacent 4-beat bars.

    G_i is bar i's binary onset vector (one slot per tick); the value is
    1 − Σ d(G_i, G_{i+1}) / (ticks per bar · (T − 1)) over the T bars the piece's notes reach. MusPy's
    definition, except for T: MusPy adds an empty bar after a piece that ends exactly on a bar line,
    which would mark every such piece down. NaN for a piece shorter than two bars.
    """
    bar = BEATS_PER_BAR * music.resolution
    length = max((track.get_end_time() for track in music.tracks), default=0)
    n_bars = math.ceil(length / bar)
    if n_bars < 2:
        return math.nan
    onsets = np.zeros((n_bars, bar), dtype=bool)
    for track in music.tracks:
        for note in track.notes:
            onsets[divmod(note.time, bar)] = True
    return 1.0 - np.count_nonzero(onsets[:-1] != onsets[1:]) / (bar * (n_bars - 1))


# name -> function of one muspy.Music; each docstring (MusPy's own where used as is) gives the definition.
STATISTICS: dict[str, Callable[[muspy.Music], float]] = {
    "pitch_range": muspy.pitch_range,
    "n_pitches_used": muspy.n_pitches_used,
    "n_pitch_classes_used": muspy.n_pitch_classes_used,
    "polyphony": muspy.polyphony,
    "polyphony_rate": polyphony_rate,
    "scale_consistency": muspy.scale_consistency,
    "pitch_class_entropy": muspy.pitch_class_entropy,
    "pitch_entropy": muspy.pitch_entropy,
    "empty_beat_rate": muspy.empty_beat_rate,
    "groove_consistency": groove_consistency,
}


def piece_statistics(piece: Piece) -> dict[str, float]:
    """Every statistic of STATISTICS for one piece; all NaN for a piece without notes."""
    if not len(piece):
        return {name: math.nan for name in STATISTICS}
    music = to_music(piece)
    return {name: float(statistic(music)) for name, statistic in STATISTICS.items()}


# -- Yang & Lerch features ----------------------------------------------------------------------------

# Note-length classes in beats: whole, half, quarter, 8th, 16th; the same dotted; half, quarter and
# 8th triplets. Yang & Lerch's twelve classes, with a bar of 4 beats.
NOTE_LENGTHS = np.array([4, 2, 1, 1 / 2, 1 / 4, 3, 3 / 2, 3 / 4, 3 / 8, 4 / 3, 2 / 3, 1 / 3])


def pitch_count(piece: Piece) -> float:
    """Number of distinct MIDI pitches used."""
    return float(len(np.unique(piece.pitch)))


def pitch_class_histogram(piece: Piece) -> np.ndarray:
    """Fraction of notes in each of the 12 pitch classes (C = 0); zeros for an empty piece."""
    counts = np.bincount(piece.pitch % 12, minlength=12).astype(float)
    return counts / max(counts.sum(), 1.0)


def pitch_class_transition_matrix(piece: Piece) -> np.ndarray:
    """12×12 fraction of consecutive note pairs (in (onset, pitch) order) going from class i to class j.

    Divided by the number of transitions (Yang & Lerch leave it as counts), so pieces of different
    lengths compare.
    """
    pc = piece.pitch % 12
    counts = np.bincount(pc[:-1] * 12 + pc[1:], minlength=144).astype(float) if len(pc) > 1 else np.zeros(144)
    return counts.reshape(12, 12) / max(counts.sum(), 1.0)


def pitch_range(piece: Piece) -> float:
    """Highest minus lowest MIDI pitch, in semitones."""
    return float(np.ptp(piece.pitch)) if len(piece) else 0.0


def average_pitch_interval(piece: Piece) -> float:
    """Mean absolute interval, in semitones, between consecutive notes in (onset, pitch) order."""
    return float(np.abs(np.diff(piece.pitch)).mean()) if len(piece) > 1 else 0.0


def note_count(piece: Piece) -> float:
    """Number of notes."""
    return float(len(piece))


def average_inter_onset_interval(piece: Piece) -> float:
    """Mean time, in beats, between consecutive distinct onsets.

    Distinct onsets, not every note's (Yang & Lerch's toolbox counts a chord's notes as 0-beat
    intervals), so the number measures rhythm rather than chord density.
    """
    onsets = np.unique(piece.onset)
    return float(np.diff(onsets).mean()) if len(onsets) > 1 else 0.0


def note_length_classes(duration: np.ndarray) -> np.ndarray:
    """Index into NOTE_LENGTHS of the class nearest to each duration (in beats)."""
    return np.abs(np.asarray(duration, dtype=float)[:, None] - NOTE_LENGTHS[None, :]).argmin(axis=1)


def note_length_histogram(piece: Piece) -> np.ndarray:
    """Fraction of notes in each of the 12 note-length classes of NOTE_LENGTHS."""
    counts = np.bincount(note_length_classes(piece.duration), minlength=12).astype(float)
    return counts / max(counts.sum(), 1.0)


def note_length_transition_matrix(piece: Piece) -> np.ndarray:
    """12×12 fraction of consecutive note pairs going from length class i to length class j."""
    k = note_length_classes(piece.duration)
    counts = np.bincount(k[:-1] * 12 + k[1:], minlength=144).astype(float) if len(k) > 1 else np.zeros(144)
    return counts.reshape(12, 12) / max(counts.sum(), 1.0)


FEATURES: dict[str, Callable[[Piece], float | np.ndarray]] = {
    "pitch_count": pitch_count,
    "pitch_class_histogram": pitch_class_histogram,
    "pitch_class_transition_matrix": pitch_class_transition_matrix,
    "pitch_range": pitch_range,
    "average_pitch_interval": average_pitch_interval,
    "note_count": note_count,
    "average_inter_onset_interval": average_inter_onset_interval,
    "note_length_histogram": note_length_histogram,
    "note_length_transition_matrix": note_length_transition_matrix,
}


def feature_values(pieces: Sequence[Piece]) -> dict[str, np.ndarray]:
    """feature name -> [n_pieces, d] array of each piece's feature, flattened (d = 1 for scalars)."""
    return {name: np.array([np.ravel(feature(p)) for p in pieces], dtype=float).reshape(len(pieces), -1)
            for name, feature in FEATURES.items()}


# -- distances between sets ---------------------------------------------------------------------------

def intra_set_distances(values: np.ndarray) -> np.ndarray:
    """Euclidean distances between every pair of pieces of one set, each pair once.

    Yang & Lerch's leave-one-out cross-validation visits each unordered pair twice; the distribution
    is the same.
    """
    return pdist(values)


def inter_set_distances(values: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """Euclidean distances from every piece of one set to every piece of the reference."""
    return cdist(values, reference).ravel()


_GRID = 1024
_MIN_SPAN_FRACTION = 1 / 200


def kde_bandwidth(samples: np.ndarray, floor: float) -> float:
    """Scott's rule (scipy.stats.gaussian_kde's default: std · n^(-1/5)), never below `floor`.

    The floor gives a set of identical distances (a point mass: e.g. the note count of fixed-length
    segments) a narrow density instead of a singular one.
    """
    std = float(np.std(samples, ddof=1)) if len(samples) > 1 else 0.0
    return max(std * len(samples) ** (-1 / 5), floor)


def kde(samples: np.ndarray, grid: np.ndarray, bandwidth: float) -> np.ndarray:
    """Gaussian kernel density of `samples` on an evenly spaced `grid` (of 2 or more points).

    The samples are first spread linearly onto their two nearest grid points, then the counts are
    convolved with the kernel (binned KDE, as in Silverman 1982 and KDEpy): the error is of order
    (grid step / bandwidth)², and the cost no longer grows with samples × grid points.
    """
    samples = np.asarray(samples, dtype=float)
    n, step = len(grid), float(grid[1] - grid[0])
    pos = np.clip((samples - grid[0]) / step, 0, n - 1)
    left = np.minimum(np.floor(pos).astype(np.int64), n - 2)
    w = pos - left
    counts = np.bincount(left, 1 - w, minlength=n) + np.bincount(left + 1, w, minlength=n)
    # The kernel spans the whole grid: a truncated one would leave exact zeros in the tails, and the KL
    # divergence would then depend on where the truncation falls.
    half = n - 1
    offsets = np.arange(-half, half + 1) * step
    kernel = np.exp(-0.5 * (offsets / bandwidth) ** 2) / (bandwidth * math.sqrt(2 * math.pi))
    return np.convolve(counts, kernel)[half:half + n] / len(samples)


def grid_densities(samples: Sequence[np.ndarray], points: int = _GRID) -> tuple[np.ndarray, list[np.ndarray]]:
    """(grid, one kernel density per sample set) on one grid spanning all sets and 4 bandwidths beyond.

    No kernel is narrower than 1/200 of the pooled range (0.5 when that range is 0), so every
    density is resolved by the grid.
    """
    if not samples or any(not len(s) for s in samples):
        raise ValueError("a density needs at least one distance in each set")
    pooled = np.concatenate(samples)
    span = float(np.ptp(pooled))
    floor = span * _MIN_SPAN_FRACTION if span > 0 else 0.5
    bandwidths = [kde_bandwidth(s, floor) for s in samples]
    pad = 4 * max(bandwidths)
    grid = np.linspace(pooled.min() - pad, pooled.max() + pad, points)
    return grid, [kde(s, grid, bw) for s, bw in zip(samples, bandwidths, strict=True)]


def densities(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(grid, density of a, density of b), as `grid_densities` makes them."""
    grid, (p, q) = grid_densities([a, b])
    return grid, p, q


def _overlap(grid: np.ndarray, p: np.ndarray, q: np.ndarray) -> float:
    return float(min(np.trapezoid(np.minimum(p, q), grid), 1.0))


def _kl(p: np.ndarray, q: np.ndarray) -> float:
    p, q = np.maximum(p, 1e-300), np.maximum(q, 1e-300)
    p, q = p / p.sum(), q / q.sum()
    return max(0.0, float(np.sum(p * np.log(p / q))))  # rounding can dip below 0


def overlap_area(a: np.ndarray, b: np.ndarray) -> float:
    """Area under the smaller of the two kernel densities of samples a and b: 1 = same, 0 = disjoint."""
    return _overlap(*densities(a, b))


def kl_divergence(a: np.ndarray, b: np.ndarray) -> float:
    """KL(P_a ‖ P_b) in nats between the kernel densities of samples a and b, on a shared grid.

    Yang & Lerch's toolbox does the same with scipy.stats.entropy on the sampled densities; both are
    floored at 1e-300 so a tail that underflows gives a large number rather than infinity.
    """
    _, p, q = densities(a, b)
    return _kl(p, q)


@dataclass(frozen=True)
class Similarity:
    """One feature's comparison of a set with the reference."""

    intra: np.ndarray  # the reference's intra-set distances
    inter: np.ndarray  # set → reference distances
    oa: float  # overlapping area of the two densities
    kl: float  # KL(reference intra ‖ inter)

    @property
    def constant(self) -> bool:
        """Every reference piece has the same value (all intra-set distances 0). The feature then tells
        only whether a piece hits that value exactly: the note count of fixed-length segments, which a
        piece misses by one merged chord note (`Piece.from_notes`). Such a feature is reported but left
        out of `oa_mean` and `kl_mean`."""
        return not np.any(self.intra > 0)


def distribution_similarity(values: Mapping[str, np.ndarray],
                            reference: Mapping[str, np.ndarray]) -> dict[str, Similarity]:
    """For each feature: how the set's distances to the reference compare with the reference's own.

    `values` and `reference` come from `feature_values`. A set drawn from the reference's distribution
    gives OA near 1 and KL near 0.
    """
    result = {}
    for name in FEATURES:
        intra = intra_set_distances(reference[name])
        inter = inter_set_distances(values[name], reference[name])
        grid, p, q = densities(intra, inter)
        result[name] = Similarity(intra, inter, _overlap(grid, p, q), _kl(p, q))
    return result


# -- framewise self-similarity (Mittal et al. 2021) ---------------------------------------------------

FRAME_FEATURES = ("pitch", "duration")


def quantize(piece: Piece, quantum: float = QUANTUM) -> Piece:
    """Onsets and durations rounded to the grid; a note keeps at least one grid step of length."""
    onset = np.rint(piece.onset / quantum) * quantum
    duration = np.maximum(np.rint(piece.duration / quantum), 1) * quantum
    return Piece.from_notes(piece.pitch, onset, duration)


def frame_overlaps(piece: Piece, feature: str, frame_beats: float = 16.0,
                   hop_beats: float = 8.0) -> np.ndarray:
    """Overlapping areas of the Gaussians fitted to adjacent frames' pitches or durations.

    Notes are quantized to 16ths. Frames are `frame_beats` long (4 bars) and start every `hop_beats`
    (2 bars); a note belongs to the frame its onset falls in. Only whole frames count: they must end
    within the piece's last bar, so a piece shorter than frame + hop beats (6 bars by default; a
    128-note segment of dense piano music can be) contributes no pair. A frame without notes has no
    Gaussian, so its pairs are skipped.

    Each frame's Gaussian has the mean and variance of its values (pitch in semitones, duration in
    16ths) plus 1/12, the variance of the rounding to a step of 1 (Sheppard): a frame of equal values
    is then a narrow Gaussian, not a point, and two such frames overlap by how close their values are.
    """
    if feature not in FRAME_FEATURES:
        raise ValueError(f"feature must be one of {FRAME_FEATURES}, got {feature!r}")
    if not len(piece):
        return np.zeros(0)
    q = quantize(piece)
    values = q.pitch.astype(float) if feature == "pitch" else q.duration / QUANTUM
    bar = float(BEATS_PER_BAR)
    covered = math.ceil(float((q.onset + q.duration).max()) / bar) * bar
    n_frames = int((covered - frame_beats) // hop_beats) + 1 if covered >= frame_beats else 0
    gaussians: list[NormalDist | None] = []
    for k in range(n_frames):
        start = k * hop_beats
        inside = values[(q.onset >= start) & (q.onset < start + frame_beats)]
        gaussians.append(NormalDist(inside.mean(), math.sqrt(inside.var() + 1 / 12)) if len(inside) else None)
    pairs = zip(gaussians[:-1], gaussians[1:], strict=True)
    return np.array([a.overlap(b) for a, b in pairs if a is not None and b is not None])


def pooled_frame_overlaps(pieces: Sequence[Piece], feature: str, frame_beats: float = 16.0,
                          hop_beats: float = 8.0) -> np.ndarray:
    """Every adjacent-frame overlap of every piece, pooled (each pair counts once, as in Mittal et al.)."""
    parts = [frame_overlaps(p, feature, frame_beats, hop_beats) for p in pieces]
    return np.concatenate(parts) if parts else np.zeros(0)


def consistency(overlaps: np.ndarray, reference: np.ndarray) -> float:
    """max(0, 1 − |μ − μ_ref| / μ_ref) for the means of two sets of frame overlaps; NaN if either is empty."""
    if not len(overlaps) or not len(reference) or reference.mean() == 0:
        return math.nan
    return max(0.0, 1.0 - abs(overlaps.mean() - reference.mean()) / reference.mean())


def variance(overlaps: np.ndarray, reference: np.ndarray) -> float:
    """max(0, 1 − |σ² − σ²_ref| / σ²_ref) for the variances of two sets of frame overlaps; NaN if either
    is empty."""
    if not len(overlaps) or not len(reference) or reference.var() == 0:
        return math.nan
    return max(0.0, 1.0 - abs(overlaps.var() - reference.var()) / reference.var())


# -- one report for several sets ----------------------------------------------------------------------

@dataclass(frozen=True)
class SetReport:
    """Everything measured for one set against the reference."""

    statistics: dict[str, np.ndarray]  # statistic -> one value per piece (NaN where undefined)
    similarity: dict[str, Similarity]
    overlaps: dict[str, np.ndarray]  # "pitch" / "duration" -> pooled adjacent-frame overlaps


def _mean_std(x: np.ndarray) -> tuple[float, float]:
    x = x[np.isfinite(x)]
    return (float(x.mean()), float(x.std())) if len(x) else (math.nan, math.nan)


def evaluate_sets(sets: Mapping[str, Sequence[Piece]], reference: Sequence[Piece],
                  reference_name: str = "test", frame_beats: float = 16.0,
                  hop_beats: float = 8.0) -> dict[str, SetReport]:
    """Measure each set, and the reference itself, against the reference.

    The reference's own report compares it with itself: its similarity is its intra-set distances
    against its distances to itself (OA near 1), and its frame overlaps are the ground truth. Raises
    ValueError for a reference of fewer than 2 pieces or an empty set.
    """
    if len(reference) < 2:
        raise ValueError(f"the reference set needs at least 2 pieces, got {len(reference)}")
    empty = [name for name, pieces in sets.items() if not len(pieces)]
    if empty:
        raise ValueError(f"no pieces in set(s) {', '.join(empty)}")
    ref_values = feature_values(reference)
    reports = {}
    for name, pieces in {reference_name: reference, **sets}.items():
        stats = [piece_statistics(p) for p in pieces]
        values = ref_values if name == reference_name else feature_values(pieces)
        reports[name] = SetReport(
            statistics={s: np.array([row[s] for row in stats], dtype=float) for s in STATISTICS},
            similarity=distribution_similarity(values, ref_values),
            overlaps={f: pooled_frame_overlaps(pieces, f, frame_beats, hop_beats) for f in FRAME_FEATURES},
        )
    return reports


def constant_features(reports: Mapping[str, SetReport], reference_name: str = "test") -> list[str]:
    """The features left out of `oa_mean` and `kl_mean`: constant over the reference
    (`Similarity.constant`)."""
    return [f for f, s in reports[reference_name].similarity.items() if s.constant]


def flat_metrics(reports: Mapping[str, SetReport], reference_name: str = "test") -> dict[str, float]:
    """`{set}.{statistic}.mean/std`, `{set}.oa.{feature}`, `{set}.kl.{feature}`, `{set}.oa_mean` (over the
    features that vary in the reference, `constant_features`), `{set}.oa_mean_all` (over all nine),
    `{set}.framewise.{pitch|duration}.{mean|var|consistency|variance|pairs}`, `{set}.n_pieces`.

    Keys whose value is undefined (NaN) are left out: JSON has no NaN, and `dvc metrics diff` should
    show a missing number as missing.
    """
    ref_overlaps = reports[reference_name].overlaps
    out: dict[str, float] = {}
    for name, report in reports.items():
        n = len(next(iter(report.statistics.values()))) if report.statistics else 0
        out[f"{name}.n_pieces"] = n
        for stat, values in report.statistics.items():
            out[f"{name}.{stat}.mean"], out[f"{name}.{stat}.std"] = _mean_std(values)
        for feature, sim in report.similarity.items():
            out[f"{name}.oa.{feature}"], out[f"{name}.kl.{feature}"] = sim.oa, sim.kl
        informative = [s for s in report.similarity.values() if not s.constant] or \
            list(report.similarity.values())
        out[f"{name}.oa_mean"] = float(np.mean([s.oa for s in informative]))
        out[f"{name}.kl_mean"] = float(np.mean([s.kl for s in informative]))
        # The mean over every feature, as it was computed before constant features were left out.
        out[f"{name}.oa_mean_all"] = float(np.mean([s.oa for s in report.similarity.values()]))
        for feature, overlaps in report.overlaps.items():
            key = f"{name}.framewise.{feature}"
            out[f"{key}.pairs"] = len(overlaps)
            if len(overlaps):
                out[f"{key}.mean"], out[f"{key}.var"] = float(overlaps.mean()), float(overlaps.var())
            out[f"{key}.consistency"] = consistency(overlaps, ref_overlaps[feature])
            out[f"{key}.variance"] = variance(overlaps, ref_overlaps[feature])
    return {k: v for k, v in out.items() if not (isinstance(v, float) and math.isnan(v))}


def density_tables(reports: Mapping[str, SetReport], reference_name: str = "test",
                   points: int = 200) -> dict[str, dict[str, np.ndarray]]:
    """feature -> {"distance": grid, reference_name: its intra-set density, set: its inter-set density}.

    The curves Yang & Lerch plot: where a set's distances to the reference sit against the
    reference's own spread.
    """
    tables = {}
    for feature in FEATURES:
        columns = {reference_name: reports[reference_name].similarity[feature].intra}
        columns.update({name: r.similarity[feature].inter for name, r in reports.items()
                        if name != reference_name})
        grid, dens = grid_densities(list(columns.values()), points)
        tables[feature] = {"distance": grid, **dict(zip(columns, dens, strict=True))}
    return tables


SUMMARY_COLUMNS = ("oa_mean", "kl_mean", "framewise.pitch.consistency", "framewise.pitch.variance",
                   "framewise.duration.consistency", "framewise.duration.variance", "scale_consistency.mean",
                   "edge_fraction", "chord_fraction", "grid_fraction", "merged_notes", "oa_mean_all")


# -- two failure modes a mean over pieces hides ---------------------------------------------------------

def edge_fraction(pieces: Sequence[Piece], low: int, high: int) -> float:
    """Fraction of all notes at or beyond the pitch range's ends (`low`, `high`: the train split's lowest
    and highest MIDI pitch). Real music rarely sits there; a sampler that clips what the network
    overshoots piles notes up exactly there."""
    pitch = np.concatenate([p.pitch for p in pieces] or [np.zeros(0)])
    return float(np.mean((pitch <= low) | (pitch >= high))) if len(pitch) else math.nan


def chord_fraction(pieces: Sequence[Piece]) -> float:
    """Fraction of notes (after each piece's first) that start together with the note before them: a
    delta of 0. Chorales are 65% such notes, four voices to a chord."""
    same = [np.abs(np.diff(p.onset)) < 1e-9 for p in pieces if len(p) > 1]
    return float(np.mean(np.concatenate(same))) if same else math.nan


def grid_fraction(pieces: Sequence[Piece], grid: float) -> float:
    """Fraction of all durations and deltas (onset minus the previous note's onset) that are whole
    multiples of `grid` beats, the rhythmic grid of the training data (1/4 beat for the chorales)."""
    times = [np.concatenate([p.duration, np.diff(p.onset)]) for p in pieces if len(p)]
    if not times:
        return math.nan
    t = np.concatenate(times) / grid
    return float(np.mean(np.abs(t - np.rint(t)) < 1e-6))


def summary_rows(metrics: Mapping[str, float], sets: Sequence[str]) -> list[dict[str, float | str]]:
    """One row per set: its name and the SUMMARY_COLUMNS taken from `flat_metrics` (NaN where missing)."""
    return [{"set": name, **{c: metrics.get(f"{name}.{c}", math.nan) for c in SUMMARY_COLUMNS}}
            for name in sets]
