"""MLflow tracking: the store's location, grouping of one execution's stages, what each stage records.

Every test records into its own SQLite store, copied from one migrated at session start (creating the
MLflow schema takes seconds).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import wave
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest
from conftest import HANG_GUARD_S

from pipeline.errors import DmcError
from pipeline.record import execution, store, tracking

REPO = Path(__file__).resolve().parents[1]

# A dvc.yaml shaped like the project's, reduced to what tracking reads.
DVC_YAML = """
stages:
  download:
    cmd: python -m stages.download
    outs: [data/manifest.json]
  prepare:
    cmd: python -m stages.prepare
    deps: [data/manifest.json]
    outs: [data/prepared]
    metrics: [{metrics/prepare.json: {cache: false}}]
  train:
    cmd: python -m stages.train
    deps: [data/prepared]
    outs: [models/model.pt]
    metrics: [{metrics/train.json: {cache: false}}]
    plots: [{metrics/train_loss.csv: {cache: false}}, {metrics/val_loss.csv: {cache: false}}]
  sample:
    cmd: python -m stages.sample
    deps: [models/model.pt]
    outs: [samples]
"""


@pytest.fixture(scope="session")
def template_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from mlflow.tracking import MlflowClient

    path = tmp_path_factory.mktemp("store") / "mlflow.db"
    MlflowClient(f"sqlite:///{path}").search_experiments()
    return path


@pytest.fixture()
def repo(tmp_path: Path, template_db: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A working copy (params.yaml, dvc.yaml, data files) with an empty store at its root; cwd = it."""
    shutil.copy(template_db, tmp_path / "mlflow.db")
    (tmp_path / "params.yaml").write_text((REPO / "params.yaml").read_text())
    (tmp_path / "dvc.yaml").write_text(DVC_YAML)
    for folder in ("pipeline", "stages"):
        shutil.copytree(REPO / folder, tmp_path / folder, ignore=shutil.ignore_patterns("__pycache__"))
    (tmp_path / "data/prepared").mkdir(parents=True)
    (tmp_path / "data/manifest.json").write_text('{"dataset": "bach", "files": []}\n')
    (tmp_path / "data/prepared/segments.parquet").write_bytes(b"segments")
    (tmp_path / "data/prepared/stats.json").write_text("{}")
    (tmp_path / "metrics").mkdir()
    (tmp_path / "metrics/prepare.json").write_text(json.dumps({"files": 12, "segments": {"train": 40},
                                                               "seconds": 0.5}))
    for name in ("DVC_ROOT", "DVC_EXP_NAME", "DVC_EXP_BASELINE_REV", "MLFLOW_TRACKING_URI", "RANK",
                 "DMC_TRACKING", "MLFLOW_EXPERIMENT_NAME"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def client_for(root: Path):
    from mlflow.tracking import MlflowClient

    return MlflowClient(f"sqlite:///{root / 'mlflow.db'}")


def runs(root: Path) -> list:
    client = client_for(root)
    experiment = client.get_experiment_by_name("dmc")
    return [] if experiment is None else client.search_runs([experiment.experiment_id])


def parents(root: Path) -> list:
    return [r for r in runs(root) if "mlflow.parentRunId" not in r.data.tags]


def children(root: Path, parent_id: str) -> list:
    return sorted((r for r in runs(root) if r.data.tags.get("mlflow.parentRunId") == parent_id),
                  key=lambda r: r.info.start_time)


def test_store_is_sqlite_at_dvc_root_even_from_an_experiment_temp_copy(tmp_path, monkeypatch):
    copy = tmp_path / ".dvc/tmp/exps/standalone/tmpabc"
    copy.mkdir(parents=True)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("DVC_ROOT", str(tmp_path))
    assert store.repo_root(copy) == tmp_path.resolve()
    assert store.tracking_uri(store.repo_root(copy)) == f"sqlite:///{tmp_path.resolve()}/mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5000")
    assert store.tracking_uri(tmp_path) == "http://127.0.0.1:5000"
    monkeypatch.delenv("DVC_ROOT")
    assert store.repo_root(copy) == copy.resolve()


def test_importing_the_stage_wrapper_and_tracking_touches_no_store(tmp_path):
    code = "import sys, stages, pipeline.record.tracking; print('mlflow' in sys.modules)"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    done = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=HANG_GUARD_S)
    assert done.stdout.strip() == "False", done.stderr
    assert list(tmp_path.iterdir()) == []


