"""The Bayesian Autoformer: priors on the Autoformer's weights and a likelihood.

:class:`BayesianAutoformer` is a :class:`~pyro.nn.PyroModule` model. Each chosen
weight of the deterministic :class:`~pyro_autoformer.autoformer.Autoformer` becomes a
sample site with a Normal prior, named by the weight's own parameter path (for
example ``encoder.attn_layers.1.attention.query_projection.weight``), so every site
name is unique, includes its layer index, and the number of sites grows linearly with
the number of layers. Weight sites are sampled once per call, outside every plate;
the network then runs with those weights through :func:`torch.func.functional_call`,
so a weight read twice in one forward pass is the same sample.

The targets are scored inside a ``data`` plate whose size is the number of training
windows, so a minibatch's log-likelihood is scaled to the whole training set and the
ELBO does not depend on the batch size.

Parameters that stay deterministic (layer norms, biases by default, the likelihood's
scales) are ordinary parameters of the network and likelihood submodules. Pyro
registers them in its parameter store when the model runs, under a name unique to
this model instance, so two models built in one process, of equal or different sizes,
never share or overwrite each other's parameters.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import logging
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Union

import pyro
import pyro.distributions as dist
import torch
from pyro.nn import PyroModule
from torch import nn
from torch.func import functional_call

from .autoformer import PARAMETER_GROUPS as LAYER_GROUPS
from .autoformer import Autoformer, AutoformerConfig, parameter_group
from .likelihoods import LIKELIHOODS, make_likelihood
from .naming import unique_name

__all__ = [
    "BayesianAutoformer",
    "BayesianConfig",
    "BayesianEnhancedAutoformer",
    "LAYER_GROUPS",
]

logger = logging.getLogger(__name__)

PRIOR_SCALES = ("fixed", "fan_in")


@dataclass(frozen=True)
class BayesianConfig:
    """Which weights are random, their priors, and the observation model.

    :param bayesian_layers: ``"all"``, ``"none"``, or a comma-separated list (or
        sequence) of layer groups (``embedding``, ``encoder``, ``decoder``,
        ``projection``) and glob patterns on parameter names (``encoder.*.conv1.*``).
    :param float prior_std: prior standard deviation, or its multiplier when
        ``prior_scale="fan_in"``.
    :param str prior_scale: ``"fixed"`` gives every weight the scale ``prior_std``;
        ``"fan_in"`` gives a layer with fan-in ``m`` the scale ``prior_std / sqrt(m)``
        (with ``prior_std=1`` this is the LeCun scale).
    :param bool bayesian_biases: also put priors on the biases of chosen layers.
    :param str likelihood: ``"gaussian"``, ``"studentt"`` or ``"quantile"``.
    :param quantiles: quantile levels of the quantile likelihood.
    """

    bayesian_layers: Union[str, Sequence[str]] = "all"
    prior_std: float = 0.1
    prior_scale: str = "fixed"
    bayesian_biases: bool = False
    likelihood: str = "gaussian"
    quantiles: Sequence[float] = (0.1, 0.5, 0.9)

    def __post_init__(self):
        if not self.prior_std > 0:
            raise ValueError(f"prior_std must be > 0, got {self.prior_std}")
        if self.prior_scale not in PRIOR_SCALES:
            raise ValueError(
                f"prior_scale must be one of {PRIOR_SCALES}, got {self.prior_scale!r}"
            )
        if self.likelihood not in LIKELIHOODS:
            raise ValueError(
                f"likelihood must be one of {LIKELIHOODS}, got {self.likelihood!r}"
            )
        object.__setattr__(self, "quantiles", tuple(float(q) for q in self.quantiles))
        if self.likelihood == "quantile":
            qs = self.quantiles
            if not qs or any(not 0 < q < 1 for q in qs):
                raise ValueError(f"quantiles must lie in (0, 1), got {list(qs)}")
            if any(b <= a for a, b in zip(qs, qs[1:])):
                raise ValueError(
                    f"quantiles must be strictly increasing, got {list(qs)}"
                )
        self.layer_tokens()

    def layer_tokens(self) -> list[str]:
        """The ``bayesian_layers`` selection as a list of groups and patterns."""
        value = self.bayesian_layers
        tokens = value.split(",") if isinstance(value, str) else list(value)
        tokens = [t.strip() for t in tokens if t.strip()]
        if not tokens:
            raise ValueError("bayesian_layers must not be empty (use 'none')")
        if ("all" in tokens or "none" in tokens) and len(tokens) > 1:
            raise ValueError(
                f"bayesian_layers: 'all' and 'none' stand alone, got {value!r}"
            )
        return tokens


def _fan_in(module: nn.Module) -> int:
    weight = module._parameters.get("weight")
    if weight is None:
        raise ValueError(f"cannot compute the fan-in of {type(module).__name__}")
    return int(weight[0].numel())


class BayesianAutoformer(PyroModule):
    """Autoformer with Normal priors on chosen weights and an observation likelihood.

    Use it as the model of :class:`pyro.infer.SVI` together with a guide from
    :mod:`pyro_autoformer.guides`. The call signature is the Autoformer's plus the
    targets; without targets the ``obs`` site is sampled, as
    :class:`pyro.infer.Predictive` expects.

    Usage::

        model = BayesianAutoformer(AutoformerConfig(enc_in=7, dec_in=7, c_out=7),
                                   BayesianConfig(prior_std=0.1), dataset_size=8449)
        guide = MeanFieldGuide(model)
        svi = pyro.infer.SVI(model, guide, pyro.optim.Adam({"lr": 1e-3}),
                             loss=BetaELBO(beta=1.0))
        svi.step(x_enc, x_mark_enc, x_dec, x_mark_dec, y)

    :param AutoformerConfig config: the network's configuration.
    :param BayesianConfig bayes: priors and likelihood.
    :param int dataset_size: number of training windows (the data plate's size).
    :param float kl_weight: the KL weight read by
        :class:`~pyro_autoformer.tuning.BetaELBO` when it is given this model as its
        ``beta`` (and written by :class:`~pyro_autoformer.tuning.KLTuner`).
    """

    def __init__(
        self,
        config: AutoformerConfig,
        bayes: BayesianConfig | None = None,
        dataset_size: int = 1,
        kl_weight: float = 1.0,
    ):
        super().__init__(name=unique_name(type(self).__name__))
        bayes = bayes if bayes is not None else BayesianConfig()
        if dataset_size < 1:
            raise ValueError(f"dataset_size must be >= 1, got {dataset_size}")
        likelihood = make_likelihood(bayes.likelihood, config.c_out, bayes.quantiles)
        config = dataclasses.replace(config, n_outputs=likelihood.n_outputs)
        self.config = config
        self.bayes = bayes
        self.dataset_size = int(dataset_size)
        self.kl_weight = float(kl_weight)
        self.net = Autoformer(config)
        self.likelihood = likelihood

        chosen = self._select_weights()
        names, shapes, scales, groups, initial = [], [], [], {}, {}
        modules = dict(self.net.named_modules())
        for name in chosen:
            module_name, _, attr = name.rpartition(".")
            module = modules[module_name]
            param = module._parameters[attr]
            scale = bayes.prior_std
            if bayes.prior_scale == "fan_in":
                scale = bayes.prior_std / _fan_in(module) ** 0.5
            names.append(name)
            shapes.append(tuple(param.shape))
            scales.append(scale)
            groups[name] = parameter_group(name)
            initial[name] = param.detach().clone()
            # The weight now comes from the sample site, not from the module.
            del module._parameters[attr]
        self._site_names = tuple(names)
        self._site_shapes = dict(zip(names, shapes))
        self._site_groups = groups
        self._initial_weights = initial
        self.register_buffer("prior_scales", torch.tensor(scales, dtype=torch.float32))
        self._prior_cache = None

    def _select_weights(self) -> list[str]:
        tokens = self.bayes.layer_tokens()
        candidates = []
        for module_name, module in self.net.named_modules():
            if not isinstance(module, (nn.Linear, nn.Conv1d)):
                continue
            for attr, param in module._parameters.items():
                if param is None:
                    continue
                if attr == "weight" or (attr == "bias" and self.bayes.bayesian_biases):
                    candidates.append(f"{module_name}.{attr}")
        if tokens == ["none"]:
            return []
        if tokens == ["all"]:
            return candidates
        chosen = set()
        for token in tokens:
            if token in LAYER_GROUPS:
                matched = {n for n in candidates if parameter_group(n) == token}
            else:
                matched = {n for n in candidates if fnmatch.fnmatchcase(n, token)}
            if not matched:
                raise ValueError(
                    f"bayesian_layers entry {token!r} matches no weight; use 'all', "
                    f"'none', a group from {LAYER_GROUPS} or a glob pattern on names "
                    f"such as {candidates[0]!r}"
                )
            chosen |= matched
        return [n for n in candidates if n in chosen]

    # ------------------------------------------------------------------ sites
    @property
    def site_names(self) -> tuple[str, ...]:
        """Names of the weight sample sites, in sampling order."""
        return self._site_names

    @property
    def site_groups(self) -> dict[str, str]:
        """Layer group (:data:`LAYER_GROUPS`) of each weight site."""
        return dict(self._site_groups)

    @property
    def num_target_elements(self) -> int:
        """Target elements in the training set: windows x pred_len x c_out."""
        return self.dataset_size * self.config.pred_len * self.config.c_out

    def latent_sites(self) -> OrderedDict[str, dist.Distribution]:
        """The prior of every weight site, on the model's device and dtype.

        The distributions are built once per device, dtype and version of the prior
        scales, and reused by every forward pass.
        """
        scales = self.prior_scales
        key = (scales.device, scales.dtype, scales._version)
        if self._prior_cache is None or self._prior_cache[0] != key:
            zero = torch.zeros((), device=scales.device, dtype=scales.dtype)
            priors = OrderedDict()
            for i, name in enumerate(self._site_names):
                shape = self._site_shapes[name]
                prior = dist.Normal(zero, scales[i], validate_args=False).expand(shape)
                priors[name] = prior.to_event(len(shape))
            self._prior_cache = (key, priors)
        return self._prior_cache[1]

    def initial_weights(self) -> dict[str, torch.Tensor]:
        """The network's own initial values of the weight sites (PyTorch's default
        initialisation), a sensible starting point for a guide's locations."""
        return {
            k: v.to(self.prior_scales.device) for k, v in self._initial_weights.items()
        }

    def split_state_dict(
        self, state_dict: dict[str, torch.Tensor]
    ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """Split a deterministic Autoformer's ``state_dict`` into the part this
        model keeps as ordinary parameters and the values of its weight sites.

        :return: ``(deterministic, weights)``; load the first with
            :meth:`load_deterministic_state`, give the second to the guide as
            ``init_loc``.
        """
        sites = set(self._site_names)
        deterministic = {k: v for k, v in state_dict.items() if k not in sites}
        weights = {k: v for k, v in state_dict.items() if k in sites}
        return deterministic, weights

    def load_deterministic_state(self, state_dict: dict[str, torch.Tensor]) -> None:
        """Load the non-random parameters of a trained deterministic Autoformer."""
        deterministic, _ = self.split_state_dict(state_dict)
        missing, unexpected = self.net.load_state_dict(deterministic, strict=False)
        if unexpected or missing:
            raise ValueError(
                f"state_dict does not match this Autoformer: missing {missing}, "
                f"unexpected {unexpected}"
            )

    # ---------------------------------------------------------------- forward
    def sample_weights(self) -> dict[str, torch.Tensor]:
        """Sample every weight site once from its prior (or, under a guide, the
        guide's value): one ``pyro.sample`` per site, outside every plate."""
        return {
            name: pyro.sample(name, prior)
            for name, prior in self.latent_sites().items()
        }

    def network_output(
        self,
        weights: dict[str, torch.Tensor],
        x_enc: torch.Tensor,
        x_mark_enc: torch.Tensor,
        x_dec: torch.Tensor,
        x_mark_dec: torch.Tensor,
    ) -> torch.Tensor:
        """Run the Autoformer with the given weight-site values.

        Inside the model's call, reading ``self.net`` registers the network's
        ordinary parameters with Pyro's parameter store (under this instance's
        unique name), so :class:`pyro.infer.SVI` optimises them.

        :param dict weights: a value for every weight site.
        :return: raw output ``(batch, pred_len, c_out)`` (with a trailing
            ``n_outputs`` dimension for the quantile likelihood).
        """
        return functional_call(
            self.net, weights, (x_enc, x_mark_enc, x_dec, x_mark_dec), strict=False
        )

    def forward(self, x_enc, x_mark_enc, x_dec, x_mark_dec, y=None):
        """Sample the weights, run the network and score (or sample) the targets.

        :param torch.Tensor x_enc: encoder input ``(batch, seq_len, enc_in)``.
        :param torch.Tensor x_mark_enc: encoder time features ``(batch, seq_len, M)``.
        :param torch.Tensor x_dec: decoder input ``(batch, label_len + pred_len,
            dec_in)``.
        :param torch.Tensor x_mark_dec: decoder time features.
        :param torch.Tensor y: targets ``(batch, pred_len, c_out)``, or ``None``.
        :return: the point forecast (median) of this draw, ``(batch, pred_len,
            c_out)``.
        """
        weights = self.sample_weights()
        output = self.network_output(weights, x_enc, x_mark_enc, x_dec, x_mark_dec)
        likelihood = self.likelihood
        batch = x_enc.shape[0]
        with pyro.plate("data", max(self.dataset_size, batch), subsample_size=batch):
            pyro.sample("obs", likelihood(output).to_event(2), obs=y)
        return likelihood.location(output)


#: The name the user's guide uses for the same model.
BayesianEnhancedAutoformer = BayesianAutoformer
