"""Analysis plots of probabilistic forecasts: fan charts, reliability and comparisons.

Each function checks its inputs first, draws one figure with seaborn on the Agg
canvas (no display and no change to the global pyplot state), and writes a PNG
atomically: the image goes to a temporary file in the target directory that then
replaces ``path`` with :func:`os.replace`. Invalid inputs raise ``ValueError``
before any file is created, and a failure while drawing or saving leaves neither a
partial image nor a temporary file behind.

The tables these functions read come from :class:`~pyro_autoformer.metrics.
ForecastMetrics`: :meth:`~pyro_autoformer.metrics.ForecastMetrics.reliability_table`,
:meth:`~pyro_autoformer.metrics.ForecastMetrics.compute_by_horizon`, and one
:meth:`~pyro_autoformer.metrics.ForecastMetrics.compute` dictionary per run for
:func:`plot_comparison`.

Usage::

    metrics = ForecastMetrics()
    ...
    plot_reliability(metrics.reliability_table(), "out/reliability.png")
    plot_metrics_by_horizon(metrics.compute_by_horizon(), "out/by_horizon.png")
"""

from __future__ import annotations

import logging
import math
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib.dates as mdates
import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from .files import atomic_open

logger = logging.getLogger(__name__)

#: Most windows :func:`plot_forecast_fan` draws in one grid.
MAX_FAN_WINDOWS = 4

_COVERAGE_COLUMN = re.compile(r"^coverage_(\d+(?:\.\d+)?)$")
_DPI = 120


def _to_numpy(x: Any, name: str) -> np.ndarray:
    """Convert a torch tensor, array or sequence to a numpy array."""
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    try:
        return np.asarray(x)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{name} could not be read as an array: {err}") from err


def _as_windows(x: Any, name: str) -> np.ndarray:
    """Read values of one window ``(length,)`` or several ``(windows, length)``."""
    array = _to_numpy(x, name)
    if array.ndim == 1:
        array = array[None, :]
    if array.ndim != 2:
        raise ValueError(
            f"{name} must have shape (length,) or (windows, length), got {array.shape}"
        )
    return array


def _as_float_windows(x: Any, name: str) -> np.ndarray:
    array = _as_windows(x, name)
    try:
        return array.astype(np.float64)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{name} must be numeric: {err}") from err


def _as_time_axis(x: Any, name: str, shape: tuple[int, int]) -> np.ndarray | None:
    """Read dates (or numeric positions) of the given shape; None stays None."""
    if x is None:
        return None
    array = _as_windows(x, name)
    if array.shape != shape:
        raise ValueError(f"{name} of shape {array.shape} must have shape {shape}")
    if np.issubdtype(array.dtype, np.number) or np.issubdtype(
        array.dtype, np.datetime64
    ):
        return array
    try:
        rows = [pd.to_datetime(row).to_numpy() for row in array]
    except (TypeError, ValueError) as err:
        raise ValueError(f"{name} could not be read as dates: {err}") from err
    return np.stack(rows)


def _level_from_coverage_column(column: str) -> float | None:
    match = _COVERAGE_COLUMN.match(str(column))
    return float(match.group(1)) / 100.0 if match else None


def _require_columns(frame: pd.DataFrame, columns: Sequence[str], name: str) -> None:
    if not isinstance(frame, pd.DataFrame):
        raise ValueError(f"{name} must be a pandas DataFrame, got {type(frame)}")
    missing = [column for column in columns if column not in frame.columns]
    if missing:
        raise ValueError(
            f"{name} lacks the columns {missing}; found {list(frame.columns)}"
        )
    if frame.empty:
        raise ValueError(f"{name} has no rows")


def _new_figure(rows: int, cols: int, panel_size: tuple[float, float]):
    """A constrained-layout figure with a grid of axes, on the Agg canvas."""
    figure = Figure(
        figsize=(panel_size[0] * cols, panel_size[1] * rows), layout="constrained"
    )
    FigureCanvasAgg(figure)
    axes = figure.subplots(rows, cols, squeeze=False)
    return figure, axes


def _write_png(figure: Figure, path: str | os.PathLike) -> Path:
    """Save a figure to ``path`` atomically."""
    path = Path(path)
    with atomic_open(path, "wb") as handle:
        figure.savefig(handle, format="png", dpi=_DPI)
    logger.debug("wrote %s", path)
    return path


