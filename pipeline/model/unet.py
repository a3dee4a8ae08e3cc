"""The causal U-Net that predicts the noise in a batch of note sequences.

Input and output are `[B, C, H, W]`: C=3 features (frequency, duration, delta), H instrument rows (1 for
piano), W notes. Inside, activations are kept channels-last, `[B, H, W, C]`: LayerNorm, the linear layers
and attention then work on contiguous memory, and the convolutions run as channels-last conv2d on
`[B*H, C, 1, W]` views, so no layer copies its input into another layout.

With `rows_as_channels=H` the rows are folded into the channels at the input (`[B, C*H, 1, W]`) and unfolded
at the output: the grid layout's voices, whose column j is one time in every row, are then read together by
every layer.

Causality: with `causal=True` the output at note t depends only on inputs at notes <= t (any row).
- convolutions are padded on the left only;
- squeeze-and-excitation squeezes over the prefix (a running mean) instead of the whole width;
- pooling first delays the sequence by one note, so coarse position j summarizes notes 2j-1 and 2j,
  and nearest upsampling hands it to notes 2j and 2j+1, which both come later;
- attention is masked so that a note sees notes at the same or earlier positions.
"""

from __future__ import annotations

import dataclasses
import math
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pipeline.errors import DmcError


@dataclass(frozen=True)
class UNetConfig:
    features: int = 3                                  # frequency, duration, delta (or their code's channels)
    cond_features: int = 0                             # extra input channels (self-conditioning's x_0)
    out_features: int = 0                              # output channels, when not `features` (logits)
    channels: tuple[int, ...] = (64, 128, 256, 256)    # input block, then each down block
    bottleneck: tuple[int, ...] = (512, 512, 256)      # one conv block each
    time_dim: int = 256                                # sinusoidal diffusion-time embedding
    pos_dim: int = 64                                  # sinusoidal note-position encoding
    heads: int = 2                                     # attention heads, each as wide as the block
    se_ratio: int = 16                                 # squeeze-and-excitation reduction
    kernel_in: int = 7
    kernel: int = 5                                    # down and up blocks
    kernel_mid: int = 3                                # bottleneck
    causal: bool = True
    rows_as_channels: int = 0                          # >0: this many rows folded into the channels (below)

    @property
    def stride(self) -> int:
        """The width must be a multiple of this: each down block halves it."""
        return 2 ** (len(self.channels) - 1)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> UNetConfig:
        """Inverse of `dataclasses.asdict` (lists from a checkpoint become tuples again)."""
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items()})


PRESETS: dict[str, UNetConfig] = {
    "full": UNetConfig(),  # the original: 12,316,355 parameters
    # Between tiny and small, for a CPU budget of tens of minutes.
    "compact": UNetConfig(channels=(24, 48, 64, 64), bottleneck=(128, 128, 64), time_dim=64, pos_dim=32),
    "small": UNetConfig(channels=(32, 64, 128, 128), bottleneck=(256, 256, 128), time_dim=128, pos_dim=32),
    "tiny": UNetConfig(channels=(16, 32, 32, 32), bottleneck=(64, 64, 32), time_dim=32, pos_dim=16),
}


def get_config(preset: str, causal: bool = True) -> UNetConfig:
    if preset not in PRESETS:
        raise DmcError(f"unknown preset {preset!r}; choose one of {', '.join(PRESETS)}")
    return dataclasses.replace(PRESETS[preset], causal=causal)


def sinusoidal(positions: Tensor, dim: int) -> Tensor:
    """`[N] -> [N, dim]`: sines then cosines at geometrically spaced frequencies (Vaswani et al. 2017)."""
    half = dim // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, device=positions.device) / max(half - 1, 1))
    angles = positions.float()[:, None] * freqs[None]
    return torch.cat([angles.sin(), angles.cos()], dim=1)


# -- layers: each takes and returns [B, H, W, C] ----------------------------------------------------


def _windows(x: Tensor, k: int, pad: tuple[int, int]) -> Tensor:
    """`[B, H, W, C] -> [B*H*W, k*C]`: every note's k-note window, tap-major (im2col). Each tap's channels
    stay one contiguous run, so the copy streams memory instead of gathering with stride k."""
    B, H, W, C = x.shape
    x = F.pad(x.reshape(B * H, W, C), (0, 0, *pad))
    return x.as_strided((B * H, W, k, C), (x.shape[1] * C, C, C, 1)).reshape(B * H * W, k * C)


