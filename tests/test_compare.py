"""Comparing datasets: two executions (bach, renaissance) recorded by the real stages, read back as the
MLflow runs view shows them, then by `dmc compare`; and the artifact sizes of a default-sized sample set.

The stages run in this process (no interpreter start per stage) on 24 scores of each corpus, 20 steps of
the tiny preset, so both executions take well under a minute. Sampling keeps the defaults that decide
the artifact sizes (8 pieces of 128 notes, ogg audio, piano rolls) and cuts only the DDIM steps.
"""

from __future__ import annotations

import csv
import importlib
import json
import re
import shutil
import time
from pathlib import Path

import pytest
import yaml

from pipeline.record import tracking

REPO = Path(__file__).resolve().parents[1]
N_SCORES = 24
MB = 1_000_000
# The size targets of a default run, in bytes: all artifacts of one execution, and the gallery page.
MAX_ARTIFACTS = 15 * MB
MAX_GALLERY = 2 * MB

TINY = {
    "preset": "tiny", "steps": 20, "batch_size": 16,
    "prepare": {"n_jobs": 1, "split": {"train": 0.6, "val": 0.2, "test": 0.2}},
    "train": {"val_every": 10, "checkpoint_every": 10},
    "diffusion": {"timesteps": 100},
    "sample": {"steps": 5},
    "evaluate": {"n_baseline": 8},
}


def merge(base: dict, over: dict) -> dict:
    return {k: merge(base[k], v) if isinstance(v, dict) else v for k, v in over.items()} | \
        {k: v for k, v in base.items() if k not in over}


def run_execution(repo: Path, dataset: str, raw: Path, over: dict) -> None:
    """What `dvc exp run -S dataset=<name>` executes after download, each stage recorded as in a run."""
    from pipeline.data import datasets
    from pipeline.params import load_params

    params = merge(load_params(REPO / "params.yaml"), {**TINY, "dataset": dataset, "raw_dir": str(raw)})
    params = merge(params, over)
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    source = datasets.get(dataset)
    root = source.fetch(raw / dataset, params, limit=N_SCORES)
    datasets.write_manifest(repo / "data/manifest.json", dataset, root)
    for stage in ("prepare", "train", "sample", "evaluate"):
        module = importlib.import_module(f"stages.{stage}")
        start = time.perf_counter()
        with tracking.track_stage(stage, repo):
            module.main()
        print(f"{dataset} {stage}: {time.perf_counter() - start:.1f} s")


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    repo = tmp_path_factory.mktemp("clone")
    for name in ("dvc.yaml",):
        shutil.copy(REPO / name, repo / name)
    for folder in ("pipeline", "stages"):
        shutil.copytree(REPO / folder, repo / folder, ignore=shutil.ignore_patterns("__pycache__"))
    raw = tmp_path_factory.mktemp("raw")
    with pytest.MonkeyPatch.context() as mp:
        for name in ("DVC_ROOT", "DVC_EXP_NAME", "MLFLOW_TRACKING_URI", "RANK", "MLFLOW_EXPERIMENT_NAME"):
            mp.delenv(name, raising=False)
        mp.setenv("DMC_TRACKING", "1")
        mp.chdir(repo)
        run_execution(repo, "bach", raw, {})
        # The second execution only has to be compared: two silent pieces keep its sampling short.
        run_execution(repo, "renaissance", raw, {"sample": {"n": 2, "audio": ""}})
    return repo


# Two real executions: minutes of one busy CPU core, so with the other end-to-end tests under `slow`.
def slow_with_audio(test):
    needs = pytest.mark.skipif(not shutil.which("fluidsynth"), reason="fluidsynth renders the audio")
    return pytest.mark.slow(needs(test))


def client_for(repo: Path):
    from mlflow.tracking import MlflowClient

    return MlflowClient(f"sqlite:///{repo / 'mlflow.db'}")


def view_rows(repo: Path) -> list:
    """The runs the README's link shows: the saved view's filter, as MLflow itself runs it."""
    client = client_for(repo)
    experiment = client.get_experiment_by_name("dmc")
    view = json.loads(experiment.tags[tracking.VIEW_TAG])
    return client.search_runs([experiment.experiment_id], filter_string=view["searchFilter"],
                              order_by=["attribute.start_time ASC"])




