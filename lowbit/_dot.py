"""The three quantized GEMMs of 4-bit training, differentiable in both autodiff modes.

Sun et al., "Ultra-Low Precision 4-bit Training of Deep Neural Networks"
(NeurIPS 2020), Fig. 1 / section 4: for ``y = A W`` (activations ``A``,
weights ``W``, incoming gradient ``G = dL/dy``)

* forward:          ``y  = INT4(A) INT4(W)``
* input gradient:   ``dA = FP4_even(G) INT4(W)^T``      (radix-4, grid 4^k)
* weight gradient:  ``dW = INT4(A)^T FP4_odd(G)``       (radix-4, grid 2*4^k)

with a per-tensor GradScale on ``G`` and straight-through estimators (STE) for
the INT4 quantizers (PACT's clip gives the activation clip its gradient).

How this works under both ``jax.grad`` and ``jax.jvp``
------------------------------------------------------
A ``jax.custom_vjp`` cannot be pushed forward (``jax.jvp`` raises), and a
``jax.custom_jvp`` rule must be linear in the tangents so that JAX can
transpose it, while quantizing a cotangent is not linear. So the op is a
``jax.custom_jvp`` whose tangent rule is the STE directional derivative

    dy = P_even(op(dA, Wq)) + P_odd(op(Aq, dW))

where ``P`` is the identity wrapped in ``jax.custom_derivatives.linear_call``
with a custom *transpose* that quantizes the cotangent (GradScale, then FP4
on the even or odd grid). Forward mode evaluates ``P`` as the identity, so
``jax.jvp`` returns the exact directional derivative of the STE model (what a
forward-gradient estimator wants: quantize its estimate afterwards with
``lowbit.quantize_updates``). Reverse mode transposes ``P`` into the FP4
quantizer, so ``jax.grad`` computes exactly the paper's two backward GEMMs,
each from its own quantization of the same ``G`` (two-phase rounding).

``linear_call`` has no batching rule in JAX; :func:`bbcore.register_linear_call_batching`
adds one (it batches the callee and the transpose jaxprs), so ``jax.vmap`` works too. Under
``vmap`` the GradScale is per mapped slice, as for any per-tensor op.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp
from jax import lax
from jax.custom_derivatives import SymbolicZero

from bbcore import check_seed, register_linear_call_batching
from lowbit._formats import FLOAT32, INT4, RADIX4_FP4, Format
from lowbit._gemm import check_roles, role_bilinear
from lowbit._gradients import grad_quantizer, quantize_gradient
from lowbit._rounding import ROUNDINGS, _phase_shift, quantize
from lowbit._scaling import amax_scale, compute_scale, pact_clip, sample_amax_scale, sawb_scale

__all__ = [
    "QuantConfig",
    "dot_general",
    "conv_general_dilated",
    "quantize_gradient",
    "WEIGHT_SCALINGS",
    "ACTIVATION_SCALINGS",
    "GRADIENT_SCALINGS",
]

WEIGHT_SCALINGS = ("sawb", "max")
ACTIVATION_SCALINGS = ("max", "amax", "sample", "pact")
GRADIENT_SCALINGS = ("max", "channel", "none")


@dataclasses.dataclass(frozen=True, kw_only=True)
class QuantConfig:
    """What each operand of a quantized GEMM is rounded to (Sun et al. 2020, section 4).

    Attributes:
      weights: format of the weights (``rhs``); INT4 by default.
      weight_scaling: ``"sawb"`` (SAWB clip, Choi et al. 2019; signed integer
        formats) or ``"max"`` (power-of-two max scaling).
      activations: format of the activations (``lhs``); INT4 by default (safe for
        any sign); UINT4 with ``activation_scaling="pact"`` is the paper's choice
        for ReLU networks (negative inputs then clip to 0).
      activation_scaling: ``"max"`` (power-of-two per-tensor scale), ``"amax"``
        (per-tensor float scale ``max|A| / max_value``, every code used; see
        :func:`lowbit.amax_scale`), ``"sample"`` (that float scale per sample, the
        leading axis, which must not be contracted; :func:`lowbit.sample_amax_scale`) or
        ``"pact"`` (learnable clip ``alpha`` passed to
        ``dot_general(activation_clip=...)``; ``lowbit.nnx`` layers own it as a
        parameter).
      pact_init: initial PACT clip used by ``lowbit.nnx`` layers.
      gradients: format of the output gradient in both backward GEMMs.
      gradient_scaling: ``"max"`` (GradScale, one scale per tensor), ``"channel"``
        (GradScale per row of ``G`` in the input-gradient GEMM and per output
        channel in the weight-gradient GEMM, so each scale factors out of its
        GEMM; see :mod:`lowbit._gradients`) or ``"none"`` (ablation).
      two_phase: TPR: even grid for the input gradient, odd grid for the weight
        gradient; ``False`` uses the even grid for both (ablation).
      gradient_rounding: ``"nearest"`` (the paper's TPR) or ``"stochastic"``.
      seed: base seed of stochastic gradient rounding; the per-call key is this
        seed folded with a hash of the gradient tensor's bits, so no key needs
        threading through a model and runs are reproducible.
      accumulation: dtype the GEMMs accumulate in (float32).
      forward / input_gradient / weight_gradient: optional
        :class:`lowbit.GemmConfig` per GEMM role (block formats such as
        :data:`lowbit.NVFP4`, stochastic rounding, Hadamard transforms; see
        :mod:`lowbit._gemm`). Set all three or none; when set they alone define
        the three GEMMs and the fields above except ``seed`` and
        ``accumulation`` are not used.

    Raises:
      TypeError / ValueError: at construction, naming the field, its value and
        the valid choices.
    """

    weights: Format = INT4
    weight_scaling: str = "sawb"
    activations: Format = INT4
    activation_scaling: str = "max"
    pact_init: float = 4.0
    gradients: Format = RADIX4_FP4
    gradient_scaling: str = "max"
    two_phase: bool = True
    gradient_rounding: str = "nearest"
    seed: int = 0
    accumulation: Any = jnp.float32
    forward: Any = None
    input_gradient: Any = None
    weight_gradient: Any = None

    def __post_init__(self):
        for name in ("weights", "activations", "gradients"):
            v = getattr(self, name)
            if not isinstance(v, Format):
                raise TypeError(
                    f"QuantConfig({name}={v!r}): expected a lowbit.Format such as "
                    "lowbit.INT4, lowbit.RADIX4_FP4 or lowbit.FLOAT32 (block formats "
                    "such as lowbit.NVFP4 go in forward/input_gradient/"
                    "weight_gradient=lowbit.GemmConfig(...))"
                )
        if self.weight_scaling not in WEIGHT_SCALINGS:
            raise ValueError(
                f"QuantConfig(weight_scaling={self.weight_scaling!r}): use one of {WEIGHT_SCALINGS}"
            )
        if (
            self.weight_scaling == "sawb"
            and not self.weights.is_float32
            and (self.weights.kind != "int" or not self.weights.signed)
        ):
            raise ValueError(
                f"QuantConfig(weight_scaling='sawb') needs a signed integer weight "
                f"format, got weights={self.weights.name}; use weight_scaling='max'"
            )
        if self.activation_scaling not in ACTIVATION_SCALINGS:
            raise ValueError(
                f"QuantConfig(activation_scaling={self.activation_scaling!r}): use "
                f"one of {ACTIVATION_SCALINGS}"
            )
        if self.activation_scaling == "pact" and self.activations.kind != "int":
            raise ValueError(
                f"QuantConfig(activation_scaling='pact') needs an integer activation "
                f"format, got activations={self.activations.name}"
            )
        if not (isinstance(self.pact_init, (int, float)) and self.pact_init > 0):
            raise ValueError(f"QuantConfig(pact_init={self.pact_init!r}): need a positive number")
        if self.gradient_scaling not in GRADIENT_SCALINGS:
            raise ValueError(
                f"QuantConfig(gradient_scaling={self.gradient_scaling!r}): use one "
                f"of {GRADIENT_SCALINGS}"
            )
        if self.gradient_rounding not in ROUNDINGS:
            raise ValueError(
                f"QuantConfig(gradient_rounding={self.gradient_rounding!r}): use one of {ROUNDINGS}"
            )
        if not isinstance(self.two_phase, bool):
            raise TypeError(f"QuantConfig(two_phase={self.two_phase!r}): need a bool")
        if self.two_phase and not self.gradients.is_float32:
            try:
                _phase_shift(self.gradients, "odd")
            except ValueError:
                raise ValueError(
                    f"QuantConfig(two_phase=True) needs a radix-4 (or 16) gradient format; "
                    f"gradients={self.gradients.name} has radix {self.gradients.radix}. "
                    "Set two_phase=False"
                ) from None
        check_seed(self.seed, "QuantConfig")
        if not isinstance(self.seed, int):  # the config is static under jit: hashable values
            raise TypeError(
                f"QuantConfig(seed={self.seed!r}): need a Python int (the config "
                "is a static, hashed argument of jit)"
            )
        try:
            acc = jnp.dtype(self.accumulation)
        except TypeError:
            raise TypeError(
                f"QuantConfig(accumulation={self.accumulation!r}): not a dtype"
            ) from None
        if not jnp.issubdtype(acc, jnp.floating):
            raise ValueError(
                f"QuantConfig(accumulation={self.accumulation!r}): need a floating dtype"
            )
        object.__setattr__(self, "accumulation", acc)
        check_roles(
            self.forward, self.input_gradient, self.weight_gradient, self.activation_scaling
        )

    @classmethod
    def float32(cls) -> QuantConfig:
        """No quantization anywhere: ``dot_general`` equals ``lax.dot_general``."""
        return cls(
            weights=FLOAT32,
            activations=FLOAT32,
            gradients=FLOAT32,
            weight_scaling="max",
            two_phase=False,
        )


# ---------------------------------------------------------------------------
# The bilinear ops (static, hashable)
# ---------------------------------------------------------------------------


def _freeze(x):
    if isinstance(x, lax.ConvDimensionNumbers):  # flax's nnx.Conv passes these; keep the type
        return lax.ConvDimensionNumbers(*(_freeze(v) for v in x))
    if isinstance(x, (list, tuple)):
        return tuple(_freeze(v) for v in x)
    return x


@dataclasses.dataclass(frozen=True)
class _DotOp:
    dimension_numbers: Any
    precision: Any

    def kept_axes(self, lhs_shape, rhs_shape) -> tuple[tuple[int, ...], tuple[int, ...]]:
        """Output axes each backward GEMM does not contract: (input grad., weight grad.)."""
        (lc, rc), (lb, rb) = self.dimension_numbers
        nb, nl = len(lb), len(lhs_shape) - len(lc) - len(lb)
        n = nb + nl + len(rhs_shape) - len(rc) - len(rb)
        return tuple(range(nb + nl)), tuple(range(nb)) + tuple(range(nb + nl, n))

    def __call__(self, lhs, rhs, pet):
        return lax.dot_general(
            lhs, rhs, self.dimension_numbers, precision=self.precision, preferred_element_type=pet
        )


@dataclasses.dataclass(frozen=True)
class _ConvOp:
    window_strides: Any
    padding: Any
    lhs_dilation: Any
    rhs_dilation: Any
    dimension_numbers: Any
    feature_group_count: int
    batch_group_count: int
    precision: Any

    def kept_axes(self, lhs_shape, rhs_shape) -> tuple[tuple[int, ...], tuple[int, ...]]:
        """Per sample for the input gradient (a window mixes positions), per output feature."""
        dn = lax.conv_dimension_numbers(lhs_shape, rhs_shape, self.dimension_numbers)
        return (dn.out_spec[0],), (dn.out_spec[1],)

    def __call__(self, lhs, rhs, pet):
        # The fields are lax.conv_general_dilated's own parameter names, passed on as they are.
        params = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        return lax.conv_general_dilated(lhs, rhs, **params, preferred_element_type=pet)


# ---------------------------------------------------------------------------
# The quantized bilinear op
# ---------------------------------------------------------------------------


def _codes(x, fmt, scale):
    """``q(x / scale)`` in ``x``'s dtype: small integers or grid values, exact there."""
    if fmt.is_float32:
        return x
    return quantize(x.astype(jnp.float32) / scale, fmt).astype(x.dtype)


def _forward(lhs, rhs, a_scale, w_scale, op, config, out_dtype):
    na = _codes(lhs, config.activations, a_scale)
    nw = _codes(rhs, config.weights, w_scale)
    y = op(na, nw, config.accumulation)
    if not (config.activations.is_float32 and config.weights.is_float32):
        # Scales factor out of the bilinear op: the GEMM runs on grid values
        # (exact in bfloat16 too) and is rescaled once, as INT4 hardware does.
        if jnp.ndim(a_scale):  # per sample: lhs's leading axis is the output's leading axis
            a_scale = a_scale.reshape((y.shape[0],) + (1,) * (y.ndim - 1))
        y = y * (a_scale * w_scale).astype(y.dtype)
    return y.astype(out_dtype), na, nw


def _dequant(n, fmt, scale):
    return n if fmt.is_float32 else (n.astype(jnp.float32) * scale).astype(n.dtype)


@functools.partial(jax.custom_jvp, nondiff_argnums=(4, 5, 6))
def _qbilinear(lhs, rhs, a_scale, w_scale, op, config, out_dtype):
    return _forward(lhs, rhs, a_scale, w_scale, op, config, out_dtype)[0]


def _qbilinear_jvp(op, config, out_dtype, primals, tangents):
    # Linear in the tangents (two bilinear products and linear_call identities),
    # so JAX can transpose it; symbolic zeros skip the product of an operand
    # that is not differentiated (e.g. the input images).
    lhs, rhs, a_scale, w_scale = primals
    dlhs, drhs = tangents[0], tangents[1]
    y, na, nw = _forward(lhs, rhs, a_scale, w_scale, op, config, out_dtype)
    pet = config.accumulation
    dy = None
    keep_d, keep_w = op.kept_axes(lhs.shape, rhs.shape)
    if not isinstance(dlhs, SymbolicZero):
        wq = _dequant(nw, config.weights, w_scale)
        t = op(dlhs, wq, pet).astype(out_dtype)
        dy = grad_quantizer(t, config, "even", keep_d)
    if not isinstance(drhs, SymbolicZero):
        aq = _dequant(na, config.activations, a_scale)
        t = op(aq, drhs, pet).astype(out_dtype)
        t = grad_quantizer(t, config, "odd" if config.two_phase else "even", keep_w)
        dy = t if dy is None else dy + t
    if dy is None:
        dy = jnp.zeros_like(y)
    return y, dy


_qbilinear.defjvp(_qbilinear_jvp, symbolic_zeros=True)


def _operand_scales(lhs, rhs, config, activation_clip):
    """Stop-gradient scales of both operands, and the (PACT-clipped) lhs."""
    afmt, wfmt = config.activations, config.weights
    if config.activation_scaling == "pact":
        if activation_clip is None:
            raise ValueError(
                "QuantConfig(activation_scaling='pact') needs "
                "activation_clip=<learnable scalar alpha>; lowbit.nnx layers pass "
                "their own, or use activation_scaling='max'"
            )
        lhs = pact_clip(lhs, activation_clip, signed=afmt.signed)
        a_scale = lax.stop_gradient(jnp.asarray(activation_clip, jnp.float32)) / afmt.max_value
    elif afmt.is_float32:
        a_scale = jnp.float32(1.0)
    elif config.activation_scaling == "amax":
        a_scale = amax_scale(lax.stop_gradient(lhs), afmt)
    elif config.activation_scaling == "sample":
        a_scale = sample_amax_scale(lax.stop_gradient(lhs), afmt)
    else:
        a_scale = compute_scale(lax.stop_gradient(lhs), afmt)
    if wfmt.is_float32:
        w_scale = jnp.float32(1.0)
    elif config.weight_scaling == "sawb":
        w_scale = sawb_scale(lax.stop_gradient(rhs), wfmt)
    else:
        w_scale = compute_scale(lax.stop_gradient(rhs), wfmt)
    return lhs, lax.stop_gradient(a_scale), lax.stop_gradient(w_scale)


def _check_sample_axis(op, lhs_shape, rhs_shape) -> None:
    """A per-sample scale factors out only when lhs's axis 0 is the output's axis 0, uncontracted."""
    if isinstance(op, _ConvOp):
        dn = lax.conv_dimension_numbers(lhs_shape, rhs_shape, op.dimension_numbers)
        ok = dn.lhs_spec[0] == 0 and dn.out_spec[0] == 0
    else:
        (lc, _), (lb, _) = op.dimension_numbers
        ok = 0 not in lc and (not lb or lb[0] == 0)
    if not ok:
        raise ValueError(
            "QuantConfig(activation_scaling='sample') scales each slice of the activation "
            "operand's leading axis, so that axis must be the batch axis of the product (not "
            f"contracted, first in the output); got {op}. Use activation_scaling='amax' here"
        )


def _check(lhs, rhs, config):
    if not isinstance(config, QuantConfig):
        raise TypeError(f"config={config!r}: expected a lowbit.QuantConfig")
    lhs, rhs = jnp.asarray(lhs), jnp.asarray(rhs)
    for name, v in (("lhs", lhs), ("rhs", rhs)):
        if not jnp.issubdtype(v.dtype, jnp.floating):
            raise TypeError(f"{name} must be floating, got dtype {v.dtype}")
    return lhs, rhs


def _out_dtype(lhs, rhs, preferred_element_type):
    if preferred_element_type is not None:
        return jnp.dtype(preferred_element_type)
    return lhs.dtype if lhs.dtype == rhs.dtype else jnp.result_type(lhs, rhs)


def _product(lhs, rhs, op, config: QuantConfig, preferred_element_type, activation_clip):
    """``op`` (a GEMM or a convolution) through per-role configs or the paper's recipe."""
    out_dtype = _out_dtype(lhs, rhs, preferred_element_type)
    if config.forward is not None:
        return role_bilinear(
            lhs,
            rhs,
            op,
            config,
            out_dtype,
            conv=isinstance(op, _ConvOp),
            activation_clip=activation_clip,
        )
    if config.activation_scaling == "sample":
        _check_sample_axis(op, lhs.shape, rhs.shape)
    lhs, a_scale, w_scale = _operand_scales(lhs, rhs, config, activation_clip)
    return _qbilinear(lhs, rhs, a_scale, w_scale, op, config, out_dtype)


def dot_general(
    lhs: jax.Array,
    rhs: jax.Array,
    dimension_numbers,
    precision=None,
    preferred_element_type=None,
    *,
    config: QuantConfig,
    activation_clip: jax.Array | None = None,
) -> jax.Array:
    """Drop-in for ``lax.dot_general`` running Sun et al.'s three quantized GEMMs.

    ``lhs`` is the activation operand, ``rhs`` the weight operand (as in
    ``flax``'s ``dot_general(inputs, kernel)``). Forward: ``q_a(lhs) . q_w(rhs)``
    accumulated in ``config.accumulation``; under ``jax.grad`` the input
    gradient is ``FP4_even(G) . q_w(rhs)^T`` and the weight gradient
    ``q_a(lhs)^T . FP4_odd(G)`` (Sun et al. 2020, Fig. 1, section 4); under
    ``jax.jvp`` the tangent is the straight-through directional derivative (see
    the module docstring for the design). With ``QuantConfig.float32()`` it is
    exactly ``lax.dot_general``, gradients included.

    Args:
      lhs, rhs, dimension_numbers, precision, preferred_element_type: as
        ``lax.dot_general``. The result has ``preferred_element_type`` or the
        operands' dtype (bfloat16 in, bfloat16 out).
      config: the :class:`QuantConfig`.
      activation_clip: PACT's learnable clip ``alpha`` (scalar), required when
        ``config.activation_scaling == "pact"``; it receives PACT's gradient.

    Returns:
      The product, shaped as ``lax.dot_general``'s.
    """
    lhs, rhs = _check(lhs, rhs, config)
    op = _DotOp(_freeze(dimension_numbers), precision)
    return _product(lhs, rhs, op, config, preferred_element_type, activation_clip)


def conv_general_dilated(
    lhs: jax.Array,
    rhs: jax.Array,
    window_strides,
    padding,
    lhs_dilation=None,
    rhs_dilation=None,
    dimension_numbers=None,
    feature_group_count: int = 1,
    batch_group_count: int = 1,
    precision=None,
    preferred_element_type=None,
    *,
    config: QuantConfig,
    activation_clip: jax.Array | None = None,
) -> jax.Array:
    """Drop-in for ``lax.conv_general_dilated`` with the same three quantized products.

    A convolution is bilinear in (inputs, kernel) like a GEMM, so the forward,
    input-gradient and weight-gradient convolutions are quantized exactly as in
    :func:`dot_general` (Sun et al. 2020 quantize conv layers the same way).
    """
    lhs, rhs = _check(lhs, rhs, config)
    op = _ConvOp(
        _freeze(window_strides),
        padding if isinstance(padding, str) else _freeze(padding),
        _freeze(lhs_dilation),
        _freeze(rhs_dilation),
        _freeze(dimension_numbers),
        feature_group_count,
        batch_group_count,
        precision,
    )
    return _product(lhs, rhs, op, config, preferred_element_type, activation_clip)


# linear_call has no vmap rule in JAX; bbcore.jax_compat registers one (it reaches into
# jax._src, so it lives with the other JAX-version shims and names the versions it is tested on).
register_linear_call_batching()
