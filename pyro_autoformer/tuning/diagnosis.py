"""Recognise the usual KL-tuning problems in a history and say what to do about them.

Use :func:`diagnose` after a run (or every few epochs) on a
:class:`~pyro_autoformer.tuning.history.KLHistory`: each :class:`Finding` names a
problem, gives the numbers that show it and lists remedies. The checks look at the
last ``window`` updates unless they need the whole run (underfitting, overfitting);
their thresholds are the fields of :class:`DiagnosisConfig`.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

logger = logging.getLogger(__name__)


@dataclass
class Finding:
    """One problem seen in a KL tuning history.

    :param str name: short identifier, e.g. ``kl_exploding``.
    :param str message: one or two sentences saying what was seen.
    :param dict evidence: the numbers behind the finding.
    :param list remedies: what to try, most likely first.
    """

    name: str
    message: str
    evidence: dict = field(default_factory=dict)
    remedies: list[str] = field(default_factory=list)


@dataclass
class DiagnosisConfig:
    """Thresholds of :func:`diagnose`.

    :param int window: number of recent updates most checks look at (>= 4).
    :param float explode_growth: KL growth factor over the window that counts as
        exploding (> 1).
    :param float explode_rising: fraction of updates in the window in which the KL
        must rise, in ``(0, 1]``.
    :param float low_share: KL share below which regularisation is too weak, in
        ``(0, 1)``.
    :param float erratic_points: median update-to-update change of the share (as a
        fraction, 0.02 = 2 points) above which the share is erratic.
    :param float erratic_relative: the same change relative to the median share.
    :param float erratic_sign_changes: fraction of direction reversals that makes a
        moving share erratic rather than converging, in ``(0, 1]``.
    :param float min_improvement: relative decrease of the data term over the run
        below which it counts as not decreasing.
    :param float overfit_rise: relative rise of the validation loss above its best
        that counts as overfitting.
    :param float swamp_share: KL share at or above which the KL swamps the data term.
    """

    window: int = 10
    explode_growth: float = 10.0
    explode_rising: float = 0.8
    low_share: float = 0.03
    erratic_points: float = 0.02
    erratic_relative: float = 0.25
    erratic_sign_changes: float = 0.4
    min_improvement: float = 0.05
    overfit_rise: float = 0.05
    swamp_share: float = 0.9

    def __post_init__(self):
        if int(self.window) != self.window or self.window < 4:
            raise ValueError(f"window must be an integer >= 4, got {self.window!r}")
        if not self.explode_growth > 1.0:
            raise ValueError(f"explode_growth must be > 1, got {self.explode_growth!r}")
        for name in ("explode_rising", "erratic_sign_changes"):
            value = getattr(self, name)
            if not 0.0 < value <= 1.0:
                raise ValueError(f"{name} must be in (0, 1], got {value!r}")
        for name in ("low_share", "swamp_share"):
            value = getattr(self, name)
            if not 0.0 < value < 1.0:
                raise ValueError(f"{name} must be in (0, 1), got {value!r}")
        for name in (
            "erratic_points",
            "erratic_relative",
            "min_improvement",
            "overfit_rise",
        ):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0.0):
                raise ValueError(f"{name} must be positive, got {value!r}")


def _improvement(data: np.ndarray, window: int) -> tuple[float, float, float]:
    """Return (relative decrease, early mean, late mean) of the data term."""
    k = max(1, min(window, len(data) // 3))
    early, late = float(data[:k].mean()), float(data[-k:].mean())
    scale = max(abs(early), abs(late), 1e-12)
    return (early - late) / scale, early, late


def _kl_exploding(frame, config) -> Finding | None:
    kl = frame["kl_loss"].to_numpy(dtype=float)[-config.window :]
    if len(kl) < 4 or (kl <= 0).any():
        return None
    logs = np.log(kl)
    steps = np.diff(logs)
    growth = float(kl[-1] / kl[0])
    rising = float((steps > 0).mean())
    half = len(logs) // 2
    early_rate = (logs[half] - logs[0]) / half
    late_rate = (logs[-1] - logs[half]) / (len(logs) - 1 - half)
    if growth < config.explode_growth or rising < config.explode_rising:
        return None
    if late_rate < 0.5 * early_rate:
        return None  # growth is levelling off: the guide is leaving its prior
    per_update = growth ** (1.0 / (len(kl) - 1))
    return Finding(
        name="kl_exploding",
        message=(
            f"The KL term grew {growth:.3g}x over the last {len(kl)} updates "
            f"(about {per_update:.2f}x per update) and is still accelerating or "
            "steady: training is unstable."
        ),
        evidence={
            "growth": growth,
            "growth_per_update": per_update,
            "fraction_rising": rising,
            "kl_first": float(kl[0]),
            "kl_last": float(kl[-1]),
        },
        remedies=[
            "Start from a smaller KL weight (suggest_kl_weight gives one for a "
            "target share).",
            "Lower the learning rate and clip gradients (e.g. ClippedAdam's "
            "clip_norm).",
            "Check the initialisation of the layers and of the guide scales "
            "(a smaller init_scale).",
            "Use a tighter prior (smaller prior scale, e.g. 0.1 -> 0.01) so weights "
            "cannot drift far.",
        ],
    )


def _kl_share_low(frame, config) -> Finding | None:
    recent = frame.tail(config.window)
    share = float(recent["kl_share"].median())
    targets = recent["target"].dropna()
    target = float(targets.iloc[-1]) if len(targets) else None
    if share >= config.low_share or (target is not None and target < config.low_share):
        return None
    weights = recent["weight"].to_numpy(dtype=float)
    adaptive = bool((recent["method"] == "adaptive").all())
    pinned = adaptive and bool(np.allclose(weights, weights[-1], rtol=1e-9))
    message = (
        f"The KL share stayed at {100 * share:.2f}% (median of the last "
        f"{len(recent)} updates), below {100 * config.low_share:g}%: the KL barely "
        "regularises."
    )
    if pinned:
        message += (
            f" The adaptive weight stayed at {weights[-1]:.3g}: it is likely held "
            "at max_weight."
        )
    return Finding(
        name="kl_share_low",
        message=message,
        evidence={"median_share": share, "target": target, "weight_pinned": pinned},
        remedies=[
            "Raise the KL weight by hand, or raise max_weight if the adaptive tuner "
            "sits at its ceiling.",
            "Use a wider prior (larger prior scale).",
            "Check that the Bayesian layers are on: a KL near zero means few or no "
            "weights are sampled.",
            "Raise the learning rate so the guide moves away from its initialisation.",
        ],
    )


def _kl_share_erratic(frame, config) -> Finding | None:
    share = frame["kl_share"].to_numpy(dtype=float)[-config.window :]
    if len(share) < 5:
        return None
    steps = np.diff(share)
    typical = float(np.median(np.abs(steps)))
    median_share = float(np.median(share))
    threshold = max(config.erratic_points, config.erratic_relative * median_share)
    signs = np.sign(steps[steps != 0])
    reversals = float((signs[1:] != signs[:-1]).mean()) if len(signs) > 1 else 0.0
    if typical <= threshold or reversals < config.erratic_sign_changes:
        return None
    return Finding(
        name="kl_share_erratic",
        message=(
            f"The KL share jumps by {100 * typical:.1f} points per update (median) "
            f"around {100 * median_share:.1f}%, changing direction in "
            f"{100 * reversals:.0f}% of updates."
        ),
        evidence={
            "median_abs_change": typical,
            "median_share": median_share,
            "fraction_reversals": reversals,
        },
        remedies=[
            "Smooth more: a longer adaptive window (and a smaller gain for per-step "
            "updates).",
            "Lower the learning rate.",
            "Use larger batches so each loss estimate is less noisy.",
        ],
    )


def _underfitting(frame, config) -> Finding | None:
    data = frame["data_loss"].to_numpy(dtype=float)
    if len(data) < 4:
        return None
    improvement, early, late = _improvement(data, config.window)
    if improvement >= config.min_improvement:
        return None
    share = float(frame["kl_share"].tail(config.window).median())
    return Finding(
        name="underfitting",
        message=(
            f"The data term went from {early:.4g} to {late:.4g} "
            + (
                f"({100 * improvement:.1f}% lower; less than "
                if improvement >= 0
                else f"({100 * -improvement:.1f}% higher; a decrease of at least "
            )
            + f"{100 * config.min_improvement:g}% was expected): the model is not "
            f"fitting, with a KL share of {100 * share:.1f}%."
        ),
        evidence={
            "relative_decrease": improvement,
            "data_loss_early": early,
            "data_loss_late": late,
            "median_share": share,
        },
        remedies=[
            "Lower the target KL share (5-10% is the usual range)"
            + (", far below the current share" if share > 0.25 else "")
            + ".",
            "Lower the KL weight (or its max_weight).",
            "Check whether the priors are too restrictive (scale them to the layer "
            "with prior_scale='fan_in').",
        ],
    )


def _overfitting(frame, config) -> Finding | None:
    rows = frame[frame["val_loss"].notna()]
    if len(rows) < 5:
        return None
    val = rows["val_loss"].to_numpy(dtype=float)
    train = rows["data_loss"].to_numpy(dtype=float)
    best = int(np.argmin(val))
    tail = max(1, min(3, len(val) - best - 1))
    if best >= len(val) - 2:
        return None
    val_late = float(val[-tail:].mean())
    rise = (val_late - val[best]) / max(abs(val[best]), 1e-12)
    train_late = float(train[-tail:].mean())
    if rise <= config.overfit_rise or train_late >= train[best]:
        return None
    best_epoch = int(rows["epoch"].iloc[best])
    return Finding(
        name="overfitting",
        message=(
            f"The validation loss is {100 * rise:.1f}% above its best "
            f"({val[best]:.4g} at epoch {best_epoch}) while the training data term "
            f"kept falling ({train[best]:.4g} -> {train_late:.4g})."
        ),
        evidence={
            "best_val_loss": float(val[best]),
            "best_epoch": best_epoch,
            "val_loss_late": val_late,
            "relative_rise": rise,
            "data_loss_at_best": float(train[best]),
            "data_loss_late": train_late,
        },
        remedies=[
            "Raise the target KL share (15-25% regularises heavily).",
            "Anneal more aggressively: keep the weight high for longer.",
            "Add other regularisation (dropout, weight decay) or stop at the best "
            "validation epoch.",
        ],
    )


def _data_term_non_positive(frame, config) -> Finding | None:
    data = frame["data_loss"].to_numpy(dtype=float)[-config.window :]
    count = int((data <= 0).sum())
    if count == 0:
        return None
    return Finding(
        name="data_term_non_positive",
        message=(
            f"The data term was <= 0 in {count} of the last {len(data)} updates "
            f"(latest {data[-1]:.4g}), as a Gaussian or Student-t negative "
            "log-likelihood can be. The KL share uses |D|, so it stays in [0, 1], "
            "but it reaches 100% as D crosses zero."
        ),
        evidence={"count_non_positive": count, "data_loss_last": float(data[-1])},
        remedies=[
            "Read the share as weight*K against |D|; near D = 0 the adaptive tuner "
            "drives the weight to min_weight, so prefer a fixed or annealed weight "
            "there.",
            "Or tune on a non-negative data term (MSE or CRPS) and compare runs by "
            "weight rather than by share.",
        ],
    )


def _kl_swamps_data(frame, config) -> Finding | None:
    share = float(frame["kl_share"].tail(config.window).median())
    if share < config.swamp_share:
        return None
    data = frame["data_loss"].to_numpy(dtype=float)
    improvement = None
    if len(data) >= 4:
        improvement, _, _ = _improvement(data, config.window)
        if improvement >= config.min_improvement:
            return None
    return Finding(
        name="kl_swamps_data",
        message=(
            f"The KL takes {100 * share:.1f}% of the loss and the data term is flat: "
            "the KL swamps the likelihood, so the guide stays near the prior and "
            "forecasts go flat."
        ),
        evidence={"median_share": share, "data_relative_decrease": improvement},
        remedies=[
            "Scale the priors to the layer (prior_scale='fan_in') instead of a unit "
            "prior on every weight.",
            "Start the guide with a smaller init_scale.",
            "Initialise the guide's locations from a trained deterministic network.",
            "Lower the KL weight: tune it (adaptive tuner at 5-10%, or "
            "suggest_kl_weight) or warm it up with annealing.",
        ],
    )


_CHECKS = (
    _kl_exploding,
    _kl_share_low,
    _kl_share_erratic,
    _underfitting,
    _overfitting,
    _data_term_non_positive,
    _kl_swamps_data,
)


def diagnose(history, config: DiagnosisConfig | None = None) -> list[Finding]:
    """Return the troubleshooting findings for a KL tuning history.

    An empty list means none of the known problems was seen. Findings can overlap
    (a KL that swamps the data term also underfits).

    :param history: a :class:`~pyro_autoformer.tuning.history.KLHistory`, or
        a frame from its ``to_frame()``.
    :param DiagnosisConfig config: thresholds; default :class:`DiagnosisConfig`.
    """
    config = DiagnosisConfig() if config is None else config
    frame = history if isinstance(history, pd.DataFrame) else history.to_frame()
    if len(frame) == 0:
        return []
    findings = [f for check in _CHECKS if (f := check(frame, config)) is not None]
    for finding in findings:
        logger.info("KL tuning: %s", finding.message)
    return findings
