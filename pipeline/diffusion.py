"""The Gaussian diffusion process: noise schedule, training loss, DDPM and DDIM steps.

The network is passed in as a callable `model(x_t, t) -> predicted noise`; nothing here knows its
architecture, and the network knows nothing of schedules.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import torch
from torch import Tensor, nn

Denoiser = Callable[[Tensor, Tensor], Tensor]


def _gather(values: Tensor, t: Tensor, ndim: int) -> Tensor:
    """values[t] shaped to broadcast over a batch of `ndim`-dimensional samples."""
    return values[t].view(-1, *([1] * (ndim - 1)))


class GaussianDiffusion(nn.Module):
    """DDPM (Ho et al. 2020) with ε-prediction and a linear β schedule; DDIM (Song et al. 2021) sampling.

    The schedule is a set of buffers, so `.to(device)` moves it with the model.
    """

    def __init__(self, timesteps: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02,
                 clip_sample: tuple[float, float] | None = None):
        super().__init__()
        self.timesteps = timesteps
        # When set, every sampling step clips its estimate of x_0 to this range (diffusers' `clip_sample`).
        # At large t, x_0 = (x_t - √(1-ᾱ)ε)/√ᾱ multiplies the network's error by up to 1/√ᾱ ≈ 150, and
        # an undertrained network's samples then blow up far outside the data's range.
        self.clip_sample = clip_sample
        # float64 for the cumulative product; 1000 factors lose precision in float32.
        betas = torch.linspace(beta_start, beta_end, timesteps, dtype=torch.float64)
        alphas_cumprod = torch.cumprod(1.0 - betas, dim=0)
        alphas_cumprod_prev = torch.cat([torch.ones(1, dtype=torch.float64), alphas_cumprod[:-1]])
        buffers = {
            "betas": betas,
            "alphas_cumprod": alphas_cumprod,
            "alphas_cumprod_prev": alphas_cumprod_prev,
            "sqrt_alphas_cumprod": alphas_cumprod.sqrt(),
            "sqrt_one_minus_alphas_cumprod": (1.0 - alphas_cumprod).sqrt(),
            # Posterior q(x_{t-1} | x_t, x_0): mean = c0·x_0 + ct·x_t, and the "β̃" variance.
            "posterior_mean_coef_x0": betas * alphas_cumprod_prev.sqrt() / (1.0 - alphas_cumprod),
            "posterior_mean_coef_xt": (1.0 - alphas_cumprod_prev) * (1.0 - betas).sqrt()
            / (1.0 - alphas_cumprod),
            "posterior_variance": betas * (1.0 - alphas_cumprod_prev) / (1.0 - alphas_cumprod),
        }
        for name, value in buffers.items():
            self.register_buffer(name, value.float(), persistent=False)

    # -- training ---------------------------------------------------------------------------------

    def add_noise(self, x0: Tensor, noise: Tensor, t: Tensor) -> Tensor:
        """Sample x_t ~ q(x_t | x_0) = N(√ᾱ_t x_0, (1 − ᾱ_t) I) with the given noise."""
        return (_gather(self.sqrt_alphas_cumprod, t, x0.ndim) * x0
                + _gather(self.sqrt_one_minus_alphas_cumprod, t, x0.ndim) * noise)

    def loss(self, model: Denoiser, x0: Tensor, mask: Tensor | None = None,
             generator: torch.Generator | None = None) -> Tensor:
        """Mean squared error of the predicted noise at uniformly drawn timesteps.

        `mask` (broadcastable to x0, 1 = real entry) restricts the loss to real notes, so padded or
        absent instrument rows teach the network nothing.
        """
        t = torch.randint(0, self.timesteps, (x0.shape[0],), device=x0.device, generator=generator)
        noise = torch.randn(x0.shape, device=x0.device, dtype=x0.dtype, generator=generator)
        error = (model(self.add_noise(x0, noise, t), t).float() - noise.float()) ** 2
        if mask is None:
            return error.mean()
        mask = mask.to(error.dtype).expand_as(error)
        return (error * mask).sum() / mask.sum().clamp_min(1.0)

    # -- sampling ---------------------------------------------------------------------------------

    def sampling_timesteps(self, steps: int | None = None) -> list[int]:
        """Descending timesteps to visit: all T for DDPM, or `steps` evenly spaced ones for DDIM."""
        steps = self.timesteps if steps is None else steps
        if not 1 <= steps <= self.timesteps:
            raise ValueError(f"steps must be in [1, {self.timesteps}], got {steps}")
        # Evenly spaced from T-1 down to 0, so DDIM starts from pure noise and ends on the data.
        stride = (self.timesteps - 1) / max(steps - 1, 1)
        return sorted({round(i * stride) for i in range(steps)}, reverse=True)

    def predict_x0(self, x: Tensor, eps: Tensor, t: int) -> Tensor:
        """x_0 implied by x_t and the predicted noise, clipped to `clip_sample` when set."""
        x0 = (x - self.sqrt_one_minus_alphas_cumprod[t] * eps) / self.sqrt_alphas_cumprod[t]
        return x0 if self.clip_sample is None else x0.clamp(*self.clip_sample)

    def ddpm_step(self, eps: Tensor, t: int, x: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """One ancestral step x_t -> x_{t-1} (Ho et al. 2020, Algorithm 2, via the posterior mean)."""
        x0 = self.predict_x0(x, eps, t)
        mean = self.posterior_mean_coef_x0[t] * x0 + self.posterior_mean_coef_xt[t] * x
        if t == 0:
            return mean
        noise = torch.randn(x.shape, device=x.device, dtype=x.dtype, generator=generator)
        return mean + self.posterior_variance[t].sqrt() * noise

    def ddim_step(self, eps: Tensor, t: int, t_prev: int, x: Tensor, eta: float = 0.0,
                  generator: torch.Generator | None = None) -> Tensor:
        """One step x_t -> x_{t_prev}; eta=0 is deterministic DDIM, eta=1 matches DDPM's variance."""
        a_t = self.alphas_cumprod[t]
        a_prev = self.alphas_cumprod[t_prev] if t_prev >= 0 else torch.ones_like(a_t)
        x0 = self.predict_x0(x, eps, t)
        if self.clip_sample is not None:  # the noise that the clipped x_0 implies
            eps = (x - a_t.sqrt() * x0) / (1 - a_t).sqrt()
        sigma = eta * ((1 - a_prev) / (1 - a_t) * (1 - a_t / a_prev)).sqrt()
        x_prev = a_prev.sqrt() * x0 + (1 - a_prev - sigma**2).clamp_min(0).sqrt() * eps
        if eta > 0 and t_prev >= 0:
            noise = torch.randn(x.shape, device=x.device, dtype=x.dtype, generator=generator)
            x_prev = x_prev + sigma * noise
        return x_prev

    def denoise_steps(self, model: Denoiser, x: Tensor, sampler: str = "ddim", steps: int | None = 50,
                      eta: float = 0.0, generator: torch.Generator | None = None,
                      known: Tensor | None = None, known_mask: Tensor | None = None) -> Iterator[Tensor]:
        """Run the reverse process from noise `x`, yielding x after every step (the last is x_0).

        With `known` and `known_mask` (1 = given), the given entries are replaced after every step by
        `known` noised to the current level, so the sample grows around them (inpainting; a prompt to
        continue when the mask covers the first notes).
        """
        if sampler not in ("ddpm", "ddim"):
            raise ValueError(f"unknown sampler {sampler!r}; choose ddpm or ddim")
        timesteps = self.sampling_timesteps(None if sampler == "ddpm" else steps)
        for i, t in enumerate(timesteps):
            t_prev = timesteps[i + 1] if i + 1 < len(timesteps) else -1
            tt = torch.full((x.shape[0],), t, device=x.device, dtype=torch.long)
            if known is not None:
                x = torch.where(known_mask.bool(), self.add_noise(known, torch.randn(
                    x.shape, device=x.device, dtype=x.dtype, generator=generator), tt), x)
            eps = model(x, tt).to(x.dtype)
            x = self.ddpm_step(eps, t, x, generator) if sampler == "ddpm" else \
                self.ddim_step(eps, t, t_prev, x, eta, generator)
            if known is not None and t_prev < 0:
                x = torch.where(known_mask.bool(), known, x)
            yield x

    @torch.no_grad()
    def sample(self, model: Denoiser, shape: tuple[int, ...], sampler: str = "ddim", steps: int | None = 50,
               eta: float = 0.0, generator: torch.Generator | None = None, device: torch.device | str = "cpu",
               known: Tensor | None = None, known_mask: Tensor | None = None) -> Tensor:
        """Draw samples x_0 of `shape`, starting from standard normal noise."""
        x = torch.randn(shape, device=device, generator=generator)
        for x_step in self.denoise_steps(model, x, sampler, steps, eta, generator, known, known_mask):
            x = x_step
        return x
