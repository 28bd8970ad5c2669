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
  read from the float's bits, never through ``log2``.
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
import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from lowbit._formats import E2M1, E4M3, FLOAT32, Format, _code_table
from lowbit._rounding import _exponent, _pow2, quantize

__all__ = ["ExponentFormat", "E8M0", "ScaledFormat", "MXFP4", "NVFP4", "BlockPacked",
           "quantize_blocks", "encode_blocks", "decode_blocks", "GRANULARITIES"]

GRANULARITIES = ("tensor", "channel", "block")
_PARTIAL = ("pad", "error")
_F32_MAX = float(np.finfo(np.float32).max)


@dataclasses.dataclass(frozen=True, kw_only=True)
class ExponentFormat:
    """An unsigned exponent-only scale format: code ``c`` is ``2^(c - bias)``, the top code NaN.

    OCP MX v1.0's E8M0 (``bits=8, bias=127``): scales ``2^-127 .. 2^127``, code
    ``0xFF`` NaN, no zero and no sign.
    """

    name: str
    bits: int = 8
    bias: int = 127

    def __post_init__(self):
        if not (isinstance(self.bits, int) and 2 <= self.bits <= 8):
            raise ValueError(f"ExponentFormat(bits={self.bits!r}): need an int in 2..8")
        lo, hi = -self.bias, 2 ** self.bits - 2 - self.bias
        if lo < -127 or hi > 127:
            raise ValueError(f"ExponentFormat(bias={self.bias}): exponents {lo}..{hi} must lie "
                             "in -127..127 (float32's range)")

    @property
    def min_exponent(self) -> int:
        return -self.bias

    @property
    def max_exponent(self) -> int:
        return 2 ** self.bits - 2 - self.bias

    @property
    def nan_code(self) -> int:
        return 2 ** self.bits - 1

    def values(self) -> np.ndarray:
        """All code values in float64 (exact; 2^-127 is below float32's normals), NaN last."""
        out = 2.0 ** (np.arange(2 ** self.bits, dtype=np.float64) - self.bias)
        out[-1] = np.nan
        return out


#: OCP MX v1.0 shared scale: 8-bit biased exponent, 2^-127..2^127, 0xFF = NaN.
E8M0 = ExponentFormat(name="E8M0")


def _scale_range_ok(fmt: Format) -> bool:
    return fmt.kind == "float" and fmt.max_value / fmt.min_value >= 2.0 ** 16


