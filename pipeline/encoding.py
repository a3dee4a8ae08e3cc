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
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from pipeline.errors import DmcError

FEATURES = ("frequency", "duration", "delta")
PITCH = ("frequency", "log_frequency", "midi")
TIME = ("linear", "log")
SCALE = ("minmax", "symmetric", "standard")
TIME_UNIT = 0.125  # beats (a 32nd note): log time is log2(1 + beats / TIME_UNIT)
ORIGINAL = {"pitch": "frequency", "time": "linear", "scale": "minmax"}
# Candidate rhythmic grids in beats, coarsest first; the data's grid is the first that holds GRID_SHARE.
GRIDS = (1.0, 1 / 2, 1 / 3, 1 / 4, 1 / 6, 1 / 8, 1 / 12, 1 / 16, 1 / 24, 1 / 32)
GRID_SHARE = 0.99


def _pitch(values: np.ndarray, kind: str, inverse: bool = False) -> np.ndarray:
    if kind == "frequency":
        return values
    if kind == "log_frequency":
        return np.exp2(values) if inverse else np.log2(np.maximum(values, 1e-6))
    return 440.0 * np.exp2((values - 69.0) / 12.0) if inverse else \
        69.0 + 12.0 * np.log2(np.maximum(values, 1e-6) / 440.0)


def _time(values: np.ndarray, kind: str, inverse: bool = False) -> np.ndarray:
    if kind == "linear":
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

    def __post_init__(self) -> None:
        _check(self.pitch, self.time, self.scale)
        if self.scale == "standard" and (self.mean is None or self.std is None):
            raise DmcError("features: scale 'standard' needs the train split's mean and std")

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
        return {"encoding": {"pitch": self.pitch, "time": self.time, "scale": self.scale},
                "normalization": norm}

    @classmethod
    def from_stats(cls, stats: dict[str, Any]) -> Encoding:
        """From a stats.json dict (or anything holding its "normalization" entry). Data prepared before
        encodings were selectable has no "encoding" entry and is the original's."""
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
                   scale=spec["scale"])


class EncodingFit:
    """Accumulates the train split's statistics batch by batch (prepare streams its files), then gives
    the Encoding. Raw features come as `[N, 3, H, W]` with NaN where there is no note."""

    def __init__(self, pitch: str = "frequency", time: str = "linear", scale: str = "minmax") -> None:
        _check(pitch, time, scale)
        self.spec = {"pitch": pitch, "time": time, "scale": scale}
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
                        mean=tuple(map(float, mean)), std=tuple(map(float, std)), **self.spec)

    def grid(self) -> float | None:
        """The coarsest candidate grid (beats) that GRID_SHARE of durations and deltas lie on, if any."""
        for g, grid in enumerate(GRIDS):
            if self.times and self.on_grid[g] >= GRID_SHARE * self.times:
                return grid
        return None
