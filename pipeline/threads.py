"""CPU threads for every dmc process: the cores nobody else is using, re-checked while it runs.

torch runs each operator on an OpenMP team, by default one thread per core, and each operator ends at a
barrier that waits for the team's slowest thread. When another process holds one of the cores, that
thread is descheduled for a whole time slice while its partner spins at the barrier, and this happens
thousands of times per training step: on the 2-core development machine, `tiny` training on two threads
fell from 6.5 steps/s alone to 0.4-1.9 beside one CPU hog, where one thread makes about 3.1
(benchmarks/README.md, "Contention"). So the count follows the load:

- `DMC_THREADS=N` sets the count outright; `OMP_NUM_THREADS`, when set, is kept (torch reads it too).
  `dvc queue start` passes its environment on to its workers and their stages:
  `DMC_THREADS=1 dvc queue start -j 2`.
- Otherwise a process takes the cores that other processes leave idle when it starts: its CPUs minus
  the CPUs the others keep busy, measured over a fifth of a second from /proc/stat (the 1-minute load
  average where there is none), never fewer than one. Niced work counts too (cpu_ticks says why). In
  one of `dvc queue`'s temp copies the count is also at most `cpus // jobs` (`queue_jobs`), as the
  other jobs may not have started yet.
- The loops that hold a process's time (training steps, denoising steps) call `follow_load`, which
  measures the other work again over the last second or more and resizes the team, so a load that
  arrives after the start costs at most a second of stalling, and a load that leaves gives the cores back.
  OpenMP keeps its default wait (spin briefly, then sleep): passive waiting (`OMP_WAIT_POLICY=PASSIVE`)
  held up under load but cost `tiny` 40% and generation 2.4x on a quiet machine, as every operator must
  wake a sleeping thread.

Entry points: `dmc` (pipeline.cli), each stage (stages.run) and the benchmarks call `configure_threads`;
the chosen count is also exported as OMP_NUM_THREADS/MKL_NUM_THREADS, so child processes inherit it.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import time
from collections.abc import Mapping
from pathlib import Path

from pipeline.errors import DmcError
from pipeline.files import process_running

ENV = "DMC_THREADS"
WINDOW_S = 0.2  # how long the load is watched: a few scheduler ticks per CPU at USER_HZ 100
# A core counts as free when at least two thirds of it is idle: a second thread beside a half-busy core
# risks the stall above for a gain of at most 1.35x.
FREE_CORE = 2 / 3
FOLLOW_EVERY_S = 1.0  # how often follow_load re-measures: a second of stall at most, ~100 ticks per CPU


def available_cpus() -> int:
    """The CPUs this process may run on (a `taskset` or container limit counts, unlike os.cpu_count)."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return os.cpu_count() or 1


def queue_jobs(environ: Mapping[str, str], cwd: str | Path) -> int:
    """How many experiments `dvc queue` runs at once, counting this one: its live workers when `cwd` is
    one of the queue's temp copies ($DVC_ROOT/.dvc/tmp/exps/...); 1 anywhere else.

    DVC tells a stage only DVC_ROOT, DVC_EXP_NAME, DVC_EXP_BASELINE_REV and DVC_STAGE, never the `-j`;
    but each worker that `dvc queue start` spawns records its pid in
    `$DVC_ROOT/.dvc/tmp/exps/celery/dvc-exp-worker-<n>.json` (DVC 3.x internals: if they move, no worker
    is counted and only the measured load limits the threads)."""
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


def cpu_ticks(stat_text: str, cpus: set[int] | None = None) -> tuple[int, int]:
    """(busy, total) scheduler ticks from /proc/stat's text, summed over the CPUs in `cpus` (the ones this
    process may use: a `taskset` or a container's cpuset sees only its own cores' load) or over all.
    Busy is user, nice, system, irq, softirq and steal time (steal: the hypervisor gave the core to another
    machine). Niced work counts: with autogroup scheduling (most desktop kernels) or a cgroup per
    session, a niced process in another session still gets its group's full share of the cores."""
    busy = total = 0
    for line in stat_text.splitlines():
        name, _, values = line.partition(" ")
        number = name[3:]
        if not (name.startswith("cpu") and number.isdigit()):
            continue  # the all-CPU total, or not a CPU line
        if cpus is not None and int(number) not in cpus:
            continue
        user, nice, system, idle, iowait, irq, softirq, steal = (int(v) for v in values.split()[:8])
        busy += user + nice + system + irq + softirq + steal
        total += user + nice + system + irq + softirq + steal + idle + iowait
    if total == 0:
        raise ValueError("no per-CPU lines (cpuN ...) for these CPUs: not /proc/stat")
    return busy, total


def busy_cpus(cpus: set[int] | None = None, window_s: float = WINDOW_S) -> float:
    """How many of this process's CPUs (`cpus`: its affinity when None) other processes keep busy now:
    /proc/stat's busy share over `window_s`, less this process's own CPU time; elsewhere the 1-minute load
    average; 0 where neither exists."""
    cpus = own_cpus() if cpus is None else cpus
    stat = Path("/proc/stat")
    try:
        before, own = cpu_ticks(stat.read_text(), cpus), time.process_time()
        time.sleep(window_s)
        after, own = cpu_ticks(stat.read_text(), cpus), time.process_time() - own
    except (OSError, ValueError):
        with contextlib.suppress(OSError, AttributeError):
            return min(float(len(cpus)), os.getloadavg()[0])
        return 0.0
    busy = others_busy(before, after, own, len(cpus))
    return 0.0 if busy is None else busy


