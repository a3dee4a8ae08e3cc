"""The U-Net: parameter counts against the original, causality of every block, loading trained weights."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import pytest
import torch

from pipeline import cli
from pipeline.errors import DmcError
from pipeline.model.checkpoints import write_checkpoint
from pipeline.model.diffusion import GaussianDiffusion
from pipeline.model.unet import (
    PRESETS,
    Attention,
    Conv,
    ConvBlock,
    ConvLayer,
    Down,
    SqueezeExcite,
    UNet,
    Up,
    block_counts,
    count,
    get_config,
    load_trained,
    pool,
    summary,
    upsample,
)

# The original TensorFlow model's summary, block by block (issue 4).
ORIGINAL = [
    ("input conv block", 31_296), ("positional projection", 4_160),
    ("down1", 202_624), ("down1 attention", 165_504),
    ("down2", 743_168), ("down2 attention", 658_688),
    ("down3", 1_411_328), ("down3 attention", 658_688),
    ("bottleneck1", 1_247_232), ("bottleneck2", 1_640_448), ("bottleneck3", 607_232),
    ("up1", 3_552_128), ("up1 attention", 165_504),
    ("up2", 896_960), ("up2 attention", 41_792),
    ("up3", 247_616), ("up3 attention", 41_792),
    ("output", 195),
]
TINY = get_config("tiny")



def test_full_preset_matches_the_original_block_by_block():
    model = UNet(get_config("full"))
    assert block_counts(model) == ORIGINAL
    assert count(model) == 12_316_355


def test_presets_shrink_from_full_to_tiny_and_summary_ends_with_total():
    totals = {name: count(UNet(cfg)) for name, cfg in PRESETS.items()}
    assert totals["tiny"] < totals["small"] < totals["full"]
    text = summary("small")
    assert "down2 attention" in text
    assert text.splitlines()[-1] == f"total parameters: {totals['small']:,}"


def test_unknown_preset_is_a_one_line_error(capsys):
    with pytest.raises(DmcError, match="unknown preset 'huge'"):
        get_config("huge")
    assert cli.main(["model", "--preset", "huge"]) == 2
    err = capsys.readouterr().err
    assert err.strip().count("\n") == 0 and "unknown preset" in err


def test_width_must_be_a_multiple_of_eight():
    model = UNet(TINY)
    assert model(torch.randn(2, 3, 1, 16), torch.tensor([0, 999])).shape == (2, 3, 1, 16)
    with pytest.raises(ValueError, match="multiple of 8"):
        model(torch.randn(2, 3, 1, 12), torch.tensor([0, 1]))


# -- causality ------------------------------------------------------------------------------------------

W = 16


def _perturbed(x: torch.Tensor, after: int, dim: int) -> torch.Tensor:
    """x with every position > `after` along `dim` replaced by other values."""
    y = x.clone()
    index = [slice(None)] * x.ndim
    index[dim] = slice(after + 1, None)
    y[tuple(index)] += torch.randn_like(y[tuple(index)]) + 1.0
    return y


def _assert_prefix(f: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, dim: int, cut_in: int,
                   cut_out: int) -> None:
    """Changing inputs after `cut_in` leaves outputs up to `cut_out` (inclusive) unchanged, and does
    change some later output (so the check can see a leak at all)."""
    with torch.no_grad():
        y, z = f(x), f(_perturbed(x, cut_in, dim))
    index = [slice(None)] * y.ndim
    index[dim] = slice(None, cut_out + 1)
    torch.testing.assert_close(z[tuple(index)], y[tuple(index)], rtol=0, atol=1e-10)
    assert not torch.allclose(z, y)


def _blocks(cfg):
    c = 8
    return {
        "conv": Conv(c, 12, 5, cfg.causal),
        "squeeze-excite": SqueezeExcite(c, 4, cfg.causal),
        "conv layer": ConvLayer(c, 12, 5, cfg),
        "conv block": ConvBlock(c, 12, 10, 3, cfg),
        "attention": Attention(c, 2, cfg.causal),
    }


@pytest.mark.parametrize("rows", [1, 4])
@pytest.mark.parametrize("name", ["conv", "squeeze-excite", "conv layer", "conv block", "attention"])
def test_block_output_at_t_ignores_later_notes(name, rows):
    torch.manual_seed(0)
    block = _blocks(TINY)[name].double()
    x = torch.randn(2, rows, W, 8, dtype=torch.float64)  # [B, H, W, C]
    for t in (0, 5, W - 2):
        _assert_prefix(block, x, dim=2, cut_in=t, cut_out=t)


@pytest.mark.parametrize("rows", [1, 4])
def test_pooling_and_down_block_read_no_later_note(rows):
    torch.manual_seed(0)
    x = torch.randn(2, rows, W, 8, dtype=torch.float64)
    down = Down(8, 12, dataclasses.replace(TINY, time_dim=6)).double()
    temb = torch.randn(2, 6, dtype=torch.float64)
    # Coarse position j summarizes notes 2j-1 and 2j, so it may be read at note 2j onwards. (The last
    # note reaches no coarse position, hence no cut at W - 2.)
    for t in (0, 1, 4, 7, W - 3):
        _assert_prefix(lambda v: pool(v, True), x, dim=2, cut_in=t, cut_out=t // 2)
        _assert_prefix(lambda v: down(v, temb), x, dim=2, cut_in=t, cut_out=t // 2)


@pytest.mark.parametrize("rows", [1, 4])
def test_upsampling_and_up_block_read_no_later_note(rows):
    torch.manual_seed(0)
    coarse = torch.randn(2, rows, W // 2, 8, dtype=torch.float64)
    skip = torch.randn(2, rows, W, 4, dtype=torch.float64)
    up = Up(8, 4, 6, 6, dataclasses.replace(TINY, time_dim=6)).double()
    temb = torch.randn(2, 6, dtype=torch.float64)
    for j in (0, 3, W // 2 - 2):
        _assert_prefix(upsample, coarse, dim=2, cut_in=j, cut_out=2 * j + 1)
        _assert_prefix(lambda c: up(c, skip, temb), coarse, dim=2, cut_in=j, cut_out=2 * j + 1)
        _assert_prefix(lambda s: up(coarse, s, temb), skip, dim=2, cut_in=2 * j + 1, cut_out=2 * j + 1)


@pytest.mark.parametrize("rows", [1, 4])
def test_whole_network_output_at_t_ignores_later_notes(rows):
    torch.manual_seed(0)
    model = UNet(TINY).double().eval()
    x = torch.randn(2, 3, rows, 32, dtype=torch.float64)  # [B, C, H, W]
    t = torch.tensor([10, 500])
    for cut in (0, 1, 6, 13, 30):
        _assert_prefix(lambda v: model(v, t), x, dim=3, cut_in=cut, cut_out=cut)


def test_non_causal_variant_does_see_later_notes():
    torch.manual_seed(0)
    model = UNet(get_config("tiny", causal=False)).double().eval()
    x = torch.randn(2, 3, 1, 32, dtype=torch.float64)
    t = torch.tensor([10, 500])
    with torch.no_grad():
        y, z = model(x, t), model(_perturbed(x, 20, dim=3), t)
    assert not torch.allclose(y[..., :10], z[..., :10])


def test_folded_rows_are_one_row_of_every_rows_channels_and_unfold_back():
    # rows_as_channels=H reads [B, C, H, W] as the one-row network reads [B, C*H, 1, W], so each layer sees
    # every row at step j together; the output unfolds in the same order.
    torch.manual_seed(0)
    base = dataclasses.replace(get_config("tiny", causal=False), features=5)
    folded = UNet(dataclasses.replace(base, rows_as_channels=4)).double().eval()
    flat = UNet(dataclasses.replace(base, features=20)).double().eval()
    flat.load_state_dict(folded.state_dict())
    x, t = torch.randn(2, 5, 4, 32, dtype=torch.float64), torch.tensor([10, 500])
    with torch.no_grad():
        y = folded(x, t)
        assert y.shape == x.shape
        assert torch.equal(y, flat(x.reshape(2, 20, 1, 32), t).reshape(2, 5, 4, 32))
        moved = x.clone()
        moved[:, :, 3, 9] += 1.0  # the bass at step 9 only
        assert not torch.allclose(y[:, :, 0, 9], folded(moved, t)[:, :, 0, 9])
    with pytest.raises(ValueError, match="3 rows; this network folds exactly 4"):
        folded(x[:, :, :3], t)


# -- learning and loading -------------------------------------------------------------------------------


def test_tiny_model_overfits_one_batch():
    torch.manual_seed(0)
    model, diffusion = UNet(TINY), GaussianDiffusion()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    x0 = torch.rand(4, 3, 1, 16)
    losses = []
    for _ in range(40):
        # The same timesteps and noise every step: a fixed regression target the net can memorize.
        loss = diffusion.loss(model, x0, generator=torch.Generator().manual_seed(0))
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.1 * losses[0], losses[::10]


def _model_file(path, config, ema_config=None):
    ema = UNet(ema_config or config).state_dict()
    diffusion = {"timesteps": 1000, "beta_start": 1e-4, "beta_end": 0.02}
    write_checkpoint(path, {"config": dataclasses.asdict(config), "ema": ema, "stats": {"seq_len": 32},
                            "diffusion": diffusion, "step": 3})


def test_load_trained_returns_eval_model_stats_and_schedule(tmp_path):
    _model_file(tmp_path / "model.pt", TINY)
    model, stats, diffusion = load_trained(tmp_path / "model.pt")
    assert not model.training and model.config == TINY
    assert stats == {"seq_len": 32} and diffusion["timesteps"] == 1000


def test_load_trained_rejects_missing_and_incompatible_files(tmp_path):
    with pytest.raises(DmcError, match="no trained model"):
        load_trained(tmp_path / "absent.pt")
    _model_file(tmp_path / "model.pt", TINY, ema_config=get_config("small"))
    with pytest.raises(DmcError, match="not a compatible trained model") as err:
        load_trained(tmp_path / "model.pt")
    assert "\n" not in str(err.value)
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(DmcError, match="junk.pt: not a readable checkpoint"):
        load_trained(tmp_path / "junk.pt")
    unchecked = {"config": dataclasses.asdict(TINY), "ema": UNet(TINY).state_dict(), "stats": {},
                 "diffusion": {"timesteps": 1000}, "step": 3}
    torch.save(unchecked, tmp_path / "old.pt")  # as dmc wrote models before they carried a checksum
    with pytest.raises(DmcError, match=r"old.pt: no checksum .*dvc repro -f train"):
        load_trained(tmp_path / "old.pt")


def test_conv_equals_a_left_padded_conv1d():
    torch.manual_seed(0)
    conv = Conv(6, 10, 5, causal=True).double()
    x = torch.randn(2, 3, 16, 6, dtype=torch.float64)  # [B, H, W, C]
    rows = x.reshape(6, 16, 6).transpose(1, 2)  # [B*H, C, W]
    expected = torch.nn.functional.conv1d(torch.nn.functional.pad(rows, (4, 0)), conv.weight)
    torch.testing.assert_close(conv(x), expected.transpose(1, 2).reshape(2, 3, 16, 10))


@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("width", [16, 2])  # 2: narrower than the kernel, as at the deepest level
def test_conv_gradients_equal_conv1d_gradients(causal, width):
    # The conv's hand-written backward against autograd through the same convolution done by conv1d.
    torch.manual_seed(0)
    conv = Conv(6, 10, 5, causal=causal).double()
    x = torch.randn(2, 3, width, 6, dtype=torch.float64, requires_grad=True)
    grad = torch.randn(2, 3, width, 10, dtype=torch.float64)
    conv(x).backward(grad)
    ours = x.grad, conv.weight.grad
    x.grad = None
    weight = conv.weight.detach().clone().requires_grad_(True)
    rows = torch.nn.functional.pad(x.reshape(6, width, 6).transpose(1, 2), conv.pad)
    torch.nn.functional.conv1d(rows, weight).transpose(1, 2).reshape(2, 3, width, 10).backward(grad)
    torch.testing.assert_close(ours[0], x.grad)
    torch.testing.assert_close(ours[1], weight.grad)
