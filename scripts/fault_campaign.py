"""Issue 29's fault campaign, re-run: each fault is injected into a fresh tiny copy of a checkout, then
the normal command is run; prints one row per case (exit code, stderr lines, tracebacks, verdict).

    Two cases need root (chattr +i, and a small tmpfs for ENOSPC); they are skipped without it.
    PYTHONPATH=$PWD OMP_NUM_THREADS=1 DMC_THREADS=1 python3 scripts/fault_campaign.py [--source DIR]

`--source` is the checkout to test (default: this one), so the same script measures before and after.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(HERE / "tests"))
sys.path.insert(0, str(HERE))

TINY = {
    "dataset": "folder",
    "preset": "tiny",
    "steps": 40,
    "batch_size": 16,
    "seq_len": 32,
    "prepare": {"n_jobs": 1, "split": {"train": 0.6, "val": 0.2, "test": 0.2}},
    "train": {"val_every": 10, "checkpoint_every": 10},
    "diffusion": {"timesteps": 100},
    "sample": {"n": 2, "steps": 5, "length": 32, "audio": "", "plot": False},
    "evaluate": {"n_baseline": 8},
}
ROWS: list[dict] = []


def merge(base: dict, over: dict) -> dict:
    return {k: merge(base[k], v) if isinstance(v, dict) else v for k, v in over.items()} | {
        k: v for k, v in base.items() if k not in over
    }


def run(args: list[str], cwd: Path, env: dict, timeout: int = 900, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout, **kw)


def record(case: str, done: subprocess.CompletedProcess | None, verdict: str, note: str = "") -> None:
    err = done.stderr if done is not None else ""
    lines = [line for line in err.splitlines() if line.strip() and not line.startswith(("\r", "denoising"))]
    row = {
        "case": case,
        "rc": done.returncode if done is not None else None,
        "stderr_lines": len(lines),
        "tracebacks": err.count("Traceback (most recent call last)"),
        "verdict": verdict,
        "note": note,
        "stderr": lines[-6:],
    }
    ROWS.append(row)
    print(json.dumps(row), flush=True)


def flip(path: Path) -> None:
    data = bytearray(path.read_bytes())
    for at in (0.20, 0.35, 0.50):
        start = int(len(data) * at)
        data[start : start + 32] = bytes(b ^ 0xFF for b in data[start : start + 32])
    path.unlink()
    path.write_bytes(bytes(data))


def running_runs(repo: Path) -> int:
    if not (repo / "mlflow.db").is_file():
        return 0
    with sqlite3.connect(repo / "mlflow.db") as db:
        return db.execute("select count(*) from runs where status = 'RUNNING'").fetchone()[0]


def staging_litter(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith(".dmc-generate"))


def snapshot(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()}


def setup(source: Path, repo: Path, chorales: Path, env: dict) -> None:
    """A fresh copy of `source` with tiny params, as a clone would be, and a finished `dvc repro`."""
    shutil.rmtree(repo, ignore_errors=True)
    top = {".git", "mlflow.db", "mlflow.db.lock", "mlartifacts", "models", "samples", "data", ".dvc"}

    def ignore(folder: str, names: list[str]) -> set[str]:
        caches = ("__pycache__", ".pytest_cache", ".ruff_cache")
        skip = {n for n in names if n in caches or n.endswith(".egg-info")}
        return skip | (top & set(names) if Path(folder) == source else set())

    shutil.copytree(source, repo, ignore=ignore)
    (repo / "data").mkdir()
    source_params = yaml.safe_load((source / "params.yaml").read_text())
    tiny = merge(source_params, {**TINY, "raw_dir": str(chorales)})
    (repo / "params.yaml").write_text(yaml.safe_dump(tiny, sort_keys=False))
    git = ["git", "-c", "user.name=ci", "-c", "user.email=ci@example.com"]
    for cmd in (
        ["git", "init", "-q"],
        [sys.executable, "-m", "dvc", "init", "-q"],
        [*git, "add", "-A"],
        [*git, "commit", "-qm", "fresh clone"],
    ):
        subprocess.run(cmd, cwd=repo, env=env, check=True, capture_output=True)
    t0 = time.time()
    done = run([sys.executable, "-m", "dvc", "repro"], repo, env)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    print(f"baseline dvc repro: {time.time() - t0:.0f} s", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--source", type=Path, default=HERE)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--keep", type=Path, help="work here and keep it (default: a temp folder)")
    parser.add_argument("--cases", help="only these groups, e.g. 3c,4c (default: all)")
    parser.add_argument("--reuse", action="store_true", help="the clone in --keep is set up: no baseline run")
    args = parser.parse_args()

    def want(group: str) -> bool:
        return not args.cases or group in args.cases.split(",")

    from pipeline.data.datasets import bach
    from pipeline.params import load_params

    work = args.keep or Path(tempfile.mkdtemp(prefix="dmc-campaign-"))
    work.mkdir(parents=True, exist_ok=True)
    chorales = work / "chorales"
    params = load_params(HERE / "params.yaml")
    if not chorales.is_dir():
        bach.fetch(chorales, merge(params, {"prepare": {"n_jobs": 1}}), limit=24)
    repo = work / "clone"
    env = {
        k: v for k, v in os.environ.items() if not k.startswith(("DVC_", "MLFLOW_")) and k != "DMC_TRACKING"
    }
    env.update(PYTHONPATH=str(repo), OMP_NUM_THREADS="1", DMC_THREADS="1", PYTHONUNBUFFERED="1")
    dvc = [sys.executable, "-m", "dvc"]
    dmc = [sys.executable, "-m", "pipeline.cli"]
    if not args.reuse:
        setup(args.source, repo, chorales, env)
    model, last = repo / "models/model.pt", repo / "models/checkpoints/last.pt"
    good_model, good_last = model.read_bytes(), last.read_bytes()

    def restore() -> None:
        for path, data in ((model, good_model), (last, good_last)):
            path.parent.mkdir(parents=True, exist_ok=True)
            path.unlink(missing_ok=True)
            path.write_bytes(data)

    if want("1a"):
        # 1. flipped bytes in last.pt, then `dvc repro -f -s train`
        flip(last)
        done = run([*dvc, "repro", "-f", "-s", "train"], repo, env)
        accepted = done.returncode == 0
        record(
            "1a flipped bytes in last.pt, dvc repro -f -s train",
            done,
            "ACCEPTED silently" if accepted else "refused",
        )
        restore()

    if want("1b"):
        # 1b. flipped bytes in model.pt, then generate
        flip(model)
        done = run([*dmc, "generate", str(work / "o1"), "--n", "2", "--quiet"], repo, env)
        record(
            "1b flipped bytes in model.pt, dmc generate o --n 2",
            done,
            "ACCEPTED silently" if done.returncode == 0 else "refused",
        )
        restore()

    if want("2"):
        # 2. SIGTERM to dvc repro's process group while train records in MLflow
        for delay in (1.0, 3.0, 5.0):
            proc = subprocess.Popen(
                [*dvc, "repro", "-f", "-s", "train"],
                cwd=repo,
                env=env,
                start_new_session=True,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            for line in proc.stdout:
                if line.startswith("train: ") and "wrote models/model.pt" in line:
                    break
            time.sleep(delay)
            os.killpg(proc.pid, signal.SIGTERM)
            out, err = proc.communicate(timeout=300)
            left = running_runs(repo)
            done_stage = subprocess.CompletedProcess(proc.args, proc.returncode, out, err)
            record(
                f"2 SIGTERM to dvc repro {delay:.0f} s after train's summary",
                done_stage,
                f"{left} RUNNING right after",
            )
            restore()
        done = run([*dvc, "repro"], repo, env)
        left = running_runs(repo)
        record(
            "2' then a clean dvc repro: RUNNING runs left",
            done,
            f"{left} RUNNING",
            next((line for line in done.stderr.splitlines() if "KILLED" in line), ""),
        )
        good_model, good_last = model.read_bytes(), last.read_bytes()

    if want("3ab"):
        # 3. generate into a folder holding an earlier run
        out = work / "o3"
        run([*dmc, "generate", str(out), "--n", "4", "--quiet", "--seed", "1"], repo, env)
        before = snapshot(out)
        immutable = out / "sample_002.mid"
        chattr = subprocess.run(["chattr", "+i", str(immutable)], capture_output=True).returncode == 0
        if chattr:
            done = run([*dmc, "generate", str(out), "--n", "4", "--quiet", "--seed", "2"], repo, env)
            subprocess.run(["chattr", "-i", str(immutable)], check=True)
            same = snapshot(out) == before and not staging_litter(out)
            record(
                "3a one sample_NNN.mid immutable (chattr +i), generate again",
                done,
                "folder as it was" if same else "MIXED folder",
            )
        folder_case = work / "o3b"
        run([*dmc, "generate", str(folder_case), "--n", "4", "--quiet", "--seed", "1"], repo, env)
        (folder_case / "sample_004.mid").mkdir()
        before_b = snapshot(folder_case)
        done = run([*dmc, "generate", str(folder_case), "--n", "6", "--quiet", "--seed", "2"], repo, env)
        same = snapshot(folder_case) == before_b and not staging_litter(folder_case)
        record(
            "3b a folder named sample_004.mid, generate --n 6",
            done,
            "folder as it was" if same else "MIXED folder",
        )

    if want("3c"):
        # 3c. two generates into one folder at once: the second starts while the first writes
        both = work / "o3c"
        slow = [*dmc, "generate", str(both), "--n", "400", "--batch-size", "4", "--steps", "100", "--quiet"]
        first = subprocess.Popen(
            [*slow, "--seed", "1"],
            cwd=repo,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        deadline = time.time() + 120
        while time.time() < deadline and not (both.is_dir() and list(both.glob(".dmc-generate-*/*"))):
            time.sleep(0.1)
        second = run([*dmc, "generate", str(both), "--n", "2", "--quiet", "--seed", "2"], repo, env)
        overlapped = first.poll() is None
        first.send_signal(signal.SIGTERM)  # its own outcome is case 3d's
        first.communicate(timeout=300)
        record(
            "3c a second generate into a folder the first is writing",
            second,
            (
                "both succeed; the first would overwrite the second's pieces"
                if second.returncode == 0
                else "second refused"
            )
            + ("" if overlapped else " (NOT overlapped: the first had finished)"),
        )

    if want("3d"):
        # 3d. SIGTERM to generate half-way; then kill -9 half-way and the next generate sweeps
        term = work / "o3d"
        run([*dmc, "generate", str(term), "--n", "4", "--quiet"], repo, env)
        before_d = snapshot(term)
        for sig, name in ((signal.SIGTERM, "SIGTERM"), (signal.SIGKILL, "kill -9")):
            many = [
                *dmc,
                "generate",
                str(term),
                "--n",
                "200",
                "--batch-size",
                "4",
                "--steps",
                "3",
                "--quiet",
                "--seed",
                "5",
            ]
            proc = subprocess.Popen(
                many, cwd=repo, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
            )
            deadline, reached = time.time() + 900, False
            while time.time() < deadline and proc.poll() is None and not reached:
                reached = len(list(term.glob(".dmc-generate-*/*"))) >= 8
                time.sleep(0.05)
            proc.send_signal(sig)
            o, e = proc.communicate(timeout=120)
            left = staging_litter(term)
            same = {k: v for k, v in snapshot(term).items() if k.startswith("sample_")} == before_d
            if not reached:
                print(f"3d: the signal came before 8 pieces were staged (exit {proc.returncode})", flush=True)
            record(
                f"3d {name} to generate half-way",
                subprocess.CompletedProcess(proc.args, proc.returncode, o, e),
                f"old pieces {'intact' if same else 'CHANGED'}, {len(left)} temp folders left",
            )
        done = run([*dmc, "generate", str(term), "--n", "1", "--quiet"], repo, env)
        record(
            "3d' the next generate into that folder",
            done,
            f"{len(staging_litter(term))} temp folders left",
            next((line for line in done.stderr.splitlines() if "removed" in line), ""),
        )

    if want("4a"):
        # 4a. a text file as the model
        (work / "notes.txt").write_text("this is a text file\nnot a model\n")
        done = run(
            [*dmc, "generate", str(work / "o4"), "--model", str(work / "notes.txt"), "--quiet"], repo, env
        )
        record(
            "4a a text file as --model", done, "one line" if done.returncode == 2 else "not refused cleanly"
        )

    if want("4b"):
        # 4b. garbage or truncated prepared data, read by the train stage
        prepared = repo / "data/prepared"
        for name, damage in (
            ("segments.parquet", "garbage"),
            ("segments.parquet", "truncated"),
            ("stats.json", "garbage"),
            ("stats.json", "truncated"),
        ):
            path = prepared / name
            good = path.read_bytes()
            path.unlink()
            path.write_bytes(b"\x00garbage\xff" * 10 if damage == "garbage" else good[: len(good) // 2])
            done = run([sys.executable, "-m", "stages.train"], repo, env)
            path.unlink()
            path.write_bytes(good)
            record(
                f"4b {damage} {name}, python -m stages.train",
                done,
                "one line" if done.returncode == 2 and done.stderr.count("\n") <= 2 else "traceback",
            )
        restore()

    # 4c. ENOSPC: generate into a full folder, and the train checkpoint save onto a full disk (needs root)
    if want("4c") and os.geteuid() == 0:
        small = work / "small"
        small.mkdir(exist_ok=True)
        subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16k", "tmpfs", str(small)], check=True)
        try:
            for i in range(2):
                (small / f"sample_{i:03d}.mid").write_bytes(b"old %d" % i)
            before_s = snapshot(small)
            done = run([*dmc, "generate", str(small), "--n", "8", "--steps", "2", "--quiet"], repo, env)
            record(
                "4c ENOSPC in generate (16 KB tmpfs)",
                done,
                "folder as it was"
                if snapshot(small) == before_s and not staging_litter(small)
                else "MIXED folder",
            )
        finally:
            subprocess.run(["umount", str(small)], check=True)
        ckpts = repo / "models/checkpoints"
        shutil.rmtree(ckpts)
        ckpts.mkdir()
        subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(ckpts)], check=True)
        try:
            done = run([sys.executable, "-m", "stages.train"], repo, {**env, "DMC_TRACKING": "0"})
            record(
                "4c ENOSPC in the train checkpoint save (256 KB tmpfs)",
                done,
                "one line" if done.returncode == 2 and done.stderr.count("\n") <= 2 else "traceback",
            )
        finally:
            subprocess.run(["umount", str(ckpts)], check=True)
        restore()

    if want("4d"):
        # 4d. Ctrl-C in each stage (SIGINT to the process group, as a terminal sends it)
        for stage, wait in (("prepare", 20.0), ("train", 40.0), ("sample", 30.0), ("evaluate", 30.0)):
            if stage == "train":
                last.unlink()  # train from scratch, so that Ctrl-C lands mid-training
            proc = subprocess.Popen(  # SIGINT as a terminal leaves it, even when this runs in the background
                [sys.executable, "-m", f"stages.{stage}"],
                preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
                cwd=repo,
                env=env,
                start_new_session=True,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            time.sleep(wait)
            os.killpg(proc.pid, signal.SIGINT)
            o, e = proc.communicate(timeout=300)
            record(
                f"4d Ctrl-C in python -m stages.{stage} after {wait:.0f} s",
                subprocess.CompletedProcess(proc.args, proc.returncode, o, e),
                "one line" if e.count("Traceback") == 0 and len(e.strip().splitlines()) <= 1 else "traceback",
                f"RUNNING runs after: {running_runs(repo)}",
            )
            restore()

    if want("5"):
        # 5. messages
        done = run(
            [*dmc, "generate", str(work / "o5"), "--model", str(work / "notes.txt"), "--quiet"], repo, env
        )
        record(
            "5a torch's weights_only=False advice echoed",
            done,
            "echoed" if "weights_only" in done.stderr else "not echoed",
        )
        text = (repo / "params.yaml").read_text()
        params_now = yaml.safe_load(text)
        params_now["train"] = None
        (repo / "params.yaml").write_text(yaml.safe_dump(params_now, sort_keys=False))
        done = run([sys.executable, "-m", "stages.validate"], repo, env)
        (repo / "params.yaml").write_text(text)
        record(
            "5b an empty train: section",
            done,
            "names the empty section" if "empty" in done.stderr else "misleading",
        )
        done = run([sys.executable, "-m", "stages.train"], repo, {**env, "DMC_TRACKING": "0"})
        summary = next((line for line in done.stdout.splitlines() if line.startswith("train: 40 steps")), "")
        record(
            "5c resuming at the final step",
            done,
            "None steps/s" if "None steps/s" in summary else "no None",
            summary[-80:],
        )

    if args.json:
        args.json.write_text(json.dumps(ROWS, indent=1))
    print("\n| case | exit | stderr lines | tracebacks | verdict |\n|---|---|---|---|---|")
    for r in ROWS:
        print(f"| {r['case']} | {r['rc']} | {r['stderr_lines']} | {r['tracebacks']} | {r['verdict']} |")


if __name__ == "__main__":
    main()
