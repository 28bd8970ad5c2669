"""Local heads of the local-loss networks and the per-patch, per-group losses they give.

Ren, Kornblith, Liao, Hinton, "Scaling Forward Gradient With Local Losses" (ICLR 2023), sec. 4
and their code: a head reads its block's output normalised within each channel group and
average-pooled over patches; :func:`local_head_losses` splits its cross entropy into the
``(B, P, G)`` losses that :func:`fwdgrad.local_fwd_grad` estimates part by part.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import optax
from jax import lax

__all__ = ["head_logits", "local_head_losses"]


def _group_norm(x: jax.Array, num_groups: int) -> jax.Array:
    """Parameter-free layer norm within each channel group, float32 ``(B, T, G, C/G)``."""
    x = x.astype(jnp.float32).reshape(x.shape[0], -1, num_groups, x.shape[-1] // num_groups)
    mu = jnp.mean(x, axis=-1, keepdims=True)
    var = jnp.var(x, axis=-1, keepdims=True)
    return (x - mu) * lax.rsqrt(var + jnp.float32(1e-5))


def _head_input(x: jax.Array, num_groups: int, normalize: bool) -> jax.Array:
    if normalize:
        return _group_norm(x, num_groups)
    return x.astype(jnp.float32).reshape(x.shape[0], -1, num_groups, x.shape[-1] // num_groups)


def head_logits(x: jax.Array, head: Any, num_groups: int, normalize: bool = True) -> jax.Array:
    """A local head: layer norm per channel group, mean over positions, linear (float32 logits).

    Ren et al. (2023), sec. 4 and their code: the head reads the block output
    normalised within each group (so a group's tangent stays in its group),
    average-pooled over patches. ``x``: ``(B, ..., C)``; kernel ``(C, classes)``.
    ``normalize=False`` leaves the norm out (a norm over one unit is zero).
    """
    feats = jnp.mean(_head_input(x, num_groups, normalize), axis=1).reshape(x.shape[0], -1)
    return feats @ head["kernel"].astype(jnp.float32) + head["bias"].astype(jnp.float32)


def local_head_losses(
    x: jax.Array,
    head: Any,
    labels: jax.Array,
    *,
    num_groups: int = 1,
    patch_loss: bool = True,
    group_loss: bool = True,
    normalize: bool = True,
) -> jax.Array:
    """Per-example, per-patch, per-group cross-entropy losses of a local head, ``(B, P, G)``.

    Entry ``[b, p, g]`` has the value of example b's loss ``CE(head(x_b), y_b)``
    (:func:`head_logits`) and, as a function of ``x``, depends on patch p's
    group-g features only (Ren et al., 2023, sec. 4, their fused operator): its
    tangent is ``(softmax - onehot) . W_g^T dx_{p,g} / T`` after the group norm,
    with the error ``softmax - onehot`` and the head held constant. P is the
    number of positions T of ``x`` with ``patch_loss`` (else 1), G is
    ``num_groups`` with ``group_loss`` (else 1). Use with :func:`local_fwd_grad`;
    ``jax.grad`` of their mean is *not* the block loss's gradient (use the plain
    cross entropy of :func:`head_logits` for that).
    """
    labels = jnp.asarray(labels)
    xn = _head_input(x, num_groups, normalize)  # (B, T, G, C/G)
    const = lax.stop_gradient(xn)
    logits = jnp.mean(const, axis=1).reshape(x.shape[0], -1) @ head["kernel"].astype(
        jnp.float32
    ) + head["bias"].astype(jnp.float32)
    ce = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
    err = jax.nn.softmax(logits) - jax.nn.one_hot(labels, logits.shape[-1], dtype=jnp.float32)
    # the error at the head's input, per group: (B, G, C/G), a constant
    back = lax.stop_gradient(err @ head["kernel"].astype(jnp.float32).T).reshape(
        x.shape[0], num_groups, -1
    )
    live = xn - const  # zero, with x's tangent
    if not patch_loss:
        live = jnp.mean(live, axis=1, keepdims=True)
    else:
        live = live / jnp.float32(xn.shape[1])
    own = jnp.einsum("btgc,bgc->btg", live, back)
    if not group_loss:
        own = jnp.sum(own, axis=2, keepdims=True)
    return ce[:, None, None] + own
