"""lowbit's SUN2020 and NVFP4_2025 layers against AQT on ResNet-20's GEMM shapes, side by side.

Issue 19's step-time targets: emulated SUN2020 <= 1.3x float32 and NVFP4_2025 <= 1.5x on the
ResNet (CPU, batch 128), both faster than AQT's fully quantized step on the same layer shapes.
AQT (aqtp 0.9.0) is not a dependency: install it in its own venv beside this repo (same jax)::

    python3.11 -m venv /tmp/aqtvenv && /tmp/aqtvenv/bin/pip install aqtp==0.9.0 \\
        jax==0.10.2 jaxlib==0.10.2 flax optax chex numpy matplotlib tqdm
    PYTHONPATH=. /tmp/aqtvenv/bin/python benchmarks/lowbit_vs_aqt_resnet.py [--repeats 7]

The workload is every GEMM of ``beyondbp.models.resnet(depth=20)`` at batch 128 on 28x28
inputs, as a convolution lowers it (im2col): ``(N H W, kh kw Cin) x (kh kw Cin, Cout)`` for the
stem, the 18 3x3 convolutions, the two strided 1x1 shortcut projections, and the 64 -> 10 head.
One step differentiates ``sum_l mean(dot(X_l, W_l)^2)`` with respect to every ``X_l`` and
``W_l``: each layer's forward, input-gradient and weight-gradient GEMMs, as in training, with
the operand sizes of the real network but without its element-wise layers (so the ratios
isolate what quantization adds to the GEMMs; the whole training step's ratio, with norms and
activations that quantization does not touch, is lower). Rows:

* ``float32``: ``lax.dot_general``;
* ``SUN2020`` (``lowbit.recipes``): the stem, the head and the 1x1 projections in 8 bits
  (``SUN2020_8BIT``), the rest ``SUN2020_4BIT`` (INT4 SAWB weights, INT4 activations,
  radix-4 FP4 gradients with GradScale and two-phase rounding);
* ``NVFP4_2025``: ``NVFP4_2025_CONFIG`` (NVFP4 everywhere, 16x16 weight tiles, stochastic
  gradient rounding, 16-point random Hadamard on the weight-gradient inputs), the last 15% of
  the layers (the head and the last three convolutions) in float32, as the recipe's rules say;
* ``AQT fully_quantized`` INT4 forward and backward (nearest), and with stochastic rounding.

Interleaved rounds; each row's figure is the median over rounds of its step time divided by
the float32 step of the same round. Writes ``benchmarks/results/lowbit_vs_aqt_resnet.{json,png}``.
"""

from __future__ import annotations

import functools
import math
import os
import time

import _common
import jax
import jax.numpy as jnp
from jax import lax

import lowbit
from lowbit import recipes

DN = (((1,), (0,)), ((), ()))


def resnet20_gemms(batch: int) -> list[tuple[str, int, int, int]]:
    """``(name, M, K, N)`` of every GEMM of ResNet-20 (16/32/64 channels, 28x28 input)."""
    out = [("stem 3x3 1->16", batch * 28 * 28, 9 * 1, 16)]
    cin = 16
    for stage, (cout, hw) in enumerate(((16, 28), (32, 14), (64, 7))):
        for block in range(3):
            first = cin if block == 0 else cout
            out.append((f"s{stage}b{block} conv1", batch * hw * hw, 9 * first, cout))
            out.append((f"s{stage}b{block} conv2", batch * hw * hw, 9 * cout, cout))
            if block == 0 and first != cout:
                out.append((f"s{stage} shortcut 1x1", batch * hw * hw, first, cout))
        cin = cout
    out.append(("head 64->10", batch, 64, 10))
    return out


def layer_configs(recipe: str, names: list[str]) -> list:
    """Each GEMM's ``lowbit.QuantConfig`` under ``recipe`` (None: float32)."""
    if recipe == "SUN2020":
        eight = ("stem", "head", "shortcut")
        return [
            recipes.SUN2020_8BIT if any(e in n for e in eight) else recipes.SUN2020_4BIT
            for n in names
        ]
    keep = max(1, math.ceil(0.15 * len(names)))  # the recipe's "last 15%, at least one"
    return [
        None if i >= len(names) - keep else recipes.NVFP4_2025_CONFIG for i in range(len(names))
    ]


def lowbit_dots(recipe: str, names: list[str]) -> list:
    return [
        lax.dot_general if c is None else functools.partial(lowbit.dot_general, config=c)
        for c in layer_configs(recipe, names)
    ]


