"""Activity perturbation with local losses (Ren et al., 2023) against jax.grad references."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from _tolerance import assert_close_ulps, dot_ulps
from flax import nnx

import fwdgrad

B, D_IN, CLASSES = 8, 12, 3


def _model(dtype=jnp.float32):
    return fwdgrad.LocalMLP((D_IN, 16, 8, CLASSES), rngs=nnx.Rngs(0), param_dtype=dtype)


def _params(dtype=jnp.float32):
    return nnx.split(_model(dtype), nnx.Param)[1].to_pure_dict()


X = jax.random.normal(jax.random.key(1), (B, D_IN))
Y = jnp.arange(B, dtype=jnp.int32) % CLASSES
_GRAPHDEF, _, _REST = nnx.split(_model(), nnx.Param, ...)


def _local_total(p):
    """The sum of the blocks' local losses (stop-gradient between blocks) at parameters ``p``."""
    model = nnx.merge(_GRAPHDEF, nnx.State(p), _REST)
    return sum(
        optax.softmax_cross_entropy_with_integer_labels(l, Y).mean() for l in model.local_logits(X)
    )


def _exact_local_grads(params):
    """Gradient of the sum of local losses with stop-gradient between blocks, by backprop."""
    return jax.grad(_local_total)(params)


def _flat(tree):
    return np.concatenate([np.asarray(x, np.float64).ravel() for x in jax.tree.leaves(tree)])


def test_activity_fwd_grad_single_tangent_is_per_example_projection():
    z = jax.random.normal(jax.random.key(2), (B, 5))
    w = jax.random.normal(jax.random.key(3), (5, CLASSES))

    def losses(z):
        return optax.softmax_cross_entropy_with_integer_labels(jnp.tanh(z) @ w, Y)

    key = jax.random.key(4)
    loss, est = jax.jit(fwdgrad.activity_fwd_grad(losses))(key, z)
    exact = jax.grad(lambda z: losses(z).mean())(z)
    # independent check of the per-example structure: est_b = (exact_b . u_b) u_b for some +-1 u_b
    signs = np.sign(np.asarray(est))
    proj = np.sum(np.asarray(exact) * signs, axis=1, keepdims=True) * signs
    # The forward and reverse passes round differently, at the scale of each row's terms, not of
    # the result (which cancels): |d loss_b / d z_bj| <= (1/B) sum_c |w_jc| |p_bc - y_bc| with
    # tanh' <= 1, whose rounding is an ulp of 1 where tanh saturates. Tolerance: Higham's bound for
    # the 5-term projection plus 6 ulps for tanh', softmax and products (measured: at most 3.9
    # over 40 draws; atol=1e-7 was 2.7 ulps of this magnitude for this draw, 5.8 for others).
    z64, w64 = np.asarray(z, np.float64), np.asarray(w, np.float64)
    p = jax.nn.softmax(jnp.asarray(np.tanh(z64) @ w64, jnp.float32), axis=-1)
    resid = np.abs(np.asarray(p, np.float64) - np.eye(CLASSES)[np.asarray(Y)])
    row_mag = ((resid @ np.abs(w64).T) / B).sum(axis=1, keepdims=True)
    assert_close_ulps(est, proj, ulps=dot_ulps(5) + 6, magnitude=row_mag)
    np.testing.assert_allclose(float(loss), float(losses(z).mean()), rtol=1e-6)


def test_activity_fwd_grad_unbiased_and_low_variance():
    z = jax.random.normal(jax.random.key(2), (B, 5))
    w = jax.random.normal(jax.random.key(3), (5, CLASSES))

    def losses(z):
        return optax.softmax_cross_entropy_with_integer_labels(jnp.tanh(z) @ w, Y)

    exact = np.asarray(jax.grad(lambda z: losses(z).mean())(z), np.float64)
    g = fwdgrad.activity_fwd_grad(losses)
    S = 8000
    keys = jax.vmap(lambda s: jax.random.fold_in(jax.random.key(9), s))(
        jnp.arange(S, dtype=jnp.uint32)
    )
    est = np.asarray(jax.jit(jax.vmap(lambda k: g(k, z)[1]))(keys), np.float64)
    se = est.std(0) / np.sqrt(S)
    assert np.all(np.abs(est.mean(0) - exact) < 5 * se + 1e-7)
    # per-example Rademacher variance: sum_b (m - 1)|g_b|^2 with m = 5 entries per example
    theory = (5 - 1) * np.sum(exact**2)
    emp = np.mean(np.sum((est - exact) ** 2, axis=(1, 2)))
    assert abs(emp / theory - 1) < 0.1, (emp, theory)


def test_activity_fwd_grad_rejects_batch_mixing_loss():
    g = fwdgrad.activity_fwd_grad(lambda z: jnp.mean(z**2))
    with pytest.raises(ValueError, match="per-example losses of shape"):
        g(jax.random.key(0), jnp.ones((4, 3)))


