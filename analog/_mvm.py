"""Analog products through every tile at once: ``x @ W`` and ``d @ W.T``.

Each tile receives its block of the input through the DACs, computes its partial product
with its own noise and ADC (:func:`analog._periphery.tile_periphery`), and the digital
periphery adds the partial sums of the tiles of one output block, as a chip would. The tiles
run at once with ``jax.vmap`` (:func:`tile_outputs`, also the per-chip kernel of
``analog._distributed``).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from analog._periphery import IOConfig, require_io_key, tile_periphery, tile_product
from analog._tiles import Tiles, _tile_weights

__all__ = ["mvm", "mvm_transpose"]

_F32 = jnp.float32


def tile_inputs(
    x: jax.Array, grid: tuple[int, int], tile_shape: tuple[int, int], io: IOConfig, transpose: bool
) -> jax.Array:
    """Inputs ``x (B, n)`` cut into the tiles' blocks and driven through the DACs.

    Returns ``(B, R, rows)`` (row blocks, ``x @ W``) or, with ``transpose``, ``(B, C, cols)``
    (column blocks, ``d @ W.T``); the padding past ``n`` is zero.
    """
    (r, c), (th, tw) = grid, tile_shape
    n, size = (c, tw) if transpose else (r, th)
    xs = jnp.pad(x, ((0, 0), (0, n * size - x.shape[1]))).reshape(x.shape[0], n, size)
    return io.dac(xs)


def tile_keys(key: jax.Array | None, grid: tuple[int, int], io: IOConfig) -> jax.Array:
    """One noise key per tile, ``split(key, (R, C))``: tile ``(r, c)`` uses entry ``[r, c]``
    wherever it runs (zeros when ``io`` draws no noise)."""
    if not io.needs_key:
        return jnp.zeros(grid, _F32)
    if key is None:
        raise ValueError("this IOConfig draws noise: pass key= (a jax.random.key)")
    return jax.random.split(key, grid)


def _over_tiles(fn, wt: jax.Array, xs: jax.Array, per_tile: tuple, transpose: bool) -> jax.Array:
    """``fn(w_rc, x_in, *per_tile_rc)`` for every tile at once (``jax.vmap`` over R and C).

    Tile ``(r, c)`` reads row block ``r`` of ``xs`` (column block ``c`` with ``transpose``);
    each entry of ``per_tile`` has leading axes ``(R, C)``. Returns ``(R, C, ...)``.
    """
    tiles_in = (0,) * len(per_tile)
    if transpose:
        # tile (r, c) reads the column block c of d and drives row block r.
        per_c = jax.vmap(fn, in_axes=(0, 1, *tiles_in))  # over c
        return jax.vmap(per_c, in_axes=(0, None, *tiles_in))(wt, xs, *per_tile)  # over r
    per_c = jax.vmap(fn, in_axes=(0, None, *tiles_in))  # over c
    return jax.vmap(per_c, in_axes=(0, 1, *tiles_in))(wt, xs, *per_tile)  # over r


def tile_outputs(
    wt: jax.Array, xs: jax.Array, keys: jax.Array, io: IOConfig, transpose: bool
) -> jax.Array:
    """Every tile's partial product through its periphery, all tiles at once (``jax.vmap``).

    Args:
      wt: ``(R, C, rows, cols)`` tile weights (``C`` may be one chip's share of the columns).
      xs: :func:`tile_inputs` for the same tiles.
      keys: ``(R, C)`` per-tile keys (:func:`tile_keys`).
      io: the periphery; transpose: ``d @ W.T`` instead of ``x @ W``.

    Returns:
      ``(R, C, B, cols)``, or ``(R, C, B, rows)`` with ``transpose``: tile ``(r, c)``'s output
      block before the digital sums over tiles.
    """

    def one_tile(w_rc, x_in, k):
        return tile_periphery(w_rc, x_in, k, io, transpose)

    return _over_tiles(one_tile, wt, xs, (keys,), transpose)


def read_noise_shapes(
    wt_shape: tuple[int, ...], batch: int, io: IOConfig, transpose: bool
) -> tuple[tuple[int, ...] | None, tuple[int, ...] | None]:
    """Shapes of the unit Gaussians one read of tiles ``wt_shape`` takes (:func:`noisy_mvm`):
    ``(z_w, z_read)``, each None when ``io`` draws no such noise."""
    r, c, th, tw = wt_shape
    z_w = (r, c, th, tw) if io.w_noise > 0 else None
    z_read = (r, c, batch, th if transpose else tw) if io.read_noise > 0 else None
    return z_w, z_read


def noisy_mvm(
    wt: jax.Array,
    x: jax.Array,
    io: IOConfig,
    z_w: jax.Array | None,
    z_read: jax.Array | None,
    transpose: bool,
) -> jax.Array:
    """:func:`_periphery_mvm` with the noise given: unit Gaussians shaped by
    :func:`read_noise_shapes`, tile ``(r, c)`` taking entry ``[r, c]``. The relaxation draws
    a whole sweep's noise in one call (``analog._relaxation``); returns the padded output."""
    r, c, th, tw = wt.shape
    per_tile = tuple(z for z in (z_w, z_read) if z is not None)

    def one_tile(w_rc, x_in, *zs):
        it = iter(zs)
        zw = next(it) if z_w is not None else None
        zr = next(it) if z_read is not None else None
        return tile_product(w_rc, x_in, zw, zr, io, transpose)

    xs = tile_inputs(x, (r, c), (th, tw), io, transpose)
    return sum_tiles(_over_tiles(one_tile, wt, xs, per_tile, transpose), transpose)


def sum_tiles(y: jax.Array, transpose: bool) -> jax.Array:
    """The digital periphery: tile outputs ``(R, C, B, n)`` summed into ``(B, padded width)``
    (over ``C`` with ``transpose``, else over ``R``)."""
    r, c, b, n = y.shape
    if transpose:
        y = y.sum(axis=1)  # partial sums over C
        return y.transpose(1, 0, 2).reshape(b, r * n)
    # Partial sums over R as a product with ones (exact: every term times 1.0, accumulated in
    # float32 at HIGHEST precision). XLA:CPU lowers y.sum(axis=0) of this 4-d array to a
    # YNNPACK reduction ~12x slower (10 ms against 0.8 ms for 784 x 500 on 64 x 64 tiles at
    # batch 64), and R - 1 adds get fused, with the noisy reads before them, into every
    # consumer of the sum, recomputing them (BENCHMARKS.md, "Speed of the registered
    # `analog-eqprop-taox` row").
    ones = jnp.ones((r,), y.dtype)
    y = jnp.einsum("r,rcbn->cbn", ones, y, precision=jax.lax.Precision.HIGHEST)
    return y.transpose(1, 0, 2).reshape(b, c * n)


def tile_read(
    wt: jax.Array, x: jax.Array, io: IOConfig, key: jax.Array | None, transpose: bool
) -> jax.Array:
    """``x (B, n)`` through every tile of ``wt (R, C, th, tw)``, before the sums over tiles:
    the DACs (:func:`tile_inputs`), each tile's keyed periphery (:func:`tile_outputs`).

    Returns ``(R, C, B, tw)``, or ``(R, C, B, th)`` with ``transpose``; :func:`sum_tiles`
    adds them up.
    """
    r, c, th, tw = wt.shape
    xs = tile_inputs(x, (r, c), (th, tw), io, transpose)
    return tile_outputs(wt, xs, tile_keys(key, (r, c), io), io, transpose)


def _periphery_mvm(
    wt: jax.Array, x: jax.Array, io: IOConfig, key: jax.Array | None, transpose: bool
) -> jax.Array:
    """``x (B, n)`` through tiled weights ``wt (R, C, th, tw)``; returns the padded output."""
    require_io_key(io, key, "mvm")
    return sum_tiles(tile_read(wt, x, io, key, transpose), transpose)


def _flat(x: jax.Array, n: int, name: str) -> tuple[jax.Array, tuple[int, ...]]:
    x = jnp.asarray(x)
    if x.ndim < 1 or x.shape[-1] != n:
        raise ValueError(f"{name}: input has shape {x.shape}; its last axis must be {n}")
    lead = x.shape[:-1]
    return x.reshape(-1, n).astype(_F32), lead


@functools.partial(jax.jit, static_argnums=(2, 4))
def _jit_mvm(tiles, x, io, key, transpose):
    y = _periphery_mvm(_tile_weights(tiles), x, io, key, transpose)
    return y[:, : tiles.shape[0 if transpose else 1]]


def mvm(
    tiles: Tiles, x: jax.Array, io: IOConfig | None = None, key: jax.Array | None = None
) -> jax.Array:
    """Analog vector-matrix product ``x @ W`` through every tile's periphery.

    Args:
      tiles: the weight matrix ``(in, out)`` on crossbars.
      x: ``(..., in)`` inputs.
      io: periphery (DAC, ADC, noise); None = :meth:`IOConfig.ideal`.
      key: PRNG key, needed when ``io`` draws noise.

    Returns:
      ``(..., out)`` in ``x``'s dtype (computed in float32).
    """
    io = IOConfig() if io is None else io
    xf, lead = _flat(x, tiles.shape[0], "mvm")
    require_io_key(io, key, "mvm")
    y = _jit_mvm(tiles, xf, io, key, False)
    return y.reshape(*lead, tiles.shape[1]).astype(jnp.asarray(x).dtype)


def mvm_transpose(
    tiles: Tiles, d: jax.Array, io: IOConfig | None = None, key: jax.Array | None = None
) -> jax.Array:
    """Analog transposed product ``d @ W.T``: ``(..., out) -> (..., in)``, columns driven."""
    io = IOConfig() if io is None else io
    df, lead = _flat(d, tiles.shape[1], "mvm_transpose")
    require_io_key(io, key, "mvm_transpose")
    y = _jit_mvm(tiles, df, io, key, True)
    return y.reshape(*lead, tiles.shape[0]).astype(jnp.asarray(d).dtype)
