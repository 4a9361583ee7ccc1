"""Policies that choose the KL weight (β) of the ELBO from one update to the next.

Each policy is a small object with validated constructor arguments and one method,
``next_weight(observation)``, that returns the weight to use until the next update.
:class:`~pyro_autoformer.tuning.tuner.KLTuner` holds one policy per method and applies
the optional modifiers (:class:`StagedTargets`, :class:`ValidationFeedback`) around it,
so the same policies can also be driven by hand.

The weight follows the per-element convention of the tuner module: the loss is
``D + weight * K`` with ``D`` the data term and ``K = KL(q||p) / N``; see
:mod:`pyro_autoformer.tuning.tuner`.
"""

from __future__ import annotations

import logging
import math
from collections import deque
from dataclasses import dataclass
from typing import Protocol

logger = logging.getLogger(__name__)

#: Schedules understood by :class:`AnnealingPolicy`.
SCHEDULES = ("linear", "cosine", "exponential", "cyclical")

#: Targets above this KL share are usually too high (they tend to underfit).
HIGH_TARGET = 0.25

# Floor on |D| so that a data term of exactly zero gives a finite logarithm.
_TINY = 1e-12


def kl_share(data_loss: float, kl_loss: float, weight: float) -> float:
    """Return the share of the loss taken by the weighted KL term.

    The share is ``weight*K / (|D| + weight*K)``. Taking ``|D|`` keeps it in
    ``[0, 1]`` when a Gaussian or Student-t data term is zero or negative; when
    both terms are zero the share is 0.

    :param float data_loss: the data term ``D`` (per target element).
    :param float kl_loss: the KL term ``K = KL(q||p) / N``.
    :param float weight: the KL weight that was in force when ``D`` and ``K`` were
        measured.
    :returns: the KL share, in ``[0, 1]``.
    :rtype: float
    """
    weighted = weight * kl_loss
    denominator = abs(data_loss) + weighted
    if denominator <= 0.0:
        return 0.0
    return weighted / denominator


def _trend_endpoint(values) -> float:
    """Return the least-squares line through ``values`` evaluated at the last one.

    With fewer than three values it returns their mean.
    """
    n = len(values)
    mean = sum(values) / n
    if n < 3:
        return mean
    offsets = [i - (n - 1) / 2 for i in range(n)]
    slope = sum(x * v for x, v in zip(offsets, values)) / sum(x * x for x in offsets)
    return mean + slope * (n - 1) / 2


def _check_target(name: str, target: float) -> float:
    target = float(target)
    if not 0.0 < target < 1.0:
        raise ValueError(f"{name} must be in (0, 1), got {target!r}")
    if target > HIGH_TARGET:
        logger.warning(
            "%s=%.3f puts more than %.0f%% of the loss on the KL term, which usually "
            "underfits; 0.05 to 0.15 is the usual range",
            name,
            target,
            100 * HIGH_TARGET,
        )
    return target


def _check_positive(name: str, value: float) -> float:
    value = float(value)
    if not (math.isfinite(value) and value > 0.0):
        raise ValueError(f"{name} must be a positive finite number, got {value!r}")
    return value


@dataclass(frozen=True)
class Observation:
    """What a policy sees at one update.

    :param float position: the point of the schedule the new weight is for, in the
        unit of the annealing ``total`` (epochs by default; fractional when updating
        per step).
    :param float data_loss: the data term ``D`` measured since the last update.
    :param float kl_loss: the KL term ``K`` measured since the last update.
    :param float weight: the policy's own weight that was in force while ``D`` and
        ``K`` were measured (before any modifier).
    """

    position: float
    data_loss: float
    kl_loss: float
    weight: float


class Policy(Protocol):
    """Anything with ``next_weight(observation) -> float`` can drive the tuner."""

    def next_weight(self, observation: Observation) -> float: ...


class FixedPolicy:
    """Keep the KL weight constant.

    Use it for baselines, or once a good weight is known.

    :param float weight: the weight, positive.
    """

    def __init__(self, weight: float):
        self.weight = _check_positive("weight", weight)

    def next_weight(self, observation: Observation | None = None) -> float:
        """Return the fixed weight, whatever was observed."""
        return self.weight

    def __repr__(self) -> str:
        return f"FixedPolicy(weight={self.weight!r})"


