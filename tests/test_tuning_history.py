"""Specifications of KLHistory (records, frame, CSV/JSON round trips) and its plot."""

import json
import math

import pandas as pd
import pytest

from pyro_autoformer.tuning.history import KLHistory, KLRecord, atomic_open
from pyro_autoformer.tuning.plotting import plot_history

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def record(
    epoch,
    step=None,
    weight=0.01,
    data=0.9,
    kl=1.0,
    target=0.1,
    val=None,
    method="adaptive",
):
    weighted = weight * kl
    return KLRecord(
        epoch=epoch,
        step=step,
        weight=weight,
        data_loss=data,
        kl_loss=kl,
        weighted_kl=weighted,
        kl_share=weighted / (abs(data) + weighted),
        target=target,
        total_loss=data + weighted,
        val_loss=val,
        method=method,
    )


@pytest.fixture
def mixed_history():
    # awkward floats, missing steps, targets and validation losses, negative D
    return KLHistory(
        [
            record(0, weight=1 / 3, data=0.1 + 0.2, kl=math.pi, val=0.7),
            record(1, step=17, weight=2.5e-7, data=-0.25, kl=1e-12, target=None),
            record(
                2,
                step=None,
                weight=0.05,
                data=1e6,
                kl=0.0,
                method="annealing",
                target=None,
                val=1.0 / 7.0,
            ),
        ]
    )


def test_to_frame_has_one_row_per_update_with_named_columns(mixed_history):
    frame = mixed_history.to_frame()
    assert list(frame.columns) == [
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
    assert len(frame) == 3
    assert frame["step"].isna().tolist() == [True, False, True]
    assert frame["step"].iloc[1] == 17
    assert math.isnan(frame["val_loss"].iloc[1])
    assert frame["method"].tolist() == ["adaptive", "adaptive", "annealing"]


def test_csv_round_trip_is_exact(tmp_path, mixed_history):
    path = mixed_history.to_csv(tmp_path / "history.csv")
    assert KLHistory.from_csv(path) == mixed_history


def test_json_round_trip_is_exact(tmp_path, mixed_history):
    path = mixed_history.to_json(tmp_path / "history.json")
    assert KLHistory.from_json(path) == mixed_history


def test_json_writes_missing_values_as_null(tmp_path, mixed_history):
    path = mixed_history.to_json(tmp_path / "history.json")
    rows = json.loads(path.read_text())["records"]
    assert rows[1]["val_loss"] is None
    assert rows[1]["target"] is None
    assert rows[0]["step"] is None


def test_empty_history_round_trips(tmp_path):
    assert KLHistory.from_csv(KLHistory().to_csv(tmp_path / "h.csv")) == KLHistory()
    assert KLHistory.from_json(KLHistory().to_json(tmp_path / "h.json")) == KLHistory()


def test_from_frame_names_missing_columns():
    with pytest.raises(ValueError, match="kl_share"):
        KLHistory.from_frame(pd.DataFrame({"epoch": [0]}))


def test_writes_create_missing_directories(tmp_path, mixed_history):
    path = mixed_history.to_csv(tmp_path / "a" / "b" / "history.csv")
    assert path.exists()


def test_atomic_write_leaves_old_file_and_no_temp_on_failure(tmp_path):
    path = tmp_path / "history.csv"
    path.write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_open(path) as handle:
            handle.write("half-written")
            raise RuntimeError("crash while writing")
    assert path.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["history.csv"]


def test_atomic_write_leaves_no_temp_on_success(tmp_path, mixed_history):
    mixed_history.to_json(tmp_path / "h.json")
    mixed_history.to_csv(tmp_path / "h.csv")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["h.csv", "h.json"]


# --- the plot -----------------------------------------------------------------------


def test_plot_writes_a_png_per_epoch(tmp_path):
    history = KLHistory(
        [record(e, data=1.0 / (e + 1), val=1.1 / (e + 1)) for e in range(10)]
    )
    path = plot_history(history, tmp_path / "kl.png")
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE
    assert len(data) > 10_000


def test_plot_writes_a_png_per_step_without_targets(tmp_path):
    history = KLHistory(
        [record(s // 4, step=s, target=None, method="annealing") for s in range(12)]
    )
    path = plot_history(history, tmp_path / "kl.png", target=0.1)
    assert path.read_bytes()[:8] == PNG_SIGNATURE
    assert [p.name for p in tmp_path.iterdir()] == ["kl.png"]


def test_plot_refuses_empty_history(tmp_path):
    with pytest.raises(ValueError, match="empty"):
        plot_history(KLHistory(), tmp_path / "kl.png")
