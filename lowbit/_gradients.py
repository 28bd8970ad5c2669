"""The output-gradient quantizer of Sun et al.'s backward GEMMs: GradScale, then FP4.

Sun et al. (NeurIPS 2020, section 4.3) scale the output gradient ``G`` of a layer
per tensor ("GradScale": ``scale = radix^ceil(log_radix(max|G| / max_value))``)
before rounding it onto the radix-4 FP4 grid. ``gradient_scaling="channel"`` gives
each backward GEMM its own scale per index of *that GEMM's* non-contraction axes
instead, the per-channel scaling of AQT/qwix applied to ``G``:

* input gradient ``dA = Q(G) W^T``: one scale per row of ``G`` (per sample, per
  token; for a convolution per sample, since a window mixes neighbouring
  positions);
* weight gradient ``dW = A^T Q(G)``: one scale per output channel (column).

Each scale then factors out of its GEMM, ``dA[r] = s_r (Q(G[r]/s_r) W^T)``, as
an integer or FP4 GEMM with per-channel scales computes it in hardware.

Why it matters: a radix-4 FP4 grid spans ``4^6`` below its maximum, and a
classifier's ``G = dL/dlogits`` differs between samples by more than that once
most of them are fitted (a well-classified sample's gradient is ``p - y`` with
``p`` near ``y``). Under one per-tensor scale set by the batch's worst sample,
the others round to zero or to one or two grid points; the measured cost on
Fashion-MNIST grows from 1.7 points after one epoch to 3.6 after ten
(BENCHMARKS.md, "where lowbit's gap is").
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax
from jax.custom_derivatives import linear_call

from lowbit._rounding import quantize
from lowbit._scaling import _radix_scale, compute_scale

__all__ = ["quantize_gradient", "grad_quantizer"]


def _gradient_key(g: jax.Array, config, phase: str) -> jax.Array:
    """A key from the config seed and a wrapping sum of ``g``'s bits (no state needed)."""
    bits = lax.bitcast_convert_type(g.astype(jnp.float32), jnp.uint32)
    h = jnp.sum(bits, dtype=jnp.uint32)
    key = jax.random.fold_in(jax.random.key(config.seed), h)
    return jax.random.fold_in(key, 0 if phase == "even" else 1)


def _channel_scale(g: jax.Array, fmt, keep_axes: tuple[int, ...]) -> jax.Array:
    """GradScale's power-of-radix scale per index of ``keep_axes`` (broadcasts against ``g``)."""
    axes = tuple(a for a in range(g.ndim) if a not in keep_axes)
    amax = jnp.max(jnp.abs(g.astype(jnp.float32)), axis=axes, keepdims=True)
    return _radix_scale(amax, fmt)


def quantize_gradient(
    g: jax.Array, config, phase: str = "even", *, keep_axes: tuple[int, ...] = (0,)
) -> jax.Array:
    """GradScale + FP4 rounding of an output gradient (one of the two TPR phases).

    ``scale = compute_scale(g, config.gradients)`` (Sun et al. 2020, section
    4.3), then ``quantize(g, gradients, scale=scale, phase=phase)``. With
    ``config.gradient_scaling == "channel"`` the scale is taken per index of
    ``keep_axes`` (default: per row of the leading, batch axis); a row whose
    max is 0 or not finite gets scale 1, so NaN/inf stay visible. Returns ``g``
    unchanged for FLOAT32 gradients.
    """
    fmt = config.gradients
    if fmt.is_float32:
        return g
    if config.gradient_scaling == "max":
        scale = compute_scale(g, fmt)
    elif config.gradient_scaling == "channel":
        scale = _channel_scale(g, fmt, tuple(a % max(g.ndim, 1) for a in keep_axes))
    else:
        scale = None
    key = _gradient_key(g, config, phase) if config.gradient_rounding == "stochastic" else None
    return quantize(g, fmt, scale=scale, rounding=config.gradient_rounding, key=key, phase=phase)


def grad_quantizer(t: jax.Array, config, phase: str, keep_axes: tuple[int, ...]) -> jax.Array:
    """Identity on tangents whose transpose quantizes the cotangent."""
    if config.gradients.is_float32:
        return t

    def transpose(_, g):
        return quantize_gradient(g, config, phase, keep_axes=keep_axes)

    return linear_call(lambda _, t: t, transpose, (), t)
