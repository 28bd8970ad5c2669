"""NaN/inf policy of every transform: a non-finite step is refused, counted, and changes nothing.

Each transform that can receive or produce NaN/inf (the forward-gradient estimators, the
4-bit update quantizer, the device programmer and the equilibrium-propagation estimator)
returns zeros for a refused step, leaves its state as it was apart from ``nonfinite`` (the
number of refused steps), and then carries on normally. What ``lowbit.quantize`` and
``lowbit.encode`` do with NaN/inf themselves is tested in test_lowbit_rounding.py.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

import analog
import fwdgrad
import lowbit
from analog import presets

NAN, INF = jnp.float32(jnp.nan), jnp.float32(jnp.inf)


def _params():
    k1, k2 = jax.random.split(jax.random.key(0))
    return {"w": jax.random.normal(k1, (4, 3)) * 0.5, "b": jax.random.normal(k2, (3,)) * 0.1}


def _loss(p):
    return jnp.sum(jnp.tanh(p["b"] + jnp.ones((4,), jnp.float32) @ p["w"]) ** 2)


def _same(a, b) -> bool:
    """Bitwise equality of two pytrees (typed PRNG keys compared by their key data)."""

    def raw(x):
        if jnp.issubdtype(x.dtype, jax.dtypes.prng_key):
            x = jax.random.key_data(x)
        return np.asarray(x)

    la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
    return jax.tree.structure(a) == jax.tree.structure(b) and all(
        raw(x).dtype == raw(y).dtype and np.array_equal(raw(x), raw(y), equal_nan=True)
        for x, y in zip(la, lb)
    )


def _all_zero(tree) -> bool:
    return all(bool(jnp.all(x == 0)) for x in jax.tree.leaves(tree))


def _loss2(p):
    return jnp.sum(jnp.tanh(p["w"]) ** 2)


# Non-finite losses (param-dependent and not) and non-finite directional derivatives
# (a finite loss whose jvp along every tangent is NaN or inf).
BAD_LOSSES = {
    "nan_loss": lambda p: _loss(p) * NAN,
    "inf_loss": lambda p: _loss(p) + INF,
    "nan_constant_in_loss": lambda p: _loss(p) + jax.lax.stop_gradient(NAN),
    # sqrt at 0: a zero tangent gives 0 * inf = NaN, a non-zero one an infinite slope
    "nan_directional_derivative": lambda p: jnp.sum(jnp.sqrt(jnp.abs(p["w"] * 0.0))),
    "inf_directional_derivative": lambda p: (
        _loss(p) + jnp.sqrt(p["w"][0, 0] - jax.lax.stop_gradient(p["w"][0, 0]))
    ),
}


@pytest.mark.parametrize(
    "bad, aggregate",
    [(b, "mean") for b in sorted(BAD_LOSSES)] + [("inf_directional_derivative", "orthogonal")],
)
def test_forward_gradient_refuses_nonfinite_loss_or_estimate(bad, aggregate):
    params = _params()
    tx = fwdgrad.forward_gradient(num_tangents=3, aggregate=aggregate, seed=1)
    step = jax.jit(
        lambda s, p, bad_step: tx.update(
            None, s, p, loss_fn=BAD_LOSSES[bad] if bad_step else _loss
        ),
        static_argnums=2,
    )
    state = tx.init(params)
    _g, state1 = step(state, params, False)
    assert int(state1.count) == 1 and int(state1.nonfinite) == 0

    g_bad, state2 = step(state1, params, True)
    assert _all_zero(g_bad)
    assert jax.tree.map(lambda x: x.dtype, g_bad) == jax.tree.map(lambda x: x.dtype, params)
    assert _same(state2._replace(nonfinite=state1.nonfinite), state1)  # count and key kept
    assert int(state2.nonfinite) == 1

    # the next good step is the one that would have come after state1: same tangents
    g_next, state3 = step(state2, params, False)
    ref, _ = step(state1, params, False)
    assert _same(g_next, ref)
    assert int(state3.count) == 2 and int(state3.nonfinite) == 1


@pytest.mark.parametrize("slope, refused", [(6.0e4, False), (1.0e5, True)])
def test_forward_gradient_refuses_an_estimate_that_overflows_its_dtype(slope, refused):
    """Finite loss and slope, but ``d v`` beyond float16's 65504: refused, never cast to inf.

    The check runs on the K coefficients with the tangent's bound (|v| = 1 for Rademacher), so
    a slope just inside the dtype's range passes and one outside it is refused."""
    params = {"w": jnp.ones((1,), jnp.float16)}
    tx = fwdgrad.forward_gradient(num_tangents=1)
    loss = lambda p: jnp.float32(slope) * jnp.sum(p["w"].astype(jnp.float32))
    g, state = jax.jit(lambda s: tx.update(None, s, params, loss_fn=loss))(tx.init(params))
    assert g["w"].dtype == jnp.float16 and bool(jnp.all(jnp.isfinite(g["w"])))
    assert int(state.nonfinite) == int(refused) and int(state.count) == int(not refused)
    assert float(jnp.abs(g["w"][0])) == (0.0 if refused else pytest.approx(slope, rel=1e-3))