@dataclasses.dataclass(frozen=True, kw_only=True)
class ScaledFormat:
    """An element format plus how its scales are laid out and stored.

    Attributes:
      name: label for reprs and reports.
      element: the element :class:`Format` (E2M1, INT4, E4M3, ...; not FLOAT32).
      granularity: ``"tensor"`` (one scale), ``"channel"`` (one scale per index
        of the non-contraction axes: per output channel of a weight, per row
        of an activation) or ``"block"``.
      block_size: for ``"block"``: ``N`` (blocks of ``N`` consecutive elements
        along the contraction axis) or ``(N, B)`` (2-D tiles: ``N`` along the
        contraction axis times ``B`` along the channel axis, so a weight and
        its transpose share every block, as in NVIDIA's 16x16 weight tiles).
      scale_format: :data:`E8M0`, a float :class:`Format` with at least 2^16
        of dynamic range (E4M3, E5M2), or :data:`lowbit.FLOAT32`.
      tensor_scale: add NVFP4's second-level float32 per-tensor scale, so the
        narrow block scales stay in range; needs a narrow float scale format.
      partial_blocks: ``"pad"`` (a last block shorter than ``N`` is scaled on
        its own elements, as if zero-padded) or ``"error"``.

    Raises:
      TypeError / ValueError: at construction, naming the field and the fix.
    """

    name: str
    element: Format
    granularity: str = "block"
    block_size: Any = 32
    scale_format: Any = E8M0
    tensor_scale: bool = False
    partial_blocks: str = "pad"

    def __post_init__(self):
        if not isinstance(self.element, Format) or self.element.is_float32:
            raise TypeError(f"ScaledFormat(element={self.element!r}): need a quantized "
                            "lowbit.Format such as lowbit.E2M1 or lowbit.INT4")
        if self.granularity not in GRANULARITIES:
            raise ValueError(f"ScaledFormat(granularity={self.granularity!r}): use one of "
                             f"{GRANULARITIES}")
        if self.granularity == "block":
            bs = self.block_size
            bs = (bs,) if isinstance(bs, int) and not isinstance(bs, bool) else bs
            if (not isinstance(bs, tuple) or len(bs) not in (1, 2)
                    or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 1
                               for v in bs)):
                raise ValueError(f"ScaledFormat(block_size={self.block_size!r}): need a positive "
                                 "int N or a pair (N, B) of positive ints")
        if self.partial_blocks not in _PARTIAL:
            raise ValueError(f"ScaledFormat(partial_blocks={self.partial_blocks!r}): use one of "
                             f"{_PARTIAL}")
        sf = self.scale_format
        if isinstance(sf, ExponentFormat):
            pass
        elif isinstance(sf, Format):
            if not (sf.is_float32 or _scale_range_ok(sf)):
                raise ValueError(
                    f"ScaledFormat(scale_format={sf.name}): it cannot hold the range of scales "
                    f"(kind={sf.kind!r}, max/min = {sf.max_value / sf.min_value:g} < 2^16); use "
                    "lowbit.E8M0, lowbit.E4M3 or lowbit.FLOAT32")
        else:
            raise TypeError(f"ScaledFormat(scale_format={sf!r}): need lowbit.E8M0, lowbit.E4M3 "
                            "(a lowbit.Format) or lowbit.FLOAT32")
        if not isinstance(self.tensor_scale, bool):
            raise TypeError(f"ScaledFormat(tensor_scale={self.tensor_scale!r}): need a bool")
        if self.tensor_scale and not (isinstance(sf, Format) and not sf.is_float32):
            raise ValueError(f"ScaledFormat(tensor_scale=True) needs a narrow float scale format "
                             f"such as lowbit.E4M3 (got {getattr(sf, 'name', sf)}): a power-of-two "
                             "or float32 scale already covers float32's range")

    @property
    def block(self) -> tuple[int, int] | None:
        """``(N, B)`` for block granularity (``B = 1`` for 1-D blocks), else ``None``."""
        if self.granularity != "block":
            return None
        bs = self.block_size
        return (bs, 1) if isinstance(bs, int) else (bs[0], bs[1] if len(bs) == 2 else 1)

    @property
    def bits_per_element(self) -> float:
        """Average storage per element at full blocks (codes plus block scales)."""
        n = self.block
        sbits = 32 if (isinstance(self.scale_format, Format)
                       and self.scale_format.is_float32) else self.scale_format.bits
        return self.element.bits + (sbits / (n[0] * n[1]) if n else 0.0)


#: OCP MX v1.0 MXFP4: E2M1 elements, one E8M0 power-of-two scale per 32 elements.
MXFP4 = ScaledFormat(name="MXFP4", element=E2M1, block_size=32, scale_format=E8M0)
#: NVIDIA NVFP4: E2M1 elements, an E4M3 scale per 16 elements, and a float32 per-tensor scale.
NVFP4 = ScaledFormat(name="NVFP4", element=E2M1, block_size=16, scale_format=E4M3,
                     tensor_scale=True)


# ---------------------------------------------------------------------------
# Layout: (outer, channel, contraction) -> 5-D blocks
# ---------------------------------------------------------------------------

def _norm_axes(axes, ndim: int, name: str) -> tuple[int, ...]:
    axes = (axes,) if isinstance(axes, int) else tuple(axes)
    out = []
    for a in axes:
        if not isinstance(a, (int, np.integer)) or not -ndim <= a < max(ndim, 1):
            raise ValueError(f"{name}={axes!r}: out of range for an array with {ndim} axes")
        out.append(int(a) % ndim)
    if len(set(out)) != len(out):
        raise ValueError(f"{name}={axes!r}: repeated axis")
    return tuple(out)


