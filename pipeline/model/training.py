"""The training loop: LR schedule, EMA, checkpoints and resume, DDP (what it reads, and in which order:
`pipeline.model.train_data`).

Read `train()` top to bottom. Everything random in a step is a pure function of (seed, step, rank):
the data order is a seeded permutation per epoch and the diffusion noise comes from a generator
reseeded every step. A checkpoint therefore needs only the step to replay the future exactly, which
is what makes a resumed CPU run end bitwise-identical to an uninterrupted one. (The global RNG states
are saved and restored too, for anything outside the loop that draws from them.)

DDP switches on when `torchrun` sets RANK/WORLD_SIZE: each rank takes its share of every global batch,
and only rank 0 prints, validates and writes.
"""

from __future__ import annotations

import contextlib
import copy
import csv
import dataclasses
import hashlib
import json
import math
import os
import random
import signal
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor, nn
from tqdm import tqdm

from pipeline.data.encoding import Encoding
from pipeline.errors import DmcError, Interrupted
from pipeline.files import atomic_path, remove_stale_temps, write_json
from pipeline.model.checkpoints import read_checkpoint, write_checkpoint
from pipeline.model.diffusion import GaussianDiffusion
from pipeline.model.train_data import TrainData, batch_indices, check_batch_fits, step_seed
from pipeline.model.unet import UNet, UNetConfig, count, default_device, get_config
from pipeline.threads import follow_load

VAL_BATCHES = 8   # validation looks at most this many batches, so it costs a few steps' time
LOG_EVERY = 10    # steps between loss read-backs (each one waits for the GPU)


@dataclass(frozen=True)
class TrainSettings:
    """The params the train stage reads."""

    preset: str = "tiny"
    steps: int = 400
    batch_size: int = 64
    lr: float = 1e-4
    lr_final: float = 1e-6
    lr_switch: float = 0.75
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    ema_decay: float = 0.999
    seed: int = 0
    causal: bool = True
    timesteps: int = 1000
    beta_start: float = 1e-4
    beta_end: float = 0.02
    schedule: str = "linear"
    prediction: str = "epsilon"
    loss_weight: str = "none"
    min_snr_gamma: float = 5.0
    self_condition: bool = False
    inpainting: bool = False  # grid layout: the network reads the given cells (pipeline.model.diffusion)
    transpose: int = 0  # random key changes of up to this many semitones, train batches only
    key: str = "none"  # none | common: every window moved to one key (pipeline.data.keys)
    voices: str = "channels"  # grid layout: channels (voices folded into the channels) | rows (one row each)
    val_every: int = 100
    checkpoint_every: int = 100
    compile: bool = False
    graph: bool = False  # CUDA only: the whole step replayed as one CUDA graph (pipeline.model.cuda_graph)

    @classmethod
    def from_params(cls, params: dict[str, Any]) -> TrainSettings:
        t, d = params["train"], params["diffusion"]
        return cls(preset=params["preset"], steps=params["steps"], batch_size=params["batch_size"],
                   lr=params["lr"], lr_final=params["lr_final"], lr_switch=t["lr_switch"],
                   weight_decay=t["weight_decay"], grad_clip=t["grad_clip"], ema_decay=t["ema_decay"],
                   seed=params["seed"], causal=t["causal"], timesteps=d["timesteps"],
                   beta_start=d["beta_start"], beta_end=d["beta_end"], schedule=d["schedule"],
                   prediction=d["prediction"], loss_weight=d["loss_weight"], min_snr_gamma=d["min_snr_gamma"],
                   self_condition=d["self_condition"], inpainting=d["inpainting"],
                   transpose=t["transpose"], key=t["key"], voices=t["voices"], val_every=t["val_every"],
                   checkpoint_every=t["checkpoint_every"],
                   compile=t["compile"], graph=t["graph"])

    @property
    def diffusion(self) -> dict[str, Any]:
        """The diffusion config a checkpoint stores: `GaussianDiffusion(**settings.diffusion)`."""
        return {"timesteps": self.timesteps, "beta_start": self.beta_start, "beta_end": self.beta_end,
                "schedule": self.schedule, "prediction": self.prediction, "loss_weight": self.loss_weight,
                "min_snr_gamma": self.min_snr_gamma, "self_condition": self.self_condition,
                "inpainting": self.inpainting}

    def lr_at(self, step: int) -> float:
        """`lr` for the first `lr_switch` of the steps, then `lr_final` (the original: 150K + 50K)."""
        return self.lr if step < round(self.lr_switch * self.steps) else self.lr_final