def test_forward_gradient_checks_coefficients_not_the_estimate():
    """No lax.cond and no reduction over the parameter-sized estimate in the step, so the
    estimate fuses into the optimiser's update (BENCHMARKS.md, "K = 1 on the user's path")."""
    tx = fwdgrad.forward_gradient(num_tangents=1)
    params = {"w": jnp.ones((64, 32), jnp.float32)}
    jaxpr = jax.make_jaxpr(lambda s: tx.update(None, s, params, loss_fn=_loss2))(tx.init(params))
    assert "cond" not in str(jaxpr)
    checks = [e for e in jaxpr.jaxpr.eqns if e.primitive.name == "reduce_and"]
    assert checks and all(e.invars[0].aval.size == 1 for e in checks)  # over the K = 1 slopes


def test_forward_gradient_state_without_the_counter_still_works():
    """DESIGN's ForwardGradientState(count, key) builds a valid state (nonfinite = 0)."""
    tx = fwdgrad.forward_gradient(num_tangents=2)
    state = fwdgrad.ForwardGradientState(count=jnp.zeros((), jnp.int32), key=jax.random.key(0))
    _, new = jax.jit(lambda s: tx.update(None, s, _params(), loss_fn=BAD_LOSSES["nan_loss"]))(state)
    assert int(new.nonfinite) == 1 and new.nonfinite.dtype == jnp.int32


def test_function_level_estimator_propagates_nan():
    """fwd_grad is a pure function without state: it returns what the arithmetic gives."""
    g = fwdgrad.fwd_grad(BAD_LOSSES["nan_loss"], num_tangents=2)(jax.random.key(0), _params())
    assert all(bool(jnp.all(jnp.isnan(x))) for x in jax.tree.leaves(g))


def test_activity_forward_gradient_refuses_nan_batch():
    model = fwdgrad.LocalMLP((6, 5, 3), rngs=nnx.Rngs(0))
    params = nnx.split(model, nnx.Param)[1].to_pure_dict()
    x = jax.random.normal(jax.random.key(1), (4, 6))
    y = jnp.arange(4, dtype=jnp.int32) % 3
    tx = fwdgrad.activity_forward_gradient(num_tangents=2)
    step = jax.jit(lambda s, xb: tx.update(None, s, params, batch=(xb, y)))
    state = tx.init(params)
    g, new = step(state, x.at[1, 2].set(jnp.nan))
    assert _all_zero(g) and int(new.nonfinite) == 1
    assert _same(new._replace(nonfinite=state.nonfinite), state)
    g, new = step(new, x)
    assert not _all_zero(g) and int(new.count) == 1 and int(new.nonfinite) == 1


@pytest.mark.parametrize("value", [jnp.nan, jnp.inf, -jnp.inf])
@pytest.mark.parametrize("scaling", ["max", "delayed"])
def test_quantize_updates_refuses_nonfinite_updates(value, scaling):
    params = _params()
    tx = lowbit.quantize_updates(lowbit.RADIX4_FP4, scaling=scaling, history_length=4)
    step = jax.jit(tx.update)
    state = tx.init(params)
    _, state = step(jax.tree.map(lambda p: p * 0.01, params), state)  # history holds a value
    bad = {"w": params["w"].at[2, 1].set(jnp.float32(value)), "b": params["b"]}
    q, new = step(bad, state)
    assert _all_zero(q)
    assert _same(new._replace(nonfinite=state.nonfinite), state)  # count, key, amax history
    assert int(new.nonfinite) == 1
    q, new = step(params, new)
    assert not _all_zero(q) and int(new.count) == 2 and int(new.nonfinite) == 1


def test_quantize_updates_passes_integer_leaves_through_a_refused_step():
    tx = lowbit.quantize_updates(lowbit.INT4, rounding="nearest")
    upd = {"w": jnp.asarray([1.0, jnp.nan], jnp.float32), "n": jnp.asarray([3, 4], jnp.int32)}
    q, new = jax.jit(tx.update)(upd, tx.init(upd))
    assert _all_zero(q["w"]) and np.array_equal(q["n"], upd["n"]) and int(new.nonfinite) == 1


