"""Scale granularity as data: per-tensor, per-channel and block-scaled formats (MXFP4, NVFP4).

A :class:`ScaledFormat` pairs an element :class:`~lowbit.Format` with a rule
for its scales: one per tensor, one per channel (per output channel of a
weight, per row or token of an activation), or one per block of ``N``
elements along the contraction axis (optionally a 2-D ``N x B`` tile), each
scale stored in its own format: :data:`E8M0` (a power of two), E4M3, or
float32. :func:`quantize_blocks` is the fake-quantizer (values on the
grid, in ``x``'s dtype); :func:`encode_blocks` / :func:`decode_blocks` give
and read a :class:`BlockPacked`, codes that carry their scales.

Scale rules, following the published descriptions:

* E8M0 (OCP Microscaling Formats (MX) v1.0, section 6.3): ``X = 2^(floor(log2
  amax) - emax_elem)`` with ``emax_elem`` the exponent of the element format's
  largest normal (2 for E2M1), clamped below at ``2^-127``; a block whose
  amax is not finite gets the NaN scale ``0xFF`` and decodes to NaN (an
  infinite amax overflows the scale, as in the spec's reference code
  microsoft/microxcaling ``_shared_exponents``). Elements beyond the element
  format's largest value saturate (E2M1 has no inf or NaN). The exponent is
  read from the float's bits, never through ``log2``. With ``prescale`` (Tseng
  et al. 2025's 3/4) the elements are ``q(prescale * x / X)`` and decode to
  ``X * q / prescale``, the ``1 / prescale`` kept as the tensor decode scale.
* E4M3 or float32 scale without a tensor scale: ``s = amax / max_elem``
  rounded (nearest even) into the scale format; elements ``q(x / s)``.
* Two-level (``tensor_scale=True``; NVIDIA's NVFP4, as in Transformer Engine's
  reference quantizer): a float32 encode scale ``S = max_scale * max_elem /
  amax_tensor`` (448 * 6 / amax for NVFP4; 1 when amax is 0), block scales
  ``b = E4M3((amax_block / max_elem) * S)``, elements ``q(x * (1 / (b * (1 / S))))``,
  decoded as ``(q * b) * (1 / S)``. ``amax_tensor`` is taken over the blocks
  without NaN or inf; a block with a NaN or inf entry gets the NaN scale code and
  decodes to NaN (NVIDIA's description leaves this case open; we keep it
  visible, as the MX spec does).

A scale of zero (an all-zero block; an E4M3 block scale that underflows)
gives element codes 0. XLA:CPU flushes float32 subnormals to zero, so decoded
values below ``2^-126`` (only possible with the smallest E8M0 scales) read as
zero there.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from lowbit._block_scales import (
    _check_scaled,
    _check_x,
    _dequantize_core,
    _from_blocks,
    _layout,
    _ldexp,
    _quantize_core,
    _to_blocks,
)
from lowbit._formats import Format, _code_table
from lowbit._scaled_formats import ExponentFormat, ScaledFormat


def quantize_blocks(
    x: jax.Array,
    fmt: ScaledFormat,
    *,
    axis=-1,
    channel_axis=None,
    rounding: str = "nearest",
    key: jax.Array | None = None,
) -> jax.Array:
    """Values of ``x`` on a block-scaled grid (fake quantization), in ``x``'s dtype.

    Equal to ``decode_blocks(encode_blocks(x, fmt, axis=...))`` for nearest
    rounding. See the module docstring for the scale rules (OCP MX v1.0;
    NVIDIA NVFP4).

    Args:
      x: floating array, any shape.
      fmt: a :class:`ScaledFormat` (:data:`MXFP4`, :data:`NVFP4`, ...).
      axis: the contraction axis (or axes, flattened in order) that blocks run
        along; per-channel scales reduce over it.
      channel_axis: for 2-D tiles ``(N, B)``: the axes the ``B`` side runs along
        (default: every axis not in ``axis``); remaining axes index separate tiles.
      rounding: ``"nearest"`` (ties to even) or ``"stochastic"`` (needs ``key``)
        for the elements; scales always round to nearest.
      key: PRNG key for stochastic rounding.

    Returns:
      An array of ``x``'s shape and dtype. Blocks holding NaN or inf are NaN.
    """
    _check_scaled(fmt)
    x = _check_x(x)
    if rounding == "stochastic" and key is None:
        raise ValueError("rounding='stochastic' needs key=jax.random.key(...)")
    if x.size == 0:
        return x
    lay = _layout(x.shape, fmt, axis, channel_axis)
    q, rep, t, bad = _quantize_core(
        _to_blocks(x, lay), key, fmt=fmt, rounding=rounding, red=lay.reduce_axes
    )
    return _from_blocks(_dequantize_core(q, rep, t, bad, fmt), lay).astype(x.dtype)


def quantize_blocks_split(
    x, fmt: ScaledFormat, *, axis=-1, channel_axis=None, rounding: str = "nearest", key=None
):
    """``(v, t)`` with ``quantize_blocks(...) == v * t``: ``t`` the float32 tensor decode scale.

    For two-level formats ``v = q * b`` is exact in float32 *and* bfloat16 (E2M1 times
    E4M3 has 6 significant bits), so a GEMM on ``v`` rescaled once by the product of
    the operands' ``t`` is what NVFP4 hardware computes; ``t = 1`` for other formats.
    """
    x = _check_x(x)
    if not fmt.split_scale:
        return quantize_blocks(
            x, fmt, axis=axis, channel_axis=channel_axis, rounding=rounding, key=key
        ), jnp.float32(1.0)
    lay = _layout(x.shape, fmt, axis, channel_axis)
    q, rep, t, bad = _quantize_core(
        _to_blocks(x, lay), key, fmt=fmt, rounding=rounding, red=lay.reduce_axes
    )
    v = _ldexp(q, rep) if isinstance(fmt.scale_format, ExponentFormat) else q * rep
    v = jnp.where(bad, jnp.float32(jnp.nan), v)
    return _from_blocks(v, lay).astype(x.dtype), t


# ---------------------------------------------------------------------------
# Codes
# ---------------------------------------------------------------------------


@functools.cache
def _magnitudes(fmt: Format) -> np.ndarray:
    """Finite non-negative values of a float format, in code order (ascending)."""
    half = _code_table(fmt)[: 2 ** (fmt.bits - 1)]
    finite = np.isfinite(half)
    return half if finite.all() else half[: int(np.argmin(finite))]


def _value_codes(v, fmt: Format):
    """uint8 codes of values already on ``fmt``'s grid (zero of either sign -> code 0)."""
    if fmt.kind == "int":
        return v.astype(jnp.int32).astype(jnp.uint8) & jnp.uint8(2**fmt.bits - 1)
    mags = jnp.asarray(_magnitudes(fmt))
    mag = jnp.searchsorted(mags, jnp.abs(v)).astype(jnp.uint8)
    sign = jnp.where((v < 0) & (mag > 0), jnp.uint8(1 << (fmt.bits - 1)), jnp.uint8(0))
    return mag | sign


