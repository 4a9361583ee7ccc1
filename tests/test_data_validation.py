"""Specification of the CSV checks: each bad input is refused with a clear message."""

import logging

import numpy as np
import pandas as pd
import pytest

from pyro_autoformer.data import DataConfig, DataValidationError, load_data, read_csv


def hourly_rows(n, start="2021-01-01 00:00:00"):
    dates = pd.date_range(start, periods=n, freq="h")
    return [f"{d:%Y-%m-%d %H:%M:%S},{i}.5,{2 * i}" for i, d in enumerate(dates)]


def write(tmp_path, header, rows, name="data.csv", encoding="utf-8"):
    path = tmp_path / name
    path.write_text("\n".join([header, *rows]) + "\n", encoding=encoding)
    return path


def refused(path, **config):
    with pytest.raises(DataValidationError) as info:
        read_csv(path, DataConfig(**config))
    return str(info.value)


def test_validation_error_is_a_value_error():
    assert issubclass(DataValidationError, ValueError)


def test_a_clean_file_loads_in_data_units(tmp_path):
    frame = read_csv(write(tmp_path, "date,a,OT", hourly_rows(4)), DataConfig())
    assert list(frame.columns) == ["a", "OT"]
    assert frame.index.name == "date"
    assert frame.index[3] == pd.Timestamp("2021-01-01 03:00")
    np.testing.assert_array_equal(frame["a"].to_numpy(), [0.5, 1.5, 2.5, 3.5])
    assert frame.dtypes.tolist() == [np.float64, np.float64]


def test_missing_date_column_lists_columns_and_suggests_the_date_like_one(tmp_path):
    path = write(tmp_path, "timestamp,a,OT", hourly_rows(4))
    message = refused(path)
    assert "'date'" in message
    assert "['timestamp', 'a', 'OT']" in message
    assert "date_column='timestamp'" in message


def test_date_column_under_another_name_loads_when_configured(tmp_path):
    path = write(tmp_path, "timestamp,a,OT", hourly_rows(4))
    frame = read_csv(path, DataConfig(date_column="timestamp"))
    assert len(frame) == 4


def test_byte_order_mark_in_the_header_loads(tmp_path):
    path = write(tmp_path, "date,a,OT", hourly_rows(4), encoding="utf-8-sig")
    assert path.read_bytes().startswith(b"\xef\xbb\xbf")
    frame = read_csv(path, DataConfig())
    assert list(frame.columns) == ["a", "OT"]


def test_text_column_is_refused_naming_it(tmp_path):
    rows = [f"{r},ST{i % 3}" for i, r in enumerate(hourly_rows(6))]
    message = refused(write(tmp_path, "date,a,OT,station_id", rows))
    assert "station_id" in message
    assert "['date', 'a', 'OT', 'station_id']" in message


def test_text_column_is_refused_even_when_features_s_ignores_it(tmp_path):
    rows = [f"{r},ST{i % 3}" for i, r in enumerate(hourly_rows(6))]
    message = refused(write(tmp_path, "date,a,OT,station_id", rows), features="S")
    assert "station_id" in message


def test_stray_text_cell_in_a_numeric_column_names_column_row_and_value(tmp_path):
    rows = hourly_rows(6)
    rows[3] = "2021-01-01 03:00:00,n/a?,6"
    message = refused(write(tmp_path, "date,a,OT", rows))
    assert "'a'" in message and "row 4" in message and "'n/a?'" in message


@pytest.mark.parametrize("features", ["S", "MS"])
def test_missing_target_is_refused_naming_it_and_listing_columns(tmp_path, features):
    path = write(tmp_path, "date,a,b", hourly_rows(4))
    message = refused(path, features=features, target="OT")
    assert "'OT'" in message and "['date', 'a', 'b']" in message


def test_features_m_does_not_need_the_target_column(tmp_path):
    frame = read_csv(write(tmp_path, "date,a,b", hourly_rows(4)), DataConfig())
    assert list(frame.columns) == ["a", "b"]


def test_blank_cell_is_refused_naming_column_and_row(tmp_path):
    rows = hourly_rows(6)
    rows[2] = "2021-01-01 02:00:00,,4"
    message = refused(write(tmp_path, "date,a,OT", rows))
    assert "'a'" in message and "row 3" in message
    assert "2021-01-01 02:00:00" in message


def test_nan_cell_is_refused_naming_column_and_row(tmp_path):
    rows = hourly_rows(6)
    rows[4] = "2021-01-01 04:00:00,4.5,NaN"
    message = refused(write(tmp_path, "date,a,OT", rows))
    assert "'OT'" in message and "row 5" in message


def test_infinite_cell_is_refused_naming_column_and_row(tmp_path):
    rows = hourly_rows(6)
    rows[1] = "2021-01-01 01:00:00,-inf,2"
    message = refused(write(tmp_path, "date,a,OT", rows))
    assert "infinite" in message and "'a'" in message and "row 2" in message


def test_constant_column_loads_and_warns_when_scaled(tmp_path, caplog):
    rows = [f"{r},7.25" for r in hourly_rows(300)]
    path = write(tmp_path, "date,a,OT,flat", rows)
    config = DataConfig(data_path=str(path), seq_len=24, label_len=12, pred_len=24)
    with caplog.at_level(logging.WARNING, logger="pyro_autoformer.data"):
        data = load_data(config)
    flat = data.columns.index("flat")
    assert data.scaler.scale_[flat] == 1.0
    assert "flat" in caplog.text
    assert np.all(data.train[0][0][:, flat].numpy() == 0.0)


