"""Shared fixtures. Everything here is real data: the music21 corpus and the MIDI files in its wheel.

Session-scoped fixtures other test files reuse:
- `bach_midi_dir`: a folder of 12 Bach chorales materialized as one-track piano MIDI (bwv*.mid).
- `prepared_dir`: a prepared-data folder (segments.parquet, stats.json, rejects.parquet) made from those
  chorales with seq_len 32 and a 0.5/0.25/0.25 split, so train, val and test all hold segments.
- `wheel_midi_files`: the small MIDI files inside the music21 wheel (testPrimitive/*.mid, k525short.mid).
- `repo_params()`: the repository's params.yaml as a dict, to copy and modify in tests.

Helpers: `HANG_GUARD_S`, the timeout for every subprocess a test waits on, and `copy_checkout(dest)`, the
working tree as a fresh clone would see it.
"""

from __future__ import annotations

import copy
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))  # tests/mido_oracle.py

PREPARED_SEQ_LEN = 32
PREPARED_SPLIT = (0.5, 0.25, 0.25)
N_CHORALES = 12

# A subprocess still running after this is hung, not slow. Tests never time the machine: a CI box or a
# laptop beside other work can be ten times slower than a quiet one, and speed is benchmarks/' business.
HANG_GUARD_S = 30 * 60


def checkout_files() -> list[str]:
    """The working tree's files as a fresh clone (plus uncommitted work) has them: tracked, and untracked
    but not ignored, except virtualenvs: `python3 -m venv v` inside a clone is neither."""
    listed = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=REPO, check=True,
                            capture_output=True, text=True).stdout.split("\0")
    venvs = {Path(rel).parent for rel in listed if Path(rel).name == "pyvenv.cfg"}
    return [rel for rel in listed if rel and (REPO / rel).is_file()
            and not any(parent in venvs for parent in Path(rel).parents)]


def copy_checkout(dest: Path) -> Path:
    """Copy `checkout_files()` to `dest`: no build/, egg-info, data or models a clone would not have."""
    for rel in checkout_files():
        (dest / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / rel, dest / rel)
    return dest


def pytest_configure(config: pytest.Config) -> None:
    # Tests run tiny models; on a 2-core box two intra-op threads fight each other and a forward pass
    # gets ~100x slower under load. One thread keeps every test fast, and the resume tests' bitwise
    # comparisons need the same thread count throughout the session.
    import torch

    torch.set_num_threads(1)
    # ... and the stages and `dmc` commands the tests run, in process or as subprocesses, keep to it
    # instead of sizing their threads from the machine's load (pipeline/threads.py).
    os.environ["DMC_THREADS"] = "1"


@pytest.fixture(autouse=True)
def _no_tracking(monkeypatch: pytest.MonkeyPatch) -> None:
    """Stages run in tests log nothing to MLflow; tests/test_tracking.py switches it back on."""
    monkeypatch.setenv("DMC_TRACKING", "0")


def repo_params() -> dict[str, Any]:
    """A fresh, validated copy of the repository's params.yaml."""
    from pipeline.params import load_params

    return copy.deepcopy(load_params(REPO / "params.yaml"))


@pytest.fixture(scope="session")
def wheel_midi_files() -> list[Path]:
    """The MIDI files that ship inside the music21 wheel."""
    import music21

    root = Path(music21.__file__).parent
    files = sorted((root / "midi" / "testPrimitive").glob("test*.mid")) + [root / "omr" / "k525short.mid"]
    assert len(files) > 20
    return files


@pytest.fixture(scope="session")
def bach_midi_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """12 Bach chorales from the music21 corpus as one-track program-0 MIDI files (about 5 s)."""
    from pipeline.data.datasets import bach

    dest = tmp_path_factory.mktemp("bach")
    params = repo_params()
    params["prepare"]["n_jobs"] = 1
    bach.fetch(dest, params, limit=N_CHORALES)
    return dest


@pytest.fixture(scope="session")
def prepared_dir(bach_midi_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A prepared folder from `bach_midi_dir`: seq_len 32, every split non-empty. Read it with
    `pipeline.data.prepared.load_split / load_pitches / load_stats`."""
    from pipeline.data.prepared import write_prepared
    from pipeline.data.segments import PrepareConfig

    out = tmp_path_factory.mktemp("prepared") / "prepared"
    files = sorted(p.name for p in bach_midi_dir.glob("*.mid"))
    config = PrepareConfig(seq_len=PREPARED_SEQ_LEN, split=PREPARED_SPLIT)
    summary = write_prepared(out, "bach", bach_midi_dir, files, config, n_jobs=1)
    assert all(summary["segments"][s] > 0 for s in ("train", "val", "test")), summary
    return out


@pytest.fixture()
def in_tmp_repo(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A temp working directory with the repo's params.yaml, for running stages against."""
    (tmp_path / "params.yaml").write_text((REPO / "params.yaml").read_text())
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PYTHONPATH", str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return tmp_path


SATB = ("soprano", "alto", "tenor", "bass")


@pytest.fixture(scope="session")
def satb_project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A four-voice project folder: 10 chorales of `bach-satb` under data/raw/bach-satb, its
    data/manifest.json, data/prepared (seq_len 32; 5/3/2 files in train/val/test) and models/model.pt, a
    randomly initialised tiny U-Net of four rows on a 20-step schedule (the harmonization tests' model)."""
    import dataclasses
    import json

    import torch

    from pipeline.data.datasets import bach_satb, write_manifest
    from pipeline.data.prepared import write_prepared
    from pipeline.data.segments import PrepareConfig
    from pipeline.model.unet import PRESETS, UNet

    root = tmp_path_factory.mktemp("satb-project")
    params = repo_params()
    params["prepare"]["n_jobs"] = 1
    raw = bach_satb.fetch(root / "data" / "raw" / "bach-satb", params, limit=10)
    mp = pytest.MonkeyPatch()
    mp.chdir(root)  # the manifest records the root relative to the project, as the download stage does
    try:
        write_manifest(Path("data/manifest.json"), "bach-satb", raw)
    finally:
        mp.undo()
    files = sorted(p.name for p in raw.glob("*.mid"))
    summary = write_prepared(root / "data" / "prepared", "bach-satb", raw, files, PrepareConfig(
        seq_len=PREPARED_SEQ_LEN, split=(0.5, 0.2, 0.3), instruments=SATB, min_instruments=4), n_jobs=1)
    assert all(summary["segments"][s] > 0 for s in ("train", "val", "test")), summary
    torch.manual_seed(0)
    config = PRESETS["tiny"]
    stats = json.loads((root / "data" / "prepared" / "stats.json").read_text())
    (root / "models").mkdir()
    from pipeline.model.checkpoints import write_checkpoint

    write_checkpoint(root / "models" / "model.pt", {
        "config": dataclasses.asdict(config), "ema": UNet(config).state_dict(), "stats": stats,
        "diffusion": {"timesteps": 20, "beta_start": 1e-4, "beta_end": 0.02}, "step": 0})
    return root
