"""``analog.pulsed_sgd``: the optax transform of in-situ training; the tiles take pulses.

Gokmen & Vlasov (Front. Neurosci. 10:333, 2016), Eq. 2-3: every analog layer
(:class:`analog.nnx.Linear`, :class:`analog.nnx.Conv`) is updated by the rank-1 pulse-train
coincidences of each sample's input ``x`` and error ``d``, read from its tap's gradient
(``analog._insitu``), with ``W <- W - lr sum_b x_b d_b^T`` in expectation (aihwkit's
``AnalogSGD``). No dense gradient ``x^T d`` is ever formed. Every other (digital) parameter,
such as a digital bias, takes plain SGD ``-lr g``.
"""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.typing import ArrayLike

import bbcore
from analog._insitu import Crossbar
from analog._tiles import Tiles
from analog._update import UpdateConfig, pulse_update

__all__ = ["pulsed_sgd", "PulsedSGDState", "check_update_config", "is_crossbar"]

_F32 = jnp.float32


class PulsedSGDState(NamedTuple):
    """State of :func:`pulsed_sgd`: step count, PRNG key of the pulse trains, the float32
    number of pulses sent so far, and ``nonfinite``, the int32 count of refused steps."""

    count: jax.Array  # type: ignore[assignment]  # shadows tuple.count, as optax's states do
    key: jax.Array
    pulses: jax.Array
    nonfinite: ArrayLike = np.int32(0)


def is_crossbar(t: Any) -> bool:
    return isinstance(t, Crossbar)


def check_update_config(update: Any, who: str) -> UpdateConfig:
    """``update`` or ``UpdateConfig()`` for None; a TypeError for anything else."""
    if update is None:
        return UpdateConfig()
    if not isinstance(update, UpdateConfig):
        raise TypeError(f"{who}: update={update!r}; pass an analog.UpdateConfig")
    return update


def tap_signals(cb: Crossbar, g: Crossbar) -> tuple[jax.Array, jax.Array]:
    """Each sample's layer input ``x (B, in)`` and output error ``d (B, out)``, from the
    gradient ``g`` of the crossbar ``cb``."""
    n_in = cb.tiles.shape[0]
    return g.tap[:, :n_in].astype(_F32), g.tap[:, n_in:].astype(_F32)


def rate_at(rate: optax.ScalarOrSchedule, count: jax.Array) -> jax.Array:
    """A scalar rate, or an optax schedule read at the state's step ``count``, as float32."""
    return jnp.asarray(rate(count) if callable(rate) else rate, _F32)


def tiles_delta(old: Tiles, new: Tiles) -> Tiles:
    """The update that turns ``old`` into ``new``: only the conductances move."""
    zeros = jax.tree.map(jnp.zeros_like, old)
    return dataclasses.replace(
        zeros, g_plus=new.g_plus - old.g_plus, g_minus=new.g_minus - old.g_minus
    )


def crossbar_delta(cb: Crossbar, new_tiles: Tiles, **fields) -> Crossbar:
    """The update that turns ``cb``'s tiles into ``new_tiles``, the tap kept at zero and the
    step count advanced by one; ``fields`` give the change of more entries."""
    zeros = jax.tree.map(jnp.zeros_like, cb)
    delta = tiles_delta(cb.tiles, new_tiles)
    return dataclasses.replace(zeros, tiles=delta, step=jnp.ones_like(cb.step), **fields)


def pulsed_sgd(
    learning_rate: optax.ScalarOrSchedule,
    *,
    update: UpdateConfig | None = None,
    seed: int = 0,
) -> optax.GradientTransformationExtraArgs:
    """In-situ analog SGD: pulse every analog layer's tiles; plain SGD for digital leaves.

    ``update(grads, state, params)`` takes ``grads = jax.grad(loss)(params)`` of a model with
    :class:`analog.nnx.Linear` / :class:`analog.nnx.Conv` layers. For each layer it reads ``x``
    and ``d`` from its tap's gradient and calls :func:`analog.pulse_update` with ``-d``,
    ``learning_rate`` and ``update`` (the pulse mode, BL, update and BL management); it returns
    the conductances' change, so that ``optax.apply_updates`` leaves the params holding what
    the devices did. Put it last in a chain: a transform after it would rescale conductances.

    Args:
      learning_rate: the SGD step: a scalar (may be injected with ``inject_hyperparams``) or
        an optax schedule of the step count, as optax's own optimizers take it.
      update: how updates become pulses (:class:`analog.UpdateConfig`); None = its defaults.
      seed: integer seed of the pulse trains and cycle-to-cycle noise.

    Non-finite policy (``bbcore.finite``): a gradient with a NaN or inf anywhere is refused
    as a whole: no device is pulsed, zeros are returned, the state stays as it was and
    ``state.nonfinite`` is incremented.
    """
    cfg = check_update_config(update, "pulsed_sgd")
    bbcore.check_seed(seed, "pulsed_sgd")

    def init_fn(params):
        del params
        z = jnp.zeros((), jnp.int32)
        return PulsedSGDState(z, bbcore.key(seed), jnp.zeros((), _F32), z)

    def update_fn(updates, state, params=None, **extra):
        del extra
        _require(updates, params, "pulsed_sgd")
        lr = rate_at(learning_rate, state.count)
        p_leaves, treedef = jax.tree.flatten(params, is_leaf=is_crossbar)
        g_leaves = treedef.flatten_up_to(updates)
        if any(is_crossbar(p) and p.fast is not None for p in p_leaves):
            raise ValueError(
                "pulsed_sgd: a layer has a fast array (fast_device=...): train it with "
                "analog.tiki_taka, which updates A and transfers to C"
            )

        def take():
            key, sub = jax.random.split(state.key)
            out, sent = [], jnp.zeros((), _F32)
            for i, (p, g) in enumerate(zip(p_leaves, g_leaves)):
                if is_crossbar(p):
                    x, d = tap_signals(p, g)
                    new, n = pulse_update(
                        p.tiles, x, -d, lr, jax.random.fold_in(sub, i), update=cfg
                    )
                    out.append(crossbar_delta(p, new))
                    sent = sent + n
                else:
                    out.append((-lr * jnp.asarray(g).astype(_F32)).astype(jnp.result_type(p)))
            new_state = PulsedSGDState(
                state.count + 1, key, state.pulses + sent, jnp.asarray(state.nonfinite, jnp.int32)
            )
            return treedef.unflatten(out), new_state

        return bbcore.refuse_nonfinite(bbcore.all_finite(updates), take, state, params)

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def _require(updates, params, who: str) -> None:
    if params is None:
        raise ValueError(
            f"{who} needs params (the tiles live there): call tx.update(grads, state, params)"
        )
    if updates is None:
        raise ValueError(f"{who} got updates=None; pass jax.grad(loss)(params)")
