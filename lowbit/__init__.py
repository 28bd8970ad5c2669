"""lowbit: 4-bit training with radix-4 FP4 gradients (Sun et al., NeurIPS 2020).

Formats are data (:class:`Format` and presets), quantizers are pure functions
(:func:`quantize`, :func:`encode`, :func:`decode`, :func:`compute_scale`),
:func:`dot_general` / :func:`conv_general_dilated` are drop-ins for their
``lax`` namesakes that run the paper's three quantized GEMMs and work under
``jax.grad`` and ``jax.jvp``, :mod:`lowbit.nnx` has flax layers, and
:func:`quantize_updates` is an optax transform.
"""

from lowbit import nnx, recipes
from lowbit._blocks import BlockPacked, decode_blocks, encode_blocks, quantize_blocks
from lowbit._distributed import compressed_bytes, compressed_pmean
from lowbit._dot import QuantConfig, conv_general_dilated, dot_general, quantize_gradient
from lowbit._formats import (
    E2M1,
    E4M3,
    E5M2,
    FLOAT32,
    INT4,
    INT8,
    RADIX2_FP4,
    RADIX4_FP4,
    UINT4,
    Format,
    float_format,
    int_format,
    log_format,
)
from lowbit._gemm import GemmConfig
from lowbit._packing import Packed, decode, encode
from lowbit._rounding import quantize
from lowbit._rules import Recipe, Rule, RulesReport, apply_rules, describe, plan_rules
from lowbit._scaled_formats import E8M0, MXFP4, NVFP4, ExponentFormat, ScaledFormat
from lowbit._scaling import (
    amax_history_update,
    amax_scale,
    compute_scale,
    pact_clip,
    sample_amax_scale,
    sawb_scale,
)
from lowbit._transforms import QuantizeUpdatesState, quantize_updates

__all__ = [
    "Format",
    "int_format",
    "float_format",
    "log_format",
    "RADIX2_FP4",
    "RADIX4_FP4",
    "INT4",
    "UINT4",
    "INT8",
    "E2M1",
    "E4M3",
    "E5M2",
    "FLOAT32",
    "quantize",
    "encode",
    "decode",
    "Packed",
    "compute_scale",
    "amax_scale",
    "sample_amax_scale",
    "amax_history_update",
    "sawb_scale",
    "pact_clip",
    "QuantConfig",
    "dot_general",
    "conv_general_dilated",
    "quantize_gradient",
    "quantize_updates",
    "QuantizeUpdatesState",
    "compressed_pmean",
    "compressed_bytes",
    "nnx",
    "ScaledFormat",
    "ExponentFormat",
    "E8M0",
    "MXFP4",
    "NVFP4",
    "BlockPacked",
    "quantize_blocks",
    "encode_blocks",
    "decode_blocks",
    "GemmConfig",
    "Rule",
    "Recipe",
    "RulesReport",
    "apply_rules",
    "plan_rules",
    "describe",
    "recipes",
]
