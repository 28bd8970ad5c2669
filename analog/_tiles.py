"""Crossbar tiles: a weight matrix as differential conductance pairs cut into fixed-size tiles.

A weight matrix ``W`` of shape ``(in, out)`` (flax kernel layout) is stored as two conductance
arrays ``G+`` and ``G-``, ``W = w_scale (G+ - G-)``, cut into ``tile_shape = (rows, cols)`` tiles
(default 64 x 64, the array size of Yi et al., Nature Electronics 2023). Each tile is an
independent array with its own periphery (``analog._periphery``); products through the tiles
are ``analog._mvm``, programming them ``analog._programming`` and ``analog._update``. A leading
axis of independent chips is just another ``jax.vmap`` (Monte-Carlo device variation in one
call). With ``compact=True`` the same matrix is a :class:`CompactTiles`: 16-bit conductances
and 8-bit device codes (``analog._compact``), about a fifth of the bytes per device.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Literal, overload

import jax
import jax.numpy as jnp

from analog import _compact as CS
from analog._compact import CompactVariation
from analog._devices import Device, DeviceVariation

__all__ = [
    "Tiles",
    "CompactTiles",
    "init_tiles",
    "compact_tiles",
    "expand_tiles",
    "read_weights",
    "weight_step",
]

_F32 = jnp.float32


def check_tile_shape(tile_shape: Any) -> tuple[int, int]:
    """Validate ``tile_shape`` = (rows, cols) of positive ints; returns it as a tuple."""
    ok = (
        isinstance(tile_shape, (tuple, list))
        and len(tile_shape) == 2
        and all(isinstance(t, int) and not isinstance(t, bool) and t > 0 for t in tile_shape)
    )
    if not ok:
        raise ValueError(
            f"tile_shape={tile_shape!r}: use a pair of positive integers "
            "(rows, cols), e.g. (64, 64) as in Yi et al. (2023)"
        )
    return (int(tile_shape[0]), int(tile_shape[1]))


class _TileGrid:
    """The grid both tile states answer from their first ``(R, C, rows, cols)`` array."""

    @property
    def _layout(self) -> jax.Array:
        raise NotImplementedError

    @property
    def tile_shape(self) -> tuple[int, int]:
        return (self._layout.shape[-2], self._layout.shape[-1])

    @property
    def grid(self) -> tuple[int, int]:
        return (self._layout.shape[-4], self._layout.shape[-3])


@functools.partial(
    jax.tree_util.register_dataclass,
    data_fields=["g_plus", "g_minus", "var_plus", "var_minus", "w_scale"],
    meta_fields=["shape", "device"],
)
@dataclasses.dataclass(frozen=True)
class Tiles(_TileGrid):
    """A weight matrix on crossbar tiles (a pytree; ``shape`` and ``device`` are static).

    g_plus, g_minus: float32 conductances, ``(R, C, rows, cols)``: R x C tiles of the padded matrix.
    var_plus, var_minus: per-device parameters (:class:`DeviceVariation`) of the two arrays.
    w_scale: float32 scalar, weight per unit conductance difference.
    shape: ``(in, out)`` of the logical weight matrix.
    device: the :class:`Device` model of every cell.
    """

    g_plus: jax.Array
    g_minus: jax.Array
    var_plus: DeviceVariation
    var_minus: DeviceVariation
    w_scale: jax.Array
    shape: tuple[int, int]
    device: Device

    @property
    def _layout(self) -> jax.Array:
        return self.g_plus


@functools.partial(
    jax.tree_util.register_dataclass,
    data_fields=["code_plus", "code_minus", "par_plus", "par_minus", "w_scale"],
    meta_fields=["shape", "device"],
)
@dataclasses.dataclass(frozen=True)
class CompactTiles(_TileGrid):
    """:class:`Tiles` in the compact device state (a pytree; ``shape``, ``device`` static).

    The conductances are uint16 codes, ``G = g_min + lsb * code`` with ``lsb`` one 65535th of
    the largest device range, and the per-device parameters int8 codes of their normal draws
    (:class:`analog.CompactVariation`); see ``analog._compact`` for the statistics this keeps.
    :func:`analog.mvm`, :func:`analog.mvm_transpose`, :func:`analog.read_weights` and
    :func:`analog.pulse_update` (fast path) take it as they take :class:`Tiles`;
    :func:`expand_tiles` gives the float32 state it stands for.

    code_plus, code_minus: uint16 conductance codes, ``(R, C, rows, cols)``.
    par_plus, par_minus: :class:`analog.CompactVariation` of the two arrays.
    w_scale: float32 scalar, weight per unit conductance difference.
    shape: ``(in, out)`` of the logical weight matrix.
    device: the :class:`Device` model of every cell.
    """

    code_plus: jax.Array
    code_minus: jax.Array
    par_plus: CompactVariation
    par_minus: CompactVariation
    w_scale: jax.Array
    shape: tuple[int, int]
    device: Device

    @property
    def _layout(self) -> jax.Array:
        return self.code_plus

    @property
    def lsb(self) -> float:
        """One conductance code step, in conductance units."""
        return CS.conductance_lsb(self.device)


def conductance_state(tiles: Tiles | CompactTiles) -> tuple[jax.Array, jax.Array]:
    """The two arrays an update writes: ``(G+, G-)`` or, compact, their codes."""
    if isinstance(tiles, CompactTiles):
        return tiles.code_plus, tiles.code_minus
    return tiles.g_plus, tiles.g_minus


def with_conductance_state(tiles, plus: jax.Array, minus: jax.Array):
    """``tiles`` with the arrays of :func:`conductance_state` replaced."""
    if isinstance(tiles, CompactTiles):
        return dataclasses.replace(tiles, code_plus=plus, code_minus=minus)
    return dataclasses.replace(tiles, g_plus=plus, g_minus=minus)


def _to_tiles(w: jax.Array, tile_shape: tuple[int, int]) -> jax.Array:
    n_in, n_out = w.shape
    th, tw = tile_shape
    r, c = -(-n_in // th), -(-n_out // tw)
    wp = jnp.pad(w, ((0, r * th - n_in), (0, c * tw - n_out)))
    return wp.reshape(r, th, c, tw).transpose(0, 2, 1, 3)


def _from_tiles(wt: jax.Array, shape: tuple[int, int]) -> jax.Array:
    r, c, th, tw = wt.shape
    return wt.transpose(0, 2, 1, 3).reshape(r * th, c * tw)[: shape[0], : shape[1]]


@overload
def init_tiles(
    key: jax.Array,
    w: jax.Array,
    device: Device,
    tile_shape=...,
    *,
    w_max: float | jax.Array | None = ...,
    compact: Literal[False] = ...,
) -> Tiles: ...


@overload
def init_tiles(
    key: jax.Array,
    w: jax.Array,
    device: Device,
    tile_shape=...,
    *,
    w_max: float | jax.Array | None = ...,
    compact: Literal[True],
) -> CompactTiles: ...


def init_tiles(
    key: jax.Array,
    w: jax.Array,
    device: Device,
    tile_shape=(64, 64),
    *,
    w_max: float | jax.Array | None = None,
    compact: bool = False,
) -> Tiles | CompactTiles:
    """Program ``w`` onto fresh crossbar tiles (write-and-verify: exact up to the bounds).

    The pair is centred at mid-range, ``G+- = g_mid +- w / (2 w_scale)``, so both devices sit at
    their symmetry point when the weight is zero, and ``|w| <= w_max`` is representable. A
    device whose range (``bounds_dtod``) ends below that cannot hold its level: such a pair is
    centred at the highest level both devices hold instead, so it still stores ``w`` exactly
    where its two ranges allow (as aihwkit, whose bound spreads keep ``w = 0`` inside every
    device's range).

    Args:
      key: PRNG key for the device-to-device variation.
      w: ``(in, out)`` weight matrix.
      device: device model of every cell.
      tile_shape: ``(rows, cols)`` of one tile.
      w_max: largest representable ``|weight|``; None = twice ``max|w|`` (1.0 for an all-zero w).
      compact: store the compact device state (:class:`CompactTiles`, :func:`compact_tiles` of
        the full-precision tiles of the same key) instead of float32 (:class:`Tiles`).

    Returns:
      :class:`Tiles` (or :class:`CompactTiles`) with ``R = ceil(in/rows)`` by
      ``C = ceil(out/cols)`` tiles.
    """
    if not isinstance(compact, bool):
        raise TypeError(f"init_tiles: compact={compact!r}; use True or False")
    tile_shape = check_tile_shape(tile_shape)
    if not isinstance(device, Device):
        raise TypeError(f"device={device!r}: pass a device model such as analog.presets.IDEAL")
    if compact:
        CS.check_compact(device)  # before any work: the device alone decides
    w = jnp.asarray(w)
    if w.ndim != 2:
        raise ValueError(
            f"init_tiles: w has shape {w.shape}; need a 2-D (in, out) matrix "
            "(analog.program maps other leaves to 2-D first)"
        )
    tiles = _init_tiles(
        key, w.astype(_F32), device, tile_shape, None if w_max is None else jnp.asarray(w_max, _F32)
    )
    return compact_tiles(tiles) if compact else tiles


@functools.partial(jax.jit, static_argnums=(2, 3))
def _init_tiles(key, w, device, tile_shape, w_max):
    if w_max is None:
        m = jnp.max(jnp.abs(w))
        w_max = jnp.where(m > 0, 2.0 * m, 1.0)
    w_scale = w_max / device.range
    wt = _to_tiles(w, tile_shape)
    both = device.sample_variation(key, (2, *wt.shape))  # G+ and G- in one draw
    var_p = jax.tree.map(lambda a: a[0], both)
    var_m = jax.tree.map(lambda a: a[1], both)
    half = wt / (2.0 * w_scale)
    centre = jnp.minimum(0.5 * (device.g_min + device.g_max), var_p.g_max - half)
    centre = jnp.maximum(jnp.minimum(centre, var_m.g_max + half), device.g_min + jnp.abs(half))
    g_plus = device.clip(centre + half, var_p)
    g_minus = device.clip(centre - half, var_m)
    return Tiles(g_plus, g_minus, var_p, var_m, w_scale, (int(w.shape[0]), int(w.shape[1])), device)


def compact_tiles(tiles: Tiles) -> CompactTiles:
    """The compact device state of ``tiles`` (conductances to the nearest 16-bit code).

    ``tiles`` must hold the device-to-device variation its device draws
    (:func:`init_tiles`); raises ValueError when the device's step is under 16 codes.
    """
    if not isinstance(tiles, Tiles):
        raise TypeError(f"compact_tiles: tiles={type(tiles).__name__}; pass analog.Tiles")
    CS.check_compact(tiles.device)
    return _compact_tiles(tiles)


@jax.jit
def _compact_tiles(tiles: Tiles) -> CompactTiles:
    dev = tiles.device
    pp = CS.encode_variation(dev, tiles.var_plus)
    pm = CS.encode_variation(dev, tiles.var_minus)
    cp = CS.encode_conductance(dev, tiles.g_plus, pp)
    cm = CS.encode_conductance(dev, tiles.g_minus, pm)
    return CompactTiles(cp, cm, pp, pm, tiles.w_scale, tiles.shape, dev)


@jax.jit
def expand_tiles(tiles: CompactTiles) -> Tiles:
    """The float32 :class:`Tiles` a :class:`CompactTiles` stands for (an exact decode)."""
    dev, shape = tiles.device, tiles.code_plus.shape
    return Tiles(
        CS.decode_conductance(dev, tiles.code_plus),
        CS.decode_conductance(dev, tiles.code_minus),
        CS.decode_variation(dev, tiles.par_plus, shape),
        CS.decode_variation(dev, tiles.par_minus, shape),
        tiles.w_scale,
        tiles.shape,
        dev,
    )


def _tile_weights(tiles: Tiles | CompactTiles) -> jax.Array:
    if isinstance(tiles, CompactTiles):
        # g_min cancels in the difference: one integer subtraction and one scaling per weight.
        diff = tiles.code_plus.astype(jnp.int32) - tiles.code_minus.astype(jnp.int32)
        return diff.astype(_F32) * (tiles.w_scale * _F32(tiles.lsb))
    return (tiles.g_plus - tiles.g_minus) * tiles.w_scale


@jax.jit
def read_weights(tiles: Tiles | CompactTiles) -> jax.Array:
    """The ``(in, out)`` float32 weight matrix the tiles hold (an exact, noise-free read)."""
    return _from_tiles(_tile_weights(tiles), tiles.shape)


def weight_step(tiles: Tiles | CompactTiles) -> jax.Array:
    """Nominal weight change of one pulse pair: both devices of a pair move ``dw_min``."""
    return 2.0 * tiles.device.dw_min * tiles.w_scale
