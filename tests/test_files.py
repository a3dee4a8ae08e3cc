"""pipeline.files: atomic writes, and the litter a killed writer leaves behind."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from conftest import HANG_GUARD_S, REPO

from pipeline.files import atomic_path, remove_stale_temps, write_json


def killed_during_write(target: Path) -> Path:
    """Start a process that is killed (SIGKILL) while atomic_path writes `target`; return its temp file."""
    code = ("import os, signal, sys\n"
            "from pipeline.files import atomic_path\n"
            "with atomic_path(sys.argv[1]) as tmp:\n"
            "    tmp.write_bytes(b'x' * 5_000_000)\n"
            "    os.kill(os.getpid(), signal.SIGKILL)\n")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    done = subprocess.run([sys.executable, "-c", code, str(target)], env=env, timeout=HANG_GUARD_S)
    assert done.returncode == -9
    [litter] = [p for p in target.parent.iterdir() if p.name.endswith(".tmp")]
    return litter


def test_the_next_write_into_a_folder_removes_a_killed_writers_temp(tmp_path):
    litter = killed_during_write(tmp_path / "last.pt")
    assert not (tmp_path / "last.pt").exists()
    write_json(tmp_path / "other.json", {"a": 1})
    assert not litter.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["other.json"]


def test_a_running_writers_temp_is_kept(tmp_path):
    with atomic_path(tmp_path / "big.bin") as tmp:
        tmp.write_bytes(b"partial")
        assert remove_stale_temps(tmp_path) == []
        assert tmp.exists()
    assert (tmp_path / "big.bin").read_bytes() == b"partial"


def test_stale_temp_folders_and_old_style_names_are_removed_but_other_files_kept(tmp_path):
    old_style = tmp_path / ".last.pt.k3j4h5g6.tmp"    # named before the writer's pid was part of it
    old_style.write_bytes(b"x")
    dead_folder = tmp_path / ".prepared.999999999-abcdefgh.tmp"  # above any pid_max: no such process
    dead_folder.mkdir()
    (dead_folder / "segments.parquet").write_bytes(b"x")
    kept = [tmp_path / "notes.tmp", tmp_path / ".cache.tmp", tmp_path / "last.pt"]
    for p in kept:
        p.write_bytes(b"x")
    assert sorted(remove_stale_temps(tmp_path)) == sorted([old_style, dead_folder])
    assert sorted(tmp_path.iterdir()) == sorted(kept)
