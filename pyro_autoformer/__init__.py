"""Bayesian Autoformer in Pyro, with tuning of the ELBO's KL weight."""

__version__ = "0.1.0"
