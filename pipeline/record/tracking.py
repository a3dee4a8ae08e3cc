"""MLflow wiring: how an execution is grouped into runs, and what each stage records.

`stages.run` wraps every stage's main in `track_stage(stage)`. Nothing touches MLflow until the stage has
finished (or failed); then, under a file lock, the stage is recorded as a child run under a parent run
that stands for one pipeline execution, one row in `mlflow ui`.

Store: `pipeline.record.store` (where it lives, the writers' lock). MLflow turns a relative artifact
location into an absolute one when it creates the experiment (and every run records its own absolute URI),
so a moved clone's store points at the old place.

The experiment is tagged as a model-training experiment and carries two saved views of the runs table
(pipeline.record.mlflow_views): `dmc-runs`, the executions, and `dmc-compare`, a comparison that `dmc ui`
and `dmc compare` point at the newest execution of each dataset (`write_compare_view`).

Grouping: the parent is found by a key, a hash of params.yaml, the code the pipeline runs and the DVC
experiment name. A stage DVC skips logs nothing, and the next executed stage still finds the parent.
A stage that the parent already holds (or a later one) starts a new parent: that is a new execution.

What a stage records is read from its block in dvc.yaml: JSON `metrics` become MLflow metrics, CSV `plots`
with a `step` column become per-step metrics, `data/` dependencies become dataset inputs with their DVC
hash as digest, `models/*.pt` outputs become a logged PyTorch model (its code bundled, the shipped weights
not) that the parent links too, and the remaining outputs become artifacts. A child holds its stage's
numbers under their full names; the parent holds a few of them under short names (`PARENT_METRICS`: `oa`
is `evaluate.generated.oa_mean`), rounded for the table, besides the loss curves and each stage's wall
time. The sample stage also puts an HTML gallery (pipeline.record.gallery) on the parent.
"""

from __future__ import annotations

import contextlib
import inspect
import json
import os
import socket
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.errors import DmcError
from pipeline.files import process_running
from pipeline.record import mlflow_views
from pipeline.record.execution import (
    StageFiles,
    code_digest,
    dvc_md5,
    git_commit,
    grouping_key,
    metrics_from_json,
    package_versions,
    series_from_csv,
    stage_files,
)
from pipeline.record.store import (
    Retrying,
    default_store,
    enabled,
    repo_root,
    retry_locked,
    store_lock,
    tracking_uri,
)

EXPERIMENT = "dmc"
STAGE_ORDER = ("download", "prepare", "train", "sample", "evaluate")
GROUP_TAG = "dmc.group"
STAGES_TAG = "dmc.stages"
# The process that created a run, so that a later one can tell a run whose process is gone.
PID_TAG, HOST_TAG = "dmc.pid", "dmc.host"
# "execution" on a parent, "stage" on a child: the saved runs view filters on it to show parents only.
ROW_TAG = "dmc.run"
# MLflow 3 reads this experiment tag to choose between its GenAI (traces) and model-training layouts.
KIND_TAG, KIND = "mlflow.experimentKind", "custom_model_development"
VIEW_KEY = mlflow_views.RUNS_VIEW_KEY
VIEW_TAG = mlflow_views.view_tag(VIEW_KEY)
COMPARE_TAG = mlflow_views.view_tag(mlflow_views.COMPARE_VIEW_KEY)
runs_view = mlflow_views.runs_view
runs_view_url = mlflow_views.runs_view_url
# Dataset inputs: each `data/` dependency, named after the dataset plus its kind, with one context
# per role wherever it is logged (MLflow's Datasets filter lists each name-context pair).
DATA_DEPS = {"data/manifest.json": "raw", "data/prepared": "prepared"}
DATA_CONTEXTS = {"raw": "source", "prepared": "training"}
# The numbers on the parent (one row per execution), short name -> the full name on the stage's child.
# A name a stage does not write is skipped. `train.val_loss` is the val_loss curve's last point, so the
# row has only the curve; `train.loss` is the mean of the train_loss curve's last 100 steps.
PARENT_METRICS = {
    "oa": "evaluate.generated.oa_mean", "oa_markov": "evaluate.markov.oa_mean",
    "oa_real": "evaluate.real.oa_mean",
    "kl": "evaluate.generated.kl_mean", "kl_markov": "evaluate.markov.kl_mean",
    "kl_real": "evaluate.real.kl_mean",
    "scale": "evaluate.generated.scale_consistency.mean",
    "scale_real": "evaluate.real.scale_consistency.mean",
    "chord": "evaluate.generated.chord_fraction", "chord_real": "evaluate.real.chord_fraction",
    "edge": "evaluate.generated.edge_fraction",
    "train_loss_mean100": "train.loss",
    "segments": "prepare.segments.train",
}
# Per-step curves (CSV plots) that go to the parent, whole, under their own names.
PARENT_CURVES = ("train_loss", "val_loss")
# Significant digits of the parent's copies: MLflow's table prints a metric in full, cut by the column.
PARENT_DIGITS = 4
# The package's code goes into a logged model; the shipped weights under it do not.
MODEL_CODE_EXCLUDE = ("weights", "__pycache__")