class _WindowProduct(torch.autograd.Function):
    """`windows(x) @ weight` with a hand-written backward. Autograd's own (unfold's or as_strided's
    adjoint) scatters through a zeroed padded copy with stride k; here the input gradient is k
    contiguous slice additions straight into its own storage, and the padding is never materialized."""

    # Under CUDA autocast the product runs in bf16; custom_bwd gives the backward the forward's autocast
    # state, so its products cast alike instead of meeting a bf16 gradient with fp32 windows.
    @staticmethod
    @torch.amp.custom_fwd(device_type="cuda")
    def forward(ctx: Any, x: Tensor, weight: Tensor, pad: tuple[int, int]) -> Tensor:
        B, H, W, C = x.shape
        c_out, _, k = weight.shape
        windows = _windows(x, k, pad)
        taps = weight.transpose(1, 2).reshape(c_out, k * C)  # [c_out, (k, c_in)], as the windows; a view
        ctx.save_for_backward(windows, taps)
        ctx.pad, ctx.shape = pad, x.shape
        return (windows @ taps.t()).view(B, H, W, c_out)

    @staticmethod
    @torch.autograd.function.once_differentiable
    @torch.amp.custom_bwd(device_type="cuda")
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, Tensor, None]:
        windows, taps = ctx.saved_tensors
        B, H, W, C = ctx.shape
        c_out, k = taps.shape[0], taps.shape[1] // C
        grad = grad.reshape(B * H * W, c_out)
        grad_weight = (grad.t() @ windows).view(c_out, k, C).transpose(1, 2)
        grad_x = None
        if ctx.needs_input_grad[0]:
            per_tap = (grad @ taps).view(B * H, W, k, C)  # the gradient of every window entry
            left = ctx.pad[0]
            # Tap j of the window at note w read input note w + j - left; tap `left` covers every note.
            grad_x = per_tap[:, :, left].contiguous()
            for j in range(k):
                lo, hi = max(0, left - j), min(W, W + left - j)  # notes w whose tap j is inside
                if j != left and lo < hi:
                    grad_x[:, lo + j - left:hi + j - left] += per_tap[:, lo:hi, j]
            grad_x = grad_x.view(B, H, W, C)
        return grad_x, grad_weight, None


