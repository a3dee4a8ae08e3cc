"""The model's code -> notes, and notes -> the model's code.

One window is a float array [C, H, W]: W coded notes on each of H instrument rows, the layout
`pipeline.data.segments` writes. Decoding inverts it:

    clip to the train split's bounds -> `pipeline.data.encoding` decodes
    -> pitch = round(69 + 12 log2(f / 440)) -> deltas under `chord_snap` become 0
    -> onset = the previous onset plus delta (beats)
    -> ticks at TICKS_PER_QUARTER, optionally on a grid (`to_ticks`, when a piece is written).

Training masks padding out of the loss, so the model writes a note at every position of every row; where
a window's rows end, and how they line up, is the generation's business (`pipeline.compose.rows`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from pipeline.data import midi
from pipeline.data.rows import RowNotes

TICKS_PER_QUARTER = 480
# Shortest note written when no grid is asked for: a 128th note. A decoded duration can round to 0 ticks.
MIN_DURATION_TICKS = TICKS_PER_QUARTER // 32


def frequency_to_pitch(frequency: np.ndarray) -> np.ndarray:
    """Nearest MIDI pitch in log-frequency (semitones), clipped to 0..127; non-positive Hz maps to 0."""
    f = np.asarray(frequency, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        semitones = 69.0 + 12.0 * np.log2(np.where(f > 0, f, np.nan) / 440.0)
    semitones = np.nan_to_num(np.rint(semitones), nan=0.0, posinf=127.0, neginf=0.0)
    return np.clip(semitones, 0, 127).astype(np.int16)


def decoded_features(x: np.ndarray, encoding: Any, keep: np.ndarray | None = None) -> np.ndarray:
    """One sample in the model's code [C, H, W] -> raw (frequency, duration, delta) [3, H, W], float64.

    Values are clipped to the encoding's bounds (the train split's range) first, except where `keep`
    (bool, same shape) marks given values such as a prompt, which are decoded exactly as they came. A
    lattice code decodes every value to its lattice (`Encoding.uncode`), where given values are exact.
    """
    if not encoding.scalar:
        return encoding.uncode(np.asarray(x)[None])[0]
    x = np.nan_to_num(np.asarray(x, dtype=np.float64), nan=0.0)  # a diverged model must not crash decoding
    low, high = (b.reshape(3, 1, 1) for b in encoding.bounds)
    clipped = np.clip(x, low, high)
    if keep is not None:
        clipped = np.where(keep, x, clipped)
    return np.asarray(encoding.decode(clipped[None]), dtype=np.float64)[0]


def notes_after(frequency: np.ndarray, duration: np.ndarray, delta: np.ndarray, last: float,
                chord_snap: float = 0.0) -> RowNotes:
    """Decoded features of one row's notes -> notes in beats, the first `delta[0]` after `last`.

    Onsets are the running sum of delta, so rounding errors do not accumulate over a long piece. A delta
    below `chord_snap` beats is taken as 0: the model's near-miss at a chord, whose notes share one onset.
    """
    d = np.maximum(np.asarray(delta, dtype=np.float64), 0.0)
    d = np.where(d < chord_snap, 0.0, d)
    return RowNotes.of(frequency_to_pitch(frequency), last + np.cumsum(d),
                       np.maximum(np.asarray(duration, dtype=np.float64), 0.0))


@dataclass
class DecodedTrack:
    """Notes of one row, times in ticks at TICKS_PER_QUARTER, sorted by (onset, pitch)."""

    pitch: np.ndarray
    onset: np.ndarray
    duration: np.ndarray


def to_ticks(pitch: np.ndarray, beats: np.ndarray, duration: np.ndarray,
             grid: int | None = None) -> DecodedTrack:
    """Notes with onset and duration in beats -> a DecodedTrack in ticks, on `grid` when one is given.

    No note is shorter than MIN_DURATION_TICKS (or one grid step). Notes that land on the same pitch and
    tick keep only the first in sequence order (a prompt's note wins over a generated one), as the note
    contract has no duplicates."""
    pitch = np.asarray(pitch)
    onset = np.rint(np.asarray(beats, dtype=np.float64) * TICKS_PER_QUARTER).astype(np.int64)
    duration = np.maximum(np.asarray(duration, dtype=np.float64), 0.0)
    length = np.rint(duration * TICKS_PER_QUARTER).astype(np.int64)
    if grid:
        onset = np.rint(onset / grid).astype(np.int64) * grid
        length = np.maximum(np.rint(length / grid).astype(np.int64), 1) * grid
    else:
        length = np.maximum(length, MIN_DURATION_TICKS)
    order = np.lexsort((pitch, onset))  # stable: among equal (onset, pitch) the earlier note comes first
    pitch, onset, length = pitch[order], onset[order], length[order]
    first = np.ones(len(pitch), dtype=bool)
    first[1:] = (onset[1:] != onset[:-1]) | (pitch[1:] != pitch[:-1])
    return DecodedTrack(pitch[first], onset[first], length[first])


def decode_row(frequency: np.ndarray, duration: np.ndarray, delta: np.ndarray, grid: int | None = None,
               chord_snap: float = 0.0) -> DecodedTrack:
    """Decoded features of one row -> its notes in ticks, the first at tick 0 (its delta is the gap to a
    note before the window): `notes_after`, then `to_ticks`, as a generated row is written."""
    notes = notes_after(frequency, duration, delta, 0.0, chord_snap)
    start = float(notes.onset[0]) if len(notes) else 0.0
    return to_ticks(notes.pitch, notes.onset - start, notes.duration, grid)


def decode(x: np.ndarray, encoding: Any, grid: int | None = None, keep: np.ndarray | None = None,
           chord_snap: float = 0.0) -> DecodedTrack:
    """One row's code [C, 1, W] -> its notes in ticks (values decoded as `decoded_features`): the
    inverse of `encode_notes` for in-range notes."""
    if np.shape(x)[1] != 1:
        raise ValueError(f"decode takes one row, got {np.shape(x)[1]}; several rows are aligned by "
                         "pipeline.compose.rows")
    features = decoded_features(x, encoding, keep)
    return decode_row(features[0, 0], features[1, 0], features[2, 0], grid, chord_snap)


def encode_notes(pitch: np.ndarray, duration: np.ndarray, delta: np.ndarray, encoding: Any) -> np.ndarray:
    """Notes of one row -> the model's code [C, W], the inverse of `decode` for in-range notes."""
    raw = np.stack([midi.frequency(pitch), np.asarray(duration, np.float64),
                    np.asarray(delta, np.float64)])
    return np.asarray(encoding.code(raw[None, :, None, :]), dtype=np.float32)[0, :, 0, :]
