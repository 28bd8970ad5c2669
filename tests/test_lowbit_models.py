"""4-bit reference models in beyondbp.models and the ``lowbit`` method row."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

import lowbit
from beyondbp import methods, models, train


def test_mlp4bit_same_init_as_float32_and_differentiable_both_ways():
    key = jax.random.key(0)
    apply, params = models.mlp4bit(key, (784, 32, 10))
    apply32, params32 = models.mlp(key, (784, 32, 10))
    for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(params32)):
        np.testing.assert_array_equal(a, b)
    x = jax.random.uniform(jax.random.key(1), (4, 28, 28))
    y = jnp.array([1, 2, 3, 4])
    loss = lambda p: methods.cross_entropy(apply(p, x), y)
    _g, t = jax.jit(lambda p: (jax.grad(loss)(p), jax.jvp(loss, (p,), (jax.grad(loss)(p),))[1]))(
        params
    )
    # the jvp along the gradient is the exact STE directional derivative: positive
    assert float(t) > 0
    assert not np.allclose(jax.jit(apply)(params, x), jax.jit(apply32)(params32, x))


def test_float32_config_reproduces_the_float32_model():
    key = jax.random.key(2)
    apply, params = models.mlp4bit(key, (784, 16, 10), config=lowbit.QuantConfig.float32())
    apply32, params32 = models.mlp(key, (784, 16, 10))
    x = jax.random.uniform(jax.random.key(1), (3, 784))
    np.testing.assert_array_equal(jax.jit(apply)(params, x), jax.jit(apply32)(params32, x))


def test_cnn4bit_builds_and_runs():
    apply, params = models.cnn4bit(jax.random.key(0))
    x = jax.random.uniform(jax.random.key(1), (2, 28, 28))
    assert jax.jit(apply)(params, x).shape == (2, 10)


def test_lowbit_method_is_registered_and_trains():
    m = methods.get("lowbit")
    assert m.family == "lowbit"
    cfg = methods.MethodConfig(key=jax.random.key(0), widths=(32,), steps=5)
    setup = m.build(cfg)
    step = jax.jit(train.make_step(setup))
    state = setup.tx.init(setup.params)
    x = jax.random.uniform(jax.random.key(1), (16, 28, 28))
    y = jnp.arange(16) % 10
    p, s = setup.params, state
    loss = jax.jit(lambda p: setup.loss(setup.apply(p, x), y))
    first = float(loss(p))
    for _ in range(5):
        p, s = step(p, s, x, y)[:2]  # (params, state, ok)
    assert float(loss(p)) < first
