"""Time one SVI step of the Bayesian Autoformer against three references.

Four ways to take one optimisation step on the same network and the same batch:

(a) ``ours``: :class:`BayesianAutoformer` + :class:`MeanFieldGuide` + :class:`BetaELBO`,
    ``elbo.differentiable_loss``, backward, ``torch.optim.Adam`` step;
(b) ``deterministic``: the plain :class:`Autoformer` trained with MSE and Adam;
(c) ``autonormal``: the same model with Pyro's ``AutoNormal``, ``TraceMeanField_ELBO``
    and ``pyro.infer.SVI``;
(d) ``reference``: a hand-written mean-field step in plain torch (flat location
    and raw-scale vectors, ``w = loc + softplus(raw) * eps``,
    ``torch.func.functional_call``, Gaussian NLL, closed-form KL, Adam).

Each is warmed up, then the variants are timed in turns, one step each per round,
so that a change in the machine's load affects all of them alike; the median
milliseconds per step and the ratios (a)/(d), (c)/(a) and (a)/(b) are printed as a
Markdown table and as JSON. The inputs are random tensors of the right shapes: the
cost of a step does not depend on the values.

Usage::

    python benchmarks/svi_step.py                     # CPU preset
    python benchmarks/svi_step.py --d_model 128 --batch 16 --steps 30
    python benchmarks/svi_step.py --profile           # where (a) spends its time
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import math
import pstats
import statistics
import time

import pyro
import pyro.distributions as dist
import torch
from pyro.infer.autoguide import AutoNormal
from torch.func import functional_call
from torch.nn import functional as F

from pyro_autoformer.autoformer import Autoformer, AutoformerConfig
from pyro_autoformer.bayesian import BayesianAutoformer, BayesianConfig
from pyro_autoformer.guides.mean_field import MeanFieldGuide
from pyro_autoformer.tuning.elbo import BetaELBO

LR = 1e-3
INIT_SCALE = 1e-3


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add = parser.add_argument
    add("--d_model", type=int, default=64)
    add("--n_heads", type=int, default=4)
    add("--e_layers", type=int, default=2)
    add("--d_layers", type=int, default=1)
    add("--d_ff", type=int, default=128)
    add("--seq_len", type=int, default=96)
    add("--label_len", type=int, default=48)
    add("--pred_len", type=int, default=96)
    add("--enc_in", type=int, default=7)
    add("--batch", type=int, default=32)
    add("--dataset_size", type=int, default=8449, help="training windows (ETTh1)")
    add("--prior_std", type=float, default=0.1)
    add("--warmup", type=int, default=3, help="untimed steps per variant")
    add("--steps", type=int, default=15, help="timed steps per variant")
    add("--threads", type=int, default=0, help="torch threads (0: torch default)")
    add("--seed", type=int, default=0)
    add(
        "--only",
        default="ours,deterministic,autonormal,reference",
        help="comma-separated variants to time",
    )
    add("--profile", action="store_true", help="cProfile (a) instead of timing")
    add("--json", default=None, help="also write the results to this file")
    return parser.parse_args(argv)


def make_config(args) -> AutoformerConfig:
    return AutoformerConfig(
        enc_in=args.enc_in,
        dec_in=args.enc_in,
        c_out=args.enc_in,
        seq_len=args.seq_len,
        label_len=args.label_len,
        pred_len=args.pred_len,
        d_model=args.d_model,
        n_heads=args.n_heads,
        e_layers=args.e_layers,
        d_layers=args.d_layers,
        d_ff=args.d_ff,
    )


def make_batch(config: AutoformerConfig, batch: int):
    marks = config.n_time_features
    inputs = (
        torch.randn(batch, config.seq_len, config.enc_in),
        torch.randn(batch, config.seq_len, marks),
        torch.randn(batch, config.dec_len, config.dec_in),
        torch.randn(batch, config.dec_len, marks),
    )
    y = torch.randn(batch, config.pred_len, config.c_out)
    return inputs, y


# ------------------------------------------------------------------- variants
def ours_step(config, args, inputs, y):
    """(a) our model, guide and ELBO as a differentiable loss in a torch loop."""
    bayes = BayesianConfig(prior_std=args.prior_std)
    model = BayesianAutoformer(config, bayes, dataset_size=args.dataset_size)
    guide = MeanFieldGuide(model, init_scale=INIT_SCALE)
    elbo = BetaELBO(beta=1.0)
    parameters = list(model.parameters()) + list(guide.parameters())
    optimizer = torch.optim.Adam(parameters, lr=LR)

    def step():
        optimizer.zero_grad(set_to_none=True)
        loss = elbo.differentiable_loss(model, guide, *inputs, y)
        loss.backward()
        optimizer.step()
        return loss

    return step


def deterministic_step(config, args, inputs, y):
    """(b) the same network, trained with MSE."""
    net = Autoformer(config)
    optimizer = torch.optim.Adam(net.parameters(), lr=LR)

    def step():
        optimizer.zero_grad(set_to_none=True)
        loss = F.mse_loss(net(*inputs), y)
        loss.backward()
        optimizer.step()
        return loss

    return step


def autonormal_step(config, args, inputs, y):
    """(c) Pyro's stock AutoNormal with TraceMeanField_ELBO and SVI."""
    bayes = BayesianConfig(prior_std=args.prior_std)
    model = BayesianAutoformer(config, bayes, dataset_size=args.dataset_size)
    guide = AutoNormal(model, init_scale=INIT_SCALE)
    svi = pyro.infer.SVI(
        model, guide, pyro.optim.Adam({"lr": LR}), pyro.infer.TraceMeanField_ELBO()
    )

    def step():
        return svi.step(*inputs, y)

    return step


