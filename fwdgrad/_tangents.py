"""Random tangent directions for forward gradients.

A forward gradient needs a random direction ``v`` with ``E[v v^T] = I``
(Baydin et al., 2022, eq. 4). Three distributions are offered:

* ``"rademacher"``: independent +-1 entries. Lowest variance of the estimate,
  ``E|g_hat - g|^2 = (n - 1)|g|^2`` for one tangent, against ``(n + 1)|g|^2``
  for Gaussian entries. A sign needs one random bit, so one 32-bit draw of the
  counter-based generator yields 32 signs (:func:`rademacher_bits` then
  :func:`signs_from_bits`); ``jax.random.rademacher`` spends a full 32-bit draw
  and a float comparison per sign, which makes it the dominant cost of a step.
* ``"gaussian"``: standard normal entries.
* ``"rank1"`` (weight perturbation only): a matrix leaf's tangent is the outer product
  ``s r^T`` of two independent Rademacher vectors, and a leaf of more axes (a convolution
  kernel, HWIO) is ``s (x) r`` with ``s`` over all axes but the last and ``r`` over the last
  (output channels); vectors and scalars are drawn as ``"rademacher"``.
  ``E[v v^T] = I`` still holds (``E[s_i s_l] E[r_j r_k] = delta_il delta_jk``) and every
  entry is +-1, so the estimate is unbiased with the same per-entry variance as
  ``"rademacher"``, ``E(g_hat_ij - g_ij)^2 = |g|^2 - g_ij^2``, and the same total
  ``(n - 1)|g|^2``; only the covariances between entries of one row or column differ. What
  it buys is arithmetic: ``x (s r^T) = (x s) r^T`` is a matrix-vector product, so the
  tangent term of a dense layer costs ``O(B (m + n))`` instead of a second ``B m n`` matmul,
  and a convolution's is one single-output-channel convolution scaled per channel
  (the low-rank perturbations of Sarkar et al., "Evolution Strategies at the Hyperscale",
  2025, arXiv:2511.16652, at rank 1 with sign factors, applied to forward gradients). The
  changed covariances can cost accuracy: the ``fwdgrad`` recipe matched Rademacher on MNIST but
  trained 4.7 points worse on Fashion-MNIST (BENCHMARKS.md, "Rank-one tangents"). It is
  not offered for activity perturbation, where an outer product over the batch would give
  every sample the same direction.

Tangents are drawn leaf by leaf from ``fold_in(key, leaf_index)``, so any single
leaf's tangent can be regenerated on its own, at the point where it is needed,
without drawing the others (see ``_estimators``).
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
from jax import lax

__all__ = [
    "TANGENTS",
    "WEIGHT_TANGENTS",
    "rank1_factors",
    "check_tangent",
    "rademacher_bits",
    "signs_from_bits",
    "sample_leaf",
    "sample_tangents",
    "gram_leaf",
]

#: The tangent distributions, both with E[v v^T] = I (Baydin et al. 2022, eq. 4): ``"rademacher"``
#: (+-1 entries, the lower variance) and ``"gaussian"`` (standard normal entries).
TANGENTS = ("rademacher", "gaussian")
#: The distributions a weight-perturbed estimator accepts: :data:`TANGENTS` and ``"rank1"``
#: (outer products of sign vectors for matrix leaves; see the module docstring).
WEIGHT_TANGENTS = (*TANGENTS, "rank1")

_WORD_BITS = 32


def check_tangent(tangent: Any, *, weight: bool = False) -> str:
    """Validate a tangent distribution name (raises ``ValueError`` naming the valid ones).

    ``weight``: the caller perturbs weights, so ``"rank1"`` is allowed too.
    """
    allowed = WEIGHT_TANGENTS if weight else TANGENTS
    if not isinstance(tangent, str) or tangent not in allowed:
        hint = (
            "; rank1 is for weight perturbation only (an outer product over the batch would "
            "give every sample the same direction)"
            if tangent == "rank1"
            else ""
        )
        raise ValueError(
            f"tangent={tangent!r} is not a known tangent distribution here; use one of "
            f"{allowed}{hint}"
        )
    return tangent


def _num_words(size: int) -> int:
    return max(1, -(-size // _WORD_BITS))


def rademacher_bits(key: jax.Array, size: int) -> jax.Array:
    """Packed random sign bits: ``uint32[ceil(size / 32)]``, bit ``j`` of word ``w`` is sign ``32 w + j``.

    Bits beyond ``size`` in the last word are cleared, so that two packed vectors
    can be compared with XOR and a population count (:func:`gram_leaf`).
    """
    words = jax.random.bits(key, (_num_words(size),), jnp.uint32)
    tail = size % _WORD_BITS
    if tail:
        mask = jnp.full((words.shape[0],), 0xFFFFFFFF, jnp.uint32)
        mask = mask.at[-1].set(jnp.uint32((1 << tail) - 1))
        words = words & mask
    return words


def signs_from_bits(words: jax.Array, shape: tuple[int, ...], dtype: Any) -> jax.Array:
    """Unpack :func:`rademacher_bits` into +-1 of ``shape`` and ``dtype`` (bit 1 -> -1)."""
    size = math.prod(shape)
    shifts = jnp.arange(_WORD_BITS, dtype=jnp.uint32)
    bits = (words[..., None] >> shifts) & jnp.uint32(1)
    bits = bits.reshape(*words.shape[:-1], -1)[..., :size]
    one = jnp.ones((), dtype)
    signs = jnp.where(bits.astype(jnp.bool_), -one, one)
    return signs.reshape(*words.shape[:-1], *shape)


def _signs(key: jax.Array, size: int, dtype: Any) -> jax.Array:
    return signs_from_bits(rademacher_bits(key, size), (size,), dtype)


def _is_rank1(shape: tuple[int, ...], tangent: str) -> bool:
    return tangent == "rank1" and len(shape) >= 2


def rank1_factors(
    key: jax.Array, shape: tuple[int, ...], dtype: Any
) -> tuple[jax.Array, jax.Array]:
    """The signs ``(s, r)`` of a ``"rank1"`` tangent ``s (x) r`` of ``shape`` (2 or more axes):
    ``s`` of ``shape[:-1]`` from ``fold_in(key, 0)``, ``r`` of ``shape[-1:]`` from
    ``fold_in(key, 1)``. The last axis is a dense kernel's outputs and an HWIO convolution
    kernel's output channels, so ``r`` scales whole output features."""
    s = _signs(jax.random.fold_in(key, 0), math.prod(shape[:-1]), dtype)
    return s.reshape(shape[:-1]), _signs(jax.random.fold_in(key, 1), shape[-1], dtype)


