"""MXFP4 with Tseng et al.'s (2025) 3/4 prescale, against values computed by hand and by numpy.

OCP MX v1.0 (section 6.3) sets a block's scale to ``X = 2^(floor(log2 amax) - 2)`` for E2M1,
so ``amax / X`` lies in ``[4, 8)`` and elements above ``6 X`` saturate. Tseng, Yu and Park,
"Training LLMs with MXFP4" (arXiv 2502.20586, 2025) multiply the block by 3/4 before rounding and
divide the result by 3/4 after, so nothing saturates and stochastic rounding is unbiased.
The references here never call the function under test.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import lowbit
from lowbit import recipes
from lowbit._blocks import quantize_blocks_split

MX34 = dataclasses.replace(lowbit.MXFP4, name="MXFP4-3/4", prescale=0.75)
E2M1_GRID = np.array([0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0])


def _e2m1_nearest(r: np.ndarray) -> np.ndarray:
    """Round-to-nearest-even onto E2M1 (codes 0..7 are the grid above), saturating at 6."""
    a = np.minimum(np.abs(r), 6.0)
    d = np.abs(a[..., None] - E2M1_GRID)
    best = d.min(-1, keepdims=True)
    # among equally near grid points take the even code
    tie_even = np.where(d == best, np.arange(8) % 2, 9)
    code = np.argmin(np.where(d == best, tie_even * 16 + np.arange(8), 999), -1)
    return np.sign(r) * E2M1_GRID[code]


def _mx_reference(x: np.ndarray, prescale: float, block: int = 32) -> np.ndarray:
    """Blocks along the last axis, in float64: ``X q(prescale x / X) / prescale``."""
    x = np.asarray(x, np.float64)
    n = x.shape[-1]
    xb = np.pad(x, [(0, 0)] * (x.ndim - 1) + [(0, -n % block)]).reshape(*x.shape[:-1], -1, block)
    amax = np.abs(xb).max(-1, keepdims=True)
    scale = 2.0 ** (np.floor(np.log2(np.where(amax > 0, amax, 1.0))) - 2)
    out = _e2m1_nearest(prescale * xb / scale) * scale / prescale
    return out.reshape(*x.shape[:-1], -1)[..., :n]


def test_a_block_by_hand():
    # amax 7.5: X = 2^(2 - 2) = 1. OCP: 7.5 saturates to 6, 1.0 -> 1, -0.3 -> -0.5, 2.2 -> 2.
    # 3/4 prescale: 5.625 -> 6, 0.75 -> 1 (tie, even code), -0.225 -> 0, 1.65 -> 1.5; times 4/3.
    x = jnp.asarray([7.5, 1.0, -0.3, 2.2], jnp.float32)
    plain = np.asarray(lowbit.quantize_blocks(x, lowbit.MXFP4))
    np.testing.assert_array_equal(plain, [6.0, 1.0, -0.5, 2.0])
    got = np.asarray(lowbit.quantize_blocks(x, MX34))
    np.testing.assert_allclose(got, [8.0, 4.0 / 3.0, 0.0, 2.0], rtol=2**-23, atol=0)


@pytest.mark.parametrize("shape,axis", [((5, 70), -1), ((70, 5), 0), ((2, 3, 3, 40), -1)])
def test_matches_numpy_reference_with_partial_blocks(shape, axis):
    rng = np.random.default_rng(1)
    x = (rng.standard_normal(shape) * np.exp(2 * rng.standard_normal(shape))).astype(np.float32)
    got = np.asarray(lowbit.quantize_blocks(jnp.asarray(x), MX34, axis=axis))
    ref = np.moveaxis(_mx_reference(np.moveaxis(x, axis, -1), 0.75), -1, axis)
    np.testing.assert_allclose(got, ref, rtol=2**-22, atol=0)


def test_stochastic_rounding_is_unbiased_only_with_the_prescale():
    # 7.5 lies above 6 X = 6: the plain OCP scale clips it, so its mean stays at 6.
    x = jnp.asarray([7.5, 1.1, -0.3, 2.2] + [0.0] * 28, jnp.float32)
    keys = jax.random.split(jax.random.key(0), 4000)
    draw = jax.vmap(
        lambda k, f: lowbit.quantize_blocks(x, f, rounding="stochastic", key=k), (0, None)
    )
    mean34 = np.asarray(jnp.mean(draw(keys, MX34), 0))
    mean_plain = np.asarray(jnp.mean(draw(keys, lowbit.MXFP4), 0))
    # grid step of the prescaled element at 7.5: 2 * 4/3; 4000 draws -> std of the mean < 0.02
    np.testing.assert_allclose(mean34[:4], [7.5, 1.1, -0.3, 2.2], atol=0.06)
    assert mean_plain[0] == pytest.approx(6.0)


def test_encode_decode_and_split_agree_with_fake_quantization():
    x = jax.random.normal(jax.random.key(2), (6, 50)) * 3.0
    fq = np.asarray(lowbit.quantize_blocks(x, MX34))
    packed = lowbit.encode_blocks(x, MX34)
    np.testing.assert_array_equal(np.asarray(lowbit.decode_blocks(packed)), fq)
    assert float(packed.tensor_scale) == pytest.approx(4.0 / 3.0, rel=2**-23)
    v, t = quantize_blocks_split(x, MX34)
    np.testing.assert_allclose(np.asarray(v) * float(t), fq, rtol=2**-23, atol=0)


def test_gemm_applies_the_prescale_once_per_output():
    # input gradient dA = Q(G) Q(W)^T with both operands prescaled: (4/3)^2 on the output
    dn = (((1,), (0,)), ((), ()))
    a = jax.random.normal(jax.random.key(3), (8, 64))
    w = jax.random.normal(jax.random.key(4), (64, 40))
    g = jax.random.normal(jax.random.key(5), (8, 40))
    plain = lowbit.GemmConfig()
    cfg = lowbit.QuantConfig(
        forward=plain,
        input_gradient=lowbit.GemmConfig(lhs=MX34, rhs=MX34),
        weight_gradient=plain,
    )
    _, vjp = jax.vjp(lambda a: lowbit.dot_general(a, w, dn, config=cfg), a)
    (da,) = vjp(g)
    qg = _mx_reference(np.asarray(g), 0.75)
    qw = _mx_reference(np.asarray(w), 0.75)  # blocks along w's output axis (the last)
    ref = qg @ qw.T
    np.testing.assert_allclose(np.asarray(da), ref, rtol=1e-5, atol=1e-5 * np.abs(ref).max())


def test_bad_prescale_fails_at_construction():
    with pytest.raises(ValueError, match="prescale"):
        dataclasses.replace(lowbit.MXFP4, prescale=0.0)
    with pytest.raises(ValueError, match="prescale"):
        dataclasses.replace(lowbit.MXFP4, prescale=1.5)
    with pytest.raises(ValueError, match="power-of-two"):
        dataclasses.replace(lowbit.NVFP4, prescale=0.75)


def test_mxfp4_recipe_backward_is_tseng_2025_and_plain_is_the_format_alone():
    cfg = recipes.MXFP4_CONFIG
    for role in (cfg.input_gradient, cfg.weight_gradient):
        assert role.lhs.prescale == role.rhs.prescale == 0.75
        assert role.lhs_rounding == role.rhs_rounding == "stochastic"
    assert cfg.weight_gradient.hadamard == 32
    assert cfg.forward.lhs == cfg.forward.rhs == lowbit.MXFP4
    plain = recipes.MXFP4_PLAIN_CONFIG
    for role in (plain.forward, plain.input_gradient, plain.weight_gradient):
        assert role.lhs == role.rhs == lowbit.MXFP4 and role.lhs_rounding == "nearest"