def test_tracking_is_off_on_request_and_on_every_torchrun_rank_but_zero(monkeypatch):
    monkeypatch.delenv("DMC_TRACKING", raising=False)
    monkeypatch.setenv("RANK", "0")
    assert store.enabled()
    monkeypatch.setenv("RANK", "1")
    assert not store.enabled()
    monkeypatch.delenv("RANK")
    monkeypatch.setenv("DMC_TRACKING", "off")
    assert not store.enabled()


def test_stage_is_a_child_run_under_a_parent_with_params_tags_metrics_and_raw_data_digest(repo, monkeypatch):
    monkeypatch.setenv("DVC_EXP_NAME", "brisk-oboe")
    monkeypatch.setenv("DVC_EXP_BASELINE_REV", "a" * 40)
    with tracking.track_stage("prepare"):
        pass
    (parent,) = parents(repo)
    (child,) = children(repo, parent.info.run_id)
    assert parent.info.run_name == "brisk-oboe" and child.info.run_name == "prepare"
    assert parent.info.status == child.info.status == "FINISHED"
    for run in (parent, child):
        assert run.data.params["lr"] == "0.001" and run.data.params["dataset"] == "bach"
        assert run.data.params["prepare.split.train"] == "0.8"
        assert run.data.tags["dataset"] == "bach" and run.data.tags["preset"] == "tiny"
        assert run.data.tags["dvc.exp_name"] == "brisk-oboe" and run.data.tags["dvc.baseline_rev"] == "a" * 40
        assert run.data.tags["dmc.version.torch"] and run.data.tags["dmc.version.dvc"]
    # The child holds the stage's numbers by their full names; the row a short copy and the wall time.
    assert child.data.metrics == {"prepare.files": 12, "prepare.segments.train": 40, "prepare.seconds": 0.5}
    assert set(parent.data.metrics) == {"segments", "seconds.prepare"}
    assert parent.data.metrics["segments"] == 40
    assert parent.data.tags["dmc.run"] == "execution" and child.data.tags["dmc.run"] == "stage"
    assert child.data.tags["dmc.stage"] == "prepare"
    (data,) = child.inputs.dataset_inputs
    assert data.dataset.name == "bach-raw" and [t.value for t in data.tags] == ["source"]
    assert data.dataset.digest == execution.dvc_md5(repo / "data/manifest.json")
    artifacts = [a.path for a in client_for(repo).list_artifacts(child.info.run_id, "metrics")]
    assert artifacts == ["metrics/prepare.json"]
    assert (repo / "mlartifacts").is_dir()


def test_experiment_is_a_model_training_one_with_a_saved_view_of_the_parents(repo):
    with tracking.track_stage("prepare"):
        pass
    client = client_for(repo)
    experiment = client.get_experiment_by_name("dmc")
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"
    view = json.loads(experiment.tags[f"mlflow.sharedViewState.{tracking.VIEW_KEY}"])
    assert "attributes.`Dataset`" in view["selectedColumns"]
    assert "metrics.`oa`" in view["selectedColumns"]
    # The view's filter, run through MLflow's own search, keeps the parent and drops its stage child.
    found = client.search_runs([experiment.experiment_id], filter_string=view["searchFilter"])
    assert [r.info.run_id for r in found] == [r.info.run_id for r in parents(repo)] and len(runs(repo)) == 2
    url = tracking.runs_view_url(experiment.experiment_id)
    assert url == (f"http://127.0.0.1:5000/#/experiments/{experiment.experiment_id}/runs"
                   "?viewStateShareKey=dmc-runs&workflowType=machine_learning")


def test_an_older_experiment_gets_the_kind_and_view_but_a_chosen_kind_is_kept(repo):
    client = client_for(repo)
    old = client.create_experiment("dmc")
    with tracking.track_stage("prepare"):
        pass
    tags = client.get_experiment(old).tags
    assert tags["mlflow.experimentKind"] == "custom_model_development" and tracking.VIEW_TAG in tags
    client.set_experiment_tag(old, "mlflow.experimentKind", "finetuning")
    with tracking.track_stage("download"):
        pass
    assert client.get_experiment(old).tags["mlflow.experimentKind"] == "finetuning"


