"""Training speed per U-Net preset at batch 64 and seq_len 128: seconds per step, steps/s, and the wall
time of the original's 200K-step recipe projected from the measured steps.

A step is the training stage's step: `pipeline.model.training.optimize` (diffusion loss, backward, gradient
clipping, fused AdamW, EMA) or, for the `graph` row, `pipeline.model.cuda_graph.CudaGraphStep` (the same step
replayed as one CUDA graph, `train.graph: true`). Every step reseeds its noise generator, as the loop does.
Rows per device: `eager` always; on CUDA also `compile` (torch.compile; reduce-overhead, unless --mode) and,
with --graph, `graph`. On CUDA every row runs under bf16 autocast.

Side by side: `--against REV` times the U-Net of another git revision (its pipeline/model/unet.py, with this
tree's step) in the same process, alternating with this tree's, and reports the ratio of medians. On a
shared machine that is the only comparison worth making. (The speedup column this script used to print
divided a constant, 1.7 s per step for the original TensorFlow code at batch 64, measured once on another,
AVX-512 machine, by the step time here: not a like-for-like figure, so it is gone.)

    python benchmarks/train_bench.py                                       # tiny, small, full; CPU and CUDA
    python benchmarks/train_bench.py --presets full --devices cpu --threads 1 --steps 5
    python benchmarks/train_bench.py --presets full --devices cpu --threads 1 --against a14aaf1
    python benchmarks/train_bench.py --presets full --devices cuda --graph --steps 5000   # three CUDA rows
    python benchmarks/train_bench.py --presets tiny --steps 2 --warmup 1 --json bench.json   # smoke test
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import ModuleType

import torch

from pipeline.files import write_json
from pipeline.model.diffusion import GaussianDiffusion
from pipeline.model.train_data import step_seed
from pipeline.model.training import EMA, TrainSettings, build, optimize
from pipeline.model.unet import PRESETS, count, get_config
from pipeline.threads import configure_threads, limit_threads

RECIPE_STEPS = 200_000  # the original's training run


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def make_step(preset: str, device: torch.device, batch: int, seq_len: int, mode: str,
              compile_mode: str | None = None, unet: type | None = None):
    """(step(i) -> loss, parameter count) for one of the modes eager, compile, graph."""
    settings = TrainSettings(preset=preset, batch_size=batch)
    torch.manual_seed(0)
    if unet is None:
        model, ema, opt, diffusion = build(settings, get_config(preset), device)
    else:  # another revision's U-Net, under this tree's optimizer, EMA and step
        model = unet(get_config(preset)).to(device)
        ema = EMA(model, settings.ema_decay)
        opt = torch.optim.AdamW(model.parameters(), lr=settings.lr, fused=device.type in ("cpu", "cuda"))
        diffusion = GaussianDiffusion(**settings.diffusion).to(device)
    cuda = device.type == "cuda"
    autocast = torch.autocast("cuda", dtype=torch.bfloat16, cache_enabled=mode != "graph") if cuda \
        else contextlib.nullcontext()
    net = model
    if mode == "compile":
        net = torch.compile(model, mode=compile_mode or ("reduce-overhead" if cuda else None))
    x0 = torch.rand(batch, 3, 1, seq_len, device=device)
    gen = torch.Generator(device)
    if mode == "graph":
        from pipeline.model.cuda_graph import CudaGraphStep

        graphed = CudaGraphStep(net, model, ema, opt, diffusion, settings.grad_clip, autocast, x0)

        def step(i: int) -> torch.Tensor:
            gen.manual_seed(step_seed(0, i, 0))
            return graphed(x0, gen, i, settings.lr)
    else:
        def step(i: int) -> torch.Tensor:
            gen.manual_seed(step_seed(0, i, 0))
            return optimize(net, model, ema, opt, diffusion, x0, gen, i, settings.grad_clip, autocast)
    return step, count(model)


def time_steps(preset: str, device: torch.device, batch: int, seq_len: int, steps: int, warmup: int,
               mode: str, compile_mode: str | None = None) -> dict:
    """Median seconds per step (each step timed on its own, synchronized) and the mean over an unbroken
    run of `steps` steps, after `warmup` untimed ones; the projection uses the mean."""
    step, parameters = make_step(preset, device, batch, seq_len, mode, compile_mode)
    for i in range(warmup):
        step(i)
    _sync(device)
    # Per-step times need a sync each, which on a GPU stalls the launch queue; so the throughput figure
    # comes from a separate unbroken run, synchronized once.
    times = []
    for i in range(warmup, warmup + min(steps, 20)):
        start = time.perf_counter()
        step(i)
        _sync(device)
        times.append(time.perf_counter() - start)
    start = time.perf_counter()
    for i in range(warmup, warmup + steps):
        step(i)
    _sync(device)
    mean = (time.perf_counter() - start) / steps
    median = statistics.median(times)
    return {"preset": preset, "device": device.type, "mode": mode,
            "compile_mode": (compile_mode or ("reduce-overhead" if device.type == "cuda" else "default"))
            if mode == "compile" else None,
            "bf16": device.type == "cuda", "batch": batch, "seq_len": seq_len, "parameters": parameters,
            "threads": torch.get_num_threads(), "timed_steps": steps,
            "s_per_step_median": round(median, 4), "s_per_step_mean": round(mean, 4),
            "steps_per_s": round(1 / mean, 2), "samples_per_s": round(batch / mean, 1),
            "projected_200k_min": round(RECIPE_STEPS * mean / 60, 1)}


def model_at(revision: str) -> ModuleType:
    """pipeline/model/unet.py as it was at a git revision, imported as a module of its own."""
    root = Path(__file__).resolve().parents[1]
    try:
        source = subprocess.run(["git", "show", f"{revision}:pipeline/model/unet.py"], cwd=root, check=True,
                                capture_output=True, text=True).stdout
    except subprocess.CalledProcessError as err:
        sys.exit(f"train_bench: cannot read pipeline/model/unet.py at {revision!r}: {err.stderr.strip()}")
    path = Path(tempfile.mkdtemp()) / f"model_{revision.replace('/', '_')}.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[path.stem] = module  # dataclasses look their module up while the class is built
    spec.loader.exec_module(module)
    return module


def side_by_side(preset: str, device: torch.device, batch: int, seq_len: int, rounds: int, warmup: int,
                 revision: str) -> dict:
    """This tree's U-Net against `revision`'s, same init seed, steps alternating (ABBA), medians of wall
    and of process CPU time. On a loaded machine the CPU time is the steadier figure: it does not count
    the time the other processes held the cores (their cache traffic still shows)."""
    old = model_at(revision)
    steps = {"this": make_step(preset, device, batch, seq_len, "eager")[0],
             revision: make_step(preset, device, batch, seq_len, "eager", unet=old.UNet)[0]}
    for run in steps.values():
        for i in range(warmup):
            run(i)
    times: dict[str, list[float]] = {k: [] for k in steps}
    cpu: dict[str, list[float]] = {k: [] for k in steps}
    for r in range(rounds):
        order = list(steps) if r % 2 == 0 else list(reversed(steps))
        for name in order:
            _sync(device)
            start, start_cpu = time.perf_counter(), time.process_time()
            steps[name](warmup + r)
            _sync(device)
            times[name].append(time.perf_counter() - start)
            cpu[name].append(time.process_time() - start_cpu)
    this, then = statistics.median(times["this"]), statistics.median(times[revision])
    this_cpu, then_cpu = statistics.median(cpu["this"]), statistics.median(cpu[revision])
    return {"preset": preset, "device": device.type, "against": revision, "rounds": rounds,
            "threads": torch.get_num_threads(), "s_per_step_this": round(this, 4),
            "s_per_step_against": round(then, 4), "speedup": round(then / this, 3),
            "cpu_s_per_step_this": round(this_cpu, 4), "cpu_s_per_step_against": round(then_cpu, 4),
            "cpu_speedup": round(then_cpu / this_cpu, 3)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--presets", nargs="+", default=["tiny", "small", "full"], choices=sorted(PRESETS))
    parser.add_argument("--devices", nargs="+", default=["cpu", "cuda"])
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--steps", type=int, default=5, help="timed steps (5000 on a GPU for the projection)")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: pipeline.threads' policy)")
    parser.add_argument("--no-compile", action="store_true", help="CUDA: no torch.compile row")
    parser.add_argument("--compile-cpu", action="store_true", help="CPU: a torch.compile row too")
    parser.add_argument("--graph", action="store_true", help="CUDA: a row for the step as one CUDA graph")
    parser.add_argument("--mode", help="torch.compile mode, e.g. max-autotune-no-cudagraphs")
    parser.add_argument("--against", metavar="REV", help="git revision whose U-Net to time side by side")
    parser.add_argument("--rounds", type=int, default=6, help="--against: steps timed per side")
    parser.add_argument("--json", help="also write the results to this JSON file")
    args = parser.parse_args()
    if args.threads:
        limit_threads(args.threads)
    else:
        configure_threads()
    results = []
    for name in args.devices:
        if name == "cuda" and not torch.cuda.is_available():
            print("cuda: not available, skipped")
            continue
        device = torch.device(name)
        if name == "cuda":
            torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
        for preset in args.presets:
            if args.against:
                r = side_by_side(preset, device, args.batch, args.seq_len, args.rounds, args.warmup,
                                 args.against)
                results.append(r)
                print(json.dumps(r), flush=True)
                continue
            modes = ["eager"]
            if (name == "cuda" and not args.no_compile) or (name == "cpu" and args.compile_cpu):
                modes.append("compile")
            if args.graph and name == "cuda":
                modes.append("graph")
            for mode in modes:
                r = time_steps(preset, device, args.batch, args.seq_len, args.steps, args.warmup, mode,
                               args.mode)
                results.append(r)
                print(json.dumps(r), flush=True)
    if args.against:
        print(f"\n{'preset':<7}{'device':<7}{'this s/step':>12}{args.against + ' s/step':>20}{'speedup':>9}"
              f"{'CPU s: this':>13}{'against':>9}{'speedup':>9}")
        for r in results:
            print(f"{r['preset']:<7}{r['device']:<7}{r['s_per_step_this']:>12}{r['s_per_step_against']:>20}"
                  f"{r['speedup']:>9}{r['cpu_s_per_step_this']:>13}{r['cpu_s_per_step_against']:>9}"
                  f"{r['cpu_speedup']:>9}")
    else:
        print(f"\n{'preset':<7}{'device':<7}{'mode':<9}{'params':>12}{'s/step':>9}{'steps/s':>9}"
              f"{'samples/s':>11}{'200K steps':>12}")
        for r in results:
            print(f"{r['preset']:<7}{r['device']:<7}{r['mode']:<9}{r['parameters']:>12,}"
                  f"{r['s_per_step_mean']:>9}{r['steps_per_s']:>9}{r['samples_per_s']:>11}"
                  f"{r['projected_200k_min']:>9} min")
    if args.json:
        write_json(args.json, {"time": time.strftime("%Y-%m-%dT%H:%M:%S"), "results": results})


if __name__ == "__main__":
    main()
