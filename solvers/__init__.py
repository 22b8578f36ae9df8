"""Samplers and likelihoods: predictor-corrector, diffrax ODE/SDE solves, bits/dim."""
