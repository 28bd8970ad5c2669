"""Crossbars across devices: a layer's tiles spread over chips, and chip ensembles over devices.

Two axes of the crossbar model parallelise naturally (JAX meshes and ``shard_map``):

* **Tiles.** A large layer is cut into ``R x C`` tiles (64 x 64 in Yi et al.,
  Nature Electronics 2023); a chip holds only so many, so a large layer spans
  several chips. :func:`shard_tiles` places the tile *columns* (output blocks)
  of a layer on the devices of a mesh axis, one group of column blocks per
  simulated chip, and :func:`sharded_mvm` runs ``x @ W``: every chip receives
  the whole input (a broadcast, as the input bus of a multi-chip system does),
  runs its tiles through their periphery (DAC, noise, ADC) and sums its
  partial outputs over the row blocks, exactly as the single-device model
  does for those columns. The outputs stay on their chips (sharded over the
  mesh axis) until read. :func:`sharded_mvm_transpose` (``d @ W.T``, the
  backward read) needs the partial sums of every chip: it adds them with a
  ``psum``, the digital adder of the chips' outputs.
* **Chips.** Monte-Carlo studies of device-to-device variation evaluate many
  independently drawn chips (a leading axis, ``jax.vmap``);
  :func:`shard_chips` splits that axis over a mesh axis, each device
  ``vmap``-ing its own chips. Chips do not talk to each other, so there is no
  communication at all, and results equal the single-device ``vmap`` up to
  float32 rounding of the differently batched matmuls.

Noise keys are those of :func:`analog.mvm`: tile ``(r, c)`` uses
``split(key, (R, C))[r, c]`` on whichever device holds it, so a noisy read is
the same read on one device or many. (This holds for JAX's default threefry
keys; "rbg" keys draw different bits under a different ``vmap`` batch size,
so with them a sharded noisy read is an equally distributed, not identical, draw.)
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from jax import lax
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

import bbcore
from analog._mvm import _flat, tile_inputs, tile_keys, tile_outputs
from analog._periphery import IOConfig, require_io_key
from analog._tiles import Tiles

__all__ = ["shard_tiles", "sharded_mvm", "sharded_mvm_transpose", "shard_chips"]


def _check_axis(mesh: Any, axis_name: Any, who: str) -> int:
    return bbcore.check_mesh_axis(mesh, axis_name, who)


def _check_tiles(tiles: Any, n: int, axis_name: Any, who: str) -> None:
    if not isinstance(tiles, Tiles):
        raise TypeError(f"{who}: tiles={type(tiles).__name__}; pass analog.init_tiles(...)")
    cols = tiles.grid[1]
    if cols % n:
        raise ValueError(
            f"{who}: the layer has {cols} tile columns ({tiles.shape[1]} outputs in tiles of "
            f"{tiles.tile_shape[1]}), not divisible by the {n} devices of mesh axis "
            f"{axis_name!r}; use a layer width or tile width giving a multiple of {n} columns"
        )


def _tile_specs(tiles: Tiles, axis_name: Any) -> Tiles:
    """Sharding specs for a Tiles pytree: conductance-shaped leaves split on the column axis."""

    def spec(x):
        x = jnp.asarray(x)
        return P(None, axis_name) if x.ndim == 4 else P()

    return jax.tree.map(spec, tiles)


def shard_tiles(tiles: Tiles, mesh: Mesh, axis_name: Any) -> Tiles:
    """Place the tile columns of ``tiles`` on the devices of ``axis_name`` (one group per chip).

    Raises ``ValueError`` when the number of tile columns is not divisible by
    the axis size, ``TypeError`` for a bad mesh or tiles.
    """
    n = _check_axis(mesh, axis_name, "shard_tiles")
    _check_tiles(tiles, n, axis_name, "shard_tiles")
    specs = _tile_specs(tiles, axis_name)
    return jax.tree.map(lambda x, s: jax.device_put(x, NamedSharding(mesh, s)), tiles, specs)


def _prepare(tiles, x, io, key, who, transpose):
    io = IOConfig() if io is None else io
    require_io_key(io, key, who)
    xf, lead = _flat(x, tiles.shape[1 if transpose else 0], who)
    return io, xf, lead


def sharded_mvm(
    tiles: Tiles,
    x: jax.Array,
    io: IOConfig | None = None,
    key: jax.Array | None = None,
    *,
    mesh: Mesh,
    axis_name: Any,
) -> jax.Array:
    """:func:`analog.mvm` (``x @ W``) with the tile columns spread over ``axis_name``.

    Equal to ``analog.mvm(tiles, x, io, key)`` on one device up to float32
    rounding (each output is summed over the same row tiles, with the same
    noise, on the chip that holds its column block; XLA may block the batched
    per-tile matmuls differently). The result, ``(..., out)``, is sharded over
    ``axis_name`` along its last axis.
    """
    n = _check_axis(mesh, axis_name, "sharded_mvm")
    _check_tiles(tiles, n, axis_name, "sharded_mvm")
    io, xf, lead = _prepare(tiles, x, io, key, "sharded_mvm", False)
    y = _sharded(tiles, xf, io, key, mesh, axis_name, False)
    return y.reshape(*lead, tiles.shape[1]).astype(jnp.asarray(x).dtype)


def sharded_mvm_transpose(
    tiles: Tiles,
    d: jax.Array,
    io: IOConfig | None = None,
    key: jax.Array | None = None,
    *,
    mesh: Mesh,
    axis_name: Any,
) -> jax.Array:
    """:func:`analog.mvm_transpose` (``d @ W.T``) with the tile columns spread over ``axis_name``.

    Each chip sums its column blocks' partial outputs; a ``psum`` adds the
    chips'. Equal to the single-device result up to float32 summation order
    (the chips' partial sums are added in a tree, not left to right).
    """
    n = _check_axis(mesh, axis_name, "sharded_mvm_transpose")
    _check_tiles(tiles, n, axis_name, "sharded_mvm_transpose")
    io, df, lead = _prepare(tiles, d, io, key, "sharded_mvm_transpose", True)
    y = _sharded(tiles, df, io, key, mesh, axis_name, True)
    return y.reshape(*lead, tiles.shape[0]).astype(jnp.asarray(d).dtype)


def _sharded(tiles: Tiles, x, io: IOConfig, key, mesh, axis_name, transpose):
    r, c, th, tw = tiles.g_plus.shape
    n = int(mesh.shape[axis_name])
    b = x.shape[0]
    xs = tile_inputs(x, (r, c), (th, tw), io, transpose)
    x_spec = P(None, axis_name) if transpose else P()
    # The single-device model's per-tile keys, split by column like the tiles.
    keys = tile_keys(key, (r, c), io)
    keys_spec = P(None, axis_name)

    def local(gp, gm, w_scale, xs, keys):
        wt = (gp - gm) * w_scale  # (R, C/n, th, tw)
        y = tile_outputs(wt, xs, keys, io, transpose)  # (R, C/n, B, th | tw)
        if transpose:
            y = lax.psum(y.sum(axis=1), axis_name)  # chips' partial sums
            return y.transpose(1, 0, 2).reshape(b, r * th)
        y = y.sum(axis=0)  # over row tiles, on chip
        return y.transpose(1, 0, 2).reshape(b, (c // n) * tw)

    out_spec = P() if transpose else P(None, axis_name)
    tile_spec = P(None, axis_name)
    y = jax.shard_map(
        local,
        mesh=mesh,
        in_specs=(tile_spec, tile_spec, P(), x_spec, keys_spec),
        out_specs=out_spec,
    )(tiles.g_plus, tiles.g_minus, tiles.w_scale, xs, keys)
    if transpose:
        return y[:, : tiles.shape[0]]
    # (B, C*tw) in chip order: chip j holds column blocks j*C/n .. (j+1)*C/n - 1, in order.
    return y[:, : tiles.shape[1]]


def shard_chips(fn: Callable, *, mesh: Mesh, axis_name: Any, in_axes: Any = 0) -> Callable:
    """``jax.vmap(fn, in_axes)`` over a leading chip axis, with the chips split over ``axis_name``.

    Use it for Monte-Carlo device variation: stack independently drawn chips
    (``jax.vmap(lambda k: analog.init_tiles(k, w, device))(keys)``) and run
    ``fn`` on every chip. Arguments with ``in_axes`` None are broadcast to
    every chip; the others must have a leading size divisible by the axis
    size. Chips are independent, so there is no communication, and each
    chip's result equals the single-device ``vmap``'s up to float32 rounding
    (XLA batches 1/D as many chips per matmul). Outputs keep the
    chip axis first, sharded over ``axis_name``.
    """
    n = _check_axis(mesh, axis_name, "shard_chips")
    if not callable(fn):
        raise TypeError(f"shard_chips: fn={fn!r} is not callable")

    def wrapped(*args):
        axes = in_axes if isinstance(in_axes, (tuple, list)) else (in_axes,) * len(args)
        if len(axes) != len(args):
            raise ValueError(f"shard_chips: in_axes has {len(axes)} entries for {len(args)} args")
        for a, ax in zip(args, axes):
            if ax is None:
                continue
            if ax != 0:
                raise ValueError(f"shard_chips: in_axes entries must be 0 or None, got {ax!r}")
            for leaf in jax.tree.leaves(a):
                size = jnp.shape(leaf)[0] if jnp.ndim(leaf) else None
                if size is None or size % n:
                    raise ValueError(
                        f"shard_chips: a chip-stacked argument has leading size {size}, not "
                        f"divisible by the {n} devices of mesh axis {axis_name!r}; use a number "
                        f"of chips that is a multiple of {n}"
                    )
        specs = tuple(P() if ax is None else P(axis_name) for ax in axes)
        vf = jax.vmap(fn, in_axes=tuple(axes))
        return jax.shard_map(vf, mesh=mesh, in_specs=specs, out_specs=P(axis_name))(*args)

    return wrapped
