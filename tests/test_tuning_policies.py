"""Specifications of the KL-weight policies, checked against hand-worked values."""

import logging
import math

import pytest

from pyro_autoformer.tuning.policies import (
    AdaptivePolicy,
    AnnealingPolicy,
    FixedPolicy,
    Observation,
    StagedTargets,
    ValidationFeedback,
    kl_share,
)


def obs(data_loss=1.0, kl_loss=1.0, weight=0.01, position=0.0):
    return Observation(
        position=position, data_loss=data_loss, kl_loss=kl_loss, weight=weight
    )


# --- KL share -----------------------------------------------------------------


def test_kl_share_is_weighted_kl_over_abs_data_plus_weighted_kl():
    # 0.1 * 1.0 / (0.9 + 0.1) = 0.1
    assert kl_share(0.9, 1.0, 0.1) == pytest.approx(0.1)


def test_kl_share_uses_absolute_data_term_when_negative():
    # a Gaussian NLL of -0.9 counts as 0.9: 0.1 / (0.9 + 0.1)
    assert kl_share(-0.9, 1.0, 0.1) == pytest.approx(0.1)


def test_kl_share_is_zero_when_both_terms_are_zero():
    assert kl_share(0.0, 0.0, 1.0) == 0.0


def test_kl_share_is_one_when_data_term_is_zero_and_kl_positive():
    assert kl_share(0.0, 2.0, 0.5) == 1.0


# --- fixed --------------------------------------------------------------------


def test_fixed_policy_never_moves():
    policy = FixedPolicy(3e-3)
    weights = {
        policy.next_weight(obs(data_loss=d, kl_loss=k, weight=w, position=t))
        for t, (d, k, w) in enumerate(
            [(1.0, 5.0, 1e-5), (-2.0, 0.1, 1.0), (0.0, 0.0, 0.5)]
        )
    }
    assert weights == {3e-3}


def test_fixed_policy_refuses_non_positive_weight():
    with pytest.raises(ValueError, match="weight"):
        FixedPolicy(0.0)


# --- annealing ----------------------------------------------------------------


def test_linear_schedule_quarter_way():
    # 1e-2 + (1e-4 - 1e-2) * 25/100 = 0.01 - 0.002475
    policy = AnnealingPolicy("linear", 1e-2, 1e-4, total=100)
    assert policy.weight_at(25) == pytest.approx(0.007525)


def test_cosine_schedule_halfway_and_quarter_way():
    policy = AnnealingPolicy("cosine", 1e-2, 1e-4, total=100)
    # cos(pi/2) = 0: 1e-4 + 0.0099 * 0.5
    assert policy.weight_at(50) == pytest.approx(0.00505)
    # cos(pi/4) = 0.70710678: 1e-4 + 0.0099 * 0.85355339
    assert policy.weight_at(25) == pytest.approx(0.0085501786)


def test_exponential_schedule_is_geometric():
    policy = AnnealingPolicy("exponential", 1e-2, 1e-4, total=100)
    # halfway between 1e-2 and 1e-4 on a log scale is 1e-3
    assert policy.weight_at(50) == pytest.approx(1e-3)
    # 1e-2 * (1e-2) ** 0.25 = 1e-2 * 0.316227766
    assert policy.weight_at(25) == pytest.approx(3.16227766e-3)


def test_cyclical_schedule_rises_over_ratio_of_each_cycle_then_holds():
    # 4 cycles of 25 epochs, rising over the first half of each
    policy = AnnealingPolicy("cyclical", 0.0, 1.0, total=100, n_cycles=4, ratio=0.5)
    expected = {0: 0.0, 6.25: 0.5, 12.5: 1.0, 20: 1.0, 25: 0.0, 31.25: 0.5, 99: 1.0}
    for t, value in expected.items():
        assert policy.weight_at(t) == pytest.approx(value), t


def test_warm_up_is_as_easy_as_decay():
    policy = AnnealingPolicy("linear", 1e-4, 1e-2, total=100)
    assert policy.weight_at(0) == pytest.approx(1e-4)
    assert policy.weight_at(50) == pytest.approx(0.00505)
    assert policy.weight_at(100) == pytest.approx(1e-2)


