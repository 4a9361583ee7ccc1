"""Command line: ``pyro-autoformer train | evaluate | forecast | ablation | sweep``.

``pyro-autoformer train`` with no arguments trains the CPU preset on the packaged
ETTh1 data with adaptive KL tuning at a 10% target and prints the run directory as its
last line. The flags follow the reference Autoformer scripts and the KL tuning guide;
they are turned into a validated :class:`~pyro_autoformer.config.RunConfig` here, and
nothing below this module sees an argument namespace.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
from collections.abc import Sequence

from .bayesian import BayesianConfig
from .config import (
    MODELS,
    PRESETS,
    GuideConfig,
    RunConfig,
    TrainConfig,
    TuningConfig,
)
from .data import DataConfig

__all__ = ["build_parser", "config_from_args", "float_list", "main"]

logger = logging.getLogger(__name__)

COMMANDS = ("train", "evaluate", "forecast", "ablation", "sweep")


class _Parser(argparse.ArgumentParser):
    """Reports a bad argument in one line, without the usage block."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message}\n")


def float_list(text: str) -> list[float]:
    """Argument type for comma-separated numbers, e.g. ``0.01,0.1,1.0``."""
    try:
        values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated numbers, got {text!r}"
        ) from None
    if not values:
        raise argparse.ArgumentTypeError("expected at least one number")
    return values


def _add_run_flags(parser: argparse.ArgumentParser) -> None:
    data = parser.add_argument_group("data")
    data.add_argument("--data_path", help="CSV file (default: the packaged ETTh1)")
    data.add_argument("--features", choices=("M", "S", "MS"), default="M")
    data.add_argument("--target", default="OT")
    data.add_argument("--freq", default="h", help="h, t, 15min, 30min, 3h, d, b, w, m")
    data.add_argument("--seq_len", type=int, default=96)
    data.add_argument("--label_len", type=int, default=48)
    data.add_argument("--pred_len", type=int, default=96)
    data.add_argument("--split", choices=("auto", "ett", "ratio"), default="auto")
    data.add_argument("--gaps", choices=("raise", "interpolate"), default="raise")
    data.add_argument("--date_column", default="date")
    data.add_argument(
        "--split_ratios",
        type=float_list,
        default=[0.7, 0.1, 0.2],
        help="train,val,test fractions for files split by ratio",
    )

    net = parser.add_argument_group("network (defaults from --preset)")
    net.add_argument("--model", choices=MODELS, default="BayesianEnhancedAutoformer")
    net.add_argument("--preset", choices=tuple(PRESETS), default="cpu")
    for name, kind in (
        ("d_model", int),
        ("n_heads", int),
        ("e_layers", int),
        ("d_layers", int),
        ("d_ff", int),
        ("moving_avg", int),
        ("factor", int),
        ("dropout", float),
    ):
        net.add_argument(f"--{name}", type=kind)

    bayes = parser.add_argument_group("priors, likelihood and guide")
    bayes.add_argument("--prior_std", type=float, default=0.1)
    bayes.add_argument("--prior_scale", choices=("fixed", "fan_in"), default="fixed")
    bayes.add_argument(
        "--bayesian_layers",
        default="all",
        help="all, none, or comma-separated groups (embedding, encoder, decoder, "
        "projection) and name patterns",
    )
    bayes.add_argument("--bayesian_biases", action="store_true")
    bayes.add_argument(
        "--likelihood", choices=("gaussian", "studentt", "quantile"), default="gaussian"
    )
    bayes.add_argument("--quantiles", type=float_list, default=[0.1, 0.5, 0.9])
    bayes.add_argument("--init_scale", type=float, default=0.02)
    bayes.add_argument("--pretrain_epochs", type=int, default=0)

    tuning = parser.add_argument_group("KL weight tuning")
    tuning.add_argument(
        "--kl_tuning_method",
        choices=("adaptive", "annealing", "fixed"),
        default="adaptive",
    )
    tuning.add_argument("--target_kl_percentage", type=float, default=0.1)
    tuning.add_argument(
        "--annealing_schedule",
        choices=("linear", "cosine", "exponential", "cyclical"),
        default="cosine",
    )
    tuning.add_argument("--min_kl_weight", type=float, default=1e-6)
    tuning.add_argument("--max_kl_weight", type=float, default=10.0)
    tuning.add_argument("--kl_weight", type=float, help="the initial KL weight")
    tuning.add_argument("--warmup", action="store_true", help="anneal upwards")
    tuning.add_argument("--update_every", choices=("step", "epoch"), default="step")

    train = parser.add_argument_group("training and evaluation")
    train.add_argument("--train_epochs", type=int, default=2)
    train.add_argument("--batch_size", type=int, default=32)
    train.add_argument("--learning_rate", type=float, default=1e-3)
    train.add_argument("--patience", type=int, default=3)
    train.add_argument(
        "--num_samples", type=int, default=20, help="posterior weight draws"
    )
    train.add_argument(
        "--noise_samples",
        type=int,
        default=5,
        help="observation-noise draws per weight draw",
    )
    train.add_argument("--seed", type=int, default=2021)
    train.add_argument("--device", default="cpu")
    train.add_argument("--max_steps_per_epoch", type=int)
    train.add_argument("--max_eval_windows", type=int)
    train.add_argument("--no_progress", action="store_true")
    parser.add_argument("--des", default="run", help="run name; 'ablation' runs one")
    parser.add_argument("--output_dir", default="runs")


