"""``analog.tiki_taka``: Tiki-Taka v2 in situ, for asymmetric devices.

Gokmen & Haensch, "Algorithm for Training Neural Networks on Resistive Device Arrays", Front.
Neurosci. 14:103 (2020) (Tiki-Taka), and Gokmen, "Enabling Training of Neural Networks on Noisy
Hardware", Front. Artif. Intell. 4:699148 (2021) (TTv2, its Algorithm 1; aihwkit's
``TransferCompound`` with a ``BufferedTransferCompound`` buffer). Each analog layer built with
``fast_device=`` holds two arrays: the pulsed rank-1 updates of SGD go to the fast array ``A``;
every ``transfer_every`` samples each row tile of ``A`` has one of its rows (a column in aihwkit's
``(out, in)`` layout) read through the periphery with a one-hot input, cycling through the rows
of its tile, as each of aihwkit's tiles runs its own transfer; ``transfer_lr`` times the read is
added to that row of a digital buffer ``H``; wherever ``|H| >= dw_C`` (one step of the slow array ``C``)
the whole steps ``n = trunc(H / dw_C)`` are pulsed into ``C`` and ``H -= n dw_C``. The layer
reads ``gamma A + C`` (``gamma = 0`` in TTv2: only ``C``). ``A``'s asymmetry pulls it back to
its symmetry point, which acts as a decay of ``A`` instead of a drift of the weight: why
asymmetric devices such as TaOx train with it and not with plain SGD.
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.typing import ArrayLike

import bbcore
from analog._insitu import Crossbar
from analog._mvm import tile_read
from analog._periphery import IOConfig
from analog._programming import apply_pulses
from analog._pulsed_sgd import (
    _require,
    check_update_config,
    is_crossbar,
    rate_at,
    tap_signals,
    tiles_delta,
)
from analog._tiles import _tile_weights, weight_step
from analog._update import UpdateConfig, pulse_update

__all__ = ["tiki_taka", "TikiTakaState"]

_F32 = jnp.float32


class TikiTakaState(NamedTuple):
    """State of :func:`tiki_taka`: step count, PRNG key, the float32 pulses sent to the fast
    arrays and to the slow arrays so far, ``nonfinite``, the int32 refused steps, and
    ``choppers``: per analog layer (in tree order) its float32 ``(in,)`` chopper signs (all
    +1 without chopping)."""

    count: jax.Array  # type: ignore[assignment]  # shadows tuple.count, as optax's states do
    key: jax.Array
    pulses: jax.Array
    transfer_pulses: jax.Array
    nonfinite: ArrayLike = np.int32(0)
    choppers: tuple = ()


def _check_args(transfer_every, transfer_lr, transfer_io, seed) -> IOConfig:
    if (
        not isinstance(transfer_every, int)
        or isinstance(transfer_every, bool)
        or transfer_every < 1
    ):
        raise ValueError(
            f"tiki_taka: transfer_every={transfer_every!r} must be a positive integer "
            "(samples between two row transfers)"
        )
    if not (
        callable(transfer_lr) or isinstance(transfer_lr, (int, float, jax.Array))
    ) or isinstance(transfer_lr, bool):
        raise TypeError(
            f"tiki_taka: transfer_lr={transfer_lr!r} must be a number or an optax schedule"
        )
    if transfer_io is not None and not isinstance(transfer_io, IOConfig):
        raise TypeError(f"tiki_taka: transfer_io={transfer_io!r}; pass an analog.IOConfig")
    bbcore.check_seed(seed, "tiki_taka")
    return IOConfig() if transfer_io is None else transfer_io


def transfer_rows(
    count: jax.Array, batch: int, every: int, n_rows: int, tile_rows: int | None = None
):
    """Rows of ``A`` read in step ``count`` of ``batch`` samples: every ``every`` samples, each
    row tile of ``tile_rows`` rows reads one of its own rows, cycling within the tile (aihwkit
    gives every tile its own ``TransferCompound``; the last tile cycles over the rows it holds).
    ``tile_rows=None``: one tile of all ``n_rows``. Returns ``(rows, live)``, both
    ``(T m,)`` with ``T`` the row tiles and ``m = ceil(batch / every)`` static (the most
    transfers a step can hold), ``live`` masking the reads that do not happen in this step: when
    neither divides the other, steps take ``floor`` or ``ceil(batch / every)`` transfers so that
    the count since the start is always ``floor(samples / every)``."""
    m = -(-batch // every)
    done = (count * batch) // every
    now = ((count + 1) * batch) // every - done
    i = jnp.arange(m)
    size = n_rows if tile_rows is None else min(tile_rows, n_rows)
    starts = np.arange(0, n_rows, size)
    held = np.minimum(size, n_rows - starts)  # rows each tile holds: the last may hold fewer
    rows = jnp.asarray(starts)[:, None] + (done + i)[None, :] % jnp.asarray(held)[:, None]
    live = jnp.broadcast_to(i < now, rows.shape)
    return rows.reshape(-1), live.reshape(-1)


class _Settings(NamedTuple):
    """The static settings of one :func:`tiki_taka` and its (possibly injected) rates."""

    update: UpdateConfig
    io: IOConfig
    every: int
    lr: jax.Array
    transfer_lr: jax.Array
    chop_probability: jax.Array
    max_pulses: int | None = None


def _transfer(cb: Crossbar, fast, chop, count, key, st: _Settings):
    """TTv2's transfer (module docstring), each read row times its chopper sign, which then
    flips with probability ``chop_probability``; returns ``(C, H, pulses to C, choppers)``."""
    n_in, n_out = cb.tiles.shape
    rows, live = transfer_rows(count, cb.tap.shape[0], st.every, n_in, fast.tile_shape[0])
    k_read, k_pulse, k_chop = jax.random.split(key, 3)
    e = jax.nn.one_hot(rows, n_in, dtype=_F32) * live[:, None].astype(_F32)
    # each row tile reads its own row through its own periphery, as each of aihwkit's tiles
    # runs its own transfer: the other row tiles are not read, so their read noise (and ADC)
    # does not enter this read, as a full mvm's sum over row tiles would add it
    y = tile_read(_tile_weights(fast), e, st.io, k_read if st.io.needs_key else None, False)
    reads = jnp.arange(rows.shape[0])
    v = y[reads // (rows.shape[0] // y.shape[0]), :, reads, :]  # (T m, C, tw): own tile's output
    v = v.reshape(rows.shape[0], -1)[:, :n_out]  # (T m, out): rows of A, read
    v = v * (chop[rows] * live.astype(_F32))[:, None]
    assert cb.buffer is not None  # tiki_taka refuses layers without a fast array
    h = cb.buffer.at[rows].add(st.transfer_lr * v)
    dw = weight_step(cb.tiles)
    n = jnp.trunc(h / dw)
    if st.max_pulses is not None:
        # the transfer's pulse train has at most this many slots; the rest stays in H until
        # the row is read again (only this step's read rows send pulses: elsewhere |H| < dw
        # holds without a cap, but a capped row keeps whole steps between its reads)
        read = jnp.zeros((n_in,), _F32).at[rows].max(live.astype(_F32))
        n = jnp.clip(n, -st.max_pulses, st.max_pulses) * read[:, None]
    slow = apply_pulses(cb.tiles, jnp.maximum(n, 0.0), jnp.maximum(-n, 0.0), k_pulse)
    flip = live & (jax.random.uniform(k_chop, rows.shape, _F32) < st.chop_probability)
    chop = chop.at[rows].multiply(jnp.where(flip, -1.0, 1.0).astype(_F32))
    return slow, h - n * dw, 2.0 * jnp.sum(jnp.abs(n)), chop


def _layer_step(p: Crossbar, g: Crossbar, chop, count, key, st: _Settings):
    """One layer's (c-)TTv2 step: pulse ``A`` with the chopped inputs ``x c``, transfer;
    returns ``(update, pulses to A, pulses to C, new choppers)``."""
    k_upd, k_tr = jax.random.split(key)
    x, d = tap_signals(p, g)
    assert p.fast is not None and p.buffer is not None  # tiki_taka checked the layers
    fast, n = pulse_update(p.fast, x * chop[None, :], -d, st.lr, k_upd, update=st.update)
    slow, h, m, chop = _transfer(p, fast, chop, count, k_tr, st)
    zeros = jax.tree.map(jnp.zeros_like, p)
    delta = dataclasses.replace(
        zeros,
        tiles=tiles_delta(p.tiles, slow),
        fast=tiles_delta(p.fast, fast),
        buffer=h - p.buffer,
        step=jnp.ones_like(p.step),
    )
    return delta, n, m, chop


def _step_all(state: TikiTakaState, p_leaves, g_leaves, treedef, st: _Settings):
    """Every leaf's step: (c-)TTv2 for analog layers, ``-lr g`` for digital leaves; returns
    ``(updates, new state)``."""
    key, sub = jax.random.split(state.key)
    out: list = []
    chops: list[jax.Array] = []
    sent, moved = jnp.zeros((), _F32), jnp.zeros((), _F32)
    for i, (p, g) in enumerate(zip(p_leaves, g_leaves)):
        if not is_crossbar(p):
            out.append((-st.lr * jnp.asarray(g).astype(_F32)).astype(jnp.result_type(p)))
            continue
        k = jax.random.fold_in(sub, i)
        delta, n, m, c = _layer_step(p, g, state.choppers[len(chops)], state.count, k, st)
        out.append(delta)
        chops.append(c)
        sent, moved = sent + n, moved + m
    new_state = TikiTakaState(
        state.count + 1,
        key,
        state.pulses + sent,
        state.transfer_pulses + moved,
        jnp.asarray(state.nonfinite, jnp.int32),
        tuple(chops),
    )
    return treedef.unflatten(out), new_state


def tiki_taka(
    learning_rate: optax.ScalarOrSchedule,
    *,
    transfer_every: int = 1,
    transfer_lr: optax.ScalarOrSchedule = 1.0,
    chop_probability: float | jax.Array = 0.0,
    max_transfer_pulses: int | None = None,
    update: UpdateConfig | None = None,
    transfer_io: IOConfig | None = None,
    seed: int = 0,
) -> optax.GradientTransformationExtraArgs:
    """Tiki-Taka v2 for analog layers built with ``fast_device=`` (module docstring).

    Args:
      learning_rate: the SGD step of the pulsed updates of ``A``: a scalar, or an optax
        schedule of the step count (as optax's own optimizers take it).
      transfer_every: samples between two row transfers from ``A`` to ``H`` (any positive
        integer; the transfers of a step are the ones its samples complete).
      transfer_lr: scale of a row read into ``H`` (TTv2's transfer learning rate): a scalar or
        a schedule of the step count. A decay of ``learning_rate`` alone does not anneal
        Tiki-Taka: ``A`` keeps what it holds and every transfer adds it into ``C`` again
        (BENCHMARKS.md, "Stop 27"); decaying ``transfer_lr`` is what freezes ``C``.
      chop_probability: c-TTv2 (Rasch et al., "Fast and robust analog in-memory deep neural
        network training", Nat. Commun. 15:7133, 2024, Algorithm 1; aihwkit's
        ``ChoppedTransferCompound`` ``in_chop_prob``): each input row ``i`` has a chopper sign
        ``c_i``; ``A`` is updated with ``x_i c_i`` and its row is read times ``c_i``, so the
        signal reaches ``H`` unchanged while ``A``'s offsets (its symmetry point) alternate in
        sign and average out; after each read of a row its sign flips with this probability.
        0 (default): TTv2 without choppers.
      max_transfer_pulses: the most pulses one transfer sends to a device of ``C``; whole steps
        beyond it stay in ``H`` for the row's next transfer (aihwkit's
        ``BufferedTransferCompound`` caps a transfer at its ``transfer_update``'s ``desired_BL``,
        31 by default: the slots of one pulse train). None (default): no cap.
      update: how the updates of ``A`` become pulses (:class:`analog.UpdateConfig`).
      transfer_io: periphery of the transfer reads (aihwkit's ``transfer_forward``); None = exact.
      seed: integer seed of the pulse trains and of the transfer reads and pulses.

    Digital leaves take plain SGD ``-lr g``. Non-finite policy: as :func:`analog.pulsed_sgd`
    (a NaN/inf gradient is refused whole: nothing pulsed, state kept, ``nonfinite`` + 1).
    """
    cfg = check_update_config(update, "tiki_taka")
    io = _check_args(transfer_every, transfer_lr, transfer_io, seed)
    if isinstance(chop_probability, (int, float)) and not 0 <= chop_probability <= 1:
        raise ValueError(f"tiki_taka: chop_probability={chop_probability!r} must be in [0, 1]")
    if max_transfer_pulses is not None and (
        not isinstance(max_transfer_pulses, int)
        or isinstance(max_transfer_pulses, bool)
        or max_transfer_pulses < 1
    ):
        raise ValueError(
            f"tiki_taka: max_transfer_pulses={max_transfer_pulses!r} must be a positive int "
            "(pulses per transfer, e.g. 31 as aihwkit) or None (no cap)"
        )

    def init_fn(params):
        leaves = jax.tree.leaves(params, is_leaf=is_crossbar)
        chops = tuple(jnp.ones((p.tiles.shape[0],), _F32) for p in leaves if is_crossbar(p))
        z, zf = jnp.zeros((), jnp.int32), jnp.zeros((), _F32)
        return TikiTakaState(z, bbcore.key(seed), zf, zf, z, chops)

    def update_fn(updates, state, params=None, **extra):
        del extra
        _require(updates, params, "tiki_taka")
        lr, tlr = rate_at(learning_rate, state.count), rate_at(transfer_lr, state.count)
        chop = jnp.asarray(chop_probability, _F32)
        st = _Settings(cfg, io, transfer_every, lr, tlr, chop, max_transfer_pulses)
        p_leaves, treedef = jax.tree.flatten(params, is_leaf=is_crossbar)
        g_leaves = treedef.flatten_up_to(updates)
        if any(is_crossbar(p) and p.fast is None for p in p_leaves):
            raise ValueError(
                "tiki_taka: an analog layer has no fast array; build it with fast_device=... "
                "(or train it with analog.pulsed_sgd)"
            )

        def take():
            return _step_all(state, p_leaves, g_leaves, treedef, st)

        return bbcore.refuse_nonfinite(bbcore.all_finite(updates), take, state, params)

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)
