"""Draw a KL tuning history: share against target, weight, loss terms, total loss.

Use :func:`plot_history` after (or during) training to check that the KL share
stays near its target and the weight moves smoothly. The figure is drawn with the
Agg canvas directly, so no display is needed and the global matplotlib backend of
the calling process is left alone.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import seaborn as sns
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from .history import KLHistory, PathLike, atomic_open

#: Half-width of the shaded target band, in KL-share percentage points.
BAND_POINTS = 2.0


def _label_end(ax, x, y, text: str, color) -> None:
    """Write ``text`` just right of the last finite point of a line."""
    finite = np.isfinite(y)
    if finite.any():
        i = np.flatnonzero(finite)[-1]
        ax.annotate(
            text,
            (x[i], y[i]),
            xytext=(4, 0),
            textcoords="offset points",
            color=color,
            fontsize=8,
            va="center",
        )


def plot_history(history: KLHistory, path: PathLike, target: float | None = None):
    """Write a four-panel PNG of a KL tuning history and return its path.

    The panels are: the KL share (%) with its target band (target ± 2 points,
    shaded), the KL weight on a log axis, the data term against the weighted KL, and
    the total loss with the validation loss when recorded. The x axis is the global
    step when the updates were per step, else the epoch.

    :param KLHistory history: the updates to draw (at least one).
    :param path: where to write the PNG; written atomically.
    :param target: a constant target share to draw, in ``(0, 1)``; default the
        targets recorded in the history.
    """
    if len(history) == 0:
        raise ValueError("the KL history is empty: nothing to plot")
    if target is not None and not 0.0 < target < 1.0:
        raise ValueError(f"target must be in (0, 1), got {target!r}")
    frame = history.to_frame()
    per_step = frame["step"].notna().all()
    x = (frame["step"] if per_step else frame["epoch"]).to_numpy(dtype=float)
    x_label = "optimisation step" if per_step else "epoch"
    palette = sns.color_palette("deep")

    fig = Figure(figsize=(12, 8), layout="constrained")
    FigureCanvasAgg(fig)
    with sns.axes_style("whitegrid"):
        (ax_share, ax_weight), (ax_terms, ax_total) = fig.subplots(2, 2, sharex=True)

    share = 100 * frame["kl_share"].to_numpy(dtype=float)
    targets = frame["target"].to_numpy(dtype=float)
    if target is not None:
        targets = np.full_like(share, target)
    targets = 100 * targets
    if np.isfinite(targets).any():
        ax_share.fill_between(
            x,
            targets - BAND_POINTS,
            targets + BAND_POINTS,
            color=palette[2],
            alpha=0.2,
            step="post",
            linewidth=0,
        )
        ax_share.step(x, targets, where="post", color=palette[2], linestyle="--")
        _label_end(ax_share, x, targets, "target", palette[2])
    sns.lineplot(x=x, y=share, ax=ax_share, color=palette[0])
    ax_share.set_title(f"KL share of the loss (%), target band ±{BAND_POINTS:g} pts")
    ax_share.set_ylabel("KL share (%)")
    ax_share.set_ylim(bottom=0)

    weight = frame["weight"].to_numpy(dtype=float)
    sns.lineplot(x=x, y=weight, ax=ax_weight, color=palette[1])
    ax_weight.set_yscale("log")
    ax_weight.set_title("KL weight (log scale)")
    ax_weight.set_ylabel("weight")

    data = frame["data_loss"].to_numpy(dtype=float)
    weighted = frame["weighted_kl"].to_numpy(dtype=float)
    sns.lineplot(x=x, y=data, ax=ax_terms, color=palette[0])
    sns.lineplot(x=x, y=weighted, ax=ax_terms, color=palette[3])
    _label_end(ax_terms, x, data, "data D", palette[0])
    _label_end(ax_terms, x, weighted, "weight·K", palette[3])
    ax_terms.set_title("Data term D (blue) and weighted KL weight·K (red)")
    ax_terms.set_ylabel("per-element loss")
    ax_terms.set_xlabel(x_label)

    total = frame["total_loss"].to_numpy(dtype=float)
    sns.lineplot(x=x, y=total, ax=ax_total, color=palette[4])
    _label_end(ax_total, x, total, "train", palette[4])
    val = frame["val_loss"].to_numpy(dtype=float)
    title = "Total training loss D + weight·K"
    if np.isfinite(val).any():
        keep = np.isfinite(val)
        marker = "o" if keep.sum() <= 30 else None
        sns.lineplot(
            x=x[keep], y=val[keep], ax=ax_total, color=palette[5], marker=marker
        )
        _label_end(ax_total, x[keep], val[keep], "validation", palette[5])
        title += " (purple) and validation loss (brown)"
    ax_total.set_title(title)
    ax_total.set_ylabel("loss")
    ax_total.set_xlabel(x_label)

    methods = ", ".join(dict.fromkeys(frame["method"]))
    last = frame.iloc[-1]
    fig.suptitle(
        f"KL tuning ({methods}): {len(frame)} updates, last KL share "
        f"{100 * last['kl_share']:.1f}%, last weight {_short(last['weight'])}"
    )
    with atomic_open(path, "wb") as handle:
        fig.savefig(handle, format="png", dpi=100)
    return Path(path)


def _short(value: float) -> str:
    return "nan" if not math.isfinite(value) else f"{value:.3g}"
