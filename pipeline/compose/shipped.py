"""Shipped models: trained weights that come with the package, so `dmc generate` composes right after install.

A shipped model is a folder `pipeline/weights/NAME/` of two files:
- `model.pt`: the checkpoint `pipeline.model.unet.load_trained` reads (config, EMA weights, stats, diffusion,
  step), with every floating-point weight stored as bfloat16, which halves the package; they load back
  into the float32 model unchanged.
- `card.json`: what the model is and where it came from: the params of its run (as dvc.lock recorded
  them), the dvc.lock hashes of its data, its evaluation table (metrics/evaluate.json), the command that
  retrains it, the sha256 of `model.pt`, and a probe (below).

Loading a shipped model checks, in order: the card's format, the sha256 of each file the card lists, the
checkpoint itself (`weights_only=True`, and the checksum of its contents every dmc checkpoint carries,
`pipeline.model.checkpoints`), then the probe: the network's output on a fixed input, recorded
at export, must come out again. A model the code no longer reads the same way (a renamed config field, a
layer that computes something else) fails one of these with one line instead of composing noise.

`pipeline.compose.catalog.export_model` builds such a folder from a finished run of the pipeline.
"""

from __future__ import annotations

import json
import re
import shlex
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from pipeline.errors import DmcError

WEIGHTS = Path(__file__).resolve().parents[1] / "weights"
MODEL_PATH = Path("models/model.pt")  # the checkout's trained model, where the train stage writes it
DEFAULT = "bach"  # what `dmc generate` uses when the checkout has no trained model
CARD = "card.json"
WEIGHTS_FILE = "model.pt"
CARD_FORMAT = 1  # bump when the card or the shipped checkpoint changes shape; readers refuse others
NAME = re.compile(r"[a-z0-9][a-z0-9_-]*")
PROBE_VALUES = 64
PROBE_TIMESTEP = 250
# The probe runs on the CPU in float32; another thread count or a GPU moves the output by ~1e-6 relative,
# a changed layer by order 1.
PROBE_TOLERANCE = 1e-3
# Params that change how fast a run goes or where it fetches from, never what it computes: left out of
# the retrain command. Everything else the stages read is in it, so it does not depend on the defaults
# in whichever params.yaml it is run against.
SPEED_ONLY = ("urls", "download.concurrency", "download.rate_limit", "download.timeout", "download.retries",
              "download.backoff", "download.freemidi_ids", "prepare.n_jobs", "train.compile",
              "train.val_every", "train.checkpoint_every")


def find_model(start: str | Path | None = None) -> Path:
    """models/model.pt of the project: under the nearest folder above `start` (default: the cwd) that
    holds dvc.yaml, else under the checkout this package lives in."""
    here = Path.cwd() if start is None else Path(start)
    for folder in (here.resolve(), *here.resolve().parents):
        if (folder / "dvc.yaml").is_file():
            return folder / MODEL_PATH
    return Path(__file__).resolve().parents[2] / MODEL_PATH


# -- reading and checking a shipped model -------------------------------------------------------------


def shipped_names() -> list[str]:
    """Names of the models shipped in WEIGHTS (folders holding a card)."""
    if not WEIGHTS.is_dir():
        return []
    return sorted(p.name for p in WEIGHTS.iterdir() if (p / CARD).is_file())


def read_card(folder: str | Path) -> dict[str, Any]:
    """The card of a shipped-model folder, after checking its format and every file's sha256."""
    folder = Path(folder)
    try:
        card = json.loads((folder / CARD).read_text())
    except FileNotFoundError:
        raise DmcError(f"{folder}: no {CARD}; not a shipped model") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise DmcError(f"{folder / CARD}: unreadable ({err})") from None
    if not isinstance(card, dict) or card.get("format") != CARD_FORMAT:
        got = card.get("format") if isinstance(card, dict) else None
        raise DmcError(f"{folder / CARD}: card format {got!r}, this dmc reads format {CARD_FORMAT}; "
                       "install the dmc version the model was made for")
    files = card.get("files")
    if not isinstance(files, dict) or WEIGHTS_FILE not in files:
        raise DmcError(f"{folder / CARD}: lists no sha256 for {WEIGHTS_FILE}")
    for name, expected in files.items():
        if Path(name).name != name:  # a card names files in its own folder, nowhere else
            raise DmcError(f"{folder / CARD}: file {name!r} is outside the model's folder")
        path = folder / name
        if not path.is_file():
            raise DmcError(f"{path}: missing; the shipped model is incomplete")
        if _sha256(path) != expected:
            raise DmcError(f"{path}: sha256 does not match its card; the file is damaged or was replaced")
    return card


def _sha256(path: Path) -> str:
    from pipeline.files import file_digest

    return file_digest(path, "sha256")


