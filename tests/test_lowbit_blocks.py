"""Block-scaled formats (OCP MX v1.0 MXFP4, NVIDIA NVFP4), per-channel and per-tensor scales.

Expected values come from numpy float64 and ml_dtypes' float4_e2m1fn / float8_e4m3fn
/ float8_e8m0fnu casts, never from the functions under test.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest

import lowbit
from lowbit._blocks import BlockPacked

E2M1_VALUES = np.array([0, 0.5, 1, 1.5, 2, 3, 4, 6, -0.0, -0.5, -1, -1.5, -2, -3, -4, -6])
TINY = 2.0**-126  # XLA:CPU flushes float32 subnormals: the reference does the same


def _ftz(v):
    v = np.asarray(v, np.float64)
    return np.where(np.abs(v) < TINY, 0.0 * np.sign(v), v)


def _pack_nibbles(codes):
    codes = np.asarray(codes, np.uint8).reshape(-1, 2)
    return jnp.asarray(codes[:, 0] | (codes[:, 1] << 4))


def test_presets_match_published_descriptions():
    assert lowbit.MXFP4.element == lowbit.E2M1 and lowbit.MXFP4.block_size == 32
    assert lowbit.MXFP4.scale_format == lowbit.E8M0 and not lowbit.MXFP4.tensor_scale
    assert lowbit.NVFP4.element == lowbit.E2M1 and lowbit.NVFP4.block_size == 16
    assert lowbit.NVFP4.scale_format == lowbit.E4M3 and lowbit.NVFP4.tensor_scale
    np.testing.assert_array_equal(lowbit.E2M1.values(), E2M1_VALUES.astype(np.float32))
    # E8M0 against ml_dtypes: every code, 0xFF NaN.
    ref = np.arange(256, dtype=np.uint8).view(ml_dtypes.float8_e8m0fnu).astype(np.float64)
    np.testing.assert_array_equal(lowbit.E8M0.values(), ref)
    assert lowbit.MXFP4.bits_per_element == 4.25 and lowbit.NVFP4.bits_per_element == 4.5


def test_mx_decode_every_element_code_times_every_scale_code():
    # Row s holds every element code twice, with scale code s.
    codes = np.tile(np.arange(16), (256, 2))
    packed = BlockPacked(
        codes=_pack_nibbles(codes),
        scales=jnp.arange(256, dtype=jnp.uint8).reshape(1, 256, 1, 1),
        tensor_scale=jnp.float32(1.0),
        shape=(256, 32),
        fmt=lowbit.MXFP4,
        axis=-1,
        channel_axis=None,
    )
    got = np.asarray(lowbit.decode_blocks(packed))
    s = np.arange(256, dtype=np.float64)[:, None]
    with np.errstate(over="ignore"):
        ref = _ftz(E2M1_VALUES[codes] * 2.0 ** (s - 127)).astype(np.float32)
    ref[255] = np.nan  # E8M0 0xFF: the whole block is NaN, whatever its element codes
    np.testing.assert_array_equal(got, ref)
    assert np.isinf(got[254, 7]) and np.isnan(got[255]).all()


@pytest.mark.parametrize("t_dec", [1.0, 3.0 / 1024])
def test_nvfp4_decode_every_element_code_times_every_scale_code(t_dec):
    codes = np.tile(np.arange(16), (256, 1))
    packed = BlockPacked(
        codes=_pack_nibbles(codes),
        scales=jnp.arange(256, dtype=jnp.uint8).reshape(1, 256, 1, 1),
        tensor_scale=jnp.float32(t_dec),
        shape=(256, 16),
        fmt=lowbit.NVFP4,
        axis=-1,
        channel_axis=None,
    )
    got = np.asarray(lowbit.decode_blocks(packed))
    b = np.arange(256, dtype=np.uint8).view(ml_dtypes.float8_e4m3fn).astype(np.float64)[:, None]
    ref = _ftz(E2M1_VALUES[codes] * b * np.float64(np.float32(t_dec))).astype(np.float32)
    np.testing.assert_array_equal(got, ref)
    assert np.isnan(got[0x7F]).all() and np.isnan(got[0xFF]).all()


@pytest.mark.parametrize("s", [2, 3, 100, 126, 127, 128, 200, 252])
def test_mx_encode_recovers_every_element_code(s):
    # Each block holds element code c beside 6 * 2^(s-127), which pins the scale code to s.
    x = np.zeros((16, 32), np.float32)
    x[:, 0] = 6 * 2.0 ** (s - 127)
    x[:, 1] = E2M1_VALUES[np.arange(16)] * 2.0 ** (s - 127)
    p = lowbit.encode_blocks(jnp.asarray(x), lowbit.MXFP4)
    np.testing.assert_array_equal(np.asarray(p.scales).ravel(), s)
    c = np.asarray(p.codes).reshape(16, 16)[:, 0] >> 4  # element 1 = high nibble of byte 0
    np.testing.assert_array_equal(c, np.where(np.arange(16) == 8, 0, np.arange(16)))  # -0 -> 0
    np.testing.assert_array_equal(np.asarray(lowbit.decode_blocks(p)), x + 0.0)


def _mx_reference(x, n=32):
    """OCP MX v1.0 section 6.3 in numpy with ml_dtypes' saturating E2M1 cast, blocks along -1."""
    out = np.empty_like(x)
    for r in range(x.shape[0]):
        for k0 in range(0, x.shape[1], n):
            blk = x[r, k0 : k0 + n]
            amax = np.max(np.abs(blk))
            e = max(np.frexp(amax)[1] - 1 - 2, -127) if amax > 0 else -127
            if not np.isfinite(amax):
                out[r, k0 : k0 + n] = np.nan
                continue
            y = (blk.astype(np.float64) / 2.0**e).astype(np.float32)
            q = y.astype(ml_dtypes.float4_e2m1fn).astype(np.float64)
            out[r, k0 : k0 + n] = _ftz(q * 2.0**e)
    return out