def test_the_row_gets_short_rounded_copies_of_the_headline_numbers_and_skips_the_rest():
    values = {"evaluate.generated.oa_mean": 0.61872385, "evaluate.markov.oa_mean": 0.7647013,
              "evaluate.generated.scale_consistency.mean": 0.63538,
              "evaluate.generated.chord_fraction": 0.064039,
              "evaluate.generated.oa.pitch_count": 0.9, "train.loss": 0.141873, "train.val_loss": 0.156}
    assert tracking.parent_metrics(values) == {"oa": 0.6187, "oa_markov": 0.7647, "scale": 0.6354,
                                               "chord": 0.06404, "train_loss_mean100": 0.1419}
    # Each short name stands for one full name, and no short name is also a full one.
    assert len(set(tracking.PARENT_METRICS.values())) == len(tracking.PARENT_METRICS)
    assert not set(tracking.PARENT_METRICS) & set(tracking.PARENT_METRICS.values())


def test_train_records_per_step_losses_the_prepared_data_and_a_loadable_model(repo):
    import mlflow.pytorch
    import torch

    from pipeline.model.unet import UNet, get_config

    config = get_config("tiny")
    model = UNet(config)
    (repo / "models").mkdir()
    diffusion = {"timesteps": 10, "beta_start": 1e-4, "beta_end": 0.02}
    from pipeline.model.checkpoints import write_checkpoint

    write_checkpoint(repo / "models/model.pt", {"config": asdict(config), "ema": model.state_dict(),
                                                "stats": {}, "step": 3, "diffusion": diffusion})
    (repo / "metrics/train.json").write_text(json.dumps({"loss": 0.25, "steps_per_s": 3.5, "device": "cpu"}))
    (repo / "metrics/train_loss.csv").write_text("step,loss\n1,0.9\n2,0.5\n3,0.25\n")
    (repo / "metrics/val_loss.csv").write_text("step,loss\n3,0.3\n")
    with tracking.track_stage("train"):
        pass
    (parent,) = parents(repo)
    (child,) = children(repo, parent.info.run_id)
    client = client_for(repo)
    history = client.get_metric_history(parent.info.run_id, "train_loss")
    points = [(m.step, m.value) for m in sorted(history, key=lambda m: m.step)]
    assert points == [(1, 0.9), (2, 0.5), (3, 0.25)]
    # One name per number: the row has the curves and the mean of the last 100 steps, named for what
    # it is; the child has train.json's numbers by their full names, and no curve.
    assert parent.data.metrics == {"train_loss": 0.25, "val_loss": 0.3, "train_loss_mean100": 0.25,
                                   "seconds.train": parent.data.metrics["seconds.train"]}
    assert child.data.metrics == {"train.loss": 0.25, "train.steps_per_s": 3.5}
    assert not client.get_metric_history(child.info.run_id, "train_loss")
    # The row links the model its train child logged, and the model carries code, not shipped weights.
    (output,) = parent.outputs.model_outputs
    logged = client.get_logged_model(output.model_id)
    assert logged.source_run_id == child.info.run_id
    files = [a.path for a in client.list_logged_model_artifacts(logged.model_id, "code/pipeline")]
    assert "code/pipeline/model" in files and not any("weights" in f for f in files)
    model_code = client.list_logged_model_artifacts(logged.model_id, "code/pipeline/model")
    assert "code/pipeline/model/unet.py" in [a.path for a in model_code]
    prepared = execution.dvc_md5(repo / "data/prepared")
    for run in (child, parent):  # one context for the prepared data wherever it is an input
        assert [(d.dataset.digest, [t.value for t in d.tags]) for d in run.inputs.dataset_inputs] == \
            [(prepared, ["training"])]
    assert parent.data.tags["dmc.data.prepared"] == prepared
    mlflow.set_tracking_uri(f"sqlite:///{repo / 'mlflow.db'}")
    loaded = mlflow.pytorch.load_model(f"runs:/{child.info.run_id}/model")
    x, t = torch.randn(1, 3, 1, 32), torch.tensor([5])
    with torch.no_grad():
        assert torch.equal(loaded(x, t), model.eval()(x, t))


def write_samples(folder: Path, n: int = 2) -> None:
    from pipeline.data.midi import TrackNotes, write_midi
    from pipeline.render.plots import write_piano_roll

    folder.mkdir()
    for i in range(n):
        track = TrackNotes(pitch=np.array([60, 64, 67]), onset=np.array([0.0, 1.0, 2.0]),
                           duration=np.array([1.0, 1.0, 2.0]))
        write_midi(folder / f"sample_{i:03d}.mid", [track])
        write_piano_roll(folder / f"sample_{i:03d}.png", [track], title=f"sample_{i:03d}")
        with wave.open(str(folder / f"sample_{i:03d}.wav"), "wb") as w:
            w.setnchannels(2)
            w.setsampwidth(2)
            w.setframerate(44100)
            w.writeframes(np.zeros((44100, 2), dtype="<i2").tobytes())


