"""Generation for any number of rows: rows aligned in time, kept rows (harmonize, accompany), prompts to
continue, and pieces of any length. A one-row model is the case H = 1 of the same path.

A model's window is the prepare stage's (`pipeline.data.instruments`): all rows cover one span of
beats that starts on a note onset, each row holds its notes of the span from position 0 with the first
delta counted from the span's start, and the busiest row is full. Generation works in that frame, one
window after another:

- The piece is final up to a time `end`: every row's notes with onset <= end.
- The next window starts at `start`, the latest onset that leaves every row at most `overlap` notes in
  [start, end]. Those notes are the window's given (inpainted) positions, so every row re-reads the same
  span of time and the seams stay aligned across rows by construction.
- A kept row (a part taken from a prompt file) is given in full: its notes from `start` on, up to seq_len.
  Where it runs out, the rest of the row is generated like any other.
- After denoising, each row's new positions follow its given notes (onset = the previous onset plus the
  generated delta). The window ends at the earliest last onset of any row, as a one-window sample does;
  new notes in (previous end, new end] become final. Kept notes are copied from the prompt, never read
  back from the model's output, so they come out exactly as they went in.
- The piece is done when its busiest row holds `length` notes and every kept note is final. It ends at
  the later of those two times; notes after it are dropped.

So `length` counts the notes of the busiest row, as seq_len does in the prepare stage, and the other rows
hold fewer notes over the same span; around kept parts the piece lasts at least as long as they do.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from pipeline.compose.decode import decoded_features, encode_notes, notes_after
from pipeline.compose.sampler import denoise_window
from pipeline.data.rows import NO_NOTES, RowNotes
from pipeline.errors import DmcError

# -- one window -------------------------------------------------------------------------------------------


def _from(row: RowNotes, start: float) -> RowNotes:
    return row.where(row.onset >= start)


def window_start(final: Sequence[RowNotes], overlap: int, origin: float) -> float:
    """The latest onset that leaves every row at most `overlap` of its final notes from there on."""
    starts = [float(r.onset[-overlap]) for r in final if len(r) >= overlap]
    if starts:
        return max(starts)
    present = [float(r.onset[0]) for r in final if len(r)]
    return min(present) if present else origin


def encode_given(given: Sequence[RowNotes], start: float, seq_len: int, encoding: Any
                 ) -> tuple[np.ndarray, np.ndarray]:
    """Given notes of each row (from `start`, at most seq_len) -> coded [C, H, W] and mask [H, W]."""
    known = np.zeros((encoding.channels, len(given), seq_len), dtype=np.float32)
    mask = np.zeros((len(given), seq_len), dtype=bool)
    for h, row in enumerate(given):
        k = len(row)
        if k:
            delta = np.diff(row.onset, prepend=start)
            known[:, h, :k] = encode_notes(row.pitch, row.duration, delta, encoding)
            mask[h, :k] = True
    return known, mask


def decode_new(x: np.ndarray, given: Sequence[RowNotes], start: float, encoding: Any,
               chord_snap: float = 0.0) -> list[RowNotes]:
    """The notes a window's free positions hold, per row, placed after that row's given notes."""
    frequency, duration, delta = decoded_features(x, encoding)
    out = []
    for h, row in enumerate(given):
        k = len(row)
        last = float(row.onset[-1]) if k else start
        out.append(notes_after(frequency[h, k:], duration[h, k:], delta[h, k:], last, chord_snap))
    return out


# -- pieces -----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Given:
    """What every piece starts from: rows kept whole (`kept`), and/or a start to continue (`prompt`, final
    up to `prompt_end`). Times in beats; empty means pieces from scratch."""

    kept: dict[int, RowNotes]
    prompt: list[RowNotes] | None = None
    prompt_end: float = -math.inf

    @property
    def origin(self) -> float:
        onsets = [float(r.onset[0]) for r in (*self.kept.values(), *(self.prompt or [])) if len(r)]
        return min(onsets, default=0.0)

    @property
    def kept_until(self) -> float:
        return max((float(r.onset[-1]) for r in self.kept.values() if len(r)), default=-math.inf)

    @property
    def empty(self) -> bool:
        return not self.kept and self.prompt is None

    def moved(self, semitones: int) -> Given:
        """The same notes transposed (into the common key, `pipeline.data.keys`)."""
        def move(r: RowNotes) -> RowNotes:
            return RowNotes(r.pitch + semitones, r.onset, r.duration)

        return Given({h: move(r) for h, r in self.kept.items()},
                     None if self.prompt is None else [move(r) for r in self.prompt], self.prompt_end)


@dataclass
class _Piece:
    given: Given
    final: list[RowNotes]
    end: float  # final up to here; -inf before the first window
    windows: int = 0
    stalled: int = 0


def check_length(given: Given, length: int, groups: Sequence[str]) -> None:
    """A kept or prompt row longer than the piece is refused."""
    rows = [*given.kept.items(), *enumerate(given.prompt or [])]
    for h, row in rows:
        if len(row) > length:
            raise DmcError(f"--length {length}: the prompt's {groups[h]} has {len(row)} notes; ask for at "
                           f"least {len(row)}")


def _window_notes(piece: _Piece, start: float, seq_len: int) -> list[RowNotes]:
    """Each row's given notes for a window from `start`: its final ones, then its kept ones to come."""
    given, rows = piece.given, []
    for h, final in enumerate(piece.final):
        row = _from(final, start)
        if h in given.kept:
            kept = given.kept[h]
            row = row.then(kept.where(kept.onset > piece.end))
        rows.append(row.where(np.arange(len(row)) < seq_len))
    return rows


