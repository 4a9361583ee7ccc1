"""Specification of :class:`pyro_autoformer.predictive.PosteriorPredictive`: shapes,
the epistemic/aleatoric split, streaming memory and seeded reproducibility."""

import gc
import math

import pyro
import pytest
import torch
from scipy import stats

from pyro_autoformer.autoformer import AutoformerConfig
from pyro_autoformer.bayesian import BayesianAutoformer
from pyro_autoformer.guides import MeanFieldGuide
from pyro_autoformer.predictive import PosteriorPredictive

BATCH, SEQ_LEN, LABEL_LEN, PRED_LEN, CHANNELS, MARKS = 2, 16, 8, 8, 3, 4
TRACKED_SITE = "decoder.layers.0.projection.weight"  # shape (3, 8, 3), unique


@pytest.fixture
def model():
    config = AutoformerConfig(
        enc_in=CHANNELS,
        dec_in=CHANNELS,
        c_out=CHANNELS,
        seq_len=SEQ_LEN,
        label_len=LABEL_LEN,
        pred_len=PRED_LEN,
        d_model=8,
        n_heads=2,
        d_ff=8,
        e_layers=1,
        d_layers=1,
        moving_avg=5,
    )
    torch.manual_seed(0)
    return BayesianAutoformer(config, dataset_size=50)


@pytest.fixture
def inputs():
    generator = torch.Generator().manual_seed(1)
    shapes = [
        (BATCH, SEQ_LEN, CHANNELS),
        (BATCH, SEQ_LEN, MARKS),
        (BATCH, LABEL_LEN + PRED_LEN, CHANNELS),
        (BATCH, LABEL_LEN + PRED_LEN, MARKS),
    ]
    return tuple(torch.randn(shape, generator=generator) for shape in shapes)


def set_observation_scale(model, scale: torch.Tensor):
    """Set the Gaussian likelihood's per-channel scale to ``scale`` exactly."""
    with torch.no_grad():
        # softplus(raw) + 1e-4 = scale  <=>  raw = log(expm1(scale - 1e-4))
        model.likelihood.raw_scale.copy_(torch.log(torch.expm1(scale - 1e-4)))
    torch.testing.assert_close(model.likelihood.scale, scale)


def collapse(guide):
    """Posterior scales ~1e-22: every draw is the posterior mean."""
    with torch.no_grad():
        guide.raw_scale.fill_(-50.0)


def test_draws_have_the_documented_shapes(model, inputs):
    guide = MeanFieldGuide(model, init_scale=0.05)
    target = torch.zeros(BATCH, PRED_LEN, CHANNELS)
    draws = PosteriorPredictive(model, guide, num_samples=5).sample(*inputs, y=target)
    shape = (5, BATCH, PRED_LEN, CHANNELS)
    assert draws.samples.shape == shape
    assert draws.locations.shape == shape
    assert draws.log_probs.shape == shape
    assert draws.epistemic_variance.shape == (BATCH, PRED_LEN, CHANNELS)
    assert draws.aleatoric_variance.shape == (BATCH, PRED_LEN, CHANNELS)
    assert draws.quantiles([0.1, 0.5, 0.9]).shape == (3, BATCH, PRED_LEN, CHANNELS)


def test_noise_samples_add_observation_draws_without_new_weight_draws(model, inputs):
    guide = MeanFieldGuide(model, init_scale=0.05)
    collapse(guide)
    set_observation_scale(model, torch.tensor([0.5, 1.0, 2.0]))
    predictive = PosteriorPredictive(model, guide, num_samples=3, noise_samples=400)
    draws = predictive.sample(*inputs)
    assert draws.samples.shape == (1200, BATCH, PRED_LEN, CHANNELS)
    assert draws.locations.shape == (3, BATCH, PRED_LEN, CHANNELS)
    # One posterior mean, so the spread of the samples is the noise alone.
    spread = draws.samples.std(dim=0).mean(dim=(0, 1))
    torch.testing.assert_close(spread, torch.tensor([0.5, 1.0, 2.0]), rtol=0.08, atol=0)
    assert predictive.batch_size_for(PRED_LEN, CHANNELS) == 2**24 // (
        1200 * PRED_LEN * CHANNELS
    )


