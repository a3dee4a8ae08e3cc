"""The validate stage: params are checked before DVC deletes any stage's outputs."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import HANG_GUARD_S, PREPARED_SEQ_LEN, PREPARED_SPLIT, REPO, repo_params

OUT = "data/params.valid"


def test_every_stage_depends_on_the_validate_stage_and_only_it_reads_params_yaml_whole():
    stages = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    assert next(iter(stages)) == "validate"
    assert "params.yaml" in stages["validate"]["deps"] and stages["validate"]["outs"] == [OUT]
    for name, stage in stages.items():
        if name != "validate":
            assert OUT in stage["deps"], name


def _dvc(repo: Path, *args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DVC_")}
    env.update(PYTHONPATH=str(repo), DMC_TRACKING="0", OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, "-m", "dvc", *args], cwd=repo, env=env, capture_output=True,
                          text=True, timeout=HANG_GUARD_S)


@pytest.mark.slow  # three `dvc repro`s: about 30 s on an idle 2-core machine
def test_a_params_typo_stops_dvc_repro_before_it_deletes_prepared_data_or_metrics(bach_midi_dir, tmp_path):
    repo = tmp_path / "repo"
    repo.mkdir()
    for folder in ("pipeline", "stages"):
        shutil.copytree(REPO / folder, repo / folder, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO / "dvc.yaml", repo)
    params = repo_params()
    params.update(dataset="folder", raw_dir=str(bach_midi_dir), seq_len=PREPARED_SEQ_LEN)
    params["prepare"].update(n_jobs=1, split=dict(zip(("train", "val", "test"), PREPARED_SPLIT, strict=True)))
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    assert _dvc(repo, "init", "--no-scm", "-q").returncode == 0
    done = _dvc(repo, "repro", "prepare")
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    kept = [repo / "data" / "manifest.json", repo / "data" / "prepared" / "segments.parquet",
            repo / "metrics" / "prepare.json"]
    before = [p.read_bytes() for p in kept]

    params["seq_len"] = -128
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    done = _dvc(repo, "repro", "prepare")
    assert done.returncode != 0
    assert "validate: error: params: 'seq_len' must be >= 8, got -128" in done.stderr + done.stdout
    assert [p.read_bytes() for p in kept] == before  # nothing deleted, nothing rewritten

    params["seq_len"] = PREPARED_SEQ_LEN  # fixed: validate re-runs, its unchanged output re-runs nothing
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    done = _dvc(repo, "repro", "prepare")
    assert done.returncode == 0, done.stderr[-2000:]
    assert "Stage 'prepare' didn't change, skipping" in done.stdout
