"""The models `dmc` knows, and how a finished run becomes a shipped model: `dmc models` (the checkout's
trained model and each shipped one, or one card in words) and `dmc export-model`, which builds a shipped
folder (`pipeline.compose.shipped`) from a run whose dvc.lock ties the weights, the samples and the
evaluation table together.
"""

from __future__ import annotations

import datetime
import json
from pathlib import Path
from typing import Any

from pipeline.compose.shipped import (
    CARD,
    CARD_FORMAT,
    DEFAULT,
    DTYPES,
    NAME,
    PROBE_TIMESTEP,
    WEIGHTS,
    WEIGHTS_FILE,
    _git,
    _probe_error,
    _sha256,
    cast_weights,
    check_shipped,
    find_model,
    probe,
    read_card,
    retrain_command,
    shipped_names,
)
from pipeline.errors import DmcError

# -- listing: `dmc models` ----------------------------------------------------------------------------


def list_models(start: str | Path | None = None) -> list[dict[str, Any]]:
    """One row per model `dmc generate` can use: the checkout's trained model (when there is one), then
    each shipped model. `default` marks the one used without --model."""
    rows = []
    local = find_model(start)
    if local.is_file():
        rows.append(_local_row(local))
    for name in shipped_names():
        folder = WEIGHTS / name
        try:
            card = read_card(folder)
        except DmcError as err:
            rows.append({"name": name, "dataset": "?", "preset": "?", "steps": "?", "oa_mean": None,
                         "source": f"shipped, unusable: {err}"})
            continue
        source = f"shipped ({folder})"
        if card.get("note"):
            source += f"; {card['note']}"
        rows.append({"name": name, "dataset": card.get("dataset", "?"), "preset": card.get("preset", "?"),
                     "steps": card.get("steps", "?"),
                     "oa_mean": card.get("evaluation", {}).get("generated.oa_mean"), "source": source})
    default = 0 if local.is_file() else next((i for i, r in enumerate(rows) if r["name"] == DEFAULT), None)
    for i, row in enumerate(rows):
        row["default"] = i == default
    return rows


def _local_row(path: Path) -> dict[str, Any]:
    """The checkout's model: steps and preset from the checkpoint; dataset and oa_mean from dvc.lock and
    metrics/evaluate.json, only when dvc.lock ties them to this very file."""
    from pipeline.model.unet import PRESETS, UNetConfig

    root = path.parent.parent
    row: dict[str, Any] = {"name": str(path), "dataset": "?", "preset": "?", "steps": "?", "oa_mean": None,
                           "source": "trained in this checkout"}
    from pipeline.model.checkpoints import read_checkpoint
    from pipeline.model.unet import MODEL_ADVICE

    try:
        ckpt = read_checkpoint(path, MODEL_ADVICE)
        row["steps"] = int(ckpt["step"])
        config = UNetConfig.from_dict(ckpt["config"])
        # A preset is the network's size: what the data's code and the objective ask for is not part of it.
        fitted = {k: getattr(config, k) for k in ("features", "cond_features", "out_features", "causal")}
        same = [name for name, p in PRESETS.items() if UNetConfig.from_dict({**vars(p), **fitted}) == config]
        row["preset"] = same[0] if same else "custom"
    except DmcError as err:  # listing must not stop at one bad file; it says what is wrong instead
        row["source"] += f", unusable: {str(err).removeprefix(f'{path}: ').split(';')[0]}"
        return row
    except (KeyError, TypeError, ValueError) as err:
        row["source"] += f", unreadable: {type(err).__name__}"
        return row
    lock = _read_lock(root / "dvc.lock", required=False)
    if lock and _out_md5(lock, "train", "models/model.pt") == _md5(path):
        row["dataset"] = _lock_params(lock).get("dataset", "?")
        try:
            row["oa_mean"] = evaluation_of(root, path, lock).get("generated.oa_mean")
        except DmcError:
            row["source"] += ", not evaluated"
    else:
        row["source"] += ", not the model dvc.lock records"
    return row


def format_models(rows: list[dict[str, Any]]) -> str:
    """The `dmc models` table; `*` marks the model `dmc generate` uses without --model."""
    if not rows:
        return "no models: none trained in this checkout and none shipped"
    table = [("", "NAME", "DATASET", "PRESET", "STEPS", "OA_MEAN", "SOURCE")]
    for r in rows:
        oa = f"{r['oa_mean']:.3f}" if isinstance(r["oa_mean"], int | float) else "-"
        table.append(("*" if r["default"] else "", str(r["name"]), str(r["dataset"]), str(r["preset"]),
                      str(r["steps"]), oa, str(r["source"])))
    widths = [max(len(row[i]) for row in table) for i in range(len(table[0]) - 1)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row[:-1], widths, strict=True)) + "  " + row[-1]
             for row in table]
    return "\n".join(line.rstrip() for line in lines)


