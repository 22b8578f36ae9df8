"""The processes: VP, sub-VP and VE SDEs, rectified flow and EDM's, and `get_sde(config)`."""
from sde_lib.base import AbstractSDE, ReverseSDE, batch_mul
from sde_lib.chains import AbstractChain, DDPMChain, SMLDChain, smld_sigmas
from common.choices import lookup
from common.errors import MissingFileError, UserError
from sde_lib.edm import EDM
from sde_lib.gaussian import (gaussian_denoiser, gaussian_logp, gaussian_model_fn,
                              gaussian_score, gaussian_velocity)
from sde_lib.rectified_flow import RectifiedFlow
from sde_lib.subvpsde import SubVPSDE
from sde_lib.vesde import VESDE
from sde_lib.vpsde import VPSDE

# The one place that maps config.training.sde to a process.
_SDES = {
    "vpsde": lambda m: VPSDE(beta_min=m.beta_min, beta_max=m.beta_max, N=m.num_scales),
    "subvpsde": lambda m: SubVPSDE(beta_min=m.beta_min, beta_max=m.beta_max,
                                   N=m.num_scales),
    "vesde": lambda m: VESDE(sigma_min=m.sigma_min, sigma_max=m.sigma_max, N=m.num_scales),
    "rectified_flow": lambda m: RectifiedFlow(N=m.num_scales),
    # EDM (Karras et al. 2022): sigma(t) = t on [0, sigma_max].
    "edm": lambda m: EDM(sigma_min=m.sigma_min, sigma_max=m.sigma_max, N=m.num_scales),
}


def get_sde(config) -> AbstractSDE:
  """Builds the process named by config.training.sde from config.model's hyper-parameters."""
  name = str(config.training.sde).lower()
  build = lookup(_SDES, name, "SDE")
  try:
    return build(config.model)
  except (AttributeError, KeyError) as e:
    raise UserError(f"config.model lacks a field that SDE {name!r} needs: {e}") from None


__all__ = ["UserError", "MissingFileError", "AbstractSDE", "ReverseSDE", "VPSDE",
           "SubVPSDE", "VESDE", "RectifiedFlow", "EDM", "AbstractChain", "DDPMChain", "SMLDChain",
           "smld_sigmas",
           "get_sde", "batch_mul", "gaussian_model_fn", "gaussian_score", "gaussian_logp",
           "gaussian_velocity", "gaussian_denoiser"]
