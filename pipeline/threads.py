"""CPU threads per stage, so experiments run side by side (`dvc queue start -j N`) share the cores.

Left alone, every process's torch takes a thread per core; two trainings on two cores then run four
threads that stall each other (0.11 steps/s each for `tiny`, against ~3.5 for one alone). So each stage
takes `cpus // jobs` threads, where `jobs` is how many experiments run at once:

- `DMC_THREADS=N` in the environment sets the count outright. `dvc queue start` passes its environment
  on to its workers and their stages: `DMC_THREADS=1 dvc queue start -j 2`.
- `OMP_NUM_THREADS`, when set, is kept (torch reads it too).
- Otherwise, in one of `dvc queue`'s temp copies, `jobs` is the number of live queue workers. DVC tells
  a stage only DVC_ROOT, DVC_EXP_NAME, DVC_EXP_BASELINE_REV and DVC_STAGE, never the `-j`; but each
  worker that `dvc queue start` spawns records its pid in
  `$DVC_ROOT/.dvc/tmp/exps/celery/dvc-exp-worker-<n>.json` (DVC 3.x internals: if they move, no worker
  is counted and a stage takes torch's default, as before).
- A stage that runs alone (`dvc repro`, `dvc exp run`) keeps torch's default: a thread per physical core.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
from collections.abc import Mapping
from pathlib import Path

from pipeline.errors import DmcError
from pipeline.files import process_running

ENV = "DMC_THREADS"


def available_cpus() -> int:
    """The CPUs this process may run on (a `taskset` or container limit counts, unlike os.cpu_count)."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return os.cpu_count() or 1


def queue_jobs(environ: Mapping[str, str], cwd: str | Path) -> int:
    """How many experiments `dvc queue` runs at once, counting this one: its live workers when `cwd` is
    one of the queue's temp copies ($DVC_ROOT/.dvc/tmp/exps/...); 1 anywhere else."""
    root = environ.get("DVC_ROOT")
    if not root:
        return 1
    exps = Path(root).resolve() / ".dvc" / "tmp" / "exps"
    if not Path(cwd).resolve().is_relative_to(exps):
        return 1
    workers = 0
    for info in (exps / "celery").glob("dvc-exp-worker-*.json"):
        try:
            record = json.loads(info.read_text())
            pid, returncode = int(record["pid"]), record.get("returncode")
        except (OSError, ValueError, KeyError, TypeError):
            continue
        workers += returncode is None and process_running(pid)
    return max(1, workers)


def threads_per_job(environ: Mapping[str, str] | None = None, cwd: str | Path | None = None,
                    cpus: int | None = None) -> tuple[int | None, str]:
    """(threads, why): DMC_THREADS, else OMP_NUM_THREADS, else the CPUs shared out over queue jobs; None
    (leave torch's default, one thread per physical core) for a stage that runs alone."""
    environ = os.environ if environ is None else environ
    if ENV in environ:
        value = environ[ENV].strip()
        if not value.isdigit() or int(value) < 1:
            raise DmcError(f"{ENV} must be a whole number of threads >= 1, got {environ[ENV]!r}")
        return int(value), ENV
    omp = environ.get("OMP_NUM_THREADS", "").strip()
    if omp.isdigit() and int(omp) >= 1:
        return int(omp), "OMP_NUM_THREADS"
    cpus = available_cpus() if cpus is None else cpus
    jobs = queue_jobs(environ, Path.cwd() if cwd is None else cwd)
    if jobs == 1:
        return None, "alone: torch's default"
    return max(1, cpus // jobs), f"{cpus} CPUs shared by {jobs} dvc queue jobs"


def limit_threads(threads: int | None) -> None:
    """Size torch's intra- and inter-op pools, and OMP/MKL's for child processes and later imports;
    None changes nothing."""
    if threads is None:
        return
    for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[name] = str(threads)
    torch = sys.modules.get("torch")  # a stage that never imports torch need not pay for its import
    if torch is None:
        return
    torch.set_num_threads(threads)
    # Allowed once, before any inter-op work; a later call keeps the first size.
    with contextlib.suppress(RuntimeError):
        torch.set_num_interop_threads(threads)
