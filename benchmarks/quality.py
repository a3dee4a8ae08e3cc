"""The quality benchmark: train each configuration under the same budget, sample, and score it.

Each configuration is a set of params.yaml overrides (dotted keys). For each one this script prepares the
data (shared between configurations whose prepare params agree), trains for `--steps` steps, samples
`--pieces` pieces and runs the evaluate stage's measurement (`pipeline.evaluate.evaluation`) against the test
split. Sampling-only variants (`name@variant`) reuse a trained configuration's model with other sampler
settings. Results go to a JSON file, one entry per configuration, so an interrupted sweep resumes, and
`--table` prints them as the markdown table in benchmarks/README.md, with the markov, shuffle and real
rows from the same run.

    python benchmarks/quality.py --list
    python benchmarks/quality.py --configs original,midi,best --steps 1200 --threads 1
    python benchmarks/quality.py --configs best@ddpm,best@dpm++15 --steps 1200 --seeds 0,1,2
    python benchmarks/quality.py --table

With several `--seeds`, each seed trains and samples its own run (params `seed`), and the table gives the
mean ± standard deviation over the seeds of each configuration.

The budget is in steps, so a busy machine changes how long a sweep takes, not what it measures; the
table also gives each run's training seconds. On a GPU (`--device cuda`) the same script trains larger
presets (`--preset full`).
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import itertools
import json
import math
import shutil
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pipeline.files import write_json  # noqa: E402
from pipeline.params import load_params, validate  # noqa: E402

RUNS = ROOT / "benchmarks" / "runs"  # prepared data, models and samples per configuration (git-ignored)
RESULTS = ROOT / "benchmarks" / "results" / "quality.json"

# The original recipe and representation, spelled out, so that a changed params.yaml default never
# changes what the `original` row means.
ORIGINAL = {
    "features.pitch": "frequency", "features.time": "linear", "features.scale": "minmax",
    "features.chord": False, "diffusion.self_condition": False, "prepare.hop": 0, "train.transpose": 0,
    "train.key": "none", "train.causal": True,
    "diffusion.schedule": "linear",
    "diffusion.prediction": "epsilon", "diffusion.loss_weight": "none", "sample.sampler": "ddim",
    "sample.steps": 50, "sample.eta": 0.0, "sample.guard": "clip", "sample.chord_snap": 0.0,
    "sample.quantize": "",
}
# One lever at a time on top of the original, then the levers combined.
MIDI = {"features.pitch": "midi", "features.time": "linear", "features.scale": "minmax"}
ENCODED = {"features.pitch": "midi", "features.time": "log", "features.scale": "symmetric"}
LATTICE = {**ENCODED, "features.pitch": "helix", "features.time": "grid", "features.chord": True,
           "sample.guard": "step_clip", "sample.steps": 20}
CONFIGS: dict[str, dict[str, Any]] = {
    "original": {},
    "log_frequency": {**MIDI, "features.pitch": "log_frequency"},
    "midi": MIDI,
    "midi+log": {**MIDI, "features.time": "log"},
    "symmetric": {"features.scale": "symmetric"},
    "midi+log+symmetric": ENCODED,
    "midi+log+standard": {**ENCODED, "features.scale": "standard"},
    "enc+v": {**ENCODED, "diffusion.prediction": "v"},
    "enc+x0": {**ENCODED, "diffusion.prediction": "x0"},
    "enc+cosine": {**ENCODED, "diffusion.schedule": "cosine"},
    "enc+min_snr": {**ENCODED, "diffusion.loss_weight": "min_snr"},
    "enc+transpose": {**ENCODED, "train.transpose": 5},
    "enc+hop32": {**ENCODED, "prepare.hop": 32},
    # The default of 2026-12-01 (sampled with DDIM-50 here; `@ddim20` is how it shipped). Its guard, then
    # called `dynamic`, was a clip to ±1 inside the step: `step_clip`.
    "default": {**ENCODED, "sample.guard": "step_clip"},
    "default+x0": {**ENCODED, "sample.guard": "step_clip", "diffusion.prediction": "x0"},
    "default+noncausal": {**ENCODED, "sample.guard": "step_clip", "train.causal": False},
    # Every value on its lattice (pipeline/data/encoding.py): the pitch helix, time on the data's grid
    # and a chord channel, sampled as the default samples (DDIM-20, step_clip).
    "lattice": LATTICE,
    "lattice+noncausal": {**LATTICE, "train.causal": False},
    "lattice+noncausal+selfcond": {**LATTICE, "train.causal": False, "diffusion.self_condition": True},
    "lattice+noncausal+x0": {**LATTICE, "train.causal": False, "diffusion.prediction": "x0"},
    "pitch_class+noncausal": {**LATTICE, "features.pitch": "pitch_class", "train.causal": False},
    "lattice+noncausal+key": {**LATTICE, "train.causal": False, "train.key": "common"},
    "lattice+key": {**LATTICE, "train.key": "common"},
    # The key study: ±6 semitones of random transposition per batch instead of one common key.
    "lattice+noncausal+transpose": {**LATTICE, "train.causal": False, "train.transpose": 6},
    # The softmax head (CDCD / Analog Bits' x_softmax_xent) and x0-prediction against the default's epsilon.
    "lattice+noncausal+key+softmax": {**LATTICE, "train.causal": False, "train.key": "common",
                                      "diffusion.prediction": "softmax"},
    "lattice+noncausal+key+softmax+selfcond": {**LATTICE, "train.causal": False, "train.key": "common",
                                               "diffusion.prediction": "softmax",
                                               "diffusion.self_condition": True},
    "lattice+noncausal+key+classes": {**LATTICE, "train.causal": False, "train.key": "common",
                                      "features.time": "classes"},
    "lattice+noncausal+key+classes+x0": {**LATTICE, "train.causal": False, "train.key": "common",
                                         "features.time": "classes", "diffusion.prediction": "x0"},
    "lattice+noncausal+key+classes+hybrid": {**LATTICE, "train.causal": False, "train.key": "common",
                                             "features.time": "classes", "diffusion.prediction": "hybrid"},
    "lattice+noncausal+key+classes+v": {**LATTICE, "train.causal": False, "train.key": "common",
                                        "features.time": "classes", "diffusion.prediction": "v"},
    "lattice+noncausal+key+x0": {**LATTICE, "train.causal": False, "train.key": "common",
                                 "diffusion.prediction": "x0"},
    "pitch_class+noncausal+key": {**LATTICE, "features.pitch": "pitch_class", "train.causal": False,
                                  "train.key": "common"},
    "helix+noncausal": {**ENCODED, "features.pitch": "helix", "train.causal": False,
                        "sample.guard": "step_clip", "sample.steps": 20},
}
# Sampler settings tried on an already trained configuration: `name@variant`.
VARIANTS: dict[str, dict[str, Any]] = {
    "noguard": {"sample.guard": "none"},
    "step_clip": {"sample.guard": "step_clip"},
    "dynamic": {"sample.guard": "dynamic"},
    "ddim20": {"sample.steps": 20},
    "ddim100": {"sample.steps": 100},
    "ddim20+snap+grid": {"sample.steps": 20, "sample.chord_snap": 0.125, "sample.quantize": "auto"},
    "eta1": {"sample.eta": 1.0},
    "ddpm": {"sample.sampler": "ddpm"},
    "dpm++15": {"sample.sampler": "dpm++", "sample.steps": 15},
    "dpm++25": {"sample.sampler": "dpm++", "sample.steps": 25},
    "unipc15": {"sample.sampler": "unipc", "sample.steps": 15},
    "snap": {"sample.chord_snap": 0.125},
    "grid": {"sample.quantize": "auto"},
    "snap+grid": {"sample.chord_snap": 0.125, "sample.quantize": "auto"},
    "clip": {"sample.guard": "clip"},
    "step_clip+grid": {"sample.guard": "step_clip", "sample.quantize": "auto"},
    "step_clip+snap+grid": {"sample.guard": "step_clip", "sample.chord_snap": 0.125,
                            "sample.quantize": "auto"},
    "ddim20+dynamic": {"sample.steps": 20, "sample.guard": "dynamic"},
    "ddim20+clip": {"sample.steps": 20, "sample.guard": "clip"},
    "ddim50": {"sample.steps": 50},
}
# `OA (old)` is the mean over all nine features, note_count included, as OA was computed before
# 2026-12-03; `OA` leaves out the features constant over the test segments (`metrics.constant_features`).
COLUMNS = (("oa_mean", "OA"), ("oa_mean_all", "OA (old)"), ("kl_mean", "KL"),
           ("framewise.pitch.consistency", "pitch cons"), ("framewise.pitch.variance", "pitch var"),
           ("framewise.duration.consistency", "dur cons"), ("framewise.duration.variance", "dur var"),
           ("pitch_range.mean", "range"), ("scale_consistency.mean", "scale cons"), ("edge_fraction", "edge"),
           ("chord_fraction", "chord"), ("grid_fraction", "grid"), ("merged_notes", "merged"))
BASELINES = ("markov", "shuffle", "real")


def with_overrides(params: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """params with dotted-key overrides applied, validated as params.yaml would be."""
    out = copy.deepcopy(params)
    for key, value in overrides.items():
        *path, last = key.split(".")
        node = out
        for part in path:
            if not isinstance(node.get(part), dict):
                node[part] = {}
            node = node[part]
        node[last] = value
    return validate(out)


def _digest(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:12]


def prepared_for(params: dict[str, Any]) -> Path:
    """The prepared data for these params, made once per distinct prepare config."""
    from pipeline.data.datasets import read_manifest
    from pipeline.data.prepared import write_prepared
    from pipeline.data.segments import PrepareConfig

    config = PrepareConfig.from_params(params)
    out = RUNS / "prepared" / _digest([params["dataset"], config.__dict__])
    if not (out / "stats.json").is_file():
        dataset, root, files = read_manifest(ROOT / "data" / "manifest.json")
        if dataset != params["dataset"]:
            raise SystemExit(f"data/manifest.json holds {dataset}, not {params['dataset']}: "
                             "run `dvc repro download` for it first")
        write_prepared(out, dataset, root, files, config, n_jobs=1)
    return out


def sample_and_score(params: dict[str, Any], prepared: Path, model: Path, samples: Path,
                     pieces: int, device: str | None) -> tuple[dict[str, float], float]:
    from pipeline.compose.generate import generate_files
    from pipeline.compose.options import GenerateOptions
    from pipeline.evaluate.evaluation import evaluate_samples

    opts = GenerateOptions.from_params(params, n=pieces, batch_size=min(pieces, 64), audio="", plot=False,
                                       device=device, progress=False)
    shutil.rmtree(samples, ignore_errors=True)
    summary = generate_files(samples, opts, model, log=lambda *_: None)
    e = params["evaluate"]
    flat = evaluate_samples(prepared, samples, params["seed"], pieces, e["frame_beats"], e["hop_beats"],
                            notes_per_piece=params["sample"]["length"]).flat
    return flat, summary["seconds"]


def run_folder(trained: str, preset: str, steps: int, seed: int) -> Path:
    """Where a trained configuration's model, metrics and samples live."""
    return RUNS / (f"{trained}-{preset}-{steps}" + (f"-seed{seed}" if seed else ""))


