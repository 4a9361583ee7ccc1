"""The configuration of one run: data, network sizes, priors, guide, tuning, training.

Each part is a frozen dataclass validated when it is built, with errors that name the
field and the value. :class:`RunConfig` groups them, converts to and from plain JSON
(the ``config.json`` of a run and the header of a checkpoint), and builds the
:class:`~pyro_autoformer.autoformer.AutoformerConfig` once the data says how many
channels there are.
"""

from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass, field
from typing import Any

import torch

from .autoformer import AutoformerConfig
from .bayesian import BayesianConfig
from .data import DataConfig
from .tuning.policies import SCHEDULES
from .tuning.tuner import METHODS as TUNING_METHODS

__all__ = [
    "GuideConfig",
    "MODELS",
    "ModelSizes",
    "PRESETS",
    "RunConfig",
    "TrainConfig",
    "TuningConfig",
]

#: Model names accepted by the command line; the first two are the same model.
MODELS = ("BayesianEnhancedAutoformer", "BayesianAutoformer", "Autoformer")
UPDATE_INTERVALS = ("step", "epoch")


@dataclass(frozen=True)
class ModelSizes:
    """The Autoformer's sizes (see :class:`~pyro_autoformer.autoformer.
    AutoformerConfig` for each field)."""

    d_model: int = 64
    n_heads: int = 4
    e_layers: int = 2
    d_layers: int = 1
    d_ff: int = 128
    moving_avg: int = 25
    factor: int = 3
    dropout: float = 0.05
    activation: str = "gelu"


#: ``cpu`` trains in minutes on two cores; ``paper`` is the reference size (a GPU job).
PRESETS = {
    "cpu": ModelSizes(),
    "paper": ModelSizes(d_model=512, n_heads=8, e_layers=2, d_layers=1, d_ff=2048),
}


@dataclass(frozen=True)
class GuideConfig:
    """The mean-field guide's initialisation.

    :param float init_scale: initial posterior standard deviation of every weight.
        With 1e-3 the scales barely move in a few epochs (Adam moves the raw scale
        by about the learning rate per step) and the forecast's uncertainty is
        almost all observation noise; 0.02 leaves the weights a measurable share of
        it (about 8% of the predictive variance on ETTh1 at the CPU preset).
    :param int pretrain_epochs: epochs of deterministic training whose weights
        initialise the guide's locations (0: the network's own initialisation).
    """

    init_scale: float = 0.02
    pretrain_epochs: int = 0

    def __post_init__(self):
        if not self.init_scale > 0:
            raise ValueError(f"init_scale must be > 0, got {self.init_scale}")
        if self.pretrain_epochs < 0:
            raise ValueError(
                f"pretrain_epochs must be >= 0, got {self.pretrain_epochs}"
            )


@dataclass(frozen=True)
class TuningConfig:
    """How the KL weight (beta) is chosen during training.

    :param str kl_tuning_method: ``adaptive``, ``annealing`` or ``fixed``.
    :param float target_kl_percentage: target KL share of the loss (adaptive).
    :param float min_kl_weight: lower clamp of the weight.
    :param float max_kl_weight: upper clamp of the weight; 1 is the exact ELBO.
    :param kl_weight: the weight before the first update; default: the fixed method
        uses 1 (the exact ELBO, clamped), annealing the start of its schedule
        (``max_kl_weight``, or ``min_kl_weight`` with ``warmup``), adaptive the
        geometric mean of the clamps.
    :param str annealing_schedule: ``linear``, ``cosine``, ``exponential`` or
        ``cyclical``.
    :param bool warmup: anneal upwards (min to max) instead of downwards.
    :param str update_every: update the weight after every ``step`` or ``epoch``.
    """

    kl_tuning_method: str = "adaptive"
    target_kl_percentage: float = 0.1
    min_kl_weight: float = 1e-6
    max_kl_weight: float = 10.0
    kl_weight: float | None = None
    annealing_schedule: str = "cosine"
    warmup: bool = False
    update_every: str = "step"

    def __post_init__(self):
        if self.kl_tuning_method not in TUNING_METHODS:
            raise ValueError(
                f"kl_tuning_method must be one of {TUNING_METHODS}, "
                f"got {self.kl_tuning_method!r}"
            )
        if not 0 < self.target_kl_percentage < 1:
            raise ValueError(
                "target_kl_percentage must be a fraction in (0, 1), got "
                f"{self.target_kl_percentage}"
            )
        if not 0 < self.min_kl_weight <= self.max_kl_weight:
            raise ValueError(
                "need 0 < min_kl_weight <= max_kl_weight, got min_kl_weight="
                f"{self.min_kl_weight}, max_kl_weight={self.max_kl_weight}"
            )
        if self.kl_weight is not None and not (
            math.isfinite(self.kl_weight) and self.kl_weight > 0
        ):
            raise ValueError(f"kl_weight must be > 0, got {self.kl_weight}")
        if self.annealing_schedule not in SCHEDULES:
            raise ValueError(
                f"annealing_schedule must be one of {SCHEDULES}, "
                f"got {self.annealing_schedule!r}"
            )
        if self.update_every not in UPDATE_INTERVALS:
            raise ValueError(
                f"update_every must be one of {UPDATE_INTERVALS}, "
                f"got {self.update_every!r}"
            )

    def initial_weight(self) -> float:
        """The weight in force before the first update, within the clamps."""
        if self.kl_weight is not None:
            weight = self.kl_weight
        elif self.kl_tuning_method == "fixed":
            weight = 1.0
        elif self.kl_tuning_method == "annealing":
            # Where the schedule starts, so the first steps follow it too.
            weight = self.min_kl_weight if self.warmup else self.max_kl_weight
        else:
            weight = math.sqrt(self.min_kl_weight * self.max_kl_weight)
        return min(max(weight, self.min_kl_weight), self.max_kl_weight)


