"""Save and load a trained run as one self-describing file.

A checkpoint holds the run's configuration, the fitted scaler, the column names, the
number of training windows, and the state of the model and of its guide. Loading it in
a fresh process rebuilds both and, with the same seed, predicts exactly as before.

Loading never runs code from the file: it is read with ``torch.load(...,
weights_only=True)``, which accepts tensors and plain containers only. A checkpoint
from someone else is data, not a program. Writing is atomic (a temporary file in the
same directory, then a rename), and a state holding a NaN or an infinity is refused,
so a failed or diverged run never replaces a good checkpoint.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Union

import torch

from .autoformer import Autoformer
from .bayesian import BayesianAutoformer
from .config import RunConfig
from .data import StandardScaler
from .files import atomic_open
from .guides import MeanFieldGuide

__all__ = ["CheckpointError", "LoadedRun", "load_checkpoint", "save_checkpoint"]

FORMAT = "pyro-autoformer-checkpoint"
VERSION = 1

PathLike = Union[str, os.PathLike]


class CheckpointError(ValueError):
    """A checkpoint that cannot be written or read, with the reason."""


@dataclass
class LoadedRun:
    """What a checkpoint rebuilds.

    :param RunConfig config: the run's configuration.
    :param StandardScaler scaler: the scaler fitted on the training rows.
    :param list columns: model input channel names.
    :param list target_columns: output channel names.
    :param model: a :class:`~pyro_autoformer.bayesian.BayesianAutoformer`, or the
        plain :class:`~pyro_autoformer.autoformer.Autoformer` of a deterministic run.
    :param guide: the :class:`~pyro_autoformer.guides.MeanFieldGuide` (``None`` for a
        deterministic run).
    :param dict extra: anything else saved with it (JSON values).
    """

    config: RunConfig
    scaler: StandardScaler
    columns: list
    target_columns: list
    model: Any
    guide: MeanFieldGuide | None
    extra: dict


def _check_finite(states: dict[str, dict[str, torch.Tensor]]) -> None:
    for owner, state in states.items():
        for name, tensor in state.items():
            if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
                raise CheckpointError(
                    f"refusing to save: {owner} tensor {name!r} holds NaN or inf"
                )


def save_checkpoint(
    path: PathLike,
    config: RunConfig,
    scaler: StandardScaler,
    columns: list,
    target_columns: list,
    model,
    guide: MeanFieldGuide | None = None,
    dataset_size: int = 1,
    extra: dict | None = None,
) -> Path:
    """Write a checkpoint atomically and return its path.

    :raises CheckpointError: if any saved tensor is not finite (nothing is written).
    """
    path = Path(path)
    model_state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    guide_state = (
        {}
        if guide is None
        else {k: v.detach().cpu() for k, v in guide.state_dict().items()}
    )
    _check_finite({"model": model_state, "guide": guide_state})
    payload = {
        "format": FORMAT,
        "version": VERSION,
        "config": json.dumps(config.to_dict()),
        "scaler": json.dumps(scaler.to_dict()),
        "columns": list(columns),
        "target_columns": list(target_columns),
        "dataset_size": int(dataset_size),
        "kl_weight": float(getattr(model, "kl_weight", 1.0)),
        "model_state": model_state,
        "guide_state": guide_state,
        "extra": json.dumps(extra or {}),
    }
    with atomic_open(path, "wb") as stream:
        torch.save(payload, stream)
    return path


def load_checkpoint(path: PathLike, device: str = "cpu") -> LoadedRun:
    """Rebuild a run's model, guide, scaler and configuration from a checkpoint.

    :raises CheckpointError: if the file is missing, not a checkpoint of this
        package, or holds anything but tensors and plain values.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"no checkpoint at {path}")
    try:
        payload = torch.load(path, map_location=device, weights_only=True)
    except Exception as error:  # the unpickler's own errors vary by cause
        raise CheckpointError(
            f"{path} is not a readable checkpoint (only tensors and plain values are "
            f"accepted): {error}"
        ) from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a pyro-autoformer checkpoint")
    if payload.get("version") != VERSION:
        raise CheckpointError(
            f"{path} has checkpoint version {payload.get('version')}; this version of "
            f"pyro-autoformer reads version {VERSION}"
        )
    values = json.loads(payload["config"])
    # A run trained on a GPU loads on the device asked for now.
    values.setdefault("train", {})["device"] = str(device)
    config = RunConfig.from_dict(values)
    scaler = StandardScaler.from_dict(json.loads(payload["scaler"]))
    columns = list(payload["columns"])
    target_columns = list(payload["target_columns"])
    network = config.autoformer_config(len(columns), len(target_columns))

    guide = None
    if config.bayesian:
        model = BayesianAutoformer(
            network,
            config.bayes,
            dataset_size=payload["dataset_size"],
            kl_weight=payload["kl_weight"],
        )
        model.load_state_dict(payload["model_state"])
        guide = MeanFieldGuide(model, init_scale=config.guide.init_scale)
        guide.load_state_dict(payload["guide_state"])
        guide.to(device)
    else:
        model = Autoformer(network)
        model.load_state_dict(payload["model_state"])
    model.to(device).eval()
    return LoadedRun(
        config=config,
        scaler=scaler,
        columns=columns,
        target_columns=target_columns,
        model=model,
        guide=guide,
        extra=json.loads(payload["extra"]),
    )
