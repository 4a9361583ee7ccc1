"""Specifications of the probabilistic forecast scores in pyro_autoformer.metrics."""

import math

import numpy as np
import pandas as pd
import pytest
import scoringrules as sr
import torch
from scipy import stats

from pyro_autoformer.metrics import (
    RELIABILITY_LEVELS,
    ForecastMetrics,
    calibration_error,
    central_interval,
    crps_ensemble,
    crps_gaussian,
    crps_quantiles,
    interval_coverage,
    interval_width,
    mixture_nll,
    pinball_loss,
    pit_values,
    sample_quantiles,
)


def _naive_crps(samples, y, fair=False):
    """O(S^2) double loop over the samples of one element."""
    num = len(samples)
    abs_term = sum(abs(x - y) for x in samples) / num
    pair_sum = sum(abs(a - b) for a in samples for b in samples)
    pairs = num * (num - 1) if fair else num * num
    return abs_term - 0.5 * pair_sum / pairs


@pytest.fixture
def rng():
    return np.random.default_rng(1234)


# CRPS of samples


def test_crps_ensemble_of_two_samples_matches_hand_value():
    # Samples {0, 2}, y = 1: E|X - y| = 1 and E|X - X'| = (0 + 2 + 2 + 0) / 4 = 1.
    value = crps_ensemble(torch.tensor([[0.0], [2.0]]), torch.tensor([1.0]))
    assert value.item() == pytest.approx(0.5)


def test_fair_crps_of_two_samples_matches_hand_value():
    # The fair spread averages over the 2 ordered distinct pairs: E|X - X'| = 2.
    value = crps_ensemble(torch.tensor([[0.0], [2.0]]), torch.tensor([1.0]), fair=True)
    assert value.item() == pytest.approx(0.0)


def test_crps_ensemble_equals_naive_double_loop(rng):
    samples = rng.normal(size=(9, 6))
    y = rng.normal(size=6)
    expected = [_naive_crps(samples[:, j], y[j]) for j in range(6)]
    np.testing.assert_allclose(crps_ensemble(samples, y).numpy(), expected, rtol=1e-12)


def test_fair_crps_equals_naive_double_loop(rng):
    samples = rng.normal(size=(7, 5))
    y = rng.normal(size=5)
    expected = [_naive_crps(samples[:, j], y[j], fair=True) for j in range(5)]
    np.testing.assert_allclose(
        crps_ensemble(samples, y, fair=True).numpy(), expected, rtol=1e-12
    )


def test_crps_ensemble_equals_scoringrules_energy_estimator(rng):
    samples = rng.normal(size=(31, 4, 6, 3))
    y = rng.normal(size=(4, 6, 3))
    expected = sr.crps_ensemble(y, samples, m_axis=0, estimator="nrg")
    np.testing.assert_allclose(crps_ensemble(samples, y).numpy(), expected, rtol=1e-10)


def test_fair_crps_equals_scoringrules_fair_estimator(rng):
    samples = rng.normal(size=(31, 4, 6, 3))
    y = rng.normal(size=(4, 6, 3))
    expected = sr.crps_ensemble(y, samples, m_axis=0, estimator="fair")
    np.testing.assert_allclose(
        crps_ensemble(samples, y, fair=True).numpy(), expected, rtol=1e-10
    )


def test_crps_ensemble_accepts_torch_float32_and_numpy_alike(rng):
    samples = rng.normal(size=(5, 3)).astype(np.float32)
    y = rng.normal(size=3).astype(np.float32)
    from_numpy = crps_ensemble(samples, y)
    from_torch = crps_ensemble(torch.from_numpy(samples), torch.from_numpy(y))
    assert from_torch.dtype == torch.float64
    torch.testing.assert_close(from_numpy, from_torch)


def test_crps_ensemble_approaches_gaussian_closed_form_for_many_samples():
    generator = torch.Generator().manual_seed(0)
    loc, scale = 0.3, 1.7
    y = torch.tensor([-2.0, 0.3, 1.0, 4.0])
    samples = loc + scale * torch.randn(40_000, 1, generator=generator)
    samples = samples.expand(-1, 4)
    z = ((y - loc) / scale).numpy()
    closed_form = scale * (
        z * (2 * stats.norm.cdf(z) - 1) + 2 * stats.norm.pdf(z) - 1 / math.sqrt(math.pi)
    )
    np.testing.assert_allclose(
        crps_ensemble(samples, y).numpy(), closed_form, atol=0.02 * scale
    )


