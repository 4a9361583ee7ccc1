"""The record of every KL-weight update, with CSV and JSON round trips.

:class:`KLHistory` is what :class:`~pyro_autoformer.tuning.tuner.KLTuner` fills in;
it is also what :func:`~pyro_autoformer.tuning.plotting.plot_history` draws and
:func:`~pyro_autoformer.tuning.diagnosis.diagnose` reads. Save it next to a run's
checkpoints so the tuning can be inspected and reproduced later. Files are written
atomically: to a temporary file in the same directory, then moved into place.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterator
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Union

import pandas as pd

from ..files import atomic_open

PathLike = Union[str, os.PathLike]


@dataclass(frozen=True)
class KLRecord:
    """One KL-weight update.

    :param int epoch: epoch of the update, from 0.
    :param step: global optimisation step of the update, or ``None`` for a
        per-epoch update.
    :param float weight: the KL weight in force while the losses were measured.
    :param float data_loss: the data term ``D`` (per target element).
    :param float kl_loss: the KL term ``K = KL(q||p) / N``.
    :param float weighted_kl: ``weight * kl_loss``.
    :param float kl_share: ``weighted_kl / (|D| + weighted_kl)``.
    :param target: the target KL share in force, or ``None`` for methods without one.
    :param float total_loss: ``data_loss + weighted_kl``.
    :param val_loss: the validation loss passed with the update, or ``None``.
    :param str method: ``adaptive``, ``annealing`` or ``fixed``.
    """

    epoch: int
    step: int | None
    weight: float
    data_loss: float
    kl_loss: float
    weighted_kl: float
    kl_share: float
    target: float | None
    total_loss: float
    val_loss: float | None
    method: str


COLUMNS = tuple(f.name for f in fields(KLRecord))
_OPTIONAL_FLOATS = ("target", "val_loss")
_FLOATS = ("weight", "data_loss", "kl_loss", "weighted_kl", "kl_share", "total_loss")


def _missing(value) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def _record_from_mapping(row) -> KLRecord:
    values = {}
    for name in COLUMNS:
        value = row[name]
        if name == "epoch":
            values[name] = int(value)
        elif name == "step":
            values[name] = None if _missing(value) or value is pd.NA else int(value)
        elif name in _OPTIONAL_FLOATS:
            values[name] = None if _missing(value) else float(value)
        elif name in _FLOATS:
            values[name] = float(value)
        else:
            values[name] = str(value)
    return KLRecord(**values)


class KLHistory:
    """Every update of a KL tuner, in order.

    :param records: initial records (optional).
    """

    def __init__(self, records=()):
        self.records: list[KLRecord] = list(records)

    def append(self, record: KLRecord) -> None:
        """Add one update's record."""
        self.records.append(record)

    def __len__(self) -> int:
        return len(self.records)

    def __iter__(self) -> Iterator[KLRecord]:
        return iter(self.records)

    def __getitem__(self, index):
        return self.records[index]

    def __eq__(self, other) -> bool:
        return isinstance(other, KLHistory) and self.records == other.records

    def to_frame(self) -> pd.DataFrame:
        """Return the history as a frame, one row per update.

        ``epoch`` and ``step`` are nullable integers; missing ``step``, ``target``
        and ``val_loss`` are ``<NA>`` and ``NaN``.
        """
        frame = pd.DataFrame([asdict(r) for r in self.records], columns=list(COLUMNS))
        frame["epoch"] = frame["epoch"].astype("Int64")
        frame["step"] = pd.array([r.step for r in self.records], dtype="Int64")
        for name in _FLOATS + _OPTIONAL_FLOATS:
            frame[name] = pd.to_numeric(frame[name], errors="coerce").astype(float)
        frame["method"] = frame["method"].astype(str)
        return frame

    @classmethod
    def from_frame(cls, frame: pd.DataFrame) -> KLHistory:
        """Build a history from a frame with the columns of :meth:`to_frame`."""
        missing = [c for c in COLUMNS if c not in frame.columns]
        if missing:
            raise ValueError(
                f"KL history frame lacks columns {missing}; found {list(frame.columns)}"
            )
        return cls(_record_from_mapping(row) for _, row in frame.iterrows())

    def to_csv(self, path: PathLike) -> Path:
        """Write the history to a CSV file atomically and return its path."""
        with atomic_open(path, "w") as handle:
            self.to_frame().to_csv(handle, index=False, float_format="%.17g")
        return Path(path)

    @classmethod
    def from_csv(cls, path: PathLike) -> KLHistory:
        """Read a history written by :meth:`to_csv`."""
        frame = pd.read_csv(path, dtype={"epoch": "Int64", "step": "Int64"})
        return cls.from_frame(frame)

    def to_json(self, path: PathLike) -> Path:
        """Write the history to a JSON file atomically and return its path.

        Missing values are written as ``null``.
        """
        rows = [
            {k: (None if _missing(v) else v) for k, v in asdict(r).items()}
            for r in self.records
        ]
        with atomic_open(path, "w") as handle:
            json.dump({"records": rows}, handle, indent=1, allow_nan=False)
        return Path(path)

    @classmethod
    def from_json(cls, path: PathLike) -> KLHistory:
        """Read a history written by :meth:`to_json`."""
        with open(path, encoding="utf-8") as handle:
            payload = json.load(handle)
        if not isinstance(payload, dict) or "records" not in payload:
            raise ValueError(f"{path} is not a KL history: no 'records' list")
        return cls(_record_from_mapping(row) for row in payload["records"])
