"""Checkpoints hold every package's state bit for bit: packed 4-bit codes, scaling
histories, crossbar tiles, energy ledgers, PRNG keys and counters (beyondbp.checkpoint)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import analog
import fwdgrad
import lowbit
from analog import presets
from beyondbp import checkpoint


def _raw(x):
    if jnp.issubdtype(x.dtype, jax.dtypes.prng_key):
        return jax.random.key_impl(x), np.asarray(jax.random.key_data(x))
    return None, np.asarray(x)


def _assert_bit_identical(a, b):
    assert jax.tree.structure(a) == jax.tree.structure(b)  # static fields (fmt, shape, device) too
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        (ix, vx), (iy, vy) = _raw(x), _raw(y)
        assert ix == iy and vx.dtype == vy.dtype and vx.shape == vy.shape
        assert vx.tobytes() == vy.tobytes()  # bit for bit, NaN payloads and signed zeros too


def _round_trip(tmp_path, tree, target):
    path = checkpoint.save(tmp_path, 5, tree)
    step, restored = checkpoint.restore(path, target)
    assert step == 5
    return restored


def test_packed_4bit_codes_round_trip(tmp_path):
    x = jnp.asarray([0.0, -0.0, 0.3, -1.7, 5.0, 1e-4, -60.0, jnp.nan, jnp.inf], jnp.float32)
    w = jax.random.normal(jax.random.key(0), (5, 3), jnp.float32)
    tree = {
        "grad": lowbit.encode(x, lowbit.RADIX4_FP4),  # odd length: a padded nibble
        "weight": lowbit.encode(w, lowbit.INT4),
        "e2m1": lowbit.encode(w, lowbit.E2M1, 0.5),
        "bf16": jnp.ones((2,), jnp.bfloat16),
    }
    target = {
        "grad": lowbit.encode(jnp.zeros_like(x), lowbit.RADIX4_FP4),
        "weight": lowbit.encode(jnp.zeros_like(w), lowbit.INT4),
        "e2m1": lowbit.encode(jnp.zeros_like(w), lowbit.E2M1, 1.0),
        "bf16": jnp.zeros((2,), jnp.bfloat16),
    }
    restored = _round_trip(tmp_path, tree, target)
    _assert_bit_identical(restored, tree)
    assert restored["grad"].codes.shape == (5,) and restored["grad"].codes.dtype == jnp.uint8
    for name in ("grad", "weight", "e2m1"):
        np.testing.assert_array_equal(lowbit.decode(restored[name]), lowbit.decode(tree[name]))


def _states():
    """Params and, after a few real steps, the state of every package's transforms."""
    k1, k2 = jax.random.split(jax.random.key(1))
    params = {"w": jax.random.normal(k1, (5, 3)) * 0.3, "b": jax.random.normal(k2, (3,)) * 0.1}

    def loss(p):
        return jnp.sum(jnp.tanh(jnp.ones((5,), jnp.float32) @ p["w"] + p["b"]) ** 2)

    tx = optax.chain(
        fwdgrad.forward_gradient(num_tangents=2, seed=4),
        lowbit.quantize_updates(lowbit.RADIX4_FP4, scaling="delayed", history_length=3, seed=5),
        optax.sgd(0.1),
        analog.program(presets.TAOX_RERAM, tile_shape=(2, 2), seed=6),
    )
    energy = analog.init_energy_network(jax.random.key(2, impl="rbg"), (5, 4, 3))
    x = jax.random.uniform(jax.random.key(3), (4, 5), jnp.float32)
    y = jnp.asarray([0, 1, 2, 0], jnp.int32)
    ep = analog.equilibrium_propagation(beta=0.3, free_steps=8, nudged_steps=4, tol=None, seed=7)

    @jax.jit
    def step(p, s, ep_state):
        u, s = tx.update(None, s, p, loss_fn=loss)
        _, ep_state = ep.update(None, ep_state, energy, batch=(x, y))
        return optax.apply_updates(p, u), s, ep_state

    fresh = {"params": params, "opt": tx.init(params), "ep": ep.init(energy)}
    p, s, e = params, fresh["opt"], fresh["ep"]
    for _ in range(2):
        p, s, e = step(p, s, e)
    return {"params": p, "opt": s, "ep": e}, fresh, step


def test_transform_states_round_trip_and_resume_bit_identically(tmp_path):
    trained, fresh, step = _states()
    restored = _round_trip(tmp_path, trained, fresh)
    _assert_bit_identical(restored, trained)
    fg, qu, _, prog = restored["opt"]
    assert int(fg.count) == 2 and int(qu.count) == 2 and int(prog.count) == 2
    assert bool(jnp.any(qu.amax_history["w"] > 0))  # scaling history
    assert float(prog.ledger.pulses) > 0 and float(restored["ep"].ledger.cell_reads) > 0
    assert jax.random.key_impl(prog.key) == jax.random.key_impl(fresh["opt"][3].key)
    # The next step from the restored state is the step the uninterrupted run takes.
    _assert_bit_identical(
        step(restored["params"], restored["opt"], restored["ep"]),
        step(trained["params"], trained["opt"], trained["ep"]),
    )


def test_checkpoint_from_before_program_state_had_pending_still_restores(tmp_path):
    """ProgramState gained ``pending`` (None unless mixed_precision=True); a checkpoint written
    without that field restores into a run where it is None."""
    from flax import serialization

    params = {"w": jnp.ones((3, 2), jnp.float32)}
    tx = analog.program(presets.TAOX_RERAM, tile_shape=(2, 2))
    state = tx.init(params)
    _, state = tx.update({"w": jnp.full((3, 2), 0.01, jnp.float32)}, state, params)
    tree = {"params": params, "opt": state}
    path = checkpoint.save(tmp_path, 3, tree)
    raw = serialization.msgpack_restore(path.read_bytes())
    del raw["tree"]["opt"]["pending"]  # the layout written before the field
    path.write_bytes(serialization.msgpack_serialize(raw))
    step, restored = checkpoint.restore(path, {"params": params, "opt": tx.init(params)})
    assert step == 3 and restored["opt"].pending is None
    np.testing.assert_array_equal(restored["opt"].tiles["w"].g_plus, state.tiles["w"].g_plus)
    # a mixed-precision run's accumulator is data: a checkpoint without it is refused
    mixed = analog.program(presets.TAOX_RERAM, tile_shape=(2, 2), mixed_precision=True)
    with pytest.raises(checkpoint.CheckpointError):
        checkpoint.restore(path, {"params": params, "opt": mixed.init(params)})