def reference_step(config, args, inputs, y):
    """(d) mean-field variational inference written by hand in plain torch."""
    net = Autoformer(config)
    # The same weights as (a): every Linear/Conv1d weight is random.
    names = [
        f"{module_name}.weight"
        for module_name, module in net.named_modules()
        if isinstance(module, (torch.nn.Linear, torch.nn.Conv1d))
    ]
    shapes = [net.get_parameter(n).shape for n in names]
    sizes = [math.prod(s) for s in shapes]
    loc = torch.cat([net.get_parameter(n).detach().flatten() for n in names])
    loc.requires_grad_(True)
    raw = torch.full_like(loc, math.log(math.expm1(INIT_SCALE)), requires_grad=True)
    others = {
        n: p for n, p in net.named_parameters() if n not in set(names)
    }  # layer norms and biases, point-estimated
    raw_noise = torch.full(
        (config.c_out,), math.log(math.expm1(0.5)), requires_grad=True
    )
    optimizer = torch.optim.Adam([loc, raw, raw_noise, *others.values()], lr=LR)
    prior_std = args.prior_std
    n_elements = args.dataset_size * config.pred_len * config.c_out
    likelihood_scale = args.dataset_size / y.shape[0]

    def step():
        optimizer.zero_grad(set_to_none=True)
        scale = F.softplus(raw)
        w = loc + scale * torch.randn_like(loc)
        weights = {n: part.view(s) for n, s, part in zip(names, shapes, w.split(sizes))}
        output = functional_call(net, {**others, **weights}, inputs)
        noise = F.softplus(raw_noise) + 1e-4
        nll = -dist.Normal(output, noise).log_prob(y).sum() * likelihood_scale
        kl = (
            torch.log(prior_std / scale)
            + (scale**2 + loc**2) / (2 * prior_std**2)
            - 0.5
        ).sum()
        loss = (nll + kl) / n_elements
        loss.backward()
        optimizer.step()
        return loss

    return step


