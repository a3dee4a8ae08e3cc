"""What identifies one execution of the pipeline (the code, the commit, the packages) and what each
stage declares in dvc.yaml and writes (metrics JSON, per-step CSV), read from the checkout; nothing here
touches MLflow."""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import re
import subprocess
import sys
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import yaml

from pipeline.files import file_digest

# The code whose change makes a new execution; its digest is part of the grouping key.
CODE_GLOBS = ("dvc.yaml", "pipeline/**/*.py", "stages/*.py")
PACKAGES = ("torch", "numpy", "symusic", "mlflow", "dvc", "pandas", "pyarrow", "music21", "muspy")


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