@pytest.mark.parametrize("schedule", ["linear", "cosine", "exponential", "cyclical"])
def test_schedules_clamp_beyond_total_and_before_zero(schedule):
    policy = AnnealingPolicy(schedule, 1e-2, 1e-4, total=40)
    assert policy.weight_at(40) == pytest.approx(1e-4)
    assert policy.weight_at(400) == pytest.approx(1e-4)
    assert policy.weight_at(-3) == pytest.approx(1e-2)


def test_annealing_next_weight_reads_the_observation_position():
    policy = AnnealingPolicy("linear", 1e-2, 1e-4, total=100)
    assert policy.next_weight(obs(position=25)) == pytest.approx(0.007525)


@pytest.mark.parametrize(
    "kwargs, field",
    [
        ({"schedule": "sigmoid"}, "schedule"),
        ({"start_weight": -1.0}, "start_weight"),
        ({"schedule": "exponential", "end_weight": 0.0}, "exponential"),
        ({"total": 0}, "total"),
        ({"n_cycles": 0}, "n_cycles"),
        ({"ratio": 0.0}, "ratio"),
    ],
)
def test_annealing_refuses_bad_arguments(kwargs, field):
    args = {"schedule": "linear", "start_weight": 1e-2, "end_weight": 1e-4}
    args.update({"total": 10})
    args.update(kwargs)
    with pytest.raises(ValueError, match=field):
        AnnealingPolicy(**args)


# --- adaptive -----------------------------------------------------------------


def test_adaptive_first_step_moves_half_way_in_log_space():
    # D = 0.9, K = 1: w* = (0.1/0.9) * 0.9 / 1 = 0.1; from 0.01, half way in log
    # space is sqrt(0.01 * 0.1). The logit error log(10) is outside the integral band.
    policy = AdaptivePolicy(0.1, 1e-6, 1.0, gain=0.5, integral_gain=0.05)
    weight = policy.next_weight(obs(data_loss=0.9, kl_loss=1.0, weight=0.01))
    assert weight == pytest.approx(math.sqrt(0.01 * 0.1))
    assert policy.integral == 0.0


def test_adaptive_integrates_small_errors():
    # error = log(0.1 / 0.09) = 0.1053605; u_new = log 0.09 + (0.5 + 0.05) * error
    policy = AdaptivePolicy(0.1, 1e-6, 1.0, gain=0.5, integral_gain=0.05)
    weight = policy.next_weight(obs(data_loss=0.9, kl_loss=1.0, weight=0.09))
    assert policy.integral == pytest.approx(0.1053605)
    assert weight == pytest.approx(0.09 * math.exp(0.55 * 0.1053605))


def test_adaptive_smooths_with_a_line_through_the_window():
    # z = log D - log K = 0, 0, 3: the least-squares line through (-1, 0), (0, 0),
    # (1, 3) is 1 + 1.5 x, which is 2.5 at the last update; gain 1 jumps there.
    policy = AdaptivePolicy(0.1, 1e-6, 100.0, window=3, gain=1.0, integral_gain=0.0)
    for kl in (1.0, 1.0, math.exp(-3.0)):
        weight = policy.next_weight(obs(data_loss=1.0, kl_loss=kl, weight=0.01))
    assert weight == pytest.approx(math.exp(2.5) / 9.0)


def test_adaptive_uses_abs_data_term():
    policy = AdaptivePolicy(0.1, 1e-6, 1.0, gain=1.0, integral_gain=0.0)
    weight = policy.next_weight(obs(data_loss=-0.9, kl_loss=1.0, weight=0.01))
    assert weight == pytest.approx(0.1)


def test_adaptive_holds_weight_when_kl_is_zero():
    policy = AdaptivePolicy(0.1, 1e-6, 1.0)
    assert policy.next_weight(obs(kl_loss=0.0, weight=0.02)) == 0.02


def test_adaptive_clamps_to_its_bounds():
    policy = AdaptivePolicy(0.1, 1e-4, 1e-2, gain=1.0)
    # w* = (1/9) * 1 / 1e-6, far above the ceiling
    assert policy.next_weight(obs(kl_loss=1e-6, weight=1e-3)) == pytest.approx(1e-2)
    policy = AdaptivePolicy(0.1, 1e-4, 1e-2, gain=1.0)
    assert policy.next_weight(obs(kl_loss=1e6, weight=1e-3)) == pytest.approx(1e-4)