def test_fair_crps_refuses_a_single_sample():
    with pytest.raises(ValueError, match="at least two samples"):
        crps_ensemble(torch.zeros(1, 3), torch.zeros(3), fair=True)


def test_crps_ensemble_shape_mismatch_names_both_shapes():
    with pytest.raises(ValueError, match=r"\(8, 2, 5\).*\(2, 4\)"):
        crps_ensemble(torch.zeros(8, 2, 5), torch.zeros(2, 4))


# Closed-form Gaussian CRPS


def test_crps_gaussian_at_the_mean_matches_hand_value():
    # z = 0: scale * (2 phi(0) - 1/sqrt(pi)) = scale * (sqrt(2) - 1) / sqrt(pi).
    value = crps_gaussian(1.0, 2.0, 1.0)
    assert value.item() == pytest.approx(2.0 * (math.sqrt(2) - 1) / math.sqrt(math.pi))


def test_crps_gaussian_equals_scoringrules_crps_normal(rng):
    loc = rng.normal(size=20)
    scale = rng.uniform(0.1, 3.0, size=20)
    y = rng.normal(size=20) * 2
    expected = sr.crps_normal(y, loc, scale)
    np.testing.assert_allclose(crps_gaussian(loc, scale, y).numpy(), expected)


def test_crps_gaussian_refuses_non_positive_scale():
    with pytest.raises(ValueError, match="scale must be > 0"):
        crps_gaussian(np.zeros(2), np.array([1.0, 0.0]), np.zeros(2))


# Quantile forecasts


def test_pinball_loss_matches_hand_values():
    q = torch.tensor([1.0, 3.0, 2.0])
    y = torch.tensor([3.0, 1.0, 2.0])
    # Under-forecast costs level * 2, over-forecast (1 - level) * 2, exact costs 0.
    expected = torch.tensor([1.8, 0.2, 0.0], dtype=torch.float64)
    torch.testing.assert_close(pinball_loss(q, y, 0.9), expected)


def test_crps_quantiles_matches_hand_value():
    # Losses at y = 1.5: 0.25 * 1.5, 0.5 * 0.5, 0.25 * 0.5; twice their mean is 0.5.
    quantile_values = np.array([[0.0], [1.0], [2.0]])
    value = crps_quantiles(quantile_values, (0.25, 0.5, 0.75), np.array([1.5]))
    assert value.item() == pytest.approx(0.5)


def test_crps_quantiles_equals_scoringrules_crps_quantile(rng):
    levels = np.array([0.1, 0.3, 0.5, 0.7, 0.9])
    quantile_values = np.sort(rng.normal(size=(5, 12)), axis=0)
    y = rng.normal(size=12)
    expected = sr.crps_quantile(y, quantile_values, levels, m_axis=0)
    np.testing.assert_allclose(
        crps_quantiles(quantile_values, levels, y).numpy(), expected
    )


def test_crps_quantiles_refuses_level_count_mismatch():
    with pytest.raises(ValueError, match="3 levels but levels has 2"):
        crps_quantiles(np.zeros((3, 4)), (0.25, 0.75), np.zeros(4))


# Intervals


def test_sample_quantiles_equal_torch_quantile_linear_interpolation(rng):
    samples = torch.from_numpy(rng.normal(size=(17, 3, 4)))
    levels = [0.05, 0.25, 0.5, 0.9, 0.975]
    expected = torch.quantile(samples, torch.tensor(levels, dtype=torch.float64), dim=0)
    torch.testing.assert_close(sample_quantiles(samples, levels), expected)


def test_central_interval_of_evenly_spaced_samples_matches_hand_value():
    # Samples 0..10: the 0.1 and 0.9 quantiles sit at positions 1 and 9.
    samples = torch.arange(11.0).reshape(11, 1)
    lower, upper = central_interval(samples, 0.8)
    assert (lower.item(), upper.item()) == pytest.approx((1.0, 9.0))


