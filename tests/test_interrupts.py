"""Ctrl-C or SIGTERM while a stage or a `dmc` command still imports (torch, MLflow: seconds) is one line
and exit 130 or 143, as it is later on: no traceback, no silent death.

Each test holds the real entry point (`python -m stages.NAME`, `python -m pipeline.cli`) at a chosen
import (tests/hold_import.py), so the signal lands there every time, not by timing.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import HANG_GUARD_S
from hold_import import hold_env, wait_held

REPO = Path(__file__).resolve().parents[1]
STAGES = sorted(p.stem for p in (REPO / "stages").glob("*.py") if p.stem != "__init__")
SIGNALS = pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])


def held(tmp_path: Path, args: list[str], where: str, sigint: object = signal.SIG_DFL) -> subprocess.Popen:
    """`python ARGS`, started and now held at the first import made in `where` (FILE:FUNCTION)."""
    env = hold_env({**os.environ, "PYTHONPATH": str(REPO), "DMC_TRACKING": "0"}, tmp_path / "hook", where,
                   HANG_GUARD_S)
    # Ctrl-C as a terminal delivers it: a process started in the background inherits it as ignored.
    proc = subprocess.Popen([sys.executable, *args], cwd=tmp_path, env=env, text=True, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, preexec_fn=lambda: signal.signal(signal.SIGINT, sigint))
    assert wait_held(proc), proc.communicate(timeout=HANG_GUARD_S)
    return proc


def interrupt(proc: subprocess.Popen, signum: int) -> str:
    proc.send_signal(signum)
    return proc.communicate(timeout=HANG_GUARD_S)[1]


@SIGNALS
@pytest.mark.parametrize("stage", STAGES)
def test_a_signal_while_a_stage_imports_is_one_line_and_exit_128_plus_the_signal(tmp_path, stage, signum):
    proc = held(tmp_path, ["-m", f"stages.{stage}"], f"{REPO / 'stages' / stage}.py:<module>")
    err = interrupt(proc, signum)
    said = "interrupted (SIGTERM)" if signum == signal.SIGTERM else "interrupted"
    assert (proc.returncode, err) == (128 + signum, f"{stage}: {said}\n")


@SIGNALS
def test_a_signal_while_a_dmc_command_imports_is_one_line_and_exit_128_plus_the_signal(tmp_path, signum):
    proc = held(tmp_path, ["-m", "pipeline.cli", "generate", "out"], f"{REPO / 'pipeline' / 'cli.py'}:main")
    err = interrupt(proc, signum)
    said = "interrupted (SIGTERM)" if signum == signal.SIGTERM else "interrupted"
    assert (proc.returncode, err) == (128 + signum, f"dmc: {said}\n")
    assert not (tmp_path / "out").exists()


def test_a_stage_started_with_ctrl_c_ignored_keeps_ignoring_it_while_it_imports(tmp_path):
    proc = held(tmp_path, ["-m", "stages.train"], f"{REPO / 'stages' / 'train.py'}:<module>", signal.SIG_IGN)
    proc.send_signal(signal.SIGINT)
    time.sleep(0.5)
    assert proc.poll() is None
    assert (interrupt(proc, signal.SIGTERM), proc.returncode) == ("train: interrupted (SIGTERM)\n", 143)


def test_importing_the_stages_package_elsewhere_leaves_the_signal_handlers_alone():
    code = ("import signal, stages\n"
            "print(signal.getsignal(signal.SIGINT) is signal.default_int_handler,"
            " signal.getsignal(signal.SIGTERM) is signal.SIG_DFL)\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=HANG_GUARD_S,
                          env={**os.environ, "PYTHONPATH": str(REPO)})
    assert done.stdout == "True True\n", done.stderr
