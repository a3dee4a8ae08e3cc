"""Multi-instrument mode: instrument groups, one main track per group, and time-aligned segment rows.

The param `instruments` lists groups; each group is one row of the model's height axis (H = number of
groups). `[piano]` alone is the original single-row mode, handled by `pipeline.data.segments` unchanged
(its track set is `prepare.programs`); any other list takes the path described here.

Groups (`GROUPS`): the General MIDI families (piano 0-7, chromatic 8-15, organ 16-23, guitar, bass,
strings, ensemble, brass, reed, pipe, lead, pad, fx, ethnic, percussive), `drums` (any track with the
drum flag, i.e. MIDI channel 10), and the voices of a corpus (`soprano`, `alto`, `tenor`, `bass`),
which are found by track name. A track belongs to at most one group:
1. a track whose name names a requested group ("Bass", "Soprano", "Strings 2": the name, or its first
   word, lower-cased) belongs to that group only;
2. otherwise a drum track belongs to `drums`, any other track to the group holding its program.
Per group, the main track is the one with the most notes (after the note contract's cleaning), the
first in file order on ties. A file is kept when at least `prepare.min_instruments` groups have a track.

Time alignment of the rows of one segment (`window_spans`, `file_windows`):
- every row of a segment covers the same span of beats [start, end);
- a span starts on a note onset and ends where the first row would get its (seq_len + 1)-th note, so
  the busiest row is full and the others hold fewer notes; no row ever loses a note inside its span;
- each row holds its notes of the span in (onset, pitch) order from position 0, then padding; the
  `mask` (1 = a real note) marks them, so padding is always a suffix and an absent row is all padding;
- a row's `delta` is the gap to the previous note of the same row, and the first note's delta is
  measured from the span's start, so the running sum of delta is the onset from the span's start in
  every row and the rows stay aligned in time;
- with `hop` = 0 the next span starts where this one ended (every note in exactly one segment); with
  hop > 0 it starts at the hop-th note of the row that ended the span. A tail in which no row reaches
  seq_len notes is dropped, as in single-row mode.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import symusic

from pipeline.data.midi import Notes, RejectedFile, _clean, _midi_bytes, frequency
from pipeline.errors import DmcError


@dataclass(frozen=True)
class Group:
    """A named set of tracks: by GM program, by the drum flag, or by track name (`names`)."""

    name: str
    programs: tuple[int, ...] = ()
    drum: bool = False
    names: tuple[str, ...] = ()  # more track names (lower-case) of the group; its own name always counts
    program: int = 0  # written when the training data gives none (see `row_programs`)

    @property
    def aliases(self) -> tuple[str, ...]:
        return (self.name, *self.names)


def _family(name: str, first: int, program: int | None = None, names: tuple[str, ...] = ()) -> Group:
    return Group(name, tuple(range(first, first + 8)), names=names,
                 program=first if program is None else program)


GROUPS: dict[str, Group] = {g.name: g for g in (
    _family("piano", 0),
    _family("chromatic", 8),
    _family("organ", 16, 19),
    _family("guitar", 24, 25),
    _family("bass", 32, 33),  # also the bass voice of a choir: a track named "Bass"
    _family("strings", 40, names=("violin", "viola", "cello", "contrabass")),
    _family("ensemble", 48),
    _family("brass", 56, names=("trumpet", "trombone", "horn", "tuba")),
    _family("reed", 64, names=("oboe", "clarinet", "bassoon", "saxophone")),
    _family("pipe", 72, names=("flute", "piccolo", "recorder")),
    _family("lead", 80),
    _family("pad", 88),
    _family("fx", 96),
    _family("ethnic", 104),
    _family("percussive", 112),
    Group("drums", drum=True),
    Group("soprano", names=("sopran", "cantus", "discantus")),
    Group("alto", names=("alt", "altus")),
    Group("tenor"),
)}


def groups_of(names: Sequence[str]) -> list[Group]:
    """The groups named in `instruments`; DmcError naming an unknown one."""
    unknown = [n for n in names if n not in GROUPS]
    if unknown:
        raise DmcError(f"params: unknown instrument group {unknown[0]!r} in 'instruments'; choose from "
                       f"{', '.join(GROUPS)}")
    return [GROUPS[n] for n in names]


def is_single_piano(names: Sequence[str]) -> bool:
    """The original single-row mode (and the default)."""
    return list(names) == ["piano"]


def _name_key(name: str) -> tuple[str, str]:
    name = name.strip().lower().rstrip(".")
    return name, (name.split() or [""])[0].rstrip(".")


def group_of(groups: Sequence[Group], program: int, is_drum: bool, name: str) -> int | None:
    """Index in `groups` of the group a track belongs to (module docstring), or None."""
    full, first = _name_key(name)
    for i, g in enumerate(groups):
        if full in g.aliases or first in g.aliases:
            return i
    for i, g in enumerate(groups):
        if (g.drum and is_drum) or (not is_drum and program in g.programs):
            return i
    return None


def extract_rows(path: str | Path, groups: Sequence[Group]) -> list[Notes | None]:
    """Each group's main track of one MIDI file (None where the file has none), following the note
    contract of `pipeline.data.midi` (cleaning, beats from the file's ticks-per-quarter, delta within the
    track).

    Raises RejectedFile for a file that cannot be read or has no track in any group.
    """
    data, tpq = _midi_bytes(path)
    try:
        score = symusic.Score.from_midi(data)
    except Exception as err:  # symusic raises RuntimeError/ValueError/IndexError on malformed data
        raise RejectedFile(f"unreadable MIDI: {str(err).removeprefix('MiniMidi: ')}", "unreadable") from None
    best: list[Notes | None] = [None] * len(groups)
    index = -1
    for track in score.tracks:
        if track.note_num() == 0:
            continue
        index += 1
        g = group_of(groups, int(track.program), bool(track.is_drum), track.name)
        if g is None or (best[g] is not None and track.note_num() <= len(best[g])):
            continue
        arrays = track.notes.numpy()
        time, duration, pitch = _clean(arrays["time"], arrays["duration"], arrays["pitch"])
        if len(time) == 0 or (best[g] is not None and len(time) <= len(best[g])):
            continue
        onset = time / tpq
        delta = np.diff(onset, prepend=onset[0])
        best[g] = Notes(track_index=index, program=int(track.program), name=track.name, ticks_per_quarter=tpq,
                        pitch=pitch, onset=onset, duration=duration / tpq, delta=delta)
    if all(b is None for b in best):
        raise RejectedFile(f"no track in any of the groups {', '.join(g.name for g in groups)}",
                           "no-instrument-track")
    return best


# -- aligned windows -------------------------------------------------------------------------------------


@dataclass
class Span:
    """One segment's span of beats and, per row, its notes there: indices first[r] .. first[r] + count[r]."""

    start: float
    end: float
    first: np.ndarray  # [H] int
    count: np.ndarray  # [H] int, each <= seq_len


