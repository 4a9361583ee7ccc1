"""Data pipeline: CSV file -> validated frame -> train/val/test split -> scaled windows.

This module turns a CSV of timestamped numeric columns into the four tensors an
Autoformer forward pass takes, following the reference Autoformer datasets
(``Dataset_ETT_hour``, ``Dataset_ETT_minute``, ``Dataset_Custom``):

1. :func:`read_csv` reads the file and refuses, with a :class:`DataValidationError`
   naming the column, row or timestamp, anything the model cannot use: a missing date
   column, unparseable dates, text columns, NaN/inf/blank cells, unsorted or duplicate
   timestamps and gaps against the declared frequency.
2. The rows are split into train, val and test (the ETT borders for the ETT benchmark
   files, ratios for every other file); val and test start ``seq_len`` rows before
   their own first forecast row so that their first window has a full context.
3. A :class:`StandardScaler` is fitted on the train rows only and applied to all rows.
4. :class:`WindowDataset` serves sliding windows ``(x_enc, x_mark_enc, y, y_mark)``
   and :func:`prepare_batch` turns a collated batch into model inputs and the target.

Usage::

    data = load_data(DataConfig(features="MS", seq_len=96, pred_len=720))
    loader = torch.utils.data.DataLoader(data.train, batch_size=32, shuffle=True)
    for batch in loader:
        inputs, target = prepare_batch(batch, 48, 720, data.c_out)
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Union

import numpy as np
import pandas as pd
import torch
from pandas.tseries import offsets
from pandas.tseries.frequencies import to_offset

from .timefeatures import n_time_features, normalize_freq, time_features

__all__ = [
    "DataValidationError",
    "DataConfig",
    "StandardScaler",
    "WindowDataset",
    "ForecastData",
    "prepare_batch",
    "read_csv",
    "validate_frame",
    "forecast_inputs",
    "split_borders",
    "load_data",
    "PACKAGED_DATASET",
    "read_configured_csv",
]

logger = logging.getLogger(__name__)

PACKAGED_DATASET = "ETTh1.csv"
FEATURES = ("M", "S", "MS")
SPLITS = ("auto", "ett", "ratio")
GAP_POLICIES = ("raise", "interpolate")
SPLIT_NAMES = ("train", "val", "test")

# ETT benchmark files and the rows per day of their native frequency.
_ETT_FILES = {"ETTh1": "h", "ETTh2": "h", "ETTm1": "15min", "ETTm2": "15min"}
_ETT_ROWS_PER_DAY = {"h": 24, "15min": 96}

ArrayLike = Union[np.ndarray, torch.Tensor]


class DataValidationError(ValueError):
    """A CSV file or frame that the data pipeline cannot use.

    Raised before any training work, with a message naming what is wrong: the column,
    the row (1-based data row, the header not counted) or the offending timestamp.
    """


@dataclass(frozen=True)
class DataConfig:
    """Where the data comes from and how it is split, scaled and windowed.

    Use one per experiment; it is validated once, here, so that every mistake that can
    be seen without reading the file (``label_len > seq_len``, an unknown frequency,
    ratios that do not sum to one) is refused before any work.

    :param data_path: CSV file to read; ``None`` reads the packaged ETTh1 file.
    :param str features: ``"M"`` (all columns in, all out), ``"S"`` (the target column
        in and out) or ``"MS"`` (all columns in, the target out).
    :param str target: name of the target column (used by ``S`` and ``MS``; with ``M``
        it is only moved to the last position, as in the reference).
    :param str freq: sampling frequency, anything
        :func:`~pyro_autoformer.timefeatures.normalize_freq` accepts; it is stored in
        its canonical form (``'H'`` becomes ``'h'``).
    :param int seq_len: encoder context length in rows.
    :param int label_len: rows of known history the decoder starts from; at most
        ``seq_len``.
    :param int pred_len: forecast horizon in rows; may exceed ``seq_len``.
    :param str date_column: name of the timestamp column.
    :param str split: ``"auto"`` (ETT borders for files named ETTh1/ETTh2/ETTm1/ETTm2,
        ratios otherwise), ``"ett"`` (force the ETT borders) or ``"ratio"``.
    :param tuple split_ratios: train, val and test fractions for the ratio split;
        positive and summing to one. Only train and test are rounded down; val gets the
        rest, as in the reference ``Dataset_Custom``.
    :param bool scale: standardise every column with the train rows' mean and
        population standard deviation; when ``False`` the scaler is the identity.
    :param str gaps: ``"raise"`` refuses a series with missing timestamps;
        ``"interpolate"`` reindexes it to the regular grid of ``freq`` between its first
        and last timestamp and fills the new rows by linear interpolation, logging a
        warning that counts the filled rows.
    """

    data_path: str | None = None
    features: str = "M"
    target: str = "OT"
    freq: str = "h"
    seq_len: int = 96
    label_len: int = 48
    pred_len: int = 96
    date_column: str = "date"
    split: str = "auto"
    split_ratios: tuple = (0.7, 0.1, 0.2)
    scale: bool = True
    gaps: str = "raise"

    def __post_init__(self):
        if self.data_path is not None:
            if not isinstance(self.data_path, (str, os.PathLike)):
                raise ValueError(
                    f"data_path must be a path or None, got {self.data_path!r}"
                )
            object.__setattr__(self, "data_path", os.fspath(self.data_path))
        for name in ("seq_len", "label_len", "pred_len"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
                raise ValueError(f"{name} must be a positive int, got {value!r}")
            if value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
            object.__setattr__(self, name, int(value))
        if self.label_len > self.seq_len:
            raise ValueError(
                f"label_len={self.label_len} must not exceed seq_len={self.seq_len}: "
                "the decoder's known rows are the last label_len rows of the encoder "
                "context"
            )
        if self.features not in FEATURES:
            raise ValueError(
                f"features must be one of {FEATURES}, got {self.features!r}"
            )
        if self.split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {self.split!r}")
        if self.gaps not in GAP_POLICIES:
            raise ValueError(f"gaps must be one of {GAP_POLICIES}, got {self.gaps!r}")
        for name in ("target", "date_column"):
            value = getattr(self, name)
            if not isinstance(value, str) or not value:
                raise ValueError(f"{name} must be a non-empty string, got {value!r}")
        if not isinstance(self.scale, (bool, np.bool_)):
            raise ValueError(f"scale must be a bool, got {self.scale!r}")

        ratios = self.split_ratios
        try:
            ratios = tuple(float(r) for r in ratios)
        except (TypeError, ValueError):
            raise ValueError(
                f"split_ratios must be three numbers, got {self.split_ratios!r}"
            ) from None
        if len(ratios) != 3 or any(not 0.0 < r < 1.0 for r in ratios):
            raise ValueError(
                "split_ratios must be three fractions in (0, 1) for train, val and "
                f"test, got {self.split_ratios!r}"
            )
        if abs(sum(ratios) - 1.0) > 1e-6:
            raise ValueError(
                f"split_ratios must sum to 1, got {self.split_ratios!r} "
                f"(sum {sum(ratios):g})"
            )
        object.__setattr__(self, "split_ratios", ratios)

        try:
            freq = normalize_freq(self.freq)
        except ValueError as error:
            raise ValueError(f"freq: {error}") from None
        object.__setattr__(self, "freq", freq)

    @property
    def window_len(self) -> int:
        """Rows one window spans: ``seq_len + pred_len``."""
        return self.seq_len + self.pred_len


#: Relative spread below which a column counts as constant for scaling.
_NEGLIGIBLE_SPREAD = 1e-7


class StandardScaler:
    """Per-column standardisation ``(x - mean_) / scale_`` fitted on training rows.

    Use it to put every channel on a unit scale before training and to map forecasts
    back to data units. Like scikit-learn's ``StandardScaler``, ``scale_`` is the
    population standard deviation (``ddof=0``). A column that is constant in the fitted
    rows gets ``scale_ = 1`` (so it is only centred, never divided by zero) and a
    logged warning naming it.

    Usage::

        scaler = StandardScaler().fit(train_values, column_names=["HUFL", "OT"])
        z = scaler.transform(values)
        y = scaler.inverse_transform(z_target, columns=[1])  # OT's own statistics

    :param mean: optional per-column means, to rebuild a fitted scaler.
    :param scale: optional per-column scales, to rebuild a fitted scaler.
    :param column_names: optional column names, used in messages and ``to_dict``.
    """

    def __init__(self, mean=None, scale=None, column_names=None):
        self.mean_: np.ndarray | None = None
        self.scale_: np.ndarray | None = None
        self.column_names: list | None = None
        if (mean is None) != (scale is None):
            raise ValueError("mean and scale must be given together")
        if mean is not None:
            self._set(mean, scale, column_names)

    def _set(self, mean, scale, column_names) -> None:
        mean = np.asarray(mean, dtype=np.float64).reshape(-1)
        scale = np.asarray(scale, dtype=np.float64).reshape(-1)
        if mean.shape != scale.shape:
            raise ValueError(f"mean has {mean.size} columns but scale has {scale.size}")
        if not (np.all(np.isfinite(mean)) and np.all(np.isfinite(scale))):
            raise ValueError("mean and scale must be finite")
        if np.any(scale <= 0):
            raise ValueError(f"scale must be positive, got {scale.tolist()}")
        if column_names is not None:
            column_names = [str(c) for c in column_names]
            if len(column_names) != mean.size:
                raise ValueError(
                    f"{len(column_names)} column names for {mean.size} columns"
                )
        self.mean_, self.scale_, self.column_names = mean, scale, column_names

    @classmethod
    def identity(cls, n_columns: int, column_names=None) -> StandardScaler:
        """Return a scaler with mean 0 and scale 1, whose transforms change nothing.

        :param int n_columns: number of columns.
        :param column_names: optional column names.
        """
        return cls(np.zeros(n_columns), np.ones(n_columns), column_names)

    @property
    def n_columns(self) -> int:
        """Number of columns the scaler was fitted on."""
        self._check_fitted()
        return int(self.mean_.size)

    def fit(self, values: np.ndarray, column_names=None) -> StandardScaler:
        """Compute per-column mean and population standard deviation.

        :param numpy.ndarray values: training rows, shape ``(rows, columns)``.
        :param column_names: optional names of the columns, for messages.
        :returns: ``self``.
        """
        values = np.asarray(values, dtype=np.float64)
        if values.ndim != 2 or values.shape[0] == 0:
            raise ValueError(
                f"fit needs a non-empty (rows, columns) array, got shape {values.shape}"
            )
        if not np.all(np.isfinite(values)):
            raise ValueError("fit needs finite values")
        mean = values.mean(axis=0)
        std = values.std(axis=0, ddof=0)

        # Constant columns, and columns whose spread is below float32 resolution
        # (std under 1e-7 of max(|mean|, 1)): dividing by such a std would blow
        # rounding noise up to unit size, so they are centred but not scaled.
        constant = (values.max(axis=0) == values.min(axis=0)) | (
            std <= _NEGLIGIBLE_SPREAD * np.maximum(np.abs(mean), 1.0)
        )
        names = column_names if column_names is not None else range(values.shape[1])
        for name, is_constant, spread in zip(names, constant, std):
            if is_constant:
                logger.warning(
                    "column %r is constant in the fitted rows (std %.3g); it is "
                    "centred but not scaled (scale_ = 1)",
                    name,
                    spread,
                )
        std = np.where(constant, 1.0, std)
        self._set(mean, std, column_names)
        return self

    def _check_fitted(self) -> None:
        if self.mean_ is None:
            raise RuntimeError("StandardScaler is not fitted; call fit first")

    def _stats(self, values: ArrayLike, columns):
        self._check_fitted()
        if columns is None:
            mean, scale = self.mean_, self.scale_
        else:
            index = np.asarray(columns, dtype=np.int64).reshape(-1)
            if np.any(index < -self.n_columns) or np.any(index >= self.n_columns):
                raise IndexError(
                    f"columns {list(columns)} out of range for {self.n_columns} columns"
                )
            mean, scale = self.mean_[index], self.scale_[index]
        if values.shape[-1] != mean.size:
            raise ValueError(
                f"values have {values.shape[-1]} columns in the last dimension but "
                f"{mean.size} statistics were selected"
            )
        if isinstance(values, torch.Tensor):
            dtype = values.dtype if values.is_floating_point() else torch.float32
            options = {"dtype": dtype, "device": values.device}
            return (
                values.to(dtype),
                torch.as_tensor(mean, **options),
                torch.as_tensor(scale, **options),
            )
        values = np.asarray(values)
        dtype = values.dtype if np.issubdtype(values.dtype, np.floating) else np.float64
        return values.astype(dtype, copy=False), mean.astype(dtype), scale.astype(dtype)

    def transform(self, values: ArrayLike, columns=None) -> ArrayLike:
        """Standardise values: ``(values - mean_) / scale_``.

        :param values: numpy array or torch tensor of shape ``(..., n_selected)``.
        :param columns: optional list of column indices whose statistics to use, in the
            order of the last dimension of ``values``; all columns when ``None``.
        :returns: same type, shape and floating dtype as ``values``.
        """
        values, mean, scale = self._stats(values, columns)
        return (values - mean) / scale

    def inverse_transform(self, values: ArrayLike, columns=None) -> ArrayLike:
        """Map standardised values back to data units: ``values * scale_ + mean_``.

        Use ``columns`` for outputs that hold only some of the fitted columns, e.g. the
        target alone with ``features='MS'``: ``columns=[index of the target]``.

        :param values: numpy array or torch tensor of shape ``(..., n_selected)``, e.g.
            ``(batch, pred_len, channels)``.
        :param columns: optional list of column indices, in the order of the last
            dimension of ``values``; all columns when ``None``.
        :returns: same type, shape and floating dtype as ``values``.
        """
        values, mean, scale = self._stats(values, columns)
        return values * scale + mean

    def to_dict(self) -> dict:
        """Return the fitted statistics as plain JSON-serialisable lists."""
        self._check_fitted()
        return {
            "mean": [float(v) for v in self.mean_],
            "scale": [float(v) for v in self.scale_],
            "column_names": None
            if self.column_names is None
            else list(self.column_names),
        }

    @classmethod
    def from_dict(cls, d: dict) -> StandardScaler:
        """Rebuild a scaler from :meth:`to_dict` output.

        :param dict d: a dict with ``mean`` and ``scale`` lists (and optionally
            ``column_names``).
        """
        return cls(d["mean"], d["scale"], d.get("column_names"))

    def __repr__(self) -> str:
        if self.mean_ is None:
            return "StandardScaler(unfitted)"
        return f"StandardScaler(n_columns={self.n_columns})"


class WindowDataset(torch.utils.data.Dataset):
    """Sliding forecast windows over one split of a scaled series.

    Use it as the dataset of a :class:`torch.utils.data.DataLoader`. Window ``i`` starts
    at row ``start + i`` and yields, as in the reference ``Dataset_ETT_hour``:

    - ``x_enc``: the ``seq_len`` context rows, shape ``(seq_len, C)``;
    - ``x_mark_enc``: their time marks, shape ``(seq_len, M)``;
    - ``y``: ``label_len + pred_len`` rows starting ``seq_len - label_len`` rows after
      the window start (the last ``label_len`` context rows, then the ``pred_len``
      rows to forecast), shape ``(label_len + pred_len, C)``;
    - ``y_mark``: their time marks, shape ``(label_len + pred_len, M)``.

    The arrays are shared with the other splits, not copied.

    :param numpy.ndarray values: scaled values of the whole series, shape ``(T, C)``.
    :param numpy.ndarray marks: time marks of the whole series, shape ``(T, M)``.
    :param pandas.DatetimeIndex dates: timestamps of the whole series, length ``T``.
    :param int start: first row of the split (inclusive).
    :param int end: last row of the split (exclusive).
    :param int seq_len: encoder context length.
    :param int label_len: decoder known rows.
    :param int pred_len: forecast horizon.
    :param str name: split name used in messages.
    :raises ValueError: if the split holds fewer than ``seq_len + pred_len`` rows.
    """

    def __init__(
        self,
        values: np.ndarray,
        marks: np.ndarray,
        dates: pd.DatetimeIndex,
        start: int,
        end: int,
        *,
        seq_len: int,
        label_len: int,
        pred_len: int,
        name: str = "split",
    ):
        values = np.asarray(values, dtype=np.float32)
        marks = np.asarray(marks, dtype=np.float32)
        if values.ndim != 2 or marks.ndim != 2:
            raise ValueError(
                f"values and marks must be 2-d, got shapes {values.shape} and "
                f"{marks.shape}"
            )
        if not values.shape[0] == marks.shape[0] == len(dates):
            raise ValueError(
                f"values ({values.shape[0]} rows), marks ({marks.shape[0]} rows) and "
                f"dates ({len(dates)}) must have the same length"
            )
        if not 0 <= start <= end <= values.shape[0]:
            raise ValueError(
                f"{name} rows [{start}, {end}) out of range for {values.shape[0]} rows"
            )
        if not 1 <= label_len <= seq_len or pred_len < 1:
            raise ValueError(
                f"need 1 <= label_len <= seq_len and pred_len >= 1, got "
                f"label_len={label_len}, seq_len={seq_len}, pred_len={pred_len}"
            )
        _check_split_rows(name, end - start, seq_len, pred_len)

        self.values = torch.from_numpy(values)
        self.marks = torch.from_numpy(marks)
        self.start, self.end = int(start), int(end)
        self.seq_len, self.label_len, self.pred_len = seq_len, label_len, pred_len
        self.name = name
        self.dates = pd.DatetimeIndex(dates[start:end])

    def __len__(self) -> int:
        return self.end - self.start - self.seq_len - self.pred_len + 1

    def _row(self, i: int) -> int:
        n = len(self)
        if i < 0:
            i += n
        if not 0 <= i < n:
            raise IndexError(f"window {i} out of range for {n} windows in {self.name}")
        return self.start + i

    def __getitem__(self, i: int):
        s_begin = self._row(int(i))
        s_end = s_begin + self.seq_len
        r_begin = s_end - self.label_len
        r_end = r_begin + self.label_len + self.pred_len
        return (
            self.values[s_begin:s_end],
            self.marks[s_begin:s_end],
            self.values[r_begin:r_end],
            self.marks[r_begin:r_end],
        )

    def target_dates(self, i: int) -> pd.DatetimeIndex:
        """Return the ``pred_len`` timestamps forecast by window ``i``.

        :param int i: window index.
        """
        first = self._row(int(i)) - self.start + self.seq_len
        return self.dates[first : first + self.pred_len]

    def __repr__(self) -> str:
        return (
            f"WindowDataset({self.name}, rows=[{self.start}, {self.end}), "
            f"windows={len(self)})"
        )


def _check_split_rows(name: str, rows: int, seq_len: int, pred_len: int) -> None:
    needed = seq_len + pred_len
    if rows < needed:
        raise DataValidationError(
            f"the {name} split has {rows} rows, fewer than the {needed} "
            f"(seq_len={seq_len} + pred_len={pred_len}) needed for one window; use a "
            "longer series, shorter seq_len/pred_len or other split_ratios"
        )


def prepare_batch(batch, label_len: int, pred_len: int, c_out: int):
    """Turn a collated batch of windows into model inputs and the forecast target.

    Use it in every training and evaluation loop. The decoder input is the reference
    one: the first ``label_len`` rows of ``y`` followed by ``pred_len`` rows of zeros.

    :param batch: ``(x_enc, x_mark_enc, y, y_mark)`` as collated from a
        :class:`WindowDataset`, shapes ``(batch, seq_len, C)``, ``(batch, seq_len, M)``,
        ``(batch, label_len + pred_len, C)``, ``(batch, label_len + pred_len, M)``.
    :param int label_len: decoder known rows.
    :param int pred_len: forecast horizon.
    :param int c_out: number of output channels; the target is the last ``c_out``
        columns (``C`` for ``M``, 1 for ``S``/``MS`` whose target is the last column).
    :returns: ``((x_enc, x_mark_enc, x_dec, x_mark_dec), target)`` with ``x_dec`` of
        shape ``(batch, label_len + pred_len, C)``, ``x_mark_dec = y_mark`` and target
        of shape ``(batch, pred_len, c_out)``.
    """
    x_enc, x_mark_enc, y, y_mark = batch
    if y.shape[1] != label_len + pred_len:
        raise ValueError(
            f"y has {y.shape[1]} rows but label_len + pred_len = "
            f"{label_len} + {pred_len} = {label_len + pred_len}"
        )
    if not 1 <= c_out <= y.shape[-1]:
        raise ValueError(f"c_out={c_out} must be between 1 and {y.shape[-1]} columns")
    zeros = torch.zeros(
        y.shape[0], pred_len, y.shape[-1], dtype=y.dtype, device=y.device
    )
    x_dec = torch.cat([y[:, :label_len], zeros], dim=1)
    target = y[:, -pred_len:, -c_out:]
    return (x_enc, x_mark_enc, x_dec, y_mark), target


# ---------------------------------------------------------------------------------
# Reading and validating a CSV file.


def _row_label(position: int, dates=None) -> str:
    label = f"row {position + 1}"
    if dates is not None and not pd.isna(dates[position]):
        label += f" ({dates[position]})"
    return label


def _date_like_columns(raw: pd.DataFrame, exclude: str) -> list:
    """Columns whose first values are non-numeric text that parses as timestamps."""
    found = []
    for name in raw.columns:
        if name == exclude or pd.api.types.is_numeric_dtype(raw[name]):
            continue
        head = raw[name].dropna().astype(str).head(20)
        if head.empty:
            continue
        parsed = pd.to_datetime(head, errors="coerce", format="mixed")
        if parsed.notna().all():
            found.append(name)
    return found


def _parse_dates(raw: pd.DataFrame, column: str) -> pd.DatetimeIndex:
    text = raw[column]
    if pd.api.types.is_numeric_dtype(text):
        raise DataValidationError(
            f"date column {column!r} holds numbers ({text.iloc[0]!r} in row 1), not "
            "timestamps; write the dates as text such as '2016-07-01 00:00:00'"
        )
    blank = text.isna() | (text.astype(str).str.strip() == "")
    if blank.any():
        row = int(np.flatnonzero(blank.to_numpy())[0])
        raise DataValidationError(f"date column {column!r} is blank in row {row + 1}")
    try:
        dates = pd.to_datetime(text, errors="coerce")
    except (ValueError, TypeError) as error:
        raise DataValidationError(
            f"cannot parse date column {column!r}: {error}"
        ) from None
    bad = dates.isna().to_numpy()
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        raise DataValidationError(
            f"cannot parse date {text.iloc[row]!r} in row {row + 1} of column "
            f"{column!r} (the format was inferred from the first rows)"
        )
    return pd.DatetimeIndex(dates, name=column)


def _numeric_values(
    raw: pd.DataFrame, dates: pd.DatetimeIndex, found: list
) -> pd.DataFrame:
    """Convert the value columns to float64, refusing text and non-finite cells."""
    text_columns, converted = [], {}
    for name in raw.columns:
        column = raw[name]
        if pd.api.types.is_bool_dtype(column):
            text_columns.append(name)
            continue
        if pd.api.types.is_numeric_dtype(column):
            converted[name] = column.astype(np.float64)
            continue
        numbers = pd.to_numeric(column, errors="coerce")
        stray = column.notna() & numbers.isna()
        if stray.all() or stray.sum() > len(column) // 2:
            text_columns.append(name)
            continue
        row = int(np.flatnonzero(stray.to_numpy())[0])
        raise DataValidationError(
            f"column {name!r} has the non-numeric value {column.iloc[row]!r} in "
            f"{_row_label(row, dates)}"
        )
    if text_columns:
        raise DataValidationError(
            f"non-numeric columns {text_columns}: every column other than the date "
            f"column must hold numbers; columns found: {found}. Drop the "
            "text columns (e.g. a station id) from the file"
        )

    frame = pd.DataFrame(
        {name: column.to_numpy() for name, column in converted.items()}, index=dates
    )
    values = frame.to_numpy()
    bad = ~np.isfinite(values)
    if bad.any():
        row, col = (int(v) for v in np.argwhere(bad)[0])
        what = "blank or NaN" if np.isnan(values[row, col]) else "infinite"
        raise DataValidationError(
            f"column {frame.columns[col]!r} has a {what} value in "
            f"{_row_label(row, dates)}; fill or drop it before loading"
        )
    return frame


def _suggest_anchor(offset, first: pd.Timestamp) -> str:
    if isinstance(offset, offsets.Week):
        return f"; the data looks like freq='W-{first.day_name()[:3].upper()}'"
    if isinstance(offset, offsets.MonthBegin) and first.is_month_end:
        return "; the data looks like freq='ME' (month end)"
    if isinstance(offset, offsets.MonthEnd) and first.is_month_start:
        return "; the data looks like freq='MS' (month start)"
    return ""


def _regularise(frame: pd.DataFrame, freq: str, gaps: str) -> pd.DataFrame:
    """Check order, duplicates and gaps; fill gaps when asked."""
    dates = frame.index
    if len(dates) < 2:
        return frame
    step = np.diff(dates.asi8)
    if (step < 0).any():
        i = int(np.flatnonzero(step < 0)[0])
        raise DataValidationError(
            f"timestamps are not sorted: {dates[i + 1]} in row {i + 2} comes after "
            f"{dates[i]} in row {i + 1}; sort the file by date"
        )
    if (step == 0).any():
        i = int(np.flatnonzero(step == 0)[0])
        raise DataValidationError(
            f"duplicate timestamp {dates[i]} in rows {i + 1} and {i + 2}"
        )

    offset = to_offset(freq)
    first = dates[0]
    if not offset.is_on_offset(first):
        raise DataValidationError(
            f"the first timestamp {first} does not fall on the grid of freq="
            f"{freq!r}{_suggest_anchor(offset, first)}"
        )
    expected = dates[:-1] + offset
    mismatch = np.flatnonzero(expected.asi8 != dates[1:].asi8)
    if mismatch.size == 0:
        return frame

    i = int(mismatch[0])
    found = (
        f"{dates[i]} (row {i + 1}) is followed by {dates[i + 1]} (row {i + 2}), "
        f"expected {expected[i]}"
    )
    if dates[i + 1] < expected[i]:
        raise DataValidationError(
            f"timestamps are not on the grid of freq={freq!r}: {found}; check that "
            "freq matches the data"
        )
    if gaps == "raise":
        raise DataValidationError(
            f"gap against freq={freq!r}: {found}; pass gaps='interpolate' to fill "
            "missing timestamps by linear interpolation"
        )

    grid = pd.date_range(first, dates[-1], freq=offset, name=dates.name)
    off_grid = ~dates.isin(grid)
    if off_grid.any():
        j = int(np.flatnonzero(off_grid)[0])
        raise DataValidationError(
            f"timestamp {dates[j]} (row {j + 1}) is not on the grid of freq={freq!r} "
            f"starting at {first}; gaps='interpolate' only fills missing timestamps"
        )
    filled = frame.reindex(grid).interpolate(method="linear")
    logger.warning(
        "filled %d missing timestamps by linear interpolation (freq=%r, %d rows "
        "read, %d rows after filling)",
        len(grid) - len(dates),
        freq,
        len(dates),
        len(grid),
    )
    return filled


def read_csv(path, config: DataConfig) -> pd.DataFrame:
    """Read and validate a CSV file of timestamped numeric columns.

    Use it for training data (through :func:`load_data`) and for new data to forecast
    with a trained model (with :func:`forecast_inputs`). The header may start with a
    UTF-8 byte-order mark. Every column other than ``config.date_column`` must be
    numeric, whatever ``config.features``, so that one file is accepted or refused the
    same way in every mode. The checks, each refused with a
    :class:`DataValidationError` naming the column and the 1-based data row (or the
    timestamp), are: the date column exists (else the columns found are listed and a
    column that parses as dates is suggested), the target column exists for ``S`` and
    ``MS``, every date parses, no column is text, no cell is blank, NaN or infinite,
    timestamps are sorted and unique, and they follow ``config.freq`` without gaps
    (unless ``config.gaps='interpolate'``, see :class:`DataConfig`).

    :param path: CSV file.
    :param DataConfig config: the configuration (date column, target, freq, gaps).
    :returns: a frame in data units with a :class:`pandas.DatetimeIndex` named after the
        date column and one float64 column per value column, in file order.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"data file not found: {path}")
    try:
        raw = pd.read_csv(path, encoding="utf-8-sig", skipinitialspace=True)
    except pd.errors.EmptyDataError:
        raise DataValidationError(f"{path} is empty") from None
    except (pd.errors.ParserError, UnicodeDecodeError) as error:
        raise DataValidationError(f"cannot read {path} as CSV: {error}") from None
    raw.columns = [str(c).strip() for c in raw.columns]
    return validate_frame(raw, config, source=str(path))


