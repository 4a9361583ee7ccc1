"""Train a Bayesian Autoformer with KL-weight tuning: ``pyro-autoformer train``.

This script takes exactly the flags of ``pyro-autoformer train`` (run it with
``--help`` to list them) and does the same thing: it trains one run, prints a line of
test metrics and then the run directory as its last line. With ``--des ablation`` it
runs the tuning ablation instead (deterministic, fixed, each annealing schedule,
adaptive) and prints the study directory.

Usage::

    # adaptive KL tuning at a 10% target
    python examples/train_bayesian_with_kl_tuning.py \\
        --model BayesianEnhancedAutoformer \\
        --kl_tuning_method adaptive \\
        --target_kl_percentage 0.1

    # the ablation study
    python examples/train_bayesian_with_kl_tuning.py \\
        --des ablation --model BayesianEnhancedAutoformer

    # cosine annealing with a weight capped at 0.05
    python examples/train_bayesian_with_kl_tuning.py \\
        --kl_tuning_method annealing --annealing_schedule cosine --max_kl_weight 0.05
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from pyro_autoformer import cli

GLOBAL_FLAGS = ("-v", "--verbose")


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``pyro-autoformer train`` with these arguments; return the exit status.

    :param argv: the arguments after the script name (default: ``sys.argv[1:]``).
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    # The command's global flags go before the subcommand.
    leading = [a for a in argv if a in GLOBAL_FLAGS]
    rest = [a for a in argv if a not in GLOBAL_FLAGS]
    return cli.main([*leading, "train", *rest])


if __name__ == "__main__":
    sys.exit(main())
