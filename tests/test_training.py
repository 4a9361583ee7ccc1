"""Specification of :class:`pyro_autoformer.training.SVITrainer`: non-finite losses,
early stopping with the best epoch restored, and the KL tuner's records."""

import logging
import math

import numpy as np
import pandas as pd
import pytest
import torch

from pyro_autoformer.autoformer import Autoformer
from pyro_autoformer.bayesian import BayesianAutoformer
from pyro_autoformer.config import (
    GuideConfig,
    ModelSizes,
    RunConfig,
    TrainConfig,
    TuningConfig,
)
from pyro_autoformer.data import DataConfig, load_data
from pyro_autoformer.experiment import build_bayesian, train_run
from pyro_autoformer.training import NonFiniteLossError, SVITrainer

SIZES = ModelSizes(d_model=8, n_heads=2, e_layers=1, d_layers=1, d_ff=8, moving_avg=5)


@pytest.fixture
def csv(tmp_path):
    """300 hourly rows of three noisy daily cycles."""
    rng = np.random.default_rng(0)
    hours = np.arange(300)
    frame = pd.DataFrame(
        {
            "date": pd.date_range("2021-01-01", periods=300, freq="h"),
            "a": np.sin(2 * np.pi * hours / 24) + 0.1 * rng.normal(size=300),
            "b": np.cos(2 * np.pi * hours / 24) + 0.1 * rng.normal(size=300),
            "c": 5.0 + 0.01 * hours + 0.1 * rng.normal(size=300),
        }
    )
    path = tmp_path / "series.csv"
    frame.to_csv(path, index=False)
    return path


def run_config(csv, tuning=None, **train) -> RunConfig:
    values = dict(
        train_epochs=1,
        batch_size=8,
        max_steps_per_epoch=3,
        max_eval_windows=8,
        num_samples=3,
        patience=3,
        progress=False,
    )
    values.update(train)
    return RunConfig(
        data=DataConfig(data_path=str(csv), seq_len=16, label_len=8, pred_len=8),
        sizes=SIZES,
        tuning=tuning or TuningConfig(),
        train=TrainConfig(**values),
    )


def make_trainer(config, max_nonfinite_steps=10):
    data = load_data(config.data)
    model, guide = build_bayesian(config, data)
    trainer = SVITrainer(
        model,
        guide,
        data,
        config.tuning,
        config.train,
        max_nonfinite_steps=max_nonfinite_steps,
    )
    return trainer


def poison_training_steps(model, bad_steps):
    """Make the network's output NaN on the given training forward passes (counted
    from 0); validation passes (the model in eval mode) are left alone."""
    original = model.network_output
    calls = {"n": 0}

    def network_output(weights, *args, **kwargs):
        output = original(weights, *args, **kwargs)
        if model.training:
            step = calls["n"]
            calls["n"] += 1
            if bad_steps is all or step in bad_steps:
                return output * float("nan")
        return output

    model.network_output = network_output


def all_finite(*modules):
    return all(bool(torch.isfinite(p).all()) for m in modules for p in m.parameters())


# -------------------------------------------------------------- non-finite loss


def test_a_non_finite_step_is_skipped_with_a_warning_naming_epoch_and_step(csv, caplog):
    trainer = make_trainer(run_config(csv, train_epochs=2))
    poison_training_steps(trainer.model, {4})
    with caplog.at_level(logging.WARNING, logger="pyro_autoformer.training"):
        epochs = trainer.fit()
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warnings == ["non-finite loss at epoch 1, step 4: update skipped"]
    assert [e.skipped_steps for e in epochs] == [0, 1]
    assert all(math.isfinite(e.loss) for e in epochs)
    assert all_finite(trainer.model, trainer.guide)


def test_a_skipped_step_changes_no_parameter(csv):
    trainer = make_trainer(run_config(csv, max_steps_per_epoch=1))
    poison_training_steps(trainer.model, all)
    trainer.max_nonfinite_steps = 2
    before = [p.detach().clone() for p in trainer.guide.parameters()]
    with pytest.raises(NonFiniteLossError):
        trainer.fit()
    after = list(trainer.guide.parameters())
    assert all(torch.equal(a, b) for a, b in zip(before, after))


