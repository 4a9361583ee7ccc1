"""Specifications of diagnose: each troubleshooting case on a history showing it."""

import numpy as np
import pytest

from pyro_autoformer.tuning.diagnosis import DiagnosisConfig, Finding, diagnose
from pyro_autoformer.tuning.history import KLHistory, KLRecord

EPOCHS = 60


def build(data, kl, weight, val=None, target=0.1, method="adaptive"):
    """A history from per-epoch arrays; the share is worked out here, by hand."""
    records = []
    for e in range(len(data)):
        weighted = weight[e] * kl[e]
        records.append(
            KLRecord(
                epoch=e,
                step=None,
                weight=float(weight[e]),
                data_loss=float(data[e]),
                kl_loss=float(kl[e]),
                weighted_kl=float(weighted),
                kl_share=float(weighted / (abs(data[e]) + weighted)),
                target=target,
                total_loss=float(data[e] + weighted),
                val_loss=None if val is None else float(val[e]),
                method=method,
            )
        )
    return KLHistory(records)


def weights_for_share(share, data, kl):
    """Weights giving the wanted share: w = s/(1-s) * |D| / K."""
    return share / (1 - share) * np.abs(data) / kl


def healthy_terms(seed=0):
    rng = np.random.default_rng(seed)
    epochs = np.arange(EPOCHS)
    data = (0.3 + 0.7 * np.exp(-epochs / 15)) * (
        1 + 0.005 * rng.standard_normal(EPOCHS)
    )
    kl = np.exp(-epochs / 100)
    share = 0.1 + 0.002 * rng.standard_normal(EPOCHS)
    val = (
        1.1
        * (0.3 + 0.7 * np.exp(-epochs / 15))
        * (1 + 0.003 * rng.standard_normal(EPOCHS))
    )
    return data, kl, share, val


def names(findings):
    return {f.name for f in findings}


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_healthy_history_flags_nothing(seed):
    data, kl, share, val = healthy_terms(seed)
    history = build(data, kl, weights_for_share(share, data, kl), val=val)
    assert diagnose(history) == []


def test_empty_history_flags_nothing():
    assert diagnose(KLHistory()) == []


def test_kl_growing_multiplicatively_is_exploding():
    data, kl, share, _ = healthy_terms()
    weight = weights_for_share(share, data, kl)
    kl = kl.copy()
    kl[-10:] *= 1.5 ** np.arange(1, 11)  # 1.5x per update: 38x over the window
    findings = diagnose(build(data, kl, weight))
    assert "kl_exploding" in names(findings)
    found = next(f for f in findings if f.name == "kl_exploding")
    # 1.5x per update on top of the healthy decay exp(-1/100) per epoch
    assert found.evidence["growth_per_update"] == pytest.approx(1.5 * np.exp(-0.01))


def test_kl_leaving_the_prior_and_levelling_off_is_not_exploding():
    # from 0.01 to ~1 in ten updates, but each rise smaller than the last
    epochs = np.arange(10)
    kl = 1 - 0.99 * np.exp(-epochs / 2)
    data = np.linspace(1.0, 0.5, 10)
    weight = weights_for_share(np.full(10, 0.1), data, kl)
    assert "kl_exploding" not in names(diagnose(build(data, kl, weight)))


def test_share_below_three_percent_is_too_low():
    data, kl, _, _ = healthy_terms()
    weight = weights_for_share(np.full(EPOCHS, 0.01), data, kl)
    findings = diagnose(build(data, kl, weight, target=0.1))
    assert names(findings) == {"kl_share_low"}


def test_low_share_asked_for_by_a_low_target_is_not_flagged():
    data, kl, _, _ = healthy_terms()
    weight = weights_for_share(np.full(EPOCHS, 0.01), data, kl)
    assert diagnose(build(data, kl, weight, target=0.02)) == []


def test_share_jumping_back_and_forth_is_erratic():
    data, kl, _, _ = healthy_terms()
    share = np.where(np.arange(EPOCHS) % 2 == 0, 0.05, 0.18)
    findings = diagnose(build(data, kl, weights_for_share(share, data, kl)))
    assert "kl_share_erratic" in names(findings)


