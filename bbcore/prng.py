"""Which PRNG the toolkit's own keys use.

Keys the toolkit makes itself from a seed for *simulation noise* (device-to-device variation,
cycle-to-cycle and read noise, pulse trains: the analog package) use JAX's ``"rbg"``
generator: on XLA:CPU its random kernels compile much faster than threefry's (the reason the
choice was made; BENCHMARKS.md has no side-by-side measurement of it), and streams stay
reproducible from the seed. Keys passed in by a user keep their own generator.

Streams that must come out bit-identical under a different ``vmap`` batch or sharding (the
forward-gradient tangents every device regenerates from the shared seed, the stochastic
rounding of ``lowbit``) keep JAX's default threefry: ``"rbg"`` draws different bits under a
different ``vmap`` batch size. Those packages call ``jax.random.key(seed)`` directly.
"""

from __future__ import annotations

from typing import Any

import jax

__all__ = ["PRNG_IMPL", "key"]

#: The generator of the keys :func:`key` makes.
PRNG_IMPL = "rbg"


def key(seed: Any) -> jax.Array:
    """A typed PRNG key of implementation :data:`PRNG_IMPL` from an integer seed."""
    return jax.random.key(seed, impl=PRNG_IMPL)
