"""Activations by name: the one table the reference models and the local-loss networks accept.

``beyondbp.models`` (``activation="relu"``) and ``fwdgrad``'s local-loss MLP read the same
names, so a name that works for one works for the other.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp

__all__ = ["ACTIVATIONS", "activation_fn"]

#: Elementwise activations by name.
ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
    "relu": jax.nn.relu,
    "tanh": jnp.tanh,
    "sigmoid": jax.nn.sigmoid,
    "gelu": jax.nn.gelu,
    "silu": jax.nn.silu,
    "hard_sigmoid": jax.nn.hard_sigmoid,
    "identity": lambda x: x,
}


def activation_fn(activation: str | Callable) -> Callable:
    """The activation named ``activation`` in :data:`ACTIVATIONS`, or ``activation`` if callable.

    Raises:
      ValueError: an unknown name (the message lists the known ones).
    """
    if callable(activation):
        return activation
    if not isinstance(activation, str) or activation not in ACTIVATIONS:
        raise ValueError(
            f"activation={activation!r} is not known; use one of "
            f"{sorted(ACTIVATIONS)} or pass a callable"
        )
    return ACTIVATIONS[activation]
