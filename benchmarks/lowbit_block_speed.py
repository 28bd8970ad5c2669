"""What a block-scaled 4-bit operand costs on CPU, and the two XLA:CPU effects behind it.

    .venv/bin/python benchmarks/lowbit_block_speed.py [--repeats 7]

One activation of ResNet-20's first stage at batch 128, ``(128, 28, 28, 16)`` float32 (1.6M
elements), quantized as the GEMMs quantize it, each row timed side by side in interleaved
rounds and reported as the median over rounds of its time divided by a plain ``2 x`` of the
same array (one read and one write: the memory floor of any element-wise pass):

* NVFP4 and MXFP4 blocks along the channel axis (the forward and input-gradient GEMMs' 1-D
  blocks) and along the batch and spatial axes (the weight gradient's), nearest and stochastic;
* E2M1 element rounding alone, nearest and stochastic; INT4 per tensor;
* the two mechanisms measured in isolation:
  - random words: ``jax.random.bits`` (threefry, 20 rounds) against ``bbcore.counter_rng.bits``
    (two rounds of a 32-bit mixer), which stochastic rounding now draws from;
  - a block amax over 16 elements on the 6-D block view ``(1, R, 1, 1, 16, 1)`` with its unit
    axes, which XLA:CPU compiles to a generic loop nest, against the same reduction over
    ``(R, 16)``, which ``lowbit._block_scales._quantize_core`` now uses.

Writes ``benchmarks/results/lowbit_block_speed.{json,png}``.
"""

from __future__ import annotations

import functools

import _common
import jax
import jax.numpy as jnp

import lowbit
from bbcore import counter_rng
from lowbit._blocks import quantize_blocks_split

SHAPE = (128, 28, 28, 16)


def rows(x: jax.Array) -> dict:
    k = jax.random.key(1)

    def blocks(fmt, axis, rounding="nearest"):
        key = k if rounding == "stochastic" else None
        return lambda x: quantize_blocks_split(x, fmt, axis=axis, rounding=rounding, key=key)

    return {
        "copy": lambda x: x * 2,  # the reference: one read and one write of the array
        "NVFP4 channel blocks, nearest": blocks(lowbit.NVFP4, -1),
        "NVFP4 channel blocks, stochastic": blocks(lowbit.NVFP4, -1, "stochastic"),
        "NVFP4 batch x spatial blocks, nearest": blocks(lowbit.NVFP4, (0, 1, 2)),
        "MXFP4 channel blocks, nearest": blocks(lowbit.MXFP4, -1),
        "E2M1 element rounding, nearest": lambda x: lowbit.quantize(x, lowbit.E2M1),
        "E2M1 element rounding, stochastic": lambda x: lowbit.quantize(
            x, lowbit.E2M1, rounding="stochastic", key=k
        ),
        "INT4 per tensor": lambda x: lowbit.quantize(x, lowbit.INT4, scale=jnp.float32(0.5)),
        "random words: jax.random.bits (threefry)": lambda x: jax.random.bits(k, x.shape),
        "random words: bbcore.counter_rng.bits": lambda x: counter_rng.bits(k, 0, x.shape),
        # these two take the array already in their shape (as the block pipeline hands it on)
        "block amax on the 6-D view (unit axes)": lambda x6: jnp.max(
            jnp.abs(x6), axis=(2, 4), keepdims=True
        ),
        "block amax on (R, 16)": lambda x2: jnp.max(jnp.abs(x2), axis=1),
    }


def inputs(x: jax.Array, name: str) -> jax.Array:
    r = x.size // 16
    if name.startswith("block amax on the 6-D"):
        return x.reshape(1, r, 1, 1, 16, 1)
    if name.startswith("block amax on (R"):
        return x.reshape(r, 16)
    return x


def plot(result: dict):
    names = list(result["rows"])
    fig, _ = _common.ratio_bars(
        names,
        [result["rows"][n]["median_ratio_to_copy"] for n in names],
        "C0",
        xlabel="time / a copy of the array",
        title=f"{SHAPE} float32, XLA:CPU",
        height=4,
    )
    fig.tight_layout()
    return fig


def main(argv=None):
    args = _common.parse_step_timing(
        argv, __doc__, "--plot-only", "unused (kept for the shared parser)", repeats=7, iters=5
    )
    x = jax.random.normal(jax.random.key(0), SHAPE, jnp.float32)
    fns = {n: jax.jit(f) for n, f in rows(x).items()}
    args_of = {n: jax.block_until_ready(inputs(x, n)) for n in fns}
    calls = {n: functools.partial(f, args_of[n]) for n, f in fns.items()}
    times = _common.interleaved(calls, args.repeats, args.iters)
    result = {"shape": SHAPE, "repeats": args.repeats, "iters": args.iters}
    result["rows"] = _common.ratio_rows(times, "copy")
    for n, r in result["rows"].items():
        print(f"{n:45s} {r['median_ms']:8.2f} ms  x{r['median_ratio_to_copy']:.1f}", flush=True)
    _common.save("lowbit_block_speed", result, plot(result), argv=argv)


if __name__ == "__main__":
    main()
