"""quantize_updates: values on the grid, unbiased, deterministic from its own key, errors."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import lowbit
from lowbit import E2M1, RADIX4_FP4


def _updates(scale=1e-3):
    k1, k2 = jax.random.split(jax.random.key(0))
    return {
        "w": jax.random.normal(k1, (64, 32)) * scale,
        "b": jax.random.normal(k2, (32,)).astype(jnp.bfloat16) * scale,
        "step": jnp.int32(3),
    }


def test_every_leaf_on_its_scaled_grid_and_dtype_kept():
    u = _updates()
    tx = lowbit.quantize_updates(RADIX4_FP4, rounding="nearest")
    q, state = tx.update(u, tx.init(u))
    for name in ("w", "b"):
        s = lowbit.compute_scale(u[name], RADIX4_FP4)
        np.testing.assert_array_equal(q[name], lowbit.quantize(u[name], RADIX4_FP4, scale=s))
        assert q[name].dtype == u[name].dtype
    assert q["step"] is u["step"]  # non-floating leaves pass through
    assert int(state.count) == 1


def test_stochastic_is_unbiased_over_steps_and_reproducible():
    u = {"w": jnp.linspace(-1e-3, 1e-3, 41)}
    tx = lowbit.quantize_updates(RADIX4_FP4, seed=11)

    @jax.jit
    def run(state):
        def body(state, _):
            q, state = tx.update(u, state)
            return state, q["w"]

        return jax.lax.scan(body, state, None, length=4000)[1]

    qs = run(tx.init(u))
    again = run(tx.init(u))
    np.testing.assert_array_equal(qs, again)
    assert not np.array_equal(qs[0], qs[1])  # new bits every step
    # unbiased: mean within 5 standard errors (worst case p=1/2, step = local grid gap)
    s = float(lowbit.compute_scale(u["w"], RADIX4_FP4))
    gap = np.maximum(np.abs(np.asarray(qs)).max(0), 1e-12)
    se = 0.5 * gap / np.sqrt(qs.shape[0])
    np.testing.assert_array_less(
        np.abs(np.asarray(qs).mean(0) - np.asarray(u["w"])), 5 * se + s * 1e-9
    )


def test_delayed_scaling_uses_history():
    u = {"w": jnp.full((4,), 1.0)}
    tx = lowbit.quantize_updates(
        RADIX4_FP4, scaling="delayed", rounding="nearest", history_length=3
    )
    state = tx.init(u)
    q1, state = tx.update(u, state)  # empty history: current amax
    np.testing.assert_array_equal(q1["w"], u["w"])
    small = {"w": jnp.full((4,), 1.0 / 64)}
    q2, state = tx.update(small, state)
    # the scale still comes from the amax 1.0 of the previous step: 1/64 is 4^-3 * 4^k-scaled
    s = lowbit.compute_scale(u["w"], RADIX4_FP4)
    np.testing.assert_array_equal(q2["w"], lowbit.quantize(small["w"], RADIX4_FP4, scale=s))
    np.testing.assert_array_equal(state.amax_history["w"], [1.0 / 64, 1.0, 0.0])


def test_chain_with_sgd_and_jit():
    u = _updates(1.0)
    del u["step"]  # optax.scale multiplies every leaf
    params = jax.tree.map(jnp.zeros_like, u)
    tx = optax.chain(lowbit.quantize_updates(E2M1, rounding="nearest"), optax.scale(-0.1))
    upd, _ = jax.jit(tx.update)(u, tx.init(params), params)
    s = lowbit.compute_scale(u["w"], E2M1)
    np.testing.assert_allclose(upd["w"], -0.1 * lowbit.quantize(u["w"], E2M1, scale=s), rtol=1e-6)


@pytest.mark.parametrize(
    "kwargs,err,match",
    [
        (dict(fmt="fp4"), TypeError, "lowbit.Format"),
        (dict(scaling="min"), ValueError, "scaling='min'"),
        (dict(rounding="floor"), ValueError, "rounding='floor'"),
        (dict(seed=0.5), TypeError, "seed=0.5"),
        (dict(history_length=0), ValueError, "history_length=0"),
    ],
)
def test_bad_construction(kwargs, err, match):
    with pytest.raises(err, match=match):
        lowbit.quantize_updates(**kwargs)