def test_local_mlp_grads_unbiased_against_backprop_of_local_losses():
    params = _params()
    exact = _flat(_exact_local_grads(params))
    S = 6000
    keys = jax.vmap(lambda s: jax.random.fold_in(jax.random.key(7), s))(
        jnp.arange(S, dtype=jnp.uint32)
    )
    est = jax.jit(
        jax.vmap(
            lambda k: jnp.concatenate(
                [x.ravel() for x in jax.tree.leaves(fwdgrad.local_mlp_grads(k, params, X, Y)[1])]
            )
        )
    )(keys)
    est = np.asarray(est, np.float64)
    se = est.std(0) / np.sqrt(S)
    assert np.all(np.abs(est.mean(0) - exact) < 5 * se + 1e-7)
    cos = np.dot(est.mean(0), exact) / (np.linalg.norm(est.mean(0)) * np.linalg.norm(exact))
    assert cos > 0.99


def test_local_losses_match_model():
    params = _params()
    losses, grads = jax.jit(lambda: fwdgrad.local_mlp_grads(jax.random.key(0), params, X, Y))()
    model = _model()
    ref = [
        float(optax.softmax_cross_entropy_with_integer_labels(l, Y).mean())
        for l in model.local_logits(X)
    ]
    np.testing.assert_allclose(np.asarray(losses), ref, rtol=1e-5)
    assert jax.tree.structure(grads) == jax.tree.structure(params)


@pytest.mark.parametrize("normalize", [True, False])
def test_apply_matches_nnx_model(normalize):
    model = fwdgrad.LocalMLP((D_IN, 16, 8, CLASSES), rngs=nnx.Rngs(0), normalize=normalize)
    params = nnx.split(model, nnx.Param)[1].to_pure_dict()
    np.testing.assert_allclose(
        np.asarray(fwdgrad.local_mlp_apply(params, X, normalize=normalize)),
        np.asarray(model(X)),
        rtol=1e-5,
        atol=1e-6,
    )
    np.testing.assert_allclose(
        np.asarray(model(X)), np.asarray(model.local_logits(X)[-1]), rtol=1e-6
    )


def test_bfloat16_params_keep_dtype():
    params = _params(jnp.bfloat16)
    _, grads = jax.jit(lambda: fwdgrad.local_mlp_grads(jax.random.key(0), params, X, Y))()
    for g, p in zip(jax.tree.leaves(grads), jax.tree.leaves(params)):
        assert g.dtype == jnp.bfloat16 and g.shape == p.shape


def test_activity_perturbation_has_lower_variance_than_weight_perturbation():
    """Ren et al.'s point: perturbing activations divides the variance by about the fan-in."""
    params = _params()
    exact = _exact_local_grads(params)
    g = np.sum(_flat(exact) ** 2)

    wp = fwdgrad.fwd_grad(_local_total)
    ap = lambda k, p: fwdgrad.local_mlp_grads(k, p, X, Y)[1]
    v_w, v_a = jax.jit(
        lambda k: (
            fwdgrad.estimator_variance(wp, k, params, num_samples=500, exact=exact),
            fwdgrad.estimator_variance(ap, k, params, num_samples=500, exact=exact),
        )
    )(jax.random.key(1))
    assert float(v_a) < 0.2 * float(v_w), (float(v_a) / g, float(v_w) / g)


def test_local_mlp_widths_validated():
    with pytest.raises(ValueError, match="widths"):
        fwdgrad.LocalMLP((784, 10), rngs=nnx.Rngs(0))


# --- ReLU-masked tangents and group-wise local losses (Ren et al., 2023, secs. 3-4) ---

WIDTH = 8


def _eq_model():
    """Equal hidden widths, so one num_groups can be the width of every block."""
    return fwdgrad.LocalMLP((D_IN, WIDTH, WIDTH, CLASSES), rngs=nnx.Rngs(3))


def _eq_params():
    return nnx.split(_eq_model(), nnx.Param)[1].to_pure_dict()


def _reference_local_grads(params):
    """Independent reference: jax.grad of the summed local losses, written out by hand
    (stop_gradient between blocks, layer norm on later blocks' inputs), not via LocalMLP."""

    def total(p):
        h, out = X, 0.0
        for i in sorted(p["layers"]):
            if i > 0:
                h = jax.lax.stop_gradient(h)
                h = (h - h.mean(-1, keepdims=True)) * jax.lax.rsqrt(h.var(-1, keepdims=True) + 1e-5)
            h = jax.nn.relu(h @ p["layers"][i]["kernel"] + p["layers"][i]["bias"])
            logits = h @ p["heads"][i]["kernel"] + p["heads"][i]["bias"]
            out = out + optax.softmax_cross_entropy_with_integer_labels(logits, Y).mean()
        return out

    return jax.grad(total)(params)


def _sample_layers(params, num_samples, seed, **kw):
    """Block-weight estimates for num_samples keys, flattened, float64 (heads left out:
    their estimator does not depend on num_groups)."""
    keys = jax.vmap(lambda s: jax.random.fold_in(jax.random.key(seed), s))(
        jnp.arange(num_samples, dtype=jnp.uint32)
    )
    est = jax.jit(
        jax.vmap(
            lambda k: jnp.concatenate(
                [
                    x.ravel()
                    for x in jax.tree.leaves(
                        fwdgrad.local_mlp_grads(k, params, X, Y, **kw)[1]["layers"]
                    )
                ]
            )
        )
    )(keys)
    return np.asarray(est, np.float64)


