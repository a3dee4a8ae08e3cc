"""Stage `evaluate`: generated samples, two baselines and real music, each measured against the test split
(`pipeline.evaluate.evaluation`), written as flat metrics, density tables and a plot. With `layout: grid`
the test split is the grid windows the model was trained on, and the sets are also scored for how their voices
sound together (`evaluate_grid_samples`)."""

from __future__ import annotations

import csv
import math
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from pipeline.data.prepared import load_stats
from pipeline.evaluate import metrics
from pipeline.evaluate.evaluation import SETS, VOICE_LEADING, evaluate_grid_samples, evaluate_samples
from pipeline.files import atomic_path, write_json
from pipeline.params import load_params
from stages import run

SAMPLES = Path("samples")
PREPARED = Path("data/prepared")
METRICS = Path("metrics/evaluate.json")
TABLES = Path("metrics/evaluate")
PLOT = Path("plots/evaluate.png")


def main() -> None:
    params = load_params()
    p = params["evaluate"]
    stats = load_stats(PREPARED)
    groups = list(stats["instruments"])
    grid = stats.get("layout") == "grid"  # what the grid model made, against the grid windows it learned
    if grid:
        result = evaluate_grid_samples(PREPARED, SAMPLES, params["seed"], p["n_baseline"], p["frame_beats"],
                                       p["hop_beats"])
    else:
        result = evaluate_samples(PREPARED, SAMPLES, params["seed"], p["n_baseline"], p["frame_beats"],
                                  p["hop_beats"], notes_per_piece=params["sample"]["length"])
    flat, reports, rejected = result.flat, result.reports, result.rejected
    for group, why in result.per_instrument.items():
        print(f"evaluate: {group}: {why}; no per-instrument figures")
    write_json(METRICS, flat)
    summary = metrics.summary_rows(flat, ["test", *SETS])
    tables = metrics.density_tables(reports)
    with atomic_path(TABLES) as tmp:
        _write_csv(tmp / "summary.csv", summary)
        _write_csv(tmp / "statistics.csv", [
            {"statistic": s, **{f"{k}.{m}": flat.get(f"{k}.{s}.{m}", math.nan) for k in ["test", *SETS]
                                for m in ("mean", "std")}} for s in metrics.STATISTICS])
        for feature, table in tables.items():
            _write_csv(tmp / "densities" / f"{feature}.csv",
                       [dict(zip(table, row, strict=True)) for row in zip(*table.values(), strict=True)])
    _write_plot(PLOT, tables, reports)
    for row in summary:
        print("evaluate: " + "  ".join(f"{k}={v:.3f}" if isinstance(v, float) else f"{v:9s}"
                                       for k, v in row.items()))
    for group in groups if len(groups) > 1 else []:
        print(f"evaluate: {group}: oa_mean " + "  ".join(
            f"{k}={flat.get(f'{k}.{group}.oa_mean', math.nan):.3f}" for k in SETS))
    for column in VOICE_LEADING if grid else ():
        print(f"evaluate: {column} " + "  ".join(f"{k}={flat.get(f'{k}.{column}', math.nan):.3f}"
                                                   for k in ["test", *SETS]))
    constant = metrics.constant_features(reports)
    if constant:
        print(f"evaluate: oa_mean and kl_mean leave out {', '.join(constant)}: the same in every test piece "
              "(oa_mean_all keeps them)")
    print("evaluate: notes merged (one pitch twice at one onset): " + "  ".join(
        f"{k}={int(flat[f'{k}.merged_notes'])}" for k in ["test", *SETS]))
    if not flat.get("test.framewise.pitch.pairs"):
        print(f"evaluate: no framewise figures: no test piece is {p['frame_beats'] + p['hop_beats']:g} beats "
              "long (two frames, evaluate.frame_beats and evaluate.hop_beats); shorten them")
    if rejected:
        print(f"evaluate: {len(rejected)} sample(s) without notes count as empty: {', '.join(rejected)}")


def _write_csv(path: Path, rows: list[Mapping[str, object]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows({k: f"{v:.6g}" if isinstance(v, float) else v for k, v in row.items()}
                         for row in rows)


def _write_plot(path: Path, tables: Mapping[str, Mapping[str, np.ndarray]],
                reports: Mapping[str, metrics.SetReport]) -> None:
    """Yang & Lerch's density curves per feature, OA per feature, and the framewise overlaps, per set."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(15, 17), dpi=80)
    FigureCanvasAgg(fig)
    # Fixed margins: tight_layout measures every tick label and costs seconds on a busy machine.
    fig.subplots_adjust(left=0.14, right=0.98, top=0.97, bottom=0.04, hspace=0.3, wspace=0.22)
    axes = fig.subplots(4, 3).ravel()
    for ax, (feature, table) in zip(axes, tables.items(), strict=False):
        for name, density in table.items():
            if name != "distance":
                ax.plot(table["distance"], density, "k--" if name == "test" else "-",
                        label="test (intra-set)" if name == "test" else f"{name} → test")
        ax.set_title(feature.replace("_", " "))
        ax.set_xlabel("distance")
    axes[0].legend(fontsize="small")
    features = list(metrics.FEATURES)
    width = 0.8 / len(SETS)
    for j, name in enumerate(SETS):
        oa = [reports[name].similarity[f].oa for f in features]
        axes[9].barh(np.arange(len(features)) + j * width, oa, height=width, label=name, color=f"C{j}")
    axes[9].set_yticks(np.arange(len(features)) + 0.4 - width / 2, [f.replace("_", " ") for f in features],
                       fontsize="x-small")
    axes[9].set_title("overlapping area with test")
    for ax, feature in zip(axes[10:], metrics.FRAME_FEATURES, strict=True):
        overlaps = {name: reports[name].overlaps[feature] for name in ("test", *SETS)}
        lowest = min((float(v.min()) for v in overlaps.values() if len(v)), default=0.0)
        bins = np.linspace(min(lowest, 0.95), 1.0, 21)
        for j, (name, values) in enumerate(overlaps.items()):
            style = {"color": "k", "linestyle": "--"} if name == "test" else {"color": f"C{j - 1}"}
            if len(values):
                ax.hist(values, bins=bins, density=True, histtype="step", label=name, **style)
        ax.set_title(f"adjacent-frame overlap: {feature}")
    if axes[10].get_legend_handles_labels()[0]:  # no frame pairs, no histograms
        axes[10].legend(fontsize="small")
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")


if __name__ == "__main__":
    run("evaluate", main)