def fingerprint(settings: TrainSettings, data: TrainData) -> str:
    """What the weights depend on: every setting but logging, compile and graph, and the data itself."""
    ignored = ("val_every", "checkpoint_every", "compile", "graph")
    relevant = {k: v for k, v in asdict(settings).items() if k not in ignored}
    text = json.dumps({"settings": relevant, "data": data.digest()}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()


class EMA:
    """An exponential moving average of the weights, kept as a second U-Net for sampling.

    As TensorFlow's ExponentialMovingAverage with `num_updates`, the decay warms up as
    min(decay, (1 + step) / (10 + step)), so short runs are not dominated by the random init.
    """

    def __init__(self, model: nn.Module, decay: float):
        self.model = copy.deepcopy(model).eval().requires_grad_(False)
        self.decay = decay

    def weight(self, step: int) -> float:
        """How far the average moves toward the weights at `step`: 1 - min(decay, warm-up)."""
        return 1.0 - min(self.decay, (1 + step) / (10 + step))

    @torch.no_grad()
    def update(self, model: nn.Module, step: int) -> None:
        # One fused call for all tensors: on a GPU, a kernel per parameter would cost more than the math.
        torch._foreach_lerp_(list(self.model.parameters()), [p.detach() for p in model.parameters()],
                             self.weight(step))


# -- RNG states as tensors and lists, so checkpoints load with weights_only=True ----------------------


def rng_state() -> dict[str, Any]:
    _, key, pos, has_gauss, gauss = np.random.get_state()
    version, state, py_gauss = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": {"key": torch.from_numpy(key.astype(np.int64)), "pos": pos, "has_gauss": has_gauss,
                  "gauss": gauss},
        "python": {"version": version, "state": list(state), "gauss": py_gauss},
    }


def set_rng_state(state: dict[str, Any]) -> None:
    # RNG states must be CPU byte tensors, wherever map_location put the rest of the checkpoint.
    torch.set_rng_state(state["torch"].cpu())
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])
    n = state["numpy"]
    key = n["key"].cpu().numpy().astype(np.uint32)
    np.random.set_state(("MT19937", key, n["pos"], n["has_gauss"], n["gauss"]))
    p = state["python"]
    random.setstate((p["version"], tuple(p["state"]), p["gauss"]))


# -- distributed ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Rank:
    rank: int = 0
    world: int = 1

    @property
    def main(self) -> bool:
        return self.rank == 0


