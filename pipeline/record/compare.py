"""`dmc compare`: the executions in the MLflow store side by side, read from their parent runs.

One column per execution (dataset, preset, steps), one row per headline number: the evaluation summary
of each set (`evaluate.<set>.<name>`, from the execution's newest evaluate child, where the full names
live) and the parent's other metrics (`train_loss_mean100`, `seconds.<stage>`, ...). Each evaluation number
of the generated set sits beside the same number of the markov and real baselines. The figure draws each
dataset's overlapping area (OA) with the test set per feature, from the same evaluate child.
"""

from __future__ import annotations

import csv
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipeline.errors import DmcError
from pipeline.files import atomic_path
from pipeline.record import mlflow_views, store, tracking

BASELINES = ("markov", "real")
# Sets evaluate reports besides `generated`; their numbers appear only beside the generated ones.
_OTHER_SETS = re.compile(r"^evaluate\.(markov|real|shuffle|test)\.")
_GENERATED = "evaluate.generated."


@dataclass
class Execution:
    """One parent run: what it ran on and its headline metrics; `oa` per feature from its evaluate child."""

    run_id: str
    experiment_id: str
    name: str
    dataset: str
    preset: str
    steps: str
    start_time: int
    metrics: dict[str, float]
    oa: dict[str, dict[str, float]] = field(default_factory=dict)  # set -> feature -> OA


def read_executions(uri: str, experiment: str = tracking.EXPERIMENT) -> list[Execution]:
    """The parent runs that reached evaluate, oldest first."""
    from mlflow.tracking import MlflowClient

    if uri.startswith("sqlite:///") and not Path(uri.removeprefix("sqlite:///")).is_file():
        raise DmcError(f"compare: no MLflow store at {uri.removeprefix('sqlite:///')}; "
                       "run the pipeline first (dvc repro)")
    client = MlflowClient(uri)
    found = client.get_experiment_by_name(experiment)
    if found is None:
        raise DmcError(f"compare: no experiment {experiment!r} in {uri}; run the pipeline first (dvc repro)")
    runs = client.search_runs([found.experiment_id], order_by=["attribute.start_time ASC"], max_results=5000)
    children = {r.info.run_id: r for r in runs if r.data.tags.get("dmc.stage") == "evaluate"}
    # The parent's short copies of evaluation numbers (`oa`, ...) give way to the child's full names.
    copies = {short for short, full in tracking.PARENT_METRICS.items() if full.startswith("evaluate.")}
    executions = []
    for run in runs:
        tags, params = run.data.tags, run.data.params
        if "mlflow.parentRunId" in tags:
            continue
        metrics = {k: v for k, v in run.data.metrics.items() if k not in copies}
        evaluations = [c for c in children.values()
                       if c.data.tags.get("mlflow.parentRunId") == run.info.run_id]
        oa: dict[str, dict[str, float]] = {}
        if evaluations:
            newest = max(evaluations, key=lambda c: c.info.start_time)
            for key, value in newest.data.metrics.items():
                if key.startswith("evaluate.") and key.count(".") == 2:
                    metrics[key] = value
                match = re.fullmatch(r"evaluate\.(\w+)\.oa\.(\w+)", key)
                if match:
                    oa.setdefault(match[1], {})[match[2]] = value
        if not any(k.startswith(_GENERATED) for k in metrics):
            continue
        executions.append(Execution(run.info.run_id, run.info.experiment_id,
                                    run.info.run_name or run.info.run_id[:8],
                                    params.get("dataset", tags.get("dataset", "")), params.get("preset", ""),
                                    params.get("steps", ""), run.info.start_time, metrics, oa))
    if not executions:
        raise DmcError(f"compare: no execution in experiment {experiment!r} reached the evaluate stage")
    return executions


def metric_rows(executions: list[Execution]) -> list[str]:
    """The headline metric names to show, in a stable order: evaluation first, then the rest."""
    names = {k for e in executions for k in e.metrics if not _OTHER_SETS.match(k)}
    return sorted(names, key=lambda k: (not k.startswith(_GENERATED), k))


def _value(execution: Execution, name: str) -> float:
    return execution.metrics.get(name, math.nan)


def _fmt(value: float) -> str:
    if math.isnan(value):
        return "-"
    return f"{value:.0f}" if value == int(value) and abs(value) >= 10 else f"{value:.4g}"