def _styled(draw):
    """Run ``draw`` under a readable seaborn style without touching global rcParams."""
    with sns.axes_style("whitegrid"), sns.plotting_context("notebook"):
        return draw()


def plot_forecast_fan(
    history_values: Any,
    history_dates: Any,
    quantile_values: Mapping[float, Any],
    truth: Any,
    dates: Any,
    path: str | os.PathLike,
    title: str = "Posterior predictive forecast",
    ylabel: str = "value",
) -> Path:
    """Fan chart of one channel for up to four forecast windows.

    Use it to look at a few test windows: each panel shows the context before the
    forecast origin, the truth after it, the predictive median and one shaded band
    per central interval found in ``quantile_values``. A band is drawn for every pair
    of levels ``a`` and ``1 - a`` present, so levels 0.05, 0.25, 0.5, 0.75 and 0.95
    give the 90% and 50% bands. The median (level 0.5) is required.

    :param history_values: context values of shape ``(context_len,)`` for one
        window or ``(windows, context_len)``.
    :type history_values: array-like
    :param history_dates: timestamps of the context, same shape as
        ``history_values``, or None to number the steps ``-context_len + 1 .. 0``.
    :type history_dates: array-like or None
    :param quantile_values: forecast quantiles by level, each of shape
        ``(pred_len,)`` or ``(windows, pred_len)``, for example from
        :func:`~pyro_autoformer.metrics.sample_quantiles`.
    :type quantile_values: dict
    :param truth: observed values after the origin, shape ``(windows, pred_len)``.
    :type truth: array-like
    :param dates: timestamps of the forecast, same shape as ``truth``, or None to
        number the steps ``1 .. pred_len``.
    :type dates: array-like or None
    :param path: where to write the PNG.
    :type path: str or os.PathLike
    :param str title: title of the figure.
    :param str ylabel: label of the value axis, for example the channel name.
    :return: the path written.
    :rtype: pathlib.Path
    """
    history = _as_float_windows(history_values, "history_values")
    truth = _as_float_windows(truth, "truth")
    windows, pred_len = truth.shape
    if history.shape[0] != windows:
        raise ValueError(
            f"history_values hold {history.shape[0]} windows but truth holds {windows}"
        )
    if windows > MAX_FAN_WINDOWS:
        raise ValueError(
            f"plot_forecast_fan draws at most {MAX_FAN_WINDOWS} windows, got "
            f"{windows}; pass a subset"
        )
    history_x = _as_time_axis(history_dates, "history_dates", history.shape)
    forecast_x = _as_time_axis(dates, "dates", truth.shape)
    if (history_x is None) != (forecast_x is None):
        raise ValueError("give both history_dates and dates, or neither")
    if history_x is None:
        context_len = history.shape[1]
        history_x = np.tile(np.arange(-context_len + 1, 1), (windows, 1))
        forecast_x = np.tile(np.arange(1, pred_len + 1), (windows, 1))

    quantiles: dict[float, np.ndarray] = {}
    for level, values in quantile_values.items():
        level = float(level)
        if not 0.0 < level < 1.0:
            raise ValueError(f"quantile levels must lie in (0, 1), got {level}")
        values = _as_float_windows(values, f"quantile_values[{level}]")
        if values.shape != truth.shape:
            raise ValueError(
                f"quantile_values[{level}] of shape {values.shape} must match truth "
                f"of shape {truth.shape}"
            )
        quantiles[round(level, 6)] = values
    if 0.5 not in quantiles:
        raise ValueError(
            f"quantile_values need the median (level 0.5); found {sorted(quantiles)}"
        )
    band_levels = sorted(
        a for a in quantiles if a < 0.5 and round(1 - a, 6) in quantiles
    )

    rows, cols = (1, windows) if windows <= 2 else (2, 2)
    palette = sns.color_palette("deep")

    def draw():
        figure, axes = _new_figure(rows, cols, (6.0, 3.6))
        for index, ax in enumerate(axes.flat):
            if index >= windows:
                ax.set_visible(False)
                continue
            ax.plot(history_x[index], history[index], color="0.35", label="context")
            ax.plot(forecast_x[index], truth[index], color="black", label="truth")
            # Widest band first, so narrower bands are drawn on top of it.
            for rank, low in enumerate(band_levels):
                ax.fill_between(
                    forecast_x[index],
                    quantiles[low][index],
                    quantiles[round(1 - low, 6)][index],
                    color=palette[0],
                    alpha=0.2 + 0.2 * rank / max(len(band_levels), 1),
                    linewidth=0,
                    label=f"{(1 - 2 * low) * 100:g}% interval",
                )
            ax.plot(
                forecast_x[index],
                quantiles[0.5][index],
                color=palette[0],
                label="median",
            )
            ax.axvline(history_x[index][-1], color="0.6", linestyle=":", linewidth=1)
            ax.set_title(f"window {index + 1}")
            ax.set_ylabel(ylabel)
            if np.issubdtype(forecast_x.dtype, np.datetime64):
                locator = mdates.AutoDateLocator(maxticks=6)
                ax.xaxis.set_major_locator(locator)
                ax.xaxis.set_major_formatter(mdates.ConciseDateFormatter(locator))
                ax.set_xlabel("time")
            else:
                ax.set_xlabel("steps after the forecast origin")
        axes.flat[0].legend(loc="best", fontsize="small")
        figure.suptitle(title)
        return _write_png(figure, path)

    return _styled(draw)


