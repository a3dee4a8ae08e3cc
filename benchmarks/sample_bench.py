"""Seconds to generate 8 pieces of 128 notes with the `full` U-Net, per sampler and step count, CPU and CUDA.

Random weights time the same as trained ones. The goal is DDIM-50 under 3 s on a 2-core CPU; the
original TensorFlow code needs about 95 s for its 1000-step sampling there.

    python benchmarks/sample_bench.py                      # everything (DDPM-1000 on CPU takes minutes)
    python benchmarks/sample_bench.py --samplers ddim-50   # the quick one
    python benchmarks/sample_bench.py --samplers dpm++-15 unipc-15 ddim-20 ddim-50

The quality side of each sampler (evaluate metrics against DDPM-1000) is `benchmarks/quality.py`'s
`CONFIG@variant` rows.
    python benchmarks/sample_bench.py --preset tiny --pieces 2 --samplers ddim-5   # a smoke test
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from pipeline.compose.rows import generate_rows
from pipeline.compose.sampler import Sampler
from pipeline.data.encoding import Encoding
from pipeline.model.diffusion import GaussianDiffusion
from pipeline.model.unet import PRESETS, UNet
from pipeline.threads import configure_threads, limit_threads


def time_sampler(model: UNet, diffusion: GaussianDiffusion, sampler: Sampler, pieces: int, notes: int,
                 device: torch.device, repeats: int) -> float:
    """Best wall-clock seconds of `repeats` runs (after one warm-up window) for `pieces` pieces."""
    rows = 1  # piano, as the original
    encoding = Encoding(lo=[27.5, 0.0, 0.0], hi=[4186.0, 4.0, 4.0])  # the original's 3 features

    def generate(with_sampler: Sampler) -> None:
        list(generate_rows(model, diffusion, with_sampler, encoding, pieces, rows, notes, notes,
                           batch_size=pieces, seed=0, device=device, progress=False))

    def once() -> float:
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        generate(sampler)
        if device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - start

    generate(Sampler("ddim", 2))  # warm-up: allocator, kernels, thread pool
    return min(once() for _ in range(repeats))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="full", choices=sorted(PRESETS))
    parser.add_argument("--pieces", type=int, default=8)
    parser.add_argument("--notes", type=int, default=128)
    parser.add_argument("--samplers", nargs="+",
                        default=["dpm++-15", "unipc-15", "ddim-20", "ddim-50", "ddpm-1000"],
                        help="name-steps pairs, e.g. dpm++-15 ddim-50 ddpm-1000")
    parser.add_argument("--devices", nargs="+", default=["cpu", "cuda"])
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: pipeline.threads' policy)")
    args = parser.parse_args()
    if args.threads:
        limit_threads(args.threads)
    else:
        configure_threads()
    torch.manual_seed(0)
    results = []
    for name in args.devices:
        if name == "cuda" and not torch.cuda.is_available():
            print("cuda: not present, skipped")
            continue
        device = torch.device(name)
        model = UNet(PRESETS[args.preset]).to(device).eval()
        diffusion = GaussianDiffusion(1000).to(device)
        for spec in args.samplers:
            kind, _, steps = spec.partition("-")
            sampler = Sampler(kind, int(steps or 1000))
            seconds = time_sampler(model, diffusion, sampler, args.pieces, args.notes, device, args.repeats)
            row = {"device": name, "threads": torch.get_num_threads() if name == "cpu" else None,
                   "preset": args.preset, "sampler": spec, "pieces": args.pieces, "notes": args.notes,
                   "seconds": round(seconds, 3),
                   "ms_per_step": round(1000 * seconds / sampler.n_steps(diffusion.timesteps), 2)}
            results.append(row)
            print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