def test_adaptive_freezes_integral_while_saturated():
    # w* = 0.06 is just above max_weight = 0.05: the error log(0.06/0.05) = 0.18
    # lies inside the integral band, yet is not integrated while clamped.
    policy = AdaptivePolicy(0.1, 1e-6, 0.05)
    kl = (1.0 / 9.0) / 0.06
    weight = 0.05
    for _ in range(50):
        weight = policy.next_weight(obs(data_loss=1.0, kl_loss=kl, weight=weight))
    assert weight == pytest.approx(0.05)
    assert policy.integral == 0.0


def test_adaptive_target_above_25_percent_logs_a_warning(caplog):
    with caplog.at_level(logging.WARNING, logger="pyro_autoformer.tuning.policies"):
        AdaptivePolicy(0.3, 1e-6, 1.0)
    assert any("underfits" in r.getMessage() for r in caplog.records)


def test_adaptive_target_at_or_below_25_percent_is_quiet(caplog):
    with caplog.at_level(logging.WARNING, logger="pyro_autoformer.tuning.policies"):
        AdaptivePolicy(0.25, 1e-6, 1.0)
    assert not caplog.records


@pytest.mark.parametrize("target", [0.0, 1.0, -0.1, 1.5])
def test_adaptive_refuses_target_outside_open_unit_interval(target):
    with pytest.raises(ValueError, match="target"):
        AdaptivePolicy(target, 1e-6, 1.0)


@pytest.mark.parametrize(
    "kwargs, field",
    [
        ({"min_weight": 0.0}, "min_weight"),
        ({"max_weight": 1e-7}, "max_weight"),
        ({"window": 0}, "window"),
        ({"gain": 0.0}, "gain"),
        ({"gain": 1.5}, "gain"),
        ({"integral_gain": -0.1}, "integral_gain"),
        ({"integral_band": 0.0}, "integral_band"),
    ],
)
def test_adaptive_refuses_bad_arguments(kwargs, field):
    args = {"target": 0.1, "min_weight": 1e-6, "max_weight": 1.0}
    args.update(kwargs)
    with pytest.raises(ValueError, match=field):
        AdaptivePolicy(**args)


def test_adaptive_warns_when_integral_gain_can_oscillate(caplog):
    with caplog.at_level(logging.WARNING, logger="pyro_autoformer.tuning.policies"):
        AdaptivePolicy(0.1, 1e-6, 1.0, gain=0.5, integral_gain=0.1)
    assert any("oscillate" in r.getMessage() for r in caplog.records)


# --- staged targets -----------------------------------------------------------


def test_staged_targets_follow_the_guides_three_stages():
    stages = StagedTargets([(0, 0.20), (10, 0.10), (25, 0.05)])
    expected = {0: 0.20, 9: 0.20, 10: 0.10, 24: 0.10, 25: 0.05, 500: 0.05}
    for epoch, target in expected.items():
        assert stages.target_at(epoch) == target, epoch


def test_staged_targets_leave_target_alone_before_first_stage():
    assert StagedTargets([(5, 0.1)]).target_at(2) is None


def test_staged_targets_refuse_unordered_stages():
    with pytest.raises(ValueError, match="increasing"):
        StagedTargets([(10, 0.1), (5, 0.2)])


def test_staged_targets_refuse_bad_target():
    with pytest.raises(ValueError, match="target"):
        StagedTargets([(0, 1.2)])


# --- validation feedback ------------------------------------------------------


def test_validation_feedback_multiplies_against_best_so_far():
    feedback = ValidationFeedback(increase=1.1, decrease=0.95)
    factors = [feedback.observe(v) for v in (1.0, 0.9, 0.95, 0.97, 0.8)]
    # baseline; better; worse than 0.9; worse than 0.9; better
    expected = [1.0, 0.95, 0.95 * 1.1, 0.95 * 1.1 * 1.1, 0.95 * 1.1 * 1.1 * 0.95]
    assert factors == pytest.approx(expected)
    assert feedback.best_val_loss == 0.8


def test_validation_feedback_ignores_missing_loss():
    feedback = ValidationFeedback()
    feedback.observe(1.0)
    assert feedback.observe(None) == 1.0


@pytest.mark.parametrize(
    "kwargs, field", [({"increase": 0.9}, "increase"), ({"decrease": 1.2}, "decrease")]
)
def test_validation_feedback_refuses_bad_factors(kwargs, field):
    with pytest.raises(ValueError, match=field):
        ValidationFeedback(**kwargs)
