"""Published 4-bit training recipes as data: rule lists for :func:`lowbit.apply_rules`.

Each recipe is a :class:`lowbit.Recipe` (rules tried in order, first match
wins) built only from public values, so a variant is one ``dataclasses.replace``
away:

* :data:`SUN2020`: Sun et al., "Ultra-Low Precision 4-bit Training of Deep
  Neural Networks" (NeurIPS 2020): INT4 weights (SAWB) and activations, radix-4
  FP4 gradients with GradScale and two-phase rounding; the first and last
  layer and the 1x1 convolutions in 8 bits, as the paper did.
  :data:`SUN2020_ALL_4BIT` drops those exceptions (an ablation);
  :data:`SUN2020_E2M1_GRADIENTS` swaps the radix-4 gradients for OCP E2M1 ones
  (per-tensor GradScale, one grid, so no two-phase rounding).
* :data:`NVFP4_2025`: NVIDIA, "Pretraining Large Language Models with NVFP4"
  (arXiv 2509.25149, 2025): NVFP4 in all three GEMMs, 16x16 2-D block scales
  for weights (the same quantized weight forward and backward), a 16-point
  random Hadamard transform on the weight-gradient inputs, stochastic rounding
  of the gradients, and the final layers kept in higher precision.
* :data:`MXFP4`: OCP MX v1.0 MXFP4 (E2M1, E8M0 scale per 32) in all three
  GEMMs, with the backward pass of Tseng, Yu and Park, "Training LLMs with
  MXFP4" (arXiv 2502.20586, 2025): in both backward GEMMs every operand is prescaled by
  3/4 (so no element saturates) and stochastically rounded, and a random
  Hadamard transform runs over the weight gradient's contraction axis. The
  forward GEMM keeps the spec's round-to-nearest conversion (Tseng et al. ran
  the forward pass in BF16; here it is MXFP4 too, as in NVFP4_2025).
  :data:`MXFP4_PLAIN` is the format alone: round-to-nearest everywhere.
"""

from __future__ import annotations

import dataclasses

from lowbit._dot import QuantConfig
from lowbit._formats import E2M1, E4M3, E5M2, INT8
from lowbit._gemm import GemmConfig
from lowbit._rules import Recipe, Rule
from lowbit._scaled_formats import MXFP4 as _MXFP4_FORMAT
from lowbit._scaled_formats import NVFP4 as _NVFP4_FORMAT
from lowbit._scaled_formats import ScaledFormat

__all__ = [
    "SUN2020",
    "SUN2020_ALL_4BIT",
    "SUN2020_E2M1_GRADIENTS",
    "SUN2020_4BIT",
    "SUN2020_8BIT",
    "NVFP4_2025",
    "NVFP4_2025_CONFIG",
    "NVFP4_WEIGHTS_2D",
    "MXFP4",
    "MXFP4_CONFIG",
    "MXFP4_PLAIN",
    "MXFP4_PLAIN_CONFIG",
    "MXFP4_BACKWARD",
    "Recipe",
    "Rule",
]

#: Sun et al. (2020) 4-bit layers: INT4 SAWB weights, INT4 activations, radix-4 FP4 gradients
#: with GradScale and two-phase rounding (lowbit's QuantConfig defaults).
SUN2020_4BIT = QuantConfig()
#: The 8-bit exception layers of Sun et al. (2020): INT8 weights and activations; gradients in
#: the radix-2 FP8 (1-5-2, E5M2) of the authors' earlier HFP8 work (Sun et al., NeurIPS 2019),
#: with GradScale. The 2020 paper says "8-bit"; E5M2 gradients are our reading.
SUN2020_8BIT = QuantConfig(weights=INT8, activations=INT8, gradients=E5M2, two_phase=False)

#: Sun et al., "Ultra-Low Precision 4-bit Training of Deep Neural Networks" (NeurIPS 2020):
#: :data:`SUN2020_4BIT` layers, with the first and last layer and 1x1 convolutions in
#: :data:`SUN2020_8BIT`, as the paper did.
SUN2020 = Recipe(
    name="SUN2020",
    rules=(
        Rule(config=SUN2020_8BIT, select="first"),
        Rule(config=SUN2020_8BIT, select="last"),
        Rule(config=SUN2020_8BIT, select="pointwise"),
        Rule(config=SUN2020_4BIT),
    ),
    description="Sun et al. 2020: INT4 W/A, radix-4 FP4 gradients (GradScale, TPR); first, last "
    "and 1x1-conv layers in 8 bits",
)

#: Ablation of :data:`SUN2020`: its 4-bit layers everywhere, without the 8-bit exceptions.
SUN2020_ALL_4BIT = Recipe(
    name="SUN2020_ALL_4BIT",
    rules=(Rule(config=SUN2020_4BIT),),
    description="Sun et al. 2020's 4-bit layers everywhere, without the 8-bit exceptions",
)

#: Ablation of :data:`SUN2020`: OCP E2M1 gradients instead of radix-4 FP4 (per-tensor
#: GradScale on one grid, so no two-phase rounding).
SUN2020_E2M1_GRADIENTS = Recipe(
    name="SUN2020_E2M1_GRADIENTS",
    rules=SUN2020.rules[:3]
    + (Rule(config=dataclasses.replace(SUN2020_4BIT, gradients=E2M1, two_phase=False)),),
    description="SUN2020 with E2M1 instead of radix-4 FP4 gradients (radix-4 vs E2M1 ablation)",
)