def validate_frame(raw: pd.DataFrame, config: DataConfig, source: str = "frame"):
    """Validate a raw frame (a date column plus value columns) like :func:`read_csv`.

    Use it for data that is already in memory; the checks and the result are those of
    :func:`read_csv`.

    :param pandas.DataFrame raw: the columns as read, the date column among them.
    :param DataConfig config: the configuration (date column, target, freq, gaps).
    :param str source: name used in messages.
    """
    columns = list(raw.columns)
    if len(set(columns)) != len(columns):
        duplicated = sorted({c for c in columns if columns.count(c) > 1})
        raise DataValidationError(f"{source}: duplicated column names {duplicated}")
    if config.date_column not in columns:
        candidates = _date_like_columns(raw, config.date_column)
        hint = (
            f"; {candidates[0]!r} parses as dates, pass date_column={candidates[0]!r}"
            if candidates
            else ""
        )
        raise DataValidationError(
            f"{source}: date column {config.date_column!r} not found; columns found: "
            f"{columns}{hint}"
        )
    value_columns = [c for c in columns if c != config.date_column]
    if not value_columns:
        raise DataValidationError(f"{source}: no value columns besides the dates")
    if config.features in ("S", "MS") and config.target not in value_columns:
        raise DataValidationError(
            f"{source}: target column {config.target!r} not found (features="
            f"{config.features!r}); columns found: {columns}"
        )
    if len(raw) == 0:
        raise DataValidationError(f"{source}: no data rows")

    dates = _parse_dates(raw, config.date_column)
    frame = _numeric_values(raw[value_columns], dates, columns)
    return _regularise(frame, config.freq, config.gaps)


