"""Rank-1 updates as programming pulses: ``analog.pulse_update`` and its ``UpdateConfig``.

Gokmen & Vlasov (Front. Neurosci. 10:333, 2016): an outer product ``lr * x^T d`` is applied
either as stochastic pulse trains of bit length BL whose coincidences at each cross-point
program the device (their Eq. 2-3), with aihwkit-style update management balancing the row
and column probabilities and, optionally, aihwkit's per-sample shortening of the trains
("update BL management"); or as per-device pulse counts. The knobs are one frozen
:class:`UpdateConfig`, as aihwkit's ``UpdateParameters``.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, TypeVar

import jax
import jax.numpy as jnp

import bbcore
from analog._counter_rng import _U32, _key_seeds
from analog._programming import apply_pulses
from analog._pulse_kernels import _apply_counts, _count_and_apply, _pack_bits, _train_words
from analog._tiles import (
    CompactTiles,
    Tiles,
    _to_tiles,
    conductance_state,
    weight_step,
    with_conductance_state,
)

__all__ = ["UpdateConfig", "pulse_update"]

_F32 = jnp.float32
_T = TypeVar("_T", Tiles, CompactTiles)


_MODES = ("stochastic", "deterministic")
_IMPLS = ("fast", "reference")


def _check_int(name: str, value, lo: int, hi: int, what: str) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or not lo <= value <= hi:
        raise ValueError(
            f"UpdateConfig: {name}={value!r}: {what} must be an integer in [{lo}, {hi}]"
        )


def _check_bool(name: str, value, true: str, false: str) -> None:
    if not isinstance(value, bool):
        raise TypeError(f"UpdateConfig: {name}={value!r}: use True ({true}) or False ({false})")


@dataclasses.dataclass(frozen=True, kw_only=True)
class UpdateConfig:
    """How a rank-1 update ``lr x^T d`` becomes pulses (aihwkit's ``UpdateParameters``).

    Attributes:
      mode: the pulse mode (aihwkit's ``pulse_type``). ``"stochastic"`` (Gokmen & Vlasov 2016,
        Eq. 2-3; aihwkit's ``StochasticCompressed``): row ``i`` of sample ``b`` fires a
        Bernoulli train of ``BL`` slots with probability ``C_x |x_bi|``, column ``j`` with
        ``C_d |d_bj|``; each coincidence is one pulse at ``(i, j)`` in the direction of
        ``sign(x_bi d_bj)``, so the expected change is ``BL C_x C_d dw |x_bi d_bj|`` with
        ``C_x C_d = lr / (BL dw)``; probabilities above 1 are truncated, as on a chip.
        ``"deterministic"``: each device receives ``round(lr (x^T d)_ij / dw)`` pulses (no
        trains: ``bl``, ``update_management`` and ``bl_management`` do not apply).
      bl: the train length BL (aihwkit's ``desired_bl``), 1..1024 slots; the longest train
        with ``bl_management``.
      update_management: balance the two factors per sample, ``C_x max|x_b| = C_d max|d_b|``
        (aihwkit's ``update_management``), so neither side's probabilities saturate first.
        Where the largest pair needs more than BL coincidences (``k = lr max|x_b| max|d_b| /
        dw > BL``), aihwkit 1.1.0's rule: ``C_x max|x_b| = 1`` and ``C_d max|d_b| = k / BL``,
        so only d's probabilities are truncated. False uses ``C_x = C_d = sqrt(lr / (BL dw))``.
      bl_management: shorten each sample's trains to ``BL_b = clip(ceil(lr max|x_b| max|d_b|
        / dw), 1, bl)`` slots (aihwkit's ``update_bl_management``): the fewest for which the
        largest pair's coincidence probability per slot is at most 1. The expected change is
        still ``lr x_bi d_bj`` (truncated only where ``BL_b = bl``), with fewer slots and
        coarser quantisation when the update is small (the trade-off between BL and
        resolution Gokmen & Vlasov discuss). Default False (aihwkit's default is True).
      prob_bits: probability resolution of the ``"fast"`` trains, 4..16 bits (``2^-k``, a
        k-bit comparator in a pulse generator; a probability below ``2^-(k+1)`` never fires).
      impl: ``"fast"`` (default) or ``"reference"``, two implementations of the same model:

        * ``"fast"``: trains drawn as packed 32-slot words from a keyed counter hash
          (``analog._counter_rng``); the up and down coincidences of the whole batch summed
          per device without a ``(B, in, out)`` tensor, in one fused popcount loop or, when
          the longest train has at most 8 slots, exactly as a matmul of 0/1 matrices (with
          ``bl_management`` chosen at run time by ``lax.switch``, so data never trigger a
          recompilation; ``analog._pulse_kernels``); then every device takes its ``n_up``
          and ``n_down`` pulses in closed form in one pass (:meth:`analog.Device.step_two`)
          with one cycle-to-cycle noise value of the summed variance. Approximations against
          a chip (or aihwkit) that applies the pulses one at a time: (1) within one update the
          raising pulses come before the lowering ones, which matters only where a device
          reaches a bound or through the state dependence of its step; (2) one noise value
          per device and update (a unit-variance Irwin-Hall(4) variate) instead of one
          Gaussian per pulse: same mean and variance for constant steps, tails cut at 3.46
          standard deviations.
        * ``"reference"``: float Bernoulli draws from ``jax.random`` at full resolution, a
          ``(B, in, out)`` popcount tensor, and :func:`analog.apply_pulses` (four device
          steps, four Gaussian draws per pair); kept to test ``"fast"`` against.

    ``UpdateConfig()`` is the behaviour of ``pulse_update`` without a config: stochastic,
    BL 31, update management on, BL management off, 8-bit probabilities, the fast kernels.
    """

    mode: str = "stochastic"
    bl: int = 31
    update_management: bool = True
    bl_management: bool = False
    prob_bits: int = 8
    impl: str = "fast"

    def __post_init__(self):
        if self.mode not in _MODES:
            raise ValueError(
                f"UpdateConfig: mode={self.mode!r}: use 'stochastic' (coincidence "
                "pulse trains) or 'deterministic' (per-device pulse counts)"
            )
        _check_int("bl", self.bl, 1, 1024, "the pulse-train length")
        _check_bool(
            "update_management",
            self.update_management,
            "balance the row and column probabilities per sample",
            "equal factors sqrt(lr / (bl dw))",
        )
        _check_bool(
            "bl_management",
            self.bl_management,
            "shorten each sample's trains to ceil(lr max|x| max|d| / dw) slots, as "
            "aihwkit's update_bl_management",
            "always bl slots",
        )
        _check_int("prob_bits", self.prob_bits, 4, 16, "the probability resolution in bits")
        if self.impl not in _IMPLS:
            raise ValueError(
                f"UpdateConfig: impl={self.impl!r}: use 'fast' (packed trains, "
                "fused counts, one device pass) or 'reference' (the per-sample "
                "reference implementation)"
            )

    @property
    def trains(self) -> bool:
        """Whether pulse trains are drawn (stochastic mode)."""
        return self.mode == "stochastic"


class _Unset:
    """The default of ``pulse_update``'s loose keywords: "take the config's field"."""

    def __repr__(self) -> str:
        return "<from update>"


_UNSET: Any = _Unset()


def _resolve(update: UpdateConfig | None, **knobs) -> UpdateConfig:
    """``update`` (default ``UpdateConfig()``) with the keywords that were given replaced."""
    if update is None:
        update = UpdateConfig()
    elif not isinstance(update, UpdateConfig):
        raise TypeError(f"pulse_update: update={update!r}; pass an analog.UpdateConfig")
    given = {k: v for k, v in knobs.items() if v is not _UNSET}
    return dataclasses.replace(update, **given) if given else update


def pulse_update(
    tiles: _T,
    x: jax.Array,
    d: jax.Array,
    lr: float | jax.Array,
    key: jax.Array | None,
    *,
    update: UpdateConfig | None = None,
    mode: str = _UNSET,
    bl: int = _UNSET,
    impl: str = _UNSET,
    prob_bits: int = _UNSET,
    bl_management: bool = _UNSET,
    update_management: bool = _UNSET,
) -> tuple[_T, jax.Array]:
    """Outer-product update ``W += lr * sum_b x_b^T d_b`` as programming pulses.

    How the update becomes pulses is ``update`` (an :class:`UpdateConfig`: pulse mode, bit
    length, update and BL management, kernels). The loose keywords ``mode``, ``bl``,
    ``impl``, ``prob_bits``, ``bl_management`` and ``update_management`` are the config's
    fields, kept so existing calls work; given ones replace the config's.

    Args:
      tiles: weights ``(in, out)``, :class:`analog.Tiles` or :class:`analog.CompactTiles`
        (fast path only; its stochastic rounding draws from ``key``); x: ``(B, in)``;
        d: ``(B, out)``; lr: learning rate (scalar).
      key: PRNG key (pulse trains, cycle-to-cycle noise, compact rounding); None only for a
        deterministic update of a noise-free device in the float32 state.
      update: the update configuration; None = ``UpdateConfig()``.

    Returns:
      ``(new_tiles, pulses)``: tiles of the kind given, and the float32 number of pulses sent.
    """
    cfg = _resolve(
        update,
        mode=mode,
        bl=bl,
        impl=impl,
        prob_bits=prob_bits,
        bl_management=bl_management,
        update_management=update_management,
    )
    x = jnp.asarray(x).astype(_F32)
    d = jnp.asarray(d).astype(_F32)
    if (
        x.ndim != 2
        or d.ndim != 2
        or x.shape[0] != d.shape[0]
        or (x.shape[1], d.shape[1]) != tiles.shape
    ):
        raise ValueError(
            f"pulse_update: x {x.shape} and d {d.shape} must be (B, in) and "
            f"(B, out) for tiles of shape {tiles.shape}"
        )
    if cfg.trains:
        bbcore.require_key(key, "pulse_update", "mode='stochastic' draws pulse trains")
    if tiles.device.dw_min_std > 0:
        bbcore.require_key(key, "pulse_update", "the device has cycle-to-cycle noise")
    if isinstance(tiles, CompactTiles):
        bbcore.require_key(key, "pulse_update", "compact tiles round each change stochastically")
        if cfg.impl != "fast":
            raise ValueError(
                f"pulse_update: impl={cfg.impl!r} on CompactTiles; the compact state runs the "
                "fast path only (analog.expand_tiles gives float32 Tiles for the reference)"
            )
    if not cfg.trains:  # one compiled variant for every deterministic config
        cfg = UpdateConfig(mode="deterministic", impl=cfg.impl)
    lr = jnp.asarray(lr, _F32)
    if cfg.impl == "fast":
        # Only the conductances come back from the compiled update: the device parameters
        # are reused as they are (returning them from the jit would copy every array).
        plus, minus, sent = _pulse_update_fast(tiles, x, d, lr, key, cfg)
        return with_conductance_state(tiles, plus, minus), sent
    return _pulse_update_reference(tiles, x, d, lr, key, cfg)


def _train_lengths(x, d, lr, dw, bl):
    """aihwkit's update BL management: per-sample train lengths ``clip(ceil(lr max|x_b|
    max|d_b| / dw), 1, bl)`` as (B,) int32 (``bl`` where that is not finite)."""
    need = lr * jnp.max(jnp.abs(x), axis=1) * jnp.max(jnp.abs(d), axis=1) / dw
    # `need < bl` is False for NaN and inf: such a sample keeps the full train.
    return jnp.where(need < bl, jnp.maximum(jnp.ceil(need), 1.0), bl).astype(jnp.int32)


def _probabilities(x, d, lr, dw, bl, balanced: bool = True):
    """Per-sample pulse probabilities of rows and columns (truncated at 1).

    ``bl``: the train length, a number or per-sample lengths of shape (B, 1). ``balanced``:
    update management (``C_x max|x_b| = C_d max|d_b|``), else ``C_x = C_d = sqrt(c)``."""
    if not balanced:
        root = jnp.sqrt(lr / (bl * dw))
        return jnp.minimum(jnp.abs(x) * root, 1.0), jnp.minimum(jnp.abs(d) * root, 1.0)
    xmax = jnp.max(jnp.abs(x), axis=1, keepdims=True)
    dmax = jnp.max(jnp.abs(d), axis=1, keepdims=True)
    c = lr / (bl * dw)
    # aihwkit 1.1.0 (PulsedUpdateMetaParameter::performUpdateManagement, "avoid clipping of
    # x"): when the largest pair needs more coincidences than the train has slots,
    # k = lr max|x_b| max|d_b| / dw > BL, d's maximum is taken as max|d_b| BL / k, so that x's
    # probabilities reach exactly 1 and only d's are truncated (at k / BL)
    k = lr * xmax * dmax / dw
    dmax = jnp.where(k > bl, dmax * bl / jnp.where(k > bl, k, 1.0), dmax)
    safe = (xmax > 0) & (dmax > 0)
    cx = jnp.where(safe, jnp.sqrt(c * dmax / jnp.where(safe, xmax, 1.0)), 0.0)
    cd = jnp.where(safe, jnp.sqrt(c * xmax / jnp.where(safe, dmax, 1.0)), 0.0)
    return jnp.minimum(jnp.abs(x) * cx, 1.0), jnp.minimum(jnp.abs(d) * cd, 1.0)


@functools.partial(jax.jit, static_argnums=5)
def _pulse_update_fast(tiles, x, d, lr, key, cfg: UpdateConfig):
    dw = weight_step(tiles)
    seeds = None if key is None else _key_seeds(key)
    bl, prob_bits = cfg.bl, cfg.prob_bits
    if not cfg.trains:
        n = _to_tiles(jnp.round(lr * (x.T @ d) / dw), tiles.tile_shape)
        up, down = jnp.maximum(n, 0.0), jnp.maximum(-n, 0.0)
        sent = 2.0 * jnp.sum(up + down)
    else:
        if seeds is None:
            raise ValueError("pulse trains are random: pass key= (a jax.random.key)")
        lengths = _train_lengths(x, d, lr, dw, bl) if cfg.bl_management else None
        px, pd = _probabilities(
            x,
            d,
            lr,
            dw,
            bl if lengths is None else lengths[:, None].astype(_F32),
            cfg.update_management,
        )
        # Pad rows and columns to whole tiles before drawing: padded lines get p = 0 (zero
        # trains), and each train word is drawn once, straight into the layout of the counts.
        (th, tw), (r, c) = tiles.tile_shape, tiles.grid
        pad_in = lambda a: jnp.pad(a, ((0, 0), (0, r * th - a.shape[1])))
        pad_out = lambda a: jnp.pad(a, ((0, 0), (0, c * tw - a.shape[1])))
        wx = _train_words(seeds, 1, pad_in(px), bl, prob_bits, lengths)
        wd = _train_words(seeds, 2, pad_out(pd), bl, prob_bits, lengths)
        neg = lambda a: jnp.where(a < 0, _U32(0xFFFFFFFF), _U32(0))
        plus, minus, total = _count_and_apply(
            tiles, wx, neg(pad_in(x)), wd, neg(pad_out(d)), seeds, bl, lengths
        )
        return plus, minus, 2.0 * total.astype(_F32)
    return (*conductance_state(_apply_counts(tiles, up, down, seeds, 3)), sent)


@functools.partial(jax.jit, static_argnums=5)
def _pulse_update_reference(tiles, x, d, lr, key, cfg: UpdateConfig):
    dw = weight_step(tiles)
    bl = cfg.bl
    if not cfg.trains:
        n = jnp.round(lr * (x.T @ d) / dw)
        n_up, n_down = jnp.maximum(n, 0.0), jnp.maximum(-n, 0.0)
        k_noise = key
    else:
        kx, kd, k_noise = jax.random.split(key, 3)
        slots = jnp.arange(bl)[None, :, None]
        if cfg.bl_management:
            lengths = _train_lengths(x, d, lr, dw, bl)
            px, pd = _probabilities(
                x, d, lr, dw, lengths[:, None].astype(_F32), cfg.update_management
            )
            live = slots < lengths[:, None, None]  # (B, bl, 1)
        else:
            px, pd = _probabilities(x, d, lr, dw, bl, cfg.update_management)
            live = True
        bx = live & (jax.random.uniform(kx, (x.shape[0], bl, x.shape[1]), _F32) < px[:, None, :])
        bd = live & (jax.random.uniform(kd, (d.shape[0], bl, d.shape[1]), _F32) < pd[:, None, :])
        wx, wd = _pack_bits(bx), _pack_bits(bd)  # (B, W, in), (B, W, out)
        coinc = jax.lax.population_count(wx[:, :, :, None] & wd[:, :, None, :])
        coinc = jnp.sum(coinc, axis=1).astype(_F32)  # (B, in, out)
        sgn = jnp.sign(x)[:, :, None] * jnp.sign(d)[:, None, :]
        n_up = jnp.sum(jnp.where(sgn > 0, coinc, 0.0), axis=0)
        n_down = jnp.sum(jnp.where(sgn < 0, coinc, 0.0), axis=0)
    new = apply_pulses(tiles, n_up, n_down, k_noise)
    return new, 2.0 * jnp.sum(n_up + n_down)
