"""Specifications of the analysis plots in pyro_autoformer.plots."""

import matplotlib.image as mpimg
import numpy as np
import pandas as pd
import pytest
from matplotlib.figure import Figure

from pyro_autoformer.plots import (
    plot_comparison,
    plot_forecast_fan,
    plot_metrics_by_horizon,
    plot_reliability,
)

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _assert_png(path):
    data = path.read_bytes()
    assert data.startswith(PNG_SIGNATURE)
    height, width = mpimg.imread(path).shape[:2]
    assert height > 100 and width > 100


def _fan_inputs(windows=3, context_len=24, pred_len=12, with_dates=True):
    rng = np.random.default_rng(0)
    history = rng.normal(size=(windows, context_len))
    truth = rng.normal(size=(windows, pred_len))
    center = rng.normal(size=(windows, pred_len))
    quantiles = {
        0.05: center - 1.6,
        0.25: center - 0.7,
        0.5: center,
        0.75: center + 0.7,
        0.95: center + 1.6,
    }
    if not with_dates:
        return history, None, quantiles, truth, None
    starts = pd.date_range("2016-07-01", periods=windows, freq="7D")
    history_dates = np.stack(
        [pd.date_range(s, periods=context_len, freq="h").to_numpy() for s in starts]
    )
    dates = np.stack(
        [
            pd.date_range(
                s + pd.Timedelta(hours=context_len), periods=pred_len, freq="h"
            ).to_numpy()
            for s in starts
        ]
    )
    return history, history_dates, quantiles, truth, dates


def _horizon_frame(pred_len=10):
    step = np.arange(1, pred_len + 1)
    return pd.DataFrame(
        {
            "step": step,
            "mse": 0.1 * step,
            "mae": 0.05 * step,
            "crps": 0.2 + 0.01 * step,
            "coverage_50": np.full(pred_len, 0.45),
            "coverage_90": np.linspace(0.92, 0.8, pred_len),
        }
    )


def _reliability_frame():
    nominal = np.arange(1, 20) * 0.05
    return pd.DataFrame({"nominal": nominal, "empirical": nominal**1.3})


def _runs_table():
    return pd.DataFrame(
        {
            "run": ["beta=1", "beta=0.1", "deterministic"],
            "mse": [0.41, 0.39, 0.44],
            "crps": [0.31, 0.30, 0.36],
            "coverage_90": [0.88, 0.8, 0.2],
        }
    )


# Valid PNGs


def test_forecast_fan_with_dates_writes_a_png(tmp_path):
    history, history_dates, quantiles, truth, dates = _fan_inputs()
    path = tmp_path / "fan.png"
    returned = plot_forecast_fan(history, history_dates, quantiles, truth, dates, path)
    assert returned == path
    _assert_png(path)


def test_forecast_fan_without_dates_numbers_the_steps(tmp_path):
    path = tmp_path / "fan.png"
    plot_forecast_fan(*_fan_inputs(windows=4, with_dates=False), path, ylabel="OT")
    _assert_png(path)


def test_forecast_fan_accepts_one_window_as_1d_arrays(tmp_path):
    history, _, quantiles, truth, _ = _fan_inputs(windows=1, with_dates=False)
    quantiles = {level: values[0] for level, values in quantiles.items()}
    path = tmp_path / "one.png"
    plot_forecast_fan(history[0], None, quantiles, truth[0], None, path)
    _assert_png(path)


def test_reliability_diagram_writes_a_png(tmp_path):
    path = plot_reliability(_reliability_frame(), tmp_path / "reliability.png")
    _assert_png(path)


def test_reliability_diagram_draws_one_line_per_run(tmp_path):
    first, second = _reliability_frame(), _reliability_frame()
    first["run"], second["run"] = "a", "b"
    table = pd.concat([first, second], ignore_index=True)
    _assert_png(plot_reliability(table, tmp_path / "runs.png"))


def test_metrics_by_horizon_writes_a_png(tmp_path):
    path = plot_metrics_by_horizon(_horizon_frame(), tmp_path / "horizon.png")
    _assert_png(path)


def test_comparison_writes_a_png(tmp_path):
    _assert_png(plot_comparison(_runs_table(), tmp_path / "comparison.png"))


