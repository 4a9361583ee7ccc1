"""Specification of the data pipeline: splits, scaling, windows and forecast inputs."""

import json
import logging
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from pyro_autoformer.data import (
    DataConfig,
    DataValidationError,
    StandardScaler,
    WindowDataset,
    forecast_inputs,
    load_data,
    prepare_batch,
    read_csv,
)

ETTH1 = (
    Path(__file__).resolve().parents[1] / "pyro_autoformer" / "datasets" / "ETTh1.csv"
)
ETTM1 = Path("/work/shared/data/ETT/ETTm1.csv")
ETT_COLUMNS = ["HUFL", "HULL", "MUFL", "MULL", "LUFL", "LULL", "OT"]


@pytest.fixture(scope="module")
def etth1():
    return load_data(DataConfig())


@pytest.fixture(scope="module")
def raw_etth1():
    return pd.read_csv(ETTH1, parse_dates=["date"], index_col="date")


def write_series(path, n_rows, freq="h", columns=("a", "b", "OT"), seed=0):
    rng = np.random.default_rng(seed)
    dates = pd.date_range("2021-01-01", periods=n_rows, freq=freq)
    frame = pd.DataFrame(rng.normal(size=(n_rows, len(columns))), columns=columns)
    frame.insert(0, "date", dates.strftime("%Y-%m-%d %H:%M:%S"))
    frame.to_csv(path, index=False)
    return path


# Splits ---------------------------------------------------------------------------


def test_etth1_96_96_gives_8449_2785_2785_windows(etth1):
    # train rows 8640 -> 8640 - 96 - 96 + 1; val/test rows 2880 + 96 -> 2976 - 191.
    assert (len(etth1.train), len(etth1.val), len(etth1.test)) == (8449, 2785, 2785)


def test_etth1_uses_the_ett_borders(etth1):
    assert etth1.borders == {
        "train": (0, 8640),
        "val": (8640 - 96, 11520),
        "test": (11520 - 96, 14400),
    }


def test_ratio_split_on_a_generated_csv_rounds_train_and_test_down(tmp_path):
    # 1003 rows: train int(702.1) = 702, test int(200.6) = 200, val 1003-702-200 = 101.
    path = write_series(tmp_path / "custom.csv", 1003)
    data = load_data(
        DataConfig(data_path=str(path), seq_len=24, label_len=12, pred_len=12)
    )
    assert data.borders == {"train": (0, 702), "val": (678, 803), "test": (779, 1003)}
    # windows = rows - 24 - 12 + 1
    assert (len(data.train), len(data.val), len(data.test)) == (667, 90, 189)


def test_auto_split_uses_ratios_for_a_renamed_ett_file(tmp_path):
    renamed = tmp_path / "transformers.csv"
    renamed.write_bytes(ETTH1.read_bytes())
    data = load_data(DataConfig(data_path=str(renamed)))
    n = 17420
    num_train, num_test = int(n * 0.7), int(n * 0.2)
    assert data.borders["train"] == (0, num_train)
    assert data.borders["test"] == (n - num_test - 96, n)


def test_forced_ett_split_on_a_non_ett_file_name(tmp_path):
    path = write_series(tmp_path / "long.csv", 14400)
    data = load_data(DataConfig(data_path=str(path), split="ett"))
    assert data.borders["val"] == (8640 - 96, 11520)


def test_forced_ett_split_refuses_a_short_file(tmp_path):
    path = write_series(tmp_path / "short.csv", 5000)
    with pytest.raises(DataValidationError, match=r"14400 rows.*5000"):
        load_data(DataConfig(data_path=str(path), split="ett"))


@pytest.mark.skipif(not ETTM1.is_file(), reason="ETTm1.csv not available")
def test_ettm1_uses_the_ett_borders_at_four_rows_an_hour():
    data = load_data(DataConfig(data_path=str(ETTM1), freq="15min"))
    month = 30 * 24 * 4
    assert data.borders == {
        "train": (0, 12 * month),
        "val": (12 * month - 96, 16 * month),
        "test": (16 * month - 96, 20 * month),
    }
    assert len(data.train) == 34560 - 191