def sample_leaf(key: jax.Array, shape: tuple[int, ...], dtype: Any, tangent: str) -> jax.Array:
    """One tangent leaf of ``shape`` and ``dtype`` drawn from ``key``.

    Args:
      key: a typed PRNG key (already specific to this leaf and tangent).
      shape, dtype: of the parameter leaf; a bfloat16 leaf gets a bfloat16 tangent.
      tangent: ``"rademacher"``, ``"gaussian"`` or ``"rank1"``.
    """
    if _is_rank1(shape, tangent):
        s, r = rank1_factors(key, tuple(shape), dtype)
        return s[..., None] * r
    if tangent in ("rademacher", "rank1"):
        return signs_from_bits(rademacher_bits(key, math.prod(shape)), tuple(shape), dtype)
    if tangent == "gaussian":
        # Drawn in float32 whatever the leaf's dtype: ``jax.random.normal`` with a 16-bit dtype
        # uses other bits, so a bfloat16 leaf's tangent would not be the float32 draw rounded.
        return jax.random.normal(key, tuple(shape), jnp.float32).astype(dtype)
    raise ValueError(
        f"tangent={tangent!r} is not a known tangent distribution; use one of {TANGENTS}"
    )


def leaf_key(key: jax.Array, index: int) -> jax.Array:
    """The key of leaf ``index`` of a tangent drawn from ``key``."""
    return jax.random.fold_in(key, index)


def sample_tangents(key: jax.Array, tree: Any, tangent: str = "rademacher") -> Any:
    """A full tangent shaped like ``tree`` (leaf ``i`` drawn from ``fold_in(key, i)``).

    This materialises every leaf at once; the estimators do not use it (they
    regenerate one leaf at a time) but it is the reference for what they draw.
    """
    check_tangent(tangent, weight=True)
    leaves, treedef = jax.tree.flatten(tree)
    out = [
        sample_leaf(leaf_key(key, i), jnp.shape(x), jnp.result_type(x), tangent)
        for i, x in enumerate(leaves)
    ]
    return jax.tree.unflatten(treedef, out)


def gram_leaf(keys: jax.Array, shape: tuple[int, ...], dtype: Any, tangent: str) -> jax.Array:
    """``V V^T`` (float32, ``(K, K)``) of one leaf's K tangents, ``keys`` of shape ``(K,)``.

    For Rademacher tangents this works on the packed bits: two sign vectors of
    length n have inner product ``n - 2 popcount(a XOR b)``, which costs n/32
    word operations per pair instead of n multiply-adds (and is exact).
    """
    size = math.prod(shape)
    if _is_rank1(shape, tangent):
        # <s_k (x) r_k, s_l (x) r_l> = (s_k . s_l)(r_k . r_l): the Gram matrices of the factors.
        sizes = (math.prod(shape[:-1]), shape[-1])
        grams = [
            _sign_gram(jax.vmap(lambda k, i=i: jax.random.fold_in(k, i))(keys), sizes[i])
            for i in (0, 1)
        ]
        return grams[0] * grams[1]
    if tangent in ("rademacher", "rank1"):
        return _sign_gram(keys, size)
    v = jax.vmap(lambda k: sample_leaf(k, shape, dtype, tangent))(keys)
    v = v.reshape(v.shape[0], -1).astype(jnp.float32)
    return jnp.dot(v, v.T, precision=lax.Precision.HIGHEST)


def _sign_gram(keys: jax.Array, size: int) -> jax.Array:
    """``S S^T`` of the K sign vectors of length ``size`` drawn from ``keys``, exactly."""
    words = jax.vmap(lambda k: rademacher_bits(k, size))(keys)  # (K, W)
    diff = lax.population_count(words[:, None, :] ^ words[None, :, :])  # (K, K, W)
    ndiff = jnp.sum(diff.astype(jnp.int32), axis=-1)
    return (jnp.int32(size) - 2 * ndiff).astype(jnp.float32)
