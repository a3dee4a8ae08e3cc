"""MIDI file <-> note arrays. The note contract lives here.

For each file (parsed with symusic, which is C++):
1. A file that does not parse, has ticks-per-quarter <= 0 (or SMPTE timing), or has no usable track is
   rejected with a reason (`RejectedFile`); nothing is dropped silently. So is a main track whose notes
   are never released (`unreleased-notes`), or whose tick count passes 2**31 (`tick-overflow`: symusic
   counts ticks in 32 bits, so later onsets come out negative; a count that wraps all the way past 2**32,
   sixteen maximal delta-times or more, comes out positive and is not caught).
2. Candidate tracks: non-drum tracks whose General MIDI program is in `programs`. A track is the notes
   of one (MIDI track chunk, channel, program) as symusic splits them; no program change means 0.
3. Main track: the candidate with the most notes (after step 4), the first in file order on ties.
4. Notes sorted by (onset, pitch); zero-length notes and exact duplicates (same onset and pitch, the
   longest kept) dropped.
5. Times in beats: ticks / the file's own ticks-per-quarter. `delta` = onset - previous onset (0 first).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import numpy as np
import symusic

from pipeline.errors import DmcError
from pipeline.files import atomic_path

# The original's piano set: GM 0-7 (pianos) and 16-23 (organs).
DEFAULT_PROGRAMS: tuple[int, ...] = (*range(0, 8), *range(16, 24))


class RejectedFile(DmcError):
    """A MIDI file the pipeline cannot use. `code` is a short category for counting, `reason` one line."""

    def __init__(self, reason: str, code: str = "unreadable") -> None:
        super().__init__(reason)
        self.reason = reason
        self.code = code


@dataclass
class Notes:
    """The notes of a file's main track. Times are in beats (quarter notes), float64."""

    track_index: int  # position among the file's note-bearing tracks (symusic's split, file order)
    program: int
    name: str
    ticks_per_quarter: int
    pitch: np.ndarray  # int16
    onset: np.ndarray
    duration: np.ndarray
    delta: np.ndarray

    def __len__(self) -> int:
        return len(self.pitch)


# CPython's scalar float power (the C library's), not numpy's vectorized one, whose last bit follows the
# CPU's vector instructions (1318.5102276514795 for E6 on an AVX-512 machine, ...797 on AVX2): the stored
# frequencies, the normalization and data/prepared's DVC hash are then the same on every machine.
_FREQUENCIES = np.array([440.0 * 2.0 ** ((p - 69) / 12) for p in range(128)])


def frequency(pitch: np.ndarray | int) -> np.ndarray:
    """Equal-tempered frequency in Hz of a MIDI pitch: 440 * 2**((pitch - 69) / 12), the same bits on
    every machine for the 128 MIDI pitches."""
    pitch = np.asarray(pitch, dtype=np.float64)
    whole = (pitch == np.round(pitch)) & (pitch >= 0) & (pitch <= 127)
    if whole.all():
        return _FREQUENCIES[pitch.astype(np.int64)]
    return 440.0 * 2.0 ** ((pitch - 69.0) / 12.0)


def pitch_of(freq: np.ndarray) -> np.ndarray:
    """The nearest MIDI pitch (int16, clipped to 0..127) of a frequency in Hz; inverts `frequency`."""
    freq = np.maximum(np.asarray(freq, dtype=np.float64), 1e-6)
    return np.clip(np.rint(69.0 + 12.0 * np.log2(freq / 440.0)), 0, 127).astype(np.int16)


