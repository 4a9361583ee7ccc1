"""How the prior's standard deviation changes the KL, the fit and the intervals.

Trains one Bayesian Autoformer per ``--prior_std`` value on ETTh1, everything else
equal (data, seed, budget, adaptive KL tuning), with
:func:`pyro_autoformer.studies.run_prior_sweep`, and prints the comparison table.
A narrow prior (0.01) pulls the weights towards zero and makes the KL large for
any network that fits; a broad one (1.0) makes the KL small, so the tuner has to
raise the weight to keep its share (the guide's "KL too stable/low" symptom).

The study directory holds one run directory per value and ``results.csv``,
``results.md`` and ``comparison.png``; its path is printed as the last line.
``--small`` trains a tiny network for a few steps (seconds, for CI).

Usage::

    python examples/prior_std_experiment.py --prior_std 0.01,0.1,1.0
    python examples/prior_std_experiment.py --small --output_dir /tmp/prior_sweep
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
from pathlib import Path

import pandas as pd

from pyro_autoformer.cli import float_list
from pyro_autoformer.config import (
    PRESETS,
    RunConfig,
    TrainConfig,
    TuningConfig,
)
from pyro_autoformer.data import DataConfig
from pyro_autoformer.studies import run_prior_sweep

SMALL_SIZES = dict(d_model=8, n_heads=2, d_ff=8, e_layers=1, d_layers=1, moving_avg=5)
SMALL_WINDOWS = dict(seq_len=24, label_len=12, pred_len=12)
SMALL_TRAIN = dict(
    train_epochs=1, max_steps_per_epoch=3, max_eval_windows=16, num_samples=4
)


def _prior_stds(text: str) -> list[float]:
    values = float_list(text)
    if any(not v > 0 for v in values):
        raise argparse.ArgumentTypeError(f"expected positive numbers, got {text!r}")
    return values


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--prior_std",
        type=_prior_stds,
        default=[0.01, 0.1, 1.0],
        help="comma-separated values (default 0.01,0.1,1.0)",
    )
    parser.add_argument("--prior_scale", choices=("fixed", "fan_in"), default="fixed")
    parser.add_argument(
        "--kl_tuning_method",
        default="adaptive",
        choices=("adaptive", "annealing", "fixed"),
    )
    parser.add_argument("--target_kl_percentage", type=float, default=0.1)
    parser.add_argument("--train_epochs", type=int, default=3)
    parser.add_argument("--seed", type=int, default=2021)
    parser.add_argument("--output_dir", type=Path, default=Path("runs"))
    parser.add_argument("--small", action="store_true", help="a tiny study (seconds)")
    return parser.parse_args(argv)


def build_config(args: argparse.Namespace) -> RunConfig:
    """The configuration shared by every run of the sweep."""
    base = RunConfig()
    sizes, windows, train = PRESETS["cpu"], {}, {"train_epochs": args.train_epochs}
    if args.small:
        sizes = dataclasses.replace(sizes, **SMALL_SIZES)
        windows, train = SMALL_WINDOWS, SMALL_TRAIN
    return dataclasses.replace(
        base,
        data=DataConfig(**windows),
        sizes=sizes,
        bayes=dataclasses.replace(base.bayes, prior_scale=args.prior_scale),
        tuning=TuningConfig(
            kl_tuning_method=args.kl_tuning_method,
            target_kl_percentage=args.target_kl_percentage,
        ),
        train=TrainConfig(seed=args.seed, progress=False, **train),
        des="prior_std_sweep",
    )


def main(argv=None) -> int:
    args = parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(levelname)s %(name)s: %(message)s"
    )
    try:
        config = build_config(args)
        study = run_prior_sweep(config, args.prior_std, args.output_dir)
    except (ValueError, OSError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    table = pd.read_csv(study / "results.csv")
    columns = ["prior_std", "mse", "crps", "coverage_90", "final_kl", "final_kl_weight"]
    with pd.option_context("display.width", 120, "display.precision", 4):
        print(table[columns].to_string(index=False))
    print(study)
    return 0


if __name__ == "__main__":
    sys.exit(main())