def _advance(piece: _Piece, rows: list[RowNotes], new: list[RowNotes]) -> None:
    """Make the window's notes final up to its end (module docstring)."""
    given = piece.given
    last = [float(n.onset[-1]) if len(n) else float(r.onset[-1]) if len(r) else -math.inf
            for r, n in zip(rows, new, strict=True)]
    end = min(last)
    piece.windows += 1
    if not end > piece.end:
        piece.stalled += 1
        return
    for h, n in enumerate(new):
        fresh = n.where((n.onset > piece.end) & (n.onset <= end))
        if h in given.kept:  # its kept notes, then (once they run out) generated ones strictly after them
            kept = given.kept[h]
            fresh = kept.where((kept.onset > piece.end) & (kept.onset <= end)).then(
                fresh.where(fresh.onset > kept.onset[-1]))
        piece.final[h] = piece.final[h].then(fresh)
    piece.end = end


def _finish(piece: _Piece, length: int) -> list[RowNotes] | None:
    """The finished rows, or None while the busiest row has fewer than `length` notes or kept notes wait."""
    given = piece.given
    if piece.end < given.kept_until:
        return None
    reached = [float(r.onset[length - 1]) if length else -math.inf for r in piece.final if len(r) >= length]
    if not reached:
        return None
    until = max(min(reached), given.kept_until)
    rows = [r.where(r.onset <= until) for r in piece.final]
    if until > given.kept_until:  # the busiest row ends the piece: `length` notes, even on a chord
        rows = [r if h in given.kept else r.where(np.arange(len(r)) < length) for h, r in enumerate(rows)]
    if given.empty:  # a piece from scratch starts at beat 0, like a one-window sample
        origin = min((float(r.onset.min()) for r in rows if len(r)), default=0.0)
        rows = [r.shifted(-origin) for r in rows]
    return rows


def generate_rows(model: Any, diffusion: Any, sampler: Any, encoding: Any, n: int, rows: int, seq_len: int,
                  length: int | None, given: Given | Sequence[Given] | None = None, batch_size: int = 8,
                  seed: int = 0, device: torch.device | str = "cpu", overlap: int | None = None,
                  chord_snap: float = 0.0, progress: bool | None = None) -> Iterator[list[list[RowNotes]]]:
    """Draw `n` multi-row pieces, yielded a batch at a time: per piece, one RowNotes per row.

    Every piece starts from `given` (kept rows, a prompt to continue, or nothing; or one Given per piece)
    and grows window by window until its busiest row holds `length` notes and every kept note is placed;
    `length` None: until the kept notes are placed, so the piece lasts as long as they do. Each window
    continues the last `overlap` notes (default seq_len // 2) of every row. The same seed, arguments and
    device give the same notes.
    """
    givens = list(given) if isinstance(given, Sequence) else [given or Given({})] * n
    if len(givens) != n:
        raise ValueError(f"{len(givens)} givens for {n} pieces")
    if length is None and not all(g.kept for g in givens):
        raise ValueError("length None needs kept rows in every piece")
    overlap = seq_len // 2 if overlap is None else overlap
    if not 0 < overlap < seq_len:
        raise ValueError(f"overlap must be in (0, {seq_len}), got {overlap}")
    device = torch.device(device)
    generator = torch.Generator(device=device).manual_seed(seed)
    kept_notes = max((len(r) for g in givens for r in g.kept.values()), default=0)
    length = length or 0
    # Windows a piece may take: enough for `length` and every kept note, with room for slow ones.
    max_windows = 4 * (math.ceil((length + kept_notes) / (seq_len - overlap)) + 2)
    steps = sampler.n_steps(diffusion.timesteps)
    bar = tqdm(total=n, desc="composing", unit="piece", disable=None if progress is None else not progress)
    with torch.inference_mode(), bar:
        for first in range(0, n, batch_size):
            pieces = [_Piece(g, [*(g.prompt or [NO_NOTES] * rows)], g.prompt_end)
                      for g in givens[first:first + batch_size]]
            done: list[list[RowNotes] | None] = [_finish(p, length) for p in pieces]
            while not all(d is not None for d in done):
                active = [i for i, d in enumerate(done) if d is None]
                plans = []
                for i in active:
                    p = pieces[i]
                    if p.windows >= max_windows:
                        raise DmcError(f"after {p.windows} windows a piece is still unfinished ({p.stalled} "
                                       "windows made no progress in time); try another seed or a shorter "
                                       "--length")
                    start = window_start(p.final, overlap, p.given.origin)
                    plans.append((start, _window_notes(p, start, seq_len)))
                encoded = [encode_given(g, s, seq_len, encoding) for s, g in plans]
                known = torch.as_tensor(np.stack([k for k, _ in encoded]), device=device)
                mask = torch.as_tensor(np.stack([m for _, m in encoded])[:, None], device=device)
                x = denoise_window(model, diffusion, sampler, known, mask if mask.any() else None, generator,
                            None).float().cpu().numpy()
                for j, i in enumerate(active):
                    start, g = plans[j]
                    _advance(pieces[i], g, decode_new(x[j], g, start, encoding, chord_snap))
                    done[i] = _finish(pieces[i], length)
                    if done[i] is not None:
                        bar.update()
                bar.set_postfix(windows=max(p.windows for p in pieces), steps=steps)
            yield [d for d in done if d is not None]
