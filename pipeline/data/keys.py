"""One common key: training windows moved to C major / A minor, generated pieces moved to a real key.

Chorales come in a dozen keys, and a small network at a CPU budget learns each key's notes from a
twelfth of the data. With `train.key: common` every train and validation window is transposed by a key
estimate so that its notes fit the C major scale (the white keys: C major and A minor alike) as well as
they can; the model then learns one scale. At sampling, a piece made in that key is moved to a key drawn
from the shifts the training windows needed, reversed, so the keys come out as often as in the data;
a prompt or a kept melody is first moved into the common key and the piece moved back with it.

The estimate is the transposition, within half an octave either way, that puts the most notes on the
white keys (ties: the smaller move). A move that would take a window's notes outside the train split's
pitch range is replaced by the same key an octave the other way, or none.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from pipeline.data.encoding import Encoding

WHITE = np.isin(np.arange(12), (0, 2, 4, 5, 7, 9, 11))  # the C major scale's pitch classes
SHIFTS = np.arange(-6, 6)  # candidate moves, semitones
KEYS = ("none", "common")


def key_shift(pitch: np.ndarray) -> int:
    """The move (semitones, -6..5) that puts the most of `pitch` (MIDI) on the C major scale."""
    pitch = np.asarray(pitch, dtype=np.int64).ravel()
    on_scale = [int(WHITE[(pitch + s) % 12].sum()) for s in SHIFTS]
    best = max(on_scale)
    return int(min((s for s, n in zip(SHIFTS, on_scale, strict=True) if n == best), key=abs))


def fitting(shift: int, low: int, high: int, lowest: int, highest: int) -> int | None:
    """`shift`, or the same key an octave the other way, that keeps notes [lowest, highest] inside
    [low, high]; the smaller move first; None if neither fits."""
    for s in sorted({shift, shift - 12 if shift > 0 else shift + 12}, key=abs):
        if low <= lowest + s and highest + s <= high:
            return s
    return None


def common_key_shifts(pitch: np.ndarray, mask: np.ndarray | None, low: int, high: int) -> np.ndarray:
    """Per window of `pitch` ([N, H, W] MIDI; `mask` 1 = a real note), the move to the common key that keeps
    it inside [low, high] (0 where none does)."""
    shifts = np.zeros(len(pitch), dtype=np.int64)
    for i, window in enumerate(pitch):
        notes = window[mask[i].astype(bool)] if mask is not None else window.ravel()
        if len(notes):
            shifts[i] = fitting(key_shift(notes), low, high, int(notes.min()), int(notes.max())) or 0
    return shifts


def to_common_key(x: np.ndarray, pitch: np.ndarray, mask: np.ndarray, encoding: Encoding) -> np.ndarray:
    """Move each stored window of `x` ([N, 3, H, W], in place; `pitch` its MIDI pitches, `mask` 1 = a real
    note) to the common key, by the encoding's own transposition map; returns the moves."""
    shifts = common_key_shifts(pitch, mask, *encoding.pitch_range)
    real = mask.astype(bool)
    for k in np.unique(shifts[shifts != 0]):
        m, c = encoding.transpose_map(int(k))
        rows = shifts == k
        x[rows, 0] = np.where(real[rows], x[rows, 0] * m + c, x[rows, 0])
    return shifts


def shift_counts(shifts: np.ndarray) -> list[int]:
    """How many windows needed each move of SHIFTS, and 12 semitones more or less folded in: stats.json's
    `key_shifts`, the distribution sampling draws from."""
    folded = (np.asarray(shifts) + 6) % 12
    return np.bincount(folded, minlength=12).astype(int).tolist()


def draw_shift(stats: dict[str, Any], rng: np.random.Generator) -> int:
    """A move out of the common key: the reverse of a training window's move, drawn as often as they
    were; 0 for a model trained without `train.key: common`."""
    counts = np.asarray(stats.get("key_shifts") or [], dtype=float)
    if not counts.sum():
        return 0
    return int(-SHIFTS[rng.choice(len(counts), p=counts / counts.sum())])
