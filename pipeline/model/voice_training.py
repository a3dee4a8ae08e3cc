"""Prepare and train the grid layout (`pipeline.data.voices`): four-voice files -> grid windows -> a U-Net.

Prepare reads each file's voices (`instruments`, found as `pipeline.data.instruments` finds them; a file must
have all of them), lays them on the data's grid (the coarsest of `pipeline.data.encoding.GRIDS` that 99% of
onsets and durations lie on: 1/4 beat for the chorales), snapping the few notes off it, and cuts windows
of `seq_len` steps every `prepare.hop` steps (the last one padded with rests). Files go to train, val and
test by `pipeline.data.segments.split_of`, as in the note layout, so both layouts test on the same chorales.
Windows are kept symbolic (pitch and state per cell); training encodes each batch after moving it to a
random key (up to `train.transpose` semitones, where every voice stays inside its train range), and the
network is the project's U-Net with CHANNELS input channels, non-causal: a voice at step j hears every
voice at every step, which inpainting a melody needs.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from pipeline.data import voices
from pipeline.data.rows import RowNotes, read_rows
from pipeline.errors import DmcError
from pipeline.files import atomic_path
from pipeline.threads import follow_load

GRID_FILE = "grid.npz"
FILES_FILE = "grid_files.json"  # each kept file's split, for evaluate-harmony
STATS_FILE = "stats.json"
LAYOUTS = ("notes", "grid")
VOICES_AS = ("channels", "rows")  # how the grid U-Net reads the voices (grid_config)


def detect_grid(files: Sequence[Sequence[RowNotes | None]]) -> float:
    """The coarsest candidate grid (beats) that GRID_SHARE of all onsets and durations lie on."""
    from pipeline.data.encoding import GRID_SHARE, GRIDS

    times = np.concatenate([t for rows in files for r in rows if r is not None for t in (r.onset, r.duration)]
                           or [np.zeros(0)])
    if not len(times):
        raise DmcError("grid layout: no notes to find the grid of")
    for grid in GRIDS:
        if np.mean(np.abs(times / grid - np.rint(times / grid)) < 1e-6) >= GRID_SHARE:
            return grid
    raise DmcError(f"grid layout: the notes lie on none of the grids {', '.join(f'{g:.4g}' for g in GRIDS)} "
                   "(beats); the grid layout needs quantized music (use layout: notes)")


def window_starts(length: int, width: int, hop: int) -> list[int]:
    """Window starts every `hop` steps; the last window reaches past the end (padded with rests)."""
    starts = list(range(0, max(length - width, 0) + 1, hop))
    if starts[-1] + width < length:
        starts.append(starts[-1] + hop * math.ceil((length - width - starts[-1]) / hop))
    return starts


@dataclass
class GridWindows:
    """Symbolic windows [N, H, W] (pitch, state) and, per window, how far it may be transposed."""

    pitch: np.ndarray
    state: np.ndarray
    down: np.ndarray  # [N] the largest downward shift that keeps every voice in its train range
    up: np.ndarray

    @classmethod
    def of(cls, grids: list[voices.VoiceGrid], pitches: voices.PitchRange) -> GridWindows:
        pitch = np.stack([g.pitch for g in grids]).astype(np.int16)
        state = np.stack([g.state for g in grids]).astype(np.int8)
        sounding = state != voices.REST
        lo = np.array([r[0] for r in pitches.rows])[None, :, None]
        hi = np.array([r[1] for r in pitches.rows])[None, :, None]
        down = np.where(sounding, pitch - lo, 10**6).min((1, 2))
        up = np.where(sounding, hi - pitch, 10**6).min((1, 2))
        return cls(pitch, state, np.minimum(down, 127).astype(np.int16), np.minimum(up, 127).astype(np.int16))

    def __len__(self) -> int:
        return len(self.pitch)

    def batch(self, index: np.ndarray, pitches: voices.PitchRange, transpose: int = 0,
              rng: np.random.Generator | None = None) -> np.ndarray:
        """Encoded windows [B, CHANNELS, H, W], each moved by a random shift within its room."""
        out = []
        for i in index:
            grid = voices.VoiceGrid(self.pitch[i].astype(np.int64), self.state[i])
            if transpose and rng is not None:
                lo, hi = -min(transpose, int(self.down[i])), min(transpose, int(self.up[i]))
                grid = grid.transposed(int(rng.integers(lo, hi + 1)))
            out.append(voices.encode(grid, pitches))
        return np.stack(out)


def draw_given(n: int, rows: int, width: int, rng: np.random.Generator) -> np.ndarray:
    """What an inpainting model is shown of each of `n` training windows: [n, 1, rows, width] bool.

    The tasks it is used for, mixed: the first voice alone (a melody to harmonize) 40%, another set of
    voices 25%, nothing (composing from scratch) 35%. On top of that, 30% of the windows are given every
    voice's first steps (up to half the window), as a window that re-reads the one before it, and 15%
    their last steps, as the rests after a melody's end."""
    kind = rng.random(n)
    kept = np.zeros((n, rows), dtype=bool)
    kept[kind < 0.4, 0] = True
    other = (kind >= 0.4) & (kind < 0.65)
    subsets = rng.random((n, rows)) < 0.5
    subsets[subsets.all(1), rng.integers(0, rows)] = False  # never every voice
    kept[other] = subsets[other]
    given = np.repeat(kept[:, :, None], width, axis=2)
    steps = np.arange(width)[None, None, :]
    prefix = np.where(rng.random(n) < 0.3, rng.integers(1, width // 2 + 1, n), 0)
    suffix = np.where(rng.random(n) < 0.15, rng.integers(1, width // 2 + 1, n), 0)
    given |= (steps < prefix[:, None, None]) | (steps >= width - suffix[:, None, None])
    return given[:, None]


def read_voice_files(root: Path, files: Sequence[str], groups: Sequence[str]
                     ) -> tuple[list[str], list[list[RowNotes]]]:
    """The files (relative to `root`) with a track for every group, and their voices."""
    kept, rows = [], []
    for name in tqdm(files, desc="prepare (grid)", unit="file", disable=None):
        try:
            found = read_rows(root / name, groups, "prepare")
        except DmcError:
            continue
        if all(r is not None and len(r) for r in found):
            kept.append(name)
            rows.append(found)
    return kept, rows


def write_grid_prepared(out_dir: str | Path, dataset: str, root: str | Path, files: Sequence[str],
                        groups: Sequence[str], width: int, hop: int = 0,
                        split: Sequence[float] = (0.8, 0.1, 0.1)) -> dict[str, Any]:
    """Prepare the grid layout into `out_dir` atomically (module docstring); returns the summary."""
    from pipeline.data.segments import SPLITS, split_of

    t0 = time.perf_counter()
    hop = hop or width
    kept, rows = read_voice_files(Path(root), files, groups)
    splits = [split_of(name, split) for name in kept]
    train_rows = [r for r, s in zip(rows, splits, strict=True) if s == "train"]
    if not train_rows:
        raise DmcError(f"dataset '{dataset}': no file of the train split has all of {', '.join(groups)}")
    step = detect_grid(train_rows)
    pitches = voices.pitch_range(train_rows, len(groups))
    arrays: dict[str, Any] = {}
    counts = {}
    for name in SPLITS:
        grids = []
        for r, s in zip(rows, splits, strict=True):
            if s != name:
                continue
            whole = voices.rows_to_grid(r, step, 0.0, snap=True)
            grids += [whole.columns(a, a + width) for a in window_starts(whole.shape[1], width, hop)]
        counts[name] = len(grids)
        if grids:
            w = GridWindows.of(grids, pitches)
            arrays |= {f"{name}_pitch": w.pitch, f"{name}_state": w.state, f"{name}_down": w.down,
                       f"{name}_up": w.up}
    stats = {"layout": "grid", "instruments": list(groups), "grid": step, "seq_len": width, "hop": hop,
             "channels": list(("height", "cos", "sin", "sounding", "onset")),
             "pitch_range": pitches.to_dict(), "row_programs": [0] * len(groups),
             "split": dict(zip(SPLITS, split, strict=True)),
             "counts": {"files": len(files), "kept": len(kept), "windows": counts}}
    with atomic_path(out_dir) as tmp:
        tmp.mkdir(parents=True)
        np.savez_compressed(tmp / GRID_FILE, **arrays)
        (tmp / STATS_FILE).write_text(json.dumps(stats, indent=2) + "\n")
        (tmp / FILES_FILE).write_text(json.dumps(dict(zip(kept, splits, strict=True)), indent=1) + "\n")
    seconds = time.perf_counter() - t0
    return {"dataset": dataset, "layout": "grid", "files": len(files), "kept": len(kept),
            "rejected": len(files) - len(kept),
            "rejected_by_reason": {"missing-voice": len(files) - len(kept)} if len(files) > len(kept) else {},
            "segments": counts, "grid": step, "seconds": round(seconds, 3),
            "files_per_second": round(len(files) / seconds, 1) if seconds > 0 else None}


@dataclass
class GridData:
    train: GridWindows
    val: GridWindows | None
    stats: dict[str, Any]

    @property
    def pitches(self) -> voices.PitchRange:
        return voices.PitchRange.from_dict(self.stats["pitch_range"])

    def digest(self) -> str:
        from pipeline.model.train_data import data_digest

        windows = [w for w in (self.train, self.val) if w is not None]
        return data_digest(self.stats, [getattr(w, f.name) for w in windows for f in dataclasses.fields(w)])


def load_grid_data(prepared_dir: str | Path) -> GridData:
    prepared_dir = Path(prepared_dir)
    stats = _grid_stats(prepared_dir)
    train = load_grid_split(prepared_dir, "train")
    if train is None:
        raise DmcError(f"{prepared_dir}: the train split holds no grid windows")
    return GridData(train, load_grid_split(prepared_dir, "val"), stats)


def _grid_stats(prepared_dir: Path) -> dict[str, Any]:
    try:
        stats = json.loads((prepared_dir / STATS_FILE).read_text())
        if stats.get("layout") == "grid" and (prepared_dir / GRID_FILE).is_file():
            return stats
    except FileNotFoundError:
        pass
    raise DmcError(f"{prepared_dir}: no grid-layout data ({GRID_FILE}); run the prepare stage with "
                   "layout: grid")


def load_grid_split(prepared_dir: str | Path, name: str) -> GridWindows | None:
    """The windows of split `name` (train, val, test) of a grid-layout prepared folder; None if none."""
    prepared_dir = Path(prepared_dir)
    _grid_stats(prepared_dir)
    with np.load(prepared_dir / GRID_FILE) as arrays:
        if f"{name}_pitch" not in arrays:
            return None
        return GridWindows(*(arrays[f"{name}_{k}"] for k in ("pitch", "state", "down", "up")))


def grid_config(preset: str, voices_as: str = "channels", rows: int = 4) -> Any:
    """The U-Net of the grid layout: the preset's, with CHANNELS inputs per voice, non-causal.

    voices_as="channels" folds the `rows` voices into the channels, so every layer reads all voices at each
    step, and widens the full-resolution level `rows` times, so each voice keeps the width a row had there:
    with the preset's own width the noise of all the voices' cells has to pass a narrower layer than the
    cells themselves, and the loss stalls (tiny: 0.85 against 0.27 after 400 steps). "rows" keeps one row
    per voice, and the voices meet only in attention (the first grid models)."""
    from pipeline.model.unet import get_config

    config = dataclasses.replace(get_config(preset, causal=False), features=voices.CHANNELS)
    if voices_as == "rows":
        return config
    return dataclasses.replace(config, rows_as_channels=rows,
                               channels=(config.channels[0] * rows, *config.channels[1:]))


def train_grid(settings: Any, data: GridData, out: str | Path, log: Callable[[str], None] = print,
               device: str = "cpu", stop_at: int | None = None,
               metrics_dir: str | Path | None = None) -> dict[str, Any] | None:
    """Train (or resume) the grid U-Net to `settings.steps` (a `pipeline.model.training.TrainSettings`)
    and write the EMA model to `out`, in the checkpoint format `pipeline.model.unet.load_trained` reads.
    Returns its metrics (None when `stop_at` ended the run early, as a kill would).

    With `metrics_dir`, the per-step train loss and the final val loss go to its train_loss.csv and
    val_loss.csv. Every `checkpoint_every` steps (and at `stop_at`) the whole state goes to
    `checkpoints/last.pt` beside `out`, the random key moves' generator included, so a run resumed there
    ends with the weights an uninterrupted one has; a checkpoint of other settings or data is set aside
    and training starts fresh.
    """
    from pipeline.model import train_data
    from pipeline.model import training as t
    from pipeline.model.checkpoints import write_checkpoint

    rows = len(data.stats["instruments"])
    config = grid_config(settings.preset, settings.voices, rows)
    width = int(data.stats["seq_len"])
    if width % config.stride:
        raise DmcError(f"seq_len {width} is not a multiple of {config.stride}")
    torch.manual_seed(settings.seed)
    dev = torch.device(device)
    pitches = data.pitches
    model, ema, opt, diffusion = t.build(settings, config, dev, voices.code_groups(pitches))
    config = model.config  # a softmax head's output width included
    rng = np.random.default_rng(settings.seed)
    losses: list[float] = []
    ckpt_path = t.checkpoint_path(Path(out).parent)
    fp = t.fingerprint(settings, data)
    start = 0
    ckpt = t.restore(ckpt_path, fp, model, ema, opt, dev, log, "train (grid)")
    if ckpt is not None:
        rng.bit_generator.state = json.loads(ckpt["key_moves"])
        start, losses = int(ckpt["step"]), ckpt["train_loss"].tolist()

    def save_checkpoint(step: int) -> None:
        write_checkpoint(ckpt_path, {
            "step": step, "model": model.state_dict(), "ema": ema.model.state_dict(), "opt": opt.state_dict(),
            # The generator's state holds 128-bit integers: kept as JSON text, which the checksum covers.
            "key_moves": json.dumps(rng.bit_generator.state), "fingerprint": fp,
            "train_loss": torch.tensor(losses, dtype=torch.float64), "config": dataclasses.asdict(config),
            "stats": data.stats, "diffusion": settings.diffusion})

    gen = torch.Generator(dev)
    end = settings.steps if stop_at is None else min(stop_at, settings.steps)
    model.train()
    t0 = time.perf_counter()
    for step in tqdm(range(start, end), desc="train (grid)", unit="step", disable=None, initial=start,
                     total=settings.steps):
        follow_load()
        for group in opt.param_groups:
            group["lr"] = settings.lr_at(step)
        index = train_data.batch_indices(step, len(data.train), settings.batch_size, settings.seed)
        x0 = torch.from_numpy(data.train.batch(index, pitches, settings.transpose, rng)).to(dev)
        given = None
        if settings.inpainting:
            given = torch.from_numpy(draw_given(len(x0), rows, width, rng)).to(dev)
        gen.manual_seed(train_data.step_seed(settings.seed, step, 0))
        loss = t.optimize(model, model, ema, opt, diffusion, x0, gen, step, settings.grad_clip,
                          contextlib.nullcontext(), given=given)
        losses.append(float(loss))
        if not math.isfinite(losses[-1]):
            raise DmcError(f"loss became {losses[-1]} at step {step}; try a lower lr")
        if (step + 1) % settings.checkpoint_every == 0 or step + 1 == end:
            save_checkpoint(step + 1)
    seconds = time.perf_counter() - t0
    if end < settings.steps:
        return None
    val_loss = None
    if data.val is not None and len(data.val):
        from pipeline.model.training import validation_loss

        val = torch.from_numpy(data.val.batch(np.arange(len(data.val)), pitches)).to(dev)
        val_loss = validation_loss(ema.model, diffusion, val, settings.batch_size, settings.seed,
                                   contextlib.nullcontext())
    no_data = train_data.TrainData(np.zeros(0), np.zeros(0), data.stats)
    t.save_model(Path(out), ema, no_data, settings, settings.steps)
    ran = settings.steps - start
    metrics = {"loss": float(np.mean(losses[-100:])), "val_loss": val_loss, "steps": settings.steps,
               "seconds": round(seconds, 1), "steps_per_s": round(ran / seconds, 3) if ran else None,
               "parameters": sum(p.numel() for p in model.parameters()), "preset": settings.preset,
               "device": dev.type, "layout": "grid",
               "batch_size": settings.batch_size}
    if metrics_dir is not None:  # the loss curves the note layout writes, which dvc.yaml plots
        t.write_csv(Path(metrics_dir) / "train_loss.csv", ("step", "loss"),
                    [(i + 1, v) for i, v in enumerate(losses)])
        t.write_csv(Path(metrics_dir) / "val_loss.csv", ("step", "val_loss"),
                    [] if val_loss is None else [(settings.steps, val_loss)])
    log(f"train (grid): {settings.steps} steps ({ran} in this run, {seconds:.0f} s), "
        f"loss {metrics['loss']:.4f}, val loss {val_loss}")
    return metrics


def export_grid_model(name: str, checkpoint: str | Path, params: dict[str, Any], evaluation: dict[str, Any],
                      train: dict[str, Any], note: str = "", dest: str | Path | None = None) -> Path:
    """Write the shipped-model folder `dest/NAME` (default pipeline/weights/NAME) of a grid model trained
    with `params` (the keys its prepare and train read), with bfloat16 weights and a card as
    `pipeline.compose.catalog.export_model` writes one; `evaluation` is its `dmc evaluate-harmony` JSON.
    Atomic."""
    import datetime

    from pipeline.compose import shipped as pretrained
    from pipeline.files import file_digest
    from pipeline.model.checkpoints import write_checkpoint
    from pipeline.model.unet import UNet, UNetConfig

    ckpt = torch.load(checkpoint, map_location="cpu", weights_only=True)
    if not ckpt.get("stats", {}).get("layout") == "grid":
        raise DmcError(f"{checkpoint}: not a grid-layout model")
    ema = pretrained.cast_weights(ckpt["ema"], "bfloat16")
    config = UNetConfig.from_dict(ckpt["config"])
    full, shipped = UNet(config).eval(), UNet(config).eval()
    full.load_state_dict(ckpt["ema"])
    shipped.load_state_dict(ema)
    output = pretrained.probe(shipped)
    root = Path(__file__).resolve().parents[2]
    retrain = pretrained.retrain_command(params).replace("dvc exp run", "dvc exp run train", 1)
    card = {
        "format": pretrained.CARD_FORMAT, "name": name, "note": note, "layout": "grid",
        "dataset": params.get("dataset"), "preset": params.get("preset"), "steps": int(ckpt["step"]),
        "seq_len": ckpt["stats"].get("seq_len"), "grid": ckpt["stats"].get("grid"),
        "parameters": sum(p.numel() for p in shipped.parameters()), "weights_dtype": "bfloat16",
        "files": {}, "params": params,
        "retrain": f"{retrain} && dmc evaluate-harmony --model models/model.pt",
        "evaluation": evaluation, "train": train,
        "source": {"model_md5": file_digest(Path(checkpoint), "md5"),
                   "git_commit": pretrained._git(root, "rev-parse", "HEAD"),
                   "exported": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")},
        "probe": {"timestep": pretrained.PROBE_TIMESTEP, "output": output},
        "weights_probe_error": round(pretrained._probe_error(output, pretrained.probe(full)), 6),
    }
    target = Path(dest) / name if dest is not None else pretrained.WEIGHTS / name
    with atomic_path(target) as tmp:
        tmp.mkdir()
        shipped_ckpt = {"config": ckpt["config"], "ema": ema, "stats": ckpt["stats"],
                        "diffusion": ckpt["diffusion"], "step": ckpt["step"]}
        write_checkpoint(tmp / pretrained.WEIGHTS_FILE, shipped_ckpt)
        card["files"] = {pretrained.WEIGHTS_FILE: file_digest(tmp / pretrained.WEIGHTS_FILE, "sha256")}
        (tmp / pretrained.CARD).write_text(json.dumps(card, indent=2) + "\n")
        pretrained.check_shipped(tmp)
    return target