def test_central_interval_refuses_level_outside_unit_interval():
    for level in (0.0, 1.0, 1.5, -0.2):
        with pytest.raises(ValueError, match=r"open interval \(0, 1\)"):
            central_interval(torch.zeros(4, 2), level)


def test_interval_coverage_includes_bounds():
    lower = torch.tensor([0.0, 0.0, 0.0, 0.0])
    upper = torch.tensor([1.0, 1.0, 1.0, 1.0])
    y = torch.tensor([0.0, 1.0, 1.5, -0.1])
    expected = torch.tensor([1.0, 1.0, 0.0, 0.0], dtype=torch.float64)
    torch.testing.assert_close(interval_coverage(lower, upper, y), expected)


def test_interval_width_is_upper_minus_lower():
    width = interval_width(np.array([1.0, -2.0]), np.array([1.5, 3.0]))
    torch.testing.assert_close(width, torch.tensor([0.5, 5.0], dtype=torch.float64))


# PIT and calibration


def test_pit_counts_ties_at_mid_rank():
    # One sample below and two equal to y = 2: (1 + 0.5 * 2) / 4.
    samples = torch.tensor([[1.0], [2.0], [2.0], [3.0]])
    assert pit_values(samples, torch.tensor([2.0])).item() == pytest.approx(0.5)


def test_pit_without_ties_is_fraction_of_samples_below():
    samples = torch.tensor([[1.0, 1.0], [2.0, 2.0], [3.0, 3.0], [4.0, 4.0]])
    y = torch.tensor([0.5, 3.5])
    torch.testing.assert_close(
        pit_values(samples, y), torch.tensor([0.0, 0.75], dtype=torch.float64)
    )


def test_randomized_pit_spreads_ties_within_their_rank_range():
    samples = torch.tensor([1.0, 2.0, 2.0, 3.0]).reshape(4, 1).expand(4, 500)
    y = torch.full((500,), 2.0)
    generator = torch.Generator().manual_seed(3)
    pit = pit_values(samples, y, randomize=True, generator=generator)
    # Between 1/4 (no tie counted) and 3/4 (both counted), uniform in between.
    assert pit.min() >= 0.25 and pit.max() <= 0.75
    assert pit.std().item() > 0.1


def test_calibration_error_matches_hand_worked_example():
    # Samples 0..10 for four elements; y at 0.5, 3.5, 5 and 9.5.
    # Level 0.5: interval [2.5, 7.5] covers 2 of 4 -> gap |0.5 - 0.5| = 0.
    # Level 0.8: interval [1, 9] covers 2 of 4 -> gap |0.5 - 0.8| = 0.3.
    samples = torch.arange(11.0).reshape(11, 1).expand(11, 4)
    y = torch.tensor([0.5, 3.5, 5.0, 9.5])
    value = calibration_error(samples, y, levels=(0.5, 0.8))
    assert value.item() == pytest.approx(0.15)


def test_calibration_error_is_near_zero_when_truth_follows_the_forecast():
    generator = torch.Generator().manual_seed(0)
    samples = torch.randn(200, 20_000, generator=generator)
    y = torch.randn(20_000, generator=generator)
    assert calibration_error(samples, y).item() < 0.02


def test_calibration_error_of_too_narrow_samples_matches_gaussian_coverage():
    generator = torch.Generator().manual_seed(1)
    samples = 0.2 * torch.randn(200, 20_000, generator=generator)
    y = torch.randn(20_000, generator=generator)
    # A central interval at level a is +-0.2 z_{(1+a)/2}; N(0, 1) covers it with
    # probability 2 Phi(0.2 z) - 1.
    levels = np.asarray(RELIABILITY_LEVELS)
    coverage = 2 * stats.norm.cdf(0.2 * stats.norm.ppf((1 + levels) / 2)) - 1
    expected = np.mean(np.abs(coverage - levels))
    value = calibration_error(samples, y).item()
    assert expected > 0.3
    assert value == pytest.approx(expected, abs=0.02)


# Mixture NLL