def test_group_size_one_is_exact_local_gradient():
    params = _eq_params()
    exact = _reference_local_grads(params)
    for mask in (True, False):
        _, grads = jax.jit(
            lambda k: fwdgrad.local_mlp_grads(k, params, X, Y, num_groups=WIDTH, mask_tangents=mask)
        )(jax.random.key(0))
        np.testing.assert_allclose(
            _flat(grads["layers"]), _flat(exact["layers"]), rtol=1e-5, atol=1e-6
        )


def test_exact_head_grad_matches_reference():
    params = _eq_params()
    _, grads = fwdgrad.local_mlp_grads(jax.random.key(0), params, X, Y, head_grad="exact")
    np.testing.assert_allclose(
        _flat(grads["heads"]), _flat(_reference_local_grads(params)["heads"]), rtol=1e-5, atol=1e-6
    )


@pytest.mark.parametrize("num_groups", [1, 2, 4])
def test_grouped_masked_estimate_unbiased(num_groups):
    params = _eq_params()
    exact = _flat(_reference_local_grads(params)["layers"])
    S = 4000
    est = _sample_layers(params, S, 11, num_groups=num_groups)
    se = est.std(0) / np.sqrt(S)
    # 5 standard errors per coordinate (fixed seed), plus float32 rounding
    assert np.all(np.abs(est.mean(0) - exact) < 5 * se + 1e-6)


def test_variance_falls_with_groups_as_theory_says():
    """Rademacher, masked: var = sum over examples and groups of (active_g - 1)|g_g|^2, so
    halving the group size should roughly halve the variance; checked per block input z."""
    z = jax.random.normal(jax.random.key(2), (B, 16))
    w = jax.random.normal(jax.random.key(3), (16, CLASSES))
    head = {"kernel": w, "bias": jnp.zeros((CLASSES,))}
    from fwdgrad._activity import _block_losses  # the grouped loss under test

    exact = np.asarray(
        jax.grad(
            lambda z: optax.softmax_cross_entropy_with_integer_labels(jax.nn.relu(z) @ w, Y).mean()
        )(z),
        np.float64,
    )
    active = np.asarray(z) > 0
    S = 3000
    keys = jax.vmap(lambda s: jax.random.fold_in(jax.random.key(5), s))(
        jnp.arange(S, dtype=jnp.uint32)
    )
    emp = {}
    for G in (1, 4, 16):
        g = fwdgrad.activity_fwd_grad(
            lambda zz, hd: _block_losses(zz, hd, Y, jax.nn.relu, G), num_groups=G
        )
        est = np.asarray(
            jax.jit(jax.vmap(lambda k: g(k, z, head, tangent_mask=z > 0)[1]))(keys), np.float64
        )
        emp[G] = np.mean(np.sum((est - exact) ** 2, axis=(1, 2)))
        theory = sum(
            max(int(a.sum()) - 1, 0) * np.sum(e**2)
            for ab, eb in zip(active, exact)
            for a, e in zip(np.split(ab, G), np.split(eb, G))
        )
        if G == 16:
            assert emp[G] < 1e-12  # group size 1: exact
        else:
            assert abs(emp[G] / theory - 1) < 0.15, (G, emp[G], theory)
    assert emp[4] < 0.5 * emp[1]


def test_mask_reduces_variance():
    params = _eq_params()
    exact = _flat(_reference_local_grads(params)["layers"])
    v = {
        m: np.mean(np.sum((_sample_layers(params, 500, 2, mask_tangents=m) - exact) ** 2, axis=1))
        for m in (True, False)
    }
    assert v[True] < v[False], v


@pytest.mark.parametrize("bad, err", [(3, ValueError), (0, ValueError), (2.0, TypeError)])
def test_bad_num_groups_is_refused(bad, err):
    params = _eq_params()
    with pytest.raises(err, match="num_groups"):
        fwdgrad.local_mlp_grads(jax.random.key(0), params, X, Y, num_groups=bad)
    with pytest.raises(err, match="num_groups"):
        fwdgrad.activity_forward_gradient(num_groups=bad).init(params)


def test_grouped_bfloat16_keeps_dtype_and_jits_once():
    params = _params(jnp.bfloat16)
    traces = []

    @jax.jit
    def f(k):
        traces.append(1)
        return fwdgrad.local_mlp_grads(k, params, X, Y, num_groups=4)[1]

    for s in range(3):
        grads = f(jax.random.key(s))
    assert len(traces) == 1
    for g, p in zip(jax.tree.leaves(grads), jax.tree.leaves(params)):
        assert g.dtype == jnp.bfloat16 and g.shape == p.shape
        assert np.all(np.isfinite(np.asarray(g, np.float32)))
