"""The grid layout: voices on one shared time axis, one row per voice, one column per step of the grid.

The note layout (`pipeline.data.segments`, `pipeline.compose.rows`) gives every row its own note sequence, so
column j of the alto and column j of the soprano are different times. Here column j is the same time in
every row: step j of the data's rhythmic grid (1/4 beat for the chorales), as Coconet and DeepBach lay
chorales out. A cell says what one voice does during one step:

- `state`: REST, ONSET (a note starts at this step) or HELD (the note started earlier still sounds);
- `pitch`: the MIDI pitch sounding (ONSET, HELD) or NO_PITCH (REST).

Encoded for the network, a cell is CHANNELS = 5 numbers:
- the circle-of-fifths helix of its pitch, the note layout's pitch `helix` (`pipeline.data.encoding.helix`):
  `height` (the MIDI pitch scaled to [-1, 1] over the train split's range), and the cosine and sine of
  2*pi*((7 * pitch) mod 12) / 12, so pitch classes a fifth apart are neighbours (a rest is 0, 0, 0);
- `sounding`: +1 for ONSET or HELD, -1 for REST;
- `onset`: +1 for ONSET, -1 otherwise.

Decoding reads sounding and onset by sign, merges each ONSET with the HELD steps after it into one note,
and takes as the note's pitch the valid pitch (the row's train range) nearest the mean code of its steps.
Notes whose onsets and durations lie on the grid, at most one at a time per voice, go through
notes -> grid -> notes exactly (`rows_to_grid` with snap=False refuses anything else).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from pipeline.data.encoding import helix
from pipeline.data.rows import RowNotes
from pipeline.errors import DmcError

CHANNELS = 5  # height, cos, sin (the pitch helix), sounding, onset
REST, ONSET, HELD = 0, 1, 2
NO_PITCH = -1
ON_GRID = 1e-6  # beats: a time this close to a grid line is on it


# -- the pitch code: the circle-of-fifths helix (pipeline.data.encoding.helix) ------------------------------------


@dataclass(frozen=True)
class PitchRange:
    """The train split's pitches: `low`..`high` over all voices (the height scale), and each row's own
    range (`rows`, inclusive), which decoding keeps every row inside."""

    low: int
    high: int
    rows: tuple[tuple[int, int], ...]

    def to_dict(self) -> dict[str, Any]:
        return {"low": self.low, "high": self.high, "rows": [list(r) for r in self.rows]}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> PitchRange:
        return cls(int(d["low"]), int(d["high"]), tuple((int(a), int(b)) for a, b in d["rows"]))


def nearest_pitch(code: np.ndarray, low: int, high: int, choices: tuple[int, int]) -> np.ndarray:
    """Helix codes [3, ...] -> the pitch in `choices` (inclusive) whose code is nearest (Euclidean)."""
    code = np.asarray(code, dtype=np.float64)
    candidates = np.arange(choices[0], choices[1] + 1)
    table = helix(candidates, low, high)  # [3, K]
    flat = code.reshape(3, -1)
    distance = ((flat[:, :, None] - table[:, None, :]) ** 2).sum(0)  # [N, K]
    return candidates[distance.argmin(1)].reshape(code.shape[1:])


# -- notes <-> grid ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class VoiceGrid:
    """Voices on a grid: `pitch` and `state` [H, W] (module docstring)."""

    pitch: np.ndarray
    state: np.ndarray

    @property
    def shape(self) -> tuple[int, int]:
        return self.pitch.shape  # type: ignore[return-value]

    def columns(self, first: int, last: int) -> VoiceGrid:
        """Steps first..last-1; steps past the end are rests."""
        h, w = self.shape
        pitch = np.full((h, last - first), NO_PITCH, dtype=np.int64)
        state = np.full((h, last - first), REST, dtype=np.int8)
        lo, hi = max(first, 0), min(last, w)
        if lo < hi:
            pitch[:, lo - first:hi - first] = self.pitch[:, lo:hi]
            state[:, lo - first:hi - first] = self.state[:, lo:hi]
        # A note cut by the window's left edge starts again there, as a window has no earlier steps.
        state[:, 0] = np.where(state[:, 0] == HELD, ONSET, state[:, 0])
        return VoiceGrid(pitch, state)

    def transposed(self, semitones: int) -> VoiceGrid:
        return VoiceGrid(np.where(self.state != REST, self.pitch + semitones, NO_PITCH), self.state)


def grid_steps(beats: np.ndarray, step: float, what: str, snap: bool) -> np.ndarray:
    """Times in beats -> whole grid steps; with snap=False a time off the grid is a DmcError."""
    steps = np.asarray(beats, dtype=np.float64) / step
    whole = np.rint(steps)
    if not snap and len(steps) and np.abs(steps - whole).max() * step > ON_GRID:
        bad = float(np.asarray(beats)[np.abs(steps - whole).argmax()])
        raise DmcError(f"{what} at beat {bad:g} is off the grid of {step:g} beats")
    return whole.astype(np.int64)


def rows_to_grid(rows: Sequence[RowNotes | None], step: float, start: float = 0.0, width: int | None = None,
                 snap: bool = False) -> VoiceGrid:
    """Notes of each voice (None: a silent voice) -> a VoiceGrid from beat `start`, `width` steps (default:
    up to the last note's end).

    snap=False is exact: a note off the grid, or overlapping another note of its voice, is a DmcError.
    snap=True rounds onsets and ends to the nearest step (at least one step long) and lets a later note cut
    an earlier one short; a note that rounds into one that starts at the same step gives way to it.
    """
    spans = []
    for h, row in enumerate(rows):
        if row is None or not len(row):
            spans.append((np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.int64)))
            continue
        order = np.lexsort((row.pitch, row.onset))
        onset = grid_steps(row.onset[order] - start, step, f"voice {h + 1}: a note", snap)
        end = grid_steps(row.onset[order] + row.duration[order] - start, step, f"voice {h + 1}: a note end",
                         snap)
        pitch = row.pitch[order].astype(np.int64)
        if snap:
            end = np.maximum(end, onset + 1)
            keep = np.append(onset[1:] != onset[:-1], True)  # of notes on one step, the last (top) one
            onset, end, pitch = onset[keep], end[keep], pitch[keep]
            end = np.minimum(end, np.append(onset[1:], np.iinfo(np.int64).max))
        elif len(onset) > 1 and (end[:-1] > onset[1:]).any():
            i = int(np.argmax(end[:-1] > onset[1:]))
            raise DmcError(f"voice {h + 1}: notes at beats {start + onset[i] * step:g} and "
                           f"{start + onset[i + 1] * step:g} overlap; a voice of the grid layout sounds one "
                           "note at a time")
        if (onset < 0).any():
            raise DmcError(f"voice {h + 1}: a note starts before beat {start:g}")
        spans.append((onset, end, pitch))
    last = max((int(e.max()) for _, e, _ in spans if len(e)), default=0)
    width = last if width is None else width
    pitch = np.full((len(rows), width), NO_PITCH, dtype=np.int64)
    state = np.full((len(rows), width), REST, dtype=np.int8)
    for h, (onset, end, p) in enumerate(spans):
        for a, b, q in zip(onset, np.minimum(end, width), p, strict=True):
            if a >= width:
                break
            pitch[h, a:b] = q
            state[h, a] = ONSET
            state[h, a + 1:b] = HELD
    return VoiceGrid(pitch, state)


def grid_to_rows(grid: VoiceGrid, step: float, start: float = 0.0) -> list[RowNotes]:
    """A VoiceGrid -> each voice's notes: an ONSET and the HELD steps after it are one note. A HELD step
    after a rest starts a note (a network's near miss), as does a change of pitch while held."""
    rows = []
    for pitch, state in zip(grid.pitch, grid.state, strict=True):
        sounding = state != REST
        previous_pitch = np.concatenate([[NO_PITCH], pitch[:-1]])
        previous_sounding = np.concatenate([[False], sounding[:-1]])
        starts = sounding & ((state == ONSET) | ~previous_sounding | (pitch != previous_pitch))
        first = np.flatnonzero(starts)
        # A note lasts until the next start or the next rest, whichever comes first.
        boundary = np.flatnonzero(starts | ~sounding)
        nxt = np.searchsorted(boundary, first, side="right")
        end = np.where(nxt < len(boundary), boundary[np.minimum(nxt, len(boundary) - 1)], len(state))
        rows.append(RowNotes.of(pitch[first], start + first * step, (end - first) * step))
    return rows


# -- grid <-> network values ------------------------------------------------------------------------------


def encode(grid: VoiceGrid, pitches: PitchRange) -> np.ndarray:
    """A VoiceGrid [H, W] -> float32 [CHANNELS, H, W] (module docstring)."""
    sounding = grid.state != REST
    code = helix(np.where(sounding, grid.pitch, pitches.low), pitches.low, pitches.high) * sounding
    flags = np.stack([np.where(sounding, 1.0, -1.0), np.where(grid.state == ONSET, 1.0, -1.0)])
    return np.concatenate([code, flags]).astype(np.float32)


def decode(x: np.ndarray, pitches: PitchRange) -> VoiceGrid:
    """Network values [CHANNELS, H, W] -> a VoiceGrid: states by sign, and each note's pitch the one in its
    row's range nearest the mean helix code over the note's steps."""
    x = np.nan_to_num(np.asarray(x, dtype=np.float64))
    sounding = x[3] > 0
    onset = sounding & (x[4] > 0)
    state = np.where(onset, ONSET, np.where(sounding, HELD, REST)).astype(np.int8)
    h, w = sounding.shape
    pitch = np.full((h, w), NO_PITCH, dtype=np.int64)
    for r in range(h):
        starts = sounding[r] & (onset[r] | ~np.concatenate([[False], sounding[r, :-1]]))
        note = np.cumsum(starts) - 1  # which note each sounding step belongs to
        n = int(starts.sum())
        if not n:
            continue
        where = np.flatnonzero(sounding[r])
        code = np.zeros((3, n))
        for c in range(3):
            code[c] = np.bincount(note[where], weights=x[c, r, where], minlength=n)
        code /= np.bincount(note[where], minlength=n)
        pitch[r, where] = nearest_pitch(code, pitches.low, pitches.high, pitches.rows[r])[note[where]]
    state = np.where(state == HELD, np.where(np.concatenate([np.zeros((h, 1), bool), sounding[:, :-1]], 1),
                                             HELD, ONSET), state).astype(np.int8)
    return VoiceGrid(pitch, state)


def code_groups(pitches: PitchRange) -> list[tuple[int, np.ndarray]]:
    """A cell's channels as the categorical groups a softmax head predicts over (`GaussianDiffusion`,
    prediction `softmax`): the helix code of each pitch of the train range and of a rest (0, 0, 0), then
    sounding and onset, ±1 each."""
    pitch_codes = helix(np.arange(pitches.low, pitches.high + 1), pitches.low, pitches.high).T
    flag = np.array([[-1.0], [1.0]])
    return [(3, np.concatenate([pitch_codes, np.zeros((1, 3))])), (1, flag), (1, flag)]


def pitch_range(rows: Sequence[Sequence[RowNotes | None]], n_rows: int) -> PitchRange:
    """The pitches of every file's voices: overall and per row (DmcError when a row never sounds)."""
    per_row: list[list[int]] = [[] for _ in range(n_rows)]
    for file_rows in rows:
        for h, row in enumerate(file_rows):
            if row is not None and len(row):
                per_row[h] += [int(row.pitch.min()), int(row.pitch.max())]
    if any(not r for r in per_row):
        raise DmcError("grid layout: a voice has no notes in the train split")
    bounds = tuple((min(r), max(r)) for r in per_row)
    return PitchRange(min(b[0] for b in bounds), max(b[1] for b in bounds), bounds)