def variants(names: list[str]) -> dict[str, list]:
    from aqt.jax.v2 import config as aqt_config

    n = len(names)
    aqt = aqt_config.fully_quantized(fwd_bits=4, bwd_bits=4, use_stochastic_rounding=False)
    aqt_sr = aqt_config.fully_quantized(fwd_bits=4, bwd_bits=4, use_stochastic_rounding=True)
    # AQT's stochastic rounding draws from the key in its context (a constant here: the
    # timing is of drawing and rounding, as a training loop passing a per-step key would do)
    aqt_sr = [
        aqt_config.set_context(aqt_sr, jax.random.fold_in(jax.random.key(0), i), 0)
        for i in range(n)
    ]
    return {
        "float32": [lax.dot_general] * n,
        "lowbit SUN2020": lowbit_dots("SUN2020", names),
        "lowbit NVFP4_2025": lowbit_dots("NVFP4_2025", names),
        "AQT fully_quantized INT4 fwd+bwd (nearest)": [aqt] * n,
        "AQT fully_quantized INT4 fwd+bwd (stochastic)": aqt_sr,
    }


def make_step(dots):
    def loss(xs, ws):
        return sum(jnp.mean(dg(x, w, DN) ** 2) for dg, x, w in zip(dots, xs, ws))

    @jax.jit
    def step(xs, ws):
        gx, gw = jax.grad(loss, argnums=(0, 1))(xs, ws)
        return [x - 0.01 * g for x, g in zip(xs, gx)], [w - 0.01 * g for w, g in zip(ws, gw)]

    return step


def operands(gemms, seed: int = 0):
    keys = jax.random.split(jax.random.key(seed), 2 * len(gemms))
    xs = [jax.random.normal(keys[2 * i], (m, k)) for i, (_, m, k, _) in enumerate(gemms)]
    ws = [
        jax.random.normal(keys[2 * i + 1], (k, n)) / jnp.sqrt(jnp.float32(k))
        for i, (_, _, k, n) in enumerate(gemms)
    ]
    return xs, ws


def plot(result: dict):
    names = list(result["variants"])
    colors = ["gray" if n == "float32" else "C0" if n.startswith("lowbit") else "C1" for n in names]
    fig, ax = _common.ratio_bars(
        names,
        [result["variants"][n]["median_ratio_to_float32"] for n in names],
        colors,
        xlabel="step time / float32 step (median over interleaved rounds)",
        title=f"ResNet-20 GEMM shapes, batch {result['batch']}, {result['repeats']} rounds",
        height=3,
    )
    for target, label in ((1.3, "SUN2020 target"), (1.5, "NVFP4_2025 target")):
        ax.axvline(target, ls=":", color="k", lw=0.8)
        ax.text(target, -0.5, label, fontsize=6, rotation=90, va="top")
    fig.tight_layout()
    return fig


def main(argv=None):
    args = _common.parse_step_timing(
        argv, __doc__, "--no-aqt", "lowbit rows only", repeats=7, iters=3, batch=128
    )
    gemms = resnet20_gemms(args.batch)
    names = [g[0] for g in gemms]
    xs, ws = operands(gemms)
    if args.no_aqt:
        rows = {k: lowbit_dots(k, names) for k in ("SUN2020", "NVFP4_2025")}
        rows = {
            "float32": [lax.dot_general] * len(names),
            **{f"lowbit {k}": v for k, v in rows.items()},
        }
    else:
        rows = variants(names)
    carry = {n: (xs, ws) for n in rows}

    def call(name, step):  # carries the operands from step to step, as training does
        carry[name] = step(*carry[name])
        return carry[name]

    calls = {}
    for name, dots in rows.items():
        calls[name] = functools.partial(call, name, make_step(dots))
        t0 = time.perf_counter()
        jax.block_until_ready(calls[name]())
        print(f"compiled {name} in {time.perf_counter() - t0:.1f} s", flush=True)
    times = _common.interleaved(calls, args.repeats, args.iters)
    result = {
        "gemms": [{"name": n, "M": m, "K": k, "N": nn} for n, m, k, nn in gemms],
        "nvfp4_float32_layers": [
            n for n, c in zip(names, layer_configs("NVFP4_2025", names)) if c is None
        ],
        "batch": args.batch,
        "repeats": args.repeats,
        "iters_per_repeat": args.iters,
        "load_avg_at_end": os.getloadavg(),
        "variants": _common.ratio_rows(times, "float32"),
    }
    for name, r in result["variants"].items():
        ratio = r["median_ratio_to_float32"]
        print(f"{name:48s} {r['median_ms']:9.1f} ms  x{ratio:.2f}", flush=True)
    _common.save("lowbit_vs_aqt_resnet", result, plot(result), argv=argv)


if __name__ == "__main__":
    main()
