"""Training loops: SVI with a tuned KL weight, and the deterministic baseline.

:class:`SVITrainer` runs stochastic variational inference on a
:class:`~pyro_autoformer.bayesian.BayesianAutoformer` and its guide with a
:class:`~pyro_autoformer.tuning.BetaELBO` whose weight a
:class:`~pyro_autoformer.tuning.KLTuner` sets after every step or epoch. It validates
each epoch on the posterior-mean forecast, halves the learning rate after each epoch
(the reference Autoformer's schedule), stops early, and keeps the best epoch's state.
:func:`train_deterministic` trains the plain Autoformer with MSE as the reference
implementation does.

A step whose loss is not finite (a diverging run: unscaled targets, too large a
learning rate or initial guide scale) is skipped with a warning naming the epoch and
step; after ``max_nonfinite_steps`` such steps in a row training stops with
:class:`NonFiniteLossError`, so a NaN never reaches a saved state.
"""

from __future__ import annotations

import copy
import logging
import math
import sys
import time
from dataclasses import asdict, dataclass
from typing import Callable

import pyro
import torch
from torch.utils.data import DataLoader, Subset
from tqdm.auto import tqdm

from .config import TrainConfig, TuningConfig
from .data import ForecastData, prepare_batch
from .tuning import BetaELBO, KLTuner

__all__ = [
    "EpochSummary",
    "NonFiniteLossError",
    "SVITrainer",
    "make_loader",
    "make_tuner",
    "train_deterministic",
]

logger = logging.getLogger(__name__)


class NonFiniteLossError(RuntimeError):
    """Training diverged: the loss stayed NaN or infinite."""


@dataclass
class EpochSummary:
    """What one epoch did (losses are means over its steps)."""

    epoch: int
    loss: float
    data_term: float
    kl_term: float
    kl_weight: float
    kl_share: float
    val_mse: float
    val_nll: float
    seconds: float
    skipped_steps: int

    def as_dict(self) -> dict:
        return asdict(self)


def make_loader(dataset, batch_size: int, shuffle: bool, seed: int = 0, limit=None):
    """A :class:`~torch.utils.data.DataLoader`, optionally over at most ``limit``
    evenly spaced windows of ``dataset``."""
    if limit is not None and limit < len(dataset):
        step = len(dataset) / limit
        dataset = Subset(dataset, [int(i * step) for i in range(limit)])
    generator = torch.Generator().manual_seed(seed)
    return DataLoader(
        dataset, batch_size=batch_size, shuffle=shuffle, generator=generator
    )


def make_tuner(model, tuning: TuningConfig, total_epochs: int, steps_per_epoch):
    """A :class:`~pyro_autoformer.tuning.KLTuner` configured from ``tuning``.

    Per-step updates (``steps_per_epoch`` given) smooth the noisy minibatch terms
    over 20 updates; per-epoch updates over 5.
    """
    start, end = tuning.max_kl_weight, tuning.min_kl_weight
    if tuning.warmup:
        start, end = end, start
    return KLTuner(
        model,
        target_kl_percentage=tuning.target_kl_percentage,
        min_weight=tuning.min_kl_weight,
        max_weight=tuning.max_kl_weight,
        initial_weight=tuning.initial_weight(),
        schedule_type=tuning.annealing_schedule,
        total_epochs=total_epochs,
        anneal_start_weight=start,
        anneal_end_weight=end,
        steps_per_epoch=steps_per_epoch,
        window=5 if steps_per_epoch is None else 20,
    )


def _progress(iterable, enabled: bool, **kwargs):
    return tqdm(iterable, disable=not (enabled and sys.stderr.isatty()), **kwargs)


def _halve_learning_rate(optimizer) -> None:
    """The reference Autoformer's schedule: half the learning rate each epoch."""
    for group in optimizer.param_groups:
        group["lr"] *= 0.5


def _all_finite(*modules) -> bool:
    return all(bool(torch.isfinite(p).all()) for m in modules for p in m.parameters())