def train_config(params: dict[str, Any], folder: Path, device: str | None) -> Path:
    """`folder`/models/model.pt trained from `params`, unless it is there already (variants and
    `train_runs.py`'s models are reused); `folder`/train.json holds the training metrics and seconds."""
    from pipeline.model import train_data, training

    model = folder / "models" / "model.pt"
    if not model.is_file():
        settings = training.TrainSettings.from_params(params)
        start = time.perf_counter()
        data = train_data.load_data(prepared_for(params), params["seq_len"], settings.key)
        metrics = training.train(settings, data, models_dir=folder / "models", metrics_dir=folder / "metrics",
                                 device=device, log=lambda *_: None)
        write_json(folder / "train.json", {**metrics, "seconds": round(time.perf_counter() - start, 1)})
    return model


def run_config(name: str, base: dict[str, Any], steps: int, preset: str, pieces: int,
               device: str | None, seed: int = 0, sample_seed: int | None = None) -> dict[str, Any]:
    trained, _, variant = name.partition("@")
    if trained not in CONFIGS or (variant and variant not in VARIANTS):
        raise SystemExit(f"unknown configuration {name!r}; see --list")
    overrides = {**ORIGINAL, **CONFIGS[trained], "preset": preset, "steps": steps, "seed": seed,
                 **VARIANTS.get(variant, {})}
    params = with_overrides(base, overrides)
    prepared = prepared_for(params)
    folder = run_folder(trained, preset, steps, seed)
    model = train_config(params, folder, device)
    train_info = json.loads((folder / "train.json").read_text())
    samples = folder / f"samples-{variant or 'base'}"
    if sample_seed is not None:  # the same model, sampled (and its baselines drawn) with another seed
        params = with_overrides(params, {"seed": sample_seed})
        samples = samples.with_name(f"{samples.name}-seed{sample_seed}")
    flat, sample_seconds = sample_and_score(params, prepared, model, samples, pieces, device)
    keys = [f"{s}.{c}" for s in ("generated", *BASELINES, "test") for c, _ in COLUMNS]
    return {"name": name, "overrides": overrides, "preset": preset, "steps": steps, "seed": seed,
            "sample_seed": seed if sample_seed is None else sample_seed,
            "train_seconds": train_info["seconds"], "loss": train_info["loss"],
            "val_loss": train_info["val_loss"], "sample_seconds": round(sample_seconds, 2),
            "metrics": {k: flat[k] for k in keys if k in flat}}