@dataclass(frozen=True)
class TrainConfig:
    """The optimisation and evaluation budget.

    :param int train_epochs: maximum passes over the training windows.
    :param int batch_size: windows per step.
    :param float learning_rate: Adam's learning rate.
    :param int patience: epochs without a better validation MSE before stopping.
    :param int num_samples: posterior weight draws per forecast when evaluating.
    :param int noise_samples: observation-noise draws per weight draw; forecasts
        have ``num_samples * noise_samples`` samples.
    :param int seed: seed of every random number generator.
    :param str device: ``cpu``, ``cuda`` or ``cuda:N``.
    :param float clip_norm: gradient norm clip (0 disables it).
    :param max_steps_per_epoch: cap on steps per epoch (a smaller, faster epoch).
    :param max_eval_windows: validate and test on at most this many windows, evenly
        spaced (``None``: all).
    :param bool progress: show progress bars (only on a terminal).
    """

    train_epochs: int = 2
    batch_size: int = 32
    learning_rate: float = 1e-3
    patience: int = 3
    num_samples: int = 20
    noise_samples: int = 5
    seed: int = 2021
    device: str = "cpu"
    clip_norm: float = 10.0
    max_steps_per_epoch: int | None = None
    max_eval_windows: int | None = None
    progress: bool = True

    def __post_init__(self):
        for name in (
            "train_epochs",
            "batch_size",
            "patience",
            "num_samples",
            "noise_samples",
        ):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if not self.learning_rate > 0:
            raise ValueError(f"learning_rate must be > 0, got {self.learning_rate}")
        if self.clip_norm < 0:
            raise ValueError(f"clip_norm must be >= 0, got {self.clip_norm}")
        for name in ("max_steps_per_epoch", "max_eval_windows"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"{name} must be >= 1 when given, got {value}")
        if not (
            self.device == "cpu"
            or self.device == "cuda"
            or self.device.startswith("cuda:")
            or self.device == "mps"
        ):
            raise ValueError(
                f"device must be 'cpu', 'cuda', 'cuda:N' or 'mps', got {self.device!r}"
            )
        if self.device.startswith("cuda") and not torch.cuda.is_available():
            raise ValueError(
                f"device {self.device!r} was asked for, but this PyTorch build sees "
                "no CUDA device (torch.cuda.is_available() is False)"
            )
        if self.device == "mps" and not torch.backends.mps.is_available():
            raise ValueError("device 'mps' was asked for, but MPS is not available")


@dataclass(frozen=True)
class RunConfig:
    """Everything one training run needs.

    :param str model: one of :data:`MODELS`; ``Autoformer`` trains the deterministic
        baseline (MSE, no priors).
    :param str des: a short description, used in the run directory's name.
    """

    data: DataConfig = field(default_factory=DataConfig)
    sizes: ModelSizes = field(default_factory=ModelSizes)
    bayes: BayesianConfig = field(default_factory=BayesianConfig)
    guide: GuideConfig = field(default_factory=GuideConfig)
    tuning: TuningConfig = field(default_factory=TuningConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    model: str = "BayesianAutoformer"
    des: str = "run"

    def __post_init__(self):
        if self.model not in MODELS:
            raise ValueError(f"model must be one of {MODELS}, got {self.model!r}")

    @property
    def bayesian(self) -> bool:
        """Whether the run trains a Bayesian model (not the deterministic baseline)."""
        return self.model != "Autoformer"

    def autoformer_config(self, enc_in: int, c_out: int) -> AutoformerConfig:
        """The network's configuration for data with these channel counts."""
        sizes = dataclasses.asdict(self.sizes)
        return AutoformerConfig(
            enc_in=enc_in,
            dec_in=enc_in,
            c_out=c_out,
            seq_len=self.data.seq_len,
            label_len=self.data.label_len,
            pred_len=self.data.pred_len,
            freq=self.data.freq,
            **sizes,
        )

    def to_dict(self) -> dict[str, Any]:
        """Plain, JSON-serialisable nested dictionaries."""
        return {
            "model": self.model,
            "des": self.des,
            **{
                name: _plain(dataclasses.asdict(getattr(self, name)))
                for name in ("data", "sizes", "bayes", "guide", "tuning", "train")
            },
        }

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> RunConfig:
        """Rebuild (and re-validate) a configuration from :meth:`to_dict`'s output."""
        parts = {
            "data": DataConfig,
            "sizes": ModelSizes,
            "bayes": BayesianConfig,
            "guide": GuideConfig,
            "tuning": TuningConfig,
            "train": TrainConfig,
        }
        unknown = set(values) - set(parts) - {"model", "des"}
        if unknown:
            raise ValueError(f"unknown configuration sections: {sorted(unknown)}")
        built = {}
        for name, kind in parts.items():
            section = dict(values.get(name, {}))
            known = {f.name for f in dataclasses.fields(kind)}
            extra = set(section) - known
            if extra:
                raise ValueError(f"unknown fields in '{name}': {sorted(extra)}")
            for key, value in section.items():
                if isinstance(value, list):
                    section[key] = tuple(value)
            built[name] = kind(**section)
        return cls(
            model=values.get("model", "BayesianAutoformer"),
            des=values.get("des", "run"),
            **built,
        )


def _plain(values: dict[str, Any]) -> dict[str, Any]:
    plain = {}
    for key, value in values.items():
        if isinstance(value, tuple):
            value = list(value)
        elif isinstance(value, os.PathLike):
            value = os.fspath(value)
        plain[key] = value
    return plain
