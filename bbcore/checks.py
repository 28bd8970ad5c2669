"""Argument checks shared by the packages: one rule and one message each.

Errors say what was wrong and what to do, at construction time (STYLE.md, equinox).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["check_seed", "check_mesh_axis", "require_key", "flat_inputs"]


def check_seed(seed: Any, who: str | None = None) -> Any:
    """Accept a seed: a Python int (not a bool) or an integer scalar array; return it.

    Arrays are accepted because ``optax.inject_hyperparams`` re-calls a transform's factory
    with its numeric arguments as (possibly traced) int32 scalars; ``jax.random.key`` takes
    those too.

    Raises:
      TypeError: for anything else (a float, a string, a bool, a non-scalar array).
    """
    if isinstance(seed, int) and not isinstance(seed, bool):
        return seed
    if (
        isinstance(seed, (jax.Array, np.ndarray, np.generic))
        and np.ndim(seed) == 0
        and jnp.issubdtype(seed.dtype, jnp.integer)
    ):
        return seed
    where = f"{who}: " if who else ""
    raise TypeError(
        f"{where}seed={seed!r} must be an integer (a Python int or an integer scalar array)"
    )


def check_mesh_axis(mesh: Any, axis_name: Any, who: str, *, what: str = "axis_name") -> int:
    """Validate that ``axis_name`` names an axis of ``mesh``; return that axis' size.

    Args:
      mesh: a ``jax.sharding.Mesh`` (or an ``AbstractMesh``).
      axis_name: the axis to check.
      who: the caller's name, first in the message.
      what: the argument's name in the message (``"batch_axis_name"``, ...).

    Raises:
      TypeError: ``mesh`` is not a mesh. ValueError: no such axis.
    """
    if not isinstance(mesh, (jax.sharding.Mesh, jax.sharding.AbstractMesh)):
        raise TypeError(
            f"{who}: mesh={mesh!r} is not a jax.sharding.Mesh; build one with "
            "jax.sharding.Mesh(np.array(jax.devices()), ('data',)) or "
            "beyondbp.distributed.make_mesh()"
        )
    if axis_name not in mesh.axis_names:
        raise ValueError(
            f"{who}: {what}={axis_name!r} is not an axis of the mesh; its axes "
            f"are {mesh.axis_names}"
        )
    return int(mesh.shape[axis_name])


def require_key(key: Any, who: str, because: str) -> None:
    """Raise when a call that draws random numbers got ``key=None``.

    ``because`` says what draws them (``"io=... draws read/weight noise"``, ``"the device has
    cycle-to-cycle noise"``); the caller checks that condition and calls this only then.

    Raises:
      ValueError: ``"{who}: {because}; pass key=jax.random.key(...)"``.
    """
    if key is None:
        raise ValueError(f"{who}: {because}; pass key=jax.random.key(...)")


def flat_inputs(x: Any, n_features: int, who: str) -> jax.Array:
    """``x`` flattened to ``(batch, features)``; refused unless it has ``n_features`` per example.

    Raises:
      ValueError: another number of features per example (the message names ``who``).
    """
    flat = jnp.reshape(x, (jnp.shape(x)[0], -1))
    if flat.shape[-1] != n_features:
        raise ValueError(
            f"{who} expects {n_features} input features per example, got input of shape "
            f"{jnp.shape(x)} ({flat.shape[-1]} features after flattening)"
        )
    return flat
