"""MLflow wiring, in one place: where the store lives, how an execution is grouped, what a stage records.

`stages.run` wraps every stage's main in `track_stage(stage)`. Nothing touches MLflow until the stage has
finished (or failed); then, under a file lock, the stage is recorded as a child run under a parent run
that stands for one pipeline execution, one row in `mlflow ui`.

Store: `MLFLOW_TRACKING_URI` when set, else `sqlite:///$DVC_ROOT/mlflow.db` with artifacts in
`$DVC_ROOT/mlartifacts`. DVC sets `DVC_ROOT` to the original repository even when `dvc exp run --temp`
or `--queue` runs the stage in a copy under .dvc/tmp/exps, so every experiment lands in one store.
MLflow turns a relative artifact location into an absolute one when it creates the experiment (and
every run records its own absolute URI), so a moved clone's store points at the old place.

The experiment is tagged as a model-training experiment and carries two saved views of the runs table
(pipeline.mlflow_views): `dmc-runs`, the executions, and `dmc-compare`, a comparison that `dmc ui` and
`dmc compare` point at the newest execution of each dataset (`write_compare_view`).

Grouping: the parent is found by a key, a hash of params.yaml, the code the pipeline runs and the DVC
experiment name. A stage DVC skips logs nothing, and the next executed stage still finds the parent.
A stage that the parent already holds (or a later one) starts a new parent: that is a new execution.

What a stage records is read from its block in dvc.yaml: JSON `metrics` become MLflow metrics, CSV
`plots` with a `step` column become per-step metrics, `data/` dependencies become dataset inputs with
their DVC hash as digest, `models/*.pt` outputs become a logged PyTorch model (its code bundled, the
shipped weights not) that the parent links too, and the remaining outputs become artifacts. A child holds
its stage's numbers under their full names; the parent holds a few of them under short names
(`PARENT_METRICS`: `oa` is `evaluate.generated.oa_mean`), rounded for the table, besides the loss curves
and each stage's wall time. The sample stage also puts an HTML gallery (pipeline.gallery) on the parent.
"""

from __future__ import annotations

import contextlib
import hashlib
import inspect
import json
import math
import os
import re
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any, TypeVar

import yaml

from pipeline import mlflow_views
from pipeline.errors import DmcError
from pipeline.files import file_digest, process_running

EXPERIMENT = "dmc"
STAGE_ORDER = ("download", "prepare", "train", "sample", "evaluate")
# The code whose change makes a new execution; its digest is part of the grouping key.
CODE_GLOBS = ("dvc.yaml", "pipeline/**/*.py", "stages/*.py")
PACKAGES = ("torch", "numpy", "symusic", "mlflow", "dvc", "pandas", "pyarrow", "music21", "muspy")
LOCK_TIMEOUT_S = 600
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

T = TypeVar("T")


# -- where the store lives ------------------------------------------------------------------------------

def enabled() -> bool:
    """False when DMC_TRACKING=0/off/false, and on every torchrun rank but 0 (only rank 0 logs)."""
    if os.environ.get("DMC_TRACKING", "1").strip().lower() in ("0", "off", "false", "no"):
        return False
    return os.environ.get("RANK", "0") == "0"


def repo_root(workdir: str | Path = ".") -> Path:
    """The original repository: DVC_ROOT under DVC (even in an experiment's temp copy), else `workdir`."""
    return Path(os.environ.get("DVC_ROOT") or workdir).resolve()


def tracking_uri(root: Path) -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{root / 'mlflow.db'}"


def _default_store() -> bool:
    return not os.environ.get("MLFLOW_TRACKING_URI")


# -- retries and the lock ------------------------------------------------------------------------------

def retry_locked(call: Callable[[], T], tries: int = 8, delay: float = 0.2) -> T:
    """Run `call`, retrying with exponential backoff while SQLite answers 'database is locked'.

    The file lock keeps dmc's own writers apart; this covers other readers and writers of the store
    (an open `mlflow ui`, a second tool), whose transactions can still hold SQLite's lock for a moment.
    """
    for attempt in range(tries):
        try:
            return call()
        except Exception as err:
            if "database is locked" not in str(err) or attempt == tries - 1:
                raise
            time.sleep(delay * 2**attempt)
    raise AssertionError("unreachable")


class _Retrying:
    """An MlflowClient whose every call goes through `retry_locked`."""

    def __init__(self, client: Any):
        self._client = client

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._client, name)
        if not callable(attr):
            return attr
        return lambda *args, **kwargs: retry_locked(lambda: attr(*args, **kwargs))


@contextlib.contextmanager
def store_lock(root: Path) -> Iterator[None]:
    """Serialize dmc's writers (e.g. `dvc queue start -j 2`) on one store: a file lock beside it."""
    from filelock import FileLock, Timeout

    try:
        with FileLock(str(root / "mlflow.db.lock"), timeout=LOCK_TIMEOUT_S):
            yield
    except Timeout:
        raise DmcError(f"tracking: waited {LOCK_TIMEOUT_S} s for {root / 'mlflow.db.lock'}; "
                       "is another process stuck logging?") from None