# ---------------------------------------------------------------------------------
# Splitting, scaling and assembling the datasets.


def _ett_name(path: str) -> str | None:
    stem = Path(path).stem
    return stem if stem in _ETT_FILES else None


def split_borders(n_rows: int, config: DataConfig, source: str = "data") -> dict:
    """Return the row ranges of the train, val and test splits.

    Use it to see which rows each split covers. ``config.split='ett'`` (or ``'auto'``
    for a file named ETTh1, ETTh2, ETTm1 or ETTm2) gives the ETT benchmark borders: 12,
    4 and 4 months of 30 days for train, val and test, at 24 rows a day for ``freq='h'``
    and 96 for ``'15min'``. The ratio split follows the reference ``Dataset_Custom``:
    ``num_train = int(n * r_train)``, ``num_test = int(n * r_test)`` and val gets the
    rest. Val and test start ``seq_len`` rows early to give their first window its
    context. Each split must hold ``seq_len + pred_len`` rows.

    :param int n_rows: rows in the series.
    :param DataConfig config: split mode, ratios and window lengths.
    :param str source: file name; decides ``split='auto'``.
    :returns: dict ``{'train': (start, end), 'val': (start, end), 'test': (start,
        end)}`` with ``end`` exclusive.
    :raises DataValidationError: if a split is too short for one window, or the ETT
        split is asked of a file too short or at a frequency other than hourly or
        15-minute.
    """
    seq_len = config.seq_len
    use_ett = config.split == "ett" or (
        config.split == "auto" and _ett_name(source) is not None
    )
    if use_ett:
        if config.freq not in _ETT_ROWS_PER_DAY:
            raise DataValidationError(
                f"the ETT split needs freq 'h' or '15min', got {config.freq!r}; use "
                "split='ratio'"
            )
        month = 30 * _ETT_ROWS_PER_DAY[config.freq]
        train_end, val_end, test_end = 12 * month, 16 * month, 20 * month
        if n_rows < test_end:
            raise DataValidationError(
                f"the ETT split needs {test_end} rows (20 months of 30 days at "
                f"freq={config.freq!r}) but {source} has {n_rows}; use split='ratio'"
            )
    else:
        r_train, _, r_test = config.split_ratios
        num_train = int(n_rows * r_train)
        num_test = int(n_rows * r_test)
        num_val = n_rows - num_train - num_test
        train_end, val_end, test_end = num_train, num_train + num_val, n_rows

    borders = {
        "train": (0, train_end),
        "val": (train_end - seq_len, val_end),
        "test": (val_end - seq_len, test_end),
    }
    for name, (start, end) in borders.items():
        _check_split_rows(name, end - start, seq_len, config.pred_len)
    return borders