def parent_metrics(values: dict[str, float]) -> dict[str, float]:
    """The parent's short-named copies of a stage's numbers (`PARENT_METRICS`), rounded for the table."""
    return {short: float(f"{values[full]:.{PARENT_DIGITS}g}") for short, full in PARENT_METRICS.items()
            if full in values}


# -- recording a stage -------------------------------------------------------------------------------

@contextlib.contextmanager
def track_stage(stage: str, workdir: str | Path = ".") -> Iterator[None]:
    """Run the body as stage `stage`; when it ends, record it in MLflow (see the module docstring).

    A failed stage is recorded as FAILED and its error re-raised; a store that cannot record a
    failure does not hide the stage's own error. A store that cannot record a success is a DmcError.
    """
    if not enabled():
        yield
        return
    # MLflow, and pandas with it, load before the stage runs, not when it ends: a Ctrl-C that lands in the
    # stage's own lazy import of pandas (pyarrow makes one) leaves pandas half-initialized, and MLflow could
    # then not record the run KILLED (seen in the fault campaign).
    import mlflow  # noqa: F401

    start = time.time()
    try:
        yield
    except BaseException as err:
        status = "KILLED" if isinstance(err, KeyboardInterrupt) else "FAILED"
        try:
            log_stage(stage, workdir, status, start)
        except Exception as log_err:
            print(f"{stage}: note: the failure was not recorded in MLflow ({_one_line(log_err)})",
                  file=sys.stderr)
        raise
    try:
        recorded = log_stage(stage, workdir, "FINISHED", start)
        if stage == STAGE_ORDER[-1] and (default_store() or recorded.uri.startswith("http")):
            base = recorded.uri if recorded.uri.startswith("http") else "http://127.0.0.1:5000"
            print(f"{stage}: runs table (after `dmc ui`): {runs_view_url(recorded.experiment_id, base)}")
    except DmcError:
        raise
    except Exception as err:
        raise DmcError(f"tracking: could not record stage {stage}: {_one_line(err)}") from err


def _one_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


@dataclass
class Recorded:
    """The runs `log_stage` wrote to."""

    uri: str
    experiment_id: str
    parent_id: str
    child_id: str


def log_stage(stage: str, workdir: str | Path = ".", status: str = "FINISHED",
              start: float | None = None) -> Recorded:
    """Record one executed stage as a child run (name = stage) under its execution's parent run."""
    import mlflow
    from mlflow.tracking import MlflowClient

    workdir = Path(workdir).resolve()
    root = repo_root(workdir)
    uri = tracking_uri(root)
    ctx = _Context.gather(stage, workdir, root)
    now = time.time()
    seconds = round(now - (start or now), 3)  # the stage's wall time, before the logging's own
    start_ms = int((start or now) * 1000)
    with store_lock(root):
        client = Retrying(MlflowClient(uri))
        experiment_id = _experiment(client, root)
        finish_orphans(client, experiment_id)
        parent_id = _parent(client, experiment_id, ctx, start_ms)
        tags = {**ctx.tags, "dmc.stage": stage, ROW_TAG: "stage", "mlflow.parentRunId": parent_id}
        child = client.create_run(experiment_id, start_time=start_ms, tags=tags, run_name=stage)
        child_id = child.info.run_id
        try:
            _log_params(client, child_id, ctx.params)
            if status == "FINISHED":
                _log_outputs(client, mlflow, uri, ctx, parent_id, child_id)
                _log_metrics(client, parent_id, {f"seconds.{stage}": seconds}, {})
        except BaseException as err:  # a half-recorded stage must not look like a complete one
            status = "KILLED" if isinstance(err, KeyboardInterrupt) else "FAILED"
            raise
        finally:
            client.set_terminated(child_id, status)
            stages = [s for s in client.get_run(parent_id).data.tags.get(STAGES_TAG, "").split(",") if s]
            client.set_tag(parent_id, STAGES_TAG, ",".join([*stages, stage]))
            client.set_terminated(parent_id, status)
    return Recorded(uri, experiment_id, parent_id, child_id)


