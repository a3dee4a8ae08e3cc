"""The diffusion process on its own: schedule, noising, DDPM and DDIM steps, clipping, inpainting."""

import torch

from pipeline.diffusion import GaussianDiffusion


def oracle(diffusion: GaussianDiffusion, x0: torch.Tensor):
    """A perfect denoiser for a single known x0: it returns exactly the noise in x_t."""

    def model(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        a = diffusion.alphas_cumprod[t].view(-1, 1, 1, 1)
        return (x - a.sqrt() * x0) / (1 - a).sqrt()

    return model


def test_linear_schedule_matches_the_original_recipe():
    d = GaussianDiffusion(1000, 1e-4, 0.02)
    assert torch.isclose(d.betas[0], torch.tensor(1e-4)) and torch.isclose(d.betas[-1], torch.tensor(0.02))
    assert d.alphas_cumprod[-1] < 1e-4  # x_T is (almost) pure noise


def test_ddim_timesteps_run_from_pure_noise_down_to_the_data():
    d = GaussianDiffusion(1000)
    steps = d.sampling_timesteps(50)
    assert len(steps) == 50 and steps[0] == 999 and steps[-1] == 0 and steps == sorted(steps, reverse=True)
    assert d.sampling_timesteps(None) == list(range(999, -1, -1))


def test_ddim_with_a_perfect_denoiser_recovers_x0_exactly():
    d = GaussianDiffusion(1000)
    x0 = torch.rand(2, 3, 1, 16)
    x = d.sample(oracle(d, x0), tuple(x0.shape), "ddim", 20, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(x, x0, atol=1e-4)


def test_ddpm_step_is_algorithm_2_of_ho_et_al_without_clipping():
    d = GaussianDiffusion(1000)
    x, eps = torch.randn(2, 3, 1, 8), torch.randn(2, 3, 1, 8)
    for t in (999, 500, 1, 0):
        beta, abar = d.betas[t], d.alphas_cumprod[t]
        expected = (x - beta / (1 - abar).sqrt() * eps) / (1 - beta).sqrt()
        gen = torch.Generator().manual_seed(1)
        got = d.ddpm_step(eps, t, x, gen)
        if t > 0:
            expected = expected + d.posterior_variance[t].sqrt() * torch.randn(
                x.shape, generator=torch.Generator().manual_seed(1))
        assert torch.allclose(got, expected, atol=1e-4), t


def test_clip_sample_keeps_a_wild_denoiser_inside_the_data_range():
    def wild(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return 50 * torch.randn(x.shape, generator=torch.Generator().manual_seed(int(t[0])))

    free, clipped = GaussianDiffusion(1000), GaussianDiffusion(1000, clip_sample=(0.0, 1.0))
    for sampler in ("ddim", "ddpm"):
        gen = torch.Generator().manual_seed(0)
        assert free.sample(wild, (2, 3, 1, 8), sampler, 10, generator=gen).abs().max() > 10
        x = clipped.sample(wild, (2, 3, 1, 8), sampler, 10, generator=torch.Generator().manual_seed(0))
        assert x.min() >= -0.05 and x.max() <= 1.05, sampler  # DDPM adds its last tiny bit of noise


def test_inpainting_keeps_the_known_entries_exactly():
    d = GaussianDiffusion(1000, clip_sample=(0.0, 1.0))
    known = torch.rand(1, 3, 1, 16)
    mask = torch.zeros_like(known, dtype=torch.bool)
    mask[..., :5] = True
    x = d.sample(lambda x, t: torch.zeros_like(x), (1, 3, 1, 16), "ddim", 10,
                 generator=torch.Generator().manual_seed(0), known=known, known_mask=mask)
    assert torch.equal(x[..., :5], known[..., :5])


def test_masked_loss_ignores_padded_entries():
    d = GaussianDiffusion(1000)
    x0 = torch.rand(4, 3, 2, 8)
    mask = torch.ones(4, 1, 2, 8)
    mask[:, :, 1] = 0

    def row_blind(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        out = torch.zeros_like(x)
        out[:, :, 1] = 1e3  # huge error, but only on the padded row
        return out

    masked = d.loss(row_blind, x0, mask, generator=torch.Generator().manual_seed(0))
    assert masked < 10 < d.loss(row_blind, x0, generator=torch.Generator().manual_seed(0))
