"""How a weight matrix is cut into crossbar tiles for inference, each with its own conductance
scale and its own drift compensation.

aihwkit's ``MappingParameter`` (``max_input_size = max_output_size = 512`` in an
``InferenceRPUConfig``): a layer with more inputs or outputs than one crossbar holds is split
into a grid of tiles; each tile maps its own ``max|W|`` to ``g_max``
(``SinglePairConductanceConverter``) and runs its own ``GlobalDriftCompensation``, whose
``alpha`` scales that tile's partial outputs. Here the grid is a padded reshape, and the
per-tile scalars are spread back to the weight's shape, so a per-tile output scale is an
element-wise weight scale (the tile outputs are summed linearly).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

_F32 = jnp.float32
# aihwkit drift.py: readout = clamp(mean|y|, min=0.0001)
_READOUT_MIN = 1e-4


def grid(shape: tuple[int, ...], tile: tuple[int | None, int | None]) -> tuple[int, int, int, int]:
    """``(n_row_tiles, rows_per_tile, n_col_tiles, cols_per_tile)`` of a weight of ``shape``.

    The weight is read as ``(prod(shape[:-1]), shape[-1])`` (a conv kernel's patch rows by its
    output channels; a vector as one column); ``None`` in ``tile`` means unbounded.
    """
    rows, cols = _rows_cols(shape)
    r = rows if tile[0] is None else min(tile[0], rows)
    c = cols if tile[1] is None else min(tile[1], cols)
    return -(-rows // r), r, -(-cols // c), c


def _rows_cols(shape: tuple[int, ...]) -> tuple[int, int]:
    if len(shape) == 1:
        return shape[0], 1
    return math.prod(shape[:-1]), shape[-1]


def to_grid(w: jax.Array, g: tuple[int, int, int, int]) -> jax.Array:
    """``w`` zero-padded and reshaped to ``(n_row_tiles, n_col_tiles, rows, cols)``."""
    nr, r, nc, c = g
    rows, cols = _rows_cols(w.shape)
    w2 = jnp.pad(w.reshape(rows, cols), ((0, nr * r - rows), (0, nc * c - cols)))
    return w2.reshape(nr, r, nc, c).transpose(0, 2, 1, 3)


def from_grid(t: jax.Array, shape: tuple[int, ...]) -> jax.Array:
    """Inverse of :func:`to_grid`: the ``(nr, nc, r, c)`` grid back to ``shape``, unpadded."""
    nr, nc, r, c = t.shape
    rows, cols = _rows_cols(shape)
    return t.transpose(0, 2, 1, 3).reshape(nr * r, nc * c)[:rows, :cols].reshape(shape)


def per_tile(values: jax.Array, g: tuple[int, int, int, int], shape: tuple[int, ...]) -> jax.Array:
    """Spread one scalar per tile (``(nr, nc)``) over the weight's ``shape``."""
    nr, r, nc, c = g
    return from_grid(jnp.broadcast_to(values[:, :, None, None], (nr, nc, r, c)), shape)


def tile_counts(
    shape: tuple[int, ...], g: tuple[int, int, int, int]
) -> tuple[np.ndarray, np.ndarray]:
    """Real (unpadded) rows of each row tile ``(nr,)`` and columns of each column tile ``(nc,)``."""
    nr, r, nc, c = g
    rows, cols = _rows_cols(shape)
    return np.minimum(r, rows - r * np.arange(nr)), np.minimum(c, cols - c * np.arange(nc))


def tile_compensation(
    w_reference: jax.Array,
    w_now: jax.Array,
    g: tuple[int, int, int, int],
    x_ref: jax.Array | None,
) -> jax.Array:
    """aihwkit's ``GlobalDriftCompensation`` per tile, spread to the weight's shape.

    ``alpha_k = max(mean|y_ref,k|, 1e-4) / max(mean|y_now,k|, 1e-4)`` with ``y_k`` tile
    ``k``'s read of ``x_ref`` (its own input rows; the one-hot rows when ``x_ref`` is None,
    so ``y_k = W_k``).
    """
    shape = w_now.shape
    rows, cols = tile_counts(shape, g)

    def readout(w):
        t = to_grid(w, g)
        if x_ref is None:
            return jnp.sum(jnp.abs(t), axis=(2, 3)) / jnp.asarray(np.outer(rows, cols), _F32)
        nr, r, _, _ = g
        x = jnp.pad(x_ref, ((0, 0), (0, nr * r - x_ref.shape[1]))).reshape(-1, nr, r)
        y = jnp.einsum("nir,ijrc->nijc", x, t)
        n = np.broadcast_to(x.shape[0] * cols, (nr, cols.size))
        return jnp.sum(jnp.abs(y), axis=(0, 3)) / jnp.asarray(n, _F32)

    ref = jnp.maximum(readout(w_reference), _READOUT_MIN)
    return per_tile(ref / jnp.maximum(readout(w_now), _READOUT_MIN), g, shape)
