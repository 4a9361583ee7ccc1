"""KL-weight tuning inside your own ``pyro.infer.SVI`` loop, on ETTh1 windows.

The package's trainer (``pyro-autoformer train``) does all of this for you; this
script shows the pieces for a loop you write yourself, as the KL tuning guide does:

1. measure the data term and the KL term on the first few batches and start from
   :func:`~pyro_autoformer.tuning.suggest_kl_weight`;
2. give :class:`~pyro_autoformer.tuning.BetaELBO` the model as its ``beta``, so the
   ELBO reads ``model.kl_weight`` at every step;
3. after each epoch, call ``tuner.update_kl_weight(epoch, data, kl,
   method='adaptive')``, which writes the next weight to ``model.kl_weight``;
4. save the tuning history (``kl_history.csv``) and its figure (``kl_history.png``).

The data term ``D`` and the KL term ``K`` are both per target element of the
training set, so a weight of 1 is the exact ELBO (see
:mod:`pyro_autoformer.tuning.tuner`). ``--small`` trains a tiny network for a few
steps (seconds, for CI).

Usage::

    python examples/practical_kl_tuning.py --epochs 5 --output_dir runs/practical
    python examples/practical_kl_tuning.py --small --output_dir /tmp/practical
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import pandas as pd
import pyro
import torch

from pyro_autoformer.autoformer import AutoformerConfig
from pyro_autoformer.bayesian import BayesianConfig, BayesianEnhancedAutoformer
from pyro_autoformer.config import TuningConfig
from pyro_autoformer.data import DataConfig, load_data, prepare_batch
from pyro_autoformer.guides import MeanFieldGuide
from pyro_autoformer.training import make_loader
from pyro_autoformer.tuning import BetaELBO, KLTuner, suggest_kl_weight

#: Network and budget of ``--small``.
SMALL = {
    "sizes": dict(d_model=8, n_heads=2, d_ff=8, e_layers=1, d_layers=1, moving_avg=5),
    "windows": dict(seq_len=24, label_len=12, pred_len=12),
    "epochs": 2,
    "steps_per_epoch": 3,
    "val_windows": 16,
}
DEFAULT = {
    "sizes": dict(
        d_model=32, n_heads=4, d_ff=64, e_layers=2, d_layers=1, moving_avg=25
    ),
    "windows": dict(seq_len=96, label_len=48, pred_len=96),
    "val_windows": 256,
}


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output_dir", type=Path, default=Path("runs/practical"))
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--steps_per_epoch", type=int, default=50)
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--learning_rate", type=float, default=1e-3)
    parser.add_argument(
        "--optimizer", choices=("adam", "clipped_adam"), default="clipped_adam"
    )
    parser.add_argument("--target_kl_percentage", type=float, default=0.1)
    parser.add_argument("--min_kl_weight", type=float, default=1e-6)
    parser.add_argument(
        "--max_kl_weight",
        type=float,
        default=TuningConfig().max_kl_weight,
        help="upper clamp; 1 is the exact ELBO",
    )
    parser.add_argument("--prior_std", type=float, default=0.1)
    parser.add_argument("--init_scale", type=float, default=1e-3)
    parser.add_argument(
        "--warmup_batches",
        type=int,
        default=3,
        help="batches measured for the suggested initial weight",
    )
    parser.add_argument("--seed", type=int, default=2021)
    parser.add_argument("--small", action="store_true", help="a tiny run (seconds)")
    args = parser.parse_args(argv)
    for name in ("epochs", "steps_per_epoch", "batch_size", "warmup_batches"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be >= 1, got {getattr(args, name)}")
    if args.small:
        args.epochs = min(args.epochs, SMALL["epochs"])
        args.steps_per_epoch = min(args.steps_per_epoch, SMALL["steps_per_epoch"])
    return args


def validation_mse(model, guide, loader, label_len, pred_len, c_out) -> float:
    """MSE of the forecast at the guide's posterior median, per element."""
    weights = guide.median()
    squared, count = 0.0, 0
    model.eval()
    with torch.no_grad():
        for batch in loader:
            inputs, target = prepare_batch(batch, label_len, pred_len, c_out)
            output = model.network_output(weights, *inputs)
            squared += float(((model.likelihood.location(output) - target) ** 2).sum())
            count += target.numel()
    model.train()
    return squared / count


