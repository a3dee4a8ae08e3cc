"""Load and validate params.yaml: types, ranges, and one-line errors that name the key."""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping
from fractions import Fraction
from pathlib import Path
from typing import Any

import yaml

from pipeline.data.encoding import ORIGINAL, PITCH, PITCH_CODES, SCALE, STORED, TIME
from pipeline.data.keys import KEYS
from pipeline.errors import DmcError

# PyYAML follows YAML 1.1, where `1e-06` (no dot) is a string. DVC writes `-S lr=1e-6` exactly so.
_FLOAT = re.compile(
    r"^[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?$|^[-+]?\.(?:inf|Inf|INF)$|^\.(?:nan|NaN|NAN)$"
)


class _Loader(yaml.SafeLoader):
    pass


_Loader.add_implicit_resolver("tag:yaml.org,2002:float", _FLOAT, list("-+0123456789."))

DATASETS = ("bach", "bach-satb", "renaissance", "folder", "maestro", "lakh", "classical", "final-fantasy",
            "freemidi")
# The model's levers by name. Not imported from pipeline.model: that imports torch, and params validate
# without it (the validate stage, `dmc` commands that only read params). tests/test_params.py pins each
# to the code that acts on it (pipeline.model.unet.PRESETS, pipeline.model.diffusion).
PRESETS = ("tiny", "compact", "small", "full")
SCHEDULES = ("linear", "cosine")
PREDICTIONS = ("epsilon", "v", "x0", "softmax", "hybrid")
LOSS_WEIGHTS = ("none", "min_snr")
SAMPLERS = ("ddpm", "ddim", "dpm++", "unipc")
GUARDS = ("clip", "step_clip", "dynamic", "none")
VOICES_AS = ("channels", "rows")  # pipeline.model.voice_training.grid_config


def _number(lo: float | None = None, hi: float | None = None, integer: bool = False, lo_open: bool = False):
    def check(v: Any) -> str | None:
        if isinstance(v, bool) or not isinstance(v, int | float) or (integer and not isinstance(v, int)):
            return f"must be {'an integer' if integer else 'a number'}, got {v!r}"
        if not math.isfinite(v):
            return f"must be finite, got {v!r}"
        if lo is not None and (v <= lo if lo_open else v < lo):
            return f"must be {'>' if lo_open else '>='} {lo}, got {v!r}"
        if hi is not None and v > hi:
            return f"must be <= {hi}, got {v!r}"
        return None

    return check


def _choice(*options: str):
    def check(v: Any) -> str | None:
        return None if v in options else f"must be one of {', '.join(options)}; got {v!r}"

    return check


def _kind(t: type, what: str):
    def check(v: Any) -> str | None:
        return None if isinstance(v, t) and not isinstance(v, bool) or t is bool and isinstance(v, bool) \
            else f"must be {what}, got {v!r}"

    return check


def _int_list(lo: int, hi: int):
    def check(v: Any) -> str | None:
        if not isinstance(v, list) or not v or not all(isinstance(x, int) and lo <= x <= hi for x in v):
            return f"must be a non-empty list of integers in [{lo}, {hi}], got {v!r}"
        return None

    return check


def _str_list(v: Any) -> str | None:
    if not isinstance(v, list) or not v or not all(isinstance(x, str) and x for x in v):
        return f"must be a non-empty list of names, got {v!r}"
    if len(set(v)) != len(v):
        return f"must not repeat a name, got {v!r}"
    return None


def _seq_len(v: Any) -> str | None:
    problem = _number(8, integer=True)(v)
    if problem or v % 8 == 0:
        return problem
    return f"must be a multiple of 8 (the U-Net pools three times), got {v}"


# pipeline.compose.decode.TICKS_PER_QUARTER, the resolution samples are written at (not imported: that
# pulls in torch, and the validate stage checks params without it). tests/test_params.py pins the two as
# equal.
SAMPLE_TICKS_PER_QUARTER = 480


def _grid(v: Any) -> str | None:
    """"", "auto" (the training data's own grid) or a note value such as 1/16 that is a whole number of
    ticks (as sampling.parse_quantize)."""
    if not isinstance(v, str):
        return f"must be \"\", \"auto\" or a note value such as 1/16, got {v!r}"
    if v.strip() in ("", "auto"):
        return None
    try:
        value = Fraction(v.strip())
    except (ValueError, ZeroDivisionError):
        return f"must be \"\" or a note value such as 1/16, got {v!r}"
    if value <= 0 or (value * 4 * SAMPLE_TICKS_PER_QUARTER).denominator != 1:
        return f"{v} is not a whole number of ticks at {SAMPLE_TICKS_PER_QUARTER} per quarter note"
    return None


