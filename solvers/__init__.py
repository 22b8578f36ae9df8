"""Samplers and likelihoods: predictor-corrector, diffrax ODE/SDE solves, bits/dim."""
from solvers.from_config import get_sampling_fn
from solvers.likelihood import bits_per_dim, get_likelihood_fn, get_log_likelihood_fn
from solvers.ode_sampler import get_ode_sampler
from solvers.pc_sampler import get_pc_sampler
from solvers.sde_sampler import get_sde_sampler

__all__ = ["get_pc_sampler", "get_ode_sampler", "get_sde_sampler", "get_sampling_fn",
           "get_log_likelihood_fn", "get_likelihood_fn", "bits_per_dim"]