def test_split_too_short_for_one_window_is_refused_naming_split_rows_and_minimum(
    tmp_path,
):
    # 100 rows: train 70, test 20, val 10 rows + 24 of context = 34 < 24 + 24.
    path = write_series(tmp_path / "tiny.csv", 100)
    config = DataConfig(data_path=str(path), seq_len=24, label_len=12, pred_len=24)
    with pytest.raises(DataValidationError) as info:
        load_data(config)
    message = str(info.value)
    assert "val" in message and "34 rows" in message and "48" in message


def test_96_to_720_windows_work(etth1):
    data = load_data(DataConfig(pred_len=720))
    assert len(data.train) == 8640 - 96 - 720 + 1
    assert len(data.val) == 2880 + 96 - 96 - 720 + 1
    x_enc, x_mark, y, y_mark = data.test[len(data.test) - 1]
    assert x_enc.shape == (96, 7) and y.shape == (48 + 720, 7)
    assert y_mark.shape == (48 + 720, 4)


# Scaling ---------------------------------------------------------------------------


def test_scaler_statistics_equal_pandas_over_the_train_rows(etth1, raw_etth1):
    train = raw_etth1.iloc[:8640][ETT_COLUMNS]
    np.testing.assert_allclose(etth1.scaler.mean_, train.mean().to_numpy(), rtol=1e-12)
    np.testing.assert_allclose(
        etth1.scaler.scale_, train.std(ddof=0).to_numpy(), rtol=1e-12
    )


def test_inverse_transform_round_trips_numpy_and_torch(raw_etth1):
    values = raw_etth1.to_numpy()
    scaler = StandardScaler().fit(values[:500])
    np.testing.assert_allclose(
        scaler.inverse_transform(scaler.transform(values)), values, rtol=1e-10
    )
    batch = torch.tensor(values[:64], dtype=torch.float64).reshape(2, 32, 7)
    back = scaler.inverse_transform(scaler.transform(batch))
    assert isinstance(back, torch.Tensor) and back.shape == (2, 32, 7)
    torch.testing.assert_close(back, batch)


def test_ms_inverse_transform_uses_the_target_statistics(raw_etth1):
    data = load_data(DataConfig(features="MS"))
    assert data.columns[-1] == "OT" and data.target_columns == ["OT"]
    assert data.enc_in == 7 and data.c_out == 1
    ot = raw_etth1["OT"].iloc[:8640]
    outputs = torch.tensor([[[0.0], [1.0], [-2.0]]])
    got = data.scaler.inverse_transform(outputs, columns=data.target_column_indices)
    mean, std = ot.mean(), ot.std(ddof=0)
    expected = torch.tensor([[[mean], [mean + std], [mean - 2 * std]]])
    torch.testing.assert_close(got, expected.float())


def test_constant_column_scales_by_one_and_warns_naming_it(caplog):
    values = np.column_stack([np.arange(10.0), np.full(10, 3.3)])
    with caplog.at_level(logging.WARNING, logger="pyro_autoformer.data"):
        scaler = StandardScaler().fit(values, column_names=["load", "flat"])
    assert scaler.scale_[1] == 1.0
    assert "flat" in caplog.text
    np.testing.assert_array_equal(scaler.transform(values)[:, 1], np.zeros(10))


def test_nearly_constant_column_is_not_blown_up_by_scaling(caplog):
    # std 1e-10 around 5.0 is far below float32 resolution (about 6e-7 at 5.0).
    flat = 5.0 + 1e-10 * np.array([1.0, -1.0] * 5)
    values = np.column_stack([np.arange(10.0), flat])
    with caplog.at_level(logging.WARNING, logger="pyro_autoformer.data"):
        scaler = StandardScaler().fit(values, column_names=["load", "flat"])
    assert scaler.scale_[1] == 1.0
    assert "flat" in caplog.text
    assert np.abs(scaler.transform(values)[:, 1]).max() < 1e-9
    assert scaler.scale_[0] == pytest.approx(np.arange(10.0).std())


def test_scaler_round_trips_through_json():
    scaler = StandardScaler().fit(np.array([[1.0, 10.0], [3.0, 30.0]]))
    restored = StandardScaler.from_dict(json.loads(json.dumps(scaler.to_dict())))
    np.testing.assert_array_equal(restored.mean_, [2.0, 20.0])
    np.testing.assert_array_equal(restored.scale_, [1.0, 10.0])


