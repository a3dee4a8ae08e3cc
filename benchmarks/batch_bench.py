"""Batch generation: pieces per second and peak memory of `dmc generate --n N`, for several N in one run.

Each N runs in its own process (so its peak RSS is its own), through
`pipeline.compose.generate.generate_files` exactly as `dmc generate` does: drawn and written one batch at
a time. Memory that grows with N would show as a larger peak for the larger N.

    python benchmarks/batch_bench.py                                   # n 100 and 1000, shipped bach model
    python benchmarks/batch_bench.py --n 8 32 --batch-size 8 --steps 2  # a smoke test
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time


def one(n: int, batch_size: int, model: str, sampler: str, steps: int, device: str,
        threads: int | None) -> dict:
    """Generate `n` pieces into a temp folder: pieces/s of sampling, the wall time with loading and writing,
    and the process's peak RSS."""
    import torch

    from pipeline.compose.generate import generate_files
    from pipeline.compose.options import GenerateOptions
    from pipeline.threads import configure_threads, limit_threads

    if threads:
        limit_threads(threads)
    else:
        configure_threads()
    opts = GenerateOptions(n=n, batch_size=batch_size, sampler=sampler, steps=steps, device=device,
                           progress=False)
    with tempfile.TemporaryDirectory() as out:
        start = time.perf_counter()
        summary = generate_files(out, opts, model, log=lambda _: None)
        wall = time.perf_counter() - start
    return {"n": n, "batch_size": batch_size, "model": model, "sampler": f"{sampler}-{summary['steps']}",
            "device": device, "threads": torch.get_num_threads(), "sampling_s": round(summary["seconds"], 2),
            "wall_s": round(wall, 2), "pieces_per_s": round(summary["pieces_per_s"], 2),
            "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, nargs="+", default=[100, 1000], help="pieces per run")
    parser.add_argument("--batch-size", type=int, default=100)
    parser.add_argument("--model", default="bach", help="a shipped model's name or a checkpoint")
    parser.add_argument("--sampler", default="ddim")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: pipeline.threads' policy)")
    parser.add_argument("--one", action="store_true", help=argparse.SUPPRESS)  # a child run: one n
    args = parser.parse_args()
    if args.one:
        print(json.dumps(one(args.n[0], args.batch_size, args.model, args.sampler, args.steps, args.device,
                             args.threads)))
        return
    rows = []
    for n in args.n:
        child = [sys.executable, __file__, "--one", "--n", str(n), "--batch-size", str(args.batch_size),
                 "--model", args.model, "--sampler", args.sampler, "--steps", str(args.steps),
                 "--device", args.device, *(["--threads", str(args.threads)] if args.threads else [])]
        rows.append(json.loads(subprocess.run(child, check=True, capture_output=True, text=True).stdout))
        print(json.dumps(rows[-1]), flush=True)
    print(f"\n{'n':>6} {'batch':>6} {'sampling s':>11} {'wall s':>8} {'pieces/s':>9} {'peak RSS MB':>12}")
    for r in rows:
        print(f"{r['n']:>6} {r['batch_size']:>6} {r['sampling_s']:>11} {r['wall_s']:>8} "
              f"{r['pieces_per_s']:>9} {r['peak_rss_mb']:>12}")


if __name__ == "__main__":
    main()
