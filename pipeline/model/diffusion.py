"""The Gaussian diffusion process: noise schedule, what the network predicts, the training loss, and the
samplers that run it backwards.

The network is passed in as a callable `model(x_t, t) -> prediction`; nothing here knows its
architecture, and the network knows nothing of schedules or targets. The samplers are `diffusers`'
maintained schedulers (DDPM, DDIM, DPM-Solver++, UniPC), all built from one config, the same one
training uses: `schedule` (linear, as the original, or cosine), `prediction` (epsilon, as the original,
v, x0 or softmax) and the timestep count. What this module adds around them: the training objective and
its weighting, an x_0 guard that keeps estimates inside the data's range, and inpainting (known entries
re-noised to the current level before every step).

`softmax` is the categorical objective of CDCD (Dieleman et al. 2022) and Analog Bits' `x_softmax_xent`
(Chen et al. 2022): for each categorical group of the code (`Encoding.code_groups`: the pitch, the times
on their grid, the chord flag) the network gives one logit per code, trained by cross-entropy against the
code x_0 holds; its x_0 estimate is the softmax's expected code, which the samplers use as an x0
prediction. Continuous groups are predicted as x_0 under squared error.

`hybrid` predicts x_0 for the one-hot class channels (`Encoding.class_channels`: time `classes`, pitch
`pitch_class`), as Analog Bits does for its bits, and epsilon for every other channel. An epsilon network
that is unsure between classes predicts their blend, which the nearest-code decode turns into a choice
made by noise; an x_0 target makes it commit. x_0 everywhere commits the pitch too, and the pieces became
monotonous (benchmarks/README.md), so the geometric codes keep epsilon.

`inpainting` trains the network to fill in what is not given, as Stable Diffusion's inpainting model and
Coconet do: besides x_t it reads the given entries and a mask of them (one flag per position), clean at
every noise level, and learns only the entries that are not given. Replacement inpainting alone shows the
network the given entries noised like everything else, so at high noise it composes around a melody it
cannot yet hear.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch
from torch import Tensor, nn

Denoiser = Callable[[Tensor, Tensor], Tensor]

SCHEDULES = {"linear": "linear", "cosine": "squaredcos_cap_v2"}  # ours -> diffusers' beta_schedule
PREDICTIONS = {"epsilon": "epsilon", "v": "v_prediction", "x0": "sample",
               "softmax": "sample", "hybrid": "sample"}  # -> diffusers' prediction_type
X0_OUT = ("softmax", "hybrid")  # predictions whose sampling net hands the scheduler an x_0 estimate
LOSS_WEIGHTS = ("none", "min_snr")
SAMPLERS = {"ddpm": "DDPMScheduler", "ddim": "DDIMScheduler", "dpm++": "DPMSolverMultistepScheduler",
            "unipc": "UniPCMultistepScheduler"}  # -> diffusers' class, imported when first used
# What keeps a sampler's x_0 estimate in range: `clip` (to the data's bounds, the noise re-derived from the
# clipped x_0; `guarded`), `step_clip` (to ±1 inside the scheduler's step, the network's noise kept:
# diffusers' thresholding with its threshold capped at 1), `dynamic` (Imagen's percentile thresholding, as
# diffusers does it, the threshold free to exceed 1) or `none`.
GUARDS = ("clip", "step_clip", "dynamic", "none")


def _diffusers_class(name: str) -> type:
    import diffusers  # a second of imports: only when sampling or training, never for params alone

    return getattr(diffusers, name)


def _gather(values: Tensor, t: Tensor, ndim: int) -> Tensor:
    """values[t] shaped to broadcast over a batch of `ndim`-dimensional samples."""
    return values[t].view(-1, *([1] * (ndim - 1)))


class GaussianDiffusion(nn.Module):
    """DDPM (Ho et al. 2020) with a choice of schedule, prediction target and loss weighting.

    The first eight arguments are the training config a checkpoint stores (`config`); the defaults are
    the original recipe. With `self_condition` (Chen et al. 2022, "Analog Bits") the network takes twice
    the data's channels: x_t, then its own previous estimate of x_0 (zeros on the first step, and in
    training half the time; the other half, the estimate of a first, gradient-free pass). With `inpainting`
    it also takes the given entries (zero elsewhere) and their mask: `context_channels`.

    `codes` (`Encoding.code_groups`) is what prediction `softmax` predicts over; it follows from the
    data's statistics, so a checkpoint's config does not store it.

    `clip_sample` ((low, high), scalars or one per feature; see `guarded`) and `dynamic_threshold`
    ((quantile, largest threshold): Imagen's dynamic thresholding, which diffusers' schedulers apply to
    their x_0 estimate) only change sampling.
    """

    def __init__(self, timesteps: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02,
                 schedule: str = "linear", prediction: str = "epsilon", loss_weight: str = "none",
                 min_snr_gamma: float = 5.0, self_condition: bool = False, inpainting: bool = False,
                 codes: Sequence[tuple[int, Any]] | None = None, x0_channels: Sequence[int] = (),
                 clip_sample: tuple[float | Sequence[float], float | Sequence[float]] | None = None,
                 dynamic_threshold: tuple[float, float] | None = None):
        super().__init__()
        choices = (("schedule", schedule, SCHEDULES), ("prediction", prediction, PREDICTIONS),
                   ("loss_weight", loss_weight, LOSS_WEIGHTS))
        for name, value, options in choices:
            if value not in options:
                raise ValueError(f"unknown diffusion {name} {value!r}; choose one of {', '.join(options)}")
        self.config = {"timesteps": timesteps, "beta_start": beta_start, "beta_end": beta_end,
                       "schedule": schedule, "prediction": prediction, "loss_weight": loss_weight,
                       "min_snr_gamma": min_snr_gamma, "self_condition": self_condition,
                       "inpainting": inpainting}
        self.self_condition = self_condition
        self.inpainting = inpainting
        self.timesteps = timesteps
        self.prediction = prediction
        self.loss_weight = loss_weight
        self.min_snr_gamma = min_snr_gamma
        if prediction == "hybrid":
            if not len(x0_channels):
                raise ValueError("prediction hybrid needs one-hot class channels (time classes, pitch_class)")
            if loss_weight != "none":
                raise ValueError("prediction hybrid mixes two targets; it takes no loss_weight")
        self.x0_channels = list(x0_channels)  # hybrid: where the network predicts x_0, not epsilon
        # When set, every sampling step clips its estimate of x_0 to the data's range. At large t,
        # x_0 = (x_t - √(1-ᾱ)ε)/√ᾱ multiplies the network's error by up to 1/√ᾱ ≈ 150, and an undertrained
        # network's samples then blow up far outside the data's range.
        self.clip_sample = clip_sample
        self.dynamic_threshold = dynamic_threshold
        # softmax: each group's channels, and a `code_table_<i>` buffer for each categorical one
        self.widths: list[int] = []
        if prediction == "softmax":
            if not codes or all(table is None for _, table in codes):
                raise ValueError("prediction softmax needs a code with categorical groups (a lattice code)")
            if loss_weight != "none":
                raise ValueError("prediction softmax is a cross-entropy; it takes no loss_weight")
            for i, (width, table) in enumerate(codes):
                self.widths.append(int(width))
                if table is not None:
                    self.register_buffer(f"code_table_{i}", torch.as_tensor(table, dtype=torch.float32)
                                         .reshape(-1, width), persistent=False)
        schedule_of = _diffusers_class(SAMPLERS["ddpm"])(**self._scheduler_config())
        self.register_buffer("alphas_cumprod", schedule_of.alphas_cumprod.float(), persistent=False)
        self.register_buffer("betas", schedule_of.betas.float(), persistent=False)

    # -- the softmax head ------------------------------------------------------------------------------

    def _groups(self) -> Iterator[tuple[int, Tensor | None]]:
        for i, width in enumerate(self.widths):
            yield width, getattr(self, f"code_table_{i}", None)

    def output_channels(self, channels: int) -> int:
        """How many channels the network outputs for a code of `channels`: as many, or for `softmax` one
        logit per code of each categorical group."""
        if self.prediction != "softmax":
            return channels
        return sum(width if table is None else len(table) for width, table in self._groups())

    def expected_code(self, out: Tensor) -> Tensor:
        """The softmax head's output [B, O, ...] -> its x_0 estimate [B, C, ...]: per categorical group, the
        probability-weighted mean of the group's codes; continuous groups as they are."""
        parts, at = [], 0
        for width, table in self._groups():
            if table is None:
                parts.append(out[:, at:at + width])
                at += width
                continue
            probs = out[:, at:at + len(table)].float().softmax(dim=1)
            parts.append(torch.einsum("bk...,kc->bc...", probs, table))
            at += len(table)
        return torch.cat(parts, dim=1).to(out.dtype)

    def _code_loss(self, out: Tensor, x0: Tensor) -> Tensor:
        """Per position [B, 1, ...]: the cross-entropy of each categorical group's logits against the code
        x_0 holds (its nearest, so values a hair off the lattice count as their code), plus the squared
        error of the continuous groups."""
        total, at, channel = torch.zeros_like(x0[:, :1], dtype=torch.float32), 0, 0
        for width, table in self._groups():
            x = x0[:, channel:channel + width].float()
            channel += width
            if table is None:
                total = total + ((out[:, at:at + width].float() - x) ** 2).sum(dim=1, keepdim=True)
                at += width
                continue
            codes = table.reshape(1, len(table), width, *([1] * (x.ndim - 2)))
            target = ((x[:, None] - codes) ** 2).sum(dim=2).argmin(dim=1)
            logits = out[:, at:at + len(table)].float()
            total = total + nn.functional.cross_entropy(logits, target, reduction="none")[:, None]
            at += len(table)
        return total

    def _scheduler_config(self) -> dict:
        quantile, largest = self.dynamic_threshold or (0.995, 1.0)
        return {"num_train_timesteps": self.timesteps, "beta_start": self.config["beta_start"],
                "beta_end": self.config["beta_end"], "beta_schedule": SCHEDULES[self.config["schedule"]],
                "prediction_type": PREDICTIONS[self.prediction],
                "thresholding": self.dynamic_threshold is not None,
                "dynamic_thresholding_ratio": quantile, "sample_max_value": largest}

    # -- the forward process and what the network learns -----------------------------------------------

    def add_noise(self, x0: Tensor, noise: Tensor, t: Tensor) -> Tensor:
        """Sample x_t ~ q(x_t | x_0) = N(√ᾱ_t x_0, (1 − ᾱ_t) I) with the given noise."""
        a = _gather(self.alphas_cumprod, t, x0.ndim)
        return a.sqrt() * x0 + (1 - a).sqrt() * noise

    def target(self, x0: Tensor, noise: Tensor, t: Tensor) -> Tensor:
        """What the network should output for x_t = add_noise(x0, noise, t)."""
        if self.prediction == "epsilon":
            return noise
        if self.prediction == "x0":
            return x0
        if self.prediction == "hybrid":
            return torch.where(self._x0_where(x0), x0, noise)
        a = _gather(self.alphas_cumprod, t, x0.ndim)
        return a.sqrt() * noise - (1 - a).sqrt() * x0  # v (Salimans & Ho 2022)

    def snr_weight(self, t: Tensor) -> Tensor:
        """Per-sample loss weight. min-SNR-γ (Hang et al. 2023) weighs every timestep like an x_0 loss
        capped at SNR γ, so the easy, nearly noise-free steps stop dominating the gradient."""
        if self.loss_weight == "none":
            return torch.ones(t.shape, device=t.device)
        a = self.alphas_cumprod[t]
        snr = a / (1 - a)
        capped = snr.clamp(max=self.min_snr_gamma)
        return {"epsilon": capped / snr, "v": capped / (snr + 1), "x0": capped}[self.prediction]

    def draw(self, x0: Tensor, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        """(t, noise) for a batch like x0: what `loss` draws, in the same order from the same generator."""
        t = torch.randint(0, self.timesteps, (x0.shape[0],), device=x0.device, generator=generator)
        return t, torch.randn(x0.shape, device=x0.device, dtype=x0.dtype, generator=generator)

    def context_channels(self, channels: int) -> int:
        """How many input channels the network reads beside x_t's `channels`: self-conditioning's x_0
        estimate, and inpainting's given entries and their mask."""
        return channels * self.self_condition + (channels + 1) * self.inpainting

    def _context(self, x_t: Tensor, known: Tensor | None, given: Tensor | None) -> Tensor:
        """Inpainting's extra input: the known entries where given (zero elsewhere), then the mask."""
        if known is None or given is None:
            return torch.zeros((x_t.shape[0], x_t.shape[1] + 1, *x_t.shape[2:]), device=x_t.device,
                               dtype=x_t.dtype)
        if given.shape[1] != 1:
            raise ValueError(f"an inpainting mask has one flag per position ([B, 1, ...]), not "
                             f"{given.shape[1]}")
        g = given.to(x_t.dtype).expand(x_t.shape[0], 1, *x_t.shape[2:])
        return torch.cat([known.to(x_t.dtype) * g, g], dim=1)

    def loss(self, model: Denoiser, x0: Tensor, mask: Tensor | None = None,
             generator: torch.Generator | None = None, drawn: tuple[Tensor, Tensor] | None = None,
             given: Tensor | None = None) -> Tensor:
        """Mean squared error of the prediction at uniformly drawn timesteps, weighted per sample.

        `mask` (broadcastable to x0, 1 = real entry) restricts the loss to real notes, so padded or
        absent instrument rows teach the network nothing. `drawn` is (t, noise) drawn beforehand (`draw`),
        for a step replayed as a CUDA graph, which cannot draw. `given` ([B, 1, ...], 1 = given; none
        when omitted) is what an inpainting network is shown of x_0; the loss leaves those entries out.
        """
        t, noise = self.draw(x0, generator) if drawn is None else drawn
        x_t = self.add_noise(x0, noise, t)
        context = [self._context(x_t, x0, given)] if self.inpainting else []
        if self.self_condition:
            if drawn is not None:
                raise ValueError("self-conditioning draws its own coin per sample; it has no CUDA-graph form")
            estimate = torch.zeros_like(x0)
            use = torch.rand(x0.shape[0], device=x0.device, generator=generator) < 0.5
            if use.any():
                with torch.no_grad():
                    first = model(torch.cat([x_t, estimate, *context], dim=1), t).to(x0.dtype)
                    guess = self.predicted_x0(first, x_t, t).clamp(-1, 1)
                estimate = torch.where(use.view(-1, *([1] * (x0.ndim - 1))), guess, estimate)
            context.insert(0, estimate)
        net_input = torch.cat([x_t, *context], dim=1) if context else x_t
        if self.prediction == "softmax":
            error = self._code_loss(model(net_input, t), x0)
        else:
            error = (model(net_input, t).float() - self.target(x0, noise, t).float()) ** 2
            error = error * self.snr_weight(t).view(-1, *([1] * (error.ndim - 1)))
        if self.inpainting and given is not None:
            free = ~given.bool()
            mask = free if mask is None else mask.bool() & free
        if mask is None:
            return error.mean()
        mask = mask.to(error.dtype).expand_as(error)
        return (error * mask).sum() / mask.sum().clamp_min(1.0)

    # -- the x_0 guard -------------------------------------------------------------------------------------

    def predicted_x0(self, out: Tensor, x: Tensor, t: Tensor) -> Tensor:
        """The x_0 that a network output at x_t implies."""
        if self.prediction == "softmax":
            return self.expected_code(out)
        a = _gather(self.alphas_cumprod, t, x.ndim)
        if self.prediction == "epsilon":
            return (x - (1 - a).sqrt() * out) / a.sqrt()
        if self.prediction == "x0":
            return out
        if self.prediction == "hybrid":
            return torch.where(self._x0_where(x), out, (x - (1 - a).sqrt() * out) / a.sqrt())
        return a.sqrt() * x - (1 - a).sqrt() * out

    def _x0_where(self, x: Tensor) -> Tensor:
        """hybrid: a bool mask over x's channels [1, C, 1, ...], set where the network predicts x_0."""
        mask = torch.zeros(x.shape[1], dtype=torch.bool, device=x.device)
        mask[self.x0_channels] = True
        return mask.view(1, -1, *([1] * (x.ndim - 2)))

    def output_for(self, x0: Tensor, x: Tensor, t: Tensor) -> Tensor:
        """The network output that implies `x0` at x_t: the inverse of `predicted_x0`, except that a hybrid
        network's sampling output is x_0 itself (`guarded`)."""
        if self.prediction in ("x0", "hybrid"):
            return x0
        a = _gather(self.alphas_cumprod, t, x.ndim)
        eps = (x - a.sqrt() * x0) / (1 - a).sqrt()
        return eps if self.prediction == "epsilon" else a.sqrt() * eps - (1 - a).sqrt() * x0

    def guarded(self, model: Denoiser) -> Denoiser:
        """`model` with its x_0 estimate clipped to `clip_sample` (per feature, axis 1). Clipping the
        output rather than inside each scheduler works the same for every sampler, and the DDIM step then
        uses the noise the clipped x_0 implies, as the original DDIM clip does. A softmax head's estimate,
        a mean of codes, is inside their range already: its output becomes that estimate, the x0
        prediction its scheduler expects. So does a hybrid network's, whose targets differ by channel."""
        if self.prediction == "softmax":
            return lambda x, t: self.expected_code(model(x, t))
        if self.prediction == "hybrid":
            model = self._as_x0(model)
        if self.clip_sample is None:
            return model
        low, high = self.clip_sample

        def clipped(x: Tensor, t: Tensor) -> Tensor:
            out = model(x, t).to(x.dtype)
            shape = (1, -1, *([1] * (x.ndim - 2)))
            lo = torch.as_tensor(low, dtype=x.dtype, device=x.device).reshape(shape)
            hi = torch.as_tensor(high, dtype=x.dtype, device=x.device).reshape(shape)
            x0 = out if self.prediction == "hybrid" else self.predicted_x0(out, x, t)
            return self.output_for(torch.maximum(torch.minimum(x0, hi), lo), x, t)

        return clipped

    def _as_x0(self, model: Denoiser) -> Denoiser:
        return lambda x, t: self.predicted_x0(model(x, t).to(x.dtype), x, t)

    # -- sampling -----------------------------------------------------------------------------------------

    def scheduler(self, sampler: str = "ddim", steps: int | None = 50):
        """A fresh diffusers scheduler for one reverse run, its timesteps set. DDPM visits all T; the others
        visit `steps`, spaced "trailing" (Lin et al. 2024): the first step starts at t = T-1, pure noise."""
        if sampler not in SAMPLERS:
            raise ValueError(f"unknown sampler {sampler!r}; choose one of {', '.join(SAMPLERS)}")
        steps = self.timesteps if sampler == "ddpm" or steps is None else steps
        if not 1 <= steps <= self.timesteps:
            raise ValueError(f"steps must be in [1, {self.timesteps}], got {steps}")
        extra = {"clip_sample": False, "variance_type": "fixed_small", "timestep_spacing": "leading"} \
            if sampler == "ddpm" else {"timestep_spacing": "trailing"}
        if sampler == "ddim":
            extra |= {"clip_sample": False, "set_alpha_to_one": True}
        scheduler = _diffusers_class(SAMPLERS[sampler])(**self._scheduler_config(), **extra)
        scheduler.set_timesteps(steps, device=self.alphas_cumprod.device)
        return scheduler

    def sampling_timesteps(self, sampler: str = "ddim", steps: int | None = 50) -> list[int]:
        """The descending timesteps a sampler visits."""
        return [int(t) for t in self.scheduler(sampler, steps).timesteps]

    def denoise_steps(self, model: Denoiser, x: Tensor, sampler: str = "ddim", steps: int | None = 50,
                      eta: float = 0.0, generator: torch.Generator | None = None,
                      known: Tensor | None = None, known_mask: Tensor | None = None) -> Iterator[Tensor]:
        """Run the reverse process from noise `x`, yielding x after every step (the last is x_0).

        With `known` and `known_mask` (1 = given), the given entries are replaced before every step by
        `known` noised to the current level, and by `known` itself at the end, so the sample grows around
        them (inpainting; a prompt to continue when the mask covers the first notes). `eta` is DDIM's
        (0 = deterministic, 1 = DDPM's variance); the other samplers ignore it.
        """
        scheduler = self.scheduler(sampler, steps)
        net = self.sampling_net(model, known, known_mask)
        # Only the stochastic samplers draw noise: DDPM always, DDIM when eta > 0.
        kwargs = {"eta": eta, "generator": generator} if sampler == "ddim" else \
            {"generator": generator} if sampler == "ddpm" else {}
        last = len(scheduler.timesteps) - 1
        for i, t in enumerate(scheduler.timesteps):
            tt = torch.full((x.shape[0],), int(t), device=x.device, dtype=torch.long)
            if known is not None:
                noise = torch.randn(x.shape, device=x.device, dtype=x.dtype, generator=generator)
                x = torch.where(known_mask.bool(), self.add_noise(known, noise, tt), x)
            out = net(x, tt).to(x.dtype)
            x = scheduler.step(out, t, x, return_dict=False, **kwargs)[0]
            if known is not None and i == last:
                x = torch.where(known_mask.bool(), known, x)
            yield x

    def _net_input(self, x_t: Tensor, estimate: Tensor | None, known: Tensor | None, given: Tensor | None
                   ) -> Tensor:
        """What the network reads at sampling: x_t, then its last x_0 estimate when self-conditioned (zeros
        at first), then inpainting's context."""
        parts = [x_t]
        if self.self_condition:
            parts.append(torch.zeros_like(x_t) if estimate is None else estimate)
        if self.inpainting:
            parts.append(self._context(x_t, known, given))
        return torch.cat(parts, dim=1)

    def code_nll(self, model: Denoiser, x0: Tensor, t: int, generator: torch.Generator | None = None,
                 known: Tensor | None = None, given: Tensor | None = None) -> Tensor:
        """Per position [B, 1, ...]: a softmax head's cross-entropy for the codes of `x0`, read from x_t
        drawn from q(x_t | x_0) at level `t` (and inpainting's `known` entries where `given`): how well x_0
        fits what the model expects there, the term by which candidates of one gap can be ranked."""
        if self.prediction != "softmax":
            raise ValueError(f"code_nll needs a softmax head, not {self.prediction}-prediction")
        tt = torch.full((x0.shape[0],), int(t), device=x0.device, dtype=torch.long)
        noise = torch.randn(x0.shape, device=x0.device, dtype=x0.dtype, generator=generator)
        x_t = self.add_noise(x0, noise, tt)
        return self._code_loss(model(self._net_input(x_t, None, known, given), tt), x0)

    def sampling_net(self, model: Denoiser, known: Tensor | None = None, given: Tensor | None = None
                     ) -> Denoiser:
        """`model` as one sampling run calls it: guarded (`guarded`); when self-conditioned fed its own
        x_0 estimate of the call before (zeros at first) beside x_t; when inpainting, shown `known` where
        `given` ([B, 1, ...]) is set. Stateful: one per run."""
        if not (self.self_condition or self.inpainting):
            return self.guarded(model)
        estimate: Tensor | None = None

        def conditioned(x_t: Tensor, t: Tensor) -> Tensor:
            return model(self._net_input(x_t, estimate, known, given), t)

        guarded = self.guarded(conditioned)  # the guard reads x_t, not x_t and the context
        if not self.self_condition:
            return guarded

        def net(x_t: Tensor, t: Tensor) -> Tensor:
            nonlocal estimate
            out = guarded(x_t, t).to(x_t.dtype)
            # A softmax or hybrid head's guarded output is its x_0 estimate already.
            x0 = out if self.prediction in X0_OUT else self.predicted_x0(out, x_t, t)
            estimate = x0.clamp(-1, 1)
            return out

        return net

    @torch.no_grad()
    def sample(self, model: Denoiser, shape: tuple[int, ...], sampler: str = "ddim", steps: int | None = 50,
               eta: float = 0.0, generator: torch.Generator | None = None, device: torch.device | str = "cpu",
               known: Tensor | None = None, known_mask: Tensor | None = None) -> Tensor:
        """Draw samples x_0 of `shape`, starting from standard normal noise."""
        x = torch.randn(shape, device=device, generator=generator)
        for x_step in self.denoise_steps(model, x, sampler, steps, eta, generator, known, known_mask):
            x = x_step
        return x