def test_mixture_nll_matches_hand_value():
    log_probs = torch.log(torch.tensor([[0.2], [0.4]]))
    assert mixture_nll(log_probs).item() == pytest.approx(-math.log(0.3))


def test_mixture_nll_of_identical_gaussian_draws_is_the_gaussian_nll():
    loc, scale, y = 0.5, 1.5, 2.0
    one = torch.distributions.Normal(loc, scale).log_prob(torch.tensor(y))
    log_probs = one.to(torch.float64).expand(25)
    expected = 0.5 * math.log(2 * math.pi * scale**2) + (y - loc) ** 2 / (2 * scale**2)
    assert mixture_nll(log_probs).item() == pytest.approx(expected, rel=1e-6)


def test_mixture_nll_is_stable_for_very_negative_log_densities():
    log_probs = torch.tensor([-1000.0, -1000.0 + math.log(3.0)], dtype=torch.float64)
    # Mixture density 0.5 * (e^-1000 + 3 e^-1000) = 2 e^-1000.
    assert mixture_nll(log_probs).item() == pytest.approx(1000.0 - math.log(2.0))


# ForecastMetrics accumulator


def _batch(rng, windows=5, num_samples=40, pred_len=6, channels=3, spread=1.0):
    y = rng.normal(size=(windows, pred_len, channels))
    samples = spread * rng.normal(size=(num_samples, windows, pred_len, channels))
    return samples, y


def _numpy_coverage(samples, y, level):
    lower = np.quantile(samples, (1 - level) / 2, axis=0)
    upper = np.quantile(samples, (1 + level) / 2, axis=0)
    return (lower <= y) & (y <= upper), upper - lower


def test_compute_reports_the_documented_keys(rng):
    metrics = ForecastMetrics()
    samples, y = _batch(rng)
    metrics.update(samples, y, log_probs=rng.normal(size=samples.shape))
    expected = {"mse", "mae", "crps", "calibration_error", "nll"}
    expected |= {"num_windows", "num_elements"}
    expected |= {f"coverage_{p}" for p in (50, 80, 90, 95)}
    expected |= {f"width_{p}" for p in (50, 80, 90, 95)}
    assert set(metrics.compute()) == expected


def test_compute_omits_nll_without_log_probs(rng):
    metrics = ForecastMetrics()
    metrics.update(*_batch(rng))
    assert "nll" not in metrics.compute()


def test_compute_matches_numpy_and_scoringrules_references(rng):
    samples, y = _batch(rng, windows=4, num_samples=30)
    metrics = ForecastMetrics(levels=(0.5, 0.9))
    metrics.update(samples, y)
    result = metrics.compute()

    mean = samples.mean(0)
    assert result["mse"] == pytest.approx(np.mean((mean - y) ** 2))
    assert result["mae"] == pytest.approx(np.mean(np.abs(mean - y)))
    crps = sr.crps_ensemble(y, samples, m_axis=0, estimator="nrg")
    assert result["crps"] == pytest.approx(np.mean(crps))
    for level, key in ((0.5, "50"), (0.9, "90")):
        inside, width = _numpy_coverage(samples, y, level)
        assert result[f"coverage_{key}"] == pytest.approx(inside.mean())
        assert result[f"width_{key}"] == pytest.approx(width.mean())
    assert result["num_windows"] == 4
    assert result["num_elements"] == 4 * 6 * 3


def test_calibration_error_in_compute_follows_the_reliability_levels(rng):
    samples, y = _batch(rng, spread=0.3)
    metrics = ForecastMetrics()
    metrics.update(samples, y)
    gaps = [
        abs(_numpy_coverage(samples, y, level)[0].mean() - level)
        for level in RELIABILITY_LEVELS
    ]
    assert metrics.compute()["calibration_error"] == pytest.approx(np.mean(gaps))


