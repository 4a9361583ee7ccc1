"""Specification of the ``pyro-autoformer`` command line: train, evaluate, forecast,
ablation, sweep, and how each refuses bad input."""

import contextlib
import io
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pyro
import pytest
import torch

from pyro_autoformer import cli
from pyro_autoformer.checkpoint import load_checkpoint
from pyro_autoformer.config import RunConfig
from pyro_autoformer.data import forecast_inputs, read_csv
from pyro_autoformer.predictive import PosteriorPredictive

ETTH1 = (
    Path(__file__).resolve().parents[1] / "pyro_autoformer" / "datasets" / "ETTh1.csv"
)
COLUMNS = ["HUFL", "HULL", "MUFL", "MULL", "LUFL", "LULL", "OT"]
ETT_TRAIN_ROWS = 12 * 30 * 24  # the ETT benchmark's first border, hourly files
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
LEVELS = (0.05, 0.1, 0.25, 0.5, 0.75, 0.9, 0.95)
TINY = (
    "--d_model 8 --n_heads 2 --d_ff 8 --e_layers 1 --d_layers 1 --seq_len 24 "
    "--label_len 12 --pred_len 12 --moving_avg 5 --train_epochs 1 "
    "--max_steps_per_epoch 3 --max_eval_windows 16 --num_samples 4 --noise_samples 1"
    " --no_progress"
).split()
PRED_LEN = 12
SUBPROCESS_ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny networks run fastest, and two test workers do not fight, on one thread."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def run_main(argv):
    """``cli.main(argv)`` in this process: ``(status, stdout, stderr)``."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        status = cli.main(list(argv))
    return status, out.getvalue(), err.getvalue()


def run_command(argv, timeout=120):
    """``pyro-autoformer argv`` in a fresh process."""
    return subprocess.run(
        [sys.executable, "-m", "pyro_autoformer.cli", *argv],
        capture_output=True,
        text=True,
        env=SUBPROCESS_ENV,
        timeout=timeout,
    )


def is_png(path: Path) -> bool:
    return path.read_bytes()[:8] == PNG_SIGNATURE


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One tiny training run: ``(run_dir, stdout)``."""
    output = tmp_path_factory.mktemp("runs")
    status, stdout, _ = run_main(["train", *TINY, "--output_dir", str(output)])
    assert status == 0
    run_dir = Path(stdout.strip().splitlines()[-1])
    return run_dir, stdout


def test_train_prints_the_run_directory_as_its_last_line(trained, tmp_path):
    run_dir, stdout = trained
    assert run_dir.is_dir()
    assert run_dir.name.startswith("run_")
    assert len(stdout.strip().splitlines()) >= 2  # a metrics summary comes first


def test_train_writes_every_artifact_of_a_run(trained):
    run_dir, _ = trained
    for name in (
        "config.json",
        "checkpoint.pt",
        "kl_history.csv",
        "metrics.json",
        "metrics_by_horizon.csv",
        "epochs.csv",
        "posterior_summary.csv",
    ):
        assert (run_dir / name).is_file(), name
    for name in (
        "kl_history.png",
        "forecast_fan.png",
        "reliability.png",
        "metrics_by_horizon.png",
    ):
        assert is_png(run_dir / name), name
    # Nothing half-written is left next to the run.
    assert [p.name for p in run_dir.parent.iterdir()] == [run_dir.name]


def test_train_config_json_holds_the_flags_and_reloads(trained):
    run_dir, _ = trained
    config = RunConfig.from_dict(json.loads((run_dir / "config.json").read_text()))
    assert (config.sizes.d_model, config.sizes.n_heads, config.sizes.d_ff) == (8, 2, 8)
    assert (config.data.seq_len, config.data.label_len, config.data.pred_len) == (
        24,
        12,
        12,
    )
    assert config.tuning.kl_tuning_method == "adaptive"
    assert config.tuning.target_kl_percentage == 0.1
    assert config.train.num_samples == 4
    assert config.model == "BayesianEnhancedAutoformer"


def test_train_metrics_json_is_finite_with_probabilistic_scores(trained):
    run_dir, _ = trained
    metrics = json.loads((run_dir / "metrics.json").read_text())
    for key in ("mse", "mae", "crps", "coverage_90", "nll", "final_kl"):
        assert math.isfinite(metrics[key]), key
    assert 0.0 <= metrics["coverage_90"] <= 1.0
    assert metrics["crps"] > 0.0
    assert metrics["num_samples"] == 4


