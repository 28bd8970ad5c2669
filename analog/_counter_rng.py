"""A keyed counter-hash generator: cheap uniform words, uniforms and Gaussian noise.

Random words are a pure function of a key, a stream number and a counter, like threefry,
with two rounds of a 32-bit mixer instead of 20 cipher rounds: statistically adequate for
Monte-Carlo device noise, not a cryptographic generator, and far cheaper per word than
``jax.random``'s generators on XLA:CPU (BENCHMARKS.md, "Simulation throughput, side by side
with aihwkit"). Words are the same on every backend for the same key. Used by the
pulse-update kernels, the periphery's read and weight noise, and :func:`analog.program`'s
rounding and cycle-to-cycle noise (BENCHMARKS.md, "Speed of the registered
`analog-eqprop-taox` row").
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

__all__ = []

_F32 = jnp.float32
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


def _hash_bits(seeds: jax.Array, stream: int | jax.Array, shape: tuple[int, ...]) -> jax.Array:
    """Uniform uint32 words of ``shape`` for stream ``stream``: a keyed counter hash.

    Word ``c`` (row-major index) of stream ``s`` is ``mix(mix(c * phi + k0_s) ^ k1_s)`` with
    ``k0_s, k1_s`` derived from the key and ``s``: distinct streams and keys give unrelated
    words, and the same key gives the same words on every backend. It is a counter-based
    generator like threefry, with two rounds of a 32-bit mixer instead of 20 cipher rounds
    (statistically adequate for Monte-Carlo device noise, not a cryptographic generator).
    ``stream`` is a Python int or an integer array (e.g. a ``fori_loop`` counter).
    """
    if isinstance(stream, int):
        a = _U32((stream * 0x85EBCA6B + 0x27D4EB2F) & 0xFFFFFFFF)
        b = _U32((stream * 0xC2B2AE35 + 0x165667B1) & 0xFFFFFFFF)
    else:  # a traced stream (a loop counter): the same words, uint32 arithmetic wraps mod 2^32
        s = jnp.asarray(stream).astype(_U32)
        a = s * _U32(0x85EBCA6B) + _U32(0x27D4EB2F)
        b = s * _U32(0xC2B2AE35) + _U32(0x165667B1)
    k0 = _mix32(seeds[0] ^ a)
    k1 = _mix32(seeds[1] + b)
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
    return (s.astype(_F32) - 510.0) * _F32(1.0 / math.sqrt(4 * (256**2 - 1) / 12))


def _uniform(bits: jax.Array) -> jax.Array:
    """Float32 uniforms on ``[0, 1)`` from uint32 words: ``jax.random.uniform``'s mapping.

    The top 23 bits fill the mantissa of a float in ``[1, 2)``, less 1: every value is a
    multiple of ``2^-23`` and each of the ``2^23`` values is equally likely.
    """
    one = _U32(0x3F800000)  # the bits of float32 1.0
    return jax.lax.bitcast_convert_type((bits >> 9) | one, _F32) - _F32(1.0)


def _normal(bits: jax.Array) -> jax.Array:
    """Standard Gaussian float32 noise from uint32 words, one word per value.

    ``jax.random.normal``'s transform (``sqrt(2) erfinv(u)`` for ``u`` uniform on
    ``(-1, 1)`` with 23-bit resolution) applied to these words: the same distribution as
    ``jax.random.normal`` (tails to about 5.3 sigma), only the bits come from the counter hash.
    """
    lo = _F32(np.nextafter(np.float32(-1.0), np.float32(0.0)))
    u = jnp.maximum(lo, _uniform(bits) * (_F32(1.0) - lo) + lo)
    return _F32(math.sqrt(2.0)) * jax.lax.erf_inv(u)


def normal(key: jax.Array, stream: int, shape: tuple[int, ...]) -> jax.Array:
    """Standard Gaussian float32 noise of ``shape`` for ``key`` and ``stream`` (:func:`_normal`)."""
    return _normal(_hash_bits(_key_seeds(key), stream, shape))


def uniform(key: jax.Array, stream: int, shape: tuple[int, ...]) -> jax.Array:
    """Float32 uniforms on ``[0, 1)`` of ``shape`` for ``key`` and ``stream`` (:func:`_uniform`)."""
    return _uniform(_hash_bits(_key_seeds(key), stream, shape))