def test_scale_false_keeps_data_units_and_an_identity_scaler(raw_etth1):
    data = load_data(DataConfig(scale=False))
    x_enc = data.train[0][0]
    expected = raw_etth1[ETT_COLUMNS].iloc[:96].to_numpy(dtype=np.float32)
    np.testing.assert_array_equal(x_enc.numpy(), expected)
    np.testing.assert_array_equal(data.scaler.inverse_transform(np.ones(7)), np.ones(7))


# Windows ---------------------------------------------------------------------------


def test_window_tensors_equal_slices_of_the_scaled_frame(etth1, raw_etth1):
    frame = raw_etth1[ETT_COLUMNS]
    train = frame.iloc[:8640]
    scaled = ((frame - train.mean()) / train.std(ddof=0)).to_numpy(dtype=np.float32)

    i = 5  # val window 5 starts at row 8544 + 5
    x_enc, x_mark, y, y_mark = etth1.val[i]
    start = 8544 + i
    np.testing.assert_allclose(x_enc.numpy(), scaled[start : start + 96], atol=1e-5)
    np.testing.assert_allclose(
        y.numpy(), scaled[start + 96 - 48 : start + 96 + 96], atol=1e-5
    )
    hours = frame.index[start + 48 : start + 192].hour.to_numpy()
    np.testing.assert_allclose(y_mark[:, 0].numpy(), hours / 23 - 0.5, atol=1e-6)
    assert x_enc.dtype == x_mark.dtype == y.dtype == y_mark.dtype == torch.float32
    assert x_mark.shape == (96, 4)


def test_target_dates_are_the_pred_len_rows_after_the_context(etth1, raw_etth1):
    dates = etth1.test.target_dates(10)
    start = 11424 + 10 + 96
    assert dates.equals(raw_etth1.index[start : start + 96])
    assert etth1.test.dates[0] == raw_etth1.index[11424]


def test_window_index_out_of_range_raises_index_error(etth1):
    with pytest.raises(IndexError):
        etth1.train[len(etth1.train)]


def test_window_dataset_refuses_a_split_shorter_than_one_window():
    dates = pd.date_range("2020-01-01", periods=50, freq="h")
    with pytest.raises(ValueError, match=r"test split has 30 rows.*40"):
        WindowDataset(
            np.zeros((50, 2)),
            np.zeros((50, 4)),
            dates,
            20,
            50,
            seq_len=20,
            label_len=10,
            pred_len=20,
            name="test",
        )


def test_prepare_batch_builds_decoder_input_and_target(etth1):
    loader = torch.utils.data.DataLoader(etth1.train, batch_size=4)
    batch = next(iter(loader))
    (x_enc, x_mark_enc, x_dec, x_mark_dec), target = prepare_batch(batch, 48, 96, 7)
    y = batch[2]
    assert x_dec.shape == (4, 144, 7) and target.shape == (4, 96, 7)
    torch.testing.assert_close(x_dec[:, :48], y[:, :48])
    assert torch.count_nonzero(x_dec[:, 48:]) == 0
    torch.testing.assert_close(target, y[:, 48:])
    assert x_mark_dec is batch[3]


def test_prepare_batch_ms_target_is_the_scaled_target_column(raw_etth1):
    data = load_data(DataConfig(features="MS"))
    batch = next(iter(torch.utils.data.DataLoader(data.train, batch_size=2)))
    _, target = prepare_batch(batch, 48, 96, data.c_out)
    ot = raw_etth1["OT"]
    scaled = (ot - ot.iloc[:8640].mean()) / ot.iloc[:8640].std(ddof=0)
    expected = scaled.iloc[96:192].to_numpy(dtype=np.float32)
    np.testing.assert_allclose(target[0, :, 0].numpy(), expected, atol=1e-5)


def test_features_s_uses_the_target_only(tmp_path):
    path = write_series(tmp_path / "series.csv", 600, columns=("OT", "x", "y"))
    config = DataConfig(
        data_path=str(path), features="S", seq_len=24, label_len=12, pred_len=24
    )
    data = load_data(config)
    assert data.columns == ["OT"] and data.target_columns == ["OT"]
    assert data.train[0][0].shape == (24, 1)


