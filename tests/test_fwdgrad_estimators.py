"""Forward-gradient estimators against independent references.

References: ``jax.grad`` (exact gradient), ``jax.jvp`` with the documented
tangent draws (the estimator's forward-mode interpreter must reproduce it
exactly), and the closed-form variances of Baydin et al. (2022) / Silver et al.
(2022). Statistical tests use fixed seeds and state their tolerances.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import fwdgrad
from beyondbp import hlo
from fwdgrad import _tangents


def _params(dtype=jnp.float32):
    k1, k2, k3 = jax.random.split(jax.random.key(0), 3)
    return {
        "w1": (jax.random.normal(k1, (4, 5)) * 0.5).astype(dtype),
        "b1": jnp.full((5,), 0.1, dtype),
        "w2": (jax.random.normal(k2, (5, 2)) * 0.5).astype(dtype),
        "s": jax.random.normal(k3, ()).astype(dtype),
    }


X = jax.random.normal(jax.random.key(7), (6, 4))
Y = jax.random.normal(jax.random.key(8), (6, 2))


def loss(p, x=X, y=Y):
    h = jnp.tanh(x.astype(p["w1"].dtype) @ p["w1"] + p["b1"])
    out = (h @ p["w2"]) * p["s"]
    return jnp.mean(((out - y.astype(out.dtype)) ** 2).astype(jnp.float32))


def jfg(*args, **kwargs):
    """``fwd_grad`` under jit (the forward-mode interpreter is slow op by op)."""
    return jax.jit(fwdgrad.fwd_grad(*args, **kwargs))


def flat(tree):
    return np.concatenate([np.asarray(x, np.float64).ravel() for x in jax.tree.leaves(tree)])


N_PARAMS = 4 * 5 + 5 + 5 * 2 + 1  # 36


# --------------------------------------------------------------- exactness of the jvp machinery


def _reference_k1(fun, key, params, *args):
    """(grad f . v) v with v drawn exactly as documented: leaf i from fold_in(fold_in(key, 0), i)."""
    v = _tangents.sample_tangents(jax.random.fold_in(key, 0), params)
    _, d = jax.jvp(lambda p: fun(p, *args), (params,), (v,))
    return jax.tree.map(
        lambda t: (d.astype(jnp.float32) * t.astype(jnp.float32)).astype(t.dtype), v
    )


def _conv_net(p, x):
    y = jax.lax.conv_general_dilated(
        x, p["k"], (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")
    )
    return jnp.mean(jax.nn.relu(y) ** 2)


def _scan_net(p, x):
    def body(h, w):
        return jnp.tanh(h @ w), None

    h, _ = jax.lax.scan(body, x, p["ws"])
    return jnp.sum(h)


def _batched_dot(p, x):
    # dot_general with batch dimensions, a parameter on the left, a parameter used twice
    y = jnp.einsum("bij,jk->bik", x, p["a"])
    z = jnp.einsum("bik,bik->b", y, y) + jnp.sum(p["a"].T @ p["a"])
    return jnp.mean(z)


@jax.jit
def _inner_jit(w, x):
    return jax.nn.softplus(x @ w.reshape(3, 4))


def _jitted_and_reshaped(p, x):
    return jnp.sum(_inner_jit(p["w"], x)) + jnp.sum(p["w"].astype(jnp.bfloat16)).astype(jnp.float32)


CASES = {
    "mlp": (loss, lambda: (_params(),)),
    "conv": (
        _conv_net,
        lambda: (
            {"k": jax.random.normal(jax.random.key(1), (3, 3, 2, 4))},
            jax.random.normal(jax.random.key(2), (2, 6, 6, 2)),
        ),
    ),
    "scan": (
        _scan_net,
        lambda: (
            {"ws": jax.random.normal(jax.random.key(3), (3, 4, 4)) * 0.5},
            jax.random.normal(jax.random.key(4), (2, 4)),
        ),
    ),
    "batched_dot": (
        _batched_dot,
        lambda: (
            {"a": jax.random.normal(jax.random.key(5), (3, 2))},
            jax.random.normal(jax.random.key(6), (2, 4, 3)),
        ),
    ),
    "jit_reshape": (
        _jitted_and_reshaped,
        lambda: (
            {"w": jax.random.normal(jax.random.key(9), (12,))},
            jax.random.normal(jax.random.key(10), (5, 3)),
        ),
    ),
}


@pytest.mark.parametrize("name", list(CASES))
def test_single_tangent_equals_jvp_reference(name):
    fun, make = CASES[name]
    args = make()
    key = jax.random.key(11)
    est = jax.jit(fwdgrad.fwd_grad(fun))(key, *args)
    ref = jax.jit(_reference_k1, static_argnums=0)(fun, key, *args)
    np.testing.assert_allclose(flat(est), flat(ref), rtol=2e-5, atol=1e-5)


@pytest.mark.parametrize("name", ["mlp", "conv", "batched_dot"])
def test_value_is_the_primal(name):
    fun, make = CASES[name]
    args = make()
    value, _ = jax.jit(fwdgrad.value_and_fwd_grad(fun, num_tangents=3))(jax.random.key(0), *args)
    np.testing.assert_allclose(float(value), float(fun(*args)), rtol=1e-6)


def test_k_tangents_equal_mean_of_single_jvps():
    params = _params()
    key = jax.random.key(4)
    K = 5
    est = jax.jit(fwdgrad.fwd_grad(loss, num_tangents=K))(key, params)
    ref = np.zeros(N_PARAMS)
    for k in range(K):
        v = _tangents.sample_tangents(jax.random.fold_in(key, k), params)
        _, d = jax.jvp(loss, (params,), (v,))
        ref += float(d) * flat(v) / K
    np.testing.assert_allclose(flat(est), ref, rtol=1e-5, atol=1e-6)


def test_chunked_tangents_equal_one_vmap():
    params = _params()
    a = jfg(loss, num_tangents=7)(jax.random.key(1), params)
    b = jfg(loss, num_tangents=7, chunk_size=3)(jax.random.key(1), params)
    np.testing.assert_allclose(flat(a), flat(b), rtol=1e-5, atol=1e-6 * np.abs(flat(a)).max())


# --------------------------------------------------------------- statistics


@pytest.mark.parametrize("tangent", ["rademacher", "gaussian", "rank1"])
def test_unbiased_mean_of_many_estimates(tangent):
    params = _params()
    exact = flat(jax.grad(loss)(params))
    fg = fwdgrad.fwd_grad(loss, tangent=tangent)
    S = 20000
    keys = jax.vmap(lambda s: jax.random.fold_in(jax.random.key(21), s))(
        jnp.arange(S, dtype=jnp.uint32)
    )
    est = np.asarray(
        jax.jit(
            jax.vmap(lambda k: jnp.concatenate([x.ravel() for x in jax.tree.leaves(fg(k, params))]))
        )(keys),
        np.float64,
    )
    mean = est.mean(0)
    # Each coordinate's standard error is sqrt(Var/S); Var_i <= |g|^2 + (n+1) g_i^2 roughly, so
    # we bound the error of every coordinate by 5 standard errors of the total |g| scale.
    se = np.sqrt(est.var(0) / S)
    assert np.all(np.abs(mean - exact) < 5 * se + 1e-6), np.max(np.abs(mean - exact) / se)
    # and overall: the averaged estimate points along the gradient
    assert np.dot(mean, exact) / (np.linalg.norm(mean) * np.linalg.norm(exact)) > 0.99


# rank1: entries +-1 and E[v v^T] = I give Rademacher's (n - 1)|g|^2 (fwdgrad._tangents)
@pytest.mark.parametrize(
    "tangent,K", [("rademacher", 1), ("gaussian", 1), ("rademacher", 4), ("rank1", 1)]
)
def test_variance_matches_theory_within_10_percent(tangent, K):
    params = _params()
    exact = jax.grad(loss)(params)
    fg = fwdgrad.fwd_grad(loss, num_tangents=K, tangent=tangent)
    emp = float(
        jax.jit(
            lambda k: fwdgrad.estimator_variance(
                fg, k, params, num_samples=6000, exact=exact, batch_size=3000
            )
        )(jax.random.key(5))
    )
    g2 = float(np.sum(flat(exact) ** 2))
    n = N_PARAMS
    theory = (n + 1 if tangent == "gaussian" else n - 1) * g2 / K
    np.testing.assert_allclose(
        float(fwdgrad.theoretical_variance(exact, tangent=tangent, num_tangents=K)),
        theory,
        rtol=1e-5,
    )
    assert abs(emp / theory - 1) < 0.10, (emp, theory)


def test_estimator_variance_without_exact_is_sample_variance():
    params = _params()
    fg = fwdgrad.fwd_grad(loss)
    exact = jax.grad(loss)(params)
    about_mean, about_exact = jax.jit(
        lambda k: (
            fwdgrad.estimator_variance(fg, k, params, num_samples=4000, batch_size=2000),
            fwdgrad.estimator_variance(
                fg, k, params, num_samples=4000, exact=exact, batch_size=2000
            ),
        )
    )(jax.random.key(3))
    about_mean, about_exact = float(about_mean), float(about_exact)
    # unbiased estimator: both measure the same trace of the covariance (within sampling noise)
    assert abs(about_mean / about_exact - 1) < 0.05


# --------------------------------------------------------------- orthogonal aggregation


def test_orthogonal_with_n_gaussian_tangents_is_exact():
    params = _params()
    exact = flat(jax.grad(loss)(params))
    est = flat(
        jax.jit(
            fwdgrad.fwd_grad(
                loss, num_tangents=N_PARAMS, tangent="gaussian", aggregate="orthogonal"
            )
        )(jax.random.key(2), params)
    )
    np.testing.assert_allclose(est, exact, rtol=1e-3, atol=1e-4 * np.abs(exact).max())


def test_orthogonal_with_n_rademacher_tangents_is_exact_when_they_span():
    params = _params()
    key = jax.random.key(2)
    V = np.stack(
        [
            flat(_tangents.sample_tangents(jax.random.fold_in(key, k), params))
            for k in range(N_PARAMS)
        ]
    )
    assert np.linalg.matrix_rank(V) == N_PARAMS  # this seed's signs span R^n (checked, not assumed)
    exact = flat(jax.grad(loss)(params))
    est = flat(jfg(loss, num_tangents=N_PARAMS, aggregate="orthogonal")(key, params))
    np.testing.assert_allclose(est, exact, rtol=1e-3, atol=1e-4 * np.abs(exact).max())


def test_orthogonal_is_the_projection_onto_the_tangents_span():
    params = _params()
    key = jax.random.key(9)
    K = 5
    V = np.stack(
        [flat(_tangents.sample_tangents(jax.random.fold_in(key, k), params)) for k in range(K)]
    )
    g = flat(jax.grad(loss)(params))
    Q, _ = np.linalg.qr(V.T)  # orthonormal basis of the span (independent of the Gram route)
    ref = Q @ (Q.T @ g)
    est = flat(jfg(loss, num_tangents=K, aggregate="orthogonal")(key, params))
    np.testing.assert_allclose(est, ref, rtol=1e-4, atol=1e-6)
    assert np.linalg.norm(est) <= np.linalg.norm(g) * (1 + 1e-5)


# --------------------------------------------------------------- API behaviour


def test_same_key_same_estimate_different_keys_differ():
    params = _params()
    fg = jax.jit(fwdgrad.fwd_grad(loss, num_tangents=2))
    a, b = fg(jax.random.key(0), params), fg(jax.random.key(0), params)
    c = fg(jax.random.key(1), params)
    np.testing.assert_array_equal(flat(a), flat(b))
    assert not np.allclose(flat(a), flat(c))


def test_raw_uint32_key_accepted():
    params = _params()
    a = jfg(loss)(jax.random.key(3), params)
    b = jfg(loss)(jax.random.key_data(jax.random.key(3)), params)
    np.testing.assert_array_equal(flat(a), flat(b))


def test_jit_traces_once():
    params = _params()
    traces = []

    @jax.jit
    def step(key, p):
        traces.append(1)
        return fwdgrad.fwd_grad(loss, num_tangents=2)(key, p)

    for s in range(3):
        step(jax.random.key(s), params)
    assert len(traces) == 1


def test_under_vmap_over_batches():
    params = _params()
    xs = jax.random.normal(jax.random.key(1), (3, 6, 4))
    fg = fwdgrad.fwd_grad(loss)
    batched = jax.jit(jax.vmap(lambda x: fg(jax.random.key(0), params, x)))(xs)
    one_fn = jax.jit(fg)
    for i in range(3):
        one = one_fn(jax.random.key(0), params, xs[i])
        np.testing.assert_allclose(
            flat(jax.tree.map(lambda t: t[i], batched)), flat(one), rtol=1e-5, atol=1e-7
        )


def test_has_aux_and_argnums_tuple():
    params = _params()

    def f(p, x, scale):
        v = loss(p, x) * scale["c"]
        return v, {"v": v}

    scale = {"c": jnp.float32(2.0)}
    (value, aux), (gp, gs) = jax.jit(
        fwdgrad.value_and_fwd_grad(f, argnums=(0, 2), has_aux=True, num_tangents=2)
    )(jax.random.key(0), params, X, scale)
    np.testing.assert_allclose(float(value), float(aux["v"]))
    assert jax.tree.structure(gp) == jax.tree.structure(params)
    assert jax.tree.structure(gs) == jax.tree.structure(scale)
    g, aux2 = jfg(f, has_aux=True)(jax.random.key(0), params, X, scale)
    assert jax.tree.structure(g) == jax.tree.structure(params) and "v" in aux2


@pytest.mark.parametrize("strategy", ["loop", "vmap"])
@pytest.mark.parametrize("tangent", ["rademacher", "gaussian"])
@pytest.mark.parametrize("aggregate", ["mean", "orthogonal"])
def test_bfloat16_params_give_bfloat16_estimates(aggregate, tangent, strategy):
    # The jvp and the combination must use the same tangent: a bfloat16 leaf's Gaussian
    # tangent drawn with 16-bit draws would be unrelated to the float32 redraw.
    params = _params(jnp.bfloat16)
    opts = dict(num_tangents=3, aggregate=aggregate, tangent=tangent, strategy=strategy)
    est = jax.jit(fwdgrad.fwd_grad(loss, **opts))(jax.random.key(0), params)
    for e, p in zip(jax.tree.leaves(est), jax.tree.leaves(params)):
        assert e.dtype == jnp.bfloat16 and e.shape == p.shape
        assert bool(jnp.all(jnp.isfinite(e.astype(jnp.float32))))
    # close to the float32 estimate along the same tangents (bfloat16 has ~3 significant digits)
    est32 = jfg(loss, **opts)(
        jax.random.key(0), jax.tree.map(lambda t: t.astype(jnp.float32), params)
    )
    assert float(fwdgrad.cosine_similarity(est, est32)) > 0.98


def test_loss_independent_of_params_gives_zero():
    params = _params()
    est = jfg(lambda p: jnp.float32(3.0))(jax.random.key(0), params)
    assert np.all(flat(est) == 0)


def test_cosine_similarity():
    a = {"x": jnp.array([1.0, 0.0]), "y": jnp.array([0.0])}
    b = {"x": jnp.array([1.0, 1.0]), "y": jnp.array([0.0])}
    np.testing.assert_allclose(float(fwdgrad.cosine_similarity(a, b)), 1 / np.sqrt(2), rtol=1e-6)
    np.testing.assert_allclose(float(fwdgrad.cosine_similarity(a, a)), 1.0, rtol=1e-6)
    zero = jax.tree.map(jnp.zeros_like, a)
    assert float(fwdgrad.cosine_similarity(zero, a)) == 0.0
    with pytest.raises(ValueError, match="structures"):
        fwdgrad.cosine_similarity(a, {"x": a["x"]})


# --------------------------------------------------------------- errors


@pytest.mark.parametrize(
    "kwargs,exc,match",
    [
        ({"num_tangents": 0}, ValueError, "num_tangents=0"),
        ({"num_tangents": -3}, ValueError, "num_tangents=-3"),
        ({"num_tangents": 2.0}, TypeError, "num_tangents=2.0"),
        ({"num_tangents": True}, TypeError, "num_tangents=True"),
        ({"tangent": "uniform"}, ValueError, "tangent='uniform'.*rademacher.*gaussian"),
        ({"aggregate": "median"}, ValueError, "aggregate='median'.*mean.*orthogonal"),
        ({"argnums": "0"}, TypeError, "argnums='0'"),
        ({"chunk_size": 0}, ValueError, "chunk_size=0"),
        ({"has_aux": 1}, TypeError, "has_aux=1"),
    ],
)
def test_bad_configuration_fails_at_construction(kwargs, exc, match):
    with pytest.raises(exc, match=match):
        fwdgrad.fwd_grad(loss, **kwargs)


def test_non_scalar_loss_rejected():
    with pytest.raises(ValueError, match=r"float scalar.*jnp.mean"):
        fwdgrad.fwd_grad(lambda p: p["w1"] * 2)(jax.random.key(0), _params())


def test_non_float_params_rejected():
    params = dict(_params(), steps=jnp.arange(3))
    with pytest.raises(TypeError, match=r"\['steps'\].*int32.*floating"):
        fwdgrad.fwd_grad(lambda p: loss({k: v for k, v in p.items() if k != "steps"}))(
            jax.random.key(0), params
        )


def test_orthogonal_more_tangents_than_parameters_rejected():
    with pytest.raises(ValueError, match="num_tangents=40 exceeds the 36 parameters"):
        fwdgrad.fwd_grad(loss, num_tangents=40, aggregate="orthogonal")(
            jax.random.key(0), _params()
        )


def test_bad_key_rejected():
    with pytest.raises(TypeError, match="not a PRNG key"):
        fwdgrad.fwd_grad(loss)(jnp.float32(0.0), _params())


# --------------------------------------------------------------- memory (compiled, not timed)


@pytest.mark.skipif(
    jax.default_backend() != "cpu",
    reason="the byte figures are XLA:CPU's buffer assignment; XLA:GPU schedules and "
    "reuses buffers differently (on an H200 backprop grew 1.3x from depth 2 "
    "to 8, not > 3x), so the bounds below are stated for CPU only",
)
@pytest.mark.parametrize("tangent", ["rademacher", "rank1"])
def test_working_memory_flat_in_depth_and_below_backprop(tangent):
    """Tangents drawn per layer and primal/tangent passes interleaved (see _estimators)."""
    temps = {}
    for depth in (2, 8):
        f, params, x = hlo.relu_mlp_probe(depth, width=256, batch=2048)
        fg = fwdgrad.fwd_grad(f, tangent=tangent)
        temps[depth] = (
            hlo.temp_bytes(lambda p, x, k: fg(k, p, x), params, x, jax.random.key(0)),
            hlo.temp_bytes(jax.grad(f), params, x),
        )
    fwd2, bp2 = temps[2]
    fwd8, bp8 = temps[8]
    assert bp8 > 3.0 * bp2  # backprop keeps every activation
    # the forward gradient grows far more slowly with depth (measured: 0.17 of backprop's growth)
    assert (fwd8 - fwd2) < 0.25 * (bp8 - bp2), temps
    assert fwd8 < 0.6 * bp8, temps
