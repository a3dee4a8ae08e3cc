"""`dmc ui`'s links and the saved views it writes, read back from a real store (no server started: the
browser checks live in scripts/mlflow_screenshots.py)."""

from __future__ import annotations

import json
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest
import yaml

from pipeline.errors import DmcError
from pipeline.record import mlflow_views, tracking, ui

REPO = Path(__file__).resolve().parents[1]


def record_evaluation(root: Path, dataset: str, oa: float) -> None:
    """One execution of `dataset` that reached evaluate (a hand-written evaluate.json), as a stage logs it."""
    from pipeline.params import load_params

    params = load_params(REPO / "params.yaml") | {"dataset": dataset}
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    (root / "data/prepared/segments.parquet").write_text(dataset)
    summary = {"generated.oa_mean": oa, "markov.oa_mean": 0.76, "real.oa_mean": 0.917,
               "generated.scale_consistency.mean": 0.6354, "generated.chord_fraction": 0.064,
               "generated.kl_mean": 2.9, "generated.oa.pitch_count": 0.9}
    (root / "metrics/evaluate.json").write_text(json.dumps(summary))
    tracking.log_stage("evaluate", root)


@pytest.fixture()
def store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Three executions: bach twice (the second is the newest of bach), then bach-satb."""
    (tmp_path / "dvc.yaml").write_text((REPO / "dvc.yaml").read_text())
    (tmp_path / "data/prepared").mkdir(parents=True)
    (tmp_path / "metrics").mkdir()
    for name in ("DVC_ROOT", "DVC_EXP_NAME", "MLFLOW_TRACKING_URI", "RANK", "MLFLOW_EXPERIMENT_NAME"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("DMC_TRACKING", "1")
    monkeypatch.chdir(tmp_path)
    for dataset, oa in (("bach", 0.5), ("bach", 0.61872385), ("bach-satb", 0.4)):
        monkeypatch.setenv("DVC_EXP_NAME", f"{dataset}-{oa}")  # each its own execution
        record_evaluation(tmp_path, dataset, oa)
    monkeypatch.delenv("DVC_EXP_NAME")
    return tmp_path


def test_dmc_ui_links_open_the_runs_table_and_the_newest_execution_of_each_dataset(store):
    from mlflow.tracking import MlflowClient

    links = ui.prepare_links(store, "http://127.0.0.1:5123")
    client = MlflowClient(f"sqlite:///{store / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("dmc")
    eid = experiment.experiment_id
    assert links.root == "http://127.0.0.1:5123/"
    assert links.runs == (f"http://127.0.0.1:5123/#/experiments/{eid}/runs"
                          "?viewStateShareKey=dmc-runs&workflowType=machine_learning")
    assert links.compare == (f"http://127.0.0.1:5123/#/experiments/{eid}/runs"
                             "?viewStateShareKey=dmc-compare&compareRunsMode=CHART&workflowType=machine_learning")
    assert links.compared == [("bach", "bach-0.61872385"), ("bach-satb", "bach-satb-0.4")]
    # The comparison view: those two runs (MLflow's own search of its filter finds exactly them) on the
    # chart view, a parallel-coordinates chart of the headline params and metrics, one chart per metric.
    view = json.loads(experiment.tags["mlflow.sharedViewState.dmc-compare"])
    found = client.search_runs([eid], filter_string=view["searchFilter"], order_by=["attribute.start_time"])
    assert [r.info.run_name for r in found] == ["bach-0.61872385", "bach-satb-0.4"]
    assert found[0].data.metrics["oa"] == 0.6187  # the row's copy is rounded for the table
    charts = view["compareRunCharts"]
    (parallel,) = [c for c in charts if c["type"] == "PARALLEL"]
    assert parallel["selectedParams"] == ["dataset", "preset", "steps", "seq_len"]
    assert parallel["selectedMetrics"] == ["oa", "oa_markov", "oa_real", "scale", "chord", "kl"]
    shown = [c["metricKey"] for c in charts if c.get("metricKey") and not c["deleted"]]
    assert shown == ["oa", "oa_markov", "oa_real", "scale", "chord", "kl", "train_loss", "val_loss"]
    # Every other metric of the compared rows has a deleted chart, or MLflow would add one for it.
    hidden = {c["metricKey"] for c in charts if c["deleted"]}
    assert {k for r in found for k in r.data.metrics} - set(shown) == hidden == {"seconds.evaluate"}
    assert {c["metricSectionId"] for c in charts} == {view["compareRunSections"][0]["uuid"]}
    assert [s["name"] for s in view["compareRunSections"]] == ["Model metrics", "System metrics"]


def test_runs_view_puts_the_headline_columns_first_within_a_1600px_window(store):
    from mlflow.tracking import MlflowClient

    ui.prepare_links(store, "http://127.0.0.1:5000")
    experiment = MlflowClient(f"sqlite:///{store / 'mlflow.db'}").get_experiment_by_name("dmc")
    view = json.loads(experiment.tags["mlflow.sharedViewState.dmc-runs"])
    assert view["columnOrder"][:8] == ["attributes.`Dataset`", "metrics.`oa`", "metrics.`oa_markov`",
                                       "metrics.`oa_real`", "metrics.`scale`", "metrics.`chord`",
                                       "params.`steps`", "params.`preset`"]
    assert view["selectedColumns"] == view["columnOrder"]
    assert set(view["columnWidths"]) == set(view["columnOrder"])
    # MLflow's sidebar and own columns take about 720 px of the window; the first eight fit in the rest.
    assert sum(view["columnWidths"][c] for c in view["columnOrder"][:8]) <= 1600 - 720
    assert "attributes.`Models`" in view["columnOrder"]  # the row links its logged model
    assert view["searchFilter"] == "tags.`dmc.run` = 'execution'" and view["orderByAsc"] is False


def test_compare_link_puts_runs_first_for_mlflows_compare_page():
    url = mlflow_views.compare_runs_url("3", ["a1", "b2"], "http://127.0.0.1:5000")
    query = urlsplit(url).fragment.split("?", 1)[1]
    assert query.startswith("runs=")  # MLflow reads the first key with its "?" attached
    assert json.loads(parse_qs(query)["runs"][0]) == ["a1", "b2"]


def test_dmc_ui_without_a_store_is_a_one_line_error(tmp_path, monkeypatch, capsys):
    from pipeline import cli

    monkeypatch.chdir(tmp_path)
    assert cli.main(["ui", "--port", "5999"]) == 2
    db = tmp_path.resolve() / "mlflow.db"
    assert capsys.readouterr().err.strip() == \
        f"dmc: error: ui: no MLflow store at {db}; run the pipeline first (dvc repro)"
    assert list(tmp_path.iterdir()) == []


def test_dmc_ui_on_a_busy_port_is_a_one_line_error(store):
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        port = busy.getsockname()[1]
        with pytest.raises(DmcError, match=rf"^ui: 127.0.0.1:{port} is in use"):
            ui.serve(store, port=port)