def window_spans(onsets: Sequence[np.ndarray], seq_len: int, hop: int = 0) -> list[Span]:
    """The spans of a file's segments from each row's sorted onsets (beats); see the module docstring."""
    onsets = [np.asarray(o, dtype=np.float64) for o in onsets]
    present = [o for o in onsets if len(o)]
    if not present:
        return []
    spans: list[Span] = []
    start = min(float(o[0]) for o in present)
    while True:
        first = np.array([np.searchsorted(o, start, "left") for o in onsets])
        full = [r for r, o in enumerate(onsets) if first[r] + seq_len < len(o)]
        if not full:
            break  # the tail: no row fills a window any more
        limit = min(full, key=lambda r: onsets[r][first[r] + seq_len])
        end = float(onsets[limit][first[limit] + seq_len])
        if end <= start:  # more than seq_len notes at one onset: skip that instant
            later = [float(o[o > start][0]) for o in onsets if len(o) and o[-1] > start]
            if not later:
                break
            start = min(later)
            continue
        count = np.array([np.searchsorted(o, end, "left") for o in onsets]) - first
        spans.append(Span(start, end, first, count))
        nxt = end
        if 0 < hop < seq_len:
            nxt = float(onsets[limit][first[limit] + hop])
            nxt = nxt if nxt > start else end
        start = nxt
    return spans


