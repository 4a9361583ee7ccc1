"""A mean-field Normal autoguide with an exact, analytic KL divergence.

Pyro's :class:`~pyro.infer.autoguide.AutoNormal` samples each site in an unconstrained
space and hands the model a ``Delta``, so even
:class:`~pyro.infer.TraceMeanField_ELBO` can only estimate its KL from one sample.
:class:`MeanFieldGuide` samples every site directly from ``Normal(loc, scale)``: the
KL to a Normal prior is then available in closed form, as a differentiable tensor,
with no Monte-Carlo noise and without running the model again.

All locations and scales live in two flat parameter vectors, so the KL of the whole
posterior is one vectorised expression, and the per-site values are views into them.
"""

from __future__ import annotations

import logging
import math
from collections import OrderedDict
from typing import Callable

import pandas as pd
import pyro
import pyro.distributions as dist
import torch
from pyro.infer.autoguide import AutoGuide
from torch import nn
from torch.nn import functional as F

from ..naming import unique_name

__all__ = ["MeanFieldGuide", "normal_kl"]

logger = logging.getLogger(__name__)

FALLBACKS = ("initial", "prior_mean", "error")


def normal_kl(loc_q, scale_q, loc_p, scale_p) -> torch.Tensor:
    """Elementwise KL( Normal(loc_q, scale_q) || Normal(loc_p, scale_p) )."""
    ratio = (scale_q / scale_p) ** 2
    return 0.5 * (ratio + ((loc_q - loc_p) / scale_p) ** 2 - 1.0 - torch.log(ratio))


def _normal_parts(prior: dist.Distribution, shape: torch.Size):
    """The loc and scale of a (possibly expanded, Independent) Normal prior."""
    base = prior
    while isinstance(base, (dist.Independent, torch.distributions.Independent)):
        base = base.base_dist
    if isinstance(base, dist.ExpandedDistribution):
        base = base.base_dist
    if not isinstance(base, torch.distributions.Normal):
        return None
    return base.loc.expand(shape), base.scale.expand(shape)