def finish_orphans(client: Any, experiment_id: str, log: Callable[[str], None] | None = None) -> list[str]:
    """End as KILLED the RUNNING runs whose process is gone (killed with -9, or while it recorded), and
    the execution rows they belong to; one line says so. Returns their ids. Called under `store_lock`:
    dmc holds it from a run's start to its end, so a RUNNING run seen then is one that never ended."""
    host = socket.gethostname()

    def gone(tags: dict[str, str]) -> bool:
        if PID_TAG not in tags:  # recorded before runs carried their pid: the lock says it ended badly
            return default_store()
        return tags.get(HOST_TAG) == host and not process_running(int(tags[PID_TAG]))

    running = client.search_runs([experiment_id], filter_string="attributes.status = 'RUNNING'",
                                 max_results=1000)
    orphans = [r for r in running if ROW_TAG in r.data.tags and gone(r.data.tags)]
    parents = {r.data.tags["mlflow.parentRunId"] for r in orphans if "mlflow.parentRunId" in r.data.tags}
    for run_id in [*(r.info.run_id for r in orphans), *parents - {r.info.run_id for r in orphans}]:
        client.set_terminated(run_id, "KILLED")
    if orphans:
        names = ", ".join(sorted({r.info.run_name or r.info.run_id[:8] for r in orphans}))
        (log or (lambda line: print(line, file=sys.stderr)))(
            f"tracking: marked {len(orphans)} run(s) KILLED whose process is gone ({names}), "
            f"and the execution row(s) they belong to")
    return [r.info.run_id for r in orphans]


@dataclass
class _Context:
    """What a stage knows about its execution, gathered before the store is opened."""

    stage: str
    workdir: Path
    root: Path
    params: dict[str, Any]
    key: str
    run_name: str
    tags: dict[str, str]
    files: StageFiles

    @classmethod
    def gather(cls, stage: str, workdir: Path, root: Path) -> _Context:
        from pipeline.params import flatten, load_params, parse

        params_path = workdir / "params.yaml"
        params_text = params_path.read_text() if params_path.is_file() else ""
        try:
            params = load_params(params_path)
        except DmcError:  # a stage that failed on bad params is still recorded, with what parses
            try:
                params = parse(params_text)
            except DmcError:
                params = {}
        flat = {k: json.dumps(v) if isinstance(v, list | dict) else str(v)
                for k, v in flatten(params).items()}
        exp_name = os.environ.get("DVC_EXP_NAME", "")
        code = code_digest(workdir)
        key = grouping_key(params_text, code, exp_name)
        commit = git_commit(workdir)
        dataset, preset = str(params.get("dataset", "")), str(params.get("preset", ""))
        tags = {
            "dataset": dataset,
            "preset": preset,
            "mlflow.source.git.commit": commit,
            "mlflow.source.name": "dvc.yaml",
            "mlflow.source.type": "PROJECT",
            "dmc.code_digest": code,
            "dvc.exp_name": exp_name,
            "dvc.baseline_rev": os.environ.get("DVC_EXP_BASELINE_REV", ""),
            PID_TAG: str(os.getpid()),
            HOST_TAG: socket.gethostname(),
            **{f"dmc.version.{name}": version for name, version in package_versions().items()},
        }
        tags = {k: v for k, v in tags.items() if v}
        run_name = exp_name or f"{dataset}-{preset}-{key[:6]}"
        return cls(stage, workdir, root, flat, key, run_name, tags, stage_files(workdir / "dvc.yaml", stage))


def _experiment(client: Any, root: Path) -> str:
    """The experiment's id, created (or brought up to date) as a model-training one with the saved view."""
    name = os.environ.get("MLFLOW_EXPERIMENT_NAME", EXPERIMENT)
    view = mlflow_views.view_json(runs_view())
    experiment = client.get_experiment_by_name(name)
    if experiment is None:
        # Without a server the artifact root would default to ./mlruns of whichever copy runs first.
        location = (root / "mlartifacts").as_uri() if default_store() else None
        return client.create_experiment(name, artifact_location=location,
                                        tags={KIND_TAG: KIND, VIEW_TAG: view})
    if KIND_TAG not in experiment.tags:  # a store made before the tag; a kind the user chose is kept
        client.set_experiment_tag(experiment.experiment_id, KIND_TAG, KIND)
    if experiment.tags.get(VIEW_TAG) != view:
        client.set_experiment_tag(experiment.experiment_id, VIEW_TAG, view)
    return experiment.experiment_id


