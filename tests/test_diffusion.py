"""The diffusion process on its own: schedules, prediction targets, loss weighting, every sampler against
diffusers run by hand, the x_0 guard and inpainting."""

import pytest
import torch
from diffusers import DDIMScheduler, DDPMScheduler, DPMSolverMultistepScheduler

from pipeline.model.diffusion import PREDICTIONS, SAMPLERS, GaussianDiffusion

# The targets a network outputs directly, one per channel alike (hybrid mixes two: its own tests below).
CONTINUOUS = [p for p in PREDICTIONS if p not in ("softmax", "hybrid")]


def oracle(diffusion: GaussianDiffusion, x0: torch.Tensor):
    """A perfect denoiser for a single known x0: it outputs exactly what its prediction target asks."""
    return lambda x, t: diffusion.output_for(x0, x, t)


def linear_net(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """A deterministic stand-in for a network that depends on both x and t."""
    return 0.3 * x + 0.001 * t.view(-1, 1, 1, 1).float() - 0.2


def test_linear_schedule_matches_the_original_recipe():
    d = GaussianDiffusion(1000, 1e-4, 0.02)
    assert torch.isclose(d.betas[0], torch.tensor(1e-4)) and torch.isclose(d.betas[-1], torch.tensor(0.02))
    # The original's float64 cumulative product, to float32 precision.
    expected = torch.cumprod(1 - torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64), 0).float()
    assert torch.allclose(d.alphas_cumprod, expected, rtol=1e-4, atol=1e-7)
    assert d.alphas_cumprod[-1] < 1e-4  # x_T is (almost) pure noise


def test_cosine_schedule_keeps_more_signal_in_the_middle_timesteps():
    linear, cosine = GaussianDiffusion(schedule="linear"), GaussianDiffusion(schedule="cosine")
    assert cosine.alphas_cumprod[300] > linear.alphas_cumprod[300] + 0.2
    assert cosine.alphas_cumprod[-1] < 1e-4


def test_samplers_start_from_pure_noise_and_visit_the_asked_number_of_steps():
    d = GaussianDiffusion(1000)
    assert d.sampling_timesteps("ddpm", None) == list(range(999, -1, -1))
    for sampler in ("ddim", "dpm++", "unipc"):
        steps = d.sampling_timesteps(sampler, 20)
        assert len(steps) == 20 and steps[0] == 999 and steps == sorted(steps, reverse=True), sampler
    with pytest.raises(ValueError, match="steps must be in"):
        d.sampling_timesteps("ddim", 1001)
    with pytest.raises(ValueError, match="unknown sampler"):
        d.sampling_timesteps("euler", 10)


