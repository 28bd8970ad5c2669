"""analog.program: params track the chip for any pytree; the ledger counts what was sent."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import analog
from analog import presets


def rkey(seed):
    """rbg keys: their kernels compile ~10x faster than threefry's on XLA:CPU."""
    return jax.random.key(seed, impl="rbg")


def mlp_params(dtype=jnp.float32):
    k1, k2, k3 = jax.random.split(rkey(0), 3)
    return {
        "layers": [
            {
                "kernel": (jax.random.normal(k1, (10, 7)) * 0.3).astype(dtype),
                "bias": jnp.zeros((7,), dtype),
            },
            {
                "kernel": (jax.random.normal(k2, (7, 3)) * 0.3).astype(dtype),
                "bias": jnp.zeros((3,), dtype),
            },
        ],
        "conv": (jax.random.normal(k3, (3, 3, 2, 4)) * 0.1).astype(dtype),
        "scale": jnp.ones((), dtype),
    }


def chip_weights(state, params):
    tiles = jax.tree.leaves(state.tiles, is_leaf=lambda t: isinstance(t, analog.Tiles))
    leaves, treedef = jax.tree.flatten(params)
    return treedef.unflatten(
        [analog.read_weights(t).reshape(p.shape) for t, p in zip(tiles, leaves)]
    )


def test_matrix_shape_mapping():
    assert analog.matrix_shape(()) == (1, 1)
    assert analog.matrix_shape((5,)) == (1, 5)
    assert analog.matrix_shape((4, 6)) == (4, 6)
    assert analog.matrix_shape((3, 3, 2, 4)) == (18, 4)


@pytest.mark.parametrize("device", [presets.IDEAL, presets.TAOX_RERAM], ids=["IDEAL", "TAOX"])
def test_params_equal_what_the_chip_holds(device):
    params = mlp_params()
    tx = optax.chain(optax.sgd(0.1), analog.program(device, tile_shape=(4, 4), seed=1))
    state = tx.init(params)
    grads = jax.tree.map(lambda p: jnp.full_like(p, -0.05), params)
    step = jax.jit(lambda p, s: tx.update(grads, s, p))
    for _ in range(3):
        updates, state = step(params, state)
        params = optax.apply_updates(params, updates)
        held = chip_weights(state[1], params)
        for p, h in zip(jax.tree.leaves(params), jax.tree.leaves(held)):
            np.testing.assert_allclose(p, h, atol=1e-6)


def test_ideal_device_realizes_the_requested_update():
    params = mlp_params()
    tx = analog.program(presets.IDEAL, tile_shape=(4, 4))
    state = tx.init(params)
    want = jax.tree.map(
        lambda p: 0.01 * jnp.sin(jnp.arange(p.size, dtype=jnp.float32)).reshape(p.shape), params
    )
    got, state = tx.update(want, state, params)
    for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
        np.testing.assert_allclose(g, w, atol=1e-5)
    assert float(state.ledger.pulses) > 0 and float(state.ledger.steps) == 1


def test_stochastic_rounding_keeps_sub_step_updates_deterministic_loses_them():
    dev = analog.ConstantStep(dw_min=0.01)
    params = {"w": jnp.zeros((32, 32), jnp.float32)}
    small = {"w": jnp.full((32, 32), 0.004, jnp.float32)}  # w_max 1 -> step 0.02; 0.2 steps
    for pulse, expect in (("stochastic", 0.004), ("deterministic", 0.0)):
        tx = analog.program(dev, pulse=pulse, w_max=1.0)
        state = tx.init(params)
        got, _ = tx.update(small, state, params)
        assert float(jnp.mean(got["w"])) == pytest.approx(expect, abs=0.001), pulse