def describe_model(name: str) -> str:
    """`dmc models NAME`: a shipped model's card in words: provenance, evaluation next to the baselines,
    and the command that retrains it."""
    if name not in shipped_names():
        names = ", ".join(shipped_names()) or "none"
        raise DmcError(f"no shipped model named {name!r} (shipped: {names})")
    folder = WEIGHTS / name
    card = read_card(folder)
    lines = [f"{name}: {card.get('preset')} preset, {card.get('steps')} steps on {card.get('dataset')}"
             + (f" ({card['note']})" if card.get("note") else ""),
             f"  files: {folder} ({', '.join(f'{f} sha256 {h[:12]}' for f, h in card['files'].items())})"]
    source = card.get("source", {})
    lines.append(f"  from: git {source.get('git_commit') or '?'}"
                 + (" (uncommitted changes)" if source.get("git_dirty") else "")
                 + f", exported {source.get('exported', '?')}")
    lines.append("  data (dvc.lock md5): " + ", ".join(f"{k} {v}" for k, v in card.get("data", {}).items()))
    evaluation = card.get("evaluation", {})
    sets = [s for s in ("generated", "markov", "shuffle", "real", "test") if f"{s}.oa_mean" in evaluation]
    if sets:
        lines.append("  evaluation (metrics/evaluate.json of the run; overlap and KL with the test set):")
        lines.append("    " + "  ".join(f"{s:>9}" for s in ["set", *sets]))
        for metric in ("oa_mean", "kl_mean"):
            lines.append("    " + "  ".join([f"{metric:>9}", *(f"{evaluation[f'{s}.{metric}']:>9.4f}"
                                                              for s in sets)]))
    harmony = [s for s in ("model", "markov", "bach", "unconditional")
               if f"{s}.consonant_fraction" in evaluation]
    if harmony:  # a four-voice model's card holds its `dmc evaluate-harmony` table
        lines.append(f"  evaluate-harmony ({evaluation.get('files', '?')} test melodies, "
                     f"{', '.join(evaluation.get('kept', []))} kept; unconditional: composed from scratch):")
        lines.append("    " + "  ".join(f"{s:>16}" for s in ["set", *harmony]))
        for metric in ("consonant_fraction", "parallel_fifths", "parallel_octaves"):
            lines.append("    " + "  ".join([f"{metric.replace('_fraction', ''):>16}",
                                             *(f"{evaluation[f'{s}.{metric}']:>16.3f}" for s in harmony)]))
    if card.get("weights_probe_error"):
        lines.append(f"  {card.get('weights_dtype')} weights move the network's output by "
                     f"{card['weights_probe_error']:.2g} relative; the table is of the float32 weights")
    lines.append(f"  retrain: {card.get('retrain', '?')}")
    return "\n".join(lines)


# -- export: a finished run -> a shipped-model folder -------------------------------------------------


def _md5(path: Path) -> str:
    from pipeline.files import file_digest

    return file_digest(path, "md5")


def _read_lock(path: Path, required: bool = True) -> dict[str, Any] | None:
    from pipeline.params import parse

    try:
        lock = parse(path.read_text())  # YAML 1.2 floats, as DVC writes them: `1e-05` is a number
    except FileNotFoundError:
        if not required:
            return None
        raise DmcError(f"{path}: no such file; export the model of a finished `dvc repro`") from None
    except (OSError, DmcError) as err:
        raise DmcError(f"{path}: unreadable ({err})") from None
    if not isinstance(lock, dict) or not isinstance(lock.get("stages"), dict):
        if not required:
            return None
        raise DmcError(f"{path}: not a dvc.lock (no stages)")
    return lock


def _entries(lock: dict[str, Any], stage: str, kind: str) -> dict[str, str]:
    stage_lock = lock["stages"].get(stage) or {}
    return {e["path"]: e.get("md5") for e in stage_lock.get(kind) or []
            if isinstance(e, dict) and "path" in e}


def _out_md5(lock: dict[str, Any], stage: str, path: str) -> str | None:
    return _entries(lock, stage, "outs").get(path)


def _lock_params(lock: dict[str, Any]) -> dict[str, Any]:
    """The params every stage ran with, as dvc.lock recorded them, merged into one nested dict."""
    merged: dict[str, Any] = {}
    for stage in lock["stages"].values():
        for key, value in ((stage.get("params") or {}).get("params.yaml") or {}).items():
            *parents, leaf = key.split(".")
            node = merged
            for part in parents:
                node = node.setdefault(part, {})
            if isinstance(value, dict) and isinstance(node.get(leaf), dict):
                node[leaf].update(value)
            else:
                node[leaf] = value
    return merged


