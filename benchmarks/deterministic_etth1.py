"""Train the deterministic Autoformer on ETTh1 and report test MSE and MAE.

The protocol is the paper's: multivariate forecasting (features ``M``), 96 steps of
context, 48 label steps, a horizon of 96 by default; Adam with learning rate 1e-4,
batch size 32, MSE loss, the learning rate halved after every epoch, at most 10
epochs and early stopping when the validation MSE has not improved for 3 epochs;
the weights with the best validation MSE are restored before testing. Errors are on
the standardised scale, as in the paper's tables.

Validation and test use every window of their split; the reference drops the last
incomplete batch of the test split as well, which leaves out up to 31 windows.

Usage::

    python benchmarks/deterministic_etth1.py                       # paper sizes
    python benchmarks/deterministic_etth1.py --small --max_steps 20 --epochs 1

The result is printed as one JSON object.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import logging
import math
import time

import torch

from pyro_autoformer.autoformer import Autoformer, AutoformerConfig
from pyro_autoformer.data import DataConfig, load_data, prepare_batch

logger = logging.getLogger("deterministic_etth1")

SMALL_SIZES = dict(d_model=16, n_heads=2, e_layers=1, d_layers=1, d_ff=32)


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data_path", default=None, help="CSV; default ETTh1")
    parser.add_argument("--features", default="M", choices=("M", "S", "MS"))
    parser.add_argument("--target", default="OT")
    parser.add_argument("--freq", default="h")
    parser.add_argument("--seq_len", type=int, default=96)
    parser.add_argument("--label_len", type=int, default=48)
    parser.add_argument("--pred_len", type=int, default=96)
    parser.add_argument("--d_model", type=int, default=512)
    parser.add_argument("--n_heads", type=int, default=8)
    parser.add_argument("--e_layers", type=int, default=2)
    parser.add_argument("--d_layers", type=int, default=1)
    parser.add_argument("--d_ff", type=int, default=2048)
    parser.add_argument("--moving_avg", type=int, default=25)
    parser.add_argument("--factor", type=int, default=1)
    parser.add_argument("--dropout", type=float, default=0.05)
    parser.add_argument("--activation", default="gelu", choices=("gelu", "relu"))
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--patience", type=int, default=3)
    parser.add_argument(
        "--max_steps",
        type=int,
        default=None,
        help="stop each epoch after this many optimisation steps",
    )
    parser.add_argument(
        "--max_eval_batches",
        type=int,
        default=None,
        help="evaluate validation and test on at most this many batches",
    )
    parser.add_argument(
        "--small",
        action="store_true",
        help="tiny network for smoke runs: " + json.dumps(SMALL_SIZES),
    )
    parser.add_argument("--seed", type=int, default=2021)
    parser.add_argument("--threads", type=int, default=None, help="torch threads")
    args = parser.parse_args(argv)
    if args.small:
        for name, value in SMALL_SIZES.items():
            setattr(args, name, value)
    return args


@torch.no_grad()
def evaluate(model, dataset, args, c_out: int) -> dict:
    """Return MSE and MAE of ``model`` over ``dataset`` (all windows, or the first
    ``args.max_eval_batches`` batches)."""
    model.eval()
    loader = torch.utils.data.DataLoader(dataset, batch_size=args.batch_size)
    squared, absolute, count = 0.0, 0.0, 0
    for i, batch in enumerate(loader):
        if args.max_eval_batches is not None and i >= args.max_eval_batches:
            break
        inputs, target = prepare_batch(batch, args.label_len, args.pred_len, c_out)
        error = model(*inputs) - target
        squared += float(error.square().sum())
        absolute += float(error.abs().sum())
        count += error.numel()
    return {"mse": squared / count, "mae": absolute / count}


def train(args) -> dict:
    """Train with early stopping and return the test errors and the history."""
    torch.manual_seed(args.seed)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    started = time.perf_counter()

    data = load_data(
        DataConfig(
            data_path=args.data_path,
            features=args.features,
            target=args.target,
            freq=args.freq,
            seq_len=args.seq_len,
            label_len=args.label_len,
            pred_len=args.pred_len,
        )
    )
    config = AutoformerConfig(
        enc_in=data.enc_in,
        dec_in=data.enc_in,
        c_out=data.c_out,
        seq_len=args.seq_len,
        label_len=args.label_len,
        pred_len=args.pred_len,
        d_model=args.d_model,
        n_heads=args.n_heads,
        e_layers=args.e_layers,
        d_layers=args.d_layers,
        d_ff=args.d_ff,
        moving_avg=args.moving_avg,
        factor=args.factor,
        dropout=args.dropout,
        activation=args.activation,
        freq=data.config.freq,
    )
    model = Autoformer(config)
    optimizer = torch.optim.Adam(model.parameters(), lr=args.lr)
    loader = torch.utils.data.DataLoader(
        data.train, batch_size=args.batch_size, shuffle=True, drop_last=True
    )

    history, best_mse, best_state, best_epoch, waited = [], math.inf, None, 0, 0
    for epoch in range(1, args.epochs + 1):
        model.train()
        epoch_started, losses = time.perf_counter(), []
        for step, batch in enumerate(loader):
            if args.max_steps is not None and step >= args.max_steps:
                break
            inputs, target = prepare_batch(
                batch, args.label_len, args.pred_len, data.c_out
            )
            loss = torch.nn.functional.mse_loss(model(*inputs), target)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            losses.append(float(loss))

        val = evaluate(model, data.val, args, data.c_out)
        history.append(
            {
                "epoch": epoch,
                "train_mse": sum(losses) / len(losses),
                "val_mse": val["mse"],
                "lr": optimizer.param_groups[0]["lr"],
                "seconds": time.perf_counter() - epoch_started,
                "steps": len(losses),
            }
        )
        logger.info("epoch %d: %s", epoch, history[-1])

        if val["mse"] < best_mse:
            best_mse, best_epoch, waited = val["mse"], epoch, 0
            best_state = copy.deepcopy(model.state_dict())
        else:
            waited += 1
            if waited >= args.patience:
                logger.info("early stopping after epoch %d", epoch)
                break
        for group in optimizer.param_groups:
            group["lr"] = args.lr * 0.5**epoch

    model.load_state_dict(best_state)
    test = evaluate(model, data.test, args, data.c_out)
    return {
        "test_mse": test["mse"],
        "test_mae": test["mae"],
        "best_epoch": best_epoch,
        "best_val_mse": best_mse,
        "wall_time_s": time.perf_counter() - started,
        "n_parameters": sum(p.numel() for p in model.parameters()),
        "torch_threads": torch.get_num_threads(),
        "model": dataclasses.asdict(config),
        "training": {
            k: getattr(args, k)
            for k in ("lr", "batch_size", "epochs", "patience", "max_steps", "seed")
        },
        "windows": {
            "train": len(data.train),
            "val": len(data.val),
            "test": len(data.test),
        },
        "history": history,
    }


def main(argv=None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    print(json.dumps(train(parse_args(argv)), indent=2))


if __name__ == "__main__":
    main()