def test_accumulating_two_batches_equals_one_concatenated_batch(rng):
    first_samples, first_y = _batch(rng, windows=3)
    second_samples, second_y = _batch(rng, windows=5)
    first_lp = rng.normal(size=first_samples.shape)
    second_lp = rng.normal(size=second_samples.shape)

    streamed = ForecastMetrics()
    streamed.update(first_samples, first_y, log_probs=first_lp)
    streamed.update(second_samples, second_y, log_probs=second_lp)
    whole = ForecastMetrics()
    whole.update(
        np.concatenate([first_samples, second_samples], axis=1),
        np.concatenate([first_y, second_y], axis=0),
        log_probs=np.concatenate([first_lp, second_lp], axis=1),
    )

    assert streamed.compute() == pytest.approx(whole.compute())
    pd.testing.assert_frame_equal(
        streamed.compute_by_horizon(), whole.compute_by_horizon()
    )
    pd.testing.assert_frame_equal(
        streamed.reliability_table(), whole.reliability_table()
    )


def test_state_does_not_grow_with_the_number_of_windows(rng):
    metrics = ForecastMetrics()
    metrics.update(*_batch(rng))
    size_after_one = sum(value.numel() for value in metrics._sums.values())
    for _ in range(10):
        metrics.update(*_batch(rng))
    assert sum(value.numel() for value in metrics._sums.values()) == size_after_one


def test_compute_by_horizon_matches_per_step_references(rng):
    samples, y = _batch(rng, windows=4, pred_len=5)
    metrics = ForecastMetrics(levels=(0.8,))
    metrics.update(samples, y)
    frame = metrics.compute_by_horizon()

    assert list(frame.columns) == ["step", "mse", "mae", "crps", "coverage_80"]
    np.testing.assert_array_equal(frame["step"], np.arange(1, 6))
    mean = samples.mean(0)
    np.testing.assert_allclose(frame["mse"], ((mean - y) ** 2).mean(axis=(0, 2)))
    np.testing.assert_allclose(frame["mae"], np.abs(mean - y).mean(axis=(0, 2)))
    crps = sr.crps_ensemble(y, samples, m_axis=0, estimator="nrg")
    np.testing.assert_allclose(frame["crps"], crps.mean(axis=(0, 2)))
    inside, _ = _numpy_coverage(samples, y, 0.8)
    np.testing.assert_allclose(frame["coverage_80"], inside.mean(axis=(0, 2)))


def test_reliability_table_lists_levels_from_5_to_95_percent(rng):
    samples, y = _batch(rng)
    metrics = ForecastMetrics()
    metrics.update(samples, y)
    table = metrics.reliability_table()
    np.testing.assert_allclose(table["nominal"], np.arange(1, 20) * 0.05)
    expected = [_numpy_coverage(samples, y, lv)[0].mean() for lv in table["nominal"]]
    np.testing.assert_allclose(table["empirical"], expected)


def test_point_forecast_replaces_sample_mean_for_mse_and_mae(rng):
    samples, y = _batch(rng)
    point = np.zeros_like(y)
    metrics = ForecastMetrics()
    metrics.update(samples, y, point=point)
    assert metrics.compute()["mse"] == pytest.approx(np.mean(y**2))
    assert metrics.compute()["mae"] == pytest.approx(np.mean(np.abs(y)))


def test_nll_per_element_is_mean_mixture_nll(rng):
    samples, y = _batch(rng, windows=2, num_samples=4, pred_len=3, channels=2)
    log_probs = rng.normal(size=samples.shape)
    metrics = ForecastMetrics()
    metrics.update(torch.from_numpy(samples), torch.from_numpy(y), log_probs=log_probs)
    expected = np.mean(np.log(4) - np.log(np.exp(log_probs).sum(0)))
    assert metrics.compute()["nll"] == pytest.approx(expected)


def test_nll_per_window_is_divided_by_elements(rng):
    samples, y = _batch(rng, windows=2, num_samples=3, pred_len=4, channels=2)
    # Two windows of 8 elements; each window has one joint log density per draw.
    log_probs = np.log(np.array([[0.1, 0.2], [0.3, 0.2], [0.2, 0.2]]))
    metrics = ForecastMetrics()
    metrics.update(samples, y, log_probs=log_probs)
    expected = (-math.log(0.2) - math.log(0.2)) / 16
    assert metrics.compute()["nll"] == pytest.approx(expected)