_POS = _number(0, lo_open=True)
_POS_INT = _number(1, integer=True)
_NONNEG_INT = _number(0, integer=True)
_FRACTION = _number(0, 1)
_STR = _kind(str, "a string")
_BOOL = _kind(bool, "true or false")

SCHEMA: dict[str, Callable[[Any], str | None]] = {
    "dataset": _choice(*DATASETS),
    "raw_dir": _STR,
    "seq_len": _seq_len,
    "seed": _NONNEG_INT,
    "preset": _choice(*PRESETS),
    "steps": _POS_INT,
    "batch_size": _POS_INT,
    "lr": _POS,
    "lr_final": _POS,
    "instruments": _str_list,
    "layout": _choice("notes", "grid"),
    "prepare.programs": _int_list(0, 127),
    "prepare.max_duration": _POS,
    "prepare.max_delta": _POS,
    "prepare.threshold_policy": _choice("segment", "file"),
    "prepare.hop": _NONNEG_INT,
    "prepare.min_instruments": _POS_INT,
    "prepare.split.train": _FRACTION,
    "prepare.split.val": _FRACTION,
    "prepare.split.test": _FRACTION,
    "prepare.n_jobs": _NONNEG_INT,
    "train.lr_switch": _FRACTION,
    "train.weight_decay": _number(0),
    "train.grad_clip": _number(0),
    "train.ema_decay": _FRACTION,
    "train.val_every": _POS_INT,
    "train.checkpoint_every": _POS_INT,
    "train.compile": _BOOL,
    "train.graph": _BOOL,
    "train.causal": _BOOL,
    "diffusion.timesteps": _POS_INT,
    "diffusion.beta_start": _number(0, 1, lo_open=True),
    "diffusion.beta_end": _number(0, 1, lo_open=True),
    "diffusion.schedule": _choice(*SCHEDULES),
    "diffusion.prediction": _choice(*PREDICTIONS),
    "diffusion.loss_weight": _choice(*LOSS_WEIGHTS),
    "diffusion.min_snr_gamma": _POS,
    "features.pitch": _choice(*PITCH),
    "features.time": _choice(*TIME),
    "features.scale": _choice(*SCALE),
    "features.chord": _BOOL,
    "diffusion.self_condition": _BOOL,
    "diffusion.inpainting": _BOOL,
    "train.transpose": _number(0, 11, integer=True),
    "train.key": _choice(*KEYS),
    "train.voices": _choice(*VOICES_AS),
    "sample.n": _POS_INT,
    "sample.sampler": _choice(*SAMPLERS),
    "sample.guard": _choice(*GUARDS),
    "sample.chord_snap": _number(0),
    "sample.steps": _POS_INT,
    "sample.eta": _number(0),
    "sample.length": _POS_INT,
    "sample.tempo": _POS,
    "sample.quantize": _grid,
    "sample.audio": _choice("", "wav", "ogg", "mp3"),
    "sample.plot": _BOOL,
    "evaluate.n_baseline": _POS_INT,
    "evaluate.frame_beats": _POS,
    "evaluate.hop_beats": _POS,
    "download.concurrency": _POS_INT,
    "download.rate_limit": _POS,
    "download.timeout": _POS,
    "download.retries": _NONNEG_INT,
    "download.backoff": _number(0),
    "download.freemidi_ids": _POS_INT,
    "download.contact": _STR,
    "download.max_extract_gb": _POS,
    "download.max_ratio": _number(1),
}


def _url(v: Any) -> str | None:
    """An http:// or https:// URL with a host: what the downloader can fetch."""
    from urllib.parse import urlsplit

    try:
        if isinstance(v, str) and re.match(r"https?://", v, re.IGNORECASE) and urlsplit(v).hostname:
            return None
    except ValueError:  # such as an unclosed `[` of an IPv6 address
        pass
    return f"must be an http:// or https:// URL, got {v!r}"


# One URL per downloadable dataset (an archive, or a site's base URL).
_URL_KEYS = ("maestro", "lakh", "classical", "final-fantasy", "freemidi")
SCHEMA.update({f"urls.{name}": _url for name in _URL_KEYS})
_DIGEST_LENGTHS = {"md5": 32, "sha1": 40, "sha256": 64}