def plot_reliability(
    reliability_table: pd.DataFrame,
    path: str | os.PathLike,
    title: str = "Reliability of central intervals",
) -> Path:
    """Reliability diagram: empirical against nominal coverage, with the diagonal.

    Points on the diagonal are calibrated intervals; points below it are intervals
    too narrow, above it too wide. A ``run`` column, when present, draws one line
    per run, for comparing ablations.

    :param reliability_table: columns ``nominal`` and ``empirical`` with values in
        ``[0, 1]``, as from
        :meth:`~pyro_autoformer.metrics.ForecastMetrics.reliability_table`.
    :type reliability_table: pandas.DataFrame
    :param path: where to write the PNG.
    :type path: str or os.PathLike
    :param str title: title of the figure.
    :return: the path written.
    :rtype: pathlib.Path
    """
    _require_columns(reliability_table, ("nominal", "empirical"), "reliability_table")
    values = reliability_table[["nominal", "empirical"]].to_numpy(dtype=np.float64)
    if not np.all((values >= 0.0) & (values <= 1.0)):
        raise ValueError("reliability_table nominal and empirical must lie in [0, 1]")
    hue = "run" if "run" in reliability_table.columns else None

    def draw():
        figure, axes = _new_figure(1, 1, (5.0, 5.0))
        ax = axes[0, 0]
        ax.plot([0, 1], [0, 1], color="0.5", linestyle="--", label="calibrated")
        line_label = {} if hue else {"label": "forecast"}
        sns.lineplot(
            data=reliability_table,
            x="nominal",
            y="empirical",
            hue=hue,
            marker="o",
            ax=ax,
            **line_label,
        )
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
        ax.set_aspect("equal")
        ax.set_xlabel("nominal coverage of central interval")
        ax.set_ylabel("empirical coverage")
        ax.set_title(title)
        ax.legend(loc="upper left", fontsize="small")
        return _write_png(figure, path)

    return _styled(draw)


