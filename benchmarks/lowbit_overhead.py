"""lowbit emulation overhead: 4-bit training step / float32 step, side by side in one run.

    .venv/bin/python benchmarks/lowbit_overhead.py [--repeats 7] [--quick]

Models: MLP 784-1024-1024-10 and the LeNet-sized CNN of ``beyondbp.models``,
batch 256, CPU. Each variant's jitted step (loss, gradient, SGD update) is timed
in interleaved rounds; each round times ``--iters`` steps; the figure is the
median over rounds of the per-step time, and ratios are taken to the float32
step of the same round. Also the throughput of ``lowbit.quantize`` (RADIX4_FP4,
GradScale) against a plain float32 copy. Writes
``benchmarks/results/lowbit_overhead.{json,png}``. Issue target: full recipe
<= 1.5x the float32 step.
"""

from __future__ import annotations

import os
import statistics
import time

import _common
import jax
import jax.numpy as jnp
import optax

import lowbit
from beyondbp import models

VARIANTS = {
    "float32": None,
    "4bit full recipe (TPR, nearest)": lowbit.QuantConfig(activations=lowbit.UINT4),
    "4bit, stochastic gradient rounding": lowbit.QuantConfig(
        activations=lowbit.UINT4, gradient_rounding="stochastic"
    ),
    "4bit forward only (float32 gradients)": lowbit.QuantConfig(
        activations=lowbit.UINT4, gradients=lowbit.FLOAT32, two_phase=False
    ),
}


def build(model: str, config):
    key = jax.random.key(0)
    if model == "mlp":
        return (
            models.mlp(key, (784, 1024, 1024, 10))
            if config is None
            else models.mlp4bit(key, (784, 1024, 1024, 10), config=config)
        )
    return models.cnn(key) if config is None else models.cnn4bit(key, config=config)


def make_step(apply, mode: str):
    tx = optax.sgd(0.05, momentum=0.9)

    def loss(p, x, y):
        return optax.softmax_cross_entropy_with_integer_labels(apply(p, x), y).mean()

    if mode == "grad":

        @jax.jit
        def step(p, s, x, y):
            g = jax.grad(loss)(p, x, y)
            u, s = tx.update(g, s, p)
            return optax.apply_updates(p, u), s
    else:  # forward mode: one jvp along a random tangent (what fwdgrad does)

        @jax.jit
        def step(p, s, x, y):
            v = jax.tree.map(jnp.ones_like, p)
            _, d = jax.jvp(lambda q: loss(q, x, y), (p,), (v,))
            u, s = tx.update(jax.tree.map(lambda t: d * t, v), s, p)
            return optax.apply_updates(p, u), s

    return step, tx


def time_steps(model: str, mode: str, repeats: int, iters: int, batch: int) -> dict:
    kx, ky = jax.random.split(jax.random.key(1))
    x = jax.random.uniform(kx, (batch, 28, 28))
    y = jax.random.randint(ky, (batch,), 0, 10)
    runs = {}
    for name, cfg in VARIANTS.items():
        if mode == "jvp" and "forward only" in name:
            continue
        apply, params = build(model, cfg)
        step, tx = make_step(apply, mode)
        state = tx.init(params)
        params, state = step(params, state, x, y)  # compile
        jax.block_until_ready(params)
        runs[name] = [step, params, state]
    times = {n: [] for n in runs}
    for _ in range(repeats):
        for name, r in runs.items():  # interleaved: every round times every variant
            step, p, s = r
            t0 = time.perf_counter()
            for _ in range(iters):
                p, s = step(p, s, x, y)
            jax.block_until_ready(p)
            times[name].append((time.perf_counter() - t0) / iters)
            r[1], r[2] = p, s
    base = times["float32"]
    out = {}
    for name, ts in times.items():
        ratios = [t / b for t, b in zip(ts, base)]
        out[name] = {
            "median_step_ms": 1e3 * statistics.median(ts),
            "median_ratio_to_float32": statistics.median(ratios),
            "all_step_ms": [1e3 * t for t in ts],
        }
    return out


