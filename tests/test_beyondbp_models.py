"""beyondbp.models: nnx modules and their pure apply functions agree; errors are clear."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from beyondbp import models


def _x(shape=(3, 28, 28, 1)):
    return jax.random.uniform(jax.random.key(0), shape)


@pytest.mark.parametrize(
    "build",
    [
        lambda: models.MLP((784, 32, 16, 10), activation="tanh", rngs=nnx.Rngs(0)),
        lambda: models.CNN(10, rngs=nnx.Rngs(0)),
    ],
)
def test_functional_matches_module(build):
    m = build()
    apply, params = models.functional(m)
    x = _x()
    np.testing.assert_allclose(apply(params, x), m(x), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(jax.jit(apply)(params, x), m(x), rtol=1e-5, atol=1e-5)


def test_mlp_layer_sizes_and_flattening():
    apply, params = models.mlp(jax.random.key(1), (784, 1024, 1024, 10))
    shapes = jax.tree.map(jnp.shape, params)
    assert shapes["layers"][0]["kernel"] == (784, 1024) and shapes["layers"][2]["kernel"] == (
        1024,
        10,
    )
    assert apply(params, _x((2, 28, 28))).shape == (2, 10)


def test_cnn_is_lenet_sized():
    _, params = models.cnn(jax.random.key(0))
    n = sum(p.size for p in jax.tree.leaves(params))
    assert 55_000 < n < 70_000  # LeNet-5 has about 61.7k parameters


def test_pure_apply_supports_grad_and_jvp():
    apply, params = models.mlp(jax.random.key(2), (784, 16, 10))
    x = _x()
    loss = lambda p: jnp.sum(apply(p, x) ** 2)
    g = jax.grad(loss)(params)
    t = jax.tree.map(jnp.ones_like, params)
    _, dd = jax.jvp(loss, (params,), (t,))
    ref = sum(jnp.sum(a) for a in jax.tree.leaves(g))  # <grad, ones>
    np.testing.assert_allclose(dd, ref, rtol=1e-4)


def test_bfloat16_params():
    m = models.MLP((784, 8, 10), rngs=nnx.Rngs(0), param_dtype=jnp.bfloat16, dtype=jnp.bfloat16)
    apply, params = models.functional(m)
    assert all(p.dtype == jnp.bfloat16 for p in jax.tree.leaves(params))
    assert apply(params, _x().astype(jnp.bfloat16)).dtype == jnp.bfloat16


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"widths": (784,)}, "at least two positive integers"),
        ({"widths": (784, 0, 10)}, "at least two positive integers"),
        ({"widths": (784, 10), "activation": "swish9"}, "activation='swish9' is not known"),
    ],
)
def test_mlp_bad_config(kwargs, match):
    with pytest.raises(ValueError, match=match):
        models.MLP(rngs=nnx.Rngs(0), **kwargs)


def test_wrong_input_size_is_clear():
    m = models.MLP((100, 10), rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="expects 100 input features"):
        m(_x())
    c = models.CNN(rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="CNN expects images of shape"):
        c(jnp.ones((2, 32, 32, 3)))
