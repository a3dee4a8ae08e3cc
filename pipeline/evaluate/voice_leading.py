"""How voices sound together: the consonance of vertical intervals, and parallel fifths and octaves.

Both read a piece of several voices as vertical slices: at every onset of any voice, the pitch each voice
sounds (the note it started last that is still held; none in a rest; the top note if a voice holds a
chord).
- Consonant fraction: of the pairs of voices sounding together in a slice, the share whose interval is a
  consonance of common-practice counterpoint: unison or octave, thirds, sixths and the fifth (0, 3, 4, 7,
  8, 9 semitones modulo the octave). A fourth (5) is consonant between upper voices and dissonant above
  the lowest sounding voice; seconds, the tritone and sevenths are dissonant.
- Parallel fifths and octaves: two voices that both move in the same direction from one slice to the next,
  from a perfect fifth to a perfect fifth (or unison/octave to unison/octave), compound intervals
  included. Counted per 100 notes of the piece, all voices together.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import numpy as np

CONSONANT = frozenset({0, 3, 4, 7, 8, 9})
FOURTH, FIFTH, OCTAVE = 5, 7, 0
SILENT = -1


class Voice(Protocol):
    pitch: np.ndarray
    onset: np.ndarray
    duration: np.ndarray


def slices(voices: Sequence[Voice]) -> np.ndarray:
    """[T, V] the pitch each voice sounds at each of the piece's T distinct onsets; SILENT in a rest."""
    onsets = [np.asarray(v.onset, dtype=np.float64) for v in voices]
    times = np.unique(np.concatenate(onsets or [np.zeros(0)]))
    out = np.full((len(times), len(voices)), SILENT, dtype=np.int64)
    for j, v in enumerate(voices):
        if not len(onsets[j]):
            continue
        order = np.lexsort((np.asarray(v.pitch), onsets[j]))  # the top note of a chord comes last
        onset, pitch = onsets[j][order], np.asarray(v.pitch)[order]
        end = onset + np.asarray(v.duration, dtype=np.float64)[order]
        i = np.searchsorted(onset, times, side="right") - 1
        # The last note started at or before t; it sounds if it is still held (ends after t).
        held = (i >= 0) & (end[np.maximum(i, 0)] > times + 1e-9)
        out[held, j] = pitch[i[held]]
    return out


def consonant_fraction(voices: Sequence[Voice]) -> float:
    """The share of sounding voice pairs, over all slices, a consonance apart (module docstring)."""
    grid = slices(voices)
    consonant = total = 0
    for row in grid:
        sounding = np.sort(row[row != SILENT])
        if len(sounding) < 2:
            continue
        low = sounding[0]
        a, b = np.triu_indices(len(sounding), k=1)
        interval = (sounding[b] - sounding[a]) % 12
        ok = np.isin(interval, list(CONSONANT)) | ((interval == FOURTH) & (sounding[a] != low))
        consonant += int(ok.sum())
        total += len(ok)
    return consonant / total if total else float("nan")


def parallel_motions(grid: np.ndarray) -> np.ndarray:
    """Every parallel fifth and octave in slices `grid` [T, V] (`slices`): [N, 4] rows of (slice i, voice a,
    voice b, FIFTH or OCTAVE), the motion from slice i to slice i + 1 (module docstring)."""
    found = []
    now, nxt = grid[:-1], grid[1:]
    for a in range(grid.shape[1]):
        for b in range(a + 1, grid.shape[1]):
            sounding = (now[:, a] != SILENT) & (now[:, b] != SILENT) & (nxt[:, a] != SILENT) & \
                (nxt[:, b] != SILENT)
            move_a, move_b = nxt[:, a] - now[:, a], nxt[:, b] - now[:, b]
            similar = sounding & (move_a != 0) & (np.sign(move_a) == np.sign(move_b))
            before = np.abs(now[:, a] - now[:, b]) % 12
            after = np.abs(nxt[:, a] - nxt[:, b]) % 12
            for kind in (FIFTH, OCTAVE):
                for i in np.flatnonzero(similar & (before == kind) & (after == kind)):
                    found.append((int(i), a, b, kind))
    return np.array(sorted(found), dtype=np.int64).reshape(-1, 4)


def parallels(voices: Sequence[Voice]) -> tuple[int, int]:
    """(parallel fifths, parallel octaves) between any two voices, slice to slice (module docstring)."""
    kinds = parallel_motions(slices(voices))[:, 3]
    return int((kinds == FIFTH).sum()), int((kinds == OCTAVE).sum())


def voice_leading(voices: Sequence[Voice]) -> dict[str, float]:
    """`consonant_fraction`, and `parallel_fifths` / `parallel_octaves` per 100 notes, of one piece."""
    notes = sum(len(v.pitch) for v in voices)
    fifths, octaves = parallels(voices)
    per_100 = 100.0 / notes if notes else float("nan")
    return {"consonant_fraction": consonant_fraction(voices), "parallel_fifths": fifths * per_100,
            "parallel_octaves": octaves * per_100}
