"""Specification of :mod:`pyro_autoformer.checkpoint`: a faithful round trip, the same
forecasts in a fresh process, and refusal of files that are not safe checkpoints."""

import dataclasses
import os
import subprocess
import sys
import textwrap

import numpy as np
import pyro
import pytest
import torch

from pyro_autoformer.autoformer import Autoformer
from pyro_autoformer.bayesian import BayesianAutoformer
from pyro_autoformer.checkpoint import (
    FORMAT,
    VERSION,
    CheckpointError,
    load_checkpoint,
    save_checkpoint,
)
from pyro_autoformer.config import ModelSizes, RunConfig, TuningConfig
from pyro_autoformer.data import DataConfig, StandardScaler
from pyro_autoformer.guides import MeanFieldGuide
from pyro_autoformer.predictive import PosteriorPredictive

COLUMNS = ["HUFL", "HULL", "MUFL", "MULL", "LUFL", "LULL", "OT"]
SUBPROCESS_ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def tiny_config(model: str = "BayesianAutoformer") -> RunConfig:
    return RunConfig(
        data=DataConfig(seq_len=24, label_len=12, pred_len=12),
        sizes=ModelSizes(
            d_model=8, n_heads=2, e_layers=1, d_layers=1, d_ff=8, moving_avg=5
        ),
        tuning=TuningConfig(kl_tuning_method="fixed", kl_weight=0.25),
        model=model,
        des="checkpoint-test",
    )


def fitted_scaler() -> StandardScaler:
    rng = np.random.default_rng(0)
    values = rng.normal(loc=np.arange(7) * 3.0, scale=np.arange(1, 8), size=(50, 7))
    return StandardScaler().fit(values, column_names=COLUMNS)


def trained_like_bayesian(config: RunConfig):
    """A model and guide whose parameters are not their initial values."""
    network = config.autoformer_config(len(COLUMNS), len(COLUMNS))
    model = BayesianAutoformer(network, config.bayes, dataset_size=123, kl_weight=0.25)
    guide = MeanFieldGuide(model, init_scale=config.guide.init_scale)
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for parameter in [*model.parameters(), *guide.parameters()]:
            parameter.add_(0.05 * torch.randn(parameter.shape, generator=generator))
    return model, guide


def window_inputs(batch: int = 2):
    generator = torch.Generator().manual_seed(3)
    shapes = [(batch, 24, 7), (batch, 24, 4), (batch, 24, 7), (batch, 24, 4)]
    return tuple(torch.randn(shape, generator=generator) for shape in shapes)


def save(path, config, model, guide):
    return save_checkpoint(
        path, config, fitted_scaler(), COLUMNS, COLUMNS, model, guide, dataset_size=123
    )


@pytest.fixture
def checkpoint(tmp_path):
    config = tiny_config()
    model, guide = trained_like_bayesian(config)
    path = save(tmp_path / "checkpoint.pt", config, model, guide)
    return path, config, model, guide


def assert_same_state(a: dict, b: dict):
    assert set(a) == set(b)
    for name in a:
        assert torch.equal(a[name].cpu(), b[name].cpu()), name


# ----------------------------------------------------------------- round trip


def test_round_trip_restores_configuration_scaler_and_columns(checkpoint):
    path, config, _, _ = checkpoint
    run = load_checkpoint(path)
    assert run.config == config
    scaler = fitted_scaler()
    np.testing.assert_array_equal(run.scaler.mean_, scaler.mean_)
    np.testing.assert_array_equal(run.scaler.scale_, scaler.scale_)
    assert run.columns == COLUMNS and run.target_columns == COLUMNS


def test_round_trip_restores_every_model_and_guide_tensor(checkpoint):
    path, _, model, guide = checkpoint
    run = load_checkpoint(path)
    assert_same_state(run.model.state_dict(), model.state_dict())
    assert_same_state(run.guide.state_dict(), guide.state_dict())
    assert run.model.kl_weight == 0.25
    assert run.model.dataset_size == 123
    assert not run.model.training


def test_round_trip_of_a_deterministic_run_has_no_guide(tmp_path):
    config = tiny_config(model="Autoformer")
    net = Autoformer(config.autoformer_config(7, 7))
    path = save(tmp_path / "checkpoint.pt", config, net, None)
    run = load_checkpoint(path)
    assert run.guide is None
    assert isinstance(run.model, Autoformer)
    assert_same_state(run.model.state_dict(), net.state_dict())


FRESH_PROCESS = textwrap.dedent(
    """
    import sys
    import pyro, torch
    from pyro_autoformer.checkpoint import load_checkpoint
    from pyro_autoformer.predictive import PosteriorPredictive

    torch.set_num_threads(1)
    checkpoint, inputs_path, output = sys.argv[1:]
    run = load_checkpoint(checkpoint)
    inputs = torch.load(inputs_path, weights_only=True)
    pyro.set_rng_seed(11)
    draws = PosteriorPredictive(run.model, run.guide, num_samples=3).sample(*inputs)
    torch.save({"samples": draws.samples, "locations": draws.locations}, output)
    """
)


