"""What evaluation measures: a piece as note arrays in beats (quarter notes), all instrument rows merged,
starting at beat 0, and the readers that make pieces of MIDI files and of prepared segments.

A segment's first delta (the gap after the note before it) and a sample's leading silence are not
measured. `to_music` hands a piece to MusPy.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import muspy
import numpy as np

from pipeline.data.encoding import Encoding
from pipeline.data.midi import RejectedFile, extract_notes
from pipeline.data.segments import segment_to_notes

RESOLUTION = 24  # ticks per beat for MusPy: divisible by 3 and 8, so triplets and 32nds are exact


@dataclass(frozen=True)
class Piece:
    """One piece as note arrays: MIDI pitch, onset and duration in beats, sorted by (onset, pitch)."""

    pitch: np.ndarray
    onset: np.ndarray
    duration: np.ndarray
    merged: int = 0  # notes dropped because another note had the same pitch and onset

    @classmethod
    def from_notes(cls, pitch: np.ndarray, onset: np.ndarray, duration: np.ndarray) -> Piece:
        """Cast, drop notes without length and sort by (onset, pitch) so "consecutive" is well defined.

        A note on the same pitch and onset as an earlier one is merged into it (dropped), as a MIDI file
        written by `dmc generate` has it: every set is then measured the way its pieces would sound, and a
        segment that holds such a duplicate counts the same as the file written from it.
        """
        pitch = np.clip(np.rint(np.asarray(pitch, dtype=float)), 0, 127).astype(np.int64)
        onset, duration = np.asarray(onset, dtype=float), np.asarray(duration, dtype=float)
        keep = duration > 0
        pitch, onset, duration = pitch[keep], onset[keep], duration[keep]
        order = np.lexsort((pitch, onset))  # stable: the first of equal (onset, pitch) stays first
        pitch, onset, duration = pitch[order], onset[order], duration[order]
        first = np.ones(len(pitch), dtype=bool)
        first[1:] = (pitch[1:] != pitch[:-1]) | (np.abs(onset[1:] - onset[:-1]) > 1e-9)
        return cls(pitch[first], onset[first], duration[first], int(np.count_nonzero(~first)))

    def __len__(self) -> int:
        return len(self.pitch)


def merged_notes(pieces: Sequence[Piece], notes_per_piece: int | None = None) -> int:
    """Notes lost to merging in a set: those `Piece.from_notes` merged, plus, for pieces read back from
    files that were written `notes_per_piece` notes long, the notes missing from each."""
    missing = sum(max(notes_per_piece - len(p), 0) for p in pieces) if notes_per_piece else 0
    return sum(p.merged for p in pieces) + missing


def pieces_from_segments(x: np.ndarray, encoding: Encoding,
                         mask: np.ndarray | None = None) -> list[Piece]:
    """Normalized `[N, 3, H, W]` segments -> pieces, all H instrument rows merged, starting at beat 0.
    With `mask` (`[N, H, W]`, 1 = a real note; multi-instrument data) padded entries are left out."""
    pieces = []
    for i, segment in enumerate(np.asarray(x)):
        pitch, onset, duration = segment_to_notes(segment, encoding)
        if mask is not None:
            real = np.asarray(mask[i]).astype(bool)
            pitch, onset, duration = pitch[real], onset[real], duration[real]
        origin = onset.min() if onset.size else 0.0
        pieces.append(Piece.from_notes(pitch.ravel(), onset.ravel() - origin, duration.ravel()))
    return pieces


def segment_rows(x: np.ndarray, encoding: Encoding, mask: np.ndarray) -> list[list[Piece]]:
    """Normalized multi-instrument segments `[N, 3, H, W]` and their mask -> one piece per row of each
    segment, padding left out, the rows in their places in time (the segment's first note at beat 0)."""
    out = []
    for segment, real in zip(np.asarray(x), np.asarray(mask).astype(bool), strict=True):
        pitch, onset, duration = segment_to_notes(segment, encoding)
        origin = onset[real].min() if real.any() else 0.0
        out.append([Piece.from_notes(pitch[h][real[h]], onset[h][real[h]] - origin, duration[h][real[h]])
                    for h in range(len(real))])
    return out


def read_rows(folder: str | Path, groups: Sequence[str]) -> tuple[list[list[Piece]], list[str]]:
    """Multi-instrument samples: every *.mid in `folder` (sorted) as one piece per instrument group
    (`pipeline.data.instruments.extract_rows`; an absent group gives an empty piece), and the names of files
    with no usable track. The rows of a file keep their places in time: its first note is at beat 0."""
    from pipeline.data.instruments import extract_rows, groups_of

    chosen = groups_of(groups)
    rows, rejected = [], []
    empty = Piece.from_notes(np.zeros(0), np.zeros(0), np.zeros(0))
    for path in sorted(Path(folder).glob("*.mid")):
        try:
            notes = extract_rows(path, chosen)
        except RejectedFile:
            rejected.append(path.name)
            rows.append([empty] * len(chosen))
            continue
        origin = min((n.onset.min() for n in notes if n is not None), default=0.0)
        rows.append([empty if n is None else Piece.from_notes(n.pitch, n.onset - origin, n.duration)
                     for n in notes])
    return rows, rejected


def from_zero(piece: Piece) -> Piece:
    """The piece moved in time so that its first note starts at beat 0."""
    return Piece(piece.pitch, piece.onset - piece.onset.min(), piece.duration, piece.merged) \
        if len(piece) else piece


def mix(rows: Sequence[Piece]) -> Piece:
    """The rows of one piece (in their places in time) merged into one piece starting at beat 0."""
    cat = [np.zeros(0)]
    return from_zero(Piece.from_notes(np.concatenate([r.pitch for r in rows] or cat),
                                      np.concatenate([r.onset for r in rows] or cat),
                                      np.concatenate([r.duration for r in rows] or cat)))


def read_pieces(folder: str | Path) -> tuple[list[Piece], list[str]]:
    """Every *.mid in `folder` (sorted) as a piece starting at beat 0, and the names of unusable files.

    The notes are those `pipeline.data.midi.extract_notes` takes from the file's main track, whatever its
    program (generated files carry the program of the instrument they were sampled for). A file it
    rejects (no notes, say) is kept as an empty piece, so a bad sample counts against its set.
    """
    pieces, rejected = [], []
    for path in sorted(Path(folder).glob("*.mid")):
        try:
            notes = extract_notes(path, programs=range(128))
        except RejectedFile:
            rejected.append(path.name)
            pieces.append(Piece.from_notes(np.zeros(0), np.zeros(0), np.zeros(0)))
            continue
        pieces.append(Piece.from_notes(notes.pitch, notes.onset - notes.onset.min(), notes.duration))
    return pieces, rejected


def to_music(piece: Piece, resolution: int = RESOLUTION) -> muspy.Music:
    """A one-track muspy.Music with onsets and durations rounded to `resolution` ticks per beat."""
    time = np.maximum(np.rint(piece.onset * resolution), 0).astype(int)
    length = np.maximum(np.rint(piece.duration * resolution), 1).astype(int)
    notes = [muspy.Note(time=int(t), pitch=int(p), duration=int(d), velocity=64)
             for t, p, d in zip(time, piece.pitch, length, strict=True)]
    return muspy.Music(resolution=resolution, tracks=[muspy.Track(program=0, notes=notes)])
