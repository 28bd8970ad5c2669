"""GradScale and SAWB against hand-computed values: no expected value comes from the function
under test.

GradScale (Sun et al., NeurIPS 2020, section 4.3): ``scale = radix^ceil(log_radix(amax /
max_value))``, the smallest power of the format's radix (2 for integer and radix-2 formats, 4
for radix-4 FP4) that puts ``amax`` at or below the format's largest value. Every row of the
tables below was worked out by hand from that formula, with the two neighbouring powers checked
(``scale / radix * max_value < amax <= scale * max_value``), so a scale one power of the radix
too large or too small, or a radix-2 step where radix 4 is due, fails.

SAWB (Choi et al., SysML 2019, eq. 4, as used for INT4 weights by Sun et al. 2020, section 5):
``alpha = c1 sqrt(E[w^2]) + c2 E[|w|]`` with ``(c1, c2) = (12.68, -12.80)`` for 4 bits and
``(3.212, -2.178)`` for 2 bits, capped at ``max|w|`` and replaced by ``max|w|`` when not
positive; the integer scale is ``alpha / max_int``. The moments of each test tensor are written
out by hand, so a halved clip (or a swapped coefficient) fails.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import lowbit

# (amax, expected scale) per format, worked by hand. Radix-4 FP4's largest value is 4^3 = 64.
RADIX4_TABLE = [
    (64.0, 1.0),  # 64/64 = 1 = 4^0 exactly
    (65.0, 4.0),  # 65/64 in (1, 4]
    (32.0, 1.0),  # 32/64 = 1/2 in (1/4, 1]: radix 4, so not 1/2
    (17.0, 1.0),  # 17/64 in (1/4, 1]
    (16.0, 0.25),  # 16/64 = 1/4 exactly
    (3.0, 1 / 16),  # 3/64 in (1/64, 1/16]
    (1.0, 1 / 64),  # 1/64 = 4^-3 exactly
    (1.5, 1 / 16),  # 1.5/64 in (4^-3, 4^-2]
    (1000.0, 16.0),  # 1000/64 = 15.6 in (4, 16]
    (1e-4, 4.0**-9),  # 1e-4/64 = 1.56e-6 in (4^-10 = 9.5e-7, 4^-9 = 3.8e-6]
]
# INT4's largest value is 7, E2M1's 6, E4M3's 448; all radix 2.
INT4_TABLE = [(7.0, 1.0), (7.5, 2.0), (3.5, 0.5), (3.6, 1.0), (0.1, 2.0**-6)]  # 0.1/7 = 0.0143
E2M1_TABLE = [(6.0, 1.0), (6.1, 2.0), (3.0, 0.5), (100.0, 32.0)]  # 100/6 = 16.7 in (16, 32]
E4M3_TABLE = [(448.0, 1.0), (449.0, 2.0), (1.0, 2.0**-8)]  # 1/448 in (2^-9, 2^-8]


def _tensor(amax: float) -> jax.Array:
    """A float32 tensor whose largest magnitude is ``amax`` (carried by a negative entry)."""
    return jnp.array([[0.25 * amax, -amax], [0.0, 0.5 * amax]], jnp.float32)


@pytest.mark.parametrize(
    "fmt,table",
    [
        (lowbit.RADIX4_FP4, RADIX4_TABLE),
        (lowbit.INT4, INT4_TABLE),
        (lowbit.E2M1, E2M1_TABLE),
        (lowbit.E4M3, E4M3_TABLE),
    ],
    ids=lambda v: getattr(v, "name", ""),
)
def test_gradscale_matches_the_hand_table(fmt, table):
    for amax, want in table:
        got = float(lowbit.compute_scale(_tensor(amax), fmt))
        assert got == want, f"{fmt.name}: amax {amax}: scale {got}, expected {want}"


def test_gradscale_of_zero_and_nonfinite_tensors_is_one():
    for x in (jnp.zeros((3,)), jnp.array([1.0, jnp.inf]), jnp.array([jnp.nan, 2.0])):
        assert float(lowbit.compute_scale(x, lowbit.RADIX4_FP4)) == 1.0


def test_delayed_gradscale_uses_the_history_max_by_hand():
    x = _tensor(1.0)  # alone it would give 4^-3
    hist = jnp.array([3.0, 20.0, 0.0], jnp.float32)  # max 20: 20/64 in (1/4, 1] -> 1
    assert float(lowbit.compute_scale(x, lowbit.RADIX4_FP4, "delayed", amax_history=hist)) == 1.0
    empty = jnp.zeros((4,), jnp.float32)  # first step: the current max, 1 -> 4^-3
    got = lowbit.compute_scale(x, lowbit.RADIX4_FP4, "delayed", amax_history=empty)
    assert float(got) == 1 / 64


def test_gradscale_inside_the_input_gradient_gemm():
    # dA = Q_even(G / s) * s @ W^T with W = I and float32 A, W, so dA is the quantized G itself.
    # G's amax is 3, so s = 4^-2 (table above) and the even (4^k) grid in units of s spans
    # 4^-3 s = 1/1024 .. 4^3 s = 4. By hand: 3/s = 48 lies between 16 and 64, nearer 64 -> 4.0;
    # 0.25/s = 4 and (1/1024)/s = 4^-3 are grid points -> unchanged; 0 -> 0. A scale 4 times
    # too small would saturate 3 at 64 * (1/64) = 1; 4 times too large would flush 1/1024.
    config = lowbit.QuantConfig(
        weights=lowbit.FLOAT32, activations=lowbit.FLOAT32, gradients=lowbit.RADIX4_FP4
    )
    dn = (((1,), (0,)), ((), ()))
    a = jnp.ones((1, 4), jnp.float32)
    w = jnp.eye(4, dtype=jnp.float32)
    g = jnp.array([[3.0, -0.25, 1 / 1024, 0.0]], jnp.float32)
    _, vjp = jax.vjp(lambda a: lowbit.dot_general(a, w, dn, config=config), a)
    (da,) = vjp(g)
    np.testing.assert_array_equal(da, np.array([[4.0, -0.25, 1 / 1024, 0.0]], np.float32))


# w: eight entries +-1 and two +-3, so E[w^2] = (8 * 1 + 2 * 9) / 10 = 2.6,
# E[|w|] = (8 * 1 + 2 * 3) / 10 = 1.4 and max|w| = 3.
SAWB_W = jnp.array([1, -1, 1, -1, 1, -1, 1, -1, 3, -3], jnp.float32)
ALPHA4 = 12.68 * math.sqrt(2.6) - 12.80 * 1.4  # 2.5259: inside (0, 3), so neither cap applies
ALPHA2 = 3.212 * math.sqrt(2.6) - 2.178 * 1.4  # 2.1300


def test_sawb_clip_by_hand():
    assert 0 < ALPHA4 < 3 and 0 < ALPHA2 < 3
    np.testing.assert_allclose(float(lowbit.sawb_scale(SAWB_W, lowbit.INT4)), ALPHA4 / 7, rtol=1e-6)
    int2 = lowbit.int_format(2)  # max_int 1
    np.testing.assert_allclose(float(lowbit.sawb_scale(SAWB_W, int2)), ALPHA2 / 1, rtol=1e-6)
    # 8 bits has no fitted coefficients: the clip is max|w| = 3
    np.testing.assert_allclose(float(lowbit.sawb_scale(SAWB_W, lowbit.INT8)), 3 / 127, rtol=1e-6)
    # the fit is capped at max|w|: one outlier 4 among zeros has E[w^2] = 4, E|w| = 1,
    # 12.68 * 2 - 12.80 = 12.56 > 4, so the clip is 4
    sparse = jnp.array([0.0, 0.0, 0.0, 4.0], jnp.float32)
    np.testing.assert_allclose(float(lowbit.sawb_scale(sparse, lowbit.INT4)), 4 / 7, rtol=1e-6)
    # a non-positive fit falls back to max|w|: +-1 gives 12.68 - 12.80 < 0, so the clip is 1
    pm1 = jnp.array([1.0, -1.0, 1.0, -1.0], jnp.float32)
    np.testing.assert_allclose(float(lowbit.sawb_scale(pm1, lowbit.INT4)), 1 / 7, rtol=1e-6)
    assert float(lowbit.sawb_scale(jnp.zeros((5,)), lowbit.INT4)) == 1.0


def test_sawb_inside_the_forward_gemm():
    # y = x @ Q(W) with x = I (float32 activations) is the quantized weight column itself.
    # By hand with s = alpha/7 = 0.36084: 1/s = 2.771 -> 3 levels -> 3s = 1.0825;
    # 3/s = 8.314 -> saturates at 7 levels -> 7s = alpha = 2.5259.
    config = lowbit.QuantConfig(
        activations=lowbit.FLOAT32, gradients=lowbit.FLOAT32, two_phase=False
    )
    dn = (((1,), (0,)), ((), ()))
    w = SAWB_W.reshape(10, 1)
    y = lowbit.dot_general(jnp.eye(10, dtype=jnp.float32), w, dn, config=config)
    s = ALPHA4 / 7
    want = np.array([3 * s, -3 * s] * 4 + [7 * s, -7 * s], np.float64).reshape(10, 1)
    np.testing.assert_allclose(np.asarray(y, np.float64), want, rtol=1e-6)


def test_amax_scale_by_hand_and_inside_the_forward_gemm():
    # a = [0, 0.5, 1.2, 3.0]: amax 3 -> s = 3/15 = 0.2 for UINT4; 0.5/0.2 = 2.5 -> 2 (ties to
    # even), 1.2/0.2 = 6, 3.0/0.2 = 15 (the top code, which a power-of-two scale 0.25 leaves
    # unused: 3.0/0.25 = 12)
    a = jnp.array([[0.0, 0.5, 1.2, 3.0]], jnp.float32)
    np.testing.assert_allclose(float(lowbit.amax_scale(a, lowbit.UINT4)), 0.2, rtol=1e-7)
    assert float(lowbit.compute_scale(a, lowbit.UINT4)) == 0.25
    np.testing.assert_allclose(float(lowbit.amax_scale(-a, lowbit.INT4)), 3.0 / 7, rtol=1e-7)
    for bad in (jnp.zeros((3,)), jnp.array([1.0, jnp.inf]), jnp.array([jnp.nan, 1.0])):
        assert float(lowbit.amax_scale(bad, lowbit.UINT4)) == 1.0
    assert float(lowbit.amax_scale(a, lowbit.FLOAT32)) == 1.0
    # per sample: the rows' own amax (3, 0.5; a zero row and a NaN row get 1)
    rows = jnp.stack([a[0], a[0] / 6, jnp.zeros(4), a[0].at[1].set(jnp.nan)])
    s = lowbit.sample_amax_scale(rows, lowbit.UINT4)
    assert s.shape == (4, 1) and s.dtype == jnp.float32
    np.testing.assert_allclose(np.asarray(s[:, 0]), [0.2, 0.5 / 15, 1.0, 1.0], rtol=1e-6)
    with pytest.raises(ValueError, match="leading sample axis"):
        lowbit.sample_amax_scale(a[0], lowbit.UINT4)
    # y = Q(a) @ I (float32 weights) is the quantized activation row itself
    config = lowbit.QuantConfig(
        weights=lowbit.FLOAT32,
        weight_scaling="max",
        activations=lowbit.UINT4,
        activation_scaling="amax",
        gradients=lowbit.FLOAT32,
        two_phase=False,
    )
    dn = (((1,), (0,)), ((), ()))
    y = lowbit.dot_general(a, jnp.eye(4, dtype=jnp.float32), dn, config=config)
    np.testing.assert_allclose(np.asarray(y), [[0.0, 0.4, 1.2, 3.0]], rtol=1e-6)
