"""Programming devices with pulse counts: the three ways a weight change reaches a crossbar.

* :func:`apply_pulses`: given up and down counts per cross-point (four device steps).
* :func:`program_weights`: an arbitrary weight change rounded to whole device steps.
* :func:`program_many`: the same for several matrices of one device model in one device step
  per conductance array (what :func:`analog.program` uses).

Rank-1 (outer-product) updates by coincident pulse trains are :func:`analog.pulse_update`
(``analog._update``).
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp

import bbcore
from analog import _counter_rng as R
from analog._devices import Device
from analog._tiles import Tiles, _to_tiles, weight_step

__all__ = ["apply_pulses", "program_weights"]

_F32 = jnp.float32


def apply_pulses(tiles: Tiles, n_up: jax.Array, n_down: jax.Array, key: jax.Array | None) -> Tiles:
    """Send pulse counts to every cross-point: ``n_up`` raise the weight, ``n_down`` lower it.

    ``n_up`` and ``n_down`` are ``(in, out)`` non-negative counts. Raising a weight potentiates
    ``G+`` and depresses ``G-`` (and vice versa), all raising pulses first: within one update the
    device sees its potentiating pulses before its depressing ones.
    """
    up = _to_tiles(n_up.astype(_F32), tiles.tile_shape)
    down = _to_tiles(n_down.astype(_F32), tiles.tile_shape)
    dev = tiles.device
    keys = jax.random.split(key, 4) if key is not None else [None] * 4
    gp = dev.step(tiles.g_plus, up, keys[0], variation=tiles.var_plus)
    gp = dev.step(gp, -down, keys[1], variation=tiles.var_plus)
    gm = dev.step(tiles.g_minus, -up, keys[2], variation=tiles.var_minus)
    gm = dev.step(gm, down, keys[3], variation=tiles.var_minus)
    return dataclasses.replace(tiles, g_plus=gp, g_minus=gm)


def program_weights(
    tiles: Tiles, delta: jax.Array, key: jax.Array | None, *, rounding: str = "stochastic"
) -> tuple[Tiles, jax.Array]:
    """Apply an arbitrary ``(in, out)`` weight change as per-device pulse counts.

    The count is ``delta / weight_step`` rounded stochastically (unbiased: sub-step changes are
    kept in expectation) or to the nearest integer (``"deterministic"``: changes below half a
    step are lost, as on a chip without stochastic rounding).

    Returns:
      ``(new_tiles, pulses)``: pulses is the float32 number of pulses sent (both devices).
    """
    if rounding not in ("stochastic", "deterministic"):
        raise ValueError(f"rounding={rounding!r}: use 'stochastic' or 'deterministic'")
    if rounding == "stochastic" and key is None:
        raise ValueError("program_weights: rounding='stochastic' needs a key")
    if tiles.device.dw_min_std > 0:
        bbcore.require_key(key, "program_weights", "the device has cycle-to-cycle noise")
    delta = jnp.asarray(delta)
    if delta.shape != tiles.shape:
        raise ValueError(
            f"program_weights: delta has shape {delta.shape}; the tiles hold {tiles.shape}"
        )
    return _program_weights(tiles, delta, key, rounding)


@functools.partial(jax.jit, static_argnums=3)
def _program_weights(tiles, delta, key, rounding):
    r = delta.astype(_F32) / weight_step(tiles)
    if rounding == "stochastic":
        key, ku = jax.random.split(key)
        n = jnp.floor(r + jax.random.uniform(ku, r.shape, _F32))
    else:
        n = jnp.round(r)
    n_up, n_down = jnp.maximum(n, 0.0), jnp.maximum(-n, 0.0)
    new = apply_pulses(tiles, n_up, n_down, key)
    return new, 2.0 * jnp.sum(n_up + n_down)


def program_many(
    tiles: list[Tiles],
    deltas: list[jax.Array],
    key: jax.Array | None,
    *,
    rounding: str = "stochastic",
) -> tuple[list[Tiles], jax.Array]:
    """:func:`program_weights` for several matrices of one device model in a single device step.

    One PRNG split and one device step per conductance array (a rounded count has one sign per
    cell, so potentiation and depression never mix within one update).
    """
    if rounding not in ("stochastic", "deterministic"):
        raise ValueError(f"rounding={rounding!r}: use 'stochastic' or 'deterministic'")
    if not tiles:
        return [], jnp.zeros((), _F32)
    dev = tiles[0].device
    if any(t.device != dev for t in tiles):
        raise ValueError("program_many: all tiles must share one device model")
    if key is None and (rounding == "stochastic" or dev.dw_min_std > 0):
        raise ValueError("program_many: stochastic rounding or device noise needs a key")
    key = bbcore.key(0) if key is None else key
    k_round, k_step = jax.random.split(key)
    out, pulses = [], jnp.zeros((), _F32)
    for i, (t, delta) in enumerate(zip(tiles, deltas)):
        r = _to_tiles(jnp.asarray(delta).astype(_F32), t.tile_shape) / weight_step(t)
        if rounding == "stochastic":
            n = jnp.floor(r + R.uniform(jax.random.fold_in(k_round, i), 0, r.shape))
        else:
            n = jnp.round(r)
        # Raising a weight potentiates G+ and depresses G-. A rounded count has one sign, so
        # each cell moves in one direction: one device step per array.
        z_plus, z_minus = _cycle_noise(dev, jax.random.fold_in(k_step, i), r.shape)
        gp = _device_step(dev, t.g_plus, n, z_plus, t.var_plus)
        gm = _device_step(dev, t.g_minus, -n, z_minus, t.var_minus)
        out.append(dataclasses.replace(t, g_plus=gp, g_minus=gm))
        pulses = pulses + 2.0 * jnp.sum(jnp.abs(n))
    return out, pulses


def _cycle_noise(dev: Device, key: jax.Array, shape: tuple[int, ...]):
    """Unit Gaussians for the cycle-to-cycle noise of the ``G+`` and ``G-`` arrays (or Nones).

    Drawn by the counter hash of ``analog._counter_rng`` (the distribution of
    ``jax.random.normal``): threefry's draws for the rounding and these two arrays were most of
    :func:`analog.program`'s time on CPU (BENCHMARKS.md, "Speed of the registered
    `analog-eqprop-taox` row").
    """
    if dev.dw_min_std == 0:
        return None, None
    z = R.normal(key, 1, (2, *shape))
    return z[0], z[1]


# Compiled once per device model and shape, as Device.step is (op-by-op dispatch is slow on CPU).
@functools.partial(jax.jit, static_argnums=0)
def _device_step(dev: Device, g, n, noise, variation):
    """:meth:`Device.step` of ``g`` by signed counts ``n``, with the given unit ``noise``."""
    return dev._step_impl(g, n, None, variation, noise=noise)
