"""Specification of the observation models in :mod:`pyro_autoformer.likelihoods`."""

import numpy as np
import pytest
import torch
from scipy import stats

from pyro_autoformer.likelihoods import (
    GaussianLikelihood,
    QuantileLikelihood,
    QuantilePseudoLikelihood,
    StudentTLikelihood,
    make_likelihood,
)


def _softplus(x):
    return np.log1p(np.exp(np.asarray(x, dtype=np.float64)))


def _pinball(error, tau):
    return np.where(error >= 0, tau * error, (tau - 1.0) * error)


@pytest.fixture
def rng():
    return np.random.default_rng(0)


def test_gaussian_log_prob_equals_scipy_normal(rng):
    likelihood = GaussianLikelihood(channels=3)
    raw = np.array([-1.0, 0.2, 1.5])
    with torch.no_grad():
        likelihood.raw_scale.copy_(torch.tensor(raw))
    output = rng.normal(size=(2, 4, 3))
    y = rng.normal(size=(2, 4, 3))

    log_prob = likelihood(torch.tensor(output, dtype=torch.float32)).log_prob(
        torch.tensor(y, dtype=torch.float32)
    )

    expected = stats.norm.logpdf(y, loc=output, scale=_softplus(raw) + 1e-4)
    np.testing.assert_allclose(
        log_prob.detach().numpy(), expected, rtol=1e-5, atol=1e-5
    )


def test_gaussian_initial_scale_is_init_scale():
    likelihood = GaussianLikelihood(channels=2, init_scale=0.7)
    np.testing.assert_allclose(likelihood.scale.detach().numpy(), [0.7, 0.7], atol=2e-4)


def test_student_t_log_prob_equals_scipy_t(rng):
    likelihood = StudentTLikelihood(channels=2)
    raw_scale, raw_df = np.array([-0.5, 0.8]), np.array([0.0, 2.0])
    with torch.no_grad():
        likelihood.raw_scale.copy_(torch.tensor(raw_scale))
        likelihood.raw_df.copy_(torch.tensor(raw_df))
    output = rng.normal(size=(3, 5, 2))
    y = rng.standard_t(3.0, size=(3, 5, 2))

    log_prob = likelihood(torch.tensor(output, dtype=torch.float32)).log_prob(
        torch.tensor(y, dtype=torch.float32)
    )

    df = _softplus(raw_df) + 2.0
    scale = _softplus(raw_scale) + 1e-4
    expected = stats.t.logpdf(y, df, loc=output, scale=scale)
    np.testing.assert_allclose(
        log_prob.detach().numpy(), expected, rtol=1e-5, atol=1e-5
    )


def test_student_t_degrees_of_freedom_stay_above_two():
    likelihood = StudentTLikelihood(channels=1, init_df=2.5)
    with torch.no_grad():
        likelihood.raw_df.fill_(-10.0)
    assert 2.0 < likelihood.df.item() < 2.001


def test_quantile_log_prob_is_sum_of_asymmetric_laplace_log_densities():
    levels = [0.1, 0.5, 0.9]
    quantiles = torch.tensor([[-1.0, 0.2, 1.5], [0.0, 0.5, 0.7]])
    scale = torch.tensor([0.4, 1.3])
    y = torch.tensor([0.9, -2.0])

    log_prob = QuantilePseudoLikelihood(quantiles, torch.tensor(levels), scale)
    log_prob = log_prob.log_prob(y)

    expected = []
    for row in range(2):
        total = 0.0
        for k, tau in enumerate(levels):
            u = y[row].item() - quantiles[row, k].item()
            rho = u * (tau - (1.0 if u < 0 else 0.0))
            s = scale[row].item()
            total += np.log(tau * (1 - tau) / s * np.exp(-rho / s))
        expected.append(total)
    np.testing.assert_allclose(log_prob.numpy(), expected, rtol=1e-6)


def test_quantile_negative_log_prob_is_pinball_over_scale_plus_constant(rng):
    levels = np.array([0.05, 0.3, 0.5, 0.95])
    quantiles = np.sort(rng.normal(size=(6, 4)), axis=-1)
    scale = 0.37
    y_a, y_b = rng.normal(size=6), rng.normal(size=6) * 3

    distribution = QuantilePseudoLikelihood(
        torch.tensor(quantiles),
        torch.tensor(levels),
        torch.tensor(scale, dtype=torch.float64),
    )
    nll_a = -distribution.log_prob(torch.tensor(y_a)).numpy()
    nll_b = -distribution.log_prob(torch.tensor(y_b)).numpy()

    pinball_a = _pinball(y_a[:, None] - quantiles, levels).sum(-1)
    pinball_b = _pinball(y_b[:, None] - quantiles, levels).sum(-1)
    constant = -np.log(levels * (1 - levels) / scale).sum()
    np.testing.assert_allclose(nll_a, pinball_a / scale + constant, rtol=1e-10)
    np.testing.assert_allclose(nll_a - nll_b, (pinball_a - pinball_b) / scale)


