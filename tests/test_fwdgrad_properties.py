"""Property tests (hypothesis) for the forward-gradient estimators.

* Linearity in the loss: with one key the K tangents are fixed, and both aggregates are
  linear maps of the directional derivatives ``grad f . v_k`` (Baydin et al. 2022, eq. 4;
  the projection ``V^T (V V^T)^+ V g``), so ``est(a f + b g) = a est(f) + b est(g)``.
* Exactness: K = n linearly independent tangents span R^n, so the orthogonal projection of
  the gradient onto their span is the gradient itself.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from hypothesis import assume, given, settings
from hypothesis import strategies as st

import fwdgrad

# One kernel shape (n = 6 parameters with the bias) and few static settings: each setting
# is a compilation, which costs far more than an example.
SHAPE = (2, 2)


def _params(key, rows, cols):
    k1, k2 = jax.random.split(key)
    return {"w": jax.random.normal(k1, (rows, cols)), "b": jax.random.normal(k2, (cols,))}


def _loss(p, x, y):
    """A smooth, non-quadratic scalar loss whose data are arguments (traced, not constants)."""
    h = jnp.tanh(x @ p["w"] + p["b"])
    return jnp.sum(h * y) + 0.25 * jnp.sum(p["w"] ** 2) * jnp.sum(y**2)


def _data(seed, rows, cols):
    kx, ky = jax.random.split(jax.random.key(seed))
    return jax.random.normal(kx, (3, rows)), jax.random.normal(ky, (3, cols))


@functools.cache
def _linear_combination(num_tangents, tangent, aggregate):
    """est(a f + b g), est(f), est(g) for one key: f and g are the loss on two data sets."""

    def estimate(key, p, a, b, d1, d2):
        def est(fun):
            return fwdgrad.fwd_grad(
                fun, num_tangents=num_tangents, tangent=tangent, aggregate=aggregate
            )(key, p)

        f = lambda q: _loss(q, *d1)
        g = lambda q: _loss(q, *d2)
        return est(lambda q: a * f(q) + b * g(q)), est(f), est(g)

    return jax.jit(estimate)


def _flat(tree):
    return np.concatenate([np.asarray(x, np.float64).ravel() for x in jax.tree.leaves(tree)])


@settings(max_examples=25, deadline=None)
@given(
    seed=st.integers(0, 2**31 - 2),
    a=st.floats(-4, 4, width=32),
    b=st.floats(-4, 4, width=32),
    tangent=st.sampled_from(["rademacher", "gaussian"]),
    aggregate=st.sampled_from(["mean", "orthogonal"]),
)
def test_estimate_is_linear_in_the_loss(seed, a, b, tangent, aggregate):
    shape, num_tangents = SHAPE, 3
    key = jax.random.key(seed)
    p = _params(jax.random.fold_in(key, 1), *shape)
    d1, d2 = _data(seed, *shape), _data(seed + 1, *shape)
    h, f, g = _linear_combination(num_tangents, tangent, aggregate)(
        key, p, jnp.float32(a), jnp.float32(b), d1, d2
    )
    h, f, g = _flat(h), _flat(f), _flat(g)
    # float32 rounding of a sum of terms of size |a f| + |b g|
    scale = np.abs(a * f) + np.abs(b * g)
    np.testing.assert_allclose(h, a * f + b * g, rtol=0, atol=1e-5 * (1.0 + scale.max()))


@functools.cache
def _orthogonal_and_gram(n, tangent):
    """The orthogonal estimate with K = n, and V^T V / n for the same key's tangents."""

    def run(key, p, d):
        est = fwdgrad.fwd_grad(
            lambda q: _loss(q, *d), num_tangents=n, tangent=tangent, aggregate="orthogonal"
        )(key, p)
        mean = fwdgrad.fwd_grad(
            lambda q, c: jnp.vdot(c, jnp.concatenate([jnp.ravel(x) for x in jax.tree.leaves(q)])),
            num_tangents=n,
            tangent=tangent,
        )
        # The mean estimate of the linear function e_i . p is row i of V^T V / n: the tangents
        # are independent exactly when this matrix is invertible.
        gram = jax.vmap(
            lambda c: jnp.concatenate([jnp.ravel(x) for x in jax.tree.leaves(mean(key, p, c))])
        )(jnp.eye(n))
        return est, jax.grad(lambda q: _loss(q, *d))(p), gram

    return jax.jit(run)


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), tangent=st.sampled_from(["rademacher", "gaussian"]))
def test_orthogonal_estimate_with_n_independent_tangents_is_the_gradient(seed, tangent):
    shape = SHAPE
    key = jax.random.key(seed)
    p = _params(jax.random.fold_in(key, 1), *shape)
    n = sum(x.size for x in jax.tree.leaves(p))
    est, exact, gram = _orthogonal_and_gram(n, tangent)(key, p, _data(seed, *shape))
    # Rademacher tangents are dependent with positive probability (two equal sign vectors);
    # those draws span less than R^n and are not what the property is about.
    cond = np.linalg.cond(np.asarray(gram, np.float64))
    assume(cond < 1e3)
    est, exact = _flat(est), _flat(exact)
    np.testing.assert_allclose(est, exact, rtol=0, atol=1e-6 * cond * (1.0 + np.abs(exact).max()))