def plot_metrics_by_horizon(
    frame: pd.DataFrame,
    path: str | os.PathLike,
    title: str = "Coverage and CRPS by horizon step",
) -> Path:
    """Two panels: interval coverage and CRPS against the horizon step.

    Use it to see how forecasts degrade with lead time. The left panel draws one
    line per ``coverage_<p>`` column with a dashed reference line at its nominal
    level ``p``%; the right panel draws the CRPS.

    :param frame: columns ``step``, ``crps`` and at least one ``coverage_<p>``, as
        from :meth:`~pyro_autoformer.metrics.ForecastMetrics.compute_by_horizon`.
    :type frame: pandas.DataFrame
    :param path: where to write the PNG.
    :type path: str or os.PathLike
    :param str title: title of the figure.
    :return: the path written.
    :rtype: pathlib.Path
    """
    _require_columns(frame, ("step", "crps"), "frame")
    coverage = {
        column: level
        for column in frame.columns
        if (level := _level_from_coverage_column(column)) is not None
    }
    if not coverage:
        raise ValueError(
            f"frame has no coverage_<p> column; found {list(frame.columns)}"
        )
    palette = sns.color_palette("deep", len(coverage))

    def draw():
        figure, axes = _new_figure(1, 2, (6.0, 4.0))
        left, right = axes[0]
        for color, (column, level) in zip(
            palette, sorted(coverage.items(), key=_by_level)
        ):
            left.plot(
                frame["step"], frame[column], color=color, label=f"{level * 100:g}%"
            )
            left.axhline(level, color=color, linestyle="--", linewidth=1)
        left.set_ylim(0, 1.02)
        left.set_xlabel("horizon step")
        left.set_ylabel("empirical coverage (dashed: nominal)")
        left.set_title("coverage of central intervals")
        left.legend(title="interval", fontsize="small", loc="lower left")

        sns.lineplot(data=frame, x="step", y="crps", ax=right, color=palette[0])
        right.set_xlabel("horizon step")
        right.set_ylabel("CRPS")
        right.set_title("CRPS")
        figure.suptitle(title)
        return _write_png(figure, path)

    return _styled(draw)


def _by_level(item: tuple[str, float]) -> float:
    return item[1]


def plot_comparison(
    table: pd.DataFrame,
    path: str | os.PathLike,
    metrics: Sequence[str] = ("mse", "crps", "coverage_90"),
    run_column: str = "run",
    title: str = "Comparison of runs",
) -> Path:
    """Bar charts of a few metrics, one panel per metric and one bar per run.

    Use it for ablations and sweeps (for example over the prior scale): each row of
    ``table`` is one run, named by ``run_column`` or, without that column, by the
    index. Coverage panels get a dashed line at their nominal level.

    :param table: one row per run with a column per metric, for example built from
        the :meth:`~pyro_autoformer.metrics.ForecastMetrics.compute` dictionaries.
    :type table: pandas.DataFrame
    :param path: where to write the PNG.
    :type path: str or os.PathLike
    :param metrics: the columns to draw, one panel each.
    :type metrics: sequence of str
    :param str run_column: the column naming each run; the index is used when the
        table has no such column.
    :param str title: title of the figure.
    :return: the path written.
    :rtype: pathlib.Path
    """
    metrics = [metrics] if isinstance(metrics, str) else list(metrics)
    if not metrics:
        raise ValueError("metrics must name at least one column")
    _require_columns(table, metrics, "table")
    names = table[run_column] if run_column in table.columns else table.index
    runs = pd.Series([str(name) for name in names], name="run")
    if runs.duplicated().any():
        raise ValueError(f"run names must be unique, got {list(runs)}")
    values = {}
    for metric in metrics:
        column = pd.to_numeric(table[metric], errors="coerce").to_numpy(dtype=float)
        if not np.all(np.isfinite(column)):
            raise ValueError(f"table column {metric!r} holds non-numeric or NaN values")
        values[metric] = column

    cols = min(len(metrics), 3)
    rows = math.ceil(len(metrics) / cols)
    panel_width = max(4.0, 0.6 * len(runs) + 1.5)

    def draw():
        figure, axes = _new_figure(rows, cols, (panel_width, 3.8))
        for index, ax in enumerate(axes.flat):
            if index >= len(metrics):
                ax.set_visible(False)
                continue
            metric = metrics[index]
            frame = pd.DataFrame({"run": runs, metric: values[metric]})
            sns.barplot(data=frame, x="run", y=metric, hue="run", legend=False, ax=ax)
            level = _level_from_coverage_column(metric)
            if level is not None:
                ax.axhline(level, color="0.3", linestyle="--", linewidth=1)
            ax.set_title(metric)
            ax.set_xlabel("run")
            ax.set_ylabel(metric)
            for container in ax.containers:
                ax.bar_label(container, fmt="%.3g", fontsize="x-small", padding=2)
            if len(runs) > 3:
                for label in ax.get_xticklabels():
                    label.set_rotation(30)
                    label.set_horizontalalignment("right")
                    label.set_rotation_mode("anchor")
        figure.suptitle(title)
        return _write_png(figure, path)

    return _styled(draw)
