"""Specification of :class:`pyro_autoformer.tuning.elbo.BetaELBO` and
:func:`~pyro_autoformer.tuning.elbo.kl_share`."""

import math

import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import torch
from scipy import integrate, stats

from pyro_autoformer.guides.mean_field import MeanFieldGuide
from pyro_autoformer.tuning.elbo import BetaELBO, kl_share

FULL_SIZE, CHANNELS, SIGMA = 40, 3, 0.7
PRIOR_STD = 1.5


def regression_model(x, y, index):
    """``w ~ N(0, 1.5^2)``, ``y[i, c] ~ N(x[i] . w[:, c] + bias, 0.7^2)``; the
    minibatch ``index`` of a training set of 40 rows, 3 target channels each."""
    w = pyro.sample("w", dist.Normal(torch.zeros(2, CHANNELS), PRIOR_STD).to_event(2))
    bias = pyro.param("bias", torch.tensor(0.3))
    with pyro.plate("data", FULL_SIZE, subsample=index):
        mean = x[index] @ w + bias
        obs = None if y is None else y[index]
        pyro.sample("obs", dist.Normal(mean, SIGMA).to_event(1), obs=obs)


@pytest.fixture
def data():
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(FULL_SIZE, 2, generator=generator)
    y = x @ torch.tensor([[1.0, -1.0, 0.5], [2.0, 0.0, -0.5]])
    y = y + 0.3 * torch.randn(FULL_SIZE, CHANNELS, generator=generator)
    return x, y


def _guide(loc, raw_scale):
    guide = MeanFieldGuide(regression_model, fallback="prior_mean")
    x, y = torch.zeros(FULL_SIZE, 2), torch.zeros(FULL_SIZE, CHANNELS)
    guide(x, y, torch.arange(4))
    with torch.no_grad():
        guide.loc.copy_(torch.as_tensor(loc, dtype=torch.float32).flatten())
        guide.raw_scale.fill_(raw_scale)
    return guide


W = np.array([[0.8, -0.6, 0.2], [1.7, 0.3, -0.4]])


def _hand_data_term(x, y, index, w=W, bias=0.3):
    """-log p(y_train | w) / N for the minibatch scaled to the training set."""
    x, y = x.double().numpy(), y.double().numpy()
    log_lik = stats.norm.logpdf(y[index], x[index] @ w + bias, SIGMA).sum()
    n_elements = FULL_SIZE * CHANNELS
    return -log_lik * (FULL_SIZE / len(index)) / n_elements


def _hand_kl(loc, scale):
    return np.sum(
        np.log(PRIOR_STD / scale) + (scale**2 + loc**2) / (2 * PRIOR_STD**2) - 0.5
    )


# --------------------------------------------------- agreement with Pyro's ELBO
def test_beta_one_equals_pyros_trace_mean_field_elbo_per_element(data):
    x, y = data
    index = torch.tensor([3, 7, 11, 20, 33])
    guide = _guide(W, -1.0)

    pyro.set_rng_seed(5)
    ours = BetaELBO(beta=1.0).loss(regression_model, guide, x, y, index)
    pyro.set_rng_seed(5)
    pyros = pyro.infer.TraceMeanField_ELBO().loss(regression_model, guide, x, y, index)

    n_elements = FULL_SIZE * CHANNELS  # targets scaled to the training set
    assert ours == pytest.approx(pyros / n_elements, rel=1e-5)


def test_beta_one_gradients_equal_pyros_trace_mean_field_elbo(data):
    x, y = data
    index = torch.tensor([0, 1, 2, 30])
    guide = _guide(W, -0.5)
    bias = pyro.param("bias", torch.tensor(0.3))
    parameters = {"loc": guide.loc, "raw_scale": guide.raw_scale, "bias": bias}

    def gradients(loss):
        for p in parameters.values():
            p.grad = None
        pyro.set_rng_seed(11)
        loss(regression_model, guide, x, y, index).backward()
        return {k: p.grad.clone() for k, p in parameters.items()}

    pyro_elbo = pyro.infer.TraceMeanField_ELBO()
    ours = gradients(BetaELBO(beta=1.0).differentiable_loss)
    pyros = gradients(
        lambda *a: pyro_elbo.differentiable_loss(*a) / (FULL_SIZE * CHANNELS)
    )

    for name in parameters:
        torch.testing.assert_close(ours[name], pyros[name], rtol=1e-4, atol=1e-6)


# ------------------------------------------------------------------- the terms
def test_terms_equal_hand_computed_data_term_and_kl(data):
    x, y = data
    index = np.array([2, 5, 9, 17, 38, 39])
    guide = _guide(W, -30.0)  # posterior std ~1e-13: the sample is W
    elbo = BetaELBO(beta=0.25)

    loss = elbo.loss(regression_model, guide, x, y, torch.as_tensor(index))

    scale = math.log1p(math.exp(-30.0))
    kl_total = _hand_kl(W, scale)
    data_term = _hand_data_term(x, y, index)
    n_elements = FULL_SIZE * CHANNELS
    assert elbo.last.num_elements == n_elements
    assert elbo.last.data == pytest.approx(data_term, rel=1e-5)
    assert elbo.last.kl_total == pytest.approx(kl_total, rel=1e-5)
    assert elbo.last.kl == pytest.approx(kl_total / n_elements, rel=1e-5)
    assert loss == pytest.approx(data_term + 0.25 * kl_total / n_elements, rel=1e-5)
    assert elbo.last.analytic_kl


