"""lowbit's 4-bit gradient communication: validation here, 8-device behaviour in tests/test_eight_devices.py."""

import jax
import jax.numpy as jnp
import pytest

import lowbit
from lowbit import compressed_bytes, compressed_pmean


def test_one_device_axis_is_a_requantization():
    """On a one-device axis the mean is the input itself, quantized twice."""
    x = {"a": jnp.linspace(-1.0, 1.0, 11, dtype=jnp.float32)}
    out = jax.vmap(lambda t: compressed_pmean(t, "i", rounding="nearest"), axis_name="i")(
        jax.tree.map(lambda a: a[None], x)
    )
    q = lowbit.quantize(
        x["a"], lowbit.RADIX4_FP4, scale=lowbit.compute_scale(x["a"], lowbit.RADIX4_FP4)
    )
    assert jnp.array_equal(out["a"][0], q)


def test_vmap_axis_matches_mean_for_grid_values():
    x = lowbit.quantize(jnp.arange(-8.0, 8.0, dtype=jnp.float32), lowbit.INT4)
    stacked = jnp.broadcast_to(x, (4, 16))
    out = jax.vmap(
        lambda t: compressed_pmean(t, "i", fmt=lowbit.INT4, rounding="nearest"), axis_name="i"
    )(stacked)
    assert jnp.array_equal(out[2], x)


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        (dict(fmt=lowbit.E4M3), ValueError, "4-bit format"),
        (dict(rounding="up"), ValueError, "rounding"),
        (dict(rounding="stochastic"), ValueError, "needs key"),
        (dict(fmt="fp4"), TypeError, "Format"),
    ],
)
def test_bad_arguments(kwargs, error, match):
    with pytest.raises(error, match=match):
        jax.vmap(lambda t: compressed_pmean(t, "i", **kwargs), axis_name="i")(jnp.ones((2, 4)))


def test_integer_leaves_are_refused():
    with pytest.raises(TypeError, match="floating"):
        jax.vmap(lambda t: compressed_pmean(t, "i", rounding="nearest"), axis_name="i")(
            jnp.ones((2, 4), jnp.int32)
        )


def test_compressed_bytes_is_one_eighth_plus_scales():
    tree = {"w": jnp.zeros((1000, 100)), "b": jnp.zeros((100,))}
    b = compressed_bytes(tree, 8)
    codes = b["all_to_all_codes"] / 8 * 7 + b["all_gather_codes"] * 7  # sent per device
    f32 = 2 * 7 / 8 * b["float32_all_reduce"]
    assert 7.9 < f32 / codes <= 8.0
