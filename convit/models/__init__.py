"""ConViT models: `create_model(name, **overrides)` over a registry of six variants."""

from convit.models.convit import IMAGE_SIZE, ConViT, check_input_size, count_params, relative_indices
from convit.models.registry import create_model, list_models, variant_hparams
from convit.models.weights import load_mindcv_checkpoint, load_weights

__all__ = [
    "IMAGE_SIZE",
    "ConViT",
    "check_input_size",
    "count_params",
    "create_model",
    "list_models",
    "load_mindcv_checkpoint",
    "load_weights",
    "relative_indices",
    "variant_hparams",
]