def evaluation_of(root: Path, model_path: Path, lock: dict[str, Any]) -> dict[str, Any]:
    """metrics/evaluate.json, once dvc.lock shows it was computed from the samples of this model."""
    md5 = _md5(model_path)
    chain = [
        (_out_md5(lock, "train", "models/model.pt"), md5,
         "models/model.pt is not the model dvc.lock records"),
        (_entries(lock, "sample", "deps").get("models/model.pt"), md5,
         "the samples in dvc.lock were not drawn from this model"),
        (_entries(lock, "evaluate", "deps").get("samples"), _out_md5(lock, "sample", "samples"),
         "the evaluation in dvc.lock is not of its samples"),
        (_entries(lock, "evaluate", "deps").get("data/prepared"), _entries(lock, "train", "deps").get(
            "data/prepared"), "the evaluation in dvc.lock used other data than the training"),
    ]
    metrics = root / "metrics" / "evaluate.json"
    for recorded, actual, problem in chain:
        if recorded is None or recorded != actual:
            raise DmcError(f"{problem}; run `dvc repro` to the end (or `dvc exp apply` the run) first")
    if not metrics.is_file() or _out_md5(lock, "evaluate", "metrics/evaluate.json") != _md5(metrics):
        raise DmcError(f"{metrics} is not the evaluation dvc.lock records; run `dvc repro` to the end first")
    return json.loads(metrics.read_text())


def export_model(name: str, root: str | Path = ".", checkpoint: str | Path | None = None,
                 dest: str | Path | None = None, note: str = "", dtype: str = "bfloat16") -> Path:
    """Write the shipped-model folder `dest/NAME` (default: ROOT/pipeline/weights/NAME) from the finished
    run in checkout ROOT: its models/model.pt (or `checkpoint`), dvc.lock and metrics. The weights are
    stored as `dtype` (bfloat16 halves the file; the card records how far that moves the output). Atomic:
    an error leaves any previous folder of that name as it was."""
    from pipeline.files import atomic_path
    from pipeline.model.checkpoints import read_checkpoint, write_checkpoint
    from pipeline.model.unet import MODEL_ADVICE, UNet, UNetConfig, load_trained

    if not NAME.fullmatch(name):
        raise DmcError(f"model name {name!r}: use lowercase letters, digits, - and _")
    if dtype not in DTYPES:
        raise DmcError(f"--dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    root = Path(root)
    model_path = Path(checkpoint) if checkpoint is not None else root / "models" / "model.pt"
    if not model_path.is_file():
        raise DmcError(f"no trained model at {model_path}; run `dvc repro` first")
    lock = _read_lock(root / "dvc.lock")
    evaluation = evaluation_of(root, model_path, lock)
    params = _lock_params(lock)
    load_trained(model_path, "cpu")  # refuse a damaged or incompatible checkpoint before writing anything
    ckpt = read_checkpoint(model_path, MODEL_ADVICE)
    ema = cast_weights(ckpt["ema"], dtype)
    config = UNetConfig.from_dict(ckpt["config"])
    full, shipped = UNet(config).eval(), UNet(config).eval()
    full.load_state_dict(ckpt["ema"])
    shipped.load_state_dict(ema)
    output = probe(shipped)
    train_metrics = root / "metrics" / "train.json"
    card = {
        "format": CARD_FORMAT,
        "name": name,
        "note": note,
        "dataset": params.get("dataset"),
        "preset": params.get("preset"),
        "steps": int(ckpt["step"]),
        "seq_len": ckpt["stats"].get("seq_len"),
        "parameters": sum(p.numel() for p in shipped.parameters()),
        "weights_dtype": dtype,
        "files": {},
        "data": {"data/manifest.json": _entries(lock, "prepare", "deps").get("data/manifest.json"),
                 "data/prepared": _entries(lock, "train", "deps").get("data/prepared")},
        "params": params,
        "retrain": retrain_command(params),
        "evaluation": evaluation,
        "train": json.loads(train_metrics.read_text()) if train_metrics.is_file() else None,
        "source": {"model_md5": _md5(model_path), "git_commit": _git(root, "rev-parse", "HEAD"),
                   "git_dirty": bool(_git(root, "status", "--porcelain", "--untracked-files=no")),
                   "exported": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")},
        "probe": {"timestep": PROBE_TIMESTEP, "output": output},
        # How far storing the weights as `dtype` moves the network's output (0 for float32).
        "weights_probe_error": round(_probe_error(output, probe(full)), 6),
    }
    target = Path(dest) / name if dest is not None else root / "pipeline" / "weights" / name
    with atomic_path(target) as tmp:
        tmp.mkdir()
        write_checkpoint(tmp / WEIGHTS_FILE, {"config": ckpt["config"], "ema": ema, "stats": ckpt["stats"],
                                              "diffusion": ckpt["diffusion"], "step": ckpt["step"]})
        card["files"] = {WEIGHTS_FILE: _sha256(tmp / WEIGHTS_FILE)}
        (tmp / CARD).write_text(json.dumps(card, indent=2) + "\n")
        check_shipped(tmp)  # what we ship must load, here and now
    return target