def test_train_reports_beta_and_its_per_element_equivalent(trained):
    run_dir, _ = trained
    metrics = json.loads((run_dir / "metrics.json").read_text())
    # ETTh1 train rows [0, 8640) with seq_len 24 and pred_len 12 hold
    # 8640 - 24 - 12 + 1 = 8605 windows of 12 steps x 7 channels.
    assert metrics["num_target_elements"] == 8605 * 12 * 7
    per_element = metrics["final_kl_weight"] / (8605 * 12 * 7)
    assert metrics["final_kl_weight_per_element"] == pytest.approx(per_element)


def test_train_kl_history_has_one_row_per_step_with_consistent_share(trained):
    run_dir, _ = trained
    history = pd.read_csv(run_dir / "kl_history.csv")
    for column in ("epoch", "step", "weight", "data_loss", "kl_loss", "kl_share"):
        assert column in history.columns
    assert list(history["step"]) == [0, 1, 2]  # update_every=step, 3 steps
    expected = (
        history.weight
        * history.kl_loss
        / (history.data_loss.abs() + history.weight * history.kl_loss)
    )
    np.testing.assert_allclose(history.kl_share, expected, rtol=1e-9)
    assert np.isfinite(history[["weight", "data_loss", "kl_loss"]].to_numpy()).all()


def test_evaluate_prints_the_metrics_of_metrics_json(trained):
    run_dir, _ = trained
    status, stdout, _ = run_main(["evaluate", str(run_dir)])
    assert status == 0
    printed = json.loads(stdout)
    saved = json.loads((run_dir / "metrics.json").read_text())
    assert printed  # the same seed gives the same draws, hence equal numbers
    for key, value in printed.items():
        assert saved[key] == value, key


def test_forecast_writes_future_dates_in_data_units(trained, tmp_path):
    run_dir, _ = trained
    output = tmp_path / "forecast.csv"
    status, stdout, _ = run_main(["forecast", str(run_dir), "--output", str(output)])
    assert status == 0
    assert stdout.strip().splitlines()[-1] == str(output)
    table = pd.read_csv(output, parse_dates=["date"])
    quantile_columns = [f"q{level:g}" for level in LEVELS]
    assert list(table.columns) == ["date", "column", "mean", *quantile_columns]

    # pred_len hourly dates after the last row, each with every target column.
    raw = pd.read_csv(ETTH1, parse_dates=["date"])
    future = pd.date_range(
        raw["date"].iloc[-1] + pd.Timedelta(hours=1), periods=PRED_LEN, freq="h"
    )
    assert list(table["date"].drop_duplicates()) == list(future)
    assert list(table["column"]) == COLUMNS * PRED_LEN

    # The run's draws, mapped to data units with the training rows' statistics
    # (population standard deviation), computed here with pandas.
    train_rows = raw[COLUMNS].iloc[:ETT_TRAIN_ROWS]
    mean, std = train_rows.mean().to_numpy(), train_rows.std(ddof=0).to_numpy()
    run = load_checkpoint(run_dir / "checkpoint.pt")
    frame = read_csv(ETTH1, run.config.data)
    inputs, _ = forecast_inputs(frame, run.config.data, run.scaler, run.columns)
    pyro.set_rng_seed(run.config.train.seed)
    draws = PosteriorPredictive(run.model, run.guide, 4).sample(*inputs).samples
    draws = draws[:, 0].double().numpy() * std + mean  # (samples, pred_len, 7)
    expected_q = np.quantile(draws, LEVELS, axis=0)  # (levels, pred_len, 7)
    got_q = table[quantile_columns].to_numpy().reshape(PRED_LEN, 7, len(LEVELS))
    np.testing.assert_allclose(got_q, expected_q.transpose(1, 2, 0), rtol=1e-5)
    np.testing.assert_allclose(
        table["mean"].to_numpy().reshape(PRED_LEN, 7), draws.mean(0), rtol=1e-5
    )


def test_forecast_quantiles_never_cross(trained, tmp_path):
    run_dir, _ = trained
    output = tmp_path / "forecast.csv"
    assert run_main(["forecast", str(run_dir), "--output", str(output)])[0] == 0
    values = pd.read_csv(output)[[f"q{level:g}" for level in LEVELS]].to_numpy()
    assert np.isfinite(values).all()
    assert (np.diff(values, axis=1) >= 0).all()


