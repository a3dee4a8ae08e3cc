"""How to run the reverse process (`Sampler`), and one window of it (`denoise_window`)."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from pipeline.errors import DmcError
from pipeline.model.diffusion import GUARDS, SAMPLERS
from pipeline.threads import follow_load

if TYPE_CHECKING:
    from tqdm import tqdm


Denoiser = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass
class Sampler:
    """How to run the reverse process: `ddpm` visits all T steps, the others (`ddim`, `dpm++`, `unipc`)
    visit `steps` of them. `guard` keeps the x_0 estimate in the data's range
    (`pipeline.model.diffusion.GUARDS`): `clip` (to the train split's bounds, per feature), `step_clip`
    (to ±1 inside the step), `dynamic` (Imagen's percentile thresholding) or `none`."""

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
        codes = encoding.code_groups() if config.get("prediction") == "softmax" else None
        x0_channels = encoding.class_channels if config.get("prediction") == "hybrid" else ()
        return GaussianDiffusion(**config, **guard, codes=codes, x0_channels=x0_channels).to(device)


def denoise_window(model: Denoiser, diffusion: Any, sampler: Sampler, known: torch.Tensor,
                   mask: torch.Tensor | None, generator: torch.Generator, bar: tqdm | None) -> torch.Tensor:
    """One window of samples, grown around `known` where `mask` is set (each piece may have its own)."""
    x = torch.randn(known.shape, device=known.device, generator=generator)
    steps = sampler.n_steps(diffusion.timesteps)
    for step in diffusion.denoise_steps(model, x, sampler.name, steps, sampler.eta, generator,
                                        known if mask is not None else None, mask):
        x = step
        follow_load()
        if bar is not None:
            bar.update()
    return x