def test_quantile_likelihood_sorts_unsorted_outputs_so_quantiles_never_cross():
    likelihood = QuantileLikelihood(channels=2, quantiles=(0.1, 0.5, 0.9))
    output = torch.tensor([[[[3.0, -1.0, 0.5], [0.0, 0.0, -4.0]]]])  # (1, 1, 2, 3)

    distribution = likelihood(output)

    expected = torch.tensor([[[[-1.0, 0.5, 3.0], [-4.0, 0.0, 0.0]]]])
    assert torch.equal(distribution.quantiles, expected)
    assert torch.equal(likelihood.location(output), torch.tensor([[[0.5, 0.0]]]))


def test_quantile_likelihood_median_interpolates_between_levels():
    likelihood = QuantileLikelihood(channels=1, quantiles=(0.1, 0.9))
    output = torch.tensor([[[[2.0, -2.0]]]])
    # Linear between (0.1, -2) and (0.9, 2): 0.5 lies halfway.
    assert likelihood.location(output).item() == pytest.approx(0.0, abs=1e-6)

    likelihood = QuantileLikelihood(channels=1, quantiles=(0.1, 0.3, 0.9))
    output = torch.tensor([[[[0.0, 1.0, 4.0]]]])
    # Between (0.3, 1) and (0.9, 4): 1 + (0.2 / 0.6) * 3 = 2.
    assert likelihood.location(output).item() == pytest.approx(2.0)


def test_quantile_samples_reproduce_the_predicted_quantiles():
    torch.manual_seed(0)
    levels = torch.tensor([0.1, 0.25, 0.5, 0.9])
    quantiles = torch.tensor([[-2.0, -0.5, 0.3, 2.5], [1.0, 1.1, 1.2, 5.0]])
    distribution = QuantilePseudoLikelihood(quantiles, levels, torch.tensor(1.0))

    samples = distribution.sample((100_000,))

    assert samples.shape == (100_000, 2)
    empirical = np.quantile(samples.numpy(), levels.numpy(), axis=0).T
    np.testing.assert_allclose(empirical, quantiles.numpy(), atol=0.03)
    assert samples.min(0).values.tolist() == quantiles[:, 0].tolist()
    assert samples.max(0).values.tolist() == quantiles[:, -1].tolist()


def test_quantile_pseudo_likelihood_expands_to_a_larger_batch():
    distribution = QuantilePseudoLikelihood(
        torch.tensor([[0.0, 1.0]]), torch.tensor([0.2, 0.8]), torch.tensor(1.0)
    )
    expanded = distribution.expand((3, 1))
    assert expanded.batch_shape == (3, 1)
    log_prob = expanded.log_prob(torch.tensor([[0.5], [0.5], [0.5]]))
    expected = distribution.log_prob(torch.tensor([0.5])).item()
    assert log_prob.flatten().tolist() == pytest.approx([expected] * 3)


@pytest.mark.parametrize(
    "quantiles, message",
    [
        ((), "must not be empty"),
        ((0.0, 0.5), r"\(0, 1\)"),
        ((0.5, 1.2), r"\(0, 1\)"),
        ((0.5, 0.1), "strictly increasing"),
        ((0.5, 0.5), "strictly increasing"),
    ],
)
def test_quantile_likelihood_refuses_bad_levels(quantiles, message):
    with pytest.raises(ValueError, match=message):
        QuantileLikelihood(channels=1, quantiles=quantiles)


def test_quantile_likelihood_refuses_wrong_number_of_outputs():
    likelihood = QuantileLikelihood(channels=1, quantiles=(0.1, 0.5, 0.9))
    with pytest.raises(ValueError, match="expected 3 outputs"):
        likelihood(torch.zeros(2, 4, 1, 2))


@pytest.mark.parametrize(
    "build, message",
    [
        (lambda: GaussianLikelihood(channels=0), "channels"),
        (lambda: GaussianLikelihood(channels=1, init_scale=0.0), "init_scale"),
        (lambda: StudentTLikelihood(channels=1, init_scale=-1.0), "init_scale"),
        (lambda: StudentTLikelihood(channels=1, init_df=2.0), "init_df"),
        (lambda: QuantileLikelihood(channels=-1), "channels"),
    ],
)
def test_likelihoods_refuse_bad_arguments(build, message):
    with pytest.raises(ValueError, match=message):
        build()


def test_make_likelihood_builds_each_kind_and_names_valid_choices():
    assert isinstance(make_likelihood("gaussian", 2), GaussianLikelihood)
    assert isinstance(make_likelihood("studentt", 2), StudentTLikelihood)
    quantile = make_likelihood("quantile", 2, (0.2, 0.8))
    assert isinstance(quantile, QuantileLikelihood)
    assert quantile.n_outputs == 2
    with pytest.raises(ValueError, match="gaussian.*studentt.*quantile.*'laplace'"):
        make_likelihood("laplace", 2)
