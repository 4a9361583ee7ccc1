"""Specification of the calendar features (reference Autoformer "timeF" encoding)."""

import warnings

import numpy as np
import pandas as pd
import pytest
from pandas.tseries.frequencies import to_offset

from pyro_autoformer.timefeatures import n_time_features, normalize_freq, time_features


def one(timestamp: str) -> pd.DatetimeIndex:
    return pd.DatetimeIndex([pd.Timestamp(timestamp)])


@pytest.mark.parametrize(
    "given, canonical",
    [
        ("h", "h"),
        ("H", "h"),
        ("1h", "h"),
        ("3H", "3h"),
        ("3h", "3h"),
        ("t", "min"),
        ("T", "min"),
        ("min", "min"),
        ("15min", "15min"),
        ("30T", "30min"),
        ("s", "s"),
        ("S", "s"),
        ("d", "D"),
        ("D", "D"),
        ("b", "B"),
        ("B", "B"),
        ("w", "W-SUN"),
        ("W", "W-SUN"),
        ("W-MON", "W-MON"),
        ("m", "MS"),
        ("M", "MS"),
        ("MS", "MS"),
        ("ME", "ME"),
    ],
)
def test_normalize_freq_maps_reference_codes_and_pandas_aliases(given, canonical):
    assert normalize_freq(given) == canonical


@pytest.mark.parametrize(
    "freq", ["h", "H", "15min", "30T", "3h", "d", "b", "w", "m", "t", "s", "ME"]
)
def test_normalized_freq_is_accepted_by_pandas3_without_warnings(freq):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        to_offset(normalize_freq(freq))


@pytest.mark.parametrize("freq", ["fortnight", "x", "0h", "ms", "QE", "W-XYZ", ""])
def test_unknown_freq_is_refused_naming_it_and_listing_valid_choices(freq):
    with pytest.raises(ValueError) as info:
        normalize_freq(freq)
    message = str(info.value)
    assert repr(freq) in message
    for choice in ("15min", "3h", "MS", "W-SUN"):
        assert choice in message


def test_unknown_freq_is_refused_by_time_features_too():
    with pytest.raises(ValueError, match="fortnight"):
        time_features(one("2020-01-01"), "fortnight")


def test_hourly_features_of_2016_07_01_1300_by_hand():
    # Friday (weekday 4); 1 July 2016 is day 183 of the leap year 2016.
    expected = [13 / 23 - 0.5, 4 / 6 - 0.5, 0 / 30 - 0.5, 182 / 365 - 0.5]
    got = time_features(one("2016-07-01 13:00"), "h")
    assert got.shape == (1, 4)
    np.testing.assert_allclose(got[0], expected, atol=1e-7)


def test_second_level_features_by_hand():
    # Sunday 14 March 2021 15:09:26; day 31 + 28 + 14 = 73 of the year.
    expected = [
        26 / 59 - 0.5,
        9 / 59 - 0.5,
        15 / 23 - 0.5,
        6 / 6 - 0.5,
        13 / 30 - 0.5,
        72 / 365 - 0.5,
    ]
    got = time_features(one("2021-03-14 15:09:26"), "s")
    np.testing.assert_allclose(got[0], expected, atol=1e-7)


def test_fifteen_minute_features_on_the_last_slot_of_a_leap_year():
    # Thursday 31 December 2020 23:45, day 366.
    expected = [45 / 59 - 0.5, 0.5, 3 / 6 - 0.5, 0.5, 365 / 365 - 0.5]
    got = time_features(one("2020-12-31 23:45"), "15min")
    np.testing.assert_allclose(got[0], expected, atol=1e-7)


def test_business_daily_features_on_29_february():
    # Thursday 29 February 2024: day 29 of the month, day 60 of the year.
    expected = [3 / 6 - 0.5, 28 / 30 - 0.5, 59 / 365 - 0.5]
    got = time_features(one("2024-02-29"), "b")
    np.testing.assert_allclose(got[0], expected, atol=1e-7)


def test_weekly_features_use_the_iso_week():
    # Sunday 3 January 2021 is in ISO week 53 of 2020; 10 January is in week 1.
    got = time_features(pd.DatetimeIndex(["2021-01-03", "2021-01-10"]), "w")
    expected = [[2 / 30 - 0.5, 52 / 52 - 0.5], [9 / 30 - 0.5, 0 / 52 - 0.5]]
    np.testing.assert_allclose(got, expected, atol=1e-7)


def test_monthly_features_are_month_of_year():
    got = time_features(
        pd.DatetimeIndex(["2020-01-01", "2020-06-01", "2020-12-01"]), "m"
    )
    np.testing.assert_allclose(got[:, 0], [-0.5, 5 / 11 - 0.5, 0.5], atol=1e-7)


@pytest.mark.parametrize(
    "freq, width",
    [
        ("s", 6),
        ("t", 5),
        ("15min", 5),
        ("30min", 5),
        ("h", 4),
        ("3h", 4),
        ("d", 3),
        ("b", 3),
        ("w", 2),
        ("m", 1),
    ],
)
def test_feature_width_per_frequency(freq, width):
    dates = pd.date_range("2020-01-01", periods=7, freq="D")
    assert time_features(dates, freq).shape == (7, width)
    assert n_time_features(freq) == width


def test_features_are_float32_and_within_half_unit_over_a_leap_year():
    dates = pd.date_range("2020-01-01", "2020-12-31 23:00", freq="h")
    got = time_features(dates, "h")
    assert got.dtype == np.float32
    assert got.min() == -0.5
    assert got.max() == 0.5
