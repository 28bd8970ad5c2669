"""Packing: a quantized tensor as 4-bit codes, two per byte, with its scale.

``encode`` rounds to the format's grid (:func:`lowbit.quantize`, nearest) and stores each
element's code; ``decode`` maps codes back through the format's code table
(``lowbit._formats``) and multiplies by the scale. Qwix/AQT keep the same split: a quantized
tensor is data (codes plus scale), separate from the rounding that produced it.

Imports ``_rounding`` and ``_scaling``, which import neither this module nor each other's
callers: the import graph of ``lowbit`` has no cycle.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from lowbit._formats import Format, _code_table
from lowbit._rounding import _check_format, quantize
from lowbit._scaling import compute_scale

__all__ = ["Packed", "encode", "decode"]


@functools.cache
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
    mask = jnp.uint8(2**fmt.bits - 1)
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
        inf_code = jnp.uint8((2**fmt.exponent_bits - 1) << fmt.mantissa_bits)
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
        raise TypeError(
            f"decode expects a lowbit.Packed from lowbit.encode, got {type(packed).__name__}"
        )
    return _unpack(
        packed.codes, packed.scale, fmt=packed.fmt, shape=packed.shape, dtype=jnp.dtype(dtype)
    )


@functools.partial(jax.jit, static_argnames=("fmt", "shape", "dtype"))
def _unpack(codes, scale, *, fmt, shape, dtype):
    if fmt.bits <= 4:
        codes = jnp.stack([codes & jnp.uint8(0xF), codes >> jnp.uint8(4)], axis=-1).reshape(-1)
    n = int(np.prod(shape, dtype=np.int64))
    codes = codes[:n]
    values = jnp.asarray(_code_table(fmt))[codes.astype(jnp.int32)]
    return (values * scale).reshape(shape).astype(dtype)
