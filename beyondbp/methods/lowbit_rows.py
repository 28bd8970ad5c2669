"""Registry rows for ``lowbit``: Sun et al.'s (NeurIPS 2020) full 4-bit training recipe.

``lowbit``: every Linear/Conv layer of the configured model is a ``lowbit.nnx``
layer (INT4 weights with SAWB, UINT4 activations with a power-of-two max scale,
radix-4 FP4 gradients with GradScale and two-phase rounding, float32
accumulation and float32 master weights), trained by backprop through the
quantized GEMMs with SGD momentum, the same optimizer as the ``backprop`` row.
"""

from __future__ import annotations

import optax

import lowbit
from beyondbp import models
from beyondbp.methods._registry import Method, MethodConfig, Setup, register

#: The recipe ``beyondbp compare`` runs as ``lowbit``. UINT4 activations: every
#: quantized layer's input is either pixels in [0, 1] or a ReLU output.
RECIPE = lowbit.QuantConfig(activations=lowbit.UINT4)


def build_model(cfg: MethodConfig, config: lowbit.QuantConfig = RECIPE):
    """``(apply, params)`` of the configured model with 4-bit layers."""
    if cfg.model == "mlp":
        return models.mlp4bit(cfg.key, (cfg.num_inputs, *cfg.widths, cfg.num_classes),
                              config=config)
    return models.cnn4bit(cfg.key, cfg.num_classes, config=config)


def _build(cfg: MethodConfig) -> Setup:
    apply, params = build_model(cfg)
    return Setup(params=params, apply=apply, tx=optax.sgd(0.05, momentum=0.9), needs_grad=True)


register(Method("lowbit",
                "4-bit training (Sun et al. 2020): INT4 weights (SAWB) and activations, radix-4 "
                "FP4 gradients with GradScale and two-phase rounding; SGD lr 0.05 momentum 0.9",
                _build, family="lowbit"))
