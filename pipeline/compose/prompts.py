"""What a piece starts from, read from a prompt file: kept parts (`--keep soprano`: harmonize, accompany)
or the start of a piece to continue (`--prompt FILE`), for a model of any number of rows."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from pipeline.compose.options import GenerateOptions
from pipeline.compose.rows import Given
from pipeline.data import midi
from pipeline.data.rows import NO_NOTES, RowNotes, read_rows
from pipeline.errors import DmcError


def given_of(opts: GenerateOptions, groups: list[str], seq_len: int, length: int | None) -> Given:
    """What every piece starts from: the kept parts of the prompt, or its start to continue, or nothing.
    Refuses a prompt that leaves no room in the first window or the piece."""
    if opts.keep:
        return Given(kept_rows(opts.prompt, groups, opts.keep))
    if opts.prompt is not None:
        rows, end = prompt_rows(opts.prompt, groups, opts.prompt_notes)
        k = max(len(r) for r in rows)  # the busiest row's prompt notes
        if k >= seq_len:
            raise DmcError(f"--prompt-notes must be below the model's {seq_len} notes per window, got {k}")
        if length is not None and k >= length:
            raise DmcError(f"--length ({length}) must exceed the prompt's {k} notes")
        return Given({}, rows, end)
    return Given({})


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