class AnnealingPolicy:
    """Move the KL weight along a predetermined schedule.

    Use it when the amount of regularisation should follow training time rather than
    the losses: decreasing (``start_weight > end_weight``, more regularisation early)
    or warm-up (``start_weight < end_weight``, the usual cure for a KL that swamps the
    data term at the start). With ``t`` the schedule position, clamped to
    ``[0, total]``, and ``s``, ``e`` the start and end weights:

    - ``linear``: ``s + (e - s) * t / total``;
    - ``cosine``: ``e + (s - e) * (1 + cos(pi * t / total)) / 2``;
    - ``exponential``: geometric interpolation ``s * (e / s) ** (t / total)``
      (both weights must be positive);
    - ``cyclical`` (Fu et al., NAACL 2019): the run is split into ``n_cycles``
      cycles of length ``P = total / n_cycles``; with ``tau = (t mod P) / P`` the
      weight is ``s + (e - s) * min(tau / ratio, 1)``, so it moves linearly from
      ``s`` to ``e`` over the first ``ratio`` of each cycle and then stays at ``e``.
      At ``t >= total`` it is ``e``.

    Usage::

        policy = AnnealingPolicy("cosine", start_weight=1e-2, end_weight=1e-4,
                                 total=100)
        policy.weight_at(50)  # 5.05e-3

    :param str schedule: one of ``linear``, ``cosine``, ``exponential``,
        ``cyclical``.
    :param float start_weight: weight at position 0, non-negative.
    :param float end_weight: weight at position ``total``, non-negative.
    :param float total: length of the schedule (epochs or steps), positive.
    :param int n_cycles: number of cycles of the ``cyclical`` schedule.
    :param float ratio: fraction of each cycle spent moving, in ``(0, 1]``.
    """

    def __init__(
        self,
        schedule: str,
        start_weight: float,
        end_weight: float,
        total: float,
        n_cycles: int = 4,
        ratio: float = 0.5,
    ):
        if schedule not in SCHEDULES:
            raise ValueError(
                f"schedule must be one of {', '.join(SCHEDULES)}, got {schedule!r}"
            )
        for name, value in (("start_weight", start_weight), ("end_weight", end_weight)):
            if not (math.isfinite(value) and value >= 0.0):
                raise ValueError(
                    f"{name} must be a non-negative finite number, got {value!r}"
                )
        if schedule == "exponential" and min(start_weight, end_weight) <= 0.0:
            raise ValueError(
                "the exponential schedule interpolates geometrically and needs "
                f"start_weight > 0 and end_weight > 0, got {start_weight!r} and "
                f"{end_weight!r}"
            )
        if isinstance(n_cycles, bool) or int(n_cycles) != n_cycles or n_cycles < 1:
            raise ValueError(f"n_cycles must be a positive integer, got {n_cycles!r}")
        if not 0.0 < ratio <= 1.0:
            raise ValueError(f"ratio must be in (0, 1], got {ratio!r}")
        self.schedule = schedule
        self.start_weight = float(start_weight)
        self.end_weight = float(end_weight)
        self.total = _check_positive("total", total)
        self.n_cycles = int(n_cycles)
        self.ratio = float(ratio)

    def weight_at(self, t: float) -> float:
        """Return the scheduled weight at position ``t`` (clamped to ``[0, total]``).

        :param float t: schedule position, in the unit of ``total``.
        """
        s, e, total = self.start_weight, self.end_weight, self.total
        t = min(max(float(t), 0.0), total)
        if self.schedule == "linear":
            return s + (e - s) * t / total
        if self.schedule == "cosine":
            return e + (s - e) * (1.0 + math.cos(math.pi * t / total)) / 2.0
        if self.schedule == "exponential":
            return s * (e / s) ** (t / total)
        if t >= total:
            return e
        period = total / self.n_cycles
        tau = math.fmod(t, period) / period
        return s + (e - s) * min(tau / self.ratio, 1.0)

    def next_weight(self, observation: Observation) -> float:
        """Return the scheduled weight at ``observation.position``."""
        return self.weight_at(observation.position)

    def __repr__(self) -> str:
        return (
            f"AnnealingPolicy({self.schedule!r}, start_weight={self.start_weight!r}, "
            f"end_weight={self.end_weight!r}, total={self.total!r})"
        )


