"""One check shared by the row tests: a setup's loss falls on a small fixed set in a few steps."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from beyondbp import train as _train


def assert_learns(setup, x_all, y_all, *, steps: int, batch: int, name: str) -> None:
    """Train ``setup`` for ``steps`` steps cycling through ``(x_all, y_all)`` in batches of
    ``batch``; the loss on the whole set must fall by 20% and below ``ln 10 - 0.25`` (better
    than chance by a clear margin), every step accepted, parameters still float32."""
    n = x_all.shape[0]
    step = jax.jit(_train.make_step(setup))
    loss = jax.jit(lambda p: setup.loss(setup.apply(p, x_all), y_all))
    params, state = setup.params, setup.tx.init(setup.params)
    before = float(loss(params))
    for i in range(steps):
        j = (i % (n // batch)) * batch
        params, state, ok = step(params, state, x_all[j : j + batch], y_all[j : j + batch])
        assert bool(ok)
    after = float(loss(params))
    msg = f"{name}: loss on its {n} examples {before:.3f} -> {after:.3f}"
    assert after < 0.8 * before and after < np.log(10) - 0.25, msg
    assert all(leaf.dtype == jnp.float32 for leaf in jax.tree.leaves(params))
