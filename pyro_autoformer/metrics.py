"""Scores for probabilistic forecasts: CRPS, interval coverage, calibration and NLL.

The functions in this module score forecast samples against the truth one batch at
a time. Samples are laid out with the draw dimension first, ``(num_samples, ...)``,
and the truth has the trailing shape, ``(...)``; for the posterior predictive of the
Autoformer that is ``(num_samples, batch, pred_len, channels)`` against
``(batch, pred_len, channels)``. Every function accepts torch tensors or numpy
arrays and returns ``torch.float64`` tensors; inputs are converted to float64 first.

:class:`ForecastMetrics` accumulates the same scores over a stream of test batches
in running float64 sums, so its memory depends on ``pred_len`` and the number of
levels but not on the number of test windows.

Usage::

    metrics = ForecastMetrics()
    for samples, y in predictive_batches:
        metrics.update(samples, y)
    summary = metrics.compute()
    by_step = metrics.compute_by_horizon()
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from typing import Union

import numpy as np
import pandas as pd
import torch

logger = logging.getLogger(__name__)

ArrayLike = Union[torch.Tensor, np.ndarray]

#: Central-interval levels whose coverage and width :class:`ForecastMetrics` reports.
DEFAULT_LEVELS: tuple[float, ...] = (0.5, 0.8, 0.9, 0.95)

#: Central-interval levels of the reliability diagram: 0.05, 0.10, ..., 0.95.
RELIABILITY_LEVELS: tuple[float, ...] = tuple(round(0.05 * k, 2) for k in range(1, 20))


def _as_tensor(x: ArrayLike, name: str) -> torch.Tensor:
    """Convert a tensor, array or number to a float64 CPU tensor."""
    if isinstance(x, torch.Tensor):
        return x.detach().to(device="cpu", dtype=torch.float64)
    try:
        return torch.as_tensor(np.asarray(x, dtype=np.float64))
    except (TypeError, ValueError) as err:
        raise ValueError(f"{name} must be numeric, got {type(x).__name__}") from err


def _check_samples(samples: torch.Tensor, y: torch.Tensor) -> None:
    """Refuse samples whose trailing shape is not the shape of ``y``."""
    if samples.dim() != y.dim() + 1 or tuple(samples.shape[1:]) != tuple(y.shape):
        raise ValueError(
            f"samples of shape {tuple(samples.shape)} do not match y of shape "
            f"{tuple(y.shape)}: expected samples of shape (num_samples, "
            f"{', '.join(str(d) for d in y.shape)})"
        )
    if samples.shape[0] < 1:
        raise ValueError("samples must hold at least one draw, got num_samples=0")


def _check_level(level: float, name: str = "level") -> float:
    level = float(level)
    if not 0.0 < level < 1.0:
        raise ValueError(f"{name} must lie in the open interval (0, 1), got {level}")
    return level


def _check_levels(levels: Sequence[float], name: str = "levels") -> tuple[float, ...]:
    checked = tuple(_check_level(level, f"{name} entry") for level in levels)
    if not checked:
        raise ValueError(f"{name} must not be empty")
    if len(set(checked)) != len(checked):
        raise ValueError(f"{name} must not repeat a level, got {checked}")
    return checked


def _level_key(level: float) -> str:
    """Name a level as a percentage: 0.5 -> '50', 0.975 -> '97.5'."""
    return f"{round(level * 100.0, 4):g}"


def _crps_from_sorted(sorted_samples: torch.Tensor, y: torch.Tensor, fair: bool):
    """CRPS of the empirical distribution of samples already sorted along dim 0."""
    num_samples = sorted_samples.shape[0]
    if fair and num_samples < 2:
        raise ValueError("the fair CRPS needs at least two samples, got 1")

    # sum_{i,j} |x_i - x_j| = 2 sum_i (2i - S - 1) x_(i) for the sorted x_(1..S).
    rank = torch.arange(1, num_samples + 1, dtype=torch.float64)
    weight = (2.0 * rank - num_samples - 1.0).reshape((-1,) + (1,) * y.dim())
    half_spread = (weight * sorted_samples).sum(0)
    pairs = num_samples * (num_samples - 1) if fair else num_samples**2

    return (sorted_samples - y).abs().mean(0) - half_spread / pairs


def _quantiles_from_sorted(
    sorted_samples: torch.Tensor, levels: Sequence[float]
) -> torch.Tensor:
    """Linearly interpolated quantiles (as ``torch.quantile``) of sorted samples."""
    num_samples = sorted_samples.shape[0]
    position = torch.tensor(levels, dtype=torch.float64) * (num_samples - 1)
    below = position.floor().long().clamp(0, num_samples - 1)
    above = (below + 1).clamp(max=num_samples - 1)
    frac = (position - below).reshape((-1,) + (1,) * (sorted_samples.dim() - 1))

    lower = sorted_samples.index_select(0, below)
    upper = sorted_samples.index_select(0, above)
    return lower + frac * (upper - lower)


def _interval_probabilities(levels: Sequence[float]) -> list[float]:
    """Lower and upper quantile levels of each central interval, interleaved."""
    probs = []
    for level in levels:
        probs.extend([(1.0 - level) / 2.0, (1.0 + level) / 2.0])
    return probs


def crps_ensemble(samples: ArrayLike, y: ArrayLike, fair: bool = False) -> torch.Tensor:
    """CRPS of the empirical distribution of forecast samples, per element.

    This is the energy form ``E|X - y| - 0.5 E|X - X'|`` with both expectations taken
    over the empirical distribution of the samples, computed in ``O(S log S)`` by
    sorting. It equals ``scoringrules.crps_ensemble`` with ``estimator="nrg"`` (or
    ``"qd"``). With ``fair=True`` the spread term is divided by ``S (S - 1)`` instead
    of ``S**2``, which gives the unbiased "fair" CRPS of the distribution the samples
    were drawn from (``estimator="fair"``, and ``"pwm"`` in scoringrules 0.10).

    :param samples: forecast draws of shape ``(num_samples, ...)``, for example
        ``(num_samples, batch, pred_len, channels)``.
    :type samples: torch.Tensor or numpy.ndarray
    :param y: observations of shape ``(...)``.
    :type y: torch.Tensor or numpy.ndarray
    :param bool fair: use the fair (unbiased) estimator; needs ``num_samples >= 2``.
    :return: CRPS per element, shape ``(...)``, float64.
    :rtype: torch.Tensor
    """
    samples = _as_tensor(samples, "samples")
    y = _as_tensor(y, "y")
    _check_samples(samples, y)
    return _crps_from_sorted(samples.sort(dim=0).values, y, fair)


def crps_gaussian(loc: ArrayLike, scale: ArrayLike, y: ArrayLike) -> torch.Tensor:
    """Closed-form CRPS of a normal forecast, per element.

    Use it for forecasts that are Gaussian by construction, and as the limit that the
    ensemble CRPS of many Gaussian draws approaches:
    ``scale * (z (2 Phi(z) - 1) + 2 phi(z) - 1 / sqrt(pi))`` with
    ``z = (y - loc) / scale``.

    :param loc: mean of the forecast; broadcast against ``scale`` and ``y``.
    :type loc: torch.Tensor or numpy.ndarray
    :param scale: standard deviation of the forecast, strictly positive.
    :type scale: torch.Tensor or numpy.ndarray
    :param y: observations.
    :type y: torch.Tensor or numpy.ndarray
    :return: CRPS per element in the broadcast shape, float64.
    :rtype: torch.Tensor
    """
    loc = _as_tensor(loc, "loc")
    scale = _as_tensor(scale, "scale")
    y = _as_tensor(y, "y")
    if not bool((scale > 0).all()):
        raise ValueError(f"scale must be > 0 everywhere, got minimum {scale.min():.6g}")

    z = (y - loc) / scale
    cdf = torch.special.ndtr(z)
    pdf = torch.exp(-0.5 * z**2) / math.sqrt(2.0 * math.pi)
    return scale * (z * (2.0 * cdf - 1.0) + 2.0 * pdf - 1.0 / math.sqrt(math.pi))


def pinball_loss(q: ArrayLike, y: ArrayLike, level: float) -> torch.Tensor:
    """Pinball (quantile) loss of a forecast quantile at one level, per element.

    The loss is ``level * (y - q)`` when ``y >= q`` and ``(1 - level) * (q - y)``
    otherwise; its expectation is minimised by the true ``level``-quantile.

    :param q: forecast ``level``-quantile, broadcast against ``y``.
    :type q: torch.Tensor or numpy.ndarray
    :param y: observations.
    :type y: torch.Tensor or numpy.ndarray
    :param float level: quantile level in ``(0, 1)``.
    :return: loss per element, float64.
    :rtype: torch.Tensor
    """
    level = _check_level(level)
    diff = _as_tensor(y, "y") - _as_tensor(q, "q")
    return torch.maximum(level * diff, (level - 1.0) * diff)


def crps_quantiles(
    quantile_values: ArrayLike, levels: Sequence[float], y: ArrayLike
) -> torch.Tensor:
    """CRPS approximated from forecast quantiles, per element.

    Use it for forecasts given as a set of quantiles rather than samples. The CRPS is
    the integral of twice the pinball loss over all levels; here the integral is
    replaced by the mean over the given levels, ``2 * mean_k pinball(q_k, y, a_k)``,
    which approaches the CRPS for many evenly spaced levels.

    :param quantile_values: forecast quantiles of shape ``(num_levels, ...)``.
    :type quantile_values: torch.Tensor or numpy.ndarray
    :param levels: the quantile level of each row, each in ``(0, 1)``.
    :type levels: sequence of float
    :param y: observations of shape ``(...)``.
    :type y: torch.Tensor or numpy.ndarray
    :return: approximate CRPS per element, shape ``(...)``, float64.
    :rtype: torch.Tensor
    """
    quantile_values = _as_tensor(quantile_values, "quantile_values")
    y = _as_tensor(y, "y")
    levels = _check_levels(levels)
    if quantile_values.dim() != y.dim() + 1 or quantile_values.shape[1:] != y.shape:
        raise ValueError(
            f"quantile_values of shape {tuple(quantile_values.shape)} do not match y "
            f"of shape {tuple(y.shape)}: expected (num_levels, *y.shape)"
        )
    if quantile_values.shape[0] != len(levels):
        raise ValueError(
            f"quantile_values hold {quantile_values.shape[0]} levels but levels has "
            f"{len(levels)} entries"
        )

    losses = [pinball_loss(q, y, level) for q, level in zip(quantile_values, levels)]
    return 2.0 * torch.stack(losses).mean(0)


def sample_quantiles(samples: ArrayLike, levels: Sequence[float]) -> torch.Tensor:
    """Quantiles of forecast samples by linear interpolation, like ``torch.quantile``.

    The quantile at level ``a`` sits at position ``a * (S - 1)`` of the sorted
    samples, interpolated linearly between neighbours. Unlike ``torch.quantile`` this
    has no limit on the number of elements.

    :param samples: forecast draws of shape ``(num_samples, ...)``.
    :type samples: torch.Tensor or numpy.ndarray
    :param levels: quantile levels, each in ``(0, 1)``.
    :type levels: sequence of float
    :return: quantiles of shape ``(num_levels, ...)``, float64.
    :rtype: torch.Tensor
    """
    samples = _as_tensor(samples, "samples")
    levels = _check_levels(levels)
    if samples.dim() < 1 or samples.shape[0] < 1:
        raise ValueError(f"samples need a draw dimension, got shape {samples.shape}")
    return _quantiles_from_sorted(samples.sort(dim=0).values, levels)


def central_interval(
    samples: ArrayLike, level: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Central prediction interval of forecast samples at one level.

    The interval runs from the ``(1 - level) / 2`` to the ``(1 + level) / 2`` sample
    quantile, each linearly interpolated as in :func:`sample_quantiles`.

    :param samples: forecast draws of shape ``(num_samples, ...)``.
    :type samples: torch.Tensor or numpy.ndarray
    :param float level: nominal coverage of the interval, in ``(0, 1)``.
    :return: ``(lower, upper)``, each of shape ``(...)``, float64.
    :rtype: tuple(torch.Tensor, torch.Tensor)
    """
    level = _check_level(level)
    bounds = sample_quantiles(samples, _interval_probabilities([level]))
    return bounds[0], bounds[1]