def test_share_converging_in_large_steps_is_not_erratic():
    data, kl, _, _ = healthy_terms()
    share = 0.1 + 0.6 * 0.6 ** np.arange(EPOCHS)  # 70% falling steadily to 10%
    history = build(data[:12], kl[:12], weights_for_share(share, data, kl)[:12])
    assert "kl_share_erratic" not in names(diagnose(history))


def test_flat_data_term_under_heavy_kl_is_underfitting():
    rng = np.random.default_rng(0)
    data = 1.0 + 0.005 * rng.standard_normal(EPOCHS)
    kl = np.full(EPOCHS, 2.0)
    weight = weights_for_share(np.full(EPOCHS, 0.4), data, kl)
    findings = diagnose(build(data, kl, weight, target=0.4))
    assert "underfitting" in names(findings)
    found = next(f for f in findings if f.name == "underfitting")
    assert any("target" in r for r in found.remedies)


def test_validation_rising_while_training_falls_is_overfitting():
    data, kl, share, _ = healthy_terms()
    epochs = np.arange(EPOCHS)
    # best at epoch 20, then 20% worse by the end
    val = np.where(epochs <= 20, 1.0 - 0.01 * epochs, 0.8 + 0.004 * (epochs - 20))
    findings = diagnose(build(data, kl, weights_for_share(share, data, kl), val=val))
    assert names(findings) == {"overfitting"}
    assert findings[0].evidence["best_epoch"] == 20


def test_overfitting_needs_validation_losses():
    data, kl, share, _ = healthy_terms()
    assert diagnose(build(data, kl, weights_for_share(share, data, kl))) == []


def test_non_positive_data_term_is_reported_with_abs_convention():
    data = np.linspace(0.5, -0.5, EPOCHS)  # a Gaussian NLL crossing zero
    kl = np.full(EPOCHS, 1.0)
    weight = np.full(EPOCHS, 0.01)
    findings = diagnose(build(data, kl, weight))
    assert "data_term_non_positive" in names(findings)
    found = next(f for f in findings if f.name == "data_term_non_positive")
    assert "|D|" in found.message


def test_kl_swamping_a_flat_data_term_is_recognised_with_its_remedies():
    rng = np.random.default_rng(0)
    data = 1.0 + 0.002 * rng.standard_normal(EPOCHS)
    kl = np.full(EPOCHS, 50.0)
    weight = weights_for_share(np.full(EPOCHS, 0.99), data, kl)
    findings = diagnose(build(data, kl, weight))
    assert "kl_swamps_data" in names(findings)
    remedies = " ".join(
        next(f for f in findings if f.name == "kl_swamps_data").remedies
    )
    for remedy in ("prior_scale='fan_in'", "init_scale", "deterministic", "weight"):
        assert remedy in remedies


def test_every_finding_has_message_evidence_and_remedies():
    data = np.linspace(0.5, -0.5, EPOCHS)
    history = build(data, np.full(EPOCHS, 1.0), np.full(EPOCHS, 0.01))
    for finding in diagnose(history):
        assert isinstance(finding, Finding)
        assert finding.message and finding.evidence and finding.remedies


def test_diagnose_accepts_a_frame():
    data = np.linspace(0.5, -0.5, EPOCHS)
    history = build(data, np.full(EPOCHS, 1.0), np.full(EPOCHS, 0.01))
    assert names(diagnose(history.to_frame())) == names(diagnose(history))


@pytest.mark.parametrize(
    "kwargs, field",
    [
        ({"window": 2}, "window"),
        ({"explode_growth": 1.0}, "explode_growth"),
        ({"low_share": 0.0}, "low_share"),
        ({"erratic_sign_changes": 0.0}, "erratic_sign_changes"),
        ({"overfit_rise": -1.0}, "overfit_rise"),
    ],
)
def test_config_refuses_bad_thresholds(kwargs, field):
    with pytest.raises(ValueError, match=field):
        DiagnosisConfig(**kwargs)