def _midi_bytes(path: str | Path) -> tuple[bytes, int]:
    """The file's SMF bytes and its ticks-per-quarter, after the header checks symusic does not do."""
    try:
        with open(path, "rb") as f:  # cheaper than Path.read_bytes, and this runs once per file
            data = f.read()
    except OSError as err:
        raise RejectedFile(f"cannot read file: {err.strerror}", "unreadable") from None
    if not data:
        raise RejectedFile("empty file", "empty")
    start = data.find(b"MThd", 0, 64)  # RIFF-wrapped (RMID) files carry the SMF a few bytes in
    if start < 0:
        raise RejectedFile("not a MIDI file (no MThd header)", "unreadable")
    data = data[start:]
    if len(data) < 14:
        raise RejectedFile("truncated MIDI header", "unreadable")
    fmt = int.from_bytes(data[8:10], "big")
    division = int.from_bytes(data[12:14], "big")
    if fmt > 2:
        raise RejectedFile(f"unknown MIDI format {fmt}", "unreadable")
    if division & 0x8000:
        # SMPTE division counts frames per second, not ticks per beat: there are no beats to measure in.
        raise RejectedFile("SMPTE time division (no ticks-per-quarter)", "smpte")
    if division == 0:
        raise RejectedFile("ticks-per-quarter is 0", "bad-ticks-per-quarter")
    return data, division


