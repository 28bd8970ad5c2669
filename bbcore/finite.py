"""The non-finite policy of every transform and of the training loop, in one place.

The rule (the one optax's ``apply_if_finite`` applies around a whole optimiser, here applied
by each transform to itself): an update holding NaN or inf is *refused*. The transform returns
all-zero updates (so ``optax.apply_updates`` after it moves nothing), leaves its state as it
was (no PRNG key, counter, momentum, amax history or device conductance is advanced with a
poisoned value) and counts the refusal in its state's int32 ``nonfinite`` field. Zeros rather
than NaN: a NaN passed on would poison every state after it in a chain.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax

__all__ = ["all_finite", "refuse_nonfinite", "count_refusal"]


def all_finite(*trees: Any) -> jax.Array:
    """bool scalar: every floating (or complex) entry of every tree is finite.

    Non-floating leaves (integer counters, PRNG keys) and ``None`` are ignored; True when
    there is no floating entry at all.
    """
    ok = jnp.bool_(True)
    for x in jax.tree.leaves(trees):
        if jnp.issubdtype(jnp.result_type(x), jnp.inexact):
            ok = ok & jnp.all(jnp.isfinite(x))
    return ok


def count_refusal(state: Any) -> Any:
    """``state`` with its int32 ``nonfinite`` field incremented (saturating, as optax's
    ``safe_increment``); every other field unchanged."""
    n = jnp.asarray(state.nonfinite, jnp.int32)
    return state._replace(nonfinite=optax.safe_increment(n))


def _zeros_like(tree: Any) -> Any:
    return jax.tree.map(lambda x: jnp.zeros(jnp.shape(x), jnp.result_type(x)), tree)


def refuse_nonfinite(
    ok: jax.Array, take: Callable[[], tuple[Any, Any]], state: Any, updates_like: Any
) -> tuple[Any, Any]:
    """``take()`` when ``ok``, else the refusal: zero updates and ``count_refusal(state)``.

    Args:
      ok: bool scalar, usually :func:`all_finite` of what the step computed or received.
      take: ``() -> (updates, new_state)``, the accepted step; its ``new_state`` must have
        the structure and dtypes of ``state`` (``nonfinite`` as an int32 array).
      state: the transform's state before the step (a NamedTuple with ``nonfinite``).
      updates_like: a tree with the structure, shapes and dtypes of the updates (the params).

    A ``lax.cond``, not a select: a refused step's work never runs, and the branches may hold
    typed PRNG keys, which ``jnp.where`` does not take. Under ``vmap`` it becomes a select.
    """

    def refuse():
        return _zeros_like(updates_like), count_refusal(state)

    return jax.lax.cond(ok, take, refuse)
