"""Crossbar tiles and chip ensembles on 8 simulated devices (run by tests/test_analog_distributed.py)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh

import analog
from analog import shard_chips, shard_tiles, sharded_mvm, sharded_mvm_transpose

D = 8
assert jax.device_count() == D, "run with XLA_FLAGS=--xla_force_host_platform_device_count=8"

NOISY = analog.IOConfig(inp_bits=6, inp_bound=3.0, out_bits=8, out_bound=10.0, read_noise=0.05,
                        w_noise=0.02)


def _key(i):
    # rbg keys: XLA:CPU compiles their kernels much faster than threefry's
    return jax.random.key(i, impl="rbg")


@pytest.fixture(scope="module")
def setup():
    mesh = Mesh(np.array(jax.devices()), ("chip",))
    w = jax.random.normal(_key(0), (40, 60)) * jnp.float32(0.1)
    # 3 x 8 tiles of 16 x 8: one column of tiles per simulated chip
    tiles = analog.init_tiles(_key(1), w, analog.presets.TAOX_RERAM, (16, 8))
    return mesh, w, tiles


def test_layer_spread_over_chips_equals_one_device(setup):
    mesh, w, tiles = setup
    assert tiles.grid == (3, 8)
    st = shard_tiles(tiles, mesh, "chip")
    x = jax.random.normal(_key(2), (4, 40))
    d = jax.random.normal(_key(3), (4, 60))
    # Each output column is summed over the same row tiles, with the same per-tile noise
    # (same keys), on the chip that holds it. XLA blocks the batched per-tile matmuls
    # differently for C/8 tiles than for C, so allow float32 rounding (1e-6 of the range).
    # threefry (the default) generates the same bits under any vmap batch size; rbg does not
    k = jax.random.key(4)
    a, b = sharded_mvm(st, x, NOISY, k, mesh=mesh, axis_name="chip"), analog.mvm(tiles, x, NOISY, k)
    np.testing.assert_allclose(a, b, rtol=0, atol=1e-6 * float(jnp.abs(b).max()))
    # Transposed read: the chips' partial sums are added by a psum (summation order).
    a = sharded_mvm_transpose(st, d, NOISY, k, mesh=mesh, axis_name="chip")
    b = analog.mvm_transpose(tiles, d, NOISY, k)
    np.testing.assert_allclose(a, b, rtol=0, atol=1e-6 * float(jnp.abs(b).max()))


def test_chip_ensemble_over_devices_equals_vmap(setup):
    mesh, w, _ = setup
    # threefry keys: the same bits under any vmap batch size (see test above)
    keys = jax.random.split(jax.random.key(5), 16)
    chips = jax.vmap(lambda k: analog.init_tiles(k, w, analog.presets.TAOX_RERAM, (16, 8)))(keys)
    x = jax.random.normal(_key(6), (4, 40))

    def read(t):
        return analog.mvm(t, x)

    a = shard_chips(read, mesh=mesh, axis_name="chip")(chips)
    b = jax.vmap(read)(chips)
    assert a.shape == (16, 4, 60)
    # Chips are independent (no communication); only the batching of their matmuls
    # (2 per device instead of 16) differs: float32 rounding, 1e-6 of the range.
    np.testing.assert_allclose(a, b, rtol=0, atol=1e-6 * float(jnp.abs(b).max()))


def test_errors(setup):
    mesh, w, tiles = setup
    odd = analog.init_tiles(_key(1), w, analog.presets.IDEAL, (16, 20))  # 3 tile columns
    with pytest.raises(ValueError, match="not divisible by the 8 devices"):
        shard_tiles(odd, mesh, "chip")
    with pytest.raises(ValueError, match="not an axis"):
        sharded_mvm(tiles, jnp.ones((1, 40)), mesh=mesh, axis_name="data")
    with pytest.raises(ValueError, match="last axis must be 40"):
        sharded_mvm(tiles, jnp.ones((1, 41)), mesh=mesh, axis_name="chip")
    with pytest.raises(ValueError, match="pass key"):
        sharded_mvm(tiles, jnp.ones((1, 40)), NOISY, mesh=mesh, axis_name="chip")
    with pytest.raises(ValueError, match="multiple of 8"):
        shard_chips(lambda t: t, mesh=mesh, axis_name="chip")(jnp.ones((12, 3)))
