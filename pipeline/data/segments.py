"""Notes -> fixed-length segments: the windows the prepare stage cuts, split by file, as arrays.

A segment is `seq_len` consecutive notes of one file's main track, as three features per note:
frequency (Hz), duration (beats) and delta (beats since the previous note's onset, within the piece).
Arrays are laid out [3 features, H instrument rows, seq_len notes]; H = 1 for piano.

Multi-instrument mode (`instruments` other than `[piano]`): the H rows of a segment are each group's main
track over one shared span of beats, cut as `pipeline.data.instruments` describes (rows padded at the end;
the first delta of a row counts from the span's start), with a mask of the real notes. How segments are
stored and read back is `pipeline.data.prepared`.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.data.encoding import ORIGINAL, Encoding
from pipeline.data.instruments import (
    RowWindows,
    extract_rows,
    file_windows,
    groups_of,
    is_single_piano,
)
from pipeline.data.midi import DEFAULT_PROGRAMS, Notes, RejectedFile, extract_notes, frequency, pitch_of
from pipeline.errors import DmcError

SPLITS = ("train", "val", "test")



@dataclass(frozen=True)
class PrepareConfig:
    """What turns one file's notes into segments; built from params.yaml by `from_params`."""

    seq_len: int = 128
    hop: int = 0  # notes between train window starts; 0 means seq_len (val and test never overlap)
    programs: tuple[int, ...] = DEFAULT_PROGRAMS
    max_duration: float = 16.0
    max_delta: float = 16.0
    policy: str = "segment"  # segment: drop violating windows | file: reject the whole file
    split: tuple[float, float, float] = (0.8, 0.1, 0.1)  # train, val, test
    instruments: tuple[str, ...] = ("piano",)
    min_instruments: int = 1  # multi-instrument mode: groups a file must have
    features: tuple[str, str, str, bool] = ("frequency", "linear", "minmax", False)  # pitch/time/scale/chord

    @classmethod
    def from_params(cls, params: dict[str, Any]) -> PrepareConfig:
        p = params["prepare"]
        groups_of(params["instruments"])  # unknown names fail here, in one line
        if p["min_instruments"] > len(params["instruments"]):
            raise DmcError(f"params: 'prepare.min_instruments' ({p['min_instruments']}) exceeds the "
                           f"{len(params['instruments'])} group(s) in 'instruments'")
        return cls(seq_len=params["seq_len"], hop=p["hop"], programs=tuple(p["programs"]),
                   max_duration=float(p["max_duration"]), max_delta=float(p["max_delta"]),
                   policy=p["threshold_policy"], split=tuple(float(p["split"][s]) for s in SPLITS),
                   instruments=tuple(params["instruments"]), min_instruments=p["min_instruments"],
                   features=tuple(features_of(params)))

    @property
    def step(self) -> int:
        return self.hop or self.seq_len

    def hop_for(self, relative_path: str) -> int:
        """Overlapping windows multiply the train data only: val and test windows never overlap, so the
        evaluation's reference is the same whatever `hop` is."""
        return self.hop if split_of(relative_path, self.split) == "train" else 0

    @property
    def multi(self) -> bool:
        """Multi-instrument mode: rows from `pipeline.data.instruments`, with a mask."""
        return not is_single_piano(self.instruments)


def features_of(params: dict[str, Any]) -> tuple[str, str, str, bool]:
    """(pitch, time, scale, chord) from params.yaml `features`: a mapping, or `original` (the seed's)."""
    spec = params.get("features", "original")
    spec = ORIGINAL if spec == "original" else {**ORIGINAL, **spec}
    return spec["pitch"], spec["time"], spec["scale"], bool(spec["chord"])


def split_of(relative_path: str, fractions: Sequence[float] = (0.8, 0.1, 0.1)) -> str:
    """The split of a file, from the SHA-1 of its relative path: the same on every run and machine."""
    u = int.from_bytes(hashlib.sha1(relative_path.encode("utf-8")).digest()[:8], "big") / 2.0**64
    edge = 0.0
    for name, fraction in zip(SPLITS, fractions, strict=True):
        edge += fraction
        if u < edge:
            return name
    return SPLITS[-1]  # u can only get here through rounding of fractions summing to 1


def note_features(notes: Notes) -> np.ndarray:
    """[3, n] float64: frequency (Hz), duration (beats), delta (beats) of each note."""
    return np.stack([frequency(notes.pitch), notes.duration, notes.delta])