def _nan_code(sf) -> int:
    if isinstance(sf, ExponentFormat):
        return sf.nan_code
    if sf.nonfinite == "fn":
        return 2 ** (sf.bits - 1) - 1
    if sf.nonfinite == "ieee":
        return 2 ** (sf.bits - 1) - 1
    raise ValueError(f"scale format {sf.name} has no NaN code")


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class BlockPacked:
    """A block-scaled tensor: element codes with their scales.

    Attributes:
      codes: uint8 element codes in block order ``(P, Rb, br, Kb, bk, T)``
        flattened, two per byte for formats of at most 4 bits (low nibble
        first); for 1-D blocks along the last axis that is row-major order.
      scales: one scale per block, shape ``(P, Rb, Kb, T)`` (``T = 1`` unless
        the blocks run along a leading axis): uint8 codes for E8M0 and narrow
        float scale formats, float32 values for FLOAT32.
      tensor_scale: float32 scalar: the per-tensor *decode* scale (1 / S; 1.0
        when the format has none).
      shape, fmt, axis, channel_axis: static layout (the original shape and axes).
    """

    codes: jax.Array
    scales: jax.Array
    tensor_scale: jax.Array
    shape: tuple = dataclasses.field(metadata=dict(static=True))
    fmt: ScaledFormat = dataclasses.field(metadata=dict(static=True))
    axis: Any = dataclasses.field(metadata=dict(static=True))
    channel_axis: Any = dataclasses.field(metadata=dict(static=True))

    @property
    def nbytes(self) -> int:
        """Bytes of storage: codes, scales and the tensor scale."""
        return int(
            self.codes.size * self.codes.dtype.itemsize
            + self.scales.size * self.scales.dtype.itemsize
            + 4
        )


