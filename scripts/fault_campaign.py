"""Issue 29's fault campaign, re-run: each fault is injected into a fresh tiny copy of a checkout, then
the normal command is run; prints one row per case (exit code, stderr lines, tracebacks, verdict).

    Two cases need root (chattr +i, and a small tmpfs for ENOSPC); they are skipped without it.
    Case 4d interrupts every stage at points it reaches for sure: held at an import (tests/hold_import.py),
    or once a file shows it is half-way; it is 32 runs.
    PYTHONPATH=$PWD OMP_NUM_THREADS=1 DMC_THREADS=1 python3 scripts/fault_campaign.py [--source DIR]

`--source` is the checkout to test (default: this one), so the same script measures before and after.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
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


def stage_outputs(repo: Path, stage: str) -> list[Path]:
    """What dvc.yaml says `stage` writes: its outs, metrics and plots."""
    spec = yaml.safe_load((repo / "dvc.yaml").read_text())["stages"][stage]
    items = [item for key in ("outs", "metrics", "plots") for item in spec.get(key, [])]
    return [repo / (next(iter(item)) if isinstance(item, dict) else item) for item in items]


def digests(paths: list[Path]) -> dict[str, str]:
    """The sha256 of each file at `paths` (folders: every file under them), by path."""
    files = [f for p in paths for f in (sorted(p.rglob("*")) if p.is_dir() else [p]) if f.is_file()]
    return {str(f): hashlib.sha256(f.read_bytes()).hexdigest() for f in files}


def contents(paths: list[Path]) -> dict[Path, bytes]:
    return {Path(f): Path(f).read_bytes() for f in digests(paths)}


def put_back(paths: list[Path], before: dict[Path, bytes]) -> None:
    """Make the files at `paths` what `contents` found there."""
    for f in set(map(Path, digests(paths))) - before.keys():
        f.unlink()
    for f, data in before.items():
        if not f.is_file() or f.read_bytes() != data:
            f.parent.mkdir(parents=True, exist_ok=True)
            f.unlink(missing_ok=True)
            f.write_bytes(data)


def changed(before: dict[str, str], after: dict[str, str], root: Path) -> list[str]:
    return sorted(str(Path(f).relative_to(root)) for f in before.keys() | after.keys()
                  if before.get(f) != after.get(f))


def temp_litter(repo: Path) -> list[str]:
    """Temps of atomic writes (pipeline/files.py) and of generate left anywhere in the checkout."""
    return sorted(str(p.relative_to(repo)) for p in repo.rglob(".*")
                  if (p.name.endswith(".tmp") or p.name.startswith(".dmc-generate"))
                  and not {".git", ".dvc"} & set(p.relative_to(repo).parts))


def interrupt(args: list[str], cwd: Path, env: dict, signum: int, ready: Callable[[str], str | None],
              logs: Path) -> tuple[subprocess.CompletedProcess, str | None]:
    """Start `args` in its own process group, as a terminal does (Ctrl-C not ignored even when this script
    runs in the background); once `ready(stdout so far)` says where it is, send `signum` to the group.
    Returns the outcome and that place, None if it ended first. Output goes to files: no pipe can fill."""
    logs.mkdir(parents=True, exist_ok=True)
    out_path, err_path = logs / "stdout", logs / "stderr"
    with out_path.open("w") as out, err_path.open("w") as err:
        proc = subprocess.Popen(args, cwd=cwd, env=env, stdout=out, stderr=err, start_new_session=True,
                                preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
        deadline, at = time.time() + 900, None
        while proc.poll() is None and time.time() < deadline and at is None:
            at = ready(out_path.read_text())
            time.sleep(0.02)
        if at is not None and proc.poll() is None:
            os.killpg(proc.pid, signum)
        elif proc.poll() is None:
            at = "nowhere: it hung"
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=600)
    return subprocess.CompletedProcess(args, proc.returncode, out_path.read_text(), err_path.read_text()), at


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
    work = work.resolve()  # hold_import names files by their absolute path
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
        try:  # trains from scratch: the first checkpoint (step 10) does not fit
            outs = digests(stage_outputs(repo, "train"))
            done = run([sys.executable, "-m", "stages.train"], repo, env)
            left = temp_litter(repo)
            one_line = done.returncode == 2 and len(done.stderr.strip().splitlines()) == 1
            moved = changed(outs, digests(stage_outputs(repo, "train")), repo)
            record(
                "4c ENOSPC in the train checkpoint save (256 KB tmpfs)",
                done,
                ("one line" if one_line else "NOT one line")
                + (f", outputs CHANGED: {' '.join(moved)}" if moved else ", outputs as they were")
                + f", {len(left)} temps left, {running_runs(repo)} RUNNING",
                " ".join(left),
            )
        finally:
            subprocess.run(["umount", str(ckpts)], check=True)
        restore()

    if want("4d"):
        # 4d. Ctrl-C (SIGINT to the process group, as a terminal sends it) and SIGTERM in each stage: held
        # (tests/hold_import.py) at its first import, and at the first import made while its main runs; then
        # half-way through prepare's, train's and sample's work; and dmc generate while it imports. Each
        # time: one line, exit 128 + the signal, no RUNNING run, the outputs as they were, no temps left.
        from hold_import import HELD, hold_env

        params_text = (repo / "params.yaml").read_text()

        def held(stdout: str) -> str | None:
            line = next((x for x in stdout.splitlines() if x.startswith(HELD)), None)
            return None if line is None else f"at the import of {line[len(HELD):]}"

        def staged(pattern: str) -> Callable[[str], str | None]:
            def ready(stdout: str) -> str | None:
                return f"with {pattern} present" if list(repo.glob(pattern)) else None

            return ready

        def with_params(over: dict) -> None:
            (repo / "params.yaml").write_text(yaml.safe_dump(merge(yaml.safe_load(params_text), over)))

        cases = []
        for stage in ("validate", "download", "prepare", "train", "sample", "evaluate"):
            # validate's main imports nothing: it is held at the first import of `stages.run` instead
            inside = ("run", f"{repo / 'stages/__init__.py'}:run") if stage == "validate" else (
                "main", f"{repo / 'stages' / stage}.py:main")
            for where, code in (("imports", f"{repo / 'stages' / stage}.py:<module>"), inside):
                cases.append((stage, f"held while {where}", [sys.executable, "-m", f"stages.{stage}"],
                              hold_env(env, work / "hook", code, 600), held, {}))
        cases += [
            ("prepare", "half-way", [sys.executable, "-m", "stages.prepare"], env,
             staged("data/.prepared.*.tmp"), {}),
            ("train", "half-way", [sys.executable, "-m", "stages.train"], env,
             staged("models/checkpoints/last.pt"), {"steps": 2000}),
            ("sample", "half-way", [sys.executable, "-m", "stages.sample"], env, staged(".samples.*.tmp"),
             {"sample": {"n": 64, "steps": 50}}),
            ("generate", "held while imports", [*dmc, "generate", str(work / "o4d"), "--n", "2", "--quiet"],
             hold_env(env, work / "hook", f"{repo / 'pipeline' / 'cli.py'}:main", 600), held, {}),
        ]
        for stage, point, command, stage_env, ready, over in cases:
            for signum in (signal.SIGINT, signal.SIGTERM):
                outputs = stage_outputs(repo, stage) if stage != "generate" else [work / "o4d"]
                before_outs, saved = digests(outputs), contents(outputs)
                if over:
                    with_params(over)
                if (stage, point) == ("train", "half-way"):
                    last.unlink(missing_ok=True)  # trains from scratch: its first checkpoint is half-way
                done, at = interrupt(command, repo, stage_env, signum, ready, work / "logs" / stage)
                (repo / "params.yaml").write_text(params_text)
                name = signal.Signals(signum).name
                lines = done.stderr.strip().splitlines()
                if at is None:
                    verdict = f"NOT interrupted: it ended first (exit {done.returncode})"
                else:
                    verdict = ("one line" if done.returncode == 128 + signum and len(lines) == 1
                               and "Traceback" not in done.stderr else "NOT one line")
                moved = changed(before_outs, digests(outputs), repo if stage != "generate" else work)
                kept = []
                if (stage, point) == ("train", "half-way"):  # by design: the checkpoint, and the loss curves
                    kept = [f for f in moved if f.startswith(("models/checkpoints/", "metrics/train_loss",
                                                              "metrics/val_loss"))]  # written with it
                    moved = [f for f in moved if f not in kept]
                left = temp_litter(repo) + (staging_litter(work / "o4d") if (work / "o4d").is_dir() else [])
                record(
                    f"4d {name} to {'dmc' if stage == 'generate' else 'stage'} {stage}, {point}",
                    done,
                    f"{verdict}, outputs {'CHANGED: ' + ' '.join(moved) if moved else 'as they were'}, "
                    f"{len(left)} temps left, "
                    f"{running_runs(repo)} RUNNING",
                    f"{at}; {' '.join(left)}" + (f"; kept: {' '.join(kept)}" if kept else ""),
                )
                put_back(outputs, saved)
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