def test_a_fresh_process_forecasts_exactly_as_the_saving_one(checkpoint, tmp_path):
    path, _, model, guide = checkpoint
    inputs = window_inputs()
    torch.save(list(inputs), tmp_path / "inputs.pt")
    pyro.set_rng_seed(11)
    here = PosteriorPredictive(model, guide, num_samples=3).sample(*inputs)

    script = tmp_path / "fresh.py"
    script.write_text(FRESH_PROCESS)
    output = tmp_path / "there.pt"
    result = subprocess.run(
        [
            sys.executable,
            str(script),
            str(path),
            str(tmp_path / "inputs.pt"),
            str(output),
        ],
        capture_output=True,
        text=True,
        env=SUBPROCESS_ENV,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    there = torch.load(output, weights_only=True)
    assert there["samples"].shape == (3, 2, 12, 7)
    assert torch.equal(there["locations"], here.locations)
    assert torch.equal(there["samples"], here.samples)


# ------------------------------------------------------------------- refusals


class Payload:
    """An arbitrary object that has no business in a checkpoint."""

    def __init__(self):
        self.value = 42


class RunsACommand:
    """Unpickling this runs a shell command that creates a marker file."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def valid_payload(path):
    return torch.load(path, weights_only=True)


def test_a_checkpoint_holding_a_command_is_refused_without_running_it(
    checkpoint, tmp_path
):
    path, _, _, _ = checkpoint
    marker = tmp_path / "executed"
    payload = valid_payload(path)
    payload["extra"] = RunsACommand(marker)
    evil = tmp_path / "evil.pt"
    torch.save(payload, evil)
    with pytest.raises(CheckpointError, match="only tensors and plain values"):
        load_checkpoint(evil)
    assert not marker.exists()


def test_a_checkpoint_holding_a_custom_object_is_refused(checkpoint, tmp_path):
    path, _, _, _ = checkpoint
    payload = valid_payload(path)
    payload["config"] = Payload()
    odd = tmp_path / "odd.pt"
    torch.save(payload, odd)
    with pytest.raises(CheckpointError, match="not a readable checkpoint"):
        load_checkpoint(odd)


def test_a_nan_parameter_is_refused_and_the_old_checkpoint_kept(checkpoint):
    path, config, model, guide = checkpoint
    before = path.read_bytes()
    listing = sorted(os.listdir(path.parent))
    with torch.no_grad():
        guide.loc[5] = float("nan")
    with pytest.raises(CheckpointError, match="loc"):
        save(path, config, model, guide)
    assert path.read_bytes() == before
    assert sorted(os.listdir(path.parent)) == listing  # no temporary file left


def test_an_infinite_model_parameter_is_refused_and_nothing_written(tmp_path):
    config = tiny_config()
    model, guide = trained_like_bayesian(config)
    with torch.no_grad():
        next(model.parameters())[0] = float("inf")
    with pytest.raises(CheckpointError, match="NaN or inf"):
        save(tmp_path / "checkpoint.pt", config, model, guide)
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize(
    "content, message",
    [
        (b"date,HUFL\n2016-07-01,1.0\n", "not a readable checkpoint"),
        (b"", "not a readable checkpoint"),
    ],
    ids=["csv-text", "empty"],
)
def test_files_that_are_not_checkpoints_are_refused(tmp_path, content, message):
    path = tmp_path / "checkpoint.pt"
    path.write_bytes(content)
    with pytest.raises(CheckpointError, match=message):
        load_checkpoint(path)


def test_a_torch_file_of_something_else_is_refused(tmp_path):
    path = tmp_path / "weights.pt"
    torch.save({"weight": torch.ones(3)}, path)
    with pytest.raises(CheckpointError, match="not a pyro-autoformer checkpoint"):
        load_checkpoint(path)


def test_a_truncated_checkpoint_is_refused(checkpoint, tmp_path):
    path, _, _, _ = checkpoint
    cut = tmp_path / "cut.pt"
    cut.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(CheckpointError, match="not a readable checkpoint"):
        load_checkpoint(cut)


def test_a_checkpoint_of_another_version_is_refused(checkpoint, tmp_path):
    path, _, _, _ = checkpoint
    payload = valid_payload(path)
    assert payload["format"] == FORMAT
    payload["version"] = VERSION + 1
    newer = tmp_path / "newer.pt"
    torch.save(payload, newer)
    with pytest.raises(CheckpointError, match=f"version {VERSION + 1}"):
        load_checkpoint(newer)


def test_a_missing_file_is_refused(tmp_path):
    with pytest.raises(CheckpointError, match="no checkpoint at"):
        load_checkpoint(tmp_path / "absent.pt")


def test_saving_replaces_an_older_checkpoint_atomically(checkpoint):
    path, config, model, guide = checkpoint
    with torch.no_grad():
        guide.loc.add_(1.0)
    save(path, config, model, guide)
    assert torch.equal(load_checkpoint(path).guide.loc, guide.loc)
    assert sorted(os.listdir(path.parent)) == ["checkpoint.pt"]


def test_configuration_changes_survive_the_round_trip(tmp_path):
    config = dataclasses.replace(
        tiny_config(), bayes=dataclasses.replace(tiny_config().bayes, prior_std=0.03)
    )
    model, guide = trained_like_bayesian(config)
    run = load_checkpoint(save(tmp_path / "c.pt", config, model, guide))
    assert run.config.bayes.prior_std == 0.03
    assert torch.allclose(run.guide.prior_scale, torch.full_like(guide.loc, 0.03))
