"""Run a command with every other python and dvc process on this machine paused (SIGSTOP), and resume
them (SIGCONT) when it ends, however it ends: a benchmark's "quiet machine" rows on a shared machine.

    python scripts/run_alone.py python benchmarks/contention_bench.py --against 3f7289e --repeats 2

Only for a machine you share with your own work: the paused processes lose the wall-clock time.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

PAUSE = (b"python", b"dvc", b"pytest")


def parent_of(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])


def family(root: int) -> set[int]:
    """`root` and every process below it."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                children.setdefault(parent_of(int(entry.name)), []).append(int(entry.name))
            except (OSError, ValueError, IndexError):
                continue
    found, todo = set(), [root]
    while todo:
        pid = todo.pop()
        found.add(pid)
        todo += children.get(pid, [])
    return found


def main() -> int:
    if len(sys.argv) < 2:
        sys.exit("usage: run_alone.py COMMAND [ARGS...]")
    ancestors, pid = set(), os.getpid()
    while pid > 1:
        ancestors.add(pid)
        pid = parent_of(pid)
    paused: set[int] = set()
    command = subprocess.Popen(sys.argv[1:])
    try:
        while command.poll() is None:
            ours = family(command.pid) | ancestors
            for entry in Path("/proc").iterdir():
                if not entry.name.isdigit() or int(entry.name) in ours | paused:
                    continue
                try:
                    cmdline = (entry / "cmdline").read_bytes()
                    if any(word in cmdline for word in PAUSE):
                        os.kill(int(entry.name), signal.SIGSTOP)
                        paused.add(int(entry.name))
                except OSError:
                    continue
            time.sleep(0.5)
    finally:
        for pid in paused:
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGCONT)
        print(f"run_alone: resumed {len(paused)} processes", file=sys.stderr)
    return command.returncode


if __name__ == "__main__":
    sys.exit(main())