class AdaptivePolicy:
    """Hold the KL share at a target with a controller acting on ``log(weight)``.

    Use it when the right weight is unknown (the usual case). The KL share
    ``weight*K / (|D| + weight*K)`` has ``logit(share) = log(weight) - z`` with
    ``z = log|D| - log(K)``, so the weight giving the target ``t`` is
    ``w* = r * |D| / K = r * exp(z)``, ``r = t / (1 - t)``. Each update:

    1. smooths ``z`` over the last ``window`` updates with a least-squares line
       evaluated at the latest update (a plain mean would lag behind while ``D``
       and ``K`` drift during training), giving ``log(w*) = log(r) + z_smooth``;
    2. moves ``u = log(weight)`` a fraction ``gain`` of the way there and adds the
       integral term: ``u_new = u + gain * (log(w*) - u) + integral_gain * I``,
       where ``I`` sums the logit error ``logit(t) - logit(share)`` of the latest
       measurements;
    3. clamps ``u_new`` to ``[log(min_weight), log(max_weight)]``.

    Moving a fraction of the way converges without overshoot even when ``K`` and
    ``D`` respond to the weight, because the share rises with the weight; the
    integral removes the offset left while both terms drift. On a static response
    the loop has real poles when ``integral_gain <= gain**2 / 4``. Anti-windup: the
    error is not integrated while the clamp is active and the error pushes further
    into it, nor while ``|error| > integral_band`` (far from the target, where the
    proportional step does the work), so the controller recovers at once after a long
    saturation or a large initial error. For per-step updates, whose data terms are
    noisier, use a longer window (about 20 steps).

    :param float target: target KL share, in ``(0, 1)``; above 0.25 logs a warning.
    :param float min_weight: lower clamp of the weight, positive.
    :param float max_weight: upper clamp of the weight, ``>= min_weight``.
    :param int window: number of updates in the smoothing window.
    :param float gain: fraction of the way to ``w*`` moved per update, in
        ``(0, 1]``.
    :param float integral_gain: weight of the integral term, ``>= 0``.
    :param float integral_band: largest ``|logit error|`` that is integrated,
        positive.
    """

    def __init__(
        self,
        target: float,
        min_weight: float,
        max_weight: float,
        window: int = 5,
        gain: float = 0.5,
        integral_gain: float = 0.05,
        integral_band: float = 0.25,
    ):
        self.target = target
        self.min_weight = _check_positive("min_weight", min_weight)
        self.max_weight = _check_positive("max_weight", max_weight)
        if self.max_weight < self.min_weight:
            raise ValueError(
                f"max_weight must be >= min_weight, got max_weight={max_weight!r} "
                f"and min_weight={min_weight!r}"
            )
        if isinstance(window, bool) or int(window) != window or window < 1:
            raise ValueError(f"window must be a positive integer, got {window!r}")
        if not 0.0 < gain <= 1.0:
            raise ValueError(f"gain must be in (0, 1], got {gain!r}")
        if not (math.isfinite(integral_gain) and integral_gain >= 0.0):
            raise ValueError(f"integral_gain must be >= 0, got {integral_gain!r}")
        if integral_gain > gain**2 / 4:
            logger.warning(
                "integral_gain=%g exceeds gain**2/4=%g: the weight may oscillate",
                integral_gain,
                gain**2 / 4,
            )
        if not (math.isfinite(integral_band) and integral_band > 0.0):
            raise ValueError(f"integral_band must be > 0, got {integral_band!r}")
        self.integral_band = float(integral_band)
        self.window = int(window)
        self.gain = float(gain)
        self.integral_gain = float(integral_gain)
        self.integral = 0.0
        self._z: deque[float] = deque(maxlen=self.window)

    @property
    def target(self) -> float:
        """Target KL share, in ``(0, 1)``; may be changed between updates."""
        return self._target

    @target.setter
    def target(self, value: float) -> None:
        self._target = _check_target("target", value)

    def reset(self) -> None:
        """Forget the smoothing window and the integral."""
        self.integral = 0.0
        self._z.clear()

    def next_weight(self, observation: Observation) -> float:
        """Return the weight that moves the KL share toward the target.

        If the KL term is zero the share cannot be moved by the weight, and the
        weight in force is returned unchanged.

        :param Observation observation: the latest losses and the weight in force.
        """
        weight = min(max(observation.weight, self.min_weight), self.max_weight)
        if observation.kl_loss <= 0.0:
            return weight

        # z = log|D| - log K: the log-weight that gives odds 1 for these losses.
        z = math.log(max(abs(observation.data_loss), _TINY)) - math.log(
            observation.kl_loss
        )
        self._z.append(z)
        log_odds = math.log(self.target / (1.0 - self.target))
        u = math.log(weight)
        u_star = log_odds + _trend_endpoint(self._z)
        error = log_odds + z - u

        lo, hi = math.log(self.min_weight), math.log(self.max_weight)
        proportional = u + self.gain * (u_star - u)
        candidate = proportional + self.integral_gain * (self.integral + error)
        pushing_out = (candidate > hi and error > 0.0) or (
            candidate < lo and error < 0.0
        )
        if not pushing_out and abs(error) <= self.integral_band:
            self.integral += error
        u_new = proportional + self.integral_gain * self.integral
        return math.exp(min(max(u_new, lo), hi))

    def __repr__(self) -> str:
        return (
            f"AdaptivePolicy(target={self.target!r}, min_weight={self.min_weight!r}, "
            f"max_weight={self.max_weight!r}, window={self.window}, "
            f"gain={self.gain!r}, integral_gain={self.integral_gain!r})"
        )


