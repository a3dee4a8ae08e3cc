"""An independent, plain-Python extractor of the note contract, built on mido.

It shares no code with pipeline/data/midi.py: the tests check that both give identical notes on real files,
and the benchmark measures how much faster the symusic path is.
"""

from __future__ import annotations

from collections import deque
from pathlib import Path

import mido

DRUM_CHANNEL = 9


def _tracks(mid: mido.MidiFile) -> list[dict]:
    """Split every MIDI track chunk into (channel, program) tracks, the way symusic does.

    A note belongs to the program its channel had at its note-on; a note-off releases the earliest
    pending note-on of the same channel and pitch in the same chunk (first in, first out).
    """
    out = []
    for chunk in mid.tracks:
        program = [0] * 16
        pending: dict[tuple[int, int], deque] = {}
        groups: dict[tuple[int, int], list[tuple[int, int, int]]] = {}
        name = ""
        tick = 0
        for msg in chunk:
            tick += msg.time
            if msg.type == "track_name":  # mido decodes text as latin-1; MIDI files in the wild use UTF-8
                name = msg.name.encode("latin-1").decode("utf-8", errors="replace")
            elif msg.type == "program_change":
                program[msg.channel] = msg.program
            elif msg.type == "note_on" and msg.velocity > 0:
                pending.setdefault((msg.channel, msg.note), deque()).append((tick, program[msg.channel]))
            elif msg.type in ("note_off", "note_on"):
                queue = pending.get((msg.channel, msg.note))
                if queue:
                    start, prog = queue.popleft()
                    groups.setdefault((msg.channel, prog), []).append((start, tick - start, msg.note))
        for (channel, prog) in sorted(groups):
            out.append({"channel": channel, "program": prog, "name": name, "notes": groups[(channel, prog)]})
    return out


def _clean(notes: list[tuple[int, int, int]]) -> list[tuple[int, int, int]]:
    """Drop zero-length notes; of notes with the same onset and pitch keep the longest; sort."""
    longest: dict[tuple[int, int], int] = {}
    for start, length, pitch in notes:
        if length > 0 and length > longest.get((start, pitch), 0):
            longest[(start, pitch)] = length
    return [(start, longest[(start, pitch)], pitch) for start, pitch in sorted(longest)]


def extract(path: str | Path, programs=tuple(range(0, 8)) + tuple(range(16, 24))) -> dict | None:
    """The main track as {"track_index", "program", "name", "ticks_per_quarter", "pitch", "onset",
    "duration", "delta"} (lists, times in beats), or None when the file has no usable piano track."""
    mid = mido.MidiFile(str(path))
    tpq = mid.ticks_per_beat
    best = None
    for index, track in enumerate(_tracks(mid)):
        if track["channel"] == DRUM_CHANNEL or track["program"] not in programs:
            continue
        notes = _clean(track["notes"])
        if best is None or len(notes) > len(best[2]):
            best = (index, track, notes)
    if best is None or not best[2]:
        return None
    index, track, notes = best
    onset = [start / tpq for start, _, _ in notes]
    return {
        "track_index": index,
        "program": track["program"],
        "name": track["name"],
        "ticks_per_quarter": tpq,
        "pitch": [pitch for _, _, pitch in notes],
        "onset": onset,
        "duration": [length / tpq for _, length, _ in notes],
        "delta": [0.0] + [b - a for a, b in zip(onset, onset[1:], strict=False)],
    }
