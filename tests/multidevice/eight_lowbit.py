"""4-bit gradient communication on 8 simulated devices (run by tests/test_lowbit_distributed.py)."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import PartitionSpec as P

import lowbit
from beyondbp import distributed as dist
from lowbit import compressed_bytes, compressed_pmean

# Every multi-device step is waited for: XLA:CPU runs the simulated devices on one
# thread pool, and on a loaded machine several steps in flight can starve a
# collective's rendezvous (it aborts the process after 40 s).
D = 8
assert jax.device_count() == D, "run with XLA_FLAGS=--xla_force_host_platform_device_count=8"


def _mean_over_devices(fn, tree, key, mesh):
    """Run ``fn(local_tree, key)`` on every device; stack the per-device results."""
    def local(t, k):
        out = fn(jax.tree.map(lambda a: a[0], t), k)
        return jax.tree.map(lambda a: a[None], out)
    return jax.jit(jax.shard_map(local, mesh=mesh, in_specs=(P("data"), P()),
                                 out_specs=P("data")))(tree, key)


@pytest.fixture(scope="module")
def mesh():
    return dist.make_mesh()


def _tree(key):
    k1, k2 = jax.random.split(key)
    return {"w": jax.random.normal(k1, (D, 37, 5)) * jnp.float32(1e-3),
            "b": jax.random.normal(k2, (D, 3))}


def test_same_on_every_device_and_unbiased(mesh):
    """Every device decodes the same bytes; both roundings are stochastic, so the mean over
    many keys converges to the float32 mean (within 5 standard errors)."""
    tree = {"w": jax.random.normal(jax.random.key(4), (D, 40)) * jnp.float32(1e-3),
            "b": jax.random.normal(jax.random.key(6), (D, 3))}
    keys = jax.random.split(jax.random.key(5), 256)

    def many(t, k):
        del k
        return jax.vmap(lambda kk: compressed_pmean(t, "data", key=kk))(keys)

    out = _mean_over_devices(many, tree, jax.random.key(0), mesh)
    for name, leaf in out.items():
        leaf = np.asarray(leaf)                       # (devices, keys, ...)
        np.testing.assert_array_equal(leaf, np.broadcast_to(leaf[:1], leaf.shape))
        exact = np.asarray(tree[name]).mean(0)
        err = np.abs(leaf[0].mean(0) - exact)
        se = leaf[0].std(0) / np.sqrt(len(keys))
        assert np.all(err <= 5 * se + 1e-7 * np.abs(exact).max()), (name, err.max(), se.max())


def test_exact_when_devices_agree_on_grid_values(mesh):
    """Identical on-grid inputs: the float32 mean is the input, and requantizing it is exact."""
    x = lowbit.quantize(jax.random.normal(jax.random.key(2), (64,)), lowbit.RADIX4_FP4,
                        scale=jnp.float32(1 / 16))
    tree = {"x": jnp.broadcast_to(x, (D, 64))}

    def both(t, k):
        return (compressed_pmean(t, "data", rounding="nearest"),
                compressed_pmean(t, "data", rounding="stochastic", key=k))

    for out in _mean_over_devices(both, tree, jax.random.key(3), mesh):
        np.testing.assert_array_equal(np.asarray(out["x"][0]), np.asarray(x))


def _mlp_problem(widths=(30, 24, 10)):
    from beyondbp import models
    from beyondbp.methods import cross_entropy
    apply, params = models.mlp(jax.random.key(0), widths)

    def loss(p, batch):
        return cross_entropy(apply(p, batch[0]), batch[1])

    x = np.asarray(jax.random.normal(jax.random.key(1), (32, widths[0])), np.float32)
    y = (np.arange(32) % 10).astype(np.int32)
    return loss, params, (x, y)


def test_float32_data_parallel_equals_one_device(mesh):
    loss, params, batch = _mlp_problem()
    dp = dist.data_parallel(loss, optax.sgd(0.1, momentum=0.9), mesh=mesh)
    state = dist.replicate(dp.init(params), mesh)
    ref_p, ref_s = params, optax.sgd(0.1, momentum=0.9).init(params)
    for _ in range(2):
        state, _ = jax.block_until_ready(dp.step(state, dist.shard(batch, mesh)))
        g = jax.grad(loss)(ref_p, batch)
        u, ref_s = optax.sgd(0.1, momentum=0.9).update(g, ref_s, ref_p)
        ref_p = optax.apply_updates(ref_p, u)
    # The same mean gradient, summed per shard then across shards: float32 order only.
    for a, b in zip(jax.tree.leaves(state.params), jax.tree.leaves(ref_p)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6)


def test_4bit_exchange_is_8x_smaller_in_the_compiled_program(mesh):
    # 1e5 parameters: large enough that the per-chunk scales are noise (compiled, never run)
    loss, params, batch = _mlp_problem((256, 384, 10))
    n = sum(x.size for x in jax.tree.leaves(params))
    reports = {}
    for comm in ("float32", "4bit"):
        dp = dist.data_parallel(loss, optax.sgd(0.1), mesh=mesh, communication=comm)
        reports[comm] = dist.communication_bytes(dp.step, dist.replicate(dp.init(params), mesh),
                                                 dist.shard(batch, mesh))
    f32, q4 = reports["float32"], reports["4bit"]
    # float32: one all-reduce of the gradient (plus the 4-byte loss)
    assert f32["by_dtype"] == {"f32": 4 * n + 4}
    # 4-bit: uint8 codes (two per byte) in the all-to-all and the all-gather; float32
    # only for the per-chunk scales and the loss
    expected = compressed_bytes(params, D)
    assert q4["by_dtype"]["u8"] == expected["all_to_all_codes"] + expected["all_gather_codes"]
    assert q4["by_dtype"]["f32"] == (expected["all_to_all_scales"]
                                     + expected["all_gather_scales"] + 4)
    assert {c["op"] for c in q4["collectives"]} <= {"all-to-all", "all-gather", "all-reduce"}
    # bytes each device sends (ring algorithms): 8x fewer, up to padding and scales
    ratio = f32["sent_bytes"] / q4["sent_bytes"]
    assert 7.5 < ratio <= 8.0, ratio


@pytest.mark.slow
def test_4bit_data_parallel_trains(mesh):
    loss, params, batch = _mlp_problem()
    dp = dist.data_parallel(loss, optax.sgd(0.1), mesh=mesh, communication="4bit")
    state = dist.replicate(dp.init(params), mesh)
    sharded = dist.shard(batch, mesh)
    first = None
    for _ in range(15):
        state, l = jax.block_until_ready(dp.step(state, sharded))
        first = float(l) if first is None else first
    assert float(l) < 0.85 * first


def test_4bit_rejects_wide_formats(mesh):
    loss, _, _ = _mlp_problem()
    with pytest.raises(ValueError, match="4-bit format"):
        dist.data_parallel(loss, optax.sgd(0.1), mesh=mesh, communication="4bit",
                           fmt=lowbit.E4M3)