def test_log_probs_for_only_some_batches_are_refused(rng):
    metrics = ForecastMetrics()
    samples, y = _batch(rng)
    metrics.update(samples, y, log_probs=rng.normal(size=samples.shape))
    with pytest.raises(ValueError, match="not for this one"):
        metrics.update(samples, y)


def test_update_refuses_mismatched_shapes_naming_both(rng):
    metrics = ForecastMetrics()
    with pytest.raises(ValueError, match=r"\(10, 4, 6, 3\).*\(4, 7, 3\)"):
        metrics.update(np.zeros((10, 4, 6, 3)), np.zeros((4, 7, 3)))


def test_update_refuses_a_different_pred_len_than_earlier_batches(rng):
    metrics = ForecastMetrics()
    metrics.update(*_batch(rng, pred_len=6))
    with pytest.raises(ValueError, match="does not continue"):
        metrics.update(*_batch(rng, pred_len=4))


def test_update_refuses_nan_samples_and_leaves_state_unchanged(rng):
    metrics = ForecastMetrics()
    samples, y = _batch(rng)
    metrics.update(samples, y)
    before = metrics.compute()
    bad = samples.copy()
    bad[0, 0, 0, 0] = np.nan
    with pytest.raises(ValueError, match="samples holds 1 non-finite"):
        metrics.update(bad, y)
    assert metrics.compute() == before


def test_levels_outside_unit_interval_are_refused():
    with pytest.raises(ValueError, match=r"levels entry must lie.*got 1.0"):
        ForecastMetrics(levels=(0.5, 1.0))
    with pytest.raises(ValueError, match=r"reliability_levels entry.*got 0.0"):
        ForecastMetrics(reliability_levels=(0.0, 0.5))


def test_compute_before_any_update_is_refused():
    with pytest.raises(RuntimeError, match="no batch"):
        ForecastMetrics().compute()


def test_level_names_use_percent_of_unusual_levels(rng):
    metrics = ForecastMetrics(levels=(0.975,))
    metrics.update(*_batch(rng))
    assert "coverage_97.5" in metrics.compute()


def test_accumulator_matches_hand_worked_two_step_example():
    # Step 1: samples {0, 2}, y = 1 -> mean error 0, CRPS 1 - 0.5 * 1 = 0.5,
    #   50% interval [0.5, 1.5] covers y, width 1.
    # Step 2: samples {1, 1}, y = 3 -> error 2, CRPS 2 - 0 = 2,
    #   50% interval [1, 1] misses y, width 0.
    samples = torch.tensor([[0.0, 1.0], [2.0, 1.0]]).reshape(2, 1, 2, 1)
    y = torch.tensor([1.0, 3.0]).reshape(1, 2, 1)
    metrics = ForecastMetrics(levels=(0.5,))
    metrics.update(samples, y)
    result = metrics.compute()
    assert result["mse"] == pytest.approx(2.0)
    assert result["mae"] == pytest.approx(1.0)
    assert result["crps"] == pytest.approx(1.25)
    assert result["coverage_50"] == pytest.approx(0.5)
    assert result["width_50"] == pytest.approx(0.5)
    frame = metrics.compute_by_horizon()
    np.testing.assert_allclose(frame["crps"], [0.5, 2.0])
    np.testing.assert_allclose(frame["coverage_50"], [1.0, 0.0])


def test_accumulated_coverage_counts_truth_on_a_bound_as_covered():
    # Samples 0..10: the 80% interval is [1, 9]; y sits exactly on each bound.
    samples = torch.arange(11.0).reshape(11, 1, 1, 1).expand(11, 2, 1, 1)
    y = torch.tensor([1.0, 9.0]).reshape(2, 1, 1)
    metrics = ForecastMetrics(levels=(0.8,))
    metrics.update(samples, y)
    assert metrics.compute()["coverage_80"] == pytest.approx(1.0)


def test_accumulator_reports_the_fair_crps_when_asked(rng):
    samples, y = _batch(rng, num_samples=8)
    metrics = ForecastMetrics(fair_crps=True)
    metrics.update(samples, y)
    expected = sr.crps_ensemble(y, samples, m_axis=0, estimator="fair").mean()
    assert metrics.compute()["crps"] == pytest.approx(expected)
