"""The local rule: EqProp's activity difference against an independent implicit gradient."""

from __future__ import annotations

import functools
import itertools

import jax
import jax.flatten_util
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import analog


def rkey(seed):
    """rbg keys: their kernels compile ~10x faster than threefry's on XLA:CPU."""
    return jax.random.key(seed, impl="rbg")


SIZES = (6, 5, 4, 3)
B = 8


def _problem():
    params = analog.init_energy_network(rkey(0), SIZES)
    # Moderate weights and biases near 0.4 keep most units inside (0, 1), so every layer's
    # gradient is far from zero and the comparison means something.
    params = [{"kernel": p["kernel"] * 0.6, "bias": p["bias"] + 0.4} for p in params]
    x = jax.random.uniform(rkey(1), (B, SIZES[0]), jnp.float32)
    y = jax.random.randint(rkey(2), (B,), 0, SIZES[-1])
    return params, x, y


@functools.cache
def _reference():
    params, x, y = _problem()
    return params, x, y, _implicit_gradient(params, x, y)


def _implicit_gradient(params, x, y):
    """dL/dtheta of L = C(s*) at the free fixed point by the implicit function theorem.

    Written from the energy's definition, independently of analog._local: a Gauss-Seidel map
    G with G(s*) = s*, then dL/dtheta = lambda^T dG/dtheta with (I - dG/ds)^T lambda = dC/ds.
    """

    def G(s, p):
        s1, s2, s3 = s
        s1 = jnp.clip(x @ p[0]["kernel"] + p[0]["bias"] + s2 @ p[1]["kernel"].T, 0, 1)
        s3 = jnp.clip(s2 @ p[2]["kernel"] + p[2]["bias"], 0, 1)
        s2 = jnp.clip(s1 @ p[1]["kernel"] + p[1]["bias"] + s3 @ p[2]["kernel"].T, 0, 1)
        return (s1, s2, s3)

    s = tuple(jnp.zeros((B, n), jnp.float32) for n in SIZES[1:])
    s = jax.jit(lambda s, p: jax.lax.fori_loop(0, 300, lambda i, s: G(s, p), s))(s, params)
    assert max(float(jnp.max(jnp.abs(a - b))) for a, b in zip(G(s, params), s)) < 1e-6
    t = jax.nn.one_hot(y, SIZES[-1], dtype=jnp.float32)
    frac_free = float(np.mean([np.mean((np.asarray(a) > 0) & (np.asarray(a) < 1)) for a in s]))
    assert frac_free > 0.5  # the test is about a mostly unsaturated network

    def cost(s):
        return 0.5 * jnp.sum((s[-1] - t) ** 2) / B

    flat, unravel = jax.flatten_util.ravel_pytree(s)
    jac = jax.jacobian(lambda f: jax.flatten_util.ravel_pytree(G(unravel(f), params))[0])(flat)
    dc = jax.flatten_util.ravel_pytree(jax.grad(cost)(s))[0]
    lam = jnp.linalg.solve(jnp.eye(flat.shape[0], dtype=jnp.float32) - jac.T, dc)
    _, vjp = jax.vjp(lambda p: jax.flatten_util.ravel_pytree(G(s, p))[0], params)
    return vjp(lam)[0]


@pytest.mark.parametrize("centered,beta,rtol", [(True, 0.01, 2e-3), (False, 0.001, 1e-2)])
def test_activity_difference_matches_implicit_gradient(centered, beta, rtol):
    params, x, y, want = _reference()
    upd = analog.activity_difference(
        params, x, y, beta=beta, free_steps=150, nudged_steps=150, centered=centered, tol=1e-6
    )
    for k, (u, g) in enumerate(zip(upd, want)):
        for name in ("kernel", "bias"):
            err = float(jnp.linalg.norm(u[name] - g[name]))
            norm = float(jnp.linalg.norm(g[name]))
            assert norm > 1e-3, (k, name)
            assert err <= rtol * norm + 1e-6, (k, name, err, norm)


def test_centered_nudge_bias_is_second_order_one_sided_first_order():
    """Laborieux et al. (2021): the +-beta estimate's error is O(beta^2), +beta vs 0 is O(beta)."""
    params, x, y, want = _reference()
    want = jax.flatten_util.ravel_pytree(want)[0]

    def err(beta, centered):
        u = analog.activity_difference(
            params, x, y, beta=beta, free_steps=150, nudged_steps=150, centered=centered, tol=1e-6
        )
        return float(jnp.linalg.norm(jax.flatten_util.ravel_pytree(u)[0] - want))

    c1, c2 = err(0.01, True), err(0.02, True)
    o1, o2 = err(0.01, False), err(0.02, False)
    assert 3.0 < c2 / c1 < 5.5, (c1, c2)  # doubling beta quadruples the centered error
    assert 1.6 < o2 / o1 < 2.4, (o1, o2)  # and doubles the one-sided one
    assert c2 < 0.1 * o2


def test_relaxation_decreases_the_energy_and_predict_matches():
    params, x, _ = _problem()

    def energy(s):
        phi = sum(
            jnp.sum((x if k == 0 else s[k - 1]) @ p["kernel"] * s[k]) + jnp.sum(p["bias"] * s[k])
            for k, p in enumerate(params)
        )
        return 0.5 * sum(jnp.sum(v**2) for v in s) - phi

    s = tuple(jnp.zeros((B, n), jnp.float32) for n in SIZES[1:])
    z = jnp.zeros((B, SIZES[-1]), jnp.float32)
    energies = [float(energy(s))]
    for _ in range(8):
        s, _ = analog.relax(params, x, s, z, 0.0, 1)
        energies.append(float(energy(s)))
    assert all(b <= a + 1e-5 for a, b in itertools.pairwise(energies)), energies
    out = analog.predict(params, x, steps=60)
    s_long, res = analog.relax(
        params, x, tuple(jnp.zeros((B, n), jnp.float32) for n in SIZES[1:]), z, 0.0, 60
    )
    np.testing.assert_allclose(out, s_long[-1], atol=1e-6)
    assert float(res) < 1e-5


