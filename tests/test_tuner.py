"""Specifications of KLTuner, suggest_kl_weight and the β convention."""

import logging
import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from scipy.optimize import brentq

from pyro_autoformer.tuning.policies import StagedTargets, ValidationFeedback
from pyro_autoformer.tuning.tuner import (
    KLTuner,
    beta_from_per_element_weight,
    per_element_weight_from_beta,
    suggest_kl_weight,
)

# --- a simulated training run ---------------------------------------------------


class SimulatedTraining:
    """Data and KL terms that respond to the KL weight like a real run.

    The KL relaxes toward ``a / (1 + b*w)`` (a heavier weight pulls the guide to the
    prior); the data term relaxes toward ``d0(t) + c*w*K`` where ``d0`` falls as the
    network learns. Measurements carry multiplicative noise, larger on the data term
    (minibatch noise) than on the analytic KL.
    """

    def __init__(self, seed=0, noise=0.02, rate=0.3, a=2.0, b=20.0, c=0.5):
        self.rng = np.random.default_rng(seed)
        self.noise, self.rate, self.a, self.b, self.c = noise, rate, a, b, c
        self.d_start, self.d_end, self.tau = 1.0, 0.3, 30.0
        self.kl, self.data, self.t = a, self.d_start, 0.0

    def advance(self, weight, dt=1.0):
        r = 1.0 - (1.0 - self.rate) ** dt
        self.kl += r * (self.a / (1.0 + self.b * weight) - self.kl)
        d0 = self.d_end + (self.d_start - self.d_end) * math.exp(-self.t / self.tau)
        self.data += r * (d0 + self.c * weight * self.kl - self.data)
        self.t += dt
        noisy_data = self.data * math.exp(self.noise * self.rng.standard_normal())
        noisy_kl = self.kl * math.exp(0.3 * self.noise * self.rng.standard_normal())
        return noisy_data, noisy_kl

    def true_share(self, weight):
        weighted = weight * self.kl
        return weighted / (abs(self.data) + weighted)

    def equilibrium_weight(self, target):
        """The weight giving ``target`` once training has settled (by root finding)."""

        def excess(log_w):
            w = math.exp(log_w)
            kl = self.a / (1.0 + self.b * w)
            return w * kl / (self.d_end + self.c * w * kl) - target / (1 - target)

        return math.exp(brentq(excess, -20.0, 5.0))


def run_per_epoch(scale, epochs=80, seed=0):
    sim = SimulatedTraining(seed=seed, noise=0.02)
    tuner = KLTuner(
        target_kl_percentage=0.1,
        min_weight=1e-6,
        max_weight=10.0,
        initial_weight=scale * sim.equilibrium_weight(0.1),
    )
    measured, true = [], []
    weight = tuner.kl_weight
    for epoch in range(epochs):
        data, kl = sim.advance(weight)
        true.append(sim.true_share(weight))
        weight, share = tuner.update_kl_weight(epoch, data, kl, method="adaptive")
        measured.append(share)
    return np.array(measured), np.array(true), tuner


def run_per_step(scale, epochs=25, steps=20, seed=0):
    sim = SimulatedTraining(seed=seed, noise=0.05)
    tuner = KLTuner(
        target_kl_percentage=0.1,
        min_weight=1e-6,
        max_weight=10.0,
        initial_weight=scale * sim.equilibrium_weight(0.1),
        window=20,
    )
    measured, true = [], []
    weight = tuner.kl_weight
    for epoch in range(epochs):
        for i in range(steps):
            data, kl = sim.advance(weight, dt=1.0 / steps)
            true.append(sim.true_share(weight))
            weight, share = tuner.update_kl_weight(
                epoch, data, kl, step=epoch * steps + i
            )
            measured.append(share)
    return np.array(measured), np.array(true), tuner


def first_within(shares, target=0.1, points=0.01):
    inside = np.flatnonzero(np.abs(shares - target) <= points)
    assert len(inside), "the share never came within the band"
    return int(inside[0])


@pytest.mark.parametrize("scale", [100.0, 0.01])
@pytest.mark.parametrize("seed", [0, 1])
def test_adaptive_per_epoch_reaches_target_and_stays_within_one_point(scale, seed):
    measured, true, _ = run_per_epoch(scale, seed=seed)
    start = first_within(true)
    assert start <= 20
    assert np.abs(true[start:] - 0.1).max() <= 0.01
    assert np.abs(measured[start:] - 0.1).max() <= 0.015