def test_beta_zero_gives_the_data_term_alone(data):
    x, y = data
    guide = _guide(W, -30.0)
    elbo = BetaELBO(beta=0.0)
    index = np.arange(8)

    loss = elbo.loss(regression_model, guide, x, y, torch.as_tensor(index))

    assert loss == pytest.approx(_hand_data_term(x, y, index), rel=1e-5)
    assert elbo.last.kl > 0  # the KL is still reported, with weight zero


@pytest.mark.parametrize("beta", [0.0, 0.5, 3.0])
def test_beta_scales_only_the_kl_term(data, beta):
    x, y = data
    guide = _guide(W, -1.0)
    index = torch.arange(10)

    pyro.set_rng_seed(2)
    reference = BetaELBO(beta=1.0)
    reference.loss(regression_model, guide, x, y, index)
    pyro.set_rng_seed(2)
    elbo = BetaELBO(beta=beta)
    loss = elbo.loss(regression_model, guide, x, y, index)

    assert elbo.last.data == reference.last.data
    assert elbo.last.kl == reference.last.kl
    assert elbo.last.beta == beta
    expected = reference.last.data + beta * reference.last.kl
    assert loss == pytest.approx(expected, rel=1e-6)
    assert elbo.last.loss == pytest.approx(expected, rel=1e-6)


def test_minibatch_data_term_averages_to_the_full_set_data_term(data):
    x, y = data
    guide = _guide(W, -30.0)
    elbo = BetaELBO(beta=0.0)

    full = elbo.loss(regression_model, guide, x, y, torch.arange(FULL_SIZE))
    minibatches = [
        elbo.loss(regression_model, guide, x, y, index)
        for index in torch.arange(FULL_SIZE).split(10)
    ]

    assert full == pytest.approx(np.mean(minibatches), rel=1e-5)
    assert full == pytest.approx(_hand_data_term(x, y, np.arange(FULL_SIZE)), rel=1e-5)
    # A batch of 10 and one of 40 give terms of the same size.
    assert minibatches[0] == pytest.approx(
        _hand_data_term(x, y, np.arange(10)), rel=1e-5
    )


def test_a_model_without_targets_is_refused(data):
    x, _ = data
    guide = _guide(W, -1.0)

    def unobserved(x, y, index):
        regression_model(x, None, index)

    with pytest.raises(ValueError, match="no observed site"):
        BetaELBO().loss(unobserved, guide, x, None, torch.arange(4))


# --------------------------------------------------------------------- kl_share
@pytest.mark.parametrize(
    "data_term, kl_term, weight, expected",
    [
        (2.0, 1.0, 0.5, 0.5 / 2.5),
        (3.0, 1.0, 1.0, 0.25),
        (-2.0, 1.0, 0.5, 0.5 / 2.5),  # a negative log-density: its size counts
        (0.0, 4.0, 1.0, 1.0),
        (1.0, 0.0, 1.0, 0.0),
        (1.0, 5.0, 0.0, 0.0),
        (0.0, 0.0, 1.0, 0.0),  # both zero
    ],
)
def test_kl_share_equals_hand_values(data_term, kl_term, weight, expected):
    assert kl_share(data_term, kl_term, weight) == pytest.approx(expected)


# ----------------------------------------------------- priors other than Normal
def _student_t_kl_per_element(loc, scale, df):
    """KL(N(loc, scale) || StudentT(df, 0, 1)) by numerical integration."""

    def integrand(z):
        return stats.norm.pdf(z, loc, scale) * (
            stats.norm.logpdf(z, loc, scale) - stats.t.logpdf(z, df)
        )

    value, _ = integrate.quad(integrand, loc - 12 * scale, loc + 12 * scale)
    return value


def test_monte_carlo_kl_is_used_for_a_prior_without_closed_form_and_is_unbiased():
    df, size, loc, scale = 3.0, 50, 0.8, 0.6

    def model(y):
        w = pyro.sample("w", dist.StudentT(df, torch.zeros(size), 1.0).to_event(1))
        pyro.sample("obs", dist.Normal(w.mean(), 1.0), obs=y)

    guide = MeanFieldGuide(model)
    guide(torch.tensor(0.0))
    with torch.no_grad():
        guide.loc.fill_(loc)
        guide.raw_scale.fill_(math.log(math.expm1(scale)))
    elbo = BetaELBO()
    pyro.set_rng_seed(0)

    totals = []
    for _ in range(400):
        elbo.loss(model, guide, torch.tensor(0.0))
        totals.append(elbo.last.kl_total)

    assert not guide.analytic_kl and not elbo.last.analytic_kl
    assert np.std(totals) > 0  # a Monte-Carlo estimate, not a closed form
    expected = size * _student_t_kl_per_element(loc, scale, df)
    standard_error = np.std(totals) / np.sqrt(len(totals))
    assert abs(np.mean(totals) - expected) < 4 * standard_error