def interval_coverage(lower: ArrayLike, upper: ArrayLike, y: ArrayLike) -> torch.Tensor:
    """Whether each observation falls inside its interval, bounds included.

    Averaging the result gives the empirical coverage of the intervals.

    :param lower: lower bounds, broadcast against ``upper`` and ``y``.
    :type lower: torch.Tensor or numpy.ndarray
    :param upper: upper bounds.
    :type upper: torch.Tensor or numpy.ndarray
    :param y: observations.
    :type y: torch.Tensor or numpy.ndarray
    :return: 1.0 where ``lower <= y <= upper``, else 0.0, float64.
    :rtype: torch.Tensor
    """
    y = _as_tensor(y, "y")
    inside = (_as_tensor(lower, "lower") <= y) & (y <= _as_tensor(upper, "upper"))
    return inside.to(torch.float64)


def interval_width(lower: ArrayLike, upper: ArrayLike) -> torch.Tensor:
    """Width ``upper - lower`` of each interval, per element.

    :param lower: lower bounds.
    :type lower: torch.Tensor or numpy.ndarray
    :param upper: upper bounds, broadcast against ``lower``.
    :type upper: torch.Tensor or numpy.ndarray
    :return: widths, float64.
    :rtype: torch.Tensor
    """
    return _as_tensor(upper, "upper") - _as_tensor(lower, "lower")


