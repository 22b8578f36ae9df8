"""Samplers and likelihoods: predictor-corrector, diffrax ODE/SDE solves, bits/dim."""
from solvers.controllable import (get_colorizer, get_fast_colorizer, get_fast_inpainter,
                                  get_inpainter, replace_known)
from solvers.fast import get_fast_sampler
from solvers.fixed_step import FlowPath, fixed_step_flow, interpolate_path, uniform_grid
from solvers.from_config import get_sampling_fn
from solvers.nonfinite import NonFiniteError
from solvers.likelihood import bits_per_dim, get_likelihood_fn, get_log_likelihood_fn
from solvers.ode_sampler import get_ode_sampler
from solvers.pc_sampler import get_pc_sampler
from solvers.sde_sampler import get_sde_sampler

__all__ = ["get_pc_sampler", "get_ode_sampler", "get_sde_sampler", "get_sampling_fn",
           "get_log_likelihood_fn", "get_likelihood_fn", "bits_per_dim",
           "get_inpainter", "get_colorizer", "replace_known",
           "get_fast_inpainter", "get_fast_colorizer", "get_fast_sampler",
           "fixed_step_flow", "FlowPath", "uniform_grid", "interpolate_path",
           "NonFiniteError"]