def test_sample_stage_logs_the_samples_and_a_self_contained_gallery_on_the_parent(repo):
    write_samples(repo / "samples")
    with tracking.track_stage("sample"):
        pass
    (parent,) = parents(repo)
    (child,) = children(repo, parent.info.run_id)
    client = client_for(repo)
    logged = {a.path for a in client.list_artifacts(child.info.run_id, "samples")}
    assert {"samples/sample_000.mid", "samples/sample_000.wav", "samples/sample_001.png"} <= logged
    page = Path(client.download_artifacts(parent.info.run_id, "gallery.html", str(repo / "download")))
    text = page.read_text()
    assert text.count("data:image/png;base64,") == 2 and text.count("data:audio/midi;base64,") == 2
    assert text.count("<audio controls") == 2 and 'src="samples/' not in text
    # Where the viewer blocks the MIDI download, the page names the run that holds the files.
    assert f"sample ({child.info.run_id[:8]})" in text
    # The players load the clip's length up front, and the caption says what they play.
    assert text.count('preload="metadata"') == 2 and "<small>the whole piece, 1 s</small>" in text


def test_gallery_caption_says_the_clip_length_and_the_whole_pieces_length(tmp_path):
    from pipeline.record import gallery
    from pipeline.render import audio

    write_samples(tmp_path / "samples", n=1)
    with wave.open(str(tmp_path / "samples/sample_000.wav"), "wb") as w:  # 95 s, longer than a preview
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(8000)
        w.writeframes(np.zeros(95 * 8000, dtype="<i2").tobytes())
    text = gallery.write_gallery(tmp_path / "samples", tmp_path / "gallery.html").read_text()
    assert f"<small>the first {audio.PREVIEW_SECONDS:.0f} s of 1:35; the whole piece is " \
        "samples/sample_000.wav</small>" in text


def test_stages_dvc_skipped_keep_the_grouping_and_a_rerun_starts_a_new_parent(repo):
    write_samples(repo / "samples", n=1)
    with tracking.track_stage("prepare"):
        pass
    with tracking.track_stage("sample"):  # train skipped: its outputs were cached
        pass
    (first,) = parents(repo)
    assert [r.info.run_name for r in children(repo, first.info.run_id)] == ["prepare", "sample"]
    assert first.data.tags["dmc.stages"] == "prepare,sample"
    with tracking.track_stage("prepare"):  # the same params and code again: another execution
        pass
    assert len(parents(repo)) == 2


def test_download_rescan_of_unchanged_files_joins_the_last_parent(repo):
    with tracking.track_stage("download"):
        pass
    with tracking.track_stage("prepare"):
        pass
    with tracking.track_stage("download"):  # `always_changed`: every dvc repro runs it
        pass
    (parent,) = parents(repo)
    names = [r.info.run_name for r in children(repo, parent.info.run_id)]
    assert names == ["download", "prepare", "download"]
    (repo / "data/manifest.json").write_text('{"dataset": "bach", "files": ["new.mid"]}\n')
    with tracking.track_stage("download"):
        pass
    assert len(parents(repo)) == 2


def test_experiments_and_changed_params_or_code_get_their_own_parent(repo, monkeypatch):
    for name in ("exp-a", "exp-b"):
        monkeypatch.setenv("DVC_EXP_NAME", name)
        with tracking.track_stage("prepare"):
            pass
    monkeypatch.delenv("DVC_EXP_NAME")
    with tracking.track_stage("prepare"):
        pass
    (repo / "params.yaml").write_text((repo / "params.yaml").read_text().replace("lr: 1.0e-3", "lr: 1.0e-6"))
    with tracking.track_stage("download"):
        pass
    (repo / "stages/train.py").write_text("# changed\n")
    with tracking.track_stage("download"):
        pass
    found = parents(repo)
    assert len(found) == 5
    assert sorted(r.data.params["lr"] for r in found) == ["0.001"] * 3 + ["1e-06"] * 2


def test_failed_stage_is_recorded_as_failed_and_its_error_still_raised(repo):
    with pytest.raises(DmcError, match="boom"), tracking.track_stage("prepare"):
        raise DmcError("boom")
    (parent,) = parents(repo)
    (child,) = children(repo, parent.info.run_id)
    assert child.info.status == parent.info.status == "FAILED"
    assert "prepare.files" not in child.data.metrics


