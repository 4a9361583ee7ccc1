"""The beta-scaled ELBO: data term plus a weighted KL term, in one model/guide pass.

The convention, used everywhere in this package: with ``N`` the number of target
elements in the training set (windows x pred_len x channels),

- the **data term** is ``D = -log p(y_train | w) / N``, the minibatch log-likelihood
  scaled to the training set by the data plate, divided by ``N``;
- the **KL term** is ``K = KL(q || p) / N``, the KL counted once for all weights;
- the **loss** is ``D + beta * K``.

``beta = 1`` is the exact (negative) ELBO divided by ``N``; ``beta < 1`` tempers the
posterior towards the data. The KL share of the loss is
``beta * K / (|D| + beta * K)`` (:func:`kl_share`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Union

import pyro
import torch
from pyro import poutine
from pyro.distributions.util import scale_and_mask
from pyro.infer import ELBO
from torch.distributions import kl_divergence

from .policies import kl_share

__all__ = ["BetaELBO", "ELBOTerms"]


@dataclass(frozen=True)
class ELBOTerms:
    """The terms of one evaluation of :class:`BetaELBO`, as floats.

    :param float data: data term ``D`` (mean negative log-likelihood per element).
    :param float kl: KL term ``K = KL(q||p) / N``.
    :param float beta: the KL weight used.
    :param float loss: ``D + beta * K``.
    :param float kl_share: :func:`kl_share` of these values.
    :param float kl_total: the unnormalised ``KL(q || p)``.
    :param int num_elements: ``N``, target elements in the training set.
    :param bool analytic_kl: whether the KL is exact or a Monte-Carlo estimate.
    """

    data: float
    kl: float
    beta: float
    loss: float
    kl_share: float
    kl_total: float
    num_elements: int
    analytic_kl: bool


class BetaELBO(ELBO):
    """Negative ELBO with a weighted KL term, normalised per target element.

    Use it wherever Pyro takes an ELBO, ``pyro.infer.SVI(model, guide, optim,
    loss=BetaELBO(beta=tuner))``, or as a differentiable loss in a plain PyTorch
    loop, ``loss_fn = BetaELBO()(model, guide); loss_fn(*batch).backward()``.

    The KL is the guide's exact one when the guide offers it
    (:meth:`~pyro_autoformer.guides.MeanFieldGuide.kl_divergence`); otherwise each
    site uses torch's analytic KL where registered and a one-sample Monte-Carlo
    estimate ``log q(z) - log p(z)`` where not. The last evaluation's terms are kept
    in :attr:`last`.

    Usage::

        elbo = BetaELBO(beta=0.1)
        svi = pyro.infer.SVI(model, guide, pyro.optim.Adam({"lr": 1e-3}), loss=elbo)
        svi.step(*inputs, y)
        elbo.last.data, elbo.last.kl, elbo.last.kl_share

    :param beta: the KL weight: a number, or an object with a ``kl_weight``
        attribute (a :class:`~pyro_autoformer.tuning.KLTuner` or the model) read at
        every evaluation.
    :param int num_particles: samples averaged per evaluation.
    """

    def __init__(self, beta: Union[float, Any] = 1.0, num_particles: int = 1):
        super().__init__(num_particles=num_particles)
        if num_particles < 1:
            raise ValueError(f"num_particles must be >= 1, got {num_particles}")
        if isinstance(beta, (int, float)) and not (math.isfinite(beta) and beta >= 0):
            raise ValueError(f"beta must be finite and >= 0, got {beta}")
        self._beta = beta
        self.last: ELBOTerms | None = None

    @property
    def beta(self) -> float:
        """The KL weight in force now."""
        value = getattr(self._beta, "kl_weight", self._beta)
        value = float(value)
        if not value >= 0 or math.isinf(value):
            raise ValueError(f"the KL weight must be finite and >= 0, got {value}")
        return value

    @beta.setter
    def beta(self, value) -> None:
        self._beta = value

    # ------------------------------------------------------------------ terms
    def terms(self, model, guide, *args, **kwargs) -> tuple[torch.Tensor, torch.Tensor]:
        """Differentiable data and KL terms ``(D, K)``, averaged over particles."""
        data_sum, kl_sum, total_sum = 0.0, 0.0, 0.0
        for _ in range(self.num_particles):
            data, kl, kl_total, n, analytic = self._particle(model, guide, args, kwargs)
            data_sum = data_sum + data
            kl_sum = kl_sum + kl
            total_sum = total_sum + kl_total
        data = data_sum / self.num_particles
        kl = kl_sum / self.num_particles
        self._record(data, kl, total_sum / self.num_particles, n, analytic)
        return data, kl

    def _get_trace(self, model, guide, args, kwargs):
        """One guide trace and the model trace replayed against it."""
        guide_trace = poutine.trace(guide).get_trace(*args, **kwargs)
        model_trace = poutine.trace(poutine.replay(model, trace=guide_trace)).get_trace(
            *args, **kwargs
        )
        return model_trace, guide_trace

    def _particle(self, model, guide, args, kwargs):
        model_trace, guide_trace = self._get_trace(model, guide, args, kwargs)

        log_likelihood, num_elements = 0.0, 0.0
        latent = []
        for name, site in model_trace.nodes.items():
            if site["type"] != "sample":
                continue
            if site["is_observed"]:
                log_p = site["fn"].log_prob(site["value"])
                log_p = scale_and_mask(log_p, site["scale"], site["mask"])
                log_likelihood = log_likelihood + log_p.sum()
                num_elements += site["value"].numel() * float(site["scale"])
            elif name in guide_trace.nodes:
                latent.append(name)
        if num_elements == 0:
            raise ValueError(
                "the model has no observed site: the ELBO needs targets (pass y)"
            )

        kl_total, analytic = self._kl(model_trace, guide_trace, guide, latent)
        data = -log_likelihood / num_elements
        return data, kl_total / num_elements, kl_total, num_elements, analytic

    def _kl(self, model_trace, guide_trace, guide, latent):
        guide_sites = getattr(guide, "site_shapes", None)
        if getattr(guide, "analytic_kl", False) and set(guide_sites) == set(latent):
            return guide.kl_divergence(), True
        total, analytic = 0.0, True
        for name in latent:
            q = guide_trace.nodes[name]["fn"]
            p = model_trace.nodes[name]["fn"]
            try:
                total = total + kl_divergence(q, p).sum()
            except NotImplementedError:
                value = guide_trace.nodes[name]["value"]
                total = total + (q.log_prob(value) - p.log_prob(value)).sum()
                analytic = False
        if not latent:
            total = torch.zeros(())
        return total, analytic

    def _record(self, data, kl, kl_total, num_elements, analytic):
        beta = self.beta
        data_value, kl_value = float(data.detach()), float(kl.detach())
        self.last = ELBOTerms(
            data=data_value,
            kl=kl_value,
            beta=beta,
            loss=data_value + beta * kl_value,
            kl_share=kl_share(data_value, kl_value, beta),
            kl_total=float(torch.as_tensor(kl_total).detach()),
            num_elements=int(round(num_elements)),
            analytic_kl=analytic,
        )

    # ------------------------------------------------------------ Pyro's API
    def differentiable_loss(self, model, guide, *args, **kwargs) -> torch.Tensor:
        """``D + beta * K`` as a differentiable tensor."""
        data, kl = self.terms(model, guide, *args, **kwargs)
        return data + self.beta * kl

    def loss(self, model, guide, *args, **kwargs) -> float:
        """``D + beta * K`` as a float, without gradients."""
        with torch.no_grad():
            return float(self.differentiable_loss(model, guide, *args, **kwargs))

    def loss_and_grads(self, model, guide, *args, **kwargs) -> float:
        """``D + beta * K``, with gradients of the trainable parameters computed."""
        loss = self.differentiable_loss(model, guide, *args, **kwargs)
        if loss.requires_grad:
            loss.backward()
        pyro.util.warn_if_nan(loss, "loss")
        return float(loss.detach())