@slow_with_audio
def test_two_datasets_are_two_rows_with_their_data_and_headline_metrics(store):
    client = client_for(store)
    rows = view_rows(store)
    assert [r.data.params["dataset"] for r in rows] == ["bach", "renaissance"]
    digests = []
    for row in rows:
        dataset = row.data.params["dataset"]
        (data,) = row.inputs.dataset_inputs
        assert data.dataset.name == f"{dataset}-prepared" and [t.value for t in data.tags] == ["training"]
        digests.append(data.dataset.digest)
        metrics = row.data.metrics
        for name in ("oa", "oa_markov", "oa_real", "scale", "chord", "train_loss_mean100", "segments",
                     "seconds.train", "seconds.evaluate"):
            assert name in metrics, (dataset, name)
        assert 0 <= metrics["oa"] <= 1
        assert len(client.get_metric_history(row.info.run_id, "train_loss")) >= 2
        stage_runs = client.search_runs([row.info.experiment_id],
                                        filter_string=f"tags.`mlflow.parentRunId` = '{row.info.run_id}'")
        assert sorted(r.info.run_name for r in stage_runs) == ["evaluate", "prepare", "sample", "train"]
        for stage_run in stage_runs:  # children hold the full names, the row the short ones
            assert not set(stage_run.data.metrics) & set(metrics), stage_run.info.run_name
        evaluate = next(r for r in stage_runs if r.info.run_name == "evaluate")
        assert "evaluate.generated.oa.pitch_count" in evaluate.data.metrics
        assert metrics["oa"] == float(f"{evaluate.data.metrics['evaluate.generated.oa_mean']:.4g}")
    assert digests[0] != digests[1]
    # MLflow's Datasets filter lists name-context pairs: one context per dataset, in every run.
    pairs = {(d.dataset.name, t.value) for r in client.search_runs([rows[0].info.experiment_id])
             for d in r.inputs.dataset_inputs for t in d.tags if t.key == "mlflow.data.context"}
    assert pairs == {("bach-raw", "source"), ("bach-prepared", "training"),
                     ("renaissance-raw", "source"), ("renaissance-prepared", "training")}


