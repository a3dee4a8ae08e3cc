"""pipeline.threads: each stage's CPU threads, shared out over the experiments `dvc queue` runs at once."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import HANG_GUARD_S, REPO

from pipeline.errors import DmcError
from pipeline.threads import queue_jobs, threads_per_job

DEAD_PID = 999_999_999  # above any pid_max: no process has it


def fake_queue(root: Path, pids: list[int]) -> Path:
    """A repository whose `dvc queue` has workers with these pids (as DVC 3 records them), and the temp
    copy a queued experiment runs in."""
    celery = root / ".dvc" / "tmp" / "exps" / "celery"
    celery.mkdir(parents=True)
    for n, pid in enumerate(pids, 1):
        (celery / f"dvc-exp-worker-{n}.json").write_text(json.dumps(
            {"pid": pid, "stdin": None, "stdout": str(celery / f"dvc-exp-worker-{n}.out"), "stderr": None,
             "returncode": None}))
    copy = root / ".dvc" / "tmp" / "exps" / "tmpabc123"
    copy.mkdir()
    return copy


def test_a_stage_in_a_queue_copy_shares_the_cpus_over_the_live_workers(tmp_path):
    copy = fake_queue(tmp_path, [os.getpid(), os.getpid(), DEAD_PID])
    env = {"DVC_ROOT": str(tmp_path)}
    assert queue_jobs(env, copy) == 2
    assert threads_per_job(env, copy, cpus=8) == (4, "8 CPUs shared by 2 dvc queue jobs")
    assert threads_per_job(env, copy, cpus=1)[0] == 1  # never 0


def test_outside_a_queue_copy_a_stage_keeps_torchs_default(tmp_path):
    fake_queue(tmp_path, [os.getpid(), os.getpid()])
    env = {"DVC_ROOT": str(tmp_path)}
    assert queue_jobs(env, tmp_path) == 1                      # dvc repro / dvc exp run in the workspace
    assert queue_jobs({}, tmp_path / ".dvc" / "tmp" / "exps" / "tmpabc123") == 1   # no DVC_ROOT
    assert threads_per_job(env, tmp_path, cpus=8) == (None, "alone: torch's default")


def test_dmc_threads_then_omp_num_threads_override_the_share(tmp_path):
    copy = fake_queue(tmp_path, [os.getpid(), os.getpid()])
    env = {"DVC_ROOT": str(tmp_path), "OMP_NUM_THREADS": "3"}
    assert threads_per_job(env, copy, cpus=8) == (3, "OMP_NUM_THREADS")
    assert threads_per_job({**env, "DMC_THREADS": "1"}, copy, cpus=8) == (1, "DMC_THREADS")
    for bad in ("0", "two", "-1", ""):
        with pytest.raises(DmcError, match="DMC_THREADS must be a whole number"):
            threads_per_job({"DMC_THREADS": bad}, copy, cpus=8)


def _probe(cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    """A stage (through stages.run) that prints the thread counts torch and OMP got."""
    code = ("import os, torch\n"
            "from stages import run\n"
            "run('probe', lambda: print(torch.get_num_threads(), torch.get_num_interop_threads(),"
            " os.environ['OMP_NUM_THREADS'], os.environ['MKL_NUM_THREADS']))\n")
    return subprocess.run([sys.executable, "-c", code], cwd=cwd, capture_output=True, text=True,
                          timeout=HANG_GUARD_S, env={**env, "PYTHONPATH": str(REPO), "DMC_TRACKING": "0"})


def test_every_stage_sizes_torch_and_omp_threads_for_its_queue_share(tmp_path):
    from pipeline.threads import available_cpus

    copy = fake_queue(tmp_path, [os.getpid(), os.getpid()])
    base = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    done = _probe(copy, {**base, "DVC_ROOT": str(tmp_path)})
    assert done.returncode == 0, done.stderr
    share = max(1, available_cpus() // 2)
    assert done.stdout.splitlines()[-1] == f"{share} {share} {share} {share}"
    assert done.stdout.startswith(f"probe: {share} thread")
    done = _probe(copy, {**base, "DVC_ROOT": str(tmp_path), "DMC_THREADS": "3"})
    assert done.stdout.splitlines()[-1] == "3 3 3 3"


def test_a_bad_dmc_threads_is_one_line_and_exit_2(tmp_path):
    done = _probe(tmp_path, {**os.environ, "DMC_THREADS": "lots"})
    assert done.returncode == 2
    assert done.stderr == "probe: error: DMC_THREADS must be a whole number of threads >= 1, got 'lots'\n"
