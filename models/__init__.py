"""Networks, their name registry, and the map from network output to native quantity."""
from models import mlp  # noqa: F401  (registers "mlp")
from models import ddpm, ncsnpp, ncsnv2  # noqa: F401  (register the image networks)
from models.parameterization import ModelFn, ScoreFn, get_model_fn, get_score_fn
from models.registry import get_model, register_model, registered_models

__all__ = ["get_model", "register_model", "registered_models", "get_model_fn",
           "get_score_fn", "ModelFn", "ScoreFn"]
