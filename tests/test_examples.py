"""Every script in ``examples/`` runs in its small mode and writes what it promises.

Each script runs once, as a user would run it (a fresh Python process), and the
tests check the files it writes: they exist, CSVs have the documented columns and
finite numbers, PNGs are PNGs, and the numbers agree with what they claim to be.
"""

import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from pyro_autoformer.checkpoint import load_checkpoint
from pyro_autoformer.config import TuningConfig

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"
ETTH1 = ROOT / "pyro_autoformer" / "datasets" / "ETTh1.csv"
COLUMNS = ["HUFL", "HULL", "MUFL", "MULL", "LUFL", "LULL", "OT"]
ETT_TRAIN_ROWS = 12 * 30 * 24
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
HISTORY_COLUMNS = [
    "epoch",
    "step",
    "weight",
    "data_loss",
    "kl_loss",
    "weighted_kl",
    "kl_share",
    "target",
    "total_loss",
    "val_loss",
    "method",
]
TINY = (
    "--d_model 8 --n_heads 2 --d_ff 8 --e_layers 1 --d_layers 1 --seq_len 24 "
    "--label_len 12 --pred_len 12 --moving_avg 5 --train_epochs 1 "
    "--max_steps_per_epoch 3 --max_eval_windows 16 --num_samples 4 --no_progress"
).split()
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def run_example(script, *args, cwd, timeout=300, check=True):
    result = subprocess.run(
        [sys.executable, str(EXAMPLES / script), *map(str, args)],
        capture_output=True,
        text=True,
        env=ENV,
        cwd=cwd,
        timeout=timeout,
    )
    if check:
        assert result.returncode == 0, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    return result


def is_png(path: Path) -> bool:
    return path.is_file() and path.read_bytes()[:8] == PNG_SIGNATURE


def assert_history_csv(path: Path, rows: int):
    history = pd.read_csv(path)
    assert list(history.columns) == HISTORY_COLUMNS
    assert len(history) == rows
    numbers = history[["weight", "data_loss", "kl_loss", "kl_share", "total_loss"]]
    assert np.isfinite(numbers.to_numpy()).all()
    assert ((history.kl_share >= 0) & (history.kl_share <= 1)).all()
    np.testing.assert_allclose(
        history.total_loss,
        history.data_loss + history.weight * history.kl_loss,
        rtol=1e-9,
    )
    return history


# --------------------------------------------------------------- kl_tuning_demo


DEMO_RUNS = (
    "adaptive",
    "annealing_linear",
    "annealing_cosine",
    "annealing_exponential",
    "annealing_cyclical",
    "fixed",
)


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    result = run_example(
        "kl_tuning_demo.py", "--epochs", 6, "--output_dir", out, cwd=out
    )
    return out, result


@pytest.mark.parametrize("name", DEMO_RUNS)
def test_kl_tuning_demo_writes_a_history_and_plot_per_method(demo, name):
    out, _ = demo
    history = assert_history_csv(out / f"{name}.csv", rows=6)
    assert list(history.epoch) == list(range(6))
    assert set(history.method) == {name.split("_")[0]}
    assert json.loads((out / f"{name}.json").read_text())
    assert is_png(out / f"{name}.png")


def test_kl_tuning_demo_fixed_method_keeps_its_weight(demo):
    out, _ = demo
    history = pd.read_csv(out / "fixed.csv")
    assert (history.weight == history.weight.iloc[0]).all()


# ----------------------------------------------------------- practical_kl_tuning


@pytest.fixture(scope="module")
def practical(tmp_path_factory):
    out = tmp_path_factory.mktemp("practical")
    result = run_example(
        "practical_kl_tuning.py", "--small", "--output_dir", out, cwd=out
    )
    return out, result


def test_practical_writes_one_adaptive_update_per_epoch(practical):
    out, result = practical
    history = assert_history_csv(out / "kl_history.csv", rows=2)
    assert list(history.epoch) == [0, 1]
    assert history.step.isna().all()  # per-epoch updates
    assert set(history.method) == {"adaptive"}
    assert (history.target == 0.1).all()
    assert is_png(out / "kl_history.png")
    assert re.findall(r"^Epoch (\d): KL weight=", result.stdout, re.M) == ["0", "1"]


def test_practical_starts_from_the_suggested_weight(practical):
    out, result = practical
    found = re.search(
        r"data term ([\d.]+), KL term ([\d.e+-]+); suggested KL weight ([\d.e+-]+)",
        result.stdout,
    )
    data, kl, suggested = (float(v) for v in found.groups())
    # t / (1 - t) * |D| / K with t = 0.1, from the printed (rounded) terms
    assert suggested == pytest.approx(0.1 / 0.9 * data / kl, rel=1e-2)
    tuning = TuningConfig()
    clamped = min(max(suggested, tuning.min_kl_weight), tuning.max_kl_weight)
    first = pd.read_csv(out / "kl_history.csv").weight.iloc[0]
    assert first == pytest.approx(clamped, rel=1e-2)


