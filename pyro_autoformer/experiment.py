"""The main job: train a run, evaluate it, forecast with it.

:func:`train_run` takes a :class:`~pyro_autoformer.config.RunConfig` from data to a run
directory holding everything a user looks at afterwards::

    runs/<des>_<YYYYmmdd-HHMMSS>/
        config.json            the configuration, re-loadable
        checkpoint.pt          model, guide, scaler (see pyro_autoformer.checkpoint)
        metrics.json           test metrics on the normalised scale
        metrics_by_horizon.csv MSE, CRPS and coverage per forecast step
        epochs.csv             one row per training epoch
        kl_history.csv/.png    every KL-weight update, and its figure
        diagnosis.json         what the tuning history shows, with remedies
        posterior_summary.csv  per-layer posterior scale and KL
        forecast_fan.png, reliability.png, metrics_by_horizon.png

The directory is assembled under a hidden temporary name and renamed only when
everything is written, so a failed or interrupted run leaves no directory that looks
finished (and the temporary one is removed on failure).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Union

import numpy as np
import pandas as pd
import pyro
import torch

from .autoformer import Autoformer
from .bayesian import BayesianAutoformer
from .checkpoint import LoadedRun, load_checkpoint, save_checkpoint
from .config import RunConfig
from .data import (
    ForecastData,
    forecast_inputs,
    load_data,
    prepare_batch,
    read_configured_csv,
)
from .files import atomic_open, publish_directory
from .guides import MeanFieldGuide
from .metrics import ForecastMetrics, sample_quantiles
from .plots import plot_forecast_fan, plot_metrics_by_horizon, plot_reliability
from .predictive import PosteriorPredictive
from .training import SVITrainer, make_loader, train_deterministic
from .tuning import per_element_weight_from_beta
from .tuning.diagnosis import diagnose
from .tuning.plotting import plot_history

__all__ = ["RunError", "evaluate_run", "forecast_run", "train_run"]

logger = logging.getLogger(__name__)

PathLike = Union[str, os.PathLike]

#: Quantile levels written by forecasts and drawn in fan charts.
FORECAST_LEVELS = (0.05, 0.1, 0.25, 0.5, 0.75, 0.9, 0.95)
RUN_MARKER = "checkpoint.pt"


class RunError(ValueError):
    """A run directory or forecast input that cannot be used, with the reason."""


def _seed_everything(seed: int) -> None:
    pyro.set_rng_seed(seed)  # seeds python's random, numpy and torch


def _write_json(path: Path, values) -> None:
    path.write_text(json.dumps(values, indent=2, default=_json_default) + "\n")


def _json_default(value):
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    raise TypeError(f"cannot write {type(value).__name__} as JSON")


def build_bayesian(config: RunConfig, data: ForecastData, pretrained=None):
    """The model and guide of a run, for this data.

    :param dict pretrained: a trained deterministic Autoformer's ``state_dict``:
        its ordinary parameters are loaded into the model and its weights become
        the guide's initial locations.
    """
    network = config.autoformer_config(data.enc_in, data.c_out)
    model = BayesianAutoformer(network, config.bayes, dataset_size=len(data.train))
    init_loc = None
    if pretrained is not None:
        model.load_deterministic_state(pretrained)
        _, init_loc = model.split_state_dict(pretrained)
    guide = MeanFieldGuide(model, init_scale=config.guide.init_scale, init_loc=init_loc)
    return model, guide


def _pretrain(config: RunConfig, data: ForecastData):
    """Train the deterministic network for ``pretrain_epochs``; return its state."""
    network = Autoformer(config.autoformer_config(data.enc_in, data.c_out))
    pretrain = replace(config.train, train_epochs=config.guide.pretrain_epochs)
    train_deterministic(network, data, pretrain)
    return network.state_dict()


def evaluate(
    model,
    guide,
    data: ForecastData,
    num_samples: int,
    max_windows: int | None = None,
    batch_size: int = 32,
    noise_samples: int = 1,
) -> ForecastMetrics:
    """Forecast metrics on the test windows (normalised scale).

    A Bayesian model is scored on ``num_samples`` posterior predictive draws per
    window; a deterministic one on its point forecast (one draw: CRPS = MAE, no
    interval coverage).
    """
    cfg = data.config
    device = next(model.parameters()).device

    def prepare(batch):
        inputs, target = prepare_batch(batch, cfg.label_len, cfg.pred_len, data.c_out)
        return tuple(t.to(device) for t in inputs), target.to(device)

    if guide is None:
        metrics = ForecastMetrics()
        loader = make_loader(data.test, batch_size, False, limit=max_windows)
        model.eval()
        with torch.no_grad():
            for batch in loader:
                inputs, target = prepare(batch)
                metrics.update(model(*inputs).unsqueeze(0), target)
        return metrics
    predictive = PosteriorPredictive(
        model, guide, num_samples=num_samples, noise_samples=noise_samples
    )
    size = min(batch_size, predictive.batch_size_for(cfg.pred_len, data.c_out))
    loader = make_loader(data.test, size, False, limit=max_windows)
    return predictive.evaluate(loader, prepare)


def _fan_chart(model, guide, data: ForecastData, predictive, path: Path) -> None:
    """Fan chart of the last output channel for four evenly spaced test windows."""
    cfg = data.config
    test = data.test
    picks = np.linspace(0, len(test) - 1, 4).astype(int)
    batch = torch.utils.data.default_collate([test[int(i)] for i in picks])
    inputs, target = prepare_batch(batch, cfg.label_len, cfg.pred_len, data.c_out)
    channel = data.c_out - 1
    if guide is None:
        with torch.no_grad():
            draws = model.eval()(*inputs).unsqueeze(0)
    else:
        draws = predictive.sample(*inputs).samples
    draws = data.inverse_transform_targets(draws.double())[..., channel]
    quantiles = sample_quantiles(draws, FORECAST_LEVELS).numpy()
    truth = data.inverse_transform_targets(target.double())[..., channel].numpy()
    context = inputs[0][..., data.target_column_indices[channel]]
    history = data.scaler.inverse_transform(
        context.double().unsqueeze(-1), columns=[data.target_column_indices[channel]]
    )[..., 0].numpy()
    history_dates = np.stack(
        [test.dates[i : i + cfg.seq_len].to_numpy() for i in picks]
    )
    dates = np.stack([test.target_dates(int(i)).to_numpy() for i in picks])
    plot_forecast_fan(
        history,
        history_dates,
        {level: quantiles[k] for k, level in enumerate(FORECAST_LEVELS)},
        truth,
        dates,
        path,
        title=f"Test forecasts of {data.target_columns[channel]}",
        ylabel=data.target_columns[channel],
    )


def _new_run_dir(output_dir: PathLike, des: str) -> tuple[Path, Path]:
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in des) or "run"
    final = output_dir / f"{safe}_{stamp}"
    suffix = 1
    while final.exists():
        final = output_dir / f"{safe}_{stamp}-{suffix}"
        suffix += 1
    staging = Path(tempfile.mkdtemp(dir=output_dir, prefix=f".{final.name}."))
    return staging, final


def train_run(config: RunConfig, output_dir: PathLike = "runs") -> Path:
    """Train, evaluate and write one run directory; return its path.

    The data is read and validated before anything is written.
    """
    data = load_data(config.data)
    _seed_everything(config.train.seed)
    staging, final = _new_run_dir(output_dir, config.des)
    try:
        _train_into(config, data, staging)
        publish_directory(staging, final)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    logger.info("run written to %s", final)
    return final


def _train_into(config: RunConfig, data: ForecastData, directory: Path) -> None:
    train = config.train
    started = time.perf_counter()
    _write_json(directory / "config.json", config.to_dict())

    if config.bayesian:
        pretrained = None
        if config.guide.pretrain_epochs > 0:
            pretrained = _pretrain(config, data)
        model, guide = build_bayesian(config, data, pretrained)
        trainer = SVITrainer(model, guide, data, config.tuning, train)
        epochs = [e.as_dict() for e in trainer.fit()]
        tuner = trainer.tuner
        tuner.history.to_csv(directory / "kl_history.csv")
        tuner.history.to_json(directory / "kl_history.json")
        plot_history(tuner.history, directory / "kl_history.png")
        findings = [
            {
                "name": f.name,
                "message": f.message,
                "evidence": f.evidence,
                "remedies": f.remedies,
            }
            for f in diagnose(tuner.history)
        ]
        _write_json(directory / "diagnosis.json", findings)
        guide.posterior_summary(by="group").to_csv(directory / "posterior_summary.csv")
    else:
        model = Autoformer(config.autoformer_config(data.enc_in, data.c_out))
        guide = None
        epochs = train_deterministic(model, data, train)
    pd.DataFrame(epochs).to_csv(directory / "epochs.csv", index=False)
    train_seconds = time.perf_counter() - started

    save_checkpoint(
        directory / RUN_MARKER,
        config,
        data.scaler,
        data.columns,
        data.target_columns,
        model,
        guide,
        dataset_size=len(data.train),
        extra={"epochs": epochs},
    )

    _seed_everything(train.seed)
    metrics = evaluate(
        model,
        guide,
        data,
        train.num_samples,
        train.max_eval_windows,
        train.batch_size,
        train.noise_samples,
    )
    values = metrics.compute()
    values.update(
        train_seconds=train_seconds,
        eval_seconds=time.perf_counter() - started - train_seconds,
        epochs_trained=len(epochs),
        num_samples=train.num_samples * train.noise_samples if guide else 1,
    )
    if guide is not None:
        # beta (per-element ELBO) and the same weight on a summed KL, beta / N.
        values["final_kl_weight"] = float(model.kl_weight)
        values["num_target_elements"] = model.num_target_elements
        values["final_kl_weight_per_element"] = per_element_weight_from_beta(
            model.kl_weight, model.num_target_elements
        )
        values["final_kl"] = float(guide.kl_divergence().detach())
    _write_json(directory / "metrics.json", values)
    by_horizon = metrics.compute_by_horizon()
    by_horizon.to_csv(directory / "metrics_by_horizon.csv", index=False)
    plot_metrics_by_horizon(by_horizon, directory / "metrics_by_horizon.png")
    plot_reliability(metrics.reliability_table(), directory / "reliability.png")
    _fan_chart(
        model,
        guide,
        data,
        PosteriorPredictive(model, guide, train.num_samples, train.noise_samples)
        if guide is not None
        else None,
        directory / "forecast_fan.png",
    )


def load_run(run_dir: PathLike, device: str = "cpu") -> LoadedRun:
    """Load a run directory's checkpoint, refusing a directory that is not a run."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise RunError(f"run directory {run_dir} does not exist")
    if not (run_dir / RUN_MARKER).is_file():
        raise RunError(
            f"{run_dir} is not a run directory (it has no {RUN_MARKER}); pass a "
            "directory written by 'pyro-autoformer train'"
        )
    return load_checkpoint(run_dir / RUN_MARKER, device=device)