# -- what identifies an execution ---------------------------------------------------------------------

def git_commit(workdir: Path) -> str:
    """HEAD of the repository at `workdir` ('' outside git). In a DVC temp copy it is the baseline."""
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=workdir, capture_output=True, text=True,
                             timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return out.stdout.strip() if out.returncode == 0 else ""


def code_digest(workdir: Path) -> str:
    """sha256 over the pipeline's code (dvc.yaml, pipeline/, stages/): names and contents."""
    digest = hashlib.sha256()
    files = sorted({p for pattern in CODE_GLOBS for p in workdir.glob(pattern) if p.is_file()})
    for path in files:
        digest.update(path.relative_to(workdir).as_posix().encode() + b"\0")
        digest.update(hashlib.sha256(path.read_bytes()).digest())
    return digest.hexdigest()


def grouping_key(params_text: str, code: str, exp_name: str) -> str:
    """The parent run's key: same params, same code and same DVC experiment make one execution."""
    payload = json.dumps({"params": params_text, "code": code, "exp": exp_name}, sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def dvc_md5(path: Path) -> str:
    """The hash DVC records in dvc.lock: md5 of a file, or `<md5 of the listing>.dir` of a folder."""
    if path.is_file():
        return file_digest(path, "md5")
    entries = [{"md5": file_digest(p, "md5"), "relpath": p.relative_to(path).as_posix()}
               for p in path.rglob("*") if p.is_file()]
    entries.sort(key=lambda e: e["relpath"])
    return hashlib.md5(json.dumps(entries, sort_keys=True).encode()).hexdigest() + ".dir"


def package_versions() -> dict[str, str]:
    versions = {"python": sys.version.split()[0]}
    for name in PACKAGES:
        with contextlib.suppress(metadata.PackageNotFoundError):
            versions[name] = metadata.version(name)
    return versions


# -- what a stage declares in dvc.yaml ----------------------------------------------------------------

@dataclass
class StageFiles:
    """A stage's block in dvc.yaml, reduced to paths."""

    deps: list[str] = field(default_factory=list)
    outs: list[str] = field(default_factory=list)
    metrics: list[str] = field(default_factory=list)
    plots: list[str] = field(default_factory=list)


def _paths(entries: list[Any] | None) -> list[str]:
    # An entry is a path, or a one-key mapping {path: options}.
    return [next(iter(e)) if isinstance(e, dict) else str(e) for e in entries or []]


def stage_files(dvc_yaml: Path, stage: str) -> StageFiles:
    if not dvc_yaml.is_file():
        return StageFiles()
    block = (yaml.safe_load(dvc_yaml.read_text()) or {}).get("stages", {}).get(stage) or {}
    return StageFiles(*(_paths(block.get(key)) for key in ("deps", "outs", "metrics", "plots")))


_METRIC_NAME = re.compile(r"[^\w\-. /]")


def metrics_from_json(path: Path, prefix: str = "") -> dict[str, float]:
    """Every finite number in a (nested) JSON file, keyed by its dotted path; booleans and text skipped."""
    from pipeline.params import flatten

    data = json.loads(path.read_text())
    flat = flatten(data, prefix) if isinstance(data, dict) else {}
    return {_METRIC_NAME.sub("_", k): float(v) for k, v in flat.items()
            if isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)}


def series_from_csv(path: Path) -> dict[str, list[tuple[int, float]]]:
    """Per-step values of a CSV with a `step` column: {name: [(step, value), ...]}.

    A file with one value column is named after the file (train_loss.csv -> train_loss), otherwise
    each column is `<file>.<column>`. A CSV without `step` is a table, not a series: {}.
    """
    import pandas as pd

    frame = pd.read_csv(path)
    if "step" not in frame.columns:
        return {}
    columns = [c for c in frame.columns if c != "step" and pd.api.types.is_numeric_dtype(frame[c])]
    series = {}
    for column in columns:
        name = path.stem if len(columns) == 1 else f"{path.stem}.{column}"
        points = zip(frame["step"], frame[column], strict=True)
        series[_METRIC_NAME.sub("_", name)] = [(int(s), float(v)) for s, v in points if math.isfinite(v)]
    return series


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
        if stage == STAGE_ORDER[-1] and (_default_store() or recorded.uri.startswith("http")):
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
        client = _Retrying(MlflowClient(uri))
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
            return _default_store()
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
        location = (root / "mlartifacts").as_uri() if _default_store() else None
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

    client = _Retrying(MlflowClient(uri))
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
        from pipeline.gallery import write_gallery

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

    from pipeline.model import load_trained

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