def _model_columns(frame: pd.DataFrame, config: DataConfig) -> list:
    if config.features == "S":
        return [config.target]
    others = [c for c in frame.columns if c != config.target]
    # As in the reference Dataset_Custom, the target (when present) is the last column.
    return others + [config.target] if config.target in frame.columns else others


def _to_tensor(array: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))


def forecast_inputs(
    frame: pd.DataFrame, config: DataConfig, scaler: StandardScaler, columns
) -> tuple:
    """Build batch-of-one model inputs to forecast the ``pred_len`` rows after a frame.

    Use it to forecast past the end of the data, with a trained model's scaler and
    input columns; ``frame`` may come from a new CSV read by :func:`read_csv` with the
    same configuration. The last ``seq_len`` rows are the encoder input, the last
    ``label_len`` of them start the decoder input, and the future time marks come from
    ``config.freq``.

    :param pandas.DataFrame frame: validated frame with a DatetimeIndex, in data units.
    :param DataConfig config: window lengths and frequency.
    :param StandardScaler scaler: the scaler fitted on the model's training rows, over
        ``columns``.
    :param list columns: the model's input channel names, in order.
    :returns: ``((x_enc, x_mark_enc, x_dec, x_mark_dec), future_dates)`` with shapes
        ``(1, seq_len, C)``, ``(1, seq_len, M)``, ``(1, label_len + pred_len, C)``,
        ``(1, label_len + pred_len, M)`` and a DatetimeIndex of ``pred_len`` dates.
    """
    columns = list(columns)
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise DataValidationError(
            f"columns {missing} needed by the model are missing; columns found: "
            f"{list(frame.columns)}"
        )
    if scaler.n_columns != len(columns):
        raise ValueError(
            f"the scaler has {scaler.n_columns} columns but {len(columns)} were given"
        )
    if len(frame) < config.seq_len:
        raise DataValidationError(
            f"forecasting needs seq_len={config.seq_len} rows of history, the frame "
            f"has {len(frame)}"
        )
    if not isinstance(frame.index, pd.DatetimeIndex):
        raise DataValidationError("the frame needs a DatetimeIndex; use read_csv")

    history = frame[columns].to_numpy(dtype=np.float64)[-config.seq_len :]
    values = scaler.transform(history)
    past = frame.index[-config.seq_len :]
    offset = to_offset(config.freq)
    future = pd.date_range(
        past[-1] + offset, periods=config.pred_len, freq=offset, name=frame.index.name
    )

    x_enc = _to_tensor(values)
    x_mark_enc = _to_tensor(time_features(past, config.freq))
    decoder_dates = past[-config.label_len :].append(future)
    x_mark_dec = _to_tensor(time_features(decoder_dates, config.freq))
    zeros = torch.zeros(config.pred_len, len(columns))
    x_dec = torch.cat([x_enc[-config.label_len :], zeros], dim=0)
    inputs = tuple(t.unsqueeze(0) for t in (x_enc, x_mark_enc, x_dec, x_mark_dec))
    return inputs, future