def test_too_many_non_finite_steps_in_a_row_stop_training_naming_the_step(csv, caplog):
    config = run_config(csv, train_epochs=2, max_steps_per_epoch=5)
    trainer = make_trainer(config, max_nonfinite_steps=4)
    poison_training_steps(trainer.model, {2, 3, 4, 5})
    with caplog.at_level(logging.WARNING, logger="pyro_autoformer.training"):
        with pytest.raises(
            NonFiniteLossError, match=r"4 steps in a row.*epoch 1, step 5"
        ):
            trainer.fit()
    steps = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert steps == [
        "non-finite loss at epoch 0, step 2: update skipped",
        "non-finite loss at epoch 0, step 3: update skipped",
        "non-finite loss at epoch 0, step 4: update skipped",
        "non-finite loss at epoch 1, step 5: update skipped",
    ]


def test_a_finite_step_resets_the_count_of_non_finite_steps(csv):
    config = run_config(csv, train_epochs=1, max_steps_per_epoch=7)
    trainer = make_trainer(config, max_nonfinite_steps=3)
    poison_training_steps(trainer.model, {0, 1, 3, 4, 6})  # never 3 in a row
    (epoch,) = trainer.fit()
    assert epoch.skipped_steps == 5


def test_a_diverging_optimiser_ends_in_non_finite_loss_error_not_a_crash(csv):
    # A huge learning rate and initial guide scale: the guide's locations and
    # scales leave the valid range within a step or two.
    base = run_config(csv, max_steps_per_epoch=12, learning_rate=1e8)
    config = RunConfig(
        data=base.data,
        sizes=base.sizes,
        tuning=base.tuning,
        train=base.train,
        guide=GuideConfig(init_scale=10.0),
    )
    trainer = make_trainer(config, max_nonfinite_steps=5)
    with pytest.raises(NonFiniteLossError, match=r"5 steps in a row.*epoch 0, step"):
        trainer.fit()


def test_a_diverged_run_writes_no_checkpoint_and_no_run_directory(
    csv, tmp_path, monkeypatch
):
    original = BayesianAutoformer.network_output

    def nan_output(self, weights, *args, **kwargs):
        return original(self, weights, *args, **kwargs) * float("nan")

    monkeypatch.setattr(BayesianAutoformer, "network_output", nan_output)
    output = tmp_path / "runs"
    config = run_config(csv, train_epochs=2, max_steps_per_epoch=6)
    with pytest.raises(NonFiniteLossError):
        train_run(config, output)
    assert list(output.rglob("*")) == []


def test_a_non_finite_validation_mse_stops_training_and_writes_nothing(
    csv, tmp_path, monkeypatch
):
    # Finite training losses can still leave the posterior unusable (scales of 0):
    # the validation MSE is then NaN and the run must not be published.
    monkeypatch.setattr(SVITrainer, "validate", lambda self: (math.nan, math.nan))
    output = tmp_path / "runs"
    config = run_config(csv, train_epochs=2, max_steps_per_epoch=3)
    with pytest.raises(NonFiniteLossError, match="validation MSE is nan after epoch 0"):
        train_run(config, output)
    assert list(output.rglob("*")) == []


def test_the_restored_epoch_keeps_the_kl_weight_it_was_trained_with(csv):
    config = run_config(csv, train_epochs=3, patience=3)
    trainer = make_trainer(config)
    scripted = iter([(1.0, 1.0), (0.5, 0.8), (0.7, 0.9)])
    trainer.validate = lambda: next(scripted)
    weights = []
    trainer.fit(on_epoch=lambda summary: weights.append(trainer.tuner.kl_weight))
    assert weights[1] != weights[2]
    assert trainer.model.kl_weight == weights[1]


# --------------------------------------------------------------- early stopping


def test_early_stopping_restores_the_best_epoch(csv):
    config = run_config(csv, train_epochs=6, patience=2)
    trainer = make_trainer(config)
    scripted = iter([(1.0, 1.0), (0.5, 0.8), (0.7, 0.9), (0.9, 1.1), (0.1, 0.1)])
    trainer.validate = lambda: next(scripted)
    snapshots = []
    epochs = trainer.fit(
        on_epoch=lambda summary: snapshots.append(trainer.guide.loc.detach().clone())
    )
    # Best at epoch 1; epochs 2 and 3 are worse, so patience 2 stops after epoch 3.
    assert [e.epoch for e in epochs] == [0, 1, 2, 3]
    assert [e.val_mse for e in epochs] == [1.0, 0.5, 0.7, 0.9]
    assert torch.equal(trainer.guide.loc, snapshots[1])
    assert not torch.equal(trainer.guide.loc, snapshots[3])


