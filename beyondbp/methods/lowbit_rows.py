"""Registry rows for ``lowbit``: Sun et al.'s (NeurIPS 2020) full 4-bit training recipe.

``lowbit``: every Linear/Conv layer of the configured model but the last runs :data:`ROW_4BIT`
(INT4 weights with SAWB, UINT4 activations with a float max scale per sample, logarithmic FP4
gradients with per-channel GradScale on LUQ's radix-2 grid, float32 accumulation and float32
master weights; :data:`RECIPE`, the paper's per-tensor scales and radix-4 gradients with
two-phase rounding, is what ablations and the ``fwdgrad+lowbit`` row use); the last
(classifier) layer runs Sun et al.'s 8-bit exception config
(:data:`lowbit.recipes.SUN2020_8BIT`), as the paper kept it (:data:`CLASSIFIER_8BIT`). Trained
by backprop through the quantized GEMMs with SGD momentum, the same optimizer as the
``backprop`` row. On the ``resnet`` and ``vit`` models it runs the paper's whole recipe,
:data:`lowbit.recipes.SUN2020` (also the stem and the 1x1 convolutions in 8 bits), through
``lowbit.apply_rules``.

``lowbit-nvfp4`` and ``lowbit-mxfp4``: the block-scaled 4-bit formats of 2025 on the same model
and optimizer, :data:`lowbit.recipes.NVFP4_2025` (NVIDIA's recipe: NVFP4 in all three GEMMs,
16x16 weight tiles, Hadamard transforms and stochastic rounding on the gradients, the last 15%
of the layers in float32) and :data:`lowbit.recipes.MXFP4` (OCP MXFP4 everywhere).
"""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp
import optax

import lowbit
from beyondbp import models
from beyondbp.methods._registry import Method, MethodConfig, NotApplicable, Setup, register

#: The recipe ``beyondbp compare`` runs as ``lowbit``. UINT4 activations: every
#: quantized layer's input is either pixels in [0, 1] or a ReLU output.
RECIPE = lowbit.QuantConfig(activations=lowbit.UINT4)


#: The 4-bit layers of the row's rule on ``mlp`` and ``cnn``: :data:`RECIPE` with every code of
#: the activation format used by each sample (a float scale ``max|A_i| / 15`` per sample, row
#: ``i`` of the layer input, instead of one power of two per tensor, which leaves the typical
#: sample on a few of UINT4's 16 levels) and a GradScale per channel (per row of ``G`` in
#: ``dA = G W^T``, per output channel in ``dW = A^T G``). Each scale still factors out of its
#: GEMM. Fashion-MNIST, 10 epochs (BENCHMARKS.md, "Per-sample activation scale"): the forward
#: alone (INT4 SAWB weights, these activations, float32 gradients) is within 0.2 points of
#: float32 (seeds 1, 2: 89.22 / 89.06% against float32's 89.21 / 89.22%), so what the row
#: still loses is in its 4-bit gradients.
#:
#: The gradients are logarithmic FP4 on the radix-2 grid (:data:`lowbit.RADIX2_FP4`, LUQ's
#: format: Chmiel et al., ICLR 2023), not Sun et al.'s radix-4 with two-phase rounding. Sun et
#: al. chose radix 4 for range: one scale per tensor must cover every sample's gradient
#: (section 3). With a scale per row and per column that range is not needed, and radix 2
#: halves the log step (nearest-rounding error at most 1/3 of a value instead of 3/5).
#: Fashion-MNIST, 10 epochs, seeds 1 and 2 (BENCHMARKS.md, "Radix-2 gradients"): the row with
#: radix-4 gradients 88.27 / 88.50%, with radix-2 88.94 / 89.06%, float32 89.21 / 89.22%.
ROW_4BIT = dataclasses.replace(
    RECIPE,
    activation_scaling="sample",
    gradients=lowbit.RADIX2_FP4,
    gradient_scaling="channel",
    two_phase=False,  # TPR's odd grid is radix 4's half step, which radix 2 has on one grid
)

#: The row's rule on ``mlp`` and ``cnn``: the last (classifier) layer in Sun et al.'s 8 bits
#: (INT8 weights and activations, FP8 E5M2 gradients), every other layer :data:`ROW_4BIT`.
#:
#: Why: the 4-bit loss on an MLP is in the gradients, and mostly in one GEMM, the last layer's
#: input gradient ``dA = Q(G) W^T`` with ``G = dL/dlogits`` on the radix-4 grid (one element's
#: error up to 60% of its value), which every earlier layer learns from. Sun et al. (2020, sec.
#: 5) keep the first and the last layer in 8 bits; the first layer holds 74% of an MLP's weights
#: and its 8 bits changed little, so it stays 4-bit. Ablation and three-seed tables:
#: BENCHMARKS.md, "Cause 4: the 4-bit gradient of the classifier's input".
CLASSIFIER_8BIT = lowbit.Recipe(
    name="lowbit-classifier-8bit",
    rules=(
        lowbit.Rule(config=lowbit.recipes.SUN2020_8BIT, select="last"),
        lowbit.Rule(config=ROW_4BIT),
    ),
    description="ROW_4BIT (INT4 SAWB weights, UINT4 activations on a float scale per sample, "
    "radix-2 logarithmic FP4 gradients with per-channel GradScale) in every layer but the last, "
    "which is in Sun et al. 2020's 8 bits",
)

