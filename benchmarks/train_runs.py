"""Train quality.py configurations without sampling them: one CONFIG:SEED:STEPS per call, into the run
folder quality.py reads (RUNS/CONFIG-tiny-STEPS[-seedS]), so that a GPU machine can train many at once
and `quality.py --runs RUNS` samples and scores them on the CPU afterwards.

    python benchmarks/train_runs.py lattice+noncausal+key+classes+hybrid:1:2000 --device cuda --runs RUNS

RUNS must hold quality.py's `prepared/` folders (run quality.py once for the configuration, or copy
benchmarks/runs/prepared), since a GPU machine may not have the raw MIDI files.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import quality  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run", help="CONFIG:SEED:STEPS, CONFIG one of quality.py --list")
    ap.add_argument("--device", default=None, help="cpu | cuda (default: the best available)")
    ap.add_argument("--runs", type=Path, default=quality.RUNS)
    ap.add_argument("--preset", default="tiny")
    args = ap.parse_args()
    name, seed, steps = args.run.split(":")
    if name not in quality.CONFIGS:
        raise SystemExit(f"unknown configuration {name!r}; see quality.py --list")
    quality.RUNS = args.runs.resolve()
    overrides = {**quality.ORIGINAL, **quality.CONFIGS[name], "preset": args.preset, "steps": int(steps),
                 "seed": int(seed)}
    params = quality.with_overrides(quality.load_params(quality.ROOT / "params.yaml"), overrides)
    folder = quality.run_folder(name, args.preset, int(steps), int(seed))
    quality.train_config(params, folder, args.device)
    print(args.run, (folder / "train.json").read_text(), flush=True)


if __name__ == "__main__":
    main()
