"""Crossbar tiles: a weight matrix as differential conductance pairs cut into fixed-size tiles.

A weight matrix ``W`` of shape ``(in, out)`` (flax kernel layout) is stored as two conductance
arrays ``G+`` and ``G-``, ``W = w_scale (G+ - G-)``, cut into ``tile_shape = (rows, cols)`` tiles
(default 64 x 64, the array size of Yi et al., Nature Electronics 2023). Each tile is an
independent array with its own periphery: DACs drive its rows, ADCs digitise its columns, and
the digital periphery adds the partial sums of the tiles of one column block, as a chip would.
Every tile is computed at once with ``jax.vmap``. A leading axis of independent chips is just
another ``jax.vmap`` (Monte-Carlo device variation in one call).

The periphery (inputs and outputs) is configured separately from the devices by
:class:`IOConfig`, as in aihwkit (``IOParameters``).

Updates follow Gokmen & Vlasov (Front. Neurosci. 10:333, 2016): an outer product
``lr * x^T d`` is applied either as stochastic pulse trains of bit length BL whose coincidences
at each cross-point program the device (their Eq. 2-3 scheme, with aihwkit-style "update
management" balancing the row and column probabilities, and optionally aihwkit's per-sample
shortening of the trains, "update BL management"), or as per-device pulse counts. The default
implementation packs the trains 32 slots to a word, counts the coincidences of a whole batch in
one fused popcount loop (or, for trains of at most 8 slots, as a matmul of 0/1 matrices) and
moves every device once per update in closed form (see :func:`pulse_update` for what that
approximates); ``impl="reference"`` keeps the straightforward per-sample path for tests.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any

import jax
import jax.numpy as jnp

import bbcore
from analog._devices import Device, DeviceVariation

__all__ = ["IOConfig", "Tiles", "init_tiles", "read_weights", "mvm", "mvm_transpose",
           "pulse_update", "apply_pulses", "program_weights", "program_many", "weight_step", "check_tile_shape"]

_F32 = jnp.float32


def _check_bits(name: str, bits: Any) -> None:
    if bits is None:
        return
    if not isinstance(bits, int) or isinstance(bits, bool) or not 2 <= bits <= 24:
        raise ValueError(f"IOConfig: {name}={bits!r}; use an integer number of bits in [2, 24] "
                         "(one is the sign), or None for an ideal converter")


def _check_pos(name: str, value: Any) -> None:
    if value is None:
        return
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value) \
            or value <= 0:
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
            raise ValueError(f"IOConfig: inp_bits={self.inp_bits} needs inp_bound (the DAC's "
                             "full scale), e.g. inp_bound=1.0")
        if self.out_bits is not None and self.out_bound is None:
            raise ValueError(f"IOConfig: out_bits={self.out_bits} needs out_bound (the ADC's "
                             "full scale), e.g. out_bound=10.0")
        for name in ("read_noise", "w_noise"):
            v = getattr(self, name)
            if not isinstance(v, (int, float)) or isinstance(v, bool) or not math.isfinite(v) \
                    or v < 0:
                raise ValueError(f"IOConfig: {name}={v!r} must be a finite number >= 0")

    @classmethod
    def ideal(cls) -> "IOConfig":
        """Exact periphery: no quantization, no noise, no bound."""
        return cls()

    @property
    def is_ideal(self) -> bool:
        return (self.inp_bits is None and self.inp_bound is None and self.out_bits is None
                and self.out_bound is None and self.read_noise == 0 and self.w_noise == 0)

    @property
    def needs_key(self) -> bool:
        return self.read_noise > 0 or self.w_noise > 0

    def dac(self, x: jax.Array) -> jax.Array:
        """Inputs as the DAC drives them: clipped to the bound, rounded to the nearest level."""
        if self.inp_bound is not None:
            x = jnp.clip(x, -self.inp_bound, self.inp_bound)
        if self.inp_bits is not None:
            lsb = self.inp_bound / (2 ** (self.inp_bits - 1) - 1)
            x = jnp.round(x / lsb) * lsb
        return x

    def adc(self, y: jax.Array) -> jax.Array:
        """Outputs as the ADC reports them: saturated at the bound, rounded to the nearest level."""
        if self.out_bound is not None:
            y = jnp.clip(y, -self.out_bound, self.out_bound)
        if self.out_bits is not None:
            lsb = self.out_bound / (2 ** (self.out_bits - 1) - 1)
            y = jnp.round(y / lsb) * lsb
        return y


def check_tile_shape(tile_shape: Any) -> tuple[int, int]:
    """Validate ``tile_shape`` = (rows, cols) of positive ints; returns it as a tuple."""
    ok = (isinstance(tile_shape, (tuple, list)) and len(tile_shape) == 2
          and all(isinstance(t, int) and not isinstance(t, bool) and t > 0 for t in tile_shape))
    if not ok:
        raise ValueError(f"tile_shape={tile_shape!r}: use a pair of positive integers "
                         "(rows, cols), e.g. (64, 64) as in Yi et al. (2023)")
    return (int(tile_shape[0]), int(tile_shape[1]))


@functools.partial(jax.tree_util.register_dataclass,
                   data_fields=["g_plus", "g_minus", "var_plus", "var_minus", "w_scale"],
                   meta_fields=["shape", "device"])
@dataclasses.dataclass(frozen=True)
class Tiles:
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
    def tile_shape(self) -> tuple[int, int]:
        return tuple(self.g_plus.shape[-2:])

    @property
    def grid(self) -> tuple[int, int]:
        return tuple(self.g_plus.shape[-4:-2])


def _to_tiles(w: jax.Array, tile_shape: tuple[int, int]) -> jax.Array:
    n_in, n_out = w.shape
    th, tw = tile_shape
    r, c = -(-n_in // th), -(-n_out // tw)
    wp = jnp.pad(w, ((0, r * th - n_in), (0, c * tw - n_out)))
    return wp.reshape(r, th, c, tw).transpose(0, 2, 1, 3)


def _from_tiles(wt: jax.Array, shape: tuple[int, int]) -> jax.Array:
    r, c, th, tw = wt.shape
    return wt.transpose(0, 2, 1, 3).reshape(r * th, c * tw)[: shape[0], : shape[1]]


def init_tiles(key: jax.Array, w: jax.Array, device: Device, tile_shape=(64, 64), *,
               w_max: float | jax.Array | None = None) -> Tiles:
    """Program ``w`` onto fresh crossbar tiles (write-and-verify: exact up to the bounds).

    The pair is centred at mid-range, ``G+- = g_mid +- w / (2 w_scale)``, so both devices sit at
    their symmetry point when the weight is zero, and ``|w| <= w_max`` is representable.

    Args:
      key: PRNG key for the device-to-device variation.
      w: ``(in, out)`` weight matrix.
      device: device model of every cell.
      tile_shape: ``(rows, cols)`` of one tile.
      w_max: largest representable ``|weight|``; None = twice ``max|w|`` (1.0 for an all-zero w).

    Returns:
      :class:`Tiles` with ``R = ceil(in/rows)`` by ``C = ceil(out/cols)`` tiles.
    """
    tile_shape = check_tile_shape(tile_shape)
    if not isinstance(device, Device):
        raise TypeError(f"device={device!r}: pass a device model such as analog.presets.IDEAL")
    w = jnp.asarray(w)
    if w.ndim != 2:
        raise ValueError(f"init_tiles: w has shape {w.shape}; need a 2-D (in, out) matrix "
                         "(analog.program maps other leaves to 2-D first)")
    return _init_tiles(key, w.astype(_F32), device, tile_shape,
                       None if w_max is None else jnp.asarray(w_max, _F32))


@functools.partial(jax.jit, static_argnums=(2, 3))
def _init_tiles(key, w, device, tile_shape, w_max):
    if w_max is None:
        m = jnp.max(jnp.abs(w))
        w_max = jnp.where(m > 0, 2.0 * m, 1.0)
    w_scale = w_max / device.range
    wt = _to_tiles(w, tile_shape)
    both = device.sample_variation(key, (2, *wt.shape))      # G+ and G- in one draw
    var_p = jax.tree.map(lambda a: a[0], both)
    var_m = jax.tree.map(lambda a: a[1], both)
    g_mid = 0.5 * (device.g_min + device.g_max)
    g_plus = device.clip(g_mid + wt / (2.0 * w_scale), var_p)
    g_minus = device.clip(g_mid - wt / (2.0 * w_scale), var_m)
    return Tiles(g_plus, g_minus, var_p, var_m, w_scale, (int(w.shape[0]), int(w.shape[1])), device)


def _tile_weights(tiles: Tiles) -> jax.Array:
    return (tiles.g_plus - tiles.g_minus) * tiles.w_scale


@jax.jit
def read_weights(tiles: Tiles) -> jax.Array:
    """The ``(in, out)`` float32 weight matrix the tiles hold (an exact, noise-free read)."""
    return _from_tiles(_tile_weights(tiles), tiles.shape)


def weight_step(tiles: Tiles) -> jax.Array:
    """Nominal weight change of one pulse pair: both devices of a pair move ``dw_min``."""
    return 2.0 * tiles.device.dw_min * tiles.w_scale


def tile_periphery(w_rc: jax.Array, x_in: jax.Array, k, io: IOConfig, transpose: bool) -> jax.Array:
    """One tile through its periphery: weight noise, the product, read noise, the ADC."""
    if io.w_noise > 0:
        kw, k = jax.random.split(k)
        w_rc = w_rc * (1.0 + io.w_noise * jax.random.normal(kw, w_rc.shape, _F32))
    y = x_in @ (w_rc.T if transpose else w_rc)
    if io.read_noise > 0:
        y = y + io.read_noise * jax.random.normal(k, y.shape, _F32)
    return io.adc(y)


def _periphery_mvm(wt: jax.Array, x: jax.Array, io: IOConfig, key: jax.Array | None,
                   transpose: bool) -> jax.Array:
    """Shared core: ``x (B, n)`` through tiled weights ``wt (R, C, th, tw)``; returns padded out."""
    r, c, th, tw = wt.shape
    b = x.shape[0]
    require_io_key(io, key, "mvm")
    if transpose:
        xs = jnp.pad(x, ((0, 0), (0, c * tw - x.shape[1]))).reshape(b, c, tw)
    else:
        xs = jnp.pad(x, ((0, 0), (0, r * th - x.shape[1]))).reshape(b, r, th)
    xs = io.dac(xs)
    keys = jax.random.split(key, (r, c)) if io.needs_key else jnp.zeros((r, c), _F32)

    def one_tile(w_rc, x_in, k):
        return tile_periphery(w_rc, x_in, k, io, transpose)

    if transpose:
        # tile (r, c) reads the column block c of d and drives row block r.
        per_c = jax.vmap(one_tile, in_axes=(0, 1, 0))               # over c
        per_rc = jax.vmap(per_c, in_axes=(0, None, 0))              # over r
        y = per_rc(wt, xs, keys)                                    # (R, C, B, th)
        y = y.sum(axis=1)                                           # partial sums over C
        return y.transpose(1, 0, 2).reshape(b, r * th)
    per_c = jax.vmap(one_tile, in_axes=(0, None, 0))                # over c
    per_rc = jax.vmap(per_c, in_axes=(0, 1, 0))                     # over r
    y = per_rc(wt, xs, keys)                                        # (R, C, B, tw)
    y = y.sum(axis=0)                                               # partial sums over R
    return y.transpose(1, 0, 2).reshape(b, c * tw)


def _flat(x: jax.Array, n: int, name: str) -> tuple[jax.Array, tuple[int, ...]]:
    x = jnp.asarray(x)
    if x.ndim < 1 or x.shape[-1] != n:
        raise ValueError(f"{name}: input has shape {x.shape}; its last axis must be {n}")
    lead = x.shape[:-1]
    return x.reshape(-1, n).astype(_F32), lead


def require_io_key(io: IOConfig, key, who: str) -> None:
    """Raise when ``io`` draws read or weight noise and no key was given."""
    if not isinstance(io, IOConfig):
        raise TypeError(f"{who}: io={io!r}: pass an analog.IOConfig (or None for ideal)")
    if io.needs_key:
        bbcore.require_key(key, who, f"io={io} draws read/weight noise")


@functools.partial(jax.jit, static_argnums=(2, 4))
def _jit_mvm(tiles, x, io, key, transpose):
    y = _periphery_mvm(_tile_weights(tiles), x, io, key, transpose)
    return y[:, : tiles.shape[0 if transpose else 1]]


def mvm(tiles: Tiles, x: jax.Array, io: IOConfig | None = None,
        key: jax.Array | None = None) -> jax.Array:
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


def mvm_transpose(tiles: Tiles, d: jax.Array, io: IOConfig | None = None,
                  key: jax.Array | None = None) -> jax.Array:
    """Analog transposed product ``d @ W.T``: ``(..., out) -> (..., in)``, columns driven."""
    io = IOConfig() if io is None else io
    df, lead = _flat(d, tiles.shape[1], "mvm_transpose")
    require_io_key(io, key, "mvm_transpose")
    y = _jit_mvm(tiles, df, io, key, True)
    return y.reshape(*lead, tiles.shape[0]).astype(jnp.asarray(d).dtype)


def apply_pulses(tiles: Tiles, n_up: jax.Array, n_down: jax.Array,
                 key: jax.Array | None) -> Tiles:
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


def program_weights(tiles: Tiles, delta: jax.Array, key: jax.Array | None, *,
                    rounding: str = "stochastic") -> tuple[Tiles, jax.Array]:
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
        raise ValueError(f"program_weights: delta has shape {delta.shape}; the tiles hold "
                         f"{tiles.shape}")
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


def program_many(tiles: list[Tiles], deltas: list[jax.Array], key: jax.Array | None, *,
                 rounding: str = "stochastic") -> tuple[list[Tiles], jax.Array]:
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
            n = jnp.floor(r + jax.random.uniform(jax.random.fold_in(k_round, i), r.shape, _F32))
        else:
            n = jnp.round(r)
        # Raising a weight potentiates G+ and depresses G-. A rounded count has one sign, so
        # each cell moves in one direction: one device step per array.
        kp, km = jax.random.split(jax.random.fold_in(k_step, i))
        gp = dev.step(t.g_plus, n, kp, variation=t.var_plus)
        gm = dev.step(t.g_minus, -n, km, variation=t.var_minus)
        out.append(dataclasses.replace(t, g_plus=gp, g_minus=gm))
        pulses = pulses + 2.0 * jnp.sum(jnp.abs(n))
    return out, pulses


def _pack_bits(bits: jax.Array) -> jax.Array:
    """(B, BL, n) booleans -> (B, W, n) uint32 words, 32 pulse slots per word."""
    b, bl, n = bits.shape
    words = -(-bl // 32)
    bits = jnp.pad(bits, ((0, 0), (0, words * 32 - bl), (0, 0))).reshape(b, words, 32, n)
    shifts = jnp.arange(32, dtype=jnp.uint32)[None, None, :, None]
    return jnp.sum(bits.astype(jnp.uint32) << shifts, axis=2, dtype=jnp.uint32)


# ---------------------------------------------------------------------------------------------
# Fast update path: counter-hash random bits, packed pulse trains, fused popcount counts.
# ---------------------------------------------------------------------------------------------

_U32 = jnp.uint32
_GOLDEN = 0x9E3779B9


def _mix32(x: jax.Array) -> jax.Array:
    """A bijective 32-bit mixer ("lowbias32", C. Wellons): full avalanche in 5 vector ops."""
    x = x ^ (x >> 16)
    x = x * _U32(0x7FEB352D)
    x = x ^ (x >> 15)
    x = x * _U32(0x846CA68B)
    return x ^ (x >> 16)


def _key_seeds(key: jax.Array) -> jax.Array:
    """Two uint32 seed words from a JAX key's data (no random kernel: nothing to compile)."""
    if jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
        key = jax.random.key_data(key)
    words = jnp.asarray(key).reshape(-1).astype(_U32)
    h = _U32(_GOLDEN)
    for i in range(words.shape[0]):
        h = _mix32(h ^ words[i] + _U32(i))
    return jnp.stack([_mix32(h ^ _U32(0x68E31DA4)), _mix32(h ^ _U32(0xB5297A4D))])