def probe(model: torch.nn.Module) -> list[float]:
    """The network's output at PROBE_VALUES fixed positions for a fixed noisy input: a fingerprint of
    what the code computes with these weights. Independent of the schedule and the encoding."""
    width = model.config.stride * 8
    channels = model.config.features + model.config.cond_features  # and x_0, given cells (context)
    rows = max(model.config.rows_as_channels, 1)
    x = torch.randn(1, channels, rows, width, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        y = model(x, torch.tensor([PROBE_TIMESTEP])).flatten().double()
    index = torch.linspace(0, y.numel() - 1, PROBE_VALUES).round().long()
    return [float(v) for v in y[index]]


def _probe_error(values: list[float], reference: list[float]) -> float:
    a, b = torch.tensor(values, dtype=torch.float64), torch.tensor(reference, dtype=torch.float64)
    return float((a - b).norm() / b.norm().clamp_min(1e-12))


def check_shipped(folder: str | Path) -> dict[str, Any]:
    """Verify a shipped-model folder end to end (card, hashes, checkpoint, probe); returns its card."""
    from pipeline.model.unet import load_trained

    folder = Path(folder)
    card = read_card(folder)
    model = load_trained(folder / WEIGHTS_FILE, "cpu")[0]
    reference = card.get("probe", {}).get("output")
    if not isinstance(reference, list) or len(reference) != PROBE_VALUES:
        raise DmcError(f"{folder / CARD}: no probe output to check the model against")
    error = _probe_error(probe(model), reference)
    if not error <= PROBE_TOLERANCE:
        raise DmcError(f"{folder.name}: this dmc computes something else with these weights (probe off by "
                       f"{error:.2g} relative); install the dmc version the model was made for")
    return card


# -- choosing the model `dmc generate` uses -----------------------------------------------------------


@dataclass(frozen=True)
class ModelChoice:
    """A checkpoint to load, and the line to print when the user did not pick it."""

    path: Path
    notice: str = ""


def resolve_model(choice: str | Path | None = None, start: str | Path | None = None) -> ModelChoice:
    """The model `dmc generate` uses.

    None: the checkout's models/model.pt when it exists (a model trained here wins), else the shipped
    DEFAULT, announced in one line. A string that names a shipped model picks it; anything else is a
    path, either to a checkpoint or to a shipped-model folder (as `export-model` writes). Shipped models
    are verified (`check_shipped`) before they are handed out.
    """
    if choice is None:
        local = find_model(start)
        if local.is_file():
            return ModelChoice(local)
        if DEFAULT not in shipped_names():
            raise DmcError(f"no trained model at {local} and no shipped model; train one with "
                           "`dvc repro train` or pick one with --model NAME|PATH")
        folder = WEIGHTS / DEFAULT
        card = check_shipped(folder)
        return ModelChoice(folder / WEIGHTS_FILE,
                           f"generate: no model trained in this checkout; using the shipped model "
                           f"{_one_line(DEFAULT, card)}")
    text = str(choice)
    if text in shipped_names():
        check_shipped(WEIGHTS / text)
        return ModelChoice(WEIGHTS / text / WEIGHTS_FILE)
    path = Path(choice)
    if path.is_dir() and (path / CARD).is_file():
        check_shipped(path)
        return ModelChoice(path / WEIGHTS_FILE)
    if path.is_file():
        return ModelChoice(path)
    if isinstance(choice, str) and NAME.fullmatch(text):  # meant as a name, most likely
        names = ", ".join(shipped_names()) or "none"
        raise DmcError(f"--model {text}: no shipped model of that name (shipped: {names}; see `dmc models`) "
                       "and no such file")
    raise DmcError(f"no trained model at {path}; train one with `dvc repro train`")


def _one_line(name: str, card: dict[str, Any]) -> str:
    oa = card.get("evaluation", {}).get("generated.oa_mean")
    parts = [f"{card.get('preset', '?')} preset",
             f"{card.get('steps', '?')} steps on {card.get('dataset', '?')}"]
    if isinstance(oa, int | float):
        parts.append(f"oa_mean {oa:.3f}")
    if card.get("note"):
        parts.append(str(card["note"]))
    return f"{name} ({'; '.join(parts)})"


# -- what an exported folder holds: the weights' dtype, the retrain command, the commit ---------------


def _flat(params: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in params.items():
        if isinstance(value, dict):
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


_PLAIN = re.compile(r"[A-Za-z_][A-Za-z0-9_.\-/]*")


def _override(value: Any) -> str:
    """A value in the override grammar of `dvc exp run -S` (Hydra's), which reads back as the same YAML."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, list):
        return "[" + ",".join(_override(v) for v in value) + "]"
    text = str(value)
    if _PLAIN.fullmatch(text) and text.lower() not in ("true", "false", "null", "nan", "inf"):
        return text
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _shell_word(arg: str) -> str:
    if shlex.quote(arg) == arg:
        return arg
    return f'"{arg}"' if not re.search(r'["$`\\!]', arg) else shlex.quote(arg)


def retrain_command(params: dict[str, Any]) -> str:
    """`dvc exp run -S ...` that sets every param the run's stages read (but SPEED_ONLY ones), so it
    reproduces the run whatever the defaults of the params.yaml it runs against."""
    flat = _flat(params)
    keys = [k for k in flat if not any(k == s or k.startswith(s + ".") for s in SPEED_ONLY)]
    return "dvc exp run " + " ".join(f"-S {_shell_word(f'{k}={_override(flat[k])}')}" for k in keys)


def _git(root: Path, *args: str) -> str | None:
    try:
        done = subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


DTYPES = {"bfloat16": torch.bfloat16, "float32": torch.float32}


def cast_weights(state: dict[str, torch.Tensor], dtype: str = "bfloat16") -> dict[str, torch.Tensor]:
    """Floating-point tensors as `dtype` (contiguous copies, so no storage of the original is saved)."""
    return {k: v.detach().to(DTYPES[dtype]).contiguous().clone() if v.is_floating_point() else v.clone()
            for k, v in state.items()}