def _checksum(v: Any) -> str | None:
    """"" (use the dataset's published checksum) or `<algorithm>:<hex digest>`."""
    if v == "":
        return None
    algorithm, _, digest = str(v).partition(":") if isinstance(v, str) else ("", "", "")
    if _DIGEST_LENGTHS.get(algorithm) != len(digest) or not re.fullmatch(r"[0-9a-fA-F]+", digest):
        return f"must be \"\" or md5:/sha1:/sha256: followed by the hex digest, got {v!r}"
    return None


SCHEMA.update({f"download.checksums.{name}": _checksum for name in ("maestro", "lakh")})


def flatten(params: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """`{"train": {"lr_switch": 0.75}}` -> `{"train.lr_switch": 0.75}`; lists stay values."""
    flat: dict[str, Any] = {}
    for key, value in params.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten(value, f"{name}."))
        else:
            flat[name] = value
    return flat


def validate(params: Mapping[str, Any]) -> dict[str, Any]:
    """Check every key against SCHEMA; raise DmcError naming the first bad key. `features: original`
    comes back spelled out as the original's three encodings."""
    params = dict(params)
    if params.get("features") == "original":
        params["features"] = dict(ORIGINAL)
    flat = flatten(params)
    for key in flat:
        if key not in SCHEMA:
            if flat[key] is None and any(k.startswith(f"{key}.") for k in SCHEMA):  # `train:` and no keys
                raise DmcError(f"params: section '{key}' is empty; give its keys, as the repository's "
                               "params.yaml does")
            raise DmcError(f"params: unknown key '{key}'")
    for key, check in SCHEMA.items():
        if key not in flat:
            raise DmcError(f"params: missing key '{key}'")
        problem = check(flat[key])
        if problem:
            raise DmcError(f"params: '{key}' {problem}")
    split = params["prepare"]["split"]
    if abs(sum(split.values()) - 1.0) > 1e-6:
        raise DmcError(f"params: 'prepare.split' fractions must sum to 1, got {sum(split.values()):g}")
    if split["train"] <= 0:
        raise DmcError("params: 'prepare.split.train' must be > 0")
    if params["diffusion"]["beta_start"] >= params["diffusion"]["beta_end"]:
        raise DmcError("params: 'diffusion.beta_start' must be below 'diffusion.beta_end'")
    f = params["features"]
    lattice = f["pitch"] in PITCH_CODES or f["time"] in STORED
    if lattice and f["scale"] != "symmetric":
        raise DmcError(f"params: 'features.scale' must be symmetric with the lattice codes (pitch "
                       f"{f['pitch']}, time {f['time']}), got {f['scale']!r}")
    d = params["diffusion"]
    if d["inpainting"] and params["layout"] != "grid":
        raise DmcError("params: 'diffusion.inpainting' trains on the grid layout's voices; set layout: grid "
                       "or inpainting: false")
    if d["prediction"] == "softmax":
        if params["layout"] == "notes" and not (lattice or f["chord"]):  # a grid cell is always categorical
            raise DmcError("params: 'diffusion.prediction' softmax predicts over a lattice code's classes; "
                           "choose features.pitch helix or pitch_class, time grid, or chord true")
        if d["loss_weight"] != "none":
            raise DmcError("params: 'diffusion.loss_weight' must be none with prediction softmax "
                           f"(a cross-entropy), got {d['loss_weight']!r}")
    if d["prediction"] == "hybrid":
        if params["layout"] != "notes" or not (f["time"] == "classes" or f["pitch"] == "pitch_class"):
            raise DmcError("params: 'diffusion.prediction' hybrid predicts x_0 for one-hot classes; choose "
                           "layout notes with features.time classes or features.pitch pitch_class")
        if d["loss_weight"] != "none":
            raise DmcError("params: 'diffusion.loss_weight' must be none with prediction hybrid, got "
                           f"{d['loss_weight']!r}")
    return params


def parse(text: str) -> dict[str, Any]:
    """Parse YAML with YAML 1.2 floats (so `1e-06` is a number)."""
    try:
        data = yaml.load(text, Loader=_Loader)
    except yaml.YAMLError as err:
        raise DmcError(f"params: not valid YAML ({str(err).splitlines()[0]})") from None
    if not isinstance(data, dict):
        raise DmcError("params: the file must hold a mapping of keys")
    return data


def load_params(path: str | Path = "params.yaml") -> dict[str, Any]:
    """Read and validate params.yaml; every error is one line naming the key."""
    path = Path(path)
    if not path.is_file():
        raise DmcError(f"params: no such file {path}")
    return validate(parse(path.read_text()))