def test_mixed_precision_accumulates_sub_step_updates_and_conserves_them():
    """Nandakumar et al. 2020: nothing is programmed until the accumulator holds a whole step;
    on a noiseless constant-step device, programmed + pending equals everything requested."""
    dev = analog.ConstantStep(dw_min=0.01)  # w_max 1 -> one pair moves 0.02
    params = {"w": jnp.zeros((8, 8), jnp.float32), "b": jnp.zeros((8,), jnp.float32)}
    tx = analog.program(dev, w_max=1.0, mixed_precision=True)
    state = tx.init(params)
    rng = np.random.default_rng(0)
    asked = jax.tree.map(jnp.zeros_like, params)
    pulses = []
    for i in range(40):
        u = jax.tree.map(
            lambda p: jnp.asarray(rng.normal(0.002, 0.004, p.shape), jnp.float32), params
        )
        got, state = tx.update(u, state, params)
        params = optax.apply_updates(params, got)
        asked = jax.tree.map(jnp.add, asked, u)
        pulses.append(float(state.ledger.pulses))
        for c in jax.tree.leaves(state.pending):
            assert float(jnp.max(jnp.abs(c))) < 0.02 + 1e-6  # always under one step
        if i == 0:  # |u| < 0.02 everywhere at step 0 (4.5 sigma): nothing was sent yet
            assert pulses[0] == 0.0 and all(
                float(jnp.max(jnp.abs(g))) == 0 for g in jax.tree.leaves(got)
            )
    for a, w, c in zip(
        jax.tree.leaves(asked), jax.tree.leaves(params), jax.tree.leaves(state.pending)
    ):
        np.testing.assert_allclose(np.asarray(w) + np.asarray(c), np.asarray(a), atol=1e-5)
        # programmed values are whole steps
        np.testing.assert_allclose(np.asarray(w) / 0.02, np.round(np.asarray(w) / 0.02), atol=1e-3)
    assert pulses[-1] > 0
    # a chip view check: params are what the devices hold
    for a, b in zip(jax.tree.leaves(chip_weights(state, params)), jax.tree.leaves(params)):
        np.testing.assert_allclose(a, b, atol=1e-6)


def test_mixed_precision_sends_fewer_pulses_for_zero_mean_updates():
    """The point of the accumulator: zero-mean noise well under a step is averaged digitally
    instead of becoming pulses (stochastic rounding sends ~|u|/eps pulse pairs per step)."""
    dev = analog.ConstantStep(dw_min=0.01)
    params = {"w": jnp.zeros((32, 32), jnp.float32)}
    key = rkey(1)
    sent = {}
    for mp in (False, True):
        tx = analog.program(dev, w_max=1.0, mixed_precision=mp)
        state = tx.init(params)
        step = jax.jit(tx.update)
        for i in range(50):
            u = {"w": 0.002 * jax.random.normal(jax.random.fold_in(key, i), (32, 32))}
            _, state = step(u, state, params)
        sent[mp] = float(state.ledger.pulses)
    # sigma = 0.1 step: stochastic rounding ~0.08 pairs per weight and step; the accumulator's
    # random walk reaches a step after ~100 steps, so few weights have fired in 50
    assert sent[True] < 0.2 * sent[False], sent


def test_mixed_precision_survives_a_huge_finite_update():
    """A request beyond the devices' range only saturates them; the accumulator stays bounded
    (unbounded, 1e12 / eps loses the trunc arithmetic and 3e38 overflows to inf -> NaN)."""
    dev = analog.ConstantStep(dw_min=0.01)
    for huge in (1e12, 3e38):
        params = {"w": jnp.zeros((4, 4), jnp.float32)}
        plain = analog.program(dev, w_max=1.0)
        mixed = analog.program(dev, w_max=1.0, mixed_precision=True)
        sp, sm = plain.init(params), mixed.init(params)
        pp = pm = params
        for u in (huge, -0.1):
            up, sp = plain.update({"w": jnp.full((4, 4), u, jnp.float32)}, sp, pp)
            um, sm = mixed.update({"w": jnp.full((4, 4), u, jnp.float32)}, sm, pm)
            pp, pm = optax.apply_updates(pp, up), optax.apply_updates(pm, um)
        assert bool(jnp.all(jnp.isfinite(sm.pending["w"])))
        # after saturating, the -0.1 request moves the weight down by ~0.1 in both modes
        np.testing.assert_allclose(pm["w"], pp["w"], atol=0.021)


