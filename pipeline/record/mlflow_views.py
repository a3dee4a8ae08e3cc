"""The views of the `dmc` experiment in `mlflow ui`, and their links: pure data, no store access.

MLflow's experiment page restores a saved view from the experiment tag `mlflow.sharedViewState.<key>`
when the link carries `?viewStateShareKey=<key>` (its own "Share" button stores the same JSON). Two views:

- `dmc-runs`, the runs table: one row per execution (tag `dmc.run=execution`), newest first, with the
  columns Dataset, oa, oa_markov, oa_real, scale, chord, steps and preset first, sized to fit a 1,600-px
  window (`columnOrder`, `columnWidths`);
- `dmc-compare`, the comparison: the chosen executions only (a run-id filter), opened on the chart view
  (`compareRunsMode=CHART` in the link) with a parallel-coordinates chart of the headline params and
  metrics and one chart per headline metric; every other metric of those runs has a deleted chart, so
  MLflow does not add one of its own.

Every link carries `workflowType=machine_learning`: MLflow 3.17 chooses between its GenAI and its
model-training layout from that URL parameter, else from the browser's last choice (localStorage key
`mlflow.workflowType_v1`, GenAI until the user flips the switch). It ignores the experiment's
`mlflow.experimentKind` tag for this, and has no server option or environment variable that sets it.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterable, Sequence
from typing import Any
from urllib.parse import urlencode

VIEW_TAG_PREFIX = "mlflow.sharedViewState."
RUNS_VIEW_KEY = "dmc-runs"
COMPARE_VIEW_KEY = "dmc-compare"
DEFAULT_BASE = "http://127.0.0.1:5000"
# The tag on parent runs that marks one pipeline execution (tracking.ROW_TAG).
ROW_FILTER = "tags.`dmc.run` = 'execution'"

# The runs table's columns, in this order, and their widths in px. MLflow's sidebar and fixed columns
# (checkbox, Run Name, Created) take about 720 px of a 1,600-px window; the first eight fit in the rest.
# Models links the logged model of the execution's train stage.
TABLE_COLUMNS: tuple[tuple[str, int], ...] = (
    ("attributes.`Dataset`", 170),
    ("metrics.`oa`", 62), ("metrics.`oa_markov`", 92), ("metrics.`oa_real`", 72),
    ("metrics.`scale`", 66), ("metrics.`chord`", 66),
    ("params.`steps`", 64), ("params.`preset`", 70),
    ("attributes.`Models`", 150), ("metrics.`kl`", 62), ("metrics.`val_loss`", 80),
)
# The comparison: the params that tell executions apart and the metrics that judge them.
COMPARE_PARAMS = ("dataset", "preset", "steps", "seq_len")
COMPARE_METRICS = ("oa", "oa_markov", "oa_real", "scale", "chord", "kl")
COMPARE_CURVES = ("train_loss", "val_loss")
# MLflow keys its chart sections by uuid; fixed ones keep the written view the same from run to run.
_MODEL_SECTION = "dmc-model-metrics"
_SYSTEM_SECTION = "dmc-system-metrics"


def view_tag(key: str) -> str:
    return f"{VIEW_TAG_PREFIX}{key}"


def runs_view() -> dict[str, Any]:
    """The runs table: executions only, newest first, the headline columns first at readable widths."""
    columns = [name for name, _ in TABLE_COLUMNS]
    return {"searchFilter": ROW_FILTER, "orderByKey": "attributes.start_time", "orderByAsc": False,
            "selectedColumns": columns, "columnOrder": columns,
            "columnWidths": {name: width for name, width in TABLE_COLUMNS}}


def _chart(kind: str, name: str, metric: str = "", deleted: bool = False, **config: Any) -> dict[str, Any]:
    # A card as MLflow serializes it (RunsChartsCardConfig); `uuid` from the name keeps it stable.
    card = {"uuid": str(uuid.uuid5(uuid.NAMESPACE_URL, f"dmc-chart:{name}")), "type": kind,
            "runsCountToCompare": 10, "metricSectionId": _MODEL_SECTION, "deleted": deleted,
            "isGenerated": False, **config}
    if metric:
        card["metricKey"] = metric
    return card


def compare_view(run_ids: Sequence[str], metric_keys: Iterable[str] = ()) -> dict[str, Any]:
    """The comparison of `run_ids`: their rows beside a chart of the headline params and metrics.

    `metric_keys` are all metrics those runs hold: each one not charted here gets a deleted chart, which
    keeps MLflow from adding a chart per metric when the view opens.
    """
    ids = ", ".join(f"'{run_id}'" for run_id in run_ids)
    charts = [_chart("PARALLEL", "parallel", selectedParams=list(COMPARE_PARAMS),
                     selectedMetrics=list(COMPARE_METRICS), showAllRuns=True)]
    charts += [_chart("BAR", name, name) for name in COMPARE_METRICS]
    charts += [_chart("LINE", name, name, lineSmoothness=0, xAxisKey="step", scaleType="linear",
                      useGlobalXaxisKey=True, useGlobalLineSmoothing=True) for name in COMPARE_CURVES]
    shown = {*COMPARE_METRICS, *COMPARE_CURVES}
    charts += [_chart("BAR", name, name, deleted=True) for name in sorted(set(metric_keys) - shown)]
    sections = [{"uuid": _MODEL_SECTION, "name": "Model metrics", "display": True, "isReordered": True,
                 "deleted": False, "isGenerated": False},
                {"uuid": _SYSTEM_SECTION, "name": "System metrics", "display": False, "isReordered": False,
                 "deleted": False, "isGenerated": False}]
    columns = [name for name, _ in TABLE_COLUMNS]
    return {"searchFilter": f"attributes.run_id IN ({ids})" if ids else ROW_FILTER,
            "orderByKey": "attributes.start_time", "orderByAsc": True,
            "selectedColumns": columns, "columnOrder": columns,
            "columnWidths": {name: width for name, width in TABLE_COLUMNS},
            "compareRunCharts": charts, "compareRunSections": sections, "isAccordionReordered": True,
            "hideEmptyCharts": False, "runListHidden": False}


def view_json(view: dict[str, Any]) -> str:
    return json.dumps(view, sort_keys=True)


def experiment_url(experiment_id: str, key: str, base: str = DEFAULT_BASE, mode: str = "") -> str:
    """The experiment page in the model-training layout with the saved view `key` (`mode`: TABLE/CHART)."""
    query = {"viewStateShareKey": key, **({"compareRunsMode": mode} if mode else {}),
             "workflowType": "machine_learning"}
    return f"{base.rstrip('/')}/#/experiments/{experiment_id}/runs?{urlencode(query)}"


def runs_view_url(experiment_id: str, base: str = DEFAULT_BASE) -> str:
    """The link that opens the experiment's runs table in the saved view (model-training layout)."""
    return experiment_url(experiment_id, RUNS_VIEW_KEY, base)


def compare_url(experiment_id: str, base: str = DEFAULT_BASE) -> str:
    """The link that opens the saved comparison on MLflow's chart view."""
    return experiment_url(experiment_id, COMPARE_VIEW_KEY, base, mode="CHART")


def compare_runs_url(experiment_id: str, run_ids: Sequence[str], base: str = DEFAULT_BASE) -> str:
    """MLflow's Compare page of `run_ids` (its tables of every param and metric; its plots start empty
    or on whatever params differ, and no URL parameter chooses them)."""
    # MLflow parses the query with the leading "?" kept on the first key: `runs` must come first.
    query = urlencode({"runs": json.dumps(list(run_ids)), "experiments": json.dumps([experiment_id])})
    return f"{base.rstrip('/')}/#/compare-runs?{query}&workflowType=machine_learning"