def evaluate_run(
    run_dir: PathLike, num_samples: int | None = None, device: str = "cpu"
) -> dict:
    """Recompute a run's test metrics from its checkpoint and return them."""
    run = load_run(run_dir, device)
    data = load_data(run.config.data)
    _check_columns(run, data.columns, run.config.data.data_path or "the packaged data")
    _seed_everything(run.config.train.seed)
    samples = num_samples or run.config.train.num_samples
    metrics = evaluate(
        run.model,
        run.guide,
        data,
        samples,
        run.config.train.max_eval_windows,
        run.config.train.batch_size,
        run.config.train.noise_samples,
    )
    return metrics.compute()


def _check_columns(run: LoadedRun, columns, source) -> None:
    if list(columns) != list(run.columns):
        raise RunError(
            f"the columns of {source} ({', '.join(map(str, columns))}) do not match "
            f"the trained model's ({', '.join(run.columns)})"
        )


def forecast_run(
    run_dir: PathLike,
    data_path: PathLike | None = None,
    output: PathLike | None = None,
    num_samples: int | None = None,
    device: str = "cpu",
) -> Path:
    """Forecast ``pred_len`` steps past the end of a CSV with a trained run.

    Writes a CSV in the data's units with one row per future date and output column:
    ``date, column, mean`` and one column per level of :data:`FORECAST_LEVELS`.

    :param data_path: the CSV to forecast from (default: the run's training data).
    :param output: where to write (default ``<run_dir>/forecast.csv``).
    :return: the path written.
    """
    run = load_run(run_dir, device)
    data_config = run.config.data
    if data_path is not None:
        data_config = replace(data_config, data_path=os.fspath(data_path))
    source = data_config.data_path
    if source is not None and not Path(source).is_file():
        raise RunError(f"data file {source} does not exist")
    frame, _ = read_configured_csv(data_config)
    available = list(frame.columns)
    missing = [c for c in run.columns if c not in available]
    if missing:
        raise RunError(
            f"{source or 'the data'} lacks the trained model's columns {missing}; "
            f"it has {available}"
        )
    if len(frame) < data_config.seq_len:
        raise RunError(
            f"{source or 'the data'} has {len(frame)} rows; a forecast needs the last "
            f"seq_len = {data_config.seq_len}"
        )
    inputs, future = forecast_inputs(frame, data_config, run.scaler, run.columns)
    inputs = tuple(t.to(device) for t in inputs)
    _seed_everything(run.config.train.seed)
    if run.guide is None:
        with torch.no_grad():
            draws = run.model(*inputs).unsqueeze(0)
    else:
        samples = num_samples or run.config.train.num_samples
        draws = (
            PosteriorPredictive(
                run.model, run.guide, samples, run.config.train.noise_samples
            )
            .sample(*inputs)
            .samples
        )
    indices = [run.columns.index(c) for c in run.target_columns]
    draws = run.scaler.inverse_transform(draws[:, 0].double().cpu(), columns=indices)
    quantiles = sample_quantiles(draws, FORECAST_LEVELS)
    rows = []
    for step, date in enumerate(future):
        for k, column in enumerate(run.target_columns):
            row = {
                "date": date,
                "column": column,
                "mean": float(draws[:, step, k].mean()),
            }
            for j, level in enumerate(FORECAST_LEVELS):
                row[f"q{level:g}"] = float(quantiles[j, step, k])
            rows.append(row)
    output = Path(output) if output is not None else Path(run_dir) / "forecast.csv"
    if not output.parent.is_dir():
        raise RunError(f"cannot write {output}: {output.parent} is not a directory")
    with atomic_open(output, "w") as stream:
        pd.DataFrame(rows).to_csv(stream, index=False)
    return output
