"""Files/s per core of the whole prepare path (symusic) against the plain-mido oracle, on real files.

The files: the MIDI files inside the music21 wheel plus the materialized Bach chorales (data/raw/bach,
or a few materialized into a temp folder when absent). Both run in this one process (one core):
ours is `write_prepared` end to end (parse, segment, two Parquet passes); the oracle only extracts notes.

    python benchmarks/prepare_bench.py                 # all files
    python benchmarks/prepare_bench.py --files 40      # a quick check
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "tests")]

import mido_oracle  # noqa: E402
import music21  # noqa: E402
import symusic  # noqa: E402

from pipeline.segments import PrepareConfig, write_prepared  # noqa: E402

LAKH_FILES = 178_561


def collect(root: Path, raw_bach: Path, limit: int | None) -> list[str]:
    """Copy the real files into one folder (`root`) and return their relative paths."""
    wheel = Path(music21.__file__).parent
    sources = sorted((wheel / "midi" / "testPrimitive").glob("test*.mid")) + [wheel / "omr" / "k525short.mid"]
    if not any(raw_bach.glob("*.mid")):
        from pipeline.datasets import bach

        raw_bach = bach.fetch(root / "_bach", {"prepare": {"n_jobs": 0}}, limit=40)
    sources += sorted(raw_bach.glob("*.mid"))
    sources = sources[:limit]
    for i, src in enumerate(sources):
        shutil.copy(src, root / f"{i:05d}_{src.name}")
    return sorted(p.name for p in root.glob("*.mid"))


def speed(root: Path, files: list[str], repeat: int, tmp: Path) -> tuple[float, float, dict]:
    """(our files/s, the oracle's files/s, our summary) on `files`, one core each."""
    ours = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        summary = write_prepared(tmp / "prepared", "bench", root, files, PrepareConfig(seq_len=32), n_jobs=1)
        ours = min(ours, time.perf_counter() - t0)
    t0 = time.perf_counter()
    for f in files:
        mido_oracle.extract(root / f)
    oracle = time.perf_counter() - t0
    return len(files) / ours, len(files) / oracle, summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=None, help="use only the first N files")
    parser.add_argument("--raw-bach", type=Path, default=REPO / "data" / "raw" / "bach")
    parser.add_argument("--repeat", type=int, default=3, help="runs of our path (the best counts)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "midi"
        root.mkdir()
        files = collect(root, args.raw_bach, args.files)
        ours_fps, oracle_fps, summary = speed(root, files, args.repeat, Path(tmp))
        # Per-file overhead dominates small files; collections like Lakh hold far bigger ones.
        big = [f for f in files if symusic.Score(root / f).note_num() >= 1000]
        big_ours, big_oracle, _ = speed(root, big, args.repeat, Path(tmp)) if big else (0.0, 1.0, None)
    report = {
        "files": len(files),
        "kept": summary["kept"],
        "notes_kept": summary["notes"],
        "ours_files_per_s_per_core": round(ours_fps, 1),
        "mido_files_per_s_per_core": round(oracle_fps, 2),
        "speedup": round(ours_fps / oracle_fps, 1),
        "files_with_1000_notes_or_more": len(big),
        "speedup_on_those": round(big_ours / big_oracle, 1),
        "lakh_hours_one_core_at_this_rate": round(LAKH_FILES / ours_fps / 3600, 2),
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
