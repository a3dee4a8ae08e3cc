"""The prepared data on disk (`data/prepared/`): written from the segments of a dataset's files, read back
as arrays for training and evaluation.

- segments.parquet: one row per segment: `dataset`, `file`, `segment` (window index in the file),
  `split`, `pitch` and the normalized `frequency`, `duration`, `delta`, each a fixed-size list of
  H*seq_len values (row-major over the H rows); with several instrument rows also `mask` (list<uint8> of
  H*seq_len, 1 = a real note; padded entries hold 0 in every feature and in `pitch`).
- stats.json: the train split's min/max per feature (the normalization), seq_len, instruments, counts;
  with several rows also `row_programs` (the GM program to write per row) and `min_instruments`. The
  min/max normalization counts real notes only.
- rejects.parquet: `file`, `code` (a short category) and `reason` for every file that gave no segment.

The single-piano files are exactly as they were before multi-instrument mode.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from tqdm import tqdm

from pipeline.data.encoding import FEATURES, Encoding, EncodingFit
from pipeline.data.instruments import (
    groups_of,
    row_programs,
)
from pipeline.data.segments import SPLITS, PrepareConfig, Windows, cut_batch, split_of
from pipeline.errors import DmcError, ignore_interrupts
from pipeline.files import atomic_path

SEGMENTS_FILE = "segments.parquet"
STATS_FILE = "stats.json"
REJECTS_FILE = "rejects.parquet"
ROWS_PER_GROUP = 2048
FILES_PER_WORKER = 500
FILES_PER_BATCH = 128



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
        yield from map(cut_batch, jobs)
        return
    # spawn, not fork: a forked child would inherit pyarrow's and tqdm's threads mid-flight.
    with mp.get_context("spawn").Pool(n_jobs, initializer=ignore_interrupts) as pool:
        yield from pool.imap(cut_batch, jobs)


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
