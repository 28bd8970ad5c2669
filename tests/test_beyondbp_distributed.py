"""beyondbp.distributed on one device: meshes, placement, validation and the HLO reader."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from beyondbp import distributed as dist

HLO = """
HloModule jit_step
ENTRY %main {
  %ar = f32[64,10]{1,0} all-reduce(%a), channel_id=1, replica_groups={{0,1,2,3}}, to_apply=%add
  %ag = u8[4,100]{1,0} all-gather(%b), channel_id=2, replica_groups=[1,4]<=[4], dimensions={0}
  %a2a = (u8[1,50]{1,0}, u8[1,50]{1,0}, u8[1,50]{1,0}, u8[1,50]{1,0}) all-to-all(%c, %d, %e, %f), channel_id=3, replica_groups={{0,1,2,3}}
  %rs = f32[16]{0} reduce-scatter(%g), channel_id=4, replica_groups={{0,1,2,3}}, dimensions={0}
  %ags = ((f32[2]{0}), f32[8]{0}) all-gather-start(%h), channel_id=5, replica_groups={{0,1,2,3}}, dimensions={0}
  ROOT %t = tuple(%ar)
}
"""


def test_hlo_collectives_reads_operands_and_ring_traffic():
    cs = {c.op + ("-start" if i == 4 else ""): c for i, c in enumerate(dist.hlo_collectives(HLO))}
    assert [c.group_size for c in cs.values()] == [4] * 5
    assert cs["all-reduce"].operand_bytes == 64 * 10 * 4
    assert cs["all-reduce"].sent_bytes == 2 * 3 / 4 * 2560
    assert cs["all-gather"].operand_bytes == 100 and cs["all-gather"].sent_bytes == 300
    assert cs["all-to-all"].operand_bytes == 200 and cs["all-to-all"].sent_bytes == 150
    assert cs["reduce-scatter"].operand_bytes == 256
    assert cs["all-gather-start"].operand_bytes == 8  # f32[8] result / 4


def test_communication_bytes_of_a_one_device_program():
    mesh = dist.make_mesh(devices=jax.devices()[:1])
    dp = dist.data_parallel(lambda p, b: jnp.mean((b @ p) ** 2), optax.sgd(0.1), mesh=mesh)
    state = dist.replicate(dp.init(jnp.ones((3,), jnp.float32)), mesh)
    batch = dist.shard(np.ones((4, 3), np.float32), mesh)
    new, loss = dp.step(state, batch)
    assert float(loss) == pytest.approx(9.0) and int(new.count) == 1
    r = dist.communication_bytes(dp.step, state, batch)
    assert r["sent_bytes"] == 0  # groups of one device send nothing


def test_make_mesh_errors():
    with pytest.raises(ValueError, match="holds 4 devices"):
        dist.make_mesh((4,))
    with pytest.raises(ValueError, match="names 2"):
        dist.make_mesh((1,), ("a", "b"))


def test_shard_and_data_parallel_validation():
    mesh = dist.make_mesh()
    with pytest.raises(ValueError, match="not an axis"):
        dist.shard(np.ones((4,)), mesh, "batch")
    with pytest.raises(TypeError, match=r"not a jax.sharding.Mesh"):
        dist.data_parallel(lambda p, b: 0.0, optax.sgd(0.1), mesh=None)
    with pytest.raises(ValueError, match="communication"):
        dist.data_parallel(lambda p, b: 0.0, optax.sgd(0.1), mesh=mesh, communication="int8")
    with pytest.raises(ValueError, match="rounding"):
        dist.data_parallel(
            lambda p, b: 0.0, optax.sgd(0.1), mesh=mesh, communication="4bit", rounding="up"
        )
    with pytest.raises(TypeError, match="callable"):
        dist.data_parallel(3, optax.sgd(0.1), mesh=mesh)
