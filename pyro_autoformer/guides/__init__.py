"""Posterior approximations (guides) for the Bayesian Autoformer."""

from .mean_field import MeanFieldGuide, normal_kl

__all__ = ["MeanFieldGuide", "normal_kl"]