@dataclasses.dataclass(frozen=True)
class _Layout:
    """How an array maps onto 6-D blocks ``(P, Rb, br, Kb, bk, T)`` (static, hashable).

    Scales reduce over ``br`` and ``bk`` (and ``T`` for one per-tensor scale).
    When the contraction axes are consecutive and blocks are 1-D, the array is
    only reshaped, ``(pre, K, post)`` with ``T = post``: no transpose, which
    matters for blocks along a leading batch axis (the weight gradient's).
    Otherwise ``perm`` moves (outer, channel, contraction) axes last, ``T = 1``.
    """

    shape: tuple
    perm: tuple | None   # None: in place
    P: int
    R: int
    K: int
    T: int
    dims: tuple          # (P, Rb, br, Kb, bk, T)
    tensor: bool

    @property
    def reduce_axes(self) -> tuple:
        return (2, 4, 5) if self.tensor else (2, 4)

    @property
    def scale_shape(self) -> tuple:
        p, rb, _, kb, _, t = self.dims
        return (p, rb, kb, 1 if self.tensor else t)


def _layout(shape, fmt: ScaledFormat, axis, channel_axis) -> _Layout:
    ndim = len(shape)
    k_axes = _norm_axes(axis, ndim, "axis") if ndim else ()
    rest = tuple(a for a in range(ndim) if a not in k_axes)
    tiles = fmt.block is not None and fmt.block[1] > 1
    if channel_axis is None or not tiles:
        c_axes, o_axes = rest, ()
    else:
        c_axes = _norm_axes(channel_axis, ndim, "channel_axis")
        if set(c_axes) & set(k_axes):
            raise ValueError(f"channel_axis={channel_axis!r} overlaps axis={axis!r}")
        o_axes = tuple(a for a in rest if a not in c_axes)
    size = lambda axs: int(np.prod([shape[a] for a in axs], dtype=np.int64))  # noqa: E731
    K = size(k_axes)
    in_place = (not tiles and k_axes
                and k_axes == tuple(range(k_axes[0], k_axes[0] + len(k_axes))))
    if in_place:
        perm, P, R, T = None, 1, size(range(k_axes[0])), size(range(k_axes[-1] + 1, ndim))
    else:
        perm, P, R, T = o_axes + c_axes + k_axes, size(o_axes), size(c_axes), 1
    if fmt.granularity == "tensor":
        dims = (1, 1, R, 1, K, T)  # P == 1: only 2-D tiles split off outer axes
    elif fmt.granularity == "channel":
        dims = (P, R, 1, 1, K, T)
    else:
        n, b = fmt.block
        if fmt.partial_blocks == "error" and (K % n or R % b):
            raise ValueError(
                f"{fmt.name}: block {fmt.block_size} does not divide the blocked axes (contraction "
                f"length {K}, channel length {R}); pad the array or use partial_blocks='pad'")
        dims = (P, -(-R // b), b, -(-K // n), n, T) if b > 1 else (P, R, 1, -(-K // n), n, T)
    return _Layout(tuple(shape), perm, P, R, K, T, dims, fmt.granularity == "tensor")


def _to_blocks(x, lay: _Layout):
    p, rb, br, kb, bk, t = lay.dims
    if lay.perm is None:
        x3 = jnp.pad(x.reshape(lay.R, lay.K, lay.T), ((0, 0), (0, kb * bk - lay.K), (0, 0)))
    else:
        x3 = jnp.transpose(x, lay.perm).reshape(lay.P, lay.R, lay.K)
        x3 = jnp.pad(x3, ((0, 0), (0, rb * br - lay.R), (0, kb * bk - lay.K)))
    return x3.reshape(lay.dims)


def _from_blocks(xb, lay: _Layout):
    p, rb, br, kb, bk, t = lay.dims
    if lay.perm is None:
        return xb.reshape(lay.R, kb * bk, lay.T)[:, :lay.K, :].reshape(lay.shape)
    x3 = xb.reshape(p, rb * br, kb * bk)[:, :lay.R, :lay.K]
    x = x3.reshape([lay.shape[a] for a in lay.perm])
    return jnp.transpose(x, np.argsort(lay.perm))


# ---------------------------------------------------------------------------
# Scales
# ---------------------------------------------------------------------------

def _ldexp(v, e):
    """``v * 2^e`` for int32 ``e`` in [-254, 252], exact unless the result leaves float32's normals."""
    h = e >> 1
    return v * _pow2(h) * _pow2(e - h)


def _div(a, b):
    """``a / b`` correctly rounded, ``b`` broadcastable to ``a``.

    XLA:CPU compiles a division by a broadcast value into a multiplication by
    its reciprocal (one ulp off for about a third of float32 inputs); dividing
    by a materialized array of ``a``'s shape keeps IEEE division.
    """
    b = jnp.broadcast_to(jnp.asarray(b, jnp.float32), a.shape)
    return a / jax.lax.optimization_barrier(b)


def _emax(fmt: Format) -> int:
    return math.frexp(fmt.max_value)[1] - 1


def _e8m0_exponent(amax, fmt: ScaledFormat):
    """Shared exponent (int32) and a NaN mask, per OCP MX v1.0 section 6.3."""
    sf = fmt.scale_format
    e = _exponent(amax) - _emax(fmt.element)  # floor(log2 amax): exact from the bits
    e = jnp.where(amax > 0, e, sf.min_exponent)
    bad = ~jnp.isfinite(amax) | (e > sf.max_exponent)
    return jnp.clip(e, sf.min_exponent, sf.max_exponent), bad


def _round_scale(v, sf: Format):
    """A float scale rounded (nearest even, saturating) into ``sf``; float32 passes through."""
    return v if sf.is_float32 else quantize(v, sf)


def _tensor_encode(amax_t, fmt: ScaledFormat):
    """NVFP4's float32 encode scale ``max_scale * max_elem / amax`` (1 when degenerate)."""
    s = jnp.float32(fmt.scale_format.max_value * fmt.element.max_value) / amax_t
    s = jnp.minimum(s, jnp.float32(_F32_MAX))
    return jnp.where((amax_t > 0) & jnp.isfinite(amax_t) & (s > 0), s, jnp.float32(1.0))


def _finite_amax(amax):
    """Tensor amax from the block amaxes, skipping blocks that hold NaN or inf."""
    return jnp.max(jnp.where(jnp.isfinite(amax), amax, 0.0))


@functools.partial(jax.jit, static_argnames=("fmt", "rounding", "red"))
def _quantize_core(xb, key, *, fmt: ScaledFormat, rounding: str, red: tuple):
    """Blocks -> (element grid values q, scale repr, tensor decode scale, NaN-block mask).

    The scale repr is the int32 shared exponent for E8M0 and the float32 block
    scale otherwise; ``q`` has the block shape, unscaled.
    """
    xf = xb.astype(jnp.float32)
    amax = jnp.max(jnp.abs(xf), axis=red, keepdims=True)
    bad = ~jnp.isfinite(amax)
    sf, el = fmt.scale_format, fmt.element
    if isinstance(sf, ExponentFormat):
        e, bad = _e8m0_exponent(amax, fmt)
        y = _ldexp(xf, -e)
        rep, t_enc = e, jnp.float32(1.0)
    else:
        if fmt.tensor_scale:
            t_enc = _tensor_encode(_finite_amax(amax), fmt)
            b = _round_scale(jnp.minimum(_div(amax, el.max_value) * t_enc,
                                         jnp.float32(_F32_MAX)), sf)
            enc = jnp.minimum(1.0 / (b * (1.0 / t_enc)), jnp.float32(_F32_MAX))
            y = xf * enc
        else:
            t_enc = jnp.float32(1.0)
            b = _round_scale(_div(amax, el.max_value), sf)
            y = _div(xf, jnp.where(b > 0, b, 1.0))
        y = jnp.where(b > 0, y, 0.0)
        rep = b
    y = jnp.where(bad, 0.0, y)
    q = quantize(y, el, rounding=rounding, key=key)
    return q, rep, (1.0 / t_enc).astype(jnp.float32), bad


def _dequantize_core(q, rep, t_dec, bad, fmt: ScaledFormat):
    if isinstance(fmt.scale_format, ExponentFormat):
        v = _ldexp(q, rep)
    elif fmt.tensor_scale:
        v = (q * rep) * t_dec  # q * rep is exact (E2M1 x E4M3); one rounding here
    else:
        v = q * rep
    return jnp.where(bad, jnp.float32(jnp.nan), v)


def _check_scaled(fmt) -> ScaledFormat:
    if not isinstance(fmt, ScaledFormat):
        raise TypeError(f"fmt={fmt!r}: expected a lowbit.ScaledFormat such as lowbit.MXFP4 or "
                        "lowbit.NVFP4 (per-tensor formats go through lowbit.quantize)")
    return fmt


def _check_x(x):
    x = jnp.asarray(x)
    if not jnp.issubdtype(x.dtype, jnp.floating):
        raise TypeError(f"need a floating array, got dtype {x.dtype}")
    return x


def quantize_blocks(x: jax.Array, fmt: ScaledFormat, *, axis=-1, channel_axis=None,
                    rounding: str = "nearest", key: jax.Array | None = None) -> jax.Array:
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
    q, rep, t, bad = _quantize_core(_to_blocks(x, lay), key, fmt=fmt, rounding=rounding,
                                   red=lay.reduce_axes)
    return _from_blocks(_dequantize_core(q, rep, t, bad, fmt), lay).astype(x.dtype)


def quantize_blocks_split(x, fmt: ScaledFormat, *, axis=-1, channel_axis=None,
                          rounding: str = "nearest", key=None):
    """``(v, t)`` with ``quantize_blocks(...) == v * t``: ``t`` the float32 tensor decode scale.

    For two-level formats ``v = q * b`` is exact in float32 *and* bfloat16 (E2M1 times
    E4M3 has 6 significant bits), so a GEMM on ``v`` rescaled once by the product of
    the operands' ``t`` is what NVFP4 hardware computes; ``t = 1`` for other formats.
    """
    x = _check_x(x)
    if not fmt.tensor_scale:
        return quantize_blocks(x, fmt, axis=axis, channel_axis=channel_axis, rounding=rounding,
                               key=key), jnp.float32(1.0)
    lay = _layout(x.shape, fmt, axis, channel_axis)
    q, rep, t, bad = _quantize_core(_to_blocks(x, lay), key, fmt=fmt, rounding=rounding,
                                   red=lay.reduce_axes)
    v = jnp.where(bad, jnp.float32(jnp.nan), q * rep)
    return _from_blocks(v, lay).astype(x.dtype), t


# ---------------------------------------------------------------------------
# Codes
# ---------------------------------------------------------------------------

@functools.lru_cache(maxsize=None)
def _magnitudes(fmt: Format) -> np.ndarray:
    """Finite non-negative values of a float format, in code order (ascending)."""
    half = _code_table(fmt)[: 2 ** (fmt.bits - 1)]
    finite = np.isfinite(half)
    return half if finite.all() else half[: int(np.argmin(finite))]


def _value_codes(v, fmt: Format):
    """uint8 codes of values already on ``fmt``'s grid (zero of either sign -> code 0)."""
    if fmt.kind == "int":
        return v.astype(jnp.int32).astype(jnp.uint8) & jnp.uint8(2 ** fmt.bits - 1)
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
        return int(self.codes.size * self.codes.dtype.itemsize
                   + self.scales.size * self.scales.dtype.itemsize + 4)


def encode_blocks(x: jax.Array, fmt: ScaledFormat, *, axis=-1, channel_axis=None) -> BlockPacked:
    """Quantize ``x`` (nearest) onto ``fmt`` and return its codes with their scales.

    Partial last blocks are stored padded with zero codes. A block holding NaN
    or inf gets the scale format's NaN code (E8M0 ``0xFF``, E4M3 ``0x7F``) and
    element codes 0; FLOAT32 scales store NaN.
    """
    _check_scaled(fmt)
    x = _check_x(x)
    lay = _layout(x.shape, fmt, axis, channel_axis)
    q, rep, t, bad = _quantize_core(_to_blocks(x, lay), None, fmt=fmt, rounding="nearest",
                                   red=lay.reduce_axes)
    return BlockPacked(*_pack(q, rep, t, bad, fmt=fmt), shape=tuple(x.shape), fmt=fmt,
                       axis=axis, channel_axis=channel_axis)


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
        raise TypeError(f"decode_blocks expects a lowbit.BlockPacked from lowbit.encode_blocks, "
                        f"got {type(packed).__name__}")
    lay = _layout(packed.shape, packed.fmt, packed.axis, packed.channel_axis)
    return _unpack(packed.codes, packed.scales, packed.tensor_scale, lay=lay, fmt=packed.fmt,
                   dtype=jnp.dtype(dtype))


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