def window_starts(n: int, seq_len: int, hop: int) -> np.ndarray:
    """Start indices of the full windows of `seq_len` notes, every `hop` notes; a short tail is dropped."""
    return np.arange(0, n - seq_len + 1, hop) if n >= seq_len else np.zeros(0, dtype=np.int64)


@dataclass
class FileSegments:
    """What one file gave: its windows (or the reason it gave none)."""

    file: str
    split: str
    notes: int = 0
    windows: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))  # window indices
    pitch: np.ndarray = field(default_factory=lambda: np.zeros((0, 1, 0), dtype=np.int16))  # [S, H, W]
    features: np.ndarray = field(default_factory=lambda: np.zeros((0, 3, 1, 0)))  # [S, 3, H, W] raw
    dropped: int = 0  # windows dropped for a threshold violation
    code: str | None = None  # set when the file is rejected
    reason: str | None = None


@dataclass
class Windows:
    """The kept windows of a batch of files, all in one set of arrays: row s is window `windows[s]` of
    file `owner[s]` (an index into the batch). Per-file numpy calls would cost more than parsing a file,
    so a batch is cut with a fixed number of array operations."""

    owner: np.ndarray  # [S] int
    windows: np.ndarray  # [S] int32, the window's index within its file
    pitch: np.ndarray  # [S, H, W] int16
    features: np.ndarray  # [S, 3, H, W] float64, raw
    notes: np.ndarray  # [F] notes of each kept file's main track (0 when rejected)
    dropped: np.ndarray  # [F] windows dropped for a threshold violation
    rejects: dict[int, RejectedFile]  # file index -> why it gave no window
    mask: np.ndarray | None = None  # multi-instrument mode: [S, H, W] uint8, 1 = a real note
    programs: np.ndarray | None = None  # multi-instrument mode: [F, H] GM program per row, -1 absent


def _concat(arrays: list[np.ndarray], dtype: type) -> np.ndarray:
    return np.concatenate(arrays) if arrays else np.zeros(0, dtype=dtype)


