"""Exact rounding onto a format's grid (packing the codes is ``lowbit._packing``).

Rounding works on the float32 bit pattern (``lax.bitcast_convert_type``): the
exponent field gives the binade, so the two grid points ``lo <= |x| < hi``
bracketing a value are built from bits, never from ``log2`` (which is inexact
on XLA CPU and would misplace values near every power of two).

Rounding rules (Sun et al., NeurIPS 2020, section 3 and 4):

* Nearest: the threshold between ``lo`` and ``hi`` is their **linear**
  midpoint ``(lo + hi) / 2``; for radix-4 that is ``2.5 * 4^k``, not the
  logarithmic midpoint ``2 * 4^k``. The linear midpoint minimises the absolute
  (and squared) error of each element, which is what a GEMM accumulates. Exact
  ties go to the grid point whose code is even (IEEE round-half-to-even, so
  E4M3/E5M2/E2M1 agree bit for bit with ``ml_dtypes`` casts).
* Stochastic: ``hi`` with probability ``(|x| - lo) / (hi - lo)``, unbiased in
  the linear domain (``E[q(x)] = x``); 24 random bits per element, so the
  probability is resolved to ``2^-24`` of a grid step.
* Saturation: finite values beyond the largest value become +-largest.
* Underflow: below the smallest nonzero value ``s``, nearest gives 0 or ``s``
  by the same midpoint rule (ties to 0). Stochastic rounding gives ``s`` with
  probability ``|x| / s`` (a "stochastic flush"), so tiny gradients are not
  systematically lost: the expectation is still ``x``.
* Non-finite: NaN stays NaN and +-inf stays +-inf. A non-finite gradient is a
  bug upstream; turning it into a finite grid value would hide it. (Encoding a
  non-finite value is described in :func:`lowbit.encode`.)
* Signed zero is kept; unsigned formats map negative values to 0.
* Two-phase rounding (TPR, Sun et al. section 4.2): ``phase="odd"`` rounds onto
  the grid ``sqrt(radix) * radix^k`` (``2 * 4^k`` for radix 4), defined as
  ``2 * q(x / 2)`` with ``q`` on the even grid; every scaling is by a power of
  two, so this is exact.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax

from bbcore import counter_rng
from lowbit._formats import Format

__all__ = ["quantize"]

ROUNDINGS = ("nearest", "stochastic")
PHASES = ("even", "odd")


def _pow2(e: jax.Array) -> jax.Array:
    """``2.0 ** e`` as float32 built from bits; ``e`` int32 in [-126, 127]."""
    return lax.bitcast_convert_type((e + 127) << 23, jnp.float32)


def _exponent(a: jax.Array) -> jax.Array:
    """Unbiased float32 exponent of ``a >= 0`` (-127 for zero and subnormals)."""
    bits = lax.bitcast_convert_type(a, jnp.int32)
    return ((bits >> 23) & 0xFF) - 127


def _uniform24(key: jax.Array, shape) -> jax.Array:
    """Uniform float32 on the grid ``k 2^-24``, k in [0, 2^24): exact, 24 random bits.

    The bits come from :mod:`bbcore.counter_rng`, not ``jax.random.bits``: threefry's 20
    rounds cost about 20x a copy of the array on XLA:CPU, which made stochastic rounding the
    largest part of a block-scaled training step (BENCHMARKS.md, "Block-scaled 4-bit step
    time"). The words are a function of the key and the element's index only, so they do not
    change with a ``vmap`` batch size or a sharding.
    """
    words = counter_rng.bits(key, 0, tuple(shape)) >> jnp.uint32(8)
    return words.astype(jnp.float32) * jnp.float32(2.0**-24)


def _bracket(a: jax.Array, fmt: Format):
    """Grid points ``lo <= a <= hi`` around ``a`` (float32, ``0 <= a <= max_value``).

    Returns ``(lo, hi, mid, lo_odd)``: the midpoint ``(lo + hi) / 2`` (exact)
    and whether ``lo``'s code is odd (for round-half-to-even).
    """
    if fmt.kind == "int":
        lo = jnp.floor(a)
        hi = lo + 1.0
        return lo, hi, lo + 0.5, (lo.astype(jnp.int32) & 1) == 1
    e = _exponent(a)
    m = fmt.mantissa_bits
    if m >= 1:
        # Radix 2 with a mantissa: within a binade the grid is uniform with step
        # q = 2^(p - m); below the smallest normal, the subnormal step is fixed.
        p = jnp.maximum(e, 1 - fmt.bias)
        q = _pow2(p - m)
        n = jnp.floor(a * _pow2(m - p))  # a / q, exact: q is a power of two
        lo = n * q
        return lo, lo + q, lo + 0.5 * q, (n.astype(jnp.int32) & 1) == 1
    # Logarithmic (mantissa_bits = 0): lo = radix^j with j = floor(e / r).
    r = fmt.log2_radix
    j = e >> (r.bit_length() - 1)  # r in {1, 2, 4}: arithmetic shift = floor(e / r)
    jmin = 1 - fmt.bias
    normal = j >= jmin
    jc = jnp.clip(j, jmin, fmt.max_exponent_field - fmt.bias)
    lo = jnp.where(normal, _pow2(r * jc), jnp.float32(0.0))
    hi = jnp.where(normal, _pow2(r * jc + r), _pow2(jnp.int32(r * jmin)))
    lo_odd = normal & (((jc + fmt.bias) & 1) == 1)
    return lo, hi, (lo + hi) * 0.5, lo_odd


def _round_magnitude(a, fmt, rounding, key):
    lo, hi, mid, lo_odd = _bracket(a, fmt)
    if rounding == "nearest":
        up = (a > mid) | ((a == mid) & lo_odd)
    else:
        # a - lo and hi - lo are exact; the quotient has float32 rounding only.
        t = (a - lo) / (hi - lo)
        up = _uniform24(key, a.shape) < t
    return jnp.where(up, hi, lo)


def _round_to_grid(y: jax.Array, fmt: Format, rounding: str, key) -> jax.Array:
    """Round float32 ``y`` onto ``fmt``'s grid (no scale, even phase)."""
    maxv = jnp.float32(fmt.max_value)
    if fmt.signed:
        a = jnp.minimum(jnp.abs(y), maxv)
        # a NaN input yields garbage here; the caller restores non-finite inputs.
        return jnp.copysign(_round_magnitude(a, fmt, rounding, key), y)
    a = jnp.clip(y, 0.0, maxv)
    return _round_magnitude(a, fmt, rounding, key)


def _check_format(fmt) -> Format:
    if not isinstance(fmt, Format):
        raise TypeError(f"fmt={fmt!r}: expected a lowbit.Format (e.g. lowbit.RADIX4_FP4)")
    return fmt


def _check_rounding(rounding: str, key, who: str | None = None) -> None:
    """A known rounding, and a key with stochastic rounding; ``who`` opens the message."""
    where = f"{who}: " if who else ""
    if rounding not in ROUNDINGS:
        raise ValueError(f"{where}rounding={rounding!r}: use one of {ROUNDINGS}")
    if rounding == "stochastic" and key is None:
        raise ValueError(
            f"{where}rounding='stochastic' needs key=jax.random.key(...); "
            "pass a PRNG key (fold in the step count) or use rounding='nearest'"
        )


def _phase_shift(fmt: Format, phase: str) -> int:
    """Exponent (base 2) of the odd-phase grid shift: 1 for radix 4, 2 for radix 16."""
    if phase not in PHASES:
        raise ValueError(f"phase={phase!r}: use one of {PHASES}")
    if phase == "even":
        return 0
    if fmt.kind != "float" or fmt.log2_radix % 2:
        raise ValueError(
            f"phase='odd' needs a logarithmic format with radix 4 or 16 (two-phase rounding "
            f"shifts the grid by sqrt(radix)); {fmt.name} has kind={fmt.kind!r}, radix={fmt.radix}"
        )
    return fmt.log2_radix // 2


def quantize(
    x: jax.Array,
    fmt: Format,
    *,
    scale: jax.Array | float | None = None,
    rounding: str = "nearest",
    key: jax.Array | None = None,
    phase: str = "even",
) -> jax.Array:
    """Values of ``x`` rounded onto ``scale * grid(fmt)``, in ``x``'s dtype.

    Implements the quantizers of Sun et al. (NeurIPS 2020): INT4 for weights
    and activations, radix-4 FP4 with two-phase rounding (section 4.2) for
    gradients. See the module docstring for the rounding rules (linear
    midpoint, ties to even code, saturation, underflow, NaN/inf).

    Args:
      x: floating array, any shape (float32, bfloat16, float16).
      fmt: the target :class:`lowbit.Format`; :data:`lowbit.FLOAT32` returns ``x``.
      scale: positive finite scalar (or array broadcastable to ``x``); the grid
        is ``scale * values``. ``None`` means 1. A power of two keeps this exact.
      rounding: ``"nearest"`` or ``"stochastic"`` (needs ``key``).
      key: PRNG key for stochastic rounding.
      phase: ``"even"`` (grid ``radix^k``) or ``"odd"`` (grid ``sqrt(radix)
        radix^k``, TPR's second phase; radix-4/16 formats only).

    Returns:
      An array of ``x``'s shape and dtype whose finite entries lie on the grid.

    Raises:
      TypeError: ``fmt`` not a Format, or ``x`` not floating.
      ValueError: unknown ``rounding`` or ``phase``, or stochastic without ``key``.
    """
    _check_format(fmt)
    _check_rounding(rounding, key)
    shift = _phase_shift(fmt, phase)
    x = jnp.asarray(x)
    if not jnp.issubdtype(x.dtype, jnp.floating):
        raise TypeError(f"quantize needs a floating array, got dtype {x.dtype}")
    if fmt.is_float32:
        return x
    s = None if scale is None else jnp.asarray(scale, jnp.float32)
    return _quantize_impl(x, s, key, fmt=fmt, rounding=rounding, shift=shift)


@functools.partial(jax.jit, static_argnames=("fmt", "rounding", "shift"))
def _quantize_impl(x, s, key, *, fmt, rounding, shift):
    # One compiled kernel per (format, rounding, phase, shape); inlined under an outer jit.
    xf = x.astype(jnp.float32)
    y = xf
    if s is not None:
        y = y / s
    if shift:
        y = y * jnp.float32(2.0**-shift)
    q = _round_to_grid(y, fmt, rounding, key)
    if shift:
        q = q * jnp.float32(2.0**shift)
    if s is not None:
        q = q * s
    return jnp.where(jnp.isfinite(xf), q, xf).astype(x.dtype)


# ---------------------------------------------------------------------------
# Codes and packing
# ---------------------------------------------------------------------------
