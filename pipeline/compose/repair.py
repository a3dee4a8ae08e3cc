"""Voice-leading repair: the notes that make parallel fifths and octaves are written again by the model.

A harmonization by the shipped model has about one parallel fifth and one parallel octave per 100 notes;
Bach's chorales have 0.07 and 0.03. Three hundred chorales are too few to learn so rare a rule, but it is
easy to check, so it is checked (`pipeline.evaluate.voice_leading.parallel_motions`, the evaluation's own
definition). For each parallel motion, the voices of the pair that are free (not kept) lose the two notes
that make it, the one sounding at each of the two slices, and the inpainting model writes those cells
again around everything else, held fixed: Coconet's blocked Gibbs sampling (Huang et al. 2017), one block
per fault. Of `CANDIDATES` rewrites, the one that leaves the piece with the fewest parallels replaces the
old notes, and only if it leaves fewer than before; otherwise the old notes stay. Rounds repeat until no
parallel is left or the rounds are spent, so a piece never comes out with more parallels than it went in.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch

from pipeline.data import voices
from pipeline.data.rows import RowNotes
from pipeline.evaluate.voice_leading import parallel_motions, slices

if TYPE_CHECKING:
    from pipeline.compose.harmonize import GridModel

CANDIDATES = 4  # rewrites drawn per fault
ROUNDS = 3  # default rounds of repair


@dataclass(frozen=True)
class Fault:
    """The cells to write again: `rows` of piece `piece`, grid steps `first`..`last` - 1."""

    piece: int
    rows: tuple[int, ...]
    first: int
    last: int


def _notes(grid: voices.VoiceGrid) -> list[RowNotes]:
    return voices.grid_to_rows(grid, 1.0)  # times in grid steps


def count(grid: voices.VoiceGrid) -> int:
    """Parallel fifths and octaves in a grid, together."""
    return len(parallel_motions(slices(_notes(grid))))


def faults(grid: voices.VoiceGrid, fixed: np.ndarray, piece: int, width: int) -> list[Fault]:
    """The cells of `grid` to write again for its parallel motions, in time order: of each motion, the
    notes of its free voices (not `fixed`) sounding at its two slices. Faults that share a step with an
    earlier one wait for the next round, as they were drawn around the notes the earlier one replaces."""
    rows = _notes(grid)
    times = np.unique(np.concatenate([r.onset for r in rows]))
    found: list[Fault] = []
    for i, a, b, _ in parallel_motions(slices(rows)):
        free = [v for v in (a, b) if not fixed[v, int(times[i])]]
        if not free:
            continue  # two kept voices: nothing to write
        first, last = [], []
        for v in free:
            onset, end = rows[v].onset, rows[v].onset + rows[v].duration
            first.append(int(onset[np.searchsorted(onset, times[i], side="right") - 1]))
            last.append(int(end[np.searchsorted(onset, times[i + 1], side="right") - 1]))
        fault = Fault(piece, tuple(free), min(first), max(last))
        if fault.last - fault.first <= width and all(fault.first >= f.last or fault.last <= f.first
                                                      for f in found):
            found.append(fault)
    return found


def _window(fault: Fault, length: int, width: int) -> int:
    """Where the window of `width` steps around a fault starts: centred on it, inside the piece."""
    centre = (fault.first + fault.last) // 2
    return int(min(max(centre - width // 2, 0), max(length - width, 0)))


def _written(grid: voices.VoiceGrid, fault: Fault, start: int, new: voices.VoiceGrid) -> voices.VoiceGrid:
    """`grid` with the fault's cells taken from `new`, a window starting at step `start`."""
    pitch, state = grid.pitch.copy(), grid.state.copy()
    rows, cols = list(fault.rows), slice(fault.first, fault.last)
    window = slice(fault.first - start, fault.last - start)
    pitch[rows, cols] = new.pitch[rows, window]
    state[rows, cols] = new.state[rows, window]
    return voices.VoiceGrid(pitch, state)


def repair(grids: Sequence[voices.VoiceGrid], fixed: Sequence[np.ndarray], model: GridModel,
           generator: torch.Generator, rounds: int = ROUNDS, candidates: int = CANDIDATES
           ) -> list[voices.VoiceGrid]:
    """`grids` with the notes of their parallel fifths and octaves written again (module docstring);
    `fixed` [H, length] marks each grid's cells that must not change (the kept voices)."""
    from pipeline.compose.harmonize import denoise

    grids = list(grids)
    width, rows = model.width, len(model.groups)
    for _ in range(rounds):
        todo = [f for p, g in enumerate(grids) for f in faults(g, fixed[p], p, width)]
        if not todo:
            break
        starts = [_window(f, grids[f.piece].shape[1], width) for f in todo]
        known, mask = [], []
        for f, a in zip(todo, starts, strict=True):
            known.append(voices.encode(grids[f.piece].columns(a, a + width), model.pitches))
            m = np.ones((rows, width), dtype=bool)
            m[list(f.rows), f.first - a:f.last - a] = False
            mask.append(m)
        known_t = torch.as_tensor(np.repeat(np.stack(known), candidates, axis=0), device=model.device)
        mask_t = torch.as_tensor(np.repeat(np.stack(mask), candidates, axis=0)[:, None], device=model.device)
        with torch.inference_mode():
            out = denoise(model, known_t, mask_t, generator).float().cpu().numpy()
        for k, (f, a) in enumerate(zip(todo, starts, strict=True)):
            best, fewest = None, count(grids[f.piece])
            for c in range(candidates):
                option = _written(grids[f.piece], f, a, voices.decode(out[k * candidates + c], model.pitches))
                n = count(option)
                if n < fewest:
                    best, fewest = option, n
            if best is not None:
                grids[f.piece] = best
    return grids
