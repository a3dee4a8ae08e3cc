"""The notes of one instrument row in beats (`RowNotes`), and reading each row of a MIDI file as the
prepare stage finds it. Generation (`pipeline.compose`), the grid layout (`pipeline.data.voices`) and the
harmony measures all hold a piece as one RowNotes per row."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

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


def read_rows(path: str | Path, groups: Sequence[str], what: str = "--prompt") -> list[RowNotes | None]:
    """Each instrument group's track of a MIDI file, found as the prepare stage finds it (None: absent).
    The single-piano model's one row is the file's notes as `midi.extract_notes` merges them. Errors
    name the file as `what`'s."""
    from pipeline.data.instruments import extract_rows, groups_of, is_single_piano

    path = Path(path)
    if not path.is_file():
        raise DmcError(f"{what}: no such file {path}")
    try:
        rows = [midi.extract_notes(path)] if is_single_piano(groups) else \
            extract_rows(path, groups_of(groups))
    except DmcError as err:  # RejectedFile: not MIDI, or no track in any group
        raise DmcError(f"{what}: {path}: {err}") from None
    return [None if r is None else RowNotes.of(r.pitch, r.onset, r.duration) for r in rows]
