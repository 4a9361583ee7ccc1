"""Posterior predictive sampling that streams over weight draws.

Pyro's :class:`~pyro.infer.Predictive` keeps every sampled weight in memory, which for
a network means ``num_samples`` copies of it. Here one weight draw exists at a time:
the guide draws the weights, the network forecasts the batch, the likelihood adds
observation noise, and only the forecasts are kept. The forecasts of one batch are
``(num_samples, batch, pred_len, channels)``;
:meth:`PosteriorPredictive.batch_size_for` picks a batch size that keeps that product,
and so the peak memory, independent of ``num_samples``.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import torch

from .metrics import ForecastMetrics

__all__ = ["PosteriorPredictive", "PredictiveSamples"]


@dataclass
class PredictiveSamples:
    """Forecast draws for one batch of windows (all on the model's scale).

    :param torch.Tensor samples: draws with observation noise,
        ``(num_samples * noise_samples, batch, pred_len, channels)``.
    :param torch.Tensor locations: each weight draw's point forecast (median),
        ``(num_samples, batch, pred_len, channels)``.
    :param torch.Tensor epistemic_variance: variance over weight draws of each draw's
        mean, ``(batch, pred_len, channels)``.
    :param torch.Tensor aleatoric_variance: mean over weight draws of the
        observation noise variance, ``(batch, pred_len, channels)``.
    :param torch.Tensor log_probs: ``log p(y | w_s)`` of each draw when targets were
        given, ``(num_samples, batch, pred_len, channels)``.
    """

    samples: torch.Tensor
    locations: torch.Tensor
    epistemic_variance: torch.Tensor
    aleatoric_variance: torch.Tensor
    log_probs: torch.Tensor | None = None

    def quantiles(self, levels: Iterable[float]) -> torch.Tensor:
        """Sample quantiles, ``(len(levels), batch, pred_len, channels)``."""
        q = torch.as_tensor(list(levels), dtype=self.samples.dtype)
        return torch.quantile(self.samples, q.to(self.samples.device), dim=0)


class PosteriorPredictive:
    """Draw forecasts from the posterior predictive of a model and its guide.

    Usage::

        predictive = PosteriorPredictive(model, guide, num_samples=100)
        draws = predictive.sample(x_enc, x_mark_enc, x_dec, x_mark_dec)
        draws.samples.shape  # (100, batch, pred_len, channels)

    :param model: a :class:`~pyro_autoformer.bayesian.BayesianAutoformer`.
    :param guide: its guide (a :class:`~pyro_autoformer.guides.MeanFieldGuide` or any
        guide returning a dict of weight-site values when called).
    :param int num_samples: posterior weight draws per forecast (one network
        forward pass each).
    :param int noise_samples: observation-noise draws per weight draw; the forecast
        has ``num_samples * noise_samples`` samples. Noise draws cost no forward pass,
        so several per weight draw sharpen the predictive quantiles cheaply.
    :param int memory_budget: forecast elements (samples x windows x steps x
        channels) held at once by :meth:`evaluate`.
    """

    def __init__(
        self,
        model,
        guide,
        num_samples: int = 100,
        noise_samples: int = 1,
        memory_budget: int = 2**24,
    ):
        if num_samples < 1:
            raise ValueError(f"num_samples must be >= 1, got {num_samples}")
        if noise_samples < 1:
            raise ValueError(f"noise_samples must be >= 1, got {noise_samples}")
        if memory_budget < 1:
            raise ValueError(f"memory_budget must be >= 1, got {memory_budget}")
        self.model = model
        self.guide = guide
        self.num_samples = int(num_samples)
        self.noise_samples = int(noise_samples)
        self.memory_budget = int(memory_budget)

    def batch_size_for(self, pred_len: int, channels: int) -> int:
        """Windows per batch that keep ``num_samples * noise_samples * batch *
        pred_len * channels`` within the memory budget (at least one window)."""
        per_window = self.num_samples * self.noise_samples * pred_len * channels
        return max(1, self.memory_budget // per_window)

    def _weight_draws(self) -> Iterator[dict]:
        for _ in range(self.num_samples):
            yield {k: v.detach() for k, v in self.guide().items()}

    @torch.no_grad()
    def sample(self, x_enc, x_mark_enc, x_dec, x_mark_dec, y=None) -> PredictiveSamples:
        """Posterior predictive draws for one batch of windows.

        The model is put in ``eval()`` mode (no dropout) for the duration.

        :param torch.Tensor y: targets ``(batch, pred_len, channels)``; when given, each
            draw's ``log p(y | w)`` is returned too (for the predictive NLL).
        """
        model = self.model
        was_training = model.training
        model.eval()
        try:
            samples, locations, means, variances, log_probs = [], [], [], [], []
            for weights in self._weight_draws():
                output = model.network_output(
                    weights, x_enc, x_mark_enc, x_dec, x_mark_dec
                )
                likelihood = model.likelihood(output)
                if self.noise_samples == 1:
                    samples.append(likelihood.sample())
                else:
                    samples.extend(likelihood.sample((self.noise_samples,)).unbind(0))
                locations.append(model.likelihood.location(output))
                means.append(_mean(likelihood))
                variances.append(_variance(likelihood))
                if y is not None:
                    log_probs.append(likelihood.log_prob(y))
        finally:
            model.train(was_training)
        means = torch.stack(means)
        return PredictiveSamples(
            samples=torch.stack(samples),
            locations=torch.stack(locations),
            epistemic_variance=means.var(dim=0, unbiased=False),
            aleatoric_variance=torch.stack(variances).mean(dim=0),
            log_probs=torch.stack(log_probs) if log_probs else None,
        )

    def evaluate(
        self, loader, prepare, levels=(0.5, 0.8, 0.9, 0.95)
    ) -> ForecastMetrics:
        """Accumulate forecast metrics over every batch of a data loader.

        :param loader: iterable of batches.
        :param callable prepare: maps a batch to ``(inputs, target)`` (see
            :func:`pyro_autoformer.data.prepare_batch`).
        :return: the filled :class:`~pyro_autoformer.metrics.ForecastMetrics`.
        """
        metrics = ForecastMetrics(levels=levels)
        device = self.model.prior_scales.device
        for batch in loader:
            inputs, target = prepare(batch)
            inputs = tuple(t.to(device) for t in inputs)
            target = target.to(device)
            draws = self.sample(*inputs, y=target)
            metrics.update(draws.samples, target, log_probs=draws.log_probs)
        return metrics


def _mean(distribution) -> torch.Tensor:
    try:
        return distribution.mean
    except NotImplementedError:
        return distribution.median


def _variance(distribution) -> torch.Tensor:
    try:
        return distribution.variance
    except NotImplementedError:
        draws = distribution.sample((64,))
        return draws.var(dim=0)
