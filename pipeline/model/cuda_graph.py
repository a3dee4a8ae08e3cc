"""The training step as one CUDA graph: forward, backward, clipping, AdamW and the EMA update.

At batch 64 the U-Net is launch-bound on a GPU (about a thousand small kernels a step), so replaying
the whole step as one graph removes the CPU from the loop. A graph replays fixed memory, so the step is
rebuilt around buffers that never move (`StaticStep`):
- the batch is copied into a static input buffer;
- the step's timesteps and noise are drawn *before* the step, from the step's seeded generator in the
  order the eager loss draws them (`GaussianDiffusion.draw`), and copied into static buffers too, so a
  run keeps the eager loop's stream of randomness (seed, step, rank);
- the learning rate and the EMA weight are device tensors, refilled each step (AdamW runs fused and
  capturable, reading its lr from that tensor).

`StaticStep` runs eagerly on any device: on CPU the tests check it gives the eager step's loss and
weights bit for bit. `CudaGraphStep` captures its `run` once and replays it every step.
"""

from __future__ import annotations

import contextlib
from typing import Any

import torch
from torch import Tensor, nn

from pipeline.model.diffusion import GaussianDiffusion


class StaticStep:
    """One training step reading only fixed buffers, so that it can be captured as a CUDA graph.

    `net` is the model maybe wrapped (torch.compile); `model` owns the parameters; `ema` has `.model` and
    `.weight(step)`; `example` is a batch (and `example_mask` its mask) shaped as every later one.
    The optimizer's param groups are switched to a tensor lr and `capturable`, as graph capture needs.
    """

    def __init__(self, net: nn.Module, model: nn.Module, ema: Any, opt: torch.optim.Optimizer,
                 diffusion: GaussianDiffusion, grad_clip: float, autocast: contextlib.AbstractContextManager,
                 example: Tensor, example_mask: Tensor | None = None):
        self.net, self.model, self.ema, self.opt, self.diffusion = net, model, ema, opt, diffusion
        self.grad_clip, self.autocast = grad_clip, autocast
        device = example.device
        self.x0 = torch.zeros_like(example)
        self.t = torch.zeros(example.shape[0], dtype=torch.long, device=device)
        self.noise = torch.zeros_like(example)
        self.mask = None if example_mask is None else torch.ones_like(example_mask)
        self.params = list(model.parameters())
        self.averaged = list(ema.model.parameters())
        self.ema_weight = torch.zeros((), device=device)
        # The dtype each fused AdamW kernel reads a float lr as, so the tensor changes no number:
        # float32 on CUDA, float64 on CPU.
        lr_dtype = torch.float32 if device.type == "cuda" else torch.float64
        for group in opt.param_groups:
            group["lr"] = torch.tensor(float(group["lr"]), dtype=lr_dtype, device=device)
            group["capturable"] = True

    def load(self, x0: Tensor, gen: torch.Generator, step: int, lr: float,
             mask: Tensor | None = None) -> None:
        """Fill the buffers for `step`: the batch, its timesteps and noise, the lr and the EMA weight."""
        t, noise = self.diffusion.draw(x0, gen)
        self.x0.copy_(x0)
        self.t.copy_(t)
        self.noise.copy_(noise)
        if self.mask is not None:
            self.mask.copy_(mask)
        self.ema_weight.fill_(self.ema.weight(step))
        for group in self.opt.param_groups:
            group["lr"].fill_(lr)

    def run(self) -> Tensor:
        """The step proper, on the buffers (gradients must be None before: backward assigns them)."""
        with self.autocast:
            loss = self.diffusion.loss(self.net, self.x0, self.mask, drawn=(self.t, self.noise))
        loss.backward()
        if self.grad_clip > 0:
            nn.utils.clip_grad_norm_(self.params, self.grad_clip)
        self.opt.step()
        with torch.no_grad():
            # A tensor weight, not a float: a float would be baked into the graph at capture.
            weights = [self.ema_weight.expand_as(p) for p in self.averaged]
            torch._foreach_lerp_(self.averaged, [p.detach() for p in self.params], weights)
        return loss.detach()

    def __call__(self, x0: Tensor, gen: torch.Generator, step: int, lr: float,
                 mask: Tensor | None = None) -> Tensor:
        """One step, eagerly; returns the loss (a tensor of its own)."""
        self.load(x0, gen, step, lr, mask)
        self.opt.zero_grad(set_to_none=True)
        return self.run()


class CudaGraphStep(StaticStep):
    """`StaticStep.run` captured once as a CUDA graph, then replayed every step.

    Capture needs a few eager warm-up steps first (on a side stream: they create AdamW's moments and
    let cuBLAS and autocast settle). They would move the weights, so every weight, average and moment
    is put back afterwards, in place: the first replayed step is then the run's first step.
    """

    def __init__(self, *args: Any, warmup: int = 3, **kwargs: Any):
        super().__init__(*args, **kwargs)
        if self.x0.device.type != "cuda":
            raise ValueError(f"a CUDA graph needs CUDA tensors, got {self.x0.device.type}")
        before = self._snapshot()
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(warmup):
                self.opt.zero_grad(set_to_none=True)
                self.run()
        torch.cuda.current_stream().wait_stream(side)
        self._restore(before)
        self.opt.zero_grad(set_to_none=True)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self.loss = self.run()

    def _snapshot(self) -> dict[str, Any]:
        return {"params": [p.detach().clone() for p in self.params],
                "averaged": [p.detach().clone() for p in self.averaged],
                "state": {p: {k: v.clone() for k, v in s.items() if torch.is_tensor(v)}
                          for p, s in self.opt.state.items()}}

    @torch.no_grad()
    def _restore(self, before: dict[str, Any]) -> None:
        for p, saved in zip(self.params + self.averaged, before["params"] + before["averaged"], strict=True):
            p.copy_(saved)
        for p, state in self.opt.state.items():
            saved = before["state"].get(p)
            for k, v in state.items():
                if not torch.is_tensor(v):
                    continue
                if saved is None:  # moments and step counts the warm-up created start from zero
                    v.zero_()
                else:
                    v.copy_(saved[k])

    def __call__(self, x0: Tensor, gen: torch.Generator, step: int, lr: float,
                 mask: Tensor | None = None) -> Tensor:
        self.load(x0, gen, step, lr, mask)
        self.graph.replay()
        return self.loss.clone()  # the graph overwrites its loss on the next replay
