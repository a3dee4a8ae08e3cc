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

Multi-instrument mode (`instruments` other than `[piano]`): the H rows of a segment are each group's main
track over one shared span of beats, cut as `pipeline.data.instruments` describes (rows padded at the end; the
first delta of a row counts from the span's start). segments.parquet then has one more column, `mask`
(list<uint8> of H*seq_len, 1 = a real note; padded entries hold 0 in every feature and in `pitch`), and
stats.json has `row_programs` (the GM program to write per row) and `min_instruments`. The min/max
normalization counts real notes only. The single-piano files are exactly as they were.
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

from pipeline.data.encoding import FEATURES, ORIGINAL, Encoding, EncodingFit
from pipeline.errors import DmcError, ignore_interrupts
from pipeline.files import atomic_path
from pipeline.data.instruments import (
    RowWindows,
    extract_rows,
    file_windows,
    groups_of,
    is_single_piano,
    row_programs,
)
from pipeline.data.midi import DEFAULT_PROGRAMS, Notes, RejectedFile, extract_notes, frequency, pitch_of

SPLITS = ("train", "val", "test")
SEGMENTS_FILE = "segments.parquet"
STATS_FILE = "stats.json"
REJECTS_FILE = "rejects.parquet"
ROWS_PER_GROUP = 2048
FILES_PER_WORKER = 500
FILES_PER_BATCH = 128


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
    """Multi-instrument mode: each file's group rows cut into time-aligned windows (`pipeline.data.instruments`);
    a file that gives no window gets its RejectedFile in `rejects`. Never raises."""
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


def _process(job: tuple[Path, list[str], PrepareConfig]) -> tuple[list[str], Windows]:
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


# -- writing ----------------------------------------------------------------------------------------------
def _schema(width: int, value: pa.DataType, mask: bool = False) -> pa.Schema:
    return pa.schema([("dataset", pa.string()), ("file", pa.string()), ("segment", pa.int32()),
                      ("split", pa.string()), ("pitch", pa.list_(pa.int16(), width)),
                      *[(f, pa.list_(value, width)) for f in FEATURES],
                      *([("mask", pa.list_(pa.uint8(), width))] if mask else [])])


def _fixed(values: np.ndarray, width: int) -> pa.FixedSizeListArray:
    return pa.FixedSizeListArray.from_arrays(pa.array(values.reshape(-1)), width)


def _parquet_writer(path: Path, schema: pa.Schema) -> pq.ParquetWriter:
    # Dictionary-encode and keep statistics only for the scalar columns (statistics let readers skip row
    # groups by split); on float lists both cost time and give nothing.
    strings = [f.name for f in schema if pa.types.is_string(f.type)]
    scalars = [f.name for f in schema if not pa.types.is_fixed_size_list(f.type)]
    return pq.ParquetWriter(path, schema, use_dictionary=strings, write_statistics=scalars,
                            compression="zstd")


class _RowGroups:
    """Collect rows and write them a row group at a time (Parquet, or Arrow IPC for the raw pass), so
    memory stays bounded.

    `add` takes a batch's worth of columns (numpy arrays or lists); tables are built only per row group,
    because building an Arrow table per file would cost more than parsing the file.
    """

    def __init__(self, writer: pq.ParquetWriter | pa.ipc.RecordBatchFileWriter, schema: pa.Schema,
                 rows_per_group: int = ROWS_PER_GROUP) -> None:
        self.writer = writer
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
        self.writer.write_table(table)
        self.parts, self.rows = [], 0

    def close(self) -> None:
        self.flush()
        self.writer.close()


def _results(jobs: list[tuple[Path, list[str], PrepareConfig]], n_jobs: int
             ) -> Iterator[tuple[list[str], Windows]]:
    """Process batches of files in order, in `n_jobs` processes (in this one when 1)."""
    if n_jobs <= 1:
        yield from map(_process, jobs)
        return
    # spawn, not fork: a forked child would inherit pyarrow's and tqdm's threads mid-flight.
    with mp.get_context("spawn").Pool(n_jobs, initializer=ignore_interrupts) as pool:
        yield from pool.imap(_process, jobs)


def write_prepared(out_dir: str | Path, dataset: str, root: str | Path, files: Sequence[str],
                   config: PrepareConfig, n_jobs: int = 1) -> dict[str, Any]:
    """Prepare `files` (paths relative to `root`) into `out_dir` atomically; return the summary counts.

    Two streaming passes: the first writes raw features while it tracks the train split's min/max,
    the second rewrites them normalized as float32. The folder appears only when both are done.
    """
    t0 = time.perf_counter()
    width = len(config.instruments) * config.seq_len
    fit = EncodingFit(*config.features)
    rejected: Counter[str] = Counter()
    segments: Counter[str] = Counter()
    kept = notes = dropped = 0
    train_programs = []  # multi-instrument mode: [H] programs of each kept train file
    # A worker costs about a second to start and then does hundreds of files a second: only worth it
    # for big collections.
    n_jobs = max(1, min(n_jobs, len(files) // FILES_PER_WORKER))
    size = max(1, min(FILES_PER_BATCH, -(-len(files) // (4 * n_jobs))))  # >= 4 batches per worker
    jobs = [(Path(root), list(files[i:i + size]), config) for i in range(0, len(files), size)]
    with atomic_path(out_dir) as tmp:
        tmp.mkdir()
        raw_path = tmp / "raw.arrow"
        # The raw pass is read back once, by the second pass: Arrow IPC writes and maps it back at memory
        # speed, where Parquet would encode and decode every value.
        raw_schema = _schema(width, pa.float64(), mask=config.multi)
        raw = _RowGroups(pa.ipc.new_file(str(raw_path), raw_schema), raw_schema)
        rejects_schema = pa.schema([("file", pa.string()), ("code", pa.string()), ("reason", pa.string())])
        rejects = _RowGroups(_parquet_writer(tmp / REJECTS_FILE, rejects_schema), rejects_schema)
        bar = tqdm(total=len(files), desc="prepare", unit="file", disable=None)
        try:
            for rels, cut in _results(jobs, n_jobs):
                bar.update(len(rels))
                for f, err in cut.rejects.items():
                    rejected[err.code] += 1
                    rejects.add(1, file=[rels[f]], code=[err.code], reason=[err.reason])
                kept += len(rels) - len(cut.rejects)
                notes += int(cut.notes.sum())
                dropped += int(cut.dropped.sum())
                row_split = np.array([SPLITS.index(split_of(rel, config.split)) for rel in rels],
                                     dtype=np.int64)[cut.owner]
                segments.update(dict(zip(SPLITS, np.bincount(row_split, minlength=len(SPLITS)).tolist(),
                                         strict=True)))
                train = cut.features[row_split == 0]
                if cut.mask is not None:  # padding is not music: only real notes set the range
                    real = cut.mask[row_split == 0].astype(bool)
                    train = np.where(real[:, None], train, np.nan)
                    file_split = [SPLITS.index(split_of(rel, config.split)) for rel in rels]
                    train_programs += [cut.programs[f] for f in range(len(rels))
                                       if f not in cut.rejects and file_split[f] == 0]
                fit.add(train)
                n = len(cut.owner)
                extra = {} if cut.mask is None else {"mask": cut.mask.reshape(-1)}
                raw.add(n, dataset=[dataset] * n, file=[rels[f] for f in cut.owner.tolist()],
                        segment=cut.windows, split=[SPLITS[s] for s in row_split.tolist()],
                        pitch=cut.pitch.reshape(-1),
                        **{f: cut.features[:, i].reshape(-1) for i, f in enumerate(FEATURES)}, **extra)
        finally:
            bar.close()
            raw.close()
            rejects.close()
        if segments["train"] == 0:
            raise DmcError(f"dataset '{dataset}': no segments in the train split ({len(files)} files, "
                           f"{sum(rejected.values())} rejected: {dict(rejected)}); try a smaller seq_len")
        encoding = fit.encoding()
        _normalize_file(raw_path, tmp / SEGMENTS_FILE, encoding, width, mask=config.multi)
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
            **encoding.to_stats(),
            "grid": fit.grid(),  # beats; the rhythmic grid that decoding may snap to (sample.quantize: auto)
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
        if config.multi:
            groups = groups_of(config.instruments)
            stats["min_instruments"] = config.min_instruments
            stats["row_programs"] = row_programs(groups, np.array(train_programs).reshape(-1, len(groups)))
        (tmp / STATS_FILE).write_text(json.dumps(stats, indent=2) + "\n")
    return summary


def _normalize_file(src: Path, dest: Path, encoding: Encoding, width: int, mask: bool = False) -> None:
    """Second pass: raw float64 features -> normalized float32, one row group at a time. With `mask`,
    padded entries stay 0 (normalizing them would give arbitrary values below 0)."""
    schema = _schema(width, pa.float32(), mask)
    with _parquet_writer(dest, schema) as writer, pa.memory_map(str(src)) as source:
        reader = pa.ipc.open_file(source)
        for i in range(reader.num_record_batches):
            batch = reader.get_batch(i)
            columns = {name: batch.column(name) for name in ("dataset", "file", "segment", "split", "pitch")}
            raw = np.stack([batch.column(f).flatten().to_numpy() for f in FEATURES])
            scaled = encoding.encode(raw, axis=0).astype(np.float32)
            if mask:
                columns["mask"] = batch.column("mask")
                scaled *= batch.column("mask").flatten().to_numpy(zero_copy_only=False).astype(bool)
            for f, values in zip(FEATURES, scaled, strict=True):
                columns[f] = _fixed(values, width)
            writer.write_table(pa.table(columns, schema=schema))


def _flat(column: pa.ChunkedArray, dtype: type) -> np.ndarray:
    """A fixed-size-list column's values, flat, in row order."""
    if column.num_chunks == 0:
        return np.zeros(0, dtype=dtype)
    return np.concatenate([c.flatten().to_numpy(zero_copy_only=False) for c in column.chunks]).astype(dtype)


# -- reading ----------------------------------------------------------------------------------------------
# What to do about a damaged prepared folder: DVC's -f re-runs the stage even though its deps are unchanged.
REPREPARE = "re-run `dvc repro -f prepare`"


def load_stats(prepared_dir: str | Path) -> dict[str, Any]:
    """stats.json of a prepared folder."""
    path = Path(prepared_dir) / STATS_FILE
    if not path.is_file():
        raise DmcError(f"no {STATS_FILE} in {prepared_dir}; run the prepare stage first (dvc repro prepare)")
    try:
        stats = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise DmcError(f"{path}: unreadable ({type(err).__name__}); {REPREPARE}") from None
    if not isinstance(stats, dict):
        raise DmcError(f"{path}: not the stats of a prepared folder; {REPREPARE}")
    return stats


def _read_split(prepared_dir: str | Path, split: str, columns: list[str]) -> pa.Table:
    if split not in SPLITS:
        raise DmcError(f"unknown split '{split}'; choose one of {', '.join(SPLITS)}")
    path = Path(prepared_dir) / SEGMENTS_FILE
    if not path.is_file():
        raise DmcError(f"no {SEGMENTS_FILE} in {prepared_dir}; run the prepare stage first "
                       "(dvc repro prepare)")
    try:
        return pq.read_table(path, columns=columns, filters=[("split", "==", split)])
    except (OSError, pa.ArrowException) as err:  # truncated, overwritten, or another file's columns
        raise DmcError(f"{path}: unreadable ({type(err).__name__}); {REPREPARE}") from None


def _read_schema(path: Path) -> pa.Schema:
    try:
        return pq.read_schema(path)
    except (OSError, pa.ArrowException) as err:
        raise DmcError(f"{path}: unreadable ({type(err).__name__}); {REPREPARE}") from None


def load_split(prepared_dir: str | Path, split: str) -> np.ndarray:
    """The normalized segments of one split: float32 `[N, 3, H, seq_len]` (feature axis 1)."""
    stats = load_stats(prepared_dir)
    h, w = len(stats["instruments"]), stats["seq_len"]
    table = _read_split(prepared_dir, split, list(FEATURES))
    return np.stack([_flat(table.column(f), np.float32).reshape(-1, h, w) for f in FEATURES], axis=1)


def load_mask(prepared_dir: str | Path, split: str) -> np.ndarray:
    """Which entries of `load_split` are real notes: uint8 `[N, H, seq_len]`, 1 = real, 0 = padding.
    All ones for single-piano data (no `mask` column: every entry is a note)."""
    stats = load_stats(prepared_dir)
    h, w = len(stats["instruments"]), stats["seq_len"]
    if "mask" not in _read_schema(Path(prepared_dir) / SEGMENTS_FILE).names:
        n = _read_split(prepared_dir, split, ["segment"]).num_rows
        return np.ones((n, h, w), dtype=np.uint8)
    return _flat(_read_split(prepared_dir, split, ["mask"]).column("mask"), np.uint8).reshape(-1, h, w)


def load_pitches(prepared_dir: str | Path, split: str) -> np.ndarray:
    """The MIDI pitches of one split's segments: int16 `[N, H, seq_len]`, rows aligned with `load_split`."""
    stats = load_stats(prepared_dir)
    h, w = len(stats["instruments"]), stats["seq_len"]
    return _flat(_read_split(prepared_dir, split, ["pitch"]).column("pitch"), np.int16).reshape(-1, h, w)