def test_without_targets_there_are_no_log_probs(model, inputs):
    guide = MeanFieldGuide(model)
    draws = PosteriorPredictive(model, guide, num_samples=2).sample(*inputs)
    assert draws.log_probs is None


def test_collapsed_guide_gives_identical_locations_and_no_epistemic_variance(
    model, inputs
):
    guide = MeanFieldGuide(model, init_scale=0.1)
    collapse(guide)
    draws = PosteriorPredictive(model, guide, num_samples=6).sample(*inputs)
    for s in range(1, 6):
        torch.testing.assert_close(
            draws.locations[s], draws.locations[0], rtol=0, atol=1e-6
        )
    assert float(draws.epistemic_variance.max()) < 1e-12


def test_aleatoric_variance_is_the_gaussian_scale_squared(model, inputs):
    guide = MeanFieldGuide(model, init_scale=0.1)
    collapse(guide)
    scale = torch.tensor([0.2, 0.5, 1.3])
    set_observation_scale(model, scale)
    draws = PosteriorPredictive(model, guide, num_samples=4).sample(*inputs)
    expected = torch.tensor([0.04, 0.25, 1.69]).expand(BATCH, PRED_LEN, CHANNELS)
    torch.testing.assert_close(draws.aleatoric_variance, expected, rtol=1e-5, atol=0)


def test_samples_scatter_around_each_location_with_the_observation_scale(model, inputs):
    guide = MeanFieldGuide(model, init_scale=0.1)
    collapse(guide)
    scale = torch.tensor([0.2, 0.5, 1.3])
    set_observation_scale(model, scale)
    pyro.set_rng_seed(0)
    draws = PosteriorPredictive(model, guide, num_samples=200).sample(*inputs)
    residuals = (draws.samples - draws.locations).reshape(-1, CHANNELS)
    n = residuals.shape[0]  # 200 * 2 * 8 = 3200 per channel
    variance = residuals.pow(2).mean(0).double()
    # n * s^2 / sigma^2 ~ chi^2(n): a two-sided 99.9% band.
    low, high = stats.chi2.ppf([0.0005, 0.9995], n) / n
    ratio = variance / scale.double() ** 2
    assert ((ratio > low) & (ratio < high)).all(), ratio


def test_epistemic_variance_is_the_spread_of_the_draws_means(model, inputs):
    guide = MeanFieldGuide(model, init_scale=0.05)
    draws = PosteriorPredictive(model, guide, num_samples=8).sample(*inputs)
    # For a Gaussian likelihood each draw's mean is its location.
    locations = draws.locations.double()
    mean = locations.mean(0)
    expected = ((locations - mean) ** 2).sum(0) / 8  # population variance
    torch.testing.assert_close(
        draws.epistemic_variance.double(), expected, rtol=1e-4, atol=1e-10
    )
    assert float(draws.epistemic_variance.min()) > 0.0


def test_log_probs_are_the_gaussian_log_densities_of_the_targets(model, inputs):
    guide = MeanFieldGuide(model, init_scale=0.05)
    scale = torch.tensor([0.3, 0.6, 0.9])
    set_observation_scale(model, scale)
    target = torch.linspace(-1, 1, BATCH * PRED_LEN * CHANNELS).reshape(
        BATCH, PRED_LEN, CHANNELS
    )
    draws = PosteriorPredictive(model, guide, num_samples=3).sample(*inputs, y=target)
    expected = stats.norm.logpdf(
        target.numpy(), loc=draws.locations.numpy(), scale=scale.numpy()
    )
    torch.testing.assert_close(
        draws.log_probs,
        torch.as_tensor(expected, dtype=torch.float32),
        rtol=1e-5,
        atol=1e-5,
    )