VARIANTS = {
    "ours": ("(a) ours: MeanFieldGuide + BetaELBO", ours_step),
    "deterministic": ("(b) deterministic MSE", deterministic_step),
    "autonormal": ("(c) AutoNormal + TraceMeanField_ELBO", autonormal_step),
    "reference": ("(d) hand-written mean-field", reference_step),
}


# ------------------------------------------------------------------- running
def time_variants(builders: dict, config, args, inputs, y) -> dict[str, list[float]]:
    """Warm every variant up, then time one step of each in turn per round."""
    steps = {}
    for key, build in builders.items():
        pyro.clear_param_store()
        torch.manual_seed(args.seed)
        steps[key] = build(config, args, inputs, y)
        for _ in range(args.warmup):
            steps[key]()
    times = {key: [] for key in steps}
    for _ in range(args.steps):
        for key, step in steps.items():
            start = time.perf_counter()
            loss = step()
            times[key].append((time.perf_counter() - start) * 1e3)
            value = float(torch.as_tensor(loss).detach())
            if not math.isfinite(value):
                raise RuntimeError(f"{key}: non-finite loss {value}")
    return times


def profile_ours(config, args, inputs, y) -> str:
    pyro.clear_param_store()
    torch.manual_seed(args.seed)
    step = ours_step(config, args, inputs, y)
    for _ in range(args.warmup):
        step()
    profiler = cProfile.Profile()
    profiler.enable()
    for _ in range(args.steps):
        step()
    profiler.disable()
    out = io.StringIO()
    stats = pstats.Stats(profiler, stream=out).sort_stats("tottime")
    stats.print_stats(25)
    return out.getvalue()


def markdown_table(results: dict, ratios: dict) -> str:
    lines = [
        "| variant | median ms/step | min ms/step |",
        "|---|---:|---:|",
    ]
    for row in results.values():
        lines.append(
            f"| {row['label']} | {row['median_ms']:.1f} | {row['min_ms']:.1f} |"
        )
    lines += ["", "| ratio | value | target |", "|---|---:|---|"]
    for name, (value, target) in ratios.items():
        shown = "n/a" if value is None else f"{value:.2f}"
        lines.append(f"| {name} | {shown} | {target} |")
    return "\n".join(lines)


def main(argv=None) -> dict:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    config = make_config(args)
    torch.manual_seed(args.seed)
    inputs, y = make_batch(config, args.batch)

    if args.profile:
        print(profile_ours(config, args, inputs, y))
        return {}

    keys = [k.strip() for k in args.only.split(",") if k.strip()]
    unknown = sorted(set(keys) - set(VARIANTS))
    if unknown:
        raise SystemExit(f"unknown variants {unknown}; choose from {list(VARIANTS)}")
    times = time_variants({k: VARIANTS[k][1] for k in keys}, config, args, inputs, y)
    results = {
        key: {
            "label": VARIANTS[key][0],
            "median_ms": statistics.median(times[key]),
            "min_ms": min(times[key]),
            "steps": len(times[key]),
        }
        for key in keys
    }

    def ratio(top, bottom):
        if top in results and bottom in results:
            return results[top]["median_ms"] / results[bottom]["median_ms"]
        return None

    ratios = {
        "(a)/(d) ours vs hand-written": (ratio("ours", "reference"), "<= 1.25"),
        "(c)/(a) AutoNormal vs ours": (ratio("autonormal", "ours"), ">= 2"),
        "(a)/(b) ours vs deterministic": (ratio("ours", "deterministic"), "-"),
    }
    report = {
        "config": {k: v for k, v in vars(args).items() if k not in ("json", "only")},
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "pyro": pyro.__version__,
        "results": results,
        "ratios": {k: v for k, (v, _) in ratios.items()},
    }
    print(markdown_table(results, ratios))
    print()
    print(json.dumps(report, indent=2))
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(report, handle, indent=2)
    return report


if __name__ == "__main__":
    main()