def format_table(executions: list[Execution]) -> str:
    """The comparison as aligned text: one column per execution, baselines in parentheses."""
    header = [["", *(e.name for e in executions)], ["dataset", *(e.dataset for e in executions)],
              ["preset", *(e.preset for e in executions)], ["steps", *(e.steps for e in executions)]]
    rows = []
    for name in metric_rows(executions):
        cells = []
        for e in executions:
            cell = _fmt(_value(e, name))
            if name.startswith(_GENERATED):
                rest = name[len(_GENERATED):]
                beside = ", ".join(f"{b} {_fmt(_value(e, f'evaluate.{b}.{rest}'))}" for b in BASELINES)
                cell += f" ({beside})"
            cells.append(cell)
        label = f"generated {name[len(_GENERATED):]}" if name.startswith(_GENERATED) else name
        rows.append([label, *cells])
    table = header + rows
    widths = [max(len(row[i]) for row in table) for i in range(len(table[0]))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
                     for row in table)


def write_csv(path: Path, executions: list[Execution]) -> Path:
    """One row per execution: run, dataset, preset, steps, then every metric and its baselines."""
    columns: list[str] = []
    for name in metric_rows(executions):
        columns.append(name)
        if name.startswith(_GENERATED):
            columns += [f"evaluate.{b}.{name[len(_GENERATED):]}" for b in BASELINES]
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["run", "run_id", "dataset", "preset", "steps", *columns])
        for e in executions:
            values = (_value(e, c) for c in columns)
            writer.writerow([e.name, e.run_id, e.dataset, e.preset, e.steps,
                             *("" if math.isnan(v) else f"{v:.6g}" for v in values)])
    return path


def write_oa_figure(path: Path, executions: list[Execution]) -> Path:
    """Bars of each dataset's OA per feature (its newest evaluated run), the real baseline as a tick."""
    import numpy as np
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    newest: dict[str, Execution] = {}
    for e in executions:
        if e.oa.get("generated"):
            newest[e.dataset] = e  # oldest first, so the last one wins
    if not newest:
        raise DmcError("compare: no evaluate run holds per-feature OA (evaluate.generated.oa.*)")
    features = sorted({f for e in newest.values() for f in e.oa["generated"]})
    fig = Figure(figsize=(9, 1.2 + 0.55 * len(features)), dpi=90)
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    height = 0.8 / len(newest)
    y = np.arange(len(features))
    for j, (dataset, e) in enumerate(sorted(newest.items())):
        offset = y + j * height
        ax.barh(offset, [e.oa["generated"].get(f, math.nan) for f in features], height=height,
                color=f"C{j}", label=f"{dataset} generated ({e.name})")
        real = e.oa.get("real", {})
        ax.scatter([real.get(f, math.nan) for f in features], offset, marker="|", s=200, color="k",
                   label="real baseline" if j == 0 else None, zorder=3)
    ax.set_yticks(y + 0.4 - height / 2, [f.replace("_", " ") for f in features], fontsize="small")
    ax.set_xlim(0, 1)
    ax.set_xlabel("overlapping area with the test set (1 is best)")
    ax.set_title("OA per feature, per dataset")
    ax.legend(fontsize="small", loc="lower right")
    fig.subplots_adjust(left=0.3, right=0.97, top=0.92, bottom=0.08)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    return path


def compare(out_dir: Path, uri: str | None = None, experiment: str = tracking.EXPERIMENT) -> dict[str, Any]:
    """Read the store, write `out_dir/compare.csv`, `compare.txt` and `compare_oa.png`, and point the
    saved comparison at the newest execution of each dataset; return the text, the files and the links
    to the runs table and to the comparison."""
    root = store.repo_root(".")
    uri = uri or store.tracking_uri(root)
    executions = read_executions(uri, experiment)
    out_dir = Path(out_dir)
    text = format_table(executions)
    with atomic_path(out_dir / "compare.txt") as tmp:
        tmp.write_text(text + "\n")
    files = [out_dir / "compare.txt", write_csv(out_dir / "compare.csv", executions),
             write_oa_figure(out_dir / "compare_oa.png", executions)]
    base = uri if uri.startswith("http") else mlflow_views.DEFAULT_BASE
    experiment_id = executions[0].experiment_id
    tracking.write_compare_view(uri, root, experiment)
    return {"text": text, "files": files, "executions": executions,
            "link": mlflow_views.runs_view_url(experiment_id, base),
            "compare_link": mlflow_views.compare_url(experiment_id, base)}