def init_distributed(device: torch.device) -> tuple[Rank, torch.device]:
    """Join the process group torchrun describes in the environment; a single process otherwise."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Rank(), device
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return Rank(dist.get_rank(), dist.get_world_size()), device


# -- checkpoints ----------------------------------------------------------------------------------------


def checkpoint_path(models_dir: str | Path) -> Path:
    return Path(models_dir) / "checkpoints" / "last.pt"


RESUME_ADVICE = "delete {path} to start fresh"


def _history_tensor(rows: list[tuple[int, float]]) -> Tensor:
    return torch.tensor(rows, dtype=torch.float64).reshape(-1, 2)


def _history_rows(t: Tensor) -> list[tuple[int, float]]:
    return [(int(s), float(v)) for s, v in t.tolist()]


def write_csv(path: Path, header: tuple[str, str], rows: list[tuple[int, float]]) -> None:
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows((s, f"{v:.6g}") for s, v in rows)


@dataclass
class State:
    """What a checkpoint restores besides the networks and the optimizer."""

    step: int = 0
    train_loss: list[tuple[int, float]] | None = None
    val_loss: list[tuple[int, float]] | None = None

    def __post_init__(self) -> None:
        self.train_loss = self.train_loss or []
        self.val_loss = self.val_loss or []


def _unfit(path: Path, err: Exception) -> DmcError:
    reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    return DmcError(f"checkpoint {path} does not fit this config ({reason[:200]}); delete it to start fresh")


def restore(path: Path, fp: str, model: nn.Module, ema: EMA, opt: torch.optim.Optimizer,
            device: torch.device | str, log: Callable[[str], None], who: str = "train"
            ) -> dict[str, Any] | None:
    """Load the networks and the optimizer from last.pt when it was written for the same params and data
    (fingerprint `fp`) and return the checkpoint for the caller's own state; None: start fresh.

    A damaged or unreadable last.pt is refused (read_checkpoint checks its checksum): resuming from
    flipped weights would train on, and record, a broken model without a word. So is one whose tensors
    do not fit, in one line."""
    if not path.is_file():
        return None
    ckpt = read_checkpoint(path, RESUME_ADVICE.format(path=path), device)
    if ckpt.get("fingerprint") != fp:
        log(f"{who}: {path} was written for other params or data; starting fresh")
        return None
    try:
        model.load_state_dict(ckpt["model"])
        ema.model.load_state_dict(ckpt["ema"])
        opt.load_state_dict(ckpt["opt"])
    except (KeyError, RuntimeError, ValueError, TypeError) as err:
        raise _unfit(path, err) from None
    log(f"{who}: resuming from {path} at step {ckpt.get('step')}")
    return ckpt


def _resume(path: Path, fp: str, model: UNet, ema: EMA, opt: torch.optim.Optimizer,
            device: torch.device, log: Callable[[str], None]) -> State:
    """Restore from last.pt (`restore`), with the random state and the loss history; else a fresh State."""
    ckpt = restore(path, fp, model, ema, opt, device, log)
    if ckpt is None:
        return State()
    try:
        set_rng_state(ckpt["rng"])
        return State(ckpt["step"], _history_rows(ckpt["train_loss"]), _history_rows(ckpt["val_loss"]))
    except (KeyError, RuntimeError, ValueError, TypeError) as err:
        raise _unfit(path, err) from None


def save_checkpoint(path: Path, state: State, model: UNet, ema: EMA, opt: torch.optim.Optimizer,
                    settings: TrainSettings, data: TrainData, fp: str) -> None:
    ckpt = {
        "step": state.step,
        "model": model.state_dict(),
        "ema": ema.model.state_dict(),
        "opt": opt.state_dict(),
        "lr_schedule": {"lr": settings.lr, "lr_final": settings.lr_final, "now": settings.lr_at(state.step),
                        "switch_step": round(settings.lr_switch * settings.steps)},
        "rng": rng_state(),
        "data_position": state.step * settings.batch_size,  # segments consumed from the epoch stream
        "config": asdict(model.config),
        "stats": data.stats,
        "diffusion": settings.diffusion,
        "fingerprint": fp,
        "train_loss": _history_tensor(state.train_loss),
        "val_loss": _history_tensor(state.val_loss),
    }
    _save(ckpt, path)


def save_model(path: Path, ema: EMA, data: TrainData, settings: TrainSettings, step: int) -> None:
    """models/model.pt: what sampling needs (EMA weights, config, normalization, schedule)."""
    _save({"config": asdict(ema.model.config), "ema": ema.model.state_dict(), "stats": data.stats,
           "diffusion": settings.diffusion, "step": step}, path)


def _save(obj: dict[str, Any], path: Path) -> None:
    write_checkpoint(path, obj)  # atomic, with the checksum every reader verifies


def kept_checkpoint(models_dir: str | Path) -> str:
    """What an interrupted run leaves: `the checkpoint at step N is kept`, or that none was saved."""
    path = checkpoint_path(models_dir)
    try:
        step = read_checkpoint(path, "")["step"]
    except DmcError:
        return "no checkpoint saved yet" if not path.exists() else f"{path} is unreadable"
    return f"the checkpoint at step {step} is kept"


# -- the step -------------------------------------------------------------------------------------------


class Transposer:
    """Random key changes of whole train segments, up to `semitones` either way, in the model's channels.

    Chorales come in a handful of keys, so the network sees each progression in few transpositions;
    shifting the pitch multiplies the data at no cost. The height moves by the encoding's affine map and
    a lattice pitch code by its own linear map (`Encoding.code_transpose`: the fifths circle turns, the
    classes permute); times and the chord channel do not move. A segment whose shifted pitches would
    leave the train split's range keeps its key, so no note is pushed where sampling would clip it.
    """

    def __init__(self, encoding: Encoding, semitones: int, device: torch.device):
        moves = range(-semitones, semitones + 1)
        maps = [encoding.transpose_map(k) for k in moves]
        self.scale = torch.tensor([m for m, _ in maps], device=device)
        self.shift = torch.tensor([c for _, c in maps], device=device)
        self.code = torch.tensor(np.stack([encoding.code_transpose(k) for k in moves]), dtype=torch.float32,
                                 device=device)  # [moves, k, k]
        low, high = encoding.bounds
        self.low, self.high = float(low[0]) - 1e-6, float(high[0]) + 1e-6

    def __call__(self, x0: Tensor, gen: torch.Generator, mask: Tensor | None = None) -> Tensor:
        """x0 `[B, C, H, W]` with each segment's pitch (the height, then any code channels) moved by its own
        random interval. `mask` (`[B, 1, H, W]`, 1 = a real note) keeps padding untouched."""
        k = torch.randint(0, len(self.scale), (x0.shape[0],), device=x0.device, generator=gen)
        view = (-1, *([1] * (x0.ndim - 2)))
        height = x0[:, 0] * self.scale[k].view(view) + self.shift[k].view(view)
        real = torch.ones_like(height, dtype=torch.bool) if mask is None else mask[:, 0].bool()
        inside = ((height >= self.low) & (height <= self.high) | ~real).flatten(1).all(1).view(view)
        c = self.code.shape[1]
        code = torch.einsum("bij,bj...->bi...", self.code[k].to(x0.dtype), x0[:, 1:1 + c])
        moved = torch.cat([height[:, None], code], dim=1)
        keep = (real & inside)[:, None]
        return torch.cat([torch.where(keep, moved, x0[:, :1 + c]), x0[:, 1 + c:]], dim=1)



def build(settings: TrainSettings, config: UNetConfig, device: torch.device,
          codes: list[tuple[int, Any]] | None = None, x0_channels: list[int] | None = None
          ) -> tuple[UNet, EMA, torch.optim.Optimizer, GaussianDiffusion]:
    """A fresh U-Net, its EMA copy, AdamW and the diffusion process, on `device`. `codes`
    (`Encoding.code_groups`) is what a softmax head predicts over; the U-Net's output follows it.
    `x0_channels` (`Encoding.class_channels`) are where a hybrid network predicts x_0."""
    diffusion = GaussianDiffusion(**settings.diffusion, codes=codes, x0_channels=x0_channels or ()).to(device)
    out_features = diffusion.output_channels(config.features)
    if out_features != config.features:
        config = dataclasses.replace(config, out_features=out_features)
    config = dataclasses.replace(config, cond_features=diffusion.context_channels(config.features))
    model = UNet(config).to(device)
    ema = EMA(model, settings.ema_decay)
    fused = device.type in ("cpu", "cuda")  # one pass over the weights per step instead of several
    opt = torch.optim.AdamW(model.parameters(), lr=settings.lr, weight_decay=settings.weight_decay,
                            fused=fused)
    return model, ema, opt, diffusion


def optimize(net: nn.Module, model: UNet, ema: EMA, opt: torch.optim.Optimizer, diffusion: GaussianDiffusion,
             x0: Tensor, gen: torch.Generator, step: int, grad_clip: float,
             autocast: contextlib.AbstractContextManager, mask: Tensor | None = None,
             given: Tensor | None = None) -> Tensor:
    """One training step: diffusion loss through `net` (the model, maybe DDP- or compile-wrapped),
    backward, gradient clipping, AdamW, EMA. `mask` ([B, 1, H, W], 1 = a real note) keeps padded and
    absent entries out of the loss; `given` is what an inpainting network is shown. Returns the loss,
    still on the device."""
    with autocast:
        loss = diffusion.loss(net, x0, mask=mask, generator=gen, given=given)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    if grad_clip > 0:
        nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    opt.step()
    ema.update(model, step)
    return loss.detach()


# -- the loop -------------------------------------------------------------------------------------------


@torch.no_grad()
def validation_loss(model: nn.Module, diffusion: GaussianDiffusion, val: Tensor, batch_size: int,
                    seed: int, autocast: contextlib.AbstractContextManager,
                    mask: Tensor | None = None) -> float | None:
    """Mean diffusion loss on the first VAL_BATCHES batches of val, with fixed noise (comparable in time);
    masked like the training loss when `mask` ([N, 1, H, W]) is given."""
    if len(val) == 0:
        return None
    gen = torch.Generator(val.device).manual_seed(seed)
    losses = []
    for start in range(0, min(len(val), VAL_BATCHES * batch_size), batch_size):
        with autocast:
            m = None if mask is None else mask[start:start + batch_size]
            losses.append(diffusion.loss(model, val[start:start + batch_size], m, generator=gen).item())
    return float(np.mean(losses))


def train(settings: TrainSettings, data: TrainData, models_dir: str | Path = "models",
          metrics_dir: str | Path = "metrics", stop_at: int | None = None,
          device: torch.device | str | None = None,
          log: Callable[[str], None] = print) -> dict[str, Any] | None:
    """Train (or resume) to `settings.steps`; write checkpoints, models/model.pt and metrics.

    `stop_at` ends the run after that step's checkpoint without the final outputs, as a kill would
    (for tests). Returns the metrics written to metrics/train.json (None on other ranks or when stopped).
    """
    models_dir, metrics_dir = Path(models_dir), Path(metrics_dir)
    rank, device = init_distributed(torch.device(device) if device else default_device())
    try:
        return _train(settings, data, models_dir, metrics_dir, stop_at, device, rank, log)
    except KeyboardInterrupt as err:  # Ctrl-C, or SIGTERM (pipeline.errors.interrupt_on_sigterm)
        signum = getattr(err, "signum", signal.SIGINT)
        raise Interrupted(f"interrupted; {kept_checkpoint(models_dir)}", signum) from None
    finally:
        if rank.world > 1:
            dist.destroy_process_group()


def _train(settings: TrainSettings, data: TrainData, models_dir: Path, metrics_dir: Path, stop_at: int | None,
           device: torch.device, rank: Rank, log: Callable[[str], None]) -> dict[str, Any] | None:
    channels = data.train.shape[1]  # the encoding's code (`Encoding.channels`)
    config: UNetConfig = dataclasses.replace(get_config(settings.preset, settings.causal), features=channels)
    width = data.train.shape[-1]
    if width % config.stride:
        raise DmcError(f"seq_len {width} is not a multiple of {config.stride} (the U-Net halves it "
                       f"{len(config.channels) - 1} times)")
    check_batch_fits(settings.batch_size, data.train[0].nbytes, device)
    if settings.batch_size % rank.world:
        raise DmcError(f"batch_size {settings.batch_size} does not split evenly over {rank.world} processes")
    if settings.graph and (device.type != "cuda" or rank.world > 1):
        where = f"{rank.world} processes" if device.type == "cuda" else f"a {device.type} device"
        raise DmcError(f"train.graph needs one CUDA GPU and this run has {where}; set train.graph: false")
    log = log if rank.main else (lambda *_: None)

    torch.manual_seed(settings.seed)
    np.random.seed(settings.seed)
    random.seed(settings.seed)
    encoding = Encoding.from_stats(data.stats)
    codes = encoding.code_groups() if settings.prediction == "softmax" else None
    x0_channels = encoding.class_channels if settings.prediction == "hybrid" else None
    model, ema, opt, diffusion = build(settings, config, device, codes, x0_channels)
    fp = fingerprint(settings, data)
    ckpt_path = checkpoint_path(models_dir)
    if rank.main:  # a kill during a write leaves its temp file (5 MB for a tiny checkpoint) behind
        for folder in (models_dir, ckpt_path.parent, metrics_dir):
            for litter in remove_stale_temps(folder):
                log(f"train: removed {litter}, left by an interrupted write")
    state = _resume(ckpt_path, fp, model, ema, opt, device, log)

    net: nn.Module = model
    if rank.world > 1:
        ids = [device.index] if device.type == "cuda" else None
        net = nn.parallel.DistributedDataParallel(model, device_ids=ids)
    if settings.compile:
        # On one GPU, CUDA graphs ("reduce-overhead") remove the kernel-launch cost that bounds this small
        # net: 63 steps/s instead of 26 for `full` on an H200. They do not mix with DDP's hooks.
        # With train.graph the whole step is captured instead, so compile adds no graphs of its own.
        mode = "reduce-overhead" if device.type == "cuda" and rank.world == 1 and not settings.graph else None
        net = torch.compile(net, mode=mode)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    # Autocast's weight cache would hold casts made during capture; a graph must recompute them.
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda",
                              cache_enabled=not settings.graph)

    # Small datasets live on the device, so a step never waits for a host-to-device copy.
    data_device = device if data.train.nbytes < 2**30 else torch.device("cpu")
    train_x = torch.from_numpy(data.train).to(data_device)
    val_x = torch.from_numpy(data.val).to(device)
    # Masks get a feature axis of 1, so they broadcast over frequency, duration and delta.
    train_m = None if data.train_mask is None else torch.from_numpy(data.train_mask)[:, None].to(data_device)
    val_m = None if data.val_mask is None else torch.from_numpy(data.val_mask)[:, None].to(device)
    gen = torch.Generator(device)
    transposer = Transposer(Encoding.from_stats(data.stats), settings.transpose, device) \
        if settings.transpose else None
    local = settings.batch_size // rank.world
    graphed = None
    if settings.graph:
        from pipeline.model.cuda_graph import CudaGraphStep

        example = train_x[:local].to(device)
        graphed = CudaGraphStep(net, model, ema, opt, diffusion, settings.grad_clip, autocast, example,
                                None if train_m is None else train_m[:local].to(device))
    end = min(settings.steps, stop_at) if stop_at is not None else settings.steps
    pending: list[Tensor] = []  # losses not yet read back from the device

    def flush() -> None:
        """Read the pending losses back (averaged over ranks) and stop on a non-finite one."""
        if not pending:
            return
        losses = torch.stack(pending).float()
        if rank.world > 1:
            dist.all_reduce(losses)
            losses /= rank.world
        first = state.step - len(pending) + 1
        values = losses.tolist()
        pending.clear()
        for i, v in enumerate(values):
            if not math.isfinite(v):
                kept = f"kept the last good checkpoint {ckpt_path}" if ckpt_path.is_file() else "none saved"
                raise DmcError(f"loss became {v} at step {first + i}; stopped ({kept}); try a lower lr")
        state.train_loss.extend(zip(range(first, first + len(values)), values, strict=True))
        bar.set_postfix(loss=f"{values[-1]:.4f}")

    def write_metrics() -> None:
        write_csv(metrics_dir / "train_loss.csv", ("step", "loss"), state.train_loss)
        write_csv(metrics_dir / "val_loss.csv", ("step", "val_loss"), state.val_loss)

    model.train()
    bar = tqdm(total=settings.steps, initial=state.step, desc="train", unit="step",
               disable=None if rank.main else True)
    start_step, t0 = state.step, time.perf_counter()
    while state.step < end:
        follow_load()
        if graphed is None:  # a graphed step refills its own lr tensor
            for group in opt.param_groups:
                group["lr"] = settings.lr_at(state.step)
        idx = torch.from_numpy(batch_indices(state.step, len(train_x), settings.batch_size, settings.seed))
        mine = idx[rank.rank * local:(rank.rank + 1) * local].to(data_device)
        x0 = train_x[mine].to(device, non_blocking=True)
        m0 = None if train_m is None else train_m[mine].to(device, non_blocking=True)
        gen.manual_seed(step_seed(settings.seed, state.step, rank.rank))
        if transposer is not None:
            x0 = transposer(x0, gen, m0)
        if graphed is not None:
            loss = graphed(x0, gen, state.step, settings.lr_at(state.step), m0)
        else:
            loss = optimize(net, model, ema, opt, diffusion, x0, gen, state.step, settings.grad_clip,
                            autocast, m0)
        pending.append(loss)
        state.step += 1
        bar.update(1)

        at_val = state.step % settings.val_every == 0 or state.step == settings.steps
        at_ckpt = state.step % settings.checkpoint_every == 0 or state.step == end
        if at_val or at_ckpt or len(pending) >= LOG_EVERY:
            flush()
        if at_val and rank.main:
            v = validation_loss(ema.model, diffusion, val_x, settings.batch_size, settings.seed, autocast,
                                val_m)
            if v is not None:
                state.val_loss.append((state.step, v))
        if at_ckpt and rank.main:
            save_checkpoint(ckpt_path, state, model, ema, opt, settings, data, fp)
            write_metrics()
    elapsed = time.perf_counter() - t0
    bar.close()
    if state.step < settings.steps or not rank.main:
        return None

    save_model(models_dir / "model.pt", ema, data, settings, state.step)
    write_metrics()
    ran = state.step - start_step
    tail = [v for _, v in state.train_loss[-100:]]
    metrics = {
        "loss": float(np.mean(tail)) if tail else None,
        "val_loss": state.val_loss[-1][1] if state.val_loss else None,
        "steps": state.step,
        "steps_per_s": round(ran / elapsed, 3) if ran else None,
        "samples_per_s": round(ran * settings.batch_size / elapsed, 1) if ran else None,
        "parameters": count(model),
        "preset": settings.preset,
        "device": device.type,
        "processes": rank.world,
    }
    write_json(metrics_dir / "train.json", metrics)
    return metrics