def cut_windows(files: Sequence[Notes | RejectedFile], config: PrepareConfig,
                hops: Sequence[int] | None = None) -> Windows:
    """Cut each file's notes into windows and apply the thresholds; a file with no window left (or one
    that came in rejected) gets its RejectedFile in `rejects`. `hops` (one per file, 0 = seq_len)
    overrides `config.hop`."""
    notes = [f for f in files if isinstance(f, Notes)]
    n = np.array([len(f) if isinstance(f, Notes) else 0 for f in files], dtype=np.int64)
    pitch = _concat([f.pitch for f in notes], np.int16)
    duration = _concat([f.duration for f in notes], np.float64)
    delta = _concat([f.delta for f in notes], np.float64)
    first_note = np.concatenate([[0], np.cumsum(n)])  # file f's notes are first_note[f]:first_note[f + 1]
    bad = (duration > config.max_duration) | (delta > config.max_delta)
    bad_before = np.concatenate([[0], np.cumsum(bad)])  # a prefix sum counts bad notes in any range
    file_bad = bad_before[first_note[1:]] > bad_before[first_note[:-1]]

    # Window w of file f starts at note first_note[f] + w * step; a short tail is dropped.
    seq_len = config.seq_len
    hops = [config.hop] * len(files) if hops is None else hops
    step = np.array([h or seq_len for h in hops], dtype=np.int64)
    count = np.where(n >= seq_len, (n - seq_len) // step + 1, 0)
    owner = np.repeat(np.arange(len(files)), count)
    window = np.arange(len(owner)) - np.repeat(np.cumsum(count) - count, count)
    start = first_note[owner] + window * step[owner]
    ok = bad_before[start + seq_len] == bad_before[start]
    if config.policy == "file":
        ok &= ~file_bad[owner]
    kept = np.bincount(owner[ok], minlength=len(files))

    rejects: dict[int, RejectedFile] = {}
    for f in np.flatnonzero(kept == 0).tolist():  # the rare files with nothing left: say why
        if isinstance(files[f], RejectedFile):
            rejects[f] = files[f]
        elif config.policy == "file" and file_bad[f]:
            i = first_note[f] + int(np.argmax(bad[first_note[f]:first_note[f + 1]]))
            rejects[f] = RejectedFile(f"note {i - first_note[f]} exceeds max_duration/max_delta (duration "
                                      f"{duration[i]:g}, delta {delta[i]:g} beats)", "threshold")
        elif count[f] == 0:
            rejects[f] = RejectedFile(f"{n[f]} notes, fewer than seq_len={seq_len}", "too-short")
        else:
            rejects[f] = RejectedFile(f"every window exceeds max_duration/max_delta ({count[f]} windows)",
                                      "threshold")
    dropped = count - kept
    dropped[list(rejects)] = 0
    n[list(rejects)] = 0

    index = start[ok][:, None] + np.arange(seq_len)  # [S, W] note indices
    features = np.stack([frequency(pitch), duration, delta])[:, index]  # [3, S, W]
    return Windows(owner=owner[ok], windows=window[ok].astype(np.int32), pitch=pitch[index][:, None, :],
                   features=features.transpose(1, 0, 2)[:, :, None, :], notes=n, dropped=dropped,
                   rejects=rejects)


def file_segments(notes: Notes, config: PrepareConfig, file: str = "", split: str = "train") -> FileSegments:
    """Cut one file's notes into windows and apply the thresholds. Raises RejectedFile when none is left."""
    cut = cut_windows([notes], config)
    if cut.rejects:
        raise cut.rejects[0]
    return FileSegments(file=file, split=split, notes=int(cut.notes[0]), windows=cut.windows, pitch=cut.pitch,
                        features=cut.features, dropped=int(cut.dropped[0]))


def _extract(path: Path, programs: Sequence[int]) -> Notes | RejectedFile:
    """One file's notes, or why it has none. Never raises."""
    try:
        return extract_notes(path, programs)
    except RejectedFile as err:
        return err
    except Exception as err:  # a file that breaks the parser in an unforeseen way is a reject, not a crash
        return RejectedFile(f"{type(err).__name__}: {err}", "error")


def cut_rows(paths: Sequence[Path], config: PrepareConfig, hops: Sequence[int] | None = None) -> Windows:
    """Multi-instrument mode: each file's group rows cut into time-aligned windows
    (`pipeline.data.instruments`); a file that gives no window gets its RejectedFile in `rejects`. Never
    raises."""
    groups = groups_of(config.instruments)
    h, w = len(groups), config.seq_len
    cuts: dict[int, RowWindows] = {}
    rejects: dict[int, RejectedFile] = {}
    for f, path in enumerate(paths):
        try:
            hop = config.hop if hops is None else hops[f]
            cuts[f] = file_windows(extract_rows(path, groups), w, hop, config.max_duration,
                                   config.max_delta, config.policy, config.min_instruments)
        except RejectedFile as err:
            rejects[f] = err
        except Exception as err:  # a file that breaks the parser unforeseenly is a reject, not a crash
            rejects[f] = RejectedFile(f"{type(err).__name__}: {err}", "error")
    parts = list(cuts.values())
    notes, dropped = np.zeros(len(paths), dtype=np.int64), np.zeros(len(paths), dtype=np.int64)
    programs = np.full((len(paths), h), -1, dtype=np.int64)
    for f, cut in cuts.items():
        notes[f], dropped[f], programs[f] = cut.notes, cut.dropped, cut.programs
    return Windows(owner=np.repeat(list(cuts), [len(c.windows) for c in parts]).astype(np.int64),
                   windows=_concat([c.windows for c in parts], np.int32),
                   pitch=np.concatenate([c.pitch for c in parts]) if parts else np.zeros((0, h, w), np.int16),
                   features=np.concatenate([c.features for c in parts]) if parts else np.zeros((0, 3, h, w)),
                   mask=np.concatenate([c.mask for c in parts]) if parts else np.zeros((0, h, w), np.uint8),
                   notes=notes, dropped=dropped, rejects=rejects, programs=programs)


def cut_batch(job: tuple[Path, list[str], PrepareConfig]) -> tuple[list[str], Windows]:
    """Worker: a batch of files from disk to their raw windows (and rejects). Never raises."""
    root, rels, config = job
    hops = [config.hop_for(rel) for rel in rels]
    if config.multi:
        return rels, cut_rows([root / rel for rel in rels], config, hops)
    return rels, cut_windows([_extract(root / rel, config.programs) for rel in rels], config, hops)


def segment_to_notes(x: np.ndarray, encoding: Encoding) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A normalized segment `[3, W]` or `[3, H, W]` -> (pitch int16, onset, duration) in beats, each
    `[W]` or `[H, W]`. Pitch is the nearest MIDI note; negative durations and deltas become 0;
    onset = cumulative sum of delta (so it counts from the note before the segment)."""
    raw = encoding.decode(np.asarray(x)[None], axis=1)[0]
    delta = np.maximum(raw[2], 0.0)
    return pitch_of(raw[0]), np.cumsum(delta, axis=-1), np.maximum(raw[1], 0.0)
