"""Training throughput (samples/s) per U-Net preset at batch 64 and seq_len 128, on CPU and CUDA.

A step is exactly the training stage's step (`pipeline.training.optimize`): diffusion loss, backward,
gradient clipping, fused AdamW and the EMA update. On CUDA it runs under bf16 autocast and, unless
--no-compile, torch.compile. Reference: the original TensorFlow code takes about 1.7 s per step at batch
64 on a 2-core AVX-512 CPU (38 samples/s); the CPU goal is 3x that for `full`, the CUDA goal 60 steps/s.

    python benchmarks/train_bench.py                                  # tiny, small, full; CPU and CUDA
    python benchmarks/train_bench.py --presets full --devices cpu --steps 5
    python benchmarks/train_bench.py --presets tiny --steps 2 --warmup 1 --json bench.json   # smoke test
"""

from __future__ import annotations

import argparse
import contextlib
import json
import time

import torch

from pipeline.files import write_json
from pipeline.model import PRESETS, count, get_config
from pipeline.training import TrainSettings, build, optimize

ORIGINAL_TF_S_PER_STEP = 1.7  # 2-core AVX-512 CPU, batch 64, full


def time_steps(preset: str, device: torch.device, batch: int, seq_len: int, steps: int, warmup: int,
               compile_model: bool, mode: str | None = None) -> dict:
    """Median seconds per training step over `steps` steps, after `warmup` untimed ones."""
    settings = TrainSettings(preset=preset, batch_size=batch)
    torch.manual_seed(0)
    model, ema, opt, diffusion = build(settings, get_config(preset), device)
    net = torch.compile(model, mode=mode) if compile_model else model
    cuda = device.type == "cuda"
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if cuda else contextlib.nullcontext()
    x0 = torch.rand(batch, 3, 1, seq_len, device=device)
    gen = torch.Generator(device).manual_seed(0)
    times = []
    for i in range(warmup + steps):
        if cuda:
            torch.cuda.synchronize()
        start = time.perf_counter()
        optimize(net, model, ema, opt, diffusion, x0, gen, i, settings.grad_clip, autocast)
        if cuda:
            torch.cuda.synchronize()
        if i >= warmup:
            times.append(time.perf_counter() - start)
    s = sorted(times)[len(times) // 2]
    compiled = (mode or "default") if compile_model else "no"
    return {"preset": preset, "device": device.type, "compile": compiled,
            "bf16": cuda, "batch": batch, "seq_len": seq_len, "parameters": count(model),
            "threads": torch.get_num_threads(),
            "s_per_step": round(s, 4), "steps_per_s": round(1 / s, 2), "samples_per_s": round(batch / s, 1),
            "speedup_vs_tf_cpu": round(ORIGINAL_TF_S_PER_STEP / s, 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--presets", nargs="+", default=["tiny", "small", "full"], choices=sorted(PRESETS))
    parser.add_argument("--devices", nargs="+", default=["cpu", "cuda"])
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--steps", type=int, default=5, help="timed steps (the median is reported)")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--no-compile", action="store_true", help="CUDA: eager instead of torch.compile")
    parser.add_argument("--compile-cpu", action="store_true", help="CPU: torch.compile too (slow to compile)")
    parser.add_argument("--mode", help="torch.compile mode, e.g. max-autotune-no-cudagraphs")
    parser.add_argument("--json", help="also write the results to this JSON file")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    results = []
    for name in args.devices:
        if name == "cuda" and not torch.cuda.is_available():
            print("cuda: not available, skipped")
            continue
        device = torch.device(name)
        compile_model = not args.no_compile if name == "cuda" else args.compile_cpu
        if name == "cuda":
            torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
        for preset in args.presets:
            r = time_steps(preset, device, args.batch, args.seq_len, args.steps, args.warmup, compile_model,
                           args.mode)
            results.append(r)
            print(json.dumps(r), flush=True)
    print(f"\n{'preset':<7}{'device':<7}{'compile':<28}{'params':>12}{'s/step':>10}{'steps/s':>9}"
          f"{'samples/s':>11}{'x TF CPU':>10}")
    for r in results:
        print(f"{r['preset']:<7}{r['device']:<7}{r['compile']:<28}{r['parameters']:>12,}{r['s_per_step']:>10}"
              f"{r['steps_per_s']:>9}{r['samples_per_s']:>11}{r['speedup_vs_tf_cpu']:>10}")
    if args.json:
        write_json(args.json, {"time": time.strftime("%Y-%m-%dT%H:%M:%S"), "results": results})


if __name__ == "__main__":
    main()