class SVITrainer:
    """SVI on a Bayesian Autoformer with KL-weight tuning and early stopping.

    Usage::

        trainer = SVITrainer(model, guide, data, tuning, train)
        epochs = trainer.fit()
        trainer.tuner.history.to_csv("kl_history.csv")

    :param model: a :class:`~pyro_autoformer.bayesian.BayesianAutoformer`.
    :param guide: its :class:`~pyro_autoformer.guides.MeanFieldGuide`.
    :param ForecastData data: the windows to train and validate on.
    :param TuningConfig tuning: how the KL weight is set.
    :param TrainConfig train: budget and optimiser settings.
    :param int max_nonfinite_steps: consecutive non-finite steps tolerated.
    """

    def __init__(
        self,
        model,
        guide,
        data: ForecastData,
        tuning: TuningConfig,
        train: TrainConfig,
        max_nonfinite_steps: int = 10,
    ):
        self.model = model
        self.guide = guide
        self.data = data
        self.tuning = tuning
        self.train = train
        self.max_nonfinite_steps = max_nonfinite_steps
        self.device = torch.device(train.device)
        self.train_loader = make_loader(
            data.train, train.batch_size, shuffle=True, seed=train.seed
        )
        self.val_loader = make_loader(
            data.val, train.batch_size, shuffle=False, limit=train.max_eval_windows
        )
        steps = len(self.train_loader)
        if train.max_steps_per_epoch is not None:
            steps = min(steps, train.max_steps_per_epoch)
        self.steps_per_epoch = steps
        per_epoch = tuning.update_every == "epoch"
        self.tuner = make_tuner(
            model, tuning, train.train_epochs, None if per_epoch else steps
        )
        self.elbo = BetaELBO(beta=self.tuner)
        self.epochs: list[EpochSummary] = []

    def _prepare(self, batch):
        inputs, target = prepare_batch(
            batch,
            self.data.config.label_len,
            self.data.config.pred_len,
            self.data.c_out,
        )
        return tuple(t.to(self.device) for t in inputs), target.to(self.device)

    def _update_tuner(self, epoch, data_term, kl_term, step=None, val_loss=None):
        return self.tuner.update_kl_weight(
            epoch,
            data_term,
            kl_term,
            method=self.tuning.kl_tuning_method,
            total_epochs=self.train.train_epochs,
            schedule_type=self.tuning.annealing_schedule,
            step=step,
            val_loss=val_loss,
        )

    @torch.no_grad()
    def validate(self) -> tuple[float, float]:
        """MSE and NLL per element of the posterior-mean forecast on the validation
        windows (weights at the guide's median)."""
        self.model.eval()
        weights = self.guide.median()
        squared, nll, count = 0.0, 0.0, 0
        # Diverged weights give a NaN score here instead of a validation error.
        with pyro.validation_enabled(False):
            for batch in self.val_loader:
                inputs, target = self._prepare(batch)
                output = self.model.network_output(weights, *inputs)
                likelihood = self.model.likelihood(output)
                location = self.model.likelihood.location(output)
                squared += float(((location - target) ** 2).sum())
                nll -= float(likelihood.log_prob(target).sum())
                count += target.numel()
        self.model.train()
        return squared / count, nll / count

    def fit(self, on_epoch: Callable[[EpochSummary], None] | None = None):
        """Train until ``train_epochs`` or early stopping; restore the best epoch.

        :param on_epoch: called with each epoch's :class:`EpochSummary`.
        :return: the list of epoch summaries.
        """
        train = self.train
        pyro.set_rng_seed(train.seed)
        self.model.to(self.device).train()
        self.guide.to(self.device)
        parameters = list(self.model.parameters()) + list(self.guide.parameters())
        optimizer = torch.optim.Adam(parameters, lr=train.learning_rate)
        best = (math.inf, None)
        stale_epochs = 0
        step = 0
        nonfinite_run = 0
        for epoch in range(train.train_epochs):
            started = time.perf_counter()
            sums = {"loss": 0.0, "data": 0.0, "kl": 0.0, "share": 0.0}
            done, skipped = 0, 0
            bar = _progress(
                self.train_loader,
                train.progress,
                total=self.steps_per_epoch,
                desc=f"epoch {epoch + 1}/{train.train_epochs}",
                leave=False,
            )
            for i, batch in enumerate(bar):
                if i >= self.steps_per_epoch:
                    break
                inputs, target = self._prepare(batch)
                # Without distribution validation a NaN location or a zero scale
                # gives a non-finite loss, handled below, not a ValueError.
                with pyro.validation_enabled(False):
                    loss = self.elbo.differentiable_loss(
                        self.model, self.guide, *inputs, target
                    )
                if not torch.isfinite(loss):
                    optimizer.zero_grad(set_to_none=True)
                    skipped += 1
                    nonfinite_run += 1
                    logger.warning(
                        "non-finite loss at epoch %d, step %d: update skipped",
                        epoch,
                        step,
                    )
                    if nonfinite_run >= self.max_nonfinite_steps:
                        raise NonFiniteLossError(
                            f"the loss was not finite for {nonfinite_run} steps in a "
                            f"row (last: epoch {epoch}, step {step}); lower the "
                            "learning rate or init_scale, or check the data scaling"
                        )
                    step += 1
                    continue
                nonfinite_run = 0
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                if train.clip_norm > 0:
                    torch.nn.utils.clip_grad_norm_(parameters, train.clip_norm)
                optimizer.step()

                terms = self.elbo.last
                sums["loss"] += terms.loss
                sums["data"] += terms.data
                sums["kl"] += terms.kl
                sums["share"] += terms.kl_share
                done += 1
                if self.tuning.update_every == "step":
                    self._update_tuner(epoch, terms.data, terms.kl, step=step)
                bar.set_postfix(
                    loss=f"{terms.loss:.4f}",
                    kl_share=f"{100 * terms.kl_share:.1f}%",
                    beta=f"{terms.beta:.2e}",
                )
                step += 1
            if done == 0:
                raise NonFiniteLossError(f"no finite step in epoch {epoch}")

            val_mse, val_nll = self.validate()
            if not math.isfinite(val_mse):
                raise NonFiniteLossError(
                    f"the validation MSE is {val_mse} after epoch {epoch} (step "
                    f"{step}): the run diverged; lower the learning rate or "
                    "init_scale, or check the data scaling"
                )
            means = {k: v / done for k, v in sums.items()}
            if self.tuning.update_every == "epoch":
                self._update_tuner(epoch, means["data"], means["kl"], val_loss=val_nll)
            summary = EpochSummary(
                epoch=epoch,
                loss=means["loss"],
                data_term=means["data"],
                kl_term=means["kl"],
                kl_weight=self.tuner.kl_weight,
                kl_share=means["share"],
                val_mse=val_mse,
                val_nll=val_nll,
                seconds=time.perf_counter() - started,
                skipped_steps=skipped,
            )
            self.epochs.append(summary)
            logger.info(
                "epoch %d: loss %.4f, data %.4f, KL %.4f, KL share %.1f%%, "
                "weight %.3g, val MSE %.4f, val NLL %.4f (%.1fs)",
                epoch,
                summary.loss,
                summary.data_term,
                summary.kl_term,
                100 * summary.kl_share,
                summary.kl_weight,
                val_mse,
                val_nll,
                summary.seconds,
            )
            if on_epoch is not None:
                on_epoch(summary)

            if val_mse < best[0] and _all_finite(self.model, self.guide):
                best = (val_mse, self._state())
                stale_epochs = 0
            else:
                stale_epochs += 1
                if stale_epochs >= train.patience:
                    logger.info("early stopping after epoch %d", epoch)
                    break
            _halve_learning_rate(optimizer)
        if best[1] is None:
            raise NonFiniteLossError(
                "no epoch ended with finite parameters and validation MSE"
            )
        self._load_state(best[1])
        return self.epochs

    def _state(self):
        return (
            copy.deepcopy(self.model.state_dict()),
            copy.deepcopy(self.guide.state_dict()),
            self.tuner.kl_weight,
        )

    def _load_state(self, state):
        self.model.load_state_dict(state[0])
        self.guide.load_state_dict(state[1])
        # The weight in force for the restored epoch, so a saved run reports it.
        self.model.kl_weight = state[2]


