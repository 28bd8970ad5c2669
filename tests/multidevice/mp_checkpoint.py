"""Train with state sharded over the devices of every process, checkpointing as it goes.

Run by tests/test_checkpoint_multihost.py through ``python -m beyondbp.launch -n 2`` with
two CPU devices per process: a mesh of 4 devices over 2 processes, so the sharded arrays
(the first layer's weights, their momentum, a batch of typed ``rbg`` PRNG keys) are not
held whole by any process and each process checkpoints its own shards (orbax, through
``beyondbp.checkpoint``). The forward pass uses the previous step's 4-bit copy of the first
layer (a ``lowbit.Packed`` in the state, straight-through gradient), and the keys add noise
to the update, so every part of the state decides the next step: restoring any of it wrong
changes the result.

Usage: ``mp_checkpoint.py CKPT_DIR OUT.npz STEPS EVERY [PID_DIR]``. Resumes from the newest
checkpoint in CKPT_DIR, saves every EVERY steps, and process 0 writes the whole final state
(gathered) to OUT.npz. With PID_DIR, each process writes its pid there once it has started
training (the test kills them).
"""

import os
import pathlib
import sys
import time

from beyondbp import distributed as dist

if os.environ.get(dist.ENV_NUM_PROCESSES):
    dist.initialize()  # before any other JAX call

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.experimental import multihost_utils
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

import lowbit
from beyondbp import checkpoint

TX = optax.sgd(0.05, momentum=0.9)  # adam is not strict-promotion safe (its bias correction)


def _init(mesh):
    """Fresh ``(params, state)``, placed on the mesh: the run's start and the restore target."""

    def init():
        k1, k2, k3 = jax.random.split(jax.random.key(0), 3)
        params = {
            "w1": jax.random.normal(k1, (16, 32), jnp.float32) * 0.3,
            "w2": jax.random.normal(k2, (32, 4), jnp.float32) * 0.3,
        }
        state = {
            "opt": TX.init(params),
            "count": jnp.zeros((), jnp.int32),
            "keys": jax.random.split(jax.random.key(7, impl="rbg"), 4),
            "w1_4bit": lowbit.encode(params["w1"], lowbit.INT4, jnp.float32(0.25)),
            "noise_scale": jax.random.uniform(k3, (), jnp.float32) * 1e-3,
        }
        return params, state

    shapes = jax.eval_shape(init)

    def where(path, _):
        name = jax.tree_util.keystr(path)
        if "w1" in name and "4bit" not in name:  # w1, and its momentum
            return NamedSharding(mesh, P(None, "x"))
        if "keys" in name:
            return NamedSharding(mesh, P("x"))
        return NamedSharding(mesh, P())

    return jax.jit(init, out_shardings=jax.tree_util.tree_map_with_path(where, shapes))()


def _step(params, state, i):
    """One SGD-with-momentum step on a batch that is a function of the step alone (exact resume)."""
    kx = jax.random.fold_in(jax.random.key(1), i)
    x = jax.random.normal(kx, (8, 16), jnp.float32)
    y = (jnp.arange(8) + i) % 4

    def loss(p):
        w1 = p["w1"] + jax.lax.stop_gradient(lowbit.decode(state["w1_4bit"]) - p["w1"])
        logits = jnp.tanh(x @ w1) @ p["w2"]
        return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

    g = jax.grad(loss)(params)
    noise = jax.vmap(lambda k: jax.random.normal(k, (32,), jnp.float32))(state["keys"])
    g = dict(g, w1=g["w1"] + state["noise_scale"] * noise.mean(0))
    updates, opt = TX.update(g, state["opt"], params)
    params = optax.apply_updates(params, updates)
    w1 = params["w1"]
    state = {
        "opt": opt,
        "count": state["count"] + 1,
        "keys": jax.vmap(lambda k: jax.random.fold_in(k, 1))(state["keys"]),
        "w1_4bit": lowbit.encode(w1, lowbit.INT4, lowbit.sawb_scale(w1, lowbit.INT4)),
        "noise_scale": state["noise_scale"],
    }
    return params, state


def _flat(tree) -> dict:
    tree = jax.tree.map(
        lambda x: jax.random.key_data(x) if jnp.issubdtype(x.dtype, jax.dtypes.prng_key) else x,
        tree,
    )
    whole = multihost_utils.process_allgather(tree, tiled=True)
    return {jax.tree_util.keystr(p): np.asarray(v) for p, v in jax.tree.leaves_with_path(whole)}


def main(ckdir: str, out: str, steps: int, every: int, pid_dir: str | None) -> None:
    assert jax.process_count() == 2 and jax.device_count() == 4, jax.devices()
    rank = jax.process_index()
    mesh = dist.make_mesh(axis_names=("x",))
    params, state = _init(mesh)
    shardings = jax.tree.map(lambda a: a.sharding, (params, state))
    step = jax.jit(_step, out_shardings=shardings, donate_argnums=(0, 1))
    start, ck = 0, checkpoint.latest(ckdir)
    if ck is not None:
        start, (params, state) = checkpoint.restore(ck, (params, state))
        assert jax.tree.map(lambda a: a.sharding, (params, state)) == shardings
    assert not params["w1"].is_fully_addressable  # no process holds it whole
    print(f"process {rank}: starting at step {start}", flush=True)
    if pid_dir is not None:
        pathlib.Path(pid_dir, f"pid.{rank}").write_text(str(os.getpid()))
    for i in range(start, steps):
        params, state = step(params, state, jnp.int32(i))
        if (i + 1) % every == 0:
            checkpoint.save(ckdir, i + 1, (params, state))
        if pid_dir is not None:
            time.sleep(0.05)  # leave the test time to kill the run between its first and last save
    flat = _flat((params, state))
    if rank == 0:
        np.savez(out, **flat)
    print(f"process {rank}: done at step {steps}", flush=True)


if __name__ == "__main__":
    a = sys.argv[1:]
    with jax.numpy_dtype_promotion("strict"):
        main(a[0], a[1], int(a[2]), int(a[3]), a[4] if len(a) > 4 else None)
