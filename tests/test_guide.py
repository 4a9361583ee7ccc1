"""Specification of :class:`pyro_autoformer.guides.mean_field.MeanFieldGuide`."""

import math

import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import torch
from scipy import stats

from pyro_autoformer.guides.mean_field import MeanFieldGuide
from pyro_autoformer.tuning.elbo import BetaELBO

# Toy model: two sites of different shapes and different Normal priors.
PRIORS = {"a": (0.5, 2.0, (3,)), "b": (-1.0, 0.3, (2, 4))}


def toy_model():
    for name, (loc, scale, shape) in PRIORS.items():
        pyro.sample(
            name, dist.Normal(torch.full(shape, loc), scale).to_event(len(shape))
        )


class GroupedModel:
    """A model that, like the Bayesian Autoformer, says which group a site is in."""

    site_groups = {"a": "first", "b": "first", "c": "second"}

    def __call__(self):
        pyro.sample("a", dist.Normal(torch.zeros(2), 1.0).to_event(1))
        pyro.sample("b", dist.Normal(torch.zeros(3), 2.0).to_event(1))
        pyro.sample("c", dist.Normal(torch.zeros(1, 1), 0.5).to_event(2))


# Chosen guide parameters (flat, in site order a, b).
LOC = np.array([0.1, -0.7, 1.9, -1.2, -0.8, 0.0, 0.4, -1.0, -2.0, 0.3, -0.9])
RAW = np.array([-1.0, 0.5, 0.0, -2.0, -1.5, -0.3, 0.2, -3.0, -1.0, -0.5, -2.5])


def _softplus(x):
    return np.log1p(np.exp(x))


def _toy_guide():
    guide = MeanFieldGuide(toy_model)
    guide()
    with torch.no_grad():
        guide.loc.copy_(torch.tensor(LOC))
        guide.raw_scale.copy_(torch.tensor(RAW))
    return guide


def _prior_arrays():
    prior_loc = np.concatenate(
        [np.full(math.prod(s), m) for m, _, s in PRIORS.values()]
    )
    prior_scale = np.concatenate(
        [np.full(math.prod(s), sd) for _, sd, s in PRIORS.values()]
    )
    return prior_loc, prior_scale


def _hand_kl(mq, sq, mp, sp):
    return np.log(sp / sq) + (sq**2 + (mq - mp) ** 2) / (2 * sp**2) - 0.5


# ----------------------------------------------------------------------- the KL
def test_kl_divergence_equals_closed_form_normal_normal_kl():
    guide = _toy_guide()
    prior_loc, prior_scale = _prior_arrays()

    expected = _hand_kl(LOC, _softplus(RAW), prior_loc, prior_scale).sum()

    assert guide.kl_divergence().item() == pytest.approx(expected, rel=1e-5)


def test_kl_by_site_sums_each_site_separately():
    guide = _toy_guide()
    prior_loc, prior_scale = _prior_arrays()
    elementwise = _hand_kl(LOC, _softplus(RAW), prior_loc, prior_scale)

    by_site = guide.kl_by_site()

    assert list(by_site) == ["a", "b"]
    assert by_site["a"].item() == pytest.approx(elementwise[:3].sum(), rel=1e-5)
    assert by_site["b"].item() == pytest.approx(elementwise[3:].sum(), rel=1e-5)


def test_kl_divergence_agrees_with_monte_carlo_estimate():
    guide = _toy_guide()
    prior_loc, prior_scale = _prior_arrays()
    scale = _softplus(RAW)
    rng = np.random.default_rng(1)

    z = LOC + scale * rng.standard_normal((200_000, LOC.size))
    log_ratio = stats.norm.logpdf(z, LOC, scale) - stats.norm.logpdf(
        z, prior_loc, prior_scale
    )
    per_draw = log_ratio.sum(-1)
    estimate = per_draw.mean()
    standard_error = per_draw.std() / np.sqrt(per_draw.size)

    assert abs(guide.kl_divergence().item() - estimate) < 4 * standard_error


def test_kl_divergence_has_zero_variance_across_evaluations():
    guide = _toy_guide()
    values = []
    for _ in range(5):
        guide()  # drawing samples must not change the KL
        values.append(guide.kl_divergence().item())
    assert len(set(values)) == 1