def test_practical_epoch_table_matches_the_history(practical):
    out, _ = practical
    epochs = pd.read_csv(out / "epochs.csv")
    history = pd.read_csv(out / "kl_history.csv")
    assert list(epochs.columns) == [
        "epoch",
        "loss",
        "data_loss",
        "kl_loss",
        "kl_share",
        "next_kl_weight",
        "val_mse",
    ]
    assert np.isfinite(epochs.drop(columns="epoch").to_numpy()).all()
    np.testing.assert_allclose(epochs.data_loss, history.data_loss, rtol=1e-9)
    np.testing.assert_allclose(epochs.kl_share, history.kl_share, rtol=1e-9)
    # The weight chosen after epoch 0 is the one in force during epoch 1.
    assert history.weight.iloc[1] == pytest.approx(epochs.next_kl_weight.iloc[0])


# ----------------------------------------------- train_bayesian_with_kl_tuning


def last_line(result) -> Path:
    return Path(result.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def adaptive_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("train")
    result = run_example(
        "train_bayesian_with_kl_tuning.py",
        "--model",
        "BayesianEnhancedAutoformer",
        "--kl_tuning_method",
        "adaptive",
        "--target_kl_percentage",
        "0.1",
        *TINY,
        "--output_dir",
        out,
        cwd=out,
    )
    return last_line(result)


def test_training_script_basic_command_writes_a_run(adaptive_run):
    config = json.loads((adaptive_run / "config.json").read_text())
    assert config["model"] == "BayesianEnhancedAutoformer"
    assert config["tuning"]["kl_tuning_method"] == "adaptive"
    assert config["tuning"]["target_kl_percentage"] == 0.1
    for name in ("checkpoint.pt", "metrics.json", "kl_history.csv"):
        assert (adaptive_run / name).is_file()
    assert is_png(adaptive_run / "kl_history.png")
    history = assert_history_csv(adaptive_run / "kl_history.csv", rows=3)
    assert set(history.method) == {"adaptive"}


def test_training_script_custom_annealing_command(tmp_path):
    result = run_example(
        "train_bayesian_with_kl_tuning.py",
        "--kl_tuning_method",
        "annealing",
        "--annealing_schedule",
        "cosine",
        "--max_kl_weight",
        "0.05",
        *TINY,
        "--output_dir",
        tmp_path,
        cwd=tmp_path,
    )
    run = last_line(result)
    tuning = json.loads((run / "config.json").read_text())["tuning"]
    assert tuning["annealing_schedule"] == "cosine"
    assert tuning["max_kl_weight"] == 0.05
    history = assert_history_csv(run / "kl_history.csv", rows=3)
    assert set(history.method) == {"annealing"}
    # Cosine from 0.05 to min_kl_weight over one epoch of three steps: the weight
    # in force at step k is the schedule's value at k/3 of the epoch.
    s, e = 0.05, tuning["min_kl_weight"]
    expected = [e + (s - e) * (1 + math.cos(math.pi * k / 3)) / 2 for k in range(3)]
    np.testing.assert_allclose(history.weight, expected, rtol=1e-9)


@pytest.mark.slow
def test_training_script_des_ablation_runs_the_ablation(tmp_path):
    result = run_example(
        "train_bayesian_with_kl_tuning.py",
        "--des",
        "ablation",
        "--model",
        "BayesianEnhancedAutoformer",
        *TINY,
        "--output_dir",
        tmp_path,
        cwd=tmp_path,
    )
    study = last_line(result)
    table = pd.read_csv(study / "results.csv")
    assert len(table) == 7
    assert {"deterministic", "fixed", "adaptive"} <= set(table.run)
    assert np.isfinite(table[["mse", "crps"]].to_numpy()).all()
    assert is_png(study / "comparison.png")
    assert (study / "results.md").is_file()


def test_training_script_refuses_an_unknown_method_in_one_line(tmp_path):
    result = run_example(
        "train_bayesian_with_kl_tuning.py",
        "--kl_tuning_method",
        "foo",
        "--output_dir",
        str(tmp_path / "runs"),
        cwd=tmp_path,
        timeout=120,
        check=False,
    )
    assert result.returncode != 0
    assert len(result.stderr.strip().splitlines()) == 1
    assert "'foo'" in result.stderr
    assert not (tmp_path / "runs").exists()


# ----------------------------------------------- posterior_predictive_analysis


@pytest.fixture(scope="module")
def analysis(adaptive_run, tmp_path_factory):
    out = tmp_path_factory.mktemp("analysis")
    result = run_example(
        "posterior_predictive_analysis.py",
        adaptive_run,
        "--num_windows",
        3,
        "--num_samples",
        8,
        "--output_dir",
        out,
        cwd=out,
    )
    return out, result


def test_analysis_writes_its_tables_and_figures(analysis):
    out, result = analysis
    for name in (
        "variance_split.csv",
        "quantiles.csv",
        "posterior_summary.csv",
        "posterior_summary_by_site.csv",
    ):
        assert (out / name).is_file(), name
    assert is_png(out / "variance_split.png")
    assert is_png(out / "forecast_fan.png")
    assert "epistemic" in result.stdout


def test_analysis_variances_add_up_and_are_finite(analysis):
    out, _ = analysis
    split = pd.read_csv(out / "variance_split.csv")
    assert len(split) == 3 * 12 * 7  # windows x pred_len x columns
    values = split[["epistemic_variance", "aleatoric_variance", "total_variance"]]
    assert np.isfinite(values.to_numpy()).all()
    assert (values.to_numpy() >= 0).all()
    np.testing.assert_allclose(
        split.total_variance,
        split.epistemic_variance + split.aleatoric_variance,
        rtol=1e-12,
    )
    np.testing.assert_allclose(
        split.epistemic_share,
        split.epistemic_variance / split.total_variance,
        rtol=1e-9,
    )


def test_analysis_aleatoric_variance_is_in_data_units(analysis, adaptive_run):
    out, _ = analysis
    split = pd.read_csv(out / "variance_split.csv")
    # Gaussian noise of scale s on the standardised scale has variance
    # (s * std)^2 in data units, std from the training rows (population).
    raw = pd.read_csv(ETTH1)[COLUMNS].iloc[:ETT_TRAIN_ROWS]
    std = raw.std(ddof=0)
    run = load_checkpoint(adaptive_run / "checkpoint.pt")
    with torch.no_grad():
        scale = run.model.likelihood.scale.double().numpy()
    expected = dict(zip(COLUMNS, (scale * std.to_numpy()) ** 2))
    np.testing.assert_allclose(
        split.aleatoric_variance, split.column.map(expected), rtol=1e-5
    )


def test_analysis_quantiles_are_ordered_in_data_units(analysis):
    out, _ = analysis
    table = pd.read_csv(out / "quantiles.csv", parse_dates=["date"])
    levels = ["q0.05", "q0.1", "q0.25", "q0.5", "q0.75", "q0.9", "q0.95"]
    assert list(table.columns) == ["window", "date", "column", "truth", *levels]
    values = table[levels].to_numpy()
    assert np.isfinite(values).all()
    assert (np.diff(values, axis=1) >= 0).all()
    # The truth column is the data itself, at its own date.
    raw = pd.read_csv(ETTH1, parse_dates=["date"]).set_index("date")
    expected = [raw.loc[d, c] for d, c in zip(table.date, table.column)]
    np.testing.assert_allclose(table.truth, expected, rtol=1e-6, atol=1e-5)


def test_analysis_summarises_every_layer_group(analysis):
    out, _ = analysis
    summary = pd.read_csv(out / "posterior_summary.csv")
    assert set(summary.group) == {"embedding", "encoder", "decoder", "projection"}
    assert np.isfinite(summary[["scale_mean", "kl"]].to_numpy()).all()
    by_site = pd.read_csv(out / "posterior_summary_by_site.csv")
    assert summary.numel.sum() == by_site.numel.sum()
    assert summary.kl.sum() == pytest.approx(by_site.kl.sum(), rel=1e-6)


def test_analysis_refuses_a_directory_that_is_not_a_run(tmp_path):
    result = run_example(
        "posterior_predictive_analysis.py",
        str(tmp_path),
        "--output_dir",
        str(tmp_path / "out"),
        cwd=tmp_path,
        timeout=120,
        check=False,
    )
    assert result.returncode != 0
    assert len(result.stderr.strip().splitlines()) == 1
    assert "not a run directory" in result.stderr
    assert not (tmp_path / "out").exists()


# ------------------------------------------------------- prior_std_experiment


def test_prior_std_experiment_trains_one_run_per_value(tmp_path):
    result = run_example(
        "prior_std_experiment.py",
        "--small",
        "--prior_std",
        "0.01,1.0",
        "--output_dir",
        tmp_path,
        cwd=tmp_path,
    )
    study = last_line(result)
    table = pd.read_csv(study / "results.csv")
    assert list(table.prior_std) == [0.01, 1.0]
    scores = table[["mse", "crps", "coverage_90", "final_kl"]].to_numpy()
    assert np.isfinite(scores).all()
    for value, name in zip((0.01, 1.0), table.run_dir):
        config = json.loads((study / name / "config.json").read_text())
        assert config["bayes"]["prior_std"] == value
    assert is_png(study / "comparison.png")
    assert "prior_std" in result.stdout.splitlines()[0]  # the printed table