def encode_blocks(x: jax.Array, fmt: ScaledFormat, *, axis=-1, channel_axis=None) -> BlockPacked:
    """Quantize ``x`` (nearest) onto ``fmt`` and return its codes with their scales.

    Partial last blocks are stored padded with zero codes. A block holding NaN
    or inf gets the scale format's NaN code (E8M0 ``0xFF``, E4M3 ``0x7F``) and
    element codes 0; FLOAT32 scales store NaN.
    """
    _check_scaled(fmt)
    x = _check_x(x)
    lay = _layout(x.shape, fmt, axis, channel_axis)
    q, rep, t, bad = _quantize_core(
        _to_blocks(x, lay), None, fmt=fmt, rounding="nearest", red=lay.reduce_axes
    )
    codes, scales, t_dec = _pack(q, rep, t, bad, fmt=fmt)
    return BlockPacked(
        codes, scales, t_dec, shape=tuple(x.shape), fmt=fmt, axis=axis, channel_axis=channel_axis
    )


@functools.partial(jax.jit, static_argnames=("fmt",))
def _pack(q, rep, t_dec, bad, *, fmt):
    codes = _value_codes(q, fmt.element).reshape(-1)
    if fmt.element.bits <= 4:
        if codes.shape[0] % 2:
            codes = jnp.concatenate([codes, jnp.zeros((1,), jnp.uint8)])
        pairs = codes.reshape(-1, 2)
        codes = pairs[:, 0] | (pairs[:, 1] << jnp.uint8(4))
    sf = fmt.scale_format
    bad = bad[:, :, 0, :, 0, :]
    rep = rep[:, :, 0, :, 0, :]
    if isinstance(sf, ExponentFormat):
        scales = (rep + sf.bias).astype(jnp.uint8)
        scales = jnp.where(bad, jnp.uint8(sf.nan_code), scales)
    elif sf.is_float32:
        scales = jnp.where(bad, jnp.float32(jnp.nan), rep)
    else:
        scales = jnp.where(bad, jnp.uint8(_nan_code(sf)), _value_codes(rep, sf))
    return codes, scales, t_dec


def decode_blocks(packed: BlockPacked, dtype: Any = jnp.float32) -> jax.Array:
    """``value(code) * scale`` for every element, in the original shape and ``dtype``."""
    if not isinstance(packed, BlockPacked):
        raise TypeError(
            f"decode_blocks expects a lowbit.BlockPacked from lowbit.encode_blocks, "
            f"got {type(packed).__name__}"
        )
    lay = _layout(packed.shape, packed.fmt, packed.axis, packed.channel_axis)
    return _unpack(
        packed.codes,
        packed.scales,
        packed.tensor_scale,
        lay=lay,
        fmt=packed.fmt,
        dtype=jnp.dtype(dtype),
    )


@functools.partial(jax.jit, static_argnames=("lay", "fmt", "dtype"))
def _unpack(codes, scales, t_dec, *, lay, fmt, dtype):
    el, sf = fmt.element, fmt.scale_format
    if el.bits <= 4:
        codes = jnp.stack([codes & jnp.uint8(0xF), codes >> jnp.uint8(4)], axis=-1).reshape(-1)
    n = int(np.prod(lay.dims))
    q = jnp.asarray(_code_table(el))[codes[:n].astype(jnp.int32)].reshape(lay.dims)
    p, rb, kb, t = lay.scale_shape
    if isinstance(sf, ExponentFormat):
        bad = scales == sf.nan_code
        rep = scales.astype(jnp.int32) - sf.bias
    elif sf.is_float32:
        bad = jnp.isnan(scales)
        rep = scales
    else:
        rep = jnp.asarray(_code_table(sf))[scales.astype(jnp.int32)]
        bad = jnp.isnan(rep)
    rep = rep.reshape(p, rb, 1, kb, 1, t)
    bad = bad.reshape(p, rb, 1, kb, 1, t)
    v = _dequantize_core(q, rep, t_dec, bad, fmt)
    return _from_blocks(v, lay).astype(dtype)
