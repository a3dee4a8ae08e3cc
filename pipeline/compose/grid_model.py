"""A loaded grid-layout model (`pipeline.data.voices`) and the denoising of a batch of its windows around
known cells: what harmonizing (`pipeline.compose.harmonize`) and the voice-leading repair
(`pipeline.compose.repair`) both sample with.

Known cells are re-noised to the current level before every step (`GaussianDiffusion.denoise_steps`), and
a model trained for inpainting (`diffusion.inpainting`) also reads them clean, with their mask, at every
step.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from pipeline.data import voices
from pipeline.errors import DmcError
from pipeline.threads import follow_load


@dataclass
class GridModel:
    """A loaded grid-layout model: the network, its stats, its diffusion process and sampler."""

    model: Any
    stats: dict[str, Any]
    diffusion: Any
    sampler: Any
    device: torch.device

    @property
    def groups(self) -> list[str]:
        return list(self.stats["instruments"])

    @property
    def pitches(self) -> voices.PitchRange:
        return voices.PitchRange.from_dict(self.stats["pitch_range"])

    @property
    def step(self) -> float:
        return float(self.stats["grid"])

    @property
    def width(self) -> int:
        return int(self.stats["seq_len"])


def is_grid(stats: Mapping[str, Any]) -> bool:
    return stats.get("layout") == "grid"


def load_grid_model(path: str | Path, sampler: Any, device: str | torch.device = "cpu") -> GridModel:
    """A grid-layout checkpoint ready to sample with `sampler` (a `pipeline.compose.sampler.Sampler`)."""
    from pipeline.model.diffusion import GaussianDiffusion
    from pipeline.model.unet import load_trained

    model, stats, diffusion_kwargs = load_trained(path, device)
    if not is_grid(stats):
        raise DmcError(f"{path}: a model of the note layout; harmonize needs a grid-layout model such as "
                       "the shipped bach-satb")
    # Every cell lies in [-1, 1]: the x_0 estimate is clipped there.
    clip = {} if sampler.guard == "none" else {"clip_sample": (-1.0, 1.0)}
    codes = voices.code_groups(voices.PitchRange.from_dict(stats["pitch_range"]))
    diffusion = GaussianDiffusion(**diffusion_kwargs, **clip, codes=codes).to(device)
    return GridModel(model, stats, diffusion, sampler, torch.device(device))


def denoise(model: GridModel, known: torch.Tensor, mask: torch.Tensor, generator: torch.Generator,
            resample: int = 1) -> torch.Tensor:
    """One batch of windows denoised around `known` where `mask` is set. With `resample` R > 1, every
    step but the last is taken R times, noising the result back to the step's level in between
    (RePaint, Lugmayr et al. 2022), so the free voices hear the kept ones more than once per level."""
    d, sampler = model.diffusion, model.sampler
    follow_load()
    x = torch.randn(known.shape, device=known.device, generator=generator)
    steps = sampler.n_steps(d.timesteps)
    if resample <= 1:
        for x_step in d.denoise_steps(model.model, x, sampler.name, steps, sampler.eta, generator, known,
                                      mask):
            x = x_step
        return x
    if sampler.name not in ("ddim", "ddpm"):
        raise DmcError(f"--resample needs the ddim or ddpm sampler, not {sampler.name}")
    scheduler, net = d.scheduler(sampler.name, steps), d.sampling_net(model.model, known, mask)
    kwargs: dict[str, Any] = {"generator": generator}
    if sampler.name == "ddim":
        kwargs["eta"] = sampler.eta
    times = [int(t) for t in scheduler.timesteps]
    for i, t in enumerate(times):
        tt = torch.full((x.shape[0],), t, device=x.device, dtype=torch.long)
        a_t = d.alphas_cumprod[t]
        a_prev = d.alphas_cumprod[times[i + 1]] if i + 1 < len(times) else torch.ones_like(a_t)
        for r in range(resample if i + 1 < len(times) else 1):
            noise = torch.randn(x.shape, device=x.device, dtype=x.dtype, generator=generator)
            x = torch.where(mask, d.add_noise(known, noise, tt), x)
            x_prev = scheduler.step(net(x, tt).to(x.dtype), t, x, return_dict=False, **kwargs)[0]
            if r + 1 < resample and i + 1 < len(times):  # back up to level t: q(x_t | x_{t-1})
                ratio = a_t / a_prev
                x = ratio.sqrt() * x_prev + (1 - ratio).sqrt() * torch.randn(
                    x.shape, device=x.device, dtype=x.dtype, generator=generator)
            else:
                x = x_prev
    return torch.where(mask, known, x)