def test_laplace_prior_uses_torchs_closed_form_kl():
    b, loc, scale = 0.7, 0.4, 0.3

    def model(y):
        w = pyro.sample("w", dist.Laplace(torch.zeros(4), b).to_event(1))
        pyro.sample("obs", dist.Normal(w.sum(), 1.0), obs=y)

    guide = MeanFieldGuide(model)
    guide(torch.tensor(0.0))
    with torch.no_grad():
        guide.loc.fill_(loc)
        guide.raw_scale.fill_(math.log(math.expm1(scale)))
    elbo = BetaELBO()
    values = []
    for _ in range(3):
        elbo.loss(model, guide, torch.tensor(0.0))
        values.append(elbo.last.kl_total)

    # KL(N(m, s) || Laplace(0, b)) = E|z| / b + log(2b) - log(s sqrt(2 pi e)).
    mean_abs = scale * math.sqrt(2 / math.pi) * math.exp(
        -(loc**2) / (2 * scale**2)
    ) + loc * (1 - 2 * stats.norm.cdf(-loc / scale))
    per_element = (
        mean_abs / b
        + math.log(2 * b)
        - math.log(scale * math.sqrt(2 * math.pi * math.e))
    )
    assert not guide.analytic_kl
    assert elbo.last.analytic_kl
    assert len(set(values)) == 1
    assert values[0] == pytest.approx(4 * per_element, rel=1e-5)


# --------------------------------------------------------------- the KL weight
class Schedule:
    kl_weight = 0.5


def test_beta_object_is_read_at_every_evaluation(data):
    x, y = data
    guide = _guide(W, -30.0)
    schedule = Schedule()
    elbo = BetaELBO(beta=schedule)
    index = torch.arange(6)

    first = elbo.loss(regression_model, guide, x, y, index)
    terms = elbo.last
    schedule.kl_weight = 2.0
    second = elbo.loss(regression_model, guide, x, y, index)

    assert terms.beta == 0.5 and elbo.last.beta == 2.0
    assert first == pytest.approx(terms.data + 0.5 * terms.kl, rel=1e-6)
    assert second == pytest.approx(terms.data + 2.0 * terms.kl, rel=1e-6)


@pytest.mark.parametrize("beta", [-0.1, -1, float("nan"), float("inf")])
def test_negative_or_non_finite_beta_is_refused_at_construction(beta):
    with pytest.raises(ValueError, match="beta must be finite and >= 0"):
        BetaELBO(beta=beta)


@pytest.mark.parametrize("weight", [-0.5, float("nan"), float("inf")])
def test_invalid_kl_weight_of_a_beta_object_is_refused_at_evaluation(data, weight):
    x, y = data
    schedule = Schedule()
    schedule.kl_weight = weight
    guide = _guide(W, -1.0)
    with pytest.raises(ValueError, match="KL weight must be finite and >= 0"):
        BetaELBO(beta=schedule).loss(regression_model, guide, x, y, torch.arange(4))


def test_num_particles_below_one_is_refused():
    with pytest.raises(ValueError, match="num_particles"):
        BetaELBO(num_particles=0)


def test_works_as_a_differentiable_loss_module(data):
    x, y = data
    guide = _guide(W, -1.0)

    loss_fn = BetaELBO()(regression_model, guide)
    loss = loss_fn(x, y, torch.arange(8))

    assert isinstance(loss, torch.Tensor) and loss.requires_grad
    loss.backward()
    assert guide.loc.grad is not None and torch.all(torch.isfinite(guide.loc.grad))
    assert guide.raw_scale.grad.abs().sum() > 0


def test_svi_with_beta_elbo_matches_a_hand_written_gradient_step(data):
    x, y = data
    guide = _guide(W, -30.0)
    optim = pyro.optim.SGD({"lr": 0.1})
    svi = pyro.infer.SVI(regression_model, guide, optim, loss=BetaELBO(beta=0.0))
    index = torch.arange(FULL_SIZE)

    svi.step(x, y, index)

    # With beta = 0 the loss is the mean Gaussian NLL; its gradient in w is
    # -x^T (y - x w - b) / (sigma^2 N).
    xd, yd = x.double().numpy(), y.double().numpy()
    residual = yd - xd @ W - 0.3
    grad_w = -xd.T @ residual / SIGMA**2 / (FULL_SIZE * CHANNELS)
    np.testing.assert_allclose(
        guide.loc.detach().numpy().reshape(2, 3), W - 0.1 * grad_w, rtol=1e-5, atol=1e-6
    )
