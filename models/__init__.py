"""Networks, their name registry, score_sde's preconditioning around them, and the map
from network output to the process's native quantity."""
from models import mlp  # noqa: F401  (registers "mlp")
from models import ddpm, ncsnpp, ncsnv2  # noqa: F401  (register the image networks)
from models import classifier  # noqa: F401  (registers the noise-conditional classifiers)
from models import dhariwal_unet, song_unet  # noqa: F401  (register EDM's U-Nets)
from models.guidance import classifier_free_guidance, classifier_guidance
from models.parameterization import (NetworkFn, ScoreFn, get_guided_score_fn,
                                     get_model_fn, get_score_fn)
from models.precond import Precond, get_sigmas
from models.pth import load_pth, save_pth
from models.score_sde_import import load_score_sde_checkpoint
from models.registry import get_model, register_model, registered_models

__all__ = ["get_model", "register_model", "registered_models", "get_model_fn",
           "get_score_fn", "get_guided_score_fn", "NetworkFn", "ScoreFn", "Precond",
           "get_sigmas", "classifier_free_guidance", "classifier_guidance", "load_pth",
           "save_pth", "load_score_sde_checkpoint"]