def table(results: dict[str, Any]) -> str:
    """The markdown table: one row per configuration (mean ± std over its seeds when it has several), then
    the baselines of the first one run."""
    def cell(values: list[float]) -> str:
        values = [v for v in values if not math.isnan(v)]
        if not values:
            return "–"
        mean = sum(values) / len(values)
        if len(values) == 1:
            return f"{mean:.3f}"
        std = math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))
        return f"{mean:.3f} ± {std:.3f}"

    def row(label: str, runs: list[dict[str, Any]], prefix: str, extra: str) -> str:
        cells = [cell([r["metrics"].get(f"{prefix}.{c}", math.nan) for r in runs]) for c, _ in COLUMNS]
        return f"| {label} | {extra} | " + " | ".join(cells) + " |"

    groups: dict[tuple[str, str, int], list[dict[str, Any]]] = {}
    for r in results.values():
        groups.setdefault((r["name"], r["preset"], r["steps"]), []).append(r)
    lines = ["| configuration | budget | " + " | ".join(h for _, h in COLUMNS) + " |",
             "|" + "---|" * (len(COLUMNS) + 2)]
    for (name, preset, steps), runs in groups.items():
        seeds = ",".join(f"{r.get('seed', 0)}/{r.get('sample_seed', r.get('seed', 0))}" for r in runs)
        seconds = sum(r["train_seconds"] for r in runs) / len(runs)
        lines.append(row(name, runs, "generated", f"{preset} {steps} steps, {seconds:.0f} s, seeds {seeds}"))
    if results:
        first = [next(iter(results.values()))]
        for b in BASELINES:
            lines.append(row(f"*{b}*", first, b, "train split"))
        lines.append(row("*test vs itself*", first, "test", ""))
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--configs", default="original", help="comma-separated names (see --list)")
    ap.add_argument("--steps", type=int, default=1200, help="training steps per configuration")
    ap.add_argument("--preset", default="tiny")
    ap.add_argument("--pieces", type=int, default=64, help="pieces sampled and scored per configuration")
    ap.add_argument("--seeds", default="0", help="comma-separated seeds: each trains and samples its own run")
    ap.add_argument("--sample-seeds", default="", help="comma-separated seeds to sample each trained model "
                    "with (default: its training seed)")
    ap.add_argument("--threads", type=int, default=0,
                    help="torch threads (0: the cores other work leaves free, pipeline/threads.py)")
    ap.add_argument("--device", default=None, help="cpu | cuda (default: the best available)")
    ap.add_argument("--out", type=Path, default=RESULTS)
    ap.add_argument("--runs", type=Path, default=None, help="the folder of prepared data, models and samples "
                    "(another one holds models trained elsewhere, such as on a GPU machine)")
    ap.add_argument("--list", action="store_true", help="list the configurations and variants")
    ap.add_argument("--table", action="store_true", help="print the table of --out and stop")
    ap.add_argument("--force", action="store_true", help="run configurations already in --out again")
    args = ap.parse_args()
    if args.list:
        for name, o in CONFIGS.items():
            print(f"{name}: {o or 'the original recipe'}")
        for name, o in VARIANTS.items():
            print(f"CONFIG@{name}: {o}")
        return
    global RUNS
    RUNS = (args.runs or RUNS).resolve()
    results = json.loads(args.out.read_text()) if args.out.is_file() else {}
    if args.table:
        print(table(results))
        return
    from pipeline.threads import configure_threads, limit_threads

    if args.threads:
        limit_threads(args.threads)
    else:
        configure_threads()
    base = load_params(ROOT / "params.yaml")
    seeds = [int(x) for x in args.seeds.split(",") if x.strip()]
    sample_seeds: list[int | None] = [int(x) for x in args.sample_seeds.split(",") if x.strip()] or [None]
    for name in [c.strip() for c in args.configs.split(",") if c.strip()]:
        for seed, sample_seed in itertools.product(seeds, sample_seeds):
            key = f"{name} ({args.preset}, {args.steps})" + (f" seed {seed}" if seed else "") + \
                ("" if sample_seed is None else f" sample seed {sample_seed}")
            if key in results and not args.force:
                continue
            start = time.perf_counter()
            results[key] = run_config(name, base, args.steps, args.preset, args.pieces, args.device, seed,
                                      sample_seed)
            fresh = json.loads(args.out.read_text()) if args.out.is_file() else {}  # another sweep may write
            write_json(args.out, {**fresh, key: results[key]})
            m = {k: results[key]["metrics"].get(k, math.nan) for k in (
                "generated.oa_mean", "generated.oa_mean_all", "markov.oa_mean",
                "generated.scale_consistency.mean",
                "generated.chord_fraction", "generated.grid_fraction", "generated.edge_fraction")}
            print(f"{key}: oa {m['generated.oa_mean']:.3f} (old {m['generated.oa_mean_all']:.3f}, markov "
                  f"{m['markov.oa_mean']:.3f}), scale {m['generated.scale_consistency.mean']:.3f}, chord "
                  f"{m['generated.chord_fraction']:.3f}, grid {m['generated.grid_fraction']:.3f}, edge "
                  f"{m['generated.edge_fraction']:.3f}; {time.perf_counter() - start:.0f} s", flush=True)


if __name__ == "__main__":
    main()