def quantize_throughput(n: int, repeats: int) -> dict:
    x = jax.random.normal(jax.random.key(2), (n,)) * 1e-3
    copy = jax.jit(lambda x: x * 1.0 + 0.0)
    q_nearest = jax.jit(
        lambda x: lowbit.quantize(
            x, lowbit.RADIX4_FP4, scale=lowbit.compute_scale(x, lowbit.RADIX4_FP4)
        )
    )
    key = jax.random.key(3)
    q_sr = jax.jit(
        lambda x: lowbit.quantize(
            x,
            lowbit.RADIX4_FP4,
            scale=lowbit.compute_scale(x, lowbit.RADIX4_FP4),
            rounding="stochastic",
            key=key,
        )
    )
    fns = {
        "float32 copy": copy,
        "quantize RADIX4_FP4 nearest + GradScale": q_nearest,
        "quantize RADIX4_FP4 stochastic + GradScale": q_sr,
    }
    for f in fns.values():
        jax.block_until_ready(f(x))
    ts = {k: [] for k in fns}
    for _ in range(repeats):
        for k, f in fns.items():
            t0 = time.perf_counter()
            for _ in range(5):
                r = f(x)
            jax.block_until_ready(r)
            ts[k].append((time.perf_counter() - t0) / 5)
    return {
        k: {
            "elements_per_s": n / statistics.median(v),
            "ratio_to_copy": statistics.median(v) / statistics.median(ts["float32 copy"]),
        }
        for k, v in ts.items()
    }


def main(argv=None):
    args = _common.parse_step_timing(argv, __doc__, "--quick", "3 repeats, 2 iters (smoke run)")
    if args.quick:
        args.repeats, args.iters = 3, 2
    # the machine is shared: its load when the run starts says how far to trust the timings
    result = {
        "machine": {**_common.machine(), "load_avg_at_start": os.getloadavg()},
        "batch": args.batch,
        "repeats": args.repeats,
        "iters_per_repeat": args.iters,
        "target_ratio": 1.5,
    }
    for model in ("mlp", "cnn"):
        for mode in ("grad", "jvp"):
            r = time_steps(model, mode, args.repeats, args.iters, args.batch)
            result[f"{model}_{mode}"] = r
            for name, v in r.items():
                print(
                    f"{model:4s} {mode:4s} {name:42s} {v['median_step_ms']:8.2f} ms  "
                    f"x{v['median_ratio_to_float32']:.2f}",
                    flush=True,
                )
    result["quantize_throughput_16M"] = quantize_throughput(1 << 24, args.repeats)
    for k, v in result["quantize_throughput_16M"].items():
        print(f"{k:45s} {v['elements_per_s'] / 1e6:8.1f} M elem/s  x{v['ratio_to_copy']:.2f} copy")

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [k for k in result if k.endswith(("_grad", "_jvp"))]
    fig, axes = plt.subplots(1, len(panels), figsize=(4 * len(panels), 4), sharey=True)
    for ax, k in zip(axes, panels):
        names = list(result[k])
        ratios = [result[k][n]["median_ratio_to_float32"] for n in names]
        ax.barh(range(len(names)), ratios, color=["gray"] + ["C0"] * (len(names) - 1))
        ax.set_yticks(range(len(names)), [n.replace(" (", "\n(") for n in names], fontsize=7)
        ax.axvline(1.5, ls="--", c="r", lw=1)
        ax.set(title=k.replace("_", " "), xlabel="step time / float32 step")
    fig.suptitle(f"lowbit emulation overhead, batch {args.batch}, median of {args.repeats}")
    fig.tight_layout()
    _common.save("lowbit_overhead", result, fig, argv=argv)


if __name__ == "__main__":
    main()
