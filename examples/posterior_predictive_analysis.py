"""Look inside a trained run's posterior predictive: epistemic vs aleatoric spread.

For a few evenly spaced test windows this script draws posterior predictive
forecasts from a run written by ``pyro-autoformer train`` and splits the predictive
variance of every forecast step into

- the **epistemic** part, the variance over weight draws of each draw's mean (what
  more data would shrink), and
- the **aleatoric** part, the mean over weight draws of the likelihood's variance
  (observation noise),

both in the data's units (the normalised variance times the column's scale squared).
It also writes the forecast quantiles in the data's units and the guide's per-layer
posterior summary (mean |location|, mean posterior scale, prior scale, KL).

Written to ``--output_dir``: ``variance_split.csv``, ``quantiles.csv``,
``posterior_summary.csv`` (per layer group), ``posterior_summary_by_site.csv``,
``variance_split.png`` and ``forecast_fan.png``.

Usage::

    pyro-autoformer train --output_dir runs        # prints the run directory
    python examples/posterior_predictive_analysis.py runs/run_20250101-120000 \\
        --num_windows 4 --num_samples 100 --output_dir runs/analysis
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pyro
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from pyro_autoformer.data import load_data, prepare_batch
from pyro_autoformer.experiment import RunError, load_run
from pyro_autoformer.metrics import sample_quantiles
from pyro_autoformer.plots import MAX_FAN_WINDOWS, plot_forecast_fan
from pyro_autoformer.predictive import PosteriorPredictive

LEVELS = (0.05, 0.1, 0.25, 0.5, 0.75, 0.9, 0.95)


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path, help="a directory written by train")
    parser.add_argument("--output_dir", type=Path, help="default: RUN_DIR/analysis")
    parser.add_argument("--num_windows", type=int, default=4)
    parser.add_argument("--num_samples", type=int, help="default: the run's")
    parser.add_argument("--seed", type=int, help="default: the run's")
    args = parser.parse_args(argv)
    if not 1 <= args.num_windows <= MAX_FAN_WINDOWS:
        parser.error(
            f"--num_windows must be between 1 and {MAX_FAN_WINDOWS}, got "
            f"{args.num_windows}"
        )
    if args.num_samples is not None and args.num_samples < 2:
        parser.error(f"--num_samples must be >= 2, got {args.num_samples}")
    return args


def variance_table(draws, scale, data, picks) -> pd.DataFrame:
    """One row per window, forecast step and output column, in data units."""
    cfg = data.config
    scale2 = torch.as_tensor(scale, dtype=torch.float64) ** 2
    epistemic = draws.epistemic_variance.double() * scale2
    aleatoric = draws.aleatoric_variance.double() * scale2
    rows = []
    for w, window in enumerate(picks):
        dates = data.test.target_dates(int(window))
        for step in range(cfg.pred_len):
            for k, column in enumerate(data.target_columns):
                e, a = float(epistemic[w, step, k]), float(aleatoric[w, step, k])
                rows.append(
                    {
                        "window": int(window),
                        "date": dates[step],
                        "step": step + 1,
                        "column": column,
                        "epistemic_variance": e,
                        "aleatoric_variance": a,
                        "total_variance": e + a,
                        "epistemic_share": e / (e + a) if e + a > 0 else 0.0,
                    }
                )
    return pd.DataFrame(rows)


def quantile_table(quantiles, truth, data, picks) -> pd.DataFrame:
    """Forecast quantiles and the observed value, in data units."""
    rows = []
    for w, window in enumerate(picks):
        dates = data.test.target_dates(int(window))
        for step in range(data.config.pred_len):
            for k, column in enumerate(data.target_columns):
                row = {
                    "window": int(window),
                    "date": dates[step],
                    "column": column,
                    "truth": float(truth[w, step, k]),
                }
                for j, level in enumerate(LEVELS):
                    row[f"q{level:g}"] = float(quantiles[j, w, step, k])
                rows.append(row)
    return pd.DataFrame(rows)


def plot_variance_split(table: pd.DataFrame, path: Path) -> Path:
    """Epistemic and aleatoric variance by forecast step, one panel per column."""
    by_step = table.groupby(["column", "step"], sort=False)[
        ["epistemic_variance", "aleatoric_variance"]
    ].mean()
    columns = list(dict.fromkeys(table["column"]))
    rows, cols = -(-len(columns) // 4), min(len(columns), 4)
    figure = Figure(figsize=(4.0 * cols, 3.2 * rows), layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.subplots(rows, cols, squeeze=False)
    for ax, column in zip(axes.flat, columns):
        part = by_step.loc[column]
        steps = part.index.to_numpy()
        ax.stackplot(
            steps,
            part["aleatoric_variance"].to_numpy(),
            part["epistemic_variance"].to_numpy(),
            labels=("aleatoric", "epistemic"),
            alpha=0.8,
        )
        ax.set_title(column)
        ax.set_xlabel("forecast step")
        ax.set_ylabel("variance (data units²)")
    for ax in list(axes.flat)[len(columns) :]:
        ax.set_visible(False)
    axes.flat[0].legend(loc="upper left", fontsize="small")
    figure.suptitle("Predictive variance: aleatoric and epistemic parts")
    figure.savefig(path, dpi=100)
    return path


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        run = load_run(args.run_dir)
    except (RunError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if run.guide is None:
        print(
            f"error: {args.run_dir} is a deterministic run (model Autoformer); it has "
            "no posterior to analyse",
            file=sys.stderr,
        )
        return 2
    config = run.config
    data = load_data(config.data)
    if list(data.columns) != list(run.columns):
        print(
            f"error: the data's columns {data.columns} do not match the run's "
            f"{run.columns}",
            file=sys.stderr,
        )
        return 2
    output_dir = args.output_dir or args.run_dir / "analysis"
    output_dir.mkdir(parents=True, exist_ok=True)
    num_samples = args.num_samples or max(config.train.num_samples, 2)
    pyro.set_rng_seed(config.train.seed if args.seed is None else args.seed)

    # A few evenly spaced test windows, forecast with streamed weight draws.
    cfg = data.config
    picks = np.linspace(0, len(data.test) - 1, args.num_windows).astype(int)
    batch = torch.utils.data.default_collate([data.test[int(i)] for i in picks])
    inputs, target = prepare_batch(batch, cfg.label_len, cfg.pred_len, data.c_out)
    draws = PosteriorPredictive(run.model, run.guide, num_samples).sample(*inputs)

    # Variances scale with the square of each column's standard deviation.
    scale = run.scaler.scale_[data.target_column_indices]
    split = variance_table(draws, scale, data, picks)
    split.to_csv(output_dir / "variance_split.csv", index=False)
    indices = data.target_column_indices
    samples = run.scaler.inverse_transform(draws.samples.double(), columns=indices)
    quantiles = sample_quantiles(samples, LEVELS)
    truth = run.scaler.inverse_transform(target.double(), columns=indices)
    quantile_table(quantiles, truth, data, picks).to_csv(
        output_dir / "quantiles.csv", index=False
    )
    summary = run.guide.posterior_summary(by="group")
    summary.to_csv(output_dir / "posterior_summary.csv")
    run.guide.posterior_summary(by="site").to_csv(
        output_dir / "posterior_summary_by_site.csv"
    )

    plot_variance_split(split, output_dir / "variance_split.png")
    channel = data.c_out - 1
    column_index = data.target_column_indices[channel]
    history = run.scaler.inverse_transform(
        inputs[0][..., column_index].double().unsqueeze(-1), columns=[column_index]
    )[..., 0]
    plot_forecast_fan(
        history.numpy(),
        np.stack([data.test.dates[i : i + cfg.seq_len].to_numpy() for i in picks]),
        {level: quantiles[j, ..., channel].numpy() for j, level in enumerate(LEVELS)},
        truth[..., channel].numpy(),
        np.stack([data.test.target_dates(int(i)).to_numpy() for i in picks]),
        output_dir / "forecast_fan.png",
        title=f"Posterior predictive of {data.target_columns[channel]}",
        ylabel=data.target_columns[channel],
    )

    totals = split.groupby("column", sort=False)[
        ["epistemic_variance", "aleatoric_variance"]
    ].mean()
    totals["epistemic_share"] = totals.epistemic_variance / (
        totals.epistemic_variance + totals.aleatoric_variance
    )
    with pd.option_context("display.width", 120, "display.precision", 4):
        print(f"{num_samples} posterior draws, test windows {list(map(int, picks))}")
        print("mean predictive variance per column (data units squared):")
        print(totals.to_string())
        print("posterior summary per layer group:")
        print(summary.to_string())
    print(f"wrote the analysis to {output_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