def train_deterministic(
    net: torch.nn.Module,
    data: ForecastData,
    train: TrainConfig,
    lr_halving: bool = True,
) -> list[dict]:
    """Train a plain Autoformer with MSE and Adam, as the reference does.

    The learning rate halves after every epoch (the reference's ``type1``
    schedule when ``lr_halving``); training stops when the validation MSE has not
    improved for ``patience`` epochs, and the best epoch's weights are restored.

    :return: one dict per epoch with ``train_mse``, ``val_mse`` and ``seconds``.
    """
    device = torch.device(train.device)
    torch.manual_seed(train.seed)
    net.to(device).train()
    train_loader = make_loader(data.train, train.batch_size, True, seed=train.seed)
    val_loader = make_loader(
        data.val, train.batch_size, False, limit=train.max_eval_windows
    )
    optimizer = torch.optim.Adam(net.parameters(), lr=train.learning_rate)
    cfg = data.config
    best, best_state, stale, epochs = math.inf, None, 0, []

    def prepare(batch):
        inputs, target = prepare_batch(batch, cfg.label_len, cfg.pred_len, data.c_out)
        return tuple(t.to(device) for t in inputs), target.to(device)

    for epoch in range(train.train_epochs):
        started, total, count = time.perf_counter(), 0.0, 0
        bar = _progress(train_loader, train.progress, desc=f"epoch {epoch + 1}")
        for i, batch in enumerate(bar):
            if train.max_steps_per_epoch is not None and i >= train.max_steps_per_epoch:
                break
            inputs, target = prepare(batch)
            loss = torch.nn.functional.mse_loss(net(*inputs), target)
            if not torch.isfinite(loss):
                raise NonFiniteLossError(
                    f"the MSE was not finite at epoch {epoch}, step {i}"
                )
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total, count = total + float(loss.detach()), count + 1
        net.eval()
        with torch.no_grad():
            squared, n = 0.0, 0
            for batch in val_loader:
                inputs, target = prepare(batch)
                squared += float(((net(*inputs) - target) ** 2).sum())
                n += target.numel()
        net.train()
        val_mse = squared / n
        epochs.append(
            {
                "epoch": epoch,
                "train_mse": total / count,
                "val_mse": val_mse,
                "seconds": time.perf_counter() - started,
            }
        )
        logger.info(
            "epoch %d: train MSE %.4f, val MSE %.4f", epoch, total / count, val_mse
        )
        if val_mse < best:
            best, best_state, stale = val_mse, copy.deepcopy(net.state_dict()), 0
        else:
            stale += 1
            if stale >= train.patience:
                break
        if lr_halving:
            _halve_learning_rate(optimizer)
    if best_state is not None:
        net.load_state_dict(best_state)
    net.eval()
    return epochs
