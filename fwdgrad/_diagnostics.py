"""Diagnostics for gradient estimators: angle to the exact gradient, predicted and measured variance.

Baydin et al., "Gradients without Backpropagation" (2022), and Silver et al.,
"Learning by Directional Gradient Descent" (ICLR 2022, sec. 3) for the
variance of directional estimators.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from jax import lax

from fwdgrad import _estimators, _tangents

__all__ = ["cosine_similarity", "theoretical_variance", "estimator_variance"]


def _flat32(tree) -> jax.Array:
    leaves = jax.tree.leaves(tree)
    return (
        jnp.concatenate([jnp.ravel(x).astype(jnp.float32) for x in leaves])
        if leaves
        else (jnp.zeros((0,), jnp.float32))
    )


def cosine_similarity(estimate: Any, exact: Any) -> jax.Array:
    """Cosine of the angle between two gradient pytrees, as one flat vector (float32 scalar).

    Returns 0 when either is all zeros. Raises ``ValueError`` if the structures differ.
    """
    if jax.tree.structure(estimate) != jax.tree.structure(exact):  # type: ignore[operator]  # jaxlib stub
        raise ValueError(
            "estimate and exact have different pytree structures: "
            f"{jax.tree.structure(estimate)} vs {jax.tree.structure(exact)}"
        )
    a, b = _flat32(estimate), _flat32(exact)
    if a.shape != b.shape:
        raise ValueError(f"estimate has {a.shape[0]} entries, exact has {b.shape[0]}")
    denom = jnp.linalg.norm(a) * jnp.linalg.norm(b)
    return jnp.where(denom > 0, jnp.dot(a, b) / jnp.where(denom > 0, denom, 1.0), 0.0)


def theoretical_variance(
    exact: Any, *, tangent: str = "rademacher", num_tangents: int = 1, aggregate: str = "mean"
) -> jax.Array:
    """``E|g_hat - g|^2`` predicted for the estimator, given the exact gradient ``g``.

    Mean of K forward gradients over n parameters (Baydin et al., 2022; Silver et
    al., 2022, sec. 3): Gaussian ``(n + 1)|g|^2 / K``, Rademacher ``(n - 1)|g|^2 / K`` (rank1
    too: its entries are +-1 and ``E[v v^T] = I``, which is all the total depends on).
    Orthogonal projection onto a uniformly random K-dimensional subspace:
    ``(1 - K/n)|g|^2`` (exact for Gaussian tangents, close for Rademacher).
    """
    _tangents.check_tangent(tangent, weight=True)
    _estimators.check_aggregate(aggregate)
    K = _estimators.check_num_tangents(num_tangents)
    g = _flat32(exact)
    n = g.shape[0]
    sq = jnp.sum(g * g)
    if aggregate == "orthogonal":
        return sq * jnp.float32(1.0 - K / n)
    return sq * jnp.float32((n + 1 if tangent == "gaussian" else n - 1) / K)


def estimator_variance(
    grad_fn: Callable,
    key: jax.Array,
    *args,
    num_samples: int = 256,
    exact: Any = None,
    batch_size: int | None = 64,
) -> jax.Array:
    """Empirical ``E|g_hat - g|^2`` of a gradient estimator (float32 scalar).

    Args:
      grad_fn: ``grad_fn(key, *args) -> estimate``, e.g. from :func:`fwd_grad`.
      key: PRNG key; sample ``s`` uses ``fold_in(key, s)``.
      num_samples: number of independent estimates (>= 2).
      exact: the true gradient; when given, the mean squared error about it is
        returned, otherwise the total (summed over entries) sample variance about
        the sample mean (ddof = 1).
      batch_size: estimates drawn per ``vmap`` batch (``lax.map``), bounding memory.
    """
    if isinstance(num_samples, bool) or not isinstance(num_samples, int) or num_samples < 2:
        raise ValueError(f"num_samples={num_samples!r}: need an int >= 2")
    key = _estimators.as_key(key)
    keys = jax.vmap(lambda s: jax.random.fold_in(key, s))(jnp.arange(num_samples, dtype=jnp.uint32))
    est = lax.map(lambda k: _flat32(grad_fn(k, *args)), keys, batch_size=batch_size)
    if exact is not None:
        err = est - _flat32(exact)[None]
        return jnp.mean(jnp.sum(err * err, axis=1))
    return jnp.sum(jnp.var(est, axis=0, ddof=1))
