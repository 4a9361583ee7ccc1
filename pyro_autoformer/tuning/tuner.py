"""Tune the KL weight of the ELBO while training: adaptive, annealing or fixed.

The convention, used everywhere in this package
------------------------------------------------
The ELBO is normalised per target element. With ``N`` the number of target elements
in the training set (windows x ``pred_len`` x channels), the data term is
``D = -log p(y_train | w) / N``, where a minibatch's log-likelihood is scaled up to the
full training set before dividing, and the KL term is ``K = KL(q||p) / N``, the KL
summed over all Bayesian weights and counted once per pass over the data. The loss
is ``D + weight * K``: ``weight = 1`` (β = 1) is the exact negative ELBO divided by
``N``, and smaller weights temper the KL.

The **KL share** (the guide's "KL contribution" or "KL %") is
``weight*K / (|D| + weight*K)``. Taking ``|D|`` keeps it in ``[0, 1]`` when a
Gaussian or Student-t data term is zero or negative; when both terms are zero the
share is 0.

Code written as ``mse + kl_weight * KL_sum`` (a per-element data term plus a
per-element weight on the summed KL) uses the same loss with
``beta = kl_weight * N``; :func:`beta_from_per_element_weight` and
:func:`per_element_weight_from_beta` convert.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

from .history import KLHistory, KLRecord, PathLike
from .policies import (
    SCHEDULES,
    AdaptivePolicy,
    AnnealingPolicy,
    FixedPolicy,
    Observation,
    StagedTargets,
    ValidationFeedback,
    _check_target,
    kl_share,
)

logger = logging.getLogger(__name__)

METHODS = ("adaptive", "annealing", "fixed")

# Float summation can leave an analytic KL of a guide sitting on its prior a hair
# below zero; anything more negative than this is refused.
_KL_ROUNDING = 1e-6


def beta_from_per_element_weight(kl_weight: float, n: int) -> float:
    """Convert a per-element ``kl_weight`` on the summed KL to this package's β.

    ``mse + kl_weight * KL_sum`` equals ``D + beta * KL_sum / N`` when
    ``beta = kl_weight * N``.

    :param float kl_weight: weight multiplying the summed KL, non-negative.
    :param int n: number of target elements in the training set, positive.
    """
    _check_conversion(kl_weight, "kl_weight", n)
    return float(kl_weight) * n


def per_element_weight_from_beta(beta: float, n: int) -> float:
    """Convert this package's β to a per-element ``kl_weight`` on the summed KL.

    The inverse of :func:`beta_from_per_element_weight`: ``kl_weight = beta / N``.

    :param float beta: the KL weight of the per-element ELBO, non-negative.
    :param int n: number of target elements in the training set, positive.
    """
    _check_conversion(beta, "beta", n)
    return float(beta) / n


def _check_conversion(weight: float, name: str, n: int) -> None:
    if not (math.isfinite(weight) and weight >= 0.0):
        raise ValueError(f"{name} must be a non-negative finite number, got {weight!r}")
    if isinstance(n, bool) or int(n) != n or n < 1:
        raise ValueError(f"n must be a positive integer, got {n!r}")


def measure_kl_term(model) -> float:
    """Return ``K = KL(q||p) / N`` measured from a guide and its model.

    ``model`` may be the guide itself or an object with a ``guide`` attribute. The
    guide must offer ``kl_divergence()`` (the analytic KL summed over all weights)
    and ``N`` is read from ``num_target_elements`` on ``model``, on the guide or on
    the guide's ``model``.

    :param model: a guide, or a model holding one in ``.guide``.
    """
    guide = model if hasattr(model, "kl_divergence") else getattr(model, "guide", None)
    if guide is None or not hasattr(guide, "kl_divergence"):
        raise ValueError(
            "cannot measure the KL: pass kl_loss, or a model whose guide (the model "
            "itself or model.guide) has kl_divergence()"
        )
    n = None
    for owner in (model, guide, getattr(guide, "model", None)):
        n = getattr(owner, "num_target_elements", None)
        if n is not None:
            break
    if n is None or n <= 0:
        raise ValueError(
            "cannot normalise the KL: the model has no positive num_target_elements "
            f"(found {n!r}); pass kl_loss = KL / N instead"
        )
    try:
        import torch

        with torch.no_grad():
            kl = guide.kl_divergence()
    except ImportError:  # pragma: no cover - torch is a dependency
        kl = guide.kl_divergence()
    if hasattr(kl, "detach"):
        kl = kl.detach()
    return float(kl) / float(n)


def suggest_kl_weight(
    data_loss: float,
    target_percentage: float = 0.1,
    kl_loss: float | None = None,
    model=None,
) -> float:
    """Return the KL weight that would put the KL at ``target_percentage`` of the loss.

    Use it to start training (or an adaptive tuner) near the right weight:
    ``w = t / (1 - t) * |D| / K``. The KL term is ``kl_loss`` when given, else it is
    measured from ``model`` (see :func:`measure_kl_term`).

    Usage::

        weight = suggest_kl_weight(0.5, target_percentage=0.1, kl_loss=2.0)  # 1/36

    :param float data_loss: the data term ``D`` measured on the first batches.
    :param float target_percentage: target KL share, in ``(0, 1)``.
    :param kl_loss: the KL term ``K = KL(q||p) / N``, positive; or ``None``.
    :param model: a guide or an object with ``.guide``, used when ``kl_loss`` is
        ``None``.
    """
    target = _check_target("target_percentage", target_percentage)
    if not math.isfinite(data_loss):
        raise ValueError(f"data_loss must be finite, got {data_loss!r}")
    if kl_loss is None:
        if model is None:
            raise ValueError("pass kl_loss, or a model whose guide can measure it")
        kl_loss = measure_kl_term(model)
    if not (math.isfinite(kl_loss) and kl_loss > 0.0):
        raise ValueError(
            f"kl_loss must be positive and finite, got {kl_loss!r}: a zero KL has a "
            "zero share at every weight"
        )
    if data_loss == 0.0:
        raise ValueError(
            "data_loss is 0: any positive weight gives a 100% KL share, so no weight "
            "reaches the target"
        )
    return target / (1.0 - target) * abs(data_loss) / kl_loss


class KLTuner:
    """Choose the KL weight after each epoch or step, and record what happened.

    Use it in the training loop: after measuring the data term and the KL term, call
    :meth:`update_kl_weight`; it returns the weight to use until the next update and
    the KL share that the measured losses had. The method is chosen per call:

    - ``adaptive`` (recommended) holds the share at ``target_kl_percentage`` with an
      :class:`~pyro_autoformer.tuning.policies.AdaptivePolicy`;
    - ``annealing`` follows an
      :class:`~pyro_autoformer.tuning.policies.AnnealingPolicy` from
      ``anneal_start_weight`` (default ``max_weight``) to ``anneal_end_weight``
      (default ``min_weight``) over ``total_epochs``;
    - ``fixed`` keeps the weight that is in force when it is first used.

    ``staged_targets`` changes the target by epoch, and ``validation_feedback``
    scales every policy's weight by a factor driven by the validation loss; the result
    is always clamped to ``[min_weight, max_weight]``. If ``model`` has a
    ``kl_weight`` attribute, the tuner writes each new weight to it, and a value
    changed there by hand between updates is taken as the weight in force.

    Annealing positions: the weight returned after epoch ``e`` is the schedule's value
    at ``e + 1`` (the epoch it will be used for). With per-step calls it is the value
    at ``(step + 1) / steps_per_epoch`` epochs when ``steps_per_epoch`` is known, and
    otherwise the value at the current epoch.

    Usage::

        tuner = KLTuner(model, target_kl_percentage=0.1)
        for epoch in range(num_epochs):
            ...  # train, measuring avg_data_loss (D) and avg_kl_loss (K)
            weight, share = tuner.update_kl_weight(epoch, avg_data_loss, avg_kl_loss)
        tuner.plot_kl_tuning_history("kl_history.png")

    :param model: optional object whose ``kl_weight`` attribute the tuner keeps
        current.
    :param float target_kl_percentage: target KL share for ``adaptive``, in
        ``(0, 1)``; may be changed during training.
    :param float min_weight: lower clamp of the weight, positive.
    :param float max_weight: upper clamp of the weight, ``>= min_weight``.
    :param initial_weight: the weight in force before the first update; default the
        model's ``kl_weight`` if it has one, else ``sqrt(min_weight * max_weight)``.
    :param int window: updates averaged by the adaptive controller.
    :param float gain: proportional gain of the adaptive controller, in ``(0, 1]``.
    :param float integral_gain: integral gain of the adaptive controller.
    :param str schedule_type: default annealing schedule.
    :param total_epochs: default annealing length, in epochs.
    :param anneal_start_weight: annealing weight at epoch 0 (default ``max_weight``).
    :param anneal_end_weight: annealing weight at ``total_epochs`` (default
        ``min_weight``).
    :param int n_cycles: cycles of the ``cyclical`` schedule.
    :param float cycle_ratio: rising fraction of each ``cyclical`` cycle.
    :param steps_per_epoch: optimisation steps per epoch, for smooth per-step
        annealing.
    :param staged_targets: a :class:`StagedTargets` or a list of
        ``(start_epoch, target)`` pairs.
    :param validation_feedback: a :class:`ValidationFeedback`, or ``None``.
    """

    def __init__(
        self,
        model=None,
        target_kl_percentage: float = 0.1,
        min_weight: float = 1e-6,
        max_weight: float = 1.0,
        initial_weight: float | None = None,
        *,
        window: int = 5,
        gain: float = 0.5,
        integral_gain: float = 0.05,
        schedule_type: str = "linear",
        total_epochs: int | None = None,
        anneal_start_weight: float | None = None,
        anneal_end_weight: float | None = None,
        n_cycles: int = 4,
        cycle_ratio: float = 0.5,
        steps_per_epoch: int | None = None,
        staged_targets=None,
        validation_feedback: ValidationFeedback | None = None,
    ):
        self.model = model
        self._adaptive = AdaptivePolicy(
            target_kl_percentage,
            min_weight,
            max_weight,
            window=window,
            gain=gain,
            integral_gain=integral_gain,
        )
        self.min_weight = self._adaptive.min_weight
        self.max_weight = self._adaptive.max_weight
        if schedule_type not in SCHEDULES:
            raise ValueError(
                f"schedule_type must be one of {', '.join(SCHEDULES)}, "
                f"got {schedule_type!r}"
            )
        self.schedule_type = schedule_type
        self.total_epochs = total_epochs
        self.anneal_start_weight = (
            self.max_weight if anneal_start_weight is None else anneal_start_weight
        )
        self.anneal_end_weight = (
            self.min_weight if anneal_end_weight is None else anneal_end_weight
        )
        self.n_cycles = n_cycles
        self.cycle_ratio = cycle_ratio
        if steps_per_epoch is not None and (
            int(steps_per_epoch) != steps_per_epoch or steps_per_epoch < 1
        ):
            raise ValueError(
                f"steps_per_epoch must be a positive integer, got {steps_per_epoch!r}"
            )
        self.steps_per_epoch = steps_per_epoch
        if staged_targets is not None and not isinstance(staged_targets, StagedTargets):
            staged_targets = StagedTargets(staged_targets)
        self.staged_targets = staged_targets
        self.validation_feedback = validation_feedback
        self.history = KLHistory()
        self._annealing: dict[tuple, AnnealingPolicy] = {}
        self._fixed: FixedPolicy | None = None

        if initial_weight is None:
            model_weight = getattr(model, "kl_weight", None)
            initial_weight = (
                math.sqrt(self.min_weight * self.max_weight)
                if model_weight is None
                else float(model_weight)
            )
        if not (math.isfinite(initial_weight) and initial_weight > 0.0):
            raise ValueError(
                f"initial_weight must be positive and finite, got {initial_weight!r}"
            )
        self._base_weight = self._clamp(initial_weight)
        if self._base_weight != initial_weight:
            logger.warning(
                "initial_weight %g is outside [%g, %g]; using %g",
                initial_weight,
                self.min_weight,
                self.max_weight,
                self._base_weight,
            )
        self.kl_weight = self._base_weight
        self._write_to_model()

    @property
    def target_kl_percentage(self) -> float:
        """Target KL share of the adaptive method; may be changed mid-training."""
        return self._adaptive.target

    @target_kl_percentage.setter
    def target_kl_percentage(self, value: float) -> None:
        if value != self._adaptive.target:
            self._adaptive.target = value

    @property
    def adaptive_policy(self) -> AdaptivePolicy:
        """The controller used by the ``adaptive`` method."""
        return self._adaptive

    def _clamp(self, weight: float) -> float:
        return min(max(weight, self.min_weight), self.max_weight)

    def _write_to_model(self) -> None:
        if self.model is not None and hasattr(self.model, "kl_weight"):
            self.model.kl_weight = self.kl_weight

    def _weight_in_force(self) -> float:
        """Return the weight in force, adopting a value set by hand on the model."""
        model_weight = getattr(self.model, "kl_weight", None)
        if model_weight is None:
            return self.kl_weight
        model_weight = float(model_weight)
        if not math.isclose(model_weight, self.kl_weight, rel_tol=1e-12, abs_tol=0.0):
            logger.info(
                "model.kl_weight was changed to %g outside the tuner; using it",
                model_weight,
            )
            factor = self._feedback_factor()
            self.kl_weight = model_weight
            self._base_weight = self._clamp(model_weight / factor)
            self._fixed = None
        return self.kl_weight

    def _feedback_factor(self) -> float:
        return (
            1.0 if self.validation_feedback is None else self.validation_feedback.factor
        )

    def _policy(self, method: str, total_epochs, schedule_type):
        if method == "adaptive":
            return self._adaptive
        if method == "fixed":
            if self._fixed is None:
                self._fixed = FixedPolicy(self._base_weight)
            return self._fixed
        schedule = schedule_type or self.schedule_type
        total = total_epochs if total_epochs is not None else self.total_epochs
        if total is None:
            raise ValueError(
                "method='annealing' needs total_epochs (in the call or the tuner)"
            )
        key = (schedule, total)
        if key not in self._annealing:
            self._annealing[key] = AnnealingPolicy(
                schedule,
                self.anneal_start_weight,
                self.anneal_end_weight,
                total,
                n_cycles=self.n_cycles,
                ratio=self.cycle_ratio,
            )
        return self._annealing[key]

    def _position(self, epoch: int, step: int | None) -> float:
        if step is None:
            return epoch + 1.0
        if self.steps_per_epoch is not None:
            return (step + 1.0) / self.steps_per_epoch
        return float(epoch)

    def update_kl_weight(
        self,
        epoch: int,
        data_loss: float,
        kl_loss: float,
        method: str = "adaptive",
        total_epochs: int | None = None,
        schedule_type: str | None = None,
        step: int | None = None,
        val_loss: float | None = None,
    ) -> tuple[float, float]:
        """Record the latest losses and return the next KL weight and the KL share.

        :param int epoch: current epoch, from 0.
        :param float data_loss: the data term ``D`` since the last update.
        :param float kl_loss: the KL term ``K = KL(q||p) / N`` since the last update.
        :param str method: ``adaptive``, ``annealing`` or ``fixed``.
        :param total_epochs: annealing length (overrides the tuner's).
        :param schedule_type: annealing schedule (overrides the tuner's).
        :param step: global optimisation step, for per-step updates.
        :param val_loss: latest validation loss, if any.
        :returns: ``(new_weight, kl_contribution)``, the share being that of the given
            losses under the weight that was in force when they were measured.
        :raises ValueError: on an unknown method or a non-finite loss (naming the
            epoch and step).
        """
        if method not in METHODS:
            raise ValueError(
                f"method must be one of {', '.join(METHODS)}, got {method!r}"
            )
        if isinstance(epoch, bool) or int(epoch) != epoch or epoch < 0:
            raise ValueError(f"epoch must be a non-negative integer, got {epoch!r}")
        if step is not None and (int(step) != step or step < 0):
            raise ValueError(f"step must be a non-negative integer, got {step!r}")
        where = f"epoch {epoch}" + ("" if step is None else f", step {step}")
        data_loss, kl_loss = float(data_loss), float(kl_loss)
        if not math.isfinite(data_loss):
            raise ValueError(f"data_loss is {data_loss} at {where}")
        if not math.isfinite(kl_loss):
            raise ValueError(f"kl_loss is {kl_loss} at {where}")
        if kl_loss < 0.0:
            if kl_loss < -_KL_ROUNDING:
                raise ValueError(
                    f"kl_loss is {kl_loss} at {where}; KL(q||p) cannot be negative"
                )
            kl_loss = 0.0
        if val_loss is not None:
            val_loss = float(val_loss)
            if not math.isfinite(val_loss):
                raise ValueError(f"val_loss is {val_loss} at {where}")

        if self.staged_targets is not None:
            staged = self.staged_targets.target_at(int(epoch))
            if staged is not None:
                self.target_kl_percentage = staged
        weight = self._weight_in_force()
        share = kl_share(data_loss, kl_loss, weight)

        policy = self._policy(method, total_epochs, schedule_type)
        observation = Observation(
            position=self._position(int(epoch), step),
            data_loss=data_loss,
            kl_loss=kl_loss,
            weight=self._base_weight,
        )
        self._base_weight = self._clamp(policy.next_weight(observation))
        factor = 1.0
        if self.validation_feedback is not None:
            factor = self.validation_feedback.observe(val_loss)
        new_weight = self._clamp(self._base_weight * factor)

        self.history.append(
            KLRecord(
                epoch=int(epoch),
                step=None if step is None else int(step),
                weight=weight,
                data_loss=data_loss,
                kl_loss=kl_loss,
                weighted_kl=weight * kl_loss,
                kl_share=share,
                target=self.target_kl_percentage if method == "adaptive" else None,
                total_loss=data_loss + weight * kl_loss,
                val_loss=val_loss,
                method=method,
            )
        )
        self.kl_weight = new_weight
        self._write_to_model()
        logger.debug(
            "%s: %s KL weight %.3g -> %.3g, KL share %.1f%%",
            where,
            method,
            weight,
            new_weight,
            100 * share,
        )
        return new_weight, share

    def plot_kl_tuning_history(self, path: PathLike) -> Path:
        """Draw the tuning history to a PNG file and return its path.

        :param path: where to write the figure.
        """
        from .plotting import plot_history

        return plot_history(self.history, path)

    def diagnose(self):
        """Return the troubleshooting findings for the history so far.

        See :func:`pyro_autoformer.tuning.diagnosis.diagnose`.
        """
        from .diagnosis import diagnose

        return diagnose(self.history)
