"""How a note's (frequency Hz, duration beats, delta beats) become the three numbers the model sees.

One `Encoding` serves both directions: the prepare stage encodes notes into segments, and sampling,
evaluation and the baselines decode segments back into notes. Three independent choices (params.yaml
`features`):

- pitch: `frequency` (Hz, the original), `log_frequency` (log2 Hz) or `midi` (semitones). The last two
  differ only by an affine map, so after scaling they give the same numbers; both exist so that either
  name can be asked for, and the seed's claim about Hz is testable against them.
- time (duration and delta alike): `linear` (beats, the original) or `log`: log2(1 + beats / TIME_UNIT).
  The offset keeps a chord's delta of exactly 0 at exactly 0, and spreads the common 16th..half notes
  instead of crowding them near 0 as the linear scale does.
- scale: `minmax` ([0, 1], the original), `symmetric` ([-1, 1]) or `standard` (zero mean, unit variance),
  every statistic from the train split. Diffusion adds unit-variance noise, so the scale sets the signal to
  noise ratio at every timestep.

Every transform is monotonic, so the train split's min/max of the raw features bound the encoded values
(`bounds`), which is what sampling may clip an estimate of x_0 to.

Those three numbers are what prepare stores. The model may see them through a *lattice code* instead
(`code`/`uncode`), so that every value meets the musical lattice in the network's space, not only at decode:

- pitch `helix`: the circle of fifths (cos, sin of 2π·7p/12) beside the height (the stored pitch value), so
  the notes of a key sit together and a small error lands on a neighbouring fifth, not a chromatic
  neighbour; `pitch_class`: twelve ±1 pitch-class channels beside the height (a categorical form). Both
  decode to the nearest pitch of the train split's range.
- time `grid`: the stored log time, decoded to the nearest multiple of the data's grid (stats.json
  `grid`: 1/4 beat for the chorales); on data without a grid it is the plain log time.
- time `classes`: the stored log time beside a ±1 one-hot over the grid's multiples in the train range
  (delta's from 0, its own class), decoded to the nearest code. Neighbouring durations are a fixed
  distance apart however close their logs lie, so a value the network is unsure of is a choice between
  classes, not a blend of them that decodes to a third (an eighth and a quarter averaged to a dotted
  eighth). On data without a grid it is the plain log time too.
- `chord`: one more channel, +1 where a note starts with the one before it (delta 0), else -1. A chord
  is then a class of its own, not a point at the edge of the delta range that noise smears into small
  positive deltas; where it is set, delta decodes to 0, elsewhere to at least one grid step.

Stored values for those kinds are the `midi` pitch and `log` time, so one prepared folder serves a model of
either code. With every kind scalar and no chord channel, the code is the stored values themselves.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from pipeline.errors import DmcError

FEATURES = ("frequency", "duration", "delta")
PITCH_CODES = {"helix": 2, "pitch_class": 12}  # lattice pitch codes -> channels beside the height
PITCH = ("frequency", "log_frequency", "midi", *PITCH_CODES)
TIME = ("linear", "log", "grid", "classes")
# What prepare stores for a lattice kind:
STORED = {"helix": "midi", "pitch_class": "midi", "grid": "log", "classes": "log"}
FIFTHS = 7  # semitones per step round the circle of fifths
SCALE = ("minmax", "symmetric", "standard")
TIME_UNIT = 0.125  # beats (a 32nd note): log time is log2(1 + beats / TIME_UNIT)
ORIGINAL = {"pitch": "frequency", "time": "linear", "scale": "minmax", "chord": False}
# Candidate rhythmic grids in beats, coarsest first; the data's grid is the first that holds GRID_SHARE.
GRIDS = (1.0, 1 / 2, 1 / 3, 1 / 4, 1 / 6, 1 / 8, 1 / 12, 1 / 16, 1 / 24, 1 / 32)
GRID_SHARE = 0.99
MAX_TIME_CLASSES = 128  # time `classes`: more grid multiples than this in the train range are refused


def _pitch(values: np.ndarray, kind: str, inverse: bool = False) -> np.ndarray:
    kind = STORED.get(kind, kind)
    if kind == "frequency":
        return values
    if kind == "log_frequency":
        return np.exp2(values) if inverse else np.log2(np.maximum(values, 1e-6))
    return 440.0 * np.exp2((values - 69.0) / 12.0) if inverse else \
        69.0 + 12.0 * np.log2(np.maximum(values, 1e-6) / 440.0)


def _time(values: np.ndarray, kind: str, inverse: bool = False) -> np.ndarray:
    if STORED.get(kind, kind) == "linear":
        return values
    if inverse:
        return (np.exp2(values) - 1.0) * TIME_UNIT
    return np.log2(1.0 + np.maximum(values, 0) / TIME_UNIT)


def _per_feature(values: np.ndarray, axis: int, pitch_fn, time_fn) -> np.ndarray:
    values = np.asarray(values, dtype=np.float64)
    out = np.empty_like(values)
    take = [slice(None)] * values.ndim
    for f in range(len(FEATURES)):
        take[axis] = f
        out[tuple(take)] = (pitch_fn if f == 0 else time_fn)(values[tuple(take)])
    return out


def transform(raw: np.ndarray, pitch: str, time: str, axis: int = 1) -> np.ndarray:
    """Raw features -> the pitch and time encodings' values, not yet scaled."""
    return _per_feature(raw, axis, lambda v: _pitch(v, pitch), lambda v: _time(v, time))


