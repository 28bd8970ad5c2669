"""fwdgrad.sharded_forward_gradient: validation here, 8-device behaviour in tests/test_eight_devices.py."""

import jax
import numpy as np
import pytest
from jax.sharding import Mesh

from fwdgrad import sharded_forward_gradient


def _mesh():
    return Mesh(np.array(jax.devices()[:1]), ("tangent",))


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        (
            dict(mesh="cpu", axis_name="tangent", num_tangents=2),
            TypeError,
            "not a jax.sharding.Mesh",
        ),
        (dict(axis_name="data", num_tangents=2), ValueError, "not an axis of the mesh"),
        (dict(axis_name="tangent", num_tangents=0), ValueError, "at least one tangent"),
        (dict(axis_name="tangent", num_tangents=2.0), TypeError, "Python int"),
        (dict(axis_name="tangent", num_tangents=2, tangent="uniform"), ValueError, "tangent"),
        (dict(axis_name="tangent", num_tangents=2, aggregate="sum"), ValueError, "aggregate"),
        (
            dict(axis_name="tangent", num_tangents=2, batch_axis_name="tangent"),
            ValueError,
            "differ",
        ),
        (
            dict(axis_name="tangent", num_tangents=2, batch_axis_name="data"),
            ValueError,
            "not an axis",
        ),
        (dict(axis_name="tangent", num_tangents=2, seed=1.5), TypeError, "seed"),
    ],
)
def test_bad_configuration_fails_at_construction(kwargs, error, match):
    kwargs = {"mesh": _mesh(), **kwargs}
    with pytest.raises(error, match=match):
        sharded_forward_gradient(**kwargs)


def test_one_device_mesh_runs_and_needs_loss_fn():
    tx = sharded_forward_gradient(mesh=_mesh(), axis_name="tangent", num_tangents=2)
    params = {"w": jax.numpy.ones((3,))}
    state = tx.init(params)
    # under jit, as documented (eagerly, every op of the K tangent draws compiles on its own)
    g, state2 = jax.jit(
        lambda p, s: tx.update(None, s, p, loss_fn=lambda q: jax.numpy.sum(q["w"] ** 2))
    )(params, state)
    assert g["w"].shape == (3,) and int(state2.count) == 1
    with pytest.raises(ValueError, match="loss_fn"):
        tx.update(None, state, params)