@pytest.mark.slow
def test_ablation_compares_the_seven_runs(tmp_path):
    status, stdout, _ = run_main(["ablation", *TINY, "--output_dir", str(tmp_path)])
    assert status == 0
    study = Path(stdout.strip().splitlines()[-1])
    table = pd.read_csv(study / "results.csv")
    assert list(table["run"]) == [
        "deterministic",
        "fixed",
        "annealing-linear",
        "annealing-cosine",
        "annealing-exponential",
        "annealing-cyclical",
        "adaptive",
    ]
    assert np.isfinite(table[["mse", "mae", "crps"]].to_numpy()).all()
    assert table["final_kl"].iloc[0] != table["final_kl"].iloc[0]  # NaN: no KL
    assert np.isfinite(table["final_kl"].iloc[1:]).all()
    for name in table["run_dir"]:
        assert (study / name / "checkpoint.pt").is_file()
    markdown = (study / "results.md").read_text().strip().splitlines()
    assert len(markdown) == 2 + 7
    assert is_png(study / "comparison.png")
    assert [p.name for p in tmp_path.iterdir()] == [study.name]


def test_sweep_trains_one_run_per_prior_std(tmp_path):
    argv = ["sweep", *TINY, "--prior_std", "0.01,1.0", "--output_dir", str(tmp_path)]
    status, stdout, _ = run_main(argv)
    assert status == 0
    study = Path(stdout.strip().splitlines()[-1])
    table = pd.read_csv(study / "results.csv")
    assert list(table["prior_std"]) == [0.01, 1.0]
    for value, name in zip((0.01, 1.0), table["run_dir"]):
        config = json.loads((study / name / "config.json").read_text())
        assert config["bayes"]["prior_std"] == value
    # A narrower prior costs more KL for the same network.
    assert table["final_kl"].iloc[0] > table["final_kl"].iloc[1]
    assert (study / "results.md").is_file()
    assert is_png(study / "comparison.png")


# ----------------------------------------------------------------- bad input


def assert_clean_refusal(result, *fragments):
    """Non-zero exit, one line on stderr naming the problem, no traceback."""
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    for fragment in fragments:
        assert fragment in lines[0]


@pytest.mark.parametrize(
    "flags, fragments",
    [
        (["--features", "X"], ["--features", "'X'"]),
        (["--kl_tuning_method", "foo"], ["--kl_tuning_method", "'foo'"]),
        (["--label_len", "48"], ["label_len=48", "seq_len=24"]),
        (["--data_path", "does/not/exist.csv"], ["does/not/exist.csv"]),
        (["--device", "cuda:0"], ["'cuda:0'", "no CUDA device"]),
    ],
    ids=["features", "kl_tuning_method", "label_len", "missing-data-file", "cuda"],
)
def test_train_refuses_bad_input_and_writes_nothing(tmp_path, flags, fragments):
    output = tmp_path / "runs"
    result = run_command(["train", *TINY, *flags, "--output_dir", str(output)])
    assert_clean_refusal(result, *fragments)
    assert not output.exists() or not any(output.iterdir())


def test_evaluate_refuses_a_directory_that_is_not_a_run(tmp_path):
    (tmp_path / "notes.txt").write_text("not a run\n")
    result = run_command(["evaluate", str(tmp_path)])
    assert_clean_refusal(result, "not a run directory")
    assert [p.name for p in tmp_path.iterdir()] == ["notes.txt"]


def test_forecast_refuses_a_csv_without_the_trained_columns(trained, tmp_path):
    run_dir, _ = trained
    dates = pd.date_range("2020-01-01", periods=60, freq="h")
    rng = np.random.default_rng(0)
    frame = pd.DataFrame(
        {"date": dates, "A": rng.normal(size=60), "B": 1.0 + dates.hour}
    )
    csv = tmp_path / "other.csv"
    frame.to_csv(csv, index=False)
    output = tmp_path / "out"
    output.mkdir()
    before = sorted(p.name for p in run_dir.iterdir())
    result = run_command(
        [
            "forecast",
            str(run_dir),
            "--data_path",
            str(csv),
            "--output",
            str(output / "forecast.csv"),
        ]
    )
    assert_clean_refusal(result, "HUFL")
    assert not any(output.iterdir())
    assert sorted(p.name for p in run_dir.iterdir()) == before