class MeanFieldGuide(AutoGuide):
    """Fully factorised Normal posterior over every latent site of a model.

    Use it as the guide of a :class:`~pyro_autoformer.bayesian.BayesianAutoformer`
    (or of any model whose latent sites are real-valued and sit outside every
    plate). With a model that lists its sites (``model.latent_sites()``), the
    parameters exist as soon as the guide is built; otherwise they are created on the
    first call, from a trace of the model, as for Pyro's own autoguides.

    Usage::

        guide = MeanFieldGuide(model, init_scale=1e-3)
        kl = guide.kl_divergence()          # exact KL(q || p), differentiable
        table = guide.posterior_summary()   # per-site and per-layer summaries

    :param callable model: the Pyro model.
    :param float init_scale: initial posterior standard deviation of every weight.
    :param dict init_loc: initial locations by site name, for example a trained
        deterministic Autoformer's weights (see
        :meth:`~pyro_autoformer.bayesian.BayesianAutoformer.split_state_dict`).
    :param str fallback: locations of sites missing from ``init_loc``:
        ``"initial"`` takes the model's own initial weights (``model.initial_weights``)
        or else the prior mean, ``"prior_mean"`` the prior mean, ``"error"`` refuses.
    """

    def __init__(
        self,
        model: Callable,
        init_scale: float = 1e-3,
        init_loc: dict[str, torch.Tensor] | None = None,
        fallback: str = "initial",
    ):
        if not init_scale > 0:
            raise ValueError(f"init_scale must be > 0, got {init_scale}")
        if fallback not in FALLBACKS:
            raise ValueError(f"fallback must be one of {FALLBACKS}, got {fallback!r}")
        super().__init__(model)
        # A name of its own in Pyro's parameter store: two guides never collide.
        self._pyro_name = unique_name(type(self).__name__)
        self.init_scale = float(init_scale)
        self.fallback = fallback
        self._init_loc = dict(init_loc or {})
        self._sites: OrderedDict | None = None
        latent_sites = getattr(model, "latent_sites", None)
        if callable(latent_sites):
            self._setup(latent_sites())

    # ------------------------------------------------------------------ setup
    def _setup_prototype(self, *args, **kwargs):
        super()._setup_prototype(*args, **kwargs)
        priors = OrderedDict()
        for name, site in self.prototype_trace.iter_stochastic_nodes():
            if site["cond_indep_stack"]:
                raise NotImplementedError(
                    f"MeanFieldGuide supports latent sites outside plates only; site "
                    f"{name!r} is inside plate "
                    f"{site['cond_indep_stack'][0].name!r}"
                )
            priors[name] = site["fn"]
        self._setup(priors)

    def _setup(self, priors: OrderedDict[str, dist.Distribution]) -> None:
        unknown = set(self._init_loc) - set(priors)
        if unknown:
            raise ValueError(
                f"init_loc names sites the model does not have: {sorted(unknown)}"
            )
        initial = {}
        if self.fallback == "initial" and hasattr(self.model, "initial_weights"):
            initial = self.model.initial_weights()
        missing = [n for n in priors if n not in self._init_loc]
        if missing and self.fallback == "error":
            raise ValueError(f"init_loc has no value for sites {missing}")
        if missing and self._init_loc:
            logger.info(
                "guide locations of %d site(s) not in init_loc use the %s fallback: %s",
                len(missing),
                self.fallback,
                ", ".join(missing),
            )

        sites, locs, prior_locs, prior_scales = OrderedDict(), [], [], []
        analytic = True
        for name, prior in priors.items():
            shape = prior.batch_shape + prior.event_shape
            sites[name] = shape
            parts = _normal_parts(prior, shape)
            if parts is None:
                analytic = False
            else:
                prior_locs.append(parts[0].detach().reshape(-1))
                prior_scales.append(parts[1].detach().reshape(-1))
            if name in self._init_loc:
                value = torch.as_tensor(self._init_loc[name])
                if tuple(value.shape) != tuple(shape):
                    raise ValueError(
                        f"init_loc[{name!r}] has shape {tuple(value.shape)}, the site "
                        f"has shape {tuple(shape)}"
                    )
            elif name in initial:
                value = initial[name]
            elif parts is not None:
                value = parts[0]
            else:
                value = prior.mean.expand(shape)
            locs.append(value.detach().reshape(-1))

        reference = prior_scales[0] if prior_scales else (locs[0] if locs else None)
        device = reference.device if reference is not None else torch.device("cpu")
        dtype = reference.dtype if reference is not None else torch.float32
        flat_loc = (
            torch.cat([v.to(device=device, dtype=dtype) for v in locs])
            if locs
            else torch.zeros(0)
        )
        raw_scale = math.log(math.expm1(self.init_scale))
        self._sites = sites
        self._sizes = [math.prod(shape) for shape in sites.values()]
        self.loc = nn.Parameter(flat_loc)
        self.raw_scale = nn.Parameter(torch.full_like(flat_loc, raw_scale))
        self.analytic_kl = analytic
        if analytic and locs:
            self.register_buffer("prior_loc", torch.cat(prior_locs).to(flat_loc))
            self.register_buffer("prior_scale", torch.cat(prior_scales).to(flat_loc))
        else:
            self.register_buffer("prior_loc", torch.zeros_like(flat_loc))
            self.register_buffer("prior_scale", torch.ones_like(flat_loc))

    # ---------------------------------------------------------------- queries
    @property
    def site_shapes(self) -> OrderedDict[str, torch.Size]:
        """Shape of every latent site, in sampling order."""
        self._check_setup()
        return OrderedDict(self._sites)

    @property
    def scale(self) -> torch.Tensor:
        """Posterior standard deviations, one flat vector over all sites."""
        return F.softplus(self.raw_scale)

    def _check_setup(self):
        if self._sites is None:
            raise RuntimeError(
                "the guide has no sites yet: call it once with the model's arguments"
            )

    def _split(self, flat: torch.Tensor) -> OrderedDict[str, torch.Tensor]:
        parts = torch.split(flat, self._sizes)
        return OrderedDict(
            (name, part.view(shape))
            for (name, shape), part in zip(self._sites.items(), parts)
        )

    def forward(self, *args, **kwargs) -> dict[str, torch.Tensor]:
        """Sample every latent site from its Normal posterior."""
        if self._sites is None:
            self._setup_prototype(*args, **kwargs)
        locs = self._split(self.loc)
        scales = self._split(self.scale)
        return {
            name: pyro.sample(
                name,
                dist.Normal(locs[name], scales[name], validate_args=False).to_event(
                    locs[name].dim()
                ),
            )
            for name in self._sites
        }

    def kl_divergence(self) -> torch.Tensor:
        """The exact KL(q || p) summed over all sites: a differentiable scalar."""
        self._check_setup()
        if not self.analytic_kl:
            raise NotImplementedError(
                "the analytic KL needs Normal priors on every site"
            )
        return normal_kl(self.loc, self.scale, self.prior_loc, self.prior_scale).sum()

    def kl_by_site(self) -> OrderedDict[str, torch.Tensor]:
        """The exact KL of each site (scalars, differentiable)."""
        self._check_setup()
        if not self.analytic_kl:
            raise NotImplementedError(
                "the analytic KL needs Normal priors on every site"
            )
        elementwise = normal_kl(self.loc, self.scale, self.prior_loc, self.prior_scale)
        return OrderedDict((k, v.sum()) for k, v in self._split(elementwise).items())

    def median(self, *args, **kwargs) -> dict[str, torch.Tensor]:
        """Posterior median (= mean) of every site."""
        self._check_setup()
        return {k: v.detach().clone() for k, v in self._split(self.loc).items()}

    def quantiles(self, quantiles, *args, **kwargs) -> dict[str, torch.Tensor]:
        """Posterior quantiles of every site, stacked along a new first dimension."""
        self._check_setup()
        q = torch.as_tensor(quantiles, dtype=self.loc.dtype, device=self.loc.device)
        z = torch.distributions.Normal(0.0, 1.0).icdf(q).view(-1, 1)
        values = self.loc.detach() + z * self.scale.detach()
        return {
            name: torch.stack([self._split(row)[name] for row in values])
            for name in self._sites
        }

    def posterior_summary(self, by: str = "site") -> pd.DataFrame:
        """Posterior summaries as a table.

        :param str by: ``"site"`` for one row per site, ``"group"`` for one row per
            layer group (needs ``model.site_groups``).
        :return: columns ``numel``, ``loc_abs_mean`` (mean |location|),
            ``scale_mean`` (mean posterior std), ``prior_scale_mean`` and ``kl``.
        """
        self._check_setup()
        with torch.no_grad():
            locs = self._split(self.loc)
            scales = self._split(self.scale)
            prior_scales = self._split(self.prior_scale)
            kls = self.kl_by_site() if self.analytic_kl else {}
            rows = [
                {
                    "site": name,
                    "numel": locs[name].numel(),
                    "loc_abs_mean": locs[name].abs().mean().item(),
                    "scale_mean": scales[name].mean().item(),
                    "prior_scale_mean": prior_scales[name].mean().item(),
                    "kl": kls[name].item() if kls else float("nan"),
                }
                for name in self._sites
            ]
        frame = pd.DataFrame(rows)
        if by == "site":
            return frame.set_index("site")
        if by != "group":
            raise ValueError(f"by must be 'site' or 'group', got {by!r}")
        groups = getattr(self.model, "site_groups", None)
        if groups is None:
            raise ValueError("the model does not say which layer group a site is in")
        frame["group"] = frame["site"].map(groups)
        weighted = frame.assign(
            loc_abs_mean=frame.loc_abs_mean * frame.numel,
            scale_mean=frame.scale_mean * frame.numel,
            prior_scale_mean=frame.prior_scale_mean * frame.numel,
        )
        table = weighted.groupby("group")[
            ["numel", "loc_abs_mean", "scale_mean", "prior_scale_mean", "kl"]
        ].sum()
        for column in ("loc_abs_mean", "scale_mean", "prior_scale_mean"):
            table[column] = table[column] / table["numel"]
        return table
