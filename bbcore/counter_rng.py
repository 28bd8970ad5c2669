"""A keyed counter-hash generator: cheap uniform words, uniforms and Gaussian noise.

Random words are a pure function of a key, a stream number and a counter (the element's
row-major index), like threefry (Salmon et al., "Parallel random numbers: as easy as 1, 2, 3",
SC 2011), with two rounds of a 32-bit mixer instead of 20 cipher rounds: statistically adequate
for Monte-Carlo noise and stochastic rounding, not a cryptographic generator, and an order of
magnitude cheaper per word than ``jax.random``'s generators on XLA:CPU (BENCHMARKS.md, "Speed of
the registered `analog-eqprop-taox` row" and "Block-scaled 4-bit step time").

The words do not depend on how the work is split: the same key gives the same words on every
backend, under any ``vmap`` batch size (each batched key gets its own stream) and any sharding
of the array (the counter is the global index). ``analog`` draws device and read noise with it,
``lowbit`` the uniforms of stochastic rounding.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["mix32", "key_words", "counter_bits", "bits", "to_uniform", "to_normal"]

_F32 = jnp.float32
_U32 = jnp.uint32
_GOLDEN = 0x9E3779B9


def mix32(x: jax.Array) -> jax.Array:
    """A bijective 32-bit mixer ("lowbias32", C. Wellons): full avalanche in 5 vector ops."""
    x = x ^ (x >> 16)
    x = x * _U32(0x7FEB352D)
    x = x ^ (x >> 15)
    x = x * _U32(0x846CA68B)
    return x ^ (x >> 16)


def key_words(key: jax.Array) -> jax.Array:
    """Two uint32 seed words from a JAX key (typed or raw data; no random kernel to compile)."""
    if jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
        key = jax.random.key_data(key)
    words = jnp.asarray(key).reshape(-1).astype(_U32)
    h = _U32(_GOLDEN)
    for i in range(words.shape[0]):
        h = mix32(h ^ words[i] + _U32(i))
    return jnp.stack([mix32(h ^ _U32(0x68E31DA4)), mix32(h ^ _U32(0xB5297A4D))])


def counter_bits(seeds: jax.Array, stream: int | jax.Array, shape: tuple[int, ...]) -> jax.Array:
    """Uniform uint32 words of ``shape`` for :func:`key_words` ``seeds`` and ``stream``.

    Word ``c`` (row-major index) of stream ``s`` is ``mix(mix(c * phi + k0_s) ^ k1_s)`` with
    ``k0_s, k1_s`` derived from the seeds and ``s``: distinct streams and keys give unrelated
    words. ``stream`` is a Python int or an integer array (e.g. a ``fori_loop`` counter).
    """
    if isinstance(stream, int):
        a = _U32((stream * 0x85EBCA6B + 0x27D4EB2F) & 0xFFFFFFFF)
        b = _U32((stream * 0xC2B2AE35 + 0x165667B1) & 0xFFFFFFFF)
    else:  # a traced stream (a loop counter): the same words, uint32 arithmetic wraps mod 2^32
        s = jnp.asarray(stream).astype(_U32)
        a = s * _U32(0x85EBCA6B) + _U32(0x27D4EB2F)
        b = s * _U32(0xC2B2AE35) + _U32(0x165667B1)
    k0 = mix32(seeds[0] ^ a)
    k1 = mix32(seeds[1] + b)
    c = jax.lax.iota(_U32, math.prod(shape)).reshape(shape)
    return mix32(mix32(c * _U32(_GOLDEN) + k0) ^ k1)


def bits(key: jax.Array, stream: int | jax.Array, shape: tuple[int, ...]) -> jax.Array:
    """Uniform uint32 words of ``shape`` for ``key`` and ``stream`` (:func:`counter_bits`)."""
    return counter_bits(key_words(key), stream, shape)


def to_uniform(words: jax.Array) -> jax.Array:
    """Float32 uniforms on ``[0, 1)`` from uint32 words: ``jax.random.uniform``'s mapping.

    The top 23 bits fill the mantissa of a float in ``[1, 2)``, less 1: every value is a
    multiple of ``2^-23`` and each of the ``2^23`` values is equally likely.
    """
    one = _U32(0x3F800000)  # the bits of float32 1.0
    return jax.lax.bitcast_convert_type((words >> 9) | one, _F32) - _F32(1.0)


def to_normal(words: jax.Array) -> jax.Array:
    """Standard Gaussian float32 noise from uint32 words, one word per value.

    ``jax.random.normal``'s transform (``sqrt(2) erfinv(u)`` for ``u`` uniform on ``(-1, 1)``
    with 23-bit resolution) applied to these words: the same distribution as
    ``jax.random.normal`` (tails to about 5.3 sigma), only the bits come from the counter hash.
    """
    lo = _F32(np.nextafter(np.float32(-1.0), np.float32(0.0)))
    u = jnp.maximum(lo, to_uniform(words) * (_F32(1.0) - lo) + lo)
    return _F32(math.sqrt(2.0)) * jax.lax.erf_inv(u)