@pytest.mark.parametrize(
    "num_samples, pred_len, channels, budget, expected",
    [
        (100, 96, 7, 2**24, 249),  # 16777216 // 67200 = 249
        (50, 96, 7, 2**24, 499),  # 16777216 // 33600 = 499
        (1000, 720, 7, 2**24, 3),  # 16777216 // 5040000 = 3
        (10_000, 720, 321, 2**24, 1),  # one window, even over the budget
        (4, 12, 7, 336, 1),  # exactly the budget
        (4, 12, 7, 335, 1),
    ],
)
def test_batch_size_keeps_the_forecast_within_the_budget(
    num_samples, pred_len, channels, budget, expected
):
    predictive = PosteriorPredictive(None, None, num_samples, memory_budget=budget)
    batch = predictive.batch_size_for(pred_len, channels)
    assert batch == expected
    if batch > 1:
        assert num_samples * batch * pred_len * channels <= budget
        assert num_samples * (batch + 1) * pred_len * channels > budget


def test_batch_size_shrinks_in_proportion_to_num_samples():
    sizes = [
        PosteriorPredictive(None, None, s, memory_budget=2**20).batch_size_for(24, 4)
        for s in (1, 2, 4, 8)
    ]
    assert sizes == [2**20 // 96, 2**20 // 192, 2**20 // 384, 2**20 // 768]


def live_storages_of(shape):
    """Distinct storages of the live tensors of this shape."""
    gc.collect()
    return {
        obj.data_ptr()
        for obj in gc.get_objects()
        if issubclass(type(obj), torch.Tensor) and tuple(obj.shape) == shape
    }


@pytest.mark.parametrize("num_samples", [3, 12])
def test_at_most_one_weight_draw_is_alive_while_forecasting(model, inputs, num_samples):
    guide = MeanFieldGuide(model, init_scale=0.05)
    shape = tuple(guide.site_shapes[TRACKED_SITE])
    before = live_storages_of(shape)  # e.g. the model's copy of its initial weights
    counts = []
    original = model.network_output

    def counting_network_output(weights, *args, **kwargs):
        assert weights[TRACKED_SITE].data_ptr() not in before
        counts.append(len(live_storages_of(shape) - before))
        return original(weights, *args, **kwargs)

    model.network_output = counting_network_output
    PosteriorPredictive(model, guide, num_samples).sample(*inputs)
    assert counts == [1] * num_samples  # the draw in use, none of the earlier ones
    assert live_storages_of(shape) == before  # nothing kept after sampling


def test_the_same_seed_gives_the_same_draws(model, inputs):
    guide = MeanFieldGuide(model, init_scale=0.05)
    predictive = PosteriorPredictive(model, guide, num_samples=4)
    pyro.set_rng_seed(123)
    first = predictive.sample(*inputs)
    pyro.set_rng_seed(123)
    second = predictive.sample(*inputs)
    pyro.set_rng_seed(124)
    third = predictive.sample(*inputs)
    assert torch.equal(first.samples, second.samples)
    assert not torch.equal(first.samples, third.samples)


def test_sampling_restores_the_training_mode(model, inputs):
    guide = MeanFieldGuide(model)
    model.train()
    PosteriorPredictive(model, guide, 2).sample(*inputs)
    assert model.training
    model.eval()
    PosteriorPredictive(model, guide, 2).sample(*inputs)
    assert not model.training


@pytest.mark.parametrize("argument", [{"num_samples": 0}, {"memory_budget": 0}])
def test_invalid_arguments_are_refused(argument):
    with pytest.raises(ValueError, match=next(iter(argument))):
        PosteriorPredictive(None, None, **argument)


def test_evaluate_scores_every_window_of_the_loader(model, inputs):
    guide = MeanFieldGuide(model, init_scale=0.05)
    target = torch.zeros(BATCH, PRED_LEN, CHANNELS)
    loader = [(inputs, target), (inputs, target)]
    metrics = PosteriorPredictive(model, guide, 3).evaluate(loader, lambda b: b)
    result = metrics.compute()
    assert result["num_windows"] == 2 * BATCH
    assert result["num_elements"] == 2 * BATCH * PRED_LEN * CHANNELS
    assert all(math.isfinite(result[k]) for k in ("mse", "crps", "nll"))
