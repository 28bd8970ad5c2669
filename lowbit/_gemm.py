"""Per-GEMM-role quantization: forward, input gradient and weight gradient, each its own config.

For ``y = A W`` with incoming gradient ``G`` the three GEMMs of a layer are

* forward          ``y  = Q_f(A) Q_f(W)``         operands (lhs, rhs) = (A, W)
* input gradient   ``dA = Q_d(G) Q_d(W)^T``       operands (lhs, rhs) = (G, W)
* weight gradient  ``dW = Q_w(A)^T Q_w(G)``       operands (lhs, rhs) = (A, G)

and a :class:`GemmConfig` says how each quantizes its two operands. Block
formats (:class:`lowbit.ScaledFormat`) run their blocks along *that* GEMM's
contraction axis: the features for the forward GEMM, the output features for
the input gradient, the batch (token) axis for the weight gradient, as
block-scaled hardware requires (NVIDIA, "Pretraining Large Language Models
with NVFP4", 2025, section 4; OCP MX v1.0). 2-D weight tiles give the same
quantized ``W`` in the forward and input-gradient GEMMs.

Autodiff follows :mod:`lowbit._dot`: a ``jax.custom_jvp`` whose tangent is
the straight-through derivative ``op(dA, Q_f(W)) + op(Q_f(A), dW)``, each term
wrapped in ``linear_call`` with a custom transpose that runs the role's own
GEMM. ``jax.jvp`` therefore returns the exact STE directional derivative of
the forward pass, and ``jax.grad`` runs the configured backward GEMMs.

The random Hadamard transform (``GemmConfig(hadamard=16)``, NVIDIA 2025,
section 4.2) multiplies both weight-gradient operands along the contraction
(batch) axis by ``H D`` (``H`` the normalized 16x16 Hadamard matrix, ``D`` a
fixed random sign diagonal from the config seed) in chunks of 16, zero-padding
that axis. ``(H D)^T (H D) = I``, so without quantization the product is
unchanged; with it, outliers are spread across each chunk before the
block scales are chosen.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.custom_derivatives import SymbolicZero, linear_call

from bbcore import register_linear_call_batching
from lowbit._blocks import quantize_blocks_split
from lowbit._formats import FLOAT32, Format
from lowbit._rounding import ROUNDINGS, quantize
from lowbit._scaled_formats import ScaledFormat
from lowbit._scaling import compute_scale

__all__ = ["GemmConfig", "ROLES"]

ROLES = ("forward", "input_gradient", "weight_gradient")


@dataclasses.dataclass(frozen=True, kw_only=True)
class GemmConfig:
    """How one of a layer's three GEMMs quantizes its two operands.

    Attributes:
      lhs, rhs: a :class:`lowbit.Format` (per-tensor power-of-two scale, the
        GradScale rule of :func:`lowbit.compute_scale`; FLOAT32 = no
        quantization) or a :class:`lowbit.ScaledFormat` (per-channel or block
        scales along this GEMM's contraction axis). Operands are (A, W) for
        the forward GEMM, (G, W) for the input gradient, (A, G) for the weight
        gradient.
      lhs_rounding, rhs_rounding: ``"nearest"`` or ``"stochastic"`` (the key is
        the config seed folded with a hash of the operand's bits, so none is
        threaded through the model).
      hadamard: size of the random Hadamard transform applied to both operands
        along the contraction axis (a power of two; 0 = off). Only the weight
        gradient takes one (NVIDIA 2025 apply it to the Wgrad inputs only).

    Raises:
      TypeError / ValueError: at construction, naming the field and the fix.
    """

    lhs: Any = FLOAT32
    rhs: Any = FLOAT32
    lhs_rounding: str = "nearest"
    rhs_rounding: str = "nearest"
    hadamard: int = 0

    def __post_init__(self):
        for name in ("lhs", "rhs"):
            v = getattr(self, name)
            if not isinstance(v, (Format, ScaledFormat)):
                raise TypeError(
                    f"GemmConfig({name}={v!r}): need a lowbit.Format (e.g. lowbit.INT4, "
                    "lowbit.FLOAT32) or a lowbit.ScaledFormat (e.g. lowbit.NVFP4)"
                )
        for name in ("lhs_rounding", "rhs_rounding"):
            if getattr(self, name) not in ROUNDINGS:
                raise ValueError(
                    f"GemmConfig({name}={getattr(self, name)!r}): use one of {ROUNDINGS}"
                )
        h = self.hadamard
        if not (
            isinstance(h, int)
            and not isinstance(h, bool)
            and h >= 0
            and (h == 0 or (h >= 2 and h & (h - 1) == 0 and h <= 256))
        ):
            raise ValueError(
                f"GemmConfig(hadamard={h!r}): need 0 (off) or a power of two in "
                "2..256 (NVIDIA 2025 use 16)"
            )


def check_roles(forward, input_gradient, weight_gradient, activation_scaling: str) -> bool:
    """Validate ``QuantConfig``'s role fields; True when they are set."""
    roles = (forward, input_gradient, weight_gradient)
    if all(r is None for r in roles):
        return False
    for name, r in zip(ROLES, roles):
        if not isinstance(r, GemmConfig):
            raise TypeError(
                f"QuantConfig({name}={r!r}): when any of forward / input_gradient / "
                "weight_gradient is set, all three need a lowbit.GemmConfig "
                "(GemmConfig() is float32)"
            )
    for name, r in zip(ROLES[:2], roles[:2]):
        if r.hadamard:
            raise ValueError(
                f"QuantConfig({name}=GemmConfig(hadamard={r.hadamard})): the random "
                "Hadamard transform is implemented for weight_gradient only"
            )
    if activation_scaling == "pact":
        raise ValueError(
            "QuantConfig(activation_scaling='pact') cannot be combined with per-role "
            "GemmConfigs; use a ScaledFormat or a per-tensor Format for activations"
        )
    return True


# ---------------------------------------------------------------------------
# Axes of each role's contraction (static)
# ---------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class _Axes:
    """Contraction (and 2-D tile channel) axes of every operand in every role."""

    f_lhs: tuple
    f_rhs: tuple
    f_rhs_ch: tuple
    d_g: tuple
    d_rhs: tuple
    d_rhs_ch: tuple
    w_lhs: tuple
    w_g: tuple


def _dot_axes(dimension_numbers, lhs_ndim, rhs_ndim) -> _Axes:
    (lc, rc), (lb, rb) = dimension_numbers
    lc, rc, lb, rb = (tuple(int(a) for a in v) for v in (lc, rc, lb, rb))
    lfree = tuple(a for a in range(lhs_ndim) if a not in lc + lb)
    rfree = tuple(a for a in range(rhs_ndim) if a not in rc + rb)
    nb = len(lb)
    out_l = tuple(range(nb, nb + len(lfree)))
    out_r = tuple(range(nb + len(lfree), nb + len(lfree) + len(rfree)))
    return _Axes(lc, rc, rfree, out_r, rfree, rc, lfree, out_l)


def _conv_axes(op, lhs_shape, rhs_shape) -> _Axes:
    dn = lax.conv_dimension_numbers(lhs_shape, rhs_shape, op.dimension_numbers)
    ls, rs, os_ = (
        dn.lhs_spec,
        dn.rhs_spec,
        dn.out_spec,
    )  # (batch, feature, *spatial) / (out, in, ...)
    # Forward blocks run along the input channels (im2col's contraction also runs over the
    # window, which has no memory layout here); the weight gradient contracts over batch and
    # space, blocked along the batch axis.
    return _Axes((ls[1],), (rs[1],), (rs[0],), (os_[1],), (rs[0],), (rs[1],), (ls[0],), (os_[0],))


# ---------------------------------------------------------------------------
# Operand quantizers
# ---------------------------------------------------------------------------


def _key(x, seed: int, salt: int):
    bits = lax.bitcast_convert_type(x.astype(jnp.float32), jnp.uint32)
    key = jax.random.fold_in(jax.random.key(seed), jnp.sum(bits, dtype=jnp.uint32))
    return jax.random.fold_in(key, salt)


def _quant(x, fmt, rounding, seed, salt, axes, channel_axes=None):
    """``(v, t)``: ``x`` on ``fmt``'s grid with this role's scales is ``v * t``.

    ``v`` is in ``x``'s dtype; ``t`` is the float32 per-tensor scale of
    two-level formats (NVFP4), applied once to the GEMM's output as the
    hardware does, and 1 otherwise.
    """
    one = jnp.float32(1.0)
    if isinstance(fmt, Format) and fmt.is_float32:
        return x, one
    key = _key(x, seed, salt) if rounding == "stochastic" else None
    if isinstance(fmt, ScaledFormat):
        return quantize_blocks_split(
            x, fmt, axis=axes, channel_axis=channel_axes or None, rounding=rounding, key=key
        )
    scale = compute_scale(lax.stop_gradient(x), fmt)
    return quantize(x, fmt, scale=scale, rounding=rounding, key=key), one


def _two_level(*fmts) -> bool:
    return any(isinstance(f, ScaledFormat) and f.split_scale for f in fmts)


def _rescale(y, t, on: bool):
    return y * t.astype(y.dtype) if on else y


@functools.cache
def _hadamard(n: int) -> np.ndarray:
    h = np.ones((1, 1), np.float32)
    while h.shape[0] < n:
        h = np.block([[h, h], [h, -h]])
    return (h / np.sqrt(np.float32(n))).astype(np.float32)


def _rht(x, axis: int, n: int, seed: int):
    """Random Hadamard transform along ``axis`` in chunks of ``n``; the axis is zero-padded to a
    multiple of ``n`` and stays padded (the rotation moves the padding's weight onto real rows).

    ``H_n diag(s)`` per chunk (``s`` random signs, ``H_n`` Sylvester's, orthonormal). Along the
    last axis it is one small matmul per chunk. Along another axis, moving it last would
    transpose the whole operand twice (the weight gradient's axis is the batch's, not the
    last); there the fast Walsh-Hadamard butterflies run in place instead, ``log2 n`` fused
    add/subtract passes (BENCHMARKS.md, "Block-scaled 4-bit step time").
    """
    signs = jax.random.rademacher(jax.random.key(seed), (n,), jnp.float32)
    axis = axis % x.ndim
    m = x.shape[axis]
    pad = [(0, 0)] * x.ndim
    pad[axis] = (0, -m % n)
    xp = jnp.pad(x.astype(jnp.float32), pad)
    if axis == x.ndim - 1:
        chunks = xp.reshape(*xp.shape[:-1], -1, n) * signs
        return (chunks @ jnp.asarray(_hadamard(n))).reshape(xp.shape).astype(x.dtype)
    lead, trail = math.prod(x.shape[:axis]), math.prod(x.shape[axis + 1 :])
    y = xp.reshape(lead, -1, n, trail) * signs[:, None]
    c, h = y.shape[1], 1
    while h < n:  # butterflies on bit h of the index within the chunk: Sylvester's order
        y = y.reshape(lead, c, n // (2 * h), 2, h, trail)
        a, b = y[:, :, :, 0], y[:, :, :, 1]
        y = jnp.stack([a + b, a - b], axis=3)
        h *= 2
    return (y * jnp.float32(1.0 / np.sqrt(n))).reshape(xp.shape).astype(x.dtype)


# ---------------------------------------------------------------------------
# The op
# ---------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class _Spec:
    forward: GemmConfig
    input_gradient: GemmConfig
    weight_gradient: GemmConfig
    seed: int
    accumulation: Any
    axes: _Axes


def _fwd_operands(lhs, rhs, s: _Spec):
    f, ax = s.forward, s.axes
    aq, ta = _quant(lhs, f.lhs, f.lhs_rounding, s.seed, 2, ax.f_lhs)
    wq, tw = _quant(rhs, f.rhs, f.rhs_rounding, s.seed, 3, ax.f_rhs, ax.f_rhs_ch)
    return aq, ta, wq, tw


def _forward(lhs, rhs, op, s: _Spec, out_dtype):
    aq, ta, wq, tw = _fwd_operands(lhs, rhs, s)
    y = _rescale(op(aq, wq, s.accumulation), ta * tw, _two_level(s.forward.lhs, s.forward.rhs))
    return y.astype(out_dtype), aq, ta, wq, tw


@functools.partial(jax.custom_jvp, nondiff_argnums=(2, 3, 4))
def _role_bilinear(lhs, rhs, op, spec, out_dtype):
    return _forward(lhs, rhs, op, spec, out_dtype)[0]


def _input_grad(g, w, lhs_aval, op, s: _Spec, out_dtype):
    d, ax = s.input_gradient, s.axes
    gq, tg = _quant(g, d.lhs, d.lhs_rounding, s.seed, 0, ax.d_g)
    wq, tw = _quant(w, d.rhs, d.rhs_rounding, s.seed, 1, ax.d_rhs, ax.d_rhs_ch)
    f = lambda t: op(t, wq, s.accumulation).astype(out_dtype)
    da = jax.linear_transpose(f, lhs_aval)(gq.astype(out_dtype))[0]
    return _rescale(da, tg * tw, _two_level(d.lhs, d.rhs))


def _weight_grad(g, a, rhs_aval, op, s: _Spec, out_dtype):
    wg, ax = s.weight_gradient, s.axes
    if wg.hadamard and ax.w_lhs:
        # Rotate both operands along the same (last) contraction axis; zero padding
        # adds rows that are zero in both, so A^T G is unchanged before quantization.
        a = _rht(a, ax.w_lhs[-1], wg.hadamard, s.seed)
        g = _rht(g, ax.w_g[-1], wg.hadamard, s.seed)
    aq, ta = _quant(a, wg.lhs, wg.lhs_rounding, s.seed, 4, ax.w_lhs)
    gq, tg = _quant(g, wg.rhs, wg.rhs_rounding, s.seed, 5, ax.w_g)
    f = lambda t: op(aq, t, s.accumulation).astype(out_dtype)
    dw = jax.linear_transpose(f, rhs_aval)(gq.astype(out_dtype))[0]
    return _rescale(dw, ta * tg, _two_level(wg.lhs, wg.rhs))


def _role_bilinear_jvp(op, spec, out_dtype, primals, tangents):
    lhs, rhs = primals
    dlhs, drhs = tangents
    y, aq, ta, wq, tw = _forward(lhs, rhs, op, spec, out_dtype)
    acc = spec.accumulation
    f = spec.forward
    lhs_aval = jax.ShapeDtypeStruct(lhs.shape, lhs.dtype)
    rhs_aval = jax.ShapeDtypeStruct(rhs.shape, rhs.dtype)
    dy = None
    if not isinstance(dlhs, SymbolicZero):
        dy = linear_call(
            lambda res, t: _rescale(op(t, res[0], acc), res[2], _two_level(f.rhs)).astype(
                out_dtype
            ),
            lambda res, g: _input_grad(g, res[1], lhs_aval, op, spec, out_dtype),
            (wq, rhs, tw),
            dlhs,
        )
    if not isinstance(drhs, SymbolicZero):
        t = linear_call(
            lambda res, t: _rescale(op(res[0], t, acc), res[2], _two_level(f.lhs)).astype(
                out_dtype
            ),
            lambda res, g: _weight_grad(g, res[1], rhs_aval, op, spec, out_dtype),
            (aq, lhs, ta),
            drhs,
        )
        dy = t if dy is None else dy + t
    if dy is None:
        dy = jnp.zeros_like(y)
    return y, dy


_role_bilinear.defjvp(_role_bilinear_jvp, symbolic_zeros=True)


def role_bilinear(lhs, rhs, op, config, out_dtype, *, conv: bool, activation_clip=None):
    """Run ``op`` (a static ``_DotOp`` / ``_ConvOp``) with ``config``'s per-role GEMMs."""
    if activation_clip is not None:
        raise ValueError(
            "activation_clip (PACT) has no effect with per-role GemmConfigs; drop "
            "it, or use a QuantConfig without forward/input_gradient/weight_gradient"
        )
    axes = (
        _conv_axes(op, lhs.shape, rhs.shape)
        if conv
        else _dot_axes(op.dimension_numbers, lhs.ndim, rhs.ndim)
    )
    spec = _Spec(
        config.forward,
        config.input_gradient,
        config.weight_gradient,
        config.seed,
        config.accumulation,
        axes,
    )
    return _role_bilinear(lhs, rhs, op, spec, out_dtype)


# linear_call has no batching rule in JAX; this module uses it on its own, so it registers the
# shared rule itself instead of relying on lowbit._dot having been imported first (idempotent).
register_linear_call_batching()
