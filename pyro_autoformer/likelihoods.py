"""Observation models: how a forecast turns into a likelihood for the targets.

A likelihood is a small :class:`torch.nn.Module` that owns its own point-estimated
parameters (an observation scale per output channel, the Student-t degrees of
freedom) and turns the network's raw output into a distribution over the targets.
The :class:`~pyro_autoformer.bayesian.BayesianAutoformer` scores the targets under
that distribution inside its data plate.

Three choices are offered:

- :class:`GaussianLikelihood`: ``Normal(output, scale[channel])``.
- :class:`StudentTLikelihood`: heavier tails, ``StudentT(df[channel], output,
  scale[channel])``.
- :class:`QuantileLikelihood`: an asymmetric-Laplace pseudo-likelihood over a list of
  quantile levels, whose negative log-likelihood is the pinball (quantile) loss divided
  by a learned scale, so the quantile loss and the KL term combine in one ELBO.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import pyro.distributions as dist
import torch
from pyro.distributions import constraints
from pyro.distributions.torch_distribution import TorchDistribution
from torch import nn
from torch.nn import functional as F

__all__ = [
    "GaussianLikelihood",
    "Likelihood",
    "QuantileLikelihood",
    "QuantilePseudoLikelihood",
    "StudentTLikelihood",
    "make_likelihood",
]

LIKELIHOODS = ("gaussian", "studentt", "quantile")


def _inverse_softplus(value: float) -> float:
    return math.log(math.expm1(value))


class Likelihood(nn.Module):
    """Base class: maps the network output to a distribution over the targets.

    :param int channels: number of output channels ``c_out``.
    """

    #: Values the network must produce per output channel.
    n_outputs: int = 1

    def __init__(self, channels: int):
        super().__init__()
        if channels < 1:
            raise ValueError(f"channels must be >= 1, got {channels}")
        self.channels = channels

    def forward(self, output: torch.Tensor) -> dist.Distribution:
        """Distribution of the targets given one network output.

        :param torch.Tensor output: network output, ``(batch, pred_len, channels)``
            (``(..., channels, n_outputs)`` when :attr:`n_outputs` > 1).
        :return: a distribution with batch shape ``(batch, pred_len, channels)``.
        """
        raise NotImplementedError

    def location(self, output: torch.Tensor) -> torch.Tensor:
        """Point forecast (median) for one network output, ``(batch, pred_len,
        channels)``."""
        return output


class GaussianLikelihood(Likelihood):
    """Gaussian observation noise with one learned scale per output channel.

    :param int channels: number of output channels.
    :param float init_scale: initial observation scale (on the standardised scale).
    """

    def __init__(self, channels: int, init_scale: float = 0.5):
        super().__init__(channels)
        if init_scale <= 0:
            raise ValueError(f"init_scale must be > 0, got {init_scale}")
        raw = torch.full((channels,), _inverse_softplus(init_scale))
        self.raw_scale = nn.Parameter(raw)

    @property
    def scale(self) -> torch.Tensor:
        """Observation scale per channel, ``(channels,)``."""
        return F.softplus(self.raw_scale) + 1e-4

    def forward(self, output: torch.Tensor) -> dist.Distribution:
        return dist.Normal(output, self.scale)


class StudentTLikelihood(Likelihood):
    """Student-t observation noise with learned scale and degrees of freedom.

    The degrees of freedom are kept above 2 so the predictive variance is finite.

    :param int channels: number of output channels.
    :param float init_scale: initial observation scale.
    :param float init_df: initial degrees of freedom (> 2).
    """

    def __init__(self, channels: int, init_scale: float = 0.5, init_df: float = 5.0):
        super().__init__(channels)
        if init_scale <= 0:
            raise ValueError(f"init_scale must be > 0, got {init_scale}")
        if init_df <= 2:
            raise ValueError(f"init_df must be > 2, got {init_df}")
        self.raw_scale = nn.Parameter(
            torch.full((channels,), _inverse_softplus(init_scale))
        )
        self.raw_df = nn.Parameter(
            torch.full((channels,), _inverse_softplus(init_df - 2.0))
        )

    @property
    def scale(self) -> torch.Tensor:
        return F.softplus(self.raw_scale) + 1e-4

    @property
    def df(self) -> torch.Tensor:
        return F.softplus(self.raw_df) + 2.0

    def forward(self, output: torch.Tensor) -> dist.Distribution:
        return dist.StudentT(self.df, output, self.scale)


class QuantilePseudoLikelihood(TorchDistribution):
    """Product of asymmetric-Laplace densities, one per quantile level.

    For levels ``tau_k`` with predicted quantiles ``q_k`` and scale ``s``::

        log p(y) = sum_k [ log(tau_k (1 - tau_k) / s) - rho_tau_k(y - q_k) / s ]

    where ``rho_tau(u) = u (tau - 1[u < 0])`` is the pinball loss. Its negative is the
    summed pinball loss over the levels divided by ``s``, plus a constant. It is a
    pseudo-likelihood: the levels are scored as if independent. Sampling draws from
    the distribution whose quantile function interpolates the predicted quantiles
    linearly and is flat beyond the outermost levels.

    :param torch.Tensor quantiles: sorted quantile values, ``batch_shape + (K,)``.
    :param torch.Tensor levels: quantile levels in (0, 1), increasing, ``(K,)``.
    :param torch.Tensor scale: positive scale, broadcastable to ``batch_shape``.
    """

    arg_constraints = {"scale": constraints.positive}
    support = constraints.real
    has_rsample = False

    def __init__(self, quantiles, levels, scale, validate_args=None):
        self.quantiles = quantiles
        self.levels = levels.to(quantiles)
        batch_shape = torch.broadcast_shapes(quantiles.shape[:-1], scale.shape)
        self.scale = scale.expand(batch_shape)
        super().__init__(batch_shape, validate_args=validate_args)

    def expand(self, batch_shape, _instance=None):
        batch_shape = torch.Size(batch_shape)
        quantiles = self.quantiles.expand(batch_shape + self.quantiles.shape[-1:])
        return QuantilePseudoLikelihood(
            quantiles, self.levels, self.scale.expand(batch_shape)
        )

    def log_prob(self, value):
        error = value.unsqueeze(-1) - self.quantiles
        pinball = torch.maximum(self.levels * error, (self.levels - 1) * error)
        scale = self.scale.unsqueeze(-1)
        log_norm = torch.log(self.levels * (1 - self.levels)) - torch.log(scale)
        return (log_norm - pinball / scale).sum(-1)

    @property
    def median(self):
        return _interpolate_quantile(self.quantiles, self.levels, 0.5)

    @property
    def mean(self):
        return self.median

    def sample(self, sample_shape=()):
        shape = self._extended_shape(torch.Size(sample_shape))
        with torch.no_grad():
            u = torch.rand(shape, device=self.quantiles.device)
            return _interpolate_quantile(
                self.quantiles.expand(shape + (-1,)), self.levels, u
            )


def _interpolate_quantile(quantiles, levels, u):
    """Piecewise-linear quantile function through ``(levels, quantiles)``, flat
    outside ``[levels[0], levels[-1]]``."""
    u = torch.as_tensor(u, dtype=quantiles.dtype, device=quantiles.device)
    u = u.expand(quantiles.shape[:-1]).clamp(levels[0], levels[-1])
    if levels.numel() == 1:
        return quantiles[..., 0]
    upper = torch.searchsorted(levels, u.contiguous(), right=True).clamp(
        1, levels.numel() - 1
    )
    lower = upper - 1
    q_lo = quantiles.gather(-1, lower.unsqueeze(-1)).squeeze(-1)
    q_hi = quantiles.gather(-1, upper.unsqueeze(-1)).squeeze(-1)
    weight = (u - levels[lower]) / (levels[upper] - levels[lower])
    return q_lo + weight * (q_hi - q_lo)


class QuantileLikelihood(Likelihood):
    """Quantile forecasts scored by the asymmetric-Laplace pseudo-likelihood.

    The network produces one value per level and channel; the values are sorted
    (monotone rearrangement, Chernozhukov et al. 2010) so the predicted quantiles
    never cross, which can only lower the pinball loss.

    :param int channels: number of output channels.
    :param quantiles: quantile levels, strictly increasing in (0, 1).
    :param float init_scale: initial pseudo-likelihood scale.
    """

    def __init__(
        self,
        channels: int,
        quantiles: Sequence[float] = (0.1, 0.5, 0.9),
        init_scale: float = 0.3,
    ):
        super().__init__(channels)
        levels = [float(q) for q in quantiles]
        if not levels:
            raise ValueError("quantiles must not be empty")
        if any(not 0 < q < 1 for q in levels):
            raise ValueError(f"quantiles must lie in (0, 1), got {levels}")
        if any(b <= a for a, b in zip(levels, levels[1:])):
            raise ValueError(f"quantiles must be strictly increasing, got {levels}")
        self.n_outputs = len(levels)
        self.register_buffer("levels", torch.tensor(levels))
        self.raw_scale = nn.Parameter(
            torch.full((channels,), _inverse_softplus(init_scale))
        )

    @property
    def scale(self) -> torch.Tensor:
        return F.softplus(self.raw_scale) + 1e-4

    def forward(self, output: torch.Tensor) -> dist.Distribution:
        quantiles = self._sorted(output)
        return QuantilePseudoLikelihood(quantiles, self.levels, self.scale)

    def location(self, output: torch.Tensor) -> torch.Tensor:
        return _interpolate_quantile(self._sorted(output), self.levels, 0.5)

    def _sorted(self, output: torch.Tensor) -> torch.Tensor:
        if output.shape[-1] != self.n_outputs:
            raise ValueError(
                f"expected {self.n_outputs} outputs per channel (one per quantile), "
                f"got output of shape {tuple(output.shape)}"
            )
        return torch.sort(output, dim=-1).values


def make_likelihood(
    name: str, channels: int, quantiles: Sequence[float] = (0.1, 0.5, 0.9)
) -> Likelihood:
    """Build a likelihood by name: ``gaussian``, ``studentt`` or ``quantile``."""
    if name == "gaussian":
        return GaussianLikelihood(channels)
    if name == "studentt":
        return StudentTLikelihood(channels)
    if name == "quantile":
        return QuantileLikelihood(channels, quantiles)
    raise ValueError(f"likelihood must be one of {LIKELIHOODS}, got {name!r}")