def test_stage_wrapper_prints_one_line_and_exits_2_on_a_bad_param_and_records_the_failure(repo):
    (repo / "params.yaml").write_text((repo / "params.yaml").read_text().replace("lr: 1.0e-3", "lr: -1"))
    env = {**os.environ, "PYTHONPATH": str(repo)}
    code = "from stages import run; from pipeline.params import load_params; run('prepare', load_params)"
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                          timeout=HANG_GUARD_S)
    assert done.returncode == 2
    assert done.stderr.strip() == "prepare: error: params: 'lr' must be > 0, got -1"
    (child,) = [r for r in runs(repo) if r.info.run_name == "prepare"]
    assert child.info.status == "FAILED" and child.data.params["lr"] == "-1"


def test_store_that_cannot_record_a_finished_stage_is_one_line_error(repo, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "nosuchscheme://store")
    with pytest.raises(DmcError, match=r"^tracking: could not record stage prepare: "), \
            tracking.track_stage("prepare"):
        pass


def test_outputs_that_cannot_be_recorded_fail_the_stage_and_mark_its_run_failed(repo):
    (repo / "models").mkdir()
    (repo / "models/model.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(DmcError, match="not a readable checkpoint"), tracking.track_stage("train"):
        pass
    (parent,) = parents(repo)
    (child,) = children(repo, parent.info.run_id)
    assert child.info.status == parent.info.status == "FAILED"


def running(root: Path) -> list:
    return [r for r in runs(root) if r.info.status == "RUNNING"]


def test_a_stage_interrupted_while_it_records_ends_its_runs_killed(repo, monkeypatch):
    # The campaign's case: SIGTERM a few seconds after train's summary line, while MLflow logs.
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    tracking.log_stage("prepare")
    monkeypatch.setattr(tracking, "_log_outputs", interrupted)
    with pytest.raises(KeyboardInterrupt), tracking.track_stage("train"):
        pass
    (parent,) = parents(repo)
    assert [(c.info.run_name, c.info.status) for c in children(repo, parent.info.run_id)] == [
        ("prepare", "FINISHED"), ("train", "KILLED")]
    assert parent.info.status == "KILLED" and not running(repo)


STAGE = """
import sys, time
from stages import run

def main():
    print("started", flush=True)
    time.sleep(120)

run("train", main)
"""


def test_sigterm_to_a_stage_is_one_line_exit_143_and_leaves_no_running_run(repo):
    import signal

    env = {**os.environ, "PYTHONPATH": str(repo)}
    proc = subprocess.Popen([sys.executable, "-c", STAGE], cwd=repo, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    assert proc.stdout.readline() == "started\n"
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143 and err == "train: interrupted (SIGTERM)\n", err
    (parent,) = parents(repo)
    (child,) = children(repo, parent.info.run_id)
    assert child.info.status == parent.info.status == "KILLED" and not running(repo)


LOADED = """
import sys
from stages import run

def main():
    print([name for name in ("mlflow", "pandas") if name in sys.modules], flush=True)
    raise KeyboardInterrupt

run("prepare", main)
"""


def test_mlflow_and_pandas_are_loaded_before_a_stage_runs_so_a_ctrl_c_in_its_imports_is_recorded(repo):
    # A Ctrl-C in the stage's own lazy import of pandas (pyarrow makes one) left pandas half-initialized,
    # and MLflow, imported only to record the run, then failed: `the failure was not recorded` (campaign).
    done = subprocess.run([sys.executable, "-c", LOADED], cwd=repo, capture_output=True, text=True,
                          timeout=HANG_GUARD_S, env={**os.environ, "PYTHONPATH": str(repo)})
    assert (done.stdout.splitlines()[-1:], done.returncode) == (["['mlflow', 'pandas']"], 130), done.stderr
    assert done.stderr == "prepare: interrupted\n"
    (parent,) = parents(repo)
    assert [c.info.status for c in children(repo, parent.info.run_id)] == ["KILLED"]


def test_the_next_execution_ends_runs_whose_process_is_gone_in_one_line(repo, capsys):
    import socket

    client = client_for(repo)
    tracking.log_stage("prepare")
    (parent,) = parents(repo)
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True, check=True).stdout.strip()
    experiment = parent.info.experiment_id

    def stage_run(name, pid):
        tags = {"mlflow.parentRunId": parent.info.run_id, tracking.ROW_TAG: "stage",
                tracking.HOST_TAG: socket.gethostname(), **({tracking.PID_TAG: pid} if pid else {})}
        return client.create_run(experiment, tags=tags, run_name=name).info.run_id

    killed = stage_run("train", gone)  # kill -9 while it recorded
    legacy = stage_run("sample", None)  # left by a dmc whose runs carried no pid
    alive = stage_run("evaluate", str(os.getpid()))  # its process still runs
    client.create_run(experiment, run_name="not dmc's")  # another tool's run in the experiment
    capsys.readouterr()
    tracking.log_stage("train")
    statuses = {r.info.run_id: r.info.status for r in runs(repo)}
    assert statuses[killed] == statuses[legacy] == "KILLED" and statuses[alive] == "RUNNING"
    assert sorted(r.info.run_name for r in running(repo)) == ["evaluate", "not dmc's"]
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["tracking: marked 2 run(s) KILLED whose process is gone (sample, train), and the "
                   "execution row(s) they belong to"]


WORKER = """
import sys
from pipeline.record import tracking
import os
for stage in ("download", "prepare", "train"):
    os.environ["DVC_EXP_NAME"] = sys.argv[1]
    tracking.log_stage(stage)
"""


def test_two_processes_logging_at_once_lose_no_run(repo):
    env = {**os.environ, "PYTHONPATH": str(repo)}
    env.pop("DVC_EXP_NAME", None)
    procs = [subprocess.Popen([sys.executable, "-c", WORKER, name], env=env, stderr=subprocess.PIPE,
                              text=True) for name in ("queued-1", "queued-2")]
    for proc in procs:
        assert proc.wait(timeout=HANG_GUARD_S) == 0, proc.stderr.read()
    found = parents(repo)
    assert sorted(r.info.run_name for r in found) == ["queued-1", "queued-2"]
    for parent in found:
        names = [r.info.run_name for r in children(repo, parent.info.run_id)]
        assert names == ["download", "prepare", "train"]


def test_retry_locked_backs_off_on_a_locked_database_and_nothing_else():
    calls = []

    def flaky():
        calls.append(1)
        if len(calls) < 3:
            raise RuntimeError("(sqlite3.OperationalError) database is locked")
        return "ok"

    assert store.retry_locked(flaky, delay=0.001) == "ok" and len(calls) == 3

    def broken():
        calls.append(1)
        raise RuntimeError("no such table: runs")

    calls.clear()
    with pytest.raises(RuntimeError, match="no such table"):
        store.retry_locked(broken, delay=0.001)
    assert len(calls) == 1


def test_dvc_md5_is_the_hash_dvc_records(tmp_path):
    (tmp_path / "d/sub").mkdir(parents=True)
    (tmp_path / "d/a.txt").write_text("one\n")
    (tmp_path / "d/sub/b.bin").write_bytes(bytes(range(256)))
    (tmp_path / "f.json").write_text('{"x": 1}\n')
    subprocess.run(["git", "init", "-q"], cwd=tmp_path, check=True)
    subprocess.run([sys.executable, "-m", "dvc", "init", "-q"], cwd=tmp_path, check=True)
    subprocess.run([sys.executable, "-m", "dvc", "add", "-q", "d", "f.json"], cwd=tmp_path, check=True)
    import yaml

    for name in ("d", "f.json"):
        recorded = yaml.safe_load((tmp_path / f"{name}.dvc").read_text())["outs"][0]["md5"]
        assert execution.dvc_md5(tmp_path / name) == recorded


def test_metrics_are_numbers_by_dotted_path_and_csv_series_need_a_step_column(tmp_path):
    (tmp_path / "m.json").write_text(json.dumps({"a": 1, "b": {"c": 2.5, "d": "text", "e": True},
                                                 "f": float("nan")}))
    assert execution.metrics_from_json(tmp_path / "m.json", "m.") == {"m.a": 1.0, "m.b.c": 2.5}
    (tmp_path / "loss.csv").write_text("step,loss,lr\n0,1.0,0.1\n5,0.5,0.1\n")
    assert execution.series_from_csv(tmp_path / "loss.csv") == {"loss.loss": [(0, 1.0), (5, 0.5)],
                                                               "loss.lr": [(0, 0.1), (5, 0.1)]}
    (tmp_path / "table.csv").write_text("name,value\nx,1\n")
    assert execution.series_from_csv(tmp_path / "table.csv") == {}
