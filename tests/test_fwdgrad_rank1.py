"""``tangent="rank1"``: matrix tangents ``s r^T`` of two sign vectors, and their cheap products.

References: the materialised tangent (``sample_tangents``) pushed through ``jax.jvp`` (the
interpreter's ``(x s) r^T`` must give the same directional derivative), the vmap strategy
(which materialises every tangent), explicit inner products for the Gram matrix, and the
identity second moment (fixed seed, 5 standard errors). Unbiasedness against ``jax.grad`` and
the closed form ``E|g_hat - g|^2 = (n - 1)|g|^2`` are rank1's cases of
``test_fwdgrad_estimators``' statistical tests.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import fwdgrad
from fwdgrad import _jaxpr_forward, _tangents


def _params():
    ks = jax.random.split(jax.random.key(0), 5)
    return {
        "w1": jax.random.normal(ks[0], (5, 6)) * 0.5,
        "b1": jnp.full((6,), 0.1, jnp.float32),
        "w2": jax.random.normal(ks[1], (7, 6)) * 0.5,  # read transposed
        "w3": jax.random.normal(ks[2], (4, 7)) * 0.5,  # on the left of the product
        "w4": jax.random.normal(ks[3], (4, 3)) * 0.5,  # read through a bfloat16 round trip
        "s": jax.random.normal(ks[4], ()),
    }


X = jax.random.normal(jax.random.key(4), (8, 5))
Y = jax.random.normal(jax.random.key(6), (8, 3)) * 0.3


def layouts(p, x=X):
    """Every orientation in which a dense layer reads its weight."""
    h = jnp.tanh(x @ p["w1"] + p["b1"])
    h = jnp.tanh(h @ p["w2"].T)
    h = jnp.tanh((p["w3"] @ h.T).T)
    h = (h @ p["w4"].astype(jnp.bfloat16).astype(jnp.float32)) * p["s"]
    return jnp.mean((h - Y) ** 2)


def flat(tree):
    return np.concatenate([np.asarray(x, np.float64).ravel() for x in jax.tree.leaves(tree)])


def test_a_matrix_leaf_is_an_outer_product_of_signs_and_other_leaves_are_rademacher():
    key = jax.random.key(3)
    m = _tangents.sample_leaf(key, (9, 13), jnp.float32, "rank1")
    s, r = _tangents.rank1_factors(key, (9, 13), jnp.float32)
    np.testing.assert_array_equal(np.asarray(m), np.outer(s, r))
    assert set(np.unique(np.asarray(s))) == {-1.0, 1.0}
    assert set(np.unique(np.asarray(r))) == {-1.0, 1.0}
    # a kernel of more axes: signs over all but the last axis times signs over the last
    k = np.asarray(_tangents.sample_leaf(key, (3, 3, 2, 5), jnp.float32, "rank1"))
    s, r = _tangents.rank1_factors(key, (3, 3, 2, 5), jnp.float32)
    assert s.shape == (3, 3, 2) and r.shape == (5,)
    np.testing.assert_array_equal(k, np.asarray(s)[..., None] * np.asarray(r))
    for shape in [(11,), ()]:
        np.testing.assert_array_equal(
            np.asarray(_tangents.sample_leaf(key, shape, jnp.float32, "rank1")),
            np.asarray(_tangents.sample_leaf(key, shape, jnp.float32, "rademacher")),
        )


def test_second_moment_is_the_identity():
    # E[v_a v_b] = delta_ab for the 12 entries of a 3x4 leaf: 40000 draws, each entry of the
    # empirical second moment within 5 standard errors (1 / sqrt(S)) of the identity's.
    S = 40000
    keys = jax.vmap(lambda s: jax.random.fold_in(jax.random.key(8), s))(
        jnp.arange(S, dtype=jnp.uint32)
    )
    v = np.asarray(
        jax.jit(jax.vmap(lambda k: _tangents.sample_leaf(k, (3, 4), jnp.float32, "rank1")))(keys)
    ).reshape(S, -1)
    moment = v.T @ v / S
    assert np.all(np.abs(moment - np.eye(12)) < 5 / np.sqrt(S)), np.abs(moment - np.eye(12)).max()


@pytest.mark.parametrize("shape", [(6, 9), (1, 40), (37,), (3, 3, 2, 4)])
def test_gram_matches_explicit_inner_products(shape):
    keys = jax.vmap(lambda k: jax.random.fold_in(jax.random.key(3), k))(
        jnp.arange(5, dtype=jnp.uint32)
    )
    gram = _tangents.gram_leaf(keys, shape, jnp.float32, "rank1")
    v = jax.vmap(lambda k: _tangents.sample_leaf(k, shape, jnp.float32, "rank1"))(keys)
    v = np.asarray(v).reshape(5, -1).astype(np.float64)
    np.testing.assert_array_equal(np.asarray(gram), v @ v.T)  # integers: exact


def _materialised(fun, params, key, K):
    """The mean of K estimates along tangents drawn whole (``sample_tangents``), flat."""
    ref = 0.0
    for k in range(K):
        v = _tangents.sample_tangents(jax.random.fold_in(key, k), params, "rank1")
        _, d = jax.jvp(fun, (params,), (v,))
        ref = ref + float(d) * flat(v) / K
    return ref


def _drawn_shapes(monkeypatch, fun, params, tangent="rank1"):
    """The shapes of the leaves whose tangents the loop draws whole when tracing ``fun``."""
    drawn = []
    real = _jaxpr_forward._draw_one

    def spy(lazy, key, tangent):
        drawn.append(lazy.shape)
        return real(lazy, key, tangent)

    monkeypatch.setattr(_jaxpr_forward, "_draw_one", spy)
    jax.jit(fwdgrad.fwd_grad(fun, tangent=tangent, strategy="loop")).lower(
        jax.random.key(0), params
    )
    return drawn


def test_the_loop_never_forms_a_matrix_tangent_for_a_product(monkeypatch):
    # the per-tangent draw is the fallback; every matrix leaf above is read by a matmul in a
    # layout the rank-one path covers, so only the bias's and the scalar's tangents are drawn
    drawn = _drawn_shapes(monkeypatch, layouts, _params())
    assert drawn and all(len(s) < 2 for s in drawn), drawn
    # the spy does see matrix draws when they happen
    assert any(len(s) == 2 for s in _drawn_shapes(monkeypatch, layouts, _params(), "rademacher"))


def _conv(x, k, dn, **kw):
    return jax.lax.conv_general_dilated(x, k, (1, 1), "SAME", dimension_numbers=dn, **kw)


def _conv_params():
    ks = jax.random.split(jax.random.key(1), 4)
    return {
        "k1": jax.random.normal(ks[0], (3, 3, 2, 4)) * 0.3,  # HWIO on NHWC
        "b1": jnp.zeros((4,), jnp.float32),
        "k2": jax.random.normal(ks[1], (2, 2, 4, 3)) * 0.3,  # HWIO on NCHW
        "k3": jax.random.normal(ks[2], (6, 3, 3, 3)) * 0.3,  # OIHW: outputs first
        "k4": jax.random.normal(ks[3], (3, 3, 2, 6)) * 0.3,  # grouped (3 groups)
    }


CONV_X = jax.random.normal(jax.random.key(2), (2, 6, 6, 2))


def conv_net(p, x=CONV_X):
    y = jax.nn.relu(_conv(x, p["k1"], ("NHWC", "HWIO", "NHWC")) + p["b1"])
    y = jnp.tanh(_conv(jnp.transpose(y, (0, 3, 1, 2)), p["k2"], ("NCHW", "HWIO", "NCHW")))
    y = jnp.tanh(_conv(y, p["k3"], ("NCHW", "OIHW", "NCHW")))
    y = _conv(
        jnp.transpose(y, (0, 2, 3, 1)), p["k4"], ("NHWC", "HWIO", "NHWC"), feature_group_count=3
    )
    return jnp.mean(y**2)


CASES = {"dense layouts": (layouts, _params), "convolutions": (conv_net, _conv_params)}


@pytest.mark.parametrize("K", [1, 3])
@pytest.mark.parametrize("case", list(CASES))
def test_the_loop_matches_the_materialised_tangent_and_the_vmap(case, K):
    fun, make = CASES[case]
    params, key = make(), jax.random.key(11)
    ref = _materialised(fun, params, key, K)
    for strategy in ("loop", "vmap"):
        est = jax.jit(fwdgrad.fwd_grad(fun, num_tangents=K, tangent="rank1", strategy=strategy))
        np.testing.assert_allclose(
            flat(est(key, params)), ref, rtol=2e-5, atol=2e-6 * np.abs(ref).max(), err_msg=strategy
        )


def test_the_loop_convolves_one_output_channel_for_a_rank1_kernel(monkeypatch):
    # HWIO kernels take the rank-one path; the OIHW and the grouped kernel are drawn whole
    drawn = _drawn_shapes(monkeypatch, conv_net, _conv_params())
    assert sorted(drawn) == sorted([(4,), (6, 3, 3, 3), (3, 3, 2, 6)]), drawn


def test_the_transform_jits_once_and_trains():
    params = _params()
    tx = optax.chain(fwdgrad.forward_gradient(tangent="rank1", seed=0), optax.sgd(0.05))
    traces = []

    @jax.jit
    def step(p, s):
        traces.append(1)
        u, s = tx.update(None, s, p, loss_fn=layouts)
        return optax.apply_updates(p, u), s

    p, s = params, tx.init(params)
    start = float(layouts(p))
    for _ in range(300):
        p, s = step(p, s)
    assert len(traces) == 1
    assert float(layouts(p)) < 0.5 * start


def test_activity_perturbation_rejects_rank1_and_local_weight_perturbation_takes_it():
    with pytest.raises(ValueError, match="rank1 is for weight perturbation only"):
        fwdgrad.activity_forward_gradient(tangent="rank1")
    with pytest.raises(ValueError, match="rank1 is for weight perturbation only"):
        fwdgrad.local_forward_gradient(fwdgrad.MixerConfig(), tangent="rank1")
    fwdgrad.local_forward_gradient(fwdgrad.MixerConfig(), tangent="rank1", perturb="weight")
    with pytest.raises(ValueError, match="tangent='ranked'"):
        fwdgrad.forward_gradient(tangent="ranked")