def pit_values(
    samples: ArrayLike,
    y: ArrayLike,
    randomize: bool = False,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Probability integral transform of each observation under its samples.

    The PIT is the fraction of samples below the observation. Samples equal to the
    observation count by half by default (mid-rank), so ``(#below + 0.5 #equal) / S``;
    with ``randomize=True`` they count by a uniform random fraction instead,
    ``(#below + U #equal) / S`` with ``U ~ Uniform(0, 1)`` per element. For a
    calibrated forecast with many samples the PIT values are close to uniform.

    :param samples: forecast draws of shape ``(num_samples, ...)``.
    :type samples: torch.Tensor or numpy.ndarray
    :param y: observations of shape ``(...)``.
    :type y: torch.Tensor or numpy.ndarray
    :param bool randomize: break ties at random instead of by the mid-rank.
    :param generator: random source for ``randomize=True``.
    :type generator: torch.Generator or None
    :return: PIT values in ``[0, 1]`` of shape ``(...)``, float64.
    :rtype: torch.Tensor
    """
    samples = _as_tensor(samples, "samples")
    y = _as_tensor(y, "y")
    _check_samples(samples, y)

    below = (samples < y).sum(0).to(torch.float64)
    equal = (samples == y).sum(0).to(torch.float64)
    if randomize:
        share = torch.rand(y.shape, generator=generator, dtype=torch.float64)
    else:
        share = torch.full_like(y, 0.5)
    return (below + share * equal) / samples.shape[0]


def calibration_error(
    samples: ArrayLike, y: ArrayLike, levels: Sequence[float] = RELIABILITY_LEVELS
) -> torch.Tensor:
    """Mean absolute gap between nominal and empirical coverage of central intervals.

    For each level ``a`` the central interval of the samples at ``a`` (see
    :func:`central_interval`) is formed for every element, and its empirical coverage
    ``c_a`` is the fraction of elements whose observation falls inside, bounds
    included. The calibration error is ``mean_a |c_a - a|`` over the given levels:
    0 for perfect calibration, large for intervals that are much too narrow or too
    wide. It is the summary of the reliability diagram.

    :param samples: forecast draws of shape ``(num_samples, ...)``.
    :type samples: torch.Tensor or numpy.ndarray
    :param y: observations of shape ``(...)``.
    :type y: torch.Tensor or numpy.ndarray
    :param levels: central-interval levels, each in ``(0, 1)``; by default
        0.05, 0.10, ..., 0.95.
    :type levels: sequence of float
    :return: scalar calibration error in ``[0, 1)``, float64.
    :rtype: torch.Tensor
    """
    samples = _as_tensor(samples, "samples")
    y = _as_tensor(y, "y")
    _check_samples(samples, y)
    levels = _check_levels(levels)

    bounds = _quantiles_from_sorted(
        samples.sort(dim=0).values, _interval_probabilities(levels)
    )
    gaps = [
        interval_coverage(bounds[2 * k], bounds[2 * k + 1], y).mean() - level
        for k, level in enumerate(levels)
    ]
    return torch.stack(gaps).abs().mean()


def mixture_nll(log_probs: ArrayLike) -> torch.Tensor:
    """Negative log density of the posterior predictive mixture, per element.

    Given ``log p(y | theta_s)`` for each posterior draw ``theta_s``, the posterior
    predictive density is the mixture ``1/S sum_s p(y | theta_s)``, and its negative
    log is ``log S - logsumexp_s log p(y | theta_s)``, computed stably.

    :param log_probs: log densities of shape ``(num_samples, ...)``.
    :type log_probs: torch.Tensor or numpy.ndarray
    :return: predictive NLL of shape ``(...)``, float64.
    :rtype: torch.Tensor
    """
    log_probs = _as_tensor(log_probs, "log_probs")
    if log_probs.dim() < 1 or log_probs.shape[0] < 1:
        raise ValueError(
            f"log_probs need a draw dimension, got shape {tuple(log_probs.shape)}"
        )
    return math.log(log_probs.shape[0]) - torch.logsumexp(log_probs, dim=0)


class ForecastMetrics:
    """Accumulate probabilistic forecast scores over a stream of test batches.

    Use it inside posterior predictive sampling: call :meth:`update` once per batch
    of windows, then read the summary with :meth:`compute`, the scores per horizon
    step with :meth:`compute_by_horizon` and the reliability diagram with
    :meth:`reliability_table`. Only float64 running sums of shape ``(pred_len,)`` per
    score and level are kept, so memory does not grow with the number of windows.

    The point forecast for ``mse`` and ``mae`` is the sample mean unless one is
    given. ``crps`` is :func:`crps_ensemble`. ``coverage_<p>`` and ``width_<p>`` are
    the empirical coverage and mean width of the central intervals at each of
    ``levels`` (``p`` is the level in percent). ``calibration_error`` is the
    :func:`calibration_error` over ``reliability_levels``, from the pooled coverage
    of all batches. ``nll`` is :func:`mixture_nll` summed over everything scored and
    divided by the number of forecast elements, in nats per element.

    Usage::

        metrics = ForecastMetrics(levels=(0.5, 0.9))
        metrics.update(samples, y)  # (S, batch, pred_len, channels), (batch, ...)
        metrics.compute()["coverage_90"]

    :param levels: central-interval levels whose coverage and width are reported.
    :type levels: sequence of float
    :param reliability_levels: levels of the reliability diagram and of
        ``calibration_error``.
    :type reliability_levels: sequence of float
    :param bool fair_crps: report the fair CRPS instead of the empirical one.
    """

    def __init__(
        self,
        levels: Sequence[float] = DEFAULT_LEVELS,
        reliability_levels: Sequence[float] = RELIABILITY_LEVELS,
        fair_crps: bool = False,
    ):
        self.levels = _check_levels(levels, "levels")
        self.reliability_levels = _check_levels(
            reliability_levels, "reliability_levels"
        )
        self.fair_crps = bool(fair_crps)
        self._probs = _interval_probabilities(self.levels + self.reliability_levels)
        self.reset()

    def reset(self) -> None:
        """Forget every batch seen so far."""
        self.num_windows = 0
        self._pred_len: int | None = None
        self._channels: int | None = None
        self._nll_mode: str | None = None
        self._sums: dict[str, torch.Tensor] = {}
        self._nll_sum = 0.0

    def _init_sums(self, pred_len: int) -> None:
        zeros = torch.zeros(pred_len, dtype=torch.float64)
        self._sums = {name: zeros.clone() for name in ("sq_err", "abs_err", "crps")}
        num_levels = len(self.levels)
        self._sums["covered"] = torch.zeros(num_levels, pred_len, dtype=torch.float64)
        self._sums["width"] = torch.zeros(num_levels, pred_len, dtype=torch.float64)
        self._sums["reliability"] = torch.zeros(
            len(self.reliability_levels), pred_len, dtype=torch.float64
        )

    def _check_batch(self, samples, y, log_probs, point) -> str | None:
        if y.dim() != 3:
            raise ValueError(
                f"y must have shape (batch, pred_len, channels), got {tuple(y.shape)}"
            )
        _check_samples(samples, y)
        if self._pred_len is not None and y.shape[1:] != (
            self._pred_len,
            self._channels,
        ):
            raise ValueError(
                f"y of shape {tuple(y.shape)} does not continue the earlier batches "
                f"of (pred_len, channels) = ({self._pred_len}, {self._channels})"
            )
        if point is not None and point.shape != y.shape:
            raise ValueError(
                f"point of shape {tuple(point.shape)} does not match y of shape "
                f"{tuple(y.shape)}"
            )
        for name, value in (("samples", samples), ("y", y), ("point", point)):
            if value is not None and not bool(torch.isfinite(value).all()):
                bad = int((~torch.isfinite(value)).sum())
                raise ValueError(f"{name} holds {bad} non-finite values (NaN or inf)")

        if self.fair_crps and samples.shape[0] < 2:
            raise ValueError("the fair CRPS needs at least two samples, got 1")

        if log_probs is None:
            if self._nll_mode is not None:
                raise ValueError(
                    "log_probs were given for earlier batches but not for this one"
                )
            return None
        if log_probs.dim() >= 1 and log_probs.shape[1:] == y.shape:
            mode = "element"
        elif log_probs.dim() == 2 and log_probs.shape[1] == y.shape[0]:
            mode = "window"
        else:
            raise ValueError(
                f"log_probs of shape {tuple(log_probs.shape)} match neither y of shape "
                f"{tuple(y.shape)} per element (num_samples, batch, pred_len, "
                "channels) nor per window (num_samples, batch)"
            )
        if self._nll_mode is not None and mode != self._nll_mode:
            raise ValueError(
                f"log_probs are per {mode} in this batch but were per "
                f"{self._nll_mode} in earlier batches"
            )
        if self.num_windows > 0 and self._nll_mode is None:
            raise ValueError(
                "log_probs given now but not for earlier batches; the NLL would "
                "cover only part of the test set"
            )
        if torch.isnan(log_probs).any():
            raise ValueError("log_probs hold NaN values")
        return mode

    def update(
        self,
        samples: ArrayLike,
        y: ArrayLike,
        log_probs: ArrayLike | None = None,
        point: ArrayLike | None = None,
    ) -> None:
        """Add one batch of windows to the running sums.

        :param samples: forecast draws of shape
            ``(num_samples, batch, pred_len, channels)``.
        :type samples: torch.Tensor or numpy.ndarray
        :param y: truth of shape ``(batch, pred_len, channels)``.
        :type y: torch.Tensor or numpy.ndarray
        :param log_probs: ``log p(y | theta_s)`` per posterior draw, either per
            element ``(num_samples, batch, pred_len, channels)`` or per window
            ``(num_samples, batch)``; give them for every batch or for none.
        :type log_probs: torch.Tensor or numpy.ndarray or None
        :param point: point forecast of shape ``(batch, pred_len, channels)``;
            the sample mean when omitted.
        :type point: torch.Tensor or numpy.ndarray or None
        """
        samples = _as_tensor(samples, "samples")
        y = _as_tensor(y, "y")
        log_probs = None if log_probs is None else _as_tensor(log_probs, "log_probs")
        point = None if point is None else _as_tensor(point, "point")
        mode = self._check_batch(samples, y, log_probs, point)

        # Sums over windows and channels leave one value per horizon step.
        point = samples.mean(0) if point is None else point
        ordered = samples.sort(dim=0).values
        bounds = _quantiles_from_sorted(ordered, self._probs)
        lower, upper = bounds[0::2], bounds[1::2]
        covered = ((lower <= y) & (y <= upper)).to(torch.float64).sum(dim=(1, 3))
        num_levels = len(self.levels)
        batch_sums = {
            "sq_err": ((point - y) ** 2).sum(dim=(0, 2)),
            "abs_err": (point - y).abs().sum(dim=(0, 2)),
            "crps": _crps_from_sorted(ordered, y, self.fair_crps).sum(dim=(0, 2)),
            "covered": covered[:num_levels],
            "reliability": covered[num_levels:],
            "width": (upper[:num_levels] - lower[:num_levels]).sum(dim=(1, 3)),
        }
        nll_sum = None if mode is None else float(mixture_nll(log_probs).sum())

        # Everything is computed; only now does the state change.
        if self._pred_len is None:
            self._pred_len, self._channels = int(y.shape[1]), int(y.shape[2])
            self._init_sums(self._pred_len)
        for name, value in batch_sums.items():
            self._sums[name] += value
        if nll_sum is not None:
            self._nll_mode = mode
            self._nll_sum += nll_sum
        self.num_windows += int(y.shape[0])

    @property
    def num_elements(self) -> int:
        """Number of scored forecast elements, windows x pred_len x channels."""
        if self._pred_len is None:
            return 0
        return self.num_windows * self._pred_len * self._channels

    def _require_data(self) -> None:
        if self.num_windows == 0:
            raise RuntimeError("ForecastMetrics has seen no batch; call update first")

    def compute(self) -> dict[str, float]:
        """Summary scores over every window seen so far.

        :return: ``mse``, ``mae``, ``crps``, ``coverage_<p>`` and ``width_<p>`` for
            each level, ``calibration_error``, ``nll`` (only when ``log_probs`` were
            given), ``num_windows`` and ``num_elements``.
        :rtype: dict
        """
        self._require_data()
        sums, count = self._sums, self.num_elements
        result: dict[str, float] = {
            "mse": float(sums["sq_err"].sum()) / count,
            "mae": float(sums["abs_err"].sum()) / count,
            "crps": float(sums["crps"].sum()) / count,
        }
        for k, level in enumerate(self.levels):
            result[f"coverage_{_level_key(level)}"] = (
                float(sums["covered"][k].sum()) / count
            )
        for k, level in enumerate(self.levels):
            result[f"width_{_level_key(level)}"] = float(sums["width"][k].sum()) / count

        table = self.reliability_table()
        result["calibration_error"] = float(table["abs_error"].mean())
        if self._nll_mode is not None:
            result["nll"] = self._nll_sum / count
        result["num_windows"] = self.num_windows
        result["num_elements"] = count
        return result

    def compute_by_horizon(self) -> pd.DataFrame:
        """Scores at each horizon step, pooled over windows and channels.

        :return: one row per step ``1 .. pred_len`` (steps ahead of the forecast
            origin) with columns ``step``, ``mse``, ``mae``, ``crps`` and
            ``coverage_<p>`` for each level.
        :rtype: pandas.DataFrame
        """
        self._require_data()
        per_step = float(self.num_windows * self._channels)
        sums = self._sums
        columns = {
            "step": np.arange(1, self._pred_len + 1),
            "mse": (sums["sq_err"] / per_step).numpy(),
            "mae": (sums["abs_err"] / per_step).numpy(),
            "crps": (sums["crps"] / per_step).numpy(),
        }
        for k, level in enumerate(self.levels):
            columns[f"coverage_{_level_key(level)}"] = (
                sums["covered"][k] / per_step
            ).numpy()
        return pd.DataFrame(columns)

    def reliability_table(self) -> pd.DataFrame:
        """Nominal against empirical coverage of central intervals, for a diagram.

        :return: one row per reliability level with columns ``nominal``,
            ``empirical`` and ``abs_error`` (their absolute difference).
        :rtype: pandas.DataFrame
        """
        self._require_data()
        nominal = np.asarray(self.reliability_levels, dtype=np.float64)
        empirical = (self._sums["reliability"].sum(1) / self.num_elements).numpy()
        return pd.DataFrame(
            {
                "nominal": nominal,
                "empirical": empirical,
                "abs_error": np.abs(empirical - nominal),
            }
        )