class StagedTargets:
    """Change the adaptive target by epoch (multi-stage KL tuning).

    Use it to regularise strongly while the model explores and less while it
    fine-tunes, e.g. ``StagedTargets([(0, 0.20), (10, 0.10), (25, 0.05)])``. Before
    the first stage's epoch the target is left as it is.

    :param stages: ``(start_epoch, target)`` pairs with strictly increasing,
        non-negative start epochs and targets in ``(0, 1)``.
    """

    def __init__(self, stages):
        stages = [(start, target) for start, target in stages]
        if not stages:
            raise ValueError("stages must hold at least one (start_epoch, target)")
        previous = -1
        for start, target in stages:
            if isinstance(start, bool) or int(start) != start or start < 0:
                raise ValueError(
                    f"start_epoch must be a non-negative integer, got {start!r}"
                )
            if start <= previous:
                raise ValueError(
                    "stages must have strictly increasing start epochs, got "
                    f"{start!r} after {previous!r}"
                )
            _check_target(f"target of the stage starting at epoch {start}", target)
            previous = start
        self.stages = [(int(start), float(target)) for start, target in stages]

    def target_at(self, epoch: int) -> float | None:
        """Return the target of the stage ``epoch`` falls in, or ``None`` before all.

        :param int epoch: the epoch, from 0.
        """
        current = None
        for start, target in self.stages:
            if epoch >= start:
                current = target
        return current

    def __repr__(self) -> str:
        return f"StagedTargets({self.stages!r})"


class ValidationFeedback:
    """Scale the policy's weight up when validation worsens and down when it improves.

    Use it against overfitting when held-out losses are available. The modifier keeps
    a cumulative factor: the first validation loss sets the best so far and leaves the
    factor alone; after that, a loss above the best multiplies the factor by
    ``increase``, and any other loss multiplies it by ``decrease`` (and becomes the new
    best if lower). The tuner applies the factor after the policy and clamps the
    result; the policy itself keeps seeing its own weight, so with the adaptive policy
    the factor scales the odds of the target share rather than being undone.

    :param float increase: factor applied when validation worsens, ``>= 1``.
    :param float decrease: factor applied otherwise, in ``(0, 1]``.
    """

    def __init__(self, increase: float = 1.1, decrease: float = 0.95):
        if not (math.isfinite(increase) and increase >= 1.0):
            raise ValueError(f"increase must be >= 1, got {increase!r}")
        if not 0.0 < decrease <= 1.0:
            raise ValueError(f"decrease must be in (0, 1], got {decrease!r}")
        self.increase = float(increase)
        self.decrease = float(decrease)
        self.factor = 1.0
        self.best_val_loss: float | None = None

    def observe(self, val_loss: float | None) -> float:
        """Update the factor with a validation loss and return it.

        :param val_loss: the latest validation loss, or ``None`` (no change).
        """
        if val_loss is None:
            return self.factor
        val_loss = float(val_loss)
        if self.best_val_loss is None:
            self.best_val_loss = val_loss
        elif val_loss > self.best_val_loss:
            self.factor *= self.increase
        else:
            self.factor *= self.decrease
            self.best_val_loss = val_loss
        return self.factor

    def __repr__(self) -> str:
        return (
            f"ValidationFeedback(increase={self.increase!r}, "
            f"decrease={self.decrease!r})"
        )
