"""Choosing the KL weight: the beta-scaled ELBO, tuning policies, history, diagnosis.

The convention (see :mod:`pyro_autoformer.tuning.tuner`): the loss is
``D + beta * K`` with the data term ``D`` and the KL term ``K`` both divided by the
number of target elements in the training set, so ``beta = 1`` is the exact ELBO.
"""

from .elbo import BetaELBO, ELBOTerms
from .history import KLHistory, KLRecord
from .policies import (
    AdaptivePolicy,
    AnnealingPolicy,
    FixedPolicy,
    StagedTargets,
    ValidationFeedback,
    kl_share,
)
from .tuner import (
    KLTuner,
    beta_from_per_element_weight,
    per_element_weight_from_beta,
    suggest_kl_weight,
)

__all__ = [
    "AdaptivePolicy",
    "AnnealingPolicy",
    "BetaELBO",
    "ELBOTerms",
    "FixedPolicy",
    "KLHistory",
    "KLRecord",
    "KLTuner",
    "StagedTargets",
    "ValidationFeedback",
    "beta_from_per_element_weight",
    "kl_share",
    "per_element_weight_from_beta",
    "suggest_kl_weight",
]
