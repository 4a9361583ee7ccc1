"""Calendar features ("timeF" time marks) for Autoformer inputs.

Autoformer feeds each time step's calendar position to its embedding as a few numbers
in ``[-0.5, 0.5]`` (hour of day, day of week, ...). Which features are used depends on
the sampling frequency of the series: an hourly series gets hour, weekday, day of month
and day of year; a monthly series only gets the month. The encodings and their formulas
are those of the reference Autoformer implementation.

Frequencies are given either as the reference's one-letter codes (``s, t, h, d, b, w,
m``, where ``m`` is month) or as pandas offset aliases (``15min``, ``3h``, ``D``, ``B``,
``W-MON``, ``MS``, ``ME``, and the old upper-case ``H``/``T``/``S`` that pandas 3 no
longer accepts). :func:`normalize_freq` turns any of them into one canonical pandas 3
alias.

Usage::

    freq = normalize_freq("15min")               # '15min'
    marks = time_features(frame.index, freq)     # (T, n_time_features(freq))
"""

from __future__ import annotations

import re
from typing import Callable

import numpy as np
import pandas as pd
from pandas.tseries import offsets
from pandas.tseries.frequencies import to_offset

__all__ = ["normalize_freq", "time_features", "n_time_features", "VALID_FREQS"]

# Unit spelling (case-sensitive) -> canonical pandas 3 alias.  Upper-case "M" and
# lower-case "m" both mean month, as in the reference; sub-second units are not offered
# because the reference encodes nothing finer than the second.
_UNITS = {
    "s": "s",
    "S": "s",
    "sec": "s",
    "t": "min",
    "T": "min",
    "min": "min",
    "h": "h",
    "H": "h",
    "d": "D",
    "D": "D",
    "b": "B",
    "B": "B",
    "w": "W-SUN",
    "W": "W-SUN",
    "m": "MS",
    "M": "MS",
    "MS": "MS",
    "ME": "ME",
}
_WEEKDAYS = ("MON", "TUE", "WED", "THU", "FRI", "SAT", "SUN")
_FREQ_PATTERN = re.compile(r"^\s*(\d*)\s*([A-Za-z]+)(?:-([A-Za-z]{3}))?\s*$")

VALID_FREQS = (
    "reference codes s, t, h, d, b, w, m (m = month start); pandas aliases s, min, h, "
    "D, B, W (= W-SUN), W-MON ... W-SUN, MS, ME, and the old H, T, S; each may carry "
    "an integer multiple such as 15min, 30min, 3h or 2D"
)


def normalize_freq(freq: str) -> str:
    """Return the canonical pandas 3 offset alias for a frequency string.

    Use it wherever a user-supplied frequency enters the package, so that ``'H'``,
    ``'h'`` and ``'1h'`` all become ``'h'``, ``'t'``/``'T'`` become ``'min'``, ``'w'``
    becomes ``'W-SUN'`` and the reference's month code ``'m'`` becomes ``'MS'`` (month
    start; pass ``'ME'`` for month-end stamps). The result is accepted by
    :func:`pandas.tseries.frequencies.to_offset` without deprecation warnings.

    :param str freq: a reference code (``s, t, h, d, b, w, m``) or a pandas alias,
        optionally with an integer multiple (``15min``, ``3h``).
    :returns: canonical alias such as ``'h'``, ``'15min'``, ``'3h'``, ``'D'``, ``'B'``,
        ``'W-SUN'`` or ``'MS'``.
    :raises ValueError: if the frequency is not one of the supported ones; the message
        names the value and lists the valid choices.
    """
    if not isinstance(freq, str):
        raise ValueError(f"freq must be a string, got {freq!r}; valid: {VALID_FREQS}")
    match = _FREQ_PATTERN.match(freq)
    unit = _UNITS.get(match.group(2)) if match else None
    if unit is None:
        raise ValueError(f"unknown freq {freq!r}; valid: {VALID_FREQS}")
    multiple, anchor = match.group(1), match.group(3)

    if anchor is not None:
        if unit != "W-SUN" or anchor.upper() not in _WEEKDAYS:
            raise ValueError(f"unknown freq {freq!r}; valid: {VALID_FREQS}")
        unit = f"W-{anchor.upper()}"
    if multiple and int(multiple) == 0:
        raise ValueError(f"freq {freq!r} has a zero multiple; valid: {VALID_FREQS}")
    prefix = str(int(multiple)) if multiple and int(multiple) > 1 else ""
    return prefix + unit