#: NVIDIA (2025) weights: E2M1 with E4M3 scales per 16x16 tile and a float32 tensor scale.
NVFP4_WEIGHTS_2D = ScaledFormat(
    name="NVFP4-16x16", element=E2M1, block_size=(16, 16), scale_format=E4M3, tensor_scale=True
)

#: NVIDIA (2025) section 4: activations and gradients NVFP4 (1x16 blocks along each GEMM's
#: contraction axis), weights 16x16 tiles, stochastic rounding on the gradient operand of both
#: backward GEMMs, a 16-point random Hadamard transform on both weight-gradient inputs.
NVFP4_2025_CONFIG = QuantConfig(
    forward=GemmConfig(lhs=_NVFP4_FORMAT, rhs=NVFP4_WEIGHTS_2D),
    input_gradient=GemmConfig(lhs=_NVFP4_FORMAT, rhs=NVFP4_WEIGHTS_2D, lhs_rounding="stochastic"),
    weight_gradient=GemmConfig(
        lhs=_NVFP4_FORMAT, rhs=_NVFP4_FORMAT, rhs_rounding="stochastic", hadamard=16
    ),
)

#: NVIDIA, "Pretraining Large Language Models with NVFP4" (arXiv 2509.25149, 2025):
#: :data:`NVFP4_2025_CONFIG` in every layer but the final ones, which stay in float32.
NVFP4_2025 = Recipe(
    name="NVFP4_2025",
    # NVIDIA kept a small share of the 12B model's linear layers, mostly the final ones, in
    # BF16; here the last 15% of the layers (at least one) stay in float32.
    rules=(Rule(config=None, select="last", count=0.15), Rule(config=NVFP4_2025_CONFIG)),
    description="NVIDIA 2025: NVFP4 in all GEMMs, 16x16 weight tiles, RHT on Wgrad inputs, "
    "stochastic rounding of gradients, last 15% of layers in float32",
)

#: OCP MX v1.0 MXFP4 in the forward, input-gradient and weight-gradient GEMMs, nearest rounding.
MXFP4_PLAIN_CONFIG = QuantConfig(
    forward=GemmConfig(lhs=_MXFP4_FORMAT, rhs=_MXFP4_FORMAT),
    input_gradient=GemmConfig(lhs=_MXFP4_FORMAT, rhs=_MXFP4_FORMAT),
    weight_gradient=GemmConfig(lhs=_MXFP4_FORMAT, rhs=_MXFP4_FORMAT),
)

#: OCP MX v1.0 MXFP4 (:data:`MXFP4_PLAIN_CONFIG`) in every layer: the format alone, no recipe
#: around it. The spec's scale saturates elements between 6 and 8 times it, and nearest rounding
#: of gradients is biased; both are what :data:`MXFP4` removes.
MXFP4_PLAIN = Recipe(
    name="MXFP4_PLAIN",
    rules=(Rule(config=MXFP4_PLAIN_CONFIG),),
    description="OCP MXFP4 (E2M1, E8M0 per 32), round-to-nearest in all three GEMMs of every layer",
)

#: Tseng et al. (2025) backward operands: MXFP4 prescaled by 3/4 before stochastic rounding
#: (their "dither scale", undone on the GEMM output), so the block amax lands in [3, 6).
MXFP4_BACKWARD = dataclasses.replace(_MXFP4_FORMAT, name="MXFP4-3/4", prescale=0.75)

#: Tseng, Yu and Park, "Training LLMs with MXFP4" (arXiv 2502.20586, 2025): stochastic
#: rounding of every backward-GEMM operand with the 3/4 prescale, and a random Hadamard
#: transform along the weight gradient's contraction axis (32 points: one MX block; they
#: rotate the backward GEMMs' operands blockwise). Forward: the spec's nearest conversion.
MXFP4_CONFIG = QuantConfig(
    forward=GemmConfig(lhs=_MXFP4_FORMAT, rhs=_MXFP4_FORMAT),
    input_gradient=GemmConfig(
        lhs=MXFP4_BACKWARD,
        rhs=MXFP4_BACKWARD,
        lhs_rounding="stochastic",
        rhs_rounding="stochastic",
    ),
    weight_gradient=GemmConfig(
        lhs=MXFP4_BACKWARD,
        rhs=MXFP4_BACKWARD,
        lhs_rounding="stochastic",
        rhs_rounding="stochastic",
        hadamard=32,
    ),
)

#: MXFP4 training as the field did it in 2025: OCP MX v1.0 MXFP4 (E2M1, E8M0 scale per 32) in
#: all three GEMMs of every layer, with Tseng et al.'s (2025) unbiased backward pass
#: (:data:`MXFP4_CONFIG`). Tseng et al. kept the forward pass in BF16; it is MXFP4 here, so
#: the recipe sits beside :data:`NVFP4_2025`, which quantizes all three GEMMs.
MXFP4 = Recipe(
    name="MXFP4",
    rules=(Rule(config=MXFP4_CONFIG),),
    description="OCP MXFP4 (E2M1, E8M0 per 32) in all three GEMMs; backward as Tseng et al. "
    "2025: 3/4 prescale, stochastic rounding, RHT on the weight-gradient inputs",
)