def _hash_bits(seeds: jax.Array, stream: int, shape: tuple[int, ...]) -> jax.Array:
    """Uniform uint32 words of ``shape`` for stream ``stream``: a keyed counter hash.

    Word ``c`` (row-major index) of stream ``s`` is ``mix(mix(c * phi + k0_s) ^ k1_s)`` with
    ``k0_s, k1_s`` derived from the key and ``s``: distinct streams and keys give unrelated
    words, and the same key gives the same words on every backend. It is a counter-based
    generator like threefry, with two rounds of a 32-bit mixer instead of 20 cipher rounds
    (statistically adequate for Monte-Carlo device noise, not a cryptographic generator), and
    about 30 to 60 times cheaper per word than jax.random's generators on XLA:CPU.
    """
    k0 = _mix32(seeds[0] ^ _U32((stream * 0x85EBCA6B + 0x27D4EB2F) & 0xFFFFFFFF))
    k1 = _mix32(seeds[1] + _U32((stream * 0xC2B2AE35 + 0x165667B1) & 0xFFFFFFFF))
    size = math.prod(shape)
    c = jax.lax.iota(_U32, size).reshape(shape)
    return _mix32(_mix32(c * _U32(_GOLDEN) + k0) ^ k1)


def _normal_ih4(bits: jax.Array) -> jax.Array:
    """Zero-mean, unit-variance noise from uint32 words: the sum of their four bytes, centred.

    An Irwin-Hall(4) variate of 8-bit uniforms: mean 0 and variance 1 exactly, symmetric,
    excess kurtosis -0.3 (a Gaussian's is 0), support +-3.46 (a Gaussian exceeds that with
    probability 5e-4). One word per value, no transcendental function.
    """
    s = (bits & 255) + ((bits >> 8) & 255) + ((bits >> 16) & 255) + (bits >> 24)
    return (s.astype(_F32) - 510.0) * _F32(1.0 / math.sqrt(4 * (256 ** 2 - 1) / 12))