@slow_with_audio
def test_dmc_compare_prints_and_writes_both_datasets_beside_the_baselines(store, tmp_path, monkeypatch,
                                                                          capsys):
    from pipeline import cli

    monkeypatch.chdir(store)
    assert cli.main(["compare", "--out", str(tmp_path / "cmp")]) == 0
    printed = capsys.readouterr().out
    assert "renaissance" in printed and "bach" in printed
    oa_line = next(line for line in printed.splitlines() if line.startswith("generated oa_mean "))
    rows = view_rows(store)
    for row in rows:
        value, markov = row.data.metrics["oa"], row.data.metrics["oa_markov"]
        assert f"{value:.4g} (markov {markov:.4g}, real " in oa_line
    with open(tmp_path / "cmp/compare.csv") as f:
        table = list(csv.DictReader(f))
    assert [r["dataset"] for r in table] == ["bach", "renaissance"]
    assert [r["preset"] for r in table] == ["tiny", "tiny"] and [r["steps"] for r in table] == ["20", "20"]
    for name in ("evaluate.generated.oa_mean", "evaluate.markov.oa_mean", "evaluate.real.oa_mean",
                 "train_loss_mean100", "seconds.train"):
        assert all(r[name] for r in table), name
    assert "compared: http://127.0.0.1:5000/#/experiments/" in printed
    assert (tmp_path / "cmp/compare_oa.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (tmp_path / "cmp/compare.txt").read_text().strip() == printed.split("\ncompare: wrote")[0].strip()


def test_compare_of_an_empty_store_is_a_one_line_error(tmp_path, monkeypatch, capsys):
    from pipeline import cli

    monkeypatch.chdir(tmp_path)
    assert cli.main(["compare", "--tracking-uri", f"sqlite:///{tmp_path / 'mlflow.db'}"]) == 2
    assert capsys.readouterr().err.strip() == (
        f"dmc: error: compare: no MLflow store at {tmp_path / 'mlflow.db'}; "
        "run the pipeline first (dvc repro)")
    assert list(tmp_path.iterdir()) == []  # neither a store nor a half-written table


@slow_with_audio
def test_an_execution_stores_at_most_15_mb_and_its_gallery_2_mb(store):
    from mlflow.utils.file_utils import local_file_uri_to_path

    client = client_for(store)
    row = view_rows(store)[0]
    assert row.data.params["dataset"] == "bach" and row.data.params["sample.audio"] == "ogg"
    stage_runs = client.search_runs([row.info.experiment_id],
                                    filter_string=f"tags.`mlflow.parentRunId` = '{row.info.run_id}'")
    run_ids = [row.info.run_id, *(r.info.run_id for r in stage_runs)]
    folders = [Path(local_file_uri_to_path(client.get_run(i).info.artifact_uri)) for i in run_ids]
    # MLflow 3 keeps a logged model beside the runs (mlartifacts/models/m-...), not in its run's folder.
    models = client.search_logged_models([row.info.experiment_id])
    folders += [Path(local_file_uri_to_path(m.artifact_location)) for m in models
                if m.source_run_id in run_ids]
    assert len(folders) == len(run_ids) + 1
    total = sum(p.stat().st_size for folder in folders for p in folder.rglob("*") if p.is_file())
    gallery = folders[0] / "gallery.html"
    print(f"bach execution: artifacts {total / MB:.2f} MB, gallery {gallery.stat().st_size / MB:.2f} MB")
    assert total <= MAX_ARTIFACTS and gallery.stat().st_size <= MAX_GALLERY
    page = gallery.read_text()
    assert page.count("<audio controls") == 8  # every sample still playable in the viewer
    if shutil.which("oggenc"):
        assert page.count('src="data:audio/ogg;base64,') == 8


def test_compare_table_puts_every_generated_number_beside_its_baselines(tmp_path, monkeypatch, capsys):
    """Fast: two recorded evaluate stages (hand-written evaluate.json, one with a metric added later)."""
    from pipeline import cli

    shutil.copy(REPO / "dvc.yaml", tmp_path / "dvc.yaml")
    for name in ("DVC_ROOT", "DVC_EXP_NAME", "MLFLOW_TRACKING_URI", "RANK", "MLFLOW_EXPERIMENT_NAME"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("DMC_TRACKING", "1")
    monkeypatch.chdir(tmp_path)
    (tmp_path / "data/prepared").mkdir(parents=True)
    (tmp_path / "metrics").mkdir()
    for dataset, oa, extra in (("bach", 0.45, {}), ("renaissance", 0.55, {"edge_pinning": 0.2})):
        from pipeline.params import load_params

        params = merge(load_params(REPO / "params.yaml"), {"dataset": dataset})
        (tmp_path / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
        (tmp_path / "data/prepared/segments.parquet").write_text(dataset)
        summary = {f"{s}.{k}": v for s, shift in (("generated", 0), ("markov", 0.3), ("real", 0.45))
                   for k, v in {"oa_mean": oa + shift, **extra}.items()}
        features = {f"{s}.oa.pitch_count": 0.5 for s in ("generated", "real")}
        (tmp_path / "metrics/evaluate.json").write_text(json.dumps({**summary, **features}))
        tracking.log_stage("evaluate", tmp_path)
    assert cli.main(["compare", "--out", "cmp"]) == 0
    rows = [re.split(r"\s{2,}", line.strip()) for line in capsys.readouterr().out.splitlines()]
    assert rows[1] == ["dataset", "bach", "renaissance"] and rows[2] == ["preset", "tiny", "tiny"]
    assert ["generated oa_mean", "0.45 (markov 0.75, real 0.9)", "0.55 (markov 0.85, real 1)"] in rows
    assert ["generated edge_pinning", "- (markov -, real -)", "0.2 (markov 0.2, real 0.2)"] in rows
    with open("cmp/compare.csv") as f:
        header = next(csv.reader(f))
    assert header[:5] == ["run", "run_id", "dataset", "preset", "steps"]
    assert {"evaluate.generated.edge_pinning", "evaluate.markov.edge_pinning", "evaluate.real.edge_pinning",
            "seconds.evaluate"} <= set(header)
    assert Path("cmp/compare_oa.png").is_file()