def test_relaxation_uses_the_crossbar_periphery():
    params, x, _ = _problem()
    io = analog.IOConfig(out_bits=3, out_bound=1.0)
    exact = analog.predict(params, x, steps=40)
    coarse = analog.predict(params, x, steps=40, io=io, tile_shape=(4, 4))
    assert float(jnp.max(jnp.abs(exact - coarse))) > 1e-3
    noisy1 = analog.predict(params, x, steps=40, io=analog.IOConfig(read_noise=0.05), key=rkey(1))
    noisy2 = analog.predict(params, x, steps=40, io=analog.IOConfig(read_noise=0.05), key=rkey(2))
    assert float(jnp.max(jnp.abs(noisy1 - noisy2))) > 0


def test_nonconverging_relaxation_raises_and_reports_the_residual():
    params, x, y = _problem()
    # A strongly coupled network cannot settle in two sweeps.
    big = [{"kernel": p["kernel"] * 8.0, "bias": p["bias"]} for p in params]
    with pytest.raises(analog.NonConvergenceError, match="free_steps=2"):
        analog.activity_difference(
            big, x, y, beta=0.1, free_steps=2, nudged_steps=2, tol=1e-4, on_nonconvergence="raise"
        )
    with pytest.raises(Exception, match="did not converge"):
        jax.jit(
            lambda p: analog.activity_difference(
                p, x, y, beta=0.1, free_steps=2, nudged_steps=2, tol=1e-4, on_nonconvergence="raise"
            )
        )(big)
    _, res = analog.predict(big, x, steps=2, return_residual=True)
    assert float(res) > 1e-4


@pytest.mark.parametrize("beta", [0, 0.0, 1.5, float("nan")])
def test_bad_beta_raises(beta):
    params, x, y = _problem()
    with pytest.raises(ValueError, match="beta"):
        analog.activity_difference(params, x, y, beta=beta, free_steps=5, nudged_steps=2)
    with pytest.raises(ValueError, match="beta"):
        analog.equilibrium_propagation(beta=beta, free_steps=5, nudged_steps=2)


def test_bad_network_arguments_raise():
    params, x, y = _problem()
    with pytest.raises(ValueError, match="layer_sizes"):
        analog.init_energy_network(rkey(0), (784,))
    with pytest.raises(ValueError, match="free_steps"):
        analog.activity_difference(params, x, y, beta=0.1, free_steps=0, nudged_steps=2)
    with pytest.raises(TypeError, match="energy-network params"):
        analog.predict({"w": jnp.ones((2, 2))}, x)
    with pytest.raises(ValueError, match="features"):
        analog.predict(params, jnp.ones((2, 7)))
    with pytest.raises(ValueError, match="labels"):
        analog.activity_difference(params, x, y[:3], beta=0.1, free_steps=2, nudged_steps=2)


def test_equilibrium_propagation_transform_trains_a_tiny_problem():
    """Chained with sgd, the estimator lowers the free-phase cost on a fixed batch."""
    # threefry keys here: this seed gives a network whose hard-sigmoid units are alive at
    # the start (a dead output unit gets no learning signal, with any rule).
    params = analog.init_energy_network(jax.random.key(3), (6, 8, 3))
    x = jax.random.uniform(jax.random.key(4), (16, 6), jnp.float32)
    y = jnp.argmax(x[:, :3], axis=1)
    tx = optax.chain(
        analog.equilibrium_propagation(beta=0.2, free_steps=30, nudged_steps=40), optax.sgd(0.2)
    )
    state = tx.init(params)
    t = jax.nn.one_hot(y, 3, dtype=jnp.float32)

    def cost(p):
        return float(0.5 * jnp.mean(jnp.sum((analog.predict(p, x, steps=30) - t) ** 2, 1)))

    @jax.jit
    def step(p, s):
        u, s = tx.update(None, s, p, batch=(x, y))
        return optax.apply_updates(p, u), s

    c0 = cost(params)
    for _ in range(60):
        params, state = step(params, state)
    assert cost(params) < 0.5 * c0
    ep_state = state[0]
    assert int(ep_state.count) == 60 and float(ep_state.residual) < 5e-2
    # the ledger counted 60 steps of (30 + 2 * 40) sweeps of reads
    one = analog.relaxation_counts((6, 8, 3), 16, 110)
    assert float(ep_state.ledger.steps) == 60
    assert float(ep_state.ledger.cell_reads) == pytest.approx(60 * float(one.cell_reads))


def test_relax_rejects_a_held_input_read_of_the_wrong_shape():
    params = analog.init_energy_network(jax.random.key(0), (6, 4, 3))
    x = jnp.ones((2, 6), jnp.float32)
    states = (jnp.zeros((2, 4), jnp.float32), jnp.zeros((2, 3), jnp.float32))
    target = jnp.zeros((2, 3), jnp.float32)
    held = analog.read_input(params, x)
    exact, _ = analog.relax(params, x, states, target, 0.0, 5)
    np.testing.assert_allclose(
        analog.relax(params, x, states, target, 0.0, 5, input_product=held)[0][0],
        exact[0],
        rtol=1e-6,
    )
    with pytest.raises(ValueError, match="input_product has shape"):
        analog.relax(params, x, states, target, 0.0, 5, input_product=held[:, :1])
