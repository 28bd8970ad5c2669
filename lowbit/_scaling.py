"""Per-tensor scales: GradScale (max), delayed (amax history), SAWB and PACT clips.

A scale maps a tensor's range onto a format's range: values are quantized as
``scale * q(x / scale)``. Sun et al. (NeurIPS 2020, section 4.3, "GradScale")
scale each layer's gradient so that its largest magnitude lands at the top of
the radix-4 FP4 range; without it, gradients of order 1e-4 fall below 4^-3
and flush to zero. Scales here are powers of the format's radix (powers of two
for radix-2 and integer formats), so scaling is exact and never moves values
between TPR's even and odd grids.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
from jax import lax

from lowbit._formats import Format
from lowbit._rounding import _check_format, _exponent, _pow2

__all__ = ["compute_scale", "amax_scale", "amax_history_update", "sawb_scale", "pact_clip"]

SCALINGS = ("max", "delayed")

# SAWB (Choi et al., "Accurate and efficient 2-bit quantized neural networks",
# SysML 2019): clip alpha = c1 * sqrt(E[w^2]) + c2 * E[|w|], coefficients fitted
# per bit width over common weight distributions.
_SAWB_COEFFS = {2: (3.212, -2.178), 4: (12.68, -12.80), 5: (17.74, -18.64)}


def _amax(x: jax.Array) -> jax.Array:
    return jnp.max(jnp.abs(x.astype(jnp.float32))) if x.size else jnp.float32(0.0)


def _radix_scale(amax: jax.Array, fmt: Format) -> jax.Array:
    """Smallest ``radix^k`` with ``amax <= radix^k * max_value`` (1 for 0 or non-finite amax)."""
    maxv = fmt.max_value
    _, e_max = math.frexp(maxv)
    e_max -= 1  # frexp gives mantissa in [0.5, 1)
    d = jnp.clip(_exponent(amax) - e_max, -126, 127)
    # amax < 2^(E(amax)+1) and max_value >= 2^e_max, so 2^d or 2^(d+1) is the
    # smallest power of two that fits: one exact comparison decides.
    t = jnp.where(amax > _pow2(d) * jnp.float32(maxv), d + 1, d)
    r = 1 if fmt.kind == "int" else fmt.log2_radix
    k = -((-t) // r) * r  # round the exponent up to a multiple of log2(radix)
    scale = _pow2(jnp.clip(k, -126, 126))
    ok = jnp.isfinite(amax) & (amax > 0)
    return jnp.where(ok, scale, jnp.float32(1.0))


def compute_scale(
    x: jax.Array, fmt: Format, method: str = "max", *, amax_history: jax.Array | None = None
) -> jax.Array:
    """Per-tensor power-of-radix scale mapping ``x``'s range onto ``fmt``'s (GradScale).

    Sun et al. (2020), section 4.3: ``scale = radix^ceil(log_radix(max|x| /
    max_value))``, computed exactly from the exponent bits. With this scale,
    ``max|x| / scale`` lies in ``(max_value / radix, max_value]``.

    Args:
      x: floating array.
      fmt: target format; :data:`FLOAT32` always gives 1.
      method: ``"max"`` (the current tensor's max magnitude) or ``"delayed"``
        (the max of ``amax_history``, the previous steps' maxima, as in FP8
        delayed scaling; when the history is all zero, e.g. on the first step,
        the current max is used).
      amax_history: 1-D float32 array, required for ``"delayed"``; update it with
        :func:`amax_history_update`.

    Returns:
      float32 scalar: 1.0 when the amax is 0 or not finite (so NaN/inf pass
      through ``quantize`` visibly instead of poisoning every element).
    """
    _check_format(fmt)
    if method not in SCALINGS:
        raise ValueError(f"method={method!r}: use one of {SCALINGS}")
    if fmt.is_float32:
        return jnp.float32(1.0)
    if method == "delayed" and amax_history is None:
        raise ValueError(
            "method='delayed' needs amax_history=<1-D float32 array>; "
            "create it with jnp.zeros((n,), jnp.float32)"
        )
    return _compute_scale(jnp.asarray(x), None if method == "max" else amax_history, fmt=fmt)


@functools.partial(jax.jit, static_argnames=("fmt",))
def _compute_scale(x, amax_history, *, fmt):
    amax = _amax(x)
    if amax_history is not None:
        past = jnp.max(jnp.asarray(amax_history, jnp.float32))
        amax = jnp.where(past > 0, past, amax)
    return _radix_scale(amax, fmt)


def amax_scale(x: jax.Array, fmt: Format) -> jax.Array:
    """Per-tensor float scale ``max|x| / max_value``: the largest magnitude lands exactly on
    the format's top code (float32 scalar; 1.0 when the amax is 0 or not finite).

    A power-of-two scale (:func:`compute_scale`) leaves ``max|x| / scale`` anywhere in
    ``(max_value / 2, max_value]``, so for a 4-bit integer format up to half the codes go
    unused (a quarter on average over a uniform log-amax): for unsigned ReLU activations that
    is the difference between 16 and as few as 8 levels. One float scale per tensor still
    factors out of every GEMM the tensor enters (as NVFP4's per-tensor FP32 scale does), so
    the GEMMs stay integer GEMMs.
    """
    _check_format(fmt)
    if fmt.is_float32:
        return jnp.float32(1.0)
    return _amax_scale(jnp.asarray(x), fmt=fmt)


@functools.partial(jax.jit, static_argnames=("fmt",))
def _amax_scale(x, *, fmt):
    return _scale_for_amax(_amax(x), fmt)


def _scale_for_amax(amax, fmt):
    """``amax / max_value`` elementwise, 1 where ``amax`` is 0 or not finite."""
    ok = jnp.isfinite(amax) & (amax > 0)
    return jnp.where(ok, amax / jnp.float32(fmt.max_value), jnp.float32(1.0))


def sample_amax_scale(x: jax.Array, fmt: Format) -> jax.Array:
    """Float scale per sample: :func:`amax_scale` of each ``x[i]`` (leading axis), shaped
    ``(n, 1, ..., 1)`` to broadcast against ``x`` (1.0 where a sample's amax is 0 or not finite).

    The per-token (vector-wise) activation scale of Dettmers et al., "LLM.int8()" (NeurIPS
    2022, sec. 3.1), as AQT, qwix and Transformer Engine offer it. It still
    factors out of a GEMM or convolution whose leading axis is a batch (not contracted) axis:
    ``(diag(s) A) W = diag(s) (A W)``. A ReLU layer's largest activation in a batch of 64 is
    several times the typical sample's, so one scale per tensor leaves most samples on a
    few of UINT4's 16 levels.
    """
    _check_format(fmt)
    x = jnp.asarray(x)
    if x.ndim < 2:
        raise ValueError(f"sample_amax_scale: x needs a leading sample axis, got shape {x.shape}")
    if fmt.is_float32:
        return jnp.ones((x.shape[0],) + (1,) * (x.ndim - 1), jnp.float32)
    return _sample_amax_scale(x, fmt=fmt)


@functools.partial(jax.jit, static_argnames=("fmt",))
def _sample_amax_scale(x, *, fmt):
    axes = tuple(range(1, x.ndim))
    return _scale_for_amax(jnp.max(jnp.abs(x.astype(jnp.float32)), axis=axes, keepdims=True), fmt)


def amax_history_update(amax_history: jax.Array, x: jax.Array) -> jax.Array:
    """Roll the history by one and store ``max|x|`` at index 0 (float32)."""
    h = jnp.asarray(amax_history, jnp.float32)
    return jnp.roll(h, 1).at[0].set(_amax(jnp.asarray(x)))


def sawb_scale(w: jax.Array, fmt: Format) -> jax.Array:
    """SAWB weight scale ``alpha / max_int`` for a signed integer format.

    Choi et al. (SysML 2019), used for INT4 weights by Sun et al. (2020,
    section 5): ``alpha = 12.68 sqrt(E[w^2]) - 12.80 E[|w|]`` for 4 bits
    (coefficients for 2 and 5 bits too; other widths use ``alpha = max|w|``).
    ``alpha`` is capped at ``max|w|`` (clipping beyond the largest weight only
    wastes levels) and falls back to ``max|w|`` when the fit gives ``alpha <= 0``.
    The result is not a power of two: SAWB chooses the clip, not the exponent.
    Returns 1.0 for an all-zero tensor.
    """
    _check_format(fmt)
    if fmt.kind != "int" or not fmt.signed:
        raise ValueError(f"sawb_scale needs a signed integer format such as INT4, got {fmt.name}")
    return _sawb_scale(jnp.asarray(w), fmt=fmt)


@functools.partial(jax.jit, static_argnames=("fmt",))
def _sawb_scale(w, *, fmt):
    wf = w.astype(jnp.float32)
    amax = _amax(wf)
    if fmt.bits in _SAWB_COEFFS:
        c1, c2 = _SAWB_COEFFS[fmt.bits]
        alpha = c1 * jnp.sqrt(jnp.mean(wf * wf)) + c2 * jnp.mean(jnp.abs(wf))
        alpha = jnp.where(alpha > 0, jnp.minimum(alpha, amax), amax)
    else:
        alpha = amax
    alpha = jnp.where(alpha > 0, alpha, jnp.float32(1.0) * fmt.max_int)
    return lax.stop_gradient(alpha / jnp.float32(fmt.max_int))


def pact_clip(x: jax.Array, alpha: jax.Array, *, signed: bool = False) -> jax.Array:
    """PACT activation clip (Choi et al. 2018): ``clip(x, 0 or -alpha, alpha)``.

    Differentiable in ``alpha``: ``d/d alpha = 1`` where ``x >= alpha`` (and
    ``-1`` where ``x <= -alpha`` when signed), 0 elsewhere, which is PACT's
    learning rule for the clip; ``d/dx = 1`` inside the range, 0 outside.
    ``alpha`` is cast to ``x``'s dtype.
    """
    a = jnp.asarray(alpha).astype(x.dtype)
    lo = -a if signed else jnp.zeros((), x.dtype)
    return jnp.minimum(jnp.maximum(x, lo), a)
