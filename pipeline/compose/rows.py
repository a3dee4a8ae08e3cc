"""Multi-row generation: rows aligned in time, kept rows (harmonize, accompany) and pieces of any length.

A multi-row model's window is the prepare stage's (`pipeline.data.instruments`): all rows cover one span of
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
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from pipeline.compose.sampling import decoded_features, denoise_window, encode_notes, frequency_to_pitch
from pipeline.data import midi
from pipeline.errors import DmcError

EMPTY = np.zeros(0)


@dataclass(frozen=True)
class RowNotes:
    """The notes of one row in time order: MIDI pitch, onset and duration in beats."""

    pitch: np.ndarray
    onset: np.ndarray
    duration: np.ndarray

    @classmethod
    def of(cls, pitch: Any, onset: Any, duration: Any) -> RowNotes:
        return cls(np.asarray(pitch, dtype=np.int64), np.asarray(onset, dtype=np.float64),
                   np.asarray(duration, dtype=np.float64))

    def __len__(self) -> int:
        return len(self.pitch)

    def where(self, keep: np.ndarray) -> RowNotes:
        return RowNotes(self.pitch[keep], self.onset[keep], self.duration[keep])

    def then(self, later: RowNotes) -> RowNotes:
        """These notes followed by `later` ones (which start no earlier)."""
        return RowNotes(np.concatenate([self.pitch, later.pitch]), np.concatenate([self.onset, later.onset]),
                        np.concatenate([self.duration, later.duration]))

    def shifted(self, beats: float) -> RowNotes:
        return RowNotes(self.pitch, self.onset + beats, self.duration)


NO_NOTES = RowNotes.of(EMPTY, EMPTY, EMPTY)


# -- reading the given parts of a prompt file -------------------------------------------------------------


def read_rows(path: str | Path, groups: Sequence[str], what: str = "--prompt") -> list[RowNotes | None]:
    """Each instrument group's track of a MIDI file, found as the prepare stage finds it (None: absent).
    Errors name the file as `what`'s."""
    from pipeline.data.instruments import extract_rows, groups_of

    path = Path(path)
    if not path.is_file():
        raise DmcError(f"{what}: no such file {path}")
    try:
        rows = extract_rows(path, groups_of(groups))
    except DmcError as err:  # RejectedFile: not MIDI, or no track in any group
        raise DmcError(f"{what}: {path}: {err}") from None
    return [None if r is None else RowNotes.of(r.pitch, r.onset, r.duration) for r in rows]


def check_keep(groups: Sequence[str], keep: Sequence[str]) -> None:
    """`--keep` must name some, not all, of a multi-row model's instrument groups."""
    if len(groups) < 2:
        raise DmcError(f"--keep: the model has one row ({groups[0]}); keeping parts needs a model of several "
                       "instrument rows (e.g. instruments: [soprano, alto, tenor, bass])")
    unknown = [k for k in keep if k not in groups]
    if unknown:
        raise DmcError(f"--keep: {unknown[0]!r} is not one of the model's instrument groups "
                       f"({', '.join(groups)})")
    if len(set(keep)) == len(groups):
        raise DmcError(f"--keep: every row of the model ({', '.join(groups)}) is kept; nothing is left to "
                       "generate")


def kept_rows(path: str | Path, groups: Sequence[str], keep: Sequence[str]) -> dict[int, RowNotes]:
    """The rows `keep` names (`--keep soprano,alto`), whole, from the prompt file: row index -> notes.

    A file of one track is a melody: with one group kept, that track is the group's row whatever its name.
    """
    check_keep(groups, keep)
    melody = _only_track(path) if len(set(keep)) == 1 else None
    if melody is not None:
        return {groups.index(keep[0]): melody}
    rows = read_rows(path, groups)
    missing = [k for k in keep if rows[groups.index(k)] is None]
    if missing:
        found = [g for g, r in zip(groups, rows, strict=True) if r is not None]
        raise DmcError(f"--keep {missing[0]}: {path} has no {missing[0]} track (found: {', '.join(found)})")
    return {groups.index(k): rows[groups.index(k)] for k in dict.fromkeys(keep)}


def _only_track(path: str | Path) -> RowNotes | None:
    """The notes of a MIDI file that has exactly one track with notes, else None."""
    import symusic

    path = Path(path)
    if not path.is_file():
        raise DmcError(f"--prompt: no such file {path}")
    try:
        tracks = sum(t.note_num() > 0 for t in symusic.Score(str(path)).tracks)
    except Exception:  # not MIDI: read_rows says so in its own words
        return None
    if tracks != 1:
        return None
    notes = midi.extract_notes(path, programs=range(128))
    return RowNotes.of(notes.pitch, notes.onset, notes.duration)


def prompt_rows(path: str | Path, groups: Sequence[str], n_notes: int) -> tuple[list[RowNotes], float]:
    """The start of a prompt file to continue, in every row: the notes up to the onset where its busiest
    row has `n_notes` (a window of that many notes, as prepare cuts one). Returns the rows and that onset."""
    rows = [NO_NOTES if r is None else r for r in read_rows(path, groups)]
    origin = min(float(r.onset[0]) for r in rows if len(r))
    end = min((float(r.onset[n_notes - 1]) for r in rows if len(r) >= n_notes),
              default=max(float(r.onset[-1]) for r in rows if len(r)))
    return [r.where(r.onset <= end).shifted(-origin) for r in rows], end - origin


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
        d = np.maximum(delta[h, k:], 0.0)
        d = np.where(d < chord_snap, 0.0, d)
        last = float(row.onset[-1]) if k else start
        out.append(RowNotes.of(frequency_to_pitch(frequency[h, k:]), last + np.cumsum(d),
                               np.maximum(duration[h, k:], 0.0)))
    return out


# -- pieces ------------------------------------------------------------------------------------------------


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