@pytest.mark.parametrize("prediction", CONTINUOUS)
@pytest.mark.parametrize("sampler", list(SAMPLERS))
def test_every_sampler_and_target_recovers_x0_from_a_perfect_denoiser(prediction, sampler):
    d = GaussianDiffusion(1000, prediction=prediction, schedule="cosine")
    x0 = torch.rand(2, 3, 1, 16) * 2 - 1
    x = d.sample(oracle(d, x0), tuple(x0.shape), sampler, 20, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(x, x0, atol=1e-4)


@pytest.mark.parametrize("prediction", CONTINUOUS)
def test_training_target_and_predicted_x0_invert_each_other(prediction):
    d = GaussianDiffusion(prediction=prediction)
    x0, noise = torch.randn(4, 3, 1, 8), torch.randn(4, 3, 1, 8)
    t = torch.tensor([0, 10, 500, 999])
    x_t = d.add_noise(x0, noise, t)
    target = d.target(x0, noise, t)
    assert torch.allclose(d.predicted_x0(target, x_t, t), x0, atol=1e-3)
    assert torch.allclose(d.output_for(x0, x_t, t), target, atol=1e-3)
    if prediction == "v":  # Salimans & Ho's v, as diffusers defines it
        assert torch.allclose(target, DDPMScheduler().get_velocity(x0, noise, t), atol=1e-6)


def test_min_snr_weights_cap_the_signal_to_noise_ratio():
    t = torch.tensor([0, 100, 999])
    for prediction in CONTINUOUS:
        d = GaussianDiffusion(prediction=prediction, loss_weight="min_snr", min_snr_gamma=5.0)
        a = d.alphas_cumprod[t]
        snr = a / (1 - a)
        as_x0 = d.snr_weight(t) * {"epsilon": snr, "v": snr + 1, "x0": torch.ones(3)}[prediction]
        assert torch.allclose(as_x0, snr.clamp(max=5.0), rtol=1e-5), prediction  # in x_0 units: min(snr, γ)
    assert torch.equal(GaussianDiffusion().snr_weight(t), torch.ones(3))


def test_loss_is_the_mean_squared_error_of_the_target():
    d = GaussianDiffusion(prediction="v")
    x0 = torch.rand(4, 3, 1, 8)
    gen = torch.Generator().manual_seed(3)
    t = torch.randint(0, 1000, (4,), generator=gen)
    noise = torch.randn(x0.shape, generator=gen)
    expected = ((linear_net(d.add_noise(x0, noise, t), t) - d.target(x0, noise, t)) ** 2).mean()
    assert torch.allclose(d.loss(linear_net, x0, generator=torch.Generator().manual_seed(3)), expected)


def _by_hand(scheduler, shape, seed, **step_kwargs):
    """A plain diffusers sampling loop, the reference our adapter must reproduce."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=gen)
    for t in scheduler.timesteps:
        out = linear_net(x, torch.full((shape[0],), int(t)))
        x = scheduler.step(out, t, x, return_dict=False, **step_kwargs,
                           **({"generator": gen} if "generator" in step_kwargs or
                              isinstance(scheduler, DDPMScheduler) else {}))[0]
    return x


def test_samplers_are_diffusers_run_exactly_as_documented():
    d = GaussianDiffusion(1000)
    shape = (2, 3, 1, 8)
    base = {"num_train_timesteps": 1000, "beta_start": 1e-4, "beta_end": 0.02, "beta_schedule": "linear"}
    ddpm = DDPMScheduler(**base, clip_sample=False, variance_type="fixed_small")
    ddpm.set_timesteps(1000)
    ddim = DDIMScheduler(**base, clip_sample=False, set_alpha_to_one=True, timestep_spacing="trailing")
    ddim.set_timesteps(20)
    dpm = DPMSolverMultistepScheduler(**base, timestep_spacing="trailing")
    dpm.set_timesteps(15)
    for sampler, steps, reference in (("ddpm", None, _by_hand(ddpm, shape, 0)),
                                      ("ddim", 20, _by_hand(ddim, shape, 0, eta=0.0)),
                                      ("dpm++", 15, _by_hand(dpm, shape, 0))):
        ours = d.sample(linear_net, shape, sampler, steps, generator=torch.Generator().manual_seed(0))
        assert torch.equal(ours, reference), sampler


def test_ddpm_step_is_algorithm_2_of_ho_et_al_without_clipping():
    """One step of the DDPM sampler from t = 500, against Ho et al.'s formula."""
    d = GaussianDiffusion(1000)
    x, eps = torch.randn(2, 3, 1, 8), torch.randn(2, 3, 1, 8)
    scheduler = d.scheduler("ddpm")
    t = 500
    beta, abar, abar_prev = d.betas[t], d.alphas_cumprod[t], d.alphas_cumprod[t - 1]
    z = torch.randn(x.shape, generator=torch.Generator().manual_seed(1))
    sigma = ((1 - abar_prev) / (1 - abar) * beta).sqrt()
    expected = (x - beta / (1 - abar).sqrt() * eps) / (1 - beta).sqrt() + sigma * z
    got = scheduler.step(eps, t, x, generator=torch.Generator().manual_seed(1), return_dict=False)[0]
    assert torch.allclose(got, expected, atol=1e-4)


def test_clip_sample_keeps_a_wild_denoiser_inside_the_data_range_per_feature():
    def wild(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return 50 * torch.randn(x.shape, generator=torch.Generator().manual_seed(int(t[0])))

    low, high = [0.0, -1.0, 2.0], [1.0, 1.0, 3.0]
    free, clipped = GaussianDiffusion(1000), GaussianDiffusion(1000, clip_sample=(low, high))
    for sampler in ("ddim", "ddpm", "dpm++"):
        assert free.sample(wild, (2, 3, 1, 8), sampler, 10,
                           generator=torch.Generator().manual_seed(0)).abs().max() > 10
        x = clipped.sample(wild, (2, 3, 1, 8), sampler, 10, generator=torch.Generator().manual_seed(0))
        for f in range(3):  # DDPM adds its last tiny bit of noise
            assert low[f] - 0.05 <= x[:, f].min() and x[:, f].max() <= high[f] + 0.05, (sampler, f)


def test_dynamic_thresholding_shrinks_an_overshooting_estimate_instead_of_pinning_it():
    """Imagen's dynamic thresholding, through diffusers: an x_0 estimate beyond the data's range is
    scaled back inside it as a whole, its order kept, where a clip would pile it up on the bound."""
    x0 = torch.linspace(-3, 3, 3 * 64).reshape(1, 3, 1, 64)
    for sampler in ("ddim", "dpm++", "ddpm"):
        d = GaussianDiffusion(1000, prediction="x0", dynamic_threshold=(0.995, 4.0))
        x = d.sample(lambda x, t: x0, (1, 3, 1, 64), sampler, 5, generator=torch.Generator().manual_seed(0))
        flat = x.flatten()
        assert flat.abs().max() <= 1.0 + 1e-3 and (flat.diff() > 0).all(), sampler
        assert (flat.abs() > 0.999).sum() <= 2, sampler  # nothing piled up on the bounds


def _one_ddim_step(guard: str, x0: torch.Tensor) -> torch.Tensor:
    """The sample of a one-step DDIM run whose network predicts `x0`: exactly the guarded x_0 estimate
    (the last step goes to ᾱ = 1)."""
    from pipeline.compose.sampler import Sampler
    from pipeline.data.encoding import Encoding

    encoding = Encoding(lo=(100.0, 0.25, 0.0), hi=(800.0, 4.0, 4.0), pitch="midi", time="log",
                        scale="symmetric")
    d = Sampler("ddim", 1, guard=guard).diffusion({"prediction": "x0"}, encoding)
    return d.sample(lambda x, t: x0, tuple(x0.shape), "ddim", 1, generator=torch.Generator().manual_seed(0))


def test_each_guard_is_the_definition_it_is_named_after():
    x0 = torch.tensor([0.2, -0.5, 3.0, -2.5, 1.5, 0.9] * 2).reshape(1, 3, 1, 4)
    # dynamic (Saharia et al. 2022): s = max(1, the 99.5% quantile of |x_0|); x_0 clipped to ±s, divided by s.
    s = max(1.0, float(torch.quantile(x0.abs().flatten(), 0.995)))
    assert s > 2.9  # the threshold exceeds 1: not a clip
    assert torch.allclose(_one_ddim_step("dynamic", x0), x0.clamp(-s, s) / s, atol=1e-6)
    # step_clip: x_0 clipped to ±1.
    assert torch.allclose(_one_ddim_step("step_clip", x0), x0.clamp(-1, 1), atol=1e-6)
    # clip: each feature to the encoding's bounds, here [-1, 1] too (symmetric scaling).
    assert torch.allclose(_one_ddim_step("clip", x0), x0.clamp(-1, 1), atol=1e-6)
    assert torch.allclose(_one_ddim_step("none", x0), x0, atol=1e-6)


@pytest.mark.parametrize("sampler", list(SAMPLERS))
def test_inpainting_keeps_the_known_entries_exactly_with_every_sampler(sampler):
    d = GaussianDiffusion(1000, clip_sample=(0.0, 1.0))
    known = torch.rand(1, 3, 1, 16)
    mask = torch.zeros_like(known, dtype=torch.bool)
    mask[..., :5] = True
    x = d.sample(lambda x, t: torch.zeros_like(x), (1, 3, 1, 16), sampler, 10,
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


def test_unknown_settings_are_refused():
    for kwargs in ({"schedule": "sigmoid"}, {"prediction": "score"}, {"loss_weight": "p2"}):
        with pytest.raises(ValueError, match="unknown diffusion"):
            GaussianDiffusion(**kwargs)


def test_self_conditioning_feeds_the_previous_x0_estimate_back_to_the_network():
    """Sampling: the first step sees zeros beside x_t, every later step the x_0 estimate of the step
    before. Training: the network sees twice the channels, and the second half is zeros or a gradient-free
    estimate, half the time each."""
    d = GaussianDiffusion(1000, prediction="x0", self_condition=True)
    target = torch.full((2, 3, 1, 8), 0.5)
    seen = []

    def net(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        seen.append(x.clone())
        return target
    d.sample(net, (2, 3, 1, 8), "ddim", 4, generator=torch.Generator().manual_seed(0))
    assert [x.shape[1] for x in seen] == [6] * 4
    assert torch.equal(seen[0][:, 3:], torch.zeros(2, 3, 1, 8))
    assert all(torch.allclose(x[:, 3:], target) for x in seen[1:])

    seen.clear()
    x0 = torch.rand(64, 3, 1, 8) * 2 - 1
    loss = d.loss(lambda x, t: (seen.append(x.clone()), x[:, :3] * 0 + 0.25)[1], x0,
                  generator=torch.Generator().manual_seed(0))
    assert len(seen) == 2 and seen[-1].shape[1] == 6  # a gradient-free pass for the conditioned half
    conditioned = (seen[-1][:, 3:] == 0.25).flatten(1).all(1)
    assert 16 < conditioned.sum() < 48 and (seen[-1][~conditioned, 3:] == 0).all()
    assert torch.allclose(loss, ((x0 - 0.25) ** 2).mean())


def test_an_inpainting_network_reads_the_given_entries_clean_and_learns_only_the_rest():
    """Training: beside x_t the network sees x_0 where given (zeros elsewhere) and the mask, and the loss
    leaves the given entries out. Sampling: it sees `known` where given at every step; with nothing
    given, zeros and an empty mask (composing from scratch)."""
    d = GaussianDiffusion(1000, prediction="x0", inpainting=True)
    assert d.context_channels(3) == 4
    gen = torch.Generator().manual_seed(0)
    x0 = torch.rand(4, 3, 2, 8, generator=gen) * 2 - 1
    given = torch.zeros(4, 1, 2, 8, dtype=torch.bool)
    given[:, :, 0] = True  # the first row, as a melody
    seen = []

    def knows_only_the_first_row(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        seen.append(x.clone())
        return torch.cat([x0[:, :, :1], torch.zeros_like(x0[:, :, 1:])], dim=2)
    loss = d.loss(knows_only_the_first_row, x0, generator=gen, given=given)
    assert seen[0].shape[1] == 3 + 3 + 1
    assert torch.equal(seen[0][:, 3:6, 0], x0[:, :, 0]) and (seen[0][:, 3:6, 1] == 0).all()
    assert torch.equal(seen[0][:, 6:], given.float())
    assert torch.allclose(loss, (x0[:, :, 1] ** 2).mean())  # the first row's perfect answer counts nothing
    assert d.loss(lambda x, t: x0, x0, generator=gen, given=given) == 0

    seen.clear()
    d.sample(knows_only_the_first_row, (4, 3, 2, 8), "ddim", 3, generator=gen, known=x0, known_mask=given)
    assert len(seen) == 3 and all(torch.equal(x[:, 3:6, 0], x0[:, :, 0]) for x in seen)
    seen.clear()
    d.sample(knows_only_the_first_row, (4, 3, 2, 8), "ddim", 2, generator=gen)
    assert all(x.shape[1] == 7 and (x[:, 3:] == 0).all() for x in seen)
    with pytest.raises(ValueError, match="one flag per position"):
        d.loss(knows_only_the_first_row, x0, generator=gen, given=given.expand(4, 3, 2, 8))


# A code of three groups, as `Encoding.code_groups` gives them: a 2-channel categorical one with three codes,
# a continuous one, and a ±1 flag.
CODES = [(2, [[-1.0, 0.0], [0.0, 1.0], [1.0, 0.0]]), (1, None), (1, [[-1.0], [1.0]])]


def _coded(classes: torch.Tensor, flags: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
    """x0 [B, 4, 1, W] holding code `classes` of the first group, `value`, and flag code `flags`."""
    first = torch.tensor(CODES[0][1])[classes].permute(0, 3, 1, 2)
    flag = torch.tensor(CODES[2][1])[flags].permute(0, 3, 1, 2)
    return torch.cat([first, value, flag], dim=1)


def _logits(classes: torch.Tensor, flags: torch.Tensor, value: torch.Tensor, margin: float) -> torch.Tensor:
    """Softmax-head output [B, 6, 1, W]: `margin` on the given classes, `value` for the continuous group."""
    first = torch.nn.functional.one_hot(classes, 3).permute(0, 3, 1, 2).float() * margin
    flag = torch.nn.functional.one_hot(flags, 2).permute(0, 3, 1, 2).float() * margin
    return torch.cat([first, value, flag], dim=1)


def test_the_softmax_head_is_a_cross_entropy_per_group_and_its_x0_the_expected_code():
    d = GaussianDiffusion(1000, prediction="softmax", codes=CODES)
    assert d.output_channels(4) == 3 + 1 + 2
    gen = torch.Generator().manual_seed(0)
    classes = torch.randint(0, 3, (4, 1, 8), generator=gen)
    flags = torch.randint(0, 2, (4, 1, 8), generator=gen)
    value = torch.rand(4, 1, 1, 8, generator=gen)
    x0 = _coded(classes, flags, value)
    out = torch.randn(4, 6, 1, 8, generator=gen)
    ce = torch.nn.functional.cross_entropy
    by_hand = ce(out[:, :3], classes, reduction="none") + ((out[:, 3] - value[:, 0]) ** 2) + \
        ce(out[:, 4:], flags, reduction="none")
    assert torch.allclose(d.loss(lambda x, t: out, x0, generator=gen), by_hand.mean(), atol=1e-6)
    probs = out[:, :3].softmax(1)
    expected = torch.einsum("bkhw,kc->bchw", probs, torch.tensor(CODES[0][1]))
    x0_hat = d.predicted_x0(out, torch.zeros_like(x0), torch.zeros(4, dtype=torch.long))
    assert torch.allclose(x0_hat[:, :2], expected, atol=1e-6) and torch.equal(x0_hat[:, 2], out[:, 3])
    sure = _logits(classes, flags, value, margin=60.0)
    assert d.loss(lambda x, t: sure, x0, generator=gen) < 1e-6
    assert torch.allclose(d.predicted_x0(sure, x0, torch.zeros(4, dtype=torch.long)), x0, atol=1e-6)


@pytest.mark.parametrize("sampler", list(SAMPLERS))
@pytest.mark.parametrize("self_condition", [False, True])
def test_every_sampler_recovers_x0_from_a_sure_softmax_head(sampler, self_condition):
    d = GaussianDiffusion(1000, prediction="softmax", codes=CODES, self_condition=self_condition)
    gen = torch.Generator().manual_seed(1)
    classes = torch.randint(0, 3, (2, 1, 8), generator=gen)
    flags = torch.randint(0, 2, (2, 1, 8), generator=gen)
    value = torch.rand(2, 1, 1, 8, generator=gen) * 2 - 1
    x0 = _coded(classes, flags, value)
    sure = _logits(classes, flags, value, margin=60.0)
    x = d.sample(lambda x, t: sure, tuple(x0.shape), sampler, 20, generator=gen)
    assert torch.allclose(x, x0, atol=1e-4)


def test_code_nll_is_the_heads_cross_entropy_per_position_and_reads_the_inpainting_context():
    d = GaussianDiffusion(1000, prediction="softmax", codes=CODES, self_condition=True, inpainting=True)
    gen = torch.Generator().manual_seed(2)
    classes = torch.randint(0, 3, (2, 1, 8), generator=gen)
    flags = torch.randint(0, 2, (2, 1, 8), generator=gen)
    value = torch.rand(2, 1, 1, 8, generator=gen) * 2 - 1
    x0 = _coded(classes, flags, value)
    given = torch.zeros(2, 1, 1, 8, dtype=torch.bool)
    given[..., :3] = True
    seen = []

    def net(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        seen.append((x, t))
        return _logits(classes, flags, value, margin=60.0)

    nll = d.code_nll(net, x0, 500, gen, x0, given)
    assert nll.shape == (2, 1, 1, 8) and nll.max() < 1e-6  # a sure head is not surprised
    x, t = seen[0]
    assert t.tolist() == [500, 500] and x.shape[1] == 4 + 4 + 4 + 1  # x_t, zero estimate, context, mask
    assert torch.equal(x[:, 4:8], torch.zeros_like(x0)) and torch.equal(x[:, 8:12], x0 * given)
    wrong = d.code_nll(lambda x, t: _logits((classes + 1) % 3, flags, value, margin=60.0), x0, 500, gen)
    assert torch.allclose(wrong, torch.full_like(wrong, 60.0), atol=1e-3)  # one class 60 logits off
    with pytest.raises(ValueError, match="softmax head"):
        GaussianDiffusion(1000).code_nll(net, x0, 500)


def test_a_softmax_head_needs_categorical_codes_and_no_loss_weight():
    with pytest.raises(ValueError, match="categorical groups"):
        GaussianDiffusion(prediction="softmax")
    with pytest.raises(ValueError, match="categorical groups"):
        GaussianDiffusion(prediction="softmax", codes=[(3, None)])
    with pytest.raises(ValueError, match="no loss_weight"):
        GaussianDiffusion(prediction="softmax", codes=CODES, loss_weight="min_snr")


def hybrid_oracle(diffusion: GaussianDiffusion, x0: torch.Tensor):
    """A perfect hybrid network for one known x0: x0 on its class channels, the noise in x_t elsewhere."""
    def net(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        a = diffusion.alphas_cumprod[t].view(-1, 1, 1, 1)
        return diffusion.target(x0, (x - a.sqrt() * x0) / (1 - a).sqrt(), t)
    return net


def test_a_hybrid_network_predicts_x0_on_its_class_channels_and_the_noise_elsewhere():
    d = GaussianDiffusion(prediction="hybrid", x0_channels=[1, 2])
    x0, noise = torch.randn(4, 4, 1, 8), torch.randn(4, 4, 1, 8)
    t = torch.tensor([0, 10, 500, 999])
    x_t = d.add_noise(x0, noise, t)
    target = d.target(x0, noise, t)
    assert torch.equal(target[:, 1:3], x0[:, 1:3]) and torch.equal(target[:, [0, 3]], noise[:, [0, 3]])
    assert torch.allclose(d.predicted_x0(target, x_t, t), x0, atol=1e-3)
    assert torch.allclose(d.loss(lambda x, tt: target, x0, drawn=(t, noise)), torch.tensor(0.0))
    # Sampling hands the scheduler (prediction_type "sample") the x_0 estimate of every channel.
    assert torch.allclose(d.guarded(lambda x, tt: target)(x_t, t), x0, atol=1e-3)


@pytest.mark.parametrize("sampler", list(SAMPLERS))
def test_every_sampler_recovers_x0_from_a_perfect_hybrid_network(sampler):
    d = GaussianDiffusion(prediction="hybrid", x0_channels=[2])
    x0 = torch.rand(2, 3, 1, 16) * 2 - 1
    net = hybrid_oracle(d, x0)
    x = d.sample(net, tuple(x0.shape), sampler, 20, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(x, x0, atol=1e-3)


def test_a_hybrid_network_needs_class_channels_and_no_loss_weight():
    with pytest.raises(ValueError, match="one-hot class channels"):
        GaussianDiffusion(prediction="hybrid")
    with pytest.raises(ValueError, match="no loss_weight"):
        GaussianDiffusion(prediction="hybrid", x0_channels=[1], loss_weight="min_snr")
