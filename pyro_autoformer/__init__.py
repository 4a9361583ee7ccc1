"""Bayesian Autoformer in Pyro, with tuning of the ELBO's KL weight.

The pieces, in the order data flows through them: :mod:`~pyro_autoformer.data`
(validated, split, scaled windows), :mod:`~pyro_autoformer.autoformer` (the
deterministic network), :mod:`~pyro_autoformer.bayesian` (priors and likelihood),
:mod:`~pyro_autoformer.guides` (the mean-field posterior),
:mod:`~pyro_autoformer.tuning` (the beta-scaled ELBO and the KL-weight tuner),
:mod:`~pyro_autoformer.training`, :mod:`~pyro_autoformer.predictive`,
:mod:`~pyro_autoformer.metrics` and :mod:`~pyro_autoformer.cli`.
"""

from .autoformer import Autoformer, AutoformerConfig
from .bayesian import BayesianAutoformer, BayesianConfig, BayesianEnhancedAutoformer
from .data import DataConfig, load_data, prepare_batch
from .guides import MeanFieldGuide
from .predictive import PosteriorPredictive
from .tuning import BetaELBO, KLTuner, suggest_kl_weight

__version__ = "0.1.0"

__all__ = [
    "Autoformer",
    "AutoformerConfig",
    "BayesianAutoformer",
    "BayesianConfig",
    "BayesianEnhancedAutoformer",
    "BetaELBO",
    "DataConfig",
    "KLTuner",
    "MeanFieldGuide",
    "PosteriorPredictive",
    "load_data",
    "prepare_batch",
    "suggest_kl_weight",
]