#: Models whose 4-bit version follows the paper's whole per-layer recipe (SUN2020).
RECIPE_MODELS = ("resnet", "vit")

#: The ResNet's SUN2020: the paper's 8-bit exceptions, and its 4-bit layers with UINT4
#: activations (:data:`RECIPE`). Sun et al. quantize activations with PACT, an unsigned clip of
#: a ReLU output; every 4-bit convolution of ``models.resnet`` reads a ReLU output (the stem
#: and the 1x1 projections, which read other values, are 8-bit), so :data:`lowbit.recipes.SUN2020`'s
#: signed INT4 activations would spend one of the four bits on a sign that is always +.
#: The ViT's 4-bit layers read LayerNorm outputs and attention values, which are signed: it
#: keeps SUN2020.
SUN2020_RELU = lowbit.Recipe(
    name="SUN2020-UINT4-activations",
    rules=lowbit.recipes.SUN2020.rules[:-1] + (lowbit.Rule(config=RECIPE),),
    description="Sun et al. 2020 with UINT4 (PACT-like, unsigned) activations in the 4-bit "
    "layers, whose inputs are ReLU outputs",
)


def build_model(
    cfg: MethodConfig,
    config: lowbit.QuantConfig = RECIPE,
    *,
    recipe=None,
    classifier_8bit: bool = True,
):
    """``(apply, params)`` of the configured model with 4-bit layers.

    ``recipe``: a :class:`lowbit.Recipe` applied by ``lowbit.apply_rules`` to any model; when
    ``None``, ``mlp`` and ``cnn`` get :data:`CLASSIFIER_8BIT` (``config`` in every layer when
    ``classifier_8bit=False`` or a ``config`` other than :data:`RECIPE` is given) and
    ``resnet`` gets :data:`SUN2020_RELU` and ``vit`` :data:`lowbit.recipes.SUN2020` (or
    ``config`` everywhere, when one other than :data:`RECIPE` is given).
    """
    if recipe is None and cfg.model in RECIPE_MODELS:
        recipe = (
            (SUN2020_RELU if cfg.model == "resnet" else lowbit.recipes.SUN2020)
            if config == RECIPE
            else lowbit.Recipe(name="custom", rules=(lowbit.Rule(config=config),))
        )
    if recipe is None and classifier_8bit and config == RECIPE:
        recipe = CLASSIFIER_8BIT
    if recipe is not None:
        return cfg.build_model(recipe=recipe)
    if cfg.model == "mlp":
        return models.mlp4bit(
            cfg.key, (cfg.num_inputs, *cfg.widths, cfg.num_classes), config=config
        )
    if cfg.model == "cnn":
        return models.cnn4bit(cfg.key, cfg.num_classes, config=config)
    raise NotApplicable(f"lowbit has no 4-bit variant of model={cfg.model!r}")


LR = 0.05


def rate(steps: int) -> optax.Schedule:
    """The 4-bit rows' rate: ``LR`` on a cosine to 0 over the run (a schedule in run length).

    A 4-bit gradient carries rounding noise of the order of its own size (logarithmic grid
    points are a factor 2 or 4 apart), and SGD's excess loss from gradient noise is proportional to the
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


def _build(cfg: MethodConfig, recipe=None) -> Setup:
    apply, params = build_model(cfg, recipe=recipe)
    return Setup(
        params=params, apply=apply, tx=optax.sgd(rate(cfg.steps), momentum=0.9), needs_grad=True
    )


register(
    Method(
        "lowbit",
        "4-bit training (Sun et al. 2020): INT4 weights (SAWB) and UINT4 activations (float "
        "max scale per sample), logarithmic FP4 gradients (LUQ's radix 2) with per-channel "
        "GradScale, the last layer in 8 bits "
        "(resnet/vit: recipes.SUN2020, also the first layer and 1x1 convs in 8 bits); SGD lr "
        "0.05 on a cosine to 0 over the run, momentum 0.9",
        _build,
        family="lowbit",
    )
)
register(
    Method(
        "lowbit-nvfp4",
        "NVIDIA 2025 NVFP4 recipe (E2M1 with an E4M3 scale per 16 and an FP32 tensor scale; 16x16 "
        "weight tiles, Hadamard transforms and stochastic rounding on the gradients, the last "
        f"15% of the layers in float32); SGD lr {LR} on a cosine to 0, momentum 0.9",
        lambda cfg: _build(cfg, lowbit.recipes.NVFP4_2025),
        family="lowbit",
    )
)
register(
    Method(
        "lowbit-mxfp4",
        "OCP MXFP4 (E2M1 with an E8M0 scale per 32) in all three GEMMs of every layer; SGD lr "
        f"{LR} on a cosine to 0, momentum 0.9",
        lambda cfg: _build(cfg, lowbit.recipes.MXFP4),
        family="lowbit",
    )
)
