"""forward_gradient and activity_forward_gradient as optax estimator transforms."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import fwdgrad


def _quadratic_problem():
    A = jax.random.normal(jax.random.key(0), (8, 8)) / 3.0
    params = {"a": jnp.ones((5,)), "b": jnp.full((3,), -1.0)}

    def loss_fn(p):
        v = jnp.concatenate([p["a"], p["b"]])
        return 0.5 * jnp.sum((A @ v) ** 2) + 0.5 * jnp.sum(v**2)

    return params, loss_fn


def test_update_is_the_fwd_grad_estimate_for_the_step_key():
    params, loss_fn = _quadratic_problem()
    tx = fwdgrad.forward_gradient(num_tangents=2, seed=3)
    state = tx.init(params)
    assert isinstance(state, fwdgrad.ForwardGradientState)
    upd, state1 = jax.jit(lambda s: tx.update(None, s, params, loss_fn=loss_fn))(state)
    ref = jax.jit(fwdgrad.fwd_grad(loss_fn, num_tangents=2))(
        jax.random.fold_in(jax.random.key(3), 0), params
    )
    for a, b in zip(jax.tree.leaves(upd), jax.tree.leaves(ref)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6)
    assert int(state1.count) == 1
    upd2, _ = jax.jit(lambda s: tx.update(None, s, params, loss_fn=loss_fn))(state1)
    assert not np.allclose(np.asarray(upd2["a"]), np.asarray(upd["a"]))  # fresh tangents each step


def test_orthogonal_with_all_directions_equals_exact_gradient():
    params, loss_fn = _quadratic_problem()
    tx = fwdgrad.forward_gradient(num_tangents=8, tangent="gaussian", aggregate="orthogonal")
    upd, _ = jax.jit(lambda s: tx.update(None, s, params, loss_fn=loss_fn))(tx.init(params))
    exact = jax.grad(loss_fn)(params)
    for a, b in zip(jax.tree.leaves(upd), jax.tree.leaves(exact)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-3, atol=1e-4)


def test_training_with_sgd_decreases_the_loss():
    params, loss_fn = _quadratic_problem()
    tx = optax.chain(
        fwdgrad.forward_gradient(num_tangents=4, aggregate="orthogonal"), optax.sgd(0.3)
    )
    state = tx.init(params)

    @jax.jit
    def step(p, s):
        u, s = tx.update(None, s, p, loss_fn=loss_fn)
        return optax.apply_updates(p, u), s

    start = float(loss_fn(params))
    for _ in range(60):
        params, state = step(params, state)
    assert float(loss_fn(params)) < 0.05 * start


@pytest.mark.parametrize(
    "kwargs,exc",
    [
        ({"num_tangents": 0}, ValueError),
        ({"tangent": "normal"}, ValueError),
        ({"aggregate": "sum"}, ValueError),
        ({"seed": 1.5}, TypeError),
        ({"num_tangents": 2.0}, TypeError),
    ],
)
def test_bad_configuration_fails_at_construction(kwargs, exc):
    with pytest.raises(exc):
        fwdgrad.forward_gradient(**kwargs)


def test_missing_loss_fn_is_a_clear_error():
    params, _ = _quadratic_problem()
    tx = fwdgrad.forward_gradient()
    with pytest.raises(ValueError, match="loss_fn"):
        tx.update(None, tx.init(params), params)


def test_inject_hyperparams_needs_static_tangent_count():
    params, loss_fn = _quadratic_problem()
    tx = optax.inject_hyperparams(fwdgrad.forward_gradient)(num_tangents=2)
    with pytest.raises(TypeError, match="static_args=\\('num_tangents',\\)"):
        jax.jit(lambda s: tx.update(None, s, params, loss_fn=loss_fn))(tx.init(params))
    tx = optax.inject_hyperparams(fwdgrad.forward_gradient, static_args=("num_tangents",))(
        num_tangents=2, seed=4
    )
    upd, _ = jax.jit(lambda s: tx.update(None, s, params, loss_fn=loss_fn))(tx.init(params))
    ref, _ = fwdgrad.forward_gradient(num_tangents=2, seed=4).update(
        None, fwdgrad.forward_gradient(num_tangents=2, seed=4).init(params), params, loss_fn=loss_fn
    )
    np.testing.assert_allclose(np.asarray(upd["a"]), np.asarray(ref["a"]), rtol=1e-6)


# --------------------------------------------------------------- activity perturbation transform


def _local_params(dtype=jnp.float32):
    from flax import nnx

    model = fwdgrad.LocalMLP((12, 16, 8, 3), rngs=nnx.Rngs(0), param_dtype=dtype)
    return nnx.split(model, nnx.Param)[1].to_pure_dict()


def test_activity_transform_reads_batch_and_matches_function():
    params = _local_params()
    x = jax.random.normal(jax.random.key(1), (10, 12))
    y = jnp.arange(10, dtype=jnp.int32) % 3
    tx = fwdgrad.activity_forward_gradient(num_tangents=2, seed=5)
    upd, state = jax.jit(lambda s: tx.update(None, s, params, batch=(x, y)))(tx.init(params))
    _, ref = jax.jit(
        lambda: fwdgrad.local_mlp_grads(
            jax.random.fold_in(jax.random.key(5), 0), params, x, y, num_tangents=2
        )
    )()
    for a, b in zip(jax.tree.leaves(upd), jax.tree.leaves(ref)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6)
    assert int(state.count) == 1


def test_activity_transform_errors():
    with pytest.raises(ValueError, match="activation='swish'"):
        fwdgrad.activity_forward_gradient(activation="swish")
    params = _local_params()
    tx = fwdgrad.activity_forward_gradient()
    with pytest.raises(ValueError, match=r"batch=\(x, labels\)"):
        tx.update(None, tx.init(params), params, loss_fn=lambda p: 0.0)
    with pytest.raises(ValueError, match="'layers'"):
        tx.init({"dense": params["layers"]})
