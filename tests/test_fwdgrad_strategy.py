"""``strategy="loop" | "vmap" | "auto"``: the two evaluations of the K tangents give one estimate.

Both draw tangent k's leaf i from ``fold_in(fold_in(key, k), i)`` and combine the
same way, so they differ only by float32 rounding in the directional
derivatives (the loop stacks primal and tangents into one matmul, the vmap does
not). Tolerances: a few float32 ulps of the estimate's scale.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import fwdgrad

X = jax.random.normal(jax.random.key(7), (6, 4))
Y = jax.random.normal(jax.random.key(8), (6, 2))


def _params(dtype=jnp.float32):
    k1, k2 = jax.random.split(jax.random.key(0))
    return {
        "w1": (jax.random.normal(k1, (4, 5)) * 0.5).astype(dtype),
        "b1": jnp.full((5,), 0.1, dtype),
        "w2": (jax.random.normal(k2, (5, 2)) * 0.5).astype(dtype),
    }


def loss(p, x=X):
    h = jnp.tanh(x.astype(p["w1"].dtype) @ p["w1"] + p["b1"])
    return jnp.mean(((h @ p["w2"] - Y.astype(h.dtype)) ** 2).astype(jnp.float32))


def conv_loss(p, x):
    y = jax.lax.conv_general_dilated(
        x, p["k"], (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")
    )
    return jnp.mean(jax.nn.relu(y) @ p["w"])


CONV_P = {
    "k": jax.random.normal(jax.random.key(1), (3, 3, 2, 4)) * 0.3,
    "w": jax.random.normal(jax.random.key(2), (4,)),
}
CONV_X = jax.random.normal(jax.random.key(3), (2, 5, 5, 2))


def _close(a, b, ulps=64):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    scale = max(np.max(np.abs(b)), np.finfo(np.float32).tiny)
    np.testing.assert_allclose(a, b, rtol=0, atol=ulps * np.finfo(np.float32).eps * scale)


def _both(fun, args, **kw):
    out = {}
    for s in ("loop", "vmap"):
        out[s] = jax.jit(fwdgrad.value_and_fwd_grad(fun, strategy=s, **kw))(
            jax.random.key(5), *args
        )
    return out


@pytest.mark.parametrize(
    "K, aggregate, chunk",
    [(1, "mean", None), (3, "mean", None), (3, "orthogonal", None), (4, "mean", 3)],
)
def test_loop_and_vmap_give_the_same_estimate(K, aggregate, chunk):
    out = _both(loss, (_params(),), num_tangents=K, aggregate=aggregate, chunk_size=chunk)
    _close(out["vmap"][0], out["loop"][0], ulps=4)
    for a, b in zip(jax.tree.leaves(out["vmap"][1]), jax.tree.leaves(out["loop"][1])):
        _close(a, b)


def test_loop_and_vmap_agree_on_a_conv_net_with_aux():
    def fun(p, x):
        v = conv_loss(p, x)
        return v, {"twice": 2 * v}

    out = _both(fun, (CONV_P, CONV_X), num_tangents=2, has_aux=True)
    (v_l, aux_l), g_l = out["loop"]
    (v_v, aux_v), g_v = out["vmap"]
    _close(v_v, v_l, ulps=4)
    _close(aux_v["twice"], aux_l["twice"], ulps=4)
    for a, b in zip(jax.tree.leaves(g_v), jax.tree.leaves(g_l)):
        _close(a, b)


def test_vmap_strategy_is_unbiased_against_jax_grad():
    """The vmap path on its own (not only equal to the loop): mean of 4000 K=1 estimates."""
    p = _params()
    exact = np.concatenate([np.ravel(x) for x in jax.tree.leaves(jax.grad(loss)(p))])
    g = fwdgrad.fwd_grad(loss, strategy="vmap")
    keys = jax.random.split(jax.random.key(11), 4000)
    est = jax.jit(
        jax.vmap(lambda k: jnp.concatenate([jnp.ravel(x) for x in jax.tree.leaves(g(k, p))]))
    )(keys)
    est = np.asarray(est, np.float64)
    se = est.std(0) / np.sqrt(est.shape[0])
    assert np.all(np.abs(est.mean(0) - exact) < 5 * se + 1e-7)


def test_bfloat16_leaves_keep_dtype_under_vmap():
    g = jax.jit(fwdgrad.fwd_grad(loss, strategy="vmap", num_tangents=2))(
        jax.random.key(0), _params(jnp.bfloat16)
    )
    assert all(x.dtype == jnp.bfloat16 for x in jax.tree.leaves(g))


def test_forward_gradient_transform_strategies_agree():
    p = _params()
    updates = {}
    for s in ("loop", "vmap", "auto"):
        tx = optax.chain(fwdgrad.forward_gradient(num_tangents=3, strategy=s), optax.sgd(0.1))
        state = tx.init(p)
        step = jax.jit(lambda st: tx.update(None, st, p, loss_fn=loss))
        updates[s], _ = step(state)
    for a, b in zip(jax.tree.leaves(updates["vmap"]), jax.tree.leaves(updates["loop"])):
        _close(a, b)
    # on this CPU test machine "auto" is the loop: identical, not merely close
    for a, b in zip(jax.tree.leaves(updates["auto"]), jax.tree.leaves(updates["loop"])):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_auto_chooses_by_backend_and_size():
    small = {"w": jax.ShapeDtypeStruct((100, 100), jnp.float32)}
    huge = {"w": jax.ShapeDtypeStruct((1 << 15, 1 << 15), jnp.float32)}  # 4 GiB per tangent
    assert fwdgrad.resolve_strategy("auto", 4, small, backend="cpu") == "loop"
    assert fwdgrad.resolve_strategy("auto", 4, small, backend="gpu") == "vmap"
    assert fwdgrad.resolve_strategy("auto", 4, huge, backend="gpu") == "loop"
    assert fwdgrad.resolve_strategy("vmap", 4, huge, backend="cpu") == "vmap"
    assert fwdgrad.resolve_strategy("auto", 4, backend="tpu") == "vmap"


@pytest.mark.parametrize(
    "make",
    [
        lambda s: fwdgrad.fwd_grad(loss, strategy=s),
        lambda s: fwdgrad.value_and_fwd_grad(loss, strategy=s),
        lambda s: fwdgrad.forward_gradient(strategy=s),
        lambda s: fwdgrad.resolve_strategy(s, 1),
    ],
)
def test_unknown_strategy_refused_at_construction(make):
    with pytest.raises(ValueError, match=r"strategy='scan'.*'loop'"):
        make("scan")
