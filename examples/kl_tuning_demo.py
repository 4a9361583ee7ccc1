"""Run the KL tuner on a simulated training and save its histories and plots.

Each method (adaptive, the four annealing schedules, fixed) drives the same
simulated run, in which the KL term and the data term respond to the KL weight the
way they do when training a Bayesian network: a heavier weight pulls the guide
toward the prior (smaller KL) and costs some fit (larger data term), while the data
term falls as the network learns. No model is trained, so it finishes in seconds.

Usage::

    python examples/kl_tuning_demo.py --epochs 100 --output_dir runs/kl_tuning_demo
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import numpy as np

from pyro_autoformer.tuning.diagnosis import diagnose
from pyro_autoformer.tuning.tuner import KLTuner


class SimulatedTraining:
    """Data term ``D`` and KL term ``K`` of a run that respond to the KL weight.

    ``K`` relaxes toward ``a / (1 + b*w)`` and ``D`` toward ``d0(t) + c*w*K``, where
    ``d0`` decays from ``d_start`` to ``d_end``; both are measured with
    multiplicative noise.

    :param int seed: seed of the measurement noise.
    :param float noise: standard deviation of the log-noise on ``D``.
    """

    def __init__(self, seed: int = 0, noise: float = 0.02):
        self.rng = np.random.default_rng(seed)
        self.noise = noise
        self.a, self.b, self.c, self.rate = 2.0, 20.0, 0.5, 0.3
        self.d_start, self.d_end, self.tau = 1.0, 0.3, 30.0
        self.kl, self.data, self.t = self.a, self.d_start, 0.0

    def advance(self, weight: float) -> tuple[float, float]:
        """Train one epoch under ``weight``; return the measured ``(D, K)``."""
        self.kl += self.rate * (self.a / (1.0 + self.b * weight) - self.kl)
        d0 = self.d_end + (self.d_start - self.d_end) * math.exp(-self.t / self.tau)
        self.data += self.rate * (d0 + self.c * weight * self.kl - self.data)
        self.t += 1.0
        data = self.data * math.exp(self.noise * self.rng.standard_normal())
        kl = self.kl * math.exp(0.3 * self.noise * self.rng.standard_normal())
        return data, kl

    def val_loss(self) -> float:
        """A validation loss that tracks the data term."""
        return 1.1 * self.data * math.exp(0.5 * self.noise * self.rng.standard_normal())


RUNS = [
    ("adaptive", {"method": "adaptive"}),
    ("annealing_linear", {"method": "annealing", "schedule_type": "linear"}),
    ("annealing_cosine", {"method": "annealing", "schedule_type": "cosine"}),
    ("annealing_exponential", {"method": "annealing", "schedule_type": "exponential"}),
    ("annealing_cyclical", {"method": "annealing", "schedule_type": "cyclical"}),
    ("fixed", {"method": "fixed"}),
]


def run(name: str, options: dict, epochs: int, output_dir: Path, seed: int) -> None:
    sim = SimulatedTraining(seed=seed)
    # adaptive starts from the default sqrt(min_weight * max_weight) = 1e-3, far below
    # the weight it should find; annealing decays tenfold; fixed keeps 1e-2
    initial = {"adaptive": None, "annealing": 5e-2, "fixed": 1e-2}[options["method"]]
    tuner = KLTuner(
        target_kl_percentage=0.1,
        max_weight=1.0,
        initial_weight=initial,
        anneal_start_weight=5e-2,
        anneal_end_weight=5e-3,
    )
    weight = tuner.kl_weight
    for epoch in range(epochs):
        data, kl = sim.advance(weight)
        weight, share = tuner.update_kl_weight(
            epoch, data, kl, total_epochs=epochs, val_loss=sim.val_loss(), **options
        )
    csv = tuner.history.to_csv(output_dir / f"{name}.csv")
    tuner.history.to_json(output_dir / f"{name}.json")
    png = tuner.plot_kl_tuning_history(output_dir / f"{name}.png")
    print(
        f"{name:<22} last weight {weight:.3g}  last KL share {100 * share:5.1f}%  "
        f"-> {csv}, {png.name}"
    )
    for finding in diagnose(tuner.history):
        print(f"{'':<22} {finding.name}: {finding.message}")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=100, help="epochs per run")
    parser.add_argument(
        "--output_dir", type=Path, default=Path("runs/kl_tuning_demo"), help="outputs"
    )
    parser.add_argument("--seed", type=int, default=0, help="noise seed")
    args = parser.parse_args(argv)
    if args.epochs < 2:
        parser.error(f"--epochs must be at least 2, got {args.epochs}")
    for name, options in RUNS:
        run(name, options, args.epochs, args.output_dir, args.seed)
    print(f"wrote histories (CSV, JSON) and plots (PNG) to {args.output_dir}")


if __name__ == "__main__":
    main()
