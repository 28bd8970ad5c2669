"""Exact rounding onto a format's grid, and packing 4-bit codes two per byte.

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
  non-finite value is described in :func:`encode`.)
* Signed zero is kept; unsigned formats map negative values to 0.
* Two-phase rounding (TPR, Sun et al. section 4.2): ``phase="odd"`` rounds onto
  the grid ``sqrt(radix) * radix^k`` (``2 * 4^k`` for radix 4), defined as
  ``2 * q(x / 2)`` with ``q`` on the even grid; every scaling is by a power of
  two, so this is exact.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from lowbit._formats import Format, _code_table

__all__ = ["quantize", "encode", "decode", "Packed", "ROUNDINGS", "PHASES"]

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
    """Uniform float32 on the grid ``k 2^-24``, k in [0, 2^24): exact, 24 random bits."""
    bits = jax.random.bits(key, shape, jnp.uint32) >> jnp.uint32(8)
    return bits.astype(jnp.float32) * jnp.float32(2.0 ** -24)


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


def _check_rounding(rounding: str, key) -> None:
    if rounding not in ROUNDINGS:
        raise ValueError(f"rounding={rounding!r}: use one of {ROUNDINGS}")
    if rounding == "stochastic" and key is None:
        raise ValueError("rounding='stochastic' needs key=jax.random.key(...); "
                         "pass a PRNG key or use rounding='nearest'")


def _phase_shift(fmt: Format, phase: str) -> int:
    """Exponent (base 2) of the odd-phase grid shift: 1 for radix 4, 2 for radix 16."""
    if phase not in PHASES:
        raise ValueError(f"phase={phase!r}: use one of {PHASES}")
    if phase == "even":
        return 0
    if fmt.kind != "float" or fmt.log2_radix % 2:
        raise ValueError(
            f"phase='odd' needs a logarithmic format with radix 4 or 16 (two-phase rounding "
            f"shifts the grid by sqrt(radix)); {fmt.name} has kind={fmt.kind!r}, radix={fmt.radix}")
    return fmt.log2_radix // 2


def quantize(x: jax.Array, fmt: Format, *, scale: jax.Array | float | None = None,
             rounding: str = "nearest", key: jax.Array | None = None,
             phase: str = "even") -> jax.Array:
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
        y = y * jnp.float32(2.0 ** -shift)
    q = _round_to_grid(y, fmt, rounding, key)
    if shift:
        q = q * jnp.float32(2.0 ** shift)
    if s is not None:
        q = q * s
    return jnp.where(jnp.isfinite(xf), q, xf).astype(x.dtype)


# ---------------------------------------------------------------------------
# Codes and packing
# ---------------------------------------------------------------------------

@functools.lru_cache(maxsize=None)
def _positive_finite(fmt: Format) -> np.ndarray:
    """Finite non-negative magnitudes in code order (a prefix of the codes, ascending)."""
    table = _code_table(fmt)
    half = table[: 2 ** (fmt.bits - 1)]
    n = int(np.argmax(~np.isfinite(half))) if not np.all(np.isfinite(half)) else len(half)
    out = half[:n]
    assert np.all(np.diff(out) > 0)
    return out


def _nan_code(fmt: Format) -> int | None:
    if fmt.kind == "int" or fmt.nonfinite == "none":
        return None
    if fmt.nonfinite == "negzero":
        return 1 << (fmt.bits - 1)
    return 2 ** (fmt.bits - 1) - 1  # fn: S.1..1.1..1, ieee: a quiet NaN with all mantissa bits set


def _codes(x: jax.Array, fmt: Format, scale: jax.Array) -> jax.Array:
    """uint8 code of each element of ``x / scale`` after nearest rounding."""
    y = x.astype(jnp.float32) / scale
    mask = jnp.uint8(2 ** fmt.bits - 1)
    if fmt.kind == "int":
        # NaN has no integer code: it encodes as 0 (documented in ``encode``).
        y = jnp.where(jnp.isnan(y), 0.0, y)
        v = quantize(jnp.clip(y, -fmt.max_value, fmt.max_value), fmt).astype(jnp.int32)
        return v.astype(jnp.uint8) & mask  # two's complement for signed formats
    q = quantize(y, fmt)
    a = jnp.abs(q)
    table = jnp.asarray(_positive_finite(fmt))
    # Values without a code of their own saturate (inf when the format has no inf).
    mag = jnp.searchsorted(table, jnp.minimum(a, table[-1])).astype(jnp.uint8)
    sign = jnp.where((q < 0) & (mag > 0), jnp.uint8(1 << (fmt.bits - 1)), jnp.uint8(0))
    code = mag | sign
    if fmt.nonfinite == "ieee":
        inf_code = jnp.uint8((2 ** fmt.exponent_bits - 1) << fmt.mantissa_bits)
        code = jnp.where(jnp.isinf(q), inf_code | sign, code)
    nan = _nan_code(fmt)
    if nan is not None:
        code = jnp.where(jnp.isnan(q), jnp.uint8(nan), code)
    else:
        code = jnp.where(jnp.isnan(q), jnp.uint8(0), code)
    return code


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class Packed:
    """A quantized tensor: packed codes plus the scale they are relative to.

    Attributes:
      codes: uint8; formats of at most 4 bits hold two codes per byte (element
        ``2i`` in the low nibble, ``2i+1`` in the high nibble, of the flattened
        tensor), wider formats one code per byte.
      scale: float32 scalar; ``decode`` returns ``scale * value(code)``.
      shape: the original shape (static).
      fmt: the :class:`Format` of the codes (static).
    """

    codes: jax.Array
    scale: jax.Array
    shape: tuple = dataclasses.field(metadata=dict(static=True))
    fmt: Format = dataclasses.field(metadata=dict(static=True))

    @property
    def nbytes(self) -> int:
        """Bytes of storage: the codes plus the float32 scale."""
        return int(np.prod(self.codes.shape)) + 4


def encode(x: jax.Array, fmt: Format, scale: jax.Array | float | None = None) -> Packed:
    """Quantize ``x`` (nearest) and pack its codes: two 4-bit codes per uint8.

    ``decode(encode(x, fmt, s)) == quantize(x, fmt, scale=s)`` exactly for
    finite ``x`` and a power-of-two (or grid-preserving) ``s``. Zero of either
    sign encodes as code 0. Non-finite values: NaN encodes as the format's NaN
    code (RADIX4_FP4: ``0b1000``; E4M3/E5M2: ``S 1..1 1..1``); formats without a
    NaN code (integers, E2M1) store NaN as code 0. +-inf encodes as inf in
    E5M2 and saturates to +-largest elsewhere.

    Args:
      x: floating array, any shape.
      fmt: a quantized :class:`Format` (not FLOAT32).
      scale: positive scalar; ``None`` computes ``compute_scale(x, fmt)``.

    Returns:
      A :class:`Packed` with ``codes`` of shape ``(ceil(n / 2),)`` for 4-bit
      formats and ``(n,)`` otherwise, where ``n = x.size``.
    """
    _check_format(fmt)
    if fmt.is_float32:
        raise ValueError("encode: FLOAT32 has no codes; pick a quantized format such as INT4")
    from lowbit._scaling import compute_scale  # local import: _scaling imports this module
    x = jnp.asarray(x)
    s = compute_scale(x, fmt) if scale is None else jnp.asarray(scale, jnp.float32)
    if s.ndim != 0:
        raise ValueError(f"encode: scale must be a scalar, got shape {s.shape}")
    return Packed(codes=_pack(x, s, fmt=fmt), scale=s, shape=tuple(x.shape), fmt=fmt)


@functools.partial(jax.jit, static_argnames=("fmt",))
def _pack(x, s, *, fmt):
    codes = _codes(x.reshape(-1), fmt, s)
    if fmt.bits <= 4:
        if codes.shape[0] % 2:
            codes = jnp.concatenate([codes, jnp.zeros((1,), jnp.uint8)])
        pairs = codes.reshape(-1, 2)
        codes = pairs[:, 0] | (pairs[:, 1] << jnp.uint8(4))
    return codes


def decode(packed: Packed, dtype: Any = jnp.float32) -> jax.Array:
    """Unpack codes and return ``scale * value(code)`` with the original shape, in ``dtype``."""
    if not isinstance(packed, Packed):
        raise TypeError(f"decode expects a lowbit.Packed from lowbit.encode, got {type(packed).__name__}")
    return _unpack(packed.codes, packed.scale, fmt=packed.fmt, shape=packed.shape,
                   dtype=jnp.dtype(dtype))


@functools.partial(jax.jit, static_argnames=("fmt", "shape", "dtype"))
def _unpack(codes, scale, *, fmt, shape, dtype):
    if fmt.bits <= 4:
        codes = jnp.stack([codes & jnp.uint8(0xF), codes >> jnp.uint8(4)], axis=-1).reshape(-1)
    n = int(np.prod(shape, dtype=np.int64))
    codes = codes[:n]
    values = jnp.asarray(_code_table(fmt))[codes.astype(jnp.int32)]
    return (values * scale).reshape(shape).astype(dtype)
