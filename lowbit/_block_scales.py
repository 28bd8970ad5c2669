"""Block layout and scale arithmetic behind :func:`lowbit.quantize_blocks` and the codes.

An array is cut into 6-D blocks ``(P, Rb, br, Kb, bk, T)`` (:func:`_layout`,
:func:`_to_blocks`, :func:`_from_blocks`); :func:`_quantize_core` computes the
scales of each block and its element grid values, :func:`_dequantize_core`
multiplies them back. The scale rules (OCP MX v1.0 E8M0; E4M3/float32; NVFP4's
two levels) are stated in the docstring of :mod:`lowbit._blocks`.
"""

from __future__ import annotations

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np

from lowbit._formats import Format
from lowbit._rounding import _exponent, _pow2, quantize
from lowbit._scaled_formats import ExponentFormat, ScaledFormat

_F32_MAX = float(np.finfo(np.float32).max)


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
    perm: tuple | None  # None: in place
    P: int
    R: int
    K: int
    T: int
    dims: tuple  # (P, Rb, br, Kb, bk, T)
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
        c_axes, o_axes = rest, tuple[int, ...]()
    else:
        c_axes = _norm_axes(channel_axis, ndim, "channel_axis")
        if set(c_axes) & set(k_axes):
            raise ValueError(f"channel_axis={channel_axis!r} overlaps axis={axis!r}")
        o_axes = tuple(a for a in rest if a not in c_axes)
    size = lambda axs: int(np.prod([shape[a] for a in axs], dtype=np.int64))
    K = size(k_axes)
    in_place = not tiles and k_axes and k_axes == tuple(range(k_axes[0], k_axes[0] + len(k_axes)))
    if in_place:
        perm, P, R, T = None, 1, size(range(k_axes[0])), size(range(k_axes[-1] + 1, ndim))
    else:
        perm, P, R, T = o_axes + c_axes + k_axes, size(o_axes), size(c_axes), 1
    if fmt.granularity == "tensor":
        dims = (1, 1, R, 1, K, T)  # P == 1: only 2-D tiles split off outer axes
    elif fmt.granularity == "channel":
        dims = (P, R, 1, 1, K, T)
    else:
        assert fmt.block is not None  # granularity 'block' always carries its block shape
        n, b = fmt.block
        if fmt.partial_blocks == "error" and (K % n or R % b):
            raise ValueError(
                f"{fmt.name}: block {fmt.block_size} does not divide the blocked axes (contraction "
                f"length {K}, channel length {R}); pad the array or use partial_blocks='pad'"
            )
        dims = (P, -(-R // b), b, -(-K // n), n, T) if b > 1 else (P, R, 1, -(-K // n), n, T)
    return _Layout(tuple(shape), perm, P, R, K, T, dims, fmt.granularity == "tensor")


def _to_blocks(x, lay: _Layout):
    _p, rb, br, kb, bk, _t = lay.dims
    if lay.perm is None:
        x3 = jnp.pad(x.reshape(lay.R, lay.K, lay.T), ((0, 0), (0, kb * bk - lay.K), (0, 0)))
    else:
        x3 = jnp.transpose(x, lay.perm).reshape(lay.P, lay.R, lay.K)
        x3 = jnp.pad(x3, ((0, 0), (0, rb * br - lay.R), (0, kb * bk - lay.K)))
    return x3.reshape(lay.dims)


def _from_blocks(xb, lay: _Layout):
    p, rb, br, kb, bk, _t = lay.dims
    if lay.perm is None:
        return xb.reshape(lay.R, kb * bk, lay.T)[:, : lay.K, :].reshape(lay.shape)
    x3 = xb.reshape(p, rb * br, kb * bk)[:, : lay.R, : lay.K]
    x = x3.reshape([lay.shape[a] for a in lay.perm])
    return jnp.transpose(x, tuple(int(a) for a in np.argsort(lay.perm)))


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
    unit = tuple(i for i, d in enumerate(xb.shape) if d == 1 and i != 4)
    if unit:
        # The same arithmetic without the unit axes. XLA:CPU reduces over an axis followed
        # by a unit axis as a generic loop nest, about 50x slower than without it (a 1-D
        # block's T = 1); BENCHMARKS.md, "Block-scaled 4-bit step time".
        kept = tuple(i for i in range(6) if i not in unit)
        q, rep, t_dec, bad = _quantize_core(
            xb.reshape([xb.shape[i] for i in kept]),
            key,
            fmt=fmt,
            rounding=rounding,
            red=tuple(kept.index(i) for i in red if i in kept),
        )
        keep = tuple(1 if i in red else d for i, d in enumerate(xb.shape))
        return q.reshape(xb.shape), rep.reshape(keep), t_dec, bad.reshape(keep)
    xf = xb.astype(jnp.float32)
    amax = jnp.max(jnp.abs(xf), axis=red, keepdims=True)
    bad = ~jnp.isfinite(amax)
    sf, el = fmt.scale_format, fmt.element
    if isinstance(sf, ExponentFormat):
        e, bad = _e8m0_exponent(amax, fmt)
        y = _ldexp(xf, -e)
        t_enc = jnp.float32(fmt.prescale)
        if fmt.prescale != 1.0:
            y = y * t_enc
        rep = e
    else:
        if fmt.tensor_scale:
            t_enc = _tensor_encode(_finite_amax(amax), fmt)
            b = _round_scale(
                jnp.minimum(_div(amax, el.max_value) * t_enc, jnp.float32(_F32_MAX)), sf
            )
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
        if fmt.prescale != 1.0:
            v = v * t_dec
    elif fmt.tensor_scale:
        v = (q * rep) * t_dec  # q * rep is exact (E2M1 x E4M3); one rounding here
    else:
        v = q * rep
    return jnp.where(bad, jnp.float32(jnp.nan), v)


def _check_scaled(fmt) -> ScaledFormat:
    if not isinstance(fmt, ScaledFormat):
        raise TypeError(
            f"fmt={fmt!r}: expected a lowbit.ScaledFormat such as lowbit.MXFP4 or "
            "lowbit.NVFP4 (per-tensor formats go through lowbit.quantize)"
        )
    return fmt


def _check_x(x):
    x = jnp.asarray(x)
    if not jnp.issubdtype(x.dtype, jnp.floating):
        raise TypeError(f"need a floating array, got dtype {x.dtype}")
    return x
