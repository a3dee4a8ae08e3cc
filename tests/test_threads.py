"""pipeline.threads: each dmc process's CPU threads, sized to the cores other work leaves free (and shared
out over the experiments `dvc queue` runs at once), and followed while the process runs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import HANG_GUARD_S, REPO

from pipeline import threads as thread_policy
from pipeline.errors import DmcError
from pipeline.threads import (
    LoadFollower,
    available_cpus,
    busy_cpus,
    configure_threads,
    cpu_ticks,
    queue_jobs,
    threads_for,
    threads_per_job,
)

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
    assert threads_per_job(env, copy, cpus=8, busy=0.0) == (
        4, "8 CPUs, 0.0 busy with other work, shared by 2 dvc queue jobs")
    assert threads_per_job(env, copy, cpus=1, busy=0.0)[0] == 1  # never 0


def test_outside_a_queue_copy_a_process_takes_every_free_cpu(tmp_path):
    fake_queue(tmp_path, [os.getpid(), os.getpid()])
    env = {"DVC_ROOT": str(tmp_path)}
    assert queue_jobs(env, tmp_path) == 1                      # dvc repro / dvc exp run in the workspace
    assert queue_jobs({}, tmp_path / ".dvc" / "tmp" / "exps" / "tmpabc123") == 1   # no DVC_ROOT
    assert threads_per_job(env, tmp_path, cpus=8, busy=0.0) == (8, "8 CPUs, 0.0 busy with other work")


def test_the_policy_takes_the_cores_other_work_leaves_free():
    # The 2-core machine of issue 23, whatever the preset or batch: quiet, both cores (a second thread is
    # worth 1.35x for `tiny` there); beside a CPU hog per core, or one busy core, one thread (two spinning
    # threads made 0.13 steps/s against 1.5 for one); background noise does not cost the second thread.
    assert threads_for(2, busy=0.0) == 2
    assert threads_for(2, busy=0.3) == 2
    assert threads_for(2, busy=0.5) == 1
    assert threads_for(2, busy=1.0) == 1
    assert threads_for(2, busy=2.0) == 1
    assert threads_for(1, busy=0.0) == 1
    assert threads_for(8, busy=2.0) == 6
    assert threads_for(8, busy=8.0) == 1                       # never 0
    assert threads_for(8, busy=0.0, jobs=2) == 4               # a dvc queue job's share...
    assert threads_for(8, busy=6.0, jobs=2) == 2               # ... or less when the cores are busier
    assert threads_per_job({}, cpus=2, busy=2.0) == (1, "2 CPUs, 2.0 busy with other work")


def test_dmc_threads_then_omp_num_threads_override_the_policy(tmp_path):
    copy = fake_queue(tmp_path, [os.getpid(), os.getpid()])
    env = {"DVC_ROOT": str(tmp_path), "OMP_NUM_THREADS": "3"}
    assert threads_per_job(env, copy, cpus=8, busy=7.0) == (3, "OMP_NUM_THREADS")
    assert threads_per_job({**env, "DMC_THREADS": "2"}, copy, cpus=8, busy=7.0) == (2, "DMC_THREADS")
    assert threads_per_job({"DMC_THREADS": "4"}, cpus=2, busy=2.0) == (4, "DMC_THREADS")  # oversubscribed
    for bad in ("0", "two", "-1", ""):
        with pytest.raises(DmcError, match="DMC_THREADS must be a whole number"):
            threads_per_job({"DMC_THREADS": bad}, copy, cpus=8)


STAT = """cpu  300 10 50 900 5 0 2 3 0 0
cpu0 100 0 20 500 5 0 1 3 0 0
cpu1 200 10 30 400 0 0 1 0 0 0
intr 12345
ctxt 678
"""


def test_cpu_ticks_sums_the_busy_time_of_the_processes_cpus():
    # busy: user, nice, system, irq, softirq, steal; idle and iowait are free
    assert cpu_ticks(STAT) == (100 + 20 + 1 + 3 + 200 + 10 + 30 + 1, 124 + 505 + 241 + 400)
    assert cpu_ticks(STAT, {1}) == (241, 641)
    with pytest.raises(ValueError, match="not /proc/stat"):
        cpu_ticks(STAT, {5})
    with pytest.raises(ValueError, match="not /proc/stat"):
        cpu_ticks("intr 1\n")


@pytest.mark.skipif(not Path("/proc/stat").exists() or not hasattr(os, "sched_setaffinity"),
                    reason="Linux: /proc/stat and CPU affinity")
def test_a_cpu_hog_on_a_core_counts_as_busy():
    cpu = min(os.sched_getaffinity(0))
    hog = subprocess.Popen([sys.executable, "-c",
                            f"import os\nos.sched_setaffinity(0, {{{cpu}}})\nwhile True: pass"])
    try:
        time.sleep(0.5)
        assert busy_cpus({cpu}, window_s=0.5) > 0.6
    finally:
        hog.kill()
        hog.wait()


def _probe(cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    """A stage (through stages.run) that prints the thread counts torch and OMP got."""
    code = ("import os, torch\n"
            "from stages import run\n"
            "run('probe', lambda: print(torch.get_num_threads(), torch.get_num_interop_threads(),"
            " os.environ['OMP_NUM_THREADS'], os.environ['MKL_NUM_THREADS']))\n")
    return subprocess.run([sys.executable, "-c", code], cwd=cwd, capture_output=True, text=True,
                          timeout=HANG_GUARD_S, env={**env, "PYTHONPATH": str(REPO), "DMC_TRACKING": "0"})


def _no_thread_settings() -> dict[str, str]:
    return {k: v for k, v in os.environ.items()
            if k not in ("DMC_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "OMP_WAIT_POLICY")}


def test_every_stage_sizes_torch_and_omp_threads_by_the_policy(tmp_path):
    copy = fake_queue(tmp_path, [os.getpid(), os.getpid()])
    done = _probe(copy, {**_no_thread_settings(), "DVC_ROOT": str(tmp_path)})
    assert done.returncode == 0, done.stderr
    threads = int(done.stdout.splitlines()[-1].split()[0])
    # The load this machine has now decides between 1 and the queue share; torch and OMP agree on it.
    assert 1 <= threads <= max(1, available_cpus() // 2)
    assert done.stdout.splitlines()[-1] == f"{threads} {threads} {threads} {threads}"
    cpus = available_cpus()
    if threads < cpus:
        assert done.stdout.startswith(f"probe: {threads} thread{'s' * (threads > 1)} of {cpus} CPUs (")
    done = _probe(copy, {**_no_thread_settings(), "DVC_ROOT": str(tmp_path), "DMC_THREADS": "3"})
    assert done.stdout == "3 3 3 3\n"  # chosen by the user: nothing to explain


def test_dmc_commands_size_their_threads_before_the_subcommand_runs():
    code = ("import torch\nfrom pipeline.cli import main\nmain(['model', '--preset', 'tiny'])\n"
            "print(torch.get_num_threads())\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          env={**_no_thread_settings(), "PYTHONPATH": str(REPO), "DMC_THREADS": "3"})
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[-1] == "3"


def test_a_bad_dmc_threads_is_a_one_line_dmc_error(monkeypatch, capsys):
    from pipeline.cli import main

    monkeypatch.setenv("DMC_THREADS", "lots")
    assert main(["model", "--preset", "tiny"]) == 2
    assert capsys.readouterr().err == \
        "dmc: error: DMC_THREADS must be a whole number of threads >= 1, got 'lots'\n"


def _write_stat(path: Path, busy: tuple[int, int], idle: tuple[int, int]) -> None:
    """A /proc/stat with two CPUs: user ticks `busy`, idle ticks `idle` (the all-CPU line is ignored)."""
    path.write_text("cpu  0 0 0 0 0 0 0 0 0 0\n" + "".join(
        f"cpu{n} {b} 0 0 {i} 0 0 0 0 0 0\n" for n, (b, i) in enumerate(zip(busy, idle, strict=True))))


def test_a_load_that_arrives_or_leaves_while_a_process_runs_resizes_its_threads(tmp_path, monkeypatch):
    # Two spinning threads beside one CPU hog made 0.4-1.9 tiny steps/s where one thread makes 3.1: a
    # load that comes after the start must take the second thread away, and give it back when it goes.
    stat = tmp_path / "stat"
    _write_stat(stat, (0, 0), (0, 1))
    follow = LoadFollower(every_s=0.0, stat=stat)
    follow.cpus = {0, 1}
    monkeypatch.setattr(torch, "set_num_threads", lambda n: monkeypatch.setattr(torch, "get_num_threads",
                                                                                lambda: n))
    _write_stat(stat, (100, 0), (0, 100))                # another process keeps cpu0 busy
    assert follow() == 1 and torch.get_num_threads() == 1
    _write_stat(stat, (105, 0), (95, 200))               # it has gone: both cores idle
    assert follow() == 2 and torch.get_num_threads() == 2
    _write_stat(stat, (305, 200), (95, 200))             # both busy with other work: still one
    assert follow() == 1
    slow = LoadFollower(every_s=3600.0, stat=stat)
    assert slow() is None                                # not yet time to look: nothing measured


def test_only_a_count_chosen_by_the_load_follows_it(monkeypatch):
    for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):  # configure_threads exports its count
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(thread_policy, "_follower", None)
    monkeypatch.setattr(thread_policy, "busy_cpus", lambda *a, **k: 0.0)
    threads = torch.get_num_threads()
    configure_threads({"DMC_THREADS": "1"})
    assert thread_policy._follower is None and torch.get_num_threads() == 1
    configure_threads({"OMP_NUM_THREADS": "1"})
    assert thread_policy._follower is None
    configure_threads({})
    assert isinstance(thread_policy._follower, LoadFollower)
    torch.set_num_threads(threads)


def test_a_bad_dmc_threads_is_one_line_and_exit_2(tmp_path):
    done = _probe(tmp_path, {**os.environ, "DMC_THREADS": "lots"})
    assert done.returncode == 2
    assert done.stderr == "probe: error: DMC_THREADS must be a whole number of threads >= 1, got 'lots'\n"