def own_cpus() -> set[int]:
    """The CPUs this process may run on, by number (all of them where affinity is unknown)."""
    if hasattr(os, "sched_getaffinity"):
        return os.sched_getaffinity(0)
    return set(range(available_cpus()))


def others_busy(before: tuple[int, int], after: tuple[int, int], own_s: float, cpus: int) -> float | None:
    """The CPUs other processes kept busy between two `cpu_ticks` readings of `cpus` CPUs, this process's
    own `own_s` CPU seconds in between taken out; None when no tick passed."""
    total = after[1] - before[1]
    if total <= 0:
        return None
    others = (after[0] - before[0] - own_s * os.sysconf("SC_CLK_TCK")) / total
    return max(0.0, min(float(cpus), cpus * others))


def threads_for(cpus: int, busy: float, jobs: int = 1) -> int:
    """The policy: the cores left free (at least FREE_CORE idle each) by `busy` CPUs of other work, at
    most this job's share of a `dvc queue` of `jobs`, at least one."""
    free = int(cpus - busy + (1 - FREE_CORE))
    return max(1, min(cpus // jobs, free))


def threads_per_job(environ: Mapping[str, str] | None = None, cwd: str | Path | None = None,
                    cpus: int | None = None, busy: float | None = None) -> tuple[int, str]:
    """(threads, why): DMC_THREADS, else OMP_NUM_THREADS, else `threads_for` the CPUs, the queue jobs
    and the load; `busy` is measured (busy_cpus, a fifth of a second) when not given."""
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
    busy = busy_cpus() if busy is None else busy
    why = f"{cpus} CPUs, {busy:.1f} busy with other work"
    if jobs > 1:
        why += f", shared by {jobs} dvc queue jobs"
    return threads_for(cpus, busy, jobs), why


def limit_threads(threads: int) -> None:
    """Size torch's intra- and inter-op pools, and OMP/MKL's for child processes and later imports."""
    for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[name] = str(threads)
    torch = sys.modules.get("torch")  # a process that never imports torch need not pay for its import
    if torch is None:
        return
    torch.set_num_threads(threads)
    # Allowed once, before any inter-op work; a later call keeps the first size.
    with contextlib.suppress(RuntimeError):
        torch.set_num_interop_threads(threads)


class LoadFollower:
    """Re-sizes torch's threads to the cores other processes leave free, measured over the interval since
    the last check (/proc/stat's busy ticks less this process's own CPU time), at most every `every_s`."""

    def __init__(self, jobs: int = 1, every_s: float = FOLLOW_EVERY_S,
                 stat: Path = Path("/proc/stat")) -> None:
        self.cpus = own_cpus()
        self.jobs, self.every_s, self.stat = jobs, every_s, stat
        self.last = self._sample()

    def _sample(self) -> tuple[float, tuple[int, int], float] | None:
        try:
            return time.monotonic(), cpu_ticks(self.stat.read_text(), self.cpus), time.process_time()
        except (OSError, ValueError):
            return None

    def __call__(self) -> int | None:
        """The thread count set now, or None when it is not yet time to look (or nothing can be read)."""
        if self.last is None or time.monotonic() - self.last[0] < self.every_s:
            return None
        now = self._sample()
        if now is None:
            return None
        (_, before, own_before), (_, after, own_after) = self.last, now
        self.last = now
        busy = others_busy(before, after, own_after - own_before, len(self.cpus))
        if busy is None:
            return None
        threads = threads_for(len(self.cpus), busy, self.jobs)
        torch = sys.modules.get("torch")
        if torch is not None and torch.get_num_threads() != threads:
            torch.set_num_threads(threads)
        return threads


_follower: LoadFollower | None = None


def follow_load() -> None:
    """Re-size the threads to the load now (LoadFollower), when configure_threads sized them by the load;
    cheap enough to call every training or denoising step."""
    if _follower is not None:
        _follower()


def configure_threads(environ: Mapping[str, str] | None = None) -> str | None:
    """Choose this process's thread count (threads_per_job) and apply it (limit_threads): the one call
    every entry point makes before its torch work. When the load chose it, `follow_load` keeps following
    the load from here on. Returns a line to show when the policy, not the environment, held the process
    to fewer threads than CPUs (a user wondering why it is slow sees why); else None."""
    global _follower
    environ = os.environ if environ is None else environ
    threads, why = threads_per_job(environ)
    limit_threads(threads)
    _follower = None if why in (ENV, "OMP_NUM_THREADS") else LoadFollower(queue_jobs(environ, Path.cwd()))
    cpus = available_cpus()
    if threads >= cpus or why in (ENV, "OMP_NUM_THREADS"):
        return None
    return f"{threads} thread{'s' * (threads > 1)} of {cpus} CPUs ({why})"
