"""How closely did adaptive tuning hold the KL share at its target in a run?

Reads a run directory's ``kl_history.csv`` (written by ``pyro-autoformer train``)
and reports, after a burn-in fraction of the updates, how the KL share compares with
its target: the share of each update, and its moving average over ``--smooth``
updates (minibatch data terms are noisy, so per-step shares scatter around the
held level).

Usage::

    pyro-autoformer train --des adaptive            # prints RUN_DIR last
    python benchmarks/adaptive_tracking.py RUN_DIR  # --burn_in 0.2 --tolerance 0.02
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from pyro_autoformer.tuning import KLHistory


def tracking(frame, burn_in: float, tolerance: float, smooth: int) -> dict:
    """Summary of the share against the target after the burn-in."""
    start = int(np.ceil(burn_in * len(frame)))
    share = frame["kl_share"].to_numpy()
    target = frame["target"].to_numpy(dtype=float)
    smoothed = np.convolve(share, np.ones(smooth) / smooth, mode="full")[: len(share)]
    counts = np.minimum(np.arange(1, len(share) + 1), smooth)
    smoothed = smoothed * smooth / counts
    after = slice(start, None)
    error = share[after] - target[after]
    smoothed_error = smoothed[after] - target[after]
    return {
        "updates": len(frame),
        "burn_in_updates": start,
        "target": float(np.nanmedian(target)),
        "share_mean": float(share[after].mean()),
        "share_std": float(share[after].std()),
        "within_tolerance": float(np.mean(np.abs(error) <= tolerance)),
        "smoothed_within_tolerance": float(
            np.mean(np.abs(smoothed_error) <= tolerance)
        ),
        "smoothed_max_abs_error": float(np.abs(smoothed_error).max()),
        "weight_first": float(frame["weight"].iloc[0]),
        "weight_last": float(frame["weight"].iloc[-1]),
    }


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run", type=Path)
    parser.add_argument("--burn_in", type=float, default=0.2)
    parser.add_argument("--tolerance", type=float, default=0.02)
    parser.add_argument("--smooth", type=int, default=20)
    args = parser.parse_args(argv)
    frame = KLHistory.from_csv(args.run / "kl_history.csv").to_frame()
    print(
        json.dumps(tracking(frame, args.burn_in, args.tolerance, args.smooth), indent=2)
    )


if __name__ == "__main__":
    main()
