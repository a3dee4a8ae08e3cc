"""How to run the reverse process (`Sampler`), one window of it (`denoise_window`), and a trained model
loaded ready to sample (`load_sampler`)."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from pipeline.errors import DmcError
from pipeline.model.diffusion import GUARDS, SAMPLERS

if TYPE_CHECKING:
    from tqdm import tqdm

    from pipeline.compose.options import GenerateOptions

Denoiser = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass
class Sampler:
    """How to run the reverse process: `ddpm` visits all T steps, the others (`ddim`, `dpm++`, `unipc`)
    visit `steps` of them. `guard` keeps the x_0 estimate in the data's range
    (`pipeline.model.diffusion.GUARDS`): `clip` (to the train split's bounds, per feature), `step_clip` (to ±1 inside the step), `dynamic`
    (Imagen's percentile thresholding) or `none`."""

    name: str = "ddim"
    steps: int = 50
    eta: float = 0.0
    guard: str = "step_clip"

    def __post_init__(self) -> None:
        if self.name not in SAMPLERS:
            raise DmcError(f"unknown sampler {self.name!r}; choose one of {', '.join(SAMPLERS)}")
        if self.steps <= 0:
            raise DmcError(f"--steps must be positive, got {self.steps}")
        if self.eta < 0:
            raise DmcError(f"--eta must be >= 0, got {self.eta}")
        if self.guard not in GUARDS:
            raise DmcError(f"--guard must be one of {', '.join(GUARDS)}, got {self.guard!r}")

    def n_steps(self, timesteps: int) -> int:
        return timesteps if self.name == "ddpm" else min(self.steps, timesteps)

    def steps_notice(self, timesteps: int) -> str | None:
        """A one-line notice when more steps are asked than the model has timesteps (all are run)."""
        if self.name != "ddpm" and self.steps > timesteps:
            return (f"notice: --steps {self.steps} exceeds the model's {timesteps} diffusion timesteps; "
                    f"running {timesteps}")
        return None

    def diffusion(self, config: dict[str, Any], encoding: Any, device: torch.device | str = "cpu") -> Any:
        """The model's diffusion process (its checkpoint's `config`), with this sampler's x_0 guard."""
        from pipeline.model.diffusion import GaussianDiffusion

        low, high = encoding.model_bounds
        # diffusers' thresholding: per sample s = the 99.5% quantile of |x_0|, kept within [1, cap]; x_0 is
        # clipped to ±s and divided by s. With the cap at 1 that is a clip to ±1 (`step_clip`); without a
        # cap it is Imagen's dynamic thresholding. Both suit encodings centred on 0 (symmetric, standard).
        guard = {"clip": {"clip_sample": (low.tolist(), high.tolist())},
                 "step_clip": {"dynamic_threshold": (0.995, 1.0)},
                 "dynamic": {"dynamic_threshold": (0.995, math.inf)}, "none": {}}[self.guard]
        return GaussianDiffusion(**config, **guard).to(device)


def denoise_window(model: Denoiser, diffusion: Any, sampler: Sampler, known: torch.Tensor,
                   mask: torch.Tensor | None, generator: torch.Generator, bar: tqdm | None) -> torch.Tensor:
    """One window of samples, grown around `known` where `mask` is set (each piece may have its own)."""
    x = torch.randn(known.shape, device=known.device, generator=generator)
    steps = sampler.n_steps(diffusion.timesteps)
    for step in diffusion.denoise_steps(model, x, sampler.name, steps, sampler.eta, generator,
                                        known if mask is not None else None, mask):
        x = step
        if bar is not None:
            bar.update()
    return x


@dataclass
class LoadedModel:
    """A trained model ready to sample: the network, its data's stats and encoding, its diffusion process
    with the chosen sampler's guard, on `device`."""

    model: Denoiser
    stats: dict[str, Any]
    encoding: Any
    diffusion: Any
    sampler: Sampler
    device: torch.device


def load_sampler(checkpoint: str | Path | None, opts: GenerateOptions,
                 log: Callable[[str], None] = print) -> LoadedModel:
    """Load `checkpoint` (a path, a shipped model's name, or None for the checkout's model falling back to
    the shipped default, `pipeline.compose.shipped.resolve_model`) for sampling with `opts`' sampler."""
    from pipeline.compose.shipped import resolve_model
    from pipeline.data.encoding import Encoding
    from pipeline.model.unet import default_device, load_trained

    sampler = Sampler(opts.sampler, opts.steps, opts.eta, opts.guard)
    chosen = resolve_model(checkpoint)
    if chosen.notice:
        log(chosen.notice)
    device = device_of(opts.device) if opts.device else default_device()
    model, stats, diffusion_kwargs = load_trained(chosen.path, device)
    encoding = Encoding.from_stats(stats)
    return LoadedModel(model, stats, encoding, sampler.diffusion(diffusion_kwargs, encoding, device), sampler,
                       device)


def device_of(name: str) -> torch.device:
    """The torch device `--device` names; a one-line error where it is unknown or absent."""
    try:
        device = torch.device(name)
    except RuntimeError:
        raise DmcError(f"--device: unknown device {name!r}; use cpu, cuda or mps") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise DmcError("--device cuda: no CUDA GPU is available here")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise DmcError("--device mps: Apple's MPS is not available here")
    return device