def test_unsorted_timestamps_are_refused_at_the_first_step_back(tmp_path):
    rows = hourly_rows(6)
    rows[3], rows[4] = rows[4], rows[3]
    message = refused(write(tmp_path, "date,a,OT", rows))
    assert "not sorted" in message
    assert "2021-01-01 03:00:00" in message and "row 5" in message


def test_duplicate_timestamp_is_refused_naming_it(tmp_path):
    rows = hourly_rows(6)
    rows.insert(3, rows[2])
    message = refused(write(tmp_path, "date,a,OT", rows))
    assert "duplicate" in message and "2021-01-01 02:00:00" in message


def test_gap_is_refused_naming_the_timestamps_before_and_after(tmp_path):
    rows = hourly_rows(8)
    del rows[4:6]
    message = refused(write(tmp_path, "date,a,OT", rows))
    assert "gap" in message
    assert "2021-01-01 03:00:00" in message and "2021-01-01 06:00:00" in message


def test_gap_is_filled_by_linear_interpolation_when_asked(tmp_path, caplog):
    rows = hourly_rows(8)
    del rows[4:6]  # drop 04:00 and 05:00; a goes 3.5 -> 6.5, OT 6 -> 12
    path = write(tmp_path, "date,a,OT", rows)
    with caplog.at_level(logging.WARNING, logger="pyro_autoformer.data"):
        frame = read_csv(path, DataConfig(gaps="interpolate"))
    assert len(frame) == 8
    np.testing.assert_allclose(frame["a"].to_numpy()[3:7], [3.5, 4.5, 5.5, 6.5])
    np.testing.assert_allclose(frame["OT"].to_numpy()[3:7], [6.0, 8.0, 10.0, 12.0])
    assert "filled 2 missing timestamps" in caplog.text


def test_gap_against_a_15_minute_frequency_is_detected(tmp_path):
    dates = pd.date_range("2021-01-01", periods=6, freq="15min").delete(2)
    rows = [f"{d:%Y-%m-%d %H:%M:%S},1,2" for d in dates]
    message = refused(write(tmp_path, "date,a,OT", rows), freq="15min")
    assert "2021-01-01 00:15:00" in message and "2021-01-01 00:45:00" in message


def test_data_finer_than_the_declared_freq_is_refused_as_off_grid(tmp_path):
    dates = pd.date_range("2021-01-01", periods=8, freq="15min")
    rows = [f"{d:%Y-%m-%d %H:%M:%S},1,2" for d in dates]
    message = refused(write(tmp_path, "date,a,OT", rows), freq="h")
    assert "not on the grid of freq='h'" in message
    assert "2021-01-01 00:15:00" in message
    assert "interpolate" not in message


def test_off_grid_timestamp_after_a_gap_is_refused_even_with_interpolation(tmp_path):
    rows = hourly_rows(3) + ["2021-01-01 04:30:00,1,1", "2021-01-01 05:30:00,1,1"]
    message = refused(write(tmp_path, "date,a,OT", rows), gaps="interpolate")
    assert "2021-01-01 04:30:00" in message and "grid" in message


def test_weekly_data_on_another_weekday_suggests_the_anchor(tmp_path):
    dates = pd.date_range("2024-01-01", periods=5, freq="W-MON")
    rows = [f"{d:%Y-%m-%d},1,2" for d in dates]
    message = refused(write(tmp_path, "date,a,OT", rows), freq="w")
    assert "W-MON" in message


def test_business_daily_series_skips_weekends_without_a_gap(tmp_path):
    dates = pd.date_range("2024-01-01", periods=10, freq="B")
    rows = [f"{d:%Y-%m-%d},1,2" for d in dates]
    frame = read_csv(write(tmp_path, "date,a,OT", rows), DataConfig(freq="b"))
    assert len(frame) == 10


def test_unparseable_date_is_refused_naming_row_and_value(tmp_path):
    rows = hourly_rows(6)
    rows[4] = "not a date," + rows[4].split(",", 1)[1]
    message = refused(write(tmp_path, "date,a,OT", rows))
    assert "'not a date'" in message and "row 5" in message


def test_blank_date_is_refused_naming_the_row(tmp_path):
    rows = hourly_rows(6)
    rows[1] = "," + rows[1].split(",", 1)[1]
    message = refused(write(tmp_path, "date,a,OT", rows))
    assert "blank" in message and "row 2" in message


def test_numeric_date_column_is_refused(tmp_path):
    rows = [f"{i},{i},{i}" for i in range(5)]
    message = refused(write(tmp_path, "date,a,OT", rows))
    assert "'date'" in message and "numbers" in message


def test_empty_file_is_refused(tmp_path):
    path = tmp_path / "empty.csv"
    path.write_text("")
    assert "empty" in refused(path)


def test_header_only_file_is_refused(tmp_path):
    assert "no data rows" in refused(write(tmp_path, "date,a,OT", []))


def test_missing_file_raises_file_not_found(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere.csv"):
        read_csv(tmp_path / "nowhere.csv", DataConfig())
