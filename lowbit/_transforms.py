"""``quantize_updates``: an optax transform that puts updates on a 4-bit grid."""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.typing import ArrayLike

from bbcore import all_finite, check_seed, refuse_nonfinite
from lowbit._formats import RADIX4_FP4, Format
from lowbit._rounding import ROUNDINGS, _check_format, quantize
from lowbit._scaling import SCALINGS, amax_history_update, compute_scale

__all__ = ["quantize_updates", "QuantizeUpdatesState"]


class QuantizeUpdatesState(NamedTuple):
    """State of :func:`quantize_updates`.

    count: int32 step counter (folded into the key, so each step draws new bits).
    key: the transform's own PRNG key (never threaded by the user).
    amax_history: per-leaf float32 ``(history_length,)`` arrays for
      ``scaling="delayed"``; ``None`` for ``"max"``.
    nonfinite: int32 number of steps rejected because an incoming update held
      NaN or inf. Defaults to 0, so ``QuantizeUpdatesState(count, key,
      amax_history)`` still builds a valid state.
    """

    count: jax.Array  # type: ignore[assignment]  # shadows tuple.count, as optax's states do
    key: jax.Array
    amax_history: object
    nonfinite: ArrayLike = np.int32(0)


def _is_float(x) -> bool:
    return x is not None and jnp.issubdtype(jnp.asarray(x).dtype, jnp.floating)


def _check_args(fmt, scaling, rounding, seed, history_length) -> None:
    """Construction-time checks of :func:`quantize_updates` (errors say what to pass)."""
    _check_format(fmt)
    if scaling not in SCALINGS:
        raise ValueError(f"quantize_updates(scaling={scaling!r}): use one of {SCALINGS}")
    if rounding not in ROUNDINGS:
        raise ValueError(f"quantize_updates(rounding={rounding!r}): use one of {ROUNDINGS}")
    # optax.inject_hyperparams re-calls this factory with numeric arguments as
    # (possibly traced) arrays; seed and history_length are only read by init.
    check_seed(seed, "quantize_updates")
    if isinstance(history_length, bool) or not (
        isinstance(history_length, int)
        or (hasattr(history_length, "dtype") and jnp.issubdtype(history_length.dtype, jnp.integer))
    ):
        raise ValueError(f"quantize_updates(history_length={history_length!r}): need an int >= 1")
    if not isinstance(history_length, jax.core.Tracer) and int(history_length) < 1:
        raise ValueError(f"quantize_updates(history_length={history_length!r}): need an int >= 1")


def quantize_updates(
    fmt: Format = RADIX4_FP4,
    *,
    scaling: str = "max",
    rounding: str = "stochastic",
    seed: int = 0,
    history_length: int = 16,
) -> optax.GradientTransformationExtraArgs:
    """Put each update leaf on ``fmt``'s grid with its own adaptive scale.

    Per leaf: ``scale = compute_scale(u, fmt, scaling)`` (GradScale, Sun et al.
    NeurIPS 2020 section 4.3), then ``quantize(u, fmt, scale=scale,
    rounding=rounding)``. Stochastic rounding is unbiased, so the quantized
    update is an unbiased estimate of the incoming one; its bits come from the
    key in the state, folded with the step count and the leaf index, so results
    are deterministic given ``seed``. Dtypes and pytree structure are kept;
    non-floating leaves pass through. Unknown extra args are ignored.

    Non-finite policy: if any floating entry of the incoming updates is NaN or
    inf, the whole step is rejected: every float leaf of the result is zero,
    the count and the amax history stay as they were (a NaN in the history
    would disable delayed scaling for ``history_length`` steps) and
    ``state.nonfinite`` is incremented. (:func:`quantize` itself keeps NaN and
    +-inf as they are; the transform is where a step can be refused.)

    Args:
      fmt: target format (e.g. ``RADIX4_FP4``, ``E2M1``, ``INT4``).
      scaling: ``"max"`` (current max) or ``"delayed"`` (amax history).
      rounding: ``"stochastic"`` (default) or ``"nearest"``.
      seed: integer seed of the transform's key.
      history_length: length of the amax history for ``"delayed"``.

    Raises:
      TypeError / ValueError: at construction for a bad argument.
    """
    _check_args(fmt, scaling, rounding, seed, history_length)

    init = functools.partial(_init, scaling=scaling, seed=seed, history_length=history_length)
    quantized = functools.partial(_quantized, fmt=fmt, scaling=scaling, rounding=rounding)

    def update(updates, state, params=None, **extra_args):
        del params, extra_args
        # A refused step leaves the amax history as it was: a NaN in it would disable
        # delayed scaling for history_length steps (bbcore.finite has the policy).
        state = state._replace(nonfinite=jnp.asarray(state.nonfinite, jnp.int32))

        def take():
            out, hist = quantized(updates, state)
            return out, state._replace(count=optax.safe_increment(state.count), amax_history=hist)

        out, state = refuse_nonfinite(all_finite(updates), take, state, updates)
        # Non-floating leaves (step counters) pass through as they came, refused or not.
        return jax.tree.map(lambda u, q: q if _is_float(u) else u, updates, out), state

    return optax.GradientTransformationExtraArgs(init, update)


def _init(params, *, scaling, seed, history_length) -> QuantizeUpdatesState:
    """:func:`quantize_updates`' ``init``: count 0, the key from ``seed``, a zero amax history."""
    hist = None
    if scaling == "delayed":
        hist = jax.tree.map(lambda p: jnp.zeros((int(history_length),), jnp.float32), params)
    return QuantizeUpdatesState(
        count=jnp.zeros((), jnp.int32),
        key=jax.random.key(jnp.asarray(seed, jnp.uint32)),
        amax_history=hist,
        nonfinite=jnp.zeros((), jnp.int32),
    )


def _quantized(updates, state, *, fmt, scaling, rounding):
    """Every float leaf on the grid, and the next amax history (None for "max")."""
    leaves, treedef = jax.tree.flatten(updates)
    hists = jax.tree.leaves(state.amax_history) if scaling == "delayed" else [None] * len(leaves)
    step_key = jax.random.fold_in(state.key, state.count)
    out, new_hists = [], []
    for i, (u, h) in enumerate(zip(leaves, hists)):
        if not _is_float(u):
            out.append(u)
            new_hists.append(h)
            continue
        s = compute_scale(u, fmt, scaling, amax_history=h)
        key = jax.random.fold_in(step_key, i) if rounding == "stochastic" else None
        out.append(quantize(u, fmt, scale=s, rounding=rounding, key=key))
        new_hists.append(amax_history_update(h, u) if h is not None else None)
    hist = (
        jax.tree.unflatten(jax.tree.structure(state.amax_history), new_hists)
        if scaling == "delayed"
        else None
    )
    return jax.tree.unflatten(treedef, out), hist
