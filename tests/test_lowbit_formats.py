"""Formats are data: every code of every 4-bit format, derived limits, construction errors."""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest
from _ocp import OCP_DTYPES

import lowbit
from lowbit import E2M1, E4M3, E5M2, FLOAT32, INT4, INT8, RADIX4_FP4, UINT4


def test_radix4_fp4_codes_exhaustive():
    v = RADIX4_FP4.values()
    assert v.shape == (16,) and v.dtype == np.float32
    expected = [0.0] + [4.0**k for k in range(-3, 4)]
    np.testing.assert_array_equal(v[:8], np.array(expected, np.float32))
    assert np.isnan(v[8])  # the sign-only code: zero has exactly one code
    np.testing.assert_array_equal(v[9:], -np.array(expected[1:], np.float32))
    finite = v[np.isfinite(v)]
    assert len(np.unique(finite)) == 15
    assert np.sum(finite == 0) == 1
    assert RADIX4_FP4.max_value == 64.0 and RADIX4_FP4.min_value == 4.0**-3
    assert lowbit.log_format(4, 3, 4, name="RADIX4_FP4") == RADIX4_FP4


def test_radix2_fp4_codes_exhaustive():
    """LUQ's radix-2 [1,3,0] (Chmiel et al. 2023): every code, and the worst nearest-rounding
    error (1/3 of a value, at the midpoints 1.5 * 2^k, against 3/5 on radix-4's grid)."""
    v = lowbit.RADIX2_FP4.values()
    expected = [0.0] + [2.0**k for k in range(-3, 4)]
    np.testing.assert_array_equal(v[:8], np.array(expected, np.float32))
    assert np.isnan(v[8])
    np.testing.assert_array_equal(v[9:], -np.array(expected[1:], np.float32))
    assert lowbit.RADIX2_FP4.max_value == 8.0 and lowbit.RADIX2_FP4.min_value == 0.125
    for fmt, worst in ((lowbit.RADIX2_FP4, 1 / 3), (RADIX4_FP4, 3 / 5)):
        g = fmt.values()[1:8].astype(np.float64)
        x = np.geomspace(g[0], g[-1], 20001)
        xq = np.asarray(lowbit.quantize(jnp.asarray(x, jnp.float32), fmt), np.float64)
        assert np.max(np.abs(xq - x) / x) == pytest.approx(worst, rel=1e-3)


def test_int4_uint4_codes_exhaustive():
    np.testing.assert_array_equal(
        INT4.values(), np.array(list(range(8)) + list(range(-8, 0)), np.float32)
    )
    np.testing.assert_array_equal(UINT4.values(), np.arange(16, dtype=np.float32))
    assert INT4.max_value == 7.0 and UINT4.max_value == 15.0 and INT8.max_value == 127.0


def test_e2m1_codes_exhaustive():
    pos = [0, 0.5, 1, 1.5, 2, 3, 4, 6]
    v = E2M1.values()
    np.testing.assert_array_equal(v[:8], np.array(pos, np.float32))
    np.testing.assert_array_equal(v[8:], -np.array(pos, np.float32))
    assert np.signbit(v[8])  # code 8 is -0.0
    assert E2M1.max_value == 6.0 and E2M1.min_value == 0.5


@pytest.mark.parametrize("fmt,dtype", OCP_DTYPES)
def test_float_code_tables_match_ml_dtypes(fmt, dtype):
    """Every code decodes as the OCP reference (ml_dtypes) decodes the same bits."""
    n = 2**fmt.bits
    if fmt.bits == 8:
        ref = np.arange(n, dtype=np.uint8).view(dtype).astype(np.float32)
    else:
        ref = np.array([_e2m1_ref(c) for c in range(n)], np.float32)
    v = fmt.values()
    np.testing.assert_array_equal(np.isnan(v), np.isnan(ref))
    ok = ~np.isnan(ref)
    np.testing.assert_array_equal(v[ok], ref[ok])
    assert fmt.max_value == float(ml_dtypes.finfo(dtype).max)


def _e2m1_ref(code: int) -> float:
    # ml_dtypes stores float4 one per byte in the low nibble.
    return float(np.array([code], np.uint8).view(ml_dtypes.float4_e2m1fn)[0])


def test_e5m2_has_inf_codes():
    v = E5M2.values()
    assert v[0x7C] == np.inf and v[0xFC] == -np.inf


def test_formats_are_frozen_kw_only_and_hashable():
    with pytest.raises(dataclasses.FrozenInstanceError):
        INT4.bits = 3  # type: ignore[misc]
    with pytest.raises(TypeError):
        lowbit.Format("x", "int", 4)  # type: ignore[misc]  # keyword-only
    assert len({INT4, UINT4, RADIX4_FP4, E2M1, E4M3, E5M2, FLOAT32}) == 7
    assert FLOAT32.is_float32 and not RADIX4_FP4.is_float32


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(name="x", kind="fixed", bits=4), "kind='fixed'"),
        (dict(name="x", kind="int", bits=1), "bits=1"),
        (dict(name="x", kind="int", bits=9), "bits=9"),
        (dict(name="x", kind="int", bits=4, exponent_bits=2), "no exponent_bits"),
        (
            dict(name="x", kind="float", bits=4, exponent_bits=3, mantissa_bits=0, radix=3),
            "radix=3",
        ),
        (
            dict(name="x", kind="float", bits=4, exponent_bits=2, mantissa_bits=1, radix=4),
            "mantissa_bits=0",
        ),
        (dict(name="x", kind="float", bits=5, exponent_bits=2, mantissa_bits=1), "bits = 1 \\+"),
        (
            dict(name="x", kind="float", bits=4, exponent_bits=3, mantissa_bits=0, bias=200),
            "float32's",
        ),
        (
            dict(
                name="x", kind="float", bits=4, exponent_bits=2, mantissa_bits=1, nonfinite="maybe"
            ),
            "nonfinite='maybe'",
        ),
        (dict(name="x", kind="float", bits=4, exponent_bits=0, mantissa_bits=3), "exponent_bits=0"),
    ],
)
def test_bad_formats_raise_at_construction(kwargs, match):
    with pytest.raises(ValueError, match=match):
        lowbit.Format(**kwargs)


def test_bits_must_be_int():
    with pytest.raises(TypeError, match="bits"):
        lowbit.Format(name="x", kind="int", bits=4.0)  # type: ignore[arg-type]


def test_log_format_constructor_radix16():
    f = lowbit.log_format(16, 2, 2)
    v = f.values()
    np.testing.assert_array_equal(v[:4], np.array([0, 1 / 16, 1, 16], np.float32))


def test_float32_has_no_code_table():
    with pytest.raises(ValueError, match="identity"):
        FLOAT32.values()
    assert jnp.float32(FLOAT32.max_value) == jnp.finfo(jnp.float32).max