def newest_per_dataset(client: Any, experiment_id: str) -> list[Any]:
    """The newest execution (parent run) of each dataset that reached evaluate, oldest dataset first."""
    rows = client.search_runs([experiment_id], filter_string=mlflow_views.ROW_FILTER,
                              order_by=["attribute.start_time DESC"], max_results=5000)
    newest: dict[str, Any] = {}
    for row in rows:
        dataset = row.data.params.get("dataset", row.data.tags.get("dataset", ""))
        if dataset not in newest and "oa" in row.data.metrics:
            newest[dataset] = row
    return sorted(newest.values(), key=lambda r: r.info.start_time)


def write_compare_view(uri: str, root: Path, experiment: str = EXPERIMENT) -> tuple[str, list[Any]] | None:
    """Point the saved comparison (`dmc-compare`) at the newest execution of each dataset.

    Returns the experiment id and those runs; None where the store has no such experiment.
    """
    from mlflow.tracking import MlflowClient

    client = Retrying(MlflowClient(uri))
    found = client.get_experiment_by_name(experiment)
    if found is None:
        return None
    runs = newest_per_dataset(client, found.experiment_id)
    keys = {k for run in runs for k in run.data.metrics}
    view = mlflow_views.view_json(mlflow_views.compare_view([r.info.run_id for r in runs], keys))
    if found.tags.get(COMPARE_TAG) != view:
        lock = store_lock(root) if uri.startswith("sqlite:") else contextlib.nullcontext()
        with lock:
            client.set_experiment_tag(found.experiment_id, COMPARE_TAG, view)
    return found.experiment_id, runs


def _parent(client: Any, experiment_id: str, ctx: _Context, start_ms: int) -> str:
    """The execution's parent: the newest run with this key, unless it holds this stage or a later one.

    download is `always_changed` and re-scans on every `dvc repro`: it joins the newest parent while
    the files it lists are the ones that parent recorded.
    """
    found = client.search_runs([experiment_id], filter_string=f"tags.`{GROUP_TAG}` = '{ctx.key}'",
                               order_by=["attribute.start_time DESC"], max_results=1)
    if found:
        run = found[0]
        done = [s for s in run.data.tags.get(STAGES_TAG, "").split(",") if s]
        order = STAGE_ORDER.index(ctx.stage) if ctx.stage in STAGE_ORDER else len(STAGE_ORDER)
        later = any(STAGE_ORDER.index(s) >= order for s in done if s in STAGE_ORDER)
        if ctx.stage == "download":
            manifest = ctx.workdir / "data/manifest.json"
            if manifest.is_file():
                digest = dvc_md5(manifest)
                later = run.data.tags.get("dmc.data.raw", digest) != digest
        if not later:
            return run.info.run_id
    tags = {**ctx.tags, GROUP_TAG: ctx.key, ROW_TAG: "execution"}
    parent = client.create_run(experiment_id, start_time=start_ms, tags=tags, run_name=ctx.run_name)
    parent_id = parent.info.run_id
    _log_params(client, parent_id, ctx.params)
    return parent_id


def _log_params(client: Any, run_id: str, params: dict[str, str]) -> None:
    from mlflow.entities import Param

    items = [Param(k, v) for k, v in params.items()]
    for i in range(0, len(items), 100):
        client.log_batch(run_id, params=items[i:i + 100])


def _log_metrics(client: Any, run_id: str, values: dict[str, float],
                 series: dict[str, list[tuple[int, float]]]) -> None:
    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    metrics = [Metric(k, v, now, 0) for k, v in values.items()]
    metrics += [Metric(k, v, now, step) for k, points in series.items() for step, v in points]
    for i in range(0, len(metrics), 1000):
        client.log_batch(run_id, metrics=metrics[i:i + 1000])


def _log_outputs(client: Any, mlflow: Any, uri: str, ctx: _Context, parent_id: str, child_id: str) -> None:
    wd, files = ctx.workdir, ctx.files
    values: dict[str, float] = {}
    series: dict[str, list[tuple[int, float]]] = {}
    for rel in files.metrics:
        if (wd / rel).is_file() and rel.endswith(".json"):
            values.update(metrics_from_json(wd / rel, prefix=f"{Path(rel).stem}."))
    for rel in files.plots:
        if (wd / rel).is_file() and rel.endswith(".csv"):
            series.update(series_from_csv(wd / rel))
    _log_metrics(client, child_id, values, {k: v for k, v in series.items() if k not in PARENT_CURVES})
    _log_metrics(client, parent_id, parent_metrics(values),
                 {k: v for k, v in series.items() if k in PARENT_CURVES})
    _log_datasets(client, ctx, parent_id, child_id)
    for rel in [*files.outs, *files.metrics, *files.plots]:
        path = wd / rel
        if rel.startswith("data/") or not path.exists():
            continue
        if rel.startswith("models/"):
            if path.suffix == ".pt":
                model_id = _log_model(mlflow, uri, ctx, child_id, path)
                if model_id:  # the row links the model its train child logged
                    from mlflow.entities import LoggedModelOutput

                    client.log_outputs(parent_id, [LoggedModelOutput(model_id, 0)])
        elif path.is_dir():
            client.log_artifacts(child_id, str(path), rel)
        else:
            client.log_artifact(child_id, str(path), str(Path(rel).parent) if "/" in rel else None)
    if ctx.stage == "sample" and (wd / "samples").is_dir():
        from pipeline.record.gallery import write_gallery

        with tempfile.TemporaryDirectory() as tmp:
            title = f"dmc samples: {ctx.run_name} ({ctx.tags.get('dataset', '')})"
            gallery = write_gallery(wd / "samples", Path(tmp) / "gallery.html", title=title,
                                    sample_run=f"sample ({child_id[:8]})")
            client.log_artifact(parent_id, str(gallery))  # on the row users open