@dataclass
class ForecastData:
    """A validated series with its splits, scaler and window datasets.

    Returned by :func:`load_data`; holds everything a trainer and an evaluator need.

    :param DataConfig config: the configuration it was built from.
    :param pandas.DataFrame frame: the validated series in data units, DatetimeIndex.
    :param list columns: model input channel names in order (``MS``: target last;
        ``S``: ``[target]``).
    :param list target_columns: output channel names (``M``: all of ``columns``;
        ``S``/``MS``: ``[target]``).
    :param StandardScaler scaler: fitted on the train rows over ``columns`` (the
        identity when ``config.scale`` is ``False``).
    :param WindowDataset train: training windows.
    :param WindowDataset val: validation windows.
    :param WindowDataset test: test windows.
    :param dict borders: split name -> ``(start_row, end_row)``, end exclusive.
    """

    config: DataConfig
    frame: pd.DataFrame
    columns: list
    target_columns: list
    scaler: StandardScaler
    train: WindowDataset
    val: WindowDataset
    test: WindowDataset
    borders: dict

    @property
    def enc_in(self) -> int:
        """Number of model input channels."""
        return len(self.columns)

    @property
    def c_out(self) -> int:
        """Number of model output channels."""
        return len(self.target_columns)

    @property
    def n_time_features(self) -> int:
        """Width of the time marks for ``config.freq``."""
        return n_time_features(self.config.freq)

    @property
    def target_column_indices(self) -> list:
        """Indices into ``columns`` of the output channels, for inverse transforms."""
        return [self.columns.index(c) for c in self.target_columns]

    def inverse_transform_targets(self, values: ArrayLike) -> ArrayLike:
        """Map model outputs ``(..., c_out)`` back to data units.

        :param values: scaled outputs, e.g. ``(batch, pred_len, c_out)``.
        """
        return self.scaler.inverse_transform(values, columns=self.target_column_indices)

    def last_window(self, frame: pd.DataFrame | None = None) -> tuple:
        """Return batch-of-one inputs to forecast past the end of the data.

        :param frame: another validated frame with the same columns (e.g. from
            :func:`read_csv` on a new file); ``None`` uses :attr:`frame`.
        :returns: ``((x_enc, x_mark_enc, x_dec, x_mark_dec), future_dates)``, see
            :func:`forecast_inputs`.
        """
        frame = self.frame if frame is None else frame
        return forecast_inputs(frame, self.config, self.scaler, self.columns)


