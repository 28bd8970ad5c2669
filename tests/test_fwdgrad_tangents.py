"""Tangent sampling: bit-packed Rademacher signs, Gaussian draws, the packed Gram matrix."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from _tolerance import assert_close_ulps, dot_ulps

from fwdgrad import _tangents, sample_tangents


@pytest.mark.parametrize("size", [1, 31, 32, 33, 1000])
def test_rademacher_bits_clear_the_tail(size):
    words = _tangents.rademacher_bits(jax.random.key(0), size)
    assert words.dtype == jnp.uint32 and words.shape == (-(-size // 32),)
    tail = size % 32
    if tail:
        assert int(words[-1]) >> tail == 0


def test_signs_unpack_bit_order():
    # word 0b101: bits 0 and 2 set -> entries 0 and 2 are -1
    words = jnp.array([0b101], jnp.uint32)
    s = _tangents.signs_from_bits(words, (4,), jnp.float32)
    np.testing.assert_array_equal(np.asarray(s), [-1, 1, -1, 1])


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_rademacher_values_dtype_and_balance(dtype):
    v = _tangents.sample_leaf(jax.random.key(1), (300, 200), dtype, "rademacher")
    assert v.dtype == dtype and v.shape == (300, 200)
    vals = np.asarray(v.astype(jnp.float32))
    assert set(np.unique(vals)) == {-1.0, 1.0}
    # 60000 fair signs: mean has std 1/sqrt(60000) ~ 0.0041; 5 sigma bound
    assert abs(vals.mean()) < 0.021
    # neighbouring entries (same 32-bit word) uncorrelated: std of the mean product ~ 0.0041
    assert abs((vals.reshape(-1)[:-1] * vals.reshape(-1)[1:]).mean()) < 0.021


def test_gaussian_moments():
    v = np.asarray(_tangents.sample_leaf(jax.random.key(2), (100000,), jnp.float32, "gaussian"))
    assert abs(v.mean()) < 0.02 and abs(v.var() - 1.0) < 0.03


def test_same_key_same_tangent_different_key_different():
    tree = {"a": jnp.zeros((5, 7)), "b": jnp.zeros((3,), jnp.bfloat16)}
    t1 = sample_tangents(jax.random.key(0), tree)
    t2 = sample_tangents(jax.random.key(0), tree)
    t3 = sample_tangents(jax.random.key(1), tree)
    for a, b in zip(jax.tree.leaves(t1), jax.tree.leaves(t2)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert not np.array_equal(np.asarray(t1["a"]), np.asarray(t3["a"]))
    assert t1["b"].dtype == jnp.bfloat16
    # leaves are drawn from different keys, not one stream cut into pieces
    assert not np.array_equal(np.asarray(t1["a"]).ravel()[:3], np.asarray(t1["b"], np.float32))


@pytest.mark.parametrize("tangent", ["rademacher", "gaussian"])
@pytest.mark.parametrize("shape", [(37,), (5, 3, 7)])
def test_gram_matches_explicit_inner_products(tangent, shape):
    keys = jax.vmap(lambda k: jax.random.fold_in(jax.random.key(3), k))(
        jnp.arange(6, dtype=jnp.uint32)
    )
    gram = _tangents.gram_leaf(keys, shape, jnp.float32, tangent)
    v = jax.jit(jax.vmap(lambda k: _tangents.sample_leaf(k, shape, jnp.float32, tangent)))(keys)
    v = np.asarray(v).reshape(6, -1).astype(np.float64)
    # float32 inner products of n terms against float64: Higham's bound in ulps of sum |v_i v_j|
    # (off-diagonal entries cancel to ~sqrt(n), so a fixed atol is not a statement about them)
    assert_close_ulps(gram, v @ v.T, ulps=dot_ulps(v.shape[1]), magnitude=np.abs(v) @ np.abs(v).T)


def test_unknown_tangent_is_rejected():
    with pytest.raises(ValueError, match=r"tangent='uniform'.*rademacher"):
        _tangents.check_tangent("uniform")