def test_training_runs_every_epoch_while_validation_improves(csv):
    config = run_config(csv, train_epochs=3, patience=1)
    trainer = make_trainer(config)
    scripted = iter([(0.9, 1.0), (0.8, 1.0), (0.7, 1.0)])
    trainer.validate = lambda: next(scripted)
    snapshots = []
    epochs = trainer.fit(
        on_epoch=lambda summary: snapshots.append(trainer.guide.loc.detach().clone())
    )
    assert len(epochs) == 3
    assert torch.equal(trainer.guide.loc, snapshots[-1])


# ----------------------------------------------------------------- KL tuner log


def test_per_step_updates_record_one_row_per_step(csv):
    config = run_config(
        csv,
        TuningConfig(kl_tuning_method="adaptive", update_every="step"),
        train_epochs=2,
    )
    trainer = make_trainer(config)
    epochs = trainer.fit()
    records = list(trainer.tuner.history)
    assert [r.epoch for r in records] == [0, 0, 0, 1, 1, 1]
    assert [r.step for r in records] == [0, 1, 2, 3, 4, 5]
    assert all(r.method == "adaptive" and r.target == 0.1 for r in records)
    # The weight recorded for a step is the one in force while it ran: the
    # initial sqrt(min * max) first, then each update's result.
    tuning = config.tuning
    assert records[0].weight == pytest.approx(
        math.sqrt(tuning.min_kl_weight * tuning.max_kl_weight)
    )
    for record in records:
        expected = (
            record.weight
            * record.kl_loss
            / (abs(record.data_loss) + record.weight * record.kl_loss)
        )
        assert record.kl_share == pytest.approx(expected, rel=1e-12)
    # An epoch's data term is the mean of its steps' data terms.
    for epoch in epochs:
        steps = [r.data_loss for r in records if r.epoch == epoch.epoch]
        assert epoch.data_term == pytest.approx(sum(steps) / len(steps), rel=1e-12)


def test_per_epoch_updates_record_one_row_per_epoch_with_validation_loss(csv):
    config = run_config(
        csv,
        TuningConfig(kl_tuning_method="adaptive", update_every="epoch"),
        train_epochs=2,
    )
    trainer = make_trainer(config)
    epochs = trainer.fit()
    records = list(trainer.tuner.history)
    assert [r.epoch for r in records] == [0, 1]
    assert [r.step for r in records] == [None, None]
    for record, epoch in zip(records, epochs):
        assert record.data_loss == pytest.approx(epoch.data_term, rel=1e-12)
        assert record.kl_loss == pytest.approx(epoch.kl_term, rel=1e-12)
        assert record.val_loss == pytest.approx(epoch.val_nll, rel=1e-12)
    assert records[1].weight == pytest.approx(epochs[0].kl_weight, rel=1e-12)


def test_the_elbo_uses_the_weight_the_tuner_chose(csv):
    config = run_config(
        csv, TuningConfig(kl_tuning_method="fixed", kl_weight=0.37), train_epochs=1
    )
    trainer = make_trainer(config)
    trainer.fit()
    assert trainer.elbo.last.beta == pytest.approx(0.37)
    assert [r.weight for r in trainer.tuner.history] == pytest.approx([0.37] * 3)
    assert trainer.model.kl_weight == pytest.approx(0.37)


# ------------------------------------------------------------ pretraining


def test_a_pretrained_network_initialises_the_model_and_the_guide(csv):
    config = run_config(csv)
    data = load_data(config.data)
    network = Autoformer(config.autoformer_config(data.enc_in, data.c_out))
    with torch.no_grad():
        for parameter in network.parameters():
            parameter.normal_()
    state = network.state_dict()

    model, guide = build_bayesian(config, data, pretrained=state)

    medians = guide.median()
    assert set(medians) == set(model.site_names)
    for name, value in medians.items():
        torch.testing.assert_close(value, state[name])
    for name, value in model.net.state_dict().items():
        torch.testing.assert_close(value, state[name])