def _train_words(seeds: jax.Array, stream: int, p: jax.Array, bl: int, prob_bits: int,
                 lengths: jax.Array | None = None) -> jax.Array:
    """Bernoulli pulse trains, packed: ``p`` (B, n) -> (B, W, n) uint32, ``W = ceil(bl / 32)``.

    Slot ``t`` of a train fires with probability ``q / 2^k``, ``q = round(p 2^k)`` and
    ``k = prob_bits`` (the probability resolution of a k-bit comparator, as in a hardware pulse
    generator; p = 1 always fires). The 32 slots of a word are drawn at once by the binary
    expansion of ``q``: ``k`` random words, one AND or OR each (the bit of slot ``t`` is 1 iff
    the k-bit number formed by the random words' bits at ``t`` is below ``q``). Slots past
    ``bl`` are zero, and with ``lengths`` (B,) int32, so are the slots ``t >= lengths[b]`` of
    sample ``b`` (shortened trains, see ``bl_management`` in :func:`pulse_update`): a shorter
    train is a prefix of the full one drawn with the same probabilities.
    """
    b, n = p.shape
    words = -(-bl // 32)
    full = 1 << prob_bits
    p = jnp.where(jnp.isnan(p), 0.0, p)              # NaN fires nothing, as uniform < NaN
    q = jnp.clip(jnp.round(p * full), 0, full).astype(_U32)[:, None, :]          # (B, 1, n)
    r = _hash_bits(seeds, stream, (prob_bits, b, words, n))
    w = jnp.zeros((b, words, n), _U32)
    for k in range(prob_bits):                       # least significant bit of q first
        bit = ((q >> k) & 1) == 1
        w = jnp.where(bit, w | r[k], w & r[k])
    w = jnp.where(q >= full, _U32(0xFFFFFFFF), w)
    last = bl - 32 * (words - 1)                     # slots used in the last word
    mask = jnp.full((words,), 0xFFFFFFFF, _U32).at[-1].set(_U32((1 << last) - 1))[None, :]
    if lengths is not None:
        used = jnp.clip(lengths[:, None] - 32 * jnp.arange(words)[None, :], 0, 32)   # (B, W)
        # a shift by the full 32 bits is not defined on every backend: whole words apart.
        low = (_U32(1) << jnp.minimum(used, 31).astype(_U32)) - _U32(1)
        mask = mask & jnp.where(used >= 32, _U32(0xFFFFFFFF), low)
    return w & mask[:, :, None]


def _coincidence_counts(wx: jax.Array, nx: jax.Array, wd: jax.Array, nd: jax.Array,
                        tile_shape: tuple[int, int]) -> tuple[jax.Array, jax.Array]:
    """Up and total coincidence counts per device, in tile layout, without a (B, in, out) tensor.

    wx: (B, W, R * rows) packed row trains of the padded matrix; nx: (B, R * rows) uint32 sign
    masks (all ones where x < 0); wd, nd: the same for the ``C * cols`` padded columns (pad
    with zero trains). Sample b adds ``popcount(wx_bi & wd_bj)`` coincidences to device (i, j),
    all in the direction ``sign(x_bi d_bj)``: to ``up`` when the signs agree. The batch is summed
    in one fused elementwise loop (one popcount per sample, word and device); returns uint32
    ``(up, total)`` of shape ``(R, C, rows, cols)``.
    """
    b, words, n_in = wx.shape
    th, tw = tile_shape
    r, c = n_in // th, wd.shape[2] // tw
    wx = wx.reshape(b, words, r, 1, th, 1)
    nx = nx.reshape(b, r, 1, th, 1)
    wd = wd.reshape(b, words, 1, c, 1, tw)
    # agreement of signs is nx ^ ~nd: inverting the (small) column masks once saves an op
    # per device and sample.
    nd = ~nd.reshape(b, 1, c, 1, tw)

    def packed(cwx, cnx, cwd, cnd):
        # One accumulator, up counts in the low and total counts in the high 16 bits: a
        # single output keeps XLA:CPU to one fused loop (two outputs doubled its time).
        # A chunk holds at most 32 samples of at most 1024 slots: counts < 2^16.
        acc = jnp.zeros((r, c, th, tw), _U32)
        for i in range(cwx.shape[0]):
            cnt = jax.lax.population_count(cwx[i, 0] & cwd[i, 0])
            for w in range(1, words):
                cnt = cnt + jax.lax.population_count(cwx[i, w] & cwd[i, w])
            acc = acc + (cnt << 16) + (cnt & (cnx[i] ^ cnd[i]))
        return acc

    lo = _U32(0xFFFF)
    if b <= 32:
        # Behind a conditional (skipped when no train fires at all): XLA:CPU would otherwise
        # fuse the loop into both of its consumers, the G+ and G- passes, counting every
        # coincidence twice (an optimization barrier does not stop that fusion).
        fired = jnp.any(wx != 0) & jnp.any(wd != 0)
        acc = jax.lax.cond(fired, packed, lambda *a: jnp.zeros((r, c, th, tw), _U32),
                           wx, nx, wd, nd)
        return acc & lo, acc >> 16
    size = 16                                        # samples unrolled per loop iteration
    pad = -b % size                                  # zero trains add no coincidence

    def split(a):
        a = jnp.pad(a, ((0, pad),) + ((0, 0),) * (a.ndim - 1))
        return a.reshape(-1, size, *a.shape[1:])

    def chunk(carry, xs):
        acc = packed(*xs)
        return (carry[0] + (acc & lo), carry[1] + (acc >> 16)), None

    zero = jnp.zeros((r, c, th, tw), _U32)
    (up, tot), _ = jax.lax.scan(chunk, (zero, zero), tuple(map(split, (wx, nx, wd, nd))))
    return up, tot


#: Static train lengths of the matmul count path; above the last one the popcount path is
#: cheaper on XLA:CPU (see :func:`_count_and_apply`).
_MATMUL_SLOTS = (1, 2, 4, 8)


def _matmul_counts(wx: jax.Array, nx: jax.Array, wd: jax.Array, nd: jax.Array,
                   tile_shape: tuple[int, int], slots: int) -> tuple[jax.Array, jax.Array,
                                                                     jax.Array]:
    """:func:`_coincidence_counts` of trains no longer than ``slots`` (<= 32), as matmuls.

    Same arguments; only the first ``slots`` slots of each train are read. With the 0/1 trains
    split by sign, ``P_x[i, (b, t)] = bit_bti [x_bi >= 0]`` and ``N_x`` for ``x_bi < 0`` (and
    ``P_d``, ``N_d``), a coincidence goes up where the signs agree: ``up = P_x P_d^T + N_x N_d^T``
    and ``down = P_x N_d^T + N_x P_d^T``, products of ``(in, B L)`` and ``(B L, out)`` matrices:
    a dense BLAS kernel where the popcount loop is scalar bit arithmetic on CPUs without a
    vector popcount. For ``B L < 256`` every count is below ``M = 2^ceil(log2(B L + 1)) <= 256``
    and one product gives all four as base-M digits,
    ``(P_x + M N_x) (P_d + M N_d)^T = PP + M (PN + NP) + M^2 NN``; otherwise two products, of the
    signed trains (``up - down``) and of their magnitudes (``up + down``). Exact: the operands
    are 0 and powers of two (exact in float32, TF32 and bfloat16), every partial sum is an
    integer below ``2^24`` (for ``B L < 2^24``), and the digits are split by power-of-two
    scalings and floors. Returns float32 ``(up, down)`` in tile layout and the int32 number of
    coincidences.
    """
    b, _, n_in = wx.shape
    n_out = wd.shape[2]
    k = b * slots
    t = jnp.arange(slots, dtype=_U32)
    # Operands as (lines, B L), contracted on their minor axis: the layout XLA:CPU's GEMM
    # runs fastest here (up to twice as fast as (B L, lines) for 64 columns).
    ax = ((wx[:, 0].T[:, :, None] >> t) & 1).astype(_F32).reshape(n_in, k)
    ad = ((wd[:, 0].T[:, :, None] >> t) & 1).astype(_F32).reshape(n_out, k)
    neg_x = jnp.repeat(nx.T != 0, slots, axis=1)
    neg_d = jnp.repeat(nd.T != 0, slots, axis=1)
    mm = lambda a, c: jax.lax.dot_general(a, c, (((1,), (1,)), ((), ())),  # noqa: E731
                                          preferred_element_type=_F32)
    if k < 256:
        m = float(1 << k.bit_length())                               # 2^ceil(log2(k + 1))
        o = mm(jnp.where(neg_x, m * ax, ax), jnp.where(neg_d, m * ad, ad))
        hi = jnp.floor(o * (1.0 / (m * m)))                          # NN
        lo = o - m * jnp.floor(o * (1.0 / m))                        # PP
        up, down = lo + hi, jnp.floor(o * (1.0 / m)) - m * hi        # PP + NN, PN + NP
    else:
        net = mm(jnp.where(neg_x, -ax, ax), jnp.where(neg_d, -ad, ad))
        tot = mm(ax, ad)
        up, down = 0.5 * (tot + net), 0.5 * (tot - net)
    # sum_ij total_ij = sum_(b,t) (rows firing) (columns firing): no pass over the matrix.
    fired = jnp.sum(ax, axis=0).astype(jnp.int32) * jnp.sum(ad, axis=0).astype(jnp.int32)
    return _to_tiles(up, tile_shape), _to_tiles(down, tile_shape), jnp.sum(fired)


def _popcount_counts(wx, nx, wd, nd, tile_shape):
    """:func:`_coincidence_counts` in the return format of :func:`_matmul_counts`."""
    up, tot = _coincidence_counts(wx, nx, wd, nd, tile_shape)
    return up.astype(_F32), (tot - up).astype(_F32), jnp.sum(tot, dtype=jnp.int32)


def _count_and_apply(tiles: Tiles, wx: jax.Array, nx: jax.Array, wd: jax.Array, nd: jax.Array,
                     seeds: jax.Array, bl: int, lengths: jax.Array | None
                     ) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Count the coincidences by the cheapest exact path and move the devices.

    Trains of at most ``bl`` slots (static): matmuls up to ``_MATMUL_SLOTS[-1]`` slots, else
    popcount. The popcount loop costs the same for any length up to 32 slots, the matmul's
    cost grows with it (784 x 500 at batch 20, 2-core XLA:CPU machine: counts in 0.5 / 0.6 /
    1.0 / 1.6 ms for L = 1 / 2 / 4 / 8 slots against 2.4 ms by popcount; for 500 x 10 the two
    break even between L = 4 and 8). With per-sample ``lengths`` the longest train is
    data-dependent: the shortest static length covering it is picked at run time with
    ``lax.switch`` among compiled branches, so no step recompiles, and every branch counts the
    same bits exactly. The device pass is inside each branch, so the counts reach it in the
    layout their kernel wrote (XLA fuses the change of layout into the pass) instead of
    through an extra copy. Returns ``(g_plus, g_minus, coincidences)``.
    """
    def branch(count):
        def run(tiles, wx, nx, wd, nd, seeds):
            up, down, total = count(wx, nx, wd, nd, tiles.tile_shape)
            new = _apply_counts(tiles, up, down, seeds, 3)
            return new.g_plus, new.g_minus, total
        return run

    shorter = [s for s in _MATMUL_SLOTS if s < bl]
    counts = [functools.partial(_matmul_counts, slots=s) for s in shorter]
    counts.append(functools.partial(_matmul_counts, slots=bl) if bl <= _MATMUL_SLOTS[-1]
                  else _popcount_counts)
    operands = (tiles, wx, nx, wd, nd, seeds)
    if lengths is None or len(counts) == 1:
        return branch(counts[-1])(*operands)
    index = jnp.sum(jnp.max(lengths) > jnp.asarray(shorter, jnp.int32))
    return jax.lax.switch(index, [branch(c) for c in counts], *operands)


def _apply_counts(tiles: Tiles, up: jax.Array, down: jax.Array, seeds: jax.Array | None,
                  stream: int) -> Tiles:
    """One device pass per conductance array: G+ sees ``up`` potentiating then ``down``
    depressing pulses, G- ``up`` depressing then ``down`` potentiating (weight-raising pulses
    first, as :func:`apply_pulses`), with one noise value per device."""
    dev = tiles.device
    if dev.dw_min_std > 0:
        z = _normal_ih4(_hash_bits(seeds, stream, (2, *tiles.g_plus.shape)))
        zp, zm = z[0], z[1]
    else:
        zp = zm = None
    gp = dev._step_two(tiles.g_plus, up, down, zp, tiles.var_plus, pot_first=True)
    gm = dev._step_two(tiles.g_minus, up, down, zm, tiles.var_minus, pot_first=False)
    return dataclasses.replace(tiles, g_plus=gp, g_minus=gm)


def pulse_update(tiles: Tiles, x: jax.Array, d: jax.Array, lr: float | jax.Array,
                 key: jax.Array | None, *, mode: str = "stochastic", bl: int = 31,
                 impl: str = "fast", prob_bits: int = 8,
                 bl_management: bool = False) -> tuple[Tiles, jax.Array]:
    """Outer-product update ``W += lr * sum_b x_b^T d_b`` as programming pulses.

    ``mode="stochastic"`` (Gokmen & Vlasov 2016, Eq. 2-3): row ``i`` of sample ``b`` fires a
    Bernoulli pulse train of ``bl`` slots with probability ``C_x |x_bi|``, column ``j`` with
    ``C_d |d_bj|``; every coincidence is one pulse at cross-point ``(i, j)``, in the direction of
    ``sign(x_bi d_bj)``, so the expected change is ``bl C_x C_d dw |x_bi d_bj|`` with
    ``C_x C_d = lr / (bl dw)``. The two factors are balanced per sample
    (``C_x max|x_b| = C_d max|d_b|``, aihwkit's update management); probabilities above 1 are
    truncated, as on a chip. Coincidences are counted with 32-slot words and popcount, or, for
    trains of at most 8 slots, as a matmul of 0/1 matrices (the same counts, cheaper).

    ``bl_management=True`` (aihwkit's ``UpdateParameters.update_bl_management``) shortens the
    trains per sample to ``BL_b = clip(ceil(lr max|x_b| max|d_b| / dw), 1, bl)`` slots: the
    fewest for which the largest pair's coincidence probability per slot,
    ``lr max|x_b| max|d_b| / (BL_b dw)``, is at most 1. The probabilities are those above with
    ``BL_b`` in place of ``bl``, so the expected change is still ``lr x_bi d_bj`` (truncated
    only where ``BL_b = bl``), with fewer slots and coarser quantisation when the update is
    small (Gokmen & Vlasov 2016 discuss the same trade-off between ``BL`` and the resolution
    of the update). Short trains are also cheaper to simulate: a batch whose longest train has
    at most 8 slots is counted as a matmul (see ``impl="fast"``).

    ``mode="deterministic"``: each device receives ``round(lr (x^T d)_ij / dw)`` pulses (``bl``
    and ``bl_management`` do not apply: no trains are drawn).

    Two implementations of the same model (``impl``):

    * ``"fast"`` (default): trains are drawn as packed 32-slot words from a keyed counter-hash
      generator, with probabilities quantised to ``prob_bits`` bits (resolution ``2^-k``, as a
      k-bit comparator in a pulse generator; a probability below ``2^-(k+1)`` never fires);
      the slots ``t >= BL_b`` of a managed train are masked off. The up and down coincidence
      counts of the whole batch are summed per device without a ``(B, in, out)`` tensor: in
      one fused popcount loop, or as a matmul of 0/1 matrices when the longest train has at
      most 8 slots (exact, see ``_matmul_counts``; with ``bl_management`` the branch is chosen
      at run time by ``lax.switch`` among static lengths 1, 2, 4, 8 and popcount, so the
      data never trigger a recompilation).
      Every device then takes its ``n_up`` and ``n_down`` pulses in closed form in one pass
      with one cycle-to-cycle noise value (a unit-variance Irwin-Hall(4) variate, see
      ``_normal_ih4``) of the summed variance.
      Approximations against a chip (or aihwkit) that applies the samples' pulses one at a
      time: (1) within one update the raising pulses come before the lowering ones, so the
      order of pulses matters only where a device reaches a bound (constant steps) or through
      the state dependence of the step (other models), as in ``"reference"``; (2) one noise
      value per device and update instead of one Gaussian per pulse: same mean and variance
      for constant steps, tails cut at 3.46 standard deviations.
    * ``"reference"``: the previous implementation, kept for tests: float Bernoulli draws from
      ``jax.random`` at full resolution for all ``bl`` slots (with ``bl_management``, slots
      ``t >= BL_b`` are masked off), a ``(B, in, out)`` popcount tensor, and
      :func:`apply_pulses` (four device steps, four Gaussian draws per pair).

    Args:
      tiles: weights ``(in, out)``; x: ``(B, in)``; d: ``(B, out)``; lr: learning rate (scalar).
      key: PRNG key (pulse trains and cycle-to-cycle noise).
      mode: ``"stochastic"`` or ``"deterministic"``; bl: pulse-train length (1..1024), the
        longest train with ``bl_management``.
      impl: ``"fast"`` or ``"reference"`` (keyword-only).
      prob_bits: probability resolution of the fast path's trains, 4..16 bits (keyword-only).
      bl_management: shorten each sample's trains to ``BL_b`` slots, as aihwkit's default
        ``update_bl_management=True`` (keyword-only; default False: always ``bl`` slots).

    Returns:
      ``(new_tiles, pulses)`` with the float32 number of pulses sent.
    """
    if mode not in ("stochastic", "deterministic"):
        raise ValueError(f"mode={mode!r}: use 'stochastic' (coincidence pulse trains) or "
                         "'deterministic' (per-device pulse counts)")
    if not isinstance(bl, int) or isinstance(bl, bool) or not 1 <= bl <= 1024:
        raise ValueError(f"bl={bl!r}: the pulse-train length must be an integer in [1, 1024]")
    if impl not in ("fast", "reference"):
        raise ValueError(f"impl={impl!r}: use 'fast' (packed trains, fused counts, one device "
                         "pass) or 'reference' (the per-sample reference implementation)")
    if not isinstance(prob_bits, int) or isinstance(prob_bits, bool) or \
            not 4 <= prob_bits <= 16:
        raise ValueError(f"prob_bits={prob_bits!r}: use an integer number of bits in [4, 16]")
    if not isinstance(bl_management, bool):
        raise TypeError(f"bl_management={bl_management!r}: use True (shorten each sample's "
                         "trains to ceil(lr max|x| max|d| / dw) slots, as aihwkit's "
                         "update_bl_management) or False (always bl slots)")
    x = jnp.asarray(x).astype(_F32)
    d = jnp.asarray(d).astype(_F32)
    if x.ndim != 2 or d.ndim != 2 or x.shape[0] != d.shape[0] or \
            (x.shape[1], d.shape[1]) != tiles.shape:
        raise ValueError(f"pulse_update: x {x.shape} and d {d.shape} must be (B, in) and "
                         f"(B, out) for tiles of shape {tiles.shape}")
    if mode == "stochastic" and key is None:
        raise ValueError("pulse_update: mode='stochastic' needs a key")
    if tiles.device.dw_min_std > 0:
        bbcore.require_key(key, "pulse_update", "the device has cycle-to-cycle noise")
    lr = jnp.asarray(lr, _F32)
    manage = bl_management and mode == "stochastic"   # one compiled variant when unused
    if impl == "fast":
        # Only the conductances come back from the compiled update: the device parameters
        # are reused as they are (returning them from the jit would copy every array).
        g_plus, g_minus, sent = _pulse_update_fast(tiles, x, d, lr, key, mode, bl, prob_bits,
                                                   manage)
        return dataclasses.replace(tiles, g_plus=g_plus, g_minus=g_minus), sent
    return _pulse_update(tiles, x, d, lr, key, mode, bl, manage)


def _train_lengths(x, d, lr, dw, bl):
    """aihwkit's update BL management: per-sample train lengths ``clip(ceil(lr max|x_b|
    max|d_b| / dw), 1, bl)`` as (B,) int32 (``bl`` where that is not finite)."""
    need = lr * jnp.max(jnp.abs(x), axis=1) * jnp.max(jnp.abs(d), axis=1) / dw
    # `need < bl` is False for NaN and inf: such a sample keeps the full train.
    return jnp.where(need < bl, jnp.maximum(jnp.ceil(need), 1.0), bl).astype(jnp.int32)


def _probabilities(x, d, lr, dw, bl):
    """Update management: per-sample balanced pulse probabilities (truncated at 1).

    ``bl``: the train length, a number or per-sample lengths of shape (B, 1)."""
    xmax = jnp.max(jnp.abs(x), axis=1, keepdims=True)
    dmax = jnp.max(jnp.abs(d), axis=1, keepdims=True)
    c = lr / (bl * dw)
    safe = (xmax > 0) & (dmax > 0)
    cx = jnp.where(safe, jnp.sqrt(c * dmax / jnp.where(safe, xmax, 1.0)), 0.0)
    cd = jnp.where(safe, jnp.sqrt(c * xmax / jnp.where(safe, dmax, 1.0)), 0.0)
    return jnp.minimum(jnp.abs(x) * cx, 1.0), jnp.minimum(jnp.abs(d) * cd, 1.0)


@functools.partial(jax.jit, static_argnums=(5, 6, 7, 8))
def _pulse_update_fast(tiles, x, d, lr, key, mode, bl, prob_bits, bl_management):
    dw = weight_step(tiles)
    seeds = None if key is None else _key_seeds(key)
    if mode == "deterministic":
        n = _to_tiles(jnp.round(lr * (x.T @ d) / dw), tiles.tile_shape)
        up, down = jnp.maximum(n, 0.0), jnp.maximum(-n, 0.0)
        sent = 2.0 * jnp.sum(up + down)
    else:
        lengths = _train_lengths(x, d, lr, dw, bl) if bl_management else None
        px, pd = _probabilities(x, d, lr, dw, bl if lengths is None
                                else lengths[:, None].astype(_F32))
        # Pad rows and columns to whole tiles before drawing: padded lines get p = 0 (zero
        # trains), and each train word is drawn once, straight into the layout of the counts.
        (th, tw), (r, c) = tiles.tile_shape, tiles.grid
        pad_in = lambda a: jnp.pad(a, ((0, 0), (0, r * th - a.shape[1])))  # noqa: E731
        pad_out = lambda a: jnp.pad(a, ((0, 0), (0, c * tw - a.shape[1])))  # noqa: E731
        wx = _train_words(seeds, 1, pad_in(px), bl, prob_bits, lengths)
        wd = _train_words(seeds, 2, pad_out(pd), bl, prob_bits, lengths)
        neg = lambda a: jnp.where(a < 0, _U32(0xFFFFFFFF), _U32(0))  # noqa: E731
        g_plus, g_minus, total = _count_and_apply(tiles, wx, neg(pad_in(x)), wd,
                                                  neg(pad_out(d)), seeds, bl, lengths)
        return g_plus, g_minus, 2.0 * total.astype(_F32)
    new = _apply_counts(tiles, up, down, seeds, 3)
    return new.g_plus, new.g_minus, sent


@functools.partial(jax.jit, static_argnums=(5, 6, 7))
def _pulse_update(tiles, x, d, lr, key, mode, bl, bl_management):
    dw = weight_step(tiles)
    if mode == "deterministic":
        n = jnp.round(lr * (x.T @ d) / dw)
        n_up, n_down = jnp.maximum(n, 0.0), jnp.maximum(-n, 0.0)
        k_noise = key
    else:
        kx, kd, k_noise = jax.random.split(key, 3)
        slots = jnp.arange(bl)[None, :, None]
        if bl_management:
            lengths = _train_lengths(x, d, lr, dw, bl)
            px, pd = _probabilities(x, d, lr, dw, lengths[:, None].astype(_F32))
            live = slots < lengths[:, None, None]                   # (B, bl, 1)
        else:
            px, pd = _probabilities(x, d, lr, dw, bl)
            live = True
        bx = live & (jax.random.uniform(kx, (x.shape[0], bl, x.shape[1]), _F32)
                     < px[:, None, :])
        bd = live & (jax.random.uniform(kd, (d.shape[0], bl, d.shape[1]), _F32)
                     < pd[:, None, :])
        wx, wd = _pack_bits(bx), _pack_bits(bd)                     # (B, W, in), (B, W, out)
        coinc = jax.lax.population_count(wx[:, :, :, None] & wd[:, :, None, :])
        coinc = jnp.sum(coinc, axis=1).astype(_F32)                 # (B, in, out)
        sgn = jnp.sign(x)[:, :, None] * jnp.sign(d)[:, None, :]
        n_up = jnp.sum(jnp.where(sgn > 0, coinc, 0.0), axis=0)
        n_down = jnp.sum(jnp.where(sgn < 0, coinc, 0.0), axis=0)
    new = apply_pulses(tiles, n_up, n_down, k_noise)
    return new, 2.0 * jnp.sum(n_up + n_down)
