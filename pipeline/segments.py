"""Notes -> normalized fixed-length segments -> Parquet (and back).

A segment is `seq_len` consecutive notes of one file's main track, as three features per note:
frequency (Hz), duration (beats) and delta (beats since the previous note's onset, within the piece).
Arrays are laid out [3 features, H instrument rows, seq_len notes]; H = 1 for piano.

On disk (`data/prepared/`):
- segments.parquet: one row per segment: `dataset`, `file`, `segment` (window index in the file),
  `split`, `pitch` and the normalized `frequency`, `duration`, `delta`, each a fixed-size list of
  H*seq_len values (row-major over the H rows).
- stats.json: the train split's min/max per feature (the normalization), seq_len, instruments, counts.
- rejects.parquet: `file`, `code` (a short category) and `reason` for every file that gave no segment.
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing as mp
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from tqdm import tqdm

from pipeline.errors import DmcError
from pipeline.files import atomic_path
from pipeline.midi import DEFAULT_PROGRAMS, Notes, RejectedFile, extract_notes, frequency, pitch_of

FEATURES = ("frequency", "duration", "delta")
SPLITS = ("train", "val", "test")
SEGMENTS_FILE = "segments.parquet"
STATS_FILE = "stats.json"
REJECTS_FILE = "rejects.parquet"
ROWS_PER_GROUP = 2048
FILES_PER_WORKER = 500


@dataclass(frozen=True)
class PrepareConfig:
    """What turns one file's notes into segments; built from params.yaml by `from_params`."""

    seq_len: int = 128
    hop: int = 0  # notes between window starts; 0 means seq_len
    programs: tuple[int, ...] = DEFAULT_PROGRAMS
    max_duration: float = 16.0
    max_delta: float = 16.0
    policy: str = "segment"  # segment: drop violating windows | file: reject the whole file
    split: tuple[float, float, float] = (0.8, 0.1, 0.1)  # train, val, test
    instruments: tuple[str, ...] = ("piano",)

    @classmethod
    def from_params(cls, params: dict[str, Any]) -> PrepareConfig:
        p = params["prepare"]
        if list(params["instruments"]) != ["piano"]:
            raise DmcError("params: 'instruments' other than [piano] are not supported yet")
        return cls(seq_len=params["seq_len"], hop=p["hop"], programs=tuple(p["programs"]),
                   max_duration=float(p["max_duration"]), max_delta=float(p["max_delta"]),
                   policy=p["threshold_policy"], split=tuple(float(p["split"][s]) for s in SPLITS),
                   instruments=tuple(params["instruments"]))

    @property
    def step(self) -> int:
        return self.hop or self.seq_len


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


