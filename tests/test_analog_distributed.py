"""analog across devices: validation here, 8-device behaviour in tests/test_eight_devices.py."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh

import analog
from analog import shard_chips, shard_tiles, sharded_mvm


def test_one_device_mesh_and_bad_arguments():
    mesh = Mesh(np.array(jax.devices()[:1]), ("chip",))
    w = jnp.ones((10, 12), jnp.float32) * jnp.float32(0.1)
    tiles = analog.init_tiles(jax.random.key(0, impl="rbg"), w, analog.presets.IDEAL, (8, 8))
    x = jnp.ones((2, 10), jnp.float32)
    np.testing.assert_allclose(
        sharded_mvm(shard_tiles(tiles, mesh, "chip"), x, mesh=mesh, axis_name="chip"),
        analog.mvm(tiles, x),
        rtol=1e-6,
    )
    with pytest.raises(TypeError, match="Mesh"):
        sharded_mvm(tiles, x, mesh="chips", axis_name="chip")
    with pytest.raises(TypeError, match="init_tiles"):
        shard_tiles(w, mesh, "chip")
    with pytest.raises(TypeError, match="callable"):
        shard_chips(3, mesh=mesh, axis_name="chip")
