"""The periphery of a crossbar tile: DACs on its rows, ADCs on its columns, bounds and noise.

Configured separately from the devices, as in aihwkit (``IOParameters``): :class:`IOConfig` is
a frozen, validated value; :func:`tile_periphery` runs one tile's product through it (weight
noise, the analog product, read noise, the ADC). Every tile of a layer runs this at once
(:func:`analog._mvm.tile_outputs`).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import jax
import jax.numpy as jnp

import bbcore
from analog._counter_rng import _hash_bits, _key_seeds, _normal
from analog._devices import _check_nonneg

__all__ = ["IOConfig"]


def _check_bits(name: str, bits: Any) -> None:
    if bits is None:
        return
    if not isinstance(bits, int) or isinstance(bits, bool) or not 2 <= bits <= 24:
        raise ValueError(
            f"IOConfig: {name}={bits!r}; use an integer number of bits in [2, 24] "
            "(one is the sign), or None for an ideal converter"
        )


def _check_pos(name: str, value: Any) -> None:
    if value is None:
        return
    if (
        not isinstance(value, (int, float))
        or isinstance(value, bool)
        or not math.isfinite(value)
        or value <= 0
    ):
        raise ValueError(f"IOConfig: {name}={value!r} must be a finite number > 0, or None")


@dataclasses.dataclass(frozen=True, kw_only=True)
class IOConfig:
    """Periphery of a tile: DAC on inputs, ADC on outputs, bounds and read noise.

    Attributes:
      inp_bits: DAC resolution (signed, ``2^(bits-1) - 1`` levels per sign), None = exact.
      inp_bound: inputs are clipped to ``[-inp_bound, inp_bound]`` before the DAC; None = no clip.
      out_bits: ADC resolution (signed), None = exact; needs ``out_bound``.
      out_bound: each tile's column outputs are clipped to ``[-out_bound, out_bound]``.
      read_noise: standard deviation of additive Gaussian noise on every tile column output
        (before the ADC), in output units. A layer whose input spans ``R`` row tiles therefore
        sees noise of variance ``R * read_noise**2`` on each output.
      w_noise: relative standard deviation of multiplicative weight (conductance) noise, drawn
        afresh for every read.

    ``IOConfig()`` and ``IOConfig.ideal()`` are exact: no quantization, no noise, no bound.
    """

    inp_bits: int | None = None
    inp_bound: float | None = None
    out_bits: int | None = None
    out_bound: float | None = None
    read_noise: float = 0.0
    w_noise: float = 0.0

    def __post_init__(self):
        _check_bits("inp_bits", self.inp_bits)
        _check_bits("out_bits", self.out_bits)
        _check_pos("inp_bound", self.inp_bound)
        _check_pos("out_bound", self.out_bound)
        if self.inp_bits is not None and self.inp_bound is None:
            raise ValueError(
                f"IOConfig: inp_bits={self.inp_bits} needs inp_bound (the DAC's "
                "full scale), e.g. inp_bound=1.0"
            )
        if self.out_bits is not None and self.out_bound is None:
            raise ValueError(
                f"IOConfig: out_bits={self.out_bits} needs out_bound (the ADC's "
                "full scale), e.g. out_bound=10.0"
            )
        for name in ("read_noise", "w_noise"):
            _check_nonneg(name, getattr(self, name), "IOConfig")

    @classmethod
    def ideal(cls) -> IOConfig:
        """Exact periphery: no quantization, no noise, no bound."""
        return cls()

    @property
    def is_ideal(self) -> bool:
        return (
            self.inp_bits is None
            and self.inp_bound is None
            and self.out_bits is None
            and self.out_bound is None
            and self.read_noise == 0
            and self.w_noise == 0
        )

    @property
    def needs_key(self) -> bool:
        return self.read_noise > 0 or self.w_noise > 0

    def dac(self, x: jax.Array) -> jax.Array:
        """Inputs as the DAC drives them: clipped to the bound, rounded to the nearest level."""
        return _convert(x, self.inp_bound, self.inp_bits)

    def adc(self, y: jax.Array) -> jax.Array:
        """Outputs as the ADC reports them: saturated at the bound, rounded to the nearest level."""
        return _convert(y, self.out_bound, self.out_bits)


def _convert(v: jax.Array, bound: float | None, bits: int | None) -> jax.Array:
    """A signed converter: clip to ``[-bound, bound]``, round to ``2^(bits-1) - 1`` levels per
    sign (either step skipped when its setting is None; bits need a bound, see IOConfig)."""
    if bound is not None:
        v = jnp.clip(v, -bound, bound)
    if bits is not None:
        lsb = bound / (2 ** (bits - 1) - 1)
        v = jnp.round(v / lsb) * lsb
    return v


# Streams of the counter-hash generator (one per kind of noise drawn from a tile's key).
_W_NOISE_STREAM = 0
_READ_NOISE_STREAM = 1


def tile_periphery(w_rc: jax.Array, x_in: jax.Array, k, io: IOConfig, transpose: bool) -> jax.Array:
    """One tile through its periphery (:func:`tile_product`), its noise drawn from its key ``k``.

    The Gaussian noise comes from the counter hash of ``analog._counter_rng`` (the distribution
    of ``jax.random.normal``): threefry's normals were most of an ``analog-eqprop-taox`` step
    on CPU (BENCHMARKS.md, "Speed of the registered `analog-eqprop-taox` row").
    """
    z_w = z_read = None
    if io.needs_key:
        seeds = _key_seeds(k)
        if io.w_noise > 0:
            z_w = _normal(_hash_bits(seeds, _W_NOISE_STREAM, w_rc.shape))
        if io.read_noise > 0:
            y_shape = (x_in.shape[0], w_rc.shape[0] if transpose else w_rc.shape[1])
            z_read = _normal(_hash_bits(seeds, _READ_NOISE_STREAM, y_shape))
    return tile_product(w_rc, x_in, z_w, z_read, io, transpose)


def tile_product(
    w_rc: jax.Array,
    x_in: jax.Array,
    z_w: jax.Array | None,
    z_read: jax.Array | None,
    io: IOConfig,
    transpose: bool,
) -> jax.Array:
    """One tile through its periphery: weight noise, the product, read noise, the ADC.

    Args:
      w_rc: ``(rows, cols)`` tile weights; x_in: ``(B, rows)`` DAC outputs (``(B, cols)`` with
        ``transpose``).
      z_w: unit Gaussians of ``w_rc``'s shape (None when ``io.w_noise`` is 0).
      z_read: unit Gaussians of the output's shape, ``(B, cols)`` (``(B, rows)`` with
        ``transpose``); None when ``io.read_noise`` is 0.
      io: the periphery; transpose: ``x_in @ w_rc.T`` instead of ``x_in @ w_rc``.
    """
    if (io.w_noise > 0 and z_w is None) or (io.read_noise > 0 and z_read is None):
        raise ValueError(f"tile_product: io={io} draws noise; pass its unit Gaussians z_w / z_read")
    if z_w is not None and io.w_noise > 0:
        w_rc = w_rc * (1.0 + io.w_noise * z_w)
    y = x_in @ (w_rc.T if transpose else w_rc)
    if z_read is not None and io.read_noise > 0:
        y = y + io.read_noise * z_read
    return io.adc(y)


def require_io_key(io: IOConfig, key, who: str) -> None:
    """Raise when ``io`` draws read or weight noise and no key was given."""
    if not isinstance(io, IOConfig):
        raise TypeError(f"{who}: io={io!r}: pass an analog.IOConfig (or None for ideal)")
    if io.needs_key:
        bbcore.require_key(key, who, f"io={io} draws read/weight noise")