def test_target_is_moved_last_for_m_as_in_the_reference(tmp_path):
    path = write_series(tmp_path / "series.csv", 600, columns=("OT", "x", "y"))
    data = load_data(
        DataConfig(data_path=str(path), seq_len=24, label_len=12, pred_len=24)
    )
    assert data.columns == ["x", "y", "OT"] == data.target_columns
    assert data.target_column_indices == [0, 1, 2]


# Forecasting past the end -----------------------------------------------------------


def test_last_window_uses_the_last_rows_and_future_dates(etth1, raw_etth1):
    (x_enc, x_mark_enc, x_dec, x_mark_dec), future = etth1.last_window()
    frame = raw_etth1[ETT_COLUMNS]
    train = frame.iloc[:8640]
    scaled = ((frame - train.mean()) / train.std(ddof=0)).to_numpy(dtype=np.float32)
    np.testing.assert_allclose(x_enc[0].numpy(), scaled[-96:], atol=1e-5)
    assert x_dec.shape == (1, 144, 7)
    torch.testing.assert_close(x_dec[0, :48], x_enc[0, -48:])
    assert torch.count_nonzero(x_dec[0, 48:]) == 0

    last = pd.Timestamp("2018-06-26 19:00:00")
    assert raw_etth1.index[-1] == last
    assert list(future) == [last + pd.Timedelta(hours=k) for k in range(1, 97)]
    np.testing.assert_allclose(
        x_mark_dec[0, 48:, 0].numpy(), future.hour / 23 - 0.5, atol=1e-6
    )


def test_forecast_inputs_on_a_new_csv_use_the_trained_scaler(etth1, tmp_path):
    new = tmp_path / "new.csv"
    with open(ETTH1) as source:
        new.write_text("".join(source.readlines()[:501]))  # header + 500 rows
    frame = read_csv(new, etth1.config)
    (x_enc, *_), future = forecast_inputs(
        frame, etth1.config, etth1.scaler, etth1.columns
    )
    raw = frame[ETT_COLUMNS].to_numpy()[-96:]
    expected = (raw - etth1.scaler.mean_) / etth1.scaler.scale_
    np.testing.assert_allclose(x_enc[0].numpy(), expected, atol=1e-5)
    assert future[0] == frame.index[-1] + pd.Timedelta(hours=1)


def test_forecast_inputs_refuses_a_frame_missing_model_columns(etth1):
    frame = etth1.frame.drop(columns=["OT"])
    with pytest.raises(DataValidationError, match="OT"):
        forecast_inputs(frame, etth1.config, etth1.scaler, etth1.columns)


def test_loading_etth1_and_building_datasets_is_fast():
    load_data(DataConfig())  # warm imports and caches
    start = time.perf_counter()
    load_data(DataConfig())
    assert time.perf_counter() - start < 1.0


# Configuration -----------------------------------------------------------------------


def test_label_len_above_seq_len_is_refused_naming_both_values():
    with pytest.raises(ValueError) as info:
        DataConfig(seq_len=24, label_len=48)
    assert "label_len=48" in str(info.value) and "seq_len=24" in str(info.value)


def test_pred_len_above_seq_len_is_a_valid_configuration():
    assert DataConfig(seq_len=96, pred_len=720).pred_len == 720


@pytest.mark.parametrize("field", ["seq_len", "label_len", "pred_len"])
@pytest.mark.parametrize("value", [0, -3, 2.5, True])
def test_window_lengths_must_be_positive_ints(field, value):
    with pytest.raises(ValueError, match=field):
        DataConfig(**{field: value})


@pytest.mark.parametrize(
    "field, value",
    [
        ("features", "X"),
        ("split", "random"),
        ("gaps", "drop"),
        ("split_ratios", (0.7, 0.2, 0.2)),
        ("split_ratios", (0.8, 0.2)),
        ("split_ratios", (1.0, 0.0, 0.0)),
    ],
)
def test_invalid_choices_are_refused_naming_the_field(field, value):
    with pytest.raises(ValueError, match=field):
        DataConfig(**{field: value})


def test_freq_is_normalised_and_unknown_freq_refused():
    assert DataConfig(freq="H").freq == "h"
    assert DataConfig(freq="t").freq == "min"
    with pytest.raises(ValueError, match=r"freq.*'hourly'.*15min"):
        DataConfig(freq="hourly")
