"""The whole pipeline from a fresh copy of the repository: `dvc repro`, `dvc exp run -S lr=1e-6`, then
the MLflow record of both, read from the SQLite store and through a running `mlflow server`.

It proves that the stages connect and are recorded, not that the model learns: the least work that does
(12 chorales as a `folder` dataset, 4 steps of the tiny preset, 2 pieces of 32 notes, no audio, one
thread) keeps it to a few minutes, and no step has a deadline, only a hang guard.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import yaml
from conftest import HANG_GUARD_S, copy_checkout

REPO = Path(__file__).resolve().parents[1]
N_CHORALES = 12

pytestmark = pytest.mark.slow

# Overrides of params.yaml: the least work in which every split and stage has data, the loss has two
# points and validation runs.
TINY = {
    "dataset": "folder", "preset": "tiny", "steps": 4, "batch_size": 8, "seq_len": 32,
    "prepare": {"n_jobs": 1, "split": {"train": 0.5, "val": 0.25, "test": 0.25}},
    "train": {"val_every": 2, "checkpoint_every": 2},
    "diffusion": {"timesteps": 20},
    "sample": {"n": 2, "steps": 2, "length": 32, "audio": ""},
    "evaluate": {"n_baseline": 4, "frame_beats": 4.0, "hop_beats": 2.0},
}


def merge(base: dict, over: dict) -> dict:
    return {k: merge(base[k], v) if isinstance(v, dict) else v for k, v in over.items()} | \
        {k: v for k, v in base.items() if k not in over}


def fresh_copy(dest: Path) -> Path:
    """The working tree as a clone would see it (tracked and untracked, not ignored), committed."""
    copy_checkout(dest)
    git = ["git", "-c", "user.name=ci", "-c", "user.email=ci@example.com"]
    subprocess.run([*git, "init", "-q"], cwd=dest, check=True)
    subprocess.run([*git, "add", "-A"], cwd=dest, check=True)
    subprocess.run([*git, "commit", "-q", "-m", "fresh clone"], cwd=dest, check=True)
    return dest


def sh(args: list[str], cwd: Path, env: dict[str, str]) -> str:
    done = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=HANG_GUARD_S)
    assert done.returncode == 0, f"{' '.join(args)} failed:\n{done.stdout[-4000:]}\n{done.stderr[-4000:]}"
    return done.stdout


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def pipeline_runs(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Run `dvc repro` then `dvc exp run -S lr=1e-6` in a fresh copy; return paths and timings."""
    from pipeline.data.datasets import bach
    from pipeline.params import load_params

    chorales = tmp_path_factory.mktemp("chorales")
    params = load_params(REPO / "params.yaml")
    bach.fetch(chorales, merge(params, {"prepare": {"n_jobs": 1}}), limit=N_CHORALES)
    repo = fresh_copy(tmp_path_factory.mktemp("clone"))
    tiny = merge(params, {**TINY, "raw_dir": str(chorales)})
    (repo / "params.yaml").write_text(yaml.safe_dump(tiny, sort_keys=False))
    sh(["git", "-c", "user.name=ci", "-c", "user.email=ci@example.com", "commit", "-qam", "tiny"], repo,
       os.environ.copy())
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("DVC_", "MLFLOW_")) and k not in ("DMC_TRACKING", "RANK")}
    # dvc.yaml's `python -m stages.x` must be this interpreter (a venv's, whether or not it is activated),
    # on one thread: two would fight each other and any other work on a small machine.
    env.update(PYTHONPATH=str(repo), PATH=os.pathsep.join([str(Path(sys.executable).parent), env["PATH"]]),
               DMC_THREADS="1", OMP_NUM_THREADS="1")
    times = {}
    start = time.perf_counter()
    sh([sys.executable, "-m", "dvc", "repro"], repo, env)
    times["repro"] = time.perf_counter() - start
    first_lock = yaml.safe_load((repo / "dvc.lock").read_text())
    start = time.perf_counter()
    sh([sys.executable, "-m", "dvc", "exp", "run", "-S", "lr=1e-6"], repo, env)
    times["exp"] = time.perf_counter() - start
    print(f"e2e timings: dvc repro {times['repro']:.0f} s, dvc exp run {times['exp']:.0f} s")
    return {"repo": repo, "env": env, "first_lock": first_lock}


def lock_md5(lock: dict, stage: str, path: str) -> str:
    return next(o["md5"] for o in lock["stages"][stage]["outs"] if o["path"] == path)