@functools.cache
def _program():
    """One transform and one compiled update for all the cases (compiling dominates)."""
    tx = analog.program(presets.TAOX_RERAM, tile_shape=(2, 2), seed=3)
    return tx, jax.jit(tx.update)


@pytest.mark.parametrize("value", [jnp.nan, jnp.inf, -jnp.inf])
def test_program_never_pulses_devices_with_a_nonfinite_update(value):
    params = _params()
    tx, step = _program()
    state = tx.init(params)
    good = jax.tree.map(lambda p: jnp.full_like(p, 0.02), params)
    _, state = step(good, state, params)
    bad = {"w": good["w"].at[0, 0].set(jnp.float32(value)), "b": good["b"]}
    out, new = step(bad, state, params)
    assert _all_zero(out)
    assert jax.tree.map(lambda x: x.dtype, out) == jax.tree.map(lambda x: x.dtype, params)
    # tiles (conductances, variations), key, count and energy ledger are exactly as they were
    assert _same(new._replace(nonfinite=state.nonfinite), state)
    assert int(new.nonfinite) == 1
    for t in jax.tree.leaves(new.tiles, is_leaf=lambda t: isinstance(t, analog.Tiles)):
        assert bool(jnp.all(jnp.isfinite(t.g_plus))) and bool(jnp.all(jnp.isfinite(t.g_minus)))
    out, after = step(good, new, params)
    assert not _all_zero(out) and int(after.count) == 2 and int(after.nonfinite) == 1


def _energy_problem():
    params = analog.init_energy_network(jax.random.key(0, impl="rbg"), (6, 5, 3))
    x = jax.random.uniform(jax.random.key(1), (4, 6), jnp.float32)
    return params, x, jnp.asarray([0, 1, 2, 0], jnp.int32)


def test_equilibrium_propagation_refuses_nonfinite_update():
    params, x, y = _energy_problem()
    tx = analog.equilibrium_propagation(beta=0.3, free_steps=10, nudged_steps=4, tol=None)
    step = jax.jit(lambda s, p, xb: tx.update(None, s, p, batch=(xb, y)))
    state = tx.init(params)
    _, state = step(state, params, x)
    for bad_x in (x.at[0, 0].set(jnp.nan), x.at[2, 3].set(jnp.inf)):
        upd, new = step(state, params, bad_x)
        assert _all_zero(upd)
        assert _same(new._replace(nonfinite=state.nonfinite), state)
        state = new
    assert int(state.nonfinite) == 2
    upd, new = step(state, params, x)
    assert not _all_zero(upd) and int(new.count) == 2 and int(new.nonfinite) == 2


def test_equilibrium_propagation_with_tol_treats_nan_as_nonconvergence():
    params, x, y = _energy_problem()
    tx = analog.equilibrium_propagation(
        beta=0.3, free_steps=10, nudged_steps=4, tol=0.5, on_nonconvergence="raise"
    )
    with pytest.raises(analog.NonConvergenceError, match="did not converge"):
        tx.update(None, tx.init(params), params, batch=(x.at[0, 0].set(jnp.nan), y))


def test_chain_with_nan_loss_moves_no_param_and_no_device():
    """The DESIGN chain: the estimator refuses, the rest see zeros, no device moves.

    ``program`` then returns ``chip - params`` for an unchanged chip, exactly what a step with
    a zero gradient gives (params snap onto the chip's read-back, as after every step).
    """
    params = _params()
    tx = optax.chain(
        fwdgrad.forward_gradient(num_tangents=2),
        lowbit.quantize_updates(lowbit.RADIX4_FP4),
        optax.sgd(1e-2),
        analog.program(presets.IDEAL, tile_shape=(2, 2)),
    )
    state = tx.init(params)

    @functools.partial(jax.jit, static_argnums=2)
    def step(p, s, bad):
        loss = BAD_LOSSES["nan_loss"] if bad else (lambda q: _loss(q) * 0.0)
        u, s = tx.update(None, s, p, loss_fn=loss)
        return optax.apply_updates(p, u), s

    new_params, new_state = step(params, state, True)
    assert int(new_state[0].nonfinite) == 1 and int(new_state[0].count) == 0
    assert int(new_state[1].nonfinite) == 0 and int(new_state[3].nonfinite) == 0
    assert _same(new_state[3].tiles, state[3].tiles)
    zero_params, zero_state = step(params, state, False)
    assert _same(new_params, zero_params) and _same(new_state[3], zero_state[3])