def main(argv=None) -> int:
    args = parse_args(argv)
    preset = SMALL if args.small else DEFAULT
    pyro.clear_param_store()
    pyro.set_rng_seed(args.seed)

    # Real ETTh1 windows, standardised with the training rows' statistics.
    data = load_data(DataConfig(features="M", **preset["windows"]))
    cfg = data.config
    train_loader = make_loader(
        data.train, args.batch_size, shuffle=True, seed=args.seed
    )
    val_loader = make_loader(
        data.val, args.batch_size, shuffle=False, limit=preset["val_windows"]
    )

    def batches(loader, limit):
        for i, batch in enumerate(loader):
            if i >= limit:
                return
            yield prepare_batch(batch, cfg.label_len, cfg.pred_len, data.c_out)

    network = AutoformerConfig(
        enc_in=data.enc_in,
        dec_in=data.enc_in,
        c_out=data.c_out,
        freq=cfg.freq,
        **preset["windows"],
        **preset["sizes"],
    )
    model = BayesianEnhancedAutoformer(
        network, BayesianConfig(prior_std=args.prior_std), dataset_size=len(data.train)
    )
    guide = MeanFieldGuide(model, init_scale=args.init_scale)

    # BetaELBO reads model.kl_weight at every evaluation; the tuner writes it.
    elbo = BetaELBO(beta=model)
    if args.optimizer == "adam":
        optim = pyro.optim.Adam({"lr": args.learning_rate})
    else:
        optim = pyro.optim.ClippedAdam({"lr": args.learning_rate, "clip_norm": 10.0})
    svi = pyro.infer.SVI(model, guide, optim, loss=elbo)

    # 1. Estimate the initial KL weight from the first few training batches.
    data_terms, kl_terms = [], []
    for inputs, target in batches(train_loader, args.warmup_batches):
        elbo.loss(model, guide, *inputs, target)
        data_terms.append(elbo.last.data)
        kl_terms.append(elbo.last.kl)
    initial_data_loss = sum(data_terms) / len(data_terms)
    initial_kl_loss = sum(kl_terms) / len(kl_terms)
    suggested = suggest_kl_weight(
        initial_data_loss, args.target_kl_percentage, kl_loss=initial_kl_loss
    )
    print(
        f"first batches: data term {initial_data_loss:.4f}, KL term "
        f"{initial_kl_loss:.4g}; suggested KL weight {suggested:.3g}"
    )

    # 2. The adaptive tuner, starting from the suggestion (clamped to its range).
    tuner = KLTuner(
        model,
        target_kl_percentage=args.target_kl_percentage,
        min_weight=args.min_kl_weight,
        max_weight=args.max_kl_weight,
        initial_weight=suggested,
    )

    # 3. Train with your own SVI loop; update the weight once per epoch.
    rows = []
    for epoch in range(args.epochs):
        data_sum, kl_sum, loss_sum, steps = 0.0, 0.0, 0.0, 0
        for inputs, target in batches(train_loader, args.steps_per_epoch):
            loss = svi.step(*inputs, target)
            if not math.isfinite(loss):
                print(
                    f"the loss is {loss} at epoch {epoch}, step {steps}: lower the "
                    "learning rate or --init_scale",
                    file=sys.stderr,
                )
                return 1
            data_sum += elbo.last.data
            kl_sum += elbo.last.kl
            loss_sum += loss
            steps += 1
        avg_data_loss, avg_kl_loss = data_sum / steps, kl_sum / steps
        new_weight, kl_contribution = tuner.update_kl_weight(
            epoch, avg_data_loss, avg_kl_loss, method="adaptive"
        )
        val_mse = validation_mse(
            model, guide, val_loader, cfg.label_len, cfg.pred_len, data.c_out
        )
        rows.append(
            {
                "epoch": epoch,
                "loss": loss_sum / steps,
                "data_loss": avg_data_loss,
                "kl_loss": avg_kl_loss,
                "kl_share": kl_contribution,
                "next_kl_weight": new_weight,
                "val_mse": val_mse,
            }
        )
        print(
            f"Epoch {epoch}: KL weight={new_weight:.2e}, "
            f"KL%={kl_contribution * 100:.1f}%, val MSE={val_mse:.4f}"
        )

    # 4. Save the tuning history and what each epoch did.
    args.output_dir.mkdir(parents=True, exist_ok=True)
    tuner.history.to_csv(args.output_dir / "kl_history.csv")
    tuner.plot_kl_tuning_history(args.output_dir / "kl_history.png")
    pd.DataFrame(rows).to_csv(args.output_dir / "epochs.csv", index=False)
    for finding in tuner.diagnose():
        print(f"diagnosis: {finding.name}: {finding.message}")
    print(f"wrote kl_history.csv, kl_history.png and epochs.csv to {args.output_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
