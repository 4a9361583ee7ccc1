"""The run configuration: validation, JSON round trip, presets, ablation variants."""

import dataclasses
import json

import pytest

from pyro_autoformer.bayesian import BayesianConfig
from pyro_autoformer.config import (
    PRESETS,
    GuideConfig,
    RunConfig,
    TrainConfig,
    TuningConfig,
)
from pyro_autoformer.data import DataConfig
from pyro_autoformer.studies import ablation_variants


def test_run_config_survives_a_json_round_trip():
    config = RunConfig(
        data=DataConfig(pred_len=720, features="MS"),
        sizes=PRESETS["paper"],
        bayes=BayesianConfig(likelihood="quantile", quantiles=(0.05, 0.5, 0.95)),
        guide=GuideConfig(init_scale=1e-4, pretrain_epochs=2),
        tuning=TuningConfig(
            kl_tuning_method="annealing", annealing_schedule="cyclical"
        ),
        train=TrainConfig(train_epochs=7, max_eval_windows=10),
        model="BayesianAutoformer",
        des="roundtrip",
    )
    text = json.dumps(config.to_dict())
    assert RunConfig.from_dict(json.loads(text)) == config


def test_paper_preset_has_the_reference_sizes():
    paper = PRESETS["paper"]
    sizes = (paper.d_model, paper.n_heads, paper.e_layers, paper.d_layers, paper.d_ff)
    assert sizes == (512, 8, 2, 1, 2048)


def test_autoformer_config_takes_lengths_from_the_data_section():
    config = RunConfig(data=DataConfig(seq_len=48, label_len=24, pred_len=336))
    network = config.autoformer_config(enc_in=7, c_out=1)
    assert (network.seq_len, network.label_len, network.pred_len) == (48, 24, 336)
    assert (network.enc_in, network.dec_in, network.c_out) == (7, 7, 1)


@pytest.mark.parametrize(
    "build, field",
    [
        (lambda: TuningConfig(kl_tuning_method="magic"), "kl_tuning_method"),
        (lambda: TuningConfig(target_kl_percentage=10), "target_kl_percentage"),
        (lambda: TuningConfig(min_kl_weight=1.0, max_kl_weight=0.5), "min_kl_weight"),
        (lambda: TuningConfig(annealing_schedule="sawtooth"), "annealing_schedule"),
        (lambda: TrainConfig(batch_size=0), "batch_size"),
        (lambda: TrainConfig(device="tpu"), "device"),
        (lambda: GuideConfig(init_scale=0.0), "init_scale"),
        (lambda: RunConfig(model="Transformer"), "model"),
    ],
)
def test_invalid_values_are_refused_naming_the_field(build, field):
    with pytest.raises(ValueError, match=field):
        build()


def test_unknown_fields_in_a_saved_config_are_refused():
    values = RunConfig().to_dict()
    values["train"]["epochs"] = 3
    with pytest.raises(ValueError, match="epochs"):
        RunConfig.from_dict(values)


def test_fixed_method_starts_at_the_exact_elbo_and_others_at_the_geometric_mean():
    assert TuningConfig(kl_tuning_method="fixed").initial_weight() == 1.0
    adaptive = TuningConfig(min_kl_weight=1e-4, max_kl_weight=1.0)
    assert adaptive.initial_weight() == pytest.approx(1e-2)
    assert TuningConfig(kl_weight=50.0, max_kl_weight=10.0).initial_weight() == 10.0


def test_ablation_has_deterministic_fixed_four_schedules_and_adaptive():
    variants = ablation_variants(RunConfig(train=TrainConfig(seed=7)))
    assert list(variants) == [
        "deterministic",
        "fixed",
        "annealing-linear",
        "annealing-cosine",
        "annealing-exponential",
        "annealing-cyclical",
        "adaptive",
    ]
    assert variants["deterministic"].model == "Autoformer"
    methods = [v.tuning.kl_tuning_method for v in variants.values()][1:]
    assert methods == ["fixed"] + ["annealing"] * 4 + ["adaptive"]
    schedules = [v.tuning.annealing_schedule for v in list(variants.values())[2:6]]
    assert schedules == ["linear", "cosine", "exponential", "cyclical"]
    # Same data, seed and budget everywhere.
    assert {v.train for v in variants.values()} == {TrainConfig(seed=7)}
    assert len({dataclasses.astuple(v.data) for v in variants.values()}) == 1
