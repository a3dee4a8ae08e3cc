"""Train quality.py configurations without sampling them: one CONFIG:SEED:STEPS per call, into the run
folder quality.py reads (RUNS/CONFIG-tiny-STEPS[-seedS]), so that a GPU machine can train many at once
and `quality.py --runs RUNS` samples and scores them on the CPU afterwards.

    python benchmarks/train_runs.py lattice+noncausal+key+classes+hybrid:1:2000 --device cuda --runs RUNS

RUNS must hold quality.py's `prepared/` folders (run quality.py once for the configuration, or copy
benchmarks/runs/prepared), since a GPU machine may not have the raw MIDI files.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
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
    from pipeline.files import write_json
    from pipeline.model import train_data, training

    name, seed, steps = args.run.split(":")
    if name not in quality.CONFIGS:
        raise SystemExit(f"unknown configuration {name!r}; see quality.py --list")
    quality.RUNS = args.runs.resolve()
    overrides = {**quality.ORIGINAL, **quality.CONFIGS[name], "preset": args.preset, "steps": int(steps),
                 "seed": int(seed)}
    params = quality.with_overrides(quality.load_params(quality.ROOT / "params.yaml"), overrides)
    prepared = quality.prepared_for(params)
    folder = quality.RUNS / (f"{name}-{args.preset}-{steps}" + (f"-seed{seed}" if int(seed) else ""))
    settings = training.TrainSettings.from_params(params)
    start = time.perf_counter()
    metrics = training.train(settings, train_data.load_data(prepared, params["seq_len"], settings.key),
                             models_dir=folder / "models", metrics_dir=folder / "metrics", device=args.device,
                             log=lambda *_: None)
    write_json(folder / "train.json", {**metrics, "seconds": round(time.perf_counter() - start, 1)})
    print(args.run, json.dumps(metrics), flush=True)


if __name__ == "__main__":
    main()
