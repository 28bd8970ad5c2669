"""A few sharded forward-gradient steps on a mesh over every device of every process.

Run by tests/test_beyondbp_multiprocess.py twice: as 2 processes with one CPU
device each (``python -m beyondbp.launch -n 2``), and as one process with 2
simulated devices. Process 0 writes the final parameters to ``argv[1]`` (.npz).
"""

import os
import sys

from beyondbp import distributed as dist

if os.environ.get(dist.ENV_NUM_PROCESSES):
    dist.initialize()  # before any other JAX call

import jax
import numpy as np
import optax
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from beyondbp import models
from beyondbp.methods import cross_entropy
from fwdgrad import sharded_forward_gradient


def main(out: str, steps: int = 3) -> None:
    assert jax.device_count() == 2, jax.devices()
    mesh = dist.make_mesh(axis_names=("tangent",))
    apply, params = models.mlp(jax.random.key(0), (12, 8, 4))
    x = np.asarray(jax.random.normal(jax.random.key(1), (8, 12)), np.float32)
    y = (np.arange(8) % 4).astype(np.int32)
    tx = optax.chain(
        sharded_forward_gradient(mesh=mesh, axis_name="tangent", num_tangents=4, seed=11),
        optax.sgd(0.1),
    )
    params = dist.replicate(params, mesh)
    batch = dist.replicate((x, y), mesh)
    state = jax.jit(tx.init, out_shardings=NamedSharding(mesh, P()))(params)

    @jax.jit
    def step(params, state, batch):
        def loss_fn(p):
            return cross_entropy(apply(p, batch[0]), batch[1])

        updates, state = tx.update(None, state, params, loss_fn=loss_fn)
        return optax.apply_updates(params, updates), state

    for _ in range(steps):
        params, state = step(params, state, batch)
    flat = {
        "/".join(str(k.key) for k in path): np.asarray(v)
        for path, v in jax.tree_util.tree_flatten_with_path(params)[0]
    }
    if jax.process_index() == 0:
        np.savez(out, **flat)
    print(f"process {jax.process_index()} of {jax.process_count()}: done", flush=True)


if __name__ == "__main__":
    with jax.numpy_dtype_promotion("strict"):
        main(sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 3)
