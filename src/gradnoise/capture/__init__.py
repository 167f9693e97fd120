"""Gradient capture (the torch layer): per-example, minibatch and full gradients, and SGN.

This package knows torch and nothing of statistics.
"""

from ._common import select_params
from .audit import ModelAudit, ParamRoute, audit_model
from .batches import full_grad, gradient_noise, iter_minibatch_grads, minibatch_grads
from .layers import LAYER_RULES, LayerRule, register_layer_rule
from .per_sample import (
    LayerIO,
    choose_backend,
    iter_per_sample_grads,
    layer_io,
    per_sample_grads,
)

__all__ = [
    "LAYER_RULES",
    "LayerIO",
    "LayerRule",
    "ModelAudit",
    "ParamRoute",
    "audit_model",
    "choose_backend",
    "full_grad",
    "gradient_noise",
    "iter_minibatch_grads",
    "iter_per_sample_grads",
    "layer_io",
    "minibatch_grads",
    "per_sample_grads",
    "register_layer_rule",
    "select_params",
]