def test_both_runs_are_recorded_with_params_metrics_data_and_artifacts(pipeline_runs):
    from mlflow.tracking import MlflowClient

    repo = pipeline_runs["repo"]
    client = MlflowClient(f"sqlite:///{repo / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("dmc")
    runs = client.search_runs([experiment.experiment_id])
    parents = sorted((r for r in runs if "mlflow.parentRunId" not in r.data.tags),
                     key=lambda r: r.info.start_time)
    assert [p.data.params["lr"] for p in parents] == ["0.001", "1e-06"]
    repro, exp = parents
    assert exp.data.tags["dvc.exp_name"] == exp.info.run_name and exp.data.tags["dvc.baseline_rev"]
    stages_of = {p.info.run_id: [r.info.run_name for r in sorted(runs, key=lambda r: r.info.start_time)
                                 if r.data.tags.get("mlflow.parentRunId") == p.info.run_id] for p in parents}
    assert stages_of[repro.info.run_id] == ["download", "prepare", "train", "sample", "evaluate"]
    # The experiment changed lr only: prepare's outputs were cached, so it ran no prepare.
    assert stages_of[exp.info.run_id] == ["download", "train", "sample", "evaluate"]
    prepared = lock_md5(pipeline_runs["first_lock"], "prepare", "data/prepared")
    for parent in parents:
        assert parent.info.status == "FINISHED"
        assert parent.data.params["dataset"] == parent.data.tags["dataset"] == "folder"
        assert parent.data.tags["mlflow.source.git.commit"] and parent.data.tags["dmc.version.torch"]
        losses = client.get_metric_history(parent.info.run_id, "train_loss")
        assert len(losses) >= 2 and len({m.step for m in losses}) == len(losses)
        assert "val_loss" in parent.data.metrics
        assert {"oa", "oa_markov", "oa_real", "scale", "chord"} <= set(parent.data.metrics)  # PARENT_METRICS
        assert [d.dataset.digest for d in parent.inputs.dataset_inputs] == [prepared]
        assert "gallery.html" in [a.path for a in client.list_artifacts(parent.info.run_id)]
    assert "segments" in repro.data.metrics
    sample = next(r for r in runs if r.info.run_name == "sample"
                  and r.data.tags["mlflow.parentRunId"] == repro.info.run_id)
    logged = [a.path for a in client.list_artifacts(sample.info.run_id, "samples")]
    assert any(p.endswith(".mid") for p in logged) and any(p.endswith(".png") for p in logged)
    train = next(r for r in runs if r.info.run_name == "train"
                 and r.data.tags["mlflow.parentRunId"] == exp.info.run_id)
    import mlflow.pytorch

    mlflow.set_tracking_uri(f"sqlite:///{repo / 'mlflow.db'}")
    model = mlflow.pytorch.load_model(f"runs:/{train.info.run_id}/model")
    assert sum(p.numel() for p in model.parameters()) > 0


def test_dvc_metrics_show_and_plots_show_read_every_stage_output(pipeline_runs):
    repo, env = pipeline_runs["repo"], pipeline_runs["env"]
    shown = next(iter(json.loads(sh([sys.executable, "-m", "dvc", "metrics", "show", "--json"], repo, env))
                      .values()))["data"]
    for stage in ("prepare", "train", "sample", "evaluate"):
        assert shown[f"metrics/{stage}.json"]["data"], stage
    plots = json.loads(sh([sys.executable, "-m", "dvc", "plots", "show", "--json"], repo, env))
    assert not plots.get("errors"), plots["errors"]
    assert "Training and validation loss" in plots["data"]


def test_mlflow_server_lists_both_runs_over_rest(pipeline_runs):
    repo, env = pipeline_runs["repo"], pipeline_runs["env"]
    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port",
                               str(port), "--workers", "1", "--backend-store-uri",
                               f"sqlite:///{repo / 'mlflow.db'}"],
                              cwd=repo, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                              start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + HANG_GUARD_S
        while True:
            try:
                with urllib.request.urlopen(f"{base}/health", timeout=5):
                    break
            except OSError:
                assert server.poll() is None and time.monotonic() < deadline, "mlflow server did not start"
                time.sleep(1)

        def call(path: str, body: dict) -> dict:
            request = urllib.request.Request(f"{base}{path}", data=json.dumps(body).encode(),
                                             headers={"Content-Type": "application/json"})
            with urllib.request.urlopen(request, timeout=HANG_GUARD_S) as response:
                return json.loads(response.read())

        with urllib.request.urlopen(f"{base}/api/2.0/mlflow/experiments/get-by-name?experiment_name=dmc",
                                    timeout=HANG_GUARD_S) as response:
            experiment_id = json.loads(response.read())["experiment"]["experiment_id"]
        found = call("/api/2.0/mlflow/runs/search", {"experiment_ids": [experiment_id], "max_results": 100})
        parents = [r for r in found["runs"]
                   if not any(t["key"] == "mlflow.parentRunId" for t in r["data"].get("tags", []))]
        lrs = sorted(p["value"] for r in parents for p in r["data"]["params"] if p["key"] == "lr")
        assert lrs == ["0.001", "1e-06"]
    finally:
        os.killpg(server.pid, 15)
        server.wait(timeout=HANG_GUARD_S)