def _clean(time: np.ndarray, duration: np.ndarray, pitch: np.ndarray
           ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(time, duration, pitch) of the notes to keep, in (onset, pitch) order: no zero-length notes, and
    of notes with the same onset and pitch only the longest."""
    # One int64 key orders by onset then pitch (ticks are int32, pitches 7 bits), and gives both back.
    key = (time.astype(np.int64) << 7) | pitch
    order = np.argsort(key)
    key, duration = key[order], duration[order]
    new = np.empty(len(key), dtype=bool)
    new[0] = True
    np.not_equal(key[1:], key[:-1], out=new[1:])
    if not new.all():  # duplicates: one note per key, with the key's longest duration
        first = np.flatnonzero(new)
        key, duration = key[first], np.maximum.reduceat(duration, first)
    keep = duration > 0
    if not keep.all():  # zero-length notes (a key whose longest note has length 0)
        key, duration = key[keep], duration[keep]
    return key >> 7, duration, (key & 127).astype(np.int16)


def _main_track(score: symusic.Score, programs: Sequence[int]) -> tuple[int, Any, tuple[np.ndarray, ...]]:
    """(index, track, cleaned (time, duration, pitch)) of the main track; RejectedFile when there is none."""
    best = None
    index = -1
    unreleased = False  # a candidate track had note-ons but symusic kept none of them
    for track in score.tracks:
        count = track.note_num()
        if count == 0:
            # symusic makes a track for each (chunk, channel, program) that has a note-on, and one for
            # a chunk's lyrics; an empty track without lyrics therefore only held notes never released.
            unreleased |= not track.is_drum and track.program in programs and len(track.lyrics) == 0
            continue
        index += 1
        if track.is_drum or track.program not in programs:
            continue
        if best is not None and count <= len(best[2][0]):
            continue  # cleaning only removes notes: this track cannot win
        arrays = track.notes.numpy()
        notes = _clean(arrays["time"], arrays["duration"], arrays["pitch"])
        if best is None or len(notes[0]) > len(best[2][0]):
            best = (index, track, notes)
    if best is None and unreleased:
        raise RejectedFile("the piano track's notes are never released (note-ons without note-offs)",
                           "unreleased-notes")
    if best is None:
        raise RejectedFile(f"no track with a program in {_ranges(set(programs))} (piano set)",
                           "no-piano-track")
    time = best[2][0]
    if len(time) == 0:
        raise RejectedFile("the piano track has only zero-length notes", "no-notes")
    if time[0] < 0:  # sorted: the first onset is the smallest
        raise RejectedFile(f"tick count overflows 32 bits (an onset at tick {time[0]:,}): delta-times sum "
                           "past 2**31", "tick-overflow")
    return best


def extract_notes(path: str | Path, programs: Sequence[int] = DEFAULT_PROGRAMS) -> Notes:
    """The main track's notes of one MIDI file, following the note contract (module docstring).

    Raises RejectedFile for a file that cannot be used, with a one-line reason.
    """
    data, tpq = _midi_bytes(path)
    try:
        score = symusic.Score.from_midi(data)
    except Exception as err:  # symusic raises RuntimeError/ValueError/IndexError on malformed data
        detail = str(err).removeprefix("MiniMidi: ").removesuffix(": iostream error")
        raise RejectedFile(f"unreadable MIDI: {detail}", "unreadable") from None
    index, track, (time, duration, pitch) = _main_track(score, programs)
    onset = time / tpq  # int64 / int divides in float64
    delta = np.empty_like(onset)
    delta[0] = 0.0
    np.subtract(onset[1:], onset[:-1], out=delta[1:])
    return Notes(track_index=index, program=int(track.program), name=track.name, ticks_per_quarter=tpq,
                 pitch=pitch, onset=onset, duration=duration / tpq, delta=delta)


def _ranges(values: set[int]) -> str:
    """{0,1,2,3,16,17} -> '0-3,16-17': short enough for a one-line reason."""
    out: list[str] = []
    for v in sorted(values):
        if out and int(out[-1].split("-")[-1]) == v - 1:
            out[-1] = f"{out[-1].split('-')[0]}-{v}"
        else:
            out.append(str(v))
    return ",".join(out)


@dataclass
class TrackNotes:
    """Notes to write as one MIDI track; onset and duration in beats."""

    pitch: np.ndarray
    onset: np.ndarray
    duration: np.ndarray
    program: int = 0
    is_drum: bool = False
    name: str = ""
    velocity: int = 80


def write_midi(path: str | Path, tracks: Sequence[TrackNotes], tempo: float = 120.0,
               ticks_per_quarter: int = 480) -> None:
    """Write tracks as a type-1 MIDI file, atomically. Durations shorter than one tick become one tick."""
    score = symusic.Score(ticks_per_quarter)
    score.tempos.append(symusic.Tempo(0, qpm=float(tempo)))
    for t in tracks:
        onset = np.rint(np.asarray(t.onset, dtype=np.float64) * ticks_per_quarter)
        duration = np.rint(np.asarray(t.duration, dtype=np.float64) * ticks_per_quarter)
        if len(onset) and (onset.min() < 0 or not np.isfinite(onset).all()):
            raise DmcError(f"write_midi: track '{t.name}' has a negative or non-finite onset")
        track = symusic.Track(name=t.name, program=int(t.program), is_drum=bool(t.is_drum))
        track.notes = symusic.Note.from_numpy(
            time=onset.astype(np.int32),
            duration=np.maximum(np.nan_to_num(duration, nan=1.0), 1).astype(np.int32),
            pitch=np.clip(np.asarray(t.pitch), 0, 127).astype(np.int8),
            velocity=np.full(len(onset), t.velocity, dtype=np.int8),
        )
        score.tracks.append(track)
    with atomic_path(path) as tmp:
        tmp.write_bytes(score.dumps_midi())


def programs_from_params(path: str | Path = "params.yaml") -> tuple[int, ...]:
    """`prepare.programs` from a params file; the default piano set when there is no such file."""
    from pipeline.params import load_params

    if not Path(path).is_file():
        return DEFAULT_PROGRAMS
    return tuple(load_params(path)["prepare"]["programs"])


def write_notes_json(out: TextIO, path: str | Path, programs: Sequence[int] = DEFAULT_PROGRAMS) -> None:
    """Write what the pipeline takes from one file to `out` as JSON (`dmc notes`), one note per line.

    Streamed in blocks of notes, so memory stays that of the note arrays (about 60 bytes a note) however
    long the output gets: 3M notes print about 200 MB. Raises RejectedFile before writing anything.
    """
    n = extract_notes(path, programs)
    track = {"index": n.track_index, "program": n.program, "name": n.name}
    out.write(f'{{\n "track": {json.dumps(track)},\n "ticks_per_quarter": {n.ticks_per_quarter},\n'
              ' "notes": [')
    for start in range(0, len(n), _NOTES_PER_WRITE):
        block = slice(start, start + _NOTES_PER_WRITE)
        # repr of a Python float is exactly what json.dumps writes for it.
        lines = [f'{{"pitch": {p}, "onset": {o!r}, "duration": {d!r}, "delta": {dt!r}}}'
                 for p, o, d, dt in zip(n.pitch[block].tolist(), n.onset[block].tolist(),
                                        n.duration[block].tolist(), n.delta[block].tolist(), strict=True)]
        out.write(("\n  " if start == 0 else ",\n  ") + ",\n  ".join(lines))
    out.write("\n ]\n}\n")


_NOTES_PER_WRITE = 10_000
