"""Seed-shared sharded forward gradient on 8 simulated devices (run by tests/test_fwdgrad_distributed.py)."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import Mesh

import fwdgrad
from beyondbp import distributed as dist
from beyondbp import models
from beyondbp.methods import cross_entropy
from fwdgrad import sharded_forward_gradient

D = 8
assert jax.device_count() == D, "run with XLA_FLAGS=--xla_force_host_platform_device_count=8"


def _problem(widths=(20, 16, 10), batch=16):
    apply, params = models.mlp(jax.random.key(0), widths)
    x = jax.random.normal(jax.random.key(1), (batch, widths[0]))
    y = jnp.arange(batch) % widths[-1]

    def loss(p, b):
        return cross_entropy(apply(p, b[0]), b[1])

    return loss, params, (x, y)


def _run(tx, loss, params, batch, steps, *, split_batch=False):
    """``steps`` SGD steps with ``tx`` as the estimator; returns the final params."""
    opt = optax.sgd(0.05)

    @jax.jit
    def step(params, s, o):
        if split_batch:
            g, s = tx.update(None, s, params, loss_fn=loss, batch=batch)
        else:
            g, s = tx.update(None, s, params, loss_fn=lambda p: loss(p, batch))
        u, o = opt.update(g, o, params)
        return optax.apply_updates(params, u), s, o

    s, o = tx.init(params), opt.init(params)
    for _ in range(steps):
        params, s, o = jax.block_until_ready(step(params, s, o))  # see eight_lowbit.py
    return params


def _assert_close(a, b):
    # Same tangents, same combination; the K jvps are batched differently
    # (K/D per device), which changes float32 rounding inside the matmuls only.
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        x, y = np.asarray(x), np.asarray(y)
        assert np.max(np.abs(x - y)) <= 1e-5 * np.max(np.abs(y)) + 1e-7


# Compile time grows with K (every device redraws all K tangents); K = D keeps it short.
@pytest.mark.parametrize("aggregate", ["mean", pytest.param("orthogonal", marks=pytest.mark.slow)])
def test_tangent_parallel_equals_single_device(aggregate):
    loss, params, batch = _problem()
    mesh = Mesh(np.array(jax.devices()), ("tangent",))
    sharded = sharded_forward_gradient(mesh=mesh, axis_name="tangent", num_tangents=8, seed=7,
                                       aggregate=aggregate)
    single = fwdgrad.forward_gradient(num_tangents=8, seed=7, aggregate=aggregate)
    _assert_close(_run(sharded, loss, params, batch, 2), _run(single, loss, params, batch, 2))


def test_data_and_tangent_parallel_equals_single_device():
    loss, params, batch = _problem()
    mesh = Mesh(np.array(jax.devices()).reshape(2, 4), ("data", "tangent"))
    sharded = sharded_forward_gradient(mesh=mesh, axis_name="tangent", num_tangents=4, seed=3,
                                       batch_axis_name="data")
    single = fwdgrad.forward_gradient(num_tangents=4, seed=3)
    _assert_close(_run(sharded, loss, params, batch, 2, split_batch=True),
                  _run(single, loss, params, batch, 2))


def test_communication_is_O_K_for_1e5_and_1e7_parameters():
    """The compiled step's collectives move K float32 scalars, whatever the model size."""
    mesh = Mesh(np.array(jax.devices()), ("tangent",))
    K = 8
    tx = sharded_forward_gradient(mesh=mesh, axis_name="tangent", num_tangents=K)
    reports = {}
    for widths in [(784, 128, 10), (784, 3000, 2500, 10)]:
        loss, params, batch = _problem(widths, batch=32)
        n = sum(x.size for x in jax.tree.leaves(params))
        abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), params)

        @jax.jit
        def step(p, s, b):
            return tx.update(None, s, p, loss_fn=lambda q: loss(q, b))

        reports[n] = dist.communication_bytes(step, abstract, tx.init(params), batch)
    small, large = sorted(reports)
    assert 0.8e5 < small < 1.2e5 and 0.8e7 < large < 1.2e7, sorted(reports)
    for n, r in reports.items():
        # one all-gather: each device contributes its K/D directional derivatives
        assert [c["op"] for c in r["collectives"]] == ["all-gather"], r["collectives"]
        assert r["operand_bytes"] == 4 * K / D
        assert r["sent_bytes"] == 4 * K / D * (D - 1)
    assert reports[small]["collectives"] == reports[large]["collectives"]


def test_K_must_divide_over_devices():
    mesh = Mesh(np.array(jax.devices()), ("tangent",))
    with pytest.raises(ValueError, match="not divisible by the 8 devices"):
        sharded_forward_gradient(mesh=mesh, axis_name="tangent", num_tangents=12)


def test_batch_must_divide_over_devices():
    loss, params, batch = _problem(batch=12)
    mesh = Mesh(np.array(jax.devices()).reshape(8, 1), ("data", "tangent"))
    tx = sharded_forward_gradient(mesh=mesh, axis_name="tangent", num_tangents=2,
                                  batch_axis_name="data")
    with pytest.raises(ValueError, match="batch size divisible"):
        tx.update(None, tx.init(params), params, loss_fn=loss, batch=batch)