def _second_of_minute(index: pd.DatetimeIndex) -> np.ndarray:
    return index.second / 59.0 - 0.5


def _minute_of_hour(index: pd.DatetimeIndex) -> np.ndarray:
    return index.minute / 59.0 - 0.5


def _hour_of_day(index: pd.DatetimeIndex) -> np.ndarray:
    return index.hour / 23.0 - 0.5


def _day_of_week(index: pd.DatetimeIndex) -> np.ndarray:
    return index.day_of_week / 6.0 - 0.5


def _day_of_month(index: pd.DatetimeIndex) -> np.ndarray:
    return (index.day - 1) / 30.0 - 0.5


def _day_of_year(index: pd.DatetimeIndex) -> np.ndarray:
    return (index.day_of_year - 1) / 365.0 - 0.5


def _month_of_year(index: pd.DatetimeIndex) -> np.ndarray:
    return (index.month - 1) / 11.0 - 0.5


def _week_of_year(index: pd.DatetimeIndex) -> np.ndarray:
    week = index.isocalendar().week.to_numpy(dtype=np.float64)
    return (week - 1) / 52.0 - 0.5


_Feature = Callable[[pd.DatetimeIndex], np.ndarray]
_DAILY: tuple[_Feature, ...] = (_day_of_week, _day_of_month, _day_of_year)
_HOURLY = (_hour_of_day,) + _DAILY
_MINUTELY = (_minute_of_hour,) + _HOURLY
_SECONDLY = (_second_of_minute,) + _MINUTELY


def _features_for(freq: str) -> tuple[_Feature, ...]:
    offset = to_offset(normalize_freq(freq))
    if isinstance(offset, offsets.Second):
        return _SECONDLY
    if isinstance(offset, offsets.Minute):
        return _MINUTELY
    if isinstance(offset, offsets.Hour):
        return _HOURLY
    if isinstance(offset, (offsets.Day, offsets.BusinessDay)):
        return _DAILY
    if isinstance(offset, offsets.Week):
        return (_day_of_month, _week_of_year)
    return (_month_of_year,)


def time_features(dates: pd.DatetimeIndex, freq: str) -> np.ndarray:
    """Encode timestamps as the reference Autoformer's calendar features.

    Use it to build the time marks that accompany every window of values. Each feature
    is scaled to ``[-0.5, 0.5]``: ``SecondOfMinute = second/59 - 0.5``, ``MinuteOfHour
    = minute/59 - 0.5``, ``HourOfDay = hour/23 - 0.5``, ``DayOfWeek = weekday/6 -
    0.5`` (Monday = 0), ``DayOfMonth = (day-1)/30 - 0.5``, ``DayOfYear =
    (dayofyear-1)/365 - 0.5``, ``MonthOfYear = (month-1)/11 - 0.5`` and ``WeekOfYear =
    (ISO week-1)/52 - 0.5``. The columns, in order, are: seconds-level: second, minute,
    hour, weekday, day of month, day of year; minute-level: the same without second;
    hourly: hour, weekday, day of month, day of year; daily and business-daily:
    weekday, day of month, day of year; weekly: day of month, week of year; monthly:
    month of year.

    :param pandas.DatetimeIndex dates: the timestamps, shape ``(T,)``.
    :param str freq: sampling frequency, anything :func:`normalize_freq` accepts.
    :returns: float32 array of shape ``(T, n_time_features(freq))``.
    """
    index = pd.DatetimeIndex(dates)
    columns = [
        np.asarray(feature(index), dtype=np.float64) for feature in _features_for(freq)
    ]
    return np.stack(columns, axis=1).astype(np.float32)


def n_time_features(freq: str) -> int:
    """Return the number of calendar features :func:`time_features` makes for ``freq``.

    Use it to size the time embedding of a model; it is computed by encoding one
    timestamp with :func:`time_features`, so the two can never disagree.

    :param str freq: sampling frequency, anything :func:`normalize_freq` accepts.
    """
    one = pd.DatetimeIndex([pd.Timestamp("2000-01-01")])
    return int(time_features(one, freq).shape[1])
