"""dmc's CPU work alone and beside a CPU hog per core, under this tree's thread policy and another
revision's, in one run: training steps/s (`tiny`, `full`) and 64 pieces from the shipped model.

Each workload runs as a fresh process through a real entry point, so the thread policy it meets is the
one a user meets: training through `stages.run` (the step of `benchmarks/train_bench.py`, batch 64,
128 notes), generation as `python -m pipeline.cli generate OUT --n 64 --model bach --quiet` (DDIM-20,
batch 8: `dmc generate`'s defaults). `--against REV` unpacks that revision (`git archive`) into a temp
folder and runs the same workloads with PYTHONPATH pointing there. "Loaded" rows start one
`python -c "while True: pass"` per CPU first and stop them after; "arrives" rows (training) start them
after the first, untimed step, once the thread count was chosen on a quiet machine. Every row reports the
CPUs other processes kept busy just before it (/proc/stat), since on a shared machine "alone" is never
quite alone; `--repeats N` runs each row N times and keeps the fastest.

A training row runs `--tiny-steps`/`--full-steps` timed steps after an untimed one, or as many as fit in
`--budget-s` (at least one); a row stopped by `--timeout-s` reports the steps it made by then, and a
generation row stopped so reports only that.

    python benchmarks/contention_bench.py --against 3f7289e --repeats 3
    python benchmarks/contention_bench.py --against 3f7289e --presets tiny --tiny-steps 20 --json c.json
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import tarfile
import tempfile
import time
from contextlib import contextmanager
from io import BytesIO
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from pipeline.files import write_json  # noqa: E402
from pipeline.threads import available_cpus, busy_cpus  # noqa: E402

# Runs in the tree under test. `import pipeline` comes first, as in every dmc entry point, so a tree that
# sets OpenMP's wait policy at import has it before torch loads; train_bench's step is imported (and
# torch with it) before stages.run sizes the threads, as in stages/train.py.
TRAIN_CHILD = """
import json, os, subprocess, sys, time
import pipeline
sys.path.insert(0, "benchmarks")
import torch
from train_bench import make_step
from stages import run
try:  # the training loop's own call, in a tree that has it
    from pipeline.threads import follow_load
except ImportError:
    def follow_load():
        pass

preset, steps, budget, late_hogs = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), int(sys.argv[4])
hogs = []

def main():
    step = make_step(preset, torch.device("cpu"), 64, 128, "eager")[0]
    start = time.perf_counter()
    step(0)  # untimed: first-call allocations
    print(json.dumps({"warmup_s": round(time.perf_counter() - start, 2)}), flush=True)
    # A load that arrives after the thread count was chosen: hogs started now, stopped with this process.
    # Each hog ends with this process, however it ends (a timeout kills it without a `finally`).
    hog = "import os\\nparent = os.getppid()\\nwhile os.getppid() == parent:\\n    pass"
    hogs.extend(subprocess.Popen([sys.executable, "-c", hog]) for _ in range(late_hogs))
    start, cpu, done = time.perf_counter(), time.process_time(), 0
    while done < steps and (done == 0 or time.perf_counter() - start < budget):
        follow_load()
        step(1 + done)
        done += 1
        wall = time.perf_counter() - start
        # A line per step: a row stopped by the timeout still reports the steps it made.
        print(json.dumps({"threads": torch.get_num_threads(), "steps": done, "s": round(wall, 2),
                          "steps_per_s": round(done / wall, 3),
                          "cpu_per_wall": round((time.process_time() - cpu) / wall, 2)}), flush=True)

try:
    run("contention-train", main, record=False)
finally:
    for hog in hogs:
        hog.kill()
"""

# alone; beside a hog per CPU from the start; hogs that arrive after the first (untimed) training step.
LOADS = ("alone", "loaded", "arrives")
GENERATED = re.compile(r"\(([\w+-]+), ([\d.]+) s, ([\d.]+) pieces/s\)")


def unpack(revision: str) -> Path:
    """The tree of `revision` in a temp folder (git archive: the repository itself is not touched)."""
    try:
        archive = subprocess.run(["git", "archive", revision], cwd=REPO, check=True,
                                 capture_output=True).stdout
    except subprocess.CalledProcessError as err:
        sys.exit(f"contention_bench: cannot read revision {revision!r}: {err.stderr.decode().strip()}")
    root = Path(tempfile.mkdtemp(prefix=f"dmc-{revision.replace('/', '_')}-"))
    with tarfile.open(fileobj=BytesIO(archive)) as tar:
        tar.extractall(root, filter="data")
    return root


@contextmanager
def hogs(count: int):
    """`count` busy-looping processes, stopped (and reaped) on exit."""
    procs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(count)]
    try:
        time.sleep(1.0)  # running, and visible in /proc/stat, before the workload measures the load
        yield
    finally:
        for proc in procs:
            proc.kill()
        for proc in procs:
            proc.wait()


def child_env(tree: Path) -> dict[str, str]:
    """This environment with the tree first on PYTHONPATH, and none of the thread settings a policy
    would otherwise defer to."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("DMC_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "OMP_WAIT_POLICY")}
    return {**env, "PYTHONPATH": str(tree), "DMC_TRACKING": "0"}


