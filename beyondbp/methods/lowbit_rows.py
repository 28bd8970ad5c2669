"""Registry rows for ``lowbit``: Sun et al.'s (NeurIPS 2020) full 4-bit training recipe.

``lowbit``: every Linear/Conv layer of the configured model is a ``lowbit.nnx``
layer (INT4 weights with SAWB, UINT4 activations with a power-of-two max scale,
radix-4 FP4 gradients with GradScale and two-phase rounding, float32
accumulation and float32 master weights), trained by backprop through the
quantized GEMMs with SGD momentum, the same optimizer as the ``backprop`` row.
"""

from __future__ import annotations

import jax.numpy as jnp
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
        return models.mlp4bit(
            cfg.key, (cfg.num_inputs, *cfg.widths, cfg.num_classes), config=config
        )
    return models.cnn4bit(cfg.key, cfg.num_classes, config=config)


LR = 0.05


def rate(steps: int) -> optax.Schedule:
    """The 4-bit rows' rate: ``LR`` on a cosine to 0 over the run (a schedule in run length).

    A 4-bit gradient carries rounding noise of the order of its own size (radix-4 grid points
    are a factor 4 apart), and SGD's excess loss from gradient noise is proportional to the
    rate; decaying the rate over the run removes that floor. With a constant rate the 4-bit
    MLP ended 4.0 points behind float32 on Fashion-MNIST after one epoch (1.5 on MNIST); on a
    cosine it is 83.5% against float32's 83.6% (constant) and 85.7% (same cosine), and 96.0%
    on MNIST (95.7% constant). BENCHMARKS.md, "Recipes on data they were not tuned on".
    """
    total = float(max(int(steps), 1))

    def schedule(count):
        # optax.cosine_decay_schedule mixes a Python float with the int32 count, which strict
        # dtype promotion refuses: the same cosine, cast explicitly
        t = jnp.minimum(jnp.asarray(count).astype(jnp.float32), total) / jnp.float32(total)
        return jnp.float32(LR) * 0.5 * (1.0 + jnp.cos(jnp.float32(jnp.pi) * t))

    return schedule


def _build(cfg: MethodConfig) -> Setup:
    apply, params = build_model(cfg)
    return Setup(
        params=params, apply=apply, tx=optax.sgd(rate(cfg.steps), momentum=0.9), needs_grad=True
    )


register(
    Method(
        "lowbit",
        "4-bit training (Sun et al. 2020): INT4 weights (SAWB) and activations, radix-4 "
        "FP4 gradients with GradScale and two-phase rounding; SGD lr 0.05 on a cosine to 0 "
        "over the run, momentum 0.9",
        _build,
        family="lowbit",
    )
)