def build_parser() -> argparse.ArgumentParser:
    """The ``pyro-autoformer`` argument parser."""
    parser = _Parser(
        prog="pyro-autoformer",
        description="Bayesian Autoformer with KL-weight tuning, in Pyro.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    commands.required = True

    train = commands.add_parser("train", help="train a run (default: CPU preset)")
    _add_run_flags(train)
    ablation = commands.add_parser(
        "ablation", help="deterministic, fixed, each annealing schedule, adaptive"
    )
    _add_run_flags(ablation)
    sweep = commands.add_parser("sweep", help="one run per --prior_std value")
    _add_run_flags(sweep)
    sweep.set_defaults(prior_std=None)
    for action in sweep._actions:
        if action.dest == "prior_std":
            action.type = float_list
            action.help = "comma-separated values, e.g. 0.01,0.1,1.0"

    evaluate = commands.add_parser("evaluate", help="recompute a run's test metrics")
    evaluate.add_argument("run", help="a run directory")
    evaluate.add_argument("--num_samples", type=int)
    evaluate.add_argument("--device", default="cpu")

    forecast = commands.add_parser("forecast", help="forecast past the end of a CSV")
    forecast.add_argument("run", help="a run directory")
    forecast.add_argument(
        "--data_path", help="CSV to forecast from (default: the run's data)"
    )
    forecast.add_argument("--output", help="CSV to write (default RUN/forecast.csv)")
    forecast.add_argument("--num_samples", type=int)
    forecast.add_argument("--device", default="cpu")
    return parser


def config_from_args(args: argparse.Namespace) -> RunConfig:
    """Turn parsed run flags into a validated :class:`RunConfig`."""
    sizes = PRESETS[args.preset]
    overrides = {
        f.name: getattr(args, f.name)
        for f in dataclasses.fields(sizes)
        if getattr(args, f.name, None) is not None
    }
    prior_std = args.prior_std
    if isinstance(prior_std, list):
        prior_std = prior_std[0]
    return RunConfig(
        data=DataConfig(
            data_path=args.data_path,
            features=args.features,
            target=args.target,
            freq=args.freq,
            seq_len=args.seq_len,
            label_len=args.label_len,
            pred_len=args.pred_len,
            split=args.split,
            gaps=args.gaps,
            date_column=args.date_column,
            split_ratios=tuple(args.split_ratios),
        ),
        sizes=dataclasses.replace(sizes, **overrides),
        bayes=BayesianConfig(
            bayesian_layers=args.bayesian_layers,
            prior_std=prior_std,
            prior_scale=args.prior_scale,
            bayesian_biases=args.bayesian_biases,
            likelihood=args.likelihood,
            quantiles=tuple(args.quantiles),
        ),
        guide=GuideConfig(
            init_scale=args.init_scale, pretrain_epochs=args.pretrain_epochs
        ),
        tuning=TuningConfig(
            kl_tuning_method=args.kl_tuning_method,
            target_kl_percentage=args.target_kl_percentage,
            min_kl_weight=args.min_kl_weight,
            max_kl_weight=args.max_kl_weight,
            kl_weight=args.kl_weight,
            annealing_schedule=args.annealing_schedule,
            warmup=args.warmup,
            update_every=args.update_every,
        ),
        train=TrainConfig(
            train_epochs=args.train_epochs,
            batch_size=args.batch_size,
            learning_rate=args.learning_rate,
            patience=args.patience,
            num_samples=args.num_samples,
            noise_samples=args.noise_samples,
            seed=args.seed,
            device=args.device,
            max_steps_per_epoch=args.max_steps_per_epoch,
            max_eval_windows=args.max_eval_windows,
            progress=not args.no_progress,
        ),
        model=args.model,
        des=args.des,
    )


def _run(args: argparse.Namespace) -> str:
    # Imported here so that `--help` and argument errors answer at once.
    from . import experiment, studies

    if args.command in ("train", "ablation", "sweep"):
        config = config_from_args(args)
        if args.command == "sweep":
            return str(studies.run_prior_sweep(config, args.prior_std, args.output_dir))
        if args.command == "ablation" or args.des == "ablation":
            return str(studies.run_ablation(config, args.output_dir))
        run_dir = experiment.train_run(config, args.output_dir)
        metrics = json.loads((run_dir / "metrics.json").read_text())
        keys = ("mse", "mae", "crps", "coverage_90", "nll", "train_seconds")
        summary = ", ".join(
            f"{k} {metrics[k]:.4g}" for k in keys if metrics.get(k) is not None
        )
        print(summary)
        return str(run_dir)
    if args.command == "evaluate":
        metrics = experiment.evaluate_run(args.run, args.num_samples, args.device)
        return json.dumps(metrics, indent=2)
    path = experiment.forecast_run(
        args.run, args.data_path, args.output, args.num_samples, args.device
    )
    return str(path)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``pyro-autoformer`` command; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(levelname)s %(name)s: %(message)s",
    )
    # Matplotlib's informational messages are not about the run.
    logging.getLogger("matplotlib").setLevel(logging.WARNING)
    from .checkpoint import CheckpointError
    from .experiment import RunError
    from .training import NonFiniteLossError

    try:
        print(_run(args))
    except (
        ValueError,
        RunError,
        CheckpointError,
        NonFiniteLossError,
        OSError,
    ) as error:
        print(f"pyro-autoformer: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(
            "pyro-autoformer: interrupted; no run directory was left", file=sys.stderr
        )
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