def test_comparison_names_runs_by_index_without_a_run_column(tmp_path):
    table = _runs_table().set_index("run")
    path = plot_comparison(table, tmp_path / "by_index.png", metrics=("crps",))
    _assert_png(path)


def test_plot_creates_missing_parent_directories(tmp_path):
    path = tmp_path / "figures" / "nested" / "horizon.png"
    _assert_png(plot_metrics_by_horizon(_horizon_frame(), path))


def test_plot_replaces_an_existing_file(tmp_path):
    path = tmp_path / "reliability.png"
    path.write_bytes(b"old")
    plot_reliability(_reliability_frame(), path)
    _assert_png(path)


# Refusals leave nothing behind


def test_forecast_fan_refuses_mismatched_quantile_length_before_writing(tmp_path):
    history, history_dates, quantiles, truth, dates = _fan_inputs()
    quantiles[0.95] = quantiles[0.95][:, :-1]
    with pytest.raises(ValueError, match=r"quantile_values\[0.95\] of shape"):
        plot_forecast_fan(
            history, history_dates, quantiles, truth, dates, tmp_path / "fan.png"
        )
    assert list(tmp_path.iterdir()) == []


def test_forecast_fan_refuses_dates_of_the_wrong_length(tmp_path):
    history, history_dates, quantiles, truth, dates = _fan_inputs()
    with pytest.raises(ValueError, match="dates of shape"):
        plot_forecast_fan(
            history, history_dates, quantiles, truth, dates[:, 1:], tmp_path / "f.png"
        )
    assert list(tmp_path.iterdir()) == []


def test_forecast_fan_refuses_more_than_four_windows(tmp_path):
    with pytest.raises(ValueError, match="at most 4 windows, got 5"):
        plot_forecast_fan(*_fan_inputs(windows=5), tmp_path / "fan.png")
    assert list(tmp_path.iterdir()) == []


def test_forecast_fan_requires_the_median(tmp_path):
    history, history_dates, quantiles, truth, dates = _fan_inputs()
    del quantiles[0.5]
    with pytest.raises(ValueError, match="median"):
        plot_forecast_fan(
            history, history_dates, quantiles, truth, dates, tmp_path / "fan.png"
        )
    assert list(tmp_path.iterdir()) == []


def test_reliability_refuses_a_table_without_empirical_column(tmp_path):
    table = _reliability_frame().drop(columns="empirical")
    with pytest.raises(ValueError, match="lacks the columns \\['empirical'\\]"):
        plot_reliability(table, tmp_path / "reliability.png")
    assert list(tmp_path.iterdir()) == []


def test_metrics_by_horizon_refuses_a_frame_without_coverage(tmp_path):
    frame = _horizon_frame().drop(columns=["coverage_50", "coverage_90"])
    with pytest.raises(ValueError, match="no coverage_<p> column"):
        plot_metrics_by_horizon(frame, tmp_path / "horizon.png")
    assert list(tmp_path.iterdir()) == []


def test_comparison_refuses_an_unknown_metric_listing_the_columns(tmp_path):
    with pytest.raises(ValueError, match=r"\['nll'\].*'coverage_90'"):
        plot_comparison(_runs_table(), tmp_path / "c.png", metrics=("crps", "nll"))
    assert list(tmp_path.iterdir()) == []


def test_failure_while_saving_leaves_no_file_and_keeps_the_old_one(
    tmp_path, monkeypatch
):
    path = tmp_path / "horizon.png"
    path.write_bytes(b"previous image")

    def broken_savefig(self, *args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(Figure, "savefig", broken_savefig)
    with pytest.raises(OSError, match="disk full"):
        plot_metrics_by_horizon(_horizon_frame(), path)
    assert list(tmp_path.iterdir()) == [path]
    assert path.read_bytes() == b"previous image"


def test_plotting_leaves_global_matplotlib_settings_unchanged(tmp_path):
    import matplotlib

    before = dict(matplotlib.rcParams)
    plot_metrics_by_horizon(_horizon_frame(), tmp_path / "horizon.png")
    assert dict(matplotlib.rcParams) == before