def test_kl_divergence_gradients_match_closed_form_derivatives():
    guide = _toy_guide()
    prior_loc, prior_scale = _prior_arrays()
    scale = _softplus(RAW)

    guide.kl_divergence().backward()

    d_loc = (LOC - prior_loc) / prior_scale**2
    d_scale = -1.0 / scale + scale / prior_scale**2
    d_raw = d_scale / (1.0 + np.exp(-RAW))  # d softplus(r) / dr = sigmoid(r)
    np.testing.assert_allclose(guide.loc.grad.numpy(), d_loc, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(
        guide.raw_scale.grad.numpy(), d_raw, rtol=1e-4, atol=1e-5
    )


def test_kl_divergence_before_the_first_call_asks_for_one():
    guide = MeanFieldGuide(toy_model)
    with pytest.raises(RuntimeError, match="call it once"):
        guide.kl_divergence()


def test_guide_samples_each_site_from_its_normal_posterior():
    guide = _toy_guide()
    torch.manual_seed(0)
    draws = torch.stack(
        [torch.cat([v.flatten() for v in guide().values()]) for _ in range(4000)]
    )
    np.testing.assert_allclose(draws.mean(0).detach().numpy(), LOC, atol=0.1)
    np.testing.assert_allclose(draws.std(0).detach().numpy(), _softplus(RAW), rtol=0.06)


# ------------------------------------------------- conjugate linear regression
N_OBS, SIGMA, PRIOR_STD = 200, 0.5, 1.0


def _orthogonal_regression():
    generator = torch.Generator().manual_seed(0)
    basis, _ = torch.linalg.qr(torch.randn(N_OBS, 3, generator=generator))
    x = basis * torch.tensor([3.0, 5.0, 8.0])  # X^T X = diag(9, 25, 64)
    w_true = torch.tensor([1.0, -2.0, 0.5])
    y = x @ w_true + SIGMA * torch.randn(N_OBS, generator=generator)

    def model(x, y=None):
        w = pyro.sample("w", dist.Normal(torch.zeros(3), PRIOR_STD).to_event(1))
        with pyro.plate("data", N_OBS):
            pyro.sample("obs", dist.Normal(x @ w, SIGMA), obs=y)

    xtx = (x.T @ x).double()
    precision = xtx / SIGMA**2 + torch.eye(3, dtype=torch.float64) / PRIOR_STD**2
    covariance = torch.linalg.inv(precision)
    mean = covariance @ x.T.double() @ y.double() / SIGMA**2
    return model, x, y, mean, covariance.diagonal().sqrt()


@pytest.mark.parametrize("loss", ["beta_elbo", "trace_mean_field"])
def test_svi_recovers_the_exact_posterior_of_orthogonal_linear_regression(loss):
    model, x, y, mean, std = _orthogonal_regression()
    # The design is orthogonal, so the exact posterior factorises: mean-field is exact.
    assert torch.allclose(
        (x.T @ x) - torch.diag((x.T @ x).diagonal()), torch.zeros(3, 3), atol=1e-4
    )
    pyro.set_rng_seed(0)
    guide = MeanFieldGuide(model, init_scale=0.1)
    elbo = (
        BetaELBO(beta=1.0) if loss == "beta_elbo" else pyro.infer.TraceMeanField_ELBO()
    )
    optim = pyro.optim.ClippedAdam({"lr": 0.05, "lrd": 0.997})
    svi = pyro.infer.SVI(model, guide, optim, loss=elbo)

    for _ in range(1500):
        svi.step(x, y)

    loc = guide.median()["w"].double()
    scale = guide.scale.detach().double()
    # Within a fifth of a posterior standard deviation, and 10 % on the scales.
    assert ((loc - mean) / std).abs().max() < 0.2
    np.testing.assert_allclose(scale.numpy(), std.numpy(), rtol=0.1)


# ----------------------------------------------------------- initialisation
def test_init_loc_sets_locations_and_missing_sites_use_prior_mean():
    b = torch.arange(8.0).reshape(2, 4)
    guide = MeanFieldGuide(toy_model, init_loc={"b": b}, init_scale=0.02)
    guide()
    median = guide.median()
    assert torch.equal(median["b"], b)
    assert torch.equal(median["a"], torch.full((3,), 0.5))
    np.testing.assert_allclose(guide.scale.detach().numpy(), 0.02, rtol=1e-5)


def test_fallback_initial_takes_the_models_initial_weights():
    class ModelWithInitialWeights:
        def latent_sites(self):
            return {"w": dist.Normal(torch.zeros(2), 1.0).to_event(1)}

        def initial_weights(self):
            return {"w": torch.tensor([3.0, -4.0])}

        def __call__(self):
            pyro.sample("w", self.latent_sites()["w"])

    model = ModelWithInitialWeights()
    assert torch.equal(MeanFieldGuide(model).median()["w"], torch.tensor([3.0, -4.0]))
    prior_mean = MeanFieldGuide(model, fallback="prior_mean").median()["w"]
    assert torch.equal(prior_mean, torch.zeros(2))


def test_init_loc_of_the_wrong_shape_is_refused():
    guide = MeanFieldGuide(toy_model, init_loc={"a": torch.zeros(4)})
    with pytest.raises(ValueError, match=r"init_loc\['a'\] has shape \(4,\).*\(3,\)"):
        guide()


def test_fallback_error_refuses_sites_missing_from_init_loc():
    guide = MeanFieldGuide(toy_model, init_loc={"a": torch.zeros(3)}, fallback="error")
    with pytest.raises(ValueError, match=r"no value for sites \['b'\]"):
        guide()


def test_init_loc_naming_an_unknown_site_is_refused():
    guide = MeanFieldGuide(toy_model, init_loc={"c": torch.zeros(3)})
    with pytest.raises(ValueError, match=r"does not have: \['c'\]"):
        guide()


@pytest.mark.parametrize(
    "kwargs, message",
    [({"init_scale": 0.0}, "init_scale"), ({"fallback": "zeros"}, "fallback")],
)
def test_guide_refuses_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        MeanFieldGuide(toy_model, **kwargs)


def test_latent_sites_inside_a_plate_are_refused():
    def model():
        with pyro.plate("rows", 3):
            pyro.sample("z", dist.Normal(0.0, 1.0))

    with pytest.raises(NotImplementedError, match="inside plate 'rows'"):
        MeanFieldGuide(model)()


# ------------------------------------------------ independence of instances
def _regression_model(size):
    def model(x, y=None):
        w = pyro.sample("w", dist.Normal(torch.zeros(size), 1.0).to_event(1))
        with pyro.plate("data", x.shape[0]):
            pyro.sample("obs", dist.Normal(x @ w, 1.0), obs=y)

    return model


def _svi_steps(model, guide, x, y, steps):
    svi = pyro.infer.SVI(model, guide, pyro.optim.Adam({"lr": 0.05}), BetaELBO())
    return [svi.step(x, y) for _ in range(steps)]


def test_two_guides_of_different_sizes_train_independently():
    torch.manual_seed(0)
    model_3, model_5 = _regression_model(3), _regression_model(5)
    x3, x5 = torch.randn(20, 3), torch.randn(20, 5)
    y3, y5 = x3 @ torch.ones(3), x5 @ -torch.ones(5)
    guide_3, guide_5 = MeanFieldGuide(model_3), MeanFieldGuide(model_5)

    _svi_steps(model_3, guide_3, x3, y3, 3)
    _svi_steps(model_5, guide_5, x5, y5, 3)
    after_5 = guide_5.loc.detach().clone()
    before_3 = guide_3.loc.detach().clone()
    _svi_steps(model_3, guide_3, x3, y3, 3)

    assert guide_3.loc.shape == (3,) and guide_5.loc.shape == (5,)
    assert torch.equal(guide_5.loc.detach(), after_5)  # untouched by guide_3's steps
    assert not torch.equal(guide_3.loc.detach(), before_3)


def test_guides_keep_training_after_the_param_store_is_cleared():
    torch.manual_seed(0)
    model = _regression_model(3)
    x = torch.randn(20, 3)
    y = x @ torch.tensor([1.0, 2.0, 3.0])
    guide = MeanFieldGuide(model)
    losses = _svi_steps(model, guide, x, y, 50)
    trained = guide.loc.detach().clone()

    pyro.clear_param_store()
    other = MeanFieldGuide(_regression_model(5))
    _svi_steps(_regression_model(5), other, torch.randn(20, 5), torch.randn(20), 2)
    losses += _svi_steps(model, guide, x, y, 1)

    # One Adam step moves each location by at most the learning rate: the guide
    # continued from its trained values instead of being re-initialised.
    assert (guide.loc.detach() - trained).abs().max() <= 0.05 + 1e-6
    losses += _svi_steps(model, guide, x, y, 100)
    assert np.all(np.isfinite(losses))
    assert np.mean(losses[-5:]) < np.mean(losses[45:50])


# ---------------------------------------------------------------- summaries
def test_median_and_quantiles_equal_hand_values():
    guide = _toy_guide()
    scale = _softplus(RAW)
    levels = [0.05, 0.5, 0.8]

    median = guide.median()
    quantiles = guide.quantiles(levels)

    np.testing.assert_allclose(median["a"].numpy(), LOC[:3])
    np.testing.assert_allclose(median["b"].numpy(), LOC[3:].reshape(2, 4))
    expected = LOC[None] + stats.norm.ppf(levels)[:, None] * scale[None]
    assert quantiles["a"].shape == (3, 3) and quantiles["b"].shape == (3, 2, 4)
    np.testing.assert_allclose(quantiles["a"].numpy(), expected[:, :3], rtol=1e-5)
    np.testing.assert_allclose(
        quantiles["b"].numpy(), expected[:, 3:].reshape(3, 2, 4), rtol=1e-5, atol=1e-6
    )


def test_median_is_a_snapshot_that_later_training_does_not_change():
    guide = _toy_guide()
    median = guide.median()
    with torch.no_grad():
        guide.loc.add_(1.0)
    np.testing.assert_allclose(median["a"].numpy(), LOC[:3])


def test_posterior_summary_by_site_equals_hand_values():
    guide = _toy_guide()
    scale = _softplus(RAW)
    prior_loc, prior_scale = _prior_arrays()
    kl = _hand_kl(LOC, scale, prior_loc, prior_scale)

    table = guide.posterior_summary()

    assert list(table.index) == ["a", "b"]
    assert table["numel"].tolist() == [3, 8]
    for name, part in (("a", slice(0, 3)), ("b", slice(3, 11))):
        row = table.loc[name]
        assert row["loc_abs_mean"] == pytest.approx(np.abs(LOC[part]).mean(), rel=1e-6)
        assert row["scale_mean"] == pytest.approx(scale[part].mean(), rel=1e-5)
        assert row["prior_scale_mean"] == pytest.approx(PRIORS[name][1], rel=1e-6)
        assert row["kl"] == pytest.approx(kl[part].sum(), rel=1e-5)


def test_posterior_summary_by_group_pools_the_sites_of_each_group():
    guide = MeanFieldGuide(GroupedModel())
    guide()
    loc = np.array([1.0, -3.0, 0.5, 0.5, -2.0, 4.0])
    raw = np.array([0.0, -1.0, 1.0, -2.0, 0.5, -0.5])
    with torch.no_grad():
        guide.loc.copy_(torch.tensor(loc))
        guide.raw_scale.copy_(torch.tensor(raw))
    scale = _softplus(raw)
    prior_scale = np.array([1.0, 1.0, 2.0, 2.0, 2.0, 0.5])
    kl = _hand_kl(loc, scale, 0.0, prior_scale)

    table = guide.posterior_summary(by="group")

    first, second = slice(0, 5), slice(5, 6)
    assert table.loc["first", "numel"] == 5 and table.loc["second", "numel"] == 1
    assert table.loc["first", "loc_abs_mean"] == pytest.approx(7.0 / 5)
    assert table.loc["first", "scale_mean"] == pytest.approx(scale[first].mean())
    assert table.loc["first", "prior_scale_mean"] == pytest.approx(8.0 / 5)
    assert table.loc["first", "kl"] == pytest.approx(kl[first].sum(), rel=1e-5)
    assert table.loc["second", "kl"] == pytest.approx(kl[second].sum(), rel=1e-5)


def test_posterior_summary_refuses_unknown_grouping_and_models_without_groups():
    guide = _toy_guide()
    with pytest.raises(ValueError, match="by must be 'site' or 'group'"):
        guide.posterior_summary(by="layer")
    with pytest.raises(ValueError, match="layer group"):
        guide.posterior_summary(by="group")


# ------------------------------------------------------------------ devices
def test_priors_and_parameters_are_registered_and_follow_dtype_conversion():
    guide = _toy_guide()
    assert {"prior_loc", "prior_scale"} <= dict(guide.named_buffers()).keys()
    assert {"loc", "raw_scale"} <= dict(guide.named_parameters()).keys()

    guide.double()
    with torch.no_grad():
        guide.loc.copy_(torch.tensor(LOC))
        guide.raw_scale.copy_(torch.tensor(RAW))

    for tensor in (guide.loc, guide.raw_scale, guide.prior_loc, guide.prior_scale):
        assert tensor.dtype == torch.float64
    prior_loc, prior_scale = _prior_arrays()
    expected = _hand_kl(LOC, _softplus(RAW), prior_loc, prior_scale).sum()
    assert guide.kl_divergence().dtype == torch.float64
    assert guide.kl_divergence().item() == pytest.approx(expected, rel=1e-6)


def test_priors_and_parameters_follow_to_device():
    guide = _toy_guide()
    guide.to(torch.device("meta"))
    for tensor in (guide.loc, guide.raw_scale, guide.prior_loc, guide.prior_scale):
        assert tensor.device.type == "meta"