def file_segments(notes: Notes, config: PrepareConfig, file: str = "", split: str = "train") -> FileSegments:
    """Cut one file's notes into windows and apply the thresholds. Raises RejectedFile when none is left."""
    feats = note_features(notes)
    bad = (notes.duration > config.max_duration) | (notes.delta > config.max_delta)
    if config.policy == "file" and bad.any():
        first = int(np.argmax(bad))
        raise RejectedFile(f"note {first} exceeds max_duration/max_delta (duration "
                           f"{notes.duration[first]:g}, delta {notes.delta[first]:g} beats)", "threshold")
    starts = window_starts(len(notes), config.seq_len, config.step)
    if len(starts) == 0:
        raise RejectedFile(f"{len(notes)} notes, fewer than seq_len={config.seq_len}", "too-short")
    # A window is bad when any of its notes is: count bad notes per window with a prefix sum.
    bad_before = np.concatenate([[0], np.cumsum(bad)])
    ok = bad_before[starts + config.seq_len] == bad_before[starts]
    if not ok.any():
        raise RejectedFile(f"every window exceeds max_duration/max_delta ({len(starts)} windows)",
                           "threshold")
    kept = starts[ok]
    index = kept[:, None] + np.arange(config.seq_len)  # [S, W] note indices
    return FileSegments(
        file=file, split=split, notes=len(notes),
        windows=(kept // config.step).astype(np.int32),
        pitch=notes.pitch[index][:, None, :],
        features=feats[:, index].transpose(1, 0, 2)[:, :, None, :],
        dropped=int((~ok).sum()),
    )


def _process(job: tuple[Path, str, PrepareConfig]) -> FileSegments:
    """Worker: one file from disk to its raw segments, or the reason it has none. Never raises."""
    root, rel, config = job
    split = split_of(rel, config.split)
    try:
        return file_segments(extract_notes(root / rel, config.programs), config, rel, split)
    except RejectedFile as err:
        return FileSegments(file=rel, split=split, code=err.code, reason=err.reason)
    except Exception as err:  # a file that breaks the parser in an unforeseen way is a reject, not a crash
        return FileSegments(file=rel, split=split, code="error", reason=f"{type(err).__name__}: {err}")


@dataclass(frozen=True)
class Normalizer:
    """Min-max normalization to [0, 1] per feature, from the train split. The feature axis is axis 1
    (`[N, 3, H, W]` segments, `[n, 3]` note tables); a constant feature maps to 0."""

    lo: tuple[float, float, float]
    hi: tuple[float, float, float]

    def _shape(self, x: np.ndarray, values: Sequence[float], axis: int) -> np.ndarray:
        shape = [1] * x.ndim
        shape[axis] = len(FEATURES)
        return np.asarray(values, dtype=np.float64).reshape(shape)

    def _scale(self) -> list[float]:
        return [h - lo if h > lo else 1.0 for lo, h in zip(self.lo, self.hi, strict=True)]

    def normalize(self, x: np.ndarray, axis: int = 1) -> np.ndarray:
        """Raw features -> [0, 1] (float64; cast to float32 for storage)."""
        x = np.asarray(x, dtype=np.float64)
        return (x - self._shape(x, self.lo, axis)) / self._shape(x, self._scale(), axis)

    def denormalize(self, x: np.ndarray, axis: int = 1) -> np.ndarray:
        """[0, 1] -> raw features (float64)."""
        x = np.asarray(x, dtype=np.float64)
        return x * self._shape(x, self._scale(), axis) + self._shape(x, self.lo, axis)

    def to_stats(self) -> dict[str, Any]:
        return {"normalization": {f: {"min": lo, "max": hi} for f, lo, hi in zip(FEATURES, self.lo, self.hi,
                                                                                   strict=True)}}

    @classmethod
    def from_stats(cls, stats: dict[str, Any]) -> Normalizer:
        """From a stats.json dict (or anything holding its "normalization" entry)."""
        try:
            norm = stats["normalization"]
            return cls(lo=tuple(float(norm[f]["min"]) for f in FEATURES),
                       hi=tuple(float(norm[f]["max"]) for f in FEATURES))
        except (KeyError, TypeError) as err:
            raise DmcError(f"stats: no normalization entry for {err}") from None


def segment_to_notes(x: np.ndarray, normalizer: Normalizer) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A normalized segment `[3, W]` or `[3, H, W]` -> (pitch int16, onset, duration) in beats, each
    `[W]` or `[H, W]`. Pitch is the nearest MIDI note; negative durations and deltas become 0;
    onset = cumulative sum of delta (so it counts from the note before the segment)."""
    raw = normalizer.denormalize(np.asarray(x)[None], axis=1)[0]
    delta = np.maximum(raw[2], 0.0)
    return pitch_of(raw[0]), np.cumsum(delta, axis=-1), np.maximum(raw[1], 0.0)


# -- writing ----------------------------------------------------------------------------------------------
def _schema(width: int, value: pa.DataType) -> pa.Schema:
    return pa.schema([("dataset", pa.string()), ("file", pa.string()), ("segment", pa.int32()),
                      ("split", pa.string()), ("pitch", pa.list_(pa.int16(), width)),
                      *[(f, pa.list_(value, width)) for f in FEATURES]])


def _fixed(values: np.ndarray, width: int) -> pa.FixedSizeListArray:
    return pa.FixedSizeListArray.from_arrays(pa.array(values.reshape(-1)), width)


class _RowGroups:
    """Collect rows and write them to Parquet a row group at a time, so memory stays bounded.

    `add` takes one file's worth of columns (numpy arrays or lists); tables are built only per row group,
    because building an Arrow table per file would cost more than parsing the file.
    """

    def __init__(self, path: Path, schema: pa.Schema, rows_per_group: int = ROWS_PER_GROUP,
                 compression: str = "zstd") -> None:
        # Dictionary-encode only the repetitive string columns: on float lists it costs time, saves nothing.
        strings = [f.name for f in schema if pa.types.is_string(f.type)]
        self.writer = pq.ParquetWriter(path, schema, use_dictionary=strings, compression=compression)
        self.schema = schema
        self.rows_per_group = rows_per_group
        self.parts: list[dict[str, Any]] = []
        self.rows = 0

    def add(self, rows: int, **columns: Any) -> None:
        self.parts.append(columns)
        self.rows += rows
        if self.rows >= self.rows_per_group:
            self.flush()

    def flush(self) -> None:
        if not self.parts:
            return
        arrays = []
        for f in self.schema:
            values = [part[f.name] for part in self.parts]
            if pa.types.is_fixed_size_list(f.type):
                arrays.append(_fixed(np.concatenate(values).astype(f.type.value_type.to_pandas_dtype()),
                                     f.type.list_size))
            elif isinstance(values[0], np.ndarray):
                arrays.append(pa.array(np.concatenate(values), f.type))
            else:
                arrays.append(pa.array([v for part in values for v in part], f.type))
        table = pa.Table.from_arrays(arrays, schema=self.schema)
        self.writer.write_table(table, row_group_size=self.rows_per_group)
        self.parts, self.rows = [], 0

    def close(self) -> None:
        self.flush()
        self.writer.close()


def _results(jobs: list[tuple[Path, str, PrepareConfig]], n_jobs: int) -> Iterator[FileSegments]:
    """Process files in order, in `n_jobs` processes (in this one when 1)."""
    if n_jobs <= 1:
        yield from map(_process, jobs)
        return
    chunk = max(1, min(64, len(jobs) // (n_jobs * 8)))
    # spawn, not fork: a forked child would inherit pyarrow's and tqdm's threads mid-flight.
    with mp.get_context("spawn").Pool(n_jobs) as pool:
        yield from pool.imap(_process, jobs, chunksize=chunk)


def write_prepared(out_dir: str | Path, dataset: str, root: str | Path, files: Sequence[str],
                   config: PrepareConfig, n_jobs: int = 1) -> dict[str, Any]:
    """Prepare `files` (paths relative to `root`) into `out_dir` atomically; return the summary counts.

    Two streaming passes: the first writes raw features while it tracks the train split's min/max,
    the second rewrites them normalized as float32. The folder appears only when both are done.
    """
    t0 = time.perf_counter()
    width = len(config.instruments) * config.seq_len
    lo = np.full(len(FEATURES), np.inf)
    hi = np.full(len(FEATURES), -np.inf)
    rejected: Counter[str] = Counter()
    segments: Counter[str] = Counter()
    kept = notes = dropped = 0
    jobs = [(Path(root), rel, config) for rel in files]
    # A worker costs about a second to start and then does hundreds of files a second: only worth it
    # for big collections.
    n_jobs = max(1, min(n_jobs, len(jobs) // FILES_PER_WORKER))
    with atomic_path(out_dir) as tmp:
        tmp.mkdir()
        raw_path = tmp / "raw.parquet"
        raw = _RowGroups(raw_path, _schema(width, pa.float64()), compression="none")  # read back once
        rejects = _RowGroups(tmp / REJECTS_FILE, pa.schema([("file", pa.string()), ("code", pa.string()),
                                                            ("reason", pa.string())]))
        try:
            for result in tqdm(_results(jobs, n_jobs), total=len(jobs), desc="prepare", unit="file",
                               disable=None):
                if result.code is not None:
                    rejected[result.code] += 1
                    rejects.add(1, file=[result.file], code=[result.code], reason=[result.reason])
                    continue
                kept += 1
                notes += result.notes
                dropped += result.dropped
                segments[result.split] += len(result.windows)
                if result.split == "train":
                    lo = np.minimum(lo, result.features.min(axis=(0, 2, 3)))
                    hi = np.maximum(hi, result.features.max(axis=(0, 2, 3)))
                n = len(result.windows)
                raw.add(n, dataset=[dataset] * n, file=[result.file] * n, segment=result.windows,
                        split=[result.split] * n, pitch=result.pitch.reshape(-1),
                        **{f: result.features[:, i].reshape(-1) for i, f in enumerate(FEATURES)})
        finally:
            raw.close()
            rejects.close()
        if segments["train"] == 0:
            raise DmcError(f"dataset '{dataset}': no segments in the train split ({len(files)} files, "
                           f"{sum(rejected.values())} rejected: {dict(rejected)}); try a smaller seq_len")
        normalizer = Normalizer(lo=tuple(map(float, lo)), hi=tuple(map(float, hi)))
        _normalize_file(raw_path, tmp / SEGMENTS_FILE, normalizer, width)
        raw_path.unlink()
        seconds = time.perf_counter() - t0
        summary = {
            "dataset": dataset,
            "files": len(files),
            "kept": kept,
            "rejected": sum(rejected.values()),
            "rejected_by_reason": dict(sorted(rejected.items())),
            "notes": notes,
            "segments": {s: segments[s] for s in SPLITS},
            "segments_dropped_threshold": dropped,
            "seconds": round(seconds, 3),
            "files_per_second": round(len(files) / seconds, 1) if seconds > 0 else None,
            "n_jobs": n_jobs,
        }
        stats = {
            "features": list(FEATURES),
            **normalizer.to_stats(),
            "seq_len": config.seq_len,
            "hop": config.step,
            "instruments": list(config.instruments),
            "programs": list(config.programs),
            "max_duration": config.max_duration,
            "max_delta": config.max_delta,
            "threshold_policy": config.policy,
            "split": dict(zip(SPLITS, config.split, strict=True)),
            "counts": {k: summary[k] for k in ("files", "kept", "rejected", "notes", "segments")},
        }
        (tmp / STATS_FILE).write_text(json.dumps(stats, indent=2) + "\n")
    return summary


def _normalize_file(src: Path, dest: Path, normalizer: Normalizer, width: int) -> None:
    """Second pass: raw float64 features -> normalized float32, one row group at a time."""
    schema = _schema(width, pa.float32())
    strings = [f.name for f in schema if pa.types.is_string(f.type)]
    with pq.ParquetWriter(dest, schema, use_dictionary=strings, compression="zstd") as writer:
        source = pq.ParquetFile(src)
        for group in range(source.num_row_groups):
            table = source.read_row_group(group)
            columns = {name: table.column(name) for name in ("dataset", "file", "segment", "split", "pitch")}
            raw = np.stack([_flat(table.column(f), np.float64) for f in FEATURES])
            scaled = normalizer.normalize(raw, axis=0)
            for i, f in enumerate(FEATURES):
                columns[f] = _fixed(scaled[i].astype(np.float32), width)
            writer.write_table(pa.table(columns, schema=schema), row_group_size=ROWS_PER_GROUP)


def _flat(column: pa.ChunkedArray, dtype: type) -> np.ndarray:
    """A fixed-size-list column's values, flat, in row order."""
    if column.num_chunks == 0:
        return np.zeros(0, dtype=dtype)
    return np.concatenate([c.flatten().to_numpy(zero_copy_only=False) for c in column.chunks]).astype(dtype)


# -- reading ----------------------------------------------------------------------------------------------
def load_stats(prepared_dir: str | Path) -> dict[str, Any]:
    """stats.json of a prepared folder."""
    path = Path(prepared_dir) / STATS_FILE
    if not path.is_file():
        raise DmcError(f"no {STATS_FILE} in {prepared_dir}; run the prepare stage first (dvc repro prepare)")
    return json.loads(path.read_text())


def _read_split(prepared_dir: str | Path, split: str, columns: list[str]) -> pa.Table:
    if split not in SPLITS:
        raise DmcError(f"unknown split '{split}'; choose one of {', '.join(SPLITS)}")
    path = Path(prepared_dir) / SEGMENTS_FILE
    if not path.is_file():
        raise DmcError(f"no {SEGMENTS_FILE} in {prepared_dir}; run the prepare stage first "
                       "(dvc repro prepare)")
    return pq.read_table(path, columns=columns, filters=[("split", "==", split)])


def load_split(prepared_dir: str | Path, split: str) -> np.ndarray:
    """The normalized segments of one split: float32 `[N, 3, H, seq_len]` (feature axis 1)."""
    stats = load_stats(prepared_dir)
    h, w = len(stats["instruments"]), stats["seq_len"]
    table = _read_split(prepared_dir, split, list(FEATURES))
    return np.stack([_flat(table.column(f), np.float32).reshape(-1, h, w) for f in FEATURES], axis=1)


def load_pitches(prepared_dir: str | Path, split: str) -> np.ndarray:
    """The MIDI pitches of one split's segments: int16 `[N, H, seq_len]`, rows aligned with `load_split`."""
    stats = load_stats(prepared_dir)
    h, w = len(stats["instruments"]), stats["seq_len"]
    return _flat(_read_split(prepared_dir, split, ["pitch"]).column("pitch"), np.int16).reshape(-1, h, w)
