"""Training on several devices and processes with JAX's own distribution.

Everything here is a thin layer over ``jax.sharding.Mesh``, ``jax.shard_map``
and ``jax.distributed``; nothing is home-made transport.

* :func:`initialize` joins a multi-process job (``python -m beyondbp.launch``
  on one machine, or a cluster scheduler), with CPU collectives over gloo.
* :func:`make_mesh` builds a mesh over all devices of all processes;
  :func:`replicate` and :func:`shard` place host data on it the same way in
  one process or many.
* :func:`data_parallel` is synchronous data-parallel backprop: each device
  takes the gradient of its slice of the batch, the gradients are averaged
  with a float32 all-reduce (``communication="float32"``) or with
  :func:`lowbit.compressed_pmean`, which moves packed 4-bit codes
  (``communication="4bit"``, 8x fewer bytes), and every device applies the
  same optax update.
* :func:`hlo_collectives` / :func:`communication_bytes` (measurement code, in
  :mod:`beyondbp.hlo`, re-exported here) read the compiled program and report
  every collective with its operand bytes, so claims about communication are
  checked against what XLA will actually run.

Set ``XLA_FLAGS=--xla_force_host_platform_device_count=8`` before importing
JAX to simulate 8 CPU devices in one process. Simulated devices share one
thread pool: on a loaded machine, wait for each step
(``jax.block_until_ready``) rather than queueing many, or a collective's
rendezvous can starve and XLA aborts the process after 40 s.
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax import lax
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

import bbcore
from beyondbp.hlo import Collective, communication_bytes, hlo_collectives
from lowbit import RADIX4_FP4, Format, compressed_pmean

__all__ = [
    "initialize",
    "make_mesh",
    "check_mesh_axis",
    "replicate",
    "shard",
    "data_parallel",
    "DataParallel",
    "DataParallelState",
    "COMMUNICATIONS",
    "Collective",
    "hlo_collectives",
    "communication_bytes",
    "ENV_COORDINATOR",
    "ENV_NUM_PROCESSES",
    "ENV_PROCESS_ID",
]

#: What data-parallel replicas exchange: ``"float32"`` gradients or ``"4bit"`` ones
#: (``lowbit.compressed_pmean``).
COMMUNICATIONS = ("float32", "4bit")

# The launcher (beyondbp.launch) sets these; on a cluster a job script may set them too.
#: Environment variable: the coordinator's ``host:port``.
ENV_COORDINATOR = "BEYONDBP_COORDINATOR_ADDRESS"
#: Environment variable: how many processes take part.
ENV_NUM_PROCESSES = "BEYONDBP_NUM_PROCESSES"
#: Environment variable: this process's index, 0 to N - 1.
ENV_PROCESS_ID = "BEYONDBP_PROCESS_ID"


# --------------------------------------------------------------------------- processes


def initialize(
    coordinator_address: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
    *,
    initialization_timeout: int = 120,
) -> None:
    """Join a multi-process JAX job: ``jax.distributed.initialize`` with addresses from the environment.

    Arguments win over ``$BEYONDBP_COORDINATOR_ADDRESS``, ``$BEYONDBP_NUM_PROCESSES``
    and ``$BEYONDBP_PROCESS_ID`` (set by ``python -m beyondbp.launch``). When
    none is given, ``jax.distributed.initialize()`` is called without
    arguments, so JAX detects the cluster itself (SLURM, Open MPI, Kubernetes,
    Cloud TPU). Must run before any other JAX call that touches devices. CPU
    devices use gloo collectives (set explicitly: without a CPU collectives
    implementation, cross-process computations fail on CPU).
    """
    coordinator_address = coordinator_address or os.environ.get(ENV_COORDINATOR)
    if num_processes is None and os.environ.get(ENV_NUM_PROCESSES):
        num_processes = int(os.environ[ENV_NUM_PROCESSES])
    if process_id is None and os.environ.get(ENV_PROCESS_ID):
        process_id = int(os.environ[ENV_PROCESS_ID])
    given = [coordinator_address is not None, num_processes is not None, process_id is not None]
    if any(given) and not all(given):
        raise ValueError(
            "initialize: give all of coordinator_address, num_processes and process_id (or "
            f"${ENV_COORDINATOR}, ${ENV_NUM_PROCESSES}, ${ENV_PROCESS_ID}), or none of them to let "
            f"JAX detect the cluster; got coordinator_address={coordinator_address!r}, "
            f"num_processes={num_processes!r}, process_id={process_id!r}"
        )
    if num_processes is not None and process_id is not None and not 0 <= process_id < num_processes:
        raise ValueError(f"initialize: process_id={process_id} not in [0, {num_processes})")
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    if coordinator_address is None:
        jax.distributed.initialize(initialization_timeout=initialization_timeout)
    else:
        jax.distributed.initialize(
            coordinator_address=coordinator_address,
            num_processes=num_processes,
            process_id=process_id,
            initialization_timeout=initialization_timeout,
        )


# --------------------------------------------------------------------------- meshes and data


def make_mesh(
    shape: Sequence[int] | None = None,
    axis_names: Sequence[str] = ("data",),
    devices: Sequence[Any] | None = None,
) -> Mesh:
    """A mesh over ``devices`` (default: every device of every process).

    ``shape`` defaults to all devices on one axis. The axes are of JAX's
    "auto" type, so ``shard_map`` and ``jit`` move inputs onto the mesh as needed.
    """
    devices = list(jax.devices() if devices is None else devices)
    axis_names = tuple(axis_names)
    shape = (len(devices),) if shape is None else tuple(shape)
    if len(shape) != len(axis_names):
        raise ValueError(
            f"make_mesh: shape {shape} has {len(shape)} axes but axis_names "
            f"{axis_names} names {len(axis_names)}"
        )
    if math.prod(shape) != len(devices):
        raise ValueError(
            f"make_mesh: shape {shape} holds {math.prod(shape)} devices but "
            f"{len(devices)} are given; set XLA_FLAGS="
            "--xla_force_host_platform_device_count=N before importing jax to "
            "simulate N CPU devices"
        )
    return Mesh(np.asarray(devices, dtype=object).reshape(shape), axis_names)


def check_mesh_axis(mesh: Any, axis_name: Any, *, who: str) -> int:
    """Validate ``mesh`` and ``axis_name``; return the axis size (raises TypeError/ValueError)."""
    return bbcore.check_mesh_axis(mesh, axis_name, who)


def _global(x: Any, sharding: NamedSharding) -> jax.Array:
    """A global array from a host value that every process holds in full.

    ``make_array_from_callback`` asks each process only for the shards on its
    own devices, so this is the same call in one process or many.
    """
    x = np.asarray(x)
    return jax.make_array_from_callback(x.shape, sharding, lambda idx: x[idx])


def replicate(tree: Any, mesh: Mesh) -> Any:
    """Every leaf of ``tree`` copied onto every device of ``mesh``."""
    s = NamedSharding(mesh, P())
    return jax.tree.map(lambda x: _global(x, s), tree)


def shard(tree: Any, mesh: Mesh, axis_name: Any = "data") -> Any:
    """Every leaf of ``tree`` split along its first axis over ``axis_name`` of ``mesh``.

    Each process must hold the full (global) batch; it keeps only its devices'
    slices. Raises ``ValueError`` when the leading size is not divisible.
    """
    d = check_mesh_axis(mesh, axis_name, who="shard")
    s = NamedSharding(mesh, P(axis_name))

    def one(x):
        x = np.asarray(x)
        if x.ndim == 0 or x.shape[0] % d:
            raise ValueError(
                f"shard: leading dimension of shape {x.shape} is not divisible by "
                f"the {d} devices of mesh axis {axis_name!r}; use a batch size that "
                f"is a multiple of {d}"
            )
        return _global(x, s)

    return jax.tree.map(one, tree)


# --------------------------------------------------------------------------- data parallel


class DataParallelState(NamedTuple):
    """Replicated training state: params, optax state and the step count (int32)."""

    params: Any
    opt_state: Any
    count: jax.Array  # type: ignore[assignment]  # shadows tuple.count, as optax's states do


@dataclasses.dataclass(frozen=True)
class DataParallel:
    """``init(params) -> state`` and the jitted ``step(state, batch) -> (state, loss)``."""

    init: Callable[[Any], DataParallelState]
    step: Callable[[DataParallelState, Any], tuple[DataParallelState, jax.Array]]
    mesh: Mesh
    axis_name: Any
    communication: str


def data_parallel(
    loss_fn: Callable[[Any, Any], jax.Array],
    tx: optax.GradientTransformation,
    *,
    mesh: Mesh,
    axis_name: Any = "data",
    communication: str = "float32",
    fmt: Format = RADIX4_FP4,
    rounding: str = "stochastic",
    seed: int = 0,
) -> DataParallel:
    """Synchronous data-parallel backprop over ``axis_name`` of ``mesh``.

    Each device computes ``jax.grad(loss_fn)(params, local_batch)`` on its
    slice of the batch (leading axis split over ``axis_name``); the gradients
    are averaged and every device applies the same ``tx`` update, so the
    parameters stay replicated. With equal slices, the mean of the slices'
    mean losses is the full batch's mean loss, so ``"float32"`` equals
    single-device training on the whole batch up to float32 summation order.

    Args:
      loss_fn: ``loss_fn(params, batch) -> scalar`` mean loss over the batch.
      tx: any optax transform fed with the averaged gradient.
      mesh / axis_name: the devices and the mesh axis the batch is split over.
      communication: ``"float32"`` (``lax.pmean``, an all-reduce) or ``"4bit"``
        (:func:`lowbit.compressed_pmean`: packed 4-bit codes, 8x fewer bytes).
      fmt / rounding: the 4-bit format and rounding of ``"4bit"``.
      seed: seed of the stochastic rounding (folded with the step count).

    Returns:
      A :class:`DataParallel`; put host arrays on the mesh with
      :func:`replicate` (state) and :func:`shard` (batch), in one process or many.
    """
    check_mesh_axis(mesh, axis_name, who="data_parallel")
    if communication not in COMMUNICATIONS:
        raise ValueError(
            f"data_parallel(communication={communication!r}): use one of {COMMUNICATIONS}"
        )
    if communication == "4bit":
        # Validate the format and rounding now, not at the first step: compressed_pmean
        # checks its arguments before it touches the (empty) tree or the axis.
        compressed_pmean((), axis_name, fmt=fmt, rounding=rounding, key=jax.random.key(0))
    if not callable(loss_fn):
        raise TypeError(f"data_parallel: loss_fn={loss_fn!r} is not callable")
    base_key = jax.random.key(seed)

    def local(params, opt_state, count, batch):
        # Differentiate a per-device copy of the replicated params: otherwise
        # shard_map's transpose of the implicit replicated-to-per-device cast
        # is itself a float32 psum of the gradient, before ours.
        loss, grads = jax.value_and_grad(loss_fn)(bbcore.varying(params, axis_name), batch)
        if communication == "float32":
            grads = lax.pmean(grads, axis_name)
        else:
            key = jax.random.fold_in(base_key, count)
            grads = compressed_pmean(grads, axis_name, fmt=fmt, rounding=rounding, key=key)
        updates, opt_state = tx.update(grads, opt_state, params)
        params = optax.apply_updates(params, updates)
        return params, opt_state, count + jnp.int32(1), lax.pmean(loss, axis_name)

    sharded = jax.shard_map(local, mesh=mesh, in_specs=(P(), P(), P(), P(axis_name)), out_specs=P())

    @jax.jit
    def step(state: DataParallelState, batch):
        params, opt_state, count, loss = sharded(state.params, state.opt_state, state.count, batch)
        return DataParallelState(params, opt_state, count), loss

    def init(params) -> DataParallelState:
        return DataParallelState(params, tx.init(params), jnp.zeros((), jnp.int32))

    return DataParallel(
        init=init, step=step, mesh=mesh, axis_name=axis_name, communication=communication
    )
