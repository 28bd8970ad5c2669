"""Quantized dot/conv: float32 equals lax, gradients equal a slow explicit reference in both modes."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from _tolerance import assert_close_ulps, dot_ulps
from flax import nnx
from jax import lax

import lowbit
from lowbit import INT4, RADIX4_FP4, UINT4

DN = (((1,), (0,)), ((), ()))


def _data(seed=0, m=8, k=16, n=4):
    k1, k2, k3 = jax.random.split(jax.random.key(seed), 3)
    a = jax.random.normal(k1, (m, k))
    w = jax.random.normal(k2, (k, n)) * 0.2
    g = jax.random.normal(k3, (m, n)) * 1e-3  # gradient-sized: GradScale matters
    return a, w, g


def qdot(cfg, **kw):
    return lambda a, w: lowbit.dot_general(a, w, DN, config=cfg, **kw)


# ---- slow explicit reference (numpy float64 GEMMs on explicitly quantized operands)


def ref_quant_operands(a, w, cfg):
    if cfg.activation_scaling == "amax":  # max|a| / max_value, by hand
        sa = jnp.max(jnp.abs(a)) / cfg.activations.max_value
    elif cfg.activation_scaling == "sample":  # each row on its own max|a_i| / max_value
        rows = [
            ref_quant_operands(
                a[i : i + 1], w, dataclasses.replace(cfg, activation_scaling="amax")
            )[0]
            for i in range(a.shape[0])
        ]
        return np.concatenate(rows), ref_quant_operands(
            a, w, dataclasses.replace(cfg, activation_scaling="max")
        )[1]
    else:
        sa = lowbit.compute_scale(a, cfg.activations)
    sw = (
        lowbit.sawb_scale(w, cfg.weights)
        if cfg.weight_scaling == "sawb"
        else lowbit.compute_scale(w, cfg.weights)
    )
    A = np.asarray(lowbit.quantize(a, cfg.activations, scale=sa), np.float64)
    W = np.asarray(lowbit.quantize(w, cfg.weights, scale=sw), np.float64)
    return A, W


def ref_quant_grad(g, cfg, phase, keep=None):
    """GradScale + FP4; with ``gradient_scaling="channel"``, ``compute_scale`` on each slice
    along axis ``keep`` (a loop over per-tensor scales: independent of the library's axes)."""
    if cfg.gradient_scaling == "channel":
        g = np.asarray(g)
        slices = [np.take(g, i, axis=keep) for i in range(g.shape[keep])]
        parts = [
            ref_quant_grad(sl, dataclasses.replace(cfg, gradient_scaling="max"), phase)
            for sl in slices
        ]
        return np.stack(parts, axis=keep)
    s = lowbit.compute_scale(g, cfg.gradients) if cfg.gradient_scaling == "max" else None
    return np.asarray(lowbit.quantize(g, cfg.gradients, scale=s, phase=phase), np.float64)


def test_float32_config_equals_lax_forward_grad_jvp():
    a, w, g = _data()
    f = qdot(lowbit.QuantConfig.float32())
    ref = lambda a, w: lax.dot_general(a, w, DN)
    np.testing.assert_array_equal(f(a, w), ref(a, w))
    _y, vjp = jax.vjp(f, a, w)
    _y_r, vjp_r = jax.vjp(ref, a, w)
    for u, v in zip(vjp(g), vjp_r(g)):
        np.testing.assert_array_equal(u, v)
    t = jax.jvp(f, (a, w), (a * 0.3, w * 0.7))[1]
    np.testing.assert_array_equal(t, jax.jvp(ref, (a, w), (a * 0.3, w * 0.7))[1])


@pytest.mark.parametrize("two_phase", [True, False])
@pytest.mark.parametrize("gradient_scaling", ["max", "none", "channel"])
def test_reverse_mode_matches_explicit_reference(two_phase, gradient_scaling):
    cfg = lowbit.QuantConfig(two_phase=two_phase, gradient_scaling=gradient_scaling)
    a, w, g = _data(1)
    g = g * jnp.logspace(0, -5, g.shape[0])[:, None]  # rows of very different size
    y, vjp = jax.vjp(qdot(cfg), a, w)
    da, dw = vjp(g)
    A, W = ref_quant_operands(a, w, cfg)
    # one float32 order against float64, plus the output's rescaling (1 ulp): Higham's bound in
    # ulps of sum |terms| (an element near zero by cancellation has no relative accuracy)
    assert_close_ulps(y, A @ W, ulps=dot_ulps(A.shape[1]) + 2, magnitude=np.abs(A) @ np.abs(W))
    # "channel": one scale per row of G for dA = G W^T, per column for dW = A^T G
    Ge = ref_quant_grad(g, cfg, "even", keep=0)
    Go = ref_quant_grad(g, cfg, "odd" if two_phase else "even", keep=1)
    # The quantized operands' products are exact in float32 (4-bit values times powers of two),
    # so only the summation order differs from the float64 reference: Higham's bound over the
    # contraction length, in ulps of sum |terms| (see tests/_tolerance.py; AVX-512 vs AVX2).
    assert_close_ulps(da, Ge @ W.T, ulps=dot_ulps(W.shape[1]), magnitude=np.abs(Ge) @ np.abs(W.T))
    assert_close_ulps(dw, A.T @ Go, ulps=dot_ulps(A.shape[0]), magnitude=np.abs(A.T) @ np.abs(Go))
    if gradient_scaling == "none":
        assert not np.any(Ge)  # 1e-3-sized gradients flush to zero without GradScale
    else:
        assert np.count_nonzero(Ge) > g.size // 2
        if two_phase:
            assert not np.array_equal(Ge, Go)
    if gradient_scaling == "channel":  # every row keeps its own 4-bit resolution
        assert np.all(np.count_nonzero(Ge, axis=1) >= g.shape[1] // 2)
    elif gradient_scaling == "max":  # one scale: the 1e-5 rows flush to zero
        assert not np.any(Ge[-1])


def _check_float_scaled_gemms(cfg, a, w, g):
    """The three GEMMs against the by-hand reference; returns the reference's quantized ``A``."""
    y, vjp = jax.vjp(qdot(cfg), a, w)
    da, dw = vjp(g)
    A, W = ref_quant_operands(a, w, cfg)
    # A's entries are a float scale times 4-bit codes (not exact in float32): 2 ulps more
    assert_close_ulps(y, A @ W, ulps=dot_ulps(A.shape[1]) + 4, magnitude=np.abs(A) @ np.abs(W))
    Ge = ref_quant_grad(g, cfg, "even", keep=0)
    Go = ref_quant_grad(g, cfg, "odd", keep=1)
    assert_close_ulps(da, Ge @ W.T, ulps=dot_ulps(W.shape[1]), magnitude=np.abs(Ge) @ np.abs(W.T))
    assert_close_ulps(
        dw, A.T @ Go, ulps=dot_ulps(A.shape[0]) + 2, magnitude=np.abs(A.T) @ np.abs(Go)
    )
    return A


def test_float_activation_scale_in_all_three_gemms():
    # the lowbit row's 4-bit layers: UINT4 activations on max|A| / 15, per-channel GradScale;
    # the forward and the weight gradient both read the same quantized activations
    cfg = lowbit.QuantConfig(
        activations=UINT4, activation_scaling="amax", gradient_scaling="channel"
    )
    a, w, g = _data(2)
    a = jax.nn.relu(a)
    A = _check_float_scaled_gemms(cfg, a, w, g)
    assert np.isclose(A.max(), float(jnp.max(a)), rtol=1e-6)  # the top code is used
    assert len(np.unique(A)) > 8  # more levels than a power-of-two scale can leave


def test_per_sample_activation_scale_in_all_three_gemms():
    # one float scale per row of A (per token): each sample's largest activation gets the top
    # code, whatever the other samples hold; the rows span 1e-3 .. 1 in size
    cfg = lowbit.QuantConfig(
        activations=UINT4, activation_scaling="sample", gradient_scaling="channel"
    )
    a, w, g = _data(3)
    a = jax.nn.relu(a) * jnp.logspace(0, -3, a.shape[0])[:, None]
    A = _check_float_scaled_gemms(cfg, a, w, g)
    np.testing.assert_allclose(A.max(axis=1), np.asarray(jnp.max(a, axis=1)), rtol=1e-6)
    # with one scale per tensor the smallest rows would round to zero
    assert np.all(np.count_nonzero(A, axis=1) >= np.count_nonzero(np.asarray(a), axis=1) // 2)


def test_per_sample_activation_scale_conv_and_refused_axis():
    cfg = lowbit.QuantConfig(
        weights=lowbit.FLOAT32,
        weight_scaling="max",
        activations=UINT4,
        activation_scaling="sample",
        gradients=lowbit.FLOAT32,
        two_phase=False,
    )
    k1, k2 = jax.random.split(jax.random.key(5))
    x = (
        jax.nn.relu(jax.random.normal(k1, (3, 6, 6, 2)))
        * jnp.array([1.0, 1e-2, 1e-4])[:, None, None, None]
    )
    k = jax.random.normal(k2, (3, 3, 2, 4))
    dn = ("NHWC", "HWIO", "NHWC")
    y = lowbit.conv_general_dilated(x, k, (1, 1), "SAME", dimension_numbers=dn, config=cfg)
    # reference: each sample quantized on its own amax scale, then a float32 convolution
    xq = jnp.stack([lowbit.quantize(x[i], UINT4, scale=jnp.max(x[i]) / 15) for i in range(3)])
    want = jax.lax.conv_general_dilated(xq, k, (1, 1), "SAME", dimension_numbers=dn)
    np.testing.assert_allclose(
        np.asarray(y),
        np.asarray(want),
        rtol=1e-5,
        atol=1e-5 * float(jnp.max(jnp.abs(want), axis=(1, 2, 3)).min()),
    )
    for i in range(3):  # the smallest sample keeps its resolution
        assert len(np.unique(np.asarray(xq[i]))) > 8
    with pytest.raises(ValueError, match="leading axis"):  # axis 0 contracted: no factoring out
        lowbit.dot_general(
            x.reshape(3, -1), k.reshape(-1, 4)[:3], (((0,), (0,)), ((), ())), config=cfg
        )


def test_channel_gradient_scaling_batched_dot_and_conv_axes():
    """Each backward GEMM's scales run over the axes it does not contract (ref: slice loops)."""
    cfg = lowbit.QuantConfig(
        weights=lowbit.FLOAT32,
        activations=lowbit.FLOAT32,
        weight_scaling="max",
        gradient_scaling="channel",
        two_phase=False,
    )
    k1, k2, k3 = jax.random.split(jax.random.key(11), 3)
    # attention-like "bij,bjk->bik": batch axis b, lhs free i, rhs free k
    a, w = jax.random.normal(k1, (3, 4, 5)), jax.random.normal(k2, (3, 5, 6))
    dn = (((2,), (1,)), ((0,), (0,)))
    g = jax.random.normal(k3, (3, 4, 6)) * jnp.logspace(0, -6, 4)[None, :, None]
    _, vjp = jax.vjp(lambda a, w: lowbit.dot_general(a, w, dn, config=cfg), a, w)
    da, dw = vjp(g)
    G = np.asarray(g)
    ge = np.stack([ref_quant_grad(G[b], cfg, "even", keep=0) for b in range(3)])  # (b, i)
    gw = np.stack([ref_quant_grad(G[b], cfg, "even", keep=1) for b in range(3)])  # (b, k)
    A, W = np.asarray(a, np.float64), np.asarray(w, np.float64)
    ref_da, ref_dw = ge @ W.transpose(0, 2, 1), A.transpose(0, 2, 1) @ gw
    assert_close_ulps(
        da, ref_da, ulps=dot_ulps(6), magnitude=np.abs(ge) @ np.abs(W.transpose(0, 2, 1))
    )
    assert_close_ulps(
        dw, ref_dw, ulps=dot_ulps(4), magnitude=np.abs(A.transpose(0, 2, 1)) @ np.abs(gw)
    )
    # conv NHWC: per sample for dx (a window mixes positions), per output channel for dw
    x, k = jax.random.normal(k1, (2, 5, 5, 3)), jax.random.normal(k2, (3, 3, 3, 4))
    cdn = ("NHWC", "HWIO", "NHWC")
    ref = lambda x, k: lax.conv_general_dilated(x, k, (1, 1), "SAME", dimension_numbers=cdn)
    q = lambda x, k: lowbit.conv_general_dilated(
        x, k, (1, 1), "SAME", dimension_numbers=cdn, config=cfg
    )
    gc = jax.random.normal(k3, (2, 5, 5, 4)) * jnp.asarray([1.0, 1e-6])[:, None, None, None]
    dx, dk = jax.vjp(q, x, k)[1](gc)
    _, rvjp = jax.vjp(ref, x, k)
    _, avjp = jax.vjp(ref, jnp.abs(x), jnp.abs(k))
    ge_c = jnp.asarray(ref_quant_grad(gc, cfg, "even", keep=0), jnp.float32)
    gw_c = jnp.asarray(ref_quant_grad(gc, cfg, "even", keep=3), jnp.float32)
    assert np.count_nonzero(ge_c[1]) > ge_c[1].size // 2  # the 1e-6 sample keeps its gradient
    assert_close_ulps(dx, rvjp(ge_c)[0], ulps=dot_ulps(36), magnitude=avjp(jnp.abs(ge_c))[0])
    assert_close_ulps(dk, rvjp(gw_c)[1], ulps=dot_ulps(50), magnitude=avjp(jnp.abs(gw_c))[1])


def test_forward_mode_is_the_straight_through_derivative():
    cfg = lowbit.QuantConfig()
    a, w, _ = _data(2)
    ta, tw = a * 0.1 + 0.05, jnp.flip(w, 0)
    y, t = jax.jvp(qdot(cfg), (a, w), (ta, tw))
    A, W = ref_quant_operands(a, w, cfg)
    assert_close_ulps(y, A @ W, ulps=dot_ulps(A.shape[1]) + 2, magnitude=np.abs(A) @ np.abs(W))
    TA, TW = np.asarray(ta, np.float64), np.asarray(tw, np.float64)
    # two float32 products of k terms and their sum: Higham's bound over both, in ulps of the
    # summed magnitudes (the tangent's own products are not exact: ta is not on a 4-bit grid)
    assert_close_ulps(
        t,
        TA @ W + A @ TW,
        ulps=dot_ulps(A.shape[1]) + 4,
        magnitude=np.abs(TA) @ np.abs(W) + np.abs(A) @ np.abs(TW),
    )


def test_two_layer_network_gradient_matches_manual_backprop():
    """jax.grad through two quantized layers equals the paper's backward written out by hand."""
    cfg = lowbit.QuantConfig()
    k = jax.random.split(jax.random.key(3), 4)
    x = jax.random.normal(k[0], (6, 10))
    w1 = jax.random.normal(k[1], (10, 12)) * 0.3
    w2 = jax.random.normal(k[2], (12, 3)) * 0.3
    target = jax.random.normal(k[3], (6, 3))

    def loss(w1, w2):
        h = jax.nn.relu(lowbit.dot_general(x, w1, DN, config=cfg))
        y = lowbit.dot_general(h, w2, DN, config=cfg)
        return 0.5 * jnp.sum((y - target) ** 2)

    g1, g2 = jax.grad(loss, argnums=(0, 1))(w1, w2)
    # By hand. The GEMMs feeding a later quantization run in float32 like the
    # library's, so no element lands on the other side of a rounding boundary
    # because of float64 vs float32 summation.
    f32 = lambda v: jnp.asarray(v, jnp.float32)
    A1, W1 = map(f32, ref_quant_operands(x, w1, cfg))
    y1 = A1 @ W1
    h = jax.nn.relu(y1)
    A2, W2 = map(f32, ref_quant_operands(h, w2, cfg))
    d2 = A2 @ W2 - target
    dW2 = A2.T @ f32(ref_quant_grad(d2, cfg, "odd"))
    dh = f32(ref_quant_grad(d2, cfg, "even")) @ W2.T
    d1 = jnp.where(y1 > 0, dh, 0.0)
    dW1 = A1.T @ f32(ref_quant_grad(d1, cfg, "odd"))
    # both sides float32, summed in possibly different orders over the batch (6 rows): Higham's
    # bound in ulps of sum |terms|, not atol=1e-7 (below one ulp of these sums' terms)
    for got, want, A_, d_ in ((g2, dW2, A2, d2), (g1, dW1, A1, d1)):
        mag = np.abs(np.asarray(A_, np.float64)).T @ np.abs(ref_quant_grad(d_, cfg, "odd"))
        assert_close_ulps(got, want, ulps=dot_ulps(A_.shape[0]) + 2, magnitude=mag)


def test_pact_clip_gets_pact_gradient():
    cfg = lowbit.QuantConfig(activations=UINT4, activation_scaling="pact")
    a, w, g = _data(4)
    alpha = jnp.float32(0.8)
    f = lambda a, w, al: lowbit.dot_general(a, w, DN, config=cfg, activation_clip=al)
    y, vjp = jax.vjp(f, a, w, alpha)
    da, _dw, dalpha = vjp(g)
    A = np.asarray(lowbit.quantize(jnp.clip(a, 0, alpha), UINT4, scale=alpha / 15), np.float64)
    _, W = ref_quant_operands(a, w, cfg)
    assert_close_ulps(y, A @ W, ulps=dot_ulps(A.shape[1]) + 2, magnitude=np.abs(A) @ np.abs(W))
    dA = ref_quant_grad(g, cfg, "even") @ W.T  # gradient w.r.t. the clipped activations
    an, al = np.asarray(a), float(alpha)
    mask_in = (an > 0) & (an < al)
    Gq = ref_quant_grad(g, cfg, "even")
    mag = np.abs(Gq) @ np.abs(W.T)  # sum of |terms| of each entry of dA (Higham, _tolerance.py)
    assert_close_ulps(da, dA * mask_in, ulps=dot_ulps(W.shape[1]), magnitude=mag)
    # PACT: d/d alpha = sum of the incoming gradient where the input was clipped at alpha;
    # a second reduction over the clipped entries adds their count to the summation length
    clipped = an >= al
    assert_close_ulps(
        dalpha,
        np.sum(dA * clipped),
        ulps=dot_ulps(W.shape[1] + int(clipped.sum())),
        magnitude=np.sum(mag * clipped),
    )
    assert abs(float(dalpha)) > 0
    with pytest.raises(ValueError, match="activation_clip"):
        lowbit.dot_general(a, w, DN, config=cfg)


def test_stochastic_gradient_rounding_is_on_grid_and_reproducible():
    cfg = lowbit.QuantConfig(gradient_rounding="stochastic", seed=7)
    a, w, g = _data(5)
    da1, dw1 = jax.vjp(qdot(cfg), a, w)[1](g)
    da2, dw2 = jax.jit(lambda g: jax.vjp(qdot(cfg), a, w)[1](g))(g)
    # same bits eagerly and under jit (the key is a function of the seed and g)
    # jit may fuse and reorder the float32 sums: ulps of the result's magnitude, not bits
    assert_close_ulps(da1, da2, ulps=dot_ulps(w.shape[1]))
    assert_close_ulps(dw1, dw2, ulps=dot_ulps(a.shape[0]))
    _A, _W = ref_quant_operands(a, w, cfg)
    # dw = A^T G_odd with G_odd on the odd grid: solve for nothing, check grid via a 1-row case
    g1 = g[:1]
    a1 = jnp.zeros_like(a[:1]).at[0, 0].set(1.0)
    _, vjp = jax.vjp(qdot(cfg), a1, w)
    _, dw = vjp(g1)
    s = lowbit.compute_scale(g1, RADIX4_FP4)
    row = (
        np.asarray(dw[0])
        / np.asarray(lowbit.quantize(a1, INT4, scale=lowbit.compute_scale(a1, INT4)))[0, 0]
    )
    on_grid = np.asarray(
        lowbit.quantize(jnp.asarray(row, jnp.float32), RADIX4_FP4, scale=s, phase="odd")
    )
    np.testing.assert_array_equal(row, on_grid)


def test_vmap_matches_loop_in_both_modes():
    cfg = lowbit.QuantConfig()
    a, w, _ = _data(6)
    xs = jnp.stack([a, a * 2.0, -a])

    def loss(w, x):
        return jnp.sum(lowbit.dot_general(x, w, DN, config=cfg) ** 2)

    batched = jax.vmap(jax.grad(loss), in_axes=(None, 0))(w, xs)
    looped = jnp.stack([jax.grad(loss)(w, x) for x in xs])
    # a batched GEMM may sum in another order than one per example: ulps of the result's magnitude
    assert_close_ulps(batched, looped, ulps=dot_ulps(a.shape[0] * a.shape[1]))
    vs = jnp.stack([w, -w, w * 0.5])
    jv = jax.vmap(lambda v: jax.jvp(lambda w: loss(w, a), (w,), (v,))[1])(vs)
    jl = jnp.stack([jax.jvp(lambda w: loss(w, a), (w,), (v,))[1] for v in vs])
    np.testing.assert_allclose(jv, jl, rtol=1e-6)


def test_jit_no_retrace_and_bfloat16_kept():
    cfg = lowbit.QuantConfig()
    traces = []

    @jax.jit
    def step(a, w):
        traces.append(1)
        return jax.value_and_grad(
            lambda w: jnp.sum(lowbit.dot_general(a, w, DN, config=cfg).astype(jnp.float32))
        )(w)

    for s in range(3):
        a, w, _ = _data(s)
        _v, gw = step(a.astype(jnp.bfloat16), w.astype(jnp.bfloat16))
        assert gw.dtype == jnp.bfloat16
    assert len(traces) == 1
    y = lowbit.dot_general(a.astype(jnp.bfloat16), w.astype(jnp.bfloat16), DN, config=cfg)
    assert y.dtype == jnp.bfloat16
    A, W = ref_quant_operands(a.astype(jnp.bfloat16), w.astype(jnp.bfloat16), cfg)
    np.testing.assert_allclose(np.asarray(y, np.float64), A @ W, rtol=1e-2, atol=1e-2)


def test_conv_float32_equals_lax_and_quantized_matches_reference():
    k1, k2, k3 = jax.random.split(jax.random.key(8), 3)
    x = jax.random.normal(k1, (2, 9, 9, 3))
    w = jax.random.normal(k2, (3, 3, 3, 4)) * 0.3
    dn = ("NHWC", "HWIO", "NHWC")

    def conv(cfg):
        return lambda x, w: lowbit.conv_general_dilated(
            x, w, (1, 1), "SAME", dimension_numbers=dn, config=cfg
        )

    ref = lambda x, w: lax.conv_general_dilated(x, w, (1, 1), "SAME", dimension_numbers=dn)
    np.testing.assert_array_equal(conv(lowbit.QuantConfig.float32())(x, w), ref(x, w))
    cfg = lowbit.QuantConfig()
    y, vjp = jax.vjp(conv(cfg), x, w)
    g = jax.random.normal(k3, y.shape) * 1e-2
    dx, dw = vjp(g)
    A = jnp.asarray(ref_quant_operands(x, w, cfg)[0], jnp.float32)
    W = jnp.asarray(ref_quant_operands(x, w, cfg)[1], jnp.float32)
    # float32 convolutions in possibly different orders (XLA picks the algorithm): Higham's bound
    # over each contraction, in ulps of the same convolution of absolute values (the sum of
    # |terms|); the contractions run over 3x3x3 taps forward, 3x3x4 for dx, 2x9x9 for dw
    ab = jnp.abs
    assert_close_ulps(y, ref(A, W), ulps=dot_ulps(27), magnitude=ref(ab(A), ab(W)))
    _, ref_vjp_e = jax.vjp(ref, A, W)
    _, ref_vjp_abs = jax.vjp(ref, ab(A), ab(W))
    Ge = jnp.asarray(ref_quant_grad(g, cfg, "even"), jnp.float32)
    Go = jnp.asarray(ref_quant_grad(g, cfg, "odd"), jnp.float32)
    assert_close_ulps(dx, ref_vjp_e(Ge)[0], ulps=dot_ulps(36), magnitude=ref_vjp_abs(ab(Ge))[0])
    assert_close_ulps(dw, ref_vjp_e(Go)[1], ulps=dot_ulps(162), magnitude=ref_vjp_abs(ab(Go))[1])
    t = jax.jvp(conv(cfg), (x, w), (x * 0.1, w))[1]
    assert_close_ulps(
        t,
        ref(x * 0.1, W) + ref(A, w),
        ulps=dot_ulps(27) + 2,
        magnitude=ref(ab(x * 0.1), ab(W)) + ref(ab(A), ab(w)),
    )


def test_nnx_layers_grad_and_jvp_and_dtype():
    cfg = lowbit.QuantConfig(activations=UINT4, activation_scaling="pact", pact_init=2.0)
    lin = lowbit.nnx.Linear(5, 3, rngs=nnx.Rngs(0), config=cfg)
    conv = lowbit.nnx.Conv(1, 2, (3, 3), padding="SAME", rngs=nnx.Rngs(1), config=cfg)
    x = jax.random.uniform(jax.random.key(0), (4, 5))
    assert lin(x).shape == (4, 3) and lin(x.astype(jnp.bfloat16)).dtype == jnp.bfloat16
    assert conv(jnp.ones((2, 6, 6, 1))).shape == (2, 6, 6, 2)
    graph, params, rest = nnx.split(lin, nnx.Param, ...)
    p = params.to_pure_dict()
    assert set(p) == {"kernel", "bias", "activation_clip"}

    def f(p):
        return jnp.sum(nnx.merge(graph, nnx.State(p), rest)(x) ** 2)

    g = jax.grad(f)(p)
    assert all(bool(jnp.all(jnp.isfinite(v))) for v in jax.tree.leaves(g))
    t = jax.jvp(f, (p,), (jax.tree.map(jnp.ones_like, p),))[1]
    assert np.isfinite(float(t))
    with pytest.raises(TypeError, match="QuantConfig"):
        lowbit.nnx.Linear(2, 2, rngs=nnx.Rngs(0), config="int4")
    with pytest.raises(ValueError, match="kernel_size"):
        lowbit.nnx.Conv(1, 2, (0, 3), rngs=nnx.Rngs(0))


@pytest.mark.parametrize(
    "kwargs,err,match",
    [
        (dict(weights="INT4"), TypeError, "weights='INT4'"),
        (dict(weight_scaling="mean"), ValueError, "weight_scaling='mean'"),
        (dict(weights=lowbit.E2M1), ValueError, "sawb"),
        (dict(activation_scaling="minmax"), ValueError, "activation_scaling='minmax'"),
        (
            dict(activations=lowbit.E2M1, activation_scaling="pact"),
            ValueError,
            "integer activation",
        ),
        (dict(gradient_scaling="sqrt"), ValueError, "gradient_scaling='sqrt'"),
        (dict(gradient_rounding="up"), ValueError, "gradient_rounding='up'"),
        (dict(gradients=lowbit.E2M1), ValueError, "two_phase=False"),
        (dict(two_phase=1), TypeError, "two_phase=1"),
        (dict(seed=1.5), TypeError, "seed=1.5"),
        (dict(accumulation=jnp.int32), ValueError, "floating"),
        (dict(pact_init=-1.0), ValueError, "pact_init"),
    ],
)
def test_quant_config_validation(kwargs, err, match):
    with pytest.raises(err, match=match):
        lowbit.QuantConfig(**kwargs)


def test_quant_config_is_frozen_kw_only_hashable():
    cfg = lowbit.QuantConfig(gradients=lowbit.E2M1, two_phase=False)
    assert hash(cfg) == hash(lowbit.QuantConfig(gradients=lowbit.E2M1, two_phase=False))
    with pytest.raises(TypeError):
        lowbit.QuantConfig(INT4)  # type: ignore[misc]
    with pytest.raises(TypeError, match="QuantConfig"):
        lowbit.dot_general(jnp.ones((2, 2)), jnp.ones((2, 2)), DN, config=None)
