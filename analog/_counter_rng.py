"""The keyed counter hash (:mod:`bbcore.counter_rng`) under the names ``analog`` uses, and the
Irwin-Hall noise of the pulse-update kernels.

The generator itself lives in ``bbcore`` (``lowbit``'s stochastic rounding draws from it too):
words are a pure function of a key, a stream number and a counter, far cheaper per word than
``jax.random``'s generators on XLA:CPU (BENCHMARKS.md, "Simulation throughput, side by side
with aihwkit" and "Speed of the registered `analog-eqprop-taox` row"). ``analog`` draws the
pulse-update kernels' words, the periphery's read and weight noise, and
:func:`analog.program`'s rounding and cycle-to-cycle noise from it.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from bbcore.counter_rng import counter_bits as _hash_bits
from bbcore.counter_rng import key_words as _key_seeds
from bbcore.counter_rng import mix32 as _mix32
from bbcore.counter_rng import to_normal as _normal
from bbcore.counter_rng import to_uniform as _uniform

__all__ = []

_F32 = jnp.float32
_U32 = jnp.uint32

# the names the kernels, the periphery and the tests import from here
_ = (_hash_bits, _key_seeds, _mix32, _normal, _uniform)


def _normal_ih4(bits: jax.Array) -> jax.Array:
    """Zero-mean, unit-variance noise from uint32 words: the sum of their four bytes, centred.

    An Irwin-Hall(4) variate of 8-bit uniforms: mean 0 and variance 1 exactly, symmetric,
    excess kurtosis -0.3 (a Gaussian's is 0), support +-3.46 (a Gaussian exceeds that with
    probability 5e-4). One word per value, no transcendental function.
    """
    s = (bits & 255) + ((bits >> 8) & 255) + ((bits >> 16) & 255) + (bits >> 24)
    return (s.astype(_F32) - 510.0) * _F32(1.0 / math.sqrt(4 * (256**2 - 1) / 12))


def normal(key: jax.Array, stream: int, shape: tuple[int, ...]) -> jax.Array:
    """Standard Gaussian float32 noise of ``shape`` for ``key`` and ``stream`` (the distribution
    of ``jax.random.normal``; :func:`bbcore.counter_rng.to_normal`)."""
    return _normal(_hash_bits(_key_seeds(key), stream, shape))


def uniform(key: jax.Array, stream: int, shape: tuple[int, ...]) -> jax.Array:
    """Float32 uniforms on ``[0, 1)`` of ``shape`` for ``key`` and ``stream``
    (``jax.random.uniform``'s grid; :func:`bbcore.counter_rng.to_uniform`)."""
    return _uniform(_hash_bits(_key_seeds(key), stream, shape))
