"""Choosing the KL weight: the beta-scaled ELBO, tuning policies, history, diagnosis.

The convention (see :mod:`pyro_autoformer.tuning.tuner`): the loss is
``D + beta * K`` with the data term ``D`` and the KL term ``K`` both divided by the
number of target elements in the training set, so ``beta = 1`` is the exact ELBO.
"""

from .diagnosis import DiagnosisConfig, Finding, diagnose
from .elbo import BetaELBO, ELBOTerms
from .history import KLHistory, KLRecord
from .plotting import plot_history
from .policies import (
    SCHEDULES,
    AdaptivePolicy,
    AnnealingPolicy,
    FixedPolicy,
    Observation,
    Policy,
    StagedTargets,
    ValidationFeedback,
    kl_share,
)
from .tuner import (
    METHODS,
    KLTuner,
    beta_from_per_element_weight,
    measure_kl_term,
    per_element_weight_from_beta,
    suggest_kl_weight,
)

__all__ = [
    "METHODS",
    "SCHEDULES",
    "AdaptivePolicy",
    "DiagnosisConfig",
    "Finding",
    "Observation",
    "Policy",
    "diagnose",
    "measure_kl_term",
    "plot_history",
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