def train_row(tree: Path, preset: str, steps: int, budget_s: float, timeout_s: float,
              late_hogs: int = 0) -> dict:
    start = time.perf_counter()
    try:
        done = subprocess.run([sys.executable, "-c", TRAIN_CHILD, preset, str(steps), str(budget_s),
                               str(late_hogs)],
                              cwd=tree, env=child_env(tree), capture_output=True, text=True,
                              timeout=timeout_s)
        stdout, stopped = done.stdout, None if done.returncode == 0 else (done.stderr.strip() or "failed")
    except subprocess.TimeoutExpired as err:
        partial = err.stdout or b""  # bytes, text=True notwithstanding
        stdout = partial.decode() if isinstance(partial, bytes) else partial
        stopped = f"stopped at {timeout_s:.0f} s"
    lines = [json.loads(line) for line in stdout.splitlines() if line.startswith("{")]
    progress = [line for line in lines if "steps" in line]
    if progress:
        row = {**progress[-1], "wall_s": round(time.perf_counter() - start, 1)}
        return {**row, "note": stopped} if stopped else row
    if lines and stopped:  # not one timed step: the untimed first one is all there is
        return {"error": f"{stopped}, one untimed step took {lines[0]['warmup_s']} s"}
    return {"error": (stopped or "no output").splitlines()[-1]}


def generate_row(tree: Path, pieces: int, timeout_s: float) -> dict:
    out = Path(tempfile.mkdtemp(prefix="dmc-contention-"))
    start = time.perf_counter()
    try:
        done = subprocess.run([sys.executable, "-m", "pipeline.cli", "generate", str(out / "g"), "--n",
                               str(pieces), "--model", "bach", "--quiet"], cwd=out, env=child_env(tree),
                              capture_output=True, text=True, timeout=timeout_s)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout_s:.0f} s"}
    wall = time.perf_counter() - start
    found = GENERATED.search(done.stdout)
    if done.returncode != 0 or not found:
        return {"error": (done.stderr.strip().splitlines() or ["failed"])[-1]}
    note = re.search(r"dmc: (\d+) threads? of", done.stderr)  # shown only below all CPUs
    return {"threads": int(note.group(1)) if note else available_cpus(), "sampling_s": float(found.group(2)),
            "pieces_per_s": float(found.group(3)), "wall_s": round(wall, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--against", metavar="REV", help="git revision whose thread policy to run too")
    parser.add_argument("--presets", nargs="+", default=["tiny", "full"])
    parser.add_argument("--tiny-steps", type=int, default=30, help="timed steps of tiny, at most")
    parser.add_argument("--full-steps", type=int, default=4, help="timed steps for every preset but tiny")
    parser.add_argument("--pieces", type=int, default=64, help="pieces generated (0: no generation rows)")
    parser.add_argument("--budget-s", type=float, default=60.0, help="a training row's timed s, at most")
    parser.add_argument("--timeout-s", type=float, default=300.0, help="a row's limit, start-up included")
    parser.add_argument("--repeats", type=int, default=1,
                        help="runs per row, the best kept (other processes only ever slow a run down)")
    parser.add_argument("--json", help="also write the rows to this JSON file")
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # so the hogs and the child are stopped

    trees = {"this": REPO}
    if args.against:
        trees = {args.against: unpack(args.against), "this": REPO}
    cpus = available_cpus()
    workloads = [(f"train {p}", p) for p in args.presets] + ([(f"generate {args.pieces}", None)]
                                                             if args.pieces else [])
    print(f"{time.strftime('%Y-%m-%dT%H:%M:%S')}  {cpus} CPUs, load average {os.getloadavg()}", flush=True)
    rows = []
    for workload, preset in workloads:
        for load in LOADS if preset else LOADS[:2]:
            for name, tree in trees.items():
                runs = []
                for _ in range(args.repeats):
                    busy = round(busy_cpus(window_s=1.0), 2)
                    with hogs(cpus if load == "loaded" else 0):
                        if preset:
                            steps = args.tiny_steps if preset == "tiny" else args.full_steps
                            result = train_row(tree, preset, steps, args.budget_s, args.timeout_s,
                                               cpus if load == "arrives" else 0)
                        else:
                            result = generate_row(tree, args.pieces, args.timeout_s)
                    run = {"workload": workload, "load": load, "tree": name, "other_busy_cpus": busy,
                           "loadavg_1m": round(os.getloadavg()[0], 2), **result}
                    runs.append(run)
                    print(json.dumps(run), flush=True)
                row = max(runs, key=speed)
                rows.append({**row, "runs": len(runs)} if len(runs) > 1 else row)
    print(f"{time.strftime('%Y-%m-%dT%H:%M:%S')}  load average {os.getloadavg()}")
    print_table(rows, list(trees))
    if args.json:
        write_json(args.json, {"time": time.strftime("%Y-%m-%dT%H:%M:%S"), "cpus": cpus, "rows": rows})


def speed(row: dict) -> float:
    """Higher is faster; a failed run is the slowest."""
    if "error" in row:
        return float("-inf")
    return row["steps_per_s"] if "steps_per_s" in row else -row["sampling_s"]


def figure(row: dict) -> str:
    if "error" in row:
        return row["error"]
    if "steps_per_s" in row:
        stopped = f" ({row['steps']} steps, {row['note']})" if "note" in row else ""
        return f"{row['steps_per_s']} steps/s{stopped}"
    return f"{row['sampling_s']} s ({row['wall_s']} s wall)"


def print_table(rows: list[dict], trees: list[str]) -> None:
    print(f"\n| workload | load | {' | '.join(trees)} | threads | other busy CPUs |")
    print("|---|---|" + "---|" * len(trees) + "---|---|")
    for workload in dict.fromkeys(r["workload"] for r in rows):
        for load in LOADS:
            cells = {r["tree"]: r for r in rows if r["workload"] == workload and r["load"] == load}
            if len(cells) < len(trees):
                continue
            threads = " / ".join(str(cells[t].get("threads", "?")) for t in trees)
            busy = " / ".join(str(cells[t]["other_busy_cpus"]) for t in trees)
            figures = " | ".join(figure(cells[t]) for t in trees)
            print(f"| {workload} | {load} | {figures} | {threads} | {busy} |")


if __name__ == "__main__":
    main()