def _log_datasets(client: Any, ctx: _Context, parent_id: str, child_id: str) -> None:
    """Each `data/` dependency as an MLflow input of the child; the parent gets the prepared data once."""
    import warnings

    from mlflow.data.dataset_source_registry import resolve_dataset_source
    from mlflow.data.meta_dataset import MetaDataset
    from mlflow.entities import DatasetInput, InputTag

    dataset = ctx.tags.get("dataset", "data")
    for rel, kind in DATA_DEPS.items():
        path = ctx.workdir / rel
        if rel not in ctx.files.deps or not path.exists():
            continue
        with warnings.catch_warnings():  # several registered sources claim local paths, all alike
            warnings.simplefilter("ignore")
            source = resolve_dataset_source((ctx.root / rel).as_uri())
        entity = MetaDataset(source, name=f"{dataset}-{kind}", digest=dvc_md5(path))._to_mlflow_entity()
        inputs = [DatasetInput(entity, [InputTag("mlflow.data.context", DATA_CONTEXTS[kind])])]
        client.log_inputs(child_id, datasets=inputs)
        client.set_tag(parent_id, f"dmc.data.{kind}", entity.digest)
        if kind == "prepared" and not client.get_run(parent_id).inputs.dataset_inputs:
            client.log_inputs(parent_id, datasets=inputs)
    manifest = ctx.workdir / "data/manifest.json"
    if ctx.stage == "download" and manifest.is_file():
        client.set_tag(parent_id, "dmc.data.raw", dvc_md5(manifest))


def _log_model(mlflow: Any, uri: str, ctx: _Context, run_id: str, path: Path) -> str | None:
    """The trained U-Net (EMA weights) as an MLflow PyTorch model, with the code that defines it.

    Returns the logged model's id (None from an MLflow without logged models).
    """
    import mlflow.pytorch

    from pipeline.model.unet import load_trained

    model, _, _ = load_trained(path, "cpu")
    versions = package_versions()
    requirements = [f"{name}=={versions[name]}" for name in ("torch", "numpy") if name in versions]
    # Pickled, with the package that defines the U-Net (code_paths) so it loads anywhere. The graph
    # format (pt2) would need a TensorSpec signature for the (x, t) pair and a torch.export trace.
    options = {"serialization_format": "pickle"} \
        if "serialization_format" in inspect.signature(mlflow.pytorch.log_model).parameters else {}
    mlflow.set_tracking_uri(uri)
    with tempfile.TemporaryDirectory() as tmp, mlflow.start_run(run_id=run_id), _quiet("mlflow.pytorch"):
        code = copy_package_code(ctx.workdir / "pipeline", Path(tmp) / "pipeline")
        info = retry_locked(lambda: mlflow.pytorch.log_model(
            model, name="model", pip_requirements=requirements, code_paths=[str(code)], **options))
    return getattr(info, "model_id", None)


def copy_package_code(package: Path, dest: Path) -> Path:
    """The package's Python files (and only those) under `dest`, without `MODEL_CODE_EXCLUDE` folders."""
    import shutil

    for source in package.rglob("*.py"):
        rel = source.relative_to(package)
        if any(part in MODEL_CODE_EXCLUDE for part in rel.parts[:-1]):
            continue
        (dest / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, dest / rel)
    return dest


@contextlib.contextmanager
def _quiet(logger: str) -> Iterator[None]:
    """Hide a logger's warnings: pickle's caution is for models from strangers, not one's own."""
    import logging

    log = logging.getLogger(logger)
    level = log.level
    log.setLevel(logging.ERROR)
    try:
        yield
    finally:
        log.setLevel(level)