class Conv(nn.Module):
    """A bias-free 1×k convolution along the width; left-only padding when causal.

    Computed as one matrix product of every note's k-note window (im2col): on CPUs this beats
    oneDNN's channels-last convolution, whose weight gradient is slow for the wide blocks.
    """

    def __init__(self, c_in: int, c_out: int, k: int, causal: bool):
        super().__init__()
        self.k = k
        weight = torch.empty(c_out, c_in, k)  # as nn.Conv1d
        nn.init.xavier_uniform_(weight)  # Keras' glorot_uniform, as the original
        # Shaped as nn.Conv1d's (so checkpoints and conv1d read it), but stored tap-major: the window
        # product then uses it in place instead of copying every conv weight on every call.
        self.weight = nn.Parameter(torch.empty(c_out, k, c_in).transpose(1, 2).copy_(weight))
        self.pad = (k - 1, 0) if causal else ((k - 1) // 2, k // 2)

    def forward(self, x: Tensor) -> Tensor:
        return _WindowProduct.apply(x, self.weight, self.pad)


class SqueezeExcite(nn.Module):
    """Scale each channel by a gate computed from the mean over rows and (causal) the prefix of notes."""

    def __init__(self, c: int, ratio: int, causal: bool):
        super().__init__()
        self.down = nn.Linear(c, max(1, c // ratio), bias=False)
        self.up = nn.Linear(max(1, c // ratio), c, bias=False)
        self.causal = causal

    def forward(self, x: Tensor) -> Tensor:
        s = x[:, 0] if x.shape[1] == 1 else x.mean(1)  # [B, W, C]; one row needs no mean (nor its copy)
        if self.causal:
            # `down` is linear and bias-free, so it commutes with the running mean: reducing the channels
            # first makes the prefix sum (and its backward) `ratio` times cheaper.
            s = self.down(s)
            count = torch.arange(1, s.shape[1] + 1, device=x.device, dtype=s.dtype)
            s = s.cumsum(1) / count[:, None]
        else:
            s = self.down(s.mean(1, keepdim=True))
        return x * torch.sigmoid(self.up(F.relu(s)))[:, None]


class ConvLayer(nn.Module):
    """Conv, LayerNorm over channels, GELU, squeeze-and-excitation."""

    def __init__(self, c_in: int, c_out: int, k: int, cfg: UNetConfig):
        super().__init__()
        self.conv = Conv(c_in, c_out, k, cfg.causal)
        self.norm = nn.LayerNorm(c_out)
        self.se = SqueezeExcite(c_out, cfg.se_ratio, cfg.causal)

    def forward(self, x: Tensor) -> Tensor:
        return self.se(F.gelu(self.norm(self.conv(x))))


class ConvBlock(nn.Sequential):
    """Two conv layers: c_in -> mid -> c_out."""

    def __init__(self, c_in: int, mid: int, c_out: int, k: int, cfg: UNetConfig):
        super().__init__(ConvLayer(c_in, mid, k, cfg), ConvLayer(mid, c_out, k, cfg))


class Attention(nn.Module):
    """Pre-LayerNorm multi-head self-attention then a GELU MLP, both residual.

    As Keras `MultiHeadAttention(num_heads, key_dim=channels)`: each head's query/key/value is as wide
    as the block. Tokens are all (row, note) pairs; causally, a token sees notes at the same or earlier
    positions in every row.
    """

    def __init__(self, c: int, heads: int, causal: bool):
        super().__init__()
        self.heads, self.causal = heads, causal
        self.norm1 = nn.LayerNorm(c)
        self.qkv = nn.Linear(c, 3 * heads * c)
        self.proj = nn.Linear(heads * c, c)
        self.norm2 = nn.LayerNorm(c)
        self.mlp = nn.Sequential(nn.Linear(c, c), nn.GELU(), nn.Linear(c, c))

    def forward(self, x: Tensor) -> Tensor:
        B, H, W, C = x.shape
        x = x.reshape(B, H * W, C)
        q, k, v = self.qkv(self.norm1(x)).view(B, H * W, 3, self.heads, C).permute(2, 0, 3, 1, 4)
        mask = None
        if self.causal and H > 1:
            note = torch.arange(W, device=x.device).repeat(H)
            mask = note[None, :] <= note[:, None]
        a = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=self.causal and H == 1)
        x = x + self.proj(a.transpose(1, 2).reshape(B, H * W, self.heads * C))
        x = x + self.mlp(self.norm2(x))
        return x.view(B, H, W, C)


class TimeProjection(nn.Sequential):
    """Swish, then a linear map from the time embedding to the block's channels."""

    def __init__(self, time_dim: int, c: int):
        super().__init__(nn.SiLU(), nn.Linear(time_dim, c))

    def forward(self, temb: Tensor) -> Tensor:
        return super().forward(temb)[:, None, None]  # broadcast over rows and notes


def pool(x: Tensor, causal: bool) -> Tensor:
    """Average pairs of notes: [B, H, W, C] -> [B, H, W/2, C]."""
    if causal:
        x = F.pad(x, (0, 0, 1, -1))  # delay by one note: coarse j averages notes 2j-1, 2j
    return x.unflatten(2, (-1, 2)).mean(3)


def upsample(x: Tensor) -> Tensor:
    """Nearest: coarse j -> notes 2j, 2j+1 (both at or after the notes j summarizes)."""
    return x.repeat_interleave(2, dim=2)


class Down(nn.Module):
    """Pool, a residual conv block, a conv block to c_out, plus time; then attention."""

    def __init__(self, c_in: int, c_out: int, cfg: UNetConfig):
        super().__init__()
        self.causal = cfg.causal
        self.keep = ConvBlock(c_in, c_in, c_in, cfg.kernel, cfg)
        self.grow = ConvBlock(c_in, c_out, c_out, cfg.kernel, cfg)
        self.time = TimeProjection(cfg.time_dim, c_out)
        self.attn = Attention(c_out, cfg.heads, cfg.causal)

    def forward(self, x: Tensor, temb: Tensor) -> Tensor:
        x = pool(x, self.causal)
        x = x + self.keep(x)
        return self.attn(self.grow(x) + self.time(temb))


class Up(nn.Module):
    """Upsample, concatenate the skip, a residual conv block, a conv block to c_out, plus time; attention."""

    def __init__(self, c_in: int, c_skip: int, mid: int, c_out: int, cfg: UNetConfig):
        super().__init__()
        c = c_in + c_skip
        self.keep = ConvBlock(c, c, c, cfg.kernel, cfg)
        self.shrink = ConvBlock(c, mid, c_out, cfg.kernel, cfg)
        self.time = TimeProjection(cfg.time_dim, c_out)
        self.attn = Attention(c_out, cfg.heads, cfg.causal)

    def forward(self, x: Tensor, skip: Tensor, temb: Tensor) -> Tensor:
        x = torch.cat([upsample(x), skip], dim=-1)
        x = x + self.keep(x)
        return self.attn(self.shrink(x) + self.time(temb))


class UNet(nn.Module):
    def __init__(self, config: UNetConfig):
        super().__init__()
        self.config = cfg = config
        ch = cfg.channels
        fold = max(cfg.rows_as_channels, 1)
        self.input = ConvBlock((cfg.features + cfg.cond_features) * fold, ch[0], ch[0], cfg.kernel_in, cfg)
        self.pos = nn.Linear(cfg.pos_dim, ch[0])
        self.downs = nn.ModuleList(Down(a, b, cfg) for a, b in zip(ch[:-1], ch[1:], strict=True))
        mids = [ch[-1], *cfg.bottleneck]
        self.mid = nn.Sequential(*(ConvBlock(a, b, b, cfg.kernel_mid, cfg)
                                   for a, b in zip(mids[:-1], mids[1:], strict=True)))
        # Up block i (deepest first) takes the skip of level j: mid channels ch[j], output ch[j-1].
        ups, c = [], cfg.bottleneck[-1]
        for j in reversed(range(len(ch) - 1)):
            ups.append(Up(c, ch[j], ch[j], ch[max(j - 1, 0)], cfg))
            c = ch[max(j - 1, 0)]
        self.ups = nn.ModuleList(ups)
        self.out = nn.Linear(c, (cfg.out_features or cfg.features) * fold)  # the 1×1 output convolution
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        """x: [B, C, H, W] noisy segments, t: [B] timesteps -> the prediction [B, C', H, W] (noise, v or x_0;
        C' = C; or one logit per code of each categorical group: `GaussianDiffusion.output_channels`)."""
        B, _, H, W = x.shape
        if W % self.config.stride:
            raise ValueError(f"width {W} is not a multiple of {self.config.stride}")
        if self.config.rows_as_channels:
            if self.config.rows_as_channels != H:
                raise ValueError(f"{H} rows; this network folds exactly {self.config.rows_as_channels}")
            # Every row's channels at one step become one position's: each convolution then reads all the
            # voices sounding together, where row-by-row layers only meet them through attention.
            x = x.reshape(B, -1, 1, W)
        temb = sinusoidal(t, self.config.time_dim).to(x.dtype)
        h = self.input(x.permute(0, 2, 3, 1))
        h = h + self.pos(sinusoidal(torch.arange(W, device=x.device), self.config.pos_dim).to(x.dtype))
        skips = [h]
        for down in self.downs:
            skips.append(down(skips[-1], temb))
        h = self.mid(skips.pop())  # the deepest level feeds the bottleneck, not an up block
        for up in self.ups:
            h = up(h, skips.pop(), temb)
        return self.out(h).permute(0, 3, 1, 2).reshape(B, -1, H, W)


# -- inspection and loading ---------------------------------------------------------------------------


def count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def block_counts(model: UNet) -> list[tuple[str, int]]:
    """Parameters per block, in the order of the original's summary (attention listed on its own)."""
    rows = [("input conv block", count(model.input)), ("positional projection", count(model.pos))]
    for name, blocks in (("down", model.downs), ("up", model.ups)):
        for i, block in enumerate(blocks, 1):
            attn = count(block.attn)
            rows += [(f"{name}{i}", count(block) - attn), (f"{name}{i} attention", attn)]
        if name == "down":
            rows += [(f"bottleneck{i}", count(b)) for i, b in enumerate(model.mid, 1)]
    return rows + [("output", count(model.out))]


def summary(preset: str) -> str:
    """A per-block parameter table for `dmc model --preset NAME`, ending with the total."""
    model = UNet(get_config(preset))
    rows = block_counts(model)
    width = max(len(name) for name, _ in rows)
    lines = [f"U-Net preset {preset!r}: {model.config}"]
    lines += [f"  {name:<{width}}  {n:>12,}" for name, n in rows]
    lines.append(f"total parameters: {count(model):,}")
    return "\n".join(lines)


def default_device() -> torch.device:
    """CUDA, then Apple's MPS, then the CPU."""
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def load_trained(path: str | Path, device: torch.device | str = "cpu") -> tuple[UNet, dict, dict]:
    """Load `models/model.pt`: (U-Net with the EMA weights, in eval mode; stats dict; diffusion kwargs).

    The file's checksum is verified first (`pipeline.model.checkpoints`): damaged weights are refused, not
    sampled from."""
    from pipeline.model.checkpoints import read_checkpoint

    path = Path(path)
    if not path.is_file():
        raise DmcError(f"no trained model at {path}; run the train stage first")
    ckpt = read_checkpoint(path, MODEL_ADVICE, device)
    try:
        model = UNet(UNetConfig.from_dict(ckpt["config"]))
        model.load_state_dict(ckpt["ema"])
        return model.to(device).eval(), ckpt["stats"], dict(ckpt["diffusion"])
    except (KeyError, TypeError, RuntimeError, EOFError, ValueError, pickle.UnpicklingError) as err:
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise DmcError(f"{path} is not a compatible trained model ({reason})") from None


# What to do about a damaged models/model.pt (a shipped model's folder is checked by its card first).
MODEL_ADVICE = "re-run `dvc repro -f train` to write it again, or pick another with --model"
