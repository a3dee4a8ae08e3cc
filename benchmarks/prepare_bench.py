"""Files/s per core of the whole prepare path (symusic) against the plain-mido oracle, on the same files.

Two sets of files, each measured on its own:
- small: the MIDI files inside the music21 wheel plus the materialized Bach chorales (data/raw/bach, or a
  few materialized into a temp folder when absent): about 250 notes per file, one track;
- large: Lakh-like multi-track files generated here with symusic (2-10K notes over 4-8 tracks: pianos,
  organs, strings, bass, drums), where per-note work counts as much as per-file overhead.
Ours is `write_prepared` end to end (read with symusic, extract, segment, two Parquet passes); the oracle
only extracts notes. Both run in this one process (one core), interleaved run by run so that load from
other processes hits both alike; the best of `--repeat` runs counts.

    python benchmarks/prepare_bench.py                          # the full measurement
    python benchmarks/prepare_bench.py --files 40 --large 4 --repeat 1   # a quick check
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "tests")]

import mido_oracle  # noqa: E402
import music21  # noqa: E402

from pipeline.data.midi import TrackNotes, write_midi  # noqa: E402
from pipeline.data.prepared import write_prepared  # noqa: E402
from pipeline.data.segments import PrepareConfig  # noqa: E402

LAKH_FILES = 178_561
# (program, is_drum) choices for generated tracks: the piano set, and instruments that are not in it.
INSTRUMENTS = [(0, False), (1, False), (4, False), (19, False), (24, False), (33, False), (40, False),
               (48, False), (56, False), (73, False), (0, True)]


def collect_small(root: Path, raw_bach: Path, limit: int | None) -> list[str]:
    """Copy the wheel's MIDI files and the chorales into `root`; return their names."""
    wheel = Path(music21.__file__).parent
    sources = sorted((wheel / "midi" / "testPrimitive").glob("test*.mid")) + [wheel / "omr" / "k525short.mid"]
    if not any(raw_bach.glob("*.mid")):
        from pipeline.data.datasets import bach

        raw_bach = bach.fetch(root / "_bach", {"prepare": {"n_jobs": 0}}, limit=40)
    sources += sorted(raw_bach.glob("*.mid"))
    sources = sources[:limit]
    for i, src in enumerate(sources):
        shutil.copy(src, root / f"{i:05d}_{src.name}")
    return sorted(p.name for p in root.glob("*.mid"))


def generate_large(root: Path, count: int, seed: int = 0) -> list[str]:
    """Write `count` multi-track files of 2-10K notes in all (at least one piano-set track each)."""
    rng = np.random.default_rng(seed)
    names = []
    for i in range(count):
        n_tracks = int(rng.integers(4, 9))
        picks = [0, *rng.choice(np.arange(1, len(INSTRUMENTS)), n_tracks - 1, replace=False)]
        sizes = rng.multinomial(int(rng.integers(2000, 10_001)), rng.dirichlet(np.ones(n_tracks)))
        tracks = []
        for pick, n in zip(picks, sizes, strict=True):
            program, is_drum = INSTRUMENTS[pick]
            grid = rng.choice([0.25, 0.5, 1.0], n, p=[0.5, 0.35, 0.15])  # beats between onsets
            onset = np.cumsum(grid * rng.integers(0, 2, n))  # about half the notes start with the last
            tracks.append(TrackNotes(pitch=rng.integers(28, 100, n), onset=onset,
                                     duration=grid * rng.integers(1, 4, n), program=program,
                                     is_drum=is_drum, name=f"track {program}"))
        name = f"large{i:03d}.mid"
        write_midi(root / name, tracks, tempo=float(rng.integers(80, 160)), ticks_per_quarter=480)
        names.append(name)
    return names


def speed(root: Path, files: list[str], repeat: int, tmp: Path) -> dict:
    """Seconds per file of ours and of the oracle on `files` (best of `repeat`, interleaved), one core."""
    ours = oracle = float("inf")
    write_prepared(tmp / "prepared", "bench", root, files[:8], PrepareConfig(seq_len=32))  # warm-up
    shutil.rmtree(tmp / "prepared")
    for _ in range(repeat):
        t0 = time.perf_counter()
        summary = write_prepared(tmp / "prepared", "bench", root, files, PrepareConfig(seq_len=32), n_jobs=1)
        ours = min(ours, time.perf_counter() - t0)
        shutil.rmtree(tmp / "prepared")
        t0 = time.perf_counter()
        for f in files:
            mido_oracle.extract(root / f)
        oracle = min(oracle, time.perf_counter() - t0)
    n = len(files)
    return {
        "files": n,
        "kept": summary["kept"],
        "notes_per_kept_file": round(summary["notes"] / max(summary["kept"], 1)),
        "ours_ms_per_file": round(1e3 * ours / n, 3),
        "mido_ms_per_file": round(1e3 * oracle / n, 2),
        "ours_files_per_s_per_core": round(n / ours, 1),
        "mido_files_per_s_per_core": round(n / oracle, 2),
        "speedup": round(oracle / ours, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=None, help="use only the first N small files")
    parser.add_argument("--large", type=int, default=24, help="generated Lakh-like files")
    parser.add_argument("--raw-bach", type=Path, default=REPO / "data" / "raw" / "bach")
    parser.add_argument("--repeat", type=int, default=5, help="runs of each side (the best counts)")
    args = parser.parse_args()
    report = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name in ("small", "large"):
            root = Path(tmp) / name
            root.mkdir()
            if name == "small":
                files = collect_small(root, args.raw_bach, args.files)
            else:
                files = generate_large(root, args.large)
            report[name] = speed(root, files, args.repeat, Path(tmp))
    # Lakh's files are multi-track pieces of a few thousand notes: the large set is the closer model.
    per_file = report["large"]["ours_ms_per_file"] / 1e3
    report["lakh_projection"] = {
        "files": LAKH_FILES,
        "minutes_one_core": round(LAKH_FILES * per_file / 60, 1),
        "minutes_8_cores": round(LAKH_FILES * per_file / 60 / 8, 1),
        "mido_hours_one_core": round(LAKH_FILES * report["large"]["mido_ms_per_file"] / 1e3 / 3600, 1),
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