def _resolve_path(config: DataConfig):
    if config.data_path is not None:
        return Path(config.data_path)
    return resources.files("pyro_autoformer.datasets").joinpath(PACKAGED_DATASET)


def read_configured_csv(config: DataConfig) -> tuple[pd.DataFrame, str]:
    """Read and validate ``config.data_path`` (the packaged ETTh1 file when it is
    ``None``).

    :returns: the validated frame and the file's name (which selects the split).
    """
    with resources.as_file(_resolve_path(config)) as path:
        return read_csv(path, config), Path(path).name


def load_data(config: DataConfig) -> ForecastData:
    """Read, validate, split and scale a CSV file into window datasets.

    Use it once per experiment. The scaler is fitted on the train rows only; every
    problem with the file or the split sizes is refused here, before training, with a
    :class:`DataValidationError`.

    :param DataConfig config: the configuration; ``data_path=None`` loads the packaged
        ETTh1 file.
    """
    frame, source = read_configured_csv(config)

    columns = _model_columns(frame, config)
    target_columns = columns if config.features == "M" else [config.target]
    borders = split_borders(len(frame), config, source=source)

    values = frame[columns].to_numpy(dtype=np.float64)
    train_start, train_end = borders["train"]
    if config.scale:
        scaler = StandardScaler().fit(
            values[train_start:train_end], column_names=columns
        )
        values = scaler.transform(values)
    else:
        scaler = StandardScaler.identity(len(columns), column_names=columns)
    values = values.astype(np.float32)
    marks = time_features(frame.index, config.freq)

    datasets = {
        name: WindowDataset(
            values,
            marks,
            frame.index,
            start,
            end,
            seq_len=config.seq_len,
            label_len=config.label_len,
            pred_len=config.pred_len,
            name=name,
        )
        for name, (start, end) in borders.items()
    }
    logger.info(
        "loaded %s: %d rows, %d channels, windows train/val/test = %d/%d/%d",
        source,
        len(frame),
        len(columns),
        len(datasets["train"]),
        len(datasets["val"]),
        len(datasets["test"]),
    )
    return ForecastData(
        config=config,
        frame=frame,
        columns=columns,
        target_columns=target_columns,
        scaler=scaler,
        train=datasets["train"],
        val=datasets["val"],
        test=datasets["test"],
        borders=borders,
    )