@pytest.mark.parametrize("scale", [100.0, 0.01])
def test_adaptive_per_epoch_does_not_oscillate_after_converging(scale):
    _, true, tuner = run_per_epoch(scale)
    settled = true[20:] - 0.1
    assert settled.std() < 0.005
    # an oscillating controller would cross the target every few updates
    assert np.sum(np.diff(np.sign(settled)) != 0) <= 8
    # and its weight would reverse direction at every update; this one drifts
    log_weights = np.log([r.weight for r in tuner.history][20:])
    reversals = np.sum(np.diff(np.sign(np.diff(log_weights))) != 0)
    assert reversals <= 10


@pytest.mark.parametrize("scale", [100.0, 0.01])
def test_adaptive_per_step_reaches_target_and_stays_within_one_point(scale):
    measured, true, tuner = run_per_step(scale)
    start = first_within(true)
    assert start <= 3 * 20
    assert np.abs(true[start:] - 0.1).max() <= 0.01
    # per-step measurements are noisy; their per-epoch means hold the band
    epoch_means = measured.reshape(-1, 20).mean(axis=1)
    assert np.abs(epoch_means[start // 20 + 1 :] - 0.1).max() <= 0.01
    assert tuner.history[-1].step == 25 * 20 - 1


def test_adaptive_recovers_quickly_after_long_saturation():
    # A static response D = 1, share odds = w*K. First K needs w = 0.06 > max 0.05
    # for 50 updates, then K needs w = 0.02.
    tuner = KLTuner(target_kl_percentage=0.1, max_weight=0.05, initial_weight=0.05)
    odds = 1.0 / 9.0
    weight = tuner.kl_weight
    for epoch in range(50):
        weight, _ = tuner.update_kl_weight(epoch, 1.0, odds / 0.06)
    assert weight == pytest.approx(0.05)
    shares = []
    for epoch in range(50, 80):
        weight, share = tuner.update_kl_weight(epoch, 1.0, odds / 0.02)
        shares.append(share)
    shares = np.array(shares)
    start = first_within(shares)
    assert start <= 8
    assert np.abs(shares[start:] - 0.1).max() <= 0.01


def test_weights_stay_within_clamps_under_absurd_losses():
    tuner = KLTuner(min_weight=1e-5, max_weight=1e-2)
    weights = [
        tuner.update_kl_weight(epoch, 1.0, kl)[0]
        for epoch, kl in enumerate([1e-9] * 10 + [1e9] * 10)
    ]
    assert all(1e-5 <= w <= 1e-2 for w in weights)
    assert max(weights) == pytest.approx(1e-2)
    assert min(weights) == pytest.approx(1e-5)


# --- the convention -----------------------------------------------------------------


def test_beta_from_per_element_weight_multiplies_by_n():
    assert beta_from_per_element_weight(1e-6, 5_000_000) == pytest.approx(5.0)


def test_per_element_weight_from_beta_divides_by_n():
    assert per_element_weight_from_beta(5.0, 5_000_000) == pytest.approx(1e-6)


def test_both_conventions_give_the_same_loss():
    mse, kl_sum, n, kl_weight = 0.4, 3.0e5, 2_000_000, 2e-7
    beta = beta_from_per_element_weight(kl_weight, n)
    assert mse + kl_weight * kl_sum == pytest.approx(mse + beta * kl_sum / n)


def test_conversion_refuses_non_positive_n():
    with pytest.raises(ValueError, match="n must"):
        beta_from_per_element_weight(1e-3, 0)


# --- suggest_kl_weight --------------------------------------------------------------


def test_suggest_kl_weight_hand_values():
    # (0.1 / 0.9) * 0.5 / 2 = 1/36 ; (0.2 / 0.8) * 0.5 / 2 = 1/16
    assert suggest_kl_weight(0.5, 0.1, kl_loss=2.0) == pytest.approx(1 / 36)
    assert suggest_kl_weight(0.5, 0.2, kl_loss=2.0) == pytest.approx(1 / 16)


def test_suggest_kl_weight_uses_abs_of_negative_data_term():
    assert suggest_kl_weight(-0.5, 0.1, kl_loss=2.0) == pytest.approx(1 / 36)


def test_suggested_weight_gives_the_target_share():
    weight = suggest_kl_weight(0.7, 0.15, kl_loss=0.3)
    assert weight * 0.3 / (0.7 + weight * 0.3) == pytest.approx(0.15)


class FakeGuide:
    def kl_divergence(self):
        return torch.tensor(1000.0, requires_grad=True)


def test_suggest_kl_weight_measures_kl_from_model_guide():
    # K = 1000 / 500 = 2
    model = SimpleNamespace(guide=FakeGuide(), num_target_elements=500)
    assert suggest_kl_weight(0.5, 0.1, model=model) == pytest.approx(1 / 36)


def test_suggest_kl_weight_accepts_a_guide_whose_model_knows_n():
    guide = FakeGuide()
    guide.model = SimpleNamespace(num_target_elements=500)
    assert suggest_kl_weight(0.5, 0.1, model=guide) == pytest.approx(1 / 36)


def test_suggest_kl_weight_without_kl_or_guide_explains():
    with pytest.raises(ValueError, match="kl_divergence"):
        suggest_kl_weight(0.5, model=SimpleNamespace(num_target_elements=10))
    with pytest.raises(ValueError, match="kl_loss"):
        suggest_kl_weight(0.5)


def test_suggest_kl_weight_without_n_explains():
    with pytest.raises(ValueError, match="num_target_elements"):
        suggest_kl_weight(0.5, model=SimpleNamespace(guide=FakeGuide()))


def test_suggest_kl_weight_target_above_25_percent_warns(caplog):
    with caplog.at_level(logging.WARNING, logger="pyro_autoformer.tuning"):
        suggest_kl_weight(0.5, 0.4, kl_loss=2.0)
    assert any("underfits" in r.getMessage() for r in caplog.records)


# --- the tuner's bookkeeping --------------------------------------------------------


def test_update_returns_share_under_the_weight_in_force():
    tuner = KLTuner(initial_weight=0.01)
    weight, share = tuner.update_kl_weight(0, 0.9, 1.0, method="fixed")
    # 0.01 * 1 / (0.9 + 0.01)
    assert share == pytest.approx(0.01 / 0.91)
    assert weight == 0.01


def test_history_records_terms_of_each_update():
    tuner = KLTuner(initial_weight=0.02)
    tuner.update_kl_weight(3, 0.5, 2.0, method="adaptive", val_loss=0.7)
    record = tuner.history[-1]
    assert (record.epoch, record.step, record.method) == (3, None, "adaptive")
    assert record.weight == 0.02
    assert record.weighted_kl == pytest.approx(0.04)
    assert record.total_loss == pytest.approx(0.54)
    assert record.kl_share == pytest.approx(0.04 / 0.54)
    assert record.target == 0.1
    assert record.val_loss == 0.7


def test_tuner_writes_new_weight_to_model():
    model = SimpleNamespace(kl_weight=0.01)
    tuner = KLTuner(model)
    weight, _ = tuner.update_kl_weight(0, 0.9, 1.0)
    assert weight != 0.01
    assert model.kl_weight == weight == tuner.kl_weight


def test_tuner_starts_from_model_weight():
    assert KLTuner(SimpleNamespace(kl_weight=3e-4)).kl_weight == 3e-4


def test_tuner_adopts_weight_changed_by_hand_on_model():
    model = SimpleNamespace(kl_weight=0.01)
    tuner = KLTuner(model)
    tuner.update_kl_weight(0, 0.9, 1.0, method="fixed")
    model.kl_weight = 0.02
    _, share = tuner.update_kl_weight(1, 0.9, 1.0, method="fixed")
    assert tuner.history[-1].weight == 0.02
    assert share == pytest.approx(0.02 / 0.92)
    assert model.kl_weight == 0.02


def test_annealing_after_epoch_e_returns_the_value_for_epoch_e_plus_one():
    tuner = KLTuner(anneal_start_weight=1e-2, anneal_end_weight=1e-4)
    weight, _ = tuner.update_kl_weight(
        4, 1.0, 1.0, method="annealing", total_epochs=10, schedule_type="linear"
    )
    # linear at 5 of 10 epochs: 1e-2 - 0.0099 * 0.5
    assert weight == pytest.approx(0.00505)


def test_annealing_per_step_uses_fractional_epochs():
    tuner = KLTuner(
        anneal_start_weight=1e-2,
        anneal_end_weight=1e-4,
        total_epochs=10,
        steps_per_epoch=4,
    )
    # after step 7 the next step is the 8th: 2.0 epochs; 1e-2 - 0.0099 * 0.2
    weight, _ = tuner.update_kl_weight(1, 1.0, 1.0, method="annealing", step=7)
    assert weight == pytest.approx(0.00802)


def test_annealing_defaults_from_max_to_min_weight():
    tuner = KLTuner(min_weight=1e-4, max_weight=1e-2)
    weights = [
        tuner.update_kl_weight(e, 1.0, 1.0, "annealing", total_epochs=4)[0]
        for e in range(4)
    ]
    # linear from 1e-2 to 1e-4 at epochs 1..4
    assert weights == pytest.approx([0.007525, 0.00505, 0.002575, 1e-4])


def test_annealing_without_total_epochs_explains():
    with pytest.raises(ValueError, match="total_epochs"):
        KLTuner().update_kl_weight(0, 1.0, 1.0, method="annealing")


def test_fixed_method_keeps_the_weight():
    tuner = KLTuner(initial_weight=4e-3)
    weights = {
        tuner.update_kl_weight(e, 1.0 / (e + 1), 5.0, "fixed")[0] for e in range(5)
    }
    assert weights == {4e-3}


def test_unknown_method_is_refused():
    with pytest.raises(ValueError, match="method"):
        KLTuner().update_kl_weight(0, 1.0, 1.0, method="bayesopt")


def test_non_finite_loss_is_refused_naming_epoch_and_step():
    with pytest.raises(ValueError, match="epoch 3, step 12"):
        KLTuner().update_kl_weight(3, float("nan"), 1.0, step=12)
    with pytest.raises(ValueError, match="kl_loss is inf at epoch 2"):
        KLTuner().update_kl_weight(2, 1.0, float("inf"))


def test_negative_kl_is_refused():
    with pytest.raises(ValueError, match="negative"):
        KLTuner().update_kl_weight(0, 1.0, -0.5)


def test_target_can_be_changed_mid_training():
    tuner = KLTuner(initial_weight=0.01)
    tuner.update_kl_weight(0, 0.9, 1.0)
    tuner.target_kl_percentage = 0.05
    tuner.update_kl_weight(1, 0.9, 1.0)
    assert [r.target for r in tuner.history] == [0.1, 0.05]


def test_setting_target_above_25_percent_warns(caplog):
    tuner = KLTuner()
    with caplog.at_level(logging.WARNING, logger="pyro_autoformer.tuning"):
        tuner.target_kl_percentage = 0.3
    assert any("underfits" in r.getMessage() for r in caplog.records)


def test_staged_targets_change_the_target_by_epoch():
    tuner = KLTuner(staged_targets=[(0, 0.2), (2, 0.1), (4, 0.05)])
    for epoch in range(6):
        tuner.update_kl_weight(epoch, 1.0, 1.0)
    assert [r.target for r in tuner.history] == [0.2, 0.2, 0.1, 0.1, 0.05, 0.05]
    assert isinstance(tuner.staged_targets, StagedTargets)


def test_validation_feedback_scales_the_fixed_weight():
    tuner = KLTuner(initial_weight=0.01, validation_feedback=ValidationFeedback())
    weights = [
        tuner.update_kl_weight(e, 1.0, 1.0, "fixed", val_loss=v)[0]
        for e, v in enumerate([1.0, 1.2, 0.9])
    ]
    # baseline, worse (x1.1), better (x0.95)
    assert weights == pytest.approx([0.01, 0.011, 0.01045])


def test_validation_feedback_result_is_clamped():
    tuner = KLTuner(
        initial_weight=0.05,
        max_weight=0.05,
        validation_feedback=ValidationFeedback(increase=2.0),
    )
    for epoch, val in enumerate([1.0, 2.0, 3.0]):
        weight, _ = tuner.update_kl_weight(epoch, 1.0, 1.0, "fixed", val_loss=val)
    assert weight == 0.05


def test_initial_weight_outside_clamps_is_clamped():
    assert KLTuner(initial_weight=1.0, max_weight=0.05).kl_weight == 0.05


def test_plot_kl_tuning_history_writes_png(tmp_path):
    tuner = KLTuner()
    for epoch in range(5):
        tuner.update_kl_weight(epoch, 1.0 - 0.1 * epoch, 1.0)
    path = tuner.plot_kl_tuning_history(tmp_path / "kl_history.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