@dataclass
class RowWindows:
    """One file's segments in multi-instrument mode (raw features, not normalized)."""

    windows: np.ndarray  # [S] int32, the span's index within the file
    pitch: np.ndarray  # [S, H, W] int16, 0 where padded
    features: np.ndarray  # [S, 3, H, W] float64, 0 where padded
    mask: np.ndarray  # [S, H, W] uint8, 1 = a real note
    dropped: int  # spans dropped for a threshold violation
    notes: int  # notes of the file's main tracks
    programs: np.ndarray  # [H] GM program of each row's track, -1 where absent


def file_windows(rows: Sequence[Notes | None], seq_len: int, hop: int = 0, max_duration: float = np.inf,
                 max_delta: float = np.inf, policy: str = "segment", min_instruments: int = 1) -> RowWindows:
    """Cut one file's rows (from `extract_rows`) into aligned segments and apply the thresholds.

    A note violates when its duration exceeds `max_duration` or its delta (within its row; the first
    note's from the span's start) exceeds `max_delta`. Raises RejectedFile when the file has fewer than
    `min_instruments` rows, violates under policy "file", or gives no segment.
    """
    present = sum(r is not None for r in rows)
    if present < min_instruments:
        raise RejectedFile(f"{present} of the instrument groups present, fewer than min_instruments="
                           f"{min_instruments}", "too-few-instruments")
    empty = np.zeros(0)
    onsets = [r.onset if r is not None else empty for r in rows]
    spans = window_spans(onsets, seq_len, hop)
    if not spans:
        longest = max(len(o) for o in onsets)
        raise RejectedFile(f"{longest} notes in the busiest row, fewer than seq_len={seq_len}", "too-short")
    h = len(rows)
    pitch = np.zeros((len(spans), h, seq_len), dtype=np.int16)
    features = np.zeros((len(spans), 3, h, seq_len))
    mask = np.zeros((len(spans), h, seq_len), dtype=np.uint8)
    for s, span in enumerate(spans):
        for r, row in enumerate(rows):
            k = int(span.count[r])
            if row is None or k == 0:
                continue
            i = slice(span.first[r], span.first[r] + k)
            onset = row.onset[i]
            pitch[s, r, :k] = row.pitch[i]
            features[s, 0, r, :k] = frequency(row.pitch[i])
            features[s, 1, r, :k] = row.duration[i]
            features[s, 2, r, :k] = np.diff(onset, prepend=span.start)
            mask[s, r, :k] = 1
    real = mask.astype(bool)
    bad = real & ((features[:, 1] > max_duration) | (features[:, 2] > max_delta))  # [S, H, W]
    ok = ~bad.any(axis=(1, 2))
    if policy == "file" and not ok.all():
        s, r, w = np.argwhere(bad)[0]
        raise RejectedFile(f"row {r} note {w} of segment {s} exceeds max_duration/max_delta (duration "
                           f"{features[s, 1, r, w]:g}, delta {features[s, 2, r, w]:g} beats)", "threshold")
    if not ok.any():
        raise RejectedFile(f"every window exceeds max_duration/max_delta ({len(spans)} windows)", "threshold")
    programs = np.array([-1 if r is None else r.program for r in rows], dtype=np.int64)
    return RowWindows(windows=np.flatnonzero(ok).astype(np.int32), pitch=pitch[ok], features=features[ok],
                      mask=mask[ok], dropped=int((~ok).sum()), programs=programs,
                      notes=sum(len(r) for r in rows if r is not None))


def row_programs(groups: Sequence[Group], programs: np.ndarray) -> list[int]:
    """The GM program to write for each row: the most common one among the training files' tracks of
    that group (`programs` [F, H], -1 absent), else the group's own. Chorales materialized as program-0
    voices stay program 0, a Lakh bass row gets the bass most files use."""
    out = []
    for r, g in enumerate(groups):
        column = programs[:, r] if len(programs) else np.zeros(0, dtype=np.int64)
        column = column[column >= 0]
        out.append(int(np.bincount(column).argmax()) if len(column) else g.program)
    return out