def test_mixed_precision_conserves_on_several_tiles_conv_leaves_and_bfloat16():
    dev = analog.ConstantStep(dw_min=0.01)
    for dtype in (jnp.float32, jnp.bfloat16):
        params = {
            "conv": jnp.zeros((3, 3, 2, 4), dtype),
            "b": jnp.zeros((4,), dtype),
            "s": jnp.zeros((), dtype),
        }
        tx = analog.program(dev, w_max=1.0, tile_shape=(5, 3), mixed_precision=True)
        state = tx.init(params)
        step = jax.jit(tx.update)
        asked = jax.tree.map(lambda p: jnp.zeros(p.shape, jnp.float32), params)
        done = jax.tree.map(lambda p: jnp.zeros(p.shape, jnp.float32), params)
        for i in range(12):
            u = jax.tree.map(
                lambda p: (
                    0.007 * jax.random.normal(jax.random.fold_in(rkey(5), i), p.shape).astype(dtype)
                ),
                params,
            )
            got, state = step(u, state, params)
            params = optax.apply_updates(params, got)
            asked = jax.tree.map(lambda a, x: a + x.astype(jnp.float32), asked, u)
            done = jax.tree.map(lambda a, x: a + x.astype(jnp.float32), done, got)
        for p, c, a, d in zip(
            jax.tree.leaves(params),
            jax.tree.leaves(state.pending),
            jax.tree.leaves(asked),
            jax.tree.leaves(done),
        ):
            assert p.dtype == dtype and c.dtype == jnp.float32
            assert float(jnp.max(jnp.abs(c))) < 0.02 + 1e-6
            # in float32 programmed + pending is what was asked; bfloat16 params round the
            # returned change, so only the float32 pending is compared there
            if dtype == jnp.float32:
                np.testing.assert_allclose(np.asarray(d + c), np.asarray(a), atol=1e-5)


def test_mixed_precision_refuses_nonfinite_without_touching_the_accumulator():
    params = {"w": jnp.zeros((4, 4), jnp.float32)}
    tx = analog.program(analog.ConstantStep(dw_min=0.01), w_max=1.0, mixed_precision=True)
    state = tx.init(params)
    _, state = tx.update({"w": jnp.full((4, 4), 0.005, jnp.float32)}, state, params)
    bad = {"w": jnp.full((4, 4), 0.005, jnp.float32).at[0, 0].set(jnp.nan)}
    got, state2 = tx.update(bad, state, params)
    assert int(state2.nonfinite) == 1 and float(jnp.abs(got["w"]).max()) == 0
    np.testing.assert_array_equal(state2.pending["w"], state.pending["w"])


def test_nonlinear_device_realizes_less_than_asked_near_the_bound():
    dev = analog.SoftBounds(dw_min=0.01)
    params = {"w": jnp.full((8, 8), 0.9, jnp.float32)}
    tx = analog.program(dev, pulse="deterministic", w_max=1.0)
    state = tx.init(params)
    got, _ = tx.update({"w": jnp.full((8, 8), 0.02, jnp.float32)}, state, params)
    assert 0 < float(got["w"][0, 0]) < 0.02


def test_program_vmaps_over_chips():
    params = mlp_params()

    def run(seed_key):
        tx = analog.program(presets.TAOX_RERAM, tile_shape=(4, 4))
        state = tx.init(params)
        # per-chip variation: perturb the key in the state
        state = state._replace(key=seed_key)
        u, _ = tx.update(jax.tree.map(lambda p: jnp.full_like(p, 0.02), params), state, params)
        return u["layers"][0]["kernel"]

    out = jax.vmap(run)(jax.random.split(rkey(0), 5))
    assert out.shape == (5, 10, 7) and float(jnp.std(out[:, 0, 0])) > 0