def untransform(values: np.ndarray, pitch: str, time: str, axis: int = 1) -> np.ndarray:
    """The inverse of `transform`."""
    return _per_feature(values, axis, lambda v: _pitch(v, pitch, True), lambda v: _time(v, time, True))


def _check(pitch: str, time: str, scale: str) -> None:
    for what, value, options in (("pitch", pitch, PITCH), ("time", time, TIME), ("scale", scale, SCALE)):
        if value not in options:
            raise DmcError(f"features: unknown {what} encoding {value!r}; "
                           f"this dmc knows {', '.join(options)}")
    if (pitch in PITCH_CODES or time in STORED) and scale != "symmetric":
        raise DmcError(f"features: the lattice codes (pitch helix/pitch_class, time grid) sit in [-1, 1] "
                       f"beside symmetric values; use scale: symmetric, not {scale!r}")


def circle_of_fifths(midi: np.ndarray | int) -> np.ndarray:
    """MIDI pitches [...] -> [2, ...]: the cos and sin of each pitch class's place on the circle of fifths."""
    angle = 2 * np.pi * ((FIFTHS * (np.asarray(midi, dtype=np.int64) % 12)) % 12) / 12
    return np.stack([np.cos(angle), np.sin(angle)])


def helix(midi: np.ndarray | int, low: int, high: int) -> np.ndarray:
    """MIDI pitches [...] -> their helix code [3, ...]: the height (the pitch scaled to [-1, 1] over
    low..high, as the `symmetric` scale puts a stored `midi` pitch) and `circle_of_fifths`. The pitch
    `helix` of the note layout and every cell of the grid layout (`pipeline.data.voices`) are this code."""
    height = 2.0 * (np.asarray(midi, dtype=np.float64) - low) / max(high - low, 1) - 1.0
    return np.concatenate([height[None], circle_of_fifths(midi)])


def _distances(values: np.ndarray, table: np.ndarray) -> np.ndarray:
    """Squared Euclidean distances from each column of `values` [C, M] to each row of `table` [K, C]."""
    return ((values[None] - table[:, :, None]) ** 2).sum(axis=1)