def _nvfp4_reference(x, tile=(16, 1)):
    """NVFP4 as in Transformer Engine's reference quantizer, numpy float32 + ml_dtypes casts."""
    f = np.float32
    amax_t = f(np.max(np.abs(x)))
    enc_t = f(448 * 6) / amax_t if amax_t > 0 else f(1)
    dec_t = f(1) / enc_t
    out = np.empty_like(x)
    n, b = tile
    for r0 in range(0, x.shape[0], b):
        for k0 in range(0, x.shape[1], n):
            blk = x[r0 : r0 + b, k0 : k0 + n]
            sb = (f(np.max(np.abs(blk)) / f(6)) * enc_t).astype(ml_dtypes.float8_e4m3fn).astype(f)
            enc = f(1) / (sb * dec_t) if sb > 0 else f(0)
            q = (blk * enc).astype(ml_dtypes.float4_e2m1fn).astype(f)
            out[r0 : r0 + b, k0 : k0 + n] = (q * sb) * dec_t
    return out


@pytest.mark.parametrize("cols", [64, 70, 5])  # whole blocks, a partial last block, one short block
def test_mxfp4_matches_reference_with_partial_and_zero_blocks(cols):
    x = np.array(jax.random.normal(jax.random.key(cols), (6, cols)), np.float32)
    x *= np.float32(2.0) ** np.arange(-8, 16, 4)[:, None].astype(np.float32)  # rows span 2^24
    x[2] = 0.0  # all-zero blocks
    x[3, :3] = [7.0, 1.0, -6.9]  # 7 and -6.9 saturate to +-6 under scale 1
    x[3, 3:] = 0.0
    got = np.asarray(lowbit.quantize_blocks(jnp.asarray(x), lowbit.MXFP4))
    np.testing.assert_array_equal(got, _mx_reference(x))
    assert got[3, 0] == 6.0 and got[3, 2] == -6.0
    p = lowbit.encode_blocks(jnp.asarray(x), lowbit.MXFP4)
    assert p.scales.shape == (1, 6, -(-cols // 32), 1)
    np.testing.assert_array_equal(np.asarray(p.scales)[0, 2], 0)  # zero block: 2^-127, code 0
    np.testing.assert_array_equal(np.asarray(lowbit.decode_blocks(p)), got)


@pytest.mark.parametrize(
    "shape,tile",
    [((8, 48), (16, 1)), ((5, 37), (16, 1)), ((32, 48), (16, 16)), ((20, 40), (16, 16))],
)
def test_nvfp4_matches_reference(shape, tile):
    x = np.array(jax.random.laplace(jax.random.key(1), shape), np.float32)
    x[1] = 0.0
    fmt = (
        lowbit.NVFP4
        if tile == (16, 1)
        else lowbit.ScaledFormat(
            name="NVFP4-2D",
            element=lowbit.E2M1,
            block_size=tile,
            scale_format=lowbit.E4M3,
            tensor_scale=True,
        )
    )
    got = np.asarray(lowbit.quantize_blocks(jnp.asarray(x), fmt))
    np.testing.assert_array_equal(got, _nvfp4_reference(x, tile))
    p = lowbit.encode_blocks(jnp.asarray(x), fmt)
    np.testing.assert_array_equal(np.asarray(lowbit.decode_blocks(p)), got)
    assert float(p.tensor_scale) == float(np.float32(1) / (np.float32(2688) / np.abs(x).max()))


def test_two_d_tiles_are_shared_by_a_matrix_and_its_transpose():
    fmt = lowbit.ScaledFormat(
        name="NVFP4-16x16",
        element=lowbit.E2M1,
        block_size=(16, 16),
        scale_format=lowbit.E4M3,
        tensor_scale=True,
    )
    w = jax.random.normal(jax.random.key(2), (48, 40))
    a = lowbit.quantize_blocks(w, fmt, axis=0)  # forward: contract over rows
    b = lowbit.quantize_blocks(w, fmt, axis=1)  # input gradient: contract over columns
    c = lowbit.quantize_blocks(w.T, fmt, axis=0).T
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(a, c)
    # A conv kernel HWIO tiled over (I, O) for each (h, w): the same tiles either way.
    k = jax.random.normal(jax.random.key(3), (3, 3, 32, 16))
    f = lowbit.quantize_blocks(k, fmt, axis=2, channel_axis=3)
    g = lowbit.quantize_blocks(k, fmt, axis=3, channel_axis=2)
    np.testing.assert_array_equal(f, g)


def test_nan_and_inf_make_their_block_nan_and_leave_others_alone():
    x = np.ones((2, 64), np.float32)
    x[0, 3] = np.nan
    x[1, 40] = np.inf
    for fmt, nan_code in ((lowbit.MXFP4, 0xFF), (lowbit.NVFP4, 0x7F)):
        got = np.asarray(lowbit.quantize_blocks(jnp.asarray(x), fmt))
        n = fmt.block_size
        assert np.isnan(got[0, :n]).all() and np.isnan(got[1, 32 : 32 + n]).all()
        assert np.isnan(got).sum() == 2 * n
        assert np.all(got[~np.isnan(got)] == 1.0)
        p = lowbit.encode_blocks(jnp.asarray(x), fmt)
        s = np.asarray(p.scales)[0]
        assert s[0, 0] == nan_code and s[1, 32 // n] == nan_code
        assert (s == nan_code).sum() == 2
        np.testing.assert_array_equal(np.asarray(lowbit.decode_blocks(p)), got)


def test_per_channel_and_per_tensor_float32_scales():
    w = np.asarray(jax.random.normal(jax.random.key(4), (24, 10)), np.float32)
    ch = lowbit.ScaledFormat(
        name="INT4/channel", element=lowbit.INT4, granularity="channel", scale_format=lowbit.FLOAT32
    )
    got = np.asarray(lowbit.quantize_blocks(jnp.asarray(w), ch, axis=0))  # one scale per column
    s = np.abs(w).max(axis=0, keepdims=True) / np.float32(7)
    ref = np.clip(np.round(w / s), -7, 7) * s  # np.round is half-to-even, like the format
    np.testing.assert_array_equal(got, ref.astype(np.float32))
    tn = lowbit.ScaledFormat(
        name="E2M1/tensor", element=lowbit.E2M1, granularity="tensor", scale_format=lowbit.E8M0
    )
    got = np.asarray(lowbit.quantize_blocks(jnp.asarray(w), tn))
    np.testing.assert_array_equal(got, _mx_reference(w.reshape(1, -1), n=w.size).reshape(w.shape))


def test_stochastic_rounding_is_unbiased_within_a_block():
    x = jnp.asarray(np.linspace(-5.5, 5.9, 32, dtype=np.float32))
    keys = jax.random.split(jax.random.key(5), 4000)
    qs = jax.vmap(lambda k: lowbit.quantize_blocks(x, lowbit.MXFP4, rounding="stochastic", key=k))(
        keys
    )
    grid = {0.0, 0.5, 1, 1.5, 2, 3, 4, 6}
    assert set(np.abs(np.asarray(qs)).ravel().tolist()) <= grid  # scale 1 for amax 5.9
    # Standard error of the mean per element is at most (grid step / 2) / sqrt(4000) = 0.016.
    np.testing.assert_allclose(np.asarray(qs.mean(0)), np.asarray(x), atol=0.08)


def test_bad_inputs_fail_at_construction_or_call():
    with pytest.raises(ValueError, match="cannot hold the range"):
        lowbit.ScaledFormat(name="x", element=lowbit.E2M1, scale_format=lowbit.E2M1)
    with pytest.raises(ValueError, match="cannot hold the range"):
        lowbit.ScaledFormat(name="x", element=lowbit.E2M1, scale_format=lowbit.INT8)
    with pytest.raises(ValueError, match="tensor_scale"):
        lowbit.ScaledFormat(
            name="x", element=lowbit.E2M1, scale_format=lowbit.E8M0, tensor_scale=True
        )
    with pytest.raises(ValueError, match="block_size"):
        lowbit.ScaledFormat(name="x", element=lowbit.E2M1, block_size=0)
    with pytest.raises(TypeError, match="quantized"):
        lowbit.ScaledFormat(name="x", element=lowbit.FLOAT32)
    strict = lowbit.ScaledFormat(name="x", element=lowbit.E2M1, partial_blocks="error")
    with pytest.raises(ValueError, match="does not divide"):
        lowbit.quantize_blocks(jnp.ones((2, 40)), strict)
    with pytest.raises(TypeError, match="ScaledFormat"):
        lowbit.quantize_blocks(jnp.ones(4), lowbit.E2M1)
    with pytest.raises(ValueError, match="key"):
        lowbit.quantize_blocks(jnp.ones(4), lowbit.MXFP4, rounding="stochastic")


@pytest.mark.parametrize(
    "fmt",
    [
        lowbit.MXFP4,
        lowbit.NVFP4,
        lowbit.ScaledFormat(
            name="INT4/channel",
            element=lowbit.INT4,
            granularity="channel",
            scale_format=lowbit.FLOAT32,
        ),
    ],
    ids=lambda f: f.name,
)
def test_blocks_along_leading_axes_equal_blocks_along_the_last(fmt):
    # Leading (consecutive) axes are blocked in place, the last axis after a reshape: the
    # same blocks either way, flattened in axis order.
    x = jax.random.normal(jax.random.key(10), (40, 3, 5))
    a = lowbit.quantize_blocks(x, fmt, axis=0)
    b = jnp.moveaxis(lowbit.quantize_blocks(jnp.moveaxis(x, 0, -1), fmt, axis=-1), -1, 0)
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(lowbit.decode_blocks(lowbit.encode_blocks(x, fmt, axis=0)), a)
    y = jax.random.normal(jax.random.key(11), (6, 8, 5))
    c = lowbit.quantize_blocks(y, fmt, axis=(0, 1))
    d = lowbit.quantize_blocks(y.reshape(48, 5).T, fmt, axis=-1).T.reshape(6, 8, 5)
    np.testing.assert_array_equal(c, d)