def test_program_errors():
    with pytest.raises(TypeError, match="device"):
        analog.program("TaOx")
    with pytest.raises(ValueError, match="tile_shape"):
        analog.program(presets.IDEAL, tile_shape=(0, 4))
    with pytest.raises(ValueError, match="pulse"):
        analog.program(presets.IDEAL, pulse="analog")
    with pytest.raises(TypeError, match="mixed_precision"):
        analog.program(presets.IDEAL, mixed_precision="yes")
    tx = analog.program(presets.IDEAL)
    params = {"w": jnp.ones((2, 2))}
    state = tx.init(params)
    with pytest.raises(ValueError, match="needs params"):
        tx.update(params, state)


def test_per_leaf_w_max_sets_each_leafs_range():
    params = mlp_params()
    dev = presets.TAOX_RERAM
    per_leaf = jax.tree.map(lambda _: None, params)
    per_leaf["layers"][1]["kernel"] = 0.25  # this leaf's own range; the others keep the default
    state = analog.program(dev, w_max=per_leaf, seed=2).init(params)
    default = analog.program(dev, seed=2).init(params)
    is_t = lambda t: isinstance(t, analog.Tiles)
    got = jax.tree.leaves(state.tiles, is_leaf=is_t)
    ref = jax.tree.leaves(default.tiles, is_leaf=is_t)
    names = [jax.tree_util.keystr(k) for k, _ in jax.tree_util.tree_flatten_with_path(params)[0]]
    for name, t, r in zip(names, got, ref):
        if name == "['layers'][1]['kernel']":  # weight per unit conductance: w_max / range
            np.testing.assert_allclose(float(t.w_scale), 0.25 / dev.range, rtol=1e-6)
        else:  # None: twice the leaf's initial max|w|, exactly as without a per-leaf w_max
            assert float(t.w_scale) == float(r.w_scale), name
    with pytest.raises(ValueError, match="w_max"):
        analog.program(dev, w_max={"w": -1.0})
    with pytest.raises(ValueError, match="params' structure"):
        analog.program(dev, w_max={"w": 1.0}).init(params)


def test_composes_with_the_estimator_in_one_chain():
    params = analog.init_energy_network(rkey(0), (6, 5, 3))
    x = jax.random.uniform(rkey(1), (4, 6), jnp.float32)
    y = jnp.asarray([0, 1, 2, 0])
    tx = optax.chain(
        analog.equilibrium_propagation(beta=0.3, free_steps=20, nudged_steps=10),
        optax.sgd(0.1),
        analog.program(presets.TAOX_RERAM, tile_shape=(4, 4)),
    )
    state = tx.init(params)
    updates, state = jax.jit(lambda p, s: tx.update(None, s, p, batch=(x, y)))(params, state)
    new = optax.apply_updates(params, updates)
    for p, h in zip(jax.tree.leaves(new), jax.tree.leaves(chip_weights(state[2], new))):
        np.testing.assert_allclose(p, h, atol=1e-6)
    report = analog.energy_report(state[0].ledger + state[2].ledger)
    assert report["analog_j_per_step"] > 0 and report["digital_j_per_step"] > 0
    assert report["joules_per_step"]["pulses"] > 0


def test_energy_report_arithmetic():
    one = jnp.ones((), jnp.float32)
    led = analog.EnergyLedger(
        steps=2 * one,
        cell_reads=10 * one,
        dac=4 * one,
        adc=6 * one,
        pulses=8 * one,
        digital_flops=1000 * one,
    )
    m = analog.EnergyModel(
        e_cell_read=1.0, e_dac=10.0, e_adc=100.0, e_pulse=1000.0, e_digital_flop=1.0
    )
    r = analog.energy_report(led, m)
    assert r["analog_j_per_step"] == pytest.approx(5 + 20 + 300 + 4000)
    assert r["digital_j_per_step"] == pytest.approx(500)
    assert r["ratio"] == pytest.approx(500 / 4325)
    with pytest.raises(ValueError, match="e_adc"):
        analog.EnergyModel(e_adc=-1.0)
    with pytest.raises(TypeError, match="EnergyLedger"):
        analog.energy_report({"pulses": 3})