def _distinct_in_chords(distance: np.ndarray, delta: np.ndarray) -> np.ndarray:
    """The nearest code of each note, except that no chord holds one pitch twice.

    `distance` [K, S, W]: each note's distance to every pitch code, notes in S sequences of W; `delta`
    [S, W]: a note with delta 0 sounds with the one before it. A written file can hold a pitch only once
    per onset, so a chord note whose nearest pitch another note of its chord already holds (the nearer
    one keeps it) takes its nearest free pitch instead of vanishing at write time.
    """
    best = distance.argmin(axis=0)
    n_codes, (sequences, width) = distance.shape[0], delta.shape
    # Chord i of the whole batch: a note starts a new one unless it sounds with the note before it.
    chord = np.cumsum(((delta != 0) | (np.arange(width) == 0)).ravel()).reshape(sequences, width)
    pairs, counts = np.unique(chord * n_codes + best, return_counts=True)
    for c in np.unique(pairs[counts > 1] // n_codes):  # only chords that hold a pitch twice
        s, notes = np.nonzero(chord == c)
        s = int(s[0])
        taken: set[int] = set()
        for j in sorted(notes, key=lambda j: distance[best[s, j], s, j]):
            best[s, j] = next((int(k) for k in np.argsort(distance[:, s, j]) if int(k) not in taken),
                              best[s, j])
            taken.add(int(best[s, j]))
    return best


@dataclass(frozen=True)
class Encoding:
    """Raw note features <-> encoded segment values. The feature axis is `axis` (1 for `[N, 3, H, W]`
    segments, 0 for `[3, ...]`). `lo`/`hi` are the train split's raw min/max per feature; `mean`/`std`
    are of the transformed (pre-scaling) values and only needed by `standard`. The defaults are the
    original method's encoding."""

    lo: Sequence[float]
    hi: Sequence[float]
    mean: Sequence[float] | None = None
    std: Sequence[float] | None = None
    pitch: str = "frequency"
    time: str = "linear"
    scale: str = "minmax"
    chord: bool = False  # a chord channel (module docstring)
    grid: float | None = None  # beats: the data's rhythmic grid, the lattice of time `grid`

    def __post_init__(self) -> None:
        _check(self.pitch, self.time, self.scale)
        if self.scale == "standard" and (self.mean is None or self.std is None):
            raise DmcError("features: scale 'standard' needs the train split's mean and std")
        for feature in (1, 2):
            if (n := len(self._classes(feature))) > MAX_TIME_CLASSES:
                raise DmcError(f"features: time classes would give {FEATURES[feature]} {n} classes (grid "
                               f"{self.grid:g} beats up to {self.hi[feature]:g}), more than "
                               f"{MAX_TIME_CLASSES}; use time: grid")

    # -- the two directions ----------------------------------------------------------------------------

    def encode(self, raw: np.ndarray, axis: int = 1) -> np.ndarray:
        """Raw features (Hz, beats, beats) -> encoded values (float64; cast to float32 for storage)."""
        offset, scale = self._affine()
        t = transform(raw, self.pitch, self.time, axis)
        return (t - self._along(offset, t, axis)) / self._along(scale, t, axis)

    def decode(self, x: np.ndarray, axis: int = 1) -> np.ndarray:
        """Encoded values -> raw features (float64). Values outside `bounds` decode to notes outside the
        train range (or to negative times, which callers floor at 0)."""
        x = np.asarray(x, dtype=np.float64)
        offset, scale = self._affine()
        t = x * self._along(scale, x, axis) + self._along(offset, x, axis)
        return untransform(t, self.pitch, self.time, axis)

    # -- the model's code: stored values <-> channels on the lattice ------------------------------------

    @property
    def scalar(self) -> bool:
        """The code is the three stored values themselves (the original's representation and its kin)."""
        return self.pitch not in PITCH_CODES and self.time not in STORED and not self.chord

    @property
    def channels(self) -> int:
        """Channels the model sees per note: pitch (1, or the height plus its code), duration and delta (1
        each, or the log time plus its classes), and the chord channel when there is one."""
        return self._groups()[-1].stop

    @property
    def class_channels(self) -> list[int]:
        """The model's one-hot ±1 channels: pitch_class's twelve and the time classes."""
        groups = self._groups()
        pitch = range(1, groups[0].stop) if self.pitch == "pitch_class" else range(0)
        return [*pitch, *range(groups[1].start + 1, groups[1].stop), *range(groups[2].start + 1, groups[2].stop)]

    def _groups(self) -> list[slice]:
        """The model's channels of the pitch, the duration, the delta and (when there is one) the chord."""
        widths = [1 + PITCH_CODES.get(self.pitch, 0), 1 + len(self._classes(1)), 1 + len(self._classes(2))]
        widths += [1] * int(self.chord)
        ends = np.cumsum([0, *widths])
        return [slice(int(a), int(b)) for a, b in zip(ends[:-1], ends[1:], strict=True)]

    def code(self, raw: np.ndarray, axis: int = 1) -> np.ndarray:
        """Raw features (Hz, beats, beats) -> the model's channels along `axis` (float64)."""
        return self.code_stored(self.encode(raw, axis), axis)

    def code_stored(self, stored: np.ndarray, axis: int = 1) -> np.ndarray:
        """Stored (encoded) values -> the model's channels; the same array when the code is scalar."""
        if self.scalar:
            return stored
        x = np.moveaxis(np.asarray(stored, dtype=np.float64), axis, 0)
        parts = [x[:1]]
        if self.pitch in PITCH_CODES:
            offset, scale = self._affine()
            parts.append(self._pitch_code(np.rint(x[0] * scale[0] + offset[0])))  # stored pitch is MIDI
        for feature in (1, 2):
            parts.append(x[feature:feature + 1])
            classes = self._classes(feature)
            if len(classes):
                index = self._nearest_point(x[feature], classes)
                parts.append(np.where(np.arange(len(classes)).reshape((-1,) + (1,) * index.ndim) == index,
                                      1.0, -1.0))
        if self.chord:  # delta 0 is the lowest stored delta value: the log of 0 beats
            zero = (_time(np.zeros(1), self.time)[0] - self._affine()[0][2]) / self._affine()[1][2]
            parts.append(np.where(np.abs(x[2] - zero) < 1e-6, 1.0, -1.0)[None])
        return np.moveaxis(np.concatenate(parts), 0, axis)

    def uncode(self, x: np.ndarray, axis: int = 1) -> np.ndarray:
        """The model's channels -> raw features (Hz, beats, beats), float64: each value clipped to the
        train split's range and, for the lattice kinds, the nearest point of its lattice."""
        x = np.moveaxis(np.nan_to_num(np.asarray(x, dtype=np.float64), nan=0.0), axis, 0)
        k = PITCH_CODES.get(self.pitch, 0)
        groups = self._groups()
        low, high = (b.reshape((3,) + (1,) * (x.ndim - 1)) for b in self.bounds)
        stored = np.clip(np.stack([x[g.start] for g in groups[:3]]), low, high)
        raw = self.decode(stored, axis=0)
        for feature in (1, 2):
            classes = self._classes(feature)
            if len(classes):
                beats, table = self._time_table(feature)
                code = np.concatenate([stored[feature:feature + 1], x[groups[feature]][1:]])
                distance = _distances(code.reshape(len(code), -1), table)
                if feature == 2 and self.chord:  # the chord channel alone gives delta 0 (below)
                    distance[0] = np.inf
                nearest = distance.argmin(axis=0)
                raw[feature] = beats[nearest].reshape(raw[feature].shape)
            elif self.time == "grid" and self.grid:
                raw[feature] = self._on_grid(stored[feature], feature, self._first(feature))
        if self.chord:
            raw[2] = np.where(x[groups[3].start] > 0, 0.0, raw[2])
        if self.pitch in PITCH_CODES:
            pitches, table = self._pitch_table()
            width = raw.shape[-1]
            distance = _distances(np.concatenate([stored[:1], x[1:1 + k]]).reshape(1 + k, -1), table)
            nearest = _distinct_in_chords(distance.reshape(len(table), -1, width), raw[2].reshape(-1, width))
            raw[0] = 440.0 * np.exp2((pitches[nearest].reshape(raw[0].shape) - 69.0) / 12.0)
        return np.moveaxis(raw, 0, axis)

    def code_groups(self) -> list[tuple[int, np.ndarray | None]]:
        """The model's channels as consecutive groups, one per value: (channels, table), where `table`
        [K, channels] lists every code a categorical group can hold (pitch: each pitch of the train range;
        duration and delta: each grid multiple in the train range, delta's from 0; chord: ±1), and None
        marks a continuous value. What a softmax head predicts a distribution over
        (`GaussianDiffusion`, prediction `softmax`)."""
        k = PITCH_CODES.get(self.pitch, 0)
        groups: list[tuple[int, np.ndarray | None]] = [(1 + k, self._pitch_table()[1] if k else None)]
        on_grid = self.time == "grid" and bool(self.grid)
        for feature, first in ((1, 1), (2, 0)):
            if len(self._classes(feature)):
                table = self._time_table(feature)[1]
                groups.append((table.shape[1], table))
            else:
                groups.append((1, self._grid_points(feature, first)[1][:, None] if on_grid else None))
        if self.chord:
            groups.append((1, np.array([[-1.0], [1.0]])))
        return groups

    @property
    def model_bounds(self) -> tuple[np.ndarray, np.ndarray]:
        """Per channel, the range the model's values of real notes lie in: the stored bounds for the height
        and the log times, [-1, 1] for the pitch code, the time classes and the chord channel."""
        low, high = np.full(self.channels, -1.0), np.ones(self.channels)
        for group, lo, hi in zip(self._groups(), *self.bounds, strict=False):  # the chord's group is ±1
            low[group.start], high[group.start] = lo, hi
        return low, high

    def _pitch_code(self, midi: np.ndarray) -> np.ndarray:
        """[k, ...] code channels (the height aside) of MIDI pitches: the fifths circle, or ±1 classes."""
        if self.pitch == "helix":
            return circle_of_fifths(midi)
        pc = np.asarray(midi, dtype=np.int64) % 12
        return np.stack([np.where(pc == c, 1.0, -1.0) for c in range(12)])

    @property
    def pitch_range(self) -> tuple[int, int]:
        """The train split's lowest and highest MIDI pitch."""
        low, high = (int(np.rint(69 + 12 * np.log2(f / 440.0))) for f in (self.lo[0], self.hi[0]))
        return low, high

    def _pitch_table(self) -> tuple[np.ndarray, np.ndarray]:
        """Every MIDI pitch of the train split's range and its full code, height first: [P], [P, 1 + k]."""
        low, high = self.pitch_range
        pitches = np.arange(low, high + 1)
        offset, scale = self._affine()
        height = (pitches - offset[0]) / scale[0]
        return pitches, np.concatenate([height[None], self._pitch_code(pitches)]).T

    def _on_grid(self, stored: np.ndarray, feature: int, first: int) -> np.ndarray:
        """Stored times of `feature` (1 duration, 2 delta) -> beats: the nearest multiple k·grid with
        k >= `first`, within the train range, nearest in the stored (log) space."""
        beats, points = self._grid_points(feature, first)
        return beats[self._nearest_point(stored, points)]

    @staticmethod
    def _nearest_point(stored: np.ndarray, points: np.ndarray) -> np.ndarray:
        """Index of the nearest of the ascending `points` to each stored value (the lower one on a tie)."""
        stored = np.asarray(stored)
        if len(points) < 2:
            return np.zeros(stored.shape, dtype=np.int64)
        i = np.clip(np.searchsorted(points, stored), 1, len(points) - 1)
        return np.where(np.abs(stored - points[i - 1]) <= np.abs(points[i] - stored), i - 1, i)

    def _first(self, feature: int) -> int:
        """The smallest grid multiple a decoded time takes: one step for a duration, and for a delta where
        a chord channel carries the zeros; else 0."""
        return 1 if feature == 1 or self.chord else 0

    def _classes(self, feature: int) -> np.ndarray:
        """Stored values of the time classes of `feature` (1 duration, from one grid step; 2 delta, from
        0); none unless time is `classes` on data with a grid."""
        if self.time != "classes" or not self.grid:
            return np.zeros(0)
        return self._grid_points(feature, 1 if feature == 1 else 0)[1]

    def _time_table(self, feature: int) -> tuple[np.ndarray, np.ndarray]:
        """The time classes of `feature`: in beats [K], and their codes, the log time first [K, 1 + K]."""
        beats, points = self._grid_points(feature, 1 if feature == 1 else 0)
        return beats, np.concatenate([points[:, None], 2.0 * np.eye(len(points)) - 1.0], axis=1)

    def _grid_points(self, feature: int, first: int) -> tuple[np.ndarray, np.ndarray]:
        """The multiples k·grid (k >= `first`) within the train range of `feature`: in beats, and stored."""
        offset, scale = self._affine()
        top = max(first, int(np.floor(self.hi[feature] / self.grid + 1e-9)))
        beats = np.arange(first, top + 1) * self.grid
        return beats, (_time(beats, self.time) - offset[feature]) / scale[feature]

    # -- what follows from the statistics --------------------------------------------------------------

    @property
    def bounds(self) -> tuple[np.ndarray, np.ndarray]:
        """Encoded values of the train split's raw min and max: [3] low, [3] high."""
        ends = self.encode(np.array([self.lo, self.hi], dtype=np.float64), axis=1)
        return ends[0], ends[1]

    def transpose_map(self, semitones: int) -> tuple[float, float]:
        """(m, c) with encode(pitch + semitones) = m * encode(pitch) + c for the pitch feature. Every pitch
        encoding is affine in Hz or in log Hz, and transposing is a factor in Hz, so the map is affine;
        it is measured at two points rather than derived per encoding."""
        e = np.array([[self.lo[0], 1.0, 1.0], [self.hi[0], 1.0, 1.0]])
        before = self.encode(e, axis=1)[:, 0]
        e[:, 0] *= 2.0 ** (semitones / 12.0)
        after = self.encode(e, axis=1)[:, 0]
        span = before[1] - before[0]
        m = (after[1] - after[0]) / span if span else 1.0
        return float(m), float(after[0] - m * before[0])

    def code_transpose(self, semitones: int) -> np.ndarray:
        """[k, k] M with code(pitch + semitones) = M @ code(pitch) for the k channels beside the height:
        a rotation of the fifths circle (helix), a permutation of the classes (pitch_class); [0, 0] for a
        scalar pitch. Each code is linear in its pitch class's place, so M is solved from the twelve
        classes rather than derived per code."""
        if self.pitch not in PITCH_CODES:
            return np.zeros((0, 0))
        classes = np.arange(12)
        return self._pitch_code(classes + semitones) @ np.linalg.pinv(self._pitch_code(classes))

    def _affine(self) -> tuple[np.ndarray, np.ndarray]:
        """encoded = (transformed - offset) / scale, per feature."""
        t_lo = transform(np.asarray([self.lo]), self.pitch, self.time)[0]
        t_hi = transform(np.asarray([self.hi]), self.pitch, self.time)[0]
        span = np.where(t_hi > t_lo, t_hi - t_lo, 1.0)  # a constant feature maps to one value
        if self.scale == "minmax":
            return t_lo, span
        if self.scale == "symmetric":
            return (t_lo + t_hi) / 2, span / 2
        std = np.asarray(self.std, dtype=np.float64)
        return np.asarray(self.mean, dtype=np.float64), np.where(std > 0, std, 1.0)

    @staticmethod
    def _along(values: np.ndarray, x: np.ndarray, axis: int) -> np.ndarray:
        shape = [1] * np.ndim(x)
        shape[axis] = len(FEATURES)
        return np.asarray(values, dtype=np.float64).reshape(shape)

    # -- stats.json --------------------------------------------------------------------------------------

    def to_stats(self) -> dict[str, Any]:
        norm = {}
        for i, f in enumerate(FEATURES):
            norm[f] = {"min": float(self.lo[i]), "max": float(self.hi[i])}
            if self.mean is not None and self.std is not None:
                norm[f] |= {"mean": float(self.mean[i]), "std": float(self.std[i])}
        spec = {"pitch": self.pitch, "time": self.time, "scale": self.scale, "chord": self.chord}
        return {"encoding": spec, "normalization": norm}

    @classmethod
    def from_stats(cls, stats: dict[str, Any]) -> Encoding:
        """From a stats.json dict (or anything holding its "normalization" entry). Data prepared before
        encodings were selectable has no "encoding" entry and is the original's. The lattice of time
        `grid` is stats.json's `grid`."""
        spec = {**ORIGINAL, **(stats.get("encoding") or {})}
        try:
            norm = stats["normalization"]
            lo = tuple(float(norm[f]["min"]) for f in FEATURES)
            hi = tuple(float(norm[f]["max"]) for f in FEATURES)
            moments = all("mean" in norm[f] and "std" in norm[f] for f in FEATURES)
            mean = tuple(float(norm[f]["mean"]) for f in FEATURES) if moments else None
            std = tuple(float(norm[f]["std"]) for f in FEATURES) if moments else None
        except (KeyError, TypeError) as err:
            raise DmcError(f"stats: no normalization entry for {err}") from None
        return cls(lo=lo, hi=hi, mean=mean, std=std, pitch=spec["pitch"], time=spec["time"],
                   scale=spec["scale"], chord=bool(spec["chord"]), grid=stats.get("grid"))


class EncodingFit:
    """Accumulates the train split's statistics batch by batch (prepare streams its files), then gives
    the Encoding. Raw features come as `[N, 3, H, W]` with NaN where there is no note."""

    def __init__(self, pitch: str = "frequency", time: str = "linear", scale: str = "minmax",
                 chord: bool = False) -> None:
        _check(pitch, time, scale)
        self.spec = {"pitch": pitch, "time": time, "scale": scale}
        self.chord = chord
        self.lo = np.full(len(FEATURES), np.inf)
        self.hi = np.full(len(FEATURES), -np.inf)
        self.total = np.zeros(len(FEATURES))
        self.squares = np.zeros(len(FEATURES))
        self.count = np.zeros(len(FEATURES))
        self.on_grid = np.zeros(len(GRIDS))
        self.times = 0

    def add(self, raw: np.ndarray) -> None:
        raw = np.asarray(raw, dtype=np.float64)
        if not raw.size or not np.isfinite(raw).any():
            return
        self.lo = np.fmin(self.lo, np.nanmin(raw, axis=(0, 2, 3)))
        self.hi = np.fmax(self.hi, np.nanmax(raw, axis=(0, 2, 3)))
        t = transform(raw, self.spec["pitch"], self.spec["time"])
        self.total += np.nansum(t, axis=(0, 2, 3))
        self.squares += np.nansum(t * t, axis=(0, 2, 3))
        self.count += np.sum(np.isfinite(t), axis=(0, 2, 3))
        beats = raw[:, 1:].ravel()
        beats = beats[np.isfinite(beats)]
        self.times += len(beats)
        for g, grid in enumerate(GRIDS):
            self.on_grid[g] += np.count_nonzero(np.abs(beats / grid - np.rint(beats / grid)) < 1e-6)

    def encoding(self) -> Encoding:
        mean = self.total / np.maximum(self.count, 1)
        std = np.sqrt(np.maximum(self.squares / np.maximum(self.count, 1) - mean**2, 0.0))
        return Encoding(lo=tuple(map(float, self.lo)), hi=tuple(map(float, self.hi)),
                        mean=tuple(map(float, mean)), std=tuple(map(float, std)), **self.spec,
                        chord=self.chord, grid=self.grid())

    def grid(self) -> float | None:
        """The coarsest candidate grid (beats) that GRID_SHARE of durations and deltas lie on, if any."""
        for g, grid in enumerate(GRIDS):
            if self.times and self.on_grid[g] >= GRID_SHARE * self.times:
                return grid
        return None
