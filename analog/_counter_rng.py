"""A keyed counter-hash generator for the pulse-update kernels: cheap uniform words and noise.

Random words are a pure function of a key, a stream number and a counter, like threefry,
with two rounds of a 32-bit mixer instead of 20 cipher rounds: statistically adequate for
Monte-Carlo device noise, not a cryptographic generator, and far cheaper per word than
``jax.random``'s generators on XLA:CPU (BENCHMARKS.md, "Simulation throughput, side by side
with aihwkit"). Words are the same on every backend for the same key.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

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


def _hash_bits(seeds: jax.Array, stream: int, shape: tuple[int, ...]) -> jax.Array:
    """Uniform uint32 words of ``shape`` for stream ``stream``: a keyed counter hash.

    Word ``c`` (row-major index) of stream ``s`` is ``mix(mix(c * phi + k0_s) ^ k1_s)`` with
    ``k0_s, k1_s`` derived from the key and ``s``: distinct streams and keys give unrelated
    words, and the same key gives the same words on every backend. It is a counter-based
    generator like threefry, with two rounds of a 32-bit mixer instead of 20 cipher rounds
    (statistically adequate for Monte-Carlo device noise, not a cryptographic generator).
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
    return (s.astype(_F32) - 510.0) * _F32(1.0 / math.sqrt(4 * (256**2 - 1) / 12))
